//! The fleet's records and the JSON shapes they travel in.

use crate::error::{FleetError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Longest device identity, label key or value, group or channel name (bytes).
pub const MAX_NAME: usize = 128;
/// Most labels on one device.
pub const MAX_LABELS: usize = 64;
/// Largest inventory document (bytes of JSON).
pub const MAX_INVENTORY_BYTES: usize = 16 * 1024;
/// Longest device log excerpt kept per execution (bytes; older text is cut first).
pub const MAX_LOG_BYTES: usize = 8 * 1024;
/// Most state changes kept in one execution's history.
pub const MAX_HISTORY: usize = 64;
/// Most phases in a plan.
pub const MAX_PHASES: usize = 16;

/// Where a device is in its enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Enrolled, waiting for an admin (device routes answer 401).
    Pending,
    /// May fetch tokens, heartbeat and take offers.
    Accepted,
    /// Refused by an admin.
    Rejected,
    /// Was accepted; its tokens stopped working at once.
    Revoked,
    /// Taken out of service by a bulk operation.
    Decommissioned,
}

impl DeviceStatus {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Accepted => "accepted",
            DeviceStatus::Rejected => "rejected",
            DeviceStatus::Revoked => "revoked",
            DeviceStatus::Decommissioned => "decommissioned",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Result<DeviceStatus> {
        Ok(match s {
            "pending" => DeviceStatus::Pending,
            "accepted" => DeviceStatus::Accepted,
            "rejected" => DeviceStatus::Rejected,
            "revoked" => DeviceStatus::Revoked,
            "decommissioned" => DeviceStatus::Decommissioned,
            _ => return Err(FleetError::invalid("status", format!("unknown device status {s:?}"))),
        })
    }
}

/// The kernel a device runs on one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InstalledKernel {
    /// Kernel id.
    #[serde(default)]
    pub kernel_id: String,
    /// Release version on the channel.
    pub version: u64,
}

/// The result of the device's last health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Whether it passed.
    pub ok: bool,
    /// A short reason.
    #[serde(default)]
    pub detail: String,
}

/// What a device reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// The agent's version (`major.minor.patch`).
    #[serde(default)]
    pub agent_version: String,
    /// Installed kernel per channel.
    #[serde(default)]
    pub kernels: BTreeMap<String, InstalledKernel>,
    /// Free disk space for kernels, bytes.
    #[serde(default)]
    pub free_disk_bytes: u64,
    /// The last health check.
    #[serde(default)]
    pub health: Option<Health>,
}

impl Inventory {
    /// Checks sizes and names; `field` prefixes the error's location.
    pub fn validate(&self, field: &str) -> Result<()> {
        check_name(&format!("{field}.agent_version"), &self.agent_version, true)?;
        if self.kernels.len() > MAX_LABELS {
            return Err(FleetError::invalid(format!("{field}.kernels"), format!("at most {MAX_LABELS} channels")));
        }
        for (ch, k) in &self.kernels {
            check_name(&format!("{field}.kernels"), ch, false)?;
            check_name(&format!("{field}.kernels.{ch}.kernel_id"), &k.kernel_id, true)?;
        }
        if let Some(h) = &self.health
            && h.detail.len() > 1024
        {
            return Err(FleetError::invalid(format!("{field}.health.detail"), "longer than 1024 bytes"));
        }
        Ok(())
    }
}

/// Checks a name or label: bounded, printable, not empty unless `empty_ok`.
pub fn check_name(field: &str, s: &str, empty_ok: bool) -> Result<()> {
    if s.is_empty() && !empty_ok {
        return Err(FleetError::invalid(field, "must not be empty"));
    }
    if s.len() > MAX_NAME {
        return Err(FleetError::invalid(field, format!("longer than {MAX_NAME} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(FleetError::invalid(field, "contains control characters"));
    }
    Ok(())
}

/// Checks a label map.
pub fn check_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(FleetError::invalid(field, format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in labels {
        check_name(field, k, false)?;
        if !k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')) {
            return Err(FleetError::invalid(
                format!("{field}.{k}"),
                "label keys are letters, digits, '_' and '-' (so filters can name them)",
            ));
        }
        check_name(&format!("{field}.{k}"), v, true)?;
    }
    Ok(())
}

/// A device as the control plane knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Server-assigned id, derived from the public key.
    pub id: String,
    /// What the device calls itself (serial number, host name).
    pub identity: String,
    /// Its ed25519 public key, base64.
    pub public_key: String,
    /// Enrollment status.
    pub status: DeviceStatus,
    /// Labels (set at enrollment by its token, and by admins).
    pub labels: BTreeMap<String, String>,
    /// The last inventory it reported.
    pub inventory: Inventory,
    /// Its static group, if any.
    pub group: Option<String>,
    /// Enrolled (unix ms).
    pub created_ms: i64,
    /// Last heartbeat (unix ms).
    pub last_seen_ms: Option<i64>,
    /// Heartbeating within 3 intervals.
    pub online: bool,
    /// The log excerpt of its latest heartbeat that carried one (at most
    /// [`MAX_LOG_BYTES`], the newest lines); shown for one device, not in lists.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log: String,
}

impl Device {
    /// The document filters are evaluated on: `id`, `identity`, `status`, `online`,
    /// `group`, `labels.*`, `inventory.*` (e.g. `inventory.kernels.stable.version`).
    pub fn filter_doc(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), Value::from(self.id.clone()));
        m.insert("identity".into(), Value::from(self.identity.clone()));
        m.insert("status".into(), Value::from(self.status.as_str()));
        m.insert("online".into(), Value::from(self.online));
        m.insert("group".into(), self.group.clone().map_or(Value::Null, Value::from));
        m.insert("labels".into(), serde_json::to_value(&self.labels).unwrap_or(Value::Null));
        m.insert("inventory".into(), serde_json::to_value(&self.inventory).unwrap_or(Value::Null));
        m
    }
}

/// How a deployment or bulk operation picks devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Selector {
    /// A group's members (static or dynamic).
    Group(String),
    /// A filter expression over the device document (the project's filter language).
    Filter(String),
    /// Listed device ids.
    Devices(Vec<String>),
}

/// A threshold: a count, or a percentage written `"20%"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Absolute count.
    Count(u64),
    /// Share of the executed, 0–100.
    Percent(f64),
}

impl Serialize for Threshold {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Threshold::Count(n) => s.serialize_u64(*n),
            Threshold::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::Number(n) => {
                n.as_u64().map(Threshold::Count).ok_or_else(|| D::Error::custom("a count is a whole number >= 0"))
            }
            Value::String(s) => {
                let p = s
                    .strip_suffix('%')
                    .and_then(|p| p.trim().parse::<f64>().ok())
                    .filter(|p| p.is_finite() && (0.0..=100.0).contains(p))
                    .ok_or_else(|| D::Error::custom(format!("expected a percentage like \"20%\", got {s:?}")))?;
                Ok(Threshold::Percent(p))
            }
            other => Err(D::Error::custom(format!("expected a count or \"N%\", got {other}"))),
        }
    }
}

impl Threshold {
    /// Whether `n` of `of` reaches it.
    pub fn reached(&self, n: u64, of: u64) -> bool {
        match *self {
            Threshold::Count(c) => n >= c,
            Threshold::Percent(p) => of > 0 && (n as f64) * 100.0 >= p * (of as f64) - 1e-9,
        }
    }
}

/// What happens when a phase has baked and met its success threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnSuccess {
    /// Go on to the next phase.
    #[default]
    Next,
    /// Pause until someone promotes.
    Pause,
}

/// One phase of a rollout. `percent` or `count` is cumulative: the share (or number) of
/// the target that has been offered once this phase runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Cumulative share of the target, 0 < p <= 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Cumulative number of devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// How long the phase is watched after its last device finished, seconds.
    #[serde(default)]
    pub bake_seconds: u64,
    /// Share of succeeded among the executed needed to go on, 0–1 (default 0).
    #[serde(default)]
    pub success_threshold: f64,
    /// Failures at which the deployment aborts (count or `"N%"` of executed).
    #[serde(default = "no_failures_limit")]
    pub max_failures: Threshold,
    /// Executed devices needed before the failure threshold is judged.
    #[serde(default)]
    pub min_executed: u64,
    /// What happens after a successful bake.
    #[serde(default)]
    pub on_success: OnSuccess,
}

fn no_failures_limit() -> Threshold {
    Threshold::Percent(100.0)
}

/// What happens to devices a deployment touched when it aborts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AbortPolicy {
    /// They keep what they have.
    #[default]
    Keep,
    /// Each is offered the kernel it ran before.
    Revert,
}

/// What happens when the end time passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EndBehaviour {
    /// Devices not offered yet are canceled; those in progress finish.
    #[default]
    CancelQueued,
    /// The deployment aborts (with its abort policy).
    Abort,
}

/// Retries of one execution, per failure kind, with exponential backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Retries after a failed download.
    #[serde(default)]
    pub download: u32,
    /// Retries after a failed verification (hash, signature, compatibility).
    #[serde(default)]
    pub verify: u32,
    /// Retries after an in-progress timeout.
    #[serde(default)]
    pub timeout: u32,
    /// Retries after a failed health check.
    #[serde(default)]
    pub health: u32,
    /// First backoff, ms; doubled per attempt.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Longest backoff, ms.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
}

fn default_backoff() -> u64 {
    1_000
}
fn default_max_backoff() -> u64 {
    300_000
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            download: 0,
            verify: 0,
            timeout: 0,
            health: 0,
            backoff_ms: default_backoff(),
            max_backoff_ms: default_max_backoff(),
        }
    }
}

/// A deployment's plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Phases, in order.
    pub phases: Vec<Phase>,
    /// No offers before this time (unix ms).
    #[serde(default)]
    pub start_ms: Option<i64>,
    /// No new offers after this time (unix ms).
    #[serde(default)]
    pub end_ms: Option<i64>,
    /// What the end time does.
    #[serde(default)]
    pub end_behaviour: EndBehaviour,
    /// Most devices downloading at once (0: no cap).
    #[serde(default)]
    pub max_concurrent_downloads: u64,
    /// An execution without a status update for this long times out, seconds.
    #[serde(default = "default_timeout")]
    pub in_progress_timeout_seconds: u64,
    /// Retries per failure kind.
    #[serde(default)]
    pub retries: Retries,
    /// What an abort does to touched devices.
    #[serde(default)]
    pub abort_policy: AbortPolicy,
}

fn default_timeout() -> u64 {
    3_600
}

/// A deployment's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Created or edited; needs approval by another principal.
    AwaitingApproval,
    /// Offering to the current phase.
    Running,
    /// No new offers until resumed (by hand, `on_success: pause`, or a missed success threshold).
    Paused,
    /// Stopped by a threshold, the end time or a person; no new offers.
    Aborted,
    /// Every phase done, or the end time passed.
    Completed,
}

impl DeploymentState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::AwaitingApproval => "awaiting_approval",
            DeploymentState::Running => "running",
            DeploymentState::Paused => "paused",
            DeploymentState::Aborted => "aborted",
            DeploymentState::Completed => "completed",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Result<DeploymentState> {
        Ok(match s {
            "awaiting_approval" => DeploymentState::AwaitingApproval,
            "running" => DeploymentState::Running,
            "paused" => DeploymentState::Paused,
            "aborted" => DeploymentState::Aborted,
            "completed" => DeploymentState::Completed,
            _ => return Err(FleetError::invalid("state", format!("unknown deployment state {s:?}"))),
        })
    }
}

/// Where one device is in one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ExecState {
    /// Waiting for its phase (or its retry time).
    Queued,
    /// An offer went out.
    Offered,
    /// Downloading.
    Downloading,
    /// Downloaded and hash-checked.
    Downloaded,
    /// Checking signatures and compatibility.
    Verifying,
    /// Running the golden queries on the staged kernel.
    Trial,
    /// Switched over and healthy.
    Succeeded,
    /// Failed for a reason (download, verify, …), retries used up.
    Failed,
    /// No status update within the in-progress timeout, retries used up.
    TimedOut,
    /// The golden queries or the health check failed.
    HealthFailed,
    /// Sent back to its previous kernel after an abort.
    RolledBack,
    /// The device refused the offer (trust, compatibility).
    Rejected,
    /// Never offered: the deployment stopped first.
    Canceled,
}

impl ExecState {
    /// Every state, in order.
    pub const ALL: [ExecState; 13] = [
        ExecState::Queued,
        ExecState::Offered,
        ExecState::Downloading,
        ExecState::Downloaded,
        ExecState::Verifying,
        ExecState::Trial,
        ExecState::Succeeded,
        ExecState::Failed,
        ExecState::TimedOut,
        ExecState::HealthFailed,
        ExecState::RolledBack,
        ExecState::Rejected,
        ExecState::Canceled,
    ];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecState::Queued => "queued",
            ExecState::Offered => "offered",
            ExecState::Downloading => "downloading",
            ExecState::Downloaded => "downloaded",
            ExecState::Verifying => "verifying",
            ExecState::Trial => "trial",
            ExecState::Succeeded => "succeeded",
            ExecState::Failed => "failed",
            ExecState::TimedOut => "timed_out",
            ExecState::HealthFailed => "health_failed",
            ExecState::RolledBack => "rolled_back",
            ExecState::Rejected => "rejected",
            ExecState::Canceled => "canceled",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Result<ExecState> {
        ExecState::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| FleetError::invalid("state", format!("unknown execution state {s:?}")))
    }

    /// Offered and not finished: counts against the download cap and the timeout.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            ExecState::Offered
                | ExecState::Downloading
                | ExecState::Downloaded
                | ExecState::Verifying
                | ExecState::Trial
        )
    }

    /// A failure that counts toward the abort threshold.
    pub fn is_failure(self) -> bool {
        matches!(self, ExecState::Failed | ExecState::TimedOut | ExecState::HealthFailed | ExecState::Rejected)
    }

    /// Finished (success or failure; canceled and rolled back too).
    pub fn terminal(self) -> bool {
        !self.in_progress() && self != ExecState::Queued
    }

    /// Position on the way to success (for the forward-only rule), if on it.
    fn step(self) -> Option<u8> {
        Some(match self {
            ExecState::Offered => 1,
            ExecState::Downloading => 2,
            ExecState::Downloaded => 3,
            ExecState::Verifying => 4,
            ExecState::Trial => 5,
            ExecState::Succeeded => 6,
            _ => return None,
        })
    }

    /// Whether a device may report `to` while in `self`: forward along
    /// `offered → downloading → downloaded → verifying → trial → succeeded` (a step may be
    /// skipped; `downloading → downloading` reports progress), a failure from any
    /// in-progress state, or `trial → rolled_back` (the device went back to its previous
    /// kernel, e.g. after a power cut before its commit).
    pub fn device_may_move_to(self, to: ExecState) -> bool {
        if !self.in_progress() {
            return false;
        }
        match (self.step(), to.step()) {
            (Some(a), Some(b)) => b > a || (self == ExecState::Downloading && to == ExecState::Downloading),
            // A device that lost power (or failed its health check) in trial goes back to
            // its previous kernel and says so.
            _ => {
                matches!(to, ExecState::Failed | ExecState::HealthFailed | ExecState::Rejected)
                    || (self == ExecState::Trial && to == ExecState::RolledBack)
            }
        }
    }
}

/// One entry of an execution's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The state entered.
    pub state: ExecState,
    /// When (unix ms).
    pub at_ms: i64,
    /// Why, for failures and retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The kind of a failure a device reports, which picks the retry budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Network, storage or throughput trouble while downloading.
    Download,
    /// Hash, signature or compatibility check failed.
    Verify,
    /// Golden queries or health check failed.
    Health,
    /// Anything else.
    Other,
}

/// A status report from a device about one execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    /// The execution version the device last saw (from the offer or the last report).
    pub expect_version: i64,
    /// The state it is in now.
    pub state: ExecState,
    /// For failures: which kind.
    #[serde(default)]
    pub failure: Option<FailureKind>,
    /// A reason code or short text.
    #[serde(default)]
    pub reason: Option<String>,
    /// Bytes transferred so far in this attempt.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// Lines of the device's log to keep (bounded).
    #[serde(default)]
    pub log: Option<String>,
}
