//! In-memory backend that tells "live" bytes (what a running process sees) from
//! "durable" bytes (what survives a power cut), and can simulate a crash.
//!
//! Model: a file's contents are durable up to the length at its last `sync`; directory
//! entries (creations, renames, removals) are durable after `sync_dir` of their parent.
//! Directories themselves are durable at once (a simplification: the engine creates its
//! directories once, before any data goes into them). A crash keeps the durable state
//! and, per [`CrashMode`], drops or tears (keeps a random prefix of) the unsynced bytes.

use super::{Mapped, Storage, WritableFile};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a simulated crash does with bytes written but not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Unsynced bytes are lost.
    DropUnsynced,
    /// A random prefix of each file's unsynced bytes survives (a torn write).
    TearUnsynced,
    /// Everything written survives (a process crash with the OS still running).
    KeepAll,
}

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable_len: usize,
}

type InodeRef = Arc<Mutex<Inode>>;

#[derive(Debug, Default)]
struct Fs {
    dirs: BTreeSet<PathBuf>,
    live: BTreeMap<PathBuf, InodeRef>,
    durable: BTreeMap<PathBuf, InodeRef>,
}

/// An in-memory filesystem with crash simulation. Cheap to clone (shared state).
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    fs: Arc<Mutex<Fs>>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

struct MemWriter {
    inode: InodeRef,
}

impl WritableFile for MemWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inode.lock().data.extend_from_slice(buf);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        let mut inode = self.inode.lock();
        inode.durable_len = inode.data.len();
        Ok(())
    }
}

impl MemStorage {
    /// An empty filesystem.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Simulates a power cut: afterwards the filesystem holds only what was durable,
    /// plus unsynced bytes as `mode` says (torn prefixes chosen with `seed`).
    pub fn crash(&self, mode: CrashMode, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut fs = self.fs.lock();
        if mode != CrashMode::KeepAll {
            fs.live = fs.durable.clone();
        }
        for inode in fs.live.values() {
            let mut inode = inode.lock();
            let keep = match mode {
                CrashMode::DropUnsynced => inode.durable_len,
                CrashMode::TearUnsynced => {
                    let unsynced = inode.data.len() - inode.durable_len;
                    inode.durable_len + rng.random_range(0..=unsynced)
                }
                CrashMode::KeepAll => inode.data.len(),
            };
            inode.data.truncate(keep);
            inode.durable_len = keep;
        }
        fs.durable = fs.live.clone();
    }

    /// Total bytes of live file contents (for tests).
    pub fn live_bytes(&self) -> usize {
        self.fs.lock().live.values().map(|i| i.lock().data.len()).sum()
    }

    fn inode(&self, path: &Path) -> io::Result<InodeRef> {
        self.fs.lock().live.get(path).cloned().ok_or_else(|| not_found(path))
    }
}

impl Storage for MemStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        for ancestor in path.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                fs.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let fs = self.fs.lock();
        if !fs.dirs.contains(path) {
            return Err(not_found(path));
        }
        let files = fs.live.keys();
        let dirs = fs.dirs.iter();
        let mut names: Vec<String> = files
            .chain(dirs)
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let fs = self.fs.lock();
        Ok(fs.live.contains_key(path) || fs.dirs.contains(path))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut fs = self.fs.lock();
        let dir = parent(path);
        if !dir.as_os_str().is_empty() && !fs.dirs.contains(&dir) {
            return Err(not_found(&parent(path)));
        }
        let inode = InodeRef::default();
        fs.live.insert(path.to_path_buf(), inode.clone());
        Ok(Box::new(MemWriter { inode }))
    }

    fn append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        Ok(Box::new(MemWriter { inode: self.inode(path)? }))
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(self.inode(path)?.lock().data.len() as u64)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        Ok(self.inode(path)?.lock().data.clone())
    }

    fn map(&self, path: &Path) -> io::Result<Mapped> {
        Ok(Mapped::new(self.read(path)?))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let inode = self.inode(path)?;
        let mut inode = inode.lock();
        let len = usize::try_from(len).map_err(io::Error::other)?;
        inode.data.resize(len, 0);
        inode.durable_len = len;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        if let Some(inode) = fs.live.remove(from) {
            fs.live.insert(to.to_path_buf(), inode);
            return Ok(());
        }
        if !fs.dirs.contains(from) {
            return Err(not_found(from));
        }
        // Directory rename: move the directory and everything below it (durable at once,
        // like directory creation in this model).
        let moved = |p: &Path| p.strip_prefix(from).ok().map(|rest| to.join(rest));
        let dirs: Vec<PathBuf> = fs.dirs.iter().cloned().collect();
        fs.dirs = dirs.iter().map(|d| moved(d).unwrap_or_else(|| d.clone())).collect();
        let fs = &mut *fs;
        for map in [&mut fs.live, &mut fs.durable] {
            let entries = std::mem::take(map);
            *map = entries.into_iter().map(|(p, i)| (moved(&p).unwrap_or(p), i)).collect();
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.fs.lock().live.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        fs.dirs.retain(|d| !d.starts_with(path));
        fs.live.retain(|p, _| !p.starts_with(path));
        fs.durable.retain(|p, _| !p.starts_with(path));
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        let in_dir = |p: &PathBuf| p.parent() == Some(path);
        fs.durable.retain(|p, _| !in_dir(p));
        let live: Vec<(PathBuf, InodeRef)> =
            fs.live.iter().filter(|(p, _)| in_dir(p)).map(|(p, i)| (p.clone(), i.clone())).collect();
        fs.durable.extend(live);
        Ok(())
    }
}
