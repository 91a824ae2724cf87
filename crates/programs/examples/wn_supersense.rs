//! WN-Supersense, the LLM-program benchmark (BENCHMARKS.md): baselines, zero-shot and
//! optimized programs on the local model, scored on the 400 test items.
//!
//! ```text
//! scripts/wn-supersense.sh            # data/wn-supersense/{train,val,test}.jsonl
//! cargo run --release --example wn_supersense -p kernelize-programs -- [--only NAMES] [--threads 2]
//! ```
//!
//! Prints one JSON line per system (accuracy with a 95% Wilson interval, McNemar's exact
//! p against zero-shot, calls, tokens, compile wall time) and the latency of the best
//! compiled program (100 warm calls, p50/p95). `--only` takes a comma-separated subset of
//! `zero-score,labeled,knn,knn4,knn3,bootstrap,gepa,latency,latency-each` (the last: the
//! latency of zero-shot and of every compiled program); `--limit N` keeps the first N
//! test items; `KZ_SAVE_DIR=DIR` saves each compiled program there as JSON.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark program"
)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use kernelize_programs::local::{LocalConfig, LocalModel};
use kernelize_programs::module::Decode;
use kernelize_programs::optimize::{self, Budget, CompileRequest, Metric, OptimizerSpec};
use kernelize_programs::{Env, Example, FieldType, Predict, Program, Signature};
use serde_json::{Value, json};

fn read(path: &Path) -> Vec<Example> {
    let text = fs_err::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/wn-supersense.sh)", path.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn label(e: &Example) -> &str {
    e.outputs["supersense"].as_str().unwrap()
}

fn signature(labels: Vec<String>) -> Signature {
    Signature::builder(
        "Given an English word, its part of speech and the dictionary gloss of one of its senses, \
         name the WordNet lexicographer file (supersense) of that sense.",
    )
    .input("lemma", FieldType::String, "the word")
    .input("pos", FieldType::String, "noun or verb")
    .input("gloss", FieldType::String, "definition and examples")
    .input_field(
        kernelize_programs::Field::new(
            "candidates",
            FieldType::List { items: Box::new(FieldType::String), max_items: None },
        )
        .hidden(),
    )
    .output("supersense", FieldType::Enum { labels, from_input: Some("candidates".into()) }, "")
    .build()
    .unwrap()
}

/// Wilson 95% interval of a proportion.
fn wilson(k: usize, n: usize) -> (f64, f64) {
    let (k, n, z) = (k as f64, n as f64, 1.959_964);
    let p = k / n;
    let d = 1.0 + z * z / n;
    let c = (p + z * z / (2.0 * n)) / d;
    let h = z * ((p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt()) / d;
    (c - h, c + h)
}

/// McNemar's exact (binomial) two-sided p over the discordant pairs.
fn mcnemar(a: &[bool], b: &[bool]) -> f64 {
    let (mut b01, mut b10) = (0u64, 0u64);
    for (x, y) in a.iter().zip(b) {
        match (x, y) {
            (true, false) => b10 += 1,
            (false, true) => b01 += 1,
            _ => {}
        }
    }
    let n = b01 + b10;
    if n == 0 {
        return 1.0;
    }
    let k = b01.min(b10);
    let ln_choose = |n: u64, i: u64| -> f64 {
        let lg = |x: u64| (1..=x).map(|v| (v as f64).ln()).sum::<f64>();
        lg(n) - lg(i) - lg(n - i)
    };
    let tail: f64 = (0..=k).map(|i| (ln_choose(n, i) - n as f64 * std::f64::consts::LN_2).exp()).sum();
    (2.0 * tail).min(1.0)
}

struct Row {
    name: String,
    correct: Vec<bool>,
    calls: u64,
    tokens: u64,
    compile_seconds: f64,
    eval_seconds: f64,
}

fn report(r: &Row, zero: Option<&[bool]>) {
    let k = r.correct.iter().filter(|c| **c).count();
    let n = r.correct.len();
    let (lo, hi) = wilson(k, n);
    let p = zero.map(|z| mcnemar(z, &r.correct));
    println!(
        "{}",
        json!({
            "system": r.name, "accuracy": k as f64 / n as f64, "ci95": [lo, hi], "n": n,
            "mcnemar_p_vs_zero_shot": p, "compile_calls": r.calls, "compile_tokens": r.tokens,
            "compile_seconds": r.compile_seconds, "eval_seconds": r.eval_seconds,
        })
    );
}

async fn eval_program(name: &str, program: &Program, env: &Env, test: &[Example], threads: usize) -> (Vec<bool>, f64) {
    let t = Instant::now();
    let metric = Metric::ExactMatch { field: "supersense".into() };
    let rep = optimize::evaluate(program, env, test, &metric, threads).await.unwrap();
    eprintln!("{name}: accuracy {:.3} ({} errors) in {:.1}s", rep.score, rep.errors, t.elapsed().as_secs_f64());
    (rep.per_item.iter().map(|s| *s >= 1.0).collect(), t.elapsed().as_secs_f64())
}

/// Warm latency of a program: 3 untimed calls, then 100 one after another (test items
/// 3..103), milliseconds p50/p95/max.
async fn latency(program: &Program, env: &Env, test: &[Example]) -> Value {
    for e in test.iter().take(3) {
        program.forward(env, &e.inputs).await.unwrap();
    }
    let mut ms: Vec<f64> = Vec::new();
    for e in test.iter().skip(3).take(100) {
        let t = Instant::now();
        program.forward(env, &e.inputs).await.unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    json!({ "calls": ms.len(), "p50": q(0.5), "p95": q(0.95), "max": q(1.0) })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let only: Option<Vec<String>> = arg("--only").map(|s| s.split(',').map(str::to_owned).collect());
    let want = |n: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == n));
    let threads: usize = arg("--threads").map_or(2, |s| s.parse().unwrap());
    let dir = arg("--data").unwrap_or_else(|| "data/wn-supersense".into());
    let dir = Path::new(&dir);
    let (train, val, mut test) =
        (read(&dir.join("train.jsonl")), read(&dir.join("val.jsonl")), read(&dir.join("test.jsonl")));
    if let Some(n) = arg("--limit") {
        test.truncate(n.parse().unwrap());
    }
    let labels: HashMap<String, Vec<String>> =
        serde_json::from_str(&fs_err::read_to_string(dir.join("labels.json")).unwrap()).unwrap();
    let mut all: Vec<String> = labels["noun"].clone();
    all.extend(labels["verb"].iter().cloned());
    eprintln!("train {} val {} test {}", train.len(), val.len(), test.len());

    // Majority class of the training split.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for e in &train {
        *counts.entry(label(e)).or_default() += 1;
    }
    let majority = counts.iter().max_by_key(|(l, c)| (**c, std::cmp::Reverse(**l))).unwrap().0.to_string();
    report(
        &Row {
            name: format!("majority class ({majority})"),
            correct: test.iter().map(|e| label(e) == majority).collect(),
            calls: 0,
            tokens: 0,
            compile_seconds: 0.0,
            eval_seconds: 0.0,
        },
        None,
    );

    // kNN label vote over the training glosses (MiniLM, exact cosine, same part of speech).
    let embedder = Arc::new(
        kernelize_embed::Embedder::load(&kernelize_embed::Embedder::default_model_dir())
            .expect("MiniLM (kernelize models install)"),
    );
    let text =
        |e: &Example| format!("{}: {}", e.inputs["lemma"].as_str().unwrap(), e.inputs["gloss"].as_str().unwrap());
    let t = Instant::now();
    let tv: Vec<String> = train.iter().map(text).collect();
    let train_vecs = embedder.embed(&tv.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let qv: Vec<String> = test.iter().map(text).collect();
    let test_vecs = embedder.embed(&qv.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let knn_correct: Vec<bool> = test
        .iter()
        .zip(&test_vecs)
        .map(|(e, q)| {
            let mut sims: Vec<(f32, &Example)> = train
                .iter()
                .zip(&train_vecs)
                .filter(|(t, _)| t.inputs["pos"] == e.inputs["pos"])
                .map(|(t, v)| (q.iter().zip(v).map(|(a, b)| a * b).sum::<f32>(), t))
                .collect();
            sims.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut votes: HashMap<&str, f32> = HashMap::new();
            for (s, t) in sims.iter().take(10) {
                *votes.entry(label(t)).or_default() += s;
            }
            let best = votes.iter().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0))).map(|x| *x.0);
            best == Some(label(e))
        })
        .collect();
    report(
        &Row {
            name: "kNN label vote (MiniLM, k=10, train glosses)".into(),
            correct: knn_correct,
            calls: 0,
            tokens: 0,
            compile_seconds: 0.0,
            eval_seconds: t.elapsed().as_secs_f64(),
        },
        None,
    );

    let cfg = LocalConfig { threads: 2, context: 4096, ..LocalConfig::default_model() };
    let model = Arc::new(LocalModel::load(&cfg).unwrap());
    eprintln!("model: {:?}", model.info());
    let env = Env::new(model.clone()).with_embedder(embedder.clone());
    let base = Program::Predict(Predict::new("classify", signature(all.clone())));
    let mut scored = Predict::new("classify", signature(all.clone()));
    scored.decode = Decode::Score;
    let scored = Program::Predict(scored);

    let (zero, secs) = eval_program("zero-shot", &base, &env, &test, threads).await;
    report(
        &Row {
            name: "zero-shot Predict".into(),
            correct: zero.clone(),
            calls: 0,
            tokens: 0,
            compile_seconds: 0.0,
            eval_seconds: secs,
        },
        None,
    );
    if want("latency-each") {
        println!("{}", json!({ "system": "zero-shot Predict", "latency_ms": latency(&base, &env, &test).await }));
    }
    if want("zero-score") {
        let (c, secs) = eval_program("zero-shot (scored labels)", &scored, &env, &test, threads).await;
        report(
            &Row {
                name: "zero-shot Predict, labels scored".into(),
                correct: c,
                calls: 0,
                tokens: 0,
                compile_seconds: 0.0,
                eval_seconds: secs,
            },
            Some(&zero),
        );
    }

    let specs: Vec<(&str, OptimizerSpec, Budget)> = vec![
        ("labeled", OptimizerSpec::LabeledFewShot { k: 8 }, Budget::default()),
        ("knn", OptimizerSpec::KnnFewShot { k: 8 }, Budget::default()),
        ("knn4", OptimizerSpec::KnnFewShot { k: 4 }, Budget::default()),
        ("knn3", OptimizerSpec::KnnFewShot { k: 3 }, Budget::default()),
        (
            "bootstrap",
            OptimizerSpec::BootstrapFewShot { max_bootstrapped: 4, max_labeled: 4, candidates: 4 },
            Budget { calls: Some(1000), ..Budget::default() },
        ),
        (
            "gepa",
            OptimizerSpec::Gepa { minibatch: 8, merge: true, max_candidates: 8 },
            Budget { calls: Some(800), ..Budget::default() },
        ),
    ];
    let metric = Metric::ExactMatch { field: "supersense".into() };
    let mut best: Option<(f64, Program)> = None;
    for (name, spec, budget) in specs {
        if !want(name) {
            continue;
        }
        let t = Instant::now();
        let cancel = AtomicBool::new(false);
        let progress =
            |p: optimize::ProgressEvent| eprintln!("{name}: {}", serde_json::to_string(&p).unwrap_or_default());
        let rep = optimize::compile(CompileRequest {
            optimizer: &spec,
            program: &base,
            env: &env,
            reflection: None,
            train: &train,
            val: &val,
            metric: &metric,
            budget: &budget,
            seed: 15,
            threads,
            progress: &progress,
            cancel: &cancel,
        })
        .await
        .unwrap();
        let compile_seconds = t.elapsed().as_secs_f64();
        let (c, secs) = eval_program(name, &rep.program, &env, &test, threads).await;
        let acc = c.iter().filter(|x| **x).count() as f64 / c.len() as f64;
        report(
            &Row {
                name: format!("{spec:?}"),
                correct: c,
                calls: rep.calls,
                tokens: rep.tokens,
                compile_seconds,
                eval_seconds: secs,
            },
            Some(&zero),
        );
        if want("latency-each") {
            let lat = latency(&rep.program, &env, &test).await;
            println!("{}", json!({ "system": format!("{spec:?}"), "latency_ms": lat }));
        }
        if best.as_ref().is_none_or(|b| acc > b.0) {
            best = Some((acc, rep.program.clone()));
        }
        if let Ok(path) = std::env::var("KZ_SAVE_DIR") {
            let file = Path::new(&path).join(format!("wn-supersense-{name}.json"));
            fs_err::write(&file, serde_json::to_string_pretty(&rep.program).unwrap()).unwrap();
        }
    }

    if let Some((acc, program)) = best.filter(|_| want("latency")) {
        let lat = latency(&program, &env, &test).await;
        println!("{}", json!({ "best_accuracy": acc, "latency_ms": lat }));
    }
}
