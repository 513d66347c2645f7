//! The shared store: PostgreSQL, for several Herald processes working off one database.
//!
//! Everything runs at `READ COMMITTED`, the server's default, where each statement sees what
//! was committed when it started. What keeps processes from stepping on each other:
//!
//! - Work is handed out by single `UPDATE`s that pick their rows with `FOR UPDATE SKIP
//!   LOCKED`: claimers never wait for each other and never receive the same row.
//! - A multi-statement method starts with the statement that locks the row it depends on (the
//!   run, in `commit` and `cancel_run`), so the rest of its transaction runs with that row held.
//! - Races to create something are decided by a unique constraint with `ON CONFLICT`: run
//!   idempotency keys, outbox keys, cron slots. The loser waits for the winner's commit and
//!   then writes nothing.
//! - Contact upserts, which read before they write, retry inside a savepoint when they lose a
//!   race (see `upsert_contact` below); a `commit` that PostgreSQL aborts to break a deadlock is
//!   run again.

use std::str::FromStr;
use std::sync::LazyLock;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Acquire as _, Arguments as _, Postgres, Transaction};

use super::rows::to_text;
use super::sql::commit::{self, INSERT_RUN, RunWritten, STEP_COLUMNS, STEP_CONFLICT, UPDATE_RUN};
use super::sql::{self, AttributeKind, Backend, Dialect, Exec as _, Param, Stmt, contacts};
use super::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Enough for the engine's workers, dispatcher and API of one process without crowding the
/// server when several processes share it.
const MAX_CONNECTIONS: u32 = 10;

/// How often a whole `commit` is tried when PostgreSQL aborts it to break a deadlock (two
/// commits upserting the same contacts in opposite orders, say). The transaction was rolled
/// back entirely, so running it again is safe.
const COMMIT_ATTEMPTS: u32 = 3;

/// How often one contact upsert is attempted when it loses races for a unique e-mail or phone.
/// Each retry sees the winner's row, so a second attempt normally settles it; the bound only
/// stops a pathological livelock.
const CONTACT_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone)]
pub struct PgStore {
    pub(super) pool: PgPool,
}

impl PgStore {
    /// Connects to a `postgres://` URL and applies migrations. The URL may carry
    /// `?options=-c%20search_path%3D<schema>` to keep Herald's tables in a schema of their own.
    pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
        Ok(std::sync::Arc::new(PgStore::connect(url).await?))
    }

    /// [`PgStore::open`], returning the concrete type.
    pub async fn connect(url: &str) -> Result<PgStore> {
        PgStore::connect_with(url, &StoreOptions::default()).await
    }

    /// [`PgStore::connect`], with options.
    pub async fn connect_with(url: &str, store: &StoreOptions) -> Result<PgStore> {
        use sqlx::Connection as _;
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            StoreError::Config(format!("invalid PostgreSQL URL `{}`: {e}", redact_url(url)))
        })?;
        // One connection first, on its own: a pool that cannot connect waits out its acquire
        // timeout and says only "timed out", where this says "connection refused" at once.
        let probe = tokio::time::timeout(
            store.acquire_timeout.max(std::time::Duration::from_secs(5)),
            PgConnection::connect_with(&options),
        )
        .await
        .map_err(|_| {
            StoreError::Config(format!(
                "PostgreSQL at {} did not answer within {} s",
                redact_url(url),
                store
                    .acquire_timeout
                    .max(std::time::Duration::from_secs(5))
                    .as_secs()
            ))
        })?
        .map_err(|e| {
            StoreError::Config(format!(
                "cannot connect to PostgreSQL at {}: {e}",
                redact_url(url)
            ))
        })?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(store.acquire_timeout)
            .after_release(|conn, _| super::reusable(conn))
            .connect_with(options)
            .await?;
        // The migrator holds an advisory lock while it works, so processes starting together
        // apply each migration once.
        MIGRATOR.run(&pool).await?;
        Ok(PgStore { pool })
    }

    async fn commit_once(&self, c: &Commit) -> Result<CommitOutcome> {
        // The common segment writes only its run and step log: one statement, committed on its
        // own, so one round trip instead of BEGIN, a statement per row, and COMMIT.
        let alone = c.outbox.is_empty()
            && c.events.is_empty()
            && c.new_runs.is_empty()
            && c.contacts.is_empty()
            && c.wake_runs.is_empty();
        if alone {
            let mut conn = self.pool.acquire().await?;
            return match write_run(&mut conn, c).await? {
                RunWritten::Yes => Ok(CommitOutcome::Committed {
                    contacts: Vec::new(),
                }),
                RunWritten::Duplicate => commit::duplicate(self, c).await,
                RunWritten::LeaseLost => Err(StoreError::LeaseLost),
            };
        }
        let mut tx = self.pool.begin().await?;
        let written = write_run(&mut tx, c).await?;
        commit::finish(self, tx, c, written).await
    }
}

/// Writes a commit's run (inserted, or updated under its lease) and its step log in one
/// statement. The step rows are inserted only if the run row was written, so a duplicate or a
/// lost lease writes nothing at all, in a transaction or not.
///
/// For an update, the `UPDATE` is what locks the run row: a claimer cannot take the run while
/// this statement (or the transaction around it) runs. If another worker took it, or it was
/// cancelled, first, PostgreSQL re-checks the WHERE clause against that committed version and
/// nothing matches.
async fn write_run(conn: &mut PgConnection, c: &Commit) -> Result<RunWritten> {
    static INSERT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH r AS ({INSERT_RUN} RETURNING 1), s AS ({}) SELECT count(*) FROM r",
            insert_steps_sql(21, "r")
        )
    });
    static UPDATE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH u AS ({UPDATE_RUN} RETURNING 1), s AS ({}) SELECT count(*) FROM u",
            insert_steps_sql(17, "u")
        )
    });
    let (sql, run, run_id, missed) = match &c.run {
        RunWrite::Insert { run, owner } => (
            INSERT.as_str(),
            commit::insert_run(run, Some((&c.state, owner.as_deref()))),
            &run.id,
            RunWritten::Duplicate,
        ),
        RunWrite::Update { run_id, owner } => (
            UPDATE.as_str(),
            commit::update_run(c, run_id, owner),
            run_id,
            RunWritten::LeaseLost,
        ),
    };
    let mut args = Postgres::arguments(run.params)?;
    bind_steps(&mut args, run_id, &c.steps)?;
    let written: i64 = sqlx::query_scalar_with(sql, args)
        .fetch_one(&mut *conn)
        .await?;
    Ok(if written == 1 {
        RunWritten::Yes
    } else {
        missed
    })
}

/// An `INSERT` of step-log rows from arrays bound at `$first` (the run id) and the ten after
/// it, done only if the CTE `gate` returned a row.
fn insert_steps_sql(first: usize, gate: &str) -> String {
    let p: Vec<String> = (first..first + 11).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO step_log ({STEP_COLUMNS})
         SELECT {run}, t.* FROM unnest({}::bigint[], {}::text[], {}::text[], {}::text[], {}::bigint[],
             {}::bigint[], {}::bigint[], {}::text[], {}::text[], {}::text[])
             AS t(seq, step_id, action, status, attempt, started_at, finished_at, output, error, iteration)
         WHERE EXISTS (SELECT 1 FROM {gate})
         {STEP_CONFLICT}",
        p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10],
        run = p[0],
    )
}

/// Binds the run id and the step entries as the eleven column arrays of [`insert_steps_sql`].
/// One statement cannot touch the same row twice, so of two entries with one `seq` the later
/// wins, as it would had they been written one after the other.
fn bind_steps(args: &mut PgArguments, run_id: &str, steps: &[StepLogEntry]) -> Result<()> {
    // A `for_each` can log thousands of entries in one segment: index them by seq.
    let mut at: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    let mut last: Vec<&StepLogEntry> = Vec::with_capacity(steps.len());
    for step in steps {
        match at.get(&step.seq) {
            Some(&i) => last[i] = step,
            None => {
                at.insert(step.seq, last.len());
                last.push(step);
            }
        }
    }
    let ints = |f: fn(&StepLogEntry) -> i64| last.iter().map(|e| f(e)).collect::<Vec<_>>();
    let texts =
        |f: fn(&StepLogEntry) -> Option<String>| last.iter().map(|e| f(e)).collect::<Vec<_>>();
    let bound = (|| {
        args.add(run_id.to_owned())?;
        args.add(ints(|e| e.seq))?;
        args.add(texts(|e| Some(e.step_id.clone())))?;
        args.add(texts(|e| Some(e.action.clone())))?;
        args.add(texts(|e| Some(e.status.as_str().to_owned())))?;
        args.add(ints(|e| e.attempt))?;
        args.add(ints(|e| e.started_at))?;
        args.add(ints(|e| e.finished_at))?;
        args.add(texts(|e| e.output.as_ref().map(to_text)))?;
        args.add(texts(|e| e.error.clone()))?;
        args.add(texts(|e| e.iteration.clone()))
    })();
    bound.map_err(|e| StoreError::Corrupt(format!("cannot bind a value: {e}")))
}

/// Deadlocks and serialization failures: PostgreSQL rolled the transaction back and says so
/// precisely so that it can be run again.
fn is_retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40P01" | "40001"))
        }
        _ => false,
    }
}

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation())
}

/// The PostgreSQL dialect's fragments. Lists of ids are bound as a `text[]`.
impl Dialect for Postgres {
    fn arguments(params: Vec<Param>) -> Result<PgArguments> {
        sql::bind_all::<Postgres, _>(params, |ids| ids)
    }

    fn rows_affected(done: &sqlx::postgres::PgQueryResult) -> u64 {
        done.rows_affected()
    }

    fn in_list(column: &str, list: &str) -> String {
        format!("{column} = ANY({list})")
    }

    fn label_is(name: &str, value: &str) -> String {
        format!("(labels::jsonb) ->> {name} = {value}")
    }

    fn label_name(name: &str) -> String {
        name.to_owned()
    }

    fn attribute(name: &str, kind: AttributeKind) -> String {
        let a = format!("(c.attributes::jsonb -> {name})");
        let ty = format!("jsonb_typeof({a})");
        let text = format!("({a} #>> '{{}}')");
        match kind {
            AttributeKind::Text => format!("(CASE WHEN {ty} = 'string' THEN {text} END)"),
            AttributeKind::Number => {
                format!("(CASE WHEN {ty} = 'number' THEN {text}::float8 END)")
            }
            AttributeKind::Bool => format!(
                "(CASE WHEN {ty} = 'boolean' THEN CASE WHEN {text} = 'true' THEN 1 ELSE 0 END END)"
            ),
            // herald_time_ms (migration 0012) gives NULL for text that is not a date, where a
            // cast would fail the whole query.
            AttributeKind::Time => {
                format!("(CASE WHEN {ty} = 'string' THEN herald_time_ms({text}) END)")
            }
            AttributeKind::Any => format!("NULLIF({ty}, 'null')"),
        }
    }

    const FOR_UPDATE: &'static str = " FOR UPDATE";
    /// One statement. `SKIP LOCKED` passes over rows another claimer (or a committing owner)
    /// has locked instead of waiting for them. A row that another claimer updated and
    /// committed after our snapshot was taken is re-checked by the lock against its new
    /// version, whose `due_at` is now in the future, and dropped: no run is handed out twice.
    /// Runs due at the same instant are taken in no particular order: ordering them by id as
    /// well made each claim read and sort all of them (9 ms per claim with 10,000 timers due
    /// at once).
    const PICK_DUE_RUNS: &'static str = "ORDER BY due_at LIMIT $4 FOR UPDATE SKIP LOCKED";
    /// As for runs: locked rows skipped, rows claimed since our snapshot re-checked and
    /// dropped.
    const PICK_DUE_MESSAGES: &'static str =
        "ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED";
    const CONVERSATION_KEY: &'static str = "((labels::jsonb) ->> 'conversation')";
    const CONTACT_ADDRESSES: &'static str =
        "(SELECT CAST(json_object_agg(a.channel, a.address) AS TEXT)
         FROM contact_addresses a WHERE a.contact_id = contacts.id)";
}

#[async_trait]
impl Backend for PgStore {
    type Db = Postgres;
    const NAME: &'static str = "postgres";

    async fn read(&self) -> Result<PoolConnection<Postgres>> {
        Ok(self.pool.acquire().await?)
    }

    async fn write(&self) -> Result<PoolConnection<Postgres>> {
        Ok(self.pool.acquire().await?)
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    async fn claim(&self, s: Stmt) -> Result<Vec<PgRow>> {
        let mut conn = self.pool.acquire().await?;
        Postgres::fetch_all(&mut *conn, s).await
    }

    /// A commit that PostgreSQL aborts to break a deadlock is run again: it was rolled back
    /// entirely.
    async fn commit(&self, c: Commit) -> Result<CommitOutcome> {
        let mut attempt = 1;
        loop {
            match self.commit_once(&c).await {
                Err(e) if is_retryable(&e) && attempt < COMMIT_ATTEMPTS => attempt += 1,
                outcome => return outcome,
            }
        }
    }

    /// At `READ COMMITTED` each statement sees what was committed when it started, so two
    /// transactions can race for the same e-mail or phone: both find no contact and both
    /// insert, or one finds no contact with a phone that the other commits a moment later.
    /// Each attempt runs in a savepoint, and an attempt that lost such a race rolls back just
    /// the upsert and starts again, now seeing the winner's row, so racing upserts come out as
    /// if they had run one after the other (which is what SQLite, with its single writer, does).
    async fn upsert_contact(
        tx: &mut Transaction<'static, Postgres>,
        u: &ContactUpsert,
    ) -> Result<Contact> {
        let mut attempt = 1;
        loop {
            let last = attempt == CONTACT_ATTEMPTS;
            let mut savepoint = tx.begin().await?;
            match contacts::try_upsert::<Postgres>(&mut savepoint, u, !last).await {
                Ok(Some(contact)) => {
                    savepoint.commit().await?;
                    return Ok(contact);
                }
                Ok(None) => savepoint.rollback().await?,
                Err(e) if is_unique_violation(&e) && !last => savepoint.rollback().await?,
                Err(e) => return Err(e),
            }
            attempt += 1;
        }
    }
}
