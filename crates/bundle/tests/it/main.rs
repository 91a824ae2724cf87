//! Integration tests of kernelize-bundle: the documents as a server signs them and a
//! device checks them, downloads checked chunk by chunk, deltas between real kernels.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod chunks;
mod delta;
mod documents;
mod support;
