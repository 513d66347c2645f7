//! Cron: how far each trigger's slots are decided, and each slot's outcome.

use super::{Backend, Exec, Stmt, commit, params, read_all, read_one, write};
use crate::store::rows;
use crate::store::{CronFire, Millis, NewRun, Result, RunStatus};

pub(in crate::store) async fn checked_until<B: Backend>(
    b: &B,
    workflow_id: &str,
    trigger_key: &str,
) -> Result<Option<Millis>> {
    let sql =
        "SELECT checked_until AS t FROM cron_state WHERE workflow_id = $1 AND trigger_key = $2";
    let p = params![workflow_id, trigger_key];
    Ok(read_one(b, Stmt::new(sql, p), super::time).await?.flatten())
}

/// Moves the mark forward, never back.
pub(in crate::store) async fn set_checked_until<B: Backend>(
    b: &B,
    workflow_id: &str,
    trigger_key: &str,
    until: Millis,
) -> Result<()> {
    // `ON CONFLICT DO UPDATE` is atomic, and comparing with the row as it stands when the
    // update runs means a process that is behind can never pull the mark back.
    let sql = "INSERT INTO cron_state (workflow_id, trigger_key, checked_until) VALUES ($1, $2, $3)
         ON CONFLICT (workflow_id, trigger_key) DO UPDATE
             SET checked_until = CASE WHEN excluded.checked_until > cron_state.checked_until
                 THEN excluded.checked_until ELSE cron_state.checked_until END";
    write(b, Stmt::new(sql, params![workflow_id, trigger_key, until])).await?;
    Ok(())
}

/// Records a slot's outcome, starting `run` with it; false, writing nothing, when the slot was
/// already recorded.
pub(in crate::store) async fn record_fire<B: Backend>(
    b: &B,
    fire: &CronFire,
    run: Option<&NewRun>,
) -> Result<bool> {
    let mut tx = b.begin().await?;
    // The primary key decides the race: a second process inserting the same slot waits for the
    // first to commit and then inserts nothing (or goes ahead if the first rolled back). Only
    // the winner goes on to start the run, in the same transaction.
    let insert = Stmt::new(
        "INSERT INTO cron_fires (workflow_id, trigger_key, slot, outcome, reason, run_id, recorded_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (workflow_id, trigger_key, slot) DO NOTHING",
        params![
            &fire.workflow_id,
            &fire.trigger_key,
            fire.slot,
            fire.outcome.as_str(),
            &fire.reason,
            &fire.run_id,
            fire.recorded_at,
        ],
    );
    if B::Db::execute(&mut *tx, insert).await? == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    if let Some(run) = run {
        B::Db::execute(&mut *tx, commit::insert_run(run, None)).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// True while a run started by this trigger is unfinished.
pub(in crate::store) async fn run_active<B: Backend>(
    b: &B,
    workflow_id: &str,
    trigger_key: &str,
) -> Result<bool> {
    let sql = "SELECT r.status FROM cron_fires f JOIN runs r ON r.id = f.run_id
         WHERE f.workflow_id = $1 AND f.trigger_key = $2 AND f.outcome = 'fired'
         ORDER BY f.slot DESC LIMIT 1";
    let p = params![workflow_id, trigger_key];
    let status = read_one(b, Stmt::new(sql, p), |r| r.text("status")).await?;
    Ok(status
        .and_then(|s| RunStatus::parse(&s))
        .is_some_and(|s| !s.is_finished()))
}

pub(in crate::store) async fn fires<B: Backend>(
    b: &B,
    workflow_id: &str,
    limit: i64,
) -> Result<Vec<CronFire>> {
    let sql = "SELECT workflow_id, trigger_key, slot, outcome, reason, run_id, recorded_at FROM cron_fires
         WHERE workflow_id = $1 ORDER BY slot DESC LIMIT $2";
    read_all(
        b,
        Stmt::new(sql, params![workflow_id, limit]),
        rows::cron_fire,
    )
    .await
}

/// The latest slot any of a workflow's cron triggers fired: a recurring campaign's current
/// occurrence.
pub(in crate::store) async fn latest_fired<B: Backend>(
    b: &B,
    workflow_id: &str,
) -> Result<Option<Millis>> {
    let sql = "SELECT MAX(slot) AS t FROM cron_fires WHERE workflow_id = $1 AND outcome = 'fired'";
    Ok(
        read_one(b, Stmt::new(sql, params![workflow_id]), super::time)
            .await?
            .flatten(),
    )
}
