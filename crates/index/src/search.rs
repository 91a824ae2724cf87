//! Collection search: every live segment through its index (built and persisted on first
//! use), the memtables exactly, results merged by exact distance. Rows that a newer
//! source overwrote or deleted stay navigable in their segment's graph but are never
//! returned. Filters become bitsets through each segment's payload index; a planner scans
//! the matching rows exactly when that is cheaper than a filtered graph walk (few rows
//! match), else the walk skips non-matching rows while still navigating through them. Keyword queries score BM25 with
//! statistics summed over every source; hybrid queries fuse the vector and keyword lists
//! with reciprocal rank fusion.

use crate::bitset::Bitset;
use crate::bm25::{Bm25Stats, score_doc, tokenize};
use crate::filter::{Filter, FilterError};
use crate::hnsw::Cand;
use crate::segment_index::{self, IndexError, SegmentIndex};
use kernelize_store::{Collection, Key, Metric, Record, Segment, Snapshot, Storage};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// Largest `k` a query may ask for.
pub const MAX_K: usize = 10_000;
/// Largest beam width.
pub const MAX_EF: usize = 10_000;
/// Beam width when the query names none (raised to `k`).
pub const DEFAULT_EF: usize = 128;
/// Distance computations an unfiltered graph walk makes per unit of `ef` (about 2·M
/// neighbours per expanded node); the planner's cost model for filtered queries.
pub const WALK_COST_PER_EF: f64 = 32.0;
/// Reciprocal rank fusion constant.
pub const RRF_K: f32 = 60.0;

/// What ranks the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Nearest vectors.
    #[default]
    Vector,
    /// BM25 over the `text` field.
    Keyword,
    /// Both lists fused with reciprocal rank fusion.
    Hybrid,
}

/// How a filtered vector query meets each segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    /// The planner picks by cost (see [`WALK_COST_PER_EF`]).
    #[default]
    Auto,
    /// Walk the graph, skipping rows the filter rejects (an exact scan of the matching
    /// rows still backs a walk that comes back short).
    Walk,
    /// Scan the matching rows exactly.
    Scan,
}

/// A search request.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Query vector (vector and hybrid modes).
    pub vector: Option<Vec<f32>>,
    /// Query text (keyword and hybrid modes).
    pub text: Option<String>,
    /// Results wanted.
    pub k: usize,
    /// Beam width (default [`DEFAULT_EF`]).
    pub ef: Option<usize>,
    /// Metadata filter.
    pub filter: Option<Filter>,
    /// Ranking.
    pub mode: Mode,
    /// Exact search (ground truth): scan every live record.
    pub exact: bool,
    /// Filtered vector queries: planner choice or a forced path.
    pub plan: Plan,
    /// Keyword and hybrid modes: corpus statistics to score with instead of this
    /// collection's own (a cluster sums its shards' [`Searcher::bm25_stats`], so every
    /// shard scores on the whole collection's statistics).
    pub bm25: Option<Bm25Stats>,
}

/// One result.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Record id.
    pub id: String,
    /// Vector mode: cosine similarity, dot product, or Euclidean distance (by metric);
    /// keyword: BM25 score; hybrid: fused score.
    pub score: f32,
    /// The record.
    pub record: Arc<Record>,
}

/// What a query did, stage by stage: asked for with [`Searcher::search_explained`] (the
/// API's `explain`), and what the server's slow-query log records. A search that is not
/// explained collects none of it (no clocks read, no counters kept).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Explain {
    /// The ranking asked for.
    pub mode: Mode,
    /// Each segment, per stage (a hybrid query meets each segment twice: vector, keyword).
    pub segments: Vec<SegmentExplain>,
    /// The memtable's records (not yet flushed), scanned exactly.
    pub memtable: MemtableExplain,
    /// Reciprocal rank fusion (hybrid only), microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fusion_us: Option<f64>,
    /// Rows decoded from segments (or taken from the memtable) for the results.
    pub rows_decoded: usize,
    /// Decoding them, microseconds.
    pub decode_us: f64,
    /// The whole search (after validation), microseconds.
    pub total_us: f64,
    /// Embedding the query text, microseconds (filled by a caller that embedded it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embed_us: Option<f64>,
}

/// One segment's part in a query.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct SegmentExplain {
    /// The segment's file name.
    pub segment: String,
    /// `vector` or `keyword`.
    pub stage: String,
    /// `walk` (the graph, skipping rows the filter rejects), `scan` (the matching rows
    /// exactly), `walk+scan` (a filtered walk came back short, the matching rows were
    /// scanned), `exact` (an exact query), or `bm25`.
    pub plan: String,
    /// Rows in the segment.
    pub rows: usize,
    /// Rows the filter accepts (filtered queries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matching: Option<usize>,
    /// Candidates scored: distances computed (walk and re-rank, or scan), or BM25
    /// postings lists read.
    pub scored: u64,
    /// Candidates this segment gave to the merge.
    pub candidates: usize,
    /// Evaluating the filter over the segment's payload index, microseconds.
    pub filter_us: f64,
    /// The walk, scan or BM25 lookup, microseconds.
    pub us: f64,
}

/// The memtable's part in a query.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct MemtableExplain {
    /// Records in the memtable.
    pub rows: usize,
    /// Records scored (those the filter accepts).
    pub scored: usize,
    /// Microseconds.
    pub us: f64,
}

/// Microseconds since `t`.
fn us_since(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

/// A clock read only when explaining.
fn clock(ex: &Option<&mut Explain>) -> Option<std::time::Instant> {
    ex.is_some().then(std::time::Instant::now)
}

/// Why a query was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// A bad request, with what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The filter is malformed or names a field no record has.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// The filter names a field no record in the collection has.
    #[error("filter: unknown field {field:?}; fields in this collection: {known}")]
    UnknownField {
        /// The field.
        field: String,
        /// Up to 20 known fields, comma-separated.
        known: String,
    },
    /// An index file could not be built or read.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kernelize_store::Error),
}

/// Open segment indexes, by segment file; built (and persisted) when missing or stale.
#[derive(Debug, Default)]
pub struct IndexCache {
    open: Mutex<HashMap<PathBuf, Arc<SegmentIndex>>>,
    /// One lock per segment whose index is being opened or built: two searches (or a
    /// search and `ensure`) that find it missing build it once, not both into one
    /// temporary file.
    building: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
    /// Build missing indexes in memory only (a read-only data directory).
    in_memory: bool,
}

/// What [`IndexCache::ensure`] did for one segment.
#[derive(Debug, Clone)]
pub struct EnsureReport {
    /// The index file.
    pub path: PathBuf,
    /// Rows.
    pub rows: u64,
    /// Built now (false: opened from disk).
    pub built: bool,
    /// Seconds spent building or opening.
    pub secs: f64,
}

impl IndexCache {
    /// An empty cache.
    pub fn new() -> IndexCache {
        IndexCache::default()
    }

    /// A cache that never writes: indexes found on disk are opened, missing or stale ones
    /// are built in memory and not persisted (for a data directory opened read-only).
    pub fn read_only() -> IndexCache {
        IndexCache { in_memory: true, ..IndexCache::default() }
    }

    /// The index of `segment`: cached, else opened, else built and written atomically.
    /// A file that is damaged, stale or built with other settings is rebuilt.
    pub fn get(
        &self,
        storage: &dyn Storage,
        segment: &Segment,
        metric: Metric,
        settings: kernelize_store::IndexSettings,
    ) -> Result<(Arc<SegmentIndex>, bool), IndexError> {
        // A cached index serves only the segment it was built for: a dropped and
        // re-created collection reuses segment file names.
        let cached = || {
            self.open.lock().get(segment.path()).cloned().filter(|ix| {
                ix.meta().settings == settings
                    && ix.meta().metric == metric
                    && ix.meta().segment_bytes == segment.file_bytes() as u64
                    && ix.meta().segment_seqs == segment.seq_range()
                    && ix.meta().nodes == segment.len() as u64
            })
        };
        if let Some(ix) = cached() {
            return Ok((ix, false));
        }
        let lock = self.building.lock().entry(segment.path().to_owned()).or_default().clone();
        let _building = lock.lock();
        if let Some(ix) = cached() {
            return Ok((ix, false));
        }
        let opened = match SegmentIndex::open(storage, segment) {
            Ok(Some(ix)) if ix.meta().settings == settings && ix.meta().metric == metric => Some(ix),
            Ok(_) => None,
            Err(IndexError::Corrupt { .. }) => None, // rebuilt below
            Err(e) => return Err(e),
        };
        let (ix, built) = match opened {
            Some(ix) => (ix, false),
            None => {
                let bytes = segment_index::build(segment, metric, settings)?;
                let path = segment_index::index_path(segment);
                if !self.in_memory
                    && let Err(source) = kernelize_store::write_atomic(storage, &path, &bytes)
                {
                    // Leave no temporary file behind (it would stay until the next open).
                    let _ = storage.remove_file(&path.with_extension("tmp"));
                    return Err(IndexError::Io { path, source });
                }
                if self.in_memory || storage.encryption().is_some() {
                    // In memory only, or a sealed file that opening would decrypt back
                    // into memory: use the bytes just built.
                    (SegmentIndex::from_mapped(path, kernelize_store::Mapped::new(bytes), segment)?, true)
                } else {
                    let ix = SegmentIndex::open(storage, segment)?.ok_or_else(|| IndexError::Corrupt {
                        path,
                        offset: 0,
                        reason: "index file vanished after writing".into(),
                    })?;
                    (ix, true)
                }
            }
        };
        let ix = Arc::new(ix);
        let mut open = self.open.lock();
        open.retain(|p, _| storage.exists(p).unwrap_or(true));
        open.insert(segment.path().to_owned(), ix.clone());
        self.building.lock().retain(|p, l| Arc::strong_count(l) > 1 || open.contains_key(p));
        Ok((ix, built))
    }

    /// Makes sure every live segment of `collection` has its index; reports each.
    pub fn ensure(&self, collection: &Collection, storage: &dyn Storage) -> Result<Vec<EnsureReport>, IndexError> {
        let snap = collection.snapshot();
        let cfg = collection.config();
        let mut out = Vec::new();
        for seg in snap.segments() {
            let t = std::time::Instant::now();
            let (ix, built) = self.get(storage, seg, cfg.metric, cfg.index)?;
            out.push(EnsureReport {
                path: ix.path().to_owned(),
                rows: seg.len() as u64,
                built,
                secs: t.elapsed().as_secs_f64(),
            });
        }
        Ok(out)
    }
}

/// Where a candidate lives.
#[derive(Debug, Clone)]
enum Src {
    Seg(usize, u32),
    Mem(Arc<Record>),
}

/// Checks a query's shape before any work.
fn validate(q: &Query, dim: usize) -> Result<(), SearchError> {
    if q.k == 0 || q.k > MAX_K {
        return Err(SearchError::Invalid(format!("k = {} is out of range: expected 1..={MAX_K}", q.k)));
    }
    if let Some(ef) = q.ef
        && (ef == 0 || ef > MAX_EF)
    {
        return Err(SearchError::Invalid(format!("ef = {ef} is out of range: expected 1..={MAX_EF}")));
    }
    if matches!(q.mode, Mode::Vector | Mode::Hybrid) {
        let Some(v) = &q.vector else {
            return Err(SearchError::Invalid(format!("{:?} search needs a query vector", q.mode).to_lowercase()));
        };
        if v.len() != dim {
            return Err(SearchError::Invalid(format!(
                "query vector has dimension {}, the collection has {dim}",
                v.len()
            )));
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(SearchError::Invalid(format!("query vector element {i} is {} (not finite)", v[i])));
        }
        if let Some(n2) = kernelize_store::vector_too_large(v) {
            return Err(SearchError::Invalid(format!(
                "query vector is too large (squared norm {n2:.3e} > {:e}): its distances overflow",
                kernelize_store::MAX_VECTOR_NORM2
            )));
        }
    }
    if matches!(q.mode, Mode::Keyword | Mode::Hybrid) && q.text.as_deref().is_none_or(|t| t.trim().is_empty()) {
        return Err(SearchError::Invalid(format!("{:?} search needs query text", q.mode).to_lowercase()));
    }
    if let Some(f) = &q.filter {
        f.validate()?;
    }
    Ok(())
}

/// A collection searcher: the collection and the cache of its segment indexes.
pub struct Searcher<'a> {
    collection: &'a Collection,
    storage: &'a dyn Storage,
    cache: &'a IndexCache,
}

/// One source's view for a query: the snapshot's segments with their indexes.
struct View {
    snap: Snapshot,
    indexes: Vec<Arc<SegmentIndex>>,
    memtable: Vec<Arc<Record>>,
}

impl<'a> Searcher<'a> {
    /// A searcher over `collection`, whose files `storage` reaches.
    pub fn new(collection: &'a Collection, storage: &'a dyn Storage, cache: &'a IndexCache) -> Searcher<'a> {
        Searcher { collection, storage, cache }
    }

    fn view(&self) -> Result<View, SearchError> {
        let snap = self.collection.snapshot();
        let cfg = self.collection.config();
        let indexes = snap
            .segments()
            .iter()
            .map(|s| self.cache.get(self.storage, s, cfg.metric, cfg.index).map(|(ix, _)| ix))
            .collect::<Result<Vec<_>, _>>()?;
        let memtable = snap.memtable().into_iter().filter_map(|(_, e)| e.record).collect();
        Ok(View { snap, indexes, memtable })
    }

    /// Runs a query.
    pub fn search(&self, q: &Query) -> Result<Vec<Hit>, SearchError> {
        validate(q, self.collection.config().dim)?;
        self.search_in(&self.view()?, q, None)
    }

    /// This collection's BM25 statistics for the terms of `text` (what
    /// [`Query::bm25`] takes, summed over the shards of a cluster).
    pub fn bm25_stats(&self, text: &str) -> Result<Bm25Stats, SearchError> {
        let view = self.view()?;
        let terms = tokenize(text);
        let mem_tokens: Vec<Vec<String>> =
            view.memtable.iter().map(|r| r.text.as_deref().map(tokenize).unwrap_or_default()).collect();
        Ok(corpus_stats(&view, &terms, &mem_tokens))
    }

    /// Runs a query and says what it did ([`Explain`]).
    pub fn search_explained(&self, q: &Query) -> Result<(Vec<Hit>, Explain), SearchError> {
        validate(q, self.collection.config().dim)?;
        let t = std::time::Instant::now();
        let mut ex = Explain { mode: q.mode, ..Explain::default() };
        let hits = self.search_in(&self.view()?, q, Some(&mut ex))?;
        ex.total_us = us_since(t);
        Ok((hits, ex))
    }

    /// Runs many queries against one snapshot, in parallel on the current rayon pool;
    /// one result per query, in order (a bad query fails alone).
    pub fn search_many(&self, queries: &[Query]) -> Result<Vec<Result<Vec<Hit>, SearchError>>, SearchError> {
        use rayon::prelude::*;
        let dim = self.collection.config().dim;
        let view = self.view()?;
        Ok(queries
            .par_iter()
            .map(|q| {
                validate(q, dim)?;
                self.search_in(&view, q, None)
            })
            .collect())
    }

    fn search_in(&self, view: &View, q: &Query, mut ex: Option<&mut Explain>) -> Result<Vec<Hit>, SearchError> {
        let cfg = self.collection.config();
        if let Some(f) = &q.filter {
            check_fields(f, view)?;
        }
        let ranked: Vec<(f32, Src)> = match q.mode {
            Mode::Vector => {
                let v = q.vector.as_deref().unwrap_or(&[]);
                self.vector_search(view, v, q, q.k, ex.as_deref_mut())?
                    .into_iter()
                    .map(|(d, s)| (to_score(cfg.metric, d), s))
                    .collect()
            }
            Mode::Keyword => keyword_search(view, q, q.k, ex.as_deref_mut())?,
            Mode::Hybrid => {
                let depth = (2 * q.k).clamp(50, MAX_K);
                let v = q.vector.as_deref().unwrap_or(&[]);
                let vec_list = self.vector_search(view, v, q, depth, ex.as_deref_mut())?;
                let kw_list = keyword_search(view, q, depth, ex.as_deref_mut())?;
                let t = clock(&ex);
                let fused = fuse(&[
                    vec_list.into_iter().map(|(_, s)| s).collect(),
                    kw_list.into_iter().map(|(_, s)| s).collect(),
                ]);
                if let (Some(e), Some(t)) = (ex.as_deref_mut(), t) {
                    e.fusion_us = Some(us_since(t));
                }
                fused
            }
        };
        let t = clock(&ex);
        let hits = ranked
            .into_iter()
            .take(q.k)
            .map(|(score, src)| resolve(view, score, src))
            .collect::<Result<Vec<_>, _>>()?;
        if let (Some(e), Some(t)) = (ex, t) {
            e.rows_decoded = hits.len();
            e.decode_us = us_since(t);
        }
        Ok(hits)
    }

    /// Vector candidates, exact distances, closest first.
    fn vector_search(
        &self,
        view: &View,
        v: &[f32],
        q: &Query,
        k: usize,
        mut ex: Option<&mut Explain>,
    ) -> Result<Vec<(f32, Src)>, SearchError> {
        let metric = self.collection.config().metric;
        let ef = q.ef.unwrap_or(DEFAULT_EF).max(k);
        let mut all: Vec<(f32, Src)> = Vec::new();
        for (si, (seg, ix)) in view.snap.segments().iter().zip(&view.indexes).enumerate() {
            let t = clock(&ex);
            let matching = match &q.filter {
                Some(f) => Some(ix.payload().evaluate(f)?),
                None => None,
            };
            let filter_us = t.map_or(0.0, us_since);
            let t = clock(&ex);
            let shadowable = view.snap.has_newer_than(si);
            let live = |i: u32| {
                !seg.is_tombstone(i as usize)
                    && matching.as_ref().is_none_or(|b| b.get(i))
                    && (!shadowable || !is_shadowed(&view.snap, si, seg, i))
            };
            let n = seg.len();
            let count = matching.as_ref().map_or(n, Bitset::count);
            // Cost model: scanning costs `count` distances; a walk that must collect `ef`
            // allowed nodes when only a fraction `count / n` is allowed visits about
            // `WALK_COST_PER_EF · ef · n / count`. Scan when that is cheaper.
            let walk_cost = WALK_COST_PER_EF * ef as f64 * n as f64 / count.max(1) as f64;
            let scan_exactly = q.exact
                || match q.plan {
                    Plan::Auto => matching.is_some() && (count as f64) <= walk_cost,
                    Plan::Walk => false,
                    Plan::Scan => matching.is_some(),
                };
            let mut scored = 0u64;
            let want_count = ex.is_some();
            let mut plan = if q.exact {
                "exact"
            } else if scan_exactly {
                "scan"
            } else {
                "walk"
            };
            let mut cands = if scan_exactly {
                exact_rows(ix, seg, v, k, matching.as_ref(), &live, &mut scored)
            } else {
                ix.search_counting(seg, v, k, ef, &live, want_count.then_some(&mut scored))?
            };
            // A filtered walk can come back short; the matching set is the ground truth.
            if cands.len() < k && count > cands.len() && !scan_exactly {
                cands = exact_rows(ix, seg, v, k, matching.as_ref(), &live, &mut scored);
                plan = "walk+scan";
            }
            if let (Some(e), Some(t)) = (ex.as_deref_mut(), t) {
                e.segments.push(SegmentExplain {
                    segment: segment_name(seg),
                    stage: "vector".into(),
                    plan: plan.into(),
                    rows: n,
                    matching: matching.as_ref().map(Bitset::count),
                    scored,
                    candidates: cands.len(),
                    filter_us,
                    us: us_since(t),
                });
            }
            all.extend(cands.into_iter().map(|c| (c.d, Src::Seg(si, c.id))));
        }
        let t = clock(&ex);
        let mut mem_scored = 0usize;
        let pq = crate::space::prepare_query(metric, v);
        for r in &view.memtable {
            if q.filter.as_ref().is_some_and(|f| !f.matches(r.metadata.as_ref())) {
                continue;
            }
            let inv = if metric == Metric::Cosine {
                let n = crate::distance::norm(&r.vector);
                if n > 0.0 { 1.0 / n } else { 0.0 }
            } else {
                1.0
            };
            mem_scored += 1;
            all.push((crate::space::metric_dist(metric, &pq, &r.vector, inv), Src::Mem(r.clone())));
        }
        if let (Some(e), Some(t)) = (ex, t) {
            e.memtable.rows = view.memtable.len();
            e.memtable.scored += mem_scored;
            e.memtable.us += us_since(t);
        }
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        all.truncate(k);
        Ok(all)
    }
}

/// A segment's file name, as the explain names it.
fn segment_name(seg: &Segment) -> String {
    seg.path().file_name().map_or_else(|| seg.path().display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn is_shadowed(snap: &Snapshot, si: usize, seg: &Segment, row: u32) -> bool {
    let Ok(id) = seg.id(row as usize) else { return true };
    let key = Key { hash: seg.hashes().get(row as usize).copied().unwrap_or(0), id: Arc::from(id) };
    snap.shadowed(si, &key).unwrap_or(true)
}

/// Exact top-`k` over a segment's rows (the matching set, or all), with `live` applied.
fn exact_rows(
    ix: &SegmentIndex,
    seg: &Segment,
    v: &[f32],
    k: usize,
    matching: Option<&Bitset>,
    live: &impl Fn(u32) -> bool,
    scored: &mut u64,
) -> Vec<Cand> {
    let rows: Box<dyn Iterator<Item = u32>> = match matching {
        Some(b) => Box::new(b.iter_ones()),
        None => Box::new(0..seg.len() as u32),
    };
    let mut c = ix.exact(seg, v, rows.filter(|&i| live(i)));
    *scored += c.len() as u64;
    let k = k.min(c.len());
    if k > 0 && k < c.len() {
        c.select_nth_unstable(k - 1);
        c.truncate(k);
    }
    c.sort_unstable();
    c
}

/// A distance as the API reports it: cosine similarity, dot product or Euclidean distance.
/// Always a finite number: a distance that overflowed (or is NaN) scores as the farthest.
pub fn to_score(metric: Metric, d: f32) -> f32 {
    let d = if d.is_nan() { f32::MAX } else { d.clamp(-f32::MAX, f32::MAX) };
    match metric {
        Metric::Cosine => 1.0 - d,
        Metric::Dot => -d,
        Metric::L2 => d.max(0.0).sqrt(),
    }
}

/// A filter may only name fields some record has (a typo should not silently match nothing).
fn check_fields(f: &Filter, view: &View) -> Result<(), SearchError> {
    let mut known: BTreeSet<String> = BTreeSet::new();
    for ix in &view.indexes {
        known.extend(ix.payload().known_fields().map(str::to_owned));
    }
    for r in &view.memtable {
        if let Some(m) = &r.metadata {
            collect_paths(m, "", &mut known);
        }
    }
    for field in f.fields() {
        if !known.contains(field) {
            let list: Vec<&str> = known.iter().map(String::as_str).take(20).collect();
            return Err(SearchError::UnknownField { field: field.to_owned(), known: list.join(", ") });
        }
    }
    Ok(())
}

fn collect_paths(m: &serde_json::Map<String, serde_json::Value>, prefix: &str, out: &mut BTreeSet<String>) {
    for (k, v) in m {
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        if let serde_json::Value::Object(inner) = v {
            collect_paths(inner, &path, out);
        }
        out.insert(path);
    }
}

/// BM25 statistics of the query's terms over every source of `view`.
fn corpus_stats(view: &View, terms: &[String], mem_tokens: &[Vec<String>]) -> Bm25Stats {
    let mut stats = Bm25Stats::new();
    for ix in &view.indexes {
        stats.add_index(ix.bm25(), terms);
    }
    for t in mem_tokens {
        stats.add_doc_for_terms(t, terms);
    }
    stats
}

/// BM25 over every source; best first.
fn keyword_search(
    view: &View,
    q: &Query,
    k: usize,
    mut ex: Option<&mut Explain>,
) -> Result<Vec<(f32, Src)>, SearchError> {
    let filter = q.filter.as_ref();
    let terms = tokenize(q.text.as_deref().unwrap_or(""));
    let mem_tokens: Vec<Vec<String>> =
        view.memtable.iter().map(|r| r.text.as_deref().map(tokenize).unwrap_or_default()).collect();
    let stats = match &q.bm25 {
        Some(given) => given.clone(),
        None => corpus_stats(view, &terms, &mem_tokens),
    };
    let mut all: Vec<(f32, Src)> = Vec::new();
    for (si, (seg, ix)) in view.snap.segments().iter().zip(&view.indexes).enumerate() {
        let t = clock(&ex);
        let matching = match filter {
            Some(f) => Some(ix.payload().evaluate(f)?),
            None => None,
        };
        let filter_us = t.map_or(0.0, us_since);
        let t = clock(&ex);
        let shadowable = view.snap.has_newer_than(si);
        let before = all.len();
        let mut lookups = 0u64;
        // Ask for more until `k` rows survive the shadow check or the segment runs out.
        let mut want = k;
        loop {
            lookups += terms.len() as u64;
            let found = ix.bm25().search(&terms, &stats, want, matching.as_ref());
            let exhausted = found.len() < want;
            let kept: Vec<(f32, Src)> = found
                .into_iter()
                .filter(|&(row, _)| !seg.is_tombstone(row as usize))
                .filter(|&(row, _)| !shadowable || !is_shadowed(&view.snap, si, seg, row))
                .map(|(row, s)| (s, Src::Seg(si, row)))
                .collect();
            if kept.len() >= k || exhausted {
                all.extend(kept.into_iter().take(k));
                break;
            }
            want *= 4;
        }
        if let (Some(e), Some(t)) = (ex.as_deref_mut(), t) {
            e.segments.push(SegmentExplain {
                segment: segment_name(seg),
                stage: "keyword".into(),
                plan: "bm25".into(),
                rows: seg.len(),
                matching: matching.as_ref().map(Bitset::count),
                scored: lookups,
                candidates: all.len() - before,
                filter_us,
                us: us_since(t),
            });
        }
    }
    let t = clock(&ex);
    let mut mem_scored = 0usize;
    for (r, toks) in view.memtable.iter().zip(&mem_tokens) {
        if filter.is_some_and(|f| !f.matches(r.metadata.as_ref())) {
            continue;
        }
        mem_scored += 1;
        let s = score_doc(toks, &terms, &stats);
        if s > 0.0 {
            all.push((s, Src::Mem(r.clone())));
        }
    }
    if let (Some(e), Some(t)) = (ex, t) {
        e.memtable.rows = view.memtable.len();
        e.memtable.scored += mem_scored;
        e.memtable.us += us_since(t);
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    all.truncate(k);
    Ok(all)
}

/// Reciprocal rank fusion: `Σ 1 / (RRF_K + rank)` over the lists an item appears in.
/// Equal scores keep the order items were first seen in (the first list's, then the
/// next's), so the result is deterministic.
fn fuse(lists: &[Vec<Src>]) -> Vec<(f32, Src)> {
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(f32, Src)> = Vec::new();
    for list in lists {
        for (rank, src) in list.iter().enumerate() {
            let key = match src {
                Src::Seg(si, row) => format!("s{si}:{row}"),
                Src::Mem(r) => format!("m:{}", r.id),
            };
            let i = *at.entry(key).or_insert_with(|| {
                out.push((0.0, src.clone()));
                out.len() - 1
            });
            out[i].0 += 1.0 / (RRF_K + rank as f32 + 1.0);
        }
    }
    out.sort_by(|a, b| b.0.total_cmp(&a.0));
    out
}

fn resolve(view: &View, score: f32, src: Src) -> Result<Hit, SearchError> {
    let record = match src {
        Src::Mem(r) => r,
        Src::Seg(si, row) => {
            let seg = &view.snap.segments()[si];
            let (_, entry) = seg.entry(row as usize)?;
            match entry.record {
                Some(r) => r,
                None => {
                    return Err(SearchError::Invalid(format!("row {row} of {} is a tombstone", seg.path().display())));
                }
            }
        }
    };
    Ok(Hit { id: record.id.clone(), score, record })
}
