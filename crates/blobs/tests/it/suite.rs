//! The suite every backend passes.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use kernelize_blobs::{BlobOptions, BlobStore, Digest, Error, ErrorClass};

use crate::{Env, bytes, small_parts};

async fn read_all(store: &BlobStore, d: &Digest, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let s = store.get(d, range.clone()).await.expect("get");
    let expected = s.range.end - s.range.start;
    if let Some(r) = range {
        assert_eq!(s.range, r);
    }
    let chunks: Vec<Bytes> = s.try_collect().await.expect("stream");
    let out = chunks.concat();
    assert_eq!(out.len() as u64, expected);
    out
}

pub(crate) async fn round_trip_small(env: &Env) {
    let store = env.store();
    let data = b"a small kernel".to_vec();
    let info = store.put_bytes(Bytes::from(data.clone())).await.unwrap();
    assert_eq!(info.digest, Digest::of(&data));
    assert_eq!(info.len, data.len() as u64);
    assert!(info.last_modified_ms.is_some());
    assert_eq!(store.head(&info.digest).await.unwrap().map(|i| i.len), Some(info.len));
    assert_eq!(read_all(&store, &info.digest, None).await, data);

    // The same bytes from a file have the same name.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("k.kernel");
    fs_err::write(&src, &data).unwrap();
    let again = store.put_file(&src).await.unwrap();
    assert_eq!(again.digest, info.digest);

    let dest = tmp.path().join("out.kernel");
    let got = store.get_to_file(&info.digest, &dest).await.unwrap();
    assert_eq!(got.len, info.len);
    assert_eq!(fs_err::read(&dest).unwrap(), data);

    // An empty blob is a blob too.
    let empty = store.put_bytes(Bytes::new()).await.unwrap();
    assert_eq!(empty.len, 0);
    assert!(read_all(&store, &empty.digest, None).await.is_empty());

    let listed: Vec<_> = store.list().await.unwrap().into_iter().map(|b| (b.digest, b.len)).collect();
    let mut want = vec![(info.digest, info.len), (empty.digest, 0)];
    want.sort();
    assert_eq!(listed, want);
    store.check().await.unwrap();
}

pub(crate) async fn round_trip_multipart(env: &Env) {
    let store = env.store();
    let tmp = tempfile::tempdir().unwrap();
    let data = bytes(20 << 20, 1);
    let src = tmp.path().join("big.kernel");
    fs_err::write(&src, &data).unwrap();
    let info = store.put_file(&src).await.unwrap();
    assert_eq!(info.digest, Digest::of(&data));
    assert_eq!(info.len, 20 << 20);
    if let Some(etag) = env.etag(&info.digest).await {
        // S3 names a multipart upload's ETag `<md5 of part md5s>-<part count>`.
        assert!(etag.ends_with("-4"), "expected a 4-part upload, ETag {etag}");
    }
    let dest = tmp.path().join("copy.kernel");
    store.get_to_file(&info.digest, &dest).await.unwrap();
    assert!(fs_err::read(&dest).unwrap() == data, "downloaded bytes differ");
    assert!(read_all(&store, &info.digest, None).await == data, "streamed bytes differ");

    // put_bytes of a multipart-sized buffer: same blob, nothing new.
    let again = store.put_bytes(Bytes::from(data)).await.unwrap();
    assert_eq!(again, info);
    assert_eq!(store.list().await.unwrap().len(), 1);
}

pub(crate) async fn ranges(env: &Env) {
    let store = env.store();
    let data = bytes((6 << 20) + 123, 2);
    let info = store.put_bytes(Bytes::from(data.clone())).await.unwrap();
    let len = data.len() as u64;
    let five = 5u64 << 20;
    for r in [0..1, 5..105, five - 10..five + 10, len - 7..len, 0..len] {
        let got = read_all(&store, &info.digest, Some(r.clone())).await;
        assert!(got == data[r.start as usize..r.end as usize], "range {r:?}");
    }
    #[expect(clippy::reversed_empty_ranges, reason = "a reversed range is bad input to refuse")]
    let reversed = 20..10;
    for r in [10..10, reversed, len..len + 1, len - 1..len + 1, 0..u64::MAX] {
        let err = store.get(&info.digest, Some(r.clone())).await.unwrap_err();
        assert!(matches!(err, Error::InvalidRange { .. }), "range {r:?}: {err}");
        assert_eq!(err.class(), ErrorClass::User);
        assert!(err.to_string().contains(&info.len.to_string()), "{err}");
    }
}

pub(crate) async fn put_is_idempotent(env: &Env) {
    let store = env.store();
    let data = bytes(1000, 3);
    let first = store.put_bytes(Bytes::from(data.clone())).await.unwrap();
    // Wait so that a rewrite would show in the modification time.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = store.put_bytes(Bytes::from(data.clone())).await.unwrap();
    assert_eq!(second, first, "a put of stored bytes must not write them again");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f");
    let big = bytes(7 << 20, 4);
    fs_err::write(&src, &big).unwrap();
    let a = store.put_file(&src).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = store.put_file(&src).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(store.list().await.unwrap().len(), 2);
}

pub(crate) async fn digest_mismatch_is_detected_and_names_the_key(env: &Env) {
    let store = env.store();
    let tmp = tempfile::tempdir().unwrap();
    let data = bytes(3 << 20, 5);
    let info = store.put_bytes(Bytes::from(data.clone())).await.unwrap();

    // Same length, one byte flipped.
    let mut bad = data.clone();
    bad[12345] ^= 1;
    env.corrupt(&store, &info.digest, &bad).await;
    let dest = tmp.path().join("out");
    let err = store.get_to_file(&info.digest, &dest).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Corruption);
    let msg = err.to_string();
    assert!(msg.contains(&store.location(&info.digest)), "{msg}");
    assert!(!dest.exists(), "a corrupt blob must not reach the destination");
    assert_eq!(fs_err::read_dir(tmp.path()).unwrap().count(), 0, "temporary file left behind");

    // Shorter: detected too.
    env.corrupt(&store, &info.digest, &data[..1000]).await;
    let err = store.get_to_file(&info.digest, &dest).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");

    // A put of the right bytes repairs a copy of the wrong length.
    store.put_bytes(Bytes::from(data.clone())).await.unwrap();
    store.get_to_file(&info.digest, &dest).await.unwrap();
    assert!(fs_err::read(&dest).unwrap() == data);
}

pub(crate) async fn gc_keeps_referenced_and_young_blobs(env: &Env) {
    let opts = BlobOptions { refresh_after_secs: 1, ..small_parts() };
    let store = env.store_with(opts);
    let put = |n: usize, seed| {
        let store = store.clone();
        async move { store.put_bytes(Bytes::from(bytes(n, seed))).await.unwrap() }
    };
    let kept = put(100, 10).await;
    let old1 = put(200, 11).await;
    let old2 = put(6 << 20, 12).await;
    // S3 times have one-second resolution: wait well past min_age.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let young = put(300, 13).await;
    let never_stored = Digest::of(b"released but never uploaded");

    // min_age must exceed refresh_after.
    let err = store.gc(&HashSet::new(), Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Config, "{err}");

    let referenced = HashSet::from([kept.digest, never_stored]);
    let report = store.gc(&referenced, Duration::from_secs(2)).await.unwrap();
    assert_eq!((report.referenced, report.referenced_bytes), (1, 100));
    assert_eq!((report.young, report.young_bytes), (1, 300));
    assert_eq!((report.deleted, report.deleted_bytes), (2, 200 + (6 << 20)));
    assert_eq!(report.missing, vec![never_stored]);
    let left: Vec<Digest> = store.list().await.unwrap().into_iter().map(|b| b.digest).collect();
    let mut want = vec![kept.digest, young.digest];
    want.sort();
    assert_eq!(left, want);
    for d in [old1.digest, old2.digest] {
        assert_eq!(store.head(&d).await.unwrap(), None);
    }
    // Nothing more to do.
    let again = store.gc(&referenced, Duration::from_secs(2)).await.unwrap();
    assert_eq!(again.deleted, 0);
}

/// Regression: a put of bytes already stored as an old, unreferenced blob returned at once
/// and left the blob old, so a gc before the caller recorded its reference deleted it.
pub(crate) async fn put_of_an_old_blob_makes_it_young_again(env: &Env) {
    let opts = BlobOptions { refresh_after_secs: 1, ..small_parts() };
    let store = env.store_with(opts);
    let data = Bytes::from(bytes(4096, 20));
    let first = store.put_bytes(data.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let second = store.put_bytes(data).await.unwrap();
    assert!(second.last_modified_ms > first.last_modified_ms, "{first:?} then {second:?}");
    let report = store.gc(&HashSet::new(), Duration::from_secs(2)).await.unwrap();
    assert_eq!((report.young, report.deleted), (1, 0));
    assert!(store.head(&first.digest).await.unwrap().is_some());
}

pub(crate) async fn concurrent_puts_of_the_same_content(env: &Env) {
    let store = env.store();
    let tmp = tempfile::tempdir().unwrap();
    let data = bytes(12 << 20, 30);
    let d = Digest::of(&data);
    let src = tmp.path().join("same");
    fs_err::write(&src, &data).unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (store, src, data) = (store.clone(), src.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 { store.put_file(&src).await } else { store.put_bytes(Bytes::from(data)).await }
        }));
    }
    for t in tasks {
        let info = t.await.unwrap().unwrap();
        assert_eq!((info.digest, info.len), (d, data.len() as u64));
    }
    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let dest = tmp.path().join("out");
    store.get_to_file(&d, &dest).await.unwrap();
    assert!(fs_err::read(&dest).unwrap() == data);
}

pub(crate) async fn blobs_above_the_limit_are_refused(env: &Env) {
    let opts = BlobOptions { max_blob_len: 1 << 20, ..small_parts() };
    let store = env.store_with(opts);
    let err = store.put_bytes(Bytes::from(bytes((1 << 20) + 1, 40))).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { len, max, .. } if len == (1 << 20) + 1 && max == 1 << 20), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("too-big");
    fs_err::write(&src, bytes(2 << 20, 41)).unwrap();
    let err = store.put_file(&src).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("too-big"), "{err}");
    assert_eq!(err.class(), ErrorClass::User);
    assert!(store.list().await.unwrap().is_empty());
    // At the limit: accepted.
    store.put_bytes(Bytes::from(bytes(1 << 20, 42))).await.unwrap();

    // A larger blob already stored (by a store with a higher limit) is not downloaded.
    let big = env.store().put_bytes(Bytes::from(bytes(2 << 20, 43))).await.unwrap();
    let err = store.get_to_file(&big.digest, &tmp.path().join("out")).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
}

pub(crate) async fn missing_blobs(env: &Env) {
    let store = env.store();
    let d = Digest::of(b"nothing");
    assert_eq!(store.head(&d).await.unwrap(), None);
    for err in [
        store.get(&d, None).await.unwrap_err(),
        store.get(&d, Some(0..1)).await.unwrap_err(),
        store.get_to_file(&d, &tempfile::tempdir().unwrap().path().join("x")).await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert_eq!(err.class(), ErrorClass::NotFound);
        assert!(err.to_string().contains(&d.to_string()), "{err}");
    }
    store.delete(&d).await.unwrap();
    let missing_file = tempfile::tempdir().unwrap().path().join("absent");
    let err = store.put_file(&missing_file).await.unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");

    let info = store.put_bytes(Bytes::from_static(b"x")).await.unwrap();
    store.delete(&info.digest).await.unwrap();
    assert_eq!(store.head(&info.digest).await.unwrap(), None);
}
