//! The `twilio_sms` provider's settings.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::definitions::model::common::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TwilioSmsConfig {
    /// The account SID (`AC…`), usually `${env:TWILIO_ACCOUNT_SID}`.
    pub account_sid: String,
    /// The account's auth token. Twilio signs its requests to Herald with it, so it is needed
    /// even when messages are sent with an API key.
    pub auth_token: String,
    /// An API key SID (`SK…`) to send with instead of the auth token, with `api_secret`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// The API key's secret.
    #[serde(default)]
    pub api_secret: Option<String>,
    /// The number messages come from, in E.164 (`+15017122661`). Give this or
    /// `messaging_service_sid`.
    #[serde(default)]
    pub from: Option<String>,
    /// A Messaging Service (`MG…`) that picks the sending number.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// The URL at which Twilio reaches this channel's inbound endpoint, exactly as configured
    /// in Twilio (`https://herald.example.com/inbound/sms`). Twilio signs the URL it calls,
    /// and a proxy in between changes the one Herald sees. Delivery reports are asked for at
    /// this URL too.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The API's address; tests point it at a local stand-in.
    #[serde(default = "TwilioSmsConfig::default_api_base")]
    pub api_base: String,
    #[serde(default = "TwilioSmsConfig::default_timeout")]
    pub timeout: Duration,
}

impl TwilioSmsConfig {
    fn default_api_base() -> String {
        "https://api.twilio.com".to_owned()
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
}
