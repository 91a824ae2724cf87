//! The integration tests of `kernelize-programs`, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod local;
mod optimize;
mod resilience;
mod saved;
