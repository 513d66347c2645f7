//! The HTTP side of `herald serve`: webhooks, the admin API, health and metrics. Handlers are
//! thin; errors become JSON responses in one place ([`ApiError`]).

pub mod admin;
pub mod alerts;
pub mod campaigns;
pub mod health;
pub mod hooks;
pub mod inbound;
pub mod inbox;
pub mod listener;
pub(crate) mod operations;
pub mod retention;
pub mod silences;
pub mod unsubscribe;
pub mod webchat;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::json;

use crate::engine::Engine;
use crate::store::Millis;

/// What the last reload did, for `/health` (filled in by hot reload).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    pub ok: bool,
    /// RFC 3339 time of the last attempt.
    pub at: Option<String>,
    pub generation: u64,
    pub errors: Vec<String>,
}

/// Shared state of every handler.
pub struct AppState {
    pub engine: Arc<Engine>,
    /// SHA-256 digests of the admin keys; see `admin::authorized`.
    pub admin_keys: Vec<[u8; 32]>,
    pub metrics: PrometheusHandle,
    pub reload: Mutex<ReloadStatus>,
    /// Held (write) by a reload from just before it installs a registry until its status is
    /// recorded, and (read) by `/health`, so the reported generation and reload status
    /// always belong together.
    pub reload_gate: tokio::sync::RwLock<()>,
    pub started_at: Millis,
    /// The last check of each channel's provider, refreshed by [`health::watch_channels`].
    pub channel_health: crate::channels::health::Board,
    /// Per-address limits on what providers send (`compliance.inbound_limit`).
    pub inbound_limiter: inbound::InboundLimiter,
    /// Triggers a reload (the admin endpoint); hot reload installs it.
    pub reloader: Mutex<
        Option<tokio::sync::mpsc::UnboundedSender<tokio::sync::oneshot::Sender<ReloadStatus>>>,
    >,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/definitions", get(admin::definitions))
        .route("/runs", get(admin::list_runs))
        .route("/runs/{id}", get(admin::get_run))
        .route("/runs/{id}/cancel", post(admin::cancel_run))
        .route("/runs/{id}/retry", post(admin::retry_run))
        .route("/events", post(admin::emit_event))
        .route("/messages/{channel}", post(admin::inbound_message))
        .route("/runs/cancel", post(operations::cancel_runs))
        .route("/runs/counts", get(operations::counts))
        .route("/cron/{workflow}", get(admin::cron_fires))
        .route("/cron/{workflow}/run", post(operations::run_cron_now))
        .route(
            "/contacts",
            get(operations::list_contacts).post(operations::create_contact),
        )
        .route(
            "/contacts/{id}",
            get(operations::get_contact)
                .patch(operations::update_contact)
                .delete(operations::delete_contact),
        )
        .route("/outbox", get(operations::list_outbox))
        .route("/outbox/{id}", get(operations::get_message))
        .route("/outbox/{id}/retry", post(operations::retry_message))
        .route("/outbox/{id}/cancel", post(operations::cancel_message))
        .route("/suppressions", get(operations::list_suppressions))
        .route(
            "/suppressions/{channel}/{address}",
            axum::routing::delete(operations::lift_suppression),
        )
        .route("/retention/run", post(operations::run_retention))
        .route("/reload", post(admin::reload))
        .route("/campaigns", get(campaigns::list))
        .route("/campaigns/{id}", get(campaigns::show))
        .route("/campaigns/{id}/pause", post(campaigns::pause))
        .route("/campaigns/{id}/resume", post(campaigns::resume))
        .route("/campaigns/{id}/cancel", post(campaigns::cancel))
        .route(
            "/conversations/{id}/messages",
            get(inbox::messages).post(inbox::reply),
        )
        .route("/conversations/{id}/release", post(inbox::release))
        .route("/alerts", get(alerts::list))
        .route("/silences", get(silences::list).post(silences::add))
        .route("/silences/{id}", axum::routing::delete(silences::expire))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_key,
        ))
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{} does not accept {method}", uri.path()),
                )
            },
        )
        .fallback(|req: axum::extract::Request| async move {
            // Nested routers see the path without the prefix; the original has it whole.
            let path = req
                .extensions()
                .get::<axum::extract::OriginalUri>()
                .map(|u| u.path().to_owned())
                .unwrap_or_else(|| req.uri().path().to_owned());
            ApiError::not_found(format!("no admin endpoint or webhook at {path}"))
        });
    let routes = state.engine.registry().config.routes.clone();
    let inbound_at = format!("{}/{{channel}}", routes.inbound.trim_end_matches('/'));
    // What providers and browsers send. A web chat's browser routes sit beside its inbound
    // route, and all of them answer pages on the chat's allowed sites (CORS).
    let inbound = Router::new()
        .route(
            &inbound_at,
            get(inbound::receive)
                .post(inbound::receive)
                .options(webchat::preflight),
        )
        .route(
            &format!("{inbound_at}/session"),
            post(webchat::session).options(webchat::preflight),
        )
        .route(
            &format!("{inbound_at}/events"),
            get(webchat::events).options(webchat::preflight),
        )
        .route(&format!("{inbound_at}/widget.js"), get(webchat::widget))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            webchat::cross_origin,
        ));
    let unsubscribe_at = format!("{}/{{token}}", routes.unsubscribe.trim_end_matches('/'));
    Router::new()
        .route(&routes.health, get(health::health))
        .route(
            &unsubscribe_at,
            get(unsubscribe::page).post(unsubscribe::confirm),
        )
        .route(&routes.metrics, get(health::metrics))
        .merge(inbound)
        .nest(routes.api.trim_end_matches('/'), api)
        .fallback(hooks::webhook)
        // Declared webhooks come first: `/api/chat` is the operator's, even though the admin
        // API lives under `/api` (validation refuses a webhook on one of Herald's own routes).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            webhooks_first,
        ))
        // Outermost: a request too big to look at gets a JSON answer like every other error.
        // (hyper's own limits, higher, remain for requests too big to parse at all.)
        .layer(axum::middleware::from_fn(request_limits))
        .with_state(state)
}

/// The longest request target and the most header bytes and lines Herald reads.
pub(crate) const MAX_URI_BYTES: usize = 8 * 1024;
pub(crate) const MAX_HEADER_BYTES: usize = 32 * 1024;
pub(crate) const MAX_HEADERS: usize = 100;

/// Refuses requests whose target or headers are too large, with a JSON error.
async fn request_limits(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let uri = req.uri().path().len() + req.uri().query().map_or(0, |q| q.len() + 1);
    if uri > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {uri} bytes; at most {MAX_URI_BYTES} are read"),
        )
        .into_response();
    }
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.as_bytes().len() + 4)
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has {} headers in {bytes} bytes; at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes are read",
                headers.len()
            ),
        )
        .into_response();
    }
    next.run(req).await
}

/// Sends a request for a declared webhook path to the webhook handler, before Herald's own
/// routes are looked at.
async fn webhooks_first(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = hooks::normalize_path(req.uri().path());
    if !state.engine.registry().path_exists(&path) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    hooks::webhook(
        axum::extract::State(state),
        parts.method,
        parts.uri,
        parts.headers,
        body,
    )
    .await
}

/// An error as the API answers it: a status and `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// An engine's error: 503 when trying again soon can help (the database failed, a start
    /// was interrupted), 500 otherwise.
    pub fn engine(e: crate::engine::EngineError) -> ApiError {
        use crate::engine::ErrorKind;
        match e.kind() {
            ErrorKind::Store | ErrorKind::StartInterrupted => ApiError::unavailable(e),
            _ => {
                tracing::error!(error = %e, "request failed in the engine");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }

    pub fn unavailable(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "request failed on the store");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database is not answering; nothing was stored",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            axum::Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response();
        // A sender that sees 503 should come back soon, not give up or hammer.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("2"),
            );
        }
        resp
    }
}

/// The process-wide Prometheus recorder (a process has one metrics registry).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests); this handle still renders
            // what reaches it, and `set_global_recorder` failing is harmless.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
