//! `herald test`: the cases of `kind: test` files, each run on the offline harness
//! ([`crate::harness`]): a fresh throw-away store, the virtual clock, the real engine and
//! outbox, with the project's channels replaced by recording fakes and `http` steps answered
//! from the case's canned answers. A case is not a second engine: it starts runs the way the
//! server does and reads what they did from the store.

mod alerts;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::definitions::env::EnvSource;
use crate::definitions::model::test::{
    CannedHttp, Expect, GivenContact, MessageMatch, TestCase, TestTrigger, TextMatch, TimelineEntry,
};
use crate::definitions::model::trigger::Trigger as TriggerDef;
use crate::definitions::test_files::{DEFAULT_START, TestFile, parse_time};
use crate::engine::clock::VirtualClock;
use crate::engine::context::Trigger;
use crate::engine::registry::{CompiledWorkflow, Registry};
use crate::engine::{EngineError, HttpStub, StubRequest, StubResponse, SyncReply};
use crate::harness::{Harness, Recorded, Recorder, Settled};
use crate::store::{Millis, RunStatus};

/// One expectation that did not hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// `file:line:col` of the expectation.
    pub at: String,
    pub message: String,
    /// What was expected and what happened, as text, for a diff.
    pub expected: Option<String>,
    pub actual: Option<String>,
}

/// How one case went.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The test file, as shown to people.
    pub file: String,
    pub name: String,
    pub target: String,
    /// `file:line:col` of the case.
    pub at: String,
    pub failures: Vec<Failure>,
    pub duration: Duration,
    /// `(workflow, step)` pairs some run of the case executed, for `--coverage`.
    pub reached: BTreeSet<(String, String)>,
    /// Golden files this case wrote (`--update`).
    pub updated: Vec<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only cases whose `file::name` contains this.
    pub filter: Option<String>,
    /// Write golden files instead of comparing them.
    pub update: bool,
    /// How many cases run at once.
    pub jobs: usize,
}

/// The environment a test run resolves `${env:NAME}` with: `base` (the process, or an env
/// file in front of it), and a stand-in value for every name the project uses that `base`
/// does not set, so a test needs no real secret. Nothing a test runs reaches a provider or the
/// network, so a stand-in can do no harm.
pub fn test_env(base: EnvSource, names: impl IntoIterator<Item = String>) -> EnvSource {
    let mut map: HashMap<String, String> = HashMap::new();
    if let EnvSource::Overlay(m) | EnvSource::Map(m) = &base {
        map.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    for name in names {
        if base.get(&name).is_none() {
            // Letters and digits only, 4k long, at least 48: valid base64 of at least 36
            // bytes, since some schemes (Standard Webhooks) insist their secret is base64 and
            // some (a web chat's session key) refuse a short one, and within what every
            // provider takes as a token (Telegram's secret token: letters, digits, _ and -).
            // A Telegram bot token has its bot's number before a colon, and the channel
            // refuses one without: a name that says it is one gets one of that shape.
            let mut alnum: String = format!("test{name}")
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect();
            let len = alnum.len().max(48).next_multiple_of(4);
            alnum.extend(std::iter::repeat_n('x', len - alnum.len()));
            let value = if name.to_ascii_uppercase().contains("BOT_TOKEN") {
                format!("123456789:{alnum}")
            } else {
                alnum
            };
            map.entry(name).or_insert(value);
        }
    }
    match base {
        EnvSource::Map(_) => EnvSource::Map(Arc::new(map)),
        _ => EnvSource::Overlay(Arc::new(map)),
    }
}

/// The `${env:NAME}` names written in `texts`.
pub fn env_names<'a>(texts: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    texts
        .into_iter()
        .flat_map(crate::definitions::env::references)
        .filter_map(Result::ok)
        .map(|r| r.name)
        .collect()
}

/// The cases `options` selects, as (file, case index) pairs, in file order.
pub fn select(tests: &[Arc<TestFile>], options: &Options) -> Vec<(Arc<TestFile>, usize)> {
    let mut out = Vec::new();
    for t in tests {
        for (i, case) in t.def.cases.iter().enumerate() {
            let full = format!("{}::{}", t.file.path.display(), case.name);
            if options.filter.as_deref().is_none_or(|f| full.contains(f)) {
                out.push((t.clone(), i));
            }
        }
    }
    out
}

/// Runs the selected cases, several at once, and returns their results in the order given.
pub async fn run_cases(
    registry: Arc<Registry>,
    env: EnvSource,
    cases: Vec<(Arc<TestFile>, usize)>,
    options: &Options,
) -> Vec<CaseResult> {
    let limit = Arc::new(tokio::sync::Semaphore::new(options.jobs.max(1)));
    let mut handles = Vec::with_capacity(cases.len());
    for (file, index) in cases {
        let registry = registry.clone();
        let env = env.clone();
        let limit = limit.clone();
        let update = options.update;
        handles.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            run_case(&registry, env, &file, index, update).await
        }));
    }
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(r) => out.push(r),
            // A panic is a bug in Herald, not in the test; it is still reported as a failure
            // of that case rather than taking the others down.
            Err(e) => out.push(CaseResult {
                file: String::new(),
                name: "(a case panicked)".into(),
                target: String::new(),
                at: String::new(),
                failures: vec![Failure {
                    at: String::new(),
                    message: format!("the case panicked: {e}"),
                    expected: None,
                    actual: None,
                }],
                duration: Duration::ZERO,
                reached: BTreeSet::new(),
                updated: Vec::new(),
            }),
        }
    }
    out
}

/// Answers a case's `http` steps from its canned answers; everything else is refused.
/// Several answers for one request are given in turn, each once, and the last again after
/// that: a model that first breaks a guardrail and then complies, a service that fails once.
#[derive(Debug)]
struct Canned {
    answers: Vec<CannedHttp>,
    /// How many times each answer was given.
    used: Mutex<Vec<usize>>,
    unanswered: Mutex<Vec<String>>,
}

fn url_matches(pattern: &str, url: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => url.starts_with(prefix),
        None => pattern == url,
    }
}

impl HttpStub for Canned {
    fn answer(&self, r: &StubRequest) -> Result<StubResponse, String> {
        let matching: Vec<usize> = self
            .answers
            .iter()
            .enumerate()
            .filter(|(_, a)| a.method == r.method && url_matches(&a.url, &r.url))
            .map(|(i, _)| i)
            .collect();
        let chosen = {
            let mut used = crate::sync::lock(&self.used);
            let next = matching
                .iter()
                .copied()
                .find(|&i| used[i] == 0)
                .or(matching.last().copied());
            if let Some(i) = next {
                used[i] += 1;
            }
            next
        };
        if let Some(a) = chosen.map(|i| &self.answers[i]) {
            let mut headers: Vec<(String, String)> = a
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let body = match (&a.json, &a.body) {
                (Some(j), _) => {
                    if !headers
                        .iter()
                        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    {
                        headers.push(("content-type".into(), "application/json".into()));
                    }
                    j.to_string().into_bytes()
                }
                (None, Some(b)) => b.clone().into_bytes(),
                (None, None) => Vec::new(),
            };
            return Ok(StubResponse {
                status: a.status,
                headers,
                body,
            });
        }
        let call = format!("{} {}", r.method.as_str(), r.url);
        crate::sync::lock(&self.unanswered).push(call.clone());
        Err(format!(
            "no canned answer for {call}: `herald test` never calls the network; add one under `given.http` (method and url)"
        ))
    }
}

fn contact_json(c: &GivenContact) -> Value {
    let mut m = Map::new();
    for (k, v) in [
        ("email", &c.email),
        ("phone", &c.phone),
        ("first_name", &c.first_name),
        ("last_name", &c.last_name),
        ("status", &c.status),
        ("timezone", &c.timezone),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), Value::String(v.clone()));
        }
    }
    if !c.attributes.is_empty() {
        m.insert(
            "attributes".into(),
            Value::Object(c.attributes.clone().into_iter().collect()),
        );
    }
    Value::Object(m)
}

/// A case's run of the world, and what it needs to check expectations.
struct Case<'a> {
    test: &'a TestFile,
    case: &'a TestCase,
    base: String,
    harness: Harness,
    recorder: Arc<Recorder>,
    canned: Arc<Canned>,
    workflow: Arc<CompiledWorkflow>,
    /// The alert under test, for a case whose target is one.
    alert: Option<crate::definitions::alert::Alert>,
    /// The run under test, once the trigger started it.
    root: Option<String>,
    failures: Vec<Failure>,
    update: bool,
    updated: Vec<String>,
    /// `contacts` in herald.yaml: the region phone numbers are read in, attributes' types.
    contacts: crate::definitions::model::config::ContactsConfig,
    messages_in: u64,
}

/// Stops a case: the world could not be set up or moved on.
struct Abort(Failure);

async fn run_case(
    registry: &Registry,
    env: EnvSource,
    test: &TestFile,
    index: usize,
    update: bool,
) -> CaseResult {
    let started = Instant::now();
    let case = &test.def.cases[index];
    let base = format!("/cases/{index}");
    let target = case
        .target
        .clone()
        .or_else(|| test.def.target.clone())
        .unwrap_or_default();
    let mut result = CaseResult {
        file: test.file.path.display().to_string(),
        name: case.name.clone(),
        target: target.clone(),
        at: test.position(&format!("{base}/name")),
        failures: Vec::new(),
        duration: Duration::ZERO,
        reached: BTreeSet::new(),
        updated: Vec::new(),
    };
    match drive(registry, env, test, case, &base, &target, update).await {
        Ok(done) => {
            result.failures = done.failures;
            result.reached = done.reached;
            result.updated = done.updated;
        }
        Err(Abort(f)) => result.failures.push(f),
    }
    result.duration = started.elapsed();
    result
}

struct Done {
    failures: Vec<Failure>,
    reached: BTreeSet<(String, String)>,
    updated: Vec<String>,
}

async fn drive(
    registry: &Registry,
    env: EnvSource,
    test: &TestFile,
    case: &TestCase,
    base: &str,
    target: &str,
    update: bool,
) -> Result<Done, Abort> {
    let at_case = test.position(&format!("{base}/name"));
    let engine_failure = |what: &str, e: EngineError| {
        Abort(Failure {
            at: at_case.clone(),
            message: format!("{what}: {e}"),
            expected: None,
            actual: None,
        })
    };
    let Some(workflow) = registry.workflows.get(target).cloned() else {
        return Err(Abort(Failure {
            at: at_case.clone(),
            message: format!("no workflow `{target}` is loaded"),
            expected: None,
            actual: None,
        }));
    };
    let given = &case.given;
    let shared = &test.def.given;
    let tz = given.timezone.as_deref().or(shared.timezone.as_deref());
    let (start_text, start_ptr) = match (&given.start, &shared.start) {
        (Some(s), _) => (s.as_str(), format!("{base}/given/start")),
        (None, Some(s)) => (s.as_str(), "/given/start".to_owned()),
        (None, None) => (DEFAULT_START, String::new()),
    };
    let start = parse_time(start_text, tz).map_err(|e| {
        Abort(Failure {
            at: test.position(&start_ptr),
            message: e,
            expected: None,
            actual: None,
        })
    })?;

    let clock = VirtualClock::new(start);
    let recorder = Arc::new(Recorder::default());
    let mut registry = registry.clone();
    Harness::record_channels(&mut registry, &recorder, &clock);
    let contact_config = registry.config.contacts.clone();
    let harness = Harness::with_clock(registry, env, clock)
        .await
        .map_err(|e| engine_failure("the case's store could not be set up", e))?;
    let answers = given
        .http
        .clone()
        .or_else(|| shared.http.clone())
        .unwrap_or_default();
    let canned = Arc::new(Canned {
        used: Mutex::new(vec![0; answers.len()]),
        answers,
        unanswered: Mutex::new(Vec::new()),
    });
    harness.engine.stub_http(canned.clone());

    let contacts = given
        .contacts
        .as_ref()
        .or(shared.contacts.as_ref())
        .cloned()
        .unwrap_or_default();
    let contacts_ptr = if given.contacts.is_some() {
        format!("{base}/given/contacts")
    } else {
        "/given/contacts".to_owned()
    };
    let mut seeds = Vec::new();
    for (i, c) in contacts.iter().enumerate() {
        let seed = crate::harness::contact_from_json(&contact_json(c), &contact_config, start)
            .map_err(|e| {
                Abort(Failure {
                    at: test.position(&format!("{contacts_ptr}/{i}")),
                    message: e,
                    expected: None,
                    actual: None,
                })
            })?;
        seeds.push(seed);
    }
    if !seeds.is_empty() {
        harness
            .seed_contacts(seeds)
            .await
            .map_err(|e| engine_failure("the contacts could not be stored", e))?;
    }

    let mut cx = Case {
        test,
        case,
        base: base.to_owned(),
        harness,
        recorder,
        canned,
        alert: workflow.alert.as_deref().cloned(),
        workflow,
        root: None,
        failures: Vec::new(),
        update,
        updated: Vec::new(),
        contacts: contact_config,
        messages_in: 0,
    };
    cx.trigger(tz).await?;
    for (j, entry) in case.timeline.iter().enumerate() {
        let p = format!("{base}/timeline/{j}");
        cx.step(entry, &p).await?;
    }
    let settled = cx
        .harness
        .run_to_end()
        .await
        .map_err(|e| engine_failure("the case stopped", e))?;
    if settled == Settled::GaveUp {
        cx.failures.push(Failure {
            at: at_case.clone(),
            message: format!(
                "the runs were still going after {} clock jumps: a retry or a loop that never ends?",
                crate::harness::MAX_JUMPS
            ),
            expected: None,
            actual: None,
        });
    }
    if let Some(e) = &case.expect {
        cx.check(e, &format!("{base}/expect")).await?;
    }
    // A call with no canned answer fails the case even when its expectations did not look at
    // the step: an unanswered call means the test does not describe the world it runs in.
    let unanswered = crate::sync::lock(&cx.canned.unanswered).clone();
    for call in unanswered {
        cx.failures.push(Failure {
            at: test.position(&format!("{base}/name")),
            message: format!(
                "an `http` step called {call}, which has no canned answer; add it under `given.http`"
            ),
            expected: None,
            actual: None,
        });
    }
    let mut reached = BTreeSet::new();
    let reports = cx
        .harness
        .report()
        .await
        .map_err(|e| engine_failure("the case's runs could not be read", e))?;
    for r in reports {
        for s in r.steps {
            reached.insert((r.run.workflow_id.clone(), s.step_id));
        }
    }
    Ok(Done {
        failures: cx.failures,
        reached,
        updated: cx.updated,
    })
}

impl Case<'_> {
    fn pos(&self, pointer: &str) -> String {
        self.test.position(pointer)
    }

    fn fail(&mut self, pointer: &str, message: impl Into<String>) {
        let at = self.pos(pointer);
        self.failures.push(Failure {
            at,
            message: message.into(),
            expected: None,
            actual: None,
        });
    }

    fn fail_diff(
        &mut self,
        pointer: &str,
        message: impl Into<String>,
        expected: String,
        actual: String,
    ) {
        let at = self.pos(pointer);
        self.failures.push(Failure {
            at,
            message: message.into(),
            expected: Some(expected),
            actual: Some(actual),
        });
    }

    /// Signs the test's request as a sender with the trigger's secrets would (unless the test
    /// wrote the auth headers itself) and puts it through the same check `herald serve`
    /// makes, so a trigger whose `auth` cannot pass fails its test.
    fn check_auth(
        &self,
        pointer: &str,
        auth: &crate::definitions::model::trigger::WebhookAuth,
        given: &indexmap::IndexMap<String, String>,
        body: &Value,
        now: Millis,
    ) -> Result<(), Abort> {
        use crate::triggers::webhook_auth::{Verifier, sign};
        let env = &self.harness.engine.env;
        let raw = serde_json::to_vec(body).unwrap_or_default();
        let at = jiff::Timestamp::from_millisecond(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let mut headers = axum::http::HeaderMap::new();
        for (k, v) in given {
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::from_bytes(k.as_bytes()),
                axum::http::HeaderValue::from_str(v),
            ) {
                headers.insert(name, value);
            }
        }
        let signed = sign(auth, env, &raw, at).map_err(|e| self.abort(pointer, e))?;
        if !signed.iter().any(|(name, _)| headers.contains_key(name)) {
            for (name, value) in signed {
                if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
        }
        let verifier = Verifier::new(auth, env).map_err(|e| self.abort(pointer, e))?;
        verifier
            .verify(&headers, &raw, at)
            .map(|_| ())
            .map_err(|e| {
                self.abort(
                    pointer,
                    format!(
                        "the webhook's `{}` auth refused the request: {e}",
                        auth.scheme()
                    ),
                )
            })
    }

    fn abort(&self, pointer: &str, message: impl Into<String>) -> Abort {
        Abort(Failure {
            at: self.pos(pointer),
            message: message.into(),
            expected: None,
            actual: None,
        })
    }

    fn first_trigger(&self, key: &str) -> Option<&TriggerDef> {
        self.workflow
            .workflow
            .triggers
            .iter()
            .find(|t| t.key() == key)
    }

    async fn trigger(&mut self, tz: Option<&str>) -> Result<(), Abort> {
        let Some(trigger) = &self.case.trigger else {
            let p = format!("{}/name", self.base);
            return match &self.alert {
                // An alert is evaluated from the start, as a server that just started would.
                Some(alert) => alerts::evaluate(&self.harness, alert)
                    .await
                    .map_err(|e| self.abort(&p, e)),
                // A broadcast or recurring campaign enrolls by itself as the clock reaches
                // its times.
                None if self
                    .workflow
                    .campaign
                    .as_ref()
                    .is_some_and(|c| c.enrolls_itself()) =>
                {
                    Ok(())
                }
                None => Err(self.abort(&p, "this case has no `trigger`")),
            };
        };
        let p = format!("{}/trigger/{}", self.base, trigger.key());
        let engine = self.harness.engine.clone();
        let before = self.harness.engine.now();
        let start = match trigger {
            TestTrigger::Webhook(w) => {
                let Some(TriggerDef::Webhook(def)) = self.first_trigger("webhook") else {
                    return Err(self.abort(&p, "the target has no webhook trigger"));
                };
                let strings =
                    |m: &indexmap::IndexMap<String, String>, lower: bool| -> Map<String, Value> {
                        m.iter()
                            .map(|(k, v)| {
                                let k = if lower {
                                    k.to_ascii_lowercase()
                                } else {
                                    k.clone()
                                };
                                (k, Value::String(v.clone()))
                            })
                            .collect()
                    };
                let body = w.body.clone().unwrap_or_else(|| json!({}));
                if let Some(auth) = &def.auth {
                    self.check_auth(&p, auth, &w.headers, &body, before)?;
                }
                Some(Trigger::Webhook {
                    method: def.method.as_str().to_owned(),
                    path: def.path.clone(),
                    body,
                    headers: strings(&w.headers, true),
                    query: strings(&w.query, false),
                    params: strings(&w.params, false),
                })
            }
            TestTrigger::Cron(_) if self.workflow.campaign.is_some() => {
                return Err(self.abort(
                    &p,
                    "a campaign's schedule enrolls it: leave `trigger` out and move the clock with `timeline: [{ after: ... }]`",
                ));
            }
            TestTrigger::Cron(c) => {
                let Some(TriggerDef::Cron(def)) = self.first_trigger("cron") else {
                    return Err(self.abort(&p, "the target has no cron trigger"));
                };
                let slot = match &c.at {
                    Some(at) => {
                        parse_time(at, tz).map_err(|e| self.abort(&format!("{p}/at"), e))?
                    }
                    None => before,
                };
                if slot > before {
                    self.harness
                        .advance(Duration::from_millis((slot - before) as u64))
                        .await
                        .map_err(|e| self.abort(&p, e.to_string()))?;
                }
                Some(Trigger::Cron {
                    schedule: def.schedule.clone(),
                    timezone: def.timezone.clone(),
                    slot,
                    input: def.input.clone().unwrap_or_else(|| json!({})),
                })
            }
            TestTrigger::Call(c) => Some(Trigger::Manual {
                input: c.input.clone().unwrap_or_else(|| json!({})),
            }),
            TestTrigger::Event(e) => {
                let name = match (&e.name, self.first_trigger("event")) {
                    (Some(n), _) => n.clone(),
                    (None, Some(TriggerDef::Event(def))) => def.name.clone(),
                    _ => {
                        return Err(
                            self.abort(&p, "name the event: the target has no event trigger")
                        );
                    }
                };
                engine
                    .emit(
                        &name,
                        e.key.as_deref(),
                        e.data.clone().unwrap_or_else(|| json!({})),
                    )
                    .await
                    .map_err(|err| {
                        self.abort(&p, format!("the event could not be emitted: {err}"))
                    })?;
                None
            }
            TestTrigger::Message(m) => {
                let channel = match (&m.channel, self.first_trigger("message")) {
                    (Some(c), _) => c.clone(),
                    (None, Some(TriggerDef::Message(def))) => def.channel.clone(),
                    _ => {
                        return Err(
                            self.abort(&p, "name the channel: the target has no message trigger")
                        );
                    }
                };
                self.inbound(&channel, &m.from, &m.text, &p).await?;
                None
            }
        };
        if let Some(trigger) = start {
            let started = self
                .harness
                .start(self.workflow.clone(), trigger)
                .await
                .map_err(|e| self.abort(&p, format!("the run could not start: {e}")))?;
            self.root = Some(started.run_id);
        }
        self.harness
            .settle()
            .await
            .map_err(|e| self.abort(&p, e.to_string()))?;
        if self.root.is_none() {
            // Started by an event or a message: the run under test is the target's first.
            let runs = self
                .harness
                .report()
                .await
                .map_err(|e| self.abort(&p, e.to_string()))?;
            self.root = runs
                .into_iter()
                .find(|r| r.run.workflow_id == self.workflow.id)
                .map(|r| r.run.id);
            if self.root.is_none() {
                self.fail(
                    &p,
                    format!(
                        "this {} started no run of `{}` (a filter, a keyword or the channel did not match)",
                        trigger.key(),
                        self.workflow.id
                    ),
                );
            }
        }
        Ok(())
    }

    async fn inbound(
        &mut self,
        channel: &str,
        from: &str,
        text: &str,
        p: &str,
    ) -> Result<(), Abort> {
        self.messages_in += 1;
        let id = format!("test-message-{}", self.messages_in);
        self.harness
            .engine
            .inbound_message(channel, from, text, Some(&id))
            .await
            .map_err(|e| self.abort(p, format!("the message could not be taken: {e}")))?;
        Ok(())
    }

    async fn step(&mut self, entry: &TimelineEntry, p: &str) -> Result<(), Abort> {
        match entry {
            TimelineEntry::After(d) => match &self.alert {
                Some(alert) => alerts::advance(&self.harness, alert, d.as_std())
                    .await
                    .map_err(|e| self.abort(p, e))?,
                None => self
                    .harness
                    .advance(d.as_std())
                    .await
                    .map_err(|e| self.abort(p, e.to_string()))?,
            },
            TimelineEntry::Event(e) => {
                let name = e.name.clone().unwrap_or_default();
                self.harness
                    .engine
                    .emit(
                        &name,
                        e.key.as_deref(),
                        e.data.clone().unwrap_or_else(|| json!({})),
                    )
                    .await
                    .map_err(|err| {
                        self.abort(p, format!("the event could not be emitted: {err}"))
                    })?;
            }
            TimelineEntry::Message(m) => {
                let channel = m.channel.clone().unwrap_or_default();
                self.inbound(&channel, &m.from, &m.text, p).await?;
            }
            TimelineEntry::Contact(c) => {
                let now = self.harness.engine.now();
                let seed = crate::harness::contact_from_json(&contact_json(c), &self.contacts, now)
                    .map_err(|e| self.abort(&format!("{p}/contact"), e))?;
                self.harness
                    .seed_contacts(vec![seed])
                    .await
                    .map_err(|e| self.abort(p, e.to_string()))?;
            }
            TimelineEntry::Expect(e) => {
                self.harness
                    .settle()
                    .await
                    .map_err(|err| self.abort(p, err.to_string()))?;
                return self.check(e, &format!("{p}/expect")).await;
            }
        }
        self.harness
            .settle()
            .await
            .map_err(|e| self.abort(p, e.to_string()))
    }

    async fn check(&mut self, e: &Expect, p: &str) -> Result<(), Abort> {
        if let Some(want) = &e.alerts {
            let pointer = format!("{p}/alerts");
            match &self.alert {
                None => self.fail(&pointer, "the target is not an alert"),
                Some(alert) => {
                    let got = alerts::instances(&self.harness, alert)
                        .await
                        .map_err(|err| self.abort(&pointer, err))?;
                    if let Some((expected, actual)) = alerts::compare(want, &got) {
                        self.fail_diff(
                            &pointer,
                            format!(
                                "alert `{}` does not have the instances expected at {}",
                                alert.id(),
                                crate::engine::clock::rfc3339(self.harness.engine.now())
                            ),
                            expected,
                            actual,
                        );
                    }
                }
            }
        }
        let messages = self.recorder.messages();
        let start = self.harness.started_at;
        // Each expected message takes a different delivered one.
        let mut used = vec![false; messages.len()];
        for (i, m) in e.sent.iter().enumerate() {
            let found = messages
                .iter()
                .enumerate()
                .find(|(k, msg)| !used[*k] && message_matches(m, msg));
            match found {
                Some((k, _)) => used[k] = true,
                None => {
                    let closest = messages
                        .iter()
                        .max_by_key(|msg| closeness(m, msg))
                        .map(|msg| message_as_match(m, msg))
                        .unwrap_or_else(|| "(no message was sent)\n".to_owned());
                    self.fail_diff(
                        &format!("{p}/sent/{i}"),
                        format!(
                            "expected a message like this one, but none of the {} sent matches; the closest:",
                            messages.len()
                        ),
                        describe_match(m),
                        closest,
                    );
                }
            }
        }
        for (i, m) in e.not_sent.iter().enumerate() {
            if let Some(msg) = messages.iter().find(|msg| message_matches(m, msg)) {
                let text = render_message(msg, start);
                self.fail(
                    &format!("{p}/not_sent/{i}"),
                    format!("a message that must not be sent was sent:\n{text}"),
                );
            }
        }
        if let Some(n) = e.sent_count
            && n != messages.len()
        {
            let all: String = messages.iter().map(|m| render_message(m, start)).collect();
            self.fail(
                &format!("{p}/sent_count"),
                format!(
                    "expected {n} message{} sent, found {}:\n{all}",
                    plural(n),
                    messages.len()
                ),
            );
        }
        if let Some(g) = &e.golden {
            self.golden(g, &messages, &format!("{p}/golden"));
        }

        let store = self.harness.engine.store.clone();
        let run = match &self.root {
            Some(id) => store
                .run(id)
                .await
                .map_err(|err| self.abort(p, err.to_string()))?,
            None => None,
        };
        let wants_run = e.status.is_some()
            || e.error.is_some()
            || e.vars.is_some()
            || !e.outputs.is_empty()
            || !e.taken.is_empty()
            || !e.skipped.is_empty()
            || e.response.is_some();
        if wants_run && run.is_none() {
            self.fail(
                p,
                "there is no run under test to check: the trigger started none",
            );
            return Ok(());
        }
        if let Some(run) = &run {
            if let Some(want) = e.status {
                let got = match run.status {
                    RunStatus::Pending | RunStatus::Running => "waiting",
                    other => other.as_str(),
                };
                if got != want.as_str() {
                    let why = run
                        .error
                        .as_ref()
                        .map(|er| format!(" ({er})"))
                        .unwrap_or_default();
                    self.fail(
                        &format!("{p}/status"),
                        format!(
                            "expected the run to be {}, but it is {got}{why}",
                            want.as_str()
                        ),
                    );
                }
            }
            if let Some(t) = &e.error {
                match &run.error {
                    Some(er) if text_matches(t, er) => {}
                    Some(er) => self.fail_diff(
                        &format!("{p}/error"),
                        "the run's error is not the one expected",
                        describe_text(t),
                        format!("{er}\n"),
                    ),
                    None => self.fail(
                        &format!("{p}/error"),
                        format!(
                            "expected the run to fail with an error, but it is {}",
                            run.status.as_str()
                        ),
                    ),
                }
            }
            if let Some(v) = &e.vars {
                let vars = run.context.get("vars").cloned().unwrap_or(json!({}));
                if let Some(m) = json_mismatch(v, &vars, "vars") {
                    self.fail_diff(&format!("{p}/vars"), m, pretty(v), pretty(&vars));
                }
            }
            for (id, want) in &e.outputs {
                let got = run
                    .context
                    .pointer(&format!(
                        "/steps/{}/output",
                        crate::definitions::source::escape_token(id)
                    ))
                    .cloned();
                let ptr = format!(
                    "{p}/outputs/{}",
                    crate::definitions::source::escape_token(id)
                );
                match got {
                    Some(got) => {
                        if let Some(m) = json_mismatch(want, &got, &format!("steps.{id}.output")) {
                            self.fail_diff(&ptr, m, pretty(want), pretty(&got));
                        }
                    }
                    None => self.fail(&ptr, format!("step `{id}` has no output: it did not run")),
                }
            }
            if !e.taken.is_empty() || !e.skipped.is_empty() {
                let log = store
                    .step_log(&run.id)
                    .await
                    .map_err(|err| self.abort(p, err.to_string()))?;
                let ran: BTreeSet<&str> = log.iter().map(|s| s.step_id.as_str()).collect();
                let order: Vec<&str> = {
                    let mut seen = Vec::new();
                    for s in &log {
                        if !seen.contains(&s.step_id.as_str()) {
                            seen.push(s.step_id.as_str());
                        }
                    }
                    seen
                };
                for (i, id) in e.taken.iter().enumerate() {
                    if !ran.contains(id.as_str()) {
                        self.fail(
                            &format!("{p}/taken/{i}"),
                            format!(
                                "step `{id}` was not taken; the run took: {}",
                                order.join(", ")
                            ),
                        );
                    }
                }
                for (i, id) in e.skipped.iter().enumerate() {
                    if ran.contains(id.as_str()) {
                        self.fail(
                            &format!("{p}/skipped/{i}"),
                            format!("step `{id}` was taken, but it should have been skipped; the run took: {}", order.join(", ")),
                        );
                    }
                }
            }
            if let Some(r) = &e.response {
                let reply = match &run.response {
                    Some(v) => Some(SyncReply::from_value(v)),
                    None if run.status.is_finished() => Some(SyncReply::from_finished(
                        &run.id,
                        run.status,
                        &run.context,
                        run.error.as_deref(),
                    )),
                    None => None,
                };
                let rp = format!("{p}/response");
                match reply {
                    None => self.fail(&rp, "the run has not answered the webhook yet"),
                    Some(reply) => {
                        if let Some(s) = r.status
                            && s != reply.status
                        {
                            self.fail(
                                &format!("{rp}/status"),
                                format!(
                                    "expected status {s}, the webhook was answered {}",
                                    reply.status
                                ),
                            );
                        }
                        if let Some(b) = &r.body
                            && let Some(m) = json_mismatch(b, &reply.body, "body")
                        {
                            self.fail_diff(
                                &format!("{rp}/body"),
                                m,
                                pretty(b),
                                pretty(&reply.body),
                            );
                        }
                        for (name, t) in &r.headers {
                            let got = reply
                                .headers
                                .iter()
                                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                                .map(|(_, v)| v.clone());
                            let hp = format!(
                                "{rp}/headers/{}",
                                crate::definitions::source::escape_token(name)
                            );
                            match got {
                                Some(v) if text_matches(t, &v) => {}
                                Some(v) => self.fail_diff(
                                    &hp,
                                    format!("header `{name}` is not the one expected"),
                                    describe_text(t),
                                    format!("{v}\n"),
                                ),
                                None => self.fail(&hp, format!("the reply has no header `{name}`")),
                            }
                        }
                    }
                }
            }
        }
        for (i, c) in e.contacts.iter().enumerate() {
            let cp = format!("{p}/contacts/{i}");
            let email = c.email.as_deref().map(|e| e.trim().to_lowercase());
            let phone = match &c.phone {
                Some(ph) => {
                    match crate::engine::contact::normalize_phone(ph, &self.contacts.default_region)
                    {
                        Some(n) => Some(n),
                        None => {
                            self.fail(
                                &format!("{cp}/phone"),
                                format!("`{ph}` is not a phone number"),
                            );
                            continue;
                        }
                    }
                }
                None => None,
            };
            let found = store
                .find_contact(email.as_deref(), phone.as_deref())
                .await
                .map_err(|err| self.abort(p, err.to_string()))?;
            let Some(found) = found else {
                self.fail(
                    &cp,
                    format!(
                        "no contact {} is stored",
                        email.or(phone).unwrap_or_default()
                    ),
                );
                continue;
            };
            let want = contact_json(c);
            let mut got = serde_json::to_value(&found).unwrap_or(json!({}));
            if let Some(obj) = got.as_object_mut() {
                for k in ["id", "created_at", "updated_at", "addresses"] {
                    obj.remove(k);
                }
            }
            if let Some(m) = json_mismatch(&want, &got, "contact") {
                self.fail_diff(&cp, m, pretty(&want), pretty(&got));
            }
        }
        Ok(())
    }

    fn golden(&mut self, rel: &str, messages: &[Recorded], pointer: &str) {
        let dir = self
            .test
            .path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let path = dir.join(rel);
        let start = self.harness.started_at;
        let actual: String = messages.iter().map(|m| render_message(m, start)).collect();
        if self.update {
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            match std::fs::write(&path, &actual) {
                Ok(()) => self.updated.push(path.display().to_string()),
                Err(e) => self.fail(pointer, format!("cannot write {}: {e}", path.display())),
            }
            return;
        }
        match std::fs::read_to_string(&path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => self.fail_diff(
                pointer,
                format!(
                    "the messages differ from the golden file {} (run `herald test --update` if the change is intended)",
                    path.display()
                ),
                expected,
                actual,
            ),
            Err(_) => self.fail(
                pointer,
                format!(
                    "the golden file {} does not exist; `herald test --update` writes it",
                    path.display()
                ),
            ),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

pub fn text_matches(m: &TextMatch, actual: &str) -> bool {
    match m {
        TextMatch::Exact(s) => s == actual,
        TextMatch::Rule(r) => {
            r.contains.as_deref().is_none_or(|c| actual.contains(c))
                && r.matches
                    .as_deref()
                    .is_none_or(|re| regex::Regex::new(re).is_ok_and(|re| re.is_match(actual)))
        }
    }
}

fn describe_text(m: &TextMatch) -> String {
    match m {
        TextMatch::Exact(s) => format!("{s}\n"),
        TextMatch::Rule(r) => match (&r.contains, &r.matches) {
            (Some(c), _) => format!("(contains) {c}\n"),
            (None, Some(re)) => format!("(matches) /{re}/\n"),
            (None, None) => "(anything)\n".into(),
        },
    }
}

fn message_matches(m: &MessageMatch, msg: &Recorded) -> bool {
    m.channel.as_deref().is_none_or(|c| c == msg.channel)
        && m.to.as_ref().is_none_or(|t| text_matches(t, &msg.to))
        && m.subject
            .as_ref()
            .is_none_or(|t| text_matches(t, msg.subject.as_deref().unwrap_or("")))
        && m.body.as_ref().is_none_or(|t| text_matches(t, &msg.body))
}

/// How many of the fields a matcher names a message agrees with, channel first.
fn closeness(m: &MessageMatch, msg: &Recorded) -> usize {
    let mut n = 0;
    if m.channel.as_deref().is_some_and(|c| c == msg.channel) {
        n += 4;
    }
    if m.to.as_ref().is_some_and(|t| text_matches(t, &msg.to)) {
        n += 2;
    }
    if m.subject
        .as_ref()
        .is_some_and(|t| text_matches(t, msg.subject.as_deref().unwrap_or("")))
    {
        n += 1;
    }
    if m.body.as_ref().is_some_and(|t| text_matches(t, &msg.body)) {
        n += 1;
    }
    n
}

fn field_lines(out: &mut String, name: &str, value: &str) {
    for (i, line) in value.lines().enumerate() {
        if i == 0 {
            out.push_str(&format!("{name}: {line}\n"));
        } else {
            out.push_str(&format!("{:width$}  {line}\n", "", width = name.len()));
        }
    }
    if value.is_empty() {
        out.push_str(&format!("{name}: \n"));
    }
}

/// A matcher as lines of `field: value`, to be compared with [`message_as_match`].
fn describe_match(m: &MessageMatch) -> String {
    let mut out = String::new();
    if let Some(c) = &m.channel {
        field_lines(&mut out, "channel", c);
    }
    for (name, t) in [("to", &m.to), ("subject", &m.subject), ("body", &m.body)] {
        if let Some(t) = t {
            field_lines(&mut out, name, describe_text(t).trim_end_matches('\n'));
        }
    }
    out
}

/// A delivered message as the same lines as the matcher it is compared with, so a diff
/// lines up field by field; a loose match shows its rule again where the message agrees.
fn message_as_match(m: &MessageMatch, msg: &Recorded) -> String {
    let mut out = String::new();
    if m.channel.is_some() {
        field_lines(&mut out, "channel", &msg.channel);
    }
    let subject = msg.subject.clone().unwrap_or_default();
    for (name, t, actual) in [
        ("to", &m.to, msg.to.as_str()),
        ("subject", &m.subject, subject.as_str()),
        ("body", &m.body, msg.body.as_str()),
    ] {
        if let Some(t) = t {
            let shown = if text_matches(t, actual) {
                describe_text(t).trim_end_matches('\n').to_owned()
            } else {
                actual.to_owned()
            };
            field_lines(&mut out, name, &shown);
        }
    }
    out
}

/// A delivered message as text: in failures and golden files.
pub fn render_message(m: &Recorded, start: Millis) -> String {
    let at =
        crate::definitions::model::Duration(Duration::from_millis((m.at - start).max(0) as u64));
    let mut out = format!("--- {} to {} at +{at}", m.channel, m.to);
    if let Some(s) = &m.step_id {
        out.push_str(&format!(" (step {s})"));
    }
    out.push('\n');
    if let Some(s) = &m.subject {
        out.push_str(&format!("subject: {s}\n"));
    }
    out.push_str(&m.body);
    if !m.body.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Where `actual` does not hold what `expected` asks for: an object's keys must be there
/// (others may be too), arrays and scalars must be equal. `None` when it does.
pub fn json_mismatch(expected: &Value, actual: &Value, path: &str) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                let p = format!("{path}.{k}");
                match a.get(k) {
                    Some(got) => {
                        if let Some(m) = json_mismatch(v, got, &p) {
                            return Some(m);
                        }
                    }
                    None => {
                        let mut keys: Vec<&str> = a.keys().map(String::as_str).collect();
                        keys.sort_unstable();
                        return Some(format!(
                            "`{p}` is missing (`{path}` has: {})",
                            if keys.is_empty() {
                                "nothing".into()
                            } else {
                                keys.join(", ")
                            }
                        ));
                    }
                }
            }
            None
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Some(format!(
                    "`{path}` has {} item{}, expected {}",
                    a.len(),
                    plural(a.len()),
                    e.len()
                ));
            }
            e.iter()
                .zip(a)
                .enumerate()
                .find_map(|(i, (x, y))| json_mismatch(x, y, &format!("{path}[{i}]")))
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        (x, y) if x == y => None,
        (x, y) => Some(format!("`{path}` is {y}, expected {x}")),
    }
}

/// Every step of every loaded workflow that no case reached, by workflow, in file order.
pub fn uncovered(
    registry: &Registry,
    reached: &BTreeSet<(String, String)>,
) -> Vec<(String, Vec<(String, String)>)> {
    let mut ids: Vec<&String> = registry.workflows.keys().collect();
    ids.sort();
    let mut out = Vec::new();
    for id in ids {
        let wf = &registry.workflows[id];
        let missing: Vec<(String, String)> = wf
            .workflow
            .all_steps()
            .into_iter()
            .filter(|s| !reached.contains(&(id.clone(), s.id.clone())))
            .map(|s| {
                (
                    s.id.clone(),
                    wf.locations.get(&s.id).cloned().unwrap_or_default(),
                )
            })
            .collect();
        if !missing.is_empty() {
            out.push((id.clone(), missing));
        }
    }
    out
}

/// Total steps of every loaded workflow, for a coverage figure.
pub fn step_count(registry: &Registry) -> usize {
    registry
        .workflows
        .values()
        .map(|w| w.workflow.all_steps().len())
        .sum()
}

/// Lines of `expected` and `actual`, aligned by their longest common subsequence:
/// `(' ' | '-' | '+', line)`.
pub fn line_diff<'a>(expected: &'a str, actual: &'a str) -> Vec<(char, &'a str)> {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    // Test output is small: the quadratic table is fine, and it keeps this dependency-free.
    if a.len() * b.len() > 4_000_000 {
        let mut out: Vec<(char, &str)> = a.iter().map(|l| ('-', *l)).collect();
        out.extend(b.iter().map(|l| ('+', *l)));
        return out;
    }
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            out.push(('-', a[i]));
            i += 1;
        } else {
            out.push(('+', b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|l| ('-', *l)));
    out.extend(b[j..].iter().map(|l| ('+', *l)));
    out
}
