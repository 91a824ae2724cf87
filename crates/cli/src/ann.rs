//! `kernelize bench ann`: approximate nearest-neighbour search on a real collection
//! (the WordNet glosses embedded with MiniLM), for each index kind and thread count:
//! build time, index bytes, resident memory, and recall@10 / QPS over an `ef` sweep;
//! then filtered search at two selectivities against exact filtered search. It also
//! writes the vectors, queries and ground truth as `.npy` for the peers' script
//! (`scripts/bench/ann_peers.py`), so every system runs on the same data.

use anyhow::{Context, Result, bail};
use kernelize_index::filter::Filter;
use kernelize_index::search::{IndexCache, Mode, Plan, Query, Searcher};
use kernelize_index::segment_index::{self, SegmentIndex};
use kernelize_store::{Database, IndexSettings, Mapped, Options, Quantization};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `bench ann` settings.
#[derive(clap::Args, Debug)]
pub struct AnnArgs {
    /// Data directory holding the collection.
    #[arg(long, default_value = "data/ann-db")]
    pub data_dir: PathBuf,
    /// Collection (compacted to one segment first if it has several or a memtable).
    #[arg(long, default_value = "wordnet")]
    pub collection: String,
    /// Held-out queries (`{"query": …}` lines from scripts/wordnet-corpus.sh --queries).
    #[arg(long, default_value = "data/wordnet-queries.jsonl")]
    pub queries: PathBuf,
    /// Queries to use.
    #[arg(long, default_value_t = 1000)]
    pub n_queries: usize,
    /// Index kinds: none (f32), int8, rabitq1, rabitq4.
    #[arg(long, default_value = "none,int8,rabitq1,rabitq4")]
    pub quantization: String,
    /// Thread counts (build and search).
    #[arg(long, default_value = "1,2")]
    pub threads: String,
    /// Beam widths.
    #[arg(long, default_value = "10,16,24,32,48,64,96,128,192,256")]
    pub ef: String,
    /// HNSW links per node.
    #[arg(long, default_value_t = 16)]
    pub m: usize,
    /// HNSW build beam.
    #[arg(long, default_value_t = 200)]
    pub ef_construction: usize,
    /// Timed passes over the queries per point (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Where to write base.npy, queries.npy and gt.npy for the peers.
    #[arg(long, default_value = "data/ann")]
    pub export_dir: PathBuf,
    /// Reuse the collection's own index file (built if missing) for the index kind the
    /// collection is configured with, instead of timing a fresh build.
    #[arg(long)]
    pub reuse: bool,
    /// Don't write the .npy files.
    #[arg(long, conflicts_with = "export_only")]
    pub no_export: bool,
    /// Only write the .npy files (for `scripts/bench/kernel_peers.py`), no benchmark.
    #[arg(long)]
    pub export_only: bool,
    /// Filters for the filtered benchmark (`;`-separated), with the collection's index.
    #[arg(long, default_value = "lexname = \"noun.artifact\";lexname = \"noun.quantity\"")]
    pub filters: String,
    /// Beam widths for the filtered benchmark.
    #[arg(long, default_value = "32,64,128")]
    pub filter_ef: String,
    /// Model directory (to embed the queries).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

fn list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>> {
    s.split(',').map(|x| x.trim().parse::<T>().map_err(|_| anyhow::anyhow!("--{what}: cannot parse {x:?}"))).collect()
}

/// Writes a C-order little-endian `.npy` (version 1.0).
fn write_npy(path: &Path, descr: &str, shape: (usize, usize), data: &[u8]) -> Result<()> {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {}), }}", shape.0, shape.1);
    let mut header = dict.into_bytes();
    let total = 10 + header.len() + 1;
    header.resize(header.len() + total.next_multiple_of(64) - total, b' ');
    header.push(b'\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    fs_err::write(path, out)?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn recall_at(got: &[Vec<u32>], truth: &[Vec<u32>], k: usize) -> f64 {
    let hits: usize =
        got.iter().zip(truth).map(|(g, t)| g.iter().take(k).filter(|x| t[..k.min(t.len())].contains(x)).count()).sum();
    hits as f64 / (k * got.len().max(1)) as f64
}

pub fn run(a: &AnnArgs) -> Result<()> {
    let kinds: Vec<Quantization> = list(&a.quantization, "quantization")?;
    let threads: Vec<usize> = list(&a.threads, "threads")?;
    let efs: Vec<usize> = list(&a.ef, "ef")?;
    let filter_efs: Vec<usize> = list(&a.filter_ef, "filter-ef")?;
    let db = Database::open(&a.data_dir, Options::default())?;
    let coll = db.collection(&a.collection)?;
    {
        let snap = coll.snapshot();
        if snap.segments().len() != 1 || !snap.memtable().is_empty() {
            eprintln!("compacting {} into one segment (the peers build one index too)", a.collection);
            coll.compact()?;
        }
    }
    let snap = coll.snapshot();
    let seg = snap.segments().first().context("the collection is empty")?.clone();
    let (n, dim) = (seg.len(), seg.dim());
    let metric = coll.config().metric;
    if seg.vectors().is_none() || (0..n).any(|i| seg.is_tombstone(i)) {
        bail!("bench ann needs a compacted collection without tombstones on a little-endian host");
    }
    let vectors = seg.vectors().unwrap_or_default();

    // Queries: the first n held-out lemmas, embedded like the corpus.
    let dir = a.model_dir.clone().unwrap_or_else(kernelize_embed::Embedder::default_model_dir);
    let e = crate::embedding::load_embedder(&dir)?;
    let text = fs_err::read_to_string(&a.queries)?;
    let mut qtexts = Vec::new();
    for (i, line) in text.lines().take(a.n_queries).enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}", a.queries.display(), i + 1))?;
        qtexts.push(v["query"].as_str().unwrap_or_default().to_owned());
    }
    let refs: Vec<&str> = qtexts.iter().map(String::as_str).collect();
    let queries: Vec<Vec<f32>> = e.embed(&refs)?;
    drop(e);

    // Ground truth: exact top-100 by the collection's metric.
    let t = Instant::now();
    let inv = kernelize_index::space::inverse_norms(vectors, dim);
    let exact = kernelize_index::space::F32Space::new(vectors, dim, metric, &inv);
    let truth: Vec<Vec<u32>> = queries
        .par_iter()
        .map(|q| {
            use kernelize_index::hnsw::{Cand, Space};
            let pq = kernelize_index::space::prepare_query(metric, q);
            let mut c: Vec<Cand> = (0..n as u32).map(|i| Cand { d: exact.dist(&pq, i), id: i }).collect();
            c.select_nth_unstable(99);
            c.truncate(100);
            c.sort_unstable();
            c.into_iter().map(|c| c.id).collect()
        })
        .collect();
    eprintln!("ground truth: {} queries x {n} vectors, exact, in {:.1}s", queries.len(), t.elapsed().as_secs_f64());

    if !a.no_export {
        fs_err::create_dir_all(&a.export_dir)?;
        let norm = |v: &[f32]| {
            let mut v = v.to_vec();
            kernelize_index::distance::normalize(&mut v);
            v
        };
        let base: Vec<u8> = vectors.chunks_exact(dim).flat_map(norm).flat_map(f32::to_le_bytes).collect();
        write_npy(&a.export_dir.join("base.npy"), "<f4", (n, dim), &base)?;
        let qb: Vec<u8> = queries.iter().flat_map(|q| norm(q)).flat_map(f32::to_le_bytes).collect();
        write_npy(&a.export_dir.join("queries.npy"), "<f4", (queries.len(), dim), &qb)?;
        let gb: Vec<u8> = truth.iter().flatten().flat_map(|&i| (i as i32).to_le_bytes()).collect();
        write_npy(&a.export_dir.join("gt.npy"), "<i4", (queries.len(), 100), &gb)?;
        eprintln!("wrote base.npy, queries.npy, gt.npy to {}", a.export_dir.display());
    }
    if a.export_only {
        return Ok(());
    }

    println!(
        "{:<16} {:>3} {:>8} {:>10} {:>10} {:>5} {:>9} {:>10}",
        "system", "thr", "build s", "index MB", "vecmem MB", "ef", "recall@10", "QPS"
    );
    for &kind in &kinds {
        let settings = IndexSettings { m: a.m, ef_construction: a.ef_construction, quantization: kind };
        for &t in &threads {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
            let started = Instant::now();
            let (ix, index_bytes) = if a.reuse && settings == coll.config().index {
                let (ix, _) = IndexCache::new().get(&**db.storage(), &seg, metric, settings)?;
                let len = fs_err::metadata(ix.path())?.len() as usize;
                (ix, len)
            } else {
                let bytes = pool.install(|| segment_index::build(&seg, metric, settings))?;
                let len = bytes.len();
                let ix = SegmentIndex::from_mapped(PathBuf::from("(memory)"), Mapped::new(bytes), &seg)?;
                (std::sync::Arc::new(ix), len)
            };
            let build_secs = started.elapsed().as_secs_f64();
            let mem = ix.memory();
            let name =
                format!("kernelize-{}", if kind == Quantization::None { "f32".into() } else { kind.to_string() });
            for &ef in &efs {
                let mut secs = Vec::new();
                let mut got: Vec<Vec<u32>> = Vec::new();
                // One untimed warm-up pass, then the timed ones.
                for pass in 0..=a.repeats {
                    let t0 = Instant::now();
                    got = pool.install(|| {
                        queries
                            .par_iter()
                            .with_min_len(queries.len().div_ceil(t))
                            .map(|q| {
                                ix.search(&seg, q, 10, ef, &|_| true)
                                    .map(|r| r.into_iter().map(|c| c.id).collect::<Vec<u32>>())
                                    .unwrap_or_default()
                            })
                            .collect()
                    });
                    if pass > 0 {
                        secs.push(t0.elapsed().as_secs_f64());
                    }
                }
                let med = median(secs);
                let recall = recall_at(&got, &truth, 10);
                let qps = queries.len() as f64 / med;
                println!(
                    "{:<16} {:>3} {:>8.1} {:>10.1} {:>10.1} {:>5} {:>9.4} {:>10.0}",
                    name,
                    t,
                    build_secs,
                    index_bytes as f64 / 1e6,
                    mem.vectors as f64 / 1e6,
                    ef,
                    recall,
                    qps
                );
                println!(
                    "{}",
                    serde_json::json!({"bench": "ann", "system": name, "threads": t, "M": a.m,
                        "ef_construction": a.ef_construction, "ef": ef, "k": 10, "recall_at_10": recall,
                        "qps": qps, "build_secs": build_secs, "graph_secs": ix.meta().graph_secs, "index_bytes": index_bytes, "memory": mem,
                        "n": n, "dim": dim, "queries": queries.len(), "simd": format!("{:?}", kernelize_index::distance::level())})
                );
            }
        }
    }

    // Filtered search through the collection's own index and planner.
    let cache = IndexCache::new();
    let searcher = Searcher::new(&coll, &**db.storage(), &cache);
    for expr in a.filters.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let filter = Filter::parse(expr)?;
        let matching = (0..n)
            .filter(|&i| {
                seg.entry(i).ok().is_some_and(|(_, e)| e.record.is_some_and(|r| filter.matches(r.metadata.as_ref())))
            })
            .count();
        for &ef in &filter_efs {
            let run = |exact: bool, plan: Plan| -> Result<(Vec<Vec<String>>, f64)> {
                let t0 = Instant::now();
                let mut out = Vec::new();
                for q in &queries {
                    let query = Query {
                        vector: Some(q.clone()),
                        k: 10,
                        ef: Some(ef),
                        filter: Some(filter.clone()),
                        mode: Mode::Vector,
                        exact,
                        plan,
                        ..Query::default()
                    };
                    out.push(searcher.search(&query)?.into_iter().map(|h| h.id).collect());
                }
                Ok((out, t0.elapsed().as_secs_f64()))
            };
            let (truth_ids, _) = run(true, Plan::Auto)?;
            for plan in [Plan::Auto, Plan::Walk] {
                let (got, secs) = run(false, plan)?;
                let hits: usize =
                    got.iter().zip(&truth_ids).map(|(g, t)| g.iter().filter(|x| t.contains(x)).count()).sum();
                let wanted: usize = truth_ids.iter().map(Vec::len).sum();
                let recall = hits as f64 / wanted.max(1) as f64;
                let qps = queries.len() as f64 / secs;
                let sel = matching as f64 / n as f64;
                println!(
                    "filtered {expr:<28} selectivity {:>5.2}% ef {ef:>4} plan {plan:<5}: recall@10 {recall:.4}, {qps:.0} QPS (1 thread, records decoded)",
                    sel * 100.0,
                    plan = format!("{plan:?}").to_lowercase()
                );
                println!(
                    "{}",
                    serde_json::json!({"bench": "ann-filtered", "filter": expr, "selectivity": sel, "ef": ef, "k": 10,
                        "plan": plan, "recall_at_10": recall, "qps": qps, "threads": 1})
                );
            }
        }
    }
    Ok(())
}
