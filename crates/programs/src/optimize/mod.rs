//! Optimizers ("compiling" a program against labelled data) and evaluation.
//!
//! - [`OptimizerSpec::LabeledFewShot`]: `k` labelled demos sampled into every predictor.
//! - [`OptimizerSpec::BootstrapFewShot`]: the program is its own teacher; runs on
//!   training items that the metric scores perfect become demos (per predictor), topped
//!   up with labelled ones; with several candidates, a random search over demo sets
//!   (shuffles and sizes) scored on the validation set, against the program as given.
//! - [`OptimizerSpec::KnnFewShot`]: demos picked per input at run time — the `k`
//!   training examples nearest to it by MiniLM embedding ([`KnnDemos`]).
//! - [`OptimizerSpec::Gepa`]: reflective prompt evolution over instructions, with a
//!   per-instance Pareto frontier ([`Frontier`]).
//! - [`evaluate`]: parallel scoring with a confidence interval.
//!
//! Every optimizer is deterministic under its seed (given a deterministic backend: the
//! local model at temperature 0, and `threads: 1` when a budget binds, since which
//! parallel call is refused first depends on timing), and honours the [`Budget`]: every
//! backend call — program runs and reflection alike — reserves its place in the call
//! budget before it is made, so the call budget is never exceeded; the token budget
//! refuses calls once reached (the last call may pass it: its size is not known before
//! it is made); the time budget cuts the call in flight. When a budget or the cancel flag
//! stops a compile, the best program scored so far is returned with `stopped_by` set.
//!
//! Validation data defaults to the training data when empty.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::module::{Env, Example, Program};

mod eval;
mod fewshot;
mod gepa;
pub mod knn;
mod meter;
mod metric;

pub use eval::{EvalReport, ItemError, MAX_THREADS, confidence_interval, evaluate};
pub use gepa::{Frontier, dominates};
pub use knn::KnnDemos;
pub use metric::{Feedback, Metric};

use eval::{ItemRun, run_items};
use meter::{Meter, Metered};

/// Which optimizer, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "optimizer", rename_all = "snake_case")]
pub enum OptimizerSpec {
    /// `k` labelled demos, sampled from the training data (seeded), in every predictor.
    LabeledFewShot {
        /// Demos per predictor.
        k: usize,
    },
    /// Demos bootstrapped from the program's own successful runs on training items,
    /// plus labelled ones; a random search over `candidates` demo sets.
    BootstrapFewShot {
        /// Most bootstrapped demos per predictor.
        max_bootstrapped: usize,
        /// Most labelled demos per predictor, after the bootstrapped ones.
        max_labeled: usize,
        /// Demo sets tried: 1 is plain BootstrapFewShot (training order, no search);
        /// more adds shuffled sets of random size, and the program as given competes.
        candidates: usize,
    },
    /// Demos picked per input: the `k` training examples nearest to it.
    KnnFewShot {
        /// Demos per input.
        k: usize,
    },
    /// GEPA: reflective evolution of the instructions.
    Gepa {
        /// Training items per reflection step.
        minibatch: usize,
        /// Also merge two frontier candidates that improved different predictors.
        merge: bool,
        /// Most candidates kept (the starting program included).
        max_candidates: usize,
    },
}

/// Limits of a compile. `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Backend calls (program runs, retries and reflection alike).
    pub calls: Option<u64>,
    /// Tokens (prompt and completion).
    pub tokens: Option<u64>,
    /// Wall time.
    pub seconds: Option<f64>,
}

/// Progress of a compile, sent after each step.
#[derive(Debug, Clone, Serialize)]
pub struct ProgressEvent {
    /// The optimizer's stage (`baseline`, `bootstrap`, `candidate`, `reflect`, `merge`, …).
    pub stage: String,
    /// Steps done.
    pub done: u64,
    /// Steps planned (an upper bound when a budget may stop earlier).
    pub total: u64,
    /// Best validation score so far.
    pub best_score: Option<f64>,
    /// Validation score of the candidate this step scored (`None` when it scored none):
    /// the points of a compile's score curve.
    pub score: Option<f64>,
    /// Backend calls so far.
    pub calls: u64,
    /// Tokens so far.
    pub tokens: u64,
}

/// What a compile produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompileReport {
    /// The optimized program (the best scored, or the input when nothing was scored).
    pub program: Program,
    /// Its validation score (`None` when the optimizer does not score, or was stopped
    /// before scoring anything).
    pub score: Option<f64>,
    /// Backend calls made.
    pub calls: u64,
    /// Tokens used.
    pub tokens: u64,
    /// Wall time.
    pub seconds: f64,
    /// What stopped the compile early: `calls`, `tokens`, `time` or `cancelled`.
    pub stopped_by: Option<String>,
}

/// Everything a compile needs.
pub struct CompileRequest<'a> {
    /// The optimizer.
    pub optimizer: &'a OptimizerSpec,
    /// The program to optimize.
    pub program: &'a Program,
    /// What the program runs against.
    pub env: &'a Env,
    /// GEPA's reflection model (defaults to `env`).
    pub reflection: Option<&'a Env>,
    /// Training data (demos, bootstrapping, minibatches).
    pub train: &'a [Example],
    /// Validation data (scoring candidates); the training data when empty.
    pub val: &'a [Example],
    /// The score to maximize.
    pub metric: &'a Metric,
    /// Limits.
    pub budget: &'a Budget,
    /// Seed of every random choice.
    pub seed: u64,
    /// Items run at once.
    pub threads: usize,
    /// Called after each step.
    pub progress: &'a (dyn Fn(ProgressEvent) + Send + Sync),
    /// Set to stop the compile (it returns the best program so far).
    pub cancel: &'a AtomicBool,
}

impl std::fmt::Debug for CompileRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileRequest")
            .field("optimizer", self.optimizer)
            .field("train", &self.train.len())
            .field("val", &self.val.len())
            .field("metric", self.metric)
            .field("budget", self.budget)
            .field("seed", &self.seed)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// Most training or validation examples of a compile.
pub const MAX_EXAMPLES: usize = 100_000;

/// What an optimizer returns.
pub(crate) struct Outcome {
    program: Program,
    score: Option<f64>,
}

/// What the optimizers share.
pub(crate) struct Ctx<'a> {
    program: &'a Program,
    env: Env,
    reflection: Env,
    train: &'a [Example],
    val: Vec<&'a Example>,
    metric: &'a Metric,
    meter: Arc<Meter>,
    seed: u64,
    threads: usize,
    progress: &'a (dyn Fn(ProgressEvent) + Send + Sync),
    cancel: &'a AtomicBool,
}

impl Ctx<'_> {
    fn emit(&self, stage: &str, done: usize, total: usize, best_score: Option<f64>) {
        self.emit_scored(stage, done, total, best_score, None);
    }

    /// [`Ctx::emit`] for a step that scored a candidate on the validation set.
    fn emit_scored(&self, stage: &str, done: usize, total: usize, best_score: Option<f64>, score: Option<f64>) {
        (self.progress)(ProgressEvent {
            stage: stage.to_owned(),
            done: done as u64,
            total: total as u64,
            best_score,
            score,
            calls: self.meter.calls(),
            tokens: self.meter.tokens(),
        });
    }

    /// Whether a stop (budget, cancel) has been reached.
    fn stopped(&self) -> bool {
        if self.cancel.load(Ordering::SeqCst) {
            self.meter.cancel();
        }
        self.meter.check().is_err()
    }

    /// Runs a program on items in the compile's environment.
    async fn run(&self, program: &Program, items: &[&Example]) -> Result<Vec<ItemRun>> {
        self.run_in(&self.env, program, items).await
    }

    async fn run_in(&self, env: &Env, program: &Program, items: &[&Example]) -> Result<Vec<ItemRun>> {
        if self.stopped() {
            self.meter.check()?;
        }
        run_items(program, env, items, self.metric, self.threads, &self.meter).await
    }

    /// Scores per validation item.
    async fn val_scores(&self, env: &Env, program: &Program) -> Result<Vec<f64>> {
        Ok(self.run_in(env, program, &self.val).await?.iter().map(|r| r.feedback.score).collect())
    }
}

/// The mean of scores (0 for none).
pub(crate) fn mean(s: &[f64]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let n = s.len() as f64;
    s.iter().sum::<f64>() / n
}

/// Whether an error is a stop of the compile (budget or cancel) rather than a failure.
pub(crate) fn is_stop(e: &Error) -> bool {
    matches!(e, Error::Budget(_) | Error::Cancelled)
}

/// Optimizes a program.
///
/// # Errors
/// [`Error::Invalid`] for an invalid program or setting, no training data, or data
/// without the metric's gold field; [`Error::Retrieve`] when KnnFewShot cannot embed.
/// Budget and cancel stops are not errors: the report says `stopped_by`.
pub async fn compile(req: CompileRequest<'_>) -> Result<CompileReport> {
    req.program.validate()?;
    if req.train.is_empty() || req.train.len() > MAX_EXAMPLES || req.val.len() > MAX_EXAMPLES {
        return Err(Error::invalid(format!(
            "compile: 1 to {MAX_EXAMPLES} training examples and at most {MAX_EXAMPLES} validation examples"
        )));
    }
    req.metric.check("train", req.train)?;
    req.metric.check("val", req.val)?;
    match *req.optimizer {
        OptimizerSpec::LabeledFewShot { k } | OptimizerSpec::KnnFewShot { k } if k > knn::MAX_K => {
            return Err(Error::invalid(format!("compile: k is at most {}, not {k}", knn::MAX_K)));
        }
        OptimizerSpec::KnnFewShot { k: 0 } => return Err(Error::invalid("compile: knn: k is at least 1")),
        OptimizerSpec::BootstrapFewShot { max_bootstrapped, max_labeled, candidates }
            if max_bootstrapped > knn::MAX_K || max_labeled > knn::MAX_K || candidates > 1000 =>
        {
            return Err(Error::invalid(format!(
                "compile: bootstrap: at most {} demos of each kind and 1000 candidates",
                knn::MAX_K
            )));
        }
        OptimizerSpec::Gepa { minibatch, max_candidates, .. }
            if minibatch == 0 || minibatch > 1000 || max_candidates > 1000 =>
        {
            return Err(Error::invalid("compile: gepa: minibatch is 1 to 1000, max_candidates at most 1000"));
        }
        _ => {}
    }
    let meter = Arc::new(Meter::new(req.budget)?);
    let mut env = req.env.clone();
    env.lm = Metered::wrap(req.env.lm.clone(), meter.clone());
    let mut reflection = req.reflection.unwrap_or(req.env).clone();
    reflection.lm = Metered::wrap(reflection.lm.clone(), meter.clone());
    let val: Vec<&Example> = if req.val.is_empty() { req.train.iter().collect() } else { req.val.iter().collect() };
    let ctx = Ctx {
        program: req.program,
        env,
        reflection,
        train: req.train,
        val,
        metric: req.metric,
        meter: meter.clone(),
        seed: req.seed,
        threads: req.threads.clamp(1, MAX_THREADS),
        progress: req.progress,
        cancel: req.cancel,
    };
    let work = async {
        match *req.optimizer {
            OptimizerSpec::LabeledFewShot { k } => fewshot::labeled(&ctx, k),
            OptimizerSpec::BootstrapFewShot { max_bootstrapped, max_labeled, candidates } => {
                fewshot::bootstrap(&ctx, max_bootstrapped, max_labeled, candidates).await
            }
            OptimizerSpec::KnnFewShot { k } => fewshot::knn(&ctx, k).await,
            OptimizerSpec::Gepa { minibatch, merge, max_candidates } => {
                gepa::run(&ctx, minibatch, merge, max_candidates).await
            }
        }
    };
    // The cancel flag is the caller's; calls in flight see it through the meter.
    let watch = async {
        while !req.cancel.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        meter.cancel();
        futures::future::pending::<()>().await;
    };
    let out = {
        futures::pin_mut!(work);
        futures::pin_mut!(watch);
        match futures::future::select(work, watch).await {
            futures::future::Either::Left((out, _)) => out?,
            futures::future::Either::Right(((), _)) => return Err(Error::invalid("unreachable: the watcher ended")),
        }
    };
    Ok(CompileReport {
        program: out.program,
        score: out.score,
        calls: meter.calls(),
        tokens: meter.tokens(),
        seconds: meter.seconds(),
        stopped_by: meter.stopped_by(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_serialize_tagged() {
        let s = OptimizerSpec::Gepa { minibatch: 3, merge: true, max_candidates: 8 };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"optimizer":"gepa","minibatch":3,"merge":true,"max_candidates":8}"#);
        assert_eq!(serde_json::from_str::<OptimizerSpec>(&j).unwrap(), s);
        let m: Metric = serde_json::from_str(r#"{"metric":"exact_match","field":"label"}"#).unwrap();
        assert_eq!(m, Metric::ExactMatch { field: "label".into() });
    }

    #[test]
    fn compile_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let env = Env::new(never());
        let program = Program::Sequence { steps: Vec::new() };
        let cancel = AtomicBool::new(false);
        let (spec, metric, budget) =
            (OptimizerSpec::LabeledFewShot { k: 1 }, Metric::ExactMatch { field: "a".into() }, Budget::default());
        let f = compile(CompileRequest {
            optimizer: &spec,
            program: &program,
            env: &env,
            reflection: None,
            train: &[],
            val: &[],
            metric: &metric,
            budget: &budget,
            seed: 0,
            threads: 1,
            progress: &|_| {},
            cancel: &cancel,
        });
        assert_send(&f);
    }

    fn never() -> crate::lm::DynBackend {
        struct Never;
        impl crate::lm::Backend for Never {
            fn name(&self) -> &str {
                "never"
            }
            fn complete<'a>(
                &'a self,
                _: &'a crate::lm::Request,
                _: Option<crate::lm::TokenSink>,
            ) -> futures::future::BoxFuture<'a, Result<crate::lm::Response>> {
                Box::pin(async { Err(Error::invalid("never")) })
            }
        }
        Arc::new(Never)
    }
}
