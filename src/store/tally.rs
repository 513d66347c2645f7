//! Webhook responses counted in memory and added to the store in batches: a webhook's answer
//! must not wait on a write of its own, and a count per workflow, status and minute is all an
//! alert reads. Whoever flushes (the alert loop, every second, and shutdown) pays the write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::alerting::WebhookCount;
use super::{Millis, Result, Store};

/// Beyond this many unwritten counts (a database down for hours), the oldest minutes are
/// dropped rather than memory grown without bound.
const MAX_PENDING: usize = 100_000;

const MINUTE: Millis = 60_000;

type Key = (Arc<str>, Millis, u16);

#[derive(Debug, Default)]
pub struct ResponseTally {
    pending: Mutex<HashMap<Key, i64>>,
}

impl ResponseTally {
    /// Counts one response of `workflow` with `status` at `at`.
    pub fn add(&self, workflow: &Arc<str>, status: u16, at: Millis) {
        let minute = at - at.rem_euclid(MINUTE);
        let mut pending = crate::sync::lock(&self.pending);
        *pending
            .entry((workflow.clone(), minute, status))
            .or_insert(0) += 1;
    }

    /// Writes what was counted since the last flush. On failure the counts are kept for the
    /// next one.
    pub async fn flush(&self, store: &dyn Store) -> Result<usize> {
        let taken = std::mem::take(&mut *crate::sync::lock(&self.pending));
        if taken.is_empty() {
            return Ok(0);
        }
        let counts: Vec<WebhookCount> = taken
            .iter()
            .map(|((w, minute, status), n)| WebhookCount {
                workflow_id: w.to_string(),
                minute: *minute,
                status: *status,
                responses: *n,
            })
            .collect();
        match store.add_webhook_responses(&counts).await {
            Ok(()) => Ok(counts.len()),
            Err(e) => {
                self.restore(taken);
                Err(e)
            }
        }
    }

    fn restore(&self, taken: HashMap<Key, i64>) {
        let mut pending = crate::sync::lock(&self.pending);
        for (k, n) in taken {
            *pending.entry(k).or_insert(0) += n;
        }
        if pending.len() > MAX_PENDING {
            let mut minutes: Vec<Millis> = pending.keys().map(|k| k.1).collect();
            minutes.sort_unstable();
            let cut = minutes[pending.len() - MAX_PENDING];
            pending.retain(|k, _| k.1 >= cut);
            tracing::warn!(
                "webhook response counts could not be written for a long time; the oldest were dropped"
            );
        }
    }
}
