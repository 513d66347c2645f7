//! `GET /health` and `GET /metrics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::store::{OutboxStatus, RunStatus};

pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let engine = &state.engine;
    let db = engine.store.ping().await;
    let (registry, reload) = {
        let _gate = state.reload_gate.read().await;
        let reload = state.reload.lock().expect("not poisoned").clone();
        (engine.registry(), reload)
    };
    let ok = db.is_ok();
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "database": {
            "ok": ok,
            "backend": engine.store.backend(),
            "error": db.err().map(|e| e.to_string()),
        },
        "definitions": registry.workflows.len(),
        "generation": registry.generation,
        "reload": reload,
        "draining": engine.is_draining(),
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
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
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
