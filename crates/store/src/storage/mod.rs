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
/// those faults cost as much as the AES-GCM pass over the same bytes). Small buffers, and
/// any whose mapping fails, live on the heap.
pub(crate) enum ResidentBuf {
    /// Anonymous mapping and the bytes used of it.
    Map(memmap2::MmapMut, usize),
    /// Plain heap bytes.
    Heap(Vec<u8>),
}

impl ResidentBuf {
    /// A buffer with room for `cap` bytes before it has to move.
    pub(crate) fn with_capacity(cap: usize) -> ResidentBuf {
        if cap >= 2 << 20
            && let Ok(map) = memmap2::MmapMut::map_anon(cap)
        {
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            return ResidentBuf::Map(map, 0);
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
