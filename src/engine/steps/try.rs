//! `try`: runs its steps; its `on_error` handles a failure of any of them.

use serde_json::json;

use super::StepCx;
use crate::engine::interpreter::{Outcome, StepError};

pub(super) fn execute(cx: StepCx<'_>) -> Result<Outcome, StepError> {
    Ok(Outcome::Goto(cx.branch("body"), json!({"entered": true})))
}
