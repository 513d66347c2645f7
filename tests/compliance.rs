//! Compliance: an opt-out wins every race. A STOP is handled before any other routing of the
//! message, and suppression is checked again when a queued message is delivered. Messages are
//! delivered to a real HTTP server on loopback, so what "was sent" is what that server
//! received. Every scenario runs on SQLite and on PostgreSQL.

#[path = "support/db.rs"]
mod db;
#[path = "support/engine.rs"]
mod engine_support;
mod support;

use std::time::Duration;

use engine_support::Harness;
use herald::definitions::env::EnvSource;
use herald::definitions::project::Layout;
use herald::engine::clock::Clock as _;
use herald::store::{ContactUpsert, OutboxStatus, RunStatus};
use serde_json::json;
use support::{ReceivedRequest, Reply};

macro_rules! scenarios {
    ($($s:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $s() {
                    let Some(db) = crate::db::sqlite(stringify!($s)).await else { return };
                    crate::$s(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $s() {
                    let Some(db) = crate::db::postgres(concat!("compliance::", stringify!($s))).await else { return };
                    crate::$s(db).await;
                }
            )*
        }
    };
}

scenarios![
    a_stop_reply_wins_over_the_flow_waiting_for_it,
    a_message_waiting_to_retry_is_not_sent_after_stop,
    categories_decide_who_still_gets_a_message,
    an_opt_in_word_resubscribes_only_an_opted_out_sender,
    local_numbers_are_read_in_the_default_region,
];

/// Times each compliance race is run.
const ROUNDS: usize = 100;

/// What the HTTP sink received for one recipient, as the message texts.
fn texts_to(requests: &[ReceivedRequest], to: &str) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.json["to"] == to)
        .map(|r| r.json["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

const TEXTBACK: &str = r#"
kind: workflow
id: textback
steps:
  - id: caller
    upsert_contact: { phone: "{{ body.from }}" }
  - id: sorry
    send: { channel: hook, to: "{{ contact.phone }}", body: "Sorry we missed you" }
  - id: reply
    wait_for: { reply: sms, key: "{{ contact.phone }}", timeout: 2h }
  - id: thanks
    send: { channel: hook, to: "{{ contact.phone }}", body: "Thanks for getting back to us" }
"#;

const CONFIRM: &str = r#"
kind: workflow
id: confirm-opt-out
triggers:
  - message: { channel: sms, keyword: [STOP, UNSUBSCRIBE] }
steps:
  - id: confirm
    send:
      channel: hook
      to: "{{ message.from }}"
      body: "You are unsubscribed"
      category: compliance
"#;

/// Answers every inbound text; it must never see a STOP.
const ASSISTANT: &str = r#"
kind: workflow
id: assistant
triggers:
  - message: { channel: sms }
steps:
  - id: answer
    send: { channel: hook, to: "{{ message.from }}", body: "An assistant's answer" }
"#;

async fn a_stop_reply_wins_over_the_flow_waiting_for_it(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            ("workflows/textback.yaml", TEXTBACK),
            ("workflows/confirm.yaml", CONFIRM),
            ("workflows/assistant.yaml", ASSISTANT),
        ],
    )
    .await;
    h.sink.respond_by_default(Reply::ok());
    for round in 0..ROUNDS {
        let phone = format!("+1303555{round:04}");
        let run = h.start("textback", json!({"from": phone})).await;
        assert_eq!(h.run(&run).await.status, RunStatus::Waiting);
        let routed = h
            .engine
            .inbound_message("sms", &phone, "Stop", Some(&format!("SM{round}")))
            .await
            .unwrap();
        assert!(routed.keyword.is_some(), "STOP in any case is an opt-out");
        h.settle().await;
        // The waiting flow is not woken by the STOP: it times out, and its text is suppressed.
        h.advance(Duration::from_secs(3 * 3600)).await;

        assert_eq!(
            texts_to(&h.sink.requests(), &phone),
            ["Sorry we missed you", "You are unsubscribed"],
            "round {round}: only the text before STOP and the confirmation"
        );
        let run = h.run(&run).await;
        assert_eq!(run.status, RunStatus::Completed, "round {round}");
        assert_eq!(
            run.context["steps"]["reply"]["output"]["timed_out"], true,
            "round {round}: a STOP is not a reply"
        );
        assert_eq!(
            run.context["steps"]["thanks"]["output"]["status"], "suppressed",
            "round {round}"
        );
        let contact = h
            .engine
            .store
            .find_contact(None, Some(&phone))
            .await
            .unwrap()
            .expect("the contact exists");
        assert_eq!(contact.status.as_deref(), Some("opted_out"));
        assert_eq!(
            routed.started_runs.len(),
            1,
            "round {round}: only the workflow that names STOP starts, not the assistant"
        );
    }
    // An ordinary text still reaches the assistant.
    let routed = h
        .engine
        .inbound_message("sms", "+13035559999", "what time do you open?", None)
        .await
        .unwrap();
    assert_eq!(routed.keyword, None);
    assert_eq!(routed.started_runs.len(), 1);
}

async fn a_message_waiting_to_retry_is_not_sent_after_stop(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/promo.yaml",
            r#"
kind: workflow
id: promo
steps:
  - id: offer
    send: { channel: hook, to: "{{ body.phone }}", body: "20% off this week" }
    retry: { max_attempts: 5, delay: 1m, jitter: false }
"#,
        )],
    )
    .await;
    for round in 0..ROUNDS {
        let phone = format!("+1720555{round:04}");
        // The provider is down for the first attempt: the message waits a minute to retry.
        h.sink.respond_to_recipient(&phone, Reply::status(503));
        let run = h.start("promo", json!({"phone": phone})).await;
        let queued = h.engine.store.outbox_for_run(&run).await.unwrap();
        assert_eq!(queued[0].status, OutboxStatus::Pending, "round {round}");
        assert_eq!(queued[0].attempts, 1, "round {round}: one attempt failed");

        h.engine
            .inbound_message("sms", &phone, "STOP", None)
            .await
            .unwrap();
        h.sink.respond_to_recipient(&phone, Reply::ok());
        h.advance(Duration::from_secs(600)).await;

        let requests: Vec<_> = h
            .sink
            .requests()
            .into_iter()
            .filter(|r| r.json["to"] == phone.as_str())
            .collect();
        assert_eq!(
            requests.len(),
            1,
            "round {round}: only the attempt before the STOP reached the provider"
        );
        assert_eq!(requests[0].answered, 503);
        let m = &h.engine.store.outbox_for_run(&run).await.unwrap()[0];
        assert_eq!(m.status, OutboxStatus::Suppressed, "round {round}");
        assert!(
            m.last_error
                .as_deref()
                .unwrap_or_default()
                .contains("opted_out"),
            "{:?}",
            m.last_error
        );
    }
}

async fn categories_decide_who_still_gets_a_message(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/notify.yaml",
            r#"
kind: workflow
id: notify
steps:
  - id: marketing
    send: { channel: hook, to: "{{ body.to }}", body: "marketing" }
  - id: transactional
    send: { channel: hook, to: "{{ body.to }}", body: "transactional", category: transactional }
  - id: compliance
    send: { channel: hook, to: "{{ body.to }}", body: "compliance", category: compliance }
"#,
        )],
    )
    .await;
    h.sink.respond_by_default(Reply::ok());
    let cases: [(&str, Option<&str>, &[&str]); 6] = [
        (
            "active@example.com",
            Some("active"),
            &["marketing", "transactional", "compliance"],
        ),
        (
            "nobody@example.com",
            None,
            &["marketing", "transactional", "compliance"],
        ),
        (
            "unsubscribed@example.com",
            Some("unsubscribed"),
            &["transactional", "compliance"],
        ),
        ("opted-out@example.com", Some("opted_out"), &["compliance"]),
        (
            "complained@example.com",
            Some("complained"),
            &["compliance"],
        ),
        ("bounced@example.com", Some("bounced"), &[]),
    ];
    let now = h.clock.now();
    let seeds: Vec<ContactUpsert> = cases
        .iter()
        .filter(|(_, status, _)| status.is_some())
        .map(|(email, status, _)| ContactUpsert {
            new_id: herald::engine::new_id(),
            email: Some((*email).to_owned()),
            status: status.map(str::to_owned),
            now,
            ..ContactUpsert::default()
        })
        .collect();
    h.engine
        .store
        .insert_events(&[], &[], &seeds)
        .await
        .unwrap();
    for (email, status, expected) in cases {
        let run = h.start("notify", json!({"to": email})).await;
        // Messages of one segment are delivered concurrently, in no set order.
        let mut got = texts_to(&h.sink.requests(), email);
        got.sort();
        let mut want = expected.to_vec();
        want.sort();
        assert_eq!(got, want, "a contact whose status is {status:?}");
        let run = h.run(&run).await;
        for category in ["marketing", "transactional", "compliance"] {
            let out = &run.context["steps"][category]["output"];
            let sent = expected.contains(&category);
            assert_eq!(
                out["status"],
                if sent { "queued" } else { "suppressed" },
                "{category} to {email}: {out}"
            );
        }
    }
}

async fn an_opt_in_word_resubscribes_only_an_opted_out_sender(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            (
                "workflows/ask.yaml",
                r#"
kind: workflow
id: ask
steps:
  - id: question
    wait_for: { reply: sms, key: "{{ body.phone }}", timeout: 1h }
"#,
            ),
            (
                "workflows/welcome-back.yaml",
                r#"
kind: workflow
id: welcome-back
triggers:
  - event: { name: contact.opted_in }
steps:
  - id: note
    set: { who: "{{ event.key }}" }
"#,
            ),
        ],
    )
    .await;
    // YES from someone who never opted out is an answer like any other.
    let run = h.start("ask", json!({"phone": "+13035550100"})).await;
    let routed = h
        .engine
        .inbound_message("sms", "+13035550100", "yes", None)
        .await
        .unwrap();
    assert_eq!(routed.keyword, None);
    h.settle().await;
    let run = h.run(&run).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.context["steps"]["question"]["output"]["text"], "yes");

    // From someone who opted out, it subscribes them again and says so.
    let phone = "+13035550101";
    h.engine
        .inbound_message("sms", phone, "STOP", None)
        .await
        .unwrap();
    let routed = h
        .engine
        .inbound_message("sms", phone, "YES", None)
        .await
        .unwrap();
    assert!(routed.keyword.is_some());
    assert_eq!(
        routed.started_runs.len(),
        1,
        "contact.opted_in starts its subscriber"
    );
    h.settle().await;
    let contact = h
        .engine
        .store
        .find_contact(None, Some(phone))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contact.status.as_deref(), Some("subscribed"));
    let started = h.run(&routed.started_runs[0]).await;
    assert_eq!(started.status, RunStatus::Completed);
    assert_eq!(started.context["vars"]["who"], phone);
}

/// With `contacts.default_region: GB`, a number written without a country code is a British
/// one wherever a number is read: a contact's phone, a STOP's sender, a message's recipient.
async fn local_numbers_are_read_in_the_default_region(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            (
                "herald.yaml",
                "contacts: { default_region: GB }\nchannels:\n  sms: { provider: log }\n",
            ),
            (
                "workflows/signup.yaml",
                r#"
kind: workflow
id: signup
steps:
  - id: who
    upsert_contact: { phone: "{{ body.phone }}" }
  - id: hello
    send: { channel: sms, to: "{{ body.phone }}", body: "Hello" }
"#,
            ),
        ],
    )
    .await;
    let run = h.start("signup", json!({"phone": "07911 123456"})).await;
    h.settle().await;
    let run = h.run(&run).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.context["contact"]["phone"], "+447911123456");
    assert_eq!(run.context["steps"]["hello"]["output"]["status"], "queued");

    h.engine
        .inbound_message("sms", "07911123456", "STOP", None)
        .await
        .unwrap();
    let contact = h
        .engine
        .store
        .find_contact(None, Some("+447911123456"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contact.status.as_deref(), Some("opted_out"));
    let again = h.start("signup", json!({"phone": "07911 123456"})).await;
    h.settle().await;
    let again = h.run(&again).await;
    assert_eq!(
        again.context["steps"]["hello"]["output"]["status"], "suppressed",
        "the local number is the opted-out contact"
    );
}

/// The example project's own opt-out workflow sends the confirmation carriers require, to a
/// sender Herald has just marked opted out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_opt_out_example_sends_its_confirmation() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let env = EnvSource::with_env_file(&root.join("examples.env")).expect("examples.env");
    let layout = Layout::discover(root).unwrap();
    let start = jiff::Timestamp::now().as_millisecond();
    let (registry, _) = herald::engine::load_registry(&layout, &env, 1, start)
        .unwrap_or_else(|r| panic!("the example project loads: {:?}", r.diagnostics));
    let sim = herald::harness::Harness::new(registry, env, start)
        .await
        .unwrap();
    let routed = sim
        .engine
        .inbound_message("sms", "+13035550123", "stop", None)
        .await
        .unwrap();
    assert!(routed.keyword.is_some());
    sim.run_to_end().await.unwrap();
    let reports = sim.report().await.unwrap();
    let opt_out = reports
        .iter()
        .find(|r| r.run.workflow_id == "sms-opt-out")
        .expect("the opt-out workflow ran");
    assert_eq!(
        opt_out.run.status,
        RunStatus::Completed,
        "{:?}",
        opt_out.run.error
    );
    assert_eq!(opt_out.messages.len(), 1, "{:?}", opt_out.steps);
    assert_eq!(opt_out.messages[0].status, OutboxStatus::Sent);
    assert!(opt_out.messages[0].body.contains("unsubscribed"));
}
