//! The `whatsapp` channel: text messages through Meta's WhatsApp Cloud API, and the messages
//! and delivery statuses Meta sends to the app's webhook.
//!
//! Sending is `POST {api_base}/{version}/{phone_number_id}/messages` with a Bearer token and
//! `{"messaging_product": "whatsapp", "to", "type": "text", "text": {"body"}}`. Meta answers
//! with the message's `wamid`, or `{"error": {"message", "code", "error_data": {"details"}}}`.
//! Free-form text reaches a person only within 24 hours of their last message; outside that
//! window Meta refuses it with 131047, which is permanent here and says so.

pub mod config;
mod inbound;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::json;

use super::http::{by_status, describe, endpoint, exchange, snippet, unanswered, url_setting};
use super::inbound::Receiver;
use super::{Channel, ChannelError, Delivered, DeliveryError, OutboundMessage, resolve_setting};
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
        super::within_chars(&message.body, MAX_TEXT_CHARS, "WhatsApp")?;
        let body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            // The Cloud API wants the number's digits; `+` and spaces are tolerated but not
            // documented, so they are left out.
            "to": message.to.chars().filter(char::is_ascii_digit).collect::<String>(),
            "type": "text",
            "text": { "preview_url": false, "body": message.body },
        });
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
        Err(classify(reply.status, &reply.body, reply.retry_after))
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
            Err(explain(reply.status, &reply.body))
        }
    }

    fn receiver(&self) -> Option<&dyn Receiver> {
        Some(self)
    }
}

/// Codes that mean "later": throughput (130429), too many to one person (131056), the
/// app's rate limits (4, 80007) and the service being unavailable (1, 2, 131000, 131016).
fn is_transient_code(code: u32) -> bool {
    matches!(code, 1 | 2 | 4 | 80007 | 130429 | 131000 | 131016 | 131056)
}

fn classify(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> DeliveryError {
    let code = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|e| e.error.code);
    let message = explain(status, body);
    if code.is_some_and(is_transient_code) {
        DeliveryError::Transient {
            message,
            retry_after,
        }
    } else {
        by_status(status, message, retry_after)
    }
}

fn explain(status: StatusCode, body: &[u8]) -> String {
    let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(body) else {
        return format!("{PROVIDER} answered {}{}", describe(status), snippet(body));
    };
    let mut text = format!("{PROVIDER} answered {}", status.as_u16());
    if let Some(code) = error.code {
        text.push_str(&format!(", error {code}"));
    }
    if let Some(message) = &error.message {
        text.push_str(&format!(": {message}"));
    }
    if let Some(details) = error.error_data.and_then(|d| d.details) {
        text.push_str(&format!(" ({details})"));
    }
    let meaning = match error.code {
        Some(131047) => Some(
            "more than 24 hours have passed since the person's last message: only an approved template can reach them now",
        ),
        Some(190) => Some("access_token has expired or is not valid"),
        Some(131030) => Some("a test number may only message the numbers added to it"),
        Some(131026) => Some("the number is not on WhatsApp, or cannot receive this message"),
        _ => None,
    };
    if let Some(meaning) = meaning {
        text.push_str(&format!("; {meaning}"));
    }
    text
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
                    None
                ),
                DeliveryError::Permanent { .. }
            )
        };
        assert!(permanent(131047, 400) && permanent(190, 401) && permanent(100, 400));
        assert!(!permanent(130429, 400) && !permanent(131056, 400) && !permanent(131000, 500));
        let text = explain(StatusCode::BAD_REQUEST, body(131047).as_bytes());
        assert!(
            text.contains("error 131047") && text.contains("24 hours"),
            "{text}"
        );
        assert!(text.contains("(d)"), "{text}");
    }
}
