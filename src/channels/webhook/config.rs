//! The `webhook` provider's settings.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::definitions::model::common::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookChannelConfig {
    /// Where messages are POSTed.
    pub url: String,
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    #[serde(default = "WebhookChannelConfig::default_timeout")]
    pub timeout: Duration,
}

impl WebhookChannelConfig {
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
}
