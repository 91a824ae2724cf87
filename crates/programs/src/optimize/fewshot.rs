//! LabeledFewShot, BootstrapFewShot (with random search) and KnnFewShot.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::knn::KnnDemos;
use super::{Ctx, Outcome, is_stop, mean};
use crate::error::{Error, Result};
use crate::module::{Example, Predict, Prediction, Program, REASONING};
use crate::signature::Values;

/// Scores at or above this make a bootstrapped demo.
const SUCCESS: f64 = 1.0 - 1e-9;

/// The part of an example a predictor can show as a demo: every input and output of its
/// signature (and the reasoning, for ChainOfThought, when the example has one).
pub(crate) fn demo_for(p: &Predict, e: &Example) -> Option<Example> {
    let mut inputs = Values::new();
    for f in &p.signature.inputs {
        inputs.insert(f.name.clone(), e.inputs.get(&f.name)?.clone());
    }
    let mut outputs = Values::new();
    if p.reasoning
        && let Some(r) = e.outputs.get(REASONING)
    {
        outputs.insert(REASONING.into(), r.clone());
    }
    for f in &p.signature.outputs {
        outputs.insert(f.name.clone(), e.outputs.get(&f.name)?.clone());
    }
    Some(Example { inputs, outputs })
}

/// LabeledFewShot: `k` demos sampled (seeded, without replacement) from the training
/// examples that fit each predictor. No calls.
pub(crate) fn labeled(ctx: &Ctx<'_>, k: usize) -> Result<Outcome> {
    let mut rng = StdRng::seed_from_u64(ctx.seed);
    let mut program = ctx.program.clone();
    for p in program.predictors_mut() {
        let fitting: Vec<Example> = ctx.train.iter().filter_map(|e| demo_for(p, e)).collect();
        let picked = rand::seq::index::sample(&mut rng, fitting.len(), k.min(fitting.len()));
        p.demos = picked.into_iter().filter_map(|i| fitting.get(i).cloned()).collect();
    }
    ctx.emit("labeled", 1, 1, None);
    Ok(Outcome { program, score: None })
}

/// The demo a successful run gives a predictor: its first step's inputs and outputs.
fn traced_demo(pred: &Prediction, name: &str) -> Option<Example> {
    let step = pred.trace.iter().find(|s| s.predictor == name)?;
    Some(Example { inputs: step.inputs.clone(), outputs: step.outputs.clone() })
}

/// BootstrapFewShot with random search.
///
/// Candidate 0 walks the training data in order; candidates 1.. walk a seeded shuffle
/// and take a random number (1..=max) of bootstrapped demos. Each walks until it has its
/// bootstrapped demos: the program (its own teacher) runs on the item, and a run the
/// metric scores 1 gives every predictor the inputs and outputs of its step. The teacher
/// runs once per item, shared by all candidates. Labelled demos (up to `max_labeled`)
/// follow, from the items of the walk not used for bootstrapping. With `candidates` of 2
/// or more, the program as given is scored first and every candidate must beat it.
pub(crate) async fn bootstrap(
    ctx: &Ctx<'_>,
    max_boot: usize,
    max_labeled: usize,
    candidates: usize,
) -> Result<Outcome> {
    let candidates = candidates.max(1);
    let search = candidates > 1;
    let total = candidates + usize::from(search);
    let mut done = 0;
    let mut best: Option<(Program, f64)> = None;
    let mut tried: Vec<Program> = Vec::new();
    if search {
        match ctx.val_scores(&ctx.env, ctx.program).await {
            Ok(s) => best = Some((ctx.program.clone(), mean(&s))),
            Err(e) if is_stop(&e) => return Ok(Outcome { program: ctx.program.clone(), score: None }),
            Err(e) => return Err(e),
        }
        tried.push(ctx.program.clone());
        done += 1;
        let b = best.as_ref().map(|b| b.1);
        ctx.emit_scored("baseline", done, total, b, b);
    }
    let names: Vec<String> = ctx.program.predictors().iter().map(|p| p.name.clone()).collect();
    // Per training item: not run yet, or the successful run (None when it failed).
    let mut teacher: Vec<Option<Option<Prediction>>> = vec![None; ctx.train.len()];
    let mut rng = StdRng::seed_from_u64(ctx.seed);
    for c in 0..candidates {
        let mut order: Vec<usize> = (0..ctx.train.len()).collect();
        let mut n_boot = max_boot;
        if c > 0 {
            order.shuffle(&mut rng);
            if max_boot > 0 {
                n_boot = rng.random_range(1..=max_boot);
            }
        }
        let mut boots: Vec<usize> = Vec::new();
        let mut pos = 0;
        let mut stopped = false;
        while boots.len() < n_boot && pos < order.len() {
            let i = order[pos];
            if teacher[i].is_none() {
                // Run this item and the next few not yet run, `threads` at once.
                let batch: Vec<usize> =
                    order[pos..].iter().copied().filter(|&j| teacher[j].is_none()).take(ctx.threads).collect();
                let items: Vec<&Example> = batch.iter().map(|&j| &ctx.train[j]).collect();
                match ctx.run(ctx.program, &items).await {
                    Ok(runs) => {
                        for (j, r) in batch.into_iter().zip(runs) {
                            teacher[j] = Some(if r.feedback.score >= SUCCESS { r.pred } else { None });
                        }
                    }
                    Err(e) if is_stop(&e) => {
                        stopped = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
                ctx.emit("bootstrap", done, total, best.as_ref().map(|b| b.1));
            }
            if matches!(teacher[i], Some(Some(_))) {
                boots.push(i);
            }
            pos += 1;
        }
        if stopped {
            break;
        }
        let mut candidate = ctx.program.clone();
        for (p, name) in candidate.predictors_mut().into_iter().zip(&names) {
            let mut demos: Vec<Example> = boots
                .iter()
                .filter_map(|&i| teacher[i].as_ref().and_then(Option::as_ref).and_then(|pred| traced_demo(pred, name)))
                .collect();
            demos.extend(
                order
                    .iter()
                    .filter(|&&i| !boots.contains(&i))
                    .filter_map(|&i| demo_for(p, &ctx.train[i]))
                    .take(max_labeled),
            );
            p.demos = demos;
        }
        done += 1;
        if tried.contains(&candidate) {
            ctx.emit("candidate", done, total, best.as_ref().map(|b| b.1));
            continue;
        }
        let score = match ctx.val_scores(&ctx.env, &candidate).await {
            Ok(s) => mean(&s),
            Err(e) if is_stop(&e) => {
                if best.is_none() {
                    // Plain BootstrapFewShot: the demos are the result even unscored.
                    return Ok(Outcome { program: candidate, score: None });
                }
                break;
            }
            Err(e) => return Err(e),
        };
        if best.as_ref().is_none_or(|b| score > b.1) {
            best = Some((candidate.clone(), score));
        }
        tried.push(candidate);
        ctx.emit_scored("candidate", done, total, best.as_ref().map(|b| b.1), Some(score));
    }
    Ok(match best {
        Some((program, score)) => Outcome { program, score: Some(score) },
        None => Outcome { program: ctx.program.clone(), score: None },
    })
}

/// KnnFewShot: every predictor that training examples fit gets the pool of those
/// examples, `k` picked per input at run time; the compiled program is scored on the
/// validation set (with the embedder the run used: `Env::embedder`, else MiniLM from
/// the models directory).
pub(crate) async fn knn(ctx: &Ctx<'_>, k: usize) -> Result<Outcome> {
    let embedder = match &ctx.env.embedder {
        Some(e) => e.clone(),
        None => {
            let dir = kernelize_embed::Embedder::default_model_dir();
            let e = tokio::task::spawn_blocking(move || kernelize_embed::Embedder::load(&dir))
                .await
                .map_err(|e| Error::Retrieve(format!("knn: loading the embedder: {e}")))?
                .map_err(|e| Error::Retrieve(format!("knn: loading the embedder: {e}")))?;
            Arc::new(e)
        }
    };
    let mut program = ctx.program.clone();
    let mut any = false;
    for p in program.predictors_mut() {
        let pool: Vec<Example> = ctx.train.iter().filter_map(|e| demo_for(p, e)).collect();
        if pool.is_empty() {
            continue;
        }
        let fields: Vec<String> = p.signature.inputs.iter().map(|f| f.name.clone()).collect();
        let knn = KnnDemos::new(pool, k, fields)?;
        knn.warm(&embedder).await?;
        p.knn = Some(knn);
        any = true;
    }
    if !any {
        return Err(Error::invalid("knn: no training example has every input and output of any predictor"));
    }
    ctx.emit("index", 1, 2, None);
    let env = ctx.env.clone().with_embedder(embedder);
    let score = match ctx.val_scores(&env, &program).await {
        Ok(s) => Some(mean(&s)),
        Err(e) if is_stop(&e) => None,
        Err(e) => return Err(e),
    };
    ctx.emit_scored("evaluate", 2, 2, score, score);
    Ok(Outcome { program, score })
}
