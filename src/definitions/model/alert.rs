//! `kind: alert`: a threshold over what Herald sees, with Prometheus's semantics: a condition
//! that must hold `for` a while before the alert fires, hysteresis to stop it flapping, and a
//! severity, labels and annotations for whoever is told.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use super::common::{DefinitionId, Duration, Metadata, Template};

/// An alert definition, as written in a file under workflows/ beside the workflows.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Herald alert")]
pub struct AlertDef {
    /// Always `alert` for this kind.
    pub kind: AlertKind,
    /// A unique id across all definitions; it is the alert's `alertname`.
    pub id: DefinitionId,
    /// What this alert means, in a sentence.
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
    /// How often the condition is evaluated.
    #[serde(default = "AlertDef::default_every")]
    pub every: Duration,
    /// What the condition reads: exactly one source.
    pub source: AlertSource,
    /// When the alert is active: a comparison and a number, such as `> 0.05` or `< 0.95`,
    /// applied to the source's value.
    pub condition: String,
    /// A firing alert resolves only once this holds (`< 0.03` for `condition: "> 0.05"`),
    /// instead of as soon as the condition stops holding: hysteresis.
    #[serde(default)]
    pub resolve: Option<String>,
    /// How long the condition must hold before the alert fires; until then it is pending.
    /// A single evaluation where it does not hold starts the wait again.
    #[serde(default, rename = "for")]
    pub for_: Option<Duration>,
    /// How long a firing alert keeps firing after its condition stops holding.
    #[serde(default)]
    pub keep_firing_for: Option<Duration>,
    /// What an evaluation with no events in the window means: `ok` (the condition does not
    /// hold), `alerting` (it holds) or `keep_state` (nothing changes).
    #[serde(default)]
    pub no_data: NoData,
    /// How urgent it is; routes and inhibition use it.
    #[serde(default)]
    pub severity: Severity,
    /// Labels every instance carries, rendered with `value` and `labels` (the group's).
    #[serde(default)]
    pub labels: IndexMap<String, Template>,
    /// Text for people (`summary`, `description`, `runbook_url`, ...), rendered with `value`
    /// and `labels`.
    #[serde(default)]
    pub annotations: IndexMap<String, Template>,
}

impl AlertDef {
    pub fn default_every() -> Duration {
        Duration::from_secs(30)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Alert,
}

/// Where an alert's value comes from.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AlertSource {
    /// An aggregate over the events workflows emit and `POST /api/events` receives, over a
    /// sliding window.
    Events(EventsSource),
    /// Herald's own state: the outbox's backlog, how long its oldest due message has waited
    /// and its delivery rate; runs that failed or are stuck, webhook responses and step
    /// latency.
    Metric(MetricSource),
    /// An HTTP check of a service at each evaluation: its status, latency and JSON.
    Probe(ProbeSource),
}

impl AlertSource {
    pub fn key(&self) -> &'static str {
        match self {
            AlertSource::Events(_) => "events",
            AlertSource::Metric(_) => "metric",
            AlertSource::Probe(_) => "probe",
        }
    }
}

/// An aggregate over events of one name.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsSource {
    /// The event's name, such as `payment.attempted`, or several names
    /// (`[message.delivered, message.failed]`), whose events are aggregated together.
    pub name: EventNames,
    /// How far back the aggregate looks.
    pub window: Duration,
    /// How the window's events make one value.
    pub aggregate: Aggregate,
    /// The numeric field for `avg`, `max`, `p50`, `p95` and `p99`, or the field whose
    /// different values `distinct` counts. Fields are paths in the event: `name`, `key`, or
    /// `data.` and a dotted path in its data (`data.latency_ms`, `data.customer.id`).
    #[serde(default)]
    pub field: Option<String>,
    /// Only events with these values count: `{ data.provider: stripe }`.
    #[serde(default, rename = "where")]
    pub where_: IndexMap<String, serde_json::Value>,
    /// For `ratio`: the events counted over all of the window's, such as
    /// `{ data.status: failed }` or `{ name: message.delivered }`.
    #[serde(default)]
    pub matching: IndexMap<String, serde_json::Value>,
    /// A field of the event (`data.channel`): one alert instance per value, labelled with the
    /// field's last name (`channel`).
    #[serde(default)]
    pub group_by: Option<String>,
    /// Fewer events than this in the window is no data, so a ratio over two events does not
    /// fire.
    #[serde(default)]
    pub min_events: u64,
}

/// An HTTP check, made at each of the alert's evaluations (`every`). It passes when the
/// status is one of `status`, the answer came within `max_latency`, and the JSON body has
/// every value of `json`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeSource {
    /// What is checked, such as `https://app.example.com/api/health`. `${env:NAME}` works.
    pub url: String,
    /// GET (the default) or HEAD.
    #[serde(default)]
    pub method: ProbeMethod,
    /// Headers sent with the check, such as `Authorization: Bearer ${env:HEALTH_TOKEN}`.
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// How long the check waits for an answer; no answer by then fails it. Default 10s.
    #[serde(default = "ProbeSource::default_timeout")]
    pub timeout: Duration,
    /// The statuses that pass. Default: any 2xx.
    #[serde(default)]
    pub status: Vec<u16>,
    /// An answer slower than this fails the check.
    #[serde(default)]
    pub max_latency: Option<Duration>,
    /// Values the JSON body must have, by dotted path: `{ status: ok, checks.database: up }`.
    #[serde(default)]
    pub json: IndexMap<String, serde_json::Value>,
    /// What the condition reads: `up`, 1 when the check passed and 0 when it did not (the
    /// default; `condition: "< 1"` fires on a failed check), or `latency_ms`, the time to the
    /// answer in milliseconds (no data when there was none).
    #[serde(default)]
    pub value: ProbeValue,
    /// The service's name in `/health`. Default: the alert's id.
    #[serde(default)]
    pub service: Option<String>,
}

impl ProbeSource {
    pub fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ProbeMethod {
    #[default]
    Get,
    Head,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProbeValue {
    #[default]
    Up,
    LatencyMs,
}

/// One of Herald's own measurements, read from its database at each evaluation.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricSource {
    /// Which measurement. Of the outbox, by channel:
    /// `outbox_backlog` (messages waiting to be handed to their channel),
    /// `outbox_oldest_age` (seconds the oldest message that is due has waited: a stuck
    /// queue), `delivery_rate` (of the messages that finished in the `window`, the share the
    /// provider accepted, from 0 to 1; no data when none finished).
    /// Of the runs, by workflow: `run_failures` (runs that failed in the `window`),
    /// `runs_stuck` (runs ready to go, or going, that have not moved for `stuck_after`),
    /// `webhook_responses` (responses to the workflow's webhooks in the `window`, counted by
    /// the minute, of the `status` given) and `step_latency` (the `quantile` of how long its
    /// steps took, in seconds, over the steps that finished in the `window`).
    pub name: MetricName,
    /// How far back `run_failures`, `delivery_rate`, `webhook_responses` and `step_latency`
    /// look. Default 15m.
    #[serde(default = "MetricSource::default_window")]
    pub window: Duration,
    /// How long a run may sit without progress before `runs_stuck` counts it. Default 15m.
    #[serde(default = "MetricSource::default_window")]
    pub stuck_after: Duration,
    /// Only this channel's messages (outbox measurements).
    #[serde(default)]
    pub channel: Option<String>,
    /// Only this workflow's runs (run measurements).
    #[serde(default)]
    pub workflow: Option<String>,
    /// One alert instance per channel (outbox measurements) or per workflow (run
    /// measurements), labelled `channel` or `workflow`.
    #[serde(default)]
    pub group_by: bool,
    /// For `webhook_responses`: the statuses counted, as codes (`500`) or classes (`5xx`).
    /// Default: every response.
    #[serde(default)]
    pub status: Vec<StatusMatch>,
    /// For `step_latency`: which quantile, 0.5, 0.95 or 0.99. Default 0.95.
    #[serde(default)]
    pub quantile: Option<f64>,
}

impl MetricSource {
    pub fn default_window() -> Duration {
        Duration::from_secs(15 * 60)
    }

    /// The quantile `step_latency` reads.
    pub fn quantile(&self) -> f64 {
        self.quantile.unwrap_or(0.95)
    }
}

/// An HTTP status, or a class of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusMatch {
    /// One status, such as `503`.
    Code(u16),
    /// A class: `1xx`, `2xx`, `3xx`, `4xx` or `5xx`.
    Class(String),
}

impl StatusMatch {
    /// The statuses it stands for, inclusive; `None` for a class that is not one.
    pub fn range(&self) -> Option<(u16, u16)> {
        match self {
            StatusMatch::Code(c) => (100..=599).contains(c).then_some((*c, *c)),
            StatusMatch::Class(s) => match s.as_bytes() {
                [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                    let base = u16::from(d - b'0') * 100;
                    Some((base, base + 99))
                }
                _ => None,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    OutboxBacklog,
    OutboxOldestAge,
    DeliveryRate,
    RunFailures,
    RunsStuck,
    WebhookResponses,
    StepLatency,
}

impl MetricName {
    /// Whether it measures the outbox (by channel) rather than runs (by workflow).
    pub fn of_outbox(self) -> bool {
        matches!(
            self,
            MetricName::OutboxBacklog | MetricName::OutboxOldestAge | MetricName::DeliveryRate
        )
    }

    /// Whether a group with nothing to measure is 0 (an empty queue is a healthy one), rather
    /// than no data: a rate or a latency of nothing is not a figure.
    pub fn zero_when_empty(self) -> bool {
        !matches!(self, MetricName::DeliveryRate | MetricName::StepLatency)
    }

    pub fn name(self) -> &'static str {
        match self {
            MetricName::OutboxBacklog => "outbox_backlog",
            MetricName::OutboxOldestAge => "outbox_oldest_age",
            MetricName::DeliveryRate => "delivery_rate",
            MetricName::RunFailures => "run_failures",
            MetricName::RunsStuck => "runs_stuck",
            MetricName::WebhookResponses => "webhook_responses",
            MetricName::StepLatency => "step_latency",
        }
    }
}

/// One event name or several.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EventNames {
    One(String),
    Many(Vec<String>),
}

impl EventNames {
    pub fn names(&self) -> &[String] {
        match self {
            EventNames::One(n) => std::slice::from_ref(n),
            EventNames::Many(ns) => ns,
        }
    }
}

/// How a window's events make one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// How many events.
    Count,
    /// Events per second over the window.
    Rate,
    /// The share of events that are `matching`, from 0 to 1.
    Ratio,
    /// The mean of `field`.
    Avg,
    /// The largest `field`.
    Max,
    /// The median of `field`.
    P50,
    /// The 95th percentile of `field`.
    P95,
    /// The 99th percentile of `field`.
    P99,
    /// How many different values `field` has.
    Distinct,
}

impl Aggregate {
    /// Whether it reads `field`.
    pub fn needs_field(self) -> bool {
        !matches!(self, Aggregate::Count | Aggregate::Rate | Aggregate::Ratio)
    }

    /// Whether it reads `field` as a number.
    pub fn numeric(self) -> bool {
        self.needs_field() && self != Aggregate::Distinct
    }

    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Rate => "rate",
            Aggregate::Ratio => "ratio",
            Aggregate::Avg => "avg",
            Aggregate::Max => "max",
            Aggregate::P50 => "p50",
            Aggregate::P95 => "p95",
            Aggregate::P99 => "p99",
            Aggregate::Distinct => "distinct",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    /// No data: the condition does not hold.
    #[default]
    Ok,
    /// No data: the condition holds (something that should report has gone quiet).
    Alerting,
    /// No data: the alert stays as it is.
    KeepState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}
