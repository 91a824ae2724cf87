//! A segment's search index: one companion file `seg/{id:08}.idx` beside the immutable
//! segment, holding its HNSW graph, the vector codes the graph walk reads (none for f32:
//! the segment's own mapped vectors are used), the metadata payload index and the BM25
//! index. Written once, atomically; opened by mapping and validating it in place (no
//! rebuild), after which the parts the graph walk touches at random (links, codes, and
//! for f32 indexes the segment's vectors) are copied into anonymous memory. Every section
//! is checksummed and the file is bound to its segment (size, sequence range, rows,
//! dimension), so a stale or damaged file is refused and rebuilt. Layout:
//! `docs/format/index.md`.

use crate::bm25::Bm25Index;
use crate::filter::PayloadIndex;
use crate::hnsw::{self, Builder, Cand, Graph, GraphParts, HnswParams};
use crate::quant::{Int8Model, Int8Space, RabitqModel, RabitqSpace, Rotation};
use crate::space::{F32Space, inverse_norms};
use kernelize_store::{IndexSettings, Mapped, Metric, Quantization, Segment, Storage};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// File extension of segment index files.
pub const INDEX_EXT: &str = "idx";
const MAGIC: [u8; 8] = *b"KZINDEX1";
const VERSION: u32 = 1;
const FIXED_HEADER: usize = 24;
const TABLE_ENTRY: usize = 24;
const MAX_META: u64 = 1 << 20;
const ALIGN: usize = 64;

/// Section tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Tag {
    Layer0 = 1,
    UpperStart = 2,
    Upper = 3,
    InvNorms = 4,
    Int8Lo = 5,
    Int8Step = 6,
    Int8Codes = 7,
    Int8Norms = 8,
    RabitqCentroid = 9,
    RabitqRotation = 10,
    RabitqCodes = 11,
    RabitqFactors = 12,
    Payload = 13,
    Bm25 = 14,
}

const TAGS: [Tag; 14] = [
    Tag::Layer0,
    Tag::UpperStart,
    Tag::Upper,
    Tag::InvNorms,
    Tag::Int8Lo,
    Tag::Int8Step,
    Tag::Int8Codes,
    Tag::Int8Norms,
    Tag::RabitqCentroid,
    Tag::RabitqRotation,
    Tag::RabitqCodes,
    Tag::RabitqFactors,
    Tag::Payload,
    Tag::Bm25,
];

/// Why an index file could not be built or opened.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Index files are read in place and need a little-endian host.
    #[error("{0}: index files need a little-endian host")]
    Unsupported(PathBuf),
    /// The file is damaged or does not belong to its segment.
    #[error("{path}: offset {offset}: {reason}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Byte offset of the problem.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The segment could not be read.
    #[error(transparent)]
    Store(#[from] kernelize_store::Error),
}

fn corrupt<T>(path: &Path, offset: u64, reason: impl Into<String>) -> Result<T, IndexError> {
    Err(IndexError::Corrupt { path: path.to_owned(), offset, reason: reason.into() })
}

/// What the index file says about itself (JSON in the header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexMeta {
    /// Segment file size this index was built from.
    pub segment_bytes: u64,
    /// Segment sequence range.
    pub segment_seqs: (u64, u64),
    /// Rows in the segment (graph nodes, tombstones included but unlinked).
    pub nodes: u64,
    /// Rows in the graph (live records).
    pub indexed: u64,
    /// Vector dimension.
    pub dim: usize,
    /// Metric.
    pub metric: Metric,
    /// Settings the index was built with.
    pub settings: IndexSettings,
    /// Graph entry node (`u32::MAX` when empty) and its level.
    pub entry: u32,
    /// Level of the entry node.
    pub top: usize,
    /// Seconds the build took.
    pub build_secs: f64,
    /// Of which building the graph (the part peers' build times measure).
    #[serde(default)]
    pub graph_secs: f64,
}

/// Bytes an open index keeps resident for searching, by part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MemoryUse {
    /// Graph links.
    pub graph: u64,
    /// What the graph walk reads per vector: codes (quantized) or the f32 vectors.
    pub vectors: u64,
    /// Full-precision vectors read only to re-rank (stay on disk in the segment).
    pub rerank_on_disk: u64,
    /// Payload (filter) and BM25 indexes.
    pub payload_and_text: u64,
}

/// An open segment index.
#[derive(Debug)]
pub struct SegmentIndex {
    path: PathBuf,
    map: Mapped,
    meta: IndexMeta,
    sections: [Range<usize>; 15],
    rabitq: Option<RabitqModel>,
    /// Hot data in memory: the f32 vectors (no quantization) or the index file itself
    /// (graph and codes; the f32 vectors then stay on disk for re-ranking).
    resident: Resident,
    payload: PayloadIndex,
    bm25: Bm25Index,
}

/// A private, 8-byte aligned copy of hot data in anonymous memory backed by 2 MiB pages
/// where the kernel grants them (`MADV_HUGEPAGE`): the graph walk touches links, codes and
/// vectors at random, and with 4 KiB pages of a mapped file nearly every touch is also a
/// TLB miss. Falls back to the heap.
#[derive(Debug)]
pub struct Resident {
    map: Option<memmap2::MmapMut>,
    heap: Vec<u64>,
    len: usize,
}

impl Resident {
    /// Copies `bytes`.
    pub fn copy(bytes: &[u8]) -> Resident {
        let len = bytes.len();
        if len > 0
            && let Ok(mut m) = memmap2::MmapMut::map_anon(len)
        {
            #[cfg(target_os = "linux")]
            let _ = m.advise(memmap2::Advice::HugePage);
            m.copy_from_slice(bytes);
            return Resident { map: Some(m), heap: Vec::new(), len };
        }
        let mut heap = vec![0u64; len.div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut heap)[..len].copy_from_slice(bytes);
        Resident { map: None, heap, len }
    }

    /// The bytes viewed as floats (a trailing partial float is left out).
    pub fn floats(&self) -> &[f32] {
        let b = self.as_ref();
        bytemuck::try_cast_slice(&b[..b.len() / 4 * 4]).unwrap_or(&[])
    }
}

impl AsRef<[u8]> for Resident {
    fn as_ref(&self) -> &[u8] {
        match &self.map {
            Some(m) => &m[..self.len],
            None => &bytemuck::cast_slice::<u64, u8>(&self.heap)[..self.len],
        }
    }
}

fn le_bytes_u32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le_bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The segment's vectors copied into [`Resident`] memory.
fn resident_vectors(segment: &Segment) -> Resident {
    match segment.vectors() {
        Some(v) => Resident::copy(bytemuck::cast_slice(v)),
        None => {
            let v: Vec<f32> = (0..segment.len()).flat_map(|i| segment.vector(i).into_owned()).collect();
            Resident::copy(bytemuck::cast_slice(&v))
        }
    }
}

/// The path of `segment`'s index file.
pub fn index_path(segment: &Segment) -> PathBuf {
    kernelize_store::segment_companion(segment.path(), INDEX_EXT)
}

/// Builds the index of `segment` (graph on the current rayon pool) and returns the file.
pub fn build(segment: &Segment, metric: Metric, settings: IndexSettings) -> Result<Vec<u8>, IndexError> {
    let started = std::time::Instant::now();
    let n = segment.len();
    let dim = segment.dim();
    let resident = resident_vectors(segment);
    let vectors = resident.floats();
    let live = |i: u32| !segment.is_tombstone(i as usize);
    let mut inv = if metric == Metric::Cosine { inverse_norms(vectors, dim) } else { Vec::new() };
    let live_inv: Vec<f32> = inv.iter().enumerate().filter(|&(i, _)| live(i as u32)).map(|(_, &x)| x).collect();
    if crate::space::all_unit(&live_inv) {
        inv.clear(); // unit vectors (embedders normalise): cosine is 1 - dot, no norms
    }
    let space = F32Space::new(vectors, dim, metric, &inv);
    let params = HnswParams { m: settings.m, ef_construction: settings.ef_construction, ..HnswParams::default() };
    let builder = Builder::new(space, params);
    let graph_started = std::time::Instant::now();
    builder.insert_all(live);
    let parts: GraphParts = builder.freeze();
    let graph_secs = graph_started.elapsed().as_secs_f64();
    let indexed = (0..n as u32).filter(|&i| live(i)).count() as u64;

    let mut sections: Vec<(Tag, Vec<u8>)> = vec![
        (Tag::Layer0, le_bytes_u32(&parts.layer0)),
        (Tag::UpperStart, le_bytes_u32(&parts.upper_start)),
        (Tag::Upper, le_bytes_u32(&parts.upper)),
        (Tag::InvNorms, le_bytes_f32(&inv)),
    ];
    // Quantizers train on and encode the rows prepared for the metric, computed once.
    let rows: Vec<(usize, Vec<f32>)> = match settings.quantization {
        Quantization::None => Vec::new(),
        _ => (0..n).filter(|&i| live(i as u32)).map(|i| (i, space.node_query(i as u32))).collect(),
    };
    match settings.quantization {
        Quantization::None => {}
        Quantization::Int8 => {
            let model = Int8Model::train(dim, rows.iter().map(|(_, r)| r.as_slice()));
            let mut codes = vec![0u8; n * dim];
            let mut norms = vec![0f32; n];
            for (i, r) in &rows {
                norms[*i] = model.encode(r, &mut codes[i * dim..(i + 1) * dim]);
            }
            sections.push((Tag::Int8Lo, le_bytes_f32(&model.lo)));
            sections.push((Tag::Int8Step, le_bytes_f32(&model.step)));
            sections.push((Tag::Int8Codes, codes));
            sections.push((Tag::Int8Norms, le_bytes_f32(&norms)));
        }
        Quantization::Rabitq1 | Quantization::Rabitq4 => {
            let bits = if settings.quantization == Quantization::Rabitq1 { 1 } else { 4 };
            let model = RabitqModel::train(bits, dim, rows.iter().map(|(_, r)| r.as_slice()), params.seed);
            let len = model.code_len();
            let mut codes = vec![0u8; n * len];
            let mut factors = vec![0f32; n * 2];
            for (i, r) in &rows {
                let i = *i;
                let f = model.encode(r, &mut codes[i * len..(i + 1) * len]);
                factors[2 * i..2 * i + 2].copy_from_slice(&f);
            }
            sections.push((Tag::RabitqCentroid, le_bytes_f32(&model.centroid)));
            // `train` draws a dense rotation: segment index files keep the matrix.
            if let Rotation::Dense(matrix) = &model.rotation {
                sections.push((Tag::RabitqRotation, le_bytes_f32(matrix)));
            }
            sections.push((Tag::RabitqCodes, codes));
            sections.push((Tag::RabitqFactors, le_bytes_f32(&factors)));
        }
    }
    // Payload and text: decode each live record once.
    let mut metas = Vec::with_capacity(n);
    let mut texts = Vec::with_capacity(n);
    for i in 0..n {
        if !live(i as u32) {
            continue;
        }
        let (_, entry) = segment.entry(i)?;
        if let Some(r) = entry.record {
            metas.push((i as u32, r.metadata.clone()));
            texts.push((i as u32, r.text.clone()));
        }
    }
    let payload = PayloadIndex::build(n as u32, metas.iter().map(|(i, m)| (*i, m.as_ref())));
    let bm25 = Bm25Index::build(n as u32, texts.iter().filter_map(|(i, t)| t.as_deref().map(|t| (*i, t))));
    sections.push((Tag::Payload, payload.to_bytes()));
    sections.push((Tag::Bm25, bm25.to_bytes()));

    let (min_seq, max_seq) = segment.seq_range();
    let meta = IndexMeta {
        segment_bytes: segment.file_bytes() as u64,
        segment_seqs: (min_seq, max_seq),
        nodes: n as u64,
        indexed,
        dim,
        metric,
        settings,
        entry: parts.entry,
        top: parts.top,
        build_secs: started.elapsed().as_secs_f64(),
        graph_secs,
    };
    Ok(encode_file(&meta, &sections))
}

fn encode_file(meta: &IndexMeta, sections: &[(Tag, Vec<u8>)]) -> Vec<u8> {
    let meta_json = serde_json::to_vec(meta).unwrap_or_default();
    let head_len = FIXED_HEADER + sections.len() * TABLE_ENTRY + meta_json.len() + 4;
    let mut offsets = Vec::with_capacity(sections.len());
    let mut at = head_len.next_multiple_of(ALIGN);
    for (_, bytes) in sections {
        offsets.push(at);
        at = (at + bytes.len()).next_multiple_of(ALIGN);
    }
    let mut out = Vec::with_capacity(at);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    out.extend_from_slice(&(meta_json.len() as u64).to_le_bytes());
    for ((tag, bytes), off) in sections.iter().zip(&offsets) {
        out.extend_from_slice(&(*tag as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(bytes).to_le_bytes());
        out.extend_from_slice(&(*off as u64).to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(&meta_json);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    for ((_, bytes), off) in sections.iter().zip(&offsets) {
        out.resize(*off, 0);
        out.extend_from_slice(bytes);
    }
    out.resize(at, 0);
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
}

impl SegmentIndex {
    /// Opens and validates the index file of `segment` (every checksum, the graph's links,
    /// the binding to the segment). `Ok(None)` when there is no file.
    pub fn open(storage: &dyn Storage, segment: &Segment) -> Result<Option<SegmentIndex>, IndexError> {
        let path = index_path(segment);
        match storage.exists(&path) {
            Ok(false) => return Ok(None),
            Ok(true) => {}
            Err(source) => return Err(IndexError::Io { path, source }),
        }
        let map = storage.map(&path).map_err(|source| IndexError::Io { path: path.clone(), source })?;
        SegmentIndex::from_mapped(path, map, segment).map(Some)
    }

    /// Validates index bytes against their segment. The bytes are first copied, once, into
    /// [`Resident`] memory: aligned (whatever the storage backend handed over) and where the
    /// graph walk reads links and codes at random.
    pub fn from_mapped(path: PathBuf, map: Mapped, segment: &Segment) -> Result<SegmentIndex, IndexError> {
        let map = Mapped::new(Resident::copy(&map));
        if cfg!(target_endian = "big") {
            return Err(IndexError::Unsupported(path));
        }
        let b: &[u8] = &map;
        if b.len() < FIXED_HEADER + 4 || b[..8] != MAGIC {
            return corrupt(&path, 0, "bad magic: not a Kernelize segment index");
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return corrupt(&path, 8, format!("unsupported index version {version}"));
        }
        let count = u32_at(b, 12) as usize;
        let meta_len = u64_at(b, 16);
        if count > 64 || meta_len > MAX_META {
            return corrupt(&path, 12, format!("{count} sections / {meta_len}-byte metadata is out of range"));
        }
        let head_len = FIXED_HEADER + count * TABLE_ENTRY + meta_len as usize;
        if b.len() < head_len + 4 {
            return corrupt(&path, 0, format!("file is {} bytes, header needs {}", b.len(), head_len + 4));
        }
        if crc32c::crc32c(&b[..head_len]) != u32_at(b, head_len) {
            return corrupt(&path, head_len as u64, "header checksum mismatch");
        }
        let meta: IndexMeta = serde_json::from_slice(&b[head_len - meta_len as usize..head_len])
            .or_else(|e| corrupt(&path, (head_len - meta_len as usize) as u64, format!("metadata: {e}")))?;
        let mut sections: [Range<usize>; 15] = Default::default();
        for s in 0..count {
            let at = FIXED_HEADER + s * TABLE_ENTRY;
            let tag = u32_at(b, at);
            let crc = u32_at(b, at + 4);
            let (off, len) = (u64_at(b, at + 8), u64_at(b, at + 16));
            let Some(slot) = TAGS.iter().position(|t| *t as u32 == tag) else {
                return corrupt(&path, at as u64, format!("unknown section tag {tag}"));
            };
            if sections[slot + 1] != (0..0) {
                return corrupt(&path, at as u64, format!("section {tag} appears twice"));
            }
            let end = off.checked_add(len).filter(|&e| e <= b.len() as u64 && off as usize >= head_len + 4);
            let Some(end) = end else {
                return corrupt(&path, at as u64, format!("section {tag} ({off}+{len}) is outside the file"));
            };
            if !(off as usize).is_multiple_of(ALIGN) {
                return corrupt(&path, at as u64, format!("section {tag} at {off} is not {ALIGN}-byte aligned"));
            }
            let range = off as usize..end as usize;
            if crc32c::crc32c(&b[range.clone()]) != crc {
                return corrupt(&path, off, format!("section {tag} checksum mismatch"));
            }
            sections[slot + 1] = range;
        }
        let (min_seq, max_seq) = segment.seq_range();
        if meta.segment_bytes != segment.file_bytes() as u64
            || meta.segment_seqs != (min_seq, max_seq)
            || meta.nodes != segment.len() as u64
            || meta.dim != segment.dim()
        {
            return corrupt(&path, 0, format!("built for another segment than {}", segment.path().display()));
        }
        if meta.indexed > meta.nodes {
            let at = (head_len - meta_len as usize) as u64;
            return corrupt(&path, at, format!("metadata: {} indexed rows, but {} nodes", meta.indexed, meta.nodes));
        }
        let payload_bytes = &b[sections[Tag::Payload as usize].clone()];
        let payload = PayloadIndex::from_bytes(payload_bytes)
            .or_else(|e| corrupt(&path, sections[Tag::Payload as usize].start as u64, format!("payload index: {e}")))?;
        let bm25 = Bm25Index::from_bytes(&b[sections[Tag::Bm25 as usize].clone()])
            .or_else(|e| corrupt(&path, sections[Tag::Bm25 as usize].start as u64, format!("BM25 index: {e}")))?;
        let resident = match meta.settings.quantization {
            Quantization::None => resident_vectors(segment),
            _ => Resident::copy(&[]),
        };
        let mut ix = SegmentIndex { path, map, meta, sections, rabitq: None, resident, payload, bm25 };
        if let Quantization::Rabitq1 | Quantization::Rabitq4 = ix.meta.settings.quantization {
            let bits = if ix.meta.settings.quantization == Quantization::Rabitq1 { 1 } else { 4 };
            ix.rabitq = Some(RabitqModel {
                bits,
                dim: ix.meta.dim,
                centroid: ix.f32s(Tag::RabitqCentroid).to_vec(),
                rotation: Rotation::Dense(ix.f32s(Tag::RabitqRotation).to_vec()),
            });
        }
        ix.check_shapes()?;
        Ok(ix)
    }

    fn bytes(&self, tag: Tag) -> &[u8] {
        self.map.get(self.sections[tag as usize].clone()).unwrap_or(&[])
    }

    fn u32s(&self, tag: Tag) -> &[u32] {
        bytemuck::try_cast_slice(self.bytes(tag)).unwrap_or(&[])
    }

    fn f32s(&self, tag: Tag) -> &[f32] {
        bytemuck::try_cast_slice(self.bytes(tag)).unwrap_or(&[])
    }

    fn factors(&self) -> &[[f32; 2]] {
        bytemuck::try_cast_slice(self.bytes(Tag::RabitqFactors)).unwrap_or(&[])
    }

    /// Checks every array's length against the metadata, and the graph's links.
    fn check_shapes(&self) -> Result<(), IndexError> {
        let (n, dim) = (self.meta.nodes as usize, self.meta.dim);
        let bad = |what: &str| corrupt::<()>(&self.path, 0, format!("{what} has the wrong length"));
        self.graph()?;
        let norms = self.f32s(Tag::InvNorms).len();
        if self.meta.metric == Metric::Cosine && norms != n && norms != 0 {
            return bad("norms section");
        }
        match self.meta.settings.quantization {
            Quantization::None => {}
            Quantization::Int8 => {
                if self.f32s(Tag::Int8Lo).len() != dim || self.f32s(Tag::Int8Step).len() != dim {
                    return bad("int8 model");
                }
                if self.bytes(Tag::Int8Codes).len() != n * dim || self.f32s(Tag::Int8Norms).len() != n {
                    return bad("int8 codes");
                }
            }
            Quantization::Rabitq1 | Quantization::Rabitq4 => {
                let Some(m) = &self.rabitq else { return bad("RaBitQ model") };
                let d = m.padded();
                if m.centroid.len() != dim || !m.rotation.fits(d) {
                    return bad("RaBitQ model");
                }
                if self.bytes(Tag::RabitqCodes).len() != n * m.code_len() || self.factors().len() != n {
                    return bad("RaBitQ codes");
                }
            }
        }
        if self.payload.len() as usize != n || self.bm25.len() as usize != n {
            return bad("payload or BM25 index");
        }
        Ok(())
    }

    /// The graph, validated at open.
    fn graph_view(&self) -> Graph<'_> {
        Graph::trusted(
            self.meta.nodes as usize,
            self.meta.settings.m,
            self.meta.entry,
            self.meta.top,
            self.u32s(Tag::Layer0),
            self.u32s(Tag::UpperStart),
            self.u32s(Tag::Upper),
        )
    }

    fn graph(&self) -> Result<Graph<'_>, IndexError> {
        let g = self.graph_view();
        match g.validate() {
            Ok(()) => Ok(g),
            Err(e) => corrupt(&self.path, self.sections[Tag::Layer0 as usize].start as u64, format!("graph: {}", e.0)),
        }
    }

    /// The file's metadata.
    pub fn meta(&self) -> &IndexMeta {
        &self.meta
    }

    /// The index file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata payload index.
    pub fn payload(&self) -> &PayloadIndex {
        &self.payload
    }

    /// The BM25 index.
    pub fn bm25(&self) -> &Bm25Index {
        &self.bm25
    }

    /// Resident bytes by part.
    pub fn memory(&self) -> MemoryUse {
        let graph =
            (self.bytes(Tag::Layer0).len() + self.bytes(Tag::UpperStart).len() + self.bytes(Tag::Upper).len()) as u64;
        let full = self.meta.indexed * self.meta.dim as u64 * 4;
        let norms = self.bytes(Tag::InvNorms).len() as u64;
        let (vectors, rerank_on_disk) = match self.meta.settings.quantization {
            Quantization::None => (full + norms, 0),
            Quantization::Int8 => {
                ((self.bytes(Tag::Int8Codes).len() + self.bytes(Tag::Int8Norms).len() + 8 * self.meta.dim) as u64, full)
            }
            Quantization::Rabitq1 | Quantization::Rabitq4 => (
                (self.bytes(Tag::RabitqCodes).len()
                    + self.bytes(Tag::RabitqFactors).len()
                    + self.bytes(Tag::RabitqRotation).len()
                    + self.bytes(Tag::RabitqCentroid).len()) as u64,
                full,
            ),
        };
        MemoryUse {
            graph,
            vectors,
            rerank_on_disk,
            payload_and_text: (self.payload.memory_bytes() + self.bm25.memory_bytes()) as u64,
        }
    }

    /// Approximate nearest neighbours of `query` among the rows `allow` accepts, with exact
    /// distances: the graph walk reads codes (or f32 vectors), and for quantized indexes the
    /// whole beam (`max(ef, k)` candidates) is re-ranked with the segment's f32 vectors.
    /// Returns up to `k` rows, closest first.
    pub fn search(
        &self,
        segment: &Segment,
        query: &[f32],
        k: usize,
        ef: usize,
        allow: &impl Fn(u32) -> bool,
    ) -> Result<Vec<Cand>, IndexError> {
        self.search_counting(segment, query, k, ef, allow, None)
    }

    /// [`SegmentIndex::search`], adding the distances it computes (walk and re-rank) to
    /// `scored` when given (a query's explain).
    pub fn search_counting(
        &self,
        segment: &Segment,
        query: &[f32],
        k: usize,
        ef: usize,
        allow: &impl Fn(u32) -> bool,
        scored: Option<&mut u64>,
    ) -> Result<Vec<Cand>, IndexError> {
        let graph = self.graph_view();
        let n = self.meta.nodes as usize;
        let (metric, dim) = (self.meta.metric, self.meta.dim);
        let owned;
        let vectors: &[f32] = match (self.resident.floats(), segment.vectors()) {
            (r, _) if !r.is_empty() => r,
            (_, Some(v)) => v,
            _ => {
                owned = (0..n).flat_map(|i| segment.vector(i).into_owned()).collect::<Vec<f32>>();
                &owned
            }
        };
        let exact = F32Space::new(vectors, dim, metric, self.f32s(Tag::InvNorms));
        let q = crate::space::prepare_query(metric, query);
        // The walk, through a counting space only when the count is wanted.
        fn walk<S: hnsw::Space, L: hnsw::Links>(
            s: &S,
            graph: &L,
            n: usize,
            q: &S::Query,
            (k, ef): (usize, usize),
            allow: &impl Fn(u32) -> bool,
            scored: &mut Option<&mut u64>,
        ) -> Vec<Cand> {
            match scored {
                None => hnsw::search(s, graph, n, q, k, ef, allow),
                Some(count) => {
                    let counted = hnsw::Counted::new(s);
                    let r = hnsw::search(&counted, graph, n, q, k, ef, allow);
                    **count += counted.count();
                    r
                }
            }
        }
        let mut scored = scored;
        let pool = match self.meta.settings.quantization {
            Quantization::None => {
                let mut r = walk(&exact, &graph, n, &q, (k, ef), allow, &mut scored);
                r.truncate(k);
                return Ok(r);
            }
            Quantization::Int8 => {
                let s = Int8Space {
                    lo: self.f32s(Tag::Int8Lo),
                    step: self.f32s(Tag::Int8Step),
                    codes: self.bytes(Tag::Int8Codes),
                    norms2: self.f32s(Tag::Int8Norms),
                    dim,
                    metric,
                };
                walk(&s, &graph, n, &s.query(query), (k, ef), allow, &mut scored)
            }
            Quantization::Rabitq1 | Quantization::Rabitq4 => {
                let Some(model) = &self.rabitq else { return Ok(Vec::new()) };
                let s = RabitqSpace { model, codes: self.bytes(Tag::RabitqCodes), factors: self.factors(), metric };
                walk(&s, &graph, n, &s.query(query), (k, ef), allow, &mut scored)
            }
        };
        if let Some(count) = scored {
            *count += pool.len() as u64;
        }
        let mut exact_pool = hnsw::score(&exact, &q, pool.iter().map(|c| c.id));
        exact_pool.truncate(k);
        Ok(exact_pool)
    }

    /// Exact distances from `query` to the given rows (for exact search and re-ranking).
    pub fn exact(&self, segment: &Segment, query: &[f32], rows: impl Iterator<Item = u32>) -> Vec<Cand> {
        let q = crate::space::prepare_query(self.meta.metric, query);
        let inv = self.f32s(Tag::InvNorms);
        rows.map(|i| {
            let v = segment.vector(i as usize);
            Cand {
                d: crate::space::metric_dist(self.meta.metric, &q, &v, inv.get(i as usize).copied().unwrap_or(1.0)),
                id: i,
            }
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernelize_store::{CollectionConfig, Database, Durability, MemStorage, Options, Record};
    use std::sync::Arc;

    /// A small flushed segment (with a tombstone) and its index file.
    fn segment(quantization: Quantization) -> (Arc<Segment>, Vec<u8>) {
        let opts = Options { durability: Durability::Buffered, ..Options::default() };
        let db = Database::open_with(Arc::new(MemStorage::new()), Path::new("/db"), opts).expect("database");
        let settings = IndexSettings { m: 4, ef_construction: 16, quantization };
        let mut config = CollectionConfig::new(5, Metric::L2);
        config.index = settings;
        let c = db.create_collection("c", config).expect("collection");
        let records = (0..30)
            .map(|i| Record {
                id: format!("r{i}"),
                vector: (0..5).map(|j| ((i * 5 + j) as f32 * 0.7).sin()).collect(),
                text: Some(format!("text {i}")),
                metadata: None,
            })
            .collect();
        c.upsert(records).expect("upsert");
        c.delete(vec!["r7".into()]).expect("delete");
        c.flush().expect("flush");
        let seg = c.snapshot().segments()[0].clone();
        let bytes = build(&seg, Metric::L2, settings).expect("build");
        (seg, bytes)
    }

    /// `bytes` re-encoded (valid checksums) with its metadata changed by `edit`.
    fn with_meta(seg: &Segment, bytes: Vec<u8>, edit: impl FnOnce(&mut IndexMeta)) -> Vec<u8> {
        let ix = SegmentIndex::from_mapped(PathBuf::from("t.idx"), Mapped::new(bytes), seg).expect("opens");
        let sections: Vec<(Tag, Vec<u8>)> =
            TAGS.iter().filter(|&&t| ix.sections[t as usize] != (0..0)).map(|&t| (t, ix.bytes(t).to_vec())).collect();
        let mut meta = ix.meta.clone();
        edit(&mut meta);
        encode_file(&meta, &sections)
    }

    #[test]
    fn segment_index_open_does_not_panic_on_indexed_beyond_nodes() {
        // `indexed` sized `memory()`'s arithmetic, which overflowed on huge values.
        for quantization in [Quantization::None, Quantization::Int8] {
            let (seg, bytes) = segment(quantization);
            let bytes = with_meta(&seg, bytes, |m| m.indexed = u64::MAX / 3);
            let err = SegmentIndex::from_mapped(PathBuf::from("t.idx"), Mapped::new(bytes), &seg).expect_err("refused");
            assert!(err.to_string().contains("indexed rows"), "{err}");
        }
    }
}
