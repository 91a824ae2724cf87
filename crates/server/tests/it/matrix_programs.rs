//! The role matrix of the program routes (`/v1/programs…`, `/v1/models`,
//! `/v1/chat/completions`), called by `matrix.rs` for each of them and every role.
//! Programs are server-wide: a key scoped to some collections (the outsider) is refused.

use crate::common::{ADMIN_KEY, TestServer};
use crate::matrix::{Keys, Who, expected};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A one-predictor program: a yes/no question.
pub fn yes_no_program() -> Value {
    json!({
        "module": "predict",
        "name": "judge",
        "signature": {
            "instruction": "Answer the question with yes or no.",
            "inputs": [{"name": "question", "type": "string"}],
            "outputs": [{"name": "answer", "type": "enum", "labels": ["yes", "no"]}]
        },
        "sampling": {"max_tokens": 16}
    })
}

/// Registers `name` as the admin.
pub async fn register(ts: &TestServer, name: &str) {
    let (s, v) = ts.post(ADMIN_KEY, "/v1/programs", json!({"name": name, "program": yes_no_program()})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

pub async fn fixtures(ts: &TestServer) {
    register(ts, "matrix-prog").await;
}

async fn exists(ts: &TestServer, name: &str) -> bool {
    ts.get(ADMIN_KEY, &format!("/v1/programs/{name}")).await.0 == StatusCode::OK
}

pub async fn exercise(
    ts: &TestServer,
    keys: &Keys,
    method: &str,
    template: &str,
    who: Who,
) -> (StatusCode, Value, StatusCode) {
    let key = keys.of(who);
    let tag = format!("{who:?}").to_lowercase();
    let call = |m: Method, path: String, body: Option<Value>| async move { ts.call(key, m, &path, body).await };
    let writer = |ok| expected(who, Who::Writer, true, ok);
    let reader = |ok| expected(who, Who::Reader, true, ok);
    match (method, template) {
        ("get", "/v1/programs") => {
            let (s, v) = call(Method::GET, "/v1/programs".into(), None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("post", "/v1/programs") => {
            let name = format!("p-{tag}");
            let (s, v) =
                call(Method::POST, "/v1/programs".into(), Some(json!({"name": name, "program": yes_no_program()})))
                    .await;
            let want = writer(StatusCode::CREATED);
            assert_eq!(exists(ts, &name).await, want.is_success(), "{name}");
            (s, v, want)
        }
        ("get", "/v1/programs/{name}") => {
            let (s, v) = call(Method::GET, "/v1/programs/matrix-prog".into(), None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("delete", "/v1/programs/{name}") => {
            let name = format!("d-{tag}");
            register(ts, &name).await;
            let (s, v) = call(Method::DELETE, format!("/v1/programs/{name}"), None).await;
            let want = writer(StatusCode::NO_CONTENT);
            assert_eq!(exists(ts, &name).await, !want.is_success(), "{name}");
            (s, v, want)
        }
        ("post", "/v1/programs/{name}/run") => {
            let body = json!({"inputs": {"question": "Is water wet?"}});
            let (s, v) = call(Method::POST, "/v1/programs/matrix-prog/run".into(), Some(body)).await;
            (s, v, reader(StatusCode::OK))
        }
        ("get", "/v1/programs/runs") => {
            let (s, v) = call(Method::GET, "/v1/programs/runs".into(), None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("post", "/v1/programs/{name}/compile") => {
            let ex = json!({"inputs": {"question": "Is fire hot?"}, "outputs": {"answer": "yes"}});
            let body = json!({"optimizer": {"optimizer": "labeled_few_shot", "k": 1}, "metric": {"metric": "exact_match", "field": "answer"},
                "train": [ex], "val": [ex], "budget": {"calls": 4}, "seed": 1});
            let (s, v) = call(Method::POST, "/v1/programs/matrix-prog/compile".into(), Some(body)).await;
            (s, v, writer(StatusCode::ACCEPTED))
        }
        ("get", "/v1/programs/{name}/compile/{job}") => {
            // No job: a permitted caller gets 404, a refused one 401/403 first.
            let (s, v) = call(Method::GET, "/v1/programs/matrix-prog/compile/nojob".into(), None).await;
            (s, v, reader(StatusCode::NOT_FOUND))
        }
        ("get", "/v1/programs/{name}/compile/{job}/events") => {
            let (s, v) = call(Method::GET, "/v1/programs/matrix-prog/compile/nojob/events".into(), None).await;
            (s, v, reader(StatusCode::NOT_FOUND))
        }
        ("post", "/v1/programs/{name}/compile/{job}/cancel") => {
            let (s, v) = call(Method::POST, "/v1/programs/matrix-prog/compile/nojob/cancel".into(), None).await;
            (s, v, writer(StatusCode::NOT_FOUND))
        }
        ("get", "/v1/models") => {
            let (s, v) = call(Method::GET, "/v1/models".into(), None).await;
            (s, v, reader(StatusCode::OK))
        }
        ("post", "/v1/chat/completions") => {
            let body = json!({"model": "local", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4});
            let (s, v) = call(Method::POST, "/v1/chat/completions".into(), Some(body)).await;
            (s, v, reader(StatusCode::OK))
        }
        _ => panic!("route {method} {template} has no case in the program role matrix"),
    }
}
