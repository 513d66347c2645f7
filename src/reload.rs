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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    *crate::sync::lock(&state.reloader) = Some(tx.clone());

    let watcher = if watch {
        match start_watcher(&layout, tx.clone()) {
            Ok(watcher) => Some(Arc::new(Mutex::new(watcher))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the project's files; reload with SIGHUP or POST /api/reload");
                None
            }
        }
    } else {
        None
    };
    // The watcher lives as long as the reload loop, which is as long as the server.
    tasks.spawn(reload_loop(
        state,
        layout.clone(),
        env,
        rx,
        watcher,
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
}

async fn reload_loop(
    state: Arc<AppState>,
    layout: Layout,
    env: EnvSource,
    mut rx: mpsc::UnboundedReceiver<Request>,
    watcher: Option<Arc<Mutex<Watcher>>>,
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
        // Before reading the files: a folder that appeared or was replaced gets its watch
        // first, so what is put in it after this reload's read is reported.
        if let Some(w) = &watcher {
            let w = w.clone();
            let _ = tokio::task::spawn_blocking(move || crate::sync::lock(&w).refresh()).await;
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
    let _gate = state.reload_gate.write().await;
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
    *crate::sync::lock(&state.reload) = status.clone();
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
    // A folder moved in or out of workflows/ reports only the folder itself, and a folder's
    // name may well have a dot in it (`release-2.1`), so "no extension" does not tell a folder.
    // What is not a regular file counts: a folder, or a path that is gone (a folder moved out,
    // or a file deleted; which of the two cannot be told any more, and a needless reload of an
    // unchanged project changes nothing).
    path.starts_with(&layout.workflows_dir)
        && (name.ends_with(".yaml") || name.ends_with(".yml") || !path.is_file())
}

type Debouncer = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// The file watcher, and which of the folders it follows have a watch on them.
///
/// A watch is on a folder, not on a path: when `workflows/` or `templates/` is deleted (a
/// branch switch, a deploy that replaces the folder) its watch goes with it, and a folder
/// created later (a project that gets `templates/` after it started) has none. Their parent
/// folders are watched too, so that such a change is reported; [`Watcher::refresh`], run
/// before every reload, then puts a watch on the folder now at the path.
pub(crate) struct Watcher {
    debouncer: Debouncer,
    /// `workflows/` and `templates/`, each with whether a watch is on it.
    dirs: Vec<(PathBuf, bool)>,
    /// Set by the event handler when an event names one of those folders itself (created,
    /// removed, renamed): a watch on the path may then be on a folder that is gone.
    touched: Arc<AtomicBool>,
}

impl Watcher {
    /// Watches each followed folder that exists and has no watch, or every one again when
    /// one of them was touched. Errors go to the log; the next reload tries again.
    fn refresh(&mut self) {
        let touched = self.touched.swap(false, Ordering::SeqCst);
        for (dir, watched) in &mut self.dirs {
            if *watched && !touched {
                continue;
            }
            if *watched {
                // Fails when the folder went and its watch with it; either way it is off now.
                let _ = self.debouncer.unwatch(&*dir);
                *watched = false;
            }
            if dir.is_dir() {
                match self.debouncer.watch(&*dir, RecursiveMode::Recursive) {
                    Ok(()) => *watched = true,
                    Err(e) => {
                        tracing::warn!(folder = %dir.display(), error = %e, "cannot watch the folder; changes in it need a reload")
                    }
                }
            }
        }
    }
}

/// `p` with symbolic links resolved, as the watcher reports paths; for a path that does not
/// exist yet, its parent's.
fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (
        p.parent().and_then(|d| d.canonicalize().ok()),
        p.file_name(),
    ) {
        (Some(parent), Some(name)) => parent.join(name),
        _ => p.to_path_buf(),
    }
}

fn start_watcher(layout: &Layout, tx: mpsc::UnboundedSender<Request>) -> Result<Watcher, String> {
    let watched = Layout {
        root: canonical(&layout.root),
        config_file: layout.config_file.as_deref().map(canonical),
        workflows_dir: canonical(&layout.workflows_dir),
        templates_dir: canonical(&layout.templates_dir),
        tests_dir: canonical(&layout.tests_dir),
    };
    let mut dirs: Vec<PathBuf> = vec![watched.workflows_dir.clone(), watched.templates_dir.clone()];
    dirs.dedup();
    let touched = Arc::new(AtomicBool::new(false));
    let filter = watched.clone();
    let followed = dirs.clone();
    let touched_by_events = touched.clone();
    let handler = move |result: DebounceEventResult| match result {
        Ok(events) => {
            // Reading a file is an event too (the reload itself reads every file): only
            // content, creation, removal and renames count.
            let counted = || {
                events.iter().filter(|e| {
                    !matches!(
                        e.kind,
                        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
                    )
                })
            };
            if counted().any(|e| e.paths.iter().any(|p| followed.contains(p))) {
                touched_by_events.store(true, Ordering::SeqCst);
            }
            if counted().any(|e| e.paths.iter().any(|p| relevant(p, &filter))) {
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
    // The folders holding the followed folders (and herald.yaml), without their sub-folders:
    // they report a followed folder being created, removed or replaced.
    let mut parents: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| d.parent().map(Path::to_path_buf))
        .collect();
    if watched.config_file.is_some() {
        parents.push(watched.root.clone());
    }
    parents.sort();
    parents.dedup();
    for parent in parents.iter().filter(|p| p.is_dir() && !dirs.contains(p)) {
        debouncer
            .watch(parent, RecursiveMode::NonRecursive)
            .map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    // Folders are watched, not files: an editor that saves by renaming a new file over the
    // old one would leave a watch on the old file's inode behind.
    let mut watcher = Watcher {
        debouncer,
        dirs: dirs.into_iter().map(|d| (d, false)).collect(),
        touched,
    };
    watcher.refresh();
    Ok(watcher)
}
