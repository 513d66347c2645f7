//! The `telegram` channel: messages from a bot through the Bot API, and the updates Telegram
//! sends to the bot's webhook.
//!
//! Sending is `POST {api_base}/bot{token}/sendMessage` with `{chat_id, text}`. Telegram answers
//! `{"ok": true, "result": {...}}` or `{"ok": false, "error_code", "description",
//! "parameters": {"retry_after"}}`; a 429 says how long to wait, and Herald waits that long.
//! The token is part of every URL, so no URL ever goes into an error or a log.
//!
//! Updates are checked with the `secret_token` given to `setWebhook`, which Telegram sends in
//! `X-Telegram-Bot-Api-Secret-Token`.

pub mod config;
mod inbound;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::json;

use super::http::{describe, endpoint, exchange, snippet, unanswered, url_setting};
use super::inbound::Receiver;
use super::{Channel, ChannelError, Delivered, DeliveryError, OutboundMessage, resolve_setting};
use crate::definitions::env::{EnvSource, Secret};
use config::{TelegramConfig, TelegramParseMode};

/// The longest text Telegram takes in one message, in characters.
const MAX_TEXT_CHARS: usize = 4096;

pub struct TelegramChannel {
    name: String,
    send_url: Url,
    me_url: Url,
    secret_token: Option<Secret>,
    parse_mode: Option<TelegramParseMode>,
    timeout: Duration,
    client: reqwest::Client,
}

/// The Bot API's answer.
#[derive(Debug, Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    error_code: Option<u16>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Debug, Deserialize)]
struct Parameters {
    #[serde(default)]
    retry_after: Option<u64>,
}

impl TelegramChannel {
    /// Builds the channel from its herald.yaml entry, resolving `${env:...}` in every setting.
    pub(crate) fn from_config(
        name: &str,
        config: &TelegramConfig,
        env: &EnvSource,
    ) -> Result<Self, ChannelError> {
        let setting = |field: &str, value: &str| resolve_setting(env, name, field, field, value);
        let token = setting("bot_token", &config.bot_token)?;
        if !token.contains(':')
            || token.contains(['/', '?', '#'])
            || token.contains(char::is_whitespace)
        {
            return Err(ChannelError::new(
                name,
                Some("bot_token"),
                "bot_token: this is not a bot token; @BotFather gives them as `123456789:AA…`",
            ));
        }
        let secret_token = config
            .secret_token
            .as_deref()
            .map(|s| setting("secret_token", s))
            .transpose()?;
        if let Some(secret) = &secret_token {
            let valid = (1..=256).contains(&secret.len())
                && secret
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(ChannelError::new(
                    name,
                    Some("secret_token"),
                    "secret_token: Telegram takes 1 to 256 characters of A-Z, a-z, 0-9, _ and -",
                ));
            }
        }
        let base = url_setting(name, "api_base", &setting("api_base", &config.api_base)?)?;
        let join = |method: &str| endpoint(name, &base, &format!("bot{token}/{method}"));
        let timeout = config.timeout.as_std();
        Ok(TelegramChannel {
            name: name.to_owned(),
            send_url: join("sendMessage")?,
            me_url: join("getMe")?,
            secret_token: secret_token.map(Secret::new),
            parse_mode: config.parse_mode,
            timeout,
            client: super::http::client(name, timeout)?,
        })
    }
}

impl fmt::Debug for TelegramChannel {
    // By hand: the URLs hold the bot token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelegramChannel")
            .field("name", &self.name)
            .field("parse_mode", &self.parse_mode)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Channel for TelegramChannel {
    fn provider(&self) -> &'static str {
        "telegram"
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn max_message_bytes(&self) -> usize {
        MAX_TEXT_CHARS * 4
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivered, DeliveryError> {
        super::within_chars(&message.body, MAX_TEXT_CHARS, "Telegram")?;
        let mut body = json!({ "chat_id": message.to, "text": message.body });
        if let Some(mode) = self.parse_mode {
            body["parse_mode"] = mode.as_str().into();
        }
        let request = self.client.post(self.send_url.clone()).json(&body);
        let reply = exchange(request, "Telegram", self.timeout)
            .await
            .map_err(unanswered)?;
        let answer = serde_json::from_slice::<Answer>(&reply.body).ok();
        if reply.status.is_success() && answer.as_ref().is_some_and(|a| a.ok) {
            let id = answer
                .and_then(|a| a.result)
                .and_then(|r| r.get("message_id").map(|id| id.to_string()));
            return Ok(Delivered { provider_id: id });
        }
        Err(classify(
            reply.status,
            answer.as_ref(),
            &reply.body,
            reply.retry_after,
        ))
    }

    /// `getMe`: proves the token without sending anything.
    async fn healthcheck(&self) -> Result<(), String> {
        let request = self.client.get(self.me_url.clone());
        let reply = exchange(request, "Telegram", self.timeout).await?;
        match serde_json::from_slice::<Answer>(&reply.body) {
            Ok(answer) if reply.status.is_success() && answer.ok => Ok(()),
            Ok(answer) => Err(explain(reply.status, Some(&answer), &reply.body)),
            Err(_) => Err(explain(reply.status, None, &reply.body)),
        }
    }

    /// Chat ids, which can look like phone numbers but are not.
    fn address_kind(&self) -> super::AddressKind {
        super::AddressKind::ProviderId
    }

    fn receiver(&self) -> Option<&dyn Receiver> {
        Some(self)
    }
}

/// Whether trying again can help: a 429 (after the wait Telegram names) and 5xx answers.
fn classify(
    status: StatusCode,
    answer: Option<&Answer>,
    body: &[u8],
    header_wait: Option<Duration>,
) -> DeliveryError {
    let code = answer
        .and_then(|a| a.error_code)
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(status);
    let message = explain(status, answer, body);
    if code == StatusCode::TOO_MANY_REQUESTS || code.is_server_error() {
        let wait = answer
            .and_then(|a| a.parameters.as_ref())
            .and_then(|p| p.retry_after)
            .map(Duration::from_secs)
            .or(header_wait);
        DeliveryError::Transient {
            message,
            retry_after: wait,
        }
    } else if answer
        .and_then(|a| a.description.as_deref())
        .is_some_and(|d| d.contains("bot was blocked by the user"))
    {
        // The person blocked the bot: as good as an opt-out on this channel.
        DeliveryError::Unreachable {
            message,
            reason: "unsubscribed",
        }
    } else {
        DeliveryError::Permanent { message }
    }
}

fn explain(status: StatusCode, answer: Option<&Answer>, body: &[u8]) -> String {
    let Some(description) = answer.and_then(|a| a.description.as_deref()) else {
        return format!("Telegram answered {}{}", describe(status), snippet(body));
    };
    let mut text = format!("Telegram answered {}: {description}", status.as_u16());
    let meaning = if description.contains("bot was blocked by the user") {
        Some("the person blocked the bot; nothing reaches them until they unblock it")
    } else if description.contains("chat not found") {
        Some("the person has not started a chat with the bot, or the chat id is wrong")
    } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::NOT_FOUND {
        Some("bot_token is wrong or was revoked")
    } else {
        None
    };
    if let Some(meaning) = meaning {
        text.push_str(&format!(" ({meaning})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn config() -> TelegramConfig {
        TelegramConfig {
            bot_token: "${env:BOT}".into(),
            secret_token: Some("s3cret_token-1".into()),
            parse_mode: None,
            api_base: "https://api.telegram.org".into(),
            timeout: crate::definitions::model::Duration::from_secs(5),
        }
    }

    fn env(token: &str) -> EnvSource {
        EnvSource::Map(Arc::new([("BOT".to_owned(), token.to_owned())].into()))
    }

    #[test]
    fn settings_are_checked_where_they_are_written() {
        let channel =
            TelegramChannel::from_config("tg", &config(), &env("123456:ABC-def_ghi")).unwrap();
        assert_eq!(
            channel.send_url.as_str(),
            "https://api.telegram.org/bot123456:ABC-def_ghi/sendMessage"
        );
        assert!(!format!("{channel:?}").contains("ABC-def"));
        let setting = |c: &TelegramConfig, token: &str| {
            TelegramChannel::from_config("tg", c, &env(token))
                .unwrap_err()
                .setting
        };
        assert_eq!(setting(&config(), "no-colon").as_deref(), Some("bot_token"));
        let mut c = config();
        c.secret_token = Some("has space".into());
        assert_eq!(setting(&c, "123:abc").as_deref(), Some("secret_token"));
    }

    #[test]
    fn a_429_waits_as_long_as_telegram_says() {
        let body = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 15","parameters":{"retry_after":15}}"#;
        let answer: Answer = serde_json::from_slice(body).unwrap();
        match classify(StatusCode::TOO_MANY_REQUESTS, Some(&answer), body, None) {
            DeliveryError::Transient {
                retry_after,
                message,
            } => {
                assert_eq!(retry_after, Some(Duration::from_secs(15)));
                assert!(message.contains("retry after 15"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let body = br#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#;
        let answer: Answer = serde_json::from_slice(body).unwrap();
        match classify(StatusCode::FORBIDDEN, Some(&answer), body, None) {
            DeliveryError::Unreachable { message, reason } => {
                assert!(message.contains("blocked the bot"), "{message}");
                assert_eq!(reason, "unsubscribed");
            }
            other => panic!("{other:?}"),
        }
    }
}
