//! A hostile server (a test process on 127.0.0.1 speaking the device API) against a real
//! agent process: replays, expired offers, offers for another device, manifests that do
//! not match the bytes, extra bytes, a corrupt chunk, a stall, an old key after a
//! rotation, and bundles that try to smuggle in something to run. Each is refused with its
//! own reason code while the old kernel keeps serving; nothing runs.

use crate::common::*;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kernelize_bundle::{
    Compatibility, DocKind, Envelope, Offer, OfferKind, ReleaseManifest, RootDocument, Sha256, SigningKey,
    chunk_hashes, new_nonce, now_ms,
};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

const CHUNK: u64 = 64 << 10;

#[derive(Clone, Copy, PartialEq)]
enum Serve {
    Honest,
    ExtraBytes,
    Stall,
}

struct Hostile {
    key: Mutex<Arc<SigningKey>>,
    roots: Mutex<Vec<Vec<u8>>>,
    root_version: Mutex<u64>,
    kernel_key: String,
    offer: Mutex<Option<Value>>,
    blobs: Mutex<HashMap<String, (Vec<u8>, Serve)>>,
    reports: Mutex<Vec<(String, Value)>>,
    hits: Mutex<Vec<String>>,
}

type H = State<Arc<Hostile>>;

async fn enroll() -> Json<Value> {
    Json(json!({"device_id": "d-hostile", "status": "accepted"}))
}
async fn challenge() -> Json<Value> {
    Json(json!({"challenge": "c"}))
}
async fn token() -> Json<Value> {
    Json(json!({"token": "t", "expires_ms": now_ms() + 3_600_000, "heartbeat_ms": 200}))
}
async fn heartbeat() -> Json<Value> {
    Json(json!({"heartbeat_ms": 200, "next_heartbeat_ms": 200}))
}
async fn root(State(h): H) -> Json<Value> {
    let roots: Vec<Value> = h.roots.lock().iter().map(|r| serde_json::from_slice(r).unwrap()).collect();
    let key = h.key.lock().public();
    Json(json!({"version": *h.root_version.lock(), "public_key": key, "roots": roots, "kernel_key": h.kernel_key}))
}
async fn offer(State(h): H) -> Response {
    match h.offer.lock().clone() {
        Some(o) => Json(o).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}
async fn status(State(h): H, UrlPath(dep): UrlPath<String>, Json(r): Json<Value>) -> Json<Value> {
    let state = r["state"].as_str().unwrap_or_default().to_owned();
    if !matches!(state.as_str(), "downloading" | "downloaded" | "verifying" | "trial") {
        // Finished: stop offering it.
        let mut o = h.offer.lock();
        if o.as_ref().is_some_and(|o| o["deployment_id"] == dep.as_str()) {
            *o = None;
        }
    }
    let v = r["expect_version"].as_i64().unwrap_or(0);
    h.reports.lock().push((dep, r));
    Json(json!({"state": state, "version": v + 1, "changed": true, "deployment_state": "running"}))
}
async fn blob(State(h): H, UrlPath(sha): UrlPath<String>, headers: HeaderMap) -> Response {
    h.hits.lock().push(sha.clone());
    let Some((bytes, how)) = h.blobs.lock().get(&sha).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = bytes.len();
    let start: usize = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split('-').next()?.parse().ok())
        .unwrap_or(0);
    let mut body = bytes[start.min(len)..].to_vec();
    if how == Serve::ExtraBytes {
        body.extend(std::iter::repeat_n(0u8, 4096));
    }
    let range = format!("bytes {start}-{}/{len}", len - 1);
    let b = match how {
        Serve::Stall => {
            let first = body[..body.len().min(100_000)].to_vec();
            Body::from_stream(futures::stream::StreamExt::chain(
                futures::stream::once(async move { Ok::<_, std::io::Error>(first) }),
                futures::stream::pending(),
            ))
        }
        _ => Body::from(body),
    };
    (StatusCode::PARTIAL_CONTENT, [(header::CONTENT_RANGE, range)], b).into_response()
}

fn manifest(bytes: &[u8], version: u64, kernel_id: &str) -> ReleaseManifest {
    let d = chunk_hashes(bytes, CHUNK).unwrap();
    ReleaseManifest {
        channel: "stable".into(),
        version,
        kernel_id: kernel_id.into(),
        sha256: d.sha256,
        length: d.length,
        chunk_size: d.chunk_size,
        chunk_hashes: d.chunk_hashes,
        compatibility: Compatibility {
            embedding_model: "all-MiniLM-L6-v2".into(),
            dim: DIM as u32,
            min_agent_version: "0.1.0".into(),
        },
        golden_queries: vec![],
        created_ms: now_ms(),
        expires_ms: now_ms() + 86_400_000,
    }
}

/// The device API's offer document around a signed offer.
fn offer_doc(
    dep: &str,
    device: &str,
    env: &Envelope,
    m: &Value,
    signer: &SigningKey,
    expires_ms: u64,
    kind: OfferKind,
) -> Value {
    let o = Offer {
        offer_id: format!("o-{dep}"),
        device_id: device.into(),
        deployment_id: dep.into(),
        kind,
        manifest: env.clone(),
        delta: None,
        expires_ms,
        nonce: new_nonce().unwrap(),
    };
    let signed = String::from_utf8(o.sign(signer).unwrap().to_bytes()).unwrap();
    json!({
        "offer_id": o.offer_id, "device_id": device, "deployment_id": dep, "kind": kind, "execution_version": 1,
        "attempt": 1,
        "release": {"id": format!("rel-{dep}"), "channel": m["channel"], "version": m["version"], "kernel_id": m["kernel_id"],
            "sha256": m["sha256"], "length": m["length"], "manifest": "", "created_by": "hostile", "created_ms": 0, "deltas": []},
        "delta": null, "expires_ms": expires_ms, "signed": signed,
    })
}

impl Hostile {
    /// Offers `env` (a signed manifest) to `device` as deployment `dep`; waits for the
    /// agent's final report and returns it.
    async fn offer_and_wait(
        &self,
        dep: &str,
        device: &str,
        env: &Envelope,
        signer: &SigningKey,
        expires_ms: u64,
    ) -> Value {
        let m: Value = serde_json::from_slice(&env.payload).unwrap();
        *self.offer.lock() = Some(offer_doc(dep, device, env, &m, signer, expires_ms, OfferKind::Install));
        wait_for(60, &format!("the agent's final report on {dep}"), || async {
            self.reports
                .lock()
                .iter()
                .find(|(d, r)| {
                    d == dep
                        && !matches!(r["state"].as_str(), Some("downloading" | "downloaded" | "verifying" | "trial"))
                })
                .map(|(_, r)| r.clone())
        })
        .await
    }
}

fn reason(r: &Value) -> String {
    r["reason"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_server_is_refused_with_a_reason_and_the_old_kernel_keeps_serving() {
    // Real kernels, signed by a real server's kernel key.
    let f = Fleet::start(60_000, CHUNK, None).await;
    let (_, kernel_key) = f.keys().await;
    let k1 = f.kernel("hostile", 300, 0, 0).await;
    let k2 = f.kernel("hostile", 300, 5000, 2000).await;
    let bytes = |id: String| {
        let f = &f;
        async move {
            let r = f.http.get(format!("{}/v1/kernels/{id}/download", f.base)).bearer_auth(ADMIN).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap().to_vec()
        }
    };
    let (v1, v2) = (bytes(k1.clone()).await, bytes(k2.clone()).await);
    assert!(v2.len() as u64 > 3 * CHUNK, "the second kernel spans several chunks ({} bytes)", v2.len());

    let k_old = Arc::new(SigningKey::generate().unwrap());
    let h = Arc::new(Hostile {
        key: Mutex::new(k_old.clone()),
        roots: Mutex::new(Vec::new()),
        root_version: Mutex::new(0),
        kernel_key,
        offer: Mutex::new(None),
        blobs: Mutex::new(HashMap::new()),
        reports: Mutex::new(Vec::new()),
        hits: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/v1/fleet/enroll", post(enroll))
        .route("/v1/fleet/device/challenge", post(challenge))
        .route("/v1/fleet/device/token", post(token))
        .route("/v1/fleet/device/heartbeat", post(heartbeat))
        .route("/v1/fleet/device/root", get(root))
        .route("/v1/fleet/device/offer", get(offer))
        .route("/v1/fleet/device/executions/{dep}/status", post(status))
        .route("/v1/fleet/device/blobs/{sha}", get(blob))
        .with_state(h.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let marker = f.dir.path().join("pwned");
    let a = AgentProc::spawn(
        &base,
        &f.dir.path().join("agent"),
        &["--release-key", &k_old.public().to_hex(), "--stall-secs", "2"],
    );
    let dev =
        wait_for(30, "the device key", || async { a.dir.join("device.key").exists().then(|| a.device_id()) }).await;
    let http = reqwest::Client::new();

    // The honest first install.
    let m1 = manifest(&v1, 1, &k1);
    h.blobs.lock().insert(m1.sha256.to_hex(), (v1.clone(), Serve::Honest));
    let env1 = m1.sign(&k_old).unwrap();
    let r = h.offer_and_wait("d1", &dev, &env1, &k_old, now_ms() + 600_000).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(a.served_version(&http, "stable").await, Some(1));

    let m2 = manifest(&v2, 2, &k2);
    let env2 = m2.sign(&k_old).unwrap();
    let expect = |r: &Value, state: &str, code: &str| {
        assert_eq!(r["state"], state, "{r}");
        assert!(reason(r).starts_with(&format!("{code}:")), "expected reason {code}, got {r}");
    };
    let still_v1 =
        || async { assert_eq!(a.served_version(&http, "stable").await, Some(1), "the old kernel keeps serving") };

    // A replay of the older signed release (the same bytes, in a fresh offer).
    let r = h.offer_and_wait("replay", &dev, &env1, &k_old, now_ms() + 600_000).await;
    expect(&r, "rejected", "downgrade");
    still_v1().await;
    // An expired offer.
    let r = h.offer_and_wait("expired", &dev, &env2, &k_old, now_ms() - 1000).await;
    expect(&r, "rejected", "offer_expired");
    // An offer for another device.
    let r = h.offer_and_wait("other", "d0123456789abcdef01234567", &env2, &k_old, now_ms() + 600_000).await;
    expect(&r, "rejected", "wrong_device");
    still_v1().await;
    // A manifest that does not match the bytes (right chunks, wrong file hash).
    let mut lying = m2.clone();
    lying.sha256 = Sha256::of(b"something else");
    h.blobs.lock().insert(lying.sha256.to_hex(), (v2.clone(), Serve::Honest));
    let r = h.offer_and_wait("lying", &dev, &lying.sign(&k_old).unwrap(), &k_old, now_ms() + 600_000).await;
    expect(&r, "failed", "hash_mismatch");
    // Extra bytes past the signed length.
    h.blobs.lock().insert(m2.sha256.to_hex(), (v2.clone(), Serve::ExtraBytes));
    let r = h.offer_and_wait("extra", &dev, &env2, &k_old, now_ms() + 600_000).await;
    expect(&r, "failed", "too_long");
    // A corrupt chunk.
    let mut corrupt = v2.clone();
    corrupt[2 * CHUNK as usize + 17] ^= 0x40;
    h.blobs.lock().insert(m2.sha256.to_hex(), (corrupt, Serve::Honest));
    let r = h.offer_and_wait("corrupt", &dev, &env2, &k_old, now_ms() + 600_000).await;
    expect(&r, "failed", "corrupt_chunk");
    assert!(reason(&r).contains("chunk 2"), "{r}");
    // A stall.
    let _ = fs_err::remove_file(a.dir.join("downloads").join(format!("{}.part", m2.sha256)));
    h.blobs.lock().insert(m2.sha256.to_hex(), (v2.clone(), Serve::Stall));
    let r = h.offer_and_wait("stall", &dev, &env2, &k_old, now_ms() + 600_000).await;
    expect(&r, "failed", "stalled");
    still_v1().await;

    // Bundles that try to bring something to run: a `hooks` field, a script as the file,
    // a path in a name.
    let mut with_hooks: Value = serde_json::from_slice(&env2.payload).unwrap();
    with_hooks["hooks"] = json!({"post_install": format!("touch {}", marker.display())});
    let env = Envelope::sign(DocKind::Release, serde_json::to_vec(&with_hooks).unwrap(), &k_old);
    let r = h.offer_and_wait("hooks", &dev, &env, &k_old, now_ms() + 600_000).await;
    expect(&r, "rejected", "unknown_field");
    let script = format!("#!/bin/sh\ntouch {}\n", marker.display()).into_bytes();
    let ms = manifest(&script, 5, &k2);
    h.blobs.lock().insert(ms.sha256.to_hex(), (script, Serve::Honest));
    let r = h.offer_and_wait("script", &dev, &ms.sign(&k_old).unwrap(), &k_old, now_ms() + 600_000).await;
    expect(&r, "failed", "not_a_kernel");
    assert!(reason(&r).contains("a script"), "{r}");
    let mut traversal: Value = serde_json::from_slice(&env2.payload).unwrap();
    traversal["channel"] = json!("../x");
    let env = Envelope::sign(DocKind::Release, serde_json::to_vec(&traversal).unwrap(), &k_old);
    let r = h.offer_and_wait("traversal", &dev, &env, &k_old, now_ms() + 600_000).await;
    expect(&r, "rejected", "malformed");
    assert!(!marker.exists(), "nothing from a bundle ever runs");
    assert!(!f.dir.path().join("x").exists() && !a.dir.join("..").join("x").exists());
    still_v1().await;

    // Key rotation: the new key is learned from a root document signed by the old one …
    let k_new = Arc::new(SigningKey::generate().unwrap());
    let doc = RootDocument { version: 1, release_key: k_new.public(), created_ms: now_ms() };
    h.roots.lock().push(doc.sign(&k_old).unwrap().to_bytes());
    *h.root_version.lock() = 1;
    *h.key.lock() = k_new.clone();
    h.blobs.lock().insert(m2.sha256.to_hex(), (v2.clone(), Serve::Honest));
    let r = h.offer_and_wait("rotated", &dev, &m2.sign(&k_new).unwrap(), &k_new, now_ms() + 600_000).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(a.served_version(&http, "stable").await, Some(2));
    // … and the old key is refused from then on.
    let v3 = manifest(&v1, 3, &k1);
    let r = h.offer_and_wait("old-key", &dev, &v3.sign(&k_old).unwrap(), &k_old, now_ms() + 600_000).await;
    expect(&r, "rejected", "bad_signature");
    assert_eq!(a.served_version(&http, "stable").await, Some(2));
}
