//! An operator's hand on a campaign: pause, resume, cancel, and what it has done so far.

use std::sync::Arc;

use serde::Serialize;

use super::{CANCELLED, COMPLETED, PAUSED, RUNNING, SCHEDULED};
use crate::definitions::model::campaign::Schedule;
use crate::engine::{Engine, EngineError};
use crate::store::RunSelection;
use crate::store::campaigns::CampaignCounts;

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("no campaign `{0}` is loaded")]
    NotFound(String),
    /// The campaign's state does not allow it, with why.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<crate::store::StoreError> for CampaignError {
    fn from(e: crate::store::StoreError) -> CampaignError {
        CampaignError::Engine(e.into())
    }
}

/// A campaign as an operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct CampaignStatus {
    pub id: String,
    pub state: String,
    /// `broadcast`, `drip` or `recurring`.
    pub kind: &'static str,
    pub send_at: Option<String>,
    /// A recurring campaign's latest occurrence: the time its schedule last fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurrence: Option<String>,
    pub counts: CampaignCounts,
}

fn loaded(engine: &Engine, id: &str) -> Result<bool, CampaignError> {
    let registry = engine.registry();
    match registry.workflows.get(id) {
        Some(w) if w.campaign.is_some() => Ok(true),
        _ => Err(CampaignError::NotFound(id.to_owned())),
    }
}

async fn state(engine: &Engine, id: &str) -> Result<String, CampaignError> {
    Ok(engine
        .store
        .campaign(id)
        .await?
        .map_or_else(|| SCHEDULED.to_owned(), |r| r.state))
}

/// Stops enrolment; recipients already enrolled carry on.
pub async fn pause(engine: &Arc<Engine>, id: &str) -> Result<(), CampaignError> {
    loaded(engine, id)?;
    let now = engine.now();
    match state(engine, id).await?.as_str() {
        s @ (COMPLETED | CANCELLED) => Err(CampaignError::Refused(format!(
            "campaign `{id}` is {s} and cannot be paused"
        ))),
        _ => Ok(engine
            .store
            .set_campaign_state(id, PAUSED, None, now)
            .await?),
    }
}

/// Lets a paused campaign enroll again from where it stopped.
pub async fn resume(engine: &Arc<Engine>, id: &str) -> Result<(), CampaignError> {
    loaded(engine, id)?;
    let now = engine.now();
    match state(engine, id).await?.as_str() {
        PAUSED => {
            engine
                .store
                .set_campaign_state(id, RUNNING, None, now)
                .await?;
            engine.work_ready.notify_waiters();
            Ok(())
        }
        s => Err(CampaignError::Refused(format!(
            "campaign `{id}` is {s}, not paused"
        ))),
    }
}

/// Ends the campaign: nobody more is enrolled, and recipients on their way are cancelled.
/// Returns how many recipients' runs were cancelled.
pub async fn cancel(engine: &Arc<Engine>, id: &str) -> Result<u64, CampaignError> {
    loaded(engine, id)?;
    let now = engine.now();
    if state(engine, id).await? == COMPLETED {
        return Err(CampaignError::Refused(format!(
            "campaign `{id}` is completed and cannot be cancelled"
        )));
    }
    engine
        .store
        .set_campaign_state(id, CANCELLED, None, now)
        .await?;
    let selection = RunSelection {
        workflow_id: Some(id.to_owned()),
        ..RunSelection::default()
    };
    Ok(engine.store.cancel_runs(&selection, now, false).await?)
}

/// Every loaded campaign, by id.
pub async fn list(engine: &Arc<Engine>) -> Result<Vec<CampaignStatus>, CampaignError> {
    let registry = engine.registry();
    let mut ids: Vec<&String> = registry
        .workflows
        .iter()
        .filter(|(_, w)| w.campaign.is_some())
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    let mut out = Vec::new();
    for id in ids {
        out.push(show(engine, id).await?);
    }
    Ok(out)
}

pub async fn show(engine: &Arc<Engine>, id: &str) -> Result<CampaignStatus, CampaignError> {
    let registry = engine.registry();
    let Some(c) = registry.workflows.get(id).and_then(|w| w.campaign.clone()) else {
        return Err(CampaignError::NotFound(id.to_owned()));
    };
    let row = engine.store.campaign(id).await?;
    Ok(CampaignStatus {
        id: id.to_owned(),
        state: row
            .as_ref()
            .map_or_else(|| SCHEDULED.to_owned(), |r| r.state.clone()),
        kind: match c.schedule {
            Schedule::SendAt(_) => "broadcast",
            Schedule::Enrol(_) => "drip",
            Schedule::Cron(_) => "recurring",
        },
        send_at: c.send_at.map(crate::engine::clock::rfc3339),
        occurrence: row.and_then(|r| r.occurrence),
        counts: engine.store.campaign_counts(id).await?,
    })
}
