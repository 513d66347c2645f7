//! Diagnostics: what is wrong, where, and what would be right.
//!
//! Every problem found between a YAML file and a compiled registry becomes a [`Diagnostic`]. They
//! are collected, never thrown, so that one `herald validate` lists all of them at once.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

/// A position in a source file. Lines and columns are 1-based and count characters, which is
/// what editors show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    pub line: usize,
    pub column: usize,
    /// Characters to underline, on the same line. At least 1 when rendered.
    #[serde(skip)]
    pub len: usize,
}

impl Span {
    pub fn new(line: usize, column: usize, len: usize) -> Span {
        Span { line, column, len }
    }

    /// The span moved `delta` characters to the right on the same line, for pointing inside a
    /// scalar (an inline template's own error position, say).
    pub(crate) fn shifted(self, delta: usize, len: usize) -> Span {
        Span {
            line: self.line,
            column: self.column + delta,
            len,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem in one place.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable, kebab-case class name (`schema`, `duplicate-id`, `unknown-channel`, ...), for
    /// editors and for tests that must not depend on wording.
    pub code: &'static str,
    pub message: String,
    /// The file as the user named it (relative to where they ran the command, when possible).
    pub file: Option<PathBuf>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub span: Option<Span>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The text of the offending line, kept so a diagnostic renders without re-reading the file.
    #[serde(skip)]
    pub source_line: Option<Arc<str>>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            file: None,
            span: None,
            hint: None,
            source_line: None,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }

    pub(crate) fn in_file(mut self, file: impl Into<PathBuf>) -> Diagnostic {
        self.file = Some(file.into());
        self
    }

    pub fn at(mut self, span: Span, source_line: Option<Arc<str>>) -> Diagnostic {
        self.span = Some(span);
        self.source_line = source_line;
        self
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    pub(crate) fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:col` (or as much of it as is known).
    pub fn location(&self) -> String {
        let mut s = String::new();
        if let Some(file) = &self.file {
            s.push_str(&display_path(file));
            if let Some(span) = self.span {
                let _ = write!(s, ":{}:{}", span.line, span.column);
            }
        }
        s
    }

    /// Renders like a compiler: location, severity and message, then the source line with a
    /// caret under the offending text, then the hint.
    pub fn render(&self, color: bool) -> String {
        let (bold, red, yellow, blue, reset) = if color {
            (
                "\x1b[1m",
                "\x1b[1;31m",
                "\x1b[1;33m",
                "\x1b[1;34m",
                "\x1b[0m",
            )
        } else {
            ("", "", "", "", "")
        };
        let sev_color = match self.severity {
            Severity::Error => red,
            Severity::Warning => yellow,
        };
        let mut out = String::new();
        let location = self.location();
        if !location.is_empty() {
            let _ = write!(out, "{bold}{location}:{reset} ");
        }
        let _ = writeln!(
            out,
            "{sev_color}{}:{reset} {bold}{}{reset}",
            self.severity.label(),
            self.message
        );
        if let (Some(span), Some(line)) = (self.span, &self.source_line) {
            let gutter = span.line.to_string();
            let pad = " ".repeat(gutter.len());
            let full = line.trim_end_matches(['\r', '\n']);
            // A long line (minified JSON, say) is shown as a window around the caret, so one
            // error in a 5 MB line prints a line, not 5 MB.
            let (line_text, column) = window(full, span.column);
            let _ = writeln!(out, "{blue}{pad} |{reset}");
            let _ = writeln!(out, "{blue}{gutter} |{reset} {line_text}");
            // Tabs keep their width in the caret line so the caret stays under the text.
            let lead: String = line_text
                .chars()
                .take(column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let available = line_text.chars().count().saturating_sub(column - 1);
            let len = span.len.clamp(1, available.max(1));
            let _ = writeln!(
                out,
                "{blue}{pad} |{reset} {lead}{sev_color}{}{reset}",
                "^".repeat(len)
            );
        }
        if let Some(hint) = &self.hint {
            let pad = self
                .span
                .map(|s| " ".repeat(s.line.to_string().len()))
                .unwrap_or_default();
            let _ = writeln!(out, "{pad} {blue}= hint:{reset} {hint}");
        }
        out
    }
}

/// Characters of a source line shown around the caret at most.
const WINDOW: usize = 120;

/// The part of `line` to show for a caret at `column` (1-based), and the caret's column in
/// it: the whole line when it is short, else about [`WINDOW`] characters around the caret with
/// `…` where it was cut.
fn window(line: &str, column: usize) -> (std::borrow::Cow<'_, str>, usize) {
    let count = line.chars().count();
    if count <= WINDOW {
        return (line.into(), column);
    }
    let caret = column.saturating_sub(1).min(count);
    let start = caret.saturating_sub(WINDOW / 3);
    let end = (start + WINDOW).min(count);
    let start = end.saturating_sub(WINDOW).min(start);
    let body: String = line.chars().skip(start).take(end - start).collect();
    let head = if start > 0 { "…" } else { "" };
    let tail = if end < count { "…" } else { "" };
    let column = caret - start + 1 + usize::from(start > 0);
    (format!("{head}{body}{tail}").into(), column)
}

/// Paths print with forward slashes and without a leading `./`, so output is the same on every
/// platform and matches what tests expect.
pub(crate) fn display_path(path: &Path) -> String {
    let s = path.to_string_lossy().replace('\\', "/");
    s.strip_prefix("./").map(str::to_owned).unwrap_or(s)
}

/// A set of diagnostics with counts, in the order they should be shown.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn push(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    pub fn extend(&mut self, ds: impl IntoIterator<Item = Diagnostic>) {
        self.diagnostics.extend(ds);
    }

    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// Sorts by file, then position, then severity, so output is stable across runs whatever
    /// order the files were read in.
    pub fn sort(&mut self) {
        self.diagnostics.sort_by(|a, b| {
            let key = |d: &Diagnostic| {
                (
                    d.file.clone(),
                    d.span.map(|s| (s.line, s.column)),
                    d.severity,
                )
            };
            key(a).cmp(&key(b))
        });
        // One mistake, one report: an error inside an anchored block is found again at each
        // alias that repeats it, at the same place with the same words.
        self.diagnostics.dedup_by(|a, b| {
            a.file == b.file && a.span == b.span && a.message == b.message && a.code == b.code
        });
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn a_long_line_is_shown_as_a_window_with_the_caret_under_the_mistake() {
        let mut line = "x".repeat(5_000_000);
        line.replace_range(2_500_000..2_500_005, "oops!");
        let d = Diagnostic::error("test", "here").at(Span::new(1, 2_500_001, 5), Some(line.into()));
        let out = d.render(false);
        assert!(out.len() < 600, "{} bytes printed", out.len());
        let lines: Vec<&str> = out.lines().collect();
        let text = lines[2].split_once("| ").unwrap().1;
        let carets = lines[3].split_once("| ").unwrap().1;
        assert!(text.starts_with('…') && text.ends_with('…'), "{text}");
        let at = carets.find('^').unwrap();
        let under: String = text.chars().skip(at).take(5).collect();
        assert_eq!(under, "oops!", "{text}\n{carets}");
    }

    #[test]
    fn a_short_line_is_shown_whole() {
        let d = Diagnostic::error("test", "here").at(Span::new(3, 5, 3), Some("  a: bad".into()));
        let out = d.render(false);
        assert!(out.contains("3 |   a: bad"), "{out}");
        assert!(out.contains("  |     ^^^"), "{out}");
    }
}
