//! A segment: the steps a run executes between two commits, and the commit that makes them
//! durable with everything they produced.

use std::sync::Arc;

use serde_json::Value;

use super::{Active, After, FirstCommit, Flow, Interpreter, Pending};
use crate::engine::{EngineError, SyncReply};
use crate::store::{Commit, CommitOutcome, Millis, RunState, RunStatus, RunWrite, StoreError};

impl Interpreter<'_> {
    pub(super) async fn drive(
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
                        (RunStatus::Running, Some(self.engine.now() + self.engine.lease_ms()), None, None)
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
                if self.engine.is_draining() && first.is_none() {
                    // Shutting down: leave the rest to whoever claims it next.
                    self.engine.store.release_runs(&self.engine.options.owner, self.engine.now()).await.ok();
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
        self.engine.release(&a.id);
        // Taken only when there is a reply to give: a run that waits keeps its sync caller,
        // who is answered when a later segment responds (or at the webhook's timeout).
        if let Some(response) = &a.response {
            // A reply that was recorded but not delivered (the caller registered late).
            self.engine.reply(&a.id, &SyncReply::from_value(response));
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
        let now = self.engine.now();
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
                owner: Some(self.engine.options.owner.clone()),
            },
            None => RunWrite::Update {
                run_id: a.id.clone(),
                owner: self.engine.options.owner.clone(),
            },
        };
        let taken = std::mem::take(p);
        let mut events = std::mem::take(&mut a.carry);
        events.extend(taken.events);
        let commit = Commit {
            run,
            state,
            now,
            steps: taken.steps,
            outbox: taken.outbox,
            events,
            new_runs: taken.new_runs,
            contacts: taken.contacts,
            wake_runs: taken.wake_runs,
        };
        let result = self.engine.store.commit(commit).await;
        self.engine.storage.record(&result);
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
                    if let Err(e) = self.engine.store.wake_waiting(&name, &key, now).await {
                        tracing::warn!(event = %name, error = %e, "could not wake waiting runs; they see the event at their timeout");
                    }
                    self.engine.work_ready.notify_waiters();
                }
                After::Recheck { name, key } => {
                    let since = a.created_at;
                    match self
                        .engine
                        .store
                        .find_event(&name, &key, since, &a.cursor.consumed)
                        .await
                    {
                        Ok(Some(_)) => {
                            let _ = self.engine.store.wake_waiting(&name, &key, now).await;
                            self.engine.work_ready.notify_waiters();
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "could not re-check for an event"),
                    }
                }
                After::Reply(reply) => self.engine.reply(&a.id, &reply),
                After::Work => self.engine.work_ready.notify_waiters(),
                After::Outbox => self.engine.outbox_ready.notify_waiters(),
            }
        }
        Ok(None)
    }
}
