//! The HTTP API end to end: the real router on a loopback port, over an engine on a fresh
//! SQLite store and a virtual clock, driven by a real HTTP client. Every webhook auth scheme
//! with good and bad credentials, bad input, idempotency, sync replies, the admin API, health
//! and metrics. Every refused request is checked to have stored nothing at all.

#[path = "support/db.rs"]
mod db;
mod support;

use std::net::SocketAddr;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use herald::definitions::env::EnvSource;
use herald::engine::Engine;
use herald::engine::clock::{Clock, VirtualClock};
use herald::engine::scheduler::Scheduler;
use herald::store::{RunFilter, RunRecord, RunStatus};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::Connection as _;
use support::app::App;
use support::{HttpSink, Reply};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const START: &str = "2026-11-02T15:00:00Z";

const BEARER_TOKEN: &str = "s3cr3t-bearer-token";
const PARTNER_KEY: &str = "k3y-of-the-partner";
const HMAC_SECRET: &str = "hmac-shared-secret";
const STRIPE_SECRET: &str = "whsec_stripe_signing_secret";
const ADMIN_KEY: &str = "adm1n-key-for-tests";

// The published Standard Webhooks vector (the reference libraries' `test_sign_function`).
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_TS: i64 = 1614265330;
const SW_BODY: &str = r#"{"test": 2432232314}"#;
const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

const WORKFLOWS: &[(&str, &str)] = &[
    (
        "bearer.yaml",
        r#"
kind: workflow
id: bearer-hook
triggers:
  - webhook:
      path: /hooks/bearer
      auth: { bearer: { token: "${env:BEARER_TOKEN}" } }
steps:
  - id: note
    set: { received: "yes" }
"#,
    ),
    (
        "partner.yaml",
        r#"
kind: workflow
id: partner-hook
triggers:
  - webhook:
      path: /hooks/partner
      auth: { api_key: { header: X-Partner-Key, key: "${env:PARTNER_KEY}" } }
steps:
  - id: note
    set: { received: "yes" }
"#,
    ),
    (
        "hmac-hex.yaml",
        r#"
kind: workflow
id: hmac-hex
triggers:
  - webhook:
      path: /hooks/hmac-hex
      auth: { hmac_sha256: { header: X-Signature, secret: "${env:HMAC_SECRET}" } }
steps:
  - id: note
    set: { lead: "{{ body.lead }}" }
"#,
    ),
    (
        "hmac-b64.yaml",
        r#"
kind: workflow
id: hmac-b64
triggers:
  - webhook:
      path: /hooks/hmac-b64
      auth:
        hmac_sha256: { header: X-Hub-Signature-256, secret: "${env:HMAC_SECRET}", encoding: base64, prefix: "sha256=" }
steps:
  - id: note
    set: { lead: "{{ body.lead }}" }
"#,
    ),
    (
        "stripe.yaml",
        r#"
kind: workflow
id: stripe-hook
triggers:
  - webhook:
      path: /hooks/stripe
      auth: { stripe: { secret: "${env:STRIPE_SECRET}", tolerance: 5m } }
      idempotency_key: "{{ body.id }}"
steps:
  - id: note
    set: { event: "{{ body.type }}" }
"#,
    ),
    (
        "standard.yaml",
        r#"
kind: workflow
id: standard-hook
triggers:
  - webhook:
      path: /hooks/standard
      auth: { standard_webhooks: { secret: "${env:SW_SECRET}" } }
steps:
  - id: note
    set: { test: "{{ body.test }}" }
"#,
    ),
    (
        "echo.yaml",
        r#"
kind: workflow
id: echo
triggers:
  - webhook: { path: /hooks/echo }
steps:
  - id: note
    set: { received: "yes" }
"#,
    ),
    (
        "twilio.yaml",
        r#"
kind: workflow
id: twilio-sms
triggers:
  - webhook: { path: /hooks/twilio/sms }
steps:
  - id: note
    set: { from: "{{ body.From }}", text: "{{ body.Body }}" }
"#,
    ),
    (
        "orders.yaml",
        r#"
kind: workflow
id: orders
triggers:
  - webhook:
      path: /hooks/orders
      idempotency_key: "{{ body.order_id }}"
steps:
  - id: note
    set: { order: "{{ body.order_id }}" }
"#,
    ),
    (
        "quote.yaml",
        r#"
kind: workflow
id: quote
triggers:
  - webhook:
      path: /hooks/quote
      respond: sync
      idempotency_key: "{{ body.ref }}"
steps:
  - id: price
    set: { total: "{{ body.qty * 5 }}" }
  - id: reply
    respond:
      status: 201
      headers: { X-Quote-Ref: "Q-{{ body.ref }}" }
      body: { ref: "{{ body.ref }}", total: "{{ vars.total }}" }
"#,
    ),
    (
        "greet.yaml",
        r#"
kind: workflow
id: greet
triggers:
  - webhook: { path: /hooks/greet, respond: sync }
steps:
  - id: reply
    respond: { body: "Hello {{ body.name }}" }
"#,
    ),
    (
        "tally.yaml",
        r#"
kind: workflow
id: tally
triggers:
  - webhook: { path: /hooks/tally, respond: sync }
steps:
  - id: count
    set: { count: "{{ body['items'] | length }}", first: "{{ body['items'][0] }}" }
"#,
    ),
    (
        "refuse.yaml",
        r#"
kind: workflow
id: refuse
triggers:
  - webhook: { path: /hooks/refuse, respond: sync }
steps:
  - id: nope
    fail: "cannot quote {{ body.item }}"
"#,
    ),
    (
        "slow.yaml",
        r#"
kind: workflow
id: slow
triggers:
  - webhook: { path: /hooks/slow, respond: sync, timeout: 300ms }
steps:
  - id: pause
    wait: 1h
  - id: reply
    respond: { body: { late: "yes" } }
"#,
    ),
    (
        "later.yaml",
        r#"
kind: workflow
id: later
triggers:
  - webhook: { path: /hooks/later, respond: sync, timeout: 20s }
steps:
  - id: pause
    wait: 1h
  - id: reply
    respond: { status: 202, body: { done: "{{ body.n }}" } }
"#,
    ),
    (
        "chat.yaml",
        r#"
kind: workflow
id: chat
triggers:
  - webhook: { path: /api/chat, respond: sync, timeout: 5s }
steps:
  - id: reply
    respond: { status: 200, body: { echo: "{{ input.message }}", same: "{{ input == body }}" } }
"#,
    ),
    (
        "lead.yaml",
        r#"
kind: workflow
id: lead
triggers:
  - webhook: { path: /hooks/lead }
steps:
  - id: hello
    send: { channel: email, to: "{{ body.email }}", subject: "Hello", body: "Thanks for applying" }
  - id: reply
    wait_for: { event: lead.replied, key: "{{ body.email }}", timeout: 2d }
  - id: after
    set: { reply: "{{ steps.reply.output.data.text }}" }
"#,
    ),
    (
        "replied-log.yaml",
        r#"
kind: workflow
id: replied-log
triggers:
  - event: { name: lead.replied }
steps:
  - id: note
    set: { who: "{{ event.key }}", text: "{{ event.data.text }}" }
"#,
    ),
    (
        "stop.yaml",
        r#"
kind: workflow
id: stop
triggers:
  - message: { channel: sms, keyword: [STOP, UNSUBSCRIBE] }
steps:
  - id: opt_out
    upsert_contact: { phone: "{{ message.from }}", status: opted_out }
"#,
    ),
    (
        "flaky.yaml",
        r#"
kind: workflow
id: flaky
triggers:
  - webhook: { path: /hooks/flaky }
steps:
  - id: call_crm
    http: { method: POST, url: "{{SINK}}/crm", json: { lead: "{{ body.lead }}" } }
  - id: after
    set: { status: "{{ steps.call_crm.output.status }}" }
"#,
    ),
    (
        "ticker.yaml",
        r#"
kind: workflow
id: ticker
triggers:
  - cron: { schedule: "*/5 * * * *" }
steps:
  - id: tick
    set: { ticked: "yes" }
"#,
    ),
    (
        "metered.yaml",
        r#"
kind: workflow
id: metered
triggers:
  - webhook:
      path: /hooks/metered
      auth: { bearer: { token: "${env:BEARER_TOKEN}" } }
steps:
  - id: note
    set: { received: "yes" }
"#,
    ),
];

/// Rows in the tables a request could write to. `runs` is also cross-checked against the
/// store's own `count_runs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    runs: i64,
    steps: i64,
    outbox: i64,
    events: i64,
    contacts: i64,
}

/// An answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    text: String,
    /// The body as JSON, `Null` when it is not JSON.
    json: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an API error: the status, `{"error": code, "message": <non-empty>}`, as JSON.
    #[track_caller]
    fn assert_error(&self, status: u16, code: &str) -> &str {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.json["error"], code, "{self:?}");
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{self:?}"
        );
        let message = self.json["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message: {self:?}"));
        assert!(!message.trim().is_empty(), "{self:?}");
        message
    }

    /// Asserts an async webhook was accepted: 202 with a run id.
    #[track_caller]
    fn accepted(&self) -> String {
        assert_eq!(self.status, 202, "{self:?}");
        assert_eq!(self.json["status"], "accepted", "{self:?}");
        self.json["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no run id: {self:?}"))
            .to_owned()
    }
}

struct Server {
    addr: SocketAddr,
    http: reqwest::Client,
    engine: Arc<Engine>,
    clock: VirtualClock,
    sink: HttpSink,
    db: db::TestDb,
    /// Stops serving when the server is dropped.
    _app: App,
    _dir: tempfile::TempDir,
}

fn env() -> EnvSource {
    EnvSource::Map(Arc::new(
        [
            ("BEARER_TOKEN", BEARER_TOKEN),
            ("PARTNER_KEY", PARTNER_KEY),
            ("HMAC_SECRET", HMAC_SECRET),
            ("STRIPE_SECRET", STRIPE_SECRET),
            ("SW_SECRET", SW_SECRET),
            ("ADMIN_KEY", ADMIN_KEY),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into(),
    ))
}

impl Server {
    /// The project above, with the admin API open to `ADMIN_KEY`, at [`START`].
    async fn start() -> Server {
        Server::start_with(true, START).await
    }

    async fn start_with(admin_api: bool, at: &str) -> Server {
        herald::tls::init();
        let db = db::sqlite("webhooks")
            .await
            .expect("SQLite is always available");
        let sink = HttpSink::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let admin_keys = if admin_api {
            "admin:\n  api_keys: [\"${env:ADMIN_KEY}\"]\n"
        } else {
            ""
        };
        let config = format!(
            "{admin_keys}webhooks:\n  body_limit: 1KiB\nchannels:\n  email: {{ provider: log }}\n  sms: {{ provider: log }}\ncontacts:\n  attributes: {{ loan_amount: number }}\n"
        );
        std::fs::write(dir.path().join("herald.yaml"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        for (name, text) in WORKFLOWS {
            std::fs::write(
                dir.path().join("workflows").join(name),
                text.replace("{{SINK}}", &sink.url("")),
            )
            .unwrap();
        }

        let clock = VirtualClock::at(at);
        let app = App::start(dir.path(), &env(), db.store.clone(), &clock).await;
        let engine = app.engine.clone();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Server {
            addr: app.addr,
            http,
            engine,
            clock,
            sink,
            db,
            _app: app,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.expect("the server answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("a readable body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            text,
            json,
        }
    }

    /// POSTs `body` as it is (no re-serialisation), as `application/json`, with `headers`.
    async fn post_raw(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    async fn post_json(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
        self.post_raw(path, &body.to_string(), headers).await
    }

    async fn admin_get(&self, path: &str) -> Answer {
        self.send(self.http.get(self.url(path)).header("x-api-key", ADMIN_KEY))
            .await
    }

    async fn admin_post(&self, path: &str, body: Option<&str>) -> Answer {
        let mut req = self
            .http
            .post(self.url(path))
            .header("x-api-key", ADMIN_KEY);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        self.send(req).await
    }

    /// Counts what is stored, straight from the database file.
    async fn stored(&self) -> Stored {
        let mut conn = sqlx::sqlite::SqliteConnection::connect(&self.db.url)
            .await
            .expect("open the SQLite file");
        let (runs, steps, outbox, events, contacts): (i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM runs), (SELECT COUNT(*) FROM step_log), (SELECT COUNT(*) FROM outbox), \
             (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM contacts)",
        )
        .fetch_one(&mut conn)
        .await
        .expect("count rows");
        let _ = conn.close().await;
        let counted: i64 = self
            .engine
            .store
            .count_runs()
            .await
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(counted, runs, "count_runs agrees with the runs table");
        Stored {
            runs,
            steps,
            outbox,
            events,
            contacts,
        }
    }

    async fn assert_unchanged(&self, before: Stored, what: &str) {
        assert_eq!(self.stored().await, before, "{what} stored something");
    }

    async fn runs_of(&self, workflow: &str) -> Vec<RunRecord> {
        self.engine
            .store
            .list_runs(&RunFilter {
                workflow_id: Some(workflow.into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
    }

    async fn run(&self, id: &str) -> RunRecord {
        self.engine
            .store
            .run(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no run {id}"))
    }

    /// Runs everything due now and delivers everything queued, until nothing is left.
    async fn settle(&self) {
        for _ in 0..200 {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !self.engine.held_runs().is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "runs still executing after 20s"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let runs = self.engine.run_due().await.unwrap();
            let sent = self.engine.deliver_due().await.unwrap();
            if runs == 0 && sent == 0 && self.engine.held_runs().is_empty() {
                return;
            }
        }
        panic!("the engine did not settle");
    }

    /// Sends raw bytes over a fresh connection and reads the answer to the end (for what the
    /// HTTP client cannot send: a chunked body, header names in upper case).
    async fn raw(&self, request: &[u8]) -> (u16, String, Value) {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
            .await
            .expect("the server answers within 20s")
            .expect("the answer is readable");
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in {text:?}"));
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "expected a sized answer: {head}"
        );
        (
            status,
            head.to_owned(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn stripe_signature(secret: &str, t: i64, body: &str) -> String {
    format!(
        "t={t},v1={}",
        hex::encode(hmac(
            secret.as_bytes(),
            &[t.to_string().as_bytes(), b".", body.as_bytes()]
        ))
    )
}

fn seconds(s: &Server) -> i64 {
    s.clock.now() / 1000
}

// --- Auth schemes ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_checked_before_anything_is_stored() {
    let s = Server::start().await;
    let before = s.stored().await;
    let body = json!({"lead": "L1"});

    s.post_json("/hooks/bearer", &body, &[])
        .await
        .assert_error(401, "missing_credentials");
    s.assert_unchanged(before, "a request without Authorization")
        .await;
    let wrong = format!("Bearer {BEARER_TOKEN}x");
    s.post_json("/hooks/bearer", &body, &[("authorization", &wrong)])
        .await
        .assert_error(401, "invalid_signature");
    s.assert_unchanged(before, "a wrong bearer token").await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("user:{BEARER_TOKEN}"))
    );
    s.post_json("/hooks/bearer", &body, &[("authorization", &basic)])
        .await
        .assert_error(401, "missing_credentials");
    // The right token in the wrong scheme is no bearer credential either.
    let token_as_basic = format!("Basic {BEARER_TOKEN}");
    s.post_json(
        "/hooks/bearer",
        &body,
        &[("authorization", &token_as_basic)],
    )
    .await
    .assert_error(401, "missing_credentials");
    s.assert_unchanged(before, "Basic credentials").await;

    let right = format!("Bearer {BEARER_TOKEN}");
    let id = s
        .post_json("/hooks/bearer", &body, &[("authorization", &right)])
        .await
        .accepted();
    let run = s.run(&id).await;
    assert_eq!(run.workflow_id, "bearer-hook");
    assert_eq!(run.trigger_kind, herald::store::TriggerKind::Webhook);
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.context["body"], body);
    // The scheme name is case-insensitive.
    let lower = format!("bearer {BEARER_TOKEN}");
    s.post_json("/hooks/bearer", &body, &[("authorization", &lower)])
        .await
        .accepted();
    assert_eq!(s.stored().await.runs, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_read_from_the_configured_header_in_any_case() {
    let s = Server::start().await;
    let before = s.stored().await;
    let body = json!({"n": 1});

    s.post_json("/hooks/partner", &body, &[])
        .await
        .assert_error(401, "missing_credentials");
    s.post_json("/hooks/partner", &body, &[("x-partner-key", "not-the-key")])
        .await
        .assert_error(401, "invalid_signature");
    // The key in another header is no key.
    s.post_json("/hooks/partner", &body, &[("x-api-key", PARTNER_KEY)])
        .await
        .assert_error(401, "missing_credentials");
    s.assert_unchanged(before, "a missing or wrong API key")
        .await;

    // Configured as `X-Partner-Key`; the client sends it in lower case.
    let id = s
        .post_json("/hooks/partner", &body, &[("x-partner-key", PARTNER_KEY)])
        .await
        .accepted();
    assert_eq!(s.run(&id).await.status, RunStatus::Completed);
    // And in upper case, byte for byte on the wire.
    let payload = r#"{"n": 2}"#;
    let request = format!(
        "POST /hooks/partner HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nX-PARTNER-KEY: {PARTNER_KEY}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        s.addr,
        payload.len()
    );
    let (status, head, json) = s.raw(request.as_bytes()).await;
    assert_eq!(status, 202, "{head} {json}");
    let second = json["run_id"].as_str().unwrap();
    assert_eq!(s.run(second).await.context["body"]["n"], 2);
    assert_eq!(s.runs_of("partner-hook").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_signatures_in_hex_and_prefixed_base64() {
    let s = Server::start().await;
    let body = r#"{"lead":"L-42","amount":1200}"#;
    let hex_sig = hex::encode(hmac(HMAC_SECRET.as_bytes(), &[body.as_bytes()]));
    let b64_sig = format!(
        "sha256={}",
        base64::engine::general_purpose::STANDARD
            .encode(hmac(HMAC_SECRET.as_bytes(), &[body.as_bytes()]))
    );

    let before = s.stored().await;
    // Tampered body, same signature.
    let tampered = r#"{"lead":"L-42","amount":9900}"#;
    s.post_raw("/hooks/hmac-hex", tampered, &[("x-signature", &hex_sig)])
        .await
        .assert_error(401, "invalid_signature");
    s.post_raw(
        "/hooks/hmac-b64",
        tampered,
        &[("x-hub-signature-256", &b64_sig)],
    )
    .await
    .assert_error(401, "invalid_signature");
    // Signed with another secret.
    let other = hex::encode(hmac(b"another-secret", &[body.as_bytes()]));
    s.post_raw("/hooks/hmac-hex", body, &[("x-signature", &other)])
        .await
        .assert_error(401, "invalid_signature");
    let other_b64 = format!(
        "sha256={}",
        base64::engine::general_purpose::STANDARD
            .encode(hmac(b"another-secret", &[body.as_bytes()]))
    );
    s.post_raw(
        "/hooks/hmac-b64",
        body,
        &[("x-hub-signature-256", &other_b64)],
    )
    .await
    .assert_error(401, "invalid_signature");
    // No signature at all.
    s.post_raw("/hooks/hmac-hex", body, &[])
        .await
        .assert_error(401, "missing_credentials");
    s.post_raw("/hooks/hmac-b64", body, &[])
        .await
        .assert_error(401, "missing_credentials");
    // The base64 signature without its prefix, and the hex one where base64 is expected.
    let bare = b64_sig.trim_start_matches("sha256=");
    s.post_raw("/hooks/hmac-b64", body, &[("x-hub-signature-256", bare)])
        .await
        .assert_error(401, "malformed_signature");
    s.post_raw("/hooks/hmac-hex", body, &[("x-signature", &b64_sig)])
        .await
        .assert_error(401, "malformed_signature");
    s.assert_unchanged(before, "a bad HMAC signature").await;

    let hex_run = s
        .post_raw("/hooks/hmac-hex", body, &[("x-signature", &hex_sig)])
        .await
        .accepted();
    // Upper-case hex and an upper-case prefix are the same signature.
    s.post_raw(
        "/hooks/hmac-hex",
        body,
        &[("x-signature", &hex_sig.to_uppercase())],
    )
    .await
    .accepted();
    let b64_run = s
        .post_raw(
            "/hooks/hmac-b64",
            body,
            &[("x-hub-signature-256", &b64_sig)],
        )
        .await
        .accepted();
    let upper_prefix = b64_sig.replace("sha256=", "SHA256=");
    s.post_raw(
        "/hooks/hmac-b64",
        body,
        &[("x-hub-signature-256", &upper_prefix)],
    )
    .await
    .accepted();
    for id in [hex_run, b64_run] {
        let run = s.run(&id).await;
        assert_eq!(run.status, RunStatus::Completed);
        assert_eq!(run.context["vars"]["lead"], "L-42");
    }
    assert_eq!(s.stored().await.runs, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_signatures_expire_and_cannot_be_replayed() {
    let s = Server::start().await;
    let body = r#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
    let now = seconds(&s);

    let before = s.stored().await;
    let wrong_secret = stripe_signature("whsec_someone_else", now, body);
    s.post_raw(
        "/hooks/stripe",
        body,
        &[("stripe-signature", &wrong_secret)],
    )
    .await
    .assert_error(401, "invalid_signature");
    // Genuine, but signed ten minutes ago with a five-minute tolerance.
    let stale = stripe_signature(STRIPE_SECRET, now - 600, body);
    let message = s
        .post_raw("/hooks/stripe", body, &[("stripe-signature", &stale)])
        .await
        .assert_error(401, "expired_signature")
        .to_owned();
    assert!(message.contains("600s old"), "{message}");
    s.post_raw("/hooks/stripe", body, &[])
        .await
        .assert_error(401, "missing_credentials");
    // A signature over another body.
    let tampered = stripe_signature(STRIPE_SECRET, now, r#"{"id":"evt_2"}"#);
    s.post_raw("/hooks/stripe", body, &[("stripe-signature", &tampered)])
        .await
        .assert_error(401, "invalid_signature");
    s.assert_unchanged(before, "a bad Stripe signature").await;

    let signed = stripe_signature(STRIPE_SECRET, now, body);
    let id = s
        .post_raw("/hooks/stripe", body, &[("stripe-signature", &signed)])
        .await
        .accepted();
    let run = s.run(&id).await;
    assert_eq!(run.context["vars"]["event"], "payment_intent.succeeded");
    assert_eq!(run.idempotency_key.as_deref(), Some("evt_1"));
    let after_first = s.stored().await;

    // Within the tolerance a redelivery is the same event: the original run.
    s.clock.advance(Duration::from_secs(120));
    let again = s
        .post_raw("/hooks/stripe", body, &[("stripe-signature", &signed)])
        .await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json, json!({"run_id": id, "status": "duplicate"}));
    s.assert_unchanged(after_first, "a redelivery within the tolerance")
        .await;

    // The same signed request captured and replayed once the tolerance has passed.
    s.clock.advance(Duration::from_secs(181));
    s.post_raw("/hooks/stripe", body, &[("stripe-signature", &signed)])
        .await
        .assert_error(401, "expired_signature");
    // Even with a body the server has not seen: the signature is what is too old.
    let other_body = r#"{"id":"evt_9","type":"charge.refunded"}"#;
    let old_sig = stripe_signature(STRIPE_SECRET, now, other_body);
    s.post_raw(
        "/hooks/stripe",
        other_body,
        &[("stripe-signature", &old_sig)],
    )
    .await
    .assert_error(401, "expired_signature");
    s.assert_unchanged(after_first, "a replayed Stripe request")
        .await;
    assert_eq!(s.runs_of("stripe-hook").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_published_vector_and_redelivery() {
    let at = jiff::Timestamp::from_second(SW_TS).unwrap().to_string();
    let s = Server::start_with(true, &at).await;
    let headers = [
        ("webhook-id", SW_ID),
        ("webhook-timestamp", "1614265330"),
        ("webhook-signature", SW_SIG),
    ];

    let before = s.stored().await;
    s.post_raw("/hooks/standard", r#"{"test": 2432232315}"#, &headers)
        .await
        .assert_error(401, "invalid_signature");
    let other_id = [
        ("webhook-id", "msg_other"),
        ("webhook-timestamp", "1614265330"),
        ("webhook-signature", SW_SIG),
    ];
    s.post_raw("/hooks/standard", SW_BODY, &other_id)
        .await
        .assert_error(401, "invalid_signature");
    s.post_raw("/hooks/standard", SW_BODY, &headers[..2])
        .await
        .assert_error(401, "missing_credentials");
    s.assert_unchanged(before, "a bad Standard Webhooks signature")
        .await;

    let first = s.post_raw("/hooks/standard", SW_BODY, &headers).await;
    let id = first.accepted();
    let run = s.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.context["vars"]["test"], 2432232314_i64);
    // The message id is the idempotency key when the trigger names none.
    assert_eq!(run.idempotency_key.as_deref(), Some(SW_ID));
    let after_first = s.stored().await;

    // The sender redelivers the same message a minute later.
    s.clock.advance(Duration::from_secs(60));
    let again = s.post_raw("/hooks/standard", SW_BODY, &headers).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json, json!({"run_id": id, "status": "duplicate"}));
    s.assert_unchanged(after_first, "a redelivered message")
        .await;

    // Outside the five-minute tolerance the same message is refused.
    s.clock.set(SW_TS * 1000 + 301_000);
    let message = s
        .post_raw("/hooks/standard", SW_BODY, &headers)
        .await
        .assert_error(401, "expired_signature")
        .to_owned();
    assert!(message.contains("301s old"), "{message}");
    s.assert_unchanged(after_first, "an expired message").await;
}

// --- Bad input ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let s = Server::start().await;
    let before = s.stored().await;
    let r = s.post_json("/hooks/nowhere", &json!({}), &[]).await;
    let message = r.assert_error(404, "not_found");
    assert!(message.contains("/hooks/nowhere"), "{message}");
    let r = s.send(s.http.get(s.url("/hooks/echo"))).await;
    let message = r.assert_error(405, "method_not_allowed");
    assert!(message.contains("GET"), "{message}");
    s.send(s.http.put(s.url("/hooks/echo")).body("{}"))
        .await
        .assert_error(405, "method_not_allowed");
    s.assert_unchanged(before, "an unknown route").await;

    // A trailing slash names the same webhook.
    s.post_json("/hooks/echo/", &json!({"a": 1}), &[])
        .await
        .accepted();
    assert_eq!(s.runs_of("echo").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413_with_or_without_content_length() {
    let s = Server::start().await;
    let before = s.stored().await;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2048 - 10));
    assert_eq!(big.len(), 2048);

    // With a Content-Length: refused on the header.
    let r = s.post_raw("/hooks/echo", &big, &[]).await;
    let message = r.assert_error(413, "body_too_large");
    assert!(message.contains("1024"), "{message}");
    // The limit is checked before the credentials are.
    s.post_raw("/hooks/bearer", &big, &[])
        .await
        .assert_error(413, "body_too_large");

    // Chunked, with no Content-Length: refused while reading.
    let mut request = format!(
        "POST /hooks/echo HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        s.addr
    )
    .into_bytes();
    for chunk in big.as_bytes().chunks(512) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    assert!(
        !String::from_utf8_lossy(&request)
            .to_ascii_lowercase()
            .contains("content-length")
    );
    let (status, head, json) = s.raw(&request).await;
    assert_eq!(status, 413, "{head} {json}");
    assert_eq!(json["error"], "body_too_large", "{json}");
    s.assert_unchanged(before, "an oversized body").await;

    // Exactly at the limit is accepted, also chunked.
    let fits = format!("{{\"pad\":\"{}\"}}", "x".repeat(1024 - 10));
    assert_eq!(fits.len(), 1024);
    s.post_raw("/hooks/echo", &fits, &[]).await.accepted();
    let mut request = format!(
        "POST /hooks/echo HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        s.addr
    )
    .into_bytes();
    for chunk in fits.as_bytes().chunks(300) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (status, head, json) = s.raw(&request).await;
    assert_eq!(status, 202, "{head} {json}");
    assert_eq!(s.runs_of("echo").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_and_unknown_media_types_415() {
    let s = Server::start().await;
    let before = s.stored().await;
    let r = s
        .post_raw("/hooks/echo", "{\"lead\": \"L1\",\n \"amount\": }", &[])
        .await;
    let message = r.assert_error(400, "malformed_json");
    assert!(
        message.contains("expected value at line 2 column 12"),
        "serde's position: {message}"
    );
    // Without a content type the body is read as JSON too.
    let r = s
        .send(s.http.post(s.url("/hooks/echo")).body("not json"))
        .await;
    let message = r.assert_error(400, "malformed_json");
    assert!(message.contains("line 1 column 2"), "{message}");

    let r = s
        .send(
            s.http
                .post(s.url("/hooks/echo"))
                .header("content-type", "application/octet-stream")
                .body(vec![0u8, 159, 146, 150]),
        )
        .await;
    let message = r.assert_error(415, "unsupported_media_type");
    assert!(message.contains("application/octet-stream"), "{message}");
    // Auth comes first: a bad signature on a malformed body is a 401, not a 400.
    s.post_raw("/hooks/hmac-hex", "{", &[("x-signature", "00")])
        .await
        .assert_error(401, "invalid_signature");
    s.assert_unchanged(before, "a malformed body").await;

    // A JSON media type with parameters, or a +json one, is JSON.
    let id = s
        .send(
            s.http
                .post(s.url("/hooks/echo"))
                .header("content-type", "application/vnd.api+json; charset=utf-8")
                .body(r#"{"a": [1, 2]}"#),
        )
        .await
        .accepted();
    assert_eq!(s.run(&id).await.context["body"], json!({"a": [1, 2]}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_bodies_become_fields_like_twilio_sends_them() {
    let s = Server::start().await;
    let r = s
        .send(
            s.http
                .post(s.url("/hooks/twilio/sms"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("From=%2B18015550100&To=%2B18015550199&Body=Book+me+in%2C+please&MessageSid=SM123"),
        )
        .await;
    let id = r.accepted();
    let run = s.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.context["body"]["From"], "+18015550100");
    assert_eq!(run.context["body"]["MessageSid"], "SM123");
    assert_eq!(run.context["vars"]["from"], "+18015550100");
    assert_eq!(run.context["vars"]["text"], "Book me in, please");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_that_cannot_be_computed_is_422() {
    let s = Server::start().await;
    let before = s.stored().await;
    let r = s
        .post_json("/hooks/orders", &json!({"id": "A-1"}), &[])
        .await;
    let message = r.assert_error(422, "missing_idempotency_key");
    assert!(message.contains("could not be computed"), "{message}");
    // An empty key is no key either.
    s.post_json("/hooks/orders", &json!({"order_id": "  "}), &[])
        .await
        .assert_error(422, "missing_idempotency_key");
    // An empty body that says it is JSON is refused before any key is looked for.
    let message = s
        .post_raw("/hooks/orders", "", &[])
        .await
        .assert_error(400, "empty_body")
        .to_owned();
    assert!(message.contains("application/json"), "{message}");
    s.assert_unchanged(before, "a request without its idempotency key")
        .await;
}

// --- Idempotency -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_returns_the_original_run() {
    let s = Server::start().await;
    let first = s
        .post_json("/hooks/orders", &json!({"order_id": "A-1", "n": 1}), &[])
        .await
        .accepted();
    let after_first = s.stored().await;
    let again = s
        .post_json("/hooks/orders", &json!({"order_id": "A-1", "n": 2}), &[])
        .await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json, json!({"run_id": first, "status": "duplicate"}));
    s.assert_unchanged(after_first, "a duplicate").await;
    let runs = s.runs_of("orders").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(
        runs[0].context["body"]["n"], 1,
        "the original request is kept"
    );
    assert_eq!(runs[0].idempotency_key.as_deref(), Some("A-1"));

    let second = s
        .post_json("/hooks/orders", &json!({"order_id": "A-2"}), &[])
        .await
        .accepted();
    assert_ne!(first, second);
    assert_eq!(s.runs_of("orders").await.len(), 2);
    // Keys are per workflow: the same key on another webhook is another run.
    let hex_sig = hex::encode(hmac(HMAC_SECRET.as_bytes(), &[br#"{"lead":"A-1"}"#]));
    s.post_raw(
        "/hooks/hmac-hex",
        r#"{"lead":"A-1"}"#,
        &[("x-signature", &hex_sig)],
    )
    .await
    .accepted();
}

// --- Sync webhooks -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_webhook_answers_with_its_respond_step() {
    let s = Server::start().await;
    let r = s
        .post_json("/hooks/quote", &json!({"ref": "R-7", "qty": 3}), &[])
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json, json!({"ref": "R-7", "total": 15}));
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json"),
        "{r:?}"
    );
    assert_eq!(r.header("x-quote-ref"), Some("Q-R-7"));
    assert_eq!(r.header("x-herald-duplicate"), None);
    let runs = s.runs_of("quote").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(r.header("x-herald-run-id"), Some(runs[0].id.as_str()));
    assert_eq!(runs[0].status, RunStatus::Completed);
    let stored = s.stored().await;

    // The same key again: the original reply, from the original run.
    let again = s
        .post_json("/hooks/quote", &json!({"ref": "R-7", "qty": 50}), &[])
        .await;
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.json, json!({"ref": "R-7", "total": 15}));
    assert_eq!(again.header("x-quote-ref"), Some("Q-R-7"));
    assert_eq!(again.header("x-herald-run-id"), Some(runs[0].id.as_str()));
    assert_eq!(again.header("x-herald-duplicate"), Some("true"));
    s.assert_unchanged(stored, "a repeated sync request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_text_body_comes_back_as_text() {
    let s = Server::start().await;
    let r = s
        .post_json("/hooks/greet", &json!({"name": "Ada"}), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text, "Hello Ada");
    assert!(
        r.header("content-type").unwrap().starts_with("text/plain"),
        "{r:?}"
    );
    let runs = s.runs_of("greet").await;
    assert_eq!(r.header("x-herald-run-id"), Some(runs[0].id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_webhook_without_respond_answers_with_the_runs_vars() {
    let s = Server::start().await;
    let r = s
        .post_json("/hooks/tally", &json!({"items": ["a", "b", "c"]}), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let run_id = r.header("x-herald-run-id").unwrap().to_owned();
    assert_eq!(
        r.json,
        json!({"run_id": run_id, "status": "completed", "vars": {"count": 3, "first": "a"}})
    );
    assert_eq!(s.run(&run_id).await.status, RunStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_webhook_whose_run_fails_answers_500() {
    let s = Server::start().await;
    let r = s
        .post_json("/hooks/refuse", &json!({"item": "a yacht"}), &[])
        .await;
    assert_eq!(r.status, 500, "{r:?}");
    let run_id = r.header("x-herald-run-id").unwrap().to_owned();
    assert_eq!(r.json["run_id"], run_id.as_str());
    assert_eq!(r.json["status"], "failed");
    assert!(
        r.json["error"]
            .as_str()
            .unwrap()
            .contains("cannot quote a yacht"),
        "{r:?}"
    );
    let run = s.run(&run_id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error
            .as_deref()
            .unwrap()
            .contains("cannot quote a yacht")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_webhook_that_waits_answers_504_and_the_run_goes_on() {
    let s = Server::start().await;
    let started = std::time::Instant::now();
    let r = s.post_json("/hooks/slow", &json!({"n": 1}), &[]).await;
    let took = started.elapsed();
    let message = r.assert_error(504, "timeout").to_owned();
    assert!(
        took >= Duration::from_millis(300),
        "answered after {took:?}, before the timeout"
    );
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    let runs = s.runs_of("slow").await;
    assert_eq!(runs.len(), 1);
    assert!(message.contains(&runs[0].id), "{message}");
    assert_eq!(runs[0].status, RunStatus::Waiting);
    assert_eq!(runs[0].cursor["step"], "pause");

    // The run goes on: an hour later it records its reply and completes.
    s.clock.advance(Duration::from_secs(3600));
    s.settle().await;
    let run = s.run(&runs[0].id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(
        run.response.as_ref().unwrap()["body"],
        json!({"late": "yes"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_webhook_whose_run_waits_answers_when_it_responds_within_the_timeout() {
    let s = Arc::new(Server::start().await);
    let caller = {
        let s = s.clone();
        tokio::spawn(async move { s.post_json("/hooks/later", &json!({"n": 7}), &[]).await })
    };
    // Once the run is stored and waiting, an hour passes on the clock and a worker resumes it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let run = loop {
        if let Some(r) = s
            .runs_of("later")
            .await
            .into_iter()
            .find(|r| r.status == RunStatus::Waiting)
        {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "the run never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !caller.is_finished(),
        "the caller was answered while the run was still waiting"
    );
    s.clock.advance(Duration::from_secs(3600));
    s.settle().await;
    let r = caller.await.unwrap();
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json, json!({"done": 7}));
    assert_eq!(r.header("x-herald-run-id"), Some(run.id.as_str()));
    assert_eq!(s.run(&run.id).await.status, RunStatus::Completed);
}

// --- Secrets -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_headers_stay_out_of_the_database() {
    let s = Server::start().await;
    let trace = ("x-trace-id", "trace-123");
    let ua = ("user-agent", "partner-client/2.0");

    let bearer = format!("Bearer {BEARER_TOKEN}");
    let a = s
        .post_json(
            "/hooks/bearer",
            &json!({}),
            &[("authorization", &bearer), trace, ua],
        )
        .await
        .accepted();
    let b = s
        .post_json(
            "/hooks/partner",
            &json!({}),
            &[("x-partner-key", PARTNER_KEY), trace, ua],
        )
        .await
        .accepted();
    let body = r#"{"lead":"L-1"}"#;
    let sig = hex::encode(hmac(HMAC_SECRET.as_bytes(), &[body.as_bytes()]));
    let c = s
        .post_raw("/hooks/hmac-hex", body, &[("x-signature", &sig), trace, ua])
        .await
        .accepted();
    let b64 = format!(
        "sha256={}",
        base64::engine::general_purpose::STANDARD
            .encode(hmac(HMAC_SECRET.as_bytes(), &[body.as_bytes()]))
    );
    let d = s
        .post_raw(
            "/hooks/hmac-b64",
            body,
            &[("x-hub-signature-256", &b64), trace, ua],
        )
        .await
        .accepted();
    let stripe_body = r#"{"id":"evt_s","type":"charge.succeeded"}"#;
    let stripe_sig = stripe_signature(STRIPE_SECRET, seconds(&s), stripe_body);
    let e = s
        .post_raw(
            "/hooks/stripe",
            stripe_body,
            &[("stripe-signature", &stripe_sig), trace, ua],
        )
        .await
        .accepted();

    let cases = [
        (a, "authorization", bearer.as_str()),
        (b, "x-partner-key", PARTNER_KEY),
        (c, "x-signature", sig.as_str()),
        (d, "x-hub-signature-256", b64.as_str()),
        (e, "stripe-signature", stripe_sig.as_str()),
    ];
    for (id, secret_header, secret_value) in cases {
        let run = s.run(&id).await;
        let headers = run.context["headers"]
            .as_object()
            .unwrap_or_else(|| panic!("no headers: {}", run.context));
        assert!(
            !headers.contains_key(secret_header),
            "{secret_header} was stored: {headers:?}"
        );
        assert_eq!(
            headers.get("x-trace-id"),
            Some(&json!("trace-123")),
            "{headers:?}"
        );
        assert_eq!(
            headers.get("user-agent"),
            Some(&json!("partner-client/2.0")),
            "{headers:?}"
        );
        assert_eq!(
            headers.get("content-type"),
            Some(&json!("application/json")),
            "{headers:?}"
        );
        // Nowhere else in the run either, nor in what the admin API shows of it.
        let stored = serde_json::to_string(&run).unwrap();
        assert!(
            !stored.contains(secret_value),
            "{secret_header}'s value is in the run: {stored}"
        );
        let detail = s.admin_get(&format!("/api/runs/{id}")).await;
        assert_eq!(detail.status, 200, "{detail:?}");
        assert!(
            !detail.text.contains(secret_value),
            "{secret_header}'s value is in the admin API: {}",
            detail.text
        );
    }
    // And not in any table of the database file.
    let mut conn = sqlx::sqlite::SqliteConnection::connect(&s.db.url)
        .await
        .unwrap();
    let everything: Vec<String> = sqlx::query_scalar(
        "SELECT context FROM runs UNION ALL SELECT COALESCE(output, '') FROM step_log UNION ALL SELECT data FROM events",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    let all = everything.join("\n");
    assert!(
        all.contains("trace-123"),
        "the check reads the stored contexts"
    );
    for secret in [BEARER_TOKEN, PARTNER_KEY, sig.as_str(), stripe_sig.as_str()] {
        assert!(!all.contains(secret), "{secret} is in the database");
    }
}

// --- Admin API ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_a_configured_key() {
    let s = Server::start().await;
    let before = s.stored().await;
    let r = s.send(s.http.get(s.url("/api/definitions"))).await;
    r.assert_error(401, "missing_credentials");
    let r = s
        .send(
            s.http
                .get(s.url("/api/runs"))
                .header("x-api-key", "not-the-key"),
        )
        .await;
    r.assert_error(401, "invalid_credentials");
    // A key that only shares a prefix with the real one is wrong too.
    let r = s
        .send(
            s.http
                .get(s.url("/api/runs"))
                .header("x-api-key", &ADMIN_KEY[..ADMIN_KEY.len() - 1]),
        )
        .await;
    r.assert_error(401, "invalid_credentials");
    // Every endpoint is behind the key, writes included.
    let r = s
        .send(
            s.http
                .post(s.url("/api/events"))
                .header("content-type", "application/json")
                .body(r#"{"name": "lead.replied", "key": "ada@example.com"}"#),
        )
        .await;
    r.assert_error(401, "missing_credentials");
    let r = s
        .send(
            s.http
                .post(s.url("/api/messages/sms"))
                .header("content-type", "application/json")
                .body(r#"{"from": "+18015550100", "text": "STOP"}"#),
        )
        .await;
    r.assert_error(401, "missing_credentials");
    s.assert_unchanged(before, "a refused admin request").await;
    assert_eq!(s.admin_get("/api/runs").await.status, 200);

    let closed = Server::start_with(false, START).await;
    let before = closed.stored().await;
    for key in [None, Some(ADMIN_KEY), Some("")] {
        let mut req = closed.http.get(closed.url("/api/runs"));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        closed.send(req).await.assert_error(403, "admin_disabled");
    }
    let r = closed
        .send(
            closed
                .http
                .post(closed.url("/api/events"))
                .header("x-api-key", ADMIN_KEY)
                .header("content-type", "application/json")
                .body(r#"{"name": "lead.replied"}"#),
        )
        .await;
    r.assert_error(403, "admin_disabled");
    closed
        .assert_unchanged(before, "the closed admin API")
        .await;
    // Webhooks do not need the admin API.
    closed
        .post_json("/hooks/echo", &json!({}), &[])
        .await
        .accepted();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_definitions_and_filters_runs() {
    let s = Server::start().await;
    let r = s.admin_get("/api/definitions").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["generation"], 1);
    let defs = r.json["definitions"].as_array().unwrap();
    assert_eq!(defs.len(), WORKFLOWS.len());
    let ids: Vec<&str> = defs.iter().map(|d| d["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "listed in id order");
    let quote = defs.iter().find(|d| d["id"] == "quote").unwrap();
    assert_eq!(
        quote["triggers"],
        json!([{"kind": "webhook", "method": "POST", "path": "/hooks/quote", "respond": "sync"}])
    );
    assert_eq!(quote["steps"], 2);
    assert_eq!(
        quote["version"].as_str().map(str::len).map(|n| n > 8),
        Some(true)
    );
    let ticker = defs.iter().find(|d| d["id"] == "ticker").unwrap();
    assert_eq!(
        ticker["triggers"],
        json!([{"kind": "cron", "schedule": "*/5 * * * *", "timezone": "UTC"}])
    );
    let stop = defs.iter().find(|d| d["id"] == "stop").unwrap();
    assert_eq!(
        stop["triggers"],
        json!([{"kind": "message", "channel": "sms"}])
    );
    let replied = defs.iter().find(|d| d["id"] == "replied-log").unwrap();
    assert_eq!(
        replied["triggers"],
        json!([{"kind": "event", "name": "lead.replied"}])
    );

    let ada = s
        .post_json("/hooks/lead", &json!({"email": "ada@example.com"}), &[])
        .await
        .accepted();
    s.clock.advance(Duration::from_millis(5));
    let cy = s
        .post_json("/hooks/lead", &json!({"email": "cy@example.com"}), &[])
        .await
        .accepted();
    s.clock.advance(Duration::from_millis(5));
    let echo = s.post_json("/hooks/echo", &json!({}), &[]).await.accepted();

    let r = s.admin_get("/api/runs").await;
    let listed: Vec<&str> = r.json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        vec![echo.as_str(), cy.as_str(), ada.as_str()],
        "newest first"
    );
    assert_eq!(r.json["next_before"], Value::Null);

    let r = s.admin_get("/api/runs?workflow=lead&status=waiting").await;
    let runs = r.json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{r:?}");
    assert!(
        runs.iter()
            .all(|r| r["workflow"] == "lead" && r["status"] == "waiting" && r["step"] == "reply")
    );
    let r = s
        .admin_get("/api/runs?workflow=lead&status=waiting&limit=1")
        .await;
    let runs = r.json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["id"], cy.as_str());
    // The next page starts before the last run shown.
    let before = r.json["next_before"]
        .as_i64()
        .expect("a full page has a next page");
    let r = s
        .admin_get(&format!(
            "/api/runs?workflow=lead&status=waiting&limit=1&before={before}"
        ))
        .await;
    let runs = r.json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["id"], ada.as_str());

    let r = s.admin_get("/api/runs?status=completed").await;
    let runs = r.json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["id"], echo.as_str());
    let r = s
        .admin_get("/api/runs?workflow=lead&status=completed")
        .await;
    assert_eq!(r.json["runs"], json!([]));
    let r = s.admin_get("/api/runs?status=sleeping").await;
    r.assert_error(400, "invalid_status");
    // A query that does not parse is a JSON error too, not plain text.
    let r = s.admin_get("/api/runs?limit=many").await;
    let message = r.assert_error(400, "invalid_query");
    assert!(message.contains("limit"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_shows_a_run_and_cancels_it_once() {
    let s = Server::start().await;
    let id = s
        .post_json(
            "/hooks/lead",
            &json!({"email": "ada@example.com"}),
            &[("x-trace-id", "t-1")],
        )
        .await
        .accepted();
    let r = s.admin_get(&format!("/api/runs/{id}")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let run = &r.json["run"];
    assert_eq!(run["id"], id.as_str());
    assert_eq!(run["workflow"], "lead");
    assert_eq!(run["status"], "waiting");
    assert_eq!(run["trigger"], "webhook");
    assert_eq!(run["step"], "reply");
    assert_eq!(run["context"]["body"]["email"], "ada@example.com");
    assert_eq!(run["context"]["headers"]["x-trace-id"], "t-1");
    let steps = r.json["steps"].as_array().unwrap();
    let trail: Vec<String> = steps
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s["step_id"].as_str().unwrap(),
                s["status"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(trail[0], "hello:completed", "{trail:?}");
    assert!(trail.iter().any(|t| t.starts_with("reply:")), "{trail:?}");
    let messages = r.json["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{r:?}");
    assert_eq!(messages[0]["channel"], "email");
    assert_eq!(messages[0]["to"], "ada@example.com");
    assert_eq!(messages[0]["subject"], "Hello");
    assert_eq!(messages[0]["step"], "hello");

    let r = s
        .admin_get("/api/runs/00000000-0000-0000-0000-000000000000")
        .await;
    r.assert_error(404, "not_found");
    s.admin_post("/api/runs/no-such-run/cancel", None)
        .await
        .assert_error(404, "not_found");

    let r = s.admin_post(&format!("/api/runs/{id}/cancel"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json, json!({"run_id": id, "status": "cancelled"}));
    let stored = s.run(&id).await;
    assert_eq!(stored.status, RunStatus::Cancelled);
    assert!(stored.finished_at.is_some());
    s.admin_post(&format!("/api/runs/{id}/cancel"), None)
        .await
        .assert_error(409, "already_finished");
    // The event it waited for no longer moves it.
    s.admin_post(
        "/api/events",
        Some(r#"{"name": "lead.replied", "key": "ada@example.com", "data": {"text": "hi"}}"#),
    )
    .await;
    s.settle().await;
    assert_eq!(s.run(&id).await.status, RunStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_retries_only_failed_runs() {
    let s = Server::start().await;
    s.sink
        .respond_by_default(Reply::status(400).body("lead missing"));
    let id = s
        .post_json("/hooks/flaky", &json!({"lead": "L9"}), &[])
        .await
        .accepted();
    s.settle().await;
    let run = s.run(&id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error.as_deref().unwrap().contains("400"),
        "{:?}",
        run.error
    );

    let waiting = s
        .post_json("/hooks/lead", &json!({"email": "ada@example.com"}), &[])
        .await
        .accepted();
    s.admin_post(&format!("/api/runs/{waiting}/retry"), None)
        .await
        .assert_error(409, "not_failed");
    let done = s.post_json("/hooks/echo", &json!({}), &[]).await.accepted();
    s.admin_post(&format!("/api/runs/{done}/retry"), None)
        .await
        .assert_error(409, "not_failed");
    s.admin_post("/api/runs/no-such-run/retry", None)
        .await
        .assert_error(404, "not_found");

    // The cause is fixed; the retry resumes at the failed step.
    s.sink.respond_by_default(Reply::ok());
    let r = s.admin_post(&format!("/api/runs/{id}/retry"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json,
        json!({"run_id": id, "status": "pending", "step": "call_crm"})
    );
    s.settle().await;
    let run = s.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.error, None);
    assert_eq!(run.context["vars"]["status"], 200);
    assert_eq!(s.sink.requests().len(), 2);
    s.admin_post(&format!("/api/runs/{id}/retry"), None)
        .await
        .assert_error(409, "not_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_events_wake_waiting_runs_and_start_subscribers() {
    let s = Server::start().await;
    let ada = s
        .post_json("/hooks/lead", &json!({"email": "ada@example.com"}), &[])
        .await
        .accepted();
    let cy = s
        .post_json("/hooks/lead", &json!({"email": "cy@example.com"}), &[])
        .await
        .accepted();
    s.settle().await;
    assert_eq!(s.run(&ada).await.status, RunStatus::Waiting);

    let before = s.stored().await;
    s.admin_post("/api/events", Some(r#"{"name": "lead.replied", "key": }"#))
        .await
        .assert_error(400, "malformed_json");
    s.admin_post("/api/events", Some(r#"{"key": "ada@example.com"}"#))
        .await
        .assert_error(400, "malformed_json");
    s.admin_post("/api/events", Some(r#"{"name": "  "}"#))
        .await
        .assert_error(400, "invalid_event");
    s.assert_unchanged(before, "a malformed event").await;

    let r = s
        .admin_post("/api/events", Some(r#"{"name": "lead.replied", "key": "ada@example.com", "data": {"text": "call me"}}"#))
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert!(
        r.json["event_id"].as_str().is_some_and(|e| !e.is_empty()),
        "{r:?}"
    );
    s.settle().await;
    let run = s.run(&ada).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.context["vars"]["reply"], "call me");
    assert_eq!(
        s.run(&cy).await.status,
        RunStatus::Waiting,
        "another key does not wake it"
    );
    let subscribers = s.runs_of("replied-log").await;
    assert_eq!(subscribers.len(), 1);
    assert_eq!(subscribers[0].status, RunStatus::Completed);
    assert_eq!(
        subscribers[0].trigger_kind,
        herald::store::TriggerKind::Event
    );
    assert_eq!(
        subscribers[0].context["vars"],
        json!({"who": "ada@example.com", "text": "call me"})
    );
    assert_eq!(s.stored().await.events, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_inbound_messages_normalise_the_sender_and_start_keyword_workflows() {
    let s = Server::start().await;
    let before = s.stored().await;
    s.admin_post(
        "/api/messages/pigeon",
        Some(r#"{"from": "(801) 555-0100", "text": "STOP"}"#),
    )
    .await
    .assert_error(404, "not_found");
    s.admin_post(
        "/api/messages/sms",
        Some(r#"{"from": "(801) 555-0100", "text": "STOP""#),
    )
    .await
    .assert_error(400, "malformed_json");
    s.assert_unchanged(before, "a refused inbound message")
        .await;

    let r = s
        .admin_post(
            "/api/messages/sms",
            Some(r#"{"from": "(801) 555-0100", "text": "STOP"}"#),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json["from"], "+18015550100");
    let started = r.json["started_runs"].as_array().unwrap();
    assert_eq!(started.len(), 1, "{r:?}");
    s.settle().await;
    let run = s.run(started[0].as_str().unwrap()).await;
    assert_eq!(run.workflow_id, "stop");
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.context["message"]["from"], "+18015550100");
    let contact = s
        .engine
        .store
        .find_contact(None, Some("+18015550100"))
        .await
        .unwrap()
        .expect("the contact");
    assert_eq!(contact.status.as_deref(), Some("opted_out"));

    // Words that are not a keyword start nothing.
    let r = s
        .admin_post(
            "/api/messages/sms",
            Some(r#"{"from": "+1 801 555 0101", "text": "please stop by"}"#),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json["from"], "+18015550101");
    assert_eq!(r.json["started_runs"], json!([]));
    assert_eq!(s.runs_of("stop").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cron_lists_the_decided_slots() {
    let s = Server::start().await;
    let r = s.admin_get("/api/cron/ticker").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json, json!({"workflow": "ticker", "slots": []}));

    let scheduler = Scheduler::new(s.engine.clone());
    scheduler.tick().await.unwrap();
    s.clock.advance(Duration::from_secs(330));
    let report = scheduler.tick().await.unwrap();
    assert_eq!(report.fired, 1, "{report:?}");
    s.settle().await;

    let r = s.admin_get("/api/cron/ticker").await;
    assert_eq!(r.status, 200, "{r:?}");
    let slots = r.json["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 1, "{r:?}");
    assert_eq!(slots[0]["outcome"], "fired");
    let slot = jiff::Timestamp::from_str("2026-11-02T15:05:00Z")
        .unwrap()
        .as_millisecond();
    assert_eq!(slots[0]["slot"], slot);
    let run = s.run(slots[0]["run_id"].as_str().unwrap()).await;
    assert_eq!(run.workflow_id, "ticker");
    assert_eq!(run.status, RunStatus::Completed);
    let r = s.admin_get("/api/cron/echo").await;
    assert_eq!(r.json, json!({"workflow": "echo", "slots": []}));
}

// --- Health and metrics ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_store_definitions_and_reload() {
    let s = Server::start().await;
    let r = s.send(s.http.get(s.url("/health"))).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["status"], "ok");
    assert_eq!(r.json["database"]["ok"], true);
    assert_eq!(r.json["database"]["backend"], "sqlite");
    assert_eq!(r.json["definitions"], WORKFLOWS.len());
    assert_eq!(r.json["generation"], 1);
    assert_eq!(r.json["reload"]["ok"], true);
    assert_eq!(r.json["reload"]["generation"], 1);
    assert_eq!(r.json["reload"]["errors"], json!([]));
    assert_eq!(r.json["reload"]["at"], START);
    assert_eq!(r.json["draining"], false);
    // Health needs no key.
    assert_eq!(r.json["version"], env!("CARGO_PKG_VERSION"));
}

/// The value of the sample `name{labels}` in Prometheus text, whatever the label order.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let rest = rest.strip_suffix('}')?;
            let mut have: Vec<&str> = if rest.is_empty() {
                Vec::new()
            } else {
                rest.split(',').collect()
            };
            let mut want: Vec<String> =
                labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            have.sort_unstable();
            want.sort_unstable();
            (have == want).then(|| value.parse().ok()).flatten()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_runs_and_webhook_responses() {
    let s = Server::start().await;
    // `metered` is posted to by this test only, so its counters are this test's alone.
    let bearer = format!("Bearer {BEARER_TOKEN}");
    s.post_json("/hooks/metered", &json!({}), &[("authorization", &bearer)])
        .await
        .accepted();
    s.post_json("/hooks/metered", &json!({}), &[("authorization", &bearer)])
        .await
        .accepted();
    s.post_json("/hooks/metered", &json!({}), &[])
        .await
        .assert_error(401, "missing_credentials");
    s.post_raw("/hooks/metered", "{", &[("authorization", &bearer)])
        .await
        .assert_error(400, "malformed_json");
    s.send(s.http.get(s.url("/hooks/metered")))
        .await
        .assert_error(405, "method_not_allowed");
    s.post_json("/hooks/lead", &json!({"email": "ada@example.com"}), &[])
        .await
        .accepted();

    let r = s.send(s.http.get(s.url("/metrics"))).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type").unwrap().starts_with("text/plain"),
        "{r:?}"
    );
    let text = &r.text;
    assert!(text.contains("# TYPE herald_runs gauge"), "{text}");
    assert_eq!(
        sample(text, "herald_runs", &[("status", "completed")]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(text, "herald_runs", &[("status", "waiting")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(text, "herald_runs", &[("status", "failed")]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(text, "herald_outbox_messages", &[("status", "pending")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(text, "herald_definitions", &[]),
        Some(WORKFLOWS.len() as f64),
        "{text}"
    );
    assert!(
        text.contains("# TYPE herald_webhook_responses_total counter"),
        "{text}"
    );
    let responses = |status: &str| {
        sample(
            text,
            "herald_webhook_responses_total",
            &[("workflow", "metered"), ("status", status)],
        )
    };
    assert_eq!(responses("202"), Some(2.0), "{text}");
    assert_eq!(
        sample(
            text,
            "herald_webhook_duration_seconds_count",
            &[("workflow", "metered")]
        ),
        Some(4.0),
        "every answer of the workflow is timed: {text}"
    );
    assert_eq!(responses("401"), Some(1.0), "{text}");
    assert_eq!(responses("400"), Some(1.0), "{text}");
    // A 405 is not the workflow's: no workflow matched the method.
    assert_eq!(responses("405"), None, "{text}");
    assert!(
        sample(
            text,
            "herald_webhook_responses_total",
            &[("workflow", "-"), ("status", "405")]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            text,
            "herald_runs_started_total",
            &[("workflow", "metered"), ("trigger", "webhook")]
        ),
        Some(2.0),
        "{text}"
    );
}

/// The seeds' own URLs live under `/api`, beside Herald's admin API: declared webhooks answer
/// first, and `input` is the body there as in `herald run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_under_api_answers_before_the_admin_api() {
    let s = Server::start().await;
    let r = s
        .post_json("/api/chat", &json!({"message": "hello"}), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["echo"], "hello", "{r:?}");
    assert_eq!(r.json["same"], true, "{r:?}");
    // Herald's own routes are still there.
    s.send(s.http.get(s.url("/api/runs")))
        .await
        .assert_error(401, "missing_credentials");
    let r = s.send(s.http.get(s.url("/health"))).await;
    assert_eq!(r.status, 200, "{r:?}");
    // A path that is neither says so in full.
    let r = s
        .send(
            s.http
                .post(s.url("/api/nothing"))
                .header("x-api-key", ADMIN_KEY),
        )
        .await;
    let message = r.assert_error(404, "not_found");
    assert!(message.contains("/api/nothing"), "{message}");
}

// --- The operator's admin API: contacts, outbox, bulk cancel, counts, cron now, retention ------

impl Server {
    async fn admin_send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("x-api-key", ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_finds_edits_and_erases_contacts() {
    use reqwest::Method;
    let s = Server::start().await;
    let r = s
        .admin_send(
            Method::POST,
            "/api/contacts",
            Some(json!({"email": "Ada@Example.com", "phone": "303 555 0100", "first_name": "Ada"})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.json["contact"]["id"].as_str().unwrap().to_owned();
    assert_eq!(r.json["contact"]["email"], "ada@example.com");
    assert_eq!(r.json["contact"]["phone"], "+13035550100");
    // The same person again is the same contact.
    let r = s
        .admin_send(
            Method::POST,
            "/api/contacts",
            Some(json!({"email": "ada@example.com", "last_name": "Lovelace"})),
        )
        .await;
    assert_eq!(
        (r.status, r.json["created"].clone()),
        (200, json!(false)),
        "{r:?}"
    );
    s.admin_send(
        Method::POST,
        "/api/contacts",
        Some(json!({"email": "grace@example.com"})),
    )
    .await;
    // Bad input says what is wrong.
    let r = s
        .admin_send(
            Method::POST,
            "/api/contacts",
            Some(json!({"phone": "call me"})),
        )
        .await;
    assert!(
        r.assert_error(400, "invalid_contact")
            .contains("country code")
    );
    let r = s
        .admin_send(
            Method::POST,
            "/api/contacts",
            Some(json!({"first_name": "Nobody"})),
        )
        .await;
    assert!(
        r.assert_error(400, "invalid_contact")
            .contains("`email` or a `phone`")
    );
    let r = s
        .admin_send(
            Method::POST,
            "/api/contacts",
            Some(json!({"mail": "x@y.z"})),
        )
        .await;
    assert!(
        r.assert_error(400, "invalid_contact")
            .contains("unknown field `mail`")
    );

    // A declared attribute is stored as its type, or refused with the reason.
    let r = s
        .admin_send(
            Method::POST,
            "/api/contacts",
            Some(json!({"email": "ada@example.com", "attributes": {"loan_amount": "5,000"}})),
        )
        .await;
    assert!(
        r.assert_error(400, "invalid_contact")
            .contains("attribute `loan_amount` is \"5,000\", which is not a number"),
        "{r:?}"
    );
    let r = s
        .admin_send(
            Method::POST,
            "/api/contacts",
            Some(json!({"email": "ada@example.com", "attributes": {"loan_amount": " 5000 "}})),
        )
        .await;
    assert_eq!(
        r.json["contact"]["attributes"]["loan_amount"], 5000,
        "{r:?}"
    );

    let r = s.admin_get("/api/contacts?q=LOVE").await;
    let found = r.json["contacts"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{r:?}");
    assert_eq!(found[0]["last_name"], "Lovelace");

    let r = s
        .admin_send(
            Method::PATCH,
            &format!("/api/contacts/{id}"),
            Some(json!({"status": "vip", "attributes": {"plan": "pro"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["contact"]["status"], "vip");
    assert_eq!(r.json["contact"]["attributes"]["plan"], "pro");
    let r = s
        .admin_send(
            Method::PATCH,
            &format!("/api/contacts/{id}"),
            Some(json!({"email": "grace@example.com"})),
        )
        .await;
    r.assert_error(409, "conflict");
    let r = s
        .admin_send(
            Method::PATCH,
            "/api/contacts/nobody",
            Some(json!({"status": "x"})),
        )
        .await;
    r.assert_error(404, "not_found");
    let r = s
        .admin_send(
            Method::PATCH,
            &format!("/api/contacts/{id}"),
            Some(json!({"timezone": "Mars/Base"})),
        )
        .await;
    r.assert_error(400, "invalid_contact");

    let r = s
        .admin_send(Method::DELETE, &format!("/api/contacts/{id}"), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    s.admin_get(&format!("/api/contacts/{id}"))
        .await
        .assert_error(404, "not_found");
    s.admin_send(Method::DELETE, &format!("/api/contacts/{id}"), None)
        .await
        .assert_error(404, "not_found");
    // Without the key, nothing.
    let r = s.send(s.http.get(s.url("/api/contacts"))).await;
    r.assert_error(401, "missing_credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_steers_the_outbox_and_cancels_runs_in_bulk() {
    use reqwest::Method;
    let s = Server::start().await;
    // `lead` queues a message and waits two days for a reply.
    let run = s
        .post_json("/hooks/lead", &json!({"email": "ada@example.com"}), &[])
        .await
        .accepted();
    let r = s.admin_get(&format!("/api/outbox?run={run}")).await;
    let messages = r.json["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 1, "{r:?}");
    let m = messages[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(messages[0]["category"], "marketing");
    let r = s.admin_get(&format!("/api/outbox/{m}")).await;
    assert_eq!(r.json["message"]["body"], "Thanks for applying");
    let r = s.admin_post(&format!("/api/outbox/{m}/retry"), None).await;
    assert!(
        r.assert_error(409, "wrong_state")
            .contains("only failed messages")
    );
    let r = s.admin_post(&format!("/api/outbox/{m}/cancel"), None).await;
    assert_eq!(r.json["message"]["status"], "cancelled", "{r:?}");
    s.admin_post("/api/outbox/nope/cancel", None)
        .await
        .assert_error(404, "not_found");
    s.admin_get("/api/outbox?status=lost")
        .await
        .assert_error(400, "invalid_status");

    // Bulk cancel needs a filter, and a dry run changes nothing.
    let r = s
        .admin_send(Method::POST, "/api/runs/cancel", Some(json!({})))
        .await;
    r.assert_error(400, "missing_filter");
    let r = s
        .admin_send(
            Method::POST,
            "/api/runs/cancel",
            Some(json!({"workflow": "lead", "dry_run": true})),
        )
        .await;
    assert_eq!(r.json["would_cancel"], 1, "{r:?}");
    let r = s.admin_get("/api/runs/counts?workflow=lead").await;
    assert_eq!(r.json["runs"]["waiting"], 1, "{r:?}");
    let r = s
        .admin_send(
            Method::POST,
            "/api/runs/cancel",
            Some(json!({"workflow": "lead"})),
        )
        .await;
    assert_eq!(r.json["cancelled"], 1, "{r:?}");
    let r = s.admin_get("/api/runs/counts").await;
    assert_eq!(r.json["runs"]["cancelled"], 1, "{r:?}");
    assert_eq!(r.json["outbox"]["cancelled"], 1, "{r:?}");
    let r = s
        .admin_send(
            Method::POST,
            "/api/runs/cancel",
            Some(json!({"label": "no-colon"})),
        )
        .await;
    r.assert_error(400, "invalid_label");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_runs_a_cron_workflow_now_and_says_when_retention_is_off() {
    let s = Server::start().await;
    let r = s.admin_post("/api/cron/ticker/run", None).await;
    assert_eq!(r.status, 202, "{r:?}");
    let run = r.json["run_id"].as_str().unwrap().to_owned();
    let r = s.admin_get(&format!("/api/runs/{run}")).await;
    assert_eq!(r.json["run"]["trigger"], "cron", "{r:?}");
    s.admin_post("/api/cron/lead/run", None)
        .await
        .assert_error(409, "no_cron_trigger");
    s.admin_post("/api/cron/nope/run", None)
        .await
        .assert_error(404, "not_found");
    s.admin_post("/api/retention/run", None)
        .await
        .assert_error(409, "retention_off");
}

/// Validation reserves the admin API's routes from `API_ROUTES`, so a webhook cannot shadow
/// one. Each listed path, with its parameters filled in, reaches an admin handler, not the
/// fallback's "no admin endpoint": the list names routes the server really has. (A route
/// added to the server but not to the list is not caught here.)
#[tokio::test]
async fn every_reserved_admin_route_is_one_the_server_answers() {
    let s = Server::start().await;
    for route in herald::definitions::model::config::API_ROUTES {
        let path = format!("/api{route}")
            .replace("{id}", "nothing-here")
            .replace("{channel}", "log")
            .replace("{workflow}", "nothing-here")
            .replace("{address}", "someone");
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let answer = s
                .http
                .request(method.clone(), format!("http://{}{path}", s.addr))
                .header("x-api-key", ADMIN_KEY)
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let body = answer.text().await.unwrap();
            assert!(
                !body.contains("no admin endpoint"),
                "{method} {path}: {status} {body}"
            );
        }
    }
}
