//! Fleet notifications end to end: webhooks against a real HTTP receiver on 127.0.0.1
//! (checking signatures, failing on purpose, down then up), and MQTT wake-ups through a
//! real Mosquitto that is killed mid-rollout while polling still brings every device to
//! the target.

use crate::both_backends;
use crate::common::{ADMIN_KEY, Backend, TestServer};
use crate::fleet::{devices, inventory, release};
use axum::http::{HeaderMap, StatusCode as AxStatus};
use kernelize_fleet::client::DeviceClient;
use kernelize_fleet::{ExecState, FailureKind, StatusReport};
use kernelize_server::config::Config;
use kernelize_server::fleet_notify::{self, WebhookSettings};
use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const SECRET: &str = "whsec-test-0123456789abcdef";

/// One request the receiver saw.
#[derive(Debug, Clone)]
struct Seen {
    delivery: String,
    attempt: u32,
    event: String,
    body: Value,
    signature_ok: bool,
    /// What the receiver answered.
    status: u16,
}

/// A webhook receiver: checks the signature with its own copy of the secret (401 when it
/// does not match), answers 503 to the first `fail_first` signed requests, then 200.
struct Receiver {
    addr: std::net::SocketAddr,
    secret: Vec<u8>,
    fail_first: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Receiver {
    async fn start(secret: &str, fail_first: usize) -> Arc<Receiver> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(l, secret, fail_first)
    }

    /// Serves on a port chosen earlier (a receiver that was down comes up).
    async fn start_at(addr: std::net::SocketAddr, secret: &str) -> Arc<Receiver> {
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::serve(l, secret, 0)
    }

    fn serve(l: tokio::net::TcpListener, secret: &str, fail_first: usize) -> Arc<Receiver> {
        let r = Arc::new(Receiver {
            addr: l.local_addr().unwrap(),
            secret: secret.as_bytes().to_vec(),
            fail_first: AtomicUsize::new(fail_first),
            seen: Mutex::new(Vec::new()),
            task: Mutex::new(None),
        });
        let rr = r.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let r = rr.clone();
                async move { r.handle(&headers, &body) }
            }),
        );
        *r.task.lock() = Some(tokio::spawn(async move {
            axum::serve(l, app).await.unwrap();
        }));
        r
    }

    fn handle(&self, h: &HeaderMap, body: &[u8]) -> AxStatus {
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let ts: u64 = get(fleet_notify::TIMESTAMP_HEADER).parse().unwrap_or(0);
        let delivery = get(fleet_notify::DELIVERY_HEADER);
        let fresh = ts.abs_diff(kernelize_fleet::now_ms() as u64 / 1000) <= 300;
        let signature_ok = fresh
            && fleet_notify::verify_signature(&self.secret, ts, &delivery, body, &get(fleet_notify::SIGNATURE_HEADER));
        let status = if !signature_ok {
            AxStatus::UNAUTHORIZED
        } else if self.fail_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            AxStatus::SERVICE_UNAVAILABLE
        } else {
            AxStatus::OK
        };
        self.seen.lock().push(Seen {
            delivery,
            attempt: get(fleet_notify::ATTEMPT_HEADER).parse().unwrap_or(0),
            event: get(fleet_notify::EVENT_HEADER),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
            signature_ok,
            status: status.as_u16(),
        });
        status
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn accepted(&self) -> Vec<Seen> {
        self.seen.lock().iter().filter(|s| s.status == 200).cloned().collect()
    }

    fn stop(&self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }
}

/// A webhook to `url` signed with the secret in a file under `dir`.
fn hook(dir: &std::path::Path, name: &str, url: &str, events: &[&str]) -> WebhookSettings {
    let f = dir.join(format!("{name}.secret"));
    fs_err::write(&f, format!("{SECRET}\n")).unwrap();
    WebhookSettings {
        name: name.into(),
        url: url.into(),
        secret_file: Some(f),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        backoff_ms: 50,
        max_backoff_ms: 400,
        timeout_ms: 2000,
        max_attempts: 50,
        ..WebhookSettings::default()
    }
}

async fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(tokio::time::Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn deliveries(ts: &TestServer, hook: &str, outcome: &str) -> u64 {
    ts.running().state().metrics.fleet_notify.deliveries(hook, outcome)
}

/// The receiver fails the first two deliveries with 503: the event is retried and
/// accepted exactly once (same delivery id, attempt 3), events outside the webhook's
/// filter are never sent, and the metrics count it all.
async fn webhook_retries_until_accepted(backend: Backend) {
    let rx = Receiver::start(SECRET, 2).await;
    let secrets = tempfile::tempdir().unwrap();
    let w = hook(secrets.path(), "ops", &rx.url(), &["deployment_created", "deployment_aborted"]);
    let ts = TestServer::start_with(backend, |c| c.fleet.webhooks = vec![w]).await;
    let writer = ts.key("writer", None).await;
    let rel = release(&ts, "stable", 1).await;
    devices(&ts, 1, json!({"g": "hook"}), &inventory("stable", 0)).await; // device_enrolled: filtered out
    let (s, d) = ts
        .post(
            &writer,
            "/v1/fleet/deployments",
            json!({"name": "hooked", "release_id": rel, "target": {"filter": "labels.g = \"hook\""},
                   "plan": {"phases": [{"percent": 100}]}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let dep = d["id"].as_str().unwrap().to_owned();
    let (s, v) = ts.post(ADMIN_KEY, &format!("/v1/fleet/deployments/{dep}/abort"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    wait_for("both events accepted", 20, || rx.accepted().len() == 2).await;
    // Let any stray retry arrive before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = rx.seen.lock().clone();
    assert!(seen.iter().all(|s| s.signature_ok), "every request is signed with the secret: {seen:?}");
    let created: Vec<&Seen> = seen.iter().filter(|s| s.event == "deployment_created").collect();
    assert_eq!(created.iter().map(|s| (s.attempt, s.status)).collect::<Vec<_>>(), [(1, 503), (2, 503), (3, 200)]);
    assert!(created.iter().all(|s| s.delivery == created[0].delivery), "one delivery id across retries");
    assert_eq!(created[2].body["kind"], "deployment_created");
    assert_eq!(created[2].body["deployment"], dep.as_str());
    let aborted: Vec<&Seen> = seen.iter().filter(|s| s.event == "deployment_aborted").collect();
    assert_eq!(aborted.len(), 1, "{seen:?}");
    assert_eq!((aborted[0].attempt, aborted[0].status), (1, 200));
    assert!(aborted[0].body["detail"]["reason"].as_str().unwrap().starts_with("aborted by"), "{:?}", aborted[0].body);
    assert_ne!(aborted[0].delivery, created[0].delivery);
    assert!(aborted[0].body["seq"].as_u64() > created[0].body["seq"].as_u64(), "in stream order");
    assert_eq!(seen.len(), 4, "nothing else was sent (device_enrolled is filtered out): {seen:?}");
    assert_eq!(deliveries(&ts, "ops", "ok"), 2);
    assert_eq!(deliveries(&ts, "ops", "failed"), 0);
    assert_eq!(deliveries(&ts, "ops", "dropped"), 0);
    let text = ts.client.get(format!("{}/metrics", ts.base)).bearer_auth(ADMIN_KEY).send().await.unwrap();
    let text = text.text().await.unwrap();
    assert!(text.contains("kernelize_fleet_webhook_deliveries_total{webhook=\"ops\",outcome=\"ok\"} 2"), "{text}");
    assert!(text.contains("kernelize_fleet_webhook_attempts_total{webhook=\"ops\"} 4"), "{text}");
    rx.stop();
    ts.shutdown().await;
}

both_backends!(webhook_retries_until_accepted_both, webhook_retries_until_accepted);

/// The receiver is down (connection refused) while five events happen; the queue holds
/// two: the oldest are dropped and counted, and once the receiver is up the newest
/// arrive, each once, the first after several attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receiver_down_then_up_keeps_the_newest() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let mut w = hook(secrets.path(), "down", &format!("http://{port}/hook"), &["device_enrolled"]);
    w.queue = 2;
    let ts = TestServer::start_with(Backend::Sqlite, |c| c.fleet.webhooks = vec![w]).await;
    let fleet = devices(&ts, 5, json!({"g": "down"}), &inventory("stable", 0)).await;
    let attempts = |ts: &TestServer| {
        ts.running()
            .state()
            .metrics
            .fleet_notify
            .webhook_attempts
            .get_or_create(&fleet_notify::WebhookName { webhook: "down".into() })
            .get()
    };
    wait_for("retries while the receiver is down", 10, || attempts(&ts) >= 3).await;
    assert_eq!(deliveries(&ts, "down", "ok"), 0);
    let rx = Receiver::start_at(port, SECRET).await;
    wait_for("every event accepted or dropped", 20, || {
        deliveries(&ts, "down", "ok") + deliveries(&ts, "down", "dropped") == 5
    })
    .await;
    let dropped = deliveries(&ts, "down", "dropped");
    assert!((2..=3).contains(&dropped), "one in flight, two queued: {dropped} dropped");
    assert_eq!(deliveries(&ts, "down", "failed"), 0);
    let got: Vec<String> = rx.accepted().iter().map(|s| s.body["device"].as_str().unwrap().to_owned()).collect();
    let enrolled: Vec<String> = fleet.iter().map(|d| d.device_id.clone()).collect();
    // The newest two always arrive, last; at most the very first one (in flight when the
    // queue overflowed) arrives before them.
    assert_eq!(got.len() as u64, 5 - dropped);
    assert_eq!(got[got.len() - 2..], enrolled[3..], "the newest survive");
    if got.len() == 3 {
        assert_eq!(got[0], enrolled[0]);
        assert!(rx.accepted()[0].attempt > 1, "the first was retried while the receiver was down");
    }
    assert_eq!(
        rx.seen.lock().len(),
        got.len(),
        "each delivery was accepted at its first attempt after the receiver came up"
    );
    rx.stop();
    ts.shutdown().await;
}

/// A webhook configured with the wrong secret: the receiver detects it (401), and a 4xx
/// other than 408/429 is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_with_a_bad_secret_is_refused_and_not_retried() {
    let rx = Receiver::start("the-receivers-own-secret-xyz", 0).await;
    let secrets = tempfile::tempdir().unwrap();
    let w = hook(secrets.path(), "wrong", &rx.url(), &["device_enrolled"]);
    let ts = TestServer::start_with(Backend::Sqlite, |c| c.fleet.webhooks = vec![w]).await;
    devices(&ts, 1, json!({"g": "x"}), &inventory("stable", 0)).await;
    wait_for("the delivery to fail", 10, || deliveries(&ts, "wrong", "failed") >= 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = rx.seen.lock().clone();
    assert_eq!(seen.len(), 1, "401 is not retried: {seen:?}");
    assert!(!seen[0].signature_ok && seen[0].status == 401 && seen[0].event == "device_enrolled");
    assert_eq!(deliveries(&ts, "wrong", "ok"), 0);
    rx.stop();
    ts.shutdown().await;
}

/// Settings that cannot work fail the start with the key named.
#[tokio::test]
async fn webhook_settings_fail_the_start_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let base = || Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        admin_key: Some(ADMIN_KEY.into()),
        ..Config::default()
    };
    let mut c = base();
    c.fleet.webhooks = vec![WebhookSettings {
        name: "env".into(),
        url: "http://127.0.0.1:9/hook".into(),
        secret_env: Some("KZ_TEST_UNSET_WEBHOOK_SECRET".into()),
        ..WebhookSettings::default()
    }];
    let e = format!("{:#}", kernelize_server::start(c).await.unwrap_err());
    assert!(e.contains("fleet.webhooks[0] (env)") && e.contains("KZ_TEST_UNSET_WEBHOOK_SECRET"), "{e}");
    let short = dir.path().join("short");
    fs_err::write(&short, "tiny").unwrap();
    let mut c = base();
    c.fleet.webhooks = vec![WebhookSettings {
        name: "short".into(),
        url: "http://127.0.0.1:9/hook".into(),
        secret_file: Some(short),
        ..WebhookSettings::default()
    }];
    let e = format!("{:#}", kernelize_server::start(c).await.unwrap_err());
    assert!(e.contains("at least 16 bytes"), "{e}");
    let mut c = base();
    c.fleet.mqtt_url = Some("tcp://127.0.0.1:1883".into());
    let e = format!("{:#}", kernelize_server::start(c).await.unwrap_err());
    assert!(e.contains("fleet.mqtt_url"), "{e}");
}

// ------------------------------------------------------------------------- MQTT

/// A Mosquitto of our own on a free port, killed by PID.
struct Broker {
    child: std::process::Child,
}

impl Broker {
    async fn start(port: u16) -> Broker {
        let child = std::process::Command::new("mosquitto")
            .args(["-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (it runs as the system service)");
        let b = Broker { child };
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(tokio::time::Instant::now() < end, "mosquitto did not come up on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        b
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A device-side subscriber to every device's wake topic; collects `(device, payload)`.
struct Subscriber {
    got: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    async fn start(port: u16) -> Subscriber {
        let mut o = rumqttc::MqttOptions::new(format!("test-device-{}", uuid_like()), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = rumqttc::AsyncClient::new(o, 16);
        client.subscribe("kernelize/devices/+/wake", rumqttc::QoS::AtLeastOnce).await.unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let g = got.clone();
        let task = tokio::spawn(async move {
            let _client = client; // keeps the request channel open
            let mut subscribed = Some(subscribed_tx);
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(t) = subscribed.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let dev = p.topic.strip_prefix("kernelize/devices/").and_then(|t| t.strip_suffix("/wake"));
                        let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        g.lock().push((dev.unwrap_or("?").to_owned(), v));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx).await.unwrap().unwrap();
        Subscriber { got, task }
    }

    /// Devices woken for `dep`, in arrival order.
    fn woken(&self, dep: &str) -> Vec<String> {
        self.got.lock().iter().filter(|(_, v)| v["deployment"] == dep).map(|(d, _)| d.clone()).collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn uuid_like() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{}-{}-{}", std::process::id(), kernelize_fleet::now_ms(), N.fetch_add(1, Ordering::SeqCst))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn report(v: i64, state: ExecState) -> StatusReport {
    StatusReport { expect_version: v, state, failure: None, reason: None, bytes: None, log: None }
}

/// Walks an offer through the states to `end`.
async fn walk(d: &DeviceClient, dep: &str, mut v: i64, end: ExecState) {
    for s in [ExecState::Downloading, ExecState::Downloaded, ExecState::Verifying, ExecState::Trial] {
        v = d.report(dep, &report(v, s)).await.unwrap().version;
    }
    let mut r = report(v, end);
    if end == ExecState::Failed {
        r.failure = Some(FailureKind::Download);
    }
    d.report(dep, &r).await.unwrap();
}

/// Devices (by index into `fleet`) that get an install offer from `dep` now; walks each
/// to succeeded.
async fn poll_and_succeed(fleet: &[DeviceClient], dep: &str) -> Vec<String> {
    let mut done = Vec::new();
    for d in fleet {
        if let Some(o) = d.offer().await.unwrap()
            && o.deployment_id == dep
        {
            walk(d, dep, o.execution_version, ExecState::Succeeded).await;
            done.push(d.device_id.clone());
        }
    }
    done
}

async fn approve(ts: &TestServer, writer: &str, body: Value) -> String {
    let (s, d) = ts.post(writer, "/v1/fleet/deployments", body).await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let id = d["id"].as_str().unwrap().to_owned();
    let (s, a) =
        ts.post(ADMIN_KEY, &format!("/v1/fleet/deployments/{id}/approve"), json!({"digest": d["digest"]})).await;
    assert_eq!(s, StatusCode::OK, "{a}");
    id
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Approval and each phase advance wake exactly the devices that now have an offer;
/// then the broker dies mid-rollout: the rollout completes for every device by polling
/// and the server stays healthy. The broker comes back on the same port: the server
/// reconnects, and an abort with `revert` wakes the touched devices.
async fn mqtt_wakes_and_broker_death(backend: Backend) {
    let port = free_port();
    let mut broker = Broker::start(port).await;
    let sub = Subscriber::start(port).await;
    let ts = TestServer::start_with(backend, |c| c.fleet.mqtt_url = Some(format!("mqtt://127.0.0.1:{port}"))).await;
    let writer = ts.key("writer", None).await;
    release(&ts, "stable", 1).await;
    let v2 = release(&ts, "stable", 2).await;
    let fleet = devices(&ts, 20, json!({"g": "mq"}), &inventory("stable", 1)).await;
    let plan = json!({"phases": [{"count": 5}, {"count": 10}, {"percent": 100}]});
    let dep = approve(
        &ts,
        &writer,
        json!({"name": "woken", "release_id": v2, "target": {"filter": "labels.g = \"mq\""}, "plan": plan}),
    )
    .await;

    // Phase 0: the woken devices are exactly those with an offer.
    wait_for("phase 0 wake-ups", 10, || sub.woken(&dep).len() >= 5).await;
    let phase0 = poll_and_succeed(&fleet, &dep).await;
    assert_eq!(phase0.len(), 5);
    assert_eq!(sorted(sub.woken(&dep)), sorted(phase0.clone()), "phase 0 woke exactly its devices");
    // Phase 1 starts on the tick: its five new devices are woken.
    wait_for("phase 1 wake-ups", 10, || sub.woken(&dep).len() >= 10).await;
    let phase1_woken = sub.woken(&dep)[5..].to_vec();
    let phase1 = poll_and_succeed(&fleet, &dep).await;
    assert_eq!(sorted(phase1_woken), sorted(phase1.clone()), "phase 1 woke exactly its new devices");
    // QoS 1: the broker acknowledges each (the PUBACK may trail the subscriber's copy).
    wait_for("the broker's acknowledgements", 10, || ts.running().state().metrics.fleet_notify.wakes("acked") >= 10)
        .await;

    // The broker dies before phase 2 starts.
    broker.kill();
    let (s, _) = ts.call(None, reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(s, StatusCode::OK);
    let mut finished: Vec<String> = phase0.iter().chain(&phase1).cloned().collect();
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while finished.len() < fleet.len() {
        assert!(tokio::time::Instant::now() < end, "polling did not finish the rollout: {} of 20", finished.len());
        finished.extend(poll_and_succeed(&fleet, &dep).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sorted(finished), sorted(fleet.iter().map(|d| d.device_id.clone()).collect()));
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, d) = ts.get(ADMIN_KEY, &format!("/v1/fleet/deployments/{dep}")).await;
        if d["state"] == "completed" {
            assert_eq!(d["counts"]["succeeded"], 20, "{d}");
            break;
        }
        assert!(tokio::time::Instant::now() < end, "not completed: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sub.woken(&dep).len(), 10, "nothing was published while the broker was down");
    let (s, _) = ts.call(None, reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(s, StatusCode::OK);

    // The broker comes back: the server reconnects (backoff), and an abort with revert
    // wakes the devices it sends back.
    drop(sub);
    let _broker = Broker::start(port).await;
    let sub = Subscriber::start(port).await;
    let v3 = release(&ts, "stable", 3).await;
    let plan = json!({"phases": [{"count": 4, "max_failures": 1, "min_executed": 1}], "abort_policy": "revert"});
    let dep3 = approve(
        &ts,
        &writer,
        json!({"name": "reverted", "release_id": v3, "target": {"filter": "labels.g = \"mq\""}, "plan": plan}),
    )
    .await;
    wait_for("wake-ups after the broker came back", 45, || sub.woken(&dep3).len() >= 4).await;
    let woken = sub.woken(&dep3);
    let mut offered = Vec::new();
    for d in &fleet {
        if let Some(o) = d.offer().await.unwrap() {
            offered.push((d, o));
        }
    }
    assert_eq!(sorted(woken), sorted(offered.iter().map(|(d, _)| d.device_id.clone()).collect()));
    // All four were offered (touched); one starts, one fails: the deployment aborts and
    // every touched device is woken for its revert.
    let (d0, o0) = &offered[0];
    let (d1, o1) = &offered[1];
    d0.report(&dep3, &report(o0.execution_version, ExecState::Downloading)).await.unwrap();
    walk(d1, &dep3, o1.execution_version, ExecState::Failed).await;
    wait_for("revert wake-ups", 15, || sub.woken(&dep3).len() >= 8).await;
    let reverts = sorted(sub.woken(&dep3)[4..].to_vec());
    assert_eq!(
        reverts,
        sorted(offered.iter().map(|(d, _)| d.device_id.clone()).collect()),
        "the touched devices are woken"
    );
    for (d, _) in &offered {
        let o = d.offer().await.unwrap().unwrap();
        assert_eq!(o.kind, kernelize_fleet::OfferKind::Revert, "woken for a revert that is there");
    }
    let (_, d) = ts.get(ADMIN_KEY, &format!("/v1/fleet/deployments/{dep3}")).await;
    assert_eq!(d["state"], "aborted", "{d}");
    ts.shutdown().await;
}

both_backends!(mqtt_wakes_and_broker_death_both, mqtt_wakes_and_broker_death);

/// The broker is down from the start: the server starts, serves and rolls out all the
/// same (wake-ups are only hints).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_broker_down_from_the_start_changes_nothing() {
    let port = free_port();
    let ts =
        TestServer::start_with(Backend::Sqlite, |c| c.fleet.mqtt_url = Some(format!("mqtt://127.0.0.1:{port}"))).await;
    let writer = ts.key("writer", None).await;
    let v1 = release(&ts, "stable", 1).await;
    let fleet = devices(&ts, 3, json!({"g": "nobroker"}), &inventory("stable", 0)).await;
    let dep = approve(
        &ts,
        &writer,
        json!({"name": "quiet", "release_id": v1, "target": {"filter": "labels.g = \"nobroker\""},
               "plan": {"phases": [{"percent": 100}]}}),
    )
    .await;
    assert_eq!(poll_and_succeed(&fleet, &dep).await.len(), 3);
    assert_eq!(ts.running().state().metrics.fleet_notify.wakes("acked"), 0);
    ts.shutdown().await;
}
