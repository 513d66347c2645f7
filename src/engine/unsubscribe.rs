//! One-click unsubscribe for marketing e-mail (RFC 8058): the signed links that
//! `List-Unsubscribe` carries, and what a click on one names.
//!
//! A token is `{payload}.{signature}`: the payload is the channel, the recipient's address
//! and the outbox message's id, base64url-encoded; the signature is HMAC-SHA256 over it, keyed
//! with `compliance.unsubscribe.secret`. Nothing is stored per link, so issuing one costs no
//! write and any process with the secret honours it; a link cannot be made for an address
//! without the secret, so nobody can unsubscribe someone else or walk through addresses.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::definitions::env::Secret;
use crate::definitions::model::config::UnsubscribeConfig;

type HmacSha256 = Hmac<Sha256>;

impl super::Engine {
    /// Unsubscribes the person a link names: their address is suppressed on the channel for
    /// `marketing` (transactional mail still reaches them), and `message.unsubscribed` is
    /// emitted keyed by the address, as when a provider reports an unsubscribe, so a workflow
    /// or a waiting run can act on it. Clicking twice, or a mail client's POST and then the
    /// person's own click, change nothing more and emit nothing more.
    ///
    /// `how` says what was clicked, for the suppression's detail.
    pub async fn unsubscribe(
        self: &std::sync::Arc<Self>,
        subject: &Subject,
        how: &str,
    ) -> Result<(), super::EngineError> {
        let now = self.now();
        self.store
            .suppress_address(
                &subject.channel,
                &super::suppression::address_key(&subject.address),
                "unsubscribed",
                Some(how),
                now,
            )
            .await?;
        let event = crate::store::NewEvent {
            // One event per link: a second click on it is the same event.
            id: format!(
                "unsubscribe:{}:{}:{}",
                subject.channel, subject.address, subject.message_id
            ),
            name: "message.unsubscribed".into(),
            key: Some(subject.address.clone()),
            data: serde_json::json!({
                "channel": subject.channel,
                "to": subject.address,
                "message_id": subject.message_id,
                "status": "unsubscribed",
                "how": how,
            }),
            source_run_id: None,
            created_at: now,
        };
        self.record_event(event).await
    }
}

/// The shortest secret accepted: a key shorter than the hash's output weakens the MAC.
pub const MIN_SECRET_LEN: usize = 32;

/// The header that asks mail clients to unsubscribe with one POST, without a page.
pub const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

/// Who a valid link unsubscribes, and from which message it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub channel: String,
    pub address: String,
    pub message_id: String,
}

/// Signs and reads unsubscribe links.
pub struct Unsubscribe {
    secret: Secret,
    /// `{url}{routes.unsubscribe}`, without a trailing slash.
    base: String,
    mailto: Option<String>,
}

impl std::fmt::Debug for Unsubscribe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsubscribe")
            .field("base", &self.base)
            .field("mailto", &self.mailto)
            .finish_non_exhaustive()
    }
}

impl Unsubscribe {
    /// From herald.yaml's settings, the secret already resolved from the environment. The
    /// error says what is wrong with the settings.
    pub fn new(
        config: &UnsubscribeConfig,
        secret: String,
        route: &str,
    ) -> Result<Unsubscribe, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "compliance.unsubscribe.secret is {} characters; it needs at least {MIN_SECRET_LEN} (make one with `openssl rand -hex 32`)",
                secret.len()
            ));
        }
        let url = config.url.trim_end_matches('/');
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .filter(|host| !host.is_empty() && !host.contains(['?', '#', ' ']))
            .ok_or_else(|| {
                format!(
                    "compliance.unsubscribe.url `{}` is not an address such as https://herald.example.com",
                    config.url
                )
            })?;
        if url.starts_with("http://") && !is_loopback(rest) {
            return Err(format!(
                "compliance.unsubscribe.url `{}` must use https://: mail providers ignore unsubscribe links that are not HTTPS",
                config.url
            ));
        }
        let mailto = match config.mailto.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(m) => {
                let address = m.strip_prefix("mailto:").unwrap_or(m);
                if address.parse::<lettre::Address>().is_err() {
                    return Err(format!(
                        "compliance.unsubscribe.mailto `{m}` is not an e-mail address such as unsubscribe@example.com"
                    ));
                }
                Some(address.to_owned())
            }
        };
        Ok(Unsubscribe {
            secret: Secret::new(secret),
            base: format!("{url}/{}", route.trim_matches('/')),
            mailto,
        })
    }

    /// The token that unsubscribes `address` on `channel`, minted for one message.
    pub fn token(&self, channel: &str, address: &str, message_id: &str) -> String {
        let payload = format!("{channel}\n{address}\n{message_id}");
        let signature = URL_SAFE_NO_PAD.encode(self.mac(payload.as_bytes()));
        format!("{}.{signature}", URL_SAFE_NO_PAD.encode(payload))
    }

    /// The link in a message's `List-Unsubscribe`.
    pub fn link(&self, channel: &str, address: &str, message_id: &str) -> String {
        format!("{}/{}", self.base, self.token(channel, address, message_id))
    }

    /// The `List-Unsubscribe` and `List-Unsubscribe-Post` headers for one message.
    pub fn headers(&self, channel: &str, address: &str, message_id: &str) -> [(String, String); 2] {
        let mut list = format!("<{}>", self.link(channel, address, message_id));
        if let Some(m) = &self.mailto {
            list.push_str(&format!(", <mailto:{m}?subject=unsubscribe>"));
        }
        [
            ("List-Unsubscribe".into(), list),
            ("List-Unsubscribe-Post".into(), ONE_CLICK.into()),
        ]
    }

    /// Who `token` unsubscribes, if this server signed it; `None` for anything else (a
    /// forged, altered or truncated token), without saying which.
    pub fn check(&self, token: &str) -> Option<Subject> {
        let (payload, signature) = token.trim().split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = self.keyed();
        mac.update(DOMAIN);
        mac.update(&payload);
        mac.verify_slice(&signature).ok()?;
        let text = String::from_utf8(payload).ok()?;
        let mut parts = text.split('\n');
        let (Some(channel), Some(address), Some(message_id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(Subject {
            channel: channel.to_owned(),
            address: address.to_owned(),
            message_id: message_id.to_owned(),
        })
    }

    fn keyed(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(self.secret.expose().as_bytes())
            .expect("HMAC takes a key of any length")
    }

    fn mac(&self, payload: &[u8]) -> Vec<u8> {
        let mut mac = self.keyed();
        mac.update(DOMAIN);
        mac.update(payload);
        mac.finalize().into_bytes().to_vec()
    }
}

/// Keeps these signatures apart from any other HMAC made with the same secret.
const DOMAIN: &[u8] = b"herald-unsubscribe-v1\n";

fn is_loopback(host_and_path: &str) -> bool {
    let host = host_and_path.split('/').next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, mailto: Option<&str>) -> UnsubscribeConfig {
        UnsubscribeConfig {
            secret: String::new(),
            url: url.into(),
            mailto: mailto.map(Into::into),
        }
    }

    fn unsubscribe(secret: &str) -> Unsubscribe {
        Unsubscribe::new(
            &config(
                "https://herald.example.com/",
                Some("mailto:bye@example.com"),
            ),
            secret.into(),
            "/unsubscribe",
        )
        .unwrap()
    }

    #[test]
    fn a_link_names_its_recipient_and_message() {
        let u = unsubscribe(&"s".repeat(32));
        let token = u.token("email", "ann@example.com", "m-1");
        assert_eq!(
            u.check(&token),
            Some(Subject {
                channel: "email".into(),
                address: "ann@example.com".into(),
                message_id: "m-1".into(),
            })
        );
        let [(list, value), (post, one_click)] = u.headers("email", "ann@example.com", "m-1");
        assert_eq!(list, "List-Unsubscribe");
        assert_eq!(
            value,
            format!(
                "<https://herald.example.com/unsubscribe/{token}>, <mailto:bye@example.com?subject=unsubscribe>"
            )
        );
        assert_eq!(
            (post.as_str(), one_click.as_str()),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
        );
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "a token is safe in a URL path: {token}"
        );
    }

    #[test]
    fn forged_altered_and_foreign_tokens_are_refused() {
        let u = unsubscribe(&"s".repeat(32));
        let token = u.token("email", "ann@example.com", "m-1");
        let (payload, signature) = token.split_once('.').unwrap();

        // Someone else's address under Ann's signature.
        let other = URL_SAFE_NO_PAD.encode("email\nbob@example.com\nm-1");
        assert_eq!(u.check(&format!("{other}.{signature}")), None);
        // One character of the signature changed, or cut short, or missing.
        let mut flipped = signature.to_owned().into_bytes();
        flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(u.check(&format!("{payload}.{flipped}")), None);
        assert_eq!(u.check(&format!("{payload}.{}", &signature[..20])), None);
        assert_eq!(u.check(payload), None);
        // Signed with another secret.
        let theirs = unsubscribe(&"t".repeat(32)).token("email", "bob@example.com", "m-2");
        assert_eq!(u.check(&theirs), None);
        // Not a token at all.
        for junk in ["", ".", "..", "%%%.%%%", "a.b.c", &"x".repeat(5000)] {
            assert_eq!(u.check(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn settings_that_cannot_work_are_refused_in_words() {
        let short = Unsubscribe::new(&config("https://h.example.com", None), "short".into(), "/u")
            .unwrap_err();
        assert!(short.contains("at least 32"), "{short}");
        let plain = Unsubscribe::new(&config("http://h.example.com", None), "s".repeat(32), "/u")
            .unwrap_err();
        assert!(plain.contains("https://"), "{plain}");
        let not_url =
            Unsubscribe::new(&config("h.example.com", None), "s".repeat(32), "/u").unwrap_err();
        assert!(not_url.contains("is not an address"), "{not_url}");
        let mailto = Unsubscribe::new(
            &config("https://h.example.com", Some("not an address")),
            "s".repeat(32),
            "/u",
        )
        .unwrap_err();
        assert!(mailto.contains("mailto"), "{mailto}");
        // Loopback may be plain HTTP, for trying it out on one machine.
        let local =
            Unsubscribe::new(&config("http://127.0.0.1:8080", None), "s".repeat(32), "/u").unwrap();
        assert!(
            local
                .link("email", "a@example.com", "m")
                .starts_with("http://127.0.0.1:8080/u/")
        );
    }
}
