//! Placeholder: replaced by the reload benchmark.
fn main() {}
