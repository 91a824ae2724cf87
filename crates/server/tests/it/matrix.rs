//! Every route of the OpenAPI document × every role: the status each gets, and that a
//! refused request neither returned data nor changed any. A route with no case here
//! fails the test.

use crate::both_backends;
use crate::common::{ADMIN_KEY, Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Anonymous,
    Reader,
    Writer,
    Admin,
    /// A writer scoped to another collection.
    Outsider,
}

const EVERYONE: [Who; 5] = [Who::Anonymous, Who::Reader, Who::Writer, Who::Admin, Who::Outsider];

/// Objects the matrix reads.
struct Ids {
    backup: String,
    kernel: String,
    fleet: crate::matrix_fleet::FleetIds,
}

pub struct Keys {
    pub reader: String,
    pub writer: String,
    pub outsider: String,
}

impl Keys {
    pub fn of(&self, who: Who) -> Option<&str> {
        match who {
            Who::Anonymous => None,
            Who::Reader => Some(&self.reader),
            Who::Writer => Some(&self.writer),
            Who::Admin => Some(ADMIN_KEY),
            Who::Outsider => Some(&self.outsider),
        }
    }
}

/// The status `who` must get from a route that needs `need` on collection `docs` (or
/// server-wide when `collection` is false).
pub fn expected(who: Who, need: Who, collection: bool, ok: StatusCode) -> StatusCode {
    let rank = |w: Who| match w {
        Who::Anonymous => 0,
        Who::Reader => 1,
        Who::Writer | Who::Outsider => 2,
        Who::Admin => 3,
    };
    match who {
        Who::Anonymous => StatusCode::UNAUTHORIZED,
        Who::Outsider if collection => StatusCode::FORBIDDEN,
        Who::Outsider if need == Who::Admin => StatusCode::FORBIDDEN,
        _ if rank(who) >= rank(need) => ok,
        _ => StatusCode::FORBIDDEN,
    }
}

async fn exists(ts: &TestServer, path: &str) -> bool {
    let (s, _) = ts.get(ADMIN_KEY, path).await;
    assert!(s == StatusCode::OK || s == StatusCode::NOT_FOUND, "{path}: {s}");
    s == StatusCode::OK
}

async fn fresh_key(ts: &TestServer) -> String {
    let (s, v) = ts.post(ADMIN_KEY, "/v1/keys", json!({"name": "victim", "role": "reader"})).await;
    assert_eq!(s, StatusCode::CREATED);
    v["info"]["id"].as_str().unwrap().to_owned()
}

async fn key_info(ts: &TestServer, id: &str) -> Value {
    let (_, v) = ts.get(ADMIN_KEY, "/v1/keys").await;
    v["keys"].as_array().unwrap().iter().find(|k| k["id"] == id).cloned().unwrap()
}

/// Builds a kernel of `docs` as the admin and waits for it.
pub async fn built_kernel(ts: &TestServer) -> String {
    crate::common::build_kernel(ts, json!({"collection": "docs"})).await
}

/// GETs a job's event stream as `key` (it ends once the job has): the status and, when
/// granted, the data of its last event (else the error body).
async fn job_events(ts: &TestServer, key: Option<&str>, path: &str, event: &str) -> (StatusCode, Value) {
    let r = ts.client.get(format!("{}{path}", ts.base));
    let r = match key {
        Some(k) => r.bearer_auth(k),
        None => r,
    };
    let r = r.send().await.unwrap();
    let s = r.status();
    let text = tokio::time::timeout(std::time::Duration::from_secs(60), r.text()).await.unwrap().unwrap();
    if !s.is_success() {
        return (s, serde_json::from_str(&text).unwrap_or(Value::Null));
    }
    assert!(text.contains(&format!("event: {event}\n")), "{path}: {text}");
    let last = text.lines().filter_map(|l| l.strip_prefix("data: ")).next_back().unwrap();
    (s, serde_json::from_str(last).unwrap())
}

/// Calls `method template` as `who` and checks the outcome. Panics on a route it does not know.
async fn exercise(ts: &TestServer, keys: &Keys, ids: &Ids, method: &str, template: &str, who: Who) {
    let (backup_id, kernel_id) = (ids.backup.as_str(), ids.kernel.as_str());
    let key = keys.of(who);
    let tag = format!("{who:?}").to_lowercase();
    let call = |m: Method, path: String, body: Option<Value>| async move { ts.call(key, m, &path, body).await };
    let (status, body, want) = match (method, template) {
        ("get", "/v1/collections") => {
            let (s, v) = call(Method::GET, "/v1/collections".into(), None).await;
            if who == Who::Outsider {
                let names: Vec<&str> =
                    v["collections"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
                assert_eq!(names, ["other"], "an outsider sees only its scope");
            }
            (s, v, expected(who, Who::Reader, false, StatusCode::OK))
        }
        ("post", "/v1/collections") => {
            let name = format!("m-{tag}");
            let (s, v) = call(Method::POST, "/v1/collections".into(), Some(json!({"name": name, "dim": 4}))).await;
            let want = expected(who, Who::Writer, true, StatusCode::CREATED);
            assert_eq!(exists(ts, &format!("/v1/collections/{name}")).await, want.is_success());
            (s, v, want)
        }
        ("get", "/v1/collections/{name}") => {
            let (s, v) = call(Method::GET, "/v1/collections/docs".into(), None).await;
            (s, v, expected(who, Who::Reader, true, StatusCode::OK))
        }
        ("delete", "/v1/collections/{name}") => {
            let name = format!("d-{tag}");
            ts.create_collection(&name, 4).await;
            let (s, v) = call(Method::DELETE, format!("/v1/collections/{name}"), None).await;
            let want = expected(who, Who::Writer, true, StatusCode::NO_CONTENT);
            assert_eq!(exists(ts, &format!("/v1/collections/{name}")).await, !want.is_success());
            (s, v, want)
        }
        ("post", "/v1/collections/{name}/records") => {
            let id = format!("w-{tag}");
            let rec = json!({"records": [{"id": id, "vector": [1.0, 0.0, 0.0, 0.0], "text": "intruder"}]});
            let (s, v) = call(Method::POST, "/v1/collections/docs/records".into(), Some(rec)).await;
            let want = expected(who, Who::Writer, true, StatusCode::OK);
            assert_eq!(exists(ts, &format!("/v1/collections/docs/records/{id}")).await, want.is_success());
            (s, v, want)
        }
        ("get", "/v1/collections/{name}/records") => {
            let (s, v) = call(Method::GET, "/v1/collections/docs/records?limit=5".into(), None).await;
            (s, v, expected(who, Who::Reader, true, StatusCode::OK))
        }
        ("get", "/v1/collections/{name}/changes") => {
            // Change data capture is a cluster feature: a single node says so.
            let (s, v) = call(Method::GET, "/v1/collections/docs/changes?limit=5".into(), None).await;
            if s == StatusCode::CONFLICT {
                assert_eq!(v["code"], "cluster_only", "{v}");
            }
            (s, v, expected(who, Who::Reader, true, StatusCode::CONFLICT))
        }
        ("get", "/v1/collections/{name}/records/{id}") => {
            let (s, v) = call(Method::GET, "/v1/collections/docs/records/r1".into(), None).await;
            (s, v, expected(who, Who::Reader, true, StatusCode::OK))
        }
        ("get", "/v1/collections/{name}/records/{id}/media") => {
            // docs is a vector collection: its records have no file (tests/it/media.rs
            // fetches kept files); the roles and scopes are what is checked here.
            let (s, v) = call(Method::GET, "/v1/collections/docs/records/r1/media".into(), None).await;
            if s == StatusCode::NOT_FOUND {
                assert!(v["message"].as_str().unwrap_or_default().contains("no media file"), "{v}");
            }
            (s, v, expected(who, Who::Reader, true, StatusCode::NOT_FOUND))
        }
        ("delete", "/v1/collections/{name}/records/{id}") => {
            let id = format!("x-{tag}");
            let rec = json!({"records": [{"id": id, "vector": [0.0, 1.0, 0.0, 0.0]}]});
            assert_eq!(ts.post(ADMIN_KEY, "/v1/collections/docs/records", rec).await.0, StatusCode::OK);
            let (s, v) = call(Method::DELETE, format!("/v1/collections/docs/records/{id}"), None).await;
            let want = expected(who, Who::Writer, true, StatusCode::OK);
            assert_eq!(exists(ts, &format!("/v1/collections/docs/records/{id}")).await, !want.is_success());
            (s, v, want)
        }
        ("post", "/v1/collections/{name}/records:delete") => {
            let id = format!("y-{tag}");
            let rec = json!({"records": [{"id": id, "vector": [0.0, 0.0, 1.0, 0.0]}]});
            assert_eq!(ts.post(ADMIN_KEY, "/v1/collections/docs/records", rec).await.0, StatusCode::OK);
            let (s, v) =
                call(Method::POST, "/v1/collections/docs/records:delete".into(), Some(json!({"ids": [id]}))).await;
            let want = expected(who, Who::Writer, true, StatusCode::OK);
            assert_eq!(exists(ts, &format!("/v1/collections/docs/records/{id}")).await, !want.is_success());
            (s, v, want)
        }
        ("post", "/v1/collections/{name}/search") => {
            let q = json!({"vector": [1.0, 0.0, 0.0, 0.0], "k": 3});
            let (s, v) = call(Method::POST, "/v1/collections/docs/search".into(), Some(q)).await;
            (s, v, expected(who, Who::Reader, true, StatusCode::OK))
        }
        ("post", "/v1/embed") => {
            let (s, v) = call(Method::POST, "/v1/embed".into(), Some(json!({"texts": ["a cat"]}))).await;
            // Embedding touches no collection: every key may.
            (s, v, if who == Who::Anonymous { StatusCode::UNAUTHORIZED } else { StatusCode::OK })
        }
        ("post", "/v1/kernels") => {
            let count = || async { ts.get(ADMIN_KEY, "/v1/kernels").await.1["kernels"].as_array().unwrap().len() };
            let before = count().await;
            let (s, v) = call(Method::POST, "/v1/kernels".into(), Some(json!({"collection": "docs"}))).await;
            let want = expected(who, Who::Writer, true, StatusCode::ACCEPTED);
            assert_eq!(count().await, before + usize::from(want.is_success()));
            (s, v, want)
        }
        ("get", "/v1/kernels") => {
            let (s, v) = call(Method::GET, "/v1/kernels".into(), None).await;
            if s.is_success() && who == Who::Outsider {
                assert!(v["kernels"].as_array().unwrap().is_empty(), "an outsider sees no kernel of docs: {v}");
            }
            (s, v, expected(who, Who::Reader, false, StatusCode::OK))
        }
        ("get", "/v1/kernels/{id}") => {
            let (s, v) = call(Method::GET, format!("/v1/kernels/{kernel_id}"), None).await;
            (s, v, expected(who, Who::Reader, true, StatusCode::OK))
        }
        ("delete", "/v1/kernels/{id}") => {
            let id = built_kernel(ts).await;
            let (s, v) = call(Method::DELETE, format!("/v1/kernels/{id}"), None).await;
            let want = expected(who, Who::Writer, true, StatusCode::NO_CONTENT);
            assert_eq!(exists(ts, &format!("/v1/kernels/{id}")).await, !want.is_success());
            (s, v, want)
        }
        ("get", "/v1/kernels/{id}/events") => {
            let (s, v) = job_events(ts, key, &format!("/v1/kernels/{kernel_id}/events"), "kernel").await;
            if s.is_success() {
                assert_eq!((v["id"].as_str(), v["state"].as_str()), (Some(kernel_id), Some("succeeded")), "{v}");
            }
            (s, v, expected(who, Who::Reader, true, StatusCode::OK))
        }
        ("get", "/v1/kernels/{id}/download") => {
            let r = ts.client.get(format!("{}/v1/kernels/{kernel_id}/download", ts.base));
            let r = match key {
                Some(k) => r.bearer_auth(k),
                None => r,
            };
            let r = r.send().await.unwrap();
            let s = r.status();
            let bytes = r.bytes().await.unwrap();
            if s.is_success() {
                assert_eq!(&bytes[..8], b"KZKERNEL");
            }
            let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (s, v, expected(who, Who::Reader, true, StatusCode::OK))
        }
        ("post", "/v1/kernels/{id}/query") => {
            let q = json!({"vector": [1.0, 0.0, 0.0, 0.0], "k": 3});
            let (s, v) = call(Method::POST, format!("/v1/kernels/{kernel_id}/query"), Some(q)).await;
            if s.is_success() {
                assert_eq!(v["hits"][0]["ids"][0], "r1", "{v}");
            }
            (s, v, expected(who, Who::Reader, true, StatusCode::OK))
        }
        ("get", "/v1/kernel-signing-key") => {
            let (s, v) = call(Method::GET, "/v1/kernel-signing-key".into(), None).await;
            (s, v, if who == Who::Anonymous { StatusCode::UNAUTHORIZED } else { StatusCode::OK })
        }
        ("post", "/v1/backups") => {
            let (s, v) = call(Method::POST, "/v1/backups".into(), Some(json!({}))).await;
            (s, v, expected(who, Who::Admin, false, StatusCode::ACCEPTED))
        }
        ("get", "/v1/backups") => {
            let (s, v) = call(Method::GET, "/v1/backups".into(), None).await;
            (s, v, expected(who, Who::Admin, false, StatusCode::OK))
        }
        ("get", "/v1/backups/{id}") => {
            let (s, v) = call(Method::GET, format!("/v1/backups/{backup_id}"), None).await;
            (s, v, expected(who, Who::Admin, false, StatusCode::OK))
        }
        ("get", "/v1/backups/{id}/events") => {
            let (s, v) = job_events(ts, key, &format!("/v1/backups/{backup_id}/events"), "backup").await;
            if s.is_success() {
                assert_eq!((v["id"].as_str(), v["state"].as_str()), (Some(backup_id), Some("succeeded")), "{v}");
            }
            (s, v, expected(who, Who::Admin, false, StatusCode::OK))
        }
        ("get", "/v1/usage") => {
            let (s, v) = call(Method::GET, "/v1/usage".into(), None).await;
            (s, v, expected(who, Who::Admin, false, StatusCode::OK))
        }
        ("get", "/v1/cluster") => {
            let (s, v) = call(Method::GET, "/v1/cluster".into(), None).await;
            if s.is_success() {
                assert!(v["node"].is_null() && v["shards"].as_array().is_some_and(Vec::is_empty), "{v}");
            }
            (s, v, expected(who, Who::Admin, false, StatusCode::OK))
        }
        ("get", "/v1/slow-queries") => {
            let (s, v) = call(Method::GET, "/v1/slow-queries".into(), None).await;
            (s, v, expected(who, Who::Admin, false, StatusCode::OK))
        }
        ("post", "/v1/keys") => {
            let before = ts.get(ADMIN_KEY, "/v1/keys").await.1["keys"].as_array().unwrap().len();
            let (s, v) = call(Method::POST, "/v1/keys".into(), Some(json!({"name": "k", "role": "admin"}))).await;
            let want = expected(who, Who::Admin, false, StatusCode::CREATED);
            let after = ts.get(ADMIN_KEY, "/v1/keys").await.1["keys"].as_array().unwrap().len();
            assert_eq!(after, before + usize::from(want.is_success()));
            (s, v, want)
        }
        ("get", "/v1/keys") => {
            let (s, v) = call(Method::GET, "/v1/keys".into(), None).await;
            (s, v, expected(who, Who::Admin, false, StatusCode::OK))
        }
        ("post", "/v1/keys/{id}/rotate") => {
            let id = fresh_key(ts).await;
            let (s, v) = call(Method::POST, format!("/v1/keys/{id}/rotate"), Some(json!({}))).await;
            let want = expected(who, Who::Admin, false, StatusCode::OK);
            assert_eq!(key_info(ts, &id).await["rotated_to"].is_string(), want.is_success());
            (s, v, want)
        }
        ("put", "/v1/keys/{id}/quota") => {
            let id = fresh_key(ts).await;
            let (s, v) = call(Method::PUT, format!("/v1/keys/{id}/quota"), Some(json!({"records": 5}))).await;
            let want = expected(who, Who::Admin, false, StatusCode::OK);
            assert_eq!(key_info(ts, &id).await["quota"]["records"] == json!(5), want.is_success());
            (s, v, want)
        }
        ("delete", "/v1/keys/{id}") => {
            let id = fresh_key(ts).await;
            let (s, v) = call(Method::DELETE, format!("/v1/keys/{id}"), None).await;
            let want = expected(who, Who::Admin, false, StatusCode::NO_CONTENT);
            assert_eq!(key_info(ts, &id).await["active"], json!(!want.is_success()));
            (s, v, want)
        }
        ("post", "/v1/tokens") => {
            let (s, v) = call(Method::POST, "/v1/tokens".into(), Some(json!({"ttl_secs": 60}))).await;
            let want = if who == Who::Anonymous { StatusCode::UNAUTHORIZED } else { StatusCode::CREATED };
            (s, v, want)
        }
        ("get", "/v1/audit") => {
            let (s, v) = call(Method::GET, "/v1/audit".into(), None).await;
            (s, v, expected(who, Who::Admin, false, StatusCode::OK))
        }
        ("get", "/v1/audit/verify") => {
            let (s, v) = call(Method::GET, "/v1/audit/verify".into(), None).await;
            if s.is_success() {
                assert!(v["problem"].is_null() && v["entries"].as_i64().unwrap() > 0, "{v}");
            }
            (s, v, expected(who, Who::Admin, false, StatusCode::OK))
        }
        ("get", "/metrics") => {
            let resp = ts.client.get(format!("{}/metrics", ts.base));
            let resp = match key {
                Some(k) => resp.bearer_auth(k),
                None => resp,
            };
            let r = resp.send().await.unwrap();
            let s = r.status();
            let text = r.text().await.unwrap();
            if s.is_success() {
                assert!(text.contains("kernelize_http_requests_total"), "{text}");
            }
            (s, serde_json::from_str(&text).unwrap_or(Value::Null), expected(who, Who::Admin, false, StatusCode::OK))
        }
        ("get", "/healthz" | "/readyz" | "/openapi.json" | "/docs") => {
            let r = ts.client.get(format!("{}{template}", ts.base)).send().await.unwrap();
            (r.status(), Value::Null, StatusCode::OK)
        }
        _ if template.starts_with("/v1/programs") || template == "/v1/models" || template == "/v1/chat/completions" => {
            crate::matrix_programs::exercise(ts, keys, method, template, who).await
        }
        _ if template.starts_with("/v1/sso/") || template == "/v1/collections/{name}/map" => {
            crate::matrix_sso::exercise(ts, keys, method, template, who).await
        }
        _ if template.starts_with("/v1/fleet/") => {
            crate::matrix_fleet::exercise(ts, keys, &ids.fleet, method, template, who).await
        }
        _ => panic!("route {method} {template} has no case in the role matrix"),
    };
    assert_eq!(status, want, "{method} {template} as {who:?}: {body}");
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        // A refusal carries the error shape and nothing else: no data.
        let obj = body.as_object().unwrap_or_else(|| panic!("{method} {template} as {who:?}: not JSON"));
        let mut fields: Vec<&str> = obj.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["code", "message", "request_id"], "{method} {template} as {who:?}");
    }
}

async fn route_role_matrix(backend: Backend) {
    let ts = TestServer::start(backend).await;
    ts.create_collection("docs", 4).await;
    ts.create_collection("other", 4).await;
    let rec =
        json!({"records": [{"id": "r1", "vector": [1.0, 0.0, 0.0, 0.0], "text": "secret text", "metadata": {"a": 1}}]});
    assert_eq!(ts.post(ADMIN_KEY, "/v1/collections/docs/records", rec).await.0, StatusCode::OK);
    let keys = Keys {
        reader: ts.key("reader", None).await,
        writer: ts.key("writer", None).await,
        outsider: ts.key("writer", Some(vec!["other"])).await,
    };
    let (s, b) = ts.post(ADMIN_KEY, "/v1/backups", json!({"format": "tar"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let fleet = crate::matrix_fleet::fixtures(&ts, &keys).await;
    crate::matrix_programs::fixtures(&ts).await;
    let ids = Ids { backup: b["id"].as_str().unwrap().to_owned(), kernel: built_kernel(&ts).await, fleet };

    let doc: Value = ts.client.get(format!("{}/openapi.json", ts.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"].as_str().unwrap().get(..3), Some("3.1"));
    let mut tested = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            for who in EVERYONE {
                exercise(&ts, &keys, &ids, method, template, who).await;
                tested += 1;
            }
        }
    }
    assert!(tested >= 68 * 5, "only {tested} route x role pairs");
    // Every refusal above is in the audit log, and the chain holds.
    let v = ts.running().state().verify_audit().await.unwrap();
    assert_eq!(v.problem, None);
    let (_, page) = ts.get(ADMIN_KEY, "/v1/audit?action=auth.failure%20POST%20%2Fv1%2Fkeys&limit=10").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1, "{page}");
    ts.shutdown().await;
}

both_backends!(route_role_matrix_both, route_role_matrix);
