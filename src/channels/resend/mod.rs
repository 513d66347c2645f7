//! The `resend` channel: e-mail through Resend's API, and the events Resend reports back.
//!
//! Sending is `POST {api_base}/emails` with a Bearer key and JSON, and the outbox's
//! idempotency key as `Idempotency-Key`: Resend keeps it for 24 hours, so a message re-sent
//! after a crash is not sent twice. Errors are `{"statusCode", "name", "message"}`.
//!
//! Events (`email.delivered`, `email.bounced`, ...) are signed with Standard Webhooks under
//! `svix-` header names, checked by the same verifier as webhook triggers.

pub mod config;
mod inbound;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::http::{by_status, describe, endpoint, exchange, snippet, unanswered, url_setting};
use super::inbound::Receiver;
use super::{Channel, ChannelError, Delivered, DeliveryError, OutboundMessage, resolve_setting};
use crate::definitions::env::{EnvSource, Secret};
use crate::triggers::webhook_auth::Verifier;
use config::ResendConfig;

/// Resend's limit on an idempotency key.
const MAX_KEY_CHARS: usize = 256;

pub struct ResendChannel {
    name: String,
    api_key: Secret,
    from: Mailbox,
    events: Option<Verifier>,
    emails_url: Url,
    domains_url: Url,
    timeout: Duration,
    client: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl ResendChannel {
    /// Builds the channel from its herald.yaml entry, resolving `${env:...}` in every setting.
    pub(crate) fn from_config(
        name: &str,
        config: &ResendConfig,
        env: &EnvSource,
    ) -> Result<Self, ChannelError> {
        let setting = |field: &str, value: &str| resolve_setting(env, name, field, field, value);
        let api_key = Secret::new(setting("api_key", &config.api_key)?);
        let from = super::smtp::sender(name, &setting("from", &config.from)?)?;
        let events = config
            .webhook_secret
            .as_deref()
            .map(|secret| {
                let auth = crate::definitions::model::trigger::WebhookAuth::StandardWebhooks(
                    crate::definitions::model::trigger::SignedAuth {
                        secret: secret.to_owned(),
                        tolerance: crate::definitions::model::Duration::from_secs(300),
                    },
                );
                Verifier::new(&auth, env).map_err(|e| {
                    ChannelError::new(name, Some("webhook_secret"), format!("webhook_secret: {e}"))
                })
            })
            .transpose()?;
        let base = url_setting(name, "api_base", &setting("api_base", &config.api_base)?)?;
        let timeout = config.timeout.as_std();
        Ok(ResendChannel {
            name: name.to_owned(),
            api_key,
            from,
            events,
            emails_url: endpoint(name, &base, "emails")?,
            domains_url: endpoint(name, &base, "domains")?,
            timeout,
            client: super::http::client(name, timeout)?,
        })
    }
}

impl fmt::Debug for ResendChannel {
    // By hand: the key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResendChannel")
            .field("name", &self.name)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

/// The idempotency key as Resend takes it: as it is when short enough, else its digest.
fn idempotency_key(key: &str) -> String {
    if key.chars().count() <= MAX_KEY_CHARS && key.is_ascii() {
        key.to_owned()
    } else {
        format!("sha256-{}", hex::encode(Sha256::digest(key.as_bytes())))
    }
}

#[async_trait]
impl Channel for ResendChannel {
    fn provider(&self) -> &'static str {
        "resend"
    }

    fn is_email(&self) -> bool {
        true
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Resend takes messages up to 40 MB, attachments included.
    fn max_message_bytes(&self) -> usize {
        40 << 20
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivered, DeliveryError> {
        let from = match &message.from {
            Some(text) => super::smtp::parse_mailbox("sender", text)?,
            None => self.from.clone(),
        };
        let to = super::smtp::parse_mailbox("recipient", &message.to)?;
        let mut body = json!({
            "from": from.to_string(),
            "to": [to.to_string()],
            "subject": message.subject.as_deref().unwrap_or_default(),
        });
        body[if message.html { "html" } else { "text" }] = message.body.clone().into();
        if message.html {
            body["text"] = super::email_text::from_html(&message.body).into();
        }
        if !message.headers.is_empty() {
            body["headers"] = json!(message.headers);
        }
        let request = self
            .client
            .post(self.emails_url.clone())
            .bearer_auth(self.api_key.expose())
            .header("idempotency-key", idempotency_key(&message.idempotency_key))
            .json(&body);
        let reply = exchange(request, "Resend", self.timeout)
            .await
            .map_err(unanswered)?;
        if reply.status.is_success() {
            return Ok(Delivered {
                provider_id: reply.json_str("/id"),
            });
        }
        let error = serde_json::from_slice::<ApiError>(&reply.body).ok();
        let message = explain(reply.status, error.as_ref(), &reply.body);
        // A request with the same key still in flight answers 409; the next attempt gets the
        // first one's outcome.
        if error.as_ref().and_then(|e| e.name.as_deref()) == Some("concurrent_idempotent_requests")
        {
            return Err(DeliveryError::Transient {
                message,
                retry_after: reply.retry_after,
            });
        }
        Err(by_status(reply.status, message, reply.retry_after))
    }

    /// Lists the domains: proves the key without sending. A sending-only key may not list
    /// them, and Resend says so with `restricted_api_key`, which proves the key as well.
    async fn healthcheck(&self) -> Result<(), String> {
        let request = self
            .client
            .get(self.domains_url.clone())
            .bearer_auth(self.api_key.expose());
        let reply = exchange(request, "Resend", self.timeout).await?;
        if reply.status.is_success() {
            return Ok(());
        }
        let error = serde_json::from_slice::<ApiError>(&reply.body).ok();
        if error.as_ref().and_then(|e| e.name.as_deref()) == Some("restricted_api_key") {
            return Ok(());
        }
        Err(explain(reply.status, error.as_ref(), &reply.body))
    }

    fn receiver(&self) -> Option<&dyn Receiver> {
        Some(self)
    }
}

fn explain(status: StatusCode, error: Option<&ApiError>, body: &[u8]) -> String {
    let Some(ApiError {
        name,
        message: Some(message),
    }) = error
    else {
        return format!("Resend answered {}{}", describe(status), snippet(body));
    };
    let mut text = format!("Resend answered {}", status.as_u16());
    if let Some(name) = name {
        text.push_str(&format!(" ({name})"));
    }
    text.push_str(&format!(": {message}"));
    let meaning = match name.as_deref() {
        Some("invalid_api_key" | "missing_api_key") => Some("api_key is wrong or was revoked"),
        Some("invalid_idempotent_request") => {
            Some("another message was sent with this idempotency key in the last 24 hours")
        }
        _ if message.contains("verify a domain") || message.contains("testing emails") => {
            Some("the sender's domain is not verified in Resend")
        }
        _ => None,
    };
    if let Some(meaning) = meaning {
        text.push_str(&format!(" ({meaning})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_idempotency_keys_are_digested() {
        assert_eq!(idempotency_key("run-1/welcome/0"), "run-1/welcome/0");
        let long = "k".repeat(300);
        let digested = idempotency_key(&long);
        assert!(
            digested.starts_with("sha256-") && digested.len() == 71,
            "{digested}"
        );
        assert_eq!(digested, idempotency_key(&long));
    }
}
