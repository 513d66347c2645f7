//! `call`: starts a run of another workflow and waits for it to finish; its `vars` and
//! response become the step's output.

use serde_json::json;

use super::StepCx;
use crate::definitions::model::step::CallStep;
use crate::engine::context::{RunBuilder, Trigger};
use crate::engine::cursor::Wait;
use crate::engine::interpreter::{After, Outcome, StepError};
use crate::store::{DynStore, RunStatus};

pub(super) fn execute(cx: StepCx<'_>, c: &CallStep) -> Result<Outcome, StepError> {
    let target =
        cx.host.registry.workflows.get(&c.workflow).ok_or_else(|| {
            StepError::Permanent(format!("workflow `{}` is not loaded", c.workflow))
        })?;
    let input = c
        .input
        .as_ref()
        .map(|i| cx.render_json(i))
        .transpose()?
        .unwrap_or(json!({}));
    let child = RunBuilder::new(
        target,
        Trigger::Call {
            parent_run_id: cx.run.id.clone(),
            input,
        },
    )
    .idempotency_key(Some(format!("call:{}", cx.effect_key())))
    .parent(cx.run.id.clone())
    .build(&cx.host.registry.templates, cx.now);
    let child_id = child.id.clone();
    cx.pending.new_runs.push(child);
    cx.pending.after.push(After::Work);
    Ok(Outcome::Wait {
        wait: Wait::Child {
            run_id: child_id.clone(),
        },
        due_at: None,
        event: None,
        note: json!({"called": c.workflow, "run_id": child_id}),
    })
}

/// A calling run woken while its child runs: done when the child completed, failed when it
/// failed or was cancelled.
pub(crate) async fn resume(store: &DynStore, run_id: String) -> Result<Outcome, StepError> {
    match store.run(&run_id).await {
        Ok(Some(child)) if child.status == RunStatus::Completed => Ok(Outcome::Done(json!({
            "run_id": child.id,
            "status": "completed",
            "vars": child.context.get("vars").cloned().unwrap_or(json!({})),
            "response": child.response,
        }))),
        Ok(Some(child)) if child.status.is_finished() => Err(StepError::Permanent(format!(
            "workflow `{}` (run {}) {}: {}",
            child.workflow_id,
            child.id,
            child.status.as_str(),
            child.error.unwrap_or_default()
        ))),
        Ok(Some(_)) => Ok(Outcome::Wait {
            wait: Wait::Child { run_id },
            due_at: None,
            event: None,
            note: json!({"still_waiting": true}),
        }),
        Ok(None) => Err(StepError::Permanent(format!(
            "the called run {run_id} does not exist"
        ))),
        Err(e) => Err(StepError::Transient {
            message: format!("could not read the called run: {e}"),
            retry_after: None,
        }),
    }
}
