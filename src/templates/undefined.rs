//! Explains a strict-undefined failure: which variable path was undefined, what exists at that
//! level, and the closest name, so "undefined value" becomes
//! ``undefined value: `body.first_name` is not defined (`body` has: email, last_name) in
//! `{{ body.first_name | title }}` ``.
//!
//! minijinja reports where the failure happened (a byte range in the source) but not which
//! lookup came back undefined. The paths a template reads from its context are known
//! statically (`undeclared_variables(true)`: `body.first_name`, `steps.fetch.output`), so each
//! path used in the failing tag is walked against the context and the first segment that is
//! missing is the answer. Loop variables and `set` names are not in the context; when the
//! failure is in one of those, minijinja's own detail is kept.

use std::collections::HashSet;
use std::ops::Range;

use minijinja::value::{Value, ValueKind};

/// At most this many keys are listed next to a missing name.
const MAX_KEYS_SHOWN: usize = 8;
/// Quoted source longer than this is cut.
const MAX_SNIPPET: usize = 120;
/// Objects with more keys than this are not searched for a suggestion.
const MAX_KEYS_SEARCHED: usize = 10_000;

/// What a failing render is about.
pub(crate) struct Explanation {
    /// What is undefined and why: ``body.first_name` is not defined (`body` has: ...)`.
    what: String,
    /// The path probably meant, when one is close.
    suggestion: Option<String>,
    /// The path that is undefined, up to the missing segment (`body.first_name`).
    pub variable: String,
}

/// The failing tag (`{{ ... }}` or `{% ... %}`) around `range` in a template source, or the
/// whole source when it is short and there is no range.
pub(crate) fn tag_at(source: &str, range: Option<Range<usize>>) -> Option<String> {
    let Some(range) = range else {
        return (source.len() <= MAX_SNIPPET).then(|| shorten(source.trim()));
    };
    let start = range.start.min(source.len());
    let before = source.get(..start)?;
    let (open, close) = match (before.rfind("{{"), before.rfind("{%")) {
        (Some(a), Some(b)) if b > a => (b, "%}"),
        (Some(a), _) => (a, "}}"),
        (None, Some(b)) => (b, "%}"),
        (None, None) => return None,
    };
    let from = range.end.max(open + 2).min(source.len());
    let end = from + source.get(from..)?.find(close)? + 2;
    Some(shorten(source.get(open..end)?))
}

/// An expression, as quoted in a message.
pub(crate) fn quote_expression(expr: &str) -> String {
    shorten(expr.trim())
}

fn shorten(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= MAX_SNIPPET {
        return one_line;
    }
    let cut: String = one_line.chars().take(MAX_SNIPPET - 1).collect();
    format!("{cut}…")
}

/// Finds the undefined path among `paths` (the nested undeclared variables of the failing
/// source) and explains it. `snippet` is the failing tag or expression: paths used in it are
/// tried first, in the order they appear. `hint` is minijinja's own detail, which names the
/// failing expression in debug mode. `is_global` tells names of functions such as `now`.
pub(crate) fn explain(
    paths: HashSet<String>,
    snippet: Option<&str>,
    hint: Option<&str>,
    ctx: &Value,
    is_global: impl Fn(&str) -> bool,
) -> Option<Explanation> {
    let hinted = hint.and_then(|h| h.split('`').nth(1));
    let mut candidates: Vec<(usize, String)> = paths
        .into_iter()
        .filter(|p| {
            let root = p.split('.').next().unwrap_or(p);
            !is_global(root) || is_defined(&ctx.get_attr(root))
        })
        .filter_map(|p| match snippet {
            Some(s) => position_in(s, &p).map(|pos| (pos, p)),
            None => Some((0, p)),
        })
        .collect();
    candidates.sort();
    // minijinja's detail, when it names a path used here, is the one that failed.
    if let Some(h) = hinted
        && let Some(i) = candidates.iter().position(|(_, p)| p == h)
    {
        let c = candidates.remove(i);
        candidates.insert(0, c);
    }
    candidates.into_iter().find_map(|(_, p)| probe(ctx, &p))
}

/// Walks `path` from the context; explains the first segment that cannot be followed.
fn probe(ctx: &Value, path: &str) -> Option<Explanation> {
    let segments: Vec<&str> = path.split('.').collect();
    let mut current = ctx.clone();
    for (i, seg) in segments.iter().enumerate() {
        let so_far = segments[..i].join(".");
        let here = segments[..=i].join(".");
        if i > 0 {
            match current.kind() {
                ValueKind::None => {
                    return Some(Explanation {
                        what: format!("`{so_far}` is null, so `{here}` is undefined"),
                        suggestion: None,
                        variable: here,
                    });
                }
                ValueKind::Map => {}
                kind => {
                    let next = current.get_attr(seg);
                    if !is_defined(&next) {
                        return Some(Explanation {
                            what: format!(
                                "`{so_far}` is {}, so `{here}` is undefined",
                                describe_kind(kind)
                            ),
                            suggestion: None,
                            variable: here,
                        });
                    }
                }
            }
        }
        let next = current.get_attr(seg);
        if !is_defined(&next) {
            let owner = if i == 0 { None } else { Some(so_far.as_str()) };
            return Some(missing(&current, owner, seg, &here));
        }
        current = next.unwrap_or_default();
    }
    None
}

fn is_defined(v: &Result<Value, minijinja::Error>) -> bool {
    matches!(v, Ok(v) if !v.is_undefined())
}

/// `here` is not defined in `container` (the context itself when `owner` is `None`, whose
/// `__` names are the engine's own and not listed).
fn missing(container: &Value, owner: Option<&str>, name: &str, here: &str) -> Explanation {
    let at_root = owner.is_none();
    let mut keys: Vec<String> = container
        .try_iter()
        .map(|it| {
            it.take(MAX_KEYS_SEARCHED)
                .map(|k| k.as_str().map_or_else(|| k.to_string(), str::to_owned))
                .filter(|k| !(at_root && k.starts_with("__")))
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys.dedup();
    let listed = match (owner, keys.is_empty()) {
        (Some(o), true) => format!(" (`{o}` is empty)"),
        (None, true) => " (no variables are defined)".to_owned(),
        (Some(o), false) => format!(" (`{o}` has: {})", list_keys(&keys)),
        (None, false) => format!(" (variables: {})", list_keys(&keys)),
    };
    Explanation {
        what: format!("`{here}` is not defined{listed}"),
        suggestion: closest(name, &keys).map(|k| match owner {
            Some(o) => format!("{o}.{k}"),
            None => k.to_owned(),
        }),
        variable: here.to_owned(),
    }
}

impl Explanation {
    /// The full message: what is undefined, where, and what was probably meant.
    pub(crate) fn render(&self, snippet: Option<&str>) -> String {
        let mut out = format!("undefined value: {}", self.what);
        if let Some(s) = snippet {
            out.push_str(&format!(" in `{s}`"));
        }
        if let Some(s) = &self.suggestion {
            out.push_str(&format!("; did you mean `{s}`?"));
        }
        out
    }
}

fn list_keys(keys: &[String]) -> String {
    let shown = keys[..keys.len().min(MAX_KEYS_SHOWN)].join(", ");
    if keys.len() > MAX_KEYS_SHOWN {
        format!("{shown} and {} more", keys.len() - MAX_KEYS_SHOWN)
    } else {
        shown
    }
}

/// The key `name` was most likely meant to be: the same but for case, `_` and `-`, or within
/// a small edit distance. Stricter than the definition checker's, because a context's keys
/// are often near each other (`first_name`, `last_name`) without being typos of each other.
fn closest<'a>(name: &str, keys: &'a [String]) -> Option<&'a str> {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let target = squash(name);
    if let Some(k) = keys.iter().find(|k| squash(k) == target) {
        return Some(k);
    }
    keys.iter()
        .map(|k| (strsim::damerau_levenshtein(&target, &squash(k)), k))
        .filter(|(d, k)| *d <= k.chars().count().max(name.chars().count()) / 4)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

fn describe_kind(kind: ValueKind) -> &'static str {
    match kind {
        ValueKind::Bool => "a boolean",
        ValueKind::Number => "a number",
        ValueKind::String => "a string",
        ValueKind::Bytes => "bytes",
        ValueKind::Seq | ValueKind::Iterable => "a list",
        ValueKind::Map => "a map",
        ValueKind::None => "null",
        ValueKind::Undefined => "undefined",
        _ => "a value without attributes",
    }
}

/// Where `path` is used in `text`, as a whole path (not part of a longer name).
fn position_in(text: &str, path: &str) -> Option<usize> {
    let is_name = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(i) = text[from..].find(path) {
        let at = from + i;
        let before = text[..at].chars().next_back();
        let after = text[at + path.len()..].chars().next();
        if !before.is_some_and(|c| is_name(c) || c == '.') && !after.is_some_and(is_name) {
            return Some(at);
        }
        from = at + path.len().max(1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::{JsonNode, RenderError, Templates};
    use std::sync::Arc;

    fn ctx() -> Value {
        JsonNode::root(Arc::new(serde_json::json!({
            "body": {"email": "ada@example.com", "last_name": "Lovelace", "frist_name": "Ada",
                     "items": [{"id": 1}], "name": "ada", "n": 3},
            "contact": null,
            "steps": {"fetch": {"output": {"status": 200}}},
        })))
    }

    fn inline_err(src: &str) -> RenderError {
        Templates::empty(10_000)
            .render_str(src, &ctx())
            .unwrap_err()
    }

    #[test]
    fn an_undefined_attribute_is_named_with_its_siblings() {
        let e = inline_err("Hi {{ body.first_name | title }}!");
        assert_eq!(
            e.message,
            "undefined value: `body.first_name` is not defined (`body` has: email, frist_name, \
             items, last_name, n, name) in `{{ body.first_name | title }}`; did you mean \
             `body.frist_name`?"
        );
        assert_eq!(e.variable.as_deref(), Some("body.first_name"));
        assert_eq!(
            e.expression.as_deref(),
            Some("{{ body.first_name | title }}")
        );
    }

    #[test]
    fn a_whole_value_that_is_undefined_is_an_error_not_null() {
        let t = Templates::empty(10_000);
        let e = t.render_value_str("{{ body.emial }}", &ctx()).unwrap_err();
        assert!(
            e.message
                .starts_with("undefined value: `body.emial` is not defined (`body` has: "),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("did you mean `body.email`?"),
            "{}",
            e.message
        );
        let e = t.eval("steps.fetch.output.body", &ctx()).unwrap_err();
        assert_eq!(e.variable.as_deref(), Some("steps.fetch.output.body"));
        // A value that is there, even null, is not undefined.
        assert_eq!(
            t.render_value_str("{{ contact }}", &ctx()).unwrap(),
            serde_json::Value::Null
        );
        assert_eq!(
            t.render_value_str("{{ body.x | default(none) }}", &ctx())
                .unwrap(),
            serde_json::Value::Null
        );
    }

    #[test]
    fn the_failing_tag_is_found_among_several() {
        // `body.x` is guarded by `default`; `body.y` is the one that fails.
        let e =
            inline_err("{{ body.x | default('') }} and {% if body.email %}{{ body.y }}{% endif %}");
        assert!(
            e.message
                .starts_with("undefined value: `body.y` is not defined (`body` has: "),
            "{}",
            e.message
        );
        assert!(e.message.ends_with(" in `{{ body.y }}`"), "{}", e.message);
        let e = inline_err("{% if steps.fetch.output.code == 200 %}ok{% endif %}");
        assert_eq!(
            e.message,
            "undefined value: `steps.fetch.output.code` is not defined (`steps.fetch.output` \
             has: status) in `{% if steps.fetch.output.code == 200 %}`"
        );
    }

    #[test]
    fn a_missing_root_lists_the_variables() {
        let e = inline_err("{{ contcat.email }}");
        assert_eq!(
            e.message,
            "undefined value: `contcat` is not defined (variables: body, contact, steps) in \
             `{{ contcat.email }}`; did you mean `contact`?"
        );
        assert_eq!(e.variable.as_deref(), Some("contcat"));
    }

    #[test]
    fn null_and_scalars_say_what_they_are() {
        let e = inline_err("Dear {{ contact.first_name }}");
        assert_eq!(
            e.message,
            "undefined value: `contact` is null, so `contact.first_name` is undefined in \
             `{{ contact.first_name }}`"
        );
        assert_eq!(e.variable.as_deref(), Some("contact.first_name"));
        let e = inline_err("{{ body.name.first }}");
        assert!(
            e.message
                .starts_with("undefined value: `body.name` is a string, so `body.name.first`"),
            "{}",
            e.message
        );
        let e = inline_err("{{ body.items.first }}");
        assert!(
            e.message.contains("`body.items` is a list"),
            "{}",
            e.message
        );
    }

    #[test]
    fn expressions_and_values_quote_themselves() {
        let t = Templates::empty(10_000);
        let e = t.is_true("body.count > 2", &ctx()).unwrap_err();
        assert!(
            e.message
                .starts_with("undefined value: `body.count` is not defined"),
            "{}",
            e.message
        );
        assert!(e.message.ends_with(" in `body.count > 2`"), "{}", e.message);
        let e = t.eval("contact.phone | phone", &ctx()).unwrap_err();
        assert_eq!(
            e.message,
            "undefined value: `contact` is null, so `contact.phone` is undefined in \
             `contact.phone | phone`"
        );
        let e = t
            .render_json(
                &serde_json::json!({"to": "{{ body.emial | lower }}"}),
                &ctx(),
            )
            .unwrap_err();
        assert!(
            e.message
                .ends_with(" in `{{ body.emial | lower }}`; did you mean `body.email`?"),
            "{}",
            e.message
        );
    }

    #[test]
    fn loop_variables_fall_back_to_the_failing_tag() {
        let e = inline_err("{% for i in body.items %}{{ i.name }}{% endfor %}");
        assert_eq!(
            e.message,
            "undefined value: `i.name` is undefined in `{{ i.name }}`"
        );
        assert_eq!(e.variable, None);
        let e = inline_err("{{ body.items[3].id }}");
        assert!(
            e.message.ends_with(" in `{{ body.items[3].id }}`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn template_files_keep_their_name_and_line() {
        let (t, diags) = Templates::from_sources(
            vec![(
                "emails/offer.txt.j2".to_owned(),
                "Hello,\n\nYou are approved for {{ body.offer.amount }}.\n".to_owned(),
            )],
            std::path::Path::new("templates"),
            10_000,
        );
        assert!(diags.is_empty());
        let e = t.render_in("emails/offer.txt.j2", &ctx()).unwrap_err();
        assert_eq!(e.template.as_deref(), Some("emails/offer.txt.j2"));
        assert_eq!(e.line, Some(3));
        assert!(
            e.message
                .starts_with("undefined value: `body.offer` is not defined (`body` has: "),
            "{}",
            e.message
        );
        assert!(
            e.message.ends_with(" in `{{ body.offer.amount }}`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn functions_are_not_mistaken_for_variables() {
        let e = inline_err("{{ now() }} {{ body.when }}");
        assert_eq!(e.variable.as_deref(), Some("body.when"));
    }

    #[test]
    fn long_key_lists_are_cut() {
        let keys: serde_json::Map<String, serde_json::Value> =
            (0..12).map(|i| (format!("k{i:02}"), 1.into())).collect();
        let ctx = JsonNode::root(Arc::new(serde_json::json!({ "body": keys })));
        let e = Templates::empty(10_000)
            .render_str("{{ body.zz }}", &ctx)
            .unwrap_err();
        assert!(
            e.message
                .contains("(`body` has: k00, k01, k02, k03, k04, k05, k06, k07 and 4 more)"),
            "{}",
            e.message
        );
    }

    #[test]
    fn other_errors_are_unchanged() {
        let e = inline_err("{{ body.n | nosuchfilter }}");
        assert!(e.message.starts_with("unknown filter"), "{}", e.message);
        assert_eq!(e.variable, None);
    }

    #[test]
    fn the_failing_tag_is_quoted() {
        let src = "Hi {{ a }},\n{% if b.c %}{{ d | title }}{% endif %}";
        let d = src.find("title").unwrap();
        assert_eq!(
            tag_at(src, Some(d..d + 5)).as_deref(),
            Some("{{ d | title }}")
        );
        let b = src.find("b.c").unwrap();
        assert_eq!(tag_at(src, Some(b..b + 3)).as_deref(), Some("{% if b.c %}"));
        assert_eq!(tag_at("{{ x }}", None).as_deref(), Some("{{ x }}"));
        assert_eq!(tag_at(&"x".repeat(500), None), None);
        let long = format!("{{{{ {} }}}}", "a".repeat(300));
        assert!(tag_at(&long, Some(3..10)).unwrap().ends_with('…'));
    }

    #[test]
    fn whole_paths_only() {
        assert_eq!(
            position_in("body.first_name | title", "body.first_name"),
            Some(0)
        );
        assert_eq!(position_in("nobody.first_name", "body.first_name"), None);
        assert_eq!(position_in("x.body.a", "body.a"), None);
        assert_eq!(position_in("body.ab", "body.a"), None);
        assert_eq!(position_in("a ~ body.a", "body.a"), Some(4));
    }

    #[test]
    fn suggestions_are_close_names_only() {
        let keys: Vec<String> = ["email", "first_name", "last_name", "phone"]
            .map(String::from)
            .to_vec();
        assert_eq!(closest("frist_name", &keys), Some("first_name"));
        assert_eq!(closest("firstName", &keys), Some("first_name"));
        assert_eq!(closest("emial", &keys), Some("email"));
        assert_eq!(closest("first_nam", &keys), Some("first_name"));
        assert_eq!(closest("n", &["y".to_owned()]), None);
        // Near in spelling but a different field: no suggestion.
        assert_eq!(closest("middle_name", &keys), None);
        assert_eq!(closest("zip", &keys), None);
    }
}
