//! Alert notifications: routes by label, grouping, repeats, the resolved notice, inhibition
//! and silences, delivered through the outbox to a real SMTP server on loopback, and written
//! exactly once when two processes decide the same round. Also `alerting:` validation and
//! `/api/silences`.

#[path = "support/db.rs"]
mod db;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use herald::alerts::notify::{FiringAlert, decide, inhibited, round};
use herald::alerts::tick::run_tick;
use herald::definitions::env::EnvSource;
use herald::definitions::model::alerting::{AlertRoute, InhibitRule};
use herald::definitions::project::{EnvMode, Layout, LoadOptions, load};
use herald::engine::clock::{Clock, VirtualClock};
use herald::store::{DynStore, NewEvent};
use serde_json::{Value, json};
use support::SmtpSink;
use support::alerts::queued;

const MIN: i64 = 60_000;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn firing(name: &str, severity: &str, tenant: &str) -> FiringAlert {
    FiringAlert {
        fingerprint: format!("{name}/{tenant}"),
        labels: labels(&[
            ("alertname", name),
            ("severity", severity),
            ("tenant", tenant),
        ]),
        annotations: BTreeMap::new(),
        value: Some(3.0),
        starts_at: 0,
    }
}

fn route(yaml: Value) -> AlertRoute {
    serde_json::from_value(yaml).unwrap()
}

#[test]
fn a_group_is_told_of_news_of_resolutions_and_again_after_repeat_every() {
    let r = route(json!({"channel": "email", "to": "ops@example.com", "repeat_every": "1h"}));
    let a = firing("logins", "critical", "acme");
    let b = firing("logins", "critical", "globex");
    let both: BTreeSet<String> = [a.fingerprint.clone(), b.fingerprint.clone()].into();
    // Nothing told yet: both are news.
    let d = decide(&r, &[&a, &b], &both, None, 0).unwrap();
    let notice = d.notice.unwrap();
    assert_eq!(notice.firing.len(), 2);
    assert!(notice.resolved.is_empty());
    assert_eq!(d.notified.len(), 2);
    // The same, a minute later: nothing to say.
    assert_eq!(
        decide(&r, &[&a, &b], &both, Some((&d.notified, Some(0))), MIN),
        None
    );
    // An hour later: said again.
    let again = decide(&r, &[&a, &b], &both, Some((&d.notified, Some(0))), 60 * MIN).unwrap();
    assert_eq!(again.notice.unwrap().firing.len(), 2);
    // globex stops firing: the notice names it as resolved, with the labels it had.
    let only_a: BTreeSet<String> = [a.fingerprint.clone()].into();
    let d2 = decide(&r, &[&a], &only_a, Some((&d.notified, Some(0))), 2 * MIN).unwrap();
    let n2 = d2.notice.unwrap();
    assert_eq!(n2.firing.len(), 1);
    assert_eq!(n2.resolved.len(), 1);
    assert_eq!(n2.resolved[0].labels["tenant"], "globex");
    // Without send_resolved, a resolution is remembered but not sent.
    let quiet = route(json!({"channel": "email", "to": "ops@example.com", "send_resolved": false}));
    let d3 = decide(
        &quiet,
        &[&a],
        &only_a,
        Some((&d.notified, Some(0))),
        2 * MIN,
    )
    .unwrap();
    assert_eq!(d3.notice, None);
    assert_eq!(d3.notified.keys().collect::<Vec<_>>(), [&a.fingerprint]);
}

#[test]
fn a_muted_alert_is_not_news_and_is_told_when_the_mute_ends() {
    let r = route(json!({"channel": "email", "to": "ops@example.com"}));
    let a = firing("logins", "warning", "acme");
    // Firing but muted (silenced or inhibited): nothing is sent and nothing remembered.
    assert_eq!(decide(&r, &[&a], &BTreeSet::new(), None, 0), None);
    // The mute ends while it fires: now it is news.
    let active: BTreeSet<String> = [a.fingerprint.clone()].into();
    let d = decide(&r, &[&a], &active, None, MIN).unwrap();
    assert_eq!(d.notice.unwrap().firing.len(), 1);
    // Muted again after it was told: no resolved notice (it still fires), no repeat.
    assert_eq!(
        decide(
            &r,
            &[&a],
            &BTreeSet::new(),
            Some((&d.notified, Some(MIN))),
            10 * 60 * MIN
        ),
        None
    );
}

#[test]
fn a_critical_alert_inhibits_the_warning_with_the_same_labels() {
    let rules: Vec<InhibitRule> = serde_json::from_value(json!([
        {"source": {"severity": "critical"}, "target": {"severity": "warning"}, "equal": ["tenant"]}
    ]))
    .unwrap();
    let crit = firing("latency-critical", "critical", "acme");
    let warn_acme = firing("latency-warning", "warning", "acme");
    let warn_globex = firing("latency-warning", "warning", "globex");
    let all = [crit.clone(), warn_acme.clone(), warn_globex.clone()];
    assert!(inhibited(&warn_acme, &all, &rules));
    assert!(!inhibited(&warn_globex, &all, &rules), "another tenant");
    assert!(!inhibited(&crit, &all, &rules), "the source itself");
    assert!(
        !inhibited(&warn_acme, std::slice::from_ref(&warn_acme), &rules),
        "no critical firing"
    );
}

fn validate(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("herald.yaml"), config).unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    let layout = Layout::discover(dir.path()).unwrap();
    let (_, report) = load(&layout, &LoadOptions::new(EnvMode::Validate));
    report.diagnostics.iter().map(|d| d.render(false)).collect()
}

#[test]
fn alerting_routes_are_validated_with_positions() {
    let text = validate(
        r#"channels:
  email: { provider: smtp, host: 127.0.0.1, port: 25, tls: none, from: "h@example.com" }
alerting:
  routes:
    - channel: emial
      to: ops@example.com
    - channel: email
      to: []
      repeat_every: 0s
      body: "{{ alert.labels }}"
    - channel: email
      to: ops@example.com
      subject: "{{ title "
  inhibit:
    - source: {}
      target: { severity: warning }
"#,
    );
    assert!(
        text.contains("channel `emial`, which is not defined"),
        "{text}"
    );
    assert!(text.contains("did you mean `email`?"), "{text}");
    assert!(text.contains("herald.yaml:5:16"), "{text}");
    assert!(text.contains("`to` is empty"), "{text}");
    assert!(text.contains("herald.yaml:8:11"), "{text}");
    assert!(text.contains("repeat_every: 0s"), "{text}");
    assert!(text.contains("unknown variable `alert`"), "{text}");
    assert!(text.contains("did you mean `alerts`?"), "{text}");
    assert!(text.contains("herald.yaml:13:16"), "{text}");
    assert!(
        text.contains("an inhibition with an empty `source`"),
        "{text}"
    );
    // A misspelt key is the schema's to report.
    let text = validate("alerting:\n  routes:\n    - chanel: log\n      to: x\n");
    assert!(text.contains("herald.yaml:3:7"), "{text}");
}

#[test]
fn a_probe_is_validated_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(
        dir.path().join("workflows/api.yaml"),
        "kind: alert\nid: api\nsource:\n  probe:\n    url: ftp://example.com/health\n    timeout: 2s\n    max_latency: 5s\n    status: [999]\ncondition: \"< 1\"\n",
    )
    .unwrap();
    let layout = Layout::discover(dir.path()).unwrap();
    let (_, report) = load(&layout, &LoadOptions::new(EnvMode::Validate));
    let text: String = report.diagnostics.iter().map(|d| d.render(false)).collect();
    assert!(
        text.contains("api.yaml:5:10") && text.contains("a probe checks http or https, not `ftp`"),
        "{text}"
    );
    assert!(
        text.contains("api.yaml:7:18") && text.contains("the check gives up first"),
        "{text}"
    );
    assert!(
        text.contains("api.yaml:8:14") && text.contains("999 is not an HTTP status"),
        "{text}"
    );
}

db::scenarios!["alert_notify";
    notices_are_routed_grouped_inhibited_silenced_and_sent_once,
    two_processes_write_one_notice,
    an_alert_removed_while_firing_is_notified_as_resolved,
    silences_are_added_listed_and_expired_over_the_api,
    the_server_evaluates_notifies_and_delivers,
    a_probe_checks_a_real_server_and_health_shows_the_service,
    metrics_read_the_outbox_and_the_runs,
];

const CRITICAL: &str = r#"kind: alert
id: admin-logins
every: 1m
severity: critical
source:
  events: { name: admin.login, window: 10m, aggregate: count, group_by: data.tenant }
condition: "> 2"
annotations:
  summary: "{{ value }} admin logins for {{ labels.tenant }}"
"#;

const WARNING: &str = r#"kind: alert
id: admin-logins-warning
every: 1m
severity: warning
source:
  events: { name: admin.login, window: 10m, aggregate: count, group_by: data.tenant }
condition: "> 1"
"#;

fn config(port: u16) -> String {
    format!(
        r#"admin:
  api_keys: ["${{env:ADMIN_KEY}}"]
channels:
  email: {{ provider: smtp, host: 127.0.0.1, port: {port}, tls: none, from: "Herald <h@example.com>", timeout: 5s }}
alerting:
  routes:
    - name: oncall
      match: {{ severity: critical }}
      channel: email
      to: oncall@example.com
      repeat_every: 1h
      body: "{{% for a in firing %}}{{{{ a.annotations.summary }}}}\n{{% endfor %}}{{% for a in resolved %}}resolved {{{{ a.labels.tenant }}}}\n{{% endfor %}}"
    - name: ops
      channel: email
      to: ["${{env:OPS_EMAIL}}"]
      send_resolved: false
  inhibit:
    - source: {{ severity: critical }}
      target: {{ severity: warning }}
      equal: [tenant]
"#
    )
}

fn env() -> EnvSource {
    EnvSource::Map(Arc::new(
        [
            ("ADMIN_KEY".to_owned(), "k".repeat(32)),
            ("OPS_EMAIL".to_owned(), "ops@example.com".to_owned()),
        ]
        .into(),
    ))
}

struct Setup {
    _dir: tempfile::TempDir,
    sink: SmtpSink,
    clock: VirtualClock,
    app: support::app::App,
}

async fn setup(db: &db::TestDb, files: &[(&str, &str)]) -> Setup {
    let sink = SmtpSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("herald.yaml"), config(sink.port())).unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("workflows").join(name), text).unwrap();
    }
    let clock = VirtualClock::at("2026-11-02T15:00:00Z");
    let app = support::app::App::start(dir.path(), &env(), db.store.clone(), &clock).await;
    Setup {
        _dir: dir,
        sink,
        clock,
        app,
    }
}

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

impl Setup {
    async fn tick(&self, store: &DynStore) {
        let registry = self.app.engine.registry();
        for wf in registry.workflows.values() {
            if let Some(a) = &wf.alert {
                match &a.def.source {
                    // Events read from the store given (a second process's, in one test).
                    herald::definitions::model::alert::AlertSource::Events(_) => {
                        run_tick(&**store, a, self.clock.now()).await.unwrap();
                    }
                    _ => {
                        herald::alerts::tick::evaluate(&self.app.engine, a, self.clock.now())
                            .await
                            .unwrap();
                    }
                }
            }
        }
    }

    async fn notify(&self, store: &DynStore) -> usize {
        let registry = self.app.engine.registry();
        let sent = round(&**store, &registry, &env(), self.clock.now())
            .await
            .unwrap();
        sent.iter().map(|s| s.messages).sum()
    }

    /// Delivers what is queued and returns the mail received since `from`.
    async fn delivered(&self, from: usize) -> Vec<support::smtp_sink::ReceivedMail> {
        self.app.engine.deliver_due().await.unwrap();
        self.sink.messages().into_iter().skip(from).collect()
    }
}

fn to(m: &support::smtp_sink::ReceivedMail) -> &str {
    m.recipients.first().map_or("", String::as_str)
}

async fn notices_are_routed_grouped_inhibited_silenced_and_sent_once(db: db::TestDb) {
    let s = setup(&db, &[("logins.yaml", CRITICAL), ("warn.yaml", WARNING)]).await;
    let t0 = s.clock.now();
    login(&db.store, 3, "acme", t0 - 1000).await;
    login(&db.store, 3, "globex", t0 - 1000).await;
    login(&db.store, 2, "initech", t0 - 1000).await;
    // initech's warning is silenced before anything is told.
    let silence = herald::alerts::silence::SilenceRequest {
        matchers: vec![
            "alertname=admin-logins-warning".into(),
            "tenant=initech".into(),
        ],
        for_: Some("30m".into()),
        comment: Some("initech is migrating".into()),
        ..Default::default()
    }
    .build(t0)
    .unwrap();
    db.store.add_silence(&silence).await.unwrap();
    s.tick(&db.store).await;

    // Critical: acme and globex, one message (grouped by alertname). The warnings for acme and
    // globex are inhibited by them, initech's is silenced: ops hears nothing.
    assert_eq!(s.notify(&db.store).await, 1);
    assert_eq!(s.notify(&db.store).await, 0, "told once");
    let mail = s.delivered(0).await;
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert_eq!(to(&mail[0]), "oncall@example.com");
    assert_eq!(mail[0].subject.as_deref(), Some("[FIRING:2] admin-logins"));
    let body = mail[0].body();
    assert!(body.contains("3 admin logins for acme"), "{body}");
    assert!(body.contains("3 admin logins for globex"), "{body}");

    // The silence is expired while initech's warning fires: ops is told now.
    s.clock.set(t0 + MIN);
    assert!(
        db.store
            .expire_silence(&silence.id, s.clock.now())
            .await
            .unwrap()
    );
    s.tick(&db.store).await;
    assert_eq!(s.notify(&db.store).await, 1);
    let mail = s.delivered(1).await;
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert_eq!(to(&mail[0]), "ops@example.com");
    assert_eq!(
        mail[0].subject.as_deref(),
        Some("[FIRING:1] admin-logins-warning")
    );
    let body = mail[0].body();
    assert!(
        body.contains("FIRING admin-logins-warning [tenant=initech]"),
        "{body}"
    );
    assert!(!body.contains("acme"), "inhibited: {body}");

    // Minutes on, nothing has changed: no repeat before repeat_every.
    s.clock.set(t0 + 5 * MIN);
    s.tick(&db.store).await;
    assert_eq!(s.notify(&db.store).await, 0);

    // An hour on, only acme still logs in: globex is resolved, acme repeats, in one message.
    // Ops does not send resolved notices (initech's warning ended quietly).
    s.clock.set(t0 + 61 * MIN);
    login(&db.store, 3, "acme", s.clock.now() - 1000).await;
    s.tick(&db.store).await;
    assert_eq!(s.notify(&db.store).await, 1);
    let mail = s.delivered(2).await;
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert_eq!(to(&mail[0]), "oncall@example.com");
    assert_eq!(
        mail[0].subject.as_deref(),
        Some("[FIRING:1, RESOLVED:1] admin-logins")
    );
    let body = mail[0].body();
    assert!(body.contains("3 admin logins for acme"), "{body}");
    assert!(body.contains("resolved globex"), "{body}");

    // Every notice is an outbox row like any message: sent, and listed.
    let sent = db
        .store
        .list_messages(&herald::store::admin::OutboxFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sent.len(), 3);
    assert!(
        sent.iter()
            .all(|m| m.status == herald::store::OutboxStatus::Sent)
    );
}

async fn two_processes_write_one_notice(db: db::TestDb) {
    let s = setup(&db, &[("logins.yaml", CRITICAL)]).await;
    let other = db.open_again().await;
    let t0 = s.clock.now();
    login(&db.store, 3, "acme", t0 - 1000).await;
    s.tick(&db.store).await;
    let (a, b) = tokio::join!(s.notify(&db.store), s.notify(&other));
    assert_eq!(a + b, 1, "one of the two writes the notice: {a} + {b}");
    let mail = s.delivered(0).await;
    assert_eq!(mail.len(), 1);
}

async fn an_alert_removed_while_firing_is_notified_as_resolved(db: db::TestDb) {
    let s = setup(&db, &[("logins.yaml", CRITICAL)]).await;
    let t0 = s.clock.now();
    login(&db.store, 3, "acme", t0 - 1000).await;
    s.tick(&db.store).await;
    assert_eq!(s.notify(&db.store).await, 1);
    // The alert is renamed: the old name is no longer defined.
    let dir = s._dir.path();
    std::fs::write(
        dir.join("workflows/logins.yaml"),
        CRITICAL.replace("id: admin-logins", "id: admin-sign-ins"),
    )
    .unwrap();
    let layout = Layout::discover(dir).unwrap();
    let (registry, _) = herald::engine::load_registry(&layout, &env(), 2, t0).unwrap();
    s.app.engine.install(registry).await.unwrap();
    s.clock.set(t0 + MIN);
    assert_eq!(s.notify(&db.store).await, 1, "the old name resolves");
    let mail = s.delivered(0).await;
    assert_eq!(mail.len(), 2);
    assert_eq!(
        mail[1].subject.as_deref(),
        Some("[RESOLVED:1] admin-logins")
    );
    // The new name fires afresh at its first evaluation, and is news.
    s.tick(&db.store).await;
    assert_eq!(s.notify(&db.store).await, 1);
    let mail = s.delivered(2).await;
    assert_eq!(
        mail[0].subject.as_deref(),
        Some("[FIRING:1] admin-sign-ins")
    );
}

async fn silences_are_added_listed_and_expired_over_the_api(db: db::TestDb) {
    let s = setup(&db, &[("logins.yaml", CRITICAL)]).await;
    let http = reqwest::Client::new();
    let key = "k".repeat(32);
    let post = |body: Value| {
        http.post(s.app.url("/api/silences"))
            .header("x-api-key", &key)
            .json(&body)
            .send()
    };
    let bad = post(json!({"matchers": ["alertname=admin-logins"], "for": "2h"}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let text = bad.text().await.unwrap();
    assert!(text.contains("comment"), "{text}");
    let bad = post(json!({"matchers": ["tenant=~("], "for": "2h", "comment": "x"}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    assert!(bad.text().await.unwrap().contains("does not compile"));
    let bad = post(json!({"matchers": ["team!=ops"], "for": "2h", "comment": "x"}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 422, "matches every alert");
    let created = post(json!({"matchers": ["alertname=admin-logins", "tenant=~\"acme|globex\""], "for": "2h", "comment": "maintenance", "created_by": "dana"}))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["state"], "active");
    assert_eq!(created["matchers"][1], "tenant=~\"acme|globex\"");
    let id = created["id"].as_str().unwrap().to_owned();

    // A silenced alert fires but nobody is told.
    let t0 = s.clock.now();
    login(&db.store, 3, "acme", t0 - 1000).await;
    s.tick(&db.store).await;
    assert_eq!(s.notify(&db.store).await, 0);

    let list: Value = http
        .get(s.app.url("/api/silences"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["silences"].as_array().unwrap().len(), 1, "{list}");
    let expired = http
        .delete(s.app.url(&format!("/api/silences/{id}")))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 200);
    let again = http
        .delete(s.app.url(&format!("/api/silences/{id}")))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    let list: Value = http
        .get(s.app.url("/api/silences?all=true"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["silences"][0]["state"], "expired", "{list}");
    // Expired: the alert, still firing, is told.
    assert_eq!(s.notify(&db.store).await, 1);
}

#[test]
fn herald_silence_adds_lists_and_expires_on_the_database() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        "database: sqlite://herald.db\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    // A broken definition does not stop an operator silencing alerts.
    std::fs::write(
        dir.path().join("workflows/broken.yaml"),
        "kind: alert\nid: [\n",
    )
    .unwrap();
    let herald = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("silence")
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    let out = herald(&["add", "alertname=payment-failures", "--for", "2h"]);
    assert!(!out.status.success(), "a comment is required");
    let out = herald(&["add", "alertname=~(", "--for", "2h", "-c", "deploy"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not compile"), "{err}");
    let out = herald(&[
        "add",
        "alertname=payment-failures",
        "--for",
        "2h",
        "-c",
        "Stripe maintenance",
        "--by",
        "dana",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["state"], "active");
    assert_eq!(created["created_by"], "dana");
    let id = created["id"].as_str().unwrap().to_owned();
    let out = herald(&["list"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["matchers"][0], "alertname=\"payment-failures\"");
    let out = herald(&["expire", &id]);
    assert!(out.status.success());
    let out = herald(&["expire", &id]);
    assert_eq!(out.status.code(), Some(1), "already expired");
    let out = herald(&["list"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0);
    let out = herald(&["list", "--all"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["state"], "expired");
}

async fn the_server_evaluates_notifies_and_delivers(db: db::TestDb) {
    let s = setup(&db, &[("logins.yaml", CRITICAL)]).await;
    login(&db.store, 3, "acme", s.clock.now() - 1000).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let evaluating = tokio::spawn(herald::server::alerts::evaluate(
        s.app.engine.clone(),
        shutdown.clone(),
    ));
    let dispatching = tokio::spawn(s.app.engine.clone().dispatch(shutdown.clone()));
    let mut mail = Vec::new();
    for _ in 0..100 {
        mail = s.sink.messages();
        if !mail.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    evaluating.await.unwrap();
    dispatching.await.unwrap();
    assert_eq!(
        mail.len(),
        1,
        "the firing alert was mailed by the running server"
    );
    assert_eq!(mail[0].subject.as_deref(), Some("[FIRING:1] admin-logins"));
    assert!(mail[0].body().contains("3 admin logins for acme"));

    // /health lists it, and stays 200: a business alert is not a sick server.
    let health = reqwest::get(s.app.url("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["alerts"]["status"], "firing", "{health}");
    assert_eq!(health["alerts"]["worst"], "critical");
    assert_eq!(health["alerts"]["firing"][0]["alertname"], "admin-logins");
    assert_eq!(health["alerts"]["firing"][0]["labels"]["tenant"], "acme");
    assert_eq!(
        health["alerts"]["firing"][0]["summary"],
        "3 admin logins for acme"
    );
}

async fn a_probe_checks_a_real_server_and_health_shows_the_service(db: db::TestDb) {
    use support::{HttpSink, Reply};
    let api = HttpSink::start().await;
    let probe = format!(
        r#"kind: alert
id: api-down
every: 1m
severity: critical
source:
  probe:
    url: "{}"
    timeout: 2s
    max_latency: 500ms
    json: {{ status: ok, checks.db: up }}
    service: carbot-api
condition: "< 1"
annotations:
  summary: "the API is down"
"#,
        api.url("/api/health")
    );
    let s = setup(&db, &[("api.yaml", &probe)]).await;
    let registry = s.app.engine.registry();
    let alert = registry.workflows["api-down"].alert.clone().unwrap();
    let t0 = s.clock.now();
    let check = |at: i64| {
        let engine = s.app.engine.clone();
        let alert = alert.clone();
        async move {
            herald::alerts::tick::evaluate(&engine, &alert, at)
                .await
                .unwrap()
                .unwrap()
        }
    };
    let health = || async {
        let h: Value = reqwest::get(s.app.url("/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        h["services"]["carbot-api"].clone()
    };
    assert_eq!(health().await["status"], "unknown", "not checked yet");

    api.respond_by_default(Reply::ok().json(json!({"status": "ok", "checks": {"db": "up"}})));
    check(t0).await;
    assert_eq!(s.notify(&db.store).await, 0);
    let svc = health().await;
    assert_eq!(svc["status"], "up", "{svc}");
    assert_eq!(svc["http_status"], 200);
    assert!(svc["latency_ms"].as_i64().is_some(), "{svc}");
    assert_eq!(api.requests().len(), 1, "one check per evaluation");
    assert_eq!(api.requests()[0].path, "/api/health");

    // The service answers 503: down, firing, and on-call is told.
    api.respond_by_default(Reply::status(503));
    s.clock.set(t0 + MIN);
    check(t0 + MIN).await;
    assert_eq!(s.notify(&db.store).await, 1);
    let svc = health().await;
    assert_eq!(svc["status"], "down");
    assert_eq!(svc["error"], "status 503, expected 2xx");
    assert_eq!(svc["alert"], "firing");
    let mail = s.delivered(0).await;
    assert_eq!(mail[0].subject.as_deref(), Some("[FIRING:1] api-down"));

    // 200, but its database is down: still down, for that reason.
    api.respond_by_default(Reply::ok().json(json!({"status": "ok", "checks": {"db": "down"}})));
    s.clock.set(t0 + 2 * MIN);
    check(t0 + 2 * MIN).await;
    assert_eq!(
        health().await["error"],
        "`checks.db` is \"down\", expected \"up\""
    );
    // Too slow is down too.
    api.respond_by_default(
        Reply::ok()
            .json(json!({"status": "ok", "checks": {"db": "up"}}))
            .after(std::time::Duration::from_millis(800)),
    );
    s.clock.set(t0 + 3 * MIN);
    check(t0 + 3 * MIN).await;
    let svc = health().await;
    assert!(
        svc["error"]
            .as_str()
            .unwrap()
            .contains("more than max_latency 500ms"),
        "{svc}"
    );
    assert_eq!(s.notify(&db.store).await, 0, "still the same firing alert");

    // Healthy again: up, and resolved.
    api.respond_by_default(Reply::ok().json(json!({"status": "ok", "checks": {"db": "up"}})));
    s.clock.set(t0 + 4 * MIN);
    check(t0 + 4 * MIN).await;
    assert_eq!(health().await["status"], "up");
    assert_eq!(s.notify(&db.store).await, 1);
    let mail = s.delivered(1).await;
    assert_eq!(mail[0].subject.as_deref(), Some("[RESOLVED:1] api-down"));

    // Nobody listening: the connection fails, and says so.
    drop(api);
    s.clock.set(t0 + 5 * MIN);
    check(t0 + 5 * MIN).await;
    let svc = health().await;
    assert_eq!(svc["status"], "down");
    assert!(
        svc["error"].as_str().unwrap().contains("connection failed"),
        "{svc}"
    );
}

async fn metrics_read_the_outbox_and_the_runs(db: db::TestDb) {
    let metric = |id: &str, source: &str, condition: &str| {
        format!(
            "kind: alert\nid: {id}\nevery: 1m\nsource:\n  metric: {source}\ncondition: \"{condition}\"\n"
        )
    };
    let s = setup(
        &db,
        &[
            (
                "backlog.yaml",
                &metric("backlog", "{ name: outbox_backlog, group_by: true }", "> 2"),
            ),
            (
                "stuck-queue.yaml",
                &metric(
                    "stuck-queue",
                    "{ name: outbox_oldest_age, channel: email }",
                    "> 600",
                ),
            ),
            (
                "stuck-runs.yaml",
                &metric(
                    "stuck-runs",
                    "{ name: runs_stuck, stuck_after: 10m }",
                    "> 0",
                ),
            ),
        ],
    )
    .await;
    let t0 = s.clock.now();
    // Three e-mails waiting since 20 minutes ago, one text due now, and one text held until
    // tomorrow (quiet hours): not late.
    let rows = vec![
        queued("m1", "email", t0 - 20 * MIN, t0 - 20 * MIN),
        queued("m2", "email", t0 - 5 * MIN, t0 - 5 * MIN),
        queued("m3", "email", t0 - MIN, t0 - MIN),
        queued("m4", "sms", t0 - MIN, t0 - MIN),
        queued("m5", "sms", t0 - 30 * MIN, t0 + 600 * MIN),
    ];
    db.store.insert_events(&[], &[], &[], &rows).await.unwrap();
    // A run ready since half an hour ago that nobody has taken.
    let run = herald::store::NewRun {
        id: "r-stuck".into(),
        workflow_id: "nightly".into(),
        version: "v1".into(),
        trigger_kind: herald::store::TriggerKind::Manual,
        idempotency_key: None,
        parent_run_id: None,
        cursor: json!({}),
        context: json!({}),
        labels: json!({}),
        created_at: t0 - 30 * MIN,
        queued: None,
    };
    db.store.insert_events(&[], &[run], &[], &[]).await.unwrap();
    s.tick(&db.store).await;

    let phases = |id: &'static str| {
        let store = db.store.clone();
        async move {
            store
                .alert_instances(id)
                .await
                .unwrap()
                .into_iter()
                .map(|i| {
                    let v = serde_json::from_str::<herald::alerts::AlertState>(&i.state)
                        .unwrap()
                        .value;
                    (i.group_key, i.phase, v)
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        phases("backlog").await,
        [(
            r#"{"channel":"email"}"#.to_owned(),
            "firing".to_owned(),
            Some(3.0)
        )],
        "email's three waiting fire; sms's two do not"
    );
    let q = phases("stuck-queue").await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].1, "firing");
    assert_eq!(
        q[0].2,
        Some(1200.0),
        "the oldest due e-mail has waited 20 minutes"
    );
    let r = phases("stuck-runs").await;
    assert_eq!((r[0].1.as_str(), r[0].2), ("firing", Some(1.0)), "{r:?}");

    // The queue drains: the backlog resolves (counting 0, not "no data").
    for id in ["m1", "m2", "m3"] {
        db.store.cancel_message(id, t0).await.unwrap();
    }
    s.clock.set(t0 + MIN);
    s.tick(&db.store).await;
    let b = phases("backlog").await;
    assert_eq!(b[0].1, "resolved", "{b:?}");
    assert_eq!(b[0].2, Some(0.0));
    let q = phases("stuck-queue").await;
    assert_eq!(q[0].1, "resolved", "{q:?}");
}
