//! Timer lateness: how late a `wait` wakes, with 100,000 timers pending.
//!
//! Run: `cargo bench --bench timers` (release build). With `HERALD_TEST_POSTGRES_URL` set it
//! runs on PostgreSQL too, in a schema of its own that is dropped afterwards:
//! `HERALD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench timers`.
//!
//! For each backend it opens a fresh store (a SQLite file in a temporary folder, or a new
//! Postgres schema), loads one workflow, `wait: { until: "{{ body.wake_at }}" }` then a `set`,
//! and starts the engine's workers and lease renewal on the real clock, as `herald serve`
//! does (default options: 16 workers, 30 s lease). It then starts, through the engine
//! (`Engine::start`, 64 at a time), two groups of runs, all before the first of them falls due:
//!
//! - **burst**: 10,000 runs that all wait until the same instant (the 3 a.m. case: everyone's
//!   `wait until 03:00`), with the spread group still pending behind it;
//! - **spread**: 100,000 runs whose wake-up times are spread evenly over 60 s, starting 15 s
//!   after the burst (1,667 due per second), started in a random order.
//!
//! The burst comes at least 20 s after the runs start being created, later when the backend
//! needs longer to create them all: 2,000 runs waiting an hour are created first, and their rate
//! sets the lead (one and a half times the predicted creation time, plus 10 s). They stay
//! pending through the measurement, and are not measured.
//!
//! It waits for every measured run to complete and takes, per run, lateness = the time its step
//! after the wait ran and was handed to the store (the run's `finished_at`, stamped by the
//! engine's clock just before the segment's commit) minus the time it was due. A sample of
//! the step log is checked against that (the `set` step's `started_at`). It prints, per group,
//! the runs woken, p50, p99 and max lateness, and the wake-ups per second: for the burst, all
//! of them over the time from the instant to the last wake-up (how fast the engine drains a
//! backlog); for the spread, over the time from the first due time to the last wake-up (the
//! offered rate is 1,667/s, so this shows only whether it kept up).
//!
//! Knobs: `HERALD_BENCH_TIMERS` (spread runs, default 100000), `HERALD_BENCH_BURST` (burst
//! runs, default 10000), `HERALD_BENCH_LEAD` (the least time in seconds from the start to the
//! burst, default 20), `HERALD_BENCH_GAP` (seconds from the burst to the spread, default 15),
//! `HERALD_BENCH_SPREAD_SECS` (the spread's window, default 60), `HERALD_BENCH_BACKENDS`
//! (`sqlite,postgres` by default when the Postgres URL is set), `HERALD_BENCH_WORKERS` (the
//! engine's `workers`, default 16), `HERALD_BENCH_VERBOSE` (also the worst lateness per second
//! of due time).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herald::definitions::env::EnvSource;
use herald::definitions::project::Layout;
use herald::engine::clock::{Clock, SystemClock, rfc3339};
use herald::engine::registry::CompiledWorkflow;
use herald::engine::{Engine, EngineOptions, StartRun, Trigger, load_registry};
use herald::store::{Millis, RunFilter, RunStatus};

#[path = "support/db.rs"]
mod db;
use db::{Db, POSTGRES_URL_VAR, open_postgres, open_sqlite};
use rand::seq::SliceRandom;
use serde_json::json;
use tokio_util::sync::CancellationToken;

// The allocator `herald serve` runs with (see src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs started at once while the timers are created.
const STARTERS: usize = 64;
/// Runs created first, due in an hour, to measure how fast this backend creates runs.
const PROBE: usize = 2_000;
/// Step-log entries read to cross-check the lateness taken from the run rows.
const STEP_LOG_SAMPLE: usize = 1_000;

const WORKFLOW: &str = r#"kind: workflow
id: timer
description: Waits until a time from its input, then sets a variable.
triggers:
  - webhook: { path: /hooks/timer }
steps:
  - id: sleep
    wait: { until: "{{ body.wake_at }}" }
  - id: woke
    set: { woke: true }
"#;

struct Settings {
    workers: Option<usize>,
    verbose: bool,
    spread: usize,
    burst: usize,
    /// The least time from the start to the burst.
    lead: Duration,
    /// From the burst to the first spread timer.
    gap: Duration,
    /// The spread's window.
    window: Duration,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(env_usize(name, default as usize) as u64)
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            workers: std::env::var("HERALD_BENCH_WORKERS")
                .ok()
                .and_then(|w| w.trim().parse().ok()),
            verbose: std::env::var_os("HERALD_BENCH_VERBOSE").is_some(),
            spread: env_usize("HERALD_BENCH_TIMERS", 100_000),
            burst: env_usize("HERALD_BENCH_BURST", 10_000),
            lead: env_secs("HERALD_BENCH_LEAD", 20),
            gap: env_secs("HERALD_BENCH_GAP", 15),
            window: env_secs("HERALD_BENCH_SPREAD_SECS", 60).max(Duration::from_secs(1)),
        }
    }
}

/// One group's results.
struct Group {
    name: &'static str,
    expected: usize,
    /// Lateness of each woken run, in ms, sorted.
    late: Vec<i64>,
    first_due: Millis,
    last_woken: Millis,
}

impl Group {
    fn new(name: &'static str, expected: usize, first_due: Millis) -> Group {
        Group {
            name,
            expected,
            late: Vec::new(),
            first_due,
            last_woken: first_due,
        }
    }

    fn pct(&self, p: f64) -> i64 {
        if self.late.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * self.late.len() as f64).ceil() as usize;
        self.late[rank.clamp(1, self.late.len()) - 1]
    }

    fn per_second(&self) -> f64 {
        let span = (self.last_woken - self.first_due).max(1) as f64 / 1000.0;
        self.late.len() as f64 / span
    }

    fn print(&self) {
        println!(
            "  {:<7} woken {:>7} of {:<7} p50 {:>6} ms  p99 {:>6} ms  max {:>6} ms  min {:>4} ms  {:>7.0} wake-ups/s",
            self.name,
            self.late.len(),
            self.expected,
            self.pct(50.0),
            self.pct(99.0),
            self.late.last().copied().unwrap_or(0),
            self.late.first().copied().unwrap_or(0),
            self.per_second(),
        );
    }
}

fn project(dir: &std::path::Path) -> Layout {
    std::fs::write(
        dir.join("herald.yaml"),
        "channels:\n  log: { provider: log }\n",
    )
    .expect("write herald.yaml");
    std::fs::create_dir_all(dir.join("workflows")).expect("create workflows/");
    std::fs::create_dir_all(dir.join("templates")).expect("create templates/");
    std::fs::write(dir.join("workflows/timer.yaml"), WORKFLOW).expect("write the workflow");
    Layout::discover(dir).expect("a project layout")
}

/// Starts one run per `(group, due time)`, `STARTERS` at a time, and returns how long it took.
async fn create(
    engine: &Arc<Engine>,
    workflow: &Arc<CompiledWorkflow>,
    due: Vec<(&'static str, Millis)>,
) -> Duration {
    let started = Instant::now();
    let due = Arc::new(due);
    let next = Arc::new(AtomicUsize::new(0));
    let mut starters = tokio::task::JoinSet::new();
    for _ in 0..STARTERS {
        let (engine, workflow, due, next) =
            (engine.clone(), workflow.clone(), due.clone(), next.clone());
        starters.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(group, at)) = due.get(i) else {
                    return;
                };
                let body = json!({"wake_at": rfc3339(at), "due_ms": at, "group": group});
                engine
                    .start(StartRun {
                        workflow: workflow.clone(),
                        trigger: Trigger::Webhook {
                            method: "POST".into(),
                            path: "/bench".into(),
                            body,
                            headers: Default::default(),
                            query: Default::default(),
                            params: Default::default(),
                        },
                        idempotency_key: None,
                        want_reply: false,
                    })
                    .await
                    .expect("start a run");
            }
        });
    }
    while let Some(r) = starters.join_next().await {
        r.expect("a starter task");
    }
    started.elapsed()
}

async fn bench(backend: &str, db: Db, s: &Settings) {
    let store = db.store.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let t0 = clock.now();
    let project_dir = tempfile::tempdir().expect("a temporary directory");
    let layout = project(project_dir.path());
    let env = EnvSource::Map(Arc::new(Default::default()));
    let (registry, _) = load_registry(&layout, &env, 1, t0).unwrap_or_else(|report| {
        panic!(
            "{}",
            report
                .diagnostics
                .iter()
                .map(|d| d.render(false))
                .collect::<String>()
        )
    });
    let mut options = EngineOptions::default();
    if let Some(w) = s.workers {
        options.workers = w;
    }
    let engine = Engine::new(store.clone(), clock.clone(), env, options);
    engine
        .install(registry)
        .await
        .expect("install the workflow");
    let workflow: Arc<CompiledWorkflow> = engine.registry().workflows["timer"].clone();

    // The workers run from the start, as in `herald serve`: while the timers are created
    // nothing is due, so they only look for work.
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(engine.clone().work(shutdown.clone()));
    tasks.spawn(engine.clone().renew_leases(shutdown.clone()));

    // The probe: runs waiting an hour, whose creation rate sets the lead.
    let probe = create(&engine, &workflow, vec![("probe", t0 + 3_600_000); PROBE]).await;
    let measured = s.burst + s.spread;
    let predicted = probe.mul_f64(measured as f64 / PROBE as f64);
    let lead = s.lead.max(predicted.mul_f64(1.5) + Duration::from_secs(10));

    // Due times: the burst all at one instant, the spread evenly over its window, started in
    // a random order.
    let burst_due = clock.now() + lead.as_millis() as Millis;
    let from = burst_due + s.gap.as_millis() as Millis;
    let to = from + s.window.as_millis() as Millis;
    let mut due: Vec<(&'static str, Millis)> = (0..s.burst)
        .map(|_| ("burst", burst_due))
        .chain((0..s.spread).map(|i| {
            (
                "spread",
                from + (to - from) * i as Millis / s.spread as Millis,
            )
        }))
        .collect();
    due.shuffle(&mut rand::rng());
    let first_due = due.iter().map(|d| d.1).min().unwrap_or(to);
    let last_due = due.iter().map(|d| d.1).max().unwrap_or(to);

    let creation = create(&engine, &workflow, due).await;
    let margin = first_due - clock.now();
    println!(
        "{backend}: created {measured} waiting runs in {:.1} s ({:.0} runs/s; {PROBE} more, due in an hour, first); the first falls due {:.1} s later",
        creation.as_secs_f64(),
        measured as f64 / creation.as_secs_f64(),
        margin as f64 / 1000.0
    );
    if margin <= 0 {
        println!(
            "  WARNING: creation finished after the first timer fell due; early timers are late because of it"
        );
    }
    let counts = store.count_runs().await.expect("count runs");
    let waiting = counts
        .iter()
        .find(|(s, _)| *s == RunStatus::Waiting)
        .map_or(0, |(_, n)| *n) as usize;
    if margin > 0 && waiting != measured + PROBE {
        println!(
            "  WARNING: {waiting} runs waiting, not {}: {counts:?}",
            measured + PROBE
        );
    }

    // Wait for every measured run to complete, or give up a minute after the last due time.
    let give_up = last_due + 60_000;
    let mut last_report = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let counts = store.count_runs().await.expect("count runs");
        let done = counts
            .iter()
            .filter(|(s, _)| s.is_finished())
            .map(|(_, n)| *n)
            .sum::<i64>() as usize;
        if done >= measured {
            break;
        }
        if clock.now() > give_up {
            println!("  gave up waiting: {done} of {measured} runs finished ({counts:?})");
            break;
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            last_report = Instant::now();
            eprintln!(
                "  {backend}: {:>5.0} s, {done} of {measured} finished",
                (clock.now() - t0) as f64 / 1000.0
            );
        }
    }
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}

    let runs = store
        .list_runs(&RunFilter {
            workflow_id: Some("timer".into()),
            status: Some(RunStatus::Completed),
            created_before: None,
            limit: measured as i64 + 1,
            ..RunFilter::default()
        })
        .await
        .expect("list the completed runs");
    let mut burst = Group::new("burst", s.burst, burst_due);
    let mut spread = Group::new("spread", s.spread, from);
    // Verbose: the worst lateness per second of due time, to see when a tail happens.
    let mut by_second: std::collections::BTreeMap<i64, (usize, i64)> = Default::default();
    for r in &runs {
        let body = &r.context["body"];
        let due = body["due_ms"].as_i64().expect("due_ms in the body");
        let woken = r.finished_at.expect("a completed run has finished_at");
        let g = match body["group"].as_str() {
            Some("burst") => &mut burst,
            Some("spread") => &mut spread,
            other => panic!("run {} of group {other:?} completed", r.id),
        };
        g.late.push(woken - due);
        g.last_woken = g.last_woken.max(woken);
        let slot = by_second
            .entry((due - burst_due).div_euclid(1000))
            .or_default();
        slot.0 += 1;
        slot.1 = slot.1.max(woken - due);
    }
    burst.late.sort_unstable();
    spread.late.sort_unstable();

    // Cross-check on a sample: the step after the wait, as the step log recorded it.
    let mut worst_gap = 0;
    let mut checked = 0;
    for r in runs.iter().step_by((runs.len() / STEP_LOG_SAMPLE).max(1)) {
        let log = store.step_log(&r.id).await.expect("read the step log");
        let due = r.context["body"]["due_ms"].as_i64().unwrap_or_default();
        let woke = log
            .iter()
            .find(|e| e.step_id == "woke" && e.status == herald::store::StepStatus::Completed)
            .expect("the step after the wait is in the log");
        assert!(
            woke.started_at >= due,
            "run {} woke {} ms early",
            r.id,
            due - woke.started_at
        );
        worst_gap = worst_gap.max(r.finished_at.unwrap_or_default() - woke.started_at);
        checked += 1;
    }

    println!(
        "{backend}: {} timers pending; {} due at one instant {:.0} s after the start, then {} spread over the {} s from {} s after that; lateness = the step after the wait ran - due time",
        measured + PROBE,
        s.burst,
        (burst_due - t0) as f64 / 1000.0,
        s.spread,
        s.window.as_secs(),
        s.gap.as_secs(),
    );
    burst.print();
    spread.print();
    if s.verbose {
        for (second, (n, worst)) in &by_second {
            println!(
                "    due {second:>4} s after the burst: {n:>6} runs, worst {worst:>5} ms late"
            );
        }
    }
    println!(
        "  step log sample: {checked} runs, the `set` step started at most {worst_gap} ms before the run's commit stamp"
    );
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // Reading the 110,000 finished runs back at the end is a "slow statement".
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx::query=error")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let settings = Settings::from_env();
    let postgres_url = std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty());
    let backends: Vec<String> = match std::env::var("HERALD_BENCH_BACKENDS") {
        Ok(list) => list.split(',').map(|b| b.trim().to_owned()).collect(),
        Err(_) if postgres_url.is_some() => vec!["sqlite".into(), "postgres".into()],
        Err(_) => vec!["sqlite".into()],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    println!(
        "timer lateness (release build); reproduce with: {}cargo bench --bench timers",
        if backends.iter().any(|b| b == "postgres") {
            format!("{POSTGRES_URL_VAR}=postgres://... ")
        } else {
            String::new()
        }
    );
    for backend in &backends {
        runtime.block_on(async {
            let db = match backend.as_str() {
                "sqlite" => open_sqlite().await,
                "postgres" => match &postgres_url {
                    Some(url) => open_postgres(url).await,
                    None => {
                        println!("postgres: skipped, {POSTGRES_URL_VAR} is not set");
                        return;
                    }
                },
                other => panic!("unknown backend `{other}` (sqlite or postgres)"),
            };
            bench(backend, db, &settings).await;
        });
    }
}
