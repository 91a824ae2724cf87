//! The local model (SmolLM2-135M-Instruct, Q4_1 GGUF) in process: generation, constrained
//! decoding, label scoring, prefix reuse, streaming, cancellation.

use std::sync::Arc;
use std::time::Duration;

use kernelize_programs::local::{LocalConfig, LocalModel};
use kernelize_programs::signature::check_json;
use kernelize_programs::{Backend, Message, OutputFormat, Request, Role, Sampling};
use serde_json::Value;
use tokio::sync::OnceCell;

/// The model, loaded once for the test binary (every test module shares it).
pub async fn model() -> Arc<LocalModel> {
    static MODEL: OnceCell<Arc<LocalModel>> = OnceCell::const_new();
    MODEL
        .get_or_init(|| async {
            let cfg = LocalConfig { threads: 2, context: 4096, ..LocalConfig::default_model() };
            Arc::new(
                tokio::task::spawn_blocking(move || LocalModel::load(&cfg))
                    .await
                    .unwrap()
                    .expect("the local model (run `kernelize models install`)"),
            )
        })
        .await
        .clone()
}

fn ask(q: &str) -> Vec<Message> {
    vec![Message::new(Role::System, "You are a concise assistant."), Message::new(Role::User, q)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generates_text_and_streams_the_same_text() {
    let m = model().await;
    let req = Request {
        messages: ask("Name three colours."),
        sampling: Sampling { max_tokens: 24, ..Sampling::default() },
        ..Request::default()
    };
    let a = m.complete(&req, None).await.unwrap();
    assert!(!a.text.trim().is_empty());
    assert!(a.usage.prompt_tokens > 5 && a.usage.completion_tokens > 0);
    assert!(a.usage.completion_tokens <= 24);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let b = m.complete(&req, Some(tx)).await.unwrap();
    let mut streamed = String::new();
    while let Ok(d) = rx.try_recv() {
        streamed.push_str(&d);
    }
    // Temperature 0, the same prompt (now from the prefix cache): the same answer.
    assert_eq!(a.text, b.text);
    assert_eq!(streamed, b.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constrained_answers_always_fit_the_schema() {
    let m = model().await;
    let schemas = [
        r#"{"type":"object","properties":{"label":{"type":"string","enum":["noun.animal","noun.plant","verb.motion"]}},"required":["label"],"additionalProperties":false}"#,
        r#"{"type":"object","properties":{"reasoning":{"type":"string","maxLength":300},"n":{"type":"number"},"ok":{"type":"boolean"}},"required":["reasoning","n","ok"],"additionalProperties":false}"#,
        r#"{"type":"object","properties":{"tags":{"type":"array","items":{"type":"string"},"maxItems":4},"who":{"type":"object","properties":{"name":{"type":"string","maxLength":40},"age":{"type":"integer"}},"required":["name","age"],"additionalProperties":false}},"required":["tags","who"],"additionalProperties":false}"#,
    ];
    let questions =
        ["Describe a dog.", "What is 2 + 3?", "Who wrote Hamlet?", "Is water wet?", "Classify: an oak tree."];
    for schema in schemas {
        let parsed: Value = serde_json::from_str(schema).unwrap();
        for q in questions {
            let req = Request {
                messages: ask(q),
                format: OutputFormat::Json { schema: schema.to_owned() },
                sampling: Sampling { max_tokens: 160, ..Sampling::default() },
                stop: Vec::new(),
            };
            let a = m.complete(&req, None).await.unwrap();
            assert_eq!(a.finish_reason, "stop", "{q}: the grammar ends the answer: {}", a.text);
            let v: Value = serde_json::from_str(&a.text).unwrap_or_else(|e| panic!("{q}: {e}: {}", a.text));
            check_json(&parsed, &v, "$", 0).unwrap_or_else(|e| panic!("{q}: {e}: {}", a.text));
        }
    }
    // Property order: reasoning first, as the schema text says (not sorted).
    let req = Request {
        messages: ask("What is 2 + 3?"),
        format: OutputFormat::Json {
            schema: r#"{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"number"}},"required":["zeta","alpha"],"additionalProperties":false}"#.into(),
        },
        sampling: Sampling { max_tokens: 120, ..Sampling::default() },
        stop: Vec::new(),
    };
    let a = m.complete(&req, None).await.unwrap();
    assert!(a.text.find("\"zeta\"").unwrap() < a.text.find("\"alpha\"").unwrap(), "{}", a.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_are_log_probabilities_independent_of_the_cache() {
    let m = model().await;
    let req = Request { messages: ask("Is the sky blue? Answer yes or no."), ..Request::default() };
    let labels: Vec<String> = ["yes", "no", "purple elephant"].iter().map(|s| (*s).to_owned()).collect();
    let a = m.score(&req, &labels).await.unwrap();
    assert_eq!(a.len(), 3);
    assert!(a.iter().all(|s| s.is_finite() && *s < 0.0), "{a:?}");
    // A longer, unlikely continuation is less likely than a short plausible one.
    assert!(a[2] < a[0].max(a[1]), "{a:?}");
    // Another prompt in between (the cache changes), then the same scores in another order.
    m.complete(&Request { messages: ask("Hello"), ..Request::default() }, None).await.unwrap();
    let rev: Vec<String> = labels.iter().rev().cloned().collect();
    let b = m.score(&req, &rev).await.unwrap();
    for (x, y) in a.iter().zip(b.iter().rev()) {
        assert!((x - y).abs() < 1e-3, "{a:?} vs {b:?}");
    }
    // Probabilities of the two single answers sum to at most 1.
    assert!(a[0].exp() + a[1].exp() <= 1.0 + 1e-6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_stops_and_the_model_keeps_serving() {
    // A model of its own: the shared one queues other tests' calls.
    let cfg = LocalConfig { threads: 2, context: 2048, ..LocalConfig::default_model() };
    let m = tokio::task::spawn_blocking(move || LocalModel::load(&cfg)).await.unwrap().unwrap();
    let long = Request {
        messages: ask("Write a long story about a lighthouse keeper."),
        sampling: Sampling { max_tokens: 1500, ..Sampling::default() },
        ..Request::default()
    };
    let r = tokio::time::timeout(Duration::from_millis(200), m.complete(&long, None)).await;
    assert!(r.is_err(), "the long call should still be running at 200 ms");
    let t = std::time::Instant::now();
    let short = Request {
        messages: ask("Say hi."),
        sampling: Sampling { max_tokens: 4, ..Sampling::default() },
        ..Request::default()
    };
    let a = m.complete(&short, None).await.unwrap();
    assert!(a.usage.completion_tokens <= 4);
    // The cancelled job stopped between tokens instead of writing 1500 of them first.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_long_prompts_and_bad_schemas_are_refused() {
    let m = model().await;
    let huge = "word ".repeat(5000);
    let e = m.complete(&Request { messages: ask(&huge), ..Request::default() }, None).await.unwrap_err();
    assert!(e.to_string().contains("context"), "{e}");
    let e = m
        .complete(
            &Request {
                messages: ask("x"),
                format: OutputFormat::Json { schema: r#"{"type":"object","patternProperties":{}}"#.into() },
                ..Request::default()
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("patternProperties"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_do_not_depend_on_what_the_cache_held() {
    let m = model().await;
    let system = "You label things. ".repeat(30);
    let ask_with = |user: &str| vec![Message::new(Role::System, system.clone()), Message::new(Role::User, user)];
    let req = |messages| {
        Request {
        messages,
        format: OutputFormat::Json {
            schema: r#"{"type":"object","properties":{"label":{"type":"string","maxLength":60}},"required":["label"],"additionalProperties":false}"#.into(),
        },
        sampling: Sampling { max_tokens: 40, ..Sampling::default() },
        stop: Vec::new(),
    }
    };
    let target = req(ask_with("A small furry animal that barks."));
    // After a prompt sharing the long system message (part of the prefix reused) ...
    m.complete(&req(ask_with("Something else entirely.")), None).await.unwrap();
    let a = m.complete(&target, None).await.unwrap();
    // ... after an unrelated prompt (nothing reused) ...
    m.complete(&req(ask("Hello there")), None).await.unwrap();
    let b = m.complete(&target, None).await.unwrap();
    // ... and right after itself (everything reusable).
    let c = m.complete(&target, None).await.unwrap();
    assert_eq!(a.text, b.text);
    assert_eq!(b.text, c.text);
}
