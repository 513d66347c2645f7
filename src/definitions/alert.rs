//! `kind: alert`, read: the schema-checked document, with its thresholds parsed, so a
//! condition that is not a comparison is reported at its own `file:line:col`. The semantic pass
//! (`semantic_alert.rs`) checks the rest against the project, and `crate::alerts` evaluates it.

use std::fmt;

use super::diagnostics::Diagnostic;
use super::model::alert::AlertDef;
use super::schema::{SchemaKind, Schemas};
use super::source::{Parsed, SourceFile};
use super::{Body, Definition, content_hash, deserialize, env};

/// An alert with its thresholds parsed.
#[derive(Debug, Clone)]
pub struct Alert {
    pub def: AlertDef,
    pub condition: Threshold,
    /// The threshold a firing alert must cross to resolve; without one, it resolves when the
    /// condition stops holding.
    pub resolve: Option<Threshold>,
}

impl Alert {
    pub fn id(&self) -> &str {
        &self.def.id.0
    }

    /// Whether a firing alert with this value resolves (before `keep_firing_for`).
    pub fn resolves_at(&self, value: f64) -> bool {
        match &self.resolve {
            Some(r) => r.holds(value),
            None => !self.condition.holds(value),
        }
    }
}

/// A comparison with a number: `> 0.05`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub op: Op,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    /// `>` and `>=` fire on high values, `<` and `<=` on low ones.
    pub fn direction(self) -> Option<bool> {
        match self {
            Op::Gt | Op::Ge => Some(true),
            Op::Lt | Op::Le => Some(false),
            Op::Eq | Op::Ne => None,
        }
    }
}

impl Threshold {
    pub fn parse(text: &str) -> Result<Threshold, String> {
        let t = text.trim();
        let (op, rest) = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            (">", Op::Gt),
            ("<", Op::Lt),
        ]
        .into_iter()
        .find_map(|(s, op)| t.strip_prefix(s).map(|rest| (op, rest.trim())))
        .ok_or_else(|| {
            format!(
                "`{text}` is not a threshold: write a comparison and a number, such as `> 0.05` or `< 95`"
            )
        })?;
        let (number, percent) = match rest.strip_suffix('%') {
            Some(n) => (n.trim(), true),
            None => (rest, false),
        };
        let value: f64 = number.parse().map_err(|_| {
            format!("`{rest}` in `{text}` is not a number: write a threshold such as `> 0.05`")
        })?;
        if !value.is_finite() {
            return Err(format!("`{rest}` in `{text}` is not a finite number"));
        }
        Ok(Threshold {
            op,
            value: if percent { value / 100.0 } else { value },
        })
    }

    pub fn holds(&self, v: f64) -> bool {
        match self.op {
            Op::Gt => v > self.value,
            Op::Ge => v >= self.value,
            Op::Lt => v < self.value,
            Op::Le => v <= self.value,
            Op::Eq => v == self.value,
            Op::Ne => v != self.value,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op.symbol(), self.value)
    }
}

pub(super) fn read(file: SourceFile, doc: Parsed) -> Result<Definition, Vec<Diagnostic>> {
    let errors = Schemas::get().validate(SchemaKind::Alert, &file, &doc);
    if !errors.is_empty() {
        return Err(errors);
    }
    let def: AlertDef = deserialize(&file, &doc)?;
    let mut errors = Vec::new();
    let mut threshold = |pointer: &str, text: &str| match Threshold::parse(text) {
        Ok(t) => Some(t),
        Err(e) => {
            let d = Diagnostic::error("invalid-threshold", e).with_hint(
                "a threshold is one of >, >=, <, <=, ==, != and a number (`5%` is 0.05)",
            );
            errors.push(file.locate(d, doc.index.value(pointer)));
            None
        }
    };
    let condition = threshold("/condition", &def.condition);
    let resolve = def.resolve.as_deref().map(|r| threshold("/resolve", r));
    let (Some(condition), None | Some(Some(_))) = (condition, &resolve) else {
        return Err(errors);
    };
    let alert = Alert {
        condition,
        resolve: resolve.flatten(),
        def,
    };
    Ok(Definition {
        id: alert.id().to_owned(),
        hash: content_hash(&doc.value),
        env_strings: env::env_strings(&doc.value),
        body: Body::Alert(Box::new(alert)),
        file,
        doc,
    })
}
