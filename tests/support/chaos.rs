//! Chaos across processes: several `herald serve` processes on one PostgreSQL database,
//! under a mixed load (webhooks that send an e-mail over SMTP, wait, then post to an HTTP
//! provider; a per-minute cron that posts too), while one process at a time is killed with
//! SIGKILL and restarted. Afterwards, the counts that must hold:
//!
//! - every webhook answered 2xx has exactly one run;
//! - every run has finished, `completed`;
//! - every message reached its provider, under one idempotency key each (a kill between a
//!   provider's acceptance and Herald's record of it re-sends under the same key, which an
//!   idempotent provider sees as one message; such repeats are counted and reported);
//! - every cron slot of the period fired exactly once.
//!
//! The processes share a fast clock (`HERALD_TEST_CLOCK`, 60x), so a minute of schedule and
//! of waiting passes every real second. `tests/chaos.rs` runs a short round in the test
//! suite; `benches/chaos.rs` runs the long one (`cargo bench --bench chaos`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::store::{CronOutcome, OutboxStatus, RunFilter, RunRecord, RunStatus};
use rand::Rng;

use crate::support::{HttpSink, SmtpSink};

const SPEED: i64 = 60;
const CLOCK_START: &str = "2026-11-02T15:00:00Z";
const MINUTE: i64 = 60_000;

/// How a round of chaos is run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub processes: usize,
    /// SIGKILLs, each followed by a restart of the killed process.
    pub kills: usize,
    /// The pause between two kills, drawn from this range (milliseconds).
    pub pause_ms: std::ops::Range<u64>,
    /// Webhooks posted per second, spread over the processes alive.
    pub webhooks_per_second: u32,
}

/// What a round found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub accepted: usize,
    pub runs: usize,
    pub emails: usize,
    pub posts: usize,
    pub repeated_deliveries: usize,
    pub cron_slots: usize,
    pub kills: usize,
    pub seconds: f64,
}

struct Proc {
    child: Option<Child>,
    port: u16,
}

impl Proc {
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
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

fn start(dir: &std::path::Path, url: &str, clock: &str, port: u16) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--no-watch", "--dir"])
        .arg(dir)
        .args([
            "--database-url",
            url,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("HERALD_TEST_CLOCK", clock)
        .env("RUST_LOG", "error")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("herald serve starts");
    let stdout = child.stdout.take().unwrap();
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
    Proc {
        child: Some(child),
        port,
    }
}

fn project(http: &HttpSink, smtp: &SmtpSink) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!(
            "channels:\n  email: {{ provider: smtp, host: 127.0.0.1, port: {}, tls: none, from: \"Herald <h@example.com>\", timeout: 5s }}\n  hook: {{ provider: webhook, url: \"{}\", timeout: 5s }}\nengine: {{ lease: 3s }}\n",
            smtp.port(),
            http.url("/messages")
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(
        dir.path().join("workflows/order.yaml"),
        r#"
kind: workflow
id: order
triggers:
  - webhook: { path: /hooks/order, idempotency_key: "{{ body.n }}" }
steps:
  - id: receipt
    send: { channel: email, to: "buyer-{{ body.n }}@example.com", subject: "Order {{ body.n }}", body: "received" }
  - id: pause
    wait: 2m
  - id: ship
    send: { channel: hook, to: "warehouse", body: "ship {{ body.n }}" }
  - id: done
    set: { finished: true }
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("workflows/tick.yaml"),
        r#"
kind: workflow
id: tick
triggers:
  - cron: { schedule: "* * * * *", catch_up: all, catch_up_window: 1h }
steps:
  - id: post
    send: { channel: hook, to: "ticker", body: "tick {{ trigger.slot }}" }
"#,
    )
    .unwrap();
    dir
}

/// Runs one round against the database at `url` and checks the counts; panics on a breach.
pub async fn run(url: &str, settings: &Settings) -> Report {
    let began = Instant::now();
    let http = HttpSink::start().await;
    let smtp = SmtpSink::start().await;
    let dir = project(&http, &smtp);
    let origin = jiff::Timestamp::now().as_millisecond();
    let clock = format!("speed={SPEED},origin={origin},start={CLOCK_START}");
    let ports: Vec<u16> = (0..settings.processes).map(|_| free_port()).collect();
    let procs: Arc<Vec<Mutex<Proc>>> = Arc::new(
        ports
            .iter()
            .map(|&p| Mutex::new(start(dir.path(), url, &clock, p)))
            .collect(),
    );
    herald::tls::init();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap();

    // Load: webhooks at a steady rate, each retried on any process until one answers 2xx.
    let stop = tokio_util::sync::CancellationToken::new();
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    let interval = Duration::from_secs_f64(1.0 / f64::from(settings.webhooks_per_second.max(1)));
    {
        let (client, accepted, stop, ports) = (
            client.clone(),
            accepted.clone(),
            stop.clone(),
            ports.clone(),
        );
        load.spawn(async move {
            let mut senders = tokio::task::JoinSet::new();
            while !stop.is_cancelled() {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let (client, accepted, ports) = (client.clone(), accepted.clone(), ports.clone());
                senders.spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(120);
                    loop {
                        let port = ports[rand::rng().random_range(0..ports.len())];
                        let r = client
                            .post(format!("http://127.0.0.1:{port}/hooks/order"))
                            .json(&serde_json::json!({"n": n}))
                            .send()
                            .await;
                        if let Ok(resp) = &r {
                            if resp.status().is_success() {
                                accepted.lock().unwrap().insert(n.to_string());
                                return;
                            }
                            assert!(
                                resp.status().is_server_error(),
                                "webhook {n}: {}",
                                resp.status()
                            );
                        }
                        assert!(Instant::now() < deadline, "webhook {n} was never accepted");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
                tokio::time::sleep(interval).await;
            }
            while let Some(r) = senders.join_next().await {
                r.expect("a sender panicked");
            }
        });
    }

    // The killer.
    let first_slot_after = herald::engine::clock::ScaledClock::parse(&clock).unwrap();
    use herald::engine::clock::Clock as _;
    let period_start = first_slot_after.now();
    for k in 0..settings.kills {
        let pause = rand::rng().random_range(settings.pause_ms.clone());
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let i = rand::rng().random_range(0..settings.processes);
        let port = ports[i];
        let dir = dir.path().to_path_buf();
        let (procs, url, clock) = (procs.clone(), url.to_owned(), clock.clone());
        tokio::task::spawn_blocking(move || {
            let mut p = procs[i].lock().unwrap();
            p.kill9();
            *p = start(&dir, &url, &clock, port);
        })
        .await
        .unwrap();
        if (k + 1) % 10 == 0 {
            eprintln!(
                "chaos: {} kills, {} webhooks accepted",
                k + 1,
                accepted.lock().unwrap().len()
            );
        }
    }
    stop.cancel();
    while let Some(r) = load.join_next().await {
        r.expect("the load panicked");
    }
    let period_end = first_slot_after.now();

    // Everything must finish on the processes left running.
    let store = herald::store::open(url).await.unwrap();
    let accepted: BTreeSet<String> = accepted.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(180);
    let (orders, ticks) = loop {
        let list = |w: &str| RunFilter {
            workflow_id: Some(w.into()),
            limit: 100_000,
            ..Default::default()
        };
        let orders = store.list_runs(&list("order")).await.unwrap();
        let ticks = store.list_runs(&list("tick")).await.unwrap();
        let outbox = store.count_outbox().await.unwrap();
        let settled = orders.len() == accepted.len()
            && orders
                .iter()
                .chain(&ticks)
                .all(|r| r.status == RunStatus::Completed)
            && outbox
                .iter()
                .all(|(s, n)| *s == OutboxStatus::Sent || *n == 0);
        if settled {
            break (orders, ticks);
        }
        assert!(
            Instant::now() < deadline,
            "not settled after 180 s: {} of {} orders, outbox {outbox:?}",
            orders.len(),
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for p in procs.iter() {
        p.lock().unwrap().kill9();
    }

    // Every 2xx has exactly one run.
    let keys: BTreeSet<String> = orders
        .iter()
        .map(|r| r.idempotency_key.clone().unwrap())
        .collect();
    assert_eq!(keys.len(), orders.len(), "two runs for one webhook");
    assert_eq!(
        keys, accepted,
        "every accepted webhook has its run, and only those"
    );

    // Every message arrived, one idempotency key per message.
    let mut repeated = 0;
    let mails = smtp.messages();
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for m in &mails {
        *by_id
            .entry(m.message_id.clone().expect("a Message-ID"))
            .or_default() += 1;
    }
    repeated += by_id.values().map(|n| n - 1).sum::<usize>();
    assert_eq!(by_id.len(), orders.len(), "one receipt per order");
    let posts = http.requests();
    let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
    for r in &posts {
        *by_key
            .entry(r.idempotency_key().expect("a key").to_owned())
            .or_default() += 1;
    }
    repeated += by_key.values().map(|n| n - 1).sum::<usize>();
    // Every shipment and every tick was posted, and nothing was posted that has no run. The
    // cron fires a minute a second until the processes are killed, after the runs above were
    // listed: a tick of those last moments may or may not have been posted, so posts are
    // checked against the runs as they stand after the kill, and completeness against the
    // settled ones.
    let ticks_after = store
        .list_runs(&RunFilter {
            workflow_id: Some("tick".into()),
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let ship = |r: &RunRecord| format!("{}:ship", r.id);
    let post = |r: &RunRecord| format!("{}:post", r.id);
    let settled_keys: BTreeSet<String> = orders
        .iter()
        .map(ship)
        .chain(ticks.iter().map(post))
        .collect();
    let stored_keys: BTreeSet<String> = orders
        .iter()
        .map(ship)
        .chain(ticks_after.iter().map(post))
        .collect();
    let never_posted: Vec<&String> = settled_keys
        .iter()
        .filter(|k| !by_key.contains_key(*k))
        .collect();
    let mut orphans = Vec::new();
    for key in by_key.keys().filter(|k| !stored_keys.contains(*k)) {
        let run_id = key.split(':').next().unwrap_or_default();
        let run = store.run(run_id).await.unwrap();
        let outbox = store.outbox_for_run(run_id).await.unwrap();
        orphans.push(format!("{key}: run {run:?}; outbox {outbox:?}"));
    }
    assert!(
        never_posted.is_empty() && orphans.is_empty(),
        "one post per shipment and per tick: never posted {never_posted:?}; posted without a run {orphans:#?}"
    );

    // Every slot of the period fired once.
    let fires = store.cron_fires("tick", 100_000).await.unwrap();
    let mut slots: BTreeMap<i64, usize> = BTreeMap::new();
    for f in &fires {
        assert_eq!(f.outcome, CronOutcome::Fired, "{f:?}");
        *slots.entry(f.slot).or_default() += 1;
    }
    assert!(slots.values().all(|n| *n == 1), "a slot recorded twice");
    let first = (period_start / MINUTE + 1) * MINUTE;
    let last = (period_end / MINUTE) * MINUTE;
    for slot in (first..=last - MINUTE).step_by(MINUTE as usize) {
        assert!(slots.contains_key(&slot), "slot {slot} never fired");
    }
    let tick_slots: BTreeSet<String> = ticks
        .iter()
        .map(|r| r.context["trigger"]["slot"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tick_slots.len(), ticks.len(), "two runs for one slot");

    Report {
        accepted: accepted.len(),
        runs: orders.len() + ticks.len(),
        emails: mails.len(),
        posts: posts.len(),
        repeated_deliveries: repeated,
        cron_slots: slots.len(),
        kills: settings.kills,
        seconds: began.elapsed().as_secs_f64(),
    }
}
