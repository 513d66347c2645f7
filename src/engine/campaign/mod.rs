//! The campaign driver: enrolls a broadcast's audience when it is due and moves each campaign
//! through its states. Each recipient is a run of the campaign's steps on the one interpreter;
//! the driver only creates those runs, in chunks, each recipient recorded with its run in one
//! transaction under the key (campaign, contact, occurrence), so a crash, a second process or
//! a second tick never enrolls anyone twice.
//!
//! States: `scheduled` (no row yet, or not due), `running` (enrolled, recipients on their way),
//! `paused` (no enrolment; recipients hold before their next message), `completed` (every recipient's
//! run finished), `cancelled` (its runs cancelled).

mod control;
pub(crate) mod exit;
pub(crate) mod window;

use std::sync::Arc;

use serde_json::json;

use crate::definitions::campaign::Campaign;
use crate::engine::clock::rfc3339;
use crate::engine::registry::CompiledWorkflow;
use crate::engine::{Engine, EngineError, RunBuilder, Trigger};
use crate::store::Millis;
use crate::store::campaigns::AudienceFilter;

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

/// A broadcast's one occurrence is its send time: a campaign re-sent for another time is a
/// new occurrence, and nobody is enrolled twice in the same one.
fn occurrence(send_at: Millis) -> String {
    rfc3339(send_at)
}

pub(crate) fn audience_filter(c: &Campaign) -> AudienceFilter {
    AudienceFilter {
        lists: c.audience.lists.clone(),
        tags: c.audience.tags.clone(),
        without_tags: c.audience.without_tags.clone(),
        status: c.audience.status.clone(),
    }
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
    let audience = audience_filter(campaign);
    let templates = &engine.registry().templates;
    let mut enrolled = 0;
    for _ in 0..CHUNKS_PER_TICK {
        let contacts = engine
            .store
            .campaign_candidates(&wf.id, occurrence, &audience, None, CHUNK)
            .await?;
        if contacts.is_empty() {
            return Ok((enrolled, true));
        }
        let full = contacts.len() as i64 == CHUNK;
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
        if !full {
            return Ok((enrolled, true));
        }
    }
    Ok((enrolled, false))
}
