//! What the store keeps about notifying alerts: what each route last told each group, and
//! silences.

use serde::Serialize;

use super::Millis;

/// What a route last told one group of alerts. `notified` is JSON: the alerts notified as
/// firing, by fingerprint, with their labels and annotations (see `alerts::notify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationLog {
    pub route: String,
    pub group_key: String,
    /// How many notifications the group has had; the next one is `seq + 1`.
    pub seq: i64,
    pub notified: String,
    pub sent_at: Option<Millis>,
    pub updated_at: Millis,
}

/// A silence: alerts whose labels fit every matcher are not notified from `starts_at` until
/// `ends_at`. `matchers` is JSON, a list of `alerts::silence::Matcher`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SilenceRow {
    pub id: String,
    pub matchers: String,
    pub starts_at: Millis,
    pub ends_at: Millis,
    pub created_by: Option<String>,
    pub comment: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// One of Herald's own measurements for an alert (see `AlertSource::Metric`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricQuery {
    pub name: crate::definitions::model::alert::MetricName,
    pub now: Millis,
    /// The windowed measurements (`run_failures`, `delivery_rate`, `webhook_responses`,
    /// `step_latency`) read what happened after this.
    pub since: Millis,
    /// `runs_stuck` counts runs not updated since this.
    pub stuck_before: Millis,
    pub channel: Option<String>,
    pub workflow: Option<String>,
    /// By channel or workflow, rather than one figure.
    pub grouped: bool,
    /// `webhook_responses` counts these statuses, inclusive ranges; all of them when empty.
    pub statuses: Vec<(u16, u16)>,
}

/// Webhook responses of one workflow with one status, in the minute starting at `minute`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookCount {
    pub workflow_id: String,
    pub minute: Millis,
    pub status: u16,
    pub responses: i64,
}
