//! Hosted kernels over real HTTP: a background build with progress, the manifest and
//! report, download with Range (resume) verified under the server's public key, queries,
//! a failed build, deletion, and their audit entries.

use crate::both_backends;
use crate::common::{ADMIN_KEY, Backend, TestServer, vector};
use crate::matrix::built_kernel;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn download(ts: &TestServer, id: &str, range: Option<&str>) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let mut r = ts.client.get(format!("{}/v1/kernels/{id}/download", ts.base)).bearer_auth(ADMIN_KEY);
    if let Some(range) = range {
        r = r.header("range", range);
    }
    let r = r.send().await.unwrap();
    let (s, h) = (r.status(), r.headers().clone());
    (s, h, r.bytes().await.unwrap().to_vec())
}

async fn kernels_over_http(backend: Backend) {
    let ts = TestServer::start(backend).await;
    ts.create_collection("docs", 8).await;
    let recs: Vec<Value> = (0..300)
        .map(|i| {
            json!({"id": format!("r{i}"), "vector": vector(i, 8), "text": format!("record number {i}"),
                   "metadata": {"even": i % 2 == 0}})
        })
        .collect();
    assert_eq!(ts.post(ADMIN_KEY, "/v1/collections/docs/records", json!({"records": recs})).await.0, StatusCode::OK);

    let id = built_kernel(&ts).await;
    let (s, info) = ts.get(ADMIN_KEY, &format!("/v1/kernels/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((info["state"].as_str(), info["progress"].as_f64()), (Some("succeeded"), Some(1.0)), "{info}");
    assert_eq!(info["ids"], 300);
    let m = &info["manifest"];
    assert_eq!(m["source"]["collection"], "docs");
    assert!(m["report"]["eval"]["recall"].as_f64().unwrap() > 0.5, "{m}");

    // Download in two ranges (a device resuming) equals the whole file, which verifies
    // under the key the server publishes.
    let (s, h, full) = download(&ts, &id, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "application/octet-stream");
    assert!(h["content-disposition"].to_str().unwrap().contains(&format!("{id}.kernel")));
    assert_eq!(full.len() as u64, info["bytes"].as_u64().unwrap());
    let (s, h, head) = download(&ts, &id, Some("bytes=0-999")).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(head.len(), 1000);
    assert!(h["content-range"].to_str().unwrap().starts_with("bytes 0-999/"));
    let (s, _, tail) = download(&ts, &id, Some("bytes=1000-")).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!([head, tail].concat(), full);
    let (s, _, _) = download(&ts, &id, Some(&format!("bytes={}-", full.len() + 10))).await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    let (_, key) = ts.get(ADMIN_KEY, "/v1/kernel-signing-key").await;
    let pk = kernelize_kernel::PublicKey::from_hex(key["public_key"].as_str().unwrap()).unwrap();
    assert_eq!(pk.key_id(), key["key_id"].as_str().unwrap());
    let trust = kernelize_kernel::Trust { public_key: Some(pk), ..Default::default() };
    let k = kernelize_kernel::Kernel::from_bytes(&full, "download", &trust).unwrap();
    assert_eq!(k.manifest().ids, 300);

    // Queries: vector, filter, bad input.
    let q = json!({"vector": vector(42, 8), "k": 5});
    let (s, v) = ts.post(ADMIN_KEY, &format!("/v1/kernels/{id}/query"), q).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["hits"][0]["ids"][0], "r42", "{v}");
    assert_eq!(v["hits"][0]["text"], "record number 42");
    let q = json!({"vector": vector(42, 8), "k": 5, "filter": "even = false"});
    let (_, v) = ts.post(ADMIN_KEY, &format!("/v1/kernels/{id}/query"), q).await;
    assert_eq!(v["hits"].as_array().unwrap().len(), 5);
    assert!(v["hits"].as_array().unwrap().iter().all(|h| h["metadata"]["even"] == false), "{v}");
    for (bad, what) in [
        (json!({"vector": [1.0, 2.0], "k": 5}), "dimensions"),
        (json!({"vector": vector(1, 8), "k": 0}), "k must be"),
        (json!({"vector": vector(1, 8), "filter": "colour = 1"}), "unknown field"),
        (json!({"k": 3}), "vector"),
    ] {
        let (s, v) = ts.post(ADMIN_KEY, &format!("/v1/kernels/{id}/query"), bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap().contains(what), "{v}");
    }
    let (s, _) = ts.post(ADMIN_KEY, "/v1/kernels/nope/query", json!({"vector": vector(1, 8)})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = ts.post(ADMIN_KEY, "/v1/kernels", json!({"collection": "docs", "dedup_threshold": 2.0})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // A build that cannot succeed ends failed, with the reason.
    ts.create_collection("empty", 8).await;
    let (s, b) = ts.post(ADMIN_KEY, "/v1/kernels", json!({"collection": "empty"})).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let failed = b["id"].as_str().unwrap().to_owned();
    let mut v = Value::Null;
    for _ in 0..200 {
        v = ts.get(ADMIN_KEY, &format!("/v1/kernels/{failed}")).await.1;
        if v["state"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(v["state"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("empty"), "{v}");
    let (s, _) = ts.post(ADMIN_KEY, &format!("/v1/kernels/{failed}/query"), json!({"vector": vector(1, 8)})).await;
    assert_eq!(s, StatusCode::CONFLICT);

    // Delete: gone from the list, the file and the API.
    let (s, _) = ts.call(Some(ADMIN_KEY), reqwest::Method::DELETE, &format!("/v1/kernels/{id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(ts.get(ADMIN_KEY, &format!("/v1/kernels/{id}")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(download(&ts, &id, None).await.0, StatusCode::NOT_FOUND);
    assert!(!ts.dir.path().join("data/kernels").join(format!("{id}.kernel")).exists());

    let (_, audit) = ts.get(ADMIN_KEY, "/v1/audit?limit=1000").await;
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for a in ["kernels.build", "kernels.finish", "kernels.download", "kernels.delete"] {
        assert!(actions.contains(&a), "{a} missing from the audit log: {actions:?}");
    }
    ts.shutdown().await;
}

both_backends!(kernels_over_http_both, kernels_over_http);

async fn docs_with_records(ts: &TestServer, name: &str, metric: &str, n: u64) {
    let (s, v) = ts.post(ADMIN_KEY, "/v1/collections", json!({"name": name, "dim": 8, "metric": metric})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let recs: Vec<Value> =
        (0..n).map(|i| json!({"id": format!("r{i}"), "vector": vector(i, 8), "text": format!("secret {i}")})).collect();
    let (s, v) = ts.post(ADMIN_KEY, &format!("/v1/collections/{name}/records"), json!({"records": recs})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// Builds a kernel of `body["collection"]` as the admin and waits for it.
async fn build_and_wait(ts: &TestServer, body: Value) -> String {
    crate::common::build_kernel(ts, body).await
}

async fn kernels_of_dropped_collection_do_not_leak_to_reused_name(backend: Backend) {
    let ts = TestServer::start(backend).await;
    // Dropped through the server: its kernels are deleted with it.
    docs_with_records(&ts, "docs", "cosine", 100).await;
    let first = built_kernel(&ts).await;
    let (s, _) = ts.call(Some(ADMIN_KEY), reqwest::Method::DELETE, "/v1/collections/docs", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(ts.get(ADMIN_KEY, &format!("/v1/kernels/{first}")).await.0, StatusCode::NOT_FOUND);
    assert!(!ts.dir.path().join("data/kernels").join(format!("{first}.kernel")).exists());

    // Dropped behind the server's back (as the CLI would while it is stopped): the kernel
    // stays, bound to a collection that no longer exists.
    docs_with_records(&ts, "docs", "cosine", 100).await;
    let old = built_kernel(&ts).await;
    ts.running().state().db.drop_collection("docs").unwrap();
    ts.create_collection("docs", 8).await;
    let newcomer = ts.key("writer", Some(vec!["docs"])).await;
    let (s, list) = ts.get(&newcomer, "/v1/kernels").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["kernels"], json!([]), "the new collection's key lists the old kernels");
    assert_eq!(ts.get(&newcomer, &format!("/v1/kernels/{old}")).await.0, StatusCode::NOT_FOUND);
    let q = json!({"vector": vector(1, 8), "k": 3});
    assert_eq!(ts.post(&newcomer, &format!("/v1/kernels/{old}/query"), q.clone()).await.0, StatusCode::NOT_FOUND);
    let r =
        ts.client.get(format!("{}/v1/kernels/{old}/download", ts.base)).bearer_auth(&newcomer).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (s, _) = ts.call(Some(&newcomer), reqwest::Method::DELETE, &format!("/v1/kernels/{old}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // An admin sees the orphan, may not use it, and may delete it.
    let (_, list) = ts.get(ADMIN_KEY, "/v1/kernels").await;
    let orphan = list["kernels"].as_array().unwrap().iter().find(|k| k["id"] == old.as_str()).cloned().unwrap();
    assert_eq!(orphan["orphaned"], true);
    assert_eq!(ts.post(ADMIN_KEY, &format!("/v1/kernels/{old}/query"), q).await.0, StatusCode::CONFLICT);
    let (s, _) = ts.call(Some(ADMIN_KEY), reqwest::Method::DELETE, &format!("/v1/kernels/{old}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // A kernel of the new collection is the newcomer's.
    let recs = json!({"records": [{"id": "n1", "vector": vector(7, 8)}, {"id": "n2", "vector": vector(8, 8)}]});
    assert_eq!(ts.post(ADMIN_KEY, "/v1/collections/docs/records", recs).await.0, StatusCode::OK);
    let fresh = built_kernel(&ts).await;
    let (_, list) = ts.get(&newcomer, "/v1/kernels").await;
    assert_eq!(list["kernels"].as_array().unwrap().len(), 1);
    assert_eq!(
        (list["kernels"][0]["id"].as_str(), &list["kernels"][0]["orphaned"]),
        (Some(fresh.as_str()), &json!(false))
    );
    ts.shutdown().await;
}

both_backends!(
    kernels_of_dropped_collection_do_not_leak_to_reused_name_both,
    kernels_of_dropped_collection_do_not_leak_to_reused_name
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_download_if_range_with_wrong_validator_sends_whole_file_and_etag() {
    let ts = TestServer::start(Backend::Sqlite).await;
    docs_with_records(&ts, "docs", "cosine", 200).await;
    let id = built_kernel(&ts).await;
    let (s, h, full) = download(&ts, &id, None).await;
    assert_eq!(s, StatusCode::OK);
    let sha = kernelize_server::auth::hex(ring::digest::digest(&ring::digest::SHA256, &full).as_ref());
    let etag = format!("\"{sha}\"");
    assert_eq!(h["etag"], etag.as_str(), "a strong ETag: the file's SHA-256");
    let get = |if_range: String| {
        let url = format!("{}/v1/kernels/{id}/download", ts.base);
        let c = ts.client.clone();
        async move {
            let r = c
                .get(url)
                .bearer_auth(ADMIN_KEY)
                .header("range", "bytes=100-")
                .header("if-range", if_range)
                .send()
                .await
                .unwrap();
            (r.status(), r.headers().get("etag").cloned(), r.bytes().await.unwrap().to_vec())
        }
    };
    // The right validator resumes; a wrong, weak or date validator gets the whole file.
    let (s, e, body) = get(etag.clone()).await;
    assert_eq!((s, body.as_slice()), (StatusCode::PARTIAL_CONTENT, &full[100..]));
    assert_eq!(e.unwrap(), etag.as_str());
    for wrong in ["\"0000\"".to_owned(), format!("W/{etag}"), "Sun, 06 Dec 2026 11:00:00 GMT".to_owned()] {
        let (s, _, body) = get(wrong.clone()).await;
        assert_eq!(s, StatusCode::OK, "If-Range {wrong}");
        assert_eq!(body, full, "If-Range {wrong}");
    }
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_kernel_is_neither_downloaded_nor_queried() {
    let ts = TestServer::start(Backend::Sqlite).await;
    docs_with_records(&ts, "docs", "cosine", 100).await;
    let id = build_and_wait(&ts, json!({"collection": "docs", "expires_in_secs": 2})).await;
    // Wait until it has expired (the rule is about time).
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let (s, v) = ts.post(ADMIN_KEY, &format!("/v1/kernels/{id}/query"), json!({"vector": vector(1, 8)})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _, body) = download(&ts, &id, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("expired"));
    // It can still be described and deleted.
    assert_eq!(ts.get(ADMIN_KEY, &format!("/v1/kernels/{id}")).await.0, StatusCode::OK);
    let (s, _) = ts.call(Some(ADMIN_KEY), reqwest::Method::DELETE, &format!("/v1/kernels/{id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_kernel_query_scores_are_finite() {
    let ts = TestServer::start(Backend::Sqlite).await;
    docs_with_records(&ts, "docs", "l2", 200).await;
    for quantization in ["none", "int8", "rabitq4"] {
        let id = build_and_wait(&ts, json!({"collection": "docs", "quantization": quantization})).await;
        // Finite components whose squares overflow f32: every distance was inf, every
        // score `null`. Such a query is refused; ordinary ones score finite numbers.
        let (s, v) =
            ts.post(ADMIN_KEY, &format!("/v1/kernels/{id}/query"), json!({"vector": vec![1e19f32; 8], "k": 5})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{quantization}: {v}");
        assert!(v["message"].as_str().unwrap().contains("too large"), "{v}");
        for q in [vector(3, 8), vec![0.0; 8], vec![1e17; 8], vec![-2e17; 8]] {
            let (s, v) = ts.post(ADMIN_KEY, &format!("/v1/kernels/{id}/query"), json!({"vector": q, "k": 5})).await;
            assert_eq!(s, StatusCode::OK, "{quantization}: {v}");
            let hits = v["hits"].as_array().unwrap();
            assert_eq!(hits.len(), 5, "{v}");
            assert!(hits.iter().all(|h| h["score"].as_f64().is_some_and(f64::is_finite)), "{quantization}: {v}");
        }
    }
    ts.shutdown().await;
}
