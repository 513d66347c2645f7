//! The engine: a durable step interpreter.
//!
//! A run executes in *segments*: the steps between two points where the run must be durable. A
//! segment's writes (the run's new cursor and context, its step-log lines, outbox messages,
//! events, started runs, contact upserts) are committed in one transaction, so after a crash a
//! run is exactly at its last committed step and nothing it did since is half-written. Every
//! step but `http` only writes to the database, so a segment runs until the run waits, ends, or
//! reaches an `http` step; an `http` call is committed before it is made and after it returns,
//! and carries an `Idempotency-Key` in case a crash makes it happen twice.
//!
//! Work is found in the store, not in memory: due runs (`due_at <= now`) are claimed under a
//! lease, so several processes can share one Postgres database, and a crashed process's runs
//! become due again when its leases expire.

pub mod campaign;
pub mod clock;
pub(crate) mod contact;
pub mod context;
mod conversation;
pub mod cursor;
pub mod dispatcher;
pub mod inbox;
mod interpreter;
mod lookups;
mod policy;
pub mod program;
pub mod registry;
pub mod retry;
pub mod scheduler;
mod senders;
mod steps;
pub use steps::http::{HttpStub, StubRequest, StubResponse};
pub(crate) mod suppression;
pub mod unsubscribe;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};

use crate::definitions::env::EnvSource;
use crate::definitions::model::config::Keyword;
use crate::definitions::model::step::MessageCategory;
use crate::definitions::project::{EnvMode, LoadCache, LoadOptions, load_with};
use crate::definitions::read_definition;
use crate::definitions::source::SourceFile;
use crate::store::{ContactUpsert, DynStore, Millis, NewEvent, RunRecord, RunStatus, StoreError};
use crate::triggers::inbound;
use clock::Clock;
pub(crate) use context::RunBuilder;
pub use context::Trigger;
use registry::{CompileCache, CompiledWorkflow, Registry};

/// Why the engine could not do what it was asked. [`EngineError::kind`] is for callers that
/// decide what to do (an HTTP status, a retry); the message is for people.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{message}")]
    Invalid { kind: ErrorKind, message: String },
}

/// What kind of failure an [`EngineError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The database refused or did not answer (see [`StoreError`]).
    Store,
    /// A run's workflow version is not stored, or no longer loads or compiles.
    VersionUnavailable,
    /// A run's stored state (its cursor) cannot be read.
    UnreadableRun,
    /// A run being started stopped before its first commit, or the run its idempotency key
    /// named disappeared: the start may be tried again.
    StartInterrupted,
    /// The machine refused something the engine needs (a temporary folder).
    Io,
}

impl EngineError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> EngineError {
        EngineError::Invalid {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Store(_) => ErrorKind::Store,
            EngineError::Invalid { kind, .. } => *kind,
        }
    }
}

/// The reply a `sync` webhook gives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl SyncReply {
    /// The reply of a run that ended without a `respond` step.
    pub(crate) fn from_finished(
        run_id: &str,
        status: RunStatus,
        context: &Value,
        error: Option<&str>,
    ) -> SyncReply {
        match status {
            RunStatus::Completed => SyncReply {
                status: 200,
                headers: Vec::new(),
                body: json!({"run_id": run_id, "status": "completed", "vars": context.get("vars").cloned().unwrap_or(json!({}))}),
            },
            other => SyncReply {
                status: 500,
                headers: Vec::new(),
                body: json!({"run_id": run_id, "status": other.as_str(), "error": error.unwrap_or("the run did not complete")}),
            },
        }
    }

    /// A reply recorded by a `respond` step (`{status, headers, body}`).
    pub fn from_value(v: &Value) -> SyncReply {
        let headers = v
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| {
                h.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| v.to_string()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        SyncReply {
            status: v
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(200),
            headers,
            body: v.get("body").cloned().unwrap_or(Value::Null),
        }
    }
}

/// Whether the store is taking this process's work: a ping can succeed on a read connection
/// while every write fails, so the engine records how its own writes and claims go. `/health`
/// answers 503 while they fail, and `herald_store_failing` says so to Prometheus.
#[derive(Debug, Default)]
pub struct StorageHealth {
    failures: std::sync::atomic::AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

impl StorageHealth {
    /// Records the outcome of a write or claim (not of a lost lease, which is the database
    /// working as it should).
    pub fn record<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) | Err(StoreError::LeaseLost) => {
                if self.failures.swap(0, Ordering::Relaxed) > 0 {
                    tracing::info!("the database takes writes again");
                    metrics::gauge!("herald_store_failing").set(0.0);
                }
            }
            Err(e) => {
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                *crate::sync::lock(&self.last_error) = Some(e.to_string());
                metrics::counter!("herald_store_errors_total").increment(1);
                metrics::gauge!("herald_store_failing").set(1.0);
                if n == 1 {
                    tracing::error!(error = %e, "the database refused a write; work waits until it recovers");
                }
            }
        }
    }

    /// The last error while writes are failing, `None` while they succeed.
    pub fn failing(&self) -> Option<String> {
        (self.failures.load(Ordering::Relaxed) > 0)
            .then(|| crate::sync::lock(&self.last_error).clone())
            .flatten()
    }
}

/// How an inbound message was routed.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub started_runs: Vec<String>,
    /// Set when the message was an opt-out or opt-in keyword.
    pub keyword: Option<Keyword>,
}

/// A sync caller's token and the channel its reply goes to.
type Responder = (u64, oneshot::Sender<SyncReply>);

/// How to start a run.
#[derive(Debug, Clone)]
pub struct StartRun {
    pub workflow: Arc<CompiledWorkflow>,
    /// What started it; the run's context is made from this (see [`context`]).
    pub trigger: Trigger,
    pub idempotency_key: Option<String>,
    /// Set for `sync` webhooks: the caller waits for the run's reply.
    pub want_reply: bool,
}

#[derive(Debug)]
pub struct Started {
    pub run_id: String,
    /// The idempotency key was already used: `run_id` is the original run.
    pub duplicate: bool,
    /// For `want_reply` starts: resolves with the reply once the run has one.
    pub reply: Option<ReplyWaiter>,
}

/// A caller waiting for a sync run's reply. Dropping it (the caller timed out or hung up)
/// unregisters it, so nothing is kept for a caller that is gone.
#[derive(Debug)]
pub struct ReplyWaiter {
    pub rx: oneshot::Receiver<SyncReply>,
    token: u64,
    run_id: String,
    engine: std::sync::Weak<Engine>,
}

impl Drop for ReplyWaiter {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.upgrade() {
            let mut map = crate::sync::lock(&engine.responders);
            if let Some(list) = map.get_mut(&self.run_id) {
                list.retain(|(t, _)| *t != self.token);
                if list.is_empty() {
                    map.remove(&self.run_id);
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub lease: std::time::Duration,
    pub workers: usize,
    /// How this process identifies itself as a lease owner.
    pub owner: String,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lease: std::time::Duration::from_secs(30),
            workers: crate::definitions::model::config::DEFAULT_WORKERS as usize,
            owner: default_owner(),
        }
    }
}

/// `host-pid-random`: unique per process, readable in the runs table.
pub(crate) fn default_owner() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "herald".into());
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &id[id.len() - 6..])
}

pub struct Engine {
    pub store: DynStore,
    pub clock: Arc<dyn Clock>,
    registry: ArcSwap<Registry>,
    /// Older workflow versions that runs are pinned to, compiled on first use.
    versions: std::sync::Mutex<HashMap<String, Arc<CompiledWorkflow>>>,
    pub env: EnvSource,
    pub options: EngineOptions,
    http: reqwest::Client,
    /// What answers `http` steps instead of `http` under `herald test`; never set otherwise.
    http_stub: std::sync::OnceLock<Arc<dyn steps::http::HttpStub>>,
    /// Sync callers waiting for a run's reply; several when a key is repeated meanwhile.
    responders: std::sync::Mutex<HashMap<String, Vec<Responder>>>,
    next_token: std::sync::atomic::AtomicU64,
    /// Signalled when this process creates due work, so workers need not wait for a poll.
    pub work_ready: Notify,
    /// Signalled when messages are enqueued.
    pub outbox_ready: Notify,
    /// Runs this process is executing, whose leases the worker keeps renewing.
    held: std::sync::Mutex<HashSet<String>>,
    /// Signalled when `held` becomes empty.
    idle: Notify,
    /// Whether the database is taking this process's writes, for `/health`.
    pub storage: StorageHealth,
    draining: AtomicBool,
    /// Each paced channel's next free slot (see `rate` on a channel).
    pacers: policy::Pacers,
    /// Whose inbound message is being handled (see [`senders`]).
    senders: senders::SenderLocks,
    /// Webhook responses not yet written, for `webhook_responses` alerts.
    pub webhook_responses: crate::store::tally::ResponseTally,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("owner", &self.options.owner)
            .finish_non_exhaustive()
    }
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Engine {
    pub fn new(
        store: DynStore,
        clock: Arc<dyn Clock>,
        env: EnvSource,
        options: EngineOptions,
    ) -> Arc<Engine> {
        crate::tls::init();
        let http = reqwest::Client::builder()
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .expect("the HTTP client builds with the ring provider installed");
        Arc::new(Engine {
            store,
            clock,
            registry: ArcSwap::from_pointee(Registry::empty()),
            versions: Default::default(),
            env,
            options,
            http,
            http_stub: std::sync::OnceLock::new(),
            responders: Default::default(),
            next_token: std::sync::atomic::AtomicU64::new(1),
            work_ready: Notify::new(),
            outbox_ready: Notify::new(),
            held: Default::default(),
            idle: Notify::new(),
            storage: StorageHealth::default(),
            draining: AtomicBool::new(false),
            pacers: Default::default(),
            senders: Default::default(),
            webhook_responses: Default::default(),
        })
    }

    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Makes `http` steps ask `stub` instead of the network, for good (`herald test`). False
    /// when one was already set.
    pub fn stub_http(&self, stub: Arc<dyn steps::http::HttpStub>) -> bool {
        self.http_stub.set(stub).is_ok()
    }

    /// The HTTP client for outbound checks and calls, and the stub that answers instead of
    /// the network under `herald test`.
    pub(crate) fn http(&self) -> (&reqwest::Client, Option<&dyn steps::http::HttpStub>) {
        (&self.http, self.http_stub.get().map(|s| s.as_ref()))
    }

    pub(crate) fn lease_ms(&self) -> i64 {
        self.options.lease.as_millis() as i64
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    /// Makes a registry current. Its workflow versions are stored first, so every run started
    /// from it names a version the database has. Versions the current registry already has
    /// were stored when it was installed, so a reload writes only the versions it changed.
    pub async fn install(&self, registry: Registry) -> Result<(), EngineError> {
        let now = self.now();
        let current = self.registry.load();
        for wf in registry.workflows.values() {
            if current
                .workflows
                .get(&wf.id)
                .is_some_and(|old| old.hash == wf.hash)
            {
                continue;
            }
            self.store.save_definition(&wf.version_record(now)).await?;
        }
        drop(current);
        self.registry.store(Arc::new(registry));
        self.work_ready.notify_waiters();
        Ok(())
    }

    /// The compiled workflow for a stored version: the current one if it matches, else one
    /// compiled from the stored source.
    pub(crate) async fn workflow_version(
        &self,
        workflow_id: &str,
        hash: &str,
    ) -> Result<Arc<CompiledWorkflow>, EngineError> {
        if let Some(wf) = self.registry().workflows.get(workflow_id)
            && wf.hash == hash
        {
            return Ok(wf.clone());
        }
        if let Some(wf) = crate::sync::lock(&self.versions).get(hash) {
            return Ok(wf.clone());
        }
        let stored = self.store.definition(hash).await?.ok_or_else(|| {
            EngineError::new(
                ErrorKind::VersionUnavailable,
                format!("definition version {hash} of `{workflow_id}` is not stored"),
            )
        })?;
        let file = SourceFile::new(
            format!("{workflow_id}@{}", &hash[..12.min(hash.len())]),
            stored.source,
        );
        let def = read_definition(file).map_err(|d| {
            EngineError::new(
                ErrorKind::VersionUnavailable,
                format!(
                    "stored version {hash} of `{workflow_id}` no longer loads: {}",
                    d[0].message
                ),
            )
        })?;
        let wf = Arc::new(CompiledWorkflow::compile(&def, &self.env).map_err(|d| {
            EngineError::new(
                ErrorKind::VersionUnavailable,
                format!(
                    "stored version {hash} of `{workflow_id}` does not compile: {}",
                    d[0].message
                ),
            )
        })?);
        crate::sync::lock(&self.versions).insert(hash.to_owned(), wf.clone());
        Ok(wf)
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops taking new work (on SIGTERM); runs in progress finish their segment.
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.work_ready.notify_waiters();
        self.outbox_ready.notify_waiters();
    }

    /// This process no longer executes the run.
    pub(crate) fn release(&self, run_id: &str) {
        let mut held = crate::sync::lock(&self.held);
        held.remove(run_id);
        if held.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Waits until this process executes no run: every run it started or claimed has reached
    /// a commit where it waits, ends or was handed back. A clock that is moved by hand must
    /// not be moved before this, or a step in flight would see its own lease expire.
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if crate::sync::lock(&self.held).is_empty() {
                return;
            }
            idle.await;
        }
    }

    pub fn held_runs(&self) -> Vec<String> {
        crate::sync::lock(&self.held).iter().cloned().collect()
    }

    /// Starts a run: stores it and executes its first segment before returning, so a caller
    /// that answers after this returns answers only for a committed run.
    pub async fn start(self: &Arc<Self>, req: StartRun) -> Result<Started, EngineError> {
        if let Some(key) = &req.idempotency_key
            && let Some(existing) = self
                .store
                .run_by_idempotency_key(&req.workflow.id, key)
                .await?
        {
            return Ok(self.duplicate(existing, req.want_reply));
        }
        let now = self.now();
        let new = RunBuilder::new(&req.workflow, req.trigger)
            .idempotency_key(req.idempotency_key)
            .build(&self.registry().templates, now);
        self.start_built(new, req.workflow, req.want_reply, Vec::new())
            .await
    }

    /// Starts a run built by the run builder: its first segment runs in this task and commits
    /// with the run (on SQLite, in a group commit with other requests'), and only then does it
    /// return, so what the caller acknowledges is stored. A run whose idempotency key is taken
    /// is the existing one.
    async fn start_built(
        self: &Arc<Self>,
        new: crate::store::NewRun,
        workflow: Arc<CompiledWorkflow>,
        want_reply: bool,
        carry: Vec<NewEvent>,
    ) -> Result<Started, EngineError> {
        let run_id = new.id.clone();
        let reply = want_reply.then(|| self.wait_reply(&run_id));
        let (first_tx, first_rx) = oneshot::channel();
        let engine = self.clone();
        crate::sync::lock(&self.held).insert(run_id.clone());
        tokio::spawn(async move {
            engine.drive_new(new, workflow, carry, first_tx).await;
        });
        match first_rx.await {
            Ok(Ok(interpreter::FirstCommit::Committed)) => Ok(Started {
                run_id,
                duplicate: false,
                reply,
            }),
            Ok(Ok(interpreter::FirstCommit::Duplicate(existing))) => {
                drop(reply);
                let existing = self.store.run(&existing).await?.ok_or_else(|| {
                    EngineError::new(ErrorKind::StartInterrupted, "the original run disappeared")
                })?;
                Ok(self.duplicate(existing, want_reply))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(EngineError::new(
                ErrorKind::StartInterrupted,
                "the run stopped before it was stored",
            )),
        }
    }

    fn duplicate(self: &Arc<Self>, existing: RunRecord, want_reply: bool) -> Started {
        let reply = want_reply.then(|| {
            let waiter = self.wait_reply(&existing.id);
            let reply = match &existing.response {
                Some(r) => Some(SyncReply::from_value(r)),
                None if existing.status.is_finished() => Some(SyncReply::from_finished(
                    &existing.id,
                    existing.status,
                    &existing.context,
                    existing.error.as_deref(),
                )),
                None => None,
            };
            if let Some(r) = reply {
                for tx in self.take_responders(&existing.id) {
                    let _ = tx.send(r.clone());
                }
            }
            waiter
        });
        Started {
            run_id: existing.id,
            duplicate: true,
            reply,
        }
    }

    /// Registers a caller for a run's reply.
    fn wait_reply(self: &Arc<Self>, run_id: &str) -> ReplyWaiter {
        let (tx, rx) = oneshot::channel();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        crate::sync::lock(&self.responders)
            .entry(run_id.to_owned())
            .or_default()
            .push((token, tx));
        ReplyWaiter {
            rx,
            token,
            run_id: run_id.to_owned(),
            engine: Arc::downgrade(self),
        }
    }

    /// Every caller waiting for this run's reply, unregistered.
    pub(crate) fn take_responders(&self, run_id: &str) -> Vec<oneshot::Sender<SyncReply>> {
        crate::sync::lock(&self.responders)
            .remove(run_id)
            .map(|list| list.into_iter().map(|(_, tx)| tx).collect())
            .unwrap_or_default()
    }

    /// Sends a reply to every caller waiting for it.
    pub(crate) fn reply(&self, run_id: &str, reply: &SyncReply) {
        for tx in self.take_responders(run_id) {
            let _ = tx.send(reply.clone());
        }
    }

    /// Records an event from outside a run (the admin API) and starts its subscribers.
    pub async fn emit(
        self: &Arc<Self>,
        name: &str,
        key: Option<&str>,
        data: Value,
    ) -> Result<String, EngineError> {
        let mut ids = self
            .emit_batch(vec![(name.to_owned(), key.map(str::to_owned), data)])
            .await?;
        Ok(ids.remove(0))
    }

    /// Emits several events at one moment, stored with the runs they start in one
    /// transaction, then wakes the runs waiting for each. Their ids, in order.
    pub async fn emit_batch(
        self: &Arc<Self>,
        events: Vec<(String, Option<String>, Value)>,
    ) -> Result<Vec<String>, EngineError> {
        let now = self.now();
        let events: Vec<NewEvent> = events
            .into_iter()
            .map(|(name, key, data)| NewEvent {
                id: new_id(),
                name,
                key,
                data,
                source_run_id: None,
                created_at: now,
            })
            .collect();
        self.record_events(&events).await?;
        Ok(events.into_iter().map(|e| e.id).collect())
    }

    /// Stores an event with the runs it starts, then wakes the runs waiting for it (those
    /// waiting on its name and key). An event whose id is already stored starts nothing again.
    async fn record_event(self: &Arc<Self>, event: NewEvent) -> Result<(), EngineError> {
        self.record_events(std::slice::from_ref(&event)).await
    }

    /// [`Engine::record_event`] for several, in one transaction; each (name, key) is woken
    /// once.
    async fn record_events(self: &Arc<Self>, events: &[NewEvent]) -> Result<(), EngineError> {
        let registry = self.registry();
        let runs: Vec<_> = events
            .iter()
            .flat_map(|e| context::subscriber_runs(&registry, e, None, e.created_at))
            .collect();
        self.store.insert_events(events, &runs, &[], &[]).await?;
        let mut woken = HashSet::new();
        let mut woke = 0;
        for e in events {
            if let Some(k) = &e.key
                && woken.insert((e.name.as_str(), k.as_str()))
            {
                woke += self.store.wake_waiting(&e.name, k, e.created_at).await?;
            }
        }
        // The workers have something to do only if runs were stored or woken.
        if woke > 0 || !runs.is_empty() {
            self.work_ready.notify_waiters();
        }
        Ok(())
    }

    /// Records what a provider reports about a message it was given, on the outbox row it
    /// knows by its id, and emits `message.<status>` (`message.delivered`, `message.failed`,
    /// `message.bounced`, `message.complained`, `message.unsubscribed`) keyed by the recipient,
    /// which workflows and waiting runs can use. A report the provider sends again is one
    /// event, not two. Reports on the way (`sent`, `deferred`) are recorded without an event.
    /// False when no message has that id, or a later report is already recorded.
    pub async fn delivery_report(
        self: &Arc<Self>,
        report: &crate::channels::inbound::DeliveryReport,
    ) -> Result<bool, EngineError> {
        let now = self.now();
        let status = report.status.label();
        let Some(message) = self
            .store
            .record_delivery(
                &report.channel,
                &report.provider_id,
                status,
                report.error.as_deref(),
                now,
            )
            .await?
        else {
            return Ok(false);
        };
        if matches!(status, "sent" | "deferred") {
            return Ok(true);
        }
        if matches!(status, "bounced" | "complained" | "unsubscribed") {
            self.store
                .suppress_address(
                    &report.channel,
                    &suppression::address_key(&message.recipient),
                    status,
                    report.error.as_deref(),
                    now,
                )
                .await?;
        }
        let event = NewEvent {
            id: format!("report:{}:{}:{status}", report.channel, report.provider_id),
            name: format!("message.{status}"),
            key: Some(message.recipient.clone()),
            data: json!({
                "channel": report.channel,
                "to": message.recipient,
                "message_id": message.id,
                "provider_id": report.provider_id,
                "status": status,
                "error": report.error,
                "run_id": message.run_id,
                "workflow_id": message.workflow_id,
                "step_id": message.step_id,
            }),
            source_run_id: None,
            created_at: now,
        };
        self.record_event(event).await?;
        Ok(true)
    }

    /// Records a call to a provider's number that nobody took as the event `call.missed`,
    /// keyed by the caller, with the channel, the caller (`from`), the number called (`to`),
    /// how it ended (`status`) and the provider's `call_sid`: a workflow starts on it, or a
    /// run waits for it. The provider's id for the call makes it one event however often
    /// the provider reports it (a retry, a `<Dial>` action and a status callback). A call
    /// someone answered records nothing. True when the call was missed.
    pub async fn call_report(
        self: &Arc<Self>,
        call: &crate::channels::inbound::CallReport,
    ) -> Result<bool, EngineError> {
        if !call.missed {
            return Ok(false);
        }
        let event = NewEvent {
            id: format!("call:{}:{}", call.channel, call.call_id),
            name: "call.missed".to_owned(),
            key: Some(call.from.clone()),
            data: json!({
                "channel": call.channel,
                "from": call.from,
                "to": call.to,
                "status": call.status,
                "call_sid": call.call_id,
            }),
            source_run_id: None,
            created_at: self.now(),
        };
        tracing::info!(channel = %call.channel, from = %call.from, status = %call.status, "missed call");
        self.record_event(event).await?;
        Ok(true)
    }

    /// Records an inbound message and routes it.
    ///
    /// An opt-out keyword (see `compliance` in herald.yaml) is handled before anything else
    /// sees the message: the sender's contact is marked `opted_out` in the same transaction
    /// that records the message, so no run can send to them after it, and the message is not
    /// a reply (it wakes no run waiting for one). It starts only the workflows whose `message`
    /// trigger names that keyword, and those subscribed to `contact.opted_out`. An opt-in
    /// keyword from an opted-out sender marks them `subscribed` the same way.
    ///
    /// Any other message is an event `message.<channel>` keyed by the sender, which wakes
    /// runs waiting for a reply. The sender's open conversation on the channel takes it, the
    /// reset command ends that conversation, and a conversation's `start` opens one (see
    /// `conversation.rs`); a message no open conversation took starts every workflow whose
    /// `message` trigger matches.
    ///
    /// One sender's messages are handled one at a time, in the order they arrived.
    pub async fn inbound_message(
        self: &Arc<Self>,
        channel: &str,
        from: &str,
        text: &str,
        provider_id: Option<&str>,
    ) -> Result<Inbound, EngineError> {
        let _turn = self.senders.turn(channel, from).await;
        let now = self.now();
        let registry = self.registry();
        let dedupe = provider_id.map(|p| format!("message:{channel}:{p}"));
        let sender = Sender::of(&registry, channel, from);
        let keyword = self
            .compliance_keyword(&registry, channel, from, text, &sender, now)
            .await?;
        // A provider's message id makes a redelivered message one event, not two.
        let event_id = dedupe.clone().unwrap_or_else(new_id);
        let m = conversation::Message {
            channel,
            from,
            text,
            provider_id,
            event_id: &event_id,
            dedupe: dedupe.as_deref(),
        };
        let KeywordWrites {
            contacts,
            mut events,
            answers,
        } = keyword_writes(&registry, &m, keyword, &sender, now);
        let event_name = inbound::event_name(channel, keyword);
        let mut message_event = NewEvent {
            id: event_id.clone(),
            name: event_name.clone(),
            key: Some(from.to_owned()),
            data: json!({"channel": channel, "from": from, "text": text, "id": provider_id}),
            source_run_id: None,
            created_at: now,
        };
        // After a compliance keyword and with the runs waiting for a reply (which the
        // message event wakes), the person's conversation: an open one takes the message, so
        // no `message` trigger starts on it; a `start` opens one.
        let routed = if keyword.is_none() {
            self.route_conversation(&registry, &m, now).await?
        } else {
            conversation::Routed::default()
        };
        if routed.held {
            message_event.name = conversation::HELD_MESSAGE_EVENT.to_owned();
        }
        // The runs `message` triggers start go the way a webhook's do: each first segment
        // runs and commits before the provider is answered, so the reply is in the outbox by
        // then.
        let started = if routed.claimed {
            Vec::new()
        } else {
            message_runs(&registry, &m, keyword, now)
        };
        let mut runs = routed.runs;
        for notice in &events {
            runs.extend(context::subscriber_runs(&registry, notice, None, now));
        }
        let mut ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
        events.insert(0, message_event);
        // The common case, a message that starts runs and nothing else: the message is
        // recorded with the first run's first segment, one write (on SQLite, in a group commit
        // with other requests'). Otherwise the message (and an opt-out's contact change, and
        // the runs that wait for workers) first: no run it starts can send to someone it opted
        // out. A crash before the runs are stored leaves the provider unanswered, and it
        // delivers the message again.
        let mut carry = Vec::new();
        if events.len() == 1
            && runs.is_empty()
            && contacts.is_empty()
            && answers.is_empty()
            && !started.is_empty()
        {
            carry = events;
        } else {
            self.store
                .insert_events(&events, &runs, &contacts, &answers)
                .await?;
        }
        for (new, workflow) in started {
            let carried = std::mem::take(&mut carry);
            ids.push(
                self.start_built(new, workflow, false, carried)
                    .await?
                    .run_id,
            );
        }
        // Only once the message is stored may the runs waiting for it look for it.
        let woke = if inbound::is_reply(keyword) && !routed.held {
            self.store.wake_waiting(&event_name, from, now).await?
        } else {
            0
        };
        if keyword.is_none() && ids.is_empty() && woke == 0 && !routed.claimed && !routed.reset {
            self.unmatched(channel, from, text, provider_id, now)
                .await?;
        }
        if !answers.is_empty() {
            self.outbox_ready.notify_waiters();
        }
        // Only runs left for the workers (stored, or woken) are theirs; the runs started here
        // go on in their own tasks. A needless wake-up costs a claim on the writer and a poll
        // per message.
        if woke > 0 || !runs.is_empty() {
            self.work_ready.notify_waiters();
        }
        Ok(Inbound {
            started_runs: ids,
            keyword,
        })
    }

    /// A message nothing took (no keyword, no run waiting for it, no trigger): the event
    /// `message.unmatched`, keyed by the sender, for a workflow that answers what nothing else
    /// does. A message delivered again is one event.
    async fn unmatched(
        self: &Arc<Self>,
        channel: &str,
        from: &str,
        text: &str,
        provider_id: Option<&str>,
        now: Millis,
    ) -> Result<(), EngineError> {
        let event = NewEvent {
            id: provider_id
                .map(|p| format!("unmatched:{channel}:{p}"))
                .unwrap_or_else(new_id),
            name: "message.unmatched".to_owned(),
            key: Some(from.to_owned()),
            data: json!({"channel": channel, "from": from, "text": text, "id": provider_id}),
            source_run_id: None,
            created_at: now,
        };
        // A run may wait for it (`wait_for: { event: message.unmatched, key: ... }`).
        self.record_event(event).await
    }

    /// Cancels a run; a parent waiting on it wakes to see it.
    pub async fn cancel(&self, run_id: &str) -> Result<bool, EngineError> {
        let ok = self.store.cancel_run(run_id, self.now()).await?;
        self.reply(
            run_id,
            &SyncReply::from_finished(
                run_id,
                RunStatus::Cancelled,
                &Value::Null,
                Some("the run was cancelled"),
            ),
        );
        self.work_ready.notify_waiters();
        Ok(ok)
    }

    /// Retries a failed run from the step that failed.
    pub async fn retry(&self, run_id: &str) -> Result<bool, EngineError> {
        let ok = self.store.retry_run(run_id, self.now()).await?;
        self.work_ready.notify_waiters();
        Ok(ok)
    }
}

/// Who sent an inbound message, as contacts know people: an e-mail address or a phone
/// number, or a chat (Telegram, web chat) whose id is nobody's phone number.
struct Sender {
    email: Option<String>,
    phone: Option<String>,
    chat: bool,
}

impl Sender {
    fn of(registry: &Registry, channel: &str, from: &str) -> Sender {
        let chat = registry
            .channels
            .get(channel)
            .is_some_and(|c| c.address_kind() == crate::channels::AddressKind::ProviderId);
        let (email, phone) = if chat {
            (None, None)
        } else if from.contains('@') {
            (Some(from.to_lowercase()), None)
        } else {
            (
                None,
                contact::normalize_phone(from, &registry.config.contacts.default_region),
            )
        };
        Sender { email, phone, chat }
    }

    fn is_contact(&self) -> bool {
        self.email.is_some() || self.phone.is_some()
    }
}

impl Engine {
    /// The compliance keyword a message is, if any. An opt-in word counts only from a sender
    /// who opted out. A chat has no contact to mark: its STOP suppresses that chat on that
    /// channel, and its START lifts it, here, before anything can send to it.
    async fn compliance_keyword(
        &self,
        registry: &Registry,
        channel: &str,
        from: &str,
        text: &str,
        sender: &Sender,
        now: Millis,
    ) -> Result<Option<Keyword>, EngineError> {
        let classified = registry.config.compliance.classify(text);
        let opted_out = if classified != Some(Keyword::OptIn) {
            false
        } else if sender.chat {
            self.store
                .address_suppression(channel, from)
                .await?
                .as_deref()
                == Some("unsubscribed")
        } else if sender.is_contact() {
            self.store
                .find_contact(sender.email.as_deref(), sender.phone.as_deref())
                .await?
                .and_then(|c| c.status)
                .is_some_and(|s| s == "opted_out")
        } else {
            false
        };
        let keyword = inbound::keyword(classified, opted_out);
        if sender.chat {
            match keyword {
                Some(Keyword::OptOut) => {
                    self.store
                        .suppress_address(channel, from, "unsubscribed", Some("replied STOP"), now)
                        .await?
                }
                Some(Keyword::OptIn) => {
                    self.store.lift_suppression(channel, from).await?;
                }
                _ => {}
            }
        }
        Ok(keyword)
    }
}

/// What a compliance keyword writes with its message: the sender's new status, the event
/// that announces it, and the answer to a HELP.
#[derive(Default)]
struct KeywordWrites {
    contacts: Vec<ContactUpsert>,
    events: Vec<NewEvent>,
    answers: Vec<crate::store::NewOutbox>,
}

fn keyword_writes(
    registry: &Registry,
    m: &conversation::Message<'_>,
    keyword: Option<Keyword>,
    sender: &Sender,
    now: Millis,
) -> KeywordWrites {
    let conversation::Message {
        channel,
        from,
        text,
        dedupe,
        ..
    } = *m;
    let mut w = KeywordWrites::default();
    let Some(k) = keyword else {
        return w;
    };
    let (status, name) = inbound::keyword_effect(k);
    if let Some(status) = status
        && sender.is_contact()
    {
        w.contacts.push(ContactUpsert {
            new_id: new_id(),
            email: sender.email.clone(),
            phone: sender.phone.clone(),
            status: Some(status.to_owned()),
            now,
            ..ContactUpsert::default()
        });
    }
    tracing::info!(channel, from, keyword = %text.trim(), status = status.unwrap_or("unchanged"), "compliance keyword");
    metrics::counter!("herald_compliance_keywords_total", "channel" => channel.to_owned(), "kind" => name).increment(1);
    w.events.push(NewEvent {
        id: dedupe
            .map(|d| format!("{name}:{d}"))
            .unwrap_or_else(new_id),
        name: name.to_owned(),
        key: Some(from.to_owned()),
        data: json!({"channel": channel, "from": from, "text": text, "keyword": text.trim().to_uppercase()}),
        source_run_id: None,
        created_at: now,
    });
    if k == Keyword::Help
        && let Some(reply) = &registry.config.compliance.help_reply
    {
        w.answers
            .push(help_answer(channel, from, reply, dedupe, now));
    }
    w
}

/// The runs a message starts through `message` triggers, built but not yet stored, each with
/// its workflow. A redelivered message builds them again; their key makes them one.
fn message_runs(
    registry: &Registry,
    m: &conversation::Message<'_>,
    keyword: Option<Keyword>,
    now: Millis,
) -> Vec<(crate::store::NewRun, Arc<CompiledWorkflow>)> {
    let conversation::Message {
        channel,
        from,
        text,
        provider_id,
        event_id,
        dedupe,
    } = *m;
    let mut started = Vec::new();
    for sub in registry
        .messages
        .get(channel)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let crate::definitions::model::Trigger::Message(on) =
            &sub.workflow.workflow.triggers[sub.trigger]
        else {
            continue;
        };
        let pattern = sub.workflow.patterns[sub.trigger].as_ref();
        if !inbound::starts(on, pattern, text, keyword) {
            continue;
        }
        let trigger = Trigger::Message {
            channel: channel.to_owned(),
            from: from.to_owned(),
            text: text.to_owned(),
            id: provider_id.map(str::to_owned),
        };
        started.push((
            RunBuilder::new(&sub.workflow, trigger)
                .idempotency_key(dedupe.map(str::to_owned))
                .started_by(event_id)
                .build(&registry.templates, now),
            sub.workflow.clone(),
        ));
    }
    started
}

/// The answer to a HELP: `compliance.help_reply`, on the channel the HELP came from, as a
/// `compliance` message (it reaches everyone but addresses that bounced). Keyed by the
/// provider's message id, so a redelivered HELP is answered once.
fn help_answer(
    channel: &str,
    to: &str,
    text: &str,
    dedupe: Option<&str>,
    now: Millis,
) -> crate::store::NewOutbox {
    let id = new_id();
    crate::store::NewOutbox {
        idempotency_key: format!("help:{}", dedupe.unwrap_or(&id)),
        id,
        run_id: None,
        workflow_id: None,
        step_id: None,
        channel: channel.to_owned(),
        recipient: to.to_owned(),
        sender: None,
        subject: None,
        body: text.to_owned(),
        html: false,
        headers: json!({}),
        max_attempts: i64::from(retry::outbox_default().max_attempts),
        category: MessageCategory::Compliance,
        retry: None,
        created_at: now,
        due_at: now,
        approved_template: None,
    }
}

/// What loading a project keeps for the next load of the same project (see [`LoadCache`] and
/// [`CompileCache`]): a reload reads every file again and checks the whole set again, but
/// parses, schema-checks and compiles only what changed.
#[derive(Default)]
struct ProjectCache {
    root: std::path::PathBuf,
    load: LoadCache,
    compile: CompileCache,
}

/// The caches of the projects loaded last, most recent last. A server loads one project; the
/// bound keeps a process that loads many (the tests) from keeping them all.
static PROJECT_CACHES: std::sync::Mutex<Vec<ProjectCache>> = std::sync::Mutex::new(Vec::new());
const CACHED_PROJECTS: usize = 4;

fn take_project_cache(root: &std::path::Path) -> ProjectCache {
    let mut caches = crate::sync::lock(&PROJECT_CACHES);
    match caches.iter().position(|c| c.root == root) {
        Some(i) => caches.remove(i),
        None => ProjectCache {
            root: root.to_path_buf(),
            ..ProjectCache::default()
        },
    }
}

fn keep_project_cache(cache: ProjectCache) {
    let mut caches = crate::sync::lock(&PROJECT_CACHES);
    // A load of the same project that ran meanwhile kept its own; this one is as good.
    caches.retain(|c| c.root != cache.root);
    caches.push(cache);
    if caches.len() > CACHED_PROJECTS {
        caches.remove(0);
    }
}

/// Loads the project with `serve` rules (unset secrets are errors) and compiles it.
///
/// It is the same load and check as `herald validate`'s, over every file; what an earlier load
/// of the same project found for files, templates, expressions and workflows that have not
/// changed since is reused rather than worked out again.
pub fn load_registry(
    layout: &crate::definitions::project::Layout,
    env: &EnvSource,
    generation: u64,
    now: Millis,
) -> Result<
    (Registry, crate::definitions::diagnostics::Report),
    crate::definitions::diagnostics::Report,
> {
    let mut opts = LoadOptions::new(EnvMode::Serve);
    opts.env = env.clone();
    let mut cache = take_project_cache(&layout.root);
    let (project, report) = load_with(layout, &opts, &mut cache.load);
    let result = if report.has_errors() {
        Err(report)
    } else {
        match Registry::build_with(&project, env, generation, now, &mut cache.compile) {
            Ok(r) => Ok((r, report)),
            Err(diags) => {
                let mut report = report;
                report.extend(diags);
                Err(report)
            }
        }
    };
    keep_project_cache(cache);
    result
}
