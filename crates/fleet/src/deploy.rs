//! Releases, deployments, offers, status reports and the periodic rollout logic.

use crate::Fleet;
use crate::devices::quote;
use crate::error::{FleetError, Result};
use crate::events::{Event, EventKind};
use crate::model::{
    AbortPolicy, DeploymentState, EndBehaviour, ExecState, FailureKind, MAX_LOG_BYTES, Plan, Selector, StatusReport,
    Transition, check_name,
};
use crate::plan::{self, Counts};
use crate::rows::{parse_json, random_hex, sha256_hex};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use std::collections::BTreeMap;

/// Largest log excerpt one status report may carry, bytes.
pub const MAX_REPORT_LOG_BYTES: usize = 16 * 1024;
/// Longest reason text, bytes.
pub const MAX_REASON_BYTES: usize = 256;

/// A release to record: a signed kernel published to a channel (the server stored the
/// file and signed the manifest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewRelease {
    /// Id.
    pub id: String,
    /// Channel (`stable`, `beta`, …).
    pub channel: String,
    /// Version: must exceed every earlier version on the channel.
    pub version: u64,
    /// The kernel it publishes.
    pub kernel_id: String,
    /// SHA-256 of the kernel file, hex (its blob key).
    pub sha256: String,
    /// Bytes.
    pub length: u64,
    /// The signed release manifest, as served to devices.
    pub manifest: String,
    /// Who published it.
    pub created_by: String,
    /// A delta from an earlier release: `(from release id, sha256, length)`.
    pub delta: Option<(String, String, u64)>,
}

/// A delta next to a release's full file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeltaInfo {
    /// The release it applies to.
    pub from_release: String,
    /// SHA-256 of the delta blob, hex.
    pub sha256: String,
    /// Bytes.
    pub length: u64,
}

/// A release as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseInfo {
    /// Id.
    pub id: String,
    /// Channel.
    pub channel: String,
    /// Version on the channel.
    pub version: u64,
    /// Kernel id.
    pub kernel_id: String,
    /// SHA-256 of the kernel file, hex.
    pub sha256: String,
    /// Bytes.
    pub length: u64,
    /// The signed manifest.
    pub manifest: String,
    /// Who published it.
    pub created_by: String,
    /// When (unix ms).
    pub created_ms: i64,
    /// Deltas to it.
    pub deltas: Vec<DeltaInfo>,
}

/// A new deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDeployment {
    /// A name for people.
    pub name: String,
    /// The release to roll out.
    pub release_id: String,
    /// Which devices.
    pub target: Selector,
    /// Phases, thresholds, times, retries, abort policy.
    pub plan: Plan,
}

/// An edit: resets any approval.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditDeployment {
    /// A new target (only before the deployment started).
    #[serde(default)]
    pub target: Option<Selector>,
    /// A new plan.
    #[serde(default)]
    pub plan: Option<Plan>,
}

/// A deployment with its progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeploymentInfo {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Release.
    pub release_id: String,
    /// Target.
    pub target: Selector,
    /// Plan.
    pub plan: Plan,
    /// State.
    pub state: DeploymentState,
    /// Why it paused, aborted or completed.
    pub reason: Option<String>,
    /// The digest an approval must name.
    pub digest: String,
    /// Creator.
    pub created_by: String,
    /// Created (unix ms).
    pub created_ms: i64,
    /// Approver.
    pub approved_by: Option<String>,
    /// Approved (unix ms).
    pub approved_ms: Option<i64>,
    /// Current phase (0-based).
    pub current_phase: u64,
    /// When the current phase started.
    pub phase_started_ms: Option<i64>,
    /// When every device of the current phase had finished (the bake runs from here).
    pub phase_done_ms: Option<i64>,
    /// Started (unix ms).
    pub started_ms: Option<i64>,
    /// Finished (unix ms).
    pub finished_ms: Option<i64>,
    /// Devices targeted at start.
    pub target_count: u64,
    /// Cumulative devices per phase.
    pub phase_cutoffs: Vec<u64>,
    /// Executions per state.
    pub counts: BTreeMap<String, u64>,
}

/// One device in one deployment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecutionInfo {
    /// Deployment.
    pub deployment_id: String,
    /// Device.
    pub device_id: String,
    /// Its phase.
    pub phase: u64,
    /// State.
    pub state: ExecState,
    /// Version: a status report must name it.
    pub version: i64,
    /// Offers made.
    pub attempts: u64,
    /// Bytes transferred in the current attempt.
    pub bytes: u64,
    /// The last failure reason.
    pub reason: Option<String>,
    /// Not offered again before (unix ms).
    pub next_retry_ms: i64,
    /// Last change (unix ms).
    pub since_ms: i64,
    /// Finished (unix ms).
    pub finished_ms: Option<i64>,
    /// The release the device ran before on this channel.
    pub from_release: Option<String>,
    /// Revert after an abort: `pending`, `offered`, `done`, `failed`, `no_previous`.
    pub revert: Option<String>,
    /// Every state change.
    pub history: Vec<Transition>,
    /// The device's log excerpt (bounded).
    pub log: String,
}

/// Install the release, or go back to the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfferKind {
    /// Install the release (a newer version).
    Install,
    /// Go back to the previous release after an abort (a downgrade this order allows).
    Revert,
}

/// What a polling device is told to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Offer {
    /// Unique per attempt.
    pub offer_id: String,
    /// Device.
    pub device_id: String,
    /// Deployment.
    pub deployment_id: String,
    /// Install or revert.
    pub kind: OfferKind,
    /// The execution version the first status report must name.
    pub execution_version: i64,
    /// Attempt number (1-based).
    pub attempt: u64,
    /// The release to install.
    pub release: ReleaseInfo,
    /// A delta the device can use instead of the full file (when it runs the base).
    pub delta: Option<DeltaInfo>,
    /// The offer is void after this (unix ms).
    pub expires_ms: i64,
    /// SHA-256 of the kernel the delta applies to (the device's current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_sha256: Option<String>,
    /// The offer as the device must verify it: a signed envelope (kind `offer`, under the
    /// release key) binding device, deployment, kind, the signed release manifest, the
    /// delta, expiry and a nonce. Everything else here is a convenience copy.
    pub signed: String,
}

/// The result of a status report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusOutcome {
    /// The execution's state now (`queued` when a failure is retried).
    pub state: ExecState,
    /// The version the next report must name.
    pub version: i64,
    /// False when this report repeated the last one (idempotent, nothing changed).
    pub changed: bool,
    /// The deployment's state after it (a report may abort it).
    pub deployment_state: DeploymentState,
}

const EXEC_COLUMNS: &str = "deployment_id, device_id, rank, phase, state, version, attempts, bytes, reason, next_retry_ms, \
                            since_ms, created_ms, finished_ms, from_release, revert, history, log, last_report";

fn exec_info(r: &AnyRow) -> Result<ExecutionInfo> {
    let history: String = r.try_get("history")?;
    Ok(ExecutionInfo {
        deployment_id: r.try_get("deployment_id")?,
        device_id: r.try_get("device_id")?,
        phase: r.try_get::<i64, _>("phase")? as u64,
        state: ExecState::parse(&r.try_get::<String, _>("state")?)?,
        version: r.try_get("version")?,
        attempts: r.try_get::<i64, _>("attempts")? as u64,
        bytes: r.try_get::<i64, _>("bytes")? as u64,
        reason: r.try_get("reason")?,
        next_retry_ms: r.try_get("next_retry_ms")?,
        since_ms: r.try_get("since_ms")?,
        finished_ms: r.try_get("finished_ms")?,
        from_release: r.try_get("from_release")?,
        revert: r.try_get("revert")?,
        history: history.lines().filter_map(|l| serde_json::from_str(l).ok()).collect(),
        log: r.try_get("log")?,
    })
}

fn history_line(state: ExecState, at_ms: i64, reason: Option<&str>) -> String {
    let t = Transition { state, at_ms, reason: reason.map(str::to_owned) };
    format!("{}\n", serde_json::to_string(&t).unwrap_or_default())
}

const DEPLOYMENT_COLUMNS: &str = "id, name, release_id, target, plan, state, reason, digest, created_by, created_ms, approved_by, \
                                  approved_ms, current_phase, phase_started_ms, phase_done_ms, started_ms, finished_ms, \
                                  target_count, version";

#[derive(Debug, Clone)]
struct DeploymentRow {
    info: DeploymentInfo,
    version: i64,
}

fn deployment_row(r: &AnyRow) -> Result<DeploymentRow> {
    let target: String = r.try_get("target")?;
    let plan_text: String = r.try_get("plan")?;
    let state: String = r.try_get("state")?;
    let plan: Plan = parse_json("plan", &plan_text)?;
    let target_count = r.try_get::<i64, _>("target_count")? as u64;
    let started: Option<i64> = r.try_get("started_ms")?;
    let phase_cutoffs =
        if started.is_some() { plan::cutoffs(&plan, target_count).unwrap_or_default() } else { Vec::new() };
    Ok(DeploymentRow {
        version: r.try_get("version")?,
        info: DeploymentInfo {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            release_id: r.try_get("release_id")?,
            target: parse_json("target", &target)?,
            plan,
            state: DeploymentState::parse(&state)?,
            reason: r.try_get("reason")?,
            digest: r.try_get("digest")?,
            created_by: r.try_get("created_by")?,
            created_ms: r.try_get("created_ms")?,
            approved_by: r.try_get("approved_by")?,
            approved_ms: r.try_get("approved_ms")?,
            current_phase: r.try_get::<i64, _>("current_phase")? as u64,
            phase_started_ms: r.try_get("phase_started_ms")?,
            phase_done_ms: r.try_get("phase_done_ms")?,
            started_ms: started,
            finished_ms: r.try_get("finished_ms")?,
            target_count,
            phase_cutoffs,
            counts: BTreeMap::new(),
        },
    })
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| FleetError::Internal(e.to_string()))
}

fn clip_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[..at]
}

/// The last `max` bytes of `s` (on a character boundary).
pub(crate) fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut at = s.len() - max;
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

impl Fleet {
    // ------------------------------------------------------------------ releases

    /// Records a release; its version must exceed every earlier one on the channel.
    pub async fn insert_release(&self, r: &NewRelease, now: i64) -> Result<ReleaseInfo> {
        check_name("channel", &r.channel, false)?;
        if r.version == 0 || r.version > i64::MAX as u64 {
            return Err(FleetError::invalid("version", "must be in [1, 2^63)"));
        }
        // Insert first (taking the write lock), then compare with the other versions.
        let mut tx = self.pool.begin().await?;
        let ins = sqlx::query(
            "INSERT INTO fleet_releases (id, channel, version, kernel_id, sha256, length, manifest, created_by, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(&r.id)
        .bind(&r.channel)
        .bind(r.version as i64)
        .bind(&r.kernel_id)
        .bind(&r.sha256)
        .bind(r.length as i64)
        .bind(&r.manifest)
        .bind(&r.created_by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if ins.rows_affected() != 1 {
            return Err(FleetError::Conflict(format!(
                "version {} on channel {} exists already",
                r.version,
                quote(&r.channel)
            )));
        }
        let max: Option<i64> =
            sqlx::query("SELECT MAX(version) AS v FROM fleet_releases WHERE channel = $1 AND id <> $2")
                .bind(&r.channel)
                .bind(&r.id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("v")?;
        if let Some(m) = max
            && r.version as i64 <= m
        {
            return Err(FleetError::Conflict(format!(
                "version {} on channel {} must exceed the latest, {m}",
                r.version,
                quote(&r.channel)
            )));
        }
        if let Some((from, sha, len)) = &r.delta {
            sqlx::query(
                "INSERT INTO fleet_deltas (release_id, from_release_id, sha256, length) VALUES ($1, $2, $3, $4)",
            )
            .bind(&r.id)
            .bind(from)
            .bind(sha)
            .bind(*len as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.events.emit(
            EventKind::ReleasePublished,
            None,
            None,
            serde_json::json!({"release": r.id, "channel": r.channel, "version": r.version}),
        );
        self.release(&r.id).await
    }

    /// A release.
    pub async fn release(&self, id: &str) -> Result<ReleaseInfo> {
        let row = sqlx::query(
            "SELECT id, channel, version, kernel_id, sha256, length, manifest, created_by, created_ms FROM fleet_releases WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| FleetError::NotFound(format!("no release {}", quote(id))))?;
        self.release_info(&row).await
    }

    async fn release_info(&self, r: &AnyRow) -> Result<ReleaseInfo> {
        let id: String = r.try_get("id")?;
        let deltas = sqlx::query("SELECT from_release_id, sha256, length FROM fleet_deltas WHERE release_id = $1")
            .bind(&id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|d| {
                Ok(DeltaInfo {
                    from_release: d.try_get("from_release_id")?,
                    sha256: d.try_get("sha256")?,
                    length: d.try_get::<i64, _>("length")? as u64,
                })
            })
            .collect::<Result<_>>()?;
        Ok(ReleaseInfo {
            id,
            channel: r.try_get("channel")?,
            version: r.try_get::<i64, _>("version")? as u64,
            kernel_id: r.try_get("kernel_id")?,
            sha256: r.try_get("sha256")?,
            length: r.try_get::<i64, _>("length")? as u64,
            manifest: r.try_get("manifest")?,
            created_by: r.try_get("created_by")?,
            created_ms: r.try_get("created_ms")?,
            deltas,
        })
    }

    /// Releases, newest first, optionally of one channel.
    pub async fn releases(&self, channel: Option<&str>) -> Result<Vec<ReleaseInfo>> {
        let cols = "id, channel, version, kernel_id, sha256, length, manifest, created_by, created_ms";
        let rows = match channel {
            Some(c) => {
                sqlx::query(&format!("SELECT {cols} FROM fleet_releases WHERE channel = $1 ORDER BY version DESC"))
                    .bind(c)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(&format!("SELECT {cols} FROM fleet_releases ORDER BY created_ms DESC"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.release_info(r).await?);
        }
        Ok(out)
    }

    /// The release of `version` on `channel`, if recorded.
    pub async fn release_by_version(&self, channel: &str, version: u64) -> Result<Option<ReleaseInfo>> {
        let id: Option<String> = sqlx::query("SELECT id FROM fleet_releases WHERE channel = $1 AND version = $2")
            .bind(channel)
            .bind(version as i64)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("id"))
            .transpose()?;
        match id {
            Some(id) => Ok(Some(self.release(&id).await?)),
            None => Ok(None),
        }
    }

    /// Every blob a release references (kernel files and deltas): what blob GC keeps.
    pub async fn referenced_blobs(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for r in sqlx::query("SELECT sha256 FROM fleet_releases").fetch_all(&self.pool).await? {
            out.push(r.try_get("sha256")?);
        }
        for r in sqlx::query("SELECT sha256 FROM fleet_deltas").fetch_all(&self.pool).await? {
            out.push(r.try_get("sha256")?);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Whether a blob belongs to a release or delta (devices may download only those).
    pub async fn blob_is_published(&self, sha256: &str) -> Result<bool> {
        let a = sqlx::query("SELECT 1 AS x FROM fleet_releases WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        if a.is_some() {
            return Ok(true);
        }
        let b = sqlx::query("SELECT 1 AS x FROM fleet_deltas WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(b.is_some())
    }

    // ------------------------------------------------------------------ deployments

    /// Creates a deployment. It waits for approval by another principal, unless the
    /// configuration disables approval (then it starts at once).
    pub async fn create_deployment(&self, c: &CreateDeployment, by: &str, now: i64) -> Result<DeploymentInfo> {
        check_name("name", &c.name, false)?;
        let release = self.release(&c.release_id).await.map_err(|e| match e {
            FleetError::NotFound(m) => FleetError::invalid("release_id", m),
            e => e,
        })?;
        let n = self.select_accepted(&c.target).await?.len() as u64;
        if n == 0 {
            return Err(FleetError::invalid("target", "matches no accepted device"));
        }
        plan::cutoffs(&c.plan, n)?;
        let id = format!("dep-{}", random_hex(8));
        let digest = plan::approval_digest(&release.id, &release.sha256, &c.target, &c.plan);
        sqlx::query(
            "INSERT INTO fleet_deployments (id, name, release_id, target, plan, state, digest, created_by, created_ms) \
             VALUES ($1, $2, $3, $4, $5, 'awaiting_approval', $6, $7, $8)",
        )
        .bind(&id)
        .bind(&c.name)
        .bind(&c.release_id)
        .bind(to_json(&c.target)?)
        .bind(to_json(&c.plan)?)
        .bind(&digest)
        .bind(by)
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.events.emit(EventKind::DeploymentCreated, None, Some(&id), serde_json::json!({"by": by, "targets": n}));
        if !self.config.require_approval {
            return self.approve(&id, by, &digest, now).await;
        }
        self.deployment(&id).await
    }

    async fn deployment_row(&self, id: &str) -> Result<DeploymentRow> {
        let row = sqlx::query(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM fleet_deployments WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no deployment {}", quote(id))))?;
        deployment_row(&row)
    }

    /// A deployment with its counts.
    pub async fn deployment(&self, id: &str) -> Result<DeploymentInfo> {
        let mut d = self.deployment_row(id).await?.info;
        d.counts = self.counts(id, None).await?.by_state.into_iter().map(|(s, n)| (s.as_str().to_owned(), n)).collect();
        Ok(d)
    }

    /// Every deployment, newest first.
    pub async fn deployments(&self) -> Result<Vec<DeploymentInfo>> {
        let ids: Vec<String> = sqlx::query("SELECT id FROM fleet_deployments ORDER BY created_ms DESC")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.deployment(&id).await?);
        }
        Ok(out)
    }

    /// Execution counts of a deployment, of phases up to `max_phase` (all when `None`).
    async fn counts(&self, id: &str, max_phase: Option<u64>) -> Result<Counts> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM fleet_executions WHERE deployment_id = $1 AND phase <= $2 GROUP BY state",
        )
        .bind(id)
        .bind(max_phase.map_or(i64::MAX, |p| p as i64))
        .fetch_all(&self.pool)
        .await?;
        let mut c = Counts::default();
        for r in rows {
            let s = ExecState::parse(&r.try_get::<String, _>("state")?)?;
            c.by_state.insert(s, r.try_get::<i64, _>("n")? as u64);
        }
        Ok(c)
    }

    /// Edits the target (before start) or the plan; any approval is reset and the
    /// deployment waits for a new one (a running one stops offering meanwhile).
    pub async fn edit_deployment(&self, id: &str, e: &EditDeployment, by: &str) -> Result<DeploymentInfo> {
        let d = self.deployment_row(id).await?;
        let info = &d.info;
        if matches!(info.state, DeploymentState::Aborted | DeploymentState::Completed) {
            return Err(FleetError::Conflict(format!("deployment {id} is {}; it cannot change", info.state.as_str())));
        }
        if e.target.is_some() && info.started_ms.is_some() {
            return Err(FleetError::Conflict("the target cannot change after the deployment started".into()));
        }
        let target = e.target.clone().unwrap_or_else(|| info.target.clone());
        let plan = e.plan.clone().unwrap_or_else(|| info.plan.clone());
        let n = if info.started_ms.is_some() {
            info.target_count
        } else {
            self.select_accepted(&target).await?.len() as u64
        };
        plan::cutoffs(&plan, n)?;
        let release = self.release(&info.release_id).await?;
        let digest = plan::approval_digest(&release.id, &release.sha256, &target, &plan);
        let r = sqlx::query(
            "UPDATE fleet_deployments SET target = $1, plan = $2, digest = $3, state = 'awaiting_approval', approved_by = NULL, \
             approved_digest = NULL, approved_ms = NULL, reason = $4, version = version + 1 WHERE id = $5 AND version = $6",
        )
        .bind(to_json(&target)?)
        .bind(to_json(&plan)?)
        .bind(&digest)
        .bind(format!("edited by {by}; needs approval"))
        .bind(id)
        .bind(d.version)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() != 1 {
            return Err(FleetError::Conflict(format!("deployment {id} changed meanwhile; try again")));
        }
        self.events.emit(EventKind::DeploymentCreated, None, Some(id), serde_json::json!({"edited_by": by}));
        self.deployment(id).await
    }

    /// Approves the deployment as it is now — `digest` must be its current digest, and
    /// the approver someone other than the creator (unless approval is disabled) — and
    /// starts it: the target is fixed and every device gets its phase.
    pub async fn approve(&self, id: &str, by: &str, digest: &str, now: i64) -> Result<DeploymentInfo> {
        let d = self.deployment_row(id).await?;
        let info = &d.info;
        if info.state != DeploymentState::AwaitingApproval {
            return Err(FleetError::Conflict(format!(
                "deployment {id} is {}, not awaiting approval",
                info.state.as_str()
            )));
        }
        if self.config.require_approval && info.created_by == by {
            return Err(FleetError::Forbidden(
                "a deployment needs approval by a principal other than its creator".into(),
            ));
        }
        if digest != info.digest {
            return Err(FleetError::Conflict(format!(
                "digest: the deployment changed since you reviewed it (now {}); review and approve again",
                info.digest
            )));
        }
        let mut tx = self.pool.begin().await?;
        let first_start = info.started_ms.is_none();
        let mut target_count = info.target_count;
        if first_start {
            let devices = self.select_accepted(&info.target).await?;
            if devices.len() as u64 > self.config.max_targets {
                return Err(FleetError::invalid("target", format!("more than {} devices", self.config.max_targets)));
            }
            let cut = plan::cutoffs(&info.plan, devices.len() as u64)?;
            let mut ranked: Vec<(u64, &str)> =
                devices.iter().map(|dv| (plan::rank(id, &dv.id), dv.id.as_str())).collect();
            ranked.sort_unstable();
            let queued = history_line(ExecState::Queued, now, None);
            let reachable: Vec<(usize, &str, usize)> = ranked
                .iter()
                .enumerate()
                .filter_map(|(pos, (_, dev))| plan::phase_of(&cut, pos as u64).map(|ph| (pos, *dev, ph)))
                .collect();
            for chunk in reachable.chunks(200) {
                let mut sql = String::from(
                    "INSERT INTO fleet_executions (deployment_id, device_id, rank, phase, state, version, since_ms, created_ms, history, log) VALUES ",
                );
                for i in 0..chunk.len() {
                    let b = i * 5;
                    if i > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!(
                        "(${}, ${}, ${}, ${}, 'queued', 0, ${}, ${}, ${}, '')",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 5,
                        chunk.len() * 5 + 1
                    ));
                }
                let mut q = sqlx::query(&sql);
                for (pos, dev, ph) in chunk {
                    q = q.bind(id).bind(*dev).bind(*pos as i64).bind(*ph as i64).bind(now);
                }
                q.bind(&queued).execute(&mut *tx).await?;
            }
            target_count = devices.len() as u64;
        } else {
            // Re-approved after an edit: queued devices take their phase under the new plan.
            let cut = plan::cutoffs(&info.plan, target_count)?;
            for (ph, lo) in cut.iter().enumerate() {
                let from = if ph == 0 { 0 } else { cut[ph - 1] };
                sqlx::query(
                    "UPDATE fleet_executions SET phase = $1 WHERE deployment_id = $2 AND rank >= $3 AND rank < $4",
                )
                .bind(ph as i64)
                .bind(id)
                .bind(from as i64)
                .bind(*lo as i64)
                .execute(&mut *tx)
                .await?;
            }
        }
        let r = sqlx::query(
            "UPDATE fleet_deployments SET state = 'running', reason = NULL, approved_by = $1, approved_digest = $2, approved_ms = $3, \
             started_ms = COALESCE(started_ms, $3), phase_started_ms = COALESCE(phase_started_ms, $3), target_count = $4, \
             version = version + 1 WHERE id = $5 AND version = $6",
        )
        .bind(by)
        .bind(digest)
        .bind(now)
        .bind(target_count as i64)
        .bind(id)
        .bind(d.version)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Err(FleetError::Conflict(format!("deployment {id} changed meanwhile; review and approve again")));
        }
        tx.commit().await?;
        self.events.emit(
            EventKind::DeploymentApproved,
            None,
            Some(id),
            serde_json::json!({"by": by, "targets": target_count}),
        );
        self.deployment(id).await
    }

    /// Stops new offers until resumed.
    pub async fn pause(&self, id: &str, by: &str) -> Result<DeploymentInfo> {
        self.set_state(id, &[DeploymentState::Running], DeploymentState::Paused, &format!("paused by {by}"), None)
            .await?;
        self.events.emit(EventKind::DeploymentPaused, None, Some(id), serde_json::json!({"by": by}));
        self.deployment(id).await
    }

    /// Offers again.
    pub async fn resume(&self, id: &str, by: &str) -> Result<DeploymentInfo> {
        self.set_state(id, &[DeploymentState::Paused], DeploymentState::Running, "", None).await?;
        self.events.emit(EventKind::DeploymentResumed, None, Some(id), serde_json::json!({"by": by}));
        self.deployment(id).await
    }

    /// Moves to the next phase now, skipping the rest of the bake (a paused deployment
    /// runs again).
    pub async fn promote(&self, id: &str, by: &str, now: i64) -> Result<DeploymentInfo> {
        let d = self.deployment_row(id).await?;
        if !matches!(d.info.state, DeploymentState::Running | DeploymentState::Paused) {
            return Err(FleetError::Conflict(format!("deployment {id} is {}", d.info.state.as_str())));
        }
        if let Some(e) = self.advance(&d, now, &format!("promoted by {by}")).await? {
            let _ = e;
        } else {
            return Err(FleetError::Conflict(format!("deployment {id} changed meanwhile; try again")));
        }
        self.deployment(id).await
    }

    /// Aborts by hand (with the plan's abort policy).
    pub async fn abort(&self, id: &str, by: &str, now: i64) -> Result<DeploymentInfo> {
        let d = self.deployment_row(id).await?;
        if !matches!(
            d.info.state,
            DeploymentState::Running | DeploymentState::Paused | DeploymentState::AwaitingApproval
        ) {
            return Err(FleetError::Conflict(format!("deployment {id} is {}", d.info.state.as_str())));
        }
        if self.abort_now(&d.info, &format!("aborted by {by}"), now).await?.is_none() {
            return Err(FleetError::Conflict(format!("deployment {id} changed meanwhile; try again")));
        }
        self.deployment(id).await
    }

    async fn set_state(
        &self,
        id: &str,
        from: &[DeploymentState],
        to: DeploymentState,
        reason: &str,
        finished: Option<i64>,
    ) -> Result<()> {
        let d = self.deployment_row(id).await?;
        if !from.contains(&d.info.state) {
            return Err(FleetError::Conflict(format!(
                "deployment {id} is {}; cannot make it {}",
                d.info.state.as_str(),
                to.as_str()
            )));
        }
        let r = sqlx::query(
            "UPDATE fleet_deployments SET state = $1, reason = $2, finished_ms = COALESCE($3, finished_ms), version = version + 1 \
             WHERE id = $4 AND version = $5",
        )
        .bind(to.as_str())
        .bind((!reason.is_empty()).then_some(reason))
        .bind(finished)
        .bind(id)
        .bind(d.version)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() != 1 {
            return Err(FleetError::Conflict(format!("deployment {id} changed meanwhile; try again")));
        }
        Ok(())
    }

    /// Aborts: no offers from now on, devices not offered yet are canceled, and with
    /// `revert` every touched device that ran an earlier release is marked for a revert
    /// offer. `None` when another caller aborted or changed it first.
    async fn abort_now(&self, d: &DeploymentInfo, reason: &str, now: i64) -> Result<Option<Event>> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE fleet_deployments SET state = 'aborted', reason = $1, finished_ms = $2, version = version + 1 \
             WHERE id = $3 AND state IN ('running', 'paused', 'awaiting_approval')",
        )
        .bind(reason)
        .bind(now)
        .bind(&d.id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE fleet_executions SET state = 'canceled', version = version + 1, since_ms = $1, finished_ms = $1, \
             history = history || $2 WHERE deployment_id = $3 AND state = 'queued'",
        )
        .bind(now)
        .bind(history_line(ExecState::Canceled, now, Some(reason)))
        .bind(&d.id)
        .execute(&mut *tx)
        .await?;
        if d.plan.abort_policy == AbortPolicy::Revert {
            sqlx::query(
                "UPDATE fleet_executions SET revert = 'pending' \
                 WHERE deployment_id = $1 AND state NOT IN ('queued', 'canceled') AND from_release IS NOT NULL",
            )
            .bind(&d.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE fleet_executions SET revert = 'no_previous' \
                 WHERE deployment_id = $1 AND state NOT IN ('queued', 'canceled') AND from_release IS NULL",
            )
            .bind(&d.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(self.events.emit(
            EventKind::DeploymentAborted,
            None,
            Some(&d.id),
            serde_json::json!({"reason": reason, "policy": d.plan.abort_policy}),
        )))
    }

    /// Moves to the next phase (or completes after the last). `None` if it changed meanwhile.
    async fn advance(&self, d: &DeploymentRow, now: i64, why: &str) -> Result<Option<Event>> {
        let info = &d.info;
        let last = info.current_phase as usize + 1 >= info.plan.phases.len();
        let (sql, kind) = if last {
            (
                "UPDATE fleet_deployments SET state = 'completed', reason = $1, finished_ms = $2, version = version + 1 \
                 WHERE id = $3 AND version = $4",
                EventKind::DeploymentCompleted,
            )
        } else {
            (
                "UPDATE fleet_deployments SET state = 'running', reason = $1, current_phase = current_phase + 1, \
                 phase_started_ms = $2, phase_done_ms = NULL, version = version + 1 WHERE id = $3 AND version = $4",
                EventKind::PhaseAdvanced,
            )
        };
        let r = sqlx::query(sql).bind(why).bind(now).bind(&info.id).bind(d.version).execute(&self.pool).await?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        if !last {
            // Devices of the new phase start their offline clock now.
            sqlx::query("UPDATE fleet_executions SET since_ms = $1 WHERE deployment_id = $2 AND phase = $3 AND state = 'queued'")
                .bind(now)
                .bind(&info.id)
                .bind(info.current_phase as i64 + 1)
                .execute(&self.pool)
                .await?;
        }
        Ok(Some(self.events.emit(
            kind,
            None,
            Some(&info.id),
            serde_json::json!({"phase": info.current_phase + u64::from(!last), "reason": why}),
        )))
    }

    /// Executions of a deployment (optionally in one state), in rank order.
    pub async fn executions(&self, id: &str, state: Option<ExecState>, limit: usize) -> Result<Vec<ExecutionInfo>> {
        self.deployment_row(id).await?;
        let rows = sqlx::query(&format!(
            "SELECT {EXEC_COLUMNS} FROM fleet_executions WHERE deployment_id = $1 AND ($2 = '' OR state = $2) ORDER BY rank LIMIT $3"
        ))
        .bind(id)
        .bind(state.map_or("", ExecState::as_str))
        .bind(limit.min(100_000) as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(exec_info).collect()
    }

    /// One execution.
    pub async fn execution(&self, deployment: &str, device: &str) -> Result<ExecutionInfo> {
        let row = sqlx::query(&format!(
            "SELECT {EXEC_COLUMNS} FROM fleet_executions WHERE deployment_id = $1 AND device_id = $2"
        ))
        .bind(deployment)
        .bind(device)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| {
            FleetError::NotFound(format!(
                "device {} has no execution in deployment {}",
                quote(device),
                quote(deployment)
            ))
        })?;
        exec_info(&row)
    }

    // ------------------------------------------------------------------ device side

    /// The next thing `device` should do: a revert ordered by an aborted deployment, the
    /// offer it already has (again, after a restart), or a new offer from a running
    /// deployment whose current phase includes it — `None` when there is nothing.
    pub async fn next_offer(&self, device: &str, now: i64) -> Result<Option<Offer>> {
        // 1. Reverts.
        let rows = sqlx::query(&format!(
            "SELECT {EXEC_COLUMNS} FROM fleet_executions WHERE device_id = $1 AND revert IN ('pending', 'offered') ORDER BY created_ms LIMIT 1"
        ))
        .bind(device)
        .fetch_all(&self.pool)
        .await?;
        if let Some(r) = rows.first() {
            let e = exec_info(r)?;
            let from = e.from_release.clone().unwrap_or_default();
            let release = self.release(&from).await?;
            let mut version = e.version;
            if e.revert.as_deref() == Some("pending") {
                let u = sqlx::query(
                    "UPDATE fleet_executions SET revert = 'offered', version = version + 1, since_ms = $1 \
                     WHERE deployment_id = $2 AND device_id = $3 AND version = $4",
                )
                .bind(now)
                .bind(&e.deployment_id)
                .bind(device)
                .bind(e.version)
                .execute(&self.pool)
                .await?;
                if u.rows_affected() != 1 {
                    return Ok(None);
                }
                version += 1;
            }
            return Ok(Some(self.offer(OfferKind::Revert, &e, version, release, None, now, 3_600_000).await?));
        }
        // 2. An offer already made and not yet in trial (the device restarted or lost the
        //    answer): the same release again, at the execution's current version, so the
        //    device resumes its download. A device in trial knows from its own state.
        let rows = sqlx::query(
            "SELECT e.deployment_id AS dep, d.release_id AS release_id, d.plan AS plan FROM fleet_executions e \
             JOIN fleet_deployments d ON d.id = e.deployment_id \
             WHERE e.device_id = $1 AND e.state IN ('offered', 'downloading', 'downloaded', 'verifying') \
             AND d.state IN ('running', 'paused') ORDER BY e.created_ms LIMIT 1",
        )
        .bind(device)
        .fetch_all(&self.pool)
        .await?;
        if let Some(r) = rows.first() {
            let dep: String = r.try_get("dep")?;
            let plan: Plan = parse_json("plan", &r.try_get::<String, _>("plan")?)?;
            let e = self.execution(&dep, device).await?;
            let release = self.release(&r.try_get::<String, _>("release_id")?).await?;
            let delta = self.delta_for(&release, e.from_release.as_deref());
            let version = e.version;
            return Ok(Some(
                self.offer(OfferKind::Install, &e, version, release, delta, now, timeout_ms(&plan)).await?,
            ));
        }
        // 3. A new offer.
        let rows = sqlx::query(
            "SELECT e.deployment_id AS dep, e.version AS version, d.plan AS plan, d.release_id AS release_id \
             FROM fleet_executions e JOIN fleet_deployments d ON d.id = e.deployment_id \
             WHERE e.device_id = $1 AND e.state = 'queued' AND d.state = 'running' AND e.phase <= d.current_phase \
             AND e.next_retry_ms <= $2 ORDER BY d.created_ms LIMIT 5",
        )
        .bind(device)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let dep: String = r.try_get("dep")?;
            let version: i64 = r.try_get("version")?;
            let plan: Plan = parse_json("plan", &r.try_get::<String, _>("plan")?)?;
            if plan.start_ms.is_some_and(|s| now < s) || plan.end_ms.is_some_and(|e| now >= e) {
                continue;
            }
            let release = self.release(&r.try_get::<String, _>("release_id")?).await?;
            let from_release = self.current_release_of(device, &release.channel).await?;
            let cap = if plan.max_concurrent_downloads == 0 { i64::MAX } else { plan.max_concurrent_downloads as i64 };
            let u = sqlx::query(
                "UPDATE fleet_executions SET state = 'offered', version = version + 1, attempts = attempts + 1, bytes = 0, \
                 since_ms = $1, from_release = COALESCE(from_release, $2), history = history || $3, last_report = NULL \
                 WHERE deployment_id = $4 AND device_id = $5 AND version = $6 AND state = 'queued' \
                 AND EXISTS (SELECT 1 FROM fleet_deployments d WHERE d.id = $4 AND d.state = 'running') \
                 AND (SELECT COUNT(*) FROM fleet_executions x WHERE x.deployment_id = $4 AND x.state IN ('offered', 'downloading')) < $7",
            )
            .bind(now)
            .bind(&from_release)
            .bind(history_line(ExecState::Offered, now, None))
            .bind(&dep)
            .bind(device)
            .bind(version)
            .bind(cap)
            .execute(&self.pool)
            .await?;
            if u.rows_affected() != 1 {
                continue;
            }
            let e = self.execution(&dep, device).await?;
            self.execution_changed(&ExecutionInfo { state: ExecState::Queued, ..e.clone() }, ExecState::Offered, None);
            let delta = self.delta_for(&release, e.from_release.as_deref());
            let v = e.version;
            return Ok(Some(self.offer(OfferKind::Install, &e, v, release, delta, now, timeout_ms(&plan)).await?));
        }
        Ok(None)
    }

    #[expect(clippy::too_many_arguments, reason = "one private constructor")]
    async fn offer(
        &self,
        kind: OfferKind,
        e: &ExecutionInfo,
        version: i64,
        release: ReleaseInfo,
        delta: Option<DeltaInfo>,
        now: i64,
        ttl_ms: i64,
    ) -> Result<Offer> {
        let from_sha256 = match &delta {
            Some(d) => Some(self.release(&d.from_release).await?.sha256),
            None => None,
        };
        let mut o = Offer {
            offer_id: format!("{}.{}.{}.{}", e.deployment_id, e.device_id, e.attempts.max(1), version),
            device_id: e.device_id.clone(),
            deployment_id: e.deployment_id.clone(),
            kind,
            execution_version: version,
            attempt: e.attempts.max(1),
            release,
            delta,
            expires_ms: now + ttl_ms,
            from_sha256,
            signed: String::new(),
        };
        o.signed = self.sign_offer(&o)?;
        Ok(o)
    }

    fn delta_for(&self, release: &ReleaseInfo, from: Option<&str>) -> Option<DeltaInfo> {
        let from = from?;
        release.deltas.iter().find(|d| d.from_release == from).cloned()
    }

    /// The release `device` reports running on `channel`, if it is one of ours.
    async fn current_release_of(&self, device: &str, channel: &str) -> Result<Option<String>> {
        let d = self.device(device).await?;
        let Some(k) = d.inventory.kernels.get(channel) else { return Ok(None) };
        Ok(self.release_by_version(channel, k.version).await?.map(|r| r.id))
    }

    /// A device's status report on an execution. Idempotent (repeating the last report
    /// changes nothing); a stale `expect_version` or a transition the state machine does
    /// not allow is a conflict that changes nothing. A failure with retries left goes back
    /// to `queued` with a backoff. A final outcome re-judges the abort threshold.
    pub async fn report(&self, device: &str, deployment: &str, r: &StatusReport, now: i64) -> Result<StatusOutcome> {
        if let Some(l) = &r.log
            && l.len() > MAX_REPORT_LOG_BYTES
        {
            return Err(FleetError::invalid("log", format!("larger than {MAX_REPORT_LOG_BYTES} bytes; send the tail")));
        }
        if let Some(reason) = &r.reason
            && reason.len() > MAX_REASON_BYTES
        {
            return Err(FleetError::invalid("reason", format!("longer than {MAX_REASON_BYTES} bytes")));
        }
        let fingerprint = sha256_hex(&serde_json::to_vec(r).unwrap_or_default());
        let e = self.execution(deployment, device).await?;
        let d = self.deployment_row(deployment).await?;
        let row = sqlx::query("SELECT last_report FROM fleet_executions WHERE deployment_id = $1 AND device_id = $2")
            .bind(deployment)
            .bind(device)
            .fetch_one(&self.pool)
            .await?;
        let last: Option<String> = row.try_get("last_report")?;
        if r.expect_version + 1 == e.version && last.as_deref() == Some(fingerprint.as_str()) {
            return Ok(StatusOutcome {
                state: e.state,
                version: e.version,
                changed: false,
                deployment_state: d.info.state,
            });
        }
        if r.expect_version != e.version {
            return Err(FleetError::Conflict(format!(
                "stale status: execution is at version {} ({}), the report expected {}",
                e.version,
                e.state.as_str(),
                r.expect_version
            )));
        }
        let reason = r.reason.as_deref();
        let mut log = e.log.clone();
        if let Some(l) = &r.log {
            log.push_str(l);
            if !log.ends_with('\n') {
                log.push('\n');
            }
            log = tail(&log, MAX_LOG_BYTES).to_owned();
        }
        // Reverts ordered by an abort.
        if matches!(e.revert.as_deref(), Some("offered")) {
            let (revert, state) = match r.state {
                ExecState::RolledBack => ("done", ExecState::RolledBack),
                s if s.is_failure() => ("failed", e.state),
                ExecState::Downloading | ExecState::Downloaded | ExecState::Verifying | ExecState::Trial => {
                    ("offered", e.state)
                }
                s => return Err(FleetError::Conflict(format!("a revert in progress cannot report {}", s.as_str()))),
            };
            let hist = if state != e.state || revert == "failed" {
                history_line(if revert == "failed" { r.state } else { state }, now, reason)
            } else {
                String::new()
            };
            self.write_exec(
                deployment,
                device,
                e.version,
                state,
                revert,
                &e,
                reason,
                &log,
                &hist,
                &fingerprint,
                now,
                r.bytes,
                None,
            )
            .await?;
            return Ok(StatusOutcome { state, version: e.version + 1, changed: true, deployment_state: d.info.state });
        }
        if !e.state.device_may_move_to(r.state) {
            return Err(FleetError::Conflict(format!(
                "illegal transition {} -> {} for this execution",
                e.state.as_str(),
                r.state.as_str()
            )));
        }
        if r.state == ExecState::Failed && r.failure.is_none() {
            return Err(FleetError::invalid(
                "failure",
                "a failed report names its kind: download, verify, health or other",
            ));
        }
        let kind = match r.state {
            ExecState::HealthFailed => Some(FailureKind::Health),
            _ => r.failure,
        };
        let mut hist = String::new();
        let mut state = r.state;
        let mut retry_at = None;
        if !(e.state == ExecState::Downloading && r.state == ExecState::Downloading) {
            hist.push_str(&history_line(r.state, now, reason));
        }
        if matches!(r.state, ExecState::Failed | ExecState::HealthFailed)
            && e.attempts <= u64::from(plan::retries_for(&d.info.plan.retries, kind, false))
            && matches!(d.info.state, DeploymentState::Running | DeploymentState::Paused)
        {
            let wait = plan::backoff_ms(&d.info.plan.retries, e.attempts as u32);
            state = ExecState::Queued;
            retry_at = Some(now + wait as i64);
            hist.push_str(&history_line(ExecState::Queued, now, Some(&format!("retry {} in {wait} ms", e.attempts))));
        }
        self.write_exec(
            deployment,
            device,
            e.version,
            state,
            "",
            &e,
            reason,
            &log,
            &hist,
            &fingerprint,
            now,
            r.bytes,
            retry_at,
        )
        .await?;
        let mut dep_state = d.info.state;
        if state.terminal() && d.info.state == DeploymentState::Running {
            let c = self.counts(deployment, Some(d.info.current_phase)).await?;
            if let Some(p) = d.info.plan.phases.get(d.info.current_phase as usize)
                && plan::should_abort(p, &c)
            {
                let why = format!(
                    "failure threshold reached in phase {}: {} of {} executed failed",
                    d.info.current_phase,
                    c.failures(),
                    c.executed()
                );
                if self.abort_now(&d.info, &why, now).await?.is_some() {
                    dep_state = DeploymentState::Aborted;
                }
            }
        }
        Ok(StatusOutcome { state, version: e.version + 1, changed: true, deployment_state: dep_state })
    }

    #[expect(clippy::too_many_arguments, reason = "one private writer")]
    async fn write_exec(
        &self,
        deployment: &str,
        device: &str,
        expect: i64,
        state: ExecState,
        revert: &str,
        e: &ExecutionInfo,
        reason: Option<&str>,
        log: &str,
        hist: &str,
        fingerprint: &str,
        now: i64,
        bytes: Option<u64>,
        retry_at: Option<i64>,
    ) -> Result<()> {
        let finished = (state.terminal() && !e.state.terminal()).then_some(now);
        let u = sqlx::query(
            "UPDATE fleet_executions SET state = $1, version = version + 1, reason = COALESCE($2, reason), log = $3, \
             history = history || $4, last_report = $5, since_ms = $6, bytes = COALESCE($7, bytes), \
             next_retry_ms = COALESCE($8, next_retry_ms), finished_ms = COALESCE($9, finished_ms), \
             revert = CASE WHEN $10 = '' THEN revert ELSE $10 END \
             WHERE deployment_id = $11 AND device_id = $12 AND version = $13",
        )
        .bind(state.as_str())
        .bind(reason.map(|r| clip_bytes(r, MAX_REASON_BYTES).to_owned()))
        .bind(log)
        .bind(hist)
        .bind(fingerprint)
        .bind(now)
        .bind(bytes.map(|b| b.min(i64::MAX as u64) as i64))
        .bind(retry_at)
        .bind(finished)
        .bind(revert)
        .bind(deployment)
        .bind(device)
        .bind(expect)
        .execute(&self.pool)
        .await?;
        if u.rows_affected() != 1 {
            return Err(FleetError::Conflict("stale status: the execution changed meanwhile".into()));
        }
        if state != e.state || !revert.is_empty() && e.revert.as_deref() != Some(revert) {
            self.execution_changed(e, state, (!revert.is_empty()).then_some(revert));
        }
        Ok(())
    }

    /// Emits [`EventKind::ExecutionChanged`] for `e` entering `state`.
    fn execution_changed(&self, e: &ExecutionInfo, state: ExecState, revert: Option<&str>) {
        let mut detail = serde_json::json!({"state": state.as_str(), "from": e.state.as_str(), "phase": e.phase});
        if let Some(r) = revert.or(e.revert.as_deref()) {
            detail["revert"] = serde_json::Value::from(r);
        }
        self.events.emit(EventKind::ExecutionChanged, Some(&e.device_id), Some(&e.deployment_id), detail);
    }

    // ------------------------------------------------------------------ periodic

    pub(crate) async fn tick_deployments(&self, now: i64) -> Result<Vec<Event>> {
        let ids: Vec<String> = sqlx::query("SELECT id FROM fleet_deployments WHERE state IN ('running', 'paused')")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for id in ids {
            out.extend(self.tick_one(&id, now).await?);
        }
        Ok(out)
    }

    async fn tick_one(&self, id: &str, now: i64) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        let d = self.deployment_row(id).await?;
        let info = &d.info;
        // End time.
        if info.plan.end_ms.is_some_and(|e| now >= e) {
            match info.plan.end_behaviour {
                EndBehaviour::Abort => out.extend(self.abort_now(info, "the end time passed", now).await?),
                EndBehaviour::CancelQueued => {
                    sqlx::query(
                        "UPDATE fleet_executions SET state = 'canceled', version = version + 1, since_ms = $1, finished_ms = $1, \
                         history = history || $2 WHERE deployment_id = $3 AND state = 'queued'",
                    )
                    .bind(now)
                    .bind(history_line(ExecState::Canceled, now, Some("the end time passed")))
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                    let r = sqlx::query(
                        "UPDATE fleet_deployments SET state = 'completed', reason = 'the end time passed', finished_ms = $1, \
                         version = version + 1 WHERE id = $2 AND version = $3",
                    )
                    .bind(now)
                    .bind(id)
                    .bind(d.version)
                    .execute(&self.pool)
                    .await?;
                    if r.rows_affected() == 1 {
                        out.push(self.events.emit(
                            EventKind::DeploymentCompleted,
                            None,
                            Some(id),
                            serde_json::json!({"reason": "the end time passed"}),
                        ));
                    }
                }
            }
            return Ok(out);
        }
        // Timeouts: in progress without a report for too long, or queued in a current
        // phase while the device is offline.
        let limit = timeout_ms(&info.plan);
        let stuck = sqlx::query(&format!(
            "SELECT {EXEC_COLUMNS} FROM fleet_executions WHERE deployment_id = $1 AND since_ms < $2 AND (\
             state IN ('offered', 'downloading', 'downloaded', 'verifying', 'trial') OR (state = 'queued' AND phase <= $3))"
        ))
        .bind(id)
        .bind(now - limit)
        .bind(info.current_phase as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut any_final = false;
        for r in &stuck {
            let e = exec_info(r)?;
            if e.state == ExecState::Queued {
                let offline = self.live.lock().get(&e.device_id).is_none_or(|l| !l.online);
                if !offline || info.state != DeploymentState::Running || e.next_retry_ms > now {
                    continue;
                }
            }
            let why = if e.state == ExecState::Queued {
                "the device stayed offline past the in-progress timeout".to_owned()
            } else {
                format!("no status for {} s in {}", limit / 1000, e.state.as_str())
            };
            let mut hist = history_line(ExecState::TimedOut, now, Some(&why));
            let mut state = ExecState::TimedOut;
            let mut retry_at = None;
            if e.state != ExecState::Queued && e.attempts <= u64::from(info.plan.retries.timeout) {
                let wait = plan::backoff_ms(&info.plan.retries, e.attempts as u32);
                state = ExecState::Queued;
                retry_at = Some(now + wait as i64);
                hist.push_str(&history_line(
                    ExecState::Queued,
                    now,
                    Some(&format!("retry {} in {wait} ms", e.attempts)),
                ));
            }
            let fp = format!("timeout:{now}");
            match self
                .write_exec(
                    id,
                    &e.device_id,
                    e.version,
                    state,
                    "",
                    &e,
                    Some(&why),
                    &e.log,
                    &hist,
                    &fp,
                    now,
                    None,
                    retry_at,
                )
                .await
            {
                Ok(()) => any_final |= state.terminal(),
                Err(FleetError::Conflict(_)) => {} // the device reported meanwhile
                Err(err) => return Err(err),
            }
        }
        if info.state != DeploymentState::Running {
            return Ok(out);
        }
        let Some(phase) = info.plan.phases.get(info.current_phase as usize) else { return Ok(out) };
        let c = self.counts(id, Some(info.current_phase)).await?;
        if any_final && plan::should_abort(phase, &c) {
            let why = format!(
                "failure threshold reached in phase {}: {} of {} executed failed",
                info.current_phase,
                c.failures(),
                c.executed()
            );
            out.extend(self.abort_now(info, &why, now).await?);
            return Ok(out);
        }
        // Phase done, bake, advance.
        let waiting = c.get(ExecState::Queued) + c.in_progress();
        if waiting > 0 {
            return Ok(out);
        }
        let Some(done) = info.phase_done_ms else {
            sqlx::query("UPDATE fleet_deployments SET phase_done_ms = $1 WHERE id = $2 AND version = $3 AND phase_done_ms IS NULL")
                .bind(now)
                .bind(id)
                .bind(d.version)
                .execute(&self.pool)
                .await?;
            return Ok(out);
        };
        if now < done + phase.bake_seconds as i64 * 1000 {
            return Ok(out);
        }
        let d = self.deployment_row(id).await?;
        if !plan::success_met(phase, &c) {
            let why = format!(
                "phase {} missed its success threshold: {} of {} executed succeeded (needs {})",
                info.current_phase,
                c.get(ExecState::Succeeded),
                c.executed(),
                phase.success_threshold
            );
            if self.set_state(id, &[DeploymentState::Running], DeploymentState::Paused, &why, None).await.is_ok() {
                out.push(self.events.emit(
                    EventKind::DeploymentPaused,
                    None,
                    Some(id),
                    serde_json::json!({"reason": why}),
                ));
            }
            return Ok(out);
        }
        let last = info.current_phase as usize + 1 >= info.plan.phases.len();
        if !last && phase.on_success == crate::model::OnSuccess::Pause {
            let why = format!("phase {} baked; promote to go on", info.current_phase);
            if self.set_state(id, &[DeploymentState::Running], DeploymentState::Paused, &why, None).await.is_ok() {
                out.push(self.events.emit(
                    EventKind::DeploymentPaused,
                    None,
                    Some(id),
                    serde_json::json!({"reason": why}),
                ));
            }
            return Ok(out);
        }
        out.extend(self.advance(&d, now, &format!("phase {} baked", info.current_phase)).await?);
        Ok(out)
    }
}

fn timeout_ms(plan: &Plan) -> i64 {
    plan.in_progress_timeout_seconds as i64 * 1000
}
