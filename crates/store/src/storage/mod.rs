//! The storage boundary: every byte the engine reads or writes goes through [`Storage`].
//!
//! Four backends implement it, and [`EncryptedStorage`] seals files on top of any of them: [`FileStorage`] (the real one), [`MemStorage`] (in memory,
//! which also simulates crashes by keeping "live" and "durable" bytes apart) and
//! [`FaultStorage`] (wraps another backend and fails after a countdown, e.g. ENOSPC).

mod crypt;
mod fault;
pub(crate) mod file;
mod mem;

pub(crate) use crypt::SealError;
pub use crypt::{EncryptedStorage, RECORD_MAX, SEALED_HEADER_LEN, SEALED_MAGIC, SEALED_VERSION, is_sealed};
pub use fault::{FaultKind, FaultStorage};
pub use file::FileStorage;
pub use mem::{CrashMode, MemStorage};

use std::fmt;
use std::io;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

/// A file open for appending.
pub trait WritableFile: Send {
    /// Appends all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
}

/// Read-only bytes of a whole file: an mmap for files, a shared buffer in memory.
#[derive(Clone)]
pub struct Mapped(Arc<dyn AsRef<[u8]> + Send + Sync>);

impl Mapped {
    /// Wraps any owned bytes.
    pub fn new(bytes: impl AsRef<[u8]> + Send + Sync + 'static) -> Mapped {
        Mapped(Arc::new(bytes))
    }
}

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl fmt::Debug for Mapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mapped({} bytes)", self.len())
    }
}

/// A growable byte buffer for the resident plaintext of sealed files (tens of MiB each):
/// anonymous memory that asks for 2 MiB pages (`MADV_HUGEPAGE`) where the kernel grants
/// them, so filling it takes a few hundred page faults instead of one per 4 KiB (on a VM
/// those faults cost as much as the AES-GCM pass over the same bytes). A mapping whose
/// segment is gone (replaced by a compaction, or its collection closed) goes back to a
/// small pool for the next flush instead of to the kernel: fresh anonymous memory is
/// zeroed page by page on first touch, reused memory is not. Small buffers, and any whose
/// mapping fails, live on the heap.
pub(crate) enum ResidentBuf {
    /// Anonymous mapping and the bytes used of it.
    Map(PooledMap, usize),
    /// Plain heap bytes.
    Heap(Vec<u8>),
}

/// Freed resident mappings waiting to be reused: at most `max_bytes` in all (the memory
/// of about two flushed segments of the default memtable size), so what the process
/// keeps beyond its live segments is bounded. Their old bytes are never read: a reused
/// buffer starts empty and exposes only what is written to it.
struct MapPool {
    maps: parking_lot::Mutex<Vec<memmap2::MmapMut>>,
    max_bytes: usize,
}

impl MapPool {
    /// A pooled mapping with room for `cap` bytes and at most twice that.
    fn take(&self, cap: usize) -> Option<memmap2::MmapMut> {
        let mut maps = self.maps.lock();
        let i = maps.iter().position(|m| m.len() >= cap && m.len() <= 2 * cap)?;
        Some(maps.swap_remove(i))
    }

    /// Keeps `map` for reuse if the pool has room for it (else it is unmapped).
    fn give(&self, map: memmap2::MmapMut) {
        let mut maps = self.maps.lock();
        if maps.iter().map(|m| m.len()).sum::<usize>() + map.len() <= self.max_bytes {
            maps.push(map);
        }
    }
}

static POOL: MapPool = MapPool { maps: parking_lot::Mutex::new(Vec::new()), max_bytes: 256 << 20 };

impl ResidentBuf {
    /// A buffer with room for `cap` bytes before it has to move.
    pub(crate) fn with_capacity(cap: usize) -> ResidentBuf {
        if cap < 2 << 20 {
            return ResidentBuf::Heap(Vec::with_capacity(cap));
        }
        if let Some(map) = POOL.take(cap) {
            return ResidentBuf::Map(PooledMap(Some(map)), 0);
        }
        if let Ok(map) = memmap2::MmapMut::map_anon(cap) {
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            return ResidentBuf::Map(PooledMap(Some(map)), 0);
        }
        ResidentBuf::Heap(Vec::with_capacity(cap))
    }

    /// Appends `bytes` (moving to a buffer twice as large when full).
    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) {
        match self {
            ResidentBuf::Heap(v) => v.extend_from_slice(bytes),
            ResidentBuf::Map(map, len) => {
                let end = *len + bytes.len();
                if end > map.len() {
                    let mut next = ResidentBuf::with_capacity(end.max(2 * map.len()));
                    next.extend_from_slice(&map[..*len]);
                    next.extend_from_slice(bytes);
                    *self = next;
                    return;
                }
                map[*len..end].copy_from_slice(bytes);
                *len = end;
            }
        }
    }

    /// Forgets the bytes (keeps the room).
    pub(crate) fn clear(&mut self) {
        match self {
            ResidentBuf::Heap(v) => v.clear(),
            ResidentBuf::Map(_, len) => *len = 0,
        }
    }
}

/// A resident mapping that goes back to the pool when dropped.
pub(crate) struct PooledMap(Option<memmap2::MmapMut>);

impl Drop for PooledMap {
    fn drop(&mut self) {
        if let Some(map) = self.0.take() {
            POOL.give(map);
        }
    }
}

impl Deref for PooledMap {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl std::ops::DerefMut for PooledMap {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

impl Deref for ResidentBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ResidentBuf::Heap(v) => v,
            ResidentBuf::Map(map, len) => &map[..*len],
        }
    }
}

impl AsRef<[u8]> for ResidentBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// A filesystem as the engine sees it. Paths are absolute or relative to the backend's
/// own root; the engine never touches the filesystem any other way.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory, sorted.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Whether a file or directory exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Creates (or truncates) a file for appending.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens an existing file for appending at its end.
    fn append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Size of a file in bytes.
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Maps a whole file read-only.
    fn map(&self, path: &Path) -> io::Result<Mapped>;
    /// Cuts a file to `len` bytes and makes that durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Renames a file or directory (atomic; durable after [`Storage::sync_dir`] of both parents).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of a directory (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// The encryption layer, when this backend is (or wraps) an [`EncryptedStorage`]: the
    /// engine asks it for fresh data keys on create and destroys them on drop.
    fn encryption(&self) -> Option<&EncryptedStorage> {
        None
    }
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = storage.create(&tmp)?;
    f.write_all(bytes)?;
    f.sync()?;
    drop(f);
    storage.rename(&tmp, path)?;
    storage.sync_dir(parent_of(path))
}

/// The parent directory of a path (`.` for a bare name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn resident_mappings_are_reused_within_the_pool_bound_and_start_empty() {
        let pool = MapPool { maps: parking_lot::Mutex::new(Vec::new()), max_bytes: 8 << 20 };
        let mut a = memmap2::MmapMut::map_anon(4 << 20).unwrap();
        a[0] = 42;
        let addr = a.as_ptr();
        pool.give(a);
        // Too small for 9 MiB, and too large to spend on 1 MiB.
        assert!(pool.take(9 << 20).is_none());
        assert!(pool.take(1 << 20).is_none());
        let b = pool.take(3 << 20).unwrap();
        assert_eq!(b.as_ptr(), addr, "the freed mapping is the one reused");
        assert!(pool.take(3 << 20).is_none(), "taken once");
        // The bound: 4 + 4 MiB fit, a third mapping is unmapped instead of kept.
        pool.give(b);
        pool.give(memmap2::MmapMut::map_anon(4 << 20).unwrap());
        pool.give(memmap2::MmapMut::map_anon(4 << 20).unwrap());
        assert_eq!(pool.maps.lock().len(), 2);
        // A buffer built on a reused mapping shows only what is written to it.
        let mut buf = ResidentBuf::Map(PooledMap(pool.take(4 << 20)), 0);
        assert!(buf.is_empty());
        buf.extend_from_slice(b"abc");
        assert_eq!(&*buf, b"abc");
    }
}
