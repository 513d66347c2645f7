//! The `telegram` provider's settings.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::definitions::model::common::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// The bot's token from @BotFather (`123456:ABC-DEF…`), usually `${env:TELEGRAM_BOT_TOKEN}`.
    pub bot_token: String,
    /// The `secret_token` given to `setWebhook`: Telegram sends it in
    /// `X-Telegram-Bot-Api-Secret-Token` with every update, and updates without it are refused.
    /// 1 to 256 characters of `A-Z`, `a-z`, `0-9`, `_` and `-`.
    #[serde(default)]
    pub secret_token: Option<String>,
    /// How the text is formatted: `HTML` or `MarkdownV2`. Plain text when unset.
    #[serde(default)]
    pub parse_mode: Option<TelegramParseMode>,
    /// The Bot API's address; tests point it at a local stand-in.
    #[serde(default = "TelegramConfig::default_api_base")]
    pub api_base: String,
    #[serde(default = "TelegramConfig::default_timeout")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum TelegramParseMode {
    #[serde(rename = "HTML")]
    Html,
    MarkdownV2,
}

impl TelegramParseMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TelegramParseMode::Html => "HTML",
            TelegramParseMode::MarkdownV2 => "MarkdownV2",
        }
    }
}

impl TelegramConfig {
    fn default_api_base() -> String {
        "https://api.telegram.org".to_owned()
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
}
