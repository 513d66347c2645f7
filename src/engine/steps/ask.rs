//! `ask`: says the prompt, then waits for the person's next message (holding no worker, as
//! `wait_for` does) and fills the slot with it. An answer that does not fit is asked again,
//! `max_attempts` times in all; a message that came while the conversation was busy is the
//! answer at once, so messages are taken one at a time, in the order they came.

use serde_json::{Value, json};

use super::StepCx;
use super::conversation::{self, Session};
use super::flow::mark_ended;
use super::slots;
use crate::definitions::model::conversation::{AskStep, OnFail};
use crate::engine::clock::rfc3339;
use crate::engine::cursor::Wait;
use crate::engine::interpreter::{Outcome, StepError};

pub(super) async fn execute(mut cx: StepCx<'_>, ask: &AskStep) -> Result<Outcome, StepError> {
    let session = Session::of(&cx)?;
    let spec = conversation::spec(&cx)?;
    let step_id = cx.step().id.clone();
    // Everything this step may say is rendered first, before its answers change the context.
    let prompt = cx.render_opt(&ask.prompt)?;
    let reprompt = match &ask.reprompt {
        Some(_) => cx.render_opt(&ask.reprompt)?,
        None => prompt.clone(),
    };
    let give_up = cx.render_opt(&ask.give_up)?;
    let closing = cx.render_opt(&spec.spec.inactivity.say)?;
    let name = format!("message.{}", session.channel);
    let mut turns = Vec::new();
    let (mut attempts, since, timeout_at) = match cx.run.cursor.wait.take() {
        Some(Wait::Ask {
            attempts,
            since,
            timeout_at,
            ..
        }) => (attempts, since, timeout_at),
        _ => {
            if let Some(p) = &prompt {
                conversation::reply(&mut cx, &session, p.clone(), None).await?;
                turns.push(conversation::turn("assistant", p, &step_id, cx.now));
            }
            let wait = ask.timeout.unwrap_or(spec.spec.inactivity.after);
            (0, cx.run.created_at, cx.now + wait.as_millis_i64())
        }
    };
    let slot = ask
        .slot
        .as_ref()
        .and_then(|s| spec.spec.slots.get(s).map(|d| (s.0.clone(), d)));
    let region = cx.host.registry.config.contacts.default_region.clone();
    let today = jiff::Timestamp::from_millisecond(cx.now)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date())
        .unwrap_or_default();
    loop {
        let Some((event, text)) = session
            .next_message(&mut cx, since, &step_id, &mut turns)
            .await?
        else {
            break;
        };
        attempts += 1;
        let value = match &slot {
            Some((_, def)) => slots::parse(def, &text, &region, today),
            None if text.trim().is_empty() => Err("the answer is empty".to_owned()),
            None => Ok(json!(text.trim())),
        };
        match value {
            Ok(value) => {
                let out = json!({
                    "text": text,
                    "value": value,
                    "attempts": attempts,
                    "at": rfc3339(event.created_at),
                });
                let ctx = cx.context_mut();
                conversation::record(ctx, turns);
                if let Some((name, _)) = &slot
                    && let Some(slots) = ctx.get_mut("slots").and_then(Value::as_object_mut)
                {
                    slots.insert(name.clone(), value);
                }
                return Ok(Outcome::Done(out));
            }
            Err(why) if attempts >= ask.max_attempts => {
                if let Some(g) = &give_up {
                    let key = format!("{}:give_up", cx.effect_key());
                    conversation::reply(&mut cx, &session, g.clone(), Some(key)).await?;
                    turns.push(conversation::turn("assistant", g, &step_id, cx.now));
                }
                let out = json!({"text": text, "value": null, "attempts": attempts, "failed": why});
                conversation::record(cx.context_mut(), turns);
                return Ok(match &ask.on_fail {
                    OnFail::Continue => Outcome::Done(out),
                    OnFail::Goto(target) => {
                        let Some((idx, _)) = cx.run.workflow.program.node(target.as_str()) else {
                            return Err(StepError::Permanent(format!(
                                "no step `{target}` to go to in this version of `{}`",
                                cx.run.workflow.id
                            )));
                        };
                        cx.run.cursor.frames.clear();
                        Outcome::Goto(Some(idx), out)
                    }
                    OnFail::End => {
                        mark_ended(&mut cx, "gave_up");
                        Outcome::End(out)
                    }
                });
            }
            Err(why) => {
                tracing::debug!(step = %step_id, reason = %why, "an answer did not fit; asking again");
                if let Some(r) = &reprompt {
                    let key = format!("{}:retry{attempts}", cx.effect_key());
                    conversation::reply(&mut cx, &session, r.clone(), Some(key)).await?;
                    turns.push(conversation::turn("assistant", r, &step_id, cx.now));
                }
            }
        }
    }
    if cx.now >= timeout_at {
        if let Some(c) = &closing {
            let key = format!("{}:inactive", cx.effect_key());
            conversation::reply(&mut cx, &session, c.clone(), Some(key)).await?;
            turns.push(conversation::turn("assistant", c, &step_id, cx.now));
        }
        conversation::record(cx.context_mut(), turns);
        mark_ended(&mut cx, "inactivity");
        return Ok(Outcome::End(
            json!({"timed_out": true, "attempts": attempts}),
        ));
    }
    if !turns.is_empty() {
        conversation::record(cx.context_mut(), turns);
    }
    Ok(Outcome::Wait {
        wait: Wait::Ask {
            name: name.clone(),
            key: session.address.clone(),
            since,
            timeout_at,
            attempts,
        },
        due_at: Some(timeout_at),
        event: Some((name, session.address.clone())),
        note: json!({"waiting_for": session.address, "attempts": attempts, "timeout_at": rfc3339(timeout_at)}),
    })
}
