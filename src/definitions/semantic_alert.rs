//! The semantic checks of an alert: what its schema cannot say. An aggregate that reads a
//! field has one (and one that does not, has none), a ratio says what it counts, filters
//! compare with plain values, a measurement is filtered by what it measures (a channel or a
//! workflow) and given only the settings it reads (`status`, `quantile`), a resolve threshold
//! lies on the resolving side of the condition, and its labels and annotations compile and use
//! only `value` and `labels`.

use std::collections::HashSet;

use minijinja::Environment;
use serde_json::Value;

use crate::definitions::Definition;
use crate::definitions::alert::{Alert, Op};
use crate::definitions::diagnostics::Diagnostic;
use crate::definitions::model::alert::{
    AlertSource, EventsSource, MetricName, MetricSource, StatusMatch,
};
use crate::templates::describe_error;

/// The names an alert's labels and annotations see.
pub const ALERT_ROOTS: &[&str] = &["value", "labels"];

/// The workflows and channels a `metric` source may filter by.
pub(super) struct Known<'a> {
    pub workflows: &'a [&'a str],
    pub channels: &'a [String],
}

pub(super) fn check(
    def: &Definition,
    alert: &Alert,
    env: &Environment<'static>,
    globals: &HashSet<String>,
    known: &Known<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let mut error = |pointer: &str, d: Diagnostic, key: bool| {
        out.push(if key {
            def.at_key(pointer, d)
        } else {
            def.at_value(pointer, d)
        });
    };
    match &alert.def.source {
        AlertSource::Events(e) => check_events(e, &mut error),
        AlertSource::Probe(p) => check_probe(p, &mut error),
        AlertSource::Metric(m) => {
            check_metric(m, &mut error);
            check_metric_names(m, known, &mut error);
        }
    }
    if alert.def.every.as_std().is_zero() {
        error(
            "/every",
            Diagnostic::error(
                "invalid-duration",
                "an alert is evaluated at least every 1s, not every 0s",
            ),
            false,
        );
    }
    if let Some(r) = &alert.resolve {
        let c = &alert.condition;
        let wrong = match (c.op.direction(), r.op.direction()) {
            (Some(fire_high), Some(resolve_high)) if fire_high != resolve_high => {
                // The resolve threshold must not resolve a value that still fires.
                (fire_high && r.value > c.value) || (!fire_high && r.value < c.value)
            }
            _ => true,
        };
        if wrong {
            let hint = match c.op {
                Op::Gt | Op::Ge => format!(
                    "for `condition: \"{c}\"`, write a lower bound such as `resolve: \"< {}\"`",
                    c.value
                ),
                Op::Lt | Op::Le => format!(
                    "for `condition: \"{c}\"`, write an upper bound such as `resolve: \"> {}\"`",
                    c.value
                ),
                Op::Eq | Op::Ne => {
                    "a resolve threshold goes with a condition written with >, >=, < or <="
                        .to_owned()
                }
            };
            let d = Diagnostic::error(
                "invalid-threshold",
                format!("`resolve: \"{r}\"` does not resolve on the other side of `condition: \"{c}\"`: an alert could resolve while its condition still holds"),
            )
            .with_hint(hint);
            error("/resolve", d, false);
        }
    }
    let texts = alert
        .def
        .labels
        .iter()
        .map(|(k, t)| {
            (
                format!("/labels/{}", crate::definitions::source::escape_token(k)),
                t,
            )
        })
        .chain(alert.def.annotations.iter().map(|(k, t)| {
            (
                format!(
                    "/annotations/{}",
                    crate::definitions::source::escape_token(k)
                ),
                t,
            )
        }));
    for (pointer, text) in texts {
        match env.template_from_str(text.as_str()) {
            Err(e) => error(
                &pointer,
                Diagnostic::error("invalid-template", describe_error(&e)),
                false,
            ),
            Ok(t) => {
                let mut unknown: Vec<String> = t
                    .undeclared_variables(false)
                    .into_iter()
                    .filter(|v| !ALERT_ROOTS.contains(&v.as_str()) && !globals.contains(v))
                    .collect();
                unknown.sort();
                if let Some(v) = unknown.first() {
                    let hint = match crate::definitions::suggest::did_you_mean(v, ALERT_ROOTS.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`? An alert's labels and annotations see `value` and `labels`"),
                        None => "an alert's labels and annotations see `value` (the aggregate) and `labels` (the group's and the alert's)".to_owned(),
                    };
                    let d = Diagnostic::error(
                        "unknown-variable",
                        format!("unknown variable `{v}` in an alert's text"),
                    )
                    .with_hint(hint);
                    error(&pointer, d, false);
                }
            }
        }
    }
}

/// A metric filtered by a workflow or channel that does not exist measures nothing, for ever:
/// refused, with the closest name.
fn check_metric_names(
    m: &MetricSource,
    known: &Known<'_>,
    error: &mut impl FnMut(&str, Diagnostic, bool),
) {
    let mut unknown = |field: &str, name: &str, what: &str, names: Vec<&str>| {
        if names.contains(&name) {
            return;
        }
        let d = Diagnostic::error(
            "unknown-metric-filter",
            format!("there is no {what} `{name}`, so this measures nothing"),
        );
        let d = match crate::definitions::suggest::did_you_mean(name, names.iter().copied()) {
            Some(s) => d.with_hint(format!("did you mean `{s}`?")),
            None if names.is_empty() => d.with_hint(format!("there are no {what}s to measure")),
            None => d.with_hint(format!("{what}s: {}", names.join(", "))),
        };
        error(&format!("/source/metric/{field}"), d, false);
    };
    if let Some(w) = &m.workflow {
        unknown("workflow", w, "workflow", known.workflows.to_vec());
    }
    if let Some(c) = &m.channel {
        let channels = known.channels.iter().map(String::as_str).collect();
        unknown("channel", c, "channel", channels);
    }
}

fn check_metric(m: &MetricSource, error: &mut impl FnMut(&str, Diagnostic, bool)) {
    let base = "/source/metric";
    let name = m.name.name();
    let (of, wrong, right, given) = if m.name.of_outbox() {
        ("the outbox", "workflow", "channel", m.workflow.is_some())
    } else {
        ("runs", "channel", "workflow", m.channel.is_some())
    };
    if given {
        let d = Diagnostic::error(
            "invalid-metric",
            format!("`{name}` is a measurement of {of}, filtered by `{right}`, not `{wrong}`"),
        )
        .with_hint(format!(
            "write `{right}:` instead, or remove `{wrong}`; `group_by: true` gives one instance per {right}"
        ));
        error(&format!("{base}/{wrong}"), d, true);
    }
    if !m.status.is_empty() && m.name != MetricName::WebhookResponses {
        let d = Diagnostic::error(
            "unused-field",
            format!("`status` goes with `name: webhook_responses`, not `{name}`"),
        );
        error(&format!("{base}/status"), d, true);
    }
    for (i, s) in m.status.iter().enumerate() {
        if s.range().is_none() {
            let what = match s {
                StatusMatch::Code(c) => format!("{c} is not an HTTP status (100 to 599)"),
                StatusMatch::Class(c) => format!("`{c}` is not a status or a class of them"),
            };
            let d = Diagnostic::error("invalid-status", what).with_hint(
                "write a status such as `503` or a class: `1xx`, `2xx`, `3xx`, `4xx` or `5xx`",
            );
            error(&format!("{base}/status/{i}"), d, false);
        }
    }
    if let Some(q) = m.quantile {
        if m.name != MetricName::StepLatency {
            let d = Diagnostic::error(
                "unused-field",
                format!("`quantile` goes with `name: step_latency`, not `{name}`"),
            );
            error(&format!("{base}/quantile"), d, true);
        } else if !QUANTILES.contains(&q) {
            let d = Diagnostic::error(
                "invalid-quantile",
                format!("`quantile: {q}` is not one Herald reads"),
            )
            .with_hint("write 0.5 (the median), 0.95 or 0.99");
            error(&format!("{base}/quantile"), d, false);
        }
    }
    let windowed = matches!(
        m.name,
        MetricName::RunFailures
            | MetricName::DeliveryRate
            | MetricName::WebhookResponses
            | MetricName::StepLatency
    );
    if windowed && m.window.as_std().is_zero() {
        error(
            &format!("{base}/window"),
            Diagnostic::error(
                "invalid-duration",
                "a window of 0s holds nothing to measure",
            ),
            false,
        );
    }
}

/// The quantiles `step_latency` reads, as an events source's p50, p95 and p99.
const QUANTILES: [f64; 3] = [0.5, 0.95, 0.99];

fn check_probe(
    p: &crate::definitions::model::alert::ProbeSource,
    error: &mut impl FnMut(&str, Diagnostic, bool),
) {
    let base = "/source/probe";
    if !p.url.contains("${env:") {
        match reqwest::Url::parse(&p.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => error(
                &format!("{base}/url"),
                Diagnostic::error(
                    "invalid-url",
                    format!("a probe checks http or https, not `{}`", u.scheme()),
                ),
                false,
            ),
            Err(e) => error(
                &format!("{base}/url"),
                Diagnostic::error("invalid-url", format!("`{}` is not a URL: {e}", p.url))
                    .with_hint(
                        "write the whole address, such as https://app.example.com/api/health",
                    ),
                false,
            ),
        }
    }
    for (i, s) in p.status.iter().enumerate() {
        if !(100..=599).contains(s) {
            error(
                &format!("{base}/status/{i}"),
                Diagnostic::error(
                    "invalid-status",
                    format!("{s} is not an HTTP status (100 to 599)"),
                ),
                false,
            );
        }
    }
    if p.timeout.as_std().is_zero() {
        error(
            &format!("{base}/timeout"),
            Diagnostic::error(
                "invalid-duration",
                "a probe that waits 0s never gets an answer",
            ),
            false,
        );
    }
    if let Some(max) = p.max_latency
        && max.as_std() >= p.timeout.as_std()
    {
        let d = Diagnostic::error(
            "invalid-duration",
            format!(
                "`max_latency: {max}` is not less than `timeout: {}`: the check gives up first",
                p.timeout
            ),
        )
        .with_hint("raise `timeout` above `max_latency`");
        error(&format!("{base}/max_latency"), d, false);
    }
}

fn check_events(e: &EventsSource, error: &mut impl FnMut(&str, Diagnostic, bool)) {
    let base = "/source/events";
    let agg = e.aggregate;
    match (&e.field, agg.needs_field()) {
        (None, true) => {
            let d = Diagnostic::error(
                "missing-field",
                format!(
                    "`aggregate: {}` reads a field, and no `field` is given",
                    agg.name()
                ),
            )
            .with_hint("name the event data's field, such as `field: latency_ms`");
            error(&format!("{base}/aggregate"), d, false);
        }
        (Some(_), false) => {
            let d = Diagnostic::error(
                "unused-field",
                format!(
                    "`aggregate: {}` reads no field, so `field` has no effect",
                    agg.name()
                ),
            )
            .with_hint("`field` goes with avg, max, p50, p95, p99 and distinct");
            error(&format!("{base}/field"), d, true);
        }
        _ => {}
    }
    if let Some(f) = &e.field {
        check_path(f, &format!("{base}/field"), false, error);
    }
    if let Some(g) = &e.group_by {
        check_path(g, &format!("{base}/group_by"), false, error);
    }
    let ratio = agg == crate::definitions::model::alert::Aggregate::Ratio;
    if ratio && e.matching.is_empty() {
        let d = Diagnostic::error(
            "missing-field",
            "`aggregate: ratio` counts the `matching` events over all of them, and no `matching` is given",
        )
        .with_hint("such as `matching: { status: failed }`");
        error(&format!("{base}/aggregate"), d, false);
    }
    if !ratio && !e.matching.is_empty() {
        let d = Diagnostic::error(
            "unused-field",
            format!(
                "`matching` goes with `aggregate: ratio`, not `{}`",
                agg.name()
            ),
        )
        .with_hint("to count only some events, use `where`");
        error(&format!("{base}/matching"), d, true);
    }
    if e.window.as_std().is_zero() {
        error(
            &format!("{base}/window"),
            Diagnostic::error("invalid-duration", "a window of 0s holds no events"),
            false,
        );
    }
    for (what, filter) in [("where", &e.where_), ("matching", &e.matching)] {
        for (k, v) in filter {
            let pointer = format!(
                "{base}/{what}/{}",
                crate::definitions::source::escape_token(k)
            );
            check_path(k, &pointer, true, error);
            if matches!(v, Value::Array(_) | Value::Object(_) | Value::Null) {
                let d = Diagnostic::error(
                    "wrong-type",
                    format!("`{what}` compares `{k}` with a text, a number or true/false"),
                );
                error(&pointer, d, false);
            }
        }
    }
}

fn check_path(
    path: &str,
    pointer: &str,
    at_key: bool,
    error: &mut impl FnMut(&str, Diagnostic, bool),
) {
    let mut parts = path.split('.');
    let root = parts.next().unwrap_or_default();
    let ok = match root {
        "name" | "key" => parts.next().is_none(),
        "data" => !path.split('.').any(str::is_empty),
        _ => false,
    };
    if !ok {
        let hint = if !path.split('.').any(str::is_empty) {
            format!(
                "fields are `name`, `key` or `data.` and a path in the event's data: did you mean `data.{path}`?"
            )
        } else {
            "fields are `name`, `key` or `data.` and a path in the event's data, such as `data.latency_ms`".to_owned()
        };
        let d = Diagnostic::error(
            "invalid-field",
            format!("`{path}` is not a field of an event"),
        )
        .with_hint(hint);
        error(pointer, d, at_key);
    }
}
