//! The plain-text part of an HTML e-mail, made from its HTML: mail without one scores worse
//! with spam filters, and some readers (text-only clients, screen readers, watches) show only
//! the text. Paragraphs, line breaks, list items and table rows keep their shape; a link keeps
//! its address after its words, since a text reader cannot click on words; scripts, styles
//! and the head are dropped; character references are decoded.
//!
//! This reads the loose HTML that e-mail templates are, not the whole HTML standard: it
//! never fails, and what it does not understand it passes over.

/// The text of `html`, for the `text/plain` alternative beside it.
pub fn from_html(html: &str) -> String {
    let mut out = Text::default();
    let mut rest = html;
    // The address of the link being read, and where its words began in the output.
    let mut link: Option<(String, usize)> = None;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            out.text(&decode(rest));
            break;
        };
        out.text(&decode(&rest[..lt]));
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |end| &after[end + 3..]);
            continue;
        }
        let Some(gt) = tag_end(rest) else {
            // A `<` that opens no tag is text.
            out.text("<");
            rest = &rest[1..];
            continue;
        };
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        match name.as_str() {
            "head" | "style" | "script" | "title" if !closing => {
                // Skip to the matching end tag, whatever is inside.
                let end = format!("</{name}");
                rest = find_ignore_case(rest, &end)
                    .and_then(|at| rest[at..].find('>').map(|gt| &rest[at + gt + 1..]))
                    .unwrap_or("");
            }
            "br" => out.newline(),
            "p" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "table" | "blockquote"
            | "ul" | "ol" | "section" | "article" | "header" | "footer" | "hr" => out.paragraph(),
            "tr" => out.newline(),
            "td" | "th" if !closing => out.space(),
            "li" if !closing => {
                out.newline();
                out.push("- ");
            }
            "pre" => {
                out.paragraph();
                out.pre = !closing;
            }
            "a" if !closing => {
                link = attribute(tag, "href").map(|href| (href, out.buf.len()));
            }
            "a" => {
                if let Some((href, start)) = link.take() {
                    let words = out.buf[start..].trim().to_owned();
                    let shown = href.strip_prefix("mailto:").unwrap_or(&href);
                    if !href.is_empty() && !href.starts_with('#') && words != shown {
                        out.push(&format!(" ({href})"));
                    }
                }
            }
            "img" => {
                if let Some(alt) = attribute(tag, "alt").filter(|a| !a.trim().is_empty()) {
                    out.text(&alt);
                }
            }
            _ => {}
        }
    }
    out.finish()
}

/// Where the tag starting at `text[0] == '<'` ends (its `>`), minding quoted attribute
/// values; `None` when this `<` does not start a tag.
fn tag_end(text: &str) -> Option<usize> {
    let first = text[1..].chars().next()?;
    if !(first.is_ascii_alphabetic() || first == '/' || first == '!') {
        return None;
    }
    let mut quote = None;
    for (i, c) in text.char_indices().skip(1) {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn find_ignore_case(haystack: &str, needle: &str) -> Option<usize> {
    let lower = haystack.to_ascii_lowercase();
    lower.find(needle)
}

/// The decoded value of attribute `name` in a tag's text (`a href="..."`).
fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find(name) {
        let start = from + at;
        from = start + name.len();
        let before_ok = start > 0 && lower.as_bytes()[start - 1].is_ascii_whitespace();
        let after = tag[from..].trim_start();
        if !before_ok || !after.starts_with('=') {
            continue;
        }
        let value = after[1..].trim_start();
        let raw = match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or_default(),
            _ => value
                .split(|c: char| c.is_whitespace() || c == '>')
                .next()
                .unwrap_or_default(),
        };
        return Some(decode(raw));
    }
    None
}

/// Decodes character references: the named ones e-mail uses, and numeric ones.
fn decode(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest[1..].find(';').filter(|&e| e <= 10).map(|e| e + 1);
        let decoded = end.and_then(|end| {
            let name = &rest[1..end];
            let c = if let Some(num) = name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                u32::from_str_radix(num, 16).ok().and_then(char::from_u32)
            } else if let Some(num) = name.strip_prefix('#') {
                num.parse().ok().and_then(char::from_u32)
            } else {
                named(name)
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn named(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "mdash" => '—',
        "ndash" => '–',
        "hellip" => '…',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "euro" => '€',
        "pound" => '£',
        "middot" => '·',
        "bull" => '•',
        _ => return None,
    })
}

/// The text being written: HTML's whitespace collapsed, line and paragraph breaks kept.
#[derive(Default)]
struct Text {
    buf: String,
    /// Inside `<pre>`: whitespace is kept as written.
    pre: bool,
    /// A space is owed before the next word.
    space: bool,
}

impl Text {
    fn text(&mut self, text: &str) {
        if self.pre {
            self.buf.push_str(text);
            return;
        }
        for (i, word) in text.split_ascii_whitespace().enumerate() {
            if (i > 0 || self.space || text.starts_with(|c: char| c.is_ascii_whitespace()))
                && !self.buf.is_empty()
                && !self.buf.ends_with(['\n', ' '])
            {
                self.buf.push(' ');
            }
            self.buf.push_str(word);
            self.space = false;
        }
        if text.ends_with(|c: char| c.is_ascii_whitespace()) {
            self.space = true;
        }
    }

    fn push(&mut self, text: &str) {
        self.buf.push_str(text);
        self.space = false;
    }

    fn space(&mut self) {
        self.space = true;
    }

    fn newline(&mut self) {
        trim_end_spaces(&mut self.buf);
        self.buf.push('\n');
        self.space = false;
    }

    fn paragraph(&mut self) {
        trim_end_spaces(&mut self.buf);
        if !self.buf.is_empty() && !self.buf.ends_with("\n\n") {
            self.buf.push_str(if self.buf.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            });
        }
        self.space = false;
    }

    fn finish(self) -> String {
        let mut out = String::with_capacity(self.buf.len());
        let mut blank = 0;
        for line in self.buf.lines() {
            let line = line.trim_end();
            if line.trim().is_empty() {
                blank += 1;
                continue;
            }
            if !out.is_empty() {
                out.push_str(if blank > 0 { "\n\n" } else { "\n" });
            }
            blank = 0;
            out.push_str(line);
        }
        out
    }
}

fn trim_end_spaces(buf: &mut String) {
    while buf.ends_with(' ') {
        buf.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::from_html;

    #[test]
    fn an_email_keeps_its_shape_and_its_links() {
        let html = r#"<!doctype html><html><head><title>Offer</title>
            <style>p { color: red }</style></head>
            <body><h1>Hello&nbsp;Ann</h1>
            <p>Your   loan is <b>approved</b>.<br>Rate: 5&#37; &amp; no fees.</p>
            <ul><li>Sign <a href="https://example.com/sign?a=1&amp;b=2">here</a></li>
            <li>Call <a href="tel:+15551234567">+15551234567</a></li></ul>
            <!-- tracking --><script>alert(1)</script>
            <table><tr><td>Total</td><td>$1,000</td></tr></table>
            <p><a href="https://example.com/u">https://example.com/u</a> &copy; Acme</p>
            </body></html>"#;
        assert_eq!(
            from_html(html),
            "Hello Ann\n\nYour loan is approved.\nRate: 5% & no fees.\n\n\
             - Sign here (https://example.com/sign?a=1&b=2)\n\
             - Call +15551234567 (tel:+15551234567)\n\n\
             Total $1,000\n\n\
             https://example.com/u © Acme"
        );
    }

    #[test]
    fn odd_html_is_read_without_failing() {
        assert_eq!(from_html("a < b and c > d"), "a < b and c > d");
        assert_eq!(from_html("5 &bogus; &#xZZ; &"), "5 &bogus; &#xZZ; &");
        assert_eq!(from_html("<p>unclosed <b>tag"), "unclosed tag");
        assert_eq!(from_html("<img alt='Acme logo' src=x>Hi"), "Acme logoHi");
        assert_eq!(from_html("<pre>  two\n  lines</pre>"), "  two\n  lines");
        assert_eq!(from_html("<a href='#top'>top</a>"), "top");
        assert_eq!(from_html("<script>never ends"), "");
        assert_eq!(from_html(""), "");
        assert_eq!(from_html("<p>Olá 👋 &#128075;</p>"), "Olá 👋 👋");
    }
}
