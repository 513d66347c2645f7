//! `herald silence add|list|expire`: silence alerts' notifications, on the project's database
//! directly, as `/api/silences` does on a running server. It reads only herald.yaml (for the
//! database), so a silence can be set while a definition is broken.

use std::io::Write as _;
use std::process::ExitCode;

use super::{UsageError, dir_or_current};
use crate::alerts::silence::{SilenceRequest, view};
use crate::definitions::env::EnvSource;
use crate::definitions::project::{self, EnvMode, Layout, LoadOptions};
use crate::engine::clock::{Clock, SystemClock};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    project: super::ProjectArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Silence the alerts whose labels fit every matcher: `alertname=payments`,
    /// `tenant!=acme`, `service=~"api|web"`, `team!~"ops.*"`.
    Add {
        #[arg(required = true, value_name = "MATCHER")]
        matchers: Vec<String>,
        /// How long, such as 2h or 30m.
        #[arg(long = "for", value_name = "DURATION", conflicts_with = "until")]
        duration: Option<String>,
        /// Until when, as an RFC 3339 time (2026-12-04T18:00:00Z).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Why: whoever finds the silence later needs to know.
        #[arg(long, short = 'c')]
        comment: String,
        /// Who set it. Defaults to $USER.
        #[arg(long)]
        by: Option<String>,
    },
    /// The silences in force or to come, as JSON (`--all`: expired ones too).
    List {
        #[arg(long)]
        all: bool,
    },
    /// End a silence now.
    Expire { id: String },
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
    let mut load = LoadOptions::new(EnvMode::Serve);
    load.env = match &args.project.env_file {
        Some(f) => EnvSource::with_env_file(f)?,
        None => EnvSource::Process,
    };
    let (project, _) = project::load(&layout, &load);
    let store = super::serve::open_project_database(
        args.project.database_url.as_deref(),
        &project.config.def.database,
        &layout.root,
        &load.env,
    )
    .await?;
    let now = SystemClock.now();
    let text = match args.action {
        Action::Add {
            matchers,
            duration,
            until,
            comment,
            by,
        } => {
            let request = SilenceRequest {
                matchers,
                for_: duration,
                starts_at: None,
                ends_at: until,
                comment: Some(comment),
                created_by: by.or_else(|| std::env::var("USER").ok()),
            };
            let row = match request.build(now) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            store
                .add_silence(&row)
                .await
                .map_err(|e| UsageError(e.to_string()))?;
            serde_json::to_string_pretty(&view(&row, now)).unwrap_or_default()
        }
        Action::List { all } => {
            let rows = store
                .silences(if all { None } else { Some(now) })
                .await
                .map_err(|e| UsageError(e.to_string()))?;
            let views: Vec<_> = rows.iter().map(|r| view(r, now)).collect();
            serde_json::to_string_pretty(&views).unwrap_or_default()
        }
        Action::Expire { id } => {
            if !store
                .expire_silence(&id, now)
                .await
                .map_err(|e| UsageError(e.to_string()))?
            {
                eprintln!(
                    "error: no silence `{id}` is in force (it does not exist, or has expired)"
                );
                return Ok(ExitCode::from(1));
            }
            format!("silence `{id}` expired")
        }
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = writeln!(std::io::stdout(), "{text}");
    Ok(ExitCode::SUCCESS)
}
