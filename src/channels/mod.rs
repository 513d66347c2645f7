//! Delivery channels: where an outbox message goes. One folder per provider, behind
//! [`Channel`], holding its settings (`config.rs`, part of `herald.yaml`'s schema) and its
//! delivery. A new provider is a new folder, a variant of [`config::ChannelConfig`], and one
//! line in [`build`].
//!
//! A channel only delivers. Rendering, the outbox, retries and their schedule live in the
//! engine: a channel's job is to attempt one delivery and say whether a failure is worth
//! retrying ([`DeliveryError::Transient`]) or not ([`DeliveryError::Permanent`]).
//!
//! A provider that receives as well as sends (a person's reply, a delivery report) implements
//! [`inbound::Receiver`]: it verifies the provider's signature and reads the request into one
//! shape for every provider. Each channel also says whether its provider can be reached
//! ([`Channel::healthcheck`]); [`health::Board`] keeps the answers for `/health`.
//!
//! Every message carries an idempotency key that is the same on every attempt. Providers that
//! accept one receive it (the `webhook` channel sends it as `Idempotency-Key`); SMTP gets a
//! Message-ID derived from it, so a re-sent e-mail is recognisably the same message.

pub mod config;
pub mod email_text;
pub mod health;
pub(crate) mod http;
pub mod inbound;
pub mod log;
pub mod mailgun;
pub mod policy;
pub mod resend;
pub mod smtp;
pub mod telegram;
pub mod twilio_sms;
pub mod webchat;
pub mod webhook;
pub mod whatsapp;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use indexmap::IndexMap;

use crate::definitions::env::EnvSource;
use crate::definitions::model::config::ConfigDef;
use crate::definitions::semantic::BUILTIN_CHANNEL;
use config::ChannelConfig;

/// A rendered message, ready to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    /// The outbox row's id.
    pub id: String,
    /// Stable across attempts and crashes: derived from (run, step, loop position).
    pub idempotency_key: String,
    /// The channel's name in herald.yaml.
    pub channel: String,
    pub to: String,
    /// Overrides the channel's default sender.
    pub from: Option<String>,
    pub subject: Option<String>,
    pub body: String,
    /// True when `body` is HTML (its template's name ends in .html).
    pub html: bool,
    pub headers: IndexMap<String, String>,
    /// Where the message came from, for providers that keep metadata.
    pub run_id: Option<String>,
    pub workflow_id: Option<String>,
    pub step_id: Option<String>,
    /// A template the provider approved, to send instead of `body` (which then only describes
    /// the message for people reading the outbox). Only channels whose
    /// [`Channel::sends_approved_templates`] is true take one.
    pub approved_template: Option<ApprovedTemplate>,
}

/// A message template the provider approved in advance, sent by name with its variables
/// filled in for one recipient (WhatsApp's message templates). Kept in the outbox as JSON, so
/// its shape only grows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApprovedTemplate {
    pub name: String,
    /// The code of the approved language (`en_US`).
    pub language: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header: Vec<TemplateValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub body: Vec<TemplateValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<ButtonValue>,
}

/// One variable's value; `name` for a named variable, `None` for a positional one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TemplateValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub text: String,
}

/// The value of one dynamic button of a template.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ButtonValue {
    /// The button's place in the approved template, from 0.
    pub index: u8,
    pub kind: ButtonKind,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ButtonKind {
    /// `text` completes the button's approved URL.
    Url,
    /// `text` is the payload a press sends back.
    QuickReply,
}

impl ApprovedTemplate {
    /// What the message is, in words, for the outbox's `body` and the log: the template's
    /// name and language, then its values.
    pub fn describe(&self) -> String {
        let values: Vec<&str> = self
            .header
            .iter()
            .chain(&self.body)
            .map(|v| v.text.as_str())
            .chain(self.buttons.iter().map(|b| b.text.as_str()))
            .collect();
        let mut text = format!("[template {} ({})]", self.name, self.language);
        if !values.is_empty() {
            text.push(' ');
            text.push_str(&values.join(" | "));
        }
        text
    }
}

/// A delivery that the provider accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The provider's id for the message, when it gives one.
    pub provider_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying: a network error, a timeout, a 5xx, a 429, a 4xx SMTP reply.
    #[error("{message}")]
    Transient {
        message: String,
        /// When the provider said when to come back (Retry-After).
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help: a rejected recipient, a 4xx API error, a 5xx SMTP reply.
    #[error("{message}")]
    Permanent { message: String },
    /// Retrying cannot help, and nothing else should be tried either: the provider says the
    /// recipient cannot be reached on this channel any more (they replied STOP to the number
    /// itself, or blocked the bot). The address is suppressed on the channel for `reason`
    /// (`unsubscribed`, `bounced` or `complained`).
    #[error("{message}")]
    Unreachable {
        message: String,
        reason: &'static str,
    },
}

#[cfg(test)]
impl DeliveryError {
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self,
            DeliveryError::Permanent { .. } | DeliveryError::Unreachable { .. }
        )
    }
}

#[async_trait]
pub trait Channel: Send + Sync + std::fmt::Debug {
    /// The provider's name, as in herald.yaml (`log`, `smtp`, `webhook`).
    fn provider(&self) -> &'static str;

    /// Attempts one delivery.
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivered, DeliveryError>;

    /// The longest one delivery can take. The outbox claims a message for a little longer,
    /// so a dispatcher that died mid-delivery is replaced soon after.
    fn timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// The largest message (body and subject, in bytes) this channel takes, unless
    /// `limits.message_size` says otherwise.
    fn max_message_bytes(&self) -> usize {
        1 << 20
    }

    /// Whether the provider can be reached with these settings, without sending anything: an
    /// SMTP relay accepts the login and answers `NOOP`, an HTTP endpoint accepts a
    /// connection. The error says what failed, for `/health` and the log.
    async fn healthcheck(&self) -> Result<(), String> {
        Ok(())
    }

    /// What this channel's addresses are: whether a person writing on it can be matched to a
    /// contact by phone number or e-mail.
    fn address_kind(&self) -> AddressKind {
        AddressKind::PhoneOrEmail
    }

    /// Whether the channel sends e-mail, whose marketing messages carry one-click unsubscribe
    /// headers (`compliance.unsubscribe`).
    fn is_email(&self) -> bool {
        false
    }

    /// The channel's inbound side, for providers that send people's messages and delivery
    /// reports to Herald (see [`inbound`]). `None` for channels that only send.
    fn receiver(&self) -> Option<&dyn inbound::Receiver> {
        None
    }

    /// Whether [`Channel::deliver`] sends an [`OutboundMessage::approved_template`]. A channel
    /// that cannot would send the message's description as if it were the text.
    fn sends_approved_templates(&self) -> bool {
        false
    }

    /// The web chat's browser side (sessions, reply streams, the widget), for the one
    /// provider that has one.
    fn webchat(&self) -> Option<&webchat::WebchatChannel> {
        None
    }
}

/// What a channel's addresses are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// Phone numbers or e-mail addresses, told apart by an `@`: SMS, WhatsApp, e-mail, and
    /// the channels whose addresses are whatever a workflow gives them.
    PhoneOrEmail,
    /// An id of the provider's own (a Telegram chat, a web chat visitor): never read as a
    /// phone number, so a chat whose id happens to look like one is not taken for that person.
    ProviderId,
}

/// The channels of a configuration, by name, in the order herald.yaml lists them.
pub type Channels = IndexMap<String, Arc<dyn Channel>>;

/// A channel that cannot be built from its settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("channel `{channel}`: {message}")]
pub struct ChannelError {
    /// The channel's name in herald.yaml.
    pub channel: String,
    /// The setting at fault, as a JSON pointer below the channel's entry (`host`,
    /// `headers/X-Api-Key`), so the error can point into herald.yaml.
    pub setting: Option<String>,
    pub message: String,
}

impl ChannelError {
    pub(crate) fn new(channel: &str, setting: Option<&str>, message: impl Into<String>) -> Self {
        ChannelError {
            channel: channel.to_owned(),
            setting: setting.map(str::to_owned),
            message: message.into(),
        }
    }
}

/// Builds every channel in `config`, resolving `${env:NAME}` in their settings, plus the
/// built-in `log` channel unless the config defines its own.
///
/// Fails on the first channel that cannot be built (an unset variable, an unusable address or
/// URL), naming the channel, so `herald serve` refuses to start rather than failing every
/// delivery later.
pub fn build(config: &ConfigDef, env: &EnvSource) -> Result<Channels, ChannelError> {
    let mut channels = Channels::new();
    for (name, def) in &config.channels {
        let channel: Arc<dyn Channel> = match &def.provider {
            ChannelConfig::Log {} => Arc::new(log::LogChannel::new(name)),
            ChannelConfig::Smtp(smtp) => Arc::new(smtp::SmtpChannel::from_config(name, smtp, env)?),
            ChannelConfig::Webhook(hook) => {
                Arc::new(webhook::WebhookChannel::from_config(name, hook, env)?)
            }
            ChannelConfig::Telegram(bot) => {
                Arc::new(telegram::TelegramChannel::from_config(name, bot, env)?)
            }
            ChannelConfig::Mailgun(mail) => {
                Arc::new(mailgun::MailgunChannel::from_config(name, mail, env)?)
            }
            ChannelConfig::Resend(mail) => {
                Arc::new(resend::ResendChannel::from_config(name, mail, env)?)
            }
            ChannelConfig::Whatsapp(wa) => {
                Arc::new(whatsapp::WhatsappChannel::from_config(name, wa, env)?)
            }
            ChannelConfig::TwilioSms(sms) => {
                Arc::new(twilio_sms::TwilioSmsChannel::from_config(name, sms, env)?)
            }
            ChannelConfig::Webchat(chat) => {
                Arc::new(webchat::WebchatChannel::from_config(name, chat, env)?)
            }
        };
        channels.insert(name.clone(), channel);
    }
    if !channels.contains_key(BUILTIN_CHANNEL) {
        channels.insert(
            BUILTIN_CHANNEL.to_owned(),
            Arc::new(log::LogChannel::new(BUILTIN_CHANNEL)),
        );
    }
    Ok(channels)
}

/// Refuses, before sending, a text longer than the provider takes (`max` characters), which
/// the provider would refuse anyway with a less helpful error.
pub(crate) fn within_chars(body: &str, max: usize, provider: &str) -> Result<(), DeliveryError> {
    let chars = body.chars().count();
    if chars > max {
        return Err(DeliveryError::Permanent {
            message: format!(
                "the text has {chars} characters; {provider} takes at most {max} in one message"
            ),
        });
    }
    Ok(())
}

/// Resolves `${env:...}` in one setting, with an error that says where the reference is.
/// `field` is the setting's name as written (`headers.X-Key`), `pointer` its JSON pointer.
pub(crate) fn resolve_setting(
    env: &EnvSource,
    channel: &str,
    field: &str,
    pointer: &str,
    value: &str,
) -> Result<String, ChannelError> {
    env.resolve(value)
        .map_err(|e| ChannelError::new(channel, Some(pointer), format!("{field}: {e}")))
}

/// An error with its causes: reqwest and lettre leave the useful part (connection refused,
/// the certificate problem) to the source chain.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::channels::smtp::config::{SmtpConfig, SmtpTls};
    use crate::channels::webhook::config::WebhookChannelConfig;
    use crate::definitions::model::Duration;

    fn env(vars: &[(&str, &str)]) -> EnvSource {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        EnvSource::Map(Arc::new(map))
    }

    fn config() -> ConfigDef {
        let mut config = ConfigDef::default();
        config.channels.insert(
            "email".into(),
            ChannelConfig::Smtp(SmtpConfig {
                host: "${env:SMTP_HOST}".into(),
                port: Some(2525),
                username: None,
                password: None,
                tls: SmtpTls::None,
                from: "Herald <herald@example.com>".into(),
                timeout: Duration::from_secs(5),
            })
            .into(),
        );
        config.channels.insert(
            "hook".into(),
            ChannelConfig::Webhook(WebhookChannelConfig {
                url: "http://127.0.0.1:9/hook".into(),
                headers: IndexMap::new(),
                timeout: Duration::from_secs(5),
            })
            .into(),
        );
        config
    }

    #[test]
    fn builds_every_channel_and_the_builtin_log() {
        let channels = build(&config(), &env(&[("SMTP_HOST", "127.0.0.1")])).unwrap();
        let names: Vec<&str> = channels.keys().map(String::as_str).collect();
        assert_eq!(names, ["email", "hook", "log"]);
        let providers: Vec<&str> = channels.values().map(|c| c.provider()).collect();
        assert_eq!(providers, ["smtp", "webhook", "log"]);
    }

    #[test]
    fn a_defined_log_channel_is_kept() {
        let mut config = ConfigDef::default();
        config.channels.insert(
            "log".into(),
            ChannelConfig::Webhook(WebhookChannelConfig {
                url: "http://127.0.0.1:9/".into(),
                headers: IndexMap::new(),
                timeout: Duration::from_secs(5),
            })
            .into(),
        );
        let channels = build(&config, &env(&[])).unwrap();
        assert_eq!(channels.len(), 1);
        assert_eq!(channels["log"].provider(), "webhook");
    }

    #[test]
    fn an_unset_variable_names_itself_and_the_channel() {
        let err = build(&config(), &env(&[])).unwrap_err();
        assert_eq!(
            (err.channel.as_str(), err.setting.as_deref()),
            ("email", Some("host"))
        );
        let err = err.to_string();
        assert!(err.contains("SMTP_HOST"), "{err}");
        assert!(err.contains("`email`"), "{err}");
    }
}
