//! `handoff`: a person takes the conversation over. The step holds no worker while it lasts:
//! it waits, as `ask` does, on the person's messages, and each one that wakes it is passed to
//! the agents (consumed, so no later `ask` takes it as an answer, and announced as
//! `conversation.message`). An agent's release is the event `conversation.release` keyed by the
//! run, which the admin API records before it wakes the run; the timeout ends it too.

use serde_json::{Value, json};

use super::StepCx;
use super::conversation::{self, Session};
use crate::definitions::model::conversation::HandoffStep;
use crate::engine::clock::rfc3339;
use crate::engine::context::subscriber_runs;
use crate::engine::cursor::Wait;
use crate::engine::interpreter::{After, Outcome, StepError};
use crate::store::NewEvent;

/// The event that announces a handoff, keyed by the run.
pub(crate) const HANDOFF_EVENT: &str = "conversation.handoff";
/// The event that announces a person's message during a handoff, keyed by the run.
pub(crate) const MESSAGE_EVENT: &str = "conversation.message";
/// The event an agent's release records, keyed by the run.
pub(crate) const RELEASE_EVENT: &str = "conversation.release";
/// The step id of the messages agents send during a handoff, in the outbox and transcript.
pub(crate) const AGENT_STEP: &str = "agent";

pub(super) async fn execute(mut cx: StepCx<'_>, h: &HandoffStep) -> Result<Outcome, StepError> {
    let session = Session::of(&cx)?;
    let step_id = cx.step().id.clone();
    let run_id = cx.run.id.clone();
    let name = format!("message.{}", session.channel);
    let mut turns = Vec::new();
    let (since, timeout_at, mut received) = match cx.run.cursor.wait.take() {
        Some(Wait::Handoff {
            since,
            timeout_at,
            received,
            ..
        }) => (since, timeout_at, received),
        _ => {
            if let Some(text) = cx.render_opt(&h.say)?.filter(|t| !t.trim().is_empty()) {
                conversation::reply(&mut cx, &session, text.clone(), None).await?;
                turns.push(conversation::turn("assistant", &text, &step_id, cx.now));
            }
            let reason = cx.render_opt(&h.reason)?;
            let timeout_at = cx.now + h.timeout.as_millis_i64();
            let data = json!({
                "run_id": run_id,
                "conversation": cx.run.workflow.id,
                "channel": session.channel,
                "address": session.address,
                "reason": reason,
                "step": step_id,
                "timeout_at": rfc3339(timeout_at),
                "transcript": format!("/api/conversations/{run_id}/messages"),
            });
            let id = cx.effect_key();
            announce(&mut cx, HANDOFF_EVENT, id, data);
            tracing::info!(run = %run_id, channel = %session.channel, "conversation handed to a person");
            (cx.now, timeout_at, 0)
        }
    };
    // The person's messages so far go to the agents, in the order they came.
    loop {
        let since = cx.run.created_at;
        let Some((event, text)) = session
            .next_message(&mut cx, since, &step_id, &mut turns)
            .await?
        else {
            break;
        };
        received += 1;
        let data = json!({
            "run_id": run_id,
            "channel": session.channel,
            "address": session.address,
            "text": text,
            "at": rfc3339(event.created_at),
        });
        let id = format!("{}:message:{}", cx.effect_key(), event.id);
        announce(&mut cx, MESSAGE_EVENT, id, data);
    }
    let release = cx
        .host
        .store
        .find_event(RELEASE_EVENT, &run_id, since, &cx.run.cursor.consumed)
        .await
        .map_err(unreadable)?;
    let timed_out = release.is_none() && cx.now >= timeout_at;
    if release.is_none() && !timed_out {
        if !turns.is_empty() {
            conversation::record(cx.context_mut(), turns);
        }
        return Ok(Outcome::Wait {
            wait: Wait::Handoff {
                name: name.clone(),
                key: session.address.clone(),
                since,
                timeout_at,
                received,
            },
            due_at: Some(timeout_at),
            event: Some((name, session.address.clone())),
            note: json!({"handed_off": true, "received": received, "timeout_at": rfc3339(timeout_at)}),
        });
    }
    // What the agents said is part of the conversation the bot carries on.
    let sent = cx
        .host
        .store
        .outbox_for_run(&run_id)
        .await
        .map_err(unreadable)?;
    for m in sent
        .iter()
        .filter(|m| m.step_id.as_deref() == Some(AGENT_STEP) && m.created_at >= since)
    {
        turns.push(conversation::turn(
            "assistant",
            &m.body,
            AGENT_STEP,
            m.created_at,
        ));
    }
    turns.sort_by(|a, b| a["at"].as_str().cmp(&b["at"].as_str()));
    let mut out =
        json!({"released": release.is_some(), "timed_out": timed_out, "received": received});
    if let Some(e) = release {
        cx.run.cursor.consumed.push(e.id.clone());
        out["released_by"] = e.data.get("by").cloned().unwrap_or(Value::Null);
        out["released_at"] = json!(rfc3339(e.created_at));
    } else if let Some(text) = cx
        .render_opt(&h.timeout_say)?
        .filter(|t| !t.trim().is_empty())
    {
        let key = format!("{}:timeout", cx.effect_key());
        conversation::reply(&mut cx, &session, text.clone(), Some(key)).await?;
        turns.push(conversation::turn("assistant", &text, &step_id, cx.now));
    }
    conversation::record(cx.context_mut(), turns);
    Ok(Outcome::Done(out))
}

/// Records an event of the handoff with the step's writes, for the workflows that notify
/// agents; its id is derived from the run and step, so a re-executed segment announces once.
fn announce(cx: &mut StepCx<'_>, name: &str, id: String, data: Value) {
    let run_id = cx.run.id.clone();
    let event = NewEvent {
        id,
        name: name.to_owned(),
        key: Some(run_id.clone()),
        data,
        source_run_id: Some(run_id.clone()),
        created_at: cx.now,
    };
    let runs = subscriber_runs(cx.host.registry, &event, Some(&run_id), cx.now);
    cx.pending.new_runs.extend(runs);
    cx.pending.after.push(After::WakeWaiters {
        name: name.to_owned(),
        key: run_id,
    });
    cx.pending.events.push(event);
    cx.pending.after.push(After::Work);
}

fn unreadable(e: crate::store::StoreError) -> StepError {
    StepError::Transient {
        message: format!("could not read the conversation's messages: {e}"),
        retry_after: None,
    }
}
