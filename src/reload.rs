//! Hot reload: `herald serve` follows the files on disk.
//!
//! A change under `workflows/` or `templates/` (or to `herald.yaml`), a `POST /api/reload` or a
//! SIGHUP all lead to the same thing: the whole project is loaded and validated again, by the
//! same code as `herald validate`, and compiled into a new registry. If it is valid, the new
//! registry replaces the old one in a single atomic swap: a request sees the old set or the new
//! one, never a mix. If it is not, the last good registry stays in force and the errors go to
//! the log, to `GET /health` and to the `herald_reload_failures_total` metric.
//!
//! Reloads run one at a time; a burst of file events (an editor writing a temp file and
//! renaming it, a `git checkout`) is debounced and then coalesced into one reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::ModifyKind;
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::definitions::env::EnvSource;
use crate::definitions::project::{CONFIG_FILE, Layout};
use crate::engine::clock::rfc3339;
use crate::engine::load_registry;
use crate::server::{AppState, ReloadStatus};
use crate::templates::is_ignored_file;

/// How long the watcher waits for a burst of file events to end.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

type Request = oneshot::Sender<ReloadStatus>;

/// Starts the reload loop, SIGHUP handling and (when `watch` is set) the file watcher.
pub fn spawn(
    state: Arc<AppState>,
    layout: Layout,
    env: EnvSource,
    watch: bool,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel::<Request>();
    *state.reloader.lock().expect("not poisoned") = Some(tx.clone());
    tasks.spawn(reload_loop(
        state,
        layout.clone(),
        env,
        rx,
        shutdown.clone(),
    ));

    #[cfg(unix)]
    {
        let tx = tx.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            loop {
                tokio::select! {
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading");
                        let (done, _) = oneshot::channel();
                        if tx.send(done).is_err() {
                            return;
                        }
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }

    if watch {
        match start_watcher(&layout, tx) {
            Ok(watcher) => {
                // The watcher lives as long as the server.
                tasks.spawn(async move {
                    shutdown.cancelled().await;
                    drop(watcher);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the project's files; reload with SIGHUP or POST /api/reload")
            }
        }
    }
}

async fn reload_loop(
    state: Arc<AppState>,
    layout: Layout,
    env: EnvSource,
    mut rx: mpsc::UnboundedReceiver<Request>,
    shutdown: CancellationToken,
) {
    let mut generation = state.engine.registry().generation;
    loop {
        let first = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => return },
            _ = shutdown.cancelled() => return,
        };
        // Everything asked for meanwhile is answered by this one reload.
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        generation += 1;
        let status = reload_once(&state, &layout, &env, generation).await;
        if !status.ok {
            generation -= 1;
        }
        for w in waiting {
            let _ = w.send(status.clone());
        }
    }
}

/// Loads, validates and (if valid) installs the project; returns what happened.
pub async fn reload_once(
    state: &AppState,
    layout: &Layout,
    env: &EnvSource,
    generation: u64,
) -> ReloadStatus {
    let engine = &state.engine;
    let started = std::time::Instant::now();
    let now = engine.now();
    let (l, e) = (layout.clone(), env.clone());
    let loaded = tokio::task::spawn_blocking(move || load_registry(&l, &e, generation, now)).await;
    let status = match loaded {
        Ok(Ok((registry, _))) => {
            let count = registry.workflows.len();
            match engine.install(registry).await {
                Ok(()) => {
                    tracing::info!(
                        generation,
                        definitions = count,
                        ms = started.elapsed().as_millis() as u64,
                        "reloaded"
                    );
                    metrics::counter!("herald_reloads_total", "outcome" => "ok").increment(1);
                    ReloadStatus {
                        ok: true,
                        at: Some(rfc3339(now)),
                        generation,
                        errors: Vec::new(),
                    }
                }
                Err(e) => failed(
                    now,
                    generation - 1,
                    vec![format!("could not store the new definitions: {e}")],
                ),
            }
        }
        Ok(Err(report)) => {
            let errors: Vec<String> = report
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(|d| {
                    let loc = d.location();
                    if loc.is_empty() {
                        format!("error: {}", d.message)
                    } else {
                        format!("{loc}: error: {}", d.message)
                    }
                })
                .collect();
            for d in report.diagnostics.iter().filter(|d| d.is_error()) {
                tracing::error!("{}", d.render(false).trim_end());
            }
            tracing::error!(
                errors = errors.len(),
                "reload refused; the previous definitions stay in force"
            );
            failed(now, generation - 1, errors)
        }
        Err(e) => failed(
            now,
            generation - 1,
            vec![format!("the reload crashed: {e}")],
        ),
    };
    *state.reload.lock().expect("not poisoned") = status.clone();
    status
}

fn failed(now: i64, generation: u64, errors: Vec<String>) -> ReloadStatus {
    metrics::counter!("herald_reload_failures_total").increment(1);
    ReloadStatus {
        ok: false,
        at: Some(rfc3339(now)),
        generation,
        errors,
    }
}

/// Whether a changed path can affect the project: definitions, templates and the config, not
/// editor swap files, backups or the database.
fn relevant(path: &Path, layout: &Layout) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if is_ignored_file(&name) {
        return false;
    }
    if name == CONFIG_FILE {
        return true;
    }
    if path.starts_with(&layout.templates_dir) {
        return true;
    }
    // A folder rename or removal under workflows/ reports the folder itself.
    path.starts_with(&layout.workflows_dir)
        && (name.ends_with(".yaml") || name.ends_with(".yml") || path.extension().is_none())
}

fn start_watcher(
    layout: &Layout,
    tx: mpsc::UnboundedSender<Request>,
) -> Result<
    notify_debouncer_full::Debouncer<
        notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >,
    String,
> {
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let watched = Layout {
        root: canonical(&layout.root),
        config_file: layout.config_file.as_deref().map(canonical),
        workflows_dir: canonical(&layout.workflows_dir),
        templates_dir: canonical(&layout.templates_dir),
    };
    let filter = watched.clone();
    let handler = move |result: DebounceEventResult| match result {
        Ok(events) => {
            // Reading a file is an event too (the reload itself reads every file): only
            // content, creation, removal and renames count.
            let any = events.iter().any(|e| {
                !matches!(
                    e.kind,
                    EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
                ) && e.paths.iter().any(|p| relevant(p, &filter))
            });
            if any {
                let (done, _) = oneshot::channel();
                let _ = tx.send(done);
            }
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!(error = %e, "file watcher error");
            }
        }
    };
    let mut debouncer = new_debouncer(DEBOUNCE, Some(Duration::from_millis(25)), handler)
        .map_err(|e| e.to_string())?;
    // Folders are watched, not files: an editor that saves by renaming a new file over the
    // old one would leave a watch on the old file's inode behind.
    let mut dirs: Vec<PathBuf> = vec![watched.workflows_dir.clone(), watched.templates_dir.clone()];
    dirs.dedup();
    for dir in &dirs {
        if dir.is_dir() {
            debouncer
                .watch(dir, RecursiveMode::Recursive)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    if watched.config_file.is_some() {
        debouncer
            .watch(&watched.root, RecursiveMode::NonRecursive)
            .map_err(|e| e.to_string())?;
    }
    Ok(debouncer)
}
