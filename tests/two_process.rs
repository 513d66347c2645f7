//! Two real `herald serve` processes on one PostgreSQL schema, sharing a fast clock
//! (`HERALD_TEST_CLOCK`, 60x: a per-minute schedule fires every real second).
//!
//! The project: `tick`, a per-minute cron workflow that sends one message, and `followup`, a
//! webhook workflow that sends an acknowledgement, waits two (clock) minutes and sends a
//! nudge. Webhooks go to both processes alternately. After about twenty slots both processes
//! get SIGTERM and must exit 0. Then every slot in the period must have exactly one
//! `cron_fires` row, `fired`; every run must have completed once; the sink must have received
//! each message's idempotency key exactly once; nothing may be left `running`; and both
//! processes must have executed runs.
//!
//! Which process executed a step is observable through the definitions: every message body
//! ends with `${env:HERALD_TEST_PROCESS}`, which each process resolves from its own
//! environment (`a` or `b`) when it compiles the workflows. A run resumed by the other
//! process runs on that process's compiled copy of the same version, so the body names the
//! process that executed the `send` step.
//!
//! Needs `HERALD_TEST_POSTGRES_URL`; without it the test says it was skipped and passes.

#![cfg(unix)]

#[path = "support/db.rs"]
mod db;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::engine::clock::{Clock, ScaledClock};
use herald::store::{CronOutcome, DynStore, RunFilter, RunRecord, RunStatus};
use support::HttpSink;

const SPEED: i64 = 60;
/// What the shared clock reads at the origin.
const CLOCK_START: &str = "2026-11-02T15:00:00Z";
const MINUTE: i64 = 60_000;
/// How long the schedule runs with both processes up, in real time (one slot a second).
const CRON_PERIOD: Duration = Duration::from_secs(20);
/// Webhooks posted, alternately to each process.
const WEBHOOKS: usize = 12;

/// A `herald serve` child, killed (SIGKILL) if still running when dropped, so that no exit
/// path of the test leaves it behind. Its stderr is kept and shown if the test fails.
struct Server {
    name: &'static str,
    child: Option<Child>,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `herald serve` and returns once it is listening, with its address.
    fn start(name: &'static str, dir: &std::path::Path, url: &str, clock: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--no-watch", "--dir"])
            .arg(dir)
            .args(["--database-url", url, "--listen", "127.0.0.1:0"])
            .env("HERALD_TEST_CLOCK", clock)
            .env("HERALD_TEST_PROCESS", name)
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("herald serve starts");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("piped stderr");
        let kept = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                kept.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let mut server = Server {
            name,
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
        };
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!("herald serve ({name}) did not say it is listening within 60 s")
            });
        server.addr = addr.parse().expect("a socket address");
        server
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        unsafe extern "C" {
            fn kill(pid: i32, signal: i32) -> i32;
        }
        const SIGTERM: i32 = 15;
        let child = self.child.as_ref().expect("still running");
        let pid = i32::try_from(child.id()).expect("a pid fits an i32");
        // SAFETY: `kill` only sends a signal, to our own child, whose pid stays reserved until
        // it is waited for.
        let rc = unsafe { kill(pid, SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM to herald serve ({})", self.name);
    }

    /// Waits until the child exits, up to `timeout`.
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("still running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- stderr of herald serve ({}) ---\n{}",
                self.name,
                self.stderr()
            );
        }
    }
}

fn project(sink: &HttpSink) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    // A long lease (five clock minutes, five real seconds): on a busy machine a segment must
    // not lose its run to the other process just because it was slow.
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!(
            "channels:\n  hook: {{ provider: webhook, url: \"{}\", timeout: 10s }}\nengine: {{ lease: 5m }}\n",
            sink.url("/deliver")
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    // `catch_up: all` and `overlap: allow`: however late a busy machine makes a tick, and
    // however long a run takes, "fired" is the only right outcome for every slot.
    std::fs::write(
        dir.path().join("workflows/tick.yaml"),
        r#"
kind: workflow
id: tick
triggers:
  - cron: { schedule: "* * * * *", catch_up: all, overlap: allow }
steps:
  - id: tell
    send: { channel: hook, to: ops@example.com, body: "slot {{ trigger.slot }} by ${env:HERALD_TEST_PROCESS}" }
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("workflows/followup.yaml"),
        r#"
kind: workflow
id: followup
triggers:
  - webhook: { path: /hooks/followup, idempotency_key: "{{ body.n }}" }
steps:
  - id: ack
    send: { channel: hook, to: "lead-{{ body.n }}@example.com", body: "ack {{ body.n }} by ${env:HERALD_TEST_PROCESS}" }
  - id: pause
    wait: 2m
  - id: nudge
    send: { channel: hook, to: "lead-{{ body.n }}@example.com", body: "nudge {{ body.n }} by ${env:HERALD_TEST_PROCESS}" }
"#,
    )
    .unwrap();
    dir
}

async fn runs(store: &DynStore, workflow: &str) -> Vec<RunRecord> {
    store
        .list_runs(&RunFilter {
            workflow_id: Some(workflow.to_owned()),
            limit: 10_000,
            ..RunFilter::default()
        })
        .await
        .unwrap()
}

fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

/// The process named at the end of a message body (`... by a`).
fn executor(body: &str) -> &str {
    body.rsplit(" by ").next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_share_one_postgres_database() {
    let Some(db) =
        db::postgres("two_process::two_serve_processes_share_one_postgres_database").await
    else {
        return;
    };
    let sink = HttpSink::start().await;
    let dir = project(&sink);
    let origin = jiff::Timestamp::now().as_millisecond();
    let spec = format!("speed={SPEED},origin={origin},start={CLOCK_START}");
    let clock = ScaledClock::parse(&spec).unwrap();

    // Both start at once; each waits for its own "listening on" line.
    let (a, b) = {
        let (dir_a, url_a, spec_a) = (dir.path().to_owned(), db.url.clone(), spec.clone());
        let a = std::thread::spawn(move || Server::start("a", &dir_a, &url_a, &spec_a));
        let (dir_b, url_b, spec_b) = (dir.path().to_owned(), db.url.clone(), spec.clone());
        let b = std::thread::spawn(move || Server::start("b", &dir_b, &url_b, &spec_b));
        (a.join(), b.join())
    };
    let (mut a, mut b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => panic!("a server did not start: a {}, b {}", a.is_ok(), b.is_ok()),
    };
    let both_up = clock.now();
    let up_since = Instant::now();

    // Webhooks, alternately to each process: each starts a run there, whose first segment
    // (the `ack`) that process executes before answering.
    herald::tls::init();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut posted_to: BTreeMap<String, &str> = BTreeMap::new();
    for n in 0..WEBHOOKS {
        let server = if n % 2 == 0 { &a } else { &b };
        let resp = client
            .post(format!("http://{}/hooks/followup", server.addr))
            .json(&serde_json::json!({ "n": n }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("webhook {n} to {}: {e}", server.name));
        assert_eq!(
            resp.status().as_u16(),
            202,
            "webhook {n} to {}",
            server.name
        );
        let body: serde_json::Value = resp.json().await.unwrap();
        posted_to.insert(body["run_id"].as_str().unwrap().to_owned(), server.name);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    // Let the schedule run for the period, then wait (polling) until everything due by two
    // clock minutes before now has finished and been delivered.
    let remaining = CRON_PERIOD.saturating_sub(up_since.elapsed());
    tokio::time::sleep(remaining).await;
    let period_end = clock.now() - 2 * MINUTE;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let followups = runs(&db.store, "followup").await;
        let ticks = runs(&db.store, "tick").await;
        let fires = db.store.cron_fires("tick", 10_000).await.unwrap();
        let due_ticks: BTreeSet<&str> = fires
            .iter()
            .filter(|f| f.slot <= period_end)
            .filter_map(|f| f.run_id.as_deref())
            .collect();
        let ticks_done = ticks
            .iter()
            .filter(|r| due_ticks.contains(r.id.as_str()))
            .all(|r| r.status == RunStatus::Completed);
        let followups_done = followups.len() == WEBHOOKS
            && followups.iter().all(|r| r.status == RunStatus::Completed);
        let delivered = ticks
            .iter()
            .filter(|r| due_ticks.contains(r.id.as_str()))
            .all(|r| sink.count_for_key(&format!("{}:tell", r.id)) > 0)
            && followups
                .iter()
                .all(|r| sink.count_for_key(&format!("{}:nudge", r.id)) > 0);
        if ticks_done && followups_done && delivered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not finished 30 s after the period: ticks done {ticks_done}, followups done {followups_done}, delivered {delivered}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM both; each must exit 0 within a few seconds.
    let stopping = clock.now();
    let sent = Instant::now();
    a.terminate();
    b.terminate();
    for server in [&mut a, &mut b] {
        let status = server.wait(Duration::from_secs(10)).unwrap_or_else(|| {
            panic!(
                "herald serve ({}) still running 10 s after SIGTERM",
                server.name
            )
        });
        assert!(
            status.success(),
            "herald serve ({}) exited with {status} after SIGTERM",
            server.name
        );
    }
    eprintln!(
        "both processes exited {:.1} s after SIGTERM",
        sent.elapsed().as_secs_f64()
    );
    let stopped = clock.now();

    // Every slot from the first one after both processes were up to two minutes before the
    // stop has exactly one row, and it fired; and so does every other slot recorded: the
    // rows are consecutive minutes with nothing skipped, missed or doubled.
    let mut fires = db.store.cron_fires("tick", 10_000).await.unwrap();
    fires.reverse();
    assert!(
        fires.iter().all(|f| f.outcome == CronOutcome::Fired),
        "every slot fired: {:?}",
        fires
            .iter()
            .filter(|f| f.outcome != CronOutcome::Fired)
            .map(|f| (iso(f.slot), f.outcome.as_str(), f.reason.clone()))
            .collect::<Vec<_>>()
    );
    let slots: Vec<i64> = fires.iter().map(|f| f.slot).collect();
    assert!(
        slots.windows(2).all(|w| w[1] - w[0] == MINUTE),
        "consecutive minutes, each once: {:?}",
        slots.iter().copied().map(iso).collect::<Vec<_>>()
    );
    let first_expected = (both_up / MINUTE + 1) * MINUTE;
    assert!(
        slots.first().is_some_and(|&s| s <= first_expected),
        "the first slot after both were up ({}) is recorded; first row {:?}",
        iso(first_expected),
        slots.first().copied().map(iso)
    );
    assert!(
        slots.last().is_some_and(|&s| s >= period_end),
        "slots up to {} are recorded; last row {:?}",
        iso(period_end),
        slots.last().copied().map(iso)
    );
    let in_period = slots
        .iter()
        .filter(|&&s| s >= first_expected && s <= period_end)
        .count();
    assert!(
        in_period >= 15,
        "about twenty slots in the period, got {in_period}"
    );
    assert!(
        slots.last().is_some_and(|&s| s <= stopped),
        "no slot after the stop"
    );

    // One run per fired slot; none left running. Those of the period completed (a slot fired
    // in the last moments before SIGTERM may be left pending, for the next process).
    let ticks = runs(&db.store, "tick").await;
    let fired_ids: BTreeSet<&str> = fires.iter().filter_map(|f| f.run_id.as_deref()).collect();
    assert_eq!(fired_ids.len(), fires.len(), "a run per fired slot");
    let tick_ids: BTreeSet<&str> = ticks.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        tick_ids, fired_ids,
        "the runs are exactly the fired slots' runs"
    );
    for f in &fires {
        let run = ticks
            .iter()
            .find(|r| Some(r.id.as_str()) == f.run_id.as_deref())
            .unwrap();
        if f.slot <= period_end {
            assert_eq!(run.status, RunStatus::Completed, "slot {}", iso(f.slot));
        } else if run.status != RunStatus::Completed {
            // Fired in the last moments before SIGTERM and left for the next process.
            assert_eq!(run.status, RunStatus::Pending, "slot {}", iso(f.slot));
            assert!(
                f.slot >= stopping - 5 * MINUTE,
                "slot {} should have run before the stop",
                iso(f.slot)
            );
        }
    }
    let counts = db.store.count_runs().await.unwrap();
    assert!(
        counts
            .iter()
            .all(|(s, n)| *n == 0 || matches!(s, RunStatus::Completed | RunStatus::Pending)),
        "runs left over: {counts:?}"
    );
    let followups = runs(&db.store, "followup").await;
    assert_eq!(followups.len(), WEBHOOKS);

    // Each run executed each step once (step log), and each message arrived once.
    for run in ticks.iter().filter(|r| r.status == RunStatus::Completed) {
        let log = db.store.step_log(&run.id).await.unwrap();
        let trail: Vec<String> = log
            .iter()
            .map(|s| format!("{}:{}", s.step_id, s.status))
            .collect();
        assert_eq!(trail, vec!["tell:completed"], "tick run {}", run.id);
        assert_eq!(
            sink.count_for_key(&format!("{}:tell", run.id)),
            1,
            "tick run {}",
            run.id
        );
    }
    for run in &followups {
        assert_eq!(run.status, RunStatus::Completed, "followup {}", run.id);
        let log = db.store.step_log(&run.id).await.unwrap();
        let trail: Vec<String> = log
            .iter()
            .map(|s| format!("{}:{}", s.step_id, s.status))
            .collect();
        assert_eq!(
            trail,
            vec![
                "ack:completed",
                "pause:waiting",
                "pause:completed",
                "nudge:completed"
            ],
            "followup {}",
            run.id
        );
        assert_eq!(
            sink.count_for_key(&format!("{}:ack", run.id)),
            1,
            "followup {}",
            run.id
        );
        assert_eq!(
            sink.count_for_key(&format!("{}:nudge", run.id)),
            1,
            "followup {}",
            run.id
        );
    }
    assert_eq!(
        sink.duplicate_keys(),
        Vec::<String>::new(),
        "a message arrived twice"
    );
    let requests = sink.requests();
    assert!(requests.iter().all(|r| r.answered == 200));
    let outbox = db.store.count_outbox().await.unwrap();
    assert!(
        outbox
            .iter()
            .all(|(s, n)| *n == 0 || *s == herald::store::OutboxStatus::Sent),
        "undelivered messages: {outbox:?}"
    );

    // Who did what. Each webhook's `ack` was executed by the process it was posted to (in
    // the first segment, before the 202): so both processes executed runs. The `nudge` after
    // the wait and the cron runs went to whichever process claimed them first.
    let mut by_step: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for r in &requests {
        let key = r.idempotency_key().unwrap_or_default();
        let step = key.rsplit(':').next().unwrap_or_default();
        let body = r.json["body"].as_str().unwrap_or_default();
        *by_step
            .entry(match step {
                "tell" => "tick",
                "ack" => "ack",
                _ => "nudge",
            })
            .or_default()
            .entry(executor(body).to_owned())
            .or_default() += 1;
        if step == "ack" {
            let run_id = r.json["run_id"].as_str().unwrap();
            assert_eq!(
                executor(body),
                posted_to[run_id],
                "the ack of run {run_id} was sent by the process its webhook was posted to"
            );
        }
    }
    eprintln!("executed by process: {by_step:?}");
    let executors: BTreeSet<&str> = by_step
        .values()
        .flat_map(|m| m.keys())
        .map(String::as_str)
        .collect();
    assert_eq!(
        executors,
        BTreeSet::from(["a", "b"]),
        "both processes executed runs"
    );
    assert_eq!(by_step["ack"].get("a"), Some(&(WEBHOOKS / 2)));
    assert_eq!(by_step["ack"].get("b"), Some(&(WEBHOOKS / 2)));
    // And both took work from the shared queue: cron runs and resumed runs are claimed by
    // whichever worker gets there first (about thirty claims; a process whose worker never
    // claims anything is broken, not unlucky).
    for name in ["a", "b"] {
        let claimed: usize = ["tick", "nudge"]
            .iter()
            .filter_map(|step| by_step.get(step).and_then(|m| m.get(name)))
            .sum();
        assert!(claimed > 0, "process {name} claimed no run: {by_step:?}");
    }
}
