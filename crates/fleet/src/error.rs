//! The fleet's one error type, classified so the HTTP layer maps it through one table.

/// What went wrong in a fleet operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The request is malformed: `field` says where.
    #[error("{field}: {message}")]
    Invalid {
        /// Where in the request, e.g. `plan.phases[1].percent`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such device, group, release, deployment or execution.
    #[error("{0}")]
    NotFound(String),
    /// The state does not allow it (stale version, illegal transition, exists already).
    #[error("{0}")]
    Conflict(String),
    /// The device is not (or no longer) allowed: pending, rejected, revoked, bad token or signature.
    #[error("{0}")]
    Unauthenticated(String),
    /// The principal may not do this (e.g. approve its own deployment).
    #[error("{0}")]
    Forbidden(String),
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Database(#[from] sqlx::Error),
    /// A bug or a broken stored document.
    #[error("internal: {0}")]
    Internal(String),
}

impl FleetError {
    /// A malformed request at `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> FleetError {
        FleetError::Invalid { field: field.into(), message: message.into() }
    }
}

/// The fleet's result type.
pub type Result<T, E = FleetError> = std::result::Result<T, E>;
