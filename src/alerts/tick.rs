//! One evaluation tick of an alert against the store: the events in its window, each group's
//! stored state moved one step, and the changes written with the tick's claim in one
//! transaction. Ticks are aligned to the alert's `every` and evaluated at the tick's time, not
//! the clock's, so every process that tries a tick computes the same thing, and exactly one
//! of them records it.

use std::collections::BTreeMap;

use super::aggregate::{Event, evaluate as evaluate_events};
use super::state::{AlertState, Phase, Transition, step};
use crate::definitions::alert::Alert;
use crate::definitions::model::alert::{AlertSource, MetricName, MetricSource};
use crate::store::{AlertInstance, Millis, Result, Store};

/// A transition one tick decided, for whoever is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub labels: BTreeMap<String, String>,
    pub transition: Transition,
    pub value: Option<f64>,
}

/// What a tick did. `recorded` is false when another process (or an earlier call) had
/// already claimed the tick: its changes are then not this caller's to notify.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub at: Millis,
    pub recorded: bool,
    pub changes: Vec<Change>,
}

/// The tick that `now` falls in: the last multiple of `every` at or before it.
pub fn tick_at(alert: &Alert, now: Millis) -> Millis {
    let every = alert.def.every.as_millis_i64().max(1);
    now - now.rem_euclid(every)
}

/// Evaluates the tick `now` falls in, reading what the alert's source reads: its events, or
/// a fresh check of its probe. `None` for a source that is not evaluated yet.
pub async fn evaluate(
    engine: &crate::engine::Engine,
    alert: &Alert,
    now: Millis,
) -> Result<Option<Tick>> {
    match &alert.def.source {
        AlertSource::Probe(p) => {
            // Each process that tries the tick checks; the store's claim decides whose
            // result is recorded.
            let result = super::probe::check(engine, p, now).await;
            run_probe_tick(&*engine.store, alert, now, result)
                .await
                .map(Some)
        }
        AlertSource::Metric(m) => run_metric_tick(&*engine.store, alert, m, now)
            .await
            .map(Some),
        AlertSource::Events(_) => run_tick(&*engine.store, alert, now).await,
    }
}

/// Evaluates the tick `now` falls in for a `metric` source. A group seen before that has
/// nothing to count now counts 0, not "no data": an empty queue is a healthy one. A rate or a
/// latency of nothing is no data instead.
pub async fn run_metric_tick(
    store: &dyn Store,
    alert: &Alert,
    m: &MetricSource,
    now: Millis,
) -> Result<Tick> {
    let at = tick_at(alert, now);
    let query = crate::store::alerting::MetricQuery {
        name: m.name,
        now: at,
        since: at.saturating_sub(m.window.as_millis_i64()),
        stuck_before: at.saturating_sub(m.stuck_after.as_millis_i64()),
        channel: m.channel.clone(),
        workflow: m.workflow.clone(),
        grouped: m.group_by,
        statuses: m.status.iter().filter_map(|s| s.range()).collect(),
    };
    let label = if m.name.of_outbox() {
        "channel"
    } else {
        "workflow"
    };
    let values = if m.name == MetricName::StepLatency {
        step_latency(store, &query, m.quantile()).await?
    } else {
        store.alert_metric(&query).await?
    };
    let mut groups: Vec<(BTreeMap<String, String>, Option<f64>)> = values
        .into_iter()
        .map(|(g, v)| {
            let labels = match g {
                Some(g) if m.group_by => BTreeMap::from([(label.to_owned(), g)]),
                _ => BTreeMap::new(),
            };
            (labels, Some(v))
        })
        .collect();
    let absent = m.name.zero_when_empty().then_some(0.0);
    if groups.is_empty() && !m.group_by {
        groups.push((BTreeMap::new(), absent));
    }
    record(store, alert, at, groups, None, absent).await
}

/// Steps fetched for one `step_latency` evaluation at most: the newest, which is what a
/// quantile over a busy window is about anyway.
pub const STEP_LATENCY_ROWS: i64 = 50_000;

/// The quantile of each group's step durations, in seconds.
async fn step_latency(
    store: &dyn Store,
    query: &crate::store::alerting::MetricQuery,
    q: f64,
) -> Result<Vec<(Option<String>, f64)>> {
    let mut by_group: BTreeMap<Option<String>, Vec<f64>> = BTreeMap::new();
    for (g, ms) in store.alert_step_durations(query, STEP_LATENCY_ROWS).await? {
        by_group
            .entry(g)
            .or_default()
            .push(ms.max(0) as f64 / 1000.0);
    }
    Ok(by_group
        .into_iter()
        .filter_map(|(g, xs)| super::aggregate::quantile(xs, q).map(|v| (g, v)))
        .collect())
}

/// Evaluates the tick `now` falls in for an `events` source. `None` for another source.
pub async fn run_tick(store: &dyn Store, alert: &Alert, now: Millis) -> Result<Option<Tick>> {
    let AlertSource::Events(source) = &alert.def.source else {
        return Ok(None);
    };
    let at = tick_at(alert, now);
    let from = at.saturating_sub(source.window.as_millis_i64());
    let events = fetch_events(store, source.name.names(), from, at).await?;
    run_events_tick(store, alert, at, &events).await.map(Some)
}

/// The events of `names` created in `(from, to]`, as alerts read them.
pub async fn fetch_events(
    store: &dyn Store,
    names: &[impl AsRef<str>],
    from: Millis,
    to: Millis,
) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    for name in names {
        for e in store.alert_events(name.as_ref(), from, to).await? {
            events.push(Event {
                name: e.name,
                key: e.key,
                data: e.data,
                at: e.created_at,
            });
        }
    }
    Ok(events)
}

/// Evaluates the tick `at` of an `events` alert over `events`, which may hold more than it
/// reads (other names, a longer window): each alert takes its own.
pub async fn run_events_tick(
    store: &dyn Store,
    alert: &Alert,
    at: Millis,
    events: &[Event],
) -> Result<Tick> {
    let groups = match &alert.def.source {
        AlertSource::Events(source) => evaluate_events(source, events, at)
            .into_iter()
            .map(|g| (g.labels, g.value))
            .collect(),
        _ => Vec::new(),
    };
    record(store, alert, at, groups, None, None).await
}

/// Records a probe's check as the tick `now` falls in: one instance, without group labels,
/// whose value is what the probe's `value` reads.
pub async fn run_probe_tick(
    store: &dyn Store,
    alert: &Alert,
    now: Millis,
    result: super::probe::ProbeResult,
) -> Result<Tick> {
    let at = tick_at(alert, now);
    let what = match &alert.def.source {
        AlertSource::Probe(p) => p.value,
        _ => Default::default(),
    };
    let value = result.value(what);
    record(
        store,
        alert,
        at,
        vec![(BTreeMap::new(), value)],
        Some(result),
        None,
    )
    .await
}

/// Moves each group's stored state one step with its value and writes the changes with the
/// tick's claim.
async fn record(
    store: &dyn Store,
    alert: &Alert,
    at: Millis,
    groups: Vec<(BTreeMap<String, String>, Option<f64>)>,
    probe: Option<super::probe::ProbeResult>,
    absent: Option<f64>,
) -> Result<Tick> {
    let mut stored: BTreeMap<String, AlertState> = BTreeMap::new();
    for i in store.alert_instances(alert.id()).await? {
        // A state that no longer reads (from another version of Herald) starts afresh.
        if let Ok(s) = serde_json::from_str(&i.state) {
            stored.insert(i.group_key, s);
        }
    }
    let mut values: BTreeMap<String, (BTreeMap<String, String>, Option<f64>)> = BTreeMap::new();
    for (labels, value) in groups {
        let key = serde_json::to_string(&labels).unwrap_or_default();
        values.insert(key, (labels, value));
    }
    // A group seen before with no events now has no data (or, for a count, counts `absent`).
    for key in stored.keys() {
        if !values.contains_key(key) {
            let labels = serde_json::from_str(key).unwrap_or_default();
            values.insert(key.clone(), (labels, absent));
        }
    }
    let mut rows = Vec::new();
    let mut changes = Vec::new();
    for (key, (labels, value)) in values {
        let prev = stored
            .get(&key)
            .cloned()
            .unwrap_or_else(|| AlertState::new(at));
        let (mut next, transition) = step(alert, &prev, value, at);
        if probe.is_some() {
            next.probe = probe.clone();
        }
        if let Some(t) = transition {
            changes.push(Change {
                labels,
                transition: t,
                value,
            });
        }
        // An instance that is and stays inactive is not worth a row, unless it holds a
        // probe's last check, which /health shows.
        if next.phase == Phase::Inactive && !stored.contains_key(&key) && probe.is_none() {
            continue;
        }
        rows.push(AlertInstance {
            alert_id: alert.id().to_owned(),
            group_key: key,
            phase: next.phase.name().to_owned(),
            state: serde_json::to_string(&next).unwrap_or_default(),
            updated_at: at,
        });
    }
    let recorded = store.record_alert_tick(alert.id(), at, &rows).await?;
    Ok(Tick {
        at,
        recorded,
        changes: if recorded { changes } else { Vec::new() },
    })
}
