//! `Database` and `Collection`: the durable engine and search, in process.

use crate::arrow::ArrowStream;
use crate::error::{Failure, Kind, Res};
use crate::runtime::{SearchOut, embed_texts, embedder, ids_and_scores, on_pool};
use kernelize_index::filter::Filter;
use kernelize_index::search::{IndexCache, Mode, Query, Searcher};
use kernelize_store::{CollectionConfig, Durability, IndexSettings, Metric, Options, Quantization, Record};
use numpy::{PyReadonlyArray2, PyUntypedArrayMethods};
use parking_lot::RwLock;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;
use std::sync::Arc;

/// Largest encoded batch [`Collection::upsert`] sends as one WAL frame (the frame limit is
/// 64 MiB); larger calls become several batches in one group commit.
const BATCH_BYTES: usize = 32 << 20;

/// An open data directory and what its collections share.
struct Shared {
    /// `None` once closed.
    db: RwLock<Option<Arc<kernelize_store::Database>>>,
    cache: IndexCache,
    path: PathBuf,
    read_only: bool,
    opts: Options,
}

impl Shared {
    fn db(&self) -> Res<Arc<kernelize_store::Database>> {
        self.db.read().clone().ok_or_else(|| Failure::invalid(format!("{} is closed", self.path.display())))
    }

    fn collection(&self, name: &str) -> Res<kernelize_store::Collection> {
        Ok(self.db()?.collection(name)?)
    }
}

/// A data directory opened in this process: one writer per directory (an exclusive lock),
/// any number of read-only opens beside it, in this process or others.
#[pyclass(module = "kernelize._native", frozen)]
pub struct Database {
    shared: Arc<Shared>,
}

fn open_db(path: &std::path::Path, read_only: bool, opts: Options) -> Res<kernelize_store::Database> {
    Ok(if read_only {
        kernelize_store::Database::open_read_only(path, opts)?
    } else {
        kernelize_store::Database::open(path, opts)?
    })
}

#[pymethods]
impl Database {
    /// Opens (creating when writable) a data directory.
    #[new]
    #[pyo3(signature = (path, read_only = false, durability = "always"))]
    fn new(py: Python<'_>, path: PathBuf, read_only: bool, durability: &str) -> PyResult<Database> {
        let durability: Durability = durability.parse().map_err(Failure::from)?;
        let opts = Options { durability, ..Options::default() };
        let db = py.detach(|| open_db(&path, read_only, opts))?;
        let cache = if read_only { IndexCache::read_only() } else { IndexCache::new() };
        Ok(Database { shared: Arc::new(Shared { db: RwLock::new(Some(Arc::new(db))), cache, path, read_only, opts }) })
    }

    /// The data directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.shared.path.clone()
    }

    /// True for a read-only open.
    #[getter]
    fn read_only(&self) -> bool {
        self.shared.read_only
    }

    /// Creates a collection.
    #[allow(clippy::too_many_arguments, reason = "Python keyword arguments")]
    #[pyo3(signature = (name, dim = None, metric = "cosine", quantization = "none", m = 16, ef_construction = 200, modality = None))]
    fn create_collection(
        &self,
        py: Python<'_>,
        name: String,
        dim: Option<usize>,
        metric: &str,
        quantization: &str,
        m: usize,
        ef_construction: usize,
        modality: Option<&str>,
    ) -> PyResult<Collection> {
        let encoder = match modality {
            None => None,
            Some(s) => Some(kernelize_media::encoder_record(
                s.parse().map_err(|e: kernelize_store::Error| Failure::invalid(e.to_string()))?,
            )),
        };
        let dim = match (&encoder, dim) {
            (Some(e), Some(d)) if d != e.dim => {
                return Err(Failure::invalid(format!(
                    "dim {d} does not match the {} encoder ({} dimensions); leave dim out",
                    e.model, e.dim
                ))
                .into());
            }
            (Some(e), _) => e.dim,
            (None, Some(d)) => d,
            (None, None) => return Err(Failure::invalid("give dim, or a modality (text, image, audio)").into()),
        };
        let metric = match metric {
            "cosine" => Metric::Cosine,
            "dot" => Metric::Dot,
            "l2" => Metric::L2,
            other => return Err(Failure::invalid(format!("metric {other:?}: expected cosine, dot or l2")).into()),
        };
        let quantization = match quantization {
            "none" => Quantization::None,
            "int8" => Quantization::Int8,
            "rabitq1" => Quantization::Rabitq1,
            "rabitq4" => Quantization::Rabitq4,
            other => {
                return Err(Failure::invalid(format!(
                    "quantization {other:?}: expected none, int8, rabitq1 or rabitq4"
                ))
                .into());
            }
        };
        if !(4..=64).contains(&m) || !(8..=2000).contains(&ef_construction) {
            return Err(Failure::invalid(format!(
                "m must be 4..=64 and ef_construction 8..=2000 (got {m}, {ef_construction})"
            ))
            .into());
        }
        let mut config = CollectionConfig::new(dim, metric);
        config.index = IndexSettings { m, ef_construction, quantization };
        config.encoder = encoder;
        let db = self.shared.db()?;
        py.detach(|| db.create_collection(&name, config).map_err(Failure::from))?;
        Ok(Collection { shared: self.shared.clone(), name })
    }

    /// An existing collection.
    fn collection(&self, name: String) -> PyResult<Collection> {
        self.shared.collection(&name)?;
        Ok(Collection { shared: self.shared.clone(), name })
    }

    /// Names of the collections, sorted.
    fn list_collections(&self) -> PyResult<Vec<String>> {
        Ok(self.shared.db()?.list())
    }

    /// Drops a collection and its files.
    fn drop_collection(&self, py: Python<'_>, name: String) -> PyResult<()> {
        let db = self.shared.db()?;
        py.detach(|| db.drop_collection(&name).map_err(Failure::from))?;
        Ok(())
    }

    /// Read-only opens: reopen to see what the writer acknowledged since (collections
    /// already handed out follow; queries in flight finish on what they started with).
    fn refresh(&self, py: Python<'_>) -> PyResult<()> {
        if !self.shared.read_only {
            return Ok(()); // the writer sees its own writes at once
        }
        let s = self.shared.clone();
        let db = py.detach(move || open_db(&s.path, true, s.opts))?;
        *self.shared.db.write() = Some(Arc::new(db));
        Ok(())
    }

    /// Closes the directory (releases the writer's lock once calls in flight end).
    fn close(&self) {
        self.shared.db.write().take();
    }

    /// True once closed.
    #[getter]
    fn closed(&self) -> bool {
        self.shared.db.read().is_none()
    }
}

/// A collection of a [`Database`].
#[pyclass(module = "kernelize._native", frozen)]
pub struct Collection {
    shared: Arc<Shared>,
    name: String,
}

/// One search's parameters as Python passes them.
struct SearchArgs {
    k: usize,
    ef: Option<usize>,
    filter: Option<Filter>,
    mode: Mode,
    exact: bool,
}

/// Parses a filter given as text (`pos = "n" and year >= 1990`) or JSON text (`{"and": …}`).
pub fn parse_filter(filter: Option<&str>) -> Res<Option<Filter>> {
    let Some(text) = filter else { return Ok(None) };
    let f = if text.trim_start().starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Failure::invalid(format!("filter: JSON: {e}")))?;
        Filter::from_json(&value)?
    } else {
        Filter::parse(text)?
    };
    f.validate()?;
    Ok(Some(f))
}

/// A row-major float32 matrix borrowed from numpy: `(data, rows, cols)`.
pub fn rows_of<'a>(a: &'a PyReadonlyArray2<'_, f32>, what: &str) -> Res<(&'a [f32], usize, usize)> {
    let shape = a.shape();
    let data = a.as_slice().map_err(|_| Failure::invalid(format!("{what}: the array must be C-contiguous")))?;
    Ok((data, shape[0], shape[1]))
}

fn metadata_of(text: &str, i: usize, id: &str) -> Res<kernelize_store::Metadata> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(Failure::invalid(format!("metadata[{i}] (id {id:?}): not a JSON object"))),
        Err(e) => Err(Failure::invalid(format!("metadata[{i}] (id {id:?}): {e}"))),
    }
}

/// Splits records into batches of at most [`BATCH_BYTES`] (approximate encoded size).
fn batches(records: Vec<Record>) -> Vec<Vec<kernelize_store::Op>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0usize;
    for r in records {
        let size = 64
            + r.id.len()
            + 4 * r.vector.len()
            + r.text.as_ref().map_or(0, String::len)
            + r.metadata.as_ref().map_or(0, |m| serde_json::to_string(m).map_or(0, |s| s.len()));
        if !cur.is_empty() && bytes + size > BATCH_BYTES {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += size;
        cur.push(kernelize_store::Op::Upsert(Arc::new(r)));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A record as a Python dict: `id`, `vector` (float32 array, when asked), `text`, `metadata`
/// (JSON text; the Python layer decodes it).
fn record_dict<'py>(py: Python<'py>, r: &Record, vectors: bool) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", &r.id)?;
    if vectors {
        d.set_item("vector", numpy::PyArray1::from_slice(py, &r.vector))?;
    }
    d.set_item("text", r.text.as_deref())?;
    d.set_item("metadata", r.metadata.as_ref().map(|m| serde_json::Value::Object(m.clone()).to_string()))?;
    Ok(d)
}

#[pymethods]
impl Collection {
    /// Name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Vector dimension.
    #[getter]
    fn dim(&self) -> PyResult<usize> {
        Ok(self.shared.collection(&self.name)?.config().dim)
    }

    /// What the collection holds: `text`, `image` or `audio` (its encoder's modality).
    #[getter]
    fn modality(&self) -> PyResult<String> {
        Ok(self.shared.collection(&self.name)?.config().modality().to_string())
    }

    /// Metric name.
    #[getter]
    fn metric(&self) -> PyResult<&'static str> {
        Ok(match self.shared.collection(&self.name)?.config().metric {
            Metric::Cosine => "cosine",
            Metric::Dot => "dot",
            Metric::L2 => "l2",
        })
    }

    /// Inserts or replaces records. `vectors` is a C-contiguous float32 `[n, dim]` array
    /// (or `None` to embed `texts`); `texts` and `metadata` (JSON object text) are lists of
    /// `n` entries or `None`. Returns the sequence number of the last batch; the call is
    /// one atomic batch up to 32 MiB, else several, all durable when it returns.
    #[pyo3(signature = (ids, vectors = None, texts = None, metadata = None))]
    fn upsert(
        &self,
        py: Python<'_>,
        ids: Vec<String>,
        vectors: Option<PyReadonlyArray2<'_, f32>>,
        texts: Option<Vec<Option<String>>>,
        metadata: Option<Vec<Option<String>>>,
    ) -> PyResult<u64> {
        let c = self.shared.collection(&self.name)?;
        let n = ids.len();
        if n == 0 {
            return Err(Failure::invalid("upsert: no ids").into());
        }
        for (what, len) in [("texts", texts.as_ref().map(Vec::len)), ("metadata", metadata.as_ref().map(Vec::len))] {
            if let Some(len) = len
                && len != n
            {
                return Err(Failure::invalid(format!("{what} has {len} entries, ids has {n}")).into());
            }
        }
        let dim = c.config().dim;
        let embedded;
        let flat: &[f32] = match &vectors {
            Some(a) => {
                let (data, rows, cols) = rows_of(a, "vectors")?;
                if rows != n {
                    return Err(Failure::invalid(format!("vectors has {rows} rows, ids has {n}")).into());
                }
                if cols != dim {
                    return Err(Failure::invalid(format!(
                        "vectors has {cols} columns, collection {:?} has dim {dim}",
                        self.name
                    ))
                    .into());
                }
                data
            }
            None => {
                let Some(texts) = &texts else {
                    return Err(Failure::invalid("upsert: give vectors, or texts to embed").into());
                };
                let mut owned = Vec::with_capacity(n);
                for (i, t) in texts.iter().enumerate() {
                    match t {
                        Some(t) => owned.push(t.clone()),
                        None => {
                            return Err(Failure::invalid(format!(
                                "texts[{i}] (id {:?}) is None and there are no vectors to use instead",
                                ids[i]
                            ))
                            .into());
                        }
                    }
                }
                let e = embedder()?;
                if e.dim() != dim {
                    return Err(Failure::invalid(format!(
                        "texts are embedded to {} dims; collection {:?} has {dim}",
                        e.dim(),
                        self.name
                    ))
                    .into());
                }
                embedded = embed_texts(py, &owned)?.0;
                &embedded
            }
        };
        let seq = py.detach(move || -> Res<u64> {
            let mut records = Vec::with_capacity(n);
            let mut texts = texts.map(Vec::into_iter);
            let mut metas = metadata.map(Vec::into_iter);
            for (i, (id, v)) in ids.into_iter().zip(flat.chunks_exact(dim.max(1))).enumerate() {
                let metadata = match metas.as_mut().and_then(Iterator::next).flatten() {
                    Some(m) => Some(metadata_of(&m, i, &id)?),
                    None => None,
                };
                let text = texts.as_mut().and_then(Iterator::next).flatten();
                records.push(Record { id, vector: v.to_vec(), text, metadata });
            }
            let seqs = c.write_many(batches(records))?;
            Ok(seqs.last().copied().unwrap_or_default())
        })?;
        Ok(seq)
    }

    /// Deletes records by id (one atomic batch); returns its sequence number.
    fn delete(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<u64> {
        let c = self.shared.collection(&self.name)?;
        if ids.is_empty() {
            return Err(Failure::invalid("delete: no ids").into());
        }
        Ok(py.detach(move || c.delete(ids).map_err(Failure::from))?)
    }

    /// Records by id, in order; `None` where an id is absent.
    #[pyo3(signature = (ids, vectors = true))]
    fn get<'py>(&self, py: Python<'py>, ids: Vec<String>, vectors: bool) -> PyResult<Bound<'py, PyList>> {
        let c = self.shared.collection(&self.name)?;
        let found = py.detach(|| -> Res<Vec<Option<Arc<Record>>>> {
            let snap = c.snapshot();
            ids.iter().map(|id| snap.get(id).map_err(Failure::from)).collect()
        })?;
        let out = PyList::empty(py);
        for r in found {
            match r {
                Some(r) => out.append(record_dict(py, &r, vectors)?)?,
                None => out.append(py.None())?,
            }
        }
        Ok(out)
    }

    /// Live records.
    fn count(&self, py: Python<'_>) -> PyResult<u64> {
        let c = self.shared.collection(&self.name)?;
        Ok(py.detach(move || c.snapshot().count().map_err(Failure::from))?)
    }

    /// Searches with `nq` queries at once (rows of `vectors`, or `texts`, or both for
    /// hybrid), on the pool. Returns `(ids, scores, records)`: ids a list of `nq` lists,
    /// scores a float32 `[nq, k]` array padded with NaN, records (when asked) a list of
    /// `nq` lists of dicts.
    #[allow(clippy::too_many_arguments, reason = "Python keyword arguments")]
    #[pyo3(signature = (vectors = None, texts = None, k = 10, ef = None, filter = None, mode = "vector", exact = false, records = false, include_vectors = false))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        vectors: Option<PyReadonlyArray2<'_, f32>>,
        texts: Option<Vec<String>>,
        k: usize,
        ef: Option<usize>,
        filter: Option<&str>,
        mode: &str,
        exact: bool,
        records: bool,
        include_vectors: bool,
    ) -> PyResult<SearchOut<'py>> {
        let c = self.shared.collection(&self.name)?;
        let mode = match mode {
            "vector" => Mode::Vector,
            "keyword" => Mode::Keyword,
            "hybrid" => Mode::Hybrid,
            other => {
                return Err(Failure::invalid(format!("mode {other:?}: expected vector, keyword or hybrid")).into());
            }
        };
        let args = SearchArgs { k, ef, filter: parse_filter(filter)?, mode, exact };
        let dim = c.config().dim;
        let embedded;
        let (flat, nq): (Option<&[f32]>, usize) = match (&vectors, &texts) {
            (Some(a), _) => {
                let (data, rows, cols) = rows_of(a, "queries")?;
                if cols != dim {
                    return Err(Failure::invalid(format!(
                        "queries have {cols} columns, collection {:?} has dim {dim}",
                        self.name
                    ))
                    .into());
                }
                if let Some(t) = &texts
                    && t.len() != rows
                {
                    return Err(Failure::invalid(format!("{rows} query vectors but {} texts", t.len())).into());
                }
                (Some(data), rows)
            }
            (None, Some(t)) if mode == Mode::Keyword => (None, t.len()),
            (None, Some(t)) => {
                embedded = embed_texts(py, t)?.0;
                if embedded.len() != t.len() * dim {
                    return Err(Failure::invalid(format!(
                        "texts are embedded to {} dims; collection {:?} has {dim}",
                        embedder()?.dim(),
                        self.name
                    ))
                    .into());
                }
                (Some(&embedded[..]), t.len())
            }
            (None, None) => return Err(Failure::invalid("search: give queries (vectors) or texts").into()),
        };
        if mode != Mode::Vector && texts.is_none() {
            return Err(Failure::invalid("keyword and hybrid search need texts").into());
        }
        let storage = self.shared.db()?.storage().clone();
        let cache = &self.shared.cache;
        let hits = py.detach(|| -> Res<Vec<Vec<kernelize_index::search::Hit>>> {
            let queries: Vec<Query> = (0..nq)
                .map(|i| Query {
                    vector: flat.map(|f| f[i * dim..(i + 1) * dim].to_vec()),
                    text: texts.as_ref().map(|t| t[i].clone()),
                    k: args.k,
                    ef: args.ef,
                    filter: args.filter.clone(),
                    mode: args.mode,
                    exact: args.exact,
                    ..Default::default()
                })
                .collect();
            let searcher = Searcher::new(&c, &*storage, cache);
            let results = if nq == 1 {
                vec![searcher.search(&queries[0])]
            } else {
                on_pool(|| Ok(searcher.search_many(&queries)?))?
            };
            results
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    r.map_err(|e| {
                        let f = Failure::from(e);
                        if nq > 1 { Failure::new(f.kind, format!("query {i}: {}", f.message)) } else { f }
                    })
                })
                .collect()
        })?;
        let (ids, scores) = ids_and_scores(py, &hits, k, |h| h.id.as_str(), |h| h.score)?;
        let recs = if records {
            let out = PyList::empty(py);
            for row in &hits {
                let list = PyList::empty(py);
                for h in row {
                    list.append(record_dict(py, &h.record, include_vectors)?)?;
                }
                out.append(list)?;
            }
            Some(out)
        } else {
            None
        };
        Ok((ids, scores, recs))
    }

    /// Statistics (records, segments, bytes, memtable, WAL).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.shared.collection(&self.name)?;
        let s = py.detach(|| c.stats().map_err(Failure::from))?;
        let d = PyDict::new(py);
        d.set_item("records", s.records)?;
        d.set_item("last_seq", s.last_seq)?;
        d.set_item("segments", s.segments)?;
        d.set_item("segment_bytes", s.segment_bytes)?;
        d.set_item("memtable_entries", s.memtable_entries)?;
        d.set_item("wal_bytes", s.wal_bytes)?;
        d.set_item("memtable_bytes", s.memtable_bytes)?;
        d.set_item("flush_failures", s.flush_failures)?;
        d.set_item("dim", s.dim)?;
        d.set_item("metric", s.metric)?;
        Ok(d)
    }

    /// Writes the memtable out as a segment.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let c = self.shared.collection(&self.name)?;
        Ok(py.detach(move || c.flush().map_err(Failure::from))?)
    }

    /// Merges every segment into one (dropping deleted and overwritten records).
    fn compact(&self, py: Python<'_>) -> PyResult<()> {
        let c = self.shared.collection(&self.name)?;
        py.detach(move || on_pool(|| c.compact().map(drop).map_err(Failure::from)))?;
        Ok(())
    }

    /// Builds (and persists) the search index of every segment that lacks one, on the
    /// pool; returns the number of indexes built.
    fn build_index(&self, py: Python<'_>) -> PyResult<usize> {
        let c = self.shared.collection(&self.name)?;
        let storage = self.shared.db()?.storage().clone();
        let cache = &self.shared.cache;
        let built = py.detach(|| {
            on_pool(|| {
                let reports = cache.ensure(&c, &*storage).map_err(|e| Failure::new(Kind::Io, e.to_string()))?;
                Ok(reports.iter().filter(|r| r.built).count())
            })
        })?;
        Ok(built)
    }

    /// Every live record of a snapshot taken now, as an Arrow stream of `batch_size`
    /// rows per batch (`pyarrow.RecordBatchReader.from_stream` reads it).
    #[pyo3(signature = (batch_size = 8192, vectors = true))]
    fn arrow_stream(&self, batch_size: usize, vectors: bool) -> PyResult<ArrowStream> {
        let c = self.shared.collection(&self.name)?;
        if batch_size == 0 || batch_size > 1 << 20 {
            return Err(Failure::invalid(format!("batch_size must be 1..=1048576, got {batch_size}")).into());
        }
        Ok(ArrowStream::new(c.snapshot(), batch_size, vectors)?)
    }

    /// Builds a signed knowledge kernel of this collection into `out`; returns the
    /// manifest as JSON text.
    #[allow(clippy::too_many_arguments, reason = "Python keyword arguments")]
    #[pyo3(signature = (out, signing_key, quantization = "rabitq4", dedup_threshold = Some(0.97), keep_text = true, kernel_version = 1, seed = None))]
    fn build_kernel(
        &self,
        py: Python<'_>,
        out: PathBuf,
        signing_key: PathBuf,
        quantization: &str,
        dedup_threshold: Option<f32>,
        keep_text: bool,
        kernel_version: u64,
        seed: Option<u64>,
    ) -> PyResult<String> {
        let c = self.shared.collection(&self.name)?;
        let quantization = match quantization {
            "rabitq4" => Quantization::Rabitq4,
            "rabitq1" => Quantization::Rabitq1,
            "int8" => Quantization::Int8,
            "none" => Quantization::None,
            other => {
                return Err(Failure::invalid(format!(
                    "quantization {other:?}: expected rabitq4, rabitq1, int8 or none"
                ))
                .into());
            }
        };
        let mut opts = kernelize_kernel::BuildOptions {
            dedup_threshold,
            quantization,
            keep_text,
            kernel_version,
            ..Default::default()
        };
        if let Some(seed) = seed {
            opts.seed = seed;
        }
        let name = self.name.clone();
        let manifest = py.detach(move || {
            on_pool(|| -> Res<String> {
                let key = kernelize_kernel::SigningKey::load(&signing_key)?;
                let snap = c.snapshot();
                let units = kernelize_kernel::units_of(&snap)?;
                let cfg = c.config();
                let source = kernelize_kernel::format::SourceInfo {
                    collection: name,
                    records: units.len() as u64,
                    seq: snap.seq(),
                    encoder: cfg.encoder.clone(),
                };
                let built = kernelize_kernel::build(units, cfg.dim, cfg.metric, source, &opts, &key, &|_, _| {})?;
                kernelize_kernel::write_file(&out, &built.bytes)?;
                serde_json::to_string(&built.manifest).map_err(|e| Failure::invalid(e.to_string()))
            })
        })?;
        Ok(manifest)
    }
}
