//! `classify`: the intent of a text, by keywords (whole words, any case) or a pattern, the
//! first intent that matches winning; the fallback when none does.

use serde_json::{Value, json};

use super::StepCx;
use super::slots::{contains_words, normalize};
use crate::definitions::model::conversation::ClassifyStep;
use crate::engine::interpreter::{Outcome, StepError};

pub(super) fn execute(cx: StepCx<'_>, c: &ClassifyStep) -> Result<Outcome, StepError> {
    let text = match &c.text {
        Some(t) => cx.render(t.as_str())?,
        None => cx
            .run
            .ctx
            .pointer("/conversation/last")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    };
    let n = normalize(&text);
    let mut chosen = None;
    for (name, intent) in &c.intents {
        let by_word = intent.keywords.iter().any(|k| {
            let k = normalize(k);
            !k.is_empty() && (n == k || contains_words(&n, &k))
        });
        let by_pattern = match &intent.pattern {
            Some(p) => regex::Regex::new(p)
                .map_err(|e| StepError::Permanent(format!("intent `{name}`: {e}")))?
                .is_match(&text),
            None => false,
        };
        if by_word || by_pattern {
            chosen = Some((name.0.clone(), intent.goto.as_ref()));
            break;
        }
    }
    let (intent, goto) = chosen.unwrap_or_else(|| (c.fallback.clone(), c.fallback_goto.as_ref()));
    let out = json!({"intent": intent, "text": text});
    match goto {
        Some(target) => {
            let Some((idx, _)) = cx.run.workflow.program.node(target.as_str()) else {
                return Err(StepError::Permanent(format!(
                    "no step `{target}` to go to in this version of `{}`",
                    cx.run.workflow.id
                )));
            };
            cx.run.cursor.frames.clear();
            Ok(Outcome::Goto(Some(idx), out))
        }
        None => Ok(Outcome::Done(out)),
    }
}
