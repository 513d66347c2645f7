//! `send`: renders a message and queues it in the outbox; the dispatcher delivers it.

use serde_json::{Map, Value, json};

use super::StepCx;
use crate::channels::{ApprovedTemplate, ButtonKind, ButtonValue, TemplateValue};
use crate::definitions::model::step::{
    MessageCategory, SendStep, TemplateParameters, WhatsappTemplate,
};
use crate::engine::interpreter::{After, Outcome, StepError};
use crate::engine::{new_id, policy, retry, suppression};
use crate::store::NewOutbox;

pub(super) async fn execute(mut cx: StepCx<'_>, s: &SendStep) -> Result<Outcome, StepError> {
    if let Some(c) = cx.run.workflow.campaign.clone() {
        let unknown = |e: crate::store::StoreError| StepError::Transient {
            message: format!("could not read the campaign's state: {e}"),
            retry_after: None,
        };
        let known = cx
            .run
            .lookups
            .as_ref()
            .and_then(|l| l.campaign(&cx.run.workflow.id));
        let state = match known {
            Some(row) => row.cloned(),
            None => cx
                .host
                .store
                .campaign(&cx.run.workflow.id)
                .await
                .map_err(unknown)?,
        };
        if state.is_some_and(|r| r.state == crate::engine::campaign::PAUSED) {
            // A paused campaign's recipients hold before their next message and look again
            // in a while; the step is tried afresh then, so an edit made meanwhile applies.
            let until = cx.now + crate::engine::campaign::PAUSED_RECHECK_MS;
            return Ok(Outcome::Wait {
                wait: crate::engine::cursor::Wait::Retry { until },
                due_at: Some(until),
                event: None,
                note: json!({"campaign_paused": true, "retry_at": crate::engine::clock::rfc3339(until)}),
            });
        }
        let exited = crate::engine::campaign::exit::reason(
            cx.host.store,
            &c.exit_when,
            cx.run.ctx.get("contact"),
            cx.run.created_at,
        )
        .await
        .map_err(|e| StepError::Transient {
            message: format!("could not check the campaign's exit_when: {e}"),
            retry_after: None,
        })?;
        if let Some((exit, reason)) = exited {
            // The recipient leaves the campaign here: this message and every later step are
            // not made, and the step log says why (and how, for the campaign's counts).
            return Ok(Outcome::End(
                json!({"status": "exited", "exit": exit.name(), "reason": reason}),
            ));
        }
    }
    queue(&mut cx, s, None, None, None).await.map(Outcome::Done)
}

/// Queues the message `s` describes and gives the step's output. `text` is a body already
/// made (a conversation's reply, which is not a template), and `key` the effect's key when a
/// step queues more than one message.
pub(super) async fn queue(
    cx: &mut StepCx<'_>,
    s: &SendStep,
    text: Option<String>,
    key: Option<String>,
    to: Option<&str>,
) -> Result<Value, StepError> {
    let registry = cx.host.registry;
    if !registry.channels.contains_key(&s.channel) {
        return Err(StepError::Permanent(format!(
            "channel `{}` is not configured",
            s.channel
        )));
    }
    // A recipient given as is (a conversation's person) is never a template: an address is
    // not code, and each distinct one compiled would stay in the inline template cache.
    let to = match to {
        Some(t) => t.trim().to_owned(),
        None => cx.render(s.to.as_str())?.trim().to_owned(),
    };
    if to.is_empty() {
        return Err(StepError::Permanent("the recipient (`to`) is empty".into()));
    }
    let own = cx.run.ctx.get("contact").filter(|c| !c.is_null());
    let region = &registry.config.contacts.default_region;
    let unknown = |e: crate::store::StoreError| StepError::Transient {
        message: format!("could not check the recipient's status: {e}"),
        retry_after: None,
    };
    let kind = registry.channels[&s.channel].address_kind();
    let recipient = suppression::check(
        cx.host.store,
        cx.run.lookups.as_deref(),
        region,
        own,
        (&s.channel, kind),
        &to,
        s.category,
    )
    .await
    .map_err(unknown)?;
    if let Some(reason) = recipient.blocked {
        return Ok(suppressed(&to, &reason, s));
    }
    if let Some(reason) = over_cap(cx, s, &to).await.map_err(unknown)? {
        return Ok(suppressed(&to, &reason, s));
    }
    let held = policy::hold(
        registry,
        &s.channel,
        s.category,
        recipient.time_zone.as_deref(),
        cx.now,
    );
    // A campaign's send window holds the message as quiet hours do, whichever ends later.
    let held = match cx
        .run
        .workflow
        .campaign
        .as_ref()
        .and_then(|c| c.send_window.as_ref())
        .and_then(|w| {
            crate::engine::campaign::window::hold(w, recipient.time_zone.as_deref(), cx.now)
        }) {
        Some(w) if held.as_ref().is_none_or(|(q, _)| w.0 > *q) => Some(w),
        _ => held,
    };
    let approved_template = match &s.whatsapp_template {
        Some(t) => Some(whatsapp_template(cx, s, t)?),
        None => None,
    };
    let (body, html) = match (&approved_template, text) {
        (Some(t), _) => (t.describe(), false),
        (None, Some(text)) => (text, false),
        (None, None) => body(cx, s)?,
    };
    let mut headers = Map::new();
    for (k, v) in &s.headers {
        headers.insert(k.clone(), Value::String(cx.render(v.as_str())?));
    }
    if cx.run.workflow.campaign.is_some() {
        // Every campaign message says which campaign and step it is, for the recipient's
        // provider and for whoever reads a bounce.
        headers.insert("X-Herald-Campaign".into(), json!(cx.run.workflow.id));
        headers.insert("X-Herald-Step".into(), json!(cx.step().id));
    }
    let subject = cx.render_opt(&s.subject)?;
    let limit = registry
        .config
        .limits
        .message_size
        .map(|b| b.0 as usize)
        .or_else(|| {
            registry
                .channels
                .get(&s.channel)
                .map(|c| c.max_message_bytes())
        })
        .unwrap_or(1 << 20);
    let size = body.len() + subject.as_ref().map_or(0, String::len);
    if size > limit {
        return Err(StepError::Permanent(format!(
            "the rendered message is {size} bytes, over the limit of {limit} bytes for channel `{}` (limits.message_size in herald.yaml)",
            s.channel
        )));
    }
    let id = new_id();
    if s.category == MessageCategory::Marketing
        && registry.channels[&s.channel].is_email()
        && let Some(unsubscribe) = &registry.unsubscribe
        && !headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("List-Unsubscribe"))
    {
        for (name, value) in unsubscribe.headers(&s.channel, &to, &id) {
            headers.insert(name, Value::String(value));
        }
    }
    let step = cx.step();
    // The step's retry policy governs the delivery attempts: a send step only enqueues, so
    // the policy has nothing else to apply to.
    let max_attempts = step
        .retry
        .as_ref()
        .map(|r| r.max_attempts)
        .unwrap_or(retry::outbox_default().max_attempts);
    let message = NewOutbox {
        id: id.clone(),
        run_id: Some(cx.run.id.clone()),
        workflow_id: Some(cx.run.workflow.id.clone()),
        step_id: Some(step.id.clone()),
        channel: s.channel.clone(),
        recipient: to.clone(),
        sender: cx.render_opt(&s.from)?,
        subject,
        body,
        html,
        headers: Value::Object(headers),
        idempotency_key: key.unwrap_or_else(|| cx.effect_key()),
        max_attempts: i64::from(max_attempts),
        category: s.category,
        retry: step.retry.clone(),
        approved_template: approved_template
            .as_ref()
            .map(|t| serde_json::to_value(t).expect("a template's values always serialize")),
        created_at: cx.now,
        due_at: held.as_ref().map_or(cx.now, |(until, _)| *until),
    };
    let pending = &mut *cx.pending;
    pending.outbox.push(message);
    pending.after.push(After::Outbox);
    let mut out = json!({"message_id": id, "channel": s.channel, "to": to, "status": "queued"});
    if let Some((until, reason)) = held {
        out["status"] = json!("held");
        out["until"] = json!(crate::engine::clock::rfc3339(until));
        out["reason"] = json!(reason);
    }
    Ok(out)
}

fn suppressed(to: &str, reason: &str, s: &SendStep) -> Value {
    json!({"status": "suppressed", "to": to, "reason": reason, "category": s.category})
}

/// Why a `marketing` message would break the channel's frequency cap, if it would: what the
/// recipient was sent on the channel within the window, with what this segment has queued.
async fn over_cap(
    cx: &StepCx<'_>,
    s: &SendStep,
    to: &str,
) -> Result<Option<String>, crate::store::StoreError> {
    if s.category != MessageCategory::Marketing {
        return Ok(None);
    }
    let Some(cap) = policy::frequency_cap(cx.host.registry, &s.channel) else {
        return Ok(None);
    };
    let since = cx.now - cap.per.as_millis_i64();
    let queued = cx
        .pending
        .outbox
        .iter()
        .filter(|m| m.channel == s.channel && m.recipient == to && m.category == s.category)
        .count() as i64;
    let sent = cx
        .host
        .store
        .count_recent_messages(&s.channel, to, s.category.as_str(), since)
        .await?;
    let n = sent + queued;
    Ok((n >= i64::from(cap.messages)).then(|| {
        format!(
            "frequency cap on channel `{}`: `{to}` already has {n} marketing messages in the last {} (the cap is {})",
            s.channel, cap.per, cap.messages
        )
    }))
}

/// The WhatsApp template with its values rendered for this recipient. Meta refuses a name or
/// language code it could not have approved, and an empty value, with errors that do not say
/// which value; they fail here, saying which.
fn whatsapp_template(
    cx: &StepCx<'_>,
    s: &SendStep,
    t: &WhatsappTemplate,
) -> Result<ApprovedTemplate, StepError> {
    let channel = &s.channel;
    let provider = cx
        .host
        .registry
        .channels
        .get(channel)
        .map(|c| (c.provider(), c.sends_approved_templates()));
    if let Some((provider, false)) = provider {
        return Err(StepError::Permanent(format!(
            "`whatsapp_template` needs a whatsapp channel; `{channel}` is a {provider} channel"
        )));
    }
    let name = cx.render(t.name.as_str())?.trim().to_owned();
    if !WhatsappTemplate::is_name(&name) {
        return Err(StepError::Permanent(format!(
            "`{name}` is not a WhatsApp template name (lower-case letters, digits and underscores, as approved in WhatsApp Manager)"
        )));
    }
    let language = cx.render(t.language.as_str())?.trim().to_owned();
    if !WhatsappTemplate::is_language_code(&language) {
        return Err(StepError::Permanent(format!(
            "`{language}` is not a WhatsApp language code, such as `en_US` or `es` (template `{name}`)"
        )));
    }
    let values = |part: &str, params: &Option<TemplateParameters>| {
        let Some(params) = params else {
            return Ok(Vec::new());
        };
        params
            .entries()
            .into_iter()
            .enumerate()
            .map(|(i, (key, value))| {
                let text = cx.render(value.as_str())?;
                if text.trim().is_empty() {
                    let which = key.map_or_else(|| format!("{}", i + 1), |k| format!("`{k}`"));
                    return Err(StepError::Permanent(format!(
                        "the {part} value {which} of template `{name}` is empty, and WhatsApp refuses empty values; give it a fallback, such as `{{{{ contact.first_name | default('there') }}}}`"
                    )));
                }
                Ok(TemplateValue {
                    name: key.map(str::to_owned),
                    text,
                })
            })
            .collect::<Result<Vec<_>, StepError>>()
    };
    let header = values("header", &t.header)?;
    let body = values("body", &t.body)?;
    let mut buttons = Vec::with_capacity(t.buttons.len());
    for (i, b) in t.buttons.iter().enumerate() {
        let (kind, value) = match (&b.url, &b.payload) {
            (Some(url), _) => (ButtonKind::Url, url),
            (None, Some(payload)) => (ButtonKind::QuickReply, payload),
            (None, None) => {
                return Err(StepError::Permanent(format!(
                    "button {i} of template `{name}` has neither `url` nor `payload`"
                )));
            }
        };
        let text = cx.render(value.as_str())?;
        if text.trim().is_empty() {
            return Err(StepError::Permanent(format!(
                "the value of button {i} of template `{name}` is empty, and WhatsApp refuses empty values"
            )));
        }
        buttons.push(ButtonValue {
            index: b.index.unwrap_or(u8::try_from(i).unwrap_or(u8::MAX)),
            kind,
            text,
        });
    }
    Ok(ApprovedTemplate {
        name,
        language,
        header,
        body,
        buttons,
    })
}

/// The message's body, and whether it is HTML: a template file (HTML by its name) or an
/// inline `body`.
fn body(cx: &StepCx<'_>, s: &SendStep) -> Result<(String, bool), StepError> {
    let t = cx.templates();
    match (&s.template, &s.body) {
        (Some(name), _) => {
            // A name may be chosen at run time: `emails/{{ vars.kind }}.html.j2`.
            let name = if name.contains("{{") {
                let chosen = cx.render(name)?.trim().to_owned();
                if !t.contains(&chosen) {
                    let hint = crate::definitions::suggest::did_you_mean(
                        &chosen,
                        t.names().iter().map(String::as_str),
                    )
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                    return Err(StepError::Permanent(format!(
                        "template `{chosen}` (from `{name}`) does not exist under templates/{hint}"
                    )));
                }
                chosen
            } else {
                name.clone()
            };
            let name = name.as_str();
            let body = t.render_in(name, cx.ctx())?;
            let base = name
                .strip_suffix(".j2")
                .or_else(|| name.strip_suffix(".jinja"))
                .unwrap_or(name);
            Ok((body, base.ends_with(".html") || base.ends_with(".htm")))
        }
        (None, Some(b)) => Ok((cx.render(b.as_str())?, false)),
        (None, None) => Err(StepError::Permanent(
            "`send` needs a `template` or a `body`".into(),
        )),
    }
}
