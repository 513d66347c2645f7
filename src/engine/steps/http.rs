//! The `http` step: one request, its response kept as the step's output.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::StepCx;
use crate::definitions::model::step::HttpStep;
use crate::definitions::model::trigger::HttpMethod;
use crate::engine::interpreter::{Outcome, StepError};

/// The largest response body kept; a step's output lives in the run's context.
const MAX_BODY: usize = 1024 * 1024;

/// A step without its own `timeout` waits this long for a response.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn execute(cx: StepCx<'_>, h: &HttpStep) -> Result<Outcome, StepError> {
    let url = cx.render(h.url.as_str())?;
    let mut headers = Vec::new();
    for (k, v) in &h.headers {
        headers.push((k.clone(), cx.render(v.as_str())?));
    }
    let json_body = h.json.as_ref().map(|j| cx.render_json(j)).transpose()?;
    let timeout = cx
        .step()
        .timeout
        .map(|d| d.as_std())
        .unwrap_or(DEFAULT_TIMEOUT);
    if let Some(stub) = cx.host.http_stub {
        let what = format!("{} {}", h.method.as_str(), display_url(&url));
        let answer = stub
            .answer(&StubRequest {
                method: h.method,
                url,
                headers,
                body: json_body,
            })
            .map_err(StepError::Permanent)?;
        let headers = answer
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v)))
            .collect();
        return interpret(
            &what,
            answer.status,
            headers,
            None,
            &answer.body,
            h.expect.as_deref(),
        )
        .map(Outcome::Done);
    }
    call(
        cx.host.http,
        h.method,
        &url,
        &headers,
        json_body.as_ref(),
        &cx.effect_key(),
        timeout,
        h.expect.as_deref(),
    )
    .await
    .map(Outcome::Done)
}

/// Answers `http` steps instead of the network: `herald test` gives the engine one that
/// serves a case's canned answers. `herald serve` and `herald run` have none.
pub trait HttpStub: Send + Sync {
    /// The answer to a request, or why there is none (the step then fails for good).
    fn answer(&self, request: &StubRequest) -> Result<StubResponse, String>;
}

/// A request an `http` step would make.
#[derive(Debug, Clone)]
pub struct StubRequest {
    pub method: HttpMethod,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct StubResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// URLs in messages lose their query string, which is where tokens tend to be.
fn display_url(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

#[allow(clippy::too_many_arguments)]
async fn call(
    client: &reqwest::Client,
    method: HttpMethod,
    url: &str,
    headers: &[(String, String)],
    json_body: Option<&Value>,
    idempotency_key: &str,
    timeout: Duration,
    expect: Option<&[u16]>,
) -> Result<Value, StepError> {
    let m = match method {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Post => reqwest::Method::POST,
        HttpMethod::Put => reqwest::Method::PUT,
        HttpMethod::Patch => reqwest::Method::PATCH,
        HttpMethod::Delete => reqwest::Method::DELETE,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        StepError::Permanent(format!("`{}` is not a valid URL: {e}", display_url(url)))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(StepError::Permanent(format!(
            "`{}` is not an http(s) URL",
            display_url(url)
        )));
    }
    let mut req = client.request(m, parsed).timeout(timeout);
    let mut has_key = false;
    for (k, v) in headers {
        has_key |= k.eq_ignore_ascii_case("idempotency-key");
        req = req.header(k.as_str(), v.as_str());
    }
    // The same key on every attempt of this step, so a server that honours it does the work
    // once even if a crash makes Herald call twice.
    if !has_key {
        req = req.header("Idempotency-Key", idempotency_key);
    }
    if let Some(body) = json_body {
        req = req.json(body);
    }
    let what = format!("{} {}", method.as_str(), display_url(url));
    let mut resp = req.send().await.map_err(|e| {
        let kind = if e.is_timeout() {
            format!(
                "timed out after {}",
                crate::definitions::model::Duration(timeout)
            )
        } else if e.is_connect() {
            "could not connect".to_owned()
        } else if e.is_builder() {
            return StepError::Permanent(format!("{what}: invalid request: {e}"));
        } else {
            format!("failed: {e}")
        };
        StepError::Transient {
            message: format!("{what} {kind}"),
            retry_after: None,
        }
    })?;
    let status = resp.status().as_u16();
    let mut out_headers = Map::new();
    for (k, v) in resp.headers() {
        if let Ok(v) = v.to_str() {
            out_headers.insert(k.as_str().to_owned(), Value::String(v.to_owned()));
        }
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut bytes = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > MAX_BODY {
                    return Err(StepError::Permanent(format!(
                        "{what}: the response is larger than {MAX_BODY} bytes"
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(StepError::Transient {
                    message: format!("{what}: reading the response failed: {e}"),
                    retry_after: None,
                });
            }
        }
    }
    interpret(&what, status, out_headers, retry_after, &bytes, expect)
}

/// A response as the step's output, or the error its status means.
fn interpret(
    what: &str,
    status: u16,
    out_headers: Map<String, Value>,
    retry_after: Option<Duration>,
    bytes: &[u8],
    expect: Option<&[u16]>,
) -> Result<Value, StepError> {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let body = serde_json::from_slice::<Value>(bytes).unwrap_or(Value::String(text.clone()));
    let ok = match expect {
        Some(codes) => codes.contains(&status),
        None => (200..300).contains(&status),
    };
    if !ok {
        let snippet: String = text.chars().take(200).collect();
        let message = format!("{what} answered {status}: {snippet}");
        return Err(if status == 408 || status == 429 || status >= 500 {
            StepError::Transient {
                message,
                retry_after,
            }
        } else {
            StepError::Permanent(message)
        });
    }
    Ok(json!({"status": status, "headers": out_headers, "body": body}))
}
