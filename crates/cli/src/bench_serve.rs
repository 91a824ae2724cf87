//! `kernelize bench serve`: a bounded open-loop load test of the server on 127.0.0.1.
//!
//! Builds (or reuses) a collection of random unit vectors with its HNSW index, starts
//! `kernelize serve` on it as a separate process, then sends vector searches at a fixed
//! rate for a fixed time. Latency is measured from each request's scheduled send time
//! (so a stall is charged to every request it delays: no coordinated omission).

use anyhow::{Context, Result, bail};
use clap::Args;
use kernelize_index::search::IndexCache;
use kernelize_store::{CollectionConfig, Database, Metric, Options, Record};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `bench serve` arguments.
#[derive(Args, Debug)]
pub struct ServeBenchArgs {
    /// Records in the collection.
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    /// Vector dimension.
    #[arg(long, default_value_t = 384)]
    pub dim: usize,
    /// Requests per second.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Seconds of measured load (after the warm-up).
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Seconds of warm-up load (not measured).
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Results per search.
    #[arg(long, default_value_t = 10)]
    pub k: u32,
    /// Beam width.
    #[arg(long, default_value_t = 64)]
    pub ef: u32,
    /// Where the benchmark collection lives (reused when it matches).
    #[arg(long, default_value = "data/bench-serve")]
    pub dir: PathBuf,
    /// RNG seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

const ADMIN: &str = "kz_benchserve00_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

fn unit(rng: &mut rand::rngs::StdRng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn prepare(a: &ServeBenchArgs) -> Result<()> {
    let db =
        Database::open(&a.dir, Options { durability: kernelize_store::Durability::Buffered, ..Default::default() })?;
    if let Ok(c) = db.collection("bench") {
        if c.config().dim == a.dim && c.snapshot().count()? == a.records as u64 {
            eprintln!("reusing {} records in {}", a.records, a.dir.display());
            IndexCache::new().ensure(&c, &**db.storage())?;
            return Ok(());
        }
        db.drop_collection("bench")?;
    }
    let c = db.create_collection("bench", CollectionConfig::new(a.dim, Metric::Cosine))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let t = Instant::now();
    for start in (0..a.records).step_by(1000) {
        let batch = (start..(start + 1000).min(a.records))
            .map(|i| Record { id: format!("r{i:07}"), vector: unit(&mut rng, a.dim), text: None, metadata: None })
            .collect();
        c.upsert(batch)?;
    }
    c.sync()?;
    c.compact()?;
    eprintln!("loaded {} records in {:.1}s; building the index…", a.records, t.elapsed().as_secs_f64());
    let t = Instant::now();
    IndexCache::new().ensure(&c, &**db.storage())?;
    eprintln!("index built in {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}

/// A child `kernelize serve`, stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM for a graceful stop; SIGKILL if it lingers.
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the load test.
pub fn run(a: &ServeBenchArgs) -> Result<()> {
    if a.rate == 0 || a.duration == 0 {
        bail!("--rate and --duration must be positive");
    }
    prepare(a)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(["--data-dir"])
        .arg(&a.dir)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--log-format", "text", "--rate-limit", "1000000"])
        .env("KERNELIZE_ADMIN_KEY", ADMIN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting kernelize serve")?;
    let server = Server(child);
    let base = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ 0xABCD);
    let bodies: Vec<bytes::Bytes> = (0..1000)
        .map(|_| {
            let q = serde_json::json!({"vector": unit(&mut rng, a.dim), "k": a.k, "ef": a.ef});
            bytes::Bytes::from(q.to_string())
        })
        .collect();
    let (lat, errors, achieved) = rt.block_on(async {
        let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
        let t = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("the server did not become ready in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let url = format!("{base}/v1/collections/bench/search");
        let phase = |secs: u64| {
            let client = client.clone();
            let url = url.clone();
            let bodies = bodies.clone();
            let rate = a.rate;
            async move {
                let n = rate as u64 * secs;
                let start = tokio::time::Instant::now();
                let mut tasks = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(at).await;
                    let req = client
                        .post(&url)
                        .bearer_auth(ADMIN)
                        .header("content-type", "application/json")
                        .body(bodies[i as usize % bodies.len()].clone());
                    tasks.push(tokio::spawn(async move {
                        let ok = match req.send().await {
                            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                            Err(_) => false,
                        };
                        (at.elapsed().as_secs_f64() * 1e3, ok)
                    }));
                }
                let mut lat = Vec::with_capacity(tasks.len());
                let mut errors = 0u64;
                for t in tasks {
                    match t.await {
                        Ok((ms, true)) => lat.push(ms),
                        _ => errors += 1,
                    }
                }
                let achieved = n as f64 / start.elapsed().as_secs_f64();
                (lat, errors, achieved)
            }
        };
        eprintln!("warm-up: {} s at {} req/s", a.warmup, a.rate);
        phase(a.warmup).await;
        eprintln!("measuring: {} s at {} req/s", a.duration, a.rate);
        Ok(phase(a.duration).await)
    })?;
    drop(server);
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    let (p50, p90, p99, p999) =
        (percentile(&sorted, 0.5), percentile(&sorted, 0.9), percentile(&sorted, 0.99), percentile(&sorted, 0.999));
    let max = sorted.last().copied().unwrap_or(f64::NAN);
    println!(
        "| records | dim | rate req/s | seconds | requests | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} ({achieved:.0} sent) | {} | {} | {errors} | {p50:.2} | {p90:.2} | {p99:.2} | {p999:.2} | {max:.2} |",
        a.records,
        a.dim,
        a.rate,
        a.duration,
        lat.len() as u64 + errors
    );
    let line = serde_json::json!({
        "bench": "serve", "records": a.records, "dim": a.dim, "rate": a.rate, "seconds": a.duration,
        "k": a.k, "ef": a.ef, "requests": lat.len() as u64 + errors, "errors": errors, "sent_rate": achieved,
        "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "p999_ms": p999, "max_ms": max,
    });
    println!("{line}");
    Ok(())
}
