//! The `mailgun` channel: e-mail through Mailgun's HTTP API, and the events Mailgun reports
//! back (delivered, failed, complained, unsubscribed).
//!
//! Sending is a form-encoded `POST {api_base}/v3/{domain}/messages` with Basic auth `api:KEY`.
//! Mailgun takes no idempotency key; the message carries the same `Message-Id` on every
//! attempt (derived from the idempotency key, as over SMTP), so a duplicate after a crash is
//! recognisably the same message, and the outbox id rides along as a user variable.
//!
//! Event webhooks are signed in the body: `signature: {timestamp, token, signature}`, the
//! signature being the hex HMAC-SHA256 of `timestamp + token` with the webhook signing key.

pub mod config;
mod inbound;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use reqwest::{StatusCode, Url};

use super::http::{by_status, describe, endpoint, exchange, snippet, unanswered, url_setting};
use super::inbound::Receiver;
use super::{Channel, ChannelError, Delivered, DeliveryError, OutboundMessage, resolve_setting};
use crate::definitions::env::{EnvSource, Secret};
use config::MailgunConfig;

pub struct MailgunChannel {
    name: String,
    domain: String,
    api_key: Secret,
    from: Mailbox,
    signing_key: Option<Secret>,
    messages_url: Url,
    domain_url: Url,
    timeout: Duration,
    client: reqwest::Client,
}

impl MailgunChannel {
    /// Builds the channel from its herald.yaml entry, resolving `${env:...}` in every setting.
    pub(crate) fn from_config(
        name: &str,
        config: &MailgunConfig,
        env: &EnvSource,
    ) -> Result<Self, ChannelError> {
        let setting = |field: &str, value: &str| resolve_setting(env, name, field, field, value);
        let api_key = Secret::new(setting("api_key", &config.api_key)?);
        let domain = setting("domain", &config.domain)?;
        if domain.is_empty() || domain.contains(['/', '?', '#', ' ', '@']) {
            return Err(ChannelError::new(
                name,
                Some("domain"),
                format!("domain: `{domain}` is not a domain name (such as mg.example.com)"),
            ));
        }
        let from = super::smtp::sender(name, &setting("from", &config.from)?)?;
        let signing_key = config
            .webhook_signing_key
            .as_deref()
            .map(|k| setting("webhook_signing_key", k).map(Secret::new))
            .transpose()?;
        let base = url_setting(name, "api_base", &setting("api_base", &config.api_base)?)?;
        let timeout = config.timeout.as_std();
        Ok(MailgunChannel {
            name: name.to_owned(),
            messages_url: endpoint(name, &base, &format!("v3/{domain}/messages"))?,
            domain_url: endpoint(name, &base, &format!("v3/domains/{domain}"))?,
            domain,
            api_key,
            from,
            signing_key,
            timeout,
            client: super::http::client(name, timeout)?,
        })
    }

    /// The form for one message.
    fn form(&self, message: &OutboundMessage) -> Result<String, DeliveryError> {
        let from = match &message.from {
            Some(text) => super::smtp::parse_mailbox("sender", text)?,
            None => self.from.clone(),
        };
        let to = super::smtp::parse_mailbox("recipient", &message.to)?;
        let id = super::smtp::message_id(&message.idempotency_key, &from);
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("from", &from.to_string())
            .append_pair("to", &to.to_string())
            .append_pair("subject", message.subject.as_deref().unwrap_or_default())
            .append_pair(if message.html { "html" } else { "text" }, &message.body)
            .append_pair("h:Message-Id", &id)
            .append_pair("v:herald-message-id", &message.id);
        if message.html {
            form.append_pair("text", &super::email_text::from_html(&message.body));
        }
        for (name, value) in &message.headers {
            form.append_pair(&format!("h:{name}"), value);
        }
        Ok(form.finish())
    }
}

impl fmt::Debug for MailgunChannel {
    // By hand: the key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailgunChannel")
            .field("name", &self.name)
            .field("domain", &self.domain)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Channel for MailgunChannel {
    fn provider(&self) -> &'static str {
        "mailgun"
    }

    fn is_email(&self) -> bool {
        true
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Mailgun takes messages up to 25 MB.
    fn max_message_bytes(&self) -> usize {
        25 << 20
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivered, DeliveryError> {
        let form = self.form(message)?;
        let request = self
            .client
            .post(self.messages_url.clone())
            .basic_auth("api", Some(self.api_key.expose()))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form);
        let reply = exchange(request, "Mailgun", self.timeout)
            .await
            .map_err(unanswered)?;
        if reply.status.is_success() {
            return Ok(Delivered {
                provider_id: reply.json_str("/id").as_deref().map(bare_message_id),
            });
        }
        let message = explain(reply.status, &reply.body);
        Err(by_status(reply.status, message, reply.retry_after))
    }

    /// Reads the domain: proves the key and the domain, and says when the domain is not
    /// verified or is disabled, which is when Mailgun stops sending.
    async fn healthcheck(&self) -> Result<(), String> {
        let request = self
            .client
            .get(self.domain_url.clone())
            .basic_auth("api", Some(self.api_key.expose()));
        let reply = exchange(request, "Mailgun", self.timeout).await?;
        if !reply.status.is_success() {
            return Err(explain(reply.status, &reply.body));
        }
        match reply.json_str("/domain/state").as_deref() {
            None | Some("active") => Ok(()),
            Some(other) => Err(format!(
                "the Mailgun domain {} is {other}, not active",
                self.domain
            )),
        }
    }

    fn receiver(&self) -> Option<&dyn Receiver> {
        Some(self)
    }
}

/// A Message-ID without its angle brackets, as Mailgun's events give it.
fn bare_message_id(id: &str) -> String {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned()
}

fn explain(status: StatusCode, body: &[u8]) -> String {
    let said = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_owned));
    let mut text = match said {
        Some(message) => format!("Mailgun answered {}: {message}", status.as_u16()),
        None => format!("Mailgun answered {}{}", describe(status), snippet(body)),
    };
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        text.push_str(
            " (api_key is wrong, or the domain is in the other region: EU domains use \
             api_base https://api.eu.mailgun.net)",
        );
    }
    text
}
