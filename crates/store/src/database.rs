//! A data directory holding named collections.

use crate::collection::{Collection, Health, OpenMode, Options, WalLoss, create_files};
use crate::error::{Error, IoContext, Result};
use crate::manifest::CollectionConfig;
use crate::storage::{FileStorage, Mapped, Storage, WritableFile};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MARKER: &str = "KERNELIZE";
const MARKER_TEXT: &[u8] = b"kernelize data directory, format 1\n";
const COLLECTIONS: &str = "collections";

/// A data directory of collections. Open once per process for writing: a file lock
/// refuses a second writer. Any number of readers may open it read-only beside it
/// ([`Database::open_read_only`]); each sees a snapshot as of its open.
#[derive(Debug)]
pub struct Database {
    storage: Arc<dyn Storage>,
    root: PathBuf,
    opts: Options,
    collections: RwLock<BTreeMap<String, Collection>>,
    /// Collections that could not be opened, with the reason.
    unavailable: RwLock<BTreeMap<String, String>>,
    read_only: bool,
    _lock: Option<std::fs::File>,
}

/// A backend wrapper that refuses every change: what a read-only open runs on, so that
/// no code path can write by accident.
#[derive(Debug)]
struct ReadOnlyStorage(Arc<dyn Storage>);

fn refuse(path: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ReadOnlyFilesystem,
        format!("{}: the data directory is open read-only", path.display()),
    )
}

impl Storage for ReadOnlyStorage {
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        Err(refuse(path))
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        self.0.list_dir(path)
    }
    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        self.0.exists(path)
    }
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn WritableFile>> {
        Err(refuse(path))
    }
    fn append(&self, path: &Path) -> std::io::Result<Box<dyn WritableFile>> {
        Err(refuse(path))
    }
    fn file_len(&self, path: &Path) -> std::io::Result<u64> {
        self.0.file_len(path)
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.0.read(path)
    }
    fn map(&self, path: &Path) -> std::io::Result<Mapped> {
        self.0.map(path)
    }
    fn truncate(&self, path: &Path, _len: u64) -> std::io::Result<()> {
        Err(refuse(path))
    }
    fn rename(&self, from: &Path, _to: &Path) -> std::io::Result<()> {
        Err(refuse(from))
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        Err(refuse(path))
    }
    fn remove_dir_all(&self, path: &Path) -> std::io::Result<()> {
        Err(refuse(path))
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        Err(refuse(path))
    }
}

/// Checks a collection name: 1–64 of `[A-Za-z0-9_-]`, not starting with `-`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "bad collection name {name:?}: use 1-64 letters, digits, '_' or '-' (not leading '-')"
        )))
    }
}

impl Database {
    /// Opens (creating if needed) a data directory on the local filesystem, taking an
    /// exclusive lock on it, and recovers every collection. An encrypted data directory
    /// needs [`Database::open_keyed`].
    pub fn open(root: &Path, opts: Options) -> Result<Database> {
        Database::open_keyed(root, opts, None)
    }

    /// As [`Database::open`]; with `master`, the data directory must be encrypted
    /// ([`crate::init_encrypted`]) and its files are sealed and opened with its keyring.
    pub fn open_keyed(root: &Path, opts: Options, master: Option<&crate::MasterKey>) -> Result<Database> {
        FileStorage.create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let lock_path = root.join("LOCK");
        let mut lock_opts = fs_err::OpenOptions::new();
        lock_opts.create(true).truncate(false).write(true);
        #[cfg(unix)]
        fs_err::os::unix::fs::OpenOptionsExt::mode(&mut lock_opts, 0o600);
        let lock = lock_opts.open(&lock_path).map_err(|e| Error::io(&lock_path, e))?.into_file();
        if let Err(e) = lock.try_lock() {
            let msg = match e {
                std::fs::TryLockError::WouldBlock => "another kernelize process has this data directory open \
                     (read beside it with a read-only open: `kernelize --read-only …`)"
                    .into(),
                std::fs::TryLockError::Error(e) => e.to_string(),
            };
            return Err(Error::io(&lock_path, std::io::Error::new(std::io::ErrorKind::WouldBlock, msg)));
        }
        let mut db = Database::open_with(crate::keys::file_storage(root, master)?, root, opts)?;
        db._lock = Some(lock);
        Ok(db)
    }

    /// Opens a data directory read-only, beside a running writer or on a read-only
    /// mount: no lock is taken, nothing is written (no recovery cut, no orphan removal,
    /// no WAL file); each collection's WAL is replayed in memory as far as it is clean.
    /// What it sees is a snapshot as of this call; writes are refused.
    pub fn open_read_only(root: &Path, opts: Options) -> Result<Database> {
        Database::open_read_only_keyed(root, opts, None)
    }

    /// [`Database::open_read_only`] of a data directory that may be encrypted.
    pub fn open_read_only_keyed(root: &Path, opts: Options, master: Option<&crate::MasterKey>) -> Result<Database> {
        Database::open_read_only_with(crate::keys::file_storage(root, master)?, root, opts)
    }

    /// [`Database::open_read_only`] on any storage backend.
    pub fn open_read_only_with(storage: Arc<dyn Storage>, root: &Path, opts: Options) -> Result<Database> {
        crate::keys::check_access(&*storage, root)?;
        let storage: Arc<dyn Storage> = Arc::new(ReadOnlyStorage(storage));
        let marker = root.join(MARKER);
        if !storage.exists(&marker).at(&marker)? {
            return Err(Error::InvalidInput(format!(
                "{} is not a kernelize data directory (no {MARKER} file)",
                root.display()
            )));
        }
        Database::open_mode(storage, root, opts, true)
    }

    /// Opens a data directory on any storage backend (no process lock). A collection that
    /// cannot be opened (damaged files) does not stop the others: it is listed by
    /// [`Database::unavailable`] and answers [`Error::Unavailable`].
    pub fn open_with(storage: Arc<dyn Storage>, root: &Path, opts: Options) -> Result<Database> {
        crate::keys::check_access(&*storage, root)?;
        let cdir = root.join(COLLECTIONS);
        if !storage.exists(&cdir).at(&cdir)? {
            storage.create_dir_all(&cdir).at(&cdir)?;
        }
        let marker = root.join(MARKER);
        if !storage.exists(&marker).at(&marker)? {
            crate::storage::write_atomic(&*storage, &marker, MARKER_TEXT).at(&marker)?;
        }
        Database::open_mode(storage, root, opts, false)
    }

    fn open_mode(storage: Arc<dyn Storage>, root: &Path, opts: Options, read_only: bool) -> Result<Database> {
        let cdir = root.join(COLLECTIONS);
        let names = if storage.exists(&cdir).at(&cdir)? { storage.list_dir(&cdir).at(&cdir)? } else { Vec::new() };
        let mut collections = BTreeMap::new();
        let mut unavailable = BTreeMap::new();
        for name in names {
            let dir = cdir.join(&name);
            if name.starts_with('.') {
                // An interrupted create or drop: never visible, remove.
                if !read_only {
                    storage.remove_dir_all(&dir).at(&dir)?;
                    if let (Some(enc), Some(gone)) = (storage.encryption(), name.strip_prefix(".dropped-"))
                        && !storage.exists(&cdir.join(gone)).at(&cdir)?
                    {
                        enc.destroy_key(gone)?; // finish the crypto-shredding of a drop
                    }
                }
                continue;
            }
            if validate_name(&name).is_err() {
                continue;
            }
            let mode = if read_only { OpenMode::ReadOnly } else { OpenMode::Write };
            match Collection::open_mode(storage.clone(), &dir, &name, opts, mode) {
                Ok(c) => {
                    collections.insert(name, c);
                }
                // A collection dropped by a writer while a reader opened the directory.
                Err(_) if read_only && !storage.exists(&dir).unwrap_or(true) => {}
                Err(e) => {
                    unavailable.insert(name, e.to_string());
                }
            }
        }
        Ok(Database {
            storage,
            root: root.to_path_buf(),
            opts,
            collections: RwLock::new(collections),
            unavailable: RwLock::new(unavailable),
            read_only,
            _lock: None,
        })
    }

    /// True when opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Collections that could not be opened, with the reason (e.g. a damaged WAL: see
    /// [`Database::recover`]). They answer [`Error::Unavailable`] until then.
    pub fn unavailable(&self) -> Vec<(String, String)> {
        self.unavailable.read().iter().map(|(n, r)| (n.clone(), r.clone())).collect()
    }

    /// Every collection with its [`Health`], unavailable ones included, sorted by name.
    pub fn health(&self) -> Vec<(String, Health)> {
        let mut out: Vec<(String, Health)> =
            self.collections.read().iter().map(|(n, c)| (n.clone(), c.health())).collect();
        out.extend(self.unavailable.read().iter().map(|(n, r)| (n.clone(), Health::Unavailable(r.clone()))));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Recovers an unavailable collection whose WAL is damaged. Returns what the cut drops
    /// (None: nothing to recover). Without `accept_loss` it only reports and changes
    /// nothing; with it, the WAL is cut before the bad frame (the dropped bytes and later
    /// WAL files are kept in `wal/quarantine/`) and the collection is opened.
    pub fn recover(&self, name: &str, accept_loss: bool) -> Result<Option<WalLoss>> {
        validate_name(name)?;
        if self.read_only {
            return Err(Error::ReadOnly("recovery writes; open the data directory for writing".into()));
        }
        let mut map = self.collections.write();
        if map.contains_key(name) {
            return Ok(None);
        }
        if !self.unavailable.read().contains_key(name) {
            return Err(Error::NotFound(format!("collection {name:?}")));
        }
        let dir = self.collection_dir(name);
        let loss = Collection::inspect_wal(&*self.storage, &dir)?;
        if loss.is_none() {
            return Err(Error::Unavailable {
                collection: name.to_owned(),
                reason: format!(
                    "its WAL is intact, so recover cannot help: {}",
                    self.unavailable.read().get(name).cloned().unwrap_or_default()
                ),
            });
        }
        if accept_loss {
            let c = Collection::open_mode(self.storage.clone(), &dir, name, self.opts, OpenMode::AcceptLoss)?;
            map.insert(name.to_owned(), c);
            self.unavailable.write().remove(name);
        }
        Ok(loss)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The storage backend.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Options collections are opened with.
    pub fn options(&self) -> Options {
        self.opts
    }

    /// Creates a collection, atomically: it exists completely or not at all.
    pub fn create_collection(&self, name: &str, config: CollectionConfig) -> Result<Collection> {
        validate_name(name)?;
        if config.dim == 0 || config.dim > crate::record::MAX_DIM {
            return Err(Error::InvalidInput(format!(
                "dimension {} out of range 1..={}",
                config.dim,
                crate::record::MAX_DIM
            )));
        }
        self.refuse_if_read_only()?;
        let mut map = self.collections.write();
        if map.contains_key(name) || self.unavailable.read().contains_key(name) {
            return Err(Error::AlreadyExists(format!("collection {name:?}")));
        }
        let cdir = self.root.join(COLLECTIONS);
        let tmp = cdir.join(format!(".creating-{name}"));
        let dir = cdir.join(name);
        if self.storage.exists(&tmp).at(&tmp)? {
            self.storage.remove_dir_all(&tmp).at(&tmp)?;
        }
        if let Some(enc) = self.storage.encryption() {
            enc.renew_key(name)?;
        }
        create_files(&*self.storage, &tmp, &config)?;
        self.storage.rename(&tmp, &dir).at(&dir)?;
        self.storage.sync_dir(&cdir).at(&cdir)?;
        let c = Collection::open(self.storage.clone(), &dir, name, self.opts)?;
        map.insert(name.to_owned(), c.clone());
        Ok(c)
    }

    /// An open collection by name ([`Error::Unavailable`] for one that could not be opened).
    pub fn collection(&self, name: &str) -> Result<Collection> {
        if let Some(c) = self.collections.read().get(name) {
            return Ok(c.clone());
        }
        match self.unavailable.read().get(name) {
            Some(reason) => Err(Error::Unavailable { collection: name.to_owned(), reason: reason.clone() }),
            None => Err(Error::NotFound(format!("collection {name:?}"))),
        }
    }

    fn refuse_if_read_only(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(format!(
                "{} was opened read-only; open it for writing (without --read-only, with no other writer)",
                self.root.display()
            )));
        }
        Ok(())
    }

    /// Names of all collections, sorted.
    pub fn list(&self) -> Vec<String> {
        self.collections.read().keys().cloned().collect()
    }

    /// All open collections.
    pub fn collections(&self) -> Vec<Collection> {
        self.collections.read().values().cloned().collect()
    }

    /// Drops a collection and its files, atomically (renamed away, then removed).
    pub fn drop_collection(&self, name: &str) -> Result<()> {
        self.refuse_if_read_only()?;
        let mut map = self.collections.write();
        if map.remove(name).is_none() && self.unavailable.write().remove(name).is_none() {
            return Err(Error::NotFound(format!("collection {name:?}")));
        }
        let cdir = self.root.join(COLLECTIONS);
        let dir = cdir.join(name);
        let gone = cdir.join(format!(".dropped-{name}"));
        if self.storage.exists(&gone).at(&gone)? {
            self.storage.remove_dir_all(&gone).at(&gone)?;
        }
        self.storage.rename(&dir, &gone).at(&dir)?;
        self.storage.sync_dir(&cdir).at(&cdir)?;
        if let Some(enc) = self.storage.encryption() {
            // Crypto-shredding: every copy of the collection's files becomes unreadable.
            enc.destroy_key(name)?;
        }
        self.storage.remove_dir_all(&gone).at(&gone)
    }

    /// Installs a collection from a manifest and segment files (a restore): written under
    /// a temporary name, renamed into place, then opened.
    pub(crate) fn adopt_collection(
        &self,
        name: &str,
        manifest: &[u8],
        files: &[(String, Vec<u8>)],
    ) -> Result<Collection> {
        validate_name(name)?;
        self.refuse_if_read_only()?;
        let mut map = self.collections.write();
        if map.contains_key(name) || self.unavailable.read().contains_key(name) {
            return Err(Error::AlreadyExists(format!("collection {name:?}")));
        }
        let cdir = self.root.join(COLLECTIONS);
        let tmp = cdir.join(format!(".restoring-{name}"));
        let dir = cdir.join(name);
        if self.storage.exists(&tmp).at(&tmp)? {
            self.storage.remove_dir_all(&tmp).at(&tmp)?;
        }
        if let Some(enc) = self.storage.encryption() {
            enc.renew_key(name)?;
        }
        for sub in ["wal", "seg"] {
            self.storage.create_dir_all(&tmp.join(sub)).at(&tmp)?;
        }
        for (rel, bytes) in files {
            let p = tmp.join(rel);
            let mut f = self.storage.create(&p).at(&p)?;
            f.write_all(bytes).at(&p)?;
            f.sync().at(&p)?;
        }
        self.storage.sync_dir(&tmp.join("seg")).at(&tmp)?;
        crate::storage::write_atomic(&*self.storage, &tmp.join("MANIFEST"), manifest).at(&tmp)?;
        self.storage.rename(&tmp, &dir).at(&dir)?;
        self.storage.sync_dir(&cdir).at(&cdir)?;
        let c = Collection::open(self.storage.clone(), &dir, name, self.opts)?;
        map.insert(name.to_owned(), c.clone());
        Ok(c)
    }

    /// Creates a collection from segment files made elsewhere (a cluster shard's sealed
    /// state, downloaded): `segments` oldest first, each a segment file and its companions
    /// (`(extension, path)`, e.g. its search index), all moved into the new collection. The
    /// manifest names them, newest first, with `flushed_seq` their highest sequence number;
    /// the collection exists completely or not at all.
    pub fn import_collection(
        &self,
        name: &str,
        config: CollectionConfig,
        segments: &[(PathBuf, Vec<(String, PathBuf)>)],
    ) -> Result<Collection> {
        validate_name(name)?;
        self.refuse_if_read_only()?;
        if self.storage.encryption().is_some() {
            return Err(Error::InvalidInput("segment import into an encrypted data directory is not supported".into()));
        }
        let mut map = self.collections.write();
        if map.contains_key(name) || self.unavailable.read().contains_key(name) {
            return Err(Error::AlreadyExists(format!("collection {name:?}")));
        }
        let cdir = self.root.join(COLLECTIONS);
        let tmp = cdir.join(format!(".importing-{name}"));
        let dir = cdir.join(name);
        if self.storage.exists(&tmp).at(&tmp)? {
            self.storage.remove_dir_all(&tmp).at(&tmp)?;
        }
        for sub in ["wal", "seg"] {
            self.storage.create_dir_all(&tmp.join(sub)).at(&tmp)?;
        }
        let mut manifest = crate::manifest::Manifest::new(config);
        for (i, (seg, companions)) in segments.iter().enumerate() {
            let id = i as u64 + 1;
            let dest = tmp.join("seg").join(crate::manifest::segment_file_name(id));
            self.storage.rename(seg, &dest).at(seg)?;
            for (ext, path) in companions {
                let to = crate::collection::segment_companion(&dest, ext);
                self.storage.rename(path, &to).at(path)?;
            }
            let opened = crate::segment::Segment::open(&*self.storage, &dest)?;
            let (min_seq, max_seq) = opened.seq_range();
            manifest.segments.insert(
                0,
                crate::manifest::SegmentRef {
                    id,
                    count: opened.len() as u64,
                    min_seq,
                    max_seq,
                    bytes: opened.file_bytes() as u64,
                },
            );
            manifest.flushed_seq = manifest.flushed_seq.max(max_seq);
            manifest.next_segment_id = id + 1;
        }
        self.storage.sync_dir(&tmp.join("seg")).at(&tmp)?;
        manifest.store(&*self.storage, &tmp.join("MANIFEST"))?;
        self.storage.rename(&tmp, &dir).at(&dir)?;
        self.storage.sync_dir(&cdir).at(&cdir)?;
        let c = Collection::open(self.storage.clone(), &dir, name, self.opts)?;
        map.insert(name.to_owned(), c.clone());
        Ok(c)
    }

    /// Directory of a collection (whether or not it exists).
    pub fn collection_dir(&self, name: &str) -> PathBuf {
        self.root.join(COLLECTIONS).join(name)
    }
}
