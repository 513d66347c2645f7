//! A segment's commit: the run row (inserted, or updated under its lease), its step log, and
//! what the segment caused (messages, events, new runs, contacts, wake-ups).
//!
//! How a backend groups these statements is its own affair: SQLite writes many commits as one
//! batch (`group_commit`), PostgreSQL the run and its steps as one statement. The statements
//! and the order of the effects are these, for both.

use super::{Backend, Exec, Param, Stmt, Tx, events, outbox, params, push_placeholders, runs};
use crate::store::rows::to_text;
use crate::store::{
    Commit, CommitOutcome, Contact, NewRun, Result, RunState, RunStatus, RunWrite, StepLogEntry,
    StoreError,
};

/// A run row's columns, bound by [`run_params`] (`created_at` twice: it is also the first
/// `updated_at`).
macro_rules! run_columns {
    () => {
        "id, workflow_id, version, status, trigger_kind, idempotency_key, cursor, context, due_at,
         wait_event, wait_key, lease_owner, attempts, contact_id, parent_run_id, response, error, created_at, updated_at, finished_at, labels"
    };
}
/// A taken idempotency key inserts nothing.
macro_rules! run_conflict {
    () => {
        "ON CONFLICT (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
    };
}

/// Parameters a run row takes.
const RUN_PARAMS: usize = 20;

/// A run's row, from parameters `$1` to `$20` as [`insert_run`] binds them; a taken
/// idempotency key inserts nothing.
pub(in crate::store) const INSERT_RUN: &str = concat!(
    "INSERT INTO runs (",
    run_columns!(),
    ")
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $18, $19, $20)
     ",
    run_conflict!()
);

/// Inserts a new run: as its segment left it when `state` is given (the trigger ran its first
/// steps before storing it), else pending and due now. With an owner and a `running` state,
/// the run is created leased to that owner.
pub(in crate::store) fn insert_run(run: &NewRun, state: Option<(&RunState, Option<&str>)>) -> Stmt {
    let pending;
    let (s, owner) = match state {
        Some((s, owner)) => (s, owner.filter(|_| s.status == RunStatus::Running)),
        None => {
            pending = pending_state(run);
            (&pending, None)
        }
    };
    Stmt::new(INSERT_RUN, run_params(run, s, owner))
}

/// Inserts new runs, each in the state given and leased to the owner given (if any), in one
/// statement (a campaign's enrolment, a group commit); runs whose idempotency key is taken
/// are left out.
pub(in crate::store) fn insert_runs(runs: &[(&NewRun, &RunState, Option<&str>)]) -> Stmt {
    let mut sql = String::from(concat!("INSERT INTO runs (", run_columns!(), ") VALUES "));
    let mut p = Vec::with_capacity(runs.len() * RUN_PARAMS);
    for (n, (run, state, owner)) in runs.iter().enumerate() {
        let first = p.len() + 1;
        sql.push_str(if n == 0 { "(" } else { ", (" });
        // `created_at` (the 18th) is bound once and written twice, as in INSERT_RUN.
        push_placeholders(&mut sql, first, 18);
        sql.push_str(", ");
        push_placeholders(&mut sql, first + 17, RUN_PARAMS - 17);
        sql.push(')');
        p.extend(run_params(run, state, *owner));
    }
    sql.push(' ');
    sql.push_str(run_conflict!());
    Stmt::new(sql, p)
}

/// The [`RUN_PARAMS`] parameters of a run's row.
fn run_params(run: &NewRun, s: &RunState, owner: Option<&str>) -> Vec<Param> {
    params![
        &run.id,
        &run.workflow_id,
        &s.version,
        s.status.as_str(),
        run.trigger_kind.as_str(),
        &run.idempotency_key,
        to_text(&s.cursor),
        to_text(&s.context),
        s.due_at,
        &s.wait_event,
        &s.wait_key,
        owner,
        s.attempts,
        &s.contact_id,
        &run.parent_run_id,
        s.response.as_ref().map(to_text),
        &s.error,
        run.created_at,
        s.finished_at,
        to_text(&run.labels),
    ]
}

/// The state of a run that was just started and not yet claimed: pending and due now, or,
/// for a queued conversation start, waiting with no time to wake (only its promotion makes it
/// due).
pub(in crate::store) fn pending_state(run: &NewRun) -> RunState {
    let queued = run.queued.as_ref();
    RunState {
        status: if queued.is_some() {
            RunStatus::Waiting
        } else {
            RunStatus::Pending
        },
        version: run.version.clone(),
        cursor: run.cursor.clone(),
        context: run.context.clone(),
        due_at: queued.is_none().then_some(run.created_at),
        wait_event: queued.map(|_| crate::store::QUEUED_CONVERSATION.to_owned()),
        wait_key: queued.cloned(),
        attempts: 0,
        contact_id: None,
        response: None,
        error: None,
        finished_at: None,
    }
}

/// Updates a run `owner` holds, from parameters `$1` to `$16`; changes nothing if it does not
/// hold it any more. A run that stays `running` keeps its lease.
pub(in crate::store) const UPDATE_RUN: &str = "UPDATE runs SET status = $1, version = $2, cursor = $3, context = $4, due_at = $5, wait_event = $6,
         wait_key = $7, attempts = $8, contact_id = $9, response = $10, error = $11, finished_at = $12,
         updated_at = $13, lease_owner = CASE WHEN $14 THEN lease_owner ELSE NULL END
     WHERE id = $15 AND lease_owner = $16 AND status = 'running'";

pub(in crate::store) fn update_run(c: &Commit, run_id: &str, owner: &str) -> Stmt {
    let s = &c.state;
    let p = params![
        s.status.as_str(),
        &s.version,
        to_text(&s.cursor),
        to_text(&s.context),
        s.due_at,
        &s.wait_event,
        &s.wait_key,
        s.attempts,
        &s.contact_id,
        s.response.as_ref().map(to_text),
        &s.error,
        s.finished_at,
        c.now,
        s.status == RunStatus::Running,
        run_id,
        owner,
    ];
    Stmt::new(UPDATE_RUN, p)
}

/// Updates runs as [`update_run`] does, many in one statement: each `(commit, run id, owner)`
/// changes its run only if that owner still holds it. Returns a row for each run it changed.
pub(in crate::store) fn update_runs(runs: &[(&Commit, &str, &str)]) -> Stmt {
    // The columns of `v` are those of UPDATE_RUN's parameters: `column1` is `$1`, and so on.
    let mut sql = String::from(
        "UPDATE runs SET status = v.column1, version = v.column2, cursor = v.column3, context = v.column4,
             due_at = v.column5, wait_event = v.column6, wait_key = v.column7, attempts = v.column8,
             contact_id = v.column9, response = v.column10, error = v.column11, finished_at = v.column12,
             updated_at = v.column13, lease_owner = CASE WHEN v.column14 THEN runs.lease_owner ELSE NULL END
         FROM (VALUES ",
    );
    let mut p = Vec::with_capacity(runs.len() * 16);
    for (n, (c, run_id, owner)) in runs.iter().enumerate() {
        sql.push_str(if n == 0 { "(" } else { ", (" });
        push_placeholders(&mut sql, p.len() + 1, 16);
        sql.push(')');
        p.extend(update_run(c, run_id, owner).params);
    }
    sql.push_str(
        ") AS v WHERE runs.id = v.column15 AND runs.lease_owner = v.column16 AND runs.status = 'running'
         RETURNING 1",
    );
    Stmt::new(sql, p)
}

/// The step log's columns, in the order [`upsert_steps`] binds them.
pub(in crate::store) const STEP_COLUMNS: &str = "run_id, seq, step_id, action, status, attempt, started_at, finished_at, output, error, iteration";

/// Re-written entries (a retried step's) replace the old ones.
pub(in crate::store) const STEP_CONFLICT: &str =
    "ON CONFLICT (run_id, seq) DO UPDATE SET step_id = excluded.step_id, action = excluded.action,
         status = excluded.status, attempt = excluded.attempt, started_at = excluded.started_at,
         finished_at = excluded.finished_at, output = excluded.output, error = excluded.error,
         iteration = excluded.iteration";

/// Writes step-log entries, one row each (`steps` is not empty).
pub(in crate::store) fn upsert_steps(run_id: &str, steps: &[StepLogEntry]) -> Stmt {
    upsert_steps_of(steps.iter().map(|s| (run_id, s)))
}

/// Writes step-log entries of several runs, `(run id, entry)`, one row each (not empty).
pub(in crate::store) fn upsert_steps_of<'a>(
    steps: impl IntoIterator<Item = (&'a str, &'a StepLogEntry)>,
) -> Stmt {
    let mut p = Vec::new();
    let mut sql = format!("INSERT INTO step_log ({STEP_COLUMNS}) VALUES ");
    for (n, (run_id, step)) in steps.into_iter().enumerate() {
        sql.push_str(if n == 0 { "(" } else { ", (" });
        push_placeholders(&mut sql, p.len() + 1, 11);
        sql.push(')');
        p.extend(params![
            run_id,
            step.seq,
            &step.step_id,
            &step.action,
            step.status.as_str(),
            step.attempt,
            step.started_at,
            step.finished_at,
            step.output.as_ref().map(to_text),
            &step.error,
            &step.iteration,
        ]);
    }
    sql.push(' ');
    sql.push_str(STEP_CONFLICT);
    Stmt::new(sql, p)
}

/// What writing a commit's run came to.
pub(in crate::store) enum RunWritten {
    Yes,
    /// An insert whose idempotency key another run holds: nothing was written.
    Duplicate,
    /// An update of a run this owner no longer leases: nothing was written.
    LeaseLost,
}

/// Finishes a commit whose run write went as `written`: writes the rest of the segment in
/// `tx` and commits it, or rolls it back and says why not.
pub(in crate::store) async fn finish<B: Backend>(
    b: &B,
    mut tx: Tx<B>,
    c: &Commit,
    written: RunWritten,
) -> Result<CommitOutcome> {
    match written {
        RunWritten::Yes => {}
        RunWritten::Duplicate => {
            tx.rollback().await?;
            return duplicate(b, c).await;
        }
        RunWritten::LeaseLost => {
            tx.rollback().await?;
            return Err(StoreError::LeaseLost);
        }
    }
    for m in &c.outbox {
        // Two transactions enqueueing the same key: the second waits for the first and then
        // inserts nothing, so one message goes out.
        B::Db::execute(&mut *tx, outbox::insert(std::slice::from_ref(m))).await?;
    }
    for e in &c.events {
        B::Db::execute(&mut *tx, events::insert(std::slice::from_ref(e))).await?;
    }
    for r in &c.new_runs {
        B::Db::execute(&mut *tx, insert_run(r, None)).await?;
    }
    let mut contacts = Vec::with_capacity(c.contacts.len());
    for u in &c.contacts {
        contacts.push(B::upsert_contact(&mut tx, u).await?);
    }
    if !c.wake_runs.is_empty() {
        B::Db::execute(&mut *tx, runs::wake::<B::Db>(&c.wake_runs, c.now)).await?;
    }
    tx.commit().await?;
    Ok(CommitOutcome::Committed { contacts })
}

/// The run that holds the idempotency key an insert found taken.
pub(in crate::store) async fn duplicate<B: Backend>(b: &B, c: &Commit) -> Result<CommitOutcome> {
    let RunWrite::Insert { run, .. } = &c.run else {
        return Err(StoreError::Corrupt(
            "an update reported as a duplicate".into(),
        ));
    };
    let key = run.idempotency_key.as_deref().unwrap_or_default();
    let existing = runs::by_idempotency_key(b, &run.workflow_id, key)
        .await?
        .map(|r| r.id)
        .ok_or_else(|| StoreError::Corrupt("idempotency conflict without a run".into()))?;
    Ok(CommitOutcome::Duplicate {
        existing_run_id: existing,
    })
}

/// Stores events, the runs they start and the contact changes they make, in one transaction
/// (see [`crate::store::Store::insert_events`]).
pub(in crate::store) async fn insert_events<B: Backend>(
    b: &B,
    events: &[crate::store::NewEvent],
    new_runs: &[NewRun],
    contacts: &[crate::store::ContactUpsert],
    outbox: &[crate::store::NewOutbox],
) -> Result<Vec<Contact>> {
    let mut tx = b.begin().await?;
    // Contacts first: the runs started in this transaction see them as they are now.
    let mut stored = Vec::with_capacity(contacts.len());
    for u in contacts {
        stored.push(B::upsert_contact(&mut tx, u).await?);
    }
    for e in events {
        B::Db::execute(&mut *tx, events::insert(std::slice::from_ref(e))).await?;
    }
    for r in new_runs {
        B::Db::execute(&mut *tx, insert_run(r, None)).await?;
    }
    if !outbox.is_empty() {
        B::Db::execute(&mut *tx, outbox::insert(outbox)).await?;
    }
    tx.commit().await?;
    Ok(stored)
}
