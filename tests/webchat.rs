//! The web chat end to end, through the real router on loopback, as a browser uses it: a
//! session, a visitor's message recorded like any provider's (starting a `message` trigger,
//! once per message id), the workflow's reply arriving over Server-Sent Events, and what a
//! browser that was away (or connected to another Herald process) missed arriving when it
//! comes back. Every refusal (a bad token, another site, a malformed or over-long message)
//! stores and starts nothing.

#[path = "support/db.rs"]
mod db;
mod support;

use std::sync::Arc;
use std::time::Duration;

use herald::definitions::env::EnvSource;
use herald::engine::clock::{Clock as _, VirtualClock};
use herald::store::{DynStore, RunFilter, RunRecord};
use serde_json::{Value, json};
use support::app::App;

const SITE: &str = "https://www.example-cars.com";
const SECRET: &str = "a-web-chat-secret-of-at-least-32-characters";

const CONFIG: &str = r#"
channels:
  chat:
    provider: webchat
    allowed_origins: ["https://www.example-cars.com", "https://*.dealer.example"]
    secret: ${env:WEBCHAT_SECRET}
    session_lifetime: 1d
    max_message_chars: 200
    max_streams_per_visitor: 2
"#;

/// Cathy, the car-loan site's chat agent, answers every message.
const CATHY: &str = r#"
kind: workflow
id: cathy
triggers:
  - message: { channel: chat }
steps:
  - id: answer
    send:
      channel: chat
      to: "{{ message.from }}"
      from: Cathy
      body: "You said: {{ message.text }}"
      category: transactional
"#;

struct Chat {
    app: App,
    clock: VirtualClock,
    http: reqwest::Client,
    db: db::TestDb,
    dir: tempfile::TempDir,
    env: EnvSource,
}

struct Visitor {
    token: String,
    id: String,
}

impl Chat {
    async fn start() -> Chat {
        Chat::on(
            db::sqlite("webchat")
                .await
                .expect("SQLite is always available"),
        )
        .await
    }

    async fn on(db: db::TestDb) -> Chat {
        Chat::with_config(db, CONFIG).await
    }

    async fn with_config(db: db::TestDb, config: &str) -> Chat {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("herald.yaml"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("workflows/cathy.yaml"), CATHY).unwrap();
        let env = EnvSource::Map(Arc::new(
            [("WEBCHAT_SECRET".to_owned(), SECRET.to_owned())].into(),
        ));
        let clock = VirtualClock::at("2026-11-02T15:00:00Z");
        let app = App::start(dir.path(), &env, db.store.clone(), &clock).await;
        Chat {
            app,
            clock,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            db,
            dir,
            env,
        }
    }

    /// Another Herald process on the same database: its own server, engine and reply hub.
    async fn second_process(&self) -> App {
        let store = self.db.open_again().await;
        App::start(self.dir.path(), &self.env, store, &self.clock).await
    }

    fn store(&self) -> &DynStore {
        &self.app.engine.store
    }

    async fn session(&self) -> Visitor {
        let answer = self
            .http
            .post(self.app.url("/inbound/chat/session"))
            .header("origin", SITE)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 200);
        assert_eq!(
            answer.headers()["access-control-allow-origin"],
            SITE,
            "the page may read the answer"
        );
        let body: Value = answer.json().await.unwrap();
        Visitor {
            token: body["token"].as_str().unwrap().to_owned(),
            id: body["visitor"].as_str().unwrap().to_owned(),
        }
    }

    /// Posts a visitor's message as the widget does; the status and the answer's text.
    async fn say(&self, visitor: &Visitor, id: &str, text: &str) -> (u16, String) {
        self.post_raw(
            &visitor.token,
            SITE,
            &json!({ "id": id, "text": text }).to_string(),
        )
        .await
    }

    async fn post_raw(&self, token: &str, origin: &str, body: &str) -> (u16, String) {
        let answer = self
            .http
            .post(self.app.url("/inbound/chat"))
            .header("origin", origin)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }

    /// Runs what the messages started and delivers what the runs sent, as the workers and
    /// the dispatcher of `herald serve` would.
    async fn work(&self, app: &App) {
        app.engine.run_due().await.unwrap();
        app.engine.deliver_due().await.unwrap();
    }

    async fn runs(&self) -> Vec<RunRecord> {
        self.store()
            .list_runs(&RunFilter {
                workflow_id: Some("cathy".into()),
                limit: 100,
                ..RunFilter::default()
            })
            .await
            .unwrap()
    }

    /// Opens a reply stream; `last` is the `Last-Event-ID` a reconnecting browser sends.
    async fn stream(&self, visitor: &Visitor, last: Option<&str>) -> Stream {
        self.stream_on(&self.app, visitor, last).await
    }

    async fn stream_on(&self, app: &App, visitor: &Visitor, last: Option<&str>) -> Stream {
        let mut request = self
            .http
            .get(app.url(&format!("/inbound/chat/events?token={}", visitor.token)))
            .header("origin", SITE)
            .header("accept", "text/event-stream");
        if let Some(id) = last {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut stream = Stream {
            response,
            buffer: String::new(),
        };
        let ready = stream.next().await.expect("the stream opens with `ready`");
        assert_eq!(ready.event, "ready");
        assert_eq!(ready.data["visitor"], visitor.id);
        stream
    }
}

/// A browser's end of a reply stream.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

#[derive(Debug)]
struct SseEvent {
    id: Option<String>,
    event: String,
    data: Value,
}

impl Stream {
    /// The next event within five seconds (keep-alive comments skipped), or `None`.
    async fn next(&mut self) -> Option<SseEvent> {
        self.within(Duration::from_secs(5)).await
    }

    async fn within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => event.id = Some(value.to_owned()),
                        "event" => event.event = value.to_owned(),
                        "data" => data.push_str(value),
                        _ => {}
                    }
                }
                if data.is_empty() {
                    continue;
                }
                event.data = serde_json::from_str(&data).expect("event data is JSON");
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .expect("the stream reads")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next reply's text, its outbox id and its sender.
    async fn reply(&mut self) -> (String, String, Value) {
        let e = self.next().await.expect("a reply within five seconds");
        assert_eq!(e.event, "message", "{e:?}");
        let id = e.id.expect("a reply has an id");
        assert_eq!(e.data["id"], id.as_str());
        (
            e.data["text"].as_str().unwrap().to_owned(),
            id,
            e.data["from"].clone(),
        )
    }
}

#[tokio::test]
async fn a_visitors_message_starts_the_workflow_and_its_reply_arrives_over_sse() {
    let chat = Chat::start().await;
    let ann = chat.session().await;
    let mut stream = chat.stream(&ann, None).await;

    let (status, answer) = chat
        .say(&ann, "m-1", "Can I get a loan for a 2019 Civic?")
        .await;
    assert_eq!(status, 202, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer, json!({"id": "m-1", "status": "accepted"}));
    let runs = chat.runs().await;
    assert_eq!(runs.len(), 1, "committed before the answer");
    assert_eq!(runs[0].context["message"]["from"], ann.id.as_str());

    chat.work(&chat.app).await;
    let (text, id, from) = stream.reply().await;
    assert_eq!(text, "You said: Can I get a loan for a 2019 Civic?");
    assert_eq!(from, "Cathy");
    let sent = chat.store().outbox_for_run(&runs[0].id).await.unwrap();
    assert_eq!(sent[0].id, id, "the event's id is the outbox row's");
    assert_eq!(sent[0].recipient, ann.id);
    // Pushed at once, then found again by the store poll: sent once.
    assert!(
        stream.within(Duration::from_millis(2500)).await.is_none(),
        "nothing more"
    );
}

#[tokio::test]
async fn a_reconnecting_browser_gets_only_what_it_missed() {
    let chat = Chat::start().await;
    let ann = chat.session().await;
    let mut first = chat.stream(&ann, None).await;
    chat.say(&ann, "m-1", "Hello").await;
    chat.work(&chat.app).await;
    let (text, seen, _) = first.reply().await;
    assert_eq!(text, "You said: Hello");
    drop(first);

    // Away (a tunnel, a closed laptop) while Cathy answers twice more, a minute apart. (A
    // reply sent within seconds before the last one seen may be sent again, for another
    // process's late commit; the widget drops it by id. A minute apart, none is.)
    for (id, text) in [("m-2", "Rates?"), ("m-3", "Term?")] {
        chat.clock.advance(Duration::from_secs(60));
        assert_eq!(chat.say(&ann, id, text).await.0, 202);
        chat.work(&chat.app).await;
    }

    let mut again = chat.stream(&ann, Some(&seen)).await;
    assert_eq!(again.reply().await.0, "You said: Rates?");
    assert_eq!(again.reply().await.0, "You said: Term?");
    assert!(
        again.within(Duration::from_millis(2500)).await.is_none(),
        "the reply it had is not sent again"
    );

    // Live again: the next reply comes at once.
    chat.clock.advance(Duration::from_secs(60));
    chat.say(&ann, "m-4", "Thanks").await;
    chat.work(&chat.app).await;
    assert_eq!(again.reply().await.0, "You said: Thanks");
}

#[tokio::test]
async fn a_reply_sent_before_the_page_listened_arrives_when_it_does() {
    let chat = Chat::start().await;
    let ann = chat.session().await;
    // No stream open at all when the reply is delivered: it is delivered (recorded) anyway.
    assert_eq!(
        chat.say(&ann, "m-1", "Is the Civic available?").await.0,
        202
    );
    chat.work(&chat.app).await;
    let run = &chat.runs().await[0];
    let sent = chat.store().outbox_for_run(&run.id).await.unwrap();
    assert_eq!(sent[0].status, herald::store::OutboxStatus::Sent);

    // A new page, with no last event: the recent history.
    let mut stream = chat.stream(&ann, None).await;
    assert_eq!(stream.reply().await.0, "You said: Is the Civic available?");

    // Another visitor hears nothing of Ann's conversation.
    let bob = chat.session().await;
    let mut other = chat.stream(&bob, None).await;
    assert!(other.within(Duration::from_millis(1500)).await.is_none());
}

#[tokio::test]
async fn a_reply_delivered_by_another_process_reaches_a_browser_connected_here() {
    // Two processes share one database: PostgreSQL when the tests have one, else one SQLite file.
    let db = match db::postgres("webchat::two_processes").await {
        Some(db) => db,
        None => db::sqlite("webchat").await.unwrap(),
    };
    let chat = Chat::on(db).await;
    let other = chat.second_process().await;
    let ann = chat.session().await;
    let mut stream = chat.stream(&ann, None).await;

    // The message reaches the other process, which runs the workflow and delivers the reply
    // (into its own hub, where nobody listens).
    let answer = chat
        .http
        .post(other.url("/inbound/chat"))
        .header("origin", SITE)
        .header("authorization", format!("Bearer {}", ann.token))
        .json(&json!({"id": "m-1", "text": "Hi from the other side"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 202);
    chat.work(&other).await;

    let (text, _, _) = stream.reply().await;
    assert_eq!(text, "You said: Hi from the other side");
    assert!(stream.within(Duration::from_millis(2500)).await.is_none());
}

#[tokio::test]
async fn a_retried_message_starts_one_run() {
    let chat = Chat::start().await;
    let ann = chat.session().await;
    for _ in 0..3 {
        let (status, _) = chat.say(&ann, "m-1", "Hello?").await;
        assert_eq!(status, 202, "a retry is answered like the first");
    }
    assert_eq!(chat.runs().await.len(), 1);
    // The id is the visitor's own: another visitor's message with the same id is theirs.
    let bob = chat.session().await;
    assert_eq!(chat.say(&bob, "m-1", "Hello?").await.0, 202);
    assert_eq!(chat.runs().await.len(), 2);
}

#[tokio::test]
async fn refused_requests_store_and_start_nothing() {
    let chat = Chat::start().await;
    let ann = chat.session().await;
    let good = json!({"id": "m-1", "text": "Hello"}).to_string();

    let (status, why) = chat.post_raw("not-a-token", SITE, &good).await;
    assert_eq!(status, 401, "{why}");
    assert!(why.contains("/session"), "{why}");
    let (status, why) = chat
        .post_raw(&ann.token, "https://evil.example", &good)
        .await;
    assert_eq!(status, 403, "{why}");
    assert!(why.contains("allowed_origins"), "{why}");
    let (status, why) = chat.post_raw(&ann.token, SITE, "{\"id\": \"m-1\", ").await;
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("not JSON"), "{why}");
    let (status, why) = chat.say(&ann, "m-2", &"x".repeat(201)).await;
    assert_eq!(status, 413, "{why}");
    assert!(why.contains("at most 200"), "{why}");
    let (status, why) = chat
        .post_raw(&ann.token, SITE, &json!({"text": "no id"}).to_string())
        .await;
    assert_eq!(status, 400, "{why}");

    // A session ran out: refused, and a new session is someone new.
    chat.clock.advance(Duration::from_secs(86_401));
    let (status, why) = chat.say(&ann, "m-3", "Still there?").await;
    assert_eq!(status, 401);
    assert!(why.contains("expired"), "{why}");

    assert!(chat.runs().await.is_empty());
    assert_eq!(chat.store().count_outbox().await.unwrap(), vec![]);
    let event = chat
        .store()
        .find_event("message.chat", &ann.id, 0, &[])
        .await
        .unwrap();
    assert!(event.is_none(), "{event:?}");

    // The same for the browser's other routes.
    let status = |r: reqwest::Response| r.status().as_u16();
    let session = |origin: &str| {
        chat.http
            .post(chat.app.url("/inbound/chat/session"))
            .header("origin", origin)
            .send()
    };
    assert_eq!(status(session("https://evil.example").await.unwrap()), 403);
    assert_eq!(
        status(session("https://north.dealer.example").await.unwrap()),
        200
    );
    let events = |token: &str, origin: &str| {
        chat.http
            .get(chat.app.url(&format!("/inbound/chat/events?token={token}")))
            .header("origin", origin)
            .send()
    };
    assert_eq!(
        status(events(&ann.token, SITE).await.unwrap()),
        401,
        "expired"
    );
    let fresh = chat.session().await;
    assert_eq!(status(events("junk", SITE).await.unwrap()), 401);
    assert_eq!(
        status(events(&fresh.token, "https://evil.example").await.unwrap()),
        403
    );
}

#[tokio::test]
async fn sessions_are_renewed_for_the_same_visitor() {
    let chat = Chat::start().await;
    let ann = chat.session().await;
    chat.clock.advance(Duration::from_secs(3600));
    let renewed: Value = chat
        .http
        .post(chat.app.url("/inbound/chat/session"))
        .header("origin", SITE)
        .header("authorization", format!("Bearer {}", ann.token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(renewed["visitor"], ann.id.as_str());
    assert_eq!(renewed["expires_in"], 86_400);
    assert_ne!(renewed["token"], ann.token.as_str());
}

#[tokio::test]
async fn browsers_on_allowed_sites_may_call_and_read() {
    let chat = Chat::start().await;
    let preflight = |path: &str, origin: &str| {
        chat.http
            .request(reqwest::Method::OPTIONS, chat.app.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let allowed = preflight("/inbound/chat", SITE).await.unwrap();
    assert_eq!(allowed.status().as_u16(), 204);
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], SITE);
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    assert!(h["vary"].to_str().unwrap().contains("Origin"));
    let refused = preflight("/inbound/chat/session", "https://evil.example")
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // A visitor's stream is capped per process (max_streams_per_visitor: 2).
    let ann = chat.session().await;
    let _one = chat.stream(&ann, None).await;
    let _two = chat.stream(&ann, None).await;
    let third = chat
        .http
        .get(
            chat.app
                .url(&format!("/inbound/chat/events?token={}", ann.token)),
        )
        .header("origin", SITE)
        .send()
        .await
        .unwrap();
    assert_eq!(third.status().as_u16(), 429);
}

#[tokio::test]
async fn the_widget_is_served_and_parses() {
    let chat = Chat::start().await;
    let answer = chat
        .http
        .get(chat.app.url("/inbound/chat/widget.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert!(
        answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let script = answer.text().await.unwrap();
    assert!(script.contains("EventSource"));
    let missing = chat
        .http
        .get(chat.app.url("/inbound/nope/widget.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);

    let node = std::process::Command::new("node").arg("--version").output();
    if node.is_err() {
        eprintln!("skipped: `node` is not installed, so widget.js was not parsed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("widget.js");
    std::fs::write(&path, &script).unwrap();
    let checked = std::process::Command::new("node")
        .arg("--check")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "widget.js does not parse: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[tokio::test]
async fn a_stream_carries_on_across_a_reload() {
    let chat = Chat::start().await;
    let ann = chat.session().await;
    let mut stream = chat.stream(&ann, None).await;

    // A reload builds every channel anew, this one's hub of open streams included.
    let layout = herald::definitions::project::Layout::discover(chat.dir.path()).unwrap();
    let (registry, _) =
        herald::engine::load_registry(&layout, &chat.env, 2, chat.clock.now()).unwrap();
    chat.app.engine.install(registry).await.unwrap();

    assert_eq!(chat.say(&ann, "m-1", "Still there?").await.0, 202);
    chat.work(&chat.app).await;
    assert_eq!(stream.reply().await.0, "You said: Still there?");
    assert!(stream.within(Duration::from_millis(2500)).await.is_none());
}

#[tokio::test]
async fn a_visitor_over_the_inbound_limit_is_told_to_wait() {
    let db = db::sqlite("webchat-limit")
        .await
        .expect("SQLite is always available");
    let config = format!("{CONFIG}compliance:\n  inbound_limit: {{ messages: 2, per: 1m }}\n");
    let chat = Chat::with_config(db, &config).await;
    let visitor = chat.session().await;
    assert_eq!(chat.say(&visitor, "m1", "hi").await.0, 202);
    assert_eq!(chat.say(&visitor, "m2", "are you there?").await.0, 202);
    let (status, text) = chat.say(&visitor, "m3", "hello??").await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("wait"), "{text}");
    assert_eq!(
        chat.runs().await.len(),
        2,
        "the third message started nothing"
    );
    // Another visitor is not held up.
    let other = chat.session().await;
    assert_eq!(chat.say(&other, "o1", "hi").await.0, 202);
}
