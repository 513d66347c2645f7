//! Alerts: the events an alert's window reads, each instance's stored state, and the claim of
//! an evaluation tick, written with the states it decided in one transaction.

use super::{Backend, Exec, Stmt, params, read_all};
use crate::store::rows;
use crate::store::{AlertInstance, EventRecord, Millis, Result};

/// Events of one name created in `(from, to]`, oldest first.
pub(in crate::store) async fn events_between<B: Backend>(
    b: &B,
    name: &str,
    from: Millis,
    to: Millis,
) -> Result<Vec<EventRecord>> {
    let sql = "SELECT id, name, key, data, source_run_id, created_at FROM events
         WHERE name = $1 AND created_at > $2 AND created_at <= $3 ORDER BY created_at, id";
    read_all(b, Stmt::new(sql, params![name, from, to]), rows::event).await
}

pub(in crate::store) async fn instances<B: Backend>(
    b: &B,
    alert_id: &str,
) -> Result<Vec<AlertInstance>> {
    let sql = "SELECT alert_id, group_key, phase, state, updated_at FROM alert_states
         WHERE alert_id = $1 ORDER BY group_key";
    read_all(b, Stmt::new(sql, params![alert_id]), |r| {
        Ok(AlertInstance {
            alert_id: r.text("alert_id")?,
            group_key: r.text("group_key")?,
            phase: r.text("phase")?,
            state: r.text("state")?,
            updated_at: r.int("updated_at")?,
        })
    })
    .await
}

/// Claims `tick` of `alert_id` and writes `states`; false, writing nothing, when the tick was
/// already claimed (by this or another process).
pub(in crate::store) async fn record_tick<B: Backend>(
    b: &B,
    alert_id: &str,
    tick: Millis,
    states: &[AlertInstance],
) -> Result<bool> {
    let mut tx = b.begin().await?;
    // The primary key decides the race, as for a cron slot: the loser inserts nothing.
    let claim = Stmt::new(
        "INSERT INTO alert_ticks (alert_id, tick) VALUES ($1, $2)
         ON CONFLICT (alert_id, tick) DO NOTHING",
        params![alert_id, tick],
    );
    if B::Db::execute(&mut *tx, claim).await? == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    for s in states {
        let upsert = Stmt::new(
            "INSERT INTO alert_states (alert_id, group_key, phase, state, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (alert_id, group_key) DO UPDATE
                 SET phase = excluded.phase, state = excluded.state,
                     updated_at = excluded.updated_at",
            params![&s.alert_id, &s.group_key, &s.phase, &s.state, s.updated_at],
        );
        B::Db::execute(&mut *tx, upsert).await?;
    }
    tx.commit().await?;
    Ok(true)
}
