//! Server integration tests over real HTTP, against both metadata backends (SQLite in
//! the data directory and the PostgreSQL at 127.0.0.1:5432).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly on unexpected errors")]

mod browser;
mod common;
mod console;
mod console_programs;
mod encryption;
mod fleet;
mod fleet_notify;
mod functional;
mod hardening;
mod health;
mod kernels;
mod map;
mod matrix;
mod matrix_fleet;
mod matrix_programs;
mod matrix_sso;
mod media;
mod openai_client;
mod programs;
mod quota;
mod security;
mod sso;
