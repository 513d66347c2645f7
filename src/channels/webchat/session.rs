//! Visitors' session tokens: `{visitor}.{expires}.{signature}`, where the visitor is a UUID
//! Herald made, `expires` is unix seconds and the signature is HMAC-SHA256 (base64url, no
//! padding) over the channel's name, the visitor and the expiry, keyed with the channel's
//! `secret`.
//!
//! Nothing about a session is stored: the token is the whole of it, so any Herald process
//! sharing the secret accepts it, and issuing one costs no write. The channel's name is part
//! of what is signed, so a token for one chat is worthless on another that shares the secret.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::definitions::env::Secret;
use crate::store::Millis;

type HmacSha256 = Hmac<Sha256>;

/// A session a token names, once its signature and expiry are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub visitor: String,
    /// Unix milliseconds.
    pub expires_at: Millis,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// Not a token Herald made with this channel's secret (or not a token at all).
    Invalid,
    /// Herald made it, but it ran out at this time (unix milliseconds).
    Expired(Millis),
}

/// Signs and checks one channel's tokens.
pub struct Sessions {
    channel: String,
    secret: Secret,
    previous: Option<Secret>,
    lifetime_ms: i64,
}

impl Sessions {
    pub fn new(channel: &str, secret: Secret, previous: Option<Secret>, lifetime_ms: i64) -> Self {
        Sessions {
            channel: channel.to_owned(),
            secret,
            previous,
            lifetime_ms,
        }
    }

    /// A token for `visitor`, good for the session lifetime from `now`.
    pub fn issue(&self, visitor: &str, now: Millis) -> (String, Session) {
        // Whole seconds, rounded up, so a token never expires before the lifetime is over.
        let expires = (now + self.lifetime_ms + 999).div_euclid(1000);
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&self.secret, visitor, expires));
        let session = Session {
            visitor: visitor.to_owned(),
            expires_at: expires * 1000,
        };
        (format!("{visitor}.{expires}.{signature}"), session)
    }

    /// The session `token` names, if this channel signed it and it has not expired by `now`.
    pub fn check(&self, token: &str, now: Millis) -> Result<Session, Rejected> {
        let mut parts = token.trim().split('.');
        let (Some(visitor), Some(expires), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejected::Invalid);
        };
        let expires: i64 = expires.parse().map_err(|_| Rejected::Invalid)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| Rejected::Invalid)?;
        let signed = |key: &Secret| {
            let mut mac = self.keyed(key);
            self.feed(&mut mac, visitor, expires);
            mac.verify_slice(&signature).is_ok()
        };
        if !(signed(&self.secret) || self.previous.as_ref().is_some_and(signed)) {
            return Err(Rejected::Invalid);
        }
        if !super::is_visitor_id(visitor) {
            return Err(Rejected::Invalid);
        }
        let expires_at = expires.saturating_mul(1000);
        if expires_at <= now {
            return Err(Rejected::Expired(expires_at));
        }
        Ok(Session {
            visitor: visitor.to_owned(),
            expires_at,
        })
    }

    fn keyed(&self, key: &Secret) -> HmacSha256 {
        HmacSha256::new_from_slice(key.expose().as_bytes()).expect("HMAC takes a key of any length")
    }

    fn feed(&self, mac: &mut HmacSha256, visitor: &str, expires: i64) {
        // Length-prefixed, so no two (channel, visitor) pairs sign the same bytes.
        mac.update(b"herald-webchat-session-v1\n");
        mac.update(&(self.channel.len() as u64).to_be_bytes());
        mac.update(self.channel.as_bytes());
        mac.update(&(visitor.len() as u64).to_be_bytes());
        mac.update(visitor.as_bytes());
        mac.update(&expires.to_be_bytes());
    }

    fn mac(&self, key: &Secret, visitor: &str, expires: i64) -> Vec<u8> {
        let mut mac = self.keyed(key);
        self.feed(&mut mac, visitor, expires);
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VISITOR: &str = "01960f0e-8a7b-7c3d-9e2f-0123456789ab";
    const DAY: i64 = 86_400_000;

    fn sessions(channel: &str, secret: &str) -> Sessions {
        Sessions::new(channel, Secret::new(secret.into()), None, DAY)
    }

    #[test]
    fn a_token_names_its_visitor_until_it_expires() {
        let s = sessions("chat", "k".repeat(32).as_str());
        let now = 1_700_000_000_000;
        let (token, session) = s.issue(VISITOR, now);
        assert_eq!(session.visitor, VISITOR);
        assert_eq!(session.expires_at, now + DAY);
        assert_eq!(s.check(&token, now + DAY - 1), Ok(session.clone()));
        assert_eq!(
            s.check(&token, now + DAY),
            Err(Rejected::Expired(now + DAY))
        );
    }

    #[test]
    fn a_changed_or_foreign_token_is_refused() {
        let s = sessions("chat", "k".repeat(32).as_str());
        let now = 1_700_000_000_000;
        let (token, _) = s.issue(VISITOR, now);
        let (visitor, rest) = token.split_once('.').unwrap();
        // Another visitor's id under this signature, or a later expiry.
        let other = format!("01960f0e-8a7b-7c3d-9e2f-0123456789ac.{rest}");
        assert_eq!(s.check(&other, now), Err(Rejected::Invalid));
        let (expires, signature) = rest.split_once('.').unwrap();
        let later = format!(
            "{visitor}.{}.{signature}",
            expires.parse::<i64>().unwrap() + 1
        );
        assert_eq!(s.check(&later, now), Err(Rejected::Invalid));
        // The same secret on another channel, another secret on this one.
        assert_eq!(
            sessions("sales", "k".repeat(32).as_str()).check(&token, now),
            Err(Rejected::Invalid)
        );
        assert_eq!(
            sessions("chat", "j".repeat(32).as_str()).check(&token, now),
            Err(Rejected::Invalid)
        );
        for junk in ["", "a.b.c", "a.1.", "...", "x.1.AAAA.extra"] {
            assert_eq!(s.check(junk, now), Err(Rejected::Invalid), "{junk:?}");
        }
    }

    #[test]
    fn the_previous_secret_is_accepted_while_it_is_replaced() {
        let old = sessions("chat", "o".repeat(32).as_str());
        let now = 1_700_000_000_000;
        let (token, _) = old.issue(VISITOR, now);
        let rotated = Sessions::new(
            "chat",
            Secret::new("n".repeat(32)),
            Some(Secret::new("o".repeat(32))),
            DAY,
        );
        assert_eq!(rotated.check(&token, now).unwrap().visitor, VISITOR);
        let (renewed, _) = rotated.issue(VISITOR, now);
        assert!(
            sessions("chat", "n".repeat(32).as_str())
                .check(&renewed, now)
                .is_ok()
        );
    }
}
