//! `kernelize bench …`: whole-system benchmarks that print a table and a JSON line.

use anyhow::{Result, bail};
use clap::Subcommand;
use kernelize_learned::bench::{BenchConfig, Distribution};
use std::path::PathBuf;
use std::process::ExitCode;

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Point lookups in sorted u64 keys: the learned index (PGM) against binary search
    /// (`partition_point`), an Eytzinger layout and `BTreeMap`: lookup ns, build time
    /// and index bytes per key.
    Keys {
        /// Key counts, comma-separated; `M` = million.
        #[arg(long, default_value = "10M,100M")]
        sizes: String,
        /// Distributions: dense, uniform, lognormal, clustered.
        #[arg(long, default_value = "dense,uniform,lognormal,clustered")]
        distributions: String,
        /// Lookups per measurement.
        #[arg(long, default_value_t = 2_000_000)]
        lookups: usize,
        /// Error bound of the learned index.
        #[arg(long, default_value_t = 64)]
        epsilon: usize,
        /// Skip BTreeMap (slow to build and large at 100M keys).
        #[arg(long)]
        no_btree: bool,
        /// RNG seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Embedding throughput (texts/s) on a text file (JSONL `text` fields or lines).
    Embed {
        /// Texts (default: the WordNet glosses).
        #[arg(long, default_value = "data/wordnet.jsonl")]
        texts: PathBuf,
        /// Texts to use.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        /// Texts per embed call.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Model directory.
        #[arg(long)]
        model_dir: Option<PathBuf>,
    },
    /// Approximate nearest neighbours on a collection (WordNet glosses by default): per
    /// index kind (f32, int8, RaBitQ 1/4-bit) and thread count, build time, index bytes,
    /// memory, and recall@10 / QPS over an ef sweep; then filtered search. Writes the
    /// vectors, queries and ground truth as .npy for scripts/bench/ann_peers.py.
    Ann(Box<crate::ann::AnnArgs>),
    /// Load test of the server: a collection of random unit vectors (100k × 384 by
    /// default) served by `kernelize serve` in its own process; vector searches at a fixed
    /// rate for a fixed time from 127.0.0.1; p50/p90/p99 latency and errors.
    Serve(crate::bench_serve::ServeBenchArgs),
    /// The fleet control plane under many devices: `kernelize serve` in its own process
    /// (SQLite, or PostgreSQL with --database-url), N simulated devices (10,000 by
    /// default) enrolled with their own keys, each heartbeating every 10 s (the server's
    /// jitter) and polling for an offer after each heartbeat for D seconds; requests/s,
    /// p50/p99/max latency, errors, client lag, server and client CPU and peak memory.
    Fleet(crate::bench_fleet::FleetBenchArgs),
    /// The cluster on this machine with 1, 2 and 3 nodes next to the single-node engine:
    /// ingest (acknowledged, applied), query throughput and p50/p99 at each consistency
    /// level, recall, and the time a shard takes to move (clean leave, crash).
    Cluster(Box<crate::bench_cluster::ClusterBenchArgs>),
    /// The device agent on a real kernel (WordNet by default): memory at rest and serving,
    /// query latency on the device API, a 1% change's download against the full file,
    /// staging and switch times.
    Agent(crate::bench_agent::AgentBenchArgs),
    /// A kernel on a device: open (mmap, signature, every section hash, shapes) to the
    /// first answered query, repeated; then query latency at the default nprobe / ef.
    Kernel(crate::kernel::KernelBenchArgs),
    /// Retrieval quality on WordNet: query = a lemma, answer = its synset's gloss;
    /// exact search over all embedded glosses; recall@1 and recall@10.
    Wordnet {
        /// Corpus from scripts/wordnet-corpus.sh.
        #[arg(long, default_value = "data/wordnet.jsonl")]
        corpus: PathBuf,
        /// Held-out queries from scripts/wordnet-corpus.sh --queries.
        #[arg(long, default_value = "data/wordnet-queries.jsonl")]
        queries: PathBuf,
        /// Model directory.
        #[arg(long)]
        model_dir: Option<PathBuf>,
    },
}

fn parse_size(s: &str) -> Result<usize> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last() {
        Some('M' | 'm') => (&s[..s.len() - 1], 1_000_000),
        Some('K' | 'k') => (&s[..s.len() - 1], 1_000),
        _ => (s, 1),
    };
    match digits.parse::<usize>() {
        Ok(n) => Ok(n * mult),
        Err(_) => bail!("bad size {s:?}: expected e.g. 10M, 500K or 1000"),
    }
}

pub fn run(cmd: &BenchCmd) -> Result<ExitCode> {
    match cmd {
        BenchCmd::Keys { sizes, distributions, lookups, epsilon, no_btree, seed } => {
            let sizes = sizes.split(',').map(parse_size).collect::<Result<Vec<_>>>()?;
            let distributions = distributions
                .split(',')
                .map(|d| d.trim().parse::<Distribution>().map_err(|e| anyhow::anyhow!("{e}")))
                .collect::<Result<Vec<_>>>()?;
            let cfg = BenchConfig {
                sizes,
                distributions,
                lookups: *lookups,
                epsilon: *epsilon,
                seed: *seed,
                include_btree: !no_btree,
            };
            let rows = kernelize_learned::bench::run(&cfg, &mut |msg| eprintln!("{msg}"));
            println!("{}", kernelize_learned::bench::print_table(&rows));
            println!("{}", kernelize_learned::bench::to_json_line(&rows));
        }
        BenchCmd::Embed { texts, limit, batch, threads, model_dir } => {
            let dir = model_dir.clone().unwrap_or_else(kernelize_embed::Embedder::default_model_dir);
            let e = crate::embedding::load_embedder(&dir)?;
            let texts = crate::embedding::read_texts(texts, *limit)?;
            let r = kernelize_embed::bench::run(&e, &texts, *batch, *threads);
            println!("texts  tokens  batch  threads  median s  texts/s  tokens/s");
            println!(
                "{:>5}  {:>6}  {:>5}  {:>7}  {:>8.3}  {:>7.0}  {:>8.0}",
                r.texts,
                r.tokens,
                r.batch_size,
                r.threads,
                r.median_secs,
                r.texts as f64 / r.median_secs,
                r.tokens as f64 / r.median_secs
            );
            println!("{}", serde_json::to_string(&r)?);
        }
        BenchCmd::Ann(a) => crate::ann::run(a)?,
        BenchCmd::Serve(a) => crate::bench_serve::run(a)?,
        BenchCmd::Fleet(a) => crate::bench_fleet::run(a)?,
        BenchCmd::Cluster(a) => crate::bench_cluster::run(a)?,
        BenchCmd::Agent(a) => crate::bench_agent::run(a)?,
        BenchCmd::Kernel(a) => crate::kernel::bench(a)?,
        BenchCmd::Wordnet { corpus, queries, model_dir } => {
            let dir = model_dir.clone().unwrap_or_else(kernelize_embed::Embedder::default_model_dir);
            let e = crate::embedding::load_embedder(&dir)?;
            wordnet_recall(&e, corpus, queries)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Exact top-k by dot product (vectors are unit-norm, so this is cosine).
fn top_k(corpus: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<usize> {
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    for (i, row) in corpus.chunks_exact(dim).enumerate() {
        let mut acc = [0f32; 8];
        for (a, b) in row.chunks_exact(8).zip(q.chunks_exact(8)) {
            for j in 0..8 {
                acc[j] += a[j] * b[j];
            }
        }
        let s: f32 = acc.iter().sum::<f32>()
            + row
                .chunks_exact(8)
                .remainder()
                .iter()
                .zip(q.chunks_exact(8).remainder())
                .map(|(a, b)| a * b)
                .sum::<f32>();
        if best.len() < k || s > best[best.len() - 1].0 {
            let pos = best.partition_point(|(bs, _)| *bs >= s);
            best.insert(pos, (s, i));
            best.truncate(k);
        }
    }
    best.into_iter().map(|(_, i)| i).collect()
}

fn wordnet_recall(e: &kernelize_embed::Embedder, corpus: &std::path::Path, queries: &std::path::Path) -> Result<()> {
    use rayon::prelude::*;
    let mut ids = Vec::new();
    let mut texts = Vec::new();
    for (i, line) in fs_err::read_to_string(corpus)?.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|err| anyhow::anyhow!("{}:{}: {err}", corpus.display(), i + 1))?;
        ids.push(v["id"].as_str().unwrap_or_default().to_owned());
        texts.push(v["text"].as_str().unwrap_or_default().to_owned());
    }
    let mut qs = Vec::new();
    for (i, line) in fs_err::read_to_string(queries)?.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|err| anyhow::anyhow!("{}:{}: {err}", queries.display(), i + 1))?;
        qs.push((
            v["query"].as_str().unwrap_or_default().to_owned(),
            v["answer_id"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    let index: std::collections::HashMap<&str, usize> =
        ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let t = std::time::Instant::now();
    let mut flat = Vec::with_capacity(texts.len() * e.dim());
    for chunk in texts.chunks(4096) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for v in e.embed(&refs)? {
            flat.extend(v);
        }
        eprintln!("embedded {} / {} glosses", flat.len() / e.dim(), texts.len());
    }
    let embed_secs = t.elapsed().as_secs_f64();
    let qrefs: Vec<&str> = qs.iter().map(|(q, _)| q.as_str()).collect();
    let qv = e.embed(&qrefs)?;
    let dim = e.dim();
    let hits: Vec<(bool, bool)> = qv
        .par_iter()
        .zip(qs.par_iter())
        .map(|(q, (_, answer))| {
            let top = top_k(&flat, dim, q, 10);
            let want = index.get(answer.as_str()).copied();
            (want.is_some_and(|w| top.first() == Some(&w)), want.is_some_and(|w| top.contains(&w)))
        })
        .collect();
    let n = hits.len().max(1) as f64;
    let r1 = hits.iter().filter(|h| h.0).count() as f64 / n;
    let r10 = hits.iter().filter(|h| h.1).count() as f64 / n;
    println!("corpus {} glosses, {} queries, exact search (cosine)", texts.len(), qs.len());
    println!("recall@1 {r1:.4}  recall@10 {r10:.4}  (embedding the corpus took {embed_secs:.1}s)");
    println!(
        "{}",
        serde_json::json!({"bench": "wordnet", "corpus": texts.len(), "queries": qs.len(), "recall_at_1": r1, "recall_at_10": r10, "embed_secs": embed_secs})
    );
    Ok(())
}
