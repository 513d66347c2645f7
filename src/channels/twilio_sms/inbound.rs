//! What Twilio sends to Herald: a text someone sent to the number (`From`, `To`, `Body`,
//! `MediaUrl{N}`), or a report on a text Herald sent (`MessageSid`, `MessageStatus`,
//! `ErrorCode`). Both are form-encoded and signed; fields Twilio adds later are kept in `raw`.

use serde_json::{Map, Value};

use super::TwilioSmsChannel;
use super::signature;
use crate::channels::inbound::{
    DeliveryReport, InboundError, InboundMessage, InboundRequest, Media, ProviderAnswer, Received,
    Receiver, ReportedStatus,
};

/// The answer to a text: TwiML with no reply in it. Replies go out through the outbox, where
/// they are retried and recorded like every other message.
const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>";

impl Receiver for TwilioSmsChannel {
    fn verify(&self, request: &InboundRequest<'_>) -> Result<(), InboundError> {
        let given = request
            .headers
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                InboundError::Unauthenticated("the request has no X-Twilio-Signature".to_owned())
            })?;
        let url = self.signed_url(request.url);
        let params = if is_form(request) {
            fields(request.body)
        } else {
            Vec::new()
        };
        signature::verify(self.auth_token.expose(), &url, &params, request.body, given).map_err(
            |e| {
                let hint = if self.public_url.is_none() {
                    "; behind a proxy, set public_url to the URL configured in Twilio"
                } else {
                    ""
                };
                InboundError::Unauthenticated(format!("{e}{hint}"))
            },
        )
    }

    fn parse(&self, request: &InboundRequest<'_>) -> Result<Received, InboundError> {
        let fields = fields(request.body);
        let raw = Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<Map<_, _>>(),
        );
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if let Some(status) = get("MessageStatus") {
            let sid = get("MessageSid").or(get("SmsSid")).ok_or_else(|| {
                InboundError::Malformed("a MessageStatus without a MessageSid".to_owned())
            })?;
            let error = get("ErrorCode").filter(|c| !c.is_empty());
            let reports = report_status(status, error)
                .map(|status| DeliveryReport {
                    channel: self.name.clone(),
                    provider_id: sid.to_owned(),
                    status,
                    error: error.map(|code| format!("Twilio error {code}")),
                    raw: raw.clone(),
                })
                .into_iter()
                .collect();
            return Ok(Received::reports(reports));
        }
        let (Some(from), Some(sid)) = (get("From"), get("MessageSid").or(get("SmsMessageSid")))
        else {
            return Err(InboundError::Malformed(
                "neither a text (From, MessageSid, Body) nor a delivery report (MessageStatus)"
                    .to_owned(),
            ));
        };
        let count: usize = get("NumMedia").and_then(|n| n.parse().ok()).unwrap_or(0);
        let media = (0..count)
            .filter_map(|i| {
                Some(Media {
                    url: get(&format!("MediaUrl{i}"))?.to_owned(),
                    content_type: get(&format!("MediaContentType{i}")).map(str::to_owned),
                })
            })
            .collect();
        let message = InboundMessage {
            channel: self.name.clone(),
            from: from.to_owned(),
            to: get("To").map(str::to_owned),
            text: get("Body").unwrap_or_default().to_owned(),
            media,
            command: None,
            provider_id: Some(sid.to_owned()),
            raw,
        };
        Ok(Received::Events {
            messages: vec![message],
            reports: Vec::new(),
            answer: ProviderAnswer {
                status: 200,
                content_type: Some("text/xml"),
                body: EMPTY_TWIML.to_owned(),
            },
        })
    }
}

impl TwilioSmsChannel {
    /// The URL Twilio signed: `public_url` when set (with the query of the request, which
    /// Twilio also signs), else the URL as the server saw it.
    fn signed_url(&self, seen: &str) -> String {
        match &self.public_url {
            Some(public) if !public.contains('?') => match seen.split_once('?') {
                Some((_, query)) => format!("{public}?{query}"),
                None => public.clone(),
            },
            Some(public) => public.clone(),
            None => seen.to_owned(),
        }
    }
}

/// Where a report says the message is; `None` for the steps on the way (queued, sending).
fn report_status(status: &str, error: Option<&str>) -> Option<ReportedStatus> {
    Some(match status {
        "sent" => ReportedStatus::Sent,
        "delivered" | "read" => ReportedStatus::Delivered,
        "undelivered" | "failed" => match error {
            Some("21610") => ReportedStatus::Unsubscribed,
            // The handset was unreachable: it may be back later.
            Some("30003") => ReportedStatus::Failed { permanent: false },
            _ => ReportedStatus::Failed { permanent: true },
        },
        _ => return None,
    })
}

fn is_form(request: &InboundRequest<'_>) -> bool {
    request
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

fn fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use reqwest::Method;
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;
    use crate::channels::twilio_sms::config::TwilioSmsConfig;
    use crate::definitions::env::EnvSource;

    fn channel(public_url: Option<&str>) -> TwilioSmsChannel {
        let config = TwilioSmsConfig {
            account_sid: "AC00000000000000000000000000000001".into(),
            auth_token: "12345".into(),
            api_key: None,
            api_secret: None,
            from: Some("+18005551212".into()),
            messaging_service_sid: None,
            public_url: public_url.map(str::to_owned),
            api_base: "https://api.twilio.com".into(),
            timeout: crate::definitions::model::Duration::from_secs(5),
        };
        TwilioSmsChannel::from_config("sms", &config, &EnvSource::Map(Arc::default())).unwrap()
    }

    fn form_headers(signature: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        if let Some(s) = signature {
            headers.insert("x-twilio-signature", HeaderValue::from_str(s).unwrap());
        }
        headers
    }

    const PUBLISHED_BODY: &[u8] =
        b"CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212";

    #[test]
    fn the_published_example_is_verified_through_the_receiver() {
        let headers = form_headers(Some("0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        let request = |url| InboundRequest {
            method: &Method::POST,
            url,
            headers: &headers,
            body: PUBLISHED_BODY,
            now: 0,
        };
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(channel(None).verify(&request(url)), Ok(()));

        // Behind a proxy the server sees another URL; public_url says what Twilio called.
        let seen = "http://10.0.0.7:8080/myapp.php?foo=1&bar=2";
        let error = channel(None).verify(&request(seen)).unwrap_err();
        assert!(matches!(&error, InboundError::Unauthenticated(m) if m.contains("public_url")));
        let proxied = channel(Some("https://mycompany.com/myapp.php"));
        assert_eq!(proxied.verify(&request(seen)), Ok(()));

        let unsigned = form_headers(None);
        let request = InboundRequest {
            headers: &unsigned,
            ..request(url)
        };
        assert!(matches!(
            channel(None).verify(&request),
            Err(InboundError::Unauthenticated(_))
        ));
    }

    fn parse(body: &str) -> Result<Received, InboundError> {
        let headers = form_headers(None);
        channel(None).parse(&InboundRequest {
            method: &Method::POST,
            url: "https://herald.example.com/inbound/sms",
            headers: &headers,
            body: body.as_bytes(),
            now: 0,
        })
    }

    #[test]
    fn a_text_with_media_becomes_one_message_answered_with_empty_twiml() {
        let body = "ToCountry=US&MediaContentType0=image%2Fjpeg&NumMedia=1&Body=Yes+please%21\
                    &From=%2B14155550100&To=%2B18005551212&MessageSid=SM0123456789abcdef\
                    &SmsMessageSid=SM0123456789abcdef&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2Fm%2F1\
                    &AccountSid=AC00000000000000000000000000000001&ApiVersion=2010-04-01";
        let Ok(Received::Events {
            messages,
            reports,
            answer,
        }) = parse(body)
        else {
            panic!("{:?}", parse(body));
        };
        assert!(reports.is_empty());
        assert_eq!(answer.content_type, Some("text/xml"));
        assert_eq!(answer.body, EMPTY_TWIML);
        let m = &messages[0];
        assert_eq!(
            (m.from.as_str(), m.to.as_deref(), m.text.as_str()),
            ("+14155550100", Some("+18005551212"), "Yes please!")
        );
        assert_eq!(m.provider_id.as_deref(), Some("SM0123456789abcdef"));
        assert_eq!(
            m.media,
            [Media {
                url: "https://api.twilio.com/m/1".into(),
                content_type: Some("image/jpeg".into())
            }]
        );
        assert_eq!(m.raw["ToCountry"], "US");
    }

    #[test]
    fn delivery_reports_carry_the_status_and_the_error() {
        let report = |body: &str| match parse(body) {
            Ok(Received::Events { reports, .. }) => reports,
            other => panic!("{other:?}"),
        };
        let delivered = report("MessageSid=SM1&MessageStatus=delivered&To=%2B1415");
        assert_eq!(delivered[0].status, ReportedStatus::Delivered);
        assert_eq!(delivered[0].provider_id, "SM1");
        let stopped = report("MessageSid=SM2&MessageStatus=failed&ErrorCode=21610");
        assert_eq!(stopped[0].status, ReportedStatus::Unsubscribed);
        assert_eq!(stopped[0].error.as_deref(), Some("Twilio error 21610"));
        let unreachable = report("MessageSid=SM3&MessageStatus=undelivered&ErrorCode=30003");
        assert_eq!(
            unreachable[0].status,
            ReportedStatus::Failed { permanent: false }
        );
        assert!(report("MessageSid=SM4&MessageStatus=queued").is_empty());
        assert!(matches!(
            parse("MessageStatus=sent"),
            Err(InboundError::Malformed(_))
        ));
        assert!(matches!(
            parse("CallSid=CA1&CallStatus=no-answer"),
            Err(InboundError::Malformed(_))
        ));
    }
}
