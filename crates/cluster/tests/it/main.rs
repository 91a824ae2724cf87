//! The cluster against the real services: NATS JetStream (`KERNELIZE_TEST_NATS_URL`,
//! default 127.0.0.1:4222), PostgreSQL (`KERNELIZE_TEST_PG`) and an S3-compatible server
//! (moto, started by the tests). Every test makes its own cluster name, so its schema,
//! stream and subjects are its own. The fault tests start private copies of the three
//! (`procs`: `nats-server`, PostgreSQL's `postgres`, `s3s-fs`) that they kill and restart.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod cluster;
mod faults;
mod procs;
mod support;
