//! The fleet control plane over real HTTP with simulated devices (in-process clients of
//! the device API, each with its own ed25519 key): enrollment, tokens, rollouts with
//! phases, automatic abort and revert, offline detection, timeouts and retries.

use crate::both_backends;
use crate::common::{ADMIN_KEY, Backend, TestServer};
use kernelize_fleet::client::DeviceClient;
use kernelize_fleet::{ExecState, FailureKind, InstalledKernel, Inventory, OfferKind, StatusReport};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

pub fn inventory(channel: &str, version: u64) -> Inventory {
    let mut kernels = BTreeMap::new();
    if version > 0 {
        kernels.insert(channel.to_owned(), InstalledKernel { kernel_id: format!("k{version}"), version });
    }
    Inventory { agent_version: "0.1.0".into(), kernels, free_disk_bytes: 1 << 30, health: None }
}

/// An enrollment token for `uses` devices with `labels`.
pub async fn enrollment_token(ts: &TestServer, uses: u64, labels: Value) -> String {
    let (s, v) = ts
        .post(ADMIN_KEY, "/v1/fleet/enrollment-tokens", json!({"ttl_seconds": 600, "uses": uses, "labels": labels}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

/// `n` devices enrolled with a token (accepted), holding device tokens, each having
/// heartbeated once with `inv`.
pub async fn devices(ts: &TestServer, n: usize, labels: Value, inv: &Inventory) -> Vec<DeviceClient> {
    let token = enrollment_token(ts, n as u64, labels).await;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut d = DeviceClient::generate(ts.client.clone(), &ts.base);
        let e = d.enroll(&format!("sim-{i}"), inv, &BTreeMap::new(), Some(&token)).await.unwrap();
        assert_eq!(e.status, kernelize_fleet::DeviceStatus::Accepted);
        d.refresh_token().await.unwrap();
        d.heartbeat(Some(inv), None).await.unwrap();
        out.push(d);
    }
    out
}

/// A kernel of collection `fleetsrc-<channel>` (created with 300 records on first use;
/// each later call overwrites `changed` of them, so kernels differ), built and waited for.
pub async fn kernel(ts: &TestServer, channel: &str, changed: u64) -> String {
    let name = format!("fleetsrc-{channel}");
    let (s, _) = ts.get(ADMIN_KEY, &format!("/v1/collections/{name}")).await;
    let (n, salt) = if s == StatusCode::NOT_FOUND {
        ts.create_collection(&name, 16).await;
        (300, 0)
    } else {
        (changed, kernelize_fleet::now_ms() as u64)
    };
    let recs: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("r{i}"), "vector": crate::common::vector(i + salt, 16), "text": format!("record {i} {salt}")}))
        .collect();
    let (s, v) = ts.post(ADMIN_KEY, &format!("/v1/collections/{name}/records"), json!({"records": recs})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    crate::common::build_kernel(ts, json!({"collection": name})).await
}

/// Publishes a freshly built kernel as release `version` on `channel` through the API.
pub async fn release(ts: &TestServer, channel: &str, version: u64) -> String {
    let k = kernel(ts, channel, 3).await;
    let (s, r) =
        ts.post(ADMIN_KEY, "/v1/fleet/releases", json!({"kernel_id": k, "channel": channel, "version": version})).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    r["id"].as_str().unwrap().to_owned()
}

fn report(v: i64, state: ExecState) -> StatusReport {
    StatusReport { expect_version: v, state, failure: None, reason: None, bytes: None, log: None }
}

/// Walks an offer to `end` through the states before it; returns the last outcome.
async fn walk(d: &DeviceClient, dep: &str, mut v: i64, end: ExecState) -> kernelize_fleet::StatusOutcome {
    let path = [ExecState::Downloading, ExecState::Downloaded, ExecState::Verifying, ExecState::Trial];
    for s in path {
        let o = d.report(dep, &report(v, s)).await.unwrap();
        v = o.version;
    }
    let mut r = report(v, end);
    if end == ExecState::Failed {
        r.failure = Some(FailureKind::Download);
    }
    d.report(dep, &r).await.unwrap()
}

async fn create_and_approve(ts: &TestServer, writer: &str, body: Value) -> Value {
    let (s, d) = ts.post(writer, "/v1/fleet/deployments", body).await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    assert_eq!(d["state"], "awaiting_approval");
    let id = d["id"].as_str().unwrap();
    let (s, a) =
        ts.post(ADMIN_KEY, &format!("/v1/fleet/deployments/{id}/approve"), json!({"digest": d["digest"]})).await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert_eq!(a["state"], "running");
    a
}

async fn enrollment_and_device_tokens(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let inv = inventory("stable", 0);
    // Without a token: pending, and device routes say so (401) until an admin accepts.
    let mut d = DeviceClient::generate(ts.client.clone(), &ts.base);
    let e = d.enroll("box-1", &inv, &BTreeMap::new(), None).await.unwrap();
    assert_eq!(e.status, kernelize_fleet::DeviceStatus::Pending);
    let err = d.refresh_token().await.unwrap_err();
    assert_eq!((err.status, err.code.as_str()), (401, "unauthenticated"), "{err}");
    assert!(err.message.contains("pending"), "{err}");
    let (s, v) = ts.post(ADMIN_KEY, &format!("/v1/fleet/devices/{}/accept", d.device_id), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let t = d.refresh_token().await.unwrap();
    assert!(t.token.starts_with("kzd_"));
    let hb = d.heartbeat(Some(&inv), None).await.unwrap();
    let base = hb.heartbeat_ms as f64;
    assert!((base * 0.8..=base * 1.2).contains(&(hb.next_heartbeat_ms as f64)), "{hb:?}");
    // A log excerpt goes up with a heartbeat; the newest 8 KiB are kept.
    let long = format!("{}\nnewest line", "x".repeat(20_000));
    d.heartbeat(None, Some(&long)).await.unwrap();
    let (_, dev) = ts.get(ADMIN_KEY, &format!("/v1/fleet/devices/{}", d.device_id)).await;
    let kept = dev["log"].as_str().unwrap();
    assert!(kept.len() <= kernelize_fleet::MAX_LOG_BYTES && kept.ends_with("newest line"), "{} bytes", kept.len());
    // Enrolling again with the same key changes nothing.
    assert_eq!(
        d.enroll("box-1", &inv, &BTreeMap::new(), None).await.unwrap().status,
        kernelize_fleet::DeviceStatus::Accepted
    );
    // Revocation works at once: the very next request is refused.
    let (s, _) = ts.post(ADMIN_KEY, &format!("/v1/fleet/devices/{}/revoke", d.device_id), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let err = d.heartbeat(Some(&inv), None).await.unwrap_err();
    assert_eq!(err.status, 401, "{err}");
    assert!(d.refresh_token().await.is_err());

    // A forged enrollment: the payload signed by another key.
    let a = DeviceClient::generate(ts.client.clone(), &ts.base);
    let b = DeviceClient::generate(ts.client.clone(), &ts.base);
    let payload = json!({"identity": "evil", "public_key": a.public_key(), "timestamp_ms": kernelize_fleet::now_ms()})
        .to_string();
    // b signs a's payload: refused, and no device is created.
    let (s, v) = ts
        .call(
            None,
            reqwest::Method::POST,
            "/v1/fleet/enroll",
            Some(json!({"payload": payload, "signature": b.sign(payload.as_bytes())})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _) = ts.get(ADMIN_KEY, &format!("/v1/fleet/devices/{}", a.device_id)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Malformed requests name the field.
    let (s, v) =
        ts.call(None, reqwest::Method::POST, "/v1/fleet/enroll", Some(json!({"payload": "{", "signature": ""}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("payload"), "{v}");

    // An enrollment token with one use: the first device is accepted, the second refused.
    let tok = enrollment_token(&ts, 1, json!({"site": "lab"})).await;
    let d1 = DeviceClient::generate(ts.client.clone(), &ts.base);
    assert_eq!(
        d1.enroll("a", &inv, &BTreeMap::new(), Some(&tok)).await.unwrap().status,
        kernelize_fleet::DeviceStatus::Accepted
    );
    let d2 = DeviceClient::generate(ts.client.clone(), &ts.base);
    let err = d2.enroll("b", &inv, &BTreeMap::new(), Some(&tok)).await.unwrap_err();
    assert_eq!(err.status, 401, "{err}");
    let (_, dev) = ts.get(ADMIN_KEY, &format!("/v1/fleet/devices/{}", d1.device_id)).await;
    assert_eq!(dev["labels"]["site"], "lab", "{dev}");
    // A token from a device API is not an API key, and an API key is not a device token.
    let (s, _) = ts.call(Some(ADMIN_KEY), reqwest::Method::GET, "/v1/fleet/device/offer", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    ts.shutdown().await;
}

both_backends!(enrollment_and_device_tokens_both, enrollment_and_device_tokens);

/// 200 devices, phases 5% / 25% / 100%: exactly 10 offers before the first bake ends; 3
/// of the 10 canaries fail their health check (threshold 20%, min_executed 5): the
/// deployment aborts, phase 2 gets no offer, and every touched device is sent back.
async fn rollout_aborts_on_canary_failures_and_reverts(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let writer = ts.key("writer", None).await;
    let v1 = release(&ts, "stable", 1).await;
    let v2 = release(&ts, "stable", 2).await;
    let inv = inventory("stable", 1);
    let fleet = devices(&ts, 200, json!({"fleet": "t"}), &inv).await;
    let plan = json!({
        "phases": [
            {"percent": 5, "bake_seconds": 3600, "max_failures": "20%", "min_executed": 5},
            {"percent": 25, "bake_seconds": 3600, "max_failures": "20%", "min_executed": 5},
            {"percent": 100, "max_failures": "20%", "min_executed": 5}
        ],
        "abort_policy": "revert"
    });
    let body =
        json!({"name": "v2 to all", "release_id": v2, "target": {"filter": "labels.fleet = \"t\""}, "plan": plan});
    // The creator cannot approve their own deployment.
    let (s, d) = ts.post(ADMIN_KEY, "/v1/fleet/deployments", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let (s, v) = ts
        .post(
            ADMIN_KEY,
            &format!("/v1/fleet/deployments/{}/approve", d["id"].as_str().unwrap()),
            json!({"digest": d["digest"]}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let d = create_and_approve(&ts, &writer, body).await;
    let dep = d["id"].as_str().unwrap().to_owned();
    assert_eq!(d["phase_cutoffs"], json!([10, 50, 200]));

    let mut offered = Vec::new();
    for dev in &fleet {
        if let Some(o) = dev.offer().await.unwrap() {
            assert_eq!(o.kind, OfferKind::Install);
            assert_eq!(o.release.id, v2);
            offered.push((dev, o));
        }
    }
    assert_eq!(offered.len(), 10, "exactly the first phase gets offers");
    // Asking again returns the same offer, not a new one.
    let again = offered[0].0.offer().await.unwrap().unwrap();
    assert_eq!(again.offer_id, offered[0].1.offer_id);

    let mut aborted_at = None;
    for (i, (dev, o)) in offered.iter().enumerate() {
        let end = if i % 3 == 0 && i < 9 { ExecState::HealthFailed } else { ExecState::Succeeded };
        let out = walk(dev, &dep, o.execution_version, end).await;
        if out.deployment_state == kernelize_fleet::DeploymentState::Aborted && aborted_at.is_none() {
            aborted_at = Some(i);
        }
    }
    assert!(aborted_at.is_some(), "3 of 10 failed at 20%: the deployment must abort");
    let (_, d) = ts.get(ADMIN_KEY, &format!("/v1/fleet/deployments/{dep}")).await;
    assert_eq!(d["state"], "aborted", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("failure threshold"), "{d}");
    // No phase-2 device gets an offer, even after the bake would have ended; promoting is refused.
    let (s, _) = ts.post(ADMIN_KEY, &format!("/v1/fleet/deployments/{dep}/promote"), json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let touched: std::collections::HashSet<&str> = offered.iter().map(|(d, _)| d.device_id.as_str()).collect();
    let mut reverts = 0;
    for dev in &fleet {
        match dev.offer().await.unwrap() {
            None => assert!(!touched.contains(dev.device_id.as_str()), "a touched device must be sent back"),
            Some(o) => {
                assert!(touched.contains(dev.device_id.as_str()), "an untouched device got an offer after the abort");
                assert_eq!(o.kind, OfferKind::Revert);
                assert_eq!(o.release.id, v1, "back to the kernel it ran before");
                let out = dev.report(&dep, &report(o.execution_version, ExecState::RolledBack)).await.unwrap();
                assert_eq!(out.state, ExecState::RolledBack);
                reverts += 1;
            }
        }
    }
    assert_eq!(reverts, 10, "every touched device is offered its previous kernel");
    let (_, d) = ts.get(ADMIN_KEY, &format!("/v1/fleet/deployments/{dep}")).await;
    assert_eq!(d["counts"]["rolled_back"], 10, "{d}");
    assert_eq!(d["counts"]["canceled"], 190, "{d}");
    // Every change of the deployment is in the audit log.
    let (_, page) = ts.get(ADMIN_KEY, "/v1/audit?action=fleet.deployments.approve&limit=10").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 2, "one refused, one approved: {page}");
    ts.shutdown().await;
}

both_backends!(rollout_aborts_on_canary_failures_and_reverts_both, rollout_aborts_on_canary_failures_and_reverts);

/// Heartbeat 1 s: 20 of 30 devices go silent; exactly those 20 are offline within 4 s,
/// with one `device_offline` event each on the server-sent event stream.
async fn silent_devices_go_offline(backend: Backend) {
    let ts = TestServer::start_with(backend, |c| c.fleet.heartbeat_ms = 1000).await;
    let inv = inventory("stable", 0);
    let fleet = devices(&ts, 30, json!({"g": "hb"}), &inv).await;
    let mut events = ts.client.get(format!("{}/v1/fleet/events", ts.base)).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let (stay, go) = fleet.split_at(10);
    let start = tokio::time::Instant::now();
    let keep = async {
        while start.elapsed() < Duration::from_secs(4) {
            for d in stay {
                d.heartbeat(None, None).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let mut seen: Vec<String> = Vec::new();
    let read = async {
        let mut buf = String::new();
        while let Ok(Some(chunk)) =
            tokio::time::timeout_at(start + Duration::from_secs(4), events.chunk()).await.unwrap_or(Ok(None))
        {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(at) = buf.find("\n\n") {
                let block: String = buf.drain(..at + 2).collect();
                if block.contains("event: device_offline") {
                    let data = block.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                    let v: Value = serde_json::from_str(data).unwrap();
                    seen.push(v["device"].as_str().unwrap().to_owned());
                }
            }
        }
    };
    tokio::join!(keep, read);
    let mut want: Vec<String> = go.iter().map(|d| d.device_id.clone()).collect();
    want.sort();
    seen.sort();
    assert_eq!(seen, want, "exactly the silent devices, one event each");
    let (_, v) = ts.get(ADMIN_KEY, "/v1/fleet/devices?filter=online%20%3D%20false").await;
    let mut offline: Vec<String> =
        v["devices"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect();
    offline.sort();
    assert_eq!(offline, want);
    // Back at its next heartbeat.
    go[0].heartbeat(None, None).await.unwrap();
    let (_, v) = ts.get(ADMIN_KEY, &format!("/v1/fleet/devices/{}", go[0].device_id)).await;
    assert_eq!(v["online"], true);
    ts.shutdown().await;
}

both_backends!(silent_devices_go_offline_both, silent_devices_go_offline);

/// A device that stops mid-download ends `timed_out` (and counts toward abort); one whose
/// first two downloads fail ends `succeeded` after 3 attempts.
async fn timeouts_and_retries(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let writer = ts.key("writer", None).await;
    let rel = release(&ts, "beta", 1).await;
    let inv = inventory("beta", 0);
    let stuck = devices(&ts, 1, json!({"role": "stuck"}), &inv).await;
    let flaky = devices(&ts, 1, json!({"role": "flaky"}), &inv).await;

    let plan =
        json!({"phases": [{"count": 1, "max_failures": 1, "min_executed": 1}], "in_progress_timeout_seconds": 1});
    let d = create_and_approve(
        &ts,
        &writer,
        json!({"name": "stuck", "release_id": rel, "target": {"filter": "labels.role = \"stuck\""}, "plan": plan}),
    )
    .await;
    let dep1 = d["id"].as_str().unwrap().to_owned();
    let o = stuck[0].offer().await.unwrap().unwrap();
    let out = stuck[0]
        .report(&dep1, &StatusReport { bytes: Some(4096), ..report(o.execution_version, ExecState::Downloading) })
        .await
        .unwrap();
    // Progress within a state is not an event; each state the device enters is one.
    stuck[0]
        .report(&dep1, &StatusReport { bytes: Some(4096), ..report(out.version, ExecState::Downloading) })
        .await
        .unwrap();
    let changes: Vec<(String, String)> = ts
        .running()
        .state()
        .fleet
        .events()
        .recent(100)
        .into_iter()
        .filter(|e| e.kind.as_str() == "execution_changed" && e.device.as_deref() == Some(&stuck[0].device_id))
        .map(|e| {
            assert_eq!(e.deployment.as_deref(), Some(dep1.as_str()));
            (e.detail["from"].as_str().unwrap().to_owned(), e.detail["state"].as_str().unwrap().to_owned())
        })
        .collect();
    let want = [("queued", "offered"), ("offered", "downloading")].map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(changes, want);
    // ... and then nothing: the in-progress timeout (1 s) ends it.
    let mut state = Value::Null;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = ts.get(ADMIN_KEY, &format!("/v1/fleet/deployments/{dep1}/executions/{}", stuck[0].device_id)).await.1;
        if state["state"] == "timed_out" {
            break;
        }
    }
    assert_eq!(state["state"], "timed_out", "{state}");
    assert_eq!(state["bytes"], 4096);
    // The same tick judges the threshold right after the timeout.
    let mut d = Value::Null;
    for _ in 0..20 {
        d = ts.get(ADMIN_KEY, &format!("/v1/fleet/deployments/{dep1}")).await.1;
        if d["state"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(d["state"], "aborted", "a timeout counts toward abort: {d}");
    // A late report from the stuck device is stale now.
    let err = stuck[0].report(&dep1, &report(o.execution_version + 1, ExecState::Downloaded)).await.unwrap_err();
    assert_eq!(err.status, 409, "{err}");

    let plan = json!({"phases": [{"count": 1}], "retries": {"download": 2, "backoff_ms": 100}});
    let d = create_and_approve(
        &ts,
        &writer,
        json!({"name": "flaky", "release_id": rel, "target": {"filter": "labels.role = \"flaky\""}, "plan": plan}),
    )
    .await;
    let dep2 = d["id"].as_str().unwrap().to_owned();
    let mut attempts = 0;
    let mut last = None;
    for round in 0..60 {
        let Some(o) = flaky[0].offer().await.unwrap() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        attempts += 1;
        assert_eq!(o.attempt, attempts, "round {round}");
        let end = if attempts < 3 { ExecState::Failed } else { ExecState::Succeeded };
        let out = walk(&flaky[0], &dep2, o.execution_version, end).await;
        last = Some(out.state);
        if end == ExecState::Failed {
            assert_eq!(out.state, ExecState::Queued, "a download failure with retries left goes back to the queue");
        } else {
            break;
        }
    }
    assert_eq!(last, Some(ExecState::Succeeded));
    let (_, e) = ts.get(ADMIN_KEY, &format!("/v1/fleet/deployments/{dep2}/executions/{}", flaky[0].device_id)).await;
    assert_eq!(e["state"], "succeeded", "{e}");
    assert_eq!(e["attempts"], 3, "{e}");
    let states: Vec<&str> = e["history"].as_array().unwrap().iter().map(|h| h["state"].as_str().unwrap()).collect();
    assert_eq!(states.iter().filter(|s| **s == "failed").count(), 2, "{states:?}");
    assert_eq!(states.first(), Some(&"queued"));
    assert_eq!(states.last(), Some(&"succeeded"));
    ts.shutdown().await;
}

both_backends!(timeouts_and_retries_both, timeouts_and_retries);

/// Status reports: repeating is harmless, stale and illegal ones are 409 and change
/// nothing, oversized logs and malformed plans are 400 naming the field.
async fn status_reports_and_plans_are_checked(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let writer = ts.key("writer", None).await;
    let rel = release(&ts, "stable", 1).await;
    let inv = inventory("stable", 0);
    let fleet = devices(&ts, 2, json!({"x": "1"}), &inv).await;
    // Malformed plans.
    for (plan, field) in [
        (json!({"phases": []}), "plan.phases"),
        (json!({"phases": [{"percent": 150}]}), "plan.phases[0].percent"),
        (json!({"phases": [{"percent": 10}, {"percent": 100}]}), "plan.phases[0]"),
        (json!({"phases": [{"percent": 50, "count": 1}]}), "plan.phases[0]"),
    ] {
        let (s, v) = ts
            .post(
                &writer,
                "/v1/fleet/deployments",
                json!({"name": "bad", "release_id": rel, "target": {"filter": "labels.x = \"1\""}, "plan": plan}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap().contains(field), "{field}: {v}");
    }
    let (s, v) = ts.post(&writer, "/v1/fleet/deployments", json!({"name": "bad", "release_id": rel, "target": {"filter": "labels.x = "}, "plan": {"phases": [{"percent": 100}]}})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = ts.post(&writer, "/v1/fleet/deployments", json!({"name": "bad", "release_id": "nope", "target": {"filter": "labels.x = \"1\""}, "plan": {"phases": [{"percent": 100}]}})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // An edit after creation changes the digest: approving the old one is refused.
    let (s, d) = ts.post(&writer, "/v1/fleet/deployments", json!({"name": "ok", "release_id": rel, "target": {"filter": "labels.x = \"1\""}, "plan": {"phases": [{"percent": 100}]}})).await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let dep = d["id"].as_str().unwrap().to_owned();
    let old = d["digest"].clone();
    let (s, e) = ts
        .call(
            Some(&writer),
            reqwest::Method::PATCH,
            &format!("/v1/fleet/deployments/{dep}"),
            Some(json!({"plan": {"phases": [{"percent": 50}, {"percent": 100}]}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_ne!(e["digest"], old);
    let (s, v) = ts.post(ADMIN_KEY, &format!("/v1/fleet/deployments/{dep}/approve"), json!({"digest": old})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) =
        ts.post(ADMIN_KEY, &format!("/v1/fleet/deployments/{dep}/approve"), json!({"digest": e["digest"]})).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let (dev, o) = {
        let mut found = None;
        for d in &fleet {
            if let Some(o) = d.offer().await.unwrap() {
                found = Some((d, o));
                break;
            }
        }
        found.unwrap()
    };
    let v0 = o.execution_version;
    let first = dev.report(&dep, &report(v0, ExecState::Downloading)).await.unwrap();
    assert!(first.changed);
    // The same report again: accepted, nothing changes.
    let again = dev.report(&dep, &report(v0, ExecState::Downloading)).await.unwrap();
    assert!(!again.changed);
    assert_eq!(again.version, first.version);
    // Stale.
    let err = dev.report(&dep, &report(v0, ExecState::Downloaded)).await.unwrap_err();
    assert_eq!(err.status, 409, "{err}");
    // Illegal: back to offered, or straight to rolled_back.
    for s in [ExecState::Offered, ExecState::RolledBack, ExecState::Canceled] {
        let err = dev.report(&dep, &report(first.version, s)).await.unwrap_err();
        assert_eq!(err.status, 409, "{s:?}: {err}");
    }
    // A failure without its kind, an oversized log.
    let err = dev.report(&dep, &report(first.version, ExecState::Failed)).await.unwrap_err();
    assert_eq!(err.status, 400, "{err}");
    let big = StatusReport { log: Some("x".repeat(17 * 1024)), ..report(first.version, ExecState::Downloaded) };
    let err = dev.report(&dep, &big).await.unwrap_err();
    assert_eq!(err.status, 400, "{err}");
    assert!(err.message.contains("log"), "{err}");
    // Nothing above changed the execution.
    let (_, e) = ts.get(ADMIN_KEY, &format!("/v1/fleet/deployments/{dep}/executions/{}", dev.device_id)).await;
    assert_eq!(e["state"], "downloading");
    assert_eq!(e["version"], first.version);
    // Another device cannot report on this execution; unknown deployments are 404.
    let other = fleet.iter().find(|d| d.device_id != dev.device_id).unwrap();
    let err = other.report("dep-nope", &report(0, ExecState::Downloading)).await.unwrap_err();
    assert_eq!(err.status, 404, "{err}");
    ts.shutdown().await;
}

both_backends!(status_reports_and_plans_are_checked_both, status_reports_and_plans_are_checked);

/// Groups and bulk operations: a dry run shows the count; acting needs that count.
async fn groups_and_bulk_operations(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let inv = inventory("stable", 0);
    let _eu = devices(&ts, 3, json!({"region": "eu"}), &inv).await;
    let _us = devices(&ts, 2, json!({"region": "us"}), &inv).await;
    let (s, g) =
        ts.post(ADMIN_KEY, "/v1/fleet/groups", json!({"name": "europe", "filter": "labels.region = \"eu\""})).await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    assert_eq!(g["devices"], 3);
    let (s, g) = ts.post(ADMIN_KEY, "/v1/fleet/groups", json!({"name": "pilot"})).await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    assert_eq!(g["kind"], "static");
    let (s, _) = ts.post(ADMIN_KEY, "/v1/fleet/groups", json!({"name": "pilot"})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let bulk =
        json!({"select": {"filter": "labels.region = \"us\""}, "action": "move", "group": "pilot", "dry_run": true});
    let (s, v) = ts.post(ADMIN_KEY, "/v1/fleet/devices:bulk", bulk.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["matched"].as_u64(), v["changed"].as_u64()), (Some(2), Some(0)));
    let mut act = bulk.clone();
    act["dry_run"] = json!(false);
    let (s, v) = ts.post(ADMIN_KEY, "/v1/fleet/devices:bulk", act.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "acting needs the count: {v}");
    act["expect_count"] = json!(3);
    let (s, v) = ts.post(ADMIN_KEY, "/v1/fleet/devices:bulk", act.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    act["expect_count"] = json!(2);
    let (s, v) = ts.post(ADMIN_KEY, "/v1/fleet/devices:bulk", act).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["changed"], 2);
    let (_, g) = ts.get(ADMIN_KEY, "/v1/fleet/groups/pilot").await;
    assert_eq!(g["devices"], 2, "{g}");
    let label =
        json!({"select": {"group": "europe"}, "action": "label", "labels": {"tier": "gold"}, "expect_count": 3});
    let (s, v) = ts.post(ADMIN_KEY, "/v1/fleet/devices:bulk", label).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = ts.get(ADMIN_KEY, "/v1/fleet/devices?filter=labels.tier%20%3D%20%22gold%22").await;
    assert_eq!(v["devices"].as_array().unwrap().len(), 3, "{v}");
    let dec = json!({"select": {"group": "pilot"}, "action": "decommission", "expect_count": 2});
    let (s, _) = ts.post(ADMIN_KEY, "/v1/fleet/devices:bulk", dec).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = ts.get(ADMIN_KEY, "/v1/fleet/devices?status=decommissioned").await;
    assert_eq!(v["devices"].as_array().unwrap().len(), 2, "{v}");
    ts.shutdown().await;
}

both_backends!(groups_and_bulk_operations_both, groups_and_bulk_operations);

/// Downloads `sha` as a device would: whole, then again in two ranges with `If-Range`
/// (a resume), checking status codes and `Content-Range`.
async fn download(ts: &TestServer, d: &DeviceClient, sha: &str, len: u64) -> Vec<u8> {
    let url = format!("{}/v1/fleet/device/blobs/{sha}", ts.base);
    let token = d.token().unwrap();
    let whole = ts.client.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    let etag = whole.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{sha}\""));
    let whole = whole.bytes().await.unwrap().to_vec();
    assert_eq!(whole.len() as u64, len);
    let cut = len / 3;
    let head =
        ts.client.get(&url).bearer_auth(token).header("range", format!("bytes=0-{}", cut - 1)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::PARTIAL_CONTENT);
    let head = head.bytes().await.unwrap();
    let tail = ts
        .client
        .get(&url)
        .bearer_auth(token)
        .header("range", format!("bytes={cut}-"))
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.headers()["content-range"].to_str().unwrap(), format!("bytes {cut}-{}/{len}", len - 1));
    let mut joined = head.to_vec();
    joined.extend_from_slice(&tail.bytes().await.unwrap());
    assert_eq!(joined, whole, "a resumed download is the same file");
    // A stale validator gets the whole file; a range past the end is 416.
    let stale = ts
        .client
        .get(&url)
        .bearer_auth(token)
        .header("range", "bytes=5-")
        .header("if-range", "\"old\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    let past = ts.client.get(&url).bearer_auth(token).header("range", format!("bytes={len}-")).send().await.unwrap();
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    whole
}

/// Releases go to the blob store with a signed manifest; a device verifies the signed
/// offer with the pinned key, downloads with Range, checks every chunk and the whole
/// hash, and a device on the previous release gets a delta that rebuilds the new file.
async fn releases_offers_and_downloads_verify(ts: TestServer) {
    let writer = ts.key("writer", None).await;
    let (_, keys) = ts.get(ADMIN_KEY, "/v1/fleet/keys").await;
    let pinned = kernelize_bundle::PublicKey::from_hex(keys["public_key"].as_str().unwrap()).unwrap();
    let v1 = release(&ts, "stable", 1).await;
    // Versions only go up on a channel.
    let k = kernel(&ts, "stable", 3).await;
    let (s, v) =
        ts.post(&writer, "/v1/fleet/releases", json!({"kernel_id": k, "channel": "stable", "version": 1})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) =
        ts.post(&writer, "/v1/fleet/releases", json!({"kernel_id": "nope", "channel": "stable", "version": 9})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, r2) =
        ts.post(&writer, "/v1/fleet/releases", json!({"kernel_id": k, "channel": "stable", "version": 2})).await;
    assert_eq!(s, StatusCode::CREATED, "{r2}");
    let v2 = r2["id"].as_str().unwrap().to_owned();
    let delta = r2["deltas"][0].clone();
    assert_eq!(delta["from_release"], v1.as_str(), "{r2}");
    let (_, r1) = ts.get(ADMIN_KEY, &format!("/v1/fleet/releases/{v1}")).await;
    let old_sha = r1["sha256"].as_str().unwrap().to_owned();

    // A device running v1 (its inventory says so) and one with nothing.
    let on_v1 = devices(&ts, 1, json!({"d": "1"}), &inventory("stable", 1)).await;
    let fresh = devices(&ts, 1, json!({"d": "1"}), &inventory("stable", 0)).await;
    let plan = json!({"phases": [{"percent": 100}]});
    let d = create_and_approve(
        &ts,
        &writer,
        json!({"name": "v2", "release_id": v2, "target": {"filter": "labels.d = \"1\""}, "plan": plan}),
    )
    .await;
    let dep = d["id"].as_str().unwrap().to_owned();

    for (dev, expect_delta) in [(&on_v1[0], true), (&fresh[0], false)] {
        let o = dev.offer().await.unwrap().unwrap();
        let verified =
            kernelize_bundle::Offer::verify(o.signed.as_bytes(), &pinned, &dev.device_id, kernelize_bundle::now_ms())
                .unwrap();
        assert_eq!(verified.manifest.version, 2);
        assert_eq!(verified.offer.deployment_id, dep);
        // Bound to this device: another device cannot use it.
        assert!(
            kernelize_bundle::Offer::verify(o.signed.as_bytes(), &pinned, "d000", kernelize_bundle::now_ms()).is_err()
        );
        let m = &verified.manifest;
        let bytes = download(&ts, dev, &m.sha256.to_hex(), m.length).await;
        kernelize_bundle::ChunkVerifier::new(m).check_file(&bytes[..]).unwrap();
        assert_eq!(verified.offer.delta.is_some(), expect_delta, "{o:?}");
        if let Some(dl) = &verified.offer.delta {
            assert_eq!(dl.from_sha256.to_hex(), old_sha);
            assert!(dl.length < m.length, "a delta is offered only when smaller");
            let patch = download(&ts, dev, &dl.sha256.to_hex(), dl.length).await;
            let old = download(&ts, dev, &old_sha, r1["length"].as_u64().unwrap()).await;
            let rebuilt = kernelize_bundle::apply_delta(&old, &patch, m.length).unwrap();
            assert_eq!(kernelize_bundle::Sha256::of(&rebuilt), m.sha256);
        }
        walk(dev, &dep, o.execution_version, ExecState::Succeeded).await;
    }
    // Only published files can be downloaded, and only by a device.
    let stranger = format!("{}/v1/fleet/device/blobs/{}", ts.base, "0".repeat(64));
    let r = ts.client.get(&stranger).bearer_auth(on_v1[0].token().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = ts
        .client
        .get(format!("{}/v1/fleet/device/blobs/{old_sha}", ts.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Key rotation: devices follow the root chain from the pinned key; new offers are
    // signed by the new key only.
    let (s, k2) = ts.post(ADMIN_KEY, "/v1/fleet/keys/rotate", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{k2}");
    let (_, roots) = ts.call(None, reqwest::Method::GET, "/v1/fleet/device/root", None).await;
    assert_eq!(roots["code"], "unauthenticated");
    let roots = ts
        .client
        .get(format!("{}/v1/fleet/device/root", ts.base))
        .bearer_auth(fresh[0].token().unwrap())
        .send()
        .await
        .unwrap();
    let roots: Value = roots.json().await.unwrap();
    let docs: Vec<Vec<u8>> =
        roots["roots"].as_array().unwrap().iter().map(|d| serde_json::to_vec(d).unwrap()).collect();
    let now = kernelize_bundle::verify_root_chain(&kernelize_bundle::TrustRoot::pinned(pinned.clone()), &docs).unwrap();
    assert_eq!(now.version, 1);
    assert_eq!(now.key.to_hex(), k2["public_key"].as_str().unwrap());
    let v3 = release(&ts, "stable", 3).await;
    let d = create_and_approve(&ts, &writer, json!({"name": "v3", "release_id": v3, "target": {"filter": "labels.d = \"1\""}, "plan": {"phases": [{"percent": 100}]}})).await;
    let _ = d;
    let o = fresh[0].offer().await.unwrap().unwrap();
    assert!(
        kernelize_bundle::Offer::verify(o.signed.as_bytes(), &pinned, &fresh[0].device_id, kernelize_bundle::now_ms())
            .is_err()
    );
    kernelize_bundle::Offer::verify(o.signed.as_bytes(), &now.key, &fresh[0].device_id, kernelize_bundle::now_ms())
        .unwrap();

    // Blob GC keeps every referenced file (nothing here is unreferenced and old enough).
    let (s, g) = ts.post(ADMIN_KEY, "/v1/fleet/blobs:gc", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{g}");
    assert_eq!(g["deleted"], 0, "{g}");
    assert!(g["referenced"].as_u64().unwrap() >= 5, "{g}");
    ts.shutdown().await;
}

async fn releases_on_local_blobs(backend: Backend) {
    releases_offers_and_downloads_verify(TestServer::start(backend).await).await;
}

both_backends!(releases_on_local_blobs_both, releases_on_local_blobs);

/// The same with the blob store on a real S3-compatible server (moto, on 127.0.0.1).
async fn releases_on_s3_blobs(backend: Backend) {
    let moto = kernelize_blobs::testing::server();
    let bucket = moto.bucket();
    let ts = TestServer::start_with(backend, |c| {
        c.fleet.blobs = Some(kernelize_blobs::BlobConfig::S3 {
            bucket,
            prefix: "fleet".into(),
            endpoint: Some(moto.endpoint()),
            region: "us-east-1".into(),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            allow_http: true,
        });
    })
    .await;
    releases_offers_and_downloads_verify(ts).await;
}

both_backends!(releases_on_s3_blobs_both, releases_on_s3_blobs);

/// The download cap holds (no more than N devices offered or downloading at once), no
/// offer goes out before the start time, and the end time cancels devices not offered yet.
async fn download_cap_and_time_window(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let writer = ts.key("writer", None).await;
    let rel = release(&ts, "edge", 1).await;
    let fleet = devices(&ts, 5, json!({"w": "1"}), &inventory("edge", 0)).await;
    let plan = json!({"phases": [{"percent": 100}], "max_concurrent_downloads": 2});
    let d = create_and_approve(
        &ts,
        &writer,
        json!({"name": "cap", "release_id": rel, "target": {"filter": "labels.w = \"1\""}, "plan": plan}),
    )
    .await;
    let dep = d["id"].as_str().unwrap().to_owned();
    let mut offered = Vec::new();
    for dev in &fleet {
        if let Some(o) = dev.offer().await.unwrap() {
            offered.push((dev, o));
        }
    }
    assert_eq!(offered.len(), 2, "the cap is 2 downloads at once");
    // One finishes downloading: a slot opens for exactly one more device.
    let (dev, o) = &offered[0];
    let out = dev.report(&dep, &report(o.execution_version, ExecState::Downloading)).await.unwrap();
    dev.report(&dep, &report(out.version, ExecState::Downloaded)).await.unwrap();
    let mut more = 0;
    for dev in &fleet {
        if offered.iter().any(|(d, _)| d.device_id == dev.device_id) {
            continue;
        }
        more += usize::from(dev.offer().await.unwrap().is_some());
    }
    assert_eq!(more, 1, "one slot opened");

    // A window in the future: approved, yet nothing is offered; when the end passes the
    // devices never offered are canceled and the deployment completes.
    let now = kernelize_fleet::now_ms();
    let rel2 = release(&ts, "edge", 2).await;
    let plan = json!({"phases": [{"percent": 100}], "start_ms": now + 3_600_000, "end_ms": now + 3_600_001});
    let d = create_and_approve(
        &ts,
        &writer,
        json!({"name": "later", "release_id": rel2, "target": {"filter": "labels.w = \"1\""}, "plan": plan}),
    )
    .await;
    let later = d["id"].as_str().unwrap().to_owned();
    for dev in &fleet {
        if let Some(o) = dev.offer().await.unwrap() {
            assert_ne!(o.deployment_id, later, "no offer before the start time");
        }
    }
    let plan = json!({"phases": [{"percent": 100}], "start_ms": now - 10_000, "end_ms": now + 1_500, "end_behaviour": "cancel_queued"});
    let d = create_and_approve(
        &ts,
        &writer,
        json!({"name": "window", "release_id": rel2, "target": {"filter": "labels.w = \"1\""}, "plan": plan}),
    )
    .await;
    let window = d["id"].as_str().unwrap().to_owned();
    let mut state = Value::Null;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = ts.get(ADMIN_KEY, &format!("/v1/fleet/deployments/{window}")).await.1;
        if state["state"] == "completed" {
            break;
        }
    }
    assert_eq!(state["state"], "completed", "{state}");
    assert_eq!(state["counts"]["canceled"], 5, "{state}");
    ts.shutdown().await;
}

both_backends!(download_cap_and_time_window_both, download_cap_and_time_window);
