//! Alert evaluation at scale: 1,000 rules evaluated every 15 s over a million events an hour.
//!
//! Run: `cargo bench --bench alerts` (release build, SQLite).
//!
//! It opens a fresh SQLite store and a project of `HERALD_BENCH_RULES` (1,000) alerts, each
//! `every: 15s` over one of `HERALD_BENCH_NAMES` (50) event names, grouped by `data.tenant`
//! (10 tenants per name), a third of each kind:
//!
//! - **count** over 5 minutes (`> 400`: no tenant gets there, about 167 each);
//! - **ratio** of `data.status: failed` over 15 minutes (`> 5%`, `min_events: 20`): tenant t7
//!   fails 8 % of the time, the others 3 %, so one group fires per rule;
//! - **p95** of `data.latency_ms` over 1 hour (`> 1000`): tenant t3's latencies are slower, so
//!   one group fires per rule.
//!
//! `HERALD_BENCH_EVENTS` (1,000,000) events are loaded first, straight through the store in
//! batches of 5,000, spread evenly over the hour before the start (a virtual hour), and events
//! keep arriving at the same rate (278 a second) while it measures. Then it makes
//! `HERALD_BENCH_ROUNDS` (8) evaluation rounds, each at a real 15 s tick, as `herald serve`
//! makes them (`alerts::round::evaluate_due`, then `alerts::notify::round`), and prints per
//! round: the alerts evaluated, the wall time, and the process's CPU time (user + system,
//! from /proc/self/stat, so 10 ms steps), with the CPU the event feed used over the same
//! time when no round ran (measured before the rounds) beside it. The first round also
//! notifies the ~667 groups that start firing.
//!
//! Notification latency: a canary alert (`count > 5` over 1 minute of `bench.canary`,
//! grouped by tenant, routed alone to a `pager` channel) is made true once per round at a
//! random moment between ticks, by six events of a new tenant; latency is from those events'
//! commit (the condition is true from then) to the `created_at` of the pager's outbox row,
//! which the notification round writes. Its parts: the wait for the next tick (up to 15 s,
//! `every`), then the round and the notification.
//!
//! Last, it reads each name's last hour once more, alone, to show what share of a round is
//! reading and parsing events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::definitions::env::EnvSource;
use herald::definitions::project::Layout;
use herald::engine::clock::{Clock, SystemClock};
use herald::engine::{Engine, EngineOptions, load_registry};
use herald::store::{DynStore, Millis, NewEvent};
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::Connection as _;

#[path = "support/db.rs"]
mod db;

// The allocator `herald serve` runs with (see src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVERY_MS: i64 = 15_000;
const TENANTS: usize = 10;

fn knob(name: &str, default: usize) -> usize {
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

fn rule(i: usize, names: usize) -> String {
    let name = format!("bench.e{}", i % names);
    let source = match i % 3 {
        0 => format!(
            "events: {{ name: {name}, window: 5m, aggregate: count, group_by: data.tenant }}\ncondition: \"> 400\""
        ),
        1 => format!(
            "events: {{ name: {name}, window: 15m, aggregate: ratio, matching: {{ data.status: failed }}, group_by: data.tenant, min_events: 20 }}\ncondition: \"> 5%\""
        ),
        _ => format!(
            "events: {{ name: {name}, window: 1h, aggregate: p95, field: data.latency_ms, group_by: data.tenant }}\ncondition: \"> 1000\""
        ),
    };
    format!(
        "kind: alert\nid: rule-{i}\nevery: 15s\nsource:\n  {source}\nannotations:\n  summary: \"{{{{ value }}}} for {{{{ labels.tenant }}}}\"\n"
    )
}

const CANARY: &str = "kind: alert\nid: canary\nevery: 15s\nsource:\n  events: { name: bench.canary, window: 1m, aggregate: count, group_by: data.tenant }\ncondition: \"> 5\"\nlabels:\n  bench: canary\n";

const CONFIG: &str = r#"channels:
  ops: { provider: log }
  pager: { provider: log }
alerting:
  routes:
    - name: pager
      match: { bench: canary }
      channel: pager
      to: oncall@example.com
      send_resolved: false
    - name: ops
      channel: ops
      to: ops@example.com
"#;

fn event(name: String, at: Millis, rng: &mut impl Rng) -> NewEvent {
    let tenant = rng.random_range(0..TENANTS);
    let fail_rate = if tenant == 7 { 0.08 } else { 0.03 };
    let status = if rng.random_bool(fail_rate) {
        "failed"
    } else {
        "ok"
    };
    let latency = if tenant == 3 {
        rng.random_range(300..1500)
    } else {
        rng.random_range(50..950)
    };
    NewEvent {
        id: uuid::Uuid::now_v7().to_string(),
        name,
        key: None,
        data: json!({ "tenant": format!("t{tenant}"), "status": status, "latency_ms": latency }),
        source_run_id: None,
        created_at: at,
    }
}

/// Events at `per_sec` a second from now on, in batches every 100 ms, until stopped.
fn feed(
    store: DynStore,
    names: usize,
    per_sec: f64,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut sent = 0u64;
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.cancelled() => return sent,
            }
            let due = (started.elapsed().as_secs_f64() * per_sec) as u64;
            let now = SystemClock.now();
            let batch: Vec<NewEvent> = (sent..due)
                .map(|i| event(format!("bench.e{}", i as usize % names), now, &mut rng))
                .collect();
            if !batch.is_empty() {
                store.insert_events(&batch, &[], &[], &[]).await.unwrap();
                sent = due;
            }
        }
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rules = knob("HERALD_BENCH_RULES", 1_000);
    let names = knob("HERALD_BENCH_NAMES", 50);
    let total = knob("HERALD_BENCH_EVENTS", 1_000_000);
    let rounds = knob("HERALD_BENCH_ROUNDS", 8);
    let per_sec = total as f64 / 3600.0;

    let db = db::open_sqlite().await;
    let store = db.store.clone();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("herald.yaml"), CONFIG).unwrap();
    let wf = dir.path().join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    for i in 0..rules {
        std::fs::write(wf.join(format!("rule-{i}.alert.yaml")), rule(i, names)).unwrap();
    }
    std::fs::write(wf.join("canary.alert.yaml"), CANARY).unwrap();
    let env = EnvSource::Map(Arc::new(Default::default()));
    let layout = Layout::discover(dir.path()).unwrap();
    let t = Instant::now();
    let (registry, _) = load_registry(&layout, &env, 1, SystemClock.now()).unwrap_or_else(|r| {
        panic!(
            "the benchmark's project loads:\n{}",
            r.diagnostics
                .iter()
                .map(|d| d.render(false))
                .collect::<String>()
        )
    });
    println!(
        "{} alerts loaded in {:.1} s",
        rules + 1,
        t.elapsed().as_secs_f64()
    );
    let engine = Engine::new(
        store.clone(),
        Arc::new(SystemClock),
        env.clone(),
        EngineOptions::default(),
    );
    engine.install(registry).await.unwrap();

    // The hour before the start, loaded as fast as the store takes it.
    let start = SystemClock.now();
    let t = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let step = 3_600_000.0 / total as f64;
    for chunk in (0..total).collect::<Vec<_>>().chunks(5_000) {
        let batch: Vec<NewEvent> = chunk
            .iter()
            .map(|&i| {
                let at = start - 3_600_000 + (i as f64 * step) as i64;
                event(format!("bench.e{}", i % names), at, &mut rng)
            })
            .collect();
        store.insert_events(&batch, &[], &[], &[]).await.unwrap();
    }
    println!(
        "{total} events over the past hour loaded in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let stop = tokio_util::sync::CancellationToken::new();
    let feeder = feed(store.clone(), names, per_sec, stop.clone());
    // What the feed alone costs, for comparison with a round.
    let (c0, w0) = (cpu_ms(), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let feed_cpu_per_s = (cpu_ms() - c0) / w0.elapsed().as_secs_f64();
    println!(
        "event feed alone: {:.0} ms of CPU per second ({per_sec:.0} events/s)",
        feed_cpu_per_s
    );

    let mut reader = sqlx::sqlite::SqliteConnection::connect(&db.url)
        .await
        .unwrap();
    let registry = engine.registry();
    let mut tried: HashMap<String, Millis> = HashMap::new();
    let mut latencies: Vec<(i64, i64)> = Vec::new();
    println!("round | alerts | wall ms | CPU ms | feed CPU over the same wall ms | notices");
    for r in 0..rounds {
        // The next tick, and a canary made true at a random moment before it.
        let now = SystemClock.now();
        let tick = now - now.rem_euclid(EVERY_MS) + EVERY_MS;
        let canary_at = if r == 0 {
            None
        } else {
            Some(now + rng.random_range(0..(tick - now).max(1)))
        };
        if let Some(at) = canary_at {
            tokio::time::sleep(Duration::from_millis((at - now).max(0) as u64)).await;
            let at = SystemClock.now();
            let evs: Vec<NewEvent> = (0..6)
                .map(|i| NewEvent {
                    id: format!("canary-{r}-{i}"),
                    name: "bench.canary".into(),
                    key: None,
                    data: json!({ "tenant": format!("c{r}") }),
                    source_run_id: None,
                    created_at: at,
                })
                .collect();
            store.insert_events(&evs, &[], &[], &[]).await.unwrap();
        }
        let committed = SystemClock.now();
        let wait = (tick - SystemClock.now()).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;

        let (c, w) = (cpu_ms(), Instant::now());
        let now = SystemClock.now();
        let round = herald::alerts::round::evaluate_due(&engine, &registry, &mut tried, now).await;
        let sent = herald::alerts::notify::round(&*store, &registry, &env, SystemClock.now())
            .await
            .unwrap();
        let wall = w.elapsed().as_secs_f64() * 1000.0;
        let cpu = cpu_ms() - c;
        let notices: usize = sent.iter().map(|s| s.messages).sum();
        println!(
            "{r:>5} | {:>6} | {wall:>7.0} | {cpu:>6.0} | {:>6.0} | {notices}",
            round.evaluated,
            feed_cpu_per_s * wall / 1000.0
        );
        if canary_at.is_some() {
            let row: Option<(i64,)> = sqlx::query_as(
                "SELECT created_at FROM outbox WHERE channel = 'pager' AND created_at >= $1 ORDER BY created_at LIMIT 1",
            )
            .bind(committed)
            .fetch_optional(&mut reader)
            .await
            .unwrap();
            match row {
                Some((at,)) => latencies.push((at - committed, tick - committed)),
                None => println!("      the canary of round {r} was not notified"),
            }
        }
    }
    // What a round's reads cost alone: each name's longest window, read and parsed.
    let (c, w) = (cpu_ms(), Instant::now());
    let now = SystemClock.now();
    let mut read = 0;
    for n in 0..names {
        let name = format!("bench.e{n}");
        read += herald::alerts::tick::fetch_events(&*store, &[name], now - 3_600_000, now)
            .await
            .unwrap()
            .len();
    }
    println!(
        "reading the {names} names' last hour alone ({read} events): {:.0} ms wall, {:.0} ms CPU",
        w.elapsed().as_secs_f64() * 1000.0,
        cpu_ms() - c
    );
    stop.cancel();
    let fed = feeder.await.unwrap();
    println!("{fed} events fed while measuring");
    if !latencies.is_empty() {
        println!("canary: condition true -> pager outbox row (of which waiting for the tick)");
        for (l, w) in &latencies {
            println!("  {l} ms ({w} ms to the tick, {} ms after it)", l - w);
        }
        let mut after: Vec<i64> = latencies.iter().map(|(l, w)| l - w).collect();
        after.sort_unstable();
        println!(
            "after the tick: median {} ms, max {} ms",
            after[after.len() / 2],
            after[after.len() - 1]
        );
    }
}
