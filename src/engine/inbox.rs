//! The agent inbox: a conversation's transcript, read from what is stored (the person's
//! messages as events, the replies as outbox rows), an agent's reply during a handoff, and the
//! release that gives the conversation back to its steps.

use serde_json::{Value, json};

use super::clock::rfc3339;
use super::cursor::{Cursor, Wait};
use super::steps::handoff::{AGENT_STEP, RELEASE_EVENT};
use super::{Engine, EngineError, new_id, retry, suppression};
use crate::definitions::model::step::MessageCategory;
use crate::store::{NewEvent, NewOutbox, RunRecord};

/// The most inbound messages a transcript lists.
const MAX_INBOUND: usize = 2000;

/// Why the inbox refused.
#[derive(Debug)]
pub enum InboxError {
    /// No such run, or it is not a conversation.
    NotFound(String),
    /// The conversation is not in a state that allows this (not handed to a person, ended).
    Conflict(String),
    /// The message cannot be sent (empty, or the person opted out).
    Invalid(String),
    Engine(EngineError),
}

impl From<EngineError> for InboxError {
    fn from(e: EngineError) -> Self {
        InboxError::Engine(e)
    }
}

impl From<crate::store::StoreError> for InboxError {
    fn from(e: crate::store::StoreError) -> Self {
        InboxError::Engine(e.into())
    }
}

/// Who a conversation run talks to: its channel and address.
fn session(run: &RunRecord) -> Option<(String, String)> {
    let c = run.context.get("conversation")?;
    let channel = c.get("channel")?.as_str()?.to_owned();
    let address = c.get("address")?.as_str()?.to_owned();
    Some((channel, address))
}

fn handed_off(run: &RunRecord) -> bool {
    !run.status.is_finished()
        && Cursor::from_value(&run.cursor)
            .is_ok_and(|c| matches!(c.wait, Some(Wait::Handoff { .. })))
}

impl Engine {
    async fn conversation_run(&self, id: &str) -> Result<(RunRecord, String, String), InboxError> {
        let run = self
            .store
            .run(id)
            .await?
            .ok_or_else(|| InboxError::NotFound(format!("no run {id}")))?;
        let Some((channel, address)) = session(&run) else {
            return Err(InboxError::NotFound(format!(
                "run {id} (workflow `{}`) is not a conversation",
                run.workflow_id
            )));
        };
        Ok((run, channel, address))
    }

    /// The conversation's messages both ways, oldest first: the person's (`in`) from the
    /// stored events between the run's start and its end, the replies (`out`: the steps' and
    /// the agents') from the outbox, each with its time, channel and step.
    pub async fn transcript(&self, id: &str) -> Result<Value, InboxError> {
        let (run, channel, address) = self.conversation_run(id).await?;
        let name = format!("message.{channel}");
        // The step that took an inbound message, where the run's recent turns still say.
        let turns = run
            .context
            .pointer("/conversation/turns")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut seen: Vec<String> = Vec::new();
        let mut messages: Vec<(i64, Value)> = Vec::new();
        while seen.len() < MAX_INBOUND {
            let Some(e) = self
                .store
                .find_event(&name, &address, run.created_at, &seen)
                .await?
            else {
                break;
            };
            seen.push(e.id.clone());
            if run.finished_at.is_some_and(|end| e.created_at > end) {
                break;
            }
            let text = e.data.get("text").and_then(Value::as_str).unwrap_or("");
            let at = rfc3339(e.created_at);
            let step = turns
                .iter()
                .find(|t| t["role"] == "user" && t["at"] == at.as_str() && t["text"] == text)
                .map(|t| t["step"].clone())
                .unwrap_or(Value::Null);
            messages.push((
                e.created_at,
                json!({"direction": "in", "text": text, "at": at, "channel": channel,
                       "from": address, "step": step, "event_id": e.id}),
            ));
        }
        for m in self.store.outbox_for_run(id).await? {
            messages.push((
                m.created_at,
                json!({"direction": "out", "text": m.body, "at": rfc3339(m.created_at),
                       "channel": m.channel, "to": m.recipient, "step": m.step_id,
                       "message_id": m.id, "status": m.status, "delivery": m.delivery}),
            ));
        }
        // Stable: at the same millisecond, the person's message comes before its answer.
        messages.sort_by_key(|(at, m)| (*at, m["direction"] == "out"));
        Ok(json!({
            "run_id": run.id,
            "conversation": run.workflow_id,
            "channel": channel,
            "address": address,
            "status": run.status.as_str(),
            "handed_off": handed_off(&run),
            "messages": messages.into_iter().map(|(_, m)| m).collect::<Vec<_>>(),
        }))
    }

    /// Queues an agent's reply to the person of a handed-off conversation, on its channel,
    /// through the outbox, recorded as the event `conversation.reply` keyed by the run. A
    /// `key` makes a retried request one message.
    pub async fn agent_reply(
        &self,
        id: &str,
        text: &str,
        by: Option<&str>,
        key: Option<&str>,
    ) -> Result<Value, InboxError> {
        let (run, channel, address) = self.conversation_run(id).await?;
        if text.trim().is_empty() {
            return Err(InboxError::Invalid("the reply's `text` is empty".into()));
        }
        if !handed_off(&run) {
            return Err(InboxError::Conflict(format!(
                "conversation {id} is {} and not handed to a person; its steps answer it",
                run.status.as_str()
            )));
        }
        let registry = self.registry();
        let Some(ch) = registry.channels.get(&channel) else {
            return Err(InboxError::Conflict(format!(
                "channel `{channel}` is no longer in herald.yaml"
            )));
        };
        let category = MessageCategory::Transactional;
        let recipient = suppression::check(
            &self.store,
            None,
            &registry.config.contacts.default_region,
            run.context.get("contact").filter(|c| !c.is_null()),
            (&channel, ch.address_kind()),
            &address,
            category,
        )
        .await?;
        if let Some(reason) = recipient.blocked {
            return Err(InboxError::Invalid(format!(
                "{address} on `{channel}` receives no messages: {reason}"
            )));
        }
        let now = self.now();
        let message_id = new_id();
        let idempotency_key = format!("agent:{id}:{}", key.unwrap_or(&message_id));
        let outbox = NewOutbox {
            id: message_id.clone(),
            idempotency_key: idempotency_key.clone(),
            run_id: Some(run.id.clone()),
            workflow_id: Some(run.workflow_id.clone()),
            step_id: Some(AGENT_STEP.to_owned()),
            channel: channel.clone(),
            recipient: address.clone(),
            sender: None,
            subject: None,
            body: text.to_owned(),
            html: false,
            headers: json!({}),
            max_attempts: i64::from(retry::outbox_default().max_attempts),
            category,
            retry: None,
            created_at: now,
            due_at: now,
            approved_template: None,
        };
        let event = NewEvent {
            id: idempotency_key.clone(),
            name: "conversation.reply".into(),
            key: Some(run.id.clone()),
            data: json!({"run_id": run.id, "channel": channel, "to": address, "text": text, "by": by, "message_id": message_id}),
            source_run_id: None,
            created_at: now,
        };
        self.store
            .insert_events(&[event], &[], &[], &[outbox])
            .await?;
        self.outbox_ready.notify_waiters();
        Ok(json!({"message_id": message_id, "channel": channel, "to": address, "at": rfc3339(now)}))
    }

    /// Gives a handed-off conversation back to its steps: records `conversation.release`
    /// keyed by the run and wakes it, and its `handoff` step ends.
    pub async fn release_conversation(
        &self,
        id: &str,
        by: Option<&str>,
    ) -> Result<Value, InboxError> {
        let (run, _, _) = self.conversation_run(id).await?;
        if !handed_off(&run) {
            return Err(InboxError::Conflict(format!(
                "conversation {id} is {} and not handed to a person",
                run.status.as_str()
            )));
        }
        let now = self.now();
        let event = NewEvent {
            id: new_id(),
            name: RELEASE_EVENT.into(),
            key: Some(run.id.clone()),
            data: json!({"run_id": run.id, "by": by}),
            source_run_id: None,
            created_at: now,
        };
        self.store.insert_events(&[event], &[], &[], &[]).await?;
        // The handoff waits on the person's messages; the release wakes it on that wait.
        if let (Some(name), Some(key)) = (&run.wait_event, &run.wait_key) {
            self.store.wake_waiting(name, key, now).await?;
        }
        self.work_ready.notify_waiters();
        Ok(json!({"run_id": run.id, "released_at": rfc3339(now)}))
    }
}
