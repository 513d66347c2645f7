//! Small value types shared by every definition kind: durations, templates, expressions, ids
//! and retry policies. Each has its own JSON Schema, so editors and `herald validate` explain
//! a malformed value in the same words.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer};

/// The one pattern durations must match, shared by the schema and the parser.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d|w))+$";

/// A length of time written as a number and a unit: `500ms`, `30s`, `15m`, `2h`, `1d`, `1w`,
/// or several of them together: `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Duration {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub fn as_std(self) -> std::time::Duration {
        self.0
    }

    /// In milliseconds, as times are stored; saturating rather than wrapping.
    pub fn as_millis_i64(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }

    pub fn parse(text: &str) -> Result<Duration, String> {
        let bad = || {
            format!(
                "`{text}` is not a duration: use a number and a unit, such as 30s, 15m, 2h or 1d"
            )
        };
        if text.is_empty() {
            return Err(bad());
        }
        let mut total: u128 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            if digits == 0 {
                return Err(bad());
            }
            let n: u128 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let (unit_ms, len) = if rest.starts_with("ms") {
                (1, 2)
            } else {
                let ms = match rest.as_bytes()[0] {
                    b's' => 1_000,
                    b'm' => 60_000,
                    b'h' => 3_600_000,
                    b'd' => 86_400_000,
                    b'w' => 604_800_000,
                    _ => return Err(bad()),
                };
                (ms, 1)
            };
            total = total
                .checked_add(n.checked_mul(unit_ms).ok_or_else(bad)?)
                .ok_or_else(bad)?;
            rest = &rest[len..];
        }
        let ms = u64::try_from(total).map_err(|_| bad())?;
        Ok(Duration(std::time::Duration::from_millis(ms)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        if ms > 0 {
            write!(f, "{ms}ms")?;
        }
        Ok(())
    }
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A length of time: a number and a unit (ms, s, m, h, d, w), such as 30s, 15m, 2h, 1d or 1h30m.",
            "examples": ["30s", "15m", "2h", "1d"]
        })
    }
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $schema:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

/// The pattern of definition ids (workflows, and later campaigns, conversations and alerts).
pub const DEFINITION_ID_PATTERN: &str = r"^[a-z0-9][a-z0-9._-]*$";
/// The pattern of explicit step ids. They must work as attribute names in expressions
/// (`steps.check_credit.output`), so they are snake_case; ids Herald generates for unnamed
/// steps start with `_` and can never collide with them.
pub const STEP_ID_PATTERN: &str = r"^[a-z][a-z0-9_]*$";
/// Names of variables and `for_each` loop variables.
pub const IDENT_PATTERN: &str = r"^[a-z_][a-z0-9_]*$";

string_newtype!(
    /// A definition id: lower case letters, digits, `.`, `_` and `-`.
    DefinitionId,
    json_schema!({
        "type": "string",
        "pattern": DEFINITION_ID_PATTERN,
        "description": "A unique id: lower case letters, digits, '.', '_' and '-', starting with a letter or digit.",
        "examples": ["abandoned-application"]
    })
);

string_newtype!(
    /// A step id, unique within its workflow.
    StepId,
    json_schema!({
        "type": "string",
        "pattern": STEP_ID_PATTERN,
        "description": "A step id, unique in the workflow, in snake_case so expressions can refer to it as steps.<id>. Steps without one get an id from their position, which changes when steps move: name the steps that matter.",
        "examples": ["send_nudge"]
    })
);

string_newtype!(
    /// A variable name.
    Ident,
    json_schema!({
        "type": "string",
        "pattern": IDENT_PATTERN,
        "description": "A name in snake_case.",
    })
);

string_newtype!(
    /// Text rendered through minijinja: `Hi {{ contact.first_name }}`. A value that is exactly
    /// one `{{ expression }}` keeps the expression's type (a number stays a number).
    Template,
    json_schema!({
        "type": "string",
        "description": "Text rendered with minijinja, such as 'Hi {{ contact.first_name }}'. A value that is exactly one {{ expression }} keeps the expression's type.",
    })
);

string_newtype!(
    /// A minijinja expression, without braces: `contact.status == "new" and not contact.replied`.
    Expr,
    json_schema!({
        "type": "string",
        "minLength": 1,
        "description": "A minijinja expression without braces, such as: contact.status == \"new\" and not contact.replied",
    })
);

/// How a failed step is retried. Permanent errors (a 4xx from a provider, an invalid
/// recipient) are never retried, whatever the policy says.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, counting the first (1 means no retry).
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// How the delay grows between attempts.
    #[serde(default)]
    pub backoff: Backoff,
    /// The delay before the second attempt.
    #[serde(default = "RetryPolicy::default_delay")]
    pub delay: Duration,
    /// The longest delay between two attempts.
    #[serde(default = "RetryPolicy::default_max_delay")]
    pub max_delay: Duration,
    /// Spread retries randomly (up to the full delay) so failures do not retry in lockstep.
    #[serde(default = "default_true")]
    pub jitter: bool,
}

impl RetryPolicy {
    fn default_delay() -> Duration {
        Duration::from_secs(1)
    }
    fn default_max_delay() -> Duration {
        Duration::from_secs(600)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// The delay doubles after each attempt, up to `max_delay`.
    #[default]
    Exponential,
    /// The same delay between every attempt.
    Fixed,
}

pub(crate) fn default_true() -> bool {
    true
}

/// Free-form labels and ownership, shared by every kind. Herald does not interpret them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Who to ask about this definition.
    #[serde(default)]
    pub owner: Option<String>,
    /// Labels for filtering runs and definitions, such as team: growth.
    #[serde(default)]
    pub labels: indexmap::IndexMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(Duration::parse("30m").unwrap().0.as_secs(), 1800);
        assert_eq!(Duration::parse("1h30m").unwrap().0.as_secs(), 5400);
        assert_eq!(Duration::parse("500ms").unwrap().0.as_millis(), 500);
        assert_eq!(Duration::parse("2d").unwrap().to_string(), "2d");
        assert_eq!(Duration::parse("90m").unwrap().to_string(), "1h30m");
        for bad in [
            "",
            "30",
            "m",
            "1.5h",
            "30 m",
            "-1s",
            "1y",
            "99999999999999999999d",
        ] {
            assert!(Duration::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn duration_pattern_agrees_with_parser() {
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        for s in [
            "30s", "1h30m", "500ms", "1w2d", "0s", "30", "1.5h", "30 m", "1y", "ms",
        ] {
            // The parser may reject values the pattern accepts only for overflow.
            assert_eq!(re.is_match(s), Duration::parse(s).is_ok(), "{s}");
        }
    }
}
