//! The crate's one error type.

use std::time::Duration;

/// Result alias used throughout `kernelize-programs`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while defining, running, optimizing or loading a program.
///
/// Classes: [`Error::Invalid`] is the caller's mistake (a bad signature, input or
/// setting); [`Error::Parse`] is the model's (its output did not fit the signature, even
/// after one retry with the error fed back); [`Error::Backend`], [`Error::Timeout`],
/// [`Error::RateLimited`] and [`Error::CircuitOpen`] come from the model's side and say
/// which backend; [`Error::Budget`] and [`Error::Cancelled`] are stops the caller asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad argument, signature, schema or input, with what and where.
    #[error("{0}")]
    Invalid(String),
    /// The model's output does not fit the signature (after the retry with the error).
    #[error("output of {backend} does not fit the signature: {reason}; raw output: {raw:?}")]
    Parse {
        /// Backend that produced it.
        backend: String,
        /// What is wrong (field, expected type, found value).
        reason: String,
        /// The raw output, as the model gave it.
        raw: String,
    },
    /// The backend failed (HTTP status, connection, engine error).
    #[error("backend {backend}: {message}")]
    Backend {
        /// Backend name.
        backend: String,
        /// What went wrong.
        message: String,
        /// Whether trying again may help (connection errors, 5xx, 429).
        retryable: bool,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The call took longer than its timeout.
    #[error("backend {backend}: no answer within {timeout:?}")]
    Timeout {
        /// Backend name.
        backend: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The backend's circuit breaker is open: the call was not sent.
    #[error("backend {backend}: circuit open after repeated failures; next probe in {retry_in:?}")]
    CircuitOpen {
        /// Backend name.
        backend: String,
        /// Time until the breaker half-opens.
        retry_in: Duration,
    },
    /// A budget (calls, tokens or time) ran out.
    #[error("budget exhausted: {0}")]
    Budget(String),
    /// The caller cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The local model could not be loaded or run.
    #[error("local model: {0}")]
    Model(String),
    /// A saved program is damaged, tampered with or of an unknown version.
    #[error("saved program {what}: {reason}")]
    Saved {
        /// File or source.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The response cache failed.
    #[error("cache: {0}")]
    Cache(String),
    /// Retrieval failed.
    #[error("retrieval: {0}")]
    Retrieve(String),
    /// A file could not be read or written (the message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// An [`Error::Invalid`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into())
    }

    /// Whether a retry may succeed (used by the retry loop and the circuit breaker).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Backend { retryable, .. } => *retryable,
            Error::Timeout { .. } => true,
            _ => false,
        }
    }

    /// Whether this error counts as a failure of the backend (for the circuit breaker).
    pub fn is_backend_failure(&self) -> bool {
        matches!(self, Error::Backend { .. } | Error::Timeout { .. })
    }
}
