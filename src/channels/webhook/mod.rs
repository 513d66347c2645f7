//! The `webhook` channel: the message POSTed as JSON to a URL.
//!
//! Every request carries `Idempotency-Key`, the same on every attempt, so a receiver that
//! honours it can drop the duplicates that at-least-once delivery produces.

pub mod config;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use indexmap::IndexMap;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Serialize;

use super::{
    Channel, ChannelError, Delivered, DeliveryError, OutboundMessage, error_chain, resolve_setting,
};
use crate::definitions::env::EnvSource;
use config::WebhookChannelConfig;

/// How much of a response is read: enough for an id or an error message, while a receiver
/// that answers with something huge cannot make the engine buffer it.
const RESPONSE_LIMIT: usize = 64 * 1024;

/// How much of an error response goes into the delivery error.
const ERROR_BODY_CHARS: usize = 200;

pub struct WebhookChannel {
    name: String,
    url: Url,
    headers: HeaderMap,
    timeout: Duration,
    client: reqwest::Client,
}

/// The request body.
#[derive(Serialize)]
struct Payload<'a> {
    id: &'a str,
    idempotency_key: &'a str,
    channel: &'a str,
    to: &'a str,
    from: Option<&'a str>,
    subject: Option<&'a str>,
    body: &'a str,
    html: bool,
    headers: &'a IndexMap<String, String>,
    run_id: Option<&'a str>,
    workflow_id: Option<&'a str>,
    step_id: Option<&'a str>,
}

impl WebhookChannel {
    /// Builds the channel from its herald.yaml entry, resolving `${env:...}` in the URL and in
    /// every header value.
    pub(crate) fn from_config(
        name: &str,
        config: &WebhookChannelConfig,
        env: &EnvSource,
    ) -> Result<Self, ChannelError> {
        let url_text = resolve_setting(env, name, "url", "url", &config.url)?;
        let url = Url::parse(&url_text).map_err(|e| {
            ChannelError::new(
                name,
                Some("url"),
                format!("url: `{url_text}` is not a URL: {e}"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ChannelError::new(
                name,
                Some("url"),
                format!("url: `{url_text}` must start with https:// or http://"),
            ));
        }

        let mut headers = HeaderMap::new();
        for (header, raw) in &config.headers {
            let field = format!("headers.{header}");
            let pointer = format!(
                "headers/{}",
                crate::definitions::source::escape_token(header)
            );
            let value = resolve_setting(env, name, &field, &pointer, raw)?;
            let header_name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                ChannelError::new(
                    name,
                    Some(&pointer),
                    format!("`{header}` is not a valid HTTP header name"),
                )
            })?;
            let mut header_value = HeaderValue::from_str(&value).map_err(|_| {
                ChannelError::new(
                    name,
                    Some(&pointer),
                    format!("{field}: the value is not a valid HTTP header value"),
                )
            })?;
            // Values that come from the environment are usually credentials; marked sensitive,
            // they are left out of the HTTP client's debug output.
            if raw.contains("${env:") {
                header_value.set_sensitive(true);
            }
            headers.insert(header_name, header_value);
        }

        let timeout = config.timeout.as_std();
        crate::tls::init();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            // A redirected POST turns into a GET in most clients; better to report the
            // redirect so the configured URL gets fixed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                ChannelError::new(name, None, format!("cannot build the HTTP client: {e}"))
            })?;

        Ok(WebhookChannel {
            name: name.to_owned(),
            url,
            headers,
            timeout,
            client,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where requests go, for messages. Only the origin: webhook URLs often carry a secret
    /// in their path or query, and delivery errors are stored and shown.
    fn target(&self) -> String {
        self.url.origin().ascii_serialization()
    }

    fn request_error(&self, error: reqwest::Error) -> DeliveryError {
        let target = self.target();
        let error = error.without_url();
        if error.is_builder() {
            return DeliveryError::Permanent {
                message: format!(
                    "cannot build the request to {target}: {}",
                    error_chain(&error)
                ),
            };
        }
        let message = if error.is_timeout() {
            format!(
                "webhook {target} did not answer within {}",
                crate::definitions::model::Duration(self.timeout)
            )
        } else {
            format!("could not reach webhook {target}: {}", error_chain(&error))
        };
        DeliveryError::Transient {
            message,
            retry_after: None,
        }
    }
}

impl fmt::Debug for WebhookChannel {
    // By hand: the URL and header values may hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookChannel")
            .field("name", &self.name)
            .field("target", &self.target())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Channel for WebhookChannel {
    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn provider(&self) -> &'static str {
        "webhook"
    }

    /// Resolves the URL's host and opens a TCP connection to it, without sending a request:
    /// an endpoint that would act on any request it gets must not receive a probe.
    async fn healthcheck(&self) -> Result<(), String> {
        // An IPv6 literal comes bracketed, as written in URLs.
        let host = self.url.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = self.url.port_or_known_default().unwrap_or(80);
        let connect = tokio::net::TcpStream::connect((host, port));
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot connect to {host}:{port}: {e}")),
            Err(_) => Err(format!(
                "{host}:{port} did not accept a connection within {}",
                crate::definitions::model::Duration(self.timeout)
            )),
        }
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivered, DeliveryError> {
        let payload = Payload {
            id: &message.id,
            idempotency_key: &message.idempotency_key,
            channel: &message.channel,
            to: &message.to,
            from: message.from.as_deref(),
            subject: message.subject.as_deref(),
            body: &message.body,
            html: message.html,
            headers: &message.headers,
            run_id: message.run_id.as_deref(),
            workflow_id: message.workflow_id.as_deref(),
            step_id: message.step_id.as_deref(),
        };
        let mut headers = self.headers.clone();
        let key = HeaderValue::from_str(&message.idempotency_key).map_err(|_| {
            DeliveryError::Permanent {
                message: format!(
                    "idempotency key `{}` cannot be sent as an HTTP header",
                    message.idempotency_key
                ),
            }
        })?;
        // Inserted last so a configured header of the same name cannot replace it.
        headers.insert("idempotency-key", key);

        let mut response = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .json(&payload)
            .send()
            .await
            .map_err(|e| self.request_error(e))?;

        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = read_capped(&mut response).await;

        if status.is_success() {
            // The body is optional: a receiver that accepted the message but sent nothing
            // readable still accepted it.
            let body = body.unwrap_or_default();
            return Ok(Delivered {
                provider_id: provider_id(&body),
            });
        }

        let body = body.unwrap_or_default();
        let message = format!(
            "webhook {} answered {}{}",
            self.target(),
            describe(status),
            snippet(&body)
        );
        Err(classify(status, message, retry_after))
    }
}

/// Whether a non-2xx answer is worth retrying.
fn classify(status: StatusCode, message: String, retry_after: Option<Duration>) -> DeliveryError {
    let transient = status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    if transient {
        DeliveryError::Transient {
            message,
            retry_after,
        }
    } else {
        DeliveryError::Permanent { message }
    }
}

fn describe(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// `: <the first characters of the body>`, or nothing for an empty body.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let mut cut: String = text.chars().take(ERROR_BODY_CHARS).collect();
    if text.chars().nth(ERROR_BODY_CHARS).is_some() {
        cut.push('…');
    }
    format!(": {cut}")
}

/// A top-level string `id` in a JSON response body.
fn provider_id(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("id")?.as_str().map(str::to_owned)
}

/// `Retry-After` as seconds or as an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    static HTTP_DATE: jiff::fmt::rfc2822::DateTimeParser =
        jiff::fmt::rfc2822::DateTimeParser::new();
    let at = HTTP_DATE.parse_timestamp(value).ok()?;
    let wait = at.duration_since(jiff::Timestamp::now());
    // A date in the past means "now".
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// Reads at most [`RESPONSE_LIMIT`] bytes of the body. `None` when the body could not be read.
async fn read_capped(response: &mut reqwest::Response) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while body.len() < RESPONSE_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = RESPONSE_LIMIT - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(_) => return None,
        }
    }
    Some(body)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
        let text = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&later)
            .unwrap();
        let wait = parse_retry_after(&text).unwrap();
        assert!(
            wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600),
            "{wait:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn statuses_are_classified() {
        let t = |code: u16| {
            !classify(StatusCode::from_u16(code).unwrap(), String::new(), None).is_permanent()
        };
        assert!(t(408) && t(429) && t(500) && t(502) && t(503));
        assert!(!t(400) && !t(401) && !t(404) && !t(422) && !t(301));
    }

    #[test]
    fn provider_ids_and_snippets() {
        assert_eq!(provider_id(br#"{"id":"abc"}"#), Some("abc".into()));
        assert_eq!(provider_id(br#"{"id":7}"#), None);
        assert_eq!(provider_id(br#"{"data":{"id":"x"}}"#), None);
        assert_eq!(provider_id(b"ok"), None);
        assert_eq!(snippet(b""), "");
        let long = "é".repeat(300);
        let cut = snippet(long.as_bytes());
        assert_eq!(cut.chars().count(), 2 + 200 + 1);
    }

    #[test]
    fn from_config_checks_url_and_headers() {
        let env = EnvSource::Map(Arc::new([("TOKEN".to_owned(), "s3cret".to_owned())].into()));
        let mut config = WebhookChannelConfig {
            url: "https://hooks.example.com/T0/secret-path".into(),
            headers: [("Authorization".to_owned(), "Bearer ${env:TOKEN}".to_owned())].into(),
            timeout: crate::definitions::model::Duration::from_secs(5),
        };
        let channel = WebhookChannel::from_config("hook", &config, &env).unwrap();
        let debug = format!("{channel:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("secret-path"),
            "{debug}"
        );
        assert!(channel.headers["authorization"].is_sensitive());

        let err = WebhookChannel::from_config("hook", &config, &EnvSource::Map(Default::default()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`hook`") && err.contains("TOKEN"), "{err}");

        config.url = "ftp://example.com".into();
        assert!(WebhookChannel::from_config("hook", &config, &env).is_err());
        config.url = "not a url".into();
        assert!(WebhookChannel::from_config("hook", &config, &env).is_err());
    }
}
