//! The one error type of the store, with a classification that decides behaviour.

use std::io;
use std::path::PathBuf;

/// What kind of failure an [`Error`] is; callers decide behaviour from this, not from
/// message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The caller asked for something invalid; retrying the same request fails again.
    User,
    /// The named thing does not exist.
    NotFound,
    /// The named thing already exists.
    Conflict,
    /// Bytes on disk are not what we wrote; names a file and an offset.
    Corruption,
    /// The operating system refused (I/O error, disk full); may succeed later.
    Transient,
    /// The collection refuses writes until it is reopened (after a failed fsync).
    Fatal,
    /// The collection is not open: its files are damaged, and it serves nothing until an
    /// operator restores it or accepts the loss (`kernelize recover`).
    Unavailable,
}

/// Errors of the durable engine.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request is invalid (wrong dimension, NaN, bad name, oversized batch).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A collection or record is missing.
    #[error("not found: {0}")]
    NotFound(String),
    /// A collection of that name exists already.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// Stored bytes failed validation.
    #[error("corruption in {} at offset {offset}: {reason}", path.display())]
    Corruption {
        /// The file holding the bad bytes.
        path: PathBuf,
        /// Byte offset of the first bad byte (or of the structure that is bad).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The operating system reported an error for a path.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The path the operation touched.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An earlier write or fsync failed; the page cache can no longer be trusted, so
    /// the collection accepts no writes until it is reopened (which replays the WAL).
    #[error("collection {collection} is read-only after a failed write ({cause}); reopen it to recover")]
    Poisoned {
        /// The collection.
        collection: String,
        /// The first failure.
        cause: String,
    },
    /// The collection could not be opened (its files are damaged); the rest of the data
    /// directory works. [`crate::Database::unavailable`] lists such collections.
    #[error("collection {collection} is unavailable: {reason}")]
    Unavailable {
        /// The collection.
        collection: String,
        /// Why (the error that kept it from opening).
        reason: String,
    },
    /// The data directory was opened read-only; nothing can be written.
    #[error("read-only: {0}")]
    ReadOnly(String),
}

impl Error {
    /// Classifies the failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidInput(_) => ErrorClass::User,
            Error::NotFound(_) => ErrorClass::NotFound,
            Error::AlreadyExists(_) => ErrorClass::Conflict,
            Error::Corruption { .. } => ErrorClass::Corruption,
            Error::Io { .. } => ErrorClass::Transient,
            Error::Poisoned { .. } => ErrorClass::Fatal,
            Error::Unavailable { .. } => ErrorClass::Unavailable,
            Error::ReadOnly(_) => ErrorClass::User,
        }
    }

    /// True when the error is the disk being full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }

    /// True when the error is another process holding the data directory's lock (a
    /// read-only open works beside it).
    pub fn is_locked(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::WouldBlock)
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        // A sealed file that does not open is corruption (or a destroyed key), not an
        // I/O failure to retry.
        if let Some(e) = source.get_ref().and_then(|e| e.downcast_ref::<crate::storage::SealError>()) {
            return Error::corrupt(path, e.offset, e.reason.clone());
        }
        Error::Io { path: path.into(), source }
    }

    /// The error for a collection directory without its MANIFEST, the same on open and
    /// in `verify`.
    pub(crate) fn missing_manifest(path: impl Into<PathBuf>) -> Error {
        Error::corrupt(
            path,
            0,
            "missing manifest: the collection directory has no MANIFEST (deleted or never written); \
             restore the collection from a backup",
        )
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corruption { path: path.into(), offset, reason: reason.into() }
    }
}

/// Result with the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
