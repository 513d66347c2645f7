//! `for_each`: runs its steps once per item. The loop's position is a frame on the cursor, so
//! a run resumed in the middle of a loop carries on at the item it was at.

use serde_json::{Value, json};

use super::StepCx;
use crate::definitions::model::Expr;
use crate::definitions::model::common::Ident;
use crate::engine::cursor::LoopFrame;
use crate::engine::interpreter::{Outcome, StepError};

pub(super) fn execute(cx: StepCx<'_>, items: &Expr, as_: &Ident) -> Result<Outcome, StepError> {
    let body = cx.branch("body");
    let step = cx.step();
    if let Some(frame) = cx.run.cursor.frames.last_mut()
        && frame.step == step.id
    {
        frame.index += 1;
        if frame.index < frame.items.len() {
            return Ok(Outcome::Goto(body, Value::Null));
        }
        let count = frame.items.len();
        cx.run.cursor.frames.pop();
        return Ok(Outcome::Goto(None, json!({"count": count})));
    }
    let list = match cx.templates().eval(items.as_str(), cx.ctx())? {
        Value::Array(list) => list,
        Value::Null => Vec::new(),
        other => {
            return Err(StepError::Permanent(format!(
                "for_each.items must be a list, but `{}` gave {}",
                items.as_str(),
                crate::definitions::schema::describe_value(&other)
            )));
        }
    };
    if list.is_empty() || body.is_none() {
        return Ok(Outcome::Goto(None, json!({"count": 0})));
    }
    cx.run.cursor.frames.push(LoopFrame {
        step: step.id.clone(),
        index: 0,
        items: list,
        var: as_.0.clone(),
    });
    Ok(Outcome::Goto(body, Value::Null))
}
