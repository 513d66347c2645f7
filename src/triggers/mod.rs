//! What starts runs: webhooks, cron schedules, inbound messages and events.

pub mod cron;
pub mod scheduler;
pub mod webhook_auth;
