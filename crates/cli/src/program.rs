//! `kernelize program …`: run, compile, evaluate and show LLM programs offline, on the
//! local model (SmolLM2-135M-Instruct from the models directory) or an HTTP backend.
//! No server needed.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kernelize_programs::module::{Env, Example, Program};
use kernelize_programs::{DynBackend, LocalConfig, LocalModel};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum ProgramCmd {
    /// Run a program on one input; prints the prediction (outputs, calls, usage) as JSON.
    Run(RunArgs),
    /// Optimize a program on labelled examples; writes the compiled program file.
    Compile(CompileArgs),
    /// Score a program on labelled examples (mean of the metric, with a 95% interval).
    Eval(EvalArgs),
    /// Describe a program file: predictors, signatures, demos, inputs.
    Show {
        /// Program file (JSON).
        program: PathBuf,
    },
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
    /// Program file (JSON).
    pub program: PathBuf,
    /// Inputs: a JSON object, or @FILE to read one.
    #[arg(long)]
    pub inputs: String,
    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    /// Program file (JSON).
    pub program: PathBuf,
    /// Training examples: JSONL of `{"inputs": {…}, "outputs": {…}}`.
    #[arg(long)]
    pub train: PathBuf,
    /// Validation examples (same format).
    #[arg(long)]
    pub val: PathBuf,
    /// Optimizer spec (JSON, or @FILE).
    #[arg(long)]
    pub optimizer: String,
    /// Metric (JSON, or @FILE).
    #[arg(long)]
    pub metric: String,
    /// Budget: calls, tokens, seconds (JSON, or @FILE; default: the optimizer's).
    #[arg(long)]
    pub budget: Option<String>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the compiled program.
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Program file (JSON).
    pub program: PathBuf,
    /// Labelled examples: JSONL of `{"inputs": {…}, "outputs": {…}}`.
    #[arg(long)]
    pub data: PathBuf,
    /// Metric (JSON, or @FILE).
    #[arg(long)]
    pub metric: String,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Runs a `program` subcommand.
pub fn run(cmd: &ProgramCmd) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cmd {
        ProgramCmd::Show { program } => {
            let p = load_program(program)?;
            println!("{}", serde_json::to_string_pretty(&describe(&p))?);
        }
        ProgramCmd::Run(a) => {
            let p = load_program(&a.program)?;
            let inputs = json_object("--inputs", &a.inputs)?;
            let env = Env::new(backend(&a.backend)?);
            let started = std::time::Instant::now();
            let pred = rt.block_on(p.forward(&env, &inputs)).context("running the program")?;
            let u = pred.usage();
            let out = json!({
                "outputs": pred.outputs,
                "calls": pred.calls,
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

/// A program file: the program JSON `kernelize program show` prints.
pub fn load_program(path: &Path) -> Result<Program> {
    let text = fs_err::read_to_string(path)?;
    let p: Program = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text))
        .map_err(|e| anyhow::anyhow!("{}: at {}: {}", path.display(), e.path(), e.inner()))?;
    p.validate().with_context(|| format!("{}", path.display()))?;
    Ok(p)
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
pub fn describe(p: &Program) -> Value {
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
    json!({
        "inputs": p.input_names(),
        "predictors": predictors,
        "program": p,
    })
}
