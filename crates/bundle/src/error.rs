//! What can go wrong with a fleet trust object, with which object and which field.

use std::path::PathBuf;

/// Why a signed document, a chunk or a delta was refused.
///
/// Every variant has a stable machine code ([`BundleError::code`]) that an agent reports
/// as its reason and a server maps to its error table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A read from a stream failed (no file name known).
    #[error("reading {what}: {source}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes do not have the shape of the document: which document, which field
    /// (a JSON path such as `compatibility.dim` or `golden_queries[2].k`), and why.
    #[error("{what}: {field}: {reason}")]
    Malformed {
        /// The document (`release manifest`, `offer`, `root document`, `envelope`).
        what: &'static str,
        /// The field (JSON path; `-` for the document as a whole).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify, or was made by another key than the one given.
    #[error("{what}: signature refused: {reason}")]
    Signature {
        /// The document.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The document's `expires_ms` has passed.
    #[error("{what}: expired at {expires_ms} ms (now {now_ms} ms)")]
    Expired {
        /// The document.
        what: &'static str,
        /// Its expiry, Unix milliseconds.
        expires_ms: u64,
        /// The time it was checked at, Unix milliseconds.
        now_ms: u64,
    },
    /// An offer meant for another device.
    #[error("offer {offer_id} is for device {offered_to:?}, not this device {this_device:?}")]
    WrongDevice {
        /// The offer.
        offer_id: String,
        /// The device it names.
        offered_to: String,
        /// This device.
        this_device: String,
    },
    /// An install offer for a version this device has already seen (replay or downgrade
    /// without a revert order).
    #[error(
        "channel {channel:?}: version {offered} is not above version {highest_seen} already seen; a downgrade needs a revert offer"
    )]
    Downgrade {
        /// The channel.
        channel: String,
        /// The offered version.
        offered: u64,
        /// The highest version this device has seen on the channel.
        highest_seen: u64,
    },
    /// A root document chain that does not lead from the pinned key: skipped version,
    /// fork, wrong signer.
    #[error("root document version {version}: {reason}")]
    RootChain {
        /// The version of the document refused.
        version: u64,
        /// Why.
        reason: String,
    },
    /// Downloaded bytes that do not match the manifest: a chunk's hash, a length, the
    /// whole file's hash.
    #[error("{what}: {reason}")]
    Content {
        /// Which chunk (`chunk 3`, bytes 3145728..4194304) or `file`.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A delta made against another base file than the one given.
    #[error("delta base mismatch: {reason}")]
    DeltaBase {
        /// Expected and actual base (length, SHA-256).
        reason: String,
    },
    /// A delta that is not well formed or does not decode to the file it promises.
    #[error("delta corrupt: {reason}")]
    DeltaCorrupt {
        /// What is wrong.
        reason: String,
    },
    /// A bad argument from the caller (not from the bytes being checked).
    #[error("{0}")]
    Invalid(String),
}

impl BundleError {
    /// A stable, machine-readable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::Io { .. } | BundleError::Read { .. } => "io",
            BundleError::Malformed { .. } => "malformed",
            BundleError::Signature { .. } => "bad_signature",
            BundleError::Expired { .. } => "expired",
            BundleError::WrongDevice { .. } => "wrong_device",
            BundleError::Downgrade { .. } => "downgrade",
            BundleError::RootChain { .. } => "root_chain",
            BundleError::Content { .. } => "content_mismatch",
            BundleError::DeltaBase { .. } => "delta_base_mismatch",
            BundleError::DeltaCorrupt { .. } => "delta_corrupt",
            BundleError::Invalid(_) => "invalid_argument",
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> BundleError {
        BundleError::Io { path: path.to_owned(), source }
    }

    pub(crate) fn malformed(what: &'static str, field: impl Into<String>, reason: impl Into<String>) -> BundleError {
        BundleError::Malformed { what, field: field.into(), reason: reason.into() }
    }
}

/// Results of this crate.
pub type Result<T, E = BundleError> = std::result::Result<T, E>;
