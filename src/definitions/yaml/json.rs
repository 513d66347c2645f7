//! Strict JSON, read as the YAML parser's events.
//!
//! JSON is YAML, and a definition may be written (or generated) as JSON. saphyr's scanner
//! keeps every token of a flow collection that sits on one line until the line ends, since
//! the collection might turn out to be a mapping key; a minified JSON file is one line, so
//! a 5 MB file held about 40 times its size in tokens. This reads strict JSON in one pass
//! and gives the same events, with the same positions, to the same builder. Anything it does
//! not accept (comments, unquoted keys, YAML flow style, a syntax error) goes to the YAML
//! parser instead, which also words the errors.

use std::borrow::Cow;

use saphyr::{Marker, ScalarStyle};
use saphyr_parser::{Event, Span, SpannedEventReceiver};

/// Nesting deeper than this goes to the YAML parser, which does not recurse.
const MAX_DEPTH: usize = 256;

/// Feeds `text` to `recv` when it is one strict JSON value; false (with `recv` holding
/// partial events) when it is not.
pub(super) fn feed<'a>(text: &'a str, recv: &mut impl SpannedEventReceiver<'a>) -> bool {
    let mut r = Reader {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        index: 0,
        line: 1,
        col: 0,
    };
    let start = r.marker();
    recv.on_event(Event::StreamStart, Span::new(start, start));
    recv.on_event(Event::DocumentStart(false), Span::new(start, start));
    if r.value(recv, 0).is_none() {
        return false;
    }
    r.whitespace();
    if r.pos != r.bytes.len() {
        return false;
    }
    let end = r.marker();
    recv.on_event(Event::DocumentEnd, Span::new(end, end));
    recv.on_event(Event::StreamEnd, Span::new(end, end));
    true
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// Characters so far, as saphyr's markers count them.
    index: usize,
    line: usize,
    /// 0-based, in characters.
    col: usize,
}

impl<'a> Reader<'a> {
    fn marker(&self) -> Marker {
        Marker::new(self.index, self.line, self.col)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Moves past `n` bytes, counting characters and lines.
    fn advance(&mut self, n: usize) {
        for &b in &self.bytes[self.pos..self.pos + n] {
            if b == b'\n' {
                self.line += 1;
                self.col = 0;
                self.index += 1;
            } else if b & 0xC0 != 0x80 {
                // Not a UTF-8 continuation byte: a new character.
                self.col += 1;
                self.index += 1;
            }
        }
        self.pos += n;
    }

    fn whitespace(&mut self) {
        let n = self.bytes[self.pos..]
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .count();
        self.advance(n);
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.whitespace();
        (self.peek()? == byte).then(|| self.advance(1))
    }

    fn value(&mut self, recv: &mut impl SpannedEventReceiver<'a>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.whitespace();
        let start = self.marker();
        match self.peek()? {
            b'{' => {
                self.advance(1);
                recv.on_event(Event::MappingStart(0, None), Span::new(start, start));
                self.items(recv, b'}', |r, recv| {
                    r.whitespace();
                    if r.peek()? != b'"' {
                        return None;
                    }
                    r.string(recv)?;
                    r.expect(b':')?;
                    r.value(recv, depth + 1)
                })?;
                let end = self.close();
                recv.on_event(Event::MappingEnd, Span::new(end, end));
            }
            b'[' => {
                self.advance(1);
                recv.on_event(Event::SequenceStart(0, None), Span::new(start, start));
                self.items(recv, b']', |r, recv| r.value(recv, depth + 1))?;
                let end = self.close();
                recv.on_event(Event::SequenceEnd, Span::new(end, end));
            }
            b'"' => self.string(recv)?,
            _ => self.plain(recv)?,
        }
        Some(())
    }

    /// The comma-separated items of a collection, up to (not past) its closing byte.
    fn items<R: SpannedEventReceiver<'a>>(
        &mut self,
        recv: &mut R,
        close: u8,
        mut item: impl FnMut(&mut Self, &mut R) -> Option<()>,
    ) -> Option<()> {
        self.whitespace();
        if self.peek()? == close {
            return Some(());
        }
        loop {
            item(self, recv)?;
            self.whitespace();
            match self.peek()? {
                b',' => self.advance(1),
                b if b == close => return Some(()),
                _ => return None,
            }
        }
    }

    /// Moves past a closing bracket, returning where it was.
    fn close(&mut self) -> Marker {
        let at = self.marker();
        self.advance(1);
        at
    }

    fn string(&mut self, recv: &mut impl SpannedEventReceiver<'a>) -> Option<()> {
        let start = self.marker();
        let open = self.pos;
        let mut i = open + 1;
        let mut escaped = false;
        loop {
            match *self.bytes.get(i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                b if b < 0x20 => return None,
                _ => i += 1,
            }
        }
        let raw = &self.text[open..=i];
        let value: Cow<'a, str> = if escaped {
            Cow::Owned(serde_json::from_str::<String>(raw).ok()?)
        } else {
            Cow::Borrowed(&self.text[open + 1..i])
        };
        self.advance(i + 1 - open);
        let end = self.marker();
        recv.on_event(
            Event::Scalar(value, ScalarStyle::DoubleQuoted, 0, None),
            Span::new(start, end),
        );
        Some(())
    }

    /// `true`, `false`, `null` or a number.
    fn plain(&mut self, recv: &mut impl SpannedEventReceiver<'a>) -> Option<()> {
        let start = self.marker();
        let n = self.bytes[self.pos..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            .count();
        let token = &self.text[self.pos..self.pos + n];
        let ok = matches!(token, "true" | "false" | "null")
            || serde_json::from_str::<serde_json::Number>(token).is_ok();
        if !ok {
            return None;
        }
        self.advance(n);
        let end = self.marker();
        recv.on_event(
            Event::Scalar(Cow::Borrowed(token), ScalarStyle::Plain, 0, None),
            Span::new(start, end),
        );
        Some(())
    }
}
