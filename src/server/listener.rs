//! The HTTP server's connections: accepting them, bounding them, and closing them.
//!
//! A slow or idle client holds a connection, a file descriptor and a task. Without bounds,
//! a few thousand of them (a slow-loris, or a sender whose keep-alive pool never lets go)
//! exhaust the process's descriptors and every webhook fails. So:
//!
//! - a client has `server.header_timeout` to send a request's headers, also while a
//!   keep-alive connection sits idle between requests: an idle connection is closed then;
//! - the body must arrive within `server.body_timeout` (enforced where bodies are read);
//! - at most `server.max_connections` are open; beyond that a connection gets an immediate
//!   `503` with `Retry-After` and is closed, and the log says so (once a minute at most);
//! - on shutdown the listener closes, idle connections close at once, and requests in
//!   progress get `server.drain_timeout` to finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::definitions::model::config::ServerConfig;

/// What a connection over the cap is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 87\r\n\r\n{\"error\":\"unavailable\",\"message\":\"the server has too many connections open; try again\"}";

/// The connection cap: the configured one, or by default half the process's file-descriptor
/// limit (the database, the log and outgoing calls need the rest), at least 64.
pub fn max_connections(config: &ServerConfig) -> usize {
    config
        .max_connections
        .map(|n| n as usize)
        .unwrap_or_else(|| {
            open_files_limit()
                .map(|n| (n / 2).clamp(64, 16_384) as usize)
                .unwrap_or(1024)
        })
}

/// The soft `RLIMIT_NOFILE`, read from `/proc` where there is one.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let cap = max_connections(config);
    let permits = Arc::new(Semaphore::new(cap));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper answers requests it cannot parse with an empty body; its limits are set above
    // Herald's own (`server::MAX_HEADERS`), so an ordinary oversized request reaches the
    // router and gets a JSON error.
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout.as_std())
        .max_headers(4 * super::MAX_HEADERS)
        .keep_alive(true);
    let last_warning = AtomicI64::new(0);
    tokio::pin!(shutdown);
    tracing::debug!(max_connections = cap, "accepting connections");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: the limit is the process's, so wait for some to close.
                    warn_now_and_then(&last_warning, || {
                        tracing::error!(error = %e, "cannot accept connections; retrying")
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn_now_and_then(
                &last_warning,
                || tracing::warn!(max_connections = cap, %peer, "connection limit reached: new connections get 503 until some close (server.max_connections)"),
            );
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        // No upgrades (WebSockets): webhooks and the API are plain requests.
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let open = cap - permits.available_permits();
    if open > 0 {
        tracing::info!(
            connections = open,
            "closing idle connections; waiting for requests in progress"
        );
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(config.drain_timeout.as_std()) => {
            tracing::warn!(
                connections = cap - permits.available_permits(),
                "requests still in progress after the drain timeout (server.drain_timeout); closing them"
            );
        }
    }
}

/// Runs `warn` at most once a minute, so a flood is one log line, not thousands.
fn warn_now_and_then(last: &AtomicI64, warn: impl FnOnce()) {
    let now = jiff::Timestamp::now().as_second();
    let before = last.load(Ordering::Relaxed);
    if now - before >= 60
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        warn();
    }
}
