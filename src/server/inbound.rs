//! `{routes.inbound}/{channel}`: where providers send what people write, what became of
//! Herald's messages (Twilio, WhatsApp, Telegram, Mailgun, Resend), and calls to a number
//! (Twilio).
//!
//! The order is the contract: find the channel (404), let its provider verify the request as
//! it arrived (403), read it (400), then record each message through the same path as every
//! inbound message (compliance keywords first, then a run waiting for a reply, then `message`
//! triggers), deduplicated by the provider's message id, and only then answer the provider
//! the way it expects. A message that cannot be recorded is answered 503, so the provider
//! delivers it again.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AppState;
use crate::channels::inbound::{InboundRequest, ProviderAnswer, Received};
use crate::definitions::model::config::InboundLimit;

pub async fn receive(
    State(state): State<Arc<AppState>>,
    Path(channel): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let registry = state.engine.registry();
    let Some(found) = registry.channels.get(&channel) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("no channel `{channel}` in herald.yaml"),
        );
    };
    let provider = found.provider();
    let Some(receiver) = found.receiver() else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("channel `{channel}` ({provider}) receives nothing"),
        );
    };
    let url = seen_url(&headers, &uri);
    let request = InboundRequest {
        method: &method,
        url: &url,
        headers: &headers,
        body: &body,
        now: state.engine.now(),
    };
    let received = receiver
        .verify(&request)
        .and_then(|()| receiver.parse(&request));
    let (messages, reports, answer) = match received {
        Ok(Received::Handshake(answer)) => return reply(answer),
        Ok(Received::Call { mut call, answer }) => {
            // As a message's sender: a phone number the way contacts keep it, so the text
            // back and the caller's contact agree; anything else as it came.
            if call.from.starts_with('+') {
                let region = &registry.config.contacts.default_region;
                if let Some(phone) = crate::engine::contact::normalize_phone(&call.from, region) {
                    call.from = phone;
                }
            }
            metrics::counter!("herald_inbound_calls_total", "channel" => channel.clone(), "missed" => if call.missed { "true" } else { "false" })
                .increment(1);
            if let Err(e) = state.engine.call_report(&call).await {
                tracing::warn!(channel, error = %e, "a missed call could not be recorded; the provider will send it again");
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "try again later".to_owned(),
                );
            }
            return reply(answer);
        }
        Ok(Received::Events {
            messages,
            reports,
            answer,
        }) => (messages, reports, answer),
        Err(e) => {
            tracing::warn!(channel, provider, error = %e, "inbound request refused");
            metrics::counter!("herald_inbound_refused_total", "channel" => channel.clone())
                .increment(1);
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return plain(status, e.to_string());
        }
    };
    let region = registry.config.contacts.default_region.clone();
    let limit = registry.config.compliance.inbound_limit.as_ref();
    for message in messages {
        // Providers give phone numbers in E.164 already; anything else (a chat id) is kept
        // as it is.
        let from = if message.from.starts_with('+') {
            crate::engine::contact::normalize_phone(&message.from, &region)
                .unwrap_or_else(|| message.from.clone())
        } else {
            message.from.clone()
        };
        if !state.inbound_limiter.allow(limit, &channel, &from) {
            tracing::warn!(
                channel,
                from,
                "inbound message dropped: over compliance.inbound_limit"
            );
            metrics::counter!("herald_inbound_limited_total", "channel" => channel.clone())
                .increment(1);
            // A provider gets its usual answer, or it sends the flood again; a browser is
            // told, so the chat does not show the message as sent.
            if found.webchat().is_some() {
                let wait = limit.map_or(60, |l| l.interval_ms().ceil() as u64 / 1000 + 1);
                let mut response = plain(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many messages; wait a moment and send it again".to_owned(),
                );
                if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return response;
            }
            continue;
        }
        if let Err(e) = state
            .engine
            .inbound_message(
                &channel,
                &from,
                &message.text,
                message.provider_id.as_deref(),
            )
            .await
        {
            tracing::warn!(channel, error = %e, "an inbound message could not be recorded; the provider will send it again");
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "try again later".to_owned(),
            );
        }
        metrics::counter!("herald_inbound_messages_total", "channel" => channel.clone())
            .increment(1);
    }
    for report in reports {
        match state.engine.delivery_report(&report).await {
            Ok(known) => {
                let label = report.status.label();
                metrics::counter!("herald_delivery_reports_total", "channel" => channel.clone(), "status" => label)
                    .increment(1);
                if !known {
                    tracing::debug!(channel, provider_id = %report.provider_id, status = label, "a report on no message Herald knows, or an older one");
                }
            }
            Err(e) => {
                tracing::warn!(channel, error = %e, "a delivery report could not be recorded; the provider will send it again");
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "try again later".to_owned(),
                );
            }
        }
    }
    reply(answer)
}

/// The URL as the provider called it, as far as the server can tell: behind a proxy that
/// terminates TLS, `X-Forwarded-Proto` says the scheme (a provider whose signature covers the
/// URL has a `public_url` setting for the rest).
fn seen_url(headers: &HeaderMap, uri: &Uri) -> String {
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| matches!(*p, "http" | "https"))
        .unwrap_or("http");
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    format!("{scheme}://{host}{path}")
}

fn reply(answer: ProviderAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = (status, answer.body).into_response();
    if let Some(kind) = answer.content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    }
    response
}

fn plain(status: StatusCode, text: String) -> Response {
    (status, text).into_response()
}

/// The keyed rate limiter for `compliance.inbound_limit`, made again when a reload changes the
/// limit. Counts are per process.
#[derive(Default)]
pub struct InboundLimiter {
    current: std::sync::Mutex<Option<(InboundLimit, Arc<DefaultKeyedRateLimiter<String>>)>>,
}

impl InboundLimiter {
    /// Whether one more message from `address` on `channel` is within `limit`.
    pub fn allow(&self, limit: Option<&InboundLimit>, channel: &str, address: &str) -> bool {
        let Some(limit) = limit else {
            return true;
        };
        let limiter = {
            let mut current = crate::sync::lock(&self.current);
            match &*current {
                Some((l, r)) if l == limit => r.clone(),
                _ => {
                    let r = Arc::new(RateLimiter::keyed(quota(limit)));
                    *current = Some((*limit, r.clone()));
                    r
                }
            }
        };
        // Senders who went quiet are forgotten, so the table does not grow with every
        // address ever seen.
        if limiter.len() > 10_000 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&format!("{channel}\u{0}{address}"))
            .is_ok()
    }
}

impl std::fmt::Debug for InboundLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundLimiter").finish_non_exhaustive()
    }
}

/// `messages` per `per`, all of them usable at once: one comes back every `per / messages`.
fn quota(limit: &InboundLimit) -> Quota {
    let n = std::num::NonZeroU32::new(limit.messages.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    Quota::with_period(limit.per.as_std() / n.get())
        .unwrap_or_else(|| Quota::per_second(n))
        .allow_burst(n)
}
