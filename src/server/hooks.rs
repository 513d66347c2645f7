//! Webhooks: every request that is not the admin API, health or metrics.
//!
//! Order matters, and is the contract: find the route (404/405), read the body within the limit
//! (413), verify the declared auth (401), parse the body (400/415), work out the idempotency key
//! (422), then start the run. Nothing is stored before the run is; a 2xx is sent only after the
//! run is committed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{ApiError, AppState};
use crate::definitions::model::trigger::{RespondMode, Trigger, WebhookAuth};
use crate::engine::{ReplyWaiter, StartRun, SyncReply, Trigger as RunTrigger};

/// Headers never copied into a run's context: credentials and signatures stay out of the
/// database.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "stripe-signature",
    "webhook-signature",
    "svix-signature",
];

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
        return counted(e.into_response(), NO_WORKFLOW.clone(), started);
    };
    let wf = found.route.workflow.clone();
    let Trigger::Webhook(trigger) = &wf.workflow.triggers[found.route.trigger] else {
        return ApiError::not_found("no webhook here").into_response();
    };
    let limit = registry.config.webhooks.body_limit.0 as usize;

    let finish = |r: Response| counted(r, wf.metric_id.clone(), started);

    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return finish(too_large(limit));
    }
    let body_timeout = registry.config.server.body_timeout;
    let bytes = match tokio::time::timeout(body_timeout.as_std(), axum::body::to_bytes(body, limit))
        .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return finish(too_large(limit)),
        Err(_) => {
            return finish(
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("the body did not arrive within {body_timeout} (server.body_timeout)"),
                )
                .into_response(),
            );
        }
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
                let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
                    .into_response();
                // RFC 9110 asks every 401 to name the scheme it wants.
                let challenge = match &trigger.auth {
                    Some(WebhookAuth::Bearer(_)) => "Bearer",
                    _ => "Signature",
                };
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static(challenge),
                );
                return finish(resp);
            }
        },
        None => None,
    };

    let body_value = match parse_body(&headers, &bytes) {
        Ok(v) => v,
        Err(e) => return finish(e.into_response()),
    };

    let mut hidden: Vec<String> = SECRET_HEADERS.iter().map(|s| (*s).to_owned()).collect();
    match &trigger.auth {
        Some(WebhookAuth::ApiKey(a)) => hidden.push(a.header.to_ascii_lowercase()),
        Some(WebhookAuth::HmacSha256(h)) => hidden.push(h.header.to_ascii_lowercase()),
        _ => {}
    }
    let mut header_map = Map::new();
    for (name, value) in &headers {
        let name = name.as_str();
        if hidden.iter().any(|h| h == name) {
            continue;
        }
        if let Ok(v) = value.to_str() {
            header_map.insert(name.to_owned(), Value::String(v.to_owned()));
        }
    }
    let query: Map<String, Value> = uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect()
        })
        .unwrap_or_default();
    let params = found.params;
    let trigger_input = RunTrigger::Webhook {
        method: method.as_str().to_owned(),
        path: path.clone(),
        body: body_value,
        headers: header_map,
        query,
        params,
    };

    let idempotency_key = match &trigger.idempotency_key {
        Some(tmpl) => match registry.templates.render_str(
            tmpl.as_str(),
            &crate::templates::context(&trigger_input.clone().into_context()),
        ) {
            Ok(k) if !k.trim().is_empty() => Some(k.trim().to_owned()),
            Ok(_) => {
                return finish(
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "missing_idempotency_key",
                        "the idempotency key is empty for this request",
                    )
                    .into_response(),
                );
            }
            Err(e) => {
                return finish(
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "missing_idempotency_key",
                        format!("the idempotency key could not be computed: {}", e.message),
                    )
                    .into_response(),
                );
            }
        },
        // The Standard Webhooks message id is the sender's own idempotency key.
        None => verified.and_then(|v| v.message_id),
    };

    let sync = trigger.respond == RespondMode::Sync;
    let started = match engine
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
    metrics::counter!("herald_runs_started_total", "workflow" => wf.metric_id.clone(), "trigger" => "webhook").increment(u64::from(!started.duplicate));

    if !sync {
        let (status, word) = if started.duplicate {
            (StatusCode::OK, "duplicate")
        } else {
            (StatusCode::ACCEPTED, "accepted")
        };
        return finish(
            (
                status,
                axum::Json(json!({"run_id": started.run_id, "status": word})),
            )
                .into_response(),
        );
    }
    let reply = wait_for_reply(
        &state,
        &started.run_id,
        started.reply,
        trigger.timeout.as_std(),
    )
    .await;
    finish(match reply {
        Some(r) => reply_response(r, &started.run_id, started.duplicate),
        None => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "no reply within {}; the run ({}) goes on",
                trigger.timeout, started.run_id
            ),
        )
        .into_response(),
    })
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
pub fn normalize_path(path: &str) -> String {
    if path.len() > 1 {
        path.trim_end_matches('/').to_owned()
    } else {
        path.to_owned()
    }
}

/// JSON, form-encoded and text bodies become the run's `body`; anything else is refused.
///
/// An empty body is `{}` when the request names no type (a bare ping), so `body.x` is an
/// undefined field like any other; a request that says it sends JSON and sends nothing is
/// refused. Form and text bodies must be UTF-8: a lossy decode would change what the sender
/// sent (and what it signed).
pub(crate) fn parse_body(headers: &HeaderMap, bytes: &[u8]) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = content_type.is_empty()
        || content_type == "application/json"
        || content_type.ends_with("+json");
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return match content_type.as_str() {
            "" => Ok(Value::Object(Map::new())),
            t if is_json => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "empty_body",
                format!(
                    "the body is empty, but its content type is `{t}`; send a JSON document, or no content type"
                ),
            )),
            "application/x-www-form-urlencoded" => Ok(Value::Object(Map::new())),
            _ => Ok(Value::String(String::new())),
        };
    }
    if is_json {
        return serde_json::from_slice(bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {e}"),
            )
        });
    }
    if content_type == "application/x-www-form-urlencoded" {
        return parse_form(bytes).map(Value::Object);
    }
    if content_type.starts_with("text/") {
        return std::str::from_utf8(bytes)
            .map(|s| Value::String(s.to_owned()))
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_body",
                    "the text body is not valid UTF-8",
                )
            });
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("`{content_type}` bodies are not accepted; send JSON, form data or text"),
    ))
}

/// Counts the response, and how long it took, for `/metrics`: "chat latency over 3 s" is an
/// alert on `herald_webhook_duration_seconds` of one workflow. The workflow label is bounded by
/// the definitions (`-` for paths that match none).
fn counted(resp: Response, workflow: Arc<str>, started: std::time::Instant) -> Response {
    let status = resp.status().as_u16().to_string();
    metrics::counter!("herald_webhook_responses_total", "workflow" => workflow.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("herald_webhook_duration_seconds", "workflow" => workflow)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// The workflow label of a request that matched no workflow.
static NO_WORKFLOW: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "-".into());

/// A form body, refusing any name or value that is not UTF-8 once decoded (where
/// `form_urlencoded` would replace the bytes silently).
fn parse_form(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    fn decode(part: &[u8]) -> Option<String> {
        let mut out = Vec::with_capacity(part.len());
        let mut i = 0;
        while i < part.len() {
            match part[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < part.len() => {
                    let hex = std::str::from_utf8(&part[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match hex {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        // Not an escape: kept as written, as browsers do.
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).ok()
    }
    let mut map = Map::new();
    for (n, pair) in bytes.split(|b| *b == b'&').enumerate() {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        let (Some(name), Some(value)) = (decode(name), decode(value)) else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_body",
                format!("field {} of the form body is not UTF-8 once decoded", n + 1),
            ));
        };
        map.insert(name, Value::String(value));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, t.parse().unwrap());
        h
    }

    #[test]
    fn empty_bodies_are_decided_by_their_type() {
        assert_eq!(parse_body(&HeaderMap::new(), b"").unwrap(), json!({}));
        let e = parse_body(&typed("application/json"), b"  ").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "empty_body"));
        assert_eq!(
            parse_body(&typed("application/x-www-form-urlencoded"), b"").unwrap(),
            json!({})
        );
        assert_eq!(parse_body(&typed("text/plain"), b"").unwrap(), json!(""));
    }

    #[test]
    fn form_bodies_decode_exactly_or_are_refused() {
        let ok = parse_body(
            &typed("application/x-www-form-urlencoded"),
            b"From=%2B13035550123&Body=caf%C3%A9+ok&odd=100%&flag",
        )
        .unwrap();
        assert_eq!(
            ok,
            json!({"From": "+13035550123", "Body": "café ok", "odd": "100%", "flag": ""})
        );
        let e = parse_body(
            &typed("application/x-www-form-urlencoded"),
            b"a=1&Body=%FF%FE",
        )
        .unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "malformed_body"));
        assert!(e.message.contains("field 2"), "{}", e.message);
    }
}
