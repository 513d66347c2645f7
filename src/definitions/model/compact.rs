//! JSON values deserialized at their final size.
//!
//! serde_json builds a nested object with `Map::new()` and an insert per field, so every
//! object keeps room to grow, and a document's data (a `set` of a long list, a large `body`)
//! took about twice its size in the model. These functions, used with
//! `#[serde(deserialize_with)]`, size each object and array from the deserializer's length
//! hint, which deserializing from a parsed document always gives.

use std::fmt;
use std::hash::Hash;

use indexmap::IndexMap;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A `Value` deserialized at its final size.
struct Compact(Value);

impl<'de> Deserialize<'de> for Compact {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Compact, D::Error> {
        d.deserialize_any(CompactVisitor).map(Compact)
    }
}

struct CompactVisitor;

impl<'de> Visitor<'de> for CompactVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Compact(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((k, Compact(v))) = map.next_entry::<String, Compact>()? {
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// For an `Option<Value>` field (with `#[serde(default)]`: a missing field is `None`). As
/// with serde's own `Option`, an explicit `null` is `None` too.
pub(crate) fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Compact::deserialize(d).map(|c| match c.0 {
        Value::Null => None,
        v => Some(v),
    })
}

/// For a map of values, such as `set` or `attributes`.
pub fn map<'de, D, K>(d: D) -> Result<IndexMap<K, Value>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Hash + Eq,
{
    let m = IndexMap::<K, Compact>::deserialize(d)?;
    Ok(m.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// For `set`, boxed.
pub(crate) fn boxed_map<'de, D, K>(d: D) -> Result<Option<Box<IndexMap<K, Value>>>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Hash + Eq,
{
    map(d).map(|m| Some(Box::new(m)))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Deserialize)]
    struct Holder {
        #[serde(default, deserialize_with = "super::option")]
        body: Option<serde_json::Value>,
        #[serde(default, deserialize_with = "super::map")]
        set: indexmap::IndexMap<String, serde_json::Value>,
    }

    #[test]
    fn values_come_out_equal_to_serde_json_s_own() {
        let doc = json!({
            "body": {"a": [1, -2, 2.5, "x", null, true, {"b": {}}, []], "c": {"d": "e"}},
            "set": {"one": {"k": [1, 2]}, "two": "t"}
        });
        let h: Holder = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(h.body.as_ref(), doc.get("body"));
        assert_eq!(serde_json::to_value(&h.set).unwrap(), doc["set"]);
        let none: Holder = serde_json::from_value(json!({})).unwrap();
        assert!(none.body.is_none() && none.set.is_empty());
        let null: Holder = serde_json::from_value(json!({"body": null})).unwrap();
        assert!(
            null.body.is_none(),
            "an explicit null is None, as serde's Option has it"
        );
    }
}
