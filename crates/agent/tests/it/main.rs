//! The agent against a real server and against a hostile one, as real processes.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly on unexpected errors")]

mod common;
mod console;
mod e2e;
mod hostile;
mod mqtt;
mod resume;
