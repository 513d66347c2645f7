//! `${env:NAME}` references: how secrets get into definitions and the config without being
//! written in them.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use regex::Regex;

/// A reference found in a string: its name and its byte range in the string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvRef {
    pub name: String,
    pub start: usize,
    pub len: usize,
}

fn pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\$\{env:([^}]*)\}").expect("valid regex"))
}

fn name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The references in `text`. Malformed names are returned with `Err`.
pub(crate) fn references(text: &str) -> Vec<Result<EnvRef, EnvRef>> {
    if !text.contains("${env:") {
        return Vec::new();
    }
    pattern()
        .captures_iter(text)
        .map(|c| {
            let whole = c.get(0).expect("group 0 always matches");
            let r = EnvRef {
                name: c[1].to_owned(),
                start: whole.start(),
                len: whole.len(),
            };
            if name_ok(&r.name) { Ok(r) } else { Err(r) }
        })
        .collect()
}

/// The strings under `value` that hold `${env:` (references, or malformed ones), each with its
/// JSON pointer, in document order.
pub(crate) fn env_strings(value: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(value: &serde_json::Value, pointer: &mut String, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::String(s) if s.contains("${env:") => {
                out.push((pointer.clone(), s.clone()));
            }
            serde_json::Value::Array(items) => {
                let len = pointer.len();
                for (i, v) in items.iter().enumerate() {
                    use std::fmt::Write as _;
                    let _ = write!(pointer, "/{i}");
                    walk(v, pointer, out);
                    pointer.truncate(len);
                }
            }
            serde_json::Value::Object(map) => {
                let len = pointer.len();
                for (k, v) in map {
                    pointer.push('/');
                    pointer.push_str(&super::source::escape_token(k));
                    walk(v, pointer, out);
                    pointer.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut String::new(), &mut out);
    out
}

/// Where variables are read from: the process environment, a fixed map (tests), or an env
/// file's values in front of the process environment (`--env-file`).
#[derive(Clone)]
pub enum EnvSource {
    Process,
    Map(Arc<HashMap<String, String>>),
    Overlay(Arc<HashMap<String, String>>),
}

impl EnvSource {
    pub fn get(&self, name: &str) -> Option<String> {
        match self {
            EnvSource::Process => std::env::var(name).ok(),
            EnvSource::Map(m) => m.get(name).cloned(),
            EnvSource::Overlay(m) => m.get(name).cloned().or_else(|| std::env::var(name).ok()),
        }
    }

    /// The process environment with an env file's `NAME=value` lines in front of it. The file
    /// is read, never exported: its values do not leak into child processes.
    pub fn with_env_file(path: &std::path::Path) -> Result<EnvSource, String> {
        let iter = dotenvy::from_path_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut map = HashMap::new();
        for item in iter {
            let (k, v) = item.map_err(|e| describe_env_error(path, &e))?;
            map.insert(k, v);
        }
        Ok(EnvSource::Overlay(Arc::new(map)))
    }

    /// Replaces every reference in `text`. Unset variables are an error naming them.
    pub fn resolve(&self, text: &str) -> Result<String, String> {
        if !text.contains("${env:") {
            return Ok(text.to_owned());
        }
        let mut missing = Vec::new();
        let out = pattern().replace_all(text, |c: &regex::Captures| match self.get(&c[1]) {
            Some(v) => v,
            None => {
                missing.push(c[1].to_owned());
                String::new()
            }
        });
        if missing.is_empty() {
            Ok(out.into_owned())
        } else {
            Err(format!(
                "environment variable `{}` is not set",
                missing.join("`, `")
            ))
        }
    }

    /// Resolves every string inside a JSON value.
    pub(crate) fn resolve_json(&self, value: &mut serde_json::Value) -> Result<(), String> {
        match value {
            serde_json::Value::String(s) if s.contains("${env:") => *s = self.resolve(s)?,
            serde_json::Value::Array(items) => {
                for v in items {
                    self.resolve_json(v)?;
                }
            }
            serde_json::Value::Object(map) => {
                for v in map.values_mut() {
                    self.resolve_json(v)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl fmt::Debug for EnvSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvSource::Process => f.write_str("EnvSource::Process"),
            EnvSource::Map(m) => write!(f, "EnvSource::Map({} vars)", m.len()),
            EnvSource::Overlay(m) => write!(f, "EnvSource::Overlay({} vars)", m.len()),
        }
    }
}

/// A resolved secret. It never prints its value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_resolves_references() {
        let refs = references("Bearer ${env:API_TOKEN} and ${env:bad-name}");
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].as_ref().unwrap().name, "API_TOKEN");
        assert_eq!(refs[0].as_ref().unwrap().start, 7);
        assert!(refs[1].is_err());
        let env = EnvSource::Map(Arc::new(
            [("API_TOKEN".to_owned(), "s3cret".to_owned())].into(),
        ));
        assert_eq!(
            env.resolve("Bearer ${env:API_TOKEN}").unwrap(),
            "Bearer s3cret"
        );
        assert!(env.resolve("${env:NOPE}").unwrap_err().contains("NOPE"));
        assert_eq!(format!("{:?}", Secret::new("s3cret".into())), "Secret(***)");
    }
}

/// An env file's parse error at `file:line:col`. dotenvy reports the offending line's text and
/// a character index in it; the line number is found by looking for that text in the file.
fn describe_env_error(path: &std::path::Path, e: &dotenvy::Error) -> String {
    let dotenvy::Error::LineParse(line, index) = e else {
        return format!("{}: {e}", path.display());
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let first = line.lines().next().unwrap_or_default();
    let number = text
        .lines()
        .position(|l| l == first || l.trim() == first.trim())
        .map(|n| n + 1);
    let at = match number {
        Some(n) => format!("{}:{n}:{}", path.display(), index + 1),
        None => path.display().to_string(),
    };
    format!(
        "{at}: cannot read `{}`: write each setting as NAME=value, quoting values with spaces or special characters",
        first.trim()
    )
}

#[cfg(test)]
mod env_file_tests {
    use super::*;

    #[test]
    fn a_bad_line_is_reported_by_line_and_column() {
        let dir = std::env::temp_dir().join(format!("herald-env-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("app.env");
        std::fs::write(&file, "# secrets\nGOOD=1\nBAD LINE here\n").unwrap();
        let e = EnvSource::with_env_file(&file).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            e.starts_with(&format!("{}:3:", file.display())),
            "the file's own line, not a character index: {e}"
        );
        assert!(e.contains("`BAD LINE here`"), "{e}");
        assert!(e.contains("NAME=value"), "{e}");
    }
}
