//! The `resend` provider's settings.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::definitions::model::common::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendConfig {
    /// The API key (`re_…`), usually `${env:RESEND_API_KEY}`. A sending-only key is enough.
    pub api_key: String,
    /// The default sender, such as "Talk-To-My-Lawyer <hello@example.com>", on a domain
    /// verified in Resend.
    pub from: String,
    /// The webhook's signing secret (`whsec_…`): Resend signs its events with it (Standard
    /// Webhooks), and events are refused without it.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// The API's address; tests point it at a local stand-in.
    #[serde(default = "ResendConfig::default_api_base")]
    pub api_base: String,
    #[serde(default = "ResendConfig::default_timeout")]
    pub timeout: Duration,
}

impl ResendConfig {
    fn default_api_base() -> String {
        "https://api.resend.com".to_owned()
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
}
