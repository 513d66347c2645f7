//! The inbound side of a channel: what a provider sends to Herald (a person's message, a
//! delivery report, a call to the number, a handshake), checked and read into one shape for
//! every provider.
//!
//! Every provider signs its requests differently (Twilio over the public URL and the sorted
//! form fields, WhatsApp over the raw body, Telegram with a secret header, Mailgun inside the
//! body, Resend with Standard Webhooks), and each words a message differently. A provider
//! that receives implements [`Receiver`]: [`Receiver::verify`] first, on the request exactly as
//! it arrived, then [`Receiver::parse`] into [`Received`]. What happens next is the same for
//! every provider and lives outside `channels`: the message is stored, deduplicated by its
//! provider id, then routed (compliance keywords, a run waiting for a reply, triggers).
//!
//! A channel says it receives by returning its receiver from [`super::Channel::receiver`].
//! `log`, `smtp` and `webhook` only send. The web chat's "provider" is a browser: its requests
//! carry a visitor's session token instead of a signature, and are verified the same way.

use std::fmt;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// A request from a provider, as it arrived. Signatures are computed over these exact bytes.
#[derive(Debug, Clone, Copy)]
pub struct InboundRequest<'a> {
    pub method: &'a Method,
    /// The URL the provider called, as it sees it: scheme, host, path and query. Behind a
    /// proxy this is the configured public URL, not the one the server saw.
    pub url: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// Unix milliseconds, for providers whose signatures expire (Standard Webhooks, Mailgun).
    pub now: i64,
}

/// What a verified request held.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// Messages people sent and reports on messages Herald sent; one request may carry
    /// several (WhatsApp batches them).
    Events {
        messages: Vec<InboundMessage>,
        reports: Vec<DeliveryReport>,
        /// What the provider expects back once they are stored.
        answer: ProviderAnswer,
    },
    /// A handshake the provider expects answered at once, with nothing stored (WhatsApp's
    /// `hub.challenge` when the webhook is registered).
    Handshake(ProviderAnswer),
    /// How a phone call to the provider's number ended, as far as the caller is concerned.
    Call {
        call: CallReport,
        /// What the provider expects back once the call is recorded (TwiML for Twilio).
        answer: ProviderAnswer,
    },
}

impl Received {
    /// Delivery reports alone, answered `200`: what the e-mail providers' event webhooks and
    /// status callbacks carry.
    pub fn reports(reports: Vec<DeliveryReport>) -> Received {
        Received::Events {
            messages: Vec::new(),
            reports,
            answer: ProviderAnswer::ok(),
        }
    }
}

/// A message a person sent, the same for every provider.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// The channel's name in herald.yaml.
    pub channel: String,
    /// The sender's address on this channel: a phone number in E.164, a chat id, an e-mail.
    pub from: String,
    /// The address the person wrote to, when the provider says.
    pub to: Option<String>,
    pub text: String,
    pub media: Vec<Media>,
    /// A bot command (`/start PAYLOAD`, `/reset`), for providers whose apps send them.
    pub command: Option<Command>,
    /// The provider's id for the message. Providers redeliver; this is what deduplicates.
    pub provider_id: Option<String>,
    /// The request as the provider sent it, parsed, for what the shape above leaves out.
    pub raw: Value,
}

/// A call someone made to the provider's number, once it is known whether anyone answered.
#[derive(Debug, Clone, PartialEq)]
pub struct CallReport {
    /// The channel's name in herald.yaml.
    pub channel: String,
    /// The caller's number, in E.164 when the provider knows it.
    pub from: String,
    /// The number they called.
    pub to: Option<String>,
    /// The provider's id for the call. Providers report a call more than once (a retry, a
    /// second callback); this is what makes it one call.
    pub call_id: String,
    /// The provider's word for how it ended: `no-answer`, `busy`, `completed`...
    pub status: String,
    /// Nobody took the call: it rang out, was busy, failed, or the caller gave up.
    pub missed: bool,
    pub raw: Value,
}

/// A command a person sent to a bot: `/start +15551234567` is `start` with that payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Without the slash or a `@botname` suffix, in lower case.
    pub name: String,
    /// The rest of the text, trimmed; empty when there is none.
    pub payload: String,
}

impl Command {
    /// The command at the start of `text`, if it starts with one.
    pub fn parse(text: &str) -> Option<Command> {
        let rest = text.trim_start().strip_prefix('/')?;
        let (word, payload) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let name = word.split('@').next().unwrap_or(word);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        Some(Command {
            name: name.to_ascii_lowercase(),
            payload: payload.trim().to_owned(),
        })
    }
}

/// An attachment: where to fetch it, and its type when the provider says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub url: String,
    pub content_type: Option<String>,
}

/// What a provider reports about a message Herald sent.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryReport {
    pub channel: String,
    /// The id the provider gave when it accepted the message (`Delivered::provider_id`).
    pub provider_id: String,
    pub status: ReportedStatus,
    /// The provider's words or code for a failure.
    pub error: Option<String>,
    pub raw: Value,
}

/// Where a sent message got to, in the provider's telling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReportedStatus {
    /// Accepted and on its way; not yet at the person.
    Sent,
    Delivered,
    /// Will not arrive; `permanent` when retrying cannot help (an unknown number).
    Failed {
        permanent: bool,
    },
    /// The mailbox or number refused it.
    Bounced,
    /// The person marked it as spam.
    Complained,
    /// The person asked the provider to stop (Twilio's 21610, a mail unsubscribe).
    Unsubscribed,
}

impl ReportedStatus {
    /// The word stored and used in event names: `delivered`, `failed`, `deferred` (a failure
    /// that may still pass), `bounced`, `complained`, `unsubscribed`, `sent`.
    pub fn label(self) -> &'static str {
        match self {
            ReportedStatus::Sent => "sent",
            ReportedStatus::Delivered => "delivered",
            ReportedStatus::Failed { permanent: true } => "failed",
            ReportedStatus::Failed { permanent: false } => "deferred",
            ReportedStatus::Bounced => "bounced",
            ReportedStatus::Complained => "complained",
            ReportedStatus::Unsubscribed => "unsubscribed",
        }
    }
}

/// The HTTP answer a provider expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderAnswer {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub body: String,
}

impl ProviderAnswer {
    /// `200` with an empty body: what most providers want.
    pub fn ok() -> ProviderAnswer {
        ProviderAnswer {
            status: 200,
            content_type: None,
            body: String::new(),
        }
    }
}

/// Why a request from a provider was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InboundError {
    /// The signature or secret is missing or wrong, or the request is too old to trust.
    /// Answered 403 without reading further.
    Unauthenticated(String),
    /// Signed correctly but not in a shape this provider sends. Answered 400.
    Malformed(String),
    /// A browser's request without a session Herald issued, or with one that ran out (the
    /// web chat's visitors). Answered 401, which tells the page to get a new session.
    NoSession(String),
    /// More than the channel takes (a visitor's message over the length limit). Answered 413.
    TooLarge(String),
}

impl fmt::Display for InboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InboundError::Unauthenticated(m) => write!(f, "not from the provider: {m}"),
            InboundError::Malformed(m) => write!(f, "not a request this provider sends: {m}"),
            InboundError::NoSession(m) | InboundError::TooLarge(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for InboundError {}

impl InboundError {
    /// The HTTP status the provider is answered with.
    pub fn status(&self) -> u16 {
        match self {
            InboundError::Unauthenticated(_) => 403,
            InboundError::Malformed(_) => 400,
            InboundError::NoSession(_) => 401,
            InboundError::TooLarge(_) => 413,
        }
    }
}

/// The inbound side of a provider.
pub trait Receiver: Send + Sync {
    /// Checks that the request comes from the provider. Runs before anything is read, on the
    /// request as it arrived; comparisons of secrets are constant-time.
    fn verify(&self, request: &InboundRequest<'_>) -> Result<(), InboundError>;

    /// Reads a verified request into messages and reports.
    fn parse(&self, request: &InboundRequest<'_>) -> Result<Received, InboundError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_with_their_payload() {
        let c = |text: &str| Command::parse(text).map(|c| (c.name, c.payload));
        assert_eq!(
            c("/start +15551234567"),
            Some(("start".into(), "+15551234567".into()))
        );
        assert_eq!(c("/Reset@HeraldBot"), Some(("reset".into(), String::new())));
        assert_eq!(
            c("  /help  me please "),
            Some(("help".into(), "me please".into()))
        );
        assert_eq!(c("hello /start"), None);
        assert_eq!(c("/"), None);
        assert_eq!(c("/ start"), None);
        assert_eq!(c("/path/to/file"), None);
    }
}
