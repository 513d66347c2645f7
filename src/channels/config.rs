//! A channel's settings in `herald.yaml`, by provider. Each provider's own settings type sits
//! in its folder, beside the code that uses it; this enum names them for the schema.

use schemars::JsonSchema;
use serde::Deserialize;

use super::mailgun::config::MailgunConfig;
use super::resend::config::ResendConfig;
use super::smtp::config::SmtpConfig;
use super::telegram::config::TelegramConfig;
use super::twilio_sms::config::TwilioSmsConfig;
use super::webchat::config::WebchatConfig;
use super::webhook::config::WebhookChannelConfig;
use super::whatsapp::config::WhatsappConfig;

/// A delivery channel, by provider.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(tag = "provider", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelConfig {
    /// Records the message and prints it to the log. Needs no setup.
    Log {},
    /// E-mail over SMTP.
    Smtp(SmtpConfig),
    /// An HTTP POST of the message as JSON.
    Webhook(WebhookChannelConfig),
    /// Text messages through Twilio, and the replies and delivery reports Twilio sends back.
    TwilioSms(TwilioSmsConfig),
    /// Messages from a Telegram bot, and the updates Telegram sends to it.
    Telegram(TelegramConfig),
    /// Text messages through Meta's WhatsApp Cloud API, and what Meta sends back.
    Whatsapp(WhatsappConfig),
    /// E-mail through Mailgun's HTTP API, and the events Mailgun reports back.
    Mailgun(MailgunConfig),
    /// E-mail through Resend's API, and the events Resend reports back.
    Resend(ResendConfig),
    /// A chat on your own web pages: one `<script>` tag adds it, visitors' messages come to
    /// Herald and replies stream back to the browser.
    Webchat(WebchatConfig),
}

impl ChannelConfig {
    pub fn provider(&self) -> &'static str {
        match self {
            ChannelConfig::Log {} => "log",
            ChannelConfig::Smtp(_) => "smtp",
            ChannelConfig::Webhook(_) => "webhook",
            ChannelConfig::TwilioSms(_) => "twilio_sms",
            ChannelConfig::Telegram(_) => "telegram",
            ChannelConfig::Whatsapp(_) => "whatsapp",
            ChannelConfig::Mailgun(_) => "mailgun",
            ChannelConfig::Resend(_) => "resend",
            ChannelConfig::Webchat(_) => "webchat",
        }
    }
}
