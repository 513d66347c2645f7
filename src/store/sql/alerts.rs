//! Alerts: the events an alert's window reads, each instance's stored state, and the claim of
//! an evaluation tick, written with the states it decided in one transaction.

use super::{Backend, Exec, Stmt, params, read_all, write};
use crate::store::alerting::{NotificationLog, SilenceRow};
use crate::store::rows;
use crate::store::{AlertInstance, EventRecord, Millis, NewOutbox, Result};

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
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM alert_states WHERE alert_id = $1 ORDER BY group_key"
    );
    read_all(b, Stmt::new(sql, params![alert_id]), instance).await
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

const INSTANCE_COLUMNS: &str = "alert_id, group_key, phase, state, updated_at";

fn instance(r: &dyn rows::RowView) -> Result<AlertInstance> {
    Ok(AlertInstance {
        alert_id: r.text("alert_id")?,
        group_key: r.text("group_key")?,
        phase: r.text("phase")?,
        state: r.text("state")?,
        updated_at: r.int("updated_at")?,
    })
}

pub(in crate::store) async fn firing<B: Backend>(b: &B) -> Result<Vec<AlertInstance>> {
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM alert_states WHERE phase = 'firing'
         ORDER BY alert_id, group_key"
    );
    read_all(b, Stmt::new(sql, params![]), instance).await
}

pub(in crate::store) async fn notifications<B: Backend>(b: &B) -> Result<Vec<NotificationLog>> {
    let sql = "SELECT route, group_key, seq, notified, sent_at, updated_at FROM alert_notifications
         ORDER BY route, group_key";
    read_all(b, Stmt::new(sql, params![]), |r| {
        Ok(NotificationLog {
            route: r.text("route")?,
            group_key: r.text("group_key")?,
            seq: r.int("seq")?,
            notified: r.text("notified")?,
            sent_at: r.opt_int("sent_at")?,
            updated_at: r.int("updated_at")?,
        })
    })
    .await
}

/// Writes `log` where the group's seq is still `read_seq`, and enqueues `messages`, in one
/// transaction; false, writing nothing, when another process wrote it first.
pub(in crate::store) async fn record_notification<B: Backend>(
    b: &B,
    log: &NotificationLog,
    read_seq: Option<i64>,
    messages: &[NewOutbox],
) -> Result<bool> {
    let mut tx = b.begin().await?;
    let write = match read_seq {
        None => Stmt::new(
            "INSERT INTO alert_notifications (route, group_key, seq, notified, sent_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (route, group_key) DO NOTHING",
            params![
                &log.route,
                &log.group_key,
                log.seq,
                &log.notified,
                log.sent_at,
                log.updated_at
            ],
        ),
        Some(seq) => Stmt::new(
            "UPDATE alert_notifications SET seq = $1, notified = $2, sent_at = $3, updated_at = $4
             WHERE route = $5 AND group_key = $6 AND seq = $7",
            params![
                log.seq,
                &log.notified,
                log.sent_at,
                log.updated_at,
                &log.route,
                &log.group_key,
                seq
            ],
        ),
    };
    if B::Db::execute(&mut *tx, write).await? == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    if !messages.is_empty() {
        B::Db::execute(&mut *tx, super::outbox::insert(messages)).await?;
    }
    tx.commit().await?;
    Ok(true)
}

const SILENCE_COLUMNS: &str =
    "id, matchers, starts_at, ends_at, created_by, comment, created_at, updated_at";

fn silence(r: &dyn rows::RowView) -> Result<SilenceRow> {
    Ok(SilenceRow {
        id: r.text("id")?,
        matchers: r.text("matchers")?,
        starts_at: r.int("starts_at")?,
        ends_at: r.int("ends_at")?,
        created_by: r.opt_text("created_by")?,
        comment: r.opt_text("comment")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

pub(in crate::store) async fn add_silence<B: Backend>(b: &B, s: &SilenceRow) -> Result<()> {
    let sql =
        format!("INSERT INTO silences ({SILENCE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
    write(
        b,
        Stmt::new(
            sql,
            params![
                &s.id,
                &s.matchers,
                s.starts_at,
                s.ends_at,
                &s.created_by,
                &s.comment,
                s.created_at,
                s.updated_at
            ],
        ),
    )
    .await?;
    Ok(())
}

pub(in crate::store) async fn silences<B: Backend>(
    b: &B,
    active_at: Option<Millis>,
) -> Result<Vec<SilenceRow>> {
    let stmt = match active_at {
        Some(at) => Stmt::new(
            format!(
                "SELECT {SILENCE_COLUMNS} FROM silences WHERE ends_at > $1
                 ORDER BY created_at DESC, id DESC"
            ),
            params![at],
        ),
        None => Stmt::new(
            format!("SELECT {SILENCE_COLUMNS} FROM silences ORDER BY created_at DESC, id DESC"),
            params![],
        ),
    };
    read_all(b, stmt, silence).await
}

pub(in crate::store) async fn expire_silence<B: Backend>(
    b: &B,
    id: &str,
    now: Millis,
) -> Result<bool> {
    let sql = "UPDATE silences SET ends_at = $1, updated_at = $1 WHERE id = $2 AND ends_at > $1";
    Ok(write(b, Stmt::new(sql, params![now, id])).await? > 0)
}
