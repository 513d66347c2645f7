//! One evaluation round, as `herald serve` makes it every second: each alert whose tick has
//! come and was not tried yet in this process is evaluated, and what changed is logged.
//!
//! Alerts over the events of one name at the same tick share one read of them: the longest
//! of their windows, read and parsed once, each alert then taking its own window from it. A
//! thousand rules over fifty event names read the store fifty times a round, not a thousand.

use std::collections::{BTreeMap, HashMap};

use crate::definitions::alert::Alert;
use crate::definitions::model::alert::AlertSource;
use crate::engine::Engine;
use crate::engine::registry::Registry;
use crate::store::Millis;

use super::tick::{Tick, fetch_events, run_events_tick, tick_at};

/// What a round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Alerts evaluated (their tick had come).
    pub evaluated: usize,
    /// Whether any instance changed phase: a notification round should follow at once.
    pub changed: bool,
    /// Alerts whose evaluation failed; they are tried again next round.
    pub failed: usize,
}

impl Round {
    fn note(
        &mut self,
        id: &str,
        tick: Millis,
        result: crate::store::Result<Option<Tick>>,
        tried: &mut HashMap<String, Millis>,
    ) {
        match result {
            Ok(Some(t)) => {
                tried.insert(id.to_owned(), tick);
                self.evaluated += 1;
                self.changed |= !t.changes.is_empty();
                for c in t.changes {
                    tracing::info!(alert = %id, labels = ?c.labels, value = ?c.value, transition = ?c.transition, "alert");
                }
            }
            Ok(None) => {
                tried.insert(id.to_owned(), tick);
            }
            Err(e) => {
                self.failed += 1;
                tracing::warn!(alert = %id, error = %e, "an alert's evaluation failed; it is tried again");
            }
        }
    }
}

/// Evaluates every alert of `registry` whose tick at `now` is not in `tried`, and records
/// the ticks tried.
pub async fn evaluate_due(
    engine: &Engine,
    registry: &Registry,
    tried: &mut HashMap<String, Millis>,
    now: Millis,
) -> Round {
    let mut round = Round::default();
    let mut shared: BTreeMap<(&str, Millis), Vec<(&str, &Alert)>> = BTreeMap::new();
    let mut alone: Vec<(&str, &Alert)> = Vec::new();
    for (id, wf) in &registry.workflows {
        let Some(alert) = &wf.alert else { continue };
        let tick = tick_at(alert, now);
        if tried.get(id) == Some(&tick) {
            continue;
        }
        match &alert.def.source {
            AlertSource::Events(e) if e.name.names().len() == 1 => shared
                .entry((e.name.names()[0].as_str(), tick))
                .or_default()
                .push((id, alert)),
            _ => alone.push((id, alert)),
        }
    }
    for ((name, at), alerts) in shared {
        let longest = alerts
            .iter()
            .filter_map(|(_, a)| match &a.def.source {
                AlertSource::Events(e) => Some(e.window.as_millis_i64()),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let events = match fetch_events(&*engine.store, &[name], at.saturating_sub(longest), at)
            .await
        {
            Ok(events) => events,
            Err(e) => {
                round.failed += alerts.len();
                tracing::warn!(event = %name, error = %e, "reading the events alerts read failed; they are tried again");
                continue;
            }
        };
        for (id, alert) in alerts {
            let result = run_events_tick(&*engine.store, alert, at, &events)
                .await
                .map(Some);
            round.note(id, at, result, tried);
        }
    }
    for (id, alert) in alone {
        let result = super::tick::evaluate(engine, alert, now).await;
        round.note(id, tick_at(alert, now), result, tried);
    }
    round
}
