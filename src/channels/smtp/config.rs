//! The `smtp` provider's settings.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::definitions::model::common::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// The port; by default 587 for `starttls`, 465 for `tls` and 25 for `none`.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// `starttls` (port 587), `tls` (port 465) or `none` (local relays and tests only).
    #[serde(default)]
    pub tls: SmtpTls,
    /// The default sender, such as "Complete Car Loans <hello@example.com>".
    pub from: String,
    #[serde(default = "SmtpConfig::default_timeout")]
    pub timeout: Duration,
}

impl SmtpConfig {
    /// The configured port, or the usual one for the TLS mode.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(30)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    #[default]
    Starttls,
    Tls,
    None,
}
