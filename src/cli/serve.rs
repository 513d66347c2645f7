//! `herald serve`: the HTTP API, the scheduler, the workers and the outbox dispatcher, in one
//! process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::{ColorChoice, UsageError, dir_or_current};
use crate::definitions::env::EnvSource;
use crate::definitions::project::Layout;
use crate::engine::clock::{Clock, ScaledClock, SystemClock, rfc3339};
use crate::engine::scheduler::Scheduler;
use crate::engine::{Engine, EngineOptions, load_registry};
use crate::server::{AppState, ReloadStatus, admin, metrics_handle, router};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The project folder (holding herald.yaml).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The database: sqlite://path or postgres://... Overrides herald.yaml.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// The address to listen on. Overrides herald.yaml. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Read `NAME=value` lines from this file before the environment, for `${env:NAME}`.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
    /// Do not watch workflows/ and templates/ for changes (reload with SIGHUP or the API).
    #[arg(long)]
    no_watch: bool,
    #[arg(long, value_enum, default_value_t)]
    color: ColorChoice,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logs go to stderr, in colour only when `color` allows it and stderr is a terminal: a log
/// redirected to a file gets no escape codes.
pub(crate) fn init_logging(format: LogFormat, color: ColorChoice) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,hyper=warn,lettre=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color.enabled())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Where a `sqlite://` URL's relative path points: the project folder, so the database sits
/// beside herald.yaml wherever `herald serve` is started from.
pub(crate) fn resolve_database_url(url: &str, root: &Path) -> String {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        && !rest.starts_with('/')
        && !rest.starts_with(":memory:")
    {
        return format!("sqlite://{}", root.join(rest).display());
    }
    url.to_owned()
}

/// Opens the project's database for a command that works on it directly: `--database-url`
/// if given, else herald.yaml's `database`, relative to the project folder, with its
/// `${env:...}` resolved. The error says which database did not open, without its password.
pub(crate) async fn open_project_database(
    flag: Option<&str>,
    configured: &str,
    root: &Path,
    env: &crate::definitions::env::EnvSource,
) -> Result<crate::store::DynStore, UsageError> {
    let url = resolve_database_url(flag.unwrap_or(configured), root);
    let url = env.resolve(&url).map_err(UsageError)?;
    crate::store::open(&url).await.map_err(|e| {
        UsageError(format!(
            "cannot open the database {}: {e}",
            crate::store::redact_url(&url)
        ))
    })
}

pub fn run(args: Args) -> Result<ExitCode, UsageError> {
    init_logging(args.log_format, args.color);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| UsageError(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> Result<ExitCode, UsageError> {
    let started = std::time::Instant::now();
    let dir = dir_or_current(args.dir);
    let layout = Layout::discover(&dir)?;
    let env = match &args.env_file {
        Some(f) => EnvSource::with_env_file(f)?,
        None => EnvSource::Process,
    };
    let clock = clock()?;
    let now = clock.now();
    let color = args.color.enabled();
    let (registry, report) = match load_registry(&layout, &env, 1, now) {
        Ok(r) => r,
        Err(report) => {
            for d in &report.diagnostics {
                eprintln!("{}", d.render(color));
            }
            eprintln!(
                "herald serve: {} error(s) in the definitions; nothing was started",
                report.errors()
            );
            return Ok(ExitCode::from(1));
        }
    };
    for d in &report.diagnostics {
        eprintln!("{}", d.render(color));
    }
    let config = registry.config.clone();
    let url = resolve_database_url(
        args.database_url.as_deref().unwrap_or(&config.database),
        &layout.root,
    );
    let url = env.resolve(&url).map_err(UsageError)?;
    let store_options = crate::store::StoreOptions {
        acquire_timeout: config.server.store_timeout.as_std(),
    };
    let store = crate::store::open_with(&url, &store_options)
        .await
        .map_err(|e| {
            UsageError(format!(
                "cannot open the database {}: {e}",
                crate::store::redact_url(&url)
            ))
        })?;
    let options = EngineOptions {
        lease: config.engine.lease.as_std(),
        workers: config.engine.workers as usize,
        ..EngineOptions::default()
    };
    let engine = Engine::new(store, clock, env.clone(), options);
    engine
        .install(registry)
        .await
        .map_err(|e| UsageError(format!("cannot store the definitions: {e}")))?;

    let state = app_state(&engine, &config.admin.api_keys, &env, now)?;

    let listen = args.listen.unwrap_or(config.listen.clone());
    let addr: SocketAddr = listen.parse().map_err(|e| {
        UsageError(format!(
            "`{listen}` is not a listen address (host:port): {e}"
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| UsageError(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| UsageError(e.to_string()))?;

    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(engine.clone().work(shutdown.clone()));
    tasks.spawn(engine.clone().renew_leases(shutdown.clone()));
    tasks.spawn(engine.clone().dispatch(shutdown.clone()));
    tasks.spawn(Arc::new(Scheduler::new(engine.clone())).run(shutdown.clone()));
    tasks.spawn(crate::server::retention::run(
        engine.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(crate::server::alerts::evaluate(
        engine.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(crate::server::health::watch_channels(
        state.clone(),
        shutdown.clone(),
    ));
    crate::reload::spawn(
        state.clone(),
        layout.clone(),
        env.clone(),
        !args.no_watch,
        shutdown.clone(),
        &mut tasks,
    );

    tracing::info!(
        listen = %bound,
        database = %crate::store::redact_url(&url),
        definitions = engine.registry().workflows.len(),
        owner = %engine.options.owner,
        startup_ms = started.elapsed().as_millis() as u64,
        "herald is serving"
    );
    // A line scripts and tests can wait for, with the real port when port 0 was asked for.
    println!("listening on http://{bound}");

    let app = router(state.clone());
    let stop = shutdown.clone();
    let engine_for_signal = engine.clone();
    let signal = async move {
        wait_for_signal().await;
        tracing::info!(
            "shutting down: no new work is taken; runs in progress finish their current step"
        );
        engine_for_signal.drain();
        stop.cancel();
    };
    crate::server::listener::serve(listener, app, &config.server, signal).await;
    shutdown.cancel();
    finish(&engine, tasks).await;
    Ok(ExitCode::SUCCESS)
}

/// The system clock, or a scaled one when `HERALD_TEST_CLOCK` asks for it (tests only).
fn clock() -> Result<Arc<dyn Clock>, UsageError> {
    Ok(match std::env::var("HERALD_TEST_CLOCK") {
        Ok(spec) => {
            let c = ScaledClock::parse(&spec)
                .map_err(|e| UsageError(format!("HERALD_TEST_CLOCK: {e}")))?;
            tracing::warn!(
                speed = c.speed,
                "HERALD_TEST_CLOCK is set: time runs at {}x; this is for tests only",
                c.speed
            );
            Arc::new(c)
        }
        Err(_) => Arc::new(SystemClock),
    })
}

/// What the HTTP handlers share. Admin API keys are kept only as digests.
fn app_state(
    engine: &Arc<Engine>,
    api_keys: &[String],
    env: &EnvSource,
    now: crate::store::Millis,
) -> Result<Arc<AppState>, UsageError> {
    let admin_keys = api_keys
        .iter()
        .map(|k| env.resolve(k).map(|k| admin::digest(&k)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(UsageError)?;
    Ok(Arc::new(AppState {
        engine: engine.clone(),
        admin_keys,
        metrics: metrics_handle(),
        reload: Mutex::new(ReloadStatus {
            ok: true,
            at: Some(rfc3339(now)),
            generation: 1,
            errors: Vec::new(),
        }),
        started_at: now,
        channel_health: Default::default(),
        inbound_limiter: Default::default(),
        reload_gate: Default::default(),
        reloader: Mutex::new(None),
    }))
}

/// Lets the background work finish the segment it is in, bounded so a hung call cannot block
/// exit, then hands this process's runs to the others.
async fn finish(engine: &Arc<Engine>, mut tasks: tokio::task::JoinSet<()>) {
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(30), drain)
        .await
        .is_err()
    {
        tracing::warn!(
            "some work did not finish within 30s; its leases expire and another process resumes it"
        );
    }
    // The responses answered since the alert loop's last round.
    if let Err(e) = engine.webhook_responses.flush(&*engine.store).await {
        tracing::warn!(error = %e, "the last webhook response counts could not be written");
    }
    match engine
        .store
        .release_runs(&engine.options.owner, engine.now())
        .await
    {
        Ok(n) if n > 0 => tracing::info!(runs = n, "released runs for other processes"),
        _ => {}
    }
    tracing::info!("stopped");
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
