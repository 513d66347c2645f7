//! The `log` channel: delivery by writing the message to the process log.
//!
//! It needs no setup, so a new project can run its workflows end to end before any real
//! provider is configured, and it is what tests and dry runs point at.

use async_trait::async_trait;

use super::{Channel, Delivered, DeliveryError, OutboundMessage};

#[derive(Debug, Clone)]
pub struct LogChannel {
    name: String,
}

impl LogChannel {
    pub fn new(name: &str) -> LogChannel {
        LogChannel {
            name: name.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait]
impl Channel for LogChannel {
    fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    fn provider(&self) -> &'static str {
        "log"
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivered, DeliveryError> {
        // Structured fields rather than one formatted line, so a JSON log can be searched by
        // recipient or idempotency key.
        tracing::info!(
            channel = %message.channel,
            to = %message.to,
            subject = message.subject.as_deref().unwrap_or(""),
            body = %message.body,
            idempotency_key = %message.idempotency_key,
            html = message.html,
            "message delivered to the log"
        );
        Ok(Delivered {
            provider_id: Some(format!("log-{}", message.id)),
        })
    }
}
