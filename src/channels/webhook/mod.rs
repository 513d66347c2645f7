//! The `webhook` channel: the message POSTed as JSON to a URL.
//!
//! Every request carries `Idempotency-Key`, the same on every attempt, so a receiver that
//! honours it can drop the duplicates that at-least-once delivery produces.

pub mod config;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use indexmap::IndexMap;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use super::http::{by_status, describe, read_capped, retry_after, snippet};
use super::{
    Channel, ChannelError, Delivered, DeliveryError, OutboundMessage, error_chain, resolve_setting,
};
use crate::definitions::env::EnvSource;
use config::WebhookChannelConfig;

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
        let url = super::http::url_setting(name, "url", &url_text)?;

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
        let client = super::http::client(name, timeout)?;

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
        let retry_after = retry_after(&response);
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
        Err(by_status(status, message, retry_after))
    }
}

/// A top-level string `id` in a JSON response body.
fn provider_id(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("id")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn provider_ids_and_snippets() {
        assert_eq!(provider_id(br#"{"id":"abc"}"#), Some("abc".into()));
        assert_eq!(provider_id(br#"{"id":7}"#), None);
        assert_eq!(provider_id(br#"{"data":{"id":"x"}}"#), None);
        assert_eq!(provider_id(b"ok"), None);
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
