//! `kernelize bench cluster`: the cluster on this machine with 1, 2 and 3 nodes (in one
//! process, each with its own NATS connection, PostgreSQL pool and cache directory) next
//! to the single-node engine on the same data: ingest throughput (acknowledged, then
//! applied everywhere), query throughput and latency at each consistency level, recall
//! against brute force, and the time a shard takes to move when its owner leaves cleanly
//! and when it dies. The vectors are a seeded mixture of 256 clusters.

use anyhow::{Context, Result, bail};
use clap::Args;
use kernelize_cluster::{ClusterConfig, ClusterQuery, Consistency, Node};
use kernelize_index::search::{IndexCache, Query, Searcher};
use kernelize_store::{CollectionConfig, Database, Metric, Op, Options, Record};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `bench cluster` arguments.
#[derive(Args, Debug)]
pub struct ClusterBenchArgs {
    /// A cluster configuration to start from (`cluster.toml`); its `name`, `node_id` and
    /// `cache_dir` are replaced per run (`scripts/bench/cluster.sh` writes one for the
    /// services on this machine and a moto S3 server).
    #[arg(long)]
    pub cluster: PathBuf,
    /// Node counts to measure.
    #[arg(long, default_value = "1,2,3", value_delimiter = ',')]
    pub nodes: Vec<usize>,
    /// Records.
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    /// Vector dimension.
    #[arg(long, default_value_t = 128)]
    pub dim: usize,
    /// Records per write request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Write requests in flight.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Queries per consistency level.
    #[arg(long, default_value_t = 2000)]
    pub queries: usize,
    /// Queries in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Results per query.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Beam width.
    #[arg(long, default_value_t = 64)]
    pub ef: usize,
    /// Scratch directory (node caches, the single-node data directory).
    #[arg(long, default_value = "data/bench-cluster")]
    pub dir: PathBuf,
    /// RNG seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

fn unit(rng: &mut rand::rngs::StdRng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Latency percentiles (ms) and throughput of one query run.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Lat {
    qps: f64,
    p50: f64,
    p99: f64,
}

fn lat(mut ms: Vec<f64>, wall: Duration) -> Lat {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms.get(((ms.len() as f64 * p) as usize).min(ms.len().saturating_sub(1))).copied().unwrap_or(0.0);
    Lat { qps: ms.len() as f64 / wall.as_secs_f64(), p50: at(0.50), p99: at(0.99) }
}

#[derive(Debug, Default, serde::Serialize)]
struct Row {
    setup: String,
    ingest_acked_per_s: f64,
    ingest_applied_per_s: f64,
    /// Seconds from the first write until every shard was sealed and indexed.
    sealed_s: f64,
    eventual: Lat,
    session: Lat,
    strong: Lat,
    recall: f64,
    handover_ms: Option<f64>,
    failover_ms: Option<f64>,
}

struct Data {
    records: Vec<Record>,
    queries: Vec<Vec<f32>>,
    truth: Vec<Vec<String>>,
}

/// A point of a mixture of 256 clusters (uniform random directions have no neighbourhood
/// structure; embeddings do): a random center plus noise, normalised.
fn clustered(rng: &mut rand::rngs::StdRng, centers: &[Vec<f32>]) -> Vec<f32> {
    let c = &centers[rng.random_range(0..centers.len())];
    let mut v: Vec<f32> = c.iter().map(|x| x + 0.35 * (rng.random::<f32>() - 0.5)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn data(a: &ClusterBenchArgs) -> Data {
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let centers: Vec<Vec<f32>> = (0..256).map(|_| unit(&mut rng, a.dim)).collect();
    let records: Vec<Record> = (0..a.records)
        .map(|i| Record { id: format!("r{i}"), vector: clustered(&mut rng, &centers), text: None, metadata: None })
        .collect();
    let queries: Vec<Vec<f32>> = (0..a.queries).map(|_| clustered(&mut rng, &centers)).collect();
    // Brute-force truth for the first 200 queries (unit vectors: cosine = dot).
    let truth = queries
        .iter()
        .take(200)
        .map(|q| {
            let mut s: Vec<(f32, usize)> = records
                .iter()
                .enumerate()
                .map(|(i, r)| (r.vector.iter().zip(q).map(|(x, y)| x * y).sum::<f32>(), i))
                .collect();
            s.select_nth_unstable_by(a.k, |x, y| y.0.total_cmp(&x.0));
            s.truncate(a.k);
            s.into_iter().map(|(_, i)| records[i].id.clone()).collect()
        })
        .collect();
    Data { records, queries, truth }
}

fn recall(got: &[Vec<String>], truth: &[Vec<String>]) -> f64 {
    let (mut hit, mut all) = (0usize, 0usize);
    for (g, t) in got.iter().zip(truth) {
        hit += g.iter().filter(|id| t.contains(id)).count();
        all += t.len();
    }
    hit as f64 / all.max(1) as f64
}

/// Runs `queries` with `concurrency` workers; returns the latencies (ms), the wall time
/// and the ids of the first 200 answers.
async fn run_queries<F, Fut>(queries: &[Vec<f32>], concurrency: usize, ask: F) -> Result<(Lat, Vec<Vec<String>>)>
where
    F: Fn(usize, Vec<f32>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Vec<String>>> + Send,
{
    let ask = Arc::new(ask);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let queries = Arc::new(queries.to_vec());
    let t = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (ask, next, queries) = (ask.clone(), next.clone(), queries.clone());
        workers.push(tokio::spawn(async move {
            let mut out: Vec<(usize, f64, Vec<String>)> = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= queries.len() {
                    return Ok::<_, anyhow::Error>(out);
                }
                let s = Instant::now();
                let ids = ask(i, queries[i].clone()).await?;
                out.push((i, s.elapsed().as_secs_f64() * 1e3, ids));
            }
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    let wall = t.elapsed();
    all.sort_by_key(|x| x.0);
    let ms = all.iter().map(|x| x.1).collect();
    let ids = all.into_iter().take(200).map(|x| x.2).collect();
    Ok((lat(ms, wall), ids))
}

async fn single(a: &ClusterBenchArgs, d: &Data) -> Result<Row> {
    let dir = a.dir.join("single");
    let _ = fs_err::remove_dir_all(&dir);
    let db = Arc::new(Database::open(&dir, Options::default())?);
    let c = db.create_collection("bench", CollectionConfig::new(a.dim, Metric::Cosine))?;
    let t = Instant::now();
    let batches: Vec<Vec<Record>> = d.records.chunks(a.batch).map(<[Record]>::to_vec).collect();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let batches = Arc::new(batches);
    let mut ws = Vec::new();
    for _ in 0..a.writers {
        let (c, next, batches) = (c.clone(), next.clone(), batches.clone());
        ws.push(tokio::task::spawn_blocking(move || -> Result<()> {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(b) = batches.get(i) else { return Ok(()) };
                c.upsert(b.clone())?;
            }
        }));
    }
    for w in ws {
        w.await??;
    }
    let ingest = a.records as f64 / t.elapsed().as_secs_f64();
    // Index the segments the way a sealed shard is indexed (before the queries).
    c.flush()?;
    let cache = Arc::new(IndexCache::new());
    cache.ensure(&c, &**db.storage()).context("index build")?;
    let (k, ef) = (a.k, a.ef);
    let (l, ids) = run_queries(&d.queries, a.concurrency, move |_, v| {
        let (db, c, cache) = (db.clone(), c.clone(), cache.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let q = Query { vector: Some(v), k, ef: Some(ef), ..Default::default() };
                let hits = Searcher::new(&c, &**db.storage(), &cache).search(&q)?;
                Ok(hits.into_iter().map(|h| h.id).collect())
            })
            .await?
        }
    })
    .await?;
    Ok(Row {
        setup: "single-node engine".into(),
        ingest_acked_per_s: ingest,
        ingest_applied_per_s: ingest,
        eventual: l,
        session: l,
        strong: l,
        recall: recall(&ids, &d.truth),
        ..Row::default()
    })
}

async fn wait_owned(nodes: &[&Node], not: Option<&str>, limit: Duration) -> Result<Duration> {
    let t = Instant::now();
    loop {
        let placed = nodes[0].placement().await?;
        let ok = !placed.is_empty() && placed.iter().all(|p| p.owner.as_deref().is_some_and(|o| Some(o) != not));
        if ok {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            bail!("shards not owned after {limit:?}: {placed:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cluster(a: &ClusterBenchArgs, base: &ClusterConfig, d: &Data, n: usize) -> Result<Row> {
    let name = format!("bench_{}_{n}", std::process::id());
    let mut nodes = Vec::new();
    for i in 0..n {
        let mut cfg = base.clone();
        cfg.name = name.clone();
        cfg.node_id = Some(format!("b{i}"));
        cfg.cache_dir = a.dir.join(&name).join(format!("b{i}"));
        nodes.push(Arc::new(Node::start(cfg).await?));
    }
    let refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
    nodes[0].create_collection("bench", CollectionConfig::new(a.dim, Metric::Cosine)).await?;
    wait_owned(&refs, None, Duration::from_secs(60)).await?;
    // Ingest: batches round-robin over the nodes, `writers` in flight.
    let t = Instant::now();
    let batches: Arc<Vec<Vec<Op>>> = Arc::new(
        d.records.chunks(a.batch).map(|b| b.iter().map(|r| Op::Upsert(Arc::new(r.clone()))).collect()).collect(),
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut ws = Vec::new();
    for _ in 0..a.writers {
        let (nodes, next, batches) = (nodes.clone(), next.clone(), batches.clone());
        ws.push(tokio::spawn(async move {
            let mut token = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(b) = batches.get(i) else { return Ok::<u64, anyhow::Error>(token) };
                token = token.max(nodes[i % nodes.len()].write("bench", b.clone(), None).await?.token);
            }
        }));
    }
    let mut token = 0;
    for w in ws {
        token = token.max(w.await??);
    }
    let acked = t.elapsed();
    // Applied: every node counts every record (a shard busy applying may answer 503: retried).
    for node in &nodes {
        loop {
            let got = node.describe("bench", Consistency::Eventual).await.map(|d| d.records).unwrap_or(0);
            if got == a.records as u64 {
                break;
            }
            if t.elapsed() > Duration::from_secs(600) {
                bail!("{} of {} records applied after 10 minutes", got, a.records);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let applied = t.elapsed();
    // Let the owners seal (flush, build the segments' indexes, upload, commit) and the
    // replicas swap in the sealed, indexed segments: until no checkpoint moves for two
    // seal intervals. Then one unmeasured pass of queries.
    let mut last: Vec<u64> = Vec::new();
    let mut still = Instant::now();
    loop {
        let now: Vec<u64> = nodes[0].placement().await?.iter().map(|p| p.checkpoint).collect();
        if now != last || now.contains(&0) {
            last = now;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_millis(base.timing.seal_ms * 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = t.elapsed();
    for (i, q) in d.queries.iter().enumerate().take(200) {
        let query = Query { vector: Some(q.clone()), k: a.k, ef: Some(a.ef), ..Default::default() };
        let cq = ClusterQuery { query, ..Default::default() };
        let _ = nodes[i % nodes.len()].search("bench", cq).await;
    }
    let mut lats = Vec::new();
    let mut ids = Vec::new();
    for level in [Consistency::Eventual, Consistency::Session, Consistency::Strong] {
        let (k, ef, nodes) = (a.k, a.ef, nodes.clone());
        let (l, got) = run_queries(&d.queries, a.concurrency, move |i, v| {
            let node = nodes[i % nodes.len()].clone();
            async move {
                let q = ClusterQuery {
                    query: Query { vector: Some(v), k, ef: Some(ef), ..Default::default() },
                    consistency: level,
                    token,
                    ..Default::default()
                };
                Ok(node.search("bench", q).await?.into_iter().map(|h| h.record.id).collect())
            }
        })
        .await?;
        lats.push(l);
        ids = got;
    }
    let mut row = Row {
        setup: format!("cluster, {n} node{}", if n == 1 { "" } else { "s" }),
        ingest_acked_per_s: a.records as f64 / acked.as_secs_f64(),
        ingest_applied_per_s: a.records as f64 / applied.as_secs_f64(),
        sealed_s: settled.as_secs_f64(),
        eventual: lats[0],
        session: lats[1],
        strong: lats[2],
        recall: recall(&ids, &d.truth),
        ..Row::default()
    };
    if n >= 2 {
        // A clean leave: the owner seals and releases; the next-ranked takes over.
        let busiest = (0..n).max_by_key(|&i| nodes[i].owned().len()).unwrap_or(0);
        let gone = nodes[busiest].id().to_owned();
        let t = Instant::now();
        nodes[busiest].shutdown().await?;
        let rest: Vec<&Node> = (0..n).filter(|&i| i != busiest).map(|i| &*nodes[i]).collect();
        wait_owned(&rest, Some(&gone), Duration::from_secs(60)).await?;
        row.handover_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        if n >= 3 {
            // A crash: no seal, no release; the lease has to run out.
            let victim = (0..n).filter(|&i| i != busiest).max_by_key(|&i| nodes[i].owned().len()).unwrap_or(0);
            let gone = nodes[victim].id().to_owned();
            let t = Instant::now();
            nodes[victim].abort();
            let rest: Vec<&Node> = (0..n).filter(|&i| i != busiest && i != victim).map(|i| &*nodes[i]).collect();
            wait_owned(&rest, Some(&gone), Duration::from_secs(60)).await?;
            row.failover_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    for node in &nodes {
        let _ = node.shutdown().await;
    }
    drop(refs);
    drop(nodes);
    let mut cfg = base.clone();
    cfg.name = name.clone();
    kernelize_cluster::destroy(&cfg).await?;
    let _ = fs_err::remove_dir_all(a.dir.join(&name));
    Ok(row)
}

/// Runs the benchmark.
pub fn run(a: &ClusterBenchArgs) -> Result<()> {
    let base = ClusterConfig::load(&a.cluster)?;
    fs_err::create_dir_all(&a.dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    eprintln!("data: {} records × {} dims, {} queries (brute-force truth for 200)", a.records, a.dim, a.queries);
    let d = data(a);
    let mut rows = vec![rt.block_on(single(a, &d))?];
    for &n in &a.nodes {
        eprintln!("cluster with {n} node(s)…");
        rows.push(rt.block_on(cluster(a, &base, &d, n))?);
    }
    println!(
        "{:<22} {:>10} {:>10}  {:>21}  {:>21}  {:>21}  {:>6} {:>9} {:>9}",
        "setup",
        "acked/s",
        "applied/s",
        "eventual qps p50 p99",
        "session qps p50 p99",
        "strong qps p50 p99",
        "recall",
        "handover",
        "failover"
    );
    let ms = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.0} ms"));
    for r in &rows {
        let l = |l: &Lat| format!("{:>7.0} {:>5.1} {:>6.1}", l.qps, l.p50, l.p99);
        println!(
            "{:<22} {:>10.0} {:>10.0} {:>6.1}s  {}  {}  {}  {:>6.3} {:>9} {:>9}",
            r.setup,
            r.ingest_acked_per_s,
            r.ingest_applied_per_s,
            r.sealed_s,
            l(&r.eventual),
            l(&r.session),
            l(&r.strong),
            r.recall,
            ms(r.handover_ms),
            ms(r.failover_ms)
        );
    }
    println!(
        "{}",
        serde_json::json!({"bench": "cluster", "records": a.records, "dim": a.dim, "shards": base.shards,
        "k": a.k, "ef": a.ef, "concurrency": a.concurrency, "rows": rows})
    );
    Ok(())
}
