//! Alert cases in `herald test`, as promtool's rule tests: the timeline's events go in, the
//! clock moves, and the alert is evaluated at each of its ticks on the way (with its notices
//! sent through the routes to the recording channels), so `expect.alerts` sees the instances
//! pending or firing at that moment and `expect.sent` the notices.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::alerts::AlertState;
use crate::alerts::tick::{evaluate as evaluate_tick, tick_at};
use crate::definitions::alert::Alert;
use crate::definitions::model::test::ExpectedAlert;
use crate::harness::Harness;

/// Evaluates the alert at the tick the clock is in, then sends what its routes say.
pub(super) async fn evaluate(h: &Harness, alert: &Alert) -> Result<(), String> {
    let engine = &h.engine;
    let now = engine.now();
    evaluate_tick(engine, alert, now)
        .await
        .map_err(|e| format!("the alert could not be evaluated: {e}"))?;
    let registry = engine.registry();
    crate::alerts::notify::round(&*engine.store, &registry, &engine.env, now)
        .await
        .map_err(|e| format!("the alert's notices could not be written: {e}"))?;
    h.settle().await.map_err(|e| e.to_string())
}

/// Moves the clock by `by`, evaluating the alert at every tick on the way.
pub(super) async fn advance(h: &Harness, alert: &Alert, by: Duration) -> Result<(), String> {
    let until = h.engine.now() + i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
    let every = alert.def.every.as_millis_i64().max(1);
    loop {
        let now = h.engine.now();
        let next = tick_at(alert, now).saturating_add(every);
        if next > until {
            break;
        }
        h.advance(Duration::from_millis((next - now) as u64))
            .await
            .map_err(|e| e.to_string())?;
        evaluate(h, alert).await?;
    }
    let now = h.engine.now();
    h.advance(Duration::from_millis((until - now).max(0) as u64))
        .await
        .map_err(|e| e.to_string())
}

/// An instance pending or firing now, as a test sees it.
#[derive(Debug, Clone)]
pub(super) struct Instance {
    state: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    value: Option<f64>,
}

pub(super) async fn instances(h: &Harness, alert: &Alert) -> Result<Vec<Instance>, String> {
    let registry = h.engine.registry();
    let rows = h
        .engine
        .store
        .alert_instances(alert.id())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for i in rows {
        if i.phase != "pending" && i.phase != "firing" {
            continue;
        }
        let group: BTreeMap<String, String> =
            serde_json::from_str(&i.group_key).unwrap_or_default();
        let value = serde_json::from_str::<AlertState>(&i.state)
            .ok()
            .and_then(|s| s.value);
        let r = crate::alerts::render::render(alert, &group, value, &registry.templates)?;
        out.push(Instance {
            state: i.phase,
            labels: r.labels,
            annotations: r.annotations,
            value,
        });
    }
    Ok(out)
}

fn fits(want: &ExpectedAlert, got: &Instance) -> bool {
    got.state == want.state.as_str()
        && want
            .labels
            .iter()
            .all(|(k, v)| got.labels.get(k) == Some(v))
        && want
            .annotations
            .iter()
            .all(|(k, v)| got.annotations.get(k) == Some(v))
        && want.value.is_none_or(|w| {
            got.value
                .is_some_and(|g| (g - w).abs() <= 1e-9 * w.abs().max(1.0))
        })
}

/// Whether the instances are the expected ones, each matched by a different one, and no
/// more; `None` when they are, else the expected and actual lists as text.
pub(super) fn compare(want: &[ExpectedAlert], got: &[Instance]) -> Option<(String, String)> {
    let mut used = vec![false; got.len()];
    let mut all = want.len() == got.len();
    for w in want {
        match (0..got.len()).find(|&k| !used[k] && fits(w, &got[k])) {
            Some(k) => used[k] = true,
            None => all = false,
        }
    }
    if all {
        return None;
    }
    let expected = if want.is_empty() {
        "(no alert pending or firing)\n".to_owned()
    } else {
        want.iter()
            .map(|w| {
                let mut s = format!("- state: {}\n", w.state.as_str());
                lines(&mut s, "labels", w.labels.iter());
                lines(&mut s, "annotations", w.annotations.iter());
                if let Some(v) = w.value {
                    s.push_str(&format!("  value: {v}\n"));
                }
                s
            })
            .collect()
    };
    let actual = if got.is_empty() {
        "(no alert pending or firing)\n".to_owned()
    } else {
        got.iter()
            .map(|g| {
                let mut s = format!("- state: {}\n", g.state);
                lines(&mut s, "labels", g.labels.iter());
                lines(&mut s, "annotations", g.annotations.iter());
                match g.value {
                    Some(v) => s.push_str(&format!("  value: {v}\n")),
                    None => s.push_str("  value: (no data)\n"),
                }
                s
            })
            .collect()
    };
    Some((expected, actual))
}

fn lines<'a>(s: &mut String, name: &str, kv: impl Iterator<Item = (&'a String, &'a String)>) {
    let kv: Vec<String> = kv.map(|(k, v)| format!("{k}: {v:?}")).collect();
    if !kv.is_empty() {
        s.push_str(&format!("  {name}: {{ {} }}\n", kv.join(", ")));
    }
}
