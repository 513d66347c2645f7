//! Placeholder: replaced by the timers benchmark.
fn main() {}
