//! A shard replica on one node: a local collection (in the node's cache data directory)
//! built from the shard's committed segments, then fed by the log from the checkpoint on.
//! Every node that hosts a shard keeps one; the lease holder also seals it.
//!
//! Replaying the log over a state that already holds some of the replayed writes gives
//! the same result (each write sets or deletes one id; the last one in log order wins),
//! so a state may run ahead of its checkpoint, never behind it.

use crate::error::{Error, Result};
use crate::meta::{CollectionRow, SealedSegment, ShardRow, ShardState};
use crate::node::Inner;
use crate::wire::{self, Consistency, ShardOp, ShardReply, ShardRequest, WireHit, WireRecord};
use futures::StreamExt;
use kernelize_blobs::Digest;
use kernelize_index::search::{IndexCache, Query, Searcher};
use kernelize_store::{Collection, key_hash};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Records a scan request examines per shard at most.
const SCAN_EXAMINE: usize = 20_000;

/// Compact the owner's local segments once there are more than this many.
const COMPACT_AFTER_SEGMENTS: usize = 6;

/// One hosted shard.
pub(crate) struct Replica {
    pub cid: String,
    pub shard: u32,
    pub collection: CollectionRow,
    /// The local collection (replaced whole when rebuilt).
    local: RwLock<Collection>,
    /// Log position applied (a stream sequence number).
    applied: watch::Sender<u64>,
    /// Every message of this shard with a sequence number up to this was applied when
    /// last checked against the log (session reads with older tokens need no check).
    verified: AtomicU64,
    /// The highest commit heard of (a replica behind it rebuilds: the log below it may be trimmed).
    pub heard_checkpoint: AtomicU64,
    /// Checkpoint of the state this replica last committed.
    committed: AtomicU64,
    /// Checkpoint of the committed state the local collection was built from (or, for the
    /// owner, last sealed).
    base: AtomicU64,
    /// Whether this node holds the shard's lease.
    owner: std::sync::atomic::AtomicBool,
    /// Writes applied since the last seal, and when the first of them arrived.
    unsealed: AtomicU64,
    unsealed_since: Mutex<Option<Instant>>,
    cache: IndexCache,
    /// The files of the node's cache data directory.
    storage: Arc<dyn kernelize_store::Storage>,
    /// Digest of each local file already uploaded, and when (reused for
    /// `blob_options.refresh_after_secs`, so a commit names only files put since then).
    uploaded: Mutex<HashMap<PathBuf, (Digest, Instant)>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

fn local_name(cid: &str, shard: u32, generation: u64) -> String {
    format!("{cid}-{shard}-{generation}")
}

impl Replica {
    /// Builds the replica from the shard's committed state and starts applying the log.
    pub async fn start(node: &Arc<Inner>, c: &CollectionRow, shard: u32) -> Result<Arc<Replica>> {
        let row = node.meta.shard(&c.cid, shard).await?;
        let generation = node.next_generation();
        let local = load(node, c, shard, generation, &row).await?;
        let (applied, _) = watch::channel(row.checkpoint);
        let r = Arc::new(Replica {
            cid: c.cid.clone(),
            shard,
            collection: c.clone(),
            local: RwLock::new(local),
            applied,
            heard_checkpoint: AtomicU64::new(row.checkpoint),
            verified: AtomicU64::new(0),
            committed: AtomicU64::new(row.checkpoint),
            base: AtomicU64::new(row.checkpoint),
            owner: std::sync::atomic::AtomicBool::new(false),
            unsealed: AtomicU64::new(0),
            unsealed_since: Mutex::new(None),
            cache: IndexCache::new(),
            storage: node.db.storage().clone(),
            uploaded: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&r);
        let node2 = node.clone();
        let apply = tokio::spawn(async move { apply_loop(node2, weak).await });
        r.tasks.lock().push(apply);
        Ok(r)
    }

    /// Starts answering shard requests (queue group `kz`: one replica answers each).
    pub async fn serve(self: &Arc<Self>, node: &Arc<Inner>) -> Result<()> {
        let client = node.log.client().clone();
        let mut sub = client
            .queue_subscribe(wire::query_subject(&self.cid, self.shard), "kz".into())
            .await
            .map_err(|e| Error::unavailable("nats", e))?;
        let mut notices = client
            .subscribe(wire::commit_subject(&self.cid, self.shard))
            .await
            .map_err(|e| Error::unavailable("nats", e))?;
        let weak = Arc::downgrade(self);
        let node2 = node.clone();
        let served = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(r) = weak.upgrade() else { break };
                let Some(reply) = msg.reply.clone() else { continue };
                let node3 = node2.clone();
                tokio::spawn(async move {
                    let answer = match serde_json::from_slice::<ShardRequest>(&msg.payload) {
                        Ok(req) => r.handle(&node3, req).await,
                        Err(e) => err_reply("invalid", format!("bad shard request: {e}")),
                    };
                    let body = serde_json::to_vec(&answer).unwrap_or_default();
                    if let Err(e) = node3.log.client().publish(reply, body.into()).await {
                        tracing::debug!(error = %e, "shard reply not sent");
                    }
                });
            }
        });
        let weak = Arc::downgrade(self);
        let heard = tokio::spawn(async move {
            while let Some(msg) = notices.next().await {
                let Some(r) = weak.upgrade() else { break };
                if let Some(c) = std::str::from_utf8(&msg.payload).ok().and_then(|s| s.parse::<u64>().ok()) {
                    r.heard_checkpoint.fetch_max(c, Ordering::SeqCst);
                }
            }
        });
        self.tasks.lock().extend([served, heard]);
        Ok(())
    }

    /// Log position applied.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    fn local(&self) -> Collection {
        self.local.read().clone()
    }

    /// Waits until the consistency level is met (or `wait` passes).
    async fn wait_fresh(&self, node: &Inner, req: &ShardRequest) -> Result<()> {
        let target = match req.consistency {
            Consistency::Eventual => return Ok(()),
            Consistency::Session
                if self.applied() >= req.min_seq || self.verified.load(Ordering::SeqCst) >= req.min_seq =>
            {
                return Ok(());
            }
            // Every message of this shard up to the last one in the log (at least as far
            // as any write acknowledged before now) — one round trip to the stream.
            _ => node.log.last_seq(&node.log.write_subject(&self.cid, self.shard)).await?,
        };
        let target = target.max(self.heard_checkpoint.load(Ordering::SeqCst));
        let mut rx = self.applied.subscribe();
        let waited = tokio::time::timeout(Duration::from_millis(req.wait_ms), rx.wait_for(|a| *a >= target)).await;
        match waited {
            Ok(Ok(_)) => {
                // The token was issued before this check: every message of this shard up
                // to it is applied now, and stays applied.
                if req.consistency == Consistency::Session {
                    self.verified.fetch_max(req.min_seq, Ordering::SeqCst);
                }
                Ok(())
            }
            _ => Err(Error::unavailable(
                format!("shard {}/{}", self.collection.name, self.shard),
                format!("not caught up to log position {target} within {} ms (at {})", req.wait_ms, self.applied()),
            )),
        }
    }

    async fn handle(self: &Arc<Self>, node: &Arc<Inner>, req: ShardRequest) -> ShardReply {
        if req.cid != self.cid {
            return err_reply("not_serving", "another incarnation of the collection".into());
        }
        if let Err(e) = self.wait_fresh(node, &req).await {
            return err_reply("timeout", e.to_string());
        }
        let local = self.local();
        let me = self.clone();
        let run = tokio::task::spawn_blocking(move || me.run(&local, req.op));
        match run.await {
            Ok(Ok(reply)) => reply,
            Ok(Err(Error::Search(kernelize_index::search::SearchError::UnknownField { field, known }))) => {
                err_reply("unknown_field", format!("{field}\u{0}{known}"))
            }
            Ok(Err(Error::Search(
                e
                @ (kernelize_index::search::SearchError::Invalid(_) | kernelize_index::search::SearchError::Filter(_)),
            ))) => err_reply("invalid", e.to_string()),
            Ok(Err(Error::Invalid(e))) => err_reply("invalid", e),
            Ok(Err(e)) => err_reply("internal", e.to_string()),
            Err(e) => err_reply("internal", e.to_string()),
        }
    }

    fn run(&self, local: &Collection, op: ShardOp) -> Result<ShardReply> {
        let storage = &*self.storage;
        match op {
            ShardOp::Search(q) => {
                let filter = parse_filter(q.filter.as_ref())?;
                let query = Query {
                    vector: q.vector.clone(),
                    text: q.text.clone(),
                    k: q.k,
                    ef: q.ef,
                    filter,
                    mode: q.mode,
                    exact: q.exact,
                    bm25: q.bm25.clone().map(Into::into),
                    ..Default::default()
                };
                let hits = Searcher::new(local, storage, &self.cache).search(&query)?;
                let hits = hits
                    .iter()
                    .map(|h| {
                        let mut record = WireRecord::from(&*h.record);
                        if !q.with_vectors {
                            record.vector = Vec::new();
                        }
                        WireHit { score: h.score, record }
                    })
                    .collect();
                Ok(ShardReply::Hits { hits })
            }
            ShardOp::Bm25Stats { text } => {
                let stats = Searcher::new(local, storage, &self.cache).bm25_stats(&text)?;
                Ok(ShardReply::Stats { stats: stats.into() })
            }
            ShardOp::Get { id } => Ok(ShardReply::Record { record: local.get(&id)?.map(|r| WireRecord::from(&*r)) }),
            ShardOp::Count => {
                let applied = self.applied();
                Ok(ShardReply::Count { records: local.snapshot().count()?, applied })
            }
            ShardOp::Scan { after, limit, filter } => {
                let filter = parse_filter(filter.as_ref())?;
                let snap = local.snapshot();
                let (mut records, mut examined, mut last, mut more) = (Vec::new(), 0usize, None, false);
                for r in snap.scan(after.as_deref()) {
                    let r = r?;
                    let hit = filter.as_ref().is_none_or(|f| f.matches(r.metadata.as_ref()));
                    if (hit && records.len() == limit) || examined == SCAN_EXAMINE {
                        more = true;
                        break;
                    }
                    examined += 1;
                    last = Some(r.id.clone());
                    if hit {
                        records.push(WireRecord::from(&*r));
                    }
                }
                Ok(ShardReply::Page { records, last, more })
            }
        }
    }

    /// Whether the owner should seal now.
    pub fn due(&self, node: &Inner) -> bool {
        let n = self.unsealed.load(Ordering::SeqCst);
        if n == 0 {
            return false;
        }
        let old =
            self.unsealed_since.lock().is_some_and(|t| t.elapsed() >= Duration::from_millis(node.cfg.timing.seal_ms));
        n >= node.cfg.timing.seal_records || old
    }

    /// Seals what was applied: flush, indexes, upload, then the fenced commit in
    /// PostgreSQL, a notice to the other replicas, and the log trimmed below the previous
    /// checkpoint (replicas that fell further behind rebuild from the object store).
    pub async fn seal(self: &Arc<Self>, node: &Arc<Inner>, epoch: i64) -> Result<u64> {
        let at = self.applied();
        let prev = self.committed.load(Ordering::SeqCst);
        if at <= prev {
            return Ok(prev);
        }
        let sealed_writes = self.unsealed.load(Ordering::SeqCst);
        let local = self.local();
        let me = self.clone();
        let files = tokio::task::spawn_blocking(move || -> Result<Vec<(PathBuf, Option<PathBuf>, u64)>> {
            local.flush()?;
            if local.snapshot().segments().len() > COMPACT_AFTER_SEGMENTS {
                local.compact()?;
            }
            me.cache.ensure(&local, &*me.storage).map_err(|e| Error::Internal(format!("index build: {e}")))?;
            let snap = local.snapshot();
            // Oldest first.
            Ok(snap
                .segments()
                .iter()
                .rev()
                .map(|s| {
                    let idx = kernelize_store::segment_companion(s.path(), "idx");
                    (s.path().to_owned(), idx.exists().then_some(idx), s.len() as u64)
                })
                .collect())
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        let started = Instant::now();
        let mut segments = Vec::new();
        for (seg, idx, rows) in files {
            let bytes = fs_err::metadata(&seg).map(|m| m.len()).unwrap_or(0);
            let seg_d = self.upload(node, &seg).await?;
            let idx_d = match &idx {
                Some(p) => Some(self.upload(node, p).await?.to_string()),
                None => None,
            };
            segments.push(SealedSegment { seg: seg_d.to_string(), idx: idx_d, rows, bytes });
        }
        // Every file this commit names was written at most `refresh_after` before its put
        // (a put rewrites an older one), and that put was at most 1.5 × `refresh_after`
        // ago (uploads are reused for half of it, a seal takes less than all of it): the
        // file is younger than the 3 × `refresh_after` that `gc` never goes below.
        let fresh = node.cfg.blob_options.refresh_after();
        if started.elapsed() >= fresh {
            return Err(Error::unavailable(
                "object store",
                format!(
                    "the seal's uploads took over {} s (blob_options.refresh_after_secs); sealing again",
                    fresh.as_secs()
                ),
            ));
        }
        let state = ShardState { segments };
        let held = crate::meta::Held { cid: &self.cid, shard: self.shard, node: node.id(), epoch };
        node.meta.commit(held, at, &state, node.cfg.timing.lease()).await?;
        self.committed.store(at, Ordering::SeqCst);
        self.base.fetch_max(at, Ordering::SeqCst);
        self.heard_checkpoint.fetch_max(at, Ordering::SeqCst);
        self.unsealed.fetch_sub(sealed_writes.min(self.unsealed.load(Ordering::SeqCst)), Ordering::SeqCst);
        if self.unsealed.load(Ordering::SeqCst) == 0 {
            *self.unsealed_since.lock() = None;
        }
        let client = node.log.client();
        let _ = client.publish(wire::commit_subject(&self.cid, self.shard), at.to_string().into()).await;
        if prev > 0
            && let Err(e) = node.log.trim(&node.log.write_subject(&self.cid, self.shard), prev + 1).await
        {
            tracing::warn!(shard = self.shard, error = %e, "log trim failed; retried at the next seal");
        }
        node.stats.commits.fetch_add(1, Ordering::Relaxed);
        Ok(at)
    }

    async fn upload(&self, node: &Inner, path: &PathBuf) -> Result<Digest> {
        let fresh = node.cfg.blob_options.refresh_after() / 2;
        if let Some((d, at)) = self.uploaded.lock().get(path)
            && at.elapsed() < fresh
        {
            return Ok(*d);
        }
        let at = Instant::now();
        let info = node.blobs.put_file(path).await?;
        self.uploaded.lock().insert(path.clone(), (info.digest, at));
        Ok(info.digest)
    }

    /// This node took the lease with this row: it owns the shard from now on (a replica
    /// behind the row's checkpoint rebuilds first).
    pub fn adopt_checkpoint(&self, row: &ShardRow) {
        self.heard_checkpoint.fetch_max(row.checkpoint, Ordering::SeqCst);
        self.committed.fetch_max(row.checkpoint, Ordering::SeqCst);
        self.set_owner(true);
    }

    /// Drops the local collection (the node stopped hosting the shard).
    pub fn discard(&self, node: &Inner) {
        let name = self.local().name().to_owned();
        if let Err(e) = node.db.drop_collection(&name) {
            tracing::debug!(name, error = %e, "local replica not dropped");
        }
    }
}

fn parse_filter(json: Option<&serde_json::Value>) -> Result<Option<kernelize_index::filter::Filter>> {
    match json {
        None => Ok(None),
        Some(j) => kernelize_index::filter::Filter::from_json(j).map(Some).map_err(|e| Error::Invalid(e.to_string())),
    }
}

fn err_reply(code: &str, message: String) -> ShardReply {
    ShardReply::Error { code: code.into(), message }
}

/// Downloads the committed segments (through the node's cache of blobs, so a segment is
/// fetched once however many states name it) and imports them as local collection
/// `generation`.
async fn load(node: &Arc<Inner>, c: &CollectionRow, shard: u32, generation: u64, row: &ShardRow) -> Result<Collection> {
    let name = local_name(&c.cid, shard, generation);
    let dir = node.cfg.cache_dir.join("incoming").join(&name);
    let io = |e: std::io::Error| Error::Internal(format!("{}: {e}", dir.display()));
    if dir.exists() {
        fs_err::remove_dir_all(&dir).map_err(io)?;
    }
    fs_err::create_dir_all(&dir).map_err(io)?;
    let mut files = Vec::new();
    for (i, s) in row.state.segments.iter().enumerate() {
        let seg = dir.join(format!("{i:08}.seg"));
        fs_err::hard_link(cached_blob(node, &s.seg).await?, &seg).map_err(io)?;
        let mut companions = Vec::new();
        if let Some(idx) = &s.idx {
            let p = dir.join(format!("{i:08}.idx"));
            fs_err::hard_link(cached_blob(node, idx).await?, &p).map_err(io)?;
            companions.push(("idx".to_owned(), p));
        }
        files.push((seg, companions));
    }
    let db = node.db.clone();
    let config = c.config.clone();
    let local = tokio::task::spawn_blocking(move || {
        if db.collection(&name).is_ok() {
            db.drop_collection(&name)?;
        }
        db.import_collection(&name, config, &files)
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))??;
    let _ = fs_err::remove_dir_all(&dir);
    Ok(local)
}

/// A sealed file in the node's blob cache (`cache_dir/blobs/<sha256>`), fetched (and
/// checked against its digest) when missing. Cached files are never changed in place.
async fn cached_blob(node: &Inner, hex: &str) -> Result<PathBuf> {
    let d: Digest = hex.parse().map_err(|_| Error::Internal(format!("bad digest {hex:?} in a shard state")))?;
    let path = node.cfg.cache_dir.join("blobs").join(d.to_string());
    if !path.exists() {
        node.blobs.get_to_file(&d, &path).await?;
    }
    Ok(path)
}

/// Applies the shard's log to the replica, from its applied position on, for as long as
/// the replica lives, and swaps in newer committed states (see [`Replica::refresh`]).
async fn apply_loop(node: Arc<Inner>, weak: std::sync::Weak<Replica>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(r) = weak.upgrade() else { return };
        if r.wants_refresh()
            && let Err(e) = r.refresh(&node).await
        {
            tracing::warn!(shard = r.shard, error = %e, "replica refresh failed; retrying");
            drop(r);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        let subject = node.log.write_subject(&r.cid, r.shard);
        let from = r.applied() + 1;
        drop(r);
        let mut tail = match node.log.tail(&subject, from).await {
            Ok(t) => Box::pin(t),
            Err(e) => {
                tracing::debug!(subject, error = %e, "log tail not opened; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            // Wake up now and then to notice a commit.
            let next = tokio::time::timeout(Duration::from_millis(250), tail.next()).await;
            let Some(r) = weak.upgrade() else { return };
            if r.wants_refresh() {
                break;
            }
            let entry = match next {
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::debug!(subject, error = %e, "log tail failed; reopening");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                Ok(Some(Ok(e))) => e,
            };
            if entry.seq <= r.applied() {
                continue;
            }
            let local = r.local();
            match apply(&local, &entry).await {
                Ok(n) => {
                    r.unsealed.fetch_add(n, Ordering::SeqCst);
                    r.unsealed_since.lock().get_or_insert_with(Instant::now);
                    r.applied.send_replace(entry.seq);
                    node.stats.applied.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!(subject, seq = entry.seq, error = %e, "replica write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
}

/// Applies one log message to a local collection; returns the writes in it. A message
/// that does not decode (it was validated before it was published, so this is damage) is
/// logged and skipped.
async fn apply(local: &Collection, entry: &crate::log::Entry) -> Result<u64> {
    let ops = match kernelize_store::decode_wal_batch(&entry.payload) {
        Ok(ops) => ops,
        Err(e) => {
            tracing::error!(seq = entry.seq, error = %e, "undecodable log message skipped");
            return Ok(0);
        }
    };
    let n = ops.len() as u64;
    let local = local.clone();
    tokio::task::spawn_blocking(move || local.write(ops)).await.map_err(|e| Error::Internal(e.to_string()))??;
    Ok(n)
}

impl Replica {
    /// A newer committed state exists that this replica should take: always when it fell
    /// behind it (the log below it may be trimmed); for a replica that does not own the
    /// shard, whenever there is one (it then serves the owner's sealed segments and
    /// indexes instead of building its own).
    fn wants_refresh(&self) -> bool {
        let heard = self.heard_checkpoint.load(Ordering::SeqCst);
        heard > self.base.load(Ordering::SeqCst) && (!self.owner.load(Ordering::SeqCst) || heard > self.applied())
    }

    /// Builds a new local collection from the latest committed state, brings it up to
    /// this replica's applied position from the log (the old one serves meanwhile), then
    /// swaps it in: the applied position never goes back.
    async fn refresh(&self, node: &Arc<Inner>) -> Result<()> {
        let row = node.meta.shard(&self.cid, self.shard).await?;
        let generation = node.next_generation();
        let fresh = load(node, &self.collection, self.shard, generation, &row).await?;
        let target = self.applied();
        let mut reached = row.checkpoint;
        if target > row.checkpoint {
            let subject = node.log.write_subject(&self.cid, self.shard);
            let mut tail = Box::pin(node.log.tail(&subject, row.checkpoint + 1).await?);
            let deadline = tokio::time::Instant::now() + node.cfg.timing.request();
            while reached < target {
                let next = tokio::time::timeout_at(deadline, tail.next()).await;
                let entry = match next {
                    Ok(Some(e)) => e?,
                    _ => {
                        let _ = node.db.drop_collection(fresh.name());
                        return Err(Error::unavailable("nats", "log catch-up of a refreshed replica timed out"));
                    }
                };
                apply(&fresh, &entry).await?;
                reached = entry.seq;
            }
        }
        let old = std::mem::replace(&mut *self.local.write(), fresh);
        self.base.fetch_max(row.checkpoint, Ordering::SeqCst);
        self.heard_checkpoint.fetch_max(row.checkpoint, Ordering::SeqCst);
        self.committed.fetch_max(row.checkpoint, Ordering::SeqCst);
        self.applied.send_replace(reached.max(target));
        self.uploaded.lock().clear();
        self.unsealed.store(0, Ordering::SeqCst);
        *self.unsealed_since.lock() = None;
        node.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = node.db.drop_collection(old.name()) {
            tracing::debug!(error = %e, "old local replica not dropped");
        }
        Ok(())
    }

    /// Marks this replica as the shard's owner (or not).
    pub fn set_owner(&self, owner: bool) {
        self.owner.store(owner, Ordering::SeqCst);
    }
}

/// The key order of the store (for merging pages from several shards).
pub(crate) fn key_of(id: &str) -> (u64, String) {
    (key_hash(id), id.to_owned())
}
