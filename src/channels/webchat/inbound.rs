//! What the widget posts to `{routes.inbound}/{channel}`: `{"id": "...", "text": "..."}` with
//! the visitor's token in `Authorization: Bearer`. The page makes `id` (a UUID) once per
//! message and sends it again on a retry, so a message whose answer was lost on the way is
//! recorded once: the id, scoped to the visitor, is the provider id that deduplicates.

use serde::Deserialize;
use serde_json::json;

use super::{MAX_CLIENT_ID_CHARS, WebchatChannel};
use crate::channels::inbound::{
    Command, InboundError, InboundMessage, InboundRequest, ProviderAnswer, Received, Receiver,
};

/// What a visitor's message holds; anything else in the object is kept in `raw` only.
#[derive(Deserialize)]
struct Posted {
    id: Option<serde_json::Value>,
    text: Option<serde_json::Value>,
}

impl WebchatChannel {
    /// The body's size bound, before it is read: the longest text as UTF-8 and JSON-escaped
    /// (`\uXXXX` is six bytes a character), plus room for the id and the braces.
    fn max_body_bytes(&self) -> usize {
        self.max_message_chars * 6 + 1024
    }

    fn bearer<'a>(&self, request: &InboundRequest<'a>) -> Option<&'a str> {
        bearer(request.headers)
    }
}

/// The token of `Authorization: Bearer <token>`.
pub(crate) fn bearer(headers: &reqwest::header::HeaderMap) -> Option<&str> {
    let value = headers.get(reqwest::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Receiver for WebchatChannel {
    fn verify(&self, request: &InboundRequest<'_>) -> Result<(), InboundError> {
        if request.method != reqwest::Method::POST {
            return Err(InboundError::Malformed(format!(
                "a visitor's message is a POST here; replies stream from GET …/{}/events",
                self.name
            )));
        }
        let origin = request
            .headers
            .get(reqwest::header::ORIGIN)
            .map(|o| o.to_str().unwrap_or("(not text)"));
        self.check_origin(origin)
            .map_err(InboundError::Unauthenticated)?;
        self.session(self.bearer(request), request.now)
            .map(|_| ())
            .map_err(InboundError::NoSession)
    }

    fn parse(&self, request: &InboundRequest<'_>) -> Result<Received, InboundError> {
        let visitor = self
            .session(self.bearer(request), request.now)
            .map_err(InboundError::NoSession)?
            .visitor;
        let max_chars = self.max_message_chars;
        if request.body.len() > self.max_body_bytes() {
            return Err(InboundError::TooLarge(format!(
                "the message is {} bytes; this chat takes at most {max_chars} characters",
                request.body.len()
            )));
        }
        let raw: serde_json::Value = serde_json::from_slice(request.body).map_err(|e| {
            InboundError::Malformed(format!(
                "the body is not JSON ({e}); send {{\"id\": \"<a UUID made for this message>\", \"text\": \"...\"}}"
            ))
        })?;
        let posted: Posted = serde_json::from_value(raw.clone()).map_err(|_| {
            InboundError::Malformed(
                "the body is not an object; send {\"id\": \"<a UUID made for this message>\", \"text\": \"...\"}"
                    .to_owned(),
            )
        })?;
        let id = match posted.id {
            Some(serde_json::Value::String(id)) => id,
            Some(_) => {
                return Err(InboundError::Malformed(
                    "`id` must be a string (a UUID made once for the message)".to_owned(),
                ));
            }
            None => {
                return Err(InboundError::Malformed(
                    "the message has no `id`: make one (a UUID) per message and send the same \
                     one again on a retry, so the message is recorded once"
                        .to_owned(),
                ));
            }
        };
        let id_ok = (1..=MAX_CLIENT_ID_CHARS).contains(&id.chars().count())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !id_ok {
            return Err(InboundError::Malformed(format!(
                "`id` must be 1 to {MAX_CLIENT_ID_CHARS} letters, digits, `-`, `_`, `.` or `:` \
                 (a UUID is)"
            )));
        }
        let text = match posted.text {
            Some(serde_json::Value::String(text)) => text.trim().to_owned(),
            _ => {
                return Err(InboundError::Malformed(
                    "the message has no `text` string".to_owned(),
                ));
            }
        };
        if text.is_empty() {
            return Err(InboundError::Malformed(
                "the message's text is empty".to_owned(),
            ));
        }
        let chars = text.chars().count();
        if chars > max_chars {
            return Err(InboundError::TooLarge(format!(
                "the message has {chars} characters; this chat takes at most {max_chars} \
                 (max_message_chars)"
            )));
        }
        let message = InboundMessage {
            channel: self.name.clone(),
            command: Command::parse(&text),
            provider_id: Some(format!("{visitor}:{id}")),
            from: visitor,
            to: None,
            text,
            media: Vec::new(),
            raw,
        };
        Ok(Received::Events {
            messages: vec![message],
            reports: Vec::new(),
            answer: ProviderAnswer {
                status: 202,
                content_type: Some("application/json"),
                body: json!({ "id": id, "status": "accepted" }).to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use reqwest::Method;
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;
    use crate::channels::webchat::config::WebchatConfig;
    use crate::definitions::env::EnvSource;
    use crate::definitions::model::Duration;

    const NOW: i64 = 1_700_000_000_000;

    fn channel() -> WebchatChannel {
        let config = WebchatConfig {
            allowed_origins: vec!["https://www.example-cars.com".into()],
            secret: "s".repeat(32),
            previous_secret: None,
            session_lifetime: Duration::from_secs(86_400),
            max_message_chars: 10,
            max_streams_per_visitor: 5,
        };
        WebchatChannel::from_config("chat", &config, &EnvSource::Map(Arc::default())).unwrap()
    }

    fn headers(token: Option<&str>, origin: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = token {
            h.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
        }
        if let Some(o) = origin {
            h.insert("origin", HeaderValue::from_static(o));
        }
        h
    }

    fn read(
        c: &WebchatChannel,
        headers: &HeaderMap,
        body: &str,
    ) -> Result<Vec<InboundMessage>, InboundError> {
        let request = InboundRequest {
            method: &Method::POST,
            url: "https://herald.example.com/inbound/chat",
            headers,
            body: body.as_bytes(),
            now: NOW,
        };
        c.verify(&request)?;
        match c.parse(&request)? {
            Received::Events { messages, .. } => Ok(messages),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_message_is_the_visitors_and_keyed_by_its_id() {
        let c = channel();
        let (token, session) = c.open_session(None, NOW);
        let h = headers(Some(&token), Some("https://www.example-cars.com"));
        let m = &read(
            &c,
            &h,
            r#"{"id":"m-1","text":"  Hi there ","page":"/loans"}"#,
        )
        .unwrap()[0];
        assert_eq!(m.from, session.visitor);
        assert_eq!(m.text, "Hi there");
        assert_eq!(
            m.provider_id.as_deref(),
            Some(format!("{}:m-1", session.visitor).as_str())
        );
        assert_eq!(m.raw["page"], "/loans");
    }

    #[test]
    fn each_refusal_says_what_is_wrong() {
        let c = channel();
        let (token, _) = c.open_session(None, NOW);
        let ok_origin = Some("https://www.example-cars.com");
        let status = |h: &HeaderMap, body: &str| read(&c, h, body).unwrap_err().status();
        let good = r#"{"id":"m-1","text":"Hi"}"#;
        assert_eq!(status(&headers(None, ok_origin), good), 401);
        assert_eq!(status(&headers(Some("x.1.AAAA"), ok_origin), good), 401);
        assert_eq!(
            status(&headers(Some(&token), Some("https://evil.example")), good),
            403
        );
        let h = headers(Some(&token), ok_origin);
        assert_eq!(status(&h, "{not json"), 400);
        assert_eq!(status(&h, r#"["Hi"]"#), 400);
        assert_eq!(status(&h, r#"{"text":"Hi"}"#), 400);
        assert_eq!(status(&h, r#"{"id":"a b","text":"Hi"}"#), 400);
        assert_eq!(status(&h, r#"{"id":"m-2","text":"   "}"#), 400);
        assert_eq!(status(&h, r#"{"id":"m-2","text":"eleven char"}"#), 413);
        assert_eq!(
            status(
                &h,
                &format!(r#"{{"id":"m-2","text":"{}"}}"#, "x".repeat(5000))
            ),
            413
        );
        // Ten characters of four bytes each are within the limit, which counts characters.
        assert!(read(&c, &h, r#"{"id":"m-3","text":"😀😀😀😀😀😀😀😀😀😀"}"#).is_ok());
        // Not from a browser: the token alone decides.
        assert!(read(&c, &headers(Some(&token), None), good).is_ok());
    }
}
