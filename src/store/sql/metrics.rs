//! Herald's own measurements for `metric` alerts, each one statement on the indexes that serve
//! it: unsent messages and unfinished runs are few, failed runs and messages are read by
//! status, sent messages and finished steps by time (`outbox_sent`, `step_log_finished`), and
//! webhook responses from their per-minute counts.

use std::fmt::Write as _;

use super::{Backend, Exec, Stmt, params, read_all};
use crate::definitions::model::alert::MetricName;
use crate::store::alerting::{MetricQuery, WebhookCount};
use crate::store::{Millis, Result};

/// Step actions whose time is waiting by design (a timer, an event, a person, a child run) or
/// is their inner steps' (`for_each`, `try`): their lines would drown the work in the wait.
const WAITING_ACTIONS: &str = "'wait', 'wait_for', 'ask', 'handoff', 'call', 'for_each', 'try'";

/// The group column's select and `GROUP BY`, or one figure.
fn grouping(q: &MetricQuery, column: &str) -> (String, String) {
    if q.grouped {
        (format!("{column} AS g"), format!(" GROUP BY {column}"))
    } else {
        ("CAST(NULL AS TEXT) AS g".to_owned(), String::new())
    }
}

pub(in crate::store) async fn metric<B: Backend>(
    b: &B,
    q: &MetricQuery,
) -> Result<Vec<(Option<String>, f64)>> {
    match q.name {
        MetricName::DeliveryRate => delivery_rate(b, q).await,
        MetricName::WebhookResponses => webhook_responses(b, q).await,
        // A quantile is made from the durations (`step_durations`), not in SQL.
        MetricName::StepLatency => Ok(Vec::new()),
        _ => state_metric(b, q).await,
    }
}

/// The outbox's and the runs' present state: counts and the oldest due message.
async fn state_metric<B: Backend>(b: &B, q: &MetricQuery) -> Result<Vec<(Option<String>, f64)>> {
    let (filter_col, filter) = if q.name.of_outbox() {
        ("channel", q.channel.as_deref())
    } else {
        ("workflow_id", q.workflow.as_deref())
    };
    let (select_group, group_clause) = grouping(q, filter_col);
    // $1 and $2 are each measurement's times; $3 the optional channel or workflow.
    let filter_clause = format!(" AND ($3 IS NULL OR {filter_col} = $3)");
    let (value, from_where, t1, t2) = match q.name {
        MetricName::OutboxBacklog => (
            "COUNT(*)",
            "FROM outbox WHERE status IN ('pending', 'sending') AND $1 = $1 AND $2 = $2",
            q.now,
            q.now,
        ),
        // Due, and not handed over yet: a message held for quiet hours is not late.
        MetricName::OutboxOldestAge => (
            "MIN(created_at)",
            "FROM outbox WHERE status IN ('pending', 'sending') AND COALESCE(next_attempt_at, created_at) <= $1 AND $2 = $2",
            q.now,
            q.now,
        ),
        MetricName::RunFailures => (
            "COUNT(*)",
            "FROM runs WHERE status = 'failed' AND finished_at > $1 AND finished_at <= $2",
            q.since,
            q.now,
        ),
        _ => (
            "COUNT(*)",
            "FROM runs WHERE status IN ('pending', 'running') AND updated_at < $1 AND COALESCE(due_at, 0) <= $2",
            q.stuck_before,
            q.now,
        ),
    };
    let sql =
        format!("SELECT {select_group}, {value} AS v {from_where}{filter_clause}{group_clause}");
    let rows = read_all(
        b,
        Stmt::new(sql, params![t1, t2, filter.map(str::to_owned)]),
        |r| Ok((r.opt_text("g")?, r.opt_int("v")?)),
    )
    .await?;
    let mut out = Vec::new();
    for (g, v) in rows {
        let Some(v) = v else { continue };
        let value = match q.name {
            MetricName::OutboxOldestAge => ((q.now - v).max(0) as f64) / 1000.0,
            _ => v as f64,
        };
        // Ungrouped COUNT(*) over nothing is 0, a figure; ungrouped MIN over nothing is NULL,
        // skipped above: no message waits, so there is no age.
        out.push((g, value));
    }
    Ok(out)
}

/// Of the messages that finished in `(since, now]`, the share that reached the provider: sent
/// (by `sent_at`) over sent and failed for good (by `updated_at`). A channel where nothing
/// finished has no pair: no data.
async fn delivery_rate<B: Backend>(b: &B, q: &MetricQuery) -> Result<Vec<(Option<String>, f64)>> {
    let (select_group, group_clause) = grouping(q, "channel");
    // Two branches so each uses its own index; the filter goes inside each for the same reason.
    let sql = format!(
        "SELECT {select_group}, SUM(ok) AS ok, COUNT(*) AS n FROM (
             SELECT channel, 1 AS ok FROM outbox
              WHERE sent_at > $1 AND sent_at <= $2 AND status = 'sent'
                AND ($3 IS NULL OR channel = $3)
             UNION ALL
             SELECT channel, 0 AS ok FROM outbox
              WHERE status = 'failed' AND updated_at > $1 AND updated_at <= $2
                AND ($3 IS NULL OR channel = $3)
         ) finished{group_clause}"
    );
    let rows = read_all(
        b,
        Stmt::new(sql, params![q.since, q.now, q.channel.clone()]),
        |r| Ok((r.opt_text("g")?, r.opt_int("ok")?, r.int("n")?)),
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter(|(_, _, n)| *n > 0)
        .map(|(g, ok, n)| (g, ok.unwrap_or(0) as f64 / n as f64))
        .collect())
}

/// Responses in the minutes that overlap `(since, now]`, of the statuses asked for.
async fn webhook_responses<B: Backend>(
    b: &B,
    q: &MetricQuery,
) -> Result<Vec<(Option<String>, f64)>> {
    let (select_group, group_clause) = grouping(q, "workflow_id");
    let mut statuses = String::new();
    for (i, (lo, hi)) in q.statuses.iter().enumerate() {
        // Numbers checked by validation, written inline: a list of ranges has no placeholder.
        let _ = write!(
            statuses,
            "{}status BETWEEN {lo} AND {hi}",
            if i == 0 { "" } else { " OR " }
        );
    }
    let status_clause = if statuses.is_empty() {
        String::new()
    } else {
        format!(" AND ({statuses})")
    };
    let sql = format!(
        "SELECT {select_group}, CAST(SUM(responses) AS BIGINT) AS v FROM webhook_responses
          WHERE minute > $1 AND minute <= $2 AND ($3 IS NULL OR workflow_id = $3){status_clause}{group_clause}"
    );
    let rows = read_all(
        b,
        Stmt::new(
            sql,
            params![q.since.saturating_sub(MINUTE), q.now, q.workflow.clone()],
        ),
        |r| Ok((r.opt_text("g")?, r.opt_int("v")?)),
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(g, v)| v.map(|v| (g, v as f64)))
        .collect())
}

const MINUTE: Millis = 60_000;

/// How long each step that did work took, in milliseconds, of the steps that finished in
/// `(since, now]`, newest first and at most `limit`: the group (the workflow when grouped)
/// and the duration.
pub(in crate::store) async fn step_durations<B: Backend>(
    b: &B,
    q: &MetricQuery,
    limit: i64,
) -> Result<Vec<(Option<String>, i64)>> {
    let (select_group, _) = grouping(q, "r.workflow_id");
    let sql = format!(
        "SELECT {select_group}, s.finished_at - s.started_at AS d
           FROM step_log s JOIN runs r ON r.id = s.run_id
          WHERE s.finished_at > $1 AND s.finished_at <= $2
            AND s.status IN ('completed', 'failed') AND s.action NOT IN ({WAITING_ACTIONS})
            AND ($3 IS NULL OR r.workflow_id = $3)
          ORDER BY s.finished_at DESC LIMIT $4"
    );
    read_all(
        b,
        Stmt::new(sql, params![q.since, q.now, q.workflow.clone(), limit]),
        |r| Ok((r.opt_text("g")?, r.int("d")?)),
    )
    .await
}

/// Adds `counts` to the stored ones, in one transaction.
pub(in crate::store) async fn add_webhook_responses<B: Backend>(
    b: &B,
    counts: &[WebhookCount],
) -> Result<()> {
    if counts.is_empty() {
        return Ok(());
    }
    let mut tx = b.begin().await?;
    // A statement per few hundred rows keeps within both drivers' parameter limits.
    for chunk in counts.chunks(200) {
        let mut sql = String::from(
            "INSERT INTO webhook_responses (workflow_id, minute, status, responses) VALUES ",
        );
        let mut p = Vec::with_capacity(chunk.len() * 4);
        for (i, c) in chunk.iter().enumerate() {
            let n = p.len();
            let _ = write!(
                sql,
                "{}(${}, ${}, ${}, ${})",
                if i == 0 { "" } else { ", " },
                n + 1,
                n + 2,
                n + 3,
                n + 4
            );
            p.extend(params![
                &c.workflow_id,
                c.minute,
                i64::from(c.status),
                c.responses
            ]);
        }
        sql.push_str(
            " ON CONFLICT (workflow_id, minute, status) DO UPDATE
              SET responses = webhook_responses.responses + excluded.responses",
        );
        B::Db::execute(&mut *tx, Stmt::new(sql, p)).await?;
    }
    tx.commit().await?;
    Ok(())
}
