//! One alert instance's state machine, as Prometheus runs it: inactive → pending (the condition
//! holds, for less than `for`) → firing → resolved. A firing alert resolves when its `resolve`
//! threshold holds (or, without one, when the condition stops holding) and `keep_firing_for`
//! has passed since the condition last held. A pending alert whose condition fails once starts
//! again: `for` means "held at every evaluation for that long".

use serde::{Deserialize, Serialize};

use crate::definitions::alert::Alert;
use crate::definitions::model::alert::NoData;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Inactive,
    Pending,
    Firing,
    /// Was firing, and is no longer: the resolved notice is due. The next evaluation that does
    /// not fire makes it inactive.
    Resolved,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Inactive => "inactive",
            Phase::Pending => "pending",
            Phase::Firing => "firing",
            Phase::Resolved => "resolved",
        }
    }
}

/// What is stored per alert instance (rule and group labels). Times are milliseconds since
/// the epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    pub phase: Phase,
    /// When the condition started holding without a break (pending or firing).
    pub active_since: Option<i64>,
    /// When it fired.
    pub fired_at: Option<i64>,
    /// The last evaluation at which the condition held, for `keep_firing_for`.
    pub last_active: Option<i64>,
    /// The value at the last evaluation (`None`: no data).
    pub value: Option<f64>,
    /// When it was last evaluated.
    pub evaluated_at: i64,
    /// What the last check found, for a `probe` source.
    #[serde(default)]
    pub probe: Option<super::probe::ProbeResult>,
}

impl AlertState {
    pub fn new(now: i64) -> AlertState {
        AlertState {
            phase: Phase::Inactive,
            active_since: None,
            fired_at: None,
            last_active: None,
            value: None,
            evaluated_at: now,
            probe: None,
        }
    }
}

/// A change someone is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Fired,
    Resolved,
}

fn millis(d: Option<crate::definitions::model::Duration>) -> i64 {
    d.map_or(0, |d| d.as_millis_i64())
}

/// The state after one evaluation at `now` that saw `value` (`None`: no data), and the
/// transition to notify, if any.
pub fn step(
    alert: &Alert,
    prev: &AlertState,
    value: Option<f64>,
    now: i64,
) -> (AlertState, Option<Transition>) {
    let was_firing = prev.phase == Phase::Firing;
    let active = match value {
        None => match alert.def.no_data {
            NoData::Ok => false,
            NoData::Alerting => true,
            NoData::KeepState => {
                let mut next = prev.clone();
                next.value = None;
                next.evaluated_at = now;
                if next.phase == Phase::Resolved {
                    next.phase = Phase::Inactive;
                }
                return (next, None);
            }
        },
        // A firing alert is judged by its resolve threshold: hysteresis.
        Some(v) if was_firing => !alert.resolves_at(v),
        Some(v) => alert.condition.holds(v),
    };
    let mut next = prev.clone();
    next.value = value;
    next.evaluated_at = now;
    if active {
        next.last_active = Some(now);
        match prev.phase {
            Phase::Firing => return (next, None),
            Phase::Pending => {}
            Phase::Inactive | Phase::Resolved => next.active_since = Some(now),
        }
        let since = next.active_since.unwrap_or(now);
        if now - since >= millis(alert.def.for_) {
            next.phase = Phase::Firing;
            next.fired_at = Some(now);
            return (next, Some(Transition::Fired));
        }
        next.phase = Phase::Pending;
        return (next, None);
    }
    match prev.phase {
        Phase::Firing => {
            let last = prev.last_active.unwrap_or(now);
            if now - last < millis(alert.def.keep_firing_for) {
                return (next, None);
            }
            next.phase = Phase::Resolved;
            next.active_since = None;
            (next, Some(Transition::Resolved))
        }
        Phase::Pending | Phase::Resolved | Phase::Inactive => {
            next.phase = Phase::Inactive;
            next.active_since = None;
            (next, None)
        }
    }
}
