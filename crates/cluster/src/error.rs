//! What can go wrong, classed the way an API maps it (invalid input, missing, conflict,
//! a dependency down: retry later).

/// A cluster error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong (400).
    #[error("{0}")]
    Invalid(String),
    /// No such collection or record (404).
    #[error("{0}")]
    NotFound(String),
    /// It exists already (409).
    #[error("{0}")]
    AlreadyExists(String),
    /// A dependency (NATS, PostgreSQL, the object store, a shard) cannot serve now; retry
    /// later (503).
    #[error("{what} unavailable: {reason}")]
    Unavailable {
        /// Which part.
        what: String,
        /// Why.
        reason: String,
    },
    /// An owner whose lease moved tried to commit (its epoch is stale).
    #[error("stale owner of {shard}: epoch {epoch} was superseded")]
    Fenced {
        /// `collection/shard`.
        shard: String,
        /// The epoch it held.
        epoch: i64,
    },
    /// Changes after this position are no longer kept (the retention passed them).
    #[error("changes after position {after} are no longer kept; the oldest kept come after position {earliest}")]
    Expired {
        /// The position asked for.
        after: u64,
        /// Read from here on instead.
        earliest: u64,
    },
    /// The local replica store.
    #[error(transparent)]
    Store(#[from] kernelize_store::Error),
    /// A shard's search.
    #[error(transparent)]
    Search(#[from] kernelize_index::search::SearchError),
    /// A bug or an unexpected state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A dependency is down.
    pub fn unavailable(what: impl Into<String>, reason: impl std::fmt::Display) -> Error {
        Error::Unavailable { what: what.into(), reason: reason.to_string() }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        Error::unavailable("postgresql", e)
    }
}

impl From<kernelize_blobs::Error> for Error {
    fn from(e: kernelize_blobs::Error) -> Error {
        Error::unavailable("object store", e)
    }
}

/// Results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
