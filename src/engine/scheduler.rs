//! The cron scheduler: decides every slot of every cron trigger, exactly once.
//!
//! Each slot gets a row in `cron_fires`: `fired` (with the run it started), `skipped` (the
//! catch-up or overlap policy said no) or `missed` (older than the catch-up window). The row's
//! primary key is what makes a slot fire once across processes sharing a database: whoever
//! inserts it first decides, and the run is created in the same transaction.
//!
//! How far each trigger has been decided is stored (`cron_state`), so after downtime the
//! slots in between are found and the `catch_up` policy applied to them. A trigger the store
//! has never seen (a new workflow, or an edited schedule or time zone, which is a new key)
//! starts when its definitions were loaded: it has missed nothing, and a slot between the load
//! and the first tick still fires. A trigger a reload brings back (a schedule edited back to
//! an earlier one) starts then too: while it was not loaded it had no slots to catch up. A
//! trigger a reload removes still has the slots that came due before the reload decided.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::definitions::model::trigger::{CatchUp, Overlap};
use crate::engine::clock::rfc3339;
use crate::engine::registry::{CronEntry, Registry};
use crate::engine::{Engine, EngineError, RunBuilder, Trigger};
use crate::store::{CronFire, CronOutcome, Millis};

/// A slot this late is still "on time": the scheduler ticks every second, and a slot due
/// while Herald was briefly busy should not count as missed.
const GRACE_MS: i64 = 60_000;
/// Slots decided per trigger per tick, so a long outage of a per-minute schedule is worked
/// through in bounded steps.
const MAX_SLOTS_PER_TICK: usize = 10_000;

/// A trigger across reloads: its workflow and its key.
type TriggerId = (String, String);

fn trigger_id(entry: &CronEntry) -> TriggerId {
    (entry.workflow.id.clone(), entry.key.clone())
}

#[derive(Debug)]
pub struct Scheduler {
    engine: Arc<Engine>,
    state: Mutex<State>,
    /// Decides only recurring campaigns' times: `herald test` drives campaigns on its virtual
    /// clock, while a cron workflow under test starts only by the case's `trigger`.
    campaigns_only: bool,
}

#[derive(Debug, Default)]
struct State {
    /// The registry the last tick saw, to notice reloads.
    registry: Option<Arc<Registry>>,
    /// The next slot of each trigger, so a tick only touches the store for triggers that are due.
    next_due: HashMap<TriggerId, Millis>,
    /// Triggers a reload added, not decided since: they start when that reload loaded them,
    /// whatever the store remembers from an earlier time they were in force.
    added: HashSet<TriggerId>,
    /// Triggers a reload removed whose last slots are still to be decided.
    removed: Vec<Removed>,
}

#[derive(Debug, Clone)]
struct Removed {
    entry: CronEntry,
    /// When the registry it came from was loaded.
    loaded_at: Millis,
    /// Whether it was itself added by that registry's reload and never decided.
    added: bool,
    /// When the reload that removed it was loaded: its slots end there.
    until: Millis,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub fired: usize,
    pub skipped: usize,
    pub missed: usize,
}

impl Scheduler {
    pub fn new(engine: Arc<Engine>) -> Scheduler {
        Scheduler {
            engine,
            state: Mutex::new(State::default()),
            campaigns_only: false,
        }
    }

    /// A scheduler that decides only recurring campaigns' times (and enrolls campaigns).
    pub fn for_campaigns(engine: Arc<Engine>) -> Scheduler {
        Scheduler {
            campaigns_only: true,
            ..Scheduler::new(engine)
        }
    }

    /// The next time after `now` a campaign enrolls: a broadcast's `send_at` or a recurring
    /// campaign's next time. `recurring: false` leaves the latter out, for a simulation that
    /// runs until nothing more is due.
    pub fn next_campaign_time(&self, now: Millis, recurring: bool) -> Option<Millis> {
        let registry = self.engine.registry();
        let broadcasts = registry
            .workflows
            .values()
            .filter_map(|w| w.campaign.as_ref()?.send_at)
            .filter(|&t| t > now);
        let crons = registry
            .crons
            .iter()
            .filter(|e| recurring && e.workflow.campaign.is_some())
            .map(|e| next_slot(e, now));
        broadcasts.chain(crons).min()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Decides every slot due by the engine clock's now.
    pub async fn tick(&self) -> Result<TickReport, EngineError> {
        let now = self.engine.now();
        let registry = self.engine.registry();
        self.notice_reload(&registry);
        let mut report = TickReport::default();

        let removed = std::mem::take(&mut self.state().removed);
        for (i, r) in removed.iter().enumerate() {
            if self.campaigns_only && r.entry.workflow.campaign.is_none() {
                continue;
            }
            if let Err(e) = self
                .decide(
                    &r.entry,
                    r.loaded_at,
                    r.added,
                    r.until.min(now),
                    &mut report,
                )
                .await
            {
                self.state().removed.extend_from_slice(&removed[i..]);
                return Err(e);
            }
        }

        for entry in &registry.crons {
            if self.campaigns_only && entry.workflow.campaign.is_none() {
                continue;
            }
            let id = trigger_id(entry);
            let (due, added) = {
                let state = self.state();
                (state.next_due.get(&id).copied(), state.added.contains(&id))
            };
            if due.is_some_and(|d| d > now) {
                continue;
            }
            let next = self
                .decide(entry, registry.loaded_at, added, now, &mut report)
                .await?;
            let mut state = self.state();
            state.next_due.insert(id.clone(), next);
            state.added.remove(&id);
        }
        if report.fired > 0 {
            self.engine.work_ready.notify_waiters();
        }
        // Broadcasts are due at a moment too, so the same tick enrolls them; and a queued
        // conversation start is due once the conversation before it has ended.
        crate::engine::campaign::tick(&self.engine).await?;
        self.engine.promote_queued_conversations().await?;
        Ok(report)
    }

    /// Compares the registry with the one the last tick saw: triggers a reload removed keep
    /// their slots up to the reload, and triggers it added start there.
    fn notice_reload(&self, registry: &Arc<Registry>) {
        let mut state = self.state();
        let previous = state.registry.replace(registry.clone());
        // Nothing to compare with on the first tick (or before the first install): every
        // trigger then resumes from the store, and downtime is caught up.
        let Some(previous) = previous.filter(|p| p.generation > 0 && !Arc::ptr_eq(p, registry))
        else {
            return;
        };
        let current: HashSet<TriggerId> = registry.crons.iter().map(trigger_id).collect();
        let before: HashSet<TriggerId> = previous.crons.iter().map(trigger_id).collect();
        for entry in previous
            .crons
            .iter()
            .filter(|e| !current.contains(&trigger_id(e)))
        {
            let id = trigger_id(entry);
            state.next_due.remove(&id);
            let added = state.added.remove(&id);
            state.removed.push(Removed {
                entry: entry.clone(),
                loaded_at: previous.loaded_at,
                added,
                until: registry.loaded_at,
            });
        }
        for entry in registry
            .crons
            .iter()
            .filter(|e| !before.contains(&trigger_id(e)))
        {
            let id = trigger_id(entry);
            state.next_due.remove(&id);
            state.added.insert(id);
        }
    }

    /// Decides the slots of one trigger up to `now`; returns its next slot. `loaded_at` is when
    /// the trigger's definitions were loaded, where a trigger new to the store starts, and
    /// where one that `added` (by a reload, since the last tick) starts at the earliest.
    async fn decide(
        &self,
        entry: &CronEntry,
        loaded_at: Millis,
        added: bool,
        now: Millis,
        report: &mut TickReport,
    ) -> Result<Millis, EngineError> {
        let store = &self.engine.store;
        let wf = &entry.workflow.id;
        let stored = store.cron_checked_until(wf, &entry.key).await?;
        let from = match stored {
            Some(mark) if !added => mark,
            mark => mark.map_or(loaded_at, |m| m.max(loaded_at)),
        };
        if from >= now {
            if stored != Some(from) {
                store.set_cron_checked_until(wf, &entry.key, from).await?;
            }
            return Ok(next_slot(entry, from));
        }
        let slots = slots_between(entry, from, now);
        let window = entry.spec.catch_up_window.as_millis_i64();
        let on_time = |s: Millis| now - s <= GRACE_MS;
        let latest_late = slots
            .iter()
            .copied()
            .filter(|&s| !on_time(s) && now - s <= window)
            .max();
        let any_on_time = slots.iter().any(|&s| on_time(s));
        // Whether a run this trigger started before this decision is still going, asked once:
        // the runs this decision starts (every missed slot, with `catch_up: all`) are not a
        // previous run still going.
        let mut previous_active = None;
        for &slot in &slots {
            let mut decision = if now - slot > window {
                Err((
                    CronOutcome::Missed,
                    format!(
                        "more than {} late (catch_up_window)",
                        entry.spec.catch_up_window
                    ),
                ))
            } else if on_time(slot) {
                Ok(())
            } else {
                match entry.spec.catch_up {
                    CatchUp::None => Err((
                        CronOutcome::Skipped,
                        "missed while Herald was not running (catch_up: none)".to_owned(),
                    )),
                    CatchUp::All => Ok(()),
                    CatchUp::Latest if Some(slot) == latest_late && !any_on_time => Ok(()),
                    CatchUp::Latest => Err((
                        CronOutcome::Skipped,
                        "a later slot was run instead (catch_up: latest)".to_owned(),
                    )),
                }
            };
            if decision.is_ok() && entry.spec.overlap == Overlap::Skip {
                let active = match previous_active {
                    Some(active) => active,
                    None => *previous_active.insert(store.cron_run_active(wf, &entry.key).await?),
                };
                if active {
                    decision = Err((
                        CronOutcome::Skipped,
                        "the previous run is still going (overlap: skip)".to_owned(),
                    ));
                }
            }
            let mut fire = CronFire {
                workflow_id: wf.clone(),
                trigger_key: entry.key.clone(),
                slot,
                outcome: CronOutcome::Fired,
                reason: None,
                run_id: None,
                recorded_at: now,
            };
            match decision {
                // A recurring campaign's slot starts no run of its own: the fire row is the
                // occurrence, and the campaign driver enrolls its audience for it.
                Ok(()) if entry.workflow.campaign.is_some() => {
                    if store.record_cron_fire(&fire, None).await? {
                        report.fired += 1;
                        tracing::info!(campaign = %wf, slot = %rfc3339(slot), "campaign occurrence due");
                        metrics::counter!("herald_cron_slots_total", "workflow" => wf.clone(), "outcome" => "fired").increment(1);
                        self.engine.work_ready.notify_waiters();
                    }
                }
                Ok(()) => {
                    let trigger = Trigger::Cron {
                        schedule: entry.spec.schedule.clone(),
                        timezone: entry.spec.timezone.clone(),
                        slot,
                        input: entry
                            .spec
                            .input
                            .clone()
                            .unwrap_or(Value::Object(Default::default())),
                    };
                    let run = RunBuilder::new(&entry.workflow, trigger)
                        .idempotency_key(Some(format!("cron:{}:{slot}", entry.key)))
                        .build(&self.engine.registry().templates, now);
                    fire.run_id = Some(run.id.clone());
                    if store.record_cron_fire(&fire, Some(&run)).await? {
                        report.fired += 1;
                        tracing::info!(workflow = %wf, slot = %rfc3339(slot), run = %run.id, "cron slot fired");
                        metrics::counter!("herald_cron_slots_total", "workflow" => wf.clone(), "outcome" => "fired").increment(1);
                    }
                }
                Err((outcome, reason)) => {
                    fire.outcome = outcome;
                    fire.reason = Some(reason.clone());
                    if store.record_cron_fire(&fire, None).await? {
                        match outcome {
                            CronOutcome::Missed => report.missed += 1,
                            _ => report.skipped += 1,
                        }
                        tracing::warn!(workflow = %wf, slot = %rfc3339(slot), outcome = outcome.as_str(), reason = %reason, "cron slot not run");
                        metrics::counter!("herald_cron_slots_total", "workflow" => wf.clone(), "outcome" => outcome.as_str()).increment(1);
                    }
                }
            }
        }
        let decided_until = if slots.len() >= MAX_SLOTS_PER_TICK {
            *slots.last().unwrap_or(&now)
        } else {
            now
        };
        store
            .set_cron_checked_until(wf, &entry.key, decided_until)
            .await?;
        Ok(if decided_until < now {
            decided_until
        } else {
            next_slot(entry, now)
        })
    }

    /// Ticks once a second until shut down.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.tick().await {
                tracing::error!(error = %e, "cron tick failed; retrying next second");
            }
            // Wake just after the next whole second of the engine's clock: slots are on whole
            // minutes.
            let ms = 1000 - (self.engine.now().rem_euclid(1000)) + 5;
            tokio::select! {
                _ = tokio::time::sleep(self.engine.clock.real(ms)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

fn zoned(entry: &CronEntry, ms: Millis) -> Option<jiff::Zoned> {
    jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(|t| t.to_zoned(entry.tz.clone()))
}

/// Slots in `(from, to]`, at most [`MAX_SLOTS_PER_TICK`].
fn slots_between(entry: &CronEntry, from: Millis, to: Millis) -> Vec<Millis> {
    let Some(start) = zoned(entry, from) else {
        return Vec::new();
    };
    entry
        .cron
        .iter_after(start)
        .map(|z| z.timestamp().as_millisecond())
        .take_while(|&s| s <= to)
        .take(MAX_SLOTS_PER_TICK)
        .collect()
}

/// The first slot after `after` (far in the future if the schedule never fires again).
fn next_slot(entry: &CronEntry, after: Millis) -> Millis {
    zoned(entry, after)
        .and_then(|z| entry.cron.find_next_occurrence(&z, false).ok())
        .map(|z| z.timestamp().as_millisecond())
        .unwrap_or(i64::MAX)
}
