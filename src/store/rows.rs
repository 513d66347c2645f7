//! Row decoding shared by both backends. The two schemas use the same column names and types
//! (text for ids and JSON, 64-bit integers for times), so a decoder reads a row through
//! [`RowView`], which any sqlx row of either backend is, and each record type is decoded once.

use serde_json::Value;

use super::{
    Contact, CronFire, CronOutcome, DefinitionVersion, EventRecord, MessageCategory, OutboxRecord,
    OutboxStatus, Result, RunRecord, RunStatus, StepLogEntry, StepStatus, StoreError, TriggerKind,
};

/// The column types the store reads, by column name.
pub(super) trait RowView {
    fn text(&self, column: &str) -> Result<String>;
    fn opt_text(&self, column: &str) -> Result<Option<String>>;
    fn int(&self, column: &str) -> Result<i64>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>>;
    fn flag(&self, column: &str) -> Result<bool>;
}

impl<R> RowView for R
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn text(&self, column: &str) -> Result<String> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64> {
        Ok(self.try_get(column)?)
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>> {
        Ok(self.try_get(column)?)
    }
    fn flag(&self, column: &str) -> Result<bool> {
        Ok(self.try_get(column)?)
    }
}

/// What turns a row into a record.
pub(super) type Decoder<T> = fn(&dyn RowView) -> Result<T>;

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
        "id, run_id, workflow_id, step_id, channel, recipient, sender, subject, body, html, headers, idempotency_key, status, attempts, max_attempts, next_attempt_at, provider_id, last_error, category, retry, approved_template, created_at, sent_at, delivery, delivery_error, delivery_at"
    };
}

macro_rules! contact_columns {
    () => {
        "id, email, phone, first_name, last_name, status, timezone, attributes, created_at, updated_at"
    };
}

pub(crate) use {contact_columns, outbox_columns, run_columns};

pub(super) fn run(row: &dyn RowView) -> Result<RunRecord> {
    let status = row.text("status")?;
    Ok(RunRecord {
        id: row.text("id")?,
        workflow_id: row.text("workflow_id")?,
        version: row.text("version")?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("run status `{status}`")))?,
        trigger_kind: {
            let kind = row.text("trigger_kind")?;
            TriggerKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("trigger kind `{kind}`")))?
        },
        idempotency_key: row.opt_text("idempotency_key")?,
        cursor: json_required(row.text("cursor")?, "cursor")?,
        context: json_required(row.text("context")?, "context")?,
        due_at: row.opt_int("due_at")?,
        wait_event: row.opt_text("wait_event")?,
        wait_key: row.opt_text("wait_key")?,
        lease_owner: row.opt_text("lease_owner")?,
        attempts: row.int("attempts")?,
        contact_id: row.opt_text("contact_id")?,
        parent_run_id: row.opt_text("parent_run_id")?,
        response: json(row.opt_text("response")?, "response")?,
        error: row.opt_text("error")?,
        labels: json_required(row.text("labels")?, "labels")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        finished_at: row.opt_int("finished_at")?,
    })
}

pub(super) fn outbox(row: &dyn RowView) -> Result<OutboxRecord> {
    let status = row.text("status")?;
    let category = row.text("category")?;
    Ok(OutboxRecord {
        id: row.text("id")?,
        run_id: row.opt_text("run_id")?,
        workflow_id: row.opt_text("workflow_id")?,
        step_id: row.opt_text("step_id")?,
        channel: row.text("channel")?,
        recipient: row.text("recipient")?,
        sender: row.opt_text("sender")?,
        subject: row.opt_text("subject")?,
        body: row.text("body")?,
        html: row.flag("html")?,
        headers: json_required(row.text("headers")?, "headers")?,
        idempotency_key: row.text("idempotency_key")?,
        status: OutboxStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("outbox status `{status}`")))?,
        attempts: row.int("attempts")?,
        max_attempts: row.int("max_attempts")?,
        next_attempt_at: row.opt_int("next_attempt_at")?,
        provider_id: row.opt_text("provider_id")?,
        last_error: row.opt_text("last_error")?,
        category: MessageCategory::parse(&category)
            .ok_or_else(|| StoreError::Corrupt(format!("outbox category `{category}`")))?,
        retry: json(row.opt_text("retry")?, "retry")?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("retry: {e}")))?,
        approved_template: json(row.opt_text("approved_template")?, "approved_template")?,
        created_at: row.int("created_at")?,
        sent_at: row.opt_int("sent_at")?,
        delivery: row.opt_text("delivery")?,
        delivery_error: row.opt_text("delivery_error")?,
        delivery_at: row.opt_int("delivery_at")?,
    })
}

pub(super) fn contact(row: &dyn RowView) -> Result<Contact> {
    let attributes = match json_required(row.text("attributes")?, "attributes")? {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    Ok(Contact {
        id: row.text("id")?,
        email: row.opt_text("email")?,
        phone: row.opt_text("phone")?,
        first_name: row.opt_text("first_name")?,
        last_name: row.opt_text("last_name")?,
        status: row.opt_text("status")?,
        timezone: row.opt_text("timezone")?,
        attributes,
        addresses: match row.opt_text("addresses")? {
            Some(text) => match json_required(text, "addresses")? {
                Value::Object(m) => m,
                _ => serde_json::Map::new(),
            },
            None => serde_json::Map::new(),
        },
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

pub(super) fn step(row: &dyn RowView) -> Result<StepLogEntry> {
    Ok(StepLogEntry {
        seq: row.int("seq")?,
        step_id: row.text("step_id")?,
        action: row.text("action")?,
        status: {
            let status = row.text("status")?;
            StepStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("step status `{status}`")))?
        },
        attempt: row.int("attempt")?,
        started_at: row.int("started_at")?,
        finished_at: row.int("finished_at")?,
        output: json(row.opt_text("output")?, "output")?,
        error: row.opt_text("error")?,
        iteration: row.opt_text("iteration")?,
    })
}

pub(super) fn event(row: &dyn RowView) -> Result<EventRecord> {
    Ok(EventRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        key: row.opt_text("key")?,
        data: json_required(row.text("data")?, "data")?,
        source_run_id: row.opt_text("source_run_id")?,
        created_at: row.int("created_at")?,
    })
}

pub(super) fn cron_fire(row: &dyn RowView) -> Result<CronFire> {
    let outcome = row.text("outcome")?;
    Ok(CronFire {
        workflow_id: row.text("workflow_id")?,
        trigger_key: row.text("trigger_key")?,
        slot: row.int("slot")?,
        outcome: CronOutcome::parse(&outcome)
            .ok_or_else(|| StoreError::Corrupt(format!("cron outcome `{outcome}`")))?,
        reason: row.opt_text("reason")?,
        run_id: row.opt_text("run_id")?,
        recorded_at: row.int("recorded_at")?,
    })
}

pub(super) fn definition(row: &dyn RowView) -> Result<DefinitionVersion> {
    Ok(DefinitionVersion {
        hash: row.text("hash")?,
        id: row.text("id")?,
        kind: row.text("kind")?,
        source: row.text("source")?,
        document: json_required(row.text("document")?, "document")?,
        first_seen_at: row.int("first_seen_at")?,
    })
}

/// A `(status, n)` count row.
pub(super) fn count(row: &dyn RowView) -> Result<(Option<String>, i64)> {
    Ok((row.opt_text("status")?, row.int("n")?))
}
