//! What the conversation steps share: who the conversation is with, replying to them through
//! the outbox, and the turns kept in the run's context (`conversation.turns`), which
//! `ai_reply` shows the model and the step log keeps whole.

use std::sync::Arc;

use serde_json::{Value, json};

use super::StepCx;
use super::send;
use crate::definitions::model::Template;
use crate::definitions::model::step::{MessageCategory, SendStep};
use crate::engine::clock::rfc3339;
use crate::engine::interpreter::StepError;
use crate::engine::registry::CompiledConversation;

/// The turns a run's context keeps; the step log keeps every one.
pub(crate) const KEPT_TURNS: usize = 40;
/// The characters of one turn a run's context keeps.
pub(crate) const TURN_CHARS: usize = 2000;

/// Who a conversation run is talking to.
pub(crate) struct Session {
    pub channel: String,
    pub address: String,
}

impl Session {
    /// The session of the run `cx` executes; an error for a conversation step in a run that
    /// is not a conversation's.
    pub(crate) fn of(cx: &StepCx<'_>) -> Result<Session, StepError> {
        let c = cx.run.ctx.get("conversation");
        let text = |k: &str| {
            c.and_then(|c| c.get(k))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        match (text("channel"), text("address")) {
            (Some(channel), Some(address)) => Ok(Session { channel, address }),
            _ => Err(StepError::Permanent(format!(
                "`{}` needs a conversation with a channel and an address; a conversation started by a workflow needs `input.channel` and `input.to`",
                cx.step().action.key()
            ))),
        }
    }
}

impl Session {
    /// The person's next message on this session since `since` that the run has not taken
    /// yet: it is marked taken and added to `turns` as the person's turn at `step`. Gives the
    /// message and its text, or `None` when there is none.
    pub(crate) async fn next_message(
        &self,
        cx: &mut StepCx<'_>,
        since: i64,
        step: &str,
        turns: &mut Vec<Value>,
    ) -> Result<Option<(crate::store::EventRecord, String)>, StepError> {
        let name = format!("message.{}", self.channel);
        let found = cx
            .host
            .store
            .find_event(&name, &self.address, since, &cx.run.cursor.consumed)
            .await
            .map_err(|e| StepError::Transient {
                message: format!("could not look for the person's message: {e}"),
                retry_after: None,
            })?;
        let Some(event) = found else { return Ok(None) };
        cx.run.cursor.consumed.push(event.id.clone());
        let text = event
            .data
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        turns.push(turn("user", &text, step, event.created_at));
        Ok(Some((event, text)))
    }
}

/// The rules of the conversation the run belongs to.
pub(crate) fn spec(cx: &StepCx<'_>) -> Result<Arc<CompiledConversation>, StepError> {
    cx.run.workflow.conversation.clone().ok_or_else(|| {
        StepError::Permanent(format!(
            "`{}` is a conversation step, in a run of workflow `{}`",
            cx.step().action.key(),
            cx.run.workflow.id
        ))
    })
}

/// Queues `text` to the person, as is (it is not a template), on their channel. Replies are
/// `transactional`: the person asked, so only an opt-out or a bounce stops them.
pub(crate) async fn reply(
    cx: &mut StepCx<'_>,
    session: &Session,
    text: String,
    key: Option<String>,
) -> Result<Value, StepError> {
    let s = SendStep {
        channel: session.channel.clone(),
        to: Template(String::new()),
        template: None,
        body: None,
        whatsapp_template: None,
        subject: None,
        from: None,
        headers: Default::default(),
        category: MessageCategory::Transactional,
    };
    send::queue(cx, &s, Some(text), key, Some(&session.address)).await
}

/// One message of the conversation, either way.
pub(crate) fn turn(role: &str, text: &str, step: &str, at: i64) -> Value {
    let text: String = if text.chars().count() > TURN_CHARS {
        text.chars().take(TURN_CHARS).chain(['…']).collect()
    } else {
        text.to_owned()
    };
    json!({"role": role, "text": text, "step": step, "at": rfc3339(at)})
}

/// Adds turns to `conversation.turns`, keeping the last [`KEPT_TURNS`]; the person's last
/// message is also `conversation.last`.
pub(crate) fn record(ctx: &mut Value, turns: Vec<Value>) {
    let Some(c) = ctx.get_mut("conversation").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(last) = turns.iter().rev().find(|t| t["role"] == "user") {
        c.insert("last".into(), last["text"].clone());
    }
    let list = c.entry("turns").or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = list {
        list.extend(turns);
        let extra = list.len().saturating_sub(KEPT_TURNS);
        list.drain(..extra);
    }
}
