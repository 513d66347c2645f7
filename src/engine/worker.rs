//! Workers: claim due runs from the store and execute them, keeping their leases alive.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::lookups::Lookups;
use super::{Engine, EngineError};
use crate::store::RunRecord;

/// Runs claimed per query.
const CLAIM_BATCH: usize = 64;
/// The longest a worker sleeps without looking for work. Other processes sharing a Postgres
/// database create work this process is not told about.
const MAX_IDLE: Duration = Duration::from_secs(1);

impl Engine {
    /// Claims and executes every run due now, until none is left. Tests on a virtual clock call
    /// this after moving the clock; `herald serve` uses [`Engine::work`].
    pub async fn run_due(self: &Arc<Self>) -> Result<usize, EngineError> {
        let mut total = 0;
        loop {
            let runs = self
                .store
                .claim_runs(
                    &self.options.owner,
                    self.now(),
                    self.lease_ms(),
                    CLAIM_BATCH as i64,
                )
                .await?;
            if runs.is_empty() {
                return Ok(total);
            }
            total += runs.len();
            let lookups = self.lookups_for(&runs).await;
            let mut set = JoinSet::new();
            for run in runs {
                set.spawn(self.clone().drive_claimed(run, lookups.clone()));
            }
            while set.join_next().await.is_some() {}
        }
    }

    /// The worker loop of `herald serve`: up to `workers` runs at once.
    pub async fn work(self: Arc<Self>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.options.workers.max(1)));
        loop {
            if shutdown.is_cancelled() || self.is_draining() {
                break;
            }
            let free = permits.available_permits();
            if free == 0 {
                tokio::select! {
                    p = permits.clone().acquire_owned() => drop(p),
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            // Registered before the claim, so a notification during it is not lost.
            let notified = self.work_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let limit = free.min(CLAIM_BATCH) as i64;
            let claimed = self
                .store
                .claim_runs(&self.options.owner, self.now(), self.lease_ms(), limit)
                .await;
            self.storage.record(&claimed);
            match claimed {
                Ok(runs) if !runs.is_empty() => {
                    let lookups = self.lookups_for(&runs).await;
                    for run in runs {
                        let permit = permits
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("the semaphore is never closed");
                        let engine = self.clone();
                        let lookups = lookups.clone();
                        tokio::spawn(async move {
                            engine.drive_claimed(run, lookups).await;
                            drop(permit);
                        });
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "could not claim runs; retrying in a second");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
            }
            let sleep = match self.store.next_due_at().await {
                Ok(Some(due)) => self
                    .clock
                    .real(due - self.now())
                    .clamp(Duration::from_millis(1), MAX_IDLE),
                _ => MAX_IDLE,
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = &mut notified => {}
                _ = shutdown.cancelled() => break,
            }
        }
        // Let runs in progress reach their next commit.
        let _ = permits
            .acquire_many(self.options.workers.max(1) as u32)
            .await;
    }

    /// What a batch of claimed runs reads together (see [`Lookups`]).
    async fn lookups_for(&self, runs: &[RunRecord]) -> Option<Arc<Lookups>> {
        Lookups::for_runs(&self.store, &self.registry(), runs)
            .await
            .map(Arc::new)
    }

    /// Renews the leases of runs this process is executing, so a long step (an HTTP call) does
    /// not let another process take the run over.
    pub async fn renew_leases(self: Arc<Self>, shutdown: CancellationToken) {
        // A third of the lease, in the clock's time, so two renewals can fail before it lapses.
        let every = self
            .clock
            .real(self.lease_ms() / 3)
            .max(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
            let held = self.held_runs();
            if held.is_empty() {
                continue;
            }
            let until = self.now() + self.lease_ms();
            match self
                .store
                .renew_leases(&self.options.owner, &held, until)
                .await
            {
                Ok(lost) if !lost.is_empty() => {
                    // Usually a run that just committed a wait between the snapshot and the renewal;
                    // a run really taken over finds out at its next commit.
                    tracing::debug!(runs = ?lost, "leases not renewed: no longer held")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "could not renew leases"),
            }
        }
    }
}
