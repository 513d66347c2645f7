//! The `mailgun` provider's settings.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::definitions::model::common::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MailgunConfig {
    /// The private API key, usually `${env:MAILGUN_API_KEY}`.
    pub api_key: String,
    /// The sending domain, as set up in Mailgun (`mg.example.com`).
    pub domain: String,
    /// The default sender, such as "Complete Car Loans <hello@mg.example.com>".
    pub from: String,
    /// The HTTP webhook signing key (Sending > Webhooks): Mailgun signs its event webhooks
    /// with it, and events are refused without it.
    #[serde(default)]
    pub webhook_signing_key: Option<String>,
    /// The API's address: `https://api.mailgun.net`, or `https://api.eu.mailgun.net` for a
    /// domain in the EU region.
    #[serde(default = "MailgunConfig::default_api_base")]
    pub api_base: String,
    #[serde(default = "MailgunConfig::default_timeout")]
    pub timeout: Duration,
}

impl MailgunConfig {
    fn default_api_base() -> String {
        "https://api.mailgun.net".to_owned()
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
}
