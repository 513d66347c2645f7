//! `herald.yaml`: where the database is, what to listen on, who may use the admin API, and
//! which delivery channels exist.

use std::borrow::Cow;

use indexmap::IndexMap;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer};

use super::common::Duration;

/// The project configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Herald configuration")]
pub struct ConfigDef {
    /// The database: sqlite://herald.db (the default, created on first start) or a
    /// postgres:// URL. DATABASE_URL and --database-url override it.
    #[serde(default = "ConfigDef::default_database")]
    pub database: String,
    /// The address `herald serve` listens on.
    #[serde(default = "ConfigDef::default_listen")]
    pub listen: String,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub paths: PathsConfig,
    /// Delivery channels by name, as used in `send: {channel: ...}`. A channel named `log`
    /// always exists unless you define your own.
    #[serde(default)]
    pub channels: IndexMap<String, ChannelDef>,
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    #[serde(default)]
    pub templates: TemplatesConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub compliance: ComplianceConfig,
    #[serde(default)]
    pub contacts: ContactsConfig,
    #[serde(default)]
    pub routes: RoutesConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Language-model providers for a conversation's `ai_reply`, by name: any API that
    /// speaks OpenAI's chat completions.
    #[serde(default)]
    pub ai: IndexMap<String, super::conversation::AiProviderConfig>,
    /// Who is told when an alert (`kind: alert`) fires or resolves: routes by label to
    /// channels, grouping, repeats and inhibition.
    #[serde(default)]
    pub alerting: super::alerting::AlertingConfig,
}

impl ConfigDef {
    fn default_database() -> String {
        "sqlite://herald.db".into()
    }
    fn default_listen() -> String {
        "127.0.0.1:8080".into()
    }
}

impl Default for ConfigDef {
    fn default() -> Self {
        ConfigDef {
            database: ConfigDef::default_database(),
            listen: ConfigDef::default_listen(),
            admin: AdminConfig::default(),
            paths: PathsConfig::default(),
            channels: IndexMap::new(),
            webhooks: WebhooksConfig::default(),
            templates: TemplatesConfig::default(),
            engine: EngineConfig::default(),
            compliance: ComplianceConfig::default(),
            contacts: ContactsConfig::default(),
            routes: RoutesConfig::default(),
            limits: LimitsConfig::default(),
            server: ServerConfig::default(),
            retention: RetentionConfig::default(),
            ai: IndexMap::new(),
            alerting: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Keys accepted in the x-api-key header of the admin API, usually "${env:NAME}"
    /// references. With none, the admin API is closed.
    #[serde(default)]
    pub api_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathsConfig {
    /// The folder of definitions, relative to herald.yaml.
    #[serde(default = "PathsConfig::default_workflows")]
    pub workflows: String,
    /// The folder of message templates, relative to herald.yaml.
    #[serde(default = "PathsConfig::default_templates")]
    pub templates: String,
    /// The folder of `kind: test` files that `herald test` runs, relative to herald.yaml.
    #[serde(default = "PathsConfig::default_tests")]
    pub tests: String,
}

impl PathsConfig {
    fn default_workflows() -> String {
        "workflows".into()
    }
    fn default_templates() -> String {
        "templates".into()
    }
    fn default_tests() -> String {
        "tests".into()
    }
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            workflows: PathsConfig::default_workflows(),
            templates: PathsConfig::default_templates(),
            tests: PathsConfig::default_tests(),
        }
    }
}

// Each provider's settings live with its code, in `channels/<provider>/config.rs`; they are
// part of this file's schema through these types.
pub use crate::channels::config::ChannelConfig;
pub use crate::channels::policy::{
    ChannelDef, ChannelPolicy, PerWindow, QuietHours, QuietHoursSetting,
};
pub use crate::channels::smtp::config::{SmtpConfig, SmtpTls};
pub use crate::channels::webhook::config::WebhookChannelConfig;

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// The largest request body accepted.
    #[serde(default = "WebhooksConfig::default_body_limit")]
    pub body_limit: ByteSize,
}

impl WebhooksConfig {
    fn default_body_limit() -> ByteSize {
        ByteSize(1024 * 1024)
    }
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            body_limit: WebhooksConfig::default_body_limit(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplatesConfig {
    /// The most work one render may do before it is stopped, so a runaway loop cannot hang
    /// the engine.
    #[serde(default = "TemplatesConfig::default_fuel")]
    #[schemars(range(min = 1000))]
    pub fuel: u64,
}

impl TemplatesConfig {
    fn default_fuel() -> u64 {
        100_000
    }
}

impl Default for TemplatesConfig {
    fn default() -> Self {
        TemplatesConfig {
            fuel: TemplatesConfig::default_fuel(),
        }
    }
}

/// How contacts' addresses are read.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactsConfig {
    /// The region a phone number written without a country code is read in, as a two-letter
    /// code such as US or GB: `upsert_contact`, suppression checks, inbound messages, the
    /// operations API and `herald run`'s contacts all store numbers in E.164 with it.
    #[serde(default = "ContactsConfig::default_region")]
    pub default_region: String,
    /// The attributes contacts carry and their types, such as
    /// `{ loan_amount: number, state: text, last_visit: date, vip: boolean }`. When given,
    /// campaign audiences may only test these, with tests that fit their types, and every way
    /// a contact is written (import, the operations API, `upsert_contact`) stores them as
    /// their type: `"5000"` from a CSV file becomes the number 5000, and a value that cannot
    /// be one is refused with the reason. Attributes not listed are stored as given.
    #[serde(default)]
    pub attributes: IndexMap<String, AttributeType>,
}

/// The type of a contact attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttributeType {
    /// Any text.
    Text,
    /// A number, such as 5000 or 4.5.
    Number,
    /// true or false (also read from yes/no and 1/0).
    Boolean,
    /// An ISO 8601 date, or date and time: 2026-01-31, 2026-01-31T09:00:00-07:00.
    Date,
}

impl AttributeType {
    pub fn name(self) -> &'static str {
        match self {
            AttributeType::Text => "text",
            AttributeType::Number => "number",
            AttributeType::Boolean => "boolean",
            AttributeType::Date => "date",
        }
    }
}

impl ContactsConfig {
    fn default_region() -> String {
        "US".into()
    }
}

impl Default for ContactsConfig {
    fn default() -> Self {
        ContactsConfig {
            default_region: ContactsConfig::default_region(),
            attributes: IndexMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Runs executed at once by this process.
    #[serde(default = "EngineConfig::default_workers")]
    #[schemars(range(min = 1, max = 1024))]
    pub workers: u32,
    /// How long a claimed run stays owned by this process without renewal. Another process
    /// takes over a run whose lease expired.
    #[serde(default = "EngineConfig::default_lease")]
    pub lease: Duration,
}

/// Runs a process executes at once unless `engine.workers` says otherwise. A run that waits
/// (for its commit, an HTTP answer) holds a worker but no thread, and the runs that wait for
/// their commits together are written as one transaction; so many at once are cheap, and they
/// make the batches that SQLite's throughput comes from (a broadcast went from 1,650 to 3,700
/// recipients per second between 16 and 64, on half the CPU per recipient).
pub const DEFAULT_WORKERS: u32 = 128;

impl EngineConfig {
    fn default_workers() -> u32 {
        DEFAULT_WORKERS
    }
    fn default_lease() -> Duration {
        Duration::from_secs(30)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: EngineConfig::default_workers(),
            lease: EngineConfig::default_lease(),
        }
    }
}

/// How long history is kept. Unset, nothing is deleted. `herald serve` deletes what is older
/// every hour, in small batches; `POST /api/retention/run` does it at once.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Finished runs older than this are deleted, with their step logs and messages. A run a
    /// waiting parent still needs is kept.
    #[serde(default)]
    pub runs: Option<Duration>,
    /// Events older than this are deleted, unless a run still waiting could consume them.
    #[serde(default)]
    pub events: Option<Duration>,
}

/// How `herald serve` treats connections (read when it starts).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// How long a client has to send a request's headers; also how long a keep-alive
    /// connection may sit idle.
    #[serde(default = "ServerConfig::default_header_timeout")]
    pub header_timeout: Duration,
    /// How long a client has to send a request's body.
    #[serde(default = "ServerConfig::default_body_timeout")]
    pub body_timeout: Duration,
    /// Connections open at once. By default half the process's open-file limit.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    /// On shutdown, how long requests in progress may take to finish.
    #[serde(default = "ServerConfig::default_drain_timeout")]
    pub drain_timeout: Duration,
    /// How long a request waits for the database before it is answered 503 with Retry-After.
    #[serde(default = "ServerConfig::default_store_timeout")]
    pub store_timeout: Duration,
}

impl ServerConfig {
    fn default_header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_body_timeout() -> Duration {
        Duration::from_secs(30)
    }
    fn default_drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
    fn default_store_timeout() -> Duration {
        Duration::from_secs(2)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_timeout: ServerConfig::default_header_timeout(),
            body_timeout: ServerConfig::default_body_timeout(),
            max_connections: None,
            drain_timeout: ServerConfig::default_drain_timeout(),
            store_timeout: ServerConfig::default_store_timeout(),
        }
    }
}

/// Bounds on what a run can make, so one bad template or a hostile request cannot fill the
/// memory or the database. Exceeding one is a permanent error of the step, naming the limit.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// The largest rendered message (body and subject). By default each channel's own: 10MiB
    /// for e-mail over SMTP, 1MiB for the others.
    #[serde(default)]
    pub message_size: Option<ByteSize>,
    /// The largest run context (its input, variables and step outputs, as JSON).
    #[serde(default = "LimitsConfig::default_context_size")]
    pub context_size: ByteSize,
}

impl LimitsConfig {
    fn default_context_size() -> ByteSize {
        ByteSize(4 << 20)
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            message_size: None,
            context_size: LimitsConfig::default_context_size(),
        }
    }
}

/// Where `herald serve` answers for itself. Declared webhooks are matched first, so a webhook
/// may live anywhere (`/api/chat`, `/api/stripe/webhook`) except on one of these routes, which
/// `herald validate` reports as a clash. Move these when your own URLs need them. Read when
/// the server starts: a change takes effect at the next start.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutesConfig {
    /// The prefix of the admin API.
    #[serde(default = "RoutesConfig::default_api")]
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$"))]
    pub api: String,
    /// The health check.
    #[serde(default = "RoutesConfig::default_health")]
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._~/-]*$"))]
    pub health: String,
    /// The Prometheus metrics.
    #[serde(default = "RoutesConfig::default_metrics")]
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._~/-]*$"))]
    pub metrics: String,
    /// Where providers send people's messages and delivery reports: `{inbound}/{channel}`.
    #[serde(default = "RoutesConfig::default_inbound")]
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$"))]
    pub inbound: String,
    /// Where the unsubscribe links in marketing e-mail lead: `{unsubscribe}/{token}`, a
    /// confirmation page on GET and a one-click unsubscribe on POST (RFC 8058).
    #[serde(default = "RoutesConfig::default_unsubscribe")]
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$"))]
    pub unsubscribe: String,
}

/// The admin API's routes, under `routes.api`, which validation keeps webhooks off. Add a
/// route here when the server's router (`server::router`) gains one; a test checks that
/// every route listed here is one the server answers.
pub const API_ROUTES: &[&str] = &[
    "/definitions",
    "/runs",
    "/runs/{id}",
    "/runs/{id}/cancel",
    "/runs/{id}/retry",
    "/runs/cancel",
    "/runs/counts",
    "/events",
    "/messages/{channel}",
    "/cron/{workflow}",
    "/cron/{workflow}/run",
    "/contacts",
    "/contacts/{id}",
    "/outbox",
    "/outbox/{id}",
    "/outbox/{id}/retry",
    "/outbox/{id}/cancel",
    "/suppressions",
    "/suppressions/{channel}/{address}",
    "/retention/run",
    "/reload",
    "/campaigns",
    "/campaigns/{id}",
    "/campaigns/{id}/pause",
    "/campaigns/{id}/resume",
    "/campaigns/{id}/cancel",
    "/conversations/{id}/messages",
    "/conversations/{id}/release",
    "/alerts",
    "/silences",
    "/silences/{id}",
];

impl RoutesConfig {
    fn default_api() -> String {
        "/api".into()
    }
    fn default_health() -> String {
        "/health".into()
    }
    fn default_metrics() -> String {
        "/metrics".into()
    }
    fn default_inbound() -> String {
        "/inbound".to_owned()
    }
    fn default_unsubscribe() -> String {
        "/unsubscribe".to_owned()
    }

    /// Every route Herald answers itself, as route patterns (`/api/runs/{id}`).
    pub fn reserved(&self) -> Vec<String> {
        let api = self.api.trim_end_matches('/');
        let mut out = vec![
            self.health.clone(),
            self.metrics.clone(),
            format!("{}/{{channel}}", self.inbound.trim_end_matches('/')),
            format!("{}/{{token}}", self.unsubscribe.trim_end_matches('/')),
        ];
        out.extend(API_ROUTES.iter().map(|r| format!("{api}{r}")));
        out
    }
}

impl Default for RoutesConfig {
    fn default() -> Self {
        RoutesConfig {
            api: RoutesConfig::default_api(),
            health: RoutesConfig::default_health(),
            metrics: RoutesConfig::default_metrics(),
            inbound: RoutesConfig::default_inbound(),
            unsubscribe: RoutesConfig::default_unsubscribe(),
        }
    }
}

/// Opt-out and opt-in keywords, honoured for every inbound message before anything else sees
/// it. A message whose whole text (trimmed, any case) is an opt-out keyword marks the sender's
/// contact `opted_out` in the same transaction that records the message; it wakes no run
/// waiting for a reply, and starts only workflows whose `message` trigger names the keyword
/// itself (to send the confirmation carriers require, as a `category: compliance` send). An
/// opt-in keyword from an opted-out contact marks it `subscribed` again. Both also emit an
/// event, `contact.opted_out` or `contact.opted_in`, keyed by the sender.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComplianceConfig {
    /// Defaults to the carrier and FCC set: STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT,
    /// REVOKE, OPTOUT.
    #[serde(default = "ComplianceConfig::default_opt_out")]
    pub opt_out_keywords: Vec<String>,
    /// Defaults to START, UNSTOP, YES (YES counts only from a contact who opted out).
    #[serde(default = "ComplianceConfig::default_opt_in")]
    pub opt_in_keywords: Vec<String>,
    /// At most this many messages from one address on one channel are taken per window, such
    /// as `{ messages: 60, per: 1m }`; more are dropped (logged and counted in
    /// `herald_inbound_limited_total`), so one sender cannot flood the workflows. Unset, there
    /// is no limit.
    #[serde(default)]
    pub inbound_limit: Option<InboundLimit>,
    /// Whole messages that ask who is texting and how to stop, answered with `help_reply`.
    /// Defaults to HELP and INFO.
    #[serde(default = "ComplianceConfig::default_help")]
    pub help_keywords: Vec<String>,
    /// The answer to a HELP or INFO, sent at once on the channel it came from (as a
    /// `compliance` message), such as "Acme Motors: appointment reminders. Reply STOP to
    /// opt out. Help: 555-0100". Carriers require one on every text programme. Unset, HELP
    /// gets no automatic answer (a `message` trigger naming HELP may still answer it).
    #[serde(default)]
    pub help_reply: Option<String>,
    /// Quiet hours for every channel that does not set its own, in the recipient's time zone
    /// (the contact's `timezone`). Unset, text channels (Twilio SMS, WhatsApp) hold
    /// `marketing` messages from 21:00 to 08:00 for recipients whose time zone is known, and
    /// other channels hold none.
    #[serde(default)]
    pub quiet_hours: Option<QuietHoursSetting>,
    /// The most `marketing` messages one recipient gets per channel per window, for every
    /// channel that does not set its own, such as `{ messages: 3, per: 1d }`. Unset, no cap.
    #[serde(default)]
    pub frequency_cap: Option<PerWindow>,
    /// One-click unsubscribe for `marketing` e-mail (RFC 8058). Set, every marketing message
    /// on an e-mail channel carries `List-Unsubscribe` (a signed link, and a `mailto:` when
    /// given) and `List-Unsubscribe-Post`, which mail clients show as an "Unsubscribe"
    /// button. Gmail and Yahoo require this of bulk senders.
    #[serde(default)]
    pub unsubscribe: Option<UnsubscribeConfig>,
}

/// `compliance.unsubscribe`: how unsubscribe links are signed and where they lead.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeConfig {
    /// The key that signs each link (HMAC-SHA256), so that a link cannot be forged for
    /// someone else's address or guessed: at least 32 characters, from the environment, as
    /// in `${env:UNSUBSCRIBE_SECRET}` (make one with `openssl rand -hex 32`). Changing it
    /// breaks the links in e-mail already sent.
    pub secret: String,
    /// The public address of this server, as recipients reach it, such as
    /// `https://herald.example.com`; links are `{url}{routes.unsubscribe}/{token}`. Mail
    /// providers only honour `https://` links.
    pub url: String,
    /// An address that unsubscribes whoever writes to it, offered beside the link for mail
    /// clients that prefer it (`mailto:`). Herald does not read that mailbox.
    #[serde(default)]
    pub mailto: Option<String>,
}

/// `compliance.inbound_limit`: a number of messages per window.
pub type InboundLimit = PerWindow;

/// What an inbound message's text is, for compliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    OptOut,
    OptIn,
    /// HELP or INFO: answered with `compliance.help_reply`.
    Help,
}

impl ComplianceConfig {
    fn default_opt_out() -> Vec<String> {
        [
            "STOP",
            "STOPALL",
            "UNSUBSCRIBE",
            "CANCEL",
            "END",
            "QUIT",
            "REVOKE",
            "OPTOUT",
        ]
        .map(String::from)
        .to_vec()
    }
    fn default_opt_in() -> Vec<String> {
        ["START", "UNSTOP", "YES"].map(String::from).to_vec()
    }
    fn default_help() -> Vec<String> {
        ["HELP", "INFO"].map(String::from).to_vec()
    }

    /// Whether a message is an opt-out or opt-in: its whole text is one of the keywords.
    pub fn classify(&self, text: &str) -> Option<Keyword> {
        let t = text.trim().trim_end_matches(['.', '!']);
        if self
            .opt_out_keywords
            .iter()
            .any(|k| k.eq_ignore_ascii_case(t))
        {
            Some(Keyword::OptOut)
        } else if self
            .opt_in_keywords
            .iter()
            .any(|k| k.eq_ignore_ascii_case(t))
        {
            Some(Keyword::OptIn)
        } else if self.help_keywords.iter().any(|k| k.eq_ignore_ascii_case(t)) {
            Some(Keyword::Help)
        } else {
            None
        }
    }
}

impl Default for ComplianceConfig {
    fn default() -> Self {
        ComplianceConfig {
            opt_out_keywords: ComplianceConfig::default_opt_out(),
            opt_in_keywords: ComplianceConfig::default_opt_in(),
            inbound_limit: None,
            help_keywords: ComplianceConfig::default_help(),
            help_reply: None,
            quiet_hours: None,
            frequency_cap: None,
            unsubscribe: None,
        }
    }
}

pub const BYTE_SIZE_PATTERN: &str = r"^[0-9]+(B|KB|KiB|MB|MiB|GB|GiB)?$";

/// A size in bytes: 1048576, or with a unit: 512KiB, 1MiB, 10MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let bad = || format!("`{s}` is not a size: use bytes or a unit, such as 512KiB or 1MiB");
        let n: u64 = s[..digits].parse().map_err(|_| bad())?;
        let mult = match &s[digits..] {
            "" | "B" => 1,
            "KB" => 1_000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["integer", "string"],
            "minimum": 0,
            "pattern": BYTE_SIZE_PATTERN,
            "description": "A size: bytes, or a number with a unit (B, KB, KiB, MB, MiB, GB, GiB), such as 1MiB.",
            "examples": ["1MiB", "512KiB"]
        })
    }
}
