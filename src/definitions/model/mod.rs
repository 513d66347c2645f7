//! The definition model: serde types, from which the JSON Schemas in `schemas/` are generated.

pub mod alert;
pub mod alerting;
pub mod audience;
pub mod campaign;
pub mod common;
mod compact;
pub mod config;
pub mod conversation;
pub mod step;
pub mod test;
pub mod trigger;
pub mod workflow;

pub use common::{Duration, Expr, Template};
pub use config::ConfigDef;
pub use step::{Action, RawStep, Step};
pub use test::TestDef;
pub use trigger::Trigger;
pub use workflow::WorkflowDef;
