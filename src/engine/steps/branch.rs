//! `if` and `switch`: choose a branch; the steps of the branch run next.

use serde_json::{Value, json};

use super::StepCx;
use crate::definitions::model::Expr;
use crate::engine::interpreter::{Outcome, StepError};

pub(super) fn execute_if(cx: StepCx<'_>, condition: &Expr) -> Result<Outcome, StepError> {
    let yes = cx.templates().is_true(condition.as_str(), cx.ctx())?;
    let branch = if yes { "then" } else { "else" };
    Ok(Outcome::Goto(cx.branch(branch), json!({"branch": branch})))
}

pub(super) fn execute_switch(cx: StepCx<'_>, on: &Expr) -> Result<Outcome, StepError> {
    let value = cx.templates().eval(on.as_str(), cx.ctx())?;
    let key = match &value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let case = key.as_ref().and_then(|k| {
        cx.node
            .branches
            .iter()
            .find(|(b, _)| b.strip_prefix("case:") == Some(k.as_str()))
    });
    let (chosen, target) = match case {
        Some((b, first)) => (b.trim_start_matches("case:").to_owned(), *first),
        None => ("default".to_owned(), cx.branch("default")),
    };
    Ok(Outcome::Goto(
        target,
        json!({"value": value, "case": chosen}),
    ))
}
