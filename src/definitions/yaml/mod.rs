//! YAML parser events to JSON, with a position for every node.
//!
//! saphyr's parser reports each node as an event with its span. This builds the
//! `serde_json::Value` and the [`PositionIndex`] straight from those events. Loading saphyr's
//! own tree first (two markers and a linked hash map per node, then a second walk) held the
//! file in memory twice more, at about 20× its size: most of what `herald validate` used on a
//! large file.
//!
//! What the tree used to give is done here: anchors and aliases (an alias repeats the anchored
//! value, and the positions inside it point into the anchored source, where a mistake in it
//! is), merge keys, duplicate keys, tags, and the alias budget that stops a "billion laughs".

use std::borrow::Cow;
use std::collections::HashMap;

mod json;

use saphyr::{Marker, Scalar, ScalarStyle, ScanError, Tag};
use saphyr_parser::{Event, Parser, Span as YamlSpan, SpannedEventReceiver};
use serde_json::{Map, Number, Value};

use super::diagnostics::{Diagnostic, Span};
use super::source::{Located, Parsed, PositionIndex, SourceFile, escape_token};

/// Nodes that aliases may add in all, as saphyr's own loader allows.
const ALIAS_BUDGET: usize = 100_000;

/// What reading the events gave, before `source::parse` words the errors.
pub(super) enum Read {
    /// One document.
    Document(Parsed),
    /// The YAML could not be read: the parser's error, or a duplicate key, at a 1-based line
    /// and column.
    Syntax {
        info: String,
        line: usize,
        column: usize,
    },
    /// The file holds no document.
    Empty,
    /// A second document: the first one's first line, and where the second one's node is.
    SecondDocument {
        first_line: usize,
        start: Marker,
        end: Marker,
    },
    /// Values that cannot be JSON (tags, complex keys...), each with its position.
    Unsupported(Vec<Diagnostic>),
}

pub(super) fn read(file: &SourceFile) -> Read {
    if file.text.trim_start().starts_with(['{', '[']) {
        let mut b = Builder::new(file);
        if json::feed(&file.text, &mut b) {
            return b.into_read(Ok(()));
        }
    }
    let mut b = Builder::new(file);
    let result = Parser::new_from_str(&file.text).load(&mut b, true);
    b.into_read(result)
}

impl<'f> Builder<'f> {
    fn new(file: &'f SourceFile) -> Builder<'f> {
        Builder {
            file,
            index: PositionIndex::default(),
            errors: Vec::new(),
            stack: Vec::new(),
            pointer: String::new(),
            anchors: HashMap::new(),
            budget: ALIAS_BUDGET,
            root: None,
            documents: 0,
            first_line: 1,
            second: None,
            fatal: None,
            skip: 0,
            refused_key: None,
        }
    }

    fn into_read(mut self, result: Result<(), ScanError>) -> Read {
        if let Some((info, line, column)) = self.fatal.take() {
            return Read::Syntax { info, line, column };
        }
        if let Err(e) = result {
            let m = e.marker();
            return Read::Syntax {
                info: e.info().to_owned(),
                line: m.line(),
                column: m.col() + 1,
            };
        }
        if let Some((start, end)) = self.second {
            return Read::SecondDocument {
                first_line: self.first_line,
                start,
                end,
            };
        }
        if self.documents == 0 {
            return Read::Empty;
        }
        if !self.errors.is_empty() {
            return Read::Unsupported(self.errors);
        }
        Read::Document(Parsed {
            value: self.root.take().unwrap_or(Value::Null),
            index: self.index,
        })
    }
}

/// A container being built.
struct Frame {
    kind: FrameKind,
    /// The length of `Builder::pointer` before this node's own token was pushed.
    parent_len: usize,
    start: Marker,
    /// The key this node is the value of, when it is a mapping value.
    key: Option<Span>,
    anchor: usize,
    /// A tag Herald cannot honour: the node becomes an error at its end.
    tag: Option<String>,
}

enum FrameKind {
    Sequence(Vec<Value>),
    Mapping(Mapping),
}

struct Mapping {
    map: Map<String, Value>,
    key: Key,
    /// Merge sources (`<<`): each mapping with the pointer its positions were indexed under.
    merges: Vec<(String, Map<String, Value>)>,
    merge_seen: bool,
    /// `to: {{ x }}`: the whole mapping is a template YAML misread; it becomes null, with
    /// one error, and its contents are skipped.
    poisoned: bool,
}

enum Key {
    /// The next node is a key.
    Expected,
    /// The next node is the value of this key.
    Read(String, Span),
    /// The next node is the value of a key that was refused: skip it.
    Refused,
}

/// Where the node that is starting goes.
enum Slot {
    /// It is a value: the pointer length to restore, and the key's span if in a mapping.
    Value(usize, Option<Span>),
    /// It is a mapping key.
    Key,
    /// It is skipped (a refused key's value, or inside a misread template).
    Skip,
}

struct Builder<'f> {
    file: &'f SourceFile,
    index: PositionIndex,
    errors: Vec<Diagnostic>,
    stack: Vec<Frame>,
    /// The JSON pointer of the node being read.
    pointer: String,
    /// Anchor id → the anchored node's pointer and value. Its positions are in the index.
    anchors: HashMap<usize, (String, Value)>,
    /// Nodes aliases may still add.
    budget: usize,
    root: Option<Value>,
    documents: usize,
    first_line: usize,
    second: Option<(Marker, Marker)>,
    /// An error that ends the read (a duplicate key, the alias budget): message, line, column.
    fatal: Option<(String, usize, usize)>,
    /// The depth of the container being skipped, 0 when none is.
    skip: usize,
    /// Where a refused complex key starts, until its end is read.
    refused_key: Option<Marker>,
}

impl<'input> SpannedEventReceiver<'input> for Builder<'_> {
    fn on_event(&mut self, ev: Event<'input>, span: YamlSpan) {
        if self.fatal.is_some() {
            return;
        }
        match ev {
            Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentStart(_) => {}
            Event::DocumentEnd => {
                self.documents += 1;
                if self.documents == 1 && self.root.is_none() {
                    // `---` and nothing else.
                    self.unsupported(
                        node_span(self.file, span.start, span.end),
                        "this value could not be read",
                        None,
                    );
                } else if self.documents > 1 && self.second.is_none() {
                    self.second = Some((span.start, span.end));
                }
            }
            // Of a later document, only where it starts matters.
            _ if self.documents >= 1 => {
                if self.second.is_none() {
                    self.second = Some((span.start, span.end));
                }
            }
            Event::SequenceStart(anchor, tag) => self.open(None, anchor, tag, span.start),
            Event::MappingStart(anchor, tag) => {
                let m = Mapping {
                    map: Map::new(),
                    key: Key::Expected,
                    merges: Vec::new(),
                    merge_seen: false,
                    poisoned: false,
                };
                self.open(Some(m), anchor, tag, span.start)
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(span.start),
            Event::Scalar(text, style, anchor, tag) => {
                self.scalar(text, style, anchor, tag.as_ref(), span)
            }
            Event::Alias(id) => self.alias(id, span),
        }
    }
}

impl Builder<'_> {
    fn unsupported(&mut self, span: Span, message: impl Into<String>, hint: Option<&str>) {
        let mut d = Diagnostic::error("yaml-unsupported", message);
        if let Some(h) = hint {
            d = d.with_hint(h);
        }
        self.errors.push(self.file.locate(d, span));
    }

    /// Decides where a starting node goes, and for a value pushes its pointer token.
    fn slot(&mut self) -> Slot {
        let len = self.pointer.len();
        let Some(frame) = self.stack.last_mut() else {
            return Slot::Value(len, None);
        };
        match &mut frame.kind {
            FrameKind::Sequence(items) => {
                self.pointer.push('/');
                self.pointer.push_str(&items.len().to_string());
                Slot::Value(len, None)
            }
            FrameKind::Mapping(m) if m.poisoned => Slot::Skip,
            FrameKind::Mapping(m) => match &m.key {
                Key::Expected => Slot::Key,
                Key::Refused => {
                    m.key = Key::Expected;
                    Slot::Skip
                }
                Key::Read(k, span) => {
                    let span = *span;
                    self.pointer.push('/');
                    self.pointer.push_str(&escape_token(k));
                    Slot::Value(len, Some(span))
                }
            },
        }
    }

    fn open(
        &mut self,
        mapping: Option<Mapping>,
        anchor: usize,
        tag: Option<Cow<'_, Tag>>,
        start: Marker,
    ) {
        if self.skip > 0 {
            self.skip += 1;
            return;
        }
        let (parent_len, key) = match self.slot() {
            Slot::Value(len, key) => (len, key),
            Slot::Skip => {
                self.skip = 1;
                return;
            }
            Slot::Key => {
                self.complex_key(start);
                self.skip = 1;
                return;
            }
        };
        if self.stack.is_empty() {
            self.first_line = start.line();
        }
        let kind = match mapping {
            Some(m) => FrameKind::Mapping(m),
            None => FrameKind::Sequence(Vec::new()),
        };
        self.stack.push(Frame {
            kind,
            parent_len,
            start,
            key,
            anchor,
            tag: tag
                .filter(|t| !t.is_yaml_core_schema())
                .map(|t| t.to_string()),
        });
    }

    /// A mapping or sequence where a key should be: `to: {{ x }}` read as a mapping, or a
    /// real complex key. Neither can be JSON; the error is given at the node's end, when its
    /// span is known.
    fn complex_key(&mut self, start: Marker) {
        let Some(frame) = self.stack.last() else {
            return;
        };
        let parent = node_span(self.file, frame.start, frame.start);
        if starts_with(self.file, parent, "{{") {
            self.set_key(|m| m.poisoned = true);
        } else {
            self.refused_key = Some(start);
            self.set_key(|m| m.key = Key::Refused);
        }
    }

    fn set_key(&mut self, f: impl FnOnce(&mut Mapping)) {
        if let Some(Frame {
            kind: FrameKind::Mapping(m),
            ..
        }) = self.stack.last_mut()
        {
            f(m);
        }
    }

    fn close(&mut self, end: Marker) {
        if self.skip > 0 {
            self.skip -= 1;
            if self.skip == 0
                && let Some(start) = self.refused_key.take()
            {
                self.unsupported(
                    node_span(self.file, start, end),
                    "mapping keys must be plain text",
                    Some("quote the key, or restructure it as a value"),
                );
            }
            return;
        }
        let Some(frame) = self.stack.pop() else {
            return;
        };
        let span = node_span(self.file, frame.start, end);
        let value = match frame.kind {
            FrameKind::Sequence(mut items) => {
                items.shrink_to_fit();
                Value::Array(items)
            }
            FrameKind::Mapping(m) if m.poisoned => {
                let quoted = self
                    .file
                    .line(span.line)
                    .and_then(|l| l.trim().split_once(": "))
                    .map(|(k, v)| format!("`{k}: \"{}\"`", v.trim()))
                    .unwrap_or_else(|| "`\"{{ ... }}\"`".to_owned());
                self.unsupported(
                    span,
                    "a template must be quoted: YAML reads `{{` as the start of a mapping",
                    Some(&format!("put the whole value in quotes: {quoted}")),
                );
                Value::Null
            }
            // Rebuilt at its final size: a map grown by inserts keeps room for more, and a
            // large file has a map per step.
            FrameKind::Mapping(m) => Value::Object(self.merge(m).into_iter().collect()),
        };
        let value = match frame.tag {
            Some(tag) => {
                self.unsupported(
                    span,
                    format!("YAML tags (`{tag}`) are not supported"),
                    Some("remove the tag; quote the value if it must stay a string"),
                );
                Value::Null
            }
            None => value,
        };
        self.finish(value, frame.parent_len, frame.key, span, frame.anchor);
    }

    /// Adds the merged keys to a finished mapping. Its own keys win, then earlier sources
    /// over later ones (YAML 1.1 merge); positions point into the source, where a mistake in
    /// a merged field is.
    fn merge(&mut self, m: Mapping) -> Map<String, Value> {
        let mut out = m.map;
        for (source, fields) in m.merges {
            for (k, v) in fields {
                if k == "<<" || out.contains_key(&k) {
                    continue;
                }
                let token = escape_token(&k);
                let from = format!("{source}/{token}");
                let to = format!("{}/{token}", self.pointer);
                self.copy_positions(&v, &from, &to);
                out.insert(k, v);
            }
        }
        out
    }

    /// Indexes the nodes of `value` under `to` with the positions they have under `from`.
    fn copy_positions(&mut self, value: &Value, from: &str, to: &str) {
        let mut from = from.to_owned();
        let mut to = to.to_owned();
        self.copy_walk(value, &mut from, &mut to);
    }

    fn copy_walk(&mut self, value: &Value, from: &mut String, to: &mut String) {
        if let Some(l) = self.index.get(from) {
            self.index.insert(to, l);
        }
        let mut child = |this: &mut Self, token: &str, v: &Value| {
            let (fl, tl) = (from.len(), to.len());
            from.push('/');
            from.push_str(token);
            to.push('/');
            to.push_str(token);
            this.copy_walk(v, from, to);
            from.truncate(fl);
            to.truncate(tl);
        };
        match value {
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    child(self, &i.to_string(), v);
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    child(self, &escape_token(k), v);
                }
            }
            _ => {}
        }
    }

    fn scalar<'a>(
        &mut self,
        text: Cow<'a, str>,
        style: ScalarStyle,
        anchor: usize,
        tag: Option<&Cow<'a, Tag>>,
        span: YamlSpan,
    ) {
        if self.skip > 0 {
            return;
        }
        let at = node_span(self.file, span.start, span.end);
        let foreign = tag
            .filter(|t| !t.is_yaml_core_schema())
            .map(|t| t.to_string());
        let scalar = match foreign {
            Some(_) => None,
            None => Scalar::parse_from_cow_and_metadata(text, style, tag),
        };
        match self.slot() {
            Slot::Skip => {}
            Slot::Key => {
                let key = match scalar {
                    Some(Scalar::String(s)) => Some(exact(s)),
                    Some(Scalar::Integer(i)) => Some(i.to_string()),
                    Some(Scalar::Boolean(b)) => Some(b.to_string()),
                    Some(Scalar::FloatingPoint(f)) => Some(f.to_string()),
                    _ => None,
                };
                match key {
                    Some(k) => self.set_key(|m| m.key = Key::Read(k, at)),
                    None => {
                        self.unsupported(
                            at,
                            "mapping keys must be plain text",
                            Some("quote the key, or restructure it as a value"),
                        );
                        self.set_key(|m| m.key = Key::Refused);
                    }
                }
            }
            Slot::Value(len, key) => {
                if self.stack.is_empty() {
                    self.first_line = span.start.line();
                }
                let value = match (scalar, foreign) {
                    (_, Some(tag)) => {
                        self.unsupported(
                            at,
                            format!("YAML tags (`{tag}`) are not supported"),
                            Some("remove the tag; quote the value if it must stay a string"),
                        );
                        Value::Null
                    }
                    (Some(s), None) => self.json_scalar(s, at),
                    (None, None) => {
                        self.unsupported(at, "this value could not be read", None);
                        Value::Null
                    }
                };
                self.finish(value, len, key, at, anchor);
            }
        }
    }

    fn json_scalar(&mut self, scalar: Scalar<'_>, span: Span) -> Value {
        match scalar {
            Scalar::Null => Value::Null,
            Scalar::Boolean(b) => Value::Bool(b),
            Scalar::Integer(i) => Value::Number(i.into()),
            Scalar::FloatingPoint(f) => match Number::from_f64(f.into_inner()) {
                Some(n) => Value::Number(n),
                None => {
                    self.unsupported(
                        span,
                        "infinite and NaN numbers are not supported",
                        Some("quote the value if it is meant as text"),
                    );
                    Value::Null
                }
            },
            Scalar::String(s) => Value::String(exact(s)),
        }
    }

    fn alias(&mut self, id: usize, span: YamlSpan) {
        if self.skip > 0 {
            return;
        }
        let at = node_span(self.file, span.start, span.end);
        let (len, key) = match self.slot() {
            Slot::Skip => return,
            Slot::Key => {
                self.unsupported(
                    at,
                    "mapping keys must be plain text",
                    Some("quote the key, or restructure it as a value"),
                );
                self.set_key(|m| m.key = Key::Refused);
                return;
            }
            Slot::Value(len, key) => (len, key),
        };
        let Some((source, value)) = self.anchors.get(&id).cloned() else {
            self.pointer.truncate(len);
            self.unsupported(at, "this value could not be read", None);
            return self.attach(Value::Null);
        };
        let nodes = count_nodes(&value, self.budget + 1);
        if nodes > self.budget {
            self.fatal = Some((
                "alias expansion exceeded the maximum node budget (possible billion-laughs attack)"
                    .to_owned(),
                span.start.line(),
                span.start.col() + 1,
            ));
            return;
        }
        self.budget -= nodes;
        let to = self.pointer.clone();
        self.copy_positions(&value, &source, &to);
        // The alias itself is where it is written; what it repeats keeps the anchored places.
        self.finish(value, len, key, at, 0);
    }

    /// A node is complete: index it, remember it if anchored, and hand it to its parent.
    fn finish(&mut self, value: Value, len: usize, key: Option<Span>, span: Span, anchor: usize) {
        self.index
            .insert(&self.pointer, Located { key, value: span });
        if anchor > 0 {
            self.anchors
                .insert(anchor, (self.pointer.clone(), value.clone()));
        }
        let here = if self.merging() {
            Some(self.pointer.clone())
        } else {
            None
        };
        self.pointer.truncate(len);
        match here {
            Some(pointer) => self.merge_source(value, pointer),
            None => self.attach(value),
        }
    }

    /// Whether the node just finished is the value of a `<<` key.
    fn merging(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame { kind: FrameKind::Mapping(Mapping { key: Key::Read(k, _), .. }), .. })
                if k == "<<"
        )
    }

    fn merge_source(&mut self, value: Value, pointer: String) {
        let Some(Frame {
            kind: FrameKind::Mapping(m),
            ..
        }) = self.stack.last_mut()
        else {
            return;
        };
        let Key::Read(_, key_span) = std::mem::replace(&mut m.key, Key::Expected) else {
            return;
        };
        if m.merge_seen {
            self.fatal = Some((
                "duplicated key in mapping".to_owned(),
                key_span.line,
                key_span.column,
            ));
            return;
        }
        m.merge_seen = true;
        match value {
            Value::Object(fields) => m.merges.push((pointer, fields)),
            Value::Array(items) if items.iter().all(Value::is_object) => {
                for (i, item) in items.into_iter().enumerate() {
                    if let Value::Object(fields) = item {
                        m.merges.push((format!("{pointer}/{i}"), fields));
                    }
                }
            }
            _ => self.unsupported(
                key_span,
                "a merge key (`<<`) takes a mapping, or a list of mappings, usually an alias such as `*defaults`",
                None,
            ),
        }
    }

    fn attach(&mut self, value: Value) {
        let Some(frame) = self.stack.last_mut() else {
            if self.documents == 0 && self.root.is_none() {
                self.root = Some(value);
            }
            return;
        };
        match &mut frame.kind {
            FrameKind::Sequence(items) => items.push(value),
            FrameKind::Mapping(m) => {
                let Key::Read(k, key_span) = std::mem::replace(&mut m.key, Key::Expected) else {
                    return;
                };
                if m.map.contains_key(&k) {
                    self.fatal = Some((
                        "duplicated key in mapping".to_owned(),
                        key_span.line,
                        key_span.column,
                    ));
                    return;
                }
                m.map.insert(k, value);
            }
        }
    }
}

/// A scalar's text as an owned string without spare capacity: the scanner builds strings
/// with room to grow, and a definition keeps its strings for as long as it is loaded.
fn exact(s: Cow<'_, str>) -> String {
    match s {
        Cow::Borrowed(b) => b.to_owned(),
        Cow::Owned(mut o) => {
            o.shrink_to_fit();
            o
        }
    }
}

/// The nodes in `value`, counting up to `limit` at most.
fn count_nodes(value: &Value, limit: usize) -> usize {
    let mut n = 0;
    let mut todo = vec![value];
    while let Some(v) = todo.pop() {
        n += 1;
        if n >= limit {
            return n;
        }
        match v {
            Value::Array(items) => todo.extend(items),
            Value::Object(map) => todo.extend(map.values()),
            _ => {}
        }
    }
    n
}

/// A node's span: the node itself when it is on one line, else the rest of its first line.
pub(super) fn node_span(file: &SourceFile, start: Marker, end: Marker) -> Span {
    if end.line() == start.line() && end.col() > start.col() {
        Span::new(start.line(), start.col() + 1, end.col() - start.col())
    } else {
        let rest = file
            .line(start.line())
            .map(|l| l.chars().count().saturating_sub(start.col()))
            .unwrap_or(1);
        Span::new(start.line(), start.col() + 1, rest.max(1))
    }
}

fn starts_with(file: &SourceFile, span: Span, prefix: &str) -> bool {
    file.line(span.line).is_some_and(|l| {
        l.chars()
            .skip(span.column.saturating_sub(1))
            .take(prefix.chars().count())
            .eq(prefix.chars())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> SourceFile {
        SourceFile::new("t.yaml", text)
    }

    fn document(text: &str) -> Parsed {
        match read(&file(text)) {
            Read::Document(p) => p,
            _ => panic!("not one document: {text}"),
        }
    }

    /// What the YAML parser makes of `text`, never taking the JSON path.
    fn by_yaml_parser(text: &str) -> Parsed {
        let f = file(text);
        let mut b = Builder::new(&f);
        let result = Parser::new_from_str(&f.text).load(&mut b, true);
        match b.into_read(result) {
            Read::Document(p) => p,
            _ => panic!("the YAML parser did not read one document: {text}"),
        }
    }

    fn pointers(value: &Value, at: &mut String, out: &mut Vec<String>) {
        out.push(at.clone());
        let len = at.len();
        match value {
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    at.push_str(&format!("/{i}"));
                    pointers(v, at, out);
                    at.truncate(len);
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    at.push('/');
                    at.push_str(&escape_token(k));
                    pointers(v, at, out);
                    at.truncate(len);
                }
            }
            _ => {}
        }
    }

    fn at(p: &Parsed, pointer: &str) -> (usize, usize) {
        let s = p.index.value(pointer);
        (s.line, s.column)
    }

    #[test]
    fn strict_json_reads_as_the_yaml_parser_reads_it() {
        let cases = [
            r#"{"kind":"workflow","id":"a","steps":[{"id":"s","set":{"x":"{{ body.x }}","n":[1,-2.5,1e3,true,false,null]}}]}"#,
            "{\n  \"kind\": \"workflow\",\n  \"nested\": {\"a\": [[], {}, [1, [2, {\"b\": \"c\"}]]]},\n  \"esc\": \"tab\\tquote\\\" slash\\/ \\u00e9\",\n  \"uni\": \"caf\u{e9} \u{1f600}\", \"after\": 1\n}",
            "[1, \"two\", {\"three\": 3}]",
            r#"{"a/b": {"c~d": 1}, "": 2, "big": 123456789012345678901234567890}"#,
        ];
        for text in cases {
            let f = file(text);
            assert!(
                json::feed(&f.text, &mut Builder::new(&f)),
                "not read as JSON: {text}"
            );
            let fast = document(text);
            let slow = by_yaml_parser(text);
            assert_eq!(fast.value, slow.value, "{text}");
            let mut all = Vec::new();
            pointers(&fast.value, &mut String::new(), &mut all);
            for p in &all {
                let (f, s) = (fast.index.get(p), slow.index.get(p));
                assert_eq!(
                    f.map(|l| (l.key, l.value)),
                    s.map(|l| (l.key, l.value)),
                    "{p} in {text}"
                );
            }
        }
    }

    #[test]
    fn json_the_fast_path_refuses_goes_to_the_yaml_parser() {
        // Flow YAML, a comment, a trailing comma: not strict JSON, still definitions.
        for text in [
            "{kind: workflow, id: a}",
            "{\"kind\": \"workflow\", \"id\": \"a\"} # note",
            "{\"kind\": \"workflow\", \"id\": \"a\",}",
        ] {
            let f = file(text);
            assert!(
                !json::feed(&f.text, &mut Builder::new(&f)),
                "read as JSON: {text}"
            );
            let p = document(text);
            assert_eq!(p.value["kind"], "workflow", "{text}");
        }
    }

    #[test]
    fn a_duplicate_key_in_json_is_reported_at_the_second_one() {
        match read(&file("{\"a\": 1,\n \"a\": 2}")) {
            Read::Syntax { info, line, column } => {
                assert!(info.contains("duplicated key"), "{info}");
                assert_eq!((line, column), (2, 2));
            }
            _ => panic!("a duplicate key must be an error"),
        }
    }

    #[test]
    fn an_alias_repeats_the_value_with_the_anchored_positions() {
        let p = document("base: &b\n  to: x@example.com\n  n: 1\ncopy: *b\n");
        assert_eq!(p.value["copy"], p.value["base"]);
        // The alias is where it is written; what it repeats is where it was anchored.
        assert_eq!(at(&p, "/copy"), (4, 7));
        assert_eq!(at(&p, "/copy/to"), (2, 7));
        assert_eq!(p.index.key("/copy/n"), p.index.key("/base/n"));
    }

    #[test]
    fn merge_keys_add_fields_the_mapping_lacks_with_their_source_positions() {
        let text = "defaults: &d\n  retry: 3\n  channel: sms\nsend:\n  <<: *d\n  channel: email\n";
        let p = document(text);
        assert_eq!(
            p.value["send"],
            serde_json::json!({"channel": "email", "retry": 3})
        );
        assert_eq!(at(&p, "/send/retry"), (2, 10));
        assert_eq!(at(&p, "/send/channel"), (6, 12));
        let list = document("a: &a {x: 1}\nb: &b {x: 2, y: 2}\nc:\n  <<: [*a, *b]\n");
        assert_eq!(list.value["c"], serde_json::json!({"x": 1, "y": 2}));
        match read(&file("a: 1\nb:\n  <<: 3\n")) {
            Read::Unsupported(errors) => assert_eq!(errors.len(), 1),
            _ => panic!("`<<: 3` must be refused"),
        }
    }

    #[test]
    fn aliases_stop_at_the_node_budget() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        match read(&file(&text)) {
            Read::Syntax { info, .. } => assert!(info.contains("billion"), "{info}"),
            _ => panic!("an alias bomb must be stopped"),
        }
    }

    #[test]
    fn values_json_cannot_hold_are_each_reported() {
        let text = "a: !custom 1\nb: !!str 2\n? [x]\n: 3\nto: {{ body.email }}\nc: .nan\n";
        let Read::Unsupported(errors) = read(&file(text)) else {
            panic!("expected errors")
        };
        let lines: Vec<usize> = errors
            .iter()
            .filter_map(|d| d.span.map(|s| s.line))
            .collect();
        assert_eq!(lines, vec![1, 3, 5, 6], "{errors:?}");
        // `!!str` is the core schema's own tag: accepted.
        assert!(!errors.iter().any(|d| d.message.contains("!!str")));
    }
}
