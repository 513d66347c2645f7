//! Message templates: one minijinja environment over `templates/`, plus inline templates and
//! expressions from definitions.
//!
//! - Undefined variables are errors, so a typo fails a render instead of sending "Hi ,".
//! - Templates whose name ends in `.html` (or `.html.j2`) are HTML-escaped, and only those:
//!   SMS text and JSON bodies must not be.
//! - Every render has a fuel budget, so a runaway loop fails instead of hanging a worker.
//! - All template files are read and compiled up front: a [`Templates`] value is an immutable
//!   snapshot, swapped whole on reload, and a render never touches the disk.

mod encoding;
pub mod filters;
pub mod inspect;
mod json_object;
pub mod numbers;
pub mod time;
mod undefined;

pub use json_object::JsonNode;

use std::path::Path;
use std::sync::Arc;

use minijinja::value::{Serde, Value as JValue};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value;

use crate::definitions::diagnostics::{Diagnostic, Span};
use crate::definitions::source::SourceFile;

/// An error from rendering or evaluating, with the template's own position when known.
///
/// For an undefined value the message names the path and what exists beside it:
/// ``undefined value: `body.first_name` is not defined (`body` has: email, last_name) in
/// `{{ body.first_name | title }}` ``.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RenderError {
    pub message: String,
    /// The template file, for errors inside one.
    pub template: Option<String>,
    pub line: Option<usize>,
    /// True when the render ran out of fuel.
    pub out_of_fuel: bool,
    /// The failing tag (`{{ body.x | title }}`) or expression, when it could be found.
    pub expression: Option<String>,
    /// For an undefined value, the path that is undefined, up to its first missing segment
    /// (`body.first_name`), when it could be found.
    pub variable: Option<String>,
}

impl RenderError {
    fn from_minijinja(e: &minijinja::Error) -> RenderError {
        RenderError {
            message: describe_error(e),
            template: e.name().filter(|n| !n.starts_with('<')).map(str::to_owned),
            line: e.line(),
            out_of_fuel: e.kind() == ErrorKind::OutOfFuel,
            expression: None,
            variable: None,
        }
    }
}

/// What a failed render was rendering, to find and explain the failing part.
#[derive(Clone, Copy)]
enum Failing<'a> {
    /// A template file, or a template it includes: the error names which.
    File,
    /// An inline template from a definition.
    Inline(&'a str),
    /// An expression, and how to quote it (`{{ expr }}` for a template value).
    Expression { expr: &'a str, quoted: &'a str },
}

/// A readable one-line description of a minijinja error, without its position (which the
/// caller reports in its own terms).
pub(crate) fn describe_error(e: &minijinja::Error) -> String {
    let kind = match e.kind() {
        ErrorKind::SyntaxError => "syntax error",
        ErrorKind::UndefinedError => "undefined value",
        ErrorKind::UnknownFilter => "unknown filter",
        ErrorKind::UnknownFunction => "unknown function",
        ErrorKind::UnknownTest => "unknown test",
        ErrorKind::TemplateNotFound => "template not found",
        ErrorKind::OutOfFuel => {
            return "the template did too much work and was stopped (out of fuel); look for a runaway loop".to_owned();
        }
        ErrorKind::InvalidOperation => "invalid operation",
        ErrorKind::BadSerialization => "a value could not be used",
        ErrorKind::MissingArgument => "a filter or function is missing an argument",
        ErrorKind::TooManyArguments => "too many arguments",
        ErrorKind::InvalidDelimiter => "invalid delimiter",
        ErrorKind::UnknownMethod => "unknown method",
        ErrorKind::CannotUnpack => "cannot unpack",
        ErrorKind::BadEscape => "bad string escape",
        ErrorKind::BadInclude => "bad include",
        ErrorKind::EvalBlock => "cannot evaluate the block",
        ErrorKind::CannotDeserialize => "cannot convert the value",
        ErrorKind::UnknownBlock => "unknown block",
        _ => "template error",
    };
    match e.detail() {
        Some(detail) => format!("{kind}: {detail}"),
        None => kind.to_owned(),
    }
}

/// Builds the environment every template and expression is evaluated in.
pub fn environment(fuel: u64) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Debug mode records which expression produced an undefined value, which names the
    // failing path for loop variables too. It costs only when a render fails, and setting it
    // here keeps messages the same in debug and release builds.
    env.set_debug(true);
    env.set_fuel(Some(fuel));
    env.set_recursion_limit(64);
    env.set_auto_escape_callback(|name| {
        let name = name
            .strip_suffix(".j2")
            .or_else(|| name.strip_suffix(".jinja"))
            .unwrap_or(name);
        if !name.starts_with(INLINE) && (name.ends_with(".html") || name.ends_with(".htm")) {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    minijinja_contrib::add_to_environment(&mut env);
    // Templates are often pasted from Python's Jinja2: `"a,b".split(",")`, `name.upper()`,
    // `d.items()` work as they do there.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    filters::register(&mut env);
    env
}

/// The template files of a project, compiled.
#[derive(Clone)]
pub struct Templates {
    env: Arc<Environment<'static>>,
    names: Arc<Vec<String>>,
    /// Template files that exist but do not compile (reported where they are).
    broken: Arc<Vec<String>>,
    display_dir: std::path::PathBuf,
    /// Inline templates from definitions, compiled on first use and kept: a template string
    /// in a workflow is rendered many times, and compiling it is most of the cost of a render.
    inline: Arc<std::sync::RwLock<Environment<'static>>>,
}

/// Inline templates are cached under their source with this prefix, which no file name has.
const INLINE: &str = "<inline>";

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("names", &self.names)
            .finish()
    }
}

/// Files under `templates/` that are not templates: editor swap and backup files.
pub(crate) fn is_ignored_file(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
        || name.ends_with(".bak")
        || name == "4913"
}

impl Templates {
    /// An environment with no template files, for inline templates only.
    pub fn empty(fuel: u64) -> Templates {
        let env = environment(fuel);
        Templates {
            inline: Arc::new(std::sync::RwLock::new(env.clone())),
            env: Arc::new(env),
            names: Arc::new(Vec::new()),
            broken: Arc::new(Vec::new()),
            display_dir: std::path::PathBuf::from("templates"),
        }
    }

    /// Reads and compiles every template under `dir`. Templates that do not compile are
    /// reported at their own `file:line:col` and left out.
    pub fn load(dir: &Path, display_dir: &Path, fuel: u64) -> (Templates, Vec<Diagnostic>) {
        let mut files = Vec::new();
        let mut diagnostics = Vec::new();
        if dir.is_dir() {
            collect_files(dir, dir, &mut files, &mut diagnostics);
        }
        files.sort();
        let mut sources = Vec::new();
        for rel in files {
            let path = dir.join(&rel);
            match std::fs::read_to_string(&path) {
                Ok(text) => sources.push((rel, text)),
                Err(e) => diagnostics.push(
                    Diagnostic::error("io", format!("cannot read template: {e}"))
                        .in_file(display_dir.join(&rel)),
                ),
            }
        }
        let (templates, mut more) = Templates::from_sources(sources, display_dir, fuel);
        diagnostics.append(&mut more);
        (templates, diagnostics)
    }

    /// Compiles templates given as (name, source) pairs; names use `/` separators.
    pub(crate) fn from_sources(
        sources: Vec<(String, String)>,
        display_dir: &Path,
        fuel: u64,
    ) -> (Templates, Vec<Diagnostic>) {
        let mut env = environment(fuel);
        let mut names = Vec::new();
        let mut broken = Vec::new();
        let mut diagnostics = Vec::new();
        for (name, text) in sources {
            match env.add_template_owned(name.clone(), text.clone()) {
                Ok(()) => names.push(name),
                Err(e) => {
                    let file = SourceFile::new(display_dir.join(&name), text.as_str());
                    let d = match unclosed_block(&text, &e) {
                        // The end of the file is not where the mistake is: the opening tag is.
                        Some((line, column, len, tag)) => file.locate(
                            Diagnostic::error(
                                "template-syntax",
                                format!("syntax error: this `{{% {tag} %}}` is never closed"),
                            )
                            .with_hint(format!("close it with `{{% end{tag} %}}`")),
                            Span::new(line, column, len),
                        ),
                        None => {
                            let span = error_span(&file, &e);
                            file.locate(
                                Diagnostic::error("template-syntax", describe_error(&e)),
                                span,
                            )
                        }
                    };
                    diagnostics.push(d);
                    broken.push(name);
                }
            }
        }
        // Names looked up only when a render reaches them, checked now: a misspelt filter or
        // a missing include in a branch that rarely runs would otherwise surface at send time.
        let known = inspect::Known::default();
        for name in &names {
            let Ok(tmpl) = env.get_template(name) else {
                continue;
            };
            let file = SourceFile::new(display_dir.join(name), tmpl.source());
            for r in inspect::references(&tmpl) {
                if let Some(d) = unknown_reference(&env, &known, &r, &names, &broken) {
                    diagnostics
                        .push(file.locate(d, Span::new(r.line, r.column, r.name.chars().count())));
                }
            }
            for (line, column, call, why) in inspect::failing_calls(&env, tmpl.source()) {
                diagnostics.push(file.locate(
                    failing_call(&call, &why),
                    Span::new(line, column, call.chars().count()),
                ));
            }
        }
        (
            Templates {
                inline: Arc::new(std::sync::RwLock::new(env.clone())),
                env: Arc::new(env),
                names: Arc::new(names),
                broken: Arc::new(broken),
                display_dir: display_dir.to_path_buf(),
            },
            diagnostics,
        )
    }

    /// Where template files are shown from (`templates/`), for positions inside them.
    pub(crate) fn display_dir(&self) -> &Path {
        &self.display_dir
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Template files that exist but do not compile.
    pub(crate) fn broken_names(&self) -> &[String] {
        &self.broken
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    pub fn env(&self) -> &Environment<'static> {
        &self.env
    }

    /// Renders a template file.
    pub fn render(&self, name: &str, ctx: &Value) -> Result<String, RenderError> {
        self.render_in(name, &context(ctx))
    }

    /// Renders a template file with a context already converted by [`context`].
    pub(crate) fn render_in(&self, name: &str, ctx: &JValue) -> Result<String, RenderError> {
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| RenderError::from_minijinja(&e))?;
        tmpl.render(ctx)
            .map_err(|e| self.runtime_error(&e, Failing::File, ctx))
    }

    /// Renders an inline template from a definition.
    ///
    /// Compiled sources are cached by their text, up to [`INLINE_CACHE_MAX`].
    pub fn render_str(&self, source: &str, ctx: &JValue) -> Result<String, RenderError> {
        if !source.contains("{{") && !source.contains("{%") && !source.contains("{#") {
            return Ok(source.to_owned());
        }
        let name = format!("{INLINE}{source}");
        {
            let env = crate::sync::read(&self.inline);
            if let Ok(t) = env.get_template(&name) {
                return t
                    .render(ctx)
                    .map_err(|e| self.runtime_error(&e, Failing::Inline(source), ctx));
            }
        }
        {
            let mut env = crate::sync::write(&self.inline);
            // Inline sources come from definitions, so they are few; a source made at run
            // time (an edited definition's old texts, text built from data) must not grow the
            // cache without end. Past the bound it starts again, and recompiles what is used.
            if env.templates().count() >= INLINE_CACHE_MAX {
                env.clear_templates();
            }
            if env.get_template(&name).is_err() {
                // A template that does not compile is not cached; rendering it reports why.
                if let Err(e) = env.add_template_owned(name.clone(), source.to_owned()) {
                    return Err(RenderError::from_minijinja(&e));
                }
            }
        }
        let env = crate::sync::read(&self.inline);
        let t = env
            .get_template(&name)
            .map_err(|e| RenderError::from_minijinja(&e))?;
        t.render(ctx)
            .map_err(|e| self.runtime_error(&e, Failing::Inline(source), ctx))
    }

    /// How many inline templates are compiled and kept now.
    pub fn inline_cached(&self) -> usize {
        crate::sync::read(&self.inline).templates().count()
    }

    /// Evaluates an expression (no braces) to a value.
    pub(crate) fn eval(&self, expr: &str, ctx: &JValue) -> Result<Value, RenderError> {
        to_json(&self.eval_value(expr, expr, ctx)?)
    }

    /// Evaluates an expression for its truth, as `if` does.
    pub(crate) fn is_true(&self, expr: &str, ctx: &JValue) -> Result<bool, RenderError> {
        Ok(self.eval_value(expr, expr, ctx)?.is_true())
    }

    /// Evaluates `expr`; an error quotes it as `quoted`.
    fn eval_value(&self, expr: &str, quoted: &str, ctx: &JValue) -> Result<JValue, RenderError> {
        let compiled = self
            .env
            .compile_expression(expr)
            .map_err(|e| RenderError::from_minijinja(&e))?;
        let value = compiled
            .eval(ctx)
            .map_err(|e| self.runtime_error(&e, Failing::Expression { expr, quoted }, ctx))?;
        // Strict undefined fails a render that prints an undefined value, but an expression
        // may simply evaluate to one (`{{ body.emial }}` as a whole value). That is the same
        // mistake and gets the same error, rather than becoming a silent null.
        if value.is_undefined() {
            let e = minijinja::Error::new(ErrorKind::UndefinedError, "");
            return Err(self.runtime_error(&e, Failing::Expression { expr, quoted }, ctx));
        }
        Ok(value)
    }

    /// Renders a template value: a string that is exactly one `{{ expression }}` keeps the
    /// expression's type; any other string renders to a string.
    pub(crate) fn render_value_str(
        &self,
        source: &str,
        ctx: &JValue,
    ) -> Result<Value, RenderError> {
        match sole_expression(source) {
            Some(expr) => to_json(&self.eval_value(expr, source.trim(), ctx)?),
            None => self.render_str(source, ctx).map(Value::String),
        }
    }

    /// A render's error, with the failing tag quoted and, for an undefined value, the path
    /// that is undefined explained. Runs only when a render fails.
    fn runtime_error(&self, e: &minijinja::Error, what: Failing<'_>, ctx: &JValue) -> RenderError {
        let mut err = RenderError::from_minijinja(e);
        let (paths, snippet) = match what {
            Failing::File => {
                let Some(t) = e.name().and_then(|n| self.env.get_template(n).ok()) else {
                    return err;
                };
                (
                    t.undeclared_variables(true),
                    undefined::tag_at(t.source(), e.range()),
                )
            }
            Failing::Inline(source) => (
                self.env
                    .template_from_str(source)
                    .map(|t| t.undeclared_variables(true))
                    .unwrap_or_default(),
                undefined::tag_at(source, e.range()),
            ),
            Failing::Expression { expr, quoted } => (
                self.env
                    .compile_expression(expr)
                    .map(|c| c.undeclared_variables(true))
                    .unwrap_or_default(),
                Some(undefined::quote_expression(quoted)),
            ),
        };
        if e.kind() == ErrorKind::UndefinedError {
            let globals: std::collections::HashSet<&str> =
                self.env.globals().map(|(k, _)| k).collect();
            match undefined::explain(paths, snippet.as_deref(), e.detail(), ctx, |n| {
                globals.contains(n)
            }) {
                Some(x) => {
                    err.message = x.render(snippet.as_deref());
                    err.variable = Some(x.variable);
                }
                None => {
                    if let Some(s) = &snippet {
                        err.message = format!("{} in `{s}`", err.message);
                    }
                }
            }
        }
        err.expression = snippet;
        err
    }

    /// Renders every string inside a JSON value (object keys stay as written).
    pub(crate) fn render_json(&self, value: &Value, ctx: &JValue) -> Result<Value, RenderError> {
        Ok(match value {
            Value::String(s) => self.render_value_str(s, ctx)?,
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.render_json(v, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => {
                let mut out = serde_json::Map::with_capacity(map.len());
                for (k, v) in map {
                    out.insert(k.clone(), self.render_json(v, ctx)?);
                }
                Value::Object(out)
            }
            other => other.clone(),
        })
    }
}

/// Converts a JSON context for rendering. Convert once per step and render many times.
/// The most inline templates kept compiled at once (see [`Templates::render_str`]).
pub const INLINE_CACHE_MAX: usize = 10_000;

pub fn context(ctx: &Value) -> JValue {
    JValue::from(Serde(ctx))
}

/// When `source` is exactly one `{{ expression }}` (whitespace around allowed), the expression.
pub(crate) fn sole_expression(source: &str) -> Option<&str> {
    let inner = source.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    // `{{ a }} and {{ b }}` starts and ends with braces but is two expressions.
    if inner.contains("{{") || inner.contains("}}") {
        return None;
    }
    let inner = inner.trim_start_matches('-').trim_end_matches('-').trim();
    (!inner.is_empty()).then_some(inner)
}

fn to_json(v: &JValue) -> Result<Value, RenderError> {
    if v.is_undefined() {
        return Ok(Value::Null);
    }
    serde_json::to_value(v).map_err(|e| RenderError {
        message: format!("the value could not be converted to JSON: {e}"),
        template: None,
        line: None,
        out_of_fuel: false,
        expression: None,
        variable: None,
    })
}

/// For "unexpected end of input, expected end of block": the block tag that is still open at
/// the end of the template (line, column, length, tag name).
fn unclosed_block(
    source: &str,
    e: &minijinja::Error,
) -> Option<(usize, usize, usize, &'static str)> {
    const BLOCKS: &[&str] = &[
        "if",
        "for",
        "block",
        "macro",
        "with",
        "filter",
        "call",
        "raw",
        "autoescape",
    ];
    if e.kind() != ErrorKind::SyntaxError
        || !e
            .detail()
            .is_some_and(|d| d.contains("unexpected end of input"))
    {
        return None;
    }
    let mut open: Vec<(usize, usize, usize, &'static str)> = Vec::new();
    let mut rest = source;
    let mut offset = 0;
    while let Some(at) = rest.find("{%") {
        let start = offset + at;
        let after = &source[start + 2..];
        let word: String = after
            .trim_start_matches(['-', '+'])
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let end = after.find("%}").map_or(source.len(), |i| start + 2 + i + 2);
        if let Some(tag) = BLOCKS.iter().find(|b| **b == word) {
            // `{% set x = ... %}` is not a block, but `{% set x %}...{% endset %}` is; only
            // the tags above need an end.
            let before = &source[..start];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            open.push((line, column, source[start..end].chars().count(), tag));
        } else if let Some(closed) = word.strip_prefix("end")
            && open.last().is_some_and(|o| o.3 == closed)
        {
            open.pop();
        }
        offset = end;
        rest = &source[end..];
    }
    open.pop()
}

/// A filter call whose literal arguments make it fail for every value.
pub(crate) fn failing_call(call: &str, why: &str) -> Diagnostic {
    Diagnostic::error(
        "invalid-filter-argument",
        format!("`{call}` fails whatever the value: {why}"),
    )
}

/// The diagnostic for a name a template uses that does not exist, if it does not.
pub(crate) fn unknown_reference(
    env: &Environment<'static>,
    known: &inspect::Known,
    r: &inspect::Reference,
    templates: &[String],
    broken: &[String],
) -> Option<Diagnostic> {
    use crate::definitions::suggest::did_you_mean;
    if r.kind == inspect::Kind::Template {
        if templates.iter().chain(broken).any(|n| *n == r.name) {
            return None;
        }
        let d = Diagnostic::error(
            "unknown-template",
            format!("template `{}` does not exist", r.name),
        );
        return Some(
            match did_you_mean(&r.name, templates.iter().map(String::as_str)) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint("template names are paths under templates/"),
            },
        );
    }
    if known.exists(env, r.kind, &r.name) {
        return None;
    }
    let word = r.kind.word();
    let d = Diagnostic::error(
        match r.kind {
            inspect::Kind::Filter => "unknown-filter",
            inspect::Kind::Test => "unknown-test",
            _ => "unknown-function",
        },
        format!("unknown {word} `{}`", r.name),
    );
    let names: Vec<String> = match r.kind {
        inspect::Kind::Function => env.globals().map(|(n, _)| n.to_owned()).collect(),
        kind => inspect::candidates(env, known, kind)
            .into_iter()
            .map(str::to_owned)
            .collect(),
    };
    Some(
        match did_you_mean(&r.name, names.iter().map(String::as_str)) {
            Some(s) => d.with_hint(format!("did you mean `{s}`?")),
            None => d.with_hint(format!(
                "the {word}s are listed in the README's Templates section"
            )),
        },
    )
}

/// Where in a template's own file an error is.
fn error_span(file: &SourceFile, e: &minijinja::Error) -> Span {
    if let Some(range) = e.range() {
        let before = &file.text[..range.start.min(file.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rsplit('\n')
            .next()
            .map(|l| l.chars().count())
            .unwrap_or(0)
            + 1;
        let len = file
            .text
            .get(range.clone())
            .map(|t| t.chars().count())
            .unwrap_or(1);
        return Span::new(line, col, len.max(1));
    }
    Span::new(e.line().unwrap_or(1), 1, 1)
}

fn collect_files(
    root: &Path,
    dir: &Path,
    out: &mut Vec<String>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            diagnostics.push(Diagnostic::error(
                "io",
                format!("cannot read {}: {e}", dir.display()),
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_ignored_file(&name) {
            continue;
        }
        if path.is_dir() {
            collect_files(root, &path, out, diagnostics);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    #[test]
    fn the_inline_cache_is_bounded_and_still_renders() {
        let t = Templates::empty(100_000);
        let ctx = context(&serde_json::json!({"n": 2}));
        for i in 0..INLINE_CACHE_MAX + 50 {
            let out = t.render_str(&format!("{i}:{{{{ n }}}}"), &ctx).unwrap();
            assert_eq!(out, format!("{i}:2"));
            assert!(t.inline_cached() <= INLINE_CACHE_MAX);
        }
        assert!(t.inline_cached() <= 51, "{}", t.inline_cached());
        // The same source again is a hit, not another entry.
        let before = t.inline_cached();
        t.render_str("0:{{ n }}", &ctx).unwrap();
        t.render_str("0:{{ n }}", &ctx).unwrap();
        assert!(t.inline_cached() <= before + 1);
    }
}
