//! A run's JSON context as a minijinja value, without converting it.
//!
//! Converting a context to minijinja values copies all of it, and a webhook body can be large
//! while a template reads three fields of it. [`JsonNode`] wraps the context and converts only
//! what a template touches: each lookup walks from the shared root to the node it needs.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value as JValue};
use serde_json::Value;

#[derive(Debug, Clone)]
enum Seg {
    Key(Arc<str>),
    Index(usize),
}

#[derive(Debug)]
pub struct JsonNode {
    root: Arc<Value>,
    path: Vec<Seg>,
}

impl JsonNode {
    /// The whole context as a template value.
    pub fn root(root: Arc<Value>) -> JValue {
        wrap(&root.clone(), Vec::new(), &root)
    }

    fn node(&self) -> &Value {
        let mut v = &*self.root;
        for seg in &self.path {
            v = match (seg, v) {
                (Seg::Key(k), Value::Object(m)) => m.get(&**k).unwrap_or(&Value::Null),
                (Seg::Index(i), Value::Array(a)) => a.get(*i).unwrap_or(&Value::Null),
                _ => &Value::Null,
            };
        }
        v
    }

    fn child(&self, seg: Seg, v: &Value) -> JValue {
        let mut path = self.path.clone();
        path.push(seg);
        wrap(&self.root, path, v)
    }
}

fn wrap(root: &Arc<Value>, path: Vec<Seg>, v: &Value) -> JValue {
    match v {
        Value::Null => JValue::from(()),
        Value::Bool(b) => JValue::from(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                JValue::from(i)
            } else if let Some(u) = n.as_u64() {
                JValue::from(u)
            } else {
                JValue::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => JValue::from(s.as_str()),
        Value::Array(_) | Value::Object(_) => JValue::from_object(JsonNode {
            root: root.clone(),
            path,
        }),
    }
}

impl Object for JsonNode {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.node() {
            Value::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &JValue) -> Option<JValue> {
        match self.node() {
            Value::Object(m) => {
                let k = key.as_str()?;
                let v = m.get(k)?;
                Some(self.child(Seg::Key(Arc::from(k)), v))
            }
            Value::Array(a) => {
                let i = key.as_usize()?;
                let v = a.get(i)?;
                Some(self.child(Seg::Index(i), v))
            }
            _ => None,
        }
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<JValue> {
        match self.node() {
            Value::Object(m) => m.get(key).map(|v| self.child(Seg::Key(Arc::from(key)), v)),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.node() {
            Value::Object(m) => {
                Enumerator::Values(m.keys().map(|k| JValue::from(k.as_str())).collect())
            }
            Value::Array(a) => Enumerator::Seq(a.len()),
            _ => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        match self.node() {
            Value::Object(m) => Some(m.len()),
            Value::Array(a) => Some(a.len()),
            _ => Some(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_see_the_json_as_values() {
        let env = crate::templates::environment(10_000);
        let ctx = JsonNode::root(Arc::new(serde_json::json!({
            "body": {"name": "ada", "items": [{"id": 1}, {"id": 2}], "n": 2.5, "flag": true, "none": null},
        })));
        let r = |src: &str| env.render_str(src, ctx.clone()).unwrap();
        assert_eq!(r("{{ body.name | first_name }}"), "Ada");
        assert_eq!(r("{{ body['name'] }}"), "ada");
        assert_eq!(
            r("{% for i in body.items %}{{ i.id }},{% endfor %}"),
            "1,2,"
        );
        assert_eq!(
            r("{{ body.items | length }} {{ body.items[-1].id }} {{ body.items[0].id + 1 }}"),
            "2 2 2"
        );
        assert_eq!(
            r("{{ body.n * 2 }} {{ body.flag }} {{ body.none is none }}"),
            "5.0 True True"
        );
        assert_eq!(r("{{ body.items | tojson }}"), r#"[{"id": 1}, {"id": 2}]"#);
        assert_eq!(
            r("{% for k in body %}{{ k }} {% endfor %}"),
            "name items n flag none "
        );
        assert_eq!(
            r("{{ 'name' in body }} {{ body.missing is defined }}"),
            "True False"
        );
        // Strict undefined still applies to what is not there.
        assert!(env.render_str("{{ body.missing }}", ctx.clone()).is_err());
        assert_eq!(r("{{ body.missing | default('x') }}"), "x");
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;
    use minijinja::value::merge_maps;

    /// The engine layers loop variables and `vars` over the context this way.
    #[test]
    fn layered_contexts_resolve_in_order() {
        let env = crate::templates::environment(10_000);
        let root = JsonNode::root(Arc::new(
            serde_json::json!({"body": {"a": 1}, "vars": {"v": "old"}}),
        ));
        let map = |k: &str, v: JValue| {
            JValue::from(std::collections::BTreeMap::from([(k.to_owned(), v)]))
        };
        // The last map given wins.
        let layered = merge_maps([root, map("__now", JValue::from("x"))]);
        let vars = merge_maps([
            layered,
            map(
                "vars",
                JValue::from(std::collections::BTreeMap::from([(
                    "v".to_owned(),
                    JValue::from("new"),
                )])),
            ),
        ]);
        assert_eq!(
            env.render_str("{{ body.a }} {{ __now }} {{ vars.v }}", vars)
                .unwrap(),
            "1 x new"
        );
    }
}
