//! A webhook trigger's request-independent rules: how a request's body becomes the run's
//! `body`, which headers a run may see, and how the trigger's `idempotency_key` is worked out.
//! The server (`server/hooks.rs`) is the HTTP glue around them; signatures are checked in
//! `webhook_auth`.

use axum::http::{HeaderMap, header};
use serde_json::{Map, Value};

use crate::definitions::model::Template;
use crate::definitions::model::trigger::WebhookAuth;
use crate::templates::Templates;

/// Headers never copied into a run's context: credentials and signatures stay out of the
/// database.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "stripe-signature",
    "webhook-signature",
    "svix-signature",
];

/// The request's headers a run sees: all but credentials, signatures, and the header the
/// trigger's own auth reads.
pub(crate) fn visible_headers(
    auth: Option<&WebhookAuth>,
    headers: &HeaderMap,
) -> Map<String, Value> {
    let mut hidden: Vec<String> = SECRET_HEADERS.iter().map(|s| (*s).to_owned()).collect();
    match auth {
        Some(WebhookAuth::ApiKey(a)) => hidden.push(a.header.to_ascii_lowercase()),
        Some(WebhookAuth::HmacSha256(h)) => hidden.push(h.header.to_ascii_lowercase()),
        _ => {}
    }
    let mut header_map = Map::new();
    for (name, value) in headers {
        let name = name.as_str();
        if hidden.iter().any(|h| h == name) {
            continue;
        }
        if let Ok(v) = value.to_str() {
            header_map.insert(name.to_owned(), Value::String(v.to_owned()));
        }
    }
    header_map
}

/// A request's query string as the run's `query`.
pub(crate) fn query(query: Option<&str>) -> Map<String, Value> {
    query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Why an idempotency key could not be had for a request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KeyError {
    /// The template rendered to nothing.
    Empty,
    /// The template failed, with the render's message.
    Failed(String),
}

/// The trigger's `idempotency_key`, rendered against the context the run would start with.
pub(crate) fn idempotency_key(
    template: &Template,
    templates: &Templates,
    context: &Value,
) -> Result<String, KeyError> {
    match templates.render_str(template.as_str(), &crate::templates::context(context)) {
        Ok(k) if !k.trim().is_empty() => Ok(k.trim().to_owned()),
        Ok(_) => Err(KeyError::Empty),
        Err(e) => Err(KeyError::Failed(e.message)),
    }
}

/// What is wrong with a request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyErrorKind {
    /// It is not what its content type says (400).
    Malformed,
    /// Its content type is not one a webhook takes (415).
    UnsupportedType,
}

/// A body refused, with a stable code for the response and a message for people.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BodyError {
    pub kind: BodyErrorKind,
    pub code: &'static str,
    pub message: String,
}

impl BodyError {
    fn new(kind: BodyErrorKind, code: &'static str, message: impl Into<String>) -> BodyError {
        BodyError {
            kind,
            code,
            message: message.into(),
        }
    }

    fn malformed(code: &'static str, message: impl Into<String>) -> BodyError {
        BodyError::new(BodyErrorKind::Malformed, code, message)
    }
}

/// JSON, form-encoded and text bodies become the run's `body`; anything else is refused.
///
/// An empty body is `{}` when the request names no type (a bare ping), so `body.x` is an
/// undefined field like any other; a request that says it sends JSON and sends nothing is
/// refused. Form and text bodies must be UTF-8: a lossy decode would change what the sender
/// sent (and what it signed).
pub(crate) fn parse_body(headers: &HeaderMap, bytes: &[u8]) -> Result<Value, BodyError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = content_type.is_empty()
        || content_type == "application/json"
        || content_type.ends_with("+json");
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return match content_type.as_str() {
            "" => Ok(Value::Object(Map::new())),
            t if is_json => Err(BodyError::malformed(
                "empty_body",
                format!(
                    "the body is empty, but its content type is `{t}`; send a JSON document, or no content type"
                ),
            )),
            "application/x-www-form-urlencoded" => Ok(Value::Object(Map::new())),
            _ => Ok(Value::String(String::new())),
        };
    }
    if is_json {
        return serde_json::from_slice(bytes).map_err(|e| {
            BodyError::malformed("malformed_json", format!("the body is not valid JSON: {e}"))
        });
    }
    if content_type == "application/x-www-form-urlencoded" {
        return parse_form(bytes).map(Value::Object);
    }
    if content_type.starts_with("text/") {
        return std::str::from_utf8(bytes)
            .map(|s| Value::String(s.to_owned()))
            .map_err(|_| {
                BodyError::malformed("malformed_body", "the text body is not valid UTF-8")
            });
    }
    Err(BodyError::new(
        BodyErrorKind::UnsupportedType,
        "unsupported_media_type",
        format!("`{content_type}` bodies are not accepted; send JSON, form data or text"),
    ))
}

/// A form body, refusing any name or value that is not UTF-8 once decoded (where
/// `form_urlencoded` would replace the bytes silently).
fn parse_form(bytes: &[u8]) -> Result<Map<String, Value>, BodyError> {
    fn decode(part: &[u8]) -> Option<String> {
        let mut out = Vec::with_capacity(part.len());
        let mut i = 0;
        while i < part.len() {
            match part[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < part.len() => {
                    let hex = std::str::from_utf8(&part[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match hex {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        // Not an escape: kept as written, as browsers do.
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).ok()
    }
    let mut map = Map::new();
    for (n, pair) in bytes.split(|b| *b == b'&').enumerate() {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        let (Some(name), Some(value)) = (decode(name), decode(value)) else {
            return Err(BodyError::malformed(
                "malformed_body",
                format!("field {} of the form body is not UTF-8 once decoded", n + 1),
            ));
        };
        map.insert(name, Value::String(value));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn typed(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, t.parse().unwrap());
        h
    }

    #[test]
    fn empty_bodies_are_decided_by_their_type() {
        assert_eq!(parse_body(&HeaderMap::new(), b"").unwrap(), json!({}));
        let e = parse_body(&typed("application/json"), b"  ").unwrap_err();
        assert_eq!((e.kind, e.code), (BodyErrorKind::Malformed, "empty_body"));
        assert_eq!(
            parse_body(&typed("application/x-www-form-urlencoded"), b"").unwrap(),
            json!({})
        );
        assert_eq!(parse_body(&typed("text/plain"), b"").unwrap(), json!(""));
    }

    #[test]
    fn form_bodies_decode_exactly_or_are_refused() {
        let ok = parse_body(
            &typed("application/x-www-form-urlencoded"),
            b"From=%2B13035550123&Body=caf%C3%A9+ok&odd=100%&flag",
        )
        .unwrap();
        assert_eq!(
            ok,
            json!({"From": "+13035550123", "Body": "café ok", "odd": "100%", "flag": ""})
        );
        let e = parse_body(
            &typed("application/x-www-form-urlencoded"),
            b"a=1&Body=%FF%FE",
        )
        .unwrap_err();
        assert_eq!(
            (e.kind, e.code),
            (BodyErrorKind::Malformed, "malformed_body")
        );
        assert!(e.message.contains("field 2"), "{}", e.message);
    }
}
