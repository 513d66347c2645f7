//! What the admin API asks of the store beyond the engine's own needs: finding and editing
//! contacts, looking into and steering the outbox, cancelling runs in bulk, counting, and
//! deleting old history. A trait of its own, which [`super::Store`] requires, so the engine's
//! queries and the operator's stay apart.

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use super::{Contact, Millis, OutboxRecord, OutboxStatus, Result, RunStatus};

/// Which contacts to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct ContactFilter {
    /// A piece of the e-mail, phone or name, any case.
    pub query: Option<String>,
    pub status: Option<String>,
    /// Only contacts created before this (paging).
    pub created_before: Option<Millis>,
    pub limit: i64,
}

/// Changes to a contact. `None` leaves a field as it is; `Some(None)` clears it. Attributes
/// are merged; an attribute set to null is removed.
#[derive(Debug, Clone, Default)]
pub struct ContactPatch {
    pub email: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub status: Option<Option<String>>,
    pub timezone: Option<Option<String>>,
    pub attributes: serde_json::Map<String, Value>,
}

impl ContactPatch {
    /// The contact with the changes made.
    pub fn apply(&self, mut c: Contact, now: Millis) -> Contact {
        let set = |field: &mut Option<String>, v: &Option<Option<String>>| {
            if let Some(v) = v {
                field.clone_from(v);
            }
        };
        set(&mut c.email, &self.email);
        set(&mut c.phone, &self.phone);
        set(&mut c.first_name, &self.first_name);
        set(&mut c.last_name, &self.last_name);
        set(&mut c.status, &self.status);
        set(&mut c.timezone, &self.timezone);
        for (k, v) in &self.attributes {
            if v.is_null() {
                c.attributes.remove(k);
            } else {
                c.attributes.insert(k.clone(), v.clone());
            }
        }
        c.updated_at = now;
        c
    }
}

/// Which messages to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct OutboxFilter {
    pub status: Option<OutboxStatus>,
    pub channel: Option<String>,
    pub run_id: Option<String>,
    pub created_before: Option<Millis>,
    pub limit: i64,
}

/// Runs to cancel at once. At least one of the filters is set; only unfinished runs match.
#[derive(Debug, Clone, Default)]
pub struct RunSelection {
    pub workflow_id: Option<String>,
    pub contact_id: Option<String>,
    /// A label as (name, value).
    pub label: Option<(String, String)>,
    pub status: Option<RunStatus>,
}

impl RunSelection {
    pub fn is_empty(&self) -> bool {
        self.workflow_id.is_none()
            && self.contact_id.is_none()
            && self.label.is_none()
            && self.status.is_none()
    }
}

/// What an operator's change to one message came to.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageChange {
    Done(Box<OutboxRecord>),
    NotFound,
    /// The message is not in a state that allows the change; its current status.
    WrongState(OutboxStatus),
}

/// An address a provider said not to send to any more on one channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suppression {
    pub channel: String,
    pub address: String,
    /// `bounced`, `complained` or `unsubscribed`.
    pub reason: String,
    /// The provider's words, when it gave any.
    pub detail: Option<String>,
    pub created_at: Millis,
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Purged {
    pub runs: u64,
    pub steps: u64,
    pub messages: u64,
    pub events: u64,
}

#[async_trait]
pub trait Admin: Send + Sync {
    async fn list_contacts(&self, filter: &ContactFilter) -> Result<Vec<Contact>>;
    /// Applies `patch` to the contact. `None` when there is no such contact;
    /// [`super::StoreError::Conflict`] when another contact has the e-mail or phone.
    async fn update_contact(
        &self,
        id: &str,
        patch: &ContactPatch,
        now: Millis,
    ) -> Result<Option<Contact>>;
    /// Deletes a contact (an erasure request); runs that named it no longer do. False when
    /// there was no such contact.
    async fn delete_contact(&self, id: &str) -> Result<bool>;
    async fn count_contacts(&self) -> Result<Vec<(Option<String>, i64)>>;

    async fn message(&self, id: &str) -> Result<Option<OutboxRecord>>;
    async fn list_messages(&self, filter: &OutboxFilter) -> Result<Vec<OutboxRecord>>;
    /// Sends a `failed` message again: pending, due now, its attempts counted afresh.
    async fn retry_message(&self, id: &str, now: Millis) -> Result<MessageChange>;
    /// Withdraws a `pending` message; one being delivered cannot be recalled.
    async fn cancel_message(&self, id: &str, now: Millis) -> Result<MessageChange>;

    /// Suppressed addresses, newest first, on one channel or all.
    async fn list_suppressions(
        &self,
        channel: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Suppression>>;
    /// Lets `address` be sent to on `channel` again (the person re-subscribed with the
    /// provider, say). False when it was not suppressed there.
    async fn lift_suppression(&self, channel: &str, address: &str) -> Result<bool>;

    /// Cancels the unfinished runs `selection` matches, and their pending messages, waking
    /// parents that wait on them. With `dry_run`, only counts them.
    async fn cancel_runs(
        &self,
        selection: &RunSelection,
        now: Millis,
        dry_run: bool,
    ) -> Result<u64>;

    /// Deletes, in batches of `batch`, finished runs (with their step logs and messages)
    /// that finished before `runs_before`, and events created before `events_before` that no
    /// waiting run could still consume. A run a waiting parent still needs is kept.
    async fn purge(
        &self,
        runs_before: Option<Millis>,
        events_before: Option<Millis>,
        batch: i64,
    ) -> Result<Purged>;
}
