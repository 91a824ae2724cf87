//! Kernels encrypted to device keys: the [age](https://age-encryption.org/v1) format with
//! X25519 recipients, so a leaked download or a stolen device's flash reveals nothing
//! without the device's identity. Files stay interoperable with the `age` and `rage`
//! tools (`age -d -i device.key k.kernel.age > k.kernel`). A reader decrypts into
//! memory, then opens the kernel as usual (signature, hashes and expiry still checked).

use crate::error::{KernelError, Result};
use crate::format::Trust;
use crate::kernel::Kernel;
use age::secrecy::ExposeSecret;
use std::io::{Read, Write};
use std::path::Path;

/// First bytes of every age file.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// Largest identity file read (a few keys and comments).
const MAX_IDENTITY_FILE: u64 = 64 * 1024;

/// Whether bytes are an age file (an encrypted kernel).
pub fn is_encrypted(bytes: &[u8]) -> bool {
    bytes.starts_with(AGE_MAGIC)
}

/// A fresh device key: (identity file text with a comment, `age1…` recipient).
pub fn generate_identity() -> (String, String) {
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let text = format!("# kernelize device key\n# public key: {public}\n{}\n", id.to_string().expose_secret());
    (text, public)
}

/// Encrypts kernel bytes to one or more `age1…` recipients.
pub fn encrypt(bytes: &[u8], recipients: &[String]) -> Result<Vec<u8>> {
    if recipients.is_empty() {
        return Err(KernelError::Invalid("give at least one recipient (age1…)".into()));
    }
    let parsed = recipients
        .iter()
        .map(|r| {
            r.trim()
                .parse::<age::x25519::Recipient>()
                .map_err(|e| KernelError::Invalid(format!("recipient {:?}: {e}", bounded(r))))
        })
        .collect::<Result<Vec<_>>>()?;
    let enc = age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| KernelError::Invalid(format!("encrypting: {e}")))?;
    let mut out = Vec::with_capacity(bytes.len() + 512);
    let io = |e| KernelError::io("<memory>", e);
    let mut w = enc.wrap_output(&mut out).map_err(io)?;
    w.write_all(bytes).map_err(io)?;
    w.finish().map_err(io)?;
    Ok(out)
}

/// A set of device identities (an age identity file).
pub struct Identities(Vec<Box<dyn age::Identity>>);

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({} keys)", self.0.len())
    }
}

impl Identities {
    /// Reads an identity file (`AGE-SECRET-KEY-1…` lines, `#` comments).
    pub fn load(path: &Path) -> Result<Identities> {
        let f = fs_err::File::open(path).map_err(|e| KernelError::io(path, e))?;
        let mut text = Vec::new();
        f.take(MAX_IDENTITY_FILE + 1).read_to_end(&mut text).map_err(|e| KernelError::io(path, e))?;
        if text.len() as u64 > MAX_IDENTITY_FILE {
            return Err(KernelError::Key { path: path.into(), reason: "identity file too large".into() });
        }
        Identities::parse(&text).map_err(|reason| KernelError::Key { path: path.into(), reason })
    }

    /// Parses identity file text.
    pub fn parse(text: &[u8]) -> std::result::Result<Identities, String> {
        let file = age::IdentityFile::from_buffer(text).map_err(|e| format!("not an age identity file: {e}"))?;
        let ids = file.into_identities().map_err(|e| format!("not an age identity file: {e}"))?;
        if ids.is_empty() {
            return Err("no identity in the file".into());
        }
        Ok(Identities(ids))
    }
}

/// Decrypts an encrypted kernel; `what` names it in errors.
pub fn decrypt(bytes: &[u8], identities: &Identities, what: &str) -> Result<Vec<u8>> {
    let refused = |e: &dyn std::fmt::Display| KernelError::Corrupt {
        what: what.to_owned(),
        offset: 0,
        reason: format!("cannot decrypt: {e}"),
    };
    let dec = age::Decryptor::new_buffered(bytes).map_err(|e| refused(&e))?;
    let mut r = dec.decrypt(identities.0.iter().map(|i| &**i as &dyn age::Identity)).map_err(|e| refused(&e))?;
    let mut out = Vec::with_capacity(bytes.len());
    r.read_to_end(&mut out).map_err(|e| refused(&e))?;
    Ok(out)
}

/// Opens a kernel file that may be encrypted: decrypted in memory with `identities`
/// when it is (an error without them), mapped as usual when it is not.
pub fn open(path: &Path, trust: &Trust, identities: Option<&Identities>) -> Result<Kernel> {
    let mut head = [0u8; 22];
    let n = {
        let mut f = fs_err::File::open(path).map_err(|e| KernelError::io(path, e))?;
        f.read(&mut head).map_err(|e| KernelError::io(path, e))?
    };
    if !is_encrypted(&head[..n]) {
        return Kernel::open(path, trust);
    }
    let what = path.display().to_string();
    let Some(ids) = identities else {
        return Err(KernelError::Invalid(format!("{what} is encrypted to device keys: give --identity")));
    };
    let bytes = fs_err::read(path).map_err(|e| KernelError::io(path, e))?;
    Kernel::from_bytes(&decrypt(&bytes, ids, &what)?, &what, trust)
}

fn bounded(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_kernel_bytes_open_only_with_a_matching_identity() {
        let (id_text, public) = generate_identity();
        let (other_text, _) = generate_identity();
        let plain = b"not really a kernel, just bytes".repeat(1000);
        let sealed = encrypt(&plain, std::slice::from_ref(&public)).expect("encrypt");
        assert!(is_encrypted(&sealed));
        assert!(!sealed.windows(10).any(|w| w == &plain[..10]));
        let ids = Identities::parse(id_text.as_bytes()).expect("identity");
        assert_eq!(decrypt(&sealed, &ids, "k").expect("decrypt"), plain);
        let other = Identities::parse(other_text.as_bytes()).expect("identity");
        assert!(decrypt(&sealed, &other, "k").is_err());
        // Flipped bytes never decrypt to something else, and never panic.
        for i in (0..sealed.len()).step_by(7) {
            let mut b = sealed.clone();
            b[i] ^= 0x40;
            if let Ok(p) = decrypt(&b, &ids, "k") {
                assert_eq!(p, plain, "flip at {i}");
            }
        }
        assert!(encrypt(&plain, &["age1nope".into()]).is_err());
        assert!(Identities::parse(b"garbage").is_err());
    }
}
