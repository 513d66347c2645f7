//! `X-Twilio-Signature`: base64 of an HMAC-SHA1, keyed with the account's auth token, over the
//! URL Twilio called followed by every form field's name and value, sorted by name.
//!
//! For a JSON body Twilio adds `bodySHA256` (the body's SHA-256 in hex) to the URL's query and
//! signs the URL alone. Twilio's own libraries also accept the URL with the default port added
//! or removed, since what a proxy passes on differs; so does this.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha1 = Hmac<Sha1>;

/// The signature Twilio sends for a request to `url` with these form fields.
pub(crate) fn sign(token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = HmacSha1::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `signature` is Twilio's for this request. `params` are the form fields of a
/// form-encoded body; for any other body they are empty and `body` is checked against the
/// URL's `bodySHA256`.
pub(crate) fn verify(
    token: &str,
    url: &str,
    params: &[(String, String)],
    body: &[u8],
    signature: &str,
) -> Result<(), String> {
    let signed_params: &[(String, String)] = match body_sha256(url) {
        Some(expected) => {
            let actual = hex::encode(Sha256::digest(body));
            if !bool::from(actual.as_bytes().ct_eq(expected.as_bytes())) {
                return Err("the body does not match the URL's bodySHA256".to_owned());
            }
            &[]
        }
        None => params,
    };
    let given = signature.trim().as_bytes();
    for candidate in port_variants(url) {
        let expected = sign(token, &candidate, signed_params);
        if bool::from(expected.as_bytes().ct_eq(given)) {
            return Ok(());
        }
    }
    Err(format!(
        "X-Twilio-Signature does not match a request to {} signed with the auth token",
        without_query(url)
    ))
}

fn body_sha256(url: &str) -> Option<String> {
    crate::channels::http::query_param(url, "bodySHA256").map(|v| v.to_lowercase())
}

fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// The URL as given, and with its scheme's default port added when it has none, or removed
/// when it has it.
fn port_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_owned()];
    let (scheme, default) = if url.starts_with("https://") {
        ("https://", "443")
    } else if url.starts_with("http://") {
        ("http://", "80")
    } else {
        return variants;
    };
    let rest = &url[scheme.len()..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // A port follows the last `:` unless that colon is inside an IPv6 literal.
    let port_at = authority
        .rfind(':')
        .filter(|&i| !authority[i..].contains(']'));
    match port_at {
        Some(i) if &authority[i + 1..] == default => {
            variants.push(format!("{scheme}{}{tail}", &authority[..i]));
        }
        Some(_) => {}
        None => variants.push(format!("{scheme}{authority}:{default}{tail}")),
    }
    variants
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    // Twilio's published example (its webhook security guide and SDK tests): auth token
    // `12345`, these fields, this URL.
    const TOKEN: &str = "12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const SIGNATURE: &str = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";

    fn example() -> Vec<(String, String)> {
        fields(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ])
    }

    #[test]
    fn the_published_example_signs_and_verifies() {
        assert_eq!(sign(TOKEN, URL, &example()), SIGNATURE);
        assert_eq!(verify(TOKEN, URL, &example(), b"", SIGNATURE), Ok(()));
        // The order the fields arrive in does not matter.
        let mut reversed = example();
        reversed.reverse();
        assert_eq!(verify(TOKEN, URL, &reversed, b"", SIGNATURE), Ok(()));
    }

    #[test]
    fn a_changed_field_url_or_token_is_refused() {
        let mut changed = example();
        changed[2].1 = "9999".into();
        assert!(verify(TOKEN, URL, &changed, b"", SIGNATURE).is_err());
        let other_url = "https://mycompany.com/myapp.php?foo=1&bar=3";
        assert!(verify(TOKEN, other_url, &example(), b"", SIGNATURE).is_err());
        assert!(verify("54321", URL, &example(), b"", SIGNATURE).is_err());
        let error = verify(TOKEN, URL, &example(), b"", "bm9wZQ==").unwrap_err();
        assert!(error.contains("https://mycompany.com/myapp.php"), "{error}");
        assert!(!error.contains("foo=1"), "{error}");
    }

    #[test]
    fn the_default_port_may_be_added_or_removed() {
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        assert_eq!(verify(TOKEN, with_port, &example(), b"", SIGNATURE), Ok(()));
        let signed_with_port = sign(TOKEN, with_port, &example());
        assert_eq!(
            verify(TOKEN, URL, &example(), b"", &signed_with_port),
            Ok(())
        );
        // Another port is another URL.
        let other = "https://mycompany.com:8443/myapp.php?foo=1&bar=2";
        assert!(verify(TOKEN, other, &example(), b"", SIGNATURE).is_err());
        assert_eq!(
            port_variants("http://[::1]/x"),
            ["http://[::1]/x", "http://[::1]:80/x"]
        );
    }

    #[test]
    fn a_json_body_is_checked_against_body_sha256_and_the_url_alone_is_signed() {
        let body = br#"{"event":"delivered"}"#;
        let url = format!(
            "https://herald.example.com/inbound/sms?bodySHA256={}",
            hex::encode(Sha256::digest(body))
        );
        let signature = sign(TOKEN, &url, &[]);
        assert_eq!(verify(TOKEN, &url, &[], body, &signature), Ok(()));
        let error = verify(TOKEN, &url, &[], br#"{"event":"failed"}"#, &signature).unwrap_err();
        assert!(error.contains("bodySHA256"), "{error}");
    }
}
