//! Row decoding shared by both backends. The two schemas use the same column names and types
//! (text for ids and JSON, 64-bit integers for times), so one macro per record type serves
//! `SqliteRow` and `PgRow` alike.

use serde_json::Value;

use super::{Result, StoreError};

pub(super) fn json(text: Option<String>, column: &str) -> Result<Option<Value>> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
    })
    .transpose()
}

pub(super) fn json_required(text: String, column: &str) -> Result<Value> {
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

pub(super) fn to_text(v: &Value) -> String {
    serde_json::to_string(v).expect("JSON values always serialize")
}

/// A retry policy as stored in the outbox's `retry` column.
pub(super) fn retry_text(r: &Option<super::RetryPolicy>) -> Option<String> {
    r.as_ref()
        .map(|p| serde_json::to_string(p).expect("a retry policy always serializes"))
}

// Column lists as macros, so queries can be assembled with `concat!` and stay `&'static str`.
macro_rules! run_columns {
    () => {
        "id, workflow_id, version, status, trigger_kind, idempotency_key, cursor, context, due_at, wait_event, wait_key, lease_owner, attempts, contact_id, parent_run_id, response, error, labels, created_at, updated_at, finished_at"
    };
}

macro_rules! outbox_columns {
    () => {
        "id, run_id, workflow_id, step_id, channel, recipient, sender, subject, body, html, headers, idempotency_key, status, attempts, max_attempts, next_attempt_at, provider_id, last_error, category, retry, created_at, sent_at"
    };
}

macro_rules! contact_columns {
    () => {
        "id, email, phone, first_name, last_name, status, timezone, attributes, created_at, updated_at"
    };
}

macro_rules! decode_run {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        let status: String = row.try_get("status")?;
        $crate::store::RunRecord {
            id: row.try_get("id")?,
            workflow_id: row.try_get("workflow_id")?,
            version: row.try_get("version")?,
            status: $crate::store::RunStatus::parse(&status).ok_or_else(|| {
                $crate::store::StoreError::Corrupt(format!("run status `{status}`"))
            })?,
            trigger_kind: row.try_get("trigger_kind")?,
            idempotency_key: row.try_get("idempotency_key")?,
            cursor: $crate::store::rows::json_required(row.try_get("cursor")?, "cursor")?,
            context: $crate::store::rows::json_required(row.try_get("context")?, "context")?,
            due_at: row.try_get("due_at")?,
            wait_event: row.try_get("wait_event")?,
            wait_key: row.try_get("wait_key")?,
            lease_owner: row.try_get("lease_owner")?,
            attempts: row.try_get("attempts")?,
            contact_id: row.try_get("contact_id")?,
            parent_run_id: row.try_get("parent_run_id")?,
            response: $crate::store::rows::json(row.try_get("response")?, "response")?,
            error: row.try_get("error")?,
            labels: $crate::store::rows::json_required(row.try_get("labels")?, "labels")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            finished_at: row.try_get("finished_at")?,
        }
    }};
}

macro_rules! decode_outbox {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        let status: String = row.try_get("status")?;
        $crate::store::OutboxRecord {
            id: row.try_get("id")?,
            run_id: row.try_get("run_id")?,
            workflow_id: row.try_get("workflow_id")?,
            step_id: row.try_get("step_id")?,
            channel: row.try_get("channel")?,
            recipient: row.try_get("recipient")?,
            sender: row.try_get("sender")?,
            subject: row.try_get("subject")?,
            body: row.try_get("body")?,
            html: row.try_get("html")?,
            headers: $crate::store::rows::json_required(row.try_get("headers")?, "headers")?,
            idempotency_key: row.try_get("idempotency_key")?,
            status: $crate::store::OutboxStatus::parse(&status).ok_or_else(|| {
                $crate::store::StoreError::Corrupt(format!("outbox status `{status}`"))
            })?,
            attempts: row.try_get("attempts")?,
            max_attempts: row.try_get("max_attempts")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            provider_id: row.try_get("provider_id")?,
            last_error: row.try_get("last_error")?,
            category: {
                let c: String = row.try_get("category")?;
                $crate::store::MessageCategory::parse(&c).ok_or_else(|| {
                    $crate::store::StoreError::Corrupt(format!("outbox category `{c}`"))
                })?
            },
            retry: $crate::store::rows::json(row.try_get("retry")?, "retry")?
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| $crate::store::StoreError::Corrupt(format!("retry: {e}")))?,
            created_at: row.try_get("created_at")?,
            sent_at: row.try_get("sent_at")?,
        }
    }};
}

macro_rules! decode_contact {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        let attributes =
            match $crate::store::rows::json_required(row.try_get("attributes")?, "attributes")? {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            };
        $crate::store::Contact {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            phone: row.try_get("phone")?,
            first_name: row.try_get("first_name")?,
            last_name: row.try_get("last_name")?,
            status: row.try_get("status")?,
            timezone: row.try_get("timezone")?,
            attributes,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        }
    }};
}

macro_rules! decode_step {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        $crate::store::StepLogEntry {
            seq: row.try_get("seq")?,
            step_id: row.try_get("step_id")?,
            action: row.try_get("action")?,
            status: row.try_get("status")?,
            attempt: row.try_get("attempt")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            output: $crate::store::rows::json(row.try_get("output")?, "output")?,
            error: row.try_get("error")?,
            iteration: row.try_get("iteration")?,
        }
    }};
}

macro_rules! decode_event {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        $crate::store::EventRecord {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            key: row.try_get("key")?,
            data: $crate::store::rows::json_required(row.try_get("data")?, "data")?,
            source_run_id: row.try_get("source_run_id")?,
            created_at: row.try_get("created_at")?,
        }
    }};
}

macro_rules! decode_cron_fire {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        let outcome: String = row.try_get("outcome")?;
        $crate::store::CronFire {
            workflow_id: row.try_get("workflow_id")?,
            trigger_key: row.try_get("trigger_key")?,
            slot: row.try_get("slot")?,
            outcome: $crate::store::CronOutcome::parse(&outcome).ok_or_else(|| {
                $crate::store::StoreError::Corrupt(format!("cron outcome `{outcome}`"))
            })?,
            reason: row.try_get("reason")?,
            run_id: row.try_get("run_id")?,
            recorded_at: row.try_get("recorded_at")?,
        }
    }};
}

macro_rules! decode_definition {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        $crate::store::DefinitionVersion {
            hash: row.try_get("hash")?,
            id: row.try_get("id")?,
            kind: row.try_get("kind")?,
            source: row.try_get("source")?,
            document: $crate::store::rows::json_required(row.try_get("document")?, "document")?,
            first_seen_at: row.try_get("first_seen_at")?,
        }
    }};
}

pub(crate) use {
    contact_columns, decode_contact, decode_cron_fire, decode_definition, decode_event,
    decode_outbox, decode_run, decode_step, outbox_columns, run_columns,
};
