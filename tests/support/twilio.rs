//! A stand-in for Twilio's REST API on 127.0.0.1, answering as Twilio's documentation says:
//! `POST /2010-04-01/Accounts/{sid}/Messages.json` (form body, Basic auth) answers `201` with
//! the message resource, or `{code, message, more_info, status}` with Twilio's error codes:
//! 20003 for bad credentials (401), 21604 without `To`, 21211 for a `To` that is not a phone
//! number, 21610 for a recipient who replied STOP, 20429 when rate limited (429).
//! `GET /2010-04-01/Accounts/{sid}.json` answers the account, `active` unless suspended.

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

pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "auth-token-0123";
pub const API_KEY: &str = "SK0123456789abcdef0123456789abcdef";
pub const API_SECRET: &str = "api-secret-0123";

/// One message the fake accepted or refused.
#[derive(Debug, Clone)]
pub struct Posted {
    /// The Basic auth user name.
    pub user: String,
    pub fields: Vec<(String, String)>,
}

impl Posted {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    posted: Vec<Posted>,
    /// Numbers that replied STOP: sending to them is error 21610.
    stopped: Vec<String>,
    /// Answer the next n sends with 429 / 20429.
    rate_limited: usize,
    /// Answer the next n sends with 500.
    failing: usize,
    suspended: bool,
}

pub struct FakeTwilio {
    shared: Arc<Mutex<Shared>>,
    server: ServerThread,
}

impl FakeTwilio {
    pub async fn start() -> FakeTwilio {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = Router::new()
            .route("/2010-04-01/Accounts/{file}", get(account))
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                post(create_message),
            )
            .with_state(shared.clone());
        let server = ServerThread::start("fake-twilio", move |listener| async move {
            let _ = axum::serve(listener, app).await;
        })
        .await;
        FakeTwilio { shared, server }
    }

    /// What `api_base` should be.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    pub fn posted(&self) -> Vec<Posted> {
        self.shared.lock().unwrap().posted.clone()
    }

    pub fn stop_recipient(&self, number: &str) {
        self.shared.lock().unwrap().stopped.push(number.to_owned());
    }

    pub fn rate_limit_next(&self, n: usize) {
        self.shared.lock().unwrap().rate_limited = n;
    }

    pub fn fail_next(&self, n: usize) {
        self.shared.lock().unwrap().failing = n;
    }

    pub fn suspend(&self) {
        self.shared.lock().unwrap().suspended = true;
    }
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}

/// Twilio's answer to missing or wrong credentials.
fn refused() -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    r.headers_mut().insert(
        "www-authenticate",
        "Basic realm=\"Twilio API\"".parse().unwrap(),
    );
    r
}

/// The Basic auth user, when the credentials are the account's or its API key's.
fn authenticate(headers: &HeaderMap) -> Option<String> {
    let encoded = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    let valid = (user == ACCOUNT_SID && password == AUTH_TOKEN)
        || (user == API_KEY && password == API_SECRET);
    valid.then(|| user.to_owned())
}

async fn account(
    State(shared): State<Arc<Mutex<Shared>>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    if authenticate(&headers).is_none() {
        return refused();
    }
    if file != format!("{ACCOUNT_SID}.json") {
        return error(
            StatusCode::NOT_FOUND,
            20404,
            "The requested resource was not found",
        );
    }
    let status = if shared.lock().unwrap().suspended {
        "suspended"
    } else {
        "active"
    };
    axum::Json(json!({"sid": ACCOUNT_SID, "status": status, "type": "Full"})).into_response()
}

async fn create_message(
    State(shared): State<Arc<Mutex<Shared>>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(user) = authenticate(&headers) else {
        return refused();
    };
    if sid != ACCOUNT_SID {
        return error(
            StatusCode::NOT_FOUND,
            20404,
            "The requested resource was not found",
        );
    }
    let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let posted = Posted { user, fields };
    let mut state = shared.lock().unwrap();
    state.posted.push(posted.clone());
    let n = state.posted.len();
    if state.rate_limited > 0 {
        state.rate_limited -= 1;
        return error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
    }
    if state.failing > 0 {
        state.failing -= 1;
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            20500,
            "Internal Server Error",
        );
    }
    let Some(to) = posted.field("To") else {
        return error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.",
        );
    };
    let is_e164 =
        to.starts_with('+') && to.len() > 8 && to[1..].chars().all(|c| c.is_ascii_digit());
    if !is_e164 {
        return error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("Invalid 'To' Phone Number: {to}"),
        );
    }
    if state.stopped.iter().any(|s| s == to) {
        return error(
            StatusCode::BAD_REQUEST,
            21610,
            "Attempt to send to unsubscribed recipient",
        );
    }
    if posted.field("From").is_none() && posted.field("MessagingServiceSid").is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' or 'MessagingServiceSid' parameter is required to send a message",
        );
    }
    let message_sid = format!("SM{n:032x}");
    let resource: Value = json!({
        "account_sid": ACCOUNT_SID,
        "api_version": "2010-04-01",
        "body": posted.field("Body"),
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": posted.field("From"),
        "messaging_service_sid": posted.field("MessagingServiceSid"),
        "num_media": "0",
        "num_segments": "1",
        "price": null,
        "sid": message_sid,
        "status": "queued",
        "to": to,
        "uri": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{message_sid}.json"),
    });
    (StatusCode::CREATED, axum::Json(resource)).into_response()
}
