//! An events source's value: the events of its names in its window, filtered by `where`,
//! split by `group_by`, made into one number per group by its aggregate.

use std::collections::{BTreeMap, BTreeSet};

use indexmap::IndexMap;
use serde_json::Value;

use crate::definitions::model::alert::{Aggregate, EventsSource};

/// One event, as an alert reads it. `at` is in milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub key: Option<String>,
    pub data: Value,
    pub at: i64,
}

impl Event {
    /// The value at `data.` and a dotted path (`name` and `key` are text, read by
    /// [`Event::field_text`]).
    pub fn field(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split('.');
        match parts.next()? {
            "data" => parts.try_fold(&self.data, |v, p| match v {
                Value::Object(m) => m.get(p),
                Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            }),
            _ => None,
        }
    }

    /// The field as text, for `group_by` and `distinct`; `name` and `key` included.
    pub fn field_text(&self, path: &str) -> Option<String> {
        match path {
            "name" => Some(self.name.clone()),
            "key" => self.key.clone(),
            _ => self.field(path).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            }),
        }
    }

    /// Whether the event has every value of a filter. A string compares with a string, a
    /// number with a number: `"5"` is not `5`.
    pub fn matches(&self, filter: &IndexMap<String, Value>) -> bool {
        filter.iter().all(|(path, want)| match path.as_str() {
            "name" => want.as_str() == Some(self.name.as_str()),
            "key" => want.as_str().is_some() && want.as_str() == self.key.as_deref(),
            _ => match (self.field(path), want) {
                (Some(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
                (Some(have), want) => have == want,
                (None, _) => false,
            },
        })
    }
}

/// One group's value. `labels` holds the `group_by` field's last name and the group's value
/// (empty without `group_by`); `value` is `None` when there is no data: no events, fewer than
/// `min_events`, or none with a numeric `field`.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub labels: BTreeMap<String, String>,
    pub value: Option<f64>,
    /// Events in the group's window, after `where`.
    pub events: usize,
}

/// The label a `group_by` field gives its groups: its last name (`data.channel` → `channel`).
pub fn group_label(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// The value of each group with events in the window `(now - window, now]`. Without
/// `group_by` there is always exactly one group, with no labels, so "no events at all" is a
/// value (`None`) that `no_data` decides on.
pub fn evaluate<'a>(
    source: &EventsSource,
    events: impl IntoIterator<Item = &'a Event>,
    now: i64,
) -> Vec<Group> {
    let window = source.window.as_millis_i64();
    let from = now.saturating_sub(window);
    let names = source.name.names();
    let mut groups: BTreeMap<Option<String>, Vec<&Event>> = BTreeMap::new();
    if source.group_by.is_none() {
        groups.insert(None, Vec::new());
    }
    for e in events {
        if e.at <= from || e.at > now || !names.contains(&e.name) {
            continue;
        }
        if !e.matches(&source.where_) {
            continue;
        }
        let key = match &source.group_by {
            // An event without the field is in no group: it has no label to fire with.
            Some(g) => match e.field_text(g) {
                Some(v) => Some(v),
                None => continue,
            },
            None => None,
        };
        groups.entry(key).or_default().push(e);
    }
    groups
        .into_iter()
        .map(|(key, evs)| {
            let mut labels = BTreeMap::new();
            if let (Some(g), Some(k)) = (&source.group_by, key) {
                labels.insert(group_label(g).to_owned(), k);
            }
            let value = if evs.is_empty() || (evs.len() as u64) < source.min_events {
                None
            } else {
                value_of(source, &evs, window)
            };
            Group {
                labels,
                value,
                events: evs.len(),
            }
        })
        .collect()
}

fn value_of(source: &EventsSource, evs: &[&Event], window_ms: i64) -> Option<f64> {
    let n = evs.len() as f64;
    let numbers = || -> Vec<f64> {
        let f = source.field.as_deref().unwrap_or_default();
        evs.iter()
            .filter_map(|e| e.field(f).and_then(Value::as_f64))
            .collect()
    };
    match source.aggregate {
        Aggregate::Count => Some(n),
        Aggregate::Rate => Some(n / (window_ms.max(1) as f64 / 1000.0)),
        Aggregate::Ratio => {
            Some(evs.iter().filter(|e| e.matches(&source.matching)).count() as f64 / n)
        }
        Aggregate::Avg => {
            let xs = numbers();
            (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
        }
        Aggregate::Max => numbers().into_iter().reduce(f64::max),
        Aggregate::P50 => quantile(numbers(), 0.50),
        Aggregate::P95 => quantile(numbers(), 0.95),
        Aggregate::P99 => quantile(numbers(), 0.99),
        Aggregate::Distinct => {
            let f = source.field.as_deref().unwrap_or_default();
            let set: BTreeSet<String> = evs.iter().filter_map(|e| e.field_text(f)).collect();
            Some(set.len() as f64)
        }
    }
}

/// The nearest-rank quantile: the smallest value with at least `q` of the values at or below
/// it, so p95 of 20 values is the 19th, a value that was observed.
pub fn quantile(mut xs: Vec<f64>, q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let rank = (q * xs.len() as f64).ceil() as usize;
    xs.get(rank.clamp(1, xs.len()) - 1).copied()
}
