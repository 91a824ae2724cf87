//! The acceptance test of `/v1/chat/completions`: the unmodified `openai` client library
//! from PyPI (a throwaway venv, `~/.cache/kz-venv-openai` or `$KZ_OPENAI_VENV`, created
//! once by `scripts/tests/openai_client.py`) against a real server on 127.0.0.1 with an
//! API key made through `POST /v1/keys`: a plain, a streamed and a json_schema completion.

use crate::common::{ADMIN_KEY, Backend, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_library_talks_to_chat_completions() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let (s, v) = ts.post(ADMIN_KEY, "/v1/keys", json!({"name": "openai-client", "role": "reader"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let key = v["key"].as_str().unwrap().to_owned();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py = std::env::var("KERNELIZE_PYTHON").unwrap_or_else(|_| "python3".into());
    let base = format!("{}/v1", ts.base);
    let (script, dir, k) = (root.join("scripts/tests/openai_client.py"), root.clone(), key.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(py)
            .arg(script)
            .args(["--base-url", &base, "--api-key", &k])
            .current_dir(dir)
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openai_client.py failed: {stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));

    assert_eq!(r["models"], json!(["SmolLM2-135M-Instruct"]), "{r}");
    let plain = &r["plain"];
    assert_eq!((plain["object"].as_str(), plain["role"].as_str()), (Some("chat.completion"), Some("assistant")), "{r}");
    assert!(plain["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(!plain["content"].as_str().unwrap().trim().is_empty(), "{r}");
    assert!(["stop", "length"].contains(&plain["finish_reason"].as_str().unwrap()), "{r}");
    let u = &plain["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 5 && u["completion_tokens"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );

    let st = &r["stream"];
    assert!(st["chunks"].as_u64().unwrap() >= 3, "a role chunk, content chunks, a finish chunk: {r}");
    assert!(!st["content"].as_str().unwrap().trim().is_empty(), "{r}");
    assert!(st["finish_reason"].is_string(), "{r}");
    assert!(st["usage"]["completion_tokens"].as_u64().unwrap() > 0, "the usage chunk: {r}");

    let parsed = &r["json_schema"]["parsed"];
    assert!(
        parsed["city"].is_string() && parsed["country"].is_string() && parsed["population_millions"].is_number(),
        "{r}"
    );
    assert_eq!(parsed.as_object().unwrap().len(), 3, "{r}");
    assert_eq!(r["unknown_model"], 404, "{r}");
    assert_eq!(r["bad_key"], 401, "{r}");

    // Every call is recorded as a run of this key.
    let (_, runs) = ts.get(&key, "/v1/programs/runs?program=chat.completions").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 3, "three completions: {runs}");
    ts.shutdown().await;
}
