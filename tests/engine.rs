//! The engine, end to end on a virtual clock: every step kind, waits, retries, events, calls,
//! contacts, crash recovery, versions and the outbox. Every scenario runs on SQLite (a fresh
//! file) and on PostgreSQL (a fresh schema; skipped, and said so, without
//! `HERALD_TEST_POSTGRES_URL`). HTTP calls and webhook deliveries go to a real HTTP server on
//! loopback.

#[path = "support/db.rs"]
mod db;
#[path = "support/engine.rs"]
mod engine_support;
mod support;

use engine_support::{Harness, webhook};

use std::time::Duration;

use herald::engine::StartRun;
use herald::engine::clock::Clock;
use herald::store::{Commit, OutboxStatus, RunState, RunStatus, RunWrite, StoreError};
use serde_json::json;
use std::str::FromStr as _;
use support::Reply;

db::scenarios!["engine";
    upsert_contact_stores_declared_attributes_as_their_types,
    a_flow_started_by_a_text_waits_for_the_next_one,
    set_and_respond_complete_in_one_commit,
    a_wait_holds_the_run_until_the_clock_reaches_it,
    wait_until_a_rendered_time,
    wait_for_sees_an_event_that_arrived_before_it_waited,
    wait_for_wakes_on_a_later_event_and_times_out_otherwise,
    transient_failures_retry_with_backoff_until_they_succeed,
    exhausted_retries_fail_the_run_with_the_error_kept,
    permanent_errors_are_not_retried,
    branches_and_loops_follow_the_data,
    emit_starts_subscribers_that_pass_their_filter,
    call_waits_for_the_child_and_returns_its_vars,
    a_failed_child_fails_the_parent,
    contacts_merge_and_opted_out_recipients_get_nothing,
    idempotency_key_returns_the_original_run,
    a_crashed_workers_run_is_resumed_after_its_lease_expires,
    waiting_runs_move_to_the_new_version_only_when_asked,
    a_template_edit_reaches_the_next_message_of_a_waiting_run,
    cancel_stops_a_run_and_its_queued_messages,
    retry_resumes_a_failed_run_at_the_failed_step,
    deliveries_retry_transient_failures_and_fail_permanent_ones,
    http_steps_send_an_idempotency_key_and_keep_the_response,
    a_slow_http_call_times_out_as_a_transient_error,
    inbound_messages_start_keyword_workflows_and_answer_waiting_replies,
];

async fn set_and_respond_complete_in_one_commit(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/greet.yaml",
            r#"
kind: workflow
id: greet
steps:
  - id: greet
    set:
      name: "{{ body.firstName | first_name }}"
      greeting: "Hi {{ vars.name }}, your pre-approval is waiting"
      amount: "{{ body.amount // 100 }}"
  - id: reply
    respond:
      status: 201
      body: { greeting: "{{ vars.greeting }}", amount: "{{ vars.amount }}" }
"#,
        )],
    )
    .await;
    let id = h
        .start("greet", json!({"firstName": "ada", "amount": 25000}))
        .await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(
        run.context["vars"]["greeting"],
        "Hi Ada, your pre-approval is waiting"
    );
    // A value that is exactly one expression keeps its type.
    assert_eq!(run.context["vars"]["amount"], json!(250));
    assert_eq!(run.response.as_ref().unwrap()["status"], 201);
    assert_eq!(
        run.response.as_ref().unwrap()["body"]["greeting"],
        "Hi Ada, your pre-approval is waiting"
    );
    assert_eq!(
        h.trail(&id).await,
        vec!["greet:completed", "reply:completed"]
    );
    assert_eq!(run.finished_at, Some(h.at(Duration::ZERO)));
}

async fn a_wait_holds_the_run_until_the_clock_reaches_it(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/nudge.yaml",
            r#"
kind: workflow
id: nudge
steps:
  - id: pause
    wait: 2d
  - id: nudge
    send: { channel: hook, to: "{{ body.email }}", subject: "Still there?", body: "Hi {{ body.name }}" }
"#,
        )],
    )
    .await;
    let id = h
        .start("nudge", json!({"email": "ada@example.com", "name": "Ada"}))
        .await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Waiting);
    assert_eq!(run.due_at, Some(h.at(Duration::from_secs(2 * 86400))));
    h.advance(Duration::from_secs(86400)).await;
    assert_eq!(
        h.run(&id).await.status,
        RunStatus::Waiting,
        "one day in, the two-day wait is not over"
    );
    assert!(h.sink.requests().is_empty());
    h.advance(Duration::from_secs(86400)).await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed);
    let delivered = h.sink.requests();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].json["to"], "ada@example.com");
    assert_eq!(delivered[0].json["body"], "Hi Ada");
    assert_eq!(
        delivered[0].idempotency_key(),
        Some(format!("{id}:nudge").as_str())
    );
    assert_eq!(
        h.trail(&id).await,
        vec!["pause:waiting", "pause:completed", "nudge:completed"]
    );
}

async fn wait_until_a_rendered_time(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/remind.yaml",
            r#"
kind: workflow
id: remind
steps:
  - id: until
    wait: { until: "{{ body.remind_at }}" }
  - id: done
    set: { reminded: true }
"#,
        )],
    )
    .await;
    let id = h
        .start("remind", json!({"remind_at": "2026-11-03T09:30:00-07:00"}))
        .await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Waiting);
    assert_eq!(
        run.due_at,
        Some(
            jiff::Timestamp::from_str("2026-11-03T16:30:00Z")
                .unwrap()
                .as_millisecond()
        )
    );
    h.advance(Duration::from_secs(25 * 3600)).await;
    assert_eq!(
        h.run(&id).await.status,
        RunStatus::Waiting,
        "half an hour to go"
    );
    h.advance(Duration::from_secs(1800)).await;
    assert_eq!(h.run(&id).await.status, RunStatus::Completed);

    // A time already past does not wait; a malformed one fails with what was wrong.
    let past = h
        .start("remind", json!({"remind_at": "2020-01-01T00:00:00Z"}))
        .await;
    assert_eq!(h.run(&past).await.status, RunStatus::Completed);
    let bad = h
        .start("remind", json!({"remind_at": "next tuesday"}))
        .await;
    let run = h.run(&bad).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error
            .as_deref()
            .unwrap()
            .contains("not an RFC 3339 time"),
        "{:?}",
        run.error
    );
}

const WAITER: &str = r#"
kind: workflow
id: waiter
steps:
  - id: first
    wait: 10m
  - id: reply
    wait_for: { event: lead.replied, key: "{{ body.email }}", timeout: 1d }
  - id: after
    set: { timed_out: "{{ steps.reply.output.timed_out }}" }
"#;

async fn wait_for_sees_an_event_that_arrived_before_it_waited(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/waiter.yaml", WAITER)]).await;
    let id = h.start("waiter", json!({"email": "ada@example.com"})).await;
    // The reply arrives during the first wait, before the `wait_for` is registered.
    h.advance(Duration::from_secs(60)).await;
    h.engine
        .emit(
            "lead.replied",
            Some("ada@example.com"),
            json!({"text": "yes please"}),
        )
        .await
        .unwrap();
    // Another contact's reply must not count.
    h.engine
        .emit(
            "lead.replied",
            Some("bob@example.com"),
            json!({"text": "no"}),
        )
        .await
        .unwrap();
    h.advance(Duration::from_secs(600)).await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", h.trail(&id).await);
    assert_eq!(
        run.context["steps"]["reply"]["output"]["data"]["text"],
        "yes please"
    );
    assert_eq!(run.context["vars"]["timed_out"], false);
}

async fn wait_for_wakes_on_a_later_event_and_times_out_otherwise(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            ("workflows/waiter.yaml", WAITER),
            (
                "workflows/strict.yaml",
                r#"
kind: workflow
id: strict
steps:
  - id: reply
    wait_for: { event: lead.replied, key: "{{ body.email }}", timeout: 1h, on_timeout: fail }
"#,
            ),
        ],
    )
    .await;
    let woken = h.start("waiter", json!({"email": "ada@example.com"})).await;
    let timed_out = h.start("waiter", json!({"email": "cy@example.com"})).await;
    let failing = h.start("strict", json!({"email": "dee@example.com"})).await;
    h.advance(Duration::from_secs(600)).await;
    assert_eq!(h.run(&woken).await.status, RunStatus::Waiting);
    assert_eq!(
        h.run(&woken).await.wait_event.as_deref(),
        Some("lead.replied")
    );
    // The event wakes the run at once: no clock movement needed.
    h.engine
        .emit(
            "lead.replied",
            Some("ada@example.com"),
            json!({"text": "call me"}),
        )
        .await
        .unwrap();
    h.settle().await;
    let run = h.run(&woken).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.context["vars"]["timed_out"], false);
    assert_eq!(h.run(&timed_out).await.status, RunStatus::Waiting);

    h.advance(Duration::from_secs(86400)).await;
    let run = h.run(&timed_out).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.context["vars"]["timed_out"], true);
    let run = h.run(&failing).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error.as_deref().unwrap().contains("before the timeout"),
        "{:?}",
        run.error
    );
}

const FLAKY: &str = r#"
kind: workflow
id: flaky
steps:
  - id: call_crm
    http:
      method: POST
      url: "{{SINK}}/crm"
      json: { lead: "{{ body.lead }}" }
    retry: { max_attempts: 3, delay: 10s, jitter: false }
  - id: after
    set: { status: "{{ steps.call_crm.output.status }}" }
"#;

async fn transient_failures_retry_with_backoff_until_they_succeed(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/flaky.yaml", FLAKY)]).await;
    h.sink.fail_next(2, 503);
    let id = h.start("flaky", json!({"lead": "L1"})).await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Waiting);
    assert_eq!(
        run.due_at,
        Some(h.at(Duration::from_secs(10))),
        "first backoff is the delay"
    );
    h.advance(Duration::from_secs(10)).await;
    let run = h.run(&id).await;
    assert_eq!(
        run.due_at,
        Some(h.at(Duration::from_secs(30))),
        "the second doubles"
    );
    h.advance(Duration::from_secs(20)).await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", h.trail(&id).await);
    assert_eq!(run.context["vars"]["status"], 200);
    assert_eq!(
        h.trail(&id).await,
        vec![
            "call_crm:retrying",
            "call_crm:retrying",
            "call_crm:completed",
            "after:completed"
        ]
    );
    let reqs = h.sink.requests();
    assert_eq!(reqs.len(), 3);
    // Every attempt carries the same idempotency key.
    assert!(
        reqs.iter()
            .all(|r| r.idempotency_key() == Some(format!("{id}:call_crm").as_str()))
    );
}

async fn exhausted_retries_fail_the_run_with_the_error_kept(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/flaky.yaml", FLAKY)]).await;
    h.sink
        .respond_by_default(Reply::status(502).body("bad gateway"));
    let id = h.start("flaky", json!({"lead": "L2"})).await;
    h.advance(Duration::from_secs(10)).await;
    h.advance(Duration::from_secs(20)).await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert!(
        error.contains("call_crm") && error.contains("502") && error.contains("after 3 attempts"),
        "{error}"
    );
    assert_eq!(h.sink.requests().len(), 3);
    assert_eq!(
        run.cursor["step"], "call_crm",
        "the cursor stays at the failed step"
    );
}

async fn permanent_errors_are_not_retried(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            ("workflows/flaky.yaml", FLAKY),
            (
                "workflows/typo.yaml",
                r#"
kind: workflow
id: typo
steps:
  - id: greet
    set: { greeting: "Hi {{ body.missing_field }}" }
"#,
            ),
        ],
    )
    .await;
    h.sink
        .respond_by_default(Reply::status(404).body("no such lead"));
    let id = h.start("flaky", json!({"lead": "L3"})).await;
    let run = h.run(&id).await;
    assert_eq!(
        run.status,
        RunStatus::Failed,
        "a 404 fails at once despite max_attempts: 3"
    );
    assert!(run.error.as_deref().unwrap().contains("404"));
    assert_eq!(h.sink.requests().len(), 1);

    let id = h.start("typo", json!({})).await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error.as_deref().unwrap().contains("undefined"),
        "{:?}",
        run.error
    );
}

async fn branches_and_loops_follow_the_data(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/route.yaml",
            r#"
kind: workflow
id: route
steps:
  - id: check
    if: body.amount > 1000
    then:
      - id: big
        set: { size: big }
    else:
      - id: small
        set: { size: small }
  - id: by_type
    switch: body.type
    cases:
      refund:
        - id: refund
          set: { kind: refund }
      charge:
        - id: charge
          set: { kind: charge }
    default:
      - id: other
        set: { kind: other }
  - id: each
    for_each:
      items: body.leads
      as: lead
      steps:
        - id: mail
          send: { channel: hook, to: "{{ lead.email }}", body: "Hello {{ lead.name }}" }
  - id: done
    set: { sent: "{{ steps.each.output.count }}" }
"#,
        )],
    )
    .await;
    let id = h
        .start(
            "route",
            json!({"amount": 5000, "type": "refund", "leads": [
                {"email": "a@example.com", "name": "A"}, {"email": "b@example.com", "name": "B"}, {"email": "c@example.com", "name": "C"}
            ]}),
        )
        .await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", h.trail(&id).await);
    assert_eq!(run.context["vars"]["size"], "big");
    assert_eq!(run.context["vars"]["kind"], "refund");
    assert_eq!(run.context["vars"]["sent"], 3);
    let reqs = h.sink.requests();
    let mut to: Vec<&str> = reqs
        .iter()
        .map(|r| r.json["to"].as_str().unwrap())
        .collect();
    to.sort();
    assert_eq!(to, vec!["a@example.com", "b@example.com", "c@example.com"]);
    let mut keys: Vec<String> = reqs
        .iter()
        .map(|r| r.idempotency_key().unwrap().to_owned())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3, "one idempotency key per loop iteration");

    let id = h
        .start(
            "route",
            json!({"amount": 10, "type": "mystery", "leads": []}),
        )
        .await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.context["vars"]["size"], "small");
    assert_eq!(run.context["vars"]["kind"], "other");
    assert_eq!(run.context["vars"]["sent"], 0);
}

async fn emit_starts_subscribers_that_pass_their_filter(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            (
                "workflows/pay.yaml",
                r#"
kind: workflow
id: pay
steps:
  - id: paid
    emit: { event: payment.completed, key: "{{ body.letter }}", data: { amount: "{{ body.amount }}", letter: "{{ body.letter }}" } }
"#,
            ),
            (
                "workflows/generate.yaml",
                r#"
kind: workflow
id: generate
triggers:
  - event: { name: payment.completed, filter: event.data.amount > 0 }
steps:
  - id: note
    set: { letter: "{{ event.data.letter }}", source: "{{ event.source_run_id }}" }
"#,
            ),
        ],
    )
    .await;
    let payer = h.start("pay", json!({"letter": "L-7", "amount": 49})).await;
    let free = h.start("pay", json!({"letter": "L-8", "amount": 0})).await;
    let runs = h
        .engine
        .store
        .list_runs(&herald::store::RunFilter {
            workflow_id: Some("generate".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        runs.len(),
        1,
        "the zero-amount payment does not pass the filter"
    );
    assert_eq!(runs[0].status, RunStatus::Completed);
    assert_eq!(runs[0].context["vars"]["letter"], "L-7");
    assert_eq!(runs[0].context["vars"]["source"], payer.as_str());
    let started = &h.run(&payer).await.context["steps"]["paid"]["output"]["started_runs"];
    assert_eq!(started.as_array().unwrap().len(), 1);
    assert_eq!(h.run(&free).await.status, RunStatus::Completed);
}

const NOTIFY: &str = r#"
kind: workflow
id: notify
steps:
  - id: check
    if: input.severity == "boom"
    then:
      - fail: "cannot notify about {{ input.summary }}"
  - id: pause
    wait: 5m
  - id: result
    set: { notified: "{{ input.summary }}" }
"#;

async fn call_waits_for_the_child_and_returns_its_vars(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            ("workflows/notify.yaml", NOTIFY),
            (
                "workflows/parent.yaml",
                r#"
kind: workflow
id: parent
steps:
  - id: page
    call: { workflow: notify, input: { severity: "{{ body.severity }}", summary: "{{ body.summary }}" } }
  - id: after
    set: { child_said: "{{ steps.page.output.vars.notified }}" }
"#,
            ),
        ],
    )
    .await;
    let id = h
        .start("parent", json!({"severity": "high", "summary": "API down"}))
        .await;
    assert_eq!(h.run(&id).await.status, RunStatus::Waiting);
    h.advance(Duration::from_secs(300)).await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", h.trail(&id).await);
    assert_eq!(run.context["vars"]["child_said"], "API down");
    let children = h
        .engine
        .store
        .list_runs(&herald::store::RunFilter {
            workflow_id: Some("notify".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].parent_run_id.as_deref(), Some(id.as_str()));
}

async fn a_failed_child_fails_the_parent(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            ("workflows/notify.yaml", NOTIFY),
            (
                "workflows/parent.yaml",
                r#"
kind: workflow
id: parent
steps:
  - id: page
    call: { workflow: notify, input: { severity: "{{ body.severity }}", summary: "{{ body.summary }}" } }
"#,
            ),
        ],
    )
    .await;
    let id = h
        .start(
            "parent",
            json!({"severity": "boom", "summary": "disk full"}),
        )
        .await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Failed, "{:?}", h.trail(&id).await);
    let error = run.error.unwrap();
    assert!(
        error.contains("notify") && error.contains("cannot notify about disk full"),
        "{error}"
    );
}

async fn contacts_merge_and_opted_out_recipients_get_nothing(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            (
                "workflows/capture.yaml",
                r#"
kind: workflow
id: capture
steps:
  - id: save
    upsert_contact:
      email: "{{ body.email }}"
      phone: "{{ body.phone | default('') }}"
      first_name: "{{ body.first_name | default('') }}"
      status: "{{ body.status | default('') }}"
      attributes: { source: "{{ body.source | default('web') }}" }
  - id: tell
    send: { channel: hook, to: "{{ contact.email }}", body: "Hi {{ contact.first_name }}" }
"#,
            ),
            (
                "workflows/bad.yaml",
                r#"
kind: workflow
id: bad
steps:
  - upsert_contact: { phone: "{{ body.phone }}" }
"#,
            ),
        ],
    )
    .await;
    let first = h.start("capture", json!({"email": "Ada@Example.com", "phone": "(801) 555-0100", "first_name": "Ada", "source": "chat"})).await;
    let c1 = h.run(&first).await.context["contact"].clone();
    assert_eq!(
        c1["email"], "ada@example.com",
        "e-mail is stored in lower case"
    );
    assert_eq!(c1["phone"], "+18015550100", "phone is stored as E.164");
    // A second upsert for the same e-mail updates the same contact and merges attributes.
    let second = h
        .start(
            "capture",
            json!({"email": "ada@example.com", "status": "opted_out"}),
        )
        .await;
    let c2 = h.run(&second).await.context["contact"].clone();
    assert_eq!(c2["id"], c1["id"]);
    assert_eq!(c2["first_name"], "Ada", "a field not given is left alone");
    assert_eq!(c2["attributes"]["source"], "web");
    assert_eq!(c2["status"], "opted_out");
    // The first run's message went out; the second was suppressed because she opted out.
    assert_eq!(h.sink.requests().len(), 1);
    let out = &h.run(&second).await.context["steps"]["tell"]["output"];
    assert_eq!(out["status"], "suppressed", "{out}");

    let bad = h.start("bad", json!({"phone": "not a phone"})).await;
    let run = h.run(&bad).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error
            .as_deref()
            .unwrap()
            .contains("is not a phone number"),
        "{:?}",
        run.error
    );
}

async fn idempotency_key_returns_the_original_run(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/once.yaml",
            r#"
kind: workflow
id: once
steps:
  - send: { channel: hook, to: "{{ body.email }}", body: "welcome" }
"#,
        )],
    )
    .await;
    let (a, dup_a) = h
        .start_keyed("once", json!({"email": "ada@example.com"}), Some("app-42"))
        .await;
    let (b, dup_b) = h
        .start_keyed("once", json!({"email": "ada@example.com"}), Some("app-42"))
        .await;
    assert!(!dup_a);
    assert!(dup_b);
    assert_eq!(a, b);
    assert_eq!(
        h.sink.requests().len(),
        1,
        "the repeat started nothing and sent nothing"
    );
}

async fn a_crashed_workers_run_is_resumed_after_its_lease_expires(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/nudge.yaml",
            r#"
kind: workflow
id: nudge
steps:
  - id: pause
    wait: 1h
  - id: nudge
    send: { channel: hook, to: "{{ body.email }}", body: "still there?" }
"#,
        )],
    )
    .await;
    let id = h.start("nudge", json!({"email": "ada@example.com"})).await;
    h.clock.advance(Duration::from_secs(3600));
    // A worker of another process claims the due run and dies before committing anything.
    let store = &h.engine.store;
    let claimed = store
        .claim_runs("dead-worker", h.clock.now(), 30_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    h.settle().await;
    assert_eq!(
        h.run(&id).await.status,
        RunStatus::Running,
        "its lease still holds"
    );
    assert!(h.sink.requests().is_empty());
    // The lease expires; this engine takes the run over and finishes it.
    h.advance(Duration::from_secs(31)).await;
    assert_eq!(h.run(&id).await.status, RunStatus::Completed);
    assert_eq!(h.sink.requests().len(), 1);
    // The dead worker comes back and tries to commit: refused, nothing written.
    let run = h.run(&id).await;
    let late = Commit {
        run: RunWrite::Update {
            run_id: id.clone(),
            owner: "dead-worker".into(),
        },
        state: RunState {
            status: RunStatus::Completed,
            version: run.version.clone(),
            cursor: run.cursor.clone(),
            context: json!({}),
            due_at: None,
            wait_event: None,
            wait_key: None,
            attempts: 0,
            contact_id: None,
            response: None,
            error: None,
            finished_at: Some(h.clock.now()),
        },
        now: h.clock.now(),
        steps: Vec::new(),
        outbox: Vec::new(),
        events: Vec::new(),
        new_runs: Vec::new(),
        contacts: Vec::new(),
        wake_runs: Vec::new(),
    };
    assert!(matches!(
        store.commit(late).await,
        Err(StoreError::LeaseLost)
    ));
    assert_eq!(h.run(&id).await.context, run.context);
}

const DRIP_V1: &str = r#"
kind: workflow
id: drip
on_update: latest
steps:
  - id: pause
    wait: 1d
  - id: nudge
    send: { channel: hook, to: "{{ body.email }}", body: "version one" }
"#;

async fn waiting_runs_move_to_the_new_version_only_when_asked(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            ("workflows/drip.yaml", DRIP_V1),
            (
                "workflows/pinned.yaml",
                &DRIP_V1.replace("id: drip\non_update: latest", "id: pinned"),
            ),
            (
                "workflows/renamed.yaml",
                &DRIP_V1.replace("id: drip", "id: renamed"),
            ),
        ],
    )
    .await;
    let latest = h.start("drip", json!({"email": "a@example.com"})).await;
    let pinned = h.start("pinned", json!({"email": "b@example.com"})).await;
    let renamed = h.start("renamed", json!({"email": "c@example.com"})).await;
    let v1 = h.run(&latest).await.version;
    let renamed_v1 = h.run(&renamed).await.version;
    h.write(
        "workflows/drip.yaml",
        &DRIP_V1.replace("version one", "version two"),
    );
    h.write(
        "workflows/pinned.yaml",
        &DRIP_V1
            .replace("id: drip\non_update: latest", "id: pinned")
            .replace("version one", "version two"),
    );
    // The new version has no step `pause`: the waiting run cannot be placed in it.
    h.write(
        "workflows/renamed.yaml",
        &DRIP_V1
            .replace("id: drip", "id: renamed")
            .replace("id: pause", "id: hold")
            .replace("version one", "version two"),
    );
    h.reload().await;
    h.advance(Duration::from_secs(86400)).await;
    let bodies = |to: &str| {
        h.sink
            .requests()
            .iter()
            .filter(|r| r.json["to"] == to)
            .map(|r| r.json["body"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        bodies("a@example.com"),
        vec!["version two"],
        "on_update: latest moves to the new version"
    );
    assert_eq!(
        bodies("b@example.com"),
        vec!["version one"],
        "pinned runs finish on their own version"
    );
    assert_eq!(
        bodies("c@example.com"),
        vec!["version one"],
        "without the step id, the run stays where it was"
    );
    assert_ne!(h.run(&latest).await.version, v1);
    assert_eq!(h.run(&pinned).await.status, RunStatus::Completed);
    assert_eq!(h.run(&renamed).await.version, renamed_v1);
}

async fn a_template_edit_reaches_the_next_message_of_a_waiting_run(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            (
                "workflows/mailer.yaml",
                r#"
kind: workflow
id: mailer
steps:
  - wait: 1h
  - send: { channel: hook, to: "{{ body.email }}", template: nudge.txt.j2 }
"#,
            ),
            ("templates/nudge.txt.j2", "Old copy for {{ body.email }}"),
        ],
    )
    .await;
    let id = h.start("mailer", json!({"email": "ada@example.com"})).await;
    h.write("templates/nudge.txt.j2", "New copy for {{ body.email }}");
    h.reload().await;
    h.advance(Duration::from_secs(3600)).await;
    assert_eq!(h.run(&id).await.status, RunStatus::Completed);
    assert_eq!(
        h.sink.requests()[0].json["body"],
        "New copy for ada@example.com"
    );
}

async fn cancel_stops_a_run_and_its_queued_messages(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/two.yaml",
            r#"
kind: workflow
id: two
steps:
  - id: first
    send: { channel: hook, to: "{{ body.email }}", body: "first" }
  - id: pause
    wait: 1d
  - id: second
    send: { channel: hook, to: "{{ body.email }}", body: "second" }
"#,
        )],
    )
    .await;
    let wf = h.engine.registry().workflows["two"].clone();
    // Start without delivering, so the first message is still queued when the run is cancelled.
    let started = h
        .engine
        .start(StartRun {
            workflow: wf,
            trigger: webhook(json!({"email": "ada@example.com"})),
            idempotency_key: None,
            want_reply: false,
        })
        .await
        .unwrap();
    assert!(h.engine.cancel(&started.run_id).await.unwrap());
    assert!(
        !h.engine.cancel(&started.run_id).await.unwrap(),
        "cancelling twice reports false"
    );
    h.advance(Duration::from_secs(2 * 86400)).await;
    let run = h.run(&started.run_id).await;
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(h.sink.requests().is_empty(), "neither message was sent");
    let messages = h
        .engine
        .store
        .outbox_for_run(&started.run_id)
        .await
        .unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].status, OutboxStatus::Cancelled);
}

async fn retry_resumes_a_failed_run_at_the_failed_step(db: db::TestDb) {
    let h = Harness::new(db, &[("workflows/flaky.yaml", FLAKY)]).await;
    h.sink
        .respond_by_default(Reply::status(400).body("lead missing"));
    let id = h.start("flaky", json!({"lead": "L9"})).await;
    assert_eq!(h.run(&id).await.status, RunStatus::Failed);
    h.sink.respond_by_default(Reply::ok());
    assert!(h.engine.retry(&id).await.unwrap());
    assert!(
        !h.engine.retry(&id).await.unwrap(),
        "only a failed run can be retried"
    );
    h.settle().await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.error, None);
    assert_eq!(
        h.trail(&id).await,
        vec!["call_crm:failed", "call_crm:completed", "after:completed"]
    );
}

async fn deliveries_retry_transient_failures_and_fail_permanent_ones(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/tell.yaml",
            r#"
kind: workflow
id: tell
steps:
  - send: { channel: hook, to: "{{ body.to }}", body: "hello" }
"#,
        )],
    )
    .await;
    h.sink.fail_next(2, 503);
    h.sink.reject_recipient("nobody@example.com", 400);
    let ok = h.start("tell", json!({"to": "ada@example.com"})).await;
    let bad = h.start("tell", json!({"to": "nobody@example.com"})).await;
    // The runs are complete: a message is the outbox's job once queued.
    assert_eq!(h.run(&ok).await.status, RunStatus::Completed);
    for _ in 0..4 {
        h.advance(Duration::from_secs(60)).await;
    }
    let ok_msgs = h.engine.store.outbox_for_run(&ok).await.unwrap();
    assert_eq!(ok_msgs[0].status, OutboxStatus::Sent);
    assert!(ok_msgs[0].attempts >= 2, "{:?}", ok_msgs[0]);
    assert_eq!(
        ok_msgs[0]
            .provider_id
            .as_deref()
            .map(|p| p.starts_with("sink-")),
        Some(true)
    );
    let bad_msgs = h.engine.store.outbox_for_run(&bad).await.unwrap();
    assert_eq!(bad_msgs[0].status, OutboxStatus::Failed);
    assert_eq!(bad_msgs[0].attempts, 1, "a 400 is not retried");
    assert!(bad_msgs[0].last_error.as_deref().unwrap().contains("400"));
    let delivered: Vec<_> = h
        .sink
        .requests()
        .into_iter()
        .filter(|r| r.answered == 200)
        .collect();
    assert_eq!(delivered.len(), 1, "delivered exactly once");
}

async fn http_steps_send_an_idempotency_key_and_keep_the_response(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/crm.yaml",
            r#"
kind: workflow
id: crm
steps:
  - id: lookup
    http:
      method: POST
      url: "{{SINK}}/leads?source={{ body.source }}"
      headers: { Authorization: "Bearer ${env:API_TOKEN}" }
      json: { email: "{{ body.email }}", score: "{{ body.score * 2 }}" }
  - id: after
    set: { crm_id: "{{ steps.lookup.output.body.id }}" }
"#,
        )],
    )
    .await;
    h.sink
        .respond_by_default(Reply::ok().json(json!({"id": "crm-9", "ok": true})));
    let id = h
        .start(
            "crm",
            json!({"email": "ada@example.com", "score": 21, "source": "chat"}),
        )
        .await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.context["vars"]["crm_id"], "crm-9");
    let req = &h.sink.requests()[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.query.as_deref(), Some("source=chat"));
    assert_eq!(
        req.header("authorization"),
        Some("Bearer t0ken"),
        "secrets are resolved from the environment"
    );
    assert_eq!(req.json, json!({"email": "ada@example.com", "score": 42}));
    assert_eq!(req.idempotency_key(), Some(format!("{id}:lookup").as_str()));
    // The secret is in the request, never in the stored run.
    assert!(!run.context.to_string().contains("t0ken"));
}

async fn a_slow_http_call_times_out_as_a_transient_error(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/slow.yaml",
            r#"
kind: workflow
id: slow
steps:
  - id: call
    http: { url: "{{SINK}}/slow" }
    timeout: 300ms
    retry: { max_attempts: 2, delay: 1s, jitter: false }
"#,
        )],
    )
    .await;
    h.sink
        .respond_by_default(Reply::ok().after(Duration::from_secs(3)));
    let id = h.start("slow", json!({})).await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Waiting, "a timeout is retried");
    h.advance(Duration::from_secs(1)).await;
    let run = h.run(&id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error.as_deref().unwrap().contains("timed out"),
        "{:?}",
        run.error
    );
}

async fn inbound_messages_start_keyword_workflows_and_answer_waiting_replies(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            (
                "workflows/stop.yaml",
                r#"
kind: workflow
id: stop
triggers:
  - message: { channel: sms, keyword: [STOP, UNSUBSCRIBE] }
steps:
  - upsert_contact: { phone: "{{ message.from }}", status: opted_out }
"#,
            ),
            (
                "workflows/ask.yaml",
                r#"
kind: workflow
id: ask
steps:
  - id: answer
    wait_for: { reply: sms, key: "{{ body.phone }}", timeout: 2h }
  - id: got
    set: { text: "{{ steps.answer.output.text }}" }
"#,
            ),
        ],
    )
    .await;
    let ask = h.start("ask", json!({"phone": "+18015550100"})).await;
    let started = h
        .engine
        .inbound_message("sms", "+18015550100", "book me in", Some("SM1"))
        .await
        .unwrap();
    assert!(started.started_runs.is_empty(), "no keyword matched");
    h.settle().await;
    let run = h.run(&ask).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.context["vars"]["text"], "book me in");

    let started = h
        .engine
        .inbound_message("sms", "+18015550199", "  stop ", Some("SM2"))
        .await
        .unwrap();
    assert_eq!(
        started.started_runs.len(),
        1,
        "the keyword matches whole and in any case"
    );
    // The provider redelivers the same message: it is one event and starts nothing new.
    let again = h
        .engine
        .inbound_message("sms", "+18015550199", "  stop ", Some("SM2"))
        .await
        .unwrap();
    h.settle().await;
    let stops = h
        .engine
        .store
        .list_runs(&herald::store::RunFilter {
            workflow_id: Some("stop".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(stops.len(), 1, "{again:?}");
    let contact = h
        .engine
        .store
        .find_contact(None, Some("+18015550199"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contact.status.as_deref(), Some("opted_out"));
}

async fn a_flow_started_by_a_text_waits_for_the_next_one(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/ask.yaml",
            r#"
kind: workflow
id: ask
triggers:
  - message: { channel: sms, match: "(?i)^book" }
steps:
  - id: answer
    wait_for: { reply: sms, key: "{{ message.from }}", timeout: 1h }
  - id: got
    set: { text: "{{ steps.answer.output.data.text }}" }
"#,
        )],
    )
    .await;
    let from = "+13035550123";
    let routed = h
        .engine
        .inbound_message("sms", from, "Book me in", Some("SM1"))
        .await
        .unwrap();
    h.settle().await;
    let run = routed.started_runs[0].clone();
    assert_eq!(
        h.run(&run).await.status,
        RunStatus::Waiting,
        "the text that started the run is not its own reply"
    );
    h.engine
        .inbound_message("sms", from, "Tuesday at 10", Some("SM2"))
        .await
        .unwrap();
    h.settle().await;
    let run = h.run(&run).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.context["vars"]["text"], "Tuesday at 10");
}

/// With `contacts.attributes` declared, a workflow's `upsert_contact` stores each as its
/// type, and a value that cannot be one fails the run with the attribute named.
async fn upsert_contact_stores_declared_attributes_as_their_types(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            (
                "herald.yaml",
                "channels:\n  hook: { provider: webhook, url: \"{{SINK}}/deliver\" }\ncontacts:\n  attributes: { score: number, visited: date, vip: boolean }\n",
            ),
            (
                "workflows/capture.yaml",
                r#"
kind: workflow
id: capture
steps:
  - id: save
    upsert_contact:
      email: "{{ body.email }}"
      attributes: { score: "{{ body.score }}", visited: "{{ body.visited }}", vip: "{{ body.vip }}" }
"#,
            ),
        ],
    )
    .await;
    let ok = h
        .start(
            "capture",
            json!({"email": "ada@example.com", "score": "42", "visited": "2026-11-01T08:00:00-07:00", "vip": "yes"}),
        )
        .await;
    let run = h.run(&ok).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    let attributes = &run.context["contact"]["attributes"];
    assert_eq!(attributes["score"], 42);
    assert_eq!(attributes["visited"], "2026-11-01T15:00:00Z");
    assert_eq!(attributes["vip"], true);

    let bad = h
        .start(
            "capture",
            json!({"email": "bob@example.com", "score": "lots", "visited": "2026-11-01", "vip": "no"}),
        )
        .await;
    let run = h.run(&bad).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error
            .as_deref()
            .unwrap_or_default()
            .contains("attribute `score` is \"lots\", which is not a number"),
        "{:?}",
        run.error
    );
}
