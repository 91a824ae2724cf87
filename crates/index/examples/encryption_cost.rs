//! The cost of encryption at rest on ingest and search: the same records into a plain
//! and an encrypted data directory (alternating, median of `--runs`), then the same
//! queries against each once its segment indexes are resident.
//!
//! `cargo run --release -p kernelize-index --example encryption_cost -- [records] [dim] [runs] [dir]`
//! Prints a table and one JSON line. Ingest is timed on the wall clock and in CPU time
//! (the whole process: sealing threads included, fsync waits not), since the fsync-bound
//! wall time of a VM moves more between repetitions than encryption costs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, reason = "a benchmark program")]

use kernelize_index::search::{IndexCache, Query, Searcher};
use kernelize_store::{CollectionConfig, Database, MasterKey, Metric, Options, Record};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::path::Path;
use std::time::Instant;

fn vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let v: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-9);
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect()
}

fn open(dir: &Path, key: Option<&MasterKey>) -> Database {
    Database::open_keyed(dir, Options::default(), key).unwrap()
}

/// CPU seconds this process has used so far, every thread (live or joined) included; time
/// spent waiting for an fsync is not CPU time.
#[allow(unsafe_code, reason = "clock_gettime through libc")]
fn process_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call to fill in.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Wall and CPU seconds to upsert everything in batches of 1,000 (durability always) and
/// flush.
fn ingest(dir: &Path, key: Option<&MasterKey>, data: &[Vec<f32>]) -> (f64, f64) {
    if let Some(k) = key {
        kernelize_store::init_encrypted(dir, k).unwrap();
    }
    let db = open(dir, key);
    let c = db.create_collection("b", CollectionConfig::new(data[0].len(), Metric::Cosine)).unwrap();
    let (t, cpu) = (Instant::now(), process_cpu());
    for (b, chunk) in data.chunks(1000).enumerate() {
        let recs = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                id: format!("r{}", b * 1000 + i),
                vector: v.clone(),
                text: Some(format!("text of record {}", b * 1000 + i)),
                metadata: None,
            })
            .collect();
        c.upsert(recs).unwrap();
    }
    c.flush().unwrap();
    (t.elapsed().as_secs_f64(), process_cpu() - cpu)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let dim: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(384);
    let runs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let base = args.get(4).map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let key = MasterKey::from_bytes([7; 32]);
    let data = vectors(n, dim, 1);
    let queries = vectors(1000, dim, 2);
    let (mut plain, mut enc) = (Vec::new(), Vec::new());
    let (mut plain_cpu, mut enc_cpu) = (Vec::new(), Vec::new());
    let root = tempfile::tempdir_in(&base).unwrap();
    // `KZ_ONLY=plain|encrypted`: ingest only that kind and stop (for profiling one side).
    let only = std::env::var("KZ_ONLY").ok();
    let kinds: Vec<bool> = match only.as_deref() {
        Some("plain") => vec![false],
        Some("encrypted") => vec![true],
        _ => vec![false, true],
    };
    for r in 0..runs {
        for &encrypted in &kinds {
            let dir = root.path().join(format!("{}-{r}", if encrypted { "enc" } else { "plain" }));
            let (s, cpu) = ingest(&dir, encrypted.then_some(&key), &data);
            if encrypted {
                enc.push(s);
                enc_cpu.push(cpu);
            } else {
                plain.push(s);
                plain_cpu.push(cpu);
            }
        }
    }
    if only.is_some() {
        println!("ingest (s): plain {plain:?} encrypted {enc:?}; CPU (s): plain {plain_cpu:?} encrypted {enc_cpu:?}");
        return;
    }
    // Search: reopen the last run of each, build indexes, warm up, then time the queries.
    let mut qps = Vec::new();
    let mut open_s = Vec::new();
    for encrypted in [false, true] {
        let dir = root.path().join(format!("{}-{}", if encrypted { "enc" } else { "plain" }, runs - 1));
        let t = Instant::now();
        let db = open(&dir, encrypted.then_some(&key));
        let c = db.collection("b").unwrap();
        let cache = IndexCache::new();
        cache.ensure(&c, &**db.storage()).unwrap();
        open_s.push(t.elapsed().as_secs_f64());
        let searcher = Searcher::new(&c, &**db.storage(), &cache);
        let q = |v: &Vec<f32>| Query { vector: Some(v.clone()), k: 10, ..Query::default() };
        for v in queries.iter().take(100) {
            searcher.search(&q(v)).unwrap();
        }
        let mut best = 0f64;
        for _ in 0..3 {
            let t = Instant::now();
            for v in &queries {
                searcher.search(&q(v)).unwrap();
            }
            best = best.max(queries.len() as f64 / t.elapsed().as_secs_f64());
        }
        qps.push(best);
    }
    let (p, e) = (median(plain.clone()), median(enc.clone()));
    let (pc, ec) = (median(plain_cpu.clone()), median(enc_cpu.clone()));
    println!("| | plain | encrypted | encrypted / plain |");
    println!("|---|---:|---:|---:|");
    println!(
        "| ingest {n} x {dim}-dim, batches of 1000, durability always (s, median of {runs}) | {p:.3} | {e:.3} | {:.3} |",
        e / p
    );
    println!("| ingest CPU, every thread (s, median of {runs}) | {pc:.3} | {ec:.3} | {:.3} |", ec / pc);
    println!("| ingest records/s | {:.0} | {:.0} | {:.3} |", n as f64 / p, n as f64 / e, p / e);
    println!("| open + build index (s) | {:.3} | {:.3} | {:.3} |", open_s[0], open_s[1], open_s[1] / open_s[0]);
    println!(
        "| search k=10, 1000 queries, 1 thread (queries/s, best of 3) | {:.0} | {:.0} | {:.3} |",
        qps[0],
        qps[1],
        qps[1] / qps[0]
    );
    println!(
        "{}",
        serde_json::json!({"bench": "encryption_cost", "records": n, "dim": dim, "runs": runs,
            "ingest_plain_s": plain, "ingest_encrypted_s": enc, "ingest_slowdown": e / p - 1.0,
            "ingest_plain_cpu_s": plain_cpu, "ingest_encrypted_cpu_s": enc_cpu, "ingest_cpu_ratio": ec / pc,
            "open_index_s": open_s, "search_qps": qps, "search_ratio": qps[1] / qps[0]})
    );
}
