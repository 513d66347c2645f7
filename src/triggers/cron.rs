//! Cron schedules: standard 5-field expressions read in an IANA time zone.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Parses a 5-field cron expression (minute hour day-of-month month day-of-week). Weekdays
/// count from 0 = Sunday as in POSIX cron, and day-of-month and day-of-week combine with OR,
/// as in Vixie cron.
pub(crate) fn parse_schedule(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "a cron schedule has 5 fields (minute hour day-of-month month day-of-week), this one has {fields}"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("invalid cron schedule: {e}"))
}

/// Looks up an IANA time zone.
pub(crate) fn parse_timezone(name: &str) -> Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(name).map_err(|_| format!("unknown time zone `{name}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_fields_only() {
        assert!(parse_schedule("0 7 * * MON-FRI").is_ok());
        assert!(parse_schedule("*/5 * * * *").is_ok());
        assert!(
            parse_schedule("0 0 7 * * *")
                .unwrap_err()
                .contains("5 fields")
        );
        assert!(parse_schedule("61 * * * *").is_err());
        assert!(parse_timezone("America/Denver").is_ok());
        assert!(parse_timezone("Mars/Olympus").is_err());
    }
}
