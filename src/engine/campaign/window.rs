//! A campaign's send window on the recipient's clock: when a message due now may go.

use jiff::Timestamp;
use jiff::civil::Weekday as Day;
use jiff::tz::TimeZone;

use crate::channels::policy::parse_time;
use crate::definitions::model::campaign::{SendWindow, Weekday};
use crate::store::Millis;

fn day(w: Weekday) -> Day {
    match w {
        Weekday::Mon => Day::Monday,
        Weekday::Tue => Day::Tuesday,
        Weekday::Wed => Day::Wednesday,
        Weekday::Thu => Day::Thursday,
        Weekday::Fri => Day::Friday,
        Weekday::Sat => Day::Saturday,
        Weekday::Sun => Day::Sunday,
    }
}

/// When the window next opens, if `now` is outside it, with why the message waits; `None`
/// when it may go now. The recipient's time zone wins over the window's own, then UTC.
pub(crate) fn hold(
    w: &SendWindow,
    recipient_tz: Option<&str>,
    now: Millis,
) -> Option<(Millis, String)> {
    let (name, zone) = recipient_tz
        .and_then(|tz| Some((tz, TimeZone::get(tz).ok()?)))
        .or_else(|| {
            let tz = w.timezone.as_deref()?;
            Some((tz, TimeZone::get(tz).ok()?))
        })
        .unwrap_or(("UTC", TimeZone::UTC));
    let (start, end) = (parse_time(&w.start)?, parse_time(&w.end)?);
    let now_ts = Timestamp::from_millisecond(now).ok()?;
    let local = now_ts.to_zoned(zone.clone());
    let open_on = |d: jiff::civil::Date| w.days.iter().any(|x| day(*x) == d.weekday());
    if open_on(local.date()) && local.time() >= start && local.time() < end {
        return None;
    }
    let mut date = local.date();
    for _ in 0..8 {
        if open_on(date) {
            let at = date.to_datetime(start).to_zoned(zone.clone()).ok()?;
            if at.timestamp() > now_ts {
                return Some((
                    at.timestamp().as_millisecond(),
                    format!(
                        "outside the campaign's send window ({}–{} in {name})",
                        w.start, w.end
                    ),
                ));
            }
        }
        date = date.tomorrow().ok()?;
    }
    None
}
