//! Ed25519 signing keys for kernels. The private key is a PKCS#8 v2 document in a file
//! readable only by its owner; the public key is the raw 32 bytes, written as one line of
//! hex. A key's id is the first 8 bytes of SHA-256 of its public key, in hex: manifests
//! name it so a verifier can say which key it expected.

use crate::error::{KernelError, Result};
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use std::path::{Path, PathBuf};

/// A private signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("key_id", &self.public().key_id()).finish_non_exhaustive()
    }
}

/// A public verification key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    bytes: [u8; 32],
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename) with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = fs_err::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use fs_err::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| KernelError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| KernelError::io(&tmp, e))?;
    f.sync_all().map_err(|e| KernelError::io(&tmp, e))?;
    drop(f);
    fs_err::rename(&tmp, path).map_err(|e| KernelError::io(path, e))?;
    Ok(())
}

/// A fresh PKCS#8 document holding a random ed25519 key.
fn new_pkcs8() -> Result<Vec<u8>> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| KernelError::Invalid("the system's random number generator failed".into()))
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate() -> Result<SigningKey> {
        let doc = new_pkcs8()?;
        SigningKey::from_pkcs8(&doc, Path::new("<generated>"))
    }

    fn from_pkcs8(der: &[u8], path: &Path) -> Result<SigningKey> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| KernelError::Key {
            path: path.to_owned(),
            reason: format!("not an ed25519 PKCS#8 key: {e}"),
        })?;
        Ok(SigningKey { pair })
    }

    /// Loads a private key file written by [`SigningKey::save`].
    pub fn load(path: &Path) -> Result<SigningKey> {
        let der = fs_err::read(path).map_err(|e| KernelError::io(path, e))?;
        SigningKey::from_pkcs8(&der, path)
    }

    /// Loads `path`, generating and saving a key there first if there is none.
    pub fn load_or_generate(path: &Path) -> Result<SigningKey> {
        if path.exists() {
            return SigningKey::load(path);
        }
        let doc = new_pkcs8()?;
        write_private(path, &doc)?;
        SigningKey::from_pkcs8(&doc, path)
    }

    /// Writes the private key (`<stem>.key`, mode 0600) and the public key (`<stem>.pub`);
    /// returns both paths. Refuses to overwrite an existing private key.
    pub fn generate_files(stem: &Path) -> Result<(PathBuf, PathBuf, PublicKey)> {
        let private = stem.with_extension("key");
        let public = stem.with_extension("pub");
        if private.exists() {
            return Err(KernelError::Key {
                path: private,
                reason: "exists; refusing to overwrite a private key".into(),
            });
        }
        let doc = new_pkcs8()?;
        let key = SigningKey::from_pkcs8(&doc, &private)?;
        write_private(&private, &doc)?;
        let pk = key.public();
        fs_err::write(&public, format!("{}\n", pk.to_hex())).map_err(|e| KernelError::io(&public, e))?;
        Ok((private, public, pk))
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey { bytes }
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

impl PublicKey {
    /// From raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> PublicKey {
        PublicKey { bytes }
    }

    /// Parses 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Option<PublicKey> {
        let b = unhex(text.trim())?;
        let bytes: [u8; 32] = b.try_into().ok()?;
        Some(PublicKey { bytes })
    }

    /// Loads a public key file (64 hex digits).
    pub fn load(path: &Path) -> Result<PublicKey> {
        let text = fs_err::read_to_string(path).map_err(|e| KernelError::io(path, e))?;
        PublicKey::from_hex(&text).ok_or_else(|| KernelError::Key {
            path: path.to_owned(),
            reason: "expected one line of 64 hex digits (an ed25519 public key)".into(),
        })
    }

    /// Hex of the raw key.
    pub fn to_hex(&self) -> String {
        hex(&self.bytes)
    }

    /// The key id: hex of the first 8 bytes of SHA-256 of the key.
    pub fn key_id(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.bytes);
        hex(&d.as_ref()[..8])
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.bytes).verify(message, signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public, pk) = SigningKey::generate_files(&dir.path().join("k")).unwrap();
        let key = SigningKey::load(&private).unwrap();
        assert_eq!(PublicKey::load(&public).unwrap(), pk);
        assert_eq!(key.public(), pk);
        let sig = key.sign(b"hello");
        assert!(pk.verify(b"hello", &sig));
        assert!(!pk.verify(b"hellp", &sig));
        let other = SigningKey::generate().unwrap().public();
        assert!(!other.verify(b"hello", &sig));
        assert_ne!(other.key_id(), pk.key_id());
        assert!(SigningKey::generate_files(&dir.path().join("k")).is_err(), "never overwrites a private key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs_err::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
