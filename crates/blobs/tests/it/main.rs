//! Integration tests: one suite, run against a local directory and against S3 on a real
//! moto server (started by `moto.rs`; the S3 tests fail, never skip, without it).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly on unexpected errors")]

#[path = "../../src/testing.rs"]
mod moto;
mod suite;

use bytes::Bytes;
use kernelize_blobs::{BlobConfig, BlobOptions, BlobStore, Digest};
use object_store::ObjectStoreExt;
use object_store::path::Path as Key;

/// Where a test's blobs live.
pub(crate) enum Env {
    Local { dir: tempfile::TempDir },
    S3 { moto: &'static moto::Moto, bucket: String },
}

impl Env {
    pub(crate) fn local() -> Env {
        Env::Local { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub(crate) fn s3() -> Env {
        let moto = moto::server();
        Env::S3 { moto, bucket: moto.bucket() }
    }

    pub(crate) fn config(&self) -> BlobConfig {
        match self {
            Env::Local { dir } => BlobConfig::Local { dir: dir.path().join("blobs") },
            Env::S3 { moto, bucket } => BlobConfig::S3 {
                bucket: bucket.clone(),
                prefix: "fleet/blobs".into(),
                endpoint: Some(moto.endpoint()),
                region: "us-east-1".into(),
                access_key_id: Some("testing".into()),
                secret_access_key: Some("testing".into()),
                allow_http: true,
            },
        }
    }

    /// A store with 5 MiB parts (so 20 MiB is a 4-part upload) and these other options.
    pub(crate) fn store_with(&self, opts: BlobOptions) -> BlobStore {
        BlobStore::open_with(&self.config(), opts).expect("open store")
    }

    pub(crate) fn store(&self) -> BlobStore {
        self.store_with(small_parts())
    }

    /// Replaces the stored bytes of `d` behind the store's back.
    pub(crate) async fn corrupt(&self, store: &BlobStore, d: &Digest, bytes: &[u8]) {
        match self {
            Env::Local { .. } => {
                fs_err::write(store.location(d), bytes).expect("overwrite blob");
            }
            Env::S3 { .. } => {
                let key = Key::from(self.key(d));
                self.raw_s3().put(&key, Bytes::copy_from_slice(bytes).into()).await.expect("overwrite object");
            }
        }
    }

    /// The ETag S3 reports for `d` (None on a local directory).
    pub(crate) async fn etag(&self, d: &Digest) -> Option<String> {
        let Env::S3 { .. } = self else { return None };
        let meta = self.raw_s3().head(&Key::from(self.key(d))).await.expect("head object");
        meta.e_tag.map(|t| t.trim_matches('"').to_owned())
    }

    /// A client of the test bucket that bypasses the blob store.
    fn raw_s3(&self) -> object_store::aws::AmazonS3 {
        let Env::S3 { moto, bucket } = self else { panic!("not S3") };
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(moto.endpoint())
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_allow_http(true)
            .build()
            .expect("S3 client")
    }

    fn key(&self, d: &Digest) -> String {
        let hex = d.to_string();
        format!("fleet/blobs/sha256/{}/{hex}", &hex[..2])
    }
}

pub(crate) fn small_parts() -> BlobOptions {
    BlobOptions { part_size: 5 << 20, ..BlobOptions::default() }
}

/// Deterministic bytes that do not compress or repeat (xorshift).
pub(crate) fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs each suite function against both backends: `<name>::local` and `<name>::s3`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                crate::suite::$name(&crate::Env::local()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3() {
                crate::suite::$name(&crate::Env::s3()).await
            }
        })*
    };
}

both!(
    round_trip_small,
    round_trip_multipart,
    ranges,
    put_is_idempotent,
    digest_mismatch_is_detected_and_names_the_key,
    gc_keeps_referenced_and_young_blobs,
    put_of_an_old_blob_makes_it_young_again,
    concurrent_puts_of_the_same_content,
    blobs_above_the_limit_are_refused,
    missing_blobs,
);

mod local_only;
mod s3_only;
