//! The server on an encrypted data directory: the master key from a command hook, and a
//! clear start-up error without it.

use crate::common::{ADMIN_KEY, Backend, TestServer, vector};
use kernelize_server::Config;
use reqwest::StatusCode;
use serde_json::json;

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs_err::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
    }
    out
}

#[tokio::test]
async fn server_serves_an_encrypted_data_directory_with_the_key_from_a_command() {
    let hex = "5a".repeat(32);
    let mut ts = TestServer::start_with(Backend::Sqlite, |c: &mut Config| {
        let key = kernelize_store::MasterKey::parse(&hex).unwrap();
        kernelize_store::init_encrypted(&c.data_dir, &key).unwrap();
        c.master_key_command = Some(format!("echo {hex}"));
    })
    .await;
    ts.create_collection("sec", 8).await;
    let records: Vec<_> = (0..50)
        .map(|i| json!({"id": format!("r{i}"), "vector": vector(i, 8), "text": format!("classified-{i}")}))
        .collect();
    let (s, _) = ts.post(ADMIN_KEY, "/v1/collections/sec/records", json!({"records": records})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, r) = ts.post(ADMIN_KEY, "/v1/collections/sec/search", json!({"vector": vector(7, 8), "k": 1})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["hits"][0]["id"], "r7", "{r}");
    ts.shutdown_keep().await;
    let data = ts.dir.path().join("data");
    for f in files_under(&data.join("collections")) {
        let b = fs_err::read(&f).unwrap();
        assert!(!b.windows(10).any(|w| w == b"classified"), "{} holds plaintext", f.display());
    }
    // Without the key the server refuses to start, and says why.
    let c = Config { listen: "127.0.0.1:0".parse().unwrap(), data_dir: data, ..Config::default() };
    let e = format!("{:#}", kernelize_server::start(c).await.err().unwrap());
    assert!(e.contains("is encrypted"), "{e}");
}

async fn download(
    ts: &TestServer,
    id: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let mut r = ts.client.get(format!("{}/v1/kernels/{id}/download", ts.base)).bearer_auth(ADMIN_KEY);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let (s, h) = (r.status(), r.headers().clone());
    (s, h, r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn hosted_kernels_are_sealed_at_rest_when_the_data_directory_is_encrypted() {
    let hex = "3c".repeat(32);
    let mut ts = TestServer::start_with(Backend::Sqlite, |c: &mut Config| {
        let key = kernelize_store::MasterKey::parse(&hex).unwrap();
        kernelize_store::init_encrypted(&c.data_dir, &key).unwrap();
        let key_file = c.data_dir.parent().unwrap().join("master.key");
        fs_err::write(&key_file, &hex).unwrap();
        c.master_key_file = Some(key_file);
    })
    .await;
    ts.create_collection("docs", 8).await;
    let records: Vec<_> = (0..300)
        .map(|i| {
            json!({"id": format!("r{i}"), "vector": vector(i, 8), "text": format!("sealed-record-{i}"),
                   "metadata": {"even": i % 2 == 0}})
        })
        .collect();
    let (s, _) = ts.post(ADMIN_KEY, "/v1/collections/docs/records", json!({"records": records})).await;
    assert_eq!(s, StatusCode::OK);
    let id = crate::matrix::built_kernel(&ts).await;

    // The whole download is the plain kernel, signed by the server's published key; its
    // ETag is the SHA-256 of those plain bytes.
    let (s, h, full) = download(&ts, &id, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(full.starts_with(&kernelize_kernel::format::MAGIC));
    let sha = kernelize_server::auth::hex(ring::digest::digest(&ring::digest::SHA256, &full).as_ref());
    let etag = format!("\"{sha}\"");
    assert_eq!(h["etag"].to_str().unwrap(), etag);
    let (_, key) = ts.get(ADMIN_KEY, "/v1/kernel-signing-key").await;
    let pk = kernelize_kernel::PublicKey::from_hex(key["public_key"].as_str().unwrap()).unwrap();
    let trust = kernelize_kernel::Trust { public_key: Some(pk), ..Default::default() };
    let k = kernelize_kernel::Kernel::from_bytes(&full, "download", &trust).unwrap();
    assert!(k.signature_verified());
    assert_eq!(k.manifest().ids, 300);

    // On disk: a sealed file — no kernel magic, no record text, no run of the plain bytes.
    let file = ts.dir.path().join("data").join("kernels").join(format!("{id}.kernel"));
    let raw = fs_err::read(&file).unwrap();
    assert!(kernelize_store::is_sealed(&raw), "{} is not sealed", file.display());
    assert!(!raw.windows(8).any(|w| w == kernelize_kernel::format::MAGIC), "kernel magic in clear");
    assert!(!raw.windows(13).any(|w| w == b"sealed-record"), "record text in clear");
    for at in (0..full.len() - 32).step_by(997) {
        assert!(!raw.windows(32).any(|w| w == &full[at..at + 32]), "plain kernel bytes at {at} found on disk");
    }

    // Ranges (a device resuming) put together give the same bytes; If-Range with the ETag
    // keeps the range, with anything else the whole file comes back.
    let (s, h, head) = download(&ts, &id, &[("range", "bytes=0-999")]).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(h["content-range"].to_str().unwrap(), format!("bytes 0-999/{}", full.len()));
    let (s, _, tail) = download(&ts, &id, &[("range", "bytes=1000-"), ("if-range", &etag)]).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!([head, tail].concat(), full);
    let (s, _, last) = download(&ts, &id, &[("range", "bytes=-100")]).await;
    assert_eq!((s, &last[..]), (StatusCode::PARTIAL_CONTENT, &full[full.len() - 100..]));
    let (s, _, whole) = download(&ts, &id, &[("range", "bytes=1000-"), ("if-range", "\"other\"")]).await;
    assert_eq!((s, whole == full), (StatusCode::OK, true));
    let beyond = format!("bytes={}-", full.len() + 10);
    let (s, h, _) = download(&ts, &id, &[("range", &beyond)]).await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(h["content-range"].to_str().unwrap(), format!("bytes */{}", full.len()));

    // Queries open the decrypted kernel.
    let (s, v) = ts.post(ADMIN_KEY, &format!("/v1/kernels/{id}/query"), json!({"vector": vector(42, 8), "k": 3})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["hits"][0]["ids"][0], "r42", "{v}");
    assert_eq!(v["hits"][0]["text"], "sealed-record-42", "{v}");

    // The collection dropped while the server is down (by the CLI) takes its data key
    // along: the kernel left behind is an orphan nobody can open any more, which an
    // admin still sees (without manifest) and deletes.
    ts.shutdown_keep().await;
    let data = ts.dir.path().join("data");
    let master = kernelize_store::MasterKey::parse(&hex).unwrap();
    kernelize_store::Database::open_keyed(&data, kernelize_store::Options::default(), Some(&master))
        .unwrap()
        .drop_collection("docs")
        .unwrap();
    let c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data,
        admin_key: Some(ADMIN_KEY.into()),
        log_format: "text".into(),
        master_key: Some(master),
        ..Config::default()
    };
    let running = kernelize_server::start(c).await.unwrap();
    ts.base = format!("http://{}", running.addr());
    ts.running = Some(running);
    let (s, info) = ts.get(ADMIN_KEY, &format!("/v1/kernels/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{info}");
    assert_eq!((info["orphaned"].as_bool(), info["manifest"].is_null()), (Some(true), true), "{info}");
    assert_eq!(download(&ts, &id, &[]).await.0, StatusCode::CONFLICT);
    let (s, v) = ts.call(Some(ADMIN_KEY), reqwest::Method::DELETE, &format!("/v1/kernels/{id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert!(!file.exists());
    ts.shutdown().await;
}
