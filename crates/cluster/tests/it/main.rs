//! The cluster against the real services: NATS JetStream (`KERNELIZE_TEST_NATS_URL`,
//! default 127.0.0.1:4222), PostgreSQL (`KERNELIZE_TEST_PG`) and an S3-compatible server
//! (moto, started by the tests). Every test makes its own cluster name, so its schema,
//! stream and subjects are its own.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod cluster;
mod support;
