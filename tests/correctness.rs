//! Regression tests for defects found by writing the seed companies' automation as Herald
//! projects: each scenario failed before its fix. Every scenario runs on SQLite and on
//! PostgreSQL; deliveries and HTTP calls go to a real HTTP server on loopback.

#[path = "support/db.rs"]
mod db;
#[path = "support/engine.rs"]
mod engine_support;
mod support;

use std::time::Duration;

use engine_support::Harness;
use herald::engine::clock::Clock as _;
use herald::store::{OutboxStatus, RunStatus};
use serde_json::json;
use support::Reply;

db::scenarios!["correctness";
    a_send_steps_retry_policy_spaces_its_delivery_attempts,
    a_finished_child_wakes_its_parent_at_once,
    every_run_has_input_and_its_labels,
    a_missing_wait_for_key_is_an_error_not_none,
    empty_values_leave_stored_contact_fields_alone,
    a_template_name_and_a_status_can_be_chosen_at_run_time,
    what_a_run_makes_is_bounded,
];

/// ConversionSurgery's provider needs exactly 1, 2 and 4 seconds between attempts.
async fn a_send_steps_retry_policy_spaces_its_delivery_attempts(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/text.yaml",
            r#"
kind: workflow
id: text
steps:
  - id: notify
    send: { channel: hook, to: "+13035550100", body: "your table is ready" }
    retry: { max_attempts: 5, delay: 1s, backoff: exponential, max_delay: 4s, jitter: false }
"#,
        )],
    )
    .await;
    h.sink.respond_next(3, Reply::status(429));
    let t0 = h.clock.now();
    let run = h.start("text", json!({})).await;
    let mut gaps = Vec::new();
    let mut last = t0;
    for _ in 0..3 {
        let m = h.engine.store.outbox_for_run(&run).await.unwrap().remove(0);
        assert_eq!(m.status, OutboxStatus::Pending);
        let next = m.next_attempt_at.expect("a retry is scheduled");
        gaps.push(next - last);
        last = next;
        h.clock.set(next);
        h.settle().await;
    }
    assert_eq!(
        gaps,
        [1_000, 2_000, 4_000],
        "the step's own delays, doubling to its cap"
    );
    let m = h.engine.store.outbox_for_run(&run).await.unwrap().remove(0);
    assert_eq!(m.status, OutboxStatus::Sent);
    assert_eq!(m.attempts, 4);
    assert_eq!(h.sink.requests().len(), 4);
    assert_eq!(m.max_attempts, 5);
}

async fn a_finished_child_wakes_its_parent_at_once(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            (
                "workflows/parent.yaml",
                r#"
kind: workflow
id: parent
steps:
  - id: child
    call: { workflow: child }
"#,
            ),
            (
                "workflows/child.yaml",
                r#"
kind: workflow
id: child
steps:
  - id: only
    set: { x: 1 }
"#,
            ),
        ],
    )
    .await;
    let wf = h.engine.registry().workflows["parent"].clone();
    h.engine
        .start(herald::engine::StartRun {
            workflow: wf,
            trigger: engine_support::webhook(json!({})),
            idempotency_key: None,
            want_reply: false,
        })
        .await
        .unwrap();
    h.engine.wait_idle().await;
    // Listen as a worker does, then run the child alone: its end must tell the workers that
    // the parent is due, rather than leave it to their next poll.
    let woken = h.engine.work_ready.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    // Drive what is due (the child, then its parent), as a worker does.
    h.engine.run_due().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::ZERO, woken).await.is_ok(),
        "the workers were told when the child finished"
    );
}

async fn every_run_has_input_and_its_labels(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            (
                "workflows/hook.yaml",
                r#"
kind: workflow
id: hook
labels:
  client: "{{ body.client }}"
steps:
  - id: echo
    set: { from_input: "{{ input.name }}", label: "{{ run.labels.client }}" }
  - id: notify
    emit: { event: lead.created, data: { name: "{{ input.name }}" } }
"#,
            ),
            (
                "workflows/listener.yaml",
                r#"
kind: workflow
id: listener
triggers:
  - event: { name: lead.created }
steps:
  - id: echo
    set: { from_input: "{{ input.name }}" }
"#,
            ),
        ],
    )
    .await;
    let run = h
        .start("hook", json!({"name": "Ada", "client": "acme"}))
        .await;
    let r = h.run(&run).await;
    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
    assert_eq!(r.context["vars"]["from_input"], "Ada");
    assert_eq!(r.context["vars"]["label"], "acme");
    assert_eq!(r.labels, json!({"client": "acme"}));
    let started = r.context["steps"]["notify"]["output"]["started_runs"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let listener = h.run(&started).await;
    assert_eq!(
        listener.status,
        RunStatus::Completed,
        "{:?}",
        listener.error
    );
    assert_eq!(
        listener.context["vars"]["from_input"], "Ada",
        "input is the event's data"
    );
}

async fn a_missing_wait_for_key_is_an_error_not_none(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/ask.yaml",
            r#"
kind: workflow
id: ask
steps:
  - id: reply
    wait_for: { reply: sms, key: "{{ body.phone }}", timeout: 1h }
"#,
        )],
    )
    .await;
    let run = h.start("ask", json!({"phone": null})).await;
    let r = h.run(&run).await;
    assert_eq!(
        r.status,
        RunStatus::Failed,
        "a null key does not wait on \"None\""
    );
    let error = r.error.unwrap();
    assert!(error.contains("is null"), "{error}");
    assert!(error.contains("`{{ body.phone }}`"), "{error}");
}

async fn empty_values_leave_stored_contact_fields_alone(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/form.yaml",
            r#"
kind: workflow
id: form
steps:
  - id: person
    upsert_contact:
      email: "{{ body.email }}"
      first_name: "{{ body.first_name }}"
      attributes:
        company: "{{ body.company }}"
        plan: "{{ body.plan }}"
"#,
        )],
    )
    .await;
    h.start(
        "form",
        json!({"email": "ada@example.com", "first_name": "Ada", "company": "Analytical", "plan": "pro"}),
    )
    .await;
    // A second form without the name or the company, and with a null plan.
    h.start(
        "form",
        json!({"email": "ada@example.com", "first_name": "", "company": "", "plan": null}),
    )
    .await;
    let c = h
        .engine
        .store
        .find_contact(Some("ada@example.com"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.first_name.as_deref(), Some("Ada"));
    assert_eq!(c.attributes["company"], "Analytical");
    assert_eq!(c.attributes["plan"], "pro");
}

async fn a_template_name_and_a_status_can_be_chosen_at_run_time(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            (
                "workflows/health.yaml",
                r#"
kind: workflow
id: health
steps:
  - id: mail
    send: { channel: hook, to: "ops@example.com", template: "emails/{{ body.kind }}.txt.j2" }
  - id: answer
    respond:
      status: "{{ 503 if body.kind == 'degraded' else 200 }}"
      body: { kind: "{{ body.kind }}" }
"#,
            ),
            ("templates/emails/degraded.txt.j2", "Something is degraded."),
            ("templates/emails/ok.txt.j2", "All is well."),
        ],
    )
    .await;
    h.sink.respond_by_default(Reply::ok());
    let run = h.start("health", json!({"kind": "degraded"})).await;
    let r = h.run(&run).await;
    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
    assert_eq!(r.response.unwrap()["status"], 503);
    assert_eq!(h.sink.requests()[0].json["body"], "Something is degraded.");

    let run = h.start("health", json!({"kind": "degarded"})).await;
    let r = h.run(&run).await;
    assert_eq!(r.status, RunStatus::Failed);
    let error = r.error.unwrap();
    assert!(
        error.contains("template `emails/degarded.txt.j2`") && error.contains("did you mean"),
        "{error}"
    );
}

/// A 17-byte request must not make a 100 MB message or context.
async fn what_a_run_makes_is_bounded(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[
            (
                "workflows/blowup.yaml",
                r#"
kind: workflow
id: blowup
steps:
  - id: big
    send: { channel: hook, to: "ops@example.com", body: "{{ 'x' * body.n }}" }
"#,
            ),
            (
                "workflows/hoard.yaml",
                r#"
kind: workflow
id: hoard
steps:
  - id: keep
    set: { blob: "{{ 'x' * body.n }}" }
"#,
            ),
        ],
    )
    .await;
    let run = h.start("blowup", json!({"n": 5_000_000})).await;
    let r = h.run(&run).await;
    assert_eq!(r.status, RunStatus::Failed);
    let error = r.error.unwrap();
    assert!(
        error.contains("over the limit of 1048576 bytes for channel `hook`"),
        "{error}"
    );
    assert!(
        h.engine
            .store
            .outbox_for_run(&run)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(h.sink.requests().is_empty());

    let run = h.start("hoard", json!({"n": 5_000_000})).await;
    let r = h.run(&run).await;
    assert_eq!(r.status, RunStatus::Failed);
    let error = r.error.unwrap();
    assert!(error.contains("limits.context_size"), "{error}");
    assert!(
        r.context["vars"].get("blob").is_none(),
        "the oversized value is not stored"
    );
    // A small one is fine.
    let run = h.start("hoard", json!({"n": 10})).await;
    assert_eq!(h.run(&run).await.status, RunStatus::Completed);
}
