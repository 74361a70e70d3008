//! Placeholder: filled in by issue 7.

fn main() {}
