//! `kind: alert`: validation with positions, the events aggregates, and the state machine's
//! edge cases (flapping with and without hysteresis, no data, `for` interrupted, `keep_firing_for`).

#[path = "support/db.rs"]
mod db;
mod support;

use herald::alerts::tick::run_tick;
use herald::alerts::{AlertState, Event, Phase, Transition, evaluate, step};
use herald::definitions::alert::Alert;
use herald::definitions::model::alert::{AlertSource, EventsSource};
use herald::definitions::read_definition;
use herald::definitions::source::SourceFile;
use herald::store::{DynStore, NewEvent};
use serde_json::{Value, json};
use support::alerts::validate;

const MIN: i64 = 60_000;

fn alert(yaml: &str) -> Alert {
    let def = read_definition(SourceFile::new("a.yaml", yaml))
        .unwrap_or_else(|d| panic!("{}", d.iter().map(|d| d.render(false)).collect::<String>()));
    def.as_alert().expect("an alert").clone()
}

fn events_source(a: &Alert) -> &EventsSource {
    match &a.def.source {
        AlertSource::Events(e) => e,
        other => panic!("not an events source: {other:?}"),
    }
}

fn ev(name: &str, data: Value, at: i64) -> Event {
    Event {
        name: name.into(),
        key: None,
        data,
        at,
    }
}

#[test]
fn an_alert_is_validated_with_positions() {
    let text = validate(&[(
        "a.yaml",
        r#"kind: alert
id: bad
source:
  events:
    name: payment.attempted
    window: 1h
    aggregate: p95
    group_by: channel
    matching: { status: failed }
condition: "> 5%"
resolve: "< 6%"
annotations:
  summary: "{{ vlaue }}"
"#,
    )]);
    for want in [
        "a.yaml:7:16: error: `aggregate: p95` reads a field, and no `field` is given",
        "a.yaml:8:15: error: `channel` is not a field of an event",
        "did you mean `data.channel`?",
        "a.yaml:9:5: error: `matching` goes with `aggregate: ratio`, not `p95`",
        "a.yaml:9:17: error: `status` is not a field of an event",
        "a.yaml:11:10: error: `resolve: \"< 0.06\"` does not resolve on the other side",
        "a.yaml:13:12: error: unknown variable `vlaue`",
        "did you mean `value`?",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn a_bad_threshold_an_unknown_field_and_an_unknown_metric_are_reported() {
    let text = validate(&[
        (
            "t.yaml",
            "kind: alert\nid: t\nsource:\n  events: { name: x, window: 1h, aggregate: count }\ncondition: \"over 5\"\n",
        ),
        (
            "u.yaml",
            "kind: alert\nid: u\nsource:\n  events: { name: x, window: 1h, aggregate: count }\ncondition: \"> 5\"\nfro: 5m\n",
        ),
        (
            "m.yaml",
            "kind: alert\nid: m\nsource:\n  metric: { name: delivery_ratio }\ncondition: \"< 0.95\"\n",
        ),
    ]);
    for want in [
        "t.yaml:5:12: error: `over 5` is not a threshold",
        "u.yaml:6:1: error: unknown field `fro`",
        "did you mean `for`?",
        "m.yaml:4:19: error: `delivery_ratio` is not a valid value for `name`",
        "did you mean `delivery_rate`?",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn the_shipped_alerts_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut alerts = 0;
    for entry in std::fs::read_dir(root.join("workflows")).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        if text.contains("\nkind: alert\n") {
            alert(&text);
            alerts += 1;
        }
    }
    assert!(alerts >= 6, "{alerts} alerts in workflows/");
}

const RATIO: &str = r#"kind: alert
id: payment-failures
source:
  events:
    name: payment.attempted
    window: 1h
    aggregate: ratio
    matching: { data.status: failed }
    where: { data.live: true }
    min_events: 4
condition: "> 5%"
"#;

#[test]
fn a_ratio_counts_matching_events_over_the_window_and_needs_min_events() {
    let a = alert(RATIO);
    let src = events_source(&a);
    let now = 120 * MIN;
    let mut evs = vec![
        ev(
            "payment.attempted",
            json!({"status": "failed", "live": true}),
            now - 10 * MIN,
        ),
        ev(
            "payment.attempted",
            json!({"status": "ok", "live": true}),
            now - 20 * MIN,
        ),
        ev(
            "payment.attempted",
            json!({"status": "ok", "live": true}),
            now - 30 * MIN,
        ),
    ];
    // Three events: under min_events, so no data, not 33 %.
    assert_eq!(evaluate(src, &evs, now)[0].value, None);
    evs.push(ev(
        "payment.attempted",
        json!({"status": "ok", "live": true}),
        now - 40 * MIN,
    ));
    assert_eq!(evaluate(src, &evs, now)[0].value, Some(0.25));
    // Outside the window, another name, or not `where`: not counted.
    evs.push(ev(
        "payment.attempted",
        json!({"status": "failed", "live": true}),
        now - 61 * MIN,
    ));
    evs.push(ev(
        "payment.refunded",
        json!({"status": "failed", "live": true}),
        now - MIN,
    ));
    evs.push(ev(
        "payment.attempted",
        json!({"status": "failed", "live": false}),
        now - MIN,
    ));
    // A string is not a boolean: `"true"` does not match `true`.
    evs.push(ev(
        "payment.attempted",
        json!({"status": "failed", "live": "true"}),
        now - MIN,
    ));
    let groups = evaluate(src, &evs, now);
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].value, Some(0.25));
    assert_eq!(groups[0].events, 4);
}

#[test]
fn percentiles_averages_rates_and_distinct_values_by_group() {
    let p95 = alert(
        "kind: alert\nid: p\nsource:\n  events: { name: req, window: 10m, aggregate: p95, field: data.ms, group_by: data.route }\ncondition: \"> 5000\"\n",
    );
    let now = 60 * MIN;
    let mut evs: Vec<Event> = (1..=20)
        .map(|i| {
            ev(
                "req",
                json!({"ms": i * 100, "route": "/a"}),
                now - i64::from(i) * 1000,
            )
        })
        .collect();
    evs.push(ev("req", json!({"ms": 9000, "route": "/b"}), now - 1000));
    evs.push(ev("req", json!({"ms": "slow", "route": "/b"}), now - 1000));
    evs.push(ev("req", json!({"ms": 1}), now - 1000));
    let groups = evaluate(events_source(&p95), &evs, now);
    let labels: Vec<_> = groups.iter().map(|g| g.labels["route"].as_str()).collect();
    assert_eq!(labels, ["/a", "/b"]);
    // Nearest rank: the 19th of 20 values.
    assert_eq!(groups[0].value, Some(1900.0));
    // A value that is not a number is not read as one.
    assert_eq!(groups[1].value, Some(9000.0));

    let avg = alert(
        "kind: alert\nid: v\nsource:\n  events: { name: req, window: 10m, aggregate: avg, field: data.ms }\ncondition: \"> 3000\"\n",
    );
    let two = [
        ev("req", json!({"ms": 1000}), now - 1000),
        ev("req", json!({"ms": 4000}), now - 2000),
    ];
    assert_eq!(
        evaluate(events_source(&avg), &two, now)[0].value,
        Some(2500.0)
    );

    let rate = alert(
        "kind: alert\nid: r\nsource:\n  events: { name: req, window: 10s, aggregate: rate }\ncondition: \"> 1\"\n",
    );
    assert_eq!(
        evaluate(events_source(&rate), &two, now)[0].value,
        Some(0.2)
    );

    let distinct = alert(
        "kind: alert\nid: d\nsource:\n  events: { name: login, window: 15m, aggregate: distinct, field: data.ip }\ncondition: \"> 3\"\n",
    );
    let logins = [
        ev("login", json!({"ip": "10.0.0.1"}), now - 1000),
        ev("login", json!({"ip": "10.0.0.1"}), now - 2000),
        ev("login", json!({"ip": "10.0.0.2"}), now - 3000),
    ];
    assert_eq!(
        evaluate(events_source(&distinct), &logins, now)[0].value,
        Some(2.0)
    );
}

/// Runs an alert over one value per minute, returning the phase after each and the
/// transitions with their minute.
fn run(a: &Alert, values: &[Option<f64>]) -> (Vec<Phase>, Vec<(usize, Transition)>) {
    let mut state = AlertState::new(0);
    let mut phases = Vec::new();
    let mut transitions = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let (next, t) = step(a, &state, *v, i as i64 * MIN);
        if let Some(t) = t {
            transitions.push((i, t));
        }
        phases.push(next.phase);
        state = next;
    }
    (phases, transitions)
}

fn threshold_alert(extra: &str) -> Alert {
    alert(&format!(
        "kind: alert\nid: a\nsource:\n  events: {{ name: x, window: 5m, aggregate: count }}\ncondition: \"> 10\"\n{extra}"
    ))
}

#[test]
fn flapping_without_hysteresis_fires_at_every_crossing_and_with_it_once() {
    let flapping: Vec<Option<f64>> = [11.0, 9.0, 12.0, 10.0, 11.0, 2.0]
        .into_iter()
        .map(Some)
        .collect();
    let (_, plain) = run(&threshold_alert(""), &flapping);
    assert_eq!(
        plain,
        [
            (0, Transition::Fired),
            (1, Transition::Resolved),
            (2, Transition::Fired),
            (3, Transition::Resolved),
            (4, Transition::Fired),
            (5, Transition::Resolved),
        ]
    );
    let (phases, hysteresis) = run(&threshold_alert("resolve: \"< 5\"\n"), &flapping);
    assert_eq!(
        hysteresis,
        [(0, Transition::Fired), (5, Transition::Resolved)]
    );
    assert_eq!(phases[3], Phase::Firing);
    assert_eq!(phases[5], Phase::Resolved);

    // keep_firing_for: it stays firing until the condition has not held for 3 minutes.
    let (_, kept) = run(&threshold_alert("keep_firing_for: 3m\n"), &flapping);
    assert_eq!(kept, [(0, Transition::Fired)]);
    let quiet = [Some(11.0), Some(1.0), Some(1.0), Some(1.0)];
    let (phases, kept) = run(&threshold_alert("keep_firing_for: 3m\n"), &quiet);
    assert_eq!(
        phases,
        [Phase::Firing, Phase::Firing, Phase::Firing, Phase::Resolved]
    );
    assert_eq!(kept, [(0, Transition::Fired), (3, Transition::Resolved)]);
}

#[test]
fn for_is_interrupted_by_one_good_sample() {
    let a = threshold_alert("for: 3m\n");
    let v = |x: f64| Some(x);
    let (phases, transitions) = run(
        &a,
        &[
            v(11.0),
            v(12.0),
            v(13.0),
            v(1.0),
            v(11.0),
            v(11.0),
            v(11.0),
            v(11.0),
        ],
    );
    assert_eq!(
        phases,
        [
            Phase::Pending,
            Phase::Pending,
            Phase::Pending,
            Phase::Inactive,
            Phase::Pending,
            Phase::Pending,
            Phase::Pending,
            Phase::Firing,
        ]
    );
    // Three minutes after minute 4, not minute 0.
    assert_eq!(transitions, [(7, Transition::Fired)]);
}

#[test]
fn no_data_is_ok_alerting_or_keeps_the_state() {
    let samples = [Some(11.0), None, None, Some(1.0)];
    let (phases, t) = run(&threshold_alert("no_data: ok\n"), &samples);
    assert_eq!(phases[1], Phase::Resolved);
    assert_eq!(t, [(0, Transition::Fired), (1, Transition::Resolved)]);

    let (phases, t) = run(&threshold_alert("no_data: keep_state\n"), &samples);
    assert_eq!(phases[..3], [Phase::Firing; 3]);
    assert_eq!(t, [(0, Transition::Fired), (3, Transition::Resolved)]);

    let (phases, t) = run(
        &threshold_alert("no_data: alerting\nfor: 1m\n"),
        &[None, None, Some(1.0)],
    );
    assert_eq!(phases, [Phase::Pending, Phase::Firing, Phase::Resolved]);
    assert_eq!(t, [(1, Transition::Fired), (2, Transition::Resolved)]);
}

#[test]
fn labels_and_annotations_render_with_the_value_and_the_group() {
    let a = alert(
        r#"kind: alert
id: delivery-rate
source:
  events: { name: [message.delivered, message.failed], window: 1h, aggregate: ratio, matching: { name: message.delivered }, group_by: data.channel }
condition: "< 95%"
severity: critical
labels: { team: "{{ labels.channel }}-oncall" }
annotations:
  summary: "{{ (value * 100) | round(1) }} % of {{ labels.channel }} messages delivered ({{ labels.team }})"
"#,
    );
    let now = 90 * MIN;
    let mut evs: Vec<Event> = (0..9)
        .map(|i| {
            ev(
                "message.delivered",
                json!({"channel": "sms"}),
                now - i * MIN,
            )
        })
        .collect();
    evs.push(ev("message.failed", json!({"channel": "sms"}), now - MIN));
    let groups = evaluate(events_source(&a), &evs, now);
    assert_eq!(groups.len(), 1);
    let templates = herald::templates::Templates::empty(100_000);
    let r =
        herald::alerts::render::render(&a, &groups[0].labels, groups[0].value, &templates).unwrap();
    assert_eq!(r.labels["alertname"], "delivery-rate");
    assert_eq!(r.labels["severity"], "critical");
    assert_eq!(r.labels["channel"], "sms");
    assert_eq!(r.labels["team"], "sms-oncall");
    assert_eq!(
        r.annotations["summary"],
        "90.0 % of sms messages delivered (sms-oncall)"
    );
    assert_eq!(
        herald::alerts::render::alerts_series(&r.labels, "firing"),
        r#"ALERTS{alertname="delivery-rate",alertstate="firing",channel="sms",severity="critical",team="sms-oncall"} 1"#
    );

    // A text that fails at run time is an error naming it, not an empty string.
    let broken = alert(
        "kind: alert\nid: b\nsource:\n  events: { name: x, window: 1h, aggregate: count }\ncondition: \"> 1\"\nannotations:\n  summary: \"{{ labels.nope }}\"\n",
    );
    let err = herald::alerts::render::render(&broken, &Default::default(), Some(2.0), &templates)
        .unwrap_err();
    assert!(err.contains("annotation `summary` of alert `b`"), "{err}");
    assert!(err.contains("nope"), "{err}");
}

db::scenarios!["alerts";
    a_pending_and_a_firing_alert_survive_restarts_and_notify_once,
    a_tick_is_recorded_by_exactly_one_of_two_stores,
    the_admin_api_lists_alerts_and_their_instances,
    the_server_evaluates_alerts_at_their_ticks,
    an_event_of_the_wrong_type_is_rejected,
    alerts_over_one_name_share_a_read_and_each_keep_its_window,
];

const STORED: &str = r#"kind: alert
id: admin-logins
every: 1m
source:
  events: { name: admin.login, window: 10m, aggregate: count, group_by: data.tenant }
condition: "> 2"
for: 2m
"#;

async fn login(store: &DynStore, n: usize, tenant: &str, at: i64) {
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent {
            id: format!("{tenant}-{at}-{i}"),
            name: "admin.login".into(),
            key: None,
            data: json!({ "tenant": tenant }),
            source_run_id: None,
            created_at: at,
        })
        .collect();
    store.insert_events(&events, &[], &[], &[]).await.unwrap();
}

async fn phases(store: &DynStore) -> Vec<(String, String)> {
    store
        .alert_instances("admin-logins")
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.group_key, i.phase))
        .collect()
}

async fn a_pending_and_a_firing_alert_survive_restarts_and_notify_once(db: db::TestDb) {
    let a = alert(STORED);
    let t0 = 1_000 * MIN;
    login(&db.store, 3, "acme", t0 - 1000).await;
    login(&db.store, 1, "globex", t0 - 1000).await;
    let tick = run_tick(&*db.store, &a, t0 + 5).await.unwrap().unwrap();
    assert_eq!((tick.at, tick.recorded), (t0, true));
    assert!(tick.changes.is_empty());
    // Only the group over the threshold has a row; globex stays inactive.
    assert_eq!(
        phases(&db.store).await,
        [(r#"{"tenant":"acme"}"#.to_owned(), "pending".to_owned())]
    );

    // A restart while pending: the new process carries on from when it started pending.
    let second = db.open_again().await;
    let tick = run_tick(&*second, &a, t0 + MIN).await.unwrap().unwrap();
    assert!(tick.changes.is_empty());
    let tick = run_tick(&*second, &a, t0 + 2 * MIN).await.unwrap().unwrap();
    assert_eq!(tick.changes.len(), 1);
    assert_eq!(tick.changes[0].transition, Transition::Fired);
    assert_eq!(tick.changes[0].labels["tenant"], "acme");
    assert_eq!(tick.changes[0].value, Some(3.0));

    // A restart while firing: it is still firing, and fires no second time.
    let third = db.open_again().await;
    assert_eq!(phases(&third).await[0].1, "firing");
    let tick = run_tick(&*third, &a, t0 + 3 * MIN).await.unwrap().unwrap();
    assert!(tick.recorded && tick.changes.is_empty(), "{tick:?}");
    // The same tick tried again (a replay after a crash) records and notifies nothing.
    let again = run_tick(&*db.store, &a, t0 + 3 * MIN + 10)
        .await
        .unwrap()
        .unwrap();
    assert!(!again.recorded && again.changes.is_empty(), "{again:?}");

    // The logins leave the window: no data is `ok`, so it resolves, once.
    let tick = run_tick(&*third, &a, t0 + 10 * MIN).await.unwrap().unwrap();
    assert_eq!(tick.changes.len(), 1);
    assert_eq!(tick.changes[0].transition, Transition::Resolved);
    assert_eq!(tick.changes[0].value, None);
    let tick = run_tick(&*third, &a, t0 + 11 * MIN).await.unwrap().unwrap();
    assert!(tick.changes.is_empty());
    assert_eq!(phases(&third).await[0].1, "inactive");
}

async fn a_tick_is_recorded_by_exactly_one_of_two_stores(db: db::TestDb) {
    let a = alert(&STORED.replace("for: 2m\n", ""));
    let t0 = 2_000 * MIN;
    login(&db.store, 5, "acme", t0 - 1000).await;
    let other = db.open_again().await;
    for round in 0..5 {
        let now = t0 + round * MIN;
        let (x, y) = tokio::join!(run_tick(&*db.store, &a, now), run_tick(&*other, &a, now));
        let (x, y) = (x.unwrap().unwrap(), y.unwrap().unwrap());
        assert!(x.recorded != y.recorded, "round {round}: {x:?} {y:?}");
        let fired: usize = [&x, &y].iter().map(|t| t.changes.len()).sum();
        assert_eq!(fired, usize::from(round == 0), "round {round}");
    }
}

async fn the_admin_api_lists_alerts_and_their_instances(db: db::TestDb) {
    use herald::definitions::env::EnvSource;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        "admin:\n  api_keys: [\"${env:ADMIN_KEY}\"]\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(dir.path().join("workflows/logins.yaml"), STORED).unwrap();
    let env = EnvSource::Map(std::sync::Arc::new(
        [("ADMIN_KEY".to_owned(), "k".repeat(32))].into(),
    ));
    let clock = herald::engine::clock::VirtualClock::at("2026-11-02T15:00:00Z");
    let app = support::app::App::start(dir.path(), &env, db.store.clone(), &clock).await;
    let t0 = herald::engine::clock::Clock::now(&clock);
    login(&db.store, 3, "acme", t0 - 1000).await;
    let a = alert(STORED);
    run_tick(&*db.store, &a, t0).await.unwrap().unwrap();

    let http = reqwest::Client::new();
    let unauthorised = http.get(app.url("/api/alerts")).send().await.unwrap();
    assert_eq!(unauthorised.status(), 401);
    let body: Value = http
        .get(app.url("/api/alerts"))
        .header("x-api-key", "k".repeat(32))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let alerts = body["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{body}");
    assert_eq!(alerts[0]["alertname"], "admin-logins");
    assert_eq!(alerts[0]["condition"], "> 2");
    assert_eq!(alerts[0]["severity"], "warning");
    let instance = &alerts[0]["instances"][0];
    assert_eq!(instance["labels"], json!({ "tenant": "acme" }), "{body}");
    assert_eq!(instance["state"], "pending");
    assert_eq!(instance["value"], 3.0);
    assert_eq!(instance["active_since"], "2026-11-02T15:00:00Z");

    let metrics = http
        .get(app.url("/metrics"))
        .header("x-api-key", "k".repeat(32))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"ALERTS{alertname="admin-logins",alertstate="pending",severity="warning",tenant="acme"} 1"#
        ),
        "{metrics}"
    );
}

async fn the_server_evaluates_alerts_at_their_ticks(db: db::TestDb) {
    use herald::definitions::env::EnvSource;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(
        dir.path().join("workflows/logins.yaml"),
        STORED.replace("for: 2m\n", ""),
    )
    .unwrap();
    let env = EnvSource::Map(std::sync::Arc::new(Default::default()));
    let clock = herald::engine::clock::VirtualClock::at("2026-11-02T15:00:00Z");
    let app = support::app::App::start(dir.path(), &env, db.store.clone(), &clock).await;
    let t0 = herald::engine::clock::Clock::now(&clock);
    login(&db.store, 3, "acme", t0 - 1000).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(herald::server::alerts::evaluate(
        app.engine.clone(),
        shutdown.clone(),
    ));
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen = phases(&db.store).await;
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen,
        [(r#"{"tenant":"acme"}"#.to_owned(), "firing".to_owned())]
    );
    shutdown.cancel();
    task.await.unwrap();
}

/// A round reads each event name once per tick time, over the longest window: each alert
/// must still see only its own window, its own names and its own tick.
async fn alerts_over_one_name_share_a_read_and_each_keep_its_window(db: db::TestDb) {
    use herald::definitions::env::EnvSource;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    let rule = |id: &str, every: &str, source: &str| {
        format!(
            "kind: alert\nid: {id}\nevery: {every}\nsource:\n  events: {source}\ncondition: \"> 0\"\n"
        )
    };
    for (id, every, source) in [
        (
            "five",
            "1m",
            "{ name: admin.login, window: 5m, aggregate: count }",
        ),
        (
            "hour",
            "1m",
            "{ name: admin.login, window: 1h, aggregate: count, group_by: data.tenant }",
        ),
        (
            "acme",
            "1m",
            "{ name: admin.login, window: 1h, aggregate: count, where: { data.tenant: acme } }",
        ),
        // Another tick time (every 7m is not aligned with t0), and two names: read alone.
        (
            "seven",
            "7m",
            "{ name: admin.login, window: 1h, aggregate: count }",
        ),
        (
            "both",
            "1m",
            "{ name: [admin.login, admin.logout], window: 5m, aggregate: count }",
        ),
    ] {
        std::fs::write(
            dir.path().join(format!("workflows/{id}.yaml")),
            rule(id, every, source),
        )
        .unwrap();
    }
    let env = EnvSource::Map(std::sync::Arc::new(Default::default()));
    let clock = herald::engine::clock::VirtualClock::at("2026-11-02T15:00:00Z");
    let app = support::app::App::start(dir.path(), &env, db.store.clone(), &clock).await;
    let t0 = herald::engine::clock::Clock::now(&clock);
    login(&db.store, 2, "acme", t0 - 1000).await;
    login(&db.store, 3, "globex", t0 - 30 * MIN).await;
    login(&db.store, 4, "acme", t0 - 2 * 60 * MIN).await;
    let logout = NewEvent {
        id: "out".into(),
        name: "admin.logout".into(),
        key: None,
        data: json!({}),
        source_run_id: None,
        created_at: t0 - 2000,
    };
    db.store
        .insert_events(&[logout], &[], &[], &[])
        .await
        .unwrap();

    let registry = app.engine.registry();
    let mut tried = std::collections::HashMap::new();
    let round = herald::alerts::round::evaluate_due(&app.engine, &registry, &mut tried, t0).await;
    assert_eq!((round.evaluated, round.failed, round.changed), (5, 0, true));
    let value = |id: &'static str| {
        let store = db.store.clone();
        async move {
            store
                .alert_instances(id)
                .await
                .unwrap()
                .into_iter()
                .map(|i| {
                    let v = serde_json::from_str::<AlertState>(&i.state).unwrap().value;
                    (i.group_key, v.unwrap_or(-1.0))
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(value("five").await, [("{}".to_owned(), 2.0)]);
    assert_eq!(
        value("hour").await,
        [
            (r#"{"tenant":"acme"}"#.to_owned(), 2.0),
            (r#"{"tenant":"globex"}"#.to_owned(), 3.0)
        ]
    );
    assert_eq!(value("acme").await, [("{}".to_owned(), 2.0)]);
    assert_eq!(value("both").await, [("{}".to_owned(), 3.0)]);
    // Its tick is the last multiple of 7 minutes: 14:57, before the newest logins.
    let seven_at = t0 - t0.rem_euclid(7 * MIN);
    assert!(seven_at < t0 - 1000);
    assert_eq!(value("seven").await, [("{}".to_owned(), 3.0)]);
    // Tried ticks are not evaluated again.
    let again = herald::alerts::round::evaluate_due(&app.engine, &registry, &mut tried, t0).await;
    assert_eq!(again.evaluated, 0);
}

async fn an_event_of_the_wrong_type_is_rejected(db: db::TestDb) {
    use herald::definitions::env::EnvSource;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        "admin:\n  api_keys: [\"${env:ADMIN_KEY}\"]\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(
        dir.path().join("workflows/slow.yaml"),
        "kind: alert\nid: slow\nsource:\n  events: { name: req, window: 10m, aggregate: p95, field: data.ms }\ncondition: \"> 5000\"\n",
    )
    .unwrap();
    let env = EnvSource::Map(std::sync::Arc::new(
        [("ADMIN_KEY".to_owned(), "k".repeat(32))].into(),
    ));
    let clock = herald::engine::clock::VirtualClock::at("2026-11-02T15:00:00Z");
    let app = support::app::App::start(dir.path(), &env, db.store.clone(), &clock).await;
    let http = reqwest::Client::new();
    let post = |body: &'static str| {
        http.post(app.url("/api/events"))
            .header("x-api-key", "k".repeat(32))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = post(r#"{"name": "req", "data": {"ms": "slow"}}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("`data.ms` is \\\"slow\\\", not a number"),
        "{text}"
    );
    assert!(text.contains("alert `slow`"), "{text}");
    let r = post(r#"{"name": "req", "data": [1, 2]}"#).await.unwrap();
    assert_eq!(r.status(), 422);
    let r = post(r#"{"name": "req", "data": {"ms": 1"#).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = post(r#"{"name": 5}"#).await.unwrap();
    assert_eq!(r.status(), 400);
    // Nothing of those was stored; a good event is.
    assert!(
        db.store
            .alert_events("req", 0, i64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    let r = post(r#"{"name": "req", "data": {"ms": 120}}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let stored = || async {
        db.store
            .alert_events("req", 0, i64::MAX)
            .await
            .unwrap()
            .len()
    };
    assert_eq!(stored().await, 1);

    // A batch goes in whole, or not at all, with the bad event named by its place.
    let r = post(
        r#"{"events": [{"name": "req", "data": {"ms": 1}}, {"name": "req", "data": {"ms": "x"}}]}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(text.contains("events[1]: "), "{text}");
    assert_eq!(stored().await, 1, "nothing of a refused batch is stored");
    let r = post(r#"{"events": []}"#).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = post(r#"{"events": [{"name": "req", "key": "a", "data": {"ms": 1}}, {"name": "req", "data": {"ms": 2}}, {"name": "other"}]}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let ids: serde_json::Value = r.json().await.unwrap();
    assert_eq!(ids["event_ids"].as_array().unwrap().len(), 3);
    assert_eq!(stored().await, 3);
    let too_many = format!(
        r#"{{"events": [{}]}}"#,
        vec![r#"{"name": "req", "data": {"ms": 1}}"#; 1001].join(",")
    );
    let r = http
        .post(app.url("/api/events"))
        .header("x-api-key", "k".repeat(32))
        .header("content-type", "application/json")
        .body(too_many)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("1 to 1000 events"));
    assert_eq!(stored().await, 3);
}
