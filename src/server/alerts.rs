//! `GET /api/alerts`: every alert the registry holds, and the state of each of its instances as
//! the last evaluation stored it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::alerts::AlertState;
use crate::engine::clock::rfc3339;

pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let registry = state.engine.registry();
    let mut ids: Vec<&String> = registry
        .workflows
        .iter()
        .filter(|(_, wf)| wf.alert.is_some())
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    let mut alerts = Vec::new();
    for id in ids {
        let Some(alert) = &registry.workflows[id].alert else {
            continue;
        };
        let mut instances = Vec::new();
        for i in state
            .engine
            .store
            .alert_instances(id)
            .await
            .map_err(ApiError::unavailable)?
        {
            let labels: BTreeMap<String, String> =
                serde_json::from_str(&i.group_key).unwrap_or_default();
            let s: Option<AlertState> = serde_json::from_str(&i.state).ok();
            instances.push(json!({
                "labels": labels,
                "state": i.phase,
                "value": s.as_ref().and_then(|s| s.value),
                "active_since": s.as_ref().and_then(|s| s.active_since).map(rfc3339),
                "fired_at": s.as_ref().and_then(|s| s.fired_at).map(rfc3339),
                "evaluated_at": rfc3339(i.updated_at),
            }));
        }
        alerts.push(json!({
            "alertname": id,
            "severity": alert.def.severity.name(),
            "condition": alert.condition.to_string(),
            "resolve": alert.resolve.map(|r| r.to_string()),
            "every": alert.def.every.to_string(),
            "instances": instances,
        }));
    }
    Ok(Json(json!({ "alerts": alerts })))
}

/// Prometheus's `ALERTS` series for `/metrics`: one line per pending or firing instance, with
/// its rendered labels. An instance whose labels fail to render is left out, and logged.
pub async fn series(state: &AppState) -> String {
    let registry = state.engine.registry();
    let mut ids: Vec<&String> = registry.workflows.keys().collect();
    ids.sort();
    let mut lines = Vec::new();
    for id in ids {
        let Some(alert) = &registry.workflows[id].alert else {
            continue;
        };
        let Ok(instances) = state.engine.store.alert_instances(id).await else {
            continue;
        };
        for i in instances {
            if i.phase != "pending" && i.phase != "firing" {
                continue;
            }
            let group: BTreeMap<String, String> =
                serde_json::from_str(&i.group_key).unwrap_or_default();
            let value = serde_json::from_str::<AlertState>(&i.state)
                .ok()
                .and_then(|s| s.value);
            match crate::alerts::render::render(alert, &group, value, &registry.templates) {
                Ok(r) => lines.push(crate::alerts::render::alerts_series(&r.labels, &i.phase)),
                Err(e) => {
                    tracing::warn!(alert = %id, error = %e, "an alert's labels do not render")
                }
            }
        }
    }
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "# HELP ALERTS Alerts that are pending or firing.\n# TYPE ALERTS gauge\n{}\n",
        lines.join("\n")
    )
}

/// Evaluates every alert of the current registry at each of its ticks, until shutdown. The
/// registry is read afresh each round, so an edited threshold or `for` applies at the next
/// tick. Each tick is tried once per process; the store's claim decides which process
/// records it.
pub async fn evaluate(
    engine: Arc<crate::engine::Engine>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tried: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let mut notified_at: Option<i64> = None;
    loop {
        // Before the alerts that read them, so this process's own responses count at once.
        if let Err(e) = engine.webhook_responses.flush(&*engine.store).await {
            tracing::warn!(error = %e, "webhook response counts could not be written; they are kept and tried again");
        }
        let registry = engine.registry();
        let now = engine.clock.now();
        let changed = crate::alerts::round::evaluate_due(&engine, &registry, &mut tried, now)
            .await
            .changed;
        // Notify at once after a change, and every few seconds besides, for repeats, silences
        // that end, and a round a crash cut short.
        if changed || notified_at.is_none_or(|at| now - at >= NOTIFY_EVERY_MS) {
            let now = engine.clock.now();
            match crate::alerts::notify::round(&*engine.store, &registry, &engine.env, now).await {
                Ok(sent) => {
                    notified_at = Some(now);
                    if sent.iter().any(|s| s.messages > 0) {
                        engine.outbox_ready.notify_waiters();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notifying alerts failed; it is tried again")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// How often alerts are considered for notification when nothing changed.
const NOTIFY_EVERY_MS: i64 = 5_000;

/// Checks a posted event against the alerts that read it: an alert that reads a field as a
/// number gets a number, never a text silently skipped, and their data is an object. The
/// message names the field and the alert.
pub(crate) fn check_event(
    registry: &crate::engine::registry::Registry,
    name: &str,
    data: &Value,
) -> Result<(), String> {
    let mut ids: Vec<&String> = registry.workflows.keys().collect();
    ids.sort();
    for id in ids {
        let Some(alert) = &registry.workflows[id].alert else {
            continue;
        };
        let crate::definitions::model::alert::AlertSource::Events(src) = &alert.def.source else {
            continue;
        };
        if !src.name.names().iter().any(|n| n == name) {
            continue;
        }
        if !data.is_object() {
            return Err(format!(
                "the event's `data` must be an object: alert `{id}` reads `{name}` events' fields"
            ));
        }
        let (Some(field), true) = (&src.field, src.aggregate.numeric()) else {
            continue;
        };
        let event = crate::alerts::Event {
            name: name.to_owned(),
            key: None,
            data: data.clone(),
            at: 0,
        };
        if let Some(v) = event.field(field)
            && !v.is_number()
        {
            return Err(format!(
                "`{field}` is {v}, not a number: alert `{id}` reads it as one (send it without quotes)"
            ));
        }
    }
    Ok(())
}
