//! Where a run is: the step it is at, the loops it is inside, and what it waits for. Stored as
//! JSON in the run's row and committed with every segment.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::Millis;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Cursor {
    /// The step to run (or whose wait to resolve) next; `None` once the run has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Enclosing `for_each` loops, innermost last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<LoopFrame>,
    /// What the current step waits for, while the run is waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
    /// The last step-log sequence number written.
    #[serde(default)]
    pub seq: i64,
    /// Events this run's `wait_for` steps already consumed, so a second wait does not take
    /// the same event again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumed: Vec<String>,
    /// When the current step's first attempt started (for the step log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopFrame {
    /// The `for_each` step's id.
    pub step: String,
    pub index: usize,
    pub items: Vec<Value>,
    /// The loop variable's name.
    pub var: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Wait {
    /// A `wait` step, until this time.
    Timer { until: Millis },
    /// A `wait_for` step: an event `(name, key)` that arrived at or after `since`, or the timeout.
    Event {
        name: String,
        key: String,
        since: Millis,
        timeout_at: Millis,
    },
    /// A `call` step: the child run.
    Child { run_id: String },
    /// A failed attempt's backoff, before the step is tried again.
    Retry { until: Millis },
    /// A conversation's `ask`: the person's next message (the event `name` keyed by their
    /// address, at or after `since`), with the answers tried so far, or the inactivity timeout.
    Ask {
        name: String,
        key: String,
        since: Millis,
        timeout_at: Millis,
        attempts: u32,
    },
    /// A conversation's `handoff`: the person's messages (the event `name` keyed by their
    /// address) wake it to pass them to the agents; a release or the timeout ends it.
    Handoff {
        name: String,
        key: String,
        /// When the handoff began: a release before it is not this handoff's.
        since: Millis,
        timeout_at: Millis,
        /// The person's messages passed to the agents so far.
        received: u32,
    },
}

impl Cursor {
    pub fn at(step: Option<String>) -> Cursor {
        Cursor {
            step,
            ..Cursor::default()
        }
    }

    pub(crate) fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a cursor always serializes")
    }

    pub fn from_value(v: &Value) -> Result<Cursor, String> {
        serde_json::from_value(v.clone()).map_err(|e| format!("unreadable run cursor: {e}"))
    }

    /// A suffix that makes an idempotency key unique per loop iteration.
    pub(crate) fn loop_suffix(&self) -> String {
        self.frames
            .iter()
            .map(|f| format!("[{}]", f.index))
            .collect()
    }
}
