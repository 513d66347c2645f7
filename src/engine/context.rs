//! The context a run starts with, built in one place for every way a run can start.
//!
//! Every entry point (a webhook under `serve`, `herald run`, a cron slot, an event, an inbound
//! message, a `call`) describes what started the run as a [`Trigger`], and the context is made
//! from it here. So a definition sees the same names whether it is tried with `herald run`,
//! checked by `herald validate` or served live: `input` is always there, and means what the
//! trigger carried (a webhook's body, an event's data, an inbound message, a cron trigger's
//! `input`, a caller's `input`).

use serde_json::{Map, Value, json};

use super::clock::rfc3339;
use super::cursor::Cursor;
use super::registry::{CompiledWorkflow, Registry};
use crate::store::{Millis, NewEvent, NewRun, TriggerKind};
use crate::templates::Templates;

/// What started a run, with what it carried.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    Webhook {
        method: String,
        path: String,
        body: Value,
        headers: Map<String, Value>,
        query: Map<String, Value>,
        params: Map<String, Value>,
    },
    Event {
        name: String,
        key: Option<String>,
        data: Value,
        source_run_id: Option<String>,
    },
    Message {
        channel: String,
        from: String,
        text: String,
        id: Option<String>,
    },
    Cron {
        schedule: String,
        timezone: String,
        slot: Millis,
        input: Value,
    },
    Call {
        parent_run_id: String,
        input: Value,
    },
    /// Started by hand (`herald run` of a workflow without triggers, the admin API).
    Manual {
        input: Value,
    },
}

/// What a request carries besides its body, for a webhook trigger.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RequestParts {
    pub headers: Map<String, Value>,
    pub query: Map<String, Value>,
    pub params: Map<String, Value>,
}

impl Trigger {
    /// What a workflow's trigger (`def`, its first one; `None` for a workflow without
    /// triggers) would carry, made from `input`: how `herald run` starts a workflow as it
    /// would be started live. A webhook's body is `input`, with `request`'s headers, query and
    /// path parameters; an event's data is `input` (its key `input.key`); a message is
    /// `input.from` and `input.text`; a cron slot is `now`, with the trigger's own `input` if
    /// it has one.
    pub(crate) fn from_input(
        def: Option<&crate::definitions::model::Trigger>,
        input: Value,
        request: RequestParts,
        now: Millis,
    ) -> Trigger {
        use crate::definitions::model::Trigger as Def;
        let text = |v: &Value, k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match def {
            Some(Def::Webhook(w)) => Trigger::Webhook {
                method: w.method.as_str().to_owned(),
                path: w.path.clone(),
                body: input,
                headers: request.headers,
                query: request.query,
                params: request.params,
            },
            Some(Def::Event(e)) => Trigger::Event {
                name: e.name.clone(),
                key: input.get("key").and_then(Value::as_str).map(str::to_owned),
                data: input,
                source_run_id: None,
            },
            Some(Def::Message(m)) => Trigger::Message {
                channel: m.channel.clone(),
                from: text(&input, "from"),
                text: text(&input, "text"),
                id: None,
            },
            Some(Def::Cron(c)) => Trigger::Cron {
                schedule: c.schedule.clone(),
                timezone: c.timezone.clone(),
                slot: now,
                input: c.input.clone().unwrap_or(input),
            },
            None => Trigger::Manual { input },
        }
    }

    /// The kind recorded with the run.
    pub fn kind(&self) -> TriggerKind {
        match self {
            Trigger::Webhook { .. } => TriggerKind::Webhook,
            Trigger::Event { .. } => TriggerKind::Event,
            Trigger::Message { .. } => TriggerKind::Message,
            Trigger::Cron { .. } => TriggerKind::Cron,
            Trigger::Call { .. } => TriggerKind::Call,
            Trigger::Manual { .. } => TriggerKind::Manual,
        }
    }

    /// The names a run of this trigger starts with (before `run`, `vars`, `steps` and
    /// `contact`, which every run has).
    pub(crate) fn into_context(self) -> Value {
        match self {
            Trigger::Webhook {
                method,
                path,
                body,
                headers,
                query,
                params,
            } => json!({
                "trigger": {"kind": "webhook", "method": method, "path": path},
                "input": body,
                "body": body,
                "headers": headers,
                "query": query,
                "params": params,
            }),
            Trigger::Event {
                name,
                key,
                data,
                source_run_id,
            } => json!({
                "trigger": {"kind": "event", "name": name},
                "input": data,
                "event": {"name": name, "key": key, "data": data, "source_run_id": source_run_id},
            }),
            Trigger::Message {
                channel,
                from,
                text,
                id,
            } => {
                // A bot command (`/start +15551234567`) is read out, so a workflow can link a
                // chat to a contact in YAML: `message.command.name`, `message.command.payload`.
                let command = crate::channels::inbound::Command::parse(&text)
                    .map(|c| json!({"name": c.name, "payload": c.payload}));
                let message = json!({"channel": channel, "from": from, "text": text, "id": id, "command": command});
                json!({
                    "trigger": {"kind": "message", "channel": channel},
                    "input": message,
                    "message": message,
                })
            }
            Trigger::Cron {
                schedule,
                timezone,
                slot,
                input,
            } => json!({
                "trigger": {"kind": "cron", "schedule": schedule, "timezone": timezone, "slot": rfc3339(slot)},
                "input": input,
            }),
            Trigger::Call {
                parent_run_id,
                input,
            } => json!({
                "trigger": {"kind": "call", "parent_run_id": parent_run_id},
                "input": input,
            }),
            Trigger::Manual { input } => json!({
                "trigger": {"kind": "manual"},
                "input": input,
            }),
        }
    }
}

/// Completes a trigger's context with what every run has: `run`, and empty `vars`, `steps`
/// and `contact`.
pub(crate) fn run_context(
    trigger: Trigger,
    run_id: &str,
    workflow_id: &str,
    labels: &Value,
    now: Millis,
) -> Value {
    let mut context = trigger.into_context();
    if let Some(obj) = context.as_object_mut() {
        obj.insert(
            "run".into(),
            json!({"id": run_id, "workflow": workflow_id, "started_at": rfc3339(now), "labels": labels}),
        );
        obj.insert("vars".into(), json!({}));
        obj.insert("steps".into(), json!({}));
        obj.insert("contact".into(), Value::Null);
    }
    context
}

/// A run about to start, built the same way whatever started it: a webhook, a cron slot, an
/// event, an inbound message, a `call`, `herald run` or a test.
///
/// [`RunBuilder::build`] gives the run's record, due now: its context made from the trigger
/// (see [`run_context`]), its labels rendered from the workflow's `labels`, its cursor at the
/// workflow's first step.
#[derive(Debug, Clone)]
pub(crate) struct RunBuilder<'a> {
    workflow: &'a CompiledWorkflow,
    trigger: Trigger,
    idempotency_key: Option<String>,
    parent_run_id: Option<String>,
    started_by: Option<String>,
}

impl<'a> RunBuilder<'a> {
    pub fn new(workflow: &'a CompiledWorkflow, trigger: Trigger) -> RunBuilder<'a> {
        RunBuilder {
            workflow,
            trigger,
            idempotency_key: None,
            parent_run_id: None,
            started_by: None,
        }
    }

    /// The event that started the run (a message, an emit): it is no answer to the run's own
    /// `wait_for`, so a flow that starts on a text and then waits for a reply waits for the
    /// next one.
    pub fn started_by(mut self, event_id: &str) -> Self {
        self.started_by = Some(event_id.to_owned());
        self
    }

    /// A second start with the same key (of the same workflow) is the first run again.
    pub fn idempotency_key(mut self, key: Option<String>) -> Self {
        self.idempotency_key = key;
        self
    }

    /// The run that `call`ed this one, woken when it ends.
    pub fn parent(mut self, run_id: String) -> Self {
        self.parent_run_id = Some(run_id);
        self
    }

    /// The run's record; `templates` render its labels.
    pub fn build(self, templates: &Templates, now: Millis) -> NewRun {
        let wf = self.workflow;
        let id = super::new_id();
        let trigger_kind = self.trigger.kind();
        let mut labels = labels(templates, wf, &self.trigger);
        let mut context = run_context(self.trigger, &id, &wf.id, &labels, now);
        if wf.conversation.is_some() {
            conversation_context(&wf.id, &mut context, &mut labels, now);
        }
        NewRun {
            id,
            workflow_id: wf.id.clone(),
            version: wf.hash.clone(),
            trigger_kind,
            idempotency_key: self.idempotency_key,
            parent_run_id: self.parent_run_id,
            cursor: {
                let mut cursor = Cursor::at(
                    wf.program
                        .entry
                        .map(|i| wf.program.nodes[i].step.id.clone()),
                );
                cursor.consumed.extend(self.started_by);
                cursor.to_value()
            },
            context,
            labels,
            created_at: now,
            queued: None,
        }
    }
}

/// The label that finds a person's open conversation: `<channel>:<address>`.
// Migration 0007 indexes this label by name (`Dialect::CONVERSATION_KEY`).
pub(crate) const CONVERSATION_LABEL: &str = "conversation";

/// A person's conversation key on a channel, the value of [`CONVERSATION_LABEL`]. Channel
/// names have no `:`, so the first one splits it back.
pub(crate) fn conversation_key(channel: &str, address: &str) -> String {
    format!("{channel}:{address}")
}

/// What a conversation's run knows besides a workflow's: `conversation` (its channel, the
/// person's address, the turns so far) and `slots`. A message that started it is its first
/// turn; a workflow that starts one names the channel and address as `input.channel` and
/// `input.to`.
fn conversation_context(id: &str, context: &mut Value, labels: &mut Value, now: Millis) {
    let text = |p: &str| {
        context
            .pointer(p)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (channel, address, first) = match text("/message/channel") {
        Some(channel) => (Some(channel), text("/message/from"), text("/message/text")),
        None => (text("/input/channel"), text("/input/to"), None),
    };
    let mut turns = Vec::new();
    if let Some(t) = &first {
        turns.push(crate::engine::steps::conversation::turn(
            "user", t, "start", now,
        ));
    }
    if let (Some(ch), Some(addr), Some(l)) = (&channel, &address, labels.as_object_mut()) {
        l.insert(CONVERSATION_LABEL.into(), json!(conversation_key(ch, addr)));
    }
    if let Some(obj) = context.as_object_mut() {
        obj.insert(
            "conversation".into(),
            json!({"id": id, "channel": channel, "address": address, "started_at": rfc3339(now), "last": first, "turns": turns}),
        );
        obj.insert("slots".into(), json!({}));
        if let Some(run) = obj.get_mut("run").and_then(Value::as_object_mut) {
            run.insert("labels".into(), labels.clone());
        }
    }
}

/// A workflow's `labels`, rendered against what started the run. A label that does not
/// render is left out (and logged): a label is for finding runs, and must not stop one.
fn labels(templates: &Templates, wf: &CompiledWorkflow, trigger: &Trigger) -> Value {
    if wf.workflow.labels.is_empty() {
        return json!({});
    }
    let ctx = crate::templates::context(&trigger.clone().into_context());
    let mut out = serde_json::Map::new();
    for (name, template) in &wf.workflow.labels {
        match templates.render_str(template.as_str(), &ctx) {
            Ok(v) => {
                out.insert(name.clone(), Value::String(v));
            }
            Err(e) => {
                tracing::warn!(workflow = %wf.id, label = %name, error = %e, "a run label did not render; the run has no such label")
            }
        }
    }
    Value::Object(out)
}

/// Runs of the workflows an event starts (those whose `event` trigger names it and whose
/// filter passes).
pub(crate) fn subscriber_runs(
    registry: &Registry,
    event: &NewEvent,
    source_run: Option<&str>,
    now: Millis,
) -> Vec<NewRun> {
    let mut runs = Vec::new();
    let event_value = json!({"name": event.name, "key": event.key, "data": event.data, "source_run_id": source_run});
    for sub in registry
        .events
        .get(&event.name)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let crate::definitions::model::Trigger::Event(t) =
            &sub.workflow.workflow.triggers[sub.trigger]
        else {
            continue;
        };
        if let Some(filter) = &t.filter {
            let ctx = crate::templates::context(&json!({"event": event_value}));
            match registry.templates.is_true(filter.as_str(), &ctx) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(workflow = %sub.workflow.id, event = %event.name, error = %e, "event filter failed; the workflow was not started");
                    continue;
                }
            }
        }
        let trigger = Trigger::Event {
            name: event.name.clone(),
            key: event.key.clone(),
            data: event.data.clone(),
            source_run_id: source_run.map(str::to_owned),
        };
        // One event starts a subscriber once, even if it is recorded twice; a drip campaign
        // that does not `reenrol` enrolls the contact its events are keyed by once, ever.
        let key = match (&sub.workflow.campaign, &event.key) {
            (Some(c), Some(k)) if !c.reenrol => format!("campaign:{k}"),
            _ => format!("event:{}", event.id),
        };
        runs.push(
            RunBuilder::new(&sub.workflow, trigger)
                .idempotency_key(Some(key))
                .started_by(&event.id)
                .build(&registry.templates, now),
        );
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_trigger_gives_input() {
        let triggers = [
            Trigger::Webhook {
                method: "POST".into(),
                path: "/x".into(),
                body: json!({"a": 1}),
                headers: Map::new(),
                query: Map::new(),
                params: Map::new(),
            },
            Trigger::Event {
                name: "e".into(),
                key: None,
                data: json!({"a": 1}),
                source_run_id: None,
            },
            Trigger::Cron {
                schedule: "* * * * *".into(),
                timezone: "UTC".into(),
                slot: 0,
                input: json!({"a": 1}),
            },
            Trigger::Call {
                parent_run_id: "p".into(),
                input: json!({"a": 1}),
            },
            Trigger::Manual {
                input: json!({"a": 1}),
            },
        ];
        for t in triggers {
            let kind = t.kind().as_str();
            let ctx = run_context(t, "r", "wf", &json!({}), 0);
            assert_eq!(ctx["input"], json!({"a": 1}), "{kind}");
            assert_eq!(ctx["trigger"]["kind"], kind);
            for name in ["run", "vars", "steps", "contact"] {
                assert!(ctx.get(name).is_some(), "{kind} lacks {name}");
            }
        }
        let ctx = run_context(
            Trigger::Message {
                channel: "sms".into(),
                from: "+13035550123".into(),
                text: "hi".into(),
                id: None,
            },
            "r",
            "wf",
            &json!({}),
            0,
        );
        assert_eq!(ctx["input"]["text"], "hi");
        assert_eq!(ctx["message"]["from"], "+13035550123");
    }
}
