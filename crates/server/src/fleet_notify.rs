//! Fleet notifications, off the control plane's path: every fleet event is POSTed to the
//! configured webhooks (signed with HMAC-SHA256, retried with exponential backoff), and
//! devices with something new to fetch are woken early over MQTT.
//!
//! Both run in background tasks fed by [`kernelize_fleet::Fleet::events`]; requests and
//! the fleet tick never wait for them. Each webhook has a bounded queue (when it is full
//! the oldest delivery is dropped and counted), so a dead receiver costs memory bounded by
//! `queue` deliveries and nothing else. The MQTT wake-ups are a hint only (devices still
//! poll): published with QoS 1 from a bounded queue, the connection re-established with
//! backoff; a broker that is down loses wake-ups, never requests. Nothing is persisted:
//! deliveries queued at shutdown are lost (the SSE stream's backlog can be replayed).
//! The signature scheme is in `docs/webhooks.md`.

use crate::state::AppState;
use anyhow::{Context, Result};
use kernelize_fleet::{Event, EventKind, Events};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, watch};

/// Header with the HMAC: `sha256=<64 lowercase hex>`.
pub const SIGNATURE_HEADER: &str = "x-kernelize-signature";
/// Header with the signing time, unix seconds (covered by the HMAC).
pub const TIMESTAMP_HEADER: &str = "x-kernelize-timestamp";
/// Header with the delivery id, the same on every attempt (covered by the HMAC).
pub const DELIVERY_HEADER: &str = "x-kernelize-delivery";
/// Header with the event kind (`deployment_aborted`, …).
pub const EVENT_HEADER: &str = "x-kernelize-event";
/// Header with the attempt number, from 1.
pub const ATTEMPT_HEADER: &str = "x-kernelize-attempt";

/// Shortest webhook secret, bytes.
pub const MIN_SECRET_BYTES: usize = 16;
/// Wake-up messages waiting for the broker, at most (then the oldest is dropped).
pub const WAKE_QUEUE: usize = 10_000;
pub use kernelize_fleet::wake_topic;

/// Every event kind, for validating `events` filters. The match in `kind_index` stops
/// the build when a kind is added to the fleet and not here.
const KINDS: [EventKind; 13] = [
    EventKind::DeviceEnrolled,
    EventKind::DeviceStatusChanged,
    EventKind::DeviceOffline,
    EventKind::DeviceOnline,
    EventKind::DeploymentCreated,
    EventKind::DeploymentApproved,
    EventKind::PhaseAdvanced,
    EventKind::DeploymentPaused,
    EventKind::DeploymentResumed,
    EventKind::DeploymentAborted,
    EventKind::DeploymentCompleted,
    EventKind::ReleasePublished,
    EventKind::ExecutionChanged,
];

fn kind_index(k: EventKind) -> usize {
    match k {
        EventKind::DeviceEnrolled => 0,
        EventKind::DeviceStatusChanged => 1,
        EventKind::DeviceOffline => 2,
        EventKind::DeviceOnline => 3,
        EventKind::DeploymentCreated => 4,
        EventKind::DeploymentApproved => 5,
        EventKind::PhaseAdvanced => 6,
        EventKind::DeploymentPaused => 7,
        EventKind::DeploymentResumed => 8,
        EventKind::DeploymentAborted => 9,
        EventKind::DeploymentCompleted => 10,
        EventKind::ReleasePublished => 11,
        EventKind::ExecutionChanged => 12,
    }
}

/// One webhook (`[[fleet.webhooks]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Name (`[A-Za-z0-9_-]`, 1–64): the metrics label and the log field (never the URL,
    /// which may carry a token).
    pub name: String,
    /// Where to POST: an `http://` or `https://` URL. Redirects are not followed.
    pub url: String,
    /// A file holding the HMAC secret (surrounding whitespace trimmed).
    pub secret_file: Option<PathBuf>,
    /// The name of an environment variable holding the HMAC secret.
    pub secret_env: Option<String>,
    /// Event kinds to send (`deployment_aborted`, …); empty sends every event.
    pub events: Vec<String>,
    /// Attempts per delivery, the first included (1–50).
    pub max_attempts: u32,
    /// Delay before the first retry, ms; doubled after each failed attempt.
    pub backoff_ms: u64,
    /// Longest delay between attempts, ms (also caps a receiver's `Retry-After`).
    pub max_backoff_ms: u64,
    /// Time allowed for one attempt (connect, send, response headers), ms.
    pub timeout_ms: u64,
    /// Deliveries waiting for this webhook, at most; beyond, the oldest is dropped.
    pub queue: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            name: String::new(),
            url: String::new(),
            secret_file: None,
            secret_env: None,
            events: Vec::new(),
            max_attempts: 8,
            backoff_ms: 1000,
            max_backoff_ms: 300_000,
            timeout_ms: 10_000,
            queue: 1000,
        }
    }
}

/// Checks the webhooks and the MQTT URL of `[fleet]` (not the secrets: they are read at
/// start).
pub fn validate(webhooks: &[WebhookSettings], mqtt_url: Option<&str>) -> Result<()> {
    let mut names = std::collections::HashSet::new();
    for (i, w) in webhooks.iter().enumerate() {
        let at = format!("fleet.webhooks[{i}]");
        anyhow::ensure!(
            (1..=64).contains(&w.name.len())
                && w.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{at}.name must be 1-64 characters of [A-Za-z0-9_-], got {:?}",
            w.name
        );
        anyhow::ensure!(names.insert(w.name.as_str()), "{at}.name: {:?} is used twice", w.name);
        let url = reqwest::Url::parse(&w.url).with_context(|| format!("{at}.url: not a URL"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https") && url.has_host(),
            "{at}.url must be an http:// or https:// URL with a host"
        );
        anyhow::ensure!(
            w.secret_file.is_some() != w.secret_env.is_some(),
            "{at}: set exactly one of secret_file and secret_env"
        );
        for (j, e) in w.events.iter().enumerate() {
            anyhow::ensure!(
                KINDS.iter().any(|k| k.as_str() == e),
                "{at}.events[{j}]: unknown event {e:?} (known: {})",
                KINDS.map(EventKind::as_str).join(", ")
            );
        }
        anyhow::ensure!((1..=50).contains(&w.max_attempts), "{at}.max_attempts must be in [1, 50]");
        anyhow::ensure!(
            w.backoff_ms >= 1 && w.max_backoff_ms >= w.backoff_ms && w.max_backoff_ms <= 86_400_000,
            "{at}: need 1 <= backoff_ms <= max_backoff_ms <= 86400000"
        );
        anyhow::ensure!((100..=300_000).contains(&w.timeout_ms), "{at}.timeout_ms must be in [100, 300000]");
        anyhow::ensure!((1..=100_000).contains(&w.queue), "{at}.queue must be in [1, 100000]");
    }
    if let Some(u) = mqtt_url {
        parse_mqtt_url(u)?;
    }
    Ok(())
}

/// `mqtt://host[:port]` → host and port (1883 by default).
fn parse_mqtt_url(u: &str) -> Result<(String, u16)> {
    kernelize_fleet::parse_mqtt_url(u).map_err(|e| anyhow::anyhow!("fleet.mqtt_url: {e}"))
}

/// Labels of a webhook delivery count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The webhook's name.
    pub webhook: String,
    /// `ok` (accepted with a 2xx), `failed` (refused with a 4xx or out of attempts),
    /// `dropped` (pushed out of a full queue, or lost while the event stream lagged).
    pub outcome: String,
}

/// Labels of a webhook attempt count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookName {
    /// The webhook's name.
    pub webhook: String,
}

/// Labels of a wake-up message count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WakeLabels {
    /// `sent` (handed to the MQTT client), `acked` (the broker's PUBACK), `dropped`
    /// (pushed out of the full queue).
    pub outcome: String,
}

/// The metrics of webhooks and wake-ups.
#[derive(Debug, Clone, Default)]
pub struct NotifyMetrics {
    /// Deliveries by webhook and outcome.
    pub webhook_deliveries: Family<WebhookLabels, Counter>,
    /// HTTP attempts by webhook (retries included).
    pub webhook_attempts: Family<WebhookName, Counter>,
    /// Wake-up messages by outcome.
    pub wake_messages: Family<WakeLabels, Counter>,
}

impl NotifyMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> NotifyMetrics {
        let m = NotifyMetrics::default();
        registry.register(
            "fleet_webhook_deliveries",
            "Fleet webhook deliveries by outcome (ok, failed, dropped)",
            m.webhook_deliveries.clone(),
        );
        registry.register("fleet_webhook_attempts", "Fleet webhook HTTP attempts", m.webhook_attempts.clone());
        registry.register("fleet_wake_messages", "MQTT wake-ups of fleet devices by outcome", m.wake_messages.clone());
        m
    }

    /// Deliveries to `webhook` that ended with `outcome`.
    pub fn deliveries(&self, webhook: &str, outcome: &str) -> u64 {
        self.webhook_deliveries.get_or_create(&WebhookLabels { webhook: webhook.into(), outcome: outcome.into() }).get()
    }

    /// Wake-up messages with `outcome`.
    pub fn wakes(&self, outcome: &str) -> u64 {
        self.wake_messages.get_or_create(&WakeLabels { outcome: outcome.into() }).get()
    }

    fn count(&self, webhook: &str, outcome: &str, n: u64) {
        self.webhook_deliveries
            .get_or_create(&WebhookLabels { webhook: webhook.into(), outcome: outcome.into() })
            .inc_by(n);
    }

    fn wake(&self, outcome: &str, n: u64) {
        self.wake_messages.get_or_create(&WakeLabels { outcome: outcome.into() }).inc_by(n);
    }
}

/// The HMAC-SHA256 of a delivery: over `"{timestamp}.{delivery}." + body`, as
/// `sha256=<hex>` (see `docs/webhooks.md`).
pub fn signature(secret: &[u8], timestamp: u64, delivery: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(format!("{timestamp}.{delivery}.").as_bytes());
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Checks a delivery's signature (for receivers written in Rust, and the tests): the
/// header value, the timestamp and delivery headers and the exact body, in constant time.
pub fn verify_signature(secret: &[u8], timestamp: u64, delivery: &str, body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else { return false };
    if hex.len() != 64 {
        return false;
    }
    let mut tag = [0u8; 32];
    for (i, t) in tag.iter_mut().enumerate() {
        match u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or(""), 16) {
            Ok(b) => *t = b,
            Err(_) => return false,
        }
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut msg = format!("{timestamp}.{delivery}.").into_bytes();
    msg.extend_from_slice(body);
    ring::hmac::verify(&key, &msg, &tag).is_ok()
}

/// One event on its way to one webhook.
#[derive(Debug)]
struct Delivery {
    id: String,
    kind: &'static str,
    body: Arc<str>,
}

/// A bounded queue that drops its oldest item when full.
#[derive(Debug)]
struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    cap: usize,
    ready: Notify,
}

impl<T> Queue<T> {
    fn new(cap: usize) -> Queue<T> {
        Queue { items: Mutex::new(VecDeque::new()), cap: cap.max(1), ready: Notify::new() }
    }

    /// Adds `item`; true when the oldest was dropped to make room.
    fn push(&self, item: T) -> bool {
        let dropped = {
            let mut q = self.items.lock();
            let dropped = q.len() >= self.cap && q.pop_front().is_some();
            q.push_back(item);
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    /// The next item, waiting for one; `None` once `stop` says so.
    async fn pop(&self, stop: &mut watch::Receiver<bool>) -> Option<T> {
        loop {
            if *stop.borrow() {
                return None;
            }
            if let Some(item) = self.items.lock().pop_front() {
                return Some(item);
            }
            tokio::select! {
                _ = self.ready.notified() => {}
                r = stop.changed() => if r.is_err() { return None },
            }
        }
    }
}

/// Reads the fleet's event stream without missing events while the process runs: when
/// the receiver lags, it catches up from the backlog and reports what fell out of it.
struct Feed {
    events: Events,
    rx: broadcast::Receiver<Event>,
    replay: VecDeque<Event>,
    last: Option<u64>,
}

enum Next {
    Event(Event),
    /// Events that fell out of the backlog before they could be read.
    Lost(u64),
}

impl Feed {
    fn new(events: &Events) -> Feed {
        let (_, rx) = events.subscribe(None);
        Feed { events: events.clone(), rx, replay: VecDeque::new(), last: None }
    }

    async fn next(&mut self) -> Option<Next> {
        loop {
            let e = if let Some(e) = self.replay.pop_front() {
                e
            } else {
                match self.rx.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Closed) => return None,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let (past, rx) = self.events.subscribe(self.last.or(Some(0)));
                        self.rx = rx;
                        self.replay = past.into();
                        continue;
                    }
                }
            };
            if self.last.is_some_and(|l| e.seq <= l) {
                continue; // already seen (the replay and the new receiver overlap)
            }
            let lost = self.last.map_or(0, |l| e.seq - l - 1);
            self.last = Some(e.seq);
            if lost > 0 {
                self.replay.push_front(e);
                return Some(Next::Lost(lost));
            }
            return Some(Next::Event(e));
        }
    }
}

struct Hook {
    settings: WebhookSettings,
    secret: Vec<u8>,
    /// Bit `kind_index(k)` set: send events of kind `k`.
    wants: u32,
    queue: Queue<Arc<Delivery>>,
}

impl Hook {
    fn wants(&self, k: EventKind) -> bool {
        self.wants & (1 << kind_index(k)) != 0
    }
}

fn read_secret(i: usize, w: &WebhookSettings) -> Result<Vec<u8>> {
    let at = format!("fleet.webhooks[{i}] ({})", w.name);
    let raw = match (&w.secret_file, &w.secret_env) {
        (Some(f), _) => fs_err::read_to_string(f).with_context(|| format!("{at}: reading secret_file"))?,
        (None, Some(var)) => std::env::var(var)
            .with_context(|| format!("{at}: secret_env names {var:?}, which is not set (or not UTF-8)"))?,
        (None, None) => anyhow::bail!("{at}: no secret_file or secret_env"),
    };
    let s = raw.trim();
    anyhow::ensure!(s.len() >= MIN_SECRET_BYTES, "{at}: the secret must be at least {MIN_SECRET_BYTES} bytes");
    Ok(s.as_bytes().to_vec())
}

/// Starts the webhook deliveries and the MQTT wake-ups the configuration asks for (none
/// when `[fleet]` has neither). Secrets are read now: a missing one fails the start.
/// The tasks end within a second of the last holder of `state` letting go.
pub fn spawn(state: &Arc<AppState>) -> Result<()> {
    let f = &state.config.fleet;
    validate(&f.webhooks, f.mqtt_url.as_deref())?;
    let metrics = state.metrics.fleet_notify.clone();
    if !f.webhooks.is_empty() {
        let mut hooks = Vec::with_capacity(f.webhooks.len());
        for (i, w) in f.webhooks.iter().enumerate() {
            let wants = if w.events.is_empty() {
                // Every event but the per-device execution changes, which must be named.
                !(1 << kind_index(EventKind::ExecutionChanged))
            } else {
                KINDS
                    .iter()
                    .filter(|k| w.events.iter().any(|e| e == k.as_str()))
                    .fold(0, |m, k| m | 1 << kind_index(*k))
            };
            hooks.push(Arc::new(Hook {
                settings: w.clone(),
                secret: read_secret(i, w)?,
                wants,
                queue: Queue::new(w.queue),
            }));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kernelize/", env!("CARGO_PKG_VERSION"), " (fleet webhook)"))
            .build()
            .context("building the webhook HTTP client")?;
        let (stop_tx, stop_rx) = watch::channel(false);
        for h in &hooks {
            tokio::spawn(deliver_loop(h.clone(), client.clone(), metrics.clone(), stop_rx.clone()));
        }
        let feed = Feed::new(state.fleet.events());
        tokio::spawn(dispatch_loop(Arc::downgrade(state), feed, hooks, metrics.clone(), stop_tx));
    }
    if let Some(u) = &f.mqtt_url {
        let (host, port) = parse_mqtt_url(u)?;
        let id = format!("kernelize-server-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut opts = rumqttc::MqttOptions::new(id, host, port);
        opts.set_keep_alive(Duration::from_secs(30)).set_clean_session(true);
        let (client, eventloop) = rumqttc::AsyncClient::new(opts, 64);
        let queue = Arc::new(Queue::new(WAKE_QUEUE));
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(mqtt_connection(eventloop, metrics.clone(), stop_rx.clone()));
        tokio::spawn(wake_publisher(client, queue.clone(), metrics.clone(), stop_rx));
        let feed = Feed::new(state.fleet.events());
        tokio::spawn(wake_loop(Arc::downgrade(state), feed, queue, metrics, stop_tx));
        tracing::info!(mqtt_url = %u, "fleet wake-ups over MQTT");
    }
    Ok(())
}

/// Waits for the next event, or `None` once the server's state is gone.
async fn next_or_gone(feed: &mut Feed, state: &Weak<AppState>) -> Option<Next> {
    loop {
        tokio::select! {
            n = feed.next() => return n,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if state.strong_count() == 0 {
                    return None;
                }
            }
        }
    }
}

async fn dispatch_loop(
    state: Weak<AppState>,
    mut feed: Feed,
    hooks: Vec<Arc<Hook>>,
    metrics: NotifyMetrics,
    stop: watch::Sender<bool>,
) {
    while let Some(n) = next_or_gone(&mut feed, &state).await {
        let e = match n {
            Next::Event(e) => e,
            Next::Lost(k) => {
                tracing::warn!(lost = k, "fleet webhooks fell behind the event backlog; events lost");
                for h in &hooks {
                    metrics.count(&h.settings.name, "dropped", k);
                }
                continue;
            }
        };
        let wanted: Vec<&Arc<Hook>> = hooks.iter().filter(|h| h.wants(e.kind)).collect();
        if wanted.is_empty() {
            continue;
        }
        let body: Arc<str> = match serde_json::to_string(&e) {
            Ok(b) => b.into(),
            Err(err) => {
                tracing::error!(error = %err, seq = e.seq, "could not encode a fleet event");
                continue;
            }
        };
        for h in wanted {
            let d = Delivery { id: uuid::Uuid::new_v4().to_string(), kind: e.kind.as_str(), body: body.clone() };
            if h.queue.push(Arc::new(d)) {
                metrics.count(&h.settings.name, "dropped", 1);
                tracing::warn!(webhook = %h.settings.name, "webhook queue full; dropped its oldest delivery");
            }
        }
    }
    let _ = stop.send(true);
}

async fn deliver_loop(
    hook: Arc<Hook>,
    client: reqwest::Client,
    metrics: NotifyMetrics,
    mut stop: watch::Receiver<bool>,
) {
    while let Some(d) = hook.queue.pop(&mut stop).await {
        let outcome = tokio::select! {
            o = deliver(&hook, &client, &metrics, &d) => o,
            _ = stop.changed() => return,
        };
        metrics.count(&hook.settings.name, outcome, 1);
    }
}

/// What one attempt came to.
enum Attempt {
    Ok,
    /// Not retried (a 3xx or a 4xx other than 408 and 429).
    Refused(String),
    /// Retried after at least this long (a receiver's `Retry-After`).
    Retry(String, Duration),
}

/// Sends `d` until it is accepted, refused or out of attempts: `ok` or `failed`.
async fn deliver(hook: &Hook, client: &reqwest::Client, metrics: &NotifyMetrics, d: &Delivery) -> &'static str {
    let s = &hook.settings;
    let mut backoff = Duration::from_millis(s.backoff_ms);
    let max_backoff = Duration::from_millis(s.max_backoff_ms);
    for attempt in 1..=s.max_attempts {
        metrics.webhook_attempts.get_or_create(&WebhookName { webhook: s.name.clone() }).inc();
        let ts = (crate::state::now_ms() / 1000).max(0) as u64;
        let res = client
            .post(&s.url)
            .timeout(Duration::from_millis(s.timeout_ms))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, d.kind)
            .header(DELIVERY_HEADER, &d.id)
            .header(ATTEMPT_HEADER, attempt.to_string())
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(SIGNATURE_HEADER, signature(&hook.secret, ts, &d.id, d.body.as_bytes()))
            .body(d.body.to_string())
            .send()
            .await;
        let a = match res {
            Ok(r) => {
                let st = r.status();
                let retry_after = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map_or(Duration::ZERO, Duration::from_secs);
                if st.is_success() {
                    Attempt::Ok
                } else if st.is_server_error() || st.as_u16() == 408 || st.as_u16() == 429 {
                    Attempt::Retry(format!("HTTP {}", st.as_u16()), retry_after)
                } else {
                    Attempt::Refused(format!("HTTP {}", st.as_u16()))
                }
            }
            Err(e) if e.is_timeout() => Attempt::Retry("timed out".into(), Duration::ZERO),
            Err(e) => Attempt::Retry(format!("{}", ErrorChain(&e)), Duration::ZERO),
        };
        match a {
            Attempt::Ok => {
                tracing::debug!(webhook = %s.name, delivery = %d.id, attempt, "webhook delivered");
                return "ok";
            }
            Attempt::Refused(why) => {
                tracing::warn!(webhook = %s.name, delivery = %d.id, attempt, reason = %why, "webhook refused the delivery; not retried");
                return "failed";
            }
            Attempt::Retry(why, at_least) => {
                if attempt == s.max_attempts {
                    tracing::warn!(webhook = %s.name, delivery = %d.id, attempt, reason = %why, "webhook delivery failed; out of attempts");
                    return "failed";
                }
                let wait = backoff.max(at_least).min(max_backoff);
                tracing::info!(webhook = %s.name, delivery = %d.id, attempt, reason = %why, retry_in_ms = wait.as_millis() as u64, "webhook delivery failed; will retry");
                tokio::time::sleep(wait).await;
                backoff = backoff.saturating_mul(2).min(max_backoff);
            }
        }
    }
    "failed"
}

/// An error with its sources (`connection refused` is three levels down in reqwest).
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

/// A wake-up to publish.
#[derive(Debug)]
struct Wake {
    topic: String,
    payload: Vec<u8>,
}

/// Turns events that give devices something to fetch into wake-ups.
async fn wake_loop(
    state: Weak<AppState>,
    mut feed: Feed,
    queue: Arc<Queue<Wake>>,
    metrics: NotifyMetrics,
    stop: watch::Sender<bool>,
) {
    while let Some(n) = next_or_gone(&mut feed, &state).await {
        let Next::Event(e) = n else { continue };
        let starts = matches!(
            e.kind,
            EventKind::DeploymentApproved
                | EventKind::PhaseAdvanced
                | EventKind::DeploymentResumed
                | EventKind::DeploymentAborted
        );
        let Some(dep) = e.deployment.filter(|_| starts) else { continue };
        let devices = {
            let Some(st) = state.upgrade() else { break };
            let fleet = st.fleet.clone();
            drop(st);
            fleet.devices_to_wake(&dep).await
        };
        let devices = match devices {
            Ok(d) => d,
            Err(err) => {
                tracing::warn!(error = %err, deployment = %dep, "could not list the devices to wake");
                continue;
            }
        };
        let payload = serde_json::json!({ "deployment": dep }).to_string().into_bytes();
        let mut dropped = 0;
        for dev in &devices {
            dropped += u64::from(queue.push(Wake { topic: wake_topic(dev), payload: payload.clone() }));
        }
        if dropped > 0 {
            metrics.wake(outcome::DROPPED, dropped);
            tracing::warn!(dropped, "MQTT wake-up queue full; dropped the oldest");
        }
        tracing::debug!(deployment = %dep, devices = devices.len(), "queued wake-ups");
    }
    let _ = stop.send(true);
}

mod outcome {
    pub const SENT: &str = "sent";
    pub const ACKED: &str = "acked";
    pub const DROPPED: &str = "dropped";
}

async fn wake_publisher(
    client: rumqttc::AsyncClient,
    queue: Arc<Queue<Wake>>,
    metrics: NotifyMetrics,
    mut stop: watch::Receiver<bool>,
) {
    while let Some(w) = queue.pop(&mut stop).await {
        // Waits while the client's own channel is full (broker down); meanwhile the
        // queue above keeps its newest wake-ups.
        let r = tokio::select! {
            r = client.publish(w.topic, rumqttc::QoS::AtLeastOnce, false, w.payload) => r,
            _ = stop.changed() => break,
        };
        match r {
            Ok(()) => metrics.wake(outcome::SENT, 1),
            Err(e) => {
                tracing::warn!(error = %e, "MQTT client closed; wake-ups stop");
                break;
            }
        }
    }
    let _ = client.try_disconnect();
}

/// Drives the MQTT connection: reconnects with backoff (0.5 s doubling to 30 s) while
/// the broker is unreachable, logging each change of state once.
async fn mqtt_connection(mut eventloop: rumqttc::EventLoop, metrics: NotifyMetrics, mut stop: watch::Receiver<bool>) {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);
    let mut backoff = FIRST;
    let mut connected = None::<bool>;
    loop {
        let r = tokio::select! {
            r = eventloop.poll() => r,
            _ = stop.changed() => return,
        };
        match r {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                if connected != Some(true) {
                    tracing::info!("connected to the MQTT broker");
                }
                connected = Some(true);
                backoff = FIRST;
            }
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => metrics.wake(outcome::ACKED, 1),
            Ok(_) => {}
            Err(e) => {
                if connected != Some(false) {
                    tracing::warn!(error = %e, "MQTT broker unreachable; wake-ups wait (devices still poll), reconnecting with backoff");
                }
                connected = Some(false);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trips_and_binds_every_part() {
        let s = signature(b"0123456789abcdef", 1_700_000_000, "d-1", b"{\"a\":1}");
        assert!(s.starts_with("sha256=") && s.len() == 71, "{s}");
        assert!(verify_signature(b"0123456789abcdef", 1_700_000_000, "d-1", b"{\"a\":1}", &s));
        assert!(!verify_signature(b"0123456789abcdeX", 1_700_000_000, "d-1", b"{\"a\":1}", &s));
        assert!(!verify_signature(b"0123456789abcdef", 1_700_000_001, "d-1", b"{\"a\":1}", &s));
        assert!(!verify_signature(b"0123456789abcdef", 1_700_000_000, "d-2", b"{\"a\":1}", &s));
        assert!(!verify_signature(b"0123456789abcdef", 1_700_000_000, "d-1", b"{\"a\":2}", &s));
        assert!(!verify_signature(b"0123456789abcdef", 1_700_000_000, "d-1", b"{\"a\":1}", "sha256=zz"));
        // A fixed vector, so receivers in other languages can check their code:
        // printf '1700000000.d-1.{"a":1}' | openssl dgst -sha256 -hmac 0123456789abcdef
        assert_eq!(s, "sha256=b503b088159b3d53985ff8323adc9a4b497eaf5bbd3e6fc1b8756e9053567d09");
    }

    #[test]
    fn queue_drops_the_oldest_when_full() {
        let q = Queue::new(2);
        assert!(!q.push(1));
        assert!(!q.push(2));
        assert!(q.push(3));
        assert_eq!(q.items.lock().iter().copied().collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn bad_settings_name_the_key() {
        let ok = WebhookSettings {
            name: "ops".into(),
            url: "https://hooks.example/x".into(),
            secret_env: Some("HOOK".into()),
            ..WebhookSettings::default()
        };
        validate(std::slice::from_ref(&ok), Some("mqtt://127.0.0.1:1883")).unwrap();
        let cases: Vec<(WebhookSettings, &str)> = vec![
            (WebhookSettings { name: "a b".into(), ..ok.clone() }, "webhooks[0].name"),
            (WebhookSettings { url: "ftp://x/".into(), ..ok.clone() }, "webhooks[0].url"),
            (WebhookSettings { secret_file: Some("f".into()), ..ok.clone() }, "exactly one"),
            (WebhookSettings { events: vec!["deployment_exploded".into()], ..ok.clone() }, "events[0]"),
            (WebhookSettings { max_attempts: 0, ..ok.clone() }, "max_attempts"),
            (WebhookSettings { queue: 0, ..ok.clone() }, "queue"),
        ];
        for (w, want) in cases {
            let e = format!("{:#}", validate(&[w], None).unwrap_err());
            assert!(e.contains(want), "{e} should name {want}");
        }
        let e = validate(&[ok.clone(), ok.clone()], None).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        for bad in ["http://127.0.0.1:1883", "mqtt://u:p@h:1", "mqtt://h:1/x", "mqtt://"] {
            assert!(validate(&[], Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(parse_mqtt_url("mqtt://broker").unwrap(), ("broker".to_owned(), 1883));
    }
}
