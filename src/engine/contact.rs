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
