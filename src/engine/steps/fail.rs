//! `fail`: ends the step as failed with a message; an `on_error` around it catches it like any
//! other failure.

use super::StepCx;
use crate::definitions::model::Template;
use crate::engine::interpreter::{Outcome, StepError};

pub(super) fn execute(cx: StepCx<'_>, message: &Template) -> Result<Outcome, StepError> {
    Ok(Outcome::Fail(cx.render(message.as_str())?))
}
