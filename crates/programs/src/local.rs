//! The local backend: a GGUF Llama-architecture model run in process by llama.cpp.
//!
//! One worker thread owns the model's context (the KV cache) and takes jobs in order,
//! so calls on one [`LocalModel`] are serialized; give it more `workers` for more
//! contexts. The tokenizer and chat template come from the GGUF metadata.
//!
//! - **Prefix reuse.** The worker remembers the tokens in its KV cache; a prompt that
//!   starts with the same tokens (the instruction and demos of a compiled program)
//!   evaluates only what follows.
//! - **Constrained decoding.** A JSON-schema output format becomes a GBNF grammar
//!   (llama.cpp's converter, memoized per schema) that masks every token that cannot
//!   continue a valid answer, so every answer parses.
//! - **Scoring.** [`Backend::score`] returns the log-probability of each continuation
//!   (for example each allowed label's answer) after the shared prompt.
//! - Timeouts and cancellation: a dropped call stops its job between tokens.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;

use crate::error::{Error, Result};
use crate::lm::{Backend, Message, OutputFormat, Request, Response, Role, TokenSink, Usage};

/// The GGUF file of the default local model, under the models directory.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Prompts are evaluated in chunks of this many tokens aligned to position 0 (see
/// `Worker::evaluate`): the unit of prefix reuse.
pub const CHUNK: usize = 64;

/// Settings of a [`LocalModel`].
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The GGUF file.
    pub path: PathBuf,
    /// Threads per context (prefill and decode).
    pub threads: usize,
    /// Context length, tokens (prompt and answer together).
    pub context: u32,
    /// Tokens per prefill batch.
    pub batch: u32,
    /// Contexts, each on its own thread (calls run in parallel up to this many).
    pub workers: usize,
}

impl LocalConfig {
    /// Defaults for a model file: every core, 4096 tokens, one context.
    pub fn new(path: impl Into<PathBuf>) -> LocalConfig {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        LocalConfig { path: path.into(), threads, context: 4096, batch: 512, workers: 1 }
    }

    /// The default model in the models directory (`kernelize models install` puts it there).
    pub fn default_model() -> LocalConfig {
        LocalConfig::new(kernelize_embed::models::models_dir().join(DEFAULT_MODEL_FILE))
    }
}

/// What the loaded model is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// Model name (GGUF `general.name`, else the file name).
    pub name: String,
    /// Parameters.
    pub params: u64,
    /// Size of the weights, bytes.
    pub bytes: u64,
    /// Context length the model was trained with.
    pub context_train: u32,
    /// Vocabulary size.
    pub vocab: i32,
    /// Time to load the file and create the contexts.
    #[serde(with = "crate::lm::duration_ms")]
    pub load_time: Duration,
}

/// Raw engine speed, measured as llama.cpp's `llama-bench` does: a prompt of
/// `prompt` tokens evaluated in one batch from an empty cache, then `generate` tokens
/// decoded one at a time (greedy).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Speed {
    /// Prompt tokens evaluated.
    pub prompt: usize,
    /// Prefill time, seconds.
    pub prefill_seconds: f64,
    /// Tokens decoded.
    pub generated: usize,
    /// Decode time, seconds.
    pub decode_seconds: f64,
}

enum Job {
    Bench {
        prompt: usize,
        generate: usize,
        reply: tokio::sync::oneshot::Sender<Result<Speed>>,
    },
    Complete {
        req: Request,
        sink: Option<TokenSink>,
        cancel: Arc<AtomicBool>,
        reply: tokio::sync::oneshot::Sender<Result<Response>>,
    },
    Score {
        req: Request,
        continuations: Vec<String>,
        cancel: Arc<AtomicBool>,
        reply: tokio::sync::oneshot::Sender<Result<Vec<f64>>>,
    },
}

/// A local model with its worker threads.
pub struct LocalModel {
    name: String,
    info: ModelInfo,
    jobs: std::sync::mpsc::Sender<Job>,
}

impl std::fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModel").field("info", &self.info).finish_non_exhaustive()
    }
}

fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(|e| e.to_string())?;
            b.void_logs();
            Ok(b)
        })
        .as_ref()
        .map_err(|e| Error::Model(format!("llama.cpp backend: {e}")))
}

impl LocalModel {
    /// Loads the model and starts its workers.
    ///
    /// # Errors
    /// [`Error::Model`] when the file is missing (with how to install it), is not a
    /// GGUF model llama.cpp can load, or a context cannot be created.
    pub fn load(cfg: &LocalConfig) -> Result<LocalModel> {
        let start = Instant::now();
        if !cfg.path.is_file() {
            return Err(Error::Model(format!(
                "{} not found; install it with `kernelize models install` (models directory: \
                 $KERNELIZE_MODELS_DIR, else ~/.local/share/kernelize/models)",
                cfg.path.display()
            )));
        }
        if cfg.workers == 0 || cfg.threads == 0 || cfg.context < 64 || cfg.batch == 0 {
            return Err(Error::invalid("local model: workers, threads and batch are at least 1, context at least 64"));
        }
        check_gguf_magic(&cfg.path)?;
        let be = backend()?;
        let model = LlamaModel::load_from_file(be, &cfg.path, &LlamaModelParams::default())
            .map_err(|e| Error::Model(format!("{}: {e}", cfg.path.display())))?;
        let template = model
            .chat_template(None)
            .map_err(|e| Error::Model(format!("{}: no chat template in the GGUF metadata: {e}", cfg.path.display())))?;
        let model = Arc::new(model);
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        let mut ready = Vec::new();
        for i in 0..cfg.workers {
            let (model, template, rx, cfg) = (model.clone(), template.clone(), rx.clone(), cfg.clone());
            let (ok_tx, ok_rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("kz-llm-{i}"))
                .spawn(move || worker(&model, template, &cfg, &rx, &ok_tx))
                .map_err(|e| Error::Model(format!("worker thread: {e}")))?;
            ready.push(ok_rx);
        }
        for r in ready {
            r.recv().map_err(|_| Error::Model("a worker stopped while starting".into()))??;
        }
        let name = model.meta_val_str("general.name").unwrap_or_else(|_| {
            cfg.path.file_stem().map_or_else(|| "local".into(), |s| s.to_string_lossy().into_owned())
        });
        let info = ModelInfo {
            name: name.clone(),
            params: model.n_params(),
            bytes: model.size(),
            context_train: model.n_ctx_train(),
            vocab: model.n_vocab(),
            load_time: start.elapsed(),
        };
        Ok(LocalModel { name: format!("local:{name}"), info, jobs: tx })
    }

    /// Measures prefill and decode speed on one worker (see [`Speed`]).
    ///
    /// # Errors
    /// [`Error::Invalid`] when `prompt + generate` does not fit the context.
    pub async fn bench(&self, prompt: usize, generate: usize) -> Result<Speed> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job::Bench { prompt, generate, reply })
            .map_err(|_| Error::Model("the model's workers have stopped".into()))?;
        rx.await.map_err(|_| Error::Model("a model worker stopped during the call".into()))?
    }

    /// What was loaded, and how long it took.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }
}

fn check_gguf_magic(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    fs_err::File::open(path)?.read_exact(&mut magic).map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
    if &magic != b"GGUF" {
        return Err(Error::Model(format!("{}: not a GGUF file (magic {magic:?})", path.display())));
    }
    Ok(())
}

/// Sets the flag when dropped: a caller that stops waiting (timeout, disconnect) stops the job.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Backend for LocalModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(&'a self, req: &'a Request, sink: Option<TokenSink>) -> BoxFuture<'a, Result<Response>> {
        Box::pin(async move {
            let cancel = Arc::new(AtomicBool::new(false));
            let _guard = CancelOnDrop(cancel.clone());
            let (reply, rx) = tokio::sync::oneshot::channel();
            self.jobs
                .send(Job::Complete { req: req.clone(), sink, cancel, reply })
                .map_err(|_| Error::Model("the model's workers have stopped".into()))?;
            rx.await.map_err(|_| Error::Model("a model worker stopped during the call".into()))?
        })
    }

    fn score<'a>(&'a self, req: &'a Request, continuations: &'a [String]) -> BoxFuture<'a, Result<Vec<f64>>> {
        Box::pin(async move {
            let cancel = Arc::new(AtomicBool::new(false));
            let _guard = CancelOnDrop(cancel.clone());
            let (reply, rx) = tokio::sync::oneshot::channel();
            self.jobs
                .send(Job::Score { req: req.clone(), continuations: continuations.to_vec(), cancel, reply })
                .map_err(|_| Error::Model("the model's workers have stopped".into()))?;
            rx.await.map_err(|_| Error::Model("a model worker stopped during the call".into()))?
        })
    }
}

/// One context and what its KV cache holds.
struct Worker<'m> {
    model: &'m LlamaModel,
    template: LlamaChatTemplate,
    ctx: LlamaContext<'m>,
    /// Tokens whose keys and values are in the cache, in order (sequence 0).
    cached: Vec<LlamaToken>,
    /// How many of them were evaluated as whole aligned chunks of [`CHUNK`] (reusable).
    canonical: usize,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    n_ctx: usize,
    grammars: HashMap<String, String>,
    name: String,
}

fn worker(
    model: &LlamaModel,
    template: LlamaChatTemplate,
    cfg: &LocalConfig,
    jobs: &parking_lot::Mutex<std::sync::mpsc::Receiver<Job>>,
    ready: &std::sync::mpsc::Sender<Result<()>>,
) {
    let threads = i32::try_from(cfg.threads).unwrap_or(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(cfg.context))
        .with_n_batch(cfg.batch)
        .with_n_ubatch(cfg.batch)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let be = match backend() {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let ctx = match model.new_context(be, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(Error::Model(format!("context: {e}"))));
            return;
        }
    };
    let n_batch = cfg.batch as usize;
    let mut w = Worker {
        model,
        template,
        ctx,
        cached: Vec::new(),
        canonical: 0,
        batch: LlamaBatch::new(n_batch, 1),
        n_batch,
        n_ctx: cfg.context as usize,
        grammars: HashMap::new(),
        name: "local".into(),
    };
    w.name = model.meta_val_str("general.name").map_or_else(|_| "local".into(), |n| format!("local:{n}"));
    let _ = ready.send(Ok(()));
    loop {
        // One idle worker waits on the queue at a time; the others wait for the lock.
        let Ok(job) = jobs.lock().recv() else { break };
        match job {
            Job::Bench { prompt, generate, reply } => {
                let r = w.bench(prompt, generate);
                w.reset();
                let _ = reply.send(r);
            }
            Job::Complete { req, sink, cancel, reply } => {
                if cancel.load(Ordering::Relaxed) {
                    continue;
                }
                let r = w.complete(&req, sink.as_ref(), &cancel);
                if r.is_err() {
                    w.reset();
                }
                let _ = reply.send(r);
            }
            Job::Score { req, continuations, cancel, reply } => {
                if cancel.load(Ordering::Relaxed) {
                    continue;
                }
                let r = w.score(&req, &continuations, &cancel);
                if r.is_err() {
                    w.reset();
                }
                let _ = reply.send(r);
            }
        }
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// Log-softmax of one token among logits.
fn log_prob(logits: &[f32], token: LlamaToken) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let l = usize::try_from(token.0).ok().and_then(|i| logits.get(i)).copied().unwrap_or(f32::NEG_INFINITY);
    f64::from(l - max) - sum.ln()
}

impl Worker<'_> {
    fn reset(&mut self) {
        self.ctx.clear_kv_cache();
        self.cached.clear();
        self.canonical = 0;
    }

    /// The prompt's tokens: the chat template over the messages, then the start of the
    /// assistant's turn.
    fn prompt_tokens(&self, messages: &[Message]) -> Result<Vec<LlamaToken>> {
        let chat: Vec<LlamaChatMessage> = messages
            .iter()
            .map(|m| LlamaChatMessage::new(role_name(m.role).into(), m.content.clone()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::invalid(format!("messages: {e}")))?;
        let text = self
            .model
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|e| Error::Model(format!("chat template: {e}")))?;
        Ok(self.model.vocab().tokenize(text.as_bytes(), true, true))
    }

    /// Brings the KV cache to exactly `tokens` (with logits for the last one), evaluating
    /// only what is not cached yet.
    ///
    /// Determinism: llama.cpp's results depend on how a prompt is cut into batches, so
    /// prompts are always evaluated in chunks of [`CHUNK`] tokens aligned to position 0,
    /// and only whole chunks evaluated that way are reused. The same prompt then gets the
    /// same keys and values (and the same answer at temperature 0) whatever was cached.
    fn evaluate(&mut self, tokens: &[LlamaToken], cancel: &AtomicBool) -> Result<()> {
        self.evaluate_in(tokens, CHUNK, cancel)
    }

    fn evaluate_in(&mut self, tokens: &[LlamaToken], chunk: usize, cancel: &AtomicBool) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::invalid("empty prompt"));
        }
        if tokens.len() >= self.n_ctx {
            return Err(Error::invalid(format!(
                "the prompt is {} tokens; the context holds {} (prompt and answer)",
                tokens.len(),
                self.n_ctx
            )));
        }
        let chunk = chunk.clamp(1, self.n_batch);
        let same = self.cached.iter().zip(tokens).take_while(|(a, b)| a == b).count();
        // Whole aligned chunks only, and the last token is always evaluated again (its
        // logits are needed).
        let mut keep = same.min(self.canonical).min(tokens.len() - 1) / chunk * chunk;
        if chunk != CHUNK {
            keep = 0;
        }
        if keep < self.cached.len() {
            let p0 = u32::try_from(keep).unwrap_or(u32::MAX);
            if self.ctx.kv_cache_seq_rm(0, Some(p0), None).is_err() {
                self.reset();
                keep = 0;
            }
            self.cached.truncate(keep);
        }
        self.canonical = keep;
        let rest = &tokens[keep..];
        for (ci, part) in rest.chunks(chunk).enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            self.batch.clear();
            let base = keep + ci * chunk;
            let last = base + part.len() == tokens.len();
            for (j, &t) in part.iter().enumerate() {
                let pos = i32::try_from(base + j).unwrap_or(i32::MAX);
                let logits = last && j + 1 == part.len();
                self.batch.add(t, pos, &[0], logits).map_err(|e| Error::Model(format!("batch: {e}")))?;
            }
            self.ctx.decode(&mut self.batch).map_err(|e| Error::Model(format!("decode: {e}")))?;
            self.cached.extend_from_slice(part);
            if part.len() == chunk && chunk == CHUNK {
                self.canonical = self.cached.len();
            }
        }
        Ok(())
    }

    fn bench(&mut self, prompt: usize, generate: usize) -> Result<Speed> {
        if prompt == 0 || prompt > self.n_batch || prompt + generate >= self.n_ctx {
            return Err(Error::invalid(format!(
                "bench: 1 to {} prompt tokens (one batch) and prompt + generate below the context ({})",
                self.n_batch, self.n_ctx
            )));
        }
        let text = "The quick brown fox jumps over the lazy dog while the knowledge kernel answers offline. ";
        let one = self.model.vocab().tokenize(text.as_bytes(), false, false);
        let tokens: Vec<LlamaToken> = one.iter().copied().cycle().take(prompt).collect();
        self.reset();
        let never = AtomicBool::new(false);
        let t = Instant::now();
        self.evaluate_in(&tokens, self.n_batch, &never)?;
        let prefill_seconds = t.elapsed().as_secs_f64();
        let mut sampler = LlamaSampler::greedy();
        let t = Instant::now();
        for _ in 0..generate {
            let tok = sampler.sample(&self.ctx, -1);
            self.batch.clear();
            let pos = i32::try_from(self.cached.len()).unwrap_or(i32::MAX);
            self.batch.add(tok, pos, &[0], true).map_err(|e| Error::Model(format!("batch: {e}")))?;
            self.ctx.decode(&mut self.batch).map_err(|e| Error::Model(format!("decode: {e}")))?;
            self.cached.push(tok);
        }
        Ok(Speed { prompt, prefill_seconds, generated: generate, decode_seconds: t.elapsed().as_secs_f64() })
    }

    fn grammar_for(&mut self, schema: &str) -> Result<String> {
        if let Some(g) = self.grammars.get(schema) {
            return Ok(g.clone());
        }
        let key = schema.to_owned();
        let parsed: serde_json::Value =
            serde_json::from_str(schema).map_err(|e| Error::invalid(format!("output format: schema: {e}")))?;
        crate::signature::check_schema(&parsed, 0).map_err(|e| Error::invalid(format!("output format: {e}")))?;
        let g = llama_cpp_2::json_schema_to_grammar(&key)
            .map_err(|e| Error::invalid(format!("output format: the schema has no grammar: {e}")))?;
        // The converter lets whitespace run (newlines and up to 20 blanks between tokens);
        // small models then fill the answer with newlines until the token limit. One
        // optional blank between JSON tokens is all an answer needs.
        let g: String = g
            .lines()
            .map(|l| if l.starts_with("space ::=") { "space ::= \" \"?" } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        if self.grammars.len() > 256 {
            self.grammars.clear();
        }
        self.grammars.insert(key, g.clone());
        Ok(g)
    }

    fn complete(&mut self, req: &Request, sink: Option<&TokenSink>, cancel: &AtomicBool) -> Result<Response> {
        let start = Instant::now();
        let prompt = self.prompt_tokens(&req.messages)?;
        let s = &req.sampling;
        let mut grammar = match &req.format {
            OutputFormat::Json { schema } => {
                let g = self.grammar_for(schema)?;
                Some(
                    LlamaSampler::grammar(self.model, &g, "root")
                        .map_err(|e| Error::invalid(format!("output format grammar: {e}")))?,
                )
            }
            OutputFormat::Text => None,
        };
        let mut chain = Vec::new();
        if s.temperature > 0.0 {
            if s.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(s.top_p.clamp(0.0, 1.0), 1));
            }
            chain.push(LlamaSampler::temp(s.temperature));
            #[allow(clippy::cast_possible_truncation, reason = "llama.cpp seeds are 32-bit; the low bits suffice")]
            chain.push(LlamaSampler::dist(s.seed as u32));
        } else {
            chain.push(LlamaSampler::greedy());
        }
        let mut sampler = LlamaSampler::chain_simple(chain);
        self.evaluate(&prompt, cancel)?;
        let max_new = (s.max_tokens as usize).min(self.n_ctx.saturating_sub(prompt.len() + 1));
        let vocab = self.model.vocab();
        let mut out: Vec<u8> = Vec::new();
        let mut sent = 0usize;
        let mut generated = 0u64;
        let mut finish = "length";
        let mut text_end = None;
        for _ in 0..max_new {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let tok = self.pick(&mut sampler, grammar.as_mut())?;
            if vocab.is_eog(tok) {
                finish = "stop";
                break;
            }
            generated += 1;
            vocab.token_to_piece_into(tok, &mut out, false, None);
            if let Some(cut) =
                req.stop.iter().filter(|st| !st.is_empty()).filter_map(|st| find(&out, st.as_bytes())).min()
            {
                text_end = Some(cut);
                finish = "stop";
            }
            let upto = text_end.unwrap_or(out.len());
            if let Some(sink) = sink {
                // Send only whole UTF-8 characters.
                let valid = match std::str::from_utf8(&out[sent..upto]) {
                    Ok(_) => upto,
                    Err(e) => sent + e.valid_up_to(),
                };
                if valid > sent {
                    let _ = sink.send(String::from_utf8_lossy(&out[sent..valid]).into_owned());
                    sent = valid;
                }
            }
            if text_end.is_some() {
                break;
            }
            self.batch.clear();
            let pos = i32::try_from(self.cached.len()).unwrap_or(i32::MAX);
            self.batch.add(tok, pos, &[0], true).map_err(|e| Error::Model(format!("batch: {e}")))?;
            self.ctx.decode(&mut self.batch).map_err(|e| Error::Model(format!("decode: {e}")))?;
            self.cached.push(tok);
        }
        out.truncate(text_end.unwrap_or(out.len()));
        if let Some(sink) = sink
            && sent < out.len()
        {
            let _ = sink.send(String::from_utf8_lossy(&out[sent..]).into_owned());
        }
        Ok(Response {
            text: String::from_utf8_lossy(&out).into_owned(),
            usage: Usage { prompt_tokens: prompt.len() as u64, completion_tokens: generated },
            backend: self.name.clone(),
            model: self.name.clone(),
            latency: start.elapsed(),
            cached: false,
            attempts: 1,
            finish_reason: finish.into(),
        })
    }

    /// The next token: sampled without the grammar first (cheap), and only when the
    /// grammar refuses it, again from the candidates the grammar allows (as llama.cpp's
    /// own sampler does: checking all 49k tokens against the grammar every step is slow).
    fn pick(&mut self, sampler: &mut LlamaSampler, grammar: Option<&mut LlamaSampler>) -> Result<LlamaToken> {
        let mut all = LlamaTokenDataArray::from_iter(self.ctx.candidates_ith(-1), false);
        sampler.apply(&mut all);
        let mut tok = all.selected_token().ok_or_else(|| Error::Model("the sampler chose no token".into()))?;
        if let Some(g) = grammar {
            let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(tok, 0.0, 0.0)], false);
            g.apply(&mut one);
            if one.data.first().is_none_or(|d| d.logit() == f32::NEG_INFINITY) {
                let mut all = LlamaTokenDataArray::from_iter(self.ctx.candidates_ith(-1), false);
                g.apply(&mut all);
                sampler.apply(&mut all);
                tok = all.selected_token().ok_or_else(|| Error::Model("the grammar allows no token".into()))?;
            }
            g.try_accept(tok).map_err(|e| Error::Model(format!("grammar: {e}")))?;
        }
        sampler.accept(tok);
        Ok(tok)
    }

    fn score(&mut self, req: &Request, continuations: &[String], cancel: &AtomicBool) -> Result<Vec<f64>> {
        if continuations.is_empty() {
            return Ok(Vec::new());
        }
        let prompt = self.prompt_tokens(&req.messages)?;
        let vocab = self.model.vocab();
        // Tokenize prompt and continuation together (merges across the seam as the
        // model would see them), then share the longest common prefix.
        let full: Vec<Vec<LlamaToken>> = continuations
            .iter()
            .map(|c| {
                let mut t = prompt.clone();
                t.extend(vocab.tokenize(c.as_bytes(), false, false));
                t
            })
            .collect();
        let min_len = full.iter().map(Vec::len).min().unwrap_or(0);
        if min_len <= prompt.len() {
            return Err(Error::invalid("a continuation to score is empty"));
        }
        let common = full[1..]
            .iter()
            .map(|f| f.iter().zip(&full[0]).take_while(|(a, b)| a == b).count())
            .min()
            .unwrap_or(full[0].len());
        // Every continuation keeps at least one token of its own.
        let shared = common.min(min_len - 1);
        if full.iter().any(|f| f.len() + 1 >= self.n_ctx) {
            return Err(Error::invalid("prompt and continuation are longer than the context"));
        }
        self.evaluate(&full[0][..shared], cancel)?;
        let base_logits = self.ctx.get_logits_ith(-1).to_vec();
        let mut scores = Vec::with_capacity(full.len());
        for f in &full {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let tail = &f[shared..];
            let mut lp = log_prob(&base_logits, tail[0]);
            if tail.len() > 1 {
                // Evaluate the tail but its last token; logits at each position.
                let keep = u32::try_from(shared).unwrap_or(u32::MAX);
                if self.ctx.kv_cache_seq_rm(0, Some(keep), None).is_err() {
                    return Err(Error::Model("kv cache: cannot drop a scored continuation".into()));
                }
                self.cached.truncate(shared);
                self.batch.clear();
                for (j, &t) in tail[..tail.len() - 1].iter().enumerate() {
                    let pos = i32::try_from(shared + j).unwrap_or(i32::MAX);
                    self.batch.add(t, pos, &[0], true).map_err(|e| Error::Model(format!("batch: {e}")))?;
                }
                self.ctx.decode(&mut self.batch).map_err(|e| Error::Model(format!("decode: {e}")))?;
                self.cached.extend_from_slice(&tail[..tail.len() - 1]);
                for (j, &t) in tail[1..].iter().enumerate() {
                    let i = i32::try_from(j).unwrap_or(i32::MAX);
                    lp += log_prob(self.ctx.get_logits_ith(i), t);
                }
            }
            scores.push(lp);
        }
        Ok(scores)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
