//! What the agent keeps across restarts and power cuts: one JSON file, replaced
//! atomically (temporary file, fsync, rename, fsync of the directory). Its rename is the
//! commit point of every switch: a kernel is served after a restart iff the state file
//! names it.

use crate::error::{AgentError, Result};
use kernelize_bundle::TrustRoot;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of the state, in the data directory.
pub const STATE_FILE: &str = "agent-state.json";
/// Largest state file read back (channels × a few hundred bytes).
const MAX_STATE_BYTES: u64 = 4 << 20;

/// A kernel installed on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installed {
    /// Release id on the server.
    pub release_id: String,
    /// Release version on the channel.
    pub version: u64,
    /// Kernel id.
    pub kernel_id: String,
    /// SHA-256 of the kernel file, hex; the file is `kernels/<sha256>.kernel`.
    pub sha256: String,
}

/// A switch not yet committed: the new kernel serves, the previous one is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trial {
    /// The deployment that asked for it.
    pub deployment_id: String,
    /// The execution version the next status report names.
    pub expect_version: i64,
    /// The kernel served before the switch (None: the channel was empty).
    pub previous: Option<Installed>,
    /// Whether the offer was a revert order.
    pub revert: bool,
    /// When the switch happened, Unix ms.
    pub since_ms: u64,
}

/// One channel's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    /// The highest release version this device accepted on the channel: an install
    /// offer must exceed it (a downgrade needs a signed revert order).
    pub highest_seen: u64,
    /// The kernel served.
    pub current: Option<Installed>,
    /// A switch waiting for its commit.
    pub trial: Option<Trial>,
}

/// A status report that could not be delivered yet (the server was unreachable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingReport {
    /// Deployment.
    pub deployment_id: String,
    /// The report (a `kernelize_fleet::StatusReport` as JSON).
    pub report: serde_json::Value,
}

/// Everything the agent keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Whether the server accepted the enrollment.
    #[serde(default)]
    pub enrolled: bool,
    /// The release key trusted now and the root version that made it so.
    #[serde(default)]
    pub trust: Option<TrustRoot>,
    /// The key kernels must be signed with (hex).
    #[serde(default)]
    pub kernel_key: Option<String>,
    /// Per channel.
    #[serde(default)]
    pub channels: BTreeMap<String, Channel>,
    /// Reports to send when the server answers again (bounded).
    #[serde(default)]
    pub pending_reports: Vec<PendingReport>,
}

/// Most undelivered reports kept.
pub const MAX_PENDING_REPORTS: usize = 64;

impl State {
    /// Reads the state (a fresh one when there is none).
    pub fn load(dir: &Path) -> Result<State> {
        let path = dir.join(STATE_FILE);
        let bytes = match fs_err::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(AgentError::io(&path, e)),
            Ok(m) if m.len() > MAX_STATE_BYTES => {
                return Err(AgentError::State {
                    path,
                    reason: format!("{} bytes, more than the {MAX_STATE_BYTES} a state file can be", m.len()),
                });
            }
            Ok(_) => fs_err::read(&path).map_err(|e| AgentError::io(&path, e))?,
        };
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de).map_err(|e| AgentError::State {
            path,
            reason: format!("{}: {} (line {}, column {})", e.path(), e.inner(), e.inner().line(), e.inner().column()),
        })
    }

    /// Writes the state atomically and durably.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| AgentError::Other(format!("state: {e}")))?;
        write_durable(&dir.join(STATE_FILE), &bytes)
    }

    /// Queues a report for later delivery (the oldest is dropped past the bound).
    pub fn queue_report(&mut self, deployment_id: &str, report: serde_json::Value) {
        if self.pending_reports.len() >= MAX_PENDING_REPORTS {
            self.pending_reports.remove(0);
        }
        self.pending_reports.push(PendingReport { deployment_id: deployment_id.to_owned(), report });
    }
}

/// Where a kernel file lives in the data directory (named by its hash only: nothing from
/// a manifest or an offer ever becomes a path).
pub fn kernel_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join("kernels").join(format!("{sha256}.kernel"))
}

/// Writes `bytes` to `path` atomically and durably, owner-only (the engine's
/// [`kernelize_store::write_atomic`]: temporary file, fsync, rename, fsync of the directory).
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    kernelize_store::write_atomic(&kernelize_store::FileStorage, path, bytes).map_err(|e| AgentError::io(path, e))
}

/// Fsyncs a directory so a rename in it survives a power cut.
pub fn sync_dir(dir: &Path) -> Result<()> {
    kernelize_store::Storage::sync_dir(&kernelize_store::FileStorage, dir).map_err(|e| AgentError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_bad_files_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), State::default());
        let mut s = State::default();
        s.channels.insert(
            "stable".into(),
            Channel {
                highest_seen: 3,
                current: Some(Installed {
                    release_id: "r1".into(),
                    version: 3,
                    kernel_id: "k".into(),
                    sha256: "ab".repeat(32),
                }),
                trial: None,
            },
        );
        s.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), s);
        fs_err::write(dir.path().join(STATE_FILE), br#"{"channels": {"stable": {"highest_seen": "x"}}}"#).unwrap();
        let e = State::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("channels.stable.highest_seen"), "{e}");
    }
}
