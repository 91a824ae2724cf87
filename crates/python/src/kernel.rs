//! `Kernel`: a knowledge kernel opened (mmap, every check) and searched offline.

use crate::engine::{parse_filter, rows_of};
use crate::error::{Failure, Res};
use crate::runtime::{SearchOut, embed_texts, ids_and_scores, on_pool};
use kernelize_kernel::{PublicKey, SearchParams, Trust};
use numpy::PyReadonlyArray2;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use rayon::prelude::*;
use std::path::PathBuf;

/// An open kernel.
#[pyclass(module = "kernelize._native", frozen)]
pub struct Kernel {
    kernel: kernelize_kernel::Kernel,
}

/// A public key given as 64 hex digits or as the path of a `.pub` file.
fn public_key(spec: &str) -> Res<PublicKey> {
    if let Some(k) = PublicKey::from_hex(spec.trim()) {
        return Ok(k);
    }
    let path = std::path::Path::new(spec);
    if path.exists() {
        return Ok(PublicKey::load(path)?);
    }
    Err(Failure::invalid(format!(
        "pubkey: {:?} is neither 64 hex digits nor an existing key file",
        spec.chars().take(100).collect::<String>()
    )))
}

#[pymethods]
impl Kernel {
    /// Opens a kernel file: with `pubkey` its signature must verify under that key;
    /// without, only its integrity (hashes) is checked.
    #[new]
    #[pyo3(signature = (path, pubkey = None, allow_expired = false))]
    fn new(py: Python<'_>, path: PathBuf, pubkey: Option<&str>, allow_expired: bool) -> PyResult<Kernel> {
        let public_key = pubkey.map(public_key).transpose()?;
        let trust = Trust { public_key, allow_expired, now: None };
        let kernel = py.detach(|| kernelize_kernel::Kernel::open(&path, &trust).map_err(Failure::from))?;
        Ok(Kernel { kernel })
    }

    /// The signed manifest as JSON text.
    fn manifest_json(&self) -> PyResult<String> {
        Ok(serde_json::to_string(self.kernel.manifest()).map_err(|e| Failure::invalid(e.to_string()))?)
    }

    /// True when a public key was given and the signature verified under it.
    #[getter]
    fn signature_verified(&self) -> bool {
        self.kernel.signature_verified()
    }

    /// Vector dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.kernel.manifest().dim
    }

    /// Searches with `nq` queries (rows of `vectors`, or `texts` embedded with MiniLM), on
    /// the pool. Returns `(ids, scores, hits)`: ids a list of `nq` lists of each row's
    /// representative id, scores float32 `[nq, k]` padded with NaN, hits (when asked)
    /// lists of dicts with every id a row stands for, text and metadata.
    #[allow(clippy::too_many_arguments, reason = "Python keyword arguments")]
    #[pyo3(signature = (vectors = None, texts = None, k = 10, probe = None, filter = None, records = false))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        vectors: Option<PyReadonlyArray2<'_, f32>>,
        texts: Option<Vec<String>>,
        k: usize,
        probe: Option<usize>,
        filter: Option<&str>,
        records: bool,
    ) -> PyResult<SearchOut<'py>> {
        let dim = self.kernel.manifest().dim;
        if k == 0 || k > kernelize_index::search::MAX_K {
            return Err(Failure::invalid(format!("k must be 1..={}, got {k}", kernelize_index::search::MAX_K)).into());
        }
        if probe.is_some_and(|p| p == 0 || p > kernelize_index::search::MAX_EF) {
            return Err(Failure::invalid(format!("probe must be 1..={}", kernelize_index::search::MAX_EF)).into());
        }
        let params = SearchParams { k, probe, filter: parse_filter(filter)? };
        let embedded;
        let flat: &[f32] = match (&vectors, &texts) {
            (Some(a), None) => {
                let (data, _, cols) = rows_of(a, "queries")?;
                if cols != dim {
                    return Err(
                        Failure::invalid(format!("queries have {cols} columns, the kernel has dim {dim}")).into()
                    );
                }
                data
            }
            (None, Some(t)) => {
                embedded = embed_texts(py, t)?.0;
                if embedded.len() != t.len() * dim {
                    return Err(Failure::invalid(format!("texts embed to 384 dims; the kernel has {dim}")).into());
                }
                &embedded
            }
            _ => return Err(Failure::invalid("search: give queries (vectors) or texts, not both").into()),
        };
        let kernel = &self.kernel;
        let hits = py.detach(|| {
            on_pool(|| {
                flat.par_chunks_exact(dim.max(1))
                    .enumerate()
                    .map(|(i, q)| {
                        kernel.search(q, &params).map_err(|e| {
                            let f = Failure::from(e);
                            Failure::new(f.kind, format!("query {i}: {}", f.message))
                        })
                    })
                    .collect::<Res<Vec<_>>>()
            })
        })?;
        let (ids, scores) = ids_and_scores(py, &hits, k, |h| h.ids.first().map_or("", String::as_str), |h| h.score)?;
        let recs = if records {
            let out = PyList::empty(py);
            for row in &hits {
                let list = PyList::empty(py);
                for h in row {
                    let d = PyDict::new(py);
                    d.set_item("id", h.ids.first().map_or("", String::as_str))?;
                    d.set_item("ids", &h.ids)?;
                    d.set_item("score", h.score)?;
                    d.set_item("text", h.text.as_deref())?;
                    d.set_item(
                        "metadata",
                        h.metadata.as_ref().map(|m| serde_json::Value::Object(m.clone()).to_string()),
                    )?;
                    list.append(d)?;
                }
                out.append(list)?;
            }
            Some(out)
        } else {
            None
        };
        Ok((ids, scores, recs))
    }
}

/// Makes an ed25519 signing key: writes `<stem>.key` (0600) and `<stem>.pub`; returns the
/// public key as hex.
#[pyfunction]
pub fn generate_signing_key(stem: PathBuf) -> PyResult<String> {
    let (_, _, public) = kernelize_kernel::SigningKey::generate_files(&stem).map_err(Failure::from)?;
    Ok(public.to_hex())
}
