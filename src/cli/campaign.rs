//! `herald campaign list|show|pause|resume|cancel`: an operator's hand on campaigns, on the
//! project's database directly, as the admin API's `/api/campaigns` does on a running server.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use super::{UsageError, dir_or_current};
use crate::definitions::env::EnvSource;
use crate::definitions::project::Layout;
use crate::engine::campaign::{self, CampaignError};
use crate::engine::clock::{Clock, SystemClock};
use crate::engine::{Engine, EngineOptions, load_registry};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    project: super::ProjectArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Every campaign, with its state and counts, as JSON.
    List,
    /// One campaign's state and counts per step, as JSON.
    Show { id: String },
    /// Stop enrolling, and hold recipients before their next message.
    Pause { id: String },
    /// Let a paused campaign go on.
    Resume { id: String },
    /// End the campaign and cancel its recipients' runs.
    Cancel { id: String },
}

pub fn run(args: Args) -> Result<ExitCode, UsageError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| UsageError(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(act(args))
}

async fn act(args: Args) -> Result<ExitCode, UsageError> {
    let layout = Layout::discover(&dir_or_current(args.project.dir))?;
    let env = match &args.project.env_file {
        Some(f) => EnvSource::with_env_file(f)?,
        None => EnvSource::Process,
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (registry, _) = load_registry(&layout, &env, 1, clock.now()).map_err(|report| {
        UsageError(format!(
            "{} error(s) in the definitions; run `herald validate`",
            report.errors()
        ))
    })?;
    let store = super::serve::open_project_database(
        args.project.database_url.as_deref(),
        &registry.config.database,
        &layout.root,
        &env,
    )
    .await?;
    let engine = Engine::new(store, clock, env, EngineOptions::default());
    engine
        .install(registry)
        .await
        .map_err(|e| UsageError(format!("cannot store the definitions: {e}")))?;
    let result = match args.action {
        Action::List => campaign::list(&engine)
            .await
            .map(|all| serde_json::to_string_pretty(&all).unwrap_or_default()),
        Action::Show { id } => campaign::show(&engine, &id)
            .await
            .map(|c| serde_json::to_string_pretty(&c).unwrap_or_default()),
        Action::Pause { id } => campaign::pause(&engine, &id)
            .await
            .map(|()| format!("campaign `{id}` paused")),
        Action::Resume { id } => campaign::resume(&engine, &id)
            .await
            .map(|()| format!("campaign `{id}` resumed")),
        Action::Cancel { id } => campaign::cancel(&engine, &id)
            .await
            .map(|n| format!("campaign `{id}` cancelled; {n} recipient run(s) cancelled")),
    };
    match result {
        Ok(text) => {
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout(), "{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (CampaignError::NotFound(_) | CampaignError::Refused(_))) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
        Err(CampaignError::Engine(e)) => Err(UsageError(e.to_string())),
    }
}
