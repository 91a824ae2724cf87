//! The local-directory backend: blocking file operations, called on tokio's blocking pool.
//!
//! Layout (docs/format/blobs.md): `<dir>/sha256/<first two hex digits>/<64 hex digits>`,
//! temporary files in `<dir>/tmp/`. A blob is written to a temporary file, fsynced, renamed
//! into place and its directory fsynced, so a blob file is always complete.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::digest::Hasher;
use crate::{BlobInfo, Digest, Error, Result};

/// Read and write buffer size.
pub(crate) const IO_CHUNK: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct LocalDir {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
}

impl LocalDir {
    /// Opens (creating if needed) the blob directory `root`.
    pub(crate) fn open(root: &Path) -> Result<LocalDir> {
        let dir = LocalDir { root: root.to_owned(), blobs: root.join("sha256"), tmp: root.join("tmp") };
        for d in [&dir.root, &dir.blobs, &dir.tmp] {
            create_dir(d)?;
        }
        Ok(dir)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_string();
        self.blobs.join(&hex[..2]).join(hex)
    }

    pub(crate) fn head(&self, d: &Digest) -> Result<Option<BlobInfo>> {
        let path = self.path(d);
        match fs_err::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(info(*d, &m))),
            Ok(_) => Err(Error::Corrupt { key: path.display().to_string(), detail: "not a regular file".into() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets the blob's modification time to now (so `gc` sees it as young).
    pub(crate) fn refresh(&self, d: &Digest) -> Result<BlobInfo> {
        let path = self.path(d);
        let f = fs_err::OpenOptions::new().write(true).open(&path)?;
        f.set_modified(SystemTime::now())?;
        Ok(info(*d, &f.metadata()?))
    }

    /// Copies `src` into the store while hashing it; it must hash to `expected` with
    /// `len` bytes (it was hashed before), else nothing is stored.
    pub(crate) fn store_file(&self, src: &Path, expected: &Digest, len: u64) -> Result<BlobInfo> {
        let mut input = fs_err::File::open(src)?;
        let (mut out, temp) = self.create_temp()?;
        let copied = copy_hashing(&mut input, &mut out, len);
        let result = match copied {
            Ok((got, n)) if got == *expected && n == len => self.install(out, &temp, expected),
            Ok(_) => Err(Error::SourceChanged { path: src.to_owned() }),
            Err(e) => Err(e.into()),
        };
        if result.is_err() {
            let _ = fs_err::remove_file(&temp);
        }
        result
    }

    /// Stores `bytes`, which hash to `d`.
    pub(crate) fn store_bytes(&self, bytes: &[u8], d: &Digest) -> Result<BlobInfo> {
        let (mut out, temp) = self.create_temp()?;
        let result = out.write_all(bytes).map_err(Error::from).and_then(|()| self.install(out, &temp, d));
        if result.is_err() {
            let _ = fs_err::remove_file(&temp);
        }
        result
    }

    /// Opens the blob positioned at `range.start` (the whole blob if `range` is `None`).
    pub(crate) fn open_range(
        &self,
        d: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<(fs_err::File, BlobInfo, Range<u64>)> {
        let path = self.path(d);
        let mut f = match fs_err::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound { key: path.display().to_string() });
            }
            Err(e) => return Err(e.into()),
        };
        let info = info(*d, &f.metadata()?);
        let range = check_range(&path.display().to_string(), range, info.len)?;
        f.seek(SeekFrom::Start(range.start))?;
        Ok((f, info, range))
    }

    pub(crate) fn list(&self) -> Result<Vec<BlobInfo>> {
        let mut out = Vec::new();
        for fan in fs_err::read_dir(&self.blobs)? {
            let fan = fan?;
            let Some(prefix) = fan.file_name().to_str().map(str::to_owned) else { continue };
            if prefix.len() != 2 || !fan.file_type()?.is_dir() {
                continue;
            }
            for entry in fs_err::read_dir(fan.path())? {
                let entry = entry?;
                let Some(d) = entry.file_name().to_str().and_then(|n| n.parse::<Digest>().ok()) else {
                    continue;
                };
                if !d.to_string().starts_with(&prefix) {
                    continue;
                }
                match entry.metadata() {
                    Ok(m) if m.is_file() => out.push(info(d, &m)),
                    Ok(_) => {}
                    // Deleted since read_dir listed it.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", entry.path().display())).into()),
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn delete(&self, d: &Digest) -> Result<()> {
        match fs_err::remove_file(self.path(d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Deletes temporary files (of puts that died) last modified before `before`.
    pub(crate) fn clean_temp(&self, before: SystemTime) -> Result<u64> {
        let mut n = 0;
        for entry in fs_err::read_dir(&self.tmp)? {
            let entry = entry?;
            let Ok(m) = entry.metadata() else { continue };
            if m.is_file() && m.modified().is_ok_and(|t| t < before) {
                match fs_err::remove_file(entry.path()) {
                    Ok(()) => n += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(n)
    }

    fn create_temp(&self) -> Result<(fs_err::File, PathBuf)> {
        let path = self.tmp.join(unique_name("put"));
        Ok((create_new_file(&path)?, path))
    }

    /// Fsyncs `file` and renames it to the blob's path, then fsyncs the directory.
    fn install(&self, file: fs_err::File, temp: &Path, d: &Digest) -> Result<BlobInfo> {
        file.sync_all()?;
        drop(file);
        let dest = self.path(d);
        let fan = dest.parent().unwrap_or(&self.blobs);
        if !fan.is_dir() {
            create_dir(fan)?;
            sync_dir(&self.blobs)?;
        }
        fs_err::rename(temp, &dest)?;
        sync_dir(fan)?;
        Ok(info(*d, &fs_err::metadata(&dest)?))
    }
}

/// Copies at most `limit + 1` bytes from `input` to `out` (so a longer input shows as
/// longer), hashing them.
pub(crate) fn copy_hashing(input: &mut impl Read, out: &mut impl Write, limit: u64) -> io::Result<(Digest, u64)> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut input = input.take(limit.saturating_add(1));
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.flush()?;
    let len = h.len();
    Ok((h.finish(), len))
}

/// The range to serve: all of a blob of `len` bytes, or `range` if it is non-empty and
/// inside it.
pub(crate) fn check_range(key: &str, range: Option<Range<u64>>, len: u64) -> Result<Range<u64>> {
    match range {
        None => Ok(0..len),
        Some(r) if r.start < r.end && r.end <= len => Ok(r),
        Some(r) => Err(Error::InvalidRange { key: key.to_owned(), start: r.start, end: r.end, len }),
    }
}

pub(crate) fn info(digest: Digest, m: &std::fs::Metadata) -> BlobInfo {
    BlobInfo { digest, len: m.len(), last_modified_ms: m.modified().ok().and_then(system_time_ms) }
}

pub(crate) fn system_time_ms(t: SystemTime) -> Option<i64> {
    let ms = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis();
    i64::try_from(ms).ok()
}

/// A name no other put (in this or another process) uses at the same time.
pub(crate) fn unique_name(what: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{what}-{}-{}-{nanos}.part", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Creates a new file, owner-only (0600) on Unix.
pub(crate) fn create_new_file(path: &Path) -> io::Result<fs_err::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let f = o.open(path).map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", path.display())))?;
    Ok(fs_err::File::from_parts(f, path))
}

/// Creates a directory and its parents, owner-only (0700) on Unix.
fn create_dir(path: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(path).map_err(|e| io::Error::new(e.kind(), format!("creating directory {}: {e}", path.display())))
}

pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    fs_err::File::open(path)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
