//! A collection: WAL + memtable + segments behind one write path with group commit, and
//! immutable versions that readers snapshot without blocking writers.

use crate::error::{Error, IoContext, Result};
use crate::manifest::{CollectionConfig, Manifest, SegmentRef, segment_file_name};
use crate::memtable::{Entry, Key, Memtable};
use crate::record::{Op, Record, decode_batch, encode_batch, validate_id, validate_record};
use crate::segment::{Segment, SegmentOptions, write_segment_keeping};
use crate::snapshot::{Snapshot, Version};
use crate::storage::{Mapped, Storage};
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
    /// What the WAL held after its clean prefix (a torn tail, or damage accepted with
    /// `recover --accept-loss`); in a read-only open it is left in place, not cut.
    pub loss: Option<WalLoss>,
    /// Why the cut bytes could not be kept in `wal/quarantine/` (a full disk): they were
    /// an interrupted write, never acknowledged, and are gone.
    pub not_kept: Option<String>,
}

/// What follows the clean prefix of a collection's WAL: where it ends, and what would be
/// dropped by cutting there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WalLoss {
    /// The WAL file holding the first bad frame.
    pub file: PathBuf,
    /// Offset of the first bad byte (or of the bad frame).
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
    /// Where `file` is cut: the end of its last good frame.
    pub cut_at: u64,
    /// Bytes of `file` from `cut_at` to its end.
    pub bytes: u64,
    /// Later WAL files, never replayed past the bad frame.
    pub later_files: Vec<PathBuf>,
    /// Their bytes.
    pub later_bytes: u64,
    /// Intact frames (checksums match) among the dropped bytes: acknowledged writes that
    /// a cut would lose. Zero means a torn tail (an interrupted write).
    pub intact_frames: u64,
    /// Lowest and highest sequence number of those frames.
    pub seqs: Option<(u64, u64)>,
}

impl WalLoss {
    /// True when intact frames follow the bad one: damage, not an interrupted write.
    pub fn is_damage(&self) -> bool {
        self.intact_frames > 0
    }
}

impl std::fmt::Display for WalLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at offset {}: {}; ", self.file.display(), self.offset, self.reason)?;
        write!(f, "cutting at offset {} drops {} bytes of that file", self.cut_at, self.bytes)?;
        if !self.later_files.is_empty() {
            write!(f, " and {} later WAL files ({} bytes)", self.later_files.len(), self.later_bytes)?;
        }
        match self.seqs {
            Some((lo, hi)) => {
                write!(f, ", holding {} intact frames (sequence numbers {lo}..={hi})", self.intact_frames)
            }
            None => write!(f, ", holding no intact frame (a torn tail)"),
        }
    }
}

/// Whether a collection is serving.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum Health {
    /// Reads and writes work.
    Ok,
    /// Reads and writes work, but the last flush of the memtable to a segment failed;
    /// the writes are durable in the WAL and the flush is retried.
    FlushFailing(String),
    /// A WAL write or fsync failed: reads work, writes are refused until reopened.
    Poisoned(String),
    /// Not open: its files are damaged (see `kernelize recover`).
    Unavailable(String),
}

impl Health {
    /// True when the collection can take writes and answer reads.
    pub fn is_serving(&self) -> bool {
        matches!(self, Health::Ok | Health::FlushFailing(_))
    }
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
    /// Flushes that failed since the collection was opened (writes stay durable in the
    /// WAL; the flush is retried).
    pub flush_failures: u64,
    /// The error of the last flush, when it failed (cleared by a successful flush).
    pub last_flush_error: Option<String>,
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

/// Failed flushes: counted, the last error kept, retried no sooner than a second later.
#[derive(Default)]
struct FlushHealth {
    failures: u64,
    last_error: Option<String>,
    last_failure: Option<std::time::Instant>,
}

/// How a collection is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Recovery cuts a torn WAL tail; damage (intact frames after a bad one) refuses.
    Write,
    /// As `Write`, but damage is cut and quarantined too (`recover --accept-loss`).
    AcceptLoss,
    /// Nothing is written: the WAL is replayed in memory as far as it is clean.
    ReadOnly,
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
    flush_health: Mutex<FlushHealth>,
    read_only: bool,
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
/// Image and audio files kept beside the collection (`Collection::put_media`).
const MEDIA_DIR: &str = "media";
const ARCHIVE_DIR: &str = "wal-archive";
const QUARANTINE_DIR: &str = "quarantine";

/// Creates the files of a new, empty collection in `dir` (which must not exist), durably.
pub(crate) fn create_files(storage: &dyn Storage, dir: &Path, config: &CollectionConfig) -> Result<()> {
    storage.create_dir_all(&dir.join(WAL_DIR)).at(dir)?;
    storage.create_dir_all(&dir.join(SEG_DIR)).at(dir)?;
    Manifest::new(config.clone()).store(storage, &dir.join(MANIFEST))
}

impl Collection {
    /// Opens a collection directory, running crash recovery. A torn WAL tail (an
    /// interrupted write) is cut and kept in `wal/quarantine/`; damage (a bad frame with
    /// intact frames after it) is refused with a corruption error naming file and offset,
    /// and nothing on disk is changed.
    pub fn open(storage: Arc<dyn Storage>, dir: &Path, name: &str, opts: Options) -> Result<Collection> {
        Collection::open_mode(storage, dir, name, opts, OpenMode::Write)
    }

    pub(crate) fn open_mode(
        storage: Arc<dyn Storage>,
        dir: &Path,
        name: &str,
        opts: Options,
        mode: OpenMode,
    ) -> Result<Collection> {
        if mode != OpenMode::ReadOnly {
            return Collection::open_writable(storage, dir, name, opts, mode);
        }
        // A writer may flush, compact or retire WAL files meanwhile: read the manifest,
        // the segments and the WAL, then check the manifest did not change; else again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Collection::try_open_read_only(storage.clone(), dir, name, opts) {
                Ok(Some(c)) => return Ok(c),
                Ok(None) if attempt < 20 => {}
                Err(e) if attempt < 20 && is_vanished(&e) => {}
                Ok(None) => {
                    return Err(Error::Io {
                        path: dir.to_path_buf(),
                        source: std::io::Error::other("the collection kept changing while it was read; try again"),
                    });
                }
                Err(e) => return Err(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(10 * attempt));
        }
    }

    /// One attempt at a consistent read-only view; None when a writer changed the
    /// manifest meanwhile.
    fn try_open_read_only(
        storage: Arc<dyn Storage>,
        dir: &Path,
        name: &str,
        opts: Options,
    ) -> Result<Option<Collection>> {
        let mpath = dir.join(MANIFEST);
        let before = storage.read(&mpath).ok();
        let manifest = Manifest::load(&*storage, &mpath)?;
        let segments = open_segments(&*storage, dir, &manifest)?;
        let plan = plan_replay(&*storage, &dir.join(WAL_DIR), &manifest)?;
        if storage.read(&mpath).ok() != before {
            return Ok(None);
        }
        if let Some(loss) = plan.loss.as_ref().filter(|l| l.is_damage()) {
            return Err(damage_error(name, loss));
        }
        let report = RecoveryReport {
            replayed_batches: plan.replayed_batches,
            replayed_ops: plan.replayed_ops,
            loss: plan.loss,
            ..RecoveryReport::default()
        };
        Ok(Some(Collection::assemble(
            storage, dir, name, opts, manifest, segments, plan.mem, plan.next, None, report, true,
        )))
    }

    fn open_writable(
        storage: Arc<dyn Storage>,
        dir: &Path,
        name: &str,
        opts: Options,
        mode: OpenMode,
    ) -> Result<Collection> {
        let manifest = Manifest::load(&*storage, &dir.join(MANIFEST))?;
        let segments = open_segments(&*storage, dir, &manifest)?;
        let seg_dir = dir.join(SEG_DIR);
        let wal_dir = dir.join(WAL_DIR);
        // Decide before changing anything: damage is left exactly as found.
        let plan = plan_replay(&*storage, &wal_dir, &manifest)?;
        if let Some(loss) = plan.loss.as_ref().filter(|l| l.is_damage())
            && mode != OpenMode::AcceptLoss
        {
            return Err(damage_error(name, loss));
        }
        let mut report = RecoveryReport {
            replayed_batches: plan.replayed_batches,
            replayed_ops: plan.replayed_ops,
            ..RecoveryReport::default()
        };
        for d in [&seg_dir, &wal_dir] {
            if !storage.exists(d).at(d)? {
                storage.create_dir_all(d).at(d)?;
            }
        }

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
        apply_cut(&*storage, &wal_dir, &plan, &mut report)?;
        // On a full disk the new WAL file may not fit: open anyway (reads work) and create
        // it on the first write.
        let wal = WalWriter::create(&*storage, &wal_dir, plan.next).ok();
        let flushed = manifest.flushed_seq;
        let c =
            Collection::assemble(storage, dir, name, opts, manifest, segments, plan.mem, plan.next, wal, report, false);
        // Best effort: files left for later are retired by the next flush.
        let _ = c.retire_wal_files(flushed);
        Ok(c)
    }

    #[expect(clippy::too_many_arguments, reason = "one private constructor")]
    fn assemble(
        storage: Arc<dyn Storage>,
        dir: &Path,
        name: &str,
        opts: Options,
        manifest: Manifest,
        segments: Vec<Arc<Segment>>,
        mem: Memtable,
        next_seq: u64,
        wal: Option<WalWriter>,
        report: RecoveryReport,
        read_only: bool,
    ) -> Collection {
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
                wal,
                next_seq,
                next_ticket: 0,
                results: HashMap::new(),
                poisoned: None,
            }),
            cv: Condvar::new(),
            maint: Mutex::new(Maintenance { manifest }),
            recovery: report,
            flush_health: Mutex::new(FlushHealth::default()),
            read_only,
        };
        Collection { inner: Arc::new(inner) }
    }

    /// What the WAL of the collection in `dir` holds after its clean prefix, read without
    /// changing anything (what `kernelize recover` reports).
    pub fn inspect_wal(storage: &dyn Storage, dir: &Path) -> Result<Option<WalLoss>> {
        let manifest = Manifest::load(storage, &dir.join(MANIFEST))?;
        Ok(plan_replay(storage, &dir.join(WAL_DIR), &manifest)?.loss)
    }

    /// Whether the collection serves reads and writes (see [`Health`]).
    pub fn health(&self) -> Health {
        if let Some(cause) = &self.inner.write.lock().poisoned {
            return Health::Poisoned(cause.clone());
        }
        match &self.inner.flush_health.lock().last_error {
            Some(e) => Health::FlushFailing(e.clone()),
            None => Health::Ok,
        }
    }

    /// True when opened read-only (a snapshot as of open; writes are refused).
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    fn refuse_if_read_only(&self) -> Result<()> {
        if self.inner.read_only {
            return Err(Error::ReadOnly(format!(
                "collection {} was opened read-only (a snapshot as of open); writes, flushes and compactions need the writer",
                self.inner.name
            )));
        }
        Ok(())
    }

    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its fixed configuration.
    pub fn config(&self) -> &CollectionConfig {
        &self.inner.config
    }

    /// Keeps an image or audio file beside the collection, under its SHA-256 (64 lowercase
    /// hex digits): `media/<sha256>`, written atomically through the collection's storage
    /// (so sealed when the data directory is encrypted). A file already kept is not
    /// written again. Records name their file in `metadata.media.sha256`.
    pub fn put_media(&self, sha256: &str, bytes: &[u8]) -> Result<()> {
        if self.inner.read_only {
            return Err(Error::InvalidInput("the collection is open read-only".into()));
        }
        let path = self.media_path(sha256)?;
        let storage = &*self.inner.storage;
        if storage.exists(&path).at(&path)? {
            return Ok(());
        }
        let dir = self.inner.dir.join(MEDIA_DIR);
        storage.create_dir_all(&dir).at(&dir)?;
        crate::storage::write_atomic(storage, &path, bytes).at(&path)
    }

    /// The kept file of that SHA-256, if any ([`Collection::put_media`]).
    pub fn media(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        let path = self.media_path(sha256)?;
        let storage = &*self.inner.storage;
        if !storage.exists(&path).at(&path)? {
            return Ok(None);
        }
        storage.read(&path).at(&path).map(Some)
    }

    fn media_path(&self, sha256: &str) -> Result<PathBuf> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::InvalidInput(format!(
                "media name {sha256:?} is not a SHA-256 (64 lowercase hex digits)"
            )));
        }
        Ok(self.inner.dir.join(MEDIA_DIR).join(sha256))
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
        self.refuse_if_read_only()?;
        // The batches are durable once committed: a failing flush after that does not
        // change the outcome. It is counted, kept for `health()`/`stats()`, and retried.
        let seqs = self.commit(pending)?;
        if self.flush_due() {
            let _ = self.flush_inner(true);
        }
        Ok(seqs)
    }

    /// Whether a write should flush now: the memtable is full, or an earlier flush failed
    /// (retried at most once a second, so a full disk is not hammered).
    fn flush_due(&self) -> bool {
        let h = self.inner.flush_health.lock();
        if h.last_failure.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
            return false;
        }
        h.last_error.is_some() || self.inner.version.read().mem.bytes() >= self.inner.opts.memtable_bytes
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
            let mut wal = match st.wal.take() {
                Some(w) => w,
                // Not created at open (a full disk): create it now; failing that, the group
                // fails without poisoning (nothing was written).
                None => match WalWriter::create(&*inner.storage, &inner.dir.join(WAL_DIR), first_seq) {
                    Ok(w) => w,
                    Err(e) => {
                        let failed = FailedWrite::of(&e);
                        for p in group {
                            st.results.insert(p.ticket, Err(failed.clone()));
                        }
                        st.leader = false;
                        inner.cv.notify_all();
                        continue;
                    }
                },
            };
            drop(st);
            let sync = inner.opts.durability == Durability::Always;
            let written = wal.append_group(first_seq, group.iter().map(|p| &p.encoded[..]), sync);
            if written.is_ok() {
                let mut v = inner.version.write();
                // In place when no reader holds this version (then the memtable's nodes are
                // not shared either and inserts copy nothing); a copy when one does, so its
                // snapshot never changes.
                let next = Arc::make_mut(&mut *v);
                for (i, p) in group.iter().enumerate() {
                    next.mem.apply(first_seq + i as u64, &p.ops);
                }
                next.seq = first_seq + group.len() as u64 - 1;
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

    fn refuse_if_poisoned(&self) -> Result<()> {
        match &self.inner.write.lock().poisoned {
            Some(cause) => Err(Error::Poisoned { collection: self.inner.name.clone(), cause: cause.clone() }),
            None => Ok(()),
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
        self.refuse_if_read_only()?;
        self.with_writes_paused(|st| match st.wal.as_mut() {
            Some(w) => w.sync(),
            None => Ok(()),
        })
    }

    /// Writes the memtable into a new segment and retires the WAL files it covers.
    /// Writers continue meanwhile into a fresh WAL file and memtable.
    pub fn flush(&self) -> Result<()> {
        self.refuse_if_read_only()?;
        self.flush_inner(false)
    }

    fn flush_inner(&self, only_if_due: bool) -> Result<()> {
        let inner = &*self.inner;
        let maint = inner.maint.lock();
        if only_if_due && !self.flush_due() {
            return Ok(()); // another writer flushed while this one waited
        }
        let out = self.flush_locked(maint);
        let mut h = inner.flush_health.lock();
        match &out {
            Ok(()) => {
                h.last_error = None;
                h.last_failure = None;
            }
            Err(e) => {
                h.failures += 1;
                h.last_error = Some(e.to_string());
                h.last_failure = Some(std::time::Instant::now());
            }
        }
        out
    }

    fn flush_locked(&self, mut maint: parking_lot::MutexGuard<'_, Maintenance>) -> Result<()> {
        let inner = &*self.inner;
        let storage = &*inner.storage;
        let wal_dir = inner.dir.join(WAL_DIR);
        // Freeze: rotate the WAL and move the memtable aside, atomically w.r.t. writers.
        // Memtables frozen by earlier flushes that failed are written too: the new
        // `flushed_seq` covers them, so leaving them out would lose them on reopen.
        let rotated = self.with_writes_paused(|st| {
            let v = inner.version.read().clone();
            if v.mem.is_empty() && v.imm.is_empty() {
                return Ok(None);
            }
            if v.mem.is_empty() {
                return Ok(Some((v.imm.clone(), st.next_seq)));
            }
            if let Some(old) = st.wal.as_mut()
                && let Err(e) = old.sync()
            {
                st.poisoned = Some(e.to_string());
                return Err(e);
            }
            st.wal = Some(WalWriter::create(storage, &wal_dir, st.next_seq)?);
            let mut next = (*v).clone();
            let frozen = Arc::new(std::mem::take(&mut next.mem));
            next.imm.insert(0, frozen);
            let imms = next.imm.clone();
            *inner.version.write() = Arc::new(next);
            Ok(Some((imms, st.next_seq)))
        })?;
        let Some((frozen, new_wal_seq)) = rotated else {
            return Ok(());
        };
        let merged = Snapshot::new(Arc::new(Version {
            seq: new_wal_seq - 1,
            mem: Memtable::default(),
            imm: frozen.clone(),
            segments: Vec::new(),
            dim: inner.config.dim,
        }));
        // Memtables count more bytes per record than a segment takes (+ header, padding).
        let expected = frozen.iter().map(|m| m.bytes()).sum::<usize>() + (1 << 20);
        let (_, seg) = self.write_segment_file(&mut maint, merged.entries(), new_wal_seq - 1, &[], expected)?;
        // Publish: the segment replaces the frozen memtables.
        {
            let mut v = inner.version.write();
            let mut next = (**v).clone();
            next.imm.retain(|m| !frozen.iter().any(|f| Arc::ptr_eq(m, f)));
            next.segments.insert(0, seg);
            *v = Arc::new(next);
        }
        drop(maint);
        self.retire_wal_files(new_wal_seq - 1)
    }

    /// Writes a segment file from sorted entries, then a manifest naming it (newest first)
    /// and the new `flushed_seq`; returns the manifest entry and the opened segment.
    /// `expected_bytes`: about how large the segment will be (room reserved for it when
    /// its plaintext is kept).
    fn write_segment_file(
        &self,
        maint: &mut Maintenance,
        entries: impl Iterator<Item = Result<(Key, Entry)>>,
        flushed_seq: u64,
        replaces: &[u64],
        expected_bytes: usize,
    ) -> Result<(SegmentRef, Arc<Segment>)> {
        let inner = &*self.inner;
        let storage = &*inner.storage;
        let seg_dir = inner.dir.join(SEG_DIR);
        // A sealed file would be read back and decrypted to be opened: keep the plaintext
        // just written instead (every byte on disk is sealed all the same).
        let keep = storage.encryption().is_some().then_some(expected_bytes);
        let id = maint.manifest.next_segment_id;
        let path = seg_dir.join(segment_file_name(id));
        let tmp = path.with_extension("seg.tmp");
        // A failure leaves nothing behind: the temporary file (up to a whole segment) and
        // a renamed but never named segment are removed at once, not at the next open.
        let written = write_segment_keeping(storage, &tmp, inner.config.dim, entries, inner.opts.segment, keep)
            .and_then(|written| {
                storage.rename(&tmp, &path).at(&path)?;
                storage.sync_dir(&seg_dir).at(&seg_dir)?;
                Ok(written)
            });
        let (info, plain) = match written {
            Ok(info) => info,
            Err(e) => {
                let _ = storage.remove_file(&tmp);
                let _ = storage.remove_file(&path);
                return Err(e);
            }
        };
        let seg_ref =
            SegmentRef { id, count: info.count, min_seq: info.min_seq, max_seq: info.max_seq, bytes: info.bytes };
        let mut next = maint.manifest.clone();
        next.next_segment_id = id + 1;
        next.flushed_seq = next.flushed_seq.max(flushed_seq);
        next.segments.retain(|s| !replaces.contains(&s.id));
        next.segments.insert(0, seg_ref.clone());
        match next.store_or_clean(storage, &inner.dir.join(MANIFEST)) {
            Ok(()) => {}
            Err((e, false)) => {
                let _ = storage.remove_file(&path);
                return Err(e);
            }
            Err((e, true)) => {
                // The new manifest is in place but its directory fsync failed: keep it as
                // the state, and refuse writes until reopened (a failed fsync is fatal).
                maint.manifest = next;
                self.inner.write.lock().poisoned = Some(e.to_string());
                return Err(e);
            }
        }
        maint.manifest = next;
        let seg = match plain {
            Some(bytes) => Arc::new(Segment::from_mapped(&path, Mapped::new(bytes))?),
            None => Segment::open(storage, &path)?,
        };
        Ok((seg_ref, seg))
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
        self.refuse_if_poisoned()?;
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
        let expected = bytes_before as usize + (1 << 20);
        let (seg_ref, seg) = self.write_segment_file(&mut maint, live, flushed, &old_ids, expected)?;
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
        for name in self.inner.storage.list_dir(&wal_dir).unwrap_or_default() {
            if parse_wal_file_name(&name).is_some() {
                wal_bytes += self.inner.storage.file_len(&wal_dir.join(&name)).unwrap_or(0);
            }
        }
        let (flush_failures, last_flush_error) = {
            let h = self.inner.flush_health.lock();
            (h.failures, h.last_error.clone())
        };
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
            flush_failures,
            last_flush_error,
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

/// The segments a manifest names, opened and checked.
fn open_segments(storage: &dyn Storage, dir: &Path, manifest: &Manifest) -> Result<Vec<Arc<Segment>>> {
    let seg_dir = dir.join(SEG_DIR);
    let mut segments = Vec::with_capacity(manifest.segments.len());
    for s in &manifest.segments {
        let seg = Segment::open(storage, &seg_dir.join(segment_file_name(s.id)))?;
        if seg.dim() != manifest.config.dim {
            return Err(Error::corrupt(seg.path(), 12, "segment dimension differs from the collection's"));
        }
        segments.push(seg);
    }
    Ok(segments)
}

/// A file that a concurrent writer removed or replaced while a reader looked.
fn is_vanished(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// The error of a collection whose WAL is damaged: file, offset, and what a cut drops.
fn damage_error(name: &str, loss: &WalLoss) -> Error {
    Error::corrupt(
        &loss.file,
        loss.offset,
        format!(
            "{}; intact frames follow it, so this is damage, not an interrupted write: {loss}. \
             The collection {name} is not opened and nothing was changed; restore it from a backup \
             (with its archived WAL), or drop those frames with `kernelize recover --collection {name} --accept-loss`",
            loss.reason
        ),
    )
}

/// What replaying the WAL yields, decided before anything on disk changes.
struct ReplayPlan {
    mem: Memtable,
    next: u64,
    replayed_batches: u64,
    replayed_ops: u64,
    loss: Option<WalLoss>,
    /// The cut: index of the bad file, its name, its bytes and the clean prefix length.
    cut: Option<Cut>,
    /// Later files (names), moved to quarantine by the cut.
    later: Vec<String>,
}

struct Cut {
    name: String,
    bytes: Vec<u8>,
    valid_len: u64,
    /// A last file whose header alone is torn: removed without a trace.
    header_only_tail: bool,
}

/// Replays WAL frames newer than the manifest's `flushed_seq` into a memtable, changing
/// nothing: stops at the first torn or corrupt frame and describes what follows it.
/// Files are read last first: a file that has a successor was complete before the
/// successor was created, so a reader beside a writer sees a torn tail only at the end.
fn plan_replay(storage: &dyn Storage, wal_dir: &Path, manifest: &Manifest) -> Result<ReplayPlan> {
    let mut plan = ReplayPlan {
        mem: Memtable::default(),
        next: manifest.flushed_seq + 1,
        replayed_batches: 0,
        replayed_ops: 0,
        loss: None,
        cut: None,
        later: Vec::new(),
    };
    if !storage.exists(wal_dir).at(wal_dir)? {
        return Ok(plan);
    }
    let mut files: Vec<(u64, String)> = storage
        .list_dir(wal_dir)
        .at(wal_dir)?
        .into_iter()
        .filter_map(|n| parse_wal_file_name(&n).map(|s| (s, n)))
        .collect();
    files.sort();
    let mut contents = Vec::with_capacity(files.len());
    for (_, name) in files.iter().rev() {
        let path = wal_dir.join(name);
        contents.push(storage.read(&path).at(&path)?);
    }
    contents.reverse();
    let dim = manifest.config.dim;
    let mut next = plan.next;
    for (i, (named_seq, name)) in files.iter().enumerate() {
        let bytes = &contents[i];
        let scan = wal::scan(bytes);
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
                plan.replayed_batches += 1;
                plan.replayed_ops += ops.len() as u64;
                plan.mem.apply(frame.seq, &ops);
                next = frame.seq + 1;
            }
        }
        if let Some((offset, reason)) = cut {
            let header_only_tail = valid_len == 0 && bytes.len() < wal::WAL_HEADER_LEN && i + 1 == files.len();
            let path = wal_dir.join(name);
            let from = usize::try_from(valid_len).unwrap_or(usize::MAX).min(bytes.len());
            let (mut frames, mut seqs) = wal::intact_frames_from(bytes, from, next);
            let mut later_bytes = 0;
            for later in &contents[i + 1..] {
                later_bytes += later.len() as u64;
                let (n, range) = wal::intact_frames_from(later, 0, next);
                frames += n;
                seqs = match (seqs, range) {
                    (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
                    (x, y) => x.or(y),
                };
            }
            if !header_only_tail {
                plan.loss = Some(WalLoss {
                    file: path,
                    offset,
                    reason,
                    cut_at: valid_len,
                    bytes: (bytes.len() - from) as u64,
                    later_files: files[i + 1..].iter().map(|(_, n)| wal_dir.join(n)).collect(),
                    later_bytes,
                    intact_frames: frames,
                    seqs,
                });
            }
            plan.later = files[i + 1..].iter().map(|(_, n)| n.clone()).collect();
            plan.cut = Some(Cut { name: name.clone(), bytes: contents[i].clone(), valid_len, header_only_tail });
            break;
        }
    }
    plan.next = next;
    Ok(plan)
}

/// Carries out a plan's cut: the bad file is cut at its clean prefix (the cut bytes kept
/// in `wal/quarantine/` when there is room), later files are moved into quarantine.
fn apply_cut(storage: &dyn Storage, wal_dir: &Path, plan: &ReplayPlan, report: &mut RecoveryReport) -> Result<()> {
    let Some(cut) = &plan.cut else { return Ok(()) };
    let quarantine = wal_dir.join(QUARANTINE_DIR);
    let path = wal_dir.join(&cut.name);
    let damage = plan.loss.as_ref().is_some_and(WalLoss::is_damage);
    let have_quarantine = storage.exists(&quarantine).at(&quarantine)? || storage.create_dir_all(&quarantine).is_ok();
    let cut_bytes = cut.bytes.get(cut.valid_len as usize..).unwrap_or_default();
    if !cut_bytes.is_empty() && !cut.header_only_tail {
        let keep = quarantine.join(format!("{}.at-{}.tail", cut.name, cut.valid_len));
        let kept = if have_quarantine {
            crate::storage::write_atomic(storage, &keep, cut_bytes).inspect_err(|_| {
                let _ = storage.remove_file(&keep.with_extension("tmp"));
            })
        } else {
            Err(std::io::Error::other(format!("cannot create {}", quarantine.display())))
        };
        if let Err(e) = kept {
            if damage {
                // Intact frames are only dropped when a copy of them is kept.
                return Err(Error::io(&keep, e));
            }
            report.not_kept = Some(format!("{}: {e}", keep.display()));
        }
    }
    if cut.valid_len < wal::WAL_HEADER_LEN as u64 {
        storage.remove_file(&path).at(&path)?;
    } else {
        storage.truncate(&path, cut.valid_len).at(&path)?;
    }
    if let Some(loss) = &plan.loss {
        report.truncated = Some((path.clone(), loss.offset, loss.reason.clone(), cut_bytes.len() as u64));
    }
    report.loss = plan.loss.clone();
    for name in &plan.later {
        let (from, to) = (wal_dir.join(name), quarantine.join(name));
        if have_quarantine {
            storage.rename(&from, &to).at(&from)?;
            report.quarantined.push(to);
        } else if !damage {
            // No intact frame in it (else this would be damage) and no room to keep it.
            storage.remove_file(&from).at(&from)?;
        } else {
            return Err(Error::io(&quarantine, std::io::Error::other("cannot create the quarantine directory")));
        }
    }
    if have_quarantine && !plan.later.is_empty() {
        storage.sync_dir(&quarantine).at(&quarantine)?;
    }
    storage.sync_dir(wal_dir).at(wal_dir)?;
    Ok(())
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
