//! The object-store backend (S3 and S3-compatible servers) through `object_store`.
//!
//! Keys: `<prefix>/sha256/<first two hex digits>/<64 hex digits>` (docs/format/blobs.md).
//! A blob is only ever written under its final key by one atomic operation: a single
//! PUT, or a multipart upload that becomes visible when it completes (and is aborted on
//! failure). Its digest is computed before the upload starts and checked again over the
//! bytes actually sent.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, RetryConfig,
    WriteMultipart,
};

use crate::digest::Hasher;
use crate::local::{IO_CHUNK, check_range};
use crate::{BlobInfo, BlobOptions, BlobStream, Digest, Error, Result};

#[derive(Debug)]
pub(crate) struct ObjectDir {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket/prefix`, for messages.
    base: String,
    /// `prefix/sha256` (or `sha256`).
    blobs: String,
}

/// The S3 settings of a [`crate::BlobConfig::S3`].
pub(crate) struct S3Settings<'a> {
    pub bucket: &'a str,
    pub prefix: &'a str,
    pub endpoint: Option<&'a str>,
    pub region: &'a str,
    pub access_key_id: Option<&'a str>,
    pub secret_access_key: Option<&'a str>,
    pub allow_http: bool,
}

impl ObjectDir {
    pub(crate) fn s3(s: &S3Settings<'_>, opts: &BlobOptions) -> Result<ObjectDir> {
        if s.bucket.is_empty() {
            return Err(Error::Config("S3 bucket is empty".into()));
        }
        if !s.prefix.is_empty() {
            let parsed = Key::parse(s.prefix).map_err(|e| Error::Config(format!("S3 prefix {:?}: {e}", s.prefix)))?;
            if parsed.as_ref() != s.prefix {
                return Err(Error::Config(format!(
                    "S3 prefix {:?} must be `/`-separated names without leading, trailing or doubled `/`",
                    s.prefix
                )));
            }
        }
        let mut b = match (s.access_key_id, s.secret_access_key) {
            (Some(id), Some(secret)) => AmazonS3Builder::new().with_access_key_id(id).with_secret_access_key(secret),
            (None, None) => AmazonS3Builder::from_env(),
            _ => {
                return Err(Error::Config(
                    "S3 access_key_id and secret_access_key go together (or neither, to use the environment)".into(),
                ));
            }
        };
        let client = ClientOptions::new()
            .with_timeout(Duration::from_secs(opts.request_timeout_secs))
            .with_connect_timeout(Duration::from_secs(opts.connect_timeout_secs))
            .with_allow_http(s.allow_http);
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: opts.max_retries,
            retry_timeout: Duration::from_secs(opts.retry_timeout_secs),
        };
        b = b
            .with_bucket_name(s.bucket)
            .with_region(s.region)
            .with_allow_http(s.allow_http)
            .with_client_options(client)
            .with_retry(retry);
        if let Some(ep) = s.endpoint {
            b = b.with_endpoint(ep).with_virtual_hosted_style_request(false);
        }
        let store = b.build().map_err(|e| Error::Config(format!("S3 bucket {}: {e}", s.bucket)))?;
        let base = match s.prefix {
            "" => format!("s3://{}", s.bucket),
            p => format!("s3://{}/{p}", s.bucket),
        };
        let blobs = match s.prefix {
            "" => "sha256".to_owned(),
            p => format!("{p}/sha256"),
        };
        Ok(ObjectDir { store: Arc::new(store), base, blobs })
    }

    fn key(&self, d: &Digest) -> Key {
        let hex = d.to_string();
        Key::from(format!("{}/{}/{hex}", self.blobs, &hex[..2]))
    }

    pub(crate) fn name(&self, d: &Digest) -> String {
        let hex = d.to_string();
        format!("{}/sha256/{}/{hex}", self.base, &hex[..2])
    }

    /// Checks that the bucket exists and answers.
    pub(crate) async fn check(&self) -> Result<()> {
        let prefix = Key::from(self.blobs.as_str());
        match self.store.list_with_delimiter(Some(&prefix)).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => {
                Err(Error::Config(format!("{}: the bucket does not exist", self.base)))
            }
            Err(e) => Err(Error::store("list", &self.base, e)),
        }
    }

    pub(crate) async fn head(&self, d: &Digest) -> Result<Option<BlobInfo>> {
        match self.store.head(&self.key(d)).await {
            Ok(m) => Ok(Some(info(*d, &m))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store("head", &self.name(d), e)),
        }
    }

    /// Uploads `bytes` (which hash to `d`) under `d`'s key.
    pub(crate) async fn put_bytes(&self, bytes: Bytes, d: &Digest, part: u64) -> Result<()> {
        let key = self.key(d);
        let err = |e| Error::store("put", &self.name(d), e);
        if bytes.len() as u64 <= part {
            self.store.put(&key, bytes.into()).await.map_err(err)?;
            return Ok(());
        }
        let upload = self.store.put_multipart(&key).await.map_err(err)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, part_usize(part));
        w.put(bytes);
        w.finish().await.map_err(err)?;
        Ok(())
    }

    /// Uploads the file `src` (hashed before to `d`, `len` bytes) with a multipart upload of
    /// `part`-byte parts, `concurrency` at a time, hashing the bytes as they are read; if
    /// they differ from `d` the upload is aborted and nothing is stored.
    pub(crate) async fn put_file(&self, src: &Path, d: &Digest, len: u64, part: u64, concurrency: usize) -> Result<()> {
        let key = self.key(d);
        let name = self.name(d);
        let upload = self.store.put_multipart(&key).await.map_err(|e| Error::store("put", &name, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, part_usize(part));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let path = src.to_owned();
        let reader = tokio::task::spawn_blocking(move || read_hashing(&path, len, &tx));
        let sent: Result<()> = async {
            while let Some(chunk) = rx.recv().await {
                w.wait_for_capacity(concurrency).await.map_err(|e| Error::store("put", &name, e))?;
                w.put(chunk);
            }
            Ok(())
        }
        .await;
        // The reader stops when the receiver is gone.
        drop(rx);
        let read = crate::store::joined(reader.await);
        let outcome = match (sent, read) {
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok((got, n))) if got != *d || n != len => Err(Error::SourceChanged { path: src.to_owned() }),
            (Ok(()), Ok(_)) => Ok(()),
        };
        match outcome {
            Ok(()) => {
                w.finish().await.map_err(|e| Error::store("put", &name, e))?;
                Ok(())
            }
            Err(e) => {
                // Best effort: an upload that is not aborted is never visible either, but
                // its parts are billed until a lifecycle rule removes them.
                let _ = w.abort().await;
                Err(e)
            }
        }
    }

    pub(crate) async fn get(&self, d: &Digest, range: Option<Range<u64>>) -> Result<BlobStream> {
        let name = self.name(d);
        if let Some(r) = &range
            && r.start >= r.end
        {
            // Empty: refused before asking the store, which would answer the whole blob.
            let len = self.head(d).await?.ok_or_else(|| Error::NotFound { key: name.clone() })?.len;
            check_range(&name, range.clone(), len)?;
        }
        let opts = GetOptions { range: range.clone().map(GetRange::Bounded), ..Default::default() };
        let got = match self.store.get_opts(&self.key(d), opts).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Err(Error::NotFound { key: name }),
            Err(e) => {
                // An unsatisfiable range is an error answer; say so if that is what it was.
                if range.is_some()
                    && let Some(i) = self.head(d).await?
                {
                    check_range(&name, range, i.len)?;
                }
                return Err(Error::store("get", &name, e));
            }
        };
        let info = info(*d, &got.meta);
        let served = got.range.clone();
        // S3 shortens a range that ends past the blob; this API refuses it instead.
        let range = check_range(&name, range, info.len)?;
        if served != range {
            return Err(Error::Corrupt {
                key: name,
                detail: format!("the store served bytes {served:?} for range {range:?}"),
            });
        }
        let stream = got.into_stream().map_err(move |e| Error::store("get", &name, e)).boxed();
        Ok(BlobStream { info, range, stream })
    }

    pub(crate) async fn list(&self) -> Result<Vec<BlobInfo>> {
        let prefix = Key::from(self.blobs.as_str());
        let metas: Vec<ObjectMeta> =
            self.store.list(Some(&prefix)).try_collect().await.map_err(|e| Error::store("list", &self.base, e))?;
        let mut out = Vec::with_capacity(metas.len());
        for m in metas {
            // Only `sha256/<xx>/<digest starting with xx>` is a blob; anything else under the
            // prefix is not ours to list (or collect).
            let parts: Vec<_> = m.location.as_ref().rsplitn(3, '/').collect();
            let [file, fan, _] = parts.as_slice() else { continue };
            let Ok(d) = file.parse::<Digest>() else { continue };
            if fan.len() == 2 && file.starts_with(fan) && self.key(&d) == m.location {
                out.push(info(d, &m));
            }
        }
        Ok(out)
    }

    pub(crate) async fn delete(&self, d: &Digest) -> Result<()> {
        match self.store.delete(&self.key(d)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store("delete", &self.name(d), e)),
        }
    }
}

/// Reads `path` in 1 MiB chunks into `tx`, hashing them; reads at most `len + 1` bytes.
fn read_hashing(path: &PathBuf, len: u64, tx: &tokio::sync::mpsc::Sender<Bytes>) -> Result<(Digest, u64)> {
    use std::io::Read;
    let mut f = fs_err::File::open(path)?.take(len.saturating_add(1));
    let mut h = Hasher::new();
    loop {
        let mut buf = BytesMut::zeroed(IO_CHUNK);
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        buf.truncate(n);
        h.update(&buf);
        if tx.blocking_send(buf.freeze()).is_err() {
            // The upload failed; its error is reported.
            break;
        }
    }
    let n = h.len();
    Ok((h.finish(), n))
}

fn part_usize(part: u64) -> usize {
    // Validated to at most 512 MiB (grown to at most 5 TiB / 10,000 = 550 MB).
    usize::try_from(part).unwrap_or(usize::MAX)
}

fn info(digest: Digest, m: &ObjectMeta) -> BlobInfo {
    BlobInfo { digest, len: m.size, last_modified_ms: Some(m.last_modified.timestamp_millis()) }
}
