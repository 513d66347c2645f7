//! Stand-ins for two HTTP e-mail APIs on 127.0.0.1, answering as their documentation says.
//!
//! Mailgun: `POST /v3/{domain}/messages` (form, Basic `api:KEY`) answers
//! `{"id": "<...>", "message": "Queued. Thank you."}`; a wrong key is a plain-text `401
//! Forbidden`, an unknown domain `404 {"message": "Domain not found: ..."}`, a bad recipient
//! `400 {"message": "'to' parameter is not a valid address..."}`. `GET /v3/domains/{domain}`
//! answers the domain with its `state`.
//!
//! Resend: `POST /emails` (JSON, Bearer key, `Idempotency-Key`) answers `{"id"}`; the same key
//! with the same body answers the first id again, with another body `409
//! invalid_idempotent_request`; errors are `{"statusCode", "name", "message"}`, 429
//! `rate_limit_exceeded` with `retry-after`. `GET /domains` answers `restricted_api_key` (401)
//! for a sending-only key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::ServerThread;

pub const MAILGUN_KEY: &str = "key-0123456789abcdef";
pub const MAILGUN_DOMAIN: &str = "mg.example.com";
pub const RESEND_KEY: &str = "re_full_access_key";
pub const RESEND_SENDING_KEY: &str = "re_sending_only_key";

#[derive(Default)]
struct MailgunState {
    posted: Vec<Vec<(String, String)>>,
    unverified: bool,
}

pub struct FakeMailgun {
    state: Arc<Mutex<MailgunState>>,
    server: ServerThread,
}

impl FakeMailgun {
    pub async fn start() -> FakeMailgun {
        let state = Arc::new(Mutex::new(MailgunState::default()));
        let app = Router::new()
            .route("/v3/{domain}/messages", post(mailgun_send))
            .route("/v3/domains/{domain}", get(mailgun_domain))
            .with_state(state.clone());
        let server = ServerThread::start("fake-mailgun", move |listener| async move {
            let _ = axum::serve(listener, app).await;
        })
        .await;
        FakeMailgun { state, server }
    }

    pub fn api_base(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    pub fn posted(&self) -> Vec<Vec<(String, String)>> {
        self.state.lock().unwrap().posted.clone()
    }

    pub fn unverify_domain(&self) {
        self.state.lock().unwrap().unverified = true;
    }
}

fn mailgun_authorized(headers: &HeaderMap) -> bool {
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("api:{MAILGUN_KEY}"));
    headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(format!("Basic {expected}").as_str())
}

fn forbidden() -> Response {
    (StatusCode::UNAUTHORIZED, "Forbidden").into_response()
}

fn domain_not_found(domain: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"message": format!("Domain not found: {domain}")})),
    )
        .into_response()
}

async fn mailgun_send(
    State(state): State<Arc<Mutex<MailgunState>>>,
    Path(domain): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !mailgun_authorized(&headers) {
        return forbidden();
    }
    if domain != MAILGUN_DOMAIN {
        return domain_not_found(&domain);
    }
    let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let mut state = state.lock().unwrap();
    state.posted.push(fields.clone());
    let to = fields
        .iter()
        .find(|(k, _)| k == "to")
        .map(|(_, v)| v.as_str());
    if !to.is_some_and(|t| t.contains('@')) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": "'to' parameter is not a valid address. please check documentation"})),
        )
            .into_response();
    }
    let id = fields
        .iter()
        .find(|(k, _)| k == "h:Message-Id")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| format!("<{}.generated@{MAILGUN_DOMAIN}>", state.posted.len()));
    axum::Json(json!({"id": id, "message": "Queued. Thank you."})).into_response()
}

async fn mailgun_domain(
    State(state): State<Arc<Mutex<MailgunState>>>,
    Path(domain): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !mailgun_authorized(&headers) {
        return forbidden();
    }
    if domain != MAILGUN_DOMAIN {
        return domain_not_found(&domain);
    }
    let state_name = if state.lock().unwrap().unverified {
        "unverified"
    } else {
        "active"
    };
    axum::Json(json!({"domain": {"name": domain, "state": state_name}})).into_response()
}

#[derive(Default)]
struct ResendState {
    sent: Vec<Value>,
    /// Idempotency key → (body, id).
    keys: HashMap<String, (Value, String)>,
    rate_limited: usize,
}

pub struct FakeResend {
    state: Arc<Mutex<ResendState>>,
    server: ServerThread,
}

impl FakeResend {
    pub async fn start() -> FakeResend {
        let state = Arc::new(Mutex::new(ResendState::default()));
        let app = Router::new()
            .route("/emails", post(resend_send))
            .route("/domains", get(resend_domains))
            .with_state(state.clone());
        let server = ServerThread::start("fake-resend", move |listener| async move {
            let _ = axum::serve(listener, app).await;
        })
        .await;
        FakeResend { state, server }
    }

    pub fn api_base(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The bodies of the e-mails sent (a replay under a known key is not sent again).
    pub fn sent(&self) -> Vec<Value> {
        self.state.lock().unwrap().sent.clone()
    }

    pub fn rate_limit_next(&self, n: usize) {
        self.state.lock().unwrap().rate_limited = n;
    }
}

fn resend_error(status: StatusCode, name: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"statusCode": status.as_u16(), "name": name, "message": message})),
    )
        .into_response()
}

fn resend_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

async fn resend_send(
    State(state): State<Arc<Mutex<ResendState>>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    match resend_key(&headers) {
        None => {
            return resend_error(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "Missing API key in the authorization header.",
            );
        }
        Some(k) if k != RESEND_KEY && k != RESEND_SENDING_KEY => {
            return resend_error(
                StatusCode::FORBIDDEN,
                "invalid_api_key",
                "API key is invalid",
            );
        }
        Some(_) => {}
    }
    let mut state = state.lock().unwrap();
    if state.rate_limited > 0 {
        state.rate_limited -= 1;
        let mut r = resend_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "Too many requests. You can only make 2 requests per second.",
        );
        r.headers_mut().insert("retry-after", "1".parse().unwrap());
        return r;
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(key) = &key
        && let Some((first, id)) = state.keys.get(key)
    {
        if *first == body {
            return axum::Json(json!({"id": id})).into_response();
        }
        return resend_error(
            StatusCode::CONFLICT,
            "invalid_idempotent_request",
            "Same idempotency key used with a different request payload.",
        );
    }
    let valid_to = body["to"].as_array().is_some_and(|to| {
        !to.is_empty()
            && to
                .iter()
                .all(|t| t.as_str().is_some_and(|t| t.contains('@')))
    });
    if !valid_to {
        return resend_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            "Invalid `to` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format.",
        );
    }
    state.sent.push(body.clone());
    let id = format!("4ef9a417-02e9-4d39-ad75-9611e0fcc{:03}", state.sent.len());
    if let Some(key) = key {
        state.keys.insert(key, (body, id.clone()));
    }
    axum::Json(json!({"id": id})).into_response()
}

async fn resend_domains(headers: HeaderMap) -> Response {
    match resend_key(&headers) {
        Some(RESEND_KEY) => axum::Json(json!({"object": "list", "data": []})).into_response(),
        Some(RESEND_SENDING_KEY) => resend_error(
            StatusCode::UNAUTHORIZED,
            "restricted_api_key",
            "This API key is restricted to only send emails",
        ),
        _ => resend_error(
            StatusCode::FORBIDDEN,
            "invalid_api_key",
            "API key is invalid",
        ),
    }
}
