//! YAML source files: parsing with positions.
//!
//! A file is parsed with saphyr's parser, whose events carry a span for every node, straight
//! into a `serde_json::Value` while recording where each JSON pointer came from (see `yaml`). Schema validation and
//! deserialization then work on plain JSON, and every error they raise maps back to
//! `file:line:col` through the [`PositionIndex`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use saphyr::Marker;
use serde_json::Value;

use super::diagnostics::{Diagnostic, Span};

/// A file's text, with enough bookkeeping to quote any of its lines.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as it should be displayed.
    pub path: PathBuf,
    pub text: Arc<str>,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<Arc<str>>) -> SourceFile {
        let text: Arc<str> = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile {
            path: path.into(),
            text,
            line_starts,
        }
    }

    pub fn read(path: &Path, display: impl Into<PathBuf>) -> std::io::Result<SourceFile> {
        let text = std::fs::read_to_string(path)?;
        Ok(SourceFile::new(display, text))
    }

    /// The text of a 1-based line, without its line ending.
    pub fn line(&self, line: usize) -> Option<&str> {
        let start = *self.line_starts.get(line.checked_sub(1)?)?;
        let end = self
            .line_starts
            .get(line)
            .copied()
            .unwrap_or(self.text.len());
        Some(self.text[start..end].trim_end_matches(['\n', '\r']))
    }

    /// Attaches this file and the quoted line to a diagnostic.
    pub(crate) fn locate(&self, d: Diagnostic, span: Span) -> Diagnostic {
        let line = self.line(span.line).map(Arc::from);
        d.in_file(self.path.clone()).at(span, line)
    }

    /// A diagnostic about the file as a whole.
    pub fn whole(&self, d: Diagnostic) -> Diagnostic {
        d.in_file(self.path.clone())
    }
}

/// Where one JSON node came from.
#[derive(Debug, Clone, Copy)]
pub struct Located {
    /// The mapping key this node is the value of, if any.
    pub key: Option<Span>,
    pub value: Span,
}

/// JSON pointer → position, for every node of a parsed document.
///
/// Kept compact because a definition keeps its index for as long as it is loaded, and a large
/// file has hundreds of thousands of nodes: each pointer is stored as a 64-bit hash (a
/// collision among a file's nodes is about as likely as one in 10^9 files of a million nodes,
/// and would only misplace a caret), and each position as three `u32`s.
#[derive(Debug, Default, Clone)]
pub struct PositionIndex {
    map: HashMap<u64, Entry, BuildHasherDefault<PrehashedKey>>,
}

/// A [`Located`] in 28 bytes instead of 56.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Option<[u32; 3]>,
    value: [u32; 3],
}

fn pack(s: Span) -> [u32; 3] {
    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    [n(s.line), n(s.column), n(s.len)]
}

fn unpack(p: [u32; 3]) -> Span {
    Span::new(p[0] as usize, p[1] as usize, p[2] as usize)
}

fn pointer_hash(pointer: &str) -> u64 {
    // SipHash with fixed keys: the same pointer hashes the same for the life of the index.
    let mut h = std::hash::DefaultHasher::new();
    h.write(pointer.as_bytes());
    h.finish()
}

/// The keys are hashes already; hashing them again would only cost time.
#[derive(Default)]
struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl PositionIndex {
    pub fn get(&self, pointer: &str) -> Option<Located> {
        self.map.get(&pointer_hash(pointer)).map(|e| Located {
            key: e.key.map(unpack),
            value: unpack(e.value),
        })
    }

    pub(super) fn insert(&mut self, pointer: &str, at: Located) {
        self.map.insert(
            pointer_hash(pointer),
            Entry {
                key: at.key.map(pack),
                value: pack(at.value),
            },
        );
    }

    /// The value's position, or that of the nearest ancestor that has one.
    pub fn value(&self, pointer: &str) -> Span {
        self.walk_up(pointer, |l| Some(l.value))
    }

    /// The key's position when the node is a mapping value, else the value's. This is where a
    /// reader looks for "the field": an error about a field points at its name.
    pub fn key(&self, pointer: &str) -> Span {
        self.walk_up(pointer, |l| Some(l.key.unwrap_or(l.value)))
    }

    fn walk_up(&self, pointer: &str, pick: impl Fn(Located) -> Option<Span>) -> Span {
        let mut p = pointer;
        loop {
            if let Some(span) = self.get(p).and_then(&pick) {
                return span;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return Span::new(1, 1, 1),
            }
        }
    }
}

/// A document converted to JSON, with positions.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub value: Value,
    pub index: PositionIndex,
}

/// Escapes one JSON pointer reference token (RFC 6901).
pub(crate) fn escape_token(token: &str) -> String {
    if token.contains(['~', '/']) {
        token.replace('~', "~0").replace('/', "~1")
    } else {
        token.to_owned()
    }
}

/// Parses a YAML file holding exactly one document into JSON.
pub fn parse(file: &SourceFile) -> Result<Parsed, Vec<Diagnostic>> {
    match super::yaml::read(file) {
        super::yaml::Read::Document(parsed) => Ok(parsed),
        super::yaml::Read::Unsupported(errors) => Err(errors),
        super::yaml::Read::Syntax { info, line, column } => {
            let (d, span) = yaml_error(file, &info, line, column);
            Err(vec![file.locate(d, span)])
        }
        // Positioned at 1:1 like every other diagnostic, so editors and `--format json` can
        // place it.
        super::yaml::Read::Empty => Err(vec![
            file.locate(
                Diagnostic::error("empty-file", "the file is empty")
                    .with_hint("a definition starts with `kind:` and `id:`"),
                Span::new(1, 1, 1),
            ),
        ]),
        super::yaml::Read::SecondDocument {
            first_line,
            start,
            end,
        } => {
            // Point at the `---` that starts the second document when it can be found: that
            // is where the file should be split.
            let span = (first_line + 1..=start.line())
                .rev()
                .find(|&l| {
                    file.line(l)
                        .map(str::trim_end)
                        .is_some_and(|t| t == "---" || t.starts_with("--- "))
                })
                .map(|l| Span::new(l, 1, 3))
                .unwrap_or_else(|| marker_span(&start, &end));
            Err(vec![
                file.locate(
                    Diagnostic::error(
                        "multiple-documents",
                        "a file holds one definition, but this one has a second YAML document",
                    )
                    .with_hint("move each definition after `---` into a file of its own"),
                    span,
                ),
            ])
        }
    }
}

/// The YAML parser's error in plain words, at the place to fix: the first of two duplicate
/// keys, the tab itself, the bracket that is never closed.
fn yaml_error(file: &SourceFile, info: &str, line: usize, column: usize) -> (Diagnostic, Span) {
    let text = file.line(line).unwrap_or_default();
    let at = Span::new(line, column, 1);
    let plain = |message: String, hint: Option<String>| {
        let d = Diagnostic::error("yaml-syntax", message);
        match hint {
            Some(h) => d.with_hint(h),
            None => d,
        }
    };
    if info.contains("duplicated key") {
        let indent = text.len() - text.trim_start().len();
        let key = text
            .trim_start()
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        let span = Span::new(line, indent + 1, key.chars().count().max(1));
        let first = (1..line).rev().find(|&l| {
            file.line(l).is_some_and(|t| {
                t.len() - t.trim_start().len() == indent
                    && t.trim_start().split(':').next().map(str::trim) == Some(key.as_str())
            })
        });
        // At the first one: the mapping's key is defined there, and set again below.
        return match first {
            Some(f) => (
                plain(
                    format!("`{key}` appears twice in this mapping"),
                    Some(format!("it is set again on line {line}; keep one of them")),
                ),
                Span::new(f, indent + 1, key.chars().count().max(1)),
            ),
            None => (
                plain(
                    format!("`{key}` appears twice in this mapping"),
                    Some("keep one of them".to_owned()),
                ),
                span,
            ),
        };
    }
    if info.contains("mapping values are not allowed") {
        let suggestion = text
            .split_once(": ")
            .map(|(k, v)| format!("{k}: \"{}\"", v.trim().replace('"', "\\\"")))
            .unwrap_or_default();
        return (
            plain(
                "a `: ` inside this value reads as the start of another key".to_owned(),
                Some(format!("quote the whole value: `{}`", suggestion.trim())),
            ),
            at,
        );
    }
    if info.contains("unknown anchor") {
        let name: String = text
            .chars()
            .skip(column.saturating_sub(1))
            .skip_while(|c| *c == '*')
            .take_while(|c| !c.is_whitespace() && !",]}".contains(*c))
            .collect();
        return (
            plain(
                format!("the alias `*{name}` names no anchor"),
                Some(format!(
                    "an alias repeats a value marked `&{name}` earlier in the file; define the anchor first, or write the value out"
                )),
            ),
            Span::new(line, column, name.chars().count() + 1),
        );
    }
    if info.contains("tabs disallowed") {
        let tab = text
            .find('\t')
            .map(|i| text[..i].chars().count() + 1)
            .unwrap_or(column);
        return (
            plain(
                "a tab in the indentation: YAML indents with spaces only".to_owned(),
                Some(
                    "replace the tab with spaces (most editors can show and convert tabs)"
                        .to_owned(),
                ),
            ),
            Span::new(line, tab, 1),
        );
    }
    if (info.contains("flow") || info.contains("did not find expected ',' or"))
        && let Some((l, c, open)) = unclosed_bracket(&file.text, line)
    {
        let close = if open == '[' { ']' } else { '}' };
        return (
            plain(
                format!("this `{open}` is never closed"),
                Some(format!(
                    "close it with `{close}`, or write the list or mapping in block style"
                )),
            ),
            Span::new(l, c, 1),
        );
    }
    let mut d = Diagnostic::error("yaml-syntax", format!("invalid YAML: {info}"));
    if info.contains("quoted scalar") {
        d = d.with_hint("check that the quote opened here is closed; a value continued on the next line must be indented more than its key");
    }
    (d, at)
}

/// The last `[` or `{` opened before `line` and not closed by then, ignoring brackets in
/// quotes and comments: where an unclosed flow collection starts.
fn unclosed_bracket(text: &str, line: usize) -> Option<(usize, usize, char)> {
    let mut stack: Vec<(usize, usize, char)> = Vec::new();
    for (i, l) in text.lines().enumerate().take(line) {
        let mut quote: Option<char> = None;
        for (c_i, c) in l.chars().enumerate() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => stack.push((i + 1, c_i + 1, c)),
                (None, ']' | '}') => {
                    stack.pop();
                }
                _ => {}
            }
        }
    }
    stack.last().copied()
}

fn marker_span(start: &Marker, end: &Marker) -> Span {
    let len = if end.line() == start.line() && end.col() > start.col() {
        end.col() - start.col()
    } else {
        1
    };
    Span::new(start.line(), start.col() + 1, len)
}
