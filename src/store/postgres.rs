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
//!   race (see [`upsert_contact`]); a `commit` that PostgreSQL aborts to break a deadlock is
//!   run again.

use std::str::FromStr;
use std::sync::LazyLock;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Acquire as _, Postgres, Transaction};

use super::rows::{
    contact_columns, decode_contact, decode_cron_fire, decode_definition, decode_event,
    decode_outbox, decode_run, decode_step, outbox_columns, retry_text, run_columns, to_text,
};
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
                RunWritten::Duplicate => self.duplicate(c).await,
                RunWritten::LeaseLost => Err(StoreError::LeaseLost),
            };
        }
        let mut tx = self.pool.begin().await?;
        match write_run(&mut tx, c).await? {
            RunWritten::Yes => {}
            RunWritten::Duplicate => {
                tx.rollback().await?;
                return self.duplicate(c).await;
            }
            RunWritten::LeaseLost => {
                tx.rollback().await?;
                return Err(StoreError::LeaseLost);
            }
        }
        for m in &c.outbox {
            // Two transactions enqueueing the same key: the second waits for the first and
            // then inserts nothing, so one message goes out.
            sqlx::query(
                "INSERT INTO outbox (id, run_id, workflow_id, step_id, channel, recipient, sender, subject, body, html, headers,
                     idempotency_key, status, attempts, max_attempts, next_attempt_at, created_at, updated_at, category, retry)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending', 0, $13, $14, $14, $14, $15, $16)
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
        if !c.wake_runs.is_empty() {
            sqlx::query("UPDATE runs SET due_at = $1, updated_at = $1 WHERE id = ANY($2) AND status = 'waiting'")
                .bind(c.now)
                .bind(&c.wake_runs)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(CommitOutcome::Committed { contacts })
    }
    /// The run that holds the idempotency key an insert found taken.
    async fn duplicate(&self, c: &Commit) -> Result<CommitOutcome> {
        let RunWrite::Insert { run, .. } = &c.run else {
            return Err(StoreError::Corrupt(
                "an update reported as a duplicate".into(),
            ));
        };
        let key = run.idempotency_key.as_deref().unwrap_or_default();
        let existing = self
            .run_by_idempotency_key(&run.workflow_id, key)
            .await?
            .map(|r| r.id)
            .ok_or_else(|| StoreError::Corrupt("idempotency conflict without a run".into()))?;
        Ok(CommitOutcome::Duplicate {
            existing_run_id: existing,
        })
    }
}

/// What [`write_run`] did.
enum RunWritten {
    Yes,
    /// An insert whose idempotency key another run holds: nothing was written.
    Duplicate,
    /// An update of a run this owner no longer leases: nothing was written.
    LeaseLost,
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
    let s = &c.state;
    let (owner, run_id) = match &c.run {
        RunWrite::Insert { run, owner } => {
            static SQL: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "WITH r AS ({INSERT_RUN} RETURNING 1), s AS ({}) SELECT count(*) FROM r",
                    insert_steps_sql(21, "r")
                )
            });
            let q = bind_run(
                sqlx::query_scalar(SQL.as_str()),
                run,
                Some((s, owner.as_deref())),
            );
            let written: i64 = bind_steps(q, &run.id, &c.steps)
                .fetch_one(&mut *conn)
                .await?;
            return Ok(if written == 1 {
                RunWritten::Yes
            } else {
                RunWritten::Duplicate
            });
        }
        RunWrite::Update { run_id, owner } => (owner, run_id),
    };
    let keep_lease = s.status == RunStatus::Running;
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
        "WITH u AS (
             UPDATE runs SET status = $1, version = $2, cursor = $3, context = $4, due_at = $5, wait_event = $6,
                 wait_key = $7, attempts = $8, contact_id = $9, response = $10, error = $11, finished_at = $12,
                 updated_at = $13, lease_owner = CASE WHEN $14 THEN lease_owner ELSE NULL END
             WHERE id = $15 AND lease_owner = $16 AND status = 'running' RETURNING 1),
         s AS ({})
         SELECT count(*) FROM u",
        insert_steps_sql(17, "u")
        )
    });
    let q = sqlx::query_scalar(SQL.as_str())
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
        .bind(owner);
    let written: i64 = bind_steps(q, run_id, &c.steps)
        .fetch_one(&mut *conn)
        .await?;
    Ok(if written == 1 {
        RunWritten::Yes
    } else {
        RunWritten::LeaseLost
    })
}

type PgScalar<'q> = sqlx::query::QueryScalar<'q, Postgres, i64, sqlx::postgres::PgArguments>;

/// An `INSERT` of step-log rows from arrays bound at `$first` (the run id) and the ten after
/// it, done only if the CTE `gate` returned a row. Re-written entries (a retried step's) replace
/// the old ones.
fn insert_steps_sql(first: usize, gate: &str) -> String {
    let p: Vec<String> = (first..first + 11).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO step_log (run_id, seq, step_id, action, status, attempt, started_at, finished_at, output, error, iteration)
         SELECT {run}, t.* FROM unnest({}::bigint[], {}::text[], {}::text[], {}::text[], {}::bigint[],
             {}::bigint[], {}::bigint[], {}::text[], {}::text[], {}::text[])
             AS t(seq, step_id, action, status, attempt, started_at, finished_at, output, error, iteration)
         WHERE EXISTS (SELECT 1 FROM {gate})
         ON CONFLICT (run_id, seq) DO UPDATE SET step_id = EXCLUDED.step_id, action = EXCLUDED.action,
             status = EXCLUDED.status, attempt = EXCLUDED.attempt, started_at = EXCLUDED.started_at,
             finished_at = EXCLUDED.finished_at, output = EXCLUDED.output, error = EXCLUDED.error,
             iteration = EXCLUDED.iteration",
        p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10],
        run = p[0],
    )
}

/// Binds the run id and the step entries as the eleven column arrays of [`insert_steps_sql`].
/// One statement cannot touch the same row twice, so of two entries with one `seq` the later
/// wins, as it would had they been written one after the other.
fn bind_steps<'q>(q: PgScalar<'q>, run_id: &str, steps: &[StepLogEntry]) -> PgScalar<'q> {
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
    q.bind(run_id.to_owned())
        .bind(last.iter().map(|e| e.seq).collect::<Vec<_>>())
        .bind(last.iter().map(|e| e.step_id.clone()).collect::<Vec<_>>())
        .bind(last.iter().map(|e| e.action.clone()).collect::<Vec<_>>())
        .bind(last.iter().map(|e| e.status.clone()).collect::<Vec<_>>())
        .bind(last.iter().map(|e| e.attempt).collect::<Vec<_>>())
        .bind(last.iter().map(|e| e.started_at).collect::<Vec<_>>())
        .bind(last.iter().map(|e| e.finished_at).collect::<Vec<_>>())
        .bind(
            last.iter()
                .map(|e| e.output.as_ref().map(to_text))
                .collect::<Vec<_>>(),
        )
        .bind(last.iter().map(|e| e.error.clone()).collect::<Vec<_>>())
        .bind(last.iter().map(|e| e.iteration.clone()).collect::<Vec<_>>())
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

async fn insert_run(
    conn: &mut PgConnection,
    run: &NewRun,
    state: Option<(&RunState, Option<&str>)>,
) -> Result<bool> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("WITH r AS ({INSERT_RUN} RETURNING 1) SELECT count(*) FROM r"));
    let inserted: i64 = bind_run(sqlx::query_scalar(SQL.as_str()), run, state)
        .fetch_one(&mut *conn)
        .await?;
    Ok(inserted == 1)
}

/// A run's row, from parameters `$1` to `$20` as [`bind_run`] binds them; a taken idempotency
/// key inserts nothing.
const INSERT_RUN: &str = "INSERT INTO runs (id, workflow_id, version, status, trigger_kind, idempotency_key, cursor, context, due_at,
         wait_event, wait_key, lease_owner, attempts, contact_id, parent_run_id, response, error, created_at, updated_at, finished_at, labels)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $18, $19, $20)
     ON CONFLICT (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING";

/// Binds a new run for [`INSERT_RUN`]: as its segment left it when `state` is given (the
/// trigger ran its first steps before storing it), else pending and due now.
fn bind_run<'q>(
    q: PgScalar<'q>,
    run: &NewRun,
    state: Option<(&RunState, Option<&str>)>,
) -> PgScalar<'q> {
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
    q.bind(run.id.clone())
        .bind(run.workflow_id.clone())
        .bind(version.to_owned())
        .bind(status)
        .bind(run.trigger_kind.clone())
        .bind(run.idempotency_key.clone())
        .bind(cursor)
        .bind(context)
        .bind(due_at)
        .bind(wait_event)
        .bind(wait_key)
        .bind(owner)
        .bind(attempts)
        .bind(contact_id)
        .bind(run.parent_run_id.clone())
        .bind(response)
        .bind(error)
        .bind(run.created_at)
        .bind(finished_at)
        .bind(to_text(&run.labels))
}

/// Upserts one contact inside the commit's transaction.
///
/// At `READ COMMITTED` each statement sees what was committed when it started, so two
/// transactions can race for the same e-mail or phone: both find no contact and both insert,
/// or one finds no contact with a phone that the other commits a moment later. Each attempt
/// runs in a savepoint, and an attempt that lost such a race rolls back just the upsert and
/// starts again, now seeing the winner's row, so racing upserts come out as if they had run
/// one after the other (which is what SQLite, with its single writer, does).
async fn upsert_contact(
    tx: &mut Transaction<'static, Postgres>,
    u: &ContactUpsert,
) -> Result<Contact> {
    let mut attempt = 1;
    loop {
        let last = attempt == CONTACT_ATTEMPTS;
        let mut savepoint = tx.begin().await?;
        match try_upsert_contact(&mut savepoint, u, !last).await {
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

/// One upsert attempt. `None` when, with `strict`, it finds it read too early (see below).
async fn try_upsert_contact(
    conn: &mut PgConnection,
    u: &ContactUpsert,
    strict: bool,
) -> Result<Option<Contact>> {
    // `FOR UPDATE` so two upserts of the same contact merge their attributes one after the
    // other instead of the second overwriting the first with what it read before. If the row
    // changes while we wait for it (its phone moved elsewhere, say), PostgreSQL re-checks the
    // condition and we do not get it.
    let by_email = match &u.email {
        Some(e) => sqlx::query(concat!(
            "SELECT ",
            contact_columns!(),
            " FROM contacts WHERE email = $1 FOR UPDATE"
        ))
        .bind(e)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| Ok::<_, StoreError>(decode_contact!(&r)))
        .transpose()?,
        None => None,
    };
    let found_by_email = by_email.is_some();
    let existing = match (by_email, &u.phone) {
        (Some(c), _) => Some(c),
        (None, Some(p)) => sqlx::query(concat!(
            "SELECT ",
            contact_columns!(),
            " FROM contacts WHERE phone = $1 FOR UPDATE"
        ))
        .bind(p)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| Ok::<_, StoreError>(decode_contact!(&r)))
        .transpose()?,
        (None, None) => None,
    };
    let is_new = existing.is_none();
    let mut merged = u.apply(existing.clone());
    // An e-mail or phone already belonging to someone else stays theirs: two people are not
    // merged by accident, and the unique constraint holds. A value taken by a transaction that
    // has not committed yet is invisible here; the write below then fails the constraint and
    // the caller retries.
    for (field, column) in [(&mut merged.email, "email"), (&mut merged.phone, "phone")] {
        if let Some(value) = field.clone() {
            let taken: Option<String> = sqlx::query_scalar(if column == "email" {
                "SELECT id FROM contacts WHERE email = $1 AND id <> $2"
            } else {
                "SELECT id FROM contacts WHERE phone = $1 AND id <> $2"
            })
            .bind(&value)
            .bind(&merged.id)
            .fetch_optional(&mut *conn)
            .await?;
            if taken.is_some() {
                // A value we looked the contact up by and did not find, but that is taken now,
                // was committed by someone else in between: had we looked a moment later we
                // would have merged into that contact. Start again rather than split one person
                // in two. (A phone we never looked up, because the e-mail found the contact,
                // legitimately belongs to someone else.)
                let looked_up = column == "email" || !found_by_email;
                if strict && looked_up {
                    return Ok(None);
                }
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
        .execute(&mut *conn)
        .await?;
    } else {
        sqlx::query(
            "UPDATE contacts SET email = $1, phone = $2, first_name = $3, last_name = $4, status = $5, timezone = $6,
                 attributes = $7, updated_at = $8 WHERE id = $9",
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
        .execute(&mut *conn)
        .await?;
    }
    Ok(Some(merged))
}

async fn insert_event(conn: &mut PgConnection, e: &NewEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (id, name, key, data, source_run_id, created_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&e.id)
    .bind(&e.name)
    .bind(&e.key)
    .bind(to_text(&e.data))
    .bind(&e.source_run_id)
    .bind(e.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn save_definition(&self, v: &DefinitionVersion) -> Result<()> {
        sqlx::query(
            "INSERT INTO definitions (hash, id, kind, source, document, first_seen_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(&v.hash)
        .bind(&v.id)
        .bind(&v.kind)
        .bind(&v.source)
        .bind(to_text(&v.document))
        .bind(v.first_seen_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn definition(&self, hash: &str) -> Result<Option<DefinitionVersion>> {
        let row = sqlx::query("SELECT hash, id, kind, source, document, first_seen_at FROM definitions WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(decode_definition!(&r))).transpose()
    }

    async fn commit(&self, c: Commit) -> Result<CommitOutcome> {
        let mut attempt = 1;
        loop {
            match self.commit_once(&c).await {
                Err(e) if is_retryable(&e) && attempt < COMMIT_ATTEMPTS => attempt += 1,
                outcome => return outcome,
            }
        }
    }

    async fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE id = $1"
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
            " FROM runs WHERE workflow_id = $1 AND idempotency_key = $2"
        ))
        .bind(workflow_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(decode_run!(&r))).transpose()
    }

    async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunRecord>> {
        // The casts give PostgreSQL a type for parameters that may be NULL.
        let rows = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE ($1::text IS NULL OR workflow_id = $1) AND ($2::text IS NULL OR status = $2)
               AND ($3::bigint IS NULL OR created_at < $3) AND ($5::text IS NULL OR contact_id = $5)
               AND ($6::text IS NULL OR (labels::jsonb) ->> $6 = $7)
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(&f.workflow_id)
        .bind(f.status.map(RunStatus::as_str))
        .bind(f.created_before)
        .bind(f.limit)
        .bind(&f.contact_id)
        .bind(f.label.as_ref().map(|l| l.0.clone()))
        .bind(f.label.as_ref().map(|l| l.1.clone()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(decode_run!(r))).collect()
    }

    async fn step_log(&self, run_id: &str) -> Result<Vec<StepLogEntry>> {
        let rows = sqlx::query(
            "SELECT seq, step_id, action, status, attempt, started_at, finished_at, output, error, iteration
             FROM step_log WHERE run_id = $1 ORDER BY seq",
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
        // One statement. `SKIP LOCKED` passes over rows another claimer (or a committing
        // owner) has locked instead of waiting for them. A row that another claimer updated
        // and committed after our snapshot was taken is re-checked by the lock against its new
        // version, whose `due_at` is now in the future, and dropped: no run is handed out twice.
        // Unfinished is said as `NOT IN` the finished statuses, which no index serves, so the
        // planner walks `runs_due` and reads only the due runs. Said as `IN` the unfinished
        // ones, without statistics (a new database, or right after a burst of new runs) it took
        // `runs_by_status`, which matches every waiting run: each claim then read and sorted them
        // all (20 ms at 100,000 pending timers). Runs due at the same instant are taken in no
        // particular order: ordering them by id as well made each claim read and sort all of
        // them (9 ms per claim with 10,000 timers due at once).
        let rows = sqlx::query(concat!(
            "UPDATE runs SET status = 'running', lease_owner = $1, due_at = $2, updated_at = $3
             WHERE id IN (SELECT id FROM runs WHERE due_at IS NOT NULL AND due_at <= $3
                          AND status NOT IN ('completed', 'failed', 'cancelled')
                          ORDER BY due_at LIMIT $4 FOR UPDATE SKIP LOCKED)
             RETURNING ",
            run_columns!()
        ))
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(decode_run!(r))).collect()
    }

    async fn renew_leases(
        &self,
        owner: &str,
        run_ids: &[String],
        until: Millis,
    ) -> Result<Vec<String>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let held: Vec<String> = sqlx::query_scalar(
            "UPDATE runs SET due_at = $1 WHERE id = ANY($2) AND lease_owner = $3 AND status = 'running' RETURNING id",
        )
        .bind(until)
        .bind(run_ids)
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        Ok(run_ids
            .iter()
            .filter(|id| !held.contains(id))
            .cloned()
            .collect())
    }

    async fn release_runs(&self, owner: &str, now: Millis) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE runs SET status = 'pending', lease_owner = NULL, due_at = $1, updated_at = $1
             WHERE lease_owner = $2 AND status = 'running'",
        )
        .bind(now)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn next_due_at(&self) -> Result<Option<Millis>> {
        // Only what `claim_runs` would take: a finished run whose state kept a timer would
        // otherwise make an idle worker wake for it over and over. `NOT IN`: see `claim_runs`.
        Ok(sqlx::query_scalar(
            "SELECT MIN(due_at) FROM runs
             WHERE due_at IS NOT NULL AND status NOT IN ('completed', 'failed', 'cancelled')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn cancel_run(&self, id: &str, now: Millis) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // First, so the run row stays locked: the owner's next commit waits for us and then
        // finds the run cancelled (lease lost), and so cannot enqueue anything more.
        let r = sqlx::query(
            "UPDATE runs SET status = 'cancelled', due_at = NULL, lease_owner = NULL, wait_event = NULL, wait_key = NULL,
                 finished_at = $1, updated_at = $1, error = 'cancelled'
             WHERE id = $2 AND status IN ('pending', 'running', 'waiting')",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        // Messages the run queued but that have not gone out yet are not sent. One that a
        // dispatcher is claiming right now is locked; we wait for it, see it `sending`, and
        // leave it to finish: it is already on its way.
        sqlx::query(
            "UPDATE outbox SET status = 'cancelled', next_attempt_at = NULL, lease_owner = NULL,
                 last_error = 'the run was cancelled', updated_at = $1 WHERE run_id = $2 AND status = 'pending'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // A parent waiting on this run wakes to see it cancelled.
        sqlx::query(
            "UPDATE runs SET due_at = $1, updated_at = $1 WHERE status = 'waiting'
               AND id = (SELECT parent_run_id FROM runs WHERE id = $2)",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn retry_run(&self, id: &str, now: Millis) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE runs SET status = 'pending', due_at = $1, attempts = 0, error = NULL, finished_at = NULL,
                 updated_at = $1 WHERE id = $2 AND status = 'failed'",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
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
        let mut tx = self.pool.begin().await?;
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
            "UPDATE runs SET due_at = $1, updated_at = $1 WHERE wait_event = $2 AND wait_key = $3 AND status = 'waiting'",
        )
        .bind(now)
        .bind(name)
        .bind(key)
        .execute(&self.pool)
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
        let row = sqlx::query(
            "SELECT id, name, key, data, source_run_id, created_at FROM events
             WHERE name = $1 AND key = $2 AND created_at >= $3 AND NOT (id = ANY($4))
             ORDER BY created_at, id LIMIT 1",
        )
        .bind(name)
        .bind(key)
        .bind(since)
        .bind(exclude)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(decode_event!(&r))).transpose()
    }

    async fn contact(&self, id: &str) -> Result<Option<Contact>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            contact_columns!(),
            " FROM contacts WHERE id = $1"
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
                " FROM contacts WHERE email = $1"
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
                " FROM contacts WHERE phone = $1"
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
        // As in `claim_runs`: one statement, locked rows skipped, rows claimed since our
        // snapshot re-checked and dropped.
        let rows = sqlx::query(concat!(
            "UPDATE outbox SET status = 'sending', lease_owner = $1, next_attempt_at = $2, attempts = attempts + 1,
                 updated_at = $3
             WHERE id IN (SELECT id FROM outbox WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $3
                          AND status IN ('pending', 'sending')
                          ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
             RETURNING ",
            outbox_columns!()
        ))
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(decode_outbox!(r))).collect()
    }

    async fn finish_delivery(
        &self,
        id: &str,
        owner: &str,
        outcome: DeliveryOutcome,
        now: Millis,
    ) -> Result<bool> {
        // Single statements guarded by the owner: a dispatcher whose lease expired and whose
        // message another dispatcher re-claimed changes nothing.
        let q = match &outcome {
            DeliveryOutcome::Sent { provider_id } => sqlx::query(
                "UPDATE outbox SET status = 'sent', provider_id = $3, sent_at = $4, next_attempt_at = NULL,
                     lease_owner = NULL, last_error = NULL, updated_at = $4
                 WHERE id = $1 AND lease_owner = $2 AND status = 'sending'",
            )
            .bind(id)
            .bind(owner)
            .bind(provider_id.clone())
            .bind(now),
            DeliveryOutcome::Retry { error, next_attempt_at } => sqlx::query(
                "UPDATE outbox SET status = 'pending', last_error = $3, next_attempt_at = $4, lease_owner = NULL,
                     updated_at = $5
                 WHERE id = $1 AND lease_owner = $2 AND status = 'sending'",
            )
            .bind(id)
            .bind(owner)
            .bind(error.clone())
            .bind(*next_attempt_at)
            .bind(now),
            DeliveryOutcome::Failed { error } => sqlx::query(
                "UPDATE outbox SET status = 'failed', last_error = $3, next_attempt_at = NULL, lease_owner = NULL,
                     updated_at = $4
                 WHERE id = $1 AND lease_owner = $2 AND status = 'sending'",
            )
            .bind(id)
            .bind(owner)
            .bind(error.clone())
            .bind(now),
            DeliveryOutcome::Suppressed { reason } => sqlx::query(
                "UPDATE outbox SET status = 'suppressed', last_error = $3, next_attempt_at = NULL, lease_owner = NULL,
                     updated_at = $4
                 WHERE id = $1 AND lease_owner = $2 AND status = 'sending'",
            )
            .bind(id)
            .bind(owner)
            .bind(reason.clone())
            .bind(now),
        };
        let r = q.execute(&self.pool).await?;
        Ok(r.rows_affected() == 1)
    }

    async fn outbox_for_run(&self, run_id: &str) -> Result<Vec<OutboxRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            outbox_columns!(),
            " FROM outbox WHERE run_id = $1 ORDER BY created_at, id"
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
            "SELECT checked_until FROM cron_state WHERE workflow_id = $1 AND trigger_key = $2",
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
        // `ON CONFLICT DO UPDATE` is atomic, and `GREATEST` against the row as it stands when
        // the update runs means a process that is behind can never pull the mark back.
        sqlx::query(
            "INSERT INTO cron_state (workflow_id, trigger_key, checked_until) VALUES ($1, $2, $3)
             ON CONFLICT (workflow_id, trigger_key) DO UPDATE
                 SET checked_until = GREATEST(cron_state.checked_until, EXCLUDED.checked_until)",
        )
        .bind(workflow_id)
        .bind(trigger_key)
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_cron_fire(&self, fire: &CronFire, run: Option<&NewRun>) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // The primary key decides the race: a second process inserting the same slot waits
        // for the first to commit and then inserts nothing (or goes ahead if the first rolled
        // back). Only the winner goes on to start the run, in the same transaction.
        let r = sqlx::query(
            "INSERT INTO cron_fires (workflow_id, trigger_key, slot, outcome, reason, run_id, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (workflow_id, trigger_key, slot) DO NOTHING",
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
             WHERE f.workflow_id = $1 AND f.trigger_key = $2 AND f.outcome = 'fired'
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
             WHERE workflow_id = $1 ORDER BY slot DESC LIMIT $2",
        )
        .bind(workflow_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(decode_cron_fire!(r))).collect()
    }
}
