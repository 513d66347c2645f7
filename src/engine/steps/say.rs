//! `say`: a reply to the person on their channel, through the outbox.

use serde_json::json;

use super::StepCx;
use super::conversation::{self, Session};
use crate::definitions::model::Template;
use crate::engine::interpreter::{Outcome, StepError};

pub(super) async fn execute(mut cx: StepCx<'_>, t: &Template) -> Result<Outcome, StepError> {
    let session = Session::of(&cx)?;
    let text = cx.render(t.as_str())?;
    if text.trim().is_empty() {
        return Ok(Outcome::Done(
            json!({"text": "", "skipped": "the text is empty"}),
        ));
    }
    let message = conversation::reply(&mut cx, &session, text.clone(), None).await?;
    let turn = conversation::turn("assistant", &text, &cx.step().id, cx.now);
    conversation::record(cx.context_mut(), vec![turn]);
    Ok(Outcome::Done(json!({"text": text, "message": message})))
}
