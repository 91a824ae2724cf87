//! Encryption at rest, file side: [`EncryptedStorage`] wraps any backend and seals every
//! file under `collections/<name>/` with that collection's data key, so the engine's code
//! paths (WAL, segments, manifests, index files) stay unchanged. Byte-level layout:
//! `docs/format/encryption.md`.
//!
//! A sealed file is an 80-byte header (magic, version, algorithm, record bound, key id,
//! random salt, header tag) followed by records, one or more per `write_all`: plaintext
//! length, random nonce, AES-256-GCM ciphertext and tag under a per-file key derived
//! (HKDF-SHA256) from the data key and the salt; the record's plaintext offset is
//! authenticated, so records cannot be moved. A torn last record (a crash mid-write) is
//! cut like a torn WAL frame; a bad record followed by more data is corruption.

use super::{Mapped, Storage, WritableFile};
use crate::error::Result;
use crate::keys::{DataKey, KEY_ID_LEN, KeyId, Keyring, MasterKey, random_bytes};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// First 8 bytes of every sealed file.
pub const SEALED_MAGIC: [u8; 8] = *b"KZSEALED";
/// Container version written by this build.
pub const SEALED_VERSION: u16 = 1;
/// Length of a sealed file's header.
pub const SEALED_HEADER_LEN: usize = 80;
/// Plaintext bytes per record at most (writes are split into records of this size).
pub const RECORD_MAX: usize = 64 * 1024;
const ALG_AES_256_GCM: u16 = 1;
const TAG_LEN: usize = 16;
const SALT_LEN: usize = 32;
/// Record head: plaintext length, CRC-32C of (length, plaintext offset), nonce.
const RECORD_HEAD: usize = 4 + 4 + NONCE_LEN;
const HKDF_INFO: &[u8] = b"kernelize file key v1";
/// Files at the root of the data directory that stay in clear (no secrets in them).
const CLEAR_ROOT_FILES: &[&str] = &["KERNELIZE", "KERNELIZE.tmp", "KEYRING", "KEYRING.tmp", "LOCK"];

/// A sealed file that cannot be opened: where and why. Carried inside `io::Error`
/// (kind `InvalidData`) and turned into [`crate::Error::Corruption`] with the path.
#[derive(Debug)]
pub(crate) struct SealError {
    pub(crate) offset: u64,
    pub(crate) reason: String,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "offset {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for SealError {}

fn bad(offset: usize, reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, SealError { offset: offset as u64, reason: reason.into() })
}

fn derive(key: &DataKey, id: &KeyId, salt: &[u8]) -> LessSafeKey {
    let info = [HKDF_INFO, &id[..]];
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&key.0[..]);
    // expand fails only when asked for more than 255 hash lengths; 32 bytes never is.
    let okm = prk.expand(&info, &AES_256_GCM).unwrap_or_else(|_| unreachable!("32-byte HKDF output"));
    LessSafeKey::new(UnboundKey::from(okm))
}

fn head_crc(plain_off: u64, len: u32) -> u32 {
    crc32c::crc32c(&record_aad(plain_off, len))
}

fn record_aad(plain_off: u64, len: u32) -> [u8; 12] {
    let mut aad = [0u8; 12];
    aad[..8].copy_from_slice(&plain_off.to_le_bytes());
    aad[8..].copy_from_slice(&len.to_le_bytes());
    aad
}

/// Header bytes for a new file, and its file key.
fn new_header(id: &KeyId, key: &DataKey) -> io::Result<(Vec<u8>, LessSafeKey)> {
    let salt: [u8; SALT_LEN] = random_bytes().map_err(io::Error::other)?;
    let mut h = Vec::with_capacity(SEALED_HEADER_LEN);
    h.extend_from_slice(&SEALED_MAGIC);
    h.extend_from_slice(&SEALED_VERSION.to_le_bytes());
    h.extend_from_slice(&ALG_AES_256_GCM.to_le_bytes());
    h.extend_from_slice(&(RECORD_MAX as u32).to_le_bytes());
    h.extend_from_slice(id);
    h.extend_from_slice(&salt);
    let fkey = derive(key, id, &salt);
    // The all-zero nonce is reserved for the header tag (record nonces never are zero).
    let tag = fkey
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key([0; NONCE_LEN]), Aad::from(&h[..]), &mut [])
        .map_err(|_| io::Error::other("sealing the header failed"))?;
    h.extend_from_slice(tag.as_ref());
    Ok((h, fkey))
}

/// Seals `plain` as records starting at plaintext offset `plain_off`, appending to `out`.
/// Each record is laid out (head, plaintext, room for the tag: one copy, no zero-fill)
/// and sealed in place while its bytes are still in cache; records are independent (own
/// nonce, own tag, the offset in their AAD). One thread: sealing a large write on several
/// (a thread per write) cost more CPU and wall time than it saved (BENCHMARKS.md,
/// encryption at rest).
fn seal_records(key: &LessSafeKey, plain_off: u64, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let n = plain.len().div_ceil(RECORD_MAX);
    let mut nonces = vec![0u8; n * NONCE_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonces)
        .map_err(|_| io::Error::other("the system random generator failed"))?;
    out.reserve(plain.len() + n * (RECORD_HEAD + TAG_LEN));
    let mut off = plain_off;
    for (chunk, nonce) in plain.chunks(RECORD_MAX).zip(nonces.chunks_exact_mut(NONCE_LEN)) {
        if nonce.iter().all(|&b| b == 0) {
            // The all-zero nonce is the header tag's.
            nonce[NONCE_LEN - 1] = 1;
        }
        let start = out.len();
        let len = chunk.len() as u32;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&head_crc(off, len).to_le_bytes());
        out.extend_from_slice(nonce);
        out.extend_from_slice(chunk);
        out.extend_from_slice(&[0u8; TAG_LEN]);
        seal_record(key, off, &mut out[start..])?;
        off += u64::from(len);
    }
    Ok(())
}

/// Seals one laid-out record in place (head written, plaintext, room for the tag).
fn seal_record(key: &LessSafeKey, plain_off: u64, dst: &mut [u8]) -> io::Result<()> {
    let len = dst.len() - RECORD_HEAD - TAG_LEN;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&dst[8..RECORD_HEAD]);
    let (body, tag_out) = dst[RECORD_HEAD..].split_at_mut(len);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(record_aad(plain_off, len as u32)),
            body,
        )
        .map_err(|_| io::Error::other("sealing failed"))?;
    tag_out.copy_from_slice(tag.as_ref());
    Ok(())
}

/// An opened sealed file: its plaintext and where each record starts.
pub(crate) struct Opened {
    pub(crate) plain: Vec<u8>,
    /// (plaintext offset, ciphertext offset) of each intact record.
    records: Vec<(u64, usize)>,
    /// Ciphertext bytes that form the header and intact records.
    valid_end: usize,
    /// The header's key id and file key (None for a file shorter than a header).
    key: Option<(KeyId, Arc<LessSafeKey>)>,
}

/// Decrypts a whole sealed file in place (each record's plaintext moved down over the
/// heads and tags as it is decrypted). `lookup` finds data keys by id.
pub(crate) fn open_sealed_bytes(mut bytes: Vec<u8>, lookup: &dyn Fn(&KeyId) -> Option<DataKey>) -> io::Result<Opened> {
    if bytes.len() < SEALED_HEADER_LEN {
        // A file whose header never reached the disk (crash right after create).
        if SEALED_MAGIC.starts_with(&bytes[..bytes.len().min(SEALED_MAGIC.len())]) {
            return Ok(Opened { plain: Vec::new(), records: Vec::new(), valid_end: 0, key: None });
        }
        return Err(bad(0, "not a sealed kernelize file (bad magic)"));
    }
    if bytes[..8] != SEALED_MAGIC {
        return Err(bad(
            0,
            "not a sealed kernelize file (bad magic): an unencrypted file in an encrypted data directory?",
        ));
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let version = u16_at(8);
    if version != SEALED_VERSION {
        return Err(bad(8, format!("unsupported sealed-file version {version}")));
    }
    let alg = u16_at(10);
    if alg != ALG_AES_256_GCM {
        return Err(bad(10, format!("unknown algorithm {alg}")));
    }
    let record_max = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    if record_max == 0 || record_max > 16 * RECORD_MAX {
        return Err(bad(12, format!("record bound {record_max} out of range")));
    }
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&bytes[16..32]);
    let Some(data_key) = lookup(&id) else {
        return Err(bad(
            16,
            format!(
                "data key {} is not in the keyring (destroyed when its collection was dropped, or another data directory's file)",
                crate::keys::encode_hex(&id)
            ),
        ));
    };
    let fkey = derive(&data_key, &id, &bytes[32..64]);
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&bytes[64..80]);
    let (head, _) = bytes.split_at(64);
    let mut empty = tag;
    if fkey.open_in_place(Nonce::assume_unique_for_key([0; NONCE_LEN]), Aad::from(head), &mut empty[..]).is_err() {
        return Err(bad(64, "header authentication failed (damaged header, or the wrong key)"));
    }
    let mut records = Vec::new();
    let mut read = SEALED_HEADER_LEN;
    let mut write = 0usize;
    let mut plain_off = 0u64;
    let mut valid_end = SEALED_HEADER_LEN;
    let total = bytes.len();
    let rest_is_zero = |b: &[u8], from: usize| b[from.min(b.len())..].iter().all(|&x| x == 0);
    while read < total {
        let remaining = total - read;
        if remaining < RECORD_HEAD + TAG_LEN {
            break; // torn: a record header that never fully reached the disk
        }
        let word = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let len = word(read);
        let n = len as usize;
        if word(read + 4) != head_crc(plain_off, len) || n == 0 || n > record_max {
            if rest_is_zero(&bytes, read) {
                break; // torn: a zero-filled extension
            }
            return Err(bad(read, format!("damaged record head (length {n}, bound {record_max})")));
        }
        let end = read + RECORD_HEAD + n + TAG_LEN;
        if end > total {
            break; // torn: the record's bytes never fully reached the disk
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[read + 8..read + RECORD_HEAD]);
        let aad = record_aad(plain_off, len);
        // Decrypts and moves the plaintext down to `write` in one pass (the ciphertext
        // starts `read + RECORD_HEAD - write` bytes into the slice); what a failed record
        // leaves there is cut below or never returned.
        let ok = fkey
            .open_within(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut bytes[write..end],
                read + RECORD_HEAD - write..,
            )
            .is_ok();
        if !ok {
            if end == total || rest_is_zero(&bytes, end) {
                break; // torn: the last record is incomplete
            }
            return Err(bad(read, "record authentication failed (damaged or moved bytes)"));
        }
        records.push((plain_off, read));
        write += n;
        plain_off += u64::from(len);
        read = end;
        valid_end = end;
    }
    bytes.truncate(write);
    Ok(Opened { plain: bytes, records, valid_end, key: Some((id, Arc::new(fkey))) })
}

/// Whether bytes start like a sealed file.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(&SEALED_MAGIC)
}

/// A backend that encrypts every file of every collection under that collection's data
/// key (see the module docs). Directory operations, renames and removals pass through.
pub struct EncryptedStorage {
    inner: Arc<dyn Storage>,
    root: PathBuf,
    keyring: Keyring,
}

impl fmt::Debug for EncryptedStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptedStorage({:?} at {}, {:?})", self.inner, self.root.display(), self.keyring)
    }
}

enum Scope {
    /// A file in clear at the root of the data directory.
    Clear,
    /// A file of a collection.
    Collection(String),
}

impl EncryptedStorage {
    /// Opens the keyring of the encrypted data directory `root` on `inner`.
    pub fn open(inner: Arc<dyn Storage>, root: &Path, master: &MasterKey) -> Result<EncryptedStorage> {
        let keyring = Keyring::load(&*inner, root, master)?;
        Ok(EncryptedStorage { inner, root: root.to_path_buf(), keyring })
    }

    /// Makes `root` on `inner` an encrypted data directory (an empty keyring), then opens it.
    pub fn create(inner: Arc<dyn Storage>, root: &Path, master: &MasterKey) -> Result<EncryptedStorage> {
        inner.create_dir_all(root).map_err(|e| crate::Error::io(root, e))?;
        Keyring::create(&*inner, root, master)?;
        EncryptedStorage::open(inner, root, master)
    }

    /// The backend holding the ciphertext.
    pub fn inner(&self) -> &Arc<dyn Storage> {
        &self.inner
    }

    fn scope(&self, path: &Path) -> io::Result<Scope> {
        let refuse = || {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is outside the layout of the encrypted data directory {}",
                    path.display(),
                    self.root.display()
                ),
            )
        };
        let rel = path.strip_prefix(&self.root).map_err(|_| refuse())?;
        let parts: Vec<Component<'_>> = rel.components().collect();
        match parts.as_slice() {
            [Component::Normal(f)] if CLEAR_ROOT_FILES.iter().any(|c| f == c) => Ok(Scope::Clear),
            [Component::Normal(c), Component::Normal(dir), _, ..] if c == &"collections" => {
                let dir = dir.to_str().ok_or_else(refuse)?;
                let name =
                    [".creating-", ".restoring-", ".dropped-"].iter().find_map(|p| dir.strip_prefix(p)).unwrap_or(dir);
                Ok(Scope::Collection(name.to_owned()))
            }
            _ => Err(refuse()),
        }
    }

    fn lookup(&self) -> impl Fn(&KeyId) -> Option<DataKey> + '_ {
        |id| self.keyring.key_by_id(id)
    }

    fn open_file(&self, path: &Path) -> io::Result<Opened> {
        let bytes = self.inner.read(path)?;
        open_sealed_bytes(bytes, &self.lookup())
    }

    /// Seals `plain` as a whole file under `collection`'s data key (used for backups,
    /// whose files are written outside the storage backend).
    pub fn seal(&self, collection: &str, plain: &[u8]) -> Result<Vec<u8>> {
        let (id, key) = self.keyring.key_for(&*self.inner, collection)?;
        let io = |e| crate::Error::io(format!("sealing a file of {collection:?}"), e);
        let (mut out, fkey) = new_header(&id, &key).map_err(io)?;
        seal_records(&fkey, 0, plain, &mut out).map_err(io)?;
        Ok(out)
    }

    /// Seals `plain` as a whole file under the data key `collection` has now, for files
    /// kept outside the storage backend that must die with the collection (the server's
    /// hosted kernels): dropping the collection destroys the key and makes them unreadable.
    /// Unlike [`EncryptedStorage::seal`] it never creates a key: a collection without one
    /// (dropped meanwhile) is [`crate::Error::NotFound`].
    pub fn seal_existing(&self, collection: &str, plain: &[u8]) -> Result<Vec<u8>> {
        let (id, key) = self.keyring.existing_key(collection).ok_or_else(|| {
            crate::Error::NotFound(format!("collection {collection:?} has no data key (it was dropped)"))
        })?;
        let io = |e| crate::Error::io(format!("sealing a file of {collection:?}"), e);
        let (mut out, fkey) = new_header(&id, &key).map_err(io)?;
        seal_records(&fkey, 0, plain, &mut out).map_err(io)?;
        Ok(out)
    }

    /// Opens a whole sealed file (read from anywhere, e.g. a backup) with this keyring.
    /// `path` only names the file in errors.
    pub fn unseal(&self, path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>> {
        open_sealed_bytes(bytes, &self.lookup()).map(|o| o.plain).map_err(|e| crate::Error::io(path, e))
    }

    /// Destroys `collection`'s data key (crypto-shredding).
    pub(crate) fn destroy_key(&self, collection: &str) -> Result<()> {
        self.keyring.destroy(&*self.inner, collection)
    }

    /// Gives `collection` a fresh data key.
    pub(crate) fn renew_key(&self, collection: &str) -> Result<()> {
        self.keyring.renew(&*self.inner, collection)
    }
}

struct SealedWriter {
    inner: Box<dyn WritableFile>,
    key: Arc<LessSafeKey>,
    plain_off: u64,
    buf: Vec<u8>,
}

impl WritableFile for SealedWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        seal_records(&self.key, self.plain_off, buf, &mut self.buf)?;
        self.plain_off += buf.len() as u64;
        self.inner.write_all(&self.buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
}

impl Storage for EncryptedStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let name = match self.scope(path)? {
            Scope::Clear => return self.inner.create(path),
            Scope::Collection(n) => n,
        };
        let (id, key) = self.keyring.key_for(&*self.inner, &name).map_err(io::Error::other)?;
        let (header, fkey) = new_header(&id, &key)?;
        let mut inner = self.inner.create(path)?;
        inner.write_all(&header)?;
        Ok(Box::new(SealedWriter { inner, key: Arc::new(fkey), plain_off: 0, buf: Vec::new() }))
    }

    fn append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        if let Scope::Clear = self.scope(path)? {
            return self.inner.append(path);
        }
        let opened = self.open_file(path)?;
        let Some((_, key)) = opened.key else {
            // No complete header yet: start the file over.
            return self.create(path);
        };
        if opened.valid_end < self.inner.file_len(path)? as usize {
            self.inner.truncate(path, opened.valid_end as u64)?;
        }
        let inner = self.inner.append(path)?;
        Ok(Box::new(SealedWriter { inner, key, plain_off: opened.plain.len() as u64, buf: Vec::new() }))
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        match self.scope(path)? {
            Scope::Clear => self.inner.file_len(path),
            Scope::Collection(_) => Ok(self.open_file(path)?.plain.len() as u64),
        }
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        match self.scope(path)? {
            Scope::Clear => self.inner.read(path),
            Scope::Collection(_) => Ok(self.open_file(path)?.plain),
        }
    }

    fn map(&self, path: &Path) -> io::Result<Mapped> {
        match self.scope(path)? {
            Scope::Clear => self.inner.map(path),
            // Decrypted into memory: resident files (segments, indexes) stay as fast to
            // search as mapped ones.
            Scope::Collection(_) => Ok(Mapped::new(self.open_file(path)?.plain)),
        }
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        if let Scope::Clear = self.scope(path)? {
            return self.inner.truncate(path, len);
        }
        let opened = self.open_file(path)?;
        let Some((_, key)) = &opened.key else {
            return self.inner.truncate(path, 0);
        };
        if len > opened.plain.len() as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: cannot extend a sealed file by truncate", path.display()),
            ));
        }
        // The longest prefix of whole records that fits in `len`.
        let plain_len = opened.plain.len() as u64;
        let (mut start_plain, mut start_cipher) = (0u64, SEALED_HEADER_LEN);
        for (i, &(po, co)) in opened.records.iter().enumerate() {
            let end = opened.records.get(i + 1).map_or(plain_len, |r| r.0);
            if end > len {
                break;
            }
            (start_plain, start_cipher) = (end, co + RECORD_HEAD + (end - po) as usize + TAG_LEN);
        }
        if start_plain == len {
            // On a record boundary: cut the ciphertext there.
            return self.inner.truncate(path, start_cipher as u64);
        }
        // Inside a record: rewrite the file with the cut record re-sealed, atomically.
        let raw = self.inner.read(path)?;
        let mut out = raw[..start_cipher].to_vec();
        seal_records(key, start_plain, &opened.plain[start_plain as usize..len as usize], &mut out)?;
        let tmp = PathBuf::from(format!("{}.retrunc", path.display()));
        super::write_atomic(&*self.inner, &tmp, &out)?;
        self.inner.rename(&tmp, path)?;
        self.inner.sync_dir(super::parent_of(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }

    fn encryption(&self) -> Option<&EncryptedStorage> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn enc() -> (MemStorage, EncryptedStorage) {
        let mem = MemStorage::new();
        let e = EncryptedStorage::create(Arc::new(mem.clone()), Path::new("/d"), &MasterKey::from_bytes([1; 32]))
            .expect("create");
        (mem, e)
    }

    #[test]
    fn sealed_files_round_trip_and_hide_their_plaintext() {
        let (mem, e) = enc();
        let p = Path::new("/d/collections/c/wal/1.wal");
        e.create_dir_all(p.parent().expect("parent")).expect("dir");
        let mut f = e.create(p).expect("create");
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(b"secret secret secret").expect("write");
        f.write_all(&big).expect("write");
        f.sync().expect("sync");
        drop(f);
        let mut want = b"secret secret secret".to_vec();
        want.extend_from_slice(&big);
        assert_eq!(e.read(p).expect("read"), want);
        assert_eq!(&*e.map(p).expect("map"), &want[..]);
        assert_eq!(e.file_len(p).expect("len"), want.len() as u64);
        let raw = mem.read(p).expect("raw");
        assert!(raw.windows(6).all(|w| w != b"secret"));
        // Truncate inside a record, on a boundary, and append again.
        for len in [150_000u64, 20, 0] {
            e.truncate(p, len).expect("truncate");
            assert_eq!(e.read(p).expect("read"), &want[..len as usize]);
        }
        let mut f = e.append(p).expect("append");
        f.write_all(b"again").expect("write");
        drop(f);
        assert_eq!(e.read(p).expect("read"), b"again");
        // A root file stays in clear; a path outside the layout is refused.
        assert!(e.create(Path::new("/elsewhere/x")).is_err());
        assert!(e.create(Path::new("/d/collections/loose")).is_err());
    }

    #[test]
    fn sealed_file_byte_flips_never_panic_and_never_yield_wrong_plaintext() {
        let (mem, e) = enc();
        let p = Path::new("/d/collections/c/seg/1.seg");
        e.create_dir_all(p.parent().expect("parent")).expect("dir");
        let mut f = e.create(p).expect("create");
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        for chunk in data.chunks(100) {
            f.write_all(chunk).expect("write");
        }
        drop(f);
        let raw = mem.read(p).expect("raw");
        let keys = |id: &KeyId| e.keyring.key_by_id(id);
        for i in 0..raw.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = raw.clone();
                b[i] ^= bit;
                match open_sealed_bytes(b, &keys) {
                    // Only a torn-looking last record may be cut: what is left is a prefix.
                    Ok(o) => {
                        assert!(data.starts_with(&o.plain), "flip at {i} produced wrong plaintext");
                        assert!(
                            i >= SEALED_HEADER_LEN + 2 * (RECORD_HEAD + 100 + TAG_LEN),
                            "flip at {i} went unnoticed"
                        );
                    }
                    Err(err) => assert_eq!(err.kind(), io::ErrorKind::InvalidData),
                }
            }
        }
        // Every truncation is a torn tail: a prefix of whole records.
        for n in 0..raw.len() {
            let o = open_sealed_bytes(raw[..n].to_vec(), &keys).expect("torn");
            assert!(data.starts_with(&o.plain));
        }
    }
}
