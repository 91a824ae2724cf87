//! What a process shares: the thread pool batch calls run on and the text embedder.

use crate::error::{Failure, Res};
use kernelize_embed::Embedder;
use numpy::PyArray2;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyList;
use std::sync::Arc;

/// The pool and the process that made it: a forked child (PyTorch's DataLoader workers,
/// multiprocessing) inherits the handle but none of the threads, so it builds its own.
struct Pool {
    pid: u32,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);
/// Threads asked for by `set_num_threads` (0: one per core).
static THREADS: Mutex<usize> = Mutex::new(0);
static EMBEDDER: Mutex<Option<Arc<Embedder>>> = Mutex::new(None);
/// The image and audio encoders, loaded on first use.
static MEDIA: kernelize_media::EncoderCache = kernelize_media::EncoderCache::new();

fn wanted_threads() -> usize {
    match *THREADS.lock() {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// The process's pool for batch work.
pub fn pool() -> Res<Arc<rayon::ThreadPool>> {
    let threads = wanted_threads();
    let pid = std::process::id();
    let mut slot = POOL.lock();
    if let Some(p) = slot.as_ref()
        && p.pid == pid
        && p.threads == threads
    {
        return Ok(p.pool.clone());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("kernelize-{i}"))
        .build()
        .map_err(|e| Failure::new(crate::error::Kind::Io, format!("could not start {threads} threads: {e}")))?;
    let pool = Arc::new(pool);
    if let Some(old) = slot.replace(Pool { pid, threads, pool: pool.clone() })
        && old.pid != pid
    {
        // The parent's pool has no threads in this process: dropping it would wait for
        // them forever.
        std::mem::forget(old);
    }
    Ok(pool)
}

/// Runs `f` on the process's pool (so the engine's parallel loops use its threads).
pub fn on_pool<T: Send>(f: impl FnOnce() -> Res<T> + Send) -> Res<T> {
    pool()?.install(f)
}

/// The MiniLM embedder, loaded on first use from the models directory.
pub fn embedder() -> Res<Arc<Embedder>> {
    let mut slot = EMBEDDER.lock();
    if let Some(e) = slot.as_ref() {
        return Ok(e.clone());
    }
    let e = Arc::new(Embedder::load(&Embedder::default_model_dir())?);
    *slot = Some(e.clone());
    Ok(e)
}

/// Embeds texts on the pool (GIL released); one unit vector per text.
pub fn embed_texts(py: Python<'_>, texts: &[String]) -> Res<(Vec<f32>, usize)> {
    py.detach(|| {
        let e = embedder()?;
        let dim = e.dim();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = on_pool(|| Ok(e.embed(&refs)?))?;
        Ok((vectors.concat(), dim))
    })
}

/// Encodes image or audio files on the pool (GIL released); the first bad file is an
/// error naming its index.
pub fn encode_media(py: Python<'_>, files: &[Vec<u8>], modality: kernelize_media::Modality) -> Res<(Vec<f32>, usize)> {
    py.detach(|| {
        let e = MEDIA.get(modality).map_err(|e| Failure::invalid(e.to_string()))?;
        let inputs: Vec<kernelize_media::Input<'_>> = files.iter().map(|b| kernelize_media::Input::Bytes(b)).collect();
        let results = on_pool(|| Ok(e.encode(&inputs)))?;
        let mut flat = Vec::with_capacity(files.len() * e.dim());
        for (i, r) in results.into_iter().enumerate() {
            flat.extend(r.map_err(|err| Failure::invalid(format!("media[{i}]: {err}")))?);
        }
        Ok((flat, e.dim()))
    })
}

/// `embed_media(files, modality) -> ndarray[n, dim] float32`: image files (JPEG, PNG,
/// WebP) through EfficientNet-Lite0 (1280-d) or audio files (WAV, FLAC, MP3, Ogg) through
/// Resemblyzer's voice encoder (256-d), unit length.
#[pyfunction]
pub fn embed_media<'py>(py: Python<'py>, files: Vec<Vec<u8>>, modality: &str) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let m = parse_media_modality(modality)?;
    let (flat, dim) = encode_media(py, &files, m)?;
    Ok(matrix(py, flat, dim)?)
}

/// `image` or `audio`.
pub fn parse_media_modality(s: &str) -> Res<kernelize_media::Modality> {
    match s {
        "image" => Ok(kernelize_media::Modality::Image),
        "audio" => Ok(kernelize_media::Modality::Audio),
        other => Err(Failure::invalid(format!("modality {other:?}: expected image or audio"))),
    }
}

/// Rows of a flat row-major buffer as a 2-D float32 array.
pub fn matrix<'py>(py: Python<'py>, flat: Vec<f32>, cols: usize) -> Res<Bound<'py, PyArray2<f32>>> {
    let rows = flat.len().checked_div(cols).unwrap_or(0);
    let a = numpy::ndarray::Array2::from_shape_vec((rows, cols), flat)
        .map_err(|e| Failure::invalid(format!("array shape: {e}")))?;
    Ok(numpy::PyArray2::from_owned_array(py, a))
}

/// What a search returns to Python: ids (a list of lists), scores (float32 `[nq, k]`,
/// NaN-padded) and, when asked, records (a list of lists of dicts).
pub type SearchOut<'py> = (Bound<'py, PyList>, Bound<'py, PyArray2<f32>>, Option<Bound<'py, PyList>>);

/// The ids and the NaN-padded score matrix of `nq` result lists.
pub fn ids_and_scores<'py, T>(
    py: Python<'py>,
    hits: &[Vec<T>],
    k: usize,
    id: impl Fn(&T) -> &str,
    score: impl Fn(&T) -> f32,
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyArray2<f32>>)> {
    let ids = PyList::empty(py);
    let mut scores = vec![f32::NAN; hits.len() * k];
    for (i, row) in hits.iter().enumerate() {
        ids.append(row.iter().map(&id).collect::<Vec<_>>())?;
        for (j, h) in row.iter().enumerate().take(k) {
            scores[i * k + j] = score(h);
        }
    }
    Ok((ids, matrix(py, scores, k)?))
}

/// `embed(texts) -> ndarray[n, 384] float32`: all-MiniLM-L6-v2 sentence embeddings
/// (mean-pooled, unit length), as sentence-transformers computes them.
#[pyfunction]
pub fn embed<'py>(py: Python<'py>, texts: Vec<String>) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (flat, dim) = embed_texts(py, &texts)?;
    if texts.is_empty() {
        return Ok(matrix(py, Vec::new(), embedder()?.dim())?);
    }
    Ok(matrix(py, flat, dim)?)
}

/// Sets the threads batch calls use (0: one per core).
#[pyfunction]
pub fn set_num_threads(n: usize) -> PyResult<()> {
    if n > 1024 {
        return Err(Failure::invalid(format!("set_num_threads: {n} is more than 1024")).into());
    }
    *THREADS.lock() = n;
    Ok(())
}

/// The threads batch calls use.
#[pyfunction]
pub fn get_num_threads() -> usize {
    wanted_threads()
}
