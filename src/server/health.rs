//! `GET /health` and `GET /metrics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::engine::clock::rfc3339;
use crate::store::{OutboxStatus, RunStatus};

pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let engine = &state.engine;
    // A database that does not answer is an answer too: bounded, so a load balancer's check
    // is not left hanging while the pool waits for a connection.
    let bound = engine.registry().config.server.store_timeout;
    let db = match tokio::time::timeout(bound.as_std(), engine.store.ping()).await {
        Ok(Ok(())) => match engine.storage.failing() {
            None => Ok(()),
            Some(e) => Err(format!("reads work, but writes fail: {e}")),
        },
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the database did not answer within {bound} (server.store_timeout)"
        )),
    };
    let (registry, reload) = {
        let _gate = state.reload_gate.read().await;
        let reload = crate::sync::lock(&state.reload).clone();
        (engine.registry(), reload)
    };
    let ok = db.is_ok();
    let (alerts, services) = if ok {
        (
            firing_alerts(engine, &registry, bound.as_std()).await,
            services(engine, &registry, bound.as_std()).await,
        )
    } else {
        (serde_json::Value::Null, serde_json::Value::Null)
    };
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "database": {
            "ok": ok,
            "backend": engine.store.backend(),
            "error": db.err(),
        },
        "definitions": registry.workflows.len(),
        "generation": registry.generation,
        "reload": reload,
        "channels": channels(&state),
        "draining": engine.is_draining(),
        "alerts": alerts,
        "services": services,
    });
    if ok {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            Json(body),
        )
            .into_response()
    }
}

/// The alerts firing now, with their rendered labels and summary, for the people behind a
/// status page. They do not make the server unhealthy: a load balancer must not take a
/// server out because payments fail. `null` when there are no alerts or they cannot be read.
async fn firing_alerts(
    engine: &crate::engine::Engine,
    registry: &crate::engine::registry::Registry,
    bound: std::time::Duration,
) -> serde_json::Value {
    if !registry.workflows.values().any(|w| w.alert.is_some()) {
        return serde_json::Value::Null;
    }
    let read = crate::alerts::notify::firing_alerts(&*engine.store, registry);
    let Ok(Ok(firing)) = tokio::time::timeout(bound, read).await else {
        return serde_json::Value::Null;
    };
    let list: Vec<serde_json::Value> = firing
        .iter()
        .map(|a| {
            json!({
                "alertname": a.labels.get("alertname"),
                "severity": a.labels.get("severity"),
                "labels": a.labels,
                "summary": a.annotations.get("summary"),
                "since": crate::engine::clock::rfc3339(a.starts_at),
            })
        })
        .collect();
    let worst = ["critical", "warning", "info"].into_iter().find(|s| {
        firing
            .iter()
            .any(|a| a.labels.get("severity").map(String::as_str) == Some(*s))
    });
    json!({
        "status": if firing.is_empty() { "ok" } else { "firing" },
        "worst": worst,
        "firing": list,
    })
}

/// Each service an alert probes, as its last check found it: `up` or `down`, the latency and
/// status of the answer, why it failed, and when it was checked (`unknown` before the first
/// check). `null` when no alert probes anything.
async fn services(
    engine: &crate::engine::Engine,
    registry: &crate::engine::registry::Registry,
    bound: std::time::Duration,
) -> serde_json::Value {
    use crate::definitions::model::alert::AlertSource;
    let mut out = serde_json::Map::new();
    let mut ids: Vec<&String> = registry.workflows.keys().collect();
    ids.sort();
    for id in ids {
        let Some(alert) = &registry.workflows[id].alert else {
            continue;
        };
        let AlertSource::Probe(p) = &alert.def.source else {
            continue;
        };
        let name = p.service.clone().unwrap_or_else(|| id.clone());
        let read = engine.store.alert_instances(id);
        let state = match tokio::time::timeout(bound, read).await {
            Ok(Ok(rows)) => rows.into_iter().next(),
            _ => None,
        };
        let last = state
            .as_ref()
            .and_then(|r| serde_json::from_str::<crate::alerts::AlertState>(&r.state).ok())
            .and_then(|s| s.probe);
        let entry = match last {
            None => json!({ "status": "unknown" }),
            Some(r) => json!({
                "status": if r.up { "up" } else { "down" },
                "latency_ms": r.latency_ms.map(|l| l.round() as i64),
                "http_status": r.status,
                "error": r.error,
                "checked_at": crate::engine::clock::rfc3339(r.at),
                "alert": state.map(|s| s.phase),
            }),
        };
        out.insert(name, entry);
    }
    if out.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::Object(out)
    }
}

/// How often every channel's provider is checked: soon enough that a broken relay is seen
/// before much waits on it, seldom enough that a provider does not notice.
const CHANNEL_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Checks the channels of the registry in use now, at start and then every minute, until
/// shutdown. A reload's new channels are checked at the next round.
pub async fn watch_channels(state: Arc<AppState>, shutdown: CancellationToken) {
    loop {
        let registry = state.engine.registry();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = state.channel_health.check(&registry.channels, state.engine.now()) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CHANNEL_CHECK_EVERY) => {}
        }
    }
}

/// The last check of each channel, with times in RFC 3339. Not part of the status: messages
/// wait in the outbox while a provider is down.
fn channels(state: &AppState) -> Value {
    let checks = state.channel_health.snapshot();
    let entries = checks.into_iter().map(|(name, c)| {
        let entry = json!({
            "provider": c.provider,
            "ok": c.ok,
            "error": c.error,
            "checked_at": rfc3339(c.checked_at),
            "since": rfc3339(c.since),
        });
        (name, entry)
    });
    Value::Object(entries.collect())
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let store = &state.engine.store;
    // Gauges come from the store, so they count every process's work, not just this one's.
    if let Ok(counts) = store.count_runs().await {
        for s in RunStatus::ALL {
            let n = counts
                .iter()
                .find(|(c, _)| *c == s)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            metrics::gauge!("herald_runs", "status" => s.as_str()).set(n as f64);
        }
    }
    if let Ok(counts) = store.count_outbox().await {
        for s in OutboxStatus::ALL {
            let n = counts
                .iter()
                .find(|(c, _)| *c == s)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            metrics::gauge!("herald_outbox_messages", "status" => s.as_str()).set(n as f64);
        }
    }
    metrics::gauge!("herald_definitions").set(state.engine.registry().workflows.len() as f64);
    let mut text = state.metrics.render();
    text.push_str(&super::alerts::series(&state).await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
