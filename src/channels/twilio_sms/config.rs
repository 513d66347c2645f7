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
    /// this URL too, and a forwarded call reports there how it went.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The phone that rings when someone calls the number, in E.164 (`+15558675310`), when
    /// the number's "A call comes in" webhook is this channel's inbound URL: Herald forwards
    /// the call there, and a call nobody answers is `call.missed`. Without it, such a call is
    /// refused with a busy tone and is `call.missed` at once.
    #[serde(default)]
    pub forward_calls_to: Option<String>,
    /// How long a forwarded call rings before it counts as missed (5s to 600s). Keep it
    /// shorter than the time the phone's voicemail takes to answer, or voicemail takes every
    /// call and none is missed.
    #[serde(default = "TwilioSmsConfig::default_ring_timeout")]
    pub ring_timeout: Duration,
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
    fn default_ring_timeout() -> Duration {
        Duration::from_secs(20)
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
}
