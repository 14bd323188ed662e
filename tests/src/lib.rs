//! End-to-end scenarios live in `tests/tests/*.rs`; this library is intentionally empty.
