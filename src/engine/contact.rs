//! What makes a contact's address valid, in one place: a run's `upsert_contact`, suppression,
//! inbound messages, the operations API and `herald run`'s seeded contacts read e-mail
//! addresses and phone numbers the same way. Phone numbers are kept in E.164; one written
//! without a country code is read in `contacts.default_region` (herald.yaml).

use indexmap::IndexMap;

use crate::definitions::model::config::{AttributeType, ContactsConfig};

/// The fields of a contact that are written: what the operations API and an import take.
pub(crate) const FIELDS: &[&str] = &[
    "email",
    "phone",
    "first_name",
    "last_name",
    "status",
    "timezone",
    "attributes",
];

/// The fields a stored contact has beside [`FIELDS`], which only Herald sets.
pub(crate) const STORED_FIELDS: &[&str] = &["id", "addresses", "created_at", "updated_at"];

/// A contact's e-mail address or phone number, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Address {
    pub email: Option<String>,
    pub phone: Option<String>,
}

impl Address {
    /// A recipient or sender as written: an e-mail address if it has an `@`, else a phone
    /// number (none when it is not one).
    pub(crate) fn parse(text: &str, region: &str) -> Address {
        if text.contains('@') {
            Address {
                email: Some(text.trim().to_lowercase()),
                phone: None,
            }
        } else {
            Address {
                email: None,
                phone: normalize_phone(text, region),
            }
        }
    }
}

/// A phone number in E.164, if it is one; `region` is for numbers without a country code.
pub(crate) fn normalize_phone(text: &str, region: &str) -> Option<String> {
    crate::templates::filters::normalize_phone(text, region)
}

/// An e-mail address in lower case, refused unless it has an `@` and no space.
pub(crate) fn normalize_email(text: &str) -> Result<String, String> {
    let e = text.trim().to_lowercase();
    if !e.contains('@') || e.contains(char::is_whitespace) {
        return Err(format!("`{e}` is not an e-mail address"));
    }
    Ok(e)
}

/// Refuses a time zone that is not an IANA name.
pub(crate) fn check_timezone(tz: &str) -> Result<(), String> {
    match jiff::tz::TimeZone::get(tz) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("`{tz}` is not a time zone")),
    }
}

/// Stores each attribute `contacts.attributes` declares as its type, so an audience's
/// `gte: 5000` finds the 5000 that came from a CSV file as text, and a date compares as a
/// date whatever offset it was written with. Null stays null (it removes the attribute); a
/// value that cannot be its type is refused, naming the attribute, the value and the type.
pub(crate) fn type_attributes(
    attributes: &mut serde_json::Map<String, serde_json::Value>,
    schema: &IndexMap<String, AttributeType>,
) -> Result<(), String> {
    use serde_json::Value;
    for (name, value) in attributes.iter_mut() {
        let Some(ty) = schema.get(name) else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        let typed = match (ty, &*value) {
            (AttributeType::Text, Value::String(_)) => None,
            (AttributeType::Text, Value::Number(n)) => Some(Value::String(n.to_string())),
            (AttributeType::Text, Value::Bool(b)) => Some(Value::String(b.to_string())),
            (AttributeType::Number, Value::Number(_)) => None,
            (AttributeType::Number, Value::String(s)) => Some(Value::Number(
                number(s).ok_or_else(|| not_a(name, value, *ty))?,
            )),
            (AttributeType::Boolean, Value::Bool(_)) => None,
            (AttributeType::Boolean, Value::String(s)) => {
                match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "yes" | "y" | "1" => Some(Value::Bool(true)),
                    "false" | "no" | "n" | "0" => Some(Value::Bool(false)),
                    _ => return Err(not_a(name, value, *ty)),
                }
            }
            (AttributeType::Boolean, Value::Number(n)) if n.as_f64() == Some(1.0) => {
                Some(Value::Bool(true))
            }
            (AttributeType::Boolean, Value::Number(n)) if n.as_f64() == Some(0.0) => {
                Some(Value::Bool(false))
            }
            (AttributeType::Date, Value::String(s)) => Some(Value::String(
                date(s).ok_or_else(|| not_a(name, value, *ty))?,
            )),
            _ => return Err(not_a(name, value, *ty)),
        };
        if let Some(typed) = typed {
            *value = typed;
        }
    }
    return Ok(());

    fn number(text: &str) -> Option<serde_json::Number> {
        let n: f64 = text.trim().parse().ok()?;
        if !n.is_finite() {
            return None;
        }
        if n.fract() == 0.0 && n.abs() < 9.0e15 {
            return Some((n as i64).into());
        }
        serde_json::Number::from_f64(n)
    }

    /// A date alone stays a date; a date and time is stored in UTC, so every stored time
    /// reads the same way.
    fn date(text: &str) -> Option<String> {
        let text = text.trim();
        // jiff reads the date out of a longer date and time too; only a bare date stays one.
        if text.len() == 10
            && let Ok(d) = text.parse::<jiff::civil::Date>()
        {
            return Some(d.to_string());
        }
        let ms = crate::definitions::model::audience::parse_date(text)?;
        jiff::Timestamp::from_millisecond(ms)
            .ok()
            .map(|t| t.to_string())
    }
}

/// The error for an attribute value that is not of its declared type.
fn not_a(name: &str, value: &serde_json::Value, ty: AttributeType) -> String {
    let hint = match ty {
        AttributeType::Number => "such as 5000 or 4.5",
        AttributeType::Boolean => "true or false",
        AttributeType::Date => "such as 2026-01-31 or 2026-01-31T09:00:00-07:00",
        AttributeType::Text => "text",
    };
    format!(
        "attribute `{name}` is {value}, which is not a {}: contacts.attributes in herald.yaml declares it a {}, {hint}",
        ty.name(),
        ty.name()
    )
}

/// The text fields of a contact as JSON: absent leaves the field, `null` or blank clears it.
fn text_field(
    m: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<Option<String>>, String> {
    use serde_json::Value;
    match m.get(name) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s.trim().to_owned()))),
        Some(other) => Err(format!("`{name}` must be text or null, not {other}")),
    }
}

/// The fields of a contact in JSON, checked as every way into the contacts checks them (the
/// operations API, `herald contacts import`): e-mail addresses in lower case, phone numbers in
/// E.164 (`region` for those without a country code), IANA time zones, attributes an object.
/// The error says what is wrong, in words.
pub(crate) fn patch_from_json(
    m: &serde_json::Map<String, serde_json::Value>,
    contacts: &ContactsConfig,
) -> Result<crate::store::ContactPatch, String> {
    let region = contacts.default_region.as_str();
    use serde_json::Value;
    if let Some(k) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{k}`: a contact has {}",
            FIELDS.join(", ")
        ));
    }
    let email = match text_field(m, "email")? {
        Some(Some(e)) => Some(Some(normalize_email(&e)?)),
        other => other,
    };
    let phone = match text_field(m, "phone")? {
        Some(Some(p)) => Some(Some(normalize_phone(&p, region).ok_or_else(|| {
            format!(
                "`{p}` is not a phone number; write it with its country code, such as +13035550123"
            )
        })?)),
        other => other,
    };
    let timezone = text_field(m, "timezone")?;
    if let Some(Some(tz)) = &timezone
        && jiff::tz::TimeZone::get(tz).is_err()
    {
        return Err(format!(
            "`{tz}` is not a time zone; use an IANA name such as America/Denver"
        ));
    }
    let mut attributes = match m.get("attributes") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(a)) => a.clone(),
        Some(other) => return Err(format!("`attributes` must be an object, not {other}")),
    };
    type_attributes(&mut attributes, &contacts.attributes)?;
    Ok(crate::store::ContactPatch {
        email,
        phone,
        first_name: text_field(m, "first_name")?,
        last_name: text_field(m, "last_name")?,
        status: text_field(m, "status")?,
        timezone,
        attributes,
    })
}
