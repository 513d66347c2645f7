//! `kind: test` files: read, schema-checked and checked against the project they test, with
//! every problem at its `file:line:col`. `herald validate` reports them with the rest of the
//! project; `herald test` refuses to run a file that has errors.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::diagnostics::Diagnostic;
use super::model::step::Action;
use super::model::test::{
    Expect, Given, MessageMatch, TestDef, TestTrigger, TextMatch, TimelineEntry,
};
use super::model::trigger::Trigger;
use super::project::{Project, definition_files, display_path};
use super::schema::{SchemaKind, Schemas};
use super::source::{self, Parsed, SourceFile};
use super::suggest::did_you_mean;
use super::{Workflow, deserialize};

/// When a case starts unless it says otherwise: a fixed Monday morning, so a test's outcome
/// never depends on the day it runs.
pub const DEFAULT_START: &str = "2026-01-05T09:00:00Z";

/// One test file, valid.
#[derive(Debug, Clone)]
pub struct TestFile {
    /// Where the file is on disk (golden files are relative to it).
    pub path: PathBuf,
    pub file: SourceFile,
    pub doc: Parsed,
    pub def: TestDef,
}

impl TestFile {
    /// `file:line:col` of the value at `pointer`.
    pub fn position(&self, pointer: &str) -> String {
        let span = self.doc.index.value(pointer);
        format!(
            "{}:{}:{}",
            super::diagnostics::display_path(&self.file.path),
            span.line,
            span.column
        )
    }

    /// A diagnostic at the value of `pointer`.
    pub fn at(&self, pointer: &str, d: Diagnostic) -> Diagnostic {
        self.file.locate(d, self.doc.index.value(pointer))
    }
}

/// Reads every test file under the project's tests folder (or only those under `only`, a
/// file or folder), and checks them against `project`. Files with errors are left out of the
/// list; their diagnostics say why.
pub fn load_tests(
    project: &Project,
    display_base: &Path,
    only: Option<&Path>,
) -> (Vec<TestFile>, Vec<Diagnostic>) {
    let mut files = match only {
        Some(p) if p.is_file() => vec![p.to_path_buf()],
        Some(p) => definition_files(p),
        None => definition_files(&project.layout.tests_dir),
    };
    files.sort();
    let mut out = Vec::new();
    let mut diags = Vec::new();
    for path in files {
        let display = display_path(&path, display_base);
        let file = match SourceFile::read(&path, display.clone()) {
            Ok(f) => f,
            Err(e) => {
                diags.push(
                    Diagnostic::error("io", format!("cannot read the file: {e}")).in_file(display),
                );
                continue;
            }
        };
        match read_test(path, file) {
            Ok(t) => {
                let before = diags.len();
                check(&t, project, &mut diags);
                if diags[before..].iter().all(|d| !d.is_error()) {
                    out.push(t);
                }
            }
            Err(ds) => diags.extend(ds),
        }
    }
    (out, diags)
}

fn read_test(path: PathBuf, file: SourceFile) -> Result<TestFile, Vec<Diagnostic>> {
    let doc = source::parse(&file)?;
    match doc.value.get("kind") {
        Some(Value::String(k)) if k == "test" => {}
        Some(Value::String(k)) => {
            let d = Diagnostic::error(
                "not-a-test",
                format!("a file in the tests folder is a `kind: test` file, not `kind: {k}`"),
            )
            .with_hint(
                "move definitions to the workflows folder, or set `paths.tests` in herald.yaml",
            );
            return Err(vec![file.locate(d, doc.index.value("/kind"))]);
        }
        _ => {
            let d = Diagnostic::error("missing-field", "missing required field `kind`")
                .with_hint("a test file starts with `kind: test`");
            return Err(vec![file.locate(d, doc.index.value(""))]);
        }
    }
    let errors = Schemas::get().validate(SchemaKind::Test, &file, &doc);
    if !errors.is_empty() {
        return Err(errors);
    }
    let def: TestDef = deserialize(&file, &doc)?;
    Ok(TestFile {
        path,
        file,
        doc,
        def,
    })
}

/// Reads a time as a case gives it: RFC 3339, or a local date and time in `tz`.
pub fn parse_time(text: &str, tz: Option<&str>) -> Result<i64, String> {
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    let civil: jiff::civil::DateTime = text.parse().map_err(|_| {
        format!(
            "`{text}` is not a time: write 2026-03-09T14:00:00Z, or a local 2026-03-09T07:00 with `timezone`"
        )
    })?;
    let tz = match tz {
        Some(name) => jiff::tz::TimeZone::get(name)
            .map_err(|_| format!("`{name}` is not an IANA time zone"))?,
        None => jiff::tz::TimeZone::UTC,
    };
    civil
        .to_zoned(tz)
        .map(|z| z.timestamp().as_millisecond())
        .map_err(|e| format!("`{text}`: {e}"))
}

struct Checker<'a> {
    test: &'a TestFile,
    project: &'a Project,
    channels: Vec<String>,
    out: &'a mut Vec<Diagnostic>,
}

fn check(test: &TestFile, project: &Project, out: &mut Vec<Diagnostic>) {
    let mut channels: Vec<String> = project.config.def.channels.keys().cloned().collect();
    if !channels.iter().any(|c| c == "log") {
        channels.push("log".into());
    }
    let mut c = Checker {
        test,
        project,
        channels,
        out,
    };
    c.given(&test.def.given, "/given");
    let mut names = std::collections::HashMap::new();
    for (i, case) in test.def.cases.iter().enumerate() {
        let base = format!("/cases/{i}");
        if let Some(first) = names.insert(case.name.as_str(), i) {
            c.error(
                &format!("{base}/name"),
                Diagnostic::error(
                    "duplicate-case",
                    format!(
                        "two cases are named `{}` (the first is case {})",
                        case.name,
                        first + 1
                    ),
                )
                .with_hint("give each case its own name, so a failure says which one failed"),
            );
        }
        let alert = c.alert_target(case.target.as_deref());
        let workflow = match alert {
            Some(_) => None,
            None => c.target(case.target.as_deref(), &base),
        };
        c.given(&case.given, &format!("{base}/given"));
        let tz = case
            .given
            .timezone
            .as_deref()
            .or(test.def.given.timezone.as_deref());
        // A broadcast or recurring campaign enrolls by itself as the clock reaches its times.
        let enrolls_itself = workflow.is_some_and(|w| {
            c.project.definitions.iter().any(|d| {
                d.as_campaign()
                    .is_some_and(|cp| std::ptr::eq(&cp.workflow, w) && cp.enrolls_itself())
            })
        });
        match (&case.trigger, alert) {
            (Some(t), None) => c.trigger(t, workflow, tz, &format!("{base}/trigger")),
            (None, None) if enrolls_itself => {}
            (None, None) => c.error(
                &format!("{base}/name"),
                Diagnostic::error("missing-field", "this case has no `trigger`: nothing starts the run under test")
                    .with_hint("add `trigger:` with one of webhook, cron, event, message or call"),
            ),
            (Some(_), Some(a)) => c.error(
                &format!("{base}/trigger"),
                Diagnostic::error(
                    "no-such-trigger",
                    format!("alert `{}` has no trigger: it reads events", a.id()),
                )
                .with_hint("remove `trigger:`; put the alert's events in the `timeline`, with `after:` between them"),
            ),
            (None, Some(_)) => {}
        }
        let expects = case
            .timeline
            .iter()
            .enumerate()
            .filter_map(|(j, e)| match e {
                TimelineEntry::Expect(x) => Some((format!("{base}/timeline/{j}/expect"), &**x)),
                _ => None,
            })
            .chain(case.expect.iter().map(|x| (format!("{base}/expect"), x)));
        for (p, e) in expects {
            match (alert, &e.alerts) {
                (None, Some(_)) if workflow.is_some() => c.error(
                    &format!("{p}/alerts"),
                    Diagnostic::error(
                        "not-an-alert",
                        "`alerts` is for a case whose target is an alert",
                    ),
                ),
                (Some(a), _) if e.status.is_some() || !e.taken.is_empty() || !e.outputs.is_empty() || e.vars.is_some() || e.response.is_some() => c.error(
                    &p,
                    Diagnostic::error(
                        "not-a-workflow",
                        format!("alert `{}` starts no run: expect its `alerts`, and the notices it `sent`", a.id()),
                    ),
                ),
                _ => {}
            }
        }
        for (j, entry) in case.timeline.iter().enumerate() {
            let p = format!("{base}/timeline/{j}");
            match entry {
                TimelineEntry::After(_) | TimelineEntry::Contact(_) => {}
                TimelineEntry::Event(e) => {
                    if e.name.is_none() {
                        c.error(
                            &format!("{p}/event"),
                            Diagnostic::error(
                                "missing-field",
                                "an event in the timeline needs a `name`",
                            ),
                        );
                    }
                }
                TimelineEntry::Message(m) => match &m.channel {
                    Some(ch) => c.channel(ch, &format!("{p}/message/channel")),
                    None => c.error(
                        &format!("{p}/message"),
                        Diagnostic::error(
                            "missing-field",
                            "a message in the timeline needs the `channel` it arrives on",
                        ),
                    ),
                },
                TimelineEntry::Expect(e) => c.expect(e, workflow, &format!("{p}/expect")),
            }
        }
        if let Some(e) = &case.expect {
            c.expect(e, workflow, &format!("{base}/expect"));
        }
    }
}

impl<'a> Checker<'a> {
    fn error(&mut self, pointer: &str, d: Diagnostic) {
        self.out.push(self.test.at(pointer, d));
    }

    fn workflow(&self, id: &str) -> Option<&'a Workflow> {
        self.project
            .definitions
            .iter()
            .filter_map(|d| d.as_workflow())
            .find(|w| w.id == id)
    }

    /// The case's target when it is an alert.
    fn alert_target(&self, own: Option<&str>) -> Option<&'a crate::definitions::alert::Alert> {
        let id = own.or(self.test.def.target.as_deref())?;
        self.project
            .definitions
            .iter()
            .filter_map(|d| d.as_alert())
            .find(|a| a.id() == id)
    }

    fn target(&mut self, own: Option<&str>, base: &str) -> Option<&'a Workflow> {
        let (id, pointer) = match (own, self.test.def.target.as_deref()) {
            (Some(id), _) => (id, format!("{base}/target")),
            (None, Some(id)) => (id, "/target".to_owned()),
            (None, None) => {
                self.error(
                    &format!("{base}/name"),
                    Diagnostic::error("missing-target", "this case tests no definition")
                        .with_hint("add `target: WORKFLOW_ID` to the case or to the file"),
                );
                return None;
            }
        };
        let found = self.workflow(id);
        if found.is_none() {
            let ids: Vec<&str> = self
                .project
                .definitions
                .iter()
                .map(|d| d.id.as_str())
                .collect();
            let mut d =
                Diagnostic::error("unknown-target", format!("no workflow has the id `{id}`"));
            d = match did_you_mean(id, ids.iter().copied()) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!("workflows: {}", ids.join(", "))),
            };
            // A target written once for the whole file is reported once.
            let at = self.test.doc.index.value(&pointer);
            if !self
                .out
                .iter()
                .any(|o| o.code == "unknown-target" && o.span == Some(at))
            {
                self.error(&pointer, d);
            }
        }
        found
    }

    fn given(&mut self, g: &Given, base: &str) {
        if let Some(tz) = &g.timezone
            && jiff::tz::TimeZone::get(tz).is_err()
        {
            self.error(
                &format!("{base}/timezone"),
                Diagnostic::error(
                    "invalid-timezone",
                    format!("`{tz}` is not an IANA time zone"),
                )
                .with_hint("write a zone such as America/Denver or Europe/Paris"),
            );
        }
        if let Some(start) = &g.start
            && let Err(e) = parse_time(start, g.timezone.as_deref())
        {
            self.error(
                &format!("{base}/start"),
                Diagnostic::error("invalid-time", e),
            );
        }
        for (i, h) in g.http.iter().flatten().enumerate() {
            if h.json.is_some() && h.body.is_some() {
                self.error(
                    &format!("{base}/http/{i}"),
                    Diagnostic::error(
                        "conflicting-fields",
                        "a canned answer has a `json` body or a text `body`, not both",
                    ),
                );
            }
        }
        for (i, ct) in g.contacts.iter().flatten().enumerate() {
            if ct.email.is_none() && ct.phone.is_none() {
                self.error(
                    &format!("{base}/contacts/{i}"),
                    Diagnostic::error("missing-field", "a contact needs an `email` or a `phone`"),
                );
            }
        }
    }

    fn channel(&mut self, name: &str, pointer: &str) {
        if self.channels.iter().any(|c| c == name) {
            return;
        }
        let mut d = Diagnostic::error(
            "unknown-channel",
            format!("channel `{name}` is not defined in herald.yaml"),
        );
        d = match did_you_mean(name, self.channels.iter().map(String::as_str)) {
            Some(s) => d.with_hint(format!("did you mean `{s}`?")),
            None => d.with_hint(format!("defined channels: {}", self.channels.join(", "))),
        };
        self.error(pointer, d);
    }

    fn trigger(
        &mut self,
        t: &TestTrigger,
        workflow: Option<&Workflow>,
        tz: Option<&str>,
        base: &str,
    ) {
        let key = t.key();
        let pointer = format!("{base}/{key}");
        if let TestTrigger::Cron(c) = t
            && let Some(at) = &c.at
            && let Err(e) = parse_time(at, tz)
        {
            self.error(
                &format!("{pointer}/at"),
                Diagnostic::error("invalid-time", e),
            );
        }
        if let TestTrigger::Message(m) = t
            && let Some(ch) = &m.channel
        {
            self.channel(ch, &format!("{pointer}/channel"));
        }
        let Some(w) = workflow else { return };
        let has = |k: &str| w.triggers.iter().any(|tr| tr.key() == k);
        let needs_own = match t {
            TestTrigger::Call(_) => false,
            TestTrigger::Event(e) => e.name.is_none() && !has("event"),
            TestTrigger::Message(m) => m.channel.is_none() && !has("message"),
            TestTrigger::Webhook(_) | TestTrigger::Cron(_) => !has(key),
        };
        if needs_own {
            let kinds: Vec<&str> = w.triggers.iter().map(Trigger::key).collect();
            let d = Diagnostic::error(
                "no-such-trigger",
                format!(
                    "workflow `{}` has no {key} trigger{}",
                    w.id,
                    if kinds.is_empty() {
                        String::new()
                    } else {
                        format!(" (it has: {})", kinds.join(", "))
                    }
                ),
            )
            .with_hint("start it the way it is started, or with `call: { input: ... }`");
            self.error(&pointer, d);
        }
    }

    fn messages(&mut self, list: &[MessageMatch], base: &str) {
        for (i, m) in list.iter().enumerate() {
            let p = format!("{base}/{i}");
            if let Some(ch) = &m.channel {
                self.channel(ch, &format!("{p}/channel"));
            }
            for (field, t) in [("to", &m.to), ("subject", &m.subject), ("body", &m.body)] {
                if let Some(t) = t {
                    self.text(t, &format!("{p}/{field}"));
                }
            }
        }
    }

    fn text(&mut self, t: &TextMatch, pointer: &str) {
        let TextMatch::Rule(r) = t else { return };
        match (&r.contains, &r.matches) {
            (Some(_), Some(_)) | (None, None) => self.error(
                pointer,
                Diagnostic::error(
                    "invalid-match",
                    "a text match is a string, `{contains: ...}` or `{matches: ...}`: exactly one",
                ),
            ),
            (None, Some(re)) => {
                if let Err(e) = regex::Regex::new(re) {
                    self.error(
                        &format!("{pointer}/matches"),
                        Diagnostic::error(
                            "invalid-regex",
                            format!("not a regular expression: {e}"),
                        ),
                    );
                }
            }
            _ => {}
        }
    }

    fn step_id(&mut self, id: &str, workflow: Option<&Workflow>, pointer: &str) {
        let Some(w) = workflow else { return };
        let ids: Vec<&str> = w.all_steps().into_iter().map(|s| s.id.as_str()).collect();
        if ids.contains(&id) {
            return;
        }
        let mut d = Diagnostic::error(
            "unknown-step",
            format!("workflow `{}` has no step `{id}`", w.id),
        );
        d = match did_you_mean(id, ids.iter().copied()) {
            Some(s) => d.with_hint(format!("did you mean `{s}`?")),
            None => d.with_hint(format!("its steps: {}", ids.join(", "))),
        };
        self.error(pointer, d);
    }

    fn expect(&mut self, e: &Expect, workflow: Option<&Workflow>, base: &str) {
        self.messages(&e.sent, &format!("{base}/sent"));
        self.messages(&e.not_sent, &format!("{base}/not_sent"));
        if let Some(t) = &e.error {
            self.text(t, &format!("{base}/error"));
        }
        for (i, id) in e.taken.iter().enumerate() {
            self.step_id(id, workflow, &format!("{base}/taken/{i}"));
        }
        for (i, id) in e.skipped.iter().enumerate() {
            self.step_id(id, workflow, &format!("{base}/skipped/{i}"));
        }
        for id in e.outputs.keys() {
            self.step_id(
                id,
                workflow,
                &format!("{base}/outputs/{}", source::escape_token(id)),
            );
        }
        for (i, ct) in e.contacts.iter().enumerate() {
            if ct.email.is_none() && ct.phone.is_none() {
                self.error(
                    &format!("{base}/contacts/{i}"),
                    Diagnostic::error(
                        "missing-field",
                        "an expected contact is found by its `email` or `phone`",
                    ),
                );
            }
        }
        if let (Some(_), Some(w)) = (&e.response, workflow) {
            let sync = w.triggers.iter().any(|t| {
                matches!(t, Trigger::Webhook(h)
                    if h.respond == super::model::trigger::RespondMode::Sync)
            }) || w
                .all_steps()
                .iter()
                .any(|s| matches!(s.action, Action::Respond(_)));
            if !sync {
                self.error(
                    &format!("{base}/response"),
                    Diagnostic::error(
                        "no-response",
                        format!(
                            "workflow `{}` answers no webhook synchronously: it has neither `respond: sync` nor a `respond` step",
                            w.id
                        ),
                    ),
                );
            }
        }
    }
}
