//! The shared synthetic corpus, the collections built from it, and search helpers.
//!
//! Every id `r{i:05}` (`i < N`) gets a clustered vector, metadata
//! `{"cat": "c{i%10}", "rare": i%100 == 0, "n": i}` and a text drawn from a small,
//! skewed vocabulary. Some ids are written more than once (see [`final_version`]); the
//! versions a later write replaces carry the word `stale`, the last version of a rewritten
//! id carries `fresh`. Two documents carry a word no other document has: [`RARE_SEG_ID`]
//! (`quixotic`, in the oldest segment) and [`RARE_MEM_ID`] (`zanzibar`, in the memtable).
//!
//! [`build`] writes the corpus in four stages, flushing after the first three, so a
//! collection has three segments (newest first: ids 2800..3400; ids 1400..2800 plus the
//! first rewrite of some older ids; ids 0..1400) and a memtable (ids 3400..4000 plus the
//! rewrites of ids from the first two segments, some of them for the second time).

use kernelize_index::filter::Filter;
use kernelize_index::search::{Hit, IndexCache, Mode, Plan, Query, Searcher};
use kernelize_store::{
    Collection, CollectionConfig, Database, Durability, IndexSettings, Metric, Options, Quantization, Record, Storage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde_json::json;
use std::collections::HashSet;

/// Vector dimension.
pub const DIM: usize = 32;
/// Distinct ids.
pub const N: usize = 4000;
/// Vector clusters.
pub const CLUSTERS: usize = 40;
/// Per-dimension standard deviation of points around their cluster center.
pub const SPREAD: f32 = 0.35;
/// Seed of everything random in the corpus.
pub const SEED: u64 = 0x6b7a_7465_7374;
/// The id whose text alone holds `quixotic` (stored in the oldest segment).
pub const RARE_SEG_ID: usize = 1234;
/// The id whose text alone holds `zanzibar` (stored in the memtable).
pub const RARE_MEM_ID: usize = 3777;

/// Words of the generated texts; earlier words are more frequent.
pub const VOCAB: [&str; 40] = [
    "apple", "river", "mountain", "forest", "ocean", "desert", "silver", "golden", "bright", "ancient", "music",
    "poetry", "science", "history", "garden", "window", "bridge", "castle", "engine", "rocket", "planet", "comet",
    "winter", "summer", "autumn", "coffee", "paper", "letter", "market", "harbor", "island", "valley", "thunder",
    "violin", "marble", "lantern", "compass", "glacier", "meadow", "falcon",
];

/// The id string of record `i`.
pub fn id(i: usize) -> String {
    format!("r{i:05}")
}

/// The index of an id made by [`id`].
pub fn index_of(id: &str) -> usize {
    id[1..].parse().expect("fixture ids are r{i:05}")
}

/// How many times id `i` is rewritten after its first write (its last version).
pub fn final_version(i: usize) -> u32 {
    if i < 1400 {
        if i % 200 == 3 {
            2 // first rewrite in the second segment, second in the memtable
        } else if i % 20 == 3 || i % 50 == 17 {
            1 // rewritten in the second segment (i % 20 == 3) or in the memtable
        } else {
            0
        }
    } else if i < 2800 && i % 25 == 4 {
        1 // rewritten in the memtable
    } else {
        0
    }
}

/// The seeded cluster centers.
pub fn centers() -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(SEED);
    let unit = Normal::new(0.0f32, 1.0).expect("valid normal");
    (0..CLUSTERS).map(|_| (0..DIM).map(|_| unit.sample(&mut rng)).collect()).collect()
}

fn rng_for(i: usize, version: u32, salt: u64) -> StdRng {
    let mix = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (u64::from(version) << 48) ^ salt.rotate_left(17);
    StdRng::seed_from_u64(SEED ^ mix)
}

fn around(center: &[f32], rng: &mut StdRng) -> Vec<f32> {
    let noise = Normal::new(0.0f32, SPREAD).expect("valid normal");
    center.iter().map(|c| c + noise.sample(rng)).collect()
}

/// The vector of version `version` of id `i`: a random cluster's center plus noise.
pub fn vector(centers: &[Vec<f32>], i: usize, version: u32) -> Vec<f32> {
    let mut rng = rng_for(i, version, 1);
    let c = rng.random_range(0..CLUSTERS);
    around(&centers[c], &mut rng)
}

/// `count` seeded query vectors drawn like the data (none equal to a stored vector).
pub fn queries(centers: &[Vec<f32>], count: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let c = rng.random_range(0..CLUSTERS);
            around(&centers[c], &mut rng)
        })
        .collect()
}

/// The text of version `version` of id `i`.
pub fn text(i: usize, version: u32) -> String {
    let mut rng = rng_for(i, version, 2);
    let len = rng.random_range(6..=14);
    let mut words: Vec<&str> = (0..len)
        .map(|_| {
            let u: f64 = rng.random();
            VOCAB[((u * u) * VOCAB.len() as f64) as usize]
        })
        .collect();
    let last = final_version(i);
    if version < last {
        words.push("stale");
    } else if last > 0 {
        words.push("fresh");
    }
    if i == RARE_SEG_ID {
        words.push("quixotic");
    }
    if i == RARE_MEM_ID {
        words.push("zanzibar");
    }
    words.join(" ")
}

/// Version `version` of record `i`.
pub fn record(centers: &[Vec<f32>], i: usize, version: u32) -> Record {
    let meta = json!({ "cat": format!("c{}", i % 10), "rare": i.is_multiple_of(100), "n": i });
    Record {
        id: id(i),
        vector: vector(centers, i, version),
        text: Some(text(i, version)),
        metadata: meta.as_object().cloned(),
    }
}

/// The current (last written) record of id `i`.
pub fn current(centers: &[Vec<f32>], i: usize) -> Record {
    record(centers, i, final_version(i))
}

/// Options for the test databases: buffered durability (no fsync per batch) and a
/// memtable that never fills by itself (the fixture flushes explicitly).
pub fn options() -> Options {
    Options { durability: Durability::Buffered, ..Options::default() }
}

/// A cosine collection config of dimension [`DIM`] with `quantization`.
pub fn config(quantization: Quantization) -> CollectionConfig {
    let mut c = CollectionConfig::new(DIM, Metric::Cosine);
    c.index = IndexSettings { quantization, ..IndexSettings::default() };
    c
}

fn upsert_chunked(c: &Collection, records: Vec<Record>) {
    let mut it = records.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<Record> = it.by_ref().take(500).collect();
        c.upsert(chunk).expect("upsert");
    }
}

/// Creates collection `name` in `db` and writes the corpus into three segments and a
/// memtable (see the module doc).
pub fn build(db: &Database, name: &str, quantization: Quantization) -> Collection {
    let centers = centers();
    let c = db.create_collection(name, config(quantization)).expect("create collection");
    let v0 = |r: std::ops::Range<usize>| r.map(|i| record(&centers, i, 0)).collect::<Vec<_>>();
    // Segment 1 (oldest).
    upsert_chunked(&c, v0(0..1400));
    c.flush().expect("flush");
    // Segment 2: new ids and the first rewrite of some segment-1 ids.
    let mut batch = v0(1400..2800);
    batch.extend((0..1400).filter(|i| i % 20 == 3).map(|i| record(&centers, i, 1)));
    upsert_chunked(&c, batch);
    c.flush().expect("flush");
    // Segment 3 (newest).
    upsert_chunked(&c, v0(2800..3400));
    c.flush().expect("flush");
    // Memtable: new ids and rewrites of ids in both older segments.
    let mut batch = v0(3400..N);
    batch.extend((0..1400).filter(|i| i % 50 == 17).map(|i| record(&centers, i, 1)));
    batch.extend((0..1400).filter(|i| i % 200 == 3).map(|i| record(&centers, i, 2)));
    batch.extend((1400..2800).filter(|i| i % 25 == 4).map(|i| record(&centers, i, 1)));
    upsert_chunked(&c, batch);
    let snap = c.snapshot();
    assert_eq!(snap.segments().len(), 3, "fixture: three segments");
    assert!(!snap.memtable().is_empty(), "fixture: a non-empty memtable");
    c
}

/// A [`Searcher`]-running helper: everything a test needs to query one collection.
pub struct Ctx<'a> {
    /// The collection.
    pub coll: &'a Collection,
    /// Its storage.
    pub storage: &'a dyn Storage,
    /// The index cache.
    pub cache: &'a IndexCache,
}

impl Ctx<'_> {
    /// Runs `q`, panicking on error, and checks the invariants every result must hold:
    /// at most `k` hits, no id twice, and every hit is the id's current record.
    pub fn search(&self, q: &Query) -> Vec<Hit> {
        let hits = Searcher::new(self.coll, self.storage, self.cache).search(q).expect("search");
        assert!(hits.len() <= q.k, "{} hits for k = {}", hits.len(), q.k);
        let mut seen = HashSet::new();
        let snap = self.coll.snapshot();
        for h in &hits {
            assert!(seen.insert(h.id.clone()), "id {} returned twice", h.id);
            assert_eq!(h.id, h.record.id, "hit id and record id differ");
            let now = snap.get(&h.id).expect("get").unwrap_or_else(|| panic!("returned id {} is deleted", h.id));
            assert!(*now == *h.record, "hit {} is not the id's current record", h.id);
        }
        hits
    }

    /// The error `q` fails with (panics if it succeeds).
    pub fn search_err(&self, q: &Query) -> kernelize_index::search::SearchError {
        match Searcher::new(self.coll, self.storage, self.cache).search(q) {
            Ok(h) => panic!("query {q:?} should fail, returned {} hits", h.len()),
            Err(e) => e,
        }
    }

    /// Mean recall@`k` of approximate against exact search over `queries`.
    pub fn recall(&self, queries: &[Vec<f32>], k: usize, ef: Option<usize>, filter: Option<&Filter>) -> f64 {
        self.recall_with(queries, k, ef, filter, Plan::Auto)
    }

    /// Like [`Ctx::recall`], with the filtered-query plan given.
    pub fn recall_with(
        &self,
        queries: &[Vec<f32>],
        k: usize,
        ef: Option<usize>,
        filter: Option<&Filter>,
        plan: Plan,
    ) -> f64 {
        let mut sum = 0.0;
        for v in queries {
            let mut q = vq(v, k);
            q.ef = ef;
            q.plan = plan;
            q.filter = filter.cloned();
            let approx = self.search(&q);
            q.exact = true;
            let exact = self.search(&q);
            sum += recall(&approx, &exact);
        }
        sum / queries.len() as f64
    }
}

/// A vector query for the `k` nearest records.
pub fn vq(v: &[f32], k: usize) -> Query {
    Query { vector: Some(v.to_vec()), k, mode: Mode::Vector, ..Query::default() }
}

/// A keyword query.
pub fn kq(text: &str, k: usize) -> Query {
    Query { text: Some(text.to_owned()), k, mode: Mode::Keyword, ..Query::default() }
}

/// A hybrid query.
pub fn hq(v: &[f32], text: &str, k: usize) -> Query {
    Query { vector: Some(v.to_vec()), text: Some(text.to_owned()), k, mode: Mode::Hybrid, ..Query::default() }
}

/// The ids of `hits`, in order.
pub fn ids(hits: &[Hit]) -> Vec<String> {
    hits.iter().map(|h| h.id.clone()).collect()
}

/// Fraction of the ground truth's ids that `approx` found (1 when the truth is empty).
pub fn recall(approx: &[Hit], truth: &[Hit]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let found: HashSet<&str> = approx.iter().map(|h| h.id.as_str()).collect();
    truth.iter().filter(|h| found.contains(h.id.as_str())).count() as f64 / truth.len() as f64
}

/// Cosine similarity in f64, independent of the library's kernels.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na.sqrt() * nb.sqrt()) }
}

/// Brute force over a snapshot scan: the `k` most cosine-similar live records matching
/// `filter`, as (id, similarity), most similar first.
pub fn brute_force(coll: &Collection, v: &[f32], k: usize, filter: Option<&Filter>) -> Vec<(String, f64)> {
    let snap = coll.snapshot();
    let mut all: Vec<(String, f64)> = snap
        .scan(None)
        .map(|r| r.expect("scan"))
        .filter(|r| filter.is_none_or(|f| f.matches(r.metadata.as_ref())))
        .map(|r| (r.id.clone(), cosine(v, &r.vector)))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

/// Parses a filter in the text syntax.
pub fn filter(text: &str) -> Filter {
    Filter::parse(text).expect("valid filter")
}
