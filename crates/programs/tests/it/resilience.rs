//! The HTTP backends and the resilience layer against fault-injecting test servers that
//! speak the OpenAI chat-completions API and Ollama's chat API over real HTTP, and the
//! response cache on SQLite and on the real Redis at `KERNELIZE_TEST_REDIS_URL`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::post;
use bytes::Bytes;
use futures::StreamExt;
use kernelize_programs::cache::{RedisCache, ResponseCache, SqliteCache};
use kernelize_programs::http::{OllamaBackend, OpenAiBackend};
use kernelize_programs::lm::{Backend, DynBackend, Message, OutputFormat, Request, Role, Usage};
use kernelize_programs::resilience::{CircuitState, ResilienceConfig, Resilient};
use kernelize_programs::{Env, Error, FieldType, Predict, Signature, Values};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// The test server

/// What the server does with one request.
#[derive(Debug, Clone)]
enum Reply {
    /// A valid answer whose content is computed from the request: for the last user
    /// message `text: {t}`, `{"upper": T, "chars": len(t)}`.
    Auto,
    /// A valid answer with this content.
    Answer(&'static str),
    /// An error status, with a `Retry-After` when given.
    Status(u16, Option<&'static str>),
    /// 200 with a body that is not the protocol's JSON.
    Malformed,
    /// 200 with a 9 MiB body, chunked (no Content-Length).
    Huge,
    /// The answer streamed in these deltas, then the protocol's end.
    Stream(Vec<&'static str>),
    /// These deltas streamed, then the body ends without the protocol's end.
    StreamCut(Vec<&'static str>),
    /// One stream line over 1 MiB.
    HugeLine,
}

#[derive(Debug, Clone)]
struct Step {
    delay: Duration,
    reply: Reply,
}

fn now(reply: Reply) -> Step {
    Step { delay: Duration::ZERO, reply }
}

#[derive(Clone, Copy)]
enum Proto {
    OpenAi,
    Ollama,
}

struct Server {
    base: String,
    script: Mutex<VecDeque<Step>>,
    /// What happens when the script is used up.
    otherwise: Mutex<Step>,
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    bodies: Mutex<Vec<String>>,
}

impl Server {
    async fn start(script: Vec<Step>, otherwise: Step) -> Arc<Server> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = Arc::new(Server {
            base,
            script: Mutex::new(script.into()),
            otherwise: Mutex::new(otherwise),
            requests: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            bodies: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route(
                "/v1/chat/completions",
                post(|State(s): State<Arc<Server>>, body: String| s.handle(Proto::OpenAi, body)),
            )
            .route("/api/chat", post(|State(s): State<Arc<Server>>, body: String| s.handle(Proto::Ollama, body)))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        server
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn push(&self, steps: impl IntoIterator<Item = Step>) {
        self.script.lock().unwrap().extend(steps);
    }

    fn set_otherwise(&self, step: Step) {
        *self.otherwise.lock().unwrap() = step;
    }

    fn body(&self, i: usize) -> String {
        self.bodies.lock().unwrap()[i].clone()
    }

    async fn handle(self: Arc<Self>, proto: Proto, body: String) -> axum::response::Response {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(n, Ordering::SeqCst);
        let _in_flight = InFlight(self.clone());
        let step = self.script.lock().unwrap().pop_front().unwrap_or_else(|| self.otherwise.lock().unwrap().clone());
        self.bodies.lock().unwrap().push(body.clone());
        tokio::time::sleep(step.delay).await;
        render(proto, &step.reply, &body)
    }
}

struct InFlight(Arc<Server>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn auto_answer(body: &str) -> String {
    let req: Value = serde_json::from_str(body).unwrap();
    // The input is the last user message that is one (a parse retry adds feedback after it).
    let t = req["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|m| m["role"] == "user")
        .find_map(|m| m["content"].as_str().unwrap().strip_prefix("text: "))
        .unwrap();
    json!({"upper": t.to_uppercase(), "chars": t.chars().count()}).to_string()
}

fn answer_body(proto: Proto, content: &str) -> String {
    match proto {
        Proto::OpenAi => json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "test-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        }),
        Proto::Ollama => json!({
            "model": "test-model", "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": content},
            "done": true, "done_reason": "stop", "prompt_eval_count": 11, "eval_count": 7
        }),
    }
    .to_string()
}

fn stream_text(proto: Proto, deltas: &[&str], end: bool) -> String {
    let mut s = String::new();
    match proto {
        Proto::OpenAi => {
            for d in deltas {
                let ev = json!({"model": "test-model", "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": null}]});
                s.push_str(&format!("data: {ev}\n\n"));
            }
            if end {
                let fin = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
                let usage = json!({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": deltas.len()}});
                s.push_str(&format!(": a comment\r\ndata: {fin}\r\n\r\ndata: {usage}\n\ndata: [DONE]\n\n"));
            }
        }
        Proto::Ollama => {
            for d in deltas {
                let line =
                    json!({"model": "test-model", "message": {"role": "assistant", "content": d}, "done": false});
                s.push_str(&format!("{line}\n"));
            }
            if end {
                let line = json!({"model": "test-model", "message": {"role": "assistant", "content": ""}, "done": true,
                    "done_reason": "stop", "prompt_eval_count": 11, "eval_count": deltas.len()});
                s.push_str(&format!("{line}\n"));
            }
        }
    }
    s
}

/// A body sent in pieces of `size` bytes (cutting through events and lines), with a
/// short pause between pieces.
fn chunked(text: Vec<u8>, size: usize) -> Body {
    let pieces: Vec<Bytes> = text.chunks(size).map(Bytes::copy_from_slice).collect();
    Body::from_stream(futures::stream::iter(pieces).then(|p| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok::<_, Infallible>(p)
    }))
}

fn render(proto: Proto, reply: &Reply, body: &str) -> axum::response::Response {
    let json_type = match proto {
        Proto::OpenAi => "application/json",
        Proto::Ollama => "application/json; charset=utf-8",
    };
    let stream_type = match proto {
        Proto::OpenAi => "text/event-stream",
        Proto::Ollama => "application/x-ndjson",
    };
    let ok = |ct: &str, b: Body| {
        axum::response::Response::builder().status(StatusCode::OK).header(header::CONTENT_TYPE, ct).body(b).unwrap()
    };
    match reply {
        Reply::Auto => ok(json_type, Body::from(answer_body(proto, &auto_answer(body)))),
        Reply::Answer(c) => ok(json_type, Body::from(answer_body(proto, c))),
        Reply::Status(code, retry_after) => {
            let mut r = axum::response::Response::builder()
                .status(StatusCode::from_u16(*code).unwrap())
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(ra) = retry_after {
                r = r.header(header::RETRY_AFTER, *ra);
            }
            r.body(Body::from(json!({"error": {"message": format!("injected {code}")}}).to_string())).unwrap()
        }
        Reply::Malformed => ok(json_type, Body::from("<html>an error page, not JSON</html>")),
        Reply::Huge => ok(json_type, chunked(vec![b' '; 9 << 20], 1 << 20)),
        Reply::Stream(d) => ok(stream_type, chunked(stream_text(proto, d, true).into_bytes(), 23)),
        Reply::StreamCut(d) => ok(stream_type, chunked(stream_text(proto, d, false).into_bytes(), 23)),
        Reply::HugeLine => ok(stream_type, chunked([b"data: ".as_slice(), &vec![b'x'; 3 << 19]].concat(), 64 << 10)),
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

fn config() -> ResilienceConfig {
    ResilienceConfig {
        attempt_timeout: Duration::from_secs(3),
        call_timeout: Some(Duration::from_secs(8)),
        max_retries: 0,
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(5),
        breaker_threshold: 100,
        breaker_cooldown: Duration::from_millis(300),
        max_concurrency: 8,
        seed: Some(1),
    }
}

fn openai(server: &Server) -> OpenAiBackend {
    OpenAiBackend::new(&server.base, "test-model").unwrap().api_key("sk-test")
}

fn ollama(server: &Server) -> OllamaBackend {
    OllamaBackend::new(&server.base, "test-model").unwrap()
}

fn resilient(backends: Vec<DynBackend>, config: ResilienceConfig) -> Resilient {
    Resilient::new(backends, config).unwrap()
}

fn text_request(content: &str) -> Request {
    Request { messages: vec![Message::new(Role::User, format!("text: {content}"))], ..Request::default() }
}

fn upper_program() -> Predict {
    let sig = Signature::builder("Upper-case the text and count its characters.")
        .input("text", FieldType::String, "")
        .output("upper", FieldType::String, "the text in capitals")
        .output("chars", FieldType::Number, "")
        .build()
        .unwrap();
    Predict::new("upper", sig)
}

fn inputs(text: &str) -> Values {
    let mut v = Values::new();
    v.insert("text".into(), Value::from(text));
    v
}

async fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(t) = rx.recv().await {
        out.push(t);
    }
    out
}

/// A port nothing listens on.
async fn dead_base() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fails_within_timeout_plus_50ms() {
    let server = Server::start(vec![], Step { delay: Duration::from_secs(5), reply: Reply::Auto }).await;

    // One attempt, bounded by the attempt timeout.
    let cfg = ResilienceConfig { attempt_timeout: Duration::from_millis(200), call_timeout: None, ..config() };
    let lm = resilient(vec![Arc::new(openai(&server))], cfg);
    let start = Instant::now();
    let err = lm.complete(&text_request("slow"), None).await.unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(&err, Error::Timeout { backend, timeout } if backend == "openai:test-model" && *timeout == Duration::from_millis(200)),
        "{err}"
    );
    assert!(took >= Duration::from_millis(200) && took < Duration::from_millis(250), "took {took:?}");

    // The whole call, retries included, bounded by the call timeout.
    let cfg = ResilienceConfig {
        attempt_timeout: Duration::from_secs(10),
        call_timeout: Some(Duration::from_millis(300)),
        max_retries: 3,
        ..config()
    };
    let lm = resilient(vec![Arc::new(openai(&server))], cfg).named("wrapped");
    let start = Instant::now();
    let err = lm.complete(&text_request("slow"), None).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(&err, Error::Timeout { backend, .. } if backend == "wrapped"), "{err}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(350), "took {took:?}");

    // The timed-out calls were dropped: their connections closed, so the server's
    // handlers were dropped too (long before their 5 s delay ended).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.requests(), 2);
    assert_eq!(server.in_flight.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_waited_for_then_the_retry_succeeds() {
    let server = Server::start(vec![now(Reply::Status(429, Some("1")))], now(Reply::Auto)).await;
    let lm = resilient(vec![Arc::new(openai(&server))], ResilienceConfig { max_retries: 2, ..config() });
    let start = Instant::now();
    let resp = lm.complete(&text_request("abc"), None).await.unwrap();
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(1), "retried after {took:?}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(resp.attempts, 2);
    assert_eq!(server.requests(), 2);
    assert_eq!(serde_json::from_str::<Value>(&resp.text).unwrap(), json!({"upper": "ABC", "chars": 3}));
    assert_eq!(resp.usage, Usage { prompt_tokens: 11, completion_tokens: 7 });
    assert_eq!(resp.backend, "openai:test-model");
    assert!(!resp.cached);
    // The API key went as a bearer token (checked by the server seeing the request at
    // all is not enough: the body does not carry it).
    assert!(!server.body(0).contains("sk-test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_fails_fast_then_half_opens_and_closes() {
    let server = Server::start(vec![], now(Reply::Status(500, None))).await;
    let cfg = ResilienceConfig { breaker_threshold: 3, breaker_cooldown: Duration::from_millis(300), ..config() };
    let lm = resilient(vec![Arc::new(openai(&server))], cfg);
    let req = text_request("x");
    for i in 1..=3 {
        let err = lm.complete(&req, None).await.unwrap_err();
        assert!(matches!(&err, Error::Backend { retryable: true, message, .. } if message.contains("500")), "{err}");
        assert_eq!(server.requests(), i);
    }
    assert!(matches!(lm.circuits()[0].1, CircuitState::Open { .. }));

    // Open: fails fast, the server sees nothing.
    for _ in 0..5 {
        let start = Instant::now();
        let err = lm.complete(&req, None).await.unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, Error::CircuitOpen { .. }), "{err}");
        assert!(took < Duration::from_millis(5), "took {took:?}");
    }
    assert_eq!(server.requests(), 3);

    // After the cool-down one probe goes through; it fails, the circuit reopens.
    tokio::time::sleep(Duration::from_millis(320)).await;
    assert_eq!(lm.circuits()[0].1, CircuitState::HalfOpen);
    assert!(matches!(lm.complete(&req, None).await.unwrap_err(), Error::Backend { .. }));
    assert_eq!(server.requests(), 4);
    assert!(matches!(lm.complete(&req, None).await.unwrap_err(), Error::CircuitOpen { .. }));
    assert_eq!(server.requests(), 4);

    // The server recovers; the next probe succeeds and closes the circuit.
    server.set_otherwise(now(Reply::Auto));
    tokio::time::sleep(Duration::from_millis(320)).await;
    let resp = lm.complete(&req, None).await.unwrap();
    assert_eq!(resp.attempts, 1);
    assert_eq!(server.requests(), 5);
    assert_eq!(lm.circuits()[0].1, CircuitState::Closed { failures: 0 });
    lm.complete(&req, None).await.unwrap();
    assert_eq!(server.requests(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_chain_answers_from_the_second_backend() {
    let server = Server::start(vec![], now(Reply::Auto)).await;
    let primary = OpenAiBackend::new(&dead_base().await, "test-model").unwrap().named("primary");
    let secondary = openai(&server).named("secondary");
    let cfg = ResilienceConfig { max_retries: 1, breaker_threshold: 2, ..config() };
    let lm = resilient(vec![Arc::new(primary), Arc::new(secondary)], cfg);
    assert_eq!(lm.name(), "primary|secondary");

    let resp = lm.complete(&text_request("hi"), None).await.unwrap();
    assert_eq!(resp.backend, "secondary");
    assert_eq!(resp.attempts, 3, "two at the primary (connection refused, retried), one at the secondary");
    assert_eq!(serde_json::from_str::<Value>(&resp.text).unwrap(), json!({"upper": "HI", "chars": 2}));
    assert_eq!(server.requests(), 1);

    // The primary's circuit is open now: the chain goes straight to the secondary.
    assert!(matches!(lm.circuits()[0].1, CircuitState::Open { .. }));
    let start = Instant::now();
    let resp = lm.complete(&text_request("again"), None).await.unwrap();
    assert_eq!(resp.backend, "secondary");
    assert_eq!(resp.attempts, 1);
    assert!(start.elapsed() < Duration::from_millis(500));
    assert_eq!(server.requests(), 2);

    // Scoring goes to the first backend whose circuit is not open (HTTP backends cannot
    // score, and say which one was asked).
    let err = lm.score(&text_request("x"), &["a".into()]).await.unwrap_err();
    assert!(matches!(&err, Error::Invalid(m) if m.contains("secondary")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_then_valid_output_gives_a_typed_result_after_one_retry() {
    let server = Server::start(vec![now(Reply::Answer("I think it is HELLO, five letters."))], now(Reply::Auto)).await;
    let env = Env::new(Arc::new(resilient(vec![Arc::new(openai(&server))], config())));
    let program = upper_program();
    let input = inputs("hello");
    let pred = program.forward(&env, &input).await.unwrap();
    assert_eq!(pred.outputs["upper"], "HELLO");
    assert_eq!(pred.outputs["chars"], 5);
    assert_eq!(server.requests(), 2);
    assert_eq!(pred.calls.len(), 2);
    assert!(pred.calls.iter().all(|c| c.backend == "openai:test-model" && c.attempts == 1 && !c.cached));

    // The schema went verbatim (property order kept: upper before chars) as a strict
    // json_schema response format; the retry carried the parse error back.
    let schema = program.effective_signature().output_schema(&input);
    assert!(schema.find("\"upper\"") < schema.find("\"chars\""));
    let first = server.body(0);
    let expected = format!(
        r#""response_format":{{"type":"json_schema","json_schema":{{"name":"answer","strict":true,"schema":{schema}}}}}"#
    );
    assert!(first.contains(&expected), "{first}");
    assert!(first.contains(r#""model":"test-model""#) && first.contains(r#""stream":false"#), "{first}");
    assert!(first.contains(r#""temperature":0.0"#) && first.contains(r#""max_tokens":256"#), "{first}");
    let second: Value = serde_json::from_str(&server.body(1)).unwrap();
    let msgs = second["messages"].as_array().unwrap();
    assert_eq!(msgs[msgs.len() - 2]["content"], "I think it is HELLO, five letters.");
    assert!(msgs[msgs.len() - 1]["content"].as_str().unwrap().contains("cannot be used"));

    // Two malformed answers: a parse error that carries the raw output.
    server.push([now(Reply::Answer("no idea")), now(Reply::Answer("still no JSON here"))]);
    let err = program.forward(&env, &input).await.unwrap_err();
    match err {
        Error::Parse { backend, raw, .. } => {
            assert_eq!(backend, "openai:test-model");
            assert_eq!(raw, "still no JSON here");
        }
        other => panic!("expected a parse error, got {other}"),
    }
    assert_eq!(server.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_passes_against_the_ollama_api() {
    let server = Server::start(vec![now(Reply::Answer("HELLO!"))], now(Reply::Auto)).await;
    let env = Env::new(Arc::new(resilient(vec![Arc::new(ollama(&server))], config())));
    let program = upper_program();
    let input = inputs("hello world");
    let pred = program.forward(&env, &input).await.unwrap();
    assert_eq!(pred.outputs["upper"], "HELLO WORLD");
    assert_eq!(pred.outputs["chars"], 11);
    assert_eq!(server.requests(), 2, "one parse retry");
    assert_eq!(pred.calls[1].backend, "ollama:test-model");
    assert_eq!(pred.calls[1].usage, Usage { prompt_tokens: 11, completion_tokens: 7 });

    let schema = program.effective_signature().output_schema(&input);
    let body = server.body(0);
    assert!(body.contains(&format!(r#""format":{schema}"#)), "{body}");
    assert!(body.contains(r#""options":{"temperature":0.0,"top_p":1.0,"seed":0,"num_predict":256}"#), "{body}");
    assert!(body.contains(r#""stream":false"#), "{body}");

    let pred = program.forward(&env, &inputs("abc")).await.unwrap();
    assert_eq!(pred.outputs["upper"], "ABC");
    assert_eq!(server.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_delivers_deltas_in_order_and_retries_before_the_first_token() {
    let deltas = vec!["Hel", "lo", ", wör", "ld", "!"];
    let server = Server::start(
        vec![now(Reply::Status(503, None)), now(Reply::Stream(deltas.clone()))],
        now(Reply::Status(500, None)),
    )
    .await;
    let lm = resilient(vec![Arc::new(openai(&server))], ResilienceConfig { max_retries: 2, ..config() });
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let resp = lm.complete(&text_request("greet"), Some(tx)).await.unwrap();
    assert_eq!(collect(rx).await, deltas);
    assert_eq!(resp.text, "Hello, wörld!");
    assert_eq!(resp.attempts, 2);
    assert_eq!(resp.finish_reason, "stop");
    assert_eq!(resp.usage, Usage { prompt_tokens: 11, completion_tokens: 5 });
    assert_eq!(server.requests(), 2);
    let body = server.body(1);
    assert!(body.contains(r#""stream":true"#) && body.contains(r#""stream_options":{"include_usage":true}"#), "{body}");

    // After the first token has reached the caller, an error is not retried.
    server.push([now(Reply::StreamCut(vec!["Par", "tial"]))]);
    server.set_otherwise(now(Reply::Auto));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let err = lm.complete(&text_request("greet"), Some(tx)).await.unwrap_err();
    assert!(matches!(&err, Error::Backend { retryable: true, message, .. } if message.contains("[DONE]")), "{err}");
    assert_eq!(collect(rx).await, vec!["Par", "tial"]);
    assert_eq!(server.requests(), 3, "no retry after a token was delivered");

    // The same over Ollama's NDJSON stream, with its 503 retried too.
    server.push([now(Reply::Status(503, Some("0"))), now(Reply::Stream(deltas.clone()))]);
    let lm = resilient(vec![Arc::new(ollama(&server))], ResilienceConfig { max_retries: 2, ..config() });
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let resp = lm.complete(&text_request("greet"), Some(tx)).await.unwrap();
    assert_eq!(collect(rx).await, deltas);
    assert_eq!(resp.text, "Hello, wörld!");
    assert_eq!(resp.attempts, 2);
    assert_eq!(resp.usage, Usage { prompt_tokens: 11, completion_tokens: 5 });
    assert!(server.body(4).contains(r#""stream":true"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_controlled_sizes_and_shapes_are_bounded() {
    let server = Server::start(
        vec![
            now(Reply::Malformed),
            now(Reply::Huge),
            now(Reply::HugeLine),
            now(Reply::Status(401, None)),
            now(Reply::Malformed),
        ],
        now(Reply::Auto),
    )
    .await;
    // Retries on, to show these failures are not retried (the server counts them).
    let lm = resilient(vec![Arc::new(openai(&server))], ResilienceConfig { max_retries: 2, ..config() });
    let req = text_request("x");

    let err = lm.complete(&req, None).await.unwrap_err();
    assert!(
        matches!(&err, Error::Backend { backend, message, retryable: false, .. }
            if backend == "openai:test-model" && message.contains("not the expected JSON") && message.contains("<html>")),
        "{err}"
    );
    assert_eq!(server.requests(), 1);

    let err = lm.complete(&req, None).await.unwrap_err();
    assert!(matches!(&err, Error::Backend { message, .. } if message.contains("8 MiB")), "{err}");
    assert_eq!(server.requests(), 2);

    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let err = lm.complete(&req, Some(tx)).await.unwrap_err();
    assert!(matches!(&err, Error::Backend { message, .. } if message.contains("1 MiB")), "{err}");
    assert_eq!(server.requests(), 3);

    let err = lm.complete(&req, None).await.unwrap_err();
    assert!(
        matches!(&err, Error::Backend { message, retryable: false, .. } if message.contains("401") && message.contains("injected 401")),
        "{err}"
    );
    assert_eq!(server.requests(), 4);

    let err = ollama(&server).complete(&req, None).await.unwrap_err();
    assert!(
        matches!(&err, Error::Backend { backend, message, .. } if backend == "ollama:test-model" && message.contains("not the expected JSON")),
        "{err}"
    );

    // A schema that is not JSON is the caller's error, found before anything is sent.
    let bad = Request { format: OutputFormat::Json { schema: "{not json".into() }, ..req.clone() };
    assert!(matches!(lm.complete(&bad, None).await.unwrap_err(), Error::Invalid(_)));
    assert_eq!(server.requests(), 5);
}

async fn run_program_twice(cache: Arc<dyn ResponseCache>) {
    let server = Server::start(vec![], now(Reply::Auto)).await;
    let lm = resilient(vec![Arc::new(openai(&server))], config()).with_cache(cache);
    let env = Env::new(Arc::new(lm));
    let mut program = upper_program();
    // Sampled answers are cached too: the seed is part of the key.
    program.sampling.temperature = 0.7;
    program.sampling.seed = 42;
    let words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"];

    let mut first = Vec::new();
    for w in words {
        let pred = program.forward(&env, &inputs(w)).await.unwrap();
        assert_eq!(pred.outputs["upper"], w.to_uppercase());
        assert!(!pred.calls[0].cached && pred.calls[0].attempts == 1);
        first.push(pred.outputs);
    }
    assert_eq!(server.requests(), words.len());

    for (w, expected) in words.iter().zip(&first) {
        let pred = program.forward(&env, &inputs(w)).await.unwrap();
        assert_eq!(&pred.outputs, expected);
        let call = &pred.calls[0];
        assert!(call.cached, "{w}");
        assert_eq!(call.attempts, 0);
        assert_eq!(call.usage, Usage::default());
        assert_eq!(call.backend, "openai:test-model");
    }
    assert_eq!(server.requests(), words.len(), "the second run made no backend request");

    // Another seed is another key.
    program.sampling.seed = 43;
    program.forward(&env, &inputs("alpha")).await.unwrap();
    assert_eq!(server.requests(), words.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_sqlite_second_run_makes_no_requests() {
    let dir = tempfile::tempdir().unwrap();
    let cache = SqliteCache::open(dir.path()).await.unwrap();
    run_program_twice(Arc::new(cache.clone())).await;
    assert_eq!(cache.len().await.unwrap(), 11);
    assert!(dir.path().join("llm-cache.sqlite").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_redis_second_run_makes_no_requests() {
    let url = std::env::var("KERNELIZE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let prefix = format!("kernelize-test:{}:{nanos}:", std::process::id());
    let cache = Arc::new(RedisCache::new(&url, prefix, Some(Duration::from_secs(600))).unwrap());
    run_program_twice(cache.clone()).await;
    assert_eq!(cache.clear().await.unwrap(), 11, "exactly this run's answers were stored, and are deleted");
    assert_eq!(cache.clear().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_cap_bounds_requests_in_flight() {
    let server = Server::start(vec![], Step { delay: Duration::from_millis(150), reply: Reply::Auto }).await;
    let lm = resilient(vec![Arc::new(openai(&server))], ResilienceConfig { max_concurrency: 2, ..config() });
    let reqs: Vec<Request> = (0..6).map(|i| text_request(&format!("call {i}"))).collect();
    let start = Instant::now();
    let results = futures::future::join_all(reqs.iter().map(|r| lm.complete(r, None))).await;
    let took = start.elapsed();
    for (i, r) in results.into_iter().enumerate() {
        assert!(r.unwrap().text.contains(&format!("CALL {i}")));
    }
    assert_eq!(server.requests(), 6);
    assert_eq!(server.max_in_flight.load(Ordering::SeqCst), 2, "never more than the cap, and the cap was used");
    assert!(took >= Duration::from_millis(450), "three waves of two: {took:?}");
}
