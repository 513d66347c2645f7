//! The campaign driver: enrolls a broadcast's audience when it is due and moves each campaign
//! through its states. Each recipient is a run of the campaign's steps on the one interpreter;
//! the driver only creates those runs, in chunks, each recipient recorded with its run in one
//! transaction under the key (campaign, contact, occurrence), so a crash, a second process or
//! a second tick never enrolls anyone twice.
//!
//! States: `scheduled` (no row yet, or not due), `running` (enrolled, recipients on their way),
//! `paused` (no enrolment; recipients hold before their next message), `completed` (every recipient's
//! run finished), `cancelled` (its runs cancelled).

mod audience;
mod control;
pub(crate) mod exit;
pub(crate) mod window;

use std::sync::Arc;

use serde_json::json;

use crate::definitions::campaign::Campaign;
use crate::definitions::model::campaign::Schedule;
use crate::engine::clock::rfc3339;
use crate::engine::registry::CompiledWorkflow;
use crate::engine::{Engine, EngineError, RunBuilder, Trigger};
use crate::store::Millis;

pub use control::{CampaignError, CampaignStatus, cancel, list, pause, resume, show};

/// Recipients enrolled per transaction.
const CHUNK: i64 = 1000;
/// Chunks per campaign per tick, so one large broadcast does not hold up the others (or the
/// cron slots the scheduler decides in the same tick).
const CHUNKS_PER_TICK: usize = 50;

/// The states a campaign can be in, as stored.
pub const SCHEDULED: &str = "scheduled";
pub const RUNNING: &str = "running";
pub const PAUSED: &str = "paused";
pub const COMPLETED: &str = "completed";
pub const CANCELLED: &str = "cancelled";

/// How long a paused campaign's recipient waits before it looks at the campaign's state again.
pub const PAUSED_RECHECK_MS: i64 = 60_000;

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CampaignTick {
    pub enrolled: u64,
}

/// Enrolls what is due of every broadcast in the registry, and completes those whose
/// recipients have all finished.
pub async fn tick(engine: &Arc<Engine>) -> Result<CampaignTick, EngineError> {
    let registry = engine.registry();
    let now = engine.now();
    let mut report = CampaignTick::default();
    let mut ids: Vec<&String> = registry
        .workflows
        .iter()
        .filter(|(_, w)| w.campaign.is_some())
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    for id in ids {
        let wf = &registry.workflows[id];
        let Some(campaign) = &wf.campaign else {
            continue;
        };
        if matches!(campaign.schedule, Schedule::Cron(_)) {
            report.enrolled += recurring(engine, wf, campaign, now).await?;
            continue;
        }
        let Some(send_at) = campaign.send_at else {
            continue;
        };
        if send_at > now {
            continue;
        }
        let row = engine.store.campaign(id).await?;
        let state = row.as_ref().map_or(SCHEDULED, |r| r.state.as_str());
        match state {
            PAUSED | CANCELLED | COMPLETED => continue,
            _ => {}
        }
        if row.as_ref().is_some_and(|r| r.enrolled_at.is_some()) {
            let counts = engine.store.campaign_counts(id).await?;
            if counts.active == 0 {
                engine
                    .store
                    .set_campaign_state(id, COMPLETED, None, now)
                    .await?;
                tracing::info!(campaign = %id, enrolled = counts.enrolled, "campaign completed");
            }
            continue;
        }
        if state == SCHEDULED {
            engine
                .store
                .set_campaign_state(id, RUNNING, None, now)
                .await?;
        }
        let (enrolled, done) = enrol(engine, wf, campaign, &occurrence(send_at), now).await?;
        report.enrolled += enrolled;
        if done {
            engine
                .store
                .set_campaign_state(id, RUNNING, Some(now), now)
                .await?;
            tracing::info!(campaign = %id, "campaign audience enrolled");
        }
    }
    if report.enrolled > 0 {
        engine.work_ready.notify_waiters();
    }
    Ok(report)
}

/// Enrolls what is due of a recurring campaign's latest occurrence: the latest time its
/// schedule fired (the scheduler decides each, once). A recurring campaign stays `running`
/// between occurrences; paused, it enrolls nobody, and an occurrence that fell due while it was
/// paused is enrolled on resume only within the schedule's `catch_up_window`.
async fn recurring(
    engine: &Arc<Engine>,
    wf: &Arc<CompiledWorkflow>,
    campaign: &Campaign,
    now: Millis,
) -> Result<u64, EngineError> {
    let Some(slot) = engine.store.latest_cron_fire(&wf.id).await? else {
        return Ok(0);
    };
    let row = engine.store.campaign(&wf.id).await?;
    if let Some(r) = &row
        && matches!(r.state.as_str(), PAUSED | CANCELLED | COMPLETED)
    {
        return Ok(0);
    }
    let occurrence = occurrence(slot);
    let current = row.as_ref().and_then(|r| r.occurrence.as_deref()) == Some(&*occurrence);
    if current && row.as_ref().is_some_and(|r| r.enrolled_at.is_some()) {
        return Ok(0);
    }
    if !current {
        let window = match &campaign.schedule {
            Schedule::Cron(c) => c.catch_up_window.as_millis_i64(),
            _ => i64::MAX,
        };
        if now.saturating_sub(slot) > window {
            tracing::warn!(campaign = %wf.id, occurrence = %occurrence, "occurrence not enrolled: more than catch_up_window late (the campaign was paused)");
            engine
                .store
                .set_campaign_occurrence(&wf.id, &occurrence, Some(now), now)
                .await?;
            return Ok(0);
        }
        engine
            .store
            .set_campaign_occurrence(&wf.id, &occurrence, None, now)
            .await?;
    }
    let (enrolled, done) = enrol(engine, wf, campaign, &occurrence, now).await?;
    if done {
        engine
            .store
            .set_campaign_occurrence(&wf.id, &occurrence, Some(now), now)
            .await?;
        tracing::info!(campaign = %wf.id, occurrence = %occurrence, "campaign occurrence enrolled");
    }
    Ok(enrolled)
}

/// A broadcast's one occurrence is its send time: a campaign re-sent for another time is a
/// new occurrence, and nobody is enrolled twice in the same one.
fn occurrence(send_at: Millis) -> String {
    rfc3339(send_at)
}

/// Enrolls up to [`CHUNKS_PER_TICK`] chunks of the audience; how many, and whether the whole
/// audience is now enrolled.
async fn enrol(
    engine: &Arc<Engine>,
    wf: &Arc<CompiledWorkflow>,
    campaign: &Campaign,
    occurrence: &str,
    now: Millis,
) -> Result<(u64, bool), EngineError> {
    let audience = audience::filter(campaign, now);
    let templates = &engine.registry().templates;
    let mut enrolled = 0;
    // Chunks follow one another in id order, so each starts where the last ended instead of
    // passing every contact enrolled before it. The audience is complete only when a pass from
    // the first id finds less than a chunk: a contact that began to match behind the cursor
    // is found by that pass.
    let mut after: Option<String> = None;
    for _ in 0..CHUNKS_PER_TICK {
        let from_start = after.is_none();
        let contacts = engine
            .store
            .campaign_candidates(&wf.id, occurrence, &audience, after.as_deref(), CHUNK)
            .await?;
        let full = contacts.len() as i64 == CHUNK;
        after = if full { contacts.last().cloned() } else { None };
        if !contacts.is_empty() {
            let recipients: Vec<_> = contacts
                .into_iter()
                .map(|contact| {
                    let trigger = Trigger::Manual {
                        input: json!({"campaign": wf.id, "occurrence": occurrence, "contact_id": contact}),
                    };
                    let run = RunBuilder::new(wf, trigger)
                        .idempotency_key(Some(format!("campaign:{occurrence}:{contact}")))
                        .build(templates, now);
                    (contact, run)
                })
                .collect();
            enrolled += engine
                .store
                .enrol_campaign(&wf.id, occurrence, &recipients, now)
                .await?;
        }
        if !full && from_start {
            return Ok((enrolled, true));
        }
    }
    Ok((enrolled, false))
}
