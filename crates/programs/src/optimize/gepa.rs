//! GEPA: reflective prompt evolution (Agrawal et al., 2025), over the instructions of a
//! program's predictors.
//!
//! The pool starts with the program as given, scored on every validation instance. Each
//! step samples a parent from the Pareto [`Frontier`] (weighted by the instances it
//! wins), picks one of its predictors (round robin), runs the parent on a training
//! minibatch and asks the reflection model for a better instruction from the current one
//! and each item's inputs, outputs and the metric's textual feedback. The child (the
//! parent with that instruction) runs on the same minibatch; only when it does better
//! there is it scored on the whole validation set and added to the pool. With `merge`,
//! a step after each accepted child tries to combine two frontier candidates that evolved
//! different predictors from a common ancestor (each predictor's instruction from the
//! side that changed it), kept when it does at least as well as both on a validation
//! subsample. The result is the candidate with the best validation average.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::eval::ItemRun;
use super::{Ctx, Outcome, is_stop, mean};
use crate::error::{Error, Result};
use crate::lm::Sampling;
use crate::module::{Example, Predict, Program, render_inputs, render_outputs};
use crate::retrieve::truncate;
use crate::signature::{FieldType, Signature, Values};

/// Whether `a` Pareto-dominates `b`: at least as good on every instance, better on one.
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x >= y) && a.iter().zip(b).any(|(x, y)| x > y)
}

/// The per-instance Pareto frontier of a pool of candidates: for each validation instance
/// the best score seen and the candidates that reach it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frontier {
    best: Vec<f64>,
    winners: Vec<BTreeSet<usize>>,
    scores: Vec<Vec<f64>>,
}

impl Frontier {
    /// An empty pool over `instances` validation instances.
    pub fn new(instances: usize) -> Frontier {
        Frontier {
            best: vec![f64::NEG_INFINITY; instances],
            winners: vec![BTreeSet::new(); instances],
            scores: Vec::new(),
        }
    }

    /// Adds a candidate with its score on each instance (NaN counts 0); its number.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the scores are not one per instance.
    pub fn add(&mut self, scores: Vec<f64>) -> Result<usize> {
        if scores.len() != self.best.len() {
            return Err(Error::invalid(format!("frontier: {} scores for {} instances", scores.len(), self.best.len())));
        }
        let scores: Vec<f64> = scores.into_iter().map(|s| if s.is_nan() { 0.0 } else { s }).collect();
        let c = self.scores.len();
        for (i, &s) in scores.iter().enumerate() {
            if s > self.best[i] {
                self.best[i] = s;
                self.winners[i].clear();
                self.winners[i].insert(c);
            } else if s == self.best[i] {
                self.winners[i].insert(c);
            }
        }
        self.scores.push(scores);
        Ok(c)
    }

    /// Candidates.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// True before the first candidate.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// A candidate's scores.
    pub fn scores(&self, c: usize) -> &[f64] {
        self.scores.get(c).map_or(&[], Vec::as_slice)
    }

    /// The best score on each instance.
    pub fn best(&self) -> &[f64] {
        &self.best
    }

    /// The candidates reaching the best score on an instance.
    pub fn winners(&self, instance: usize) -> Option<&BTreeSet<usize>> {
        self.winners.get(instance)
    }

    /// Instances on which a candidate reaches the best score.
    pub fn wins(&self, c: usize) -> usize {
        self.winners.iter().filter(|w| w.contains(&c)).count()
    }

    /// The frontier: candidates best on at least one instance that no other candidate
    /// dominates, in pool order.
    pub fn members(&self) -> Vec<usize> {
        let winners: BTreeSet<usize> = self.winners.iter().flatten().copied().collect();
        // A candidate dominating a winner wins the same instances: comparing winners suffices.
        winners
            .iter()
            .copied()
            .filter(|&c| !winners.iter().any(|&d| d != c && dominates(&self.scores[d], &self.scores[c])))
            .collect()
    }

    /// A frontier member, drawn with probability proportional to the instances it wins.
    pub fn sample(&self, rng: &mut impl Rng) -> Option<usize> {
        let members = self.members();
        let weights: Vec<usize> = members.iter().map(|&c| self.wins(c)).collect();
        let total: usize = weights.iter().sum();
        if total == 0 {
            return members.first().copied();
        }
        let mut r = rng.random_range(0..total);
        for (c, w) in members.iter().zip(weights) {
            if r < w {
                return Some(*c);
            }
            r -= w;
        }
        members.last().copied()
    }

    /// A candidate's mean score.
    pub fn average(&self, c: usize) -> f64 {
        mean(self.scores(c))
    }

    /// The candidate with the best mean score (the earliest among equals).
    pub fn best_candidate(&self) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for c in 0..self.len() {
            let a = self.average(c);
            if best.is_none_or(|b| a > b.1) {
                best = Some((c, a));
            }
        }
        best.map(|b| b.0)
    }
}

/// Scores at or above this are perfect (a minibatch of them teaches nothing).
const PERFECT: f64 = 1.0 - 1e-9;
/// Longest inputs, outputs or feedback of one item shown to the reflection model, bytes.
const MAX_PART: usize = 1500;

/// The reflection predictor: `current_instruction, examples_with_feedback -> new_instruction`.
pub(crate) fn reflector() -> Result<Predict> {
    let sig = Signature::builder(
        "I gave an assistant the instruction below for a task. You see examples of the task's \
         inputs, the assistant's outputs, and feedback on each output. Work out what the task \
         is, what its inputs look like, which mistakes the feedback points at, and any facts or \
         rules it reveals that the assistant could not know. Then write a new instruction for \
         the assistant: complete and self-contained, keeping what worked, fixing what failed, \
         and stating those facts and rules explicitly.",
    )
    .input("current_instruction", FieldType::String, "the instruction the assistant was given")
    .input("examples_with_feedback", FieldType::String, "inputs, the assistant's outputs, and feedback on each")
    .output("new_instruction", FieldType::String, "the improved instruction")
    .build()?;
    let mut p = Predict::new("gepa_reflect", sig);
    p.sampling = Sampling { max_tokens: 512, ..Sampling::default() };
    Ok(p)
}

/// The minibatch as the reflection model reads it: each item's inputs and outputs at the
/// predictor, and the metric's feedback.
pub(crate) fn reflective_text(p: &Predict, items: &[&Example], runs: &[ItemRun]) -> String {
    let sig = p.effective_signature();
    let mut out = String::new();
    for (n, (e, r)) in items.iter().zip(runs).enumerate() {
        let step = r.pred.as_ref().and_then(|pr| pr.trace.iter().find(|s| s.predictor == p.name));
        let inputs = match step {
            Some(s) => render_inputs(&sig, &s.inputs),
            None => render_inputs(&sig, &e.inputs),
        };
        let outputs = match (step, &r.error) {
            (Some(s), _) => render_outputs(&sig, &s.outputs),
            (None, Some(err)) => format!("(no answer: {err})"),
            (None, None) => "(this step did not run)".to_owned(),
        };
        out.push_str(&format!(
            "# Example {}\n## Inputs\n{}\n## Outputs\n{}\n## Feedback\n{}\n\n",
            n + 1,
            truncate(inputs, MAX_PART),
            truncate(outputs, MAX_PART),
            truncate(r.feedback.text.clone(), MAX_PART)
        ));
    }
    out.trim_end().to_owned()
}

fn instructions(p: &Program) -> Vec<String> {
    p.predictors().iter().map(|p| p.signature.instruction.clone()).collect()
}

struct Candidate {
    program: Program,
    parents: Vec<usize>,
    /// The next predictor to reflect on (round robin).
    next: usize,
}

fn ancestors(pool: &[Candidate], c: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut stack = pool[c].parents.clone();
    while let Some(x) = stack.pop() {
        if seen.insert(x) {
            stack.extend(pool[x].parents.iter().copied());
        }
    }
    seen
}

/// A merge of two frontier members: (a, b, the child).
fn merge_plan(
    pool: &[Candidate],
    frontier: &Frontier,
    tried: &BTreeSet<(usize, usize)>,
    rng: &mut StdRng,
) -> Option<(usize, usize, Program)> {
    let members = frontier.members();
    let mut plans = Vec::new();
    for (x, &a) in members.iter().enumerate() {
        for &b in &members[x + 1..] {
            if tried.contains(&(a, b)) {
                continue;
            }
            let (anc_a, anc_b) = (ancestors(pool, a), ancestors(pool, b));
            if anc_a.contains(&b) || anc_b.contains(&a) {
                continue;
            }
            let Some(&common) = anc_a.intersection(&anc_b).last() else { continue };
            let (ia, ib, ic) =
                (instructions(&pool[a].program), instructions(&pool[b].program), instructions(&pool[common].program));
            let a_better = frontier.average(a) >= frontier.average(b);
            let mut child = pool[a].program.clone();
            let (mut from_a, mut from_b) = (false, false);
            for (k, p) in child.predictors_mut().into_iter().enumerate() {
                let pick_b = if ia[k] == ic[k] {
                    true
                } else if ib[k] == ic[k] {
                    false
                } else {
                    !a_better
                };
                if ia[k] != ib[k] {
                    if pick_b {
                        from_b = true;
                    } else {
                        from_a = true;
                    }
                }
                p.signature.instruction = if pick_b { ib[k].clone() } else { ia[k].clone() };
            }
            if from_a && from_b && !pool.iter().any(|c| c.program == child) {
                plans.push((a, b, child));
            }
        }
    }
    if plans.is_empty() {
        return None;
    }
    let i = rng.random_range(0..plans.len());
    Some(plans.swap_remove(i))
}

/// Asks the reflection model for a new instruction.
async fn reflect(ctx: &Ctx<'_>, current: &str, examples: String) -> Result<String> {
    let r = reflector()?;
    let mut inputs = Values::new();
    inputs.insert("current_instruction".into(), Value::from(current));
    inputs.insert("examples_with_feedback".into(), Value::from(examples));
    let pred = r.forward(&ctx.reflection, &inputs).await?;
    Ok(pred.outputs.get("new_instruction").and_then(Value::as_str).unwrap_or_default().trim().to_owned())
}

/// Runs GEPA.
pub(crate) async fn run(ctx: &Ctx<'_>, minibatch: usize, merge: bool, max_candidates: usize) -> Result<Outcome> {
    let max_candidates = max_candidates.max(1);
    let mut rng = StdRng::seed_from_u64(ctx.seed);
    let seed_scores = match ctx.val_scores(&ctx.env, ctx.program).await {
        Ok(s) => s,
        Err(e) if is_stop(&e) => return Ok(Outcome { program: ctx.program.clone(), score: None }),
        Err(e) => return Err(e),
    };
    let mut frontier = Frontier::new(ctx.val.len());
    frontier.add(seed_scores)?;
    let mut pool = vec![Candidate { program: ctx.program.clone(), parents: Vec::new(), next: 0 }];
    let best_avg = |f: &Frontier| f.best_candidate().map(|c| f.average(c));
    ctx.emit_scored("baseline", 1, max_candidates, best_avg(&frontier), best_avg(&frontier));
    let n_pred = ctx.program.predictors().len();
    let mut epoch: Vec<usize> = Vec::new();
    let mut epoch_pos = 0;
    let mut merge_due = false;
    let mut tried_merges = BTreeSet::new();
    let max_steps = 8 * max_candidates + 8;
    let mut step = 0;
    while n_pred > 0 && pool.len() < max_candidates && step < max_steps && !ctx.stopped() {
        step += 1;
        if merge && merge_due {
            merge_due = false;
            if let Some((a, b, child)) = merge_plan(&pool, &frontier, &tried_merges, &mut rng) {
                tried_merges.insert((a, b));
                let n = ctx.val.len();
                let mut sub: Vec<usize> = rand::seq::index::sample(&mut rng, n, minibatch.min(n)).into_vec();
                sub.sort_unstable();
                let items: Vec<&Example> = sub.iter().map(|&i| ctx.val[i]).collect();
                let runs = match ctx.run(&child, &items).await {
                    Ok(r) => r,
                    Err(e) if is_stop(&e) => break,
                    Err(e) => return Err(e),
                };
                let child_sum: f64 = runs.iter().map(|r| r.feedback.score).sum();
                let parent_sum = |c: usize| sub.iter().map(|&i| frontier.scores(c)[i]).sum::<f64>();
                let accepted = child_sum >= parent_sum(a).max(parent_sum(b));
                if accepted {
                    let rest: Vec<usize> = (0..n).filter(|i| !sub.contains(i)).collect();
                    let rest_items: Vec<&Example> = rest.iter().map(|&i| ctx.val[i]).collect();
                    let rest_runs = match ctx.run(&child, &rest_items).await {
                        Ok(r) => r,
                        Err(e) if is_stop(&e) => break,
                        Err(e) => return Err(e),
                    };
                    let mut scores = vec![0.0; n];
                    for (&i, r) in sub.iter().zip(&runs).chain(rest.iter().zip(&rest_runs)) {
                        scores[i] = r.feedback.score;
                    }
                    frontier.add(scores)?;
                    pool.push(Candidate { program: child, parents: vec![a, b], next: 0 });
                }
                let scored = accepted.then(|| frontier.average(pool.len() - 1));
                ctx.emit_scored("merge", pool.len(), max_candidates, best_avg(&frontier), scored);
                continue;
            }
        }
        let Some(parent) = frontier.sample(&mut rng) else { break };
        let pi = pool[parent].next % n_pred;
        pool[parent].next += 1;
        // Minibatches walk seeded shuffles of the training data, epoch after epoch.
        let mut batch = Vec::with_capacity(minibatch);
        while batch.len() < minibatch.min(ctx.train.len()) {
            if epoch_pos >= epoch.len() {
                epoch = (0..ctx.train.len()).collect();
                epoch.shuffle(&mut rng);
                epoch_pos = 0;
            }
            if !batch.contains(&epoch[epoch_pos]) {
                batch.push(epoch[epoch_pos]);
            }
            epoch_pos += 1;
        }
        let items: Vec<&Example> = batch.iter().map(|&i| &ctx.train[i]).collect();
        let parent_runs = match ctx.run(&pool[parent].program, &items).await {
            Ok(r) => r,
            Err(e) if is_stop(&e) => break,
            Err(e) => return Err(e),
        };
        if parent_runs.iter().all(|r| r.feedback.score >= PERFECT) {
            ctx.emit("skip", pool.len(), max_candidates, best_avg(&frontier));
            continue;
        }
        let parent_sum: f64 = parent_runs.iter().map(|r| r.feedback.score).sum();
        let (current, text) = {
            let preds = pool[parent].program.predictors();
            let p = preds[pi];
            (p.signature.instruction.clone(), reflective_text(p, &items, &parent_runs))
        };
        let new = match reflect(ctx, &current, text).await {
            Ok(s) => s,
            Err(e) if is_stop(&e) => break,
            Err(e) => {
                tracing::debug!("gepa: reflection failed: {e}");
                ctx.emit("reflect", pool.len(), max_candidates, best_avg(&frontier));
                continue;
            }
        };
        if new.is_empty() || new == current {
            ctx.emit("reflect", pool.len(), max_candidates, best_avg(&frontier));
            continue;
        }
        let mut child = pool[parent].program.clone();
        if let Some(p) = child.predictors_mut().into_iter().nth(pi) {
            p.signature.instruction = new;
        }
        if pool.iter().any(|c| c.program == child) {
            continue;
        }
        let child_runs = match ctx.run(&child, &items).await {
            Ok(r) => r,
            Err(e) if is_stop(&e) => break,
            Err(e) => return Err(e),
        };
        let child_sum: f64 = child_runs.iter().map(|r| r.feedback.score).sum();
        if child_sum <= parent_sum {
            ctx.emit("reflect", pool.len(), max_candidates, best_avg(&frontier));
            continue;
        }
        let scores = match ctx.val_scores(&ctx.env, &child).await {
            Ok(s) => s,
            Err(e) if is_stop(&e) => break,
            Err(e) => return Err(e),
        };
        frontier.add(scores)?;
        let next = pool[parent].next;
        pool.push(Candidate { program: child, parents: vec![parent], next });
        merge_due = true;
        let scored = Some(frontier.average(pool.len() - 1));
        ctx.emit_scored("accept", pool.len(), max_candidates, best_avg(&frontier), scored);
    }
    let best = frontier.best_candidate().unwrap_or(0);
    let program = pool.get(best).map_or_else(|| ctx.program.clone(), |c| c.program.clone());
    Ok(Outcome { program, score: Some(frontier.average(best)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The frontier by definition: best somewhere, dominated by no one.
    fn brute_force(m: &[Vec<f64>]) -> Vec<usize> {
        let n = m.first().map_or(0, Vec::len);
        (0..m.len())
            .filter(|&c| {
                let best_somewhere = (0..n).any(|i| m.iter().all(|d| d[i] <= m[c][i]));
                let dominated = (0..m.len()).any(|d| d != c && dominates(&m[d], &m[c]));
                best_somewhere && !dominated
            })
            .collect()
    }

    fn matrix() -> impl Strategy<Value = Vec<Vec<f64>>> {
        (1usize..7, 1usize..10).prop_flat_map(|(n, c)| {
            prop::collection::vec(
                prop::collection::vec(prop_oneof![Just(0.0), Just(0.5), Just(1.0), 0.0..=1.0f64], n),
                c,
            )
        })
    }

    proptest! {
        #[test]
        fn frontier_is_exactly_the_non_dominated_winners(m in matrix()) {
            let mut f = Frontier::new(m[0].len());
            for row in &m {
                f.add(row.clone()).unwrap();
            }
            prop_assert_eq!(f.members(), brute_force(&m));
            for i in 0..m[0].len() {
                let best = m.iter().map(|r| r[i]).fold(f64::NEG_INFINITY, f64::max);
                prop_assert_eq!(f.best()[i], best);
                let w: BTreeSet<usize> = (0..m.len()).filter(|&c| m[c][i] == best).collect();
                prop_assert_eq!(f.winners(i).unwrap(), &w);
            }
        }

        #[test]
        fn sampling_only_draws_members_that_win(m in matrix(), seed in any::<u64>()) {
            let mut f = Frontier::new(m[0].len());
            for row in &m {
                f.add(row.clone()).unwrap();
            }
            let members = f.members();
            let mut rng = StdRng::seed_from_u64(seed);
            for _ in 0..20 {
                let c = f.sample(&mut rng).unwrap();
                prop_assert!(members.contains(&c) && f.wins(c) > 0);
            }
            let mut r1 = StdRng::seed_from_u64(seed);
            let mut r2 = StdRng::seed_from_u64(seed);
            prop_assert_eq!(f.sample(&mut r1), f.sample(&mut r2));
        }
    }

    #[test]
    fn frontier_refuses_ragged_scores() {
        let mut f = Frontier::new(2);
        assert!(f.add(vec![1.0]).is_err());
        assert_eq!(f.add(vec![f64::NAN, 1.0]).unwrap(), 0);
        assert_eq!(f.scores(0), &[0.0, 1.0]);
    }

    #[test]
    fn best_candidate_prefers_the_earliest_among_equals() {
        let mut f = Frontier::new(2);
        f.add(vec![1.0, 0.0]).unwrap();
        f.add(vec![0.0, 1.0]).unwrap();
        f.add(vec![0.5, 0.4]).unwrap();
        assert_eq!(f.best_candidate(), Some(0));
        assert_eq!(f.members(), vec![0, 1]);
    }
}
