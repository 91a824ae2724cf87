//! The pure rules of a rollout: plan validation, phase membership, abort and advance
//! decisions, retry backoff, the approval digest. No I/O.

use crate::error::{FleetError, Result};
use crate::model::{ExecState, FailureKind, MAX_PHASES, Phase, Plan, Retries, Selector};
use ring::digest::{SHA256, digest};
use std::collections::BTreeMap;

/// A stable position of `device` in `deployment`'s order: the first 8 bytes of
/// SHA-256(deployment ‖ 0 ‖ device). The same on every server and after restarts.
pub fn rank(deployment: &str, device: &str) -> u64 {
    let mut buf = Vec::with_capacity(deployment.len() + device.len() + 1);
    buf.extend_from_slice(deployment.as_bytes());
    buf.push(0);
    buf.extend_from_slice(device.as_bytes());
    let d = digest(&SHA256, &buf);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

/// Checks what can be checked without the target: phases, thresholds, times.
pub fn validate(plan: &Plan) -> Result<()> {
    if plan.phases.is_empty() {
        return Err(FleetError::invalid("plan.phases", "at least one phase is needed"));
    }
    if plan.phases.len() > MAX_PHASES {
        return Err(FleetError::invalid("plan.phases", format!("at most {MAX_PHASES} phases")));
    }
    for (i, p) in plan.phases.iter().enumerate() {
        let f = |name: &str| format!("plan.phases[{i}].{name}");
        match (p.percent, p.count) {
            (Some(pc), None) => {
                if !(pc.is_finite() && pc > 0.0 && pc <= 100.0) {
                    return Err(FleetError::invalid(f("percent"), format!("must be in (0, 100], got {pc}")));
                }
            }
            (None, Some(c)) => {
                if c == 0 {
                    return Err(FleetError::invalid(f("count"), "must be at least 1"));
                }
            }
            _ => return Err(FleetError::invalid(format!("plan.phases[{i}]"), "give exactly one of percent and count")),
        }
        if !(p.success_threshold.is_finite() && (0.0..=1.0).contains(&p.success_threshold)) {
            return Err(FleetError::invalid(f("success_threshold"), "must be in [0, 1]"));
        }
        if p.bake_seconds > 30 * 86_400 {
            return Err(FleetError::invalid(f("bake_seconds"), "at most 30 days"));
        }
    }
    if plan.in_progress_timeout_seconds == 0 || plan.in_progress_timeout_seconds > 7 * 86_400 {
        return Err(FleetError::invalid("plan.in_progress_timeout_seconds", "must be in [1, 604800]"));
    }
    if let (Some(s), Some(e)) = (plan.start_ms, plan.end_ms)
        && e <= s
    {
        return Err(FleetError::invalid("plan.end_ms", "must be after start_ms"));
    }
    let r = &plan.retries;
    if r.download.max(r.verify).max(r.timeout).max(r.health) > 100 {
        return Err(FleetError::invalid("plan.retries", "at most 100 retries per kind"));
    }
    if r.backoff_ms == 0 || r.backoff_ms > r.max_backoff_ms || r.max_backoff_ms > 86_400_000 {
        return Err(FleetError::invalid("plan.retries", "need 0 < backoff_ms <= max_backoff_ms <= 1 day"));
    }
    Ok(())
}

/// Cumulative device counts per phase for a target of `n` devices (percentages round half
/// up). A phase that adds no device — rounds to zero — is refused, naming it.
pub fn cutoffs(plan: &Plan, n: u64) -> Result<Vec<u64>> {
    validate(plan)?;
    let mut out = Vec::with_capacity(plan.phases.len());
    let mut prev = 0u64;
    for (i, p) in plan.phases.iter().enumerate() {
        let cum = match (p.percent, p.count) {
            (Some(pc), _) => ((pc / 100.0) * n as f64 + 0.5).floor() as u64,
            (_, Some(c)) => c,
            _ => unreachable!("validated"),
        }
        .min(n);
        if cum <= prev {
            return Err(FleetError::invalid(
                format!("plan.phases[{i}]"),
                format!("adds no device: {cum} of {n} targeted devices cumulatively, {prev} before it"),
            ));
        }
        out.push(cum);
        prev = cum;
    }
    Ok(out)
}

/// The phase of the device at position `pos` (0-based, in rank order), or `None` when no
/// phase reaches it.
pub fn phase_of(cutoffs: &[u64], pos: u64) -> Option<usize> {
    cutoffs.iter().position(|&c| pos < c)
}

/// Execution counts of a deployment by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Devices per state.
    pub by_state: BTreeMap<ExecState, u64>,
}

impl Counts {
    /// The count of `s`.
    pub fn get(&self, s: ExecState) -> u64 {
        self.by_state.get(&s).copied().unwrap_or(0)
    }
    /// Finished with success or failure (the denominator of the thresholds).
    pub fn executed(&self) -> u64 {
        self.get(ExecState::Succeeded) + self.failures()
    }
    /// Failed, timed out, health failed or rejected.
    pub fn failures(&self) -> u64 {
        self.by_state.iter().filter(|(s, _)| s.is_failure()).map(|(_, n)| n).sum()
    }
    /// Offered and not finished.
    pub fn in_progress(&self) -> u64 {
        self.by_state.iter().filter(|(s, _)| s.in_progress()).map(|(_, n)| n).sum()
    }
    /// All executions.
    pub fn total(&self) -> u64 {
        self.by_state.values().sum()
    }
}

/// Whether the failures among `c` (executions up to the current phase) reach `phase`'s
/// abort threshold: executed ≥ `min_executed` and failures ≥ `max_failures`.
pub fn should_abort(phase: &Phase, c: &Counts) -> bool {
    let executed = c.executed();
    executed >= phase.min_executed.max(1) && phase.max_failures.reached(c.failures(), executed)
}

/// Whether `c` meets `phase`'s success threshold.
pub fn success_met(phase: &Phase, c: &Counts) -> bool {
    let executed = c.executed();
    executed == 0 && phase.success_threshold == 0.0
        || executed > 0 && c.get(ExecState::Succeeded) as f64 >= phase.success_threshold * executed as f64 - 1e-9
}

/// The retries `kind` allows.
pub fn retries_for(r: &Retries, kind: Option<FailureKind>, timed_out: bool) -> u32 {
    if timed_out {
        return r.timeout;
    }
    match kind {
        Some(FailureKind::Download) => r.download,
        Some(FailureKind::Verify) => r.verify,
        Some(FailureKind::Health) => r.health,
        Some(FailureKind::Other) | None => 0,
    }
}

/// The wait before attempt `attempts + 1` after `attempts` attempts: `backoff_ms ·
/// 2^(attempts-1)`, at most `max_backoff_ms`.
pub fn backoff_ms(r: &Retries, attempts: u32) -> u64 {
    let shift = attempts.saturating_sub(1).min(32);
    r.backoff_ms.saturating_mul(1u64 << shift).min(r.max_backoff_ms)
}

/// The digest an approval is bound to: SHA-256 over the release (id and kernel hash), the
/// target and the plan, as canonical JSON. Any edit changes it.
pub fn approval_digest(release_id: &str, release_sha256: &str, target: &Selector, plan: &Plan) -> String {
    let doc = serde_json::json!({
        "release": release_id,
        "sha256": release_sha256,
        "target": target,
        "plan": plan,
    });
    // serde_json's Map is a BTreeMap here (no preserve_order): keys are sorted.
    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
    kernelize_bundle::Sha256::of(&bytes).to_hex()
}

pub use kernelize_bundle::hex;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OnSuccess, Threshold};

    fn phase(pc: f64) -> Phase {
        Phase {
            percent: Some(pc),
            count: None,
            bake_seconds: 0,
            success_threshold: 0.0,
            max_failures: Threshold::Percent(20.0),
            min_executed: 5,
            on_success: OnSuccess::Next,
        }
    }

    fn plan(pcs: &[f64]) -> Plan {
        serde_json::from_value(serde_json::json!({"phases": []}))
            .map(|mut p: Plan| {
                p.phases = pcs.iter().map(|&x| phase(x)).collect();
                p
            })
            .unwrap()
    }

    #[test]
    fn phases_of_200_devices_at_5_25_100_percent() {
        let c = cutoffs(&plan(&[5.0, 25.0, 100.0]), 200).unwrap();
        assert_eq!(c, [10, 50, 200]);
        assert_eq!(phase_of(&c, 9), Some(0));
        assert_eq!(phase_of(&c, 10), Some(1));
        assert_eq!(phase_of(&c, 199), Some(2));
    }

    #[test]
    fn a_phase_that_rounds_to_zero_devices_is_refused() {
        let e = cutoffs(&plan(&[5.0, 100.0]), 9).unwrap_err();
        assert!(e.to_string().contains("plan.phases[0]"), "{e}");
        let e = cutoffs(&plan(&[50.0, 50.0]), 100).unwrap_err();
        assert!(e.to_string().contains("plan.phases[1]"), "{e}");
        assert_eq!(cutoffs(&plan(&[5.0, 100.0]), 10).unwrap(), [1, 10]);
    }

    #[test]
    fn abort_needs_min_executed_and_the_share() {
        let p = phase(5.0);
        let mut c = Counts::default();
        c.by_state.insert(ExecState::HealthFailed, 3);
        assert!(!should_abort(&p, &c), "3 executed < min 5");
        c.by_state.insert(ExecState::Succeeded, 2);
        assert!(should_abort(&p, &c), "3/5 >= 20%");
        c.by_state.insert(ExecState::Succeeded, 12);
        assert!(should_abort(&p, &c), "3/15 = 20% reaches 20%");
        c.by_state.insert(ExecState::Succeeded, 13);
        assert!(!should_abort(&p, &c), "3/16 < 20%");
    }

    #[test]
    fn thresholds_parse_counts_and_percentages() {
        let t: Threshold = serde_json::from_str("\"20%\"").unwrap();
        assert_eq!(t, Threshold::Percent(20.0));
        let t: Threshold = serde_json::from_str("3").unwrap();
        assert_eq!(t, Threshold::Count(3));
        assert!(serde_json::from_str::<Threshold>("\"120%\"").is_err());
        assert!(serde_json::from_str::<Threshold>("-1").is_err());
    }

    #[test]
    fn ranks_are_stable_and_spread() {
        assert_eq!(rank("dep1", "dev1"), rank("dep1", "dev1"));
        assert_ne!(rank("dep1", "dev1"), rank("dep2", "dev1"));
        assert_ne!(rank("dep1", "dev1"), rank("dep1", "dev2"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = Retries { backoff_ms: 100, max_backoff_ms: 1000, ..Retries::default() };
        assert_eq!([1, 2, 3, 4, 5].map(|a| backoff_ms(&r, a)), [100, 200, 400, 800, 1000]);
    }

    #[test]
    fn device_transitions_go_forward_or_fail() {
        use ExecState::*;
        assert!(Offered.device_may_move_to(Downloading));
        assert!(Downloading.device_may_move_to(Downloading));
        assert!(Downloading.device_may_move_to(Trial));
        assert!(Trial.device_may_move_to(Succeeded));
        assert!(Verifying.device_may_move_to(Rejected));
        assert!(!Trial.device_may_move_to(Downloading));
        assert!(!Succeeded.device_may_move_to(Failed));
        assert!(!Queued.device_may_move_to(Downloading));
        assert!(!Offered.device_may_move_to(Canceled));
        assert!(!Offered.device_may_move_to(TimedOut), "only the server times out");
    }
}
