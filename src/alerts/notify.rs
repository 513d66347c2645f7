//! Telling people about alerts, as Alertmanager does: each firing alert is matched to routes
//! by its labels; a route's alerts are grouped by `group_by`; a group is notified when an
//! alert in it starts firing, when one stops (the resolved notice), and again every
//! `repeat_every` while it fires. Silenced and inhibited alerts are left out.
//!
//! The decision is made from state, not from transitions: what fires now is compared with
//! what the route last told the group (stored per route and group). A notification missed by
//! a crash between an evaluation and its notice is therefore made by the next round, and an
//! alert renamed or deleted while firing is notified as resolved because it no longer fires.
//! Each notification is written with its outbox messages in one transaction, only if the
//! group's sequence number is still the one read, so two processes never send one twice.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AlertState;
use super::silence::Silence;
use crate::definitions::env::EnvSource;
use crate::definitions::model::alerting::{AlertRoute, AlertingConfig, InhibitRule, matches};
use crate::definitions::model::step::MessageCategory;
use crate::engine::clock::rfc3339;
use crate::engine::registry::Registry;
use crate::store::alerting::NotificationLog;
use crate::store::{Millis, NewOutbox, Result, Store};
use crate::templates::context;

/// An alert instance that is firing, rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct FiringAlert {
    /// The alert's id and its group's labels: what identifies it across rounds.
    pub fingerprint: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub value: Option<f64>,
    pub starts_at: Millis,
}

/// An alert as a route last notified it, kept so its resolved notice can say what it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notified {
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: Millis,
}

/// What a group's notification says.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub firing: Vec<FiringAlert>,
    pub resolved: Vec<Notified>,
}

/// What one round decided for one route's group: the group's next record and, when someone
/// is to be told, what.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub notified: BTreeMap<String, Notified>,
    pub notice: Option<Notice>,
}

/// How a route is known in what was notified: its name, or what it is.
pub fn route_key(route: &AlertRoute) -> String {
    if let Some(n) = &route.name {
        return n.clone();
    }
    let matchers: Vec<String> = route
        .match_
        .iter()
        .map(|(k, v)| format!("{k}={}", v.values().join("|")))
        .collect();
    format!(
        "{}:{}:{}",
        route.channel,
        route.to.all().join(","),
        matchers.join(",")
    )
}

/// The group an alert falls in on a route: the values of its `group_by` labels, as JSON.
pub fn group_key(route: &AlertRoute, labels: &BTreeMap<String, String>) -> String {
    let group: BTreeMap<&str, &str> = route
        .group_by
        .iter()
        .map(|k| (k.as_str(), labels.get(k).map_or("", String::as_str)))
        .collect();
    serde_json::to_string(&group).unwrap_or_default()
}

/// Whether a firing alert is muted by another firing alert through an inhibition rule.
pub fn inhibited(alert: &FiringAlert, firing: &[FiringAlert], rules: &[InhibitRule]) -> bool {
    rules.iter().any(|rule| {
        matches(&rule.target, &alert.labels)
            && firing.iter().any(|source| {
                source.fingerprint != alert.fingerprint
                    && matches(&rule.source, &source.labels)
                    // An alert that is both source and target does not mute its peers.
                    && !matches(&rule.target, &source.labels)
                    && rule
                        .equal
                        .iter()
                        .all(|k| source.labels.get(k) == alert.labels.get(k))
            })
    })
}

/// Decides one group of one route. `firing` is every alert of the group that fires now;
/// `active` the fingerprints among them that are neither silenced nor inhibited; `last` what
/// the group was last told and when.
pub fn decide(
    route: &AlertRoute,
    firing: &[&FiringAlert],
    active: &BTreeSet<String>,
    last: Option<(&BTreeMap<String, Notified>, Option<Millis>)>,
    now: Millis,
) -> Option<Decision> {
    let empty = BTreeMap::new();
    let (notified, sent_at) = last.unwrap_or((&empty, None));
    let firing_now: BTreeSet<&str> = firing.iter().map(|a| a.fingerprint.as_str()).collect();
    let new = active.iter().any(|f| !notified.contains_key(f));
    let gone: Vec<&String> = notified
        .keys()
        .filter(|f| !firing_now.contains(f.as_str()))
        .collect();
    let repeat = route.repeat_every.as_millis_i64();
    let due = !active.is_empty() && sent_at.is_none_or(|at| now.saturating_sub(at) >= repeat);
    let resolved_notice = route.send_resolved && !gone.is_empty();
    if new || resolved_notice || due {
        let firing: Vec<FiringAlert> = firing
            .iter()
            .filter(|a| active.contains(&a.fingerprint))
            .map(|a| (*a).clone())
            .collect();
        let resolved = gone.iter().map(|f| notified[*f].clone()).collect();
        let next = firing
            .iter()
            .map(|a| {
                (
                    a.fingerprint.clone(),
                    Notified {
                        labels: a.labels.clone(),
                        annotations: a.annotations.clone(),
                        starts_at: a.starts_at,
                    },
                )
            })
            .collect();
        return Some(Decision {
            notified: next,
            notice: Some(Notice { firing, resolved }),
        });
    }
    if !gone.is_empty() {
        // Resolved, but this route does not say so: forget them, so a new firing is news.
        let next = notified
            .iter()
            .filter(|(f, _)| firing_now.contains(f.as_str()))
            .map(|(f, n)| (f.clone(), n.clone()))
            .collect();
        return Some(Decision {
            notified: next,
            notice: None,
        });
    }
    None
}

/// Every firing alert of the registry's alerts, with its labels and annotations rendered.
/// Instances of alerts no longer defined are left out: they fire no more.
pub async fn firing_alerts(store: &dyn Store, registry: &Registry) -> Result<Vec<FiringAlert>> {
    let mut out = Vec::new();
    for i in store.firing_alert_instances().await? {
        let Some(alert) = registry
            .workflows
            .get(&i.alert_id)
            .and_then(|w| w.alert.as_ref())
        else {
            continue;
        };
        let group: BTreeMap<String, String> =
            serde_json::from_str(&i.group_key).unwrap_or_default();
        let state: Option<AlertState> = serde_json::from_str(&i.state).ok();
        let value = state.as_ref().and_then(|s| s.value);
        let starts_at = state
            .as_ref()
            .and_then(|s| s.fired_at)
            .unwrap_or(i.updated_at);
        let (labels, annotations) = match super::render::render(
            alert,
            &group,
            value,
            &registry.templates,
        ) {
            Ok(r) => (r.labels, r.annotations),
            Err(e) => {
                // Still told, with the labels it has: a broken annotation must not hide
                // an outage.
                tracing::warn!(alert = %i.alert_id, error = %e, "an alert's text does not render");
                let mut labels = group.clone();
                labels.insert("alertname".into(), i.alert_id.clone());
                labels.insert("severity".into(), alert.def.severity.name().into());
                (labels, BTreeMap::new())
            }
        };
        out.push(FiringAlert {
            fingerprint: format!("{}\u{1f}{}", i.alert_id, i.group_key),
            labels,
            annotations,
            value,
            starts_at,
        });
    }
    Ok(out)
}

/// One notification written: which route told which group, and how many messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub route: String,
    pub group_key: String,
    pub firing: usize,
    pub resolved: usize,
    pub messages: usize,
}

/// One round: decides every route's groups and writes their notifications. Returns what was
/// written by this call (not what another process wrote first).
pub async fn round(
    store: &dyn Store,
    registry: &Registry,
    env: &EnvSource,
    now: Millis,
) -> Result<Vec<Sent>> {
    let cfg: &AlertingConfig = &registry.config.alerting;
    if cfg.routes.is_empty() {
        return Ok(Vec::new());
    }
    let firing = firing_alerts(store, registry).await?;
    let silences: Vec<Silence> = store
        .silences(Some(now))
        .await?
        .iter()
        .filter_map(Silence::from_row)
        .collect();
    let muted: BTreeSet<&str> = firing
        .iter()
        .filter(|a| {
            silences.iter().any(|s| s.silences(&a.labels, now))
                || inhibited(a, &firing, &cfg.inhibit)
        })
        .map(|a| a.fingerprint.as_str())
        .collect();
    let mut logs: BTreeMap<(String, String), NotificationLog> = store
        .alert_notifications()
        .await?
        .into_iter()
        .map(|l| ((l.route.clone(), l.group_key.clone()), l))
        .collect();

    // Which routes each alert takes: the first that matches, and on while `continue` says so.
    let mut by_route: Vec<BTreeMap<String, Vec<&FiringAlert>>> =
        vec![BTreeMap::new(); cfg.routes.len()];
    for a in &firing {
        for (i, r) in cfg.routes.iter().enumerate() {
            if matches(&r.match_, &a.labels) {
                by_route[i]
                    .entry(group_key(r, &a.labels))
                    .or_default()
                    .push(a);
                if !r.continue_ {
                    break;
                }
            }
        }
    }

    let mut sent = Vec::new();
    for (i, route) in cfg.routes.iter().enumerate() {
        let key = route_key(route);
        // Groups firing now, and groups told before that may have resolved.
        let mut groups: BTreeSet<String> = by_route[i].keys().cloned().collect();
        groups.extend(
            logs.keys()
                .filter(|(r, _)| *r == key)
                .map(|(_, g)| g.clone()),
        );
        for group in groups {
            let in_group: &[&FiringAlert] = by_route[i].get(&group).map_or(&[], Vec::as_slice);
            let active: BTreeSet<String> = in_group
                .iter()
                .filter(|a| !muted.contains(a.fingerprint.as_str()))
                .map(|a| a.fingerprint.clone())
                .collect();
            let log = logs.remove(&(key.clone(), group.clone()));
            let last: Option<BTreeMap<String, Notified>> = log
                .as_ref()
                .map(|l| serde_json::from_str(&l.notified).unwrap_or_default());
            let Some(decision) = decide(
                route,
                in_group,
                &active,
                last.as_ref().zip(log.as_ref()).map(|(n, l)| (n, l.sent_at)),
                now,
            ) else {
                continue;
            };
            let seq = log.as_ref().map_or(0, |l| l.seq) + 1;
            let messages = match &decision.notice {
                Some(notice) => messages(registry, env, route, &key, &group, seq, notice, now),
                None => Vec::new(),
            };
            let next = NotificationLog {
                route: key.clone(),
                group_key: group.clone(),
                seq,
                notified: serde_json::to_string(&decision.notified).unwrap_or_default(),
                sent_at: if decision.notice.is_some() {
                    Some(now)
                } else {
                    log.as_ref().and_then(|l| l.sent_at)
                },
                updated_at: now,
            };
            let written = store
                .record_alert_notification(&next, log.as_ref().map(|l| l.seq), &messages)
                .await?;
            if written && let Some(n) = &decision.notice {
                tracing::info!(route = %key, group = %group, firing = n.firing.len(), resolved = n.resolved.len(), "alert notification queued");
                sent.push(Sent {
                    route: key.clone(),
                    group_key: group,
                    firing: n.firing.len(),
                    resolved: n.resolved.len(),
                    messages: messages.len(),
                });
            }
        }
    }
    Ok(sent)
}

fn alert_json(status: &str, n: &Notified, value: Option<f64>, ends_at: Option<Millis>) -> Value {
    json!({
        "status": status,
        "labels": n.labels,
        "annotations": n.annotations,
        "value": value.map(super::render::number),
        "starts_at": rfc3339(n.starts_at),
        "ends_at": ends_at.map(rfc3339),
    })
}

/// The labels every alert of the notice shares.
fn common(alerts: &[&BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let Some((first, rest)) = alerts.split_first() else {
        return BTreeMap::new();
    };
    first
        .iter()
        .filter(|(k, v)| rest.iter().all(|o| o.get(*k) == Some(*v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What the notice says when the route gives no text: a title, and a line per alert.
fn default_text(title: &str, firing: &[Value], resolved: &[Value]) -> String {
    let mut out = format!("{title}\n");
    for (word, alerts) in [("FIRING", firing), ("RESOLVED", resolved)] {
        for a in alerts {
            let labels = a["labels"].as_object().cloned().unwrap_or_default();
            let name = labels
                .get("alertname")
                .and_then(Value::as_str)
                .unwrap_or("alert");
            let others: Vec<String> = labels
                .iter()
                .filter(|(k, _)| *k != "alertname" && *k != "severity")
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            out.push_str(&format!("{word} {name}"));
            if !others.is_empty() {
                out.push_str(&format!(" [{}]", others.join(", ")));
            }
            if let Some(s) = a["annotations"]["summary"].as_str() {
                out.push_str(&format!(": {s}"));
            }
            out.push('\n');
        }
    }
    out.trim_end().to_owned()
}

/// The outbox messages of one notice: one per recipient of the route, keyed by route, group
/// and sequence number so that the notice is queued once.
#[allow(clippy::too_many_arguments)]
fn messages(
    registry: &Registry,
    env: &EnvSource,
    route: &AlertRoute,
    key: &str,
    group: &str,
    seq: i64,
    notice: &Notice,
    now: Millis,
) -> Vec<NewOutbox> {
    let firing: Vec<Value> = notice
        .firing
        .iter()
        .map(|a| {
            let n = Notified {
                labels: a.labels.clone(),
                annotations: a.annotations.clone(),
                starts_at: a.starts_at,
            };
            alert_json("firing", &n, a.value, None)
        })
        .collect();
    let resolved: Vec<Value> = notice
        .resolved
        .iter()
        .map(|n| alert_json("resolved", n, None, Some(now)))
        .collect();
    let all_labels: Vec<&BTreeMap<String, String>> = notice
        .firing
        .iter()
        .map(|a| &a.labels)
        .chain(notice.resolved.iter().map(|n| &n.labels))
        .collect();
    let common_labels = common(&all_labels);
    let all_annotations: Vec<&BTreeMap<String, String>> = notice
        .firing
        .iter()
        .map(|a| &a.annotations)
        .chain(notice.resolved.iter().map(|n| &n.annotations))
        .collect();
    let status = if firing.is_empty() {
        "resolved"
    } else {
        "firing"
    };
    let group_labels: BTreeMap<String, String> = serde_json::from_str(group).unwrap_or_default();
    let name = group_labels
        .values()
        .filter(|v| !v.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    let title = match (firing.len(), resolved.len()) {
        (0, r) => format!("[RESOLVED:{r}] {name}"),
        (f, 0) => format!("[FIRING:{f}] {name}"),
        (f, r) => format!("[FIRING:{f}, RESOLVED:{r}] {name}"),
    };
    let title = title.trim_end().to_owned();
    let mut alerts = firing.clone();
    alerts.extend(resolved.iter().cloned());
    let ctx = context(&json!({
        "status": status,
        "title": title,
        "alerts": alerts,
        "firing": firing,
        "resolved": resolved,
        "group_labels": group_labels,
        "common_labels": common_labels,
        "common_annotations": common(&all_annotations),
        "route": key,
    }));
    let render = |t: &Option<crate::definitions::model::common::Template>, field: &str| match t {
        None => None,
        Some(t) => match registry.templates.render_str(t.as_str(), &ctx) {
            Ok(s) => Some(s),
            Err(e) => {
                // The notice still goes, in the default words: an outage is no time to be silent
                // about a typo.
                tracing::warn!(route = %key, field, error = %e.message, "an alert route's text does not render; the default text is sent");
                None
            }
        },
    };
    let subject = render(&route.subject, "subject").unwrap_or_else(|| title.clone());
    let body =
        render(&route.body, "body").unwrap_or_else(|| default_text(&title, &firing, &resolved));
    let mut out = Vec::new();
    for to in route.to.all() {
        let to = match env.resolve(to) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(route = %key, error = %e, "an alert route's recipient does not resolve");
                continue;
            }
        };
        let id = crate::engine::new_id();
        out.push(NewOutbox {
            idempotency_key: format!("alert:{key}:{group}:{seq}:{to}"),
            id,
            run_id: None,
            workflow_id: None,
            step_id: None,
            channel: route.channel.clone(),
            recipient: to,
            sender: None,
            subject: Some(subject.clone()),
            body: body.clone(),
            html: false,
            headers: json!({}),
            max_attempts: i64::from(crate::engine::retry::outbox_default().max_attempts),
            // An operator's page is not marketing: no quiet hours, no frequency cap.
            category: MessageCategory::Transactional,
            retry: None,
            approved_template: None,
            created_at: now,
            due_at: now,
        });
    }
    out
}
