//! Building a kernel: consolidate near-duplicates, group rows into IVF lists (or link them
//! in an HNSW graph), quantize the vectors, compress ids, text and metadata in blocks with
//! trained dictionaries, measure what was kept (recall against exact search over the
//! original records), then sign.

use crate::error::{KernelError, Result};
use crate::format::{self, IndexSpec, Manifest, SourceInfo};
use crate::ivf;
use crate::kernel::{Kernel, SearchParams};
use crate::keys::SigningKey;
use crate::{blocks, pack_ids};
use kernelize_index::distance;
use kernelize_index::hnsw::{Builder, HnswParams};
use kernelize_index::quant::{Int8Model, RabitqModel, Rotation};
use kernelize_index::space::{F32Space, prepare_query};
use kernelize_store::{Metric, Quantization};
use rand::SeedableRng;
use rand::seq::index::sample;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One input to a build: a record, or (in a merge) a row of another kernel that already
/// stands for several ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// The ids it stands for, its own first.
    pub ids: Vec<String>,
    /// Vector (collection dimension).
    pub vector: Vec<f32>,
    /// Text.
    pub text: Option<String>,
    /// Metadata.
    pub metadata: Option<Map<String, Value>>,
}

/// The search structure to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// Inverted file with `nlist` lists (default about `2·√n`).
    Ivf {
        /// Lists.
        nlist: Option<usize>,
    },
    /// HNSW graph.
    Hnsw {
        /// Links per node.
        m: usize,
        /// Beam width while building.
        ef_construction: usize,
    },
}

/// A held-out query for the build's quality report.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalQuery {
    /// The query vector.
    pub vector: Vec<f32>,
    /// The id that answers it, for task recall (WordNet: lemma → its gloss).
    pub answer: Option<String>,
}

/// How to build.
#[derive(Clone)]
pub struct BuildOptions {
    /// Consolidate records whose cosine similarity is at least this (None: keep all).
    pub dedup_threshold: Option<f32>,
    /// How vectors are kept.
    pub quantization: Quantization,
    /// Keep record text.
    pub keep_text: bool,
    /// Search structure.
    pub index: IndexKind,
    /// Expiry, Unix seconds.
    pub expires: Option<u64>,
    /// The kernel's version number.
    pub kernel_version: u64,
    /// Held-out queries; empty: sample [`DEFAULT_EVAL_QUERIES`] records.
    pub queries: Vec<EvalQuery>,
    /// Recall@10 the default `nprobe` / `ef` must reach on the queries.
    pub target_recall: f32,
    /// Seed of sampling, k-means and the rotation.
    pub seed: u64,
    /// Polled between stages (and k-means iterations): `true` stops the build with
    /// [`KernelError::Cancelled`].
    pub cancel: Option<Cancel>,
}

/// A build's cancellation check.
pub type Cancel = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

impl Default for BuildOptions {
    fn default() -> BuildOptions {
        BuildOptions {
            dedup_threshold: Some(0.97),
            quantization: Quantization::Rabitq4,
            keep_text: true,
            index: IndexKind::Ivf { nlist: None },
            expires: None,
            kernel_version: 1,
            queries: Vec::new(),
            target_recall: 0.95,
            seed: 0x6b65_726e_656c,
            cancel: None,
        }
    }
}

impl std::fmt::Debug for BuildOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildOptions")
            .field("dedup_threshold", &self.dedup_threshold)
            .field("quantization", &self.quantization)
            .field("index", &self.index)
            .field("queries", &self.queries.len())
            .finish_non_exhaustive()
    }
}

/// Records sampled as queries when none are given.
pub const DEFAULT_EVAL_QUERIES: usize = 200;
/// k of the recall measurements.
pub const EVAL_K: usize = 10;

/// Bytes of the raw input, counted in binary: f32 vectors, UTF-8 text, metadata as
/// MessagePack (ids apart: they are not part of `total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RawBytes {
    /// `records × dim × 4`.
    pub vectors: u64,
    /// UTF-8 text.
    pub text: u64,
    /// Metadata, MessagePack.
    pub metadata: u64,
    /// Ids, UTF-8 (not in `total`).
    pub ids: u64,
    /// vectors + text + metadata.
    pub total: u64,
}

/// Recall of kernel search against exact search over the original records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    /// Queries used.
    pub queries: usize,
    /// Where they came from.
    pub source: String,
    /// k.
    pub k: usize,
    /// `nprobe` (IVF) or `ef` (HNSW).
    pub param: String,
    /// Recall@k at each value tried.
    pub curve: Vec<(usize, f32)>,
    /// The default chosen: the smallest value reaching the target (else the best tried).
    pub chosen: usize,
    /// Recall@k at the default.
    pub recall: f32,
    /// Queries with a known answer: recall@k of the answer, exact search over the
    /// original records (before) and kernel search (after).
    pub task: Option<TaskRecall>,
}

/// Task recall before and after.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TaskRecall {
    /// Queries with an answer in the collection.
    pub queries: usize,
    /// Exact search over the original records.
    pub before: f32,
    /// Kernel search.
    pub after: f32,
}

/// What a build kept and lost; stored in the signed manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Records (or input rows' ids) read.
    pub records_in: u64,
    /// Rows kept after consolidation.
    pub rows_out: u64,
    /// Rows folded into a representative (their ids stay as its provenance; their own
    /// text, metadata and vector are not kept).
    pub consolidated: u64,
    /// Raw input bytes.
    pub raw: RawBytes,
    /// Recall.
    pub eval: Option<Eval>,
    /// Seconds the build took.
    pub build_secs: f64,
}

/// Progress callback: stage name and fraction done of the whole build.
pub type Progress<'a> = &'a (dyn Fn(&str, f32) + Sync);

/// A built kernel: the file's bytes and its manifest.
#[derive(Debug)]
pub struct Built {
    /// The file.
    pub bytes: Vec<u8>,
    /// Its manifest (report included).
    pub manifest: Manifest,
}

fn metadata_bytes(m: &Map<String, Value>) -> Vec<u8> {
    rmp_serde::to_vec(m).unwrap_or_default()
}

/// Exact top-`k` row indexes of `q` (prepared) among `vectors` (prepared).
fn exact_top(space: &F32Space<'_>, q: &Vec<f32>, k: usize) -> Vec<u32> {
    use kernelize_index::hnsw::Space;
    let mut all: Vec<(f32, u32)> = (0..space.len() as u32).map(|i| (space.dist(q, i), i)).collect();
    let k = k.min(all.len());
    if k == 0 {
        return Vec::new();
    }
    all.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.truncate(k);
    all.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.into_iter().map(|(_, i)| i).collect()
}

/// Groups near-duplicates: returns, for each representative (in input order), the inputs
/// it stands for (itself first). Candidates come from each row's two nearest lists.
fn consolidate(unit: &[f32], dim: usize, assigned: &[[(u32, f32); 2]], nlist: usize, threshold: f32) -> Vec<Vec<u32>> {
    let n = assigned.len();
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); nlist];
    for (i, a) in assigned.iter().enumerate() {
        members[a[0].0 as usize].push(i as u32);
        if a[1].0 != a[0].0 {
            members[a[1].0 as usize].push(i as u32);
        }
    }
    let row = |i: u32| &unit[i as usize * dim..(i as usize + 1) * dim];
    let near: Vec<Vec<u32>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut out = Vec::new();
            let a = assigned[i];
            for l in [a[0].0, a[1].0].iter().copied().collect::<std::collections::BTreeSet<u32>>() {
                for &j in &members[l as usize] {
                    if j as usize > i && distance::dot(row(i as u32), row(j)) >= threshold {
                        out.push(j);
                    }
                }
            }
            out.sort_unstable();
            out.dedup();
            out
        })
        .collect();
    let mut taken = vec![false; n];
    let mut groups = Vec::new();
    for i in 0..n {
        if taken[i] {
            continue;
        }
        taken[i] = true;
        let mut g = vec![i as u32];
        for &j in &near[i] {
            if !taken[j as usize] {
                taken[j as usize] = true;
                g.push(j);
            }
        }
        groups.push(g);
    }
    groups
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Centroids of `width` values each, as format 2 stores them (`centroids.i8`): per row a
/// little-endian f32 scale `s` = max |value| / 127, then `width` signed bytes `c`, the
/// value being `s·c`.
fn centroids_i8(v: &[f32], width: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() / width.max(1) * (4 + width));
    for row in v.chunks_exact(width) {
        let scale = row.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
        out.extend_from_slice(&scale.to_le_bytes());
        out.extend(
            row.iter().map(|&x| if scale > 0.0 { (x / scale).round().clamp(-127.0, 127.0) as i8 as u8 } else { 0 }),
        );
    }
    out
}

/// `row` as a reader of [`centroids_i8`] gets it back.
fn i8_rounded(row: &[f32]) -> Vec<f32> {
    let bytes = centroids_i8(row, row.len());
    crate::kernel::decode_centroids_i8(&bytes, row.len()).unwrap_or_else(|_| row.to_vec())
}

fn le_u32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Builds a kernel from `units` (`dim`-dimensional, `metric`), signed by `key`.
pub fn build(
    units: Vec<Unit>,
    dim: usize,
    metric: Metric,
    source: SourceInfo,
    opts: &BuildOptions,
    key: &SigningKey,
    progress: Progress<'_>,
) -> Result<Built> {
    let started = std::time::Instant::now();
    let stop = || opts.cancel.as_ref().is_some_and(|c| c());
    let progress = |stage: &str, f: f32| -> Result<()> {
        if stop() {
            return Err(KernelError::Cancelled);
        }
        progress(stage, f);
        Ok(())
    };
    if dim == 0 {
        return Err(KernelError::Invalid("dimension 0".into()));
    }
    if let Some(u) = units.iter().find(|u| u.vector.len() != dim || u.ids.is_empty()) {
        return Err(KernelError::Invalid(format!(
            "record {:?}: vector has {} dimensions, the kernel {dim}",
            u.ids.first().map_or("", String::as_str),
            u.vector.len()
        )));
    }
    if let Some(t) = opts.dedup_threshold
        && !(-1.0..=1.0).contains(&t)
    {
        return Err(KernelError::Invalid(format!("dedup threshold {t} is not a cosine similarity in [-1, 1]")));
    }
    progress("preparing", 0.0)?;
    let n_in = units.len();
    let records_in: u64 = units.iter().map(|u| u.ids.len() as u64).sum();
    let mut raw = RawBytes::default();
    for u in &units {
        raw.vectors += (dim * 4) as u64;
        raw.text += u.text.as_ref().map_or(0, |t| t.len() as u64);
        raw.metadata += u.metadata.as_ref().map_or(0, |m| metadata_bytes(m).len() as u64);
        raw.ids += u.ids.iter().map(|i| i.len() as u64).sum::<u64>();
    }
    raw.total = raw.vectors + raw.text + raw.metadata;
    let prepared: Vec<f32> = units.par_iter().flat_map_iter(|u| prepare_query(metric, &u.vector)).collect();

    // Lists: for the inverted file and for near-duplicate candidates.
    progress("clustering", 0.05)?;
    let nlist = match opts.index {
        IndexKind::Ivf { nlist: Some(l) } => l.clamp(1, n_in.max(1)),
        _ => ivf::default_nlist(n_in),
    };
    let centroids = ivf::kmeans(&prepared, dim, nlist, opts.seed, &stop);
    progress("assigning", 0.2)?;
    let nlist = centroids.len() / dim;
    let assigned = ivf::assign(&prepared, dim, &centroids);

    progress("consolidating", 0.25)?;
    let groups: Vec<Vec<u32>> = match opts.dedup_threshold {
        Some(t) if n_in > 1 => {
            let unit: Vec<f32> = if metric == Metric::Cosine {
                prepared.clone()
            } else {
                prepared.chunks_exact(dim).flat_map(|r| prepare_query(Metric::Cosine, r)).collect()
            };
            consolidate(&unit, dim, &assigned, nlist, t)
        }
        _ => (0..n_in as u32).map(|i| vec![i]).collect(),
    };
    // Row order: by list for the inverted file (a list is a contiguous run of rows).
    let mut reps: Vec<usize> = (0..groups.len()).collect();
    if let IndexKind::Ivf { .. } = opts.index {
        reps.sort_by_key(|&g| assigned[groups[g][0] as usize][0].0);
    }
    let rows = reps.len();
    let rep_unit = |r: usize| groups[reps[r]][0] as usize;
    let row_vec = |r: usize| &prepared[rep_unit(r) * dim..(rep_unit(r) + 1) * dim];

    progress("quantizing", 0.35)?;
    let mut sections: Vec<(&str, Vec<u8>)> = Vec::new();
    let padded = kernelize_index::quant::padded_dim(dim);
    let rabitq = match opts.quantization {
        Quantization::Rabitq1 | Quantization::Rabitq4 => {
            let bits = if opts.quantization == Quantization::Rabitq1 { 1 } else { 4 };
            Some(RabitqModel::train_with(bits, dim, (0..rows).map(row_vec), Rotation::hadamard(padded, opts.seed)))
        }
        _ => None,
    };
    // IVF lists (rows grouped by list) and the centroids each row's residual is taken from.
    let mut list_of_row: Vec<u32> = vec![0; rows];
    let mut offsets = vec![0u32; nlist + 1];
    if let IndexKind::Ivf { .. } = opts.index {
        for (r, l) in list_of_row.iter_mut().enumerate() {
            *l = assigned[rep_unit(r)][0].0;
            offsets[*l as usize + 1] += 1;
        }
        for l in 0..nlist {
            offsets[l + 1] += offsets[l];
        }
    }
    match (&rabitq, opts.quantization) {
        (Some(model), _) => {
            // Centroids in rotated space: per list (IVF) or the global one (HNSW).
            // Stored in 8 bits: residuals are taken from the rounded centroids, the ones a
            // reader decodes.
            let cents: Vec<Vec<f32>> = match opts.index {
                IndexKind::Ivf { .. } => {
                    centroids.par_chunks_exact(dim).map(|c| i8_rounded(&model.rotate(c))).collect()
                }
                IndexKind::Hnsw { .. } => vec![i8_rounded(&model.rotate(&model.centroid))],
            };
            let len = model.code_len();
            let mut codes = vec![0u8; rows * len];
            let factors: Vec<[f32; 2]> = codes
                .par_chunks_exact_mut(len)
                .enumerate()
                .map(|(r, out)| {
                    let c = &cents[if cents.len() == 1 { 0 } else { list_of_row[r] as usize }];
                    let mut u = model.rotate(row_vec(r));
                    u.iter_mut().zip(c).for_each(|(x, c)| *x -= c);
                    model.encode_rotated(u, out)
                })
                .collect();
            if let Rotation::Hadamard { signs } = &model.rotation {
                sections.push(("rabitq.signs", signs.clone()));
            }
            sections.push(("rabitq.codes", codes));
            sections.push(("rabitq.factors", le_f32(bytemuck::cast_slice(&factors))));
            let flat: Vec<f32> = cents.into_iter().flatten().collect();
            debug_assert_eq!(flat.len() % padded, 0);
            sections.push(("centroids.i8", centroids_i8(&flat, padded)));
        }
        (None, Quantization::Int8) => {
            let model = Int8Model::train(dim, (0..rows).map(row_vec));
            let mut codes = vec![0u8; rows * dim];
            let norms: Vec<f32> =
                codes.par_chunks_exact_mut(dim).enumerate().map(|(r, out)| model.encode(row_vec(r), out)).collect();
            sections.push(("int8.lo", le_f32(&model.lo)));
            sections.push(("int8.step", le_f32(&model.step)));
            sections.push(("int8.codes", codes));
            sections.push(("int8.norms", le_f32(&norms)));
        }
        (None, _) => {
            let v: Vec<f32> = (0..rows).flat_map(|r| row_vec(r).iter().copied()).collect();
            sections.push(("vectors", le_f32(&v)));
        }
    }
    // Without RaBitQ the lists' centroids are only for probing (IVF); graphs need none.
    if rabitq.is_none() && matches!(opts.index, IndexKind::Ivf { .. }) {
        sections.push(("centroids.i8", centroids_i8(&centroids, dim)));
    }
    let mut index = match opts.index {
        IndexKind::Ivf { .. } => {
            sections.push(("ivf.offsets", le_u32(&offsets)));
            IndexSpec::Ivf { nlist, nprobe: nlist }
        }
        IndexKind::Hnsw { m, ef_construction } => {
            progress("linking", 0.4)?;
            let v: Vec<f32> = (0..rows).flat_map(|r| row_vec(r).iter().copied()).collect();
            let space = F32Space::new(&v, dim, metric, &[]);
            let params = HnswParams { m, ef_construction, seed: opts.seed };
            let b = Builder::new(space, params);
            b.insert_all(|_| true);
            let parts = b.freeze();
            sections.push(("hnsw.layer0", le_u32(&parts.layer0)));
            sections.push(("hnsw.upper_start", le_u32(&parts.upper_start)));
            sections.push(("hnsw.upper", le_u32(&parts.upper)));
            IndexSpec::Hnsw { m, ef: 512, entry: parts.entry, top: parts.top }
        }
    };

    progress("compressing", 0.6)?;
    let ids: Vec<Vec<u8>> = (0..rows)
        .map(|r| pack_ids(groups[reps[r]].iter().flat_map(|&u| units[u as usize].ids.iter().map(String::as_str))))
        .collect();
    sections.push(("ids", blocks::encode(&ids.iter().map(|v| Some(v.as_slice())).collect::<Vec<_>>())));
    if opts.keep_text {
        let texts: Vec<Option<&[u8]>> =
            (0..rows).map(|r| units[rep_unit(r)].text.as_deref().map(str::as_bytes)).collect();
        sections.push(("text", blocks::encode(&texts)));
    }
    let metas: Vec<Option<Vec<u8>>> =
        (0..rows).map(|r| units[rep_unit(r)].metadata.as_ref().map(metadata_bytes)).collect();
    if metas.iter().any(Option::is_some) {
        // The filter index is not stored: a kernel derives it from this section on its
        // first filtered query (it would cost about as much space as the metadata).
        sections.push(("metadata", blocks::encode(&metas.iter().map(|m| m.as_deref()).collect::<Vec<_>>())));
    }

    let mut manifest = Manifest {
        format_version: format::FORMAT_VERSION,
        kernel_version: opts.kernel_version,
        kernel_id: crate::keys::hex(&rand::random::<[u8; 8]>()),
        created: format::now_secs(),
        expires: opts.expires,
        source,
        key_id: String::new(),
        dim,
        metric,
        quantization: opts.quantization,
        index: index.clone(),
        keep_text: opts.keep_text,
        dedup_threshold: opts.dedup_threshold,
        rows: rows as u64,
        ids: records_in,
        sections: Vec::new(),
        file_bytes: 0,
        report: None,
    };

    // Quality: kernel search against exact search over the original (unconsolidated) inputs.
    progress("measuring recall", 0.75)?;
    let draft = format::assemble(manifest.clone(), &sections, key);
    let kernel = Kernel::from_bytes(&draft, "<draft>", &format::Trust { allow_expired: true, ..Default::default() })?;
    let eval = evaluate(&kernel, &units, &prepared, dim, metric, opts)?;
    if let Some(e) = &eval {
        index = match index {
            IndexSpec::Ivf { nlist, .. } => IndexSpec::Ivf { nlist, nprobe: e.chosen },
            IndexSpec::Hnsw { m, entry, top, .. } => IndexSpec::Hnsw { m, ef: e.chosen, entry, top },
        };
    }
    drop(kernel);
    manifest.index = index;
    manifest.report = Some(Report {
        records_in,
        rows_out: rows as u64,
        consolidated: (n_in - rows) as u64,
        raw,
        eval,
        build_secs: started.elapsed().as_secs_f64(),
    });
    progress("signing", 0.98)?;
    let bytes = format::assemble(manifest, &sections, key);
    let parsed = format::parse(&bytes, "<built>", &format::Trust { allow_expired: true, ..Default::default() })?;
    progress("done", 1.0)?;
    Ok(Built { bytes, manifest: parsed.manifest })
}

/// Recall@10 of the draft kernel over a sweep of `nprobe` / `ef`.
fn evaluate(
    kernel: &Kernel,
    units: &[Unit],
    prepared: &[f32],
    dim: usize,
    metric: Metric,
    opts: &BuildOptions,
) -> Result<Option<Eval>> {
    let n = units.len();
    if n == 0 {
        return Ok(None);
    }
    let (queries, source): (Vec<EvalQuery>, String) = if opts.queries.is_empty() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x5eed);
        let picks = sample(&mut rng, n, DEFAULT_EVAL_QUERIES.min(n)).into_vec();
        let q = picks.iter().map(|&i| EvalQuery { vector: units[i].vector.clone(), answer: None }).collect();
        (q, format!("{} records sampled from the collection (seed {})", picks.len(), opts.seed))
    } else {
        (opts.queries.clone(), format!("{} held-out queries", opts.queries.len()))
    };
    if let Some(q) = queries.iter().find(|q| q.vector.len() != dim) {
        return Err(KernelError::Invalid(format!(
            "a query vector has {} dimensions, the kernel {dim}",
            q.vector.len()
        )));
    }
    let space = F32Space::new(prepared, dim, metric, &[]);
    let truth: Vec<Vec<&str>> = queries
        .par_iter()
        .map(|q| {
            let top = exact_top(&space, &prepare_query(metric, &q.vector), EVAL_K);
            top.iter().map(|&i| units[i as usize].ids[0].as_str()).collect()
        })
        .collect();
    let sweep: Vec<usize> = match &kernel.manifest().index {
        IndexSpec::Ivf { nlist, .. } => {
            let mut s: Vec<usize> = (0..).map(|p| 1usize << p).take_while(|&p| p < *nlist).collect();
            s.push(*nlist);
            s
        }
        IndexSpec::Hnsw { .. } => vec![10, 16, 32, 64, 128, 256, 512],
    };
    let param = match &kernel.manifest().index {
        IndexSpec::Ivf { .. } => "nprobe",
        IndexSpec::Hnsw { .. } => "ef",
    };
    let run = |p: usize| -> Result<Vec<Vec<String>>> {
        queries
            .par_iter()
            .map(|q| {
                let params = SearchParams { k: EVAL_K, probe: Some(p), filter: None };
                let hits = kernel.search_rows(&q.vector, &params)?;
                kernel.expand_ids(&hits, EVAL_K)
            })
            .collect()
    };
    let recall_of = |got: &[Vec<String>]| -> f32 {
        let mut hit = 0usize;
        let mut total = 0usize;
        for (g, t) in got.iter().zip(&truth) {
            total += t.len();
            hit += t.iter().filter(|id| g.iter().any(|x| x == *id)).count();
        }
        if total == 0 { 1.0 } else { hit as f32 / total as f32 }
    };
    // The whole curve goes into the report; the default is the cheapest point on target.
    let mut curve = Vec::new();
    let mut results = Vec::new();
    for &p in &sweep {
        let got = run(p)?;
        curve.push((p, recall_of(&got)));
        results.push(got);
    }
    // The cheapest point on target; failing that, the best point (coarse codes can lose
    // recall as more candidates with poor estimates come in).
    let best = curve.iter().enumerate().fold(0, |b, (i, c)| if c.1 > curve[b].1 { i } else { b });
    let at = curve.iter().position(|c| c.1 >= opts.target_recall).unwrap_or(best);
    let (chosen, recall) = curve.get(at).copied().unwrap_or((1, 0.0));
    let got = results.swap_remove(at.min(results.len().saturating_sub(1)));
    let answered: Vec<usize> = (0..queries.len()).filter(|&i| queries[i].answer.is_some()).collect();
    let task = (!answered.is_empty()).then(|| {
        let count = |i: usize, ids: &[&str]| ids.iter().any(|x| Some(*x) == queries[i].answer.as_deref());
        let before = answered.iter().filter(|&&i| count(i, &truth[i])).count();
        let after =
            answered.iter().filter(|&&i| count(i, &got[i].iter().map(String::as_str).collect::<Vec<_>>())).count();
        TaskRecall {
            queries: answered.len(),
            before: before as f32 / answered.len() as f32,
            after: after as f32 / answered.len() as f32,
        }
    });
    Ok(Some(Eval { queries: queries.len(), source, k: EVAL_K, param: param.into(), curve, chosen, recall, task }))
}
