//! Modules and programs: `Predict`, `ChainOfThought`, `BestOfN`, `RetrieveThenAnswer`
//! and their composition, as plain data (so a program saves to JSON and loads back).
//!
//! Every call to a backend is recorded ([`Call`]: backend, model, tokens, latency, cache
//! hit, attempts), and every predictor's inputs and outputs are traced ([`TraceStep`])
//! for the optimizers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::lm::{DynBackend, Message, OutputFormat, Request, Role, Sampling, Usage};
use crate::retrieve::{Passage, RetrieveMode, Retriever};
use crate::signature::{Field, FieldType, Signature, Values};

pub use crate::optimize::knn::KnnDemos;
use kernelize_embed::Embedder;

/// One labelled example: a demo in a prompt, or an item of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Input values.
    pub inputs: Values,
    /// Output values (the gold answer, or a demo's answer).
    pub outputs: Values,
}

/// One backend call made by a module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// The predictor that made it.
    pub module: String,
    /// The backend that answered.
    pub backend: String,
    /// Its model.
    pub model: String,
    /// Tokens used.
    pub usage: Usage,
    /// Wall time.
    #[serde(with = "crate::lm::duration_ms")]
    pub latency: Duration,
    /// Served from the response cache.
    pub cached: bool,
    /// Attempts at the backend (retries included).
    pub attempts: u32,
}

/// A predictor's inputs and outputs on one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceStep {
    /// The predictor.
    pub predictor: String,
    /// What it got.
    pub inputs: Values,
    /// What it answered.
    pub outputs: Values,
}

/// What a program returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The outputs.
    pub outputs: Values,
    /// Every backend call, in order.
    pub calls: Vec<Call>,
    /// Every predictor step, in order.
    pub trace: Vec<TraceStep>,
    /// Passages retrieved (RetrieveThenAnswer), in rank order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retrieved: Vec<Passage>,
}

impl Prediction {
    /// Tokens over every call.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        for c in &self.calls {
            u += c.usage;
        }
        u
    }
}

/// What programs run against: the model and the named retrievers.
#[derive(Clone)]
pub struct Env {
    /// The backend (any [`Backend`](crate::lm::Backend), usually a resilient one).
    pub lm: DynBackend,
    /// Retrievers by name, for `RetrieveThenAnswer`.
    pub retrievers: HashMap<String, Arc<dyn Retriever>>,
    /// Sampling that replaces each predictor's own (BestOfN's draws, optimizers' bootstraps).
    pub sampling: Option<Sampling>,
    /// The sentence embedder (MiniLM) that picks KnnFewShot's demos per input
    /// ([`Predict::knn`]); predictors with `knn` fail without one.
    pub embedder: Option<Arc<Embedder>>,
}

impl Env {
    /// An environment with a backend and no retrievers.
    pub fn new(lm: DynBackend) -> Env {
        Env { lm, retrievers: HashMap::new(), sampling: None, embedder: None }
    }

    /// Sets the embedder KnnFewShot's predictors embed their inputs with.
    #[must_use]
    pub fn with_embedder(mut self, embedder: Arc<Embedder>) -> Env {
        self.embedder = Some(embedder);
        self
    }

    /// Adds a retriever.
    #[must_use]
    pub fn with_retriever(mut self, name: impl Into<String>, r: Arc<dyn Retriever>) -> Env {
        self.retrievers.insert(name.into(), r);
        self
    }
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("lm", &self.lm.name())
            .field("sampling", &self.sampling)
            .field("embedder", &self.embedder.is_some())
            .finish_non_exhaustive()
    }
}

/// How a predictor gets its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decode {
    /// Generate the answer object (constrained to the output schema).
    #[default]
    Generate,
    /// Signatures with one enum output: score every allowed label's answer by
    /// log-probability and take the best (backends that can score; the local model).
    Score,
}

/// The basic module: a signature, its demos, and how to call the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predict {
    /// Name, unique in its program (optimizers address predictors by it).
    pub name: String,
    /// The signature (optimizers rewrite its instruction).
    pub signature: Signature,
    /// Demos shown before the input.
    #[serde(default)]
    pub demos: Vec<Example>,
    /// Sampling.
    #[serde(default)]
    pub sampling: Sampling,
    /// ChainOfThought: a `reasoning` text comes before the outputs.
    #[serde(default)]
    pub reasoning: bool,
    /// Generate or score.
    #[serde(default)]
    pub decode: Decode,
    /// KnnFewShot: demos picked per input from a pool (after the fixed `demos`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn: Option<KnnDemos>,
}

/// The output field ChainOfThought adds before the others.
pub const REASONING: &str = "reasoning";
/// Longest reasoning, characters (the constrained decoder enforces it).
pub const MAX_REASONING_CHARS: u64 = 600;

impl Predict {
    /// A predictor for a signature.
    pub fn new(name: impl Into<String>, signature: Signature) -> Predict {
        Predict {
            name: name.into(),
            signature,
            demos: Vec::new(),
            sampling: Sampling::default(),
            reasoning: false,
            decode: Decode::Generate,
            knn: None,
        }
    }

    /// ChainOfThought: the same, reasoning step by step in a `reasoning` field first.
    pub fn chain_of_thought(name: impl Into<String>, signature: Signature) -> Predict {
        Predict { reasoning: true, ..Predict::new(name, signature) }
    }

    /// The signature the model sees (with `reasoning` first for ChainOfThought).
    pub fn effective_signature(&self) -> Signature {
        let mut sig = self.signature.clone();
        if self.reasoning && !sig.outputs.iter().any(|f| f.name == REASONING) {
            sig.outputs.insert(
                0,
                // Bounded: small models can loop inside a string until the token limit.
                Field::new(
                    REASONING,
                    FieldType::Json {
                        schema: serde_json::json!({ "type": "string", "maxLength": MAX_REASONING_CHARS }),
                    },
                )
                .desc("think step by step, briefly, before answering"),
            );
        }
        sig
    }

    /// The chat messages for one input: instruction and format, demos, the input
    /// (the fixed demos only: KnnFewShot's are picked in [`Predict::forward`]).
    pub fn messages(&self, inputs: &Values) -> Vec<Message> {
        self.messages_with(&self.demos, inputs)
    }

    /// The chat messages for one input with these demos.
    pub fn messages_with(&self, demos: &[Example], inputs: &Values) -> Vec<Message> {
        let sig = self.effective_signature();
        let mut m = vec![Message::new(Role::System, system_prompt(&sig))];
        for d in demos {
            m.push(Message::new(Role::User, render_inputs(&sig, &d.inputs)));
            m.push(Message::new(Role::Assistant, render_outputs(&sig, &d.outputs)));
        }
        m.push(Message::new(Role::User, render_inputs(&sig, inputs)));
        m
    }

    /// Runs the predictor on one input.
    ///
    /// # Errors
    /// [`Error::Invalid`] for inputs that do not fit the signature; [`Error::Parse`]
    /// when the answer still does not fit after one retry with the error fed back;
    /// backend errors as the backend gives them.
    pub async fn forward(&self, env: &Env, inputs: &Values) -> Result<Prediction> {
        let sig = self.effective_signature();
        sig.check_inputs(inputs)?;
        let sampling = env.sampling.clone().unwrap_or_else(|| self.sampling.clone());
        let mut messages = match &self.knn {
            None => self.messages(inputs),
            Some(knn) => {
                let embedder = env.embedder.as_ref().ok_or_else(|| {
                    Error::invalid(format!(
                        "predictor {:?} picks its demos by similarity (knn) and needs an embedder in the environment",
                        self.name
                    ))
                })?;
                let mut demos = self.demos.clone();
                demos.extend(knn.select(embedder, inputs).await?);
                self.messages_with(&demos, inputs)
            }
        };
        let mut pred = Prediction::default();
        if self.decode == Decode::Score
            && !self.reasoning
            && let [out] = sig.outputs.as_slice()
            && matches!(out.ty, FieldType::Enum { .. })
        {
            let labels = crate::signature::allowed_labels(&out.ty, Some(inputs));
            let answers: Vec<String> = labels
                .iter()
                .map(|l| render_outputs(&sig, &std::iter::once((out.name.clone(), Value::from(*l))).collect()))
                .collect();
            let req = Request { messages, format: OutputFormat::Text, sampling, stop: Vec::new() };
            let start = std::time::Instant::now();
            let scores = env.lm.score(&req, &answers).await?;
            let best = scores
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .ok_or_else(|| Error::invalid("no label to score"))?;
            pred.calls.push(Call {
                module: self.name.clone(),
                backend: env.lm.name().to_owned(),
                model: env.lm.name().to_owned(),
                usage: Usage::default(),
                latency: start.elapsed(),
                cached: false,
                attempts: 1,
            });
            pred.outputs.insert(out.name.clone(), Value::from(labels[best]));
            pred.trace.push(TraceStep {
                predictor: self.name.clone(),
                inputs: inputs.clone(),
                outputs: pred.outputs.clone(),
            });
            return Ok(pred);
        }
        let format = OutputFormat::Json { schema: sig.output_schema(inputs) };
        let mut last_err = String::new();
        for attempt in 0..2 {
            let req = Request {
                messages: messages.clone(),
                format: format.clone(),
                sampling: sampling.clone(),
                stop: Vec::new(),
            };
            let resp = env.lm.complete(&req, None).await?;
            pred.calls.push(Call {
                module: self.name.clone(),
                backend: resp.backend.clone(),
                model: resp.model.clone(),
                usage: resp.usage,
                latency: resp.latency,
                cached: resp.cached,
                attempts: resp.attempts,
            });
            match sig.parse_output(&resp.text, inputs) {
                Ok(mut outputs) => {
                    if self.reasoning {
                        // Kept in the trace, not in the outputs the caller asked for.
                        let r = outputs.remove(REASONING);
                        let mut traced = outputs.clone();
                        if let Some(r) = r {
                            traced.insert(REASONING.into(), r);
                        }
                        pred.trace.push(TraceStep {
                            predictor: self.name.clone(),
                            inputs: inputs.clone(),
                            outputs: traced,
                        });
                    } else {
                        pred.trace.push(TraceStep {
                            predictor: self.name.clone(),
                            inputs: inputs.clone(),
                            outputs: outputs.clone(),
                        });
                    }
                    pred.outputs = outputs;
                    return Ok(pred);
                }
                Err(e) if attempt == 0 => {
                    messages.push(Message::new(Role::Assistant, resp.text.clone()));
                    messages.push(Message::new(
                        Role::User,
                        format!("That answer cannot be used: {e}. Answer again with only the JSON object."),
                    ));
                    last_err = e;
                }
                Err(e) => {
                    return Err(Error::Parse { backend: resp.backend, reason: e, raw: resp.text });
                }
            }
        }
        Err(Error::invalid(format!("unreachable: {last_err}")))
    }
}

fn system_prompt(sig: &Signature) -> String {
    let mut s = String::new();
    s.push_str(sig.instruction.trim());
    s.push_str("\n\nInputs: ");
    let names: Vec<String> = sig
        .inputs
        .iter()
        .filter(|f| !f.hidden)
        .map(|f| if f.desc.is_empty() { f.name.clone() } else { format!("{} ({})", f.name, f.desc) })
        .collect();
    s.push_str(&names.join(", "));
    s.push_str(".\nAnswer with one JSON object with these fields, in this order:");
    for f in &sig.outputs {
        let what = match &f.ty {
            FieldType::String => "text".to_owned(),
            FieldType::Number => "a number".to_owned(),
            FieldType::Bool => "true or false".to_owned(),
            FieldType::Enum { labels, from_input: Some(src) } if labels.is_empty() => {
                format!("one of the values in {src}")
            }
            FieldType::Enum { labels, from_input: Some(src) } if is_hidden(sig, src) => {
                format!("one of: {}", labels.join(", "))
            }
            FieldType::Enum { from_input: Some(src), .. } => format!("one of the labels in {src}"),
            FieldType::Enum { labels, .. } => format!("one of: {}", labels.join(", ")),
            FieldType::List { items, .. } => match items.as_ref() {
                FieldType::Enum { from_input: Some(src), .. } => format!("a list of values from {src}"),
                _ => "a list".to_owned(),
            },
            FieldType::Json { schema } if schema["type"] == "string" => "text".to_owned(),
            FieldType::Json { .. } => "a JSON value".to_owned(),
        };
        s.push_str(&format!("\n- \"{}\": {what}", f.name));
        if !f.desc.is_empty() {
            s.push_str(&format!(" ({})", f.desc));
        }
    }
    s
}

fn is_hidden(sig: &Signature, name: &str) -> bool {
    sig.inputs.iter().any(|f| f.name == name && f.hidden)
}

/// Inputs as `name: value` lines (strings as they are, anything else as JSON); hidden
/// inputs are left out.
pub fn render_inputs(sig: &Signature, inputs: &Values) -> String {
    let mut lines = Vec::new();
    for f in sig.inputs.iter().filter(|f| !f.hidden) {
        let v = inputs.get(&f.name).unwrap_or(&Value::Null);
        let shown = match v {
            Value::String(s) => s.clone(),
            Value::Array(a) if a.iter().all(Value::is_string) => {
                a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
            }
            other => other.to_string(),
        };
        lines.push(format!("{}: {shown}", f.name));
    }
    lines.join("\n")
}

/// Outputs as the answer object, fields in signature order (missing ones skipped).
pub fn render_outputs(sig: &Signature, outputs: &Values) -> String {
    let parts: Vec<String> = sig
        .outputs
        .iter()
        .filter_map(|f| outputs.get(&f.name).map(|v| format!("{}: {v}", Value::String(f.name.clone()))))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// RetrieveThenAnswer: retrieve passages for a question, answer from them, and cite the
/// passages used — citations constrained to the retrieved ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrieveThenAnswer {
    /// Name of the retriever in the [`Env`].
    pub retriever: String,
    /// Vector, keyword or hybrid.
    #[serde(default)]
    pub mode: RetrieveMode,
    /// Passages retrieved.
    pub k: usize,
    /// The input field that is the query.
    pub query_field: String,
    /// The answering predictor: inputs include `passages` and `passage_ids`, outputs
    /// include `citations` (a list of ids among `passage_ids`).
    pub answer: Predict,
}

/// Most passages retrieved per question.
pub const MAX_K: usize = 50;

impl RetrieveThenAnswer {
    /// A RetrieveThenAnswer over a retriever: `question` → `answer` (text) and `citations`.
    ///
    /// # Errors
    /// Never for these fixed fields; the `Result` is the builder's.
    pub fn new(retriever: impl Into<String>, k: usize, instruction: &str) -> Result<RetrieveThenAnswer> {
        let strings = || FieldType::List { items: Box::new(FieldType::String), max_items: None };
        let sig = Signature::builder(instruction)
            .input("question", FieldType::String, "")
            .input("passages", strings(), "each starts with its [id]")
            .input("passage_ids", strings(), "")
            .output("answer", FieldType::String, "")
            .output(
                "citations",
                FieldType::List {
                    items: Box::new(FieldType::Enum { labels: Vec::new(), from_input: Some("passage_ids".into()) }),
                    max_items: Some(u32::try_from(k).unwrap_or(u32::MAX)),
                },
                "ids of the passages the answer rests on",
            )
            .build()?;
        Ok(RetrieveThenAnswer {
            retriever: retriever.into(),
            mode: RetrieveMode::default(),
            k,
            query_field: "question".into(),
            answer: Predict::new("answer", sig),
        })
    }

    async fn forward(&self, env: &Env, inputs: &Values) -> Result<Prediction> {
        if self.k == 0 || self.k > MAX_K {
            return Err(Error::invalid(format!("retrieve: k is 1 to {MAX_K}, not {}", self.k)));
        }
        let r = env
            .retrievers
            .get(&self.retriever)
            .ok_or_else(|| Error::invalid(format!("retriever {:?} is not available here", self.retriever)))?
            .clone();
        let query = inputs
            .get(&self.query_field)
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid(format!("input {:?} (the query) is missing or not text", self.query_field)))?
            .to_owned();
        let (k, mode) = (self.k, self.mode);
        let passages = tokio::task::spawn_blocking(move || r.retrieve(&query, k, mode))
            .await
            .map_err(|e| Error::Retrieve(format!("retriever task: {e}")))??;
        let mut step_inputs = inputs.clone();
        step_inputs.insert(
            "passages".into(),
            Value::from(passages.iter().map(|p| format!("[{}] {}", p.id, p.text)).collect::<Vec<_>>()),
        );
        step_inputs
            .insert("passage_ids".into(), Value::from(passages.iter().map(|p| p.id.clone()).collect::<Vec<_>>()));
        step_inputs.retain(|k, _| self.answer.signature.inputs.iter().any(|f| &f.name == k));
        let mut pred = self.answer.forward(env, &step_inputs).await?;
        pred.retrieved = passages;
        Ok(pred)
    }
}

/// A program: a module or a composition of modules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "module", rename_all = "snake_case")]
pub enum Program {
    /// One predictor (`reasoning: true` makes it ChainOfThought).
    Predict(Predict),
    /// Retrieve, then answer with citations.
    RetrieveThenAnswer(RetrieveThenAnswer),
    /// Draw `n` answers (temperature `temperature`, seeds 0..n) and keep the most common.
    BestOfN {
        /// Draws.
        n: u32,
        /// Sampling temperature of the draws.
        temperature: f32,
        /// The module drawn from.
        inner: Box<Program>,
    },
    /// Steps in order; each step's outputs join the inputs of the next; the last
    /// step's outputs are the program's.
    Sequence {
        /// The steps.
        steps: Vec<Program>,
    },
}

/// Most draws of BestOfN; deepest program nesting.
pub const MAX_N: u32 = 64;
const MAX_NESTING: usize = 8;

impl Program {
    /// Runs the program on one input.
    ///
    /// # Errors
    /// As [`Predict::forward`]; [`Error::Invalid`] for programs nested too deep.
    pub fn forward<'a>(&'a self, env: &'a Env, inputs: &'a Values) -> BoxFuture<'a, Result<Prediction>> {
        self.forward_at(env, inputs, 0)
    }

    fn forward_at<'a>(&'a self, env: &'a Env, inputs: &'a Values, depth: usize) -> BoxFuture<'a, Result<Prediction>> {
        Box::pin(async move {
            if depth > MAX_NESTING {
                return Err(Error::invalid(format!("programs nest at most {MAX_NESTING} deep")));
            }
            match self {
                Program::Predict(p) => p.forward(env, inputs).await,
                Program::RetrieveThenAnswer(r) => r.forward(env, inputs).await,
                Program::BestOfN { n, temperature, inner } => {
                    if *n == 0 || *n > MAX_N {
                        return Err(Error::invalid(format!("best_of_n: n is 1 to {MAX_N}, not {n}")));
                    }
                    let mut all = Prediction::default();
                    let mut counts: Vec<(String, usize, Values)> = Vec::new();
                    let mut last_err = None;
                    for i in 0..*n {
                        let base = env.sampling.clone().unwrap_or_default();
                        let mut draw_env = env.clone();
                        draw_env.sampling = Some(Sampling {
                            temperature: *temperature,
                            seed: base.seed.wrapping_add(u64::from(i)),
                            ..base
                        });
                        match inner.forward_at(&draw_env, inputs, depth + 1).await {
                            Ok(p) => {
                                let key = Value::Object(p.outputs.clone()).to_string();
                                match counts.iter_mut().find(|c| c.0 == key) {
                                    Some(c) => c.1 += 1,
                                    None => counts.push((key, 1, p.outputs.clone())),
                                }
                                all.calls.extend(p.calls);
                                all.trace.extend(p.trace);
                                all.retrieved = p.retrieved;
                            }
                            Err(e @ (Error::Parse { .. } | Error::Invalid(_))) => last_err = Some(e),
                            Err(e) => return Err(e),
                        }
                    }
                    // Most common answer; the first drawn among equals.
                    let best = counts.iter().enumerate().max_by_key(|(i, c)| (c.1, std::cmp::Reverse(*i)));
                    match best {
                        Some((_, c)) => all.outputs = c.2.clone(),
                        None => return Err(last_err.unwrap_or_else(|| Error::invalid("best_of_n: no draw"))),
                    }
                    Ok(all)
                }
                Program::Sequence { steps } => {
                    if steps.is_empty() {
                        return Err(Error::invalid("sequence: no steps"));
                    }
                    let mut values = inputs.clone();
                    let mut all = Prediction::default();
                    for step in steps {
                        let wanted = step.input_names();
                        let step_inputs: Values = values
                            .iter()
                            .filter(|(k, _)| wanted.contains(k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        let p = step.forward_at(env, &step_inputs, depth + 1).await?;
                        values.extend(p.outputs.clone());
                        all.calls.extend(p.calls);
                        all.trace.extend(p.trace);
                        if !p.retrieved.is_empty() {
                            all.retrieved = p.retrieved;
                        }
                        all.outputs = p.outputs;
                    }
                    Ok(all)
                }
            }
        })
    }

    /// The input fields the program reads.
    pub fn input_names(&self) -> Vec<String> {
        match self {
            Program::Predict(p) => p.signature.inputs.iter().map(|f| f.name.clone()).collect(),
            Program::RetrieveThenAnswer(r) => {
                let mut v: Vec<String> = r
                    .answer
                    .signature
                    .inputs
                    .iter()
                    .map(|f| f.name.clone())
                    .filter(|n| n != "passages" && n != "passage_ids")
                    .collect();
                if !v.contains(&r.query_field) {
                    v.push(r.query_field.clone());
                }
                v
            }
            Program::BestOfN { inner, .. } => inner.input_names(),
            Program::Sequence { steps } => {
                let mut produced: Vec<String> = Vec::new();
                let mut needed: Vec<String> = Vec::new();
                for s in steps {
                    for n in s.input_names() {
                        if !produced.contains(&n) && !needed.contains(&n) {
                            needed.push(n);
                        }
                    }
                    produced
                        .extend(s.predictors().iter().flat_map(|p| p.signature.outputs.iter().map(|f| f.name.clone())));
                }
                needed
            }
        }
    }

    /// Every predictor, in program order.
    pub fn predictors(&self) -> Vec<&Predict> {
        match self {
            Program::Predict(p) => vec![p],
            Program::RetrieveThenAnswer(r) => vec![&r.answer],
            Program::BestOfN { inner, .. } => inner.predictors(),
            Program::Sequence { steps } => steps.iter().flat_map(Program::predictors).collect(),
        }
    }

    /// Every predictor, mutably (optimizers set demos and instructions).
    pub fn predictors_mut(&mut self) -> Vec<&mut Predict> {
        match self {
            Program::Predict(p) => vec![p],
            Program::RetrieveThenAnswer(r) => vec![&mut r.answer],
            Program::BestOfN { inner, .. } => inner.predictors_mut(),
            Program::Sequence { steps } => steps.iter_mut().flat_map(Program::predictors_mut).collect(),
        }
    }

    /// Checks every signature and sampling, and that predictor names are unique.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the predictor.
    pub fn validate(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for p in self.predictors() {
            p.signature.validate().map_err(|e| Error::invalid(format!("predictor {:?}: {e}", p.name)))?;
            p.sampling.validate().map_err(|e| Error::invalid(format!("predictor {:?}: {e}", p.name)))?;
            if !names.insert(p.name.as_str()) {
                return Err(Error::invalid(format!("predictor name {:?} is used twice", p.name)));
            }
        }
        Ok(())
    }
}
