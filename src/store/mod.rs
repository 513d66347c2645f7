//! The store: the source of truth for runs, their steps, the outbox, contacts, events, cron
//! slots and definition versions.
//!
//! One [`Store`] trait (with [`Admin`], the operator's part), two backends:
//! [`sqlite::SqliteStore`] (the embedded default, a file in WAL mode) and
//! [`postgres::PgStore`] (for several Herald processes sharing one database). Both run the
//! same integration tests. Queries are written at runtime, so building Herald needs no
//! database.
//!
//! Times are unix milliseconds from the engine's clock, passed in by the caller, so a virtual
//! clock governs timers and leases in tests.
//!
//! # Where things go
//!
//! - **SQL is written once**, in `sql/`: one module per area (`runs`, `commit`, `outbox`,
//!   `events`, `contacts`, `cron`, `definitions`, `retention`), each holding its statements
//!   and the operations that run them, generic over the backend. Statements use `$n`
//!   placeholders, which both drivers accept; where the dialects genuinely differ (a list of
//!   ids, a label looked up in JSON, row locks, how a claim picks its rows) the statement asks
//!   `sql::Dialect` for that one fragment rather than being written twice.
//! - **Rows are decoded once**, in `rows`, by one function per record type.
//! - **A backend holds only what differs**: its connections and transactions, claiming
//!   (`BEGIN IMMEDIATE` on SQLite, `FOR UPDATE SKIP LOCKED` on PostgreSQL), how a segment's
//!   commit is batched (SQLite's group commit in `group_commit`, PostgreSQL's one-statement
//!   segment), and how a contact upsert is kept safe against concurrent writers. This is
//!   `sql::Backend`, implemented by `sqlite.rs` and `postgres.rs`.
//! - **[`Store`] and [`Admin`] are implemented once**, for every backend, in `sql/traits.rs`:
//!   each method is one line calling its area's operation.
//!
//! A new table: a migration in both `migrations/sqlite` and `migrations/postgres` (the two
//! schemas keep the same columns: JSON as text, times as 64-bit integers), its record type
//! here, its decoder in `rows`, its statements and operations in a new area module under
//! `sql/`, and the methods in [`Store`] (or [`Admin`]) with their one-line implementations
//! in `sql/traits.rs`. A new statement on an existing table goes in that table's area module.
//! Nothing in `sqlite.rs` or `postgres.rs` changes unless the new work is claimed, locked or
//! batched differently.
//!
//! [`Store`] stays one object-safe trait rather than a set of supertraits (runs, outbox,
//! events, ...): callers hold it as `Arc<dyn Store>`, and wrappers outside this module (a
//! store that fails on demand, in the tests) implement it method by method, which they could
//! not do for methods moved to supertraits. The split into areas is on the implementation
//! side instead, where a new table is added.

pub mod admin;
pub mod alerting;
pub mod campaigns;
mod group_commit;
pub mod postgres;
mod rows;
mod sql;
pub mod sqlite;
pub mod tally;

pub use admin::{
    Admin, ContactFilter, ContactPatch, MessageChange, OutboxFilter, Purged, RunSelection,
};

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

pub use crate::definitions::model::common::RetryPolicy;
pub use crate::definitions::model::step::MessageCategory;

/// Unix time in milliseconds.
pub type Millis = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The run is no longer held by this worker: its lease expired and another worker took it,
    /// or it was cancelled. The commit was rolled back.
    #[error("the run is no longer held by this worker (lease lost or run cancelled)")]
    LeaseLost,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Config(String),
    /// The change would break a uniqueness rule (another contact has that e-mail, say).
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Ready for a worker.
    Pending,
    /// Held by a worker under a lease.
    Running,
    /// Waiting for a timer, an event, a reply or a child run.
    Waiting,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// A run to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub id: String,
    pub workflow_id: String,
    pub version: String,
    pub trigger_kind: TriggerKind,
    pub idempotency_key: Option<String>,
    pub parent_run_id: Option<String>,
    pub cursor: Value,
    pub context: Value,
    /// Labels rendered from the workflow's `labels` when the run started (a JSON object).
    pub labels: Value,
    pub created_at: Millis,
    /// A conversation start queued behind the person's open conversation (`while_open:
    /// queue`), by its `channel:address`: stored waiting, with no time to wake, until
    /// [`Store::promote_queued_conversation`] lets it start.
    pub queued: Option<String>,
}

/// The wait of a run queued behind an open conversation.
pub const QUEUED_CONVERSATION: &str = "conversation.queued";

/// A queued conversation start, waiting for the person's open conversation to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedConversation {
    pub run_id: String,
    /// `channel:address`.
    pub key: String,
    pub created_at: Millis,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub workflow_id: String,
    pub version: String,
    pub status: RunStatus,
    pub trigger_kind: TriggerKind,
    pub idempotency_key: Option<String>,
    pub cursor: Value,
    pub context: Value,
    pub due_at: Option<Millis>,
    pub wait_event: Option<String>,
    pub wait_key: Option<String>,
    pub lease_owner: Option<String>,
    pub attempts: i64,
    pub contact_id: Option<String>,
    pub parent_run_id: Option<String>,
    pub response: Option<Value>,
    pub error: Option<String>,
    pub labels: Value,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
}

/// A run's state after a segment of execution.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    pub status: RunStatus,
    /// The definition version the run continues on (it changes when a run migrates).
    pub version: String,
    pub cursor: Value,
    pub context: Value,
    pub due_at: Option<Millis>,
    pub wait_event: Option<String>,
    pub wait_key: Option<String>,
    pub attempts: i64,
    pub contact_id: Option<String>,
    pub response: Option<Value>,
    pub error: Option<String>,
    pub finished_at: Option<Millis>,
}

/// How a commit writes its run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunWrite {
    /// Create the run with this state (a run started and advanced in one go). Fails with
    /// [`CommitOutcome::Duplicate`] if its idempotency key was already used. With an `owner`
    /// and a `running` state, the run is created leased to that worker.
    Insert {
        run: Box<NewRun>,
        owner: Option<String>,
    },
    /// Update a run this worker holds. Fails with [`StoreError::LeaseLost`] if it does not
    /// hold it any more.
    Update { run_id: String, owner: String },
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    Webhook,
    Event,
    Message,
    Cron,
    /// Another run's `call` step.
    Call,
    /// The operations API or `herald run`.
    Manual,
}

impl TriggerKind {
    pub const ALL: [TriggerKind; 6] = [
        TriggerKind::Webhook,
        TriggerKind::Event,
        TriggerKind::Message,
        TriggerKind::Cron,
        TriggerKind::Call,
        TriggerKind::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Webhook => "webhook",
            TriggerKind::Event => "event",
            TriggerKind::Message => "message",
            TriggerKind::Cron => "cron",
            TriggerKind::Call => "call",
            TriggerKind::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<TriggerKind> {
        TriggerKind::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for TriggerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a step-log line records about its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// The step finished; its output is in the line.
    Completed,
    /// The step made the run wait (a timer, an event, a reply, a child run).
    Waiting,
    /// The step failed and will be tried again under its `retry`.
    Retrying,
    /// The step failed for good.
    Failed,
}

impl StepStatus {
    pub const ALL: [StepStatus; 4] = [
        StepStatus::Completed,
        StepStatus::Waiting,
        StepStatus::Retrying,
        StepStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Completed => "completed",
            StepStatus::Waiting => "waiting",
            StepStatus::Retrying => "retrying",
            StepStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<StepStatus> {
        StepStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of a run's step log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepLogEntry {
    /// The entry's position in the run's log, assigned by the engine (1, 2, ...).
    pub seq: i64,
    pub step_id: String,
    pub action: String,
    pub status: StepStatus,
    pub attempt: i64,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub output: Option<Value>,
    pub error: Option<String>,
    /// The iteration of the enclosing `for_each` loops, outermost first (`2`, `0.3`); `None`
    /// outside loops.
    pub iteration: Option<String>,
}

/// A message to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOutbox {
    pub id: String,
    pub run_id: Option<String>,
    pub workflow_id: Option<String>,
    pub step_id: Option<String>,
    pub channel: String,
    pub recipient: String,
    pub sender: Option<String>,
    pub subject: Option<String>,
    pub body: String,
    pub html: bool,
    pub headers: Value,
    pub idempotency_key: String,
    pub max_attempts: i64,
    /// What suppression applies to the message (see [`MessageCategory`]).
    pub category: MessageCategory,
    /// The send step's retry policy; the outbox default when `None`.
    pub retry: Option<RetryPolicy>,
    /// A provider's approved template to send instead of `body`, as JSON (see
    /// `channels::ApprovedTemplate`).
    pub approved_template: Option<Value>,
    pub created_at: Millis,
    /// When it may first be delivered: `created_at`, or the end of the recipient's quiet
    /// hours.
    pub due_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    Pending,
    Sending,
    Sent,
    Failed,
    /// Not delivered: the recipient opted out, unsubscribed, bounced or complained after the
    /// message was queued.
    Suppressed,
    /// Not delivered: an operator cancelled it.
    Cancelled,
}

impl OutboxStatus {
    pub const ALL: [OutboxStatus; 6] = [
        OutboxStatus::Pending,
        OutboxStatus::Sending,
        OutboxStatus::Sent,
        OutboxStatus::Failed,
        OutboxStatus::Suppressed,
        OutboxStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Sending => "sending",
            OutboxStatus::Sent => "sent",
            OutboxStatus::Failed => "failed",
            OutboxStatus::Suppressed => "suppressed",
            OutboxStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<OutboxStatus> {
        OutboxStatus::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxRecord {
    pub id: String,
    pub run_id: Option<String>,
    pub workflow_id: Option<String>,
    pub step_id: Option<String>,
    pub channel: String,
    pub recipient: String,
    pub sender: Option<String>,
    pub subject: Option<String>,
    pub body: String,
    pub html: bool,
    pub headers: Value,
    pub idempotency_key: String,
    pub status: OutboxStatus,
    pub attempts: i64,
    pub max_attempts: i64,
    pub next_attempt_at: Option<Millis>,
    pub provider_id: Option<String>,
    pub last_error: Option<String>,
    pub category: MessageCategory,
    pub retry: Option<RetryPolicy>,
    pub approved_template: Option<Value>,
    pub created_at: Millis,
    pub sent_at: Option<Millis>,
    /// The provider's last word on the message after it was sent: `delivered`, `failed`,
    /// `bounced`, `complained`, `unsubscribed` (or `sent`, `deferred` on the way).
    pub delivery: Option<String>,
    pub delivery_error: Option<String>,
    pub delivery_at: Option<Millis>,
}

/// Which sent messages [`Store::sent_messages`] reads: what some recipients were sent on one
/// channel, in the order it was sent (`sent_at`, then `id`).
#[derive(Debug, Clone, Default)]
pub struct SentMessages {
    pub channel: String,
    /// Whose messages; a few hundred at most in one query.
    pub recipients: Vec<String>,
    /// Only those sent after this point, as `(sent_at, id)`, exclusive: `(t, "")` takes
    /// everything sent at `t` or later.
    pub after: (Millis, String),
    pub limit: i64,
    /// The newest `limit` of them rather than the oldest. Either way they come oldest first.
    pub newest: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    Sent {
        provider_id: Option<String>,
    },
    /// Try again at `next_attempt_at`.
    Retry {
        error: String,
        next_attempt_at: Millis,
    },
    Failed {
        error: String,
    },
    /// Not sent, for good: the recipient must not get it any more.
    Suppressed {
        reason: String,
    },
    /// Not attempted: put back until `until` (quiet hours began, or the channel's pace has
    /// no slot sooner). The claim's attempt is given back.
    Deferred {
        reason: String,
        until: Millis,
    },
    /// Failed for good on its channel; `next` takes it on the channel's fallback.
    FellBack {
        error: String,
        next: Box<NewOutbox>,
    },
}

/// A contact as stored.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Contact {
    pub id: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub status: Option<String>,
    pub timezone: Option<String>,
    pub attributes: serde_json::Map<String, Value>,
    /// Addresses on channels that use neither e-mail nor phone, by channel name: a Telegram
    /// chat id, a web chat visitor.
    #[serde(default)]
    pub addresses: serde_json::Map<String, Value>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Fields to set on a contact. `None` leaves a field as it is; attributes are merged.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContactUpsert {
    /// The id to give the contact if it is new.
    pub new_id: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub status: Option<String>,
    pub timezone: Option<String>,
    pub attributes: serde_json::Map<String, Value>,
    /// Channel addresses to link (`Some`) or unlink (`None`), by channel name. Linking an
    /// address another contact holds moves it here.
    pub addresses: Vec<(String, Option<String>)>,
    pub now: Millis,
    /// Lists and tags to add the contact to (`member`) or take it off.
    pub memberships: Vec<campaigns::Membership>,
}

impl ContactUpsert {
    /// Applies the upsert to an existing contact (or creates one), as the store does.
    pub fn apply(&self, existing: Option<Contact>) -> Contact {
        let mut c = existing.unwrap_or_else(|| Contact {
            id: self.new_id.clone(),
            email: None,
            phone: None,
            first_name: None,
            last_name: None,
            status: None,
            timezone: None,
            attributes: Default::default(),
            addresses: Default::default(),
            created_at: self.now,
            updated_at: self.now,
        });
        let set = |field: &mut Option<String>, v: &Option<String>| {
            if v.is_some() {
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
            c.attributes.insert(k.clone(), v.clone());
        }
        for (channel, address) in &self.addresses {
            match address {
                Some(a) => c
                    .addresses
                    .insert(channel.clone(), Value::String(a.clone())),
                None => c.addresses.remove(channel),
            };
        }
        c.updated_at = self.now;
        c
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: String,
    pub name: String,
    pub key: Option<String>,
    pub data: Value,
    pub source_run_id: Option<String>,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    pub id: String,
    pub name: String,
    pub key: Option<String>,
    pub data: Value,
    pub source_run_id: Option<String>,
    pub created_at: Millis,
}

/// Everything one segment of a run changed, written in one transaction: either all of it is
/// stored or none of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub run: RunWrite,
    pub state: RunState,
    pub now: Millis,
    pub steps: Vec<StepLogEntry>,
    pub outbox: Vec<NewOutbox>,
    pub events: Vec<NewEvent>,
    /// Runs started by this segment (`emit` subscribers, `call` children).
    pub new_runs: Vec<NewRun>,
    pub contacts: Vec<ContactUpsert>,
    /// Runs to wake now if they are waiting (a parent whose child just finished).
    pub wake_runs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommitOutcome {
    Committed {
        /// The contacts as stored after the upserts, in order.
        contacts: Vec<Contact>,
    },
    /// An inserted run's idempotency key was taken: nothing was written. The existing run's id.
    Duplicate { existing_run_id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CronOutcome {
    Fired,
    Skipped,
    Missed,
}

impl CronOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CronOutcome::Fired => "fired",
            CronOutcome::Skipped => "skipped",
            CronOutcome::Missed => "missed",
        }
    }

    pub fn parse(s: &str) -> Option<CronOutcome> {
        [
            CronOutcome::Fired,
            CronOutcome::Skipped,
            CronOutcome::Missed,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CronFire {
    pub workflow_id: String,
    pub trigger_key: String,
    pub slot: Millis,
    pub outcome: CronOutcome,
    pub reason: Option<String>,
    pub run_id: Option<String>,
    pub recorded_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DefinitionVersion {
    pub hash: String,
    pub id: String,
    pub kind: String,
    pub source: String,
    pub document: Value,
    pub first_seen_at: Millis,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    pub workflow_id: Option<String>,
    pub status: Option<RunStatus>,
    /// Only runs created before this (for paging back through history).
    pub created_before: Option<Millis>,
    /// Only runs with this label, as (name, value).
    pub label: Option<(String, String)>,
    /// Only runs about this contact.
    pub contact_id: Option<String>,
    pub limit: i64,
}

#[async_trait]
pub trait Store: Admin + Send + Sync + std::fmt::Debug {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Checks the database answers.
    async fn ping(&self) -> Result<()>;

    // Definitions.
    async fn save_definition(&self, version: &DefinitionVersion) -> Result<()>;
    async fn definition(&self, hash: &str) -> Result<Option<DefinitionVersion>>;

    // Runs.
    /// Writes one segment atomically (see [`Commit`]).
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome>;
    async fn run(&self, id: &str) -> Result<Option<RunRecord>>;
    async fn run_by_idempotency_key(
        &self,
        workflow_id: &str,
        key: &str,
    ) -> Result<Option<RunRecord>>;
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>>;
    async fn step_log(&self, run_id: &str) -> Result<Vec<StepLogEntry>>;
    /// The unfinished run of conversation `workflow_id` for `key` (`channel:address`), if any.
    async fn open_conversation(&self, workflow_id: &str, key: &str) -> Result<Option<RunRecord>>;
    /// Claims up to `limit` due runs for `owner` until `now + lease_ms`, oldest due first.
    /// Several processes may call this at once; each due run goes to exactly one of them.
    async fn claim_runs(
        &self,
        owner: &str,
        now: Millis,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<RunRecord>>;
    /// Extends the lease on runs `owner` still holds; returns the ids it no longer holds.
    async fn renew_leases(
        &self,
        owner: &str,
        run_ids: &[String],
        until: Millis,
    ) -> Result<Vec<String>>;
    /// Makes every run `owner` holds due now, for another worker (on shutdown).
    async fn release_runs(&self, owner: &str, now: Millis) -> Result<u64>;
    /// The earliest `due_at` of any unfinished run.
    async fn next_due_at(&self) -> Result<Option<Millis>>;
    /// Cancels an unfinished run. False if it was already finished or does not exist.
    async fn cancel_run(&self, id: &str, now: Millis) -> Result<bool>;
    /// Makes a failed run pending again, at the step that failed. False if it is not failed.
    async fn retry_run(&self, id: &str, now: Millis) -> Result<bool>;
    async fn count_runs(&self) -> Result<Vec<(RunStatus, i64)>>;

    // Events.
    /// Stores events (inbound messages, or emits from outside a run), the runs they start,
    /// the contact changes they make (an opt-out) and the messages they answer with at once
    /// (the reply to a HELP), in one transaction. Returns the contacts as stored.
    async fn insert_events(
        &self,
        events: &[NewEvent],
        new_runs: &[NewRun],
        contacts: &[ContactUpsert],
        outbox: &[NewOutbox],
    ) -> Result<Vec<Contact>>;
    /// Makes runs waiting for `(name, key)` due now. Call it after the event is committed.
    async fn wake_waiting(&self, name: &str, key: &str, now: Millis) -> Result<u64>;
    /// The oldest matching event created at or after `since` whose id is not in `exclude`.
    async fn find_event(
        &self,
        name: &str,
        key: &str,
        since: Millis,
        exclude: &[String],
    ) -> Result<Option<EventRecord>>;

    // Contacts.
    async fn contact(&self, id: &str) -> Result<Option<Contact>>;
    /// The contact that holds `address` on `channel` (see [`Contact::addresses`]).
    async fn contact_by_address(&self, channel: &str, address: &str) -> Result<Option<Contact>>;
    async fn find_contact(
        &self,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Result<Option<Contact>>;
    /// The contacts with these ids that exist, in one read: a batch of claimed runs loads its
    /// recipients together.
    async fn contacts(&self, ids: &[String]) -> Result<Vec<Contact>>;
    /// The contacts with any of these e-mails or phones, in one read (see [`Store::find_contact`]).
    async fn find_contacts(&self, emails: &[String], phones: &[String]) -> Result<Vec<Contact>>;
    /// In one read: why `address` is suppressed on `channel`, if it is, and the contact with
    /// this e-mail, else the one with this phone.
    async fn recipient(
        &self,
        channel: &str,
        address: &str,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Result<(Option<String>, Option<Contact>)>;

    // Outbox.
    async fn claim_outbox(
        &self,
        owner: &str,
        now: Millis,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRecord>>;
    /// Records a delivery attempt's outcome, if `owner` still holds the message.
    async fn finish_delivery(
        &self,
        id: &str,
        owner: &str,
        outcome: DeliveryOutcome,
        now: Millis,
    ) -> Result<bool>;
    /// As [`Store::finish_delivery`], for several messages in one transaction (a dispatcher's
    /// batch): whether each was recorded, in order.
    async fn finish_deliveries(
        &self,
        owner: &str,
        outcomes: Vec<(String, DeliveryOutcome)>,
        now: Millis,
    ) -> Result<Vec<bool>>;
    async fn outbox_for_run(&self, run_id: &str) -> Result<Vec<OutboxRecord>>;
    /// Messages sent on a channel to some recipients, in the order they were sent: what a web
    /// chat visitor missed while their browser was away, or what another process delivered.
    async fn sent_messages(&self, query: &SentMessages) -> Result<Vec<OutboxRecord>>;
    /// Records that `address` must get nothing more on `channel` (`reason`: `bounced`,
    /// `complained` or `unsubscribed`), as its provider reported.
    async fn suppress_address(
        &self,
        channel: &str,
        address: &str,
        reason: &str,
        detail: Option<&str>,
        now: Millis,
    ) -> Result<()>;
    /// How many messages of `category` went, or are queued, to `recipient` on `channel` since
    /// `since` (what a frequency cap counts).
    async fn count_recent_messages(
        &self,
        channel: &str,
        recipient: &str,
        category: &str,
        since: Millis,
    ) -> Result<i64>;
    /// Why `address` is suppressed on `channel`, if it is.
    async fn address_suppression(&self, channel: &str, address: &str) -> Result<Option<String>>;
    /// Every suppression of one of `addresses` on one of `channels`, in one read:
    /// `(channel, address, reason)`.
    async fn address_suppressions(
        &self,
        channels: &[String],
        addresses: &[String],
    ) -> Result<Vec<(String, String, String)>>;
    /// Records a provider's report on the message it knows as `provider_id` on `channel`,
    /// unless the message already has a later one (a `sent` arriving after `delivered` does
    /// not undo it). Returns the message as it now stands, or `None` when no message has that
    /// id or the report is older than what is recorded.
    async fn record_delivery(
        &self,
        channel: &str,
        provider_id: &str,
        delivery: &str,
        error: Option<&str>,
        now: Millis,
    ) -> Result<Option<OutboxRecord>>;
    async fn count_outbox(&self) -> Result<Vec<(OutboxStatus, i64)>>;
    async fn next_outbox_at(&self) -> Result<Option<Millis>>;

    // Cron.
    async fn cron_checked_until(
        &self,
        workflow_id: &str,
        trigger_key: &str,
    ) -> Result<Option<Millis>>;
    /// Moves the checked-until mark forward (never back).
    async fn set_cron_checked_until(
        &self,
        workflow_id: &str,
        trigger_key: &str,
        until: Millis,
    ) -> Result<()>;
    /// Records a slot's outcome, starting `run` with it when it fired. False, with nothing
    /// written, when the slot was already recorded (by this or another process).
    async fn record_cron_fire(&self, fire: &CronFire, run: Option<&NewRun>) -> Result<bool>;
    /// True while a run started by this trigger is unfinished (for `overlap: skip`).
    async fn cron_run_active(&self, workflow_id: &str, trigger_key: &str) -> Result<bool>;
    async fn cron_fires(&self, workflow_id: &str, limit: i64) -> Result<Vec<CronFire>>;

    // Campaigns (see `campaigns`).
    /// Contacts the audience selects that are not enrolled in this occurrence, after `after`
    /// in id order, at most `limit`.
    async fn campaign_candidates(
        &self,
        campaign: &str,
        occurrence: &str,
        audience: &campaigns::AudienceFilter,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>>;
    /// Enrolls each (contact, run) not yet enrolled in this occurrence and creates its run,
    /// atomically; how many were enrolled.
    async fn enrol_campaign(
        &self,
        campaign: &str,
        occurrence: &str,
        recipients: &[(String, NewRun)],
        now: Millis,
    ) -> Result<u64>;
    async fn campaign(&self, id: &str) -> Result<Option<campaigns::CampaignRow>>;
    async fn set_campaign_state(
        &self,
        id: &str,
        state: &str,
        enrolled_at: Option<Millis>,
        now: Millis,
    ) -> Result<()>;
    /// Starts a recurring campaign's occurrence (`enrolled_at` None), or records it enrolled
    /// in full.
    async fn set_campaign_occurrence(
        &self,
        id: &str,
        occurrence: &str,
        enrolled_at: Option<Millis>,
        now: Millis,
    ) -> Result<()>;
    /// The latest slot any of a workflow's cron triggers fired.
    async fn latest_cron_fire(&self, workflow_id: &str) -> Result<Option<Millis>>;
    async fn campaign_counts(&self, id: &str) -> Result<campaigns::CampaignCounts>;
    // Queued conversation starts (`while_open: queue`).
    /// Queued starts, oldest first: all of them, or one person's (`key`).
    async fn queued_conversations(
        &self,
        key: Option<&str>,
        limit: i64,
    ) -> Result<Vec<QueuedConversation>>;
    /// Lets a queued start run now; false when it was no longer queued (another process
    /// promoted or cancelled it).
    async fn promote_queued_conversation(&self, run_id: &str, now: Millis) -> Result<bool>;
    // Alerts.
    /// Events of one name created in `(from, to]`, oldest first: an alert's window.
    async fn alert_events(&self, name: &str, from: Millis, to: Millis) -> Result<Vec<EventRecord>>;
    /// An alert's stored instances, by group key.
    async fn alert_instances(&self, alert_id: &str) -> Result<Vec<AlertInstance>>;
    /// Claims an alert's evaluation tick and writes the instances it decided, in one
    /// transaction. False, with nothing written, when the tick was already claimed.
    async fn record_alert_tick(
        &self,
        alert_id: &str,
        tick: Millis,
        states: &[AlertInstance],
    ) -> Result<bool>;
    /// Every alert instance that is firing, of every alert.
    async fn firing_alert_instances(&self) -> Result<Vec<AlertInstance>>;
    /// What every route last told every group.
    async fn alert_notifications(&self) -> Result<Vec<alerting::NotificationLog>>;
    /// Writes a route's next notification of a group and enqueues its messages, in one
    /// transaction, if the group's `seq` is still `read_seq` (`None`: it has no row yet).
    /// False, with nothing written, when another process notified it first.
    async fn record_alert_notification(
        &self,
        log: &alerting::NotificationLog,
        read_seq: Option<i64>,
        messages: &[NewOutbox],
    ) -> Result<bool>;
    async fn add_silence(&self, silence: &alerting::SilenceRow) -> Result<()>;
    /// Silences, newest first: all of them, or (with `active_at`) those in force then or
    /// later.
    async fn silences(&self, active_at: Option<Millis>) -> Result<Vec<alerting::SilenceRow>>;
    /// Ends a silence at `now`. False when there is no such silence or it had ended.
    async fn expire_silence(&self, id: &str, now: Millis) -> Result<bool>;
    /// One of Herald's own measurements: `(group, value)` pairs, the group being the channel
    /// or workflow when grouped (else `None`, one pair). A group with nothing to count has no
    /// pair.
    async fn alert_metric(
        &self,
        query: &alerting::MetricQuery,
    ) -> Result<Vec<(Option<String>, f64)>>;
    /// For `step_latency`: how long each step that did work took (milliseconds), of those
    /// that finished in the query's window, newest first and at most `limit`, with its group
    /// (the workflow when grouped).
    async fn alert_step_durations(
        &self,
        query: &alerting::MetricQuery,
        limit: i64,
    ) -> Result<Vec<(Option<String>, i64)>>;
    /// Adds webhook responses to the per-minute counts `webhook_responses` reads.
    async fn add_webhook_responses(&self, counts: &[alerting::WebhookCount]) -> Result<()>;
}

/// One alert instance as stored: its group's labels as JSON (`{}` without `group_by`), its
/// phase, and its state machine's state as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertInstance {
    pub alert_id: String,
    pub group_key: String,
    pub phase: String,
    pub state: String,
    pub updated_at: Millis,
}

pub type DynStore = Arc<dyn Store>;

/// How a store treats its connections.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long an operation waits for a database connection before it fails. A webhook's
    /// sender gets a 503 this soon when the database is down, not after a pool's default 30 s.
    pub acquire_timeout: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            acquire_timeout: std::time::Duration::from_secs(2),
        }
    }
}

/// A pooled connection is given back only if it is not inside a transaction. A failed
/// `COMMIT` or `ROLLBACK` (a disk error, a dropped server connection) can leave one open;
/// reused, that connection would refuse every later `BEGIN` and wedge whoever holds it.
/// A rollback queued by a dropped transaction runs first (the ping waits behind it).
pub(crate) fn reusable<'c, C: sqlx::Connection>(
    conn: &'c mut C,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = std::result::Result<bool, sqlx::Error>> + Send + 'c>,
> {
    Box::pin(async move {
        if conn.is_in_transaction() {
            let _ = conn.ping().await;
            if conn.is_in_transaction() {
                tracing::warn!(
                    "a database connection was left inside a transaction; it is closed and replaced"
                );
                return Ok(false);
            }
        }
        Ok(true)
    })
}

/// Opens the store a URL names: `sqlite://path` (created if missing) or `postgres://...`.
pub async fn open(url: &str) -> Result<DynStore> {
    open_with(url, &StoreOptions::default()).await
}

/// [`open`], with options.
pub async fn open_with(url: &str, options: &StoreOptions) -> Result<DynStore> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PgStore::connect_with(url, options).await?,
        ))
    } else {
        Err(StoreError::Config(format!(
            "unsupported database URL `{}`: use sqlite://path/to/herald.db or postgres://user@host/db",
            redact_url(url)
        )))
    }
}

/// A database URL with its password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
