//! What starts runs, read and decided without the engine: cron expressions, webhook
//! signatures, and where an inbound message goes. The engine (its scheduler, its inbound
//! routing) and the server call these; nothing here imports them.

pub(crate) mod conversation;
pub mod cron;
pub(crate) mod inbound;
pub(crate) mod webhook;
pub mod webhook_auth;
