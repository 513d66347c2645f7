//! The admin API, behind the `x-api-key` header: definitions, runs and their step logs, cancel
//! and retry, events and inbound messages, cron slots, and reload.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::definitions::model::Trigger;
use crate::definitions::model::config::Keyword;
use crate::store::{RunFilter, RunRecord, RunStatus};

/// Digests keys so every comparison takes the same time whatever the key's length.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub(crate) async fn require_key(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if state.admin_keys.is_empty() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is closed: set admin.api_keys in herald.yaml",
        )
        .into_response();
    }
    let given = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    let Some(given) = given else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_credentials",
            "send the admin key in the x-api-key header",
        )
        .into_response();
    };
    let d = digest(given);
    // Compare against every key, without stopping at the first match.
    let ok = state
        .admin_keys
        .iter()
        .fold(0u8, |acc, k| acc | k.ct_eq(&d).unwrap_u8());
    if ok != 1 {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "the x-api-key is not valid",
        )
        .into_response();
    }
    next.run(req).await
}

pub async fn definitions(State(state): State<Arc<AppState>>) -> Json<Value> {
    let registry = state.engine.registry();
    let mut ids: Vec<&String> = registry.workflows.keys().collect();
    ids.sort();
    let defs: Vec<Value> = ids
        .into_iter()
        .map(|id| {
            let wf = &registry.workflows[id];
            let triggers: Vec<Value> = wf
                .workflow
                .triggers
                .iter()
                .map(|t| match t {
                    Trigger::Cron(c) => json!({"kind": "cron", "schedule": c.schedule, "timezone": c.timezone}),
                    Trigger::Webhook(w) => json!({"kind": "webhook", "method": w.method.as_str(), "path": w.path, "respond": format!("{:?}", w.respond).to_lowercase()}),
                    Trigger::Message(m) => json!({"kind": "message", "channel": m.channel}),
                    Trigger::Event(e) => json!({"kind": "event", "name": e.name}),
                })
                .collect();
            json!({
                "id": wf.id,
                "kind": "workflow",
                "version": wf.hash,
                "description": wf.workflow.description,
                "on_update": format!("{:?}", wf.workflow.on_update).to_lowercase(),
                "triggers": triggers,
                "steps": wf.program.nodes.len(),
            })
        })
        .collect();
    Json(json!({"generation": registry.generation, "definitions": defs}))
}

#[derive(Debug, Deserialize)]
pub struct RunsQuery {
    workflow: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    /// Only runs created before this run id's creation (paging).
    before: Option<i64>,
    /// Only runs with this label, as `name:value`.
    label: Option<String>,
    /// Only runs about this contact id.
    contact: Option<String>,
}

fn summary(r: &RunRecord) -> Value {
    json!({
        "id": r.id,
        "workflow": r.workflow_id,
        "version": r.version,
        "status": r.status,
        "trigger": r.trigger_kind.as_str(),
        "step": r.cursor.get("step"),
        "error": r.error,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "finished_at": r.finished_at,
        "due_at": r.due_at,
        "labels": r.labels,
    })
}

pub async fn list_runs(
    State(state): State<Arc<AppState>>,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let status = match q.status.as_deref() {
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_status",
                format!("unknown status `{s}`; use pending, running, waiting, completed, failed or cancelled"),
            )
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let runs = state
        .engine
        .store
        .list_runs(&RunFilter {
            workflow_id: q.workflow,
            status,
            created_before: q.before,
            label: q
                .label
                .map(|l| {
                    l.split_once(':')
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .ok_or_else(|| {
                            ApiError::new(
                                StatusCode::BAD_REQUEST,
                                "invalid_label",
                                format!("`{l}` is not a label: write name:value"),
                            )
                        })
                })
                .transpose()?,
            contact_id: q.contact,
            limit,
        })
        .await
        .map_err(ApiError::unavailable)?;
    let next = if runs.len() as i64 == limit {
        runs.last().map(|r| r.created_at)
    } else {
        None
    };
    Ok(Json(
        json!({"runs": runs.iter().map(summary).collect::<Vec<_>>(), "next_before": next}),
    ))
}

pub(crate) async fn get_run(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = &state.engine.store;
    let run = store
        .run(&id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    let steps = store.step_log(&id).await.map_err(ApiError::unavailable)?;
    let messages = store
        .outbox_for_run(&id)
        .await
        .map_err(ApiError::unavailable)?;
    let mut detail = summary(&run);
    if let Some(obj) = detail.as_object_mut() {
        obj.insert("cursor".into(), run.cursor.clone());
        obj.insert("context".into(), run.context.clone());
        obj.insert(
            "response".into(),
            run.response.clone().unwrap_or(Value::Null),
        );
        obj.insert("attempts".into(), json!(run.attempts));
        obj.insert("parent_run_id".into(), json!(run.parent_run_id));
    }
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({
                "id": m.id, "channel": m.channel, "to": m.recipient, "subject": m.subject, "status": m.status,
                "attempts": m.attempts, "provider_id": m.provider_id, "last_error": m.last_error, "step": m.step_id,
            })
        })
        .collect();
    Ok(Json(
        json!({"run": detail, "steps": steps, "messages": messages}),
    ))
}

pub async fn cancel_run(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = state
        .engine
        .store
        .run(&id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    if run.status.is_finished() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_finished",
            format!("run {id} is already {}", run.status.as_str()),
        ));
    }
    let ok = state.engine.cancel(&id).await.map_err(ApiError::engine)?;
    if !ok {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_finished",
            format!("run {id} finished meanwhile"),
        ));
    }
    Ok(Json(json!({"run_id": id, "status": "cancelled"})))
}

pub async fn retry_run(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = state
        .engine
        .store
        .run(&id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    if run.status != RunStatus::Failed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_failed",
            format!(
                "run {id} is {}; only failed runs can be retried",
                run.status.as_str()
            ),
        ));
    }
    state.engine.retry(&id).await.map_err(ApiError::engine)?;
    Ok(Json(
        json!({"run_id": id, "status": "pending", "step": run.cursor.get("step")}),
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct EmitBody {
    name: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    data: Value,
}

/// One event, or `{"events": [...]}`: a batch, stored in one write.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum EmitRequest {
    Batch { events: Vec<EmitBody> },
    One(EmitBody),
}

/// The most events one request may carry.
const MAX_BATCH: usize = 1000;

pub(crate) async fn emit_event(
    State(state): State<Arc<AppState>>,
    body: Result<Json<EmitRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.body_text()))?;
    let (events, batch) = match body {
        EmitRequest::One(e) => (vec![e], false),
        EmitRequest::Batch { events } => (events, true),
    };
    if batch && (events.is_empty() || events.len() > MAX_BATCH) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_event",
            format!(
                "a batch holds 1 to {MAX_BATCH} events, not {}; send more in several requests",
                events.len()
            ),
        ));
    }
    // Every event is checked before any is stored: a batch goes in whole or not at all.
    let registry = state.engine.registry();
    for (i, e) in events.iter().enumerate() {
        let at = |m: String| {
            if batch {
                format!("events[{i}]: {m}")
            } else {
                m
            }
        };
        if e.name.trim().is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_event",
                at("the event needs a `name`".into()),
            ));
        }
        if let Err(m) = super::alerts::check_event(&registry, &e.name, &e.data) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_event",
                at(m),
            ));
        }
    }
    let ids = state
        .engine
        .emit_batch(
            events
                .into_iter()
                .map(|e| (e.name, e.key, e.data))
                .collect(),
        )
        .await
        .map_err(ApiError::engine)?;
    let body = if batch {
        json!({"event_ids": ids})
    } else {
        json!({"event_id": ids.first()})
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct MessageBody {
    from: String,
    #[serde(default)]
    text: String,
    /// The provider's message id; a redelivery with the same id is recorded once.
    #[serde(default)]
    id: Option<String>,
}

pub async fn inbound_message(
    State(state): State<Arc<AppState>>,
    Path(channel): Path<String>,
    body: Result<Json<MessageBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.body_text()))?;
    if !state.engine.registry().channels.contains_key(&channel) {
        return Err(ApiError::not_found(format!(
            "no channel `{channel}` in herald.yaml"
        )));
    }
    // Replies are correlated by sender: phone numbers in E.164, e-mail in lower case.
    let region = state
        .engine
        .registry()
        .config
        .contacts
        .default_region
        .clone();
    let from = if body.from.contains('@') {
        body.from.trim().to_lowercase()
    } else {
        crate::engine::contact::normalize_phone(&body.from, &region)
            .unwrap_or_else(|| body.from.trim().to_owned())
    };
    let routed = state
        .engine
        .inbound_message(&channel, &from, &body.text, body.id.as_deref())
        .await
        .map_err(ApiError::engine)?;
    let keyword = routed.keyword.map(|k| match k {
        Keyword::OptOut => "opt_out",
        Keyword::OptIn => "opt_in",
        Keyword::Help => "help",
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"from": from, "started_runs": routed.started_runs, "compliance": keyword})),
    )
        .into_response())
}

pub async fn cron_fires(
    State(state): State<Arc<AppState>>,
    Path(workflow): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let fires = state
        .engine
        .store
        .cron_fires(&workflow, 200)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(json!({"workflow": workflow, "slots": fires})))
}

pub async fn reload(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let sender = crate::sync::lock(&state.reloader).clone();
    let Some(sender) = sender else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_unavailable",
            "reloading is not running",
        ));
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    sender.send(tx).map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_unavailable",
            "reloading stopped",
        )
    })?;
    let status = rx.await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_unavailable",
            "reloading stopped",
        )
    })?;
    let code = if status.ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((code, Json(json!({"reload": status}))).into_response())
}
