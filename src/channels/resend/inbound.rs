//! Resend's events: `{"type": "email.delivered", "created_at", "data": {"email_id", "to",
//! "bounce": {"message", "type"}}}`, signed with Standard Webhooks (`svix-id`,
//! `svix-timestamp`, `svix-signature`). Opens and clicks are left out.

use serde_json::Value;

use super::ResendChannel;
use crate::channels::inbound::{
    DeliveryReport, InboundError, InboundRequest, Received, Receiver, ReportedStatus,
};

impl Receiver for ResendChannel {
    fn verify(&self, request: &InboundRequest<'_>) -> Result<(), InboundError> {
        let Some(verifier) = &self.events else {
            return Err(InboundError::Unauthenticated(
                "this channel has no webhook_secret, so Resend's signature cannot be checked; \
                 set it to the webhook's signing secret (whsec_…)"
                    .to_owned(),
            ));
        };
        let now = jiff::Timestamp::from_millisecond(request.now)
            .map_err(|e| InboundError::Unauthenticated(format!("no usable clock: {e}")))?;
        verifier
            .verify(request.headers, request.body, now)
            .map(|_| ())
            .map_err(|e| InboundError::Unauthenticated(e.to_string()))
    }

    fn parse(&self, request: &InboundRequest<'_>) -> Result<Received, InboundError> {
        let event: Value = serde_json::from_slice(request.body)
            .map_err(|e| InboundError::Malformed(format!("the body is not JSON: {e}")))?;
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| InboundError::Malformed("an event without `type`".to_owned()))?;
        let status = match kind {
            "email.sent" => Some(ReportedStatus::Sent),
            "email.delivered" => Some(ReportedStatus::Delivered),
            "email.bounced" => Some(ReportedStatus::Bounced),
            "email.complained" => Some(ReportedStatus::Complained),
            "email.failed" => Some(ReportedStatus::Failed { permanent: true }),
            _ => None,
        };
        let id = event.pointer("/data/email_id").and_then(Value::as_str);
        let reports = match (status, id) {
            (Some(status), Some(id)) => vec![DeliveryReport {
                channel: self.name.clone(),
                provider_id: id.to_owned(),
                status,
                error: event
                    .pointer("/data/bounce/message")
                    .or_else(|| event.pointer("/data/failed/reason"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                raw: event.clone(),
            }],
            _ => Vec::new(),
        };
        Ok(Received::reports(reports))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use reqwest::Method;
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;
    use crate::channels::resend::config::ResendConfig;
    use crate::definitions::env::EnvSource;

    // The Standard Webhooks specification's published example.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn channel(secret: Option<&str>) -> ResendChannel {
        let config = ResendConfig {
            api_key: "re_test".into(),
            from: "Talk-To-My-Lawyer <hello@example.com>".into(),
            webhook_secret: secret.map(str::to_owned),
            api_base: "https://api.resend.com".into(),
            timeout: crate::definitions::model::Duration::from_secs(5),
        };
        ResendChannel::from_config("mail", &config, &EnvSource::Map(Arc::default())).unwrap()
    }

    fn svix_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("svix-id", HeaderValue::from_static(ID));
        headers.insert("svix-timestamp", HeaderValue::from_static(TIMESTAMP));
        headers.insert("svix-signature", HeaderValue::from_static(SIGNATURE));
        headers
    }

    fn request<'a>(headers: &'a HeaderMap, body: &'a [u8], now_s: i64) -> InboundRequest<'a> {
        InboundRequest {
            method: &Method::POST,
            url: "https://herald.example.com/inbound/mail",
            headers,
            body,
            now: now_s * 1000,
        }
    }

    #[test]
    fn the_published_standard_webhooks_example_is_accepted_in_its_window() {
        let headers = svix_headers();
        let at = 1_614_265_330;
        assert_eq!(
            channel(Some(SECRET)).verify(&request(&headers, BODY, at)),
            Ok(())
        );
        assert!(
            channel(Some(SECRET))
                .verify(&request(&headers, BODY, at + 3600))
                .is_err()
        );
        assert!(
            channel(Some(SECRET))
                .verify(&request(&headers, br#"{"test": 1}"#, at))
                .is_err()
        );
        assert!(matches!(
            channel(None).verify(&request(&headers, BODY, at)),
            Err(InboundError::Unauthenticated(m)) if m.contains("webhook_secret")
        ));
    }

    #[test]
    fn a_bounce_is_reported_with_its_message() {
        let headers = HeaderMap::new();
        let body = br#"{"type":"email.bounced","created_at":"2026-11-02T15:00:00.000Z","data":{
            "email_id":"56761188-7520-42d8-8898-ff6fc54ce618","from":"hello@example.com",
            "to":["ann@example.org"],"subject":"Your letter",
            "bounce":{"message":"The recipient's mailbox does not exist","type":"Permanent","subType":"General"}}}"#;
        let Ok(Received::Events { reports, .. }) = channel(None).parse(&request(&headers, body, 0))
        else {
            panic!("not events");
        };
        assert_eq!(reports[0].status, ReportedStatus::Bounced);
        assert_eq!(
            reports[0].provider_id,
            "56761188-7520-42d8-8898-ff6fc54ce618"
        );
        assert_eq!(
            reports[0].error.as_deref(),
            Some("The recipient's mailbox does not exist")
        );
        let opened = br#"{"type":"email.opened","data":{"email_id":"x"}}"#;
        assert!(matches!(
            channel(None).parse(&request(&headers, opened, 0)),
            Ok(Received::Events { reports, .. }) if reports.is_empty()
        ));
    }
}
