//! A database that stops taking writes (a full disk, a file made read-only, a failing volume)
//! while reads still work, then recovers. The store is a real SQLite store behind a wrapper
//! that makes its writes fail on demand. While they fail, webhooks get 503 with Retry-After
//! and nothing is half-stored, `/health` answers 503 and says why, and the metrics say so;
//! when they work again, the same process carries on by itself: no restart.

#[path = "support/db.rs"]
mod db;
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald::definitions::env::EnvSource;
use herald::definitions::project::Layout;
use herald::engine::clock::{Clock as _, SystemClock, rfc3339};
use herald::engine::{Engine, EngineOptions, load_registry};
use herald::server::{AppState, ReloadStatus, metrics_handle, router};
use herald::store::*;

/// A store whose writes fail while `failing` is set, as a failing disk makes them.
#[derive(Debug)]
struct Failing {
    inner: DynStore,
    failing: AtomicBool,
}

impl Failing {
    fn check(&self) -> Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Database(sqlx::Error::Io(
                std::io::Error::other("disk I/O error (injected)"),
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Admin for Failing {
    async fn list_contacts(&self, f: &ContactFilter) -> Result<Vec<Contact>> {
        self.inner.list_contacts(f).await
    }
    async fn update_contact(
        &self,
        id: &str,
        p: &ContactPatch,
        now: Millis,
    ) -> Result<Option<Contact>> {
        self.check()?;
        self.inner.update_contact(id, p, now).await
    }
    async fn delete_contact(&self, id: &str) -> Result<bool> {
        self.check()?;
        self.inner.delete_contact(id).await
    }
    async fn count_contacts(&self) -> Result<Vec<(Option<String>, i64)>> {
        self.inner.count_contacts().await
    }
    async fn message(&self, id: &str) -> Result<Option<OutboxRecord>> {
        self.inner.message(id).await
    }
    async fn list_messages(&self, f: &OutboxFilter) -> Result<Vec<OutboxRecord>> {
        self.inner.list_messages(f).await
    }
    async fn retry_message(&self, id: &str, now: Millis) -> Result<MessageChange> {
        self.check()?;
        self.inner.retry_message(id, now).await
    }
    async fn cancel_message(&self, id: &str, now: Millis) -> Result<MessageChange> {
        self.check()?;
        self.inner.cancel_message(id, now).await
    }
    async fn list_suppressions(
        &self,
        channel: Option<&str>,
        limit: i64,
    ) -> Result<Vec<herald::store::admin::Suppression>> {
        self.inner.list_suppressions(channel, limit).await
    }
    async fn lift_suppression(&self, channel: &str, address: &str) -> Result<bool> {
        self.check()?;
        self.inner.lift_suppression(channel, address).await
    }
    async fn cancel_runs(&self, s: &RunSelection, now: Millis, dry: bool) -> Result<u64> {
        self.check()?;
        self.inner.cancel_runs(s, now, dry).await
    }
    async fn purge(&self, r: Option<Millis>, e: Option<Millis>, b: i64) -> Result<Purged> {
        self.check()?;
        self.inner.purge(r, e, b).await
    }
}

#[async_trait]
impl Store for Failing {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn save_definition(&self, v: &DefinitionVersion) -> Result<()> {
        self.check()?;
        self.inner.save_definition(v).await
    }
    async fn definition(&self, hash: &str) -> Result<Option<DefinitionVersion>> {
        self.inner.definition(hash).await
    }
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        self.check()?;
        self.inner.commit(commit).await
    }
    async fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        self.inner.run(id).await
    }
    async fn run_by_idempotency_key(&self, w: &str, k: &str) -> Result<Option<RunRecord>> {
        self.inner.run_by_idempotency_key(w, k).await
    }
    async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunRecord>> {
        self.inner.list_runs(f).await
    }
    async fn step_log(&self, id: &str) -> Result<Vec<StepLogEntry>> {
        self.inner.step_log(id).await
    }
    async fn open_conversation(&self, wf: &str, key: &str) -> Result<Option<RunRecord>> {
        self.inner.open_conversation(wf, key).await
    }
    async fn claim_runs(&self, o: &str, now: Millis, l: i64, n: i64) -> Result<Vec<RunRecord>> {
        self.check()?;
        self.inner.claim_runs(o, now, l, n).await
    }
    async fn renew_leases(&self, o: &str, ids: &[String], u: Millis) -> Result<Vec<String>> {
        self.check()?;
        self.inner.renew_leases(o, ids, u).await
    }
    async fn release_runs(&self, o: &str, now: Millis) -> Result<u64> {
        self.check()?;
        self.inner.release_runs(o, now).await
    }
    async fn next_due_at(&self) -> Result<Option<Millis>> {
        self.inner.next_due_at().await
    }
    async fn cancel_run(&self, id: &str, now: Millis) -> Result<bool> {
        self.check()?;
        self.inner.cancel_run(id, now).await
    }
    async fn retry_run(&self, id: &str, now: Millis) -> Result<bool> {
        self.check()?;
        self.inner.retry_run(id, now).await
    }
    async fn count_runs(&self) -> Result<Vec<(RunStatus, i64)>> {
        self.inner.count_runs().await
    }
    async fn insert_events(
        &self,
        e: &[NewEvent],
        r: &[NewRun],
        c: &[ContactUpsert],
        o: &[NewOutbox],
    ) -> Result<Vec<Contact>> {
        self.check()?;
        self.inner.insert_events(e, r, c, o).await
    }
    async fn wake_waiting(&self, n: &str, k: &str, now: Millis) -> Result<u64> {
        self.check()?;
        self.inner.wake_waiting(n, k, now).await
    }
    async fn find_event(
        &self,
        n: &str,
        k: &str,
        s: Millis,
        x: &[String],
    ) -> Result<Option<EventRecord>> {
        self.inner.find_event(n, k, s, x).await
    }
    async fn contact(&self, id: &str) -> Result<Option<Contact>> {
        self.inner.contact(id).await
    }
    async fn contact_by_address(&self, ch: &str, address: &str) -> Result<Option<Contact>> {
        self.inner.contact_by_address(ch, address).await
    }
    async fn find_contact(&self, e: Option<&str>, p: Option<&str>) -> Result<Option<Contact>> {
        self.inner.find_contact(e, p).await
    }
    async fn contacts(&self, ids: &[String]) -> Result<Vec<Contact>> {
        self.inner.contacts(ids).await
    }
    async fn find_contacts(&self, e: &[String], p: &[String]) -> Result<Vec<Contact>> {
        self.inner.find_contacts(e, p).await
    }
    async fn recipient(
        &self,
        ch: &str,
        address: &str,
        e: Option<&str>,
        p: Option<&str>,
    ) -> Result<(Option<String>, Option<Contact>)> {
        self.inner.recipient(ch, address, e, p).await
    }
    async fn claim_outbox(
        &self,
        o: &str,
        now: Millis,
        l: i64,
        n: i64,
    ) -> Result<Vec<OutboxRecord>> {
        self.check()?;
        self.inner.claim_outbox(o, now, l, n).await
    }
    async fn finish_delivery(
        &self,
        id: &str,
        o: &str,
        out: DeliveryOutcome,
        now: Millis,
    ) -> Result<bool> {
        self.check()?;
        self.inner.finish_delivery(id, o, out, now).await
    }
    async fn finish_deliveries(
        &self,
        owner: &str,
        outcomes: Vec<(String, DeliveryOutcome)>,
        now: Millis,
    ) -> Result<Vec<bool>> {
        self.check()?;
        self.inner.finish_deliveries(owner, outcomes, now).await
    }
    async fn record_delivery(
        &self,
        channel: &str,
        provider_id: &str,
        delivery: &str,
        error: Option<&str>,
        now: Millis,
    ) -> Result<Option<OutboxRecord>> {
        self.check()?;
        self.inner
            .record_delivery(channel, provider_id, delivery, error, now)
            .await
    }
    async fn suppress_address(
        &self,
        channel: &str,
        address: &str,
        reason: &str,
        detail: Option<&str>,
        now: Millis,
    ) -> Result<()> {
        self.check()?;
        self.inner
            .suppress_address(channel, address, reason, detail, now)
            .await
    }
    async fn address_suppression(&self, channel: &str, address: &str) -> Result<Option<String>> {
        self.inner.address_suppression(channel, address).await
    }
    async fn address_suppressions(
        &self,
        channels: &[String],
        addresses: &[String],
    ) -> Result<Vec<(String, String, String)>> {
        self.inner.address_suppressions(channels, addresses).await
    }
    async fn count_recent_messages(
        &self,
        ch: &str,
        to: &str,
        category: &str,
        since: Millis,
    ) -> Result<i64> {
        self.inner
            .count_recent_messages(ch, to, category, since)
            .await
    }
    async fn outbox_for_run(&self, id: &str) -> Result<Vec<OutboxRecord>> {
        self.inner.outbox_for_run(id).await
    }
    async fn sent_messages(&self, q: &SentMessages) -> Result<Vec<OutboxRecord>> {
        self.inner.sent_messages(q).await
    }
    async fn count_outbox(&self) -> Result<Vec<(OutboxStatus, i64)>> {
        self.inner.count_outbox().await
    }
    async fn next_outbox_at(&self) -> Result<Option<Millis>> {
        self.inner.next_outbox_at().await
    }
    async fn cron_checked_until(&self, w: &str, k: &str) -> Result<Option<Millis>> {
        self.inner.cron_checked_until(w, k).await
    }
    async fn set_cron_checked_until(&self, w: &str, k: &str, u: Millis) -> Result<()> {
        self.check()?;
        self.inner.set_cron_checked_until(w, k, u).await
    }
    async fn record_cron_fire(&self, f: &CronFire, r: Option<&NewRun>) -> Result<bool> {
        self.check()?;
        self.inner.record_cron_fire(f, r).await
    }
    async fn cron_run_active(&self, w: &str, k: &str) -> Result<bool> {
        self.inner.cron_run_active(w, k).await
    }
    async fn cron_fires(&self, w: &str, n: i64) -> Result<Vec<CronFire>> {
        self.inner.cron_fires(w, n).await
    }
    async fn campaign_candidates(
        &self,
        c: &str,
        o: &str,
        a: &campaigns::AudienceFilter,
        after: Option<&str>,
        n: i64,
    ) -> Result<Vec<String>> {
        self.check()?;
        self.inner.campaign_candidates(c, o, a, after, n).await
    }
    async fn enrol_campaign(
        &self,
        c: &str,
        o: &str,
        r: &[(String, NewRun)],
        now: Millis,
    ) -> Result<u64> {
        self.check()?;
        self.inner.enrol_campaign(c, o, r, now).await
    }
    async fn campaign(&self, id: &str) -> Result<Option<campaigns::CampaignRow>> {
        self.check()?;
        self.inner.campaign(id).await
    }
    async fn set_campaign_state(
        &self,
        id: &str,
        s: &str,
        e: Option<Millis>,
        now: Millis,
    ) -> Result<()> {
        self.check()?;
        self.inner.set_campaign_state(id, s, e, now).await
    }
    async fn set_campaign_occurrence(
        &self,
        id: &str,
        o: &str,
        e: Option<Millis>,
        now: Millis,
    ) -> Result<()> {
        self.check()?;
        self.inner.set_campaign_occurrence(id, o, e, now).await
    }
    async fn queued_conversations(
        &self,
        key: Option<&str>,
        n: i64,
    ) -> Result<Vec<herald::store::QueuedConversation>> {
        self.check()?;
        self.inner.queued_conversations(key, n).await
    }
    async fn promote_queued_conversation(&self, id: &str, now: Millis) -> Result<bool> {
        self.check()?;
        self.inner.promote_queued_conversation(id, now).await
    }
    async fn latest_cron_fire(&self, w: &str) -> Result<Option<Millis>> {
        self.check()?;
        self.inner.latest_cron_fire(w).await
    }
    async fn campaign_counts(&self, id: &str) -> Result<campaigns::CampaignCounts> {
        self.check()?;
        self.inner.campaign_counts(id).await
    }
    async fn alert_events(
        &self,
        name: &str,
        from: Millis,
        to: Millis,
    ) -> Result<Vec<herald::store::EventRecord>> {
        self.check()?;
        self.inner.alert_events(name, from, to).await
    }
    async fn alert_instances(&self, id: &str) -> Result<Vec<herald::store::AlertInstance>> {
        self.check()?;
        self.inner.alert_instances(id).await
    }
    async fn record_alert_tick(
        &self,
        id: &str,
        tick: Millis,
        states: &[herald::store::AlertInstance],
    ) -> Result<bool> {
        self.check()?;
        self.inner.record_alert_tick(id, tick, states).await
    }
    async fn firing_alert_instances(&self) -> Result<Vec<herald::store::AlertInstance>> {
        self.check()?;
        self.inner.firing_alert_instances().await
    }
    async fn alert_notifications(&self) -> Result<Vec<herald::store::alerting::NotificationLog>> {
        self.check()?;
        self.inner.alert_notifications().await
    }
    async fn record_alert_notification(
        &self,
        log: &herald::store::alerting::NotificationLog,
        read_seq: Option<i64>,
        messages: &[herald::store::NewOutbox],
    ) -> Result<bool> {
        self.check()?;
        self.inner
            .record_alert_notification(log, read_seq, messages)
            .await
    }
    async fn add_silence(&self, silence: &herald::store::alerting::SilenceRow) -> Result<()> {
        self.check()?;
        self.inner.add_silence(silence).await
    }
    async fn silences(
        &self,
        active_at: Option<Millis>,
    ) -> Result<Vec<herald::store::alerting::SilenceRow>> {
        self.check()?;
        self.inner.silences(active_at).await
    }
    async fn expire_silence(&self, id: &str, now: Millis) -> Result<bool> {
        self.check()?;
        self.inner.expire_silence(id, now).await
    }
    async fn alert_metric(
        &self,
        query: &herald::store::alerting::MetricQuery,
    ) -> Result<Vec<(Option<String>, f64)>> {
        self.check()?;
        self.inner.alert_metric(query).await
    }
    async fn alert_step_durations(
        &self,
        query: &herald::store::alerting::MetricQuery,
        limit: i64,
    ) -> Result<Vec<(Option<String>, i64)>> {
        self.check()?;
        self.inner.alert_step_durations(query, limit).await
    }
    async fn add_webhook_responses(
        &self,
        counts: &[herald::store::alerting::WebhookCount],
    ) -> Result<()> {
        self.check()?;
        self.inner.add_webhook_responses(counts).await
    }
}

/// A project folder with `config` as its herald.yaml and `workflow` as its one workflow.
fn project(config: &str, workflow: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("herald.yaml"), config).unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(dir.path().join("workflows/workflow.yaml"), workflow).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_outage_is_answered_503_and_recovered_from_without_a_restart() {
    let db = db::sqlite("write-outage").await.unwrap();
    let store = Arc::new(Failing {
        inner: db.store.clone(),
        failing: AtomicBool::new(false),
    });
    let dir = project(
        "channels:\n  email: { provider: log }\n",
        "kind: workflow\nid: hook\ntriggers:\n  - webhook: { path: /hooks/in }\nsteps:\n  - id: pause\n    wait: 1s\n  - id: mail\n    send: { channel: email, to: ada@example.com, body: hi }\n",
    );
    let env = EnvSource::Map(Arc::new(Default::default()));
    let layout = Layout::discover(dir.path()).unwrap();
    let (registry, _) = load_registry(&layout, &env, 1, SystemClock.now()).unwrap();
    let engine = Engine::new(
        store.clone(),
        Arc::new(SystemClock),
        env,
        EngineOptions::default(),
    );
    engine.install(registry).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(engine.clone().work(shutdown.clone()));
    tokio::spawn(engine.clone().dispatch(shutdown.clone()));
    let state = Arc::new(AppState {
        engine: engine.clone(),
        admin_keys: vec![herald::server::admin::digest("test-admin-key")],
        metrics: metrics_handle(),
        reload: Mutex::new(ReloadStatus {
            ok: true,
            at: Some(rfc3339(SystemClock.now())),
            generation: 1,
            errors: Vec::new(),
        }),
        started_at: SystemClock.now(),
        channel_health: Default::default(),
        inbound_limiter: Default::default(),
        reload_gate: Default::default(),
        reloader: Mutex::new(None),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    herald::tls::init();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = |p: &str| format!("http://{addr}{p}");

    // A run that was accepted before the outage, and is waiting through it.
    let r = http
        .post(url("/hooks/in"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let first = r.json::<serde_json::Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();

    store.failing.store(true, Ordering::SeqCst);
    let r = http
        .post(url("/hooks/in"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    // A batch of events is refused whole: none of it is stored, so the sender sends it again.
    let batch = serde_json::json!({"events": [
        {"name": "order.paid", "key": "o-1", "data": {}},
        {"name": "order.paid", "key": "o-2", "data": {}},
    ]});
    let r = http
        .post(url("/api/events"))
        .header("x-api-key", "test-admin-key")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // The workers notice too; give them a moment to try.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = http.get(url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 503, "reads work, but writes do not");
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    let error = body["database"]["error"].as_str().unwrap();
    assert!(
        error.contains("writes fail") && error.contains("disk I/O error"),
        "{error}"
    );
    let metrics = http
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("herald_store_failing 1"), "{metrics}");

    // The disk is back: the same process recovers by itself.
    store.failing.store(false, Ordering::SeqCst);
    let r = http
        .post(url("/hooks/in"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let second = r.json::<serde_json::Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut done = true;
        for id in [&first, &second] {
            let run = db.store.run(id).await.unwrap().unwrap();
            done &= run.status == RunStatus::Completed;
        }
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the runs did not finish after the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http.get(url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let stored = db
        .store
        .alert_events("order.paid", 0, i64::MAX)
        .await
        .unwrap();
    assert!(stored.is_empty(), "{stored:?}");
    let r = http
        .post(url("/api/events"))
        .header("x-api-key", "test-admin-key")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let stored = db
        .store
        .alert_events("order.paid", 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    let metrics = http
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("herald_store_failing 0"), "{metrics}");
    // One message per run: nothing was sent twice for the failed attempts.
    for id in [&first, &second] {
        let messages = db.store.outbox_for_run(id).await.unwrap();
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert_eq!(messages[0].status, OutboxStatus::Sent);
    }
    shutdown.cancel();
}

/// A provider's message that arrives while the database takes no writes is answered 503, so
/// the provider delivers it again; when it comes back, it is taken once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inbound_message_during_a_write_outage_is_answered_503_and_taken_on_redelivery() {
    let db = db::sqlite("inbound-outage").await.unwrap();
    let store = Arc::new(Failing {
        inner: db.store.clone(),
        failing: AtomicBool::new(false),
    });
    let dir = project(
        "channels:\n  tg: { provider: telegram, bot_token: \"123456:ABC\", secret_token: s3cret }\n",
        "kind: workflow\nid: answer\ntriggers:\n  - message: { channel: tg }\nsteps:\n  - id: note\n    set: { heard: \"{{ message.text }}\" }\n",
    );
    let clock = herald::engine::clock::VirtualClock::at("2026-11-02T15:00:00Z");
    let app = support::app::App::start(
        dir.path(),
        &EnvSource::Map(Arc::default()),
        store.clone(),
        &clock,
    )
    .await;
    let update = r#"{"update_id":7001,"message":{"message_id":3,"date":1764800000,"chat":{"id":1111111,"type":"private"},"text":"hello"}}"#;
    let deliver = || async {
        reqwest::Client::new()
            .post(app.url("/inbound/tg"))
            .header("content-type", "application/json")
            .header("x-telegram-bot-api-secret-token", "s3cret")
            .body(update)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let runs = || async {
        db.store
            .list_runs(&RunFilter {
                workflow_id: Some("answer".into()),
                limit: 10,
                ..RunFilter::default()
            })
            .await
            .unwrap()
            .len()
    };

    store.failing.store(true, Ordering::SeqCst);
    assert_eq!(deliver().await, 503);
    assert_eq!(runs().await, 0);

    store.failing.store(false, Ordering::SeqCst);
    assert_eq!(deliver().await, 200);
    assert_eq!(deliver().await, 200, "Telegram may deliver it once more");
    assert_eq!(runs().await, 1);
}
