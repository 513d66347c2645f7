//! `respond`: the reply a `sync` webhook gives. The caller gets it as soon as the segment
//! that made it commits; the run carries on.

use serde_json::{Map, Value, json};

use super::StepCx;
use crate::definitions::model::step::{RespondStep, ResponseStatus};
use crate::engine::SyncReply;
use crate::engine::interpreter::{After, Outcome, StepError};

pub(super) fn execute(cx: StepCx<'_>, r: &RespondStep) -> Result<Outcome, StepError> {
    let mut headers = Map::new();
    for (k, v) in &r.headers {
        headers.insert(k.clone(), Value::String(cx.render(v.as_str())?));
    }
    let body = r
        .body
        .as_ref()
        .map(|b| cx.render_json(b))
        .transpose()?
        .unwrap_or(Value::Null);
    let status = match &r.status {
        ResponseStatus::Code(c) => *c,
        ResponseStatus::Template(t) => {
            let text = cx.render(t.as_str())?;
            text.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| {
                    StepError::Permanent(format!(
                        "`respond.status` gave `{text}`, which is not an HTTP status (100 to 599)"
                    ))
                })?
        }
    };
    let response = json!({"status": status, "headers": headers, "body": body});
    cx.run.response = Some(response.clone());
    cx.pending
        .after
        .push(After::Reply(SyncReply::from_value(&response)));
    Ok(Outcome::Done(response))
}
