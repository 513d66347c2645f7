//! The `smtp` channel: e-mail through an SMTP relay, sent with lettre.
//!
//! One lettre transport per channel, so connections to the relay are pooled and reused
//! across deliveries. The Message-ID is derived from the idempotency key: a message re-sent
//! after a crash carries the same Message-ID as the first attempt, which lets mail systems
//! (and people) recognise the duplicate.

pub mod config;

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lettre::address::{AddressError, Envelope};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message, MultiPart, SinglePart};
use lettre::transport::smtp::AsyncSmtpTransportBuilder;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sha2::{Digest, Sha256};

use super::{
    Channel, ChannelError, Delivered, DeliveryError, OutboundMessage, error_chain, resolve_setting,
};
use crate::definitions::env::{EnvSource, Secret};
use config::{SmtpConfig, SmtpTls};

/// Headers lettre writes itself, or that would change who receives the message. A custom
/// header with one of these names is ignored rather than allowed to contradict the envelope.
const MANAGED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Bcc",
    "Subject",
    "Message-ID",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
];

pub struct SmtpChannel {
    name: String,
    host: String,
    port: u16,
    tls: SmtpTls,
    username: Option<String>,
    from: Mailbox,
    timeout: Duration,
    builder: AsyncSmtpTransportBuilder,
    live: Mutex<Option<Live>>,
    generations: AtomicU64,
}

/// The transport in use. lettre's pool spawns Tokio tasks when it is created and when it is
/// dropped, so it is built on the first delivery (inside a runtime) rather than in
/// [`SmtpChannel::from_config`], and keeps a handle to that runtime for its drop.
struct Live {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    generation: u64,
    runtime: tokio::runtime::Handle,
}

impl SmtpChannel {
    /// Builds the channel from its herald.yaml entry, resolving `${env:...}` in every setting.
    pub(crate) fn from_config(
        name: &str,
        config: &SmtpConfig,
        env: &EnvSource,
    ) -> Result<Self, ChannelError> {
        crate::tls::init();
        let host = resolve_setting(env, name, "host", "host", &config.host)?;
        let from_text = resolve_setting(env, name, "from", "from", &config.from)?;
        let username = config
            .username
            .as_deref()
            .map(|u| resolve_setting(env, name, "username", "username", u))
            .transpose()?;
        let password = config
            .password
            .as_deref()
            .map(|p| resolve_setting(env, name, "password", "password", p).map(Secret::new))
            .transpose()?;

        if host.trim().is_empty() {
            return Err(ChannelError::new(name, Some("host"), "host is empty"));
        }
        let from = sender(name, &from_text)?;
        let timeout = config.timeout.as_std();

        let builder = match config.tls {
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
                .map_err(|e| {
                    ChannelError::new(
                        name,
                        Some("tls"),
                        format!("cannot set up TLS for `{host}`: {e}"),
                    )
                })?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&host).map_err(|e| {
                ChannelError::new(
                    name,
                    Some("tls"),
                    format!("cannot set up TLS for `{host}`: {e}"),
                )
            })?,
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host),
        };
        let mut builder = builder.port(config.port()).timeout(Some(timeout));
        if let Some(user) = &username {
            let secret = password.as_ref().map(Secret::expose).unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), secret.to_owned()));
        }

        Ok(SmtpChannel {
            name: name.to_owned(),
            host,
            port: config.port(),
            tls: config.tls,
            username,
            from,
            timeout,
            builder,
            live: Mutex::new(None),
            generations: AtomicU64::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The transport, built on first use. Returns its generation so a delivery that timed out
    /// can retire exactly the transport it used.
    fn transport(&self) -> (AsyncSmtpTransport<Tokio1Executor>, u64) {
        let mut live = crate::sync::lock(&self.live);
        let current = live.get_or_insert_with(|| Live {
            transport: self.builder.clone().build(),
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            runtime: tokio::runtime::Handle::current(),
        });
        (current.transport.clone(), current.generation)
    }

    /// Throws away a transport after a delivery on it was cut short. The abandoned connection
    /// may be halfway through a command; lettre would otherwise put it back in the pool, and
    /// the next message would be written into the middle of the old conversation.
    fn retire(&self, generation: u64) {
        let retired = {
            let mut live = crate::sync::lock(&self.live);
            match &*live {
                Some(l) if l.generation == generation => live.take(),
                _ => None,
            }
        };
        if let Some(old) = retired {
            let timeout = self.timeout;
            // Shutting the pool down closes its parked connections and makes it abort the
            // cancelled one rather than park it. lettre says QUIT and waits for the answer
            // with no time limit, which a hung relay never gives: hence the task and the
            // bound, after which the sockets are simply dropped.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(timeout, old.transport.shutdown()).await;
            });
        }
    }

    fn relay(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn classify(&self, error: &lettre::transport::smtp::Error) -> DeliveryError {
        let relay = self.relay();
        if error.is_permanent() {
            DeliveryError::Permanent {
                message: format!("SMTP relay {relay} rejected the message: {error}"),
            }
        } else if error.is_transient() {
            DeliveryError::Transient {
                message: format!("SMTP relay {relay} deferred the message: {error}"),
                retry_after: None,
            }
        } else {
            // Connection refused, timeouts, TLS handshakes and garbled replies: the relay
            // or the network may well be back by the next attempt.
            DeliveryError::Transient {
                message: format!(
                    "could not deliver through SMTP relay {relay}: {}",
                    error_chain(error)
                ),
                retry_after: None,
            }
        }
    }
}

impl fmt::Debug for SmtpChannel {
    // By hand: lettre's builder would print the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpChannel")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("from", &self.from.to_string())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for SmtpChannel {
    fn drop(&mut self) {
        let live = self
            .live
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(live) = live
            && tokio::runtime::Handle::try_current().is_err()
        {
            // lettre's pool spawns a clean-up task when dropped, which panics outside a
            // runtime (a channel set dropped after `block_on` returned, for instance).
            let _guard = live.runtime.enter();
            drop(live.transport);
        }
    }
}

#[async_trait]
impl Channel for SmtpChannel {
    fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Most relays refuse messages over 10 to 50 MB; 10 MiB is the common floor.
    fn max_message_bytes(&self) -> usize {
        10 << 20
    }

    fn provider(&self) -> &'static str {
        "smtp"
    }

    fn is_email(&self) -> bool {
        true
    }

    /// Connects (with the login, when there is one) and says `NOOP` on a pooled connection,
    /// as a delivery would: a wrong password or a relay that went away shows here first.
    async fn healthcheck(&self) -> Result<(), String> {
        let (transport, generation) = self.transport();
        match tokio::time::timeout(self.timeout, transport.test_connection()).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(format!("SMTP relay {} did not accept NOOP", self.relay())),
            Ok(Err(e)) => Err(format!(
                "cannot use SMTP relay {}: {}",
                self.relay(),
                error_chain(&e)
            )),
            Err(_) => {
                self.retire(generation);
                Err(format!(
                    "SMTP relay {} did not answer within {}",
                    self.relay(),
                    crate::definitions::model::Duration(self.timeout)
                ))
            }
        }
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivered, DeliveryError> {
        let (email, message_id) = compose(message, &self.from)?;
        let (transport, generation) = self.transport();
        // lettre only bounds the TCP connect; a relay that accepts and then goes quiet would
        // hold the delivery forever without this.
        match tokio::time::timeout(self.timeout, transport.send(email)).await {
            Ok(Ok(_)) => Ok(Delivered {
                provider_id: Some(message_id),
            }),
            Ok(Err(e)) => Err(self.classify(&e)),
            Err(_) => {
                self.retire(generation);
                Err(DeliveryError::Transient {
                    message: format!(
                        "SMTP relay {} did not finish the delivery within {}",
                        self.relay(),
                        crate::definitions::model::Duration(self.timeout)
                    ),
                    retry_after: None,
                })
            }
        }
    }
}

/// A channel's default sender (its `from` setting), or an error at that setting. Shared by
/// the e-mail providers.
pub(crate) fn sender(channel: &str, text: &str) -> Result<Mailbox, ChannelError> {
    text.parse().map_err(|e| {
        ChannelError::new(
            channel,
            Some("from"),
            format!(
                "from: `{text}` is not an e-mail address: {}",
                explain_address_error(e)
            ),
        )
    })
}

/// The Message-ID for an idempotency key: the same key always gives the same id.
pub fn message_id(idempotency_key: &str, from: &Mailbox) -> String {
    let digest = hex::encode(Sha256::digest(idempotency_key.as_bytes()));
    let domain = from.email.domain();
    // A Message-ID must be ASCII; an internationalised sender domain gets a neutral one.
    let domain = if domain.is_ascii() {
        domain
    } else {
        "herald.invalid"
    };
    format!("<{}@{domain}>", &digest[..32])
}

/// Builds the e-mail for `message`. Returns it with its Message-ID.
pub(crate) fn compose(
    message: &OutboundMessage,
    default_from: &Mailbox,
) -> Result<(Message, String), DeliveryError> {
    let from = match &message.from {
        Some(text) => parse_mailbox("sender", text)?,
        None => default_from.clone(),
    };
    let to = parse_mailbox("recipient", &message.to)?;
    let id = message_id(&message.idempotency_key, &from);

    // An explicit envelope: recipients come from `to` alone, never from custom headers.
    let envelope = Envelope::new(Some(from.email.clone()), vec![to.email.clone()])
        .map_err(|e| permanent(format!("cannot address the message: {e}")))?;

    let mut builder = Message::builder();
    for (name, value) in &message.headers {
        if MANAGED_HEADERS.iter().any(|m| m.eq_ignore_ascii_case(name)) {
            tracing::debug!(channel = %message.channel, header = %name, "custom header ignored: the SMTP channel sets it");
            continue;
        }
        builder = builder.raw_header(custom_header(name, value)?);
    }
    let builder = builder
        .from(from)
        .to(to)
        .subject(message.subject.clone().unwrap_or_default())
        .message_id(Some(id.clone()))
        .envelope(envelope);
    // HTML goes with a plain-text alternative made from it, as mail clients and spam filters
    // expect of HTML mail.
    let email = if message.html {
        builder.multipart(MultiPart::alternative_plain_html(
            super::email_text::from_html(&message.body),
            message.body.clone(),
        ))
    } else {
        builder.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(message.body.clone()),
        )
    }
    .map_err(|e| permanent(format!("cannot build the e-mail: {e}")))?;
    Ok((email, id))
}

pub(crate) fn parse_mailbox(role: &str, text: &str) -> Result<Mailbox, DeliveryError> {
    text.parse::<Mailbox>().map_err(|e| {
        permanent(format!(
            "{role} address `{text}` is not an e-mail address: {}",
            explain_address_error(e)
        ))
    })
}

fn custom_header(name: &str, value: &str) -> Result<HeaderValue, DeliveryError> {
    // RFC 5322 field names are printable ASCII without a colon; lettre checks less than that.
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    let header_name = HeaderName::new_from_ascii(name.to_owned())
        .ok()
        .filter(|_| name_ok)
        .ok_or_else(|| permanent(format!("`{name}` is not a valid e-mail header name")))?;
    // A line break in a value would let rendered data add headers of its own.
    if value.contains(['\r', '\n']) {
        return Err(permanent(format!(
            "the value of header `{name}` contains a line break"
        )));
    }
    Ok(HeaderValue::new(header_name, value.to_owned()))
}

fn explain_address_error(error: AddressError) -> &'static str {
    match error {
        AddressError::MissingParts => "it needs a user and a domain, as in name@example.com",
        AddressError::Unbalanced => "an angle bracket is not closed",
        AddressError::InvalidUser => "the part before the @ is not valid",
        AddressError::InvalidDomain => "the domain is not valid",
        _ => "it is not in the form name@example.com or Name <name@example.com>",
    }
}

fn permanent(message: String) -> DeliveryError {
    DeliveryError::Permanent { message }
}

#[cfg(test)]
mod tests {
    use indexmap::IndexMap;

    use super::*;

    fn message(key: &str) -> OutboundMessage {
        OutboundMessage {
            id: "m1".into(),
            idempotency_key: key.into(),
            channel: "mail".into(),
            to: "Ann <ann@example.org>".into(),
            from: None,
            subject: Some("Hello".into()),
            body: "Hi Ann".into(),
            html: false,
            headers: IndexMap::new(),
            run_id: None,
            workflow_id: None,
            step_id: None,
            approved_template: None,
        }
    }

    fn sender() -> Mailbox {
        "Herald <herald@example.com>".parse().unwrap()
    }

    fn formatted(m: &OutboundMessage) -> String {
        let (email, _) = compose(m, &sender()).unwrap();
        String::from_utf8(email.formatted()).unwrap()
    }

    #[test]
    fn message_id_is_stable_per_key_and_uses_the_sender_domain() {
        let a = message_id("run-1/step-1/0", &sender());
        assert_eq!(a, message_id("run-1/step-1/0", &sender()));
        assert_ne!(a, message_id("run-1/step-1/1", &sender()));
        let hex_part = a.trim_start_matches('<').split('@').next().unwrap();
        assert_eq!(hex_part.len(), 32);
        assert!(hex_part.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(a.ends_with("@example.com>"), "{a}");
    }

    #[test]
    fn composes_headers_and_envelope() {
        let mut m = message("k");
        m.headers.insert("X-Campaign".into(), "spring".into());
        m.headers.insert("Bcc".into(), "spy@example.net".into());
        m.headers.insert("subject".into(), "ignored".into());
        let (email, id) = compose(&m, &sender()).unwrap();
        let text = String::from_utf8(email.formatted()).unwrap();
        assert!(text.contains("X-Campaign: spring\r\n"), "{text}");
        assert!(text.contains(&format!("Message-ID: {id}\r\n")), "{text}");
        assert!(text.contains("Subject: Hello\r\n"), "{text}");
        assert!(!text.contains("ignored"), "{text}");
        assert!(!text.contains("spy@"), "{text}");
        assert!(
            text.contains("Content-Type: text/plain; charset=utf-8"),
            "{text}"
        );
        let to: Vec<String> = email
            .envelope()
            .to()
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(to, ["ann@example.org"]);
    }

    #[test]
    fn html_and_sender_override() {
        let mut m = message("k");
        m.html = true;
        m.from = Some("Sales <sales@example.net>".into());
        let text = formatted(&m);
        assert!(
            text.contains("Content-Type: text/html; charset=utf-8"),
            "{text}"
        );
        assert!(text.contains("From: Sales <sales@example.net>"), "{text}");
        assert!(text.contains("@example.net>\r\n"), "{text}");
    }

    #[test]
    fn line_breaks_cannot_inject_headers() {
        let mut m = message("k");
        m.subject = Some("Hi\r\nBcc: spy@example.net".into());
        let text = formatted(&m);
        assert!(!text.contains("\r\nBcc:"), "{text}");

        let mut m = message("k");
        m.headers
            .insert("X-Note".into(), "a\r\nBcc: spy@example.net".into());
        let err = compose(&m, &sender()).unwrap_err();
        assert!(err.is_permanent());
        assert!(err.to_string().contains("X-Note"), "{err}");

        let mut m = message("k");
        m.headers.insert("X Bad".into(), "v".into());
        assert!(compose(&m, &sender()).unwrap_err().is_permanent());
    }

    #[test]
    fn bad_addresses_are_permanent_and_say_which() {
        let mut m = message("k");
        m.to = "not-an-address".into();
        let err = compose(&m, &sender()).unwrap_err();
        assert!(err.is_permanent());
        assert!(
            err.to_string()
                .contains("recipient address `not-an-address`"),
            "{err}"
        );

        let mut m = message("k");
        m.to = "ann@example.org, bob@example.org".into();
        assert!(compose(&m, &sender()).unwrap_err().is_permanent());

        let mut m = message("k");
        m.from = Some("nobody@".into());
        let err = compose(&m, &sender()).unwrap_err();
        assert!(
            err.to_string().contains("sender address `nobody@`"),
            "{err}"
        );
    }

    #[test]
    fn from_config_resolves_env_and_hides_the_password() {
        let env = EnvSource::Map(std::sync::Arc::new(
            [
                ("SMTP_USER".to_owned(), "mailer".to_owned()),
                ("SMTP_PASS".to_owned(), "hunter2".to_owned()),
            ]
            .into(),
        ));
        let config = SmtpConfig {
            host: "127.0.0.1".into(),
            port: Some(2525),
            username: Some("${env:SMTP_USER}".into()),
            password: Some("${env:SMTP_PASS}".into()),
            tls: SmtpTls::None,
            from: "Herald <herald@example.com>".into(),
            timeout: crate::definitions::model::Duration::from_secs(5),
        };
        let channel = SmtpChannel::from_config("mail", &config, &env).unwrap();
        let debug = format!("{channel:?}");
        assert!(debug.contains("mailer"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");

        let err = SmtpChannel::from_config("mail", &config, &EnvSource::Map(Default::default()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`mail`") && err.contains("SMTP_USER"), "{err}");

        let bad_from = SmtpConfig {
            from: "herald".into(),
            ..config
        };
        let err = SmtpChannel::from_config("mail", &bad_from, &env).unwrap_err();
        assert_eq!(err.setting.as_deref(), Some("from"));
        assert!(err.to_string().contains("from"), "{err}");
    }

    #[test]
    fn dropping_outside_the_runtime_that_built_the_transport_does_not_panic() {
        let config = SmtpConfig {
            host: "127.0.0.1".into(),
            port: Some(9),
            username: None,
            password: None,
            tls: SmtpTls::None,
            from: "herald@example.com".into(),
            timeout: crate::definitions::model::Duration::from_secs(5),
        };
        let env = EnvSource::Map(Default::default());
        let channel = SmtpChannel::from_config("mail", &config, &env).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            channel.transport();
        });
        drop(channel);
        let channel = SmtpChannel::from_config("mail", &config, &env).unwrap();
        runtime.block_on(async {
            channel.transport();
        });
        drop(runtime);
        drop(channel);
    }
}
