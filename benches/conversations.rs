//! Conversations: many people talking to a conversation at once on a `log` channel (no AI), and
//! the memory an idle open conversation costs.
//!
//! Run: `cargo bench --bench conversations` (release build). In this process: the engine as
//! `herald serve` runs it (workers on the real clock; the dispatcher is not started, so replies
//! stay committed in the outbox), on SQLite, or on PostgreSQL with `HERALD_TEST_POSTGRES_URL`
//! set and `HERALD_BENCH_BACKEND=postgres`.
//!
//! - **concurrent**: `HERALD_BENCH_PEOPLE` people (default 1,000) each open a conversation and
//!   then answer `HERALD_BENCH_TURNS` questions (default 5), one every
//!   `HERALD_BENCH_INTERVAL_MS` (default 1,000), each person starting at their own moment of
//!   the first interval: an offered load of people / interval messages per second. A message's
//!   latency is from the moment it is handed to the engine to its reply's outbox row
//!   (`created_at`, stamped in the segment that commits it), paired by the reply's text.
//!   Nothing polls the outbox until every answer is sent. It prints p50, p99 and max, and the
//!   process's CPU time per message (from /proc).
//! - **idle**: `HERALD_BENCH_IDLE` more people (default 100,000) each open a conversation that
//!   then waits for an answer; it prints the process's RSS before and after, and the count of
//!   runs waiting. A waiting conversation is a row, not a task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::definitions::env::EnvSource;
use herald::definitions::project::Layout;
use herald::engine::clock::{Clock, SystemClock};
use herald::engine::{Engine, EngineOptions, load_registry};
use herald::store::{DynStore, OutboxStatus, RunStatus};
use tokio_util::sync::CancellationToken;

#[path = "support/db.rs"]
mod db;
use db::{POSTGRES_URL_VAR, open_postgres, open_sqlite};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INTAKE: &str = r#"kind: conversation
id: intake
channels: [chat]
start:
  - any_message: true
inactivity: { after: 24h }
slots:
  answer: { type: text }
steps:
  - id: ask
    ask: { prompt: "What else can I note for you?", slot: answer }
  - id: noted
    say: "Noted: {{ slots.answer }}"
  - goto: ask
"#;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's CPU time so far (user + system), in ms.
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks * 10.0
}

/// This process's resident memory, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn pending(store: &DynStore) -> usize {
    store
        .count_outbox()
        .await
        .unwrap()
        .into_iter()
        .filter(|(s, _)| *s == OutboxStatus::Pending)
        .map(|(_, n)| n as usize)
        .sum()
}

/// Waits until the outbox holds `n` replies.
async fn replies(store: &DynStore, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while pending(store).await < n {
        assert!(Instant::now() < deadline, "replies missing after 600 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let db = match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if std::env::var("HERALD_BENCH_BACKEND").as_deref() == Ok("postgres") => {
            open_postgres(&url).await
        }
        _ => open_sqlite().await,
    };
    let store = db.store.clone();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        "channels:\n  chat: { provider: log }\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(dir.path().join("workflows/intake.yaml"), INTAKE).unwrap();
    let env = EnvSource::Map(Arc::new(Default::default()));
    let clock = SystemClock;
    let layout = Layout::discover(dir.path()).unwrap();
    let (registry, _) = load_registry(&layout, &env, 1, clock.now())
        .unwrap_or_else(|_| panic!("the benchmark's project loads"));
    let engine = Engine::new(
        store.clone(),
        Arc::new(clock),
        env,
        EngineOptions::default(),
    );
    engine.install(registry).await.unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(engine.clone().work(shutdown.clone()));
    tokio::spawn(engine.clone().renew_leases(shutdown.clone()));

    let people = env_usize("HERALD_BENCH_PEOPLE", 1000);
    let turns = env_usize("HERALD_BENCH_TURNS", 5);
    // Everyone opens a conversation (its first question is the reply).
    for p in 0..people {
        engine
            .inbound_message("chat", &format!("person-{p}"), "hi", None)
            .await
            .unwrap();
    }
    replies(&store, people).await;
    let started = Instant::now();
    let cpu = cpu_ms();
    // Each person answers every `interval`, starting at a random moment of the first one, as
    // people do, rather than the moment the previous reply lands: nothing polls the outbox
    // while the clock runs, so the figures are the engine's, at an offered load of
    // people / interval messages per second.
    let interval = Duration::from_millis(env_usize("HERALD_BENCH_INTERVAL_MS", 1000) as u64);
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..people {
        let engine = engine.clone();
        let offset = interval.mul_f64(((p * 7919) % people) as f64 / people as f64);
        tasks.spawn(async move {
            let from = format!("person-{p}");
            let begin = tokio::time::Instant::now() + offset;
            let mut sent = Vec::with_capacity(turns);
            for t in 0..turns {
                tokio::time::sleep_until(begin + interval * t as u32).await;
                sent.push((format!("Noted: answer {t}"), engine.now()));
                engine
                    .inbound_message("chat", &from, &format!("answer {t}"), None)
                    .await
                    .unwrap();
            }
            (from, sent)
        });
    }
    let mut asked = Vec::new();
    while let Some(r) = tasks.join_next().await {
        asked.push(r.unwrap());
    }
    // Each answer gets "Noted: ..." and the question again.
    replies(&store, people * (1 + 2 * turns)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_ms() - cpu;
    let mut tasks = tokio::task::JoinSet::new();
    for (from, sent) in asked {
        let store = store.clone();
        tasks.spawn(async move {
            let run = store
                .open_conversation("intake", &format!("chat:{from}"))
                .await
                .unwrap()
                .expect("an open conversation")
                .id;
            let out = store.outbox_for_run(&run).await.unwrap();
            sent.iter()
                .map(|(body, at)| {
                    let reply = out
                        .iter()
                        .find(|m| &m.body == body)
                        .unwrap_or_else(|| panic!("no reply `{body}` for {from}"));
                    reply.created_at - at
                })
                .collect::<Vec<i64>>()
        });
    }
    let mut latencies = Vec::new();
    while let Some(l) = tasks.join_next().await {
        latencies.extend(l.unwrap());
    }
    latencies.sort_unstable();
    let n = latencies.len();
    println!(
        "concurrent: {people} conversations × {turns} answers = {n} messages, offered at {:.0} msg/s, all replied in {elapsed:.2} s: message → committed reply p50 {} ms, p99 {} ms, max {} ms; CPU {:.3} ms per message",
        people as f64 / interval.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[n - 1],
        cpu / n as f64
    );

    let idle = env_usize("HERALD_BENCH_IDLE", 100_000);
    let rss_before = rss_mib();
    let opened = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for c in 0..16 {
        let engine = engine.clone();
        senders.spawn(async move {
            for p in (c..idle).step_by(16) {
                engine
                    .inbound_message("chat", &format!("idle-{p}"), "hi", None)
                    .await
                    .unwrap();
            }
        });
    }
    while senders.join_next().await.is_some() {}
    let waiting_goal = people + idle;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let waiting: i64 = store
            .count_runs()
            .await
            .unwrap()
            .into_iter()
            .filter(|(s, _)| *s == RunStatus::Waiting)
            .map(|(_, n)| n)
            .sum();
        if waiting as usize >= waiting_goal {
            break;
        }
        assert!(Instant::now() < deadline, "{waiting} waiting after 900 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "idle: {waiting_goal} open conversations waiting (opened {idle} in {:.1} s); RSS {rss_before:.1} MiB before, {:.1} MiB after; {} runs held, {} tasks alive",
        opened.elapsed().as_secs_f64(),
        rss_mib(),
        engine.held_runs().len(),
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    );
    shutdown.cancel();
}
