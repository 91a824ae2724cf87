//! An open kernel: the file mapped (or bytes held in aligned memory), the container
//! checked (signature, hashes, expiry), every section's shape validated once, and then
//! searched in place — codes, lists, graph links and centroids are read straight from
//! the mapping; only the RaBitQ rotation matrix is copied into the model.

use crate::blocks::Blocks;
use crate::error::{KernelError, Result};
use crate::format::{self, IndexSpec, Manifest, Parsed, Trust};
use crate::unpack_ids;
use kernelize_index::bitset::Bitset;
use kernelize_index::distance;
use kernelize_index::filter::{Filter, PayloadIndex};
use kernelize_index::hnsw::{self, Cand, Graph, Space};
use kernelize_index::quant::{Int8Space, RabitqModel, RabitqQuery, RabitqSpace, Rotation, padded_dim};
use kernelize_index::search::to_score;
use kernelize_index::segment_index::Resident;
use kernelize_index::space::{F32Space, prepare_query};
use kernelize_store::{Mapped, Metric, Quantization, Storage};
use serde_json::{Map, Value};
use std::collections::BinaryHeap;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

/// RaBitQ kernels re-score `max(k · RERANK_FACTOR, RERANK_MIN)` candidates with the
/// full-precision query.
const RERANK_FACTOR: usize = 4;
const RERANK_MIN: usize = 40;
/// Most IVF lists a kernel may have.
const MAX_LISTS: usize = 1 << 20;

/// How to search.
#[derive(Debug, Clone, Default)]
pub struct SearchParams {
    /// Results wanted (rows; each may stand for several ids).
    pub k: usize,
    /// Lists probed (IVF) or beam width (HNSW); the kernel's default when `None`.
    pub probe: Option<usize>,
    /// Metadata filter.
    pub filter: Option<Filter>,
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelHit {
    /// Row.
    pub row: u32,
    /// Estimated score: cosine similarity, dot product or Euclidean distance (by metric).
    pub score: f32,
    /// The ids the row stands for, the representative first.
    pub ids: Vec<String>,
    /// Text, when kept.
    pub text: Option<String>,
    /// Metadata.
    pub metadata: Option<Map<String, Value>>,
}

/// An open, checked kernel.
pub struct Kernel {
    what: String,
    bytes: Mapped,
    parsed: Parsed,
    rabitq: Option<RabitqModel>,
    /// The IVF (or RaBitQ) centroids decoded from `centroids.i8` (format 2); empty when
    /// the kernel stores them as f32 (`centroids`, format 1), read in place.
    centroids8: Vec<f32>,
    payload: OnceLock<std::result::Result<PayloadIndex, String>>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel").field("what", &self.what).field("rows", &self.parsed.manifest.rows).finish()
    }
}

/// Largest squared norm of a query vector: distances to it stay far below f32::MAX.
pub const MAX_QUERY_NORM2: f64 = kernelize_store::MAX_VECTOR_NORM2;

/// Decodes `centroids.i8` (rows of an f32 scale then `width` signed bytes) to f32;
/// `Err(row)` names the first row whose scale is not finite and ≥ 0.
pub(crate) fn decode_centroids_i8(bytes: &[u8], width: usize) -> std::result::Result<Vec<f32>, usize> {
    let mut out = Vec::with_capacity(bytes.len());
    for (i, row) in bytes.chunks_exact(4 + width).enumerate() {
        let scale = f32::from_le_bytes([row[0], row[1], row[2], row[3]]);
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(i);
        }
        out.extend(row[4..].iter().map(|&c| scale * f32::from(c as i8)));
    }
    Ok(out)
}

/// A RaBitQ query against rows whose residuals are taken from centroid `c` (rotated):
/// `w` is the rotated query.
fn residual_query(model: &RabitqModel, metric: Metric, w: &[f32], c: &[f32]) -> RabitqQuery {
    if metric == Metric::Dot {
        model.query_rotated(metric, w.to_vec(), distance::dot(w, c))
    } else {
        model.query_rotated(metric, w.iter().zip(c).map(|(a, b)| a - b).collect(), 0.0)
    }
}

impl Kernel {
    /// Maps and opens a kernel file.
    pub fn open(path: &Path, trust: &Trust) -> Result<Kernel> {
        let map = kernelize_store::FileStorage.map(path).map_err(|e| KernelError::io(path, e))?;
        Kernel::from_mapped(map, &path.display().to_string(), trust)
    }

    /// Opens kernel bytes held in memory (copied once into aligned memory).
    pub fn from_bytes(bytes: &[u8], what: &str, trust: &Trust) -> Result<Kernel> {
        Kernel::from_mapped(Mapped::new(Resident::copy(bytes)), what, trust)
    }

    /// Every check but the section hashes, for fuzzing the decoders behind them (a kernel
    /// whose hashes match can still hold hostile bytes: anyone can compute hashes).
    #[doc(hidden)]
    pub fn from_bytes_unhashed(bytes: &[u8]) -> Result<Kernel> {
        let trust = Trust { allow_expired: true, ..Default::default() };
        Kernel::from_mapped_with(Mapped::new(Resident::copy(bytes)), "<fuzz>", &trust, false)
    }

    fn from_mapped(bytes: Mapped, what: &str, trust: &Trust) -> Result<Kernel> {
        Kernel::from_mapped_with(bytes, what, trust, true)
    }

    fn from_mapped_with(bytes: Mapped, what: &str, trust: &Trust, check_hashes: bool) -> Result<Kernel> {
        if cfg!(target_endian = "big") {
            return Err(KernelError::Invalid("kernels are read in place and need a little-endian machine".into()));
        }
        let parsed = format::parse_with(&bytes, what, trust, check_hashes)?;
        let mut k = Kernel {
            what: what.to_owned(),
            bytes,
            parsed,
            rabitq: None,
            centroids8: Vec::new(),
            payload: OnceLock::new(),
        };
        k.check_shapes()?;
        Ok(k)
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.parsed.manifest
    }

    /// The whole kernel file as opened and checked (mapped, or held in memory): exactly
    /// the signed bytes a device downloads.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether the signature was checked against a public key at open.
    pub fn signature_verified(&self) -> bool {
        self.parsed.signature_verified
    }

    fn range(&self, name: &str) -> Range<usize> {
        self.parsed.range(name).unwrap_or(0..0)
    }

    fn section(&self, name: &str) -> &[u8] {
        self.bytes.get(self.range(name)).unwrap_or(&[])
    }

    fn f32s(&self, name: &str) -> &[f32] {
        bytemuck::try_cast_slice(self.section(name)).unwrap_or(&[])
    }

    fn u32s(&self, name: &str) -> &[u32] {
        bytemuck::try_cast_slice(self.section(name)).unwrap_or(&[])
    }

    fn factors(&self) -> &[[f32; 2]] {
        bytemuck::try_cast_slice(self.section("rabitq.factors")).unwrap_or(&[])
    }

    fn corrupt(&self, name: &str, reason: impl Into<String>) -> KernelError {
        KernelError::corrupt(&self.what, self.range(name).start as u64, reason)
    }

    /// The centroids: decoded from 8 bits (format 2) or read in place (format 1).
    fn centroids(&self) -> &[f32] {
        if self.centroids8.is_empty() { self.f32s("centroids") } else { &self.centroids8 }
    }

    /// Checks there are `rows` centroids of `width` values (`centroids.i8`, decoded here,
    /// or f32 in `centroids`).
    fn need_centroids(&mut self, rows: usize, width: usize) -> Result<()> {
        if self.parsed.range("centroids.i8").is_none() {
            return self.need("centroids", rows * width, 4);
        }
        self.need("centroids.i8", rows, 4 + width)?;
        match decode_centroids_i8(self.section("centroids.i8"), width) {
            Ok(v) => self.centroids8 = v,
            Err(row) => {
                return Err(
                    self.corrupt("centroids.i8", format!("centroid {row}: its scale is not a finite number ≥ 0"))
                );
            }
        }
        Ok(())
    }

    fn need(&self, name: &str, len: usize, elem: usize) -> Result<()> {
        let got = self.section(name).len();
        if self.parsed.range(name).is_none() {
            return Err(KernelError::corrupt(
                &self.what,
                format::HEADER as u64,
                format!("section {name:?} is missing"),
            ));
        }
        if Some(got) != len.checked_mul(elem) {
            return Err(self.corrupt(name, format!("section {name:?} is {got} bytes, expected {len} × {elem}")));
        }
        Ok(())
    }

    fn blocks(&self, name: &str) -> Result<Option<Blocks<'_>>> {
        if self.parsed.range(name).is_none() {
            return Ok(None);
        }
        Blocks::open(self.section(name), self.rows(), &self.what, self.range(name).start as u64).map(Some)
    }

    fn rows(&self) -> usize {
        self.parsed.manifest.rows as usize
    }

    fn nlist(&self) -> usize {
        match self.parsed.manifest.index {
            IndexSpec::Ivf { nlist, .. } => nlist,
            IndexSpec::Hnsw { .. } => 1,
        }
    }

    /// Every array's length against the manifest, IVF offsets, graph links, block streams.
    fn check_shapes(&mut self) -> Result<()> {
        let m = self.parsed.manifest.clone();
        let (n, dim) = (m.rows as usize, m.dim);
        if dim == 0 || dim > kernelize_store::MAX_DIM || n > u32::MAX as usize / 2 {
            return Err(KernelError::corrupt(
                &self.what,
                format::HEADER as u64,
                format!("{n} rows of dimension {dim}"),
            ));
        }
        let nlist = self.nlist();
        // Lists may be empty (near-duplicates consolidated after clustering), not absurd.
        if nlist == 0 || nlist > MAX_LISTS {
            return Err(KernelError::corrupt(&self.what, format::HEADER as u64, format!("{nlist} lists for {n} rows")));
        }
        let padded = padded_dim(dim);
        match m.quantization {
            Quantization::None => self.need("vectors", n * dim, 4)?,
            Quantization::Int8 => {
                self.need("int8.lo", dim, 4)?;
                self.need("int8.step", dim, 4)?;
                self.need("int8.codes", n * dim, 1)?;
                self.need("int8.norms", n, 4)?;
            }
            Quantization::Rabitq1 | Quantization::Rabitq4 => {
                let bits = if m.quantization == Quantization::Rabitq1 { 1 } else { 4 };
                // Format 2: the structured rotation's signs; format 1: the dense matrix.
                let rotation = if self.parsed.range("rabitq.signs").is_some() {
                    self.need("rabitq.signs", Rotation::hadamard_signs_len(padded), 1)?;
                    Rotation::Hadamard { signs: self.section("rabitq.signs").to_vec() }
                } else {
                    self.need("rabitq.rotation", padded * padded, 4)?;
                    Rotation::Dense(self.f32s("rabitq.rotation").to_vec())
                };
                let model = RabitqModel { bits, dim, centroid: vec![0.0; dim], rotation };
                self.need("rabitq.codes", n * model.code_len(), 1)?;
                self.need("rabitq.factors", n, 8)?;
                self.need_centroids(nlist, padded)?;
                self.rabitq = Some(model);
            }
        }
        match m.index {
            IndexSpec::Ivf { .. } => {
                if self.rabitq.is_none() {
                    self.need_centroids(nlist, dim)?;
                }
                self.need("ivf.offsets", nlist + 1, 4)?;
                let off = self.u32s("ivf.offsets");
                if off.first() != Some(&0) || off.last() != Some(&(n as u32)) || off.windows(2).any(|w| w[0] > w[1]) {
                    return Err(self.corrupt("ivf.offsets", "list offsets are not a non-decreasing run from 0 to rows"));
                }
            }
            IndexSpec::Hnsw { .. } => {
                self.graph()?.validate().map_err(|e| self.corrupt("hnsw.layer0", format!("graph: {}", e.0)))?;
            }
        }
        if self.blocks("ids")?.is_none() {
            return Err(KernelError::corrupt(&self.what, format::HEADER as u64, "section \"ids\" is missing"));
        }
        self.blocks("text")?;
        self.blocks("metadata")?;
        Ok(())
    }

    fn graph(&self) -> Result<Graph<'_>> {
        let IndexSpec::Hnsw { m, entry, top, .. } = self.parsed.manifest.index else {
            return Err(KernelError::Invalid("not a graph kernel".into()));
        };
        Ok(Graph::trusted(
            self.rows(),
            m,
            entry,
            top,
            self.u32s("hnsw.layer0"),
            self.u32s("hnsw.upper_start"),
            self.u32s("hnsw.upper"),
        ))
    }

    /// The metadata filter index, derived from the metadata section on first use.
    fn payload(&self) -> Result<&PayloadIndex> {
        let p = self.payload.get_or_init(|| {
            let metas = self.values("metadata", None).map_err(|e| e.to_string())?;
            let parsed = metas
                .iter()
                .enumerate()
                .map(|(r, m)| self.decode_metadata(r as u32, m.as_deref()))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| e.to_string())?;
            Ok(PayloadIndex::build(self.rows() as u32, parsed.iter().enumerate().map(|(r, m)| (r as u32, m.as_ref()))))
        });
        p.as_ref().map_err(|e| self.corrupt("metadata", e.clone()))
    }

    /// The rows `filter` accepts.
    fn allowed(&self, filter: &Filter) -> Result<Bitset> {
        let p = self.payload()?;
        filter.validate().map_err(|e| KernelError::Invalid(format!("filter: {e}")))?;
        let known: Vec<&str> = p.known_fields().collect();
        for f in filter.fields() {
            let top = f.split('.').next().unwrap_or(f);
            if !known.iter().any(|k| *k == f || *k == top) {
                return Err(KernelError::Invalid(format!(
                    "filter: unknown field {f:?}; fields in this kernel: {}",
                    known.iter().take(20).copied().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        p.evaluate(filter).map_err(|e| KernelError::Invalid(format!("filter: {e}")))
    }

    /// Nearest rows to `query` with estimated distances, closest first.
    pub fn search_rows(&self, query: &[f32], p: &SearchParams) -> Result<Vec<Cand>> {
        let m = &self.parsed.manifest;
        if query.len() != m.dim {
            return Err(KernelError::Invalid(format!("query has {} dimensions, the kernel {}", query.len(), m.dim)));
        }
        if let Some(i) = query.iter().position(|x| !x.is_finite()) {
            return Err(KernelError::Invalid(format!("query component {i} is not a finite number")));
        }
        // Finite components can still square past f32::MAX: every distance to such a
        // query is infinite (an L2 score of inf, which JSON turns into null).
        if let Some(norm2) = kernelize_store::vector_too_large(query) {
            return Err(KernelError::Invalid(format!(
                "query vector is too large (squared norm {norm2:.3e} > {MAX_QUERY_NORM2:e}): its distances overflow"
            )));
        }
        if p.k == 0 {
            return Err(KernelError::Invalid("k must be at least 1".into()));
        }
        let allow = p.filter.as_ref().map(|f| self.allowed(f)).transpose()?;
        let q = prepare_query(m.metric, query);
        match m.index {
            IndexSpec::Ivf { nprobe, .. } => Ok(self.search_ivf(&q, p.k, p.probe.unwrap_or(nprobe), allow.as_ref())),
            IndexSpec::Hnsw { ef, .. } => self.search_graph(&q, p.k, p.probe.unwrap_or(ef), allow.as_ref()),
        }
    }

    /// Scans lists nearest first: `nprobe` of them, or more while a filter leaves fewer
    /// than `k` results (so a filtered query returns `k` rows whenever `k` rows match).
    fn search_ivf(&self, q: &[f32], k: usize, nprobe: usize, allow: Option<&Bitset>) -> Vec<Cand> {
        let m = &self.parsed.manifest;
        let (dim, metric, nlist) = (m.dim, m.metric, self.nlist());
        let offsets = self.u32s("ivf.offsets");
        let centroids = self.centroids();
        let rotated = self.rabitq.as_ref().map(|model| model.rotate(q));
        let (cq, cdim): (&[f32], usize) = match &rotated {
            Some(w) => (w, padded_dim(dim)),
            None => (q, dim),
        };
        let mut order: Vec<(f32, u32)> = centroids
            .chunks_exact(cdim)
            .take(nlist)
            .enumerate()
            .map(|(l, c)| {
                let d = if metric == Metric::Dot { -distance::dot(cq, c) } else { distance::l2_sq(cq, c) };
                (d, l as u32)
            })
            .collect();
        order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        // RaBitQ scans with a 4/8-bit query; a pool of the best is re-scored with the
        // full-precision query at the end.
        let pool = if self.rabitq.is_some() { (k * RERANK_FACTOR).max(RERANK_MIN) } else { k };
        let mut best: BinaryHeap<Cand> = BinaryHeap::with_capacity(pool + 1);
        let push = |best: &mut BinaryHeap<Cand>, c: Cand| {
            if best.len() < pool {
                best.push(c);
            } else if best.peek().is_some_and(|w| c < *w) {
                best.pop();
                best.push(c);
            }
        };
        let int8 = (m.quantization == Quantization::Int8).then(|| {
            let s = self.int8_space();
            let qq = s.query(q);
            (s, qq)
        });
        let f32s = F32Space::new(self.f32s("vectors"), dim, metric, &[]);
        let qv = q.to_vec();
        let list_query = |model: &RabitqModel, w: &[f32], l: usize| {
            residual_query(model, metric, w, &centroids[l * cdim..(l + 1) * cdim])
        };
        for (probed, &(_, l)) in order.iter().enumerate() {
            let enough = allow.is_none_or(|_| best.len() >= pool);
            if probed >= nprobe.max(1) && enough {
                break;
            }
            let (start, end) = (offsets[l as usize], offsets[l as usize + 1]);
            let ok = |r: u32| allow.is_none_or(|a| a.get(r));
            match (&self.rabitq, &int8, &rotated) {
                (Some(model), _, Some(w)) => {
                    let lq = list_query(model, w, l as usize);
                    let space = self.list_space(model, start, end);
                    for r in start..end {
                        if ok(r) {
                            push(&mut best, Cand { d: space.dist(&lq, r - start), id: r });
                        }
                    }
                }
                (_, Some((s, qq)), _) => {
                    for r in start..end {
                        if ok(r) {
                            push(&mut best, Cand { d: s.dist(qq, r), id: r });
                        }
                    }
                }
                _ => {
                    for r in start..end {
                        if ok(r) {
                            push(&mut best, Cand { d: f32s.dist(&qv, r), id: r });
                        }
                    }
                }
            }
        }
        let mut out = best.into_sorted_vec();
        if let (Some(model), Some(w)) = (&self.rabitq, &rotated) {
            out.sort_unstable_by_key(|c| c.id); // rows of one list together
            let mut cur: Option<(usize, RabitqQuery)> = None;
            for c in &mut out {
                let l = self.list_of(c.id);
                if cur.as_ref().is_none_or(|(cl, _)| *cl != l) {
                    cur = Some((l, list_query(model, w, l)));
                }
                let Some((_, lq)) = &cur else { continue };
                let (start, end) = (offsets[l], offsets[l + 1]);
                c.d = self.list_space(model, start, end).dist_f32(lq, c.id - start);
            }
            out.sort_unstable();
        }
        out.truncate(k);
        out
    }

    /// The int8 codes of every row.
    fn int8_space(&self) -> Int8Space<'_> {
        Int8Space {
            lo: self.f32s("int8.lo"),
            step: self.f32s("int8.step"),
            codes: self.section("int8.codes"),
            norms2: self.f32s("int8.norms"),
            dim: self.parsed.manifest.dim,
            metric: self.parsed.manifest.metric,
        }
    }

    /// The RaBitQ codes of rows `start..end` (one IVF list).
    fn list_space<'a>(&'a self, model: &'a RabitqModel, start: u32, end: u32) -> RabitqSpace<'a> {
        let len = model.code_len();
        let (s, e) = (start as usize, end as usize);
        RabitqSpace {
            model,
            codes: self.section("rabitq.codes").get(s * len..e * len).unwrap_or(&[]),
            factors: self.factors().get(s..e).unwrap_or(&[]),
            metric: self.parsed.manifest.metric,
        }
    }

    fn search_graph(&self, q: &[f32], k: usize, ef: usize, allow: Option<&Bitset>) -> Result<Vec<Cand>> {
        let m = &self.parsed.manifest;
        let (dim, metric, n) = (m.dim, m.metric, self.rows());
        let graph = self.graph()?;
        let ok = |r: u32| allow.is_none_or(|a| a.get(r));
        let mut out = match (&self.rabitq, m.quantization) {
            (Some(model), _) => {
                let lq = residual_query(model, metric, &model.rotate(q), self.centroids());
                let s = RabitqSpace { model, codes: self.section("rabitq.codes"), factors: self.factors(), metric };
                let mut pool = hnsw::search(&s, &graph, n, &lq, k, ef.max((k * RERANK_FACTOR).max(RERANK_MIN)), &ok);
                pool.iter_mut().for_each(|c| c.d = s.dist_f32(&lq, c.id));
                pool.sort_unstable();
                pool
            }
            (None, Quantization::Int8) => {
                let s = self.int8_space();
                hnsw::search(&s, &graph, n, &s.query(q), k, ef, &ok)
            }
            _ => {
                let s = F32Space::new(self.f32s("vectors"), dim, metric, &[]);
                hnsw::search(&s, &graph, n, &q.to_vec(), k, ef, &ok)
            }
        };
        out.truncate(k);
        if let Some(a) = allow
            && out.len() < k
            && a.count() > out.len()
        {
            // A filtered walk that came back short: scan every matching row (IVF with all lists).
            return Ok(self.scan(q, k, a));
        }
        Ok(out)
    }

    /// Scores every row in `allow` (graph kernels' fallback for selective filters).
    fn scan(&self, q: &[f32], k: usize, allow: &Bitset) -> Vec<Cand> {
        let m = &self.parsed.manifest;
        let metric = m.metric;
        let mut all: Vec<Cand> = match &self.rabitq {
            Some(model) => {
                let lq = residual_query(model, metric, &model.rotate(q), self.centroids());
                let s = RabitqSpace { model, codes: self.section("rabitq.codes"), factors: self.factors(), metric };
                (0..self.rows() as u32).filter(|&r| allow.get(r)).map(|r| Cand { d: s.dist(&lq, r), id: r }).collect()
            }
            None if m.quantization == Quantization::Int8 => {
                let s = self.int8_space();
                let qq = s.query(q);
                (0..self.rows() as u32).filter(|&r| allow.get(r)).map(|r| Cand { d: s.dist(&qq, r), id: r }).collect()
            }
            None => {
                let s = F32Space::new(self.f32s("vectors"), m.dim, metric, &[]);
                let qv = q.to_vec();
                (0..self.rows() as u32).filter(|&r| allow.get(r)).map(|r| Cand { d: s.dist(&qv, r), id: r }).collect()
            }
        };
        all.sort_unstable();
        all.truncate(k);
        all
    }

    /// Nearest rows with their ids, text and metadata.
    pub fn search(&self, query: &[f32], p: &SearchParams) -> Result<Vec<KernelHit>> {
        let rows = self.search_rows(query, p)?;
        self.hits(&rows)
    }

    /// The values of a block-stream section for `rows` (in that order), or for every row;
    /// all absent when the kernel has no such section.
    fn values(&self, name: &str, rows: Option<&[u32]>) -> Result<Vec<Option<Vec<u8>>>> {
        let n = rows.map_or(self.rows(), <[u32]>::len);
        let Some(b) = self.blocks(name)? else { return Ok(vec![None; n]) };
        let base = self.range(name).start as u64;
        match rows {
            Some(rows) => {
                let got = b.get(rows, &self.what, base)?; // sorted by row, deduplicated
                Ok(rows
                    .iter()
                    .map(|r| got.binary_search_by_key(r, |(g, _)| *g).ok().and_then(|i| got[i].1.clone()))
                    .collect())
            }
            None => {
                let all = b.all(&self.what, base)?;
                if all.len() != n {
                    return Err(self.corrupt(name, format!("block stream holds {} rows, the kernel {n}", all.len())));
                }
                Ok(all)
            }
        }
    }

    fn decode_ids(&self, v: Option<&[u8]>) -> Result<Vec<String>> {
        unpack_ids(v.unwrap_or(&[])).map_err(|e| self.corrupt("ids", e))
    }

    fn decode_text(&self, v: Option<Vec<u8>>) -> Result<Option<String>> {
        v.map(|v| String::from_utf8(v).map_err(|_| self.corrupt("text", "text is not UTF-8"))).transpose()
    }

    fn decode_metadata(&self, r: u32, v: Option<&[u8]>) -> Result<Option<Map<String, Value>>> {
        v.map(rmp_serde::from_slice::<Map<String, Value>>)
            .transpose()
            .map_err(|e| self.corrupt("metadata", format!("row {r}: {e}")))
    }

    /// Decodes rows into hits (scores from their distances).
    pub fn hits(&self, rows: &[Cand]) -> Result<Vec<KernelHit>> {
        let metric = self.parsed.manifest.metric;
        let ids: Vec<u32> = rows.iter().map(|c| c.id).collect();
        let (id_lists, texts, metas) =
            (self.values("ids", Some(&ids))?, self.values("text", Some(&ids))?, self.values("metadata", Some(&ids))?);
        rows.iter()
            .zip(id_lists)
            .zip(texts)
            .zip(metas)
            .map(|(((c, i), t), m)| {
                Ok(KernelHit {
                    row: c.id,
                    score: to_score(metric, c.d),
                    ids: self.decode_ids(i.as_deref())?,
                    text: self.decode_text(t)?,
                    metadata: self.decode_metadata(c.id, m.as_deref())?,
                })
            })
            .collect()
    }

    /// The first `k` original ids of the ranked rows, representatives' provenance expanded
    /// in place (a row's ids share its rank).
    pub fn expand_ids(&self, rows: &[Cand], k: usize) -> Result<Vec<String>> {
        let ids: Vec<u32> = rows.iter().map(|c| c.id).collect();
        let mut out = Vec::with_capacity(k);
        for v in self.values("ids", Some(&ids))? {
            out.extend(self.decode_ids(v.as_deref())?);
            if out.len() >= k {
                break;
            }
        }
        out.truncate(k);
        Ok(out)
    }

    /// Every row decoded (merge, diff): ids, text, metadata and the vector reconstructed
    /// from its codes (prepared for the metric, so unit length for cosine).
    pub fn rows_decoded(&self) -> Result<Vec<crate::Unit>> {
        let (ids, texts, metas) =
            (self.values("ids", None)?, self.values("text", None)?, self.values("metadata", None)?);
        ids.into_iter()
            .zip(texts)
            .zip(metas)
            .enumerate()
            .map(|(r, ((i, t), m))| {
                Ok(crate::Unit {
                    ids: self.decode_ids(i.as_deref())?,
                    vector: self.decode_vector(r as u32),
                    text: self.decode_text(t)?,
                    metadata: self.decode_metadata(r as u32, m.as_deref())?,
                })
            })
            .collect()
    }

    /// The vector of row `r` as well as the codes allow (the f32 row itself without
    /// quantization).
    pub fn decode_vector(&self, r: u32) -> Vec<f32> {
        let m = &self.parsed.manifest;
        let (dim, r) = (m.dim, r as usize);
        match (&self.rabitq, m.quantization) {
            (Some(model), _) => {
                let len = model.code_len();
                let codes = self.section("rabitq.codes").get(r * len..(r + 1) * len).unwrap_or(&[]);
                let [nr, _] = self.factors().get(r).copied().unwrap_or([0.0, 0.0]);
                let l = self.list_of(r as u32);
                let p = padded_dim(dim);
                let c = self.centroids().get(l * p..(l + 1) * p).unwrap_or(&[]);
                // x̄ (centred grid values), scaled to ‖x - c‖, plus the centroid; then un-rotate.
                let xb = model.dequantize(codes);
                let norm = distance::norm(&xb).max(1e-30);
                let rot: Vec<f32> = xb.iter().zip(c).map(|(x, c)| x / norm * nr + c).collect();
                model.unrotate(&rot)[..dim].to_vec()
            }
            (None, Quantization::Int8) => {
                let codes = self.section("int8.codes").get(r * dim..(r + 1) * dim).unwrap_or(&[]);
                let (lo, step) = (self.f32s("int8.lo"), self.f32s("int8.step"));
                codes.iter().zip(lo).zip(step).map(|((&c, &l), &s)| l + s * f32::from(c)).collect()
            }
            _ => self.f32s("vectors").get(r * dim..(r + 1) * dim).map_or_else(|| vec![0.0; dim], <[f32]>::to_vec),
        }
    }

    /// The IVF list holding row `r` (0 for graph kernels).
    fn list_of(&self, r: u32) -> usize {
        match self.parsed.manifest.index {
            IndexSpec::Ivf { .. } => {
                let off = self.u32s("ivf.offsets");
                off.partition_point(|&o| o <= r).saturating_sub(1).min(self.nlist() - 1)
            }
            IndexSpec::Hnsw { .. } => 0,
        }
    }
}
