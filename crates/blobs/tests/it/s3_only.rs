//! What only the S3 backend does: configuration and failure classes.

use std::time::Instant;

use bytes::Bytes;
use kernelize_blobs::{BlobConfig, BlobOptions, BlobStore, ErrorClass};

fn s3(bucket: &str, prefix: &str, endpoint: String) -> BlobConfig {
    BlobConfig::S3 {
        bucket: bucket.into(),
        prefix: prefix.into(),
        endpoint: Some(endpoint),
        region: "us-east-1".into(),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        allow_http: true,
    }
}

#[tokio::test]
async fn a_missing_bucket_is_a_configuration_error() {
    let moto = crate::moto::server();
    let store = BlobStore::open(&s3("no-such-bucket", "", moto.endpoint())).unwrap();
    let err = store.check().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Config, "{err}");
    assert!(err.to_string().contains("s3://no-such-bucket"), "{err}");
}

#[tokio::test]
async fn bad_settings_are_refused_at_open() {
    for prefix in ["/a", "a/", "a//b"] {
        let err = BlobStore::open(&s3("b", prefix, "http://127.0.0.1:1".into())).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Config, "{prefix}: {err}");
    }
    let mut c = s3("b", "", "http://127.0.0.1:1".into());
    if let BlobConfig::S3 { secret_access_key, .. } = &mut c {
        *secret_access_key = None;
    }
    let err = BlobStore::open(&c).unwrap_err();
    assert!(err.to_string().contains("secret_access_key"), "{err}");
    let err = BlobStore::open_with(
        &s3("b", "", "http://127.0.0.1:1".into()),
        BlobOptions { part_size: 1, ..Default::default() },
    )
    .unwrap_err();
    assert!(err.to_string().contains("part_size"), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_transient_after_bounded_retries() {
    // A port nobody listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let opts = BlobOptions { max_retries: 2, retry_timeout_secs: 5, connect_timeout_secs: 1, ..Default::default() };
    let store = BlobStore::open_with(&s3("b", "", format!("http://127.0.0.1:{port}")), opts).unwrap();
    let started = Instant::now();
    let err = store.put_bytes(Bytes::from_static(b"k")).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert!(started.elapsed().as_secs() < 30, "retries must be bounded");
}
