//! What Herald does around a provider, whichever it is: the channel to fall back to, the pace
//! of sends, quiet hours and a frequency cap. These settings sit in a channel's own block in
//! `herald.yaml`, beside the provider's, so [`ChannelDef`] reads the two apart and the schema
//! offers both in every provider's block.

use std::sync::Mutex;

use jiff::Timestamp;
use jiff::civil::Time;
use jiff::tz::TimeZone;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::config::ChannelConfig;
use crate::definitions::model::Duration;
use crate::definitions::model::step::MessageCategory;

/// A channel in `herald.yaml`: its provider's settings and Herald's policy for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelDef {
    pub provider: ChannelConfig,
    pub policy: ChannelPolicy,
}

impl From<ChannelConfig> for ChannelDef {
    fn from(provider: ChannelConfig) -> Self {
        ChannelDef {
            provider,
            policy: ChannelPolicy::default(),
        }
    }
}

impl std::ops::Deref for ChannelDef {
    type Target = ChannelConfig;
    fn deref(&self) -> &ChannelConfig {
        &self.provider
    }
}

/// Herald's policy for one channel, whatever its provider.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelPolicy {
    /// Another channel that takes a message this one failed for good (a permanent error, or
    /// its retries ran out), such as a second e-mail provider. The recipient must be an
    /// address the fallback can reach too.
    #[serde(default)]
    pub fallback: Option<String>,
    /// The most messages this channel hands its provider per window, paced evenly: Twilio
    /// takes one text per second from a long code (`{ messages: 1, per: 1s }`). The pace is
    /// held per Herald process.
    #[serde(default)]
    pub rate: Option<PerWindow>,
    /// Hours in which this channel sends no message of the listed categories; overrides
    /// `compliance.quiet_hours`. `off` turns them off for this channel.
    #[serde(default)]
    pub quiet_hours: Option<QuietHoursSetting>,
    /// The most `marketing` messages one recipient gets on this channel per window; overrides
    /// `compliance.frequency_cap`. A send over the cap is suppressed, with the reason in the
    /// step log.
    #[serde(default)]
    pub frequency_cap: Option<PerWindow>,
}

impl ChannelPolicy {
    /// The policy's keys, which a channel's block holds beside its provider's.
    fn keys() -> &'static [&'static str] {
        &["fallback", "rate", "quiet_hours", "frequency_cap"]
    }
}

impl<'de> Deserialize<'de> for ChannelDef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut provider = Map::<String, Value>::deserialize(d)?;
        let mut policy = Map::new();
        for key in ChannelPolicy::keys() {
            if let Some(v) = provider.remove(*key) {
                policy.insert((*key).to_owned(), v);
            }
        }
        Ok(ChannelDef {
            provider: serde_json::from_value(Value::Object(provider)).map_err(D::Error::custom)?,
            policy: serde_json::from_value(Value::Object(policy)).map_err(D::Error::custom)?,
        })
    }
}

impl JsonSchema for ChannelDef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ChannelDef".into()
    }

    /// Each provider's block, with the policy's properties added: a provider's schema denies
    /// unknown properties, so the policy must be in every one.
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = ChannelConfig::json_schema(generator);
        // Registering the policy puts the types it refers to among the generator's $defs; its
        // own definition is only borrowed from, so it is taken out again.
        generator.subschema_for::<ChannelPolicy>();
        let policy = generator
            .definitions_mut()
            .shift_remove("ChannelPolicy")
            .unwrap_or_default();
        let props = policy
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if let Some(variants) = schema.get_mut("oneOf").and_then(Value::as_array_mut) {
            for v in variants {
                if let Some(p) = v.get_mut("properties").and_then(Value::as_object_mut) {
                    for (k, s) in &props {
                        p.insert(k.clone(), s.clone());
                    }
                }
            }
        }
        schema
    }
}

/// A number of messages per window, such as `{ messages: 60, per: 1m }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerWindow {
    #[schemars(range(min = 1))]
    pub messages: u32,
    pub per: Duration,
}

impl PerWindow {
    /// The even spacing between two messages, in milliseconds (at least 1 µs, in ms).
    pub fn interval_ms(&self) -> f64 {
        (self.per.as_std().as_secs_f64() * 1000.0) / f64::from(self.messages.max(1))
    }
}

/// Quiet hours, or `off`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum QuietHoursSetting {
    Off(Off),
    Window(QuietHours),
}

impl QuietHoursSetting {
    pub fn window(&self) -> Option<&QuietHours> {
        match self {
            QuietHoursSetting::Off(_) => None,
            QuietHoursSetting::Window(w) => Some(w),
        }
    }
}

/// The word that turns quiet hours off for a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Off {
    Off,
}

pub const LOCAL_TIME_PATTERN: &str = "^([01][0-9]|2[0-3]):[0-5][0-9]$";

/// Hours, in the recipient's own time zone, in which no message of the listed categories is
/// sent. A send that falls inside them waits in the outbox until they end; it is not dropped.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// When they start, as HH:MM on a 24-hour clock, such as "21:00".
    #[schemars(regex(pattern = LOCAL_TIME_PATTERN))]
    pub start: String,
    /// When they end, such as "08:00"; before `start`, they run past midnight.
    #[schemars(regex(pattern = LOCAL_TIME_PATTERN))]
    pub end: String,
    /// The time zone for a recipient whose contact has none, such as "America/Chicago". Unset,
    /// such a recipient's messages are not held.
    #[serde(default)]
    pub timezone: Option<String>,
    /// The categories held; by default `marketing` only, so a receipt or an answer to a call
    /// still goes at once.
    #[serde(default = "QuietHours::default_categories")]
    pub categories: Vec<MessageCategory>,
}

impl QuietHours {
    fn default_categories() -> Vec<MessageCategory> {
        vec![MessageCategory::Marketing]
    }

    /// The carriers' and the FCC's window: nothing between 21:00 and 08:00.
    pub fn telephone_default() -> QuietHours {
        QuietHours {
            start: "21:00".into(),
            end: "08:00".into(),
            timezone: None,
            categories: QuietHours::default_categories(),
        }
    }

    /// When a message of `category` due at `now` for a recipient in `zone` may go: `None` when
    /// it may go now, otherwise the end of the quiet hours it falls in.
    pub fn hold_until(
        &self,
        now: Timestamp,
        zone: &TimeZone,
        category: MessageCategory,
    ) -> Option<Timestamp> {
        if !self.categories.contains(&category) {
            return None;
        }
        let (start, end) = (parse_time(&self.start)?, parse_time(&self.end)?);
        if start == end {
            return None;
        }
        let local = now.to_zoned(zone.clone());
        let t = local.time();
        let inside = if start < end {
            t >= start && t < end
        } else {
            t >= start || t < end
        };
        if !inside {
            return None;
        }
        // The next `end` after now; across a DST gap the later reading of the wall clock wins.
        let today = local.date();
        for date in [today, today.tomorrow().ok()?] {
            let at = date.to_datetime(end).to_zoned(zone.clone()).ok()?;
            if at.timestamp() > now {
                return Some(at.timestamp());
            }
        }
        None
    }

    /// How the window reads in a log line: "21:00–08:00 in America/Chicago".
    pub fn describe(&self, zone: &str) -> String {
        format!("{}–{} in {zone}", self.start, self.end)
    }
}

/// Reads "HH:MM".
pub fn parse_time(s: &str) -> Option<Time> {
    let (h, m) = s.split_once(':')?;
    Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
}

/// Paces one channel's sends per process: each message reserves the next free slot, so a
/// backlog is spread evenly rather than sent in bursts. A reservation, not a yes/no check,
/// is what lets a dispatcher put a claimed message back until its turn without spinning.
#[derive(Debug, Default)]
pub struct Pacer {
    next: Mutex<f64>,
}

impl Pacer {
    /// Reserves a slot at or after `now` (ms); returns when it is.
    pub fn reserve(&self, now: i64, interval_ms: f64) -> i64 {
        let mut next = crate::sync::lock(&self.next);
        let slot = next.max(now as f64);
        *next = slot + interval_ms;
        slot.ceil() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn quiet_hours_past_midnight_hold_until_the_morning_in_the_recipients_zone() {
        let q = QuietHours::telephone_default();
        let chicago = TimeZone::get("America/Chicago").unwrap();
        // 03:30 UTC is 21:30 in Chicago (CST): held until 08:00 Chicago, 14:00 UTC.
        assert_eq!(
            q.hold_until(
                at("2026-12-04T03:30:00Z"),
                &chicago,
                MessageCategory::Marketing
            ),
            Some(at("2026-12-04T14:00:00Z"))
        );
        // 06:00 Chicago is still quiet; 08:00 is not.
        assert_eq!(
            q.hold_until(
                at("2026-12-04T12:00:00Z"),
                &chicago,
                MessageCategory::Marketing
            ),
            Some(at("2026-12-04T14:00:00Z"))
        );
        assert_eq!(
            q.hold_until(
                at("2026-12-04T14:00:00Z"),
                &chicago,
                MessageCategory::Marketing
            ),
            None
        );
        // The same instant is afternoon in Berlin.
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(
            q.hold_until(
                at("2026-12-04T14:00:00Z"),
                &berlin,
                MessageCategory::Marketing
            ),
            None
        );
        // A transactional message is not held.
        assert_eq!(
            q.hold_until(
                at("2026-12-04T03:30:00Z"),
                &chicago,
                MessageCategory::Transactional
            ),
            None
        );
    }

    #[test]
    fn quiet_hours_within_a_day_and_across_a_dst_change() {
        let q = QuietHours {
            start: "12:00".into(),
            end: "13:00".into(),
            timezone: None,
            categories: vec![MessageCategory::Marketing],
        };
        let utc = TimeZone::UTC;
        assert_eq!(
            q.hold_until(at("2026-06-01T12:30:00Z"), &utc, MessageCategory::Marketing),
            Some(at("2026-06-01T13:00:00Z"))
        );
        assert_eq!(
            q.hold_until(at("2026-06-01T11:59:00Z"), &utc, MessageCategory::Marketing),
            None
        );
        // The night US clocks go forward (8 March 2026): 22:00 EST is 03:00 UTC; the morning's
        // 08:00 is EDT, 12:00 UTC.
        let ny = TimeZone::get("America/New_York").unwrap();
        assert_eq!(
            QuietHours::telephone_default().hold_until(
                at("2026-03-08T03:00:00Z"),
                &ny,
                MessageCategory::Marketing
            ),
            Some(at("2026-03-08T12:00:00Z"))
        );
    }

    #[test]
    fn a_pacer_spreads_a_backlog_evenly() {
        let p = Pacer::default();
        let slots: Vec<i64> = (0..4).map(|_| p.reserve(1_000, 250.0)).collect();
        assert_eq!(slots, [1_000, 1_250, 1_500, 1_750]);
        // After an idle spell the next slot is now, not in the past.
        assert_eq!(p.reserve(10_000, 250.0), 10_000);
    }

    #[test]
    fn a_channel_block_holds_the_provider_and_the_policy() {
        let def: ChannelDef = serde_json::from_value(serde_json::json!({
            "provider": "log",
            "fallback": "backup",
            "rate": {"messages": 1, "per": "1s"},
            "quiet_hours": "off",
        }))
        .unwrap();
        assert_eq!(def.provider, ChannelConfig::Log {});
        assert_eq!(def.policy.fallback.as_deref(), Some("backup"));
        assert_eq!(def.policy.rate.unwrap().interval_ms(), 1000.0);
        assert!(def.policy.quiet_hours.unwrap().window().is_none());
        let e = serde_json::from_value::<ChannelDef>(serde_json::json!({
            "provider": "log", "rate": {"messages": 1}
        }))
        .unwrap_err();
        assert!(e.to_string().contains("per"), "{e}");
    }
}
