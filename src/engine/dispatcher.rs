//! The outbox dispatcher: delivers queued messages through their channels, retrying
//! transient failures with backoff, and recording every outcome.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError, retry};
use crate::channels::{ApprovedTemplate, DeliveryError, OutboundMessage};
use crate::store::{DeliveryOutcome, OutboxRecord};

const BATCH: i64 = 32;
const MAX_IDLE: Duration = Duration::from_secs(1);

impl Engine {
    /// A message stays claimed this long: the slowest channel's timeout plus the engine's
    /// lease. A process that died mid-delivery leaves its messages to be tried again after
    /// that, with the same idempotency key.
    fn outbox_lease_ms(&self) -> i64 {
        let slowest = self
            .registry()
            .channels
            .values()
            .map(|c| c.timeout())
            .max()
            .unwrap_or_default();
        slowest.as_millis() as i64 + self.lease_ms().max(5_000)
    }

    /// Delivers every message due now. Tests call this; `herald serve` runs [`Engine::dispatch`].
    pub async fn deliver_due(self: &Arc<Self>) -> Result<usize, EngineError> {
        let mut total = 0;
        loop {
            let batch = self
                .store
                .claim_outbox(
                    &self.options.owner,
                    self.now(),
                    self.outbox_lease_ms(),
                    BATCH,
                )
                .await;
            self.storage.record(&batch);
            let batch = batch?;
            if batch.is_empty() {
                return Ok(total);
            }
            total += batch.len();
            let mut set = JoinSet::new();
            for m in batch {
                let engine = self.clone();
                set.spawn(async move { engine.deliver(m).await });
            }
            while set.join_next().await.is_some() {}
        }
    }

    pub async fn dispatch(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let notified = self.outbox_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.deliver_due().await {
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "could not claim messages to deliver"),
            }
            if self.is_draining() {
                return;
            }
            let sleep = match self.store.next_outbox_at().await {
                Ok(Some(at)) => self
                    .clock
                    .real(at - self.now())
                    .clamp(Duration::from_millis(1), MAX_IDLE),
                _ => MAX_IDLE,
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = &mut notified => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn deliver(&self, m: OutboxRecord) {
        let registry = self.registry();
        // The recipient may have opted out since the message was queued (it may have waited
        // for a retry): that wins over the send.
        let suppressed = match super::suppression::check(
            &self.store,
            &registry.config.contacts.default_region,
            None,
            &m.channel,
            &m.recipient,
            m.category,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                // Unknown is not "allowed": try again shortly rather than risk it.
                tracing::warn!(message = %m.id, error = %e, "could not check the recipient's status; delivery postponed");
                let outcome = DeliveryOutcome::Retry {
                    error: format!("could not check the recipient's status: {e}"),
                    next_attempt_at: self.now() + 5_000,
                };
                let _ = self
                    .store
                    .finish_delivery(&m.id, &self.options.owner, outcome, self.now())
                    .await;
                return;
            }
        };
        let template = m
            .approved_template
            .clone()
            .map(serde_json::from_value::<ApprovedTemplate>)
            .transpose();
        let outcome = match registry.channels.get(&m.channel) {
            _ if suppressed.is_some() => DeliveryOutcome::Suppressed {
                reason: suppressed.unwrap_or_default(),
            },
            None => DeliveryOutcome::Failed {
                error: format!("channel `{}` is not configured", m.channel),
            },
            Some(_) if template.is_err() => DeliveryOutcome::Failed {
                error: format!(
                    "the message's approved template cannot be read: {}",
                    template
                        .as_ref()
                        .err()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ),
            },
            // herald.yaml may have changed since the message was queued; another provider
            // would send the template's description as the text.
            Some(channel)
                if matches!(template, Ok(Some(_))) && !channel.sends_approved_templates() =>
            {
                DeliveryOutcome::Failed {
                    error: format!(
                        "channel `{}` is now a {} channel, which cannot send an approved template",
                        m.channel,
                        channel.provider()
                    ),
                }
            }
            Some(_) if m.attempts > m.max_attempts => DeliveryOutcome::Failed {
                error: format!(
                    "gave up after {} attempts (the last was interrupted): {}",
                    m.max_attempts,
                    m.last_error.clone().unwrap_or_default()
                ),
            },
            Some(channel) => {
                let message = outbound(&m, template.ok().flatten());
                match channel.deliver(&message).await {
                    Ok(d) => DeliveryOutcome::Sent {
                        provider_id: d.provider_id,
                    },
                    Err(DeliveryError::Permanent { message }) => {
                        DeliveryOutcome::Failed { error: message }
                    }
                    Err(DeliveryError::Unreachable { message, reason }) => {
                        self.suppress(&m, reason, &message).await;
                        DeliveryOutcome::Failed { error: message }
                    }
                    Err(DeliveryError::Transient {
                        message,
                        retry_after,
                    }) => {
                        if m.attempts >= m.max_attempts {
                            DeliveryOutcome::Failed {
                                error: format!("{message} (after {} attempts)", m.attempts),
                            }
                        } else {
                            let policy = m.retry.clone().unwrap_or_else(retry::outbox_default);
                            let wait = retry::delay(&policy, m.attempts.max(1) as u32)
                                .max(retry_after.unwrap_or_default());
                            DeliveryOutcome::Retry {
                                error: message,
                                next_attempt_at: self.now() + wait.as_millis() as i64,
                            }
                        }
                    }
                }
            }
        };
        let label = match &outcome {
            DeliveryOutcome::Sent { .. } => "sent",
            DeliveryOutcome::Retry { .. } => "retry",
            DeliveryOutcome::Failed { .. } => "failed",
            DeliveryOutcome::Suppressed { .. } => "suppressed",
        };
        metrics::counter!("herald_deliveries_total", "channel" => m.channel.clone(), "outcome" => label).increment(1);
        match &outcome {
            DeliveryOutcome::Failed { error } => {
                tracing::warn!(message = %m.id, channel = %m.channel, run = ?m.run_id, error = %error, "message failed for good")
            }
            DeliveryOutcome::Retry { error, .. } => {
                tracing::info!(message = %m.id, channel = %m.channel, attempt = m.attempts, error = %error, "delivery will be retried")
            }
            DeliveryOutcome::Suppressed { reason } => {
                tracing::info!(message = %m.id, channel = %m.channel, run = ?m.run_id, reason = %reason, "message suppressed at delivery")
            }
            DeliveryOutcome::Sent { .. } => {}
        }
        match self
            .store
            .finish_delivery(&m.id, &self.options.owner, outcome, self.now())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(message = %m.id, "the message's claim expired before its outcome was recorded")
            }
            Err(e) => {
                tracing::error!(message = %m.id, error = %e, "could not record a delivery outcome; it will be retried")
            }
        }
    }

    /// Suppresses the message's recipient on its channel, as its provider said: nothing more
    /// goes to them there. A failure to record it is logged; the message fails either way.
    async fn suppress(&self, m: &OutboxRecord, reason: &str, detail: &str) {
        let address = super::suppression::address_key(&m.recipient);
        if let Err(e) = self
            .store
            .suppress_address(&m.channel, &address, reason, Some(detail), self.now())
            .await
        {
            tracing::warn!(message = %m.id, channel = %m.channel, error = %e, "could not record that the recipient is unreachable");
        } else {
            tracing::info!(channel = %m.channel, reason, "recipient suppressed on the channel, as its provider said");
        }
    }
}

/// The message a channel delivers, from its outbox row.
fn outbound(m: &OutboxRecord, approved_template: Option<ApprovedTemplate>) -> OutboundMessage {
    let headers = m
        .headers
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(k, v)| {
                    let text = v
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), text)
                })
                .collect::<IndexMap<_, _>>()
        })
        .unwrap_or_default();
    OutboundMessage {
        id: m.id.clone(),
        idempotency_key: m.idempotency_key.clone(),
        channel: m.channel.clone(),
        to: m.recipient.clone(),
        from: m.sender.clone(),
        subject: m.subject.clone(),
        body: m.body.clone(),
        html: m.html,
        headers,
        run_id: m.run_id.clone(),
        workflow_id: m.workflow_id.clone(),
        step_id: m.step_id.clone(),
        approved_template,
    }
}
