//! LLM programs over HTTP: register, list, describe and delete programs (every version
//! kept in the metadata store), run them (JSON or server-sent events), compile them as
//! background jobs, list recorded runs with their usage; and an OpenAI-compatible
//! `POST /v1/chat/completions` + `GET /v1/models` on the local model, optionally grounded
//! in a hosted kernel.
//!
//! Authorization follows the server-wide routes (fleet, embed): reading, running and
//! chatting need `reader`, registering, deleting and compiling `writer`, all with a key
//! scoped to every collection (programs are server-wide objects); retrieval from a hosted
//! kernel additionally checks `reader` on the kernel's collection, where the kernel is
//! opened. The local model (`Config::llm_model`, default SmolLM2-135M-Instruct in the
//! models directory) is loaded on first use, once, on the blocking pool; missing, it
//! makes these routes answer 503 `model_unavailable` saying how to install it.

use crate::api::{AuditDetail, Auth, Body, PathParams, QueryParams};
use crate::auth::{Principal, Role, random_id};
use crate::error::{ApiError, quote};
use crate::state::{AppState, now_ms, rfc3339};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kernelize_programs::lm::TokenSink;
use kernelize_programs::module::{Env, Prediction, Program};
use kernelize_programs::retrieve::KernelRetriever;
use kernelize_programs::{Backend, DynBackend, LocalConfig, LocalModel, Message, OutputFormat, Request, Sampling};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::Row;
use sqlx::any::AnyRow;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{IntoParams, OpenApi, ToSchema};

type St = State<Arc<AppState>>;
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Program names: like collection names.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$";
/// Names the routes use themselves (`/v1/programs/runs`).
const RESERVED: [&str; 2] = ["runs", "jobs"];
/// Largest program body, bytes of JSON.
pub const MAX_PROGRAM_BYTES: usize = 1 << 20;
/// Most examples in a compile job's train or val set.
pub const MAX_EXAMPLES: usize = 2000;
/// Most messages in a chat completion.
pub const MAX_MESSAGES: usize = 256;
/// Most tokens one chat completion (or one call of a program's predictor) may generate,
/// and the default: the local model has one context, so one long generation holds up every
/// other caller (SmolLM2-135M writes about 70 tokens a second on two busy cores, and a
/// prompt filling its 4096-token context takes tens of seconds more).
pub const MAX_TOKENS: u32 = 256;
/// Most passages a grounded chat completion retrieves.
pub const MAX_GROUNDING_K: u32 = 16;
/// Most runs per page.
pub const MAX_RUNS_PAGE: u32 = 1000;
/// Most versions one program keeps.
pub const MAX_VERSIONS: i64 = 10_000;
/// The `program` of runs that are chat completions.
pub const CHAT_RUN: &str = "chat.completions";

// ---------------------------------------------------------------- state

/// The local model (loaded once, on first use) and the compile jobs in progress.
pub struct Programs {
    model_path: PathBuf,
    data_dir: PathBuf,
    model: tokio::sync::Mutex<Option<DynBackend>>,
    pub(crate) jobs: Mutex<HashMap<String, Arc<JobProgress>>>,
}

impl std::fmt::Debug for Programs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Programs").field("model_path", &self.model_path).finish_non_exhaustive()
    }
}

/// Live progress of a compile job (the row holds the rest).
#[derive(Debug, Default)]
pub struct JobProgress {
    /// Set by `POST …/cancel` and at shutdown.
    pub cancel: AtomicBool,
    /// The latest progress.
    pub progress: Mutex<CompileProgress>,
}

/// Bound on one call of the local model (under the request timeout's default of 60 s).
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(55);

impl Programs {
    /// For the model file `llm_model` (default: the models directory's SmolLM2); the
    /// response cache goes to `<data_dir>/llm-cache.sqlite`.
    pub fn new(llm_model: Option<PathBuf>, data_dir: PathBuf) -> Programs {
        Programs {
            model_path: llm_model.unwrap_or_else(|| LocalConfig::default_model().path),
            data_dir,
            model: tokio::sync::Mutex::new(None),
            jobs: Mutex::new(HashMap::new()),
        }
    }

    /// The model's id as `/v1/models` lists it: the file's name up to its first dot.
    pub fn model_id(&self) -> String {
        self.model_path
            .file_name()
            .map(|n| n.to_string_lossy().split('.').next().unwrap_or("local").to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "local".into())
    }

    /// The local model behind the resilience layer (timeouts, a concurrency cap, the
    /// response cache in the data directory), loaded on first use on the blocking pool;
    /// 503 `model_unavailable` (with how to install it) while it is missing. A failed
    /// load is tried again by the next request (the model may have been installed since).
    pub async fn model(&self) -> Result<DynBackend, ApiError> {
        let mut slot = self.model.lock().await;
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let cfg = LocalConfig::new(&self.model_path);
        let loaded = tokio::task::spawn_blocking(move || LocalModel::load(&cfg))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| {
                tracing::warn!(error = %e, "local model unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "model_unavailable",
                    format!("the local model is not available: {e}"),
                )
                .retry_after(5)
            })?;
        tracing::info!(model = %self.model_path.display(), load_ms = loaded.info().load_time.as_millis(), "local model loaded");
        let local: DynBackend = Arc::new(loaded);
        let config = kernelize_programs::resilience::ResilienceConfig {
            attempt_timeout: CALL_TIMEOUT,
            call_timeout: Some(CALL_TIMEOUT),
            // The local model fails only for reasons a retry does not fix.
            max_retries: 0,
            ..Default::default()
        };
        let mut resilient =
            kernelize_programs::resilience::Resilient::new(vec![local], config).map_err(program_error)?;
        match kernelize_programs::cache::SqliteCache::open(&self.data_dir).await {
            Ok(c) => resilient = resilient.with_cache(Arc::new(c)),
            Err(e) => tracing::warn!(error = %e, "LLM response cache unavailable; answering without it"),
        }
        let m: DynBackend = Arc::new(resilient);
        *slot = Some(m.clone());
        Ok(m)
    }

    /// Asks every compile job to stop (shutdown).
    pub fn cancel_all(&self) {
        for j in self.jobs.lock().values() {
            j.cancel.store(true, Ordering::SeqCst);
        }
    }
}

/// A program error as an API error: the caller's mistakes are 400, an answer that does
/// not fit the signature 422, the model's side 503.
pub fn program_error(e: kernelize_programs::Error) -> ApiError {
    use kernelize_programs::Error as E;
    match e {
        E::Invalid(m) => ApiError::invalid(m),
        E::Saved { .. } => ApiError::invalid(e.to_string()),
        E::Parse { .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "output_mismatch", e.to_string()),
        E::Budget(_) => ApiError::conflict(e.to_string()),
        E::Model(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_unavailable", e.to_string()).retry_after(5)
        }
        E::Backend { retry_after, .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "backend_unavailable", e.to_string())
                .retry_after(retry_after.map_or(1, |d| d.as_secs()))
        }
        E::Timeout { .. } | E::CircuitOpen { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "backend_unavailable", e.to_string()).retry_after(1)
        }
        E::Cancelled => ApiError::unavailable("cancelled: the request timed out or the server is shutting down"),
        other => ApiError::internal(other),
    }
}

// ---------------------------------------------------------------- bodies

/// `POST /v1/programs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterProgram {
    /// 1-64 of `A-Z a-z 0-9 _ -`, not starting with `-` (not `runs` or `jobs`).
    #[schema(example = "qa", pattern = "^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")]
    pub name: String,
    /// The program: `{"module": "predict" | "retrieve_then_answer" | "best_of_n" |
    /// "sequence", …}` as `kernelize program show` prints it, or a saved program file
    /// (`{"format": 1, "program": {…}, …}`, as `kernelize program compile` writes it),
    /// whose signature, when it has one, must verify. Registering an existing name adds
    /// a version.
    #[schema(value_type = Object)]
    pub program: Value,
    /// What it is for.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: Option<String>,
}

/// One version of a program.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProgramInfo {
    /// Name.
    pub name: String,
    /// This version (1, 2, …; compile jobs add versions).
    pub version: i64,
    /// Every version, oldest first.
    pub versions: Vec<i64>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `registered`, `signed:<key id>` (a signed saved program), or `compiled:<job id>`.
    pub origin: String,
    /// Who made this version.
    pub created_by: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// Input fields the program reads.
    pub inputs: Vec<String>,
    /// Predictors, in program order.
    pub predictors: Vec<String>,
    /// The program.
    #[schema(value_type = Object)]
    pub program: Value,
}

/// A program in the list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProgramSummary {
    /// Name.
    pub name: String,
    /// Latest version.
    pub version: i64,
    /// Versions kept.
    pub versions: i64,
    /// When the latest version was made (RFC 3339).
    pub updated_at: String,
    /// What it is for (the latest version's description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `GET /v1/programs`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProgramList {
    /// Programs by name.
    pub programs: Vec<ProgramSummary>,
}

/// `GET /v1/programs/{name}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VersionParams {
    /// A version (default: the latest).
    #[param(minimum = 1)]
    pub version: Option<i64>,
}

/// `POST /v1/programs/{name}/run`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Input values by field name.
    #[schema(value_type = Object)]
    pub inputs: Map<String, Value>,
    /// Version to run (default: the latest).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub version: Option<i64>,
    /// Answer as server-sent events (also with `Accept: text/event-stream`): `token`
    /// (text deltas), `call` (each finished backend call), then `prediction` (the same
    /// object as the JSON answer) or `error` (the error shape).
    #[serde(default)]
    pub stream: Option<bool>,
    /// Retrievers of `retrieve_then_answer` modules: retriever name → hosted kernel id
    /// (default: the retriever's name is the kernel id). Needs `reader` on the kernel's
    /// collection.
    #[serde(default)]
    pub retrievers: Option<BTreeMap<String, String>>,
}

/// One backend call of a run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CallOut {
    /// Predictor that made it (empty in `call` events).
    pub module: String,
    /// Backend that answered.
    pub backend: String,
    /// Its model.
    pub model: String,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Wall time, ms.
    pub latency_ms: f64,
    /// Served from the response cache.
    pub cache_hit: bool,
    /// Attempts (retries included).
    pub attempts: u32,
}

/// A retrieved passage.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PassageOut {
    /// Record id.
    pub id: String,
    /// Text (cut to 2000 bytes).
    pub text: String,
    /// Score, higher is better.
    pub score: f32,
}

/// Tokens used.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
pub struct TokenUsage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
}

impl TokenUsage {
    fn of(u: kernelize_programs::Usage) -> TokenUsage {
        TokenUsage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens, total_tokens: u.total() }
    }
}

/// The answer of a run.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunResponse {
    /// Run id (see `GET /v1/programs/runs`).
    pub run_id: String,
    /// Program.
    pub program: String,
    /// Version run.
    pub version: i64,
    /// Output values by field name.
    #[schema(value_type = Object)]
    pub outputs: Map<String, Value>,
    /// Every backend call, in order.
    pub calls: Vec<CallOut>,
    /// Passages retrieved, in rank order.
    pub retrieved: Vec<PassageOut>,
    /// Tokens over every call.
    pub usage: TokenUsage,
    /// Wall time, ms.
    pub latency_ms: f64,
}

/// `GET /v1/programs/runs` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunParams {
    /// Only runs of this program (`chat.completions` for chat completions).
    pub program: Option<String>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A recorded run.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunInfo {
    /// Run id.
    pub id: String,
    /// Program (`chat.completions` for chat completions).
    pub program: String,
    /// Version (0 for chat completions).
    pub version: i64,
    /// Who ran it (`key:<id>` or `token:<id>`).
    pub principal: String,
    /// When it started (RFC 3339).
    pub created_at: String,
    /// Wall time, ms.
    pub latency_ms: f64,
    /// Backend calls.
    pub calls: i64,
    /// Calls served from the response cache.
    pub cached_calls: i64,
    /// Tokens used.
    pub usage: TokenUsage,
    /// Whether it succeeded.
    pub ok: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/programs/runs`: newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunList {
    /// Runs.
    pub runs: Vec<RunInfo>,
    /// Tokens over the runs of this page.
    pub usage: TokenUsage,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One labelled example.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExampleIn {
    /// Input values.
    #[schema(value_type = Object)]
    pub inputs: Map<String, Value>,
    /// Gold output values.
    #[schema(value_type = Object)]
    pub outputs: Map<String, Value>,
}

/// `POST /v1/programs/{name}/compile`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompileBody {
    /// The optimizer: `{"optimizer": "labeled_few_shot", "k": 4}`, `bootstrap_few_shot`
    /// (`max_bootstrapped`, `max_labeled`, `candidates`), `knn_few_shot` (`k`) or `gepa`
    /// (`minibatch`, `merge`, `max_candidates`), as `kernelize program compile --optimizer` takes it.
    #[schema(value_type = Object)]
    pub optimizer: Value,
    /// The metric: `{"metric": "exact_match" | "token_f1" | "citations", "field": "answer"}`.
    #[schema(value_type = Object)]
    pub metric: Value,
    /// Training examples (at most 2000).
    pub train: Vec<ExampleIn>,
    /// Validation examples (at most 2000).
    pub val: Vec<ExampleIn>,
    /// Limits: `{"calls": …, "tokens": …, "seconds": …}` (each optional).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub budget: Option<Value>,
    /// Seed of every random choice.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Version to start from (default: the latest).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub version: Option<i64>,
}

/// Progress of a compile job.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CompileProgress {
    /// Current stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Steps done.
    pub done: u64,
    /// Steps in all (0 while unknown).
    pub total: u64,
    /// Best validation score so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_score: Option<f64>,
    /// Backend calls made.
    pub calls: u64,
    /// Tokens used.
    pub tokens: u64,
    /// The score curve: one point per step that scored a candidate on the validation set
    /// (at most 1000; later steps update only `best_score`).
    #[serde(default)]
    pub history: Vec<ScorePoint>,
}

/// Most points of a compile job's score curve.
pub const MAX_HISTORY: usize = 1000;

/// A step of a compile job that scored a candidate.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ScorePoint {
    /// Steps done when it was scored.
    pub step: u64,
    /// The optimizer's stage (`baseline`, `candidate`, `accept`, …).
    pub stage: String,
    /// The candidate's validation score.
    pub score: f64,
    /// Best validation score so far.
    pub best_score: f64,
    /// Backend calls made by then.
    pub calls: u64,
}

/// A compile job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CompileJob {
    /// Job id.
    pub id: String,
    /// Program.
    pub program: String,
    /// Version compiled from.
    pub base_version: i64,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Progress (the last one for a finished job), with the score curve.
    pub progress: CompileProgress,
    /// Who asked.
    pub requested_by: String,
    /// Started (RFC 3339).
    pub created_at: String,
    /// Finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The version the result became.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_version: Option<i64>,
    /// The optimizer's report (scores before and after, calls, tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub report: Option<Value>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

// ---------------------------------------------------------------- OpenAI-compatible bodies

/// A chat message: `content` is text or a list of `{"type": "text", "text": …}` parts.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessageIn {
    /// `system` (or `developer`), `user` or `assistant`.
    #[schema(value_type = ChatRole, example = "user")]
    pub role: String,
    /// Text, or text parts.
    #[schema(value_type = ChatContent)]
    pub content: Value,
}

/// The roles of chat messages (the OpenAPI document's view of `ChatMessageIn::role`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    /// Instructions.
    System,
    /// Instructions (OpenAI's newer name for `system`).
    Developer,
    /// The user.
    User,
    /// The model's earlier answers.
    Assistant,
}

/// A message's content (the OpenAPI document's view of `ChatMessageIn::content`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ChatContent {
    /// Text.
    Text(String),
    /// Text parts, concatenated.
    Parts(Vec<TextPart>),
}

/// A text part of a message.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TextPart {
    /// `text`.
    #[serde(rename = "type")]
    #[schema(value_type = TextPartType)]
    pub kind: String,
    /// The text.
    pub text: String,
}

/// The one kind of content part supported.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TextPartType {
    /// A text part.
    Text,
}

/// `stop` (the OpenAPI document's view of `ChatRequest::stop`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ChatStop {
    /// One stop string (1 to 256 bytes).
    One(String),
    /// Up to 4 stop strings.
    Many(Vec<String>),
}

/// `response_format`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ResponseFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    #[schema(example = "json_schema")]
    pub kind: String,
    /// With `json_schema`: `{"name": …, "schema": {…}, "strict": true}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub json_schema: Option<Value>,
}

/// The grounding extension of a chat completion.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grounding {
    /// A hosted kernel (needs `reader` on its collection).
    pub kernel: String,
    /// Passages to retrieve (default 4, at most 16).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 16)]
    pub k: Option<u32>,
}

/// `stream_options`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `POST /v1/chat/completions` (OpenAI's shape; unknown fields are ignored).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// The model (`GET /v1/models`; `local` also names it).
    #[schema(example = "local")]
    pub model: String,
    /// The conversation.
    #[schema(example = json!([{"role": "user", "content": "Say hello."}]))]
    pub messages: Vec<ChatMessageIn>,
    /// Sampling temperature (0 is greedy; default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass (above 0, at most 1; default 1).
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    /// Seed.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Most tokens to generate (default and at most 256).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 256)]
    pub max_tokens: Option<u32>,
    /// Same as `max_tokens`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 256)]
    pub max_completion_tokens: Option<u32>,
    /// A stop string or up to 4.
    #[serde(default)]
    #[schema(value_type = Option<ChatStop>)]
    pub stop: Option<Value>,
    /// `text`, `json_object` or `json_schema` (constrained decoding).
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// Answer as server-sent events (`chat.completion.chunk`, then `data: [DONE]`).
    #[serde(default)]
    pub stream: Option<bool>,
    /// Stream options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Choices (only 1).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<u32>,
    /// Kernelize extension: ground the answer in a hosted kernel.
    #[serde(default)]
    pub kernelize: Option<Grounding>,
}

/// An assistant message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatMessageOut {
    /// `assistant`.
    pub role: String,
    /// The answer.
    pub content: String,
}

/// A choice.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatChoice {
    /// 0.
    pub index: u32,
    /// The answer.
    pub message: ChatMessageOut,
    /// `stop` or `length`.
    pub finish_reason: String,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
}

/// What grounding used.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroundingOut {
    /// The kernel.
    pub kernel: String,
    /// Ids of the passages put in the system message, in rank order.
    pub passage_ids: Vec<String>,
}

/// `POST /v1/chat/completions` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatResponse {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: i64,
    /// The model.
    pub model: String,
    /// One choice.
    pub choices: Vec<ChatChoice>,
    /// Tokens used.
    pub usage: TokenUsage,
    /// Kernelize extension: the passages a grounded answer was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernelize: Option<GroundingOut>,
}

/// A model.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelOut {
    /// Its id (pass as `model`).
    pub id: String,
    /// `model`.
    pub object: String,
    /// Unix seconds (the file's modification time).
    pub created: i64,
    /// `kernelize`.
    pub owned_by: String,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    /// The local model, when installed.
    pub data: Vec<ModelOut>,
}

/// Every error response of these routes (the API's plus 422 for model output that does
/// not fit a signature).
pub struct ProgramErrors;

impl utoipa::IntoResponses for ProgramErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let mut r = <crate::api::Errors as utoipa::IntoResponses>::responses();
        let content = ContentBuilder::new().schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody"))).build();
        r.insert(
            "422".into(),
            RefOr::T(
                ResponseBuilder::new()
                    .description("The model's answer does not fit the program's signature (`output_mismatch`)")
                    .content("application/json", content)
                    .build(),
            ),
        );
        r
    }
}

// ---------------------------------------------------------------- storage

struct VersionRow {
    name: String,
    version: i64,
    body: String,
    description: Option<String>,
    origin: String,
    created_by: String,
    created_ms: i64,
}

fn version_row(r: &AnyRow) -> sqlx::Result<VersionRow> {
    Ok(VersionRow {
        name: r.try_get("name")?,
        version: r.try_get("version")?,
        body: r.try_get("body")?,
        description: r.try_get("description")?,
        origin: r.try_get("origin")?,
        created_by: r.try_get("created_by")?,
        created_ms: r.try_get("created_ms")?,
    })
}

pub(crate) struct JobRow {
    pub(crate) id: String,
    pub(crate) program: String,
    pub(crate) base_version: i64,
    pub(crate) state: String,
    pub(crate) settings: String,
    pub(crate) requested_by: String,
    pub(crate) created_ms: i64,
    pub(crate) finished_ms: Option<i64>,
    pub(crate) result_version: Option<i64>,
    pub(crate) report: Option<String>,
    pub(crate) error: Option<String>,
}

fn job_row(r: &AnyRow) -> sqlx::Result<JobRow> {
    Ok(JobRow {
        id: r.try_get("id")?,
        program: r.try_get("program")?,
        base_version: r.try_get("base_version")?,
        state: r.try_get("state")?,
        settings: r.try_get("settings")?,
        requested_by: r.try_get("requested_by")?,
        created_ms: r.try_get("created_ms")?,
        finished_ms: r.try_get("finished_ms")?,
        result_version: r.try_get("result_version")?,
        report: r.try_get("report")?,
        error: r.try_get("error")?,
    })
}

/// A run to record.
#[derive(Debug, Clone)]
struct RunRow {
    id: String,
    program: String,
    version: i64,
    principal: String,
    created_ms: i64,
    latency_us: i64,
    calls: i64,
    cached_calls: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    ok: bool,
    error: Option<String>,
}

fn run_row(r: &AnyRow) -> sqlx::Result<RunInfo> {
    let (p, c): (i64, i64) = (r.try_get("prompt_tokens")?, r.try_get("completion_tokens")?);
    let latency_us: i64 = r.try_get("latency_us")?;
    let ok: i64 = r.try_get("ok")?;
    Ok(RunInfo {
        id: r.try_get("id")?,
        program: r.try_get("program")?,
        version: r.try_get("version")?,
        principal: r.try_get("principal")?,
        created_at: rfc3339(r.try_get("created_ms")?),
        latency_ms: latency_us as f64 / 1000.0,
        calls: r.try_get("calls")?,
        cached_calls: r.try_get("cached_calls")?,
        usage: TokenUsage {
            prompt_tokens: p.max(0) as u64,
            completion_tokens: c.max(0) as u64,
            total_tokens: (p + c).max(0) as u64,
        },
        ok: ok != 0,
        error: r.try_get("error")?,
    })
}

impl AppState {
    async fn program_version(&self, name: &str, version: Option<i64>) -> Result<VersionRow, ApiError> {
        let row = match version {
            Some(v) => {
                sqlx::query("SELECT * FROM programs WHERE name = $1 AND version = $2")
                    .bind(name)
                    .bind(v)
                    .fetch_optional(self.meta.pool())
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM programs WHERE name = $1 ORDER BY version DESC LIMIT 1")
                    .bind(name)
                    .fetch_optional(self.meta.pool())
                    .await?
            }
        };
        let Some(row) = row else {
            return Err(ApiError::not_found(match version {
                Some(v) => format!("no version {v} of program {}", quote(name)),
                None => format!("no program {}", quote(name)),
            }));
        };
        Ok(version_row(&row)?)
    }

    async fn program_versions(&self, name: &str) -> Result<Vec<i64>, ApiError> {
        let rows = sqlx::query("SELECT version FROM programs WHERE name = $1 ORDER BY version")
            .bind(name)
            .fetch_all(self.meta.pool())
            .await?;
        Ok(rows.iter().map(|r| r.try_get::<i64, _>("version")).collect::<sqlx::Result<_>>()?)
    }

    /// Stores `program` as the next version of `name`; returns the version.
    pub(crate) async fn add_program_version(
        &self,
        name: &str,
        program: &Program,
        description: Option<&str>,
        origin: &str,
        by: &str,
    ) -> Result<i64, ApiError> {
        let body = serde_json::to_string(program).map_err(ApiError::internal)?;
        // Two writers racing for the same version: one insert fails on the primary key
        // and tries the next number.
        for _ in 0..8 {
            let latest: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM programs WHERE name = $1")
                .bind(name)
                .fetch_one(self.meta.pool())
                .await?
                .try_get("v")?;
            let version = latest.unwrap_or(0) + 1;
            if version > MAX_VERSIONS {
                return Err(ApiError::conflict(format!(
                    "program {} has {MAX_VERSIONS} versions; delete it to start again",
                    quote(name)
                )));
            }
            let r = sqlx::query(
                "INSERT INTO programs (name, version, body, description, origin, created_by, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(name)
            .bind(version)
            .bind(&body)
            .bind(description)
            .bind(origin)
            .bind(by)
            .bind(now_ms())
            .execute(self.meta.pool())
            .await;
            match r {
                Ok(_) => return Ok(version),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict("too many concurrent registrations of this program; retry").retry_after(1))
    }

    async fn record_run(&self, r: &RunRow) {
        let key_id = r.principal.split_once(':').map_or(r.principal.as_str(), |(_, id)| id);
        self.add_usage(
            key_id,
            crate::state::UsageDelta { llm_tokens: r.prompt_tokens + r.completion_tokens, ..Default::default() },
        );
        let res = sqlx::query(
            "INSERT INTO program_runs (id, program, version, principal, created_ms, latency_us, calls, cached_calls, \
             prompt_tokens, completion_tokens, ok, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&r.id)
        .bind(&r.program)
        .bind(r.version)
        .bind(&r.principal)
        .bind(r.created_ms)
        .bind(r.latency_us)
        .bind(r.calls)
        .bind(r.cached_calls)
        .bind(r.prompt_tokens)
        .bind(r.completion_tokens)
        .bind(i64::from(r.ok))
        .bind(r.error.as_deref().map(|e| crate::audit::bounded(e, crate::audit::MAX_DETAIL)))
        .execute(self.meta.pool())
        .await;
        if let Err(e) = res {
            tracing::error!(run = r.id, error = %e, "could not record a program run");
        }
    }

    async fn job(&self, name: &str, id: &str) -> Result<JobRow, ApiError> {
        let row = sqlx::query("SELECT * FROM program_jobs WHERE id = $1 AND program = $2")
            .bind(id)
            .bind(name)
            .fetch_optional(self.meta.pool())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no compile job {} of program {}", quote(id), quote(name))))?;
        Ok(job_row(&row)?)
    }

    pub(crate) fn job_info(&self, row: JobRow) -> CompileJob {
        let live = self.programs.jobs.lock().get(&row.id).map(|j| j.progress.lock().clone());
        let report: Option<Value> = row.report.as_deref().and_then(|r| serde_json::from_str(r).ok());
        let progress = live.unwrap_or_else(|| {
            report
                .as_ref()
                .and_then(|r| r.get("progress"))
                .and_then(|p| serde_json::from_value(p.clone()).ok())
                .unwrap_or_default()
        });
        let _ = &row.settings;
        CompileJob {
            id: row.id,
            program: row.program,
            base_version: row.base_version,
            state: row.state,
            progress,
            requested_by: row.requested_by,
            created_at: rfc3339(row.created_ms),
            finished_at: row.finished_ms.map(rfc3339),
            result_version: row.result_version,
            report,
            error: row.error,
        }
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(ApiError::invalid(format!(
            "program name {}: 1-64 of A-Z a-z 0-9 _ -, not starting with -",
            quote(name)
        )));
    }
    if RESERVED.contains(&name) {
        return Err(ApiError::invalid(format!("program name {name:?} is reserved")));
    }
    Ok(())
}

/// Parses and validates a program body: a program, or a saved program file (told apart
/// by its `format` version). Returns the program and, for a signed file, the signing key's
/// id. A signed file that does not verify is refused (400).
pub fn parse_program_or_saved(v: Value) -> Result<(Program, Option<String>), ApiError> {
    if v.get("format").is_none() {
        return Ok((parse_program(v)?, None));
    }
    let text = v.to_string();
    if text.len() > MAX_PROGRAM_BYTES {
        return Err(ApiError::invalid(format!("program: larger than {MAX_PROGRAM_BYTES} bytes")));
    }
    let saved = kernelize_programs::saved::SavedProgram::from_json(&text, None).map_err(|e| match e {
        kernelize_programs::Error::Saved { reason, .. } => {
            ApiError::invalid(format!("program: saved program: {reason}"))
        }
        other => ApiError::invalid(format!("program: {other}")),
    })?;
    check_sampling(&saved.program)?;
    Ok((saved.program, saved.signature.map(|s| s.key_id)))
}

/// Parses and validates a program body.
pub fn parse_program(v: Value) -> Result<Program, ApiError> {
    let text = v.to_string();
    if text.len() > MAX_PROGRAM_BYTES {
        return Err(ApiError::invalid(format!("program: larger than {MAX_PROGRAM_BYTES} bytes")));
    }
    let p: Program = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text))
        .map_err(|e| ApiError::invalid(format!("program: at {}: {}", e.path(), e.inner())))?;
    // The server's tighter cap first: its message names the limit that applies here.
    check_sampling(&p)?;
    p.validate().map_err(|e| ApiError::invalid(format!("program: {e}")))?;
    Ok(p)
}

/// The server's cap on tokens per call (as on `/v1/chat/completions`), tighter than the
/// bounds `Program::validate` checks (temperature, top_p, max_tokens).
fn check_sampling(p: &Program) -> Result<(), ApiError> {
    for pr in p.predictors() {
        let s = &pr.sampling;
        if s.max_tokens == 0 || s.max_tokens > MAX_TOKENS {
            return Err(ApiError::invalid(format!(
                "program: predictor {}: sampling.max_tokens {}: 1 to {MAX_TOKENS}",
                quote(&pr.name),
                s.max_tokens
            )));
        }
    }
    Ok(())
}

fn stored_program(row: &VersionRow) -> Result<Program, ApiError> {
    serde_json::from_str(&row.body)
        .map_err(|e| ApiError::internal(format!("stored program {} v{}: {e}", row.name, row.version)))
}

fn program_info(row: VersionRow, versions: Vec<i64>) -> Result<ProgramInfo, ApiError> {
    let program = stored_program(&row)?;
    Ok(ProgramInfo {
        inputs: program.input_names(),
        predictors: program.predictors().iter().map(|p| p.name.clone()).collect(),
        program: serde_json::to_value(&program).map_err(ApiError::internal)?,
        name: row.name,
        version: row.version,
        versions,
        description: row.description,
        origin: row.origin,
        created_by: row.created_by,
        created_at: rfc3339(row.created_ms),
    })
}

// ---------------------------------------------------------------- environment

/// A backend that reports each finished call (and the token deltas of a streamed one) to
/// a run's event stream.
struct Observed {
    inner: DynBackend,
    events: mpsc::UnboundedSender<RunEvent>,
}

enum RunEvent {
    Token(String),
    Call(CallOut),
}

impl Backend for Observed {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn complete<'a>(
        &'a self,
        req: &'a Request,
        _sink: Option<TokenSink>,
    ) -> BoxFuture<'a, kernelize_programs::Result<kernelize_programs::Response>> {
        Box::pin(async move {
            let (tx, mut rx) = mpsc::unbounded_channel::<String>();
            let events = self.events.clone();
            let pump = tokio::spawn(async move {
                while let Some(t) = rx.recv().await {
                    let _ = events.send(RunEvent::Token(t));
                }
            });
            let r = self.inner.complete(req, Some(tx)).await;
            let _ = pump.await;
            if let Ok(resp) = &r {
                let _ = self.events.send(RunEvent::Call(CallOut {
                    module: String::new(),
                    backend: resp.backend.clone(),
                    model: resp.model.clone(),
                    prompt_tokens: resp.usage.prompt_tokens,
                    completion_tokens: resp.usage.completion_tokens,
                    latency_ms: resp.latency.as_secs_f64() * 1e3,
                    cache_hit: resp.cached,
                    attempts: resp.attempts,
                }));
            }
            r
        })
    }

    fn score<'a>(
        &'a self,
        req: &'a Request,
        continuations: &'a [String],
    ) -> BoxFuture<'a, kernelize_programs::Result<Vec<f64>>> {
        self.inner.score(req, continuations)
    }
}

impl AppState {
    /// A hosted kernel as a retriever, after checking `reader` on its collection.
    async fn kernel_retriever(self: &Arc<Self>, p: &Principal, kernel: &str) -> Result<KernelRetriever, ApiError> {
        let row = self.kernel_row(p, Role::Reader, kernel, false).await?;
        let (k, _) = self.live_kernel(&row).await?;
        Ok(KernelRetriever::new(k, self.embedder()?))
    }

    /// The environment a program runs in: the local model and the retrievers it names.
    async fn program_env(
        self: &Arc<Self>,
        p: &Principal,
        program: &Program,
        mapping: &BTreeMap<String, String>,
        lm: DynBackend,
    ) -> Result<Env, ApiError> {
        let mut env = Env::new(lm);
        for name in retriever_names(program) {
            let kernel = mapping.get(&name).cloned().unwrap_or_else(|| name.clone());
            let r = self.kernel_retriever(p, &kernel).await.map_err(|e| {
                if e.status == StatusCode::NOT_FOUND {
                    ApiError::invalid(format!(
                        "retriever {}: no hosted kernel {} (map it with `retrievers`: {{name: kernel id}})",
                        quote(&name),
                        quote(&kernel)
                    ))
                } else {
                    e
                }
            })?;
            env = env.with_retriever(name, Arc::new(r));
        }
        Ok(env)
    }
}

fn retriever_names(p: &Program) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(p: &Program, out: &mut Vec<String>) {
        match p {
            Program::RetrieveThenAnswer(r) if !out.contains(&r.retriever) => out.push(r.retriever.clone()),
            Program::BestOfN { inner, .. } => walk(inner, out),
            Program::Sequence { steps } => steps.iter().for_each(|s| walk(s, out)),
            _ => {}
        }
    }
    walk(p, &mut out);
    out
}

fn run_response(run_id: String, program: &str, version: i64, pred: Prediction, latency_ms: f64) -> RunResponse {
    RunResponse {
        run_id,
        program: program.to_owned(),
        version,
        usage: TokenUsage::of(pred.usage()),
        outputs: pred.outputs,
        calls: pred
            .calls
            .into_iter()
            .map(|c| CallOut {
                module: c.module,
                backend: c.backend,
                model: c.model,
                prompt_tokens: c.usage.prompt_tokens,
                completion_tokens: c.usage.completion_tokens,
                latency_ms: c.latency.as_secs_f64() * 1e3,
                cache_hit: c.cached,
                attempts: c.attempts,
            })
            .collect(),
        retrieved: pred.retrieved.into_iter().map(|r| PassageOut { id: r.id, text: r.text, score: r.score }).collect(),
        latency_ms,
    }
}

fn run_record(
    id: &str,
    program: &str,
    version: i64,
    p: &Principal,
    started_ms: i64,
    latency: std::time::Duration,
    r: &Result<RunResponse, ApiError>,
) -> RunRow {
    let (calls, cached, usage, error) = match r {
        Ok(resp) => {
            (resp.calls.len() as i64, resp.calls.iter().filter(|c| c.cache_hit).count() as i64, resp.usage, None)
        }
        Err(e) => (0, 0, TokenUsage::default(), Some(format!("{} {}: {}", e.status.as_u16(), e.code, e.message))),
    };
    RunRow {
        id: id.to_owned(),
        program: program.to_owned(),
        version,
        principal: p.actor(),
        created_ms: started_ms,
        latency_us: i64::try_from(latency.as_micros()).unwrap_or(i64::MAX),
        calls,
        cached_calls: cached,
        prompt_tokens: usage.prompt_tokens as i64,
        completion_tokens: usage.completion_tokens as i64,
        ok: r.is_ok(),
        error,
    }
}

/// The server-sent event of a run event.
fn run_event(ev: RunEvent) -> Event {
    match ev {
        RunEvent::Token(t) => Event::default().event("token").data(json!({"text": t}).to_string()),
        RunEvent::Call(c) => Event::default().event("call").data(serde_json::to_string(&c).unwrap_or_default()),
    }
}

fn wants_stream(flag: Option<bool>, headers: &HeaderMap) -> bool {
    flag.unwrap_or_else(|| {
        headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream") && !a.contains("application/json"))
    })
}

// ---------------------------------------------------------------- handlers

/// Register a program, or a new version of one (writer).
#[utoipa::path(post, path = "/v1/programs", tag = "programs", security(("bearer" = [])),
    request_body = RegisterProgram,
    responses((status = 201, description = "Registered", body = ProgramInfo), ProgramErrors))]
async fn register_program(
    State(st): St,
    Auth(p): Auth,
    Body(req): Body<RegisterProgram>,
) -> Result<Response, ApiError> {
    p.require(Role::Writer, None)?;
    check_name(&req.name)?;
    if req.description.as_ref().is_some_and(|d| d.chars().count() > 1000) {
        return Err(ApiError::invalid("description: at most 1000 characters"));
    }
    let (program, signed_by) = parse_program_or_saved(req.program)?;
    let origin = signed_by.map_or_else(|| "registered".to_owned(), |k| format!("signed:{k}"));
    let version = st.add_program_version(&req.name, &program, req.description.as_deref(), &origin, &p.actor()).await?;
    let info =
        program_info(st.program_version(&req.name, Some(version)).await?, st.program_versions(&req.name).await?)?;
    let mut r = (StatusCode::CREATED, Json(info)).into_response();
    r.extensions_mut().insert(AuditDetail(format!("program={} version={version}", req.name)));
    Ok(r)
}

/// List programs (reader).
#[utoipa::path(get, path = "/v1/programs", tag = "programs", security(("bearer" = [])),
    responses((status = 200, description = "Programs by name", body = ProgramList), ProgramErrors))]
async fn list_programs(State(st): St, Auth(p): Auth) -> Result<Json<ProgramList>, ApiError> {
    p.require(Role::Reader, None)?;
    let rows = sqlx::query(
        "SELECT p.name AS name, p.version AS version, p.created_ms AS created_ms, p.description AS description, \
         c.n AS n FROM programs p JOIN (SELECT name, MAX(version) AS v, COUNT(*) AS n FROM programs GROUP BY name) c \
         ON p.name = c.name AND p.version = c.v ORDER BY p.name",
    )
    .fetch_all(st.meta.pool())
    .await?;
    let programs = rows
        .iter()
        .map(|r| {
            Ok(ProgramSummary {
                name: r.try_get("name")?,
                version: r.try_get("version")?,
                versions: r.try_get("n")?,
                updated_at: rfc3339(r.try_get("created_ms")?),
                description: r.try_get("description")?,
            })
        })
        .collect::<sqlx::Result<_>>()?;
    Ok(Json(ProgramList { programs }))
}

/// A program: its latest version, or the one asked for (reader).
#[utoipa::path(get, path = "/v1/programs/{name}", tag = "programs", security(("bearer" = [])),
    params(("name" = String, Path, description = "Program", example = "qa"), VersionParams),
    responses((status = 200, description = "The program", body = ProgramInfo), ProgramErrors))]
async fn get_program(
    State(st): St,
    Auth(p): Auth,
    PathParams(name): PathParams<String>,
    QueryParams(q): QueryParams<VersionParams>,
) -> Result<Json<ProgramInfo>, ApiError> {
    p.require(Role::Reader, None)?;
    let row = st.program_version(&name, q.version).await?;
    Ok(Json(program_info(row, st.program_versions(&name).await?)?))
}

/// Delete a program with every version (writer). Its runs stay listed; a compile job
/// still running is cancelled.
#[utoipa::path(delete, path = "/v1/programs/{name}", tag = "programs", security(("bearer" = [])),
    params(("name" = String, Path, description = "Program", example = "qa")),
    responses((status = 204, description = "Deleted"), ProgramErrors))]
async fn delete_program(
    State(st): St,
    Auth(p): Auth,
    PathParams(name): PathParams<String>,
) -> Result<Response, ApiError> {
    p.require(Role::Writer, None)?;
    let r = sqlx::query("DELETE FROM programs WHERE name = $1").bind(&name).execute(st.meta.pool()).await?;
    if r.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("no program {}", quote(&name))));
    }
    let running = sqlx::query("SELECT id FROM program_jobs WHERE program = $1 AND state = 'running'")
        .bind(&name)
        .fetch_all(st.meta.pool())
        .await?;
    for row in running {
        let id: String = row.try_get("id")?;
        if let Some(j) = st.programs.jobs.lock().get(&id) {
            j.cancel.store(true, Ordering::SeqCst);
        }
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.extensions_mut().insert(AuditDetail(format!("program={name} versions={}", r.rows_affected())));
    Ok(resp)
}

/// Run a program on one input (reader) on the local model; recorded in
/// `GET /v1/programs/runs`. With `"stream": true` or `Accept: text/event-stream`, the
/// answer is server-sent events: `token`, `call`, then `prediction` or `error`.
#[utoipa::path(post, path = "/v1/programs/{name}/run", tag = "programs", security(("bearer" = [])),
    params(("name" = String, Path, description = "Program", example = "qa")),
    request_body = RunRequest,
    responses(
        (status = 200, description = "The prediction (or, streamed, server-sent events)",
         content((RunResponse = "application/json"), (String = "text/event-stream"))),
        ProgramErrors))]
async fn run_program(
    State(st): St,
    Auth(p): Auth,
    PathParams(name): PathParams<String>,
    headers: HeaderMap,
    Body(req): Body<RunRequest>,
) -> Result<Response, ApiError> {
    p.require(Role::Reader, None)?;
    let row = st.program_version(&name, req.version).await?;
    let program = stored_program(&row)?;
    let version = row.version;
    let stream = wants_stream(req.stream, &headers);
    let sig_inputs = program.input_names();
    if let Some(k) = req.inputs.keys().find(|k| !sig_inputs.contains(k)) {
        return Err(ApiError::invalid(format!(
            "input {} is not one of the program's inputs ({})",
            quote(k),
            sig_inputs.join(", ")
        )));
    }
    let model = st.programs.model().await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<RunEvent>();
    let lm: DynBackend = if stream { Arc::new(Observed { inner: model, events: tx.clone() }) } else { model };
    let env = st.program_env(&p, &program, &req.retrievers.unwrap_or_default(), lm).await?;
    let run_id = random_id();
    let started_ms = now_ms();
    let started = Instant::now();
    let inputs = req.inputs;
    if !stream {
        drop(tx);
        let r = program.forward(&env, &inputs).await.map_err(program_error);
        let latency = started.elapsed();
        let r = r.map(|pred| run_response(run_id.clone(), &name, version, pred, latency.as_secs_f64() * 1e3));
        st.record_run(&run_record(&run_id, &name, version, &p, started_ms, latency, &r)).await;
        return r.map(|resp| Json(resp).into_response());
    }
    // Streamed: the program runs in its own task, sending events as it goes; a client
    // that hangs up stops it (the model's call is dropped between tokens).
    let (out_tx, out_rx) = mpsc::channel::<Event>(256);
    let st2 = st.clone();
    let rid = crate::error::current_request_id();
    tokio::spawn(crate::error::REQUEST_ID.scope(rid, async move {
        let result = {
            let forward = program.forward(&env, &inputs);
            tokio::pin!(forward);
            loop {
                tokio::select! {
                    r = &mut forward => break Some(r),
                    ev = rx.recv() => {
                        let Some(ev) = ev else { break Some((&mut forward).await) };
                        if out_tx.send(run_event(ev)).await.is_err() {
                            break None;
                        }
                    }
                    () = out_tx.closed() => break None,
                }
            }
        };
        drop(env);
        let latency = started.elapsed();
        let r = match result {
            Some(r) => r.map_err(program_error),
            None => Err(ApiError::new(
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "client_closed",
                "the client went away",
            )),
        };
        // Events still queued (the last call's) go out before the prediction.
        while let Ok(ev) = rx.try_recv() {
            let _ = out_tx.send(run_event(ev)).await;
        }
        let r = r.map(|pred| run_response(run_id.clone(), &name, version, pred, latency.as_secs_f64() * 1e3));
        st2.record_run(&run_record(&run_id, &name, version, &p, started_ms, latency, &r)).await;
        let last = match &r {
            Ok(resp) => Event::default().event("prediction").data(serde_json::to_string(resp).unwrap_or_default()),
            Err(e) => {
                let rid = crate::error::current_request_id();
                let body = json!({"code": e.code, "message": e.message, "request_id": rid});
                Event::default().event("error").data(body.to_string())
            }
        };
        let _ = out_tx.send(last).await;
    }));
    let body = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    Ok(Sse::new(body).keep_alive(KeepAlive::default()).into_response())
}

/// Recorded runs, newest first, with their usage (reader: its own key's runs; admin: all).
#[utoipa::path(get, path = "/v1/programs/runs", tag = "programs", security(("bearer" = [])),
    params(RunParams),
    responses((status = 200, description = "A page of runs", body = RunList), ProgramErrors))]
async fn list_runs(
    State(st): St,
    Auth(p): Auth,
    QueryParams(q): QueryParams<RunParams>,
) -> Result<Json<RunList>, ApiError> {
    p.require(Role::Reader, None)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_RUNS_PAGE {
        return Err(ApiError::invalid(format!("limit: 1 to {MAX_RUNS_PAGE}")));
    }
    let cursor = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            let (ms, id) = c
                .split_once(':')
                .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_owned())))
                .ok_or_else(|| ApiError::invalid(format!("cursor {}: not a cursor this server gave", quote(c))))?;
            Some((ms, id))
        }
    };
    let admin = p.require(Role::Admin, None).is_ok();
    let mut sql = String::from("SELECT * FROM program_runs WHERE 1 = 1");
    let mut n = 0;
    let mut arg = || {
        n += 1;
        format!("${n}")
    };
    if q.program.is_some() {
        sql += &format!(" AND program = {}", arg());
    }
    if !admin {
        sql += &format!(" AND principal IN ({}, {})", arg(), arg());
    }
    if cursor.is_some() {
        let (a, b, c) = (arg(), arg(), arg());
        sql += &format!(" AND (created_ms < {a} OR (created_ms = {b} AND id < {c}))");
    }
    sql += &format!(" ORDER BY created_ms DESC, id DESC LIMIT {}", limit + 1);
    let mut query = sqlx::query(&sql);
    if let Some(prog) = &q.program {
        query = query.bind(prog.clone());
    }
    if !admin {
        query = query.bind(format!("key:{}", p.key_id)).bind(format!("token:{}", p.key_id));
    }
    if let Some((ms, id)) = &cursor {
        query = query.bind(*ms).bind(*ms).bind(id.clone());
    }
    let rows = query.fetch_all(st.meta.pool()).await?;
    let mut runs: Vec<RunInfo> = rows.iter().map(run_row).collect::<sqlx::Result<_>>()?;
    let mut next_cursor = None;
    if runs.len() > limit as usize {
        runs.truncate(limit as usize);
        if let (Some(last), Some(row)) = (runs.last(), rows.get(limit as usize - 1)) {
            let ms: i64 = row.try_get("created_ms")?;
            next_cursor = Some(format!("{ms}:{}", last.id));
        }
    }
    let mut usage = TokenUsage::default();
    for r in &runs {
        usage.prompt_tokens += r.usage.prompt_tokens;
        usage.completion_tokens += r.usage.completion_tokens;
        usage.total_tokens += r.usage.total_tokens;
    }
    Ok(Json(RunList { runs, usage, next_cursor }))
}

/// Compile a program in the background (writer): the optimizer's result becomes a new
/// version. Follow it with `GET /v1/programs/{name}/compile/{job}/events` (or poll
/// `GET /v1/programs/{name}/compile/{job}`).
#[utoipa::path(post, path = "/v1/programs/{name}/compile", tag = "programs", security(("bearer" = [])),
    params(("name" = String, Path, description = "Program", example = "qa")),
    request_body = CompileBody,
    responses((status = 202, description = "Started", body = CompileJob), ProgramErrors))]
async fn compile_program(
    State(st): St,
    Auth(p): Auth,
    PathParams(name): PathParams<String>,
    Body(req): Body<CompileBody>,
) -> Result<Response, ApiError> {
    p.require(Role::Writer, None)?;
    let row = st.program_version(&name, req.version).await?;
    let program = stored_program(&row)?;
    let job = crate::programs_compile::start(&st, &p, &name, row.version, program, req).await?;
    let mut r = (StatusCode::ACCEPTED, Json(st.job_info(job))).into_response();
    r.extensions_mut().insert(AuditDetail(format!("program={name} version={}", row.version)));
    Ok(r)
}

/// A compile job: state and progress (stage, steps, best score, calls, tokens) (reader).
#[utoipa::path(get, path = "/v1/programs/{name}/compile/{job}", tag = "programs", security(("bearer" = [])),
    params(("name" = String, Path, description = "Program", example = "qa"), ("job" = String, Path, description = "Job id")),
    responses((status = 200, description = "The job", body = CompileJob), ProgramErrors))]
async fn get_compile_job(
    State(st): St,
    Auth(p): Auth,
    PathParams((name, id)): PathParams<(String, String)>,
) -> Result<Json<CompileJob>, ApiError> {
    p.require(Role::Reader, None)?;
    let row = st.job(&name, &id).await?;
    Ok(Json(st.job_info(row)))
}

/// A compile job as server-sent events (reader): event `job` with the job now (state,
/// progress, the score curve so far), after each step of the optimizer (at most ten a
/// second) and when the job has ended (with its report); then the stream ends. Every
/// event is the whole job, so a reconnect starts from the current state.
#[utoipa::path(get, path = "/v1/programs/{name}/compile/{job}/events", tag = "programs", security(("bearer" = [])),
    params(("name" = String, Path, description = "Program", example = "qa"), ("job" = String, Path, description = "Job id")),
    responses((status = 200, description = "text/event-stream of CompileJob", content_type = "text/event-stream", body = crate::model::SseEvent), ProgramErrors))]
async fn compile_job_events(
    State(st): St,
    Auth(p): Auth,
    PathParams((name, id)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    p.require(Role::Reader, None)?;
    st.job(&name, &id).await?;
    let (s, job) = (st.clone(), id.clone());
    crate::progress::job_stream(&st, &job, "job", move || {
        let (s, name, id) = (s.clone(), name.clone(), id.clone());
        async move {
            let row = s.job(&name, &id).await?;
            serde_json::to_value(s.job_info(row)).map_err(ApiError::internal)
        }
    })
}

/// Cancel a compile job (writer); it ends `cancelled` at the optimizer's next step.
#[utoipa::path(post, path = "/v1/programs/{name}/compile/{job}/cancel", tag = "programs", security(("bearer" = [])),
    params(("name" = String, Path, description = "Program", example = "qa"), ("job" = String, Path, description = "Job id")),
    responses((status = 202, description = "Cancelling (or already finished: its state)", body = CompileJob), ProgramErrors))]
async fn cancel_compile_job(
    State(st): St,
    Auth(p): Auth,
    PathParams((name, id)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    p.require(Role::Writer, None)?;
    let row = st.job(&name, &id).await?;
    if let Some(j) = st.programs.jobs.lock().get(&row.id) {
        j.cancel.store(true, Ordering::SeqCst);
    }
    let mut r = (StatusCode::ACCEPTED, Json(st.job_info(row))).into_response();
    r.extensions_mut().insert(AuditDetail(format!("program={name} job={id}")));
    Ok(r)
}

// ---------------------------------------------------------------- OpenAI-compatible

/// The models `POST /v1/chat/completions` serves: the local model, when installed (reader).
#[utoipa::path(get, path = "/v1/models", tag = "programs", security(("bearer" = [])),
    responses((status = 200, description = "Models (OpenAI's shape)", body = ModelList), ProgramErrors))]
async fn list_models(State(st): St, Auth(p): Auth) -> Result<Json<ModelList>, ApiError> {
    p.require(Role::Reader, None)?;
    let path = st.programs.model_path.clone();
    let created = crate::engine::blocking(move || {
        Ok(fs_err::metadata(&path).ok().filter(|m| m.is_file()).map(|m| {
            m.modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64)
        }))
    })
    .await?;
    let data = created
        .map(|created| ModelOut {
            id: st.programs.model_id(),
            object: "model".into(),
            created,
            owned_by: "kernelize".into(),
        })
        .into_iter()
        .collect();
    Ok(Json(ModelList { object: "list".into(), data }))
}

fn message_text(content: &Value, at: usize) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut s = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => s.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "messages[{at}].content: only text parts ({{\"type\": \"text\", \"text\": …}}) are supported"
                        )));
                    }
                }
            }
            Ok(s)
        }
        _ => Err(ApiError::invalid(format!("messages[{at}].content: text or a list of text parts"))),
    }
}

/// The backend request of a chat completion (without grounding).
fn chat_request(req: &ChatRequest, model_id: &str) -> Result<Request, ApiError> {
    if req.model != model_id && req.model != "local" {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("no model {}; GET /v1/models lists {}", quote(&req.model), quote(model_id)),
        ));
    }
    if req.messages.is_empty() || req.messages.len() > MAX_MESSAGES {
        return Err(ApiError::invalid(format!("messages: 1 to {MAX_MESSAGES}")));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n: only 1 choice is supported"));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => kernelize_programs::Role::System,
            "user" => kernelize_programs::Role::User,
            "assistant" => kernelize_programs::Role::Assistant,
            other => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].role {}: system, developer, user or assistant",
                    quote(other)
                )));
            }
        };
        messages.push(Message::new(role, message_text(&m.content, i)?));
    }
    let temperature = req.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature: 0 to 2"));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 {
        return Err(ApiError::invalid("top_p: above 0, at most 1"));
    }
    let max_tokens = req.max_completion_tokens.or(req.max_tokens).unwrap_or(MAX_TOKENS);
    if max_tokens == 0 || max_tokens > MAX_TOKENS {
        return Err(ApiError::invalid(format!("max_tokens: 1 to {MAX_TOKENS}")));
    }
    let stop = match &req.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => {
            a.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        Some(_) => return Err(ApiError::invalid("stop: a string or a list of up to 4 strings")),
    };
    if stop.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(ApiError::invalid("stop: strings of 1 to 256 bytes"));
    }
    let format = match &req.response_format {
        None => OutputFormat::Text,
        Some(f) => match f.kind.as_str() {
            "text" => OutputFormat::Text,
            "json_object" => OutputFormat::Json { schema: json!({"type": "object"}).to_string() },
            "json_schema" => {
                let schema = f
                    .json_schema
                    .as_ref()
                    .and_then(|j| j.get("schema"))
                    .ok_or_else(|| ApiError::invalid("response_format.json_schema.schema is required"))?;
                kernelize_programs::signature::check_schema(schema, 0)
                    .map_err(|e| ApiError::invalid(format!("response_format: {e}")))?;
                OutputFormat::Json { schema: schema.to_string() }
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "response_format.type {}: text, json_object or json_schema",
                    quote(other)
                )));
            }
        },
    };
    let seed = req.seed.map_or(0, |s| s as u64);
    Ok(Request { messages, format, sampling: Sampling { temperature, top_p, seed, max_tokens }, stop })
}

fn chat_id() -> String {
    format!("chatcmpl-{}", random_id())
}

/// Chat with the local model, OpenAI-compatible (reader): `messages`, `temperature`,
/// `top_p`, `seed`, `max_tokens`, `stop`, `response_format` (`json_schema` decodes under
/// the schema), `stream` (OpenAI's `chat.completion.chunk` events, then `data: [DONE]`).
/// Extension: `"kernelize": {"kernel": "<id>", "k": 4}` retrieves passages from a hosted
/// kernel into a system message and names them in the answer's `kernelize.passage_ids`.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "programs", security(("bearer" = [])),
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The completion (or, with `stream`, server-sent `chat.completion.chunk` events)",
         content((ChatResponse = "application/json"), (String = "text/event-stream"))),
        ProgramErrors))]
async fn chat_completions(State(st): St, Auth(p): Auth, Body(req): Body<ChatRequest>) -> Result<Response, ApiError> {
    p.require(Role::Reader, None)?;
    let model_id = st.programs.model_id();
    let mut backend_req = chat_request(&req, &model_id)?;
    let mut grounding = None;
    if let Some(g) = &req.kernelize {
        let k = g.k.unwrap_or(4);
        if k == 0 || k > MAX_GROUNDING_K {
            return Err(ApiError::invalid(format!("kernelize.k: 1 to {MAX_GROUNDING_K}")));
        }
        let retriever = st.kernel_retriever(&p, &g.kernel).await?;
        let query = backend_req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == kernelize_programs::Role::User)
            .map(|m| m.content.clone())
            .ok_or_else(|| ApiError::invalid("kernelize: grounding needs a user message to search for"))?;
        let passages = crate::engine::blocking(move || {
            use kernelize_programs::retrieve::Retriever as _;
            retriever
                .retrieve(&query, k as usize, kernelize_programs::retrieve::RetrieveMode::Vector)
                .map_err(program_error)
        })
        .await?;
        let mut sys = String::from(
            "Answer from these passages. If they do not contain the answer, say so. Cite passages by their [id].\n",
        );
        for p in &passages {
            sys.push_str(&format!("\n[{}] {}", p.id, p.text));
        }
        backend_req.messages.insert(0, Message::new(kernelize_programs::Role::System, sys));
        grounding =
            Some(GroundingOut { kernel: g.kernel.clone(), passage_ids: passages.into_iter().map(|p| p.id).collect() });
    }
    let model = st.programs.model().await?;
    let id = chat_id();
    let created = now_ms() / 1000;
    let started_ms = now_ms();
    let started = Instant::now();
    if !req.stream.unwrap_or(false) {
        let r = model.complete(&backend_req, None).await.map_err(program_error);
        let latency = started.elapsed();
        let usage = r.as_ref().map(|resp| TokenUsage::of(resp.usage)).unwrap_or_default();
        st.record_run(&chat_record(&id, &p, started_ms, latency, usage, r.as_ref().err())).await;
        let resp = r?;
        return Ok(Json(ChatResponse {
            id,
            object: "chat.completion".into(),
            created,
            model: model_id,
            choices: vec![ChatChoice {
                index: 0,
                message: ChatMessageOut { role: "assistant".into(), content: resp.text },
                finish_reason: resp.finish_reason,
                logprobs: None,
            }],
            usage,
            kernelize: grounding,
        })
        .into_response());
    }
    let include_usage = req.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    let (out_tx, out_rx) = mpsc::channel::<Event>(256);
    let st2 = st.clone();
    let rid = crate::error::current_request_id();
    tokio::spawn(crate::error::REQUEST_ID.scope(rid, async move {
        let chunk = |delta: Value, finish: Option<&str>| {
            let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "system_fingerprint": null,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
            if let Some(g) = &grounding {
                c["kernelize"] = json!(g);
            }
            Event::default().data(c.to_string())
        };
        if out_tx.send(chunk(json!({"role": "assistant", "content": ""}), None)).await.is_err() {
            return;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let call = model.complete(&backend_req, Some(tx));
        tokio::pin!(call);
        let mut streamed = false;
        let result = loop {
            tokio::select! {
                r = &mut call => break Some(r),
                t = rx.recv() => {
                    let Some(t) = t else { break Some((&mut call).await) };
                    streamed = true;
                    if out_tx.send(chunk(json!({"content": t}), None)).await.is_err() {
                        break None;
                    }
                }
                () = out_tx.closed() => break None,
            }
        };
        let latency = started.elapsed();
        let Some(result) = result else {
            let gone = ApiError::invalid("the client went away");
            st2.record_run(&chat_record(&id, &p, started_ms, latency, TokenUsage::default(), Some(&gone))).await;
            return;
        };
        while let Ok(t) = rx.try_recv() {
            streamed = true;
            let _ = out_tx.send(chunk(json!({"content": t}), None)).await;
        }
        let r = result.map_err(program_error);
        // An answer from the response cache comes whole, without token deltas.
        if let Ok(resp) = &r
            && !streamed
            && !resp.text.is_empty()
        {
            let _ = out_tx.send(chunk(json!({"content": resp.text}), None)).await;
        }
        let usage = r.as_ref().map(|resp| TokenUsage::of(resp.usage)).unwrap_or_default();
        st2.record_run(&chat_record(&id, &p, started_ms, latency, usage, r.as_ref().err())).await;
        match r {
            Ok(resp) => {
                let _ = out_tx.send(chunk(json!({}), Some(&resp.finish_reason))).await;
                if include_usage {
                    let u = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                        "system_fingerprint": null, "choices": [], "usage": usage});
                    let _ = out_tx.send(Event::default().data(u.to_string())).await;
                }
            }
            Err(e) => {
                let err = json!({"error": {"message": e.message, "type": e.code, "code": e.code}});
                let _ = out_tx.send(Event::default().data(err.to_string())).await;
            }
        }
        let _ = out_tx.send(Event::default().data("[DONE]")).await;
    }));
    let body = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    Ok(Sse::new(body).into_response())
}

fn chat_record(
    id: &str,
    p: &Principal,
    started_ms: i64,
    latency: std::time::Duration,
    usage: TokenUsage,
    err: Option<&ApiError>,
) -> RunRow {
    RunRow {
        id: id.to_owned(),
        program: CHAT_RUN.into(),
        version: 0,
        principal: p.actor(),
        created_ms: started_ms,
        latency_us: i64::try_from(latency.as_micros()).unwrap_or(i64::MAX),
        calls: i64::from(err.is_none()),
        cached_calls: 0,
        prompt_tokens: usage.prompt_tokens as i64,
        completion_tokens: usage.completion_tokens as i64,
        ok: err.is_none(),
        error: err.map(|e| format!("{} {}: {}", e.status.as_u16(), e.code, e.message)),
    }
}

// ---------------------------------------------------------------- wiring

/// The OpenAPI document of these routes (merged into the API's).
#[derive(OpenApi)]
#[openapi(
    paths(
        register_program, list_programs, get_program, delete_program, run_program, list_runs,
        compile_program, get_compile_job, compile_job_events, cancel_compile_job, list_models, chat_completions
    ),
    tags((name = "programs", description = "LLM programs on the local model; OpenAI-compatible chat completions"))
)]
pub struct ProgramsApiDoc;

/// The routes (behind the guard).
pub fn protected_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/programs", get(list_programs).post(register_program))
        .route("/v1/programs/runs", get(list_runs))
        .route("/v1/programs/{name}", get(get_program).delete(delete_program))
        .route("/v1/programs/{name}/run", post(run_program))
        .route("/v1/programs/{name}/compile", post(compile_program))
        .route("/v1/programs/{name}/compile/{job}", get(get_compile_job))
        .route("/v1/programs/{name}/compile/{job}/events", get(compile_job_events))
        .route("/v1/programs/{name}/compile/{job}/cancel", post(cancel_compile_job))
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
}

/// The audit action of a program route (runs and chats are recorded as runs, not audited).
pub fn audit_action(method: &str, route: &str) -> Option<&'static str> {
    Some(match (method, route) {
        ("POST", "/v1/programs") => "programs.register",
        ("DELETE", "/v1/programs/{name}") => "programs.delete",
        ("POST", "/v1/programs/{name}/compile") => "programs.compile",
        ("POST", "/v1/programs/{name}/compile/{job}/cancel") => "programs.compile.cancel",
        _ => return None,
    })
}
