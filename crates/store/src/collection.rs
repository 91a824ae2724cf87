//! A collection: WAL + memtable + segments behind one write path with group commit, and
//! immutable versions that readers snapshot without blocking writers.

use crate::error::{Error, IoContext, Result};
use crate::manifest::{CollectionConfig, Manifest, SegmentRef, segment_file_name};
use crate::memtable::{Entry, Key, Memtable};
use crate::record::{Op, Record, decode_batch, encode_batch, validate_id, validate_record};
use crate::segment::{Segment, SegmentOptions, write_segment};
use crate::snapshot::{Snapshot, Version};
use crate::storage::Storage;
use crate::wal::{self, WalWriter, parse_wal_file_name, wal_file_name};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After the WAL is fsynced (the default): survives power loss.
    #[default]
    Always,
    /// After the WAL write reaches the OS: survives a process crash, not power loss.
    Buffered,
}

impl std::str::FromStr for Durability {
    type Err = Error;
    fn from_str(s: &str) -> Result<Durability> {
        match s {
            "always" => Ok(Durability::Always),
            "buffered" => Ok(Durability::Buffered),
            _ => Err(Error::InvalidInput(format!("unknown durability {s:?}: expected always or buffered"))),
        }
    }
}

/// Tunables of an open collection (not stored; chosen by whoever opens it).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// When writes are acknowledged.
    pub durability: Durability,
    /// Flush the memtable to a segment once it holds about this many bytes.
    pub memtable_bytes: usize,
    /// Most bytes of batches one group commit writes with one fsync.
    pub max_group_bytes: usize,
    /// Segment writing settings.
    pub segment: SegmentOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Always,
            memtable_bytes: 64 << 20,
            max_group_bytes: 16 << 20,
            segment: SegmentOptions::default(),
        }
    }
}

/// What recovery found and did when the collection was opened.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// WAL frames replayed into the memtable.
    pub replayed_batches: u64,
    /// Operations in those frames.
    pub replayed_ops: u64,
    /// A torn or corrupt WAL tail that was cut off: file, offset, reason, bytes cut.
    pub truncated: Option<(PathBuf, u64, String, u64)>,
    /// WAL files after a bad frame, moved into `wal/quarantine/` (never replayed).
    pub quarantined: Vec<PathBuf>,
    /// Files from interrupted flushes or compactions that no manifest named, removed.
    pub removed_orphans: Vec<PathBuf>,
}

/// Statistics of a collection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    /// Collection name.
    pub name: String,
    /// Dimension.
    pub dim: usize,
    /// Metric.
    pub metric: String,
    /// Live records.
    pub records: u64,
    /// Sequence number of the last acknowledged write.
    pub last_seq: u64,
    /// Entries in the memtable (including immutable ones being flushed).
    pub memtable_entries: u64,
    /// Approximate memtable bytes.
    pub memtable_bytes: u64,
    /// Number of live segments.
    pub segments: u64,
    /// Bytes of segment files.
    pub segment_bytes: u64,
    /// Entries in segments (tombstones and overwritten versions included).
    pub segment_entries: u64,
    /// Learned-index bytes over all segments.
    pub learned_index_bytes: u64,
    /// Bytes of WAL files.
    pub wal_bytes: u64,
}

struct Pending {
    ticket: u64,
    ops: Vec<Op>,
    encoded: Vec<u8>,
}

struct WriteState {
    queue: VecDeque<Pending>,
    leader: bool,
    wal: Option<WalWriter>,
    next_seq: u64,
    next_ticket: u64,
    results: HashMap<u64, Result<u64, FailedWrite>>,
    poisoned: Option<String>,
}

/// A failure shared by every writer of a group (Error is not Clone).
#[derive(Debug, Clone)]
struct FailedWrite {
    message: String,
    io_kind: Option<std::io::ErrorKind>,
    path: Option<PathBuf>,
}

impl FailedWrite {
    fn of(e: &Error) -> FailedWrite {
        match e {
            Error::Io { path, source } => {
                FailedWrite { message: source.to_string(), io_kind: Some(source.kind()), path: Some(path.clone()) }
            }
            other => FailedWrite { message: other.to_string(), io_kind: None, path: None },
        }
    }
    fn into_error(self, collection: &str) -> Error {
        match (self.io_kind, self.path) {
            (Some(kind), Some(path)) => Error::io(path, std::io::Error::new(kind, self.message)),
            _ => Error::Poisoned { collection: collection.to_owned(), cause: self.message },
        }
    }
}

struct Maintenance {
    manifest: Manifest,
}

pub(crate) struct Inner {
    name: String,
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    config: CollectionConfig,
    opts: Options,
    version: RwLock<Arc<Version>>,
    write: Mutex<WriteState>,
    cv: Condvar,
    maint: Mutex<Maintenance>,
    recovery: RecoveryReport,
}

/// An open collection. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Collection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection").field("name", &self.inner.name).field("dir", &self.inner.dir).finish()
    }
}

const MANIFEST: &str = "MANIFEST";
const WAL_DIR: &str = "wal";
const SEG_DIR: &str = "seg";
const ARCHIVE_DIR: &str = "wal-archive";
const QUARANTINE_DIR: &str = "quarantine";

/// Creates the files of a new, empty collection in `dir` (which must not exist), durably.
pub(crate) fn create_files(storage: &dyn Storage, dir: &Path, config: &CollectionConfig) -> Result<()> {
    storage.create_dir_all(&dir.join(WAL_DIR)).at(dir)?;
    storage.create_dir_all(&dir.join(SEG_DIR)).at(dir)?;
    Manifest::new(config.clone()).store(storage, &dir.join(MANIFEST))
}

impl Collection {
    /// Opens a collection directory, running crash recovery.
    pub fn open(storage: Arc<dyn Storage>, dir: &Path, name: &str, opts: Options) -> Result<Collection> {
        let manifest = Manifest::load(&*storage, &dir.join(MANIFEST))?;
        let mut report = RecoveryReport::default();
        let seg_dir = dir.join(SEG_DIR);
        let wal_dir = dir.join(WAL_DIR);
        storage.create_dir_all(&seg_dir).at(&seg_dir)?;
        storage.create_dir_all(&wal_dir).at(&wal_dir)?;

        // Segments the manifest names; anything else in seg/ is left from an interrupted
        // flush or compaction and was never live.
        // Companion files (`{id:08}.{ext}`, e.g. search indexes) live and die with their segment.
        let live: std::collections::HashSet<String> =
            manifest.segments.iter().map(|s| segment_file_name(s.id)).collect();
        for name in storage.list_dir(&seg_dir).at(&seg_dir)? {
            let companion_of_live = !name.ends_with(".tmp")
                && name.split_once('.').is_some_and(|(stem, _)| live.contains(&format!("{stem}.seg")));
            if !live.contains(&name) && !companion_of_live {
                let p = seg_dir.join(&name);
                storage.remove_file(&p).at(&p)?;
                report.removed_orphans.push(p);
            }
        }
        if storage.exists(&dir.join("MANIFEST.tmp")).at(dir)? {
            storage.remove_file(&dir.join("MANIFEST.tmp")).at(dir)?;
        }
        let mut segments = Vec::with_capacity(manifest.segments.len());
        for s in &manifest.segments {
            let seg = Segment::open(&*storage, &seg_dir.join(segment_file_name(s.id)))?;
            if seg.dim() != manifest.config.dim {
                return Err(Error::corrupt(seg.path(), 12, "segment dimension differs from the collection's"));
            }
            segments.push(seg);
        }

        let (mem, next_seq) = replay_wal(&*storage, &wal_dir, &manifest, &mut report)?;
        let wal = WalWriter::create(&*storage, &wal_dir, next_seq)?;
        let version = Version { seq: next_seq - 1, mem, imm: Vec::new(), segments, dim: manifest.config.dim };
        let inner = Inner {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            storage,
            config: manifest.config.clone(),
            opts,
            version: RwLock::new(Arc::new(version)),
            write: Mutex::new(WriteState {
                queue: VecDeque::new(),
                leader: false,
                wal: Some(wal),
                next_seq,
                next_ticket: 0,
                results: HashMap::new(),
                poisoned: None,
            }),
            cv: Condvar::new(),
            maint: Mutex::new(Maintenance { manifest }),
            recovery: report,
        };
        let c = Collection { inner: Arc::new(inner) };
        c.retire_wal_files(c.inner.maint.lock().manifest.flushed_seq)?;
        Ok(c)
    }

    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its fixed configuration.
    pub fn config(&self) -> &CollectionConfig {
        &self.inner.config
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What recovery did when it was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// A consistent, immutable view of the collection as of the last acknowledged write.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.inner.version.read().clone())
    }

    /// Inserts or replaces records: atomic (all or nothing) and durable per the
    /// collection's [`Durability`] when this returns. Returns the batch's sequence number.
    pub fn upsert(&self, records: Vec<Record>) -> Result<u64> {
        self.write(records.into_iter().map(|r| Op::Upsert(Arc::new(r))).collect())
    }

    /// Deletes records by id (absent ids are no-ops), atomically.
    pub fn delete(&self, ids: Vec<String>) -> Result<u64> {
        self.write(ids.into_iter().map(Op::Delete).collect())
    }

    /// Reads one record by id from the latest state.
    pub fn get(&self, id: &str) -> Result<Option<Arc<Record>>> {
        self.snapshot().get(id)
    }

    /// Applies a batch of operations atomically; see [`Collection::upsert`].
    pub fn write(&self, ops: Vec<Op>) -> Result<u64> {
        let seqs = self.write_many(vec![ops])?;
        Ok(seqs.first().copied().unwrap_or_default())
    }

    /// Applies several batches in order, each atomic on its own, sharing one WAL write and
    /// one fsync. Every batch is validated before any is written; returns their sequence
    /// numbers. This is how a single loader gets the benefit of group commit.
    pub fn write_many(&self, batches: Vec<Vec<Op>>) -> Result<Vec<u64>> {
        let mut pending = Vec::with_capacity(batches.len());
        for ops in batches {
            if ops.is_empty() {
                return Err(Error::InvalidInput("empty batch".into()));
            }
            for op in &ops {
                match op {
                    Op::Upsert(r) => validate_record(r, self.inner.config.dim)?,
                    Op::Delete(id) => validate_id(id)?,
                }
            }
            let mut encoded = Vec::new();
            encode_batch(&ops, &mut encoded)?;
            if encoded.len() > wal::MAX_RECORD_LEN {
                return Err(Error::InvalidInput(format!(
                    "batch encodes to {} bytes, the limit is {}; split it",
                    encoded.len(),
                    wal::MAX_RECORD_LEN
                )));
            }
            pending.push(Pending { ticket: 0, ops, encoded });
        }
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let seqs = self.commit(pending)?;
        if self.inner.version.read().mem.bytes() >= self.inner.opts.memtable_bytes {
            self.flush_inner(true)?;
        }
        Ok(seqs)
    }

    /// Group commit: the first waiting writer becomes leader, writes every queued batch
    /// with one write and one fsync, applies them in order, and wakes the others.
    fn commit(&self, batches: Vec<Pending>) -> Result<Vec<u64>> {
        let inner = &*self.inner;
        let mut st = inner.write.lock();
        if let Some(cause) = &st.poisoned {
            return Err(Error::Poisoned { collection: inner.name.clone(), cause: cause.clone() });
        }
        // The batches enter the queue together, so they commit in this order.
        let first_ticket = st.next_ticket;
        let last_ticket = first_ticket + batches.len() as u64 - 1;
        for mut p in batches {
            p.ticket = st.next_ticket;
            st.next_ticket += 1;
            st.queue.push_back(p);
        }
        loop {
            if st.results.contains_key(&last_ticket) {
                let mut seqs = Vec::new();
                let mut failure = None;
                for t in first_ticket..=last_ticket {
                    match st.results.remove(&t) {
                        Some(Ok(seq)) => seqs.push(seq),
                        Some(Err(f)) => failure = failure.or(Some(f)),
                        None => {}
                    }
                }
                return match failure {
                    Some(f) => Err(f.into_error(&inner.name)),
                    None => Ok(seqs),
                };
            }
            if st.leader {
                inner.cv.wait(&mut st);
                continue;
            }
            // Lead a group.
            st.leader = true;
            let mut group = Vec::new();
            let mut bytes = 0;
            while let Some(p) = st.queue.front() {
                if !group.is_empty() && bytes + p.encoded.len() > inner.opts.max_group_bytes {
                    break;
                }
                bytes += p.encoded.len();
                group.extend(st.queue.pop_front());
            }
            let first_seq = st.next_seq;
            let Some(mut wal) = st.wal.take() else {
                st.leader = false;
                return Err(Error::Poisoned { collection: inner.name.clone(), cause: "no open WAL".into() });
            };
            drop(st);
            let sync = inner.opts.durability == Durability::Always;
            let written = wal.append_group(first_seq, group.iter().map(|p| &p.encoded[..]), sync);
            if written.is_ok() {
                let mut v = inner.version.write();
                let mut next = (**v).clone();
                for (i, p) in group.iter().enumerate() {
                    next.mem.apply(first_seq + i as u64, &p.ops);
                }
                next.seq = first_seq + group.len() as u64 - 1;
                *v = Arc::new(next);
            }
            st = inner.write.lock();
            st.wal = Some(wal);
            match written {
                Ok(()) => {
                    st.next_seq = first_seq + group.len() as u64;
                    for (i, p) in group.iter().enumerate() {
                        st.results.insert(p.ticket, Ok(first_seq + i as u64));
                    }
                }
                Err(e) => {
                    // The page cache can't be trusted after a failed write or fsync: refuse
                    // further writes until the collection is reopened and the WAL replayed.
                    let failed = FailedWrite::of(&e);
                    st.poisoned = Some(e.to_string());
                    for p in &group {
                        st.results.insert(p.ticket, Err(failed.clone()));
                    }
                    for p in std::mem::take(&mut st.queue) {
                        st.results.insert(p.ticket, Err(failed.clone()));
                    }
                }
            }
            st.leader = false;
            inner.cv.notify_all();
        }
    }

    /// Takes the leader role (waiting for any group in flight), runs `f`, gives it back.
    fn with_writes_paused<T>(&self, f: impl FnOnce(&mut WriteState) -> Result<T>) -> Result<T> {
        let inner = &*self.inner;
        let mut st = inner.write.lock();
        while st.leader {
            inner.cv.wait(&mut st);
        }
        if let Some(cause) = &st.poisoned {
            return Err(Error::Poisoned { collection: inner.name.clone(), cause: cause.clone() });
        }
        let out = f(&mut st);
        inner.cv.notify_all();
        out
    }

    /// Makes every acknowledged write durable now (useful with `Buffered` durability).
    pub fn sync(&self) -> Result<()> {
        self.with_writes_paused(|st| match st.wal.as_mut() {
            Some(w) => w.sync(),
            None => Ok(()),
        })
    }

    /// Writes the memtable into a new segment and retires the WAL files it covers.
    /// Writers continue meanwhile into a fresh WAL file and memtable.
    pub fn flush(&self) -> Result<()> {
        self.flush_inner(false)
    }

    fn flush_inner(&self, only_if_full: bool) -> Result<()> {
        let inner = &*self.inner;
        let mut maint = inner.maint.lock();
        if only_if_full && inner.version.read().mem.bytes() < inner.opts.memtable_bytes {
            return Ok(()); // another writer flushed while this one waited
        }
        let storage = &*inner.storage;
        let wal_dir = inner.dir.join(WAL_DIR);
        // Freeze: rotate the WAL and move the memtable aside, atomically w.r.t. writers.
        let rotated = self.with_writes_paused(|st| {
            let v = inner.version.read().clone();
            if v.mem.is_empty() {
                return Ok(None);
            }
            if let Some(old) = st.wal.as_mut() {
                old.sync()?;
            }
            st.wal = Some(WalWriter::create(storage, &wal_dir, st.next_seq)?);
            let mut next = (*v).clone();
            let frozen = Arc::new(std::mem::take(&mut next.mem));
            next.imm.insert(0, frozen.clone());
            *inner.version.write() = Arc::new(next);
            Ok(Some((frozen, st.next_seq)))
        })?;
        let Some((frozen, new_wal_seq)) = rotated else {
            return Ok(());
        };
        let seg_ref = self.write_segment_file(
            &mut maint,
            frozen.range_from(None).map(|(k, e)| Ok((k.clone(), e.clone()))),
            new_wal_seq - 1,
            &[],
        )?;
        // Publish: the segment replaces the frozen memtable.
        let seg = Segment::open(storage, &inner.dir.join(SEG_DIR).join(segment_file_name(seg_ref.id)))?;
        {
            let mut v = inner.version.write();
            let mut next = (**v).clone();
            next.imm.retain(|m| !Arc::ptr_eq(m, &frozen));
            next.segments.insert(0, seg);
            *v = Arc::new(next);
        }
        drop(maint);
        self.retire_wal_files(new_wal_seq - 1)
    }

    /// Writes a segment file from sorted entries, then a manifest naming it (newest first)
    /// and the new `flushed_seq`; returns the manifest entry.
    fn write_segment_file(
        &self,
        maint: &mut Maintenance,
        entries: impl Iterator<Item = Result<(Key, Entry)>>,
        flushed_seq: u64,
        replaces: &[u64],
    ) -> Result<SegmentRef> {
        let inner = &*self.inner;
        let storage = &*inner.storage;
        let seg_dir = inner.dir.join(SEG_DIR);
        let id = maint.manifest.next_segment_id;
        let path = seg_dir.join(segment_file_name(id));
        let tmp = path.with_extension("seg.tmp");
        let info = write_segment(storage, &tmp, inner.config.dim, entries, inner.opts.segment)?;
        storage.rename(&tmp, &path).at(&path)?;
        storage.sync_dir(&seg_dir).at(&seg_dir)?;
        let seg_ref =
            SegmentRef { id, count: info.count, min_seq: info.min_seq, max_seq: info.max_seq, bytes: info.bytes };
        let mut next = maint.manifest.clone();
        next.next_segment_id = id + 1;
        next.flushed_seq = next.flushed_seq.max(flushed_seq);
        next.segments.retain(|s| !replaces.contains(&s.id));
        next.segments.insert(0, seg_ref.clone());
        next.store(storage, &inner.dir.join(MANIFEST))?;
        maint.manifest = next;
        Ok(seg_ref)
    }

    /// Removes (or archives) WAL files all of whose frames are folded into segments: a
    /// file goes when the file after it starts at or before `flushed_seq + 1`.
    fn retire_wal_files(&self, flushed_seq: u64) -> Result<()> {
        let inner = &*self.inner;
        let storage = &*inner.storage;
        let wal_dir = inner.dir.join(WAL_DIR);
        let mut files: Vec<(u64, String)> = storage
            .list_dir(&wal_dir)
            .at(&wal_dir)?
            .into_iter()
            .filter_map(|n| parse_wal_file_name(&n).map(|s| (s, n)))
            .collect();
        files.sort();
        let archive = inner.dir.join(ARCHIVE_DIR);
        let mut changed = false;
        for pair in files.windows(2) {
            let ((_, name), (next_first, _)) = (&pair[0], &pair[1]);
            if *next_first > flushed_seq + 1 {
                break;
            }
            let path = wal_dir.join(name);
            if inner.config.wal_archive {
                storage.create_dir_all(&archive).at(&archive)?;
                storage.rename(&path, &archive.join(name)).at(&path)?;
            } else {
                storage.remove_file(&path).at(&path)?;
            }
            changed = true;
        }
        if changed {
            storage.sync_dir(&wal_dir).at(&wal_dir)?;
            if inner.config.wal_archive {
                storage.sync_dir(&archive).at(&archive)?;
            }
        }
        Ok(())
    }

    /// Merges every segment (after flushing the memtable) into one, dropping deleted and
    /// overwritten records. Readers and writers continue meanwhile.
    pub fn compact(&self) -> Result<CompactReport> {
        self.flush()?;
        let inner = &*self.inner;
        let mut maint = inner.maint.lock();
        let v = inner.version.read().clone();
        let before: Vec<Arc<Segment>> = v.segments.clone();
        let entries_before: u64 = before.iter().map(|s| s.len() as u64).sum();
        let bytes_before: u64 = before.iter().map(|s| s.file_bytes() as u64).sum();
        if before.is_empty() {
            return Ok(CompactReport::default());
        }
        let only_segments = Snapshot::new(Arc::new(Version {
            seq: v.seq,
            mem: Memtable::default(),
            imm: Vec::new(),
            segments: before.clone(),
            dim: v.dim,
        }));
        // Every segment takes part, so tombstones have nothing left to shadow: drop them.
        let live = only_segments.entries().filter(|r| !matches!(r, Ok((_, e)) if e.record.is_none()));
        let flushed = maint.manifest.flushed_seq;
        let old_ids: Vec<u64> = maint.manifest.segments.iter().map(|s| s.id).collect();
        let seg_ref = self.write_segment_file(&mut maint, live, flushed, &old_ids)?;
        let seg = Segment::open(&*inner.storage, &inner.dir.join(SEG_DIR).join(segment_file_name(seg_ref.id)))?;
        {
            let mut cur = inner.version.write();
            let mut nv = (**cur).clone();
            nv.segments.retain(|s| !before.iter().any(|b| Arc::ptr_eq(b, s)));
            nv.segments.push(seg);
            *cur = Arc::new(nv);
        }
        let seg_dir = inner.dir.join(SEG_DIR);
        let names = inner.storage.list_dir(&seg_dir).at(&seg_dir)?;
        for old in &before {
            inner.storage.remove_file(old.path()).at(old.path())?;
            for companion in segment_companions(old.path(), &names) {
                inner.storage.remove_file(&companion).at(&companion)?;
            }
        }
        inner.storage.sync_dir(&seg_dir).at(&seg_dir)?;
        Ok(CompactReport {
            segments_before: before.len() as u64,
            entries_before,
            entries_after: seg_ref.count,
            bytes_before,
            bytes_after: seg_ref.bytes,
        })
    }

    /// Statistics (counts live records by a merged scan of keys).
    pub fn stats(&self) -> Result<Stats> {
        let snap = self.snapshot();
        let v = snap.version();
        let wal_dir = self.inner.dir.join(WAL_DIR);
        let mut wal_bytes = 0;
        for name in self.inner.storage.list_dir(&wal_dir).at(&wal_dir)? {
            if parse_wal_file_name(&name).is_some() {
                wal_bytes += self.inner.storage.file_len(&wal_dir.join(&name)).unwrap_or(0);
            }
        }
        Ok(Stats {
            name: self.inner.name.clone(),
            dim: self.inner.config.dim,
            metric: self.inner.config.metric.to_string(),
            records: snap.count()?,
            last_seq: v.seq,
            memtable_entries: (v.mem.len() + v.imm.iter().map(|m| m.len()).sum::<usize>()) as u64,
            memtable_bytes: (v.mem.bytes() + v.imm.iter().map(|m| m.bytes()).sum::<usize>()) as u64,
            segments: v.segments.len() as u64,
            segment_bytes: v.segments.iter().map(|s| s.file_bytes() as u64).sum(),
            segment_entries: v.segments.iter().map(|s| s.len() as u64).sum(),
            learned_index_bytes: v.segments.iter().map(|s| s.learned_index().size_bytes() as u64).sum(),
            wal_bytes,
        })
    }
}

/// What [`Collection::compact`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CompactReport {
    /// Segments merged.
    pub segments_before: u64,
    /// Entries in them (tombstones and old versions included).
    pub entries_before: u64,
    /// Entries in the merged segment.
    pub entries_after: u64,
    /// Bytes before.
    pub bytes_before: u64,
    /// Bytes after.
    pub bytes_after: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort for Buffered durability; Always has synced every acknowledged write.
        let st = self.write.get_mut();
        if st.poisoned.is_none()
            && let Some(w) = st.wal.as_mut()
        {
            let _ = w.sync();
        }
    }
}

/// Replays WAL frames newer than the manifest's `flushed_seq` into a memtable. Stops at
/// the first torn or corrupt frame: cuts that file there (keeping the cut bytes in
/// `wal/quarantine/`) and moves every later WAL file into quarantine unreplayed.
fn replay_wal(
    storage: &dyn Storage,
    wal_dir: &Path,
    manifest: &Manifest,
    report: &mut RecoveryReport,
) -> Result<(Memtable, u64)> {
    let mut files: Vec<(u64, String)> = storage
        .list_dir(wal_dir)
        .at(wal_dir)?
        .into_iter()
        .filter_map(|n| parse_wal_file_name(&n).map(|s| (s, n)))
        .collect();
    files.sort();
    let dim = manifest.config.dim;
    let mut mem = Memtable::default();
    let mut next = manifest.flushed_seq + 1;
    let mut stop: Option<usize> = None;
    for (i, (named_seq, name)) in files.iter().enumerate() {
        let path = wal_dir.join(name);
        let bytes = storage.read(&path).at(&path)?;
        let scan = wal::scan(&bytes);
        let mut cut: Option<(u64, String)> = scan.problem.clone();
        let mut valid_len = scan.valid_len;
        if scan.first_seq.is_some_and(|s| s != *named_seq) {
            cut = Some((8, format!("header names sequence {:?}, the file name {named_seq}", scan.first_seq)));
            valid_len = 0;
        }
        if cut.is_none() || valid_len > 0 {
            for frame in &scan.frames {
                if frame.seq < next {
                    continue; // already folded into a segment
                }
                if frame.seq > next {
                    cut = Some((frame.offset, format!("missing WAL records {next}..{}", frame.seq)));
                    valid_len = frame.offset;
                    break;
                }
                let payload_at = frame.offset + wal::FRAME_HEADER_LEN as u64;
                let ops = match decode_batch(frame.payload, payload_at) {
                    Ok(ops) => ops,
                    Err(e) => {
                        cut = Some((e.offset, format!("undecodable batch: {}", e.reason)));
                        valid_len = frame.offset;
                        break;
                    }
                };
                if let Some(bad) = ops.iter().find_map(|op| match op {
                    Op::Upsert(r) if r.vector.len() != dim => Some(r.vector.len()),
                    _ => None,
                }) {
                    cut = Some((payload_at, format!("batch has a vector of dimension {bad}, collection has {dim}")));
                    valid_len = frame.offset;
                    break;
                }
                report.replayed_batches += 1;
                report.replayed_ops += ops.len() as u64;
                mem.apply(frame.seq, &ops);
                next = frame.seq + 1;
            }
        }
        if let Some((offset, reason)) = cut {
            let quarantine = wal_dir.join(QUARANTINE_DIR);
            storage.create_dir_all(&quarantine).at(&quarantine)?;
            let cut_bytes = bytes.get(valid_len as usize..).unwrap_or_default();
            let is_header_only_tail = valid_len == 0 && bytes.len() < wal::WAL_HEADER_LEN && i + 1 == files.len();
            if !cut_bytes.is_empty() && !is_header_only_tail {
                let keep = quarantine.join(format!("{name}.at-{valid_len}.tail"));
                crate::storage::write_atomic(storage, &keep, cut_bytes).at(&keep)?;
            }
            if valid_len < wal::WAL_HEADER_LEN as u64 {
                storage.remove_file(&path).at(&path)?;
            } else {
                storage.truncate(&path, valid_len).at(&path)?;
            }
            if !is_header_only_tail {
                report.truncated = Some((path.clone(), offset, reason, cut_bytes.len() as u64));
            }
            stop = Some(i);
            break;
        }
    }
    if let Some(i) = stop {
        let quarantine = wal_dir.join(QUARANTINE_DIR);
        for (_, name) in &files[i + 1..] {
            let (from, to) = (wal_dir.join(name), quarantine.join(name));
            storage.rename(&from, &to).at(&from)?;
            report.quarantined.push(to);
        }
        storage.sync_dir(&quarantine).at(&quarantine)?;
        storage.sync_dir(wal_dir).at(wal_dir)?;
    }
    Ok((mem, next))
}

/// The companion files of `segment` among the directory entries `names`.
pub fn segment_companions(segment: &Path, names: &[String]) -> Vec<PathBuf> {
    let Some(stem) = segment.file_stem().and_then(|s| s.to_str()) else { return Vec::new() };
    let dir = crate::storage::parent_of(segment);
    names
        .iter()
        .filter(|n| n.split_once('.').is_some_and(|(s, ext)| s == stem && ext != "seg"))
        .map(|n| dir.join(n))
        .collect()
}

/// Path of a segment's companion file with extension `ext` (`seg/00000007.idx`): derived
/// data (search indexes) that is removed with the segment and rebuilt when missing.
pub fn segment_companion(segment: &Path, ext: &str) -> PathBuf {
    segment.with_extension(ext)
}

/// Name of the WAL file a collection would create for `first_seq` (for tools and tests).
pub fn wal_path(collection_dir: &Path, first_seq: u64) -> PathBuf {
    collection_dir.join(WAL_DIR).join(wal_file_name(first_seq))
}
