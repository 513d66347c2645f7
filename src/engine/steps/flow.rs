//! `goto` and `end`: where a conversation goes next.

use serde_json::json;

use super::StepCx;
use super::conversation::{self, Session};
use crate::definitions::model::conversation::EndStep;
use crate::engine::interpreter::{Outcome, StepError};

pub(super) fn goto(cx: StepCx<'_>, target: &str) -> Result<Outcome, StepError> {
    let Some((idx, _)) = cx.run.workflow.program.node(target) else {
        return Err(StepError::Permanent(format!(
            "no step `{target}` to go to in this version of `{}`",
            cx.run.workflow.id
        )));
    };
    // Only top-level steps are targets (checked when the file is loaded): loops left behind
    // are over.
    cx.run.cursor.frames.clear();
    Ok(Outcome::Goto(Some(idx), json!({"to": target})))
}

pub(super) async fn end(mut cx: StepCx<'_>, e: &EndStep) -> Result<Outcome, StepError> {
    let mut out = json!({"ended": true});
    if let EndStep::Say(t) = e {
        let text = cx.render(t.as_str())?;
        if !text.trim().is_empty() {
            let session = Session::of(&cx)?;
            out["message"] = conversation::reply(&mut cx, &session, text.clone(), None).await?;
            out["text"] = json!(text);
            let turn = conversation::turn("assistant", &text, &cx.step().id, cx.now);
            conversation::record(cx.context_mut(), vec![turn]);
        }
    }
    mark_ended(&mut cx, "end");
    Ok(Outcome::End(out))
}

/// Why the conversation ended, as `conversation.ended`.
pub(super) fn mark_ended(cx: &mut StepCx<'_>, why: &str) {
    if let Some(c) = cx
        .context_mut()
        .get_mut("conversation")
        .and_then(|c| c.as_object_mut())
    {
        c.insert("ended".into(), json!(why));
    }
}
