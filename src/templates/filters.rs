//! Filters a message author needs beyond minijinja's own: first names, phone numbers and SMS
//! length. `register` also adds money and numbers (`numbers`), encodings (`encoding`: JSON,
//! base64, HMAC), and datetimes and durations (`time`); dates in a time zone are formatted by
//! minijinja-contrib's `datetimeformat`, `dateformat` and `timeformat` (with `tz=`).

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind};

pub(crate) fn register(env: &mut Environment<'static>) {
    env.add_filter("first_name", first_name);
    env.add_filter("phone", phone);
    env.add_filter("truncate_sms", truncate_sms);
    super::numbers::register(env);
    super::encoding::register(env);
    super::time::register(env);
}

/// `{{ contact.name | first_name }}`: "ada LOVELACE" → "Ada". Names already in mixed case keep
/// their case ("McKenzie"). An empty name gives `fallback` (default "").
pub fn first_name(value: Option<String>, kwargs: Kwargs) -> Result<String, Error> {
    let fallback: Option<String> = kwargs.get("fallback")?;
    kwargs.assert_all_used()?;
    let token = value
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .next()
        .map(|t| t.trim_matches(|c: char| !c.is_alphanumeric() && c != '-' && c != '\''))
        .unwrap_or("");
    if token.is_empty() {
        return Ok(fallback.unwrap_or_default());
    }
    let all_lower = token.chars().all(|c| !c.is_uppercase());
    let all_upper = token.chars().all(|c| !c.is_lowercase());
    if !(all_lower || all_upper) {
        return Ok(token.to_owned());
    }
    let mut chars = token.chars();
    let first = chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>())
        .unwrap_or_default();
    Ok(first + &chars.as_str().to_lowercase())
}

/// `{{ number | phone }}`, `{{ number | phone(format="national") }}`, with `region="GB"` for
/// numbers written without a country code (default US). Formats: `international`
/// (+1 801-555-1234, the default), `national` ((801) 555-1234) and `e164` (+18015551234).
/// Text that is not a phone number is returned unchanged, so a message is never lost to a
/// badly typed number.
pub fn phone(value: String, kwargs: Kwargs) -> Result<String, Error> {
    let format: Option<String> = kwargs.get("format")?;
    let region: Option<String> = kwargs.get("region")?;
    kwargs.assert_all_used()?;
    let mode = match format.as_deref().unwrap_or("international") {
        "international" => phonenumber::Mode::International,
        "national" => phonenumber::Mode::National,
        "e164" => phonenumber::Mode::E164,
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("unknown phone format `{other}`; use international, national or e164"),
            ));
        }
    };
    let region = region.as_deref().unwrap_or("US");
    let country = region.parse::<phonenumber::country::Id>().map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("unknown region `{region}`; use a two-letter code such as US or GB"),
        )
    })?;
    Ok(match phonenumber::parse(Some(country), &value) {
        Ok(n) if phonenumber::is_valid(&n) => n.format().mode(mode).to_string(),
        _ => value,
    })
}

/// Normalises a phone number to E.164, if it is one.
pub(crate) fn normalize_phone(value: &str, region: &str) -> Option<String> {
    let country = region.parse::<phonenumber::country::Id>().ok()?;
    let n = phonenumber::parse(Some(country), value).ok()?;
    phonenumber::is_valid(&n).then(|| n.format().mode(phonenumber::Mode::E164).to_string())
}

const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM_EXTENDED: &str = "^{}\\[~]|€\u{c}";

/// What one character costs in an SMS: GSM-7 septets, or `None` if the message must be sent
/// as UCS-2.
fn gsm_cost(c: char) -> Option<usize> {
    if GSM_BASIC.contains(c) {
        Some(1)
    } else if GSM_EXTENDED.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// `{{ text | truncate_sms }}`: cuts text to fit one SMS segment (or `segments=N`), ending
/// with "..." when cut. GSM-7 text fits 160 characters in one segment and 153 per segment in
/// more; any other character makes the message UCS-2, which fits 70, or 67 per segment.
pub(crate) fn truncate_sms(value: String, kwargs: Kwargs) -> Result<String, Error> {
    let segments: Option<u32> = kwargs.get("segments")?;
    kwargs.assert_all_used()?;
    let segments = segments.unwrap_or(1).max(1) as usize;
    let gsm = value.chars().all(|c| gsm_cost(c).is_some());
    let (single, multi) = if gsm { (160, 153) } else { (70, 67) };
    let limit = if segments == 1 {
        single
    } else {
        multi * segments
    };
    let cost = |c: char| {
        if gsm {
            gsm_cost(c).unwrap_or(1)
        } else {
            c.len_utf16()
        }
    };
    let total: usize = value.chars().map(cost).sum();
    if total <= limit {
        return Ok(value);
    }
    let budget = limit - 3;
    let mut used = 0;
    let mut out = String::new();
    for c in value.chars() {
        if used + cost(c) > budget {
            break;
        }
        used += cost(c);
        out.push(c);
    }
    let trimmed = out.trim_end();
    Ok(format!("{trimmed}..."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, ctx: serde_json::Value) -> String {
        let env = crate::templates::environment(10_000);
        env.render_str(src, minijinja::Value::from(minijinja::value::Serde(ctx)))
            .unwrap()
    }

    #[test]
    fn first_names() {
        let ctx =
            serde_json::json!({"a": "ada LOVELACE", "b": "  McKenzie Smith", "c": "", "d": "JOHN"});
        assert_eq!(render("{{ a|first_name }}", ctx.clone()), "Ada");
        assert_eq!(render("{{ b|first_name }}", ctx.clone()), "McKenzie");
        assert_eq!(
            render("{{ c|first_name(fallback='there') }}", ctx.clone()),
            "there"
        );
        assert_eq!(render("{{ d|first_name }}", ctx), "John");
    }

    #[test]
    fn phones() {
        let ctx =
            serde_json::json!({"p": "801-555-1234", "uk": "020 7946 0958", "junk": "call me"});
        assert_eq!(render("{{ p|phone }}", ctx.clone()), "+1 801-555-1234");
        assert_eq!(
            render("{{ p|phone(format='national') }}", ctx.clone()),
            "(801) 555-1234"
        );
        assert_eq!(
            render("{{ p|phone(format='e164') }}", ctx.clone()),
            "+18015551234"
        );
        assert_eq!(
            render("{{ uk|phone(region='GB', format='e164') }}", ctx.clone()),
            "+442079460958"
        );
        assert_eq!(render("{{ junk|phone }}", ctx), "call me");
        assert_eq!(
            normalize_phone("(801) 555-1234", "US").as_deref(),
            Some("+18015551234")
        );
        assert_eq!(normalize_phone("nope", "US"), None);
    }

    #[test]
    fn sms_lengths() {
        let short = "Hi Ada, your pre-approval is waiting".to_owned();
        let long = "x".repeat(200);
        let ctx = serde_json::json!({"s": short, "l": long, "u": "é".repeat(10) + &"😀".repeat(40), "ext": "{".repeat(100)});
        assert_eq!(render("{{ s|truncate_sms }}", ctx.clone()), short);
        let cut = render("{{ l|truncate_sms }}", ctx.clone());
        assert_eq!(cut.chars().count(), 160);
        assert!(cut.ends_with("..."));
        assert_eq!(
            render("{{ l|truncate_sms(segments=2) }}", ctx.clone()),
            "x".repeat(200)
        );
        // Emoji force UCS-2: 70 UTF-16 units, each emoji taking two.
        let u = render("{{ u|truncate_sms }}", ctx.clone());
        assert!(
            u.encode_utf16().count() <= 70,
            "{}",
            u.encode_utf16().count()
        );
        // Extended GSM characters cost two septets each: 78 braces + "..." = 159 septets.
        assert_eq!(
            render("{{ ext|truncate_sms }}", ctx),
            "{".repeat(78) + "..."
        );
    }

    /// The examples in the README's Templates section.
    #[test]
    fn readme_examples() {
        let ctx = serde_json::json!({"__now": "2026-03-07T19:00:00Z", "n": 2});
        let r = |src: &str| {
            crate::templates::environment(10_000)
                .render_str(src, minijinja::Value::from(minijinja::value::Serde(&ctx)))
                .unwrap_or_else(|e| panic!("{src}: {e:#}"))
        };
        assert_eq!(r("{{ 'ada LOVELACE' | first_name }}"), "Ada");
        assert_eq!(
            r("{{ '801-555-1234' | phone(format='national') }}"),
            "(801) 555-1234"
        );
        assert_eq!(r("{{ 1234.5 | currency }}"), "$1,234.50");
        assert_eq!(r("{{ 1234.5 | currency('EUR') }}"), "€1,234.50");
        assert_eq!(
            r("{{ 1234.5 | currency('EUR', locale='de-DE') }}"),
            "1.234,50\u{a0}€"
        );
        assert_eq!(r("{{ 1234.5 | currency(locale='ja-JP') }}"), "￥1,235");
        assert_eq!(
            r("{{ 1234567.891 | number(locale='de-DE', decimals=2) }}"),
            "1.234.567,89"
        );
        assert_eq!(r("{{ now() }}"), "2026-03-07T19:00:00Z");
        assert_eq!(r("{{ 1767225600 | datetime }}"), "2026-01-01T00:00:00Z");
        assert_eq!(
            r("{{ duration('1h30m') }} {{ duration('PT15M').seconds }} {{ duration(900) }}"),
            "PT1H30M 900 PT15M"
        );
        assert_eq!(
            r("{{ '2026-01-01T00:00:00Z' | datetime | add_duration('2d') }}"),
            "2026-01-03T00:00:00Z"
        );
        assert_eq!(
            r("{{ '2026-01-31' | datetime | add_months(1) }}"),
            "2026-02-28T00:00:00Z"
        );
        assert_eq!(
            r("{{ now() | dateformat(format='%A, %B %-d', tz='America/Denver') }}"),
            "Saturday, March 7"
        );
        assert_eq!(r("{{ ('{\"id\": 7}' | fromjson).id }}"), "7");
        assert_eq!(r("{{ 'user:pass' | b64encode }}"), "dXNlcjpwYXNz");
        assert_eq!(r("{{ n }} reminder{{ n | pluralize }}"), "2 reminders");
        assert_eq!(r("{{ 1500000 | filesizeformat }}"), "1.5 MB");
        assert_eq!(
            r("{% set row = cycler(['odd', 'even']) %}{{ row.next() }} {{ row.next() }}"),
            "odd even"
        );
    }
}
