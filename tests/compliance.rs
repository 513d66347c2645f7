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

db::scenarios!["compliance";
    a_stop_reply_wins_over_the_flow_waiting_for_it,
    a_message_waiting_to_retry_is_not_sent_after_stop,
    categories_decide_who_still_gets_a_message,
    an_opt_in_word_resubscribes_only_an_opted_out_sender,
    local_numbers_are_read_in_the_default_region,
    quiet_hours_hold_marketing_until_morning_where_the_recipient_is,
    a_frequency_cap_suppresses_marketing_over_it,
    help_is_answered_once_with_the_configured_text,
    a_permanent_failure_goes_to_the_fallback_channel,
    a_paced_channel_spreads_a_backlog_without_spending_attempts,
    stop_from_a_chat_suppresses_that_chat_and_start_lifts_it,
    a_fallback_that_fails_too_is_where_the_message_ends,
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
        .insert_events(&[], &[], &seeds, &[])
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

/// Writes a config whose `hook` channel posts to the sink with `policy` (YAML lines, indented
/// under the channel), plus `extra` top-level YAML, and reloads.
async fn with_config(h: &Harness, policy: &str, extra: &str) {
    h.write(
        "herald.yaml",
        &format!(
            "channels:\n  email: {{ provider: log }}\n  sms: {{ provider: log }}\n  hook:\n    provider: webhook\n    url: \"{{{{SINK}}}}/deliver\"\n{policy}{extra}"
        ),
    );
    h.reload().await;
}

fn contact(email: &str, timezone: Option<&str>, now: i64) -> ContactUpsert {
    ContactUpsert {
        new_id: herald::engine::new_id(),
        email: Some(email.to_owned()),
        timezone: timezone.map(str::to_owned),
        now,
        ..ContactUpsert::default()
    }
}

const NOTIFY: &str = r#"
kind: workflow
id: notify
steps:
  - id: marketing
    send: { channel: hook, to: "{{ body.to }}", body: "marketing" }
  - id: transactional
    send: { channel: hook, to: "{{ body.to }}", body: "transactional", category: transactional }
"#;

async fn quiet_hours_hold_marketing_until_morning_where_the_recipient_is(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/notify.yaml", NOTIFY)]).await;
    h.sink.respond_by_default(Reply::ok());
    with_config(
        &h,
        "    quiet_hours: { start: \"21:00\", end: \"08:00\" }\n",
        "",
    )
    .await;
    let now = h.clock.now();
    let people = [
        contact("chicago@example.com", Some("America/Chicago"), now),
        contact("berlin@example.com", Some("Europe/Berlin"), now),
    ];
    h.engine
        .store
        .insert_events(&[], &[], &people, &[])
        .await
        .unwrap();
    // 21:30 UTC on 2 November: 15:30 in Chicago, 22:30 in Berlin.
    h.advance(Duration::from_secs(6 * 3600 + 1800)).await;
    let chicago = h
        .start("notify", json!({"to": "chicago@example.com"}))
        .await;
    let berlin = h.start("notify", json!({"to": "berlin@example.com"})).await;
    let unknown = h.start("notify", json!({"to": "nobody@example.com"})).await;

    let sent = h.sink.requests();
    assert_eq!(
        texts_to(&sent, "chicago@example.com").len(),
        2,
        "afternoon in Chicago"
    );
    assert_eq!(
        texts_to(&sent, "berlin@example.com"),
        ["transactional"],
        "only the transactional message goes at night in Berlin"
    );
    assert_eq!(
        texts_to(&sent, "nobody@example.com").len(),
        2,
        "a recipient in no known time zone is not held"
    );
    let run = h.run(&berlin).await;
    let out = &run.context["steps"]["marketing"]["output"];
    assert_eq!(out["status"], "held", "{out}");
    assert_eq!(out["until"], "2026-11-03T07:00:00Z", "08:00 in Berlin");
    assert!(
        out["reason"]
            .as_str()
            .unwrap()
            .contains("21:00–08:00 in Europe/Berlin"),
        "{out}"
    );
    assert_eq!(run.status, RunStatus::Completed, "the run does not wait");
    for id in [&chicago, &unknown] {
        assert_eq!(
            h.run(id).await.context["steps"]["marketing"]["output"]["status"],
            "queued"
        );
    }

    // A minute before 08:00 in Berlin it still waits; at 08:00 it goes.
    h.advance(Duration::from_secs(9 * 3600 + 29 * 60)).await;
    assert_eq!(
        texts_to(&h.sink.requests(), "berlin@example.com"),
        ["transactional"]
    );
    h.advance(Duration::from_secs(60)).await;
    let mut got = texts_to(&h.sink.requests(), "berlin@example.com");
    got.sort();
    assert_eq!(got, ["marketing", "transactional"]);
    let outbox = h.engine.store.outbox_for_run(&berlin).await.unwrap();
    assert!(outbox.iter().all(|m| m.status == OutboxStatus::Sent));
}

async fn a_frequency_cap_suppresses_marketing_over_it(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/burst.yaml",
            r#"
kind: workflow
id: burst
steps:
  - id: one
    send: { channel: hook, to: "{{ body.to }}", body: "one" }
  - id: two
    send: { channel: hook, to: "{{ body.to }}", body: "two" }
  - id: receipt
    send: { channel: hook, to: "{{ body.to }}", body: "receipt", category: transactional }
"#,
        )],
    )
    .await;
    h.sink.respond_by_default(Reply::ok());
    with_config(
        &h,
        "",
        "compliance:\n  frequency_cap: { messages: 3, per: 1d }\n",
    )
    .await;
    let to = "ada@example.com";
    let first = h.start("burst", json!({"to": to})).await;
    let second = h.start("burst", json!({"to": to})).await;
    let mut got = texts_to(&h.sink.requests(), to);
    got.sort();
    assert_eq!(
        got,
        ["one", "one", "receipt", "receipt", "two"],
        "three marketing messages a day, and receipts are not counted"
    );
    assert_eq!(
        h.run(&first).await.context["steps"]["two"]["output"]["status"],
        "queued"
    );
    let out = h.run(&second).await.context["steps"]["two"]["output"].clone();
    assert_eq!(out["status"], "suppressed", "{out}");
    let reason = out["reason"].as_str().unwrap();
    assert!(
        reason.contains("frequency cap") && reason.contains("already has 3"),
        "{reason}"
    );
    // Someone else is not affected; a day later the cap has room again.
    h.start("burst", json!({"to": "grace@example.com"})).await;
    assert_eq!(texts_to(&h.sink.requests(), "grace@example.com").len(), 3);
    h.advance(Duration::from_secs(86_400)).await;
    let third = h.start("burst", json!({"to": to})).await;
    let run = h.run(&third).await;
    assert_eq!(run.context["steps"]["one"]["output"]["status"], "queued");
    assert_eq!(run.context["steps"]["two"]["output"]["status"], "queued");
}

async fn help_is_answered_once_with_the_configured_text(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/assistant.yaml",
            &ASSISTANT.replace("channel: sms", "channel: hook"),
        )],
    )
    .await;
    h.sink.respond_by_default(Reply::ok());
    let reply = "Acme Motors: service reminders. Reply STOP to opt out.";
    with_config(&h, "", &format!("compliance:\n  help_reply: \"{reply}\"\n")).await;
    let from = "+13035550100";
    for _ in 0..2 {
        // Providers redeliver: the same message id is answered once.
        let routed = h
            .engine
            .inbound_message("hook", from, " help ", Some("SM-help-1"))
            .await
            .unwrap();
        assert!(routed.keyword.is_some(), "HELP is a compliance keyword");
        assert!(
            routed.started_runs.is_empty(),
            "HELP does not reach the assistant"
        );
        h.settle().await;
    }
    h.engine
        .inbound_message("hook", from, "INFO", Some("SM-info-1"))
        .await
        .unwrap();
    h.settle().await;
    assert_eq!(texts_to(&h.sink.requests(), from), [reply, reply]);
    let help = h
        .engine
        .store
        .find_event("contact.help", from, 0, &[])
        .await
        .unwrap();
    assert!(help.is_some(), "a HELP is an event workflows can use");
    // The reply reaches someone who opted out of marketing too (it is a compliance message).
    h.engine
        .inbound_message("hook", "+13035550101", "STOP", Some("SM-stop"))
        .await
        .unwrap();
    h.engine
        .inbound_message("hook", "+13035550101", "HELP", Some("SM-help-2"))
        .await
        .unwrap();
    h.settle().await;
    assert_eq!(texts_to(&h.sink.requests(), "+13035550101"), [reply]);
}

async fn a_permanent_failure_goes_to_the_fallback_channel(db: db::TestDb) {
    let h = Harness::new(db, &[]).await;
    h.sink.respond_by_default(Reply::ok());
    h.sink.respond_to_path("/primary", Reply::status(503));
    with_config(
        &h,
        "",
        "  primary:\n    provider: webhook\n    url: \"{{SINK}}/primary\"\n    fallback: hook\n",
    )
    .await;
    h.write(
        "workflows/letter.yaml",
        r#"
kind: workflow
id: letter
steps:
  - id: mail
    send: { channel: primary, to: "{{ body.to }}", subject: "Your letter", body: "letter", category: transactional }
    retry: { max_attempts: 2, delay: 1m }
"#,
    );
    h.reload().await;
    let to = "client@example.com";
    let run = h.start("letter", json!({"to": to})).await;
    let on = |path: &str| h.sink.requests().iter().filter(|r| r.path == path).count();
    assert_eq!(
        (on("/primary"), on("/deliver")),
        (1, 0),
        "a 503 is retried first"
    );
    h.advance(Duration::from_secs(120)).await;
    assert_eq!(
        (on("/primary"), on("/deliver")),
        (2, 1),
        "after its retries the fallback takes it"
    );
    let delivered = h
        .sink
        .requests()
        .into_iter()
        .find(|r| r.path == "/deliver")
        .unwrap();
    assert_eq!(delivered.json["body"], "letter");
    assert_eq!(delivered.json["subject"], "Your letter");
    let outbox = h.engine.store.outbox_for_run(&run).await.unwrap();
    let statuses: Vec<(&str, OutboxStatus)> = outbox
        .iter()
        .map(|m| (m.channel.as_str(), m.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("primary", OutboxStatus::Failed),
            ("hook", OutboxStatus::Sent)
        ]
    );
    assert!(
        outbox[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("handed to channel `hook`"),
        "{:?}",
        outbox[0].last_error
    );
    // Nothing more happens later: one fallback, once.
    h.advance(Duration::from_secs(3600)).await;
    assert_eq!((on("/primary"), on("/deliver")), (2, 1));
}

async fn a_paced_channel_spreads_a_backlog_without_spending_attempts(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/blast.yaml",
            r#"
kind: workflow
id: blast
steps:
  - id: each
    for_each:
      items: body.to
      steps:
        - id: text
          send: { channel: hook, to: "{{ item }}", body: "hello", category: transactional }
"#,
        )],
    )
    .await;
    h.sink.respond_by_default(Reply::ok());
    with_config(&h, "    rate: { messages: 1, per: 10s }\n", "").await;
    let to: Vec<String> = (0..4).map(|i| format!("p{i}@example.com")).collect();
    let run = h.start("blast", json!({"to": to})).await;
    assert_eq!(h.sink.requests().len(), 1, "one message per 10 s");
    for n in 2..=4 {
        h.advance(Duration::from_secs(5)).await;
        assert_eq!(h.sink.requests().len(), n - 1, "not before its slot");
        h.advance(Duration::from_secs(5)).await;
        assert_eq!(h.sink.requests().len(), n, "one more after 10 s");
    }
    let outbox = h.engine.store.outbox_for_run(&run).await.unwrap();
    assert!(outbox.iter().all(|m| m.status == OutboxStatus::Sent));
    assert!(
        outbox.iter().all(|m| m.attempts == 1),
        "waiting for the pace spends no attempt: {:?}",
        outbox.iter().map(|m| m.attempts).collect::<Vec<_>>()
    );
}

async fn stop_from_a_chat_suppresses_that_chat_and_start_lifts_it(db: db::TestDb) {
    let h = Harness::new(db, &[]).await;
    h.sink.respond_by_default(
        Reply::ok().json(json!({"ok": true, "result": {"message_id": 1, "chat": {"id": 1}}})),
    );
    with_config(
        &h,
        "",
        "  tg:\n    provider: telegram\n    bot_token: \"123:abc\"\n    secret_token: s3cret\n    api_base: \"{{SINK}}\"\n",
    )
    .await;
    h.write(
        "workflows/promo.yaml",
        r#"
kind: workflow
id: promo
steps:
  - id: offer
    send: { channel: tg, to: "{{ body.chat }}", body: "This week only: free oil change" }
  - id: receipt
    send: { channel: tg, to: "{{ body.chat }}", body: "Your booking is confirmed", category: transactional }
"#,
    );
    h.reload().await;
    let chat = "5551234567";
    let statuses = |run: herald::store::RunRecord| {
        (
            run.context["steps"]["offer"]["output"]["status"].clone(),
            run.context["steps"]["receipt"]["output"]["status"].clone(),
        )
    };
    let run = h.start("promo", json!({"chat": chat})).await;
    assert_eq!(
        statuses(h.run(&run).await),
        (json!("queued"), json!("queued"))
    );

    let routed = h
        .engine
        .inbound_message("tg", chat, "STOP", Some("u1"))
        .await
        .unwrap();
    assert!(routed.keyword.is_some());
    let run = h.start("promo", json!({"chat": chat})).await;
    assert_eq!(
        statuses(h.run(&run).await),
        (json!("suppressed"), json!("queued")),
        "after STOP the chat gets no marketing; what it asked for still reaches it"
    );
    // Another chat is not affected; a chat id is never read as a phone number.
    let other = h.start("promo", json!({"chat": "5551234568"})).await;
    assert_eq!(statuses(h.run(&other).await).0, json!("queued"));

    h.engine
        .inbound_message("tg", chat, "START", Some("u2"))
        .await
        .unwrap();
    let run = h.start("promo", json!({"chat": chat})).await;
    assert_eq!(
        statuses(h.run(&run).await).0,
        json!("queued"),
        "START lifts it"
    );
}

async fn a_fallback_that_fails_too_is_where_the_message_ends(db: db::TestDb) {
    let h = Harness::new(db, &[]).await;
    // Both providers are down.
    h.sink.respond_by_default(Reply::status(503));
    with_config(
        &h,
        "",
        "  primary:\n    provider: webhook\n    url: \"{{SINK}}/primary\"\n    fallback: hook\n",
    )
    .await;
    h.write(
        "workflows/letter.yaml",
        r#"
kind: workflow
id: letter
steps:
  - id: mail
    send: { channel: primary, to: "{{ body.to }}", body: "letter", category: transactional }
    retry: { max_attempts: 2, delay: 1m }
"#,
    );
    h.reload().await;
    let run = h.start("letter", json!({"to": "client@example.com"})).await;
    for _ in 0..3 {
        h.advance(Duration::from_secs(120)).await;
    }
    h.advance(Duration::from_secs(3600)).await;
    let outbox = h.engine.store.outbox_for_run(&run).await.unwrap();
    let statuses: Vec<(&str, OutboxStatus, i64)> = outbox
        .iter()
        .map(|m| (m.channel.as_str(), m.status, m.attempts))
        .collect();
    assert_eq!(
        statuses,
        [
            ("primary", OutboxStatus::Failed, 2),
            ("hook", OutboxStatus::Failed, 2)
        ],
        "each channel tried with the step's retry policy, then nothing more"
    );
    assert_eq!(h.sink.requests().len(), 4);
    assert!(
        outbox[1]
            .last_error
            .as_deref()
            .unwrap()
            .contains("after 2 attempts"),
        "{:?}",
        outbox[1].last_error
    );
}
