//! The `whatsapp` channel: text messages through Meta's WhatsApp Cloud API, and the messages
//! and delivery statuses Meta sends to the app's webhook.
//!
//! Sending is `POST {api_base}/{version}/{phone_number_id}/messages` with a Bearer token and
//! `{"messaging_product": "whatsapp", "to", "type": "text", "text": {"body"}}`. Meta answers
//! with the message's `wamid`, or `{"error": {"message", "code", "error_data": {"details"}}}`.
//! Free-form text reaches a person only within 24 hours of their last message; outside that
//! window Meta refuses it with 131047, which is permanent here and says so. What reaches them
//! then is a template approved in WhatsApp Manager: `"type": "template"` with its name, its
//! language and the values of its variables (`components`), which Meta refuses when the name,
//! the language or the number of values does not match what it approved (132001, 132000).

pub mod config;
mod inbound;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{by_status, describe, endpoint, exchange, snippet, unanswered, url_setting};
use super::inbound::Receiver;
use super::{
    ApprovedTemplate, ButtonKind, Channel, ChannelError, Delivered, DeliveryError, OutboundMessage,
    TemplateValue, resolve_setting,
};
use crate::definitions::env::{EnvSource, Secret};
use config::WhatsappConfig;

const PROVIDER: &str = "the WhatsApp Cloud API";

/// The longest text body the Cloud API takes, in characters.
const MAX_TEXT_CHARS: usize = 4096;

pub struct WhatsappChannel {
    name: String,
    access_token: Secret,
    app_secret: Option<Secret>,
    verify_token: Option<Secret>,
    messages_url: Url,
    number_url: Url,
    timeout: Duration,
    client: reqwest::Client,
}

/// The Graph API's error body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: GraphError,
}

#[derive(Debug, Deserialize)]
struct GraphError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<u32>,
    #[serde(default)]
    error_data: Option<ErrorData>,
}

#[derive(Debug, Deserialize)]
struct ErrorData {
    #[serde(default)]
    details: Option<String>,
}

impl WhatsappChannel {
    /// Builds the channel from its herald.yaml entry, resolving `${env:...}` in every setting.
    pub(crate) fn from_config(
        name: &str,
        config: &WhatsappConfig,
        env: &EnvSource,
    ) -> Result<Self, ChannelError> {
        let setting = |field: &str, value: &str| resolve_setting(env, name, field, field, value);
        let optional = |field: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| setting(field, v).map(Secret::new))
                .transpose()
        };
        let access_token = Secret::new(setting("access_token", &config.access_token)?);
        let phone_number_id = setting("phone_number_id", &config.phone_number_id)?;
        if phone_number_id.is_empty() || !phone_number_id.chars().all(|c| c.is_ascii_digit()) {
            return Err(ChannelError::new(
                name,
                Some("phone_number_id"),
                format!(
                    "phone_number_id: `{phone_number_id}` is not a phone number id; it is the \
                     numeric id WhatsApp Manager shows under the number, not the number itself"
                ),
            ));
        }
        let version = setting("api_version", &config.api_version)?;
        let base = url_setting(name, "api_base", &setting("api_base", &config.api_base)?)?;
        let timeout = config.timeout.as_std();
        Ok(WhatsappChannel {
            name: name.to_owned(),
            access_token,
            app_secret: optional("app_secret", &config.app_secret)?,
            verify_token: optional("verify_token", &config.verify_token)?,
            messages_url: endpoint(
                name,
                &base,
                &format!("{version}/{phone_number_id}/messages"),
            )?,
            number_url: endpoint(
                name,
                &base,
                &format!("{version}/{phone_number_id}?fields=display_phone_number"),
            )?,
            timeout,
            client: super::http::client(name, timeout)?,
        })
    }
}

impl fmt::Debug for WhatsappChannel {
    // By hand: the secrets stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WhatsappChannel")
            .field("name", &self.name)
            .field("messages_url", &self.messages_url.as_str())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Channel for WhatsappChannel {
    fn provider(&self) -> &'static str {
        "whatsapp"
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn max_message_bytes(&self) -> usize {
        MAX_TEXT_CHARS * 4
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivered, DeliveryError> {
        // The Cloud API wants the number's digits; `+` and spaces are tolerated but not
        // documented, so they are left out.
        let to: String = message.to.chars().filter(char::is_ascii_digit).collect();
        let template = message.approved_template.as_ref();
        let body = match template {
            Some(t) => template_message(&to, t),
            None => {
                super::within_chars(&message.body, MAX_TEXT_CHARS, "WhatsApp")?;
                json!({
                    "messaging_product": "whatsapp",
                    "recipient_type": "individual",
                    "to": to,
                    "type": "text",
                    "text": { "preview_url": false, "body": message.body },
                })
            }
        };
        let request = self
            .client
            .post(self.messages_url.clone())
            .bearer_auth(self.access_token.expose())
            .json(&body);
        let reply = exchange(request, PROVIDER, self.timeout)
            .await
            .map_err(unanswered)?;
        if reply.status.is_success() {
            return Ok(Delivered {
                provider_id: reply.json_str("/messages/0/id"),
            });
        }
        Err(classify(
            reply.status,
            &reply.body,
            reply.retry_after,
            template,
        ))
    }

    /// Reads the sending number: proves the token and the number id without sending.
    async fn healthcheck(&self) -> Result<(), String> {
        let request = self
            .client
            .get(self.number_url.clone())
            .bearer_auth(self.access_token.expose());
        let reply = exchange(request, PROVIDER, self.timeout).await?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(explain(reply.status, &reply.body, None))
        }
    }

    fn receiver(&self) -> Option<&dyn Receiver> {
        Some(self)
    }

    fn sends_approved_templates(&self) -> bool {
        true
    }
}

/// The Cloud API's template message: the name, the language, and a component per part that
/// has values (header and body text parameters, one per dynamic button).
fn template_message(to: &str, t: &ApprovedTemplate) -> Value {
    let text = |v: &TemplateValue| match &v.name {
        Some(name) => json!({"type": "text", "parameter_name": name, "text": v.text}),
        None => json!({"type": "text", "text": v.text}),
    };
    let mut components = Vec::new();
    for (part, values) in [("header", &t.header), ("body", &t.body)] {
        if !values.is_empty() {
            components.push(json!({
                "type": part,
                "parameters": values.iter().map(text).collect::<Vec<_>>(),
            }));
        }
    }
    for b in &t.buttons {
        let (sub_type, parameter) = match b.kind {
            ButtonKind::Url => ("url", json!({"type": "text", "text": b.text})),
            ButtonKind::QuickReply => {
                ("quick_reply", json!({"type": "payload", "payload": b.text}))
            }
        };
        components.push(json!({
            "type": "button",
            "sub_type": sub_type,
            "index": b.index.to_string(),
            "parameters": [parameter],
        }));
    }
    let mut template = json!({"name": t.name, "language": {"code": t.language}});
    if !components.is_empty() {
        template["components"] = Value::Array(components);
    }
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        "template": template,
    })
}

/// Codes that mean "later": throughput (130429), too many to one person (131056), the
/// app's rate limits (4, 80007) and the service being unavailable (1, 2, 131000, 131016).
fn is_transient_code(code: u32) -> bool {
    matches!(code, 1 | 2 | 4 | 80007 | 130429 | 131000 | 131016 | 131056)
}

fn classify(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
    template: Option<&ApprovedTemplate>,
) -> DeliveryError {
    let code = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|e| e.error.code);
    let message = explain(status, body, template);
    if code.is_some_and(is_transient_code) {
        DeliveryError::Transient {
            message,
            retry_after,
        }
    } else {
        by_status(status, message, retry_after)
    }
}

/// Meta's error in words, with what its code means for the operator; `template` is the
/// template the refused message was, which Meta's template errors do not name.
fn explain(status: StatusCode, body: &[u8], template: Option<&ApprovedTemplate>) -> String {
    let sent = template
        .map(|t| format!(" to template `{}` ({})", t.name, t.language))
        .unwrap_or_default();
    let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(body) else {
        return format!(
            "{PROVIDER} answered {}{sent}{}",
            describe(status),
            snippet(body)
        );
    };
    let mut text = format!("{PROVIDER} answered {}{sent}", status.as_u16());
    if let Some(code) = error.code {
        text.push_str(&format!(", error {code}"));
    }
    if let Some(message) = &error.message {
        text.push_str(&format!(": {message}"));
    }
    if let Some(details) = error.error_data.and_then(|d| d.details) {
        text.push_str(&format!(" ({details})"));
    }
    let meaning = match (error.code, template) {
        (Some(131047), _) => Some(
            "more than 24 hours have passed since the person's last message: only an approved template can reach them now (`whatsapp_template` in the send step)"
                .to_owned(),
        ),
        (Some(190), _) => Some("access_token has expired or is not valid".to_owned()),
        (Some(131030), _) => {
            Some("a test number may only message the numbers added to it".to_owned())
        }
        (Some(131026), _) => {
            Some("the number is not on WhatsApp, or cannot receive this message".to_owned())
        }
        (Some(code), Some(t)) => template_meaning(code, t),
        _ => None,
    };
    if let Some(meaning) = meaning {
        text.push_str(&format!("; {meaning}"));
    }
    text
}

/// What Meta's template errors mean, said about the template that was sent.
fn template_meaning(code: u32, t: &ApprovedTemplate) -> Option<String> {
    let name = &t.name;
    let language = &t.language;
    Some(match code {
        132001 => format!(
            "no template `{name}` is approved in language `{language}` for this business account; check the name and the language code in WhatsApp Manager (Message templates)"
        ),
        132000 => format!(
            "the values given ({} in the header, {} in the body) are not as many as template `{name}` has variables; give one value per variable in `whatsapp_template`",
            t.header.len(),
            t.body.len()
        ),
        132012 => format!(
            "a value does not have the format template `{name}` expects for its variable (named variables need a mapping, positional ones a list)"
        ),
        132005 => format!("template `{name}` is too long once its values are filled in"),
        132007 => format!("a value breaks WhatsApp's content policy for template `{name}`"),
        132015 => format!(
            "template `{name}` is paused for low quality; edit it in WhatsApp Manager, or wait until Meta unpauses it"
        ),
        132016 => format!(
            "template `{name}` is disabled for low quality; it cannot be sent any more, approve a new one"
        ),
        131008 => format!("template `{name}` needs a value that was not given"),
        131009 => format!("a value given to template `{name}` is not valid (an empty text?)"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_decide_whether_to_retry_and_the_24_hour_rule_is_explained() {
        let body = |code: u32| {
            format!(
                r#"{{"error":{{"message":"(#{code}) m","type":"OAuthException","code":{code},"error_data":{{"messaging_product":"whatsapp","details":"d"}},"fbtrace_id":"A"}}}}"#
            )
        };
        let permanent = |code: u32, status: u16| {
            matches!(
                classify(
                    StatusCode::from_u16(status).unwrap(),
                    body(code).as_bytes(),
                    None,
                    None
                ),
                DeliveryError::Permanent { .. }
            )
        };
        assert!(permanent(131047, 400) && permanent(190, 401) && permanent(100, 400));
        assert!(!permanent(130429, 400) && !permanent(131056, 400) && !permanent(131000, 500));
        let text = explain(StatusCode::BAD_REQUEST, body(131047).as_bytes(), None);
        assert!(
            text.contains("error 131047") && text.contains("24 hours"),
            "{text}"
        );
        assert!(text.contains("(d)"), "{text}");
    }
}
