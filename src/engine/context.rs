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
use crate::store::Millis;

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

impl Trigger {
    /// The kind recorded with the run.
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Webhook { .. } => "webhook",
            Trigger::Event { .. } => "event",
            Trigger::Message { .. } => "message",
            Trigger::Cron { .. } => "cron",
            Trigger::Call { .. } => "call",
            Trigger::Manual { .. } => "manual",
        }
    }

    /// The names a run of this trigger starts with (before `run`, `vars`, `steps` and
    /// `contact`, which every run has).
    pub fn into_context(self) -> Value {
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
                let message = json!({"channel": channel, "from": from, "text": text, "id": id});
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
pub fn run_context(
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
            let kind = t.kind();
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
