//! What starts runs: webhooks, cron schedules, inbound messages and events.

pub mod cron;
pub mod webhook_auth;
