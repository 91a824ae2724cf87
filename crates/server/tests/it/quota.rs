//! Per-key quotas: records and bytes of the collections a key may write to, refused
//! whole before anything is written; requests per UTC day, 429 with `Retry-After` to the
//! next midnight and kept across a restart; changes in force at once.

use crate::both_backends;
use crate::common::{ADMIN_KEY, Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn recs(ids: &[&str]) -> Value {
    json!({"records": ids.iter().map(|id| json!({"id": id, "vector": [1.0, 0.0, 0.0, 0.0]})).collect::<Vec<_>>()})
}

async fn records_in(ts: &TestServer, collection: &str) -> u64 {
    ts.get(ADMIN_KEY, &format!("/v1/collections/{collection}")).await.1["records"].as_u64().unwrap()
}

/// Creates a key with `body` (name, role, collections, quota); returns `(key, id)`.
async fn key_with(ts: &TestServer, body: Value) -> (String, String) {
    let (s, v) = ts.post(ADMIN_KEY, "/v1/keys", body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (v["key"].as_str().unwrap().to_owned(), v["info"]["id"].as_str().unwrap().to_owned())
}

async fn set_quota(ts: &TestServer, id: &str, quota: Value) -> Value {
    let (s, v) = ts.call(Some(ADMIN_KEY), Method::PUT, &format!("/v1/keys/{id}/quota"), Some(quota)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn records_and_bytes_quotas(backend: Backend) {
    let ts = TestServer::start(backend).await;
    ts.create_collection("docs", 4).await;
    ts.create_collection("other", 4).await;
    let (tenant, id) =
        key_with(&ts, json!({"name": "tenant", "role": "writer", "collections": ["docs"], "quota": {"records": 3}}))
            .await;
    let upsert = |key: &str, c: &str, body: Value| {
        let (key, path) = (key.to_owned(), format!("/v1/collections/{c}/records"));
        let ts = &ts;
        async move { ts.post(&key, &path, body).await }
    };
    assert_eq!(upsert(&tenant, "docs", recs(&["r1", "r2"])).await.0, StatusCode::OK);
    // Two more would make four: refused whole, nothing written.
    let (s, v) = upsert(&tenant, "docs", recs(&["r3", "r4"])).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["code"], "quota_exceeded");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains(&id) && msg.contains("quota.records is 3") && msg.contains("hold 2") && msg.contains("add 2"),
        "{msg}"
    );
    assert_eq!(records_in(&ts, "docs").await, 2);
    // One fits; replacing a record adds none; a fourth does not fit.
    assert_eq!(upsert(&tenant, "docs", recs(&["r3"])).await.0, StatusCode::OK);
    assert_eq!(upsert(&tenant, "docs", recs(&["r1", "r2", "r3", "r3"])).await.0, StatusCode::OK);
    assert_eq!(upsert(&tenant, "docs", recs(&["r5"])).await.0, StatusCode::FORBIDDEN);
    // Deletes are always allowed, and make room.
    let (s, v) = ts.call(Some(&tenant), Method::DELETE, "/v1/collections/docs/records/r1", None).await;
    assert!(s.is_success(), "{v}");
    assert_eq!(upsert(&tenant, "docs", recs(&["r5"])).await.0, StatusCode::OK);
    // Another key's writes count (the collection holds them), but are not limited.
    assert_eq!(upsert(ADMIN_KEY, "docs", recs(&["a1", "a2"])).await.0, StatusCode::OK);
    let (s, v) = upsert(&tenant, "docs", recs(&["r6"])).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["message"].as_str().unwrap().contains("hold 5"), "{v}");
    let (plain, _) = key_with(&ts, json!({"name": "plain", "role": "writer"})).await;
    let many: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(upsert(&plain, "docs", recs(&many)).await.0, StatusCode::OK, "a key without a quota is unaffected");
    // A raised quota is in force at once; an empty one is none.
    let info = set_quota(&ts, &id, json!({"records": 30})).await;
    assert_eq!(info["quota"], json!({"records": 30}));
    assert_eq!(upsert(&tenant, "docs", recs(&["r6", "r7"])).await.0, StatusCode::OK);
    set_quota(&ts, &id, json!({"records": 1})).await;
    assert_eq!(upsert(&tenant, "docs", recs(&["r8"])).await.0, StatusCode::FORBIDDEN);
    let info = set_quota(&ts, &id, json!({})).await;
    assert!(info.get("quota").is_none(), "{info}");
    assert_eq!(upsert(&tenant, "docs", recs(&["r8"])).await.0, StatusCode::OK);
    // Bad quotas are refused with the field named.
    let (s, v) =
        ts.call(Some(ADMIN_KEY), Method::PUT, &format!("/v1/keys/{id}/quota"), Some(json!({"records": -1}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().contains("records"), "{v}");
    assert_eq!(ts.call(Some(ADMIN_KEY), Method::PUT, "/v1/keys/nosuchkey000/quota", Some(json!({}))).await.0, 404);

    // Bytes: id + 4 × dim + text (+ metadata) per record.
    let (small, _) =
        key_with(&ts, json!({"name": "small", "role": "writer", "collections": ["other"], "quota": {"bytes": 100}}))
            .await;
    let rec = |id: &str, text: &str| json!({"records": [{"id": id, "vector": [0.5, 0.5, 0.5, 0.5], "text": text}]});
    let fifty = "x".repeat(50);
    assert_eq!(upsert(&small, "other", rec("b1", &fifty)).await.0, StatusCode::OK); // 2 + 16 + 50 = 68
    let (s, v) = upsert(&small, "other", rec("b2", &fifty)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("quota.bytes is 100") && msg.contains("hold 68") && msg.contains("add 68"), "{msg}");
    assert_eq!(records_in(&ts, "other").await, 1);
    // Replacing b1 with less text shrinks the use; then a small b2 fits.
    assert_eq!(upsert(&small, "other", rec("b1", "x")).await.0, StatusCode::OK); // 19
    assert_eq!(upsert(&small, "other", rec("b2", &fifty)).await.0, StatusCode::OK); // 19 + 68 = 87
    assert_eq!(upsert(&small, "other", rec("b3", "")).await.0, StatusCode::FORBIDDEN); // + 18 = 105

    // Every quota change is in the audit log, which still verifies.
    let (_, page) = ts.get(ADMIN_KEY, "/v1/audit?action=keys.quota").await;
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.iter().filter(|e| e["outcome"] == "ok").count(), 3, "{page}");
    let v = ts.running().state().verify_audit().await.unwrap();
    assert_eq!(v.problem, None);
    ts.shutdown().await;
}

both_backends!(records_and_bytes_quotas_both, records_and_bytes_quotas);

/// Status and `Retry-After` of a `GET /v1/collections` as `key`.
async fn list_as(ts: &TestServer, key: &str) -> (StatusCode, Option<u64>, Value) {
    let r = ts.client.get(format!("{}/v1/collections", ts.base)).bearer_auth(key).send().await.unwrap();
    let s = r.status();
    let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    (s, retry, r.json().await.unwrap_or(Value::Null))
}

async fn requests_per_day(backend: Backend) {
    let mut ts = TestServer::start(backend).await;
    let (key, id) = key_with(&ts, json!({"name": "daily", "role": "reader", "quota": {"requests_per_day": 3}})).await;
    for _ in 0..3 {
        assert_eq!(list_as(&ts, &key).await.0, StatusCode::OK);
    }
    let (s, retry, v) = list_as(&ts, &key).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["code"], "quota_exceeded");
    assert!(v["message"].as_str().unwrap().contains("quota.requests_per_day is 3"), "{v}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let to_midnight = 86_400 - now % 86_400;
    let retry = retry.expect("Retry-After");
    assert!(retry.abs_diff(to_midnight) <= 5, "Retry-After {retry}, midnight UTC in {to_midnight} s");
    // Other keys are unaffected; a raised quota is in force at once.
    assert_eq!(list_as(&ts, ADMIN_KEY).await.0, StatusCode::OK);
    set_quota(&ts, &id, json!({"requests_per_day": 5})).await;
    assert_eq!(list_as(&ts, &key).await.0, StatusCode::OK);
    assert_eq!(list_as(&ts, &key).await.0, StatusCode::OK);
    assert_eq!(list_as(&ts, &key).await.0, StatusCode::TOO_MANY_REQUESTS);

    // The day's count survives a restart.
    let data_dir = ts.dir.path().join("data");
    let database_url = (backend == Backend::Postgres).then(|| ts.db_url.clone());
    ts.shutdown_keep().await;
    let again = kernelize_server::start(kernelize_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir,
        database_url,
        admin_key: Some(ADMIN_KEY.into()),
        log_format: "text".into(),
        ..kernelize_server::Config::default()
    })
    .await
    .unwrap();
    ts.base = format!("http://{}", again.addr());
    let (s, _, v) = list_as(&ts, &key).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "after a restart: {v}");
    assert_eq!(list_as(&ts, ADMIN_KEY).await.0, StatusCode::OK);
    again.shutdown().await.unwrap();
    ts.shutdown().await;
}

both_backends!(requests_per_day_both, requests_per_day);
