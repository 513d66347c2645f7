//! Retention: deleting old history in short transactions, so a pass never holds locks (or
//! SQLite's one writer) for long.

use super::{Backend, Dialect, Exec, Stmt, params, write};
use crate::store::admin::Purged;
use crate::store::rows::RowView;
use crate::store::sql::runs::UNFINISHED;
use crate::store::{Millis, Result};

/// See [`crate::store::Admin::purge`].
pub(in crate::store) async fn purge<B: Backend>(
    b: &B,
    runs_before: Option<Millis>,
    events_before: Option<Millis>,
    batch: i64,
) -> Result<Purged> {
    let mut out = Purged::default();
    if let Some(before) = runs_before {
        while purge_runs(b, before, batch, &mut out).await? {}
    }
    if let Some(before) = events_before {
        loop {
            let sql = format!(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE created_at < $1
                   AND created_at < coalesce((SELECT MIN(created_at) FROM runs WHERE status IN {UNFINISHED}), $1)
                 LIMIT $2)"
            );
            let deleted = write(b, Stmt::new(sql, params![before, batch])).await?;
            out.events += deleted;
            if (deleted as i64) < batch {
                break;
            }
        }
        // Webhook response counts are a summary of what happened, kept as long as events.
        let sql = "DELETE FROM webhook_responses WHERE minute < $1";
        write(b, Stmt::new(sql, params![before])).await?;
    }
    Ok(out)
}

/// Deletes one batch of finished runs, with their step logs and messages. True when there may
/// be more.
async fn purge_runs<B: Backend>(
    b: &B,
    before: Millis,
    batch: i64,
    out: &mut Purged,
) -> Result<bool> {
    let mut tx = b.begin().await?;
    // A run a waiting parent still needs is kept.
    let select = format!(
        "SELECT r.id FROM runs r WHERE r.finished_at IS NOT NULL AND r.finished_at < $1
           AND r.status NOT IN {UNFINISHED}
           AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.id = r.parent_run_id AND p.status IN {UNFINISHED})
         LIMIT $2"
    );
    let ids = B::Db::fetch_all(&mut *tx, Stmt::new(select, params![before, batch]))
        .await?
        .iter()
        .map(|r| r.text("id"))
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        tx.rollback().await?;
        return Ok(false);
    }
    for (table, column, counter) in [
        ("step_log", "run_id", &mut out.steps),
        ("outbox", "run_id", &mut out.messages),
        ("runs", "id", &mut out.runs),
    ] {
        let sql = format!("DELETE FROM {table} WHERE {}", B::Db::in_list(column, "$1"));
        *counter += B::Db::execute(&mut *tx, Stmt::new(sql, params![&ids[..]])).await?;
    }
    tx.commit().await?;
    Ok(ids.len() as i64 >= batch)
}
