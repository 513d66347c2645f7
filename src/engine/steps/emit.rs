//! `emit`: records an event, starting the workflows subscribed to it and waking runs that
//! wait for it.

use serde_json::{Value, json};

use super::StepCx;
use crate::definitions::model::step::EmitStep;
use crate::engine::context::subscriber_runs;
use crate::engine::interpreter::{After, Outcome, StepError};
use crate::store::NewEvent;

pub(super) fn execute(cx: StepCx<'_>, e: &EmitStep) -> Result<Outcome, StepError> {
    let key = e.key.as_ref().map(|k| cx.render(k.as_str())).transpose()?;
    let data = e
        .data
        .as_ref()
        .map(|d| cx.render_json(d))
        .transpose()?
        .unwrap_or(Value::Null);
    let run_id = cx.run.id.clone();
    let event = NewEvent {
        // Derived from the run and step, so a re-executed segment cannot emit twice.
        id: cx.effect_key(),
        name: e.event.clone(),
        key: key.clone(),
        data,
        source_run_id: Some(run_id.clone()),
        created_at: cx.now,
    };
    let runs = subscriber_runs(cx.host.registry, &event, Some(&run_id), cx.now);
    let started: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    let out = json!({"event_id": event.id, "started_runs": started});
    cx.pending.new_runs.extend(runs);
    if let Some(k) = key {
        cx.pending.after.push(After::WakeWaiters {
            name: e.event.clone(),
            key: k,
        });
    }
    cx.pending.events.push(event);
    cx.pending.after.push(After::Work);
    Ok(Outcome::Done(out))
}
