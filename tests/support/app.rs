//! Herald's HTTP server in process, built as `herald serve` builds it, over a project folder,
//! a store and a virtual clock: the real router on a loopback port.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use herald::definitions::env::EnvSource;
use herald::definitions::project::Layout;
use herald::engine::clock::{Clock, VirtualClock, rfc3339};
use herald::engine::{Engine, EngineOptions, load_registry};
use herald::server::{AppState, ReloadStatus, admin, metrics_handle, router};
use herald::store::DynStore;

pub struct App {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    serving: tokio::task::JoinHandle<()>,
}

impl App {
    /// Loads the project in `dir` (panicking with its diagnostics if it does not load) and
    /// serves it.
    pub async fn start(dir: &Path, env: &EnvSource, store: DynStore, clock: &VirtualClock) -> App {
        herald::tls::init();
        let layout = Layout::discover(dir).unwrap();
        let (registry, _) = load_registry(&layout, env, 1, clock.now()).unwrap_or_else(|report| {
            panic!(
                "{}",
                report
                    .diagnostics
                    .iter()
                    .map(|d| d.render(false))
                    .collect::<String>()
            )
        });
        let config = registry.config.clone();
        let engine = Engine::new(
            store,
            Arc::new(clock.clone()),
            env.clone(),
            EngineOptions::default(),
        );
        engine.install(registry).await.unwrap();
        let admin_keys = config
            .admin
            .api_keys
            .iter()
            .map(|k| admin::digest(&env.resolve(k).unwrap()))
            .collect();
        let state = Arc::new(AppState {
            engine: engine.clone(),
            admin_keys,
            metrics: metrics_handle(),
            reload: Mutex::new(ReloadStatus {
                ok: true,
                at: Some(rfc3339(clock.now())),
                generation: 1,
                errors: Vec::new(),
            }),
            started_at: clock.now(),
            channel_health: Default::default(),
            inbound_limiter: Default::default(),
            reload_gate: Default::default(),
            reloader: Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(state);
        let serving = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the server runs");
        });
        App {
            addr,
            engine,
            serving,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.serving.abort();
    }
}
