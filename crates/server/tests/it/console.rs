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

/// node and Chromium, or a panic saying how to install them.
fn browser_tools() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("KZ_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let modules = root.join("console-tests/node_modules/playwright-core");
    assert!(
        std::path::Path::new(&chromium).exists() && modules.exists(),
        "the console's browser test needs {chromium} and {}: run scripts/console-tests.sh --prepare",
        modules.display()
    );
    root.join("console-tests/console.test.mjs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium() {
    let script = browser_tools();
    let artifacts = std::env::var_os("KZ_ARTIFACTS")
        .map_or_else(|| std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console"), std::path::PathBuf::from);
    let ts = TestServer::start(Backend::Sqlite).await;
    let (base, dir) = (ts.base.clone(), artifacts.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node").arg(script).arg(&base).arg(ADMIN_KEY).arg(&dir).output()
    })
    .await
    .unwrap()
    .expect("node runs (scripts/console-tests.sh --prepare installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser test failed (screenshots in {}):\n{stderr}", artifacts.display());
    eprintln!("{stderr}");
    assert!(artifacts.join("01-sign-in.png").exists());
    ts.shutdown().await;
}
