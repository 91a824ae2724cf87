//! The agent's life: enroll, heartbeat and poll, and carry out offers — verify, download,
//! stage, health-check, switch into trial, commit — keeping the current kernel serving
//! whatever fails.

use crate::download::{self, Limits, Source};
use crate::error::{AgentError, Refusal, Result, refuse_document};
use crate::logbuf::LogBuf;
use crate::serve::{Kernels, QueryRequest, Served};
use crate::state::{Installed, State, Trial, kernel_path, sync_dir, write_durable};
use crate::window::Window;
use kernelize_bundle::{
    BundleError, ChunkVerifier, GoldenQuery, Offer as SignedOffer, OfferKind, PublicKey, Sha256, TrustRoot,
    VerifiedOffer, apply_delta, parse_version, verify_root_chain,
};
use kernelize_fleet::client::{ClientError, DeviceClient};
use kernelize_fleet::{
    DeviceStatus, ExecState, FailureKind, Health, InstalledKernel, Inventory, Offer, StatusOutcome, StatusReport,
};
use kernelize_kernel::{Kernel, Trust};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The agent's version, reported in the inventory and checked against a release's
/// `compatibility.min_agent_version`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The device key (PKCS#8 ed25519, mode 0600).
pub const DEVICE_KEY_FILE: &str = "device.key";
/// The local API key (mode 0600).
pub const LOCAL_KEY_FILE: &str = "local.key";
/// The local API's bound address (`--listen` with port 0 picks a free one).
pub const LOCAL_ADDR_FILE: &str = "local.addr";
/// Free disk kept beyond a kernel being downloaded, bytes.
pub const DISK_MARGIN: u64 = 16 << 20;

/// How the agent runs (from the command line).
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Server base URL.
    pub server: String,
    /// Enrollment token (pre-authorization).
    pub enroll_token: Option<String>,
    /// What the device calls itself.
    pub identity: String,
    /// Labels proposed at enrollment.
    pub labels: BTreeMap<String, String>,
    /// Release key pinned at provisioning (hex); else pinned on first contact.
    pub release_key: Option<String>,
    /// Kernel signing key pinned at provisioning (hex); else pinned on first contact.
    pub kernel_key: Option<String>,
    /// Download limits.
    pub limits: Limits,
    /// How long a new kernel serves in trial before it is committed.
    pub trial: Duration,
    /// When swaps may happen (None: any time).
    pub window: Option<Window>,
}

/// A running agent.
pub struct Agent {
    cfg: Config,
    client: tokio::sync::Mutex<DeviceClient>,
    http: reqwest::Client,
    /// When the device token runs out (Unix ms).
    token_expires_ms: AtomicU64,
    heartbeat_ms: AtomicU64,
    state: Mutex<State>,
    /// The kernels served.
    pub kernels: Arc<Kernels>,
    /// Recent log lines.
    pub log: LogBuf,
    /// Set by an MQTT wake-up: poll now.
    pub wake: tokio::sync::Notify,
    /// Body bytes received by downloads since start.
    pub transferred: AtomicU64,
    /// [`LogBuf::noted`] when the last heartbeat carried the log.
    log_sent: AtomicU64,
    health: Mutex<Option<Health>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("data_dir", &self.cfg.data_dir).field("server", &self.cfg.server).finish()
    }
}

fn now_ms() -> u64 {
    kernelize_bundle::now_ms()
}

fn client_refusal(e: &ClientError) -> Refusal {
    Refusal::download("server_error", e.to_string())
}

/// Reads the device key, or makes one (mode 0600) on first start.
fn device_key(dir: &Path) -> Result<Vec<u8>> {
    let path = dir.join(DEVICE_KEY_FILE);
    match fs_err::read(&path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| AgentError::Other("the system random generator failed".into()))?;
            write_durable(&path, pkcs8.as_ref())?;
            Ok(pkcs8.as_ref().to_vec())
        }
        Err(e) => Err(AgentError::io(&path, e)),
    }
}

/// Reads the local API key, or makes one (mode 0600) on first start.
pub fn local_key(dir: &Path) -> Result<String> {
    let path = dir.join(LOCAL_KEY_FILE);
    match fs_err::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Ok(_) => Err(AgentError::Config(format!("{}: empty", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 24];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                .map_err(|_| AgentError::Other("the system random generator failed".into()))?;
            let key = format!("kzl_{}", kernelize_bundle::hex(&b));
            write_durable(&path, key.as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(AgentError::io(&path, e)),
    }
}

/// Free bytes on the file system holding `dir`.
fn free_disk(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir).map(|s| s.f_bavail.saturating_mul(s.f_frsize)).unwrap_or(0)
}

/// What a file that is not a kernel looks like, for the refusal.
fn sniff(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"#!") {
        "a script"
    } else if bytes.starts_with(b"\x7fELF") {
        "an ELF executable"
    } else if bytes.starts_with(b"MZ") {
        "a Windows executable"
    } else if bytes.starts_with(b"PK\x03\x04") {
        "a zip archive"
    } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        "a tar archive"
    } else {
        "not a kernel"
    }
}

impl Agent {
    /// Opens the data directory: device key, state (a switch that was never committed is
    /// undone here: the power went out in trial), and the kernels to serve.
    pub fn open(cfg: Config) -> Result<Agent> {
        for sub in ["", "kernels", "downloads"] {
            let d = cfg.data_dir.join(sub);
            fs_err::create_dir_all(&d).map_err(|e| AgentError::io(&d, e))?;
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| AgentError::Other(format!("HTTP client: {e}")))?;
        let pkcs8 = device_key(&cfg.data_dir)?;
        let client = DeviceClient::from_pkcs8(http.clone(), &cfg.server, &pkcs8)
            .map_err(|e| AgentError::Config(format!("{}: {e}", cfg.data_dir.join(DEVICE_KEY_FILE).display())))?;
        let state = State::load(&cfg.data_dir)?;
        let agent = Agent {
            client: tokio::sync::Mutex::new(client),
            http,
            token_expires_ms: AtomicU64::new(0),
            heartbeat_ms: AtomicU64::new(30_000),
            state: Mutex::new(state),
            kernels: Arc::new(Kernels::default()),
            log: LogBuf::default(),
            wake: tokio::sync::Notify::new(),
            transferred: AtomicU64::new(0),
            log_sent: AtomicU64::new(u64::MAX),
            health: Mutex::new(None),
            cfg,
        };
        agent.recover()?;
        Ok(agent)
    }

    /// The device id (from the device key).
    pub async fn device_id(&self) -> String {
        self.client.lock().await.device_id.clone()
    }

    /// Undoes uncommitted switches, then opens what each channel serves.
    fn recover(&self) -> Result<()> {
        let mut st = self.state.lock();
        let mut changed = false;
        let channels: Vec<String> = st.channels.keys().cloned().collect();
        for ch in &channels {
            let Some(c) = st.channels.get_mut(ch) else { continue };
            if let Some(t) = c.trial.take() {
                let new = c.current.take();
                c.current = t.previous.clone();
                changed = true;
                let (state, failure) = if t.revert {
                    (ExecState::Failed, Some(FailureKind::Other))
                } else {
                    (ExecState::RolledBack, None)
                };
                let reason = format!(
                    "power_cut_in_trial: restarted before the commit of {}; back on {}",
                    new.as_ref().map_or("?".into(), |n| format!("version {}", n.version)),
                    t.previous.as_ref().map_or("no kernel".into(), |p| format!("version {}", p.version))
                );
                self.log.note(format!("channel {ch}: {reason}"));
                let report = StatusReport {
                    expect_version: t.expect_version,
                    state,
                    failure,
                    reason: Some(reason),
                    bytes: None,
                    log: Some(self.log.excerpt()),
                };
                st.queue_report(&t.deployment_id, serde_json::to_value(&report).unwrap_or_default());
                if let Some(n) = new
                    && t.previous.as_ref().is_none_or(|p| p.sha256 != n.sha256)
                {
                    let _ = fs_err::remove_file(kernel_path(&self.cfg.data_dir, &n.sha256));
                }
            }
        }
        if changed {
            st.save(&self.cfg.data_dir)?;
        }
        let kernel_key = self.kernel_public_key(&st)?;
        for (ch, c) in &st.channels {
            let Some(cur) = &c.current else { continue };
            match self.open_kernel(&cur.sha256, kernel_key.clone()) {
                Ok(k) => {
                    self.kernels.set(ch, Some(Arc::new(Served { kernel: k, installed: cur.clone() })));
                    self.log.note(format!("channel {ch}: serving version {} ({})", cur.version, cur.kernel_id));
                }
                Err(e) => self.log.note(format!("channel {ch}: cannot open version {}: {e}", cur.version)),
            }
        }
        Ok(())
    }

    fn kernel_public_key(&self, st: &State) -> Result<Option<kernelize_kernel::PublicKey>> {
        match st.kernel_key.as_deref().or(self.cfg.kernel_key.as_deref()) {
            None => Ok(None),
            Some(h) => kernelize_kernel::PublicKey::from_hex(h)
                .map(Some)
                .ok_or_else(|| AgentError::Config(format!("kernel key {h:?}: expected 64 hex digits"))),
        }
    }

    fn open_kernel(&self, sha256: &str, key: Option<kernelize_kernel::PublicKey>) -> Result<Kernel, String> {
        let path = kernel_path(&self.cfg.data_dir, sha256);
        let trust = Trust { public_key: key, allow_expired: false, now: None };
        Kernel::open(&path, &trust).map_err(|e| e.to_string())
    }

    fn inventory(&self) -> Inventory {
        let st = self.state.lock();
        Inventory {
            agent_version: AGENT_VERSION.into(),
            kernels: st
                .channels
                .iter()
                .filter_map(|(ch, c)| {
                    c.current
                        .as_ref()
                        .map(|i| (ch.clone(), InstalledKernel { kernel_id: i.kernel_id.clone(), version: i.version }))
                })
                .collect(),
            free_disk_bytes: free_disk(&self.cfg.data_dir),
            health: self.health.lock().clone(),
        }
    }

    /// Enrolls until accepted (pending devices retry), then gets a token.
    async fn ensure_session(&self) -> Result<(), ClientError> {
        if !self.state.lock().enrolled {
            let out = {
                let c = self.client.lock().await;
                c.enroll(&self.cfg.identity, &self.inventory(), &self.cfg.labels, self.cfg.enroll_token.as_deref())
                    .await?
            };
            if out.status != DeviceStatus::Accepted {
                return Err(ClientError {
                    status: 0,
                    code: "pending".into(),
                    message: format!("device {} is {:?}: waiting for an admin to accept it", out.device_id, out.status),
                });
            }
            let mut st = self.state.lock();
            st.enrolled = true;
            let _ = st.save(&self.cfg.data_dir);
            drop(st);
            self.log.note(format!("enrolled as {}", out.device_id));
        }
        if self.token_expires_ms.load(Ordering::Relaxed) <= now_ms() + 30_000 {
            let t = self.client.lock().await.refresh_token().await?;
            self.token_expires_ms.store(t.expires_ms.max(0) as u64, Ordering::Relaxed);
            self.heartbeat_ms.store(t.heartbeat_ms.max(100), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Pins the trust material on first contact when it was not provisioned, and walks
    /// new root documents to learn a rotated release key.
    async fn refresh_trust(&self) -> Result<(), Refusal> {
        let root = self.client.lock().await.root().await.map_err(|e| client_refusal(&e))?;
        let mut st = self.state.lock();
        if st.trust.is_none() {
            let pinned = match &self.cfg.release_key {
                Some(h) => TrustRoot::pinned(
                    PublicKey::from_hex(h)
                        .ok_or_else(|| Refusal::other(format!("--release-key {h:?}: not 64 hex digits")))?,
                ),
                None => {
                    let cur: TrustRoot = serde_json::from_value(serde_json::json!({
                        "version": root["version"],
                        "key": root["public_key"],
                    }))
                    .map_err(|e| Refusal::verify("root_chain", format!("the server's current release key: {e}")))?;
                    self.log.note(format!(
                        "pinned release key {} (root version {}) on first use",
                        cur.key.key_id(),
                        cur.version
                    ));
                    cur
                }
            };
            st.trust = Some(pinned);
        }
        if st.kernel_key.is_none() {
            let k = match &self.cfg.kernel_key {
                Some(k) => k.clone(),
                None => {
                    let k = root["kernel_key"].as_str().unwrap_or_default().to_owned();
                    self.log.note(format!("pinned kernel signing key {k} on first use"));
                    k
                }
            };
            if kernelize_kernel::PublicKey::from_hex(&k).is_none() {
                return Err(Refusal::verify("bad_key", format!("kernel signing key {k:?}: not 64 hex digits")));
            }
            st.kernel_key = Some(k);
        }
        let docs: Vec<Vec<u8>> = root["roots"]
            .as_array()
            .map(|a| a.iter().map(|v| serde_json::to_vec(v).unwrap_or_default()).collect())
            .unwrap_or_default();
        let Some(current) = st.trust.clone() else { return Ok(()) };
        // Documents at or below the pinned version are history; walk from there.
        let newer = verify_root_chain(&current, &docs).map_err(|e| refuse_document(&e))?;
        if newer != current {
            self.log.note(format!("release key rotated: root version {} → {}", current.version, newer.version));
            st.trust = Some(newer);
        }
        st.save(&self.cfg.data_dir).map_err(Refusal::from)?;
        Ok(())
    }

    /// Sends the reports that waited for the server.
    async fn flush_reports(&self) {
        let pending = std::mem::take(&mut self.state.lock().pending_reports);
        if pending.is_empty() {
            return;
        }
        let mut keep = Vec::new();
        for p in pending {
            let Ok(report) = serde_json::from_value::<StatusReport>(p.report.clone()) else { continue };
            match self.client.lock().await.report(&p.deployment_id, &report).await {
                Ok(_) => {
                    self.log.note(format!("delivered the {} report of {}", report.state.as_str(), p.deployment_id))
                }
                Err(e) if e.status == 0 || e.status >= 500 => keep.push(p),
                Err(e) => self.log.note(format!("the server refused a saved report of {}: {e}", p.deployment_id)),
            }
        }
        let mut st = self.state.lock();
        keep.append(&mut st.pending_reports);
        st.pending_reports = keep;
        let _ = st.save(&self.cfg.data_dir);
    }

    /// One round: session, trust, saved reports, heartbeat, and the next offer.
    /// Returns how long to wait before the next round.
    pub async fn round(&self) -> Duration {
        if let Err(e) = self.ensure_session().await {
            self.log.note(format!("server: {e}"));
            return Duration::from_secs(5).min(self.interval());
        }
        // Keys are pinned once; a rotation is learned when an offer's signature does not
        // verify under the pinned key (verify_offer), not by asking every round.
        let unpinned = {
            let st = self.state.lock();
            st.trust.is_none() || st.kernel_key.is_none()
        };
        if unpinned && let Err(e) = self.refresh_trust().await {
            self.log.note(format!("trust: {e}"));
        }
        self.flush_reports().await;
        let inv = self.inventory();
        // The log excerpt goes up when it has new lines since the last heartbeat.
        let noted = self.log.noted();
        let log = (noted != self.log_sent.load(Ordering::Relaxed)).then(|| self.log.excerpt());
        let next = match self.client.lock().await.heartbeat(Some(&inv), log.as_deref()).await {
            Ok(h) => {
                self.log_sent.store(noted, Ordering::Relaxed);
                self.heartbeat_ms.store(h.heartbeat_ms.max(100), Ordering::Relaxed);
                Duration::from_millis(h.next_heartbeat_ms.max(100))
            }
            Err(e) => {
                self.after_error(&e);
                return Duration::from_secs(2);
            }
        };
        let offer = self.client.lock().await.offer().await;
        match offer {
            // After an install, look again at once; after a refusal, not before a second
            // (a server that keeps offering what is refused is not polled in a loop).
            Ok(Some(o)) => {
                if self.carry_out(o).await {
                    Duration::ZERO
                } else {
                    next.min(Duration::from_secs(1))
                }
            }
            Ok(None) => next,
            Err(e) => {
                self.after_error(&e);
                next.min(Duration::from_secs(2))
            }
        }
    }

    fn after_error(&self, e: &ClientError) {
        if e.status == 401 {
            // Revoked, or the token ran out early: enroll/refresh next round.
            self.token_expires_ms.store(0, Ordering::Relaxed);
        }
        self.log.note(format!("server: {e}"));
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed))
    }

    /// Runs rounds forever (until the task is dropped), waking early on MQTT.
    pub async fn run(self: Arc<Self>) {
        loop {
            let wait = self.round().await;
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.wake.notified() => self.log.note("woken up by the server"),
                }
            }
        }
    }

    /// Sends a status report; the execution version moves on with each accepted one.
    async fn report(
        &self,
        deployment: &str,
        version: &mut i64,
        state: ExecState,
        refusal: Option<&Refusal>,
        bytes: Option<u64>,
    ) -> Result<StatusOutcome, ClientError> {
        let report = StatusReport {
            expect_version: *version,
            state,
            failure: refusal.map(|r| r.failure).filter(|_| state == ExecState::Failed),
            reason: refusal.map(Refusal::report_reason),
            bytes,
            log: refusal.map(|_| self.log.excerpt()),
        };
        let out = self.client.lock().await.report(deployment, &report).await;
        match out {
            Ok(o) => {
                *version = o.version;
                Ok(o)
            }
            Err(e) => {
                if e.status == 0 || e.status >= 500 {
                    // Keep it for when the server answers again (terminal outcomes matter).
                    if !state.in_progress() {
                        let mut st = self.state.lock();
                        st.queue_report(deployment, serde_json::to_value(&report).unwrap_or_default());
                        let _ = st.save(&self.cfg.data_dir);
                    }
                }
                self.log.note(format!("report {} for {deployment}: {e}", state.as_str()));
                Err(e)
            }
        }
    }

    /// Verifies the signed offer under the trusted release key (learning a rotated key
    /// from root documents once, if the signature does not verify).
    async fn verify_offer(&self, o: &Offer) -> Result<VerifiedOffer, Refusal> {
        let device_id = self.device_id().await;
        let attempt = |st: &State| -> Result<VerifiedOffer, BundleError> {
            let key = st
                .trust
                .as_ref()
                .map(|t| t.key.clone())
                .ok_or_else(|| BundleError::Invalid("no release key".into()))?;
            SignedOffer::verify(o.signed.as_bytes(), &key, &device_id, now_ms())
        };
        let first = attempt(&self.state.lock());
        match first {
            Ok(v) => Ok(v),
            Err(BundleError::Signature { .. } | BundleError::Invalid(_)) => {
                self.refresh_trust().await?;
                attempt(&self.state.lock()).map_err(|e| refuse_document(&e))
            }
            Err(e) => Err(refuse_document(&e)),
        }
    }

    /// Carries out one offer; every outcome is reported. Whether it was installed.
    async fn carry_out(&self, o: Offer) -> bool {
        let deployment = o.deployment_id.clone();
        let mut version = o.execution_version;
        self.log.note(format!(
            "offer {} of deployment {deployment}: {:?} release {} version {}",
            o.offer_id, o.kind, o.release.id, o.release.version
        ));
        match self.install(&o, &mut version).await {
            Ok(()) => true,
            Err((state, r)) => {
                self.log.note(format!("deployment {deployment}: {} ({})", state.as_str(), r.report_reason()));
                let _ = self.report(&deployment, &mut version, state, Some(&r), None).await;
                false
            }
        }
    }

    /// The install flow. An `Err` is the state to report and why; the current kernel
    /// keeps serving in every error case.
    async fn install(&self, o: &Offer, version: &mut i64) -> Result<(), (ExecState, Refusal)> {
        let rejected = |r: Refusal| (ExecState::Rejected, r);
        let failed = |r: Refusal| (ExecState::Failed, r);
        let v = self.verify_offer(o).await.map_err(rejected)?;
        let m = &v.manifest;
        let ch = m.channel.clone();
        let revert = v.offer.kind == OfferKind::Revert;
        let (highest, current) = {
            let st = self.state.lock();
            let c = st.channels.get(&ch);
            (c.map(|c| c.highest_seen).filter(|h| *h > 0), c.and_then(|c| c.current.clone()))
        };
        v.admits(highest).map_err(|e| rejected(refuse_document(&e)))?;
        let ours = parse_version(AGENT_VERSION).unwrap_or((0, 0, 0));
        match parse_version(&m.compatibility.min_agent_version) {
            Some(min) if min <= ours => {}
            _ => {
                return Err(rejected(Refusal::verify(
                    "incompatible",
                    format!("needs agent {} or newer; this is {AGENT_VERSION}", m.compatibility.min_agent_version),
                )));
            }
        }
        let sha = m.sha256.to_hex();
        let new = Installed {
            release_id: o.release.id.clone(),
            version: m.version,
            kernel_id: m.kernel_id.clone(),
            sha256: sha.clone(),
        };
        if current.as_ref().is_some_and(|c| c.sha256 == sha) {
            // Already serving it (the commit happened, the report was lost).
            let state = if revert { ExecState::RolledBack } else { ExecState::Succeeded };
            let _ = self.report(&o.deployment_id, version, state, None, None).await;
            return Ok(());
        }

        // Room for the file (and a margin) before a byte is fetched.
        let free = free_disk(&self.cfg.data_dir);
        if free < m.length.saturating_add(DISK_MARGIN) {
            return Err(failed(Refusal::download(
                "disk_full",
                format!("{free} bytes free, the kernel needs {} (+{DISK_MARGIN} spare)", m.length),
            )));
        }
        // Download (a delta from the current kernel when offered), checked as it arrives.
        let _ = self.report(&o.deployment_id, version, ExecState::Downloading, None, Some(0)).await;
        let before = self.transferred.load(Ordering::Relaxed);
        let path = kernel_path(&self.cfg.data_dir, &sha);
        let verifier = ChunkVerifier::new(m);
        if !(path.exists() && fs_err::File::open(&path).ok().is_some_and(|f| verifier.check_file(f).is_ok())) {
            let mut done = false;
            if let (Some(d), Some(cur)) = (&v.offer.delta, &current)
                && d.from_sha256.to_hex() == cur.sha256
            {
                match self.fetch_delta(d, cur, &verifier, m.length, &path).await {
                    Ok(()) => done = true,
                    Err(r) => {
                        self.log.note(format!("delta refused ({}), downloading the whole file", r.report_reason()))
                    }
                }
            }
            if !done {
                self.fetch_full(&sha, m.sha256, m.length, &verifier, &path).await.map_err(failed)?;
            }
        }
        let bytes = self.transferred.load(Ordering::Relaxed) - before;
        let _ = self.report(&o.deployment_id, version, ExecState::Downloaded, None, Some(bytes)).await;

        // Verify: a kernel (nothing else is ever accepted), signed, the one the manifest names.
        let _ = self.report(&o.deployment_id, version, ExecState::Verifying, None, None).await;
        let staged = self.stage(&sha, m).map_err(|r| {
            self.discard(&sha);
            failed(r)
        })?;
        let staged = Arc::new(Served { kernel: staged, installed: new.clone() });
        if let Err(why) = self.golden(&staged, &m.golden_queries).await {
            self.discard(&sha);
            return Err((ExecState::HealthFailed, Refusal::new("health_failed", FailureKind::Health, why)));
        }

        // Swap only inside the maintenance window (downloads happen any time).
        if let Some(w) = &self.cfg.window {
            loop {
                let wait = w.wait(chrono::Utc::now());
                if wait.is_zero() {
                    break;
                }
                self.log.note(format!(
                    "staged version {}: waiting {wait:?} for the window {}",
                    m.version,
                    w.describe()
                ));
                tokio::time::sleep(wait.min(self.interval())).await;
                let inv = self.inventory();
                let _ = self.client.lock().await.heartbeat(Some(&inv), None).await;
            }
        }

        // Switch into trial: the state file names the new kernel and keeps the old one.
        let trial = Trial {
            deployment_id: o.deployment_id.clone(),
            expect_version: *version,
            previous: current.clone(),
            revert,
            since_ms: now_ms(),
        };
        self.set_channel(&ch, Some(new.clone()), Some(trial)).map_err(|e| failed(e.into()))?;
        let t0 = Instant::now();
        let before = self.kernels.set(&ch, Some(staged.clone()));
        self.log.note(format!("channel {ch}: switched to version {} in {:?} (trial)", m.version, t0.elapsed()));
        let acked = self.report(&o.deployment_id, version, ExecState::Trial, None, None).await.is_ok();
        self.update_trial_version(&ch, *version);

        // Trial: the new kernel serves; watch it, then commit or go back.
        tokio::time::sleep(self.cfg.trial).await;
        let live = self.kernels.get(&ch).unwrap_or(staged);
        let health = self.golden(&live, &m.golden_queries).await;
        let mut acked = acked;
        let deadline = Instant::now() + self.cfg.trial.max(Duration::from_secs(5)) * 10;
        while !acked && health.is_ok() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            acked = self.report(&o.deployment_id, version, ExecState::Trial, None, None).await.is_ok();
            self.update_trial_version(&ch, *version);
        }
        if let Err(why) = health {
            self.undo_switch(&ch, current, before.clone(), &sha);
            *self.health.lock() = Some(Health { ok: false, detail: why.chars().take(900).collect() });
            return Err((ExecState::HealthFailed, Refusal::new("health_failed", FailureKind::Health, why)));
        }
        if !acked {
            self.undo_switch(&ch, current, before.clone(), &sha);
            return Err((
                ExecState::RolledBack,
                Refusal::new("no_ack", FailureKind::Other, "the server never acknowledged the trial"),
            ));
        }

        // Commit: the state file drops the trial; only then is success reported.
        {
            let mut st = self.state.lock();
            let c = st.channels.entry(ch.clone()).or_default();
            c.trial = None;
            if !revert {
                c.highest_seen = c.highest_seen.max(m.version);
            }
            st.save(&self.cfg.data_dir).map_err(|e| failed(e.into()))?;
        }
        if let Some(p) = &current
            && p.sha256 != sha
        {
            self.discard(&p.sha256);
        }
        *self.health.lock() = Some(Health { ok: true, detail: format!("version {} committed", m.version) });
        self.log.note(format!("channel {ch}: committed version {}", m.version));
        let state = if revert { ExecState::RolledBack } else { ExecState::Succeeded };
        if let Err(e) = self.report(&o.deployment_id, version, state, None, None).await {
            self.log.note(format!("the {} report waits: {e}", state.as_str()));
        }
        Ok(())
    }

    fn update_trial_version(&self, ch: &str, version: i64) {
        let mut st = self.state.lock();
        if let Some(t) = st.channels.get_mut(ch).and_then(|c| c.trial.as_mut()) {
            t.expect_version = version;
        }
        let _ = st.save(&self.cfg.data_dir);
    }

    fn set_channel(&self, ch: &str, current: Option<Installed>, trial: Option<Trial>) -> Result<()> {
        let mut st = self.state.lock();
        let c = st.channels.entry(ch.to_owned()).or_default();
        c.current = current;
        c.trial = trial;
        st.save(&self.cfg.data_dir)
    }

    /// Goes back to the kernel served before the switch: the state file names it again
    /// and the kernel that was serving (still open) serves again.
    fn undo_switch(&self, ch: &str, previous: Option<Installed>, served: Option<Arc<Served>>, new_sha: &str) {
        if let Err(e) = self.set_channel(ch, previous, None) {
            self.log.note(format!("channel {ch}: saving the revert failed: {e}"));
        }
        self.kernels.set(ch, served);
        self.discard(new_sha);
        self.log.note(format!("channel {ch}: reverted to the previous kernel"));
    }

    /// Removes a kernel file no channel uses.
    fn discard(&self, sha: &str) {
        let st = self.state.lock();
        let used = st.channels.values().any(|c| {
            c.current.as_ref().is_some_and(|i| i.sha256 == sha)
                || c.trial.as_ref().and_then(|t| t.previous.as_ref()).is_some_and(|i| i.sha256 == sha)
        });
        if !used {
            let _ = fs_err::remove_file(kernel_path(&self.cfg.data_dir, sha));
        }
    }

    fn source(&self, sha: &Sha256, length: u64, token: Option<String>, base: &str) -> Source<'_> {
        Source { http: &self.http, url: format!("{base}/v1/fleet/device/blobs/{sha}"), token, sha256: *sha, length }
    }

    async fn fetch_full(
        &self,
        sha: &str,
        sha256: Sha256,
        length: u64,
        verifier: &ChunkVerifier,
        dest: &Path,
    ) -> Result<(), Refusal> {
        let (token, base) = {
            let c = self.client.lock().await;
            (c.token().map(str::to_owned), c.base().to_owned())
        };
        let part = self.cfg.data_dir.join("downloads").join(format!("{sha}.part"));
        let src = self.source(&sha256, length, token, &base);
        let r = download::download(&src, Some(verifier), &part, &self.cfg.limits, &self.transferred).await;
        if let Err(r) = r {
            // Bytes that contradict the signed manifest are worthless: start over next time.
            if matches!(r.reason, "hash_mismatch" | "length_mismatch") {
                let _ = fs_err::remove_file(&part);
            }
            return Err(r);
        }
        fs_err::rename(&part, dest).map_err(|e| Refusal::other(e.to_string()))?;
        sync_dir(dest.parent().unwrap_or(Path::new("."))).map_err(Refusal::from)?;
        Ok(())
    }

    async fn fetch_delta(
        &self,
        d: &kernelize_bundle::DeltaOffer,
        cur: &Installed,
        verifier: &ChunkVerifier,
        length: u64,
        dest: &Path,
    ) -> Result<(), Refusal> {
        let (token, base) = {
            let c = self.client.lock().await;
            (c.token().map(str::to_owned), c.base().to_owned())
        };
        let part = self.cfg.data_dir.join("downloads").join(format!("{}.delta.part", d.sha256));
        let src = self.source(&d.sha256, d.length, token, &base);
        let r = download::download(&src, None, &part, &self.cfg.limits, &self.transferred).await;
        let result = match r {
            Err(r) => Err(r),
            Ok(()) => {
                let base_bytes = fs_err::read(kernel_path(&self.cfg.data_dir, &cur.sha256))
                    .map_err(|e| Refusal::other(e.to_string()))?;
                let delta = fs_err::read(&part).map_err(|e| Refusal::other(e.to_string()))?;
                match apply_delta(&base_bytes, &delta, length) {
                    Err(e) => Err(Refusal::verify("delta_corrupt", e.to_string())),
                    Ok(out) => match verifier.check_file(&out[..]) {
                        Err(e) => Err(Refusal::verify("hash_mismatch", format!("patched file: {e}"))),
                        Ok(()) => write_durable(dest, &out).map_err(Refusal::from),
                    },
                }
            }
        };
        let _ = fs_err::remove_file(&part);
        result
    }

    /// Opens a downloaded file as a kernel: it must be one (anything else — a script, an
    /// executable, an archive — is refused and never run), signed by the pinned kernel
    /// key, with the dimension the manifest names.
    fn stage(&self, sha: &str, m: &kernelize_bundle::ReleaseManifest) -> Result<Kernel, Refusal> {
        let path = kernel_path(&self.cfg.data_dir, sha);
        let mut head = [0u8; 512];
        let n = {
            use std::io::Read as _;
            let mut f = fs_err::File::open(&path).map_err(|e| Refusal::other(e.to_string()))?;
            f.read(&mut head).map_err(|e| Refusal::other(e.to_string()))?
        };
        let head = &head[..n];
        if !head.starts_with(&kernelize_kernel::format::MAGIC) {
            return Err(Refusal::verify(
                "not_a_kernel",
                format!("the release file is {}; only kernels are installed", sniff(head)),
            ));
        }
        let key = self.kernel_public_key(&self.state.lock()).map_err(Refusal::from)?;
        if key.is_none() {
            return Err(Refusal::verify("bad_key", "no kernel signing key is pinned"));
        }
        let k = self.open_kernel(sha, key).map_err(|e| {
            let reason =
                if e.contains("signature") || e.contains("key") { "kernel_signature" } else { "kernel_invalid" };
            Refusal::verify(reason, e)
        })?;
        // The signed manifest's SHA-256 already binds this exact file; its dimension must
        // match what the release promises.
        let km = k.manifest();
        if km.dim != m.compatibility.dim as usize {
            return Err(Refusal::verify(
                "incompatible",
                format!("the kernel has {} dimensions, the manifest says {}", km.dim, m.compatibility.dim),
            ));
        }
        Ok(k)
    }

    /// Runs the release's golden queries on a kernel; the first failure says why.
    async fn golden(&self, served: &Arc<Served>, queries: &[GoldenQuery]) -> Result<(), String> {
        if queries.is_empty() {
            return Ok(());
        }
        let kernels = self.kernels.clone();
        let served = served.clone();
        let queries = queries.to_vec();
        tokio::task::spawn_blocking(move || {
            for (i, g) in queries.iter().enumerate() {
                let req = QueryRequest {
                    vector: g.vector.clone(),
                    text: g.text.clone(),
                    k: Some(g.k),
                    probe: None,
                    filter: None,
                };
                let t = Instant::now();
                let ans = kernels.query_on(&served, &req).map_err(|e| format!("golden query {i}: {}", e.2))?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let ids: Vec<&str> = ans.hits.iter().flat_map(|h| h.ids.iter().map(String::as_str)).collect();
                g.judge(&ids, ms).map_err(|why| format!("golden query {i}: {why}"))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
