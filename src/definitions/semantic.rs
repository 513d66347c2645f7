//! The semantic pass: what a schema cannot see, checked across the whole set of definitions.
//!
//! - duplicate definition ids, duplicate step ids, references to steps that do not exist;
//! - templates that are missing, and inline templates and expressions that do not compile or
//!   use variables that do not exist;
//! - cron expressions and time zones;
//! - two webhooks on one method and path;
//! - `call` targets nobody defines, events nobody listens for (a warning);
//! - channels the config does not define;
//! - `${env:...}` variables that are unset (a warning when validating, an error when serving);
//! - steps that can never run because an earlier step always fails.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use indexmap::IndexMap;
use minijinja::Environment;
use serde_json::Value;

use super::diagnostics::Diagnostic;
use super::env;
use super::model::Template;
use super::model::step::{
    Action, CallStep, EmitStep, RespondStep, SendStep, Step, UpsertContactStep, WaitStep,
    WhatsappTemplate,
};
use super::model::trigger::{RespondMode, Trigger, WebhookAuth};
use super::project::{EnvMode, LoadOptions, Project};
use super::source::{Parsed, SourceFile, escape_token};
use super::suggest::did_you_mean;
use super::{Definition, Workflow};
use crate::templates::{describe_error, sole_expression};
use crate::triggers::cron::{parse_schedule, parse_timezone};

#[path = "semantic_conversation.rs"]
mod conversation;

#[path = "semantic_alert.rs"]
pub mod alert;

#[path = "semantic_alerting.rs"]
pub mod alerting;

#[path = "semantic_campaign.rs"]
mod campaign;

/// Names every expression may use, whatever started the run.
pub const CONTEXT_ROOTS: &[&str] = &[
    "trigger", "body", "headers", "query", "params", "event", "message", "input", "vars", "steps",
    "contact", "run",
];

/// The channel that exists without configuration.
pub const BUILTIN_CHANNEL: &str = "log";

/// What compiling one template or expression found: the variables it uses (sorted), or why it
/// does not compile.
#[derive(Debug, Clone)]
enum Compiled {
    Vars {
        vars: Arc<[String]>,
        /// The filters, tests, functions and templates it names.
        refs: Arc<[crate::templates::inspect::Reference]>,
    },
    Invalid {
        message: String,
        range: Option<Range<usize>>,
    },
}

/// Templates and expressions already compiled, by kind and text, kept from one load of a
/// project to the next: compiling them is most of the semantic pass, and a reload usually
/// changes a file or two. What is kept depends only on the text (the syntax is fixed and the
/// variables are looked up afterwards), so reusing it cannot change a diagnostic. Entries the
/// last check did not use are dropped.
#[derive(Debug, Default)]
pub struct CompiledTexts {
    /// By kind (templates, expressions), then text.
    used: [HashMap<Box<str>, Compiled>; 2],
    previous: [HashMap<Box<str>, Compiled>; 2],
}

impl CompiledTexts {
    fn get(
        &mut self,
        env: &Environment<'static>,
        kind: TextKind,
        text: &str,
        expr: Option<&str>,
    ) -> Compiled {
        let k = kind as usize;
        if let Some(c) = self.used[k].get(text) {
            return c.clone();
        }
        let compiled = match self.previous[k].remove(text) {
            Some(c) => c,
            None => compile_text(env, text, expr),
        };
        self.used[k].insert(text.into(), compiled.clone());
        compiled
    }

    /// Starts a check: what the last one used becomes what this one may reuse.
    fn start(&mut self) {
        self.previous = std::mem::take(&mut self.used);
    }

    /// Ends a check: drops what it did not use.
    fn finish(&mut self) {
        self.previous = Default::default();
    }
}

fn compile_text(env: &Environment<'static>, text: &str, expr: Option<&str>) -> Compiled {
    // An expression is inspected as the template that prints it, which names the same things.
    let source = match expr {
        Some(e) => std::borrow::Cow::Owned(format!("{{{{ {e} }}}}")),
        None => std::borrow::Cow::Borrowed(text),
    };
    let compiled = match expr {
        Some(e) => env
            .compile_expression(e)
            .map(|c| c.undeclared_variables(true)),
        None => env
            .template_from_str(text)
            .map(|t| t.undeclared_variables(true)),
    };
    match compiled {
        Ok(vars) => {
            let mut vars: Vec<String> = vars.into_iter().collect();
            vars.sort();
            let refs = env
                .template_from_str(&source)
                .map(|t| crate::templates::inspect::references(&t))
                .unwrap_or_default();
            Compiled::Vars {
                vars: vars.into(),
                refs: refs.into(),
            }
        }
        Err(err) => Compiled::Invalid {
            message: describe_error(&err),
            range: err.range(),
        },
    }
}

pub fn check(project: &Project, opts: &LoadOptions) -> Vec<Diagnostic> {
    check_with(project, opts, &mut CompiledTexts::default())
}

/// [`check`], reusing (and refilling) `texts` compiled by an earlier check.
pub(crate) fn check_with(
    project: &Project,
    opts: &LoadOptions,
    texts: &mut CompiledTexts,
) -> Vec<Diagnostic> {
    texts.start();
    let out = check_all(project, opts, texts);
    texts.finish();
    out
}

fn check_all(project: &Project, opts: &LoadOptions, texts: &mut CompiledTexts) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let defs = &project.definitions;

    // A config with errors was replaced by the defaults; its channels are still the ones it
    // names, so one mistake in herald.yaml does not turn every `send` into a second error.
    // WhatsApp channels, whose free-form text has a 24-hour window.
    let providers: HashMap<String, &'static str> = project
        .config
        .def
        .channels
        .iter()
        .map(|(name, c)| (name.clone(), c.provider()))
        .collect();
    let whatsapp: Vec<String> = project
        .config
        .def
        .channels
        .iter()
        .filter(|(_, c)| c.provider() == "whatsapp")
        .map(|(name, _)| name.clone())
        .collect();
    let mut channels: Vec<String> = match &project.config.file {
        Some((_, parsed)) if project.config.def.channels.is_empty() => parsed
            .value
            .get("channels")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
        _ => project.config.def.channels.keys().cloned().collect(),
    };
    if !channels.iter().any(|c| c == BUILTIN_CHANNEL) {
        channels.push(BUILTIN_CHANNEL.to_owned());
    }

    check_duplicate_ids(defs, &mut out);

    let workflow_ids: Vec<&str> = defs.iter().map(|d| d.id.as_str()).collect();
    // What runs: workflows, campaigns and conversations, not alerts.
    let runnable: Vec<&str> = defs
        .iter()
        .filter(|d| d.as_workflow().is_some())
        .map(|d| d.id.as_str())
        .collect();
    let mut listened: HashSet<&str> = HashSet::new();
    for def in defs {
        if let Some(a) = def.as_alert()
            && let super::model::alert::AlertSource::Events(e) = &a.def.source
        {
            listened.extend(e.name.names().iter().map(String::as_str));
        }
        let Some(wf) = def.as_workflow() else {
            continue;
        };
        for t in &wf.triggers {
            if let Trigger::Event(e) = t {
                listened.insert(&e.name);
            }
        }
        for s in wf.all_steps() {
            if let Action::WaitFor(w) = &s.action
                && let Some(e) = &w.event
            {
                listened.insert(e);
            }
        }
    }

    check_webhooks(project, &mut out);

    check_call_cycles(defs, &mut out);

    let env = project.templates.env();
    let globals: HashSet<String> = env.globals().map(|(k, _)| k.to_owned()).collect();
    let known = crate::templates::inspect::Known::default();
    let ai: Vec<String> = project.config.def.ai.keys().cloned().collect();
    for def in defs {
        if let Some(wf) = def.as_workflow() {
            let mut c = WorkflowCheck {
                ai: &ai,
                contact_attributes: &project.config.def.contacts.attributes,
                def,
                wf,
                env,
                globals: &globals,
                channels: &channels,
                whatsapp: &whatsapp,
                providers: &providers,
                templates: project.templates.names(),
                broken_templates: project.templates.broken_names(),
                known: &known,
                template_dir: project.templates.display_dir(),
                workflow_ids: &workflow_ids,
                listened: &listened,
                step_ids: HashSet::new(),
                order: HashMap::new(),
                current: None,
                texts: &mut *texts,
                out: &mut out,
            };
            c.run();
        }
        if let Some(a) = def.as_alert() {
            let known = alert::Known {
                workflows: &runnable,
                channels: &channels,
            };
            alert::check(def, a, env, &globals, &known, &mut out);
        }
        if let Some(c) = def.as_campaign() {
            campaign::check(def, c, &project.config.def.contacts.attributes, &mut out);
        }
    }

    // Secrets: every `${env:NAME}` in every definition and in the config.
    for def in defs {
        check_env_refs(&def.env_strings, opts, &mut out, &|ptr, needle, d| {
            def.file.locate(d, def.span_in_value(ptr, needle))
        });
    }
    if let Some((file, parsed)) = &project.config.file {
        let strings = env::env_strings(&parsed.value);
        check_env_refs(&strings, opts, &mut out, &|ptr, needle, d| {
            let span = parsed.index.value(ptr);
            let span = file
                .line(span.line)
                .and_then(|l| l.find(needle))
                .map(|b| {
                    let line = file.line(span.line).unwrap_or_default();
                    super::diagnostics::Span::new(
                        span.line,
                        line[..b].chars().count() + 1,
                        needle.chars().count(),
                    )
                })
                .unwrap_or(span);
            file.locate(d, span)
        });
        check_default_region(
            &project.config.def.contacts.default_region,
            file,
            parsed,
            &mut out,
        );
        check_channel_names(project, file, parsed, &mut out);
        check_channel_policies(project, file, parsed, &mut out);
        alerting::check(project, env, &globals, file, parsed, &mut out);
    }
    out
}

/// The words Herald uses after `message.` for events of its own: delivery reports
/// (`message.delivered`...), messages nothing took (`message.unmatched`) and messages that
/// start a queued conversation (`message.queued`). A channel's
/// inbound messages are `message.<channel>`, so a channel named after one of them would mix
/// its people's messages with Herald's events.
pub(crate) const RESERVED_MESSAGE_EVENTS: &[&str] = &[
    "delivered",
    "failed",
    "bounced",
    "complained",
    "unsubscribed",
    "unmatched",
    "queued",
];

fn check_channel_names(
    project: &Project,
    file: &SourceFile,
    parsed: &Parsed,
    out: &mut Vec<Diagnostic>,
) {
    for name in project.config.def.channels.keys() {
        if RESERVED_MESSAGE_EVENTS.contains(&name.as_str()) {
            let d = Diagnostic::error(
                "reserved-channel-name",
                format!(
                    "a channel cannot be named `{name}`: `message.{name}` is an event Herald emits itself"
                ),
            )
            .with_hint(format!("rename it, such as `{name}_channel`"));
            let pointer = format!("/channels/{}", super::source::escape_token(name));
            out.push(file.locate(d, parsed.index.key(&pointer)));
        }
    }
}

/// A channel's `fallback` names another channel, and fallbacks never lead back where they
/// started; quiet hours name real time zones.
fn check_channel_policies(
    project: &Project,
    file: &SourceFile,
    parsed: &Parsed,
    out: &mut Vec<Diagnostic>,
) {
    use crate::channels::policy::QuietHoursSetting;
    let channels = &project.config.def.channels;
    let names: Vec<&str> = channels
        .keys()
        .map(String::as_str)
        .chain(std::iter::once(BUILTIN_CHANNEL))
        .collect();
    for (name, def) in channels {
        let at = |field: &str| format!("/channels/{}/{field}", super::source::escape_token(name));
        if let Some(next) = &def.policy.fallback {
            if next == name {
                let d = Diagnostic::error(
                    "fallback-cycle",
                    format!("channel `{name}` falls back to itself"),
                )
                .with_hint("name another channel, or remove `fallback`");
                out.push(file.locate(d, parsed.index.value(&at("fallback"))));
            } else if !names.contains(&next.as_str()) {
                let mut d = Diagnostic::error(
                    "unknown-channel",
                    format!("channel `{name}` falls back to `{next}`, which is not defined"),
                );
                d = match did_you_mean(next, names.iter().copied()) {
                    Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                    None => d.with_hint(format!("defined channels: {}", names.join(", "))),
                };
                out.push(file.locate(d, parsed.index.value(&at("fallback"))));
            } else {
                // Follow the chain; coming back to `name` is a cycle (reported once, at the
                // channel whose name sorts first, so a cycle is one error).
                let mut seen = vec![name.as_str()];
                let mut cur = next.as_str();
                while let Some(n) = channels.get(cur).and_then(|c| c.policy.fallback.as_deref()) {
                    seen.push(cur);
                    if n == name && seen.iter().all(|s| *s >= name.as_str()) {
                        seen.push(n);
                        let d = Diagnostic::error(
                            "fallback-cycle",
                            format!("channels fall back in a circle: {}", seen.join(" → ")),
                        )
                        .with_hint("a message that fails everywhere must stop somewhere; remove one `fallback`");
                        out.push(file.locate(d, parsed.index.value(&at("fallback"))));
                        break;
                    }
                    if seen.contains(&n) {
                        break;
                    }
                    cur = n;
                }
            }
        }
        if let Some(QuietHoursSetting::Window(q)) = &def.policy.quiet_hours {
            check_quiet_hours_zone(q, &at("quiet_hours/timezone"), file, parsed, out);
        }
    }
    if let Some(QuietHoursSetting::Window(q)) = &project.config.def.compliance.quiet_hours {
        check_quiet_hours_zone(q, "/compliance/quiet_hours/timezone", file, parsed, out);
    }
    if let Some(u) = &project.config.def.compliance.unsubscribe {
        check_unsubscribe(u, &project.config.def.routes.unsubscribe, file, parsed, out);
    }
}

/// `compliance.unsubscribe`: the link's address and the `mailto:` must be usable, and a
/// secret written in the file (rather than taken from the environment) long enough. A secret
/// from the environment is checked when it is read, at start and at each reload.
fn check_unsubscribe(
    u: &crate::definitions::model::config::UnsubscribeConfig,
    route: &str,
    file: &SourceFile,
    parsed: &Parsed,
    out: &mut Vec<Diagnostic>,
) {
    use crate::definitions::model::config::UnsubscribeConfig;
    use crate::engine::unsubscribe::{MIN_SECRET_LEN, Unsubscribe};
    let placeholder = "x".repeat(MIN_SECRET_LEN);
    // Each field alone, so a bad address and a bad mailto are both reported.
    let url_only = UnsubscribeConfig {
        mailto: None,
        ..u.clone()
    };
    let mailto_only = UnsubscribeConfig {
        url: "https://herald.example.com".into(),
        ..u.clone()
    };
    for (field, settings) in [("url", url_only), ("mailto", mailto_only)] {
        if let Err(e) = Unsubscribe::new(&settings, placeholder.clone(), route) {
            let d = Diagnostic::error("invalid-unsubscribe", e);
            let pointer = format!("/compliance/unsubscribe/{field}");
            out.push(file.locate(d, parsed.index.value(&pointer)));
        }
    }
    if !u.secret.contains("${env:")
        && let Err(e) = Unsubscribe::new(u, u.secret.clone(), route)
        && e.contains(".secret")
    {
        let d = Diagnostic::error("invalid-unsubscribe", e)
            .with_hint("keep the secret out of the file: secret: ${env:UNSUBSCRIBE_SECRET}");
        out.push(file.locate(d, parsed.index.value("/compliance/unsubscribe/secret")));
    }
}

fn check_quiet_hours_zone(
    q: &crate::channels::policy::QuietHours,
    pointer: &str,
    file: &SourceFile,
    parsed: &Parsed,
    out: &mut Vec<Diagnostic>,
) {
    if let Some(tz) = &q.timezone
        && let Err(e) = parse_timezone(tz)
    {
        let d = Diagnostic::error("invalid-timezone", e)
            .with_hint("use an IANA name such as America/Denver, Europe/London or UTC");
        out.push(file.locate(d, parsed.index.value(pointer)));
    }
}

/// `contacts.default_region` must be a region the phone number library knows, or no local
/// number could be read.
fn check_default_region(
    region: &str,
    file: &SourceFile,
    parsed: &Parsed,
    out: &mut Vec<Diagnostic>,
) {
    let known = region.len() == 2 && region.parse::<phonenumber::country::Id>().is_ok();
    if !known {
        let d = Diagnostic::error(
            "unknown-region",
            format!("`{region}` is not a region phone numbers can be read in"),
        )
        .with_hint("use a two-letter country code in capitals, such as US or GB");
        out.push(file.locate(d, parsed.index.value("/contacts/default_region")));
    }
}

/// Ids are unique across all definitions.
fn check_duplicate_ids(defs: &[Arc<Definition>], out: &mut Vec<Diagnostic>) {
    let mut first_by_id: HashMap<&str, &Definition> = HashMap::new();
    for def in defs {
        if let Some(first) = first_by_id.get(def.id.as_str()) {
            let d = Diagnostic::error("duplicate-id", format!("duplicate id `{}`", def.id))
                .with_hint(format!(
                    "{} defines it first; ids must be unique across all definitions",
                    first.at_value("/id", Diagnostic::error("", "")).location()
                ));
            out.push(def.at_value("/id", d));
        } else {
            first_by_id.insert(&def.id, def);
        }
    }
}

/// Webhooks on the same method and path, or on Herald's own routes, and webhooks a captured
/// request could be replayed to.
fn check_webhooks(project: &Project, out: &mut Vec<Diagnostic>) {
    let defs = &project.definitions;
    let reserved = project.config.def.routes.reserved();
    let mut routes: HashMap<(String, String), (&Definition, String)> = HashMap::new();
    for def in defs {
        let Some(wf) = def.as_workflow() else {
            continue;
        };
        for (i, t) in wf.triggers.iter().enumerate() {
            let Trigger::Webhook(w) = t else { continue };
            let key = (w.method.as_str().to_owned(), normalize_route(&w.path));
            let pointer = format!("/triggers/{i}/webhook/path");
            if let Some(WebhookAuth::HmacSha256(h)) = &w.auth
                && h.timestamp_header.is_none()
                && w.idempotency_key.is_none()
            {
                let d = Diagnostic::warning(
                    "replayable-webhook",
                    "a captured request to this webhook can be replayed forever",
                )
                .with_hint("give it an `idempotency_key` (such as the sender's event id), or a `timestamp_header` if the sender signs a timestamp");
                out.push(def.at_key(&format!("/triggers/{i}/webhook/auth/hmac_sha256"), d));
            }
            if let Some(own) = clashing_route(&w.path, &reserved) {
                let d = Diagnostic::error(
                    "reserved-path",
                    format!("`{}` is a route Herald answers itself ({own})", w.path),
                )
                .with_hint(
                    "give the webhook another path, or move Herald's own routes with `routes:` in herald.yaml (api, health, metrics)",
                );
                out.push(def.at_value(&pointer, d));
            }
            if let Some((first, first_ptr)) = routes.get(&key) {
                let d = Diagnostic::error(
                    "duplicate-webhook",
                    format!(
                        "another webhook already answers {} {}",
                        w.method.as_str(),
                        w.path
                    ),
                )
                .with_hint(format!(
                    "{} (workflow `{}`) declares it first; give one of them another path",
                    first
                        .at_value(first_ptr, Diagnostic::error("", ""))
                        .location(),
                    first.id
                ));
                out.push(def.at_value(&pointer, d));
            } else {
                routes.insert(key, (def, pointer));
            }
        }
    }
}

/// `/hooks/{tenant}/leads/` and `/hooks/{t}/leads` are the same route.
/// The first of Herald's own routes that a request could reach through either `path` or it:
/// each is tried as a pattern against the other with its parameters filled in.
fn clashing_route(path: &str, reserved: &[String]) -> Option<String> {
    let concrete = |p: &str| -> String {
        p.split('/')
            .map(|seg| {
                if seg.starts_with('{') && seg.ends_with('}') {
                    "x"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    };
    let path = normalize_route_text(path);
    let mut mine = matchit::Router::new();
    mine.insert(path.as_str(), ()).ok()?;
    reserved
        .iter()
        .find(|own| {
            let mut theirs = matchit::Router::new();
            theirs.insert(own.as_str(), ()).is_ok()
                && (mine.at(&concrete(own)).is_ok() || theirs.at(&concrete(&path)).is_ok())
        })
        .cloned()
}

/// `/a/b/` and `/a/b` are one path.
fn normalize_route_text(path: &str) -> String {
    if path.len() > 1 {
        path.trim_end_matches('/').to_owned()
    } else {
        path.to_owned()
    }
}

fn normalize_route(path: &str) -> String {
    let trimmed = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    trimmed
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                "{}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

type Locate<'a> = dyn Fn(&str, &str, Diagnostic) -> Diagnostic + 'a;

/// Checks the references in `strings` (from [`env::env_strings`]: each string holding `${env:`,
/// with its JSON pointer).
fn check_env_refs(
    strings: &[(String, String)],
    opts: &LoadOptions,
    out: &mut Vec<Diagnostic>,
    locate: &Locate,
) {
    for (pointer, s) in strings {
        for r in env::references(s) {
            match r {
                Err(bad) => {
                    let needle = &s[bad.start..bad.start + bad.len];
                    let d = Diagnostic::error(
                        "invalid-env-ref",
                        format!("`{needle}` is not a valid environment reference"),
                    )
                    .with_hint("names are letters, digits and `_`, such as ${env:SMTP_PASSWORD}");
                    out.push(locate(pointer, needle, d));
                }
                Ok(r) => {
                    if opts.env.get(&r.name).is_some() {
                        continue;
                    }
                    let needle = &s[r.start..r.start + r.len];
                    let message = format!("environment variable `{}` is not set", r.name);
                    let d = match opts.env_mode {
                        EnvMode::Validate => Diagnostic::warning("unset-env", message)
                            .with_hint("`herald serve` refuses to start until it is set"),
                        EnvMode::Serve => Diagnostic::error("unset-env", message).with_hint(
                            format!("set {} in the environment of `herald serve`", r.name),
                        ),
                    };
                    out.push(locate(pointer, needle, d));
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextKind {
    Template = 0,
    Expr = 1,
}

struct WorkflowCheck<'a> {
    /// The `ai:` providers in herald.yaml.
    ai: &'a [String],
    /// `contacts.attributes` in herald.yaml: the attributes `contact.attributes.X` may name
    /// (any, when none are declared).
    contact_attributes: &'a indexmap::IndexMap<String, super::model::config::AttributeType>,
    def: &'a Definition,
    wf: &'a Workflow,
    env: &'a Environment<'static>,
    globals: &'a HashSet<String>,
    channels: &'a [String],
    /// The channels whose provider is WhatsApp.
    whatsapp: &'a [String],
    /// Each channel's provider, when herald.yaml could be read.
    providers: &'a HashMap<String, &'static str>,
    /// Template files that exist but do not compile: already reported, not "missing".
    broken_templates: &'a [String],
    templates: &'a [String],
    /// Which filters, tests and functions exist, probed once per name.
    known: &'a crate::templates::inspect::Known,
    /// Where template files are shown from.
    template_dir: &'a std::path::Path,
    workflow_ids: &'a [&'a str],
    listened: &'a HashSet<&'a str>,
    step_ids: HashSet<String>,
    /// Each step's place in the order steps run: its pre-order index, the steps enclosing it,
    /// and whether a loop encloses it.
    order: HashMap<String, StepPlace>,
    /// The step whose texts are being checked.
    current: Option<String>,
    texts: &'a mut CompiledTexts,
    out: &'a mut Vec<Diagnostic>,
}

#[derive(Debug, Clone, Default)]
struct StepPlace {
    index: usize,
    ancestors: Vec<String>,
    in_loop: bool,
}

/// Every step's [`StepPlace`].
fn step_places(steps: &[Step]) -> HashMap<String, StepPlace> {
    fn walk(
        steps: &[Step],
        ancestors: &mut Vec<String>,
        in_loop: bool,
        out: &mut HashMap<String, StepPlace>,
    ) {
        for s in steps {
            let index = out.len();
            out.entry(s.id.clone()).or_insert(StepPlace {
                index,
                ancestors: ancestors.clone(),
                in_loop,
            });
            ancestors.push(s.id.clone());
            let looping = in_loop || matches!(s.action, Action::ForEach { .. });
            for (_, branch) in s.nested() {
                walk(branch, ancestors, looping, out);
            }
            ancestors.pop();
        }
    }
    let mut out = HashMap::new();
    walk(steps, &mut Vec::new(), false, &mut out);
    out
}

impl WorkflowCheck<'_> {
    fn error(&mut self, pointer: &str, d: Diagnostic) {
        let d = self.def.at_value(pointer, d);
        self.out.push(d);
    }

    fn run(&mut self) {
        // Step ids first: references anywhere may point at any step.
        let mut seen: HashMap<String, String> = HashMap::new();
        for s in self.wf.all_steps() {
            if let Some(first) = seen.get(&s.id) {
                let hint = format!(
                    "the step at {} has it too; step ids must be unique in a workflow",
                    self.def
                        .at_value(&format!("{first}/id"), Diagnostic::error("", ""))
                        .location()
                );
                let d =
                    Diagnostic::error("duplicate-step-id", format!("duplicate step id `{}`", s.id))
                        .with_hint(hint);
                self.error(&format!("{}/id", s.pointer), d);
            } else {
                seen.insert(s.id.clone(), s.pointer.clone());
            }
        }
        self.step_ids = seen.into_keys().collect();
        self.order = step_places(&self.wf.steps);

        let has_sync_webhook = self
            .wf
            .triggers
            .iter()
            .any(|t| matches!(t, Trigger::Webhook(w) if w.respond == RespondMode::Sync));

        // A campaign's triggers come from its `schedule`, checked when it was read.
        if self.def.as_campaign().is_none() {
            for (i, t) in self.wf.triggers.iter().enumerate() {
                let base = format!("/triggers/{i}/{}", t.key());
                self.check_trigger(t, &base);
            }
        }
        let wf = self.wf;
        // A conversation's steps also see the conversation and its slots.
        let roots: Vec<String> = if self.def.as_conversation().is_some() {
            self.check_conversation();
            conversation::ROOTS
                .iter()
                .map(|r| (*r).to_owned())
                .collect()
        } else {
            Vec::new()
        };
        self.check_steps(&wf.steps, &roots, has_sync_webhook);
    }

    fn check_trigger(&mut self, t: &Trigger, base: &str) {
        match t {
            Trigger::Cron(c) => {
                if let Err(e) = parse_schedule(&c.schedule) {
                    let pointer = format!("{base}/schedule");
                    let hint = "five fields: minute hour day-of-month month day-of-week, such as `0 7 * * MON-FRI`";
                    match bad_cron_field(&c.schedule) {
                        Some((offset, field, name, range)) => {
                            // Name the field at fault and point at it, rather than repeating
                            // the parser's generic "number out of bounds".
                            let d = Diagnostic::error(
                                "invalid-cron",
                                format!("invalid cron schedule: `{field}` is not a valid {name} ({range})"),
                            )
                            .with_hint(hint);
                            let whole = self.def.span_in_value(&pointer, &c.schedule);
                            let span = if whole.len == c.schedule.chars().count() {
                                whole.shifted(
                                    c.schedule[..offset].chars().count(),
                                    field.chars().count(),
                                )
                            } else {
                                whole
                            };
                            let d = self.def.file.locate(d, span);
                            self.out.push(d);
                        }
                        None => self.error(
                            &pointer,
                            Diagnostic::error("invalid-cron", e).with_hint(hint),
                        ),
                    }
                }
                if let Err(e) = parse_timezone(&c.timezone) {
                    let d = Diagnostic::error("invalid-timezone", e)
                        .with_hint("use an IANA name such as America/Denver, Europe/London or UTC");
                    self.error(&format!("{base}/timezone"), d);
                }
                if let Some(input) = &c.input {
                    self.check_json(input, &format!("{base}/input"), &[]);
                }
            }
            Trigger::Webhook(w) => {
                if let Some(k) = &w.idempotency_key {
                    self.check_text(
                        &format!("{base}/idempotency_key"),
                        k.as_str(),
                        TextKind::Template,
                        &[],
                    );
                }
                if let Some(WebhookAuth::StandardWebhooks(s)) = &w.auth
                    && env::references(&s.secret).is_empty()
                    && crate_b64_secret(&s.secret).is_err()
                {
                    let d = Diagnostic::error("invalid-secret", "this Standard Webhooks secret is not `whsec_` followed by base64")
                        .with_hint("copy the signing secret exactly as the sender shows it, or use ${env:NAME}");
                    self.error(&format!("{base}/auth/standard_webhooks/secret"), d);
                }
            }
            Trigger::Message(m) => {
                self.check_channel(&m.channel, &format!("{base}/channel"));
                if let Some(p) = &m.pattern
                    && let Err(e) = regex::Regex::new(p)
                {
                    let msg = e.to_string();
                    let last = msg.lines().last().unwrap_or(&msg).trim();
                    let last = last.strip_prefix("error: ").unwrap_or(last).to_owned();
                    self.error(
                        &format!("{base}/match"),
                        Diagnostic::error(
                            "invalid-regex",
                            format!("invalid regular expression: {last}"),
                        ),
                    );
                }
            }
            Trigger::Event(e) => {
                if let Some(f) = &e.filter {
                    self.check_text(&format!("{base}/filter"), f.as_str(), TextKind::Expr, &[]);
                }
            }
        }
    }

    fn check_channel(&mut self, channel: &str, pointer: &str) {
        if self.channels.iter().any(|c| c == channel) {
            return;
        }
        let mut d = Diagnostic::error(
            "unknown-channel",
            format!("channel `{channel}` is not defined in herald.yaml"),
        );
        d = match did_you_mean(channel, self.channels.iter().map(String::as_str)) {
            Some(s) => d.with_hint(format!("did you mean `{s}`?")),
            None => d.with_hint(format!(
                "defined channels: {}; add `{channel}` under `channels:` in herald.yaml",
                self.channels.join(", ")
            )),
        };
        self.error(pointer, d);
    }

    /// As [`Self::check_channel`], for a channel named by a mapping key.
    fn check_channel_key(&mut self, channel: &str, pointer: &str) {
        let before = self.out.len();
        self.check_channel(channel, pointer);
        if self.out.len() > before
            && let Some(d) = self.out.pop()
        {
            let d = self.def.at_key(pointer, d);
            self.out.push(d);
        }
    }

    fn check_steps(&mut self, steps: &[Step], scope: &[String], sync: bool) {
        let mut ended_by: Option<&Step> = None;
        let mut reported = false;
        for step in steps {
            if let Some(fail) = ended_by
                && !reported
            {
                // One report per list: the steps after it are unreachable for the same reason.
                reported = true;
                let what = if step.explicit_id {
                    format!("step `{}`", step.id)
                } else {
                    "this step".to_owned()
                };
                let cause = if fail.explicit_id {
                    format!("step `{}`", fail.id)
                } else {
                    "a step".to_owned()
                };
                let d = Diagnostic::error("unreachable-step", format!("{what} can never run")).with_hint(format!(
                    "{cause} before it always fails the run; remove this step or move it earlier"
                ));
                let d = self.def.at_key(&step.pointer, d);
                self.out.push(d);
            }
            self.check_step(step, scope, sync);
            if always_fails(step) && ended_by.is_none() {
                ended_by = Some(step);
            }
        }
        for step in steps {
            match &step.action {
                Action::ForEach {
                    as_, steps: body, ..
                } => {
                    let mut inner = scope.to_vec();
                    inner.push(as_.0.clone());
                    self.check_steps(body, &inner, sync);
                }
                other => {
                    for (_, branch) in other.branches() {
                        self.check_steps(branch, scope, sync);
                    }
                }
            }
            // A handler sees the failure as `error`.
            if let Some(handler) = &step.on_error {
                let mut inner = scope.to_vec();
                inner.push("error".to_owned());
                self.check_steps(handler, &inner, sync);
            }
        }
    }

    fn check_step(&mut self, step: &Step, scope: &[String], sync: bool) {
        self.current = Some(step.id.clone());
        let p = &step.pointer;
        match &step.action {
            Action::Set(vars) => {
                for (k, v) in vars {
                    self.check_json(v, &format!("{p}/set/{}", escape_token(&k.0)), scope);
                }
            }
            Action::If { condition, .. } => self.check_text(
                &format!("{p}/if"),
                condition.as_str(),
                TextKind::Expr,
                scope,
            ),
            Action::Switch { on, .. } => {
                self.check_text(&format!("{p}/switch"), on.as_str(), TextKind::Expr, scope)
            }
            Action::Send(s) => self.check_send(p, s, scope),
            Action::Wait(WaitStep::Until(u)) => self.check_text(
                &format!("{p}/wait/until"),
                u.until.as_str(),
                TextKind::Template,
                scope,
            ),
            Action::Wait(WaitStep::For(_)) => {}
            Action::WaitFor(w) => {
                if let Some(ch) = &w.reply {
                    self.check_channel(ch, &format!("{p}/wait_for/reply"));
                }
                self.check_text(
                    &format!("{p}/wait_for/key"),
                    w.key.as_str(),
                    TextKind::Template,
                    scope,
                );
            }
            Action::Http(h) => {
                let b = format!("{p}/http");
                self.check_text(
                    &format!("{b}/url"),
                    h.url.as_str(),
                    TextKind::Template,
                    scope,
                );
                self.check_headers(&b, &h.headers, scope);
                if let Some(j) = &h.json {
                    self.check_json(j, &format!("{b}/json"), scope);
                }
            }
            Action::Emit(e) => self.check_emit(p, e, scope),
            Action::Call(c) => self.check_call(p, c, scope),
            Action::ForEach { items, as_, .. } => {
                self.check_text(
                    &format!("{p}/for_each/items"),
                    items.as_str(),
                    TextKind::Expr,
                    scope,
                );
                if CONTEXT_ROOTS.contains(&as_.0.as_str()) {
                    let d = Diagnostic::error(
                        "shadowed-name",
                        format!("`{}` is already a name in every run", as_.0),
                    )
                    .with_hint("pick another loop variable name, such as `item`");
                    self.error(&format!("{p}/for_each/as"), d);
                }
            }
            Action::UpsertContact(u) => self.check_upsert(p, u, scope),
            Action::Respond(r) => self.check_respond(p, r, scope, sync),
            Action::Fail(t) => {
                self.check_text(&format!("{p}/fail"), t.as_str(), TextKind::Template, scope)
            }
            Action::Say(_)
            | Action::Ask(_)
            | Action::Classify(_)
            | Action::AiReply(_)
            | Action::Goto(_)
            | Action::End(_)
            | Action::Handoff(_) => self.check_conversation_step(step, scope),
            Action::Try { .. } => {
                if step.on_error.is_none() {
                    let d = Diagnostic::warning(
                        "try-without-handler",
                        "this `try` has no `on_error`, so it changes nothing",
                    )
                    .with_hint("add `on_error:` with the steps to run when a step inside fails, or `continue_on_error: true`");
                    let d = self.def.at_key(&format!("{p}/try"), d);
                    self.out.push(d);
                }
            }
        }
    }

    fn check_send(&mut self, p: &str, s: &SendStep, scope: &[String]) {
        let b = format!("{p}/send");
        self.check_channel(&s.channel, &format!("{b}/channel"));
        match &s.whatsapp_template {
            Some(t) => self.check_whatsapp_template(&b, &s.channel, t, scope),
            // An approved template is what the 24-hour window allows.
            None => self.check_whatsapp_window(&s.channel, &format!("{b}/channel")),
        }
        self.check_text(&format!("{b}/to"), s.to.as_str(), TextKind::Template, scope);
        // A name chosen at run time is a template itself, checked when the run gets there.
        if let Some(t) = &s.template
            && t.contains("{{")
        {
            self.check_text(&format!("{b}/template"), t, TextKind::Template, scope);
        } else if let Some(t) = &s.template
            && !self.templates.iter().any(|n| n == t)
            && !self.broken_templates.iter().any(|n| n == t)
        {
            let mut d =
                Diagnostic::error("unknown-template", format!("template `{t}` does not exist"));
            d = match did_you_mean(t, self.templates.iter().map(String::as_str)) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(
                    "template names are paths under templates/, such as emails/nudge.html.j2",
                ),
            };
            self.error(&format!("{b}/template"), d);
        } else if let Some(t) = &s.template {
            self.check_template_file(t, &format!("{b}/template"), scope);
        }
        self.check_optional_texts(
            &b,
            &[
                ("body", &s.body),
                ("subject", &s.subject),
                ("from", &s.from),
            ],
            scope,
        );
        self.check_headers(&b, &s.headers, scope);
    }

    /// WhatsApp delivers free-form text only within 24 hours of the person's last message.
    /// A workflow that neither starts on their message nor waits for their reply on the
    /// channel may well send outside that window, where Meta refuses it (131047).
    fn check_whatsapp_window(&mut self, channel: &str, pointer: &str) {
        if !self.whatsapp.iter().any(|c| c == channel) {
            return;
        }
        let starts_on_message = self
            .wf
            .triggers
            .iter()
            .any(|t| matches!(t, Trigger::Message(m) if m.channel == channel));
        let waits_for_reply = self.wf.all_steps().iter().any(
            |s| matches!(&s.action, Action::WaitFor(w) if w.reply.as_deref() == Some(channel)),
        );
        if starts_on_message || waits_for_reply {
            return;
        }
        let d = Diagnostic::warning(
            "whatsapp-window",
            format!(
                "WhatsApp delivers free-form text only within 24 hours of the person's last message, and this workflow neither starts on a message from `{channel}` nor waits for a reply on it; outside that window Meta refuses the send (131047) and it fails"
            ),
        )
        .with_hint(format!(
            "send an approved template (`whatsapp_template:` instead of `body` or `template`), start the workflow with `message: {{ channel: {channel} }}`, or send after `wait_for: {{ reply: {channel} }}`"
        ));
        self.error(pointer, d);
    }

    /// `whatsapp_template`: only a WhatsApp channel sends one, and a name, language code or
    /// variable name Meta could not have approved is wrong before anything is sent.
    fn check_whatsapp_template(
        &mut self,
        b: &str,
        channel: &str,
        t: &WhatsappTemplate,
        scope: &[String],
    ) {
        let base = format!("{b}/whatsapp_template");
        if let Some(provider) = self.providers.get(channel)
            && *provider != "whatsapp"
        {
            let mut hint = "send `body` or `template` on this channel".to_owned();
            if let Some(wa) = self.whatsapp.first() {
                hint.push_str(&format!(", or the template on `{wa}`"));
            }
            let d = Diagnostic::error(
                "template-needs-whatsapp",
                format!(
                    "`whatsapp_template` sends a template approved in WhatsApp Manager, but channel `{channel}` is a {provider} channel"
                ),
            )
            .with_hint(hint);
            let d = self.def.at_key(&base, d);
            self.out.push(d);
        }
        let literal = |text: &str| !text.contains("{{") && !text.contains("{%");
        let name = t.name.as_str();
        if !literal(name) {
            self.check_text(&format!("{base}/name"), name, TextKind::Template, scope);
        } else if !WhatsappTemplate::is_name(name) {
            let d = Diagnostic::error(
                "invalid-template-name",
                format!("`{name}` is not a WhatsApp template name"),
            )
            .with_hint(
                "template names are lower-case letters, digits and underscores, exactly as approved in WhatsApp Manager, such as `application_reminder`",
            );
            self.error(&format!("{base}/name"), d);
        }
        let language = t.language.as_str();
        if !literal(language) {
            self.check_text(
                &format!("{base}/language"),
                language,
                TextKind::Template,
                scope,
            );
        } else if !WhatsappTemplate::is_language_code(language) {
            let d = Diagnostic::error(
                "invalid-language-code",
                format!("`{language}` is not a WhatsApp language code"),
            )
            .with_hint(
                "give the code of a language the template is approved in, such as `en_US`, `en`, `es_MX` or `pt_BR` (the language in lower case, then `_` and the region in upper case)",
            );
            self.error(&format!("{base}/language"), d);
        }
        for (part, params) in [("header", &t.header), ("body", &t.body)] {
            let Some(params) = params else {
                continue;
            };
            let entries = params.entries();
            if part == "header" && entries.len() > 1 {
                let d = Diagnostic::error(
                    "template-header-values",
                    format!(
                        "a WhatsApp template's header has at most one variable, and {} values are given",
                        entries.len()
                    ),
                )
                .with_hint("give the header's one value; the others belong in `body`");
                self.error(&format!("{base}/header"), d);
            }
            for (i, (key, value)) in entries.into_iter().enumerate() {
                let at = match key {
                    Some(k) => format!("{base}/{part}/{}", escape_token(k)),
                    None => format!("{base}/{part}/{i}"),
                };
                if let Some(k) = key
                    && !WhatsappTemplate::is_variable_name(k)
                {
                    let d = Diagnostic::error(
                        "invalid-variable-name",
                        format!("`{k}` is not a WhatsApp template variable name"),
                    )
                    .with_hint(
                        "named variables are lower-case letters, digits and underscores, as in the approved text's {{first_name}}; for {{1}}, {{2}} give a list instead",
                    );
                    let d = self.def.at_key(&at, d);
                    self.out.push(d);
                }
                self.check_text(&at, value.as_str(), TextKind::Template, scope);
            }
        }
        let mut indexes: HashMap<u8, usize> = HashMap::new();
        for (i, button) in t.buttons.iter().enumerate() {
            let at = format!("{base}/buttons/{i}");
            let index = button.index.unwrap_or(u8::try_from(i).unwrap_or(u8::MAX));
            if let Some(first) = indexes.insert(index, i) {
                let d = Diagnostic::error(
                    "duplicate-button",
                    format!("entries {first} and {i} of `buttons` both give button {index} a value"),
                )
                .with_hint(
                    "each entry is one button of the approved template; set `index` (from 0, in the template's order) when only some buttons have values",
                );
                self.error(&at, d);
            }
            for (field, value) in [("url", &button.url), ("payload", &button.payload)] {
                if let Some(v) = value {
                    self.check_text(
                        &format!("{at}/{field}"),
                        v.as_str(),
                        TextKind::Template,
                        scope,
                    );
                }
            }
        }
    }

    fn check_emit(&mut self, p: &str, e: &EmitStep, scope: &[String]) {
        let b = format!("{p}/emit");
        if let Some(k) = &e.key {
            self.check_text(&format!("{b}/key"), k.as_str(), TextKind::Template, scope);
        }
        if let Some(data) = &e.data {
            self.check_json(data, &format!("{b}/data"), scope);
        }
        if !self.listened.contains(e.event.as_str()) {
            let d = Diagnostic::warning(
                "unused-event",
                format!("no workflow listens for event `{}`", e.event),
            );
            let d = match did_you_mean(&e.event, self.listened.iter().copied()) {
                Some(s) => {
                    d.with_hint(format!("did you mean `{s}`, which a workflow listens for?"))
                }
                None => d.with_hint(
                    "add a workflow with `triggers: [{event: {name: ...}}]`, or a `wait_for` on it",
                ),
            };
            self.error(&format!("{b}/event"), d);
        }
    }

    fn check_call(&mut self, p: &str, c: &CallStep, scope: &[String]) {
        if !self.workflow_ids.contains(&c.workflow.as_str()) {
            let mut d = Diagnostic::error(
                "unknown-workflow",
                format!("workflow `{}` is not defined", c.workflow),
            );
            d = match did_you_mean(&c.workflow, self.workflow_ids.iter().copied()) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => {
                    let mut ids = self.workflow_ids.to_vec();
                    ids.sort_unstable();
                    d.with_hint(format!(
                        "`call` takes the id of a workflow in this project: {}",
                        ids.join(", ")
                    ))
                }
            };
            self.error(&format!("{p}/call/workflow"), d);
        }
        if let Some(i) = &c.input {
            self.check_json(i, &format!("{p}/call/input"), scope);
        }
    }

    fn check_upsert(&mut self, p: &str, u: &UpsertContactStep, scope: &[String]) {
        let b = format!("{p}/upsert_contact");
        self.check_optional_texts(
            &b,
            &[
                ("email", &u.email),
                ("phone", &u.phone),
                ("first_name", &u.first_name),
                ("last_name", &u.last_name),
                ("status", &u.status),
                ("timezone", &u.timezone),
            ],
            scope,
        );
        for (k, v) in &u.attributes {
            self.check_json(v, &format!("{b}/attributes/{}", escape_token(k)), scope);
        }
        for (channel, address) in &u.addresses {
            let at = format!("{b}/addresses/{}", escape_token(channel));
            self.check_channel_key(channel, &at);
            self.check_text(&at, address.as_str(), TextKind::Template, scope);
        }
        for (i, channel) in u.unlink.iter().enumerate() {
            self.check_channel(channel, &format!("{b}/unlink/{i}"));
        }
    }

    fn check_respond(&mut self, p: &str, r: &RespondStep, scope: &[String], sync: bool) {
        let b = format!("{p}/respond");
        if let super::model::step::ResponseStatus::Template(t) = &r.status {
            if t.as_str().contains("{{") {
                self.check_text(
                    &format!("{b}/status"),
                    t.as_str(),
                    TextKind::Template,
                    scope,
                );
            } else {
                let d = Diagnostic::error(
                    "invalid-status",
                    format!("`{}` is not an HTTP status", t.as_str()),
                )
                .with_hint("write a number from 100 to 599, or a template that gives one");
                self.error(&format!("{b}/status"), d);
            }
        }
        if !sync {
            let d = Diagnostic::warning(
                "respond-without-sync",
                "`respond` has no effect in this workflow",
            )
            .with_hint("only a webhook trigger with `respond: sync` waits for a reply");
            let d = self.def.at_key(&b, d);
            self.out.push(d);
        }
        self.check_headers(&b, &r.headers, scope);
        if let Some(body) = &r.body {
            self.check_json(body, &format!("{b}/body"), scope);
        }
    }

    /// Header values are templates.
    fn check_headers(
        &mut self,
        base: &str,
        headers: &IndexMap<String, Template>,
        scope: &[String],
    ) {
        for (k, v) in headers {
            let pointer = format!("{base}/headers/{}", escape_token(k));
            self.check_text(&pointer, v.as_str(), TextKind::Template, scope);
        }
    }

    /// Optional fields that are templates, by name.
    fn check_optional_texts(
        &mut self,
        base: &str,
        fields: &[(&str, &Option<Template>)],
        scope: &[String],
    ) {
        for (field, value) in fields {
            if let Some(v) = value {
                self.check_text(
                    &format!("{base}/{field}"),
                    v.as_str(),
                    TextKind::Template,
                    scope,
                );
            }
        }
    }

    fn check_json(&mut self, value: &Value, pointer: &str, scope: &[String]) {
        match value {
            Value::String(s) => self.check_text(pointer, s, TextKind::Template, scope),
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.check_json(v, &format!("{pointer}/{i}"), scope);
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    self.check_json(v, &format!("{pointer}/{}", escape_token(k)), scope);
                }
            }
            _ => {}
        }
    }

    /// The variables a template file uses, against what this `send` gives it: reported at the
    /// template's own line, naming the send, since a template shared by sends with different
    /// loop variables may be fine for one and not another.
    fn check_template_file(&mut self, name: &str, pointer: &str, scope: &[String]) {
        let Ok(tmpl) = self.env.get_template(name) else {
            return;
        };
        let mut roots: Vec<String> = tmpl.undeclared_variables(false).into_iter().collect();
        roots.sort();
        let source = tmpl.source().to_owned();
        let send_at = self
            .def
            .at_value(pointer, Diagnostic::error("", ""))
            .location();
        for root in roots {
            if CONTEXT_ROOTS.contains(&root.as_str())
                || scope.contains(&root)
                || self.globals.contains(&root)
                || root == "__now"
            {
                continue;
            }
            let mut available: Vec<&str> = CONTEXT_ROOTS.to_vec();
            available.extend(scope.iter().map(String::as_str));
            let mut d = Diagnostic::error(
                "unknown-variable",
                format!(
                    "unknown variable `{root}` in template `{name}`, used by the send at {send_at}"
                ),
            );
            d = match did_you_mean(&root, available.iter().copied()) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!("available to this send: {}", available.join(", "))),
            };
            let file =
                super::source::SourceFile::new(self.template_dir.join(name), source.as_str());
            let (line, column) = word_position(&source, &root).unwrap_or((1, 1));
            let d = file.locate(
                d,
                super::diagnostics::Span::new(line, column, root.chars().count()),
            );
            self.out.push(d);
        }
    }

    /// Whether `steps.<id>` read by the current step is read before step `id` runs: `None` if
    /// not, `Some(false)` if it cannot have run (an error), `Some(true)` if only a previous loop
    /// item's run can have set it (a warning). An enclosing step has run (an `if` records its
    /// branch, a failed step's handler sees its error).
    fn forward_reference(&self, id: &str) -> Option<bool> {
        let current = self.current.as_ref()?;
        let here = self.order.get(current)?;
        let there = self.order.get(id)?;
        if here.ancestors.iter().any(|a| a == id) || there.index < here.index {
            return None;
        }
        // Both in one loop's body: the later step ran for the previous item.
        let shared_loop = here.in_loop
            && there.in_loop
            && here.ancestors.iter().any(|a| {
                there.ancestors.contains(a)
                    && self
                        .wf
                        .all_steps()
                        .iter()
                        .any(|s| s.id == *a && matches!(s.action, Action::ForEach { .. }))
            });
        Some(shared_loop)
    }

    /// Why a variable path (`contact.frist_name`, `contact.attributes.lon_amount`, `event` in a
    /// broadcast) can never have a value in this definition's runs, if it cannot.
    fn unsupplied(&self, path: &str) -> Option<Diagnostic> {
        use crate::engine::contact::{FIELDS, STORED_FIELDS};
        let contact_fields = || FIELDS.iter().chain(STORED_FIELDS).copied();
        const MAP_METHODS: &[&str] = &["get", "items", "keys", "values"];
        let mut parts = path.split('.');
        let root = parts.next()?;
        if root == "contact" {
            let field = parts.next()?;
            if !contact_fields().any(|f| f == field) && !MAP_METHODS.contains(&field) {
                let d = Diagnostic::error(
                    "unknown-contact-field",
                    format!("contacts have no field `{field}`"),
                );
                let hint = match did_you_mean(field, contact_fields()) {
                    Some(s) => format!("did you mean `contact.{s}`?"),
                    None => format!(
                        "a contact has {}; your own fields are under `contact.attributes`",
                        contact_fields().collect::<Vec<_>>().join(", ")
                    ),
                };
                return Some(d.with_hint(hint));
            }
            let name = parts.next()?;
            if field == "attributes"
                && !self.contact_attributes.is_empty()
                && !self.contact_attributes.contains_key(name)
                && !MAP_METHODS.contains(&name)
            {
                let d = Diagnostic::error(
                    "unknown-attribute",
                    format!(
                        "contacts have no attribute `{name}`: contacts.attributes in herald.yaml does not declare it"
                    ),
                );
                let hint = match did_you_mean(
                    name,
                    self.contact_attributes.keys().map(String::as_str),
                ) {
                    Some(s) => format!("did you mean `contact.attributes.{s}`?"),
                    None => format!(
                        "declare it under contacts.attributes in herald.yaml, such as `{name}: text`"
                    ),
                };
                return Some(d.with_hint(hint));
            }
            return None;
        }
        // A broadcast's or recurring campaign's recipients start from no request, message or
        // event: only a drip's have an `event`.
        const TRIGGERED: &[&str] = &["body", "headers", "query", "params", "event", "message"];
        if TRIGGERED.contains(&root) && self.def.as_campaign().is_some_and(|c| c.enrolls_itself()) {
            let d = Diagnostic::error(
                "unsupplied-variable",
                format!("`{root}` has no value here: a campaign that enrolls at its own times starts its recipients from no {}", if root == "event" { "event" } else if root == "message" { "message" } else { "request" }),
            )
            .with_hint("use `contact` (the recipient) and `input.occurrence`; only a drip (`schedule.enrol`) has an `event`");
            return Some(d);
        }
        None
    }

    fn check_text(&mut self, pointer: &str, text: &str, kind: TextKind, scope: &[String]) {
        let (expr, what) = match kind {
            TextKind::Expr => (Some(text), "expression"),
            TextKind::Template => (sole_expression(text), "template"),
        };
        if kind == TextKind::Template
            && expr.is_none()
            && !text.contains("{{")
            && !text.contains("{%")
            && !text.contains("{#")
        {
            return;
        }
        // Names called as functions: an unknown one is reported as a function, not a variable.
        let called: HashSet<String>;
        let vars = match self.texts.get(self.env, kind, text, expr) {
            Compiled::Vars { vars, refs } => {
                called = refs
                    .iter()
                    .filter(|r| r.kind == crate::templates::inspect::Kind::Function)
                    .map(|r| r.name.clone())
                    .collect();
                for (_, _, call, why) in crate::templates::inspect::failing_calls(self.env, text) {
                    let d = crate::templates::failing_call(&call, &why);
                    let span = self.def.span_in_value(pointer, &call);
                    let d = self.def.file.locate(d, span);
                    self.out.push(d);
                }
                for r in refs.iter() {
                    if let Some(d) = crate::templates::unknown_reference(
                        self.env,
                        self.known,
                        r,
                        self.templates,
                        self.broken_templates,
                    ) {
                        let span = self.def.span_in_value(pointer, &r.name);
                        let d = self.def.file.locate(d, span);
                        self.out.push(d);
                    }
                }
                vars
            }
            Compiled::Invalid { message, range } => {
                self.syntax_error(pointer, text, expr.unwrap_or(text), &message, range, what);
                return;
            }
        };
        let mut reported = HashSet::new();
        for v in vars.iter() {
            let mut parts = v.split('.');
            let root = parts.next().unwrap_or_default();
            if CONTEXT_ROOTS.contains(&root)
                || scope.iter().any(|s| s == root)
                || self.globals.contains(root)
            {
                if !scope.iter().any(|s| s == root)
                    && let Some(d) = self.unsupplied(v)
                {
                    if reported.insert(v.clone()) {
                        let span = self.def.span_in_value(pointer, v);
                        let d = self.def.file.locate(d, span);
                        self.out.push(d);
                    }
                    continue;
                }
                if root == "steps"
                    && let Some(id) = parts.clone().next()
                    && self.step_ids.contains(id)
                    && let Some(warning) = self.forward_reference(id)
                    && reported.insert(format!("steps.{id}"))
                {
                    let d = if warning {
                        Diagnostic::warning(
                            "forward-reference",
                            format!("step `{id}` runs after this one; in a loop its output is the previous item's"),
                        )
                        .with_hint("on the first item it does not exist yet: guard it with `steps.X is defined`, or move the step earlier")
                    } else {
                        Diagnostic::error(
                            "forward-reference",
                            format!("step `{id}` has not run yet when this one runs, so its output does not exist"),
                        )
                        .with_hint(format!("move step `{id}` before this one, or use its output after it"))
                    };
                    let span = self.def.span_in_value(pointer, &format!("steps.{id}"));
                    let d = self.def.file.locate(d, span);
                    self.out.push(d);
                    continue;
                }
                if root == "steps"
                    && let Some(id) = parts.next()
                    && !self.step_ids.contains(id)
                    && reported.insert(format!("steps.{id}"))
                {
                    let mut d = Diagnostic::error(
                        "unknown-step",
                        format!("there is no step `{id}` in this workflow"),
                    );
                    let mut ids: Vec<&str> = self
                        .step_ids
                        .iter()
                        .map(String::as_str)
                        .filter(|s| !s.starts_with('_'))
                        .collect();
                    ids.sort();
                    d = match did_you_mean(id, ids.iter().copied()) {
                        Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                        None if ids.is_empty() => d.with_hint("give the step you mean an `id`"),
                        None => {
                            d.with_hint(format!("step ids in this workflow: {}", ids.join(", ")))
                        }
                    };
                    let span = self.def.span_in_value(pointer, &format!("steps.{id}"));
                    let d = self.def.file.locate(d, span);
                    self.out.push(d);
                }
                continue;
            }
            if called.contains(root) || !reported.insert(root.to_owned()) {
                continue;
            }
            let mut available: Vec<&str> = CONTEXT_ROOTS.to_vec();
            available.extend(scope.iter().map(String::as_str));
            let mut d = Diagnostic::error(
                "unknown-variable",
                format!("unknown variable `{root}` in {what}"),
            );
            d = match did_you_mean(root, available.iter().copied()) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!("available here: {}", available.join(", "))),
            };
            let span = self.def.span_in_value(pointer, root);
            let d = self.def.file.locate(d, span);
            self.out.push(d);
        }
    }

    fn syntax_error(
        &mut self,
        pointer: &str,
        text: &str,
        compiled: &str,
        message: &str,
        range: Option<Range<usize>>,
        what: &str,
    ) {
        let mut d = Diagnostic::error("invalid-expression", format!("invalid {what}: {message}"));
        // `a = b` is the commonest slip in a condition: say what was meant.
        if let Some(r) = range.clone()
            && compiled
                .get(r.start..)
                .is_some_and(|rest| rest.starts_with('=') && !rest.starts_with("=="))
        {
            d = d.with_hint("to compare two values, use `==`");
        }
        // Point inside the value at minijinja's own range when it can be found on the line.
        let offset = text.find(compiled).unwrap_or(0);
        let span = match range {
            Some(r) if r.start < compiled.len() => {
                let snippet = &text[..offset + r.start];
                let base = self.def.span_in_value(pointer, text);
                if base.len == text.chars().count() {
                    base.shifted(
                        snippet.chars().count(),
                        compiled[r.start..r.end.min(compiled.len())]
                            .chars()
                            .count()
                            .max(1),
                    )
                } else {
                    self.def.doc.index.value(pointer)
                }
            }
            _ => self.def.doc.index.value(pointer),
        };
        let d = self.def.file.locate(d, span);
        self.out.push(d);
    }
}

/// For a 5-field schedule the parser rejects, the first field that is wrong on its own: its
/// byte offset, its text, its name and its valid range.
fn bad_cron_field(schedule: &str) -> Option<(usize, &str, &'static str, &'static str)> {
    const FIELDS: [(&str, &str); 5] = [
        ("minute", "0-59"),
        ("hour", "0-23"),
        ("day of the month", "1-31"),
        ("month", "1-12 or JAN-DEC"),
        ("day of the week", "0-7 or SUN-SAT"),
    ];
    let tokens: Vec<(usize, &str)> = schedule
        .split_whitespace()
        .map(|t| (t.as_ptr() as usize - schedule.as_ptr() as usize, t))
        .collect();
    if tokens.len() != FIELDS.len() {
        return None;
    }
    tokens.iter().enumerate().find_map(|(i, &(offset, token))| {
        let probe: Vec<&str> = (0..FIELDS.len())
            .map(|j| if j == i { token } else { "*" })
            .collect();
        parse_schedule(&probe.join(" ")).is_err().then_some((
            offset,
            token,
            FIELDS[i].0,
            FIELDS[i].1,
        ))
    })
}

/// Whether a step always ends the run as failed.
/// The line and column of the first use of `word` as a whole word inside a template tag.
fn word_position(source: &str, word: &str) -> Option<(usize, usize)> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut in_tag = false;
    let bytes: Vec<(usize, char)> = source.char_indices().collect();
    for (i, &(at, c)) in bytes.iter().enumerate() {
        if c == '{' && matches!(bytes.get(i + 1), Some((_, '{' | '%'))) {
            in_tag = true;
        } else if (c == '}' || c == '%') && matches!(bytes.get(i + 1), Some((_, '}'))) {
            in_tag = false;
        }
        if in_tag
            && source[at..].starts_with(word)
            && !source[..at].chars().next_back().is_some_and(is_word)
            && !source[at + word.len()..]
                .chars()
                .next()
                .is_some_and(is_word)
        {
            let before = &source[..at];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return Some((line, column));
        }
    }
    None
}

/// A `call` of a workflow from a step, and whether a branch guards it.
struct CallEdge<'a> {
    def: &'a Definition,
    target: String,
    pointer: String,
    guarded: bool,
}

/// Workflows that call each other in a circle recurse at run time until something gives.
/// A cycle whose every call is unconditional is an error at each call; one with a call behind
/// a condition (an `if`, `switch`, loop or handler) may end, and is a warning.
fn check_call_cycles(defs: &[Arc<Definition>], out: &mut Vec<Diagnostic>) {
    fn walk<'a>(def: &'a Definition, steps: &[Step], guarded: bool, edges: &mut Vec<CallEdge<'a>>) {
        for step in steps {
            if let Action::Call(c) = &step.action {
                edges.push(CallEdge {
                    def,
                    target: c.workflow.clone(),
                    pointer: format!("{}/call/workflow", step.pointer),
                    guarded,
                });
            }
            // A `try` body runs whenever the `try` does; every other nested list is a branch.
            for (key, branch) in step.nested() {
                walk(def, branch, guarded || key != "try", edges);
            }
        }
    }
    let mut edges: Vec<CallEdge> = Vec::new();
    for def in defs {
        if let Some(wf) = def.as_workflow() {
            walk(def, &wf.steps, false, &mut edges);
        }
    }
    let from: HashMap<&str, Vec<usize>> =
        edges
            .iter()
            .enumerate()
            .fold(HashMap::new(), |mut m, (i, e)| {
                m.entry(e.def.id.as_str()).or_default().push(i);
                m
            });
    // Each cycle once: found from its smallest workflow id, through edges in file order.
    let mut reported: HashSet<Vec<usize>> = HashSet::new();
    let mut starts: Vec<&str> = from.keys().copied().collect();
    starts.sort_unstable();
    for start in starts {
        let mut path: Vec<usize> = Vec::new();
        let first = from.get(start).cloned().unwrap_or_default();
        let mut frontier: Vec<Vec<usize>> = vec![first];
        while let Some(choices) = frontier.last_mut() {
            let Some(edge) = choices.pop() else {
                frontier.pop();
                path.pop();
                continue;
            };
            let target = edges[edge].target.as_str();
            if target == start {
                let mut cycle = path.clone();
                cycle.push(edge);
                let mut key = cycle.clone();
                key.sort_unstable();
                if reported.insert(key) {
                    report_cycle(&edges, &cycle, out);
                }
                continue;
            }
            // Only through workflows greater than the start, and not twice in one path.
            if target < start || path.iter().any(|&e| edges[e].def.id == target) {
                continue;
            }
            path.push(edge);
            frontier.push(from.get(target).cloned().unwrap_or_default());
        }
    }
}

fn report_cycle(edges: &[CallEdge], cycle: &[usize], out: &mut Vec<Diagnostic>) {
    let names: Vec<&str> = cycle
        .iter()
        .map(|&e| edges[e].def.id.as_str())
        .chain(std::iter::once(edges[cycle[0]].def.id.as_str()))
        .collect();
    let chain = names.join("` → `");
    let what = if cycle.len() == 1 {
        format!("workflow `{}` calls itself", names[0])
    } else {
        format!("these workflows call each other in a circle: `{chain}`")
    };
    let guarded = cycle.iter().any(|&e| edges[e].guarded);
    let locations: Vec<String> = cycle
        .iter()
        .map(|&e| {
            edges[e]
                .def
                .at_value(&edges[e].pointer, Diagnostic::error("", ""))
                .location()
        })
        .collect();
    for &e in cycle {
        let edge = &edges[e];
        let d = if guarded {
            Diagnostic::warning("call-cycle", what.clone()).with_hint(format!(
                "a condition guards it, so it may end; make sure it does (the calls: {})",
                locations.join(", ")
            ))
        } else {
            Diagnostic::error("call-cycle", format!("{what}, with nothing to stop it"))
            .with_hint(format!(
                "every run would start another until something gives; put one of the calls behind an `if` (the calls: {})",
                locations.join(", ")
            ))
        };
        out.push(edge.def.at_value(&edge.pointer, d));
    }
}

fn always_fails(step: &Step) -> bool {
    let list_fails = |steps: &[Step]| steps.iter().any(always_fails);
    if step.on_error.is_some() {
        // Its handler catches the failure and the run carries on after it.
        return false;
    }
    match &step.action {
        Action::Fail(_) => true,
        Action::Try { steps } => list_fails(steps),
        Action::If { then, else_, .. } => list_fails(then) && list_fails(else_),
        Action::Switch { cases, default, .. } => {
            cases.values().all(|c| list_fails(c)) && list_fails(default)
        }
        _ => false,
    }
}

fn crate_b64_secret(secret: &str) -> Result<Vec<u8>, ()> {
    use base64::Engine as _;
    let raw = secret.strip_prefix("whsec_").unwrap_or(secret);
    base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map_err(|_| ())
}
