//! A folder of image or audio files, walked recursively: one row per file whose
//! extension is one the collection's encoder reads ([`IngestOptions::media_extensions`]),
//! in sorted path order; the id is the path relative to the folder (`/`-separated).
//! Other files are passed over and counted; symbolic links to folders are not followed
//! (no cycles), links to files are.

use super::{Ctx, MediaRef, Row, Source};
use crate::error::{Error, Position, Result};
use crate::options::IngestOptions;
use std::path::{Path, PathBuf};

/// Deepest folder nesting walked.
const MAX_DEPTH: usize = 64;
/// Most files one folder ingestion lists.
const MAX_FILES: usize = 10_000_000;

pub(crate) struct FolderSource {
    files: std::vec::IntoIter<(String, PathBuf, u64)>,
    next_index: u64,
    bytes: u64,
    total: u64,
}

impl FolderSource {
    /// Lists the folder; returns the source and the total size of the files it will read.
    pub fn open(ctx: Ctx, opts: &IngestOptions) -> Result<(FolderSource, u64)> {
        if opts.media_extensions.is_empty() {
            return Err(Error::Options(format!(
                "{} is a folder: folders are ingested into image or audio collections (media ingestion)",
                ctx.path.display()
            )));
        }
        let mut files = Vec::new();
        walk(&ctx.path, &ctx.path, opts, 0, &mut files)?;
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let total_bytes = files.iter().map(|f| f.2).sum();
        let total = files.len() as u64;
        Ok((FolderSource { files: files.into_iter(), next_index: 0, bytes: 0, total }, total_bytes))
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    opts: &IngestOptions,
    depth: usize,
    out: &mut Vec<(String, PathBuf, u64)>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::file(dir, format!("folders nested more than {MAX_DEPTH} deep")));
    }
    let entries = fs_err::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if kind.is_dir() {
            walk(root, &path, opts, depth + 1, out)?;
            continue;
        }
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| opts.media_extensions.iter().any(|w| w.eq_ignore_ascii_case(e)));
        if !wanted {
            continue;
        }
        // Follows a link to a file; a link to a folder or a dangling link is passed over.
        let meta = match fs_err::metadata(&path) {
            Ok(m) if m.is_file() => m,
            _ => continue,
        };
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let Some(id) = rel.to_str() else {
            return Err(Error::file(&path, "the file name is not UTF-8 (it would not make a valid id)"));
        };
        let id =
            if std::path::MAIN_SEPARATOR == '/' { id.to_owned() } else { id.replace(std::path::MAIN_SEPARATOR, "/") };
        if out.len() >= MAX_FILES {
            return Err(Error::file(root, format!("more than {MAX_FILES} media files; ingest sub-folders one by one")));
        }
        out.push((id, path, meta.len()));
    }
    Ok(())
}

impl Source for FolderSource {
    fn next_row(&mut self) -> Result<Option<Row>> {
        let Some((id, path, len)) = self.files.next() else {
            return Ok(None);
        };
        self.next_index += 1;
        self.bytes += len;
        Ok(Some(Row {
            position: Position::File(self.next_index - 1),
            id,
            vector: None,
            text: None,
            metadata: None,
            media: Some(MediaRef::Path(path)),
        }))
    }

    fn bytes_read(&self) -> u64 {
        self.bytes
    }

    fn total_rows(&self) -> Option<u64> {
        Some(self.total)
    }
}
