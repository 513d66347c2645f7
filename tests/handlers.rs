//! Error handling in the step language: `on_error`, `continue_on_error` and `try`. A failure
//! goes to the nearest handler around it, the handler sees it as `error`, and the run carries
//! on after the step that owns the handler. Every scenario runs on SQLite and on PostgreSQL;
//! HTTP calls go to a real server on loopback.

#[path = "support/db.rs"]
mod db;
#[path = "support/engine.rs"]
mod engine_support;
mod support;

use std::time::Duration;

use engine_support::Harness;
use herald::definitions::project::Layout;
use herald::engine::clock::Clock as _;
use herald::engine::{Engine, EngineOptions, load_registry};
use herald::store::{OutboxStatus, RunStatus};
use serde_json::json;
use support::Reply;

db::scenarios!["handlers";
    on_error_sees_the_error_and_the_run_carries_on,
    a_failure_inside_try_skips_the_rest_of_the_try,
    continue_on_error_records_the_error_after_the_retries,
    a_failure_inside_a_handler_goes_to_the_one_around_it,
    a_loop_that_handles_a_failure_leaves_the_loop,
    a_step_inside_a_loop_can_handle_its_own_failure,
    an_unhandled_failure_names_the_variable_and_the_step_position,
    a_handler_resumes_after_a_restart_without_repeating_the_failed_call,
];

async fn on_error_sees_the_error_and_the_run_carries_on(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/provider.yaml",
            r#"
kind: workflow
id: provider
steps:
  - id: primary
    http: { method: POST, url: "{{SINK}}/primary", json: { to: "{{ body.to }}" } }
    on_error:
      - id: fallback
        http: { method: POST, url: "{{SINK}}/fallback", json: { to: "{{ body.to }}", why: "{{ error.message }}" } }
  - id: after
    set: { primary_error: "{{ steps.primary.error.message }}", failed_step: "{{ steps.primary.error.step }}" }
"#,
        )],
    )
    .await;
    h.sink
        .respond_to_path("/primary", Reply::status(400).body("bad number"));
    h.sink.respond_by_default(Reply::ok());
    let run = h.start("provider", json!({"to": "+13035550100"})).await;
    let r = h.run(&run).await;
    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
    assert_eq!(
        h.trail(&run).await,
        ["primary:failed", "fallback:completed", "after:completed"]
    );
    let why = r.context["vars"]["primary_error"].as_str().unwrap();
    assert!(why.contains("400"), "{why}");
    assert_eq!(r.context["vars"]["failed_step"], "primary");
    let fallback: Vec<_> = h
        .sink
        .requests()
        .into_iter()
        .filter(|q| q.path == "/fallback")
        .collect();
    assert_eq!(fallback.len(), 1);
    assert!(fallback[0].json["why"].as_str().unwrap().contains("400"));
}

async fn a_failure_inside_try_skips_the_rest_of_the_try(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/letter.yaml",
            r#"
kind: workflow
id: letter
steps:
  - id: produce
    try:
      - id: draft
        set: { drafted: true }
      - id: check
        if: body.letter != ""
        then:
          - id: broken
            fail: "the generator returned nothing for {{ body.letter }}"
      - id: never
        set: { reached: true }
    on_error:
      - id: refund
        send: { channel: hook, to: "billing", body: "refund {{ body.letter }}: {{ error.message }}" }
  - id: after
    set: { done: true }
"#,
        )],
    )
    .await;
    h.sink.respond_by_default(Reply::ok());
    let run = h.start("letter", json!({"letter": "L-7"})).await;
    let r = h.run(&run).await;
    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
    assert_eq!(
        h.trail(&run).await,
        [
            "produce:completed",
            "draft:completed",
            "check:completed",
            "broken:failed",
            "refund:completed",
            "after:completed"
        ]
    );
    assert_eq!(r.context["vars"].get("reached"), None);
    assert_eq!(
        r.context["steps"]["produce"]["error"]["message"],
        "the generator returned nothing for L-7"
    );
    let sent = h.sink.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].json["body"],
        "refund L-7: the generator returned nothing for L-7"
    );
}

async fn continue_on_error_records_the_error_after_the_retries(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/ping.yaml",
            r#"
kind: workflow
id: ping
steps:
  - id: status
    http: { method: POST, url: "{{SINK}}/status" }
    retry: { max_attempts: 2, delay: 1s, jitter: false }
    continue_on_error: true
  - id: after
    set: { ok: "{{ steps.status.error is none }}" }
"#,
        )],
    )
    .await;
    h.sink.respond_by_default(Reply::status(503));
    let run = h.start("ping", json!({})).await;
    assert_eq!(
        h.run(&run).await.status,
        RunStatus::Waiting,
        "waits to retry"
    );
    h.advance(Duration::from_secs(2)).await;
    let r = h.run(&run).await;
    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
    assert_eq!(
        h.trail(&run).await,
        ["status:retrying", "status:failed", "after:completed"]
    );
    let message = r.context["steps"]["status"]["error"]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("after 2 attempts"), "{message}");
    assert_eq!(h.sink.requests().len(), 2);
}

async fn a_failure_inside_a_handler_goes_to_the_one_around_it(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/nested.yaml",
            r#"
kind: workflow
id: nested
steps:
  - id: outer
    try:
      - id: inner
        fail: "first"
        on_error:
          - id: inner_handler
            fail: "the handler broke too ({{ error.message }})"
    on_error:
      - id: outer_handler
        set: { seen: "{{ error.message }}", at: "{{ error.step }}" }
"#,
        )],
    )
    .await;
    let run = h.start("nested", json!({})).await;
    let r = h.run(&run).await;
    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
    assert_eq!(
        h.trail(&run).await,
        [
            "outer:completed",
            "inner:failed",
            "inner_handler:failed",
            "outer_handler:completed"
        ]
    );
    assert_eq!(r.context["vars"]["seen"], "the handler broke too (first)");
    assert_eq!(r.context["vars"]["at"], "inner_handler");
}

async fn a_loop_that_handles_a_failure_leaves_the_loop(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/batch.yaml",
            r#"
kind: workflow
id: batch
steps:
  - id: each
    for_each:
      items: body.items
      as: item
      steps:
        - id: check
          if: item == 2
          then:
            - id: bad
              fail: "item {{ item }} is bad"
        - id: note
          set: { last: "{{ item }}" }
    on_error:
      - id: stop
        set: { stopped_at: "{{ error.message }}" }
  - id: after
    set: { done: true }
"#,
        )],
    )
    .await;
    let run = h.start("batch", json!({"items": [1, 2, 3]})).await;
    let r = h.run(&run).await;
    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
    assert_eq!(r.context["vars"]["last"], 1, "item 3 never ran");
    assert_eq!(r.context["vars"]["stopped_at"], "item 2 is bad");
    assert_eq!(r.context["vars"]["done"], true);
    assert!(
        r.cursor.get("frames").is_none(),
        "the loop's frame is gone: {}",
        r.cursor
    );
    let steps = h.steps(&run).await;
    let bad = steps.iter().find(|s| s.step_id == "bad").unwrap();
    assert_eq!(bad.iteration.as_deref(), Some("1"), "the second item");
    let stop = steps.iter().find(|s| s.step_id == "stop").unwrap();
    assert_eq!(stop.iteration, None, "the handler runs outside the loop");
}

async fn a_step_inside_a_loop_can_handle_its_own_failure(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/batch.yaml",
            r#"
kind: workflow
id: batch
steps:
  - id: each
    for_each:
      items: body.items
      steps:
        - id: call
          http: { method: POST, url: "{{SINK}}/item/{{ item }}" }
          continue_on_error: true
  - id: after
    set: { done: true }
"#,
        )],
    )
    .await;
    h.sink.respond_to_path("/item/2", Reply::status(404));
    h.sink.respond_by_default(Reply::ok());
    let run = h.start("batch", json!({"items": [1, 2, 3]})).await;
    let r = h.run(&run).await;
    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
    let calls: Vec<(String, Option<String>)> = h
        .steps(&run)
        .await
        .into_iter()
        .filter(|s| s.step_id == "call")
        .map(|s| (s.status.to_string(), s.iteration))
        .collect();
    assert_eq!(
        calls,
        [
            ("completed".to_owned(), Some("0".to_owned())),
            ("failed".to_owned(), Some("1".to_owned())),
            ("completed".to_owned(), Some("2".to_owned())),
        ]
    );
    assert_eq!(h.sink.requests().len(), 3);
}

async fn an_unhandled_failure_names_the_variable_and_the_step_position(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/greet.yaml",
            r#"kind: workflow
id: greet
steps:
  - id: validate
    if: body.first_name
    then:
      - id: hello
        set: { hi: true }
"#,
        )],
    )
    .await;
    let run = h.start("greet", json!({"email": "ada@example.com"})).await;
    let r = h.run(&run).await;
    assert_eq!(r.status, RunStatus::Failed);
    let error = r.error.unwrap();
    assert!(
        error.contains("`body.first_name` is not defined"),
        "the variable is named: {error}"
    );
    assert!(error.contains("`body` has: email"), "{error}");
    assert!(
        error.contains("workflows/greet.yaml:4:5"),
        "the step's position is given: {error}"
    );
}

/// The failed call is recorded with the move into the handler, so a process that dies inside
/// the handler resumes there: the handler finishes, and the failed call is not made again.
async fn a_handler_resumes_after_a_restart_without_repeating_the_failed_call(db: db::TestDb) {
    let h = Harness::new(
        db,
        &[(
            "workflows/compensate.yaml",
            r#"
kind: workflow
id: compensate
steps:
  - id: charge
    http: { method: POST, url: "{{SINK}}/charge" }
    on_error:
      - id: cool_off
        wait: 1h
      - id: tell
        send: { channel: hook, to: "ops", body: "charge failed: {{ error.message }}" }
"#,
        )],
    )
    .await;
    h.sink.respond_to_path("/charge", Reply::status(402));
    h.sink.respond_by_default(Reply::ok());
    let run = h.start("compensate", json!({})).await;
    assert_eq!(h.run(&run).await.status, RunStatus::Waiting);

    // Another process takes over on the same database (this one is gone).
    let other = Engine::new(
        h.engine.store.clone(),
        std::sync::Arc::new(h.clock.clone()),
        h.env.clone(),
        EngineOptions::default(),
    );
    let layout = Layout::discover(h.dir.path()).unwrap();
    let (registry, _) = load_registry(&layout, &h.env, 2, h.clock.now()).unwrap();
    other.install(registry).await.unwrap();
    h.clock.advance(Duration::from_secs(3601));
    other.run_due().await.unwrap();
    other.wait_idle().await;
    other.deliver_due().await.unwrap();

    let r = h.run(&run).await;
    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
    let charges = h
        .sink
        .requests()
        .iter()
        .filter(|q| q.path == "/charge")
        .count();
    assert_eq!(charges, 1, "the failed call is not repeated");
    let messages = h.engine.store.outbox_for_run(&run).await.unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].status, OutboxStatus::Sent);
}
