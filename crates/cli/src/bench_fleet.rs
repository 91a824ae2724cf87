//! `kernelize bench fleet`: many simulated devices heartbeating and polling for offers
//! against one server.
//!
//! Starts `kernelize serve` as a child process (so its CPU time and memory are its own,
//! read from `/proc/<pid>`), or uses `--server`. Enrolls N devices, each with its own
//! ed25519 key, through an enrollment token (concurrently; not measured), then for D
//! seconds every device heartbeats at the interval the server hands out (with its
//! jitter: the next heartbeat is due `next_heartbeat_ms` after the previous one was due)
//! and asks for an offer after each heartbeat. A fixed pool of worker tasks, each owning
//! a share of the devices, sends the requests over one keep-alive HTTP client; the time
//! between when a device's heartbeat was due and when it was sent is the client's lag,
//! reported beside the latencies so a slow client cannot pass for a fast server.

use anyhow::{Context, Result, bail};
use clap::Args;
use kernelize_fleet::client::DeviceClient;
use kernelize_fleet::{InstalledKernel, Inventory};
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::time::Instant as TInstant;

/// `bench fleet` arguments.
#[derive(Args, Debug)]
pub struct FleetBenchArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Seconds of load before measuring (the first heartbeat of each device marks it
    /// online, a write, so one interval is the default).
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
    /// The heartbeat interval the server hands out, ms (a started server is configured
    /// with it; against --server it is whatever that server says).
    #[arg(long, default_value_t = 10_000)]
    pub heartbeat_ms: u64,
    /// Worker tasks sending requests (each owns devices/workers devices and at most one
    /// request at a time: also the number of connections).
    #[arg(long, default_value_t = 512)]
    pub workers: usize,
    /// Concurrent enrollments.
    #[arg(long, default_value_t = 32)]
    pub enroll_concurrency: usize,
    /// Send the inventory with every heartbeat (as an agent does) or with none.
    #[arg(long, default_value = "every", value_parser = ["every", "none"])]
    pub inventory: String,
    /// PostgreSQL for the started server's metadata (a fresh schema is made for the run
    /// and dropped after it); default SQLite in the data directory.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Use this running server instead of starting one (needs --api-key of an admin;
    /// its CPU and memory are then not measured).
    #[arg(long)]
    pub server: Option<String>,
    /// Admin API key for --server.
    #[arg(long, env = "KERNELIZE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Data directory of the started server (default: a temporary one).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// RNG seed (first-heartbeat offsets).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

const ADMIN: &str = "kz_benchfleet00_FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF";

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat`.
fn cpu_secs(pid: &str, tck: f64) -> Result<f64> {
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after its ')' are fixed.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("unexpected /proc stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: f64 = f.get(11).context("no utime")?.parse()?;
    let stime: f64 = f.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / tck)
}

/// `(VmHWM, VmRSS)` of a process in MiB, from `/proc/<pid>/status`.
fn memory_mib(pid: &str) -> Result<(f64, f64)> {
    let status = fs_err::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    Ok((field("VmHWM:"), field("VmRSS:")))
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

use crate::bench_serve::Server as Child;
/// A PostgreSQL schema made for one run, dropped at the end.
struct PgSchema {
    base: String,
    name: String,
}

impl PgSchema {
    async fn create(base: &str) -> Result<(PgSchema, String)> {
        use sqlx::Connection;
        let name = format!("kz_bench_fleet_{}_{}", std::process::id(), kernelize_fleet::now_ms());
        let mut c = sqlx::PgConnection::connect(base).await.with_context(|| format!("connecting to {base}"))?;
        sqlx::query(&format!("CREATE SCHEMA {name}")).execute(&mut c).await?;
        c.close().await?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        Ok((PgSchema { base: base.to_owned(), name }, url))
    }

    async fn drop_it(&self) {
        use sqlx::Connection;
        if let Ok(mut c) = sqlx::PgConnection::connect(&self.base).await {
            let _ = sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name)).execute(&mut c).await;
            let _ = c.close().await;
        }
    }
}

fn start_server(a: &FleetBenchArgs, dir: &Path, db_url: Option<&str>) -> Result<(Child, String)> {
    let config = dir.join("bench-fleet.toml");
    fs_err::write(
        &config,
        format!(
            "[fleet]\nheartbeat_ms = {}\ndevice_token_ttl_secs = 86400\n\n[limits]\nrate_per_sec = 1000000\nburst = 1000000\n",
            a.heartbeat_ms
        ),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--data-dir").arg(dir.join("data")).args(["--durability", "always", "serve", "--config"]).arg(&config);
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--log-format", "text"]);
    if let Some(u) = db_url {
        cmd.env("KERNELIZE_DATABASE_URL", u);
    } else {
        cmd.env_remove("KERNELIZE_DATABASE_URL");
    }
    let child = cmd
        .env("KERNELIZE_ADMIN_KEY", ADMIN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting kernelize serve")?;
    Ok((Child(child), format!("http://127.0.0.1:{port}")))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Latencies of one kind of request, ms.
#[derive(Debug, Default)]
struct Series {
    ms: Vec<f64>,
    errors: u64,
    /// The first few error messages.
    samples: Vec<String>,
}

impl Series {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.samples.len() < 5 {
            self.samples.push(e);
        }
    }

    fn merge(&mut self, o: Series) {
        self.ms.extend(o.ms);
        self.errors += o.errors;
        for s in o.samples {
            if self.samples.len() < 5 {
                self.samples.push(s);
            }
        }
    }

    fn stats(&mut self) -> (f64, f64, f64, f64) {
        self.ms.sort_by(f64::total_cmp);
        let max = self.ms.last().copied().unwrap_or(f64::NAN);
        (percentile(&self.ms, 0.5), percentile(&self.ms, 0.99), percentile(&self.ms, 0.999), max)
    }
}

#[derive(Debug, Default)]
struct Tally {
    heartbeat: Series,
    poll: Series,
    /// Due → sent, ms.
    lag: Series,
    offers: u64,
}

fn inventory() -> Inventory {
    let mut kernels = BTreeMap::new();
    kernels.insert("stable".to_owned(), InstalledKernel { kernel_id: "k1".into(), version: 1 });
    Inventory { agent_version: "0.1.0".into(), kernels, free_disk_bytes: 8 << 30, health: None }
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> Result<()> {
    let t = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("the server at {base} did not become ready in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Enrolls `n` devices with one enrollment token; each gets its device token.
async fn enroll(a: &FleetBenchArgs, http: &reqwest::Client, base: &str, key: &str) -> Result<Vec<DeviceClient>> {
    let r = http
        .post(format!("{base}/v1/fleet/enrollment-tokens"))
        .bearer_auth(key)
        .json(&serde_json::json!({"ttl_seconds": 86_400, "uses": a.devices, "labels": {"bench": "fleet"}}))
        .send()
        .await?;
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("creating the enrollment token: HTTP {status}: {v}");
    }
    let token = v["token"].as_str().context("no token in the answer")?.to_owned();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let inv = inventory();
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.enroll_concurrency.max(1) {
        let (http, base, token, next, done, inv, n) =
            (http.clone(), base.to_owned(), token.clone(), next.clone(), done.clone(), inv.clone(), a.devices);
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(out);
                }
                let mut d = DeviceClient::generate(http.clone(), &base);
                let e = d
                    .enroll(&format!("bench-{i}"), &inv, &BTreeMap::new(), Some(&token))
                    .await
                    .with_context(|| format!("enrolling device {i}"))?;
                if e.status != kernelize_fleet::DeviceStatus::Accepted {
                    bail!("device {i} is {:?} after enrolling with a token", e.status);
                }
                d.refresh_token().await.with_context(|| format!("device {i}: token"))?;
                out.push(d);
                let k = done.fetch_add(1, Ordering::Relaxed) + 1;
                if k % 1000 == 0 {
                    eprintln!("enrolled {k} / {n} devices ({:.0}/s)", k as f64 / t.elapsed().as_secs_f64());
                }
            }
        });
    }
    let mut all = Vec::with_capacity(a.devices);
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    eprintln!("enrolled {} devices in {:.1} s", all.len(), t.elapsed().as_secs_f64());
    Ok(all)
}

/// One worker: its devices, each due at some instant; heartbeat, then poll.
async fn worker(
    devices: Arc<Vec<DeviceClient>>,
    mine: Vec<(TInstant, usize)>,
    window: (TInstant, TInstant),
    fallback_ms: u64,
    send_inventory: bool,
) -> Tally {
    let mut heap: BinaryHeap<Reverse<(TInstant, usize)>> = mine.into_iter().map(Reverse).collect();
    let mut t = Tally::default();
    let inv = inventory();
    while let Some(Reverse((due, i))) = heap.pop() {
        if due >= window.1 {
            break;
        }
        tokio::time::sleep_until(due).await;
        let sent = TInstant::now();
        let measured = due >= window.0;
        let d = &devices[i];
        let hb = d.heartbeat(send_inventory.then_some(&inv), None).await;
        let hb_ms = sent.elapsed().as_secs_f64() * 1e3;
        let next = match hb {
            Ok(r) => {
                if measured {
                    t.heartbeat.ms.push(hb_ms);
                }
                r.next_heartbeat_ms
            }
            Err(e) => {
                if measured {
                    t.heartbeat.error(e.to_string());
                }
                fallback_ms
            }
        };
        let p0 = TInstant::now();
        let poll = d.offer().await;
        if measured {
            match poll {
                Ok(o) => {
                    t.poll.ms.push(p0.elapsed().as_secs_f64() * 1e3);
                    t.offers += u64::from(o.is_some());
                }
                Err(e) => t.poll.error(e.to_string()),
            }
            t.lag.ms.push((sent - due).as_secs_f64() * 1e3);
        }
        heap.push(Reverse((due + Duration::from_millis(next.max(1)), i)));
    }
    t
}

/// Runs the benchmark.
pub fn run(a: &FleetBenchArgs) -> Result<()> {
    if a.devices == 0 || a.duration == 0 || a.workers == 0 {
        bail!("--devices, --duration and --workers must be positive");
    }
    if a.server.is_some() && a.database_url.is_some() {
        bail!("--database-url configures the server this bench starts; it does not go with --server");
    }
    let tck = clock_ticks();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    fs_err::create_dir_all(&dir)?;
    let schema = match &a.database_url {
        Some(u) => Some(rt.block_on(PgSchema::create(u))?),
        None => None,
    };
    let result = (|| {
        let (child, base, key) = match &a.server {
            Some(s) => {
                let key = a.api_key.clone().context("--server needs --api-key (an admin key) to enroll devices")?;
                (None, s.trim_end_matches('/').to_owned(), key)
            }
            None => {
                let (c, base) = start_server(a, &dir, schema.as_ref().map(|(_, u)| u.as_str()))?;
                (Some(c), base, ADMIN.to_owned())
            }
        };
        let pid = child.as_ref().map(|c| c.0.id().to_string());
        if let Some(p) = &pid {
            eprintln!("server: pid {p} at {base} (profile it with `perf record -g -p {p}`)");
        }
        let out = rt.block_on(load(a, &base, &key, pid.as_deref(), tck));
        drop(child);
        out
    })();
    if let Some((s, _)) = &schema {
        rt.block_on(s.drop_it());
    }
    let r = result?;
    print_report(a, r);
    Ok(())
}

struct Report {
    tally: Tally,
    measured_secs: f64,
    server_cpu: Option<f64>,
    server_mem: Option<(f64, f64)>,
    client_cpu: f64,
    client_mem: (f64, f64),
    enroll_secs: f64,
    backend: String,
}

async fn load(a: &FleetBenchArgs, base: &str, key: &str, pid: Option<&str>, tck: f64) -> Result<Report> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.workers.max(a.enroll_concurrency))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    wait_ready(&http, base).await?;
    let t = Instant::now();
    let devices = Arc::new(enroll(a, &http, base, key).await?);
    let enroll_secs = t.elapsed().as_secs_f64();

    // First heartbeats spread uniformly over one interval; each worker owns every
    // workers-th device.
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let t0 = TInstant::now() + Duration::from_millis(200);
    let window = (t0 + Duration::from_secs(a.warmup), t0 + Duration::from_secs(a.warmup + a.duration));
    let mut shares: Vec<Vec<(TInstant, usize)>> = vec![Vec::new(); a.workers];
    for i in 0..devices.len() {
        let off = Duration::from_millis(rng.random_range(0..a.heartbeat_ms.max(1)));
        shares[i % a.workers].push((t0 + off, i));
    }
    eprintln!(
        "load: {} devices, heartbeat {} ms, {} workers; warm-up {} s, measuring {} s",
        devices.len(),
        a.heartbeat_ms,
        a.workers,
        a.warmup,
        a.duration
    );
    let send_inventory = a.inventory == "every";
    let mut tasks = tokio::task::JoinSet::new();
    for mine in shares {
        tasks.spawn(worker(devices.clone(), mine, window, a.heartbeat_ms, send_inventory));
    }
    let me = std::process::id().to_string();
    tokio::time::sleep_until(window.0).await;
    let s0 = pid.map(|p| cpu_secs(p, tck)).transpose()?;
    let c0 = cpu_secs(&me, tck)?;
    let m0 = TInstant::now();
    tokio::time::sleep_until(window.1).await;
    let s1 = pid.map(|p| cpu_secs(p, tck)).transpose()?;
    let c1 = cpu_secs(&me, tck)?;
    let measured_secs = m0.elapsed().as_secs_f64();
    let server_mem = pid.map(memory_mib).transpose()?;
    let client_mem = memory_mib(&me)?;
    let mut tally = Tally::default();
    while let Some(r) = tasks.join_next().await {
        let w = r?;
        tally.heartbeat.merge(w.heartbeat);
        tally.poll.merge(w.poll);
        tally.lag.merge(w.lag);
        tally.offers += w.offers;
    }
    let backend = if a.server.is_some() {
        "external".to_owned()
    } else if a.database_url.is_some() {
        "postgres".to_owned()
    } else {
        "sqlite".to_owned()
    };
    Ok(Report {
        tally,
        measured_secs,
        server_cpu: s0.zip(s1).map(|(a, b)| b - a),
        server_mem,
        client_cpu: c1 - c0,
        client_mem,
        enroll_secs,
        backend,
    })
}

fn print_report(a: &FleetBenchArgs, mut r: Report) {
    let secs = r.measured_secs;
    let (hb50, hb99, hb999, hbmax) = r.tally.heartbeat.stats();
    let (p50, p99, p999, pmax) = r.tally.poll.stats();
    let (l50, l99, _, lmax) = r.tally.lag.stats();
    let hb_n = r.tally.heartbeat.ms.len() as u64 + r.tally.heartbeat.errors;
    let poll_n = r.tally.poll.ms.len() as u64 + r.tally.poll.errors;
    let errors = r.tally.heartbeat.errors + r.tally.poll.errors;
    let cpu = |c: Option<f64>| c.map_or("-".to_owned(), |c| format!("{c:.1} s ({:.0}% of a core)", 100.0 * c / secs));
    let mem = |m: Option<(f64, f64)>| m.map_or("-".to_owned(), |(hwm, rss)| format!("{hwm:.0} / {rss:.0}"));
    println!("| request | per s | p50 ms | p99 ms | p99.9 ms | max ms | errors |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| heartbeat | {:.0} | {hb50:.2} | {hb99:.2} | {hb999:.2} | {hbmax:.2} | {} |",
        hb_n as f64 / secs,
        r.tally.heartbeat.errors
    );
    println!(
        "| offer poll | {:.0} | {p50:.2} | {p99:.2} | {p999:.2} | {pmax:.2} | {} |",
        poll_n as f64 / secs,
        r.tally.poll.errors
    );
    println!();
    println!(
        "devices {}, backend {}, {} s measured after {} s warm-up, heartbeat {} ms, {} workers; enrollment took {:.1} s",
        a.devices, r.backend, a.duration, a.warmup, a.heartbeat_ms, a.workers, r.enroll_secs
    );
    println!(
        "server CPU {}; server memory peak / now {} MiB; client CPU {}; client memory peak / now {:.0} / {:.0} MiB",
        cpu(r.server_cpu),
        mem(r.server_mem),
        cpu(Some(r.client_cpu)),
        r.client_mem.0,
        r.client_mem.1
    );
    println!(
        "client lag (due → sent): p50 {l50:.2} ms, p99 {l99:.2} ms, max {lmax:.2} ms; offers received {}",
        r.tally.offers
    );
    for s in r.tally.heartbeat.samples.iter().chain(&r.tally.poll.samples) {
        println!("error sample: {s}");
    }
    let floor = hb99 < 50.0 && p99 < 50.0 && errors == 0;
    println!("floor (p99 < 50 ms, zero errors): {}", if floor { "met" } else { "NOT met" });
    let line = serde_json::json!({
        "bench": "fleet", "devices": a.devices, "backend": r.backend, "seconds": a.duration, "warmup": a.warmup,
        "heartbeat_ms": a.heartbeat_ms, "workers": a.workers, "inventory": a.inventory,
        "heartbeats": hb_n, "heartbeats_per_s": hb_n as f64 / secs,
        "heartbeat_p50_ms": hb50, "heartbeat_p99_ms": hb99, "heartbeat_p999_ms": hb999, "heartbeat_max_ms": hbmax,
        "heartbeat_errors": r.tally.heartbeat.errors,
        "polls": poll_n, "polls_per_s": poll_n as f64 / secs,
        "poll_p50_ms": p50, "poll_p99_ms": p99, "poll_p999_ms": p999, "poll_max_ms": pmax,
        "poll_errors": r.tally.poll.errors, "offers": r.tally.offers,
        "client_lag_p50_ms": l50, "client_lag_p99_ms": l99, "client_lag_max_ms": lmax,
        "server_cpu_s": r.server_cpu, "server_peak_mib": r.server_mem.map(|m| m.0), "server_rss_mib": r.server_mem.map(|m| m.1),
        "client_cpu_s": r.client_cpu, "client_peak_mib": r.client_mem.0,
        "enroll_s": r.enroll_secs, "floor_met": floor,
    });
    println!("{line}");
}
