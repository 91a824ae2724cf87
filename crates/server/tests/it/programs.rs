//! LLM programs over real HTTP on the real local model (SmolLM2-135M-Instruct, installed
//! by `kernelize models install`): register/list/get/delete with versions, runs (JSON
//! and server-sent events) recorded with their usage, a chat completion grounded in a
//! hosted kernel, the missing-model answer, authorization and bad input.

use crate::both_backends;
use crate::common::{ADMIN_KEY, Backend, TestServer};
use crate::matrix_programs::yes_no_program;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// `(event, data)` of each event of a `text/event-stream` body (comments skipped).
pub fn sse_events(body: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        let (mut event, mut data) = (String::from("message"), Vec::new());
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push(d.strip_prefix(' ').unwrap_or(d).to_owned());
            }
        }
        if !data.is_empty() {
            out.push((event, data.join("\n")));
        }
    }
    out
}

/// Outcomes of the audit entries of `action`, in order.
async fn audited(ts: &TestServer, action: &str) -> Vec<String> {
    let (_, audit) = ts.get(ADMIN_KEY, &format!("/v1/audit?action={action}&limit=100")).await;
    audit["entries"].as_array().unwrap().iter().map(|e| e["outcome"].as_str().unwrap().to_owned()).collect()
}

fn assert_error(s: StatusCode, v: &Value, status: StatusCode, says: &str) {
    assert_eq!(s, status, "{v}");
    let msg = v["message"].as_str().unwrap_or_else(|| panic!("no error shape: {v}"));
    assert!(msg.contains(says), "{msg:?} should say {says:?}");
}

async fn programs_over_http(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let reader = ts.key("reader", None).await;
    let writer = ts.key("writer", None).await;

    // Authentication and roles.
    let (s, _) = ts.call(None, Method::GET, "/v1/programs", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let body = json!({"name": "qa", "program": yes_no_program()});
    let (s, v) = ts.post(&reader, "/v1/programs", body.clone()).await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "needs writer");

    // Register twice: two versions.
    let (s, v) = ts.post(&writer, "/v1/programs", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!((v["version"].as_i64(), v["inputs"].clone()), (Some(1), json!(["question"])), "{v}");
    let mut second = body.clone();
    second["description"] = json!("v2");
    let (s, v) = ts.post(&writer, "/v1/programs", second).await;
    assert_eq!((s, v["version"].as_i64(), v["versions"].clone()), (StatusCode::CREATED, Some(2), json!([1, 2])), "{v}");
    let (s, v) = ts.get(&reader, "/v1/programs").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["programs"],
        json!([{"name": "qa", "version": 2, "versions": 2, "updated_at": v["programs"][0]["updated_at"], "description": "v2"}])
    );
    let (s, v) = ts.get(&reader, "/v1/programs/qa?version=1").await;
    assert_eq!((s, v["version"].as_i64(), v["origin"].as_str()), (StatusCode::OK, Some(1), Some("registered")), "{v}");
    assert_eq!(v["program"]["signature"]["outputs"][0]["labels"], json!(["yes", "no"]));

    // Bad input: 4xx with what is wrong, never 5xx.
    let mut bad_type = yes_no_program();
    bad_type["signature"]["outputs"][0]["type"] = json!("colour");
    let mut long = yes_no_program();
    long["sampling"]["max_tokens"] = json!(100_000);
    for (b, status, says) in [
        (json!({"name": "x", "program": {"module": "nope"}}), StatusCode::BAD_REQUEST, "program"),
        (json!({"name": "x", "program": bad_type}), StatusCode::BAD_REQUEST, "unknown variant `colour`"),
        (json!({"name": "-x", "program": yes_no_program()}), StatusCode::BAD_REQUEST, "program name"),
        (json!({"name": "runs", "program": yes_no_program()}), StatusCode::BAD_REQUEST, "reserved"),
        (json!({"name": "x"}), StatusCode::BAD_REQUEST, "program"),
        (json!({"name": "x", "program": long}), StatusCode::BAD_REQUEST, "sampling.max_tokens 100000: 1 to 256"),
    ] {
        let (s, v) = ts.post(&writer, "/v1/programs", b).await;
        assert_error(s, &v, status, says);
    }
    let (s, v) = ts.get(&reader, "/v1/programs/nope").await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "no program");
    let (s, v) = ts.get(&reader, "/v1/programs/qa?version=9").await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "no version 9");
    let (s, v) = ts.post(&reader, "/v1/programs/qa/run", json!({"inputs": {"colour": "red"}})).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "not one of the program's inputs");
    let (s, v) = ts.post(&reader, "/v1/programs/qa/run", json!({"inputs": {"question": 7}})).await;
    assert!(s.is_client_error(), "{s} {v}");
    let (s, v) = ts.get(&reader, "/v1/programs/runs?limit=0").await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "limit");
    let (s, v) = ts.get(&reader, "/v1/programs/runs?cursor=zzz").await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "cursor");

    // A run on the local model: a label, its call, its usage.
    let (s, v) = ts.post(&reader, "/v1/programs/qa/run", json!({"inputs": {"question": "Is the sky blue?"}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(["yes", "no"].contains(&v["outputs"]["answer"].as_str().unwrap()), "{v}");
    assert_eq!((v["program"].as_str(), v["version"].as_i64()), (Some("qa"), Some(2)));
    let call = &v["calls"][0];
    assert_eq!(call["module"], "judge", "{v}");
    assert!(call["backend"].as_str().unwrap().starts_with("local:"), "{v}");
    assert!(call["prompt_tokens"].as_u64().unwrap() > 10 && call["completion_tokens"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(call["cache_hit"], false);
    let total = v["usage"]["total_tokens"].as_u64().unwrap();
    assert!(total > 10, "{v}");
    // The same input again: answered from the response cache, no tokens spent.
    let (s, again) = ts
        .post(&reader, "/v1/programs/qa/run", json!({"inputs": {"question": "Is the sky blue?"}, "version": 2}))
        .await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["outputs"], v["outputs"]);
    assert_eq!(
        (again["calls"][0]["cache_hit"].as_bool(), again["usage"]["total_tokens"].as_u64()),
        (Some(true), Some(0)),
        "{again}"
    );
    // The writer's run of version 1.
    let (s, w) =
        ts.post(&writer, "/v1/programs/qa/run", json!({"inputs": {"question": "Is ice cold?"}, "version": 1})).await;
    assert_eq!(s, StatusCode::OK, "{w}");

    // Runs: each key sees its own (the admin all), newest first, with usage; paged.
    let (s, runs) = ts.get(&reader, "/v1/programs/runs").await;
    assert_eq!(s, StatusCode::OK, "{runs}");
    let list = runs["runs"].as_array().unwrap();
    assert_eq!(list.len(), 3, "two runs and one refused input (checked by the program): {runs}");
    assert!(list.iter().all(|r| r["principal"].as_str().unwrap().starts_with("key:")));
    let ok: Vec<&Value> = list.iter().filter(|r| r["ok"] == true).collect();
    assert_eq!(ok.len(), 2, "{runs}");
    assert_eq!(ok[1]["id"], v["run_id"], "newest first: {runs}");
    assert_eq!(ok[1]["usage"]["total_tokens"].as_u64(), Some(total));
    assert_eq!((ok[0]["cached_calls"].as_i64(), ok[0]["calls"].as_i64()), (Some(1), Some(1)));
    assert!(list.iter().any(|r| r["ok"] == false && r["error"].as_str().unwrap().contains("400")), "{runs}");
    assert_eq!(runs["usage"]["total_tokens"].as_u64(), Some(total));
    let (_, all) = ts.get(ADMIN_KEY, "/v1/programs/runs?program=qa").await;
    assert_eq!(all["runs"].as_array().unwrap().len(), 4, "{all}");
    let (_, page) = ts.get(ADMIN_KEY, "/v1/programs/runs?program=qa&limit=2").await;
    assert_eq!(page["runs"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = ts.get(ADMIN_KEY, &format!("/v1/programs/runs?program=qa&limit=10&cursor={cursor}")).await;
    assert_eq!(rest["runs"].as_array().unwrap().len(), 2, "{rest}");
    assert!(rest["next_cursor"].is_null());
    assert_eq!(rest["runs"][0]["id"], all["runs"][2]["id"]);
    let (_, none) = ts.get(ADMIN_KEY, "/v1/programs/runs?program=other").await;
    assert!(none["runs"].as_array().unwrap().is_empty());
    // The key's usage counts its tokens.
    let (_, keys) = ts.get(ADMIN_KEY, "/v1/keys").await;
    let rid = keys["keys"].as_array().unwrap().iter().find(|k| k["name"] == "test-reader").unwrap()["id"].clone();
    let (_, usage) = ts.get(ADMIN_KEY, "/v1/usage").await;
    let row = usage["keys"].as_array().unwrap().iter().find(|k| k["key_id"] == rid).unwrap();
    assert_eq!(row["llm_tokens"].as_u64(), Some(total), "{usage}");

    // Delete: writers only; runs stay.
    let (s, _) = ts.call(Some(&reader), Method::DELETE, "/v1/programs/qa", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = ts.call(Some(&writer), Method::DELETE, "/v1/programs/qa", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(ts.get(&reader, "/v1/programs/qa").await.0, StatusCode::NOT_FOUND);
    assert_eq!(ts.call(Some(&writer), Method::DELETE, "/v1/programs/qa", None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(ts.get(ADMIN_KEY, "/v1/programs/runs?program=qa").await.1["runs"].as_array().unwrap().len(), 4);

    // Registrations and deletions are audited.
    assert_eq!(
        audited(&ts, "programs.register").await,
        ["denied", "ok", "ok", "error", "error", "error", "error", "error", "error"]
    );
    assert_eq!(audited(&ts, "programs.delete").await, ["denied", "ok", "error"]);
    ts.shutdown().await;
}

both_backends!(programs_over_http_both, programs_over_http);

/// A streamed run: token deltas, the call, then the prediction; the run is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_run_streams_server_sent_events() {
    let ts = TestServer::start(Backend::Sqlite).await;
    crate::matrix_programs::register(&ts, "qa").await;
    let resp = ts
        .client
        .post(format!("{}/v1/programs/qa/run", ts.base))
        .bearer_auth(ADMIN_KEY)
        .header("accept", "text/event-stream")
        .json(&json!({"inputs": {"question": "Do fish swim?"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let body = resp.text().await.unwrap();
    let events = sse_events(&body);
    let kinds: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert!(kinds.first() == Some(&"token"), "{body}");
    assert_eq!(kinds.last(), Some(&"prediction"), "{body}");
    let calls: Vec<&(String, String)> = events.iter().filter(|(e, _)| e == "call").collect();
    assert_eq!(calls.len(), 1, "{body}");
    let tokens: String = events
        .iter()
        .filter(|(e, _)| e == "token")
        .map(|(_, d)| serde_json::from_str::<Value>(d).unwrap()["text"].as_str().unwrap().to_owned())
        .collect();
    let pred: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    // The token deltas are the model's whole answer: the JSON object the outputs came from.
    let answer: Value = serde_json::from_str(&tokens).unwrap_or_else(|e| panic!("{tokens:?}: {e}"));
    assert_eq!(answer["answer"], pred["outputs"]["answer"], "{body}");
    let call: Value = serde_json::from_str(&calls[0].1).unwrap();
    assert_eq!(call["completion_tokens"], pred["calls"][0]["completion_tokens"]);
    let (_, runs) = ts.get(ADMIN_KEY, "/v1/programs/runs").await;
    assert_eq!(runs["runs"][0]["id"], pred["run_id"], "{runs}");
    assert_eq!(runs["runs"][0]["ok"], true);

    // `"stream": false` wins over the Accept header; errors of a stream are events too.
    let (s, v) = ts
        .post(ADMIN_KEY, "/v1/programs/qa/run", json!({"inputs": {"question": "Do fish swim?"}, "stream": false}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    ts.shutdown().await;
}

/// Collection `facts` (four one-sentence facts, `f1` "The capital of France is Paris."
/// …, embedded by the server) and a kernel built from it; returns the kernel's id.
pub(crate) async fn facts_kernel(ts: &TestServer) -> String {
    ts.create_collection("facts", 384).await;
    let facts = [
        ("f1", "The capital of France is Paris."),
        ("f2", "Bananas are yellow when ripe."),
        ("f3", "The Pacific is the largest ocean."),
        ("f4", "Water boils at 100 degrees Celsius at sea level."),
    ];
    let recs: Vec<Value> = facts.iter().map(|(id, t)| json!({"id": id, "text": t})).collect();
    let (s, v) = ts.post(ADMIN_KEY, "/v1/collections/facts/records", json!({"records": recs})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    crate::common::build_kernel(ts, json!({"collection": "facts", "dedup": false})).await
}

/// Chat completions (non-streamed) grounded in a hosted kernel: the passages' ids come
/// back in the `kernelize` extension; `/v1/models` lists the local model; bad input is 4xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_grounded_in_a_kernel() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let kernel = facts_kernel(&ts).await;

    let (s, models) = ts.get(ADMIN_KEY, "/v1/models").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct", "{models}");
    let body = json!({"model": "SmolLM2-135M-Instruct", "temperature": 0, "max_tokens": 24,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "kernelize": {"kernel": kernel, "k": 2}});
    let (s, v) = ts.post(ADMIN_KEY, "/v1/chat/completions", body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["kernelize"]["passage_ids"][0], "f1", "{v}");
    assert_eq!(v["kernelize"]["passage_ids"].as_array().unwrap().len(), 2);
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "grounded answer: {text:?}");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
    assert!(u["prompt_tokens"].as_u64().unwrap() > 20, "the passages are in the prompt: {v}");

    // A key scoped away from the kernel's collection cannot ground in it.
    let scoped = ts.key("reader", Some(vec!["elsewhere"])).await;
    let body =
        json!({"model": "local", "messages": [{"role": "user", "content": "hi"}], "kernelize": {"kernel": kernel}});
    assert_eq!(ts.post(&scoped, "/v1/chat/completions", body).await.0, StatusCode::FORBIDDEN);

    for (b, status, says) in [
        (json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}), StatusCode::NOT_FOUND, "no model"),
        (json!({"model": "local", "messages": []}), StatusCode::BAD_REQUEST, "messages"),
        (json!({"model": "local", "messages": [{"role": "robot", "content": "hi"}]}), StatusCode::BAD_REQUEST, "role"),
        (
            json!({"model": "local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}),
            StatusCode::BAD_REQUEST,
            "max_tokens",
        ),
        (
            json!({"model": "local", "messages": [{"role": "user", "content": "hi"}], "n": 3}),
            StatusCode::BAD_REQUEST,
            "n:",
        ),
        (
            json!({"model": "local", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "patternProperties": {}}}}}),
            StatusCode::BAD_REQUEST,
            "not supported",
        ),
        (
            json!({"model": "local", "messages": [{"role": "user", "content": "hi"}], "kernelize": {"kernel": "nokernel"}}),
            StatusCode::NOT_FOUND,
            "no kernel",
        ),
        (json!({"messages": [{"role": "user", "content": "hi"}]}), StatusCode::BAD_REQUEST, "model"),
    ] {
        let (s, v) = ts.post(ADMIN_KEY, "/v1/chat/completions", b).await;
        assert_error(s, &v, status, says);
    }
    let (_, runs) = ts.get(ADMIN_KEY, "/v1/programs/runs?program=chat.completions").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
    ts.shutdown().await;
}

/// Without the model file, every model route says how to install it (503), and the
/// rest of the API works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_is_503_saying_how_to_install_it() {
    let ts = TestServer::start_with(Backend::Sqlite, |c| {
        c.llm_model = Some(c.data_dir.with_file_name("missing").join("model.gguf"));
    })
    .await;
    crate::matrix_programs::register(&ts, "qa").await;
    let (s, v) = ts.post(ADMIN_KEY, "/v1/programs/qa/run", json!({"inputs": {"question": "?"}})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("model_unavailable")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("kernelize models install"), "{v}");
    let body = json!({"model": "local", "messages": [{"role": "user", "content": "hi"}]});
    let (s, v) = ts.post(ADMIN_KEY, "/v1/chat/completions", body).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("model_unavailable")), "{v}");
    let (s, v) = ts.get(ADMIN_KEY, "/v1/models").await;
    assert_eq!((s, v["data"].clone()), (StatusCode::OK, json!([])), "{v}");
    ts.shutdown().await;
}

async fn wait_job(ts: &TestServer, path: &str) -> Value {
    for _ in 0..1200 {
        let (s, v) = ts.get(ADMIN_KEY, path).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["state"] != "running" {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{path} did not finish in 120 s");
}

fn examples(n: usize) -> Vec<Value> {
    let qs = [
        ("Is fire hot?", "yes"),
        ("Is snow black?", "no"),
        ("Do birds fly?", "yes"),
        ("Is the sun cold?", "no"),
        ("Is water wet?", "yes"),
        ("Can fish walk?", "no"),
        ("Is grass green?", "yes"),
        ("Do stones sing?", "no"),
    ];
    qs.iter().cycle().take(n).map(|(q, a)| json!({"inputs": {"question": q}, "outputs": {"answer": a}})).collect()
}

/// Compile jobs on the real model: progress, the result as a new version, cancel, bad input.
async fn compile_jobs(backend: Backend) {
    let ts = TestServer::start(backend).await;
    crate::matrix_programs::register(&ts, "qa").await;
    let reader = ts.key("reader", None).await;
    let body = json!({"optimizer": {"optimizer": "labeled_few_shot", "k": 2}, "metric": {"metric": "exact_match", "field": "answer"},
        "train": examples(4), "val": examples(3), "budget": {"calls": 50}, "seed": 7});
    let (s, v) = ts.post(&reader, "/v1/programs/qa/compile", body.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, job) = ts.post(ADMIN_KEY, "/v1/programs/qa/compile", body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    assert_eq!((job["state"].as_str(), job["base_version"].as_i64()), (Some("running"), Some(1)), "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let done = wait_job(&ts, &format!("/v1/programs/qa/compile/{id}")).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result_version"], 2, "{done}");
    // LabeledFewShot samples demos without calling the model and does not score.
    let pr = &done["progress"];
    assert_eq!(
        (pr["stage"].as_str(), pr["done"].as_u64(), pr["total"].as_u64(), pr["calls"].as_u64()),
        (Some("labeled"), Some(1), Some(1), Some(0)),
        "{done}"
    );
    assert_eq!(
        (done["report"]["calls"].as_u64(), done["report"]["stopped_by"].clone()),
        (Some(0), Value::Null),
        "{done}"
    );
    let (_, prog) = ts.get(&reader, "/v1/programs/qa").await;
    assert_eq!(
        (prog["version"].as_i64(), prog["origin"].as_str()),
        (Some(2), Some(format!("compiled:{id}").as_str())),
        "{prog}"
    );
    assert_eq!(prog["program"]["demos"].as_array().unwrap().len(), 2, "{prog}");
    // The compiled version runs.
    let (s, v) = ts.post(&reader, "/v1/programs/qa/run", json!({"inputs": {"question": "Is ice cold?"}})).await;
    assert_eq!((s, v["version"].as_i64()), (StatusCode::OK, Some(2)), "{v}");

    // Cancelled at once: ends `cancelled`, keeps no version.
    let body = json!({"optimizer": {"optimizer": "bootstrap_few_shot", "max_bootstrapped": 2, "max_labeled": 2, "candidates": 6},
        "metric": {"metric": "exact_match", "field": "answer"}, "train": examples(8), "val": examples(8), "seed": 1, "version": 1});
    let (s, job) = ts.post(ADMIN_KEY, "/v1/programs/qa/compile", body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let (s, v) = ts.call(Some(&reader), Method::POST, &format!("/v1/programs/qa/compile/{id}/cancel"), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = ts.call(Some(ADMIN_KEY), Method::POST, &format!("/v1/programs/qa/compile/{id}/cancel"), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let done = wait_job(&ts, &format!("/v1/programs/qa/compile/{id}")).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert!(done["result_version"].is_null());
    assert_eq!(ts.get(&reader, "/v1/programs/qa").await.1["versions"], json!([1, 2]));

    // Bad input.
    let good = json!({"optimizer": {"optimizer": "labeled_few_shot", "k": 1}, "metric": {"metric": "exact_match", "field": "answer"},
        "train": examples(1), "val": examples(1)});
    for (change, says) in [
        (json!({"train": []}), "train: 1 to 2000"),
        (json!({"optimizer": {"optimizer": "magic"}}), "optimizer"),
        (json!({"metric": {"metric": "exact_match", "field": "colour"}}), "no gold output"),
        (json!({"budget": {"calls": "many"}}), "budget"),
        (json!({"version": 9}), "no version 9"),
    ] {
        let mut b = good.clone();
        for (k, v) in change.as_object().unwrap() {
            b[k] = v.clone();
        }
        let (s, v) = ts.post(ADMIN_KEY, "/v1/programs/qa/compile", b).await;
        assert!(s.is_client_error(), "{s} {v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{v} should say {says}");
    }
    let (s, _) = ts.get(ADMIN_KEY, "/v1/programs/qa/compile/nojob").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        audited(&ts, "programs.compile").await,
        ["denied", "ok", "ok", "error", "error", "error", "error", "error"]
    );
    assert_eq!(audited(&ts, "programs.compile.cancel").await, ["denied", "ok"]);
    ts.shutdown().await;
}

both_backends!(compile_jobs_both, compile_jobs);

/// A compile job's event stream: the whole job after each step, numbered, ending with the
/// finished job; its score curve has one point per scored candidate, the best score never
/// falls, and the finished job's GET answers the same curve. Readers may follow it; keys
/// scoped to collections and unknown jobs are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_job_streams_its_progress_and_score_curve() {
    let ts = TestServer::start(Backend::Sqlite).await;
    crate::matrix_programs::register(&ts, "qa").await;
    let reader = ts.key("reader", None).await;
    let body = json!({"optimizer": {"optimizer": "bootstrap_few_shot", "max_bootstrapped": 1, "max_labeled": 1, "candidates": 2},
        "metric": {"metric": "exact_match", "field": "answer"}, "train": examples(2), "val": examples(2),
        "budget": {"calls": 30}, "seed": 3});
    let (s, job) = ts.post(ADMIN_KEY, "/v1/programs/qa/compile", body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/programs/qa/compile/{id}/events");
    let r = ts.client.get(format!("{}{path}", ts.base)).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = crate::console::read_events(r, 120).await;
    assert!(!events.is_empty(), "the stream sent something and ended");
    for (i, (name, eid, doc)) in events.iter().enumerate() {
        assert_eq!((name.as_str(), eid.as_str()), ("job", (i + 1).to_string().as_str()), "{doc}");
        assert_eq!(doc["id"], id.as_str(), "{doc}");
    }
    let last = &events.last().unwrap().2;
    assert_eq!(last["state"], "succeeded", "the last event is the finished job: {last}");
    assert!(events[..events.len() - 1].iter().all(|e| e.2["state"] == "running"), "only the last has ended");
    let curve = last["progress"]["history"].as_array().unwrap();
    // The baseline and at least the first candidate were scored on the validation set.
    assert!(curve.len() >= 2, "{last}");
    assert_eq!(curve[0]["stage"], "baseline", "{last}");
    let mut best = f64::NEG_INFINITY;
    for p in curve {
        let (score, b) = (p["score"].as_f64().unwrap(), p["best_score"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&score) && b >= score && b >= best, "{last}");
        best = b;
    }
    assert_eq!(last["progress"]["best_score"].as_f64(), Some(best), "{last}");
    let (_, got) = ts.get(&reader, &format!("/v1/programs/qa/compile/{id}")).await;
    assert_eq!(got["progress"]["history"], last["progress"]["history"], "{got}");
    // A finished job: one event, then the end.
    let r = ts.client.get(format!("{}{path}", ts.base)).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(crate::console::read_events(r, 10).await.len(), 1);
    let scoped = ts.key("reader", Some(vec!["docs"])).await;
    assert_eq!(ts.get(&scoped, &path).await.0, StatusCode::FORBIDDEN);
    let (s, v) = ts.get(ADMIN_KEY, "/v1/programs/qa/compile/nojob/events").await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "no compile job");
    let (s, _) = ts.get(ADMIN_KEY, &format!("/v1/programs/other/compile/{id}/events")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a job is reached through its own program only");
    ts.shutdown().await;
}

/// Saved program files (what `kernelize program compile` writes) register as programs:
/// unsigned, or signed (the origin names the key); a signed file changed after signing,
/// or of an unknown format version, is refused with 400 saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_program_files_register_and_a_tampered_one_is_refused() {
    use kernelize_programs::saved::SavedProgram;
    let ts = TestServer::start(Backend::Sqlite).await;
    let program: kernelize_programs::Program = serde_json::from_value(yes_no_program()).unwrap();
    let mut saved = SavedProgram::new(program);
    saved.scores.insert("val".into(), 0.75);
    let file = |s: &SavedProgram| serde_json::from_str::<Value>(&s.to_json()).unwrap();

    let (s, v) = ts.post(ADMIN_KEY, "/v1/programs", json!({"name": "saved", "program": file(&saved)})).await;
    assert_eq!((s, v["origin"].as_str()), (StatusCode::CREATED, Some("registered")), "{v}");
    assert_eq!(v["program"]["signature"]["instruction"], yes_no_program()["signature"]["instruction"], "{v}");
    assert_eq!(v["predictors"], json!(["judge"]), "{v}");

    let key = kernelize_kernel::SigningKey::generate().unwrap();
    saved.sign(&key);
    let signed = file(&saved);
    let (s, v) = ts.post(ADMIN_KEY, "/v1/programs", json!({"name": "saved", "program": signed.clone()})).await;
    let origin = format!("signed:{}", key.public().key_id());
    assert_eq!((s, v["version"].as_i64(), v["origin"].as_str()), (StatusCode::CREATED, Some(2), Some(origin.as_str())));

    let mut tampered = signed.clone();
    tampered["program"]["signature"]["instruction"] = json!("Always answer yes.");
    let (s, v) = ts.post(ADMIN_KEY, "/v1/programs", json!({"name": "saved", "program": tampered})).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "does not verify: the file was changed after signing");
    let mut rescored = signed;
    rescored["scores"]["val"] = json!(1.0);
    let (s, v) = ts.post(ADMIN_KEY, "/v1/programs", json!({"name": "saved", "program": rescored})).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "does not verify");
    let mut future = file(&saved);
    future["format"] = json!(2);
    let (s, v) = ts.post(ADMIN_KEY, "/v1/programs", json!({"name": "saved", "program": future})).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "unknown format version 2");
    assert_eq!(ts.get(ADMIN_KEY, "/v1/programs/saved").await.1["versions"], json!([1, 2]));
    ts.shutdown().await;
}
