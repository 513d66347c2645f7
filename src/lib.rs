//! Herald: a declarative workflow engine. Operators describe automation in YAML; Herald
//! validates it, runs it durably and reloads it live.

pub mod alerts;
pub mod channels;
pub mod cli;
pub mod contact_import;
pub mod definitions;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod harness;
pub mod reload;
pub mod server;
pub mod store;
pub(crate) mod sync;
pub mod templates;
pub mod testing;
pub mod tls;
pub mod triggers;
