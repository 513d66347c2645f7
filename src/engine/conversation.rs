//! Routing a message to a conversation: the person's open conversation takes it, a `start`
//! opens one (or, with `while_open: restart`, replaces the open one), and the reset command
//! ends the open one. A conversation is a run like any other, labelled
//! `conversation: <channel>:<address>`, so its newest run for the address says whether it is
//! open; one sender's messages are routed one at a time (`senders.rs`), so two cannot open two.

use std::sync::Arc;

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
}

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
            .open_conversation(conversation, &format!("{channel}:{address}"))
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
