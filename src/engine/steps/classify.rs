//! `classify`: the intent of a text, by keywords (whole words, any case) or a pattern, the
//! first intent that matches winning; then, if none did and `ai` is set, by a language model
//! whose answer counts only when it names one of the intents; else the fallback.

use serde_json::{Value, json};

use super::StepCx;
use super::ai_reply::{Usage, complete};
use super::slots::{contains_words, normalize};
use crate::definitions::model::conversation::{ClassifyAi, ClassifyStep};
use crate::engine::interpreter::{Outcome, StepError};

pub(super) async fn execute(mut cx: StepCx<'_>, c: &ClassifyStep) -> Result<Outcome, StepError> {
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
    let mut out = json!({"text": text});
    let mut chosen = by_rules(c, &text)?;
    if chosen.is_some() {
        out["source"] = json!("keywords");
    }
    if chosen.is_none()
        && let Some(ai) = &c.ai
    {
        let (intent, usage, reason) = by_model(&mut cx, c, ai, &text).await?;
        out["usage"] = usage.to_value();
        metrics::counter!("herald_ai_tokens_total", "provider" => ai.provider.clone())
            .increment(usage.total);
        match intent {
            Some(name) => {
                out["source"] = json!("ai");
                chosen = Some(name);
            }
            None => out["reason"] = json!(reason),
        }
    }
    let (intent, goto) = match chosen {
        Some(name) => {
            let goto = c
                .intents
                .iter()
                .find(|(n, _)| n.0 == name)
                .and_then(|(_, i)| i.goto.as_ref());
            (name, goto)
        }
        None => {
            out["source"] = json!("fallback");
            (c.fallback.clone(), c.fallback_goto.as_ref())
        }
    };
    out["intent"] = json!(intent);
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

/// The first intent whose keywords or pattern match.
fn by_rules(c: &ClassifyStep, text: &str) -> Result<Option<String>, StepError> {
    let n = normalize(text);
    for (name, intent) in &c.intents {
        let by_word = intent.keywords.iter().any(|k| {
            let k = normalize(k);
            !k.is_empty() && (n == k || contains_words(&n, &k))
        });
        let by_pattern = match &intent.pattern {
            Some(p) => regex::Regex::new(p)
                .map_err(|e| StepError::Permanent(format!("intent `{name}`: {e}")))?
                .is_match(text),
            None => false,
        };
        if by_word || by_pattern {
            return Ok(Some(name.0.clone()));
        }
    }
    Ok(None)
}

/// The intent a model chose, if it named one; the tokens it used; and, when it did not, why.
async fn by_model(
    cx: &mut StepCx<'_>,
    c: &ClassifyStep,
    ai: &ClassifyAi,
    text: &str,
) -> Result<(Option<String>, Usage, String), StepError> {
    let Some(provider) = cx.host.registry.ai.get(&ai.provider).cloned() else {
        return Err(StepError::Permanent(format!(
            "ai provider `{}` is not configured in herald.yaml",
            ai.provider
        )));
    };
    let mut system = String::from(
        "Classify the user's message. Answer with exactly one of these labels and nothing else:\n",
    );
    for (name, intent) in &c.intents {
        match &intent.description {
            Some(d) => system.push_str(&format!("- {name}: {d}\n")),
            None => system.push_str(&format!("- {name}\n")),
        }
    }
    system.push_str(&format!("- {}: none of the above\n", c.fallback));
    if let Some(extra) = &ai.instructions {
        system.push('\n');
        system.push_str(&cx.render(extra.as_str())?);
    }
    let messages = [
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": text}),
    ];
    let mut usage = Usage::default();
    match complete(cx.host.http, cx.host.http_stub, &provider, &messages).await {
        Ok((answer, used)) => {
            usage.add(&used);
            let label = answer
                .trim()
                .trim_matches(|ch: char| !ch.is_alphanumeric() && ch != '_' && ch != '-')
                .to_lowercase();
            let named = c
                .intents
                .keys()
                .find(|k| k.0.to_lowercase() == label)
                .map(|k| k.0.clone());
            let reason = if named.is_some() {
                String::new()
            } else if label == c.fallback.to_lowercase() {
                "the model chose the fallback".to_owned()
            } else {
                tracing::info!(step = %cx.step().id, answer = %answer, "the model's answer is not one of the intents; using the fallback");
                format!("the model answered `{answer}`, which is not one of the intents")
            };
            Ok((named, usage, reason))
        }
        Err(e) => {
            tracing::warn!(step = %cx.step().id, provider = %ai.provider, error = %e, "the AI provider did not answer; using the fallback");
            Ok((None, usage, e))
        }
    }
}
