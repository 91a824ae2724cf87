//! `kernelize program …`: run, compile, evaluate and show LLM programs offline, on the
//! local model (SmolLM2-135M-Instruct from the models directory) or an HTTP backend.
//! No server needed.
//!
//! A program file is either the bare program JSON or a saved program
//! ([`kernelize_programs::saved::SavedProgram`]: the program with how it was compiled,
//! its scores and optionally a signature), which `compile` writes. A signed file is
//! always verified; `--pubkey` also requires the signature to be by that key.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kernelize_kernel::PublicKey;
use kernelize_programs::module::{Env, Example, Program};
use kernelize_programs::saved::SavedProgram;
use kernelize_programs::{DynBackend, LocalConfig, LocalModel};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum ProgramCmd {
    /// Run a program on one input; prints the prediction (outputs, calls, usage) as JSON.
    Run(RunArgs),
    /// Optimize a program on labelled examples, score it on the validation ones; writes
    /// a saved program (optionally signed).
    Compile(CompileArgs),
    /// Score a program on labelled examples (mean of the metric, with a 95% interval).
    Eval(EvalArgs),
    /// Describe a program file: predictors, signatures, demos, inputs (and, for a saved
    /// program, how it was compiled, its scores and who signed it).
    Show(ShowArgs),
}

/// Where a program comes from.
#[derive(Args, Debug, Clone)]
pub struct ProgramArgs {
    /// Program file: the program JSON, or a saved program (`kernelize program compile`
    /// writes one). A signed saved program is verified.
    pub program: PathBuf,
    /// Refuse a program file not signed by this public key (the `.pub` file of `kernelize
    /// keys generate`).
    #[arg(long, value_name = "FILE")]
    pub pubkey: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub program: ProgramArgs,
}

/// Which model answers.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// `local` (default: the GGUF model in the models directory, or --model), or
    /// `openai:URL` (an OpenAI-compatible server; --remote-model names the model, the key
    /// comes from $OPENAI_API_KEY) or `ollama:URL`.
    #[arg(long, default_value = "local")]
    pub backend: String,
    /// GGUF file of the local model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Model name for `openai:` and `ollama:` backends.
    #[arg(long, default_value = "default")]
    pub remote_model: String,
    /// Threads of the local model (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub program: ProgramArgs,
    /// Inputs: a JSON object, or @FILE to read one.
    #[arg(long)]
    pub inputs: String,
    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    pub program: ProgramArgs,
    /// Training examples: JSONL of `{"inputs": {…}, "outputs": {…}}`.
    #[arg(long)]
    pub train: PathBuf,
    /// Validation examples (same format).
    #[arg(long)]
    pub val: PathBuf,
    /// Optimizer (JSON, or @FILE): `{"optimizer": "labeled_few_shot", "k": 4}`,
    /// `{"optimizer": "bootstrap_few_shot", "max_bootstrapped": 4, "max_labeled": 4,
    /// "candidates": 8}`, `{"optimizer": "knn_few_shot", "k": 4}` or `{"optimizer": "gepa",
    /// "minibatch": 3, "merge": true, "max_candidates": 8}`.
    #[arg(long)]
    pub optimizer: String,
    /// Metric (JSON, or @FILE): `{"metric": "exact_match" | "token_f1" | "citations",
    /// "field": "answer"}`.
    #[arg(long)]
    pub metric: String,
    /// Budget (JSON, or @FILE): `{"calls": …, "tokens": …, "seconds": …}`, each optional
    /// (default: unlimited).
    #[arg(long)]
    pub budget: Option<String>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the compiled program (a saved program: the program, the optimizer,
    /// metric, seed, scores and a hash of the training data).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Sign the compiled program with this private key (the `.key` file of `kernelize keys
    /// generate`, the same keys as signed kernels).
    #[arg(long, value_name = "FILE")]
    pub sign: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub program: ProgramArgs,
    /// Labelled examples: JSONL of `{"inputs": {…}, "outputs": {…}}`.
    #[arg(long)]
    pub data: PathBuf,
    /// Metric (JSON, or @FILE): `{"metric": "exact_match" | "token_f1" | "citations",
    /// "field": "answer"}`.
    #[arg(long)]
    pub metric: String,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Runs a `program` subcommand.
pub fn run(cmd: &ProgramCmd) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cmd {
        ProgramCmd::Show(a) => {
            let (p, saved) = load_saved(&a.program)?;
            println!("{}", serde_json::to_string_pretty(&describe(&p, saved.as_ref()))?);
        }
        ProgramCmd::Run(a) => {
            let p = load_program(&a.program)?;
            let inputs = json_object("--inputs", &a.inputs)?;
            let env = Env::new(backend(&a.backend)?);
            let started = std::time::Instant::now();
            let pred = rt.block_on(p.forward(&env, &inputs)).context("running the program")?;
            let u = pred.usage();
            // The shape of the server's run answer (`POST /v1/programs/{name}/run`).
            let calls: Vec<Value> = pred
                .calls
                .iter()
                .map(|c| {
                    json!({
                        "module": c.module, "backend": c.backend, "model": c.model,
                        "prompt_tokens": c.usage.prompt_tokens, "completion_tokens": c.usage.completion_tokens,
                        "latency_ms": c.latency.as_secs_f64() * 1e3, "cache_hit": c.cached, "attempts": c.attempts,
                    })
                })
                .collect();
            let out = json!({
                "outputs": pred.outputs,
                "calls": calls,
                "retrieved": pred.retrieved,
                "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total()},
                "latency_ms": started.elapsed().as_secs_f64() * 1e3,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ProgramCmd::Compile(a) => return crate::program_optimize::compile(&rt, a),
        ProgramCmd::Eval(a) => return crate::program_optimize::eval(&rt, a),
    }
    Ok(ExitCode::SUCCESS)
}

/// A program file: a saved program (recognized by its `format` version; its signature
/// checked, against `--pubkey` when given), or the bare program JSON, which `--pubkey`
/// refuses (it has no signature).
pub fn load_saved(a: &ProgramArgs) -> Result<(Program, Option<SavedProgram>)> {
    let path = &a.program;
    let trust = a.pubkey.as_deref().map(PublicKey::load).transpose()?;
    let text = fs_err::read_to_string(path)?;
    let value: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    if value.get("format").is_some() {
        let saved = SavedProgram::load(path, trust.as_ref())?;
        return Ok((saved.program.clone(), Some(saved)));
    }
    if let Some(t) = &trust {
        bail!("{}: a bare program, not a saved program signed by key {}", path.display(), t.key_id());
    }
    let p: Program = serde_path_to_error::deserialize(value)
        .map_err(|e| anyhow::anyhow!("{}: at {}: {}", path.display(), e.path(), e.inner()))?;
    p.validate().with_context(|| format!("{}", path.display()))?;
    Ok((p, None))
}

/// The program of a program file (see [`load_saved`]).
pub fn load_program(a: &ProgramArgs) -> Result<Program> {
    Ok(load_saved(a)?.0)
}

/// A JSON object from an argument: inline, or `@FILE`.
pub fn json_arg(what: &str, arg: &str) -> Result<Value> {
    let text = match arg.strip_prefix('@') {
        Some(path) => fs_err::read_to_string(path)?,
        None => arg.to_owned(),
    };
    serde_json::from_str(&text).with_context(|| format!("{what}: not JSON"))
}

fn json_object(what: &str, arg: &str) -> Result<Map<String, Value>> {
    match json_arg(what, arg)? {
        Value::Object(m) => Ok(m),
        _ => bail!("{what}: a JSON object of input values"),
    }
}

/// Labelled examples from a JSONL file (blank lines skipped); errors name the line.
pub fn load_examples(path: &Path) -> Result<Vec<Example>> {
    let text = fs_err::read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: Example = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not {{\"inputs\", \"outputs\"}}", path.display(), i + 1))?;
        out.push(e);
    }
    if out.is_empty() {
        bail!("{}: no examples", path.display());
    }
    Ok(out)
}

/// The backend the arguments name.
pub fn backend(a: &BackendArgs) -> Result<DynBackend> {
    if a.backend == "local" {
        let mut cfg = match &a.model {
            Some(p) => LocalConfig::new(p),
            None => LocalConfig::default_model(),
        };
        if let Some(t) = a.threads {
            cfg.threads = t.max(1);
        }
        let m = LocalModel::load(&cfg)?;
        return Ok(Arc::new(m));
    }
    if let Some(url) = a.backend.strip_prefix("openai:") {
        let mut b = kernelize_programs::http::OpenAiBackend::new(url, a.remote_model.clone())?;
        if let Ok(k) = std::env::var("OPENAI_API_KEY") {
            b = b.api_key(k);
        }
        return Ok(Arc::new(b));
    }
    if let Some(url) = a.backend.strip_prefix("ollama:") {
        return Ok(Arc::new(kernelize_programs::http::OllamaBackend::new(url, a.remote_model.clone())?));
    }
    bail!("--backend {:?}: local, openai:URL or ollama:URL", a.backend)
}

/// What `show` prints.
pub fn describe(p: &Program, saved: Option<&SavedProgram>) -> Value {
    let predictors: Vec<Value> = p
        .predictors()
        .iter()
        .map(|pr| {
            let sig = pr.effective_signature();
            json!({
                "name": pr.name,
                "kind": if pr.reasoning { "chain_of_thought" } else { "predict" },
                "instruction": sig.instruction,
                "inputs": sig.inputs.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
                "outputs": sig.outputs.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
                "demos": pr.demos.len(),
                "decode": pr.decode,
            })
        })
        .collect();
    let mut out = json!({
        "inputs": p.input_names(),
        "predictors": predictors,
    });
    if let Some(saved) = saved {
        out["saved"] = json!({
            "format": saved.format,
            "optimizer": saved.optimizer,
            "metric": saved.metric,
            "scores": saved.scores,
            "seed": saved.seed,
            "dataset_hash": saved.dataset_hash,
            "created_by": saved.created_by,
            "signed_by": saved.signature.as_ref().map(|s| s.key_id.clone()),
        });
    }
    out["program"] = json!(p);
    out
}
