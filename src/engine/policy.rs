//! A channel's policy applied to one message: its quiet hours, its frequency cap, its pace and
//! its fallback (settings in `channels::policy`). Quiet hours and the cap are decided when a
//! `send` runs, so the step log says why a message waits or was not sent; quiet hours and the
//! pace are applied again when the dispatcher picks the message up.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::registry::Registry;
use crate::channels::config::ChannelConfig;
use crate::channels::policy::{ChannelPolicy, Pacer, PerWindow, QuietHours, QuietHoursSetting};
use crate::definitions::model::step::MessageCategory;
use crate::store::{Millis, NewOutbox, OutboxRecord};

static NO_POLICY: LazyLock<ChannelPolicy> = LazyLock::new(ChannelPolicy::default);
static TELEPHONE_QUIET_HOURS: LazyLock<QuietHours> = LazyLock::new(QuietHours::telephone_default);

fn policy<'r>(registry: &'r Registry, channel: &str) -> &'r ChannelPolicy {
    registry
        .config
        .channels
        .get(channel)
        .map(|c| &c.policy)
        .unwrap_or(&NO_POLICY)
}

/// The quiet hours that apply on `channel`: its own, else `compliance.quiet_hours`, else, on
/// a text channel, the carriers' 21:00–08:00.
fn quiet_hours<'r>(registry: &'r Registry, channel: &str) -> Option<&'r QuietHours> {
    let setting = policy(registry, channel).quiet_hours.as_ref().or(registry
        .config
        .compliance
        .quiet_hours
        .as_ref());
    match setting {
        Some(QuietHoursSetting::Off(_)) => None,
        Some(QuietHoursSetting::Window(w)) => Some(w),
        None => match registry.config.channels.get(channel).map(|c| &c.provider) {
            Some(ChannelConfig::TwilioSms(_) | ChannelConfig::Whatsapp(_)) => {
                Some(&TELEPHONE_QUIET_HOURS)
            }
            _ => None,
        },
    }
}

/// Whether a message must wait for quiet hours to end: when, and why. A recipient in no known
/// time zone (their contact has none, and the quiet hours name none) is not held.
pub(crate) fn hold(
    registry: &Registry,
    channel: &str,
    category: MessageCategory,
    time_zone: Option<&str>,
    now: Millis,
) -> Option<(Millis, String)> {
    let q = quiet_hours(registry, channel)?;
    let name = time_zone
        .and_then(|tz| TimeZone::get(tz).ok().map(|z| (tz, z)))
        .or_else(|| {
            let tz = q.timezone.as_deref()?;
            Some((tz, TimeZone::get(tz).ok()?))
        });
    let (name, zone) = name?;
    let until = q.hold_until(Timestamp::from_millisecond(now).ok()?, &zone, category)?;
    Some((
        until.as_millisecond(),
        format!("quiet hours on channel `{channel}`: {}", q.describe(name)),
    ))
}

/// The frequency cap on `channel`: its own, else `compliance.frequency_cap`.
pub(crate) fn frequency_cap(registry: &Registry, channel: &str) -> Option<PerWindow> {
    policy(registry, channel)
        .frequency_cap
        .or(registry.config.compliance.frequency_cap)
}

/// The fallback message for `m`, which failed for good on its channel: the same message on
/// the channel's `fallback`, under a key of its own so it is queued once.
pub(crate) fn fallback(registry: &Registry, m: &OutboxRecord, now: Millis) -> Option<NewOutbox> {
    let next = policy(registry, &m.channel).fallback.as_ref()?;
    // Validation refuses a cycle of fallbacks; a chain longer than the channels is one anyway.
    let depth = m.idempotency_key.matches('>').count();
    let channel = registry.channels.get(next)?;
    if depth >= registry.channels.len() {
        return None;
    }
    // An approved template means nothing to another provider: it would send the template's
    // description as the text. Such a message does not fall back.
    if m.approved_template.is_some() && !channel.sends_approved_templates() {
        return None;
    }
    Some(NewOutbox {
        id: super::new_id(),
        run_id: m.run_id.clone(),
        workflow_id: m.workflow_id.clone(),
        step_id: m.step_id.clone(),
        channel: next.clone(),
        recipient: m.recipient.clone(),
        sender: None,
        subject: m.subject.clone(),
        body: m.body.clone(),
        html: m.html,
        headers: m.headers.clone(),
        idempotency_key: format!("{}>{next}", m.idempotency_key),
        max_attempts: m.max_attempts,
        category: m.category,
        retry: m.retry.clone(),
        created_at: now,
        due_at: now,
        approved_template: m.approved_template.clone(),
    })
}

/// The pacers of this process's channels, by name.
#[derive(Debug, Default)]
pub(crate) struct Pacers(Mutex<HashMap<String, Arc<Pacer>>>);

impl Pacers {
    /// When `channel` may hand its provider the next message, at or after `now`; `None` when
    /// the channel is not paced.
    pub(crate) fn slot(&self, registry: &Registry, channel: &str, now: Millis) -> Option<Millis> {
        let rate = policy(registry, channel).rate?;
        let pacer = crate::sync::lock(&self.0)
            .entry(channel.to_owned())
            .or_default()
            .clone();
        Some(pacer.reserve(now, rate.interval_ms()))
    }

    /// When a campaign may hand `channel` its next message, at or after `now`; `None` when
    /// the campaign has no `throttle`. Each campaign and channel has its own pace.
    pub(crate) fn campaign_slot(
        &self,
        registry: &Registry,
        campaign: &str,
        channel: &str,
        now: Millis,
    ) -> Option<Millis> {
        let rate = registry
            .workflows
            .get(campaign)?
            .campaign
            .as_ref()?
            .throttle
            .as_ref()?;
        let pacer = crate::sync::lock(&self.0)
            .entry(format!("campaign\u{1f}{campaign}\u{1f}{channel}"))
            .or_default()
            .clone();
        Some(pacer.reserve(now, rate.interval_ms()))
    }
}
