//! Real servers on 127.0.0.1 for integration tests: an SMTP server ([`SmtpSink`]) and an
//! HTTP server ([`HttpSink`]) that record what they receive and can be told to fail.
//!
//! Each sink runs on a thread of its own with its own Tokio runtime, so it keeps answering
//! whatever the test is doing (blocking on a child `herald serve`, or running on a
//! current-thread runtime that is busy elsewhere), and other processes can use it. It stops,
//! and its port closes, when the sink is dropped.

// Every integration test compiles this module separately and uses only part of it.
#![allow(dead_code, unused_imports)]

pub mod alerts;
pub mod app;
pub mod email_api;
pub mod http_sink;
pub mod smtp_sink;
pub mod telegram;
pub mod twilio;
pub mod whatsapp;

use std::future::Future;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

pub use email_api::{FakeMailgun, FakeResend};
pub use http_sink::{HttpSink, ReceivedRequest, Reply};
pub use smtp_sink::{ReceivedMail, SmtpSink};
pub use telegram::FakeTelegram;
pub use twilio::FakeTwilio;
pub use whatsapp::FakeWhatsapp;

/// A server running on its own thread until dropped.
struct ServerThread {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Binds 127.0.0.1 on a free port and runs `serve` on the listener. Returns once the
    /// server's runtime is up, so the port is answering when the caller gets it.
    async fn start<F, Fut>(name: &str, serve: F) -> ServerThread
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        // Bound here rather than on the server thread so a failure shows in the test itself.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("{name}: cannot bind 127.0.0.1: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{name}: no local address: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{name}: cannot make the listener non-blocking: {e}"));

        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("{thread_name}: cannot start a runtime: {e}"));
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .unwrap_or_else(|e| panic!("{thread_name}: cannot use the listener: {e}"));
                    let _ = ready_tx.send(());
                    tokio::select! {
                        () = serve(listener) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime cancels the connection tasks and closes their sockets.
            })
            .unwrap_or_else(|e| panic!("{name}: cannot spawn the server thread: {e}"));

        if ready_rx.await.is_err() {
            panic!("{name}: the server thread stopped before it started serving");
        }
        ServerThread {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Joined so that "dropped" means "no longer listening", which tests that check what
        // happens when a server goes away rely on.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits until `count` reaches `want`, or panics after `timeout` with `what` and `seen`.
async fn wait_for_count(
    mut counter: tokio::sync::watch::Receiver<usize>,
    want: usize,
    timeout: std::time::Duration,
    what: &str,
) {
    let reached = matches!(
        tokio::time::timeout(timeout, counter.wait_for(|n| *n >= want)).await,
        Ok(Ok(_))
    );
    if !reached {
        let seen = *counter.borrow();
        panic!("waited {timeout:?} for {want} {what}, got {seen}");
    }
}
