//! `kernelize program compile` and `eval`: the optimizers and the evaluator of
//! `kernelize_programs::optimize`, offline.

use crate::program::{CompileArgs, EvalArgs, backend, json_arg, load_examples, load_program};
use anyhow::{Context, Result};
use kernelize_kernel::SigningKey;
use kernelize_programs::module::Env;
use kernelize_programs::optimize::{
    Budget, CompileRequest, Metric, OptimizerSpec, ProgressEvent, compile as run_compile, evaluate,
};
use kernelize_programs::saved::{SavedProgram, dataset_hash};
use serde_json::json;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

fn typed<T: serde::de::DeserializeOwned>(what: &str, arg: &str) -> Result<T> {
    let v = json_arg(what, arg)?;
    serde_json::from_value(v).with_context(|| format!("{what}: {arg}"))
}

/// `program compile`: optimizes on the training examples, scores on the validation
/// ones (an optimizer that does not score, like `labeled_few_shot`, is followed by an
/// evaluation), writes the compiled program as a saved program (signed with `--sign`);
/// progress on stderr, the report on stdout.
pub fn compile(rt: &tokio::runtime::Runtime, a: &CompileArgs) -> Result<ExitCode> {
    let program = load_program(&a.program)?;
    let train = load_examples(&a.train)?;
    let val = load_examples(&a.val)?;
    let optimizer: OptimizerSpec = typed("--optimizer", &a.optimizer)?;
    let metric: Metric = typed("--metric", &a.metric)?;
    let budget: Budget = match &a.budget {
        Some(b) => typed("--budget", b)?,
        None => Budget::default(),
    };
    let env = Env::new(backend(&a.backend)?);
    let cancel = AtomicBool::new(false);
    let progress = |e: ProgressEvent| {
        let best = e.best_score.map_or_else(|| "-".to_owned(), |s| format!("{s:.3}"));
        eprintln!("{:>10} {:>4}/{:<4} best {best} calls {} tokens {}", e.stage, e.done, e.total, e.calls, e.tokens);
    };
    let report = rt.block_on(run_compile(CompileRequest {
        optimizer: &optimizer,
        program: &program,
        env: &env,
        reflection: None,
        train: &train,
        val: &val,
        metric: &metric,
        budget: &budget,
        seed: a.seed,
        threads: 1,
        progress: &progress,
        cancel: &cancel,
    }))?;
    let (mut calls, mut tokens, mut seconds) = (report.calls, report.tokens, report.seconds);
    let score = match report.score {
        Some(s) => Some(s),
        // Stopped before scoring: no score rather than more calls past the budget.
        None if report.stopped_by.is_some() => None,
        None => {
            let r = rt.block_on(evaluate(&report.program, &env, &val, &metric, 1)).context("scoring on --val")?;
            eprintln!("{:>10} score {:.3} over {} examples, {} calls", "evaluate", r.score, r.n, r.calls);
            (calls, tokens, seconds) = (calls + r.calls, tokens + r.tokens, seconds + r.seconds);
            Some(r.score)
        }
    };
    let mut saved = SavedProgram::new(report.program);
    saved.optimizer = Some(optimizer);
    saved.metric = Some(metric);
    if let Some(s) = score {
        saved.scores.insert("val".into(), s);
    }
    saved.seed = a.seed;
    saved.dataset_hash = Some(dataset_hash(&train));
    saved.created_by = concat!("kernelize ", env!("CARGO_PKG_VERSION"), " program compile").to_owned();
    if let Some(key) = &a.sign {
        saved.sign(&SigningKey::load(key)?);
    }
    saved.save(&a.out)?;
    let out = json!({
        "out": a.out,
        "score": score,
        "calls": calls,
        "tokens": tokens,
        "seconds": seconds,
        "stopped_by": report.stopped_by,
        "signed_by": saved.signature.as_ref().map(|s| s.key_id.clone()),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// `program eval`: the metric's mean over the examples with its 95% interval.
pub fn eval(rt: &tokio::runtime::Runtime, a: &EvalArgs) -> Result<ExitCode> {
    let program = load_program(&a.program)?;
    let data = load_examples(&a.data)?;
    let metric: Metric = typed("--metric", &a.metric)?;
    let env = Env::new(backend(&a.backend)?);
    let r = rt.block_on(evaluate(&program, &env, &data, &metric, 1))?;
    eprintln!(
        "score {:.3} (95% CI {:.3}–{:.3}) over {} examples, {} failed; {} calls, {} tokens, {:.1} s",
        r.score, r.ci95.0, r.ci95.1, r.n, r.errors, r.calls, r.tokens, r.seconds
    );
    let out = json!({
        "score": r.score, "ci95": [r.ci95.0, r.ci95.1], "n": r.n, "errors": r.errors,
        "calls": r.calls, "tokens": r.tokens, "seconds": r.seconds, "failures": r.failures,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}
