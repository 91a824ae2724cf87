//! Kernelize past one machine, on engines operators already run: writes go through a NATS
//! JetStream stream, each shard's owner (a lease with a fencing epoch in PostgreSQL) seals
//! them into segments in S3-compatible storage and commits each seal with one PostgreSQL
//! update; replicas answer queries from the sealed segments plus the log's tail, and the
//! node that receives a query scatters it to the shards and merges one top-k.
//!
//! No HTTP here: the server routes its collection API to a [`Node`] when started with
//! `--cluster cluster.toml`.

pub mod config;
mod error;
pub mod log;
pub mod meta;
mod node;
mod shard;
pub mod wire;

pub use config::{ChangesConfig, ClusterConfig, ConfigError};
pub use error::{Error, Result};
pub use node::{
    Change, ChangePage, ClusterCollection, ClusterHit, ClusterPage, ClusterQuery, MAX_CHANGES, Node, NodeStats,
    ShardPlacement, WriteAck, check, destroy, gc, rank, shard_of,
};
pub use wire::Consistency;
