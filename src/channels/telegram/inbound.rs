//! What Telegram sends to a bot's webhook: an Update, `{"update_id", "message": {"message_id",
//! "from", "chat": {"id"}, "date", "text"}}`, or a `callback_query` when someone presses an
//! inline button. Replies go to the chat, so the chat id is the sender's address. Commands
//! (`/start PAYLOAD`) are read out; attachments and shared contacts stay in `raw` (Telegram
//! gives file ids, not URLs).

use serde_json::Value;
use subtle::ConstantTimeEq;

use super::TelegramChannel;
use crate::channels::inbound::{
    Command, InboundError, InboundMessage, InboundRequest, ProviderAnswer, Received, Receiver,
};

const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

impl Receiver for TelegramChannel {
    fn verify(&self, request: &InboundRequest<'_>) -> Result<(), InboundError> {
        let Some(expected) = &self.secret_token else {
            return Err(InboundError::Unauthenticated(
                "this channel has no secret_token, so an update cannot be told from a forgery; \
                 set one here and give the same to setWebhook"
                    .to_owned(),
            ));
        };
        let given = request
            .headers
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .ok_or_else(|| {
                InboundError::Unauthenticated(
                    "the request has no X-Telegram-Bot-Api-Secret-Token".to_owned(),
                )
            })?;
        if bool::from(given.ct_eq(expected.expose().as_bytes())) {
            Ok(())
        } else {
            Err(InboundError::Unauthenticated(
                "X-Telegram-Bot-Api-Secret-Token is not this channel's secret_token".to_owned(),
            ))
        }
    }

    fn parse(&self, request: &InboundRequest<'_>) -> Result<Received, InboundError> {
        let update: Value = serde_json::from_slice(request.body)
            .map_err(|e| InboundError::Malformed(format!("the update is not JSON: {e}")))?;
        let id = update
            .get("update_id")
            .and_then(Value::as_i64)
            .ok_or_else(|| InboundError::Malformed("an update without update_id".to_owned()))?;
        let message = if let Some(m) = update.get("message") {
            let text = m
                .get("text")
                .or_else(|| m.get("caption"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            chat_id(m).map(|chat| (chat, text.to_owned()))
        } else if let Some(q) = update.get("callback_query") {
            // A button press: its data is what the person chose.
            let data = q.get("data").and_then(Value::as_str).unwrap_or_default();
            q.get("message")
                .and_then(chat_id)
                .or_else(|| q.pointer("/from/id").map(Value::to_string))
                .map(|chat| (chat, data.to_owned()))
        } else {
            // Edits, channel posts, membership changes: nothing a person said to the bot.
            None
        };
        let messages = message
            .map(|(from, text)| InboundMessage {
                channel: self.name.clone(),
                from,
                to: None,
                command: Command::parse(&text),
                text,
                media: Vec::new(),
                provider_id: Some(id.to_string()),
                raw: update.clone(),
            })
            .into_iter()
            .collect();
        Ok(Received::Events {
            messages,
            reports: Vec::new(),
            answer: ProviderAnswer::ok(),
        })
    }
}

fn chat_id(message: &Value) -> Option<String> {
    message.pointer("/chat/id").map(Value::to_string)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use reqwest::Method;
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;
    use crate::channels::telegram::config::TelegramConfig;
    use crate::definitions::env::EnvSource;

    fn channel(secret: Option<&str>) -> TelegramChannel {
        let config = TelegramConfig {
            bot_token: "123456:ABC".into(),
            secret_token: secret.map(str::to_owned),
            parse_mode: None,
            api_base: "https://api.telegram.org".into(),
            timeout: crate::definitions::model::Duration::from_secs(5),
        };
        TelegramChannel::from_config("tg", &config, &EnvSource::Map(Arc::default())).unwrap()
    }

    fn request<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> InboundRequest<'a> {
        InboundRequest {
            method: &Method::POST,
            url: "https://herald.example.com/inbound/tg",
            headers,
            body,
            now: 0,
        }
    }

    #[test]
    fn the_secret_token_is_required_and_compared() {
        let mut headers = HeaderMap::new();
        let body = b"{}";
        assert!(
            channel(Some("abc"))
                .verify(&request(&headers, body))
                .is_err()
        );
        headers.insert(SECRET_HEADER, HeaderValue::from_static("abd"));
        assert!(
            channel(Some("abc"))
                .verify(&request(&headers, body))
                .is_err()
        );
        headers.insert(SECRET_HEADER, HeaderValue::from_static("abc"));
        assert_eq!(
            channel(Some("abc")).verify(&request(&headers, body)),
            Ok(())
        );
        let error = channel(None).verify(&request(&headers, body)).unwrap_err();
        assert!(
            matches!(&error, InboundError::Unauthenticated(m) if m.contains("setWebhook")),
            "{error:?}"
        );
    }

    fn parse(body: &str) -> Vec<InboundMessage> {
        let headers = HeaderMap::new();
        match channel(Some("abc")).parse(&request(&headers, body.as_bytes())) {
            Ok(Received::Events { messages, .. }) => messages,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_start_command_with_a_phone_number() {
        let messages = parse(
            r#"{"update_id":10000,"message":{"message_id":1365,"date":1441645532,
                "from":{"id":1111111,"is_bot":false,"first_name":"Ann","username":"ann","language_code":"en"},
                "chat":{"id":1111111,"type":"private","first_name":"Ann"},
                "text":"/start +15551234567"}}"#,
        );
        let m = &messages[0];
        assert_eq!(m.from, "1111111");
        assert_eq!(m.provider_id.as_deref(), Some("10000"));
        assert_eq!(
            m.command,
            Some(Command {
                name: "start".into(),
                payload: "+15551234567".into()
            })
        );
        assert_eq!(m.raw["message"]["from"]["first_name"], "Ann");
    }

    #[test]
    fn a_button_press_and_an_edit() {
        let pressed = parse(
            r#"{"update_id":10001,"callback_query":{"id":"4382","from":{"id":1111111},
                "message":{"message_id":1366,"chat":{"id":1111111,"type":"private"}},"data":"book_tuesday"}}"#,
        );
        assert_eq!(
            (pressed[0].from.as_str(), pressed[0].text.as_str()),
            ("1111111", "book_tuesday")
        );
        let edited = parse(
            r#"{"update_id":10002,"edited_message":{"message_id":1365,"chat":{"id":1},"text":"x"}}"#,
        );
        assert!(edited.is_empty());
        let headers = HeaderMap::new();
        assert!(matches!(
            channel(Some("abc")).parse(&request(&headers, b"{\"message\":{}}")),
            Err(InboundError::Malformed(_))
        ));
    }
}
