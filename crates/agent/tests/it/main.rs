//! The agent against a real server and against a hostile one, as real processes.

mod common;
mod e2e;
mod hostile;
mod mqtt;
mod resume;
