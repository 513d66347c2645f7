//! Delivery channels: where an outbox message goes. One file per provider, behind [`Channel`].
//!
//! A channel only delivers. Rendering, the outbox, retries and their schedule live in the
//! engine: a channel's job is to attempt one delivery and say whether a failure is worth
//! retrying ([`DeliveryError::Transient`]) or not ([`DeliveryError::Permanent`]).
//!
//! Every message carries an idempotency key that is the same on every attempt. Providers that
//! accept one receive it (the `webhook` channel sends it as `Idempotency-Key`); SMTP gets a
//! Message-ID derived from it, so a re-sent e-mail is recognisably the same message.

use std::time::Duration;

use async_trait::async_trait;
use indexmap::IndexMap;

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
}

impl DeliveryError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryError::Permanent { .. })
    }
}

#[async_trait]
pub trait Channel: Send + Sync + std::fmt::Debug {
    /// The provider's name, as in herald.yaml (`log`, `smtp`, `webhook`).
    fn provider(&self) -> &'static str;

    /// Attempts one delivery.
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivered, DeliveryError>;
}
