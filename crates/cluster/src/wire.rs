//! What nodes say to each other over NATS request/reply: a request to one shard
//! (`kz.q.<incarnation>.<shard>`, answered by whichever replica of the queue group gets
//! it) and its reply, as JSON.

use kernelize_index::bm25::Bm25Stats;
use kernelize_index::search::Mode;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Subject of a shard's requests.
pub fn query_subject(cid: &str, shard: u32) -> String {
    format!("kz.q.{cid}.{shard}")
}

/// Subject on which an owner announces a commit (payload: the checkpoint, decimal).
pub fn commit_subject(cid: &str, shard: u32) -> String {
    format!("kz.c.{cid}.{shard}")
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Whatever the replica has applied.
    #[default]
    Eventual,
    /// At least the writes up to the request's `min_seq` (a write token).
    Session,
    /// Every write acknowledged before the read began.
    Strong,
}

/// A request to one shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardRequest {
    /// Collection incarnation (the replica checks it serves this one).
    pub cid: String,
    /// What to do.
    pub op: ShardOp,
    /// Consistency level.
    pub consistency: Consistency,
    /// With `Session`: the write token to wait for.
    pub min_seq: u64,
    /// Give up waiting for freshness after this long.
    pub wait_ms: u64,
}

/// A shard operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ShardOp {
    /// Nearest vectors or BM25 (one list; hybrid is two requests' lists fused by the caller).
    Search(WireQuery),
    /// BM25 statistics of a text's terms.
    Bm25Stats {
        /// The query text.
        text: String,
    },
    /// One record.
    Get {
        /// Its id.
        id: String,
    },
    /// Live records and applied position.
    Count,
    /// A page in key order after `after`.
    Scan {
        /// Exclusive start (an id).
        after: Option<String>,
        /// Records wanted.
        limit: usize,
        /// Filter (the filter language's JSON form).
        filter: Option<serde_json::Value>,
    },
}

/// A query as shards take it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireQuery {
    /// Query vector.
    pub vector: Option<Vec<f32>>,
    /// Query text.
    pub text: Option<String>,
    /// Results wanted from this shard.
    pub k: usize,
    /// Beam width.
    pub ef: Option<usize>,
    /// Filter (the filter language's JSON form).
    pub filter: Option<serde_json::Value>,
    /// `Vector` or `Keyword`.
    pub mode: Mode,
    /// Exact search.
    pub exact: bool,
    /// Collection-wide BM25 statistics (keyword).
    pub bm25: Option<WireStats>,
    /// Send the hits' vectors back (otherwise they come back empty: smaller replies).
    #[serde(default)]
    pub with_vectors: bool,
}

/// BM25 statistics on the wire.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WireStats {
    /// Documents.
    pub docs: u64,
    /// Tokens.
    pub tokens: u64,
    /// Document frequency per term.
    pub df: HashMap<String, u64>,
}

impl From<Bm25Stats> for WireStats {
    fn from(s: Bm25Stats) -> WireStats {
        WireStats { docs: s.docs, tokens: s.tokens, df: s.df }
    }
}

impl From<WireStats> for Bm25Stats {
    fn from(s: WireStats) -> Bm25Stats {
        Bm25Stats { docs: s.docs, tokens: s.tokens, df: s.df }
    }
}

impl WireStats {
    /// Adds another shard's statistics.
    pub fn add(&mut self, o: &WireStats) {
        self.docs += o.docs;
        self.tokens += o.tokens;
        for (t, n) in &o.df {
            *self.df.entry(t.clone()).or_default() += n;
        }
    }
}

/// A record on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRecord {
    /// Id.
    pub id: String,
    /// Vector (empty when a search did not ask for vectors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vector: Vec<f32>,
    /// Text.
    pub text: Option<String>,
    /// Metadata.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl From<&kernelize_store::Record> for WireRecord {
    fn from(r: &kernelize_store::Record) -> WireRecord {
        WireRecord { id: r.id.clone(), vector: r.vector.clone(), text: r.text.clone(), metadata: r.metadata.clone() }
    }
}

/// A hit on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireHit {
    /// Score, as the single-node engine reports it (similarity, distance, BM25).
    pub score: f32,
    /// The record.
    pub record: WireRecord,
}

/// A shard's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum ShardReply {
    /// Search results, best first.
    Hits {
        /// Hits.
        hits: Vec<WireHit>,
    },
    /// BM25 statistics.
    Stats {
        /// Statistics.
        stats: WireStats,
    },
    /// A record, or none.
    Record {
        /// The record.
        record: Option<WireRecord>,
    },
    /// Live records.
    Count {
        /// Live records.
        records: u64,
        /// Log position applied.
        applied: u64,
    },
    /// A page.
    Page {
        /// Records in key order.
        records: Vec<WireRecord>,
        /// The last id examined when the page stopped early (more may follow).
        last: Option<String>,
        /// Whether the shard has more after `last`.
        more: bool,
    },
    /// Failed.
    Error {
        /// `invalid`, `unknown_field`, `not_serving`, `timeout`, `internal`.
        code: String,
        /// What happened.
        message: String,
    },
}
