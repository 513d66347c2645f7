//! An engine on a real database and a virtual clock, with a project written to a temporary
//! folder and a `hook` channel that posts to a real HTTP server on loopback: what the engine
//! scenario tests share.

#![allow(dead_code)]

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use herald::definitions::env::EnvSource;
use herald::definitions::project::Layout;
use herald::engine::clock::{Clock, VirtualClock};
use herald::engine::{Engine, EngineOptions, StartRun, Trigger, load_registry};
use herald::store::{RunRecord, StepLogEntry};
use serde_json::Value;

use crate::db;
use crate::support::HttpSink;

pub const START: &str = "2026-11-02T15:00:00Z";

/// A webhook trigger carrying `body`, as `herald serve` would make it.
pub fn webhook(body: Value) -> Trigger {
    Trigger::Webhook {
        method: "POST".into(),
        path: "/test".into(),
        body,
        headers: Default::default(),
        query: Default::default(),
        params: Default::default(),
    }
}

pub struct Harness {
    pub engine: Arc<Engine>,
    pub clock: VirtualClock,
    pub dir: tempfile::TempDir,
    pub env: EnvSource,
    pub generation: std::sync::atomic::AtomicU64,
    pub sink: HttpSink,
    pub _db: db::TestDb,
}

impl Harness {
    /// A project with `files` (paths relative to the project root) and a config whose
    /// `hook` channel posts to the test's HTTP sink.
    pub async fn new(db: db::TestDb, files: &[(&str, &str)]) -> Harness {
        let sink = HttpSink::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "channels:\n  email: {{ provider: log }}\n  sms: {{ provider: log }}\n  hook: {{ provider: webhook, url: \"{}\" }}\n",
            sink.url("/deliver")
        );
        std::fs::write(dir.path().join("herald.yaml"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text.replace("{{SINK}}", &sink.url(""))).unwrap();
        }
        let clock = VirtualClock::at(START);
        let env = EnvSource::Map(Arc::new(
            [("API_TOKEN".to_owned(), "t0ken".to_owned())].into(),
        ));
        let engine = Engine::new(
            db.store.clone(),
            Arc::new(clock.clone()),
            env.clone(),
            EngineOptions::default(),
        );
        let h = Harness {
            engine,
            clock,
            dir,
            env,
            generation: std::sync::atomic::AtomicU64::new(0),
            sink,
            _db: db,
        };
        h.reload().await;
        h
    }

    /// Loads the project from disk and installs it, as a reload does.
    pub async fn reload(&self) {
        let layout = Layout::discover(self.dir.path()).unwrap();
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let (registry, _) = load_registry(&layout, &self.env, generation, self.clock.now())
            .unwrap_or_else(|report| {
                panic!(
                    "{}",
                    report
                        .diagnostics
                        .iter()
                        .map(|d| d.render(false))
                        .collect::<String>()
                )
            });
        self.engine.install(registry).await.unwrap();
    }

    pub fn write(&self, path: &str, text: &str) {
        std::fs::write(
            self.dir.path().join(path),
            text.replace("{{SINK}}", &self.sink.url("")),
        )
        .unwrap();
    }

    pub async fn start(&self, workflow: &str, body: Value) -> String {
        self.start_keyed(workflow, body, None).await.0
    }

    pub async fn start_keyed(
        &self,
        workflow: &str,
        body: Value,
        key: Option<&str>,
    ) -> (String, bool) {
        let wf = self
            .engine
            .registry()
            .workflows
            .get(workflow)
            .cloned()
            .unwrap_or_else(|| panic!("no workflow {workflow}"));
        let started = self
            .engine
            .start(StartRun {
                workflow: wf,
                trigger: webhook(body),
                idempotency_key: key.map(str::to_owned),
                want_reply: false,
            })
            .await
            .unwrap();
        self.settle().await;
        (started.run_id, started.duplicate)
    }

    /// Runs everything due now and delivers everything queued, until nothing is left (runs
    /// started in the background, past an `http` step, are waited for too).
    pub async fn settle(&self) {
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

    pub async fn advance(&self, d: Duration) {
        self.clock.advance(d);
        self.settle().await;
    }

    pub async fn run(&self, id: &str) -> RunRecord {
        self.engine
            .store
            .run(id)
            .await
            .unwrap()
            .expect("the run exists")
    }

    pub async fn steps(&self, id: &str) -> Vec<StepLogEntry> {
        self.engine.store.step_log(id).await.unwrap()
    }

    /// `step_id:status` for each step-log line, for compact assertions.
    pub async fn trail(&self, id: &str) -> Vec<String> {
        self.steps(id)
            .await
            .iter()
            .map(|s| format!("{}:{}", s.step_id, s.status))
            .collect()
    }

    pub fn at(&self, offset: Duration) -> i64 {
        jiff::Timestamp::from_str(START).unwrap().as_millisecond() + offset.as_millis() as i64
    }
}
