//! Where a run's execution begins: a new run (its first commit inserts it), or a claimed one,
//! loaded as it was last committed.

use std::sync::Arc;

use super::{Active, FirstCommit, Interpreter, short};
use crate::definitions::model::workflow::OnUpdate;
use crate::engine::cursor::Cursor;
use crate::engine::lookups::Lookups;
use crate::engine::registry::CompiledWorkflow;
use crate::engine::{Engine, EngineError, ErrorKind};
use crate::store::{Commit, NewRun, RunRecord, RunState, RunStatus, RunWrite};

impl Engine {
    /// Executes a run that has not been stored yet; its first commit inserts it.
    pub(crate) async fn drive_new(
        self: Arc<Self>,
        new: NewRun,
        workflow: Arc<CompiledWorkflow>,
        carry: Vec<crate::store::NewEvent>,
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
            carry,
            grown: 0,
            lookups: None,
        };
        Interpreter::new(&self).drive(active, Some(first)).await;
    }

    /// Executes a run this process has claimed, with what its batch read for it.
    pub(crate) async fn drive_claimed(
        self: Arc<Self>,
        run: RunRecord,
        lookups: Option<Arc<Lookups>>,
    ) {
        let run_id = run.id.clone();
        crate::sync::lock(&self.held).insert(run_id.clone());
        let interpreter = Interpreter::new(&self);
        match interpreter.prepare(run, lookups).await {
            Ok(active) => interpreter.drive(active, None).await,
            Err(e) => {
                tracing::error!(run = %run_id, error = %e, "cannot resume run");
                interpreter.fail_unresumable(&run_id, &e.to_string()).await;
                self.release(&run_id);
            }
        }
    }
}

impl Interpreter<'_> {
    pub(super) async fn fail_unresumable(&self, run_id: &str, error: &str) {
        let Ok(Some(run)) = self.engine.store.run(run_id).await else {
            return;
        };
        let now = self.engine.now();
        let commit = Commit {
            run: RunWrite::Update {
                run_id: run_id.to_owned(),
                owner: self.engine.options.owner.clone(),
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
        let result = self.engine.store.commit(commit).await;
        self.engine.storage.record(&result);
        if let Err(e) = result {
            tracing::error!(run = %run_id, error = %e, "cannot record that the run failed");
        }
    }

    /// Loads what a claimed run needs: its workflow version (moving to the newest version
    /// when the workflow says `on_update: latest` and the step still exists there), and its
    /// contact as stored now, so an opt-out recorded meanwhile is seen.
    pub(super) async fn prepare(
        &self,
        run: RunRecord,
        lookups: Option<Arc<Lookups>>,
    ) -> Result<Active, EngineError> {
        let mut workflow = self
            .engine
            .workflow_version(&run.workflow_id, &run.version)
            .await?;
        let cursor = Cursor::from_value(&run.cursor)
            .map_err(|e| EngineError::new(ErrorKind::UnreadableRun, e))?;
        if let Some(latest) = self
            .engine
            .registry()
            .workflows
            .get(&run.workflow_id)
            .cloned()
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
        if let Some(cid) = &run.contact_id {
            let contact = match lookups.as_ref().and_then(|l| l.contact(cid)) {
                Some(c) => Some(c.clone()),
                None => self.engine.store.contact(cid).await?,
            };
            if let Some(c) = contact
                && let Ok(c) = serde_json::to_value(&c)
                && let Some(obj) = ctx.as_object_mut()
            {
                obj.insert("contact".into(), c);
            }
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
            carry: Vec::new(),
            grown: 0,
            lookups,
        })
    }
}
