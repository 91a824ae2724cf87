//! Owner-only files: the data directory, the backup directory and the files the server
//! writes there get explicit modes (0700 directories, 0600 files), whatever the umask.

use anyhow::{Context, Result};
use std::path::Path;

/// Creates `dir` (and missing parents) and makes it 0700; an existing directory with
/// wider permissions is narrowed (and says so in the log).
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    if !fs_err::exists(dir)? {
        fs_err::create_dir_all(dir)?;
        return set_mode(dir, 0o700, false);
    }
    set_mode(dir, 0o700, true)
}

/// Makes an existing file 0600 (a no-op for a missing one, including one that goes away
/// while we look: SQLite removes its `-wal` file when the last connection closes).
pub(crate) fn private_file(path: &Path) -> Result<()> {
    match set_mode(path, 0o600, true) {
        Err(e) if is_not_found(&e) => Ok(()),
        other => other,
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound))
}

/// Creates the SQLite file at `db` as 0600 when it is missing (SQLite gives its `-wal`
/// and `-shm` files the main file's mode) and narrows all three when they exist.
pub(crate) fn private_sqlite(db: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use fs_err::os::unix::fs::OpenOptionsExt as _;
        fs_err::OpenOptions::new().create(true).append(true).mode(0o600).open(db)?;
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        private_file(Path::new(&p))?;
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32, say: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let now = fs_err::metadata(path)?.permissions().mode() & 0o777;
    if now != mode {
        fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("making {} owner-only", path.display()))?;
        if say && now & 0o077 != 0 {
            tracing::info!(path = %path.display(), from = format!("{now:o}"), to = format!("{mode:o}"), "narrowed permissions");
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32, _: bool) -> Result<()> {
    Ok(())
}
