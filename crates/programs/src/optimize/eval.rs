//! Running a program over examples in parallel (order kept) and scoring it.

use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::meter::{Meter, Metered};
use super::metric::{Feedback, Metric};
use crate::error::{Error, Result};
use crate::module::{Env, Example, Prediction, Program};
use crate::signature::Values;

/// Most items run at once.
pub const MAX_THREADS: usize = 64;

/// One item's run.
pub(crate) struct ItemRun {
    pub(crate) feedback: Feedback,
    pub(crate) pred: Option<Prediction>,
    pub(crate) error: Option<String>,
}

/// The example's inputs the program reads.
pub(crate) fn program_inputs(program: &Program, e: &Example) -> Values {
    let names = program.input_names();
    e.inputs.iter().filter(|(k, _)| names.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

async fn run_one(program: &Program, env: &Env, e: &Example, metric: &Metric) -> ItemRun {
    let inputs = program_inputs(program, e);
    match program.forward(env, &inputs).await {
        Ok(pred) => ItemRun { feedback: metric.score(e, &pred), pred: Some(pred), error: None },
        Err(err) => {
            let msg = err.to_string();
            ItemRun {
                feedback: Feedback { score: 0.0, text: format!("the program failed: {msg}") },
                pred: None,
                error: Some(msg),
            }
        }
    }
}

/// Runs the program on each example, `threads` at a time, results in example order.
/// Failures score 0 (their message is the feedback). A stop of the meter (budget,
/// cancel) fails the whole run with that stop.
pub(crate) async fn run_items(
    program: &Program,
    env: &Env,
    items: &[&Example],
    metric: &Metric,
    threads: usize,
    meter: &Meter,
) -> Result<Vec<ItemRun>> {
    meter.check()?;
    // Boxed up front: a closure in the stream's type would make the future not provably
    // `Send` (the higher-ranked lifetime of its argument).
    let futs: Vec<BoxFuture<'_, ItemRun>> =
        items.iter().map(|&e| -> BoxFuture<'_, ItemRun> { Box::pin(run_one(program, env, e, metric)) }).collect();
    let runs: Vec<ItemRun> = futures::stream::iter(futs).buffered(threads.clamp(1, MAX_THREADS)).collect().await;
    if let Some(why) = meter.stopped_by() {
        return Err(if why == "cancelled" { Error::Cancelled } else { Error::Budget(why) });
    }
    Ok(runs)
}

/// One failed item of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemError {
    /// Its position in the data.
    pub index: usize,
    /// What went wrong.
    pub message: String,
}

/// What [`evaluate`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Mean score over the items (failed items count 0).
    pub score: f64,
    /// 95% confidence interval of the mean: Wilson's for 0/1 scores, else the normal
    /// approximation (clamped to `[0, 1]`).
    pub ci95: (f64, f64),
    /// Items.
    pub n: usize,
    /// Items whose run failed.
    pub errors: usize,
    /// Backend calls made (retries of a parse included).
    pub calls: u64,
    /// Tokens used.
    pub tokens: u64,
    /// Each item's score, in data order.
    pub per_item: Vec<f64>,
    /// Wall time.
    pub seconds: f64,
    /// The failed items (the first 100), with their errors.
    #[serde(default)]
    pub failures: Vec<ItemError>,
}

/// The 95% confidence interval of the mean of scores in `[0, 1]`: Wilson's score
/// interval when every score is 0 or 1, else mean ± 1.96 standard errors (sample
/// standard deviation), clamped to `[0, 1]`. `(0, 1)` for no scores.
pub fn confidence_interval(scores: &[f64]) -> (f64, f64) {
    const Z: f64 = 1.96;
    if scores.is_empty() {
        return (0.0, 1.0);
    }
    let n = scores.len() as f64;
    let mean = scores.iter().sum::<f64>() / n;
    if scores.iter().all(|&s| s == 0.0 || s == 1.0) {
        let z2 = Z * Z;
        let center = (mean + z2 / (2.0 * n)) / (1.0 + z2 / n);
        let half = Z / (1.0 + z2 / n) * (mean * (1.0 - mean) / n + z2 / (4.0 * n * n)).sqrt();
        return ((center - half).clamp(0.0, mean), (center + half).clamp(mean, 1.0));
    }
    let var = if scores.len() > 1 { scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    let half = Z * (var / n).sqrt();
    ((mean - half).clamp(0.0, 1.0), (mean + half).clamp(0.0, 1.0))
}

/// Runs a program over labelled data and scores it: items run in parallel (at most
/// `threads` at once, results in data order); an item whose run fails scores 0 and is
/// counted in `errors`.
///
/// # Errors
/// [`Error::Invalid`] for no data, an invalid program, or data without the metric's
/// gold field.
pub async fn evaluate(
    program: &Program,
    env: &Env,
    data: &[Example],
    metric: &Metric,
    threads: usize,
) -> Result<EvalReport> {
    if data.is_empty() {
        return Err(Error::invalid("evaluate: no examples"));
    }
    program.validate()?;
    metric.check("data", data)?;
    let meter = Arc::new(Meter::unlimited());
    let mut metered = env.clone();
    metered.lm = Metered::wrap(env.lm.clone(), meter.clone());
    let items: Vec<&Example> = data.iter().collect();
    let runs = run_items(program, &metered, &items, metric, threads, &meter).await?;
    let per_item: Vec<f64> = runs.iter().map(|r| r.feedback.score.clamp(0.0, 1.0)).collect();
    let failures: Vec<ItemError> = runs
        .iter()
        .enumerate()
        .filter_map(|(index, r)| r.error.as_ref().map(|m| ItemError { index, message: m.clone() }))
        .collect();
    let score = per_item.iter().sum::<f64>() / per_item.len() as f64;
    Ok(EvalReport {
        score,
        ci95: confidence_interval(&per_item),
        n: per_item.len(),
        errors: failures.len(),
        calls: meter.calls(),
        tokens: meter.tokens(),
        per_item,
        seconds: meter.seconds(),
        failures: failures.into_iter().take(100).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wilson_known_values() {
        // 8 of 10: Wilson 95% is about (0.490, 0.943).
        let s: Vec<f64> = (0..10).map(|i| if i < 8 { 1.0 } else { 0.0 }).collect();
        let (lo, hi) = confidence_interval(&s);
        assert!((lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3, "{lo} {hi}");
        assert_eq!(confidence_interval(&[]), (0.0, 1.0));
        let (lo, hi) = confidence_interval(&[0.5]);
        assert_eq!((lo, hi), (0.5, 0.5));
    }

    proptest! {
        #[test]
        fn interval_contains_the_mean(scores in prop::collection::vec(prop_oneof![Just(0.0), Just(1.0), 0.0..=1.0f64], 1..50)) {
            let mean = scores.iter().sum::<f64>() / scores.len() as f64;
            let (lo, hi) = confidence_interval(&scores);
            prop_assert!(lo <= mean + 1e-12 && mean <= hi + 1e-12 && 0.0 <= lo && hi <= 1.0, "{lo} {mean} {hi}");
        }
    }
}
