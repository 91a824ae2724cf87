//! Fleet events: a numbered stream with a bounded backlog, for server-sent events
//! (resumable with `Last-Event-ID` within the backlog) and webhooks.

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::broadcast;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A device enrolled (pending or pre-authorized).
    DeviceEnrolled,
    /// An admin accepted, rejected or revoked a device, or decommissioned it.
    DeviceStatusChanged,
    /// A device missed three heartbeat intervals.
    DeviceOffline,
    /// A device heartbeated again after being offline.
    DeviceOnline,
    /// A deployment was created or edited (and needs approval).
    DeploymentCreated,
    /// A deployment was approved and runs.
    DeploymentApproved,
    /// A deployment moved to its next phase.
    PhaseAdvanced,
    /// A deployment paused (by hand, by plan, or a missed success threshold).
    DeploymentPaused,
    /// A deployment resumed.
    DeploymentResumed,
    /// A deployment aborted (threshold, end time, or by hand).
    DeploymentAborted,
    /// A deployment finished its last phase or reached its end time.
    DeploymentCompleted,
    /// A release was published.
    ReleasePublished,
    /// One device's execution in a deployment changed state (offered, downloading, …,
    /// succeeded, failed); progress reports within a state are not events. Webhooks get
    /// it only when they name it (one per device and state: a large rollout sends many).
    ExecutionChanged,
}

impl EventKind {
    /// The name (`device_offline`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DeviceEnrolled => "device_enrolled",
            EventKind::DeviceStatusChanged => "device_status_changed",
            EventKind::DeviceOffline => "device_offline",
            EventKind::DeviceOnline => "device_online",
            EventKind::DeploymentCreated => "deployment_created",
            EventKind::DeploymentApproved => "deployment_approved",
            EventKind::PhaseAdvanced => "phase_advanced",
            EventKind::DeploymentPaused => "deployment_paused",
            EventKind::DeploymentResumed => "deployment_resumed",
            EventKind::DeploymentAborted => "deployment_aborted",
            EventKind::DeploymentCompleted => "deployment_completed",
            EventKind::ReleasePublished => "release_published",
            EventKind::ExecutionChanged => "execution_changed",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Position in this server's stream (from 1).
    pub seq: u64,
    /// When (unix ms).
    pub at_ms: i64,
    /// What.
    pub kind: EventKind,
    /// The device concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The deployment concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// Details (reason, phase, …).
    pub detail: serde_json::Value,
}

#[derive(Debug)]
struct Inner {
    next: u64,
    backlog: VecDeque<Event>,
}

/// The stream: emit, subscribe, replay.
#[derive(Debug, Clone)]
pub struct Events {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<Event>,
    cap: usize,
}

impl Events {
    /// A stream keeping the last `cap` events for replay.
    pub fn new(cap: usize) -> Events {
        let (tx, _) = broadcast::channel(cap.max(16));
        Events { inner: Arc::new(Mutex::new(Inner { next: 1, backlog: VecDeque::new() })), tx, cap: cap.max(16) }
    }

    /// Numbers, keeps and broadcasts an event.
    pub fn emit(
        &self,
        kind: EventKind,
        device: Option<&str>,
        deployment: Option<&str>,
        detail: serde_json::Value,
    ) -> Event {
        let mut g = self.inner.lock();
        let e = Event {
            seq: g.next,
            at_ms: crate::now_ms(),
            kind,
            device: device.map(str::to_owned),
            deployment: deployment.map(str::to_owned),
            detail,
        };
        g.next += 1;
        if g.backlog.len() == self.cap {
            g.backlog.pop_front();
        }
        g.backlog.push_back(e.clone());
        // Sent under the lock so subscribers see events in sequence order.
        let _ = self.tx.send(e.clone());
        e
    }

    /// Events after `after` still in the backlog, and a receiver for what comes next
    /// (taken together, so nothing falls between them). `None` for `after` replays nothing.
    pub fn subscribe(&self, after: Option<u64>) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let g = self.inner.lock();
        let rx = self.tx.subscribe();
        let past = match after {
            Some(a) => g.backlog.iter().filter(|e| e.seq > a).cloned().collect(),
            None => Vec::new(),
        };
        (past, rx)
    }

    /// The last events (newest last), at most `n`.
    pub fn recent(&self, n: usize) -> Vec<Event> {
        let g = self.inner.lock();
        g.backlog.iter().skip(g.backlog.len().saturating_sub(n)).cloned().collect()
    }
}
