//! `kind: test`: cases that run a definition offline, on a virtual clock, and check what it
//! did. They live in the project's `tests/` folder (`paths.tests` in herald.yaml) and are run
//! by `herald test`.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::common::Duration;
use super::trigger::HttpMethod;

/// A test file: one or more cases for the project's definitions.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Herald test")]
pub struct TestDef {
    /// Always `test` for this kind.
    pub kind: TestKind,
    /// The workflow every case tests, unless a case names its own `target`.
    #[serde(default)]
    pub target: Option<String>,
    /// What these cases are about, in a sentence.
    #[serde(default)]
    pub description: Option<String>,
    /// What every case starts from. A case's own `given` replaces a field of it that it sets.
    #[serde(default)]
    pub given: Given,
    /// The cases, each run on a fresh, throw-away store.
    #[schemars(length(min = 1))]
    pub cases: Vec<TestCase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestKind {
    Test,
}

/// One case: a world (`given`), what starts the run (`trigger`), what happens next
/// (`timeline`) and what must be true at the end (`expect`).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// The case's name: printed by `herald test` and matched by `--filter`.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The workflow under test, when it is not the file's `target`.
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub given: Given,
    /// What starts the run under test. A case for an alert has none: the events of its
    /// timeline are what the alert reads, evaluated at each of its ticks as the clock moves.
    #[serde(default)]
    pub trigger: Option<TestTrigger>,
    /// What happens after the trigger, in order: the clock moves, events and messages arrive,
    /// contacts change, and expectations are checked on the way.
    #[serde(default)]
    pub timeline: Vec<TimelineEntry>,
    /// What must be true once the timeline is over and everything due has run.
    #[serde(default)]
    pub expect: Option<Expect>,
}

/// The world a case starts in.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Given {
    /// When the case starts on the virtual clock: RFC 3339 (`2026-03-09T14:00:00Z`), or a
    /// local date and time (`2026-03-09T07:00`) read in `timezone`. Default:
    /// 2026-01-05T09:00:00Z, a Monday morning, so results never depend on today's date.
    #[serde(default)]
    #[schemars(example = "2026-03-09T14:00:00Z")]
    pub start: Option<String>,
    /// The IANA time zone a local `start` and `at` times are read in (default UTC).
    #[serde(default)]
    #[schemars(example = "America/Denver")]
    pub timezone: Option<String>,
    /// Contacts stored before the trigger.
    #[serde(default)]
    pub contacts: Option<Vec<GivenContact>>,
    /// Canned answers for `http` steps (and probes and AI providers), matched by method and
    /// URL. Several for one request are given in turn, each once, then the last again. A call
    /// with no answer fails the case; nothing ever reaches the network.
    #[serde(default)]
    pub http: Option<Vec<CannedHttp>>,
}

/// A contact, as `herald run --contacts` takes them.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GivenContact {
    #[serde(default)]
    pub email: Option<String>,
    /// A phone number; without a country code it is read in `contacts.default_region`.
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    /// `subscribed`, `opted_out`, `unsubscribed`, `bounced`, `complained`, or your own.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub attributes: IndexMap<String, Value>,
}

/// A canned HTTP answer.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CannedHttp {
    /// The method (default GET, as an `http` step's).
    #[serde(default = "CannedHttp::default_method")]
    pub method: HttpMethod,
    /// The URL the step calls, exactly; one ending in `*` matches every URL that starts
    /// with what comes before it.
    #[schemars(example = "https://api.example.com/letters/*")]
    pub url: String,
    /// The status code answered (default 200).
    #[serde(default = "CannedHttp::default_status")]
    #[schemars(range(min = 100, max = 599))]
    pub status: u16,
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// A JSON body.
    #[serde(default)]
    pub json: Option<Value>,
    /// A text body, when the answer is not JSON.
    #[serde(default)]
    pub body: Option<String>,
}

impl CannedHttp {
    fn default_status() -> u16 {
        200
    }
    fn default_method() -> HttpMethod {
        HttpMethod::Get
    }
}

/// What starts the run under test. Exactly one of these keys.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TestTrigger {
    /// A request to the target's webhook. A trigger with `auth` gets the request signed for the
    /// test with its secrets and checked as `herald serve` checks it, so a test need not sign;
    /// write the auth headers yourself to send something else.
    Webhook(WebhookRequest),
    /// The target's cron schedule, firing its slot at the case's start time.
    Cron(CronSlot),
    /// An event the target subscribes to.
    Event(EventInput),
    /// An inbound message on the channel of the target's `message` trigger.
    Message(MessageInput),
    /// A run started by hand (or by a `call`), with this `input`.
    Call(CallInput),
}

impl TestTrigger {
    pub fn key(&self) -> &'static str {
        match self {
            TestTrigger::Webhook(_) => "webhook",
            TestTrigger::Cron(_) => "cron",
            TestTrigger::Event(_) => "event",
            TestTrigger::Message(_) => "message",
            TestTrigger::Call(_) => "call",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// The JSON body.
    #[serde(default)]
    pub body: Option<Value>,
    /// Request headers (names are case-insensitive).
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// Query parameters.
    #[serde(default)]
    pub query: IndexMap<String, String>,
    /// Path parameters, for a path such as `/hooks/{client}/missed-call`.
    #[serde(default)]
    pub params: IndexMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronSlot {
    /// The slot, if it is not the case's start time (the clock moves there first).
    #[serde(default)]
    pub at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// The event's name. Default, as a trigger: the name the target subscribes to.
    #[serde(default)]
    pub name: Option<String>,
    /// The correlation key a `wait_for` matches.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub data: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageInput {
    /// The channel it arrives on. Default, as a trigger: the target's `message` channel.
    #[serde(default)]
    pub channel: Option<String>,
    /// The sender's address: a phone number, an e-mail address, a chat id.
    pub from: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallInput {
    #[serde(default)]
    pub input: Option<Value>,
}

/// One thing that happens after the trigger. Exactly one of these keys.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TimelineEntry {
    /// Move the clock forward by this much, running everything that falls due on the way.
    After(Duration),
    /// Emit an event, as `POST /api/events` does.
    Event(EventInput),
    /// A message arrives, as from a provider (a reply, STOP, a keyword).
    Message(MessageInput),
    /// Change a contact (or add one), as `upsert_contact` does.
    Contact(GivenContact),
    /// Check these expectations now.
    Expect(Box<Expect>),
}

/// What must be true. Message expectations look at every message delivered so far.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Messages that must have been delivered, each matched by a different one, in any order.
    #[serde(default)]
    pub sent: Vec<MessageMatch>,
    /// Messages that must not have been delivered: no delivered message may match one of
    /// these (`{}` matches every message).
    #[serde(default)]
    pub not_sent: Vec<MessageMatch>,
    /// How many messages must have been delivered.
    #[serde(default)]
    pub sent_count: Option<usize>,
    /// A file, relative to this test file, holding every delivered message as text.
    /// `herald test --update` writes it.
    #[serde(default)]
    pub golden: Option<String>,
    /// The status of the run under test.
    #[serde(default)]
    pub status: Option<ExpectedStatus>,
    /// The run's error, for a failed run.
    #[serde(default)]
    pub error: Option<TextMatch>,
    /// Values the run's `vars` must hold (other keys may be there too).
    #[serde(default)]
    pub vars: Option<Value>,
    /// Step outputs, by step id: what each `steps.<id>.output` must hold.
    #[serde(default)]
    pub outputs: IndexMap<String, Value>,
    /// Step ids the run must have executed.
    #[serde(default)]
    pub taken: Vec<String>,
    /// Step ids the run must not have executed.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// Contacts as they must be stored, found by e-mail or phone.
    #[serde(default)]
    pub contacts: Vec<GivenContact>,
    /// The reply of a `respond: sync` webhook.
    #[serde(default)]
    pub response: Option<ExpectedResponse>,
    /// For a case whose target is an alert: its instances that are pending or firing now,
    /// all of them (`[]`: none), each matched by a different one, in any order.
    #[serde(default)]
    pub alerts: Option<Vec<ExpectedAlert>>,
}

/// An alert instance as a test expects it, as promtool's `exp_alerts` does.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedAlert {
    /// Labels it must have (others may be there): its group's, such as `{ tenant: acme }`,
    /// `alertname`, `severity` and the alert's own.
    #[serde(default)]
    pub labels: IndexMap<String, String>,
    /// `firing` (the default) or `pending`.
    #[serde(default)]
    pub state: ExpectedAlertState,
    /// Annotations it must have, rendered, each exactly.
    #[serde(default)]
    pub annotations: IndexMap<String, String>,
    /// The value of its last evaluation.
    #[serde(default)]
    pub value: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedAlertState {
    Pending,
    #[default]
    Firing,
}

impl ExpectedAlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            ExpectedAlertState::Pending => "pending",
            ExpectedAlertState::Firing => "firing",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedStatus {
    Waiting,
    Completed,
    Failed,
    Cancelled,
}

impl ExpectedStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExpectedStatus::Waiting => "waiting",
            ExpectedStatus::Completed => "completed",
            ExpectedStatus::Failed => "failed",
            ExpectedStatus::Cancelled => "cancelled",
        }
    }
}

/// A message to look for. A field left out matches anything.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageMatch {
    /// The channel's name in herald.yaml.
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub to: Option<TextMatch>,
    #[serde(default)]
    pub subject: Option<TextMatch>,
    #[serde(default)]
    pub body: Option<TextMatch>,
}

/// Text to compare: a string is compared exactly; `{contains: ...}` or `{matches: regex}`
/// compare loosely.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TextMatch {
    Exact(String),
    Rule(TextRule),
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextRule {
    /// The text must contain this.
    #[serde(default)]
    pub contains: Option<String>,
    /// The text must match this regular expression (anywhere, unless anchored).
    #[serde(default)]
    pub matches: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedResponse {
    #[serde(default)]
    pub status: Option<u16>,
    /// What the body must hold (an object may have other keys too).
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub headers: IndexMap<String, TextMatch>,
}
