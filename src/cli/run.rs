//! `herald run WORKFLOW --input payload.json`: run one workflow in-process and print what it
//! did, to try a definition before deploying it.
//!
//! It runs on the offline harness (`crate::harness`): a throw-away SQLite database and a
//! clock that jumps straight to the next thing due, so `wait: 2d` takes no time and a
//! `wait_for` nobody answers times out at once. The runs it starts (`call` children, event
//! subscribers) run too, and are printed after it. Messages go to the log instead of their
//! channels unless `--live` is given; `http` steps make real requests, once each.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{ColorChoice, UsageError, dir_or_current};
use crate::channels::Channel;
use crate::channels::log::LogChannel;
use crate::definitions::env::EnvSource;
use crate::definitions::project::Layout;
use crate::engine::clock::Clock;
use crate::engine::context::RequestParts;
use crate::engine::{Trigger, load_registry};
use crate::harness::{Harness, RunReport, Settled, contact_from_json};
use crate::store::RunStatus;
use crate::store::TriggerKind;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The workflow's id.
    workflow: String,
    /// The input: a JSON (or YAML) file, or `-` for JSON on stdin. It becomes `body` for a
    /// webhook workflow, `event.data` for an event workflow, `message` for a message workflow,
    /// and `input` for every workflow.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// A request header for a webhook workflow, as `Name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// A query parameter for a webhook workflow, as `name=value` (repeatable).
    #[arg(long = "query", value_name = "NAME=VALUE")]
    query: Vec<String>,
    /// A path parameter for a webhook workflow, as `name=value` (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Contacts to store before the run: a JSON or YAML file holding a list of
    /// `{email, phone, first_name, last_name, status, timezone, attributes}`.
    #[arg(long, value_name = "FILE")]
    contacts: Option<PathBuf>,
    /// The project folder.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Deliver messages through the configured channels instead of printing them.
    #[arg(long)]
    live: bool,
    /// Read `NAME=value` lines from this file before the environment, for `${env:NAME}`.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    color: ColorChoice,
}

pub fn run(args: Args) -> Result<ExitCode, UsageError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| UsageError(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(run_async(args))
}

/// `name=value` pairs (or `Name: value` for headers) as a JSON object.
fn pairs(
    items: &[String],
    sep: char,
    what: &str,
    lower_keys: bool,
) -> Result<Map<String, Value>, UsageError> {
    let mut out = Map::new();
    for item in items {
        let (k, v) = item.split_once(sep).ok_or_else(|| {
            UsageError(format!(
                "`{item}` is not a {what}: write it as name{sep}value"
            ))
        })?;
        let k = k.trim();
        if k.is_empty() {
            return Err(UsageError(format!("`{item}` has no name before `{sep}`")));
        }
        let k = if lower_keys {
            k.to_ascii_lowercase()
        } else {
            k.to_owned()
        };
        out.insert(k, Value::String(v.trim().to_owned()));
    }
    Ok(out)
}

async fn run_async(args: Args) -> Result<ExitCode, UsageError> {
    let dir = dir_or_current(args.dir.clone());
    let layout = Layout::discover(&dir)?;
    let env = match &args.env_file {
        Some(f) => EnvSource::with_env_file(f)?,
        None => EnvSource::Process,
    };
    let input = match &args.input {
        Some(p) => super::render::read_data(p)?,
        None => json!({}),
    };
    let headers = pairs(&args.headers, ':', "header", true)?;
    let query = pairs(&args.query, '=', "query parameter", false)?;
    let params = pairs(&args.params, '=', "path parameter", false)?;
    let contacts = match &args.contacts {
        Some(p) => match super::render::read_data(p)? {
            Value::Array(items) => items,
            other => vec![other],
        },
        None => Vec::new(),
    };
    let start = jiff::Timestamp::now().as_millisecond();
    let color = args.color.enabled();
    let (mut registry, _) = match load_registry(&layout, &env, 1, start) {
        Ok(r) => r,
        Err(report) => {
            for d in &report.diagnostics {
                eprintln!("{}", d.render(color));
            }
            return Ok(ExitCode::from(1));
        }
    };
    let Some(workflow) = registry.workflows.get(&args.workflow).cloned() else {
        let ids: Vec<&str> = registry.workflows.keys().map(String::as_str).collect();
        let hint = crate::definitions::suggest::did_you_mean(&args.workflow, ids.iter().copied())
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        return Err(UsageError(format!("no workflow `{}`{hint}", args.workflow)));
    };
    if !args.live {
        for (name, channel) in registry.channels.iter_mut() {
            *channel = Arc::new(LogChannel::new(name)) as Arc<dyn Channel>;
        }
    }
    let request = RequestParts {
        headers,
        query,
        params,
    };
    let trigger = Trigger::from_input(workflow.workflow.triggers.first(), input, request, start);

    let harness = Harness::new(registry, env, start)
        .await
        .map_err(|e| UsageError(e.to_string()))?;
    if !contacts.is_empty() {
        let config = harness.engine.registry().config.contacts.clone();
        let seeds = contacts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                contact_from_json(c, &config, start)
                    .map_err(|e| UsageError(format!("contact {}: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        harness
            .seed_contacts(seeds)
            .await
            .map_err(|e| UsageError(e.to_string()))?;
    }
    let started = harness
        .start(workflow.clone(), trigger)
        .await
        .map_err(|e| UsageError(e.to_string()))?;
    let settled = harness
        .run_to_end()
        .await
        .map_err(|e| UsageError(e.to_string()))?;
    let reports = harness
        .report()
        .await
        .map_err(|e| UsageError(e.to_string()))?;
    let Some(root) = reports.iter().find(|r| r.run.id == started.run_id) else {
        return Err(UsageError("the run disappeared".into()));
    };
    println!(
        "run {} of `{}` ({} version {})",
        root.run.id,
        workflow.id,
        if args.live { "live" } else { "dry" },
        &workflow.hash[..12]
    );
    print_run(&harness, root);
    for other in reports.iter().filter(|r| r.run.id != started.run_id) {
        println!(
            "{} run {} of `{}`",
            match other.run.trigger_kind {
                TriggerKind::Call => "called",
                TriggerKind::Event => "event-started",
                other => other.as_str(),
            },
            other.run.id,
            other.run.workflow_id
        );
        print_run(&harness, other);
        println!("  {}", outcome(other));
    }
    if settled == Settled::GaveUp {
        println!(
            "stopped after {} clock jumps at +{}; the run was still going",
            crate::harness::MAX_JUMPS,
            crate::definitions::model::Duration(harness.since_start(harness.clock.now()))
        );
    }
    println!("{}", outcome(root));
    Ok(match root.run.status {
        RunStatus::Completed | RunStatus::Waiting => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

fn outcome(r: &RunReport) -> String {
    format!(
        "{}{}",
        r.run.status.as_str(),
        r.run
            .error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    )
}

fn print_run(harness: &Harness, r: &RunReport) {
    for s in &r.steps {
        let at = crate::definitions::model::Duration(harness.since_start(s.finished_at));
        let detail = match (&s.error, &s.output) {
            (Some(e), _) => e.clone(),
            (None, Some(o)) => summarize(o),
            (None, None) => String::new(),
        };
        let step = match &s.iteration {
            Some(i) => format!("{}[{i}]", s.step_id),
            None => s.step_id.clone(),
        };
        println!(
            "  +{:<8} {:<22} {:<14} {:<10} {detail}",
            at.to_string(),
            step,
            s.action,
            s.status
        );
    }
    for m in &r.messages {
        println!(
            "  message via {} to {}{}: {}",
            m.channel,
            m.recipient,
            m.subject
                .as_ref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default(),
            m.status.as_str()
        );
        for line in m.body.lines() {
            println!("    | {line}");
        }
    }
}

fn summarize(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 100 {
        format!("{}…", s.chars().take(100).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_need_a_separator_and_a_name() {
        let ok = pairs(&["X-Key: abc".into()], ':', "header", true).unwrap();
        assert_eq!(ok["x-key"], "abc");
        let e = pairs(&["novalue".into()], '=', "query parameter", false).unwrap_err();
        assert!(e.0.contains("name=value"), "{}", e.0);
        let e = pairs(&["=x".into()], '=', "query parameter", false).unwrap_err();
        assert!(e.0.contains("no name"), "{}", e.0);
    }
}
