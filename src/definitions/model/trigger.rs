//! What starts a workflow run.

use schemars::JsonSchema;
use serde::Deserialize;

use super::common::{Duration, Expr, Template};

/// One way a workflow starts. Each trigger is a mapping with exactly one of these keys.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// Run on a schedule.
    Cron(CronTrigger),
    /// Run when an HTTP request arrives.
    Webhook(WebhookTrigger),
    /// Run when a message arrives on a channel (an SMS, say).
    Message(MessageTrigger),
    /// Run when another workflow emits an event.
    Event(EventTrigger),
}

impl Trigger {
    pub fn key(&self) -> &'static str {
        match self {
            Trigger::Cron(_) => "cron",
            Trigger::Webhook(_) => "webhook",
            Trigger::Message(_) => "message",
            Trigger::Event(_) => "event",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronTrigger {
    /// A standard 5-field cron expression: minute hour day-of-month month day-of-week.
    /// Weekdays count from 0 = Sunday, as in POSIX cron; names (MON-FRI) work too.
    #[schemars(example = "0 7 * * MON-FRI")]
    pub schedule: String,
    /// The IANA time zone the schedule is read in. Daylight saving is handled: a time that is
    /// skipped runs at the next valid minute, a repeated hour runs once.
    #[serde(default = "CronTrigger::default_timezone")]
    #[schemars(example = "America/Denver")]
    pub timezone: String,
    /// What to do with slots missed while Herald was down: run none, only the latest, or all.
    /// Every missed slot is recorded either way.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Missed slots older than this are recorded as missed and never run.
    #[serde(default = "CronTrigger::default_window")]
    pub catch_up_window: Duration,
    /// Whether a slot may start while the previous run of this trigger is still going.
    #[serde(default)]
    pub overlap: Overlap,
    /// Input given to each run, available as `input`.
    #[serde(default)]
    pub input: Option<serde_json::Value>,
}

impl CronTrigger {
    fn default_timezone() -> String {
        "UTC".into()
    }
    fn default_window() -> Duration {
        Duration::from_secs(86_400)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Record missed slots as skipped; run nothing.
    None,
    /// Run the most recent missed slot; record the others as skipped.
    #[default]
    Latest,
    /// Run every missed slot within the window, oldest first.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Record the slot as skipped if the previous run is still going.
    #[default]
    Skip,
    /// Start a run for every slot.
    Allow,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookTrigger {
    /// The URL path, starting with '/'. Segments in braces are parameters, available as
    /// `params.<name>`: /hooks/{tenant}/leads.
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/{}-]*$"))]
    #[schemars(example = "/hooks/leads")]
    pub path: String,
    #[serde(default)]
    pub method: HttpMethod,
    /// How callers prove who they are. Checked before anything is stored.
    #[serde(default)]
    pub auth: Option<WebhookAuth>,
    /// A template giving each request's idempotency key. A request whose key was already seen
    /// returns the original run instead of starting another.
    #[schemars(example = "{{ body.application_id }}")]
    #[serde(default)]
    pub idempotency_key: Option<Template>,
    /// `async` answers 202 with the run id once the run is stored. `sync` waits for the run's
    /// `respond` step (or its end) and answers with that.
    #[serde(default)]
    pub respond: RespondMode,
    /// How long a `sync` webhook waits for its reply before answering 504. The run goes on.
    #[serde(default = "WebhookTrigger::default_timeout")]
    pub timeout: Duration,
}

impl WebhookTrigger {
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    #[default]
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RespondMode {
    #[default]
    Async,
    Sync,
}

/// Webhook authentication. Secrets should be `${env:NAME}` references.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WebhookAuth {
    /// `Authorization: Bearer <token>`.
    Bearer(BearerAuth),
    /// A shared key in a header of your choice.
    ApiKey(ApiKeyAuth),
    /// An HMAC-SHA256 of the raw body, in a header.
    HmacSha256(HmacAuth),
    /// Stripe's `Stripe-Signature` scheme, with a replay tolerance.
    Stripe(SignedAuth),
    /// The Standard Webhooks scheme (Svix, Resend, ...): `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature`, with a replay tolerance.
    StandardWebhooks(SignedAuth),
}

impl WebhookAuth {
    pub fn scheme(&self) -> &'static str {
        match self {
            WebhookAuth::Bearer(_) => "bearer",
            WebhookAuth::ApiKey(_) => "api_key",
            WebhookAuth::HmacSha256(_) => "hmac_sha256",
            WebhookAuth::Stripe(_) => "stripe",
            WebhookAuth::StandardWebhooks(_) => "standard_webhooks",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BearerAuth {
    /// The expected token, usually "${env:NAME}".
    #[schemars(length(min = 1))]
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyAuth {
    /// The header that carries the key.
    #[serde(default = "ApiKeyAuth::default_header")]
    pub header: String,
    /// The expected key, usually "${env:NAME}".
    #[schemars(length(min = 1))]
    pub key: String,
}

impl ApiKeyAuth {
    fn default_header() -> String {
        "x-api-key".into()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacAuth {
    /// The header that carries the signature.
    #[schemars(example = "X-Signature")]
    pub header: String,
    /// The shared secret, usually "${env:NAME}".
    #[schemars(length(min = 1))]
    pub secret: String,
    /// How the signature is written.
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// Text before the signature in the header, such as "sha256=" (GitHub, Meta).
    #[serde(default)]
    pub prefix: Option<String>,
    /// A header holding the unix time (seconds) the sender signed at, such as
    /// X-Slack-Request-Timestamp. With it, a request signed longer ago (or further ahead) than
    /// `tolerance` is refused, so a captured request cannot be replayed later. Without it,
    /// nothing stops a replay but an `idempotency_key`: give the trigger one.
    #[serde(default)]
    pub timestamp_header: Option<String>,
    /// How far the signed timestamp may be from now.
    #[serde(default = "HmacAuth::default_tolerance")]
    pub tolerance: Duration,
    /// What the sender signs: `{body}` by default, `{timestamp}.{body}` by default with a
    /// `timestamp_header`, or another layout of the two, such as Slack's `v0:{timestamp}:{body}`.
    #[serde(default)]
    pub payload: Option<String>,
}

impl HmacAuth {
    fn default_tolerance() -> Duration {
        Duration::from_secs(300)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedAuth {
    /// The signing secret: Stripe's `whsec_...`, or a Standard Webhooks `whsec_<base64>` key.
    #[schemars(length(min = 1))]
    pub secret: String,
    /// How old a signed timestamp may be before the request is refused as a replay.
    #[serde(default = "SignedAuth::default_tolerance")]
    pub tolerance: Duration,
}

impl SignedAuth {
    fn default_tolerance() -> Duration {
        Duration::from_secs(300)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageTrigger {
    /// The channel, as named in herald.yaml.
    pub channel: String,
    /// Start only when the whole message is one of these words (any case), such as START.
    #[serde(default)]
    pub keyword: Option<Keywords>,
    /// Start only when the message matches this regular expression.
    #[serde(default, rename = "match")]
    pub pattern: Option<String>,
}

/// One keyword, or a list of them.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Keywords {
    One(String),
    Many(Vec<String>),
}

impl Keywords {
    pub fn words(&self) -> Vec<&str> {
        match self {
            Keywords::One(w) => vec![w.as_str()],
            Keywords::Many(ws) => ws.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTrigger {
    /// The event's name, as given to `emit`.
    #[schemars(example = "application.abandoned")]
    #[schemars(length(min = 1))]
    pub name: String,
    /// Start only when this expression is true. The event is available as `event`.
    #[serde(default)]
    pub filter: Option<Expr>,
}
