//! The role matrix of the fleet routes (`/v1/fleet/…`), called by `matrix.rs` for every
//! fleet route of the OpenAPI document and every role.

use crate::common::{ADMIN_KEY, TestServer};
use crate::fleet::{enrollment_token, inventory, release};
use crate::matrix::{Keys, Who, expected};
use kernelize_fleet::client::DeviceClient;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// What the fleet cases read: an accepted device with a running deployment and a release.
pub struct FleetIds {
    pub device: DeviceClient,
    pub kernel: String,
    pub release: String,
    pub deployment: String,
    pub group: String,
}

async fn create_deployment(ts: &TestServer, creator: &str, release: &str) -> Value {
    let body = json!({"name": "m", "release_id": release, "target": {"filter": "labels.m = \"x\""},
        "plan": {"phases": [{"percent": 100, "bake_seconds": 3600}]}});
    let (s, d) = ts.post(creator, "/v1/fleet/deployments", body).await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    d
}

/// A deployment created by `creator` and approved by the admin.
async fn running(ts: &TestServer, creator: &str, release: &str) -> String {
    let d = create_deployment(ts, creator, release).await;
    let id = d["id"].as_str().unwrap().to_owned();
    let (s, v) =
        ts.post(ADMIN_KEY, &format!("/v1/fleet/deployments/{id}/approve"), json!({"digest": d["digest"]})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    id
}

pub async fn fixtures(ts: &TestServer, keys: &Keys) -> FleetIds {
    let release = release(ts, "matrix", 1).await;
    let tok = enrollment_token(ts, 1, json!({"m": "x"})).await;
    let mut device = DeviceClient::generate(ts.client.clone(), &ts.base);
    device.enroll("matrix", &inventory("matrix", 0), &BTreeMap::new(), Some(&tok)).await.unwrap();
    device.refresh_token().await.unwrap();
    let deployment = running(ts, &keys.writer, &release).await;
    assert!(device.offer().await.unwrap().is_some());
    let (s, _) = ts.post(ADMIN_KEY, "/v1/fleet/groups", json!({"name": "matrix-group"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let kernel = crate::fleet::kernel(ts, "matrix", 3).await;
    FleetIds { device, kernel, release, deployment, group: "matrix-group".into() }
}

async fn pending_device(ts: &TestServer) -> String {
    let d = DeviceClient::generate(ts.client.clone(), &ts.base);
    d.enroll("pending", &inventory("matrix", 0), &BTreeMap::new(), None).await.unwrap();
    d.device_id
}

async fn accepted_device(ts: &TestServer) -> DeviceClient {
    let tok = enrollment_token(ts, 1, json!({"other": "y"})).await;
    let mut d = DeviceClient::generate(ts.client.clone(), &ts.base);
    d.enroll("accepted", &inventory("matrix", 0), &BTreeMap::new(), Some(&tok)).await.unwrap();
    d.refresh_token().await.unwrap();
    d
}

async fn device_status(ts: &TestServer, id: &str) -> String {
    ts.get(ADMIN_KEY, &format!("/v1/fleet/devices/{id}")).await.1["status"].as_str().unwrap().to_owned()
}

async fn deployment_state(ts: &TestServer, id: &str) -> String {
    ts.get(ADMIN_KEY, &format!("/v1/fleet/deployments/{id}")).await.1["state"].as_str().unwrap().to_owned()
}

/// Calls a fleet route as `who`; returns (status, body, expected status).
pub async fn exercise(
    ts: &TestServer,
    keys: &Keys,
    f: &FleetIds,
    method: &str,
    template: &str,
    who: Who,
) -> (StatusCode, Value, StatusCode) {
    let key = keys.of(who);
    let tag = format!("{who:?}").to_lowercase();
    let call = |m: Method, path: String, body: Option<Value>| async move { ts.call(key, m, &path, body).await };
    // The fleet is server-wide: a key scoped to some collections (the outsider) is refused
    // like one scoped away from a collection.
    let admin = |ok| expected(who, Who::Admin, true, ok);
    let writer = |ok| expected(who, Who::Writer, true, ok);
    let reader = |ok| expected(who, Who::Reader, true, ok);
    match (method, template) {
        ("get", "/v1/fleet/devices") => {
            let (s, v) = call(Method::GET, "/v1/fleet/devices".into(), None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("get", "/v1/fleet/devices/{id}") => {
            let (s, v) = call(Method::GET, format!("/v1/fleet/devices/{}", f.device.device_id), None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("post", "/v1/fleet/devices/{id}/accept") | ("post", "/v1/fleet/devices/{id}/reject") => {
            let id = pending_device(ts).await;
            let action = template.rsplit('/').next().unwrap();
            let (s, v) = call(Method::POST, format!("/v1/fleet/devices/{id}/{action}"), Some(json!({}))).await;
            let want = admin(StatusCode::OK);
            let now = device_status(ts, &id).await;
            assert_eq!(now != "pending", want.is_success(), "{action}: {now}");
            (s, v, want)
        }
        ("post", "/v1/fleet/devices/{id}/revoke") => {
            let d = accepted_device(ts).await;
            let (s, v) = call(Method::POST, format!("/v1/fleet/devices/{}/revoke", d.device_id), Some(json!({}))).await;
            let want = admin(StatusCode::OK);
            assert_eq!(d.heartbeat(None, None).await.is_err(), want.is_success());
            (s, v, want)
        }
        ("post", "/v1/fleet/devices:bulk") => {
            let d = accepted_device(ts).await;
            let body = json!({"select": {"devices": [d.device_id]}, "action": "label", "labels": {"t": tag}, "expect_count": 1});
            let (s, v) = call(Method::POST, "/v1/fleet/devices:bulk".into(), Some(body)).await;
            let want = admin(StatusCode::OK);
            let (_, dev) = ts.get(ADMIN_KEY, &format!("/v1/fleet/devices/{}", d.device_id)).await;
            assert_eq!(dev["labels"]["t"].is_string(), want.is_success());
            (s, v, want)
        }
        ("post", "/v1/fleet/enrollment-tokens") => {
            let (s, v) = call(Method::POST, template.into(), Some(json!({"ttl_seconds": 60, "uses": 1}))).await;
            (s, v, admin(StatusCode::CREATED))
        }
        ("get", "/v1/fleet/enrollment-tokens") => {
            let (s, v) = call(Method::GET, template.into(), None).await;
            (s, v, admin(StatusCode::OK))
        }
        ("delete", "/v1/fleet/enrollment-tokens/{id}") => {
            let (_, t) = ts.post(ADMIN_KEY, "/v1/fleet/enrollment-tokens", json!({"ttl_seconds": 60, "uses": 1})).await;
            let id = t["id"].as_str().unwrap();
            let (s, v) = call(Method::DELETE, format!("/v1/fleet/enrollment-tokens/{id}"), None).await;
            (s, v, admin(StatusCode::NO_CONTENT))
        }
        ("post", "/v1/fleet/groups") => {
            let (s, v) = call(Method::POST, template.into(), Some(json!({"name": format!("g-{tag}")}))).await;
            let want = admin(StatusCode::CREATED);
            let (gs, _) = ts.get(ADMIN_KEY, &format!("/v1/fleet/groups/g-{tag}")).await;
            assert_eq!(gs.is_success(), want.is_success());
            (s, v, want)
        }
        ("get", "/v1/fleet/groups") => {
            let (s, v) = call(Method::GET, template.into(), None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("get", "/v1/fleet/groups/{name}") => {
            let (s, v) = call(Method::GET, format!("/v1/fleet/groups/{}", f.group), None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("delete", "/v1/fleet/groups/{name}") => {
            let name = format!("del-{tag}");
            assert_eq!(ts.post(ADMIN_KEY, "/v1/fleet/groups", json!({"name": name})).await.0, StatusCode::CREATED);
            let (s, v) = call(Method::DELETE, format!("/v1/fleet/groups/{name}"), None).await;
            let want = admin(StatusCode::NO_CONTENT);
            let (gs, _) = ts.get(ADMIN_KEY, &format!("/v1/fleet/groups/{name}")).await;
            assert_eq!(gs == StatusCode::NOT_FOUND, want.is_success());
            (s, v, want)
        }
        ("get", "/v1/fleet/releases") => {
            let (s, v) = call(Method::GET, template.into(), None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("post", "/v1/fleet/releases") => {
            let version = match who {
                Who::Writer => 100,
                Who::Admin => 101,
                _ => 102,
            };
            let body = json!({"kernel_id": f.kernel, "channel": "matrix", "version": version});
            let (s, v) = call(Method::POST, template.into(), Some(body)).await;
            (s, v, writer(StatusCode::CREATED))
        }
        ("get", "/v1/fleet/keys") => {
            let (s, v) = call(Method::GET, template.into(), None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("post", "/v1/fleet/keys/rotate") => {
            let before = ts.get(ADMIN_KEY, "/v1/fleet/keys").await.1["version"].as_u64().unwrap();
            let (s, v) = call(Method::POST, template.into(), None).await;
            let want = admin(StatusCode::OK);
            let after = ts.get(ADMIN_KEY, "/v1/fleet/keys").await.1["version"].as_u64().unwrap();
            assert_eq!(after, before + u64::from(want.is_success()));
            (s, v, want)
        }
        ("post", "/v1/fleet/blobs:gc") => {
            let (s, v) = call(Method::POST, template.into(), None).await;
            (s, v, admin(StatusCode::OK))
        }
        ("get", "/v1/fleet/device/root") => {
            let (s, v) = call(Method::GET, template.into(), None).await;
            (s, v, StatusCode::UNAUTHORIZED)
        }
        ("get", "/v1/fleet/device/blobs/{sha256}") => {
            let (_, r) = ts.get(ADMIN_KEY, &format!("/v1/fleet/releases/{}", f.release)).await;
            let (s, v) =
                call(Method::GET, format!("/v1/fleet/device/blobs/{}", r["sha256"].as_str().unwrap()), None).await;
            (s, v, StatusCode::UNAUTHORIZED)
        }
        ("get", "/v1/fleet/releases/{id}") => {
            let (s, v) = call(Method::GET, format!("/v1/fleet/releases/{}", f.release), None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("post", "/v1/fleet/deployments") => {
            let before = ts.get(ADMIN_KEY, "/v1/fleet/deployments").await.1["deployments"].as_array().unwrap().len();
            let body = json!({"name": tag, "release_id": f.release, "target": {"filter": "labels.m = \"x\""},
                "plan": {"phases": [{"percent": 100}]}});
            let (s, v) = call(Method::POST, template.into(), Some(body)).await;
            let want = writer(StatusCode::CREATED);
            let after = ts.get(ADMIN_KEY, "/v1/fleet/deployments").await.1["deployments"].as_array().unwrap().len();
            assert_eq!(after, before + usize::from(want.is_success()));
            (s, v, want)
        }
        ("get", "/v1/fleet/deployments") => {
            let (s, v) = call(Method::GET, template.into(), None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("get", "/v1/fleet/deployments/{id}") => {
            let (s, v) = call(Method::GET, format!("/v1/fleet/deployments/{}", f.deployment), None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("patch", "/v1/fleet/deployments/{id}") => {
            let d = create_deployment(ts, ADMIN_KEY, &f.release).await;
            let id = d["id"].as_str().unwrap();
            let body = json!({"plan": {"phases": [{"percent": 100, "bake_seconds": 7}]}});
            let (s, v) = call(Method::PATCH, format!("/v1/fleet/deployments/{id}"), Some(body)).await;
            let want = writer(StatusCode::OK);
            let (_, now) = ts.get(ADMIN_KEY, &format!("/v1/fleet/deployments/{id}")).await;
            assert_eq!(now["digest"] != d["digest"], want.is_success());
            (s, v, want)
        }
        ("post", "/v1/fleet/deployments/{id}/approve") => {
            let d = create_deployment(ts, &keys.writer, &f.release).await;
            let id = d["id"].as_str().unwrap();
            let (s, v) =
                call(Method::POST, format!("/v1/fleet/deployments/{id}/approve"), Some(json!({"digest": d["digest"]})))
                    .await;
            // The writer created it: even with the role it could not approve it.
            let want = admin(StatusCode::OK);
            assert_eq!(deployment_state(ts, id).await == "running", want.is_success());
            (s, v, want)
        }
        ("post", path) if path.starts_with("/v1/fleet/deployments/{id}/") => {
            let action = path.rsplit('/').next().unwrap();
            let id = running(ts, &keys.writer, &f.release).await;
            if action == "resume" {
                assert_eq!(
                    ts.post(ADMIN_KEY, &format!("/v1/fleet/deployments/{id}/pause"), json!({})).await.0,
                    StatusCode::OK
                );
            }
            let before = deployment_state(ts, &id).await;
            let (s, v) = call(Method::POST, format!("/v1/fleet/deployments/{id}/{action}"), Some(json!({}))).await;
            let want = admin(StatusCode::OK);
            assert_eq!(deployment_state(ts, &id).await != before, want.is_success(), "{action}");
            (s, v, want)
        }
        ("get", "/v1/fleet/deployments/{id}/executions") => {
            let (s, v) = call(Method::GET, format!("/v1/fleet/deployments/{}/executions", f.deployment), None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("get", "/v1/fleet/deployments/{id}/executions/{device}") => {
            let path = format!("/v1/fleet/deployments/{}/executions/{}", f.deployment, f.device.device_id);
            let (s, v) = call(Method::GET, path, None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("get", "/v1/fleet/events") => {
            let r = ts.client.get(format!("{}/v1/fleet/events", ts.base));
            let r = match key {
                Some(k) => r.bearer_auth(k),
                None => r,
            };
            let r = r.send().await.unwrap();
            let s = r.status();
            // A granted stream stays open: read its status only.
            let v = if s.is_success() { Value::Null } else { r.json().await.unwrap_or(Value::Null) };
            (s, v, reader(StatusCode::OK))
        }
        // Device routes: enrollment and the token exchange are public and signed by the
        // device; an API key neither helps nor hurts.
        ("post", "/v1/fleet/enroll") => {
            let d = DeviceClient::generate(ts.client.clone(), &ts.base);
            let payload =
                json!({"identity": tag, "public_key": d.public_key(), "timestamp_ms": kernelize_fleet::now_ms()})
                    .to_string();
            let body = json!({"payload": payload, "signature": d.sign(payload.as_bytes())});
            let (s, v) = call(Method::POST, template.into(), Some(body)).await;
            (s, v, StatusCode::OK)
        }
        ("post", "/v1/fleet/device/challenge") => {
            let (s, v) = call(Method::POST, template.into(), Some(json!({"device_id": f.device.device_id}))).await;
            (s, v, StatusCode::OK)
        }
        ("post", "/v1/fleet/device/token") => {
            let mut d = accepted_device(ts).await;
            d.refresh_token().await.unwrap();
            let (_, c) = ts
                .call(None, Method::POST, "/v1/fleet/device/challenge", Some(json!({"device_id": d.device_id})))
                .await;
            let challenge = c["challenge"].as_str().unwrap();
            let msg = format!("kernelize-device-token\n{}\n{challenge}", d.device_id);
            let body = json!({"device_id": d.device_id, "challenge": challenge, "signature": d.sign(msg.as_bytes())});
            let (s, v) = call(Method::POST, template.into(), Some(body)).await;
            (s, v, StatusCode::OK)
        }
        // Device routes behind a device token: no API key opens them.
        ("post", "/v1/fleet/device/heartbeat") => {
            let (s, v) = call(Method::POST, template.into(), Some(json!({}))).await;
            assert!(f.device.heartbeat(None, None).await.is_ok(), "the device itself may");
            (s, v, StatusCode::UNAUTHORIZED)
        }
        ("get", "/v1/fleet/device/offer") => {
            let (s, v) = call(Method::GET, template.into(), None).await;
            assert!(f.device.offer().await.is_ok(), "the device itself may");
            (s, v, StatusCode::UNAUTHORIZED)
        }
        ("post", "/v1/fleet/device/executions/{deployment}/status") => {
            let body = json!({"expect_version": 0, "state": "downloading"});
            let (s, v) =
                call(Method::POST, format!("/v1/fleet/device/executions/{}/status", f.deployment), Some(body)).await;
            (s, v, StatusCode::UNAUTHORIZED)
        }
        _ => panic!("route {method} {template} has no case in the role matrix"),
    }
}
