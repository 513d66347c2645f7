//! The interpreter: executes one run, segment by segment (see the module docs of `engine`).
//!
//! [`Interpreter`] holds what happens between a run's claim and its release: resuming it
//! (`runs.rs`), executing its steps one by one and deciding, from each step's outcome, whether
//! the segment goes on, commits, waits or ends (here), and committing the segment with what
//! its steps produced (`segment.rs`). What a step of each kind does is in `engine::steps`,
//! which sees the run only through a `StepCx`. The [`Engine`] owns the claims, the workers,
//! the dispatcher and the sync callers, and hands a run to an `Interpreter` to drive.

mod runs;
mod segment;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::clock::rfc3339;
use super::cursor::{Cursor, Wait};
use super::registry::{CompiledWorkflow, Registry};
use super::steps::{self, EventWait, Host, StepCx};
use super::{Engine, EngineError, SyncReply, retry};
use crate::definitions::model::step::{Action, OnTimeout, Step};
use crate::store::{
    ContactUpsert, Millis, NewEvent, NewOutbox, NewRun, RunStatus, StepLogEntry, StepStatus,
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
pub(crate) enum Outcome {
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
    /// Done; record this output and end the run as completed (a conversation's `end`).
    End(Value),
}

/// What to do after a commit.
pub(crate) enum After {
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

/// What a segment has produced so far, committed with the run.
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) steps: Vec<StepLogEntry>,
    pub(crate) outbox: Vec<NewOutbox>,
    pub(crate) events: Vec<NewEvent>,
    pub(crate) new_runs: Vec<NewRun>,
    pub(crate) contacts: Vec<ContactUpsert>,
    pub(crate) wake_runs: Vec<String>,
    pub(crate) after: Vec<After>,
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
pub(crate) struct Active {
    pub(crate) id: String,
    pub(crate) workflow: Arc<CompiledWorkflow>,
    pub(crate) cursor: Cursor,
    /// The run's context. Shared with the template values of the step being executed (see
    /// `JsonNode`); changed with `Arc::make_mut` once they are gone, so it is not copied.
    pub(crate) ctx: Arc<Value>,
    pub(crate) attempts: i64,
    pub(crate) contact_id: Option<String>,
    pub(crate) response: Option<Value>,
    pub(crate) created_at: Millis,
    pub(crate) parent_run_id: Option<String>,
    /// Set until the run's first commit, which inserts it.
    pub(crate) insert: Option<NewRun>,
    /// Events recorded with the run's first commit: the inbound message that started it, so
    /// the message and its run are one write.
    pub(crate) carry: Vec<crate::store::NewEvent>,
    /// What steps have added to the context, in bytes, since it was last measured whole (see
    /// `grow`).
    pub(crate) grown: usize,
    /// What the batch the run was claimed in has read for it (its contact's suppressions, its
    /// campaign's state).
    pub(crate) lookups: Option<Arc<crate::engine::lookups::Lookups>>,
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

/// Drives runs for an [`Engine`]: the engine decides which runs this process executes, the
/// interpreter executes them.
pub(crate) struct Interpreter<'e> {
    engine: &'e Engine,
}

impl<'e> Interpreter<'e> {
    pub(crate) fn new(engine: &'e Engine) -> Interpreter<'e> {
        Interpreter { engine }
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
        let calls_out = match &step.action {
            Action::Http(_) | Action::AiReply(_) => true,
            Action::Classify(c) => c.ai.is_some(),
            _ => false,
        };
        if calls_out && a.cursor.wait.is_none() && (a.insert.is_some() || !p.is_empty()) {
            return Ok(Flow::Barrier);
        }
        let now = self.engine.now();
        let started = *a.cursor.step_started_at.get_or_insert(now);
        let registry = self.engine.registry();
        let timer = std::time::Instant::now();
        let result = match a.cursor.wait.clone() {
            Some(Wait::Retry { until }) if now >= until => {
                a.cursor.wait = None;
                self.execute(a, p, idx, &registry, now).await
            }
            // An `ask` resolves its own wait: an answer that does not fit is asked again,
            // which needs what a step has.
            Some(Wait::Ask { .. } | Wait::Handoff { .. }) => {
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
        let is_http = matches!(step.action, Action::Http(_) | Action::AiReply(_));
        let output = match &outcome {
            Outcome::Done(o) | Outcome::Goto(_, o) | Outcome::End(o) => o,
            _ => &Value::Null,
        };
        if let Err(message) = grow(a, output, &registry.config.limits) {
            return Ok(self.fail_step(a, p, idx, started, message));
        }
        Ok(match outcome {
            Outcome::Done(output) => {
                self.complete(a, p, step, started, output, StepStatus::Completed);
                a.cursor.step = node.next.map(|i| workflow.program.nodes[i].step.id.clone());
                Flow::Next { commit: is_http }
            }
            Outcome::Goto(target, output) => {
                // A loop going round again (no output yet) is not a completed step; one that ends is.
                if output != Value::Null {
                    self.complete(a, p, step, started, output, StepStatus::Completed);
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
                let entry = self.log_entry(a, step, StepStatus::Waiting, started, Some(note), None);
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
            Outcome::End(output) => {
                self.complete(a, p, step, started, output, StepStatus::Completed);
                a.cursor.step = None;
                a.cursor.frames.clear();
                Flow::End {
                    status: RunStatus::Completed,
                    error: None,
                }
            }
        })
    }

    /// A step-log line for `step`, numbered next.
    fn log_entry(
        &self,
        a: &mut Active,
        step: &Step,
        status: StepStatus,
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
            status,
            attempt: a.attempts + 1,
            started_at: started,
            finished_at: self.engine.now(),
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
        status: StepStatus,
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
        let entry = self.log_entry(
            a,
            step,
            StepStatus::Failed,
            started,
            None,
            Some(message.clone()),
        );
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
            "at": rfc3339(self.engine.now()),
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
        let now = self.engine.now();
        let backoff = retry::delay(policy, attempt as u32).max(retry_after.unwrap_or_default());
        let until = now + backoff.as_millis() as i64;
        let entry = self.log_entry(
            a,
            step,
            StepStatus::Retrying,
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

    /// Resolves the wait of a run that was woken: each kind of wait is resolved by the step
    /// kind that made it.
    async fn resume(
        &self,
        a: &mut Active,
        wait: Wait,
        step: &Step,
        now: Millis,
    ) -> Result<Outcome, StepError> {
        match wait {
            Wait::Timer { until } => Ok(steps::resume_timer(until, now)),
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
                let on_timeout = match &step.action {
                    Action::WaitFor(w) => w.on_timeout,
                    _ => OnTimeout::Continue,
                };
                let wait = EventWait {
                    name,
                    key,
                    since,
                    timeout_at,
                };
                steps::resume_event(&self.engine.store, a, on_timeout, wait, now).await
            }
            Wait::Child { run_id } => steps::resume_call(&self.engine.store, run_id).await,
            Wait::Ask { .. } | Wait::Handoff { .. } => Err(StepError::Permanent(
                "a conversation's wait is resolved by its step".into(),
            )),
        }
    }

    /// Executes the step at `idx` (its wait, if it had one, is over).
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
        let ctx = self.eval_context(a, now);
        let host = Host {
            registry,
            store: &self.engine.store,
            http: &self.engine.http,
            http_stub: self.engine.http_stub.get().map(|s| s.as_ref()),
        };
        steps::execute(StepCx::new(a, p, node, host, now, ctx)).await
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
pub(crate) fn grow(
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

fn short(hash: &str) -> &str {
    &hash[..12.min(hash.len())]
}
