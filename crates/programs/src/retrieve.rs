//! Retrieval for `RetrieveThenAnswer` and `KnnFewShot`: the [`Retriever`] trait and
//! its implementation over a knowledge kernel (MiniLM query embeddings).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How passages are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrieveMode {
    /// Nearest vectors to the query's embedding.
    #[default]
    Vector,
    /// BM25 over the text.
    Keyword,
    /// Both, fused.
    Hybrid,
}

/// One retrieved passage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    /// Record id (what citations name).
    pub id: String,
    /// Its text.
    pub text: String,
    /// Score (higher is better).
    pub score: f32,
}

/// A source of passages.
pub trait Retriever: Send + Sync {
    /// The `k` best passages for a query.
    ///
    /// # Errors
    /// [`Error::Retrieve`] when the search fails; [`Error::Invalid`] for a mode the
    /// source cannot do.
    fn retrieve(&self, query: &str, k: usize, mode: RetrieveMode) -> Result<Vec<Passage>>;
}

/// Longest passage text handed to a model, bytes (longer texts are cut at a char boundary).
pub const MAX_PASSAGE_BYTES: usize = 2000;

/// A knowledge kernel searched by vector (kernels carry no keyword index: keyword and
/// hybrid requests are refused).
pub struct KernelRetriever {
    kernel: Arc<kernelize_kernel::Kernel>,
    embedder: Arc<kernelize_embed::Embedder>,
}

impl KernelRetriever {
    /// Over a kernel, with the embedder its vectors came from.
    pub fn new(kernel: Arc<kernelize_kernel::Kernel>, embedder: Arc<kernelize_embed::Embedder>) -> KernelRetriever {
        KernelRetriever { kernel, embedder }
    }
}

impl Retriever for KernelRetriever {
    fn retrieve(&self, query: &str, k: usize, mode: RetrieveMode) -> Result<Vec<Passage>> {
        if mode != RetrieveMode::Vector {
            return Err(Error::invalid("kernels are searched by vector; keyword and hybrid need a collection"));
        }
        let v = self.embedder.embed(&[query]).map_err(|e| Error::Retrieve(format!("embedding the query: {e}")))?;
        let v = v.into_iter().next().ok_or_else(|| Error::Retrieve("no embedding".into()))?;
        let params = kernelize_kernel::SearchParams { k, ..kernelize_kernel::SearchParams::default() };
        let hits = self.kernel.search(&v, &params).map_err(|e| Error::Retrieve(e.to_string()))?;
        Ok(hits
            .into_iter()
            .filter_map(|h| {
                let id = h.ids.into_iter().next()?;
                Some(Passage { id, text: truncate(h.text.unwrap_or_default(), MAX_PASSAGE_BYTES), score: h.score })
            })
            .collect())
    }
}

/// Cuts a text to at most `max` bytes at a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
