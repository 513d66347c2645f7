//! What Twilio sends to Herald: a text someone sent to the number (`From`, `To`, `Body`,
//! `MediaUrl{N}`), a report on a text Herald sent (`MessageSid`, `MessageStatus`,
//! `ErrorCode`), or a call to the number (`CallSid`, `CallStatus`, `Direction`, and
//! `DialCallStatus` when a `<Dial>` ends). All are form-encoded and signed the same way, so
//! one URL takes them all, told apart by their fields; fields Twilio adds later are kept in
//! `raw`.
//!
//! A call arrives three ways. The number's "A call comes in" webhook asks what to do with a
//! ringing call: Herald forwards it to `forward_calls_to` with a `<Dial>` whose `action` is
//! this same URL, or, with nowhere to forward, refuses it with a busy tone (a missed call).
//! The `<Dial>`'s action reports how the forwarded call went (`DialCallStatus`). The number's
//! "Call status changes" callback reports how the call itself ended (`CallStatus`). A call
//! is missed when nobody took it: `no-answer`, `busy`, `failed`, or `canceled` (the caller
//! hung up first). Only calls to the number count: `Direction` is `inbound`.

use serde_json::{Map, Value};

use super::TwilioSmsChannel;
use super::signature;
use crate::channels::inbound::{
    CallReport, DeliveryReport, InboundError, InboundMessage, InboundRequest, Media,
    ProviderAnswer, Received, Receiver, ReportedStatus,
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
        // The console lets a number's webhooks be GETs, whose fields are in the query.
        let fields = if request.method == reqwest::Method::GET {
            request
                .url
                .split_once('?')
                .map(|(_, query)| fields(query.as_bytes()))
                .unwrap_or_default()
        } else {
            fields(request.body)
        };
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
        if let (Some(call_id), Some(status)) = (get("CallSid"), get("CallStatus")) {
            return self.call(request, call_id, status, &get, raw);
        }
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
            answer: twiml(EMPTY_TWIML),
        })
    }
}

impl TwilioSmsChannel {
    /// A request about a call: the ringing call itself (answered with what to do), or how it
    /// ended (recorded when nobody took it).
    fn call<'a>(
        &self,
        request: &InboundRequest<'_>,
        call_id: &str,
        status: &str,
        get: &dyn Fn(&str) -> Option<&'a str>,
        raw: Value,
    ) -> Result<Received, InboundError> {
        let from = get("From").filter(|f| !f.is_empty());
        let inbound = get("Direction").is_none_or(|d| d == "inbound");
        let dial = get("DialCallStatus");
        let ringing = dial.is_none() && matches!(status, "ringing" | "queued");
        let nothing = || Received::Events {
            messages: Vec::new(),
            reports: Vec::new(),
            answer: twiml(EMPTY_TWIML),
        };
        if !inbound {
            // A call from the number (the account dialling out) missed nobody.
            return Ok(nothing());
        }
        // A ringing call is put through whoever calls: the caller is on the line.
        if let (true, Some(number)) = (ringing, &self.forward_calls_to) {
            return Ok(Received::Events {
                messages: Vec::new(),
                reports: Vec::new(),
                answer: twiml(&self.forward(request.url, number)),
            });
        }
        let ended = if ringing {
            "busy"
        } else {
            dial.unwrap_or(status)
        };
        if !matches!(
            ended,
            "completed" | "answered" | "no-answer" | "busy" | "failed" | "canceled"
        ) {
            // On the way (in-progress, initiated): only how a call ends says it was missed.
            return Ok(nothing());
        }
        let missed = matches!(ended, "no-answer" | "busy" | "failed" | "canceled");
        let from = from.ok_or_else(|| InboundError::Malformed("a call without From".to_owned()))?;
        Ok(Received::Call {
            call: CallReport {
                channel: self.name.clone(),
                from: from.to_owned(),
                to: get("To").map(str::to_owned),
                call_id: call_id.to_owned(),
                status: ended.to_owned(),
                missed,
                raw,
            },
            // Nowhere to ring a ringing call: the caller hears busy, and is texted back.
            answer: twiml(if ringing { REJECT_TWIML } else { EMPTY_TWIML }),
        })
    }

    /// TwiML that rings `number` for `ring_timeout`, then reports how that went to the URL
    /// this request came to: `public_url` when set, else the path Twilio called, which it
    /// resolves against the host it called.
    fn forward(&self, seen: &str, number: &str) -> String {
        let action = match &self.public_url {
            Some(public) => public.clone(),
            None => {
                let after_scheme = seen.split_once("://").map_or(seen, |(_, rest)| rest);
                let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
                path.split('?').next().unwrap_or(path).to_owned()
            }
        };
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Dial action=\"{}\" method=\"POST\" timeout=\"{}\">{}</Dial></Response>",
            xml_escape(&action),
            self.ring_timeout.as_secs(),
            xml_escape(number)
        )
    }

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

/// Refuses a call with a busy tone: free, and Twilio reports it as `busy`.
const REJECT_TWIML: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Reject reason=\"busy\"/></Response>";

fn twiml(body: &str) -> ProviderAnswer {
    ProviderAnswer {
        status: 200,
        content_type: Some("text/xml"),
        body: body.to_owned(),
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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
        forwarding(public_url, None)
    }

    fn forwarding(public_url: Option<&str>, forward_calls_to: Option<&str>) -> TwilioSmsChannel {
        let config = TwilioSmsConfig {
            account_sid: "AC00000000000000000000000000000001".into(),
            auth_token: "12345".into(),
            api_key: None,
            api_secret: None,
            from: Some("+18005551212".into()),
            messaging_service_sid: None,
            public_url: public_url.map(str::to_owned),
            forward_calls_to: forward_calls_to.map(str::to_owned),
            ring_timeout: crate::definitions::model::Duration::from_secs(20),
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

    const CALL: &str = "AccountSid=AC00000000000000000000000000000001&ApiVersion=2010-04-01\
                        &CallSid=CA0123456789abcdef&From=%2B14155550100&To=%2B18005551212\
                        &Direction=inbound&Caller=%2B14155550100&Called=%2B18005551212";

    fn call_of(received: Result<Received, InboundError>) -> (CallReport, ProviderAnswer) {
        match received {
            Ok(Received::Call { call, answer }) => (call, answer),
            other => panic!("not a call: {other:?}"),
        }
    }

    fn answer_only(received: Result<Received, InboundError>) -> String {
        match received {
            Ok(Received::Events {
                messages,
                reports,
                answer,
            }) if messages.is_empty() && reports.is_empty() => {
                assert_eq!(answer.content_type, Some("text/xml"));
                answer.body
            }
            other => panic!("expected an answer and nothing to record: {other:?}"),
        }
    }

    #[test]
    fn a_call_that_ends_unanswered_is_missed_and_an_answered_one_is_not() {
        for status in ["no-answer", "busy", "failed", "canceled"] {
            let (call, answer) = call_of(parse(&format!("{CALL}&CallStatus={status}")));
            assert!(call.missed, "{status}");
            assert_eq!(
                (call.status.as_str(), call.from.as_str(), call.to.as_deref()),
                (status, "+14155550100", Some("+18005551212"))
            );
            assert_eq!(call.call_id, "CA0123456789abcdef");
            assert_eq!(answer.body, EMPTY_TWIML);
            assert_eq!(call.raw["Direction"], "inbound");
        }
        let (call, _) = call_of(parse(&format!(
            "{CALL}&CallStatus=completed&CallDuration=42"
        )));
        assert!(!call.missed);

        // A <Dial>'s action says how the forwarded leg went; the parent call was answered by
        // Twilio to run the <Dial>, so its own status says nothing about the caller.
        let dial = |status: &str| {
            call_of(parse(&format!(
                "{CALL}&CallStatus=in-progress&DialCallStatus={status}&DialCallSid=CAchild"
            )))
            .0
        };
        assert!(dial("no-answer").missed && dial("busy").missed);
        assert_eq!(dial("no-answer").call_id, "CA0123456789abcdef");
        assert!(!dial("completed").missed && !dial("answered").missed);

        // Calls the account makes, and calls still on their way, miss nobody.
        let outbound = CALL.replace("Direction=inbound", "Direction=outbound-api");
        answer_only(parse(&format!("{outbound}&CallStatus=no-answer")));
        answer_only(parse(&format!("{CALL}&CallStatus=in-progress")));
        assert!(matches!(
            parse("CallSid=CA1&CallStatus=no-answer"),
            Err(InboundError::Malformed(m)) if m.contains("From")
        ));
    }

    #[test]
    fn a_ringing_call_is_forwarded_with_this_url_as_the_action_or_refused_as_busy() {
        let request = |url| {
            let headers = form_headers(None);
            let body = format!("{CALL}&CallStatus=ringing");
            forwarding(None, Some("+15558675310")).parse(&InboundRequest {
                method: &Method::POST,
                url,
                headers: &headers,
                body: body.as_bytes(),
                now: 0,
            })
        };
        assert_eq!(
            answer_only(request("http://10.0.0.7:8080/inbound/sms?x=1")),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Dial action=\"/inbound/sms\" \
             method=\"POST\" timeout=\"20\">+15558675310</Dial></Response>"
        );
        let headers = form_headers(None);
        let body = format!("{CALL}&CallStatus=ringing");
        let public = forwarding(
            Some("https://herald.example.com/inbound/sms"),
            Some("+15558675310"),
        )
        .parse(&InboundRequest {
            method: &Method::POST,
            url: "http://10.0.0.7:8080/inbound/sms",
            headers: &headers,
            body: body.as_bytes(),
            now: 0,
        });
        assert!(answer_only(public).contains("action=\"https://herald.example.com/inbound/sms\""));

        // A caller whose number Twilio does not give is put through all the same.
        let headers = form_headers(None);
        let hidden = forwarding(None, Some("+15558675310")).parse(&InboundRequest {
            method: &Method::POST,
            url: "http://10.0.0.7:8080/inbound/sms",
            headers: &headers,
            body: b"CallSid=CA9&CallStatus=ringing&Direction=inbound&To=%2B18005551212",
            now: 0,
        });
        assert!(answer_only(hidden).contains("<Dial"));

        // With nowhere to ring, the caller hears busy and the call is missed now.
        let (call, answer) = call_of(parse(&format!("{CALL}&CallStatus=ringing")));
        assert!(call.missed);
        assert_eq!(call.status, "busy");
        assert!(
            answer.body.contains("<Reject reason=\"busy\"/>"),
            "{}",
            answer.body
        );
    }

    #[test]
    fn a_webhook_set_to_get_is_read_from_the_query() {
        let headers = HeaderMap::new();
        let url = format!("https://herald.example.com/inbound/sms?{CALL}&CallStatus=busy");
        let received = channel(None).parse(&InboundRequest {
            method: &Method::GET,
            url: &url,
            headers: &headers,
            body: b"",
            now: 0,
        });
        let (call, _) = call_of(received);
        assert!(call.missed);
        assert_eq!(call.from, "+14155550100");
    }
}
