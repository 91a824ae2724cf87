//! Encryption at rest: sealed files on a real filesystem, keys from the master key, wrong
//! or missing keys, master-key rotation, crypto-shredding on drop, encrypted backups.

use super::{cfg, rec};
use kernelize_store::{
    BackupFormat, Database, EncryptedStorage, FaultKind, FaultStorage, MasterKey, MemStorage, Options, backup,
    init_encrypted, is_sealed, restore, rotate_master, verify,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SECRET: &str = "confidential-marker-7f3a";

fn key(b: u8) -> MasterKey {
    MasterKey::from_bytes([b; 32])
}

fn secret_rec(i: usize) -> kernelize_store::Record {
    let mut r = rec(&format!("id-{i}"), i as f32, 1.0);
    r.text = Some(format!("{SECRET} number {i}"));
    r
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs_err::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
    }
    out.sort();
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A data directory with collection `c`: a flushed segment, an index-sized file, a WAL tail.
fn populated(dir: &Path, master: &MasterKey) -> Database {
    init_encrypted(dir, master).unwrap();
    let db = Database::open_keyed(dir, Options::default(), Some(master)).unwrap();
    let mut config = cfg();
    config.wal_archive = true;
    let c = db.create_collection("c", config).unwrap();
    c.upsert((0..50).map(secret_rec).collect()).unwrap();
    c.flush().unwrap();
    c.upsert((50..60).map(secret_rec).collect()).unwrap();
    db
}

#[test]
fn encrypted_data_directory_keeps_no_plaintext_on_disk_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let master = key(1);
    let db = populated(dir.path(), &master);
    drop(db);
    let mut sealed = 0;
    for f in files_under(dir.path()) {
        let bytes = fs_err::read(&f).unwrap();
        assert!(!contains(&bytes, SECRET.as_bytes()), "{} holds plaintext", f.display());
        if f.starts_with(dir.path().join("collections")) {
            assert!(is_sealed(&bytes) || bytes.is_empty(), "{} is not sealed", f.display());
            sealed += 1;
        }
    }
    assert!(sealed >= 3, "manifest, segment and WAL are sealed");
    let db = Database::open_keyed(dir.path(), Options::default(), Some(&master)).unwrap();
    let c = db.collection("c").unwrap();
    assert_eq!(c.snapshot().count().unwrap(), 60);
    assert_eq!(c.get("id-55").unwrap().unwrap().text.as_deref(), Some(&*format!("{SECRET} number 55")));
    c.compact().unwrap();
    assert_eq!(c.snapshot().count().unwrap(), 60);
}

#[test]
fn encrypted_directory_opened_without_or_with_the_wrong_master_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(populated(dir.path(), &key(1)));
    let e = Database::open(dir.path(), Options::default()).unwrap_err().to_string();
    assert!(e.contains("is encrypted") && e.contains("KERNELIZE_MASTER_KEY"), "{e}");
    let e = Database::open_keyed(dir.path(), Options::default(), Some(&key(2))).unwrap_err().to_string();
    assert!(e.contains("master key does not open"), "{e}");
    // And a plain directory is not opened as an encrypted one by mistake.
    let plain = tempfile::tempdir().unwrap();
    drop(Database::open(plain.path(), Options::default()).unwrap());
    let e = Database::open_keyed(plain.path(), Options::default(), Some(&key(1))).unwrap_err().to_string();
    assert!(e.contains("not an encrypted data directory"), "{e}");
}

#[test]
fn rotating_the_master_key_rewraps_data_keys_without_rewriting_data() {
    let dir = tempfile::tempdir().unwrap();
    drop(populated(dir.path(), &key(1)));
    let data: Vec<(PathBuf, Vec<u8>)> = files_under(&dir.path().join("collections"))
        .into_iter()
        .map(|p| {
            let b = fs_err::read(&p).unwrap();
            (p, b)
        })
        .collect();
    assert_eq!(rotate_master(dir.path(), &key(1), &key(3)).unwrap(), 1);
    for (p, b) in &data {
        assert_eq!(&fs_err::read(p).unwrap(), b, "{} was rewritten", p.display());
    }
    assert!(Database::open_keyed(dir.path(), Options::default(), Some(&key(1))).is_err());
    let db = Database::open_keyed(dir.path(), Options::default(), Some(&key(3))).unwrap();
    assert_eq!(db.collection("c").unwrap().snapshot().count().unwrap(), 60);
    // The old key cannot rotate again.
    drop(db);
    assert!(rotate_master(dir.path(), &key(1), &key(4)).is_err());
}

#[test]
fn dropping_a_collection_destroys_its_key_so_old_copies_are_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let master = key(1);
    let db = populated(dir.path(), &master);
    let c = db.collection("c").unwrap();
    c.flush().unwrap();
    // Copies an attacker (or an old backup) kept: every file of the collection.
    let copies: Vec<(PathBuf, Vec<u8>)> = files_under(&dir.path().join("collections/c"))
        .into_iter()
        .filter_map(|p| fs_err::read(&p).ok().filter(|b| !b.is_empty()).map(|b| (p, b)))
        .collect();
    let bdir = dir.path().join("backup-before-drop");
    backup(&db, &bdir, BackupFormat::Dir, &[], &mut |_, _| {}).unwrap();
    drop(c);
    db.drop_collection("c").unwrap();
    // A new collection of the same name gets a new key.
    db.create_collection("c", cfg()).unwrap();
    let enc = db.storage().encryption().unwrap();
    for (p, b) in &copies {
        let e = enc.unseal(p, b.clone()).unwrap_err().to_string();
        assert!(e.contains("not in the keyring"), "{}: {e}", p.display());
    }
    // The backup taken before the drop cannot be restored any more.
    drop(db);
    let other = tempfile::tempdir().unwrap();
    fs_err::copy(dir.path().join("KEYRING"), other.path().join("KEYRING")).unwrap();
    let db2 = Database::open_keyed(other.path(), Options::default(), Some(&master)).unwrap();
    let e = restore(&db2, &bdir, None, None).unwrap_err().to_string();
    assert!(e.contains("not in the keyring"), "{e}");
}

#[test]
fn encrypted_backup_is_sealed_and_restores_with_the_keyring() {
    let dir = tempfile::tempdir().unwrap();
    let master = key(1);
    let db = populated(dir.path(), &master);
    for (fmt, name) in [(BackupFormat::Dir, "b"), (BackupFormat::Tar, "b.tar")] {
        let dest = dir.path().join(name);
        backup(&db, &dest, fmt, &[], &mut |_, _| {}).unwrap();
        let raw: Vec<u8> = if dest.is_dir() {
            files_under(&dest).iter().flat_map(|p| fs_err::read(p).unwrap()).collect()
        } else {
            fs_err::read(&dest).unwrap()
        };
        assert!(!contains(&raw, SECRET.as_bytes()), "{name} holds plaintext");
        // Structure checks pass without keys; contents need them.
        let report = verify(&dest).unwrap();
        assert!(report.problems.is_empty(), "{name}: {:?}", report.problems);
        // Restore into another data directory that has a copy of the keyring.
        let other = tempfile::tempdir().unwrap();
        fs_err::copy(dir.path().join("KEYRING"), other.path().join("KEYRING")).unwrap();
        let db2 = Database::open_keyed(other.path(), Options::default(), Some(&master)).unwrap();
        restore(&db2, &dest, None, None).unwrap();
        assert_eq!(db2.collection("c").unwrap().snapshot().count().unwrap(), 60, "{name}");
    }
}

#[test]
fn disk_full_at_every_point_reopens_cleanly_when_encrypted() {
    for after in 0..40 {
        let mem = MemStorage::new();
        let fault = FaultStorage::new(Arc::new(mem.clone()));
        let root = Path::new("d");
        let enc = Arc::new(EncryptedStorage::create(Arc::new(fault.clone()), root, &key(1)).unwrap());
        let db = Database::open_with(enc, root, Options::default()).unwrap();
        let c = db.create_collection("c", cfg()).unwrap();
        c.upsert(vec![secret_rec(0)]).unwrap();
        fault.fail_after(after, FaultKind::DiskFull);
        let acked = c.upsert(vec![secret_rec(1)]).is_ok();
        let _ = c.flush();
        fault.disarm();
        drop(c);
        drop(db);
        let enc = Arc::new(EncryptedStorage::open(Arc::new(fault.clone()), root, &key(1)).unwrap());
        let db = Database::open_with(enc, root, Options::default())
            .unwrap_or_else(|e| panic!("reopen after a full disk at op {after}: {e}"));
        let c = db.collection("c").unwrap();
        assert!(c.get("id-0").unwrap().is_some(), "op {after}");
        if acked {
            assert!(c.get("id-1").unwrap().is_some(), "op {after}: acknowledged write lost");
        }
    }
}

#[test]
fn sealed_files_name_the_file_and_offset_when_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let master = key(1);
    drop(populated(dir.path(), &master));
    let seg = files_under(&dir.path().join("collections/c/seg"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut b = fs_err::read(&seg).unwrap();
    b[200] ^= 0x10;
    fs_err::write(&seg, &b).unwrap();
    // The data directory opens; the damaged collection is unavailable, and says where.
    let db = Database::open_keyed(dir.path(), Options::default(), Some(&master)).unwrap();
    let e = db.collection("c").unwrap_err();
    assert_eq!(e.class(), kernelize_store::ErrorClass::Unavailable, "{e}");
    let (name, reason) = db.unavailable().pop().unwrap();
    assert_eq!(name, "c");
    assert!(reason.starts_with("corruption in ") && reason.contains(&seg.display().to_string()), "{reason}");
}

/// Passes everything to a [`MemStorage`] and records which files were read or mapped.
#[derive(Debug)]
struct ReadLog {
    inner: MemStorage,
    reads: parking_lot::Mutex<Vec<PathBuf>>,
}

impl kernelize_store::Storage for ReadLog {
    fn create_dir_all(&self, p: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(p)
    }
    fn list_dir(&self, p: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(p)
    }
    fn exists(&self, p: &Path) -> std::io::Result<bool> {
        self.inner.exists(p)
    }
    fn create(&self, p: &Path) -> std::io::Result<Box<dyn kernelize_store::WritableFile>> {
        self.inner.create(p)
    }
    fn append(&self, p: &Path) -> std::io::Result<Box<dyn kernelize_store::WritableFile>> {
        self.reads.lock().push(p.to_owned());
        self.inner.append(p)
    }
    fn file_len(&self, p: &Path) -> std::io::Result<u64> {
        self.inner.file_len(p)
    }
    fn read(&self, p: &Path) -> std::io::Result<Vec<u8>> {
        self.reads.lock().push(p.to_owned());
        self.inner.read(p)
    }
    fn map(&self, p: &Path) -> std::io::Result<kernelize_store::Mapped> {
        self.reads.lock().push(p.to_owned());
        self.inner.map(p)
    }
    fn truncate(&self, p: &Path, len: u64) -> std::io::Result<()> {
        self.inner.truncate(p, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, p: &Path) -> std::io::Result<()> {
        self.inner.remove_file(p)
    }
    fn remove_dir_all(&self, p: &Path) -> std::io::Result<()> {
        self.inner.remove_dir_all(p)
    }
    fn sync_dir(&self, p: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(p)
    }
}

#[test]
fn encrypted_flush_and_compaction_open_the_new_segment_without_reading_it_back() {
    // Reading a just-sealed segment back meant decrypting what was plaintext a moment
    // before: a third AES pass over every ingested byte (BENCHMARKS.md).
    let log = Arc::new(ReadLog { inner: MemStorage::new(), reads: Default::default() });
    let root = Path::new("d");
    let enc = Arc::new(EncryptedStorage::create(log.clone(), root, &key(1)).unwrap());
    let db = Database::open_with(enc, root, Options::default()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    for batch in 0..3 {
        c.upsert((batch * 40..batch * 40 + 40).map(secret_rec).collect()).unwrap();
        c.flush().unwrap();
    }
    c.compact().unwrap();
    let segment_reads: Vec<PathBuf> =
        log.reads.lock().iter().filter(|p| p.to_string_lossy().contains(".seg")).cloned().collect();
    assert!(segment_reads.is_empty(), "segments read back: {segment_reads:?}");
    assert_eq!(c.snapshot().count().unwrap(), 120);
    // What the flush kept is what is on disk: a reopen (which decrypts the files) agrees.
    let want: Vec<_> = c.snapshot().scan(None).map(|r| r.unwrap()).collect();
    drop(c);
    drop(db);
    let enc = Arc::new(EncryptedStorage::open(log.clone(), root, &key(1)).unwrap());
    let db = Database::open_with(enc, root, Options::default()).unwrap();
    let got: Vec<_> = db.collection("c").unwrap().snapshot().scan(None).map(|r| r.unwrap()).collect();
    assert_eq!(got, want);
    assert!(log.reads.lock().iter().any(|p| p.to_string_lossy().ends_with(".seg")), "the reopen reads the segment");
}
