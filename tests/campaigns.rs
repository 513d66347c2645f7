//! Campaigns: a broadcast enrolls its audience once, however often the driver ticks; a drip
//! enrolls a contact on an event and spreads its steps over days on the virtual clock; an edit
//! saved mid-campaign reaches the messages not yet sent. Messages go to a real HTTP server on
//! loopback, so what "was sent" is what that server received. Every scenario runs on SQLite
//! and on PostgreSQL.

#[path = "support/db.rs"]
mod db;
#[path = "support/engine.rs"]
mod engine_support;
mod support;

use std::time::Duration;

use engine_support::Harness;
use herald::engine::campaign;
use herald::engine::scheduler::Scheduler;
use herald::store::campaigns::{Membership, MembershipKind};
use herald::store::{ContactUpsert, RunStatus};
use support::ReceivedRequest;

db::scenarios!["campaigns";
    a_broadcast_reaches_its_audience_once,
    a_drip_spreads_three_messages_over_a_week,
    an_edit_reaches_the_messages_not_yet_sent,
    a_paused_campaign_enrolls_nobody_until_resumed,
    a_send_window_opens_on_each_recipients_clock,
    the_admin_api_pauses_resumes_and_cancels_a_campaign,
    a_reply_or_a_funded_loan_ends_the_sequence,
    a_frequency_cap_is_shared_by_two_campaigns,
    a_throttle_paces_a_campaign_without_spending_attempts,
    an_audience_tests_attributes_and_dates,
    a_recurring_campaign_enrolls_at_each_time,
    every_opt_out_holds_when_recipients_are_read_in_batches,
];

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A contact with `email` on `lists`, with `tags` and `status`.
fn contact(email: &str, lists: &[&str], tags: &[&str], status: Option<&str>) -> ContactUpsert {
    let member = |kind, names: &[&str]| {
        names
            .iter()
            .map(|n| Membership {
                kind,
                name: (*n).to_owned(),
                member: true,
            })
            .collect::<Vec<_>>()
    };
    let mut memberships = member(MembershipKind::List, lists);
    memberships.extend(member(MembershipKind::Tag, tags));
    ContactUpsert {
        new_id: herald::engine::new_id(),
        email: Some(email.to_owned()),
        status: status.map(str::to_owned),
        timezone: match email {
            "ann@example.com" => Some("America/Denver".into()),
            "bob@example.com" => Some("Europe/Berlin".into()),
            "cid@example.com" => Some("Asia/Tokyo".into()),
            _ => None,
        },
        now: 0,
        memberships,
        ..ContactUpsert::default()
    }
}

async fn seed(h: &Harness, contacts: &[ContactUpsert]) {
    h.engine
        .store
        .insert_events(&[], &[], contacts, &[])
        .await
        .unwrap();
}

/// Who the HTTP sink received messages for, sorted, with the message text.
fn received(requests: &[ReceivedRequest]) -> Vec<(String, String)> {
    let mut out: Vec<_> = requests
        .iter()
        .map(|r| {
            (
                r.json["to"].as_str().unwrap_or_default().to_owned(),
                r.json["body"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// One tick of the driver, then everything it made due run and delivered.
async fn tick(h: &Harness, scheduler: &Scheduler) {
    scheduler.tick().await.unwrap();
    h.settle().await;
}

const BROADCAST: &str = r#"
kind: campaign
id: spring-offer
audience:
  lists: [newsletter]
  without_tags: [churned]
  status: [lead, customer]
schedule:
  send_at: "2026-11-02T16:00:00Z"
steps:
  - id: offer
    send:
      channel: hook
      to: "{{ contact.email }}"
      body: "Spring offer for {{ contact.email }}"
"#;

async fn a_broadcast_reaches_its_audience_once(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/spring-offer.yaml", BROADCAST)]).await;
    seed(
        &h,
        &[
            contact("ann@example.com", &["newsletter"], &[], Some("lead")),
            contact(
                "bob@example.com",
                &["newsletter", "vip"],
                &["vip"],
                Some("customer"),
            ),
            contact(
                "cid@example.com",
                &["newsletter"],
                &["churned"],
                Some("lead"),
            ),
            contact("dee@example.com", &["other"], &[], Some("lead")),
            contact("eve@example.com", &["newsletter"], &[], Some("lost")),
        ],
    )
    .await;
    let scheduler = Scheduler::new(h.engine.clone());

    tick(&h, &scheduler).await;
    assert!(
        h.sink.requests().is_empty(),
        "nothing is sent before send_at"
    );
    assert_eq!(h.engine.store.campaign("spring-offer").await.unwrap(), None);

    h.clock.advance(HOUR);
    tick(&h, &scheduler).await;
    tick(&h, &scheduler).await;
    h.clock.advance(Duration::from_secs(5));
    tick(&h, &scheduler).await;
    assert_eq!(
        received(&h.sink.requests()),
        vec![
            (
                "ann@example.com".into(),
                "Spring offer for ann@example.com".into()
            ),
            (
                "bob@example.com".into(),
                "Spring offer for bob@example.com".into()
            ),
        ],
        "the audience, each once: not the churned, the other list, or the lost"
    );
    let counts = h
        .engine
        .store
        .campaign_counts("spring-offer")
        .await
        .unwrap();
    assert_eq!((counts.enrolled, counts.finished, counts.active), (2, 2, 0));
    assert_eq!(counts.steps.len(), 1);
    assert_eq!(
        (counts.steps[0].step.as_str(), counts.steps[0].sent),
        ("offer", 2)
    );
    let row = h
        .engine
        .store
        .campaign("spring-offer")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, campaign::COMPLETED);

    // Every message says which campaign and step it is.
    let messages = h
        .engine
        .store
        .list_messages(&herald::store::OutboxFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    for m in &messages {
        assert_eq!(m.headers["X-Herald-Campaign"], "spring-offer");
        assert_eq!(m.headers["X-Herald-Step"], "offer");
    }

    // A contact who joins the list after the send is not enrolled in it.
    seed(
        &h,
        &[contact(
            "fay@example.com",
            &["newsletter"],
            &[],
            Some("lead"),
        )],
    )
    .await;
    tick(&h, &scheduler).await;
    assert_eq!(h.sink.requests().len(), 2);
}

const DRIP: &str = r#"
kind: campaign
id: onboarding
schedule:
  enrol: { event: lead.created }
steps:
  - id: who
    upsert_contact: { email: "{{ event.key }}", lists: [onboarding] }
  - id: welcome
    send: { channel: hook, to: "{{ contact.email }}", body: "Welcome" }
  - id: pause_3d
    wait: 3d
  - id: tips
    send: { channel: hook, to: "{{ contact.email }}", body: "Tips" }
  - id: pause_4d
    wait: 4d
  - id: offer
    send: { channel: hook, to: "{{ contact.email }}", body: "Offer" }
"#;

async fn a_drip_spreads_three_messages_over_a_week(db: db::TestDb) {
    let started = std::time::Instant::now();
    let h = Harness::new(db, &[("workflows/onboarding.yaml", DRIP)]).await;
    let t0 = h.at(Duration::ZERO);
    h.engine
        .emit(
            "lead.created",
            Some("ann@example.com"),
            serde_json::json!({}),
        )
        .await
        .unwrap();
    h.settle().await;
    // The same contact again: a campaign that does not `reenrol` enrolls once.
    h.engine
        .emit(
            "lead.created",
            Some("ann@example.com"),
            serde_json::json!({}),
        )
        .await
        .unwrap();
    h.settle().await;
    let texts = |h: &Harness| {
        h.sink
            .requests()
            .iter()
            .map(|r| r.json["body"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&h), ["Welcome"]);
    h.advance(3 * DAY - HOUR).await;
    assert_eq!(texts(&h), ["Welcome"], "not before three days");
    h.advance(HOUR).await;
    assert_eq!(texts(&h), ["Welcome", "Tips"]);
    h.advance(4 * DAY).await;
    assert_eq!(texts(&h), ["Welcome", "Tips", "Offer"]);
    let runs = h
        .engine
        .store
        .list_runs(&herald::store::RunFilter {
            workflow_id: Some("onboarding".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Completed);
    assert_eq!(h.engine.now() - t0, (7 * DAY).as_millis() as i64);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a week of drip on the virtual clock took {:?}",
        started.elapsed()
    );
}

const TWO_STEP: &str = r#"
kind: campaign
id: reactivate
audience: { lists: [dormant] }
schedule:
  send_at: "2026-11-02T15:00:00Z"
steps:
  - id: first
    send: { channel: hook, to: "{{ contact.email }}", body: "First, version 1" }
  - id: later
    wait: 1d
  - id: second
    send: { channel: hook, to: "{{ contact.email }}", body: "Second, version 1" }
"#;

async fn an_edit_reaches_the_messages_not_yet_sent(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/reactivate.yaml", TWO_STEP)]).await;
    seed(
        &h,
        &[
            contact("ann@example.com", &["dormant"], &[], None),
            contact("bob@example.com", &["dormant"], &[], None),
        ],
    )
    .await;
    let scheduler = Scheduler::new(h.engine.clone());
    tick(&h, &scheduler).await;
    assert_eq!(h.sink.requests().len(), 2);

    h.write(
        "workflows/reactivate.yaml",
        &TWO_STEP.replace("Second, version 1", "Second, version 2"),
    );
    h.reload().await;
    h.clock.advance(DAY);
    tick(&h, &scheduler).await;
    let bodies: Vec<String> = received(&h.sink.requests())
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(
        bodies,
        [
            "First, version 1",
            "Second, version 2",
            "First, version 1",
            "Second, version 2"
        ]
    );
}

async fn a_paused_campaign_enrolls_nobody_until_resumed(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/reactivate.yaml", TWO_STEP)]).await;
    seed(&h, &[contact("ann@example.com", &["dormant"], &[], None)]).await;
    let scheduler = Scheduler::new(h.engine.clone());
    campaign::pause(&h.engine, "reactivate").await.unwrap();
    tick(&h, &scheduler).await;
    assert!(h.sink.requests().is_empty());
    assert_eq!(
        campaign::pause(&h.engine, "no-such-campaign")
            .await
            .unwrap_err()
            .to_string(),
        "no campaign `no-such-campaign` is loaded"
    );
    campaign::resume(&h.engine, "reactivate").await.unwrap();
    tick(&h, &scheduler).await;
    assert_eq!(h.sink.requests().len(), 1);

    // Paused while the recipient waits for its second message: it is held, not lost.
    campaign::pause(&h.engine, "reactivate").await.unwrap();
    h.advance(2 * DAY).await;
    tick(&h, &scheduler).await;
    assert_eq!(h.sink.requests().len(), 1, "nothing goes while paused");
    campaign::resume(&h.engine, "reactivate").await.unwrap();
    h.advance(Duration::from_secs(60)).await;
    tick(&h, &scheduler).await;
    assert_eq!(
        received(&h.sink.requests()),
        [
            ("ann@example.com".to_owned(), "First, version 1".to_owned()),
            ("ann@example.com".to_owned(), "Second, version 1".to_owned()),
        ]
    );
}

const WINDOWED: &str = r#"
kind: campaign
id: windowed
audience: { lists: [all] }
schedule:
  send_at: "2026-11-02T15:00:00Z"
send_window: { start: "09:00", end: "20:00", days: [mon, tue, wed, thu, fri, sat] }
steps:
  - id: hello
    send: { channel: hook, to: "{{ contact.email }}", body: "Hello" }
"#;

/// Monday 15:00 UTC is 08:00 in Denver (before the window), 16:00 in Berlin (inside it), and
/// already Tuesday 00:00 in Tokyo (before it); a contact with no time zone is on UTC.
async fn a_send_window_opens_on_each_recipients_clock(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/windowed.yaml", WINDOWED)]).await;
    seed(
        &h,
        &[
            contact("ann@example.com", &["all"], &[], None),
            contact("bob@example.com", &["all"], &[], None),
            contact("cid@example.com", &["all"], &[], None),
            contact("dee@example.com", &["all"], &[], None),
        ],
    )
    .await;
    let scheduler = Scheduler::new(h.engine.clone());
    let sent = |h: &Harness| {
        received(&h.sink.requests())
            .into_iter()
            .map(|(to, _)| to)
            .collect::<Vec<_>>()
    };
    tick(&h, &scheduler).await;
    assert_eq!(sent(&h), ["bob@example.com", "dee@example.com"]);
    h.advance(HOUR - Duration::from_secs(1)).await;
    assert_eq!(
        sent(&h).len(),
        2,
        "Denver's window opens at 09:00 MST, not before"
    );
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(
        sent(&h),
        ["ann@example.com", "bob@example.com", "dee@example.com"]
    );
    h.advance(8 * HOUR).await;
    assert_eq!(
        sent(&h),
        [
            "ann@example.com",
            "bob@example.com",
            "cid@example.com",
            "dee@example.com"
        ],
        "Tokyo's window opens at 09:00 JST, Tuesday 00:00 UTC"
    );
}

const ADMIN_KEY: &str = "campaign-admin-key";

async fn the_admin_api_pauses_resumes_and_cancels_a_campaign(db: db::TestDb) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!("channels:\n  hook: {{ provider: log }}\nadmin:\n  api_keys: [\"{ADMIN_KEY}\"]\n"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(dir.path().join("workflows/reactivate.yaml"), TWO_STEP).unwrap();
    let clock = herald::engine::clock::VirtualClock::at(engine_support::START);
    let env = herald::definitions::env::EnvSource::Map(Default::default());
    let app = support::app::App::start(dir.path(), &env, db.store.clone(), &clock).await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        http.request(method, app.url(&format!("/api{path}")))
            .header("x-api-key", ADMIN_KEY)
            .send()
    };
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    let r = call(get.clone(), "/campaigns").await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["campaigns"][0]["id"], "reactivate");
    assert_eq!(body["campaigns"][0]["state"], "scheduled");
    assert_eq!(body["campaigns"][0]["kind"], "broadcast");

    let r = call(post.clone(), "/campaigns/reactivate/resume")
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "only a paused campaign resumes");
    let r = call(post.clone(), "/campaigns/reactivate/pause")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["state"], "paused");
    let r = call(post.clone(), "/campaigns/reactivate/resume")
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["state"], "running");
    let r = call(post.clone(), "/campaigns/reactivate/cancel")
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["state"], "cancelled");
    let r = call(post.clone(), "/campaigns/reactivate/pause")
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a cancelled campaign stays cancelled");
    let r = call(get, "/campaigns/nothing-here").await.unwrap();
    assert_eq!(r.status(), 404);
    drop(app);
    drop(db);
}

const REENGAGE: &str = r#"
kind: campaign
id: re-engage
audience: { lists: [stalled] }
schedule:
  send_at: "2026-11-02T15:00:00Z"
exit_when:
  replied: [sms]
  events: [loan.funded]
  status: [customer]
steps:
  - id: first
    send: { channel: hook, to: "{{ contact.email }}", body: "Still interested?" }
  - id: later
    wait: 2d
  - id: second
    send: { channel: hook, to: "{{ contact.email }}", body: "Last chance" }
"#;

async fn a_reply_or_a_funded_loan_ends_the_sequence(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/re-engage.yaml", REENGAGE)]).await;
    let with_phone = |email: &str, phone: &str| ContactUpsert {
        phone: Some(phone.to_owned()),
        ..contact(email, &["stalled"], &[], Some("lead"))
    };
    seed(
        &h,
        &[
            with_phone("ann@example.com", "+13035550101"),
            with_phone("bob@example.com", "+13035550102"),
            with_phone("cid@example.com", "+13035550103"),
            with_phone("dee@example.com", "+13035550104"),
        ],
    )
    .await;
    let scheduler = Scheduler::new(h.engine.clone());
    tick(&h, &scheduler).await;
    assert_eq!(h.sink.requests().len(), 4);

    // Ann texts back, Bob's loan is funded, Cid becomes a customer; Dee does nothing.
    h.engine
        .inbound_message("sms", "+13035550101", "yes please call me", None)
        .await
        .unwrap();
    h.engine
        .emit(
            "loan.funded",
            Some("bob@example.com"),
            serde_json::json!({}),
        )
        .await
        .unwrap();
    h.engine
        .store
        .insert_events(
            &[],
            &[],
            &[ContactUpsert {
                email: Some("cid@example.com".into()),
                status: Some("customer".into()),
                now: 1,
                ..ContactUpsert::default()
            }],
            &[],
        )
        .await
        .unwrap();
    h.advance(2 * DAY).await;
    tick(&h, &scheduler).await;
    let last: Vec<_> = received(&h.sink.requests())
        .into_iter()
        .filter(|(_, body)| body == "Last chance")
        .map(|(to, _)| to)
        .collect();
    assert_eq!(
        last,
        ["dee@example.com"],
        "only the one who did nothing hears again"
    );
    let counts = h.engine.store.campaign_counts("re-engage").await.unwrap();
    assert_eq!((counts.enrolled, counts.finished), (4, 4));
    assert_eq!(
        (counts.exited, counts.replied, counts.converted),
        (3, 1, 1),
        "Ann replied, Bob converted, Cid left by status; Dee went to the end"
    );
}

fn offer(id: &str, send_at: &str) -> String {
    format!(
        "kind: campaign\nid: {id}\naudience: {{ lists: [all] }}\nschedule:\n  send_at: \"{send_at}\"\nsteps:\n  - id: offer\n    send: {{ channel: hook, to: \"{{{{ contact.email }}}}\", body: \"{id}\" }}\n"
    )
}

/// `compliance.frequency_cap` counts every marketing message to a person, whichever campaign
/// (or workflow) sent it: the second campaign of the day is suppressed for those the first one
/// reached, and reaches who the first did not.
async fn a_frequency_cap_is_shared_by_two_campaigns(db: db::TestDb) {
    let first = offer("first-offer", "2026-11-02T15:00:00Z");
    let second = offer("second-offer", "2026-11-02T18:00:00Z");
    let h = Harness::new(
        db,
        &[
            ("workflows/first-offer.yaml", &first),
            ("workflows/second-offer.yaml", &second),
        ],
    )
    .await;
    h.write(
        "herald.yaml",
        "channels:\n  sms: { provider: log }\n  hook: { provider: webhook, url: \"{{SINK}}/deliver\" }\ncompliance:\n  frequency_cap: { messages: 1, per: 1d }\n",
    );
    h.reload().await;
    seed(&h, &[contact("ann@example.com", &["all"], &[], None)]).await;
    let scheduler = Scheduler::new(h.engine.clone());
    tick(&h, &scheduler).await;
    // Bob joins between the two sends.
    seed(&h, &[contact("bob@example.com", &["all"], &[], None)]).await;
    h.clock.advance(3 * HOUR);
    tick(&h, &scheduler).await;
    assert_eq!(
        received(&h.sink.requests()),
        [
            ("ann@example.com".to_owned(), "first-offer".to_owned()),
            ("bob@example.com".to_owned(), "second-offer".to_owned()),
        ]
    );
    let counts = h
        .engine
        .store
        .campaign_counts("second-offer")
        .await
        .unwrap();
    assert_eq!(
        counts.enrolled, 2,
        "both enrolled; the cap decided at the send"
    );
}

async fn a_throttle_paces_a_campaign_without_spending_attempts(db: db::TestDb) {
    let throttled =
        |rate: &str| BROADCAST.replace("steps:\n", &format!("throttle: {rate}\nsteps:\n"));
    let h = Harness::new(
        db,
        &[(
            "workflows/spring-offer.yaml",
            &throttled("{ messages: 1, per: 10s }"),
        )],
    )
    .await;
    let people: Vec<ContactUpsert> = (0..6)
        .map(|i| {
            contact(
                &format!("p{i}@example.com"),
                &["newsletter"],
                &[],
                Some("lead"),
            )
        })
        .collect();
    seed(&h, &people).await;
    let scheduler = Scheduler::new(h.engine.clone());
    h.clock.advance(HOUR);
    tick(&h, &scheduler).await;
    assert_eq!(h.sink.requests().len(), 1, "one message per 10 s");
    for n in 2..=3 {
        h.advance(Duration::from_secs(5)).await;
        assert_eq!(h.sink.requests().len(), n - 1, "not before its slot");
        h.advance(Duration::from_secs(5)).await;
        assert_eq!(h.sink.requests().len(), n, "one more after 10 s");
    }
    // Waiting for the throttle spends no attempt.
    let messages = h
        .engine
        .store
        .list_messages(&herald::store::OutboxFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        messages
            .iter()
            .filter(|m| m.status == herald::store::OutboxStatus::Sent)
            .all(|m| m.attempts == 1),
        "{:?}",
        messages.iter().map(|m| m.attempts).collect::<Vec<_>>()
    );

    // The rest went back to the outbox, each with its slot: 10 s apart.
    h.advance(Duration::from_secs(30)).await;
    assert_eq!(h.sink.requests().len(), 6, "everyone, once");
    assert_eq!(
        received(&h.sink.requests())
            .into_iter()
            .map(|(to, _)| to)
            .collect::<Vec<_>>(),
        (0..6)
            .map(|i| format!("p{i}@example.com"))
            .collect::<Vec<_>>()
    );
}

/// A config whose `hook` channel posts to the test's sink, with a contact schema.
const TYPED_CONFIG: &str = r#"
channels:
  hook: { provider: webhook, url: "{{SINK}}/deliver" }
contacts:
  attributes: { loan_amount: number, state: text, last_visit: date, vip: boolean }
"#;

/// A contact with `email` and attributes as stored (not typed: the store is handed what it
/// keeps, including what no typed write would keep, to show the query never fails on it).
fn with_attributes(email: &str, attributes: serde_json::Value, created: i64) -> ContactUpsert {
    ContactUpsert {
        new_id: herald::engine::new_id(),
        email: Some(email.to_owned()),
        attributes: attributes.as_object().unwrap().clone(),
        now: created,
        ..ContactUpsert::default()
    }
}

const BY_ATTRIBUTES: &str = r#"
kind: campaign
id: refinance
audience:
  attributes:
    loan_amount: { gte: 5000 }
    state: { in: [CO, UT] }
    last_visit: { older_than: 30d }
    vip: { ne: true }
  created: { before: "2026-06-01" }
schedule:
  send_at: "2026-11-02T15:00:00Z"
steps:
  - id: offer
    send: { channel: hook, to: "{{ contact.email }}", body: "Refinance" }
"#;

/// Each contact but two fails exactly one of the audience's tests; the clock is 2026-11-02.
async fn an_audience_tests_attributes_and_dates(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            ("herald.yaml", TYPED_CONFIG),
            ("workflows/refinance.yaml", BY_ATTRIBUTES),
        ],
    )
    .await;
    let early = 1_767_225_600_000; // 2026-01-01
    let late = 1_782_864_000_000; // 2026-07-01
    let match_all = |email: &str, created| {
        with_attributes(
            email,
            serde_json::json!({"loan_amount": 6000, "state": "CO", "last_visit": "2026-09-01", "vip": false}),
            created,
        )
    };
    let differ = |email: &str, key: &str, value: serde_json::Value| {
        let mut c = match_all(email, early);
        if value.is_null() {
            c.attributes.remove(key);
        } else {
            c.attributes.insert(key.into(), value);
        }
        c
    };
    seed(
        &h,
        &[
            match_all("ann@example.com", early),
            differ("hal@example.com", "vip", serde_json::Value::Null),
            differ("bob@example.com", "loan_amount", 4999.5.into()),
            differ("gus@example.com", "loan_amount", "9000".into()),
            differ("cid@example.com", "state", "TX".into()),
            differ(
                "dee@example.com",
                "last_visit",
                "2026-10-20T10:00:00-06:00".into(),
            ),
            differ("fay@example.com", "last_visit", "not a date".into()),
            differ("ivy@example.com", "last_visit", "now".into()),
            differ("eve@example.com", "vip", true.into()),
            match_all("joe@example.com", late),
        ],
    )
    .await;
    let scheduler = Scheduler::new(h.engine.clone());
    tick(&h, &scheduler).await;
    tick(&h, &scheduler).await;
    let to: Vec<String> = received(&h.sink.requests())
        .into_iter()
        .map(|(to, _)| to)
        .collect();
    assert_eq!(
        to,
        ["ann@example.com", "hal@example.com"],
        "hal has no `vip` (ne matches it); bob's amount is low, gus's is text, cid is in TX, \
         dee visited 13 days ago, fay's and ivy's visits are not dates, eve is a VIP, joe \
         was created after June"
    );
}

const WIN_BACK: &str = r#"
kind: campaign
id: win-back
audience:
  attributes:
    last_visit: { older_than: 30d }
schedule:
  cron: { schedule: "0 16 * * *", catch_up_window: 6h }
steps:
  - id: miss_you
    send: { channel: hook, to: "{{ contact.email }}", body: "We miss you" }
"#;

/// Every day at 16:00 UTC, who has not visited for 30 days hears from us, once ever.
async fn a_recurring_campaign_enrolls_at_each_time(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            ("herald.yaml", TYPED_CONFIG),
            ("workflows/win-back.yaml", WIN_BACK),
        ],
    )
    .await;
    let visited = |email: &str, when: &str| {
        with_attributes(email, serde_json::json!({ "last_visit": when }), 0)
    };
    seed(
        &h,
        &[
            visited("ann@example.com", "2026-08-01"),
            visited("bob@example.com", "2026-10-30"),
        ],
    )
    .await;
    let scheduler = Scheduler::new(h.engine.clone());
    let sent = |h: &Harness| -> Vec<String> {
        received(&h.sink.requests())
            .into_iter()
            .map(|(to, _)| to)
            .collect()
    };

    tick(&h, &scheduler).await;
    assert!(sent(&h).is_empty(), "15:00: not yet");
    let status = campaign::show(&h.engine, "win-back").await.unwrap();
    assert_eq!(
        (status.kind, status.state.as_str()),
        ("recurring", "scheduled")
    );

    h.clock.advance(HOUR);
    tick(&h, &scheduler).await;
    tick(&h, &scheduler).await;
    assert_eq!(sent(&h), ["ann@example.com"], "16:00: the lapsed one, once");
    let status = campaign::show(&h.engine, "win-back").await.unwrap();
    assert_eq!(
        status.state,
        campaign::RUNNING,
        "it stays running between times"
    );
    assert_eq!(status.occurrence.as_deref(), Some("2026-11-02T16:00:00Z"));

    // A month on, bob has lapsed too; ann, already enrolled once, is not enrolled again.
    h.clock.advance(30 * DAY);
    tick(&h, &scheduler).await;
    tick(&h, &scheduler).await;
    assert_eq!(sent(&h), ["ann@example.com", "bob@example.com"]);

    // Paused over a time, and resumed more than catch_up_window after it: that time is
    // passed over, not sent late.
    seed(&h, &[visited("cid@example.com", "2026-01-01")]).await;
    campaign::pause(&h.engine, "win-back").await.unwrap();
    h.clock.advance(DAY);
    tick(&h, &scheduler).await;
    h.clock.advance(7 * HOUR);
    campaign::resume(&h.engine, "win-back").await.unwrap();
    tick(&h, &scheduler).await;
    assert_eq!(sent(&h).len(), 2, "nothing late from the paused time");
    h.clock.advance(17 * HOUR);
    tick(&h, &scheduler).await;
    tick(&h, &scheduler).await;
    assert_eq!(
        sent(&h),
        ["ann@example.com", "bob@example.com", "cid@example.com"],
        "the next time enrolls who lapsed meanwhile"
    );
    let counts = h.engine.store.campaign_counts("win-back").await.unwrap();
    assert_eq!(counts.enrolled, 3);
}

const WINTER: &str = r#"
kind: campaign
id: winter-offer
audience:
  lists: [newsletter]
schedule:
  send_at: "2026-11-02T16:00:00Z"
steps:
  - id: offer
    send: { channel: hook, to: "{{ contact.email }}", body: "Winter offer" }
"#;

/// Runs and messages are claimed dozens at a time, and each batch reads its recipients, their
/// suppressions and its campaign's state together. An opt-out recorded before the batch is
/// read still stops the message, whether it comes before the send step or while the message
/// waits in the outbox, and nobody else is held back.
async fn every_opt_out_holds_when_recipients_are_read_in_batches(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/winter-offer.yaml", WINTER)]).await;
    let email = |i: usize| format!("c{i:02}@example.com");
    let people: Vec<_> = (0..40)
        .map(|i| contact(&email(i), &["newsletter"], &[], Some("lead")))
        .collect();
    seed(&h, &people).await;
    let scheduler = Scheduler::new(h.engine.clone());
    h.clock.advance(HOUR);
    scheduler.tick().await.unwrap();
    assert_eq!(
        h.engine
            .store
            .campaign_counts("winter-offer")
            .await
            .unwrap()
            .enrolled,
        40
    );

    // Before the send step: 0-4 bounced on the channel, 5-9 unsubscribed.
    let suppress = |from: usize, reason: &'static str| {
        let h = &h;
        async move {
            for i in from..from + 5 {
                h.engine
                    .store
                    .suppress_address("hook", &email(i), reason, None, 0)
                    .await
                    .unwrap();
            }
        }
    };
    let set_status = |from: usize, status: &'static str| {
        let h = &h;
        async move {
            let changed: Vec<_> = (from..from + 5)
                .map(|i| contact(&email(i), &[], &[], Some(status)))
                .collect();
            seed(h, &changed).await;
        }
    };
    suppress(0, "bounced").await;
    set_status(5, "unsubscribed").await;
    let executed = h.engine.run_due().await.unwrap();
    assert_eq!(executed, 40);

    // While the messages wait in the outbox: 10-14 complained, 15-19 opted out.
    suppress(10, "complained").await;
    set_status(15, "opted_out").await;
    h.engine.deliver_due().await.unwrap();
    h.settle().await;

    let sent: Vec<String> = received(&h.sink.requests())
        .into_iter()
        .map(|(to, _)| to)
        .collect();
    assert_eq!(
        sent,
        (20..40).map(email).collect::<Vec<_>>(),
        "everyone who did not opt out, once"
    );

    // The step log says why the first ten got nothing; the outbox says why the next ten did not.
    let runs = h
        .engine
        .store
        .list_runs(&herald::store::RunFilter {
            workflow_id: Some("winter-offer".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut held_at_send = Vec::new();
    for run in &runs {
        let log = h.engine.store.step_log(&run.id).await.unwrap();
        let out = log[0].output.clone().unwrap_or_default();
        if out["status"] == "suppressed" {
            held_at_send.push((
                out["to"].as_str().unwrap_or_default().to_owned(),
                out["reason"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    held_at_send.sort();
    assert_eq!(held_at_send.len(), 10, "{held_at_send:?}");
    for (n, (to, reason)) in held_at_send.iter().enumerate() {
        assert_eq!(to, &email(n));
        let why = if n < 5 { "bounced" } else { "unsubscribed" };
        assert!(reason.contains(why), "{to}: {reason}");
    }
    let mut held_at_delivery: Vec<String> = h
        .engine
        .store
        .list_messages(&herald::store::OutboxFilter {
            status: Some(herald::store::OutboxStatus::Suppressed),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.recipient)
        .collect();
    held_at_delivery.sort();
    assert_eq!(held_at_delivery, (10..20).map(email).collect::<Vec<_>>());
}
