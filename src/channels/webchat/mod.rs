//! The `webchat` channel: a chat on the operator's own web pages, with no provider in between.
//!
//! A page loads `widget.js` from Herald with one `<script>` tag. The widget asks for a session
//! (a signed token naming a new visitor, see [`session`]), posts what the visitor types to
//! `{routes.inbound}/{channel}`, where it is verified and recorded like any provider's message
//! (see [`inbound`]), and listens for replies on a Server-Sent Events stream. The HTTP side of
//! the session, the stream and the script is in `server::webchat`.
//!
//! Delivering a reply is recording it: the outbox row is the reply. `deliver` also pushes it
//! to the visitor's streams open in this process ([`hub`]), so it shows at once; a browser that
//! is not connected, or connected to another Herald process, reads it from the store when it
//! (re)connects or on the stream's next poll. So `deliver` never fails for want of a listener.

pub mod config;
pub mod hub;
mod inbound;
pub mod origin;
pub mod session;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::inbound::Receiver;
use super::{
    AddressKind, Channel, ChannelError, Delivered, DeliveryError, OutboundMessage, resolve_setting,
};
use crate::definitions::env::{EnvSource, Secret};
use crate::store::Millis;
use config::WebchatConfig;
use hub::{Hub, Reply};
use origin::AllowedOrigins;
use session::{Rejected, Session, Sessions};

pub(crate) use inbound::bearer;

/// The embeddable script, served at `{routes.inbound}/{channel}/widget.js`.
pub const WIDGET_JS: &str = include_str!("widget.js");

/// The shortest `secret` taken: an HMAC key shorter than its hash is easier to guess.
const MIN_SECRET_CHARS: usize = 32;

/// The longest reply, in bytes: a chat bubble, not a document.
const MAX_REPLY_BYTES: usize = 32 * 1024;

/// The longest client message id, in characters.
pub(crate) const MAX_CLIENT_ID_CHARS: usize = 100;

pub struct WebchatChannel {
    name: String,
    origins: AllowedOrigins,
    sessions: Sessions,
    lifetime_ms: i64,
    max_message_chars: usize,
    max_streams: usize,
    hub: Arc<Hub>,
}

impl WebchatChannel {
    /// Builds the channel from its herald.yaml entry, resolving `${env:...}` in the secrets.
    pub(crate) fn from_config(
        name: &str,
        config: &WebchatConfig,
        env: &EnvSource,
    ) -> Result<Self, ChannelError> {
        let origins = AllowedOrigins::parse(&config.allowed_origins).map_err(|(i, message)| {
            let pointer = format!("allowed_origins/{i}");
            let message = if message.starts_with("allowed_origins") {
                message
            } else {
                format!("allowed_origins: {message}")
            };
            ChannelError::new(name, Some(&pointer), message)
        })?;
        let secret = |field: &str, value: &str| -> Result<Secret, ChannelError> {
            let value = resolve_setting(env, name, field, field, value)?;
            let chars = value.chars().count();
            if chars < MIN_SECRET_CHARS {
                return Err(ChannelError::new(
                    name,
                    Some(field),
                    format!(
                        "{field}: {chars} characters is too short to sign sessions with; use \
                         {MIN_SECRET_CHARS} or more random ones (`openssl rand -base64 32` makes them)"
                    ),
                ));
            }
            Ok(Secret::new(value))
        };
        let current = secret("secret", &config.secret)?;
        let previous = config
            .previous_secret
            .as_deref()
            .map(|p| secret("previous_secret", p))
            .transpose()?;
        let lifetime = config.session_lifetime.as_std();
        if lifetime < std::time::Duration::from_secs(60) {
            return Err(ChannelError::new(
                name,
                Some("session_lifetime"),
                format!(
                    "session_lifetime: {} is shorter than a conversation; use 1h or more (30d is usual)",
                    config.session_lifetime
                ),
            ));
        }
        let lifetime_ms = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX / 2);
        if config.max_message_chars == 0 || config.max_streams_per_visitor == 0 {
            let setting = if config.max_message_chars == 0 {
                "max_message_chars"
            } else {
                "max_streams_per_visitor"
            };
            return Err(ChannelError::new(
                name,
                Some(setting),
                format!("{setting}: must be 1 or more"),
            ));
        }
        Ok(WebchatChannel {
            name: name.to_owned(),
            origins,
            sessions: Sessions::new(name, current, previous, lifetime_ms),
            lifetime_ms,
            max_message_chars: config.max_message_chars as usize,
            max_streams: config.max_streams_per_visitor as usize,
            hub: Arc::new(Hub::default()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a browser request with this `Origin` may use the chat. A request without one
    /// is not from a browser, which always sends one across sites and with every POST; the
    /// token alone decides for it.
    pub fn check_origin(&self, origin: Option<&str>) -> Result<(), String> {
        match origin {
            None => Ok(()),
            Some(o) if self.origins.allows(o) => Ok(()),
            Some(o) => Err(format!(
                "the page's site, {o}, is not in this chat's allowed_origins in herald.yaml"
            )),
        }
    }

    /// Whether a browser at `origin` may read Herald's answers (CORS).
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.origins.allows(origin)
    }

    /// A new visitor's session, or the visitor of `previous` again with a fresh expiry when
    /// that token is still good (so a visitor who keeps coming back stays who they are).
    pub fn open_session(&self, previous: Option<&str>, now: Millis) -> (String, Session) {
        let visitor = previous
            .and_then(|t| self.sessions.check(t, now).ok())
            .map(|s| s.visitor)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        self.sessions.issue(&visitor, now)
    }

    /// The session a token names, or why it names none, worded for the person debugging the
    /// page.
    pub fn session(&self, token: Option<&str>, now: Millis) -> Result<Session, String> {
        let Some(token) = token.filter(|t| !t.trim().is_empty()) else {
            return Err(format!(
                "no session token: POST …/{}/session for one, then send it as \
                 `Authorization: Bearer <token>`",
                self.name
            ));
        };
        self.sessions.check(token, now).map_err(|r| match r {
            Rejected::Invalid => format!(
                "the session token is not one this chat issued (or its secret changed); \
                 POST …/{}/session for a new one",
                self.name
            ),
            Rejected::Expired(at) => format!(
                "the session token expired at {}; POST …/{}/session for a new one",
                crate::engine::clock::rfc3339(at),
                self.name
            ),
        })
    }

    pub fn session_lifetime_ms(&self) -> i64 {
        self.lifetime_ms
    }

    pub fn max_message_chars(&self) -> usize {
        self.max_message_chars
    }

    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// The reply streams open in this process.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

/// Whether `text` is a visitor id Herald makes (a UUID, hyphenated, lower case).
pub(crate) fn is_visitor_id(text: &str) -> bool {
    text.len() == 36
        && uuid::Uuid::parse_str(text).is_ok_and(|u| u.hyphenated().to_string() == text)
}

impl fmt::Debug for WebchatChannel {
    // By hand: the session keys stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebchatChannel")
            .field("name", &self.name)
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Channel for WebchatChannel {
    fn provider(&self) -> &'static str {
        "webchat"
    }

    fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(5)
    }

    fn max_message_bytes(&self) -> usize {
        MAX_REPLY_BYTES
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivered, DeliveryError> {
        if !is_visitor_id(&message.to) {
            return Err(DeliveryError::Permanent {
                message: format!(
                    "`{}` is not a web chat visitor; reply to `{{{{ message.from }}}}` of a \
                     message from channel `{}`",
                    message.to, self.name
                ),
            });
        }
        let reply = Arc::new(Reply {
            id: message.id.clone(),
            text: message.body.clone(),
            from: message.from.clone(),
            sent_at: None,
        });
        let streams = self.hub.publish(&message.to, reply);
        tracing::debug!(channel = %self.name, visitor = %message.to, streams, "web chat reply");
        Ok(Delivered { provider_id: None })
    }

    /// Nothing remote to reach: the chat is up when Herald is.
    async fn healthcheck(&self) -> Result<(), String> {
        Ok(())
    }

    /// Visitor ids, which belong to no contact until a workflow links them to one.
    fn address_kind(&self) -> AddressKind {
        AddressKind::ProviderId
    }

    fn receiver(&self) -> Option<&dyn Receiver> {
        Some(self)
    }

    fn webchat(&self) -> Option<&WebchatChannel> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::model::Duration;

    fn config() -> WebchatConfig {
        WebchatConfig {
            allowed_origins: vec!["https://www.example-cars.com".into()],
            secret: "${env:CHAT_SECRET}".into(),
            previous_secret: None,
            session_lifetime: Duration::from_secs(30 * 86_400),
            max_message_chars: 2000,
            max_streams_per_visitor: 5,
        }
    }

    fn env(secret: &str) -> EnvSource {
        EnvSource::Map(Arc::new(
            [("CHAT_SECRET".to_owned(), secret.to_owned())].into(),
        ))
    }

    #[test]
    fn settings_are_checked_where_they_are_written() {
        let good = "s".repeat(32);
        let channel = WebchatChannel::from_config("chat", &config(), &env(&good)).unwrap();
        assert!(!format!("{channel:?}").contains(&good));
        let error = |c: &WebchatConfig, secret: &str| {
            WebchatChannel::from_config("chat", c, &env(secret)).unwrap_err()
        };
        let short = error(&config(), "short");
        assert_eq!(short.setting.as_deref(), Some("secret"));
        assert!(short.message.contains("openssl rand"), "{short}");
        let mut c = config();
        c.allowed_origins.push("https://example.com/chat".into());
        let e = error(&c, &good);
        assert_eq!(e.setting.as_deref(), Some("allowed_origins/1"));
        assert!(e.message.contains("has a path"), "{e}");
        let mut c = config();
        c.session_lifetime = Duration::from_secs(5);
        assert_eq!(
            error(&c, &good).setting.as_deref(),
            Some("session_lifetime")
        );
    }

    #[test]
    fn a_session_is_renewed_for_the_same_visitor_until_it_runs_out() {
        let channel =
            WebchatChannel::from_config("chat", &config(), &env(&"s".repeat(32))).unwrap();
        let now = 1_700_000_000_000;
        let (token, first) = channel.open_session(None, now);
        assert!(is_visitor_id(&first.visitor), "{}", first.visitor);
        let (_, renewed) = channel.open_session(Some(&token), now + 1000);
        assert_eq!(renewed.visitor, first.visitor);
        assert!(renewed.expires_at > first.expires_at);
        let (_, later) = channel.open_session(Some(&token), first.expires_at);
        assert_ne!(
            later.visitor, first.visitor,
            "an expired session is not renewed"
        );
        let (_, forged) = channel.open_session(Some("junk"), now);
        assert_ne!(forged.visitor, first.visitor);
        let err = channel.session(Some(&token), first.expires_at).unwrap_err();
        assert!(err.contains("expired"), "{err}");
        assert!(channel.session(None, now).unwrap_err().contains("Bearer"));
    }

    #[tokio::test]
    async fn a_reply_to_something_that_is_not_a_visitor_fails_for_good() {
        let channel =
            WebchatChannel::from_config("chat", &config(), &env(&"s".repeat(32))).unwrap();
        let message = OutboundMessage {
            id: "m1".into(),
            idempotency_key: "k1".into(),
            channel: "chat".into(),
            to: "ann@example.com".into(),
            from: None,
            subject: None,
            body: "Hello".into(),
            html: false,
            headers: Default::default(),
            run_id: None,
            workflow_id: None,
            step_id: None,
            approved_template: None,
        };
        let error = channel.deliver(&message).await.unwrap_err();
        assert!(error.is_permanent());
        assert!(error.to_string().contains("message.from"), "{error}");
        // A visitor with no stream open: delivered all the same (the row is the reply).
        let (_, session) = channel.open_session(None, 0);
        let to_visitor = OutboundMessage {
            to: session.visitor,
            ..message
        };
        assert_eq!(
            channel.deliver(&to_visitor).await,
            Ok(Delivered { provider_id: None })
        );
    }
}
