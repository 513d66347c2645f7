//! Runs: reading them, claiming and leasing them, and steering them (cancel, retry).

use super::{Backend, Dialect, Exec, Stmt, params, read_all, read_one, write};
use crate::store::admin::RunSelection;
use crate::store::rows::{self, run_columns};
use crate::store::{
    Millis, QUEUED_CONVERSATION, Result, RunFilter, RunRecord, RunStatus, StepLogEntry,
};

/// The unfinished statuses, for `status IN` (see [`claim`] for why claims say `NOT IN`).
pub(in crate::store) const UNFINISHED: &str = "('pending', 'running', 'waiting')";

pub(in crate::store) async fn get<B: Backend>(b: &B, id: &str) -> Result<Option<RunRecord>> {
    let sql = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1");
    read_one(b, Stmt::new(sql, params![id]), rows::run).await
}

pub(in crate::store) async fn by_idempotency_key<B: Backend>(
    b: &B,
    workflow_id: &str,
    key: &str,
) -> Result<Option<RunRecord>> {
    let sql = concat!(
        "SELECT ",
        run_columns!(),
        " FROM runs WHERE workflow_id = $1 AND idempotency_key = $2"
    );
    read_one(b, Stmt::new(sql, params![workflow_id, key]), rows::run).await
}

pub(in crate::store) async fn list<B: Backend>(b: &B, f: &RunFilter) -> Result<Vec<RunRecord>> {
    // The casts give PostgreSQL a type for parameters that may be NULL.
    let sql = format!(
        "SELECT {} FROM runs WHERE (CAST($1 AS TEXT) IS NULL OR workflow_id = $1)
           AND (CAST($2 AS TEXT) IS NULL OR status = $2)
           AND (CAST($3 AS BIGINT) IS NULL OR created_at < $3) AND (CAST($5 AS TEXT) IS NULL OR contact_id = $5)
           AND (CAST($6 AS TEXT) IS NULL OR {})
         ORDER BY created_at DESC, id DESC LIMIT $4",
        run_columns!(),
        B::Db::label_is("$6", "$7"),
    );
    let params = params![
        &f.workflow_id,
        f.status.map(RunStatus::as_str),
        f.created_before,
        f.limit,
        &f.contact_id,
        f.label.as_ref().map(|l| B::Db::label_name(&l.0)),
        f.label.as_ref().map(|l| l.1.clone()),
    ];
    read_all(b, Stmt::new(sql, params), rows::run).await
}

/// The open run of conversation `workflow_id` whose `conversation` label is `key`
/// (`channel:address`), through an index on that label (migration 0007) rather than a scan of
/// the conversation's history.
pub(in crate::store) async fn open_conversation<B: Backend>(
    b: &B,
    workflow_id: &str,
    key: &str,
) -> Result<Option<RunRecord>> {
    let sql = format!(
        "SELECT {} FROM runs WHERE workflow_id = $1 AND {} = $2
           AND status IN ('pending', 'running', 'waiting')
           AND (wait_event IS NULL OR wait_event <> $3)
         ORDER BY created_at DESC, id DESC LIMIT 1",
        run_columns!(),
        B::Db::CONVERSATION_KEY,
    );
    let p = params![workflow_id, key, QUEUED_CONVERSATION];
    read_one(b, Stmt::new(sql, p), rows::run).await
}

pub(in crate::store) async fn step_log<B: Backend>(
    b: &B,
    run_id: &str,
) -> Result<Vec<StepLogEntry>> {
    let sql = "SELECT seq, step_id, action, status, attempt, started_at, finished_at, output, error, iteration
         FROM step_log WHERE run_id = $1 ORDER BY seq";
    read_all(b, Stmt::new(sql, params![run_id]), rows::step).await
}

/// Claims up to `limit` due runs for `owner`.
///
/// Unfinished is said as `NOT IN` the finished statuses, which no index serves, so the planner
/// walks `runs_due` and reads only the due runs, in order. Said as `IN` the unfinished ones,
/// it picks `runs_by_status` instead (on PostgreSQL, without statistics: a new database, or
/// right after a burst of new runs), which matches every waiting run: each claim then read and
/// sorted them all (20 ms at 100,000 pending timers).
pub(in crate::store) async fn claim<B: Backend>(
    b: &B,
    owner: &str,
    now: Millis,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<RunRecord>> {
    let sql = format!(
        "UPDATE runs SET status = 'running', lease_owner = $1, due_at = $2, updated_at = $3
         WHERE id IN (SELECT id FROM runs WHERE due_at IS NOT NULL AND due_at <= $3
                      AND status NOT IN ('completed', 'failed', 'cancelled') {})
         RETURNING {}",
        B::Db::PICK_DUE_RUNS,
        run_columns!()
    );
    let claimed = b
        .claim(Stmt::new(sql, params![owner, now + lease_ms, now, limit]))
        .await?;
    claimed.iter().map(|r| rows::run(r)).collect()
}

/// Extends the leases `owner` still holds; the ids it no longer holds.
pub(in crate::store) async fn renew_leases<B: Backend>(
    b: &B,
    owner: &str,
    run_ids: &[String],
    until: Millis,
) -> Result<Vec<String>> {
    if run_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "UPDATE runs SET due_at = $1 WHERE {} AND lease_owner = $3 AND status = 'running' RETURNING id",
        B::Db::in_list("id", "$2")
    );
    let mut conn = b.write().await?;
    let held = B::Db::fetch_all(&mut *conn, Stmt::new(sql, params![until, run_ids, owner])).await?;
    let held = held
        .iter()
        .map(|r| rows::RowView::text(r, "id"))
        .collect::<Result<Vec<_>>>()?;
    Ok(run_ids
        .iter()
        .filter(|id| !held.contains(id))
        .cloned()
        .collect())
}

pub(in crate::store) async fn release<B: Backend>(b: &B, owner: &str, now: Millis) -> Result<u64> {
    let sql = "UPDATE runs SET status = 'pending', lease_owner = NULL, due_at = $1, updated_at = $1
         WHERE lease_owner = $2 AND status = 'running'";
    write(b, Stmt::new(sql, params![now, owner])).await
}

pub(in crate::store) async fn next_due_at<B: Backend>(b: &B) -> Result<Option<Millis>> {
    // Only what `claim` would take: a finished run whose state kept a timer would otherwise
    // make an idle worker wake for it over and over. `NOT IN`: see `claim`.
    let sql = "SELECT MIN(due_at) AS t FROM runs
         WHERE due_at IS NOT NULL AND status NOT IN ('completed', 'failed', 'cancelled')";
    Ok(read_one(b, Stmt::new(sql, params![]), super::time)
        .await?
        .flatten())
}

pub(in crate::store) async fn cancel<B: Backend>(b: &B, id: &str, now: Millis) -> Result<bool> {
    let mut tx = b.begin().await?;
    // First, so the run row stays locked: the owner's next commit waits for us and then
    // finds the run cancelled (lease lost), and so cannot enqueue anything more.
    let cancelled = B::Db::execute(
        &mut *tx,
        Stmt::new(
            "UPDATE runs SET status = 'cancelled', due_at = NULL, lease_owner = NULL, wait_event = NULL, wait_key = NULL,
                 finished_at = $1, updated_at = $1, error = 'cancelled'
             WHERE id = $2 AND status IN ('pending', 'running', 'waiting')",
            params![now, id],
        ),
    )
    .await?;
    if cancelled == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    // Messages the run queued but that have not gone out yet are not sent. One that a
    // dispatcher is claiming right now is locked; we wait for it, see it `sending`, and
    // leave it to finish: it is already on its way.
    let pending = Stmt::new(
        "UPDATE outbox SET status = 'cancelled', next_attempt_at = NULL, lease_owner = NULL,
             last_error = 'the run was cancelled', updated_at = $1 WHERE run_id = $2 AND status = 'pending'",
        params![now, id],
    );
    B::Db::execute(&mut *tx, pending).await?;
    // A parent waiting on this run wakes to see it cancelled.
    let parent = Stmt::new(
        "UPDATE runs SET due_at = $1, updated_at = $1 WHERE status = 'waiting'
           AND id = (SELECT parent_run_id FROM runs WHERE id = $2)",
        params![now, id],
    );
    B::Db::execute(&mut *tx, parent).await?;
    tx.commit().await?;
    Ok(true)
}

pub(in crate::store) async fn retry<B: Backend>(b: &B, id: &str, now: Millis) -> Result<bool> {
    let sql = "UPDATE runs SET status = 'pending', due_at = $1, attempts = 0, error = NULL, finished_at = NULL,
             updated_at = $1 WHERE id = $2 AND status = 'failed'";
    Ok(write(b, Stmt::new(sql, params![now, id])).await? == 1)
}

pub(in crate::store) async fn count<B: Backend>(b: &B) -> Result<Vec<(RunStatus, i64)>> {
    let sql = "SELECT status, COUNT(*) AS n FROM runs GROUP BY status";
    let rows = read_all(b, Stmt::new(sql, params![]), rows::count).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(s, n)| RunStatus::parse(s.as_deref()?).map(|s| (s, n)))
        .collect())
}

/// Makes the listed runs due now if they are waiting.
pub(in crate::store) fn wake<D: Dialect>(run_ids: &[String], now: Millis) -> Stmt {
    let sql = format!(
        "UPDATE runs SET due_at = $1, updated_at = $1 WHERE {} AND status = 'waiting'",
        D::in_list("id", "$2")
    );
    Stmt::new(sql, params![now, run_ids])
}

/// The WHERE clause of a bulk cancel, with its parameters `$1` to `$5`.
fn selection<D: Dialect>(s: &RunSelection) -> Stmt {
    let sql = format!(
        "status IN {UNFINISHED} AND (CAST($1 AS TEXT) IS NULL OR workflow_id = $1)
           AND (CAST($2 AS TEXT) IS NULL OR contact_id = $2)
           AND (CAST($3 AS TEXT) IS NULL OR {}) AND (CAST($5 AS TEXT) IS NULL OR status = $5)",
        D::label_is("$3", "$4")
    );
    let (name, value) = match &s.label {
        Some((n, v)) => (Some(D::label_name(n)), Some(v.clone())),
        None => (None, None),
    };
    Stmt::new(
        sql,
        params![
            &s.workflow_id,
            &s.contact_id,
            name,
            value,
            s.status.map(|st| st.as_str()),
        ],
    )
}

/// Cancels the unfinished runs a selection matches (see [`crate::store::Admin::cancel_runs`]).
pub(in crate::store) async fn cancel_selected<B: Backend>(
    b: &B,
    s: &RunSelection,
    now: Millis,
    dry_run: bool,
) -> Result<u64> {
    let Stmt {
        sql: filter,
        params,
    } = selection::<B::Db>(s);
    if dry_run {
        let count = Stmt::new(
            format!("SELECT COUNT(*) AS n FROM runs WHERE {filter}"),
            params,
        );
        let n = read_one(b, count, |r| r.int("n")).await?;
        return Ok(n.unwrap_or(0) as u64);
    }
    let mut tx = b.begin().await?;
    // The runs' ids first, so their messages and parents can be found after the update.
    let select = Stmt::new(format!("SELECT id FROM runs WHERE {filter}"), params);
    let ids = B::Db::fetch_all(&mut *tx, select)
        .await?
        .iter()
        .map(|r| rows::RowView::text(r, "id"))
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    let in_ids = |column| B::Db::in_list(column, "$2");
    // Parents first, while the children still name them.
    let parents = format!(
        "UPDATE runs SET due_at = $1, updated_at = $1 WHERE status = 'waiting'
           AND id IN (SELECT parent_run_id FROM runs WHERE {})",
        in_ids("id")
    );
    B::Db::execute(&mut *tx, Stmt::new(parents, params![now, &ids[..]])).await?;
    let runs = format!(
        "UPDATE runs SET status = 'cancelled', due_at = NULL, lease_owner = NULL, wait_event = NULL,
             wait_key = NULL, finished_at = $1, updated_at = $1, error = 'cancelled by an operator'
         WHERE {} AND status IN {UNFINISHED}",
        in_ids("id")
    );
    let cancelled = B::Db::execute(&mut *tx, Stmt::new(runs, params![now, &ids[..]])).await?;
    let messages = format!(
        "UPDATE outbox SET status = 'cancelled', next_attempt_at = NULL, lease_owner = NULL,
             last_error = 'the run was cancelled', updated_at = $1
         WHERE status = 'pending' AND {}",
        in_ids("run_id")
    );
    B::Db::execute(&mut *tx, Stmt::new(messages, params![now, &ids[..]])).await?;
    tx.commit().await?;
    Ok(cancelled)
}

/// Queued conversation starts, oldest first (`key`: one person's).
pub(in crate::store) async fn queued_conversations<B: Backend>(
    b: &B,
    key: Option<&str>,
    limit: i64,
) -> Result<Vec<crate::store::QueuedConversation>> {
    let sql = "SELECT id, wait_key, created_at FROM runs
         WHERE wait_event = $3 AND status = 'waiting' AND due_at IS NULL
           AND (CAST($1 AS TEXT) IS NULL OR wait_key = $1)
         ORDER BY created_at, id LIMIT $2";
    let p = params![key, limit, QUEUED_CONVERSATION];
    read_all(b, Stmt::new(sql, p), |r| {
        Ok(crate::store::QueuedConversation {
            run_id: r.text("id")?,
            key: r.opt_text("wait_key")?.unwrap_or_default(),
            created_at: r.int("created_at")?,
        })
    })
    .await
}

/// Makes a queued start due now and no longer queued, so it is the person's open
/// conversation from here on; false when it was not queued any more. The conversation begins
/// now: its `created_at` moves here, since an `ask` takes the person's messages from its run's
/// start, and those sent while it waited were the conversation before it's.
pub(in crate::store) async fn promote_queued<B: Backend>(
    b: &B,
    run_id: &str,
    now: Millis,
) -> Result<bool> {
    let sql = "UPDATE runs SET due_at = $2, wait_event = NULL, wait_key = NULL, updated_at = $2,
             created_at = $2
         WHERE id = $1 AND status = 'waiting' AND wait_event = $3";
    let p = params![run_id, now, QUEUED_CONVERSATION];
    Ok(write(b, Stmt::new(sql, p)).await? == 1)
}
