//! Image and audio collections over HTTP: creation by modality, records and queries that
//! bring base64 files, `/v1/embed` of media, and the errors of mixing them up.

use crate::common::{ADMIN_KEY, Backend, TestServer};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn fixture_files(kind: &str, exts: &[&str], n: usize) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../media/tests/fixtures").join(kind);
    let mut files: Vec<PathBuf> = fs_err::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)))
        .filter(|p| fs_err::metadata(p).unwrap().len() < 300_000)
        .collect();
    files.sort();
    assert!(files.len() >= n, "need {n} fixtures in {}", dir.display());
    files.truncate(n);
    files
}

fn b64(p: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(fs_err::read(p).unwrap())
}

fn ids(r: &Value) -> Vec<String> {
    r["hits"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn image_collections_take_files_and_search_by_image() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let k = ADMIN_KEY;
    let (s, info) = ts.post(k, "/v1/collections", json!({"name": "photos", "modality": "image"})).await;
    assert_eq!(s, StatusCode::CREATED, "{info}");
    assert_eq!(info["dim"], 1280);
    assert_eq!(info["encoder"]["model"], "EfficientNet-Lite0");
    assert_eq!(info["encoder"]["modality"], "image");

    let files = fixture_files("images", &["jpg", "png", "webp"], 5);
    let records: Vec<Value> = files
        .iter()
        .enumerate()
        .map(|(i, f)| json!({"id": format!("img{i}"), "media": b64(f), "metadata": {"i": i}}))
        .collect();
    let (s, w) = ts.post(k, "/v1/collections/photos/records", json!({"records": records})).await;
    assert_eq!(s, StatusCode::OK, "{w}");
    assert_eq!((w["written"].as_u64(), w["embedded"].as_u64()), (Some(5), Some(5)));
    let (_, r) = ts.get(k, "/v1/collections/photos/records/img2").await;
    assert_eq!(r["metadata"]["i"], 2);
    assert_eq!(r["metadata"]["media"]["source"], "upload");
    assert_eq!(r["metadata"]["media"]["sha256"].as_str().unwrap().len(), 64);
    assert!(r["metadata"]["media"]["label"].is_string(), "{r}");

    // More like this: each image finds itself first.
    for (i, f) in files.iter().enumerate() {
        let (s, hits) = ts.post(k, "/v1/collections/photos/search", json!({"media": b64(f), "k": 3})).await;
        assert_eq!(s, StatusCode::OK, "{hits}");
        assert_eq!(ids(&hits)[0], format!("img{i}"));
        assert!(hits["hits"][0]["score"].as_f64().unwrap() > 0.999);
    }
    // The file is kept and served back inert, with its media type.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/collections/photos/records/img2/media", ts.base))
        .bearer_auth(k)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("image/"), "{ct}");
    assert!(resp.headers()["content-security-policy"].to_str().unwrap().contains("sandbox"));
    assert_eq!(resp.bytes().await.unwrap().as_ref(), fs_err::read(&files[2]).unwrap().as_slice());
    let (s, v) = ts.get(k, "/v1/collections/photos/records/nope/media").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // The embed route gives the stored vector.
    let (s, e) = ts.post(k, "/v1/embed", json!({"modality": "image", "media": [b64(&files[2])]})).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["dim"], 1280);
    let (_, stored) = ts.get(k, "/v1/collections/photos/records/img2").await;
    assert_eq!(e["vectors"][0], stored["vector"]);
    assert!(e["info"][0]["width"].is_u64());

    // Mix-ups are 400s that say what is wrong.
    let bad: Vec<(&str, Value, &str)> = vec![
        ("/v1/collections/photos/records", json!({"records": [{"id": "t", "text": "a cat"}]}), "needs `media`"),
        ("/v1/collections/photos/records", json!({"records": [{"id": "x", "media": "%%%"}]}), "not base64"),
        (
            "/v1/collections/photos/records",
            json!({"records": [{"id": "x", "media": "aGVsbG8gd29ybGQ="}]}),
            "records[0]",
        ),
        ("/v1/collections/photos/search", json!({"text": "a cat"}), "keyword mode"),
        ("/v1/embed", json!({"media": ["aGVsbG8="]}), "needs `modality`"),
        ("/v1/collections", json!({"name": "p2", "modality": "image", "dim": 384}), "does not match"),
        ("/v1/collections", json!({"name": "p3"}), "give `dim`"),
    ];
    for (path, body, want) in bad {
        let (s, v) = ts.post(k, path, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path} {body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(want), "{path} {body}: {v}");
    }
    // A text collection refuses media.
    ts.create_collection("plain", 4).await;
    let (s, v) = ts.post(k, "/v1/collections/plain/search", json!({"media": b64(&files[0])})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().contains("no image or audio encoder"), "{v}");
    ts.shutdown().await;
}

#[tokio::test]
async fn audio_collections_search_by_voice() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let k = ADMIN_KEY;
    let (s, info) = ts.post(k, "/v1/collections", json!({"name": "voices", "modality": "audio"})).await;
    assert_eq!(s, StatusCode::CREATED, "{info}");
    assert_eq!(info["dim"], 256);
    let files = fixture_files("audio", &["wav", "flac"], 3);
    let records: Vec<Value> =
        files.iter().enumerate().map(|(i, f)| json!({"id": format!("clip{i}"), "media": b64(f)})).collect();
    let (s, w) = ts.post(k, "/v1/collections/voices/records", json!({"records": records})).await;
    assert_eq!(s, StatusCode::OK, "{w}");
    let (_, r) = ts.get(k, "/v1/collections/voices/records/clip1").await;
    assert!(r["metadata"]["media"]["duration_secs"].as_f64().unwrap() > 0.1, "{r}");
    let (s, hits) = ts.post(k, "/v1/collections/voices/search", json!({"media": b64(&files[1]), "k": 2})).await;
    assert_eq!(s, StatusCode::OK, "{hits}");
    assert_eq!(ids(&hits)[0], "clip1");
    ts.shutdown().await;
}

/// Creates `name` with `modality` and uploads `files` as `{prefix}{i}` (kept by the server).
async fn seed(ts: &TestServer, name: &str, modality: &str, prefix: &str, files: &[PathBuf]) {
    let (s, v) = ts.post(ADMIN_KEY, "/v1/collections", json!({"name": name, "modality": modality})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let records: Vec<Value> =
        files.iter().enumerate().map(|(i, f)| json!({"id": format!("{prefix}{i}"), "media": b64(f)})).collect();
    let (s, v) = ts.post(ADMIN_KEY, &format!("/v1/collections/{name}/records"), json!({"records": records})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_in_chromium() {
    use crate::browser::{artifacts, console_tests, run_node};
    let dir = console_tests();
    let ts = TestServer::start(Backend::Sqlite).await;
    seed(&ts, "photos", "image", "img", &fixture_files("images", &["jpg", "png", "webp"], 4)).await;
    seed(&ts, "voices", "audio", "clip", &fixture_files("audio", &["wav", "flac", "ogg"], 2)).await;
    let reader = ts.key("reader", Some(vec!["photos", "voices"])).await;
    let out = artifacts("media");
    let (base, out2) = (ts.base.clone(), out.clone());
    let (ok, stderr) = tokio::task::spawn_blocking(move || {
        let args = ["media.test.mjs".as_ref(), base.as_ref(), reader.as_ref(), out2.as_os_str()];
        run_node(&dir, &args, std::time::Duration::from_secs(180))
    })
    .await
    .unwrap();
    assert!(ok, "the media browser test failed (screenshots in {}):\n{stderr}", out.display());
    eprintln!("{stderr}");
    ts.shutdown().await;
}
