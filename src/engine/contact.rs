//! What makes a contact's address valid, in one place: a run's `upsert_contact`, suppression,
//! inbound messages, the operations API and `herald run`'s seeded contacts read e-mail
//! addresses and phone numbers the same way. Phone numbers are kept in E.164; one written
//! without a country code is read in `contacts.default_region` (herald.yaml).

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
    region: &str,
) -> Result<crate::store::ContactPatch, String> {
    use serde_json::Value;
    const FIELDS: &[&str] = &[
        "email",
        "phone",
        "first_name",
        "last_name",
        "status",
        "timezone",
        "attributes",
    ];
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
    let attributes = match m.get("attributes") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(a)) => a.clone(),
        Some(other) => return Err(format!("`attributes` must be an object, not {other}")),
    };
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
