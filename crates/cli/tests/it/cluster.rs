//! Three `kernelize serve --cluster` processes on 127.0.0.1 against the real NATS
//! JetStream and PostgreSQL and a moto S3 server: 100,000 records ingested through two of
//! them while the third is killed with SIGKILL and later restarted; every acknowledged
//! write is then found from every node, exact search gives the ids brute force gives, and
//! one key's rate limit holds across the three nodes (Redis).

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "kz_clustertest0_CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC";
const DIM: usize = 16;
const N: usize = 100_000;
const BATCH: usize = 1000;
const RATE: u32 = 40;

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.into())
}

/// `(status, JSON body)` of one request (HTTP/1.1, `Connection: close`).
fn http(addr: &str, method: &str, path: &str, body: Option<&Value>, extra: &str) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let json = out.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    (status, json)
}

/// Retries while the answer is 429 or 503 (rate limited; a shard moving), up to 60 s.
fn http_ok(addr: &str, method: &str, path: &str, body: Option<&Value>, extra: &str) -> Value {
    let t = Instant::now();
    loop {
        let (s, v) = http(addr, method, path, body, extra);
        match s {
            200..=299 => return v,
            429 | 503 if t.elapsed() < Duration::from_secs(60) => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!("{method} {path} on {addr}: {s} {v}"),
        }
    }
}

struct Node {
    child: Child,
    addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path, config: &Path, cluster: &Path, db: &str) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kernelize"))
        .arg("--data-dir")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0", "--print-addr", "--admin-key", KEY, "--database-url", db])
        .arg("--config")
        .arg(config)
        .arg("--cluster")
        .arg(cluster)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("no address: {line:?}")).to_owned();
    Node { child, addr }
}

fn record(i: usize) -> Value {
    // Deterministic pseudo-random vectors (xorshift), so the test can search them by brute force.
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    json!({"id": format!("r{i}"), "vector": v, "metadata": {"g": i % 7}})
}

fn vector(v: &Value) -> Vec<f32> {
    v["vector"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut d, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        d += x * y;
        na += x * x;
        nb += y * y;
    }
    d / (na.sqrt() * nb.sqrt())
}

fn count(addr: &str) -> u64 {
    http_ok(addr, "GET", "/v1/collections/docs", None, "")["records"].as_u64().unwrap()
}

#[test]
fn three_node_processes_lose_no_acknowledged_write_and_share_one_rate_limit() {
    let root = tempfile::tempdir().unwrap();
    let pg = env_or("KERNELIZE_TEST_PG", "postgres://postgres@127.0.0.1:5432/test");
    let name = format!("c{}", std::process::id());
    let db_url = format!("{}/kz_{name}", pg.rsplit_once('/').unwrap().0);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&pg).await.unwrap();
        sqlx::query(&format!("DROP DATABASE IF EXISTS kz_{name}")).execute(&mut c).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE kz_{name}")).execute(&mut c).await.unwrap();
    });
    let moto = kernelize_blobs::testing::server();
    let bucket = moto.bucket();
    let server_cfg = root.path().join("server.toml");
    fs_err::write(&server_cfg, format!("[limits]\nrate_per_sec = {RATE}\nburst = {RATE}\n")).unwrap();
    let cluster_cfg = |node: &str| -> PathBuf {
        let p = root.path().join(format!("{node}.toml"));
        let text = format!(
            "name = \"{name}\"\nnode_id = \"{node}\"\nnats_url = \"{nats}\"\ndatabase_url = \"{db_url}\"\n\
             redis_url = \"{redis}\"\ncache_dir = \"{cache}\"\nshards = 8\n\
             [blobs]\nkind = \"s3\"\nbucket = \"{bucket}\"\nendpoint = \"{endpoint}\"\naccess_key_id = \"test\"\n\
             secret_access_key = \"test\"\nallow_http = true\n\
             [timing]\nheartbeat_ms = 250\nlease_ms = 1500\nrequest_ms = 20000\n",
            nats = env_or("KERNELIZE_TEST_NATS_URL", "nats://127.0.0.1:4222"),
            redis = env_or("KERNELIZE_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            cache = root.path().join(format!("cache-{node}")).display(),
            endpoint = moto.endpoint(),
        );
        fs_err::write(&p, text).unwrap();
        p
    };
    let data = |n: &str| root.path().join(format!("data-{n}"));
    let n1 = start(&data("n1"), &server_cfg, &cluster_cfg("n1"), &db_url);
    // Every node verifies the same keys and extends the same audit chain: the same secrets.
    for n in ["n2", "n3"] {
        fs_err::create_dir_all(data(n)).unwrap();
        for f in ["server-secret", "token-signing.pk8", "audit-key", "audit-checkpoint.pk8"] {
            fs_err::copy(data("n1").join(f), data(n).join(f)).unwrap();
        }
    }
    let n2 = start(&data("n2"), &server_cfg, &cluster_cfg("n2"), &db_url);
    let mut n3 = start(&data("n3"), &server_cfg, &cluster_cfg("n3"), &db_url);
    http_ok(&n1.addr, "POST", "/v1/collections", Some(&json!({"name": "docs", "dim": DIM, "metric": "cosine"})), "");

    // Ingest through n1 and n2; n3 is killed a third of the way in.
    let batches: Vec<Value> = (0..N / BATCH)
        .map(|b| json!({"records": (b * BATCH..(b + 1) * BATCH).map(record).collect::<Vec<_>>()}))
        .collect();
    let mut during = Vec::new();
    let mut token = 0;
    for (b, body) in batches.iter().enumerate() {
        if b == N / BATCH / 3 {
            let _ = n3.child.kill(); // SIGKILL
            let _ = n3.child.wait();
        }
        let addr = if b % 2 == 0 { &n1.addr } else { &n2.addr };
        let key = format!("Idempotency-Key: batch-{b}\r\n");
        let ack = http_ok(addr, "POST", "/v1/collections/docs/records", Some(body), &key);
        assert_eq!(ack["written"], BATCH as u64);
        token = token.max(ack["seq"].as_u64().unwrap());
        if b > N / BATCH / 3 && b % 5 == 0 {
            // Queries keep answering while the dead node's leases move.
            let q = json!({"vector": vector(&body["records"][0]), "k": 5});
            during.push(http(&n1.addr, "POST", "/v1/collections/docs/search", Some(&q), "").0);
        }
    }
    // A retried batch (same idempotency key) is stored once.
    http_ok(&n2.addr, "POST", "/v1/collections/docs/records", Some(&batches[1]), "Idempotency-Key: batch-1\r\n");
    assert!(during.iter().all(|s| *s == 200 || *s == 429), "answers during the failover: {during:?}");

    // Every acknowledged write from every live node; the dead node's leases moved.
    for n in [&n1, &n2] {
        let t = Instant::now();
        while count(&n.addr) != N as u64 {
            assert!(t.elapsed() < Duration::from_secs(60), "{}: {} records", n.addr, count(&n.addr));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let t = Instant::now();
    loop {
        let info = http_ok(&n1.addr, "GET", "/v1/cluster", None, "");
        let shards = info["shards"].as_array().unwrap();
        if shards.len() == 8 && shards.iter().all(|s| s["owner"].as_str().is_some_and(|o| o != "n3")) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "leases did not move off n3: {info}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The killed node comes back without manual steps.
    n3 = start(&data("n3"), &server_cfg, &cluster_cfg("n3"), &db_url);
    let all: Vec<Vec<f32>> = (0..N).map(|i| vector(&record(i))).collect();
    for q in [3usize, 50_001, 99_999] {
        let qv = vector(&record(q + 7));
        let mut truth: Vec<(f32, usize)> = all.iter().enumerate().map(|(i, v)| (cosine(&qv, v), i)).collect();
        truth.sort_by(|a, b| b.0.total_cmp(&a.0));
        let want: Vec<String> = truth[..10].iter().map(|(_, i)| format!("r{i}")).collect();
        for n in [&n1, &n2, &n3] {
            let body = json!({"vector": qv, "k": 10, "exact": true, "consistency": "session", "write_token": token});
            let got = http_ok(&n.addr, "POST", "/v1/collections/docs/search", Some(&body), "");
            let ids: Vec<&str> = got["hits"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap()).collect();
            assert_eq!(ids, want, "exact search on {}", n.addr);
        }
    }
    // Ready: joined, connected, every assigned replica built (the restarted node too).
    for n in [&n1, &n2, &n3] {
        let t = Instant::now();
        loop {
            let (status, body) = http(&n.addr, "GET", "/readyz", None, "");
            if status == 200 {
                assert!(body["checks"]["cluster"].as_str().is_some_and(|c| c.starts_with("ok")), "{body}");
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "{} not ready: {body}", n.addr);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let r = http_ok(&n3.addr, "GET", "/v1/collections/docs/records/r77777?consistency=strong", None, "");
    assert_eq!(vector(&r), vector(&record(77_777)));

    // Change data capture, from the node that was killed: every acknowledged write once
    // (the retried batch was not stored twice), in position order.
    let (mut after, mut seen) = (0u64, std::collections::HashSet::new());
    loop {
        let path = format!("/v1/collections/docs/changes?after={after}&limit=10000&wait_ms=2000");
        let page = http_ok(&n3.addr, "GET", &path, None, "");
        let changes = page["changes"].as_array().unwrap();
        if changes.is_empty() {
            assert_eq!(page["next"], after);
            break;
        }
        let mut last = after;
        for c in changes {
            let p = c["position"].as_u64().unwrap();
            assert!(p > after && p >= last, "position {p} after {last}");
            last = p;
            assert_eq!((c["op"].as_str(), c["record"]["vector"].is_null()), (Some("upsert"), true), "{c}");
            assert!(seen.insert(c["id"].as_str().unwrap().to_owned()), "{c} twice");
        }
        after = page["next"].as_u64().unwrap();
        assert_eq!(after, last);
    }
    assert_eq!(seen.len(), N, "changes seen");

    // One key, three nodes, one bucket: about RATE a second in all, not 3 × RATE.
    std::thread::sleep(Duration::from_secs(2)); // the bucket refills
    let window = Duration::from_secs(3);
    let addrs = [n1.addr.clone(), n2.addr.clone(), n3.addr.clone()];
    let counts: Vec<(u32, u32)> = std::thread::scope(|s| {
        let hs: Vec<_> = addrs
            .iter()
            .map(|a| {
                s.spawn(move || {
                    let (mut ok, mut limited) = (0, 0);
                    let t = Instant::now();
                    while t.elapsed() < window {
                        match http(a, "GET", "/v1/collections", None, "").0 {
                            200 => ok += 1,
                            429 => limited += 1,
                            s => panic!("{s}"),
                        }
                    }
                    (ok, limited)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: u32 = counts.iter().map(|c| c.0).sum();
    let limited: u32 = counts.iter().map(|c| c.1).sum();
    let allowed = RATE * window.as_secs() as u32 + RATE; // sustained rate + one burst
    assert!(limited > 0, "no request was limited: {counts:?}");
    assert!(ok <= allowed + RATE / 2, "{ok} requests passed in {window:?}: the limit is per node ({counts:?})");
    assert!(ok >= allowed / 2, "only {ok} requests passed ({counts:?})");
    eprintln!("rate limit across 3 nodes: {ok} passed, {limited} limited, allowed {allowed} ({counts:?})");

    for n in [n1, n2, n3] {
        let _ = Command::new("kill").arg("-TERM").arg(n.child.id().to_string()).status();
        let mut n = n;
        let _ = n.child.wait();
    }
    let destroyed = Command::new(env!("CARGO_BIN_EXE_kernelize"))
        .args(["cluster", "destroy", "--yes", "--cluster"])
        .arg(cluster_cfg("n1"))
        .status()
        .unwrap();
    assert!(destroyed.success());
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&pg).await.unwrap();
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS kz_{name} WITH (FORCE)")).execute(&mut c).await;
    });
}
