//! An alert instance's labels and annotations, rendered as Alertmanager sees them: `alertname`
//! (the alert's id), `severity`, the group's labels, then the alert's own labels; annotations
//! see all of those as `labels`, and the aggregate as `value`.

use std::collections::BTreeMap;

use serde_json::json;

use crate::definitions::alert::Alert;
use crate::templates::{Templates, context};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Renders an instance's labels and annotations for a group and its value (`None`: no data,
/// `value` is then `none` in templates). A text that fails to render names the field.
pub fn render(
    alert: &Alert,
    group: &BTreeMap<String, String>,
    value: Option<f64>,
    templates: &Templates,
) -> Result<Rendered, String> {
    let mut labels = BTreeMap::new();
    labels.insert("alertname".to_owned(), alert.id().to_owned());
    labels.insert("severity".to_owned(), alert.def.severity.name().to_owned());
    labels.extend(group.iter().map(|(k, v)| (k.clone(), v.clone())));
    let value = value.map(number);
    let ctx =
        |labels: &BTreeMap<String, String>| context(&json!({ "value": value, "labels": labels }));
    // The alert's labels see the group's, so `team: "{{ labels.channel }}-oncall"` works.
    let base = ctx(&labels);
    for (k, t) in &alert.def.labels {
        let text = templates
            .render_str(t.as_str(), &base)
            .map_err(|e| format!("label `{k}` of alert `{}`: {}", alert.id(), e.message))?;
        labels.insert(k.clone(), text);
    }
    let all = ctx(&labels);
    let mut annotations = BTreeMap::new();
    for (k, t) in &alert.def.annotations {
        let text = templates
            .render_str(t.as_str(), &all)
            .map_err(|e| format!("annotation `{k}` of alert `{}`: {}", alert.id(), e.message))?;
        annotations.insert(k.clone(), text);
    }
    Ok(Rendered {
        labels,
        annotations,
    })
}

/// A value as templates see it: a whole number without `.0`, so "{{ value }} failed logins"
/// reads "6 failed logins", as Prometheus's `$value` does.
pub fn number(v: f64) -> serde_json::Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// One line of Prometheus's `ALERTS` series for an instance that is pending or firing:
/// `ALERTS{alertname="...",alertstate="firing",severity="...",...} 1`.
pub fn alerts_series(labels: &BTreeMap<String, String>, state: &str) -> String {
    let mut out = String::from("ALERTS{");
    let mut first = true;
    let mut push = |out: &mut String, k: &str, v: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    };
    if let Some(name) = labels.get("alertname") {
        push(&mut out, "alertname", name);
    }
    push(&mut out, "alertstate", state);
    for (k, v) in labels {
        if k != "alertname" && k != "alertstate" && is_label_name(k) {
            push(&mut out, k, v);
        }
    }
    out.push_str("} 1");
    out
}

/// Prometheus label names are `[a-zA-Z_][a-zA-Z0-9_]*`; others are left out of the series.
fn is_label_name(k: &str) -> bool {
    let mut cs = k.chars();
    cs.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
