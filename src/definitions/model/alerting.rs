//! `alerting:` in herald.yaml: who is told when an alert fires or resolves, as Alertmanager's
//! routes say it. Routes are shared by every alert, so one place says "critical goes to the
//! on-call phone, the rest to the ops mailbox"; an alert's labels pick its route.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use super::common::{Duration, Template};

#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfig {
    /// Tried in order for each firing alert: the first whose `match` fits its labels tells
    /// someone, and stops the search unless it says `continue: true`. An alert that no route
    /// matches is only logged and listed (GET /api/alerts, ALERTS on /metrics).
    #[serde(default)]
    pub routes: Vec<AlertRoute>,
    /// While an alert matching `source` fires, alerts matching `target` with the same
    /// `equal` labels are not notified: the critical one says it already.
    #[serde(default)]
    pub inhibit: Vec<InhibitRule>,
}

/// One route: which alerts, to whom, and how often.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRoute {
    /// A name for the route, kept in what was notified. Without one, the route is known by
    /// its channel, recipients and match, so editing those starts it afresh.
    #[serde(default)]
    pub name: Option<String>,
    /// Labels the alert must have: `{ severity: critical }`, or several values for one label
    /// (`{ severity: [critical, warning] }`). Empty, every alert matches.
    #[serde(default, rename = "match")]
    pub match_: IndexMap<String, LabelValues>,
    /// The channel the notification goes out on, from `channels:`.
    pub channel: String,
    /// Who is told: an address on that channel, or several. `${env:ONCALL_PHONE}` works.
    pub to: Recipients,
    /// Alerts with the same values of these labels go out as one message, so ten failing
    /// tenants make one notification. Defaults to `[alertname]`; `[]` puts every alert of
    /// the route in one message.
    #[serde(default = "AlertRoute::default_group_by")]
    pub group_by: Vec<String>,
    /// How often a group that keeps firing is notified again. Defaults to 4h.
    #[serde(default = "AlertRoute::default_repeat_every")]
    pub repeat_every: Duration,
    /// Whether alerts that stop firing are notified as resolved. Defaults to true.
    #[serde(default = "AlertRoute::default_send_resolved")]
    pub send_resolved: bool,
    /// The subject, on e-mail channels. It sees `status` (`firing` or `resolved`),
    /// `alerts`, `firing`, `resolved`, `group_labels` and `common_labels`.
    #[serde(default)]
    pub subject: Option<Template>,
    /// The message, rendered with what `subject` sees; each alert in `alerts` has `status`,
    /// `labels`, `annotations`, `value`, `starts_at` and `ends_at`. A default lists each
    /// alert's summary.
    #[serde(default)]
    pub body: Option<Template>,
    /// Whether the alerts this route matched go on to be matched by the routes after it.
    #[serde(default, rename = "continue")]
    pub continue_: bool,
}

impl AlertRoute {
    pub fn default_group_by() -> Vec<String> {
        vec!["alertname".to_owned()]
    }
    pub fn default_repeat_every() -> Duration {
        Duration::from_secs(4 * 3600)
    }
    fn default_send_resolved() -> bool {
        true
    }
}

/// One value a label must have, or a list of values it may have.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum LabelValues {
    One(String),
    Any(Vec<String>),
}

impl LabelValues {
    pub fn values(&self) -> &[String] {
        match self {
            LabelValues::One(v) => std::slice::from_ref(v),
            LabelValues::Any(vs) => vs,
        }
    }
}

/// One recipient or several.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Recipients {
    One(String),
    Many(Vec<String>),
}

impl Recipients {
    pub fn all(&self) -> &[String] {
        match self {
            Recipients::One(v) => std::slice::from_ref(v),
            Recipients::Many(vs) => vs,
        }
    }
}

/// An inhibition: a firing `source` alert mutes the `target` alerts that share its `equal`
/// labels.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InhibitRule {
    /// Labels of the alert that mutes: `{ severity: critical }`.
    pub source: IndexMap<String, LabelValues>,
    /// Labels of the alerts it mutes: `{ severity: warning }`.
    pub target: IndexMap<String, LabelValues>,
    /// Labels both must have with the same value (both missing counts as the same), such as
    /// `[service]`. Empty, any firing source mutes every target.
    #[serde(default)]
    pub equal: Vec<String>,
}

/// Whether `labels` has every label of `matchers` with one of its values.
pub fn matches(
    matchers: &IndexMap<String, LabelValues>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    matchers.iter().all(|(k, want)| {
        labels
            .get(k)
            .is_some_and(|v| want.values().iter().any(|w| w == v))
    })
}
