//! A project run offline: a throw-away SQLite database, a virtual clock that jumps to the next
//! thing due, and the real engine and dispatcher. `herald run` uses it to try one workflow;
//! `herald test` builds its cases on it.
//!
//! Jumping the clock is only safe once nothing is in flight. A run whose step is still
//! executing (an `http` call, say) holds a lease that expires at a time the store reports as
//! "due"; moving the clock there while the step runs would hand the run to a second worker,
//! and the call would be made twice. So every jump first waits for the engine to go idle.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::definitions::env::EnvSource;
use crate::engine::clock::{Clock, VirtualClock};
use crate::engine::registry::{CompiledWorkflow, Registry};
use crate::engine::{Engine, EngineError, EngineOptions, StartRun, Started, Trigger};
use crate::store::{
    Contact, ContactUpsert, Millis, OutboxRecord, RunFilter, RunRecord, StepLogEntry,
};

/// At most this many clock jumps per [`Harness::run_to_end`]: a workflow that retries or waits
/// forever ends the simulation instead of hanging it.
pub(crate) const MAX_JUMPS: usize = 10_000;

pub struct Harness {
    pub engine: Arc<Engine>,
    pub clock: VirtualClock,
    /// When the simulation started, for relative times in reports.
    pub started_at: Millis,
    /// Enrolls campaigns as their times come on the virtual clock (cron workflows start only
    /// when a test says so).
    campaigns: crate::engine::scheduler::Scheduler,
    dir: PathBuf,
}

/// What a run did, for a report.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run: RunRecord,
    pub steps: Vec<StepLogEntry>,
    pub messages: Vec<OutboxRecord>,
}

/// How a simulation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Nothing is due any more: every run has finished or waits for something that only the
    /// outside world can bring (an event nobody emits, a reply without a timeout).
    Quiet,
    /// [`MAX_JUMPS`] jumps were not enough.
    GaveUp,
}

impl Harness {
    /// A harness running `registry` from `start`, on a fresh database in the system's
    /// temporary folder (removed when the harness is dropped).
    pub async fn new(
        registry: Registry,
        env: EnvSource,
        start: Millis,
    ) -> Result<Harness, EngineError> {
        Harness::with_clock(registry, env, VirtualClock::new(start)).await
    }

    /// As [`Harness::new`], on a clock the caller made (and may have given to fakes).
    pub async fn with_clock(
        mut registry: Registry,
        env: EnvSource,
        clock: VirtualClock,
    ) -> Result<Harness, EngineError> {
        let start = clock.now();
        let dir =
            std::env::temp_dir().join(format!("herald-sim-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| {
            EngineError::new(
                crate::engine::ErrorKind::Io,
                format!("cannot create a temporary folder {}: {e}", dir.display()),
            )
        })?;
        // The project is loaded when the simulation starts: a recurring campaign's first time
        // is the first after the start, whenever the files were read.
        registry.loaded_at = start;
        let url = format!("sqlite://{}", dir.join("sim.db").display());
        let store = crate::store::open(&url).await?;
        let engine = Engine::new(
            store,
            Arc::new(clock.clone()),
            env,
            EngineOptions::default(),
        );
        engine.install(registry).await?;
        Ok(Harness {
            campaigns: crate::engine::scheduler::Scheduler::for_campaigns(engine.clone()),
            engine,
            clock,
            started_at: start,
            dir,
        })
    }

    /// Stores contacts as a run's `upsert_contact` would.
    pub(crate) async fn seed_contacts(
        &self,
        contacts: Vec<ContactUpsert>,
    ) -> Result<Vec<Contact>, EngineError> {
        Ok(self
            .engine
            .store
            .insert_events(&[], &[], &contacts, &[])
            .await?)
    }

    /// Starts a run of `workflow` as `trigger` would.
    pub async fn start(
        &self,
        workflow: Arc<CompiledWorkflow>,
        trigger: Trigger,
    ) -> Result<Started, EngineError> {
        let started = self
            .engine
            .start(StartRun {
                workflow,
                trigger,
                idempotency_key: None,
                want_reply: false,
            })
            .await?;
        self.engine.wait_idle().await;
        Ok(started)
    }

    /// Runs what is due now and delivers what is queued, until nothing more is due without
    /// the clock moving.
    pub async fn settle(&self) -> Result<(), EngineError> {
        loop {
            self.engine.wait_idle().await;
            self.campaigns.tick().await?;
            let runs = self.engine.run_due().await?;
            let messages = self.engine.deliver_due().await?;
            self.engine.wait_idle().await;
            if runs == 0 && messages == 0 {
                return Ok(());
            }
        }
    }

    /// Moves the clock forward by `by`, running everything that falls due on the way, in
    /// order.
    pub async fn advance(&self, by: std::time::Duration) -> Result<(), EngineError> {
        let until = self.clock.now() + by.as_millis() as i64;
        loop {
            self.settle().await?;
            match self.next_due(true).await? {
                // Due now, after a settle, is something nothing will pick up: move on.
                Some(t) if t <= until && t > self.clock.now() => self.clock.set(t),
                _ => break,
            }
        }
        self.clock.set(until);
        self.settle().await
    }

    /// Fast-forwards, jump by jump, until nothing is due any more.
    pub async fn run_to_end(&self) -> Result<Settled, EngineError> {
        for _ in 0..MAX_JUMPS {
            self.settle().await?;
            match self.next_due(false).await? {
                Some(t) => {
                    if t > self.clock.now() {
                        self.clock.set(t);
                    }
                }
                None => return Ok(Settled::Quiet),
            }
        }
        Ok(Settled::GaveUp)
    }

    /// When the next run or message falls due, or a campaign enrolls (`recurring`: a
    /// recurring campaign's next time too, which always comes).
    async fn next_due(&self, recurring: bool) -> Result<Option<Millis>, EngineError> {
        let run = self.engine.store.next_due_at().await?;
        let message = self.engine.store.next_outbox_at().await?;
        let campaign = self
            .campaigns
            .next_campaign_time(self.clock.now(), recurring);
        Ok([run, message, campaign].into_iter().flatten().min())
    }

    /// Every run in the simulation, oldest first: the one started and those it started
    /// (`call` children, event subscribers), with their step logs and messages.
    pub async fn report(&self) -> Result<Vec<RunReport>, EngineError> {
        let store = &self.engine.store;
        let mut runs = store
            .list_runs(&RunFilter {
                limit: 10_000,
                ..RunFilter::default()
            })
            .await?;
        runs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let mut out = Vec::with_capacity(runs.len());
        for run in runs {
            let steps = store.step_log(&run.id).await?;
            let messages = store.outbox_for_run(&run.id).await?;
            out.push(RunReport {
                run,
                steps,
                messages,
            });
        }
        Ok(out)
    }

    /// The value a step-log time is shown relative to.
    pub(crate) fn since_start(&self, at: Millis) -> std::time::Duration {
        std::time::Duration::from_millis((at - self.started_at).max(0) as u64)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A contact to seed, as JSON: `{email, phone, first_name, last_name, status, timezone,
/// attributes}`, read as `contacts` in herald.yaml says: a phone number without a country
/// code in its region, declared attributes as their types.
pub(crate) fn contact_from_json(
    v: &Value,
    contacts: &crate::definitions::model::config::ContactsConfig,
    now: Millis,
) -> Result<ContactUpsert, String> {
    let region = contacts.default_region.as_str();
    let obj = v
        .as_object()
        .ok_or_else(|| format!("a contact is an object with email or phone, not {v}"))?;
    let text = |k: &str| -> Result<Option<String>, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("contact field `{k}` must be text, not {other}")),
        }
    };
    for k in obj.keys() {
        if !crate::engine::contact::FIELDS.contains(&k.as_str())
            && !["lists", "tags"].contains(&k.as_str())
        {
            return Err(format!(
                "unknown contact field `{k}`: use email, phone, first_name, last_name, status, timezone, attributes, lists or tags"
            ));
        }
    }
    let email = text("email")?.map(|e| e.trim().to_lowercase());
    let phone = match text("phone")? {
        Some(p) => Some(
            crate::engine::contact::normalize_phone(&p, region)
                .ok_or_else(|| format!("`{p}` is not a phone number"))?,
        ),
        None => None,
    };
    if email.is_none() && phone.is_none() {
        return Err("a contact needs an email or a phone".into());
    }
    let mut attributes = match obj.get("attributes") {
        None | Some(Value::Null) => Default::default(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(format!(
                "contact `attributes` must be an object, not {other}"
            ));
        }
    };
    crate::engine::contact::type_attributes(&mut attributes, &contacts.attributes)?;
    Ok(ContactUpsert {
        new_id: crate::engine::new_id(),
        email,
        phone,
        first_name: text("first_name")?,
        last_name: text("last_name")?,
        status: text("status")?,
        timezone: text("timezone")?,
        attributes,
        addresses: Vec::new(),
        now,
        memberships: memberships(obj)?,
    })
}

/// A given contact's `lists` and `tags`, as memberships to add.
fn memberships(
    obj: &serde_json::Map<String, Value>,
) -> Result<Vec<crate::store::campaigns::Membership>, String> {
    use crate::store::campaigns::{Membership, MembershipKind};
    let mut out = Vec::new();
    for (field, kind) in [
        ("lists", MembershipKind::List),
        ("tags", MembershipKind::Tag),
    ] {
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Array(names)) => {
                for name in names {
                    let Some(name) = name.as_str() else {
                        return Err(format!(
                            "contact `{field}` must be a list of names, not {name}"
                        ));
                    };
                    out.push(Membership {
                        kind,
                        name: name.to_owned(),
                        member: true,
                    });
                }
            }
            Some(other) => {
                return Err(format!(
                    "contact `{field}` must be a list of names, not {other}"
                ));
            }
        }
    }
    Ok(out)
}

/// A message a [`RecordingChannel`] delivered, and when on the virtual clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub channel: String,
    pub to: String,
    pub subject: Option<String>,
    pub body: String,
    pub step_id: Option<String>,
    pub workflow_id: Option<String>,
    pub at: Millis,
}

/// What a project's channels delivered, shared by the fakes that stand in for them.
#[derive(Debug, Default)]
pub struct Recorder {
    messages: std::sync::Mutex<Vec<Recorded>>,
}

impl Recorder {
    /// Every message delivered so far, in the order they were delivered.
    pub fn messages(&self) -> Vec<Recorded> {
        crate::sync::lock(&self.messages).clone()
    }
}

/// Stands in for a configured channel: accepts every message and records it, so a test sees
/// exactly what the outbox handed to the provider (after suppression, quiet hours and caps).
/// It keeps the real channel's kind of address, so inbound messages are matched to contacts
/// as they would be.
#[derive(Debug)]
pub struct RecordingChannel {
    address_kind: crate::channels::AddressKind,
    recorder: Arc<Recorder>,
    clock: VirtualClock,
}

#[async_trait::async_trait]
impl crate::channels::Channel for RecordingChannel {
    fn provider(&self) -> &'static str {
        "recording"
    }

    fn address_kind(&self) -> crate::channels::AddressKind {
        self.address_kind
    }

    async fn deliver(
        &self,
        message: &crate::channels::OutboundMessage,
    ) -> Result<crate::channels::Delivered, crate::channels::DeliveryError> {
        crate::sync::lock(&self.recorder.messages).push(Recorded {
            channel: message.channel.clone(),
            to: message.to.clone(),
            subject: message.subject.clone(),
            body: message.body.clone(),
            step_id: message.step_id.clone(),
            workflow_id: message.workflow_id.clone(),
            at: self.clock.now(),
        });
        Ok(crate::channels::Delivered {
            provider_id: Some(format!("recorded-{}", message.id)),
        })
    }
}

impl Harness {
    /// Replaces every channel of `registry` by a recording fake writing to `recorder`. Call it
    /// before [`Harness::new`], with the clock the harness will use.
    pub fn record_channels(
        registry: &mut Registry,
        recorder: &Arc<Recorder>,
        clock: &VirtualClock,
    ) {
        for channel in registry.channels.values_mut() {
            *channel = Arc::new(RecordingChannel {
                address_kind: channel.address_kind(),
                recorder: recorder.clone(),
                clock: clock.clone(),
            });
        }
    }
}
