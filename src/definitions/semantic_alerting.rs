//! `alerting:` in herald.yaml: what its schema cannot say. Each route names a channel that
//! exists and someone to tell, repeats after some time, and its texts compile and use only
//! what a notice has; each inhibition says both which alerts mute and which are muted.

use std::collections::HashSet;

use minijinja::Environment;

use crate::definitions::diagnostics::Diagnostic;
use crate::definitions::project::Project;
use crate::definitions::source::{Parsed, SourceFile};
use crate::definitions::suggest::did_you_mean;
use crate::templates::describe_error;

/// The names a route's `subject` and `body` see.
pub const NOTICE_ROOTS: &[&str] = &[
    "status",
    "title",
    "alerts",
    "firing",
    "resolved",
    "group_labels",
    "common_labels",
    "common_annotations",
    "route",
];

pub(super) fn check(
    project: &Project,
    env: &Environment<'static>,
    globals: &HashSet<String>,
    file: &SourceFile,
    parsed: &Parsed,
    out: &mut Vec<Diagnostic>,
) {
    let cfg = &project.config.def.alerting;
    let mut channels: Vec<&str> = project
        .config
        .def
        .channels
        .keys()
        .map(String::as_str)
        .collect();
    if !channels.contains(&super::BUILTIN_CHANNEL) {
        channels.push(super::BUILTIN_CHANNEL);
    }
    let mut at = |pointer: String, d: Diagnostic| {
        out.push(file.locate(d, parsed.index.value(&pointer)));
    };
    for (i, route) in cfg.routes.iter().enumerate() {
        let base = format!("/alerting/routes/{i}");
        if !channels.contains(&route.channel.as_str()) {
            let d = Diagnostic::error(
                "unknown-channel",
                format!(
                    "alert route uses channel `{}`, which is not defined",
                    route.channel
                ),
            );
            let d = match did_you_mean(&route.channel, channels.iter().copied()) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!("defined channels: {}", channels.join(", "))),
            };
            at(format!("{base}/channel"), d);
        }
        if route.to.all().iter().all(|t| t.trim().is_empty()) {
            at(
                format!("{base}/to"),
                Diagnostic::error(
                    "invalid-route",
                    "an alert route tells nobody: `to` is empty",
                )
                .with_hint("give an address on the route's channel, such as `to: ops@example.com`"),
            );
        }
        if route.repeat_every.as_std().is_zero() {
            at(
                format!("{base}/repeat_every"),
                Diagnostic::error(
                    "invalid-duration",
                    "`repeat_every: 0s` would notify at every evaluation",
                )
                .with_hint("repeat after some time, such as `repeat_every: 4h`"),
            );
        }
        for (field, text) in [("subject", &route.subject), ("body", &route.body)] {
            let Some(text) = text else { continue };
            match env.template_from_str(text.as_str()) {
                Err(e) => at(
                    format!("{base}/{field}"),
                    Diagnostic::error("invalid-template", describe_error(&e)),
                ),
                Ok(t) => {
                    let mut unknown: Vec<String> = t
                        .undeclared_variables(false)
                        .into_iter()
                        .filter(|v| !NOTICE_ROOTS.contains(&v.as_str()) && !globals.contains(v))
                        .collect();
                    unknown.sort();
                    if let Some(v) = unknown.first() {
                        let hint = match did_you_mean(v, NOTICE_ROOTS.iter().copied()) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None => format!("a notice sees {}", NOTICE_ROOTS.join(", ")),
                        };
                        at(
                            format!("{base}/{field}"),
                            Diagnostic::error(
                                "unknown-variable",
                                format!("unknown variable `{v}` in an alert route's {field}"),
                            )
                            .with_hint(hint),
                        );
                    }
                }
            }
        }
    }
    for (i, rule) in cfg.inhibit.iter().enumerate() {
        for (side, m) in [("source", &rule.source), ("target", &rule.target)] {
            if m.is_empty() {
                at(
                    format!("/alerting/inhibit/{i}/{side}"),
                    Diagnostic::error(
                        "invalid-inhibit",
                        format!("an inhibition with an empty `{side}` matches every alert"),
                    )
                    .with_hint("name labels, such as `source: { severity: critical }` and `target: { severity: warning }`"),
                );
            }
        }
    }
}
