//! A stand-in for Meta's WhatsApp Cloud API on 127.0.0.1, answering as the Graph API
//! documentation says: `POST /{version}/{phone_number_id}/messages` with a Bearer token
//! answers `{"messaging_product", "contacts": [{"input", "wa_id"}], "messages": [{"id"}]}`, or
//! `{"error": {"message", "type", "code", "error_data": {"details"}, "fbtrace_id"}}`: 190 for a
//! bad token (401), 131047 for text to a person outside the 24-hour window, 130429 when
//! throttled. A `"type": "template"` message reaches anyone, if its name and language are an
//! approved template (132001 otherwise) and it gives as many header and body values as the
//! template has variables (132000 otherwise).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::ServerThread;

pub const ACCESS_TOKEN: &str = "EAAJB-test-token";
pub const PHONE_NUMBER_ID: &str = "106540352242922";

/// A template as approved in WhatsApp Manager: how many variables its header and body have.
#[derive(Clone)]
struct Approved {
    name: String,
    language: String,
    header: usize,
    body: usize,
}

#[derive(Default)]
struct Shared {
    sent: Vec<Value>,
    approved: Vec<Approved>,
    /// Numbers (digits) whose last message is older than 24 hours.
    outside_window: Vec<String>,
    throttled: usize,
}

pub struct FakeWhatsapp {
    shared: Arc<Mutex<Shared>>,
    server: ServerThread,
}

impl FakeWhatsapp {
    pub async fn start() -> FakeWhatsapp {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = Router::new()
            .route("/{version}/{number}/messages", post(send))
            .route("/{version}/{number}", get(number))
            .with_state(shared.clone());
        let server = ServerThread::start("fake-whatsapp", move |listener| async move {
            let _ = axum::serve(listener, app).await;
        })
        .await;
        FakeWhatsapp { shared, server }
    }

    pub fn api_base(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    pub fn sent(&self) -> Vec<Value> {
        self.shared.lock().unwrap().sent.clone()
    }

    pub fn close_window(&self, digits: &str) {
        self.shared
            .lock()
            .unwrap()
            .outside_window
            .push(digits.to_owned());
    }

    /// Approves template `name` in `language`, with `header` and `body` variables.
    pub fn approve_template(&self, name: &str, language: &str, header: usize, body: usize) {
        self.shared.lock().unwrap().approved.push(Approved {
            name: name.to_owned(),
            language: language.to_owned(),
            header,
            body,
        });
    }

    pub fn throttle_next(&self, n: usize) {
        self.shared.lock().unwrap().throttled = n;
    }
}

fn graph_error(status: StatusCode, code: u32, message: &str, details: Option<&str>) -> Response {
    let mut error = json!({"message": message, "type": "OAuthException", "code": code,
        "fbtrace_id": "AbCdEf123"});
    if let Some(details) = details {
        error["error_data"] = json!({"messaging_product": "whatsapp", "details": details});
    }
    (status, axum::Json(json!({"error": error}))).into_response()
}

fn check(headers: &HeaderMap, number: &str) -> Option<Response> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(ACCESS_TOKEN) {
        return Some(graph_error(
            StatusCode::UNAUTHORIZED,
            190,
            "Invalid OAuth access token - Cannot parse access token",
            None,
        ));
    }
    if number != PHONE_NUMBER_ID {
        return Some(graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "Unsupported post request. Object with ID does not exist",
            None,
        ));
    }
    None
}

async fn number(Path((_, number)): Path<(String, String)>, headers: HeaderMap) -> Response {
    if let Some(refused) = check(&headers, &number) {
        return refused;
    }
    axum::Json(json!({"display_phone_number": "15550783881", "id": PHONE_NUMBER_ID}))
        .into_response()
}

async fn send(
    State(shared): State<Arc<Mutex<Shared>>>,
    Path((_, number)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(refused) = check(&headers, &number) {
        return refused;
    }
    let mut state = shared.lock().unwrap();
    state.sent.push(body.clone());
    if body["messaging_product"] != "whatsapp" {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "(#100) The parameter messaging_product is required.",
            None,
        );
    }
    if state.throttled > 0 {
        state.throttled -= 1;
        return graph_error(
            StatusCode::BAD_REQUEST,
            130429,
            "(#130429) Rate limit hit",
            Some("Cloud API message throughput has been reached."),
        );
    }
    let to = body["to"].as_str().unwrap_or_default().to_owned();
    if body["type"] == "template" {
        if let Some(refused) = check_template(&state.approved, &body["template"]) {
            return refused;
        }
    } else if state.outside_window.contains(&to) {
        return graph_error(
            StatusCode::BAD_REQUEST,
            131047,
            "(#131047) Re-engagement message",
            Some(
                "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
            ),
        );
    }
    let id = format!("wamid.{}", state.sent.len());
    axum::Json(json!({"messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": to}],
        "messages": [{"id": id}]}))
    .into_response()
}

/// Meta's answer to a template message that does not match an approved template.
fn check_template(approved: &[Approved], template: &Value) -> Option<Response> {
    let name = template["name"].as_str().unwrap_or_default();
    let language = template["language"]["code"].as_str().unwrap_or_default();
    let Some(found) = approved
        .iter()
        .find(|a| a.name == name && a.language == language)
    else {
        return Some(graph_error(
            StatusCode::NOT_FOUND,
            132001,
            "(#132001) Template name does not exist in the translation",
            Some(&format!(
                "template name ({name}) does not exist in {language}"
            )),
        ));
    };
    let given = |part: &str| {
        template["components"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["type"] == part)
            .map(|c| c["parameters"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
    };
    if given("header") != found.header || given("body") != found.body {
        return Some(graph_error(
            StatusCode::BAD_REQUEST,
            132000,
            "(#132000) Number of parameters does not match the expected number of params",
            Some(&format!(
                "body: number of localizable_params ({}) does not match the expected number of params ({})",
                given("body"),
                found.body
            )),
        ));
    }
    None
}
