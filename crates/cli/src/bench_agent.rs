//! `kernelize bench agent`: the device agent's footprint and speed on a real kernel.
//!
//! Copies a data directory holding a collection (the WordNet glosses in BENCHMARKS.md) to
//! a temporary one, starts `kernelize serve` on it as a child, builds and publishes the
//! collection's kernel as release 1, starts an agent process (by default the
//! `kernelize-agent` binary beside this one) and rolls release 1 out to it. Then it
//! measures the agent's memory at rest, the latency of vector and text queries on the
//! device API (one at a time, over one keep-alive connection) and the memory while
//! serving; deletes 1% of the records, publishes release 2 (with its delta from release
//! 1), rolls it out and reports the bytes the agent downloaded against the file's length,
//! the time from download to trial (open + golden query) and the switch itself.

use crate::bench_serve::Server;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `bench agent` arguments.
#[derive(Args, Debug)]
pub struct AgentBenchArgs {
    /// Data directory holding the collection (copied; left untouched).
    #[arg(long, default_value = "data/ann-db")]
    pub source: PathBuf,
    /// The collection.
    #[arg(long, default_value = "wordnet")]
    pub collection: String,
    /// The agent binary (default: `kernelize-agent` beside this binary, else this binary's
    /// `agent` command).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Queries of each kind (vector, text).
    #[arg(long, default_value_t = 500)]
    pub queries: usize,
    /// Share of records deleted for release 2, percent.
    #[arg(long, default_value_t = 1.0)]
    pub change_percent: f64,
    /// Where the copies go (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

const ADMIN: &str = "kz_benchagent00_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn vm(pid: u32, field: &str) -> f64 {
    fs_err::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .map_or(f64::NAN, |kb: f64| kb / 1024.0)
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, key: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut r = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await?;
        let s = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !s.is_success() {
            bail!("{path}: {s}: {v}");
        }
        Ok(v)
    }
    async fn get(&self, path: &str) -> Result<Value> {
        self.call(ADMIN, reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(ADMIN, reqwest::Method::POST, path, Some(body)).await
    }

    async fn until<F: Fn(&Value) -> bool>(&self, path: &str, secs: u64, what: &str, ok: F) -> Result<Value> {
        let t = Instant::now();
        loop {
            if let Ok(v) = self.get(path).await
                && ok(&v)
            {
                return Ok(v);
            }
            if t.elapsed() > Duration::from_secs(secs) {
                bail!("{what}: not done after {secs} s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn kernel(&self, collection: &str) -> Result<String> {
        let b = self.post("/v1/kernels", json!({"collection": collection})).await?;
        let id = b["id"].as_str().context("kernel id")?.to_owned();
        let v = self.until(&format!("/v1/kernels/{id}"), 3600, "the kernel build", |v| v["state"] != "running").await?;
        if v["state"] != "succeeded" {
            bail!("kernel build: {v}");
        }
        Ok(id)
    }

    async fn rollout(&self, approver: &str, release: &str, device: &str) -> Result<Value> {
        let d = self
            .post(
                "/v1/fleet/deployments",
                json!({"name": format!("bench {release}"), "release_id": release, "target": {"devices": [device]},
                    "plan": {"phases": [{"percent": 100}], "in_progress_timeout_seconds": 3600}}),
            )
            .await?;
        let id = d["id"].as_str().context("deployment id")?.to_owned();
        self.call(
            approver,
            reqwest::Method::POST,
            &format!("/v1/fleet/deployments/{id}/approve"),
            Some(json!({"digest": d["digest"]})),
        )
        .await?;
        let e = self
            .until(&format!("/v1/fleet/deployments/{id}/executions/{device}"), 3600, "the rollout", |e| {
                e["state"].as_str().is_some_and(|s| {
                    !matches!(s, "queued" | "offered" | "downloading" | "downloaded" | "verifying" | "trial")
                })
            })
            .await?;
        if e["state"] != "succeeded" {
            bail!("rollout of {release}: {e}");
        }
        Ok(e)
    }
}

fn at(e: &Value, state: &str) -> i64 {
    e["history"]
        .as_array()
        .and_then(|h| h.iter().find(|x| x["state"] == state))
        .and_then(|x| x["at_ms"].as_i64())
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs the benchmark.
pub fn run(a: &AgentBenchArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bench(a))
}

async fn bench(a: &AgentBenchArgs) -> Result<()> {
    if !a.source.join("collections").join(&a.collection).is_dir() {
        bail!("{}: no collection {} (scripts/bench/agent.sh makes the WordNet one)", a.source.display(), a.collection);
    }
    let tmp = tempfile::tempdir_in(a.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let data = tmp.path().join("server");
    let st = Command::new("cp").arg("-a").arg(&a.source).arg(&data).status()?;
    if !st.success() {
        bail!("copying {} failed", a.source.display());
    }
    let me = std::env::current_exe()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = tmp.path().join("bench-agent.toml");
    fs_err::write(&config, "[fleet]\nheartbeat_ms = 1000\n\n[limits]\nrate_per_sec = 1000000\nburst = 1000000\n")?;
    let _server = Server(
        Command::new(&me)
            .arg("--data-dir")
            .arg(&data)
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--log-format", "text"])
            .env("KERNELIZE_ADMIN_KEY", ADMIN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting kernelize serve")?,
    );
    let api = Api { http: reqwest::Client::new(), base: format!("http://127.0.0.1:{port}") };
    api.until("/healthz", 300, "the server", |_| true).await?;
    let approver = api.post("/v1/keys", json!({"name": "approver", "role": "admin"})).await?["key"]
        .as_str()
        .context("key")?
        .to_owned();

    let t = Instant::now();
    let k1 = api.kernel(&a.collection).await?;
    eprintln!("kernel 1 built in {:.1} s", t.elapsed().as_secs_f64());
    let r1 = api.post("/v1/fleet/releases", json!({"kernel_id": k1, "channel": "stable", "version": 1})).await?;
    let token = api.post("/v1/fleet/enrollment-tokens", json!({"ttl_seconds": 3600, "uses": 1})).await?["token"]
        .as_str()
        .context("token")?
        .to_owned();
    let rk = api.get("/v1/fleet/keys").await?["public_key"].as_str().context("release key")?.to_owned();
    let kk = api.get("/v1/kernel-signing-key").await?["public_key"].as_str().context("kernel key")?.to_owned();

    // The agent.
    let beside = me.with_file_name("kernelize-agent");
    let (bin, pre): (PathBuf, Vec<&str>) = match &a.agent_bin {
        Some(b) => (b.clone(), vec![]),
        None if beside.exists() => (beside, vec![]),
        None => (me.clone(), vec!["agent"]),
    };
    let adir = tmp.path().join("agent");
    let lport = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = fs_err::File::create(tmp.path().join("agent.log"))?;
    let agent = Server(
        Command::new(&bin)
            .arg("--data-dir")
            .arg(&adir)
            .args(&pre)
            .args(["--server", &api.base, "--enroll-token", &token, "--release-key", &rk, "--kernel-key", &kk])
            .args(["--listen", &format!("127.0.0.1:{lport}"), "--trial-secs", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log.into_parts().0))
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let pid = agent.0.id();
    let devs = api
        .until("/v1/fleet/devices", 60, "the agent to enroll", |v| {
            v["devices"].as_array().is_some_and(|d| d.len() == 1)
        })
        .await?;
    let device = devs["devices"][0]["id"].as_str().context("device id")?.to_owned();
    let rel1 = r1["id"].as_str().context("release id")?;
    let e1 = api.rollout(&approver, rel1, &device).await?;
    let full1 = r1["length"].as_u64().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rest = vm(pid, "VmRSS:");

    // Queries on the device API.
    let key = fs_err::read_to_string(adir.join("local.key"))?.trim().to_owned();
    let url = format!("http://127.0.0.1:{lport}/v1/kernels/stable/query");
    let words =
        ["feline", "a large body of water", "to run quickly", "musical instrument", "happy", "tree", "bank", "light"];
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    let dim = api.get(&format!("/v1/kernels/{k1}")).await?["dim"].as_u64().unwrap_or(384) as usize;
    let lat = |body: Value| {
        let http = api.http.clone();
        let (url, key) = (url.clone(), key.clone());
        async move {
            let t = Instant::now();
            let r = http.post(&url).bearer_auth(&key).json(&body).send().await?;
            let ok = r.status().is_success();
            let _ = r.bytes().await?;
            if !ok {
                bail!("query refused");
            }
            Ok::<f64, anyhow::Error>(t.elapsed().as_secs_f64() * 1e3)
        }
    };
    let (mut vec_ms, mut text_ms) = (Vec::new(), Vec::new());
    for i in 0..a.queries + 20 {
        let v: Vec<f32> = (0..dim).map(|_| rand::Rng::random::<f32>(&mut rng) - 0.5).collect();
        let ms = lat(json!({"vector": v, "k": 10})).await?;
        if i >= 20 {
            vec_ms.push(ms);
        }
    }
    for i in 0..a.queries + 5 {
        let ms = lat(json!({"text": words[i % words.len()], "k": 10})).await?;
        if i >= 5 {
            text_ms.push(ms);
        }
    }
    let serving = vm(pid, "VmRSS:");

    // 1% of the records deleted → release 2 with a delta.
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = after.as_ref().map_or(String::new(), |a| format!("&after={a}"));
        let page = api.get(&format!("/v1/collections/{}/records?limit=1000{q}", a.collection)).await?;
        for r in page["records"].as_array().into_iter().flatten() {
            ids.push(r["id"].as_str().unwrap_or_default().to_owned());
        }
        match page["next_after"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    let every = (100.0 / a.change_percent).round().max(1.0) as usize;
    let gone: Vec<&String> = ids.iter().step_by(every).collect();
    for chunk in gone.chunks(1000) {
        api.post(&format!("/v1/collections/{}/records:delete", a.collection), json!({"ids": chunk})).await?;
    }
    let k2 = api.kernel(&a.collection).await?;
    let t = Instant::now();
    let r2 = api.post("/v1/fleet/releases", json!({"kernel_id": k2, "channel": "stable", "version": 2})).await?;
    let publish_s = t.elapsed().as_secs_f64();
    let delta = r2["deltas"][0]["length"].as_u64();
    let e2 = api.rollout(&approver, r2["id"].as_str().context("release id")?, &device).await?;
    let peak = vm(pid, "VmHWM:");
    let full2 = r2["length"].as_u64().unwrap_or(0);
    let bytes2 = e2["bytes"].as_u64().unwrap_or(0);
    let agent_log = fs_err::read_to_string(tmp.path().join("agent.log")).unwrap_or_default();
    let switch = agent_log
        .lines()
        .filter(|l| l.contains("switched to version 2"))
        .find_map(|l| l.split(" in ").nth(1).map(|s| s.split_whitespace().next().unwrap_or("").to_owned()))
        .unwrap_or_default();
    let size = fs_err::metadata(&bin).map(|m| m.len()).unwrap_or(0);

    println!("| agent ({}, {:.1} MB on disk) | figure |", bin.display(), size as f64 / 1e6);
    println!("|---|---:|");
    println!("| kernel (release 1) | {:.2} MB, {} rows |", full1 as f64 / 1e6, ids.len());
    println!("| resident memory at rest, serving it (VmRSS) | {rest:.1} MiB |");
    println!(
        "| vector query k=10 on the device API, p50 / p99 | {:.2} / {:.2} ms |",
        pct(&mut vec_ms, 0.5),
        pct(&mut vec_ms, 0.99)
    );
    println!(
        "| text query k=10 (MiniLM on the device), p50 / p99 | {:.2} / {:.2} ms |",
        pct(&mut text_ms, 0.5),
        pct(&mut text_ms, 0.99)
    );
    println!("| resident memory after {} queries of each kind | {serving:.1} MiB |", a.queries);
    println!("| peak resident memory (through the second install) | {peak:.1} MiB |");
    println!(
        "| release 1: offered → succeeded (full download, 1 s trial) | {} ms |",
        at(&e1, "succeeded") - at(&e1, "offered")
    );
    println!(
        "| release 2 ({}% of records deleted): bytes downloaded / full file | {} / {} = {:.1}% (delta {}; publishing took {publish_s:.1} s) |",
        a.change_percent,
        bytes2,
        full2,
        100.0 * bytes2 as f64 / full2.max(1) as f64,
        delta.map_or("none".into(), |d| format!("{d} bytes"))
    );
    println!(
        "| release 2: downloaded → trial (open, checks, golden queries) | {} ms |",
        at(&e2, "trial") - at(&e2, "downloaded")
    );
    println!("| release 2: the switch itself | {switch} |");
    println!(
        "{}",
        json!({"bench": "agent", "agent_bin_bytes": size, "kernel_bytes": full1, "rss_rest_mib": rest, "rss_serving_mib": serving,
            "rss_peak_mib": peak, "vector_p50_ms": pct(&mut vec_ms, 0.5), "vector_p99_ms": pct(&mut vec_ms, 0.99),
            "text_p50_ms": pct(&mut text_ms, 0.5), "text_p99_ms": pct(&mut text_ms, 0.99), "delta_bytes": delta,
            "release2_bytes_downloaded": bytes2, "release2_bytes": full2,
            "stage_ms": at(&e2, "trial") - at(&e2, "downloaded"), "switch": switch})
    );
    drop(agent);
    Ok(())
}
