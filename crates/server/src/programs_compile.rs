//! Compile jobs of `POST /v1/programs/{name}/compile`: checked at once (sizes, the
//! optimizer, metric and budget), then run in the background on the local model with
//! live progress and cancellation; the optimized program becomes the program's next
//! version (`origin: compiled:<job id>`). A cancelled job keeps no version. A job left
//! running by a server that stopped is marked failed at the next start; shutdown
//! cancels jobs in progress.

use crate::auth::{Principal, random_id};
use crate::error::ApiError;
use crate::programs::{
    CompileBody, CompileProgress, JobProgress, MAX_EXAMPLES, MAX_HISTORY, ScorePoint, program_error,
};
use crate::state::{AppState, now_ms};
use kernelize_programs::module::{Example, Program};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::programs::JobRow;

fn examples(what: &str, v: Vec<crate::programs::ExampleIn>, min: usize) -> Result<Vec<Example>, ApiError> {
    if v.len() < min || v.len() > MAX_EXAMPLES {
        return Err(ApiError::invalid(format!("{what}: {min} to {MAX_EXAMPLES} examples, not {}", v.len())));
    }
    Ok(v.into_iter().map(|e| Example { inputs: e.inputs, outputs: e.outputs }).collect())
}

/// What a compile job runs, checked before it starts.
struct Plan {
    optimizer: kernelize_programs::optimize::OptimizerSpec,
    metric: kernelize_programs::optimize::Metric,
    budget: kernelize_programs::optimize::Budget,
    train: Vec<Example>,
    val: Vec<Example>,
    seed: u64,
}

fn typed<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T, ApiError> {
    let text = v.to_string();
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text))
        .map_err(|e| ApiError::invalid(format!("{what}: at {}: {}", e.path(), e.inner())))
}

fn plan(req: CompileBody) -> Result<(Plan, Value), ApiError> {
    let settings = serde_json::to_value(&req).map_err(ApiError::internal)?;
    let optimizer = typed("optimizer", req.optimizer)?;
    let metric: kernelize_programs::optimize::Metric = typed("metric", req.metric)?;
    let budget = match req.budget {
        Some(b) => typed("budget", b)?,
        None => kernelize_programs::optimize::Budget::default(),
    };
    let train = examples("train", req.train, 1)?;
    let val = examples("val", req.val, 1)?;
    metric.check("train", &train).map_err(program_error)?;
    metric.check("val", &val).map_err(program_error)?;
    Ok((Plan { optimizer, metric, budget, train, val, seed: req.seed.unwrap_or(0) }, settings))
}

/// Checks a compile request, records the job and starts it.
pub(crate) async fn start(
    st: &Arc<AppState>,
    p: &Principal,
    name: &str,
    base_version: i64,
    program: Program,
    req: CompileBody,
) -> Result<JobRow, ApiError> {
    let (plan, settings) = plan(req)?;
    if program.predictors().is_empty() {
        return Err(ApiError::invalid("the program has no predictor to optimize"));
    }
    let row = JobRow {
        id: random_id(),
        program: name.to_owned(),
        base_version,
        state: "running".into(),
        settings: {
            // The examples are the bulk of the request: the row keeps their counts only.
            let mut s = settings;
            for k in ["train", "val"] {
                let n = s.get(k).and_then(Value::as_array).map_or(0, Vec::len);
                s[k] = json!(n);
            }
            s.to_string()
        },
        requested_by: p.actor(),
        created_ms: now_ms(),
        finished_ms: None,
        result_version: None,
        report: None,
        error: None,
    };
    let lm = st.programs.model().await?;
    sqlx::query(
        "INSERT INTO program_jobs (id, program, base_version, state, settings, requested_by, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&row.id)
    .bind(&row.program)
    .bind(row.base_version)
    .bind(&row.state)
    .bind(&row.settings)
    .bind(&row.requested_by)
    .bind(row.created_ms)
    .execute(st.meta.pool())
    .await?;
    let live = Arc::new(JobProgress::default());
    st.programs.jobs.lock().insert(row.id.clone(), live.clone());
    let watch = st.jobs.start(&row.id, "starting");
    let st2 = st.clone();
    let id = row.id.clone();
    let name = name.to_owned();
    let actor = p.actor();
    let handle = tokio::runtime::Handle::current();
    tokio::spawn(async move {
        let live2 = live.clone();
        // The optimizer's future is not `Send`: it runs on a thread of the blocking
        // pool, driven by this runtime (its timers, the model's replies).
        let result = tokio::task::spawn_blocking(move || {
            let live = live2;
            let env = kernelize_programs::module::Env::new(lm);
            let progress_live = live.clone();
            let on_progress = move |e: kernelize_programs::optimize::ProgressEvent| {
                let stage = {
                    let mut pr = progress_live.progress.lock();
                    let next = progress_of(&e, &mut pr);
                    *pr = next;
                    crate::progress::Stage {
                        stage: e.stage.clone(),
                        fraction: if e.total == 0 { 0.0 } else { (e.done as f32 / e.total as f32).min(1.0) },
                    }
                };
                // Wakes the job's event streams (GET …/compile/{job}/events).
                watch.send_replace(stage);
            };
            let threads = 1;
            let req = kernelize_programs::optimize::CompileRequest {
                optimizer: &plan.optimizer,
                program: &program,
                env: &env,
                reflection: None,
                train: &plan.train,
                val: &plan.val,
                metric: &plan.metric,
                budget: &plan.budget,
                seed: plan.seed,
                threads,
                progress: &on_progress,
                cancel: &live.cancel,
            };
            handle.block_on(kernelize_programs::optimize::compile(req))
        })
        .await
        .unwrap_or_else(|e| Err(kernelize_programs::Error::Model(format!("compile task: {e}"))));
        let cancelled = live.cancel.load(Ordering::SeqCst);
        let progress = live.progress.lock().clone();
        let (state, result_version, report, error) = match result {
            // A cancelled compile returns its best program so far: it is not kept.
            Ok(rep) if cancelled || rep.stopped_by.as_deref() == Some("cancelled") => {
                let mut report = serde_json::to_value(&rep).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut report {
                    m.remove("program");
                    m.insert("progress".into(), json!(progress));
                }
                ("cancelled", None, Some(report), None)
            }
            Ok(rep) => {
                let mut report = serde_json::to_value(&rep).unwrap_or(Value::Null);
                match st2.add_program_version(&name, &rep.program, None, &format!("compiled:{id}"), &actor).await {
                    Ok(v) => {
                        if let Value::Object(m) = &mut report {
                            m.remove("program");
                            m.insert("progress".into(), json!(progress));
                        }
                        ("succeeded", Some(v), Some(report), None)
                    }
                    Err(e) => ("failed", None, None, Some(format!("saving the compiled program: {}", e.message))),
                }
            }
            Err(_) if cancelled => ("cancelled", None, Some(json!({"progress": progress})), None),
            Err(e) => ("failed", None, Some(json!({"progress": progress})), Some(program_error(e).message)),
        };
        let r = sqlx::query(
            "UPDATE program_jobs SET state = $1, finished_ms = $2, result_version = $3, report = $4, error = $5 \
             WHERE id = $6",
        )
        .bind(state)
        .bind(now_ms())
        .bind(result_version)
        .bind(report.map(|r| r.to_string()))
        .bind(error)
        .bind(&id)
        .execute(st2.meta.pool())
        .await;
        if let Err(e) = r {
            tracing::error!(job = id, error = %e, "could not record the end of a compile job");
        }
        st2.programs.jobs.lock().remove(&id);
        // The streams send the finished job once its progress channel is gone.
        st2.jobs.finish(&id);
        let _ = st2
            .audit(
                "-",
                "system",
                "programs.compile.finish",
                &id,
                if state == "succeeded" { "ok" } else { "error" },
                state,
            )
            .await;
    });
    Ok(row)
}

/// The job's progress after event `e`: the latest figures, and one more point of the
/// score curve when the step scored a candidate.
fn progress_of(e: &kernelize_programs::optimize::ProgressEvent, prev: &mut CompileProgress) -> CompileProgress {
    let mut history = std::mem::take(&mut prev.history);
    if let Some(score) = e.score
        && history.len() < MAX_HISTORY
    {
        history.push(ScorePoint {
            step: e.done,
            stage: e.stage.clone(),
            score,
            best_score: e.best_score.unwrap_or(score).max(score),
            calls: e.calls,
        });
    }
    CompileProgress {
        stage: Some(e.stage.clone()),
        done: e.done,
        total: e.total,
        best_score: e.best_score,
        calls: e.calls,
        tokens: e.tokens,
        history,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernelize_programs::optimize::ProgressEvent;

    fn event(stage: &str, done: u64, best: Option<f64>, score: Option<f64>) -> ProgressEvent {
        ProgressEvent {
            stage: stage.into(),
            done,
            total: 4,
            best_score: best,
            score,
            calls: done * 3,
            tokens: done * 100,
        }
    }

    #[test]
    fn steps_that_scored_a_candidate_become_points_of_the_curve() {
        let mut p = CompileProgress::default();
        for e in [
            event("baseline", 1, Some(0.5), Some(0.5)),
            event("bootstrap", 1, Some(0.5), None),
            event("candidate", 2, Some(0.75), Some(0.75)),
            event("candidate", 3, Some(0.75), Some(0.25)),
        ] {
            p = progress_of(&e, &mut p);
        }
        let curve: Vec<(u64, f64, f64)> = p.history.iter().map(|h| (h.step, h.score, h.best_score)).collect();
        assert_eq!(curve, [(1, 0.5, 0.5), (2, 0.75, 0.75), (3, 0.25, 0.75)]);
        assert_eq!((p.done, p.calls, p.best_score, p.stage.as_deref()), (3, 9, Some(0.75), Some("candidate")));
        // Bounded: past MAX_HISTORY points only the figures move on.
        for i in 0..MAX_HISTORY as u64 + 10 {
            p = progress_of(&event("candidate", 4 + i, Some(0.75), Some(0.5)), &mut p);
        }
        assert_eq!((p.history.len(), p.done), (MAX_HISTORY, MAX_HISTORY as u64 + 13));
    }
}
