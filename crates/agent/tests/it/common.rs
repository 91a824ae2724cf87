//! A fleet server in process (real HTTP on 127.0.0.1, SQLite) and agents as real
//! `kernelize-agent` processes, each with its own data directory and local API port.

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN: &str = "kz_admagenttst0_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
pub const DIM: usize = 16;

/// A deterministic unit vector.
pub fn vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
    v
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `f` until it returns `Some` or `secs` pass.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server and an admin client.
pub struct Fleet {
    pub running: Option<kernelize_server::Running>,
    pub base: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    /// A second admin: approves what [`ADMIN`] creates.
    pub admin2: String,
}

impl Fleet {
    /// A server with `heartbeat_ms`, manifests chunked by `chunk_size`, waking devices
    /// over `mqtt_url` when given.
    pub async fn start(heartbeat_ms: u64, chunk_size: u64, mqtt_url: Option<String>) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let mut config = kernelize_server::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("server"),
            admin_key: Some(ADMIN.into()),
            log_format: "text".into(),
            ..kernelize_server::Config::default()
        };
        config.fleet.heartbeat_ms = heartbeat_ms;
        config.fleet.chunk_size = chunk_size;
        config.fleet.delta_level = 3;
        config.fleet.mqtt_url = mqtt_url;
        let running = kernelize_server::start(config).await.unwrap();
        let base = format!("http://{}", running.addr());
        let http = reqwest::Client::new();
        let mut f = Fleet { running: Some(running), base, http, dir, admin2: String::new() };
        let (s, k) = f.post(ADMIN, "/v1/keys", json!({"name": "approver", "role": "admin"})).await;
        assert!(s < 300, "{k}");
        f.admin2 = k["key"].as_str().unwrap().to_owned();
        f
    }

    /// Stops the server (agents keep running).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
    }

    pub async fn post(&self, key: &str, path: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(format!("{}{path}", self.base)).bearer_auth(key).json(&body).send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}{path}", self.base)).bearer_auth(key).send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// An enrollment token for `uses` devices, labelling them `test=<label>`.
    pub async fn enrollment_token(&self, uses: u64, label: &str) -> String {
        let (s, t) = self
            .post(
                ADMIN,
                "/v1/fleet/enrollment-tokens",
                json!({"ttl_seconds": 3600, "uses": uses, "labels": {"test": label}}),
            )
            .await;
        assert_eq!(s, 201, "{t}");
        t["token"].as_str().unwrap().to_owned()
    }

    /// The release key and kernel key devices are provisioned with.
    pub async fn keys(&self) -> (String, String) {
        let (_, k) = self.get(ADMIN, "/v1/fleet/keys").await;
        let (_, kk) = self.get(ADMIN, "/v1/kernel-signing-key").await;
        (
            k["public_key"].as_str().unwrap_or_else(|| panic!("{k}")).to_owned(),
            kk["public_key"].as_str().unwrap().to_owned(),
        )
    }

    /// Builds a kernel of collection `name` after writing `n` records whose vectors are
    /// `vector(i + salt)` (ids `r<i>`); returns its id.
    pub async fn kernel(&self, name: &str, n: u64, salt: u64, extra_bytes: usize) -> String {
        let (s, _) = self.get(ADMIN, &format!("/v1/collections/{name}")).await;
        if s == 404 {
            let (s, v) = self.post(ADMIN, "/v1/collections", json!({"name": name, "dim": DIM})).await;
            assert!(s < 300, "{v}");
        }
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let recs: Vec<Value> = chunk
                .iter()
                .map(|&i| {
                    let text = if extra_bytes > 0 { pseudo_text(i + salt, extra_bytes) } else { format!("record {i}") };
                    json!({"id": format!("r{i}"), "vector": vector(i + salt, DIM), "text": text})
                })
                .collect();
            let (s, v) = self.post(ADMIN, &format!("/v1/collections/{name}/records"), json!({"records": recs})).await;
            assert_eq!(s, 200, "{v}");
        }
        let (s, b) = self.post(ADMIN, "/v1/kernels", json!({"collection": name})).await;
        assert_eq!(s, 202, "{b}");
        let id = b["id"].as_str().unwrap().to_owned();
        wait_for(300, "the kernel build", || async {
            let (_, v) = self.get(ADMIN, &format!("/v1/kernels/{id}")).await;
            match v["state"].as_str() {
                Some("succeeded") => Some(()),
                Some("running") => None,
                _ => panic!("kernel build failed: {v}"),
            }
        })
        .await;
        id
    }

    /// Publishes `kernel` as `version` on `channel` with golden queries; the release.
    pub async fn publish(&self, kernel: &str, channel: &str, version: u64, golden: Value) -> Value {
        let (s, r) = self
            .post(
                ADMIN,
                "/v1/fleet/releases",
                json!({"kernel_id": kernel, "channel": channel, "version": version, "golden_queries": golden}),
            )
            .await;
        assert_eq!(s, 201, "{r}");
        r
    }

    /// Creates a deployment of `release` to devices labelled `test=<label>` and has the
    /// second admin approve it; its id.
    pub async fn deploy(&self, release: &str, label: &str, plan: Value) -> String {
        let body = json!({"name": format!("{release} to {label}"), "release_id": release,
            "target": {"filter": format!("labels.test = \"{label}\"")}, "plan": plan});
        let (s, d) = self.post(ADMIN, "/v1/fleet/deployments", body).await;
        assert_eq!(s, 201, "{d}");
        let id = d["id"].as_str().unwrap().to_owned();
        let (s, a) = self
            .post(&self.admin2, &format!("/v1/fleet/deployments/{id}/approve"), json!({"digest": d["digest"]}))
            .await;
        assert_eq!(s, 200, "{a}");
        id
    }

    pub async fn deployment(&self, id: &str) -> Value {
        self.get(ADMIN, &format!("/v1/fleet/deployments/{id}")).await.1
    }

    pub async fn execution(&self, dep: &str, device: &str) -> Value {
        self.get(ADMIN, &format!("/v1/fleet/deployments/{dep}/executions/{device}")).await.1
    }

    /// Waits until the execution of `device` in `dep` is in `state`.
    pub async fn wait_execution(&self, dep: &str, device: &str, state: &str, secs: u64) -> Value {
        wait_for(secs, &format!("{device} to reach {state} in {dep}"), || async {
            let e = self.execution(dep, device).await;
            (e["state"] == state).then_some(e)
        })
        .await
    }
}

/// Text of `n` bytes that hardly compresses (91 printable characters, no quote or
/// backslash), so kernels reach a chosen size.
pub fn pseudo_text(seed: u64, n: usize) -> String {
    let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let c = b'#' + (x % 91) as u8;
            char::from(if c >= b'\\' { c + 1 } else { c })
        })
        .collect()
}

/// One agent process.
pub struct AgentProc {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub args: Vec<String>,
    pub log: PathBuf,
}

impl AgentProc {
    /// Starts `kernelize-agent` for `server` with its data in `dir` and extra `args`.
    pub fn spawn(server: &str, dir: &Path, args: &[&str]) -> AgentProc {
        let mut all: Vec<String> = vec![
            "--server".into(),
            server.into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--trial-secs".into(),
            "1".into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let mut a = AgentProc { child: None, dir: dir.to_owned(), args: all, log: dir.with_extension("log") };
        a.start();
        a
    }

    /// (Re)starts the process with the same arguments and port.
    pub fn start(&mut self) {
        fs_err::create_dir_all(&self.dir).unwrap();
        let _ = fs_err::remove_file(self.dir.join("local.addr"));
        let log = fs_err::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kernelize-agent"))
            .arg("--data-dir")
            .arg(&self.dir)
            .args(&self.args)
            .env("KERNELIZE_LOG", "info")
            .env_remove("KERNELIZE_ENROLL_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log.into_parts().0))
            .spawn()
            .expect("kernelize-agent starts");
        self.child = Some(child);
    }

    /// Sets `flag` to `value` for the next start.
    pub fn set_arg(&mut self, flag: &str, value: &str) {
        match self.args.iter().position(|a| a == flag) {
            Some(i) => self.args[i + 1] = value.to_owned(),
            None => self.args.extend([flag.to_owned(), value.to_owned()]),
        }
    }

    /// SIGKILL: a power cut as far as the agent can tell.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The local API's address (the agent binds a free port and writes it down).
    pub async fn addr(&self) -> SocketAddr {
        wait_for(60, "the agent's local API", || async {
            fs_err::read_to_string(self.dir.join("local.addr")).ok().and_then(|s| s.trim().parse().ok())
        })
        .await
    }

    /// The local API key.
    pub fn key(&self) -> String {
        fs_err::read_to_string(self.dir.join("local.key")).map(|s| s.trim().to_owned()).unwrap_or_default()
    }

    /// The state file.
    pub fn state(&self) -> Value {
        fs_err::read(self.dir.join("agent-state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// The device id: from the device key, as the server derives it.
    pub fn device_id(&self) -> String {
        let pkcs8 = fs_err::read(self.dir.join("device.key")).unwrap();
        kernelize_fleet::client::DeviceClient::from_pkcs8(reqwest::Client::new(), "http://x", &pkcs8).unwrap().device_id
    }

    /// A vector query on `channel` through the local API: (status, answer).
    pub async fn query(&self, http: &reqwest::Client, channel: &str, v: &[f32], k: u32) -> (u16, Value) {
        match http
            .post(format!("http://{}/v1/kernels/{channel}/query", self.addr().await))
            .bearer_auth(self.key())
            .json(&json!({"vector": v, "k": k}))
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) => {
                let s = r.status().as_u16();
                (s, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, json!(e.to_string())),
        }
    }

    /// The version served on `channel` (from a query), if any.
    pub async fn served_version(&self, http: &reqwest::Client, channel: &str) -> Option<u64> {
        let (s, a) = self.query(http, channel, &vector(1, DIM), 1).await;
        (s == 200).then(|| a["release"]["version"].as_u64()).flatten()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = fs_err::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} ---", self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
