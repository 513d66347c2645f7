//! Retention: deleting history older than `retention:` in herald.yaml says, every hour and on
//! demand, in small batches so the database is never held for long.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::store::{Purged, StoreError};

/// Rows deleted per transaction.
const BATCH: i64 = 1_000;

/// Deletes what is past its retention now.
pub(crate) async fn run_once(engine: &Engine) -> Result<Purged, StoreError> {
    let config = engine.registry().config.retention.clone();
    let now = engine.now();
    let before =
        |d: Option<crate::definitions::model::Duration>| d.map(|d| now - d.as_millis_i64());
    let purged = engine
        .store
        .purge(before(config.runs), before(config.events), BATCH)
        .await?;
    for (kind, n) in [
        ("runs", purged.runs),
        ("steps", purged.steps),
        ("messages", purged.messages),
        ("events", purged.events),
    ] {
        metrics::counter!("herald_retention_deleted_total", "kind" => kind).increment(n);
    }
    if purged != Purged::default() {
        tracing::info!(
            runs = purged.runs,
            steps = purged.steps,
            messages = purged.messages,
            events = purged.events,
            "retention deleted old history"
        );
    }
    Ok(purged)
}

/// Runs retention every hour until shutdown (a first pass a minute after start).
pub async fn run(engine: Arc<Engine>, shutdown: CancellationToken) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        wait = Duration::from_secs(3600);
        let config = engine.registry().config.retention.clone();
        if config.runs.is_none() && config.events.is_none() {
            continue;
        }
        if let Err(e) = run_once(&engine).await {
            tracing::warn!(error = %e, "retention did not finish; it tries again in an hour");
        }
    }
}
