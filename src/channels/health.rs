//! Whether each channel can reach its provider, checked in the background.
//!
//! A relay whose password was rotated, or an endpoint whose DNS name went away, otherwise
//! shows up only as messages piling up in the outbox with retries. A [`Board`] keeps the last
//! check of every channel for `/health` and the `herald_channel_up` gauge, and logs each
//! change (a warning when a channel starts failing, a note when it recovers), so the failure
//! is seen before the first message waits on it.
//!
//! A failing channel does not make Herald unhealthy: messages wait in the outbox and go out
//! when it recovers, so a load balancer must not take the process out of service for it.

use std::sync::Mutex;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;

use super::Channels;

/// The last check of one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelHealth {
    pub provider: &'static str,
    pub ok: bool,
    pub error: Option<String>,
    /// Unix milliseconds of the last check.
    pub checked_at: i64,
    /// Unix milliseconds since when it has been in this state.
    pub since: i64,
}

/// The last check of every channel, by name.
#[derive(Debug, Default)]
pub struct Board {
    checks: Mutex<IndexMap<String, ChannelHealth>>,
}

impl Board {
    /// Checks every channel at once, each bounded by its delivery timeout, and records
    /// the outcomes. Channels no longer in `channels` (removed by a reload) are forgotten.
    pub async fn check(&self, channels: &Channels, now: i64) {
        let mut checks = tokio::task::JoinSet::new();
        for (name, channel) in channels {
            let (name, channel) = (name.clone(), channel.clone());
            checks.spawn(async move {
                // The channel bounds its own check; this only catches one that does not.
                let bound = channel.timeout() + Duration::from_secs(1);
                let outcome = match tokio::time::timeout(bound, channel.healthcheck()).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!(
                        "the provider did not answer within {}s",
                        bound.as_secs_f64()
                    )),
                };
                (name, outcome)
            });
        }
        let mut outcomes = std::collections::HashMap::new();
        while let Some(joined) = checks.join_next().await {
            if let Ok((name, outcome)) = joined {
                outcomes.insert(name, outcome);
            }
        }

        let mut board = crate::sync::lock(&self.checks);
        board.retain(|name, _| channels.contains_key(name));
        for (name, channel) in channels {
            let outcome = outcomes
                .remove(name)
                .unwrap_or_else(|| Err("the check itself failed".to_owned()));
            let name = name.clone();
            let provider = channel.provider();
            let ok = outcome.is_ok();
            let before = board.get(&name);
            let since = match before {
                Some(b) if b.ok == ok => b.since,
                _ => now,
            };
            log_change(&name, before.map(|b| b.ok), &outcome);
            metrics::gauge!("herald_channel_up", "channel" => name.clone()).set(if ok {
                1.0
            } else {
                0.0
            });
            board.insert(
                name,
                ChannelHealth {
                    provider,
                    ok,
                    error: outcome.err(),
                    checked_at: now,
                    since,
                },
            );
        }
    }

    /// The last check of every channel, in herald.yaml's order.
    pub fn snapshot(&self) -> IndexMap<String, ChannelHealth> {
        crate::sync::lock(&self.checks).clone()
    }
}

fn log_change(name: &str, was_ok: Option<bool>, outcome: &Result<(), String>) {
    match (was_ok, outcome) {
        (Some(false), Ok(())) => tracing::info!(channel = name, "channel reachable again"),
        (Some(true) | None, Err(e)) => tracing::warn!(
            channel = name,
            error = %e,
            "channel cannot reach its provider; messages wait in the outbox until it can"
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::channels::{Channel, Delivered, DeliveryError, OutboundMessage};

    #[derive(Debug)]
    struct Flaky(AtomicBool);

    #[async_trait]
    impl Channel for Flaky {
        fn provider(&self) -> &'static str {
            "flaky"
        }
        async fn deliver(&self, _: &OutboundMessage) -> Result<Delivered, DeliveryError> {
            unreachable!("health checks send nothing")
        }
        async fn healthcheck(&self) -> Result<(), String> {
            if self.0.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("connection refused".into())
            }
        }
    }

    #[tokio::test]
    async fn records_each_state_since_it_began_and_forgets_removed_channels() {
        let flaky = Arc::new(Flaky(AtomicBool::new(false)));
        let mut channels = Channels::new();
        channels.insert("sms".into(), flaky.clone());
        let board = Board::default();

        board.check(&channels, 1_000).await;
        board.check(&channels, 2_000).await;
        let sms = &board.snapshot()["sms"];
        assert_eq!(
            (sms.ok, sms.error.as_deref(), sms.since, sms.checked_at),
            (false, Some("connection refused"), 1_000, 2_000)
        );

        flaky.0.store(true, Ordering::Relaxed);
        board.check(&channels, 3_000).await;
        let sms = &board.snapshot()["sms"];
        assert_eq!(
            (sms.ok, sms.error.as_deref(), sms.since),
            (true, None, 3_000)
        );

        board.check(&Channels::new(), 4_000).await;
        assert!(board.snapshot().is_empty());
    }
}
