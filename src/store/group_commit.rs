//! Group commit for SQLite: segment commits from concurrent runs are written by one task, many
//! in one transaction.
//!
//! SQLite writes one transaction at a time, and each statement sent through sqlx is a hop to
//! the connection's thread and back. Writing a webhook's run one statement at a time costs
//! five hops and a WAL append per request; here a whole batch is one compound statement (one
//! hop) plus its `COMMIT`, however many runs it holds, and within it one multi-row statement
//! per kind of row (see `statements`). Callers still get their own answer only
//! after the transaction holding their commit is durable.
//!
//! A batch is all or nothing. If any commit in it cannot be written as given (its idempotency
//! key is taken, its lease was lost, a constraint fails), the batch is rolled back and each
//! commit is written alone, by the exact single-commit path, which reports each outcome.
//! Commits that upsert contacts take the single path directly: they read before they write.

use sqlx::{Row, Sqlite};
use tokio::sync::{mpsc, oneshot};

use super::sql::{Dialect as _, Stmt, commit, events, outbox, runs};
use super::sqlite::SqliteStore;
use super::{Commit, CommitOutcome, Result, RunStatus, RunWrite};

/// Commits per transaction at most; beyond this a batch's SQL gets long for little gain.
const MAX_BATCH: usize = 64;

pub(super) struct Job {
    pub commit: Commit,
    pub reply: oneshot::Sender<Result<CommitOutcome>>,
}

pub(super) async fn run(store: SqliteStore, mut queue: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if store
            .checkpoint_due
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            // The background checkpointer has copied nearly everything: this finishes it, and
            // the next write starts the WAL over.
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&store.writer)
                .await
            {
                tracing::debug!(error = %e, "writer checkpoint failed");
            }
        }
        let (simple, single): (Vec<Job>, Vec<Job>) = batch
            .into_iter()
            .partition(|j| j.commit.contacts.is_empty());
        if !simple.is_empty() {
            write_batch(&store, simple).await;
        }
        for job in single {
            let outcome = store.commit_single(job.commit).await;
            let _ = job.reply.send(outcome);
        }
    }
}

async fn write_batch(store: &SqliteStore, jobs: Vec<Job>) {
    match try_batch(store, &jobs).await {
        Ok(true) => {
            for job in jobs {
                let _ = job.reply.send(Ok(CommitOutcome::Committed {
                    contacts: Vec::new(),
                }));
            }
        }
        Ok(false) | Err(_) => {
            // Something in the batch needs its own answer: write each alone.
            for job in jobs {
                let outcome = store.commit_single(job.commit).await;
                let _ = job.reply.send(outcome);
            }
        }
    }
}

/// Writes the batch in one transaction. `Ok(false)`, with everything rolled back, when some
/// commit's run write did not apply.
async fn try_batch(store: &SqliteStore, jobs: &[Job]) -> Result<bool> {
    let batch = statements(jobs.iter().map(|j| &j.commit));
    let (sql, args) = Sqlite::statement(batch)?;
    let mut conn = store.writer.acquire().await?;
    let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
        .fetch_all(&mut *conn)
        .await;
    let applied = match rows {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| r.try_get::<i64, _>(0).ok())
            .count(),
        Err(e) => {
            abandon(&mut conn).await;
            return Err(e.into());
        }
    };
    if applied != jobs.len() {
        if let Err(e) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(e.into());
        }
        return Ok(false);
    }
    if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
        abandon(&mut conn).await;
        return Err(e.into());
    }
    Ok(true)
}

/// After a failed batch: roll back what the raw `BEGIN` opened. If even that fails (the disk
/// is failing), the connection is closed instead of going back to the pool: SQLite may still
/// hold it inside the transaction, and every later `BEGIN` on it would fail.
async fn abandon(conn: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>) {
    match sqlx::query("ROLLBACK").execute(&mut **conn).await {
        Ok(_) => {}
        // Nothing was open: the failure came before or with the BEGIN.
        Err(e) if e.to_string().contains("no transaction is active") => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not roll back a failed write; the connection is replaced");
            conn.close_on_drop();
        }
    }
}

/// The batch as a few statements, each writing its kind of row for every commit at once: the
/// runs inserted, the runs updated, the step log, the messages, the events, the runs started,
/// the runs woken. Every run write returns a row when it applies, which is how the batch
/// learns that all of them did. (Many small statements, one set of rows each, cost more to
/// prepare and to keep prepared than these, whose shape changes only with their row counts.)
fn statements<'a>(commits: impl Iterator<Item = &'a Commit>) -> Stmt {
    let mut inserts = Vec::new();
    let mut updates = Vec::new();
    let mut steps = Vec::new();
    let mut outbox = Vec::new();
    let mut events = Vec::new();
    let mut started = Vec::new();
    let mut wake = Vec::new();
    let mut now = 0;
    for c in commits {
        let run_id = match &c.run {
            RunWrite::Insert { run, owner } => {
                let owner = owner
                    .as_deref()
                    .filter(|_| c.state.status == RunStatus::Running);
                inserts.push((&**run, &c.state, owner));
                &run.id
            }
            RunWrite::Update { run_id, owner } => {
                updates.push((c, run_id.as_str(), owner.as_str()));
                run_id
            }
        };
        steps.extend(c.steps.iter().map(|s| (run_id.as_str(), s)));
        outbox.extend(&c.outbox);
        events.extend(&c.events);
        started.extend(&c.new_runs);
        wake.extend(c.wake_runs.iter().cloned());
        now = now.max(c.now);
    }
    let mut batch = Stmt::new("BEGIN IMMEDIATE", Vec::new());
    if !inserts.is_empty() {
        let mut insert = commit::insert_runs(&inserts);
        insert.push(" RETURNING 1");
        batch.then(insert);
    }
    if !updates.is_empty() {
        batch.then(commit::update_runs(&updates));
    }
    if !steps.is_empty() {
        batch.then(commit::upsert_steps_of(steps));
    }
    if !outbox.is_empty() {
        batch.then(outbox::insert(outbox));
    }
    if !events.is_empty() {
        batch.then(events::insert(events));
    }
    if !started.is_empty() {
        let pending: Vec<_> = started.iter().map(|r| commit::pending_state(r)).collect();
        let rows: Vec<_> = started
            .iter()
            .zip(&pending)
            .map(|(r, s)| (*r, s, None))
            .collect();
        batch.then(commit::insert_runs(&rows));
    }
    if !wake.is_empty() {
        batch.then(runs::wake::<Sqlite>(&wake, now));
    }
    batch
}
