//! What goes wrong on the device: the agent's own errors, and refusals of what a server
//! sent, each with a stable reason code that goes up in the status report.

use kernelize_bundle::BundleError;
use kernelize_fleet::FailureKind;
use std::path::{Path, PathBuf};

/// An error of the agent itself (files, configuration, the local API).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The state file is damaged.
    #[error("{path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// Where and what.
        reason: String,
    },
    /// A bad flag or configuration value.
    #[error("{0}")]
    Config(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl AgentError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> AgentError {
        AgentError::Io { path: path.to_owned(), source }
    }
}

/// Results of this crate.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// Why an offer was not installed. The current kernel keeps serving.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Refusal {
    /// Stable reason code (`bad_signature`, `downgrade`, `corrupt_chunk`, …; the list is
    /// in `docs/agent.md`).
    pub reason: &'static str,
    /// Which kind of failure the server files it under.
    pub failure: FailureKind,
    /// What exactly.
    pub detail: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(reason: &'static str, failure: FailureKind, detail: impl Into<String>) -> Refusal {
        let mut detail = detail.into();
        if detail.len() > 512 {
            let mut cut = 512;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        Refusal { reason, failure, detail }
    }

    /// A download failure.
    pub fn download(reason: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal::new(reason, FailureKind::Download, detail)
    }

    /// A verification failure.
    pub fn verify(reason: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal::new(reason, FailureKind::Verify, detail)
    }

    /// A failure of the device itself (disk, files).
    pub fn other(detail: impl Into<String>) -> Refusal {
        Refusal::new("device_error", FailureKind::Other, detail)
    }

    /// The reason text sent with the report: `code: detail`, bounded.
    pub fn report_reason(&self) -> String {
        let s = format!("{}: {}", self.reason, self.detail);
        s.chars().take(480).collect()
    }
}

/// A signed document refused: the bundle crate's code, refined where one code covers
/// several attacks the operator must tell apart.
pub fn refuse_document(e: &BundleError) -> Refusal {
    let reason = match e {
        BundleError::Expired { what, .. } if *what == "offer" => "offer_expired",
        BundleError::Expired { .. } => "manifest_expired",
        BundleError::Malformed { reason, .. } if reason.contains("unknown field") => "unknown_field",
        e => e.code(),
    };
    Refusal::verify(reason, e.to_string())
}

impl From<AgentError> for Refusal {
    fn from(e: AgentError) -> Refusal {
        Refusal::other(e.to_string())
    }
}
