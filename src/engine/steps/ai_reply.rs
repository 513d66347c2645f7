//! `ai_reply`: answers the person with a language model (an OpenAI-compatible
//! `/chat/completions`), shown the system prompt and the last turns of the conversation.
//!
//! Guardrails: a reply that contains a `never_say` phrase (compared without case or spacing)
//! or is longer than `max_chars` is sent back once to be rewritten; a rewrite that still
//! breaks one, a timeout or an error sends `fallback` instead. The person sees only what
//! passed; the step log keeps what did not, and the tokens used.

use serde_json::{Value, json};

use super::StepCx;
use super::conversation::{self, Session};
use super::http::{HttpStub, StubRequest};
use crate::definitions::model::conversation::AiReplyStep;
use crate::definitions::model::trigger::HttpMethod;
use crate::engine::interpreter::{Outcome, StepError};
use crate::engine::registry::AiProvider;

pub(super) async fn execute(mut cx: StepCx<'_>, a: &AiReplyStep) -> Result<Outcome, StepError> {
    let session = Session::of(&cx)?;
    let Some(provider) = cx.host.registry.ai.get(&a.provider).cloned() else {
        return Err(StepError::Permanent(format!(
            "ai provider `{}` is not configured in herald.yaml",
            a.provider
        )));
    };
    let system = cx.render(a.system.as_str())?;
    let fallback = cx.render(a.fallback.as_str())?;
    let mut messages = vec![json!({"role": "system", "content": system})];
    let turns = cx
        .run
        .ctx
        .pointer("/conversation/turns")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let skip = turns.len().saturating_sub(a.turns as usize);
    for t in &turns[skip..] {
        let role = if t["role"] == "user" {
            "user"
        } else {
            "assistant"
        };
        messages.push(json!({"role": role, "content": t["text"]}));
    }
    let mut usage = Usage::default();
    let mut drafts = Vec::new();
    let mut reason = None;
    let mut reply = None;
    for attempt in 0..2 {
        match complete(cx.host.http, cx.host.http_stub, &provider, &messages).await {
            Ok((text, used)) => {
                usage.add(&used);
                match broken_rule(&text, a) {
                    None => {
                        reply = Some(text);
                        break;
                    }
                    Some(rule) => {
                        tracing::info!(step = %cx.step().id, rule = %rule, attempt, "an AI reply broke a guardrail");
                        drafts.push(json!({"text": text, "broke": rule}));
                        messages.push(json!({"role": "assistant", "content": text}));
                        messages.push(json!({"role": "user", "content": format!(
                            "Rewrite your last reply so that it {rule}. Answer with the rewritten reply only."
                        )}));
                        reason = Some(format!("the reply {rule} was broken twice"));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(step = %cx.step().id, provider = %a.provider, error = %e, "the AI provider did not answer; saying the fallback");
                reason = Some(e);
                break;
            }
        }
    }
    let (text, source) = match reply {
        Some(t) => (t, "ai"),
        None => (fallback, "fallback"),
    };
    metrics::counter!("herald_ai_tokens_total", "provider" => a.provider.clone())
        .increment(usage.total);
    let message = conversation::reply(&mut cx, &session, text.clone(), None).await?;
    let out = json!({
        "text": text,
        "source": source,
        "reason": if source == "fallback" { json!(reason) } else { Value::Null },
        "drafts": drafts,
        "usage": usage.to_value(),
        "message": message,
    });
    let turn = conversation::turn("assistant", &text, &cx.step().id, cx.now);
    let ctx = cx.context_mut();
    conversation::record(ctx, vec![turn]);
    if let Some(c) = ctx.get_mut("conversation").and_then(Value::as_object_mut) {
        let total = c.entry("usage").or_insert_with(|| json!({}));
        for (k, v) in [
            ("prompt_tokens", usage.prompt),
            ("completion_tokens", usage.completion),
            ("total_tokens", usage.total),
        ] {
            let before = total.get(k).and_then(Value::as_u64).unwrap_or(0);
            total[k] = json!(before + v);
        }
    }
    Ok(Outcome::Done(out))
}

#[derive(Default)]
pub(super) struct Usage {
    prompt: u64,
    completion: u64,
    pub(super) total: u64,
}

impl Usage {
    pub(super) fn add(&mut self, v: &Value) {
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        self.prompt += n("prompt_tokens");
        self.completion += n("completion_tokens");
        self.total += n("total_tokens").max(n("prompt_tokens") + n("completion_tokens"));
    }

    pub(super) fn to_value(&self) -> Value {
        json!({"prompt_tokens": self.prompt, "completion_tokens": self.completion, "total_tokens": self.total})
    }
}

/// Text without case or spacing, for comparing phrases.
fn squeeze(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The guardrail a reply breaks, said as what a rewrite must do.
fn broken_rule(text: &str, a: &AiReplyStep) -> Option<String> {
    if text.trim().is_empty() {
        return Some("is not empty".into());
    }
    let squeezed = squeeze(text);
    if let Some(p) = a
        .never_say
        .iter()
        .find(|p| !squeeze(p).is_empty() && squeezed.contains(&squeeze(p)))
    {
        return Some(format!("does not say \"{p}\""));
    }
    if let Some(max) = a.max_chars
        && text.chars().count() > max as usize
    {
        return Some(format!("is at most {max} characters long"));
    }
    None
}

/// One chat completion: the reply's text and the usage the provider reported.
pub(super) async fn complete(
    http: &reqwest::Client,
    stub: Option<&dyn HttpStub>,
    p: &AiProvider,
    messages: &[Value],
) -> Result<(String, Value), String> {
    let url = format!("{}/chat/completions", p.base_url);
    let request = json!({"model": p.model, "messages": messages, "max_tokens": p.max_tokens});
    // Under `herald test`, the provider's answer is a canned HTTP answer, as an `http` step's.
    if let Some(stub) = stub {
        let answer = stub.answer(&StubRequest {
            method: HttpMethod::Post,
            url: url.clone(),
            headers: Vec::new(),
            body: Some(request),
        })?;
        let body: Value = serde_json::from_slice(&answer.body).map_err(|e| {
            format!(
                "{url} answered {} with a body that is not JSON: {e}",
                answer.status
            )
        })?;
        return completion(
            &url,
            reqwest::StatusCode::from_u16(answer.status)
                .unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR),
            &body,
        );
    }
    let mut req = http.post(&url).timeout(p.timeout).json(&request);
    if let Some(key) = &p.api_key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            format!("no answer from {url} within {}s", p.timeout.as_secs_f64())
        } else {
            format!("could not reach {url}: {e}")
        }
    })?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| format!("{url} answered {status} with a body that is not JSON: {e}"))?;
    completion(&url, status, &body)
}

/// The reply's text and usage in a provider's answer, or what is wrong with it.
fn completion(
    url: &str,
    status: reqwest::StatusCode,
    body: &Value,
) -> Result<(String, Value), String> {
    if !status.is_success() {
        let detail = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("no error message");
        return Err(format!("{url} answered {status}: {detail}"));
    }
    let text = body
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{url} answered without choices[0].message.content"))?;
    Ok((
        text.trim().to_owned(),
        body.get("usage").cloned().unwrap_or(Value::Null),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_say_ignores_case_and_spacing() {
        let a: AiReplyStep = serde_json::from_value(json!({
            "provider": "x", "system": "s", "fallback": "f",
            "never_say": ["bad credit"], "max_chars": 40
        }))
        .unwrap();
        assert!(broken_rule("With BAD\n  Credit we can help", &a).is_some());
        assert!(broken_rule("With badcredit we can help", &a).is_some());
        assert!(broken_rule("Any credit history is welcome", &a).is_none());
        assert!(broken_rule(&"x".repeat(41), &a).is_some());
    }
}
