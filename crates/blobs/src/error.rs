//! What can go wrong with a blob, and which kind of failure it is.

use std::path::PathBuf;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a blob operation failed. [`Error::class`] says what kind of failure it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No blob has this digest.
    #[error("blob {key} not found")]
    NotFound {
        /// Where it was looked for (`s3://bucket/key` or a file path).
        key: String,
    },
    /// The stored bytes do not hash to the digest they are stored under (or their length
    /// differs from what the store reported).
    #[error("blob {key} is corrupt: {detail}")]
    Corrupt {
        /// The key (`s3://bucket/key` or a file path).
        key: String,
        /// What does not match.
        detail: String,
    },
    /// A blob (or the file offered as one) is larger than the configured maximum.
    #[error("{what} is {len} bytes, more than the blob limit of {max} bytes")]
    TooLarge {
        /// The file or blob.
        what: String,
        /// Its length.
        len: u64,
        /// The limit (`max_blob_len`).
        max: u64,
    },
    /// A byte range that is empty or does not lie inside the blob.
    #[error("range {start}..{end} is not a non-empty range inside blob {key} of {len} bytes")]
    InvalidRange {
        /// The blob's key.
        key: String,
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
        /// The blob's length.
        len: u64,
    },
    /// A string that is not a digest (64 lowercase hex digits).
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest {
        /// The offending input (at most 80 characters of it).
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The file changed while it was being stored (its bytes hashed differently on the
    /// second read); nothing was stored.
    #[error("{path} changed while it was being stored; nothing was stored")]
    SourceChanged {
        /// The file.
        path: PathBuf,
    },
    /// The configuration is invalid, or the store refused the credentials.
    #[error("blob store configuration: {0}")]
    Config(String),
    /// The object store could not be reached or kept failing (network, 5xx, timeouts)
    /// after the configured retries. Trying again later may succeed.
    #[error("blob store unavailable during {op} {key} (after retries): {source}")]
    Transient {
        /// The operation (`put`, `get`, `head`, `list`, `delete`).
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// The cause.
        #[source]
        source: Box<object_store::Error>,
    },
    /// Any other failure of the object store.
    #[error("blob store {op} {key}: {source}")]
    Store {
        /// The operation.
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// The cause.
        #[source]
        source: Box<object_store::Error>,
    },
    /// A local file could not be read or written (the message names it).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The kind of a failure, which decides what a caller does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The blob does not exist (HTTP 404).
    NotFound,
    /// Bad input from the caller: too large, bad range, bad digest, a changing file.
    User,
    /// Stored bytes do not match their digest: an operator must restore the blob.
    Corruption,
    /// The store is unreachable or overloaded: retry later (HTTP 503).
    Transient,
    /// Configuration or credentials are wrong.
    Config,
    /// Anything else (local I/O, unexpected store answers).
    Internal,
}

impl Error {
    /// What kind of failure this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::NotFound { .. } => ErrorClass::NotFound,
            Error::TooLarge { .. }
            | Error::InvalidRange { .. }
            | Error::InvalidDigest { .. }
            | Error::SourceChanged { .. } => ErrorClass::User,
            Error::Corrupt { .. } => ErrorClass::Corruption,
            Error::Transient { .. } => ErrorClass::Transient,
            Error::Config(_) => ErrorClass::Config,
            Error::Store { .. } | Error::Io(_) => ErrorClass::Internal,
        }
    }

    /// Classifies an object store failure of `op` on `key`.
    pub(crate) fn store(op: &'static str, key: &str, e: object_store::Error) -> Error {
        use object_store::Error as E;
        let key = key.to_owned();
        match e {
            E::NotFound { .. } => Error::NotFound { key },
            // List answers 404 NoSuchBucket as a generic error (head and get as not found).
            E::Generic { .. } if e.to_string().contains("<Code>NoSuchBucket</Code>") => {
                Error::Config(format!("{key}: the bucket does not exist"))
            }
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                Error::Config(format!("{op} {key} refused, check the credentials: {e}"))
            }
            // HTTP stores report network failures, timeouts and 5xx answers that outlived
            // their RetryConfig as `Generic`; other answers (4xx) and the local
            // filesystem's I/O errors are reported so too, and those are not transient.
            E::Generic { store, .. } if store != "LocalFileSystem" && is_transient(&e) => {
                Error::Transient { op, key, source: Box::new(e) }
            }
            e => Error::Store { op, key, source: Box::new(e) },
        }
    }
}

/// True when the cause of an HTTP store's failure is the network (no answer: connect,
/// timeout, reset) or a server error (5xx).
fn is_transient(e: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.downcast_ref::<object_store::client::HttpError>().is_some() {
            return true;
        }
        // The request error's type is private; its message carries the status.
        if c.to_string().contains("non-2xx status code: 5") {
            return true;
        }
        cause = c.source();
    }
    false
}
