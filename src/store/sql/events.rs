//! Events: storing them, finding the one a waiting run consumes, and waking runs waiting for
//! one.

use super::{Backend, Dialect, Stmt, params, push_placeholders, read_one, write};
use crate::store::rows::{self, to_text};
use crate::store::{EventRecord, Millis, NewEvent, Result};

/// Stores events (`events` is not empty); an event already stored is left as it is.
pub(in crate::store) fn insert<'a>(events: impl IntoIterator<Item = &'a NewEvent>) -> Stmt {
    let mut p = Vec::new();
    let mut sql =
        String::from("INSERT INTO events (id, name, key, data, source_run_id, created_at) VALUES ");
    for (n, e) in events.into_iter().enumerate() {
        sql.push_str(if n == 0 { "(" } else { ", (" });
        push_placeholders(&mut sql, p.len() + 1, 6);
        sql.push(')');
        p.extend(params![
            &e.id,
            &e.name,
            &e.key,
            to_text(&e.data),
            &e.source_run_id,
            e.created_at,
        ]);
    }
    sql.push_str(" ON CONFLICT (id) DO NOTHING");
    Stmt::new(sql, p)
}

/// Makes runs waiting for `(name, key)` due now.
pub(in crate::store) async fn wake_waiting<B: Backend>(
    b: &B,
    name: &str,
    key: &str,
    now: Millis,
) -> Result<u64> {
    // Most events wake nobody. A read says so on a reader connection, beside the writer,
    // instead of an empty write queued behind every other transaction. A run that begins to
    // wait after this read looks for the event itself once its wait is stored.
    let sql = "SELECT 1 AS one FROM runs WHERE wait_event = $1 AND wait_key = $2 AND status = 'waiting' LIMIT 1";
    if read_one(b, Stmt::new(sql, params![name, key]), |_| Ok(()))
        .await?
        .is_none()
    {
        return Ok(0);
    }
    let sql = "UPDATE runs SET due_at = $1, updated_at = $1 WHERE wait_event = $2 AND wait_key = $3 AND status = 'waiting'";
    write(b, Stmt::new(sql, params![now, name, key])).await
}

/// The oldest matching event created at or after `since` whose id is not in `exclude`.
pub(in crate::store) async fn find<B: Backend>(
    b: &B,
    name: &str,
    key: &str,
    since: Millis,
    exclude: &[String],
) -> Result<Option<EventRecord>> {
    let sql = format!(
        "SELECT id, name, key, data, source_run_id, created_at FROM events
         WHERE name = $1 AND key = $2 AND created_at >= $3 AND NOT ({})
         ORDER BY created_at, id LIMIT 1",
        B::Db::in_list("id", "$4")
    );
    let p = params![name, key, since, exclude];
    read_one(b, Stmt::new(sql, p), rows::event).await
}
