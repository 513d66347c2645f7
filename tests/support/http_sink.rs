//! A real HTTP server on 127.0.0.1 that records every request and answers as told.
//!
//! By default every request gets `200` with `{"id": "sink-<n>"}`, n counting from 1. Replies
//! can be scripted: for the next few requests ([`HttpSink::fail_next`],
//! [`HttpSink::respond_next`]), for one recipient ([`HttpSink::reject_recipient`]), for one
//! path ([`HttpSink::respond_to_path`]), or for everything else
//! ([`HttpSink::respond_by_default`]). The first that applies wins, in that order: recipient,
//! path, next, default.
//!
//! ```ignore
//! let sink = HttpSink::start().await;
//! sink.respond_next(1, Reply::status(429).retry_after(7));
//! // ... POST to sink.url("/hook") ...
//! assert_eq!(sink.requests()[0].idempotency_key(), Some("run-1/step-1/0"));
//! assert_eq!(sink.count_for_key("run-1/step-1/0"), 1);
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use indexmap::IndexMap;
use tokio::sync::watch;

use super::{ServerThread, wait_for_count};

/// One request the sink received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedRequest {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub query: Option<String>,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
    /// The body parsed as JSON; `Null` when it is not JSON.
    pub json: serde_json::Value,
    /// The status the sink answered with.
    pub answered: u16,
}

impl ReceivedRequest {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn idempotency_key(&self) -> Option<&str> {
        self.header("idempotency-key")
    }

    /// A top-level string field of the JSON body.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.json.get(name)?.as_str()
    }
}

/// What the sink answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<String>,
    delay: Option<Duration>,
}

impl Reply {
    /// An answer with this status and an empty body (or, for a 2xx, the default id body).
    pub fn status(status: u16) -> Reply {
        assert!(
            StatusCode::from_u16(status).is_ok(),
            "{status} is not an HTTP status"
        );
        Reply {
            status,
            headers: Vec::new(),
            body: None,
            delay: None,
        }
    }

    /// `200` with the default body, `{"id": "sink-<n>"}`.
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    /// Adds `Retry-After: <seconds>`.
    pub fn retry_after(self, seconds: u64) -> Reply {
        self.header("Retry-After", &seconds.to_string())
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        assert!(
            HeaderName::from_bytes(name.as_bytes()).is_ok() && HeaderValue::from_str(value).is_ok(),
            "`{name}: {value}` is not a valid HTTP header"
        );
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A text body in place of the default.
    pub fn body(mut self, text: &str) -> Reply {
        self.body = Some(text.to_owned());
        self
    }

    /// A JSON body in place of the default.
    pub fn json(self, value: serde_json::Value) -> Reply {
        self.header("Content-Type", "application/json")
            .body(&value.to_string())
    }

    /// Waits this long before answering, to look like a slow or hung receiver.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }
}

/// A real HTTP server on 127.0.0.1, running until dropped.
pub struct HttpSink {
    shared: Arc<Shared>,
    server: ServerThread,
}

impl HttpSink {
    /// Starts a sink that answers every request on every path with `200 {"id": "sink-<n>"}`.
    pub async fn start() -> HttpSink {
        let shared = Arc::new(Shared {
            state: Mutex::new(SinkState::default()),
            received: watch::Sender::new(0),
        });
        let serving = Arc::clone(&shared);
        let server = ServerThread::start("http-sink", move |listener| async move {
            let app = Router::new().fallback(record).with_state(serving);
            // Only returns on an accept error it cannot recover from; the sink is then
            // unreachable, and the test waiting on it fails with its own timeout.
            let _ = axum::serve(listener, app).await;
        })
        .await;
        HttpSink { shared, server }
    }

    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// `http://127.0.0.1:<port><path>`. `path` should start with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr)
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.state().requests.clone()
    }

    /// Waits until at least `count` requests have arrived, then returns them all. Panics
    /// after `timeout`.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<ReceivedRequest> {
        wait_for_count(self.shared.received.subscribe(), count, timeout, "requests").await;
        self.requests()
    }

    /// The distinct `Idempotency-Key` values seen, in order of first arrival.
    pub fn unique_keys(&self) -> Vec<String> {
        self.shared.state().key_counts.keys().cloned().collect()
    }

    /// How many requests carried `Idempotency-Key: <key>`, whatever the sink answered.
    pub fn count_for_key(&self, key: &str) -> usize {
        self.shared
            .state()
            .key_counts
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// The keys that arrived more than once.
    pub fn duplicate_keys(&self) -> Vec<String> {
        self.shared
            .state()
            .key_counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Answers the next `count` requests with `status` and an empty body.
    pub fn fail_next(&self, count: usize, status: u16) {
        self.respond_next(count, Reply::status(status));
    }

    /// Answers the next `count` requests with `reply`, after any already scripted.
    pub fn respond_next(&self, count: usize, reply: Reply) {
        let mut state = self.shared.state();
        state.next.extend(std::iter::repeat_n(reply, count));
    }

    /// Answers every request whose JSON `to` is `to` with `status`, from now on.
    pub fn reject_recipient(&self, to: &str, status: u16) {
        self.respond_to_recipient(to, Reply::status(status));
    }

    /// Answers every request whose JSON `to` is `to` with `reply`, from now on.
    pub fn respond_to_recipient(&self, to: &str, reply: Reply) {
        self.shared
            .state()
            .by_recipient
            .insert(to.to_owned(), reply);
    }

    /// Answers every request to `path` with `reply`, from now on.
    pub fn respond_to_path(&self, path: &str, reply: Reply) {
        self.shared.state().by_path.insert(path.to_owned(), reply);
    }

    /// Answers with `reply` when nothing more specific applies.
    pub fn respond_by_default(&self, reply: Reply) {
        self.shared.state().default = Some(reply);
    }

    /// Back to `200 {"id": "sink-<n>"}` for everything, and nothing scripted.
    pub fn reset_replies(&self) {
        let mut state = self.shared.state();
        state.next.clear();
        state.by_recipient.clear();
        state.by_path.clear();
        state.default = None;
    }
}

struct Shared {
    state: Mutex<SinkState>,
    /// The number of requests received, for waiters.
    received: watch::Sender<usize>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, SinkState> {
        // A panicking test thread must not take the sink down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct SinkState {
    requests: Vec<ReceivedRequest>,
    key_counts: IndexMap<String, usize>,
    next: VecDeque<Reply>,
    by_recipient: HashMap<String, Reply>,
    by_path: HashMap<String, Reply>,
    default: Option<Reply>,
}

async fn record(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let (reply, sequence) = {
        let mut state = shared.state();
        let for_recipient = json
            .get("to")
            .and_then(|to| to.as_str())
            .and_then(|to| state.by_recipient.get(to).cloned());
        let reply = for_recipient
            .or_else(|| state.by_path.get(uri.path()).cloned())
            .or_else(|| state.next.pop_front())
            .or_else(|| state.default.clone())
            .unwrap_or_else(Reply::ok);

        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let request = ReceivedRequest {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            json,
            answered: reply.status,
        };
        if let Some(key) = request.idempotency_key() {
            *state.key_counts.entry(key.to_owned()).or_default() += 1;
        }
        state.requests.push(request);
        (reply, state.requests.len())
    };
    shared.received.send_replace(sequence);

    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    respond(&reply, sequence)
}

fn respond(reply: &Reply, sequence: usize) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (body, json) = match &reply.body {
        Some(text) => (text.clone(), false),
        None if status.is_success() => (
            serde_json::json!({ "id": format!("sink-{sequence}") }).to_string(),
            true,
        ),
        None => (String::new(), false),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if json {
        headers.insert("content-type", HeaderValue::from_static("application/json"));
    }
    for (name, value) in &reply.headers {
        // Checked when the reply was made.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    response
}
