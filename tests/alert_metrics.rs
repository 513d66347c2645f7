//! `metric` alerts on what Herald's database knows beyond queues and runs: the delivery rate
//! per channel, webhook responses per workflow and status, and step latency per workflow,
//! on both backends; and their validation, with positions and hints.

#[path = "support/db.rs"]
mod db;
mod support;

use std::sync::Arc;

use herald::alerts::AlertState;
use herald::alerts::tick::run_metric_tick;
use herald::definitions::alert::Alert;
use herald::definitions::env::EnvSource;
use herald::definitions::model::alert::{AlertSource, MetricSource};
use herald::definitions::read_definition;
use herald::definitions::source::SourceFile;
use herald::engine::clock::{Clock, VirtualClock};
use herald::store::{
    Commit, DeliveryOutcome, DynStore, NewOutbox, NewRun, RunState, RunStatus, RunWrite,
    StepLogEntry, StepStatus, TriggerKind,
};
use serde_json::json;
use support::alerts::{queued, validate};

const MIN: i64 = 60_000;
/// 2026-11-02T15:00:00Z, on a minute.
const T0: i64 = 1_793_631_600_000;

fn alert(yaml: &str) -> Alert {
    let def = read_definition(SourceFile::new("a.yaml", yaml))
        .unwrap_or_else(|d| panic!("{}", d.iter().map(|d| d.render(false)).collect::<String>()));
    def.as_alert().expect("an alert").clone()
}

fn metric(a: &Alert) -> &MetricSource {
    match &a.def.source {
        AlertSource::Metric(m) => m,
        other => panic!("not a metric source: {other:?}"),
    }
}

async fn tick(store: &DynStore, a: &Alert, now: i64) {
    run_metric_tick(&**store, a, metric(a), now).await.unwrap();
}

/// Each stored instance: its group, phase and last value.
async fn instances(store: &DynStore, id: &str) -> Vec<(String, String, Option<f64>)> {
    store
        .alert_instances(id)
        .await
        .unwrap()
        .into_iter()
        .map(|i| {
            let v = serde_json::from_str::<AlertState>(&i.state).unwrap().value;
            (i.group_key, i.phase, v)
        })
        .collect()
}

#[test]
fn wrong_filters_quantiles_and_statuses_are_reported_with_positions_and_hints() {
    let text = validate(&[
        (
            "q.yaml",
            "kind: alert\nid: q\nsource:\n  metric: { name: step_latency, quantile: 0.9 }\ncondition: \"> 5\"\n",
        ),
        (
            "s.yaml",
            "kind: alert\nid: s\nsource:\n  metric:\n    name: webhook_responses\n    status: [5xx, 50x, 700]\ncondition: \"> 10\"\n",
        ),
        (
            "f.yaml",
            "kind: alert\nid: f\nsource:\n  metric:\n    name: delivery_rate\n    workflow: signup\ncondition: \"< 0.95\"\n",
        ),
        (
            "u.yaml",
            "kind: alert\nid: u\nsource:\n  metric: { name: delivery_rate, quantile: 0.5, status: [5xx] }\ncondition: \"< 0.95\"\n",
        ),
        (
            "n.yaml",
            "kind: alert\nid: n\nsource:\n  metric: { name: delivery_ratio }\ncondition: \"< 0.95\"\n",
        ),
    ]);
    for want in [
        "q.yaml:4:43: error: `quantile: 0.9` is not one Herald reads",
        "write 0.5 (the median), 0.95 or 0.99",
        "s.yaml:6:19: error: `50x` is not a status or a class of them",
        "s.yaml:6:24: error: 700 is not an HTTP status (100 to 599)",
        "a class: `1xx`, `2xx`, `3xx`, `4xx` or `5xx`",
        "f.yaml:6:5: error: `delivery_rate` is a measurement of the outbox, filtered by `channel`, not `workflow`",
        "write `channel:` instead, or remove `workflow`",
        "u.yaml:4:34: error: `quantile` goes with `name: step_latency`, not `delivery_rate`",
        "`status` goes with `name: webhook_responses`, not `delivery_rate`",
        "expected one of: outbox_backlog, outbox_oldest_age, delivery_rate, run_failures, runs_stuck, webhook_responses, step_latency",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("s.yaml:6:14"), "`5xx` is a class:\n{text}");
}

db::scenarios!["alert_metrics";
    the_delivery_rate_fires_below_its_threshold_and_is_no_data_when_nothing_finished,
    webhook_responses_are_counted_per_workflow_and_status,
    step_latency_is_a_quantile_of_step_durations_per_workflow,
];

/// Queues `sent + failed` messages on `channel` and finishes them at `at`.
async fn deliver(store: &DynStore, channel: &str, sent: usize, failed: usize, at: i64) {
    let rows: Vec<NewOutbox> = (0..sent + failed)
        .map(|i| queued(&format!("{channel}-{at}-{i}"), channel, at - MIN, at - MIN))
        .collect();
    store.insert_events(&[], &[], &[], &rows).await.unwrap();
    let claimed = store
        .claim_outbox("dispatcher", at, 60_000, 1_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), sent + failed);
    let outcomes = claimed
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let o = if i < sent {
                DeliveryOutcome::Sent {
                    provider_id: Some(format!("p-{}", m.id)),
                }
            } else {
                DeliveryOutcome::Failed {
                    error: "the provider refused it".into(),
                }
            };
            (m.id.clone(), o)
        })
        .collect();
    let done = store
        .finish_deliveries("dispatcher", outcomes, at)
        .await
        .unwrap();
    assert!(done.iter().all(|d| *d));
}

async fn the_delivery_rate_fires_below_its_threshold_and_is_no_data_when_nothing_finished(
    db: db::TestDb,
) {
    let store = &db.store;
    let by_channel = alert(
        "kind: alert\nid: delivery\nevery: 1m\nsource:\n  metric: { name: delivery_rate, window: 1h, group_by: true }\ncondition: \"< 95%\"\n",
    );
    // No data counts as alerting here, to tell it from a rate of 1 (which would not fire).
    let email = alert(
        "kind: alert\nid: email-quiet\nevery: 1m\nno_data: alerting\nsource:\n  metric: { name: delivery_rate, channel: email }\ncondition: \"< 0.95\"\n",
    );
    tick(store, &by_channel, T0).await;
    tick(store, &email, T0).await;
    assert_eq!(instances(store, "delivery").await, []);
    assert_eq!(
        instances(store, "email-quiet").await,
        [("{}".to_owned(), "firing".to_owned(), None)],
        "nothing finished: no data, not 0 nor 1"
    );
    // A message still queued has not finished: it counts for nothing.
    let queued = NewOutbox {
        due_at: T0 + 600 * MIN,
        ..queued("queued", "email", T0, T0)
    };
    store.insert_events(&[], &[], &[], &[queued]).await.unwrap();

    // 18 of 20 e-mails reached the provider (90 %); every text did.
    deliver(store, "email", 18, 2, T0 + 2 * MIN).await;
    deliver(store, "sms", 20, 0, T0 + 3 * MIN).await;
    tick(store, &by_channel, T0 + 5 * MIN).await;
    tick(store, &email, T0 + 5 * MIN).await;
    assert_eq!(
        instances(store, "delivery").await,
        [(
            r#"{"channel":"email"}"#.to_owned(),
            "firing".to_owned(),
            Some(0.9)
        )],
        "email fires at 90 %; sms at 100 % is not stored"
    );
    let e = instances(store, "email-quiet").await;
    assert_eq!((e[0].1.as_str(), e[0].2), ("firing", Some(0.9)), "{e:?}");

    // An hour and more later nothing finished in the window: no data, which resolves.
    tick(store, &by_channel, T0 + 2 * 60 * MIN).await;
    assert_eq!(
        instances(store, "delivery").await,
        [(
            r#"{"channel":"email"}"#.to_owned(),
            "resolved".to_owned(),
            None
        )]
    );
}

fn env() -> EnvSource {
    EnvSource::Map(Arc::new([("HOOK_TOKEN".to_owned(), "t".repeat(32))].into()))
}

async fn webhook_responses_are_counted_per_workflow_and_status(db: db::TestDb) {
    let store = &db.store;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("herald.yaml"), "channels: {}\n").unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(
        dir.path().join("workflows/signup.yaml"),
        "kind: workflow\nid: signup\ntriggers:\n  - webhook: { path: /hooks/signup, auth: { bearer: { token: \"${env:HOOK_TOKEN}\" } } }\nsteps:\n  - id: note\n    set: { ok: true }\n",
    )
    .unwrap();
    let clock = VirtualClock::at("2026-11-02T15:00:00Z");
    let app = support::app::App::start(dir.path(), &env(), store.clone(), &clock).await;
    let http = reqwest::Client::new();
    let t0 = clock.now();
    // Three accepted, two refused for their token, through the real server.
    for i in 0..5 {
        let token = if i < 3 {
            "t".repeat(32)
        } else {
            "wrong".into()
        };
        let r = http
            .post(app.url("/hooks/signup"))
            .bearer_auth(token)
            .json(&json!({"n": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), if i < 3 { 202 } else { 401 });
    }
    // Server errors are rare to provoke on purpose; counted as the server counts them.
    let tally = &app.engine.webhook_responses;
    let other: Arc<str> = "billing".into();
    for (status, n, at) in [
        (503, 12, t0),
        (500, 4, t0 + MIN),
        (502, 30, t0 - 20 * MIN), // before the window
    ] {
        for _ in 0..n {
            tally.add(&other, status, at);
        }
    }
    tally.add(&"signup".into(), 500, t0);
    assert!(tally.flush(&**store).await.unwrap() > 0);
    // A second flush adds to the stored counts, as another process's would.
    tally.add(&other, 503, t0 + MIN);
    tally.flush(&**store).await.unwrap();
    assert_eq!(
        tally.flush(&**store).await.unwrap(),
        0,
        "nothing left to write"
    );

    let errors = alert(
        "kind: alert\nid: webhook-errors\nevery: 1m\nsource:\n  metric: { name: webhook_responses, window: 15m, status: [5xx], group_by: true }\ncondition: \"> 10\"\n",
    );
    let refused = alert(
        "kind: alert\nid: refused\nevery: 1m\nsource:\n  metric: { name: webhook_responses, workflow: signup, status: [401, 403] }\ncondition: \">= 2\"\n",
    );
    let all = alert(
        "kind: alert\nid: all\nevery: 1m\nsource:\n  metric: { name: webhook_responses, workflow: signup }\ncondition: \"> 100\"\n",
    );
    let now = t0 + 2 * MIN;
    for a in [&errors, &refused, &all] {
        tick(store, a, now).await;
    }
    assert_eq!(
        instances(store, "webhook-errors").await,
        [(
            r#"{"workflow":"billing"}"#.to_owned(),
            "firing".to_owned(),
            Some(17.0)
        )],
        "billing's 17 server errors in the window fire; signup's one does not"
    );
    let r = instances(store, "refused").await;
    assert_eq!((r[0].1.as_str(), r[0].2), ("firing", Some(2.0)), "{r:?}");
    // Not firing, so not stored: counted through the metric directly.
    let q = herald::store::alerting::MetricQuery {
        name: metric(&all).name,
        now,
        since: now - 15 * MIN,
        stuck_before: now,
        channel: None,
        workflow: Some("signup".into()),
        grouped: false,
        statuses: vec![],
    };
    assert_eq!(store.alert_metric(&q).await.unwrap(), [(None, 6.0)]);

    // Twenty minutes on, the window is past them: 0, which resolves.
    tick(store, &errors, t0 + 22 * MIN).await;
    assert_eq!(
        instances(store, "webhook-errors").await,
        [(
            r#"{"workflow":"billing"}"#.to_owned(),
            "resolved".to_owned(),
            Some(0.0)
        )]
    );
}

fn run(id: &str, workflow: &str) -> NewRun {
    NewRun {
        id: id.into(),
        workflow_id: workflow.into(),
        version: "v1".into(),
        trigger_kind: TriggerKind::Manual,
        idempotency_key: None,
        parent_run_id: None,
        cursor: json!({}),
        context: json!({}),
        labels: json!({}),
        created_at: T0 - 60 * MIN,
        queued: None,
    }
}

fn line(seq: i64, action: &str, status: StepStatus, took_ms: i64, at: i64) -> StepLogEntry {
    StepLogEntry {
        seq,
        step_id: format!("s{seq}"),
        action: action.into(),
        status,
        attempt: 1,
        started_at: at - took_ms,
        finished_at: at,
        output: None,
        error: None,
        iteration: None,
    }
}

async fn commit_steps(store: &DynStore, run: NewRun, steps: Vec<StepLogEntry>) {
    store
        .commit(Commit {
            run: RunWrite::Insert {
                run: Box::new(run),
                owner: None,
            },
            state: RunState {
                status: RunStatus::Completed,
                version: "v1".into(),
                cursor: json!({}),
                context: json!({}),
                due_at: None,
                wait_event: None,
                wait_key: None,
                attempts: 0,
                contact_id: None,
                response: None,
                error: None,
                finished_at: Some(T0),
            },
            now: T0,
            steps,
            outbox: vec![],
            events: vec![],
            new_runs: vec![],
            contacts: vec![],
            wake_runs: vec![],
        })
        .await
        .unwrap();
}

async fn step_latency_is_a_quantile_of_step_durations_per_workflow(db: db::TestDb) {
    let store = &db.store;
    // `letters`: twenty http steps taking 1 s to 20 s, and a wait of an hour that is not
    // latency. `chat`: steps of 100 ms.
    let mut steps: Vec<StepLogEntry> = (1..=20)
        .map(|i| line(i, "http", StepStatus::Completed, i * 1000, T0 - MIN))
        .collect();
    steps.push(line(21, "wait", StepStatus::Waiting, 0, T0 - 70 * MIN));
    steps.push(line(22, "wait", StepStatus::Completed, 3_600_000, T0 - MIN));
    commit_steps(store, run("r-letters", "letters"), steps).await;
    let chat = (1..=5)
        .map(|i| line(i, "ai_reply", StepStatus::Completed, 100, T0 - 2 * MIN))
        .collect();
    commit_steps(store, run("r-chat", "chat"), chat).await;
    // A slow step long before the window.
    let old = vec![line(1, "http", StepStatus::Failed, 90_000, T0 - 90 * MIN)];
    commit_steps(store, run("r-old", "chat"), old).await;

    let p95 = alert(
        "kind: alert\nid: latency\nevery: 1m\nsource:\n  metric: { name: step_latency, window: 15m, group_by: true }\ncondition: \"> 5\"\n",
    );
    let median = alert(
        "kind: alert\nid: median\nevery: 1m\nsource:\n  metric: { name: step_latency, workflow: letters, quantile: 0.5 }\ncondition: \"> 5\"\n",
    );
    tick(store, &p95, T0).await;
    tick(store, &median, T0).await;
    assert_eq!(
        instances(store, "latency").await,
        [(
            r#"{"workflow":"letters"}"#.to_owned(),
            "firing".to_owned(),
            Some(19.0)
        )],
        "the 19th of twenty durations is letters' p95; chat's 0.1 s does not fire"
    );
    let m = instances(store, "median").await;
    assert_eq!((m[0].1.as_str(), m[0].2), ("firing", Some(10.0)), "{m:?}");

    // Later, with no step in the window: no data, which resolves.
    tick(store, &p95, T0 + 30 * MIN).await;
    assert_eq!(
        instances(store, "latency").await,
        [(
            r#"{"workflow":"letters"}"#.to_owned(),
            "resolved".to_owned(),
            None
        )]
    );
}
