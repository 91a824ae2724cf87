//! [`BlobStore`]: the one API over both backends.

use std::collections::HashSet;
use std::io::{self, BufWriter, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};

use crate::local::{self, LocalDir, copy_hashing, system_time_ms};
use crate::object::{ObjectDir, S3Settings};
use crate::{BlobConfig, BlobOptions, Digest, Error, Result};

/// What the store knows about one blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// The SHA-256 of its bytes, which is its name.
    pub digest: Digest,
    /// Its length in bytes.
    pub len: u64,
    /// When it was last written (milliseconds since the Unix epoch), if the store says.
    pub last_modified_ms: Option<i64>,
}

/// A blob's bytes (all of them, or a range), as a stream of chunks.
pub struct BlobStream {
    /// The whole blob's digest, length and time.
    pub info: BlobInfo,
    /// The bytes this stream yields: `range.end - range.start` of them.
    pub range: Range<u64>,
    pub(crate) stream: BoxStream<'static, Result<Bytes>>,
}

impl Stream for BlobStream {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream").field("info", &self.info).field("range", &self.range).finish()
    }
}

/// What [`BlobStore::gc`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs kept because they are referenced.
    pub referenced: u64,
    /// Their bytes.
    pub referenced_bytes: u64,
    /// Unreferenced blobs kept because they are younger than `min_age`.
    pub young: u64,
    /// Their bytes.
    pub young_bytes: u64,
    /// Blobs deleted.
    pub deleted: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Leftover temporary files of interrupted puts deleted (local directory only).
    pub temp_files_deleted: u64,
    /// Referenced digests that are not in the store (sorted): whatever references them is
    /// broken.
    pub missing: Vec<Digest>,
}

/// A content-addressed blob store: a local directory or an S3 bucket. Cheap to clone;
/// clones share one connection pool.
#[derive(Clone, Debug)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    opts: BlobOptions,
    /// Puts hold it shared and `gc` exclusively, so a put that finds (and refreshes) an
    /// old blob never races with its deletion by a `gc` of this process.
    gc_lock: tokio::sync::RwLock<()>,
}

#[derive(Debug)]
enum Backend {
    Local(Arc<LocalDir>),
    Object(ObjectDir),
}

/// What the first read of a file found.
enum Scanned {
    /// Small enough for one request: its bytes.
    Small(Bytes),
    /// Its digest and length.
    Large(Digest, u64),
}

impl BlobStore {
    /// Opens the store with the default [`BlobOptions`]. Creates a local directory if
    /// missing; does not contact S3 (see [`BlobStore::check`]).
    pub fn open(cfg: &BlobConfig) -> Result<BlobStore> {
        BlobStore::open_with(cfg, BlobOptions::default())
    }

    /// Opens the store with these limits.
    pub fn open_with(cfg: &BlobConfig, opts: BlobOptions) -> Result<BlobStore> {
        opts.validate().map_err(Error::Config)?;
        let backend = match cfg {
            BlobConfig::Local { dir } => Backend::Local(Arc::new(LocalDir::open(dir)?)),
            BlobConfig::S3 { bucket, prefix, endpoint, region, access_key_id, secret_access_key, allow_http } => {
                Backend::Object(ObjectDir::s3(
                    &S3Settings {
                        bucket,
                        prefix,
                        endpoint: endpoint.as_deref(),
                        region,
                        access_key_id: access_key_id.as_deref(),
                        secret_access_key: secret_access_key.as_deref(),
                        allow_http: *allow_http,
                    },
                    &opts,
                )?)
            }
        };
        Ok(BlobStore { inner: Arc::new(Inner { backend, opts, gc_lock: Default::default() }) })
    }

    /// The options in force.
    pub fn options(&self) -> &BlobOptions {
        &self.inner.opts
    }

    /// Where the blob `d` is (or would be) stored: a file path, or `s3://bucket/key`.
    pub fn location(&self, d: &Digest) -> String {
        match &self.inner.backend {
            Backend::Local(dir) => dir.path(d).display().to_string(),
            Backend::Object(o) => o.name(d),
        }
    }

    /// Checks that the store answers: the directory is there, the bucket exists and the
    /// credentials are accepted. For a server's start-up and readiness.
    pub async fn check(&self) -> Result<()> {
        match &self.inner.backend {
            Backend::Local(dir) => {
                let dir = dir.clone();
                blocking(move || dir.list().map(|_| ())).await
            }
            Backend::Object(o) => o.check().await,
        }
    }

    /// Stores the file at `path` under its SHA-256 and returns its info. Reads it once to
    /// hash it, then (unless the blob exists: then nothing is written) once more to
    /// upload it, hashing again: if the file changed in between, nothing is stored
    /// ([`Error::SourceChanged`]). Files longer than `part_size` go up as a multipart
    /// upload; either way the blob appears under its key only when complete.
    pub async fn put_file(&self, path: &Path) -> Result<BlobInfo> {
        let _shared = self.inner.gc_lock.read().await;
        let opts = &self.inner.opts;
        let (max, part) = (opts.max_blob_len, opts.part_size);
        let p = path.to_owned();
        let scanned = blocking(move || {
            let mut f = fs_err::File::open(&p)?;
            let len = f.metadata()?.len();
            let too_large = |len| Error::TooLarge { what: p.display().to_string(), len, max };
            if len > max {
                return Err(too_large(len));
            }
            if len <= part {
                let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
                f.take(part + 1).read_to_end(&mut buf)?;
                if buf.len() as u64 <= part {
                    return Ok(Scanned::Small(Bytes::from(buf)));
                }
                // It grew while being read: hash it whole below.
                f = fs_err::File::open(&p)?;
            }
            let (d, n) = copy_hashing(&mut f, &mut io::sink(), max)?;
            if n > max {
                return Err(too_large(n));
            }
            Ok(Scanned::Large(d, n))
        })
        .await?;
        let (d, len) = match scanned {
            Scanned::Small(bytes) => return self.put_bytes_locked(bytes).await,
            Scanned::Large(d, len) => (d, len),
        };
        if let Some(info) = self.existing(&d, len).await? {
            return Ok(info);
        }
        match &self.inner.backend {
            Backend::Local(dir) => {
                let (dir, p) = (dir.clone(), path.to_owned());
                blocking(move || dir.store_file(&p, &d, len)).await
            }
            Backend::Object(o) => {
                let part = self.inner.opts.part_size_for(len);
                o.put_file(path, &d, len, part, self.inner.opts.upload_concurrency).await?;
                self.uploaded(o, &d, len).await
            }
        }
    }

    /// Stores `bytes` under their SHA-256 and returns their info (nothing is written if
    /// the blob exists).
    pub async fn put_bytes(&self, bytes: Bytes) -> Result<BlobInfo> {
        let _shared = self.inner.gc_lock.read().await;
        self.put_bytes_locked(bytes).await
    }

    async fn put_bytes_locked(&self, bytes: Bytes) -> Result<BlobInfo> {
        let len = bytes.len() as u64;
        let max = self.inner.opts.max_blob_len;
        if len > max {
            return Err(Error::TooLarge { what: "blob".into(), len, max });
        }
        let d = if bytes.len() > local::IO_CHUNK {
            let b = bytes.clone();
            blocking(move || Ok(Digest::of(&b))).await?
        } else {
            Digest::of(&bytes)
        };
        if let Some(info) = self.existing(&d, len).await? {
            return Ok(info);
        }
        match &self.inner.backend {
            Backend::Local(dir) => {
                let dir = dir.clone();
                blocking(move || dir.store_bytes(&bytes, &d)).await
            }
            Backend::Object(o) => {
                o.put_bytes(bytes, &d, self.inner.opts.part_size_for(len)).await?;
                self.uploaded(o, &d, len).await
            }
        }
    }

    /// The blob `d` if it is stored with length `len` and young enough that `gc` will not
    /// collect it; a local blob that is older gets its time refreshed (an S3 blob is
    /// written again by the caller).
    async fn existing(&self, d: &Digest, len: u64) -> Result<Option<BlobInfo>> {
        let Some(info) = self.head(d).await? else { return Ok(None) };
        if info.len != len {
            // Not these bytes: a damaged copy. The put replaces it.
            return Ok(None);
        }
        let refresh_ms = i64::try_from(self.inner.opts.refresh_after().as_millis()).unwrap_or(i64::MAX);
        let now = system_time_ms(SystemTime::now()).unwrap_or(i64::MAX);
        if info.last_modified_ms.is_some_and(|t| now.saturating_sub(t) < refresh_ms) {
            return Ok(Some(info));
        }
        match &self.inner.backend {
            Backend::Local(dir) => {
                let dir = dir.clone();
                let d = *d;
                Ok(Some(blocking(move || dir.refresh(&d)).await?))
            }
            Backend::Object(_) => Ok(None),
        }
    }

    /// The info of a blob just uploaded, checked to be there with its length.
    async fn uploaded(&self, o: &ObjectDir, d: &Digest, len: u64) -> Result<BlobInfo> {
        match o.head(d).await? {
            Some(info) if info.len == len => Ok(info),
            Some(info) => Err(Error::Corrupt {
                key: o.name(d),
                detail: format!("{} bytes right after an upload of {len} bytes", info.len),
            }),
            None => Err(Error::Corrupt { key: o.name(d), detail: "missing right after its upload".into() }),
        }
    }

    /// The blob's info, or `None` if it is not stored.
    pub async fn head(&self, d: &Digest) -> Result<Option<BlobInfo>> {
        match &self.inner.backend {
            Backend::Local(dir) => {
                let (dir, d) = (dir.clone(), *d);
                blocking(move || dir.head(&d)).await
            }
            Backend::Object(o) => o.head(d).await,
        }
    }

    /// Streams the blob, or `range` of it (for HTTP Range requests: it must be non-empty
    /// and inside the blob, else [`Error::InvalidRange`]). The bytes are not verified
    /// against the digest (a range cannot be); [`BlobStore::get_to_file`] verifies.
    pub async fn get(&self, d: &Digest, range: Option<Range<u64>>) -> Result<BlobStream> {
        match &self.inner.backend {
            Backend::Local(dir) => {
                let (dir, d) = (dir.clone(), *d);
                let (file, info, range) = blocking(move || dir.open_range(&d, range)).await?;
                Ok(BlobStream { info, range: range.clone(), stream: local_stream(file, range.end - range.start) })
            }
            Backend::Object(o) => o.get(d, range).await,
        }
    }

    /// Writes the blob to `dest` (through a temporary file beside it, renamed when
    /// complete), verifying its SHA-256 and length on the way: a mismatch is
    /// [`Error::Corrupt`] naming the key, and leaves `dest` untouched.
    pub async fn get_to_file(&self, d: &Digest, dest: &Path) -> Result<BlobInfo> {
        let max = self.inner.opts.max_blob_len;
        let name = dest.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{}: not a file name", dest.display()))
        })?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let temp = dir.join(format!(".{}.{}", name.to_string_lossy(), local::unique_name("get")));
        let key = self.location(d);
        match &self.inner.backend {
            Backend::Local(blobs) => {
                let (blobs, d, dest, temp) = (blobs.clone(), *d, dest.to_owned(), temp.clone());
                blocking(move || {
                    let (mut f, info, _) = blobs.open_range(&d, None)?;
                    if info.len > max {
                        return Err(Error::TooLarge { what: key, len: info.len, max });
                    }
                    let mut out = local::create_new_file(&temp)?;
                    let copied = copy_hashing(&mut f, &mut out, info.len).map_err(Error::from);
                    let synced = copied.and_then(|c| Ok(out.sync_all().map(|()| c)?));
                    install_download(synced, &temp, &dest, &d, &info, key)
                })
                .await
            }
            Backend::Object(o) => {
                let mut stream = o.get(d, None).await?;
                let info = stream.info;
                if info.len > max {
                    return Err(Error::TooLarge { what: key, len: info.len, max });
                }
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
                let t = temp.clone();
                let writer = tokio::task::spawn_blocking(move || -> Result<(Digest, u64)> {
                    let mut h = crate::digest::Hasher::new();
                    let mut out = BufWriter::with_capacity(local::IO_CHUNK, local::create_new_file(&t)?);
                    while let Some(chunk) = rx.blocking_recv() {
                        h.update(&chunk);
                        out.write_all(&chunk)?;
                        if h.len() > info.len {
                            // More bytes than announced: stop reading, the check fails.
                            break;
                        }
                    }
                    out.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()?;
                    let n = h.len();
                    Ok((h.finish(), n))
                });
                let mut received = Ok(());
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(c) => {
                            if tx.send(c).await.is_err() {
                                break; // the writer failed; its error is reported
                            }
                        }
                        Err(e) => {
                            received = Err(e);
                            break;
                        }
                    }
                }
                drop(tx);
                let written = joined(writer.await);
                let synced = received.and(written);
                let (d, dest) = (*d, dest.to_owned());
                blocking(move || install_download(synced, &temp, &dest, &d, &info, key)).await
            }
        }
    }

    /// Every blob in the store, sorted by digest. Objects under the prefix that are not
    /// named like blobs are left out.
    pub async fn list(&self) -> Result<Vec<BlobInfo>> {
        let mut all = match &self.inner.backend {
            Backend::Local(dir) => {
                let dir = dir.clone();
                blocking(move || dir.list()).await?
            }
            Backend::Object(o) => o.list().await?,
        };
        all.sort_by_key(|b| b.digest);
        Ok(all)
    }

    /// Deletes the blob; deleting a missing blob is not an error.
    pub async fn delete(&self, d: &Digest) -> Result<()> {
        match &self.inner.backend {
            Backend::Local(dir) => {
                let (dir, d) = (dir.clone(), *d);
                blocking(move || dir.delete(&d)).await
            }
            Backend::Object(o) => o.delete(d).await,
        }
    }

    /// Deletes every blob that is not in `referenced` and was last written more than
    /// `min_age` ago (so a blob uploaded for a release that is not recorded yet
    /// survives), and on a local directory the temporary files of interrupted puts as
    /// old. `min_age` must be longer than `refresh_after_secs` (a put of an existing
    /// blob older than that rewrites it); callers must record a reference to a blob
    /// within `min_age - refresh_after_secs` of its put. Puts in this process wait
    /// while `gc` runs.
    pub async fn gc(&self, referenced: &HashSet<Digest>, min_age: Duration) -> Result<GcReport> {
        let refresh = self.inner.opts.refresh_after();
        if min_age <= refresh {
            return Err(Error::Config(format!(
                "gc min_age {min_age:?} must be longer than refresh_after_secs ({refresh:?})"
            )));
        }
        let _exclusive = self.inner.gc_lock.write().await;
        let now = SystemTime::now();
        let cutoff = now.checked_sub(min_age).and_then(system_time_ms).unwrap_or(i64::MIN);
        let blobs = self.list().await?;
        let mut report = GcReport::default();
        let present: HashSet<Digest> = blobs.iter().map(|b| b.digest).collect();
        report.missing = referenced.iter().filter(|d| !present.contains(d)).copied().collect();
        report.missing.sort();
        for b in blobs {
            if referenced.contains(&b.digest) {
                report.referenced += 1;
                report.referenced_bytes += b.len;
            } else if b.last_modified_ms.is_none_or(|t| t > cutoff) {
                report.young += 1;
                report.young_bytes += b.len;
            } else {
                self.delete(&b.digest).await?;
                report.deleted += 1;
                report.deleted_bytes += b.len;
            }
        }
        if let Backend::Local(dir) = &self.inner.backend {
            let dir = dir.clone();
            let before = now.checked_sub(min_age).unwrap_or(SystemTime::UNIX_EPOCH);
            report.temp_files_deleted = blocking(move || dir.clean_temp(before)).await?;
        }
        Ok(report)
    }

    /// The local directory, if this store is one.
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.inner.backend {
            Backend::Local(dir) => Some(dir.root()),
            Backend::Object(_) => None,
        }
    }
}

/// Renames a verified download into place, or removes it.
fn install_download(
    written: Result<(Digest, u64)>,
    temp: &Path,
    dest: &Path,
    d: &Digest,
    info: &BlobInfo,
    key: String,
) -> Result<BlobInfo> {
    let result = written.and_then(|(got, n)| {
        if got != *d || n != info.len {
            return Err(Error::Corrupt {
                key,
                detail: format!("its bytes hash to {got} ({n} bytes), expected {d} ({} bytes)", info.len),
            });
        }
        fs_err::rename(temp, dest)?;
        if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            local::sync_dir(dir)?;
        }
        Ok(*info)
    });
    if result.is_err() {
        let _ = fs_err::remove_file(temp);
    }
    result
}

/// Streams `len` bytes of `file` from its position, 1 MiB per blocking read.
fn local_stream(file: fs_err::File, len: u64) -> BoxStream<'static, Result<Bytes>> {
    futures::stream::try_unfold((file, len), |(file, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = usize::try_from(left.min(local::IO_CHUNK as u64)).unwrap_or(local::IO_CHUNK);
        let (file, chunk) = blocking(move || {
            let mut file = file;
            let mut buf = vec![0u8; want];
            file.read_exact(&mut buf)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: reading a blob: {e}", file.path().display())))?;
            Ok((file, Bytes::from(buf)))
        })
        .await?;
        Ok(Some((chunk, (file, left - want as u64))))
    })
    .boxed()
}

/// Runs blocking file work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    joined(tokio::task::spawn_blocking(f).await)
}

pub(crate) fn joined<T>(r: Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    r.unwrap_or_else(|e| Err(io::Error::other(format!("blob store task failed: {e}")).into()))
}
