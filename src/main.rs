//! `ixn-server` binary entry point.

fn main() {}
