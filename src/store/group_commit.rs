//! Group commit for SQLite: segment commits from concurrent runs are written by one task, many
//! in one transaction.
//!
//! SQLite writes one transaction at a time, and each statement sent through sqlx is a hop to
//! the connection's thread and back. Writing a webhook's run one statement at a time costs
//! five hops and a WAL append per request; here a whole batch is one compound statement (one
//! hop) plus its `COMMIT`, however many runs it holds. Callers still get their own answer only
//! after the transaction holding their commit is durable.
//!
//! A batch is all or nothing. If any commit in it cannot be written as given (its idempotency
//! key is taken, its lease was lost, a constraint fails), the batch is rolled back and each
//! commit is written alone, by the exact single-commit path, which reports each outcome.
//! Commits that upsert contacts take the single path directly: they read before they write.

use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, Row};
use tokio::sync::{mpsc, oneshot};

use super::rows::{retry_text, to_text};
use super::sqlite::SqliteStore;
use super::{Commit, CommitOutcome, Result, RunStatus, RunWrite, StoreError};

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
    let mut sql = String::from("BEGIN IMMEDIATE;\n");
    let mut args = SqliteArguments::default();
    for (i, job) in jobs.iter().enumerate() {
        append(&mut sql, &mut args, i, &job.commit)?;
    }
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

fn bind<'q, T>(args: &mut SqliteArguments, value: T) -> Result<()>
where
    T: 'q + sqlx::Encode<'q, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    args.add(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot bind a value: {e}")))
}

/// `(?, ?, ...)` with `n` placeholders.
fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3 + 2);
    s.push('(');
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s.push(')');
    s
}

/// Appends one commit's statements. The run write returns the commit's index when it applies,
/// which is how the batch learns that every run write did.
fn append(sql: &mut String, args: &mut SqliteArguments, index: usize, c: &Commit) -> Result<()> {
    let s = &c.state;
    let run_id = match &c.run {
        RunWrite::Insert { run, owner } => {
            sql.push_str(
                "INSERT INTO runs (id, workflow_id, version, status, trigger_kind, idempotency_key, cursor, context, due_at, \
                 wait_event, wait_key, lease_owner, attempts, contact_id, parent_run_id, response, error, created_at, updated_at, finished_at, labels) VALUES ",
            );
            sql.push_str(&placeholders(21));
            sql.push_str(" ON CONFLICT (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING ");
            sql.push_str(&index.to_string());
            sql.push_str(";\n");
            let owner = if s.status == RunStatus::Running {
                owner.clone()
            } else {
                None
            };
            bind(args, run.id.clone())?;
            bind(args, run.workflow_id.clone())?;
            bind(args, s.version.clone())?;
            bind(args, s.status.as_str())?;
            bind(args, run.trigger_kind.clone())?;
            bind(args, run.idempotency_key.clone())?;
            bind(args, to_text(&s.cursor))?;
            bind(args, to_text(&s.context))?;
            bind(args, s.due_at)?;
            bind(args, s.wait_event.clone())?;
            bind(args, s.wait_key.clone())?;
            bind(args, owner)?;
            bind(args, s.attempts)?;
            bind(args, s.contact_id.clone())?;
            bind(args, run.parent_run_id.clone())?;
            bind(args, s.response.as_ref().map(to_text))?;
            bind(args, s.error.clone())?;
            bind(args, run.created_at)?;
            bind(args, run.created_at)?;
            bind(args, s.finished_at)?;
            bind(args, to_text(&run.labels))?;
            run.id.clone()
        }
        RunWrite::Update { run_id, owner } => {
            sql.push_str(
                "UPDATE runs SET status = ?, version = ?, cursor = ?, context = ?, due_at = ?, wait_event = ?, wait_key = ?, \
                 attempts = ?, contact_id = ?, response = ?, error = ?, finished_at = ?, updated_at = ?, \
                 lease_owner = CASE WHEN ? THEN lease_owner ELSE NULL END \
                 WHERE id = ? AND lease_owner = ? AND status = 'running' RETURNING ",
            );
            sql.push_str(&index.to_string());
            sql.push_str(";\n");
            bind(args, s.status.as_str())?;
            bind(args, s.version.clone())?;
            bind(args, to_text(&s.cursor))?;
            bind(args, to_text(&s.context))?;
            bind(args, s.due_at)?;
            bind(args, s.wait_event.clone())?;
            bind(args, s.wait_key.clone())?;
            bind(args, s.attempts)?;
            bind(args, s.contact_id.clone())?;
            bind(args, s.response.as_ref().map(to_text))?;
            bind(args, s.error.clone())?;
            bind(args, s.finished_at)?;
            bind(args, c.now)?;
            bind(args, s.status == RunStatus::Running)?;
            bind(args, run_id.clone())?;
            bind(args, owner.clone())?;
            run_id.clone()
        }
    };
    if !c.steps.is_empty() {
        sql.push_str("INSERT INTO step_log (run_id, seq, step_id, action, status, attempt, started_at, finished_at, output, error, iteration) VALUES ");
        for (n, step) in c.steps.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&placeholders(11));
            bind(args, run_id.clone())?;
            bind(args, step.seq)?;
            bind(args, step.step_id.clone())?;
            bind(args, step.action.clone())?;
            bind(args, step.status.clone())?;
            bind(args, step.attempt)?;
            bind(args, step.started_at)?;
            bind(args, step.finished_at)?;
            bind(args, step.output.as_ref().map(to_text))?;
            bind(args, step.error.clone())?;
            bind(args, step.iteration.clone())?;
        }
        sql.push_str(
            " ON CONFLICT (run_id, seq) DO UPDATE SET step_id = excluded.step_id, action = excluded.action, \
             status = excluded.status, attempt = excluded.attempt, started_at = excluded.started_at, \
             finished_at = excluded.finished_at, output = excluded.output, error = excluded.error, \
             iteration = excluded.iteration;\n",
        );
    }
    if !c.outbox.is_empty() {
        sql.push_str(
            "INSERT INTO outbox (id, run_id, workflow_id, step_id, channel, recipient, sender, subject, body, html, headers, \
             idempotency_key, status, attempts, max_attempts, next_attempt_at, created_at, updated_at, category, retry) VALUES ",
        );
        for (n, m) in c.outbox.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?, ?)");
            bind(args, m.id.clone())?;
            bind(args, m.run_id.clone())?;
            bind(args, m.workflow_id.clone())?;
            bind(args, m.step_id.clone())?;
            bind(args, m.channel.clone())?;
            bind(args, m.recipient.clone())?;
            bind(args, m.sender.clone())?;
            bind(args, m.subject.clone())?;
            bind(args, m.body.clone())?;
            bind(args, m.html)?;
            bind(args, to_text(&m.headers))?;
            bind(args, m.idempotency_key.clone())?;
            bind(args, m.max_attempts)?;
            bind(args, m.created_at)?;
            bind(args, m.created_at)?;
            bind(args, m.created_at)?;
            bind(args, m.category.as_str())?;
            bind(args, retry_text(&m.retry))?;
        }
        sql.push_str(" ON CONFLICT (idempotency_key) DO NOTHING;\n");
    }
    if !c.events.is_empty() {
        sql.push_str("INSERT INTO events (id, name, key, data, source_run_id, created_at) VALUES ");
        for (n, e) in c.events.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&placeholders(6));
            bind(args, e.id.clone())?;
            bind(args, e.name.clone())?;
            bind(args, e.key.clone())?;
            bind(args, to_text(&e.data))?;
            bind(args, e.source_run_id.clone())?;
            bind(args, e.created_at)?;
        }
        sql.push_str(" ON CONFLICT (id) DO NOTHING;\n");
    }
    for r in &c.new_runs {
        sql.push_str(
            "INSERT INTO runs (id, workflow_id, version, status, trigger_kind, idempotency_key, cursor, context, due_at, \
             attempts, parent_run_id, created_at, updated_at, labels) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, 0, ?, ?, ?, ?) \
             ON CONFLICT (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING;\n",
        );
        bind(args, r.id.clone())?;
        bind(args, r.workflow_id.clone())?;
        bind(args, r.version.clone())?;
        bind(args, r.trigger_kind.clone())?;
        bind(args, r.idempotency_key.clone())?;
        bind(args, to_text(&r.cursor))?;
        bind(args, to_text(&r.context))?;
        bind(args, r.created_at)?;
        bind(args, r.parent_run_id.clone())?;
        bind(args, r.created_at)?;
        bind(args, r.created_at)?;
        bind(args, to_text(&r.labels))?;
    }
    for id in &c.wake_runs {
        sql.push_str(
            "UPDATE runs SET due_at = ?, updated_at = ? WHERE id = ? AND status = 'waiting';\n",
        );
        bind(args, c.now)?;
        bind(args, c.now)?;
        bind(args, id.clone())?;
    }
    Ok(())
}
