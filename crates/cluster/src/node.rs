//! A cluster node: membership, shard placement and leases, the write path, and reads
//! scattered to shards and merged.
//!
//! Every `heartbeat` a node marks itself alive in PostgreSQL and runs one **round**: for
//! each shard of each collection it ranks the live members by rendezvous hash of (node,
//! collection, shard). The first `query_replicas` host a replica; the first also takes the
//! shard's lease when it is free or ran out, renews it while it stays first, seals the
//! shard when enough was written, and hands the lease over (seal, then release) when a
//! node that ranks higher joins. A node that dies stops renewing; after the lease runs out
//! the next-ranked node — usually already a warm replica — takes it with a higher epoch.

use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::meta::{CollectionRow, Meta};
use crate::shard::{Replica, key_of};
use crate::wire::{self, Consistency, ShardOp, ShardReply, ShardRequest, WireHit, WireQuery, WireRecord, WireStats};
use kernelize_blobs::BlobStore;
use kernelize_index::filter::Filter;
use kernelize_index::search::{MAX_K, Mode, Query, RRF_K};
use kernelize_store::{CollectionConfig, Database, Durability, Metric, Op, Options, key_hash};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Counters a node keeps (for metrics, tests and `bench cluster`).
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Writes applied to local replicas.
    pub applied: AtomicU64,
    /// Shard commits made by this node.
    pub commits: AtomicU64,
    /// Replicas (re)built from a committed state in the object store.
    pub refreshes: AtomicU64,
    /// Leases taken.
    pub leases_taken: AtomicU64,
    /// Leases lost (taken by another node) or handed over.
    pub leases_lost: AtomicU64,
}

type ShardKey = (String, u32);

pub(crate) struct Inner {
    pub cfg: ClusterConfig,
    pub meta: Meta,
    pub log: Log,
    pub blobs: BlobStore,
    pub db: Arc<Database>,
    pub stats: NodeStats,
    generation: AtomicU64,
    collections: RwLock<HashMap<String, CollectionRow>>,
    members: RwLock<Vec<String>>,
    replicas: Mutex<HashMap<ShardKey, Arc<Replica>>>,
    building: Mutex<HashSet<ShardKey>>,
    /// Leases held: the epoch of each.
    owned: Mutex<HashMap<ShardKey, i64>>,
    sealing: Mutex<HashSet<ShardKey>>,
    stopping: AtomicBool,
    /// This process's claim on the node id (random per start).
    instance: String,
    /// Replicas the last round wanted this node to host, when it ended, or why it failed.
    last_round: Mutex<Result<(usize, std::time::Instant), String>>,
}

impl Inner {
    pub fn id(&self) -> &str {
        self.cfg.node()
    }

    pub fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst)
    }
}

/// A running node.
pub struct Node {
    inner: Arc<Inner>,
    rounds: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.rounds.abort();
    }
}

/// A write acknowledged by the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteAck {
    /// The write token: the highest log sequence number of the write's messages. A read
    /// with `Session` consistency and this token sees the write.
    pub token: u64,
    /// Log messages the write became.
    pub messages: usize,
}

/// A search as the cluster takes it.
#[derive(Debug, Clone, Default)]
pub struct ClusterQuery {
    /// The search, as the single-node engine takes it (its `plan` and `bm25` are the
    /// cluster's to set: the planner runs per shard, statistics are summed over shards).
    pub query: Query,
    /// Freshness.
    pub consistency: Consistency,
    /// The write token for `Session`.
    pub token: u64,
    /// Return the hits' vectors.
    pub with_vectors: bool,
}

/// A merged search result.
#[derive(Debug, Clone)]
pub struct ClusterHit {
    /// Score as the single-node engine reports it.
    pub score: f32,
    /// The record.
    pub record: WireRecord,
}

/// A collection as described by the cluster.
#[derive(Debug, Clone)]
pub struct ClusterCollection {
    /// Name.
    pub name: String,
    /// Configuration.
    pub config: CollectionConfig,
    /// Virtual shards.
    pub shards: u32,
    /// Live records (summed over shards, eventual).
    pub records: u64,
}

/// A page of records in key order.
#[derive(Debug, Clone)]
pub struct ClusterPage {
    /// Records.
    pub records: Vec<WireRecord>,
    /// Where the next page starts.
    pub next_after: Option<String>,
}

/// One committed change of a collection (change data capture).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    /// Where it is in the change stream: read on with `after` set to it.
    pub position: u64,
    /// `upsert` or `delete`.
    pub op: &'static str,
    /// The record's id.
    pub id: String,
    /// The record written (upserts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<WireRecord>,
}

/// Changes in commit order, and where to read on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChangePage {
    /// The changes (whole log messages: a page may pass its limit by one message's worth).
    pub changes: Vec<Change>,
    /// The position of the last change returned (`after` when there were none).
    pub next: u64,
}

/// Most writes one page of changes asks for.
pub const MAX_CHANGES: usize = 10_000;

/// One shard's placement, for operators (`GET /v1/cluster`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardPlacement {
    /// Collection.
    pub collection: String,
    /// Shard number.
    pub shard: u32,
    /// Lease holder.
    pub owner: Option<String>,
    /// Fencing epoch.
    pub epoch: i64,
    /// Checkpoint (log sequence number sealed).
    pub checkpoint: u64,
    /// Sealed segments.
    pub segments: usize,
    /// Commits so far.
    pub commits: i64,
}

/// Takes a cluster down for good: deletes its stream and its PostgreSQL schema (sealed
/// segments stay in the object store). Every node must be stopped first.
pub async fn destroy(cfg: &ClusterConfig) -> Result<()> {
    let meta = Meta::connect(&cfg.database_url, &cfg.name).await?;
    Log::connect(cfg).await?.delete_stream().await?;
    meta.drop_schema(&cfg.name).await
}

/// Deletes the files in the cluster's object store that no committed shard state names
/// (segments and indexes replaced by later seals, compacted away, or of dropped
/// collections) and that are older than `min_age`, which must exceed three times
/// `blob_options.refresh_after_secs` (so a seal that has not committed yet keeps its
/// uploads). The object store must be the cluster's own (bucket or prefix).
pub async fn gc(cfg: &ClusterConfig, min_age: Duration) -> Result<kernelize_blobs::GcReport> {
    let floor = cfg.blob_options.refresh_after() * 3;
    if min_age <= floor {
        return Err(Error::Invalid(format!(
            "the minimum age must exceed 3 × blob_options.refresh_after_secs ({} s), got {} s",
            floor.as_secs(),
            min_age.as_secs()
        )));
    }
    let meta = Meta::connect(&cfg.database_url, &cfg.name).await?;
    let blobs = BlobStore::open_with(&cfg.blobs, cfg.blob_options.clone())?;
    let mut referenced = HashSet::new();
    for hex in meta.referenced().await? {
        let d = hex.parse().map_err(|_| Error::Internal(format!("bad digest {hex:?} in a shard state")))?;
        referenced.insert(d);
    }
    Ok(blobs.gc(&referenced, min_age).await?)
}

/// Checks a configuration against the services it names: PostgreSQL (and the schema),
/// NATS with JetStream (and the stream), the object store. One line per service.
pub async fn check(cfg: &ClusterConfig) -> Vec<(&'static str, Result<String>)> {
    let pg = Meta::connect(&cfg.database_url, &cfg.name)
        .await
        .map(|_| format!("{} (schema kzc_{})", crate::meta::redact(&cfg.database_url), cfg.name));
    let nats = Log::connect(cfg)
        .await
        .map(|l| format!("{} (stream {}, max message {} bytes)", cfg.nats_url, cfg.stream_name(), l.max_payload()));
    let blobs = match BlobStore::open_with(&cfg.blobs, cfg.blob_options.clone()) {
        Ok(b) => b.check().await.map(|()| format!("{:?}", cfg.blobs)).map_err(Error::from),
        Err(e) => Err(e.into()),
    };
    vec![("postgresql", pg), ("nats", nats), ("object store", blobs)]
}

/// Rendezvous ranking of `members` for a shard: highest hash first.
pub fn rank<'a>(members: &'a [String], cid: &str, shard: u32) -> Vec<&'a String> {
    let mut v: Vec<(u64, &String)> = members
        .iter()
        .map(|m| (xxhash_rust::xxh3::xxh3_64(format!("{m}\u{0}{cid}\u{0}{shard}").as_bytes()), m))
        .collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    v.into_iter().map(|(_, m)| m).collect()
}

/// The shard of an id.
pub fn shard_of(id: &str, shards: u32) -> u32 {
    (key_hash(id) % u64::from(shards.max(1))) as u32
}

impl Node {
    /// Joins the cluster: connects to PostgreSQL, NATS and the object store, clears the
    /// local cache (replicas are rebuilt from committed state) and starts the rounds.
    pub async fn start(cfg: ClusterConfig) -> Result<Node> {
        let meta = Meta::connect(&cfg.database_url, &cfg.name).await?;
        let log = Log::connect(&cfg).await?;
        let blobs = BlobStore::open_with(&cfg.blobs, cfg.blob_options.clone())?;
        let dir = cfg.cache_dir.join("replicas");
        for d in [&dir, &cfg.cache_dir.join("blobs")] {
            fs_err::create_dir_all(d).map_err(|e| Error::Internal(e.to_string()))?;
        }
        let opts = Options { durability: Durability::Buffered, ..Options::default() };
        let db = Arc::new(
            tokio::task::spawn_blocking(move || Database::open(&dir, opts))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??,
        );
        for name in db.list() {
            db.drop_collection(&name)?;
        }
        let inner = Arc::new(Inner {
            cfg,
            meta,
            log,
            blobs,
            db,
            stats: NodeStats::default(),
            generation: AtomicU64::new(1),
            collections: RwLock::new(HashMap::new()),
            members: RwLock::new(Vec::new()),
            replicas: Mutex::new(HashMap::new()),
            building: Mutex::new(HashSet::new()),
            owned: Mutex::new(HashMap::new()),
            sealing: Mutex::new(HashSet::new()),
            stopping: AtomicBool::new(false),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            last_round: Mutex::new(Err("no round yet".into())),
        });
        // A process with this id that died just now holds it until its heartbeat goes stale.
        let window = inner.cfg.timing.heartbeat() * 3;
        let deadline = tokio::time::Instant::now() + window + inner.cfg.timing.heartbeat();
        loop {
            match inner.meta.heartbeat(inner.id(), &inner.instance, window).await {
                Err(Error::AlreadyExists(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => break other?,
            }
        }
        let weak = Arc::downgrade(&inner);
        let every = inner.cfg.timing.heartbeat();
        let rounds = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.stopping.load(Ordering::SeqCst) {
                    return;
                }
                if let Err(e) = round(&inner).await {
                    tracing::warn!(node = inner.id(), error = %e, "cluster round failed; retrying");
                    *inner.last_round.lock() = Err(e.to_string());
                }
            }
        });
        Ok(Node { inner, rounds })
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        self.inner.id()
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.cfg
    }

    /// Counters.
    pub fn stats(&self) -> &NodeStats {
        &self.inner.stats
    }

    /// Runs one round now (tests; the node runs them on its own every heartbeat).
    pub async fn round(&self) -> Result<()> {
        round(&self.inner).await
    }

    /// Leaves cleanly: seals and releases every lease, leaves the members.
    pub async fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::SeqCst);
        self.rounds.abort();
        let owned: Vec<(ShardKey, i64)> = inner.owned.lock().drain().collect();
        for ((cid, shard), epoch) in owned {
            let r = inner.replicas.lock().get(&(cid.clone(), shard)).cloned();
            if let Some(r) = r
                && let Err(e) = r.seal(inner, epoch).await
            {
                tracing::warn!(shard, error = %e, "seal at shutdown failed (the next owner replays the log)");
            }
            inner.meta.release(&cid, shard, inner.id(), epoch).await?;
        }
        inner.meta.leave(inner.id()).await?;
        inner.replicas.lock().clear();
        Ok(())
    }

    /// Stops at once as a crash would: no seal, no release, no goodbye (its leases run
    /// out; its replicas stop answering). For fault tests of in-process nodes.
    pub fn abort(&self) {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::SeqCst);
        self.rounds.abort();
        inner.owned.lock().clear();
        inner.replicas.lock().clear();
    }

    /// Whether this node can serve its part (for `/readyz`): connected to NATS, its last
    /// round (heartbeat, placement, leases) succeeded within three heartbeats, and every
    /// replica that round assigned to it is built. `Err` says what is missing.
    pub fn readiness(&self) -> Result<String, String> {
        let inner = &self.inner;
        inner.log.connected().map_err(|e| e.to_string())?;
        let (wanted, at) = inner.last_round.lock().clone().map_err(|e| format!("last cluster round failed: {e}"))?;
        if at.elapsed() > inner.cfg.timing.heartbeat() * 3 {
            return Err(format!("no cluster round for {} ms", at.elapsed().as_millis()));
        }
        let hosted = inner.replicas.lock().len();
        if hosted < wanted {
            return Err(format!("{hosted} of {wanted} replicas built"));
        }
        Ok(format!("ok: {hosted} replicas, {} leases", inner.owned.lock().len()))
    }

    /// Shards this node holds the lease of.
    pub fn owned(&self) -> Vec<(String, u32)> {
        let cids: HashMap<String, String> =
            self.inner.collections.read().values().map(|c| (c.cid.clone(), c.name.clone())).collect();
        let mut v: Vec<(String, u32)> = self
            .inner
            .owned
            .lock()
            .keys()
            .map(|(cid, s)| (cids.get(cid).cloned().unwrap_or_else(|| cid.clone()), *s))
            .collect();
        v.sort();
        v
    }

    /// Shards this node hosts a replica of, with the log position applied.
    pub fn hosted(&self) -> Vec<(String, u32, u64)> {
        let mut v: Vec<_> =
            self.inner.replicas.lock().values().map(|r| (r.collection.name.clone(), r.shard, r.applied())).collect();
        v.sort();
        v
    }

    /// Live members, as of the last round.
    pub fn members(&self) -> Vec<String> {
        self.inner.members.read().clone()
    }

    async fn collection(&self, name: &str) -> Result<CollectionRow> {
        if let Some(c) = self.inner.collections.read().get(name) {
            return Ok(c.clone());
        }
        refresh_collections(&self.inner).await?;
        self.inner.collections.read().get(name).cloned().ok_or_else(|| Error::NotFound(format!("collection {name:?}")))
    }

    /// A collection's configuration.
    pub async fn collection_config(&self, name: &str) -> Result<CollectionConfig> {
        Ok(self.collection(name).await?.config)
    }

    /// Creates a collection with the configured number of shards.
    pub async fn create_collection(&self, name: &str, config: CollectionConfig) -> Result<ClusterCollection> {
        kernelize_store::validate_name(name).map_err(|e| Error::Invalid(e.to_string()))?;
        if config.dim == 0 || config.dim > kernelize_store::MAX_DIM {
            return Err(Error::Invalid(format!("dim must be 1..={}, got {}", kernelize_store::MAX_DIM, config.dim)));
        }
        let cid = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
        let row = CollectionRow { name: name.to_owned(), cid, config, shards: self.inner.cfg.shards };
        self.inner.meta.create_collection(&row).await?;
        self.inner.collections.write().insert(name.to_owned(), row.clone());
        Ok(ClusterCollection { name: row.name, config: row.config, shards: row.shards, records: 0 })
    }

    /// Drops a collection: its rows, then its log messages; replicas go at each node's
    /// next round (sealed segments stay in the object store until garbage collection).
    pub async fn drop_collection(&self, name: &str) -> Result<()> {
        let c = self.inner.meta.drop_collection(name).await?;
        self.inner.collections.write().remove(name);
        if let Err(e) = self.inner.log.purge_collection(&c.cid).await {
            tracing::warn!(collection = name, error = %e, "log messages of a dropped collection not purged");
        }
        Ok(())
    }

    /// Every collection.
    pub async fn list(&self) -> Result<Vec<CollectionRow>> {
        refresh_collections(&self.inner).await?;
        let mut v: Vec<CollectionRow> = self.inner.collections.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// A collection with its record count.
    pub async fn describe(&self, name: &str, consistency: Consistency) -> Result<ClusterCollection> {
        let c = self.collection(name).await?;
        let replies = self.scatter(&c, |_| ShardOp::Count, consistency, 0).await?;
        let mut records = 0;
        for r in replies {
            if let ShardReply::Count { records: n, .. } = r? {
                records += n;
            }
        }
        Ok(ClusterCollection { name: c.name, config: c.config, shards: c.shards, records })
    }

    /// Writes a batch: validated here, split by shard, published to the log; acknowledged
    /// once the log stored every message. `idempotency_key` makes a retried write count
    /// once (within the stream's duplicate window).
    pub async fn write(&self, name: &str, ops: Vec<Op>, idempotency_key: Option<&str>) -> Result<WriteAck> {
        let c = self.collection(name).await?;
        for op in &ops {
            match op {
                Op::Upsert(r) => kernelize_store::validate_record(r, c.config.dim),
                Op::Delete(id) => kernelize_store::validate_id(id),
            }
            .map_err(|e| Error::Invalid(e.to_string()))?;
        }
        let mut by_shard: Vec<Vec<Op>> = (0..c.shards).map(|_| Vec::new()).collect();
        for op in ops {
            let id = match &op {
                Op::Upsert(r) => &r.id,
                Op::Delete(id) => id,
            };
            by_shard[shard_of(id, c.shards) as usize].push(op);
        }
        let base = match idempotency_key {
            Some(k) => format!("{}:{k}", c.cid),
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        let limit = self.inner.log.max_payload().saturating_sub(4096);
        let mut sends = Vec::new();
        for (shard, ops) in by_shard.into_iter().enumerate() {
            if ops.is_empty() {
                continue;
            }
            for (part, payload) in split_encode(ops, limit)?.into_iter().enumerate() {
                let subject = self.inner.log.write_subject(&c.cid, shard as u32);
                let id = format!("{base}:{shard}:{part}");
                let log = self.inner.log.clone();
                sends.push(async move { log.publish(subject, payload.into(), &id).await });
            }
        }
        let messages = sends.len();
        let mut token = 0;
        for r in futures::future::join_all(sends).await {
            token = token.max(r?);
        }
        Ok(WriteAck { token, messages })
    }

    /// The committed changes of a collection after `after` (0: from the oldest kept), at
    /// most about `limit` (1..=[`MAX_CHANGES`]), waiting up to `wait` (at most a minute)
    /// for the first; [`Error::Expired`] when retention already dropped changes after `after`.
    pub async fn changes(&self, name: &str, after: u64, limit: usize, wait: Duration) -> Result<ChangePage> {
        let c = self.collection(name).await?;
        if !(1..=MAX_CHANGES).contains(&limit) {
            return Err(Error::Invalid(format!("limit must be 1..={MAX_CHANGES}, got {limit}")));
        }
        let wait = wait.min(Duration::from_secs(60));
        let entries = self.inner.log.changes(&c.cid, after, limit, wait).await?;
        let (mut changes, mut next) = (Vec::new(), after);
        for e in entries {
            let ops = kernelize_store::decode_wal_batch(&e.payload)
                .map_err(|err| Error::Internal(format!("change at position {}: {err}", e.seq)))?;
            changes.extend(ops.into_iter().map(|op| match op {
                Op::Upsert(r) => {
                    Change { position: e.seq, op: "upsert", id: r.id.clone(), record: Some(WireRecord::from(&*r)) }
                }
                Op::Delete(id) => Change { position: e.seq, op: "delete", id, record: None },
            }));
            next = e.seq;
        }
        Ok(ChangePage { changes, next })
    }

    /// One record by id.
    pub async fn get(&self, name: &str, id: &str, consistency: Consistency, token: u64) -> Result<Option<WireRecord>> {
        let c = self.collection(name).await?;
        let shard = shard_of(id, c.shards);
        match self.ask(&c, shard, ShardOp::Get { id: id.to_owned() }, consistency, token).await? {
            ShardReply::Record { record } => Ok(record),
            other => Err(unexpected(other)),
        }
    }

    /// A search over every shard, merged into one top-k (hybrid: each list merged, then
    /// fused, as the single-node engine fuses its lists).
    pub async fn search(&self, name: &str, cq: ClusterQuery) -> Result<Vec<ClusterHit>> {
        let c = self.collection(name).await?;
        let q = &cq.query;
        if q.k == 0 || q.k > MAX_K {
            return Err(Error::Invalid(format!("k must be 1..={MAX_K}, got {}", q.k)));
        }
        let filter = q.filter.as_ref().map(Filter::to_json);
        let higher_better = c.config.metric != Metric::L2;
        let stats = match q.mode {
            Mode::Vector => None,
            Mode::Keyword | Mode::Hybrid => {
                let text = q.text.clone().unwrap_or_default();
                let replies =
                    self.scatter(&c, |_| ShardOp::Bm25Stats { text: text.clone() }, cq.consistency, cq.token).await?;
                let mut sum = WireStats::default();
                for r in replies {
                    if let ShardReply::Stats { stats } = r? {
                        sum.add(&stats);
                    }
                }
                Some(sum)
            }
        };
        let list = |mode: Mode, k: usize| WireQuery {
            vector: if mode == Mode::Vector { q.vector.clone() } else { None },
            text: if mode == Mode::Keyword { q.text.clone() } else { None },
            k,
            ef: q.ef,
            filter: filter.clone(),
            mode,
            exact: q.exact,
            bm25: if mode == Mode::Keyword { stats.clone() } else { None },
            with_vectors: cq.with_vectors,
        };
        match q.mode {
            Mode::Vector => self.merged(&c, list(Mode::Vector, q.k), q.k, higher_better, &cq).await,
            Mode::Keyword => self.merged(&c, list(Mode::Keyword, q.k), q.k, true, &cq).await,
            Mode::Hybrid => {
                let depth = (2 * q.k).clamp(50, MAX_K);
                let (v, kw) = futures::future::try_join(
                    self.merged(&c, list(Mode::Vector, depth), depth, higher_better, &cq),
                    self.merged(&c, list(Mode::Keyword, depth), depth, true, &cq),
                )
                .await?;
                Ok(fuse(&[v, kw], q.k))
            }
        }
    }

    async fn merged(
        &self,
        c: &CollectionRow,
        wq: WireQuery,
        k: usize,
        higher_better: bool,
        q: &ClusterQuery,
    ) -> Result<Vec<ClusterHit>> {
        let replies = self.scatter(c, |_| ShardOp::Search(wq.clone()), q.consistency, q.token).await?;
        let mut all: Vec<WireHit> = Vec::new();
        let (mut unknown, mut answered) = (None, 0usize);
        for r in replies {
            match r {
                Ok(ShardReply::Hits { hits }) => {
                    answered += 1;
                    all.extend(hits);
                }
                // A shard none of whose records has the field matches nothing; the field
                // is unknown only when no shard knows it.
                Err(Error::Search(e @ kernelize_index::search::SearchError::UnknownField { .. })) => unknown = Some(e),
                Ok(other) => return Err(unexpected(other)),
                Err(e) => return Err(e),
            }
        }
        if answered == 0
            && let Some(e) = unknown
        {
            return Err(Error::Search(e));
        }
        all.sort_by(|a, b| {
            let o = if higher_better { b.score.total_cmp(&a.score) } else { a.score.total_cmp(&b.score) };
            o.then_with(|| a.record.id.cmp(&b.record.id))
        });
        all.truncate(k);
        Ok(all.into_iter().map(|h| ClusterHit { score: h.score, record: h.record }).collect())
    }

    /// A page of records in the store's key order, across shards.
    pub async fn scan(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
        filter: Option<&Filter>,
        consistency: Consistency,
    ) -> Result<ClusterPage> {
        let c = self.collection(name).await?;
        let filter = filter.map(Filter::to_json);
        let op = ShardOp::Scan { after: after.map(str::to_owned), limit, filter };
        let replies = self.scatter(&c, |_| op.clone(), consistency, 0).await?;
        let mut records = Vec::new();
        // Nothing past the first place a shard stopped early is known to be complete.
        let mut bound: Option<(u64, String)> = None;
        for r in replies {
            match r? {
                ShardReply::Page { records: rs, last, more } => {
                    records.extend(rs);
                    if more && let Some(l) = last {
                        let k = key_of(&l);
                        if bound.as_ref().is_none_or(|b| &k < b) {
                            bound = Some(k);
                        }
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
        let mut keyed: Vec<((u64, String), WireRecord)> = records
            .into_iter()
            .map(|r| (key_of(&r.id), r))
            .filter(|(k, _)| bound.as_ref().is_none_or(|b| k <= b))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let complete = keyed.len() <= limit;
        keyed.truncate(limit);
        let next_after = if !complete { keyed.last().map(|(k, _)| k.1.clone()) } else { bound.map(|b| b.1) };
        Ok(ClusterPage { records: keyed.into_iter().map(|(_, r)| r).collect(), next_after })
    }

    /// Every shard's placement and committed state.
    pub async fn placement(&self) -> Result<Vec<ShardPlacement>> {
        let mut out = Vec::new();
        for c in self.list().await? {
            for s in self.inner.meta.shards(&c.cid).await? {
                out.push(ShardPlacement {
                    collection: c.name.clone(),
                    shard: s.shard,
                    owner: s.owner.filter(|_| s.lease_live),
                    epoch: s.epoch,
                    checkpoint: s.checkpoint,
                    segments: s.state.segments.len(),
                    commits: s.commits,
                });
            }
        }
        Ok(out)
    }

    /// Sends `op` to every shard; one result per shard, in shard order.
    async fn scatter(
        &self,
        c: &CollectionRow,
        op: impl Fn(u32) -> ShardOp,
        consistency: Consistency,
        token: u64,
    ) -> Result<Vec<Result<ShardReply>>> {
        let asks = (0..c.shards).map(|s| self.ask(c, s, op(s), consistency, token));
        Ok(futures::future::join_all(asks).await)
    }

    /// One shard request, retried while no replica answers (one may be moving) until the
    /// request timeout.
    async fn ask(
        &self,
        c: &CollectionRow,
        shard: u32,
        op: ShardOp,
        consistency: Consistency,
        token: u64,
    ) -> Result<ShardReply> {
        let timeout = self.inner.cfg.timing.request();
        let req = ShardRequest {
            cid: c.cid.clone(),
            op,
            consistency,
            min_seq: token,
            wait_ms: (timeout.as_millis() as u64).saturating_sub(200).max(50),
        };
        let body: bytes::Bytes = serde_json::to_vec(&req).map_err(|e| Error::Internal(e.to_string()))?.into();
        let subject = wire::query_subject(&c.cid, shard);
        let deadline = tokio::time::Instant::now() + timeout;
        let what = || format!("shard {}/{shard}", c.name);
        self.inner.log.connected()?;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let sent = tokio::time::timeout(left, self.inner.log.client().request(subject.clone(), body.clone())).await;
            let retry = match sent {
                Err(_) => {
                    return Err(Error::unavailable(what(), format!("no answer within {} ms", timeout.as_millis())));
                }
                Ok(Ok(msg)) => {
                    let reply: ShardReply = serde_json::from_slice(&msg.payload)
                        .map_err(|e| Error::Internal(format!("bad reply from {}: {e}", what())))?;
                    match reply {
                        ShardReply::Error { code, message } => match code.as_str() {
                            "unknown_field" => {
                                let (field, known) = message.split_once('\u{0}').unwrap_or((&message, ""));
                                return Err(Error::Search(kernelize_index::search::SearchError::UnknownField {
                                    field: field.to_owned(),
                                    known: known.to_owned(),
                                }));
                            }
                            "invalid" => return Err(Error::Invalid(message)),
                            "not_serving" => format!("{}: {message}", what()),
                            "timeout" => return Err(Error::unavailable(what(), message)),
                            _ => return Err(Error::Internal(format!("{}: {message}", what()))),
                        },
                        ok => return Ok(ok),
                    }
                }
                Ok(Err(e)) => match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => "no replica is serving it yet".to_owned(),
                    async_nats::RequestErrorKind::TimedOut => "no answer in time".to_owned(),
                    _ => return Err(Error::unavailable("nats", e)),
                },
            };
            if tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
                return Err(Error::unavailable(what(), retry));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn unexpected(r: ShardReply) -> Error {
    Error::Internal(format!("unexpected shard reply {r:?}"))
}

/// Reciprocal rank fusion over ids, as the single-node engine fuses (ties keep first-seen order).
fn fuse(lists: &[Vec<ClusterHit>], k: usize) -> Vec<ClusterHit> {
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<ClusterHit> = Vec::new();
    for list in lists {
        for (rank, h) in list.iter().enumerate() {
            let i = *at.entry(h.record.id.clone()).or_insert_with(|| {
                out.push(ClusterHit { score: 0.0, record: h.record.clone() });
                out.len() - 1
            });
            out[i].score += 1.0 / (RRF_K + rank as f32 + 1.0);
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out.truncate(k);
    out
}

/// Encodes `ops` as one or more batches of at most `limit` bytes each.
fn split_encode(ops: Vec<Op>, limit: usize) -> Result<Vec<Vec<u8>>> {
    let bytes = kernelize_store::encode_wal_batch(&ops)?;
    if bytes.len() <= limit {
        return Ok(vec![bytes]);
    }
    if ops.len() == 1 {
        return Err(Error::Invalid(format!(
            "one record is {} bytes encoded; the log takes at most {limit} per message",
            bytes.len()
        )));
    }
    let mut ops = ops;
    let rest = ops.split_off(ops.len() / 2);
    let mut out = split_encode(ops, limit)?;
    out.extend(split_encode(rest, limit)?);
    Ok(out)
}

async fn refresh_collections(inner: &Inner) -> Result<Vec<CollectionRow>> {
    let all = inner.meta.collections().await?;
    *inner.collections.write() = all.iter().map(|c| (c.name.clone(), c.clone())).collect();
    Ok(all)
}

/// One round: heartbeat, placement, leases, seals.
async fn round(inner: &Arc<Inner>) -> Result<()> {
    let me = inner.id().to_owned();
    inner.meta.heartbeat(&me, &inner.instance, inner.cfg.timing.heartbeat() * 3).await?;
    let mut members = inner.meta.live_members(inner.cfg.timing.heartbeat() * 3).await?;
    if !members.contains(&me) {
        members.push(me.clone());
    }
    *inner.members.write() = members.clone();
    let colls = refresh_collections(inner).await?;
    let replicas_wanted = inner.cfg.query_replicas;
    let mut keep: HashSet<ShardKey> = HashSet::new();
    for c in &colls {
        for s in 0..c.shards {
            let key = (c.cid.clone(), s);
            let ranked = rank(&members, &c.cid, s);
            let first = ranked.first().is_some_and(|m| **m == me);
            let host = ranked.iter().take(replicas_wanted).any(|m| **m == me);
            let epoch = inner.owned.lock().get(&key).copied();
            if host || epoch.is_some() {
                keep.insert(key.clone());
            }
            let replica = inner.replicas.lock().get(&key).cloned();
            let Some(replica) = replica else {
                if (host || epoch.is_some()) && inner.building.lock().insert(key.clone()) {
                    spawn_build(inner.clone(), c.clone(), s);
                }
                continue;
            };
            match epoch {
                Some(epoch) if first => {
                    if !inner.meta.renew(&c.cid, s, &me, epoch, inner.cfg.timing.lease()).await? {
                        tracing::warn!(collection = c.name, shard = s, epoch, "lease lost to another node");
                        inner.owned.lock().remove(&key);
                        replica.set_owner(false);
                        inner.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
                    } else if replica.due(inner) {
                        spawn_seal(inner.clone(), replica, epoch, false);
                    }
                }
                Some(epoch) => {
                    // A node that ranks higher joined: seal, then hand the lease over.
                    spawn_seal(inner.clone(), replica, epoch, true);
                }
                None if first => {
                    if let Some(row) = inner.meta.acquire(&c.cid, s, &me, inner.cfg.timing.lease()).await? {
                        tracing::info!(collection = c.name, shard = s, epoch = row.epoch, "lease taken");
                        replica.adopt_checkpoint(&row);
                        inner.owned.lock().insert(key.clone(), row.epoch);
                        inner.stats.leases_taken.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {}
            }
        }
    }
    // Replicas of shards this node no longer hosts (or of dropped collections).
    let gone: Vec<Arc<Replica>> = {
        let mut reps = inner.replicas.lock();
        let drop_keys: Vec<ShardKey> = reps.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        drop_keys.iter().filter_map(|k| reps.remove(k)).collect()
    };
    for r in gone {
        inner.owned.lock().remove(&(r.cid.clone(), r.shard));
        r.discard(inner);
    }
    *inner.last_round.lock() = Ok((keep.len(), std::time::Instant::now()));
    Ok(())
}

fn spawn_build(inner: Arc<Inner>, c: CollectionRow, shard: u32) {
    tokio::spawn(async move {
        let key = (c.cid.clone(), shard);
        let built = Replica::start(&inner, &c, shard).await;
        let result = match built {
            Ok(r) => match r.serve(&inner).await {
                Ok(()) => {
                    if !inner.stopping.load(Ordering::SeqCst) {
                        inner.replicas.lock().insert(key.clone(), r);
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(collection = c.name, shard, error = %e, "replica not built; retried next round");
        }
        inner.building.lock().remove(&key);
    });
}

fn spawn_seal(inner: Arc<Inner>, replica: Arc<Replica>, epoch: i64, hand_over: bool) {
    let key = (replica.cid.clone(), replica.shard);
    if !inner.sealing.lock().insert(key.clone()) {
        return;
    }
    tokio::spawn(async move {
        match replica.seal(&inner, epoch).await {
            Ok(_) if hand_over => {
                if inner.owned.lock().remove(&key).is_some() {
                    replica.set_owner(false);
                    let _ = inner.meta.release(&key.0, key.1, inner.id(), epoch).await;
                    inner.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(Error::Fenced { shard, epoch }) => {
                tracing::warn!(shard, epoch, "commit refused: this node's lease moved");
                inner.owned.lock().remove(&key);
                replica.set_owner(false);
                inner.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(shard = key.1, error = %e, "seal failed; retried next round"),
        }
        inner.sealing.lock().remove(&key);
    });
}
