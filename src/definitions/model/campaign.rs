//! `kind: campaign`: messages to many contacts, each recipient a run of the campaign's steps.
//! Who is enrolled is the `audience` (or an event, for a drip), when is the `schedule`; the
//! steps are the workflow step language, so a recipient's run waits, branches and sends as any
//! workflow's does.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

pub use super::audience::Audience;
use super::common::{DefinitionId, Duration, Metadata, Template};
use super::step::RawStep;
use super::workflow::OnUpdate;

/// A campaign definition, as written in a file under workflows/ beside the workflows.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Herald campaign")]
pub struct CampaignDef {
    /// Always `campaign` for this kind.
    pub kind: CampaignKind,
    /// A unique id across all definitions.
    pub id: DefinitionId,
    /// What this campaign is for, in a sentence.
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
    /// What happens to recipients still on their way when this file changes. By default
    /// (`latest`) each moves to the new version at its next step, matched by step id: its next
    /// message has the new copy, a changed delay applies to waits not yet begun, and a removed
    /// step is skipped. `pinned` keeps recipients on the version that enrolled them.
    #[serde(default = "CampaignDef::default_on_update")]
    pub on_update: OnUpdate,
    /// Labels every recipient's run carries, as for a workflow.
    #[serde(default)]
    pub labels: IndexMap<String, Template>,
    /// Who is enrolled when the campaign is sent (`schedule.send_at`): contacts matching every
    /// condition given. Without it, a broadcast goes to every contact.
    #[serde(default)]
    pub audience: Audience,
    /// When recipients are enrolled.
    pub schedule: Schedule,
    /// Whether a contact enrolled once may be enrolled again (by a later event of a drip).
    #[serde(default)]
    pub reenrol: bool,
    /// When messages may reach a recipient, on their own clock: a send due outside the window
    /// waits in the outbox for it to open.
    #[serde(default)]
    pub send_window: Option<SendWindow>,
    /// The most of this campaign's messages handed to each channel per window, paced evenly,
    /// such as `{ messages: 50, per: 1s }`: a broadcast to 100,000 does not drown the
    /// channel's other traffic or trip the provider's limits. It applies beside the channel's
    /// own `rate`, per Herald process, and an edit applies to messages not yet paced.
    #[serde(default)]
    pub throttle: Option<crate::channels::policy::PerWindow>,
    /// When a recipient leaves the campaign: checked before each of its messages, so one who
    /// replied, converted or changed status gets nothing more, and its run ends.
    #[serde(default)]
    pub exit_when: ExitWhen,
    /// The steps each recipient goes through, in order. The recipient is `contact` in
    /// templates (`{{ contact.email }}`, `{{ contact.first_name }}`).
    #[schemars(length(min = 1))]
    pub steps: Vec<RawStep>,
}

impl CampaignDef {
    fn default_on_update() -> OnUpdate {
        OnUpdate::Latest
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignKind {
    Campaign,
}

/// When a campaign enrolls its recipients: once at `send_at` (a broadcast to the audience), or
/// on each `enrol` event (a drip, one recipient per event).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The moment of a one-off broadcast, in RFC 3339 with an offset, such as
    /// `2026-12-07T10:00:00-07:00`.
    SendAt(String),
    /// A drip: each event with this name enrolls the contact it is about. The event's key is
    /// the contact's id or e-mail address.
    Enrol(EnrolOn),
    /// A recurring send, such as a daily 10 a.m. win-back: at each time the schedule names,
    /// the contacts the audience selects then are enrolled. Unless `reenrol` is set, a contact
    /// enrolled at an earlier time is not enrolled again.
    Cron(CampaignCron),
}

/// When a recurring campaign enrolls, as a cron trigger's schedule.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignCron {
    /// A standard 5-field cron expression: minute hour day-of-month month day-of-week.
    /// Weekdays count from 0 = Sunday, as in POSIX cron; names (MON-FRI) work too.
    #[schemars(example = "0 10 * * *")]
    pub schedule: String,
    /// The IANA time zone the schedule is read in, with daylight saving handled.
    #[serde(default = "CampaignCron::default_timezone")]
    #[schemars(example = "America/Denver")]
    pub timezone: String,
    /// Times missed while Herald was down: enroll for none, or only the latest.
    #[serde(default)]
    pub catch_up: CatchUpLatest,
    /// A missed time older than this is never enrolled for.
    #[serde(default = "CampaignCron::default_window")]
    pub catch_up_window: Duration,
}

impl CampaignCron {
    fn default_timezone() -> String {
        "UTC".into()
    }
    fn default_window() -> Duration {
        Duration::from_secs(6 * 3600)
    }
}

/// What a recurring campaign does about times it missed. Enrolling the same audience once
/// per missed day would send one person several copies at once, so there is no `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUpLatest {
    /// Enroll for none of them.
    None,
    /// Enroll for the most recent one, within `catch_up_window`.
    #[default]
    Latest,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolOn {
    /// The event's name, as given to `emit`.
    #[schemars(length(min = 1))]
    pub event: String,
}

/// Hours and days a campaign's messages may be delivered, in the recipient's time zone, such
/// as `{ start: "09:00", end: "20:00", days: [mon, tue, wed, thu, fri, sat] }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendWindow {
    /// When it opens each day, as HH:MM on a 24-hour clock.
    #[schemars(regex(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// When it closes, after `start` on the same day.
    #[schemars(regex(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub end: String,
    /// The days it opens; every day by default.
    #[serde(default = "SendWindow::every_day")]
    pub days: Vec<Weekday>,
    /// The time zone of a recipient whose contact has none, such as "America/Denver"; UTC
    /// when unset.
    #[serde(default)]
    pub timezone: Option<String>,
}

impl SendWindow {
    fn every_day() -> Vec<Weekday> {
        use Weekday::*;
        vec![Mon, Tue, Wed, Thu, Fri, Sat, Sun]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// What ends a recipient's campaign early: any one of these, since they were enrolled.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExitWhen {
    /// They wrote on one of these channels, such as `[sms, email]`.
    #[serde(default)]
    pub replied: Vec<String>,
    /// One of these events was emitted keyed by their e-mail address, phone or contact id,
    /// such as `[loan.funded]`.
    #[serde(default)]
    pub events: Vec<String>,
    /// Their lifecycle status became one of these, such as `[customer]`.
    #[serde(default)]
    pub status: Vec<String>,
}
