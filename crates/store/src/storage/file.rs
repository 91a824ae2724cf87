//! The real backend: files on a local filesystem.

#![allow(unsafe_code, reason = "mmap of immutable segment files")]

use super::{Mapped, Storage, WritableFile};
use std::io::{self, Write};
use std::path::Path;

/// Files on the local filesystem, with real fsync of files and directories.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStorage;

struct FileWriter(fs_err::File);

impl WritableFile for FileWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Storage for FileStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        create_private_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs_err::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        Ok(Box::new(FileWriter(create_private(path)?)))
    }

    fn append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let f = fs_err::OpenOptions::new().append(true).open(path)?;
        Ok(Box::new(FileWriter(f)))
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs_err::metadata(path)?.len())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs_err::read(path)
    }

    fn map(&self, path: &Path) -> io::Result<Mapped> {
        let file = fs_err::File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Mapped::new(Vec::new()));
        }
        // SAFETY: the engine maps only immutable files (segments, backups) that it never
        // writes again after they are renamed into place; a file is removed only when no
        // version references it, and removal of a mapped file keeps its pages alive.
        let map = unsafe { memmap2::Mmap::map(file.file())? };
        Ok(Mapped::new(map))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = fs_err::OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs_err::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs_err::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs_err::remove_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        fs_err::File::open(path)?.sync_all()
    }
}

/// Creates (or truncates) a file for writing, owner-only (0600) whatever the umask:
/// records, keys and backups are nobody else's.
pub(crate) fn create_private(path: &Path) -> io::Result<fs_err::File> {
    let mut o = fs_err::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use fs_err::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o.open(path)
}

/// Creates a directory and its missing parents, owner-only (0700).
pub(crate) fn create_private_dir_all(path: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(path).map_err(|e| io::Error::new(e.kind(), format!("{e} when creating directory {}", path.display())))
}
