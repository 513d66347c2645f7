//! `kind: campaign`, read: its steps resolved as a workflow's are, with its audience and
//! schedule beside them. A drip's `enrol` event is an event trigger of that workflow, so events
//! reach it the way they reach any workflow; a broadcast has no trigger, its recipients are
//! enrolled by the campaign driver.

use super::diagnostics::Diagnostic;
use super::model::campaign::{
    Audience, CampaignCron, CampaignDef, CatchUpLatest, ExitWhen, Schedule, SendWindow,
};
use super::model::common::DefinitionId;
use super::model::step::resolve_steps;
use super::model::trigger::{CatchUp, CronTrigger, EventTrigger, Overlap, Trigger};
use super::schema::{SchemaKind, Schemas};
use super::source::{Parsed, SourceFile};
use super::{Body, Definition, Workflow, content_hash, deserialize, env};

/// A campaign with its steps resolved.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// Its steps, labels and `on_update`, as a workflow; a drip's has its `enrol` event as
    /// its one trigger.
    pub workflow: Workflow,
    pub audience: Box<Audience>,
    pub schedule: Schedule,
    /// `schedule.send_at` in unix milliseconds, for a broadcast.
    pub send_at: Option<i64>,
    pub reenrol: bool,
    pub send_window: Option<SendWindow>,
    pub throttle: Option<crate::channels::policy::PerWindow>,
    pub exit_when: ExitWhen,
}

impl Campaign {
    /// Whether it enrolls its recipients at its own times (a broadcast, or a recurring
    /// campaign), rather than on an event (a drip): its recipients start from no event,
    /// message or request, and a test needs no `trigger` for it.
    pub fn enrolls_itself(&self) -> bool {
        !matches!(self.schedule, Schedule::Enrol(_))
    }
}

pub(super) fn read(file: SourceFile, doc: Parsed) -> Result<Definition, Vec<Diagnostic>> {
    let errors = Schemas::get().validate(SchemaKind::Campaign, &file, &doc);
    if !errors.is_empty() {
        return Err(errors);
    }
    let def: CampaignDef = deserialize(&file, &doc)?;
    let campaign =
        from_def(def).map_err(|(pointer, d)| vec![file.locate(*d, doc.index.value(pointer))])?;
    Ok(Definition {
        id: campaign.workflow.id.clone(),
        hash: content_hash(&doc.value),
        env_strings: env::env_strings(&doc.value),
        body: Body::Campaign(campaign),
        file,
        doc,
    })
}

/// The campaign a schema-valid document describes; an error names the JSON pointer it is at.
pub(crate) fn from_def(def: CampaignDef) -> Result<Campaign, (&'static str, Box<Diagnostic>)> {
    let steps = resolve_steps(def.steps, "/steps")
        .map_err(|e| ("/steps", Box::new(Diagnostic::error("invalid-step", e))))?;
    let send_at = match &def.schedule {
        Schedule::SendAt(text) => Some(parse_send_at(text).map_err(|d| ("/schedule/send_at", d))?),
        Schedule::Enrol(_) | Schedule::Cron(_) => None,
    };
    if let Schedule::Cron(c) = &def.schedule {
        check_cron(c)?;
    }
    if let Some(w) = &def.send_window {
        check_window(w)?;
    }
    let triggers = match &def.schedule {
        Schedule::Enrol(on) => vec![Trigger::Event(EventTrigger {
            name: on.event.clone(),
            filter: None,
        })],
        // The scheduler decides a recurring campaign's times as it decides any cron
        // trigger's, exactly once across processes; the campaign driver enrolls for each.
        Schedule::Cron(c) => vec![Trigger::Cron(CronTrigger {
            schedule: c.schedule.clone(),
            timezone: c.timezone.clone(),
            catch_up: match c.catch_up {
                CatchUpLatest::None => CatchUp::None,
                CatchUpLatest::Latest => CatchUp::Latest,
            },
            catch_up_window: c.catch_up_window,
            overlap: Overlap::Allow,
            input: None,
        })],
        Schedule::SendAt(_) => Vec::new(),
    };
    let DefinitionId(id) = def.id;
    Ok(Campaign {
        workflow: Workflow {
            id,
            description: def.description,
            metadata: def.metadata,
            on_update: def.on_update,
            labels: def.labels,
            triggers,
            steps,
        },
        audience: Box::new(def.audience),
        schedule: def.schedule,
        send_at,
        reenrol: def.reenrol,
        send_window: def.send_window,
        throttle: def.throttle,
        exit_when: def.exit_when,
    })
}

fn parse_send_at(text: &str) -> Result<i64, Box<Diagnostic>> {
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| {
            Box::new(
                Diagnostic::error(
                    "invalid-time",
                    format!("`{text}` is not a date and time with an offset"),
                )
                .with_hint(
                    "write it in RFC 3339 with an offset, such as 2026-12-07T10:00:00-07:00",
                ),
            )
        })
}

/// A window that never opens would hold every message for ever: refused here.
fn check_window(w: &SendWindow) -> Result<(), (&'static str, Box<Diagnostic>)> {
    let time = |s: &str| crate::channels::policy::parse_time(s);
    if let (Some(start), Some(end)) = (time(&w.start), time(&w.end))
        && start >= end
    {
        let d = Diagnostic::error(
            "window-never-opens",
            format!(
                "the send window closes at {} before it opens at {}, so it never opens",
                w.end, w.start
            ),
        )
        .with_hint("a send window runs from `start` to a later `end` on the same day, such as 09:00 to 20:00");
        return Err(("/send_window/end", Box::new(d)));
    }
    if w.days.is_empty() {
        let d = Diagnostic::error("window-never-opens", "the send window has no days, so it never opens")
            .with_hint("name the days it opens, such as [mon, tue, wed, thu, fri], or leave `days` out for every day");
        return Err(("/send_window/days", Box::new(d)));
    }
    if let Some(tz) = &w.timezone
        && jiff::tz::TimeZone::get(tz).is_err()
    {
        let d = Diagnostic::error("unknown-timezone", format!("unknown time zone `{tz}`"))
            .with_hint("use an IANA name, such as America/Denver");
        return Err(("/send_window/timezone", Box::new(d)));
    }
    Ok(())
}

/// A recurring campaign's schedule and time zone, checked as a cron trigger's are.
fn check_cron(c: &CampaignCron) -> Result<(), (&'static str, Box<Diagnostic>)> {
    if let Err(e) = crate::triggers::cron::parse_schedule(&c.schedule) {
        let d = Diagnostic::error("invalid-cron", e).with_hint(
            "five fields: minute hour day-of-month month day-of-week, such as `0 10 * * *`",
        );
        return Err(("/schedule/cron/schedule", Box::new(d)));
    }
    if let Err(e) = crate::triggers::cron::parse_timezone(&c.timezone) {
        let d = Diagnostic::error("invalid-timezone", e)
            .with_hint("use an IANA name such as America/Denver, Europe/London or UTC");
        return Err(("/schedule/cron/timezone", Box::new(d)));
    }
    Ok(())
}
