//! An audience's conditions on attributes and dates, as SQL over the contact `c`. Every name
//! and value is a bound parameter; the SQL text depends only on the shape of the tests.

use std::fmt::Write as _;

use super::{AttributeKind, Dialect, Param};
use crate::store::campaigns::{AttributeMatch, AudienceFilter, Scalar};

/// Appends ` AND ...` for each attribute and creation-date test of `audience` to `sql`, its
/// values to `p`.
pub(super) fn conditions<D: Dialect>(
    audience: &AudienceFilter,
    sql: &mut String,
    p: &mut Vec<Param>,
) {
    for (name, test) in &audience.attributes {
        let name = bind(p, Param::from(D::label_name(name)));
        let read = |kind| D::attribute(&name, kind);
        let cond = match test {
            AttributeMatch::Eq(v) => equals::<D>(&name, v, p),
            AttributeMatch::Ne(v) => not_equal::<D>(&name, v, p),
            AttributeMatch::In(vs) => any_of(vs.iter().map(|v| equals::<D>(&name, v, p)).collect()),
            AttributeMatch::NotIn(vs) => {
                all_of(vs.iter().map(|v| not_equal::<D>(&name, v, p)).collect())
            }
            AttributeMatch::Gt(n) => compare(read(AttributeKind::Number), ">", Param::Float(*n), p),
            AttributeMatch::Gte(n) => {
                compare(read(AttributeKind::Number), ">=", Param::Float(*n), p)
            }
            AttributeMatch::Lt(n) => compare(read(AttributeKind::Number), "<", Param::Float(*n), p),
            AttributeMatch::Lte(n) => {
                compare(read(AttributeKind::Number), "<=", Param::Float(*n), p)
            }
            AttributeMatch::Exists(true) => format!("{} IS NOT NULL", read(AttributeKind::Any)),
            AttributeMatch::Exists(false) => format!("{} IS NULL", read(AttributeKind::Any)),
            AttributeMatch::Before(ms) => {
                compare(read(AttributeKind::Time), "<", Param::Int(Some(*ms)), p)
            }
            AttributeMatch::After(ms) => {
                compare(read(AttributeKind::Time), ">=", Param::Int(Some(*ms)), p)
            }
        };
        let _ = write!(sql, " AND {cond}");
    }
    for test in &audience.created {
        let cond = match test {
            AttributeMatch::Before(ms) => {
                compare("c.created_at".into(), "<", Param::Int(Some(*ms)), p)
            }
            AttributeMatch::After(ms) => {
                compare("c.created_at".into(), ">=", Param::Int(Some(*ms)), p)
            }
            // The engine gives only times for `created`; anything else selects nobody rather
            // than everybody.
            _ => "1 = 0".into(),
        };
        let _ = write!(sql, " AND {cond}");
    }
}

fn bind(p: &mut Vec<Param>, v: Param) -> String {
    p.push(v);
    format!("${}", p.len())
}

fn compare(left: String, op: &str, right: Param, p: &mut Vec<Param>) -> String {
    let right = bind(p, right);
    format!("{left} {op} {right}")
}

/// The attribute read as the value's type, and the value bound to compare with it.
fn typed<D: Dialect>(name: &str, v: &Scalar, p: &mut Vec<Param>) -> (String, String) {
    let (kind, param) = match v {
        Scalar::Text(t) => (AttributeKind::Text, Param::from(t.as_str())),
        Scalar::Number(n) => (AttributeKind::Number, Param::Float(*n)),
        Scalar::Bool(b) => (AttributeKind::Bool, Param::Int(Some(i64::from(*b)))),
    };
    (D::attribute(name, kind), bind(p, param))
}

fn equals<D: Dialect>(name: &str, v: &Scalar, p: &mut Vec<Param>) -> String {
    let (attr, value) = typed::<D>(name, v, p);
    format!("{attr} = {value}")
}

fn not_equal<D: Dialect>(name: &str, v: &Scalar, p: &mut Vec<Param>) -> String {
    let (attr, value) = typed::<D>(name, v, p);
    format!("({attr} IS NULL OR {attr} <> {value})")
}

fn any_of(conds: Vec<String>) -> String {
    if conds.is_empty() {
        return "1 = 0".into();
    }
    format!("({})", conds.join(" OR "))
}

fn all_of(conds: Vec<String>) -> String {
    if conds.is_empty() {
        return "1 = 1".into();
    }
    format!("({})", conds.join(" AND "))
}
