//! Messaging: inbound texts from a provider to the committed reply, and outbound dispatch to a
//! provider on loopback, with and without a send rate.
//!
//! Run: `cargo bench --bench messaging` (release build). With `HERALD_TEST_POSTGRES_URL` set it
//! runs on PostgreSQL too, in a schema of its own that is dropped afterwards.
//!
//! For each backend it uses a project with a `twilio_sms` channel and one workflow that answers
//! every text:
//!
//! - **inbound**: `herald serve` (the release binary) runs as a child process on CPU 1, this
//!   process on CPU 0 when `taskset` is there (as benches/webhook.sh pins the server and wrk).
//!   `HERALD_BENCH_MESSAGES` texts (default 20,000), each from its own number, are posted as
//!   Twilio posts them (form-encoded, `X-Twilio-Signature` over the URL and the sorted fields),
//!   by `HERALD_BENCH_CLIENTS` clients at once (default 32). A text is answered once the
//!   message, its run and the run's first segment, with the reply in the outbox, are committed,
//!   so a request's latency is the time from the text to its committed reply; the benchmark
//!   checks that every answered text has its reply. The server also sends every reply, to a
//!   stand-in of Twilio in this process. It prints texts per second, p50 and p99, and the
//!   server's CPU time per text, receiving and replying (from /proc). `HERALD_BIN=path` runs
//!   another build of the server (an earlier commit's, to compare in one sitting).
//! - **outbound**: in this process, the engine's workers on the real clock (as `herald serve`
//!   runs them): the same number of texts are queued through the engine with the dispatcher
//!   stopped, then the dispatcher is started against a stand-in of Twilio's
//!   Messages API on loopback that answers `201` with a message `sid`. It prints messages
//!   delivered per second.
//! - **paced**: as outbound, with `rate: { messages: R, per: 1s }` on the channel
//!   (`HERALD_BENCH_RATE`, default 2,000) and `HERALD_BENCH_PACED` messages (default 10,000);
//!   it prints the rate the stand-in saw and how far it is from R.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use base64::Engine as _;
use herald::definitions::env::EnvSource;
use herald::definitions::project::Layout;
use herald::engine::clock::{Clock, SystemClock};
use herald::engine::{Engine, EngineOptions, StartRun, Trigger, load_registry};
use herald::store::{DynStore, OutboxStatus};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha1::Sha1;
use tokio_util::sync::CancellationToken;

#[path = "support/db.rs"]
mod db;
use db::{Db, POSTGRES_URL_VAR, open_postgres, open_sqlite};

// The allocator `herald serve` runs with (see src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-auth-token";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

const ANSWER: &str = r#"kind: workflow
id: answer
description: Answers every text.
triggers:
  - message: { channel: sms }
steps:
  - id: reply
    send:
      channel: sms
      to: "{{ message.from }}"
      body: "Thanks! We got: {{ message.text }}"
      category: transactional
"#;

const NOTIFY: &str = r#"kind: workflow
id: notify
triggers:
  - webhook: { path: /hooks/notify }
steps:
  - id: text
    send: { channel: sms, to: "{{ body.to }}", body: "Your car is ready", category: transactional }
"#;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A project whose `sms` channel sends to `api_base`, paced at `rate` a second if given.
fn project(api_base: &str, rate: Option<usize>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rate = rate
        .map(|r| format!("    rate: {{ messages: {r}, per: 1s }}\n"))
        .unwrap_or_default();
    let config = format!(
        "channels:\n  sms:\n    provider: twilio_sms\n    account_sid: {ACCOUNT}\n    auth_token: ${{env:TWILIO_AUTH_TOKEN}}\n    from: \"+15017122661\"\n    api_base: {api_base}\n{rate}"
    );
    std::fs::write(dir.path().join("herald.yaml"), config).unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(dir.path().join("workflows/answer.yaml"), ANSWER).unwrap();
    std::fs::write(dir.path().join("workflows/notify.yaml"), NOTIFY).unwrap();
    dir
}

struct Served {
    engine: Arc<Engine>,
    shutdown: CancellationToken,
}

/// The project's engine as `herald serve` runs it (workers and lease renewal on the real
/// clock), without the dispatcher, which a measurement starts when it is ready.
async fn serve(dir: &std::path::Path, store: DynStore) -> Served {
    herald::tls::init();
    let env = EnvSource::Map(Arc::new(
        [("TWILIO_AUTH_TOKEN".to_owned(), TOKEN.to_owned())].into(),
    ));
    let clock = SystemClock;
    let layout = Layout::discover(dir).unwrap();
    let (registry, _) = load_registry(&layout, &env, 1, clock.now()).unwrap_or_else(|r| {
        panic!(
            "{}",
            r.diagnostics
                .iter()
                .map(|d| d.render(false))
                .collect::<String>()
        )
    });
    let engine = Engine::new(store, Arc::new(clock), env, EngineOptions::default());
    engine.install(registry).await.unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(engine.clone().work(shutdown.clone()));
    tokio::spawn(engine.clone().renew_leases(shutdown.clone()));
    Served { engine, shutdown }
}

/// A text as Twilio posts it to `url`: the form, and its signature.
fn twilio_text(url: &str, from: &str, sid: &str) -> (String, String) {
    let fields = [
        ("AccountSid", ACCOUNT),
        ("Body", "Is the car still for sale?"),
        ("From", from),
        ("MessageSid", sid),
        ("NumMedia", "0"),
        ("To", "+15017122661"),
    ];
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    // Already sorted by name, as the signature wants.
    let mut mac = Hmac::<Sha1>::new_from_slice(TOKEN.as_bytes()).unwrap();
    mac.update(url.as_bytes());
    for (k, v) in fields {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (body, signature)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn sender(i: usize) -> String {
    format!("+14152{i:06}")
}

async fn outbox_total(store: &DynStore) -> i64 {
    store
        .count_outbox()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum()
}

/// `herald serve` as a child process on `dir` and `url`, pinned to CPU 1 when `taskset` is
/// there (this process pins itself to CPU 0), as benches/webhook.sh runs it beside wrk.
struct Child {
    process: std::process::Child,
    addr: SocketAddr,
}

impl Child {
    fn start(dir: &std::path::Path, url: &str) -> Child {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // `HERALD_BIN` compares another build (an earlier commit's) in the same sitting.
        let bin =
            std::env::var("HERALD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_herald").to_owned());
        let bin = bin.as_str();
        let pinned = has_taskset();
        let mut command = if pinned {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", "1", bin]);
            c
        } else {
            std::process::Command::new(bin)
        };
        let process = command
            .args(["serve", "--no-watch", "--dir"])
            .arg(dir)
            .args([
                "--database-url",
                url,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("TWILIO_AUTH_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("herald serve starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "herald serve never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Child { process, addr }
    }

    /// The server's CPU time so far (user + system), in ms, from /proc.
    fn cpu_ms(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.id())).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks * 10.0)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn has_taskset() -> bool {
    std::process::Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn inbound(backend: &str, db: Db, n: usize, clients: usize) {
    // The server also sends the replies, to a stand-in in this process, as it would in
    // production; its CPU time covers both.
    let (api_base, seen) = fake_twilio().await;
    let dir = project(&api_base, None);
    let server = Child::start(dir.path(), &db.url);
    let url = format!("http://{}/inbound/sms", server.addr);
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = server.cpu_ms();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, next) = (http.clone(), url.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return latencies;
                }
                let (body, signature) = twilio_text(&url, &sender(i), &format!("SM{i:032x}"));
                let t0 = Instant::now();
                let answer = http
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("x-twilio-signature", signature)
                    .body(body)
                    .send()
                    .await
                    .expect("the server answers");
                let status = answer.status();
                let _ = answer.bytes().await;
                assert_eq!(status, 200, "a signed text is taken");
                latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let posting = started.elapsed();
    // A text is answered once its run's first segment, the reply with it, is committed.
    assert_eq!(
        outbox_total(&db.store).await,
        n as i64,
        "every answered text has its reply in the outbox"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "replies still unsent after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu_before.zip(server.cpu_ms()).map(|(a, b)| b - a);
    drop(server);
    latencies.sort_by(f64::total_cmp);
    println!(
        "{backend} inbound: {n} texts from {clients} clients in {:.2} s: {:.0} texts/s, each answered with its reply committed in p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; server CPU {}",
        posting.as_secs_f64(),
        n as f64 / posting.as_secs_f64(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        quantile(&latencies, 1.0),
        cpu.map(|c| format!("{:.3} ms/text", c / n as f64))
            .unwrap_or_else(|| "unknown".into()),
    );
}

/// A stand-in of Twilio's Messages API that answers every send at once and notes when.
async fn fake_twilio() -> (String, Arc<Mutex<Vec<Instant>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let noted = seen.clone();
    let app = axum::Router::new().route(
        "/2010-04-01/Accounts/{sid}/Messages.json",
        post(move || {
            let noted = noted.clone();
            async move {
                let n = {
                    let mut seen = noted.lock().unwrap();
                    seen.push(Instant::now());
                    seen.len()
                };
                (
                    axum::http::StatusCode::CREATED,
                    axum::Json(json!({"sid": format!("SM{n:032x}"), "status": "queued"})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

/// Queues `n` texts through the engine, then starts the dispatcher and times their delivery.
/// Returns the rate the stand-in saw, from its first request to its last.
async fn outbound(backend: &str, db: Db, n: usize, rate: Option<usize>) -> f64 {
    let (api_base, seen) = fake_twilio().await;
    let dir = project(&api_base, rate);
    let served = serve(dir.path(), db.store.clone()).await;
    let workflow = served.engine.registry().workflows["notify"].clone();
    let next = Arc::new(AtomicUsize::new(0));
    let mut starters = Vec::new();
    for _ in 0..64 {
        let (engine, workflow, next) = (served.engine.clone(), workflow.clone(), next.clone());
        starters.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                engine
                    .start(StartRun {
                        workflow: workflow.clone(),
                        trigger: Trigger::Webhook {
                            method: "POST".into(),
                            path: "/hooks/notify".into(),
                            body: json!({"to": sender(i)}),
                            headers: Default::default(),
                            query: Default::default(),
                            params: Default::default(),
                        },
                        idempotency_key: None,
                        want_reply: false,
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for s in starters {
        s.await.unwrap();
    }
    assert_eq!(outbox_total(&db.store).await, n as i64, "every text queued");
    let started = Instant::now();
    tokio::spawn(served.engine.clone().dispatch(served.shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let sent = db
            .store
            .count_outbox()
            .await
            .unwrap()
            .iter()
            .find(|(s, _)| *s == OutboxStatus::Sent)
            .map_or(0, |(_, n)| *n);
        if sent >= n as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "{sent} of {n} sent after 600 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    served.shutdown.cancel();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), n, "each text reached the provider once");
    let span = seen[n - 1].duration_since(seen[0]).as_secs_f64();
    let observed = (n - 1) as f64 / span.max(1e-9);
    match rate {
        None => println!(
            "{backend} outbound: {n} texts delivered in {:.2} s: {:.0} messages/s (provider saw {observed:.0}/s)",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
        ),
        Some(r) => println!(
            "{backend} paced at {r}/s: {n} texts in {:.2} s; the provider saw {observed:.1}/s ({:+.2} % of the rate)",
            elapsed.as_secs_f64(),
            (observed / r as f64 - 1.0) * 100.0
        ),
    }
    observed
}

#[tokio::main]
async fn main() {
    herald::tls::init();
    if has_taskset() {
        // This process (the clients, the stand-in) on CPU 0; `herald serve` on CPU 1.
        let _ = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", "0", &std::process::id().to_string()])
            .output();
    }
    let n = env_usize("HERALD_BENCH_MESSAGES", 20_000);
    let clients = env_usize("HERALD_BENCH_CLIENTS", 32);
    let rate = env_usize("HERALD_BENCH_RATE", 2_000);
    let paced = env_usize("HERALD_BENCH_PACED", 10_000);
    let postgres_url = std::env::var(POSTGRES_URL_VAR).ok();
    let backends = std::env::var("HERALD_BENCH_BACKENDS").unwrap_or_else(|_| {
        if postgres_url.is_some() {
            "sqlite,postgres".into()
        } else {
            "sqlite".into()
        }
    });
    for backend in backends.split(',').map(str::trim) {
        let open = || async {
            match backend {
                "sqlite" => Some(open_sqlite().await),
                "postgres" => match &postgres_url {
                    Some(url) => Some(open_postgres(url).await),
                    None => None,
                },
                other => panic!("unknown backend `{other}`: use sqlite or postgres"),
            }
        };
        let Some(db) = open().await else {
            println!("{backend}: skipped, {POSTGRES_URL_VAR} is not set");
            continue;
        };
        inbound(backend, db, n, clients).await;
        outbound(backend, open().await.unwrap(), n, None).await;
        outbound(backend, open().await.unwrap(), paced, Some(rate)).await;
    }
}
