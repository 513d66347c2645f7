//! What the providers that speak HTTP share: one way to build the client, to read a capped
//! response, to describe a status, and to read `Retry-After`.

use std::time::Duration;

use reqwest::StatusCode;

use super::{ChannelError, DeliveryError, error_chain};

/// How much of a response is read: enough for an id or an error message, while a provider
/// that answers with something huge cannot make the engine buffer it.
pub(crate) const RESPONSE_LIMIT: usize = 64 * 1024;

/// How much of an error response goes into the delivery error.
const ERROR_BODY_CHARS: usize = 200;

/// The HTTP client of one channel, with its timeout and Herald's user agent. Redirects are
/// not followed: a redirected POST turns into a GET in most clients, and an error that names
/// the redirect gets the configured URL fixed.
pub(crate) fn client(channel: &str, timeout: Duration) -> Result<reqwest::Client, ChannelError> {
    crate::tls::init();
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ChannelError::new(channel, None, format!("cannot build the HTTP client: {e}")))
}

/// An `http://` or `https://` URL setting, or an error at that setting.
pub(crate) fn url_setting(
    channel: &str,
    setting: &str,
    text: &str,
) -> Result<reqwest::Url, ChannelError> {
    let url = reqwest::Url::parse(text).map_err(|e| {
        ChannelError::new(
            channel,
            Some(setting),
            format!("{setting}: `{text}` is not a URL: {e}"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ChannelError::new(
            channel,
            Some(setting),
            format!("{setting}: `{text}` must start with https:// or http://"),
        ));
    }
    Ok(url)
}

/// `path` below `base`, keeping any path `base` has (`https://proxy.example.com/twilio` +
/// `2010-04-01/...`); `path` is taken literally, so a token with a `:` in it is not a scheme.
pub(crate) fn endpoint(
    channel: &str,
    base: &reqwest::Url,
    path: &str,
) -> Result<reqwest::Url, ChannelError> {
    let text = format!("{}/{path}", base.as_str().trim_end_matches('/'));
    reqwest::Url::parse(&text).map_err(|e| {
        ChannelError::new(
            channel,
            Some("api_base"),
            format!("api_base: cannot make a request URL from it: {e}"),
        )
    })
}

/// The value of `name` in a URL's query, decoded.
pub(crate) fn query_param(url: &str, name: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `404 Not Found`: the code and its reason.
pub(crate) fn describe(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// `: <the first characters of the body>`, or nothing for an empty body.
pub(crate) fn snippet(body: &[u8]) -> String {
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

/// `Retry-After` as seconds or as an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
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
pub(crate) async fn read_capped(response: &mut reqwest::Response) -> Option<Vec<u8>> {
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

/// A provider's answer, read whole (up to [`RESPONSE_LIMIT`]).
pub(crate) struct Reply {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The string at `pointer` in a JSON body.
    pub(crate) fn json_str(&self, pointer: &str) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        value.pointer(pointer)?.as_str().map(str::to_owned)
    }
}

/// Sends `request` and reads the answer. When none comes, the error says so for `provider`
/// ("Twilio did not answer within 10s"), and never includes the URL, which may hold a token.
pub(crate) async fn exchange(
    request: reqwest::RequestBuilder,
    provider: &str,
    timeout: Duration,
) -> Result<Reply, String> {
    let mut response = request.send().await.map_err(|e| {
        let e = e.without_url();
        if e.is_timeout() {
            format!(
                "{provider} did not answer within {}",
                crate::definitions::model::Duration(timeout)
            )
        } else {
            format!("could not reach {provider}: {}", error_chain(&e))
        }
    })?;
    let status = response.status();
    let retry_after = retry_after(&response);
    let body = read_capped(&mut response).await.unwrap_or_default();
    Ok(Reply {
        status,
        retry_after,
        body,
    })
}

/// Whether an HTTP error answer is worth retrying, by its status alone: a timeout (408), a
/// rate limit (429) and a server error (5xx) are; every other refusal is final.
pub(crate) fn by_status(
    status: StatusCode,
    message: String,
    retry_after: Option<Duration>,
) -> DeliveryError {
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

/// A delivery that got no answer: worth trying again.
pub(crate) fn unanswered(message: String) -> DeliveryError {
    DeliveryError::Transient {
        message,
        retry_after: None,
    }
}

/// The `Retry-After` header of a response, when it has a readable one.
pub(crate) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

#[cfg(test)]
mod tests {
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
    fn snippets_are_cut_at_a_character() {
        assert_eq!(snippet(b""), "");
        let long = "é".repeat(300);
        let cut = snippet(long.as_bytes());
        assert_eq!(cut.chars().count(), 2 + 200 + 1);
    }

    #[test]
    fn statuses_are_classified() {
        let t = |code: u16| {
            !by_status(StatusCode::from_u16(code).unwrap(), String::new(), None).is_permanent()
        };
        assert!(t(408) && t(429) && t(500) && t(502) && t(503));
        assert!(!t(400) && !t(401) && !t(404) && !t(422) && !t(301));
    }
}
