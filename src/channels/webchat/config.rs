//! The `webchat` provider's settings: a chat on the operator's own web pages.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::definitions::model::common::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebchatConfig {
    /// The sites whose pages may use the chat, as a browser names them in `Origin`: a scheme
    /// and a host, with a port when it is not the default (`https://www.example.com`,
    /// `http://localhost:8000`). `https://*.example.com` takes every subdomain of
    /// example.com; `*` takes any site (for trying it out only). A browser request from any
    /// other page is refused with 403.
    #[schemars(length(min = 1))]
    pub allowed_origins: Vec<String>,
    /// The key that signs visitors' session tokens (HMAC-SHA256): at least 32 characters,
    /// usually `${env:WEBCHAT_SECRET}` (`openssl rand -base64 32` makes one). Anyone who
    /// knows it can speak as any visitor.
    pub secret: String,
    /// The key this chat signed with before `secret`, while it is being replaced: tokens it
    /// signed are still accepted, and renewed with `secret`. Remove it once
    /// `session_lifetime` has passed since the change.
    #[serde(default)]
    pub previous_secret: Option<String>,
    /// How long a visitor stays the same visitor without coming back. The widget renews its
    /// session on every page view, so this is counted from the last visit; after it, the
    /// visitor starts afresh as someone new.
    #[serde(default = "WebchatConfig::default_session_lifetime")]
    pub session_lifetime: Duration,
    /// The longest message a visitor may send, in characters. A longer one is refused with
    /// 413 and nothing is recorded.
    #[serde(default = "WebchatConfig::default_max_message_chars")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_message_chars: u32,
    /// How many reply streams (browser tabs) one visitor may have open at once on one Herald
    /// process; one more is refused with 429.
    #[serde(default = "WebchatConfig::default_max_streams_per_visitor")]
    #[schemars(range(min = 1, max = 100))]
    pub max_streams_per_visitor: u32,
}

impl WebchatConfig {
    fn default_session_lifetime() -> Duration {
        Duration::from_secs(30 * 86_400)
    }
    fn default_max_message_chars() -> u32 {
        2_000
    }
    fn default_max_streams_per_visitor() -> u32 {
        5
    }
}
