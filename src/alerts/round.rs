//! One evaluation round, as `herald serve` makes it every second: each alert whose tick has
//! come and was not tried yet in this process is evaluated, and what changed is logged.

use std::collections::HashMap;

use crate::engine::Engine;
use crate::engine::registry::Registry;
use crate::store::Millis;

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

/// Evaluates every alert of `registry` whose tick at `now` is not in `tried`, and records
/// the ticks tried.
pub async fn evaluate_due(
    engine: &Engine,
    registry: &Registry,
    tried: &mut HashMap<String, Millis>,
    now: Millis,
) -> Round {
    let mut round = Round::default();
    for (id, wf) in &registry.workflows {
        let Some(alert) = &wf.alert else { continue };
        let tick = super::tick::tick_at(alert, now);
        if tried.get(id) == Some(&tick) {
            continue;
        }
        match super::tick::evaluate(engine, alert, now).await {
            Ok(Some(t)) => {
                tried.insert(id.clone(), tick);
                round.evaluated += 1;
                round.changed |= !t.changes.is_empty();
                for c in t.changes {
                    tracing::info!(alert = %id, labels = ?c.labels, value = ?c.value, transition = ?c.transition, "alert");
                }
            }
            Ok(None) => {
                tried.insert(id.clone(), tick);
            }
            Err(e) => {
                round.failed += 1;
                tracing::warn!(alert = %id, error = %e, "an alert's evaluation failed; it is tried again");
            }
        }
    }
    round
}
