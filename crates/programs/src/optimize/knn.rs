//! KnnFewShot's run-time half: a pool of labelled examples from which each input gets
//! the `k` whose inputs are nearest to its own (MiniLM embeddings, cosine), found by an
//! exact scan of the project's own index code (`kernelize_index::hnsw::score` over an
//! in-memory [`F32Space`]).
//!
//! The pool is part of the program (it is saved with it), so a reloaded program picks
//! the same demos. The pool's embeddings are computed on first use and shared by every
//! clone of the predictor in this process; they are never saved.

use std::sync::Arc;

use kernelize_embed::Embedder;
use kernelize_index::space::{F32Space, prepare_query};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::module::Example;
use crate::signature::Values;

/// Most examples in a KnnFewShot pool.
pub const MAX_POOL: usize = 100_000;
/// Most demos picked per input.
pub const MAX_K: usize = 64;

/// Demos picked per input: the `k` pool examples whose inputs are nearest to the input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnnDemos {
    pool: Vec<Example>,
    k: usize,
    fields: Vec<String>,
    #[serde(skip)]
    index: PoolIndex,
}

/// The pool's embeddings, computed once per process and shared by clones.
#[derive(Default, Clone)]
struct PoolIndex(Arc<tokio::sync::OnceCell<Arc<Vectors>>>);

struct Vectors {
    /// `pool.len() * dim` floats, unit rows.
    data: Vec<f32>,
    dim: usize,
}

impl PartialEq for PoolIndex {
    /// A cache: never part of what a predictor is.
    fn eq(&self, _: &PoolIndex) -> bool {
        true
    }
}

impl std::fmt::Debug for PoolIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.initialized() { "PoolIndex(embedded)" } else { "PoolIndex(empty)" })
    }
}

impl KnnDemos {
    /// A pool: `k` demos per input, the query text made of the input `fields`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty or oversized pool, `k` of 0 or over [`MAX_K`], no
    /// fields, or a pool example without one of the fields.
    pub fn new(pool: Vec<Example>, k: usize, fields: Vec<String>) -> Result<KnnDemos> {
        let knn = KnnDemos { pool, k, fields, index: PoolIndex::default() };
        knn.validate()?;
        Ok(knn)
    }

    /// Checks the bounds (also run on programs loaded from files).
    ///
    /// # Errors
    /// As [`KnnDemos::new`].
    pub fn validate(&self) -> Result<()> {
        if self.pool.is_empty() || self.pool.len() > MAX_POOL {
            return Err(Error::invalid(format!(
                "knn: the pool holds 1 to {MAX_POOL} examples, not {}",
                self.pool.len()
            )));
        }
        if self.k == 0 || self.k > MAX_K {
            return Err(Error::invalid(format!("knn: k is 1 to {MAX_K}, not {}", self.k)));
        }
        if self.fields.is_empty() {
            return Err(Error::invalid("knn: at least one input field makes the query"));
        }
        for (i, e) in self.pool.iter().enumerate() {
            if let Some(f) = self.fields.iter().find(|f| !e.inputs.contains_key(*f)) {
                return Err(Error::invalid(format!("knn: pool[{i}] has no input {f:?}")));
            }
        }
        Ok(())
    }

    /// The labelled examples demos are picked from.
    pub fn pool(&self) -> &[Example] {
        &self.pool
    }

    /// Demos per input.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The input fields whose values make the query text.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// The text embedded for an input (or a pool example's inputs): the value of the one
    /// field, or `name: value` lines for several (lists of strings joined by `, `,
    /// other non-strings as JSON).
    pub fn query_text(&self, inputs: &Values) -> String {
        let shown = |v: Option<&Value>| match v {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
            }
            Some(other) => other.to_string(),
            None => String::new(),
        };
        if let [f] = self.fields.as_slice() {
            return shown(inputs.get(f));
        }
        self.fields.iter().map(|f| format!("{f}: {}", shown(inputs.get(f)))).collect::<Vec<_>>().join("\n")
    }

    /// Embeds the pool now (otherwise the first call does).
    ///
    /// # Errors
    /// [`Error::Retrieve`] when embedding fails.
    pub async fn warm(&self, embedder: &Arc<Embedder>) -> Result<()> {
        self.vectors(embedder).await.map(|_| ())
    }

    async fn vectors(&self, embedder: &Arc<Embedder>) -> Result<Arc<Vectors>> {
        self.index
            .0
            .get_or_try_init(|| async {
                let texts: Vec<String> = self.pool.iter().map(|e| self.query_text(&e.inputs)).collect();
                let emb = embedder.clone();
                let dim = emb.dim();
                let rows = tokio::task::spawn_blocking(move || {
                    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                    emb.embed(&refs)
                })
                .await
                .map_err(|e| Error::Retrieve(format!("knn: embedding task: {e}")))?
                .map_err(|e| Error::Retrieve(format!("knn: embedding the pool: {e}")))?;
                let mut data = Vec::with_capacity(rows.len() * dim);
                for r in &rows {
                    if r.len() != dim {
                        return Err(Error::Retrieve(format!(
                            "knn: an embedding has {} dimensions, not {dim}",
                            r.len()
                        )));
                    }
                    data.extend_from_slice(r);
                }
                Ok(Arc::new(Vectors { data, dim }))
            })
            .await
            .cloned()
    }

    /// Indices into the pool of the `k` examples nearest to the input, nearest first
    /// (cosine similarity of the query texts' embeddings; ties by pool order).
    ///
    /// # Errors
    /// [`Error::Retrieve`] when embedding fails.
    pub async fn nearest(&self, embedder: &Arc<Embedder>, inputs: &Values) -> Result<Vec<usize>> {
        let vectors = self.vectors(embedder).await?;
        let text = self.query_text(inputs);
        let emb = embedder.clone();
        let q = tokio::task::spawn_blocking(move || emb.embed(&[text.as_str()]))
            .await
            .map_err(|e| Error::Retrieve(format!("knn: embedding task: {e}")))?
            .map_err(|e| Error::Retrieve(format!("knn: embedding the input: {e}")))?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Retrieve("knn: no embedding for the input".into()))?;
        if q.len() != vectors.dim {
            return Err(Error::Retrieve(format!(
                "knn: the input's embedding has {} dimensions, the pool's {}",
                q.len(),
                vectors.dim
            )));
        }
        let metric = kernelize_store::Metric::Cosine;
        // The embedder's rows are unit vectors: cosine needs no stored norms.
        let space = F32Space::new(&vectors.data, vectors.dim, metric, &[]);
        let q = prepare_query(metric, &q);
        let n = u32::try_from(space.len()).map_err(|_| Error::invalid("knn: pool too large"))?;
        let hits = kernelize_index::hnsw::score(&space, &q, 0..n);
        Ok(hits.into_iter().take(self.k).map(|c| c.id as usize).collect())
    }

    /// The demos for an input: the `k` nearest pool examples, nearest first.
    ///
    /// # Errors
    /// As [`KnnDemos::nearest`].
    pub async fn select(&self, embedder: &Arc<Embedder>, inputs: &Values) -> Result<Vec<Example>> {
        Ok(self.nearest(embedder, inputs).await?.into_iter().filter_map(|i| self.pool.get(i).cloned()).collect())
    }
}
