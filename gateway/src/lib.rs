//! The hospital gateway.
