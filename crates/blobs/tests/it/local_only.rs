//! What only the local directory does.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use kernelize_blobs::{BlobConfig, BlobOptions, BlobStore, Digest};

#[tokio::test]
async fn files_are_owner_only_and_strays_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("blobs");
    let store = BlobStore::open(&BlobConfig::Local { dir: dir.clone() }).unwrap();
    let info = store.put_bytes(Bytes::from_static(b"kernel")).await.unwrap();
    let path = store.location(&info.digest);
    assert!(path.starts_with(dir.to_str().unwrap()), "{path}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| fs_err::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(path.as_ref()), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(std::path::Path::new(&path).parent().unwrap()), 0o700);
    }
    // Files that are not named like blobs are neither listed nor collected.
    let hex = info.digest.to_string();
    fs_err::write(dir.join("sha256").join(&hex[..2]).join("notes.txt"), "x").unwrap();
    let other = Digest::of(b"other").to_string();
    fs_err::write(dir.join("sha256").join(&hex[..2]).join(&other), "misplaced").unwrap();
    fs_err::write(dir.join("README"), "x").unwrap();
    assert_eq!(store.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn gc_removes_old_temporary_files_of_interrupted_puts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("blobs");
    let opts = BlobOptions { refresh_after_secs: 1, ..BlobOptions::default() };
    let store = BlobStore::open_with(&BlobConfig::Local { dir: dir.clone() }, opts).unwrap();
    let stale = dir.join("tmp").join("put-1-2-3.part");
    let fresh = dir.join("tmp").join("put-4-5-6.part");
    fs_err::write(&stale, "half a kernel").unwrap();
    fs_err::write(&fresh, "half a kernel").unwrap();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    fs_err::File::options().write(true).open(&stale).unwrap().set_modified(hour_ago).unwrap();
    let report = store.gc(&HashSet::new(), Duration::from_secs(60)).await.unwrap();
    assert_eq!(report.temp_files_deleted, 1);
    assert!(!stale.exists() && fresh.exists());
}

#[tokio::test]
async fn config_deserializes_from_toml_like_json() {
    let c: BlobConfig = serde_json::from_str(r#"{"kind": "local", "dir": "/var/lib/kz/blobs"}"#).unwrap();
    assert!(matches!(c, BlobConfig::Local { .. }));
    let c: BlobConfig = serde_json::from_str(r#"{"kind": "s3", "bucket": "k", "prefix": "a/b"}"#).unwrap();
    let BlobConfig::S3 { region, allow_http, endpoint, .. } = c else { panic!("not s3") };
    assert_eq!((region.as_str(), allow_http, endpoint), ("us-east-1", false, None));
    let err = serde_json::from_str::<BlobConfig>(r#"{"kind": "ftp"}"#).unwrap_err();
    assert!(err.to_string().contains("ftp"), "{err}");
    let o: BlobOptions = serde_json::from_str(r#"{"max_blob_len": 1024}"#).unwrap();
    assert_eq!((o.max_blob_len, o.part_size), (1024, 8 << 20));
    assert!(serde_json::from_str::<BlobOptions>(r#"{"max_blob_size": 1}"#).is_err());
}
