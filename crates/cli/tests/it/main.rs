//! Integration tests of the `kernelize` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly on unexpected errors")]

mod cli;
mod cluster;
mod crash;
mod deploy;
mod encryption;
mod fleet;
mod kernel;
mod media;
mod models;
mod runbooks;
mod serve;

use std::path::Path;
use std::process::{Command, Output};

/// Runs `kernelize --data-dir DIR args…`.
pub fn kz(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kernelize"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("kernelize runs")
}

/// stdout of a run that must succeed.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = kz(dir, args);
    assert!(out.status.success(), "kernelize {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
