//! The semantic checks of a campaign's audience, against the contact schema in herald.yaml
//! (`contacts.attributes`): an attribute that contacts do not have, a test that does not fit
//! the attribute's type (a number compared as a date, `gte` on text), a date that is not one,
//! and a list that can match nobody. Without a declared schema only what is wrong whatever
//! the data is reported.

use indexmap::IndexMap;

use crate::definitions::Definition;
use crate::definitions::campaign::Campaign;
use crate::definitions::diagnostics::Diagnostic;
use crate::definitions::model::audience::{
    AttributeCondition, AttributeTest, DateTest, Scalar, parse_date,
};
use crate::definitions::model::config::AttributeType;
use crate::definitions::source::escape_token;
use crate::definitions::suggest::did_you_mean;

pub(super) fn check(
    def: &Definition,
    campaign: &Campaign,
    schema: &IndexMap<String, AttributeType>,
    out: &mut Vec<Diagnostic>,
) {
    let audience = &campaign.audience;
    if !campaign.enrolls_itself() && !audience.is_everyone() {
        let d = Diagnostic::warning(
            "audience-unused",
            "a drip enrolls whoever its `enrol` event is about, so this `audience` is not used: it does not filter who enters",
        )
        .with_hint("check who may enter in the first steps (an `if` on `contact`), or make it a broadcast (`send_at`) or recurring (`cron`) campaign");
        out.push(def.at_key("/audience", d));
    }
    for (name, condition) in &audience.attributes {
        let base = format!("/audience/attributes/{}", escape_token(name));
        let declared = schema.get(name).copied();
        if !schema.is_empty() && declared.is_none() {
            let mut d = Diagnostic::error(
                "unknown-attribute",
                format!(
                    "contacts have no attribute `{name}`: contacts.attributes in herald.yaml declares {}",
                    schema
                        .keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            d = match did_you_mean(name, schema.keys().map(String::as_str)) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!(
                    "declare it under contacts.attributes in herald.yaml, such as `{name}: text`"
                )),
            };
            out.push(def.at_key(&base, d));
            continue;
        }
        match condition {
            AttributeCondition::Equals(v) => check_value(def, name, declared, v, &base, out),
            AttributeCondition::Test(t) => check_test(def, name, declared, t, &base, out),
        }
    }
    if let Some(created) = &audience.created {
        check_dates(def, created, "/audience/created", out);
    }
}

fn check_test(
    def: &Definition,
    name: &str,
    declared: Option<AttributeType>,
    t: &AttributeTest,
    base: &str,
    out: &mut Vec<Diagnostic>,
) {
    for (key, v) in [("eq", &t.eq), ("ne", &t.ne)] {
        if let Some(v) = v {
            check_value(def, name, declared, v, &format!("{base}/{key}"), out);
        }
    }
    for (key, list) in [("in", &t.in_), ("not_in", &t.not_in)] {
        let Some(list) = list else { continue };
        if list.is_empty() {
            let d = Diagnostic::error(
                "empty-list",
                format!(
                    "`{key}` has no values, so it {}",
                    if key == "in" {
                        "matches no contact"
                    } else {
                        "tests nothing"
                    }
                ),
            )
            .with_hint("list the values to match, such as [CO, UT], or leave it out");
            out.push(def.at_value(&format!("{base}/{key}"), d));
        }
        for (i, v) in list.iter().enumerate() {
            check_value(def, name, declared, v, &format!("{base}/{key}/{i}"), out);
        }
    }
    let numeric = [("gt", t.gt), ("gte", t.gte), ("lt", t.lt), ("lte", t.lte)]
        .into_iter()
        .find(|(_, v)| v.is_some())
        .map(|(k, _)| k);
    let date = t.date();
    let dated = [
        ("before", t.before.is_some()),
        ("after", t.after.is_some()),
        ("older_than", t.older_than.is_some()),
        ("within", t.within.is_some()),
    ]
    .into_iter()
    .find(|(_, given)| *given)
    .map(|(k, _)| k);
    if let (Some(n), Some(d)) = (numeric, dated) {
        let diag = Diagnostic::error(
            "mixed-tests",
            format!("`{name}` is tested both as a number (`{n}`) and as a date (`{d}`); it can only be one"),
        )
        .with_hint("test a number with gt/gte/lt/lte, a date with before/after/older_than/within");
        out.push(def.at_key(&format!("{base}/{d}"), diag));
        return;
    }
    let wrong_type = |op: &str, wanted: AttributeType| {
        declared.filter(|ty| *ty != wanted).map(|ty| {
            Diagnostic::error(
                "attribute-type",
                format!(
                    "`{op}` tests a {}, but `{name}` is {} (contacts.attributes in herald.yaml)",
                    wanted.name(),
                    article(ty)
                ),
            )
            .with_hint(match ty {
                AttributeType::Date => "test a date with before, after, older_than or within",
                AttributeType::Number => "test a number with gt, gte, lt or lte",
                _ => "test it with eq, ne, in or not_in",
            })
        })
    };
    if let Some(op) = numeric
        && let Some(d) = wrong_type(op, AttributeType::Number)
    {
        out.push(def.at_key(&format!("{base}/{op}"), d));
    }
    if let Some(op) = dated {
        if let Some(d) = wrong_type(op, AttributeType::Date) {
            out.push(def.at_key(&format!("{base}/{op}"), d));
        } else {
            check_dates(def, &date, base, out);
        }
    }
    if let (Some(lo), Some(hi)) = (t.gt.or(t.gte), t.lt.or(t.lte))
        && lo > hi
    {
        let d = Diagnostic::error(
            "never-matches",
            format!("`{name}` cannot be above {lo} and below {hi} at once, so no contact matches"),
        )
        .with_hint("the lower bound (gt/gte) must be below the upper bound (lt/lte)");
        out.push(def.at_key(base, d));
    }
}

/// A value compared for (in)equality fits the attribute's declared type.
fn check_value(
    def: &Definition,
    name: &str,
    declared: Option<AttributeType>,
    v: &Scalar,
    pointer: &str,
    out: &mut Vec<Diagnostic>,
) {
    let Some(ty) = declared else { return };
    let fits = matches!(
        (ty, v),
        (AttributeType::Text, Scalar::Text(_))
            | (AttributeType::Number, Scalar::Number(_))
            | (AttributeType::Boolean, Scalar::Bool(_))
    );
    if fits {
        return;
    }
    let hint = match (ty, v) {
        (AttributeType::Text, _) => format!(
            "write it as text, in quotes: \"{}\"",
            v.to_string().trim_matches('"')
        ),
        (AttributeType::Date, _) => {
            "a date is tested with before, after, older_than or within".to_owned()
        }
        (AttributeType::Number, _) => "write a number, such as 5000".to_owned(),
        (AttributeType::Boolean, _) => "write true or false".to_owned(),
    };
    let d = Diagnostic::error(
        "attribute-type",
        format!(
            "`{name}` is {} (contacts.attributes in herald.yaml), so it never equals the {} {v}",
            article(ty),
            v.type_name()
        ),
    )
    .with_hint(hint);
    out.push(def.at_value(pointer, d));
}

/// `before` and `after` are dates, and `after` comes before `before`.
fn check_dates(def: &Definition, d: &DateTest, base: &str, out: &mut Vec<Diagnostic>) {
    let mut parsed = |key: &str, text: &Option<String>| {
        let text = text.as_ref()?;
        let ms = parse_date(text);
        if ms.is_none() {
            let d = Diagnostic::error("invalid-time", format!("`{text}` is not a date"))
                .with_hint("write an ISO 8601 date, such as 2026-01-31, or a date and time with an offset, such as 2026-01-31T09:00:00-07:00");
            out.push(def.at_value(&format!("{base}/{key}"), d));
        }
        ms
    };
    let before = parsed("before", &d.before);
    let after = parsed("after", &d.after);
    if let (Some(b), Some(a)) = (before, after)
        && a >= b
    {
        let diag = Diagnostic::error(
            "never-matches",
            "`after` is not earlier than `before`, so no date lies between them",
        )
        .with_hint("`after` is the start of the range and `before` its end");
        out.push(def.at_value(&format!("{base}/after"), diag));
    }
}

fn article(ty: AttributeType) -> String {
    match ty {
        AttributeType::Text => "text".into(),
        other => format!("a {}", other.name()),
    }
}
