//! What can go wrong with a kernel, with where it went wrong.

use std::path::PathBuf;

/// Why a kernel could not be built, opened, verified or queried.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not a valid kernel: what is wrong and at which byte offset.
    #[error("{what}: corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// The file (or "<memory>").
        what: String,
        /// Byte offset of the first problem.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The manifest's signature does not verify under the given public key, or was made
    /// by another key.
    #[error("{what}: signature refused: {reason}")]
    Signature {
        /// The file.
        what: String,
        /// Why.
        reason: String,
    },
    /// The kernel's `expires` time has passed.
    #[error("{what}: expired at {expired} (now {now}); pass --allow-expired to open it anyway")]
    Expired {
        /// The file.
        what: String,
        /// When it expired (RFC 3339).
        expired: String,
        /// Now (RFC 3339).
        now: String,
    },
    /// A key file is malformed.
    #[error("{path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A bad request (query, options).
    #[error("{0}")]
    Invalid(String),
    /// The build was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The source collection could not be read.
    #[error(transparent)]
    Store(#[from] kernelize_store::Error),
}

impl KernelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> KernelError {
        KernelError::Io { path: path.into(), source }
    }

    pub(crate) fn corrupt(what: &str, offset: u64, reason: impl Into<String>) -> KernelError {
        KernelError::Corrupt { what: what.to_owned(), offset, reason: reason.into() }
    }
}

/// Result with [`KernelError`].
pub type Result<T, E = KernelError> = std::result::Result<T, E>;
