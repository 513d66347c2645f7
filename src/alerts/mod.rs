//! Alerts at run time: what an alert's source makes of the events in its window
//! ([`aggregate`]), and how each evaluation moves an alert instance between inactive, pending,
//! firing and resolved ([`state`]). Both are functions of their inputs and the time they are
//! given, so `herald test` can drive them over virtual time as `herald serve` does over real
//! time.

pub mod aggregate;
pub mod notify;
pub mod probe;
pub mod render;
pub mod round;
pub mod silence;
pub mod state;
pub mod tick;

pub use aggregate::{Event, Group, evaluate};
pub use state::{AlertState, Phase, Transition, step};
