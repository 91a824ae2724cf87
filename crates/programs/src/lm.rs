//! The backend trait: one chat request in, one answer (and its usage) out.
//!
//! Three backends implement it — the local GGUF model ([`crate::local`]), an
//! OpenAI-compatible server and Ollama ([`crate::http`]) — and the resilience layer
//! ([`crate::resilience`]) wraps any of them (timeouts, retries, a circuit breaker, a
//! fallback chain, a concurrency cap, the response cache) behind the same trait.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Who says a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The user (or a demo's inputs).
    User,
    /// The model (or a demo's outputs).
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// Who says it.
    pub role: Role,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message { role, content: content.into() }
    }
}

/// What the answer must look like.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputFormat {
    /// Free text.
    #[default]
    Text,
    /// One JSON value that fits the schema (the subset of
    /// [`check_schema`](crate::signature::check_schema)); backends that can constrain
    /// decoding do so, so every answer is valid.
    Json {
        /// The schema, as JSON text: property order is the answer's field order.
        schema: String,
    },
}

/// Sampling settings. Part of the cache key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sampling {
    /// 0 is greedy (deterministic).
    pub temperature: f32,
    /// Nucleus sampling mass (1 = off).
    pub top_p: f32,
    /// Seed for sampling at temperature > 0.
    pub seed: u64,
    /// Most tokens to generate.
    pub max_tokens: u32,
}

/// Most tokens one call may ask for in a program (a server caps lower).
pub const MAX_SAMPLED_TOKENS: u32 = 8192;

impl Sampling {
    /// Checks the bounds: temperature finite in 0..=2, `top_p` in (0, 1], `max_tokens` in
    /// 1..=[`MAX_SAMPLED_TOKENS`].
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] naming the field.
    pub fn validate(&self) -> crate::error::Result<()> {
        if !self.temperature.is_finite() || !(0.0..=2.0).contains(&self.temperature) {
            return Err(crate::Error::invalid(format!("sampling.temperature {}: 0 to 2", self.temperature)));
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(crate::Error::invalid(format!("sampling.top_p {}: above 0, at most 1", self.top_p)));
        }
        if self.max_tokens == 0 || self.max_tokens > MAX_SAMPLED_TOKENS {
            return Err(crate::Error::invalid(format!(
                "sampling.max_tokens {}: 1 to {MAX_SAMPLED_TOKENS}",
                self.max_tokens
            )));
        }
        Ok(())
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 0.0, top_p: 1.0, seed: 0, max_tokens: 256 }
    }
}

/// One request to a backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Request {
    /// The conversation.
    pub messages: Vec<Message>,
    /// The answer's shape.
    #[serde(default)]
    pub format: OutputFormat,
    /// Sampling.
    #[serde(default)]
    pub sampling: Sampling,
    /// Strings that end the answer (not included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// Tokens used by a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
}

impl Usage {
    /// Both together.
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
    }
}

/// A backend's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The generated text.
    pub text: String,
    /// Tokens used (zero for a cache hit: nothing was spent).
    pub usage: Usage,
    /// The backend that answered (in a fallback chain: the one that succeeded).
    pub backend: String,
    /// The model name.
    pub model: String,
    /// Wall time of the call, including retries.
    #[serde(with = "duration_ms")]
    pub latency: Duration,
    /// Served from the response cache.
    pub cached: bool,
    /// Attempts made (1 without retries; 0 for a cache hit).
    pub attempts: u32,
    /// Why generation stopped: `stop` (end of answer or a stop string), `length`.
    pub finish_reason: String,
}

/// Token deltas of a streamed answer, in order.
pub type TokenSink = tokio::sync::mpsc::UnboundedSender<String>;

/// A language model behind one interface.
pub trait Backend: Send + Sync {
    /// Short name (`local`, `openai:gpt-4o-mini`, …), recorded with every call.
    fn name(&self) -> &str;

    /// Generates an answer. Token deltas go to `sink` as they are made, when given.
    fn complete<'a>(&'a self, req: &'a Request, sink: Option<TokenSink>) -> BoxFuture<'a, Result<Response>>;

    /// The log-probability of each continuation after the prompt (the request's
    /// messages, then the start of the assistant's turn). Backends that cannot score
    /// say so with [`Error::Invalid`].
    fn score<'a>(&'a self, req: &'a Request, continuations: &'a [String]) -> BoxFuture<'a, Result<Vec<f64>>> {
        let _ = (req, continuations);
        let name = self.name().to_owned();
        Box::pin(async move { Err(Error::invalid(format!("backend {name} cannot score continuations"))) })
    }
}

/// A shared backend.
pub type DynBackend = Arc<dyn Backend>;

pub(crate) mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Ok(Duration::try_from_secs_f64(ms / 1000.0).unwrap_or_default())
    }
}
