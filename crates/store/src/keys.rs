//! Encryption at rest, key side: the master key (from a file, an environment variable or
//! a command) and the keyring (`KEYRING` in the data directory) that holds one random
//! data key per collection, wrapped (AES-256-GCM) by the master key. Rotating the master
//! key re-wraps the data keys and rewrites only `KEYRING`; dropping a collection deletes
//! its data key, which makes every copy of its files (backups, WAL archives) unreadable.
//! Byte-level layout: `docs/format/encryption.md`.

use crate::error::{Error, IoContext, Result};
use crate::storage::{FileStorage, Storage};
use parking_lot::RwLock;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

/// Name of the keyring file in an encrypted data directory.
pub const KEYRING_FILE: &str = "KEYRING";
/// Environment variable the CLI and server read the master key from.
pub const MASTER_KEY_ENV: &str = "KERNELIZE_MASTER_KEY";
/// Length of master and data keys (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of a data key id.
pub const KEY_ID_LEN: usize = 16;
const KEYRING_FORMAT: u32 = 1;
/// The `KERNELIZE` marker of an encrypted data directory (format 2).
const MARKER_V2: &[u8] = b"kernelize data directory, format 2 (encrypted: KEYRING)\n";
const CHECK_AAD: &[u8] = b"kernelize keyring check v1";
const WRAP_AAD: &[u8] = b"kernelize data key v1";
/// Upper bound on what a key file or key command may print.
const MAX_KEY_TEXT: usize = 4096;

/// A data key id (random; names the key in file headers).
pub type KeyId = [u8; KEY_ID_LEN];

/// 32 secret bytes; zeroed when dropped; never printed.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> MasterKey {
        MasterKey(Zeroizing::new(bytes))
    }

    /// A fresh random key.
    pub fn generate() -> Result<MasterKey> {
        Ok(MasterKey(Zeroizing::new(random_bytes()?)))
    }

    /// Parses 64 hex digits or the standard base64 of 32 bytes (surrounding whitespace
    /// ignored).
    pub fn parse(text: &str) -> Result<MasterKey> {
        let t = text.trim();
        let bad = || {
            Error::InvalidInput(format!(
                "a master key is 64 hex digits or the base64 of 32 bytes (got {} characters)",
                t.len()
            ))
        };
        let bytes =
            if t.len() == 2 * KEY_LEN { decode_hex(t).ok_or_else(bad)? } else { decode_base64(t).ok_or_else(bad)? };
        let arr: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| bad())?;
        Ok(MasterKey::from_bytes(arr))
    }

    /// Reads a key file: 32 raw bytes, or hex / base64 text.
    pub fn from_file(path: &Path) -> Result<MasterKey> {
        let bytes = Zeroizing::new(fs_err::read(path).map_err(|e| Error::io(path, e))?);
        if let Ok(arr) = <[u8; KEY_LEN]>::try_from(bytes.as_slice()) {
            return Ok(MasterKey::from_bytes(arr));
        }
        if bytes.len() > MAX_KEY_TEXT {
            return Err(Error::InvalidInput(format!("{}: not a master key (too long)", path.display())));
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::InvalidInput(format!("{}: not a master key (not text)", path.display())))?;
        MasterKey::parse(text).map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))
    }

    /// Runs a command (`sh -c`, e.g. a KMS client that unwraps the key) and parses what it
    /// prints on stdout (hex or base64).
    pub fn from_command(command: &str) -> Result<MasterKey> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| Error::io(format!("master key command {command:?}"), e))?;
        let stdout = Zeroizing::new(out.stdout);
        if !out.status.success() {
            return Err(Error::InvalidInput(format!("master key command {command:?} failed: {}", out.status)));
        }
        if stdout.len() > MAX_KEY_TEXT {
            return Err(Error::InvalidInput(format!("master key command {command:?} printed too much")));
        }
        let text = std::str::from_utf8(&stdout)
            .map_err(|_| Error::InvalidInput(format!("master key command {command:?} printed no text")))?;
        MasterKey::parse(text).map_err(|e| Error::InvalidInput(format!("master key command {command:?}: {e}")))
    }

    /// The key as 64 hex digits (for `kernelize keys generate`).
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0[..])
    }

    fn aead(&self) -> LessSafeKey {
        aead_key(&self.0)
    }
}

pub(crate) fn aead_key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    // AES_256_GCM takes exactly KEY_LEN bytes, so this cannot fail.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).unwrap_or_else(|_| unreachable!("32-byte AES key")))
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::io("getrandom", std::io::Error::other("the system random generator failed")))?;
    Ok(b)
}

/// A data key: 32 secret bytes, zeroed when dropped.
#[derive(Clone)]
pub(crate) struct DataKey(pub(crate) Arc<Zeroizing<[u8; KEY_LEN]>>);

#[derive(Serialize, Deserialize)]
struct KeyringFile {
    format: u32,
    algorithm: String,
    /// hex(nonce || tag): AES-256-GCM of nothing under the master key, AAD `CHECK_AAD`.
    check: String,
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
struct KeyEntry {
    /// hex of the 16-byte key id.
    id: String,
    collection: String,
    created_unix: u64,
    /// hex(nonce || ciphertext || tag) of the data key under the master key.
    wrapped: String,
}

struct Entry {
    collection: String,
    created_unix: u64,
    key: DataKey,
}

#[derive(Default)]
struct State {
    by_name: BTreeMap<String, KeyId>,
    keys: BTreeMap<KeyId, Entry>,
}

/// The unwrapped keyring of an open encrypted data directory.
pub(crate) struct Keyring {
    path: PathBuf,
    master: MasterKey,
    state: RwLock<State>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keyring({}, {} keys)", self.path.display(), self.state.read().keys.len())
    }
}

fn seal(key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
    let nonce: [u8; NONCE_LEN] = random_bytes()?;
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
        .map_err(|_| Error::InvalidInput("sealing failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

fn open_sealed(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let (nonce, ct) = sealed.split_at_checked(NONCE_LEN)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = Zeroizing::new(ct.to_vec());
    let n = key.open_in_place(nonce, Aad::from(aad), &mut buf).ok()?.len();
    buf.truncate(n);
    Some(buf)
}

fn wrap_aad(id: &KeyId, collection: &str) -> Vec<u8> {
    let mut aad = WRAP_AAD.to_vec();
    aad.extend_from_slice(id);
    aad.extend_from_slice(collection.as_bytes());
    aad
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Keyring {
    /// Whether `root` is an encrypted data directory (has a keyring).
    pub(crate) fn exists(storage: &dyn Storage, root: &Path) -> Result<bool> {
        let p = root.join(KEYRING_FILE);
        storage.exists(&p).at(&p)
    }

    /// Writes a new, empty keyring for `root` and the format-2 marker.
    pub(crate) fn create(storage: &dyn Storage, root: &Path, master: &MasterKey) -> Result<()> {
        let marker = root.join("KERNELIZE");
        if !storage.exists(&marker).at(&marker)? {
            crate::storage::write_atomic(storage, &marker, MARKER_V2).at(&marker)?;
        }
        let ring = Keyring { path: root.join(KEYRING_FILE), master: master.clone(), state: RwLock::default() };
        ring.save(storage, &ring.state.read())
    }

    /// Loads and unwraps the keyring of `root`; a wrong master key is a clear error.
    pub(crate) fn load(storage: &dyn Storage, root: &Path, master: &MasterKey) -> Result<Keyring> {
        let path = root.join(KEYRING_FILE);
        let bytes = storage.read(&path).at(&path)?;
        let file: KeyringFile =
            serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&path, e.column() as u64, e.to_string()))?;
        if file.format != KEYRING_FORMAT || file.algorithm != "AES-256-GCM" {
            return Err(Error::corrupt(
                &path,
                0,
                format!("unsupported keyring format {} / {}", file.format, file.algorithm),
            ));
        }
        let aead = master.aead();
        let check = decode_hex(&file.check).ok_or_else(|| Error::corrupt(&path, 0, "check is not hex"))?;
        if open_sealed(&aead, CHECK_AAD, &check).is_none() {
            return Err(Error::InvalidInput(format!(
                "the master key does not open {} (wrong key, or the keyring was altered)",
                path.display()
            )));
        }
        let mut state = State::default();
        for e in file.keys {
            let id: KeyId = decode_hex(&e.id)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Error::corrupt(&path, 0, format!("bad key id {:?}", e.id)))?;
            let wrapped = decode_hex(&e.wrapped).ok_or_else(|| Error::corrupt(&path, 0, "wrapped key is not hex"))?;
            let plain = open_sealed(&aead, &wrap_aad(&id, &e.collection), &wrapped).ok_or_else(|| {
                Error::corrupt(&path, 0, format!("data key {} of {:?} does not unwrap", e.id, e.collection))
            })?;
            let key: [u8; KEY_LEN] = plain
                .as_slice()
                .try_into()
                .map_err(|_| Error::corrupt(&path, 0, format!("data key {} has the wrong length", e.id)))?;
            state.by_name.insert(e.collection.clone(), id);
            state.keys.insert(
                id,
                Entry {
                    collection: e.collection,
                    created_unix: e.created_unix,
                    key: DataKey(Arc::new(Zeroizing::new(key))),
                },
            );
        }
        Ok(Keyring { path, master: master.clone(), state: RwLock::new(state) })
    }

    fn save(&self, storage: &dyn Storage, state: &State) -> Result<()> {
        let aead = self.master.aead();
        let mut keys = Vec::new();
        for (id, e) in &state.keys {
            keys.push(KeyEntry {
                id: encode_hex(id),
                collection: e.collection.clone(),
                created_unix: e.created_unix,
                wrapped: encode_hex(&seal(&aead, &wrap_aad(id, &e.collection), &e.key.0[..])?),
            });
        }
        let file = KeyringFile {
            format: KEYRING_FORMAT,
            algorithm: "AES-256-GCM".into(),
            check: encode_hex(&seal(&aead, CHECK_AAD, &[])?),
            keys,
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| Error::InvalidInput(e.to_string()))?;
        crate::storage::write_atomic(storage, &self.path, &json).at(&self.path)
    }

    /// The data key of a collection, created (and made durable) on first use.
    pub(crate) fn key_for(&self, storage: &dyn Storage, collection: &str) -> Result<(KeyId, DataKey)> {
        if let Some(id) = self.state.read().by_name.get(collection)
            && let Some(e) = self.state.read().keys.get(id)
        {
            return Ok((*id, e.key.clone()));
        }
        let mut st = self.state.write();
        if let Some(id) = st.by_name.get(collection).copied()
            && let Some(e) = st.keys.get(&id)
        {
            return Ok((id, e.key.clone()));
        }
        let id: KeyId = random_bytes()?;
        let key = DataKey(Arc::new(Zeroizing::new(random_bytes()?)));
        st.by_name.insert(collection.to_owned(), id);
        st.keys.insert(id, Entry { collection: collection.to_owned(), created_unix: now_unix(), key: key.clone() });
        if let Err(e) = self.save(storage, &st) {
            st.by_name.remove(collection);
            st.keys.remove(&id);
            return Err(e);
        }
        Ok((id, key))
    }

    /// The current data key of a collection, if it has one (never creates one).
    pub(crate) fn existing_key(&self, collection: &str) -> Option<(KeyId, DataKey)> {
        let st = self.state.read();
        let id = st.by_name.get(collection)?;
        st.keys.get(id).map(|e| (*id, e.key.clone()))
    }

    /// A data key by id, if the keyring still holds it.
    pub(crate) fn key_by_id(&self, id: &KeyId) -> Option<DataKey> {
        self.state.read().keys.get(id).map(|e| e.key.clone())
    }

    /// Destroys the data key of `collection` (crypto-shredding). No-op without one.
    pub(crate) fn destroy(&self, storage: &dyn Storage, collection: &str) -> Result<()> {
        let mut st = self.state.write();
        let Some(id) = st.by_name.remove(collection) else { return Ok(()) };
        st.keys.remove(&id);
        self.save(storage, &st)
    }

    /// Replaces the data key of `collection` by a fresh one (a new collection of a name
    /// used before never shares a key with the old one).
    pub(crate) fn renew(&self, storage: &dyn Storage, collection: &str) -> Result<()> {
        self.destroy(storage, collection)?;
        self.key_for(storage, collection).map(|_| ())
    }
}

/// What a keyring holds, for `kernelize keys list`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// hex of the key id (as in file headers).
    pub id: String,
    /// The collection the key belongs to.
    pub collection: String,
    /// Unix seconds of creation.
    pub created_unix: u64,
}

/// Creates an empty keyring in a data directory that holds no collection yet, which
/// makes it an encrypted data directory (opened with [`crate::Database::open_keyed`]).
pub fn init_encrypted(root: &Path, master: &MasterKey) -> Result<()> {
    let storage = FileStorage;
    storage.create_dir_all(root).at(root)?;
    if Keyring::exists(&storage, root)? {
        return Err(Error::AlreadyExists(format!("{} is already encrypted", root.join(KEYRING_FILE).display())));
    }
    let cdir = root.join("collections");
    if storage.exists(&cdir).at(&cdir)? && storage.list_dir(&cdir).at(&cdir)?.iter().any(|n| !n.starts_with('.')) {
        return Err(Error::InvalidInput(format!(
            "{} already holds unencrypted collections; encrypt a new data directory and restore or re-ingest into it",
            root.display()
        )));
    }
    Keyring::create(&storage, root, master)
}

/// Re-wraps every data key of `root`'s keyring under `new` (data files are not touched).
pub fn rotate_master(root: &Path, old: &MasterKey, new: &MasterKey) -> Result<usize> {
    // A running server holds the keyring in memory and would write it back under the
    // old key: rotate only with the data directory closed.
    let _lock = lock_dir(root)?;
    let storage = FileStorage;
    let ring = Keyring::load(&storage, root, old)?;
    let moved = Keyring { path: ring.path, master: new.clone(), state: ring.state };
    let st = moved.state.read();
    moved.save(&storage, &st)?;
    Ok(st.keys.len())
}

fn lock_dir(root: &Path) -> Result<std::fs::File> {
    let path = root.join("LOCK");
    let lock = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?
        .into_file();
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::io(
            &path,
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "another kernelize process has this data directory open; stop it to rotate the master key",
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// Lists the data keys of `root`'s keyring (checks the master key).
pub fn list_keys(root: &Path, master: &MasterKey) -> Result<Vec<KeyInfo>> {
    let ring = Keyring::load(&FileStorage, root, master)?;
    let st = ring.state.read();
    Ok(st
        .keys
        .iter()
        .map(|(id, e)| KeyInfo { id: encode_hex(id), collection: e.collection.clone(), created_unix: e.created_unix })
        .collect())
}

/// The storage of a data directory on the local filesystem: sealed when `master` is
/// given (the directory must be encrypted), plain otherwise.
pub(crate) fn file_storage(root: &Path, master: Option<&MasterKey>) -> Result<Arc<dyn Storage>> {
    match master {
        None => Ok(Arc::new(FileStorage)),
        Some(m) => {
            if !Keyring::exists(&FileStorage, root)? {
                return Err(Error::InvalidInput(format!(
                    "{} is not an encrypted data directory (no {KEYRING_FILE}); create one with `kernelize init --encrypt`",
                    root.display()
                )));
            }
            Ok(Arc::new(crate::storage::EncryptedStorage::open(Arc::new(FileStorage), root, m)?))
        }
    }
}

/// Refuses to open an encrypted data directory without its keys.
pub(crate) fn check_access(storage: &dyn Storage, root: &Path) -> Result<()> {
    if storage.encryption().is_none() && Keyring::exists(storage, root)? {
        return Err(Error::InvalidInput(format!(
            "{} is encrypted: give its master key ({MASTER_KEY_ENV}, --master-key-file or --master-key-command)",
            root.display()
        )));
    }
    Ok(())
}

/// Whether `root` is an encrypted data directory.
pub fn is_encrypted(root: &Path) -> bool {
    root.join(KEYRING_FILE).exists()
}

pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

pub(crate) fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes().chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let body = s.trim_end_matches('=');
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.as_bytes().chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = acc << 6 | val(c)?;
        }
        let bits = chunk.len() * 6;
        acc <<= 24 - bits;
        let n = bits / 8;
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_key_parses_hex_and_base64() {
        let k = MasterKey::from_bytes([7u8; 32]);
        let hex = k.to_hex();
        assert_eq!(MasterKey::parse(&format!(" {hex}\n")).map(|k| k.to_hex()).ok(), Some(hex.clone()));
        // base64 of 32 bytes of 7.
        let b64 = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
        assert_eq!(MasterKey::parse(b64).map(|k| k.to_hex()).ok(), Some(hex));
        assert!(MasterKey::parse("abc").is_err());
        assert!(MasterKey::parse(&"zz".repeat(32)).is_err());
        assert_eq!(format!("{k:?}"), "MasterKey(..)");
    }

    #[test]
    fn master_key_from_command_reads_stdout_and_reports_failure() {
        let k = MasterKey::from_command(&format!("echo {}", "ab".repeat(32))).map(|k| k.to_hex()).ok();
        assert_eq!(k, Some("ab".repeat(32)));
        let e = MasterKey::from_command("exit 3").map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("failed"), "{e}");
    }
}
