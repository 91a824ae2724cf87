//! Keys, tokens, limits, audit tampering, TLS and shutdown.

use crate::both_backends;
use crate::common::{ADMIN_KEY, Backend, TestServer, vector};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// The secret part of `kz_<12-char id>_<secret>` (the secret itself may contain `_`).
fn secret_of(key: &str) -> String {
    key[3 + 12 + 1..].to_owned()
}

async fn keys_and_tokens(backend: Backend) {
    let ts = TestServer::start(backend).await;
    ts.create_collection("docs", 4).await;
    ts.create_collection("other", 4).await;
    let rec = json!({"records": [{"id": "a", "vector": [1.0, 0.0, 0.0, 0.0]}]});
    assert_eq!(ts.post(ADMIN_KEY, "/v1/collections/docs/records", rec.clone()).await.0, StatusCode::OK);

    // Create: the secret is shown once; listing never shows it.
    let (s, created) =
        ts.post(ADMIN_KEY, "/v1/keys", json!({"name": "svc", "role": "writer", "collections": ["docs"]})).await;
    assert_eq!(s, StatusCode::CREATED);
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["info"]["id"].as_str().unwrap().to_owned();
    let secret = secret_of(&key);
    let (_, list) = ts.get(ADMIN_KEY, "/v1/keys").await;
    assert!(!list.to_string().contains(&secret));
    assert_eq!(ts.get(&key, "/v1/collections/docs").await.0, StatusCode::OK);
    assert_eq!(ts.get(&key, "/v1/collections/other").await.0, StatusCode::FORBIDDEN);
    // A right id with a wrong secret, and garbage, are 401.
    let forged = format!("{}{}", &key[..key.len() - 4], "AAAA");
    assert_eq!(ts.get(&forged, "/v1/collections/docs").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(ts.get("not-a-key", "/v1/collections/docs").await.0, StatusCode::UNAUTHORIZED);
    let r = ts
        .client
        .get(format!("{}/v1/collections", ts.base))
        .header("authorization", "Basic YTpi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");

    // Tokens: narrower rights only; read but not write; die with their key.
    let (s, t) = ts.post(&key, "/v1/tokens", json!({"role": "reader", "ttl_secs": 60})).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let token = t["token"].as_str().unwrap().to_owned();
    assert_eq!(t["collections"], json!(["docs"]), "a token inherits the key's scope");
    let q = json!({"vector": [1.0, 0.0, 0.0, 0.0], "k": 1});
    let (s, r) = ts.post(&token, "/v1/collections/docs/search", q).await;
    assert_eq!((s, r["hits"][0]["id"].as_str()), (StatusCode::OK, Some("a")));
    assert_eq!(ts.post(&token, "/v1/collections/docs/records", rec.clone()).await.0, StatusCode::FORBIDDEN);
    assert_eq!(ts.get(&token, "/v1/collections/other").await.0, StatusCode::FORBIDDEN);
    assert_eq!(ts.post(&token, "/v1/tokens", json!({})).await.0, StatusCode::FORBIDDEN, "tokens cannot mint tokens");
    assert_eq!(ts.post(&key, "/v1/tokens", json!({"role": "admin"})).await.0, StatusCode::FORBIDDEN);
    assert_eq!(ts.post(&key, "/v1/tokens", json!({"collections": ["other"]})).await.0, StatusCode::FORBIDDEN);
    assert_eq!(ts.post(&key, "/v1/tokens", json!({"ttl_secs": 10_000_000})).await.0, StatusCode::BAD_REQUEST);
    let mut tampered = token.clone().into_bytes();
    let mid = token.find('.').unwrap() + 5;
    tampered[mid] = if tampered[mid] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(ts.get(&tampered, "/v1/collections/docs").await.0, StatusCode::UNAUTHORIZED);
    let (_, short) = ts.post(&key, "/v1/tokens", json!({"ttl_secs": 1})).await;
    let short = short["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(ts.get(&short, "/v1/collections/docs").await.0, StatusCode::UNAUTHORIZED, "expired token");

    // Rotation: both work during the grace period; with no grace the old one stops.
    let (s, rot) = ts.post(ADMIN_KEY, &format!("/v1/keys/{id}/rotate"), json!({"grace_secs": 3600})).await;
    assert_eq!(s, StatusCode::OK, "{rot}");
    let key2 = rot["key"].as_str().unwrap().to_owned();
    assert_eq!(rot["info"]["collections"], json!(["docs"]));
    assert_eq!(ts.get(&key, "/v1/collections/docs").await.0, StatusCode::OK);
    assert_eq!(ts.get(&key2, "/v1/collections/docs").await.0, StatusCode::OK);
    let id2 = rot["info"]["id"].as_str().unwrap().to_owned();
    let (s, rot3) = ts.post(ADMIN_KEY, &format!("/v1/keys/{id2}/rotate"), json!({"grace_secs": 0})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ts.get(&key2, "/v1/collections/docs").await.0, StatusCode::UNAUTHORIZED);
    let key3 = rot3["key"].as_str().unwrap().to_owned();
    let id3 = rot3["info"]["id"].as_str().unwrap().to_owned();

    // Revocation: the key and the tokens it minted stop at once.
    let (_, t3) = ts.post(&key3, "/v1/tokens", json!({})).await;
    let t3 = t3["token"].as_str().unwrap().to_owned();
    assert_eq!(ts.get(&t3, "/v1/collections/docs").await.0, StatusCode::OK);
    assert_eq!(
        ts.call(Some(ADMIN_KEY), Method::DELETE, &format!("/v1/keys/{id3}"), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(ts.get(&key3, "/v1/collections/docs").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(ts.get(&t3, "/v1/collections/docs").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        ts.call(Some(ADMIN_KEY), Method::DELETE, &format!("/v1/keys/{id3}"), None).await.0,
        StatusCode::CONFLICT
    );

    // Expiry.
    let (_, e) = ts.post(ADMIN_KEY, "/v1/keys", json!({"name": "brief", "role": "reader", "expires_in_secs": 1})).await;
    let brief = e["key"].as_str().unwrap().to_owned();
    assert_eq!(ts.get(&brief, "/v1/collections").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The lookup cache may hold the row, but expiry is checked on every request.
    assert_eq!(ts.get(&brief, "/v1/collections").await.0, StatusCode::UNAUTHORIZED);

    // The last admin key cannot be revoked.
    let (s, v) = ts.call(Some(ADMIN_KEY), Method::DELETE, "/v1/keys/admin000test", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // The audit log holds the failures and admin actions, and its chain verifies.
    let (_, page) = ts.get(ADMIN_KEY, "/v1/audit?limit=1000").await;
    let actions: Vec<&str> =
        page["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["keys.bootstrap", "keys.create", "keys.rotate", "keys.revoke", "tokens.mint", "records.upsert"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    assert!(actions.iter().any(|a| a.starts_with("auth.failure")));
    assert!(actions.iter().any(|a| a.starts_with("authz.denied")));
    assert_eq!(ts.running().state().verify_audit().await.unwrap().problem, None);
    ts.shutdown().await;
}

both_backends!(keys_and_tokens_both, keys_and_tokens);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_stored_only_as_keyed_hashes() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let key = ts.key("reader", None).await;
    let secret = secret_of(&key);
    let admin_secret = secret_of(ADMIN_KEY);
    ts.running().state().meta.close().await;
    for entry in fs_err::read_dir(ts.dir.path().join("data")).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            let bytes = fs_err::read(&p).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(&secret) && !text.contains(&admin_secret), "{} holds a secret", p.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_admin_key_is_shown_once_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let c = kernelize_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    let r = kernelize_server::start(c.clone()).await.unwrap();
    let key = r.generated_admin_key().unwrap().to_owned();
    let client = reqwest::Client::new();
    let s = client.get(format!("http://{}/v1/keys", r.addr())).bearer_auth(&key).send().await.unwrap().status();
    assert_eq!(s, StatusCode::OK);
    r.shutdown().await.unwrap();
    let r = kernelize_server::start(c).await.unwrap();
    assert!(r.generated_admin_key().is_none(), "a second start prints no key");
    let s = client.get(format!("http://{}/v1/keys", r.addr())).bearer_auth(&key).send().await.unwrap().status();
    assert_eq!(s, StatusCode::OK);
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_batch_limits_and_body_limit() {
    let ts = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.rate_per_sec = 1;
        c.limits.burst = 5;
        c.limits.max_batch = 3;
        c.limits.max_body_bytes = 4096;
    })
    .await;
    let reader = ts.key("reader", None).await; // the admin key's bucket: 1 request
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let r = ts.client.get(format!("{}/v1/collections", ts.base)).bearer_auth(&reader).send().await.unwrap();
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
            assert_eq!(r.json::<Value>().await.unwrap()["code"], "rate_limited");
        }
    }
    assert_eq!(&statuses[..5], &[StatusCode::OK; 5]);
    assert_eq!(statuses[6], StatusCode::TOO_MANY_REQUESTS);
    // Another key has its own bucket.
    let (s, _) = ts.post(ADMIN_KEY, "/v1/collections", json!({"name": "docs", "dim": 4})).await;
    assert_eq!(s, StatusCode::CREATED);
    let recs: Vec<Value> = (0..4).map(|i| json!({"id": format!("r{i}"), "vector": [1.0, 0.0, 0.0, 0.0]})).collect();
    let (s, v) = ts.post(ADMIN_KEY, "/v1/collections/docs/records", json!({"records": recs})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().contains("limit is 3"));
    let big = json!({"records": [{"id": "x", "vector": [1.0, 0.0, 0.0, 0.0], "text": "y".repeat(5000)}]});
    let (s, v) = ts.post(ADMIN_KEY, "/v1/collections/docs/records", big).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")), "{v}");
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_credentials_is_throttled_per_address() {
    let ts = TestServer::start_with(Backend::Sqlite, |c| c.limits.auth_failures_per_sec = 1).await;
    let mut statuses = Vec::new();
    for i in 0..30 {
        let bad = format!("kz_nosuchkey{:03}_{}", i % 1000, "E".repeat(43));
        statuses.push(ts.get(&bad, "/v1/collections").await.0);
    }
    let throttled = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert!(statuses[..10].iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{statuses:?}");
    assert!(throttled >= 15, "{statuses:?}");
    // Throttled failures are not audited one by one; a valid key from the same address works.
    let failures = ts.running().state().meta.audit_page(0, 1000, None, None).await.unwrap();
    let n = failures.iter().filter(|e| e.action.starts_with("auth.failure")).count();
    assert!(n <= 30 - throttled, "{n} audited");
    assert_eq!(ts.get(ADMIN_KEY, "/v1/collections").await.0, StatusCode::OK);
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shedding_and_timeouts_keep_the_audit_whole() {
    let ts = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.concurrency = 1;
        c.limits.timeout_ms = 100;
    })
    .await;
    // Created directly: on a loaded machine even this could outlast a 100 ms timeout.
    let cfg = kernelize_store::CollectionConfig::new(384, kernelize_store::Metric::Cosine);
    ts.running().state().db.create_collection("docs", cfg).unwrap();
    // A slow write: embedding 600 texts takes far longer than 100 ms.
    let texts: Vec<Value> =
        (0..600).map(|i| json!({"id": format!("t{i}"), "text": format!("text number {i} about things")})).collect();
    let slow = {
        let client = ts.client.clone();
        let url = format!("{}/v1/collections/docs/records", ts.base);
        tokio::spawn(async move {
            client.post(url).bearer_auth(ADMIN_KEY).json(&json!({"records": texts})).send().await.unwrap()
        })
    };
    // While it holds the only slot, another authenticated request is shed.
    let state = ts.running().state().clone();
    let t = std::time::Instant::now();
    while state.inflight.available_permits() > 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "the slow request never started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let r = ts.client.get(format!("{}/v1/collections", ts.base)).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "overloaded");
    // Public routes are not counted against the limit.
    let r = ts.client.get(format!("{}/healthz", ts.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The slow write times out for the client, but it completes and is audited.
    let r = slow.await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "timeout");
    let mut found = false;
    for _ in 0..600 {
        let page = state.meta.audit_page(0, 1000, None, Some("records.upsert")).await.unwrap();
        if let Some(e) = page.first() {
            assert_eq!(e.outcome, "ok");
            assert!(e.detail.contains("records=600"), "{e:?}");
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "the timed-out write was never audited");
    let c = state.db.collection("docs").unwrap();
    assert_eq!(c.get("t599").unwrap().map(|r| r.vector.len()), Some(384));
    // Shutdown waits for the data directory to be released: let go of it first.
    drop((c, state));
    ts.shutdown().await;
}

async fn audit_verify_detects_edits_and_removals(backend: Backend) {
    let mut ts = TestServer::start(backend).await;
    for i in 0..5 {
        let (s, _) = ts.post(ADMIN_KEY, "/v1/collections", json!({"name": format!("c{i}"), "dim": 4})).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let url = ts.db_url.clone();
    ts.shutdown_keep().await;
    let data = ts.dir.path().join("data");
    let meta = kernelize_server::meta::MetaStore::connect(&url).await.unwrap();
    // audit.keyed, keys.state and keys.bootstrap of the admin key, five creations.
    let v = meta.verify_audit(&data).await.unwrap();
    assert_eq!((v.problem.as_deref(), v.entries, v.keyed_from), (None, 8, Some(1)));
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let edit = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query(sql).execute(&pool).await.unwrap() }
    };
    edit("UPDATE audit SET outcome = 'denied' WHERE seq = 5").await;
    assert!(meta.verify_audit(&data).await.unwrap().problem.unwrap().contains("entry 5"));
    edit("UPDATE audit SET outcome = 'ok' WHERE seq = 5").await;
    assert_eq!(meta.verify_audit(&data).await.unwrap().problem, None);
    edit("DELETE FROM audit WHERE seq = 8").await;
    assert!(meta.verify_audit(&data).await.unwrap().problem.unwrap().contains("removed from the end"));
    edit("DELETE FROM audit WHERE seq = 4").await;
    assert!(meta.verify_audit(&data).await.unwrap().problem.unwrap().contains("entry 4 is missing"));
    pool.close().await;
    meta.close().await;
    ts.shutdown().await;
}

both_backends!(audit_verify_both, audit_verify_detects_edits_and_removals);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_only_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cp, kp) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    fs_err::write(&cp, cert.cert.pem()).unwrap();
    fs_err::write(&kp, cert.key_pair.serialize_pem()).unwrap();
    let ts = TestServer::start_with(Backend::Sqlite, |c| {
        c.tls_cert = Some(cp.clone());
        c.tls_key = Some(kp.clone());
    })
    .await;
    let port = ts.running().addr().port();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", ts.running().addr())
        .build()
        .unwrap();
    let r = client.get(format!("https://localhost:{port}/v1/collections")).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["strict-transport-security"].to_str().unwrap().contains("max-age"));
    // Plain HTTP to the TLS port gets no API answer.
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/healthz")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_and_keeps_every_acknowledged_write() {
    let ts = TestServer::start_with(Backend::Sqlite, |c| c.durability = "buffered".into()).await;
    ts.create_collection("docs", 8).await;
    let mut acked = Vec::new();
    for b in 0..20u64 {
        let recs: Vec<Value> =
            (0..50).map(|i| json!({"id": format!("b{b}-{i}"), "vector": vector(b * 50 + i, 8)})).collect();
        let (s, _) = ts.post(ADMIN_KEY, "/v1/collections/docs/records", json!({"records": recs})).await;
        assert_eq!(s, StatusCode::OK);
        acked.push(format!("b{b}-49"));
    }
    // A request in flight when shutdown starts still gets its answer.
    let slow = {
        let client = ts.client.clone();
        let url = format!("{}/v1/embed", ts.base);
        let texts: Vec<String> =
            (0..1000).map(|i| format!("text number {i} about the graceful shutdown of servers")).collect();
        tokio::spawn(async move { client.post(url).bearer_auth(ADMIN_KEY).json(&json!({"texts": texts})).send().await })
    };
    let state = ts.running().state().clone();
    let t = std::time::Instant::now();
    while state.inflight.available_permits() == state.config.limits.concurrency {
        assert!(t.elapsed() < Duration::from_secs(30), "the slow request never started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(state);
    let data = ts.dir.path().join("data");
    let mut ts = ts;
    let running = ts.running.take().unwrap();
    running.shutdown().await.unwrap();
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let db = kernelize_store::Database::open(&data, kernelize_store::Options::default()).unwrap();
    let c = db.collection("docs").unwrap();
    assert_eq!(c.snapshot().count().unwrap(), 1000);
    for id in acked {
        assert!(c.get(&id).unwrap().is_some(), "{id} lost");
    }
}

/// Every audit entry (as an admin reads them).
async fn audit_entries(ts: &TestServer) -> Vec<Value> {
    let (s, page) = ts.get(ADMIN_KEY, "/v1/audit?limit=1000").await;
    assert_eq!(s, StatusCode::OK, "{page}");
    page["entries"].as_array().unwrap().clone()
}

async fn audit_fields_are_bounded_for_huge_token_header(backend: Backend) {
    use base64::Engine as _;
    let ts = TestServer::start(backend).await;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    // A token whose header names a 45 KB algorithm: the JWT library's error echoes it.
    let header = b64(&format!("{{\"alg\":\"{}\",\"typ\":\"JWT\"}}", "x".repeat(45_000)));
    let token = format!("{header}.{}.{}", b64("{}"), "A".repeat(100));
    let long_path = format!("/v1/collections/{}", "p".repeat(40_000));
    for path in ["/v1/collections", long_path.as_str()] {
        let r = ts
            .client
            .get(format!("{}{path}", ts.base))
            .bearer_auth(&token)
            .header("x-request-id", "y".repeat(5000))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let entries = audit_entries(&ts).await;
    let failures: Vec<&Value> =
        entries.iter().filter(|e| e["action"].as_str().unwrap().starts_with("auth.failure")).collect();
    assert_eq!(failures.len(), 2, "{entries:?}");
    for e in &entries {
        for (field, max) in [("request_id", 256), ("actor", 256), ("action", 256), ("target", 256), ("detail", 1024)] {
            let v = e[field].as_str().unwrap();
            assert!(v.len() <= max + 32, "{field} of entry {} holds {} bytes", e["seq"], v.len());
        }
    }
    assert!(failures.iter().any(|e| e["detail"].as_str().unwrap().contains("…[cut ")), "{failures:?}");
    assert!(failures.iter().any(|e| e["target"].as_str().unwrap().contains("…[cut ")), "{failures:?}");
    assert_eq!(ts.running().state().verify_audit().await.unwrap().problem, None);
    ts.shutdown().await;
}

both_backends!(audit_fields_are_bounded_for_huge_token_header_both, audit_fields_are_bounded_for_huge_token_header);

async fn keys_create_audit_records_scope_and_expiry(backend: Backend) {
    let ts = TestServer::start(backend).await;
    ts.create_collection("docs", 4).await;
    let body = json!({"name": "scoped", "role": "writer", "collections": ["docs", "b"], "expires_in_secs": 3600});
    let (s, created) = ts.post(ADMIN_KEY, "/v1/keys", body).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["info"]["id"].as_str().unwrap().to_owned();
    let expires = created["info"]["expires_at"].as_str().unwrap().to_owned();
    let key = created["key"].as_str().unwrap().to_owned();
    let (s, t) = ts.post(&key, "/v1/tokens", json!({"role": "reader", "collections": ["docs"], "ttl_secs": 60})).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");

    let entries = audit_entries(&ts).await;
    let find = |action: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["detail"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let create = find("keys.create");
    assert!(
        create.iter().any(|d| d.contains(&id) && d.contains(r#"collections ["b","docs"]"#) && d.contains(&expires)),
        "{create:?}"
    );
    let mint = find("tokens.mint");
    assert!(
        mint.iter()
            .any(|d| d.contains("role reader") && d.contains(r#"collections ["docs"]"#) && d.contains("ttl_secs 60")),
        "{mint:?}"
    );
    // The key's stored state is in the chain too, with its digest first.
    let state = entries.iter().find(|e| e["action"] == "keys.state" && e["target"] == id.as_str()).unwrap();
    let detail = state["detail"].as_str().unwrap();
    assert!(detail.starts_with("state=") && detail.contains(&expires) && detail.contains("role=writer"), "{detail}");
    ts.shutdown().await;
}

both_backends!(keys_create_audit_records_scope_and_expiry_both, keys_create_audit_records_scope_and_expiry);

async fn client_request_id_does_not_replace_server_id_in_audit(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let r = ts
        .client
        .post(format!("{}/v1/collections", ts.base))
        .bearer_auth(ADMIN_KEY)
        .header("x-request-id", "trace-123")
        .json(&json!({"name": "traced", "dim": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let server_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(server_id, "trace-123");
    // A client that reuses another request's id cannot make its entries pass for that request's.
    let entries = audit_entries(&ts).await;
    let e = entries.iter().find(|e| e["action"] == "collections.create").unwrap();
    assert_eq!(e["request_id"], server_id.as_str());
    assert!(e["detail"].as_str().unwrap().contains("client_request_id=trace-123"), "{e}");
    assert!(entries.iter().all(|e| e["request_id"] != "trace-123"));
    ts.shutdown().await;
}

both_backends!(
    client_request_id_does_not_replace_server_id_in_audit_both,
    client_request_id_does_not_replace_server_id_in_audit
);

/// A server with a few audited actions, stopped (its last checkpoint written), and a
/// pool on its database.
async fn stopped_server_with_log(backend: Backend) -> (TestServer, sqlx::AnyPool) {
    let mut ts = TestServer::start(backend).await;
    for i in 0..4 {
        let (s, _) = ts.post(ADMIN_KEY, "/v1/collections", json!({"name": format!("c{i}"), "dim": 4})).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let _ = ts.key("reader", None).await;
    ts.shutdown_keep().await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&ts.db_url).await.unwrap();
    (ts, pool)
}

async fn verify(ts: &TestServer) -> kernelize_server::audit::AuditVerdict {
    let meta = kernelize_server::meta::MetaStore::connect(&ts.db_url).await.unwrap();
    let v = meta.verify_audit(&ts.dir.path().join("data")).await.unwrap();
    meta.close().await;
    v
}

async fn entries_in(pool: &sqlx::AnyPool) -> Vec<kernelize_server::audit::AuditEntry> {
    use sqlx::Row as _;
    sqlx::query("SELECT seq, ts_ms, request_id, actor, action, target, outcome, detail, version, prev_hash, hash FROM audit ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| kernelize_server::audit::AuditEntry {
            seq: r.get("seq"),
            ts_ms: r.get("ts_ms"),
            request_id: r.get("request_id"),
            actor: r.get("actor"),
            action: r.get("action"),
            target: r.get("target"),
            outcome: r.get("outcome"),
            detail: r.get("detail"),
            version: r.get("version"),
            prev_hash: r.get("prev_hash"),
            hash: r.get("hash"),
        })
        .collect()
}

async fn write_entry(pool: &sqlx::AnyPool, e: &kernelize_server::audit::AuditEntry) {
    sqlx::query("DELETE FROM audit WHERE seq = $1").bind(e.seq).execute(pool).await.unwrap();
    sqlx::query(
        "INSERT INTO audit (seq, ts_ms, request_id, actor, action, target, outcome, detail, version, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(e.seq)
    .bind(e.ts_ms)
    .bind(&e.request_id)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.target)
    .bind(&e.outcome)
    .bind(&e.detail)
    .bind(e.version)
    .bind(&e.prev_hash)
    .bind(&e.hash)
    .execute(pool)
    .await
    .unwrap();
}

async fn set_head(pool: &sqlx::AnyPool, seq: i64, hash: &str) {
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(hash)
        .execute(pool)
        .await
        .unwrap();
}

async fn audit_verify_detects_appended_row_with_updated_head(backend: Backend) {
    use kernelize_server::audit::{VERSION_KEYED, VERSION_UNKEYED, chain_hash};
    let (ts, pool) = stopped_server_with_log(backend).await;
    assert_eq!(verify(&ts).await.problem, None);
    let log = entries_in(&pool).await;
    let last = log.last().unwrap();
    // A well-formed row after the head, hashed as the old unkeyed chain did (the only
    // hash an attacker without the audit key can compute), claiming either version.
    for version in [VERSION_KEYED, VERSION_UNKEYED] {
        let mut forged = last.clone();
        forged.seq = last.seq + 1;
        forged.action = "keys.revoke".into();
        forged.detail = "status=204".into();
        forged.prev_hash = last.hash.clone();
        forged.version = version;
        forged.hash = chain_hash(&forged);
        write_entry(&pool, &forged).await;
        set_head(&pool, forged.seq, &forged.hash).await;
        let problem = verify(&ts).await.problem.unwrap_or_default();
        assert!(problem.contains(&format!("entry {}", forged.seq)), "version {version}: {problem:?}");
    }
    pool.close().await;
    ts.shutdown().await;
}

both_backends!(
    audit_verify_detects_appended_row_with_updated_head_both,
    audit_verify_detects_appended_row_with_updated_head
);

async fn audit_verify_detects_truncated_tail_with_rewritten_head(backend: Backend) {
    let (ts, pool) = stopped_server_with_log(backend).await;
    assert_eq!(verify(&ts).await.problem, None);
    let log = entries_in(&pool).await;
    let keep = &log[log.len() - 4];
    sqlx::query("DELETE FROM audit WHERE seq > $1").bind(keep.seq).execute(&pool).await.unwrap();
    set_head(&pool, keep.seq, &keep.hash).await;
    let problem = verify(&ts).await.problem.unwrap_or_default();
    assert!(problem.contains("checkpoint") && problem.contains("removed from the end"), "{problem:?}");
    pool.close().await;
    ts.shutdown().await;
}

both_backends!(
    audit_verify_detects_truncated_tail_with_rewritten_head_both,
    audit_verify_detects_truncated_tail_with_rewritten_head
);

async fn audit_verify_detects_full_rehash_after_edit(backend: Backend) {
    use kernelize_server::audit::{GENESIS, VERSION_UNKEYED, chain_hash};
    let (ts, pool) = stopped_server_with_log(backend).await;
    assert_eq!(verify(&ts).await.problem, None);
    let original = entries_in(&pool).await;
    // Edit entry 4 and recompute every hash after it (and the head), keeping versions;
    // then also as an all-unkeyed log rehashed from the start.
    for downgrade in [false, true] {
        let mut log = original.clone();
        let edit = log.iter().position(|e| e.action == "collections.create").unwrap();
        log[edit].outcome = "denied".into();
        let mut prev = GENESIS.to_owned();
        for e in &mut log {
            if downgrade {
                e.version = VERSION_UNKEYED;
            }
            e.prev_hash = prev.clone();
            e.hash = chain_hash(e);
            prev = e.hash.clone();
        }
        for e in &log {
            write_entry(&pool, e).await;
        }
        let last = log.last().unwrap();
        set_head(&pool, last.seq, &last.hash).await;
        let problem = verify(&ts).await.problem;
        assert!(problem.is_some(), "downgrade {downgrade}: a rehashed log passed");
    }
    pool.close().await;
    ts.shutdown().await;
}

both_backends!(audit_verify_detects_full_rehash_after_edit_both, audit_verify_detects_full_rehash_after_edit);

async fn audit_verify_detects_unrevoked_key(backend: Backend) {
    let mut ts = TestServer::start(backend).await;
    let (_, created) = ts.post(ADMIN_KEY, "/v1/keys", json!({"name": "gone", "role": "admin"})).await;
    let id = created["info"]["id"].as_str().unwrap().to_owned();
    let (s, _) = ts.call(Some(ADMIN_KEY), Method::DELETE, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    ts.shutdown_keep().await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&ts.db_url).await.unwrap();
    assert_eq!(verify(&ts).await.problem, None);
    use sqlx::Row as _;
    let revoked: i64 = sqlx::query("SELECT revoked_ms FROM api_keys WHERE id = $1")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("revoked_ms");
    // Un-revoke it behind the server's back.
    sqlx::query("UPDATE api_keys SET revoked_ms = NULL WHERE id = $1").bind(&id).execute(&pool).await.unwrap();
    let problem = verify(&ts).await.problem.unwrap_or_default();
    assert!(problem.contains(&id) && problem.contains("un-revoked"), "{problem:?}");
    sqlx::query("UPDATE api_keys SET revoked_ms = $1 WHERE id = $2")
        .bind(revoked)
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(verify(&ts).await.problem, None);
    // A key row that the server never wrote (a copy of the admin's under a new id).
    sqlx::query(
        "INSERT INTO api_keys (id, name, hash, role, collections, created_ms, expires_ms, revoked_ms, rotated_to) \
         SELECT 'planted00000', name, hash, role, collections, created_ms, expires_ms, revoked_ms, rotated_to \
         FROM api_keys WHERE id = 'admin000test'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let problem = verify(&ts).await.problem.unwrap_or_default();
    assert!(problem.contains("planted00000") && problem.contains("never recorded"), "{problem:?}");
    pool.close().await;
    ts.shutdown().await;
}

both_backends!(audit_verify_detects_unrevoked_key_both, audit_verify_detects_unrevoked_key);

async fn audit_log_written_before_keying_stays_verifiable(backend: Backend) {
    use kernelize_server::audit::{AuditEntry, GENESIS, VERSION_UNKEYED, chain_hash};
    // A control plane as an older server left it: unkeyed entries, a key, no audit-key file.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (url, schema) = match backend {
        Backend::Sqlite => {
            fs_err::create_dir_all(&data).unwrap();
            (format!("sqlite://{}?mode=rwc", data.join("control.db").display()), None)
        }
        Backend::Postgres => {
            let (u, s) = crate::common::pg_schema().await;
            (u, Some(s))
        }
    };
    let meta = kernelize_server::meta::MetaStore::connect(&url).await.unwrap();
    meta.close().await;
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO api_keys (id, name, hash, role, collections, created_ms, expires_ms, revoked_ms, rotated_to) \
         VALUES ('oldreader000', 'old', 'aa', 'reader', NULL, 1, NULL, NULL, NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut prev = GENESIS.to_owned();
    for seq in 1..=3 {
        let mut e = AuditEntry {
            seq,
            ts_ms: seq,
            request_id: "-".into(),
            actor: "system".into(),
            action: "collections.create".into(),
            target: format!("/v1/collections/c{seq}"),
            outcome: "ok".into(),
            detail: "status=201".into(),
            version: VERSION_UNKEYED,
            prev_hash: prev.clone(),
            hash: String::new(),
        };
        e.hash = chain_hash(&e);
        prev = e.hash.clone();
        write_entry(&pool, &e).await;
    }
    set_head(&pool, 3, &prev).await;
    pool.close().await;

    // (The server's own backend is the URL's; `Sqlite` here only skips creating a schema.)
    let ts = TestServer::start_with(Backend::Sqlite, |c| {
        c.data_dir = data.clone();
        c.database_url = Some(url.clone());
    })
    .await;
    let v = ts.running().state().verify_audit().await.unwrap();
    assert_eq!((v.problem.as_deref(), v.keyed_from, v.keys_checked), (None, Some(4), 2), "{v:?}");
    let (_, page) = ts.get(ADMIN_KEY, "/v1/audit?limit=10").await;
    let marker = &page["entries"][3];
    assert_eq!(marker["action"], "audit.keyed");
    assert!(marker["detail"].as_str().unwrap().contains("entries 1..3 are unkeyed"), "{marker}");
    assert_eq!(page["entries"][4]["action"], "keys.state");
    assert_eq!(page["entries"][4]["target"], "oldreader000");
    let mut ts = ts;
    ts.schema = schema;
    ts.shutdown().await;
}

both_backends!(audit_log_written_before_keying_stays_verifiable_both, audit_log_written_before_keying_stays_verifiable);
