//! The store's contract, run against both backends: every scenario below becomes
//! `sqlite::<scenario>` (a fresh file) and `postgres::<scenario>` (a fresh schema on the server
//! `HERALD_TEST_POSTGRES_URL` names; skipped, and said so, when it is not set).
//!
//! Times are plain numbers around `T0`: the store never reads a clock of its own.

#[path = "support/db.rs"]
mod db;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use herald::store::{
    Commit, CommitOutcome, Contact, ContactFilter, ContactPatch, ContactUpsert, CronFire,
    CronOutcome, DefinitionVersion, DeliveryOutcome, DynStore, MessageCategory, MessageChange,
    Millis, NewEvent, NewOutbox, NewRun, OutboxFilter, OutboxStatus, Purged, RunFilter,
    RunSelection, RunState, RunStatus, RunWrite, SentMessages, StepLogEntry, StepStatus,
    StoreError, TriggerKind,
};
use serde_json::{Value, json};

use db::TestDb;

/// Each scenario runs on both backends. `store` scenarios need only the store; `db` scenarios
/// also open a second store on the same database, as a second Herald process would.
macro_rules! scenarios {
    (store: [$($s:ident),* $(,)?], db: [$($d:ident),* $(,)?] $(,)?) => {
        mod sqlite {
            scenarios!(@backend sqlite; store: [$($s),*]; db: [$($d),*]);
        }
        mod postgres {
            scenarios!(@backend postgres; store: [$($s),*]; db: [$($d),*]);
        }
    };
    (@backend $backend:ident; store: [$($s:ident),*]; db: [$($d:ident),*]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $s() {
                let test = concat!(stringify!($backend), "::", stringify!($s));
                let Some(db) = crate::db::$backend(test).await else { return };
                crate::$s(db.store.clone()).await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $d() {
                let test = concat!(stringify!($backend), "::", stringify!($d));
                let Some(db) = crate::db::$backend(test).await else { return };
                crate::$d(&db).await;
            }
        )*
    };
}

scenarios! {
    store: [
        definitions_are_saved_once_by_hash,
        commit_insert_writes_the_whole_segment,
        commit_insert_leases_only_running_runs,
        duplicate_insert_writes_nothing,
        run_and_step_log_alone_are_all_or_nothing,
        outbox_idempotency_key_enqueues_once,
        claim_runs_takes_only_due_runs_oldest_first,
        lease_passes_to_another_worker_only_after_expiry,
        commit_update_follows_the_run_state,
        renew_and_release_leases,
        next_due_at_is_the_earliest_unfinished_due_time,
        cancel_run_stops_unfinished_runs_and_their_mail,
        retry_run_restarts_only_failed_runs,
        count_and_list_runs,
        step_log_is_ordered_by_seq,
        events_wake_and_match_waiting_runs,
        contacts_are_found_and_merged_without_stealing,
        channel_addresses_link_move_and_unlink,
        a_batch_of_outcomes_is_recorded_for_the_messages_still_held,
        a_persons_open_conversation_is_found_by_its_label,
        outbox_claims_and_deliveries,
        delivery_reports_never_go_back,
        addresses_are_suppressed_per_channel,
        recipients_are_read_together,
        a_batch_of_outcomes_is_recorded_in_order,
        sent_messages_come_per_recipient_in_sending_order,
        cron_checked_until_never_moves_back,
        cron_slots_are_recorded_once,
        new_columns_round_trip,
        contacts_are_listed_edited_and_erased,
        messages_are_listed_retried_and_withdrawn,
        runs_are_cancelled_in_bulk_by_label_contact_and_workflow,
        retention_deletes_old_history_but_not_what_is_still_needed,
    ],
    db: [
        migrations_apply_and_rerun,
        concurrent_run_claims_never_overlap,
        concurrent_commit_and_claim_have_one_winner,
        concurrent_duplicate_inserts_commit_once,
        concurrent_outbox_claims_never_overlap,
        concurrent_contact_upserts_merge,
        concurrent_commits_lock_contacts_in_opposite_orders,
        concurrent_cron_fires_record_each_slot_once,
    ],
}

const T0: Millis = 1_700_000_000_000;
const LEASE: i64 = 30_000;

// ---------------------------------------------------------------------------------------------
// Builders.

fn new_run(id: &str, workflow: &str, created_at: Millis) -> NewRun {
    NewRun {
        id: id.into(),
        workflow_id: workflow.into(),
        version: "v1".into(),
        trigger_kind: TriggerKind::Manual,
        idempotency_key: None,
        parent_run_id: None,
        cursor: json!({"step": 0}),
        context: json!({"input": {"id": id}}),
        labels: json!({}),
        created_at,
        queued: None,
    }
}

fn state(status: RunStatus, due_at: Option<Millis>) -> RunState {
    RunState {
        status,
        version: "v1".into(),
        cursor: json!({"step": 1}),
        context: json!({"steps": {}}),
        due_at,
        wait_event: None,
        wait_key: None,
        attempts: 0,
        contact_id: None,
        response: None,
        error: None,
        finished_at: if status.is_finished() { Some(T0) } else { None },
    }
}

fn commit(run: RunWrite, state: RunState, now: Millis) -> Commit {
    Commit {
        run,
        state,
        now,
        steps: vec![],
        outbox: vec![],
        events: vec![],
        new_runs: vec![],
        contacts: vec![],
        wake_runs: vec![],
    }
}

fn insert(run: NewRun, state: RunState) -> Commit {
    let now = run.created_at;
    commit(
        RunWrite::Insert {
            run: Box::new(run),
            owner: None,
        },
        state,
        now,
    )
}

fn update(run_id: &str, owner: &str, state: RunState, now: Millis) -> Commit {
    commit(
        RunWrite::Update {
            run_id: run_id.into(),
            owner: owner.into(),
        },
        state,
        now,
    )
}

fn step(seq: i64, step_id: &str, status: &str) -> StepLogEntry {
    StepLogEntry {
        seq,
        step_id: step_id.into(),
        action: "send".into(),
        status: StepStatus::parse(status).expect("a step status"),
        attempt: 1,
        started_at: T0 + seq,
        finished_at: T0 + seq + 1,
        output: Some(json!({"seq": seq})),
        error: (status == "failed").then(|| "boom".to_owned()),
        iteration: None,
    }
}

fn message(id: &str, run_id: Option<&str>, key: &str, created_at: Millis) -> NewOutbox {
    NewOutbox {
        id: id.into(),
        run_id: run_id.map(Into::into),
        workflow_id: Some("wf".into()),
        step_id: Some("notify".into()),
        channel: "email".into(),
        recipient: "ada@example.com".into(),
        sender: Some("herald@example.com".into()),
        subject: Some("Hello".into()),
        body: "<p>Hello</p>".into(),
        html: true,
        headers: json!({"X-Run": id}),
        idempotency_key: key.into(),
        max_attempts: 5,
        category: MessageCategory::Marketing,
        retry: None,
        approved_template: None,
        created_at,
        due_at: created_at,
    }
}

fn event(id: &str, name: &str, key: &str, created_at: Millis) -> NewEvent {
    NewEvent {
        id: id.into(),
        name: name.into(),
        key: Some(key.into()),
        data: json!({"id": id}),
        source_run_id: None,
        created_at,
    }
}

fn upsert(
    new_id: &str,
    email: Option<&str>,
    phone: Option<&str>,
    attributes: Value,
    now: Millis,
) -> ContactUpsert {
    ContactUpsert {
        new_id: new_id.into(),
        email: email.map(Into::into),
        phone: phone.map(Into::into),
        attributes: attributes.as_object().cloned().unwrap_or_default(),
        now,
        ..Default::default()
    }
}

fn fire(slot: Millis, outcome: CronOutcome, run_id: Option<&str>) -> CronFire {
    CronFire {
        workflow_id: "nightly".into(),
        trigger_key: "cron:0".into(),
        slot,
        outcome,
        reason: (outcome != CronOutcome::Fired).then(|| "overlap".to_owned()),
        run_id: run_id.map(Into::into),
        recorded_at: slot + 5,
    }
}

fn ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    ids.into_iter().map(str::to_owned).collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers that talk to the store.

async fn committed(store: &DynStore, c: Commit) -> Vec<Contact> {
    match store.commit(c).await.expect("commit") {
        CommitOutcome::Committed { contacts } => contacts,
        other => panic!("expected the commit to be written, got {other:?}"),
    }
}

/// A pending run due at `due_at`, created then.
async fn pending(store: &DynStore, id: &str, due_at: Millis) {
    committed(
        store,
        insert(
            new_run(id, "wf", due_at),
            state(RunStatus::Pending, Some(due_at)),
        ),
    )
    .await;
}

/// A run in `status`, created at `created_at`.
async fn run_in(
    store: &DynStore,
    id: &str,
    workflow: &str,
    status: RunStatus,
    due_at: Option<Millis>,
    created_at: Millis,
) {
    committed(
        store,
        insert(new_run(id, workflow, created_at), state(status, due_at)),
    )
    .await;
}

/// A running run leased to `owner` until `lease_until`.
async fn running(store: &DynStore, id: &str, owner: &str, lease_until: Millis) {
    let c = commit(
        RunWrite::Insert {
            run: Box::new(new_run(id, "wf", T0)),
            owner: Some(owner.into()),
        },
        state(RunStatus::Running, Some(lease_until)),
        T0,
    );
    committed(store, c).await;
}

async fn get(store: &DynStore, id: &str) -> herald::store::RunRecord {
    store
        .run(id)
        .await
        .expect("run")
        .unwrap_or_else(|| panic!("run {id} is missing"))
}

async fn claim(store: &DynStore, owner: &str, now: Millis, limit: i64) -> Vec<String> {
    let mut claimed: Vec<String> = store
        .claim_runs(owner, now, LEASE, limit)
        .await
        .expect("claim_runs")
        .into_iter()
        .map(|r| r.id)
        .collect();
    claimed.sort();
    claimed
}

async fn run_counts(store: &DynStore) -> BTreeMap<&'static str, i64> {
    store
        .count_runs()
        .await
        .expect("count_runs")
        .into_iter()
        .map(|(s, n)| (s.as_str(), n))
        .collect()
}

async fn outbox_counts(store: &DynStore) -> BTreeMap<&'static str, i64> {
    store
        .count_outbox()
        .await
        .expect("count_outbox")
        .into_iter()
        .map(|(s, n)| (s.as_str(), n))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// The versions the migration files on disk declare, so the test follows the set of migrations
/// rather than a list copied into it.
fn migration_versions(backend: &str) -> Vec<i64> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut versions: Vec<i64> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.split('_').next()?.parse().ok()
        })
        .collect();
    versions.sort_unstable();
    assert!(!versions.is_empty(), "no migrations in {}", dir.display());
    versions
}

async fn migrations_apply_and_rerun(db: &TestDb) {
    let store = &db.store;
    store.ping().await.expect("ping");
    assert!(
        db.url.starts_with(store.backend()),
        "backend `{}` for {}",
        store.backend(),
        db.url
    );
    let (schema, tables, versions) = db.layout().await;
    if store.backend() == "postgres" {
        assert!(
            schema.starts_with("herald_test_"),
            "the URL's search_path is honoured: {schema}"
        );
    }
    for table in [
        "alert_states",
        "alert_ticks",
        "contacts",
        "cron_fires",
        "cron_state",
        "definitions",
        "events",
        "outbox",
        "runs",
        "step_log",
        "suppressions",
        "contact_addresses",
        "contact_lists",
        "contact_tags",
        "campaigns",
        "campaign_enrolments",
        "alert_notifications",
        "silences",
    ] {
        assert!(
            tables.iter().any(|t| t == table),
            "table {table} missing from {schema}: {tables:?}"
        );
    }
    assert_eq!(versions, migration_versions(store.backend()));
    assert_eq!(store.count_runs().await.unwrap(), vec![]);
    assert_eq!(store.count_outbox().await.unwrap(), vec![]);
    pending(store, "r1", T0).await;

    // A second process opening the same database runs the migrator again: nothing to do, the
    // data stays.
    let again = db.open_again().await;
    again
        .ping()
        .await
        .expect("ping after re-running migrations");
    assert_eq!(get(&again, "r1").await.status, RunStatus::Pending);
    assert_eq!(
        db.layout().await.2,
        migration_versions(store.backend()),
        "each migration is recorded once"
    );
    let third = db.open_again().await;
    assert_eq!(run_counts(&third).await, BTreeMap::from([("pending", 1)]));
}

async fn definitions_are_saved_once_by_hash(store: DynStore) {
    let v1 = DefinitionVersion {
        hash: "sha256:aaa".into(),
        id: "welcome".into(),
        kind: "workflow".into(),
        source: "workflows/welcome.yaml".into(),
        document: json!({"id": "welcome", "steps": [{"id": "hello", "send": {"to": "{{ contact.email }}"}}]}),
        first_seen_at: T0,
    };
    assert_eq!(store.definition(&v1.hash).await.unwrap(), None);
    store.save_definition(&v1).await.unwrap();
    assert_eq!(store.definition(&v1.hash).await.unwrap(), Some(v1.clone()));

    // Seeing the same content again (a reload, another process) keeps the first sighting.
    let seen_later = DefinitionVersion {
        first_seen_at: T0 + 1000,
        source: "elsewhere.yaml".into(),
        ..v1.clone()
    };
    store.save_definition(&seen_later).await.unwrap();
    assert_eq!(store.definition(&v1.hash).await.unwrap(), Some(v1.clone()));

    let v2 = DefinitionVersion {
        hash: "sha256:bbb".into(),
        document: json!({"id": "welcome", "steps": []}),
        ..v1.clone()
    };
    store.save_definition(&v2).await.unwrap();
    assert_eq!(store.definition("sha256:bbb").await.unwrap(), Some(v2));
    assert_eq!(store.definition(&v1.hash).await.unwrap(), Some(v1));
}

async fn commit_insert_writes_the_whole_segment(store: DynStore) {
    // A parent waiting for a child, a pending run that is not waiting, and a contact to merge into.
    let mut waiting = state(RunStatus::Waiting, None);
    waiting.wait_event = Some("run.finished".into());
    committed(&store, insert(new_run("parent", "wf", T0 - 100), waiting)).await;
    pending(&store, "busy", T0 + 50_000).await;

    let now = T0 + 10;
    let mut run = new_run("r1", "wf", now);
    run.idempotency_key = Some("order-1".into());
    run.parent_run_id = Some("parent".into());
    let mut s = state(RunStatus::Waiting, Some(now + 60_000));
    s.version = "v2".into();
    s.wait_event = Some("message.sms".into());
    s.wait_key = Some("+15550100".into());
    s.attempts = 2;
    s.contact_id = Some("c1".into());
    s.response = Some(json!({"accepted": true}));
    let mut child = new_run("child", "child-wf", now);
    child.parent_run_id = Some("r1".into());
    child.idempotency_key = Some("r1:call".into());
    let mut ev = event("e1", "order.placed", "order-1", now);
    ev.source_run_id = Some("r1".into());
    let mut first = upsert(
        "c1",
        Some("ada@example.com"),
        Some("+15550100"),
        json!({"plan": "free", "n": 1}),
        now,
    );
    first.first_name = Some("Ada".into());
    let mut second = upsert(
        "c-unused",
        Some("ada@example.com"),
        None,
        json!({"plan": "pro"}),
        now + 1,
    );
    second.last_name = Some("Lovelace".into());

    let c = Commit {
        run: RunWrite::Insert {
            run: Box::new(run.clone()),
            owner: None,
        },
        state: s.clone(),
        now,
        steps: vec![step(1, "greet", "completed"), step(2, "ask", "waiting")],
        outbox: vec![message("m1", Some("r1"), "r1:greet:0", now)],
        events: vec![ev.clone()],
        new_runs: vec![child.clone()],
        contacts: vec![first, second],
        wake_runs: ids(["parent", "busy", "no-such-run"]),
    };
    let contacts = committed(&store, c).await;

    // The contact upserts come back in order, each as stored after it was applied.
    assert_eq!(contacts.len(), 2);
    assert_eq!(contacts[0].id, "c1");
    assert_eq!(contacts[0].first_name.as_deref(), Some("Ada"));
    assert_eq!(contacts[0].last_name, None);
    assert_eq!(
        contacts[1].id, "c1",
        "the second upsert found the contact by e-mail"
    );
    assert_eq!(
        contacts[1].phone.as_deref(),
        Some("+15550100"),
        "None leaves the phone alone"
    );
    assert_eq!(contacts[1].first_name.as_deref(), Some("Ada"));
    assert_eq!(contacts[1].last_name.as_deref(), Some("Lovelace"));
    assert_eq!(
        Value::Object(contacts[1].attributes.clone()),
        json!({"plan": "pro", "n": 1})
    );
    assert_eq!(contacts[1].created_at, now);
    assert_eq!(contacts[1].updated_at, now + 1);
    assert_eq!(
        store.contact("c1").await.unwrap().as_ref(),
        Some(&contacts[1])
    );
    assert_eq!(store.contact("c-unused").await.unwrap(), None);

    let r = get(&store, "r1").await;
    assert_eq!(r.workflow_id, "wf");
    assert_eq!(
        r.version, "v2",
        "the state's version wins over the new run's"
    );
    assert_eq!(r.status, RunStatus::Waiting);
    assert_eq!(r.trigger_kind, TriggerKind::Manual);
    assert_eq!(r.idempotency_key.as_deref(), Some("order-1"));
    assert_eq!(r.cursor, s.cursor);
    assert_eq!(r.context, s.context);
    assert_eq!(r.due_at, Some(now + 60_000));
    assert_eq!(r.wait_event.as_deref(), Some("message.sms"));
    assert_eq!(r.wait_key.as_deref(), Some("+15550100"));
    assert_eq!(r.lease_owner, None);
    assert_eq!(r.attempts, 2);
    assert_eq!(r.contact_id.as_deref(), Some("c1"));
    assert_eq!(r.parent_run_id.as_deref(), Some("parent"));
    assert_eq!(r.response, Some(json!({"accepted": true})));
    assert_eq!(r.error, None);
    assert_eq!(
        (r.created_at, r.updated_at, r.finished_at),
        (now, now, None)
    );

    assert_eq!(
        store.step_log("r1").await.unwrap(),
        vec![step(1, "greet", "completed"), step(2, "ask", "waiting")]
    );

    let outbox = store.outbox_for_run("r1").await.unwrap();
    assert_eq!(outbox.len(), 1);
    let m = &outbox[0];
    let expected = message("m1", Some("r1"), "r1:greet:0", now);
    assert_eq!(
        (m.id.as_str(), m.run_id.as_deref(), m.workflow_id.as_deref()),
        ("m1", Some("r1"), Some("wf"))
    );
    assert_eq!(
        (m.channel.as_str(), m.recipient.as_str()),
        ("email", "ada@example.com")
    );
    assert_eq!(
        (m.sender.clone(), m.subject.clone(), m.body.clone()),
        (expected.sender, expected.subject, expected.body)
    );
    assert!(m.html);
    assert_eq!(m.headers, json!({"X-Run": "m1"}));
    assert_eq!(m.status, OutboxStatus::Pending);
    assert_eq!((m.attempts, m.max_attempts), (0, 5));
    assert_eq!(m.next_attempt_at, Some(now), "a new message is due at once");
    assert_eq!(
        (m.provider_id.clone(), m.last_error.clone(), m.sent_at),
        (None, None, None)
    );
    assert_eq!(m.created_at, now);

    let found = store
        .find_event("order.placed", "order-1", now, &[])
        .await
        .unwrap()
        .expect("event stored");
    assert_eq!(
        (
            found.id.as_str(),
            found.data.clone(),
            found.source_run_id.as_deref()
        ),
        ("e1", ev.data, Some("r1"))
    );

    let c = get(&store, "child").await;
    assert_eq!(c.status, RunStatus::Pending);
    assert_eq!(c.due_at, Some(now), "a started run is due at its creation");
    assert_eq!(c.parent_run_id.as_deref(), Some("r1"));
    assert_eq!(
        (c.cursor.clone(), c.context.clone()),
        (child.cursor, child.context)
    );
    assert_eq!(
        store
            .run_by_idempotency_key("child-wf", "r1:call")
            .await
            .unwrap()
            .map(|r| r.id),
        Some("child".into())
    );

    // The waiting parent is woken; the pending run is not moved.
    let parent = get(&store, "parent").await;
    assert_eq!(
        (parent.status, parent.due_at, parent.updated_at),
        (RunStatus::Waiting, Some(now), now)
    );
    assert_eq!(get(&store, "busy").await.due_at, Some(T0 + 50_000));
}

async fn commit_insert_leases_only_running_runs(store: DynStore) {
    let c = commit(
        RunWrite::Insert {
            run: Box::new(new_run("hot", "wf", T0)),
            owner: Some("w1".into()),
        },
        state(RunStatus::Running, Some(T0 + LEASE)),
        T0,
    );
    committed(&store, c).await;
    let hot = get(&store, "hot").await;
    assert_eq!(
        (hot.status, hot.lease_owner.as_deref(), hot.due_at),
        (RunStatus::Running, Some("w1"), Some(T0 + LEASE))
    );
    // The worker that created it holds it: its next commit goes through.
    committed(
        &store,
        update("hot", "w1", state(RunStatus::Completed, None), T0 + 5),
    )
    .await;

    let c = commit(
        RunWrite::Insert {
            run: Box::new(new_run("done", "wf", T0)),
            owner: Some("w1".into()),
        },
        state(RunStatus::Completed, None),
        T0,
    );
    committed(&store, c).await;
    let done = get(&store, "done").await;
    assert_eq!(
        (done.status, done.lease_owner, done.finished_at),
        (RunStatus::Completed, None, Some(T0))
    );
    assert!(matches!(
        store
            .commit(update(
                "done",
                "w1",
                state(RunStatus::Completed, None),
                T0 + 1
            ))
            .await,
        Err(StoreError::LeaseLost)
    ));
}

async fn duplicate_insert_writes_nothing(store: DynStore) {
    let mut original = new_run("first", "wf", T0);
    original.idempotency_key = Some("signup:42".into());
    committed(&store, insert(original, state(RunStatus::Completed, None))).await;
    let mut waiting = state(RunStatus::Waiting, None);
    waiting.wait_event = Some("x".into());
    committed(&store, insert(new_run("sleeper", "wf", T0), waiting)).await;
    let runs_before = run_counts(&store).await;

    let mut again = new_run("second", "wf", T0 + 1);
    again.idempotency_key = Some("signup:42".into());
    let c = Commit {
        run: RunWrite::Insert {
            run: Box::new(again),
            owner: Some("w1".into()),
        },
        state: state(RunStatus::Running, Some(T0 + LEASE)),
        now: T0 + 1,
        steps: vec![step(1, "greet", "completed")],
        outbox: vec![message("m-dup", Some("second"), "second:greet:0", T0 + 1)],
        events: vec![event("e-dup", "signed.up", "42", T0 + 1)],
        new_runs: vec![new_run("second-child", "wf", T0 + 1)],
        contacts: vec![upsert(
            "c-dup",
            Some("dup@example.com"),
            None,
            json!({}),
            T0 + 1,
        )],
        wake_runs: ids(["sleeper"]),
    };
    match store.commit(c).await.unwrap() {
        CommitOutcome::Duplicate { existing_run_id } => assert_eq!(existing_run_id, "first"),
        other => panic!("expected a duplicate, got {other:?}"),
    }

    assert_eq!(store.run("second").await.unwrap(), None);
    assert_eq!(store.run("second-child").await.unwrap(), None);
    assert_eq!(store.step_log("second").await.unwrap(), vec![]);
    assert_eq!(store.outbox_for_run("second").await.unwrap(), vec![]);
    assert_eq!(store.count_outbox().await.unwrap(), vec![]);
    assert_eq!(
        store.find_event("signed.up", "42", 0, &[]).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .find_contact(Some("dup@example.com"), None)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.contact("c-dup").await.unwrap(), None);
    assert_eq!(
        get(&store, "sleeper").await.due_at,
        None,
        "the waiting run was not woken"
    );
    assert_eq!(run_counts(&store).await, runs_before);

    // The key is per workflow: another workflow may use it.
    let mut other = new_run("other", "other-wf", T0 + 2);
    other.idempotency_key = Some("signup:42".into());
    committed(
        &store,
        insert(other, state(RunStatus::Pending, Some(T0 + 2))),
    )
    .await;
    assert_eq!(
        store
            .run_by_idempotency_key("other-wf", "signup:42")
            .await
            .unwrap()
            .map(|r| r.id),
        Some("other".into())
    );
    assert_eq!(
        store
            .run_by_idempotency_key("wf", "signup:42")
            .await
            .unwrap()
            .map(|r| r.id),
        Some("first".into())
    );
    // Runs without a key never collide.
    pending(&store, "anon-1", T0).await;
    pending(&store, "anon-2", T0).await;
}

/// The commonest segment writes only its run and step log (PostgreSQL does it in one
/// statement): a duplicate or a lost lease must write none of the steps, and the rest must be
/// written whole.
async fn run_and_step_log_alone_are_all_or_nothing(store: DynStore) {
    let mut first = new_run("first", "wf", T0);
    first.idempotency_key = Some("lead:7".into());
    let mut c = insert(first, state(RunStatus::Completed, None));
    c.steps = vec![step(1, "greet", "completed"), step(2, "reply", "completed")];
    committed(&store, c).await;
    let log = store.step_log("first").await.unwrap();
    assert_eq!(
        log,
        vec![step(1, "greet", "completed"), step(2, "reply", "completed")]
    );

    // The same key again, with steps of its own: nothing of it is stored.
    let mut again = new_run("again", "wf", T0 + 1);
    again.idempotency_key = Some("lead:7".into());
    let mut c = insert(again, state(RunStatus::Completed, None));
    c.steps = vec![step(1, "greet", "failed")];
    match store.commit(c).await.unwrap() {
        CommitOutcome::Duplicate { existing_run_id } => assert_eq!(existing_run_id, "first"),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    assert_eq!(store.run("again").await.unwrap(), None);
    assert_eq!(store.step_log("again").await.unwrap(), vec![]);
    assert_eq!(store.step_log("first").await.unwrap(), log);

    // A running run, leased to w1; w2's update and its steps are refused whole.
    running(&store, "r1", "w1", T0 + LEASE).await;
    let mut stolen = update("r1", "w2", state(RunStatus::Completed, None), T0 + 2);
    stolen.steps = vec![step(1, "greet", "completed")];
    assert!(matches!(
        store.commit(stolen).await,
        Err(StoreError::LeaseLost)
    ));
    assert_eq!(store.step_log("r1").await.unwrap(), vec![]);
    assert_eq!(get(&store, "r1").await.status, RunStatus::Running);

    // The owner's update: a step retried within the segment appears once, as it ended.
    let mut done = update("r1", "w1", state(RunStatus::Completed, None), T0 + 3);
    let mut retried = step(2, "call", "completed");
    retried.attempt = 2;
    done.steps = vec![
        step(1, "greet", "completed"),
        step(2, "call", "retrying"),
        retried.clone(),
    ];
    committed(&store, done).await;
    assert_eq!(
        store.step_log("r1").await.unwrap(),
        vec![step(1, "greet", "completed"), retried]
    );
    let r = get(&store, "r1").await;
    assert_eq!((r.status, r.lease_owner), (RunStatus::Completed, None));

    // A later segment re-writes an entry it left waiting.
    running(&store, "r2", "w1", T0 + LEASE).await;
    let mut waiting = update(
        "r2",
        "w1",
        state(RunStatus::Running, Some(T0 + LEASE)),
        T0 + 4,
    );
    waiting.steps = vec![step(1, "await_reply", "waiting")];
    committed(&store, waiting).await;
    let mut resumed = update("r2", "w1", state(RunStatus::Completed, None), T0 + 5);
    resumed.steps = vec![step(1, "await_reply", "completed")];
    committed(&store, resumed).await;
    assert_eq!(
        store.step_log("r2").await.unwrap(),
        vec![step(1, "await_reply", "completed")]
    );
}

async fn outbox_idempotency_key_enqueues_once(store: DynStore) {
    let mut c = insert(
        new_run("r1", "wf", T0),
        state(RunStatus::Running, Some(T0 + LEASE)),
    );
    c.run = RunWrite::Insert {
        run: Box::new(new_run("r1", "wf", T0)),
        owner: Some("w1".into()),
    };
    c.outbox = vec![message("m1", Some("r1"), "r1:send:0", T0)];
    committed(&store, c).await;

    // The step runs again after a crash: same key, new message id.
    let mut again = update(
        "r1",
        "w1",
        state(RunStatus::Running, Some(T0 + LEASE)),
        T0 + 5,
    );
    let mut copy = message("m2", Some("r1"), "r1:send:0", T0 + 5);
    copy.body = "a second rendering".into();
    again.outbox = vec![copy.clone(), message("m3", Some("r1"), "r1:send:1", T0 + 5)];
    committed(&store, again).await;

    // And within one commit.
    let mut twice = update("r1", "w1", state(RunStatus::Completed, None), T0 + 6);
    twice.outbox = vec![
        message("m4", Some("r1"), "r1:send:2", T0 + 6),
        message("m5", Some("r1"), "r1:send:2", T0 + 6),
    ];
    committed(&store, twice).await;

    let outbox = store.outbox_for_run("r1").await.unwrap();
    let got: Vec<(&str, &str)> = outbox
        .iter()
        .map(|m| (m.id.as_str(), m.idempotency_key.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("m1", "r1:send:0"),
            ("m3", "r1:send:1"),
            ("m4", "r1:send:2")
        ]
    );
    assert_eq!(outbox[0].body, "<p>Hello</p>", "the first copy is kept");
    assert_eq!(
        outbox_counts(&store).await,
        BTreeMap::from([("pending", 3)])
    );
}

async fn claim_runs_takes_only_due_runs_oldest_first(store: DynStore) {
    let now = T0 + 100_000;
    pending(&store, "p-oldest", now - 30).await;
    pending(&store, "p-recent", now - 10).await;
    pending(&store, "p-exactly-now", now).await;
    pending(&store, "p-future", now + 1).await;
    run_in(
        &store,
        "w-timer-passed",
        "wf",
        RunStatus::Waiting,
        Some(now - 20),
        T0,
    )
    .await;
    run_in(
        &store,
        "w-timer-future",
        "wf",
        RunStatus::Waiting,
        Some(now + 5_000),
        T0,
    )
    .await;
    run_in(&store, "w-event", "wf", RunStatus::Waiting, None, T0).await;
    running(&store, "r-expired", "crashed", now - 5).await;
    running(&store, "r-held", "alive", now + 1_000).await;
    run_in(&store, "done", "wf", RunStatus::Completed, None, T0).await;
    run_in(&store, "broken", "wf", RunStatus::Failed, None, T0).await;

    // Oldest due first, `limit` at a time.
    let batch = store.claim_runs("w1", now, LEASE, 2).await.unwrap();
    assert_eq!(
        sorted(batch.iter().map(|r| r.id.clone()).collect()),
        ids(["p-oldest", "w-timer-passed"])
    );
    for r in &batch {
        assert_eq!(r.status, RunStatus::Running);
        assert_eq!(r.lease_owner.as_deref(), Some("w1"));
        assert_eq!(r.due_at, Some(now + LEASE), "the lease runs until due_at");
        assert_eq!(r.updated_at, now);
        assert_eq!(
            &get(&store, &r.id).await,
            r,
            "the claimed row is returned as stored"
        );
    }
    assert_eq!(claim(&store, "w1", now, 1).await, ids(["p-recent"]));
    assert_eq!(
        claim(&store, "w2", now, 10).await,
        ids(["p-exactly-now", "r-expired"]),
        "an expired lease is up for grabs"
    );
    assert_eq!(claim(&store, "w2", now, 10).await, Vec::<String>::new());
    assert_eq!(
        get(&store, "r-held").await.lease_owner.as_deref(),
        Some("alive")
    );
    assert_eq!(get(&store, "w-event").await.status, RunStatus::Waiting);
    assert_eq!(get(&store, "done").await.status, RunStatus::Completed);

    // Later, the future ones come due.
    assert_eq!(
        claim(&store, "w3", now + 5_000, 10).await,
        ids(["p-future", "r-held", "w-timer-future"])
    );
    assert_eq!(
        claim(&store, "w3", now + 5_000, 0).await,
        Vec::<String>::new()
    );
}

async fn lease_passes_to_another_worker_only_after_expiry(store: DynStore) {
    pending(&store, "r1", T0).await;
    let mut waiting = state(RunStatus::Waiting, None);
    waiting.wait_event = Some("run.finished".into());
    committed(&store, insert(new_run("parent", "wf", T0), waiting)).await;

    assert_eq!(claim(&store, "a", T0, 10).await, ids(["r1"]));
    assert_eq!(
        claim(&store, "b", T0 + LEASE - 1, 10).await,
        Vec::<String>::new(),
        "A's lease still runs"
    );
    assert_eq!(
        claim(&store, "b", T0 + LEASE, 10).await,
        ids(["r1"]),
        "A's lease has expired"
    );
    let r = get(&store, "r1").await;
    assert_eq!(
        (r.lease_owner.as_deref(), r.due_at),
        (Some("b"), Some(T0 + 2 * LEASE))
    );

    // A wakes up and tries to commit what it did: refused, and none of it is written.
    let mut late = update("r1", "a", state(RunStatus::Completed, None), T0 + LEASE + 1);
    late.steps = vec![step(1, "greet", "completed")];
    late.outbox = vec![message("m-late", Some("r1"), "r1:greet:0", T0 + LEASE + 1)];
    late.events = vec![event("e-late", "r1.done", "k", T0 + LEASE + 1)];
    late.new_runs = vec![new_run("late-child", "wf", T0 + LEASE + 1)];
    late.contacts = vec![upsert(
        "c-late",
        Some("late@example.com"),
        None,
        json!({}),
        T0 + LEASE + 1,
    )];
    late.wake_runs = ids(["parent"]);
    assert!(matches!(
        store.commit(late).await,
        Err(StoreError::LeaseLost)
    ));
    let r = get(&store, "r1").await;
    assert_eq!(
        (r.status, r.lease_owner.as_deref()),
        (RunStatus::Running, Some("b"))
    );
    assert_eq!(store.step_log("r1").await.unwrap(), vec![]);
    assert_eq!(store.outbox_for_run("r1").await.unwrap(), vec![]);
    assert_eq!(
        store.find_event("r1.done", "k", 0, &[]).await.unwrap(),
        None
    );
    assert_eq!(store.run("late-child").await.unwrap(), None);
    assert_eq!(store.contact("c-late").await.unwrap(), None);
    assert_eq!(get(&store, "parent").await.due_at, None);
    assert_eq!(
        store
            .renew_leases("a", &ids(["r1"]), T0 + 3 * LEASE)
            .await
            .unwrap(),
        ids(["r1"])
    );

    // B, the holder, commits fine.
    let mut done = update("r1", "b", state(RunStatus::Completed, None), T0 + LEASE + 2);
    done.steps = vec![step(1, "greet", "completed")];
    committed(&store, done).await;
    let r = get(&store, "r1").await;
    assert_eq!(
        (r.status, r.lease_owner, r.due_at),
        (RunStatus::Completed, None, None)
    );
    assert_eq!(store.step_log("r1").await.unwrap().len(), 1);
}

async fn commit_update_follows_the_run_state(store: DynStore) {
    pending(&store, "r1", T0).await;
    assert_eq!(claim(&store, "w1", T0, 1).await, ids(["r1"]));

    // Still running (a long step): the lease stays.
    committed(
        &store,
        update(
            "r1",
            "w1",
            state(RunStatus::Running, Some(T0 + 2 * LEASE)),
            T0 + 1,
        ),
    )
    .await;
    let r = get(&store, "r1").await;
    assert_eq!(
        (r.status, r.lease_owner.as_deref(), r.due_at),
        (RunStatus::Running, Some("w1"), Some(T0 + 2 * LEASE))
    );

    // Waiting: the run is let go.
    let mut waiting = state(RunStatus::Waiting, Some(T0 + 1_000));
    waiting.wait_event = Some("reply".into());
    waiting.wait_key = Some("k".into());
    waiting.version = "v2".into();
    waiting.attempts = 1;
    committed(&store, update("r1", "w1", waiting, T0 + 2)).await;
    let r = get(&store, "r1").await;
    assert_eq!(
        (r.status, r.lease_owner, r.due_at),
        (RunStatus::Waiting, None, Some(T0 + 1_000))
    );
    assert_eq!(
        (r.version.as_str(), r.attempts, r.updated_at),
        ("v2", 1, T0 + 2)
    );
    assert_eq!(
        (r.wait_event.as_deref(), r.wait_key.as_deref()),
        (Some("reply"), Some("k"))
    );

    // Not running any more: even the last owner cannot write to it.
    assert!(matches!(
        store
            .commit(update(
                "r1",
                "w1",
                state(RunStatus::Completed, None),
                T0 + 3
            ))
            .await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        store
            .commit(update(
                "no-such-run",
                "w1",
                state(RunStatus::Completed, None),
                T0 + 3
            ))
            .await,
        Err(StoreError::LeaseLost)
    ));

    // Woken by its timer, claimed again, finished with an error.
    assert_eq!(claim(&store, "w2", T0 + 1_000, 1).await, ids(["r1"]));
    let mut failed = state(RunStatus::Failed, None);
    failed.error = Some("the webhook kept failing".into());
    failed.finished_at = Some(T0 + 1_001);
    committed(&store, update("r1", "w2", failed, T0 + 1_001)).await;
    let r = get(&store, "r1").await;
    assert_eq!(
        (r.status, r.lease_owner, r.due_at),
        (RunStatus::Failed, None, None)
    );
    assert_eq!(
        (r.error.as_deref(), r.finished_at),
        (Some("the webhook kept failing"), Some(T0 + 1_001))
    );
}

async fn renew_and_release_leases(store: DynStore) {
    for id in ["r1", "r2", "r3"] {
        pending(&store, id, T0).await;
    }
    assert_eq!(claim(&store, "a", T0, 10).await, ids(["r1", "r2", "r3"]));
    assert!(store.cancel_run("r2", T0 + 1).await.unwrap());
    // A renews only r3 in time; r1's lease lapses and B takes it.
    assert_eq!(
        store
            .renew_leases("a", &ids(["r3"]), T0 + 10 * LEASE)
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(claim(&store, "b", T0 + LEASE, 10).await, ids(["r1"]));

    let lost = store
        .renew_leases("a", &ids(["r1", "r2", "r3", "missing"]), T0 + 20 * LEASE)
        .await
        .unwrap();
    assert_eq!(
        sorted(lost),
        ids(["missing", "r1", "r2"]),
        "taken over, cancelled, never existed"
    );
    assert_eq!(
        get(&store, "r3").await.due_at,
        Some(T0 + 20 * LEASE),
        "the lease A holds was extended"
    );
    assert_eq!(
        get(&store, "r1").await.due_at,
        Some(T0 + 2 * LEASE),
        "B's lease was not touched"
    );
    assert_eq!(get(&store, "r1").await.lease_owner.as_deref(), Some("b"));
    assert_eq!(
        store.renew_leases("a", &[], T0).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        claim(&store, "c", T0 + LEASE + 1, 10).await,
        Vec::<String>::new(),
        "both leases still run"
    );

    // Shutting down: A hands its runs back, due now, for anyone.
    let now = T0 + LEASE + 2;
    assert_eq!(store.release_runs("a", now).await.unwrap(), 1);
    let r3 = get(&store, "r3").await;
    assert_eq!(
        (r3.status, r3.lease_owner, r3.due_at, r3.updated_at),
        (RunStatus::Pending, None, Some(now), now)
    );
    assert_eq!(store.release_runs("a", now).await.unwrap(), 0);
    assert_eq!(
        get(&store, "r2").await.status,
        RunStatus::Cancelled,
        "release leaves finished runs alone"
    );
    assert_eq!(
        get(&store, "r1").await.lease_owner.as_deref(),
        Some("b"),
        "and other workers' runs"
    );
    assert_eq!(claim(&store, "d", now, 10).await, ids(["r3"]));
    assert_eq!(store.release_runs("b", now).await.unwrap(), 1);
    assert_eq!(claim(&store, "d", now, 10).await, ids(["r1"]));
}

async fn next_due_at_is_the_earliest_unfinished_due_time(store: DynStore) {
    assert_eq!(store.next_due_at().await.unwrap(), None);
    run_in(&store, "w-event", "wf", RunStatus::Waiting, None, T0).await;
    run_in(&store, "done", "wf", RunStatus::Completed, None, T0).await;
    // A finished run whose state still carries a timer is not due work: a worker sleeping
    // until then would wake for nothing, and keep waking, since no claim ever clears it.
    run_in(
        &store,
        "stale-timer",
        "wf",
        RunStatus::Failed,
        Some(T0 + 1),
        T0,
    )
    .await;
    assert_eq!(claim(&store, "w0", T0 + 1, 10).await, Vec::<String>::new());
    assert_eq!(store.next_due_at().await.unwrap(), None);
    run_in(
        &store,
        "timer",
        "wf",
        RunStatus::Waiting,
        Some(T0 + 500),
        T0,
    )
    .await;
    pending(&store, "later", T0 + 900).await;
    assert_eq!(store.next_due_at().await.unwrap(), Some(T0 + 500));
    running(&store, "leased", "w1", T0 + 100).await;
    assert_eq!(
        store.next_due_at().await.unwrap(),
        Some(T0 + 100),
        "an expiring lease is due work too"
    );
    committed(
        &store,
        update("leased", "w1", state(RunStatus::Completed, None), T0 + 50),
    )
    .await;
    assert_eq!(store.next_due_at().await.unwrap(), Some(T0 + 500));
    assert!(store.cancel_run("timer", T0 + 60).await.unwrap());
    assert_eq!(store.next_due_at().await.unwrap(), Some(T0 + 900));
}

async fn cancel_run_stops_unfinished_runs_and_their_mail(store: DynStore) {
    let mut waiting = state(RunStatus::Waiting, None);
    waiting.wait_event = Some("run.finished".into());
    committed(&store, insert(new_run("parent", "wf", T0), waiting)).await;

    // The child has queued three messages: one already sent, one being sent, one pending.
    let mut child = new_run("child", "wf", T0);
    child.parent_run_id = Some("parent".into());
    let mut c = commit(
        RunWrite::Insert {
            run: Box::new(child),
            owner: Some("w1".into()),
        },
        state(RunStatus::Running, Some(T0 + LEASE)),
        T0,
    );
    c.outbox = vec![
        message("m-sent", Some("child"), "child:0", T0),
        message("m-sending", Some("child"), "child:1", T0 + 1),
        message("m-pending", Some("child"), "child:2", T0 + 100),
    ];
    committed(&store, c).await;
    let claimed = store.claim_outbox("d", T0 + 1, LEASE, 2).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(
        store
            .finish_delivery(
                "m-sent",
                "d",
                DeliveryOutcome::Sent { provider_id: None },
                T0 + 2
            )
            .await
            .unwrap()
    );

    let now = T0 + 10;
    assert!(store.cancel_run("child", now).await.unwrap());
    let r = get(&store, "child").await;
    assert_eq!(r.status, RunStatus::Cancelled);
    assert_eq!(
        (r.due_at, r.lease_owner, r.wait_event, r.wait_key),
        (None, None, None, None)
    );
    assert_eq!(
        (r.finished_at, r.updated_at, r.error.as_deref()),
        (Some(now), now, Some("cancelled"))
    );

    let outbox: HashMap<String, _> = store
        .outbox_for_run("child")
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
    assert_eq!(outbox["m-sent"].status, OutboxStatus::Sent);
    assert_eq!(
        outbox["m-sending"].status,
        OutboxStatus::Sending,
        "a message on its way is left to finish"
    );
    let m = &outbox["m-pending"];
    assert_eq!(
        (m.status, m.next_attempt_at),
        (OutboxStatus::Cancelled, None)
    );
    assert_eq!(m.last_error.as_deref(), Some("the run was cancelled"));
    assert!(
        store
            .claim_outbox("d", now + 1_000, LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The waiting parent wakes to see its child cancelled.
    assert_eq!(get(&store, "parent").await.due_at, Some(now));
    // The worker that held the child finds it gone.
    assert!(matches!(
        store
            .commit(update(
                "child",
                "w1",
                state(RunStatus::Completed, None),
                now + 1
            ))
            .await,
        Err(StoreError::LeaseLost)
    ));

    // Only unfinished runs can be cancelled.
    assert!(!store.cancel_run("child", now + 2).await.unwrap());
    assert_eq!(get(&store, "child").await.finished_at, Some(now));
    run_in(&store, "done", "wf", RunStatus::Completed, None, T0).await;
    assert!(!store.cancel_run("done", now).await.unwrap());
    assert_eq!(get(&store, "done").await.status, RunStatus::Completed);
    assert!(!store.cancel_run("no-such-run", now).await.unwrap());
    pending(&store, "queued", T0).await;
    assert!(store.cancel_run("queued", now).await.unwrap());
    assert!(store.cancel_run("parent", now).await.unwrap());
    assert_eq!(
        run_counts(&store).await,
        BTreeMap::from([("cancelled", 3), ("completed", 1)])
    );
}

async fn retry_run_restarts_only_failed_runs(store: DynStore) {
    let mut failed = state(RunStatus::Failed, None);
    failed.attempts = 3;
    failed.error = Some("gave up".into());
    failed.cursor = json!({"step": 4});
    committed(&store, insert(new_run("f", "wf", T0), failed)).await;
    run_in(&store, "done", "wf", RunStatus::Completed, None, T0).await;
    pending(&store, "p", T0).await;

    let now = T0 + 1_000;
    assert!(store.retry_run("f", now).await.unwrap());
    let r = get(&store, "f").await;
    assert_eq!(
        (r.status, r.due_at, r.attempts),
        (RunStatus::Pending, Some(now), 0)
    );
    assert_eq!((r.error, r.finished_at, r.updated_at), (None, None, now));
    assert_eq!(r.cursor, json!({"step": 4}), "it resumes where it failed");
    assert!(!store.retry_run("f", now).await.unwrap(), "already pending");
    assert!(!store.retry_run("done", now).await.unwrap());
    assert!(!store.retry_run("p", now).await.unwrap());
    assert!(!store.retry_run("no-such-run", now).await.unwrap());
    assert_eq!(get(&store, "done").await.status, RunStatus::Completed);
    assert_eq!(claim(&store, "w", now, 10).await, ids(["f", "p"]));
}

async fn count_and_list_runs(store: DynStore) {
    assert_eq!(
        store
            .list_runs(&RunFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap(),
        vec![]
    );
    run_in(&store, "a1", "alpha", RunStatus::Completed, None, T0 + 1).await;
    run_in(&store, "a2", "alpha", RunStatus::Failed, None, T0 + 2).await;
    run_in(&store, "a3", "alpha", RunStatus::Completed, None, T0 + 3).await;
    run_in(&store, "b1", "beta", RunStatus::Waiting, None, T0 + 2).await;
    run_in(&store, "b2", "beta", RunStatus::Completed, None, T0 + 4).await;
    pending(&store, "p1", T0 + 5).await;

    assert_eq!(
        run_counts(&store).await,
        BTreeMap::from([
            ("completed", 3),
            ("failed", 1),
            ("pending", 1),
            ("waiting", 1)
        ])
    );

    let list = |workflow: Option<&str>,
                status: Option<RunStatus>,
                created_before: Option<Millis>,
                limit: i64| {
        let store = store.clone();
        let filter = RunFilter {
            workflow_id: workflow.map(Into::into),
            status,
            created_before,
            limit,
            ..RunFilter::default()
        };
        async move {
            store
                .list_runs(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    // Newest first; equal creation times by id, descending.
    assert_eq!(
        list(None, None, None, 100).await,
        ids(["p1", "b2", "a3", "b1", "a2", "a1"])
    );
    assert_eq!(list(None, None, None, 2).await, ids(["p1", "b2"]));
    assert_eq!(
        list(Some("alpha"), None, None, 100).await,
        ids(["a3", "a2", "a1"])
    );
    assert_eq!(
        list(None, Some(RunStatus::Completed), None, 100).await,
        ids(["b2", "a3", "a1"])
    );
    assert_eq!(
        list(Some("alpha"), Some(RunStatus::Completed), None, 100).await,
        ids(["a3", "a1"])
    );
    assert_eq!(
        list(None, None, Some(T0 + 3), 100).await,
        ids(["b1", "a2", "a1"]),
        "strictly before"
    );
    assert_eq!(
        list(None, Some(RunStatus::Completed), Some(T0 + 4), 1).await,
        ids(["a3"]),
        "the next page"
    );
    assert_eq!(
        list(Some("gamma"), None, None, 100).await,
        Vec::<String>::new()
    );
    assert_eq!(
        list(None, Some(RunStatus::Cancelled), None, 100).await,
        Vec::<String>::new()
    );

    let full = store
        .list_runs(&RunFilter {
            workflow_id: Some("beta".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(full, vec![get(&store, "b2").await]);

    let mut keyed = new_run("k1", "alpha", T0);
    keyed.idempotency_key = Some("key-1".into());
    committed(&store, insert(keyed, state(RunStatus::Pending, Some(T0)))).await;
    assert_eq!(
        store
            .run_by_idempotency_key("alpha", "key-1")
            .await
            .unwrap(),
        Some(get(&store, "k1").await)
    );
    assert_eq!(
        store.run_by_idempotency_key("beta", "key-1").await.unwrap(),
        None
    );
    assert_eq!(
        store
            .run_by_idempotency_key("alpha", "key-2")
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.run("nope").await.unwrap(), None);
}

async fn step_log_is_ordered_by_seq(store: DynStore) {
    let mut c = commit(
        RunWrite::Insert {
            run: Box::new(new_run("r1", "wf", T0)),
            owner: Some("w".into()),
        },
        state(RunStatus::Running, Some(T0 + LEASE)),
        T0,
    );
    c.steps = vec![step(3, "third", "completed"), step(1, "first", "completed")];
    committed(&store, c).await;
    let mut c = update(
        "r1",
        "w",
        state(RunStatus::Running, Some(T0 + LEASE)),
        T0 + 1,
    );
    // Seq 2 arrives later; seq 3 is written again (a retried step): the newer entry replaces it.
    c.steps = vec![step(2, "second", "retrying"), step(3, "third", "failed")];
    committed(&store, c).await;
    pending(&store, "other", T0).await;
    let mut other = update("other", "w", state(RunStatus::Completed, None), T0);
    other.steps = vec![step(1, "elsewhere", "completed")];
    assert_eq!(claim(&store, "w", T0, 1).await, ids(["other"]));
    committed(&store, other).await;

    let log = store.step_log("r1").await.unwrap();
    assert_eq!(
        log,
        vec![
            step(1, "first", "completed"),
            step(2, "second", "retrying"),
            step(3, "third", "failed")
        ]
    );
    assert_eq!(log[2].error.as_deref(), Some("boom"));
    assert_eq!(
        store.step_log("other").await.unwrap(),
        vec![step(1, "elsewhere", "completed")]
    );
    assert_eq!(store.step_log("nope").await.unwrap(), vec![]);
}

async fn events_wake_and_match_waiting_runs(store: DynStore) {
    let waiting_for = |event: &str, key: &str| {
        let mut s = state(RunStatus::Waiting, None);
        s.wait_event = Some(event.into());
        s.wait_key = Some(key.into());
        s
    };
    committed(
        &store,
        insert(
            new_run("w-match-1", "wf", T0),
            waiting_for("message.sms", "+1555"),
        ),
    )
    .await;
    let mut with_timeout = waiting_for("message.sms", "+1555");
    with_timeout.due_at = Some(T0 + 1_000_000);
    committed(&store, insert(new_run("w-match-2", "wf", T0), with_timeout)).await;
    committed(
        &store,
        insert(
            new_run("w-other-key", "wf", T0),
            waiting_for("message.sms", "+1666"),
        ),
    )
    .await;
    committed(
        &store,
        insert(
            new_run("w-other-name", "wf", T0),
            waiting_for("message.email", "+1555"),
        ),
    )
    .await;
    // w-match-2's timeout fires before the event arrives: it is running, not waiting, and is
    // not woken.
    assert_eq!(
        claim(&store, "w", T0 + 1_000_000, 1).await,
        ids(["w-match-2"])
    );

    let mut subscriber = new_run("on-sms", "sms-log", T0 + 10);
    subscriber.trigger_kind = TriggerKind::Event;
    let events = [
        event("e1", "message.sms", "+1555", T0 + 10),
        event("e2", "message.sms", "+1555", T0 + 20),
        event("e3", "message.sms", "+1555", T0 + 30),
        event("e-other", "message.sms", "+1666", T0 + 15),
    ];
    store
        .insert_events(&events, std::slice::from_ref(&subscriber), &[], &[])
        .await
        .unwrap();
    // Delivered twice (a retried webhook): stored once.
    store
        .insert_events(&events[..1], &[], &[], &[])
        .await
        .unwrap();
    let sub = get(&store, "on-sms").await;
    assert_eq!(
        (sub.status, sub.due_at, sub.trigger_kind),
        (RunStatus::Pending, Some(T0 + 10), TriggerKind::Event)
    );

    let now = T0 + 40;
    assert_eq!(
        store
            .wake_waiting("message.sms", "+1555", now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(get(&store, "w-match-1").await.due_at, Some(now));
    assert_eq!(get(&store, "w-other-key").await.due_at, None);
    assert_eq!(get(&store, "w-other-name").await.due_at, None);
    assert_eq!(
        get(&store, "w-match-2").await.lease_owner.as_deref(),
        Some("w")
    );
    assert_eq!(
        store
            .wake_waiting("message.sms", "+1999", now)
            .await
            .unwrap(),
        0
    );

    let found = |since: Millis, exclude: Vec<String>| {
        let store = store.clone();
        async move {
            store
                .find_event("message.sms", "+1555", since, &exclude)
                .await
                .unwrap()
                .map(|e| e.id)
        }
    };
    assert_eq!(
        found(0, vec![]).await.as_deref(),
        Some("e1"),
        "the oldest match"
    );
    assert_eq!(
        found(T0 + 10, vec![]).await.as_deref(),
        Some("e1"),
        "`since` is inclusive"
    );
    assert_eq!(found(T0 + 11, vec![]).await.as_deref(), Some("e2"));
    assert_eq!(found(0, ids(["e1"])).await.as_deref(), Some("e2"));
    assert_eq!(found(0, ids(["e2", "e1"])).await.as_deref(), Some("e3"));
    assert_eq!(found(0, ids(["e1", "e2", "e3"])).await, None);
    assert_eq!(found(T0 + 31, vec![]).await, None);
    assert_eq!(
        store
            .find_event("message.sms", "+1666", 0, &[])
            .await
            .unwrap()
            .map(|e| e.id)
            .as_deref(),
        Some("e-other")
    );
    assert_eq!(
        store
            .find_event("message.email", "+1555", 0, &[])
            .await
            .unwrap(),
        None
    );
    let e1 = store
        .find_event("message.sms", "+1555", 0, &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (e1.name.as_str(), e1.key.as_deref(), e1.data, e1.created_at),
        ("message.sms", Some("+1555"), json!({"id": "e1"}), T0 + 10)
    );
}

async fn channel_addresses_link_move_and_unlink(store: DynStore) {
    let link = |id: &str, phone: Option<&str>, addresses: &[(&str, Option<&str>)], now| {
        let mut u = upsert(id, None, phone, json!({}), now);
        u.addresses = addresses
            .iter()
            .map(|(c, a)| ((*c).to_owned(), a.map(str::to_owned)))
            .collect();
        u
    };
    let holder = |chat: &'static str| {
        let store = store.clone();
        async move {
            store
                .contact_by_address("tg", chat)
                .await
                .unwrap()
                .map(|c| c.id)
        }
    };
    let stored = store
        .insert_events(
            &[],
            &[],
            &[
                link(
                    "ann",
                    Some("+1001"),
                    &[("tg", Some("111")), ("wc", Some("v-1"))],
                    T0,
                ),
                link("bob", Some("+1002"), &[], T0),
            ],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        stored[0].addresses,
        *json!({"tg": "111", "wc": "v-1"}).as_object().unwrap()
    );
    assert_eq!(holder("111").await.as_deref(), Some("ann"));
    let ann = store.contact("ann").await.unwrap().unwrap();
    assert_eq!(ann.addresses["tg"], "111", "read back with the contact");
    assert_eq!(
        store
            .find_contact(None, Some("+1001"))
            .await
            .unwrap()
            .unwrap()
            .addresses["wc"],
        "v-1"
    );

    // Found by the address alone, and a second chat on the channel replaces the first.
    let stored = store
        .insert_events(
            &[],
            &[],
            &[link("x", None, &[("tg", Some("111"))], T0 + 1)],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(stored[0].id, "ann", "matched by the chat it holds");
    store
        .insert_events(
            &[],
            &[],
            &[link("x", Some("+1001"), &[("tg", Some("112"))], T0 + 2)],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(holder("111").await, None);
    assert_eq!(holder("112").await.as_deref(), Some("ann"));

    // Linking a chat someone else holds moves it.
    store
        .insert_events(
            &[],
            &[],
            &[link("x", Some("+1002"), &[("tg", Some("112"))], T0 + 3)],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(holder("112").await.as_deref(), Some("bob"));
    let ann = store.contact("ann").await.unwrap().unwrap();
    assert_eq!(ann.addresses, *json!({"wc": "v-1"}).as_object().unwrap());

    // Unlinking leaves the contact; deleting it lets its addresses go.
    store
        .insert_events(
            &[],
            &[],
            &[link("x", Some("+1002"), &[("tg", None)], T0 + 4)],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(holder("112").await, None);
    assert!(
        store
            .contact("bob")
            .await
            .unwrap()
            .unwrap()
            .addresses
            .is_empty()
    );
    assert!(store.delete_contact("ann").await.unwrap());
    assert_eq!(
        store.contact_by_address("wc", "v-1").await.unwrap(),
        None,
        "a deleted contact's addresses are gone"
    );
}

async fn contacts_are_found_and_merged_without_stealing(store: DynStore) {
    let mut c = insert(new_run("r1", "wf", T0), state(RunStatus::Completed, None));
    let mut ada = upsert(
        "ada",
        Some("ada@example.com"),
        Some("+1001"),
        json!({"x": 1}),
        T0,
    );
    ada.first_name = Some("Ada".into());
    ada.timezone = Some("Europe/London".into());
    c.contacts = vec![
        ada,
        upsert("bob", Some("bob@example.com"), Some("+1002"), json!({}), T0),
    ];
    let stored = committed(&store, c).await;
    assert_eq!(
        stored.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["ada", "bob"]
    );

    let find = |email: Option<&'static str>, phone: Option<&'static str>| {
        let store = store.clone();
        async move {
            store
                .find_contact(email, phone)
                .await
                .unwrap()
                .map(|c| c.id)
        }
    };
    assert_eq!(
        find(Some("ada@example.com"), None).await.as_deref(),
        Some("ada")
    );
    assert_eq!(find(None, Some("+1002")).await.as_deref(), Some("bob"));
    assert_eq!(
        find(Some("ada@example.com"), Some("+1002"))
            .await
            .as_deref(),
        Some("ada"),
        "e-mail first"
    );
    assert_eq!(
        find(Some("nobody@example.com"), Some("+1002"))
            .await
            .as_deref(),
        Some("bob"),
        "then phone"
    );
    assert_eq!(find(Some("nobody@example.com"), Some("+1999")).await, None);
    assert_eq!(find(None, None).await, None);
    assert_eq!(
        store.contact("ada").await.unwrap().as_ref(),
        Some(&stored[0])
    );

    let apply = |upserts: Vec<ContactUpsert>, now: Millis| {
        let store = store.clone();
        async move {
            let id = format!("r{now}");
            let mut c = insert(new_run(&id, "wf", now), state(RunStatus::Completed, None));
            c.contacts = upserts;
            committed(&store, c).await
        }
    };

    // Ada's e-mail with Bob's phone: Ada is updated, Bob keeps his phone, nobody is merged.
    let mut u = upsert(
        "unused",
        Some("ada@example.com"),
        Some("+1002"),
        json!({"y": 2}),
        T0 + 1,
    );
    u.last_name = Some("Lovelace".into());
    let got = apply(vec![u], T0 + 1).await;
    assert_eq!(got[0].id, "ada");
    assert_eq!(
        got[0].phone.as_deref(),
        Some("+1001"),
        "Bob's phone stays Bob's"
    );
    assert_eq!(
        (got[0].first_name.as_deref(), got[0].last_name.as_deref()),
        (Some("Ada"), Some("Lovelace"))
    );
    assert_eq!(got[0].timezone.as_deref(), Some("Europe/London"));
    assert_eq!(
        Value::Object(got[0].attributes.clone()),
        json!({"x": 1, "y": 2})
    );
    assert_eq!((got[0].created_at, got[0].updated_at), (T0, T0 + 1));
    assert_eq!(store.contact("ada").await.unwrap().as_ref(), Some(&got[0]));
    let bob = store.contact("bob").await.unwrap().unwrap();
    assert_eq!(
        (bob.email.as_deref(), bob.phone.as_deref(), bob.updated_at),
        (Some("bob@example.com"), Some("+1002"), T0)
    );
    assert_eq!(store.contact("unused").await.unwrap(), None);

    // Found by phone, given a new e-mail that nobody has: the e-mail moves to that contact.
    let got = apply(
        vec![upsert(
            "unused",
            Some("robert@example.com"),
            Some("+1002"),
            json!({"x": "b"}),
            T0 + 2,
        )],
        T0 + 2,
    )
    .await;
    assert_eq!(
        (got[0].id.as_str(), got[0].email.as_deref()),
        ("bob", Some("robert@example.com"))
    );
    assert_eq!(find(Some("bob@example.com"), None).await, None);

    // Both identify someone, different people: the e-mail decides, and nobody's phone moves.
    let got = apply(
        vec![upsert(
            "unused",
            Some("ada@example.com"),
            Some("+1002"),
            json!({}),
            T0 + 3,
        )],
        T0 + 3,
    )
    .await;
    assert_eq!(got[0].id, "ada", "the e-mail is looked up first");
    assert_eq!(got[0].phone.as_deref(), Some("+1001"));
    let got = apply(
        vec![upsert(
            "unused",
            None,
            Some("+1002"),
            json!({"z": true}),
            T0 + 4,
        )],
        T0 + 4,
    )
    .await;
    assert_eq!(
        (got[0].id.as_str(), got[0].email.as_deref()),
        ("bob", Some("robert@example.com"))
    );

    assert_eq!(find(None, Some("+1001")).await.as_deref(), Some("ada"));
    let bob = store.contact("bob").await.unwrap().unwrap();
    assert_eq!(Value::Object(bob.attributes), json!({"x": "b", "z": true}));

    // A new person with neither: created with what was given.
    let mut dan = upsert("dan", None, None, json!({"source": "import"}), T0 + 6);
    dan.status = Some("subscribed".into());
    let got = apply(vec![dan], T0 + 6).await;
    assert_eq!(
        (
            got[0].id.as_str(),
            got[0].status.as_deref(),
            got[0].email.as_deref()
        ),
        ("dan", Some("subscribed"), None)
    );
    assert_eq!(store.contact("dan").await.unwrap().as_ref(), Some(&got[0]));
}

async fn outbox_claims_and_deliveries(store: DynStore) {
    assert_eq!(store.next_outbox_at().await.unwrap(), None);
    let mut c = insert(new_run("r1", "wf", T0), state(RunStatus::Completed, None));
    c.outbox = vec![
        message("m1", Some("r1"), "k1", T0),
        message("m2", Some("r1"), "k2", T0 + 1),
        message("m3", Some("r1"), "k3", T0 + 2),
        message("m-later", Some("r1"), "k4", T0 + 1_000_000),
    ];
    committed(&store, c).await;
    let mut plain = message("m-plain", None, "k5", T0 + 3);
    plain.html = false;
    let mut c = insert(new_run("r2", "wf", T0), state(RunStatus::Completed, None));
    c.outbox = vec![plain];
    committed(&store, c).await;
    assert_eq!(store.next_outbox_at().await.unwrap(), Some(T0));

    let now = T0 + 100;
    let a = store.claim_outbox("a", now, LEASE, 2).await.unwrap();
    assert_eq!(
        sorted(a.iter().map(|m| m.id.clone()).collect()),
        ids(["m1", "m2"]),
        "oldest due first"
    );
    for m in &a {
        assert_eq!(
            (m.status, m.attempts, m.next_attempt_at),
            (OutboxStatus::Sending, 1, Some(now + LEASE))
        );
    }
    let b = store.claim_outbox("b", now, LEASE, 10).await.unwrap();
    assert_eq!(
        sorted(b.iter().map(|m| m.id.clone()).collect()),
        ids(["m-plain", "m3"])
    );
    let plain = b.iter().find(|m| m.id == "m-plain").unwrap();
    assert!(!plain.html);
    assert_eq!(plain.run_id, None);
    assert!(
        store
            .claim_outbox("b", now, LEASE, 10)
            .await
            .unwrap()
            .is_empty(),
        "held and future rows are not due"
    );
    assert_eq!(
        outbox_counts(&store).await,
        BTreeMap::from([("pending", 1), ("sending", 4)])
    );

    // Sent.
    assert!(
        !store
            .finish_delivery(
                "m1",
                "b",
                DeliveryOutcome::Sent { provider_id: None },
                now + 1
            )
            .await
            .unwrap(),
        "not B's"
    );
    assert!(
        store
            .finish_delivery(
                "m1",
                "a",
                DeliveryOutcome::Sent {
                    provider_id: Some("smtp-250".into())
                },
                now + 1
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .finish_delivery(
                "m1",
                "a",
                DeliveryOutcome::Sent { provider_id: None },
                now + 2
            )
            .await
            .unwrap(),
        "already done"
    );
    // Retry later.
    let retry = DeliveryOutcome::Retry {
        error: "421 try later".into(),
        next_attempt_at: now + 5_000,
    };
    assert!(
        store
            .finish_delivery("m2", "a", retry, now + 1)
            .await
            .unwrap()
    );
    // Failed for good.
    assert!(
        store
            .finish_delivery(
                "m3",
                "b",
                DeliveryOutcome::Failed {
                    error: "550 no such user".into()
                },
                now + 1
            )
            .await
            .unwrap()
    );

    let by_id: HashMap<String, _> = store
        .outbox_for_run("r1")
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
    let m1 = &by_id["m1"];
    assert_eq!(
        (m1.status, m1.provider_id.as_deref(), m1.sent_at),
        (OutboxStatus::Sent, Some("smtp-250"), Some(now + 1))
    );
    assert_eq!((m1.next_attempt_at, m1.last_error.clone()), (None, None));
    let m2 = &by_id["m2"];
    assert_eq!(
        (m2.status, m2.next_attempt_at, m2.attempts),
        (OutboxStatus::Pending, Some(now + 5_000), 1)
    );
    assert_eq!(m2.last_error.as_deref(), Some("421 try later"));
    let m3 = &by_id["m3"];
    assert_eq!(
        (m3.status, m3.next_attempt_at, m3.sent_at),
        (OutboxStatus::Failed, None, None)
    );
    assert_eq!(m3.last_error.as_deref(), Some("550 no such user"));
    assert_eq!(by_id.len(), 4);
    assert_eq!(store.outbox_for_run("nope").await.unwrap(), vec![]);

    // m-plain's sender (B) goes quiet; after its lease A takes it over and B can no longer finish it.
    assert_eq!(store.next_outbox_at().await.unwrap(), Some(now + 5_000));
    assert!(
        store
            .claim_outbox("a", now + 4_999, LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let retried = store
        .claim_outbox("a", now + 5_000, LEASE, 10)
        .await
        .unwrap();
    assert_eq!(
        retried
            .iter()
            .map(|m| (m.id.as_str(), m.attempts))
            .collect::<Vec<_>>(),
        [("m2", 2)]
    );
    let taken = store
        .claim_outbox("a", now + LEASE, LEASE, 10)
        .await
        .unwrap();
    assert_eq!(
        taken
            .iter()
            .map(|m| (m.id.as_str(), m.attempts))
            .collect::<Vec<_>>(),
        [("m-plain", 2)]
    );
    assert!(
        !store
            .finish_delivery(
                "m-plain",
                "b",
                DeliveryOutcome::Sent { provider_id: None },
                now + LEASE
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_delivery(
                "m-plain",
                "a",
                DeliveryOutcome::Sent { provider_id: None },
                now + LEASE
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_delivery(
                "m2",
                "a",
                DeliveryOutcome::Sent { provider_id: None },
                now + LEASE
            )
            .await
            .unwrap()
    );

    assert_eq!(
        outbox_counts(&store).await,
        BTreeMap::from([("failed", 1), ("pending", 1), ("sent", 3)])
    );
    assert_eq!(store.next_outbox_at().await.unwrap(), Some(T0 + 1_000_000));
}

async fn cron_checked_until_never_moves_back(store: DynStore) {
    assert_eq!(
        store.cron_checked_until("nightly", "cron:0").await.unwrap(),
        None
    );
    store
        .set_cron_checked_until("nightly", "cron:0", T0 + 100)
        .await
        .unwrap();
    assert_eq!(
        store.cron_checked_until("nightly", "cron:0").await.unwrap(),
        Some(T0 + 100)
    );
    store
        .set_cron_checked_until("nightly", "cron:0", T0 + 50)
        .await
        .unwrap();
    assert_eq!(
        store.cron_checked_until("nightly", "cron:0").await.unwrap(),
        Some(T0 + 100),
        "never back"
    );
    store
        .set_cron_checked_until("nightly", "cron:0", T0 + 200)
        .await
        .unwrap();
    assert_eq!(
        store.cron_checked_until("nightly", "cron:0").await.unwrap(),
        Some(T0 + 200)
    );
    // Each trigger keeps its own mark.
    assert_eq!(
        store.cron_checked_until("nightly", "cron:1").await.unwrap(),
        None
    );
    assert_eq!(
        store.cron_checked_until("weekly", "cron:0").await.unwrap(),
        None
    );
    store
        .set_cron_checked_until("nightly", "cron:1", T0)
        .await
        .unwrap();
    assert_eq!(
        store.cron_checked_until("nightly", "cron:1").await.unwrap(),
        Some(T0)
    );
    assert_eq!(
        store.cron_checked_until("nightly", "cron:0").await.unwrap(),
        Some(T0 + 200)
    );
}

async fn cron_slots_are_recorded_once(store: DynStore) {
    assert!(!store.cron_run_active("nightly", "cron:0").await.unwrap());
    assert_eq!(store.cron_fires("nightly", 10).await.unwrap(), vec![]);

    let slot1 = T0;
    let run1 = NewRun {
        trigger_kind: TriggerKind::Cron,
        ..new_run("cron-1", "nightly", slot1)
    };
    assert!(
        store
            .record_cron_fire(
                &fire(slot1, CronOutcome::Fired, Some("cron-1")),
                Some(&run1)
            )
            .await
            .unwrap()
    );
    assert_eq!(get(&store, "cron-1").await.status, RunStatus::Pending);
    assert!(store.cron_run_active("nightly", "cron:0").await.unwrap());

    // The same slot again (this process after a restart, or another one): nothing is written.
    let run1b = NewRun {
        trigger_kind: TriggerKind::Cron,
        ..new_run("cron-1b", "nightly", slot1)
    };
    assert!(
        !store
            .record_cron_fire(
                &fire(slot1, CronOutcome::Fired, Some("cron-1b")),
                Some(&run1b)
            )
            .await
            .unwrap()
    );
    assert_eq!(store.run("cron-1b").await.unwrap(), None);
    assert!(
        !store
            .record_cron_fire(&fire(slot1, CronOutcome::Skipped, None), None)
            .await
            .unwrap()
    );
    assert_eq!(
        store.cron_fires("nightly", 10).await.unwrap(),
        vec![fire(slot1, CronOutcome::Fired, Some("cron-1"))]
    );

    // The next slot is skipped (the run is still going), the one after missed.
    let slot2 = T0 + 60_000;
    let slot3 = T0 + 120_000;
    assert!(
        store
            .record_cron_fire(&fire(slot2, CronOutcome::Skipped, None), None)
            .await
            .unwrap()
    );
    assert!(
        store
            .record_cron_fire(&fire(slot3, CronOutcome::Missed, None), None)
            .await
            .unwrap()
    );
    // Another trigger of the workflow has slots of its own.
    let other = CronFire {
        trigger_key: "cron:1".into(),
        ..fire(slot1, CronOutcome::Skipped, None)
    };
    assert!(store.record_cron_fire(&other, None).await.unwrap());
    assert!(
        !store.cron_run_active("nightly", "cron:1").await.unwrap(),
        "skips start no run"
    );

    let fires = store.cron_fires("nightly", 10).await.unwrap();
    let slots: Vec<(Millis, &str, CronOutcome)> = fires
        .iter()
        .map(|f| (f.slot, f.trigger_key.as_str(), f.outcome))
        .collect();
    assert_eq!(
        slots[..2],
        [
            (slot3, "cron:0", CronOutcome::Missed),
            (slot2, "cron:0", CronOutcome::Skipped)
        ],
        "newest first"
    );
    assert_eq!(fires.len(), 4);
    assert_eq!(fires[1], fire(slot2, CronOutcome::Skipped, None));
    assert_eq!(store.cron_fires("nightly", 1).await.unwrap().len(), 1);
    assert_eq!(store.cron_fires("weekly", 10).await.unwrap(), vec![]);

    // Still active: the latest *fired* run is unfinished, whatever was skipped since.
    assert!(store.cron_run_active("nightly", "cron:0").await.unwrap());
    assert!(store.cancel_run("cron-1", T0 + 130_000).await.unwrap());
    assert!(!store.cron_run_active("nightly", "cron:0").await.unwrap());

    let slot4 = T0 + 180_000;
    let run4 = NewRun {
        trigger_kind: TriggerKind::Cron,
        ..new_run("cron-4", "nightly", slot4)
    };
    assert!(
        store
            .record_cron_fire(
                &fire(slot4, CronOutcome::Fired, Some("cron-4")),
                Some(&run4)
            )
            .await
            .unwrap()
    );
    assert!(store.cron_run_active("nightly", "cron:0").await.unwrap());
    assert_eq!(claim(&store, "w", slot4, 10).await, ids(["cron-4"]));
    assert!(
        store.cron_run_active("nightly", "cron:0").await.unwrap(),
        "running is active"
    );
    committed(
        &store,
        update("cron-4", "w", state(RunStatus::Completed, None), slot4 + 1),
    )
    .await;
    assert!(!store.cron_run_active("nightly", "cron:0").await.unwrap());
    assert_eq!(
        run_counts(&store).await,
        BTreeMap::from([("cancelled", 1), ("completed", 1)])
    );
}

// ---------------------------------------------------------------------------------------------
// Concurrency: several claimers at once, within one store (one pool) and across two stores
// opened on the same database (two processes).

/// Runs `task(store, i)` for `i` in `0..n`, alternating between two stores, all released at
/// once, and returns what each returned.
async fn race<T, F, Fut>(stores: [DynStore; 2], n: usize, task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(DynStore, usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let work = task(stores[i % 2].clone(), i);
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                work.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await.expect("a racing task panicked"));
    }
    out
}

async fn concurrent_run_claims_never_overlap(db: &TestDb) {
    const RUNS: usize = 200;
    const LIMIT: i64 = 7;
    let store = db.store.clone();
    let mut c = insert(new_run("seed", "wf", T0), state(RunStatus::Completed, None));
    c.new_runs = (0..RUNS)
        .map(|i| new_run(&format!("run-{i:03}"), "wf", T0 - i as i64))
        .collect();
    committed(&store, c).await;
    let stores = [store.clone(), db.open_again().await];

    let batches = race(stores, 8, |store, i| async move {
        let owner = format!("worker-{i}");
        let mut mine = Vec::new();
        loop {
            let batch = store
                .claim_runs(&owner, T0, LEASE, LIMIT)
                .await
                .expect("claim_runs");
            assert!(
                batch.len() as i64 <= LIMIT,
                "a claim returned {} runs, more than its limit",
                batch.len()
            );
            if batch.is_empty() {
                break;
            }
            for r in batch {
                assert_eq!(r.lease_owner.as_deref(), Some(owner.as_str()));
                mine.push(r.id);
            }
        }
        (owner, mine)
    })
    .await;

    let mut seen: HashMap<String, String> = HashMap::new();
    for (owner, claimed) in &batches {
        for id in claimed {
            if let Some(first) = seen.insert(id.clone(), owner.clone()) {
                panic!("{id} was claimed by both {first} and {owner}");
            }
        }
    }
    assert_eq!(seen.len(), RUNS, "every due run is claimed exactly once");
    assert!(
        batches.iter().filter(|(_, c)| !c.is_empty()).count() > 1,
        "the work was shared"
    );
    for (id, owner) in seen.iter().take(20) {
        assert_eq!(
            get(&store, id).await.lease_owner.as_ref(),
            Some(owner),
            "the store agrees on who holds {id}"
        );
    }
    assert_eq!(
        run_counts(&store).await,
        BTreeMap::from([("completed", 1), ("running", RUNS as i64)])
    );
}

async fn concurrent_commit_and_claim_have_one_winner(db: &TestDb) {
    const ROUNDS: usize = 30;
    let store = db.store.clone();
    let stores = [store.clone(), db.open_again().await];
    for round in 0..ROUNDS {
        // A's lease has just expired: A commits its finished segment while B polls for work.
        let id = format!("run-{round}");
        running(&store, &id, "a", T0).await;
        let outcomes = race(stores.clone(), 2, |store, i| {
            let id = id.clone();
            async move {
                if i == 0 {
                    let mut c = update(&id, "a", state(RunStatus::Completed, None), T0 + 1);
                    c.steps = vec![step(1, "last", "completed")];
                    c.outbox = vec![message(
                        &format!("{id}-m"),
                        Some(&id),
                        &format!("{id}:last"),
                        T0 + 1,
                    )];
                    match store.commit(c).await {
                        Ok(CommitOutcome::Committed { .. }) => true,
                        Err(StoreError::LeaseLost) => false,
                        other => panic!("unexpected commit outcome {other:?}"),
                    }
                } else {
                    let claimed = store
                        .claim_runs("b", T0 + 1, LEASE, 10)
                        .await
                        .expect("claim_runs");
                    assert!(claimed.len() <= 1);
                    claimed.iter().any(|r| r.id == id)
                }
            }
        })
        .await;
        let (a_committed, b_claimed) = (outcomes[0], outcomes[1]);
        assert!(
            a_committed != b_claimed,
            "round {round}: A committed {a_committed}, B claimed {b_claimed}"
        );
        let r = get(&store, &id).await;
        if a_committed {
            assert_eq!((r.status, r.lease_owner), (RunStatus::Completed, None));
            assert_eq!(store.outbox_for_run(&id).await.unwrap().len(), 1);
            assert_eq!(store.step_log(&id).await.unwrap().len(), 1);
        } else {
            assert_eq!(
                (r.status, r.lease_owner.as_deref()),
                (RunStatus::Running, Some("b"))
            );
            assert_eq!(store.outbox_for_run(&id).await.unwrap(), vec![]);
            assert_eq!(store.step_log(&id).await.unwrap(), vec![]);
            committed(
                &store,
                update(&id, "b", state(RunStatus::Completed, None), T0 + 2),
            )
            .await;
        }
    }
}

async fn concurrent_duplicate_inserts_commit_once(db: &TestDb) {
    const WRITERS: usize = 12;
    let stores = [db.store.clone(), db.open_again().await];
    // The same webhook delivered to several processes at once: one run, one message.
    let outcomes = race(stores, WRITERS, |store, i| async move {
        let mut run = new_run(&format!("attempt-{i}"), "wf", T0);
        run.idempotency_key = Some("delivery-7".into());
        let mut c = insert(run, state(RunStatus::Waiting, None));
        c.outbox = vec![message(
            &format!("m-{i}"),
            Some(&format!("attempt-{i}")),
            &format!("attempt-{i}:ack"),
            T0,
        )];
        c.events = vec![event(&format!("e-{i}"), "delivery.received", "7", T0)];
        (i, store.commit(c).await.expect("commit"))
    })
    .await;

    let winners: Vec<usize> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, CommitOutcome::Committed { .. }))
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one insert wins: {outcomes:?}");
    let winner = format!("attempt-{}", winners[0]);
    for (_, o) in &outcomes {
        if let CommitOutcome::Duplicate { existing_run_id } = o {
            assert_eq!(existing_run_id, &winner);
        }
    }
    let store = &db.store;
    assert_eq!(run_counts(store).await, BTreeMap::from([("waiting", 1)]));
    assert_eq!(outbox_counts(store).await, BTreeMap::from([("pending", 1)]));
    assert_eq!(store.outbox_for_run(&winner).await.unwrap().len(), 1);
    let event = store
        .find_event("delivery.received", "7", 0, &[])
        .await
        .unwrap()
        .expect("the winner's event");
    assert_eq!(event.id, format!("e-{}", winners[0]));
    assert_eq!(
        store
            .find_event("delivery.received", "7", 0, std::slice::from_ref(&event.id))
            .await
            .unwrap(),
        None
    );
}

async fn concurrent_outbox_claims_never_overlap(db: &TestDb) {
    const MESSAGES: usize = 120;
    let store = db.store.clone();
    let mut c = insert(new_run("r1", "wf", T0), state(RunStatus::Completed, None));
    c.outbox = (0..MESSAGES)
        .map(|i| {
            message(
                &format!("m-{i:03}"),
                Some("r1"),
                &format!("k-{i}"),
                T0 + i as i64,
            )
        })
        .collect();
    committed(&store, c).await;
    let stores = [store.clone(), db.open_again().await];

    let batches = race(stores, 6, |store, i| async move {
        let owner = format!("dispatcher-{i}");
        let mut mine = Vec::new();
        loop {
            let batch = store
                .claim_outbox(&owner, T0 + 1_000, LEASE, 5)
                .await
                .expect("claim_outbox");
            assert!(batch.len() <= 5);
            if batch.is_empty() {
                break;
            }
            mine.extend(batch.into_iter().map(|m| (m.id, m.attempts)));
        }
        (owner, mine)
    })
    .await;

    let mut seen = HashSet::new();
    for (owner, claimed) in &batches {
        for (id, attempts) in claimed {
            assert!(
                seen.insert(id.clone()),
                "{id} was claimed twice (again by {owner})"
            );
            assert_eq!(*attempts, 1);
        }
    }
    assert_eq!(seen.len(), MESSAGES);
    assert_eq!(
        outbox_counts(&store).await,
        BTreeMap::from([("sending", MESSAGES as i64)])
    );
}

async fn concurrent_contact_upserts_merge(db: &TestDb) {
    const WRITERS: usize = 16;
    let stores = [db.store.clone(), db.open_again().await];
    // Everyone upserts the same person, known by phone, each with an e-mail of their own and an
    // attribute of their own. Run one after the other, the first creates the contact and every
    // later one finds it by phone and merges into it; racing must come to the same thing.
    let results = race(stores, WRITERS, |store, i| async move {
        let now = T0 + i as i64;
        let mut c = insert(
            new_run(&format!("r-{i}"), "wf", now),
            state(RunStatus::Completed, None),
        );
        c.contacts = vec![upsert(
            &format!("c-{i}"),
            Some(&format!("person-{i}@example.com")),
            Some("+15550199"),
            json!({ format!("k{i}"): i }),
            now,
        )];
        store.commit(c).await
    })
    .await;

    let mut ids_seen = HashSet::new();
    for r in results {
        match r.unwrap_or_else(|e| panic!("a racing upsert failed: {e}")) {
            CommitOutcome::Committed { contacts } => {
                ids_seen.insert(contacts[0].id.clone());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        ids_seen.len(),
        1,
        "all writers merged into one contact: {ids_seen:?}"
    );
    let contact = db
        .store
        .find_contact(None, Some("+15550199"))
        .await
        .unwrap()
        .expect("the contact");
    assert_eq!(Some(&contact.id), ids_seen.iter().next());
    let keys: HashSet<&str> = contact.attributes.keys().map(String::as_str).collect();
    assert_eq!(
        keys.len(),
        WRITERS,
        "no writer's attribute was lost: {keys:?}"
    );

    // Racing new contacts for one e-mail, without a phone: one contact, all attributes.
    let stores = [db.store.clone(), db.open_again().await];
    let results = race(stores, WRITERS, |store, i| async move {
        let now = T0 + 100 + i as i64;
        let mut c = insert(
            new_run(&format!("s-{i}"), "wf", now),
            state(RunStatus::Completed, None),
        );
        c.contacts = vec![upsert(
            &format!("d-{i}"),
            Some("shared@example.com"),
            None,
            json!({ format!("k{i}"): i }),
            now,
        )];
        store.commit(c).await
    })
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let contact = db
        .store
        .find_contact(Some("shared@example.com"), None)
        .await
        .unwrap()
        .expect("the contact");
    assert_eq!(contact.attributes.len(), WRITERS);
}

async fn concurrent_commits_lock_contacts_in_opposite_orders(db: &TestDb) {
    const ROUNDS: usize = 4;
    let store = db.store.clone();
    let mut c = insert(new_run("seed", "wf", T0), state(RunStatus::Completed, None));
    c.contacts = vec![
        upsert("x", Some("x@example.com"), None, json!({}), T0),
        upsert("y", Some("y@example.com"), None, json!({}), T0),
    ];
    committed(&store, c).await;
    let stores = [store.clone(), db.open_again().await];
    // One commit updates X then Y, the other Y then X: on Postgres they can deadlock, and the
    // store must run the loser again rather than fail it.
    for round in 0..ROUNDS {
        let results = race(stores.clone(), 2, |store, i| async move {
            let now = T0 + 10 * round as i64 + i as i64;
            let mut emails = ["x@example.com", "y@example.com"];
            if i == 1 {
                emails.reverse();
            }
            let mut c = insert(
                new_run(&format!("r-{round}-{i}"), "wf", now),
                state(RunStatus::Completed, None),
            );
            c.contacts = emails
                .iter()
                .map(|e| {
                    upsert(
                        "unused",
                        Some(e),
                        None,
                        json!({ format!("r{round}w{i}"): true }),
                        now,
                    )
                })
                .collect();
            store.commit(c).await
        })
        .await;
        for r in results {
            let contacts = match r.unwrap_or_else(|e| panic!("round {round}: a commit failed: {e}"))
            {
                CommitOutcome::Committed { contacts } => contacts,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(contacts.len(), 2);
        }
    }
    for id in ["x", "y"] {
        let c = store.contact(id).await.unwrap().unwrap();
        assert_eq!(
            c.attributes.len(),
            2 * ROUNDS,
            "{id} has every writer's attribute: {:?}",
            c.attributes
        );
    }
}

async fn concurrent_cron_fires_record_each_slot_once(db: &TestDb) {
    const SLOTS: i64 = 40;
    const RACERS: usize = 4;
    let stores = [db.store.clone(), db.open_again().await];
    // Every racer walks the same slots, each offering a run of its own for each slot.
    let wins = race(stores, RACERS, |store, i| async move {
        let mut won = Vec::new();
        for s in 0..SLOTS {
            let slot = T0 + s * 60_000;
            let run_id = format!("cron-{s}-by-{i}");
            let run = NewRun {
                trigger_kind: TriggerKind::Cron,
                ..new_run(&run_id, "nightly", slot)
            };
            if store
                .record_cron_fire(&fire(slot, CronOutcome::Fired, Some(&run_id)), Some(&run))
                .await
                .expect("record_cron_fire")
            {
                won.push((slot, run_id));
            }
            store
                .set_cron_checked_until("nightly", "cron:0", slot)
                .await
                .expect("set_cron_checked_until");
        }
        won
    })
    .await;

    let won: Vec<(Millis, String)> = wins.into_iter().flatten().collect();
    let slots: HashSet<Millis> = won.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        won.len(),
        SLOTS as usize,
        "each slot was won exactly once: {won:?}"
    );
    assert_eq!(slots.len(), SLOTS as usize);

    let store = &db.store;
    let fires = store.cron_fires("nightly", 1_000).await.unwrap();
    assert_eq!(fires.len(), SLOTS as usize);
    for (slot, run_id) in &won {
        let f = fires.iter().find(|f| f.slot == *slot).unwrap();
        assert_eq!(
            f.run_id.as_ref(),
            Some(run_id),
            "the recorded run is the winner's"
        );
        assert_eq!(get(store, run_id).await.status, RunStatus::Pending);
    }
    assert_eq!(
        run_counts(store).await,
        BTreeMap::from([("pending", SLOTS)]),
        "losers started no run"
    );
    assert_eq!(
        store.cron_checked_until("nightly", "cron:0").await.unwrap(),
        Some(T0 + (SLOTS - 1) * 60_000)
    );
}

// ---------------------------------------------------------------------------------------------
// Labels, categories, retry policies, iterations; the admin queries; retention.

async fn new_columns_round_trip(store: DynStore) {
    let mut run = new_run("lab", "wf", T0);
    run.labels = json!({"client": "acme"});
    let mut c = insert(run, state(RunStatus::Completed, None));
    let mut step = step(1, "each", "completed");
    step.iteration = Some("0.2".into());
    c.steps = vec![step];
    let mut m = message("m-lab", Some("lab"), "lab:k", T0);
    m.category = MessageCategory::Transactional;
    m.retry = Some(
        serde_json::from_value(
            json!({"max_attempts": 3, "delay": "1s", "backoff": "fixed", "jitter": false}),
        )
        .unwrap(),
    );
    let template = json!({"name": "order_update", "language": "en_US",
        "body": [{"text": "Ada"}, {"name": "order", "text": "A-17"}]});
    m.approved_template = Some(template.clone());
    c.outbox = vec![m];
    committed(&store, c).await;
    let r = get(&store, "lab").await;
    assert_eq!(r.labels, json!({"client": "acme"}));
    let log = store.step_log("lab").await.unwrap();
    assert_eq!(log[0].iteration.as_deref(), Some("0.2"));
    let m = &store.outbox_for_run("lab").await.unwrap()[0];
    assert_eq!(m.category, MessageCategory::Transactional);
    let retry = m.retry.as_ref().unwrap();
    assert_eq!((retry.max_attempts, retry.jitter), (3, false));
    assert_eq!(retry.delay.as_std(), std::time::Duration::from_secs(1));
    assert_eq!(m.approved_template.as_ref(), Some(&template));
    // Labels and contacts filter the run list.
    let f = |label: Option<(&str, &str)>| RunFilter {
        label: label.map(|(k, v)| (k.to_owned(), v.to_owned())),
        limit: 10,
        ..RunFilter::default()
    };
    assert_eq!(
        store
            .list_runs(&f(Some(("client", "acme"))))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .list_runs(&f(Some(("client", "other"))))
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        store
            .list_runs(&f(Some(("team", "acme"))))
            .await
            .unwrap()
            .len(),
        0
    );
}

fn person(email: &str, first: &str, status: Option<&str>, now: Millis) -> ContactUpsert {
    ContactUpsert {
        new_id: format!("c-{email}"),
        email: Some(email.into()),
        first_name: Some(first.into()),
        status: status.map(Into::into),
        now,
        ..ContactUpsert::default()
    }
}

async fn contacts_are_listed_edited_and_erased(store: DynStore) {
    store
        .insert_events(
            &[],
            &[],
            &[
                person("ada@example.com", "Ada", Some("active"), T0),
                person("grace@example.com", "Grace", Some("opted_out"), T0 + 1),
                person("alan_t@example.com", "Alan", None, T0 + 2),
            ],
            &[],
        )
        .await
        .unwrap();
    let list = |q: Option<&str>, status: Option<&str>| {
        let store = store.clone();
        let f = ContactFilter {
            query: q.map(Into::into),
            status: status.map(Into::into),
            created_before: None,
            limit: 10,
        };
        async move {
            store
                .list_contacts(&f)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.first_name.unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(None, None).await,
        ["Alan", "Grace", "Ada"],
        "newest first"
    );
    assert_eq!(list(Some("GRACE"), None).await, ["Grace"], "any case");
    assert_eq!(list(Some("_t@"), None).await, ["Alan"], "`_` is literal");
    assert_eq!(list(Some("ada lov"), None).await, Vec::<String>::new());
    assert_eq!(list(None, Some("opted_out")).await, ["Grace"]);

    let patch = ContactPatch {
        last_name: Some(Some("Lovelace".into())),
        status: Some(None),
        attributes: json!({"plan": "pro"}).as_object().unwrap().clone(),
        ..ContactPatch::default()
    };
    let c = store
        .update_contact("c-ada@example.com", &patch, T0 + 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.last_name.as_deref(), Some("Lovelace"));
    assert_eq!(c.status, None, "cleared");
    assert_eq!(c.attributes["plan"], "pro");
    let removing = ContactPatch {
        attributes: json!({"plan": null}).as_object().unwrap().clone(),
        ..ContactPatch::default()
    };
    let c = store
        .update_contact("c-ada@example.com", &removing, T0 + 11)
        .await
        .unwrap()
        .unwrap();
    assert!(
        c.attributes.get("plan").is_none(),
        "null removes an attribute"
    );
    // Taking another contact's e-mail is a conflict, and changes nothing.
    let steal = ContactPatch {
        email: Some(Some("grace@example.com".into())),
        ..ContactPatch::default()
    };
    assert!(matches!(
        store
            .update_contact("c-ada@example.com", &steal, T0 + 12)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .contact("c-ada@example.com")
            .await
            .unwrap()
            .unwrap()
            .email
            .as_deref(),
        Some("ada@example.com")
    );
    assert!(
        store
            .update_contact("nobody", &patch, T0)
            .await
            .unwrap()
            .is_none()
    );

    // Erasure: the row goes, and runs no longer point at it.
    let mut run = new_run("about-ada", "wf", T0);
    run.id = "about-ada".into();
    let mut st = state(RunStatus::Completed, None);
    st.contact_id = Some("c-ada@example.com".into());
    committed(&store, insert(run, st)).await;
    assert!(store.delete_contact("c-ada@example.com").await.unwrap());
    assert!(!store.delete_contact("c-ada@example.com").await.unwrap());
    assert!(store.contact("c-ada@example.com").await.unwrap().is_none());
    assert_eq!(get(&store, "about-ada").await.contact_id, None);
    let counts = store.count_contacts().await.unwrap();
    assert_eq!(counts, vec![(None, 1), (Some("opted_out".into()), 1)]);
}

async fn messages_are_listed_retried_and_withdrawn(store: DynStore) {
    let mut c = insert(
        new_run("r-out", "wf", T0),
        state(RunStatus::Completed, None),
    );
    c.outbox = vec![
        message("m1", Some("r-out"), "k1", T0),
        message("m2", Some("r-out"), "k2", T0 + 1),
    ];
    committed(&store, c).await;
    // m1 fails for good, m2 stays pending.
    let claimed = store.claim_outbox("w", T0 + 5, 60_000, 1).await.unwrap();
    assert_eq!(claimed[0].id, "m1");
    store
        .finish_delivery(
            "m1",
            "w",
            DeliveryOutcome::Failed {
                error: "550 no such user".into(),
            },
            T0 + 6,
        )
        .await
        .unwrap();
    let f = |status: Option<OutboxStatus>| OutboxFilter {
        status,
        run_id: Some("r-out".into()),
        limit: 10,
        ..OutboxFilter::default()
    };
    let failed = store
        .list_messages(&f(Some(OutboxStatus::Failed)))
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(store.list_messages(&f(None)).await.unwrap().len(), 2);

    match store.retry_message("m1", T0 + 10).await.unwrap() {
        MessageChange::Done(m) => {
            assert_eq!(
                (m.status, m.attempts, m.next_attempt_at),
                (OutboxStatus::Pending, 0, Some(T0 + 10))
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store.retry_message("m2", T0 + 10).await.unwrap(),
        MessageChange::WrongState(OutboxStatus::Pending)
    );
    assert_eq!(
        store.retry_message("nope", T0).await.unwrap(),
        MessageChange::NotFound
    );
    match store.cancel_message("m2", T0 + 11).await.unwrap() {
        MessageChange::Done(m) => assert_eq!(
            (m.status, m.next_attempt_at),
            (OutboxStatus::Cancelled, None)
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store.cancel_message("m2", T0 + 12).await.unwrap(),
        MessageChange::WrongState(OutboxStatus::Cancelled)
    );
    // A cancelled message is never claimed.
    let claimed: Vec<String> = store
        .claim_outbox("w", T0 + 20, 60_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(claimed, ["m1"]);
}

async fn runs_are_cancelled_in_bulk_by_label_contact_and_workflow(store: DynStore) {
    for (id, workflow, client, status) in [
        ("a1", "drip", "acme", RunStatus::Waiting),
        ("a2", "drip", "acme", RunStatus::Pending),
        ("a3", "drip", "acme", RunStatus::Completed),
        ("b1", "drip", "beta", RunStatus::Waiting),
        ("c1", "other", "acme", RunStatus::Waiting),
    ] {
        let mut run = new_run(id, workflow, T0);
        run.labels = json!({"client": client});
        let mut c = insert(run, state(status, Some(T0 + 60_000)));
        if id == "a1" {
            c.outbox = vec![message("m-a1", Some("a1"), "k-a1", T0)];
        }
        committed(&store, c).await;
    }
    let sel = |workflow: Option<&str>, label: Option<(&str, &str)>| RunSelection {
        workflow_id: workflow.map(Into::into),
        label: label.map(|(k, v)| (k.into(), v.into())),
        ..RunSelection::default()
    };
    assert_eq!(
        store
            .cancel_runs(&sel(Some("drip"), Some(("client", "acme"))), T0 + 1, true)
            .await
            .unwrap(),
        2,
        "a dry run counts the unfinished ones"
    );
    assert_eq!(
        get(&store, "a1").await.status,
        RunStatus::Waiting,
        "and changes nothing"
    );
    assert_eq!(
        store
            .cancel_runs(&sel(Some("drip"), Some(("client", "acme"))), T0 + 1, false)
            .await
            .unwrap(),
        2
    );
    for (id, expected) in [
        ("a1", RunStatus::Cancelled),
        ("a2", RunStatus::Cancelled),
        ("a3", RunStatus::Completed),
        ("b1", RunStatus::Waiting),
        ("c1", RunStatus::Waiting),
    ] {
        assert_eq!(get(&store, id).await.status, expected, "{id}");
    }
    let m = &store.outbox_for_run("a1").await.unwrap()[0];
    assert_eq!(m.status, OutboxStatus::Cancelled);
    assert!(
        store
            .claim_runs("w", T0 + 120_000, 1000, 10)
            .await
            .unwrap()
            .iter()
            .all(|r| !r.id.starts_with('a'))
    );
}

async fn retention_deletes_old_history_but_not_what_is_still_needed(store: DynStore) {
    const DAY: i64 = 86_400_000;
    // An old finished run with its log and message; an old finished child whose parent still
    // waits; a recent finished run; an old unfinished run.
    let mut old = insert(new_run("old", "wf", T0), state(RunStatus::Completed, None));
    old.state.finished_at = Some(T0);
    old.steps = vec![step(1, "s", "completed")];
    old.outbox = vec![message("m-old", Some("old"), "k-old", T0)];
    committed(&store, old).await;
    let mut parent = new_run("parent", "wf", T0);
    parent.id = "parent".into();
    committed(
        &store,
        insert(parent, state(RunStatus::Waiting, Some(T0 + 40 * DAY))),
    )
    .await;
    let mut child = new_run("child", "wf", T0);
    child.parent_run_id = Some("parent".into());
    let mut c = insert(child, state(RunStatus::Completed, None));
    c.state.finished_at = Some(T0);
    committed(&store, c).await;
    let mut recent = insert(
        new_run("recent", "wf", T0 + 29 * DAY),
        state(RunStatus::Completed, None),
    );
    recent.state.finished_at = Some(T0 + 29 * DAY);
    committed(&store, recent).await;
    store
        .insert_events(&[event("e-old", "n", "k", T0 - DAY)], &[], &[], &[])
        .await
        .unwrap();
    let now = T0 + 31 * DAY;
    let purged = store
        .purge(Some(now - 30 * DAY), Some(now - 30 * DAY), 1)
        .await
        .unwrap();
    assert_eq!(
        (purged.runs, purged.steps, purged.messages),
        (1, 1, 1),
        "{purged:?}"
    );
    assert!(store.run("old").await.unwrap().is_none());
    assert!(store.outbox_for_run("old").await.unwrap().is_empty());
    assert!(
        store.run("child").await.unwrap().is_some(),
        "its parent still waits"
    );
    assert!(store.run("recent").await.unwrap().is_some());
    assert!(store.run("parent").await.unwrap().is_some());
    // The old event predates the waiting parent's own start, so nothing can consume it.
    assert_eq!(purged.events, 1);
    // Nothing more to do: a second pass deletes nothing.
    assert_eq!(
        store
            .purge(Some(now - 30 * DAY), Some(now - 30 * DAY), 10)
            .await
            .unwrap(),
        Purged::default()
    );
}

async fn delivery_reports_never_go_back(store: DynStore) {
    let mut c = insert(new_run("r1", "wf", T0), state(RunStatus::Completed, None));
    c.outbox = vec![message("m1", Some("r1"), "k1", T0)];
    committed(&store, c).await;
    let claimed = store.claim_outbox("a", T0 + 1, LEASE, 1).await.unwrap();
    let channel = claimed[0].channel.clone();
    let sent = DeliveryOutcome::Sent {
        provider_id: Some("SM1".into()),
    };
    assert!(
        store
            .finish_delivery("m1", "a", sent, T0 + 2)
            .await
            .unwrap()
    );

    let report = |delivery: &'static str, at: i64| {
        let (store, channel) = (store.clone(), channel.clone());
        async move {
            store
                .record_delivery(&channel, "SM1", delivery, None, at)
                .await
                .unwrap()
                .map(|m| (m.id, m.delivery, m.delivery_at))
        }
    };
    assert_eq!(
        report("delivered", T0 + 3).await,
        Some(("m1".into(), Some("delivered".into()), Some(T0 + 3)))
    );
    // A late `sent` does not undo `delivered`; a complaint after it is recorded.
    assert_eq!(report("sent", T0 + 4).await, None);
    assert_eq!(
        report("complained", T0 + 5).await,
        Some(("m1".into(), Some("complained".into()), Some(T0 + 5)))
    );
    assert_eq!(report("delivered", T0 + 6).await, None);
    // Another channel's message of the same id, or an unknown id: nothing.
    assert_eq!(
        store
            .record_delivery("elsewhere", "SM1", "delivered", None, T0 + 7)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .record_delivery(&channel, "SM2", "delivered", None, T0 + 7)
            .await
            .unwrap(),
        None
    );
}

async fn addresses_are_suppressed_per_channel(store: DynStore) {
    assert_eq!(
        store
            .address_suppression("email", "ann@example.org")
            .await
            .unwrap(),
        None
    );
    store
        .suppress_address(
            "email",
            "ann@example.org",
            "bounced",
            Some("550 no such user"),
            T0,
        )
        .await
        .unwrap();
    store
        .suppress_address("email", "ann@example.org", "complained", None, T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        store
            .address_suppression("email", "ann@example.org")
            .await
            .unwrap(),
        Some("complained".to_owned())
    );
    assert_eq!(
        store
            .address_suppression("sms", "ann@example.org")
            .await
            .unwrap(),
        None,
        "another channel is not affected"
    );
    let wrong = store
        .suppress_address("email", "bob@example.org", "annoyed", None, T0)
        .await;
    assert!(wrong.is_err(), "only the reasons providers report are kept");
}

/// The reads a batch (or one message's check) makes at once answer as the one-at-a-time
/// reads do.
async fn recipients_are_read_together(store: DynStore) {
    let mut bob = person("bob@example.org", "Bob", Some("lead"), T0);
    bob.phone = Some("+15550001111".into());
    store
        .insert_events(
            &[],
            &[],
            &[
                person("ann@example.org", "Ann", Some("unsubscribed"), T0),
                bob,
            ],
            &[],
        )
        .await
        .unwrap();
    store
        .suppress_address("email", "ann@example.org", "bounced", None, T0)
        .await
        .unwrap();
    store
        .suppress_address("sms", "+15550001111", "unsubscribed", None, T0)
        .await
        .unwrap();

    let ids = |cs: Vec<Contact>| {
        let mut ids: Vec<String> = cs.into_iter().map(|c| c.id).collect();
        ids.sort();
        ids
    };
    let all = ["c-ann@example.org", "c-bob@example.org", "c-nobody"].map(String::from);
    assert_eq!(
        ids(store.contacts(&all).await.unwrap()),
        ["c-ann@example.org", "c-bob@example.org"]
    );
    assert!(store.contacts(&[]).await.unwrap().is_empty());
    let found = store
        .find_contacts(
            &["ann@example.org".into(), "zed@example.org".into()],
            &["+15550001111".into()],
        )
        .await
        .unwrap();
    assert_eq!(ids(found), ["c-ann@example.org", "c-bob@example.org"]);

    let mut s = store
        .address_suppressions(
            &["email".into(), "sms".into(), "chat".into()],
            &["ann@example.org".into(), "+15550001111".into(), "x".into()],
        )
        .await
        .unwrap();
    s.sort();
    assert_eq!(
        s,
        [
            ("email".into(), "ann@example.org".into(), "bounced".into()),
            ("sms".into(), "+15550001111".into(), "unsubscribed".into()),
        ]
    );
    let only_email = store
        .address_suppressions(&["email".into()], &["+15550001111".into()])
        .await
        .unwrap();
    assert!(only_email.is_empty(), "{only_email:?}");

    // One message's check: the suppression and the contact in one read, by e-mail first.
    let (reason, contact) = store
        .recipient("email", "ann@example.org", Some("ann@example.org"), None)
        .await
        .unwrap();
    assert_eq!(reason.as_deref(), Some("bounced"));
    assert_eq!(contact.map(|c| c.status), Some(Some("unsubscribed".into())));
    let (reason, contact) = store
        .recipient(
            "sms",
            "+15550001111",
            Some("nobody@example.org"),
            Some("+15550001111"),
        )
        .await
        .unwrap();
    assert_eq!(reason.as_deref(), Some("unsubscribed"));
    assert_eq!(contact.map(|c| c.id), Some("c-bob@example.org".into()));
    let (reason, contact) = store
        .recipient("sms", "+15559999999", None, Some("+15559999999"))
        .await
        .unwrap();
    assert_eq!((reason, contact), (None, None));
}

/// Outcomes recorded together (messages sent go many to a statement, the rest one each) say,
/// in the order given, which the owner still held; one it no longer holds is left as it is.
async fn a_batch_of_outcomes_is_recorded_in_order(store: DynStore) {
    let mut c = insert(new_run("r1", "wf", T0), state(RunStatus::Completed, None));
    c.outbox = (1..=4)
        .map(|i| message(&format!("m{i}"), Some("r1"), &format!("k{i}"), T0 + i))
        .collect();
    committed(&store, c).await;
    let now = T0 + 100;
    assert_eq!(
        store.claim_outbox("a", now, LEASE, 3).await.unwrap().len(),
        3
    );
    assert_eq!(
        store.claim_outbox("b", now, LEASE, 10).await.unwrap().len(),
        1
    );
    let sent = |p: Option<&str>| DeliveryOutcome::Sent {
        provider_id: p.map(Into::into),
    };
    let held = store
        .finish_deliveries(
            "a",
            vec![
                ("m1".into(), sent(Some("p1"))),
                (
                    "m2".into(),
                    DeliveryOutcome::Failed {
                        error: "550".into(),
                    },
                ),
                ("m4".into(), sent(Some("p4"))),
                ("m3".into(), sent(None)),
            ],
            now + 1,
        )
        .await
        .unwrap();
    assert_eq!(held, vec![true, true, false, true], "m4 is b's");
    let get = |id: &'static str| {
        let store = store.clone();
        async move {
            let m = store.message(id).await.unwrap().unwrap();
            (m.status, m.provider_id)
        }
    };
    assert_eq!(get("m1").await, (OutboxStatus::Sent, Some("p1".into())));
    assert_eq!(get("m2").await, (OutboxStatus::Failed, None));
    assert_eq!(get("m3").await, (OutboxStatus::Sent, None));
    assert_eq!(get("m4").await, (OutboxStatus::Sending, None));
}

async fn sent_messages_come_per_recipient_in_sending_order(store: DynStore) {
    let to = |id: &str, channel: &str, recipient: &str| {
        let mut m = message(id, Some("r1"), &format!("key-{id}"), T0);
        m.channel = channel.into();
        m.recipient = recipient.into();
        m
    };
    let mut c = insert(new_run("r1", "wf", T0), state(RunStatus::Completed, None));
    c.outbox = vec![
        to("a1", "chat", "ann"),
        to("a2", "chat", "ann"),
        to("a3", "chat", "ann"),
        to("a-failed", "chat", "ann"),
        to("a-waiting", "chat", "ann"),
        to("b1", "chat", "bob"),
        to("e1", "email", "ann"),
    ];
    committed(&store, c).await;
    assert_eq!(
        store.claim_outbox("d", T0, LEASE, 10).await.unwrap().len(),
        7
    );
    let sent = |id: &'static str, at: Millis| {
        let store = store.clone();
        async move {
            let outcome = DeliveryOutcome::Sent { provider_id: None };
            assert!(store.finish_delivery(id, "d", outcome, at).await.unwrap());
        }
    };
    // Sent in this order; a3 is sent before a2 but in the same millisecond, so the id decides.
    sent("a1", T0 + 10).await;
    sent("b1", T0 + 10).await;
    sent("e1", T0 + 15).await;
    sent("a3", T0 + 20).await;
    sent("a2", T0 + 20).await;
    let failed = DeliveryOutcome::Failed { error: "no".into() };
    assert!(
        store
            .finish_delivery("a-failed", "d", failed, T0 + 30)
            .await
            .unwrap()
    );
    let retry = DeliveryOutcome::Retry {
        error: "later".into(),
        next_attempt_at: T0 + 60_000,
    };
    assert!(
        store
            .finish_delivery("a-waiting", "d", retry, T0 + 30)
            .await
            .unwrap()
    );

    let read = |recipients: &[&str], after: (Millis, &str), limit: i64, newest: bool| {
        let store = store.clone();
        let query = SentMessages {
            channel: "chat".into(),
            recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
            after: (after.0, after.1.to_owned()),
            limit,
            newest,
        };
        async move {
            store
                .sent_messages(&query)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(read(&["ann"], (0, ""), 10, false).await, ["a1", "a2", "a3"]);
    assert_eq!(
        read(&["ann"], (T0 + 10, "a1"), 10, false).await,
        ["a2", "a3"]
    );
    assert_eq!(read(&["ann"], (T0 + 20, "a2"), 10, false).await, ["a3"]);
    assert_eq!(
        read(&["ann"], (T0 + 20, "a3"), 10, false).await,
        Vec::<String>::new()
    );
    assert_eq!(
        read(&["ann", "bob"], (T0 + 10, ""), 10, false).await,
        ["a1", "b1", "a2", "a3"]
    );
    assert_eq!(read(&["ann"], (0, ""), 1, false).await, ["a1"]);
    assert_eq!(
        read(&["ann"], (0, ""), 2, true).await,
        ["a2", "a3"],
        "the newest two, oldest first"
    );
    assert_eq!(
        read(&["carl"], (0, ""), 10, false).await,
        Vec::<String>::new()
    );
    let sent_at = store.message("a2").await.unwrap().unwrap().sent_at;
    assert_eq!(sent_at, Some(T0 + 20));
}

async fn a_batch_of_outcomes_is_recorded_for_the_messages_still_held(store: DynStore) {
    let queued = [
        message("b1", None, "k-b1", T0),
        message("b2", None, "k-b2", T0),
        message("b3", None, "k-b3", T0),
    ];
    store.insert_events(&[], &[], &[], &queued).await.unwrap();
    let claimed = store.claim_outbox("a", T0, 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 3);
    // b3's claim ran out and another dispatcher took it.
    let taken = store
        .claim_outbox("b", T0 + 2_000, 1_000, 10)
        .await
        .unwrap();
    assert_eq!(taken.len(), 3, "every claim had run out at T0 + 2 s");
    let reclaimed = store
        .claim_outbox("a", T0 + 4_000, 1_000, 10)
        .await
        .unwrap();
    assert_eq!(reclaimed.len(), 3);
    let b3 = store
        .claim_outbox("b", T0 + 6_000, 1_000, 10)
        .await
        .unwrap();
    assert_eq!(b3.len(), 3);
    // Now "b" holds all three; "a" records outcomes for b1 and b2 and is refused, and "b"
    // records b1 (with a fallback), b2 and b3 together.
    let fallback = NewOutbox {
        channel: "backup".into(),
        ..message("b1-fallback", None, "k-b1>backup", T0 + 6_000)
    };
    let stale = store
        .finish_deliveries(
            "a",
            vec![
                ("b1".into(), DeliveryOutcome::Sent { provider_id: None }),
                ("b2".into(), DeliveryOutcome::Sent { provider_id: None }),
            ],
            T0 + 6_001,
        )
        .await
        .unwrap();
    assert_eq!(
        stale,
        [false, false],
        "a dispatcher whose claims ran out changes nothing"
    );
    let held = store
        .finish_deliveries(
            "b",
            vec![
                (
                    "b1".into(),
                    DeliveryOutcome::FellBack {
                        error: "refused".into(),
                        next: Box::new(fallback),
                    },
                ),
                (
                    "b2".into(),
                    DeliveryOutcome::Sent {
                        provider_id: Some("P2".into()),
                    },
                ),
                (
                    "b3".into(),
                    DeliveryOutcome::Deferred {
                        reason: "quiet hours".into(),
                        until: T0 + 60_000,
                    },
                ),
            ],
            T0 + 6_002,
        )
        .await
        .unwrap();
    assert_eq!(held, [true, true, true]);
    let status = |id: &'static str| {
        let store = store.clone();
        async move { store.message(id).await.unwrap().unwrap() }
    };
    assert_eq!(status("b1").await.status, OutboxStatus::Failed);
    assert_eq!(status("b1-fallback").await.status, OutboxStatus::Pending);
    assert_eq!(status("b1-fallback").await.channel, "backup");
    assert_eq!(status("b2").await.provider_id.as_deref(), Some("P2"));
    let b3 = status("b3").await;
    assert_eq!(
        (b3.status, b3.next_attempt_at, b3.attempts),
        (OutboxStatus::Pending, Some(T0 + 60_000), 3),
        "deferred: due again later, the claim's attempt given back"
    );
}

async fn a_persons_open_conversation_is_found_by_its_label(store: DynStore) {
    let conversation = |id: &str, key: &str, at: Millis| {
        let mut run = new_run(id, "cathy", at);
        run.labels = json!({"conversation": key, "team": "sales"});
        run
    };
    committed(
        &store,
        insert(
            conversation("old", "chat:v1", T0),
            state(RunStatus::Completed, None),
        ),
    )
    .await;
    committed(
        &store,
        insert(
            conversation("open", "chat:v1", T0 + 10),
            state(RunStatus::Waiting, None),
        ),
    )
    .await;
    committed(
        &store,
        insert(
            conversation("other", "chat:v2", T0 + 20),
            state(RunStatus::Waiting, None),
        ),
    )
    .await;
    committed(
        &store,
        insert(
            new_run("unlabelled", "cathy", T0 + 30),
            state(RunStatus::Waiting, None),
        ),
    )
    .await;
    let open = |wf: &'static str, key: &'static str| {
        let store = store.clone();
        async move {
            store
                .open_conversation(wf, key)
                .await
                .unwrap()
                .map(|r| r.id)
        }
    };
    assert_eq!(open("cathy", "chat:v1").await.as_deref(), Some("open"));
    assert_eq!(open("cathy", "chat:v2").await.as_deref(), Some("other"));
    assert_eq!(open("cathy", "chat:v3").await, None);
    assert_eq!(open("other-bot", "chat:v1").await, None, "per conversation");
    committed(
        &store,
        insert(
            conversation("ended", "chat:v4", T0 + 50),
            state(RunStatus::Cancelled, None),
        ),
    )
    .await;
    assert_eq!(
        open("cathy", "chat:v4").await,
        None,
        "an ended one is not open"
    );
}
