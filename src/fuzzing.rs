//! Entry points for fuzzing: each takes arbitrary bytes and drives one parser that sees
//! untrusted or hand-written input. None may panic, hang or allocate without bound, whatever
//! the bytes. The AFL++ harnesses in `fuzz/` call these, and `tests/fuzz_corpus.rs` replays
//! the committed corpus through them on every test run.

use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use serde_json::json;

use crate::definitions::diagnostics::Diagnostic;
use crate::definitions::env::EnvSource;
use crate::definitions::model::trigger::{
    ApiKeyAuth, BearerAuth, HmacAuth, SignatureEncoding, SignedAuth, WebhookAuth,
};
use crate::definitions::source::SourceFile;
use crate::triggers::webhook_auth::Verifier;

/// A definition file: YAML with positions, the schema, the typed model, and every
/// diagnostic rendered with its source line (which exercises the position arithmetic).
pub fn definition(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let file = SourceFile::new("fuzz.yaml", text.as_ref());
    let render = |ds: &[Diagnostic]| {
        for d in ds {
            let _ = d.render(false);
        }
    };
    if let Err(ds) = crate::definitions::source::parse(&file) {
        render(&ds);
    }
    if let Err(ds) = crate::definitions::read_definition(file) {
        render(&ds);
    }
}

/// A template or expression, compiled and rendered against a small context, with a low fuel
/// budget so a runaway loop ends quickly.
pub fn template(data: &[u8]) {
    static TEMPLATES: OnceLock<crate::templates::Templates> = OnceLock::new();
    let t = TEMPLATES.get_or_init(|| crate::templates::Templates::empty(2_000));
    let text = String::from_utf8_lossy(data);
    let ctx = crate::templates::context(&json!({
        "body": {"first_name": "ada", "amount": 1234.5, "items": [1, 2, 3], "phone": "+13035550123"},
        "contact": null,
        "vars": {},
        "__now": "2026-11-02T15:00:00Z",
    }));
    let _ = t.render_str(&text, &ctx);
    let _ = t.eval(&text, &ctx);
    let _ = t.render_value_str(&text, &ctx);
    let _ = crate::templates::sole_expression(&text);
}

/// Every webhook auth scheme against one request: the first line of the input is put in
/// every header a scheme reads, the rest is the body.
pub fn webhook_auth(data: &[u8]) {
    static VERIFIERS: OnceLock<Vec<Verifier>> = OnceLock::new();
    let verifiers = VERIFIERS.get_or_init(|| {
        let env = EnvSource::Map(Arc::new(Default::default()));
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned();
        [
            WebhookAuth::Bearer(BearerAuth {
                token: "t0ken".into(),
            }),
            WebhookAuth::ApiKey(ApiKeyAuth {
                header: "x-api-key".into(),
                key: "k3y".into(),
            }),
            WebhookAuth::HmacSha256(HmacAuth {
                header: "x-signature".into(),
                secret: "s3cret".into(),
                encoding: SignatureEncoding::Hex,
                prefix: Some("sha256=".into()),
                timestamp_header: Some("x-timestamp".into()),
                tolerance: crate::definitions::model::Duration::from_secs(300),
                payload: Some("v0:{timestamp}:{body}".into()),
            }),
            WebhookAuth::HmacSha256(HmacAuth {
                header: "x-signature".into(),
                secret: "s3cret".into(),
                encoding: SignatureEncoding::Base64,
                prefix: None,
                timestamp_header: None,
                tolerance: crate::definitions::model::Duration::from_secs(300),
                payload: None,
            }),
            WebhookAuth::Stripe(SignedAuth {
                secret: secret.clone(),
                tolerance: crate::definitions::model::Duration::from_secs(300),
            }),
            WebhookAuth::StandardWebhooks(SignedAuth {
                secret,
                tolerance: crate::definitions::model::Duration::from_secs(300),
            }),
        ]
        .iter()
        .filter_map(|a| Verifier::new(a, &env).ok())
        .collect()
    });
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (line, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(line) {
        for name in [
            "authorization",
            "x-api-key",
            "x-signature",
            "x-timestamp",
            "stripe-signature",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "svix-id",
            "svix-timestamp",
            "svix-signature",
        ] {
            headers.append(HeaderName::from_static(name), value.clone());
        }
    }
    let now = jiff::Timestamp::from_second(1_700_000_000).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    for v in verifiers {
        let _ = v.verify(&headers, body, now);
    }
}

/// A webhook body under each content type Herald accepts.
pub fn body(data: &[u8]) {
    for content_type in [
        "",
        "application/json",
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/cloudevents+json",
    ] {
        let mut headers = HeaderMap::new();
        if !content_type.is_empty() {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        let _ = crate::triggers::webhook::parse_body(&headers, data);
    }
}

/// A fuzz target: any bytes in, nothing out; it must not panic.
pub type Target = fn(&[u8]);

/// The targets by name, for harnesses that take the name as an argument.
pub const TARGETS: &[(&str, Target)] = &[
    ("definition", definition),
    ("template", template),
    ("webhook_auth", webhook_auth),
    ("body", body),
];
