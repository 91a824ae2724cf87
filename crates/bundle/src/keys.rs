//! Ed25519 keys and SHA-256 digests.
//!
//! The key files are the kernels' (`crates/kernel/src/keys.rs`, `kernelize keys
//! generate`): the private key is a PKCS#8 v2 document in a file only its owner reads, the
//! public key one line of 64 hex digits, and a key's id the hex of the first 8 bytes of
//! SHA-256 of the 32-byte public key. A key made for kernels loads here and the other way
//! round. This crate keeps its own copy of these few functions so that it depends on
//! nothing above `ring` (the device agent links it without the kernel builder).

use crate::error::{BundleError, Result};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::Path;

/// A private ed25519 signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("key_id", &self.public().key_id()).finish_non_exhaustive()
    }
}

/// A public ed25519 key; serialized as 64 lower-case hex digits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    bytes: [u8; 32],
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Parses lower- or upper-case hex into exactly `N` bytes.
pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (digit(b[2 * i])? << 4) | digit(b[2 * i + 1])?;
    }
    Some(out)
}

/// `n` random bytes from the system's generator.
pub(crate) fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| BundleError::Invalid("the system's random number generator failed".into()))?;
    Ok(out)
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate() -> Result<SigningKey> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| BundleError::Invalid("the system's random number generator failed".into()))?;
        SigningKey::from_pkcs8(doc.as_ref())
    }

    /// From a PKCS#8 document (v1 or v2).
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| BundleError::Invalid(format!("not an ed25519 PKCS#8 key: {e}")))?;
        Ok(SigningKey { pair })
    }

    /// Loads a private key file (PKCS#8, as written by `kernelize keys generate`).
    pub fn load(path: &Path) -> Result<SigningKey> {
        let der = fs_err::read(path).map_err(|e| BundleError::io(path, e))?;
        SigningKey::from_pkcs8(&der).map_err(|e| BundleError::Invalid(format!("{}: {e}", path.display())))
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
    /// From the raw 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> PublicKey {
        PublicKey { bytes }
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Parses 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Option<PublicKey> {
        unhex::<32>(text.trim()).map(|bytes| PublicKey { bytes })
    }

    /// Loads a public key file (one line of 64 hex digits).
    pub fn load(path: &Path) -> Result<PublicKey> {
        let text = fs_err::read_to_string(path).map_err(|e| BundleError::io(path, e))?;
        PublicKey::from_hex(&text).ok_or_else(|| {
            BundleError::Invalid(format!(
                "{}: expected one line of 64 hex digits (an ed25519 public key)",
                path.display()
            ))
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

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<PublicKey, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        unhex::<32>(&s)
            .map(|bytes| PublicKey { bytes })
            .ok_or_else(|| serde::de::Error::custom("expected 64 hex digits (an ed25519 public key)"))
    }
}

/// A SHA-256 digest; serialized as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256 {
        Sha256::from_ring(ring::digest::digest(&ring::digest::SHA256, bytes))
    }

    pub(crate) fn from_ring(d: ring::digest::Digest) -> Sha256 {
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Sha256(out)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Sha256> {
        unhex::<32>(s).map(Sha256)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Sha256, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Sha256::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits (a SHA-256)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_key_ids() {
        let k = SigningKey::generate().unwrap();
        let pk = k.public();
        assert_eq!(PublicKey::from_hex(&pk.to_hex()), Some(pk.clone()));
        assert_eq!(PublicKey::from_hex(&pk.to_hex().to_uppercase()), Some(pk.clone()));
        assert_eq!(PublicKey::from_hex("zz"), None);
        assert_eq!(PublicKey::from_hex(&"é".repeat(32)), None, "multi-byte text is not hex");
        assert_eq!(pk.key_id().len(), 16);
        let sig = k.sign(b"m");
        assert!(pk.verify(b"m", &sig));
        assert!(!pk.verify(b"n", &sig));
        let d = Sha256::of(b"abc");
        assert_eq!(d.to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(Sha256::from_hex(&d.to_hex()), Some(d));
    }

    #[test]
    fn key_files_are_the_kernels() {
        let dir = tempfile::tempdir().unwrap();
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let path = dir.path().join("release.key");
        fs_err::write(&path, doc.as_ref()).unwrap();
        let k = SigningKey::load(&path).unwrap();
        let pub_path = dir.path().join("release.pub");
        fs_err::write(&pub_path, format!("{}\n", k.public().to_hex())).unwrap();
        assert_eq!(PublicKey::load(&pub_path).unwrap(), k.public());
        fs_err::write(&pub_path, "nope\n").unwrap();
        assert!(PublicKey::load(&pub_path).unwrap_err().to_string().contains("64 hex digits"));
    }
}
