//! Webhooks: every request that is not the admin API, health or metrics.
//!
//! Order matters, and is the contract: find the route (404/405), read the body within the limit
//! (413), verify the declared auth (401), parse the body (400/415), work out the idempotency key
//! (422), then start the run. Nothing is stored before the run is; a 2xx is sent only after the
//! run is committed. What the trigger makes of a request (its body, the headers a run sees,
//! its idempotency key) is decided in `triggers::webhook`; this is the HTTP around it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::definitions::model::ConfigDef;
use crate::definitions::model::common::Duration as DefDuration;
use crate::definitions::model::trigger::{RespondMode, Trigger, WebhookAuth};
use crate::engine::{ReplyWaiter, StartRun, Started, SyncReply, Trigger as RunTrigger};
use crate::triggers::webhook::{self, BodyError, BodyErrorKind, KeyError};
use crate::triggers::webhook_auth::AuthError;

pub async fn webhook(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let engine = &state.engine;
    let registry = engine.registry();
    let path = normalize_path(uri.path());
    let Some(found) = registry.route(method.as_str(), &path) else {
        let e = if registry.path_exists(&path) {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} does not accept {method}"),
            )
        } else {
            ApiError::not_found(format!("no webhook at {method} {path}"))
        };
        return counted(e.into_response(), NO_WORKFLOW.clone(), started, None);
    };
    let wf = found.route.workflow.clone();
    let Trigger::Webhook(trigger) = &wf.workflow.triggers[found.route.trigger] else {
        return ApiError::not_found("no webhook here").into_response();
    };
    let finish = |r: Response| counted(r, wf.metric_id.clone(), started, Some(engine.as_ref()));

    let bytes = match read_body(&registry.config, &headers, body).await {
        Ok(b) => b,
        Err(r) => return finish(r),
    };
    let verified = match &wf.verifiers[found.route.trigger] {
        Some(v) => match v.verify(
            &headers,
            &bytes,
            jiff::Timestamp::from_millisecond(engine.now())
                .unwrap_or_else(|_| jiff::Timestamp::now()),
        ) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::info!(workflow = %wf.id, path = %path, error = %e, "webhook refused: authentication");
                return finish(unauthorized(&e, trigger.auth.as_ref()));
            }
        },
        None => None,
    };
    let body_value = match webhook::parse_body(&headers, &bytes) {
        Ok(v) => v,
        Err(e) => return finish(body_refused(e)),
    };
    let trigger_input = RunTrigger::Webhook {
        method: method.as_str().to_owned(),
        path: path.clone(),
        body: body_value,
        headers: webhook::visible_headers(trigger.auth.as_ref(), &headers),
        query: webhook::query(uri.query()),
        params: found.params,
    };
    let idempotency_key = match &trigger.idempotency_key {
        Some(tmpl) => {
            let context = trigger_input.clone().into_context();
            match webhook::idempotency_key(tmpl, &registry.templates, &context) {
                Ok(k) => Some(k),
                Err(e) => return finish(no_key(e)),
            }
        }
        // The Standard Webhooks message id is the sender's own idempotency key.
        None => verified.and_then(|v| v.message_id),
    };
    let sync = trigger.respond == RespondMode::Sync;
    let started_run = match engine
        .start(StartRun {
            workflow: wf.clone(),
            trigger: trigger_input,
            idempotency_key,
            want_reply: sync,
        })
        .await
    {
        Ok(s) => s,
        Err(e) => return finish(ApiError::engine(e).into_response()),
    };
    metrics::counter!("herald_runs_started_total", "workflow" => wf.metric_id.clone(), "trigger" => "webhook").increment(u64::from(!started_run.duplicate));
    finish(answer(&state, started_run, sync, trigger.timeout).await)
}

/// The body, within `webhooks.body_limit` and `server.body_timeout`.
async fn read_body(
    config: &ConfigDef,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, Response> {
    let limit = config.webhooks.body_limit.0 as usize;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large(limit));
    }
    let body_timeout = config.server.body_timeout;
    match tokio::time::timeout(body_timeout.as_std(), axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(too_large(limit)),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the body did not arrive within {body_timeout} (server.body_timeout)"),
        )
        .into_response()),
    }
}

fn unauthorized(e: &AuthError, auth: Option<&WebhookAuth>) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()).into_response();
    // RFC 9110 asks every 401 to name the scheme it wants.
    let challenge = match auth {
        Some(WebhookAuth::Bearer(_)) => "Bearer",
        _ => "Signature",
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(challenge),
    );
    resp
}

fn body_refused(e: BodyError) -> Response {
    let status = match e.kind {
        BodyErrorKind::Malformed => StatusCode::BAD_REQUEST,
        BodyErrorKind::UnsupportedType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
    };
    ApiError::new(status, e.code, e.message).into_response()
}

fn no_key(e: KeyError) -> Response {
    let message = match e {
        KeyError::Empty => "the idempotency key is empty for this request".to_owned(),
        KeyError::Failed(m) => format!("the idempotency key could not be computed: {m}"),
    };
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing_idempotency_key",
        message,
    )
    .into_response()
}

/// `202` (or `200` for a repeated key) with the run's id; for `respond: sync`, the run's reply,
/// or `504` when there is none within the trigger's `timeout`.
async fn answer(state: &AppState, started: Started, sync: bool, timeout: DefDuration) -> Response {
    if !sync {
        let (status, word) = if started.duplicate {
            (StatusCode::OK, "duplicate")
        } else {
            (StatusCode::ACCEPTED, "accepted")
        };
        return (
            status,
            axum::Json(json!({"run_id": started.run_id, "status": word})),
        )
            .into_response();
    }
    let reply = wait_for_reply(state, &started.run_id, started.reply, timeout.as_std()).await;
    match reply {
        Some(r) => reply_response(r, &started.run_id, started.duplicate),
        None => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "no reply within {timeout}; the run ({}) goes on",
                started.run_id
            ),
        )
        .into_response(),
    }
}

/// Waits for a sync run's reply: notified in-process when this process runs the step, and
/// read from the store otherwise (the run may resume on another process after a wait).
/// Dropping the waiter, on every way out, unregisters this caller.
async fn wait_for_reply(
    state: &AppState,
    run_id: &str,
    waiter: Option<ReplyWaiter>,
    timeout: Duration,
) -> Option<SyncReply> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut waiter = waiter?;
    loop {
        let poll = tokio::time::sleep(
            Duration::from_millis(250)
                .min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        );
        tokio::select! {
            r = &mut waiter.rx => match r {
                Ok(reply) => return Some(reply),
                Err(_) => break,
            },
            _ = poll => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        if let Ok(Some(run)) = state.engine.store.run(run_id).await {
            if let Some(r) = &run.response {
                return Some(SyncReply::from_value(r));
            }
            if run.status.is_finished() {
                return Some(SyncReply::from_finished(
                    run_id,
                    run.status,
                    &run.context,
                    run.error.as_deref(),
                ));
            }
        }
    }
    // The sender was dropped without a reply: read the outcome once more.
    match state.engine.store.run(run_id).await {
        Ok(Some(run)) if run.response.is_some() => run.response.as_ref().map(SyncReply::from_value),
        Ok(Some(run)) if run.status.is_finished() => Some(SyncReply::from_finished(
            run_id,
            run.status,
            &run.context,
            run.error.as_deref(),
        )),
        _ => None,
    }
}

fn reply_response(reply: SyncReply, run_id: &str, duplicate: bool) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let mut resp = match &reply.body {
        Value::String(text) => (status, text.clone()).into_response(),
        Value::Null => status.into_response(),
        other => (status, axum::Json(other.clone())).into_response(),
    };
    for (k, v) in &reply.headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::try_from(k.as_str()),
            header::HeaderValue::try_from(v.as_str()),
        ) {
            resp.headers_mut().insert(name, value);
        }
    }
    if let Ok(v) = header::HeaderValue::try_from(run_id) {
        resp.headers_mut().insert("x-herald-run-id", v);
    }
    if duplicate {
        resp.headers_mut().insert(
            "x-herald-duplicate",
            header::HeaderValue::from_static("true"),
        );
    }
    resp
}

fn too_large(limit: usize) -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the body is larger than the limit of {limit} bytes"),
    )
    .into_response()
}

/// `/hooks/x/` and `/hooks/x` are the same webhook.
pub(crate) fn normalize_path(path: &str) -> String {
    if path.len() > 1 {
        path.trim_end_matches('/').to_owned()
    } else {
        path.to_owned()
    }
}

/// Counts the response, and how long it took, for `/metrics`: "chat latency over 3 s" is an
/// alert on `herald_webhook_duration_seconds` of one workflow. The workflow label is bounded by
/// the definitions (`-` for paths that match none). A workflow's responses are also counted
/// for `webhook_responses` alerts, in memory: the alert loop writes them.
fn counted(
    resp: Response,
    workflow: Arc<str>,
    started: std::time::Instant,
    engine: Option<&crate::engine::Engine>,
) -> Response {
    let code = resp.status().as_u16();
    if let Some(engine) = engine {
        engine.webhook_responses.add(&workflow, code, engine.now());
    }
    let status = code.to_string();
    metrics::counter!("herald_webhook_responses_total", "workflow" => workflow.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("herald_webhook_duration_seconds", "workflow" => workflow)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// The workflow label of a request that matched no workflow.
static NO_WORKFLOW: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "-".into());
