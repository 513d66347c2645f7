//! `set`: names values in `vars`, each rendered against the ones set before it.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use minijinja::value::{Serde, Value as JValue, merge_maps};
use serde_json::{Map, Value};

use super::StepCx;
use crate::definitions::model::common::Ident;
use crate::engine::interpreter::{Outcome, StepError, grow};

pub(super) fn execute(
    mut cx: StepCx<'_>,
    vars: &IndexMap<Ident, Value>,
) -> Result<Outcome, StepError> {
    let mut out = Map::new();
    // Each value sees the ones set before it.
    let mut all_vars = cx
        .run
        .ctx
        .get("vars")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (name, value) in vars {
        let layer = BTreeMap::from([("vars".to_owned(), JValue::from(Serde(&all_vars)))]);
        let local = merge_maps([cx.ctx().clone(), JValue::from(layer)]);
        let rendered = cx.templates().render_json(value, &local)?;
        all_vars.insert(name.0.clone(), rendered.clone());
        out.insert(name.0.clone(), rendered);
    }
    // Checked before the variables are kept, so a failed step leaves the context as it was.
    let out = Value::Object(out);
    let limits = &cx.host.registry.config.limits;
    cx.context_mut();
    grow(cx.run, &out, limits).map_err(StepError::Permanent)?;
    if let Some(obj) = cx.context_mut().as_object_mut() {
        obj.insert("vars".into(), Value::Object(all_vars));
    }
    Ok(Outcome::Done(out))
}
