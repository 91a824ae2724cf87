//! Collection health over HTTP: a damaged collection fails `/readyz` and answers 503
//! `collection_unavailable` while the others keep working.

use crate::common::{ADMIN_KEY, Backend, TestServer};
use kernelize_store::{CollectionConfig, Database, Metric, Options, Record};
use reqwest::StatusCode;

#[tokio::test]
async fn damaged_collection_fails_readyz_and_answers_503() {
    let ts = TestServer::start_with(Backend::Sqlite, |c| {
        let db = Database::open(&c.data_dir, Options::default()).unwrap();
        let bad = db.create_collection("bad", CollectionConfig::new(3, Metric::Cosine)).unwrap();
        for i in 0..5 {
            let r = Record { id: format!("a{i}"), vector: vec![1.0, i as f32, 0.5], text: None, metadata: None };
            bad.upsert(vec![r]).unwrap();
        }
        let good = db.create_collection("good", CollectionConfig::new(3, Metric::Cosine)).unwrap();
        good.upsert(vec![Record { id: "g".into(), vector: vec![1.0, 0.0, 0.0], text: None, metadata: None }]).unwrap();
        let wal = kernelize_store::wal_path(bad.dir(), 1);
        drop((bad, good, db));
        // One flipped byte in the third of five frames: damage, not a torn tail.
        let mut bytes = fs_err::read(&wal).unwrap();
        let third = kernelize_store::wal_format::scan(&bytes).frames[2].offset as usize;
        bytes[third + 20] ^= 0xff;
        fs_err::write(&wal, &bytes).unwrap();
    })
    .await;
    let r = ts.client.get(format!("{}/readyz", ts.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["checks"]["collection:bad"].as_str().unwrap().contains("unavailable"), "{body}");
    assert!(body["checks"].get("collection:good").is_none(), "{body}");
    for _ in 0..2 {
        let (s, v) = ts.get(ADMIN_KEY, "/v1/collections/bad/records/a0").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["code"], "collection_unavailable", "{v}");
    }
    let (s, v) = ts.get(ADMIN_KEY, "/v1/collections/good/records/g").await;
    assert_eq!(s, StatusCode::OK, "{v}");
}
