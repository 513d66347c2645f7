//! The `whatsapp` provider's settings (Meta's WhatsApp Cloud API).

use schemars::JsonSchema;
use serde::Deserialize;

use crate::definitions::model::common::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhatsappConfig {
    /// A system user's access token with `whatsapp_business_messaging`, usually
    /// `${env:WHATSAPP_ACCESS_TOKEN}`.
    pub access_token: String,
    /// The id of the business phone number messages come from (not the number itself).
    pub phone_number_id: String,
    /// The app's secret: Meta signs every webhook request with it (`X-Hub-Signature-256`), and
    /// requests are refused without it.
    #[serde(default)]
    pub app_secret: Option<String>,
    /// The token typed into the app's webhook settings; Meta's verification request must
    /// carry it.
    #[serde(default)]
    pub verify_token: Option<String>,
    /// The Graph API's address; tests point it at a local stand-in.
    #[serde(default = "WhatsappConfig::default_api_base")]
    pub api_base: String,
    /// The Graph API version in request paths.
    #[serde(default = "WhatsappConfig::default_api_version")]
    pub api_version: String,
    #[serde(default = "WhatsappConfig::default_timeout")]
    pub timeout: Duration,
}

impl WhatsappConfig {
    fn default_api_base() -> String {
        "https://graph.facebook.com".to_owned()
    }
    fn default_api_version() -> String {
        "v21.0".to_owned()
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
}
