//! The web console: how `/console` is served (types, ETags, its CSP without
//! `'unsafe-inline'`, 404s), the API additions it uses (filtered record pages, the audit
//! verdict), and the browser test: `crates/server/console-tests/console.test.mjs` run with
//! node (playwright-core driving Debian's Chromium; axe-core over every view) against a
//! real server. `scripts/console-tests.sh --prepare` installs what that needs.

use crate::common::{ADMIN_KEY, Backend, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn content_type_of(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => panic!("an asset of unknown type: {path}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_is_served_with_types_etags_and_a_strict_policy() {
    let ts = TestServer::start(Backend::Sqlite).await;
    for path in ["/console", "/console/"] {
        let r = ts.client.get(format!("{}{path}", ts.base)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert_eq!(csp, kernelize_server::console::POLICY.csp);
        for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"] {
            assert!(csp.contains(directive), "{csp}");
        }
        assert!(!csp.contains("unsafe"), "no unsafe-inline or unsafe-eval: {csp}");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let html = r.text().await.unwrap();
        assert!(html.contains(r#"<script type="module" src="/console/js/app.js"></script>"#), "{html}");
    }
    for path in kernelize_server::console::asset_paths() {
        let url = format!("{}/console/{path}", ts.base);
        let r = ts.client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["content-type"], content_type_of(path), "{path}");
        assert_eq!(r.headers()["cache-control"], "no-cache", "{path}");
        assert!(!r.headers()["content-security-policy"].to_str().unwrap().contains("unsafe"), "{path}");
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.len() == 34, "a strong ETag: {etag}");
        let body = r.text().await.unwrap();
        assert!(!body.is_empty() && !body.contains("unsafe-inline"), "{path}");
        let again = ts.client.get(&url).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(again.headers()["etag"], etag.as_str());
        let stale = ts.client.get(&url).header("if-none-match", "\"other\"").send().await.unwrap();
        assert_eq!(stale.status(), StatusCode::OK, "{path}");
    }
    // Unknown console paths are the API's 404; API answers keep their own policy.
    for path in ["/console/nope.js", "/console/..%2findex.html", "/console/js/"] {
        let r = ts.client.get(format!("{}{path}", ts.base)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-store");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "not_found", "{path}: {v}");
    }
    let r = ts.client.post(format!("{}/console/", ts.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = ts.client.get(format!("{}/healthz", ts.base)).send().await.unwrap();
    assert_eq!(r.headers()["content-security-policy"], "default-src 'none'; frame-ancestors 'none'");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let r = ts.client.get(format!("{}/docs", ts.base)).send().await.unwrap();
    assert_eq!(r.headers()["content-security-policy"], kernelize_server::api::PagePolicy::DOCS.csp);
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_pages_filter_on_the_server_and_the_audit_chain_is_verified_over_http() {
    let ts = TestServer::start(Backend::Sqlite).await;
    ts.create_collection("docs", 2).await;
    let records: Vec<Value> = (0..50)
        .map(|i| json!({"id": format!("r{i}"), "vector": [1.0, i as f32], "metadata": {"pos": if i % 5 == 0 { "n" } else { "v" }, "i": i}}))
        .collect();
    let (s, v) = ts.post(ADMIN_KEY, "/v1/collections/docs/records", json!({"records": records})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Pages of 3 nouns, followed by their cursor, hold exactly the 10 nouns, once each.
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let (s, page) = ts
            .get(ADMIN_KEY, &format!("/v1/collections/docs/records?limit=3&filter=pos%20%3D%20%22n%22&after={after}"))
            .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        for r in page["records"].as_array().unwrap() {
            assert_eq!(r["metadata"]["pos"], "n", "{page}");
            seen.push(r["id"].as_str().unwrap().to_owned());
        }
        match page["next_after"].as_str() {
            Some(a) => after = a.to_owned(),
            None => break,
        }
    }
    seen.sort();
    let mut want: Vec<String> = (0..50).filter(|i| i % 5 == 0).map(|i| format!("r{i}")).collect();
    want.sort();
    assert_eq!(seen, want);
    let (_, page) =
        ts.get(ADMIN_KEY, "/v1/collections/docs/records?filter=i%20%3E%3D%2045%20and%20pos%20%3D%20%22n%22").await;
    assert_eq!(page["records"].as_array().unwrap().len(), 1, "{page}");
    assert!(page.get("next_after").is_none(), "{page}");
    let (s, v) = ts.get(ADMIN_KEY, "/v1/collections/docs/records?filter=pos%20%3D%3D").await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("filter:"), "{v}");

    let (s, v) = ts.get(ADMIN_KEY, "/v1/audit/verify").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["problem"].is_null(), "{v}");
    assert!(v["entries"].as_i64().unwrap() >= 3 && v["keyed_from"].as_i64().is_some(), "{v}");
    let (_, page) = ts.get(ADMIN_KEY, "/v1/audit?action=audit.verify").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1, "verifying is audited: {page}");
    ts.shutdown().await;
}

/// Reads server-sent events from `r` until the stream ends or `secs` pass: (event, id,
/// data) in order.
/// `(event, id, data)` of a job stream's events, read until it ends or `secs` pass.
pub async fn read_events(mut r: reqwest::Response, secs: u64) -> Vec<(String, String, Value)> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut text = String::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, r.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).map(str::to_owned);
            let data = field("data: ")?;
            Some((
                field("event: ").unwrap_or_default(),
                field("id: ").unwrap_or_default(),
                serde_json::from_str(&data).unwrap(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_builds_and_backups_stream_their_progress_and_event_streams_are_capped() {
    let ts = TestServer::start_with(Backend::Sqlite, |c| c.limits.max_event_streams = 2).await;
    ts.create_collection("docs", 8).await;
    let records: Vec<Value> = (0..3000)
        .map(|i| json!({"id": format!("r{i}"), "vector": crate::common::vector(i, 8), "text": format!("record {i}")}))
        .collect();
    let (s, v) = ts.post(ADMIN_KEY, "/v1/collections/docs/records", json!({"records": records})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, k) = ts.post(ADMIN_KEY, "/v1/kernels", json!({"collection": "docs"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{k}");
    let id = k["id"].as_str().unwrap();
    let reader = ts.key("reader", None).await;
    let r = ts.client.get(format!("{}/v1/kernels/{id}/events", ts.base)).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = read_events(r, 120).await;
    assert!(!events.is_empty(), "the stream sent something and ended");
    for (i, (name, eid, doc)) in events.iter().enumerate() {
        assert_eq!(name, "kernel");
        assert_eq!(eid, &(i + 1).to_string(), "numbered from 1");
        assert_eq!(doc["id"], id, "{doc}");
        let f = doc["progress"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&f), "{doc}");
    }
    let last = &events.last().unwrap().2;
    assert_eq!(last["state"], "succeeded", "the last event is the finished kernel: {last}");
    assert!(last["manifest"]["rows"].as_u64().unwrap() > 0, "{last}");
    assert!(events[..events.len() - 1].iter().all(|e| e.2["state"] == "running"), "only the last has ended");
    // A finished kernel: one event, then the end. Out of scope or unknown: refused.
    let r = ts.client.get(format!("{}/v1/kernels/{id}/events", ts.base)).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(read_events(r, 10).await.len(), 1);
    let outsider = ts.key("reader", Some(vec!["other"])).await;
    let (s, v) = ts.get(&outsider, &format!("/v1/kernels/{id}/events")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = ts.get(ADMIN_KEY, "/v1/kernels/nope/events").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // A backup: its stream ends with the finished job; readers may not follow it.
    let (s, b) = ts.post(ADMIN_KEY, "/v1/backups", json!({"format": "tar"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let bid = b["id"].as_str().unwrap();
    let (s, v) = ts.get(&reader, &format!("/v1/backups/{bid}/events")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let r = ts.client.get(format!("{}/v1/backups/{bid}/events", ts.base)).bearer_auth(ADMIN_KEY).send().await.unwrap();
    let events = read_events(r, 60).await;
    let last = &events.last().unwrap().2;
    assert_eq!((last["id"].as_str(), last["state"].as_str()), (Some(bid), Some("succeeded")), "{events:?}");
    assert!(last["bytes"].as_i64().unwrap() > 0 && last.get("progress").is_none(), "{last}");

    // limits.max_event_streams = 2: a third open stream is refused until one closes.
    let open = |key: &str| ts.client.get(format!("{}/v1/fleet/events", ts.base)).bearer_auth(key.to_owned()).send();
    let a = open(ADMIN_KEY).await.unwrap();
    let b = open(&reader).await.unwrap();
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    let c = open(ADMIN_KEY).await.unwrap();
    assert_eq!(c.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(c.headers().contains_key("retry-after"));
    let v: Value = c.json().await.unwrap();
    assert_eq!(v["code"], "overloaded", "{v}");
    let (s, _) = ts.get(ADMIN_KEY, &format!("/v1/kernels/{id}/events")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "job streams count too");
    drop(a);
    // The server notices the closed connection at its next write (a keep-alive at the
    // latest): wait for the slot to come back.
    let mut again = false;
    for _ in 0..200 {
        if open(ADMIN_KEY).await.unwrap().status() == StatusCode::OK {
            again = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(again, "a closed stream gives its slot back");
    drop(b);
    ts.shutdown().await;
}

/// Runs browser test `script` (in `console-tests/`) against `ts` for at most 5 minutes,
/// screenshots in [`crate::browser::artifacts`]`(sub)`; returns that directory.
async fn run_browser_test(ts: &TestServer, script: &'static str, sub: &'static str) -> std::path::PathBuf {
    let dir = crate::browser::console_tests();
    let artifacts = crate::browser::artifacts(sub);
    let (base, out) = (ts.base.clone(), artifacts.clone());
    let (ok, stderr) = tokio::task::spawn_blocking(move || {
        let args = [script.as_ref(), base.as_ref(), ADMIN_KEY.as_ref(), out.as_os_str()];
        crate::browser::run_node(&dir, &args, std::time::Duration::from_secs(300))
    })
    .await
    .unwrap();
    assert!(ok, "the browser test failed (screenshots in {}):\n{stderr}", artifacts.display());
    eprintln!("{stderr}");
    artifacts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let artifacts = run_browser_test(&ts, "console.test.mjs", "views").await;
    assert!(artifacts.join("01-sign-in.png").exists());
    ts.shutdown().await;
}

/// A key over its rate limit gets 429: the console says so, with the server's wait, and
/// loads again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_explains_a_rate_limit_in_chromium() {
    let ts = TestServer::start_with(Backend::Sqlite, |c| {
        c.limits.rate_per_sec = 1;
        c.limits.burst = 8;
    })
    .await;
    let artifacts = run_browser_test(&ts, "ratelimit.test.mjs", "rate-limit").await;
    assert!(artifacts.join("01-rate-limited.png").exists());
    ts.shutdown().await;
}
