//! Executing a run, segment by segment (see the module docs of `engine`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::clock::rfc3339;
use super::cursor::{Cursor, LoopFrame, Wait};
use super::registry::{CompiledWorkflow, Registry};
use super::{Engine, EngineError, SyncReply, new_id, retry};
use crate::definitions::model::step::{
    Action, MessageCategory, OnTimeout, ResponseStatus, Step, WaitStep,
};
use crate::definitions::model::workflow::OnUpdate;
use crate::store::{
    Commit, CommitOutcome, ContactUpsert, Millis, NewEvent, NewOutbox, NewRun, RunRecord, RunState,
    RunStatus, RunWrite, StepLogEntry, StoreError,
};
use crate::templates::{JsonNode, RenderError};
use minijinja::value::{Serde, Value as JValue, merge_maps};

/// How a run's first commit went, for the caller that started it.
#[derive(Debug)]
pub(crate) enum FirstCommit {
    Committed,
    Duplicate(String),
}

/// Why a step did not complete.
#[derive(Debug, Clone)]
pub(crate) enum StepError {
    /// Retrying cannot help: bad input, a template error, a 4xx.
    Permanent(String),
    /// Worth retrying under the step's policy.
    Transient {
        message: String,
        retry_after: Option<std::time::Duration>,
    },
}

impl From<RenderError> for StepError {
    fn from(e: RenderError) -> Self {
        StepError::Permanent(match (&e.template, e.line) {
            (Some(t), Some(l)) => format!("{} (template {t}, line {l})", e.message),
            _ => e.message,
        })
    }
}

/// A step's result.
enum Outcome {
    /// Done; record this output and go to the next step.
    Done(Value),
    /// Done; continue at this node (a branch, a loop body), or after the step if `None`.
    Goto(Option<usize>, Value),
    /// Wait: the run suspends until `due_at` (or until woken).
    Wait {
        wait: Wait,
        due_at: Option<Millis>,
        event: Option<(String, String)>,
        note: Value,
    },
    /// End the run as failed with this message (`fail`).
    Fail(String),
}

/// What to do after a commit.
enum After {
    WakeWaiters {
        name: String,
        key: String,
    },
    /// A `wait_for` was stored: look once more for its event, which may have been stored by
    /// another transaction between our look and our commit.
    Recheck {
        name: String,
        key: String,
    },
    Reply(SyncReply),
    Work,
    Outbox,
}

#[derive(Default)]
struct Pending {
    steps: Vec<StepLogEntry>,
    outbox: Vec<NewOutbox>,
    events: Vec<NewEvent>,
    new_runs: Vec<NewRun>,
    contacts: Vec<ContactUpsert>,
    wake_runs: Vec<String>,
    after: Vec<After>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.steps.is_empty()
            && self.outbox.is_empty()
            && self.events.is_empty()
            && self.new_runs.is_empty()
            && self.contacts.is_empty()
            && self.wake_runs.is_empty()
    }
}

/// A run being executed.
struct Active {
    id: String,
    workflow: Arc<CompiledWorkflow>,
    cursor: Cursor,
    /// The run's context. Shared with the template values of the step being executed (see
    /// `JsonNode`); changed with `Arc::make_mut` once they are gone, so it is not copied.
    ctx: Arc<Value>,
    attempts: i64,
    contact_id: Option<String>,
    response: Option<Value>,
    created_at: Millis,
    parent_run_id: Option<String>,
    /// Set until the run's first commit, which inserts it.
    insert: Option<NewRun>,
    /// What steps have added to the context, in bytes, since it was last measured whole (see
    /// `grow`).
    grown: usize,
}

enum Flow {
    /// Continue with the next step; commit first when `commit` is set.
    Next { commit: bool },
    /// Commit before the next step runs (it is an external call).
    Barrier,
    Suspend {
        due_at: Option<Millis>,
        event: Option<(String, String)>,
    },
    End {
        status: RunStatus,
        error: Option<String>,
    },
}

const DEFAULT_HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Engine {
    /// Executes a run that has not been stored yet; its first commit inserts it.
    pub(crate) async fn drive_new(
        self: Arc<Self>,
        new: NewRun,
        workflow: Arc<CompiledWorkflow>,
        first: tokio::sync::oneshot::Sender<Result<FirstCommit, EngineError>>,
    ) {
        let active = Active {
            id: new.id.clone(),
            cursor: Cursor::from_value(&new.cursor).unwrap_or_default(),
            ctx: Arc::new(new.context.clone()),
            attempts: 0,
            contact_id: None,
            response: None,
            created_at: new.created_at,
            parent_run_id: new.parent_run_id.clone(),
            workflow,
            insert: Some(new),
            grown: 0,
        };
        self.drive(active, Some(first)).await;
    }

    /// Executes a run this process has claimed.
    pub(crate) async fn drive_claimed(self: Arc<Self>, run: RunRecord) {
        let run_id = run.id.clone();
        crate::sync::lock(&self.held).insert(run_id.clone());
        match self.prepare(run).await {
            Ok(active) => self.drive(active, None).await,
            Err(e) => {
                tracing::error!(run = %run_id, error = %e, "cannot resume run");
                self.fail_unresumable(&run_id, &e.to_string()).await;
                self.release(&run_id);
            }
        }
    }

    async fn fail_unresumable(&self, run_id: &str, error: &str) {
        let Ok(Some(run)) = self.store.run(run_id).await else {
            return;
        };
        let now = self.now();
        let commit = Commit {
            run: RunWrite::Update {
                run_id: run_id.to_owned(),
                owner: self.options.owner.clone(),
            },
            state: RunState {
                status: RunStatus::Failed,
                version: run.version,
                cursor: run.cursor,
                context: run.context,
                due_at: None,
                wait_event: None,
                wait_key: None,
                attempts: run.attempts,
                contact_id: run.contact_id,
                response: run.response,
                error: Some(error.to_owned()),
                finished_at: Some(now),
            },
            now,
            steps: Vec::new(),
            outbox: Vec::new(),
            events: Vec::new(),
            new_runs: Vec::new(),
            contacts: Vec::new(),
            wake_runs: run.parent_run_id.into_iter().collect(),
        };
        let result = self.store.commit(commit).await;
        self.storage.record(&result);
        if let Err(e) = result {
            tracing::error!(run = %run_id, error = %e, "cannot record that the run failed");
        }
    }

    /// Loads what a claimed run needs: its workflow version (moving to the newest version
    /// when the workflow says `on_update: latest` and the step still exists there), and its
    /// contact as stored now, so an opt-out recorded meanwhile is seen.
    async fn prepare(&self, run: RunRecord) -> Result<Active, EngineError> {
        let mut workflow = self
            .workflow_version(&run.workflow_id, &run.version)
            .await?;
        let cursor = Cursor::from_value(&run.cursor).map_err(EngineError::Invalid)?;
        if let Some(latest) = self.registry().workflows.get(&run.workflow_id).cloned()
            && latest.hash != workflow.hash
            && latest.workflow.on_update == OnUpdate::Latest
        {
            let step_ok = cursor
                .step
                .as_ref()
                .is_none_or(|s| latest.program.node(s).is_some());
            let frames_ok = cursor
                .frames
                .iter()
                .all(|f| latest.program.node(&f.step).is_some());
            if step_ok && frames_ok {
                tracing::info!(run = %run.id, workflow = %run.workflow_id, from = %short(&workflow.hash), to = %short(&latest.hash), "run moves to the new version");
                workflow = latest;
            } else {
                tracing::warn!(
                    run = %run.id,
                    workflow = %run.workflow_id,
                    step = ?cursor.step,
                    "the new version has no step with this run's current step id; the run stays on its version"
                );
            }
        }
        let mut ctx = run.context;
        if let Some(cid) = &run.contact_id
            && let Some(c) = self.store.contact(cid).await?
            && let Some(obj) = ctx.as_object_mut()
        {
            obj.insert(
                "contact".into(),
                serde_json::to_value(&c).unwrap_or(Value::Null),
            );
        }
        Ok(Active {
            id: run.id,
            workflow,
            cursor,
            ctx: Arc::new(ctx),
            attempts: run.attempts,
            contact_id: run.contact_id,
            response: run.response,
            created_at: run.created_at,
            parent_run_id: run.parent_run_id,
            insert: None,
            grown: 0,
        })
    }

    async fn drive(
        &self,
        mut a: Active,
        mut first: Option<tokio::sync::oneshot::Sender<Result<FirstCommit, EngineError>>>,
    ) {
        let mut pending = Pending::default();
        let result: Result<(), EngineError> = async {
            loop {
                let flow = self.step(&mut a, &mut pending).await?;
                let (status, due_at, event, error) = match flow {
                    Flow::Next { commit: false } => continue,
                    Flow::Next { commit: true } | Flow::Barrier => {
                        (RunStatus::Running, Some(self.now() + self.lease_ms()), None, None)
                    }
                    Flow::Suspend { due_at, event } => (RunStatus::Waiting, due_at, event, None),
                    Flow::End { status, error } => (status, None, None, error),
                };
                let finished = status.is_finished();
                if finished {
                    if let Some(parent) = &a.parent_run_id {
                        pending.wake_runs.push(parent.clone());
                        // The parent is due now: tell the workers, rather than leave it to
                        // their next poll.
                        pending.after.push(After::Work);
                    }
                    if a.response.is_none() {
                        pending.after.push(After::Reply(SyncReply::from_finished(&a.id, status, &a.ctx, error.as_deref())));
                    }
                    metrics::counter!("herald_runs_finished_total", "workflow" => a.workflow.metric_id.clone(), "status" => status.as_str()).increment(1);
                }
                match self.commit(&mut a, &mut pending, status, due_at, event, error).await {
                    Ok(Some(dup)) => {
                        if let Some(f) = first.take() {
                            let _ = f.send(Ok(FirstCommit::Duplicate(dup)));
                        }
                        return Ok(());
                    }
                    Ok(None) => {
                        if let Some(f) = first.take() {
                            let _ = f.send(Ok(FirstCommit::Committed));
                        }
                    }
                    Err(e) => return Err(e),
                }
                if status != RunStatus::Running {
                    return Ok(());
                }
                if self.is_draining() && first.is_none() {
                    // Shutting down: leave the rest to whoever claims it next.
                    self.store.release_runs(&self.options.owner, self.now()).await.ok();
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = result {
            match &e {
                EngineError::Store(StoreError::LeaseLost) => {
                    tracing::warn!(run = %a.id, "lost the run's lease (it was cancelled or another worker took it over); stopping")
                }
                other => {
                    tracing::error!(run = %a.id, error = %other, "run interrupted; it resumes when its lease expires")
                }
            }
            if let Some(f) = first.take() {
                let _ = f.send(Err(e));
            }
        }
        self.release(&a.id);
        // Taken only when there is a reply to give: a run that waits keeps its sync caller,
        // who is answered when a later segment responds (or at the webhook's timeout).
        if let Some(response) = &a.response {
            // A reply that was recorded but not delivered (the caller registered late).
            self.reply(&a.id, &SyncReply::from_value(response));
        }
    }

    /// Commits the segment. Returns the existing run's id when an inserted run turned out to
    /// be a duplicate.
    async fn commit(
        &self,
        a: &mut Active,
        p: &mut Pending,
        status: RunStatus,
        due_at: Option<Millis>,
        event: Option<(String, String)>,
        error: Option<String>,
    ) -> Result<Option<String>, EngineError> {
        let now = self.now();
        let (wait_event, wait_key) = event
            .map(|(n, k)| (Some(n), Some(k)))
            .unwrap_or((None, None));
        let state = RunState {
            status,
            version: a.workflow.hash.clone(),
            cursor: a.cursor.to_value(),
            context: (*a.ctx).clone(),
            due_at,
            wait_event,
            wait_key,
            attempts: a.attempts,
            contact_id: a.contact_id.clone(),
            response: a.response.clone(),
            error,
            finished_at: status.is_finished().then_some(now),
        };
        let run = match a.insert.take() {
            Some(new) => RunWrite::Insert {
                run: Box::new(new),
                owner: Some(self.options.owner.clone()),
            },
            None => RunWrite::Update {
                run_id: a.id.clone(),
                owner: self.options.owner.clone(),
            },
        };
        let taken = std::mem::take(p);
        let commit = Commit {
            run,
            state,
            now,
            steps: taken.steps,
            outbox: taken.outbox,
            events: taken.events,
            new_runs: taken.new_runs,
            contacts: taken.contacts,
            wake_runs: taken.wake_runs,
        };
        let result = self.store.commit(commit).await;
        self.storage.record(&result);
        match result? {
            CommitOutcome::Duplicate { existing_run_id } => return Ok(Some(existing_run_id)),
            CommitOutcome::Committed { contacts } => {
                if let Some(last) = contacts.last()
                    && let Some(obj) = Arc::make_mut(&mut a.ctx).as_object_mut()
                {
                    a.contact_id = Some(last.id.clone());
                    obj.insert(
                        "contact".into(),
                        serde_json::to_value(last).unwrap_or(Value::Null),
                    );
                }
            }
        }
        for after in taken.after {
            match after {
                After::WakeWaiters { name, key } => {
                    if let Err(e) = self.store.wake_waiting(&name, &key, now).await {
                        tracing::warn!(event = %name, error = %e, "could not wake waiting runs; they see the event at their timeout");
                    }
                    self.work_ready.notify_waiters();
                }
                After::Recheck { name, key } => {
                    let since = a.created_at;
                    match self
                        .store
                        .find_event(&name, &key, since, &a.cursor.consumed)
                        .await
                    {
                        Ok(Some(_)) => {
                            let _ = self.store.wake_waiting(&name, &key, now).await;
                            self.work_ready.notify_waiters();
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "could not re-check for an event"),
                    }
                }
                After::Reply(reply) => self.reply(&a.id, &reply),
                After::Work => self.work_ready.notify_waiters(),
                After::Outbox => self.outbox_ready.notify_waiters(),
            }
        }
        Ok(None)
    }

    /// Executes the run's current step (or resolves its wait).
    async fn step(&self, a: &mut Active, p: &mut Pending) -> Result<Flow, EngineError> {
        let Some(step_id) = a.cursor.step.clone() else {
            return Ok(Flow::End {
                status: RunStatus::Completed,
                error: None,
            });
        };
        let workflow = a.workflow.clone();
        let Some((idx, node)) = workflow.program.node(&step_id) else {
            return Ok(Flow::End {
                status: RunStatus::Failed,
                error: Some(format!(
                    "step `{step_id}` does not exist in this version of `{}`",
                    workflow.id
                )),
            });
        };
        let step = &node.step;
        // An external call must not happen before the run is stored, nor be undone by a crash
        // that loses the steps before it.
        if matches!(step.action, Action::Http(_))
            && a.cursor.wait.is_none()
            && (a.insert.is_some() || !p.is_empty())
        {
            return Ok(Flow::Barrier);
        }
        let now = self.now();
        let started = *a.cursor.step_started_at.get_or_insert(now);
        let registry = self.registry();
        let timer = std::time::Instant::now();
        let result = match a.cursor.wait.clone() {
            Some(Wait::Retry { until }) if now >= until => {
                a.cursor.wait = None;
                self.execute(a, p, idx, &registry, now).await
            }
            Some(wait) => self.resume(a, wait, step, now).await,
            None => self.execute(a, p, idx, &registry, now).await,
        };
        let outcome = match result {
            Ok(o) => o,
            Err(StepError::Permanent(message)) => {
                return Ok(self.fail_step(a, p, idx, started, message));
            }
            Err(StepError::Transient {
                message,
                retry_after,
            }) => {
                return Ok(self.retry_or_fail(a, p, idx, started, message, retry_after));
            }
        };
        metrics::histogram!(
            "herald_step_duration_seconds",
            "workflow" => workflow.metric_id.clone(),
            "step" => node.metric_step.clone(),
            "action" => step.action.key()
        )
        .record(timer.elapsed().as_secs_f64());
        let is_http = matches!(step.action, Action::Http(_));
        let output = match &outcome {
            Outcome::Done(o) | Outcome::Goto(_, o) => o,
            _ => &Value::Null,
        };
        if let Err(message) = grow(a, output, &registry.config.limits) {
            return Ok(self.fail_step(a, p, idx, started, message));
        }
        Ok(match outcome {
            Outcome::Done(output) => {
                self.complete(a, p, step, started, output, "completed");
                a.cursor.step = node.next.map(|i| workflow.program.nodes[i].step.id.clone());
                Flow::Next { commit: is_http }
            }
            Outcome::Goto(target, output) => {
                // A loop going round again (no output yet) is not a completed step; one that ends is.
                if output != Value::Null {
                    self.complete(a, p, step, started, output, "completed");
                } else {
                    a.cursor.step_started_at = None;
                }
                let next = target.or(node.next);
                a.cursor.step = next.map(|i| workflow.program.nodes[i].step.id.clone());
                Flow::Next { commit: false }
            }
            Outcome::Wait {
                wait,
                due_at,
                event,
                note,
            } => {
                let entry = self.log_entry(a, step, "waiting", started, Some(note), None);
                p.steps.push(entry);
                if let Some((name, key)) = &event {
                    p.after.push(After::Recheck {
                        name: name.clone(),
                        key: key.clone(),
                    });
                }
                a.cursor.wait = Some(wait);
                Flow::Suspend { due_at, event }
            }
            // `fail` is a failure like any other: a handler around it catches it.
            Outcome::Fail(message) => self.fail_step(a, p, idx, started, message),
        })
    }

    /// A step-log line for `step`, numbered next.
    fn log_entry(
        &self,
        a: &mut Active,
        step: &Step,
        status: &str,
        started: Millis,
        output: Option<Value>,
        error: Option<String>,
    ) -> StepLogEntry {
        a.cursor.seq += 1;
        let iteration = (!a.cursor.frames.is_empty()).then(|| {
            a.cursor
                .frames
                .iter()
                .map(|f| f.index.to_string())
                .collect::<Vec<_>>()
                .join(".")
        });
        StepLogEntry {
            seq: a.cursor.seq,
            step_id: step.id.clone(),
            action: step.action.key().to_owned(),
            status: status.into(),
            attempt: a.attempts + 1,
            started_at: started,
            finished_at: self.now(),
            output,
            error,
            iteration,
        }
    }

    fn complete(
        &self,
        a: &mut Active,
        p: &mut Pending,
        step: &Step,
        started: Millis,
        output: Value,
        status: &str,
    ) {
        let entry = self.log_entry(a, step, status, started, Some(output.clone()), None);
        p.steps.push(entry);
        if let Some(steps) = Arc::make_mut(&mut a.ctx)
            .get_mut("steps")
            .and_then(Value::as_object_mut)
        {
            steps.insert(step.id.clone(), json!({"output": output}));
        }
        a.attempts = 0;
        a.cursor.wait = None;
        a.cursor.step_started_at = None;
    }

    /// A step failed for good: its retries are spent, or retrying cannot help. The nearest
    /// `on_error` around it (its own, or an enclosing step's) takes over and the run carries on
    /// after that step; with none, the run fails, its cursor left at the failed step so that an
    /// operator's retry runs it again.
    fn fail_step(
        &self,
        a: &mut Active,
        p: &mut Pending,
        idx: usize,
        started: Millis,
        message: String,
    ) -> Flow {
        let workflow = a.workflow.clone();
        let program = &workflow.program;
        let step = &program.nodes[idx].step;
        let entry = self.log_entry(a, step, "failed", started, None, Some(message.clone()));
        p.steps.push(entry);
        a.cursor.wait = None;
        a.cursor.step_started_at = None;
        let Some(h) = program.handler_for(idx) else {
            let at = workflow
                .locations
                .get(&step.id)
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            return Flow::End {
                status: RunStatus::Failed,
                error: Some(format!("step `{}`{at} failed: {message}", step.id)),
            };
        };
        let handler = &program.nodes[h];
        let unwound = program.unwound(idx, h);
        // Loops the failure leaves are over.
        while a
            .cursor
            .frames
            .last()
            .is_some_and(|f| unwound.iter().any(|&n| program.nodes[n].step.id == f.step))
        {
            a.cursor.frames.pop();
        }
        let error = json!({
            "message": message,
            "step": step.id,
            "action": step.action.key(),
            "at": rfc3339(self.now()),
        });
        let ctx = Arc::make_mut(&mut a.ctx);
        if let Some(obj) = ctx.as_object_mut() {
            obj.insert("error".into(), error.clone());
        }
        if let Some(steps) = ctx.get_mut("steps").and_then(Value::as_object_mut) {
            steps.insert(step.id.clone(), json!({"output": null, "error": error}));
            if h != idx {
                steps.insert(
                    handler.step.id.clone(),
                    json!({"output": null, "error": error}),
                );
            }
        }
        a.attempts = 0;
        let next = handler.handler.flatten().or(handler.next);
        a.cursor.step = next.map(|i| program.nodes[i].step.id.clone());
        tracing::info!(run = %a.id, step = %step.id, handled_by = %handler.step.id, error = %message, "step failed; its on_error takes over");
        // Committed at once, so a crash inside the handler resumes in the handler, and does
        // not repeat the step that failed.
        Flow::Next { commit: true }
    }

    fn retry_or_fail(
        &self,
        a: &mut Active,
        p: &mut Pending,
        idx: usize,
        started: Millis,
        message: String,
        retry_after: Option<std::time::Duration>,
    ) -> Flow {
        let workflow = a.workflow.clone();
        let step = &workflow.program.nodes[idx].step;
        let attempt = a.attempts + 1;
        let Some(policy) = step
            .retry
            .as_ref()
            .filter(|r| attempt < i64::from(r.max_attempts))
        else {
            let message = if attempt > 1 {
                format!("{message} (after {attempt} attempts)")
            } else {
                message
            };
            return self.fail_step(a, p, idx, started, message);
        };
        let now = self.now();
        let backoff = retry::delay(policy, attempt as u32).max(retry_after.unwrap_or_default());
        let until = now + backoff.as_millis() as i64;
        let entry = self.log_entry(
            a,
            step,
            "retrying",
            started,
            Some(json!({"retry_at": rfc3339(until)})),
            Some(message),
        );
        // `log_entry` numbers attempts from the run's count, which this one has not reached yet.
        p.steps.push(StepLogEntry { attempt, ..entry });
        a.attempts = attempt;
        a.cursor.wait = Some(Wait::Retry { until });
        Flow::Suspend {
            due_at: Some(until),
            event: None,
        }
    }

    /// The context templates see: the run's context, the loop variables, and the clock. The
    /// context is not copied; templates read it in place.
    fn eval_context(&self, a: &Active, now: Millis) -> JValue {
        let mut extra: BTreeMap<String, JValue> = a
            .cursor
            .frames
            .iter()
            .map(|f| {
                (
                    f.var.clone(),
                    JValue::from(Serde(f.items.get(f.index).unwrap_or(&Value::Null))),
                )
            })
            .collect();
        extra.insert("__now".into(), JValue::from(rfc3339(now)));
        // The last map wins: loop variables and the clock over the context.
        merge_maps([JsonNode::root(a.ctx.clone()), JValue::from(extra)])
    }

    async fn resume(
        &self,
        a: &mut Active,
        wait: Wait,
        step: &Step,
        now: Millis,
    ) -> Result<Outcome, StepError> {
        match wait {
            Wait::Timer { until } => {
                if now >= until {
                    Ok(Outcome::Done(json!({"waited_until": rfc3339(until)})))
                } else {
                    Ok(Outcome::Wait {
                        wait: Wait::Timer { until },
                        due_at: Some(until),
                        event: None,
                        note: json!({"until": rfc3339(until)}),
                    })
                }
            }
            // Due retries do not come here (`step` executes them); this is a spurious wake.
            Wait::Retry { until } => Ok(Outcome::Wait {
                wait: Wait::Retry { until },
                due_at: Some(until),
                event: None,
                note: json!({"retry_at": rfc3339(until)}),
            }),
            Wait::Event {
                name,
                key,
                since,
                timeout_at,
            } => {
                match self
                    .store
                    .find_event(&name, &key, since, &a.cursor.consumed)
                    .await
                {
                    Ok(Some(e)) => {
                        a.cursor.consumed.push(e.id.clone());
                        Ok(Outcome::Done(event_output(&e)))
                    }
                    Ok(None) if now >= timeout_at => {
                        let on_timeout = match &step.action {
                            Action::WaitFor(w) => w.on_timeout,
                            _ => OnTimeout::Continue,
                        };
                        match on_timeout {
                            OnTimeout::Continue => Ok(Outcome::Done(json!({"timed_out": true}))),
                            OnTimeout::Fail => Err(StepError::Permanent(format!(
                                "no `{name}` for `{key}` arrived before the timeout ({})",
                                rfc3339(timeout_at)
                            ))),
                        }
                    }
                    Ok(None) => Ok(Outcome::Wait {
                        wait: Wait::Event {
                            name: name.clone(),
                            key: key.clone(),
                            since,
                            timeout_at,
                        },
                        due_at: Some(timeout_at),
                        event: Some((name, key)),
                        note: json!({"still_waiting": true}),
                    }),
                    Err(e) => Err(StepError::Transient {
                        message: format!("could not look for the event: {e}"),
                        retry_after: None,
                    }),
                }
            }
            Wait::Child { run_id } => match self.store.run(&run_id).await {
                Ok(Some(child)) if child.status == RunStatus::Completed => {
                    Ok(Outcome::Done(json!({
                        "run_id": child.id,
                        "status": "completed",
                        "vars": child.context.get("vars").cloned().unwrap_or(json!({})),
                        "response": child.response,
                    })))
                }
                Ok(Some(child)) if child.status.is_finished() => {
                    Err(StepError::Permanent(format!(
                        "workflow `{}` (run {}) {}: {}",
                        child.workflow_id,
                        child.id,
                        child.status.as_str(),
                        child.error.unwrap_or_default()
                    )))
                }
                Ok(Some(_)) => Ok(Outcome::Wait {
                    wait: Wait::Child { run_id },
                    due_at: None,
                    event: None,
                    note: json!({"still_waiting": true}),
                }),
                Ok(None) => Err(StepError::Permanent(format!(
                    "the called run {run_id} does not exist"
                ))),
                Err(e) => Err(StepError::Transient {
                    message: format!("could not read the called run: {e}"),
                    retry_after: None,
                }),
            },
        }
    }

    async fn execute(
        &self,
        a: &mut Active,
        p: &mut Pending,
        idx: usize,
        registry: &Registry,
        now: Millis,
    ) -> Result<Outcome, StepError> {
        let workflow = a.workflow.clone();
        let node = &workflow.program.nodes[idx];
        let step = &node.step;
        let ctx = self.eval_context(a, now);
        let t = &registry.templates;
        let render = |s: &str| -> Result<String, StepError> { Ok(t.render_str(s, &ctx)?) };
        let render_opt =
            |s: &Option<crate::definitions::model::Template>| -> Result<Option<String>, StepError> {
                s.as_ref()
                    .map(|v| render(v.as_str()))
                    .transpose()
                    .map(|o| o.filter(|s| !s.trim().is_empty()))
            };
        let key_suffix = a.cursor.loop_suffix();
        match &step.action {
            Action::Set(vars) => {
                let mut out = Map::new();
                // Each value sees the ones set before it.
                let mut all_vars = a
                    .ctx
                    .get("vars")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                for (name, value) in vars {
                    let layer =
                        BTreeMap::from([("vars".to_owned(), JValue::from(Serde(&all_vars)))]);
                    let local = merge_maps([ctx.clone(), JValue::from(layer)]);
                    let rendered = t.render_json(value, &local)?;
                    all_vars.insert(name.0.clone(), rendered.clone());
                    out.insert(name.0.clone(), rendered);
                }
                drop(ctx);
                // Checked before the variables are kept, so a failed step leaves the context
                // as it was.
                let out = Value::Object(out);
                grow(a, &out, &registry.config.limits).map_err(StepError::Permanent)?;
                if let Some(obj) = Arc::make_mut(&mut a.ctx).as_object_mut() {
                    obj.insert("vars".into(), Value::Object(all_vars));
                }
                Ok(Outcome::Done(out))
            }
            Action::If { condition, .. } => {
                let yes = t.is_true(condition.as_str(), &ctx)?;
                let branch = if yes { "then" } else { "else" };
                let target = node
                    .branches
                    .iter()
                    .find(|(k, _)| k == branch)
                    .and_then(|(_, f)| *f);
                Ok(Outcome::Goto(target, json!({"branch": branch})))
            }
            Action::Switch { on, .. } => {
                let value = t.eval(on.as_str(), &ctx)?;
                let key = match &value {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                };
                let case = key.as_ref().and_then(|k| {
                    node.branches
                        .iter()
                        .find(|(b, _)| b.strip_prefix("case:") == Some(k.as_str()))
                });
                let (chosen, target) = match case {
                    Some((b, first)) => (b.trim_start_matches("case:").to_owned(), *first),
                    None => (
                        "default".to_owned(),
                        node.branches
                            .iter()
                            .find(|(b, _)| b == "default")
                            .and_then(|(_, f)| *f),
                    ),
                };
                Ok(Outcome::Goto(
                    target,
                    json!({"value": value, "case": chosen}),
                ))
            }
            Action::ForEach { items, as_, .. } => {
                let body = node
                    .branches
                    .iter()
                    .find(|(k, _)| k == "body")
                    .and_then(|(_, f)| *f);
                if let Some(frame) = a.cursor.frames.last_mut()
                    && frame.step == step.id
                {
                    frame.index += 1;
                    if frame.index < frame.items.len() {
                        return Ok(Outcome::Goto(body, Value::Null));
                    }
                    let count = frame.items.len();
                    a.cursor.frames.pop();
                    return Ok(Outcome::Goto(None, json!({"count": count})));
                }
                let list = match t.eval(items.as_str(), &ctx)? {
                    Value::Array(list) => list,
                    Value::Null => Vec::new(),
                    other => {
                        return Err(StepError::Permanent(format!(
                            "for_each.items must be a list, but `{}` gave {}",
                            items.as_str(),
                            crate::definitions::schema::describe_value(&other)
                        )));
                    }
                };
                if list.is_empty() || body.is_none() {
                    return Ok(Outcome::Goto(None, json!({"count": 0})));
                }
                a.cursor.frames.push(LoopFrame {
                    step: step.id.clone(),
                    index: 0,
                    items: list,
                    var: as_.0.clone(),
                });
                Ok(Outcome::Goto(body, Value::Null))
            }
            Action::Send(s) => {
                if !registry.channels.contains_key(&s.channel) {
                    return Err(StepError::Permanent(format!(
                        "channel `{}` is not configured",
                        s.channel
                    )));
                }
                let to = render(s.to.as_str())?.trim().to_owned();
                if to.is_empty() {
                    return Err(StepError::Permanent("the recipient (`to`) is empty".into()));
                }
                let own = a.ctx.get("contact").filter(|c| !c.is_null());
                if let Some(reason) = self.suppression(own, &to, s.category).await.map_err(|e| {
                    StepError::Transient {
                        message: format!("could not check the recipient's status: {e}"),
                        retry_after: None,
                    }
                })? {
                    return Ok(Outcome::Done(
                        json!({"status": "suppressed", "to": to, "reason": reason, "category": s.category}),
                    ));
                }
                let (body, html) = match (&s.template, &s.body) {
                    (Some(name), _) => {
                        // A name may be chosen at run time: `emails/{{ vars.kind }}.html.j2`.
                        let name = if name.contains("{{") {
                            let chosen = render(name)?.trim().to_owned();
                            if !t.contains(&chosen) {
                                let hint = crate::definitions::suggest::did_you_mean(
                                    &chosen,
                                    t.names().iter().map(String::as_str),
                                )
                                .map(|s| format!("; did you mean `{s}`?"))
                                .unwrap_or_default();
                                return Err(StepError::Permanent(format!(
                                    "template `{chosen}` (from `{name}`) does not exist under templates/{hint}"
                                )));
                            }
                            chosen
                        } else {
                            name.clone()
                        };
                        let name = name.as_str();
                        let body = t.render_in(name, &ctx)?;
                        let base = name
                            .strip_suffix(".j2")
                            .or_else(|| name.strip_suffix(".jinja"))
                            .unwrap_or(name);
                        (body, base.ends_with(".html") || base.ends_with(".htm"))
                    }
                    (None, Some(b)) => (render(b.as_str())?, false),
                    (None, None) => {
                        return Err(StepError::Permanent(
                            "`send` needs a `template` or a `body`".into(),
                        ));
                    }
                };
                let mut headers = Map::new();
                for (k, v) in &s.headers {
                    headers.insert(k.clone(), Value::String(render(v.as_str())?));
                }
                let subject = render_opt(&s.subject)?;
                let limit = registry
                    .config
                    .limits
                    .message_size
                    .map(|b| b.0 as usize)
                    .or_else(|| {
                        registry
                            .channels
                            .get(&s.channel)
                            .map(|c| c.max_message_bytes())
                    })
                    .unwrap_or(1 << 20);
                let size = body.len() + subject.as_ref().map_or(0, String::len);
                if size > limit {
                    return Err(StepError::Permanent(format!(
                        "the rendered message is {size} bytes, over the limit of {limit} bytes for channel `{}` (limits.message_size in herald.yaml)",
                        s.channel
                    )));
                }
                let id = new_id();
                // The step's retry policy governs the delivery attempts: a send step only
                // enqueues, so the policy has nothing else to apply to.
                let max_attempts = step
                    .retry
                    .as_ref()
                    .map(|r| r.max_attempts)
                    .unwrap_or(retry::outbox_default().max_attempts);
                p.outbox.push(NewOutbox {
                    id: id.clone(),
                    run_id: Some(a.id.clone()),
                    workflow_id: Some(a.workflow.id.clone()),
                    step_id: Some(step.id.clone()),
                    channel: s.channel.clone(),
                    recipient: to.clone(),
                    sender: render_opt(&s.from)?,
                    subject,
                    body,
                    html,
                    headers: Value::Object(headers),
                    idempotency_key: format!("{}:{}{key_suffix}", a.id, step.id),
                    max_attempts: i64::from(max_attempts),
                    category: s.category,
                    retry: step.retry.clone(),
                    created_at: now,
                });
                p.after.push(After::Outbox);
                Ok(Outcome::Done(
                    json!({"message_id": id, "channel": s.channel, "to": to, "status": "queued"}),
                ))
            }
            Action::Wait(WaitStep::For(d)) => {
                let until = now + d.as_std().as_millis() as i64;
                Ok(Outcome::Wait {
                    wait: Wait::Timer { until },
                    due_at: Some(until),
                    event: None,
                    note: json!({"until": rfc3339(until)}),
                })
            }
            Action::Wait(WaitStep::Until(u)) => {
                let text = render(u.until.as_str())?;
                let ts: jiff::Timestamp = text.trim().parse().map_err(|e| {
                    StepError::Permanent(format!(
                        "`wait.until` gave `{text}`, which is not an RFC 3339 time: {e}"
                    ))
                })?;
                let until = ts.as_millisecond();
                if until <= now {
                    return Ok(Outcome::Done(
                        json!({"waited_until": rfc3339(until), "already_passed": true}),
                    ));
                }
                Ok(Outcome::Wait {
                    wait: Wait::Timer { until },
                    due_at: Some(until),
                    event: None,
                    note: json!({"until": rfc3339(until)}),
                })
            }
            Action::WaitFor(w) => {
                let name = match (&w.event, &w.reply) {
                    (Some(e), _) => e.clone(),
                    (None, Some(channel)) => format!("message.{channel}"),
                    (None, None) => {
                        return Err(StepError::Permanent(
                            "`wait_for` needs an `event` or a `reply`".into(),
                        ));
                    }
                };
                let key = match t.render_value_str(w.key.as_str(), &ctx)? {
                    Value::String(k) if !k.trim().is_empty() => k.trim().to_owned(),
                    Value::Number(n) => n.to_string(),
                    other => {
                        return Err(StepError::Permanent(format!(
                            "the `wait_for` key `{}` is {}; a wait needs a key to match {} by",
                            w.key.as_str(),
                            match other {
                                Value::Null => "null".to_owned(),
                                Value::String(_) => "empty".to_owned(),
                                v => format!("not text ({v})"),
                            },
                            if w.reply.is_some() {
                                "the reply's sender"
                            } else {
                                "the event's key"
                            }
                        )));
                    }
                };
                // An event that arrived before this wait was registered still counts.
                match self
                    .store
                    .find_event(&name, &key, a.created_at, &a.cursor.consumed)
                    .await
                {
                    Ok(Some(e)) => {
                        a.cursor.consumed.push(e.id.clone());
                        Ok(Outcome::Done(event_output(&e)))
                    }
                    Ok(None) => {
                        let timeout_at = now + w.timeout.as_std().as_millis() as i64;
                        Ok(Outcome::Wait {
                            wait: Wait::Event {
                                name: name.clone(),
                                key: key.clone(),
                                since: a.created_at,
                                timeout_at,
                            },
                            due_at: Some(timeout_at),
                            event: Some((name.clone(), key.clone())),
                            note: json!({"event": name, "key": key, "timeout_at": rfc3339(timeout_at)}),
                        })
                    }
                    Err(e) => Err(StepError::Transient {
                        message: format!("could not look for the event: {e}"),
                        retry_after: None,
                    }),
                }
            }
            Action::Http(h) => {
                let url = render(h.url.as_str())?;
                let mut headers = Vec::new();
                for (k, v) in &h.headers {
                    headers.push((k.clone(), render(v.as_str())?));
                }
                let json_body = h
                    .json
                    .as_ref()
                    .map(|j| t.render_json(j, &ctx))
                    .transpose()?;
                let key = format!("{}:{}{key_suffix}", a.id, step.id);
                let timeout = step
                    .timeout
                    .map(|d| d.as_std())
                    .unwrap_or(DEFAULT_HTTP_TIMEOUT);
                super::http::call(
                    &self.http,
                    h.method,
                    &url,
                    &headers,
                    json_body.as_ref(),
                    &key,
                    timeout,
                    h.expect.as_deref(),
                )
                .await
                .map(Outcome::Done)
            }
            Action::Emit(e) => {
                let key = e.key.as_ref().map(|k| render(k.as_str())).transpose()?;
                let data = e
                    .data
                    .as_ref()
                    .map(|d| t.render_json(d, &ctx))
                    .transpose()?
                    .unwrap_or(Value::Null);
                let event = NewEvent {
                    // Derived from the run and step, so a re-executed segment cannot emit twice.
                    id: format!("{}:{}{key_suffix}", a.id, step.id),
                    name: e.event.clone(),
                    key: key.clone(),
                    data,
                    source_run_id: Some(a.id.clone()),
                    created_at: now,
                };
                let runs = self
                    .subscriber_runs(&event, Some(&a.id), now)
                    .map_err(|e| StepError::Permanent(e.to_string()))?;
                let started: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
                let out = json!({"event_id": event.id, "started_runs": started});
                p.new_runs.extend(runs);
                if let Some(k) = key {
                    p.after.push(After::WakeWaiters {
                        name: e.event.clone(),
                        key: k,
                    });
                }
                p.events.push(event);
                p.after.push(After::Work);
                Ok(Outcome::Done(out))
            }
            Action::Call(c) => {
                let target = registry.workflows.get(&c.workflow).ok_or_else(|| {
                    StepError::Permanent(format!("workflow `{}` is not loaded", c.workflow))
                })?;
                let input = c
                    .input
                    .as_ref()
                    .map(|i| t.render_json(i, &ctx))
                    .transpose()?
                    .unwrap_or(json!({}));
                let child = self.new_run(
                    target,
                    super::Trigger::Call {
                        parent_run_id: a.id.clone(),
                        input,
                    },
                    Some(format!("call:{}:{}{key_suffix}", a.id, step.id)),
                    Some(a.id.clone()),
                    now,
                );
                let child_id = child.id.clone();
                p.new_runs.push(child);
                p.after.push(After::Work);
                Ok(Outcome::Wait {
                    wait: Wait::Child {
                        run_id: child_id.clone(),
                    },
                    due_at: None,
                    event: None,
                    note: json!({"called": c.workflow, "run_id": child_id}),
                })
            }
            Action::UpsertContact(u) => {
                let email = render_opt(&u.email)?.map(|e| e.trim().to_lowercase());
                if let Some(e) = &email
                    && (!e.contains('@') || e.contains(char::is_whitespace))
                {
                    return Err(StepError::Permanent(format!(
                        "`{e}` is not an e-mail address"
                    )));
                }
                let phone = match render_opt(&u.phone)? {
                    Some(raw) => Some(
                        crate::templates::filters::normalize_phone(&raw, "US").ok_or_else(
                            || StepError::Permanent(format!("`{raw}` is not a phone number")),
                        )?,
                    ),
                    None => None,
                };
                if email.is_none() && phone.is_none() {
                    return Err(StepError::Permanent("`upsert_contact` needs an e-mail address or a phone number; both were empty".into()));
                }
                let timezone = render_opt(&u.timezone)?;
                if let Some(tz) = &timezone
                    && jiff::tz::TimeZone::get(tz).is_err()
                {
                    return Err(StepError::Permanent(format!("`{tz}` is not a time zone")));
                }
                // One rule for every field: an empty or null value leaves what is stored, so a
                // form that omits a field does not erase what an earlier one recorded.
                let mut attributes = Map::new();
                for (k, v) in &u.attributes {
                    let value = t.render_json(v, &ctx)?;
                    let empty = match &value {
                        Value::Null => true,
                        Value::String(s) => s.trim().is_empty(),
                        _ => false,
                    };
                    if !empty {
                        attributes.insert(k.clone(), value);
                    }
                }
                let upsert = ContactUpsert {
                    new_id: new_id(),
                    email: email.clone(),
                    phone: phone.clone(),
                    first_name: render_opt(&u.first_name)?,
                    last_name: render_opt(&u.last_name)?,
                    status: render_opt(&u.status)?,
                    timezone,
                    attributes,
                    now,
                };
                // The run's own contact (perhaps upserted earlier in this segment and not yet
                // committed) is the freshest copy; otherwise ask the store.
                let own: Option<crate::store::Contact> = a
                    .ctx
                    .get("contact")
                    .filter(|c| !c.is_null())
                    .and_then(|c| serde_json::from_value(c.clone()).ok())
                    .filter(|c: &crate::store::Contact| {
                        (email.is_some() && c.email == email)
                            || (email.is_none() && phone.is_some() && c.phone == phone)
                    });
                let existing = match own {
                    Some(c) => Some(c),
                    None => self
                        .store
                        .find_contact(email.as_deref(), phone.as_deref())
                        .await
                        .map_err(|e| StepError::Transient {
                            message: format!("could not read the contact: {e}"),
                            retry_after: None,
                        })?,
                };
                let merged = upsert.apply(existing);
                let mut upsert = upsert;
                upsert.new_id = merged.id.clone();
                let value = serde_json::to_value(&merged).unwrap_or(Value::Null);
                drop(ctx);
                if let Some(obj) = Arc::make_mut(&mut a.ctx).as_object_mut() {
                    obj.insert("contact".into(), value.clone());
                }
                a.contact_id = Some(merged.id.clone());
                p.contacts.push(upsert);
                Ok(Outcome::Done(value))
            }
            Action::Respond(r) => {
                let mut headers = Map::new();
                for (k, v) in &r.headers {
                    headers.insert(k.clone(), Value::String(render(v.as_str())?));
                }
                let body = r
                    .body
                    .as_ref()
                    .map(|b| t.render_json(b, &ctx))
                    .transpose()?
                    .unwrap_or(Value::Null);
                let status = match &r.status {
                    ResponseStatus::Code(c) => *c,
                    ResponseStatus::Template(t) => {
                        let text = render(t.as_str())?;
                        text.trim()
                            .parse::<u16>()
                            .ok()
                            .filter(|c| (100..=599).contains(c))
                            .ok_or_else(|| {
                                StepError::Permanent(format!(
                                    "`respond.status` gave `{text}`, which is not an HTTP status (100 to 599)"
                                ))
                            })?
                    }
                };
                let response = json!({"status": status, "headers": headers, "body": body});
                a.response = Some(response.clone());
                p.after.push(After::Reply(SyncReply::from_value(&response)));
                Ok(Outcome::Done(response))
            }
            Action::Fail(message) => Ok(Outcome::Fail(render(message.as_str())?)),
            Action::Try { .. } => {
                let body = node
                    .branches
                    .iter()
                    .find(|(k, _)| k == "body")
                    .and_then(|(_, f)| *f);
                Ok(Outcome::Goto(body, json!({"entered": true})))
            }
        }
    }

    /// Why a message of `category` to `to` must not be sent, if it must not: the recipient
    /// opted out, unsubscribed, bounced or complained (see [`MessageCategory::blocked_by`]).
    /// Checked when a `send` runs and again just before delivery, so no workflow has to
    /// remember to, and an opt-out recorded while a message waits in the outbox still wins.
    ///
    /// `own` is the run's contact, used when it is the recipient (it may hold changes this
    /// segment has not committed yet); otherwise the stored contact with that address counts.
    pub(crate) async fn suppression(
        &self,
        own: Option<&Value>,
        to: &str,
        category: MessageCategory,
    ) -> Result<Option<String>, StoreError> {
        let status_of = |c: &Value| c.get("status").and_then(Value::as_str).map(str::to_owned);
        let (email, phone) = if to.contains('@') {
            (Some(to.trim().to_lowercase()), None)
        } else {
            (None, crate::templates::filters::normalize_phone(to, "US"))
        };
        let matches = |c: &Value| {
            email.as_deref().is_some_and(|e| {
                c.get("email")
                    .and_then(Value::as_str)
                    .is_some_and(|ce| ce.eq_ignore_ascii_case(e))
            }) || phone
                .as_deref()
                .is_some_and(|p| c.get("phone").and_then(Value::as_str) == Some(p))
        };
        let status = match own.filter(|c| matches(c)) {
            Some(c) => status_of(c),
            None if email.is_none() && phone.is_none() => return Ok(None),
            None => self
                .store
                .find_contact(email.as_deref(), phone.as_deref())
                .await?
                .and_then(|c| c.status),
        };
        Ok(status
            .filter(|s| category.blocked_by(s))
            .map(|s| format!("the recipient's status is `{s}`")))
    }
}

/// Bytes of `value` as JSON, counted without building the text.
fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// A run's context may not grow past `limits.context_size`: the step that would make it so
/// fails instead. Measuring the whole context at every step would cost more than most steps
/// do, so what each step adds is counted (twice, since a `set` keeps its values both as
/// variables and as its output), and the whole is measured only when that count says the limit
/// may be near. A loop that overwrites the same output does not grow the context, and the
/// whole measurement finds that out, starting the count again. The context can therefore not
/// pass the limit by more than it held when the run was loaded.
fn grow(
    a: &mut Active,
    output: &Value,
    limits: &crate::definitions::model::config::LimitsConfig,
) -> Result<(), String> {
    let limit = limits.context_size.0 as usize;
    let added = 2 * json_size(output);
    if a.grown + added <= limit {
        a.grown += added;
        return Ok(());
    }
    let whole = json_size(&a.ctx) + json_size(output);
    if whole > limit {
        return Err(format!(
            "the run's context would be {whole} bytes, over the limit of {limit} bytes (limits.context_size in herald.yaml); keep only what later steps need"
        ));
    }
    a.grown = whole;
    Ok(())
}

fn event_output(e: &crate::store::EventRecord) -> Value {
    json!({
        "timed_out": false,
        "event": {"id": e.id, "name": e.name, "key": e.key, "data": e.data, "at": rfc3339(e.created_at)},
        "data": e.data,
        "text": e.data.get("text"),
        "from": e.data.get("from"),
    })
}

fn short(hash: &str) -> &str {
    &hash[..12.min(hash.len())]
}
