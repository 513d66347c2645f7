//! What Meta sends to the app's webhook: a `GET` to verify it (`hub.mode=subscribe`,
//! `hub.verify_token`, `hub.challenge`, answered with the challenge), and `POST`s signed with
//! `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body with the app secret>` carrying
//! `entry[].changes[].value` with `messages[]` (what people sent) and `statuses[]` (where
//! Herald's messages got to). WhatsApp gives numbers as digits; they are read as E.164.

use hmac::{Hmac, KeyInit, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::WhatsappChannel;
use crate::channels::http::query_param;
use crate::channels::inbound::{
    DeliveryReport, InboundError, InboundMessage, InboundRequest, ProviderAnswer, Received,
    Receiver, ReportedStatus,
};

impl Receiver for WhatsappChannel {
    fn verify(&self, request: &InboundRequest<'_>) -> Result<(), InboundError> {
        if request.method == Method::GET {
            return self.verify_subscription(request);
        }
        let Some(secret) = &self.app_secret else {
            return Err(InboundError::Unauthenticated(
                "this channel has no app_secret, so Meta's signature cannot be checked; set it \
                 to the app's secret (App settings > Basic)"
                    .to_owned(),
            ));
        };
        let given = request
            .headers
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                InboundError::Unauthenticated("the request has no X-Hub-Signature-256".to_owned())
            })?;
        let hex_given = given.trim().strip_prefix("sha256=").ok_or_else(|| {
            InboundError::Unauthenticated("X-Hub-Signature-256 does not start with sha256=".into())
        })?;
        let given = hex::decode(hex_given).map_err(|_| {
            InboundError::Unauthenticated("X-Hub-Signature-256 is not hexadecimal".into())
        })?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key");
        mac.update(request.body);
        let expected = mac.finalize().into_bytes();
        if bool::from(expected.as_slice().ct_eq(&given)) {
            Ok(())
        } else {
            Err(InboundError::Unauthenticated(
                "X-Hub-Signature-256 does not match the body signed with app_secret".to_owned(),
            ))
        }
    }

    fn parse(&self, request: &InboundRequest<'_>) -> Result<Received, InboundError> {
        if request.method == Method::GET {
            let challenge = query_param(request.url, "hub.challenge").unwrap_or_default();
            return Ok(Received::Handshake(ProviderAnswer {
                status: 200,
                content_type: Some("text/plain"),
                body: challenge,
            }));
        }
        let payload: Value = serde_json::from_slice(request.body)
            .map_err(|e| InboundError::Malformed(format!("the body is not JSON: {e}")))?;
        let entries = payload
            .get("entry")
            .and_then(Value::as_array)
            .ok_or_else(|| InboundError::Malformed("no `entry` list".to_owned()))?;
        let mut messages = Vec::new();
        let mut reports = Vec::new();
        let values = entries
            .iter()
            .filter_map(|e| e.get("changes")?.as_array())
            .flatten()
            .filter(|c| c.get("field").and_then(Value::as_str) == Some("messages"))
            .filter_map(|c| c.get("value"));
        for value in values {
            let to = value
                .pointer("/metadata/display_phone_number")
                .and_then(Value::as_str)
                .map(e164);
            for m in list(value, "messages") {
                messages.push(self.message(m, value, to.clone())?);
            }
            for s in list(value, "statuses") {
                if let Some(report) = self.report(s) {
                    reports.push(report);
                }
            }
        }
        Ok(Received::Events {
            messages,
            reports,
            answer: ProviderAnswer::ok(),
        })
    }
}

impl WhatsappChannel {
    fn verify_subscription(&self, request: &InboundRequest<'_>) -> Result<(), InboundError> {
        let Some(expected) = &self.verify_token else {
            return Err(InboundError::Unauthenticated(
                "this channel has no verify_token to compare Meta's verification request with"
                    .to_owned(),
            ));
        };
        if query_param(request.url, "hub.mode").as_deref() != Some("subscribe") {
            return Err(InboundError::Malformed(
                "a GET without hub.mode=subscribe".to_owned(),
            ));
        }
        let given = query_param(request.url, "hub.verify_token").unwrap_or_default();
        if bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) {
            Ok(())
        } else {
            Err(InboundError::Unauthenticated(
                "hub.verify_token is not this channel's verify_token".to_owned(),
            ))
        }
    }

    fn message(
        &self,
        m: &Value,
        value: &Value,
        to: Option<String>,
    ) -> Result<InboundMessage, InboundError> {
        let field = |pointer: &str| m.pointer(pointer).and_then(Value::as_str);
        let (Some(from), Some(id)) = (field("/from"), field("/id")) else {
            return Err(InboundError::Malformed(
                "a message without `from` or `id`".to_owned(),
            ));
        };
        // What the person wrote or chose, whatever the message type.
        let text = field("/text/body")
            .or_else(|| field("/button/text"))
            .or_else(|| field("/interactive/button_reply/title"))
            .or_else(|| field("/interactive/list_reply/title"))
            .or_else(|| {
                let kind = field("/type")?;
                field(&format!("/{kind}/caption"))
            })
            .unwrap_or_default();
        let contact = list(value, "contacts")
            .find(|c| c.get("wa_id").and_then(Value::as_str) == Some(from))
            .cloned()
            .unwrap_or(Value::Null);
        Ok(InboundMessage {
            channel: self.name.clone(),
            from: e164(from),
            to,
            text: text.to_owned(),
            media: Vec::new(),
            command: None,
            provider_id: Some(id.to_owned()),
            raw: json!({ "message": m, "contact": contact, "metadata": value.get("metadata") }),
        })
    }

    fn report(&self, s: &Value) -> Option<DeliveryReport> {
        let id = s.get("id")?.as_str()?;
        let code = s.pointer("/errors/0/code").and_then(Value::as_u64);
        let status = match s.get("status")?.as_str()? {
            "sent" => ReportedStatus::Sent,
            "delivered" | "read" => ReportedStatus::Delivered,
            "failed" => ReportedStatus::Failed {
                permanent: !code.is_some_and(|c| super::is_transient_code(c as u32)),
            },
            _ => return None,
        };
        let error = s.pointer("/errors/0").map(|e| {
            let title = e
                .get("title")
                .or_else(|| e.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("failed");
            match code {
                Some(code) => format!("WhatsApp error {code}: {title}"),
                None => title.to_owned(),
            }
        });
        Some(DeliveryReport {
            channel: self.name.clone(),
            provider_id: id.to_owned(),
            status,
            error,
            raw: s.clone(),
        })
    }
}

fn list<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    value
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// WhatsApp's digits as E.164.
fn e164(digits: &str) -> String {
    let digits: String = digits.chars().filter(char::is_ascii_digit).collect();
    format!("+{digits}")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;
    use crate::channels::whatsapp::config::WhatsappConfig;
    use crate::definitions::env::EnvSource;

    fn channel(app_secret: &str) -> WhatsappChannel {
        let config = WhatsappConfig {
            access_token: "EAAG-token".into(),
            phone_number_id: "106540352242922".into(),
            app_secret: Some(app_secret.into()),
            verify_token: Some("verify-me".into()),
            api_base: "https://graph.facebook.com".into(),
            api_version: "v21.0".into(),
            timeout: crate::definitions::model::Duration::from_secs(5),
        };
        WhatsappChannel::from_config("wa", &config, &EnvSource::Map(Arc::default())).unwrap()
    }

    fn post<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> InboundRequest<'a> {
        InboundRequest {
            method: &Method::POST,
            url: "https://herald.example.com/inbound/wa",
            headers,
            body,
            now: 0,
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        let body = b"what do ya want for nothing?";
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-hub-signature-256",
            HeaderValue::from_static(
                "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
        );
        assert_eq!(channel("Jefe").verify(&post(&headers, body)), Ok(()));
        assert!(channel("jefe").verify(&post(&headers, body)).is_err());
        assert!(
            channel("Jefe")
                .verify(&post(&headers, b"what do ya want for nothing!"))
                .is_err()
        );
        headers.insert("x-hub-signature-256", HeaderValue::from_static("5bdcc146"));
        assert!(channel("Jefe").verify(&post(&headers, body)).is_err());
    }

    #[test]
    fn the_verification_request_is_answered_with_its_challenge() {
        let headers = HeaderMap::new();
        let get = |url| InboundRequest {
            method: &Method::GET,
            url,
            headers: &headers,
            body: b"",
            now: 0,
        };
        let good = "https://h.example.com/inbound/wa?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444";
        assert_eq!(channel("s").verify(&get(good)), Ok(()));
        match channel("s").parse(&get(good)) {
            Ok(Received::Handshake(answer)) => assert_eq!(answer.body, "1158201444"),
            other => panic!("{other:?}"),
        }
        let bad = "https://h.example.com/inbound/wa?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1";
        assert!(matches!(
            channel("s").verify(&get(bad)),
            Err(InboundError::Unauthenticated(_))
        ));
    }

    #[test]
    fn messages_and_statuses_from_one_notification() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"field":"messages","value":{
            "messaging_product":"whatsapp",
            "metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},
            "contacts":[{"profile":{"name":"Sheena Nelson"},"wa_id":"16505551234"}],
            "messages":[{"from":"16505551234","id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=","timestamp":"1749416383","type":"text","text":{"body":"Does it come in another color?"}},
                        {"from":"16505551234","id":"wamid.2","timestamp":"1749416390","type":"interactive","interactive":{"type":"button_reply","button_reply":{"id":"yes","title":"Yes, book it"}}}],
            "statuses":[{"id":"wamid.sent1","status":"delivered","timestamp":"1749416400","recipient_id":"16505551234"},
                        {"id":"wamid.sent2","status":"failed","timestamp":"1749416401","recipient_id":"16505551234","errors":[{"code":131047,"title":"Re-engagement message"}]}]
        }}]}]}"#;
        let headers = HeaderMap::new();
        let Ok(Received::Events {
            messages, reports, ..
        }) = channel("s").parse(&post(&headers, body))
        else {
            panic!("not events");
        };
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].from, "+16505551234");
        assert_eq!(messages[0].to.as_deref(), Some("+15550783881"));
        assert_eq!(messages[0].text, "Does it come in another color?");
        assert_eq!(
            messages[0].raw["contact"]["profile"]["name"],
            "Sheena Nelson"
        );
        assert_eq!(messages[1].text, "Yes, book it");
        assert_eq!(reports[0].status, ReportedStatus::Delivered);
        assert_eq!(
            reports[1].status,
            ReportedStatus::Failed { permanent: true }
        );
        assert_eq!(
            reports[1].error.as_deref(),
            Some("WhatsApp error 131047: Re-engagement message")
        );
    }
}
