//! `kernelize bench keys`: point lookups over sorted `u64` keys, the learned
//! index against binary search and two classic layouts, same data, same
//! lookups, same thread (one).
//!
//! Methods:
//! - `binary`: `slice::partition_point` on the sorted keys (no index).
//! - `eytzinger`: the keys copied into BFS (Eytzinger) order with a branchless
//!   descent and no software prefetch (prefetching needs `unsafe`
//!   intrinsics, which this crate does not use); its copy of the keys plus a
//!   `u32` rank per key (to turn a tree slot back into a position) count as
//!   index bytes.
//! - `btreemap`: `std::collections::BTreeMap<u64, u32>` (key to first
//!   position), `range(key..).next()`. Its bytes are estimated from the std
//!   node layout, see [`btreemap_bytes_estimate`].
//! - `pgm`: this crate's [`PgmIndex`], `lower_bound`.
//!
//! Lookups are generated up front (90% keys present in the data at uniformly
//! random positions, 5% uniformly random `u64`, 5% a present key plus one);
//! each repetition runs one loop over all of them and folds every answer into
//! a checksum (behind `black_box`), so nothing is optimized away and every
//! method is checked to give the same answers as `binary`.
//!
//! Timing: all structures are built first, then each of [`REPETITIONS`]
//! rounds runs every method once, in turn, so slow phases of a shared machine
//! hit all methods alike; the median round is reported. Times are this
//! thread's on-CPU time from `/proc/thread-self/schedstat` where Linux
//! provides it (time spent waiting for a core is not lookup cost; cache and
//! TLB pollution by other processes still counts), else wall time; the
//! progress lines print wall time too. The loop measures throughput of
//! independent lookups (the CPU may overlap consecutive lookups); a single
//! isolated lookup's latency is higher.

use std::collections::BTreeMap;
use std::fmt;
use std::hint::black_box;
use std::str::FromStr;
use std::time::Instant;

use crate::{DEFAULT_EPSILON, Error, PgmIndex, Result};

/// Timed repetitions of each lookup loop; the median is reported.
pub const REPETITIONS: usize = 7;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Key counts to generate.
    pub sizes: Vec<usize>,
    /// Key distributions to generate.
    pub distributions: Vec<Distribution>,
    /// Lookups per repetition.
    pub lookups: usize,
    /// Error bound of the PGM index.
    pub epsilon: usize,
    /// Seed of the data and lookup generator.
    pub seed: u64,
    /// Whether to measure `BTreeMap` (slow to build and ~15 bytes per key).
    pub include_btree: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            sizes: vec![10_000_000, 100_000_000],
            distributions: Distribution::ALL.to_vec(),
            lookups: 2_000_000,
            epsilon: DEFAULT_EPSILON,
            seed: 42,
            include_btree: true,
        }
    }
}

/// Key distribution of a benchmark data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// `0..n`.
    Dense,
    /// Uniformly random `u64`, sorted (what xxh3 key hashes look like).
    Uniform,
    /// Lognormal(mu = 0, sigma = 2) samples times 10^12, truncated to `u64`.
    Lognormal,
    /// A few hundred dense bursts (mostly consecutive keys, occasional small
    /// gaps) at random offsets; burst sizes are heavy-tailed (Pareto).
    Clustered,
}

impl Distribution {
    /// Every distribution, in report order.
    pub const ALL: [Distribution; 4] =
        [Distribution::Dense, Distribution::Uniform, Distribution::Lognormal, Distribution::Clustered];

    fn name(self) -> &'static str {
        match self {
            Distribution::Dense => "dense",
            Distribution::Uniform => "uniform",
            Distribution::Lognormal => "lognormal",
            Distribution::Clustered => "clustered",
        }
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Distribution {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dense" => Ok(Distribution::Dense),
            "uniform" => Ok(Distribution::Uniform),
            "lognormal" => Ok(Distribution::Lognormal),
            "clustered" | "bursty" => Ok(Distribution::Clustered),
            other => Err(format!("unknown distribution {other:?} (expected dense, uniform, lognormal or clustered)")),
        }
    }
}

/// One measured (size, distribution, method) cell.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// Number of keys.
    pub n: usize,
    /// Key distribution.
    pub distribution: Distribution,
    /// `binary`, `eytzinger`, `btreemap` or `pgm`.
    pub method: &'static str,
    /// Median over [`REPETITIONS`] of the mean time per lookup, nanoseconds
    /// of this thread's on-CPU time where the OS reports it (Linux), else
    /// wall time.
    pub lookup_ns: f64,
    /// Time to build the method's structure from the sorted keys, ms (on-CPU
    /// time where available, like `lookup_ns`).
    pub build_ms: f64,
    /// Index bytes per key, not counting the sorted keys themselves.
    pub index_bytes_per_key: f64,
    /// `binary`'s `lookup_ns` divided by this method's.
    pub speedup_vs_binary: f64,
}

/// Runs the benchmark; see the module docs. `progress` receives one line per
/// step.
///
/// # Panics
/// If a method's answers differ from binary search's (a bug, never a
/// measurement to print); [`try_run`] returns that as an error instead.
pub fn run(cfg: &BenchConfig, progress: &mut dyn FnMut(&str)) -> Vec<BenchRow> {
    match try_run(cfg, progress) {
        Ok(rows) => rows,
        Err(e) => panic!("{e}"),
    }
}

/// [`run`], returning [`Error::BenchMismatch`] when a method's answers differ
/// from binary search's, and [`Error::InvalidEpsilon`] for a bad epsilon.
///
/// # Errors
/// See above.
pub fn try_run(cfg: &BenchConfig, progress: &mut dyn FnMut(&str)) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for &n in &cfg.sizes {
        for &dist in &cfg.distributions {
            let t = Instant::now();
            let keys = generate_keys(dist, n, cfg.seed);
            let lookups = generate_lookups(&keys, cfg.lookups, cfg.seed ^ 0x5EED);
            progress(&format!(
                "{dist} n={n}: generated keys and {} lookups in {:.1}s",
                lookups.len(),
                t.elapsed().as_secs_f64()
            ));
            rows.extend(bench_one(cfg, dist, &keys, &lookups, progress)?);
        }
    }
    Ok(rows)
}

fn bench_one(
    cfg: &BenchConfig,
    dist: Distribution,
    keys: &[u64],
    lookups: &[u64],
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<BenchRow>> {
    let n = keys.len();
    let per_key = |bytes: usize| if n == 0 { 0.0 } else { bytes as f64 / n as f64 };

    // Build everything first, then interleave the methods within each
    // repetition so that noise from other processes hits them alike.
    let t = Clock::start();
    let eyt = Eytzinger::new(keys);
    let eyt_build = t.elapsed().cpu_ms();
    let (map, map_build) = if cfg.include_btree {
        let rss_before = resident_bytes();
        let t = Clock::start();
        let map = build_btreemap(keys);
        let build = t.elapsed().cpu_ms();
        // Only the first map built in a process is measured: later ones reuse
        // memory freed by earlier steps, so the resident set barely grows.
        static MEASURED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let first = !MEASURED.swap(true, std::sync::atomic::Ordering::Relaxed);
        if let (true, Some(a), Some(b)) = (first, rss_before, resident_bytes()) {
            let entries = map.len().max(1) as f64;
            progress(&format!(
                "{dist} n={n}: btreemap estimate {:.1} B/entry; resident set grew {:.1} B/entry while building it",
                btreemap_bytes_estimate(map.len()) as f64 / entries,
                b.saturating_sub(a) as f64 / entries
            ));
        }
        (Some(map), build)
    } else {
        (None, 0.0)
    };
    let t = Clock::start();
    let pgm = PgmIndex::build(keys, cfg.epsilon)?;
    let pgm_build = t.elapsed().cpu_ms();
    progress(&format!(
        "{dist} n={n}: pgm epsilon {} has {} segments, {} levels, {} bytes",
        pgm.epsilon(),
        pgm.segments(),
        pgm.height(),
        pgm.size_bytes()
    ));

    let methods: &[&'static str] =
        if map.is_some() { &["binary", "eytzinger", "btreemap", "pgm"] } else { &["binary", "eytzinger", "pgm"] };
    let mut samples: Vec<Vec<Elapsed>> = vec![Vec::new(); methods.len()];
    let mut sums = vec![0u64; methods.len()];
    for _ in 0..REPETITIONS {
        for (m, &method) in methods.iter().enumerate() {
            let (elapsed, sum) = match method {
                "binary" => time_lookups(lookups, |q| keys.partition_point(|k| *k < q)),
                "eytzinger" => time_lookups(lookups, |q| eyt.lower_bound(q)),
                "btreemap" => match &map {
                    Some(map) => time_lookups(lookups, |q| map.range(q..).next().map_or(n, |(_, &pos)| pos as usize)),
                    None => continue,
                },
                _ => time_lookups(lookups, |q| pgm.lower_bound(keys, q)),
            };
            samples[m].push(elapsed);
            sums[m] = sum;
        }
    }
    for (m, &method) in methods.iter().enumerate() {
        if sums[m] != sums[0] {
            return Err(Error::BenchMismatch(format!(
                "{method} on {dist} n={n}: checksum {:#x}, binary search gave {:#x}",
                sums[m], sums[0]
            )));
        }
    }

    let per_lookup = |e: &[Elapsed]| {
        let count = lookups.len().max(1) as f64;
        (median(e.iter().map(|x| x.cpu_ns as f64 / count)), median(e.iter().map(|x| x.wall_ns as f64 / count)))
    };
    let (binary_ns, _) = per_lookup(&samples[0]);
    let mut rows = Vec::new();
    for (m, &method) in methods.iter().enumerate() {
        let (ns, wall_ns) = per_lookup(&samples[m]);
        let (build_ms, bytes) = match method {
            "binary" => (0.0, 0),
            "eytzinger" => (eyt_build, eyt.size_bytes()),
            "btreemap" => (map_build, map.as_ref().map_or(0, |m| btreemap_bytes_estimate(m.len()))),
            _ => (pgm_build, pgm.size_bytes()),
        };
        progress(&format!("{dist} n={n}: {method} {ns:.1} ns/lookup on CPU, {wall_ns:.1} ns wall"));
        rows.push(BenchRow {
            n,
            distribution: dist,
            method,
            lookup_ns: ns,
            build_ms,
            index_bytes_per_key: per_key(bytes),
            speedup_vs_binary: if ns > 0.0 { binary_ns / ns } else { 0.0 },
        });
    }
    Ok(rows)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One timed loop over all lookups; returns its duration and the checksum of
/// all answers.
fn time_lookups(lookups: &[u64], f: impl Fn(u64) -> usize) -> (Elapsed, u64) {
    let t = Clock::start();
    let mut sum = 0u64;
    for &q in lookups {
        let pos = f(black_box(q)) as u64;
        sum = sum.rotate_left(7) ^ pos;
    }
    let sum = black_box(sum);
    (t.elapsed(), sum)
}

/// Wall time and, where Linux exposes it, the time this thread actually ran
/// on a CPU (`/proc/thread-self/schedstat`, nanoseconds). On a shared machine
/// the latter leaves out the time the thread waited for a core, which is
/// noise, not lookup cost; elsewhere it falls back to wall time.
struct Clock {
    wall: Instant,
    cpu: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Elapsed {
    wall_ns: u64,
    cpu_ns: u64,
}

impl Elapsed {
    fn cpu_ms(self) -> f64 {
        self.cpu_ns as f64 / 1e6
    }
}

impl Clock {
    fn start() -> Self {
        Clock { cpu: thread_cpu_ns(), wall: Instant::now() }
    }

    fn elapsed(&self) -> Elapsed {
        let wall_ns = u64::try_from(self.wall.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let cpu_ns = match (self.cpu, thread_cpu_ns()) {
            (Some(a), Some(b)) if b >= a => b - a,
            _ => wall_ns,
        };
        Elapsed { wall_ns, cpu_ns }
    }
}

/// Resident set size of this process (Linux `/proc/self/status`), to
/// cross-check the `BTreeMap` size estimate.
fn resident_bytes() -> Option<u64> {
    use std::io::Read as _;
    let mut s = String::new();
    std::fs::File::open("/proc/self/status").ok()?.read_to_string(&mut s).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn thread_cpu_ns() -> Option<u64> {
    use std::io::Read as _;
    // Errors are not reported (the caller falls back to wall time), so the
    // plain std file API is fine here.
    let mut s = String::new();
    std::fs::File::open("/proc/thread-self/schedstat").ok()?.read_to_string(&mut s).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Sorted keys following `dist`, deterministic in `seed`.
pub fn generate_keys(dist: Distribution, n: usize, seed: u64) -> Vec<u64> {
    let mut rng = SplitMix64::new(seed ^ (dist as u64).wrapping_mul(0x9E37_79B9));
    let mut keys: Vec<u64> = match dist {
        Distribution::Dense => (0..n as u64).collect(),
        Distribution::Uniform => (0..n).map(|_| rng.next_u64()).collect(),
        Distribution::Lognormal => (0..n)
            .map(|_| {
                // `as` saturates: the rare sample above 2^64 / 10^12 maps to
                // u64::MAX (a duplicate run at the top, which is fine).
                ((2.0 * rng.normal()).exp() * 1e12) as u64
            })
            .collect(),
        Distribution::Clustered => clustered(n, &mut rng),
    };
    keys.sort_unstable();
    keys
}

/// Heavy-tailed burst sizes (Pareto, alpha 1.2) summing to `n`; each burst
/// starts at a random offset inside its own slice of the key space and is
/// mostly consecutive keys, with a gap of 2..=64 after about one key in 16.
fn clustered(n: usize, rng: &mut SplitMix64) -> Vec<u64> {
    const BURSTS: usize = 300;
    if n == 0 {
        return Vec::new();
    }
    let bursts = BURSTS.min(n);
    let weights: Vec<f64> = (0..bursts).map(|_| (1.0 - rng.unit()).powf(-1.0 / 1.2)).collect();
    let total: f64 = weights.iter().sum();
    let mut sizes: Vec<usize> = weights.iter().map(|w| ((w / total) * n as f64) as usize).collect();
    let assigned: usize = sizes.iter().sum();
    sizes[0] += n - assigned.min(n);
    let slot = u64::MAX / bursts as u64;
    let mut keys = Vec::with_capacity(n);
    for (b, &size) in sizes.iter().enumerate() {
        // A burst spans at most 64 * size < slot / 2 for any n below 2^50.
        let mut k = b as u64 * slot + rng.next_u64() % (slot / 2);
        for _ in 0..size {
            keys.push(k);
            let r = rng.next_u64();
            k += if r.is_multiple_of(16) { 2 + (r >> 32) % 63 } else { 1 };
        }
    }
    keys
}

/// Lookup keys for `keys`: 90% present keys at random positions, 5% random
/// `u64`, 5% a present key plus one (usually absent).
pub fn generate_lookups(keys: &[u64], count: usize, seed: u64) -> Vec<u64> {
    let mut rng = SplitMix64::new(seed);
    (0..count)
        .map(|_| {
            let r = rng.next_u64();
            if keys.is_empty() {
                return r;
            }
            let present = keys[(rng.next_u64() % keys.len() as u64) as usize];
            match r % 20 {
                0 => rng.next_u64(),
                1 => present.wrapping_add(1),
                _ => present,
            }
        })
        .collect()
}

/// Keys in Eytzinger (BFS) order, 1-based, with the sorted rank of each slot.
struct Eytzinger {
    tree: Vec<u64>,
    rank: Vec<u32>,
}

impl Eytzinger {
    fn new(sorted: &[u64]) -> Self {
        let n = sorted.len();
        assert!(u32::try_from(n).is_ok(), "eytzinger bench supports < 2^32 keys");
        let mut tree = vec![0u64; n + 1];
        let mut rank = vec![0u32; n + 1];
        // In-order traversal of the implicit tree assigns sorted keys to slots.
        let mut next = 0usize;
        let mut k = 1usize;
        let mut stack: Vec<usize> = Vec::new();
        loop {
            while k <= n {
                stack.push(k);
                k *= 2;
            }
            let Some(top) = stack.pop() else { break };
            tree[top] = sorted[next];
            rank[top] = next as u32;
            next += 1;
            k = 2 * top + 1;
        }
        Eytzinger { tree, rank }
    }

    #[inline]
    fn lower_bound(&self, key: u64) -> usize {
        let n = self.tree.len() - 1;
        let mut k = 1usize;
        while k <= n {
            k = 2 * k + usize::from(self.tree[k] < key);
        }
        // Undo the right turns taken after the last left turn.
        k >>= k.trailing_ones() + 1;
        if k == 0 { n } else { self.rank[k] as usize }
    }

    fn size_bytes(&self) -> usize {
        self.tree.capacity() * 8 + self.rank.capacity() * 4
    }
}

/// Builds the `BTreeMap` baseline: each distinct key to its first position.
fn build_btreemap(keys: &[u64]) -> BTreeMap<u64, u32> {
    let mut pairs: Vec<(u64, u32)> = Vec::with_capacity(keys.len());
    for (i, &k) in keys.iter().enumerate() {
        if pairs.last().map(|p| p.0) != Some(k) {
            pairs.push((k, i as u32));
        }
    }
    // Sorted input: `from_iter` bulk-loads full nodes.
    pairs.into_iter().collect()
}

/// Estimated heap bytes of a bulk-loaded `BTreeMap<u64, u32>` with `entries`
/// entries. std's B-tree (B = 6) holds up to 11 entries per node; a leaf is
/// `parent` 8 + `parent_idx` 2 + `len` 2 + keys 11 * 8 + values 11 * 4 = 144
/// bytes, an internal node adds 12 edges * 8 = 240 bytes. Bulk loading from a
/// sorted iterator fills nodes completely, and about one node in 12 is
/// internal. glibc malloc adds an 8-byte header and rounds to 16, so a leaf
/// occupies 160 bytes and an internal node 256: 15.3 bytes per entry. The
/// benchmark cross-checks this against the growth of the process's resident
/// set while it builds its first map (it printed 15.3 bytes per entry for 10M
/// dense keys).
pub fn btreemap_bytes_estimate(entries: usize) -> usize {
    let nodes = entries.div_ceil(11);
    let internal = nodes / 12;
    let leaves = nodes - internal;
    leaves * 160 + internal * 256
}

/// An aligned human-readable table.
pub fn print_table(rows: &[BenchRow]) -> String {
    let header = ["n", "distribution", "method", "lookup ns", "vs binary", "build ms", "index B/key"];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                human_count(r.n),
                r.distribution.to_string(),
                r.method.to_string(),
                format!("{:.1}", r.lookup_ns),
                format!("{:.2}x", r.speedup_vs_binary),
                format!("{:.1}", r.build_ms),
                format!("{:.4}", r.index_bytes_per_key),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[&str]| {
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            // Text columns left-aligned, numbers right-aligned.
            if (1..=2).contains(&i) {
                out.push_str(&format!("{c:<w$}"));
            } else {
                out.push_str(&format!("{c:>w$}"));
            }
        }
        out.push('\n');
    };
    line(&mut out, &header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, &rule.iter().map(String::as_str).collect::<Vec<_>>());
    for row in &cells {
        line(&mut out, &row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// All rows as one JSON line: `{"bench":"keys","rows":[...]}`.
pub fn to_json_line(rows: &[BenchRow]) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "n": r.n,
                "distribution": r.distribution.to_string(),
                "method": r.method,
                "lookup_ns": r.lookup_ns,
                "build_ms": r.build_ms,
                "index_bytes_per_key": r.index_bytes_per_key,
                "speedup_vs_binary": r.speedup_vs_binary,
            })
        })
        .collect();
    serde_json::json!({ "bench": "keys", "rows": rows }).to_string()
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and fixed forever, so a
/// seed names the same data set in every version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller; one of the pair is discarded).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_run_agrees_and_formats() {
        let cfg = BenchConfig {
            sizes: vec![20_000],
            distributions: Distribution::ALL.to_vec(),
            lookups: 5_000,
            epsilon: 16,
            seed: 7,
            include_btree: true,
        };
        let mut lines = Vec::new();
        let rows = try_run(&cfg, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(rows.len(), 16);
        assert!(!lines.is_empty());
        let table = print_table(&rows);
        assert_eq!(table.lines().count(), 18);
        let json: serde_json::Value = serde_json::from_str(&to_json_line(&rows)).unwrap();
        assert_eq!(json["rows"].as_array().unwrap().len(), 16);
    }

    #[test]
    fn distributions_parse_and_generate_sorted() {
        for d in Distribution::ALL {
            assert_eq!(d.to_string().parse::<Distribution>().unwrap(), d);
            let keys = generate_keys(d, 10_000, 1);
            assert_eq!(keys.len(), 10_000);
            assert!(keys.is_sorted());
        }
        assert!("zipf".parse::<Distribution>().is_err());
    }

    #[test]
    fn eytzinger_matches_partition_point() {
        for n in [0usize, 1, 2, 3, 7, 8, 100, 1023, 1024, 1025] {
            let keys: Vec<u64> = (0..n as u64).map(|i| i * 3 / 2).collect();
            let e = Eytzinger::new(&keys);
            for q in 0..(n as u64 * 2 + 3) {
                assert_eq!(e.lower_bound(q), keys.partition_point(|k| *k < q));
            }
        }
    }
}
