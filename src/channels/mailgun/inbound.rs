//! Mailgun's event webhooks: `{"signature": {"timestamp", "token", "signature"},
//! "event-data": {"event", "message": {"headers": {"message-id"}}, "severity", "reason",
//! "delivery-status": {"code", "message"}, ...}}`. Only delivery events become reports; opens
//! and clicks are left out.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{MailgunChannel, bare_message_id};
use crate::channels::inbound::{
    DeliveryReport, InboundError, InboundRequest, Received, Receiver, ReportedStatus,
};

impl Receiver for MailgunChannel {
    fn verify(&self, request: &InboundRequest<'_>) -> Result<(), InboundError> {
        let Some(key) = &self.signing_key else {
            return Err(InboundError::Unauthenticated(
                "this channel has no webhook_signing_key, so Mailgun's signature cannot be \
                 checked; set it to the HTTP webhook signing key (Sending > Webhooks)"
                    .to_owned(),
            ));
        };
        let payload: Value = serde_json::from_slice(request.body)
            .map_err(|_| InboundError::Unauthenticated("the body is not JSON".to_owned()))?;
        let part = |name: &str| {
            payload
                .pointer(&format!("/signature/{name}"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    InboundError::Unauthenticated(format!("the body has no signature.{name}"))
                })
        };
        let (timestamp, token, signature) =
            (part("timestamp")?, part("token")?, part("signature")?);
        let given = hex::decode(signature).map_err(|_| {
            InboundError::Unauthenticated("signature.signature is not hexadecimal".to_owned())
        })?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes any key");
        mac.update(timestamp.as_bytes());
        mac.update(token.as_bytes());
        if bool::from(mac.finalize().into_bytes().as_slice().ct_eq(&given)) {
            Ok(())
        } else {
            Err(InboundError::Unauthenticated(
                "the signature does not match timestamp and token signed with webhook_signing_key"
                    .to_owned(),
            ))
        }
    }

    fn parse(&self, request: &InboundRequest<'_>) -> Result<Received, InboundError> {
        let payload: Value = serde_json::from_slice(request.body)
            .map_err(|e| InboundError::Malformed(format!("the body is not JSON: {e}")))?;
        let event = payload
            .get("event-data")
            .ok_or_else(|| InboundError::Malformed("no event-data".to_owned()))?;
        let text = |pointer: &str| event.pointer(pointer).and_then(Value::as_str);
        let name = text("/event")
            .ok_or_else(|| InboundError::Malformed("no event-data.event".to_owned()))?;
        let status = match (name, text("/severity"), text("/reason")) {
            ("accepted", _, _) => Some(ReportedStatus::Sent),
            ("delivered", _, _) => Some(ReportedStatus::Delivered),
            ("failed", Some("temporary"), _) => Some(ReportedStatus::Failed { permanent: false }),
            ("failed", _, Some("suppress-unsubscribe")) => Some(ReportedStatus::Unsubscribed),
            ("failed", _, Some("suppress-complaint")) => Some(ReportedStatus::Complained),
            ("failed", _, _) => Some(ReportedStatus::Bounced),
            ("complained", _, _) => Some(ReportedStatus::Complained),
            ("unsubscribed", _, _) => Some(ReportedStatus::Unsubscribed),
            _ => None,
        };
        let reports = match (status, text("/message/headers/message-id")) {
            (Some(status), Some(id)) => {
                let error = match (
                    event
                        .pointer("/delivery-status/code")
                        .and_then(Value::as_u64),
                    text("/delivery-status/message")
                        .filter(|m| !m.is_empty())
                        .or(text("/delivery-status/description"))
                        .or(text("/reason")),
                ) {
                    (Some(code), Some(m)) => Some(format!("{code} {m}")),
                    (None, Some(m)) => Some(m.to_owned()),
                    _ => None,
                }
                .filter(|_| !matches!(status, ReportedStatus::Sent | ReportedStatus::Delivered));
                vec![DeliveryReport {
                    channel: self.name.clone(),
                    provider_id: bare_message_id(id),
                    status,
                    error,
                    raw: event.clone(),
                }]
            }
            _ => Vec::new(),
        };
        Ok(Received::reports(reports))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use reqwest::Method;
    use reqwest::header::HeaderMap;

    use super::*;
    use crate::channels::mailgun::config::MailgunConfig;
    use crate::definitions::env::EnvSource;

    fn channel(key: Option<&str>) -> MailgunChannel {
        let config = MailgunConfig {
            api_key: "key-test".into(),
            domain: "mg.example.com".into(),
            from: "Complete Car Loans <hello@mg.example.com>".into(),
            webhook_signing_key: key.map(str::to_owned),
            api_base: "https://api.mailgun.net".into(),
            timeout: crate::definitions::model::Duration::from_secs(5),
        };
        MailgunChannel::from_config("mail", &config, &EnvSource::Map(Arc::default())).unwrap()
    }

    fn request<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> InboundRequest<'a> {
        InboundRequest {
            method: &Method::POST,
            url: "https://herald.example.com/inbound/mail",
            headers,
            body,
            now: 0,
        }
    }

    // The signature was computed independently (Python's hmac module) over the timestamp and
    // token of Mailgun's documented example, with this key.
    const KEY: &str = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0";
    const SIGNED: &str = r#"{"signature":{"timestamp":"1529006854","token":"a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0","signature":"b63c0701c4f4b614f272106a1b367c5c3369bcdca664ae73ebd52787e45eef07"},
        "event-data":{"event":"failed","severity":"permanent","reason":"bounce","id":"G9Bn5sl1TC6nu79C8C0bwg",
          "message":{"headers":{"message-id":"20130503192659.13651.20287@mg.example.com"}},
          "delivery-status":{"code":550,"message":"5.1.1 The email account that you tried to reach does not exist","description":""}}}"#;

    #[test]
    fn the_signature_is_checked_and_a_bounce_reported() {
        let headers = HeaderMap::new();
        assert_eq!(
            channel(Some(KEY)).verify(&request(&headers, SIGNED.as_bytes())),
            Ok(())
        );
        assert!(
            channel(Some("key-other"))
                .verify(&request(&headers, SIGNED.as_bytes()))
                .is_err()
        );
        let forged = SIGNED.replace("1529006854", "1529006855");
        assert!(
            channel(Some(KEY))
                .verify(&request(&headers, forged.as_bytes()))
                .is_err()
        );
        assert!(matches!(
            channel(None).verify(&request(&headers, SIGNED.as_bytes())),
            Err(InboundError::Unauthenticated(m)) if m.contains("webhook_signing_key")
        ));

        let Ok(Received::Events { reports, .. }) =
            channel(Some(KEY)).parse(&request(&headers, SIGNED.as_bytes()))
        else {
            panic!("not events");
        };
        assert_eq!(reports[0].status, ReportedStatus::Bounced);
        assert_eq!(
            reports[0].provider_id,
            "20130503192659.13651.20287@mg.example.com"
        );
        assert_eq!(
            reports[0].error.as_deref(),
            Some("550 5.1.1 The email account that you tried to reach does not exist")
        );
    }

    #[test]
    fn events_map_to_statuses() {
        let headers = HeaderMap::new();
        let status = |event: &str| {
            let body = format!(
                r#"{{"event-data":{{{event},"message":{{"headers":{{"message-id":"m@x"}}}}}}}}"#
            );
            match channel(None).parse(&request(&headers, body.as_bytes())) {
                Ok(Received::Events { reports, .. }) => reports.first().map(|r| r.status),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            status(r#""event":"delivered""#),
            Some(ReportedStatus::Delivered)
        );
        assert_eq!(
            status(r#""event":"failed","severity":"temporary""#),
            Some(ReportedStatus::Failed { permanent: false })
        );
        assert_eq!(
            status(r#""event":"failed","severity":"permanent","reason":"suppress-unsubscribe""#),
            Some(ReportedStatus::Unsubscribed)
        );
        assert_eq!(
            status(r#""event":"complained""#),
            Some(ReportedStatus::Complained)
        );
        assert_eq!(status(r#""event":"opened""#), None);
    }
}
