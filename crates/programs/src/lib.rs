//! LLM programs, DSPy-style, grounded in Kernelize's own data and runnable offline.
//!
//! - [`signature`]: typed input and output fields and an instruction; outputs parsed and
//!   checked against them (one retry with the error fed back, then a typed error).
//! - [`module`]: `Predict`, `ChainOfThought`, `RetrieveThenAnswer`, `BestOfN`, and
//!   composition ([`module::Program`]), every call recorded.
//! - [`lm`]: the [`lm::Backend`] trait; [`local`]: a GGUF model in process (llama.cpp)
//!   with constrained decoding, label scoring and prefix reuse; [`http`]: OpenAI-compatible
//!   and Ollama servers; [`resilience`]: timeouts, retries, circuit breaker, fallback,
//!   concurrency cap; [`cache`]: the response cache (SQLite or Redis).
//! - [`optimize`]: `LabeledFewShot`, `BootstrapFewShot`, `KnnFewShot`, GEPA, `Evaluate`.
//! - [`saved`]: versioned, optionally signed program files.

pub mod cache;
pub mod error;
pub mod http;
pub mod lm;
pub mod local;
pub mod module;
pub mod optimize;
pub mod resilience;
pub mod retrieve;
pub mod saved;
pub mod signature;
pub(crate) mod util;

pub use error::{Error, Result};
pub use lm::{Backend, DynBackend, Message, OutputFormat, Request, Response, Role, Sampling, Usage};
pub use local::{LocalConfig, LocalModel};
pub use module::{Decode, Env, Example, Predict, Prediction, Program, RetrieveThenAnswer};
pub use signature::{Field, FieldType, Signature, Values};

pub use cache::{RedisCache, ResponseCache, SqliteCache};
pub use http::{OllamaBackend, OpenAiBackend};
pub use resilience::{ResilienceConfig, Resilient};
