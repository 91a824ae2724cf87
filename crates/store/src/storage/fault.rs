//! A backend that fails on purpose: after a countdown of operations every further
//! operation fails with an I/O error or "no space left on device", until disarmed.

use super::{Mapped, Storage, WritableFile};
use parking_lot::Mutex;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};

/// Which error the injected failures report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A generic I/O error (EIO).
    Io,
    /// The disk is full (ENOSPC).
    DiskFull,
}

#[derive(Debug)]
struct Countdown {
    remaining: AtomicI64,
    kind: AtomicU8,
    /// Only operations that take space count and fail (a full disk: unlink, truncate,
    /// rename and fsync still work).
    allocations_only: AtomicBool,
    failures: Mutex<u64>,
}

impl Countdown {
    /// An operation that frees or moves space rather than taking it.
    fn tick_free(&self, what: &str) -> io::Result<()> {
        if self.allocations_only.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.tick(what)
    }

    fn tick(&self, what: &str) -> io::Result<()> {
        if self.remaining.fetch_sub(1, Ordering::SeqCst) > 0 {
            return Ok(());
        }
        *self.failures.lock() += 1;
        Err(match self.kind.load(Ordering::SeqCst) {
            1 => io::Error::new(io::ErrorKind::StorageFull, format!("no space left on device (injected, {what})")),
            _ => io::Error::other(format!("input/output error (injected, {what})")),
        })
    }
}

/// Wraps a backend and injects failures after a countdown of operations. Mutating
/// operations and syncs count and fail; reads pass through, so recovery can be observed.
#[derive(Debug, Clone)]
pub struct FaultStorage {
    inner: Arc<dyn Storage>,
    countdown: Arc<Countdown>,
}

impl FaultStorage {
    /// Wraps `inner`, disarmed.
    pub fn new(inner: Arc<dyn Storage>) -> FaultStorage {
        let countdown = Countdown {
            remaining: AtomicI64::new(i64::MAX),
            kind: AtomicU8::new(0),
            allocations_only: AtomicBool::new(false),
            failures: Mutex::new(0),
        };
        FaultStorage { inner, countdown: Arc::new(countdown) }
    }

    /// After `ops` more successful mutating operations, every further one fails with `kind`.
    pub fn fail_after(&self, ops: i64, kind: FaultKind) {
        self.countdown.allocations_only.store(false, Ordering::SeqCst);
        self.countdown.kind.store(if kind == FaultKind::DiskFull { 1 } else { 0 }, Ordering::SeqCst);
        self.countdown.remaining.store(ops, Ordering::SeqCst);
    }

    /// A disk that fills up: after `ops` more operations that take space (create, write,
    /// mkdir), each of them fails with ENOSPC; removing, truncating, renaming and fsync
    /// still work, as on a real full disk.
    pub fn fill_disk_after(&self, ops: i64) {
        self.countdown.allocations_only.store(true, Ordering::SeqCst);
        self.countdown.kind.store(1, Ordering::SeqCst);
        self.countdown.remaining.store(ops, Ordering::SeqCst);
    }

    /// Stops injecting failures ("space was freed").
    pub fn disarm(&self) {
        self.countdown.remaining.store(i64::MAX, Ordering::SeqCst);
    }

    /// How many operations failed so far.
    pub fn failures(&self) -> u64 {
        *self.countdown.failures.lock()
    }
}

struct FaultWriter {
    inner: Box<dyn WritableFile>,
    countdown: Arc<Countdown>,
}

impl WritableFile for FaultWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.countdown.tick("write")?;
        self.inner.write_all(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.countdown.tick_free("fsync")?;
        self.inner.sync()
    }
}

impl Storage for FaultStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.countdown.tick("mkdir")?;
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.countdown.tick("create")?;
        let inner = self.inner.create(path)?;
        Ok(Box::new(FaultWriter { inner, countdown: self.countdown.clone() }))
    }
    fn append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let inner = self.inner.append(path)?;
        Ok(Box::new(FaultWriter { inner, countdown: self.countdown.clone() }))
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.inner.file_len(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn map(&self, path: &Path) -> io::Result<Mapped> {
        self.inner.map(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.countdown.tick_free("truncate")?;
        self.inner.truncate(path, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.countdown.tick_free("rename")?;
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.countdown.tick_free("unlink")?;
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.countdown.tick_free("rmdir")?;
        self.inner.remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.countdown.tick_free("fsync dir")?;
        self.inner.sync_dir(path)
    }

    fn encryption(&self) -> Option<&super::EncryptedStorage> {
        self.inner.encryption()
    }
}
