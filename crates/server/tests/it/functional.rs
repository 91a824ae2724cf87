//! Records, search, embeddings, backups, usage, metrics and errors over HTTP.

use crate::both_backends;
use crate::common::{ADMIN_KEY, Backend, TestServer, vector};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn records_search_and_errors(backend: Backend) {
    let ts = TestServer::start(backend).await;
    let k = ADMIN_KEY;
    // A 384-dim collection: half the records bring vectors, half are embedded by the server.
    ts.create_collection("glosses", 384).await;
    let texts = [
        ("cat", "a small domesticated carnivorous mammal with soft fur", "noun.animal"),
        ("dog", "a domesticated animal that barks and is kept as a pet", "noun.animal"),
        ("car", "a motor vehicle with four wheels driven on roads", "noun.artifact"),
        ("oak", "a large tree that bears acorns", "noun.plant"),
        ("run", "move fast on foot", "verb.motion"),
    ];
    let records: Vec<Value> = texts
        .iter()
        .map(|(id, t, lex)| json!({"id": id, "text": t, "metadata": {"lexname": lex, "len": t.len()}}))
        .collect();
    let (s, v) = ts.post(k, "/v1/collections/glosses/records", json!({"records": records})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["written"].as_u64(), v["embedded"].as_u64()), (Some(5), Some(5)));
    let mut more = Vec::new();
    for i in 0..300u64 {
        more.push(
            json!({"id": format!("v{i:03}"), "vector": vector(i, 384), "metadata": {"i": i, "even": i % 2 == 0}}),
        );
    }
    assert_eq!(ts.post(k, "/v1/collections/glosses/records", json!({"records": more})).await.0, StatusCode::OK);

    // Get, with and without the vector; scan pages through everything exactly once.
    let (s, r) = ts.get(k, "/v1/collections/glosses/records/cat").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["vector"].as_array().unwrap().len(), 384);
    assert_eq!(r["metadata"]["lexname"], "noun.animal");
    let (_, r) = ts.get(k, "/v1/collections/glosses/records/cat?vector=false").await;
    assert!(r.get("vector").is_none());
    let mut seen = std::collections::BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let q = after.as_ref().map_or(String::new(), |a| format!("&after={a}"));
        let (s, page) = ts.get(k, &format!("/v1/collections/glosses/records?limit=64{q}")).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        for r in page["records"].as_array().unwrap() {
            assert!(seen.insert(r["id"].as_str().unwrap().to_owned()));
            assert!(r.get("vector").is_none());
        }
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 305);
    let (_, info) = ts.get(k, "/v1/collections/glosses").await;
    assert_eq!((info["records"].as_u64(), info["dim"].as_u64()), (Some(305), Some(384)));

    // Search: text (embedded), vector, keyword, hybrid, filters in both forms, exact.
    let (s, r) =
        ts.post(k, "/v1/collections/glosses/search", json!({"text": "small carnivore with soft fur", "k": 3})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["hits"][0]["id"], "cat", "{r}");
    let (_, r) = ts.post(k, "/v1/collections/glosses/search", json!({"vector": vector(7, 384), "k": 1})).await;
    assert_eq!(r["hits"][0]["id"], "v007");
    assert!((r["hits"][0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-3);
    let (_, r) =
        ts.post(k, "/v1/collections/glosses/search", json!({"text": "acorns", "mode": "keyword", "k": 3})).await;
    assert_eq!(r["hits"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["hits"][0]["id"], "oak");
    let (_, r) = ts.post(k, "/v1/collections/glosses/search", json!({"text": "barks", "mode": "hybrid", "k": 5})).await;
    assert_eq!(r["hits"][0]["id"], "dog", "{r}");
    let q = json!({"text": "an animal", "k": 10, "filter": "lexname = \"noun.animal\""});
    let (_, r) = ts.post(k, "/v1/collections/glosses/search", q).await;
    let ids: std::collections::BTreeSet<&str> =
        r["hits"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["cat", "dog"].into());
    let q = json!({"vector": vector(10, 384), "k": 5, "filter": {"and": [{"field": "even", "eq": true}, {"field": "i", "lt": 20}]}, "exact": true, "include_vectors": true});
    let (s, r) = ts.post(k, "/v1/collections/glosses/search", q).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["hits"][0]["id"], "v010");
    assert_eq!(r["hits"][0]["vector"].as_array().unwrap().len(), 384);
    for h in r["hits"].as_array().unwrap() {
        let i = h["metadata"]["i"].as_u64().unwrap();
        assert!(i % 2 == 0 && i < 20);
    }

    // Embed matches what upsert stored.
    let (s, e) = ts.post(k, "/v1/embed", json!({"texts": [texts[0].1, ""]})).await;
    assert_eq!(s, StatusCode::OK);
    let (_, cat) = ts.get(k, "/v1/collections/glosses/records/cat").await;
    assert_eq!(e["vectors"][0], cat["vector"]);
    assert_eq!(e["dim"], 384);

    // Delete one and a batch.
    assert_eq!(ts.call(Some(k), Method::DELETE, "/v1/collections/glosses/records/run", None).await.0, StatusCode::OK);
    let (s, _) = ts.post(k, "/v1/collections/glosses/records:delete", json!({"ids": ["v000", "v001"]})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ts.get(k, "/v1/collections/glosses/records/v001").await.0, StatusCode::NOT_FOUND);
    let (_, info) = ts.get(k, "/v1/collections/glosses").await;
    assert_eq!(info["records"], 302);

    // Bad input: clear 4xx in the one error shape, naming what is wrong; nothing written.
    let bad: Vec<(Value, &str, &str)> = vec![
        (json!({"records": [{"id": "x", "vector": [1.0, 2.0]}]}), "records", "2 dimensions"),
        (json!({"records": [{"id": "", "vector": vector(1, 384)}]}), "records", "id is empty"),
        (json!({"records": [{"id": "x"}]}), "records", "records[0]"),
        (json!({"records": []}), "records", "empty"),
        (json!({"records": [{"id": "x", "vector": vector(1, 384), "extra": 1}]}), "records", "unknown field"),
        (json!({"k": 0, "vector": vector(1, 384)}), "search", "k must be"),
        (json!({"k": 100000, "vector": vector(1, 384)}), "search", "k must be"),
        (json!({"ef": 0, "vector": vector(1, 384)}), "search", "ef must be"),
        (json!({"vector": [0.5]}), "search", "dimension"),
        (json!({"vector": vector(1, 384), "filter": "nosuch = 1"}), "search", "unknown field"),
        (json!({"vector": vector(1, 384), "filter": "lexname = "}), "search", "filter"),
        (json!({"k": 3}), "search", "vector"),
        (json!({"vector": vector(1, 384), "mode": "keyword"}), "search", "keyword search needs"),
    ];
    for (body, route, needle) in bad {
        let (s, v) = ts.post(k, &format!("/v1/collections/glosses/{route}"), body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["code"], "invalid_request");
        assert!(v["message"].as_str().unwrap().contains(needle), "{body}: {v}");
        assert!(!v["request_id"].as_str().unwrap().is_empty());
    }
    assert_eq!(ts.get(k, "/v1/collections/glosses/records/x").await.0, StatusCode::NOT_FOUND);
    let raw = |body: &'static str, ct: &'static str| {
        ts.client
            .post(format!("{}/v1/collections/glosses/records", ts.base))
            .bearer_auth(k)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = raw("{\"records\": [", "application/json").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = raw("{}", "text/plain").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "unsupported_media_type");
    let (s, v) = ts.get(k, "/v1/nowhere").await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (s, v) = ts.call(Some(k), Method::PUT, "/v1/collections", None).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")));
    let (s, v) = ts.get(k, "/v1/collections/nosuch").await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (s, _) = ts.post(k, "/v1/collections", json!({"name": "glosses", "dim": 3})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = ts.post(k, "/v1/collections", json!({"name": "bad name!", "dim": 3})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Backups run in the background and can be polled to completion.
    let (s, b) = ts.post(k, "/v1/backups", json!({"format": "tar"})).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let id = b["id"].as_str().unwrap();
    let mut state = String::new();
    for _ in 0..200 {
        let (_, st) = ts.get(k, &format!("/v1/backups/{id}")).await;
        state = st["state"].as_str().unwrap().to_owned();
        if state != "running" {
            assert_eq!(st["collections"], 1, "{st}");
            let report = kernelize_store::verify(std::path::Path::new(st["path"].as_str().unwrap())).unwrap();
            assert!(report.problems.is_empty(), "{report:?}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(state, "succeeded");

    // Usage: this key's writes and embeddings are counted.
    let (_, u) = ts.get(k, "/v1/usage").await;
    let mine = u["keys"].as_array().unwrap().iter().find(|r| r["key_id"] == "admin000test").cloned().unwrap();
    assert_eq!(mine["records_written"], 305 + 3);
    assert!(mine["texts_embedded"].as_i64().unwrap() > 5 + 2, "{mine}");
    assert!(mine["bytes_stored"].as_i64().unwrap() > 305 * 384 * 4);
    assert!(mine["requests"].as_i64().unwrap() > 20);

    // Metrics: route templates, never raw ids.
    let m = ts.client.get(format!("{}/metrics", ts.base)).bearer_auth(k).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("route=\"/v1/collections/{name}/records/{id}\""), "{m}");
    assert!(!m.contains("v001"));
    assert!(m.contains("kernelize_collection_records{collection=\"glosses\"} 302"), "{m}");
    assert!(m.contains("kernelize_searches_total{collection=\"glosses\"}"));

    // Drop.
    assert_eq!(ts.call(Some(k), Method::DELETE, "/v1/collections/glosses", None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(ts.get(k, "/v1/collections/glosses").await.0, StatusCode::NOT_FOUND);
    ts.shutdown().await;
}

both_backends!(records_search_and_errors_both, records_search_and_errors);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_docs_headers_and_closed_cors() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let r = ts.client.get(format!("{}/readyz", ts.base)).header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert!(h.get("access-control-allow-origin").is_none(), "CORS is closed by default");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(h["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert!(!h["x-request-id"].is_empty());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["checks"]["metadata_store"], "ok");
    assert_eq!(v["checks"]["data_dir"], "ok");
    // A client's request id never stands in for the server's: the header and the error
    // carry the server's own (the audit detail records the client's, see security.rs).
    let r =
        ts.client.get(format!("{}/v1/collections", ts.base)).header("x-request-id", "trace-123").send().await.unwrap();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(rid, "trace-123");
    assert_eq!(r.json::<Value>().await.unwrap()["request_id"], rid.as_str());
    let html = ts.client.get(format!("{}/docs", ts.base)).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("/v1/collections/{name}/search") && html.contains("<html"));
    assert!(!html.contains("<script"));
    let doc: Value = ts.client.get(format!("{}/openapi.json", ts.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    ts.shutdown().await;

    let ts = TestServer::start_with(Backend::Sqlite, |c| c.cors_origins = vec!["https://app.example".into()]).await;
    let r = ts.client.get(format!("{}/healthz", ts.base)).header("origin", "https://app.example").send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    let r =
        ts.client.get(format!("{}/healthz", ts.base)).header("origin", "https://evil.example").send().await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    ts.shutdown().await;
}

/// `explain: true` says what a search did (and only then); the slow-query log keeps the
/// explain of searches at or over `slow_query_ms`, for admins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_explain_and_the_slow_query_log() {
    let ts = TestServer::start_with(Backend::Sqlite, |c| {
        c.slow_query_ms = 1;
        c.memtable_mb = 1;
    })
    .await;
    let k = ADMIN_KEY;
    ts.create_collection("e", 384).await;
    // 1,500 records of 384 floats (2.3 MB) fill the 1 MiB memtable: at least one segment.
    for chunk in (0..1500u64).collect::<Vec<_>>().chunks(500) {
        let recs: Vec<Value> = chunk
            .iter()
            .map(|&i| json!({"id": format!("r{i}"), "vector": vector(i, 384), "text": format!("record number {i}"), "metadata": {"i": i}}))
            .collect();
        let (s, v) = ts.post(k, "/v1/collections/e/records", json!({"records": recs})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let mut segments = 0;
    for _ in 0..100 {
        let (_, info) = ts.get(k, "/v1/collections/e").await;
        segments = info["segments"].as_u64().unwrap_or(0);
        if segments > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(segments > 0, "a flush should have written a segment");

    // Not asked: no explain in the response.
    let (s, r) = ts.post(k, "/v1/collections/e/search", json!({"vector": vector(3, 384), "k": 5})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(r.get("explain").is_none(), "{r}");
    // Asked: the plan per segment, the work counted, and the same hits.
    let (_, e) =
        ts.post(k, "/v1/collections/e/search", json!({"vector": vector(3, 384), "k": 5, "explain": true})).await;
    assert_eq!(e["hits"], r["hits"]);
    let ex = &e["explain"];
    let segs = ex["segments"].as_array().unwrap();
    assert_eq!(segs.len() as u64, segments, "{ex}");
    for s in segs {
        assert_eq!((s["stage"].as_str(), s["plan"].as_str()), (Some("vector"), Some("walk")), "{s}");
        assert!(s["scored"].as_u64().unwrap() >= 5 && s["rows"].as_u64().unwrap() > 0, "{s}");
    }
    assert_eq!(ex["rows_decoded"], 5, "{ex}");
    assert!(ex["total_us"].as_f64().unwrap() > 0.0 && ex.get("embed_us").is_none(), "{ex}");
    // A filter that one record in 1,500 passes is scanned, not walked.
    let q = json!({"vector": vector(3, 384), "k": 5, "explain": true, "filter": "i = 7"});
    let (_, e) = ts.post(k, "/v1/collections/e/search", q).await;
    assert_eq!(e["hits"][0]["id"], "r7", "{e}");
    assert!(e["explain"]["segments"].as_array().unwrap().iter().all(|s| s["plan"] == "scan"), "{e}");

    // Slow: embedding a long text takes well over 1 ms; the log keeps it with its explain,
    // the text's length but not the text.
    let long = "the quick brown fox jumps over the lazy dog ".repeat(40);
    let (s, e) = ts.post(k, "/v1/collections/e/search", json!({"text": long, "k": 3, "explain": true})).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert!(e["explain"]["embed_us"].as_f64().unwrap() > 0.0, "{e}");
    let (s, log) = ts.get(k, "/v1/slow-queries").await;
    assert_eq!(s, StatusCode::OK, "{log}");
    assert_eq!(log["threshold_ms"], 1);
    let newest = &log["queries"][0];
    assert_eq!((newest["collection"].as_str(), newest["mode"].as_str()), (Some("e"), Some("vector")), "{log}");
    assert_eq!(newest["text_chars"], long.chars().count());
    assert!(newest["took_ms"].as_f64().unwrap() >= 1.0, "{newest}");
    assert!(newest["explain"]["segments"].is_array() && newest["request_id"].is_string(), "{newest}");
    assert!(!log.to_string().contains("quick brown fox"), "the query text is not kept");
    // Admins only.
    let reader = ts.key("reader", None).await;
    assert_eq!(ts.get(&reader, "/v1/slow-queries").await.0, StatusCode::FORBIDDEN);
}
