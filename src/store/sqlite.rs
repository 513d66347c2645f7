//! The embedded store: one SQLite file in WAL mode, created on first start.
//!
//! SQLite has one writer at a time, so every write transaction starts with `BEGIN IMMEDIATE`:
//! it takes the write lock up front instead of failing to upgrade a read lock half way, and
//! `busy_timeout` queues writers instead of erroring. `synchronous=NORMAL` in WAL mode means a
//! commit survives the process being killed (the WAL is in the OS's cache); only a power cut
//! can lose the last moments, and `HERALD_SQLITE_SYNC=full` closes that gap at some cost.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::sql::commit::{self, RunWritten};
use super::sql::{self, AttributeKind, Backend, Dialect, Exec as _, Param, Stmt, contacts};
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
            // Group commits differ in shape (how many runs, steps, messages), and each shape
            // is a long statement: a few dozen kept prepared cover the usual ones, where the
            // default hundred held tens of megabytes.
            .connect_with(
                options
                    .clone()
                    .pragma("wal_autocheckpoint", "0")
                    .statement_cache_capacity(WRITER_STATEMENTS),
            )
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

    /// Writes one commit in its own transaction: the exact path, used when a batch cannot
    /// be written whole (a duplicate, a lost lease, a contact upsert).
    pub(super) async fn commit_single(&self, c: Commit) -> Result<CommitOutcome> {
        let mut tx = self.begin().await?;
        let written = match &c.run {
            RunWrite::Insert { run, owner } => {
                let insert = commit::insert_run(run, Some((&c.state, owner.as_deref())));
                match Sqlite::execute(&mut *tx, insert).await? {
                    1 => RunWritten::Yes,
                    _ => RunWritten::Duplicate,
                }
            }
            RunWrite::Update { run_id, owner } => {
                match Sqlite::execute(&mut *tx, commit::update_run(&c, run_id, owner)).await? {
                    1 => RunWritten::Yes,
                    _ => RunWritten::LeaseLost,
                }
            }
        };
        if let RunWritten::Yes = written {
            let run_id = match &c.run {
                RunWrite::Insert { run, .. } => &run.id,
                RunWrite::Update { run_id, .. } => run_id,
            };
            // One statement per entry: a segment can log more entries than one statement
            // takes parameters.
            for step in &c.steps {
                let upsert = commit::upsert_steps(run_id, std::slice::from_ref(step));
                Sqlite::execute(&mut *tx, upsert).await?;
            }
        }
        commit::finish(self, tx, &c, written).await
    }
}

/// The SQLite dialect's fragments. Lists of ids are bound as one JSON array.
/// Statements the writer keeps prepared.
const WRITER_STATEMENTS: usize = 32;

impl Dialect for Sqlite {
    fn arguments(params: Vec<Param>) -> Result<SqliteArguments> {
        sql::bind_all::<Sqlite, _>(params, |ids| {
            serde_json::to_string(&ids).expect("a list of strings always serializes")
        })
    }

    /// With anonymous placeholders (see `sql::positional`).
    fn statement(s: Stmt) -> Result<(Cow<'static, str>, SqliteArguments)> {
        let (sql, params) = sql::positional::anonymous(&s.sql, s.params);
        Ok((Cow::Owned(sql), Self::arguments(params)?))
    }

    fn rows_affected(done: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn in_list(column: &str, list: &str) -> String {
        format!("{column} IN (SELECT value FROM json_each({list}))")
    }

    fn label_is(name: &str, value: &str) -> String {
        format!("json_extract(labels, '$.\"' || {name} || '\"') = {value}")
    }

    /// The name goes into a quoted JSON path, where a quote would end it.
    fn label_name(name: &str) -> String {
        name.replace('"', "")
    }

    fn attribute(name: &str, kind: AttributeKind) -> String {
        let path = format!("'$.\"' || {name} || '\"'");
        let ty = format!("json_type(c.attributes, {path})");
        let value = format!("json_extract(c.attributes, {path})");
        match kind {
            AttributeKind::Text => format!("(CASE WHEN {ty} = 'text' THEN {value} END)"),
            AttributeKind::Number => {
                format!("(CASE WHEN {ty} IN ('integer', 'real') THEN {value} END)")
            }
            AttributeKind::Bool => {
                format!("(CASE {ty} WHEN 'true' THEN 1 WHEN 'false' THEN 0 END)")
            }
            // The GLOB keeps out what SQLite's date functions would also read, such as 'now'
            // or a bare number of days.
            AttributeKind::Time => format!(
                "(CASE WHEN {ty} = 'text' AND {value} GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*' \
                 THEN CAST(unixepoch({value}, 'subsec') * 1000 AS INTEGER) END)"
            ),
            AttributeKind::Any => format!("NULLIF({ty}, 'null')"),
        }
    }

    /// Every write transaction starts with `BEGIN IMMEDIATE`: it already holds the one write
    /// lock.
    const FOR_UPDATE: &'static str = "";
    /// Claims run in a `BEGIN IMMEDIATE` transaction, so no other claimer runs meanwhile.
    const PICK_DUE_RUNS: &'static str = "ORDER BY due_at LIMIT $4";
    const PICK_DUE_MESSAGES: &'static str = "ORDER BY next_attempt_at LIMIT $4";
    const CONVERSATION_KEY: &'static str = "json_extract(labels, '$.conversation')";
    const CONTACT_ADDRESSES: &'static str = "(SELECT json_group_object(a.channel, a.address)
         FROM contact_addresses a WHERE a.contact_id = contacts.id)";
}

#[async_trait]
impl Backend for SqliteStore {
    type Db = Sqlite;
    const NAME: &'static str = "sqlite";

    async fn read(&self) -> Result<PoolConnection<Sqlite>> {
        Ok(self.pool.acquire().await?)
    }

    async fn write(&self) -> Result<PoolConnection<Sqlite>> {
        Ok(self.writer.acquire().await?)
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn claim(&self, s: Stmt) -> Result<Vec<SqliteRow>> {
        let mut tx = self.begin().await?;
        let rows = Sqlite::fetch_all(&mut *tx, s).await?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn commit(&self, c: Commit) -> Result<CommitOutcome> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.jobs
            .send(super::group_commit::Job { commit: c, reply })
            .map_err(|_| StoreError::Config("the SQLite writer stopped".into()))?;
        done.await
            .map_err(|_| StoreError::Config("the SQLite writer stopped".into()))?
    }

    /// The one writer means nobody can race this upsert: one attempt, never strict.
    async fn upsert_contact(
        tx: &mut Transaction<'static, Sqlite>,
        u: &ContactUpsert,
    ) -> Result<Contact> {
        contacts::try_upsert::<Sqlite>(&mut *tx, u, false)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a lenient contact upsert gave up".into()))
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
                .insert_events(&[], &[], &[], &[])
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
            .insert_events(std::slice::from_ref(&event), &[], &[], &[])
            .await
            .unwrap();
        assert!(store.find_event("n", "", 0, &[]).await.is_ok());
    }
}
