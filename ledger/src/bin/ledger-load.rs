//! Load generator for the devnet ledger (filled in below).
fn main() {}
