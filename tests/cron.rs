//! The cron scheduler on a virtual clock: slots fire once each, new triggers start from when
//! they were installed, time zones and daylight saving, catch-up after downtime, overlap,
//! schedule edits, and two "processes" (engines with stores of their own on one database)
//! ticking at once. Every scenario runs on SQLite (a fresh file) and on PostgreSQL (a fresh
//! schema; skipped, and said so, without `HERALD_TEST_POSTGRES_URL`).
//!
//! The scheduler is driven by hand: the test moves the clock, calls `Scheduler::tick` and then
//! `Engine::run_due` to execute what fired, and reads the outcome of every slot back from
//! `cron_fires`.

#[path = "support/db.rs"]
mod db;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herald::definitions::env::EnvSource;
use herald::definitions::project::Layout;
use herald::engine::clock::{Clock, VirtualClock};
use herald::engine::registry::Registry;
use herald::engine::scheduler::{Scheduler, TickReport};
use herald::engine::{Engine, EngineOptions, load_registry};
use herald::store::{CronFire, CronOutcome, DynStore, RunFilter, RunRecord, RunStatus};
use support::HttpSink;

const MINUTE: i64 = 60_000;

/// Unix milliseconds of an RFC 3339 time.
fn ms(t: &str) -> i64 {
    t.parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("`{t}`: {e}"))
        .as_millisecond()
}

/// An RFC 3339 time (UTC, whole seconds as `...:00Z`) for unix milliseconds.
fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

/// A local wall-clock time in `tz` for unix milliseconds, such as `2026-11-01T01:30:00-06:00`.
fn local(ms: i64, tz: &str) -> String {
    let z = jiff::Timestamp::from_millisecond(ms)
        .unwrap()
        .in_tz(tz)
        .unwrap();
    z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// A workflow with one cron trigger (the mapping under `cron:`, written inline) and `steps`.
fn workflow(id: &str, cron: &str, steps: &str) -> String {
    format!("kind: workflow\nid: {id}\ntriggers:\n  - cron: {{ {cron} }}\nsteps:\n{steps}")
}

/// A step that only records the slot it ran for.
const NOTE: &str = "  - id: note\n    set: { slot: \"{{ trigger.slot }}\" }\n";

struct Harness {
    engine: Arc<Engine>,
    scheduler: Scheduler,
    clock: VirtualClock,
    dir: tempfile::TempDir,
    env: EnvSource,
    generation: AtomicU64,
    sink: HttpSink,
    db: db::TestDb,
}

impl Harness {
    /// A project holding `workflows` (file name without `.yaml`, text; `{{SINK}}` is replaced
    /// by the HTTP sink's address), loaded and installed at `start`, with a scheduler that
    /// has not ticked yet. The config's `hook` channel posts to the sink.
    async fn new(db: db::TestDb, start: &str, workflows: &[(&str, String)]) -> Harness {
        let sink = HttpSink::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "channels:\n  email: {{ provider: log }}\n  hook: {{ provider: webhook, url: \"{}\" }}\n",
            sink.url("/deliver")
        );
        std::fs::write(dir.path().join("herald.yaml"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        let clock = VirtualClock::at(start);
        let env = EnvSource::Map(Arc::new(Default::default()));
        let engine = Engine::new(
            db.store.clone(),
            Arc::new(clock.clone()),
            env.clone(),
            options("engine-a"),
        );
        let h = Harness {
            scheduler: Scheduler::new(engine.clone()),
            engine,
            clock,
            dir,
            env,
            generation: AtomicU64::new(0),
            sink,
            db,
        };
        for (name, text) in workflows {
            h.write(name, text);
        }
        h.reload().await;
        h
    }

    /// Writes `workflows/<name>.yaml` (not loaded until [`Harness::reload`]).
    fn write(&self, name: &str, text: &str) {
        let path = self
            .dir
            .path()
            .join("workflows")
            .join(format!("{name}.yaml"));
        std::fs::write(path, text.replace("{{SINK}}", &self.sink.url(""))).unwrap();
    }

    /// Loads the project from disk as of the clock's now.
    fn load(&self) -> Registry {
        let layout = Layout::discover(self.dir.path()).unwrap();
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
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
        registry
    }

    /// Loads the project from disk and installs it, as a reload does.
    async fn reload(&self) {
        self.engine.install(self.load()).await.unwrap();
    }

    fn set(&self, t: i64) {
        self.clock.set(t);
    }

    async fn tick(&self) -> TickReport {
        self.scheduler.tick().await.expect("the tick succeeds")
    }

    /// Moves the clock to `t`, ticks, and executes what fired.
    async fn tick_at(&self, t: i64) -> TickReport {
        self.set(t);
        let report = self.tick().await;
        self.settle().await;
        report
    }

    /// Executes every run due and delivers every message due, until nothing is left.
    async fn settle(&self) {
        for _ in 0..100 {
            let runs = self.engine.run_due().await.unwrap();
            let sent = self.engine.deliver_due().await.unwrap();
            if runs == 0 && sent == 0 {
                return;
            }
        }
        panic!("the engine did not settle");
    }

    /// Every recorded slot of `workflow`, oldest first.
    async fn fires(&self, workflow: &str) -> Vec<CronFire> {
        fires(&self.engine.store, workflow).await
    }

    /// `(slot, outcome)` of every recorded slot of `workflow`, oldest first.
    async fn outcomes(&self, workflow: &str) -> Vec<(String, &'static str)> {
        self.fires(workflow)
            .await
            .iter()
            .map(|f| (iso(f.slot), f.outcome.as_str()))
            .collect()
    }

    /// The slots of `workflow` that fired, oldest first.
    async fn fired(&self, workflow: &str) -> Vec<String> {
        self.outcomes(workflow)
            .await
            .into_iter()
            .filter(|(_, o)| *o == "fired")
            .map(|(s, _)| s)
            .collect()
    }

    async fn runs(&self, workflow: &str) -> Vec<RunRecord> {
        runs(&self.engine.store, workflow).await
    }

    /// A new process after downtime: the clock moved to `at` with nothing ticking, then an
    /// engine with a store of its own on the same database loads the project and gets a new
    /// scheduler. (The old engine is left alone: it stands for the process that stopped.)
    async fn restart(&self, at: i64) -> (Arc<Engine>, Scheduler) {
        self.set(at);
        let engine = Engine::new(
            self.db.open_again().await,
            Arc::new(self.clock.clone()),
            self.env.clone(),
            options("engine-restarted"),
        );
        engine.install(self.load()).await.unwrap();
        let scheduler = Scheduler::new(engine.clone());
        (engine, scheduler)
    }
}

fn options(owner: &str) -> EngineOptions {
    EngineOptions {
        owner: owner.to_owned(),
        ..EngineOptions::default()
    }
}

async fn fires(store: &DynStore, workflow: &str) -> Vec<CronFire> {
    let mut fires = store.cron_fires(workflow, 100_000).await.unwrap();
    fires.reverse();
    fires
}

async fn runs(store: &DynStore, workflow: &str) -> Vec<RunRecord> {
    store
        .list_runs(&RunFilter {
            workflow_id: Some(workflow.to_owned()),
            limit: 100_000,
            ..RunFilter::default()
        })
        .await
        .unwrap()
}

/// Every `step` minutes from `from` to `to`, both included, as RFC 3339.
fn every(from: &str, to: &str, step: i64) -> Vec<String> {
    (ms(from)..=ms(to))
        .step_by((step * MINUTE) as usize)
        .map(iso)
        .collect()
}

db::scenarios!["cron";
    a_per_minute_schedule_fires_each_slot_once,
    a_new_trigger_does_not_fire_slots_from_before_it_existed,
    a_daily_time_fires_once_when_the_clock_falls_back,
    a_skipped_time_fires_at_three_when_the_clock_springs_forward,
    downtime_across_the_repeated_hour_decides_each_slot_once,
    catch_up_policies_decide_every_slot_missed_during_downtime,
    catch_up_latest_prefers_a_slot_that_is_on_time,
    overlap_skip_waits_for_the_previous_run_and_allow_does_not,
    an_edited_schedule_takes_over_without_firing_a_slot_twice,
    an_edit_just_before_a_slot_does_not_drop_it,
    a_schedule_edited_back_does_not_catch_up_the_time_it_was_replaced,
    a_slot_due_before_an_edit_is_decided_by_the_old_schedule,
    two_processes_on_one_database_fire_and_run_each_slot_once,
];

async fn a_per_minute_schedule_fires_each_slot_once(db: db::TestDb) {
    let start = "2026-11-02T15:00:30Z";
    let h = Harness::new(
        db,
        start,
        &[(
            "minutely",
            workflow("minutely", "schedule: \"* * * * *\"", NOTE),
        )],
    )
    .await;
    // The first tick only records where the trigger starts: 15:00 was before it existed.
    assert_eq!(h.tick_at(ms(start)).await, TickReport::default());
    assert!(h.fires("minutely").await.is_empty());

    let first = ms("2026-11-02T15:01:00Z");
    for minute in 0..10 {
        let slot = first + minute * MINUTE;
        // On the slot, a few milliseconds after it, and late in the minute: one fire only.
        let report = h.tick_at(slot).await;
        assert_eq!(
            report.fired,
            1,
            "slot {} fires on its first tick",
            iso(slot)
        );
        for offset in [5, 1_000, 20_000, 59_999] {
            let again = h.tick_at(slot + offset).await;
            assert_eq!(
                again,
                TickReport::default(),
                "tick at {} fired again",
                iso(slot + offset)
            );
        }
        // A scheduler without the in-memory cache (a restarted process) asks the store and
        // finds the slot decided.
        let fresh = Scheduler::new(h.engine.clone());
        assert_eq!(
            fresh.tick().await.unwrap(),
            TickReport::default(),
            "a second scheduler fired {} again",
            iso(slot)
        );
    }

    let fires = h.fires("minutely").await;
    let expected = every("2026-11-02T15:01:00Z", "2026-11-02T15:10:00Z", 1);
    assert_eq!(
        fires.iter().map(|f| iso(f.slot)).collect::<Vec<_>>(),
        expected
    );
    let runs = h.runs("minutely").await;
    assert_eq!(runs.len(), 10);
    for f in &fires {
        assert_eq!(f.outcome, CronOutcome::Fired);
        assert_eq!(f.reason, None);
        assert_eq!(f.trigger_key, "* * * * * @ UTC");
        assert_eq!(f.recorded_at, f.slot, "decided on the tick at the slot");
        let run_id = f.run_id.as_deref().expect("a fired slot names its run");
        let run = runs
            .iter()
            .find(|r| r.id == run_id)
            .expect("the fired run exists");
        assert_eq!(run.status, RunStatus::Completed);
        assert_eq!(run.trigger_kind, herald::store::TriggerKind::Cron);
        assert_eq!(run.context["trigger"]["slot"], iso(f.slot));
        assert_eq!(run.context["vars"]["slot"], iso(f.slot));
        assert_eq!(
            run.idempotency_key.as_deref(),
            Some(format!("cron:* * * * * @ UTC:{}", f.slot).as_str())
        );
    }
}

async fn a_new_trigger_does_not_fire_slots_from_before_it_existed(db: db::TestDb) {
    let h = Harness::new(
        db,
        "2026-11-02T15:00:30Z",
        &[("old", workflow("old", "schedule: \"*/5 * * * *\"", NOTE))],
    )
    .await;
    h.tick_at(ms("2026-11-02T15:00:30Z")).await;
    for t in every("2026-11-02T15:01:00Z", "2026-11-02T15:12:00Z", 1) {
        h.tick_at(ms(&t)).await;
    }
    // A workflow added at 15:12:20 with a per-minute schedule: 15:12 and everything before it
    // happened before it existed, even though the store has other cron history.
    h.set(ms("2026-11-02T15:12:20Z"));
    h.write("added", &workflow("added", "schedule: \"* * * * *\"", NOTE));
    h.reload().await;
    assert_eq!(h.tick().await, TickReport::default());
    for t in every("2026-11-02T15:12:40Z", "2026-11-02T15:15:40Z", 1) {
        h.tick_at(ms(&t)).await;
    }
    assert_eq!(
        h.fired("added").await,
        every("2026-11-02T15:13:00Z", "2026-11-02T15:15:00Z", 1)
    );
    assert_eq!(
        h.outcomes("added").await.len(),
        3,
        "no skipped or missed rows for the time before it existed"
    );
    assert_eq!(
        h.fired("old").await,
        every("2026-11-02T15:05:00Z", "2026-11-02T15:15:00Z", 5)
    );

    // A trigger starts when it was installed, not when the scheduler first sees it: one
    // loaded at 15:16:50 whose first tick (in a process just started) comes at 15:17:00.2
    // fires 15:17, and nothing before.
    h.set(ms("2026-11-02T15:16:50Z"));
    h.write("later", &workflow("later", "schedule: \"* * * * *\"", NOTE));
    h.reload().await;
    let fresh = Harness {
        scheduler: Scheduler::new(h.engine.clone()),
        ..h
    };
    fresh.tick_at(ms("2026-11-02T15:17:00.200Z")).await;
    assert_eq!(
        fresh.outcomes("later").await,
        vec![("2026-11-02T15:17:00Z".to_owned(), "fired")]
    );
}

/// Ticks every minute from `from` to `to` (exclusive), executing what fires.
async fn tick_every_minute(h: &Harness, from: &str, to: &str) {
    let mut t = ms(from);
    while t < ms(to) {
        h.set(t);
        if h.tick().await.fired > 0 {
            h.settle().await;
        }
        t += MINUTE;
    }
}

const DENVER: &str = "America/Denver";

fn denver(id: &'static str, schedule: &str) -> (&'static str, String) {
    (
        id,
        workflow(
            id,
            &format!("schedule: \"{schedule}\", timezone: {DENVER}"),
            NOTE,
        ),
    )
}

async fn a_daily_time_fires_once_when_the_clock_falls_back(db: db::TestDb) {
    // 2026-11-01 02:00 MDT becomes 01:00 MST in Denver: 01:00-02:00 happens twice.
    let start = "2026-10-31T12:00:00Z";
    let h = Harness::new(
        db,
        start,
        &[
            denver("at_0130", "30 1 * * *"),
            denver("at_0700", "0 7 * * *"),
            denver("half_hourly", "*/30 * * * *"),
        ],
    )
    .await;
    tick_every_minute(&h, start, "2026-11-02T18:00:00Z").await;

    // 01:30 is one slot on the day the clock falls back, at its first occurrence (MDT).
    let at_0130 = h.fires("at_0130").await;
    assert_eq!(
        at_0130.iter().map(|f| iso(f.slot)).collect::<Vec<_>>(),
        vec!["2026-11-01T07:30:00Z", "2026-11-02T08:30:00Z"]
    );
    assert_eq!(
        at_0130
            .iter()
            .map(|f| local(f.slot, DENVER))
            .collect::<Vec<_>>(),
        vec!["2026-11-01T01:30:00-06:00", "2026-11-02T01:30:00-07:00"]
    );
    assert!(at_0130.iter().all(|f| f.outcome == CronOutcome::Fired));

    // 07:00 stays 07:00 local: 13:00Z in daylight time, 14:00Z in standard time.
    assert_eq!(
        h.fired("at_0700").await,
        vec![
            "2026-10-31T13:00:00Z",
            "2026-11-01T14:00:00Z",
            "2026-11-02T14:00:00Z"
        ]
    );

    // An interval schedule runs in both halves of the repeated hour: in UTC it never stops
    // being every 30 minutes, and the local 01:00 and 01:30 each occur twice.
    let half = h.fires("half_hourly").await;
    assert_eq!(
        half.iter().map(|f| iso(f.slot)).collect::<Vec<_>>(),
        every("2026-10-31T12:00:00Z", "2026-11-02T17:30:00Z", 30)[1..].to_vec()
    );
    let repeated: Vec<String> = half
        .iter()
        .map(|f| local(f.slot, DENVER))
        .filter(|l| l.starts_with("2026-11-01T01:"))
        .collect();
    assert_eq!(
        repeated,
        vec![
            "2026-11-01T01:00:00-06:00",
            "2026-11-01T01:30:00-06:00",
            "2026-11-01T01:00:00-07:00",
            "2026-11-01T01:30:00-07:00"
        ]
    );
    // Every slot was decided on time, and ran.
    for f in at_0130.iter().chain(&half) {
        assert_eq!(f.outcome, CronOutcome::Fired, "{}", iso(f.slot));
        assert_eq!(f.recorded_at, f.slot);
    }
    let runs = h.runs("at_0130").await;
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.status == RunStatus::Completed));
}

async fn a_skipped_time_fires_at_three_when_the_clock_springs_forward(db: db::TestDb) {
    // 2027-03-14 02:00 MST becomes 03:00 MDT in Denver: 02:00-03:00 does not happen.
    let start = "2027-03-13T12:00:00Z";
    let h = Harness::new(
        db,
        start,
        &[
            denver("at_0230", "30 2 * * *"),
            denver("at_0700", "0 7 * * *"),
            denver("half_hourly", "*/30 * * * *"),
        ],
    )
    .await;
    tick_every_minute(&h, start, "2027-03-15T18:00:00Z").await;

    // 02:30 does not exist on the 14th: croner runs it at the first instant after the gap,
    // 03:00 MDT, as Vixie cron does. Once, and on the other days at 02:30 as usual.
    let at_0230 = h.fires("at_0230").await;
    assert_eq!(
        at_0230
            .iter()
            .map(|f| local(f.slot, DENVER))
            .collect::<Vec<_>>(),
        vec!["2027-03-14T03:00:00-06:00", "2027-03-15T02:30:00-06:00"]
    );
    assert_eq!(
        at_0230.iter().map(|f| iso(f.slot)).collect::<Vec<_>>(),
        vec!["2027-03-14T09:00:00Z", "2027-03-15T08:30:00Z"]
    );

    // 07:00 local before and after: 14:00Z in standard time, 13:00Z in daylight time.
    assert_eq!(
        h.fired("at_0700").await,
        vec![
            "2027-03-13T14:00:00Z",
            "2027-03-14T13:00:00Z",
            "2027-03-15T13:00:00Z"
        ]
    );

    // Every 30 minutes in UTC too: the local 02:00 and 02:30 are simply not there.
    let half = h.fires("half_hourly").await;
    assert_eq!(
        half.iter().map(|f| iso(f.slot)).collect::<Vec<_>>(),
        every("2027-03-13T12:00:00Z", "2027-03-15T17:30:00Z", 30)[1..].to_vec()
    );
    let around: Vec<String> = half
        .iter()
        .map(|f| local(f.slot, DENVER))
        .filter(|l| l.starts_with("2027-03-14T0") && l.as_str() < "2027-03-14T04")
        .collect();
    assert_eq!(
        around,
        vec![
            "2027-03-14T00:00:00-07:00",
            "2027-03-14T00:30:00-07:00",
            "2027-03-14T01:00:00-07:00",
            "2027-03-14T01:30:00-07:00",
            "2027-03-14T03:00:00-06:00",
            "2027-03-14T03:30:00-06:00"
        ]
    );
    for f in at_0230.iter().chain(&half) {
        assert_eq!(f.outcome, CronOutcome::Fired, "{}", iso(f.slot));
        assert_eq!(f.recorded_at, f.slot);
    }
    let runs = h.runs("at_0230").await;
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.status == RunStatus::Completed));
}

async fn downtime_across_the_repeated_hour_decides_each_slot_once(db: db::TestDb) {
    // Down from 23:00 MDT on Oct 31 until 03:15 MST on Nov 1, across the repeated 01:00-02:00.
    let start = "2026-11-01T05:00:00Z";
    let all = |id: &'static str, schedule: &str| {
        (
            id,
            workflow(
                id,
                &format!(
                    "schedule: \"{schedule}\", timezone: {DENVER}, catch_up: all, overlap: allow"
                ),
                NOTE,
            ),
        )
    };
    let h = Harness::new(
        db,
        start,
        &[
            all("at_0130", "30 1 * * *"),
            all("half_hourly", "*/30 * * * *"),
        ],
    )
    .await;
    h.tick_at(ms(start)).await;
    let (engine, scheduler) = h.restart(ms("2026-11-01T10:15:00Z")).await;
    let report = scheduler.tick().await.unwrap();
    while engine.run_due().await.unwrap() > 0 {}
    // 01:30 once (its first occurrence); every half hour of real time once: ten slots,
    // the local 01:00 and 01:30 twice each.
    assert_eq!(h.fired("at_0130").await, vec!["2026-11-01T07:30:00Z"]);
    assert_eq!(
        h.fired("half_hourly").await,
        every("2026-11-01T05:30:00Z", "2026-11-01T10:00:00Z", 30)
    );
    assert_eq!(
        report,
        TickReport {
            fired: 11,
            skipped: 0,
            missed: 0
        }
    );
    assert_eq!(h.outcomes("half_hourly").await.len(), 10);
    assert!(
        h.runs("half_hourly")
            .await
            .iter()
            .all(|r| r.status == RunStatus::Completed)
    );
}

async fn catch_up_policies_decide_every_slot_missed_during_downtime(db: db::TestDb) {
    let start = "2026-11-02T15:00:10Z";
    let half_hourly = |id: &str, extra: &str| {
        workflow(
            id,
            &format!("schedule: \"*/30 * * * *\"{extra}"),
            "  - id: call\n    http: { method: POST, url: \"{{SINK}}/ran\", json: { slot: \"{{ trigger.slot }}\" } }\n",
        )
    };
    let h = Harness::new(
        db,
        start,
        &[
            ("none", half_hourly("none", ", catch_up: none")),
            ("latest", half_hourly("latest", ", catch_up: latest")),
            ("all", half_hourly("all", ", catch_up: all")),
            (
                "windowed",
                half_hourly("windowed", ", catch_up: all, catch_up_window: 1h"),
            ),
        ],
    )
    .await;
    h.tick_at(ms(start)).await;
    // 15:30 fires on time everywhere.
    let report = h.tick_at(ms("2026-11-02T15:30:00Z")).await;
    assert_eq!(report.fired, 4);

    // Then nothing ticks for over three hours (Herald is down). A process starting at 18:45
    // finds six slots undecided, none of them on time.
    let (engine, scheduler) = h.restart(ms("2026-11-02T18:45:00Z")).await;
    let report = scheduler.tick().await.unwrap();
    let outage = every("2026-11-02T16:00:00Z", "2026-11-02T18:30:00Z", 30);
    assert_eq!(outage.len(), 6);
    // none: 6 skipped; latest: 1 fired, 5 skipped; all: 6 fired; windowed: 2 fired, 4 missed.
    assert_eq!(
        report,
        TickReport {
            fired: 9,
            skipped: 11,
            missed: 4
        }
    );
    // Ticking again decides nothing more.
    assert_eq!(scheduler.tick().await.unwrap(), TickReport::default());
    while engine.run_due().await.unwrap() > 0 {}

    // Nothing is dropped silently: every workflow has exactly one row per slot.
    let mut all_slots = vec!["2026-11-02T15:30:00Z".to_owned()];
    all_slots.extend(outage.iter().cloned());
    for wf in ["none", "latest", "all", "windowed"] {
        let slots: Vec<String> = h.fires(wf).await.iter().map(|f| iso(f.slot)).collect();
        assert_eq!(slots, all_slots, "{wf}: one row per slot");
    }

    let check = |wf: &'static str, fires: Vec<CronFire>, expected: Vec<(&str, &str, &str)>| {
        assert_eq!(fires.len(), expected.len(), "{wf}");
        for (f, (slot, outcome, reason)) in fires.iter().zip(expected) {
            assert_eq!(iso(f.slot), slot, "{wf}");
            assert_eq!(f.outcome.as_str(), outcome, "{wf} {slot}");
            match f.outcome {
                CronOutcome::Fired => {
                    assert!(f.run_id.is_some(), "{wf} {slot}");
                    assert_eq!(f.reason, None);
                }
                _ => {
                    assert_eq!(f.run_id, None, "{wf} {slot}: no run for a slot not run");
                    let r = f.reason.as_deref().unwrap_or_default();
                    assert!(r.contains(reason), "{wf} {slot}: reason `{r}`");
                }
            }
            assert_eq!(
                f.recorded_at,
                ms(if slot == "2026-11-02T15:30:00Z" {
                    slot
                } else {
                    "2026-11-02T18:45:00Z"
                })
            );
        }
    };
    let after = |fires: Vec<CronFire>| fires.into_iter().skip(1).collect::<Vec<_>>();
    let o = &outage;
    check(
        "none",
        after(h.fires("none").await),
        o.iter()
            .map(|s| (s.as_str(), "skipped", "catch_up: none"))
            .collect(),
    );
    check(
        "latest",
        after(h.fires("latest").await),
        o.iter()
            .map(|s| {
                if s == &o[5] {
                    (s.as_str(), "fired", "")
                } else {
                    (s.as_str(), "skipped", "catch_up: latest")
                }
            })
            .collect(),
    );
    check(
        "all",
        after(h.fires("all").await),
        o.iter().map(|s| (s.as_str(), "fired", "")).collect(),
    );
    check(
        "windowed",
        after(h.fires("windowed").await),
        o.iter()
            .enumerate()
            .map(|(i, s)| {
                if i < 4 {
                    (s.as_str(), "missed", "catch_up_window")
                } else {
                    (s.as_str(), "fired", "")
                }
            })
            .collect(),
    );

    // Runs: one per fired slot, each executed (its call reached the sink) once.
    let mut ran: BTreeMap<String, usize> = BTreeMap::new();
    for r in h.sink.requests() {
        *ran.entry(r.json["slot"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for (wf, want) in [("none", 1), ("latest", 2), ("all", 7), ("windowed", 3)] {
        let runs = h.runs(wf).await;
        assert_eq!(runs.len(), want, "{wf}");
        assert!(
            runs.iter().all(|r| r.status == RunStatus::Completed),
            "{wf}"
        );
        let fired: Vec<String> = h
            .fires(wf)
            .await
            .iter()
            .filter(|f| f.outcome == CronOutcome::Fired)
            .map(|f| f.run_id.clone().unwrap())
            .collect();
        let mut ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
        ids.sort();
        let mut fired_sorted = fired.clone();
        fired_sorted.sort();
        assert_eq!(
            ids, fired_sorted,
            "{wf}: the runs are the fired slots' runs"
        );
    }
    // 15:30 ran four times (once per workflow); 18:30 three times; 16:00 once (all).
    assert_eq!(ran.get("2026-11-02T15:30:00Z"), Some(&4));
    assert_eq!(ran.get("2026-11-02T18:30:00Z"), Some(&3));
    assert_eq!(ran.get("2026-11-02T18:00:00Z"), Some(&2));
    assert_eq!(ran.get("2026-11-02T16:00:00Z"), Some(&1));
    assert_eq!(ran.values().sum::<usize>(), 4 + 1 + 6 + 2);

    // After the outage the schedule goes on as usual.
    h.set(ms("2026-11-02T19:00:00Z"));
    assert_eq!(scheduler.tick().await.unwrap().fired, 4);
}

async fn catch_up_latest_prefers_a_slot_that_is_on_time(db: db::TestDb) {
    let start = "2026-11-02T15:00:10Z";
    let h = Harness::new(
        db,
        start,
        &[(
            "latest",
            workflow(
                "latest",
                "schedule: \"*/30 * * * *\", catch_up: latest",
                NOTE,
            ),
        )],
    )
    .await;
    h.tick_at(ms(start)).await;
    // Down from 15:00:10 until 17:00:20: 15:30, 16:00 and 16:30 are late, 17:00 is on time
    // (within the grace period). The on-time slot runs; the late ones are all skipped.
    let report = h.tick_at(ms("2026-11-02T17:00:20Z")).await;
    assert_eq!(
        report,
        TickReport {
            fired: 1,
            skipped: 3,
            missed: 0
        }
    );
    assert_eq!(
        h.outcomes("latest").await,
        vec![
            ("2026-11-02T15:30:00Z".to_owned(), "skipped"),
            ("2026-11-02T16:00:00Z".to_owned(), "skipped"),
            ("2026-11-02T16:30:00Z".to_owned(), "skipped"),
            ("2026-11-02T17:00:00Z".to_owned(), "fired"),
        ]
    );
    // A slot 61 seconds late is late: with no on-time slot, the latest late one runs.
    let report = h.tick_at(ms("2026-11-02T17:31:01Z")).await;
    assert_eq!(report.fired, 1);
    assert_eq!(
        h.fired("latest").await.last().unwrap(),
        "2026-11-02T17:30:00Z"
    );
    assert_eq!(h.runs("latest").await.len(), 2);
}

async fn overlap_skip_waits_for_the_previous_run_and_allow_does_not(db: db::TestDb) {
    let start = "2026-11-02T15:00:30Z";
    let slow = "  - id: slow\n    wait: 1h\n";
    let h = Harness::new(
        db,
        start,
        &[
            (
                "skip",
                workflow("skip", "schedule: \"* * * * *\", overlap: skip", slow),
            ),
            (
                "allow",
                workflow("allow", "schedule: \"* * * * *\", overlap: allow", slow),
            ),
        ],
    )
    .await;
    h.tick_at(ms(start)).await;
    for t in every("2026-11-02T15:01:00Z", "2026-11-02T16:05:00Z", 1) {
        h.tick_at(ms(&t)).await;
    }
    let minutes = every("2026-11-02T15:01:00Z", "2026-11-02T16:05:00Z", 1);

    // skip: the 15:01 run waits until 16:01. The tick at 16:01 comes before the worker has
    // finished it, so 16:01 is skipped too; 16:02 fires, and its run is then the one going.
    let skip = h.fires("skip").await;
    assert_eq!(
        skip.iter().map(|f| iso(f.slot)).collect::<Vec<_>>(),
        minutes
    );
    assert_eq!(
        h.fired("skip").await,
        vec!["2026-11-02T15:01:00Z", "2026-11-02T16:02:00Z"]
    );
    for f in skip.iter().filter(|f| f.outcome != CronOutcome::Fired) {
        assert_eq!(f.outcome, CronOutcome::Skipped);
        assert!(
            f.reason.as_deref().unwrap().contains("overlap: skip"),
            "{:?}",
            f.reason
        );
        assert_eq!(f.run_id, None);
    }
    let runs = h.runs("skip").await;
    assert_eq!(runs.len(), 2);
    // The 15:01 run finished at 16:01; the 16:02 one is waiting out its hour.
    let status_of = |slot: &str| {
        let f = skip.iter().find(|f| iso(f.slot) == slot).unwrap();
        let run_id = f.run_id.as_deref().unwrap();
        runs.iter().find(|r| r.id == run_id).unwrap().status
    };
    assert_eq!(status_of("2026-11-02T15:01:00Z"), RunStatus::Completed);
    assert_eq!(status_of("2026-11-02T16:02:00Z"), RunStatus::Waiting);

    // allow: one run per slot, 65 of them, the first five finished by now.
    assert_eq!(h.fired("allow").await, minutes);
    let runs = h.runs("allow").await;
    assert_eq!(runs.len(), 65);
    let done = runs
        .iter()
        .filter(|r| r.status == RunStatus::Completed)
        .count();
    let waiting = runs
        .iter()
        .filter(|r| r.status == RunStatus::Waiting)
        .count();
    assert_eq!((done, waiting), (5, 60));
}

/// The slots of `workflow` under every trigger key, checking that none is recorded twice
/// across keys as fired.
async fn fired_once(h: &Harness, workflow: &str) -> Vec<String> {
    let fired = h.fired(workflow).await;
    let unique: BTreeSet<&String> = fired.iter().collect();
    assert_eq!(
        unique.len(),
        fired.len(),
        "{workflow}: a slot fired twice: {fired:?}"
    );
    let runs = h.runs(workflow).await;
    assert_eq!(
        runs.len(),
        fired.len(),
        "{workflow}: one run per fired slot"
    );
    assert!(runs.iter().all(|r| r.status == RunStatus::Completed));
    fired
}

async fn an_edited_schedule_takes_over_without_firing_a_slot_twice(db: db::TestDb) {
    let start = "2026-11-02T15:00:30Z";
    let every5 = workflow("job", "schedule: \"*/5 * * * *\"", NOTE);
    let every10 = workflow("job", "schedule: \"*/10 * * * *\"", NOTE);
    let at_7 = workflow("job", "schedule: \"7,17,27,37,47,57 * * * *\"", NOTE);
    let h = Harness::new(db, start, &[("job", every5.clone())]).await;
    h.tick_at(ms(start)).await;
    for t in every("2026-11-02T15:01:00Z", "2026-11-02T15:10:00Z", 1) {
        h.tick_at(ms(&t)).await;
    }
    // 15:10 fired under */5; the edit to */10, which also has 15:10, lands 30 s later.
    h.set(ms("2026-11-02T15:10:30Z"));
    h.write("job", &every10);
    h.reload().await;
    for t in every("2026-11-02T15:10:30Z", "2026-11-02T15:30:30Z", 1) {
        h.tick_at(ms(&t)).await;
    }
    // An edit between two slots, with ticks every few seconds around it.
    h.set(ms("2026-11-02T15:36:10Z"));
    h.write("job", &at_7);
    h.reload().await;
    let mut t = ms("2026-11-02T15:36:10Z");
    while t <= ms("2026-11-02T15:48:00Z") {
        h.tick_at(t).await;
        t += 7_000;
    }
    // And back to */10 at a slot of the current schedule, after that slot fired.
    h.set(ms("2026-11-02T15:57:00Z") + 1);
    h.tick().await;
    h.settle().await;
    h.write("job", &every10);
    h.reload().await;
    for t in every("2026-11-02T15:57:30Z", "2026-11-02T16:20:30Z", 1) {
        h.tick_at(ms(&t)).await;
    }

    assert_eq!(
        fired_once(&h, "job").await,
        vec![
            "2026-11-02T15:05:00Z",
            "2026-11-02T15:10:00Z",
            "2026-11-02T15:20:00Z",
            "2026-11-02T15:30:00Z",
            "2026-11-02T15:37:00Z",
            "2026-11-02T15:47:00Z",
            "2026-11-02T15:57:00Z",
            "2026-11-02T16:00:00Z",
            "2026-11-02T16:10:00Z",
            "2026-11-02T16:20:00Z",
        ]
    );
    // Nothing was skipped or missed: every edit took over on time.
    assert!(
        h.fires("job")
            .await
            .iter()
            .all(|f| f.outcome == CronOutcome::Fired)
    );
    let keys: BTreeSet<String> = h
        .fires("job")
        .await
        .into_iter()
        .map(|f| f.trigger_key)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "*/5 * * * * @ UTC".to_owned(),
            "*/10 * * * * @ UTC".to_owned(),
            "7,17,27,37,47,57 * * * * @ UTC".to_owned()
        ])
    );
}

async fn an_edit_just_before_a_slot_does_not_drop_it(db: db::TestDb) {
    // `herald serve` ticks just after each whole second. A reload that lands in the second
    // before a slot of the new schedule is first seen by the tick just after the slot.
    let start = "2026-11-02T15:00:30Z";
    let h = Harness::new(
        db,
        start,
        &[("job", workflow("job", "schedule: \"0 * * * *\"", NOTE))],
    )
    .await;
    h.tick_at(ms(start)).await;
    h.set(ms("2026-11-02T15:29:59.500Z"));
    h.tick().await;
    h.write("job", &workflow("job", "schedule: \"30 * * * *\"", NOTE));
    h.reload().await;
    let report = h.tick_at(ms("2026-11-02T15:30:00.005Z")).await;
    assert_eq!(report.fired, 1, "the new schedule's first slot fires");
    for t in every("2026-11-02T15:31:00Z", "2026-11-02T16:31:00Z", 1) {
        h.tick_at(ms(&t)).await;
    }
    assert_eq!(
        fired_once(&h, "job").await,
        vec!["2026-11-02T15:30:00Z", "2026-11-02T16:30:00Z"]
    );
}

async fn a_schedule_edited_back_does_not_catch_up_the_time_it_was_replaced(db: db::TestDb) {
    let start = "2026-11-02T15:00:30Z";
    let every5 = workflow("job", "schedule: \"*/5 * * * *\"", NOTE);
    let every10 = workflow("job", "schedule: \"*/10 * * * *\"", NOTE);
    let h = Harness::new(db, start, &[("job", every5.clone())]).await;
    for t in every("2026-11-02T15:00:30Z", "2026-11-02T15:07:30Z", 1) {
        h.tick_at(ms(&t)).await;
    }
    h.write("job", &every10);
    h.reload().await;
    for t in every("2026-11-02T15:07:30Z", "2026-11-02T15:32:30Z", 1) {
        h.tick_at(ms(&t)).await;
    }
    // Back to */5 at 15:32:30. Its key was last decided at 15:07:30, but the time since was
    // not downtime: */10 was in force, and fired 15:10, 15:20 and 15:30. None of those may
    // fire (or be recorded skipped) again under */5.
    h.write("job", &every5);
    h.reload().await;
    for t in every("2026-11-02T15:32:30Z", "2026-11-02T15:45:30Z", 1) {
        h.tick_at(ms(&t)).await;
    }
    assert_eq!(
        fired_once(&h, "job").await,
        vec![
            "2026-11-02T15:05:00Z",
            "2026-11-02T15:10:00Z",
            "2026-11-02T15:20:00Z",
            "2026-11-02T15:30:00Z",
            "2026-11-02T15:35:00Z",
            "2026-11-02T15:40:00Z",
            "2026-11-02T15:45:00Z",
        ]
    );
    let not_fired: Vec<(String, &str)> = h
        .outcomes("job")
        .await
        .into_iter()
        .filter(|(_, o)| *o != "fired")
        .collect();
    assert_eq!(
        not_fired,
        vec![],
        "nothing was down, so nothing was skipped"
    );
}

async fn a_slot_due_before_an_edit_is_decided_by_the_old_schedule(db: db::TestDb) {
    // 16:00 is due under the hourly schedule; the reload to a half-past schedule lands 300 ms
    // later, before the scheduler's next tick. 16:00 was a slot while the hourly schedule was
    // in force, so it fires, and the new schedule starts at 16:30.
    let start = "2026-11-02T15:00:30Z";
    let h = Harness::new(
        db,
        start,
        &[("job", workflow("job", "schedule: \"0 * * * *\"", NOTE))],
    )
    .await;
    h.tick_at(ms(start)).await;
    h.tick_at(ms("2026-11-02T15:59:59.900Z")).await;
    h.set(ms("2026-11-02T16:00:00.300Z"));
    h.write("job", &workflow("job", "schedule: \"30 * * * *\"", NOTE));
    h.reload().await;
    h.tick_at(ms("2026-11-02T16:00:01.005Z")).await;
    for t in every("2026-11-02T16:01:00Z", "2026-11-02T16:31:00Z", 1) {
        h.tick_at(ms(&t)).await;
    }
    assert_eq!(
        fired_once(&h, "job").await,
        vec!["2026-11-02T16:00:00Z", "2026-11-02T16:30:00Z"]
    );
    let fires = h.fires("job").await;
    assert_eq!(fires[0].trigger_key, "0 * * * * @ UTC");
    assert_eq!(fires[1].trigger_key, "30 * * * * @ UTC");
}

/// Two engines, each with its own store on the same database and its own scheduler: two
/// Herald processes. They tick, execute and deliver concurrently, round after round, on one
/// clock, through 120 slots of a per-minute schedule.
async fn two_processes_on_one_database_fire_and_run_each_slot_once(db: db::TestDb) {
    const SLOTS: i64 = 120;
    let start = "2026-11-02T15:00:30Z";
    let steps = "  - id: call\n    http: { method: POST, url: \"{{SINK}}/ran\", json: { slot: \"{{ trigger.slot }}\" } }\n  - id: tell\n    send: { channel: hook, to: ops@example.com, body: \"slot {{ trigger.slot }}\" }\n";
    let h = Harness::new(
        db,
        start,
        &[(
            "shared",
            // Every slot must fire whatever the timing of the two processes: catch_up: all
            // and overlap: allow leave "fired" as the only right outcome.
            workflow(
                "shared",
                "schedule: \"* * * * *\", catch_up: all, overlap: allow",
                steps,
            ),
        )],
    )
    .await;
    let other = Engine::new(
        h.db.open_again().await,
        Arc::new(h.clock.clone()),
        h.env.clone(),
        options("engine-b"),
    );
    other.install(h.load()).await.unwrap();
    let engines = [h.engine.clone(), other];
    let schedulers: Vec<Arc<Scheduler>> = engines
        .iter()
        .map(|e| Arc::new(Scheduler::new(e.clone())))
        .collect();

    let first = ms("2026-11-02T15:01:00Z");
    let mut reported_fired = 0;
    for round in 0..SLOTS * 2 {
        // Half-minute steps: every other round is on a slot, the rest between slots.
        h.clock.set(first - 30_000 + (round + 1) * 30_000);
        let mut tasks = tokio::task::JoinSet::new();
        for (e, s) in engines.iter().zip(&schedulers) {
            for _ in 0..2 {
                let s = s.clone();
                tasks.spawn(async move { s.tick().await.expect("tick").fired });
            }
            let e2 = e.clone();
            tasks.spawn(async move {
                e2.run_due().await.expect("run_due");
                0
            });
            let e3 = e.clone();
            tasks.spawn(async move {
                e3.deliver_due().await.expect("deliver_due");
                0
            });
        }
        while let Some(r) = tasks.join_next().await {
            reported_fired += r.expect("a task panicked");
        }
    }
    // Four schedulers (two per process) decided every slot; exactly one decision per slot
    // was recorded, and only that one reported a fire.
    assert_eq!(reported_fired as i64, SLOTS, "fires reported by the ticks");
    // Finish what the last round started.
    for _ in 0..10 {
        let mut n = 0;
        for e in &engines {
            n += e.run_due().await.unwrap() + e.deliver_due().await.unwrap();
        }
        if n == 0 {
            break;
        }
    }

    let slots = every("2026-11-02T15:01:00Z", "2026-11-02T17:00:00Z", 1);
    assert_eq!(slots.len() as i64, SLOTS);
    let fires = h.fires("shared").await;
    assert_eq!(
        fires.iter().map(|f| iso(f.slot)).collect::<Vec<_>>(),
        slots,
        "one row per slot"
    );
    assert!(fires.iter().all(|f| f.outcome == CronOutcome::Fired));
    let runs = h.runs("shared").await;
    assert_eq!(runs.len() as i64, SLOTS, "one run per slot");
    let run_ids: BTreeSet<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    let fired_ids: BTreeSet<&str> = fires.iter().filter_map(|f| f.run_id.as_deref()).collect();
    assert_eq!(run_ids, fired_ids);
    for r in &runs {
        assert_eq!(r.status, RunStatus::Completed, "{}", r.id);
        assert_eq!(r.lease_owner, None);
        let trail: Vec<String> = h
            .engine
            .store
            .step_log(&r.id)
            .await
            .unwrap()
            .iter()
            .map(|s| format!("{}:{}", s.step_id, s.status))
            .collect();
        assert_eq!(trail, vec!["call:completed", "tell:completed"], "{}", r.id);
    }

    // Executed once: the `http` step of each run reached the sink once (its key is
    // `<run>:call`), with each slot once.
    let requests = h.sink.requests();
    let calls: Vec<_> = requests.iter().filter(|r| r.path == "/ran").collect();
    assert_eq!(calls.len() as i64, SLOTS, "one call per slot");
    let called_slots: BTreeSet<&str> = calls
        .iter()
        .map(|r| r.json["slot"].as_str().unwrap())
        .collect();
    assert_eq!(called_slots.len() as i64, SLOTS);
    for r in &runs {
        assert_eq!(
            h.sink.count_for_key(&format!("{}:call", r.id)),
            1,
            "{}",
            r.id
        );
        // Delivered once: the `send` step's message, by either dispatcher.
        assert_eq!(
            h.sink.count_for_key(&format!("{}:tell", r.id)),
            1,
            "{}",
            r.id
        );
    }
    assert_eq!(h.sink.duplicate_keys(), Vec::<String>::new());
    assert_eq!(
        requests.iter().filter(|r| r.path == "/deliver").count() as i64,
        SLOTS
    );
}
