//! Locale-aware numbers and money: `{{ 1234.5 | currency('EUR', locale='de-DE') }}` →
//! `1.234,50 €`, `{{ 1234567.891 | number(locale='en-IN', decimals=2) }}` → `12,34,567.89`.
//!
//! The locales are a table, not a crate. Each row is a locale's separators, grouping, money
//! patterns and currency symbols as CLDR 48 gives them; the tests check every row against
//! ICU's output for the same locale. (icu_decimal formats numbers but not money; icu4x's
//! currency formatter is in icu_experimental, which brings sixteen more crates and a 4.7 MB
//! data crate. A locale missing from the table is an error that lists the ones there are.)
//!
//! Rounding is half away from zero on the number's shortest decimal form, as
//! `Intl.NumberFormat` does: 0.125 is 0.13, 2.675 is 2.68.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

pub(crate) fn register(env: &mut Environment<'static>) {
    env.add_filter("currency", currency);
    env.add_filter("number", number);
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// The currencies the locale table has symbols for, with their minor-unit digits.
const CURRENCIES: [(&str, usize); 10] = [
    ("USD", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("JPY", 0),
    ("CAD", 2),
    ("AUD", 2),
    ("MXN", 2),
    ("INR", 2),
    ("BRL", 2),
    ("CHF", 2),
];

const NBSP: &str = "\u{a0}";

struct Locale {
    tag: &'static str,
    decimal: &'static str,
    group: &'static str,
    /// 2 where a four-digit number is not grouped (es: 1234,5 but 12.345,6).
    min_grouping: usize,
    /// Groups of two above the thousands (en-IN: 12,34,567).
    indian: bool,
    /// Money patterns: `¤` is the symbol, `#` the number, `-` the minus sign.
    positive: &'static str,
    negative: &'static str,
    /// The locale's own currency, used when none is given.
    currency: &'static str,
    /// Symbols in the order of [`CURRENCIES`].
    symbols: [&'static str; 10],
}

const PREFIX: (&str, &str) = ("¤#", "-¤#");
const SUFFIX: (&str, &str) = ("#\u{a0}¤", "-#\u{a0}¤");

const fn row(
    tag: &'static str,
    (decimal, group, min_grouping, indian): (&'static str, &'static str, usize, bool),
    (positive, negative): (&'static str, &'static str),
    currency: &'static str,
    symbols: [&'static str; 10],
) -> Locale {
    Locale {
        tag,
        decimal,
        group,
        min_grouping,
        indian,
        positive,
        negative,
        currency,
        symbols,
    }
}

const DOT_COMMA: (&str, &str, usize, bool) = (".", ",", 1, false);
const COMMA_DOT: (&str, &str, usize, bool) = (",", ".", 1, false);

#[rustfmt::skip]
const LOCALES: &[Locale] = &[
    row("de-CH", (".", "'", 1, false), ("¤\u{a0}#", "¤-#"), "CHF",
        ["$", "EUR", "£", "¥", "CA$", "AU$", "MX$", "₹", "R$", "CHF"]),
    row("de-DE", COMMA_DOT, SUFFIX, "EUR",
        ["$", "€", "£", "¥", "CA$", "AU$", "MX$", "₹", "R$", "CHF"]),
    row("en-AU", DOT_COMMA, PREFIX, "AUD",
        ["USD", "EUR", "GBP", "JPY", "CAD", "$", "MXN", "INR", "BRL", "CHF"]),
    row("en-CA", DOT_COMMA, PREFIX, "CAD",
        ["US$", "€", "£", "JP¥", "$", "A$", "MX$", "₹", "R$", "CHF"]),
    row("en-GB", DOT_COMMA, PREFIX, "GBP",
        ["US$", "€", "£", "JP¥", "CA$", "A$", "MX$", "₹", "R$", "CHF"]),
    row("en-IN", (".", ",", 1, true), PREFIX, "INR",
        ["$", "€", "£", "JP¥", "CA$", "A$", "MX$", "₹", "R$", "CHF"]),
    row("en-US", DOT_COMMA, PREFIX, "USD",
        ["$", "€", "£", "¥", "CA$", "A$", "MX$", "₹", "R$", "CHF"]),
    row("es-ES", (",", ".", 2, false), SUFFIX, "EUR",
        ["US$", "€", "GBP", "JPY", "CAD", "AUD", "MXN", "INR", "BRL", "CHF"]),
    row("es-MX", DOT_COMMA, PREFIX, "MXN",
        ["USD", "EUR", "GBP", "JPY", "CAD", "AUD", "$", "INR", "BRL", "CHF"]),
    row("fr-CA", (",", "\u{a0}", 1, false), SUFFIX, "CAD",
        ["$\u{a0}US", "€", "£", "¥", "$", "$\u{a0}AU", "MXN", "INR", "R$", "CHF"]),
    row("fr-FR", (",", "\u{202f}", 1, false), SUFFIX, "EUR",
        ["$US", "€", "£GB", "JPY", "$CA", "$AU", "$MX", "₹", "R$", "CHF"]),
    row("it-IT", (",", ".", 2, false), SUFFIX, "EUR",
        ["USD", "€", "£", "JPY", "CA$", "A$", "MXN", "INR", "BRL", "CHF"]),
    row("ja-JP", DOT_COMMA, PREFIX, "JPY",
        ["$", "€", "£", "￥", "CA$", "A$", "MX$", "₹", "R$", "CHF"]),
    row("nl-NL", COMMA_DOT, ("¤\u{a0}#", "¤\u{a0}-#"), "EUR",
        ["US$", "€", "£", "JP¥", "C$", "AU$", "MX$", "₹", "R$", "CHF"]),
    row("pt-BR", COMMA_DOT, ("¤\u{a0}#", "-¤\u{a0}#"), "BRL",
        ["US$", "€", "£", "JP¥", "CA$", "AU$", "MX$", "₹", "R$", "CHF"]),
];

fn known_locales() -> String {
    LOCALES.iter().map(|l| l.tag).collect::<Vec<_>>().join(", ")
}

fn known_currencies() -> String {
    let mut codes: Vec<&str> = CURRENCIES.iter().map(|(c, _)| *c).collect();
    codes.sort();
    codes.join(", ")
}

fn locale(tag: &str) -> Result<&'static Locale, Error> {
    let wanted = tag.trim().replace('_', "-");
    LOCALES
        .iter()
        .find(|l| l.tag.eq_ignore_ascii_case(&wanted))
        .ok_or_else(|| {
            invalid(format!(
                "unknown locale `{tag}`; known locales: {}",
                known_locales()
            ))
        })
}

/// A number as decimal digits, without its sign.
#[derive(Debug, PartialEq)]
struct Digits {
    negative: bool,
    int: String,
    frac: String,
}

impl Digits {
    /// Reads a number, or a string holding one, as its shortest decimal form.
    fn of(value: &Value, filter: &str) -> Result<Digits, Error> {
        let not_a_number = || {
            invalid(format!(
                "{filter}: {} is not a number; {filter} takes a number or a numeric string",
                match value.kind() {
                    ValueKind::String => format!("`{}`", value.as_str().unwrap_or_default()),
                    ValueKind::None => "null".to_owned(),
                    _ => value.to_string(),
                }
            ))
        };
        let text = match value.kind() {
            ValueKind::Undefined => return Err(Error::from(ErrorKind::UndefinedError)),
            ValueKind::String => {
                let s = value.as_str().unwrap_or_default().trim();
                let plain = s.strip_prefix(['-', '+']).unwrap_or(s);
                let is_decimal = !plain.is_empty()
                    && plain.chars().all(|c| c.is_ascii_digit() || c == '.')
                    && plain.matches('.').count() <= 1
                    && plain.chars().any(|c| c.is_ascii_digit());
                if is_decimal {
                    s.to_owned()
                } else {
                    float_text(s.parse::<f64>().map_err(|_| not_a_number())?)
                        .ok_or_else(not_a_number)?
                }
            }
            // Integers exactly; floats (and floats beyond i64) by their shortest form.
            ValueKind::Number => match i128::try_from(value.clone()) {
                Ok(i) => i.to_string(),
                Err(_) => float_text(f64::try_from(value.clone()).map_err(|_| not_a_number())?)
                    .ok_or_else(not_a_number)?,
            },
            _ => return Err(not_a_number()),
        };
        let (negative, body) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(&text)),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let int = int.trim_start_matches('0');
        Ok(Digits {
            negative,
            int: if int.is_empty() { "0" } else { int }.to_owned(),
            frac: frac.to_owned(),
        })
    }

    /// Rounds half away from zero to `max` fraction digits, then pads to `min`.
    fn round(mut self, min: usize, max: usize) -> Digits {
        if self.frac.len() > max {
            let round_up = self.frac.as_bytes()[max] >= b'5';
            self.frac.truncate(max);
            if round_up {
                let mut all: Vec<u8> = format!("{}{}", self.int, self.frac).into_bytes();
                let mut i = all.len();
                loop {
                    if i == 0 {
                        all.insert(0, b'1');
                        break;
                    }
                    i -= 1;
                    if all[i] == b'9' {
                        all[i] = b'0';
                    } else {
                        all[i] += 1;
                        break;
                    }
                }
                let split = all.len() - max;
                let all = String::from_utf8(all).unwrap_or_default();
                self.int = all[..split].to_owned();
                self.frac = all[split..].to_owned();
            }
        }
        while self.frac.len() > min && self.frac.ends_with('0') {
            self.frac.pop();
        }
        while self.frac.len() < min {
            self.frac.push('0');
        }
        // No "-0.00".
        if self.int.bytes().all(|b| b == b'0') && self.frac.bytes().all(|b| b == b'0') {
            self.negative = false;
        }
        self
    }

    /// The digits with the locale's separators, without a sign.
    fn format(&self, loc: &Locale) -> String {
        let mut out = group(&self.int, loc);
        if !self.frac.is_empty() {
            out.push_str(loc.decimal);
            out.push_str(&self.frac);
        }
        out
    }
}

/// The shortest decimal form of a finite float (Rust never writes an exponent here).
fn float_text(f: f64) -> Option<String> {
    f.is_finite().then(|| format!("{f}"))
}

fn group(int: &str, loc: &Locale) -> String {
    let n = int.len();
    if n < 3 + loc.min_grouping {
        return int.to_owned();
    }
    // Digits in each group, from the right: 3, then 3 (or 2 in India).
    let mut sizes = vec![3];
    let mut covered = 3;
    while covered < n {
        let size = if loc.indian { 2 } else { 3 };
        sizes.push(size);
        covered += size;
    }
    let mut parts = Vec::new();
    let mut end = n;
    for size in sizes {
        let start = end.saturating_sub(size);
        parts.push(&int[start..end]);
        end = start;
        if end == 0 {
            break;
        }
    }
    parts.reverse();
    parts.join(loc.group)
}

fn decimals_kwarg(kwargs: &Kwargs, filter: &str) -> Result<Option<usize>, Error> {
    let v: Option<Value> = kwargs.get("decimals")?;
    let Some(v) = v else { return Ok(None) };
    match i64::try_from(v.clone()) {
        Ok(d @ 0..=12) => Ok(Some(d as usize)),
        _ => Err(invalid(format!(
            "{filter}: decimals must be a whole number from 0 to 12, not {v}"
        ))),
    }
}

/// Places the symbol and number in a money pattern, with a no-break space between a symbol
/// that ends (or starts) with a letter and a digit next to it, as CLDR's currency spacing does:
/// `CHF 1,234.50` but `CA$1,234.50`.
fn apply_pattern(pattern: &str, symbol: &str, number: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = pattern.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        match c {
            '¤' => {
                out.push_str(symbol);
                if chars.get(i + 1) == Some(&'#')
                    && symbol.chars().next_back().is_some_and(char::is_alphabetic)
                {
                    out.push_str(NBSP);
                }
            }
            '#' => {
                out.push_str(number);
                if chars.get(i + 1) == Some(&'¤')
                    && symbol.chars().next().is_some_and(char::is_alphabetic)
                {
                    out.push_str(NBSP);
                }
            }
            other => out.push(*other),
        }
    }
    out
}

/// `{{ amount | currency }}` → `$1,234.50`; `{{ amount | currency('EUR') }}` → `€1,234.50`;
/// `{{ amount | currency('EUR', locale='de-DE') }}` → `1.234,50 €`;
/// `{{ amount | currency(locale='ja-JP') }}` → `￥1,235` (the locale's own currency).
/// `decimals=` overrides the currency's minor-unit digits.
///
/// Without a locale this keeps its original form: US separators, the symbol in front for
/// USD, EUR, GBP, JPY, CAD, AUD, MXN and INR, and any other code after the number
/// (`1,234.50 CHF`).
pub(crate) fn currency(
    value: Value,
    code: Option<String>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    let tag: Option<String> = kwargs.get("locale")?;
    let decimals = decimals_kwarg(&kwargs, "currency")?;
    kwargs.assert_all_used()?;
    let digits = Digits::of(&value, "currency")?;
    let Some(tag) = tag else {
        return Ok(legacy_currency(digits, code, decimals));
    };
    let loc = locale(&tag)?;
    let code = code.map_or(loc.currency.to_owned(), |c| c.trim().to_uppercase());
    let Some(i) = CURRENCIES.iter().position(|(c, _)| *c == code) else {
        return Err(invalid(format!(
            "unknown currency `{code}`; known currencies: {}",
            known_currencies()
        )));
    };
    let places = decimals.unwrap_or(CURRENCIES[i].1);
    let digits = digits.round(places, places);
    let pattern = if digits.negative {
        loc.negative
    } else {
        loc.positive
    };
    Ok(apply_pattern(pattern, loc.symbols[i], &digits.format(loc)))
}

fn legacy_currency(digits: Digits, code: Option<String>, decimals: Option<usize>) -> String {
    let code = code.unwrap_or_else(|| "USD".to_owned()).to_uppercase();
    let (symbol, places) = match code.as_str() {
        "USD" => ("$", 2),
        "EUR" => ("€", 2),
        "GBP" => ("£", 2),
        "JPY" => ("¥", 0),
        "CAD" => ("CA$", 2),
        "AUD" => ("A$", 2),
        "MXN" => ("MX$", 2),
        "INR" => ("₹", 2),
        _ => ("", 2),
    };
    let places = decimals.unwrap_or(places);
    let digits = digits.round(places, places);
    let en_us = locale("en-US").expect("en-US is in the table");
    let formatted = digits.format(en_us);
    let sign = if digits.negative { "-" } else { "" };
    if symbol.is_empty() {
        format!("{sign}{formatted} {code}")
    } else {
        format!("{sign}{symbol}{formatted}")
    }
}

/// `{{ n | number }}` → `1,234,567.891`; `{{ n | number(locale='de-DE', decimals=2) }}` →
/// `1.234.567,89`. Without `decimals`, up to three fraction digits are kept and trailing zeros
/// dropped; the default locale is en-US.
pub fn number(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let tag: Option<String> = kwargs.get("locale")?;
    let decimals = decimals_kwarg(&kwargs, "number")?;
    kwargs.assert_all_used()?;
    let loc = locale(tag.as_deref().unwrap_or("en-US"))?;
    let digits = Digits::of(&value, "number")?;
    let digits = match decimals {
        Some(d) => digits.round(d, d),
        None => digits.round(0, 3),
    };
    let sign = if digits.negative { "-" } else { "" };
    Ok(format!("{sign}{}", digits.format(loc)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, ctx: serde_json::Value) -> Result<String, String> {
        crate::templates::environment(10_000)
            .render_str(src, minijinja::Value::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| crate::templates::describe_error(&e))
    }

    /// ICU 78 / CLDR 48 (`Intl.NumberFormat`) for 1234.5 and -1234567.5, per locale, in the
    /// order of [`CURRENCIES`].
    #[rustfmt::skip]
    const ICU_CURRENCY: &[(&str, [(&str, &str); 10])] = &[
        ("en-US", [("$1,234.50", "-$1,234,567.50"), ("\u{20ac}1,234.50", "-\u{20ac}1,234,567.50"), ("\u{a3}1,234.50", "-\u{a3}1,234,567.50"), ("\u{a5}1,235", "-\u{a5}1,234,568"), ("CA$1,234.50", "-CA$1,234,567.50"), ("A$1,234.50", "-A$1,234,567.50"), ("MX$1,234.50", "-MX$1,234,567.50"), ("\u{20b9}1,234.50", "-\u{20b9}1,234,567.50"), ("R$1,234.50", "-R$1,234,567.50"), ("CHF\u{a0}1,234.50", "-CHF\u{a0}1,234,567.50")]),
        ("en-GB", [("US$1,234.50", "-US$1,234,567.50"), ("\u{20ac}1,234.50", "-\u{20ac}1,234,567.50"), ("\u{a3}1,234.50", "-\u{a3}1,234,567.50"), ("JP\u{a5}1,235", "-JP\u{a5}1,234,568"), ("CA$1,234.50", "-CA$1,234,567.50"), ("A$1,234.50", "-A$1,234,567.50"), ("MX$1,234.50", "-MX$1,234,567.50"), ("\u{20b9}1,234.50", "-\u{20b9}1,234,567.50"), ("R$1,234.50", "-R$1,234,567.50"), ("CHF\u{a0}1,234.50", "-CHF\u{a0}1,234,567.50")]),
        ("en-CA", [("US$1,234.50", "-US$1,234,567.50"), ("\u{20ac}1,234.50", "-\u{20ac}1,234,567.50"), ("\u{a3}1,234.50", "-\u{a3}1,234,567.50"), ("JP\u{a5}1,235", "-JP\u{a5}1,234,568"), ("$1,234.50", "-$1,234,567.50"), ("A$1,234.50", "-A$1,234,567.50"), ("MX$1,234.50", "-MX$1,234,567.50"), ("\u{20b9}1,234.50", "-\u{20b9}1,234,567.50"), ("R$1,234.50", "-R$1,234,567.50"), ("CHF\u{a0}1,234.50", "-CHF\u{a0}1,234,567.50")]),
        ("en-AU", [("USD\u{a0}1,234.50", "-USD\u{a0}1,234,567.50"), ("EUR\u{a0}1,234.50", "-EUR\u{a0}1,234,567.50"), ("GBP\u{a0}1,234.50", "-GBP\u{a0}1,234,567.50"), ("JPY\u{a0}1,235", "-JPY\u{a0}1,234,568"), ("CAD\u{a0}1,234.50", "-CAD\u{a0}1,234,567.50"), ("$1,234.50", "-$1,234,567.50"), ("MXN\u{a0}1,234.50", "-MXN\u{a0}1,234,567.50"), ("INR\u{a0}1,234.50", "-INR\u{a0}1,234,567.50"), ("BRL\u{a0}1,234.50", "-BRL\u{a0}1,234,567.50"), ("CHF\u{a0}1,234.50", "-CHF\u{a0}1,234,567.50")]),
        ("en-IN", [("$1,234.50", "-$12,34,567.50"), ("\u{20ac}1,234.50", "-\u{20ac}12,34,567.50"), ("\u{a3}1,234.50", "-\u{a3}12,34,567.50"), ("JP\u{a5}1,235", "-JP\u{a5}12,34,568"), ("CA$1,234.50", "-CA$12,34,567.50"), ("A$1,234.50", "-A$12,34,567.50"), ("MX$1,234.50", "-MX$12,34,567.50"), ("\u{20b9}1,234.50", "-\u{20b9}12,34,567.50"), ("R$1,234.50", "-R$12,34,567.50"), ("CHF\u{a0}1,234.50", "-CHF\u{a0}12,34,567.50")]),
        ("de-DE", [("1.234,50\u{a0}$", "-1.234.567,50\u{a0}$"), ("1.234,50\u{a0}\u{20ac}", "-1.234.567,50\u{a0}\u{20ac}"), ("1.234,50\u{a0}\u{a3}", "-1.234.567,50\u{a0}\u{a3}"), ("1.235\u{a0}\u{a5}", "-1.234.568\u{a0}\u{a5}"), ("1.234,50\u{a0}CA$", "-1.234.567,50\u{a0}CA$"), ("1.234,50\u{a0}AU$", "-1.234.567,50\u{a0}AU$"), ("1.234,50\u{a0}MX$", "-1.234.567,50\u{a0}MX$"), ("1.234,50\u{a0}\u{20b9}", "-1.234.567,50\u{a0}\u{20b9}"), ("1.234,50\u{a0}R$", "-1.234.567,50\u{a0}R$"), ("1.234,50\u{a0}CHF", "-1.234.567,50\u{a0}CHF")]),
        ("de-CH", [("$\u{a0}1'234.50", "$-1'234'567.50"), ("EUR\u{a0}1'234.50", "EUR-1'234'567.50"), ("\u{a3}\u{a0}1'234.50", "\u{a3}-1'234'567.50"), ("\u{a5}\u{a0}1'235", "\u{a5}-1'234'568"), ("CA$\u{a0}1'234.50", "CA$-1'234'567.50"), ("AU$\u{a0}1'234.50", "AU$-1'234'567.50"), ("MX$\u{a0}1'234.50", "MX$-1'234'567.50"), ("\u{20b9}\u{a0}1'234.50", "\u{20b9}-1'234'567.50"), ("R$\u{a0}1'234.50", "R$-1'234'567.50"), ("CHF\u{a0}1'234.50", "CHF-1'234'567.50")]),
        ("fr-FR", [("1\u{202f}234,50\u{a0}$US", "-1\u{202f}234\u{202f}567,50\u{a0}$US"), ("1\u{202f}234,50\u{a0}\u{20ac}", "-1\u{202f}234\u{202f}567,50\u{a0}\u{20ac}"), ("1\u{202f}234,50\u{a0}\u{a3}GB", "-1\u{202f}234\u{202f}567,50\u{a0}\u{a3}GB"), ("1\u{202f}235\u{a0}JPY", "-1\u{202f}234\u{202f}568\u{a0}JPY"), ("1\u{202f}234,50\u{a0}$CA", "-1\u{202f}234\u{202f}567,50\u{a0}$CA"), ("1\u{202f}234,50\u{a0}$AU", "-1\u{202f}234\u{202f}567,50\u{a0}$AU"), ("1\u{202f}234,50\u{a0}$MX", "-1\u{202f}234\u{202f}567,50\u{a0}$MX"), ("1\u{202f}234,50\u{a0}\u{20b9}", "-1\u{202f}234\u{202f}567,50\u{a0}\u{20b9}"), ("1\u{202f}234,50\u{a0}R$", "-1\u{202f}234\u{202f}567,50\u{a0}R$"), ("1\u{202f}234,50\u{a0}CHF", "-1\u{202f}234\u{202f}567,50\u{a0}CHF")]),
        ("fr-CA", [("1\u{a0}234,50\u{a0}$\u{a0}US", "-1\u{a0}234\u{a0}567,50\u{a0}$\u{a0}US"), ("1\u{a0}234,50\u{a0}\u{20ac}", "-1\u{a0}234\u{a0}567,50\u{a0}\u{20ac}"), ("1\u{a0}234,50\u{a0}\u{a3}", "-1\u{a0}234\u{a0}567,50\u{a0}\u{a3}"), ("1\u{a0}235\u{a0}\u{a5}", "-1\u{a0}234\u{a0}568\u{a0}\u{a5}"), ("1\u{a0}234,50\u{a0}$", "-1\u{a0}234\u{a0}567,50\u{a0}$"), ("1\u{a0}234,50\u{a0}$\u{a0}AU", "-1\u{a0}234\u{a0}567,50\u{a0}$\u{a0}AU"), ("1\u{a0}234,50\u{a0}MXN", "-1\u{a0}234\u{a0}567,50\u{a0}MXN"), ("1\u{a0}234,50\u{a0}INR", "-1\u{a0}234\u{a0}567,50\u{a0}INR"), ("1\u{a0}234,50\u{a0}R$", "-1\u{a0}234\u{a0}567,50\u{a0}R$"), ("1\u{a0}234,50\u{a0}CHF", "-1\u{a0}234\u{a0}567,50\u{a0}CHF")]),
        ("es-ES", [("1234,50\u{a0}US$", "-1.234.567,50\u{a0}US$"), ("1234,50\u{a0}\u{20ac}", "-1.234.567,50\u{a0}\u{20ac}"), ("1234,50\u{a0}GBP", "-1.234.567,50\u{a0}GBP"), ("1235\u{a0}JPY", "-1.234.568\u{a0}JPY"), ("1234,50\u{a0}CAD", "-1.234.567,50\u{a0}CAD"), ("1234,50\u{a0}AUD", "-1.234.567,50\u{a0}AUD"), ("1234,50\u{a0}MXN", "-1.234.567,50\u{a0}MXN"), ("1234,50\u{a0}INR", "-1.234.567,50\u{a0}INR"), ("1234,50\u{a0}BRL", "-1.234.567,50\u{a0}BRL"), ("1234,50\u{a0}CHF", "-1.234.567,50\u{a0}CHF")]),
        ("es-MX", [("USD\u{a0}1,234.50", "-USD\u{a0}1,234,567.50"), ("EUR\u{a0}1,234.50", "-EUR\u{a0}1,234,567.50"), ("GBP\u{a0}1,234.50", "-GBP\u{a0}1,234,567.50"), ("JPY\u{a0}1,235", "-JPY\u{a0}1,234,568"), ("CAD\u{a0}1,234.50", "-CAD\u{a0}1,234,567.50"), ("AUD\u{a0}1,234.50", "-AUD\u{a0}1,234,567.50"), ("$1,234.50", "-$1,234,567.50"), ("INR\u{a0}1,234.50", "-INR\u{a0}1,234,567.50"), ("BRL\u{a0}1,234.50", "-BRL\u{a0}1,234,567.50"), ("CHF\u{a0}1,234.50", "-CHF\u{a0}1,234,567.50")]),
        ("it-IT", [("1234,50\u{a0}USD", "-1.234.567,50\u{a0}USD"), ("1234,50\u{a0}\u{20ac}", "-1.234.567,50\u{a0}\u{20ac}"), ("1234,50\u{a0}\u{a3}", "-1.234.567,50\u{a0}\u{a3}"), ("1235\u{a0}JPY", "-1.234.568\u{a0}JPY"), ("1234,50\u{a0}CA$", "-1.234.567,50\u{a0}CA$"), ("1234,50\u{a0}A$", "-1.234.567,50\u{a0}A$"), ("1234,50\u{a0}MXN", "-1.234.567,50\u{a0}MXN"), ("1234,50\u{a0}INR", "-1.234.567,50\u{a0}INR"), ("1234,50\u{a0}BRL", "-1.234.567,50\u{a0}BRL"), ("1234,50\u{a0}CHF", "-1.234.567,50\u{a0}CHF")]),
        ("nl-NL", [("US$\u{a0}1.234,50", "US$\u{a0}-1.234.567,50"), ("\u{20ac}\u{a0}1.234,50", "\u{20ac}\u{a0}-1.234.567,50"), ("\u{a3}\u{a0}1.234,50", "\u{a3}\u{a0}-1.234.567,50"), ("JP\u{a5}\u{a0}1.235", "JP\u{a5}\u{a0}-1.234.568"), ("C$\u{a0}1.234,50", "C$\u{a0}-1.234.567,50"), ("AU$\u{a0}1.234,50", "AU$\u{a0}-1.234.567,50"), ("MX$\u{a0}1.234,50", "MX$\u{a0}-1.234.567,50"), ("\u{20b9}\u{a0}1.234,50", "\u{20b9}\u{a0}-1.234.567,50"), ("R$\u{a0}1.234,50", "R$\u{a0}-1.234.567,50"), ("CHF\u{a0}1.234,50", "CHF\u{a0}-1.234.567,50")]),
        ("pt-BR", [("US$\u{a0}1.234,50", "-US$\u{a0}1.234.567,50"), ("\u{20ac}\u{a0}1.234,50", "-\u{20ac}\u{a0}1.234.567,50"), ("\u{a3}\u{a0}1.234,50", "-\u{a3}\u{a0}1.234.567,50"), ("JP\u{a5}\u{a0}1.235", "-JP\u{a5}\u{a0}1.234.568"), ("CA$\u{a0}1.234,50", "-CA$\u{a0}1.234.567,50"), ("AU$\u{a0}1.234,50", "-AU$\u{a0}1.234.567,50"), ("MX$\u{a0}1.234,50", "-MX$\u{a0}1.234.567,50"), ("\u{20b9}\u{a0}1.234,50", "-\u{20b9}\u{a0}1.234.567,50"), ("R$\u{a0}1.234,50", "-R$\u{a0}1.234.567,50"), ("CHF\u{a0}1.234,50", "-CHF\u{a0}1.234.567,50")]),
        ("ja-JP", [("$1,234.50", "-$1,234,567.50"), ("\u{20ac}1,234.50", "-\u{20ac}1,234,567.50"), ("\u{a3}1,234.50", "-\u{a3}1,234,567.50"), ("\u{ffe5}1,235", "-\u{ffe5}1,234,568"), ("CA$1,234.50", "-CA$1,234,567.50"), ("A$1,234.50", "-A$1,234,567.50"), ("MX$1,234.50", "-MX$1,234,567.50"), ("\u{20b9}1,234.50", "-\u{20b9}1,234,567.50"), ("R$1,234.50", "-R$1,234,567.50"), ("CHF\u{a0}1,234.50", "-CHF\u{a0}1,234,567.50")]),
    ];

    /// ICU for 1234.5, -12345.6789, 1234567.891, the same with 2 decimals, 999, and 0.125
    /// with 2 decimals.
    #[rustfmt::skip]
    const ICU_NUMBER: &[(&str, [&str; 6])] = &[
        ("en-US", ["1,234.5", "-12,345.679", "1,234,567.891", "1,234,567.89", "999", "0.13"]),
        ("en-GB", ["1,234.5", "-12,345.679", "1,234,567.891", "1,234,567.89", "999", "0.13"]),
        ("en-CA", ["1,234.5", "-12,345.679", "1,234,567.891", "1,234,567.89", "999", "0.13"]),
        ("en-AU", ["1,234.5", "-12,345.679", "1,234,567.891", "1,234,567.89", "999", "0.13"]),
        ("en-IN", ["1,234.5", "-12,345.679", "12,34,567.891", "12,34,567.89", "999", "0.13"]),
        ("de-DE", ["1.234,5", "-12.345,679", "1.234.567,891", "1.234.567,89", "999", "0,13"]),
        ("de-CH", ["1'234.5", "-12'345.679", "1'234'567.891", "1'234'567.89", "999", "0.13"]),
        ("fr-FR", ["1\u{202f}234,5", "-12\u{202f}345,679", "1\u{202f}234\u{202f}567,891", "1\u{202f}234\u{202f}567,89", "999", "0,13"]),
        ("fr-CA", ["1\u{a0}234,5", "-12\u{a0}345,679", "1\u{a0}234\u{a0}567,891", "1\u{a0}234\u{a0}567,89", "999", "0,13"]),
        ("es-ES", ["1234,5", "-12.345,679", "1.234.567,891", "1.234.567,89", "999", "0,13"]),
        ("es-MX", ["1,234.5", "-12,345.679", "1,234,567.891", "1,234,567.89", "999", "0.13"]),
        ("it-IT", ["1234,5", "-12.345,679", "1.234.567,891", "1.234.567,89", "999", "0,13"]),
        ("nl-NL", ["1.234,5", "-12.345,679", "1.234.567,891", "1.234.567,89", "999", "0,13"]),
        ("pt-BR", ["1.234,5", "-12.345,679", "1.234.567,891", "1.234.567,89", "999", "0,13"]),
        ("ja-JP", ["1,234.5", "-12,345.679", "1,234,567.891", "1,234,567.89", "999", "0.13"]),
    ];

    #[test]
    fn every_locale_and_currency_matches_icu() {
        assert_eq!(ICU_CURRENCY.len(), LOCALES.len());
        for (tag, cases) in ICU_CURRENCY {
            for ((code, _), (pos, neg)) in CURRENCIES.iter().zip(cases) {
                let ctx = json!({"p": 1234.5, "n": -1234567.5, "code": code, "tag": tag});
                assert_eq!(
                    render("{{ p | currency(code, locale=tag) }}", ctx.clone()).unwrap(),
                    *pos,
                    "{tag} {code}"
                );
                assert_eq!(
                    render("{{ n | currency(code, locale=tag) }}", ctx).unwrap(),
                    *neg,
                    "{tag} {code}"
                );
            }
        }
    }

    #[test]
    fn every_locale_formats_numbers_as_icu() {
        assert_eq!(ICU_NUMBER.len(), LOCALES.len());
        for (tag, want) in ICU_NUMBER {
            let ctx = json!({"tag": tag});
            let got = [
                "{{ 1234.5 | number(locale=tag) }}",
                "{{ -12345.6789 | number(locale=tag) }}",
                "{{ 1234567.891 | number(locale=tag) }}",
                "{{ 1234567.891 | number(locale=tag, decimals=2) }}",
                "{{ 999 | number(locale=tag) }}",
                "{{ 0.125 | number(locale=tag, decimals=2) }}",
            ]
            .map(|src| render(src, ctx.clone()).unwrap());
            assert_eq!(&got, want, "{tag}");
        }
    }

    #[test]
    fn the_examples() {
        let r = |s: &str| render(s, json!({})).unwrap();
        assert_eq!(
            r("{{ 1234.5 | currency('EUR', locale='de-DE') }}"),
            "1.234,50\u{a0}€"
        );
        assert_eq!(
            r("{{ 1234.5 | currency('USD', locale='en-US') }}"),
            "$1,234.50"
        );
        assert_eq!(
            r("{{ 1234.5 | currency('EUR', locale='fr-FR') }}"),
            "1\u{202f}234,50\u{a0}€"
        );
        assert_eq!(
            r("{{ 1234.5 | currency('GBP', locale='en-GB') }}"),
            "£1,234.50"
        );
        assert_eq!(r("{{ 1234.5 | currency(locale='ja-JP') }}"), "￥1,235");
        assert_eq!(
            r("{{ 1234567.5 | currency(locale='en-IN') }}"),
            "₹12,34,567.50"
        );
        assert_eq!(
            r("{{ 1234567.891 | number(locale='de-DE', decimals=2) }}"),
            "1.234.567,89"
        );
        assert_eq!(r("{{ 1234567.891 | number }}"), "1,234,567.891");
        assert_eq!(r("{{ 1234567 | number(locale='en-IN') }}"), "12,34,567");
        // Locale tags are matched without regard to case or `_`.
        assert_eq!(
            r("{{ 5 | currency('eur', locale='de_de') }}"),
            "5,00\u{a0}€"
        );
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        let r = |s: &str| render(s, json!({})).unwrap();
        assert_eq!(r("{{ 2.675 | number(decimals=2) }}"), "2.68");
        assert_eq!(r("{{ -2.675 | number(decimals=2) }}"), "-2.68");
        assert_eq!(r("{{ 0.125 | currency }}"), "$0.13");
        assert_eq!(r("{{ 999.995 | currency }}"), "$1,000.00");
        assert_eq!(r("{{ 9.5 | number(decimals=0) }}"), "10");
        assert_eq!(r("{{ -0.001 | currency }}"), "$0.00");
        assert_eq!(r("{{ 1.5 | number(decimals=3) }}"), "1.500");
        assert_eq!(r("{{ 1e21 | number }}"), "1,000,000,000,000,000,000,000");
        assert_eq!(
            r("{{ '12345678901234567890.125' | number(decimals=2) }}"),
            "12,345,678,901,234,567,890.13"
        );
        assert_eq!(
            r("{{ 18446744073709551615 | number }}"),
            "18,446,744,073,709,551,615"
        );
    }

    #[test]
    fn without_a_locale_currency_is_unchanged() {
        let ctx = json!({"a": 1234.5, "b": -3, "c": "25000", "d": 1234567});
        let r = |s: &str| render(s, ctx.clone()).unwrap();
        assert_eq!(r("{{ a|currency }}"), "$1,234.50");
        assert_eq!(r("{{ b|currency('EUR') }}"), "-€3.00");
        assert_eq!(r("{{ c|currency }}"), "$25,000.00");
        assert_eq!(r("{{ d|currency('JPY') }}"), "¥1,234,567");
        assert_eq!(r("{{ a|currency('CHF') }}"), "1,234.50 CHF");
        assert_eq!(r("{{ a|currency('usd', decimals=0) }}"), "$1,235");
    }

    #[test]
    fn unknown_locales_and_currencies_list_the_known_ones() {
        let e = render("{{ 1 | currency('EUR', locale='de-AT') }}", json!({})).unwrap_err();
        assert_eq!(
            e,
            "invalid operation: unknown locale `de-AT`; known locales: de-CH, de-DE, en-AU, \
             en-CA, en-GB, en-IN, en-US, es-ES, es-MX, fr-CA, fr-FR, it-IT, ja-JP, nl-NL, pt-BR"
        );
        let e = render("{{ 1 | number(locale='de') }}", json!({})).unwrap_err();
        assert!(
            e.contains("unknown locale `de`; known locales: de-CH"),
            "{e}"
        );
        let e = render("{{ 1 | currency('XYZ', locale='en-US') }}", json!({})).unwrap_err();
        assert_eq!(
            e,
            "invalid operation: unknown currency `XYZ`; known currencies: AUD, BRL, CAD, CHF, \
             EUR, GBP, INR, JPY, MXN, USD"
        );
    }

    #[test]
    fn bad_amounts_are_errors() {
        let e = render("{{ 'abc' | currency }}", json!({})).unwrap_err();
        assert_eq!(
            e,
            "invalid operation: currency: `abc` is not a number; currency takes a number or a \
             numeric string"
        );
        let e = render("{{ none | number }}", json!({})).unwrap_err();
        assert!(e.contains("number: null is not a number"), "{e}");
        let e = render("{{ [1] | number }}", json!({})).unwrap_err();
        assert!(e.contains("is not a number"), "{e}");
        let e = render("{{ 'nan' | number }}", json!({})).unwrap_err();
        assert!(e.contains("`nan` is not a number"), "{e}");
        let e = render("{{ 1 | number(decimals=-1) }}", json!({})).unwrap_err();
        assert!(
            e.contains("decimals must be a whole number from 0 to 12, not -1"),
            "{e}"
        );
        let e = render("{{ 1 | number(decimals=2.5) }}", json!({})).unwrap_err();
        assert!(e.contains("not 2.5"), "{e}");
        let e = render("{{ 1 | number(places=2) }}", json!({})).unwrap_err();
        assert!(e.contains("places"), "{e}");
    }

    #[test]
    fn grouping() {
        let loc = |t| locale(t).unwrap();
        assert_eq!(group("1", loc("en-US")), "1");
        assert_eq!(group("1234", loc("en-US")), "1,234");
        assert_eq!(group("1234", loc("es-ES")), "1234");
        assert_eq!(group("12345", loc("es-ES")), "12.345");
        assert_eq!(group("123456", loc("en-IN")), "1,23,456");
        assert_eq!(group("1234567890", loc("en-IN")), "1,23,45,67,890");
    }
}
