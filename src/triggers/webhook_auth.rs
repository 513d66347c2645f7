//! Checks that a webhook request comes from whoever holds the trigger's secret.
//!
//! Secrets are resolved and decoded once, when the definition is loaded, so an unset variable
//! or a malformed key is reported to the operator then, instead of surfacing later as a stream
//! of refused requests that look like an attack.

use std::fmt;

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hex::FromHex as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::definitions::env::EnvSource;
use crate::definitions::model::common::Duration;
use crate::definitions::model::trigger::{SignatureEncoding, WebhookAuth};

type HmacSha256 = Hmac<Sha256>;

/// Standard base64 that does not care about `=` padding: senders differ on it, and padding
/// carries no information, so refusing one form would only break integrations.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const STRIPE_SIGNATURE: HeaderName = HeaderName::from_static("stripe-signature");

/// The header names of one Standard Webhooks family: the specification's own, and the
/// `svix-` ones that Svix (and so Resend) send when a sender is not set up "unbranded".
struct StandardHeaders {
    id: HeaderName,
    timestamp: HeaderName,
    signature: HeaderName,
}

const WEBHOOK_HEADERS: StandardHeaders = StandardHeaders {
    id: HeaderName::from_static("webhook-id"),
    timestamp: HeaderName::from_static("webhook-timestamp"),
    signature: HeaderName::from_static("webhook-signature"),
};

const SVIX_HEADERS: StandardHeaders = StandardHeaders {
    id: HeaderName::from_static("svix-id"),
    timestamp: HeaderName::from_static("svix-timestamp"),
    signature: HeaderName::from_static("svix-signature"),
};

/// Checks requests against one trigger's `auth` block. Built once per definition load.
#[derive(Clone)]
pub struct Verifier {
    scheme: Scheme,
}

/// What each scheme keeps. Shared tokens are kept only as their SHA-256, and HMAC keys only as
/// a keyed MAC state, so the plain secrets do not outlive `Verifier::new`.
#[derive(Clone)]
enum Scheme {
    Bearer {
        token_digest: [u8; 32],
    },
    ApiKey {
        header: HeaderName,
        key_digest: [u8; 32],
    },
    Hmac {
        header: HeaderName,
        mac: HmacSha256,
        encoding: SignatureEncoding,
        prefix: Option<String>,
        /// The timestamp header and how far from now it may be.
        timestamp: Option<(HeaderName, Duration)>,
        /// What was signed, in order.
        payload: Vec<Signed>,
    },
    Stripe {
        mac: HmacSha256,
        tolerance: Duration,
    },
    StandardWebhooks {
        mac: HmacSha256,
        tolerance: Duration,
    },
}

/// A piece of what an `hmac_sha256` sender signs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Signed {
    Text(Vec<u8>),
    Body,
    Timestamp,
}

/// Reads a `payload` layout such as `v0:{timestamp}:{body}`.
fn signed_layout(payload: &str, has_timestamp: bool) -> Result<Vec<Signed>, String> {
    let mut out = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let next = [("{body}", Signed::Body), ("{timestamp}", Signed::Timestamp)]
            .into_iter()
            .filter_map(|(marker, part)| rest.find(marker).map(|at| (at, marker, part)))
            .min_by_key(|(at, _, _)| *at);
        match next {
            Some((at, marker, part)) => {
                if at > 0 {
                    out.push(Signed::Text(rest.as_bytes()[..at].to_vec()));
                }
                out.push(part);
                rest = &rest[at + marker.len()..];
            }
            None => {
                out.push(Signed::Text(rest.as_bytes().to_vec()));
                rest = "";
            }
        }
    }
    if out.iter().filter(|p| **p == Signed::Body).count() != 1 {
        return Err(format!(
            "the signed `payload` `{payload}` must hold `{{body}}` once, such as `{{timestamp}}.{{body}}`"
        ));
    }
    if out.contains(&Signed::Timestamp) && !has_timestamp {
        return Err(format!(
            "the signed `payload` `{payload}` uses `{{timestamp}}`, so set `timestamp_header` to the header that carries it"
        ));
    }
    Ok(out)
}

/// What a successful check learned about the request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verified {
    /// Standard Webhooks `webhook-id` (usable as an idempotency key), else None.
    pub message_id: Option<String>,
}

/// Why a request was refused. The messages are safe to send back to the caller: they never
/// contain a secret or the expected signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request carries no credentials for this scheme.
    #[error("{0}")]
    Missing(String),
    /// Credentials are present but cannot be read.
    #[error("{0}")]
    Malformed(String),
    /// Credentials are readable but wrong.
    #[error("{0}")]
    Mismatch(String),
    /// The signature is genuine but its timestamp is outside the tolerance.
    #[error("{0}")]
    Expired(String),
}

impl AuthError {
    /// A stable, machine-readable code for responses, logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing(_) => "missing_credentials",
            AuthError::Malformed(_) => "malformed_signature",
            AuthError::Mismatch(_) => "invalid_signature",
            AuthError::Expired(_) => "expired_signature",
        }
    }
}

impl Verifier {
    /// Resolves `${env:...}` in every secret and decodes keys (Standard Webhooks: base64 after
    /// the `whsec_` prefix). Errors are sentences for a person: which variable is unset, which
    /// secret is malformed.
    pub fn new(auth: &WebhookAuth, env: &EnvSource) -> Result<Verifier, String> {
        let scheme = match auth {
            WebhookAuth::Bearer(b) => {
                let token = resolve_secret(env, &b.token, "bearer token")?;
                Scheme::Bearer {
                    token_digest: sha256(token.as_bytes()),
                }
            }
            WebhookAuth::ApiKey(a) => {
                let key = resolve_secret(env, &a.key, "API key")?;
                Scheme::ApiKey {
                    header: header_name(&a.header)?,
                    key_digest: sha256(key.as_bytes()),
                }
            }
            WebhookAuth::HmacSha256(h) => {
                let secret = resolve_secret(env, &h.secret, "HMAC secret")?;
                let timestamp = h
                    .timestamp_header
                    .as_deref()
                    .map(|t| header_name(t).map(|n| (n, h.tolerance)))
                    .transpose()?;
                let layout = h.payload.as_deref().unwrap_or(if timestamp.is_some() {
                    "{timestamp}.{body}"
                } else {
                    "{body}"
                });
                Scheme::Hmac {
                    header: header_name(&h.header)?,
                    mac: keyed_mac(secret.as_bytes(), "HMAC secret")?,
                    encoding: h.encoding,
                    prefix: h.prefix.clone().filter(|p| !p.is_empty()),
                    payload: signed_layout(layout, timestamp.is_some())?,
                    timestamp,
                }
            }
            WebhookAuth::Stripe(s) => {
                // Stripe keys the HMAC with the whole secret text, `whsec_` included; it is not
                // an encoded key like the Standard Webhooks one.
                let secret = resolve_secret(env, &s.secret, "Stripe signing secret")?;
                Scheme::Stripe {
                    mac: keyed_mac(secret.as_bytes(), "Stripe signing secret")?,
                    tolerance: s.tolerance,
                }
            }
            WebhookAuth::StandardWebhooks(s) => {
                let secret = resolve_secret(env, &s.secret, "Standard Webhooks secret")?;
                let encoded = secret.strip_prefix("whsec_").unwrap_or(&secret);
                let key = BASE64.decode(encoded).map_err(|_| {
                    "The Standard Webhooks secret is malformed: after its optional `whsec_` \
                     prefix it must be base64, as the sender's dashboard shows it."
                        .to_owned()
                })?;
                if key.is_empty() {
                    return Err(
                        "The Standard Webhooks secret is malformed: it holds no key \
                         after its `whsec_` prefix."
                            .to_owned(),
                    );
                }
                Scheme::StandardWebhooks {
                    mac: keyed_mac(&key, "Standard Webhooks secret")?,
                    tolerance: s.tolerance,
                }
            }
        };
        Ok(Verifier { scheme })
    }

    /// Checks one request. `body` is the raw body bytes exactly as received.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: jiff::Timestamp,
    ) -> Result<Verified, AuthError> {
        match &self.scheme {
            Scheme::Bearer { token_digest } => verify_bearer(headers, token_digest),
            Scheme::ApiKey { header, key_digest } => verify_api_key(headers, header, key_digest),
            Scheme::Hmac {
                header,
                mac,
                encoding,
                prefix,
                timestamp,
                payload,
            } => verify_hmac(
                headers,
                body,
                now,
                HmacCheck {
                    header,
                    mac,
                    encoding: *encoding,
                    prefix: prefix.as_deref(),
                    timestamp: timestamp.as_ref(),
                    payload,
                },
            ),
            Scheme::Stripe { mac, tolerance } => verify_stripe(headers, body, now, mac, *tolerance),
            Scheme::StandardWebhooks { mac, tolerance } => {
                verify_standard(headers, body, now, mac, *tolerance)
            }
        }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `finish_non_exhaustive` prints `..`, which says that something is held back.
        let mut d = f.debug_struct("Verifier");
        match &self.scheme {
            Scheme::Bearer { .. } => d.field("scheme", &"bearer"),
            Scheme::ApiKey { header, .. } => d.field("scheme", &"api_key").field("header", header),
            Scheme::Hmac {
                header,
                encoding,
                prefix,
                ..
            } => d
                .field("scheme", &"hmac_sha256")
                .field("header", header)
                .field("encoding", encoding)
                .field("prefix", prefix),
            Scheme::Stripe { tolerance, .. } => d
                .field("scheme", &"stripe")
                .field("tolerance", &format_args!("{tolerance}")),
            Scheme::StandardWebhooks { tolerance, .. } => d
                .field("scheme", &"standard_webhooks")
                .field("tolerance", &format_args!("{tolerance}")),
        };
        d.finish_non_exhaustive()
    }
}

/// The headers a sender that knows the secrets would put on a request with this `body`, signed
/// at `now`: what `herald test` sends, so a test passes the same check `herald serve` makes
/// without signing by hand.
pub fn sign(
    auth: &WebhookAuth,
    env: &EnvSource,
    body: &[u8],
    now: jiff::Timestamp,
) -> Result<Vec<(HeaderName, String)>, String> {
    let t = now.as_second().to_string();
    let mac_of = |key: &[u8], what: &str, parts: &[&[u8]]| -> Result<Vec<u8>, String> {
        let mut mac = keyed_mac(key, what)?;
        for p in parts {
            mac.update(p);
        }
        Ok(mac.finalize().into_bytes().to_vec())
    };
    Ok(match auth {
        WebhookAuth::Bearer(b) => {
            let token = resolve_secret(env, &b.token, "bearer token")?;
            vec![(AUTHORIZATION, format!("Bearer {token}"))]
        }
        WebhookAuth::ApiKey(a) => {
            vec![(
                header_name(&a.header)?,
                resolve_secret(env, &a.key, "API key")?,
            )]
        }
        WebhookAuth::HmacSha256(h) => {
            let secret = resolve_secret(env, &h.secret, "HMAC secret")?;
            let stamped = h.timestamp_header.is_some();
            let layout = h.payload.as_deref().unwrap_or(if stamped {
                "{timestamp}.{body}"
            } else {
                "{body}"
            });
            let mut signed = Vec::new();
            for part in signed_layout(layout, stamped)? {
                match part {
                    Signed::Text(text) => signed.extend_from_slice(&text),
                    Signed::Body => signed.extend_from_slice(body),
                    Signed::Timestamp => signed.extend_from_slice(t.as_bytes()),
                }
            }
            let sig = mac_of(secret.as_bytes(), "HMAC secret", &[&signed])?;
            let sig = match h.encoding {
                SignatureEncoding::Hex => hex::encode(sig),
                SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(sig),
            };
            let mut headers = vec![(
                header_name(&h.header)?,
                format!("{}{sig}", h.prefix.as_deref().unwrap_or_default()),
            )];
            if let Some(th) = &h.timestamp_header {
                headers.push((header_name(th)?, t.clone()));
            }
            headers
        }
        WebhookAuth::Stripe(st) => {
            let secret = resolve_secret(env, &st.secret, "Stripe signing secret")?;
            let sig = mac_of(
                secret.as_bytes(),
                "Stripe signing secret",
                &[t.as_bytes(), b".", body],
            )?;
            vec![(STRIPE_SIGNATURE, format!("t={t},v1={}", hex::encode(sig)))]
        }
        WebhookAuth::StandardWebhooks(sw) => {
            let secret = resolve_secret(env, &sw.secret, "Standard Webhooks secret")?;
            let encoded = secret.strip_prefix("whsec_").unwrap_or(&secret);
            let key = BASE64
                .decode(encoded)
                .map_err(|_| "The Standard Webhooks secret is not base64.".to_owned())?;
            let id = "msg_herald_test";
            let sig = mac_of(
                &key,
                "Standard Webhooks secret",
                &[id.as_bytes(), b".", t.as_bytes(), b".", body],
            )?;
            vec![
                (WEBHOOK_HEADERS.id, id.to_owned()),
                (WEBHOOK_HEADERS.timestamp, t.clone()),
                (
                    WEBHOOK_HEADERS.signature,
                    format!(
                        "v1,{}",
                        base64::engine::general_purpose::STANDARD.encode(sig)
                    ),
                ),
            ]
        }
    })
}

fn resolve_secret(env: &EnvSource, text: &str, what: &str) -> Result<String, String> {
    let value = env
        .resolve(text)
        .map_err(|e| format!("The webhook {what} cannot be read: {e}."))?;
    // An empty secret would make every request that also sends nothing look authentic.
    if value.is_empty() {
        return Err(format!(
            "The webhook {what} is empty; set it, or the variable it refers to, to a non-empty value."
        ));
    }
    Ok(value)
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    // `from_bytes` lowercases, which is what makes configured names case-insensitive.
    HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("`{name}` is not a valid HTTP header name."))
}

fn keyed_mac(key: &[u8], what: &str) -> Result<HmacSha256, String> {
    // HMAC takes keys of any length, so this cannot fail today; the error keeps it panic-free.
    HmacSha256::new_from_slice(key)
        .map_err(|_| format!("The webhook {what} cannot key HMAC-SHA256."))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    <Sha256 as Digest>::digest(bytes).into()
}

/// Compares a presented token with the stored digest of the expected one. Hashing first gives
/// both sides the same length, so the comparison's timing does not reveal the token's length.
fn digest_matches(presented: &[u8], expected: &[u8; 32]) -> bool {
    bool::from(sha256(presented)[..].ct_eq(&expected[..]))
}

/// The one value of a header, as text, or None when it is absent or blank (clients that
/// interpolate an unset variable send an empty header; that is no credential either).
/// A repeated header is refused: proxies and frameworks disagree about which copy wins, and the
/// copy checked here must be the only copy there is.
fn header_text<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a str>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Malformed(format!(
            "The `{name}` header appears more than once."
        )));
    }
    let text = first
        .to_str()
        .map_err(|_| AuthError::Malformed(format!("The `{name}` header is not plain ASCII text.")))?
        .trim();
    Ok(if text.is_empty() { None } else { Some(text) })
}

fn required_header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<&'a str, AuthError> {
    header_text(headers, name)?
        .ok_or_else(|| AuthError::Missing(format!("The `{name}` header is missing.")))
}

fn verify_bearer(headers: &HeaderMap, token_digest: &[u8; 32]) -> Result<Verified, AuthError> {
    let value = required_header(headers, &AUTHORIZATION)?;
    let (scheme, token) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, say) is not a wrong bearer token: the caller sent no bearer
        // credentials at all, which is what a 401 with `WWW-Authenticate: Bearer` answers.
        return Err(AuthError::Missing(
            "The `authorization` header does not carry a Bearer token.".to_owned(),
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed(
            "The `authorization` header has no token after `Bearer`.".to_owned(),
        ));
    }
    if digest_matches(token.as_bytes(), token_digest) {
        Ok(Verified::default())
    } else {
        Err(AuthError::Mismatch(
            "The bearer token is not the expected one.".to_owned(),
        ))
    }
}

fn verify_api_key(
    headers: &HeaderMap,
    header: &HeaderName,
    key_digest: &[u8; 32],
) -> Result<Verified, AuthError> {
    let key = required_header(headers, header)?;
    if digest_matches(key.as_bytes(), key_digest) {
        Ok(Verified::default())
    } else {
        Err(AuthError::Mismatch(format!(
            "The key in the `{header}` header is not the expected one."
        )))
    }
}

/// An `hmac_sha256` scheme, borrowed for one check.
struct HmacCheck<'a> {
    header: &'a HeaderName,
    mac: &'a HmacSha256,
    encoding: SignatureEncoding,
    prefix: Option<&'a str>,
    timestamp: Option<&'a (HeaderName, Duration)>,
    payload: &'a [Signed],
}

fn verify_hmac(
    headers: &HeaderMap,
    body: &[u8],
    now: jiff::Timestamp,
    c: HmacCheck<'_>,
) -> Result<Verified, AuthError> {
    let header = c.header;
    let value = required_header(headers, header)?;
    let signature = match c.prefix {
        // Matched without regard to case: `SHA256=` and `sha256=` name the same algorithm.
        // `get` rather than slicing, so a prefix longer than the value cannot panic.
        Some(prefix) => match value.get(..prefix.len()) {
            Some(head) if head.eq_ignore_ascii_case(prefix) => value[prefix.len()..].trim(),
            _ => {
                return Err(AuthError::Malformed(format!(
                    "The `{header}` header does not start with `{prefix}`."
                )));
            }
        },
        None => value,
    };
    if signature.is_empty() {
        return Err(AuthError::Malformed(format!(
            "The `{header}` header holds no signature."
        )));
    }
    let tag = match c.encoding {
        SignatureEncoding::Hex => hex::decode(signature).map_err(|_| {
            AuthError::Malformed(format!(
                "The signature in the `{header}` header is not hex."
            ))
        })?,
        SignatureEncoding::Base64 => BASE64.decode(signature).map_err(|_| {
            AuthError::Malformed(format!(
                "The signature in the `{header}` header is not base64."
            ))
        })?,
    };
    let stamp = match c.timestamp {
        Some((name, _)) => {
            let text = required_header(headers, name)?;
            Some((text, parse_timestamp(text, name.as_str())?))
        }
        None => None,
    };
    let mut mac = c.mac.clone();
    for part in c.payload {
        match part {
            Signed::Text(t) => mac.update(t),
            Signed::Body => mac.update(body),
            Signed::Timestamp => mac.update(stamp.map(|(t, _)| t).unwrap_or_default().as_bytes()),
        }
    }
    mac.verify_slice(&tag).map_err(|_| {
        AuthError::Mismatch(format!(
            "The signature in the `{header}` header does not match the body."
        ))
    })?;
    // Checked after the signature, as for Stripe: Expired means genuine but stale.
    if let (Some((_, t)), Some((_, tolerance))) = (stamp, c.timestamp) {
        check_fresh(t, now, *tolerance)?;
    }
    Ok(Verified::default())
}

/// HMAC-SHA256 over the parts in order, as one message.
fn tag_of(mac: &HmacSha256, parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = mac.clone();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Whether any candidate equals the tag. The tag is computed once rather than per candidate so
/// a header stuffed with entries costs comparisons, not HMACs over the body; every candidate is
/// compared, so the timing does not say which one matched.
fn any_matches(tag: &[u8; 32], candidates: &[[u8; 32]]) -> bool {
    let found = candidates
        .iter()
        .fold(Choice::from(0), |acc, c| acc | c[..].ct_eq(&tag[..]));
    bool::from(found)
}

/// Refuses a timestamp too far from `now`, either way: a request from the past is a possible
/// replay, and one from the future could be replayed for longer than the tolerance allows.
fn check_fresh(timestamp: i64, now: jiff::Timestamp, tolerance: Duration) -> Result<(), AuthError> {
    let now = now.as_second();
    let skew = now.abs_diff(timestamp);
    if std::time::Duration::from_secs(skew) <= tolerance.as_std() {
        return Ok(());
    }
    let direction = if timestamp < now {
        "old"
    } else {
        "in the future"
    };
    // The skew is worth reporting: a few minutes usually means a server clock is wrong, not
    // an attack.
    Err(AuthError::Expired(format!(
        "The signature's timestamp is {skew}s {direction}; at most {tolerance} is allowed."
    )))
}

fn parse_timestamp(text: &str, header: &str) -> Result<i64, AuthError> {
    // Only digits: `i64::from_str` would also take a sign, which no sender writes.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::Malformed(format!(
            "The timestamp in the `{header}` header is not a number of seconds."
        )));
    }
    text.parse().map_err(|_| {
        AuthError::Malformed(format!(
            "The timestamp in the `{header}` header is out of range."
        ))
    })
}

fn verify_stripe(
    headers: &HeaderMap,
    body: &[u8],
    now: jiff::Timestamp,
    mac: &HmacSha256,
    tolerance: Duration,
) -> Result<Verified, AuthError> {
    let value = required_header(headers, &STRIPE_SIGNATURE)?;
    let mut timestamp = None;
    let mut v1_entries = 0usize;
    let mut candidates = Vec::new();
    for item in value.split(',') {
        let Some((key, val)) = item.split_once('=') else {
            continue;
        };
        match key.trim() {
            // Two timestamps would leave it open which one was signed.
            "t" if timestamp.is_some() => {
                return Err(AuthError::Malformed(
                    "The `stripe-signature` header has more than one timestamp (t=).".to_owned(),
                ));
            }
            "t" => timestamp = Some(val.trim()),
            "v1" => {
                v1_entries += 1;
                // An entry that is not 32 bytes of hex cannot match; it is skipped rather than
                // fatal so one odd entry does not hide a good one next to it.
                if let Ok(sig) = <[u8; 32]>::from_hex(val.trim()) {
                    candidates.push(sig);
                }
            }
            // `v0` is Stripe's retired scheme and other keys are ones we do not know; neither
            // can vouch for the request.
            _ => {}
        }
    }
    let Some(t_text) = timestamp else {
        return Err(AuthError::Malformed(
            "The `stripe-signature` header has no timestamp (t=).".to_owned(),
        ));
    };
    let t = parse_timestamp(t_text, "stripe-signature")?;
    if candidates.is_empty() {
        return Err(AuthError::Malformed(if v1_entries == 0 {
            "The `stripe-signature` header has no v1 signature.".to_owned()
        } else {
            "No v1 signature in the `stripe-signature` header is 64 hex digits.".to_owned()
        }));
    }
    // The signature is checked before the timestamp so that Expired always means "genuine but
    // stale", which points at a clock or a replay, never at a forgery.
    let tag = tag_of(mac, &[t_text.as_bytes(), b".", body]);
    if !any_matches(&tag, &candidates) {
        return Err(AuthError::Mismatch(
            "No v1 signature in the `stripe-signature` header matches the body.".to_owned(),
        ));
    }
    check_fresh(t, now, tolerance)?;
    Ok(Verified::default())
}

fn verify_standard(
    headers: &HeaderMap,
    body: &[u8],
    now: jiff::Timestamp,
    mac: &HmacSha256,
    tolerance: Duration,
) -> Result<Verified, AuthError> {
    // One family or the other, never a mix: the three values must come from one signing.
    let names = if [
        &WEBHOOK_HEADERS.id,
        &WEBHOOK_HEADERS.timestamp,
        &WEBHOOK_HEADERS.signature,
    ]
    .into_iter()
    .any(|n| headers.contains_key(n))
        || !headers.contains_key(&SVIX_HEADERS.id)
    {
        &WEBHOOK_HEADERS
    } else {
        &SVIX_HEADERS
    };
    let id = required_header(headers, &names.id)?;
    let ts_text = required_header(headers, &names.timestamp)?;
    let signatures = required_header(headers, &names.signature)?;
    let timestamp = parse_timestamp(ts_text, names.timestamp.as_str())?;

    let mut v1_entries = 0usize;
    let mut candidates = Vec::new();
    for entry in signatures.split_ascii_whitespace() {
        // Other version tags (`v1a` is asymmetric ed25519) are for other verifiers.
        let Some(("v1", sig)) = entry.split_once(',') else {
            continue;
        };
        v1_entries += 1;
        if let Some(sig) = BASE64
            .decode(sig)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        {
            candidates.push(sig);
        }
    }
    if candidates.is_empty() {
        return Err(AuthError::Malformed(if v1_entries == 0 {
            format!("The `{}` header has no v1 signature.", names.signature)
        } else {
            format!(
                "No v1 signature in the `{}` header is 32 bytes of base64.",
                names.signature
            )
        }));
    }
    // Signature first, then the timestamp, for the same reason as Stripe's.
    let tag = tag_of(mac, &[id.as_bytes(), b".", ts_text.as_bytes(), b".", body]);
    if !any_matches(&tag, &candidates) {
        return Err(AuthError::Mismatch(format!(
            "No v1 signature in the `{}` header matches the body.",
            names.signature
        )));
    }
    check_fresh(timestamp, now, tolerance)?;
    Ok(Verified {
        message_id: Some(id.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use axum::http::HeaderValue;

    use super::*;
    use crate::definitions::model::trigger::{ApiKeyAuth, BearerAuth, HmacAuth, SignedAuth};

    fn env<const N: usize>(vars: [(&str, &str); N]) -> EnvSource {
        EnvSource::Map(Arc::new(HashMap::from(
            vars.map(|(k, v)| (k.to_owned(), v.to_owned())),
        )))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn at(second: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(second).unwrap()
    }

    fn verifier(auth: WebhookAuth) -> Verifier {
        Verifier::new(&auth, &env([])).unwrap()
    }

    fn code(result: Result<Verified, AuthError>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    // --- Standard Webhooks -------------------------------------------------------------------

    // The published vector, from the Standard Webhooks reference libraries
    // (github.com/standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py,
    // `test_sign_function`). Recomputed with Python's hmac module to the same value.
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1614265330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn standard(secret: &str) -> Verifier {
        verifier(WebhookAuth::StandardWebhooks(SignedAuth {
            secret: secret.to_owned(),
            tolerance: Duration::from_secs(300),
        }))
    }

    fn sw_headers(signature: &str) -> HeaderMap {
        headers(&[
            ("webhook-id", SW_ID),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", signature),
        ])
    }

    #[test]
    fn standard_webhooks_published_vector_is_accepted_with_its_message_id() {
        let v = standard(SW_SECRET);
        let verified = v.verify(&sw_headers(SW_SIG), SW_BODY, at(SW_TS)).unwrap();
        assert_eq!(verified.message_id.as_deref(), Some(SW_ID));
        // The reference libraries also take the key without its `whsec_` prefix.
        let bare = standard("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert!(bare.verify(&sw_headers(SW_SIG), SW_BODY, at(SW_TS)).is_ok());
    }

    #[test]
    fn standard_webhooks_outside_tolerance_is_expired() {
        let v = standard(SW_SECRET);
        let later = v.verify(&sw_headers(SW_SIG), SW_BODY, at(SW_TS + 600));
        assert!(matches!(later, Err(AuthError::Expired(ref m)) if m.contains("600s old")));
        let earlier = v.verify(&sw_headers(SW_SIG), SW_BODY, at(SW_TS - 600));
        assert!(matches!(earlier, Err(AuthError::Expired(ref m)) if m.contains("in the future")));
        // The tolerance is inclusive.
        assert!(
            v.verify(&sw_headers(SW_SIG), SW_BODY, at(SW_TS + 300))
                .is_ok()
        );
        assert_eq!(
            code(v.verify(&sw_headers(SW_SIG), SW_BODY, at(SW_TS + 301))),
            "expired_signature"
        );
    }

    #[test]
    fn standard_webhooks_tampered_body_or_id_is_a_mismatch() {
        let v = standard(SW_SECRET);
        let tampered = v.verify(&sw_headers(SW_SIG), br#"{"test": 2432232315}"#, at(SW_TS));
        assert!(matches!(tampered, Err(AuthError::Mismatch(_))));
        let other_id = headers(&[
            ("webhook-id", "msg_other"),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", SW_SIG),
        ]);
        assert_eq!(
            code(v.verify(&other_id, SW_BODY, at(SW_TS))),
            "invalid_signature"
        );
        // A forged, stale request is a mismatch, not "expired": Expired vouches for the sender.
        let stale_forgery = v.verify(&sw_headers(SW_SIG), b"{}", at(SW_TS + 3600));
        assert!(matches!(stale_forgery, Err(AuthError::Mismatch(_))));
        let other_key = standard("whsec_c2VjcmV0LW9mLWFub3RoZXItZW5kcG9pbnQ=");
        assert_eq!(
            code(other_key.verify(&sw_headers(SW_SIG), SW_BODY, at(SW_TS))),
            "invalid_signature"
        );
    }

    #[test]
    fn standard_webhooks_accepts_any_v1_entry_and_ignores_other_versions() {
        let v = standard(SW_SECRET);
        let wrong_first = format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {SW_SIG}");
        assert!(
            v.verify(&sw_headers(&wrong_first), SW_BODY, at(SW_TS))
                .is_ok()
        );
        // The right bytes under another version tag must not count as a v1 signature.
        let wrong_tag = "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= \
                         v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
        assert_eq!(
            code(v.verify(&sw_headers(wrong_tag), SW_BODY, at(SW_TS))),
            "invalid_signature"
        );
        let only_v1a = "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(matches!(
            v.verify(&sw_headers(only_v1a), SW_BODY, at(SW_TS)),
            Err(AuthError::Malformed(_))
        ));
        // One undecodable v1 entry does not hide a good one.
        let garbage_first = format!("v1,!!! {SW_SIG}");
        assert!(
            v.verify(&sw_headers(&garbage_first), SW_BODY, at(SW_TS))
                .is_ok()
        );
    }

    #[test]
    fn standard_webhooks_missing_and_malformed_headers() {
        let v = standard(SW_SECRET);
        let now = at(SW_TS);
        for absent in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let mut h = sw_headers(SW_SIG);
            h.remove(absent);
            let err = v.verify(&h, SW_BODY, now).unwrap_err();
            assert_eq!(err.code(), "missing_credentials", "{absent}");
            assert!(err.to_string().contains(absent), "{err}");
        }
        assert_eq!(
            code(v.verify(&HeaderMap::new(), SW_BODY, now)),
            "missing_credentials"
        );
        for timestamp in [
            "hello",
            "-1614265330",
            "+1614265330",
            "99999999999999999999",
            "1.5",
        ] {
            let h = headers(&[
                ("webhook-id", SW_ID),
                ("webhook-timestamp", timestamp),
                ("webhook-signature", SW_SIG),
            ]);
            assert_eq!(
                code(v.verify(&h, SW_BODY, now)),
                "malformed_signature",
                "{timestamp}"
            );
        }
        for signature in ["v1,", "v1,not base64!", "v1,AAAA", "garbage", "v1"] {
            assert_eq!(
                code(v.verify(&sw_headers(signature), SW_BODY, now)),
                "malformed_signature",
                "{signature}"
            );
        }
    }

    #[test]
    fn standard_webhooks_accepts_svix_branded_headers() {
        // Svix, and so Resend, sends the same scheme under `svix-` names.
        let v = standard(SW_SECRET);
        let h = headers(&[
            ("svix-id", SW_ID),
            ("svix-timestamp", "1614265330"),
            ("svix-signature", SW_SIG),
        ]);
        let verified = v.verify(&h, SW_BODY, at(SW_TS)).unwrap();
        assert_eq!(verified.message_id.as_deref(), Some(SW_ID));
        // A mix of the two families is not one signing, and is refused.
        let mixed = headers(&[
            ("webhook-id", SW_ID),
            ("svix-timestamp", "1614265330"),
            ("svix-signature", SW_SIG),
        ]);
        assert_eq!(
            code(v.verify(&mixed, SW_BODY, at(SW_TS))),
            "missing_credentials"
        );
    }

    // --- Stripe ------------------------------------------------------------------------------

    // Published vector from Stripe's official .NET library (github.com/stripe/stripe-dotnet,
    // src/StripeTests/Services/Events/EventUtilityTest.cs, with the body from
    // src/StripeTests/Resources/event_test_signature.json): secret `webhook_secret`,
    // t=1533204620. Recomputed with Python's hmac module to the same value.
    const STRIPE_DOTNET_BODY: &str = r#"{
  "id": "evt_123",
  "object": "event",
  "account": "acct_123",
  "api_version": "2017-05-25",
  "created": 1533204620,
  "data": {
    "object": {
      "id": "cus_123",
      "object": "customer",
      "created": 123456789,
      "email": "test@stripe.com",
      "livemode": false,
      "metadata": {}
    }
  },
  "livemode": false,
  "pending_webhooks": 1,
  "request": {
    "id": "req_123",
    "idempotency_key": "idempotency-key-123"
  },
  "type": "customer.created"
}
"#;
    const STRIPE_DOTNET_HEADER: &str = "t=1533204620,\
        v1=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7,\
        v0=63f3a72374a733066c4be69ed7f8e5ac85c22c9f0a6a612ab9a025a9e4ee7eef";

    // Computed independently with Python:
    //   hmac.new(b"whsec_test_secret", b'1700000000.{"id":"evt_test","object":"event"}',
    //            hashlib.sha256).hexdigest()
    // and the same with b"whsec_old_secret" for STRIPE_OLD_SIG.
    const STRIPE_BODY: &[u8] = br#"{"id":"evt_test","object":"event"}"#;
    const STRIPE_TS: i64 = 1700000000;
    const STRIPE_SIG: &str = "8042376f6ca064adbe037642a718227dfd59047137eb49497a54c49eb0cfb724";
    const STRIPE_OLD_SIG: &str = "a1dd24cd166a5ec1b320e88ebfc7df18408a2dc13ab12ccf1d9e392d099b1dc1";

    fn stripe(secret: &str) -> Verifier {
        verifier(WebhookAuth::Stripe(SignedAuth {
            secret: secret.to_owned(),
            tolerance: Duration::from_secs(300),
        }))
    }

    fn stripe_headers(value: &str) -> HeaderMap {
        headers(&[("Stripe-Signature", value)])
    }

    #[test]
    fn stripe_published_dotnet_vector() {
        // The body is signed byte for byte, trailing newline included; a stray edit to the
        // fixture above would otherwise read as a verifier bug.
        assert_eq!(STRIPE_DOTNET_BODY.len(), 484);
        let v = stripe("webhook_secret");
        let h = stripe_headers(STRIPE_DOTNET_HEADER);
        let body = STRIPE_DOTNET_BODY.as_bytes();
        assert_eq!(
            v.verify(&h, body, at(1533204620 + 100)),
            Ok(Verified::default())
        );
        let tampered = format!("{STRIPE_DOTNET_BODY}this_changes_the_json");
        assert_eq!(
            code(v.verify(&h, tampered.as_bytes(), at(1533204620))),
            "invalid_signature"
        );
        assert_eq!(
            code(v.verify(&h, body, at(1533204620 + 400))),
            "expired_signature"
        );
    }

    #[test]
    fn stripe_valid_signature_is_accepted() {
        let v = stripe("whsec_test_secret");
        let h = stripe_headers(&format!("t={STRIPE_TS},v1={STRIPE_SIG}"));
        assert_eq!(
            v.verify(&h, STRIPE_BODY, at(STRIPE_TS)),
            Ok(Verified::default())
        );
        // Uppercase hex and spaces after commas are read the same way.
        let loose = stripe_headers(&format!("t={STRIPE_TS}, v1={}", STRIPE_SIG.to_uppercase()));
        assert!(v.verify(&loose, STRIPE_BODY, at(STRIPE_TS)).is_ok());
    }

    #[test]
    fn stripe_accepts_any_v1_during_secret_rotation() {
        let h = stripe_headers(&format!(
            "t={STRIPE_TS},v1={STRIPE_OLD_SIG},v1={STRIPE_SIG}"
        ));
        assert!(
            stripe("whsec_test_secret")
                .verify(&h, STRIPE_BODY, at(STRIPE_TS))
                .is_ok()
        );
        assert!(
            stripe("whsec_old_secret")
                .verify(&h, STRIPE_BODY, at(STRIPE_TS))
                .is_ok()
        );
        let neither = stripe("whsec_third_secret");
        assert_eq!(
            code(neither.verify(&h, STRIPE_BODY, at(STRIPE_TS))),
            "invalid_signature"
        );
    }

    #[test]
    fn stripe_wrong_secret_or_body_is_a_mismatch() {
        let h = stripe_headers(&format!("t={STRIPE_TS},v1={STRIPE_SIG}"));
        // The `whsec_` prefix is part of the key; dropping it must change the signature.
        let unprefixed = stripe("test_secret");
        assert!(matches!(
            unprefixed.verify(&h, STRIPE_BODY, at(STRIPE_TS)),
            Err(AuthError::Mismatch(_))
        ));
        let v = stripe("whsec_test_secret");
        assert_eq!(
            code(v.verify(&h, b"{}", at(STRIPE_TS))),
            "invalid_signature"
        );
        // The timestamp is signed too: moving it breaks the signature.
        let moved = stripe_headers(&format!("t={},v1={STRIPE_SIG}", STRIPE_TS + 1));
        assert_eq!(
            code(v.verify(&moved, STRIPE_BODY, at(STRIPE_TS))),
            "invalid_signature"
        );
    }

    #[test]
    fn stripe_missing_header() {
        let v = stripe("whsec_test_secret");
        let err = v
            .verify(&HeaderMap::new(), STRIPE_BODY, at(STRIPE_TS))
            .unwrap_err();
        assert_eq!(err.code(), "missing_credentials");
        assert!(err.to_string().contains("stripe-signature"));
        assert_eq!(
            code(v.verify(&stripe_headers(""), STRIPE_BODY, at(STRIPE_TS))),
            "missing_credentials"
        );
    }

    #[test]
    fn stripe_malformed_headers() {
        let v = stripe("whsec_test_secret");
        let cases = [
            format!("v1={STRIPE_SIG}"),
            format!("t={STRIPE_TS}"),
            format!("t={STRIPE_TS},v0={STRIPE_SIG}"),
            format!("t={STRIPE_TS},v1=zz{}", &STRIPE_SIG[2..]),
            format!("t={STRIPE_TS},v1={}", &STRIPE_SIG[1..]),
            format!("t={STRIPE_TS},t={STRIPE_TS},v1={STRIPE_SIG}"),
            format!("t=abc,v1={STRIPE_SIG}"),
            format!("t=,v1={STRIPE_SIG}"),
            format!("t=99999999999999999999999,v1={STRIPE_SIG}"),
            "garbage".to_owned(),
            ",,".to_owned(),
            "t,v1=,v0=".to_owned(),
            "=,=,=".to_owned(),
        ];
        for value in cases {
            assert_eq!(
                code(v.verify(&stripe_headers(&value), STRIPE_BODY, at(STRIPE_TS))),
                "malformed_signature",
                "{value}"
            );
        }
    }

    #[test]
    fn stripe_timestamp_too_old_or_too_far_ahead_is_expired() {
        let v = stripe("whsec_test_secret");
        let h = stripe_headers(&format!("t={STRIPE_TS},v1={STRIPE_SIG}"));
        let old = v.verify(&h, STRIPE_BODY, at(STRIPE_TS + 301)).unwrap_err();
        assert!(
            matches!(old, AuthError::Expired(ref m) if m.contains("301s old")),
            "{old}"
        );
        let ahead = v.verify(&h, STRIPE_BODY, at(STRIPE_TS - 301)).unwrap_err();
        assert!(
            matches!(ahead, AuthError::Expired(ref m) if m.contains("in the future")),
            "{ahead}"
        );
        assert!(v.verify(&h, STRIPE_BODY, at(STRIPE_TS - 300)).is_ok());
        // Far-apart clocks must not overflow the skew arithmetic.
        assert_eq!(
            code(v.verify(&h, STRIPE_BODY, jiff::Timestamp::MAX)),
            "expired_signature"
        );
        assert_eq!(
            code(v.verify(&h, STRIPE_BODY, jiff::Timestamp::MIN)),
            "expired_signature"
        );
    }

    // --- HMAC-SHA256 -------------------------------------------------------------------------

    // Computed independently with Python:
    //   d = hmac.new(b"hmac-shared-secret", b'{"event":"lead.created","id":42}',
    //                hashlib.sha256).digest(); d.hex(); base64.b64encode(d)
    const HMAC_BODY: &[u8] = br#"{"event":"lead.created","id":42}"#;
    const HMAC_HEX: &str = "c95c582993075692a5deafb63aac0ad652c586b4ad7b94e9655c64b97cdfd99d";
    const HMAC_B64: &str = "yVxYKZMHVpKl3q+2OqwK1lLFhrSte5TpZVxkuXzf2Z0=";

    fn hmac_verifier(encoding: SignatureEncoding, prefix: Option<&str>) -> Verifier {
        Verifier::new(
            &WebhookAuth::HmacSha256(HmacAuth {
                header: "X-Signature".to_owned(),
                secret: "${env:HMAC_SECRET}".to_owned(),
                encoding,
                prefix: prefix.map(str::to_owned),
                timestamp_header: None,
                tolerance: crate::definitions::model::Duration::from_secs(300),
                payload: None,
            }),
            &env([("HMAC_SECRET", "hmac-shared-secret")]),
        )
        .unwrap()
    }

    fn sig_headers(value: &str) -> HeaderMap {
        headers(&[("x-signature", value)])
    }

    // Slack's published example ("Verifying requests from Slack"): signing secret, timestamp,
    // body and the `X-Slack-Signature` it gives.
    const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const SLACK_TS: &str = "1531420618";
    const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SLACK_SIGNATURE: &str =
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn slack_verifier(payload: Option<&str>) -> Result<Verifier, String> {
        Verifier::new(
            &WebhookAuth::HmacSha256(HmacAuth {
                header: "X-Slack-Signature".to_owned(),
                secret: "${env:SLACK_SECRET}".to_owned(),
                encoding: SignatureEncoding::Hex,
                prefix: Some("v0=".to_owned()),
                timestamp_header: Some("X-Slack-Request-Timestamp".to_owned()),
                tolerance: crate::definitions::model::Duration::from_secs(300),
                payload: payload.map(str::to_owned),
            }),
            &env([("SLACK_SECRET", SLACK_SECRET)]),
        )
    }

    #[test]
    fn hmac_with_a_timestamp_refuses_replays() {
        let v = slack_verifier(Some("v0:{timestamp}:{body}")).unwrap();
        let signed = headers(&[
            ("x-slack-signature", SLACK_SIGNATURE),
            ("x-slack-request-timestamp", SLACK_TS),
        ]);
        let ts: i64 = SLACK_TS.parse().unwrap();
        let body = SLACK_BODY.as_bytes();
        assert_eq!(
            v.verify(&signed, body, at(ts + 60)),
            Ok(Verified::default())
        );
        // The same request an hour later is a replay.
        assert_eq!(
            code(v.verify(&signed, body, at(ts + 3600))),
            "expired_signature"
        );
        // A timestamp changed to look fresh breaks the signature.
        let moved = headers(&[
            ("x-slack-signature", SLACK_SIGNATURE),
            ("x-slack-request-timestamp", "1531424218"),
        ]);
        assert_eq!(
            code(v.verify(&moved, body, at(ts + 3600))),
            "invalid_signature"
        );
        let missing = headers(&[("x-slack-signature", SLACK_SIGNATURE)]);
        assert_eq!(
            code(v.verify(&missing, body, at(ts))),
            "missing_credentials"
        );
        let garbled = headers(&[
            ("x-slack-signature", SLACK_SIGNATURE),
            ("x-slack-request-timestamp", "yesterday"),
        ]);
        assert_eq!(
            code(v.verify(&garbled, body, at(ts))),
            "malformed_signature"
        );
        // The default layout with a timestamp is `{timestamp}.{body}`: not Slack's.
        let dotted = slack_verifier(None).unwrap();
        assert_eq!(
            code(dotted.verify(&signed, body, at(ts))),
            "invalid_signature"
        );
    }

    #[test]
    fn a_signed_payload_must_name_the_body_once() {
        let e = slack_verifier(Some("v0:{timestamp}")).unwrap_err();
        assert!(e.contains("must hold `{body}` once"), "{e}");
        let e = Verifier::new(
            &WebhookAuth::HmacSha256(HmacAuth {
                header: "X-Signature".to_owned(),
                secret: "s".to_owned(),
                encoding: SignatureEncoding::Hex,
                prefix: None,
                timestamp_header: None,
                tolerance: crate::definitions::model::Duration::from_secs(300),
                payload: Some("{timestamp}.{body}".to_owned()),
            }),
            &env([]),
        )
        .unwrap_err();
        assert!(e.contains("set `timestamp_header`"), "{e}");
    }

    #[test]
    fn hmac_hex_signature() {
        let v = hmac_verifier(SignatureEncoding::Hex, None);
        let now = at(0);
        assert_eq!(
            v.verify(&sig_headers(HMAC_HEX), HMAC_BODY, now),
            Ok(Verified::default())
        );
        assert!(
            v.verify(&sig_headers(&HMAC_HEX.to_uppercase()), HMAC_BODY, now)
                .is_ok()
        );
        assert_eq!(
            code(v.verify(&sig_headers(HMAC_HEX), b"{}", now)),
            "invalid_signature"
        );
        // A hex signature is no good in a base64 verifier and the other way round.
        let b64 = hmac_verifier(SignatureEncoding::Base64, None);
        assert_eq!(
            code(b64.verify(&sig_headers(HMAC_HEX), HMAC_BODY, now)),
            "invalid_signature"
        );
        assert_eq!(
            code(v.verify(&sig_headers(HMAC_B64), HMAC_BODY, now)),
            "malformed_signature"
        );
    }

    #[test]
    fn hmac_base64_signature() {
        let v = hmac_verifier(SignatureEncoding::Base64, None);
        let now = at(0);
        assert!(v.verify(&sig_headers(HMAC_B64), HMAC_BODY, now).is_ok());
        let unpadded = HMAC_B64.trim_end_matches('=');
        assert!(v.verify(&sig_headers(unpadded), HMAC_BODY, now).is_ok());
        assert_eq!(
            code(v.verify(&sig_headers(HMAC_B64), b"", now)),
            "invalid_signature"
        );
        assert_eq!(
            code(v.verify(&sig_headers("not*base64"), HMAC_BODY, now)),
            "malformed_signature"
        );
    }

    #[test]
    fn hmac_prefix_is_required_when_configured() {
        let v = hmac_verifier(SignatureEncoding::Hex, Some("sha256="));
        let now = at(0);
        assert!(
            v.verify(&sig_headers(&format!("sha256={HMAC_HEX}")), HMAC_BODY, now)
                .is_ok()
        );
        assert!(
            v.verify(&sig_headers(&format!("SHA256={HMAC_HEX}")), HMAC_BODY, now)
                .is_ok()
        );
        let bare = v
            .verify(&sig_headers(HMAC_HEX), HMAC_BODY, now)
            .unwrap_err();
        assert!(
            matches!(bare, AuthError::Malformed(ref m) if m.contains("sha256=")),
            "{bare}"
        );
        assert_eq!(
            code(v.verify(&sig_headers("sha256="), HMAC_BODY, now)),
            "malformed_signature"
        );
        assert_eq!(
            code(v.verify(&sig_headers("sha"), HMAC_BODY, now)),
            "malformed_signature"
        );
        assert_eq!(
            code(v.verify(&sig_headers(&format!("sha1={HMAC_HEX}")), HMAC_BODY, now)),
            "malformed_signature"
        );
    }

    #[test]
    fn hmac_missing_and_garbage_signatures() {
        let v = hmac_verifier(SignatureEncoding::Hex, None);
        let now = at(0);
        assert_eq!(
            code(v.verify(&HeaderMap::new(), HMAC_BODY, now)),
            "missing_credentials"
        );
        // The configured header, not some other signature header, is the one read.
        let elsewhere = headers(&[("x-hub-signature-256", HMAC_HEX)]);
        assert_eq!(
            code(v.verify(&elsewhere, HMAC_BODY, now)),
            "missing_credentials"
        );
        for garbage in ["not hex at all", "abc", &HMAC_HEX[1..], "zz"] {
            assert_eq!(
                code(v.verify(&sig_headers(garbage), HMAC_BODY, now)),
                "malformed_signature",
                "{garbage}"
            );
        }
        // Valid hex of the wrong length cannot match.
        assert_eq!(
            code(v.verify(&sig_headers(&HMAC_HEX[..62]), HMAC_BODY, now)),
            "invalid_signature"
        );
        let mut twice = sig_headers(HMAC_HEX);
        twice.append("x-signature", HeaderValue::from_static("00"));
        assert_eq!(
            code(v.verify(&twice, HMAC_BODY, now)),
            "malformed_signature"
        );
    }

    // --- Bearer and API key ------------------------------------------------------------------

    fn bearer() -> Verifier {
        Verifier::new(
            &WebhookAuth::Bearer(BearerAuth {
                token: "${env:HOOK_TOKEN}".to_owned(),
            }),
            &env([("HOOK_TOKEN", "tok-123")]),
        )
        .unwrap()
    }

    #[test]
    fn bearer_token() {
        let v = bearer();
        let now = at(0);
        let ok = |value: &str| v.verify(&headers(&[("authorization", value)]), b"", now);
        assert_eq!(ok("Bearer tok-123"), Ok(Verified::default()));
        assert!(ok("bearer tok-123").is_ok());
        assert!(ok("BEARER   tok-123").is_ok());
        assert_eq!(code(ok("Bearer tok-124")), "invalid_signature");
        assert_eq!(code(ok("Bearer tok-1234")), "invalid_signature");
        assert_eq!(code(ok("Bearer tok")), "invalid_signature");
        assert_eq!(code(ok("Basic dG9rLTEyMw==")), "missing_credentials");
        assert_eq!(code(ok("tok-123")), "missing_credentials");
        assert_eq!(code(ok("Bearer")), "malformed_signature");
        assert_eq!(code(ok("Bearer \t")), "malformed_signature");
        assert_eq!(
            code(v.verify(&HeaderMap::new(), b"", now)),
            "missing_credentials"
        );
        // HTTP header names are case-insensitive however the request spells them.
        assert!(
            v.verify(&headers(&[("AUTHORIZATION", "Bearer tok-123")]), b"", now)
                .is_ok()
        );
    }

    #[test]
    fn api_key_header() {
        let v = Verifier::new(
            &WebhookAuth::ApiKey(ApiKeyAuth {
                header: "X-Webhook-Key".to_owned(),
                key: "${env:HOOK_KEY}".to_owned(),
            }),
            &env([("HOOK_KEY", "key-abc")]),
        )
        .unwrap();
        let now = at(0);
        assert!(
            v.verify(&headers(&[("x-webhook-key", "key-abc")]), b"", now)
                .is_ok()
        );
        assert!(
            v.verify(&headers(&[("X-WEBHOOK-KEY", "key-abc")]), b"", now)
                .is_ok()
        );
        assert_eq!(
            code(v.verify(&headers(&[("x-webhook-key", "key-abd")]), b"", now)),
            "invalid_signature"
        );
        assert_eq!(
            code(v.verify(&headers(&[("x-webhook-key", "KEY-ABC")]), b"", now)),
            "invalid_signature"
        );
        assert_eq!(
            code(v.verify(&headers(&[("x-api-key", "key-abc")]), b"", now)),
            "missing_credentials"
        );
        assert_eq!(
            code(v.verify(&HeaderMap::new(), b"", now)),
            "missing_credentials"
        );
    }

    // --- Construction, Debug, robustness -----------------------------------------------------

    #[test]
    fn new_names_the_unset_variable() {
        let auths = [
            WebhookAuth::Bearer(BearerAuth {
                token: "${env:UNSET_TOKEN}".to_owned(),
            }),
            WebhookAuth::ApiKey(ApiKeyAuth {
                header: "x-api-key".to_owned(),
                key: "${env:UNSET_TOKEN}".to_owned(),
            }),
            WebhookAuth::HmacSha256(HmacAuth {
                header: "x-signature".to_owned(),
                secret: "${env:UNSET_TOKEN}".to_owned(),
                encoding: SignatureEncoding::Hex,
                prefix: None,
                timestamp_header: None,
                tolerance: Duration::from_secs(300),
                payload: None,
            }),
            WebhookAuth::Stripe(SignedAuth {
                secret: "${env:UNSET_TOKEN}".to_owned(),
                tolerance: Duration::from_secs(300),
            }),
            WebhookAuth::StandardWebhooks(SignedAuth {
                secret: "${env:UNSET_TOKEN}".to_owned(),
                tolerance: Duration::from_secs(300),
            }),
        ];
        for auth in &auths {
            let err = Verifier::new(auth, &env([("OTHER", "x")])).unwrap_err();
            assert!(err.contains("UNSET_TOKEN"), "{}: {err}", auth.scheme());
        }
        let empty = Verifier::new(&auths[0], &env([("UNSET_TOKEN", "")])).unwrap_err();
        assert!(empty.contains("empty"), "{empty}");
    }

    #[test]
    fn new_rejects_malformed_secrets_and_header_names() {
        let sw = |secret: &str| {
            Verifier::new(
                &WebhookAuth::StandardWebhooks(SignedAuth {
                    secret: secret.to_owned(),
                    tolerance: Duration::from_secs(300),
                }),
                &env([]),
            )
        };
        let err = sw("whsec_not base64!").unwrap_err();
        assert!(
            err.contains("Standard Webhooks secret") && err.contains("base64"),
            "{err}"
        );
        // The message must not echo the secret it refuses.
        assert!(!err.contains("not base64!"), "{err}");
        assert!(sw("whsec_").is_err());
        assert!(sw("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        let bad_header = Verifier::new(
            &WebhookAuth::ApiKey(ApiKeyAuth {
                header: "x api key".to_owned(),
                key: "k".to_owned(),
            }),
            &env([]),
        )
        .unwrap_err();
        assert!(bad_header.contains("x api key"), "{bad_header}");
    }

    #[test]
    fn debug_does_not_reveal_secrets() {
        let secret = "sup3r-s3cret-value";
        let vars = env([("S", secret), ("SW", "whsec_c3VwM3ItczNjcmV0LXZhbHVl")]);
        let auths = [
            WebhookAuth::Bearer(BearerAuth {
                token: "${env:S}".to_owned(),
            }),
            WebhookAuth::ApiKey(ApiKeyAuth {
                header: "x-api-key".to_owned(),
                key: "${env:S}".to_owned(),
            }),
            WebhookAuth::HmacSha256(HmacAuth {
                header: "x-signature".to_owned(),
                secret: "${env:S}".to_owned(),
                encoding: SignatureEncoding::Base64,
                prefix: Some("sha256=".to_owned()),
                timestamp_header: None,
                tolerance: Duration::from_secs(300),
                payload: None,
            }),
            WebhookAuth::Stripe(SignedAuth {
                secret: "${env:S}".to_owned(),
                tolerance: Duration::from_secs(300),
            }),
            WebhookAuth::StandardWebhooks(SignedAuth {
                secret: "${env:SW}".to_owned(),
                tolerance: Duration::from_secs(300),
            }),
        ];
        for auth in &auths {
            let shown = format!(
                "{:?} {:#?}",
                Verifier::new(auth, &vars).unwrap(),
                Verifier::new(auth, &vars).unwrap()
            );
            assert!(shown.contains(auth.scheme()), "{shown}");
            for leak in [secret, "c3VwM3ItczNjcmV0LXZhbHVl", "sup3r"] {
                assert!(!shown.contains(leak), "{shown}");
            }
        }
    }

    #[test]
    fn what_sign_writes_passes_verify_for_every_scheme_and_a_wrong_secret_does_not() {
        let vars = env([
            ("TOKEN", "t0ken"),
            ("SECRET", "s3cret"),
            ("STRIPE", "whsec_stripe-secret"),
            ("SW", SW_SECRET),
        ]);
        let body = br#"{"id":1}"#;
        let now = at(1_764_800_000);
        let schemes = [
            WebhookAuth::Bearer(BearerAuth {
                token: "${env:TOKEN}".into(),
            }),
            WebhookAuth::ApiKey(ApiKeyAuth {
                header: "x-api-key".into(),
                key: "${env:TOKEN}".into(),
            }),
            WebhookAuth::HmacSha256(HmacAuth {
                header: "X-Slack-Signature".into(),
                secret: "${env:SECRET}".into(),
                encoding: SignatureEncoding::Hex,
                prefix: Some("v0=".into()),
                timestamp_header: Some("X-Slack-Request-Timestamp".into()),
                tolerance: Duration::from_secs(300),
                payload: Some("v0:{timestamp}:{body}".into()),
            }),
            WebhookAuth::HmacSha256(HmacAuth {
                header: "X-Signature".into(),
                secret: "${env:SECRET}".into(),
                encoding: SignatureEncoding::Base64,
                prefix: None,
                timestamp_header: None,
                tolerance: Duration::from_secs(300),
                payload: None,
            }),
            WebhookAuth::Stripe(SignedAuth {
                secret: "${env:STRIPE}".into(),
                tolerance: Duration::from_secs(300),
            }),
            WebhookAuth::StandardWebhooks(SignedAuth {
                secret: "${env:SW}".into(),
                tolerance: Duration::from_secs(300),
            }),
        ];
        for auth in &schemes {
            let mut map = HeaderMap::new();
            for (name, value) in sign(auth, &vars, body, now).unwrap() {
                map.insert(name, HeaderValue::from_str(&value).unwrap());
            }
            let v = Verifier::new(auth, &vars).unwrap();
            assert!(v.verify(&map, body, now).is_ok(), "{}", auth.scheme());
            // Another body, or signed with other secrets, does not pass.
            assert!(
                v.verify(&map, br#"{"id":2}"#, now).is_err()
                    || auth.scheme() == "bearer"
                    || auth.scheme() == "api_key",
                "{}",
                auth.scheme()
            );
            let other = env([
                ("TOKEN", "other"),
                ("SECRET", "other"),
                ("STRIPE", "whsec_other"),
                ("SW", "whsec_b3RoZXItc2VjcmV0"),
            ]);
            let mut forged = HeaderMap::new();
            for (name, value) in sign(auth, &other, body, now).unwrap() {
                forged.insert(name, HeaderValue::from_str(&value).unwrap());
            }
            assert!(v.verify(&forged, body, now).is_err(), "{}", auth.scheme());
        }
    }

    #[test]
    fn verifier_is_clone_send_sync() {
        fn assert_traits<T: Clone + Send + Sync + 'static>() {}
        assert_traits::<Verifier>();
        let v = standard(SW_SECRET);
        let copy = v.clone();
        // A clone checks independently: the MAC state is copied, not shared.
        assert!(copy.verify(&sw_headers(SW_SIG), SW_BODY, at(SW_TS)).is_ok());
        assert!(v.verify(&sw_headers(SW_SIG), SW_BODY, at(SW_TS)).is_ok());
    }

    #[test]
    fn error_codes() {
        let m = String::new;
        assert_eq!(AuthError::Missing(m()).code(), "missing_credentials");
        assert_eq!(AuthError::Malformed(m()).code(), "malformed_signature");
        assert_eq!(AuthError::Mismatch(m()).code(), "invalid_signature");
        assert_eq!(AuthError::Expired(m()).code(), "expired_signature");
        assert_eq!(AuthError::Expired("stale".into()).to_string(), "stale");
    }

    #[test]
    fn hostile_header_values_are_refused_without_panicking() {
        let verifiers = [
            bearer(),
            hmac_verifier(SignatureEncoding::Hex, Some("sha256=")),
            hmac_verifier(SignatureEncoding::Base64, None),
            stripe("whsec_test_secret"),
            standard(SW_SECRET),
        ];
        let names = [
            "authorization",
            "x-signature",
            "stripe-signature",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
        ];
        let long = "v1,".repeat(10_000);
        let values: [&[u8]; 9] = [
            b"\xff\xfe\x80",
            b"Bearer \xe2\x82\xac",
            b"sha256=\xc3",
            b" ",
            b"t=1,v1=\xff",
            b"v1,\xff\xff",
            long.as_bytes(),
            b"t=-9223372036854775808,v1=00",
            b"=",
        ];
        for value in values {
            let mut h = HeaderMap::new();
            for name in names {
                h.insert(name, HeaderValue::from_bytes(value).unwrap());
            }
            for v in &verifiers {
                for now in [at(0), jiff::Timestamp::MIN, jiff::Timestamp::MAX] {
                    assert!(v.verify(&h, b"\x00\xff", now).is_err(), "{v:?} {value:?}");
                }
            }
        }
    }
}
