//! Silences, as Alertmanager has them: matchers on an alert's labels (`alertname=payments`,
//! `tenant!=acme`, `service=~"api|web"`, `team!~"ops.*"`) and a time range. A silenced alert
//! still fires and is listed; it is only not notified. Regular expressions match the whole
//! value, as Prometheus's do.

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::store::Millis;
use crate::store::alerting::SilenceRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOp {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "=~")]
    Re,
    #[serde(rename = "!~")]
    NotRe,
}

impl MatchOp {
    fn symbol(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::Ne => "!=",
            MatchOp::Re => "=~",
            MatchOp::NotRe => "!~",
        }
    }
}

/// One matcher on one label. A missing label is the empty value, as in Alertmanager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.symbol(), self.value)
    }
}

impl Matcher {
    /// Reads `name=value`, `name!=value`, `name=~regex` or `name!~regex`; the value may be in
    /// double quotes.
    pub fn parse(text: &str) -> Result<Matcher, String> {
        let text = text.trim();
        let (at, op, len) = ["!=", "=~", "!~", "="]
            .iter()
            .filter_map(|op| text.find(op).map(|at| (at, *op)))
            .min_by_key(|(at, op)| (*at, std::cmp::Reverse(op.len())))
            .map(|(at, op)| {
                let m = match op {
                    "!=" => MatchOp::Ne,
                    "=~" => MatchOp::Re,
                    "!~" => MatchOp::NotRe,
                    _ => MatchOp::Eq,
                };
                (at, m, op.len())
            })
            .ok_or_else(|| {
                format!("`{text}` is not a matcher: write label=value, label!=value, label=~regex or label!~regex")
            })?;
        let name = text[..at].trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return Err(format!(
                "`{text}`: `{name}` is not a label name (letters, digits and _)"
            ));
        }
        let mut value = text[at + len..].trim();
        if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
            value = &value[1..value.len() - 1];
        }
        let m = Matcher {
            name: name.to_owned(),
            op,
            value: value.to_owned(),
        };
        m.regex()?;
        Ok(m)
    }

    fn regex(&self) -> Result<Option<Regex>, String> {
        match self.op {
            MatchOp::Eq | MatchOp::Ne => Ok(None),
            MatchOp::Re | MatchOp::NotRe => Regex::new(&format!("^(?:{})$", self.value))
                .map(Some)
                .map_err(|e| format!("`{self}`: the regular expression does not compile: {e}")),
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map_or("", String::as_str);
        match self.op {
            MatchOp::Eq => v == self.value,
            MatchOp::Ne => v != self.value,
            MatchOp::Re | MatchOp::NotRe => {
                let hit = self.regex().ok().flatten().is_some_and(|re| re.is_match(v));
                hit == (self.op == MatchOp::Re)
            }
        }
    }
}

/// A silence as the notifier uses it.
#[derive(Debug, Clone)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub starts_at: Millis,
    pub ends_at: Millis,
}

impl Silence {
    /// A stored silence; `None` for one whose matchers no longer read (it silences nothing).
    pub fn from_row(row: &SilenceRow) -> Option<Silence> {
        let matchers: Vec<Matcher> = serde_json::from_str(&row.matchers).ok()?;
        Some(Silence {
            id: row.id.clone(),
            matchers,
            starts_at: row.starts_at,
            ends_at: row.ends_at,
        })
    }

    pub fn silences(&self, labels: &BTreeMap<String, String>, now: Millis) -> bool {
        self.starts_at <= now
            && now < self.ends_at
            && self.matchers.iter().all(|m| m.matches(labels))
    }
}

/// What someone asks to silence: matchers as written (`alertname=payments`), how long (`for`,
/// such as `2h`) or until when (`ends_at`, RFC 3339), and why.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceRequest {
    pub matchers: Vec<String>,
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
    #[serde(default)]
    pub starts_at: Option<String>,
    #[serde(default)]
    pub ends_at: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
}

fn parse_time(field: &str, text: &str) -> Result<Millis, String> {
    let ts: jiff::Timestamp = text.parse().map_err(|e| {
        format!("`{field}: {text}` is not a time: {e}; write one such as 2026-12-04T18:00:00Z")
    })?;
    Ok(ts.as_millisecond())
}

impl SilenceRequest {
    /// The silence to store, or what is wrong with the request, in words for the person who
    /// wrote it.
    pub fn build(&self, now: Millis) -> Result<SilenceRow, String> {
        if self.matchers.is_empty() {
            return Err(
                "a silence needs at least one matcher, such as alertname=payment-failures".into(),
            );
        }
        let matchers = self
            .matchers
            .iter()
            .map(|m| Matcher::parse(m))
            .collect::<Result<Vec<_>, _>>()?;
        // A silence that matches everything would hide every outage.
        if matchers.iter().all(|m| m.matches(&BTreeMap::new())) {
            return Err("these matchers match every alert (each also matches an empty label); name at least one label's value, such as alertname=payment-failures".into());
        }
        let comment = self.comment.as_deref().map(str::trim).unwrap_or_default();
        if comment.is_empty() {
            return Err(
                "say why in `comment`: whoever finds the silence at 3 a.m. needs to know".into(),
            );
        }
        let starts_at = match &self.starts_at {
            Some(t) => parse_time("starts_at", t)?,
            None => now,
        };
        let ends_at = match (&self.for_, &self.ends_at) {
            (Some(_), Some(_)) => return Err("give `for` or `ends_at`, not both".into()),
            (Some(d), None) => {
                let d = crate::definitions::model::Duration::parse(d)
                    .map_err(|e| format!("`for: {d}`: {e}"))?;
                starts_at.saturating_add(d.as_millis_i64())
            }
            (None, Some(t)) => parse_time("ends_at", t)?,
            (None, None) => {
                return Err("say how long: `for` (such as 2h) or `ends_at` (a time)".into());
            }
        };
        if ends_at <= starts_at.max(now) {
            return Err("the silence would end before it starts, or has ended already".into());
        }
        Ok(SilenceRow {
            id: crate::engine::new_id(),
            matchers: serde_json::to_string(&matchers).unwrap_or_default(),
            starts_at,
            ends_at,
            created_by: self.created_by.clone(),
            comment: Some(comment.to_owned()),
            created_at: now,
            updated_at: now,
        })
    }
}

/// A stored silence as the API and the CLI show it: its matchers as written, and whether it
/// is `pending`, `active` or `expired` at `now`.
pub fn view(row: &SilenceRow, now: Millis) -> serde_json::Value {
    use crate::engine::clock::rfc3339;
    let matchers: Vec<String> = serde_json::from_str::<Vec<Matcher>>(&row.matchers)
        .map(|ms| ms.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    let state = if now >= row.ends_at {
        "expired"
    } else if now < row.starts_at {
        "pending"
    } else {
        "active"
    };
    serde_json::json!({
        "id": row.id,
        "matchers": matchers,
        "state": state,
        "starts_at": rfc3339(row.starts_at),
        "ends_at": rfc3339(row.ends_at),
        "comment": row.comment,
        "created_by": row.created_by,
        "created_at": rfc3339(row.created_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn matchers_read_and_match_as_alertmanager_does() {
        let l = labels(&[("alertname", "payments"), ("service", "api")]);
        assert!(Matcher::parse("alertname=payments").unwrap().matches(&l));
        assert!(
            Matcher::parse("alertname = \"payments\"")
                .unwrap()
                .matches(&l)
        );
        assert!(!Matcher::parse("service!=api").unwrap().matches(&l));
        assert!(Matcher::parse("service=~api|web").unwrap().matches(&l));
        // Anchored: `ap` is not `api`.
        assert!(!Matcher::parse("service=~ap").unwrap().matches(&l));
        assert!(Matcher::parse("team!~ops.*").unwrap().matches(&l));
        // A missing label is the empty value.
        assert!(Matcher::parse("team=").unwrap().matches(&l));
        let e = Matcher::parse("service=~(").unwrap_err();
        assert!(e.contains("does not compile"), "{e}");
        let e = Matcher::parse("payments").unwrap_err();
        assert!(e.contains("label=value"), "{e}");
        let e = Matcher::parse("=x").unwrap_err();
        assert!(e.contains("not a label name"), "{e}");
    }

    #[test]
    fn a_silence_holds_only_in_its_time_range() {
        let s = Silence {
            id: "s".into(),
            matchers: vec![Matcher::parse("alertname=payments").unwrap()],
            starts_at: 100,
            ends_at: 200,
        };
        let l = labels(&[("alertname", "payments")]);
        assert!(!s.silences(&l, 99));
        assert!(s.silences(&l, 100));
        assert!(!s.silences(&l, 200));
        assert!(!s.silences(&labels(&[("alertname", "other")]), 150));
    }
}
