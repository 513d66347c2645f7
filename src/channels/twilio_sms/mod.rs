//! The `twilio_sms` channel: text messages through Twilio's Messages API, and the messages and
//! delivery reports Twilio sends back.
//!
//! Sending is one form-encoded `POST /2010-04-01/Accounts/{sid}/Messages.json` with Basic
//! auth (the account SID and auth token, or an API key and its secret). Twilio answers `201`
//! with the message's `sid`, or an error body `{code, message, more_info, status}`; the code
//! says whether trying again can help (see [`classify`]). The Messages API takes no
//! idempotency key, so a crash between Twilio's answer and the outbox's commit sends the text
//! again on recovery; that window is one request long.
//!
//! Twilio's requests to Herald (a reply, a delivery report, a call to the number and how it
//! ended) are form-encoded and signed with `X-Twilio-Signature` over the URL it called (see
//! [`signature`]).

pub mod config;
mod inbound;
mod signature;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::http::{by_status, describe, endpoint, exchange, snippet, unanswered, url_setting};
use super::inbound::Receiver;
use super::{Channel, ChannelError, Delivered, DeliveryError, OutboundMessage, resolve_setting};
use crate::definitions::env::{EnvSource, Secret};
use config::TwilioSmsConfig;

/// The longest body Twilio accepts in one message, in characters (error 21617).
const MAX_BODY_CHARS: usize = 1600;

pub struct TwilioSmsChannel {
    name: String,
    account_sid: String,
    /// Who Herald signs in as: the account SID or an API key.
    username: String,
    password: Secret,
    /// Verifies Twilio's signatures; always the account's auth token.
    auth_token: Secret,
    sender: Sender,
    public_url: Option<String>,
    /// Where calls to the number are forwarded, and for how long they ring there.
    forward_calls_to: Option<String>,
    ring_timeout: Duration,
    messages_url: Url,
    account_url: Url,
    timeout: Duration,
    client: reqwest::Client,
}

/// Where messages come from.
#[derive(Debug, Clone)]
enum Sender {
    Number(String),
    Service(String),
}

/// Twilio's error body.
#[derive(Debug, Deserialize)]
struct ApiError {
    code: Option<u32>,
    message: Option<String>,
    more_info: Option<String>,
}

impl TwilioSmsChannel {
    /// Builds the channel from its herald.yaml entry, resolving `${env:...}` in every setting.
    pub(crate) fn from_config(
        name: &str,
        config: &TwilioSmsConfig,
        env: &EnvSource,
    ) -> Result<Self, ChannelError> {
        let setting = |field: &str, value: &str| resolve_setting(env, name, field, field, value);
        let optional = |field: &str, value: &Option<String>| {
            value.as_deref().map(|v| setting(field, v)).transpose()
        };
        let account_sid = setting("account_sid", &config.account_sid)?;
        if !account_sid.starts_with("AC") {
            return Err(ChannelError::new(
                name,
                Some("account_sid"),
                format!(
                    "account_sid: `{account_sid}` is not an account SID; those start with `AC` \
                     (the Twilio Console shows it beside the auth token)"
                ),
            ));
        }
        let auth_token = Secret::new(setting("auth_token", &config.auth_token)?);
        let (username, password) = match (
            optional("api_key", &config.api_key)?,
            optional("api_secret", &config.api_secret)?,
        ) {
            (Some(key), Some(secret)) => (key, Secret::new(secret)),
            (None, None) => (account_sid.clone(), auth_token.clone()),
            (Some(_), None) => {
                return Err(ChannelError::new(
                    name,
                    Some("api_key"),
                    "api_key needs its api_secret",
                ));
            }
            (None, Some(_)) => {
                return Err(ChannelError::new(
                    name,
                    Some("api_secret"),
                    "api_secret needs the api_key (SK…) it belongs to",
                ));
            }
        };
        let sender = match (
            optional("from", &config.from)?,
            optional("messaging_service_sid", &config.messaging_service_sid)?,
        ) {
            (Some(number), None) => Sender::Number(number),
            (None, Some(service)) => Sender::Service(service),
            (None, None) => {
                return Err(ChannelError::new(
                    name,
                    None,
                    "give `from` (the sending number, as +15017122661) or `messaging_service_sid`",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(ChannelError::new(
                    name,
                    Some("messaging_service_sid"),
                    "give `from` or `messaging_service_sid`, not both: the service picks the number",
                ));
            }
        };
        let forward_calls_to = optional("forward_calls_to", &config.forward_calls_to)?;
        if let Some(number) = &forward_calls_to {
            let digits = number.strip_prefix('+').unwrap_or_default();
            if !(8..=15).contains(&digits.len()) || !digits.chars().all(|c| c.is_ascii_digit()) {
                return Err(ChannelError::new(
                    name,
                    Some("forward_calls_to"),
                    format!(
                        "forward_calls_to: `{number}` is not a phone number in E.164, such as +15558675310"
                    ),
                ));
            }
        }
        let ring_timeout = config.ring_timeout.as_std();
        if !(5..=600).contains(&ring_timeout.as_secs()) {
            return Err(ChannelError::new(
                name,
                Some("ring_timeout"),
                "ring_timeout: Twilio rings a forwarded call for 5s to 600s",
            ));
        }
        let public_url = optional("public_url", &config.public_url)?;
        if let Some(url) = &public_url {
            url_setting(name, "public_url", url)?;
        }
        let base = url_setting(name, "api_base", &setting("api_base", &config.api_base)?)?;
        let account_path = format!("2010-04-01/Accounts/{account_sid}");
        let join = |path: &str| endpoint(name, &base, path);
        let messages_url = join(&format!("{account_path}/Messages.json"))?;
        let account_url = join(&format!("{account_path}.json"))?;
        let timeout = config.timeout.as_std();

        Ok(TwilioSmsChannel {
            name: name.to_owned(),
            account_sid,
            username,
            password,
            auth_token,
            sender,
            public_url,
            forward_calls_to,
            ring_timeout,
            messages_url,
            account_url,
            timeout,
            client: super::http::client(name, timeout)?,
        })
    }
}

impl fmt::Debug for TwilioSmsChannel {
    // By hand: the secrets stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioSmsChannel")
            .field("name", &self.name)
            .field("account_sid", &self.account_sid)
            .field("sender", &self.sender)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Channel for TwilioSmsChannel {
    fn provider(&self) -> &'static str {
        "twilio_sms"
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    /// 1,600 characters of up to four bytes each; [`Channel::deliver`] counts characters.
    fn max_message_bytes(&self) -> usize {
        MAX_BODY_CHARS * 4
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivered, DeliveryError> {
        super::within_chars(&message.body, MAX_BODY_CHARS, "Twilio")?;
        let mut form: Vec<(&str, &str)> = vec![("To", &message.to), ("Body", &message.body)];
        match (&message.from, &self.sender) {
            (Some(from), _) => form.push(("From", from)),
            (None, Sender::Number(number)) => form.push(("From", number)),
            (None, Sender::Service(sid)) => form.push(("MessagingServiceSid", sid)),
        }
        if let Some(url) = &self.public_url {
            form.push(("StatusCallback", url));
        }
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&form)
            .finish();
        let request = self
            .client
            .post(self.messages_url.clone())
            .basic_auth(&self.username, Some(self.password.expose()))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(encoded);
        let reply = exchange(request, "Twilio", self.timeout)
            .await
            .map_err(unanswered)?;
        if reply.status.is_success() {
            return Ok(Delivered {
                provider_id: reply.json_str("/sid"),
            });
        }
        Err(classify(reply.status, &reply.body, reply.retry_after))
    }

    /// Reads the account (`GET /2010-04-01/Accounts/{sid}.json`): it proves the credentials
    /// without sending anything, and says when the account is suspended or closed.
    async fn healthcheck(&self) -> Result<(), String> {
        let request = self
            .client
            .get(self.account_url.clone())
            .basic_auth(&self.username, Some(self.password.expose()));
        let reply = exchange(request, "Twilio", self.timeout).await?;
        if !reply.status.is_success() {
            return Err(explain(reply.status, &reply.body));
        }
        match reply.json_str("/status").as_deref() {
            None | Some("active") => Ok(()),
            Some(other) => Err(format!("the Twilio account is {other}")),
        }
    }

    fn receiver(&self) -> Option<&dyn Receiver> {
        Some(self)
    }
}

/// Whether trying again can help, from Twilio's error code first and the HTTP status second.
fn classify(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> DeliveryError {
    let code = serde_json::from_slice::<ApiError>(body)
        .ok()
        .and_then(|e| e.code);
    let message = explain(status, body);
    match code {
        Some(21610) => DeliveryError::Unreachable {
            message,
            reason: "unsubscribed",
        },
        // 20429 (too many requests) is never processed, so always safe to repeat; 30003
        // (handset unreachable) may well pass later, whatever the HTTP status.
        Some(20429 | 30003) => DeliveryError::Transient {
            message,
            retry_after,
        },
        _ => by_status(status, message, retry_after),
    }
}

/// Twilio's error in words: its code and message, what the code means for the operator, and
/// the page that explains it.
fn explain(status: StatusCode, body: &[u8]) -> String {
    let Ok(error) = serde_json::from_slice::<ApiError>(body) else {
        return format!("Twilio answered {}{}", describe(status), snippet(body));
    };
    let mut text = format!("Twilio answered {}", describe(status));
    if let Some(code) = error.code {
        text.push_str(&format!(", error {code}"));
    }
    if let Some(message) = &error.message {
        text.push_str(&format!(": {message}"));
    }
    if let Some(meaning) = error.code.and_then(meaning) {
        text.push_str(&format!(" ({meaning})"));
    }
    if let Some(info) = &error.more_info {
        text.push_str(&format!("; see {info}"));
    }
    text
}

/// What the codes an operator meets most often mean for them.
fn meaning(code: u32) -> Option<&'static str> {
    Some(match code {
        20003 => "the account SID, API key or secret is wrong",
        20404 => "no such account: check account_sid",
        20429 => "too many requests; retried later",
        21211 => "the recipient is not a valid phone number",
        21408 => "the account may not send to this region; enable it in the Twilio Console",
        21606 | 21659 => "`from` is not a number of this account that can send SMS",
        21608 => "trial accounts may only text verified numbers",
        21610 => {
            "the recipient replied STOP to this number; Twilio sends nothing more until they reply START"
        }
        21614 => "the recipient cannot receive SMS (a landline?)",
        21617 => "the text is longer than 1,600 characters",
        30003 => "the handset is unreachable; retried later",
        30006 => "a landline or an unreachable carrier",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn config() -> TwilioSmsConfig {
        TwilioSmsConfig {
            account_sid: "${env:SID}".into(),
            auth_token: "${env:TOKEN}".into(),
            api_key: None,
            api_secret: None,
            from: Some("+15017122661".into()),
            messaging_service_sid: None,
            public_url: None,
            forward_calls_to: None,
            ring_timeout: crate::definitions::model::Duration::from_secs(20),
            api_base: "https://api.twilio.com".into(),
            timeout: crate::definitions::model::Duration::from_secs(5),
        }
    }

    fn env() -> EnvSource {
        EnvSource::Map(Arc::new(
            [
                (
                    "SID".to_owned(),
                    "AC00000000000000000000000000000001".to_owned(),
                ),
                ("TOKEN".to_owned(), "t0ken-value".to_owned()),
            ]
            .into(),
        ))
    }

    fn setting_of(config: &TwilioSmsConfig) -> Option<String> {
        TwilioSmsChannel::from_config("sms", config, &env())
            .unwrap_err()
            .setting
    }

    #[test]
    fn settings_are_checked_where_they_are_written() {
        let channel = TwilioSmsChannel::from_config("sms", &config(), &env()).unwrap();
        assert_eq!(
            channel.messages_url.as_str(),
            "https://api.twilio.com/2010-04-01/Accounts/AC00000000000000000000000000000001/Messages.json"
        );
        assert!(!format!("{channel:?}").contains("t0ken-value"));

        let mut c = config();
        c.account_sid = "SK123".into();
        assert_eq!(setting_of(&c).as_deref(), Some("account_sid"));
        let mut c = config();
        c.messaging_service_sid = Some("MG123".into());
        assert_eq!(setting_of(&c).as_deref(), Some("messaging_service_sid"));
        let mut c = config();
        c.from = None;
        assert_eq!(setting_of(&c), None);
        let mut c = config();
        c.api_key = Some("SK123".into());
        assert_eq!(setting_of(&c).as_deref(), Some("api_key"));
        let mut c = config();
        c.public_url = Some("herald.example.com/sms".into());
        assert_eq!(setting_of(&c).as_deref(), Some("public_url"));
        let mut c = config();
        c.auth_token = "${env:MISSING}".into();
        assert_eq!(setting_of(&c).as_deref(), Some("auth_token"));
        let mut c = config();
        c.forward_calls_to = Some("(555) 867-5310".into());
        assert_eq!(setting_of(&c).as_deref(), Some("forward_calls_to"));
        let mut c = config();
        c.ring_timeout = crate::definitions::model::Duration::from_secs(2);
        assert_eq!(setting_of(&c).as_deref(), Some("ring_timeout"));
    }

    #[test]
    fn error_codes_decide_whether_to_retry() {
        let body = |code: u32, status: u16| {
            format!(
                r#"{{"code": {code}, "message": "m", "more_info": "https://www.twilio.com/docs/errors/{code}", "status": {status}}}"#
            )
        };
        let permanent = |code: u32, status: u16| {
            matches!(
                classify(
                    StatusCode::from_u16(status).unwrap(),
                    body(code, status).as_bytes(),
                    None
                ),
                DeliveryError::Permanent { .. }
            )
        };
        assert!(permanent(21211, 400) && permanent(20003, 401));
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, body(21610, 400).as_bytes(), None),
            DeliveryError::Unreachable {
                reason: "unsubscribed",
                ..
            }
        ));
        assert!(!permanent(20429, 429) && !permanent(30003, 400) && !permanent(20500, 500));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>", None),
            DeliveryError::Transient { .. }
        ));
        let text = explain(StatusCode::BAD_REQUEST, body(21610, 400).as_bytes());
        assert_eq!(
            text,
            "Twilio answered 400 Bad Request, error 21610: m (the recipient replied STOP to this \
             number; Twilio sends nothing more until they reply START); see \
             https://www.twilio.com/docs/errors/21610"
        );
    }
}
