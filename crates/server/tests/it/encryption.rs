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
