//! `wait_for`: suspends the run until an event with a key arrives (a reply is the event
//! `message.<channel>` keyed by its sender), or until the timeout.

use serde_json::{Value, json};

use super::StepCx;
use crate::definitions::model::step::{OnTimeout, WaitForStep};
use crate::engine::clock::rfc3339;
use crate::engine::cursor::Wait;
use crate::engine::interpreter::{Active, Outcome, StepError};
use crate::store::{DynStore, EventRecord, Millis};

pub(super) async fn execute(cx: StepCx<'_>, w: &WaitForStep) -> Result<Outcome, StepError> {
    let name = match (&w.event, &w.reply) {
        (Some(e), _) => e.clone(),
        (None, Some(channel)) => format!("message.{channel}"),
        (None, None) => {
            return Err(StepError::Permanent(
                "`wait_for` needs an `event` or a `reply`".into(),
            ));
        }
    };
    let key = key(&cx, w)?;
    // An event that arrived before this wait was registered still counts.
    match cx
        .host
        .store
        .find_event(&name, &key, cx.run.created_at, &cx.run.cursor.consumed)
        .await
    {
        Ok(Some(e)) => {
            cx.run.cursor.consumed.push(e.id.clone());
            Ok(Outcome::Done(event_output(&e)))
        }
        Ok(None) => {
            let timeout_at = cx.now + w.timeout.as_millis_i64();
            Ok(Outcome::Wait {
                wait: Wait::Event {
                    name: name.clone(),
                    key: key.clone(),
                    since: cx.run.created_at,
                    timeout_at,
                },
                due_at: Some(timeout_at),
                event: Some((name.clone(), key.clone())),
                note: json!({"event": name, "key": key, "timeout_at": rfc3339(timeout_at)}),
            })
        }
        Err(e) => Err(StepError::Transient {
            message: format!("could not look for the event: {e}"),
            retry_after: None,
        }),
    }
}

/// The rendered key; a wait needs one to match by.
fn key(cx: &StepCx<'_>, w: &WaitForStep) -> Result<String, StepError> {
    match cx.templates().render_value_str(w.key.as_str(), cx.ctx())? {
        Value::String(k) if !k.trim().is_empty() => Ok(k.trim().to_owned()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(StepError::Permanent(format!(
            "the `wait_for` key `{}` is {}; a wait needs a key to match {} by",
            w.key.as_str(),
            match other {
                Value::Null => "null".to_owned(),
                Value::String(_) => "empty".to_owned(),
                v => format!("not text ({v})"),
            },
            if w.reply.is_some() {
                "the reply's sender"
            } else {
                "the event's key"
            }
        ))),
    }
}

/// What a waiting `wait_for` waits for (a [`Wait::Event`]).
pub(crate) struct EventWait {
    pub name: String,
    pub key: String,
    pub since: Millis,
    pub timeout_at: Millis,
}

/// The event a waiting run was woken for, if it has come; else the timeout, if it has passed.
pub(crate) async fn resume(
    store: &DynStore,
    a: &mut Active,
    on_timeout: OnTimeout,
    wait: EventWait,
    now: Millis,
) -> Result<Outcome, StepError> {
    let EventWait {
        name,
        key,
        since,
        timeout_at,
    } = wait;
    match store
        .find_event(&name, &key, since, &a.cursor.consumed)
        .await
    {
        Ok(Some(e)) => {
            a.cursor.consumed.push(e.id.clone());
            Ok(Outcome::Done(event_output(&e)))
        }
        Ok(None) if now >= timeout_at => match on_timeout {
            OnTimeout::Continue => Ok(Outcome::Done(json!({"timed_out": true}))),
            OnTimeout::Fail => Err(StepError::Permanent(format!(
                "no `{name}` for `{key}` arrived before the timeout ({})",
                rfc3339(timeout_at)
            ))),
        },
        Ok(None) => Ok(Outcome::Wait {
            wait: Wait::Event {
                name: name.clone(),
                key: key.clone(),
                since,
                timeout_at,
            },
            due_at: Some(timeout_at),
            event: Some((name, key)),
            note: json!({"still_waiting": true}),
        }),
        Err(e) => Err(StepError::Transient {
            message: format!("could not look for the event: {e}"),
            retry_after: None,
        }),
    }
}

fn event_output(e: &EventRecord) -> Value {
    json!({
        "timed_out": false,
        "event": {"id": e.id, "name": e.name, "key": e.key, "data": e.data, "at": rfc3339(e.created_at)},
        "data": e.data,
        "text": e.data.get("text"),
        "from": e.data.get("from"),
    })
}
