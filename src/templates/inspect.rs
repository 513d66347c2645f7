//! What a compiled template refers to by name: filters, tests, functions and other templates
//! (`include`, `extends`, `import`). minijinja looks these up only when a render reaches them,
//! so a misspelt filter in a branch that rarely runs would surface at send time; reading the
//! compiled instructions finds every one, with its position, before anything runs.
//!
//! This reads minijinja's instructions through its `unstable_machinery` API, which may change
//! between minijinja releases; the version is pinned in Cargo.lock, and the tests below say
//! at once if an upgrade changes what it sees.

use std::collections::HashMap;
use std::sync::Mutex;

use minijinja::machinery::{Instruction, Instructions, get_compiled_template};
use minijinja::{Environment, ErrorKind, Template};

/// A name a template uses, and where (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub kind: Kind,
    pub name: String,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Filter,
    Test,
    Function,
    Template,
}

impl Kind {
    pub fn word(self) -> &'static str {
        match self {
            Kind::Filter => "filter",
            Kind::Test => "test",
            Kind::Function => "function",
            Kind::Template => "template",
        }
    }
}

/// Every filter, test, function and template `tmpl` names.
pub(crate) fn references(tmpl: &Template<'_, '_>) -> Vec<Reference> {
    let compiled = get_compiled_template(tmpl);
    let mut out = Vec::new();
    collect(&compiled.instructions, &mut out);
    for block in compiled.blocks.values() {
        collect(block, &mut out);
    }
    out
}

fn collect(instructions: &Instructions<'_>, out: &mut Vec<Reference>) {
    let mut previous: Option<&Instruction<'_>> = None;
    let mut idx = 0u32;
    while let Some(instr) = instructions.get(idx) {
        let at = |idx: u32| {
            instructions
                .get_span(idx)
                .map(|s| (s.start_line as usize, s.start_col as usize + 1))
                .or_else(|| instructions.get_line(idx).map(|l| (l, 1)))
                .unwrap_or((1, 1))
        };
        let found = match instr {
            Instruction::ApplyFilter(name, ..) => Some((Kind::Filter, name.to_string())),
            Instruction::PerformTest(name, ..) => Some((Kind::Test, name.to_string())),
            Instruction::CallFunction(name, ..) => Some((Kind::Function, name.to_string())),
            Instruction::Include(_) | Instruction::LoadBlocks => match previous {
                Some(Instruction::LoadConst(v)) => {
                    v.as_str().map(|s| (Kind::Template, s.to_owned()))
                }
                _ => None,
            },
            _ => None,
        };
        if let Some((kind, name)) = found {
            let (line, column) = at(idx);
            out.push(Reference {
                kind,
                name,
                line,
                column,
            });
        }
        previous = Some(instr);
        idx += 1;
    }
}

/// Remembers, per environment, which names exist: probing costs an evaluation.
#[derive(Debug, Default)]
pub struct Known {
    seen: Mutex<HashMap<(Kind, String), bool>>,
}

impl Known {
    /// Whether `env` has the filter, test or function `name`; templates are checked by the
    /// caller against the files it has.
    pub fn exists(&self, env: &Environment<'_>, kind: Kind, name: &str) -> bool {
        if kind == Kind::Template {
            return true;
        }
        let key = (kind, name.to_owned());
        if let Some(&known) = crate::sync::lock(&self.seen).get(&key) {
            return known;
        }
        let known = match kind {
            // A function is a global value; the builtin ones too.
            Kind::Function => env.globals().any(|(n, _)| n == name),
            Kind::Filter | Kind::Test => {
                let probe = match kind {
                    Kind::Filter => format!("none | {name}"),
                    _ => format!("none is {name}"),
                };
                let missing = match kind {
                    Kind::Filter => ErrorKind::UnknownFilter,
                    _ => ErrorKind::UnknownTest,
                };
                match env.compile_expression(&probe) {
                    Ok(expr) => !matches!(expr.eval(()), Err(e) if e.kind() == missing),
                    // Not an identifier the parser takes: it cannot name anything.
                    Err(_) => false,
                }
            }
            Kind::Template => true,
        };
        crate::sync::lock(&self.seen).insert(key, known);
        known
    }
}

/// The names of `kind` that `env` has, for "did you mean" (a fixed list of the usual ones,
/// checked against the environment).
pub(crate) fn candidates(env: &Environment<'_>, known: &Known, kind: Kind) -> Vec<&'static str> {
    const FILTERS: &[&str] = &[
        "abs",
        "attr",
        "batch",
        "bool",
        "capitalize",
        "count",
        "currency",
        "d",
        "date",
        "dateformat",
        "datetime",
        "datetimeformat",
        "default",
        "dictsort",
        "e",
        "escape",
        "filesizeformat",
        "first",
        "first_name",
        "float",
        "format",
        "fromjson",
        "groupby",
        "hmac_sha256",
        "indent",
        "int",
        "items",
        "join",
        "last",
        "length",
        "lines",
        "list",
        "lower",
        "map",
        "max",
        "min",
        "number",
        "phone",
        "pluralize",
        "reject",
        "rejectattr",
        "replace",
        "reverse",
        "round",
        "safe",
        "select",
        "selectattr",
        "slice",
        "sort",
        "split",
        "string",
        "striptags",
        "sum",
        "timeformat",
        "title",
        "tojson",
        "trim",
        "truncate",
        "truncate_sms",
        "unique",
        "upper",
        "urlencode",
        "wordcount",
        "wordwrap",
        "b64encode",
        "b64decode",
        "add_duration",
        "subtract_duration",
        "add_months",
    ];
    const TESTS: &[&str] = &[
        "boolean",
        "defined",
        "divisibleby",
        "endingwith",
        "eq",
        "even",
        "false",
        "filter",
        "float",
        "ge",
        "gt",
        "in",
        "integer",
        "iterable",
        "le",
        "lower",
        "lt",
        "mapping",
        "ne",
        "none",
        "number",
        "odd",
        "safe",
        "sameas",
        "sequence",
        "startingwith",
        "string",
        "test",
        "true",
        "undefined",
        "upper",
    ];
    let list = match kind {
        Kind::Filter => FILTERS,
        Kind::Test => TESTS,
        _ => &[],
    };
    list.iter()
        .copied()
        .filter(|n| known.exists(env, kind, n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_filters_tests_functions_and_templates_with_positions() {
        let env = crate::templates::environment(10_000);
        let t = env
            .template_from_str(
                "Hi {{ name | frist_name }}\n{% if x is definde %}{{ now() }}{% endif %}\n{% include \"partials/foot.j2\" %}",
            )
            .unwrap();
        let refs = references(&t);
        let find = |kind, name: &str| {
            refs.iter()
                .find(|r| r.kind == kind && r.name == name)
                .cloned()
        };
        let filter = find(Kind::Filter, "frist_name").expect("the filter is seen");
        assert_eq!(filter.line, 1);
        assert!(find(Kind::Test, "definde").is_some(), "{refs:?}");
        assert!(find(Kind::Function, "now").is_some(), "{refs:?}");
        let inc = find(Kind::Template, "partials/foot.j2").expect("the include is seen");
        assert_eq!(inc.line, 3);
        let known = Known::default();
        assert!(!known.exists(&env, Kind::Filter, "frist_name"));
        assert!(known.exists(&env, Kind::Filter, "first_name"));
        assert!(known.exists(&env, Kind::Filter, "upper"));
        assert!(!known.exists(&env, Kind::Test, "definde"));
        assert!(known.exists(&env, Kind::Test, "defined"));
        assert!(known.exists(&env, Kind::Function, "now"));
        assert!(!known.exists(&env, Kind::Function, "nwo"));
        assert!(candidates(&env, &known, Kind::Filter).contains(&"first_name"));
    }
}

/// A sample value each filter with checked arguments accepts, to try a call whose arguments are
/// all literals: `phone(format='internatonal')` fails for every value, so it is a mistake in the
/// definition, not in the data.
const SAMPLES: &[(&str, &str)] = &[
    ("phone", "'+13035550123'"),
    ("currency", "1234.5"),
    ("number", "1234.5"),
    ("b64encode", "'x'"),
    ("b64decode", "'eA=='"),
    ("hmac_sha256", "'x'"),
    ("truncate_sms", "'x'"),
    ("first_name", "'ada'"),
    ("datetimeformat", "'2026-01-01T00:00:00Z'"),
    ("dateformat", "'2026-01-01T00:00:00Z'"),
    ("timeformat", "'2026-01-01T00:00:00Z'"),
    ("datetime", "'2026-01-01T00:00:00Z'"),
    ("add_duration", "'2026-01-01T00:00:00Z' | datetime"),
    ("subtract_duration", "'2026-01-01T00:00:00Z' | datetime"),
];

/// Calls of checked filters whose arguments are all literals and which fail for a sample
/// value: (line, column, the call as written, why it fails).
pub(crate) fn failing_calls(
    env: &Environment<'_>,
    source: &str,
) -> Vec<(usize, usize, String, String)> {
    let mut out = Vec::new();
    for (name, sample) in SAMPLES {
        let needle = format!("{name}(");
        let mut from = 0;
        while let Some(at) = source[from..].find(&needle).map(|i| from + i) {
            from = at + needle.len();
            // A filter call follows a `|`; a function of the same name does not.
            let before = source[..at].trim_end();
            if !before.ends_with('|') {
                continue;
            }
            let Some(len) = closing_paren(&source[at + name.len()..]) else {
                continue;
            };
            let call = &source[at..at + name.len() + len];
            let probe = format!("{sample} | {call}");
            let Ok(expr) = env.compile_expression(&probe) else {
                continue;
            };
            // Only calls whose arguments are literals say something about every value.
            if !expr.undeclared_variables(false).is_empty() {
                continue;
            }
            if let Err(e) = expr.eval(minijinja::context! { __now => "2026-01-01T00:00:00Z" }) {
                let text = &source[..at];
                let line = text.matches('\n').count() + 1;
                let column = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                let why = e
                    .detail()
                    .map(str::to_owned)
                    .unwrap_or_else(|| crate::templates::describe_error(&e));
                out.push((line, column, call.to_owned(), why));
            }
        }
    }
    out
}

/// The length of `(...)` at the start of `text`, quotes respected.
fn closing_paren(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod call_tests {
    use super::*;

    #[test]
    fn a_call_that_fails_for_every_value_is_found() {
        let env = crate::templates::environment(10_000);
        let src = "{{ contact.phone | phone(format='internatonal') }} {{ x | phone(format='national') }}\n{{ amount | currency('EUR', locale=loc) }} {{ a | currency('EUROS', locale='de-DE') }}";
        let found = failing_calls(&env, src);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(
            (found[0].0, found[0].2.as_str()),
            (1, "phone(format='internatonal')")
        );
        assert!(found[0].3.contains("internatonal"), "{found:?}");
        assert_eq!(
            (found[1].0, found[1].2.as_str()),
            (2, "currency('EUROS', locale='de-DE')")
        );
    }
}
