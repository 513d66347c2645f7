//! The outbox: enqueueing messages, handing them to dispatchers, recording what delivery came
//! to, and an operator's look at and hand on them.

use std::fmt::Write as _;

use super::{
    Backend, Dialect, Exec, Stmt, params, push_placeholders, read_all, read_one, write, write_one,
};
use crate::store::admin::{MessageChange, OutboxFilter};
use crate::store::rows::{self, RowView, outbox_columns, retry_text, to_text};
use crate::store::{
    DeliveryOutcome, Millis, NewOutbox, OutboxRecord, OutboxStatus, Result, SentMessages,
};

/// Enqueues messages (`messages` is not empty); a message whose idempotency key is taken is
/// not enqueued again.
pub(in crate::store) fn insert<'a>(messages: impl IntoIterator<Item = &'a NewOutbox>) -> Stmt {
    let mut p = Vec::new();
    let mut sql = String::from(
        "INSERT INTO outbox (id, run_id, workflow_id, step_id, channel, recipient, sender, subject, body, html, headers,
             idempotency_key, status, attempts, max_attempts, next_attempt_at, created_at, updated_at, category, retry,
             approved_template)
         VALUES ",
    );
    for (i, m) in messages.into_iter().enumerate() {
        let n = p.len();
        sql.push_str(if i == 0 { "(" } else { ", (" });
        push_placeholders(&mut sql, n + 1, 12);
        // Pending, never attempted (created_at is bound once, as $n+14).
        let _ = write!(
            sql,
            ", 'pending', 0, ${}, ${}, ${at}, ${at}, ${}, ${}, ${})",
            n + 13,
            n + 17,
            n + 15,
            n + 16,
            n + 18,
            at = n + 14
        );
        p.extend(params![
            &m.id,
            &m.run_id,
            &m.workflow_id,
            &m.step_id,
            &m.channel,
            &m.recipient,
            &m.sender,
            &m.subject,
            &m.body,
            m.html,
            to_text(&m.headers),
            &m.idempotency_key,
            m.max_attempts,
            m.created_at,
            m.category.as_str(),
            retry_text(&m.retry),
            m.due_at,
            m.approved_template.as_ref().map(to_text),
        ]);
    }
    sql.push_str(" ON CONFLICT (idempotency_key) DO NOTHING");
    Stmt::new(sql, p)
}

/// Claims up to `limit` due messages for `owner` (see [`Dialect::PICK_DUE_MESSAGES`]).
pub(in crate::store) async fn claim<B: Backend>(
    b: &B,
    owner: &str,
    now: Millis,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<OutboxRecord>> {
    let sql = format!(
        "UPDATE outbox SET status = 'sending', lease_owner = $1, next_attempt_at = $2, attempts = attempts + 1,
             updated_at = $3
         WHERE id IN (SELECT id FROM outbox WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $3
                      AND status IN ('pending', 'sending') {})
         RETURNING {}",
        B::Db::PICK_DUE_MESSAGES,
        outbox_columns!()
    );
    let claimed = b
        .claim(Stmt::new(sql, params![owner, now + lease_ms, now, limit]))
        .await?;
    claimed.iter().map(|r| rows::outbox(r)).collect()
}

/// Records delivery attempts' outcomes, in one transaction, for the messages `owner` still
/// holds: a dispatcher whose lease expired, and whose message another re-claimed, changes
/// nothing. Whether each was recorded, in order.
pub(in crate::store) async fn finish_deliveries<B: Backend>(
    b: &B,
    owner: &str,
    outcomes: Vec<(String, DeliveryOutcome)>,
    now: Millis,
) -> Result<Vec<bool>> {
    let mut tx = b.begin().await?;
    // Messages sent, the usual outcome, are recorded a few hundred to a statement; each
    // other outcome has its own.
    let sent: Vec<(&str, Option<&str>)> = outcomes
        .iter()
        .filter_map(|(id, o)| match o {
            DeliveryOutcome::Sent { provider_id } => Some((id.as_str(), provider_id.as_deref())),
            _ => None,
        })
        .collect();
    let mut recorded_sent = std::collections::HashSet::new();
    for part in sent.chunks(SENT_PER_STATEMENT) {
        for row in B::Db::fetch_all(&mut *tx, sent_update(owner, part, now)).await? {
            recorded_sent.insert(row.text("id")?);
        }
    }
    let mut held = Vec::with_capacity(outcomes.len());
    for (id, outcome) in outcomes {
        if matches!(outcome, DeliveryOutcome::Sent { .. }) {
            held.push(recorded_sent.contains(&id));
            continue;
        }
        let (update, fallback) = finish(&id, owner, outcome, now);
        let recorded = B::Db::execute(&mut *tx, update).await? == 1;
        // A fallback is queued with the original's failure, and only while this dispatcher
        // still holds the original: one fallback, never a lost one.
        if recorded && let Some(next) = fallback {
            B::Db::execute(&mut *tx, insert(std::slice::from_ref(&next))).await?;
        }
        held.push(recorded);
    }
    tx.commit().await?;
    Ok(held)
}

/// Sent messages recorded by one statement at most.
const SENT_PER_STATEMENT: usize = 200;

/// Records messages as sent, each with its provider's id, where `owner` still holds them; the
/// ids of those it recorded. (Both databases name a `VALUES` list's columns `column1`, ...)
fn sent_update(owner: &str, sent: &[(&str, Option<&str>)], now: Millis) -> Stmt {
    let mut sql = String::from(
        "UPDATE outbox SET status = 'sent', provider_id = v.column2, sent_at = $1, next_attempt_at = NULL,
             lease_owner = NULL, last_error = NULL, updated_at = $1
         FROM (VALUES ",
    );
    let mut p = params![now, owner];
    for (n, (id, provider_id)) in sent.iter().enumerate() {
        if n > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "(${}, ${})", p.len() + 1, p.len() + 2);
        p.extend(params![*id, *provider_id]);
    }
    sql.push_str(
        ") AS v WHERE outbox.id = v.column1 AND outbox.lease_owner = $2 AND outbox.status = 'sending'
         RETURNING outbox.id AS id",
    );
    Stmt::new(sql, p)
}

/// The update that records one outcome, and the fallback message it queues, if any.
fn finish(
    id: &str,
    owner: &str,
    outcome: DeliveryOutcome,
    now: Millis,
) -> (Stmt, Option<NewOutbox>) {
    let mut fallback = None;
    let (set, p) = match outcome {
        DeliveryOutcome::Sent { provider_id } => (
            "status = 'sent', provider_id = $3, sent_at = $4, next_attempt_at = NULL, lease_owner = NULL,
                 last_error = NULL, updated_at = $4",
            params![provider_id, now],
        ),
        DeliveryOutcome::Retry {
            error,
            next_attempt_at,
        } => (
            "status = 'pending', last_error = $3, next_attempt_at = $4, lease_owner = NULL, updated_at = $5",
            params![error, next_attempt_at, now],
        ),
        DeliveryOutcome::Failed { error } => (
            "status = 'failed', last_error = $3, next_attempt_at = NULL, lease_owner = NULL, updated_at = $4",
            params![error, now],
        ),
        DeliveryOutcome::Suppressed { reason } => (
            "status = 'suppressed', last_error = $3, next_attempt_at = NULL, lease_owner = NULL,
                 updated_at = $4",
            params![reason, now],
        ),
        DeliveryOutcome::Deferred { reason, until } => (
            "status = 'pending', last_error = $3, next_attempt_at = $4, lease_owner = NULL,
                 attempts = attempts - 1, updated_at = $5",
            params![reason, until, now],
        ),
        DeliveryOutcome::FellBack { error, next } => {
            fallback = Some(*next);
            (
                "status = 'failed', last_error = $3, next_attempt_at = NULL, lease_owner = NULL, updated_at = $4",
                params![error, now],
            )
        }
    };
    let sql = format!(
        "UPDATE outbox SET {set} WHERE id = $1 AND lease_owner = $2 AND status = 'sending'"
    );
    let mut all = params![id, owner];
    all.extend(p);
    (Stmt::new(sql, all), fallback)
}

/// How many messages of `category` went, or are on their way, to `recipient` on `channel`
/// since `since`: what a frequency cap counts.
pub(in crate::store) async fn count_recent<B: Backend>(
    b: &B,
    channel: &str,
    recipient: &str,
    category: &str,
    since: Millis,
) -> Result<i64> {
    let sql = "SELECT COUNT(*) AS n FROM outbox WHERE channel = $1 AND recipient = $2
                   AND created_at > $3 AND category = $4 AND status IN ('pending', 'sending', 'sent')";
    let n = read_one(
        b,
        Stmt::new(sql, params![channel, recipient, since, category]),
        |r| r.int("n"),
    )
    .await?;
    Ok(n.unwrap_or(0))
}

/// How far along a report is: a report never replaces a later one.
const DELIVERY_RANK: &str = "CASE {col} WHEN 'sent' THEN 1 WHEN 'deferred' THEN 1 WHEN 'delivered' THEN 2
     WHEN 'failed' THEN 3 WHEN 'bounced' THEN 3 WHEN 'complained' THEN 4 WHEN 'unsubscribed' THEN 4 ELSE 0 END";

pub(in crate::store) async fn record_delivery<B: Backend>(
    b: &B,
    channel: &str,
    provider_id: &str,
    delivery: &str,
    error: Option<&str>,
    now: Millis,
) -> Result<Option<OutboxRecord>> {
    let sql = format!(
        "UPDATE outbox SET delivery = $3, delivery_error = $4, delivery_at = $5, updated_at = $5
         WHERE channel = $1 AND provider_id = $2
           AND (delivery IS NULL OR {} <= {})
         RETURNING {}",
        DELIVERY_RANK.replace("{col}", "delivery"),
        DELIVERY_RANK.replace("{col}", "CAST($3 AS TEXT)"),
        outbox_columns!()
    );
    write_one(
        b,
        Stmt::new(sql, params![channel, provider_id, delivery, error, now]),
        rows::outbox,
    )
    .await
}

pub(in crate::store) async fn for_run<B: Backend>(
    b: &B,
    run_id: &str,
) -> Result<Vec<OutboxRecord>> {
    let sql = concat!(
        "SELECT ",
        outbox_columns!(),
        " FROM outbox WHERE run_id = $1 ORDER BY created_at, id"
    );
    read_all(b, Stmt::new(sql, params![run_id]), rows::outbox).await
}

/// What recipients were sent on a channel after a point, in sending order. The redundant
/// `sent_at >= $3` bounds the index range (`outbox_sent_to`); the rest of the condition is
/// the keyset's tie-break on `id`.
pub(in crate::store) async fn sent<B: Backend>(
    b: &B,
    q: &SentMessages,
) -> Result<Vec<OutboxRecord>> {
    let order = if q.newest { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT {} FROM outbox
         WHERE channel = $1 AND {} AND status = 'sent'
           AND sent_at >= $3 AND (sent_at > $3 OR id > $4)
         ORDER BY sent_at {order}, id {order} LIMIT $5",
        outbox_columns!(),
        B::Db::in_list("recipient", "$2"),
    );
    let p = params![
        &q.channel,
        q.recipients.as_slice(),
        q.after.0,
        &q.after.1,
        q.limit,
    ];
    let mut found = read_all(b, Stmt::new(sql, p), rows::outbox).await?;
    if q.newest {
        found.reverse();
    }
    Ok(found)
}

pub(in crate::store) async fn count<B: Backend>(b: &B) -> Result<Vec<(OutboxStatus, i64)>> {
    let sql = "SELECT status, COUNT(*) AS n FROM outbox GROUP BY status";
    let rows = read_all(b, Stmt::new(sql, params![]), rows::count).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(s, n)| OutboxStatus::parse(s.as_deref()?).map(|s| (s, n)))
        .collect())
}

pub(in crate::store) async fn next_at<B: Backend>(b: &B) -> Result<Option<Millis>> {
    let sql = "SELECT MIN(next_attempt_at) AS t FROM outbox WHERE next_attempt_at IS NOT NULL";
    Ok(read_one(b, Stmt::new(sql, params![]), super::time)
        .await?
        .flatten())
}

pub(in crate::store) async fn get<B: Backend>(b: &B, id: &str) -> Result<Option<OutboxRecord>> {
    let sql = concat!("SELECT ", outbox_columns!(), " FROM outbox WHERE id = $1");
    read_one(b, Stmt::new(sql, params![id]), rows::outbox).await
}

pub(in crate::store) async fn list<B: Backend>(
    b: &B,
    f: &OutboxFilter,
) -> Result<Vec<OutboxRecord>> {
    let sql = concat!(
        "SELECT ",
        outbox_columns!(),
        " FROM outbox WHERE (CAST($1 AS TEXT) IS NULL OR status = $1)
           AND (CAST($2 AS TEXT) IS NULL OR channel = $2)
           AND (CAST($3 AS TEXT) IS NULL OR run_id = $3) AND (CAST($4 AS BIGINT) IS NULL OR created_at < $4)
         ORDER BY created_at DESC, id DESC LIMIT $5"
    );
    let p = params![
        f.status.map(OutboxStatus::as_str),
        &f.channel,
        &f.run_id,
        f.created_before,
        f.limit,
    ];
    read_all(b, Stmt::new(sql, p), rows::outbox).await
}

/// Sends a `failed` message again: pending, due now, its attempts counted afresh.
pub(in crate::store) async fn retry<B: Backend>(
    b: &B,
    id: &str,
    now: Millis,
) -> Result<MessageChange> {
    let sql = "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $1, lease_owner = NULL,
             updated_at = $1 WHERE id = $2 AND status = 'failed'";
    let changed = write(b, Stmt::new(sql, params![now, id])).await?;
    change(get(b, id).await?, changed)
}

/// Withdraws a `pending` message.
pub(in crate::store) async fn cancel<B: Backend>(
    b: &B,
    id: &str,
    now: Millis,
) -> Result<MessageChange> {
    let sql = "UPDATE outbox SET status = 'cancelled', next_attempt_at = NULL, lease_owner = NULL,
             last_error = 'cancelled by an operator', updated_at = $1 WHERE id = $2 AND status = 'pending'";
    let changed = write(b, Stmt::new(sql, params![now, id])).await?;
    change(get(b, id).await?, changed)
}

/// The outcome of an UPDATE guarded by the message's status.
fn change(now: Option<OutboxRecord>, affected: u64) -> Result<MessageChange> {
    Ok(match now {
        None => MessageChange::NotFound,
        Some(m) if affected == 1 => MessageChange::Done(Box::new(m)),
        Some(m) => MessageChange::WrongState(m.status),
    })
}
