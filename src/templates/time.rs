//! Datetimes and durations in templates.
//!
//! minijinja's `+`, `-` and `*` work on numbers, strings and lists only: an object cannot
//! overload them (its `Object` trait has comparison, `custom_cmp`, but no arithmetic hook).
//! So arithmetic is done with filters and functions, and comparison with the operators:
//!
//! - `duration('15m')` (also `90s`, `2h`, `1d`, `1w`, `1h30m`, ISO 8601 `PT15M`, or a number
//!   of seconds) is a duration value: it renders as ISO 8601 (`PT15M`), has `.seconds`,
//!   `.minutes`, `.hours` and `.days`, and compares with other durations.
//! - `now()`, `x | datetime`, `ago('15m')` and `from_now('2d')` are datetime values: they
//!   render as RFC 3339, compare with other datetimes (`ago('15m') > body.sent_at | datetime`),
//!   have `.year` ... `.second`, `.weekday` (1 = Monday), `.timestamp` and `.tz`, and work
//!   with `datetimeformat`, `dateformat` and `timeformat` (`tz=`).
//! - `dt | add_duration('2d')`, `dt | subtract_duration('15m')`, `dt | add_months(1)` and
//!   `duration_between(a, b)` do the arithmetic.
//!
//! Arithmetic uses jiff and happens in the datetime's own time zone: UTC unless it came from a
//! string with an offset or a zone, or `tz=` was given. Days and weeks are calendar days
//! there, so `1d` across a DST change is 23 or 25 hours and keeps the wall-clock time, while
//! `24h` is exactly 24 hours. Months and years have no fixed length, so `duration` refuses
//! them; `add_months` moves by calendar months instead.
//!
//! `now()` reads `__now` from the context: the engine passes its clock's time, so a run on a
//! virtual clock sees virtual time; outside a run it is the system time.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use jiff::civil::Time;
use jiff::fmt::temporal::Pieces;
use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Span, SpanRelativeTo, SpanRound, Timestamp, Unit, Zoned};
use minijinja::value::{DynObject, Kwargs, Object, ObjectRepr, Rest, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};

pub(crate) fn register(env: &mut Environment<'static>) {
    env.add_function("now", now);
    env.add_function("duration", duration);
    env.add_function("ago", ago);
    env.add_function("from_now", from_now);
    env.add_function("duration_between", duration_between);
    env.add_function("datetime", datetime);
    env.add_filter("datetime", datetime);
    env.add_filter("add_duration", add_duration);
    env.add_filter("subtract_duration", subtract_duration);
    env.add_filter("add_months", add_months);
    // minijinja-contrib's date filters, taught to read datetime values.
    env.add_filter("datetimeformat", |s: &State, v: Value, k: Kwargs| {
        minijinja_contrib::filters::datetimeformat(s, for_contrib(v), k)
    });
    env.add_filter("dateformat", |s: &State, v: Value, k: Kwargs| {
        minijinja_contrib::filters::dateformat(s, for_contrib(v), k)
    });
    env.add_filter("timeformat", |s: &State, v: Value, k: Kwargs| {
        minijinja_contrib::filters::timeformat(s, for_contrib(v), k)
    });
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// A point in time in a time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateTime(pub Zoned);

/// A length of time: a jiff span without months or years.
#[derive(Debug, Clone)]
pub struct Duration {
    span: Span,
    /// The span with days as 24 hours, for comparing and converting.
    exact: SignedDuration,
}

impl DateTime {
    pub fn value(z: Zoned) -> Value {
        Value::from_object(DateTime(z))
    }

    /// RFC 3339: `Z` in UTC, the offset otherwise.
    pub fn rfc3339(&self) -> String {
        let ts = self.0.timestamp();
        if is_utc(self.0.time_zone()) {
            ts.to_string()
        } else {
            ts.display_with_offset(self.0.offset()).to_string()
        }
    }
}

fn is_utc(tz: &TimeZone) -> bool {
    tz.iana_name() == Some("UTC")
}

impl Object for DateTime {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let z = &self.0;
        Some(match key.as_str()? {
            "year" => Value::from(z.year()),
            "month" => Value::from(z.month()),
            "day" => Value::from(z.day()),
            "hour" => Value::from(z.hour()),
            "minute" => Value::from(z.minute()),
            "second" => Value::from(z.second()),
            "weekday" => Value::from(z.weekday().to_monday_one_offset()),
            "timestamp" => {
                let ts = z.timestamp();
                if ts.subsec_nanosecond() == 0 {
                    Value::from(ts.as_second())
                } else {
                    Value::from(ts.as_nanosecond() as f64 / 1e9)
                }
            }
            "tz" => match z.time_zone().iana_name() {
                Some(name) => Value::from(name),
                None => Value::from(z.offset().to_string()),
            },
            _ => return None,
        })
    }

    fn custom_cmp(self: &Arc<Self>, other: &DynObject) -> Option<Ordering> {
        let other = other.downcast_ref::<DateTime>()?;
        Some(self.0.timestamp().cmp(&other.0.timestamp()))
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

impl Duration {
    fn new(span: Span) -> Result<Duration, Error> {
        let exact = span
            .to_duration(SpanRelativeTo::days_are_24_hours())
            .map_err(|e| invalid(format!("the duration {span} is out of range: {e}")))?;
        Ok(Duration { span, exact })
    }

    fn from_exact(exact: SignedDuration) -> Result<Duration, Error> {
        let span = Span::try_from(exact)
            .and_then(|s| s.round(SpanRound::new().largest(Unit::Hour)))
            .map_err(|e| invalid(format!("the duration is out of range: {e}")))?;
        Ok(Duration { span, exact })
    }

    fn negate(&self) -> Duration {
        Duration {
            span: self.span.negate(),
            exact: -self.exact,
        }
    }
}

/// A whole number as an integer, anything else as a float.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9e15 {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

impl Object for Duration {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let secs = self.exact.as_secs_f64();
        Some(match key.as_str()? {
            "seconds" => number(secs),
            "minutes" => number(secs / 60.0),
            "hours" => number(secs / 3600.0),
            "days" => number(secs / 86400.0),
            _ => return None,
        })
    }

    fn custom_cmp(self: &Arc<Self>, other: &DynObject) -> Option<Ordering> {
        let other = other.downcast_ref::<Duration>()?;
        Some(self.exact.cmp(&other.exact))
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.span)
    }
}

const DURATION_FORMS: &str = "write a number and a unit such as 90s, 15m, 2h, 1d or 1w, \
    several such as 1h30m, ISO 8601 such as PT15M, or a number of seconds";

/// A duration from a string, a number of seconds, or a duration.
fn to_duration(v: &Value, what: &str) -> Result<Duration, Error> {
    if let Some(d) = v.downcast_object_ref::<Duration>() {
        return Ok(d.clone());
    }
    match v.kind() {
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default().trim();
            let span: Span = s.parse().map_err(|e: jiff::Error| {
                if e.to_string().contains("range") {
                    invalid(format!("{what}: `{s}` is out of range"))
                } else {
                    invalid(format!("{what}: `{s}` is not a duration; {DURATION_FORMS}"))
                }
            })?;
            if span.get_years() != 0 || span.get_months() != 0 {
                return Err(invalid(format!(
                    "{what}: `{s}` uses months or years, which have no fixed length; use days \
                     (30d) or `add_months`"
                )));
            }
            Duration::new(span)
        }
        ValueKind::Number => {
            let secs = f64::try_from(v.clone()).unwrap_or(f64::NAN);
            let exact = SignedDuration::try_from_secs_f64(secs)
                .map_err(|_| invalid(format!("{what}: {v} seconds is out of range")))?;
            Duration::from_exact(exact)
        }
        ValueKind::Undefined => Err(Error::from(ErrorKind::UndefinedError)),
        kind => Err(invalid(format!(
            "{what}: expected a duration, got {}; {DURATION_FORMS}",
            describe(kind, v)
        ))),
    }
}

fn describe(kind: ValueKind, v: &Value) -> String {
    match kind {
        ValueKind::None => "null".to_owned(),
        ValueKind::Plain if v.downcast_object_ref::<DateTime>().is_some() => {
            "a datetime".to_owned()
        }
        ValueKind::Plain if v.downcast_object_ref::<Duration>().is_some() => {
            "a duration".to_owned()
        }
        other => format!("a {other}"),
    }
}

fn time_zone(name: &str) -> Result<TimeZone, Error> {
    TimeZone::get(name).map_err(|_| {
        invalid(format!(
            "unknown time zone `{name}`; use an IANA name such as America/Denver, Europe/Paris \
             or UTC"
        ))
    })
}

fn tz_kwarg(kwargs: &Kwargs) -> Result<Option<TimeZone>, Error> {
    let tz: Option<String> = kwargs.get("tz")?;
    tz.as_deref().map(time_zone).transpose()
}

const DATETIME_FORMS: &str = "write RFC 3339 such as 2026-01-31T09:00:00Z or 2026-01-31T09:00:00-07:00, a date such as \
     2026-01-31, or a Unix timestamp in seconds";

/// Parses a date or time string. Without an offset or zone in the text, the time is read in
/// `tz` (UTC if none); with one, the result is moved to `tz` if given.
pub(crate) fn parse_datetime(s: &str, tz: Option<&TimeZone>) -> Result<Zoned, Error> {
    let s = s.trim();
    let bad = || invalid(format!("`{s}` is not a date or time; {DATETIME_FORMS}"));
    let pieces = Pieces::parse(s).map_err(|_| bad())?;
    let local = tz.cloned().unwrap_or(TimeZone::UTC);
    let annotated = pieces
        .to_time_zone()
        .map_err(|e| invalid(format!("`{s}`: {e}")))?;
    let civil = pieces
        .date()
        .to_datetime(pieces.time().unwrap_or(Time::midnight()));
    let zoned = if let Some(offset) = pieces.to_numeric_offset() {
        let ts = offset.to_timestamp(civil).map_err(|_| bad())?;
        let zone = annotated.unwrap_or_else(|| {
            if offset == Offset::UTC {
                TimeZone::UTC
            } else {
                TimeZone::fixed(offset)
            }
        });
        ts.to_zoned(zone)
    } else if let Some(zone) = annotated {
        civil.to_zoned(zone).map_err(|_| bad())?
    } else {
        return civil.to_zoned(local).map_err(|_| bad());
    };
    Ok(match tz {
        Some(tz) => zoned.with_time_zone(tz.clone()),
        None => zoned,
    })
}

/// A datetime from a datetime, a string or a Unix timestamp.
fn to_zoned(v: &Value, tz: Option<&TimeZone>, what: &str) -> Result<Zoned, Error> {
    if let Some(d) = v.downcast_object_ref::<DateTime>() {
        return Ok(match tz {
            Some(tz) => d.0.with_time_zone(tz.clone()),
            None => d.0.clone(),
        });
    }
    let zone = || tz.cloned().unwrap_or(TimeZone::UTC);
    match v.kind() {
        ValueKind::String => parse_datetime(v.as_str().unwrap_or_default(), tz)
            .map_err(|e| invalid(format!("{what}: {}", e.detail().unwrap_or_default()))),
        ValueKind::Number => {
            let ts = match i64::try_from(v.clone()) {
                Ok(secs) => Timestamp::from_second(secs),
                Err(_) => {
                    let secs = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                    Timestamp::from_nanosecond((secs * 1e9) as i128)
                }
            };
            ts.map(|ts| ts.to_zoned(zone()))
                .map_err(|_| invalid(format!("{what}: {v} is out of range as a Unix timestamp")))
        }
        ValueKind::Undefined => Err(Error::from(ErrorKind::UndefinedError)),
        kind => Err(invalid(format!(
            "{what}: expected a date or time, got {}; {DATETIME_FORMS}",
            describe(kind, v)
        ))),
    }
}

/// The engine's time (`__now`), else the system's.
fn current(state: &State) -> Result<Zoned, Error> {
    if let Some(v) = state.lookup("__now")
        && let Some(s) = v.as_str()
    {
        return parse_datetime(s, None);
    }
    Ok(Timestamp::now().to_zoned(TimeZone::UTC))
}

/// `now()`, `now(tz='America/Denver')`: the current time.
pub fn now(state: &State, kwargs: Kwargs) -> Result<Value, Error> {
    let tz = tz_kwarg(&kwargs)?;
    kwargs.assert_all_used()?;
    let z = current(state)?;
    Ok(DateTime::value(match tz {
        Some(tz) => z.with_time_zone(tz),
        None => z,
    }))
}

/// `duration('15m')`, `duration(900)`.
pub fn duration(args: Rest<Value>) -> Result<Value, Error> {
    if args.len() > 1 {
        return Err(invalid(
            "duration takes one length, such as duration('1h30m')",
        ));
    }
    let Some(value) = args.first() else {
        return Err(invalid(format!(
            "duration needs a length, such as duration('15m'); {DURATION_FORMS}"
        )));
    };
    Ok(Value::from_object(to_duration(value, "duration")?))
}

fn shift(z: &Zoned, d: &Duration, what: &str) -> Result<Value, Error> {
    z.checked_add(d.span)
        .map(DateTime::value)
        .map_err(|e| invalid(format!("{what}: {} is out of range: {e}", d.span)))
}

/// `ago('15m')`, `ago('1d', tz='Europe/Paris')`: the current time less a duration.
pub fn ago(state: &State, d: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let tz = tz_kwarg(&kwargs)?;
    kwargs.assert_all_used()?;
    let d = d.ok_or_else(|| invalid("ago needs a duration, such as ago('15m')"))?;
    let d = to_duration(&d, "ago")?;
    let z = current(state)?;
    let z = tz.map_or(z.clone(), |tz| z.with_time_zone(tz));
    shift(&z, &d.negate(), "ago")
}

/// `from_now('2d')`: the current time plus a duration.
pub(crate) fn from_now(state: &State, d: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let tz = tz_kwarg(&kwargs)?;
    kwargs.assert_all_used()?;
    let d = d.ok_or_else(|| invalid("from_now needs a duration, such as from_now('2d')"))?;
    let d = to_duration(&d, "from_now")?;
    let z = current(state)?;
    let z = tz.map_or(z.clone(), |tz| z.with_time_zone(tz));
    shift(&z, &d, "from_now")
}

/// `'2026-01-31T09:00:00Z' | datetime`, `datetime(body.ts, tz='America/Denver')`.
pub(crate) fn datetime(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let tz = tz_kwarg(&kwargs)?;
    kwargs.assert_all_used()?;
    Ok(DateTime::value(to_zoned(&value, tz.as_ref(), "datetime")?))
}

/// `dt | add_duration('2d')`.
pub(crate) fn add_duration(value: Value, d: Option<Value>) -> Result<Value, Error> {
    let d =
        d.ok_or_else(|| invalid("add_duration needs a duration, such as add_duration('2d')"))?;
    let d = to_duration(&d, "add_duration")?;
    shift(&to_zoned(&value, None, "add_duration")?, &d, "add_duration")
}

/// `dt | subtract_duration('15m')`.
pub(crate) fn subtract_duration(value: Value, d: Option<Value>) -> Result<Value, Error> {
    let d = d.ok_or_else(|| {
        invalid("subtract_duration needs a duration, such as subtract_duration('15m')")
    })?;
    let d = to_duration(&d, "subtract_duration")?;
    shift(
        &to_zoned(&value, None, "subtract_duration")?,
        &d.negate(),
        "subtract_duration",
    )
}

/// `dt | add_months(1)`: the same day and time `n` calendar months later (earlier if
/// negative); a day past the month's end becomes its last day (Jan 31 + 1 → Feb 28).
pub(crate) fn add_months(value: Value, n: Option<Value>) -> Result<Value, Error> {
    let n = n
        .as_ref()
        .and_then(|n| i64::try_from(n.clone()).ok())
        .ok_or_else(|| {
            invalid("add_months needs a whole number of months, such as add_months(1) or add_months(-3)")
        })?;
    let z = to_zoned(&value, None, "add_months")?;
    Span::new()
        .try_months(n)
        .and_then(|span| z.checked_add(span))
        .map(DateTime::value)
        .map_err(|_| invalid(format!("add_months: {n} months is out of range")))
}

/// `duration_between(start, end)`: how long from `start` to `end` (negative if `end` is
/// earlier).
pub(crate) fn duration_between(start: Value, end: Value) -> Result<Value, Error> {
    let start = to_zoned(&start, None, "duration_between")?;
    let end = to_zoned(&end, None, "duration_between")?;
    Ok(Value::from_object(Duration::from_exact(
        start.duration_until(&end),
    )?))
}

/// A datetime value as the string minijinja-contrib's filters parse; other values unchanged.
fn for_contrib(v: Value) -> Value {
    match v.downcast_object_ref::<DateTime>() {
        // RFC 9557 keeps the zone (`...-07:00[America/Denver]`), so `tz` defaults to it.
        Some(d) => Value::from(d.0.to_string()),
        None => v,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn render(src: &str, ctx: serde_json::Value) -> Result<String, String> {
        crate::templates::environment(10_000)
            .render_str(src, minijinja::Value::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| crate::templates::describe_error(&e))
    }

    fn at(src: &str) -> String {
        render(src, json!({"__now": "2026-03-07T19:00:00Z"})).unwrap()
    }

    #[test]
    fn durations_parse_in_every_form() {
        assert_eq!(at("{{ duration('15m') }}"), "PT15M");
        assert_eq!(at("{{ duration('15m').seconds }}"), "900");
        assert_eq!(at("{{ duration('2h').minutes }}"), "120");
        assert_eq!(at("{{ duration('1d').hours }}"), "24");
        assert_eq!(at("{{ duration('90s') }}"), "PT90S");
        assert_eq!(at("{{ duration('1h30m').minutes }}"), "90");
        assert_eq!(at("{{ duration('1h 30m').minutes }}"), "90");
        assert_eq!(at("{{ duration('PT15M').seconds }}"), "900");
        assert_eq!(at("{{ duration('P1DT2H').hours }}"), "26");
        assert_eq!(at("{{ duration('1w').days }}"), "7");
        assert_eq!(at("{{ duration('-15m').seconds }}"), "-900");
        assert_eq!(at("{{ duration('500ms').seconds }}"), "0.5");
        assert_eq!(at("{{ duration(90) }}"), "PT1M30S");
        assert_eq!(at("{{ duration(5400).hours }}"), "1.5");
        assert_eq!(at("{{ duration(duration('2h')).hours }}"), "2");
    }

    #[test]
    fn durations_compare() {
        assert_eq!(at("{{ duration('90m') > duration('1h') }}"), "True");
        assert_eq!(at("{{ duration('60m') == duration('1h') }}"), "True");
        assert_eq!(at("{{ duration('1d') == duration('24h') }}"), "True");
        assert_eq!(
            at("{{ [duration('2h'), duration('5m'), duration('1d')] | sort | join(',') }}"),
            "PT5M,PT2H,P1D"
        );
        assert_eq!(at("{{ duration('15m') | tojson }}"), "\"PT15M\"");
    }

    #[test]
    fn bad_durations_say_what_would_do() {
        let e = render("{{ duration('15x') }}", json!({})).unwrap_err();
        assert_eq!(
            e,
            "invalid operation: duration: `15x` is not a duration; write a number and a unit \
             such as 90s, 15m, 2h, 1d or 1w, several such as 1h30m, ISO 8601 such as PT15M, or \
             a number of seconds"
        );
        let e = render("{{ duration('15') }}", json!({})).unwrap_err();
        assert!(e.contains("`15` is not a duration"), "{e}");
        let e = render("{{ duration('1mo') }}", json!({})).unwrap_err();
        assert!(
            e.contains("`1mo` uses months or years, which have no fixed length; use days (30d) or `add_months`"),
            "{e}"
        );
        let e = render("{{ duration() }}", json!({})).unwrap_err();
        assert!(e.contains("duration needs a length"), "{e}");
        let e = render("{{ duration(none) }}", json!({})).unwrap_err();
        assert!(e.contains("expected a duration, got null"), "{e}");
        let e = render("{{ duration('1h', '2h') }}", json!({})).unwrap_err();
        assert!(e.contains("duration takes one length"), "{e}");
        let e = render("{{ duration([1]) }}", json!({})).unwrap_err();
        assert!(e.contains("expected a duration, got a sequence"), "{e}");
    }

    #[test]
    fn now_follows_the_engine_clock() {
        assert_eq!(at("{{ now() }}"), "2026-03-07T19:00:00Z");
        assert_eq!(
            render("{{ now() }}", json!({"__now": "2026-03-07T19:00:00.123Z"})).unwrap(),
            "2026-03-07T19:00:00.123Z"
        );
        assert_eq!(
            at("{{ now(tz='America/Denver') }}"),
            "2026-03-07T12:00:00-07:00"
        );
        assert_eq!(at("{{ now() | tojson }}"), "\"2026-03-07T19:00:00Z\"");
        assert_eq!(
            at("{{ now().year }}-{{ now().month }}-{{ now().day }}"),
            "2026-3-7"
        );
        assert_eq!(
            at("{{ now().weekday }} {{ now().timestamp }}"),
            "6 1772910000"
        );
        // Outside a run it is the system time.
        let sys = render("{{ now().year }}", json!({})).unwrap();
        assert!(sys.parse::<i32>().unwrap() >= 2025, "{sys}");
    }

    #[test]
    fn arithmetic_with_filters() {
        assert_eq!(
            at("{{ now() | subtract_duration('15m') }}"),
            "2026-03-07T18:45:00Z"
        );
        assert_eq!(
            at("{{ now() | add_duration('-15m') }}"),
            "2026-03-07T18:45:00Z"
        );
        assert_eq!(at("{{ ago('15m') }}"), "2026-03-07T18:45:00Z");
        assert_eq!(at("{{ from_now('2d') }}"), "2026-03-09T19:00:00Z");
        assert_eq!(
            at("{{ '2026-01-01T00:00:00Z' | datetime | add_duration('2d') }}"),
            "2026-01-03T00:00:00Z"
        );
        assert_eq!(
            at("{{ '2026-01-01T09:30:00+02:00' | datetime | add_duration(duration('1h30m')) }}"),
            "2026-01-01T11:00:00+02:00"
        );
        assert_eq!(
            at("{{ '2026-01-31' | datetime | add_months(1) }}"),
            "2026-02-28T00:00:00Z"
        );
        assert_eq!(
            at("{{ '2026-03-31T10:00:00Z' | datetime | add_months(-1) }}"),
            "2026-02-28T10:00:00Z"
        );
        assert_eq!(
            at("{{ duration_between('2026-03-07T18:00:00Z', now()) }}"),
            "PT1H"
        );
        assert_eq!(
            at("{{ duration_between(now(), '2026-03-07T18:00:00Z').minutes }}"),
            "-60"
        );
        assert_eq!(at("{{ 1772910000 | datetime }}"), "2026-03-07T19:00:00Z");
        assert_eq!(
            at("{{ 1772910000.5 | datetime }}"),
            "2026-03-07T19:00:00.5Z"
        );
    }

    #[test]
    fn datetimes_compare() {
        let ctx = json!({"__now": "2026-03-07T19:00:00Z", "sent": "2026-03-07T18:50:00Z", "old": "2026-03-07T11:00:00-07:00"});
        let r = |s: &str| render(s, ctx.clone()).unwrap();
        assert_eq!(r("{{ ago('15m') > sent | datetime }}"), "False");
        assert_eq!(r("{{ ago('5m') > sent | datetime }}"), "True");
        // The same instant written in two zones is equal.
        assert_eq!(
            r("{{ old | datetime == '2026-03-07T18:00:00Z' | datetime }}"),
            "True"
        );
        assert_eq!(
            r("{{ [now(), old | datetime, sent | datetime] | sort | join(' ') }}"),
            "2026-03-07T11:00:00-07:00 2026-03-07T18:50:00Z 2026-03-07T19:00:00Z"
        );
        // Fractions of a second compare as time, not as text.
        assert_eq!(
            r("{{ '2026-03-07T19:00:00.5Z' | datetime > now() }}"),
            "True"
        );
    }

    #[test]
    fn days_are_calendar_days_in_a_time_zone() {
        // DST starts in Denver on 2026-03-08 at 02:00.
        let base = "'2026-03-07T12:00:00' | datetime(tz='America/Denver')";
        assert_eq!(
            at(&format!("{{{{ {base} }}}}")),
            "2026-03-07T12:00:00-07:00"
        );
        assert_eq!(
            at(&format!("{{{{ {base} | add_duration('1d') }}}}")),
            "2026-03-08T12:00:00-06:00"
        );
        assert_eq!(
            at(&format!("{{{{ {base} | add_duration('24h') }}}}")),
            "2026-03-08T13:00:00-06:00"
        );
        // In UTC a day is 24 hours.
        assert_eq!(
            at("{{ '2026-03-07T19:00:00Z' | datetime | add_duration('1d') }}"),
            "2026-03-08T19:00:00Z"
        );
        assert_eq!(
            at("{{ now(tz='America/Denver') | add_duration('1d') | datetime(tz='UTC') }}"),
            "2026-03-08T18:00:00Z"
        );
        assert_eq!(
            at("{{ ago('1d', tz='America/Denver').tz }}"),
            "America/Denver"
        );
    }

    #[test]
    fn results_work_with_the_date_filters() {
        assert_eq!(
            at("{{ now() | add_duration('1d') | dateformat(format='%Y-%m-%d') }}"),
            "2026-03-08"
        );
        assert_eq!(
            at("{{ now() | datetimeformat(format='%Y-%m-%d %H:%M %Z', tz='America/Denver') }}"),
            "2026-03-07 12:00 MST"
        );
        // A datetime keeps its zone for the filters.
        assert_eq!(
            at(
                "{{ now(tz='America/Denver') | add_duration('1d') | timeformat(format='%H:%M %Z') }}"
            ),
            "12:00 MDT"
        );
        // Strings still work as before.
        assert_eq!(
            at("{{ '2026-03-07T19:00:00Z' | dateformat(format='%A', tz='Asia/Tokyo') }}"),
            "Sunday"
        );
    }

    #[test]
    fn values_become_json_strings() {
        let t = crate::templates::Templates::empty(10_000);
        let ctx = crate::templates::context(
            &json!({"__now": "2026-03-07T19:00:00Z", "sent": "2026-03-07T18:50:00Z"}),
        );
        assert_eq!(
            t.eval("now()", &ctx).unwrap(),
            json!("2026-03-07T19:00:00Z")
        );
        assert_eq!(
            t.render_json(
                &json!({"at": "{{ from_now('1h') }}", "wait": "{{ duration('15m') }}", "s": "{{ duration('15m').seconds }}"}),
                &ctx
            )
            .unwrap(),
            json!({"at": "2026-03-07T20:00:00Z", "wait": "PT15M", "s": 900})
        );
        assert!(t.is_true("ago('15m') < sent | datetime", &ctx).unwrap());
    }

    #[test]
    fn bad_datetimes_say_what_would_do() {
        let e = render("{{ 'next tuesday' | datetime }}", json!({})).unwrap_err();
        assert_eq!(
            e,
            "invalid operation: datetime: `next tuesday` is not a date or time; write RFC 3339 \
             such as 2026-01-31T09:00:00Z or 2026-01-31T09:00:00-07:00, a date such as \
             2026-01-31, or a Unix timestamp in seconds"
        );
        let e = render(
            "{{ '2026-01-01' | datetime(tz='Mars/Olympus') }}",
            json!({}),
        )
        .unwrap_err();
        assert!(
            e.contains("unknown time zone `Mars/Olympus`; use an IANA name such as America/Denver"),
            "{e}"
        );
        let e = render("{{ {'a': 1} | add_duration('1d') }}", json!({})).unwrap_err();
        assert!(
            e.contains("add_duration: expected a date or time, got a map"),
            "{e}"
        );
        let e = render("{{ now() | add_duration }}", json!({})).unwrap_err();
        assert!(e.contains("add_duration needs a duration"), "{e}");
        let e = render("{{ now() | add_duration(now()) }}", json!({})).unwrap_err();
        assert!(e.contains("expected a duration, got a datetime"), "{e}");
        let e = render("{{ now() | add_months('x') }}", json!({})).unwrap_err();
        assert!(
            e.contains("add_months needs a whole number of months"),
            "{e}"
        );
        let e = render("{{ now() | add_duration('9999999d') }}", json!({})).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
    }
}
