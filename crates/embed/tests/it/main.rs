//! Integration tests of `kernelize-embed` (one test binary, modules below).
//!
//! They need the real model: `kernelize models install` puts it in the models
//! directory (`$KERNELIZE_MODELS_DIR`, else `~/.local/share/kernelize/models`). Without it every
//! test that needs the model fails with that instruction; none passes silently.

mod api;
mod chunking;
mod reference;

use std::sync::OnceLock;

use kernelize_embed::{Embedder, Precision};

/// The embedder shared by all tests of this binary (loaded once), at the fastest
/// precision this CPU has (what `Embedder::load` picks by default).
pub fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| load(Precision::fastest()))
}

/// The same model on the f32 path (exact reproduction of the reference).
pub fn embedder_f32() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| load(Precision::F32))
}

fn load(precision: Precision) -> Embedder {
    let dir = Embedder::default_model_dir();
    match Embedder::load_with_precision(&dir, precision) {
        Ok(e) => e,
        Err(e) => panic!(
            "cannot load the model from {}: {e}\n\
             run `kernelize models install` first (scripts/test.sh does; these tests never skip)",
            dir.display()
        ),
    }
}

/// Cosine similarity of two vectors, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}
