//! The operator's side of the admin API: contacts (find, edit, erase), the outbox (look, retry,
//! withdraw), cancelling runs in bulk, counts, running a cron workflow now, and retention.
//! Behind the same `x-api-key` check as the rest of `/api`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ApiError, AppState};
use crate::definitions::model::Trigger as TriggerDef;
use crate::engine::{StartRun, Trigger};
use crate::store::{
    Contact, ContactFilter, ContactPatch, ContactUpsert, MessageChange, OutboxFilter, OutboxRecord,
    OutboxStatus, RunSelection, RunStatus, StoreError,
};

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| bad("invalid_query", e.body_text()))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| bad("malformed_json", e.body_text()))
}

/// `contacts` of the definitions in force: the region phone numbers are read in, and the
/// attributes' types.
fn contacts_config(state: &AppState) -> crate::definitions::model::config::ContactsConfig {
    state.engine.registry().config.contacts.clone()
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        other => ApiError::unavailable(other),
    }
}

/// `name:value` as a label filter.
fn label(text: Option<String>) -> Result<Option<(String, String)>, ApiError> {
    text.map(|l| {
        l.split_once(':')
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| {
                bad(
                    "invalid_label",
                    format!("`{l}` is not a label: write name:value"),
                )
            })
    })
    .transpose()
}

fn run_status(text: Option<&str>) -> Result<Option<RunStatus>, ApiError> {
    text.map(|s| {
        RunStatus::parse(s).ok_or_else(|| {
            bad(
                "invalid_status",
                format!("unknown status `{s}`; use pending, running, waiting, completed, failed or cancelled"),
            )
        })
    })
    .transpose()
}

// --- Contacts ----------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct ContactsQuery {
    q: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    before: Option<i64>,
}

pub async fn list_contacts(
    State(state): State<Arc<AppState>>,
    q: Result<Query<ContactsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let contacts = state
        .engine
        .store
        .list_contacts(&ContactFilter {
            query: q.q.filter(|s| !s.trim().is_empty()),
            status: q.status,
            created_before: q.before,
            limit,
        })
        .await
        .map_err(store_error)?;
    let next = (contacts.len() as i64 == limit)
        .then(|| contacts.last().map(|c| c.created_at))
        .flatten();
    Ok(Json(json!({"contacts": contacts, "next_before": next})))
}

async fn contact_or_404(state: &AppState, id: &str) -> Result<Contact, ApiError> {
    state
        .engine
        .store
        .contact(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no contact {id}")))
}

pub async fn get_contact(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"contact": contact_or_404(&state, &id).await?})))
}

/// Reads and checks a contact's fields from a request body, as `contacts` in herald.yaml
/// says: the region of a phone number without a country code, and the attributes' types.
fn patch_from(
    m: &Map<String, Value>,
    contacts: &crate::definitions::model::config::ContactsConfig,
) -> Result<ContactPatch, ApiError> {
    crate::engine::contact::patch_from_json(m, contacts).map_err(|e| bad("invalid_contact", e))
}

pub async fn create_contact(
    State(state): State<Arc<AppState>>,
    b: Result<Json<Map<String, Value>>, JsonRejection>,
) -> Result<Response, ApiError> {
    let m = body(b)?;
    let p = patch_from(&m, &contacts_config(&state))?;
    let (email, phone) = (p.email.clone().flatten(), p.phone.clone().flatten());
    if email.is_none() && phone.is_none() {
        return Err(bad(
            "invalid_contact",
            "a contact needs an `email` or a `phone`",
        ));
    }
    let upsert = ContactUpsert {
        new_id: crate::engine::new_id(),
        email,
        phone,
        first_name: p.first_name.flatten(),
        last_name: p.last_name.flatten(),
        status: p.status.flatten(),
        timezone: p.timezone.flatten(),
        attributes: p.attributes,
        addresses: Vec::new(),
        now: state.engine.now(),
        memberships: Vec::new(),
    };
    let stored = state
        .engine
        .store
        .insert_events(&[], &[], std::slice::from_ref(&upsert), &[])
        .await
        .map_err(store_error)?;
    let contact = stored.into_iter().next();
    let created = contact.as_ref().is_some_and(|c| c.id == upsert.new_id);
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(json!({"contact": contact, "created": created}))).into_response())
}

pub async fn update_contact(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    b: Result<Json<Map<String, Value>>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let patch = patch_from(&body(b)?, &contacts_config(&state))?;
    let c = state
        .engine
        .store
        .update_contact(&id, &patch, state.engine.now())
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no contact {id}")))?;
    if c.email.is_none() && c.phone.is_none() {
        tracing::warn!(contact = %id, "a contact was left with neither e-mail nor phone");
    }
    Ok(Json(json!({"contact": c})))
}

pub async fn delete_contact(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state
        .engine
        .store
        .delete_contact(&id)
        .await
        .map_err(store_error)?
    {
        return Err(ApiError::not_found(format!("no contact {id}")));
    }
    tracing::info!(contact = %id, "contact deleted by an operator");
    Ok(Json(json!({
        "deleted": id,
        "note": "the contact row is gone and no run refers to it; copies in past runs' contexts and messages stay until retention removes those runs"
    })))
}

// --- Outbox ------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct OutboxQuery {
    status: Option<String>,
    channel: Option<String>,
    run: Option<String>,
    limit: Option<i64>,
    before: Option<i64>,
}

fn message_json(m: &OutboxRecord) -> Value {
    json!({
        "id": m.id, "run_id": m.run_id, "workflow": m.workflow_id, "step": m.step_id,
        "channel": m.channel, "to": m.recipient, "subject": m.subject, "status": m.status,
        "category": m.category, "attempts": m.attempts, "max_attempts": m.max_attempts,
        "next_attempt_at": m.next_attempt_at, "provider_id": m.provider_id,
        "last_error": m.last_error, "created_at": m.created_at, "sent_at": m.sent_at,
    })
}

pub async fn list_outbox(
    State(state): State<Arc<AppState>>,
    q: Result<Query<OutboxQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            OutboxStatus::parse(s).ok_or_else(|| {
                bad(
                    "invalid_status",
                    format!("unknown status `{s}`; use pending, sending, sent, failed, suppressed or cancelled"),
                )
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let messages = state
        .engine
        .store
        .list_messages(&OutboxFilter {
            status,
            channel: q.channel,
            run_id: q.run,
            created_before: q.before,
            limit,
        })
        .await
        .map_err(store_error)?;
    let next = (messages.len() as i64 == limit)
        .then(|| messages.last().map(|m| m.created_at))
        .flatten();
    Ok(Json(json!({
        "messages": messages.iter().map(message_json).collect::<Vec<_>>(),
        "next_before": next,
    })))
}

pub async fn get_message(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = state
        .engine
        .store
        .message(&id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no message {id}")))?;
    let mut v = message_json(&m);
    v["body"] = Value::String(m.body.clone());
    Ok(Json(json!({"message": v})))
}

fn changed(id: &str, change: MessageChange, what: &str) -> Result<Json<Value>, ApiError> {
    match change {
        MessageChange::Done(m) => Ok(Json(json!({"message": message_json(&m)}))),
        MessageChange::NotFound => Err(ApiError::not_found(format!("no message {id}"))),
        MessageChange::WrongState(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_state",
            match (what, status) {
                ("retry", OutboxStatus::Suppressed) => format!(
                    "message {id} was suppressed because its recipient opted out, unsubscribed, bounced or complained; it is not sent again"
                ),
                ("retry", s) => format!(
                    "message {id} is {}; only failed messages can be retried",
                    s.as_str()
                ),
                (_, OutboxStatus::Sending) => {
                    format!("message {id} is being delivered right now and cannot be recalled")
                }
                (_, s) => format!(
                    "message {id} is {}; only pending messages can be cancelled",
                    s.as_str()
                ),
            },
        )),
    }
}

pub async fn retry_message(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let change = state
        .engine
        .store
        .retry_message(&id, state.engine.now())
        .await
        .map_err(store_error)?;
    state.engine.outbox_ready.notify_waiters();
    changed(&id, change, "retry")
}

pub async fn cancel_message(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let change = state
        .engine
        .store
        .cancel_message(&id, state.engine.now())
        .await
        .map_err(store_error)?;
    changed(&id, change, "cancel")
}

// --- Suppressions ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionQuery {
    channel: Option<String>,
    limit: Option<i64>,
}

/// The addresses providers said not to send to any more, newest first.
pub async fn list_suppressions(
    State(state): State<Arc<AppState>>,
    query: Result<Query<SuppressionQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let list = state
        .engine
        .store
        .list_suppressions(q.channel.as_deref(), limit)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({ "suppressions": list })))
}

/// Lets an address be sent to again on a channel (the person re-subscribed with the provider).
pub async fn lift_suppression(
    State(state): State<Arc<AppState>>,
    Path((channel, address)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let address = crate::engine::suppression::address_key(&address);
    let lifted = state
        .engine
        .store
        .lift_suppression(&channel, &address)
        .await
        .map_err(store_error)?;
    if !lifted {
        return Err(ApiError::not_found(format!(
            "`{address}` is not suppressed on channel `{channel}`"
        )));
    }
    Ok(Json(
        json!({ "channel": channel, "address": address, "lifted": true }),
    ))
}

// --- Runs in bulk, counts ------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkCancel {
    workflow: Option<String>,
    contact: Option<String>,
    label: Option<String>,
    status: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

pub async fn cancel_runs(
    State(state): State<Arc<AppState>>,
    b: Result<Json<BulkCancel>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    let status = run_status(b.status.as_deref())?;
    if status.is_some_and(RunStatus::is_finished) {
        return Err(bad(
            "invalid_status",
            "only unfinished runs (pending, running, waiting) can be cancelled",
        ));
    }
    let selection = RunSelection {
        workflow_id: b.workflow,
        contact_id: b.contact,
        label: label(b.label)?,
        status,
    };
    if selection.is_empty() {
        return Err(bad(
            "missing_filter",
            "say which runs to cancel: `workflow`, `contact`, `label` (name:value) or `status`",
        ));
    }
    let n = state
        .engine
        .store
        .cancel_runs(&selection, state.engine.now(), b.dry_run)
        .await
        .map_err(store_error)?;
    if !b.dry_run {
        tracing::info!(runs = n, ?selection, "runs cancelled by an operator");
        state.engine.work_ready.notify_waiters();
    }
    Ok(Json(json!({
        if b.dry_run { "would_cancel" } else { "cancelled" }: n,
    })))
}

#[derive(Debug, Deserialize)]
pub struct CountsQuery {
    workflow: Option<String>,
}

pub async fn counts(
    State(state): State<Arc<AppState>>,
    q: Result<Query<CountsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let store = &state.engine.store;
    let runs = match &q.workflow {
        None => store.count_runs().await.map_err(store_error)?,
        Some(w) => {
            // Per workflow: counted from a listing, bounded to a generous page.
            let mut counts = std::collections::BTreeMap::new();
            for r in store
                .list_runs(&crate::store::RunFilter {
                    workflow_id: Some(w.clone()),
                    limit: 100_000,
                    ..Default::default()
                })
                .await
                .map_err(store_error)?
            {
                *counts.entry(r.status.as_str()).or_insert(0i64) += 1;
            }
            counts
                .into_iter()
                .filter_map(|(s, n)| RunStatus::parse(s).map(|s| (s, n)))
                .collect()
        }
    };
    let by_status = |pairs: Vec<(String, i64)>| -> Map<String, Value> {
        pairs.into_iter().map(|(k, v)| (k, json!(v))).collect()
    };
    let outbox = store.count_outbox().await.map_err(store_error)?;
    let contacts = store.count_contacts().await.map_err(store_error)?;
    Ok(Json(json!({
        "workflow": q.workflow,
        "runs": by_status(runs.into_iter().map(|(s, n)| (s.as_str().to_owned(), n)).collect()),
        "outbox": by_status(outbox.into_iter().map(|(s, n)| (s.as_str().to_owned(), n)).collect()),
        "contacts": by_status(contacts.into_iter().map(|(s, n)| (s.unwrap_or_else(|| "none".into()), n)).collect()),
    })))
}

// --- Cron now, retention -------------------------------------------------------------------------

pub async fn run_cron_now(
    State(state): State<Arc<AppState>>,
    Path(workflow): Path<String>,
) -> Result<Response, ApiError> {
    let engine = &state.engine;
    let wf = engine
        .registry()
        .workflows
        .get(&workflow)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no workflow `{workflow}`")))?;
    let Some(cron) = wf.workflow.triggers.iter().find_map(|t| match t {
        TriggerDef::Cron(c) => Some(c.clone()),
        _ => None,
    }) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_cron_trigger",
            format!(
                "workflow `{workflow}` has no cron trigger; start it with a webhook, an event or `call`"
            ),
        ));
    };
    let started = engine
        .start(StartRun {
            workflow: wf,
            trigger: Trigger::Cron {
                schedule: cron.schedule.clone(),
                timezone: cron.timezone.clone(),
                slot: engine.now(),
                input: cron.input.clone().unwrap_or(json!({})),
            },
            idempotency_key: Some(format!("manual:{}", crate::engine::new_id())),
            want_reply: false,
        })
        .await
        .map_err(ApiError::engine)?;
    tracing::info!(workflow = %workflow, run = %started.run_id, "cron workflow run now by an operator");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run_id": started.run_id})),
    )
        .into_response())
}

pub async fn run_retention(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let config = state.engine.registry().config.retention.clone();
    if config.runs.is_none() && config.events.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "retention_off",
            "retention is off: set `retention: { runs: 30d, events: 30d }` in herald.yaml",
        ));
    }
    let purged = crate::server::retention::run_once(&state.engine)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({"deleted": purged})))
}
