//! Reading an answer into a slot of its type. An answer that does not fit says why, in words
//! the step log shows.

use serde_json::{Value, json};

use crate::definitions::model::conversation::{SlotDef, SlotType};
use crate::engine::contact::normalize_phone;

/// The longest answer a slot takes, in characters.
pub(crate) const MAX_ANSWER_CHARS: usize = 4000;

/// Lower case, outer spaces and final punctuation gone, inner spaces made single.
pub(crate) fn normalize(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
        .trim_end_matches(['.', '!', '?', ','])
        .trim()
        .to_owned()
}

/// The slot's value for `text`, or why it does not fit. `today` is the date `today` means.
pub(crate) fn parse(
    slot: &SlotDef,
    text: &str,
    region: &str,
    today: jiff::civil::Date,
) -> Result<Value, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("the answer is empty".into());
    }
    if trimmed.chars().count() > MAX_ANSWER_CHARS {
        return Err(format!(
            "the answer is longer than {MAX_ANSWER_CHARS} characters"
        ));
    }
    let n = normalize(trimmed);
    match slot.kind {
        SlotType::Text => Ok(json!(trimmed)),
        SlotType::Phone => normalize_phone(trimmed, region)
            .map(Value::String)
            .ok_or_else(|| format!("`{trimmed}` is not a phone number")),
        SlotType::Email => {
            let e = trimmed.trim_matches(['<', '>']).to_lowercase();
            let ok = match e.split_once('@') {
                Some((user, domain)) => {
                    !user.is_empty()
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !domain.contains('@')
                        && !e.chars().any(char::is_whitespace)
                }
                None => false,
            };
            if ok {
                Ok(json!(e))
            } else {
                Err(format!("`{trimmed}` is not an e-mail address"))
            }
        }
        SlotType::Number => {
            let digits: String = n
                .chars()
                .filter(|c| !matches!(c, ',' | '$' | '€' | '£' | ' ' | '_'))
                .collect();
            match digits.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(if v.fract() == 0.0 && v.abs() < 9e15 {
                    json!(v as i64)
                } else {
                    json!(v)
                }),
                _ => Err(format!("`{trimmed}` is not a number")),
            }
        }
        SlotType::Date => parse_date(&n, today)
            .map(|d| json!(d.to_string()))
            .ok_or_else(|| format!("`{trimmed}` is not a date (such as 2026-11-05 or 11/05/2026)")),
        SlotType::Choice => {
            for (value, words) in &slot.choices {
                let matches = |w: &str| {
                    let w = normalize(w);
                    !w.is_empty() && (n == w || contains_words(&n, &w))
                };
                if matches(value) || words.iter().any(|w| matches(w)) {
                    return Ok(json!(value));
                }
            }
            let values: Vec<&str> = slot.choices.keys().map(String::as_str).collect();
            Err(format!(
                "`{trimmed}` is none of the choices ({})",
                values.join(", ")
            ))
        }
        SlotType::YesNo => {
            const YES: &[&str] = &[
                "yes",
                "y",
                "yeah",
                "yep",
                "yup",
                "sure",
                "ok",
                "okay",
                "correct",
                "right",
                "yes please",
                "of course",
                "absolutely",
                "i agree",
                "agree",
                "si",
                "sí",
                "👍",
            ];
            const NO: &[&str] = &[
                "no",
                "n",
                "nope",
                "nah",
                "no thanks",
                "no thank you",
                "not now",
                "don't",
                "do not",
                "i don't agree",
                "👎",
            ];
            if YES.contains(&n.as_str()) {
                Ok(json!(true))
            } else if NO.contains(&n.as_str()) {
                Ok(json!(false))
            } else {
                Err(format!("`{trimmed}` is neither yes nor no"))
            }
        }
    }
}

/// Whether `phrase` is in `text` as whole words.
pub(crate) fn contains_words(text: &str, phrase: &str) -> bool {
    let is_word = |c: char| c.is_alphanumeric();
    text.match_indices(phrase).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + phrase.len()..].chars().next();
        before.is_none_or(|c| !is_word(c)) && after.is_none_or(|c| !is_word(c))
    })
}

fn parse_date(n: &str, today: jiff::civil::Date) -> Option<jiff::civil::Date> {
    match n {
        "today" => return Some(today),
        "tomorrow" => return today.tomorrow().ok(),
        _ => {}
    }
    if let Ok(d) = n.parse::<jiff::civil::Date>() {
        return Some(d);
    }
    let parts: Vec<&str> = n.split(['/', '-', '.']).collect();
    if let [m, d, y] = parts.as_slice() {
        let (m, d, y) = (m.parse().ok()?, d.parse().ok()?, y.parse::<i16>().ok()?);
        let y = if y < 100 { 2000 + y } else { y };
        return jiff::civil::Date::new(y, m, d).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use indexmap::IndexMap;

    fn slot(kind: SlotType) -> SlotDef {
        SlotDef {
            kind,
            choices: IndexMap::new(),
        }
    }

    #[test]
    fn answers_are_read_into_their_types() {
        let today = jiff::civil::date(2026, 11, 2);
        let p = |k, t| parse(&slot(k), t, "US", today);
        assert_eq!(
            p(SlotType::Phone, "(801) 555-0100").unwrap(),
            "+18015550100"
        );
        assert!(p(SlotType::Phone, "call me 🙂").is_err());
        assert_eq!(
            p(SlotType::Email, " Ann@Example.org ").unwrap(),
            "ann@example.org"
        );
        assert!(p(SlotType::Email, "ann@example").is_err());
        assert_eq!(p(SlotType::Number, "$1,200").unwrap(), 1200);
        assert_eq!(p(SlotType::Date, "11/5/2026").unwrap(), "2026-11-05");
        assert_eq!(p(SlotType::Date, "Tomorrow").unwrap(), "2026-11-03");
        assert_eq!(p(SlotType::YesNo, "Yes!").unwrap(), true);
        assert_eq!(p(SlotType::YesNo, "👎").unwrap(), false);
        assert!(p(SlotType::YesNo, "maybe").is_err());
        assert!(p(SlotType::Text, "   ").is_err());
        assert!(p(SlotType::Text, &"x".repeat(MAX_ANSWER_CHARS + 1)).is_err());
        let mut choice = slot(SlotType::Choice);
        choice.choices.insert(
            "used".into(),
            vec!["pre-owned".into(), "second hand".into()],
        );
        choice
            .choices
            .insert("new".into(), vec!["brand new".into()]);
        assert_eq!(
            parse(&choice, "A pre-owned one", "US", today).unwrap(),
            "used"
        );
        assert_eq!(parse(&choice, "NEW", "US", today).unwrap(), "new");
        assert!(parse(&choice, "newish", "US", today).is_err());
    }
}
