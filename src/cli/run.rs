//! `herald run WORKFLOW --input payload.json`: run one workflow in-process and print its step
//! log, to try a definition before deploying it.
//!
//! The run uses a throw-away SQLite database and a clock that jumps straight to the next
//! timer, so `wait: 2d` takes no time and a `wait_for` nobody answers times out at once.
//! Messages go to the log instead of their channels unless `--live` is given; `http` steps
//! make real requests.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{ColorChoice, UsageError, dir_or_current};
use crate::channels::Channel;
use crate::channels::log::LogChannel;
use crate::definitions::env::EnvSource;
use crate::definitions::model::Trigger;
use crate::definitions::project::Layout;
use crate::engine::clock::{Clock, VirtualClock, rfc3339};
use crate::engine::{Engine, EngineOptions, StartRun, load_registry};
use crate::store::RunStatus;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The workflow's id.
    workflow: String,
    /// The input: a JSON (or YAML) file, or `-` for JSON on stdin. It becomes `body` for a
    /// webhook workflow, `event.data` for an event workflow, `message` for a message workflow,
    /// and `input` for every workflow.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
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
    let clock = VirtualClock::new(jiff::Timestamp::now().as_millisecond());
    let start = clock.now();
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
    let tmp = std::env::temp_dir().join(format!("herald-run-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&tmp)
        .map_err(|e| UsageError(format!("cannot create a temporary folder: {e}")))?;
    let result = execute(&args, registry, workflow, input, clock, &tmp, env).await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

async fn execute(
    args: &Args,
    registry: crate::engine::registry::Registry,
    workflow: Arc<crate::engine::registry::CompiledWorkflow>,
    input: Value,
    clock: VirtualClock,
    tmp: &std::path::Path,
    env: EnvSource,
) -> Result<ExitCode, UsageError> {
    let start = clock.now();
    let url = format!("sqlite://{}", tmp.join("run.db").display());
    let store = crate::store::open(&url)
        .await
        .map_err(|e| UsageError(e.to_string()))?;
    let engine = Engine::new(
        store,
        Arc::new(clock.clone()),
        env,
        EngineOptions::default(),
    );
    engine
        .install(registry)
        .await
        .map_err(|e| UsageError(e.to_string()))?;

    let context = match workflow.workflow.triggers.first() {
        Some(Trigger::Webhook(w)) => json!({
            "trigger": {"kind": "webhook", "method": w.method.as_str(), "path": w.path},
            "body": input, "headers": {}, "query": {}, "params": {}, "input": input,
        }),
        Some(Trigger::Event(e)) => json!({
            "trigger": {"kind": "event", "name": e.name},
            "event": {"name": e.name, "key": input.get("key"), "data": input}, "input": input,
        }),
        Some(Trigger::Message(m)) => json!({
            "trigger": {"kind": "message", "channel": m.channel},
            "message": {"channel": m.channel, "from": input.get("from"), "text": input.get("text"), "id": null},
            "input": input,
        }),
        Some(Trigger::Cron(c)) => json!({
            "trigger": {"kind": "cron", "schedule": c.schedule, "timezone": c.timezone, "slot": rfc3339(start)},
            "input": c.input.clone().unwrap_or(input),
        }),
        None => json!({"trigger": {"kind": "manual"}, "input": input}),
    };
    let started = engine
        .start(StartRun {
            workflow: workflow.clone(),
            trigger_kind: "manual".into(),
            context,
            idempotency_key: None,
            want_reply: false,
        })
        .await
        .map_err(|e| UsageError(e.to_string()))?;
    let run_id = started.run_id;

    // Fast-forward: run what is due, deliver what is queued, then jump to the next timer.
    for _ in 0..10_000 {
        engine
            .run_due()
            .await
            .map_err(|e| UsageError(e.to_string()))?;
        engine
            .deliver_due()
            .await
            .map_err(|e| UsageError(e.to_string()))?;
        let run = engine
            .store
            .run(&run_id)
            .await
            .map_err(|e| UsageError(e.to_string()))?;
        let finished = run.as_ref().is_some_and(|r| r.status.is_finished());
        let next_run = engine
            .store
            .next_due_at()
            .await
            .map_err(|e| UsageError(e.to_string()))?;
        let next_msg = engine
            .store
            .next_outbox_at()
            .await
            .map_err(|e| UsageError(e.to_string()))?;
        let next = match (finished, next_run, next_msg) {
            (true, _, Some(m)) => Some(m),
            (true, _, None) => None,
            (false, r, m) => [r, m].into_iter().flatten().min(),
        };
        match next {
            Some(t) if t > clock.now() => clock.set(t),
            Some(_) => {}
            None => break,
        }
    }

    let run = engine
        .store
        .run(&run_id)
        .await
        .map_err(|e| UsageError(e.to_string()))?
        .ok_or_else(|| UsageError("the run disappeared".into()))?;
    let steps = engine
        .store
        .step_log(&run_id)
        .await
        .map_err(|e| UsageError(e.to_string()))?;
    let messages = engine
        .store
        .outbox_for_run(&run_id)
        .await
        .map_err(|e| UsageError(e.to_string()))?;
    println!(
        "run {run_id} of `{}` ({} version {})",
        workflow.id,
        if args.live { "live" } else { "dry" },
        &workflow.hash[..12]
    );
    for s in &steps {
        let at = crate::definitions::model::Duration(std::time::Duration::from_millis(
            (s.finished_at - start).max(0) as u64,
        ));
        let detail = match (&s.error, &s.output) {
            (Some(e), _) => e.clone(),
            (None, Some(o)) => summarize(o),
            (None, None) => String::new(),
        };
        println!(
            "  +{:<8} {:<22} {:<14} {:<10} {detail}",
            at.to_string(),
            s.step_id,
            s.action,
            s.status
        );
    }
    for m in &messages {
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
    println!(
        "{}{}",
        run.status.as_str(),
        run.error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    Ok(match run.status {
        RunStatus::Completed => ExitCode::SUCCESS,
        RunStatus::Waiting => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

fn summarize(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 100 {
        format!("{}…", s.chars().take(100).collect::<String>())
    } else {
        s
    }
}
