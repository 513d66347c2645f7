//! The crash test: `herald serve` as a child process, killed with SIGKILL at random moments
//! while 200 webhook-started runs fail into an error handler that waits and then sends,
//! restarted each time.
//!
//! Afterwards every run must have completed, every message must have reached the sink (an HTTP
//! server in this test process that, like a real provider, treats a repeated
//! `Idempotency-Key` as the same message), and nothing may be left `running`. On SQLite (the
//! default) always; on Postgres too when `HERALD_TEST_POSTGRES_URL` is set.
//!
//! The same for a burst of inbound messages: a provider (Telegram) posts texts from many
//! chats while the server is killed, and posts again whatever was not answered 2xx, as
//! providers do. Every text must start exactly one run, and every run's reply must arrive.

#[path = "support/db.rs"]
mod db;
mod support;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herald::store::{RunFilter, RunStatus};
use rand::Rng;
use support::HttpSink;

const RUNS: usize = 200;
const KILLS: usize = 6;

struct Server {
    child: Option<Child>,
}

impl Server {
    fn start(dir: &std::path::Path, url: &str, port: u16) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--no-watch", "--dir"])
            .arg(dir)
            .args([
                "--database-url",
                url,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("herald serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("herald serve said it is listening");
        Server { child: Some(child) }
    }

    /// SIGKILL: no shutdown hooks, no flushing, no released leases.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM, then a bounded wait for a clean exit.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match c.try_wait() {
                    Ok(Some(status)) => {
                        assert!(
                            status.success(),
                            "herald serve exited with {status} after SIGTERM"
                        );
                        return;
                    }
                    _ if Instant::now() > deadline => {
                        let _ = c.kill();
                        panic!("herald serve did not exit within 30s of SIGTERM");
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn project(sink: &HttpSink) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!(
            "channels:\n  sink: {{ provider: webhook, url: \"{}\", timeout: 5s }}\nengine: {{ lease: 3s }}\n",
            sink.url("/messages")
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(
        dir.path().join("workflows/drip.yaml"),
        r#"
kind: workflow
id: drip
triggers:
  - webhook:
      path: /hooks/drip
      idempotency_key: "{{ body.n }}"
steps:
  - id: note
    set: { n: "{{ body.n }}" }
  # Every run fails here and spends its wait and its send inside the error handler, so the
  # kills land inside handlers.
  - id: attempt
    try:
      - id: charge
        fail: "card declined for {{ vars.n }}"
    on_error:
      - id: pause
        wait: 2s
      - id: nudge
        send: { channel: sink, to: "lead-{{ vars.n }}@example.com", body: "message {{ vars.n }}" }
  - id: done
    set: { finished: true }
"#,
    )
    .unwrap();
    dir
}

/// Sends `count` requests (`request(n)`) from eight senders, each retried until it is answered
/// 2xx, as a provider or a webhook sender retries a dropped connection, while the server is
/// killed with SIGKILL `KILLS` times at random moments and restarted. Returns the last server.
async fn post_through_kills(
    mut server: Server,
    dir: &std::path::Path,
    url: &str,
    port: u16,
    count: usize,
    pause_between: std::ops::Range<u64>,
    request: impl Fn(usize) -> reqwest::RequestBuilder + Clone + Send + 'static,
) -> Server {
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    let next = Arc::new(AtomicUsize::new(0));
    for _ in 0..8 {
        let (request, next, accepted) = (request.clone(), next.clone(), accepted.clone());
        let pause_between = pause_between.clone();
        senders.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= count {
                    return;
                }
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    match request(n).send().await {
                        Ok(resp) if resp.status().is_success() => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Ok(resp) => assert!(
                            resp.status().is_server_error(),
                            "request {n} refused: {}",
                            resp.status()
                        ),
                        Err(_) => {}
                    }
                    assert!(Instant::now() < deadline, "request {n} never accepted");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // Spread the requests over the first seconds, so kills land while they arrive.
                let jitter = rand::rng().random_range(pause_between.clone());
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
        });
    }
    // The killer: SIGKILL at random moments, while requests arrive, runs wait and messages go
    // out.
    for k in 0..KILLS {
        let pause = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.kill9();
        eprintln!(
            "kill -9 #{} after {pause} ms; {} requests accepted so far",
            k + 1,
            accepted.load(Ordering::SeqCst)
        );
        server = Server::start(dir, url, port);
    }
    while let Some(r) = senders.join_next().await {
        r.expect("a sender panicked");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), count);
    server
}

async fn crash_and_recover(url: String) {
    let sink = HttpSink::start().await;
    let dir = project(&sink);
    let port = free_port();
    let server = Server::start(dir.path(), &url, port);
    herald::tls::init();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Every webhook is retried until it gets a 2xx, as a real sender retries on a dropped
    // connection; the idempotency key makes a retry find the original run.
    let mut server = post_through_kills(server, dir.path(), &url, port, RUNS, 20..150, move |n| {
        client
            .post(format!("http://127.0.0.1:{port}/hooks/drip"))
            .json(&serde_json::json!({"n": n}))
    })
    .await;

    // Everything must finish on the last server.
    let store = herald::store::open(&url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let waiting_since = Instant::now();
    let mut last_report = Instant::now();
    let runs = loop {
        let runs = store
            .list_runs(&RunFilter {
                workflow_id: Some("drip".into()),
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let keys: HashSet<String> = sink
            .requests()
            .iter()
            .filter_map(|r| r.idempotency_key().map(str::to_owned))
            .collect();
        let outbox = store.count_outbox().await.unwrap();
        let all_sent = outbox
            .iter()
            .all(|(s, n)| *s == herald::store::OutboxStatus::Sent || *n == 0);
        if runs.len() == RUNS
            && runs.iter().all(|r| r.status == RunStatus::Completed)
            && keys.len() == RUNS
            && all_sent
        {
            eprintln!(
                "all runs complete {:.1} s after the last restart",
                waiting_since.elapsed().as_secs_f64()
            );
            break runs;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            let mut by_status = BTreeMap::new();
            for r in &runs {
                *by_status.entry(r.status.as_str()).or_insert(0) += 1;
            }
            eprintln!(
                "waiting: {by_status:?}, {} distinct messages, outbox {outbox:?}",
                keys.len()
            );
        }
        if Instant::now() > deadline {
            let mut by_status = BTreeMap::new();
            for r in &runs {
                *by_status.entry(r.status.as_str()).or_insert(0) += 1;
            }
            panic!(
                "not finished after 120 s: {} runs {by_status:?}, {} distinct messages",
                runs.len(),
                keys.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    server.stop();

    // One run per webhook: the idempotency key held across kills and client retries.
    let ns: HashSet<String> = runs
        .iter()
        .map(|r| r.idempotency_key.clone().unwrap())
        .collect();
    assert_eq!(ns.len(), RUNS);
    let counts = store.count_runs().await.unwrap();
    assert!(
        counts
            .iter()
            .all(|(s, n)| *s == RunStatus::Completed || *n == 0),
        "left over: {counts:?}"
    );

    // Every message arrived, each under its own stable key: `<run id>:nudge`.
    let requests = sink.requests();
    let mut bodies = BTreeMap::new();
    for r in &requests {
        let key = r
            .idempotency_key()
            .expect("every delivery carries its key")
            .to_owned();
        bodies
            .entry(key)
            .or_insert_with(Vec::new)
            .push(r.json["body"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(bodies.len(), RUNS, "one distinct message per run");
    for run in &runs {
        let key = format!("{}:nudge", run.id);
        let got = bodies
            .get(&key)
            .unwrap_or_else(|| panic!("no message for run {}", run.id));
        let n = run.context["vars"]["n"].as_i64().unwrap();
        assert!(
            got.iter().all(|b| *b == format!("message {n}")),
            "{key}: {got:?}"
        );
        let log = store.step_log(&run.id).await.unwrap();
        let nudges = log
            .iter()
            .filter(|s| s.step_id == "nudge" && s.status == herald::store::StepStatus::Completed)
            .count();
        assert_eq!(
            nudges, 1,
            "run {} sent its message in more than one step execution",
            run.id
        );
        let failures = log
            .iter()
            .filter(|s| s.step_id == "charge" && s.status == herald::store::StepStatus::Failed)
            .count();
        assert_eq!(failures, 1, "run {} failed into its handler once", run.id);
        assert_eq!(
            run.context["vars"]["finished"], true,
            "the run carried on after the handler"
        );
    }
    // A kill between a delivery and its record makes the dispatcher deliver again under the
    // same key; an idempotent provider sees one message. Report how often that happened.
    let repeats: usize = bodies.values().map(|v| v.len() - 1).sum();
    eprintln!(
        "{RUNS} runs, {KILLS} kills: {} deliveries, {} repeated under an already-delivered key",
        requests.len(),
        repeats
    );
    let outbox_failed = store.count_outbox().await.unwrap();
    assert!(
        outbox_failed
            .iter()
            .all(|(s, n)| *s == herald::store::OutboxStatus::Sent || *n == 0),
        "{outbox_failed:?}"
    );
}

const TEXTS: usize = 300;
const CHATS: usize = 30;
const TG_SECRET: &str = "burst-secret";

fn inbound_project(sink: &HttpSink) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!(
            "channels:\n  sink: {{ provider: webhook, url: \"{}\", timeout: 5s }}\n  tg: {{ provider: telegram, bot_token: \"123:abc\", secret_token: {TG_SECRET}, api_base: \"http://127.0.0.1:9\" }}\nengine: {{ lease: 3s }}\n",
            sink.url("/messages")
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(
        dir.path().join("workflows/answer.yaml"),
        r#"
kind: workflow
id: answer
triggers:
  - message: { channel: tg }
steps:
  - id: reply
    send: { channel: sink, to: "chat-{{ message.from }}", body: "re: {{ message.text }}", category: transactional }
"#,
    )
    .unwrap();
    dir
}

async fn inbound_burst_survives_kills(url: String) {
    let sink = HttpSink::start().await;
    let dir = inbound_project(&sink);
    let port = free_port();
    let server = Server::start(dir.path(), &url, port);
    herald::tls::init();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut server = post_through_kills(server, dir.path(), &url, port, TEXTS, 5..60, move |n| {
        let chat = 1_000_000 + (n % CHATS) as u64;
        client
            .post(format!("http://127.0.0.1:{port}/inbound/tg"))
            .header("x-telegram-bot-api-secret-token", TG_SECRET)
            .json(&serde_json::json!({
                "update_id": 50_000 + n,
                "message": {"message_id": n, "date": 1764800000,
                    "chat": {"id": chat, "type": "private"}, "from": {"id": chat, "is_bot": false},
                    "text": format!("text {n}")},
            }))
    })
    .await;

    let store = herald::store::open(&url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let runs = loop {
        let runs = store
            .list_runs(&RunFilter {
                workflow_id: Some("answer".into()),
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let keys: HashSet<String> = sink
            .requests()
            .iter()
            .filter_map(|r| r.idempotency_key().map(str::to_owned))
            .collect();
        if runs.len() >= TEXTS
            && runs.iter().all(|r| r.status == RunStatus::Completed)
            && keys.len() >= TEXTS
        {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "not finished after 120 s: {} runs, {} replies",
            runs.len(),
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    server.stop();
    // One run per text, though texts were posted again after every kill.
    assert_eq!(runs.len(), TEXTS, "a text started more than one run");
    let texts: HashSet<String> = runs
        .iter()
        .map(|r| r.context["message"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts.len(), TEXTS, "every text has its run");
    // Every reply arrived, one per run, to the chat that wrote.
    let mut replies: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for r in sink.requests() {
        replies
            .entry(r.idempotency_key().unwrap().to_owned())
            .or_default()
            .insert(format!("{} {}", r.json["to"], r.json["body"]));
    }
    assert_eq!(replies.len(), TEXTS);
    for run in &runs {
        let got = &replies[&format!("{}:reply", run.id)];
        let n: usize = run.context["message"]["text"].as_str().unwrap()[5..]
            .parse()
            .unwrap();
        let chat = 1_000_000 + (n % CHATS) as u64;
        let want = format!("\"chat-{chat}\" \"re: text {n}\"");
        assert_eq!(got.iter().collect::<Vec<_>>(), [&want], "run {}", run.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_inbound_burst_survives_kill_9() {
    let db = db::sqlite("crash-inbound")
        .await
        .expect("sqlite always runs");
    let url = db.url.clone();
    drop(db.store.clone());
    inbound_burst_survives_kills(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_inbound_burst_survives_kill_9() {
    let Some(db) = db::postgres("crash::inbound").await else {
        return;
    };
    inbound_burst_survives_kills(db.url.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_survives_kill_9() {
    let db = db::sqlite("crash").await.expect("sqlite always runs");
    let url = db.url.clone();
    // The server opens the database itself; this process only reads it at the end.
    drop(db.store.clone());
    crash_and_recover(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_survives_kill_9() {
    let Some(db) = db::postgres("crash::postgres").await else {
        return;
    };
    crash_and_recover(db.url.clone()).await;
}

/// An operator reads the live database with another program (the `sqlite3` shell, a backup
/// tool), and later the server is killed. Every webhook answered 2xx must still have its run:
/// the other program must never believe it was the last connection and delete the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_keeps_every_acknowledged_run_after_an_outside_read_and_kill_9() {
    use sqlx::Connection as _;
    // No store is open in this process: the only connections are the server's and the
    // outside reader's, as on an operator's machine.
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", tmp.path().join("herald.db").display());
    let sink = HttpSink::start().await;
    let dir = project(&sink);
    let port = free_port();
    let mut server = Server::start(dir.path(), &url, port);
    herald::tls::init();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let post = |n: usize| {
        let client = client.clone();
        async move {
            client
                .post(format!("http://127.0.0.1:{port}/hooks/drip"))
                .json(&serde_json::json!({"n": n}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(post(0).await, 202);
    // Let the server run a while (its background work included) before the outside read.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Another process opens the database, reads, and closes it: the `sqlite3` shell when the
    // machine has one, else a connection from this process (which holds no other).
    let path = tmp.path().join("herald.db");
    let shell = Command::new("sqlite3")
        .arg(&path)
        .arg("select count(*) from runs")
        .output();
    match shell {
        Ok(out) if out.status.success() => {
            let n: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            assert!(n >= 1);
        }
        _ => {
            let mut outside = sqlx::sqlite::SqliteConnection::connect(&url).await.unwrap();
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
                .fetch_one(&mut outside)
                .await
                .unwrap();
            assert!(n >= 1);
            outside.close().await.unwrap();
        }
    }
    let mut accepted = 1;
    for n in 1..=300 {
        if post(n).await == 202 {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 301, "every webhook was accepted");
    server.kill9();
    server = Server::start(dir.path(), &url, port);
    server.kill9();
    let store = herald::store::open(&url).await.unwrap();
    let runs = store
        .list_runs(&RunFilter {
            workflow_id: Some("drip".into()),
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        runs.len(),
        accepted,
        "runs acknowledged with 202 were lost after an outside read and a kill -9"
    );
}

/// A conversation killed with SIGKILL, once while it waits and once just after it took an
/// answer, carries on at the question it was at, and says each thing once, though Telegram
/// delivers the answer again after the kill.
async fn conversation_resumes_after_kill_9(url: String) {
    let bot = support::telegram::FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!(
            "channels:\n  tg: {{ provider: telegram, bot_token: \"{}\", secret_token: {TG_SECRET}, api_base: \"{}\" }}\nengine: {{ lease: 3s }}\n",
            support::telegram::BOT_TOKEN,
            bot.api_base()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(
        dir.path().join("workflows/intake.yaml"),
        r#"
kind: conversation
id: intake
channels: [tg]
start:
  - command: start
slots:
  phone: { type: phone }
  consent: { type: yes_no }
steps:
  - say: "Welcome"
  - id: ask_phone
    ask: { prompt: "Your phone number?", slot: phone }
  - id: ask_consent
    ask: { prompt: "May we check? (yes/no)", slot: consent }
  - end: "Done: {{ slots.phone }}"
"#,
    )
    .unwrap();
    herald::tls::init();
    let port = free_port();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let post = |n: u64, text: &str| {
        let client = client.clone();
        let body = serde_json::json!({
            "update_id": 70_000 + n,
            "message": {"message_id": n, "date": 1764800000,
                "chat": {"id": 4242, "type": "private"}, "from": {"id": 4242, "is_bot": false},
                "text": text},
        });
        async move {
            let resp = client
                .post(format!("http://127.0.0.1:{port}/inbound/tg"))
                .header("x-telegram-bot-api-secret-token", TG_SECRET)
                .json(&body)
                .send()
                .await
                .expect("the server answers");
            assert!(resp.status().is_success(), "{}", resp.status());
        }
    };
    let said = |n: usize| {
        let bot = &bot;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let sent: Vec<String> = bot
                    .sent()
                    .iter()
                    .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
                    .collect();
                if sent.len() >= n {
                    return sent;
                }
                assert!(Instant::now() < deadline, "only {sent:?} after 30 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut server = Server::start(dir.path(), &url, port);
    post(1, "/start").await;
    said(2).await;
    server.kill9();
    let mut server = Server::start(dir.path(), &url, port);
    // Acknowledged, then killed at once: the answer is stored, its reply may not be sent.
    post(2, "801-555-0100").await;
    server.kill9();
    let mut server = Server::start(dir.path(), &url, port);
    post(2, "801-555-0100").await;
    said(3).await;
    post(3, "yes").await;
    said(4).await;
    // Anything sent twice would arrive within this pause.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.stop();
    let sent = said(4).await;
    assert_eq!(
        sent,
        [
            "Welcome",
            "Your phone number?",
            "May we check? (yes/no)",
            "Done: +18015550100"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_conversation_resumes_after_kill_9() {
    let db = db::sqlite("crash-conversation")
        .await
        .expect("sqlite always runs");
    let url = db.url.clone();
    drop(db.store.clone());
    conversation_resumes_after_kill_9(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_conversation_resumes_after_kill_9() {
    let Some(db) = db::postgres("crash::conversation").await else {
        return;
    };
    conversation_resumes_after_kill_9(db.url.clone()).await;
}
