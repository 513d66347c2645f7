//! The embedded store: one SQLite file in WAL mode, created on first start.
//!
//! SQLite has one writer at a time, so every write transaction starts with `BEGIN IMMEDIATE`:
//! it takes the write lock up front instead of failing to upgrade a read lock half way, and
//! `busy_timeout` queues writers instead of erroring. `synchronous=NORMAL` in WAL mode means a
//! commit survives the process being killed (the WAL is in the OS's cache); only a power cut
//! can lose the last moments, and `HERALD_SQLITE_SYNC=full` closes that gap at some cost.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::rows::{
    contact_columns, decode_contact, decode_cron_fire, decode_definition, decode_event,
    decode_outbox, decode_run, decode_step, outbox_columns, retry_text, run_columns, to_text,
};
use super::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Readers; WAL lets them run beside the writer.
    pub(super) pool: SqlitePool,
    /// The one connection that writes. SQLite has one writer at a time anyway; queueing
    /// writers here, on an async pool, avoids SQLite's busy handler, which sleeps and retries
    /// and turns contention into milliseconds of latency.
    pub(super) writer: SqlitePool,
    /// Segment commits, written in batches by one task (see `group_commit`).
    jobs: tokio::sync::mpsc::UnboundedSender<super::group_commit::Job>,
    /// Set by the background checkpointer when the WAL is long; the writer then finishes the
    /// checkpoint between two batches (see `checkpoint_loop`).
    pub(super) checkpoint_due: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at a `sqlite://path` URL and applies migrations.
    pub async fn open(url: &str) -> Result<SqliteStore> {
        let sync = match std::env::var("HERALD_SQLITE_SYNC").as_deref() {
            Ok("full") => SqliteSynchronous::Full,
            _ => SqliteSynchronous::Normal,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("invalid SQLite URL `{url}`: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .busy_timeout(Duration::from_secs(10))
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-8000")
            // After a checkpoint resets the WAL, it is truncated to this size, so a burst does
            // not leave a large file behind.
            .pragma("journal_size_limit", "67108864");
        // The writer never checkpoints: a checkpoint copies the WAL into the database file and
        // would stall every commit queued behind it. A separate connection checkpoints in the
        // background instead, without blocking writers.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .after_release(|conn, _| super::reusable(conn))
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        MIGRATOR.run(&writer).await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone())
            .await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .after_release(|conn, _| super::reusable(conn))
            .connect_with(options.clone().read_only(true))
            .await?;
        let (jobs, queue) = tokio::sync::mpsc::unbounded_channel();
        // The writer gets a handle without a sender to its own queue, so the queue closes, and
        // the task ends, when the last store handle is dropped.
        let (unused, _) = tokio::sync::mpsc::unbounded_channel();
        let checkpoint_due = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let for_writer = SqliteStore {
            pool: pool.clone(),
            writer: writer.clone(),
            jobs: unused,
            checkpoint_due: checkpoint_due.clone(),
        };
        tokio::spawn(super::group_commit::run(for_writer, queue));
        tokio::spawn(checkpoint_loop(
            checkpointer,
            jobs.downgrade(),
            checkpoint_due.clone(),
        ));
        Ok(SqliteStore {
            pool,
            writer,
            jobs,
            checkpoint_due,
        })
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Writes one commit in its own transaction: the exact path, used when a batch cannot
    /// be written whole (a duplicate, a lost lease, a contact upsert).
    pub(super) async fn commit_single(&self, c: Commit) -> Result<CommitOutcome> {
        let mut tx = self.write_tx().await?;
        let s = &c.state;
        let run_id = match &c.run {
            RunWrite::Insert { run, owner } => {
                if !insert_run(&mut tx, run, Some((s, owner.as_deref()))).await? {
                    tx.rollback().await?;
                    let key = run.idempotency_key.as_deref().unwrap_or_default();
                    let existing = self
                        .run_by_idempotency_key(&run.workflow_id, key)
                        .await?
                        .map(|r| r.id)
                        .ok_or_else(|| {
                            StoreError::Corrupt("idempotency conflict without a run".into())
                        })?;
                    return Ok(CommitOutcome::Duplicate {
                        existing_run_id: existing,
                    });
                }
                run.id.clone()
            }
            RunWrite::Update { run_id, owner } => {
                let keep_lease = s.status == RunStatus::Running;
                let updated = sqlx::query(
                    "UPDATE runs SET status = ?, version = ?, cursor = ?, context = ?, due_at = ?, wait_event = ?,
                         wait_key = ?, attempts = ?, contact_id = ?, response = ?, error = ?, finished_at = ?,
                         updated_at = ?, lease_owner = CASE WHEN ? THEN lease_owner ELSE NULL END
                     WHERE id = ? AND lease_owner = ? AND status = 'running'",
                )
                .bind(s.status.as_str())
                .bind(&s.version)
                .bind(to_text(&s.cursor))
                .bind(to_text(&s.context))
                .bind(s.due_at)
                .bind(&s.wait_event)
                .bind(&s.wait_key)
                .bind(s.attempts)
                .bind(&s.contact_id)
                .bind(s.response.as_ref().map(to_text))
                .bind(&s.error)
                .bind(s.finished_at)
                .bind(c.now)
                .bind(keep_lease)
                .bind(run_id)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Err(StoreError::LeaseLost);
                }
                run_id.clone()
            }
        };
        for step in &c.steps {
            sqlx::query(
                "INSERT INTO step_log (run_id, seq, step_id, action, status, attempt, started_at, finished_at, output, error, iteration)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (run_id, seq) DO UPDATE SET step_id = excluded.step_id, action = excluded.action,
                     status = excluded.status, attempt = excluded.attempt, started_at = excluded.started_at,
                     finished_at = excluded.finished_at, output = excluded.output, error = excluded.error,
                     iteration = excluded.iteration",
            )
            .bind(&run_id)
            .bind(step.seq)
            .bind(&step.step_id)
            .bind(&step.action)
            .bind(&step.status)
            .bind(step.attempt)
            .bind(step.started_at)
            .bind(step.finished_at)
            .bind(step.output.as_ref().map(to_text))
            .bind(&step.error)
            .bind(&step.iteration)
            .execute(&mut *tx)
            .await?;
        }
        for m in &c.outbox {
            sqlx::query(
                "INSERT INTO outbox (id, run_id, workflow_id, step_id, channel, recipient, sender, subject, body, html, headers,
                     idempotency_key, status, attempts, max_attempts, next_attempt_at, created_at, updated_at, category, retry)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (idempotency_key) DO NOTHING",
            )
            .bind(&m.id)
            .bind(&m.run_id)
            .bind(&m.workflow_id)
            .bind(&m.step_id)
            .bind(&m.channel)
            .bind(&m.recipient)
            .bind(&m.sender)
            .bind(&m.subject)
            .bind(&m.body)
            .bind(m.html)
            .bind(to_text(&m.headers))
            .bind(&m.idempotency_key)
            .bind(m.max_attempts)
            .bind(m.created_at)
            .bind(m.created_at)
            .bind(m.created_at)
            .bind(m.category.as_str())
            .bind(retry_text(&m.retry))
            .execute(&mut *tx)
            .await?;
        }
        for e in &c.events {
            insert_event(&mut tx, e).await?;
        }
        for r in &c.new_runs {
            insert_run(&mut tx, r, None).await?;
        }
        let mut contacts = Vec::with_capacity(c.contacts.len());
        for u in &c.contacts {
            contacts.push(upsert_contact(&mut tx, u).await?);
        }
        for id in &c.wake_runs {
            sqlx::query(
                "UPDATE runs SET due_at = ?, updated_at = ? WHERE id = ? AND status = 'waiting'",
            )
            .bind(c.now)
            .bind(c.now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(CommitOutcome::Committed { contacts })
    }
}

async fn insert_run(
    tx: &mut Transaction<'_, Sqlite>,
    run: &NewRun,
    state: Option<(&RunState, Option<&str>)>,
) -> Result<bool> {
    let (
        status,
        version,
        cursor,
        context,
        due_at,
        wait_event,
        wait_key,
        attempts,
        contact_id,
        response,
        error,
        finished_at,
        owner,
    ) = match state {
        Some((s, owner)) => (
            s.status.as_str(),
            s.version.as_str(),
            to_text(&s.cursor),
            to_text(&s.context),
            s.due_at,
            s.wait_event.clone(),
            s.wait_key.clone(),
            s.attempts,
            s.contact_id.clone(),
            s.response.as_ref().map(to_text),
            s.error.clone(),
            s.finished_at,
            if s.status == RunStatus::Running {
                owner.map(str::to_owned)
            } else {
                None
            },
        ),
        None => (
            RunStatus::Pending.as_str(),
            run.version.as_str(),
            to_text(&run.cursor),
            to_text(&run.context),
            Some(run.created_at),
            None,
            None,
            0,
            None,
            None,
            None,
            None,
            None,
        ),
    };
    let result = sqlx::query(
        "INSERT INTO runs (id, workflow_id, version, status, trigger_kind, idempotency_key, cursor, context, due_at,
             wait_event, wait_key, lease_owner, attempts, contact_id, parent_run_id, response, error, created_at, updated_at, finished_at, labels)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    )
    .bind(&run.id)
    .bind(&run.workflow_id)
    .bind(version)
    .bind(status)
    .bind(&run.trigger_kind)
    .bind(&run.idempotency_key)
    .bind(cursor)
    .bind(context)
    .bind(due_at)
    .bind(wait_event)
    .bind(wait_key)
    .bind(owner)
    .bind(attempts)
    .bind(contact_id)
    .bind(&run.parent_run_id)
    .bind(response)
    .bind(error)
    .bind(run.created_at)
    .bind(run.created_at)
    .bind(finished_at)
    .bind(to_text(&run.labels))
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected() == 1)
}

async fn upsert_contact(tx: &mut Transaction<'_, Sqlite>, u: &ContactUpsert) -> Result<Contact> {
    let by_email = match &u.email {
        Some(e) => sqlx::query(concat!(
            "SELECT ",
            contact_columns!(),
            " FROM contacts WHERE email = ?"
        ))
        .bind(e)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| Ok::<_, StoreError>(decode_contact!(&r)))
        .transpose()?,
        None => None,
    };
    let existing = match (by_email, &u.phone) {
        (Some(c), _) => Some(c),
        (None, Some(p)) => sqlx::query(concat!(
            "SELECT ",
            contact_columns!(),
            " FROM contacts WHERE phone = ?"
        ))
        .bind(p)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| Ok::<_, StoreError>(decode_contact!(&r)))
        .transpose()?,
        (None, None) => None,
    };
    let is_new = existing.is_none();
    let mut merged = u.apply(existing.clone());
    // An e-mail or phone already belonging to someone else stays theirs: two people are not
    // merged by accident, and the unique constraint holds.
    for (field, column) in [(&mut merged.email, "email"), (&mut merged.phone, "phone")] {
        if let Some(value) = field.clone() {
            let taken: Option<String> = sqlx::query_scalar(if column == "email" {
                "SELECT id FROM contacts WHERE email = ? AND id <> ?"
            } else {
                "SELECT id FROM contacts WHERE phone = ? AND id <> ?"
            })
            .bind(&value)
            .bind(&merged.id)
            .fetch_optional(&mut **tx)
            .await?;
            if taken.is_some() {
                *field = existing.as_ref().and_then(|c| {
                    if column == "email" {
                        c.email.clone()
                    } else {
                        c.phone.clone()
                    }
                });
            }
        }
    }
    let attributes = to_text(&serde_json::Value::Object(merged.attributes.clone()));
    if is_new {
        sqlx::query(
            "INSERT INTO contacts (id, email, phone, first_name, last_name, status, timezone, attributes, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&merged.id)
        .bind(&merged.email)
        .bind(&merged.phone)
        .bind(&merged.first_name)
        .bind(&merged.last_name)
        .bind(&merged.status)
        .bind(&merged.timezone)
        .bind(attributes)
        .bind(merged.created_at)
        .bind(merged.updated_at)
        .execute(&mut **tx)
        .await?;
    } else {
        sqlx::query(
            "UPDATE contacts SET email = ?, phone = ?, first_name = ?, last_name = ?, status = ?, timezone = ?,
                 attributes = ?, updated_at = ? WHERE id = ?",
        )
        .bind(&merged.email)
        .bind(&merged.phone)
        .bind(&merged.first_name)
        .bind(&merged.last_name)
        .bind(&merged.status)
        .bind(&merged.timezone)
        .bind(attributes)
        .bind(merged.updated_at)
        .bind(&merged.id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(merged)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn save_definition(&self, v: &DefinitionVersion) -> Result<()> {
        sqlx::query(
            "INSERT INTO definitions (hash, id, kind, source, document, first_seen_at) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(&v.hash)
        .bind(&v.id)
        .bind(&v.kind)
        .bind(&v.source)
        .bind(to_text(&v.document))
        .bind(v.first_seen_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn definition(&self, hash: &str) -> Result<Option<DefinitionVersion>> {
        let row = sqlx::query("SELECT hash, id, kind, source, document, first_seen_at FROM definitions WHERE hash = ?")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(decode_definition!(&r))).transpose()
    }

    async fn commit(&self, c: Commit) -> Result<CommitOutcome> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.jobs
            .send(super::group_commit::Job { commit: c, reply })
            .map_err(|_| StoreError::Config("the SQLite writer stopped".into()))?;
        done.await
            .map_err(|_| StoreError::Config("the SQLite writer stopped".into()))?
    }

    async fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(decode_run!(&r))).transpose()
    }

    async fn run_by_idempotency_key(
        &self,
        workflow_id: &str,
        key: &str,
    ) -> Result<Option<RunRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE workflow_id = ? AND idempotency_key = ?"
        ))
        .bind(workflow_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(decode_run!(&r))).transpose()
    }

    async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE (?1 IS NULL OR workflow_id = ?1) AND (?2 IS NULL OR status = ?2)
               AND (?3 IS NULL OR created_at < ?3) AND (?5 IS NULL OR contact_id = ?5)
               AND (?6 IS NULL OR json_extract(labels, '$.\"' || ?6 || '\"') = ?7)
             ORDER BY created_at DESC, id DESC LIMIT ?4"
        ))
        .bind(&f.workflow_id)
        .bind(f.status.map(RunStatus::as_str))
        .bind(f.created_before)
        .bind(f.limit)
        .bind(&f.contact_id)
        .bind(f.label.as_ref().map(|l| l.0.replace('"', "")))
        .bind(f.label.as_ref().map(|l| l.1.clone()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(decode_run!(r))).collect()
    }

    async fn step_log(&self, run_id: &str) -> Result<Vec<StepLogEntry>> {
        let rows = sqlx::query(
            "SELECT seq, step_id, action, status, attempt, started_at, finished_at, output, error, iteration
             FROM step_log WHERE run_id = ? ORDER BY seq",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(decode_step!(r))).collect()
    }

    async fn claim_runs(
        &self,
        owner: &str,
        now: Millis,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<RunRecord>> {
        // Unfinished is said as `NOT IN` the finished statuses, which no index serves, so the
        // planner walks `runs_due` and reads only the due runs, in order. Said as `IN` the
        // unfinished ones, it picks `runs_by_status` instead, which matches every waiting run:
        // each claim then read and sorted them all (20 ms at 100,000 pending timers).
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(concat!(
            "UPDATE runs SET status = 'running', lease_owner = ?1, due_at = ?2, updated_at = ?3
             WHERE id IN (SELECT id FROM runs WHERE due_at IS NOT NULL AND due_at <= ?3
                          AND status NOT IN ('completed', 'failed', 'cancelled') ORDER BY due_at LIMIT ?4)
             RETURNING ",
            run_columns!()
        ))
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let runs = rows
            .iter()
            .map(|r| Ok(decode_run!(r)))
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(runs)
    }

    async fn renew_leases(
        &self,
        owner: &str,
        run_ids: &[String],
        until: Millis,
    ) -> Result<Vec<String>> {
        let mut lost = Vec::new();
        let mut tx = self.write_tx().await?;
        for id in run_ids {
            let r = sqlx::query("UPDATE runs SET due_at = ? WHERE id = ? AND lease_owner = ? AND status = 'running'")
                .bind(until)
                .bind(id)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            if r.rows_affected() == 0 {
                lost.push(id.clone());
            }
        }
        tx.commit().await?;
        Ok(lost)
    }

    async fn release_runs(&self, owner: &str, now: Millis) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE runs SET status = 'pending', lease_owner = NULL, due_at = ?, updated_at = ?
             WHERE lease_owner = ? AND status = 'running'",
        )
        .bind(now)
        .bind(now)
        .bind(owner)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected())
    }

    async fn next_due_at(&self) -> Result<Option<Millis>> {
        // Only what `claim_runs` would take: a finished run whose state kept a timer would
        // otherwise make an idle worker wake for it over and over. `NOT IN`: see `claim_runs`.
        Ok(sqlx::query_scalar(
            "SELECT MIN(due_at) FROM runs WHERE due_at IS NOT NULL AND status NOT IN ('completed', 'failed', 'cancelled')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn cancel_run(&self, id: &str, now: Millis) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query(
            "UPDATE runs SET status = 'cancelled', due_at = NULL, lease_owner = NULL, wait_event = NULL, wait_key = NULL,
                 finished_at = ?, updated_at = ?, error = 'cancelled'
             WHERE id = ? AND status IN ('pending', 'running', 'waiting')",
        )
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        // Messages the run queued but that have not gone out yet are not sent.
        sqlx::query(
            "UPDATE outbox SET status = 'cancelled', next_attempt_at = NULL, lease_owner = NULL,
                 last_error = 'the run was cancelled', updated_at = ? WHERE run_id = ? AND status = 'pending'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // A parent waiting on this run wakes to see it cancelled.
        sqlx::query(
            "UPDATE runs SET due_at = ?, updated_at = ? WHERE status = 'waiting'
               AND id = (SELECT parent_run_id FROM runs WHERE id = ?)",
        )
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn retry_run(&self, id: &str, now: Millis) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE runs SET status = 'pending', due_at = ?, attempts = 0, error = NULL, finished_at = NULL,
                 updated_at = ? WHERE id = ? AND status = 'failed'",
        )
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn count_runs(&self) -> Result<Vec<(RunStatus, i64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM runs GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, n)| RunStatus::parse(&s).map(|s| (s, n)))
            .collect())
    }

    async fn insert_events(
        &self,
        events: &[NewEvent],
        new_runs: &[NewRun],
        contacts: &[ContactUpsert],
    ) -> Result<Vec<Contact>> {
        let mut tx = self.write_tx().await?;
        // Contacts first: the runs started in this transaction see them as they are now.
        let mut stored = Vec::with_capacity(contacts.len());
        for u in contacts {
            stored.push(upsert_contact(&mut tx, u).await?);
        }
        for e in events {
            insert_event(&mut tx, e).await?;
        }
        for r in new_runs {
            insert_run(&mut tx, r, None).await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn wake_waiting(&self, name: &str, key: &str, now: Millis) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE runs SET due_at = ?, updated_at = ? WHERE wait_event = ? AND wait_key = ? AND status = 'waiting'",
        )
        .bind(now)
        .bind(now)
        .bind(name)
        .bind(key)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected())
    }

    async fn find_event(
        &self,
        name: &str,
        key: &str,
        since: Millis,
        exclude: &[String],
    ) -> Result<Option<EventRecord>> {
        let rows = sqlx::query(
            "SELECT id, name, key, data, source_run_id, created_at FROM events
             WHERE name = ? AND key = ? AND created_at >= ? ORDER BY created_at, id LIMIT ?",
        )
        .bind(name)
        .bind(key)
        .bind(since)
        .bind(exclude.len() as i64 + 1)
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let e = decode_event!(r);
            if !exclude.contains(&e.id) {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    async fn contact(&self, id: &str) -> Result<Option<Contact>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            contact_columns!(),
            " FROM contacts WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(decode_contact!(&r))).transpose()
    }

    async fn find_contact(
        &self,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Result<Option<Contact>> {
        if let Some(e) = email {
            let row = sqlx::query(concat!(
                "SELECT ",
                contact_columns!(),
                " FROM contacts WHERE email = ?"
            ))
            .bind(e)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(r) = row {
                return Ok(Some(decode_contact!(&r)));
            }
        }
        if let Some(p) = phone {
            let row = sqlx::query(concat!(
                "SELECT ",
                contact_columns!(),
                " FROM contacts WHERE phone = ?"
            ))
            .bind(p)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(r) = row {
                return Ok(Some(decode_contact!(&r)));
            }
        }
        Ok(None)
    }

    async fn claim_outbox(
        &self,
        owner: &str,
        now: Millis,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRecord>> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(concat!(
            "UPDATE outbox SET status = 'sending', lease_owner = ?1, next_attempt_at = ?2, attempts = attempts + 1,
                 updated_at = ?3
             WHERE id IN (SELECT id FROM outbox WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ?3
                          AND status IN ('pending', 'sending') ORDER BY next_attempt_at LIMIT ?4)
             RETURNING ",
            outbox_columns!()
        ))
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let out = rows
            .iter()
            .map(|r| Ok(decode_outbox!(r)))
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(out)
    }

    async fn finish_delivery(
        &self,
        id: &str,
        owner: &str,
        outcome: DeliveryOutcome,
        now: Millis,
    ) -> Result<bool> {
        let q = match &outcome {
            DeliveryOutcome::Sent { provider_id } => sqlx::query(
                "UPDATE outbox SET status = 'sent', provider_id = ?, sent_at = ?, next_attempt_at = NULL,
                     lease_owner = NULL, last_error = NULL, updated_at = ?
                 WHERE id = ? AND lease_owner = ? AND status = 'sending'",
            )
            .bind(provider_id.clone())
            .bind(now)
            .bind(now),
            DeliveryOutcome::Retry { error, next_attempt_at } => sqlx::query(
                "UPDATE outbox SET status = 'pending', last_error = ?, next_attempt_at = ?, lease_owner = NULL,
                     updated_at = ?
                 WHERE id = ? AND lease_owner = ? AND status = 'sending'",
            )
            .bind(error.clone())
            .bind(*next_attempt_at)
            .bind(now),
            DeliveryOutcome::Failed { error } => sqlx::query(
                "UPDATE outbox SET status = 'failed', last_error = ?, next_attempt_at = NULL, lease_owner = NULL,
                     updated_at = ?
                 WHERE id = ? AND lease_owner = ? AND status = 'sending'",
            )
            .bind(error.clone())
            .bind(now),
            DeliveryOutcome::Suppressed { reason } => sqlx::query(
                "UPDATE outbox SET status = 'suppressed', last_error = ?, next_attempt_at = NULL, lease_owner = NULL,
                     updated_at = ?
                 WHERE id = ? AND lease_owner = ? AND status = 'sending'",
            )
            .bind(reason.clone())
            .bind(now),
        };
        let r = q.bind(id).bind(owner).execute(&self.writer).await?;
        Ok(r.rows_affected() == 1)
    }

    async fn outbox_for_run(&self, run_id: &str) -> Result<Vec<OutboxRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            outbox_columns!(),
            " FROM outbox WHERE run_id = ? ORDER BY created_at, id"
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(decode_outbox!(r))).collect()
    }

    async fn count_outbox(&self) -> Result<Vec<(OutboxStatus, i64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM outbox GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, n)| OutboxStatus::parse(&s).map(|s| (s, n)))
            .collect())
    }

    async fn next_outbox_at(&self) -> Result<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE next_attempt_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn cron_checked_until(
        &self,
        workflow_id: &str,
        trigger_key: &str,
    ) -> Result<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT checked_until FROM cron_state WHERE workflow_id = ? AND trigger_key = ?",
        )
        .bind(workflow_id)
        .bind(trigger_key)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn set_cron_checked_until(
        &self,
        workflow_id: &str,
        trigger_key: &str,
        until: Millis,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO cron_state (workflow_id, trigger_key, checked_until) VALUES (?, ?, ?)
             ON CONFLICT (workflow_id, trigger_key) DO UPDATE
                 SET checked_until = MAX(cron_state.checked_until, excluded.checked_until)",
        )
        .bind(workflow_id)
        .bind(trigger_key)
        .bind(until)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn record_cron_fire(&self, fire: &CronFire, run: Option<&NewRun>) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query(
            "INSERT INTO cron_fires (workflow_id, trigger_key, slot, outcome, reason, run_id, recorded_at)
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (workflow_id, trigger_key, slot) DO NOTHING",
        )
        .bind(&fire.workflow_id)
        .bind(&fire.trigger_key)
        .bind(fire.slot)
        .bind(fire.outcome.as_str())
        .bind(&fire.reason)
        .bind(&fire.run_id)
        .bind(fire.recorded_at)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(run) = run {
            insert_run(&mut tx, run, None).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn cron_run_active(&self, workflow_id: &str, trigger_key: &str) -> Result<bool> {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT r.status FROM cron_fires f JOIN runs r ON r.id = f.run_id
             WHERE f.workflow_id = ? AND f.trigger_key = ? AND f.outcome = 'fired'
             ORDER BY f.slot DESC LIMIT 1",
        )
        .bind(workflow_id)
        .bind(trigger_key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(status
            .and_then(|s| RunStatus::parse(&s))
            .is_some_and(|s| !s.is_finished()))
    }

    async fn cron_fires(&self, workflow_id: &str, limit: i64) -> Result<Vec<CronFire>> {
        let rows = sqlx::query(
            "SELECT workflow_id, trigger_key, slot, outcome, reason, run_id, recorded_at FROM cron_fires
             WHERE workflow_id = ? ORDER BY slot DESC LIMIT ?",
        )
        .bind(workflow_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(decode_cron_fire!(r))).collect()
    }
}

/// WAL frames (about 16 MiB) after which the writer is asked to start the WAL over.
const WAL_FRAMES_BEFORE_RESTART: i64 = 4096;

/// Keeps checkpoints off the commit path.
///
/// Every 250 ms this copies the WAL into the database file from its own connection (PASSIVE:
/// it waits for nobody) and then syncs the database file itself. SQLite only syncs the file
/// when a checkpoint catches up completely, which under steady load it never does, so without
/// this all the syncing would fall on whichever checkpoint finally does catch up.
///
/// SQLite also only starts the WAL over when a write begins with every frame copied. With any
/// pause in the load that happens by itself. Under sustained saturation commits keep
/// appending, so once the WAL is long this catches up pass by pass until little is left, then
/// asks the writer to checkpoint between two batches: it copies and syncs only what was
/// appended since, and its next write starts the WAL over.
async fn checkpoint_loop(
    conn: SqlitePool,
    alive: tokio::sync::mpsc::WeakUnboundedSender<super::group_commit::Job>,
    due: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    /// Frames (1 MiB) a catching-up pass may leave for the writer.
    const SMALL_DELTA: i64 = 256;
    // The database file is never opened here, only through SQLite: closing any descriptor of
    // a file drops every POSIX lock this process holds on it, and another program (the
    // `sqlite3` shell, a backup tool) would then think it was the last connection, checkpoint
    // and delete the WAL under our feet. SQLite syncs the file itself at each checkpoint.
    let passive =
        || sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&conn);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if alive.upgrade().is_none() {
            return;
        }
        let (mut frames, mut copied) = match passive().await {
            Ok((_, f, c)) => (f, c),
            Err(e) => {
                tracing::debug!(error = %e, "WAL checkpoint did not complete");
                continue;
            }
        };
        if frames <= WAL_FRAMES_BEFORE_RESTART {
            continue;
        }
        for _ in 0..8 {
            let before = copied;
            match passive().await {
                Ok((_, f, c)) => {
                    (frames, copied) = (f, c);
                    if frames - before <= SMALL_DELTA && copied == frames {
                        due.store(true, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

async fn insert_event(tx: &mut Transaction<'_, Sqlite>, e: &NewEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (id, name, key, data, source_run_id, created_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&e.id)
    .bind(&e.name)
    .bind(&e.key)
    .bind(to_text(&e.data))
    .bind(&e.source_run_id)
    .bind(e.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A COMMIT and then a ROLLBACK that both fail (a disk error) leave the writer inside a
    /// transaction, which is what forgetting one does. The connection must be replaced, not
    /// reused: reused, it refuses every later write.
    #[tokio::test]
    async fn a_writer_left_inside_a_transaction_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("h.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        {
            let mut conn = store.writer.acquire().await.unwrap();
            let tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
            std::mem::forget(tx);
        }
        for _ in 0..3 {
            store
                .insert_events(&[], &[], &[])
                .await
                .expect("the writer works again");
        }
        let event = NewEvent {
            id: "e1".into(),
            name: "n".into(),
            key: None,
            data: serde_json::json!({}),
            source_run_id: None,
            created_at: 1,
        };
        store
            .insert_events(std::slice::from_ref(&event), &[], &[])
            .await
            .unwrap();
        assert!(store.find_event("n", "", 0, &[]).await.is_ok());
    }
}
