//! Optimizers and evaluation on the real local model (SmolLM2-135M-Instruct) and MiniLM:
//! determinism under a seed, the call budget, demo counts, KnnFewShot's neighbours, GEPA's
//! reflection prompt, and `evaluate`'s report.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use futures::future::BoxFuture;
use kernelize_embed::Embedder;
use kernelize_programs::lm::TokenSink;
use kernelize_programs::module::{Decode, Env, Example, Predict, Program};
use kernelize_programs::optimize::{Budget, CompileReport, CompileRequest, Metric, OptimizerSpec, compile, evaluate};
use kernelize_programs::saved::SavedProgram;
use kernelize_programs::signature::{FieldType, Signature, Values};
use kernelize_programs::{Backend, DynBackend, Request, Response, Result};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

pub use crate::local::model;

/// MiniLM, loaded once for the test binary.
pub async fn embedder() -> Arc<Embedder> {
    static EMB: OnceCell<Arc<Embedder>> = OnceCell::const_new();
    EMB.get_or_init(|| async {
        Arc::new(
            tokio::task::spawn_blocking(|| Embedder::load(&Embedder::default_model_dir()))
                .await
                .unwrap()
                .expect("MiniLM (run `kernelize models install`)"),
        )
    })
    .await
    .clone()
}

/// Forwards to a backend and records every request.
pub struct Recorder {
    inner: DynBackend,
    pub requests: parking_lot::Mutex<Vec<Request>>,
}

impl Recorder {
    pub fn new(inner: DynBackend) -> Arc<Recorder> {
        Arc::new(Recorder { inner, requests: parking_lot::Mutex::new(Vec::new()) })
    }

    pub fn count(&self) -> u64 {
        self.requests.lock().len() as u64
    }
}

impl Backend for Recorder {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn complete<'a>(&'a self, req: &'a Request, sink: Option<TokenSink>) -> BoxFuture<'a, Result<Response>> {
        self.requests.lock().push(req.clone());
        self.inner.complete(req, sink)
    }

    fn score<'a>(&'a self, req: &'a Request, continuations: &'a [String]) -> BoxFuture<'a, Result<Vec<f64>>> {
        self.requests.lock().push(req.clone());
        self.inner.score(req, continuations)
    }
}

pub const LABELS: [&str; 3] = ["noun.animal", "noun.plant", "noun.artifact"];

/// A word-sense classifier: `word -> label`.
pub fn classifier(decode: Decode) -> Program {
    let sig = Signature::builder("Label the word.")
        .input("word", FieldType::String, "")
        .output("label", FieldType::Enum { labels: LABELS.map(String::from).to_vec(), from_input: None }, "")
        .build()
        .unwrap();
    let mut p = Predict::new("classify", sig);
    p.decode = decode;
    p.sampling.max_tokens = 32;
    Program::Predict(p)
}

pub fn ex(word: &str, label: &str) -> Example {
    let mut inputs = Values::new();
    inputs.insert("word".into(), json!(word));
    let mut outputs = Values::new();
    outputs.insert("label".into(), json!(label));
    Example { inputs, outputs }
}

pub fn train() -> Vec<Example> {
    [
        ("cat", "noun.animal"),
        ("oak", "noun.plant"),
        ("hammer", "noun.artifact"),
        ("horse", "noun.animal"),
        ("rose", "noun.plant"),
        ("chair", "noun.artifact"),
        ("salmon", "noun.animal"),
        ("fern", "noun.plant"),
    ]
    .map(|(w, l)| ex(w, l))
    .to_vec()
}

pub fn val() -> Vec<Example> {
    [("eagle", "noun.animal"), ("tulip", "noun.plant"), ("wrench", "noun.artifact"), ("moss", "noun.plant")]
        .map(|(w, l)| ex(w, l))
        .to_vec()
}

pub fn metric() -> Metric {
    Metric::ExactMatch { field: "label".into() }
}

#[expect(clippy::too_many_arguments, reason = "a test helper mirroring CompileRequest")]
async fn run(
    spec: &OptimizerSpec,
    program: &Program,
    env: &Env,
    reflection: Option<&Env>,
    train: &[Example],
    val: &[Example],
    budget: &Budget,
    seed: u64,
) -> CompileReport {
    let cancel = AtomicBool::new(false);
    compile(CompileRequest {
        optimizer: spec,
        program,
        env,
        reflection,
        train,
        val,
        metric: &metric(),
        budget,
        seed,
        threads: 1,
        progress: &|_| {},
        cancel: &cancel,
    })
    .await
    .unwrap()
}

fn demos(p: &Program) -> &[Example] {
    &p.predictors()[0].demos
}

fn recorder_env(rec: &Arc<Recorder>) -> Env {
    Env::new(rec.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labeled_few_shot_is_seeded_and_makes_no_calls() {
    let rec = Recorder::new(model().await);
    let env = recorder_env(&rec);
    let program = classifier(Decode::Generate);
    let spec = OptimizerSpec::LabeledFewShot { k: 3 };
    let none = Budget { calls: Some(0), ..Budget::default() };
    let a = run(&spec, &program, &env, None, &train(), &val(), &none, 7).await;
    let b = run(&spec, &program, &env, None, &train(), &val(), &none, 7).await;
    assert_eq!(a.program, b.program, "the same seed picks the same demos");
    assert_eq!(demos(&a.program).len(), 3);
    assert!(demos(&a.program).iter().all(|d| train().contains(d)), "demos are training examples");
    let mut words: Vec<&Value> = demos(&a.program).iter().map(|d| &d.inputs["word"]).collect();
    words.dedup();
    assert_eq!(words.len(), 3, "sampled without replacement");
    let others: Vec<Program> = {
        let mut v = Vec::new();
        for seed in 8..12 {
            v.push(run(&spec, &program, &env, None, &train(), &val(), &none, seed).await.program);
        }
        v
    };
    assert!(others.iter().any(|p| *p != a.program), "other seeds pick other demos");
    let big = run(&OptimizerSpec::LabeledFewShot { k: 50 }, &program, &env, None, &train(), &val(), &none, 7).await;
    assert_eq!(demos(&big.program).len(), train().len(), "k beyond the data takes it all");
    assert_eq!(rec.count(), 0);
    assert_eq!((a.calls, a.score, a.stopped_by.as_deref()), (0, None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_demos_are_the_programs_own_successes() {
    let rec = Recorder::new(model().await);
    let env = recorder_env(&rec);
    let program = classifier(Decode::Generate);
    let train = train();
    let spec = OptimizerSpec::BootstrapFewShot { max_bootstrapped: 2, max_labeled: 1, candidates: 1 };
    let a = run(&spec, &program, &env, None, &train, &val(), &Budget::default(), 3).await;
    assert_eq!(a.calls, rec.count(), "the report counts every call");
    let d = demos(&a.program);
    assert!((1..=3).contains(&d.len()), "at most 2 bootstrapped demos, then one labelled: {d:?}");
    let (boots, labeled) = d.split_at(d.len() - 1);
    // Bootstrapped demos are runs the metric scored 1, in training order.
    let position = |e: &Example| train.iter().position(|t| t.inputs == e.inputs).expect("a training input");
    let at: Vec<usize> = boots.iter().map(position).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "training order: {at:?}");
    for (demo, &i) in boots.iter().zip(&at) {
        assert_eq!(demo.outputs["label"], train[i].outputs["label"], "a success");
    }
    // The labelled one is the first training item not bootstrapped, as labelled.
    let first_free = (0..train.len()).find(|i| !at.contains(i)).unwrap();
    assert_eq!(labeled[0], train[first_free]);
    // Fewer than 2 bootstrapped demos only when the walk ran out of training items:
    // every item was run (one call each, two for a retried parse).
    if boots.len() < 2 {
        assert!(a.calls >= train.len() as u64, "{} calls", a.calls);
    }
    assert!(a.score.is_some());
    // Deterministic under the seed.
    let b = run(&spec, &program, &env, None, &train, &val(), &Budget::default(), 3).await;
    assert_eq!(SavedProgram::new(a.program.clone()).to_json(), SavedProgram::new(b.program).to_json());
    assert_eq!(a.score, b.score);
    // A call budget stops it exactly there.
    let search = OptimizerSpec::BootstrapFewShot { max_bootstrapped: 2, max_labeled: 2, candidates: 3 };
    for calls in [0, 3, 6] {
        let before = rec.count();
        let r =
            run(&search, &program, &env, None, &train, &val(), &Budget { calls: Some(calls), ..Budget::default() }, 5)
                .await;
        let made = rec.count() - before;
        assert!(made <= calls && r.calls == made, "budget {calls}: {made} calls, report {}", r.calls);
        assert_eq!(r.stopped_by.as_deref(), Some("calls"));
        for p in r.program.predictors() {
            assert!(p.demos.len() <= 4);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knn_demos_are_the_true_nearest_neighbours() {
    let emb = embedder().await;
    let rec = Recorder::new(model().await);
    let env = recorder_env(&rec).with_embedder(emb.clone());
    let program = classifier(Decode::Score);
    let train = train();
    let spec = OptimizerSpec::KnnFewShot { k: 3 };
    let a = run(&spec, &program, &env, None, &train, &val(), &Budget::default(), 1).await;
    assert_eq!(a.calls, val().len() as u64, "scored on val: one call per item");
    let knn = a.program.predictors()[0].knn.clone().expect("knn demos");
    assert_eq!(knn.k(), 3);
    assert_eq!(knn.pool().len(), train.len());
    // Exact cosine over the pool.
    let pool_texts: Vec<String> = train.iter().map(|e| knn.query_text(&e.inputs)).collect();
    let refs: Vec<&str> = pool_texts.iter().map(String::as_str).collect();
    let pool_vecs = emb.embed(&refs).unwrap();
    let mut picked = Vec::new();
    for q in ["puppy", "daisy", "screwdriver"] {
        let mut inputs = Values::new();
        inputs.insert("word".into(), json!(q));
        let qv = emb.embed(&[q]).unwrap().remove(0);
        let mut sims: Vec<(f32, usize)> =
            pool_vecs.iter().enumerate().map(|(i, v)| (v.iter().zip(&qv).map(|(a, b)| a * b).sum(), i)).collect();
        sims.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let exact: Vec<usize> = sims.iter().take(3).map(|s| s.1).collect();
        let got = knn.nearest(&emb, &inputs).await.unwrap();
        assert_eq!(got, exact, "{q}: nearest first");
        let demos = knn.select(&emb, &inputs).await.unwrap();
        assert_eq!(demos, exact.iter().map(|&i| train[i].clone()).collect::<Vec<_>>());
        picked.push(demos);
    }
    assert_ne!(picked[0], picked[1], "different inputs, different demos");
    assert_ne!(picked[1], picked[2]);
    // The demos reach the prompt of a run.
    let before = rec.requests.lock().len();
    let mut inputs = Values::new();
    inputs.insert("word".into(), json!("puppy"));
    a.program.forward(&env, &inputs).await.unwrap();
    let req = rec.requests.lock()[before].clone();
    let shown: Vec<&str> = req.messages.iter().map(|m| m.content.as_str()).collect();
    for d in &picked[0] {
        let w = d.inputs["word"].as_str().unwrap();
        assert!(shown.contains(&format!("word: {w}").as_str()), "{w} not in {shown:?}");
    }
    assert_eq!(req.messages.len(), 1 + 2 * 3 + 1);
    // Deterministic; a budget stops the scoring.
    let b = run(&spec, &program, &env, None, &train, &val(), &Budget::default(), 1).await;
    assert_eq!(a.program, b.program);
    assert_eq!(a.score, b.score);
    let before = rec.count();
    let c = run(&spec, &program, &env, None, &train, &val(), &Budget { calls: Some(2), ..Budget::default() }, 1).await;
    assert!(rec.count() - before <= 2);
    assert_eq!((c.score, c.stopped_by.as_deref()), (None, Some("calls")));
    assert_eq!(c.program, a.program, "the pool is the result even unscored");
    // Without an embedder in the environment, a knn predictor says what it needs.
    let e = a.program.forward(&recorder_env(&rec), &inputs).await.unwrap_err().to_string();
    assert!(e.contains("embedder"), "{e}");
}

/// A reflection environment whose answers are short enough for the small model.
fn reflection_env(rec: &Arc<Recorder>) -> Env {
    let mut env = recorder_env(rec);
    env.sampling = Some(kernelize_programs::Sampling { max_tokens: 96, ..Default::default() });
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gepa_is_seeded_and_its_reflection_reads_the_feedback() {
    let rec = Recorder::new(model().await);
    let env = recorder_env(&rec);
    let refl = reflection_env(&rec);
    let program = classifier(Decode::Score);
    let spec = OptimizerSpec::Gepa { minibatch: 2, merge: true, max_candidates: 3 };
    let budget = Budget { calls: Some(20), ..Budget::default() };
    let a = run(&spec, &program, &env, Some(&refl), &train(), &val(), &budget, 11).await;
    let reflections: Vec<String> = rec
        .requests
        .lock()
        .iter()
        .filter(|r| r.messages[0].content.contains("write a new instruction"))
        .map(|r| r.messages.iter().map(|m| m.content.clone()).collect::<Vec<_>>().join("\n"))
        .collect();
    assert!(!reflections.is_empty(), "at least one reflection");
    let first = &reflections[0];
    assert!(first.contains("current_instruction: Label the word."), "{first}");
    assert!(
        first.contains("; expected noun.") && first.contains("## Feedback"),
        "the metric's feedback is in the reflection prompt: {first}"
    );
    assert!(a.calls <= 20 && a.calls == rec.count(), "{} calls, {} recorded", a.calls, rec.count());
    assert!(a.score.is_some());
    let n = rec.count();
    let b = run(&spec, &program, &env, Some(&refl), &train(), &val(), &budget, 11).await;
    assert_eq!(b.calls, rec.count() - n);
    let save = |r: &CompileReport| {
        let mut s = SavedProgram::new(r.program.clone());
        s.optimizer = Some(spec.clone());
        s.seed = 11;
        s.scores.insert("val".into(), r.score.unwrap_or_default());
        s.to_json()
    };
    assert_eq!(save(&a), save(&b), "the same seed gives the same program, byte for byte");
    assert_eq!(a.calls, b.calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gepa_never_exceeds_the_call_budget() {
    let rec = Recorder::new(model().await);
    let env = recorder_env(&rec);
    let refl = reflection_env(&rec);
    let program = classifier(Decode::Score);
    let spec = OptimizerSpec::Gepa { minibatch: 2, merge: true, max_candidates: 50 };
    for calls in [0u64, 3, 7] {
        let before = rec.count();
        let r = run(
            &spec,
            &program,
            &env,
            Some(&refl),
            &train(),
            &val(),
            &Budget { calls: Some(calls), ..Budget::default() },
            2,
        )
        .await;
        let made = rec.count() - before;
        assert!(made <= calls, "budget {calls}: {made} calls made");
        assert_eq!(r.calls, made, "the report counts every call");
        assert_eq!(r.stopped_by.as_deref(), Some("calls"), "budget {calls}");
        // The seed program's scoring takes 4 calls: below that nothing was scored.
        assert_eq!(r.score.is_some(), calls >= 4, "budget {calls}");
    }
    // Cancelled before it starts: no call at all.
    let cancel = AtomicBool::new(true);
    let before = rec.count();
    let r = compile(CompileRequest {
        optimizer: &spec,
        program: &program,
        env: &env,
        reflection: None,
        train: &train(),
        val: &val(),
        metric: &metric(),
        budget: &Budget::default(),
        seed: 2,
        threads: 2,
        progress: &|_| {},
        cancel: &cancel,
    })
    .await
    .unwrap();
    assert_eq!(rec.count(), before);
    assert_eq!(r.stopped_by.as_deref(), Some("cancelled"));
    assert_eq!(r.program, program);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluate_keeps_order_counts_errors_and_brackets_the_mean() {
    let rec = Recorder::new(model().await);
    let env = recorder_env(&rec);
    let program = classifier(Decode::Score);
    let mut data = val();
    data.extend(train());
    // An item with a number for the word: refused before any call, scored 0.
    let mut bad = ex("x", "noun.animal");
    bad.inputs.insert("word".into(), json!(3));
    data.insert(2, bad);
    let par = evaluate(&program, &env, &data, &metric(), 4).await.unwrap();
    assert_eq!(par.n, data.len());
    assert_eq!(par.errors, 1);
    assert_eq!(par.failures[0].index, 2);
    assert_eq!(par.per_item[2], 0.0);
    assert_eq!(par.calls, data.len() as u64 - 1, "one scoring call per good item");
    let mean = par.per_item.iter().sum::<f64>() / par.n as f64;
    assert!((par.score - mean).abs() < 1e-12);
    assert!(par.ci95.0 <= par.score && par.score <= par.ci95.1 && par.ci95.0 < par.ci95.1, "{:?}", par.ci95);
    // Item by item, one at a time: the same scores in the same places.
    for (i, e) in data.iter().enumerate() {
        let one = evaluate(&program, &env, std::slice::from_ref(e), &metric(), 1).await.unwrap();
        assert_eq!(one.per_item[0], par.per_item[i], "item {i}");
    }
    assert!(evaluate(&program, &env, &[], &metric(), 1).await.is_err());
}
