//! Regression tests of the hardening review (issue 19): admin lockout, slow clients,
//! timed-out work, token lifetimes, echoed input, file modes.

use crate::common::{ADMIN_KEY, Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn key_with(ts: &TestServer, body: Value) -> (String, String) {
    let (s, v) = ts.post(ADMIN_KEY, "/v1/keys", body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (v["key"].as_str().unwrap().to_owned(), v["info"]["id"].as_str().unwrap().to_owned())
}

async fn revoke(ts: &TestServer, by: &str, id: &str) -> (StatusCode, Value) {
    ts.call(Some(by), Method::DELETE, &format!("/v1/keys/{id}"), None).await
}

async fn last_admin_cannot_be_revoked(backend: Backend) {
    let ts = TestServer::start(backend).await;
    // Admins that cannot stand in for the bootstrap key: one scoped to a collection, one
    // that expires.
    let (scoped, scoped_id) = key_with(&ts, json!({"name": "scoped", "role": "admin", "collections": ["docs"]})).await;
    let (brief, brief_id) = key_with(&ts, json!({"name": "brief", "role": "admin", "expires_in_secs": 3600})).await;
    for by in [scoped.as_str(), brief.as_str(), ADMIN_KEY] {
        let (s, v) = revoke(&ts, by, "admin000test").await;
        if by == scoped {
            // A scoped admin cannot touch keys at all.
            assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
            continue;
        }
        assert_eq!((s, v["code"].as_str()), (StatusCode::CONFLICT, Some("last_admin")), "{v}");
    }
    assert_eq!(ts.get(ADMIN_KEY, "/v1/keys").await.0, StatusCode::OK, "the bootstrap key still works");
    // The others may go: the bootstrap key remains.
    assert_eq!(revoke(&ts, ADMIN_KEY, &scoped_id).await.0, StatusCode::NO_CONTENT);
    assert_eq!(revoke(&ts, ADMIN_KEY, &brief_id).await.0, StatusCode::NO_CONTENT);
    // With a second non-expiring admin of all collections, either may be revoked, then
    // that one is the last.
    let (second, second_id) = key_with(&ts, json!({"name": "second", "role": "admin"})).await;
    assert_eq!(revoke(&ts, &second, "admin000test").await.0, StatusCode::NO_CONTENT);
    let (s, v) = revoke(&ts, &second, &second_id).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::CONFLICT, Some("last_admin")), "{v}");
    // Rotation hands the rights to a key that lives as long: allowed, and it works.
    let (s, rot) = ts.post(&second, &format!("/v1/keys/{second_id}/rotate"), json!({"grace_secs": 0})).await;
    assert_eq!(s, StatusCode::OK, "{rot}");
    let third = rot["key"].as_str().unwrap().to_owned();
    assert_eq!(ts.get(&third, "/v1/keys").await.0, StatusCode::OK);
    assert_eq!(ts.get(&second, "/v1/keys").await.0, StatusCode::UNAUTHORIZED);
    ts.shutdown().await;
}

crate::both_backends!(last_admin_cannot_be_revoked_both, last_admin_cannot_be_revoked);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_admin_cannot_be_replaced_by_one_that_expires_sooner() {
    let ts = TestServer::start(Backend::Sqlite).await;
    // Only expiring admins of all collections: the one that lives longest is the last.
    let (late, late_id) = key_with(&ts, json!({"name": "late", "role": "admin", "expires_in_secs": 7200})).await;
    let (_, early_id) = key_with(&ts, json!({"name": "early", "role": "admin", "expires_in_secs": 60})).await;
    assert_eq!(revoke(&ts, &late, "admin000test").await.0, StatusCode::CONFLICT, "non-expiring beats 2 h");
    let pool = sqlx::AnyPool::connect(&ts.db_url).await.unwrap();
    sqlx::query("UPDATE api_keys SET expires_ms = 1 WHERE id = 'admin000test'").execute(&pool).await.unwrap();
    pool.close().await;
    ts.running().state().forget_key("admin000test");
    let (s, v) = revoke(&ts, &late, &late_id).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::CONFLICT, Some("last_admin")), "{v}");
    assert_eq!(revoke(&ts, &late, &early_id).await.0, StatusCode::NO_CONTENT);
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_reinstalls_admin_when_only_revoked_admins_remain() {
    let mut ts = TestServer::start(Backend::Sqlite).await;
    let (_, scoped_id) = key_with(&ts, json!({"name": "scoped", "role": "admin", "collections": ["docs"]})).await;
    let (_, expiring_id) = key_with(&ts, json!({"name": "soon", "role": "admin", "expires_in_secs": 3600})).await;
    let url = ts.db_url.clone();
    ts.shutdown_keep().await;
    // A lockout as an older server allowed it: every admin of all collections revoked
    // or expired; a scoped admin left.
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE api_keys SET revoked_ms = 1 WHERE id = 'admin000test'").execute(&pool).await.unwrap();
    sqlx::query(&format!("UPDATE api_keys SET expires_ms = 1 WHERE id = '{expiring_id}'"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let data = ts.dir.path().join("data");
    let config = |key: &str| kernelize_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.clone(),
        admin_key: Some(key.into()),
        log_format: "text".into(),
        ..kernelize_server::Config::default()
    };
    // The revoked key itself is not brought back.
    let e = kernelize_server::start(config(ADMIN_KEY)).await.unwrap_err();
    assert!(format!("{e:#}").contains("revoked"), "{e:#}");
    // A new configured key is installed, and audited.
    let fresh = "kz_freshadmin00_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    let r = kernelize_server::start(config(fresh)).await.unwrap();
    let client = reqwest::Client::new();
    let get = |key: &str| client.get(format!("http://{}/v1/keys", r.addr())).bearer_auth(key.to_owned()).send();
    assert_eq!(get(fresh).await.unwrap().status(), StatusCode::OK);
    assert_eq!(get(ADMIN_KEY).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let keys: Value = get(fresh).await.unwrap().json().await.unwrap();
    assert!(keys["keys"].as_array().unwrap().iter().any(|k| k["id"] == scoped_id.as_str()));
    let boots = r.state().meta.audit_page(0, 100, None, Some("keys.bootstrap")).await.unwrap();
    assert_eq!(boots.len(), 2, "{boots:?}");
    assert!(boots[1].detail.contains("revoked or expired"), "{:?}", boots[1]);
    r.shutdown().await.unwrap();
}

/// Sends `head` and the first byte of a 500-byte body, then nothing.
async fn slow_body(addr: std::net::SocketAddr, key: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/collections/docs/search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_do_not_starve_other_clients() {
    let ts = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.concurrency = 4;
        c.limits.timeout_ms = 3000;
        c.limits.body_read_timeout_ms = 2000;
    })
    .await;
    ts.create_collection("docs", 4).await;
    let slow_key = ts.key("reader", None).await;
    let other = ts.key("reader", None).await;
    let addr = ts.running().addr();
    // Twice as many trickling clients as slots.
    let mut slow = Vec::new();
    for _ in 0..8 {
        slow.push(slow_body(addr, &slow_key).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let r = ts.client.get(format!("{}/healthz", ts.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (s, v) = ts.post(&other, "/v1/collections/docs/search", json!({"vector": [1.0, 0.0, 0.0, 0.0]})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(ts.get(&other, "/v1/collections").await.0, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(1500), "answered while the slow bodies still trickle");
    // The trickling clients get 408 once the body deadline passes, and are disconnected.
    for mut s in slow {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("body_timeout"), "{text}");
    }
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_cannot_take_every_slot() {
    let ts = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.concurrency = 4;
        c.limits.per_key_concurrency_percent = 50;
        c.limits.timeout_ms = 600_000;
    })
    .await;
    let greedy = ts.key("reader", None).await;
    let other = ts.key("reader", None).await;
    let texts: Vec<String> = (0..30).map(|i| format!("text {i} {}", "about slots and fairness ".repeat(10))).collect();
    let state = ts.running().state().clone();
    let mut busy = Vec::new();
    for _ in 0..2 {
        let (client, url, key, texts) =
            (ts.client.clone(), format!("{}/v1/embed", ts.base), greedy.clone(), texts.clone());
        busy.push(tokio::spawn(async move {
            client.post(url).bearer_auth(key).json(&json!({"texts": texts})).send().await.unwrap().status()
        }));
    }
    let t = Instant::now();
    while state.inflight.available_permits() > 2 {
        assert!(t.elapsed() < Duration::from_secs(60), "the slow requests never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The greedy key holds its share (2 of 4): a third request of it is shed, another
    // key's is served.
    let (s, v) = ts.get(&greedy, "/v1/collections").await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("overloaded")), "{v}");
    assert_eq!(ts.get(&other, "/v1/collections").await.0, StatusCode::OK);
    for b in busy {
        assert_eq!(b.await.unwrap(), StatusCode::OK);
    }
    drop(state);
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_embed_stops_burning_cpu() {
    let ts = TestServer::start_with(Backend::Sqlite, |c| c.limits.timeout_ms = 1000).await;
    // Far more work than any machine does in the time allowed below (minutes on 2 cores).
    let texts: Vec<String> =
        (0..4000).map(|i| format!("text {i} {}", "a long sentence about cancelled work ".repeat(40))).collect();
    let state = ts.running().state().clone();
    let r = ts.client.post(format!("{}/v1/embed", ts.base)).bearer_auth(ADMIN_KEY).json(&json!({"texts": texts}));
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "timeout");
    // The handler (and the embedding it runs on the blocking pool) ends within a few
    // packs' time, not when the whole batch would have been embedded.
    let t = Instant::now();
    while state.handlers.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        // Generous: on a loaded 2-core machine one pack can take seconds; the whole
        // batch would take hours.
        assert!(t.elapsed() < Duration::from_secs(60), "the timed-out embedding is still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(state);
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_lifetime_beyond_max_ttl_is_refused() {
    let ts = TestServer::start_with(Backend::Sqlite, |c| c.limits.max_token_ttl_secs = 600).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let sign = |iat: u64, exp: u64| {
        let claims = kernelize_server::auth::TokenClaims {
            sub: "admin000test".into(),
            iss: kernelize_server::auth::TOKEN_ISSUER.into(),
            iat,
            exp,
            jti: "t".into(),
            role: kernelize_server::auth::Role::Reader,
            collections: None,
            sid: None,
        };
        ts.running().state().secrets.sign_token(&claims).unwrap()
    };
    assert_eq!(ts.get(&sign(now, now + 600), "/v1/collections").await.0, StatusCode::OK);
    assert_eq!(ts.get(&sign(now, now + 601), "/v1/collections").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(ts.get(&sign(now, now + 10 * 365 * 86400), "/v1/collections").await.0, StatusCode::UNAUTHORIZED);
    // An `iat` in the future does not stretch the window.
    assert_eq!(ts.get(&sign(now + 5000, now + 5300), "/v1/collections").await.0, StatusCode::UNAUTHORIZED);
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_messages_do_not_echo_long_inputs() {
    let ts = TestServer::start(Backend::Sqlite).await;
    ts.create_collection("docs", 4).await;
    let long = "q".repeat(5000);
    let (s, v) = ts.get(ADMIN_KEY, &format!("/v1/collections/docs/records/{long}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(m.len() < 200 && m.contains('…'), "{m}");
    let (s, v) = ts.call(Some(ADMIN_KEY), Method::DELETE, &format!("/v1/keys/{long}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["message"].as_str().unwrap().len() < 200, "{v}");
    let q = json!({"vector": [1.0, 0.0, 0.0, 0.0], "filter": format!("{long} = 1 AND")});
    let (s, v) = ts.post(ADMIN_KEY, "/v1/collections/docs/search", q).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().chars().count() <= 401, "{v}");
    let (s, v) = ts.post(ADMIN_KEY, &format!("/v1/collections/{long}/records"), json!({"records": []})).await;
    assert!(s.is_client_error(), "{v}");
    assert!(v["message"].as_str().unwrap().chars().count() <= 401, "{v}");
    ts.shutdown().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directory_and_server_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // An existing, world-readable data directory is narrowed too.
    fs_err::create_dir_all(&data).unwrap();
    fs_err::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ts = TestServer::start_with(Backend::Sqlite, |c| c.data_dir = data.clone()).await;
    ts.create_collection("docs", 4).await;
    let (s, b) = ts.post(ADMIN_KEY, "/v1/backups", json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let id = b["id"].as_str().unwrap().to_owned();
    let t = Instant::now();
    loop {
        let (_, b) = ts.get(ADMIN_KEY, &format!("/v1/backups/{id}")).await;
        if b["state"] == "succeeded" {
            break;
        }
        assert!(b["state"] == "running" && t.elapsed() < Duration::from_secs(30), "{b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mode = |p: &std::path::Path| fs_err::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for d in ["kernels", "backups"] {
        assert_eq!(mode(&data.join(d)), 0o700, "{d}");
    }
    for f in ["control.db", "control.db-wal", "control.db-shm", "server-secret", "token-signing.pk8"] {
        let p = data.join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f}");
        }
    }
    assert_eq!(mode(&data.join("backups").join(format!("{id}.tar"))), 0o600);
    ts.shutdown().await;
}

/// Reads until the server closes the connection; `Err` when it is still open after `wait`.
async fn closed_within(s: &mut tokio::net::TcpStream, wait: Duration) -> Result<Vec<u8>, ()> {
    let mut out = Vec::new();
    match tokio::time::timeout(wait, s.read_to_end(&mut out)).await {
        Ok(_) => Ok(out),
        Err(_) => Err(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_connections_are_closed() {
    let ts = TestServer::start_with(Backend::Sqlite, |c| c.limits.header_read_timeout_ms = 500).await;
    let addr = ts.running().addr();
    // Connected, silent.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Headers at one byte every 200 ms.
    let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let dripper = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n".iter() {
            if trickle.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        trickle
    });
    // A kept-alive connection after one answered request.
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let t = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(10)).await.is_ok(), "idle connection still open");
    assert!(closed_within(&mut kept, Duration::from_secs(10)).await.is_ok(), "kept-alive connection still open");
    let mut trickle = dripper.await.unwrap();
    assert!(closed_within(&mut trickle, Duration::from_secs(10)).await.is_ok(), "trickling connection still open");
    assert!(t.elapsed() < Duration::from_secs(10));
    ts.shutdown().await;
}
