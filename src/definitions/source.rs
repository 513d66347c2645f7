//! YAML source files: parsing with positions.
//!
//! A file is parsed with saphyr, which keeps a span on every node, and converted to a
//! `serde_json::Value` while recording where each JSON pointer came from. Schema validation and
//! deserialization then work on plain JSON, and every error they raise maps back to
//! `file:line:col` through the [`PositionIndex`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use saphyr::{LoadableYamlNode, MarkedYaml, Marker, Scalar, YamlData};
use serde_json::{Map, Number, Value};

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
    pub fn locate(&self, d: Diagnostic, span: Span) -> Diagnostic {
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
#[derive(Debug, Default, Clone)]
pub struct PositionIndex {
    map: HashMap<String, Located>,
}

impl PositionIndex {
    pub fn get(&self, pointer: &str) -> Option<Located> {
        self.map.get(pointer).copied()
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
            if let Some(span) = self.map.get(p).copied().and_then(&pick) {
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
pub fn escape_token(token: &str) -> String {
    if token.contains(['~', '/']) {
        token.replace('~', "~0").replace('/', "~1")
    } else {
        token.to_owned()
    }
}

/// Parses a YAML file holding exactly one document into JSON.
pub fn parse(file: &SourceFile) -> Result<Parsed, Vec<Diagnostic>> {
    let docs = match MarkedYaml::load_from_str(&file.text) {
        Ok(docs) => docs,
        Err(e) => {
            let m = e.marker();
            let (d, span) = yaml_error(file, e.info(), m.line(), m.col() + 1);
            return Err(vec![file.locate(d, span)]);
        }
    };
    let mut docs = docs.into_iter();
    let Some(doc) = docs.next() else {
        // Positioned at 1:1 like every other diagnostic, so editors and `--format json` can
        // place it.
        return Err(vec![
            file.locate(
                Diagnostic::error("empty-file", "the file is empty")
                    .with_hint("a definition starts with `kind:` and `id:`"),
                Span::new(1, 1, 1),
            ),
        ]);
    };
    if let Some(second) = docs.next() {
        // Point at the `---` that starts the second document when it can be found: that is
        // where the file should be split.
        let first = doc.span.start.line();
        let start = second.span.start.line();
        let span = (first + 1..=start)
            .rev()
            .find(|&l| {
                file.line(l)
                    .map(str::trim_end)
                    .is_some_and(|t| t == "---" || t.starts_with("--- "))
            })
            .map(|l| Span::new(l, 1, 3))
            .unwrap_or_else(|| marker_span(&second.span.start, &second.span.end));
        return Err(vec![
            file.locate(
                Diagnostic::error(
                    "multiple-documents",
                    "a file holds one definition, but this one has a second YAML document",
                )
                .with_hint("move each definition after `---` into a file of its own"),
                span,
            ),
        ]);
    }
    let mut converter = Converter {
        file,
        index: PositionIndex::default(),
        errors: Vec::new(),
    };
    let mut pointer = String::new();
    let value = converter.convert(&doc, &mut pointer, None);
    if converter.errors.is_empty() {
        Ok(Parsed {
            value,
            index: converter.index,
        })
    } else {
        Err(converter.errors)
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

struct Converter<'f> {
    file: &'f SourceFile,
    index: PositionIndex,
    errors: Vec<Diagnostic>,
}

impl Converter<'_> {
    fn span_of(&self, node: &MarkedYaml) -> Span {
        let start = node.span.start;
        let end = node.span.end;
        if end.line() == start.line() && end.col() > start.col() {
            Span::new(start.line(), start.col() + 1, end.col() - start.col())
        } else {
            // A block node spans lines: underline the rest of its first line.
            let rest = self
                .file
                .line(start.line())
                .map(|l| l.chars().count().saturating_sub(start.col()))
                .unwrap_or(1);
            Span::new(start.line(), start.col() + 1, rest.max(1))
        }
    }

    /// Whether the source at `span` starts with `prefix`.
    fn starts_with(&self, span: Span, prefix: &str) -> bool {
        self.file.line(span.line).is_some_and(|l| {
            l.chars()
                .skip(span.column.saturating_sub(1))
                .collect::<String>()
                .starts_with(prefix)
        })
    }

    fn error(&mut self, span: Span, message: impl Into<String>, hint: Option<&str>) {
        let mut d = Diagnostic::error("yaml-unsupported", message);
        if let Some(h) = hint {
            d = d.with_hint(h);
        }
        self.errors.push(self.file.locate(d, span));
    }

    fn convert(&mut self, node: &MarkedYaml, pointer: &mut String, key: Option<Span>) -> Value {
        let span = self.span_of(node);
        self.index
            .map
            .insert(pointer.clone(), Located { key, value: span });
        match &node.data {
            YamlData::Value(scalar) => self.scalar(scalar, span),
            YamlData::Sequence(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&i.to_string());
                    out.push(self.convert(item, pointer, None));
                    pointer.truncate(len);
                }
                Value::Array(out)
            }
            YamlData::Mapping(map) => {
                let mut out = Map::with_capacity(map.len());
                let mut merges: Vec<&MarkedYaml> = Vec::new();
                for (k, v) in map {
                    let key_span = self.span_of(k);
                    let key = match &k.data {
                        YamlData::Value(Scalar::String(s)) => s.to_string(),
                        YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                        YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
                        YamlData::Value(Scalar::FloatingPoint(f)) => f.to_string(),
                        YamlData::Mapping(_) if self.starts_with(span, "{{") => {
                            // `to: {{ body.email }}`: YAML read the template as a mapping.
                            let quoted = self
                                .file
                                .line(span.line)
                                .and_then(|l| l.trim().split_once(": "))
                                .map(|(k, v)| format!("`{k}: \"{}\"`", v.trim()))
                                .unwrap_or_else(|| "`\"{{ ... }}\"`".to_owned());
                            self.error(
                                span,
                                "a template must be quoted: YAML reads `{{` as the start of a mapping",
                                Some(&format!("put the whole value in quotes: {quoted}")),
                            );
                            return Value::Null;
                        }
                        _ => {
                            self.error(
                                key_span,
                                "mapping keys must be plain text",
                                Some("quote the key, or restructure it as a value"),
                            );
                            continue;
                        }
                    };
                    if key == "<<" {
                        // Merged after the mapping's own keys, which win (YAML 1.1 merge).
                        let sources: Vec<&MarkedYaml> = match &v.data {
                            YamlData::Mapping(_) => vec![v],
                            YamlData::Sequence(items)
                                if items.iter().all(|i| matches!(i.data, YamlData::Mapping(_))) =>
                            {
                                items.iter().collect()
                            }
                            _ => {
                                self.error(
                                    key_span,
                                    "a merge key (`<<`) takes a mapping, or a list of mappings, usually an alias such as `*defaults`",
                                    None,
                                );
                                continue;
                            }
                        };
                        merges.extend(sources);
                        continue;
                    }
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&escape_token(&key));
                    let value = self.convert(v, pointer, Some(key_span));
                    pointer.truncate(len);
                    out.insert(key, value);
                }
                // Earlier merge sources win over later ones; positions point into the anchored
                // source, which is where a mistake in a merged field is.
                for source in merges {
                    let YamlData::Mapping(m) = &source.data else {
                        continue;
                    };
                    for (k, v) in m {
                        let Some(key) = (match &k.data {
                            YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
                            YamlData::Value(Scalar::Integer(i)) => Some(i.to_string()),
                            YamlData::Value(Scalar::Boolean(b)) => Some(b.to_string()),
                            _ => None,
                        }) else {
                            continue;
                        };
                        if key == "<<" || out.contains_key(&key) {
                            continue;
                        }
                        let key_span = self.span_of(k);
                        let len = pointer.len();
                        pointer.push('/');
                        pointer.push_str(&escape_token(&key));
                        let value = self.convert(v, pointer, Some(key_span));
                        pointer.truncate(len);
                        out.insert(key, value);
                    }
                }
                Value::Object(out)
            }
            YamlData::Tagged(tag, _) => {
                self.error(
                    span,
                    format!("YAML tags (`{tag}`) are not supported"),
                    Some("remove the tag; quote the value if it must stay a string"),
                );
                Value::Null
            }
            YamlData::Alias(_) | YamlData::Representation(..) | YamlData::BadValue => {
                self.error(span, "this value could not be read", None);
                Value::Null
            }
        }
    }

    fn scalar(&mut self, scalar: &Scalar, span: Span) -> Value {
        match scalar {
            Scalar::Null => Value::Null,
            Scalar::Boolean(b) => Value::Bool(*b),
            Scalar::Integer(i) => Value::Number((*i).into()),
            Scalar::FloatingPoint(f) => match Number::from_f64(f.into_inner()) {
                Some(n) => Value::Number(n),
                None => {
                    self.error(
                        span,
                        "infinite and NaN numbers are not supported",
                        Some("quote the value if it is meant as text"),
                    );
                    Value::Null
                }
            },
            Scalar::String(s) => Value::String(s.to_string()),
        }
    }
}
