//! The outbox dispatcher: delivers queued messages through their channels, retrying
//! transient failures with backoff, and recording every outcome.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::lookups::Lookups;
use super::{Engine, EngineError, policy, retry};
use crate::channels::{ApprovedTemplate, DeliveryError, OutboundMessage};
use crate::store::{DeliveryOutcome, Millis, OutboxRecord};

/// Messages claimed at once: each batch's reads (suppressions, contacts) and its outcomes are
/// one statement each, whatever its size.
const BATCH: i64 = 64;
/// Claimed batches in flight at once (see [`Engine::deliver_due`]).
const PIPELINE: usize = 4;
const MAX_IDLE: Duration = Duration::from_secs(1);
/// How long a claimed message may wait in memory for its channel's pace; a later slot is
/// waited for in the outbox instead. Well under any claim's lease.
const PACE_WAIT_MS: Millis = 1_000;
/// How a message put back for its channel's pace is marked (its `last_error`).
const PACED: &str = "paced:";
/// How a message put back for its campaign's `throttle` is marked: its campaign slot is
/// reserved; its channel's pace comes next.
const THROTTLED: &str = "throttled:";

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
    ///
    /// Up to [`PIPELINE`] claimed batches are in flight at once, so the next batch is claimed
    /// while the last one's providers answer; each batch's outcomes are recorded in one
    /// transaction.
    pub async fn deliver_due(self: &Arc<Self>) -> Result<usize, EngineError> {
        let mut total = 0;
        let mut in_flight = JoinSet::new();
        loop {
            while in_flight.len() >= PIPELINE {
                in_flight.join_next().await;
            }
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
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    while in_flight.join_next().await.is_some() {}
                    return Err(e.into());
                }
            };
            if batch.is_empty() {
                while in_flight.join_next().await.is_some() {}
                return Ok(total);
            }
            total += batch.len();
            let engine = self.clone();
            in_flight.spawn(async move { engine.deliver_batch(batch).await });
        }
    }

    /// Delivers one claimed batch and records the outcomes together. Recipients are served
    /// at once, but one recipient's messages one after another, oldest first: a greeting and
    /// the question after it must not reach the person the other way round.
    async fn deliver_batch(self: Arc<Self>, batch: Vec<OutboxRecord>) {
        let lookups = Lookups::for_messages(&self.store, &self.registry(), &batch)
            .await
            .map(Arc::new);
        let mut queues: std::collections::HashMap<(String, String), Vec<OutboxRecord>> =
            std::collections::HashMap::new();
        for m in batch {
            queues
                .entry((m.channel.clone(), m.recipient.clone()))
                .or_default()
                .push(m);
        }
        let mut set = JoinSet::new();
        for (_, mut queue) in queues {
            // Ids are time-ordered (UUIDv7), so they break ties within a millisecond.
            queue.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            let engine = self.clone();
            let lookups = lookups.clone();
            set.spawn(async move {
                let mut done = Vec::with_capacity(queue.len());
                // A failure may have suppressed the recipient (their provider said so): the
                // batch's reads no longer stand for them.
                let mut known = lookups.as_deref();
                for m in queue {
                    let outcome = engine.deliver(&m, known).await;
                    if !matches!(outcome, DeliveryOutcome::Sent { .. }) {
                        known = None;
                    }
                    done.push((m.id, outcome));
                }
                done
            });
        }
        let mut outcomes = Vec::new();
        while let Some(done) = set.join_next().await {
            if let Ok(o) = done {
                outcomes.extend(o);
            }
        }
        let ids: Vec<String> = outcomes.iter().map(|(id, _)| id.clone()).collect();
        match self
            .store
            .finish_deliveries(&self.options.owner, outcomes, self.now())
            .await
        {
            Ok(held) => {
                for (id, recorded) in ids.iter().zip(held) {
                    if !recorded {
                        tracing::warn!(message = %id, "the message's claim expired before its outcome was recorded");
                    }
                }
            }
            Err(e) => {
                tracing::error!(messages = ids.len(), error = %e, "could not record delivery outcomes; the messages will be tried again when their claims expire")
            }
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

    /// Attempts one message and says what came of it; the caller records it.
    async fn deliver(&self, m: &OutboxRecord, known: Option<&Lookups>) -> DeliveryOutcome {
        let registry = self.registry();
        // The recipient may have opted out since the message was queued (it may have waited
        // for a retry): that wins over the send.
        let kind = registry
            .channels
            .get(&m.channel)
            .map_or(crate::channels::AddressKind::PhoneOrEmail, |c| {
                c.address_kind()
            });
        let recipient = match super::suppression::check(
            &self.store,
            known,
            &registry.config.contacts.default_region,
            None,
            (&m.channel, kind),
            &m.recipient,
            m.category,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                // Unknown is not "allowed": try again shortly rather than risk it.
                tracing::warn!(message = %m.id, error = %e, "could not check the recipient's status; delivery postponed");
                return DeliveryOutcome::Retry {
                    error: format!("could not check the recipient's status: {e}"),
                    next_attempt_at: self.now() + 5_000,
                };
            }
        };
        let now = self.now();
        let held = policy::hold(
            &registry,
            &m.channel,
            m.category,
            recipient.time_zone.as_deref(),
            now,
        );
        let template = m
            .approved_template
            .clone()
            .map(serde_json::from_value::<ApprovedTemplate>)
            .transpose();
        let outcome = match registry.channels.get(&m.channel) {
            _ if recipient.blocked.is_some() => DeliveryOutcome::Suppressed {
                reason: recipient.blocked.unwrap_or_default(),
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
            // herald.yaml may have changed since the message was queued (or the message is a
            // fallback's copy); another provider would send the template's description as the
            // text.
            Some(channel)
                if matches!(template, Ok(Some(_))) && !channel.sends_approved_templates() =>
            {
                DeliveryOutcome::Failed {
                    error: format!(
                        "channel `{}` is a {} channel, which cannot send an approved template",
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
            // A retry that came due inside quiet hours waits for them to end, as the first
            // attempt would have.
            Some(_) if held.is_some() => {
                let (until, reason) = held.unwrap_or_default();
                DeliveryOutcome::Deferred { reason, until }
            }
            Some(channel) => match self.wait_for_pace(&registry, m, now).await {
                Some(deferred) => deferred,
                None => {
                    self.attempt(channel.as_ref(), m, template.ok().flatten())
                        .await
                }
            },
        };
        // A message that failed for good goes on the channel's fallback, if it has one.
        let outcome = match outcome {
            DeliveryOutcome::Failed { error } => match policy::fallback(&registry, m, self.now()) {
                Some(next) => DeliveryOutcome::FellBack {
                    error: format!("{error}; handed to channel `{}`", next.channel),
                    next: Box::new(next),
                },
                None => DeliveryOutcome::Failed { error },
            },
            other => other,
        };
        log_outcome(m, &outcome);
        outcome
    }

    /// Hands the message to its channel's provider once, and reads what the provider said:
    /// sent, failed for good (an unreachable recipient is suppressed there too), or worth
    /// another attempt later, per the message's retry policy and the provider's Retry-After.
    async fn attempt(
        &self,
        channel: &dyn crate::channels::Channel,
        m: &OutboxRecord,
        template: Option<ApprovedTemplate>,
    ) -> DeliveryOutcome {
        let message = outbound(m, template);
        match channel.deliver(&message).await {
            Ok(d) => DeliveryOutcome::Sent {
                provider_id: d.provider_id,
            },
            Err(DeliveryError::Permanent { message }) => DeliveryOutcome::Failed { error: message },
            Err(DeliveryError::Unreachable { message, reason }) => {
                self.suppress(m, reason, &message).await;
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

    /// Waits for the channel's next free slot if it is near; a message whose turn is further
    /// off is put back until then, so its claim does not run out while it waits. The slot is
    /// reserved either way: a message put back comes due at its own slot and goes then, and
    /// a backlog is spread evenly instead of being put back again and again.
    async fn wait_for_pace(
        &self,
        registry: &super::registry::Registry,
        m: &OutboxRecord,
        now: Millis,
    ) -> Option<DeliveryOutcome> {
        let channel = m.channel.as_str();
        let last = m.last_error.as_deref().unwrap_or_default();
        if last.starts_with(PACED) {
            return None;
        }
        // The campaign's throttle first: a message it holds back takes no slot of the
        // channel's, which other traffic may use meanwhile.
        if !last.starts_with(THROTTLED)
            && let Some(campaign) = m.workflow_id.as_deref()
            && let Some(slot) = self.pacers.campaign_slot(registry, campaign, channel, now)
        {
            let wait = slot - now;
            if wait > PACE_WAIT_MS {
                return Some(DeliveryOutcome::Deferred {
                    reason: format!(
                        "{THROTTLED} campaign `{campaign}` has no slot sooner on channel `{channel}` (its `throttle`)"
                    ),
                    until: slot,
                });
            }
            if wait > 0 {
                tokio::time::sleep(self.clock.real(wait)).await;
            }
        }
        let now = self.now().max(now);
        let slot = self.pacers.slot(registry, channel, now)?;
        let wait = slot - now;
        if wait <= 0 {
            None
        } else if wait <= PACE_WAIT_MS {
            tokio::time::sleep(self.clock.real(wait)).await;
            None
        } else {
            Some(DeliveryOutcome::Deferred {
                reason: format!("{PACED} channel `{channel}` has no slot sooner (its `rate`)"),
                until: slot,
            })
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

/// Counts a delivery's outcome and logs what an operator would want to know of it.
fn log_outcome(m: &OutboxRecord, outcome: &DeliveryOutcome) {
    let label = match outcome {
        DeliveryOutcome::Sent { .. } => "sent",
        DeliveryOutcome::Retry { .. } => "retry",
        DeliveryOutcome::Failed { .. } => "failed",
        DeliveryOutcome::Suppressed { .. } => "suppressed",
        DeliveryOutcome::Deferred { .. } => "deferred",
        DeliveryOutcome::FellBack { .. } => "fell_back",
    };
    metrics::counter!("herald_deliveries_total", "channel" => m.channel.clone(), "outcome" => label).increment(1);
    match outcome {
        DeliveryOutcome::Failed { error } => {
            tracing::warn!(message = %m.id, channel = %m.channel, run = ?m.run_id, error = %error, "message failed for good")
        }
        DeliveryOutcome::Retry { error, .. } => {
            tracing::info!(message = %m.id, channel = %m.channel, attempt = m.attempts, error = %error, "delivery will be retried")
        }
        DeliveryOutcome::Suppressed { reason } => {
            tracing::info!(message = %m.id, channel = %m.channel, run = ?m.run_id, reason = %reason, "message suppressed at delivery")
        }
        DeliveryOutcome::Deferred { reason, until } => {
            tracing::debug!(message = %m.id, channel = %m.channel, until, reason = %reason, "delivery put back")
        }
        DeliveryOutcome::FellBack { error, next } => {
            tracing::warn!(message = %m.id, channel = %m.channel, fallback = %next.channel, error = %error, "message failed on its channel; sent to its fallback")
        }
        DeliveryOutcome::Sent { .. } => {}
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
