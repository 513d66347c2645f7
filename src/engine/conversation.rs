//! Routing a message to a conversation: the person's open conversation takes it, a `start`
//! opens one (or, with `while_open: restart`, replaces the open one; with `queue`, waits
//! behind it), and the reset command ends the open one. A conversation is a run like any other, labelled
//! `conversation: <channel>:<address>`, so its newest run for the address says whether it is
//! open; one sender's messages are routed one at a time (`senders.rs`), so two cannot open two.

use std::sync::Arc;

use super::context::conversation_key;
use super::registry::{CompiledWorkflow, Registry};
use super::{Engine, EngineError, RunBuilder, Trigger};
use crate::definitions::model::conversation::WhileOpen;
use crate::store::{Millis, NewRun, RunRecord};
use crate::triggers::conversation::{is_reset, starts};

/// What the conversations on a channel make of a message.
#[derive(Default)]
pub(crate) struct Routed {
    /// A conversation to start, recorded with the message.
    pub runs: Vec<NewRun>,
    /// An open conversation takes the message: no `message` trigger starts on it.
    pub claimed: bool,
    /// The message was a reset that ended an open conversation.
    pub reset: bool,
    /// The message starts a conversation queued behind the open one: it is that one's, and
    /// the open one's `ask` must not take it as an answer.
    pub held: bool,
}

/// The event a message that starts a queued conversation is recorded as, instead of
/// `message.<channel>`, so no waiting `ask` or `wait_for` takes it.
pub(crate) const HELD_MESSAGE_EVENT: &str = "message.queued";

/// The message being routed.
pub(crate) struct Message<'a> {
    pub channel: &'a str,
    pub from: &'a str,
    pub text: &'a str,
    pub provider_id: Option<&'a str>,
    pub event_id: &'a str,
    pub dedupe: Option<&'a str>,
}

impl Engine {
    pub(crate) async fn route_conversation(
        &self,
        registry: &Registry,
        m: &Message<'_>,
        now: Millis,
    ) -> Result<Routed, EngineError> {
        let mut routed = Routed::default();
        let Some(convs) = registry.conversations.get(m.channel) else {
            return Ok(routed);
        };
        let mut open: Option<RunRecord> = None;
        for wf in convs {
            if let Some(run) = self.open_conversation(&wf.id, m.channel, m.from).await? {
                open = Some(run);
                break;
            }
        }
        if let Some(run) = &open {
            let reset = registry
                .workflows
                .get(&run.workflow_id)
                .and_then(|wf| wf.conversation.as_ref())
                .is_some_and(|c| is_reset(&c.spec.reset, m.text));
            if reset {
                tracing::info!(run = %run.id, channel = m.channel, "conversation reset");
                self.cancel(&run.id).await?;
                // A reset is a clean slate: what waited behind the conversation goes too.
                let key = conversation_key(m.channel, m.from);
                for q in self.store.queued_conversations(Some(&key), 100).await? {
                    self.cancel(&q.run_id).await?;
                }
                routed.reset = true;
                return Ok(routed);
            }
        }
        let starting = convs.iter().find(|wf| {
            wf.conversation
                .as_ref()
                .is_some_and(|c| starts(&c.spec.start, &c.start_patterns, m.text))
        });
        match (open, starting) {
            (Some(_), None) => routed.claimed = true,
            (Some(run), Some(wf)) => {
                let policy = wf
                    .conversation
                    .as_ref()
                    .map_or(WhileOpen::Ignore, |c| c.spec.while_open);
                match policy {
                    WhileOpen::Ignore => routed.claimed = true,
                    WhileOpen::Restart => {
                        tracing::info!(run = %run.id, conversation = %wf.id, "a new start replaces the open conversation");
                        self.cancel(&run.id).await?;
                        routed.claimed = true;
                        routed.runs.push(new_run(registry, wf, m, now));
                    }
                    WhileOpen::Queue => {
                        tracing::info!(run = %run.id, conversation = %wf.id, "a new start waits for the open conversation to end");
                        routed.claimed = true;
                        routed.held = true;
                        let mut queued = new_run(registry, wf, m, now);
                        queued.queued = Some(conversation_key(m.channel, m.from));
                        routed.runs.push(queued);
                    }
                }
            }
            (None, Some(wf)) => {
                routed.claimed = true;
                routed.runs.push(new_run(registry, wf, m, now));
            }
            (None, None) => {}
        }
        Ok(routed)
    }

    /// The person's open conversation of this kind on this channel: its newest run, if that
    /// has not ended.
    pub(crate) async fn open_conversation(
        &self,
        conversation: &str,
        channel: &str,
        address: &str,
    ) -> Result<Option<RunRecord>, EngineError> {
        Ok(self
            .store
            .open_conversation(conversation, &conversation_key(channel, address))
            .await?)
    }
}

fn new_run(
    registry: &Registry,
    wf: &Arc<CompiledWorkflow>,
    m: &Message<'_>,
    now: Millis,
) -> NewRun {
    let trigger = Trigger::Message {
        channel: m.channel.to_owned(),
        from: m.from.to_owned(),
        text: m.text.to_owned(),
        id: m.provider_id.map(str::to_owned),
    };
    RunBuilder::new(wf, trigger)
        .idempotency_key(m.dedupe.map(|d| format!("conversation:{d}")))
        .started_by(m.event_id)
        .build(&registry.templates, now)
}

impl Engine {
    /// Starts the queued conversations whose person has no open conversation on the channel
    /// any more: the oldest per person. Called every second by the scheduler, so however the
    /// open one ended (its last step, a timeout, a cancel, a crash of the process that ran
    /// it) the next one starts. Returns how many started.
    pub async fn promote_queued_conversations(&self) -> Result<usize, EngineError> {
        let queued = self.store.queued_conversations(None, 500).await?;
        if queued.is_empty() {
            return Ok(0);
        }
        let registry = self.registry();
        let now = self.now();
        let mut seen = std::collections::HashSet::new();
        let mut promoted = 0;
        for q in queued {
            // Oldest first: only the first queued start of each person can be next.
            if !seen.insert(q.key.clone()) {
                continue;
            }
            let Some((channel, address)) = q.key.split_once(':') else {
                continue;
            };
            let mut open = false;
            for wf in registry.conversations.get(channel).into_iter().flatten() {
                if self
                    .open_conversation(&wf.id, channel, address)
                    .await?
                    .is_some()
                {
                    open = true;
                    break;
                }
            }
            if !open
                && self
                    .store
                    .promote_queued_conversation(&q.run_id, now)
                    .await?
            {
                tracing::info!(run = %q.run_id, key = %q.key, "a queued conversation starts");
                promoted += 1;
            }
        }
        if promoted > 0 {
            self.work_ready.notify_waiters();
        }
        Ok(promoted)
    }
}
