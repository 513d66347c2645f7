//! Who a campaign enrolls: lists, tags and status, and conditions on contacts' attributes and
//! dates. Every condition is a structure rather than an expression string, so each can be
//! checked offline against the contact schema in herald.yaml and becomes bound parameters in
//! one SQL query, never text spliced into it.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use super::common::Duration;

/// Which contacts a campaign enrolls: all of the conditions given hold.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    /// Contacts on at least one of these lists.
    #[serde(default)]
    pub lists: Vec<String>,
    /// Contacts with every one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Contacts with none of these tags.
    #[serde(default)]
    pub without_tags: Vec<String>,
    /// Contacts whose lifecycle status is one of these.
    #[serde(default)]
    pub status: Vec<String>,
    /// Conditions on contacts' attributes, each of which holds: a value they equal
    /// (`plan: pro`, `vip: true`), or tests such as `{ gte: 5000 }`, `{ in: [CO, UT] }`,
    /// `{ older_than: 30d }`. Names are checked against `contacts.attributes` in herald.yaml
    /// when it declares them.
    #[serde(default)]
    pub attributes: IndexMap<String, AttributeCondition>,
    /// When the contact was first stored (signed up, or imported), such as
    /// `{ within: 7d }` for new contacts or `{ older_than: 90d }` for long-standing ones.
    #[serde(default)]
    pub created: Option<DateTest>,
}

impl Audience {
    /// Whether it selects by anything at all.
    pub fn is_everyone(&self) -> bool {
        self == &Audience::default()
    }
}

/// One attribute's condition: a plain value it equals, or tests that all hold.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AttributeCondition {
    /// The attribute equals this value.
    Equals(Scalar),
    /// Tests on the attribute, all of which hold.
    Test(Box<AttributeTest>),
}

/// A text, a number or true/false, as an attribute holds it.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Number(f64),
    Text(String),
}

impl Scalar {
    /// The attribute type this value compares with.
    pub fn type_name(&self) -> &'static str {
        match self {
            Scalar::Bool(_) => "boolean",
            Scalar::Number(_) => "number",
            Scalar::Text(_) => "text",
        }
    }
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Number(n) => write!(f, "{n}"),
            Scalar::Text(t) => write!(f, "\"{t}\""),
        }
    }
}

/// Tests on one attribute. A contact without the attribute matches only `ne`, `not_in` and
/// `exists: false`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1))]
pub struct AttributeTest {
    /// Equal to this value.
    #[serde(default)]
    pub eq: Option<Scalar>,
    /// Not equal to this value (a contact without the attribute matches).
    #[serde(default)]
    pub ne: Option<Scalar>,
    /// Equal to one of these values.
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<Scalar>>,
    /// Equal to none of these values (a contact without the attribute matches).
    #[serde(default)]
    pub not_in: Option<Vec<Scalar>>,
    /// A number greater than this.
    #[serde(default)]
    pub gt: Option<f64>,
    /// A number at least this.
    #[serde(default)]
    pub gte: Option<f64>,
    /// A number less than this.
    #[serde(default)]
    pub lt: Option<f64>,
    /// A number at most this.
    #[serde(default)]
    pub lte: Option<f64>,
    /// `true`: the contact has the attribute (not null); `false`: it has not.
    #[serde(default)]
    pub exists: Option<bool>,
    // The date tests are `DateTest`'s, written out: serde cannot flatten a struct into one
    // that refuses unknown fields, and a misspelt test must be an error.
    /// A date attribute before this date (and time), such as `2026-01-01`.
    #[serde(default)]
    pub before: Option<String>,
    /// A date attribute at or after this date (and time).
    #[serde(default)]
    pub after: Option<String>,
    /// A date attribute more than this long ago, when the campaign enrolls: `30d`.
    #[serde(default)]
    pub older_than: Option<Duration>,
    /// A date attribute within this long before the campaign enrolls, and not in the
    /// future: `7d`.
    #[serde(default)]
    pub within: Option<Duration>,
}

impl AttributeTest {
    /// Whether it compares numbers.
    pub fn is_numeric(&self) -> bool {
        self.gt.is_some() || self.gte.is_some() || self.lt.is_some() || self.lte.is_some()
    }

    /// Its tests on a date.
    pub fn date(&self) -> DateTest {
        DateTest {
            before: self.before.clone(),
            after: self.after.clone(),
            older_than: self.older_than,
            within: self.within,
        }
    }

    /// The values it compares for (in)equality.
    pub fn values(&self) -> impl Iterator<Item = &Scalar> {
        self.eq
            .iter()
            .chain(self.ne.iter())
            .chain(self.in_.iter().flatten())
            .chain(self.not_in.iter().flatten())
    }
}

/// Tests on a date, each of which holds. Dates are ISO 8601: `2026-01-31`, or a date and time
/// with an offset, `2026-01-31T09:00:00-07:00`; one without an offset is in UTC.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DateTest {
    /// Before this date (and time), such as `2026-01-01`.
    #[serde(default)]
    pub before: Option<String>,
    /// At or after this date (and time).
    #[serde(default)]
    pub after: Option<String>,
    /// More than this long ago, when the campaign enrolls: `30d`.
    #[serde(default)]
    pub older_than: Option<Duration>,
    /// Within this long before the campaign enrolls, and not in the future: `7d`.
    #[serde(default)]
    pub within: Option<Duration>,
}

impl DateTest {
    pub fn is_empty(&self) -> bool {
        self == &DateTest::default()
    }
}

/// Reads an ISO 8601 date or date and time as unix milliseconds: a date alone is its
/// midnight in UTC, a date and time without an offset is in UTC.
pub fn parse_date(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Some(t.as_millisecond());
    }
    if let Ok(dt) = text.parse::<jiff::civil::DateTime>() {
        return dt
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp().as_millisecond());
    }
    text.parse::<jiff::civil::Date>().ok().and_then(|d| {
        d.to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp().as_millisecond())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_in_utc_unless_they_say_otherwise() {
        assert_eq!(parse_date("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_date("1970-01-01T01:00:00"), Some(3_600_000));
        assert_eq!(parse_date("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_date("1970-01-01T00:00:00.250Z"), Some(250));
        assert_eq!(parse_date("yesterday"), None);
        assert_eq!(parse_date("2026-02-30"), None);
    }

    #[test]
    fn a_condition_is_a_value_or_tests() {
        let c: AttributeCondition = serde_json::from_value(serde_json::json!("pro")).unwrap();
        assert_eq!(c, AttributeCondition::Equals(Scalar::Text("pro".into())));
        let c: AttributeCondition =
            serde_json::from_value(serde_json::json!({"gte": 5000, "older_than": "30d"})).unwrap();
        let AttributeCondition::Test(t) = c else {
            panic!("tests expected")
        };
        assert_eq!(t.gte, Some(5000.0));
        assert_eq!(t.older_than, Some(Duration::from_secs(30 * 86_400)));
        assert!(
            serde_json::from_value::<AttributeCondition>(serde_json::json!({"gtee": 5})).is_err()
        );
    }
}
