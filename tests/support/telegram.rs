//! A stand-in for Telegram's Bot API on 127.0.0.1, answering as the Bot API documentation
//! says: every answer is `{"ok": true, "result": ...}` or `{"ok": false, "error_code",
//! "description"}`, with `parameters.retry_after` on a 429. `sendMessage` refuses a blocked
//! chat (403), an unknown one (400 "chat not found") and an empty text; a wrong token is 401.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::ServerThread;

pub const BOT_TOKEN: &str = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";

#[derive(Default)]
struct Shared {
    sent: Vec<Value>,
    blocked: Vec<String>,
    rate_limited: usize,
}

pub struct FakeTelegram {
    shared: Arc<Mutex<Shared>>,
    server: ServerThread,
}

impl FakeTelegram {
    pub async fn start() -> FakeTelegram {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = Router::new()
            .route("/{bot}/sendMessage", post(send_message))
            .route("/{bot}/getMe", get(get_me))
            .with_state(shared.clone());
        let server = ServerThread::start("fake-telegram", move |listener| async move {
            let _ = axum::serve(listener, app).await;
        })
        .await;
        FakeTelegram { shared, server }
    }

    pub fn api_base(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The `sendMessage` bodies received, refused ones included.
    pub fn sent(&self) -> Vec<Value> {
        self.shared.lock().unwrap().sent.clone()
    }

    pub fn block(&self, chat_id: &str) {
        self.shared.lock().unwrap().blocked.push(chat_id.to_owned());
    }

    pub fn rate_limit_next(&self, n: usize) {
        self.shared.lock().unwrap().rate_limited = n;
    }
}

fn refuse(status: StatusCode, description: &str, extra: Option<Value>) -> Response {
    let mut body = json!({"ok": false, "error_code": status.as_u16(), "description": description});
    if let Some(parameters) = extra {
        body["parameters"] = parameters;
    }
    (status, axum::Json(body)).into_response()
}

fn authorized(bot: &str) -> bool {
    bot.strip_prefix("bot") == Some(BOT_TOKEN)
}

async fn get_me(Path(bot): Path<String>) -> Response {
    if !authorized(&bot) {
        return refuse(StatusCode::UNAUTHORIZED, "Unauthorized", None);
    }
    axum::Json(
        json!({"ok": true, "result": {"id": 123456789, "is_bot": true,
        "first_name": "Herald", "username": "herald_test_bot"}}),
    )
    .into_response()
}

async fn send_message(
    State(shared): State<Arc<Mutex<Shared>>>,
    Path(bot): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if !authorized(&bot) {
        return refuse(StatusCode::UNAUTHORIZED, "Unauthorized", None);
    }
    let mut state = shared.lock().unwrap();
    state.sent.push(body.clone());
    if state.rate_limited > 0 {
        state.rate_limited -= 1;
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests: retry after 3",
            Some(json!({"retry_after": 3})),
        );
    }
    let chat = match &body["chat_id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Bad Request: chat_id is empty",
                None,
            );
        }
    };
    if state.blocked.contains(&chat) {
        return refuse(
            StatusCode::FORBIDDEN,
            "Forbidden: bot was blocked by the user",
            None,
        );
    }
    if chat.parse::<i64>().is_err() && !chat.starts_with('@') {
        return refuse(StatusCode::BAD_REQUEST, "Bad Request: chat not found", None);
    }
    let text = body["text"].as_str().unwrap_or_default();
    if text.is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Bad Request: message text is empty",
            None,
        );
    }
    let message_id = state.sent.len();
    axum::Json(json!({"ok": true, "result": {
        "message_id": message_id,
        "from": {"id": 123456789, "is_bot": true, "first_name": "Herald"},
        "chat": {"id": chat.parse::<i64>().unwrap_or(0), "type": "private"},
        "date": 1764800000,
        "text": text,
    }}))
    .into_response()
}
