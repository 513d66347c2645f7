//! Herald: a declarative workflow engine. Operators describe automation in YAML; Herald
//! validates it, runs it durably and reloads it live.

pub mod definitions;
pub mod templates;
pub mod triggers;
pub mod cli;
pub mod channels;
pub mod tls;
pub mod store;
pub mod engine;
pub mod server;
pub mod reload;
