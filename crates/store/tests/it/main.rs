//! Integration tests of the durable engine (one test binary).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly on unexpected errors")]

mod backup;
mod basic;
mod crash;
mod encryption;
mod fault;
mod formats;

use kernelize_store::{CollectionConfig, Metric, Record};

/// A record whose vector encodes `a` and `b` exactly.
pub fn rec(id: &str, a: f32, b: f32) -> Record {
    Record { id: id.to_owned(), vector: vec![a, b, 0.5], text: Some(format!("text of {id}")), metadata: None }
}

/// A 3-dimensional cosine collection config.
pub fn cfg() -> CollectionConfig {
    CollectionConfig::new(3, Metric::Cosine)
}
