//! `wait`: suspends the run for a duration (`for`) or until a time (`until`).

use serde_json::json;

use super::StepCx;
use crate::definitions::model::step::WaitStep;
use crate::engine::clock::rfc3339;
use crate::engine::cursor::Wait;
use crate::engine::interpreter::{Outcome, StepError};
use crate::store::Millis;

pub(super) fn execute(cx: StepCx<'_>, w: &WaitStep) -> Result<Outcome, StepError> {
    let now = cx.now;
    let until = match w {
        WaitStep::For(d) => now + d.as_millis_i64(),
        WaitStep::Until(u) => {
            let text = cx.render(u.until.as_str())?;
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
            until
        }
    };
    Ok(timer(until))
}

/// A run woken while it waits for a timer: done once the time has come.
pub(crate) fn resume(until: Millis, now: Millis) -> Outcome {
    if now >= until {
        Outcome::Done(json!({"waited_until": rfc3339(until)}))
    } else {
        timer(until)
    }
}

fn timer(until: Millis) -> Outcome {
    Outcome::Wait {
        wait: Wait::Timer { until },
        due_at: Some(until),
        event: None,
        note: json!({"until": rfc3339(until)}),
    }
}
