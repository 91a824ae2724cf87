//! Online backups, restore with point-in-time WAL replay, and verification of data
//! directories, backup directories and backup tarballs. Layout: `docs/format/backup.md`.

use crate::collection::Collection;
use crate::database::Database;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{Manifest, SegmentRef, segment_file_name};
use crate::record::decode_batch;
use crate::segment::{Segment, write_segment};
use crate::storage::file::{create_private, create_private_dir_all};
use crate::storage::{EncryptedStorage, Mapped, MemStorage, Storage, is_sealed};
use crate::wal::{self, parse_wal_file_name};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

const BACKUP_FILE: &str = "BACKUP.json";

/// Where a backup goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupFormat {
    /// A directory tree.
    Dir,
    /// One uncompressed `.tar` file with the same tree.
    Tar,
}

/// What a backup holds, per collection (stored as `BACKUP.json`, written last).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupReport {
    /// Format version (1).
    pub format: u32,
    /// Unix seconds when the backup started.
    pub created_unix: u64,
    /// Collections, with the sequence number each snapshot is consistent at.
    pub collections: Vec<BackupEntry>,
    /// Total bytes written.
    pub bytes: u64,
}

/// One collection in a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupEntry {
    /// Name.
    pub name: String,
    /// Every write up to this sequence number is in the backup, none after.
    pub seq: u64,
    /// Segment files.
    pub segments: u64,
}

enum Sink {
    Dir(PathBuf, Vec<PathBuf>),
    Tar(tar::Builder<fs_err::File>),
}

impl Sink {
    fn put(&mut self, rel: &str, bytes: &[u8]) -> Result<()> {
        match self {
            Sink::Dir(root, dirs) => {
                let path = root.join(rel);
                let parent = crate::storage::parent_of(&path).to_path_buf();
                create_private_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
                let mut f = create_private(&path).map_err(|e| Error::io(&path, e))?;
                std::io::Write::write_all(&mut f, bytes).map_err(|e| Error::io(&path, e))?;
                f.sync_all().map_err(|e| Error::io(&path, e))?;
                if !dirs.contains(&parent) {
                    dirs.push(parent);
                }
                Ok(())
            }
            Sink::Tar(b) => {
                let mut h = tar::Header::new_gnu();
                h.set_size(bytes.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(now_unix());
                h.set_cksum();
                b.append_data(&mut h, rel, bytes).map_err(|e| Error::io(rel, e))
            }
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            Sink::Dir(root, dirs) => {
                for d in dirs.iter().chain([&root]) {
                    fs_err::File::open(d).and_then(|f| f.sync_all()).map_err(|e| Error::io(d, e))?;
                }
                Ok(())
            }
            Sink::Tar(b) => {
                let f = b.into_inner().map_err(|e| Error::io("tar", e))?;
                f.sync_all().map_err(|e| Error::io(f.path(), e))
            }
        }
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Writes a consistent online snapshot of the named collections (all when `names` is
/// empty) while writes continue: each collection is captured at one sequence number.
/// Immutable segments are copied from their mapped bytes; the memtable is written as
/// one more segment. `BACKUP.json` is written last, so a partial backup is never valid.
pub fn backup(
    db: &Database,
    dest: &Path,
    format: BackupFormat,
    names: &[String],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BackupReport> {
    if dest.exists() {
        return Err(Error::AlreadyExists(format!("backup destination {}", dest.display())));
    }
    let collections: Vec<Collection> = if names.is_empty() {
        db.collections()
    } else {
        names.iter().map(|n| db.collection(n)).collect::<Result<_>>()?
    };
    // Written under a temporary name beside the destination and renamed when complete,
    // so the destination never holds a partial backup.
    let file_name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "backup".into());
    let partial = dest.with_file_name(format!(".{file_name}.partial-{}", std::process::id()));
    let result = write_backup(db.storage().encryption(), &collections, &partial, format, progress);
    let result = result.and_then(|report| {
        fs_err::rename(&partial, dest).map_err(|e| Error::io(dest, e))?;
        let parent = crate::storage::parent_of(dest);
        fs_err::File::open(parent).and_then(|f| f.sync_all()).map_err(|e| Error::io(parent, e))?;
        Ok(report)
    });
    if result.is_err() {
        let _ = match format {
            BackupFormat::Dir => fs_err::remove_dir_all(&partial),
            BackupFormat::Tar => fs_err::remove_file(&partial),
        };
    }
    result
}

fn write_backup(
    enc: Option<&EncryptedStorage>,
    collections: &[Collection],
    dest: &Path,
    format: BackupFormat,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BackupReport> {
    let mut sink = match format {
        BackupFormat::Dir => {
            create_private_dir_all(dest).map_err(|e| Error::io(dest, e))?;
            Sink::Dir(dest.to_path_buf(), Vec::new())
        }
        BackupFormat::Tar => Sink::Tar(tar::Builder::new(create_private(dest).map_err(|e| Error::io(dest, e))?)),
    };
    let snaps: Vec<_> = collections.iter().map(|c| (c, c.snapshot())).collect();
    let total: u64 = snaps.iter().flat_map(|(_, s)| s.segments()).map(|s| s.file_bytes() as u64).sum();
    let mut done = 0u64;
    let mut report = BackupReport { format: 1, created_unix: now_unix(), collections: Vec::new(), bytes: 0 };
    // An encrypted data directory writes sealed backups under the collections' data keys
    // (the keys stay in the data directory: see docs/format/encryption.md).
    let seal = |name: &str, bytes: &[u8]| -> Result<std::borrow::Cow<'_, [u8]>> {
        Ok(match enc {
            Some(e) => e.seal(name, bytes)?.into(),
            None => bytes.to_vec().into(),
        })
    };
    for (c, snap) in &snaps {
        let base = format!("collections/{}", c.name());
        let n = snap.segments().len() as u64;
        let mut manifest = Manifest::new(c.config().clone());
        manifest.flushed_seq = snap.seq();
        // Memtable contents (with tombstones: older segments may hold what they delete).
        let mem = MemStorage::new();
        let tmp = Path::new("mem");
        let mem_entries = snap.memtable_entries();
        let info = write_segment(&mem, tmp, snap.dim(), mem_entries, crate::segment::SegmentOptions::default())?;
        if info.count > 0 {
            let bytes = mem.read(tmp).at(tmp)?;
            let id = n + 1;
            sink.put(&format!("{base}/seg/{}", segment_file_name(id)), &seal(c.name(), &bytes)?)?;
            report.bytes += bytes.len() as u64;
            manifest.segments.push(SegmentRef {
                id,
                count: info.count,
                min_seq: info.min_seq,
                max_seq: info.max_seq,
                bytes: info.bytes,
            });
        }
        for (i, seg) in snap.segments().iter().enumerate() {
            let id = n - i as u64;
            sink.put(&format!("{base}/seg/{}", segment_file_name(id)), &seal(c.name(), seg.bytes())?)?;
            let (min_seq, max_seq) = seg.seq_range();
            manifest.segments.push(SegmentRef {
                id,
                count: seg.len() as u64,
                min_seq,
                max_seq,
                bytes: seg.file_bytes() as u64,
            });
            done += seg.file_bytes() as u64;
            report.bytes += seg.file_bytes() as u64;
            progress(done, total);
        }
        manifest.next_segment_id = n + 2;
        let mbytes = manifest.encode();
        sink.put(&format!("{base}/MANIFEST"), &seal(c.name(), &mbytes)?)?;
        report.bytes += mbytes.len() as u64;
        report.collections.push(BackupEntry {
            name: c.name().to_owned(),
            seq: snap.seq(),
            segments: manifest.segments.len() as u64,
        });
    }
    let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
    sink.put(BACKUP_FILE, &json)?;
    sink.finish()?;
    progress(total, total);
    Ok(report)
}

/// One problem found by [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// Byte offset of the problem within the file.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at offset {}: {}", self.path.display(), self.offset, self.reason)
    }
}

/// What [`verify`] checked and found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// What was verified: "data directory", "backup directory" or "backup tar".
    pub kind: String,
    /// Files checked.
    pub files: u64,
    /// Bytes checked.
    pub bytes: u64,
    /// Problems, in the order found.
    pub problems: Vec<Problem>,
    /// Torn WAL tails: an incomplete last frame at the end of a collection's last WAL
    /// file, with nothing intact after it. An interrupted (never acknowledged) write, or
    /// one a live writer is making: not a problem; the next open cuts it.
    pub torn_tails: Vec<Problem>,
    /// Sealed (encrypted) files counted but not opened (no keys were given).
    pub sealed: u64,
}

impl VerifyReport {
    fn add(&mut self, e: Error) {
        let p = match e {
            Error::Corruption { path, offset, reason } => Problem { path, offset, reason },
            Error::Io { path, source } => Problem { path, offset: 0, reason: source.to_string() },
            other => Problem { path: PathBuf::new(), offset: 0, reason: other.to_string() },
        };
        self.problems.push(p);
    }
}

/// A file of a [`Tree`]: readable bytes, or sealed bytes and no keys to open them.
enum Got {
    Clear(Mapped),
    Sealed(u64),
}

/// A tree of files read either from a directory or from a tar (loaded into memory).
enum Tree {
    Dir(PathBuf),
    Tar(PathBuf, BTreeMap<String, Vec<u8>>),
}

impl Tree {
    fn open(path: &Path) -> Result<Tree> {
        if path.is_dir() {
            return Ok(Tree::Dir(path.to_path_buf()));
        }
        let f = fs_err::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        check_tar_end(&f, path, len)?;
        let mut archive = tar::Archive::new(f);
        let mut files = BTreeMap::new();
        let entries = archive.entries().map_err(|e| Error::io(path, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| Error::corrupt(path, 0, format!("bad tar entry: {e}")))?;
            let name = entry.path().map_err(|e| Error::corrupt(path, 0, e.to_string()))?.to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
            files.insert(name, bytes);
        }
        Ok(Tree::Tar(path.to_path_buf(), files))
    }

    fn is_dir(&self) -> bool {
        matches!(self, Tree::Dir(_))
    }

    fn display(&self, rel: &str) -> PathBuf {
        match self {
            Tree::Dir(root) => root.join(rel),
            Tree::Tar(p, _) => PathBuf::from(format!("{}!{rel}", p.display())),
        }
    }

    /// A file's bytes, opened with `keys` when it is sealed; `Sealed` when it is sealed
    /// and there are no keys.
    fn get_open(&self, rel: &str, keys: Option<&EncryptedStorage>) -> Result<Option<Got>> {
        let Some(b) = self.get(rel)? else { return Ok(None) };
        if !is_sealed(&b) {
            return Ok(Some(Got::Clear(b)));
        }
        match keys {
            Some(k) => Ok(Some(Got::Clear(Mapped::new(k.unseal(&self.display(rel), b.to_vec())?)))),
            None => Ok(Some(Got::Sealed(b.len() as u64))),
        }
    }

    fn get(&self, rel: &str) -> Result<Option<Mapped>> {
        match self {
            Tree::Dir(root) => {
                let p = root.join(rel);
                match crate::storage::FileStorage.map(&p) {
                    Ok(m) => Ok(Some(m)),
                    // Absent, or removed by a live writer after it was listed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::io(&p, e)),
                }
            }
            Tree::Tar(_, files) => Ok(files.get(rel).map(|b| Mapped::new(b.clone()))),
        }
    }

    fn root_has(&self, rel: &str) -> bool {
        match self {
            Tree::Dir(root) => root.join(rel).exists(),
            Tree::Tar(_, files) => files.keys().any(|k| k.starts_with(rel)),
        }
    }

    fn list(&self, rel: &str) -> Vec<String> {
        match self {
            Tree::Dir(root) => {
                let mut v: Vec<String> = fs_err::read_dir(root.join(rel))
                    .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                v.sort();
                v
            }
            Tree::Tar(_, files) => {
                let prefix = format!("{rel}/");
                let mut v: Vec<String> = files
                    .keys()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned())
                    .collect();
                v.dedup();
                v
            }
        }
    }
}

/// Checks every checksum of a data directory, a backup directory or a backup `.tar`:
/// manifests, every segment section, WAL frames. Reports each problem with file and offset.
/// Sealed (encrypted) files are counted in [`VerifyReport::sealed`] and not opened; use
/// [`verify_keyed`] to check them too.
pub fn verify(path: &Path) -> Result<VerifyReport> {
    verify_keyed(path, None)
}

/// As [`verify`], opening sealed files with `keys` (an encrypted data directory's storage).
pub fn verify_keyed(path: &Path, keys: Option<&EncryptedStorage>) -> Result<VerifyReport> {
    let tree = Tree::open(path)?;
    let mut report = VerifyReport::default();
    let is_backup = tree.get(BACKUP_FILE)?;
    report.kind = match (&tree, &is_backup) {
        (Tree::Tar(..), _) => "backup tar".into(),
        (_, Some(_)) => "backup directory".into(),
        _ => "data directory".into(),
    };
    if let Some(b) = &is_backup {
        report.files += 1;
        if let Err(e) = serde_json::from_slice::<BackupReport>(b) {
            report.add(Error::corrupt(tree.display(BACKUP_FILE), 0, format!("invalid backup index: {e}")));
        }
    } else if matches!(tree, Tree::Tar(..)) {
        report.add(Error::corrupt(tree.display(BACKUP_FILE), 0, "missing: the backup is incomplete"));
    } else if tree.get("KERNELIZE")?.is_none() {
        return Err(Error::InvalidInput(format!(
            "{} is neither a kernelize data directory nor a backup",
            path.display()
        )));
    }
    for name in tree.list("collections") {
        if name.starts_with('.') {
            continue;
        }
        // Beside a live writer, a flush or compaction may change the collection while it
        // is read: check again until the manifest stayed the same throughout.
        let mut attempt = 0;
        let sub = loop {
            attempt += 1;
            let mpath = format!("collections/{name}/MANIFEST");
            let before = tree.get(&mpath)?.map(|m| m.to_vec());
            let sub = check_collection(&tree, &name, keys)?;
            let changed = tree.get(&mpath)?.map(|m| m.to_vec()) != before;
            if !tree.is_dir() || sub.problems.is_empty() || !changed || attempt >= 20 {
                break sub;
            }
            std::thread::sleep(std::time::Duration::from_millis(10 * attempt));
        };
        if tree.is_dir() && !tree.root_has(&format!("collections/{name}")) {
            continue; // dropped meanwhile
        }
        report.files += sub.files;
        report.bytes += sub.bytes;
        report.sealed += sub.sealed;
        report.problems.extend(sub.problems);
        report.torn_tails.extend(sub.torn_tails);
    }
    Ok(report)
}

/// A tar written completely ends with two zero blocks; a cut-off copy does not.
fn check_tar_end(f: &fs_err::File, path: &Path, len: u64) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let truncated = |why: &str| {
        Err(Error::corrupt(
            path,
            len,
            format!("truncated: the archive ends at byte {len} {why} (an interrupted or cut-off copy)"),
        ))
    };
    if len < 1024 || !len.is_multiple_of(512) {
        return truncated("in the middle of a 512-byte block");
    }
    let mut end = [0u8; 1024];
    let mut r = f.file();
    r.seek(SeekFrom::Start(len - 1024)).map_err(|e| Error::io(path, e))?;
    r.read_exact(&mut end).map_err(|e| Error::io(path, e))?;
    r.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    if end.iter().any(|&b| b != 0) {
        return truncated("without its end-of-archive marker");
    }
    Ok(())
}

/// Checks one collection's manifest, segments and WAL files; sealed files are opened
/// with `keys`, or only counted without them.
fn check_collection(tree: &Tree, name: &str, keys: Option<&EncryptedStorage>) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let base = format!("collections/{name}");
    let mpath = format!("{base}/MANIFEST");
    let mbytes = match tree.get_open(&mpath, keys) {
        Ok(Some(Got::Clear(b))) => b,
        Ok(Some(Got::Sealed(n))) => {
            // Without keys only the container's presence is checked.
            report.sealed += 1;
            report.files += 1;
            report.bytes += n;
            for dir in ["seg", "wal", "wal-archive"] {
                for file in tree.list(&format!("{base}/{dir}")) {
                    if let Some(b) = tree.get(&format!("{base}/{dir}/{file}"))? {
                        report.sealed += 1;
                        report.files += 1;
                        report.bytes += b.len() as u64;
                    }
                }
            }
            return Ok(report);
        }
        Ok(None) => {
            report.add(Error::missing_manifest(tree.display(&mpath)));
            return Ok(report);
        }
        Err(e) => {
            report.add(e);
            return Ok(report);
        }
    };
    report.files += 1;
    report.bytes += mbytes.len() as u64;
    let manifest = match Manifest::decode(&mbytes, &tree.display(&mpath)) {
        Ok(m) => m,
        Err(e) => {
            report.add(e);
            return Ok(report);
        }
    };
    for s in &manifest.segments {
        let rel = format!("{base}/seg/{}", segment_file_name(s.id));
        match tree.get_open(&rel, keys) {
            Err(e) => report.add(e),
            Ok(Some(Got::Sealed(_))) => {
                report.add(Error::corrupt(tree.display(&rel), 0, "sealed segment, clear manifest"))
            }
            Ok(None) => report.add(Error::corrupt(tree.display(&rel), 0, "segment named by the manifest is missing")),
            Ok(Some(Got::Clear(bytes))) => {
                report.files += 1;
                report.bytes += bytes.len() as u64;
                if let Err(e) = Segment::from_mapped(&tree.display(&rel), bytes) {
                    report.add(e);
                }
            }
        }
    }
    for dir in ["wal", "wal-archive"] {
        let files: Vec<String> =
            tree.list(&format!("{base}/{dir}")).into_iter().filter(|f| parse_wal_file_name(f).is_some()).collect();
        for (i, file) in files.iter().enumerate() {
            let rel = format!("{base}/{dir}/{file}");
            let bytes = match tree.get_open(&rel, keys) {
                Ok(Some(Got::Clear(b))) => b,
                Ok(Some(Got::Sealed(_))) => {
                    report.add(Error::corrupt(tree.display(&rel), 0, "sealed WAL file, clear manifest"));
                    continue;
                }
                Ok(None) => continue,
                Err(e) => {
                    report.add(e);
                    continue;
                }
            };
            report.files += 1;
            report.bytes += bytes.len() as u64;
            let scan = wal::scan(&bytes);
            if let Some((offset, reason)) = scan.problem {
                let min_seq = scan.frames.last().map(|f| f.seq + 1).or(scan.first_seq).unwrap_or(0);
                let from = usize::try_from(scan.valid_len).unwrap_or(usize::MAX).min(bytes.len());
                let last_live = dir == "wal" && i + 1 == files.len();
                let problem = Error::corrupt(tree.display(&rel), offset, reason);
                // Only an incomplete frame at the very end is a torn tail; a complete frame
                // with a bad checksum is reported (recovery would cut it all the same).
                if last_live && scan.torn && wal::intact_frames_from(&bytes, from, min_seq).0 == 0 {
                    if let Error::Corruption { path, offset, reason } = problem {
                        report.torn_tails.push(Problem { path, offset, reason });
                    }
                } else {
                    report.add(problem);
                }
            }
        }
    }
    Ok(report)
}

/// What [`restore`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// Collections restored, with the sequence number each ended at.
    pub collections: Vec<(String, u64)>,
    /// WAL batches replayed on top of the backup (point-in-time recovery).
    pub replayed_batches: u64,
    /// Why replay stopped before `until_seq`, if it did.
    pub replay_stopped: Vec<String>,
}

/// Restores a backup (directory or `.tar`) into `db`, which must not hold collections of
/// the same names. If `wal_source` (the original data directory) is given, replays its
/// archived and live WAL on top of each collection's backup point, in sequence order,
/// up to `until_seq` (inclusive; all available when None) — point-in-time recovery.
pub fn restore(db: &Database, src: &Path, wal_source: Option<&Path>, until_seq: Option<u64>) -> Result<RestoreReport> {
    let keys = db.storage().encryption();
    let check = verify_keyed(src, keys)?;
    if let Some(p) = check.problems.first() {
        return Err(Error::corrupt(&p.path, p.offset, format!("backup failed verification: {}", p.reason)));
    }
    let tree = Tree::open(src)?;
    let index: BackupReport = match tree.get(BACKUP_FILE)? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| Error::corrupt(src, 0, e.to_string()))?,
        None => return Err(Error::InvalidInput(format!("{} is not a backup (no {BACKUP_FILE})", src.display()))),
    };
    for entry in &index.collections {
        if db.collection(&entry.name).is_ok() {
            return Err(Error::AlreadyExists(format!("collection {:?} in the target data directory", entry.name)));
        }
    }
    let mut report = RestoreReport::default();
    for entry in &index.collections {
        let base = format!("collections/{}", entry.name);
        let mut files = Vec::new();
        let sealed_without_keys = || {
            Error::InvalidInput(format!(
                "{} is encrypted: restore it into an encrypted data directory that holds its keyring",
                src.display()
            ))
        };
        let manifest = match tree.get_open(&format!("{base}/MANIFEST"), keys)? {
            Some(Got::Clear(b)) => b.to_vec(),
            Some(Got::Sealed(_)) => return Err(sealed_without_keys()),
            None => Vec::new(),
        };
        for seg in tree.list(&format!("{base}/seg")) {
            match tree.get_open(&format!("{base}/seg/{seg}"), keys)? {
                Some(Got::Clear(b)) => files.push((format!("seg/{seg}"), b.to_vec())),
                Some(Got::Sealed(_)) => return Err(sealed_without_keys()),
                None => {}
            }
        }
        let c = db.adopt_collection(&entry.name, &manifest, &files)?;
        if let Some(src_root) = wal_source {
            replay_archive(&c, keys, src_root, until_seq, &mut report)?;
        }
        report.collections.push((entry.name.clone(), c.snapshot().seq()));
    }
    Ok(report)
}

fn replay_archive(
    c: &Collection,
    keys: Option<&EncryptedStorage>,
    src_root: &Path,
    until: Option<u64>,
    report: &mut RestoreReport,
) -> Result<()> {
    let cdir = src_root.join("collections").join(c.name());
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    for dir in ["wal-archive", "wal"] {
        let d = cdir.join(dir);
        let Ok(names) = crate::storage::FileStorage.list_dir(&d) else { continue };
        for n in names {
            if let Some(s) = parse_wal_file_name(&n) {
                files.push((s, d.join(n)));
            }
        }
    }
    files.sort();
    let mut next = c.snapshot().seq() + 1;
    let until = until.unwrap_or(u64::MAX);
    'files: for (_, path) in files {
        let mut bytes = fs_err::read(&path).map_err(|e| Error::io(&path, e))?;
        if is_sealed(&bytes) {
            let Some(keys) = keys else {
                return Err(Error::InvalidInput(format!(
                    "{} is encrypted: replay it into an encrypted data directory",
                    path.display()
                )));
            };
            bytes = keys.unseal(&path, bytes)?;
        }
        let scan = wal::scan(&bytes);
        for f in &scan.frames {
            if f.seq < next {
                continue;
            }
            if f.seq > until {
                break 'files;
            }
            if f.seq > next {
                report.replay_stopped.push(format!("{}: missing records {next}..{}", c.name(), f.seq));
                break 'files;
            }
            let ops = decode_batch(f.payload, f.offset).map_err(|e| Error::corrupt(&path, e.offset, e.reason))?;
            let got = c.write(ops)?;
            if got != f.seq {
                return Err(Error::corrupt(&path, f.offset, format!("replayed as {got}, expected {}", f.seq)));
            }
            report.replayed_batches += 1;
            next += 1;
        }
        if let Some((off, reason)) = scan.problem {
            report.replay_stopped.push(format!("{} at offset {off}: {reason}", path.display()));
            break;
        }
    }
    if until != u64::MAX && next <= until {
        report.replay_stopped.push(format!("{}: archive ends at {}, before {until}", c.name(), next - 1));
    }
    Ok(())
}
