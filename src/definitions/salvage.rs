//! Stand-ins for the parts of a definition that break its schema, so the rest can still be
//! checked (see `read_definition_salvaging`). A broken step becomes an empty `set` with the
//! same id, so references to it do not cascade; a broken trigger becomes an event trigger on a
//! name nothing emits; a broken optional top-level field is dropped. Array positions are kept,
//! so every other diagnostic still points at the right place.

use serde_json::{Value, json};

/// Keys whose value is a list of steps.
const STEP_LISTS: &[&str] = &["steps", "then", "else", "default", "try", "on_error"];

/// Top-level fields a definition cannot do without.
const REQUIRED: &[&str] = &["kind", "id", "steps"];

/// Patches the value a schema error at `pointer` is about. False when nothing can stand in.
pub(super) fn patch(root: &mut Value, pointer: &str) -> bool {
    let segments: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    if segments.is_empty() {
        return false;
    }
    // The deepest step that holds the error.
    let mut step_at = None;
    for i in 1..segments.len() {
        if segments[i].parse::<usize>().is_err() {
            continue;
        }
        let list = segments[i - 1].as_str();
        let in_cases = i >= 2 && segments[i - 2] == "cases";
        if STEP_LISTS.contains(&list) || in_cases {
            step_at = Some(i);
        }
    }
    if segments[0] == "steps"
        && let Some(i) = step_at
    {
        let id_broken = segments.get(i + 1).is_some_and(|s| s == "id");
        return replace(root, &segments[..=i], |old| {
            let id = old
                .get("id")
                .filter(|_| !id_broken)
                .and_then(Value::as_str)
                .map(str::to_owned);
            match id {
                Some(id) => json!({"id": id, "set": {}}),
                None => json!({"set": {}}),
            }
        });
    }
    if segments[0] == "triggers" && segments.len() >= 2 && segments[1].parse::<usize>().is_ok() {
        return replace(
            root,
            &segments[..2],
            |_| json!({"event": {"name": "__herald_invalid_trigger"}}),
        );
    }
    if !REQUIRED.contains(&segments[0].as_str())
        && let Some(m) = root.as_object_mut()
    {
        m.remove(&segments[0]);
        return true;
    }
    false
}

fn replace(root: &mut Value, path: &[String], make: impl FnOnce(&Value) -> Value) -> bool {
    let mut at = root;
    for seg in path {
        at = match at {
            Value::Object(m) => match m.get_mut(seg) {
                Some(v) => v,
                None => return false,
            },
            Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    *at = make(at);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_nested_step_becomes_an_empty_set_with_its_id() {
        let mut v = json!({"kind": "workflow", "id": "w", "steps": [
            {"id": "a", "if": "x", "then": [{"id": "inner", "wait": "1 hour"}]},
        ]});
        assert!(patch(&mut v, "/steps/0/then/0/wait"));
        assert_eq!(v["steps"][0]["then"][0], json!({"id": "inner", "set": {}}));
        assert_eq!(v["steps"][0]["if"], "x", "the enclosing step is kept");
        let mut v = json!({"kind": "workflow", "id": "w", "steps": [{"id": 5, "set": {}}]});
        assert!(patch(&mut v, "/steps/0/id"));
        assert_eq!(v["steps"][0], json!({"set": {}}));
    }

    #[test]
    fn triggers_and_optional_fields_are_replaced_or_dropped_but_not_required_ones() {
        let mut v = json!({"kind": "workflow", "id": "w", "on_update": "sometimes",
            "triggers": [{"cron": {"schedule": 5}}], "steps": []});
        assert!(patch(&mut v, "/triggers/0/cron/schedule"));
        assert_eq!(
            v["triggers"][0]["event"]["name"],
            "__herald_invalid_trigger"
        );
        assert!(patch(&mut v, "/on_update"));
        assert!(v.get("on_update").is_none());
        assert!(!patch(&mut v, "/id"));
        assert!(!patch(&mut v, ""));
    }
}
