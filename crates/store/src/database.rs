//! A data directory holding named collections.

use crate::collection::{Collection, Options, create_files};
use crate::error::{Error, IoContext, Result};
use crate::manifest::CollectionConfig;
use crate::storage::Storage;
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MARKER: &str = "KERNELIZE";
const MARKER_TEXT: &[u8] = b"kernelize data directory, format 1\n";
const COLLECTIONS: &str = "collections";

/// A data directory of collections. Open once per process: a file lock refuses a
/// second process.
#[derive(Debug)]
pub struct Database {
    storage: Arc<dyn Storage>,
    root: PathBuf,
    opts: Options,
    collections: RwLock<BTreeMap<String, Collection>>,
    _lock: Option<std::fs::File>,
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
        fs_err::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let lock_path = root.join("LOCK");
        let lock = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?
            .into_file();
        if let Err(e) = lock.try_lock() {
            let msg = match e {
                std::fs::TryLockError::WouldBlock => "another kernelize process has this data directory open".into(),
                std::fs::TryLockError::Error(e) => e.to_string(),
            };
            return Err(Error::io(&lock_path, std::io::Error::new(std::io::ErrorKind::WouldBlock, msg)));
        }
        let mut db = Database::open_with(crate::keys::file_storage(root, master)?, root, opts)?;
        db._lock = Some(lock);
        Ok(db)
    }

    /// Opens a data directory on any storage backend (no process lock).
    pub fn open_with(storage: Arc<dyn Storage>, root: &Path, opts: Options) -> Result<Database> {
        crate::keys::check_access(&*storage, root)?;
        let cdir = root.join(COLLECTIONS);
        storage.create_dir_all(&cdir).at(&cdir)?;
        let marker = root.join(MARKER);
        if !storage.exists(&marker).at(&marker)? {
            crate::storage::write_atomic(&*storage, &marker, MARKER_TEXT).at(&marker)?;
        }
        let mut collections = BTreeMap::new();
        for name in storage.list_dir(&cdir).at(&cdir)? {
            let dir = cdir.join(&name);
            if name.starts_with('.') {
                // An interrupted create or drop: never visible, remove.
                storage.remove_dir_all(&dir).at(&dir)?;
                if let (Some(enc), Some(gone)) = (storage.encryption(), name.strip_prefix(".dropped-"))
                    && !storage.exists(&cdir.join(gone)).at(&cdir)?
                {
                    enc.destroy_key(gone)?; // finish the crypto-shredding of a drop
                }
                continue;
            }
            if validate_name(&name).is_err() {
                continue;
            }
            let c = Collection::open(storage.clone(), &dir, &name, opts)?;
            collections.insert(name, c);
        }
        Ok(Database { storage, root: root.to_path_buf(), opts, collections: RwLock::new(collections), _lock: None })
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
        let mut map = self.collections.write();
        if map.contains_key(name) {
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

    /// An open collection by name.
    pub fn collection(&self, name: &str) -> Result<Collection> {
        self.collections.read().get(name).cloned().ok_or_else(|| Error::NotFound(format!("collection {name:?}")))
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
        let mut map = self.collections.write();
        if map.remove(name).is_none() {
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
        let mut map = self.collections.write();
        if map.contains_key(name) {
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

    /// Directory of a collection (whether or not it exists).
    pub fn collection_dir(&self, name: &str) -> PathBuf {
        self.root.join(COLLECTIONS).join(name)
    }
}
