//! The signed envelope every fleet document travels in.
//!
//! `{"format":"kernelize-signed/1","kind":K,"key_id":I,"payload":B64,"sig":B64}`. The
//! signature covers `"kernelize-signed/1\n" ‖ K ‖ "\n" ‖ payload bytes`: the exact bytes
//! carried, never a re-serialization, and bound to the document kind (a signed offer can
//! never be passed off as a root document). A verifier checks the envelope's shape, the
//! kind it expects, the key id against the key it was given, then the signature, and only
//! then parses the payload. Format: `docs/format/fleet.md`.

use crate::error::{BundleError, Result};
use crate::keys::{PublicKey, SigningKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The envelope format tag.
pub const ENVELOPE_FORMAT: &str = "kernelize-signed/1";
/// The largest envelope accepted, in bytes (an offer carrying a manifest of
/// [`crate::MAX_MANIFEST_BYTES`] fits).
pub const MAX_ENVELOPE_BYTES: usize = 4 << 20;

/// What a signed payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocKind {
    /// A [`crate::ReleaseManifest`].
    Release,
    /// A [`crate::RootDocument`].
    Root,
    /// An [`crate::Offer`].
    Offer,
}

impl DocKind {
    /// The name used in the envelope and in the signed message.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Release => "release",
            DocKind::Root => "root",
            DocKind::Offer => "offer",
        }
    }

    /// The human name used in errors.
    pub fn what(self) -> &'static str {
        match self {
            DocKind::Release => "release manifest",
            DocKind::Root => "root document",
            DocKind::Offer => "offer",
        }
    }
}

/// A signed payload: exact payload bytes, who signed them, and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// [`ENVELOPE_FORMAT`].
    pub format: String,
    /// What the payload is.
    pub kind: DocKind,
    /// Id of the signing key (16 hex digits).
    pub key_id: String,
    /// The payload: UTF-8 JSON, signed as these exact bytes.
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    /// The ed25519 signature (64 bytes).
    #[serde(with = "b64")]
    pub sig: Vec<u8>,
}

mod b64 {
    use super::B64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        B64.decode(s.as_bytes()).map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

fn signed_message(kind: DocKind, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(payload.len() + 32);
    m.extend_from_slice(ENVELOPE_FORMAT.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(kind.as_str().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(payload);
    m
}

/// Parses JSON `bytes` as `T`, naming the field (JSON path) of the first problem.
pub(crate) fn parse_json<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() { "-".to_owned() } else { path };
        BundleError::malformed(what, field, e.into_inner().to_string())
    })?;
    de.end().map_err(|e| BundleError::malformed(what, "-", format!("trailing bytes: {e}")))?;
    Ok(value)
}

impl Envelope {
    /// Signs `payload` as a document of `kind` with `key`.
    pub fn sign(kind: DocKind, payload: Vec<u8>, key: &SigningKey) -> Envelope {
        let sig = key.sign(&signed_message(kind, &payload)).to_vec();
        Envelope { format: ENVELOPE_FORMAT.to_owned(), kind, key_id: key.public().key_id(), payload, sig }
    }

    /// Parses an envelope (at most [`MAX_ENVELOPE_BYTES`]) and checks its shape. Nothing
    /// about the payload is trusted yet: call [`Envelope::open`].
    pub fn decode(bytes: &[u8]) -> Result<Envelope> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(BundleError::malformed(
                "envelope",
                "-",
                format!("{} bytes, more than the limit of {MAX_ENVELOPE_BYTES}", bytes.len()),
            ));
        }
        let env: Envelope = parse_json("envelope", bytes)?;
        env.check_shape()?;
        Ok(env)
    }

    pub(crate) fn check_shape(&self) -> Result<()> {
        if self.format != ENVELOPE_FORMAT {
            return Err(BundleError::malformed(
                "envelope",
                "format",
                format!("{:?}, expected {ENVELOPE_FORMAT:?}", truncate(&self.format)),
            ));
        }
        if self.key_id.len() != 16 || !self.key_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(BundleError::malformed("envelope", "key_id", "expected 16 lower-case hex digits"));
        }
        if self.sig.len() != 64 {
            return Err(BundleError::malformed(
                "envelope",
                "sig",
                format!("{} bytes, an ed25519 signature has 64", self.sig.len()),
            ));
        }
        if self.payload.is_empty() {
            return Err(BundleError::malformed("envelope", "payload", "empty"));
        }
        Ok(())
    }

    /// The envelope as JSON bytes (fields in a fixed order).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Every field is ASCII without quotes or backslashes: the tag, a kind name, hex,
        // base64. Formatting by hand keeps the bytes fixed and the call infallible.
        format!(
            r#"{{"format":"{}","kind":"{}","key_id":"{}","payload":"{}","sig":"{}"}}"#,
            ENVELOPE_FORMAT,
            self.kind.as_str(),
            escape_free(&self.key_id),
            B64.encode(&self.payload),
            B64.encode(&self.sig)
        )
        .into_bytes()
    }

    /// Checks that this is a `kind` document signed by `key`, and returns the payload
    /// bytes that were signed.
    pub fn open(&self, kind: DocKind, key: &PublicKey) -> Result<&[u8]> {
        self.check_shape()?;
        let what = kind.what();
        if self.kind != kind {
            return Err(BundleError::malformed(
                what,
                "kind",
                format!("a {} envelope, expected {}", self.kind.as_str(), kind.as_str()),
            ));
        }
        let expected = key.key_id();
        if self.key_id != expected {
            return Err(BundleError::Signature {
                what,
                reason: format!("signed by key {}, expected key {expected}", self.key_id),
            });
        }
        if !key.verify(&signed_message(kind, &self.payload), &self.sig) {
            return Err(BundleError::Signature {
                what,
                reason: format!("the signature does not verify under key {expected}"),
            });
        }
        Ok(&self.payload)
    }

    /// Parses the payload as `T` without checking the signature. Only for reading a
    /// document's claims (a root document's version) before choosing the key that must
    /// have signed it; never act on what this returns before [`Envelope::open`].
    pub(crate) fn peek<T: DeserializeOwned>(&self) -> Result<T> {
        parse_json(self.kind.what(), &self.payload)
    }
}

/// Strings from outside quoted in messages: at most 100 characters.
pub(crate) fn truncate(s: &str) -> String {
    if s.chars().count() <= 100 { s.to_owned() } else { format!("{}…", s.chars().take(100).collect::<String>()) }
}

fn escape_free(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_decode_open() {
        let k = SigningKey::generate().unwrap();
        let env = Envelope::sign(DocKind::Offer, br#"{"a":1}"#.to_vec(), &k);
        let bytes = env.to_bytes();
        let back = Envelope::decode(&bytes).unwrap();
        assert_eq!(back, env);
        assert_eq!(serde_json::to_vec(&env).unwrap(), bytes, "hand-written JSON is serde's");
        assert_eq!(back.open(DocKind::Offer, &k.public()).unwrap(), br#"{"a":1}"#);
        let e = back.open(DocKind::Root, &k.public()).unwrap_err();
        assert_eq!(e.code(), "malformed");
        assert!(e.to_string().contains("kind"), "{e}");
        let other = SigningKey::generate().unwrap();
        let e = back.open(DocKind::Offer, &other.public()).unwrap_err();
        assert_eq!(e.code(), "bad_signature");
    }

    #[test]
    fn kind_is_signed() {
        // An envelope whose kind is relabelled does not verify: the kind is in the message.
        let k = SigningKey::generate().unwrap();
        let mut env = Envelope::sign(DocKind::Offer, b"{}".to_vec(), &k);
        env.kind = DocKind::Root;
        assert_eq!(env.open(DocKind::Root, &k.public()).unwrap_err().code(), "bad_signature");
    }

    #[test]
    fn decode_names_fields() {
        let e = Envelope::decode(
            br#"{"format":"kernelize-signed/1","kind":"release","key_id":"00","payload":"e30=","sig":"AA=="}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("key_id"), "{e}");
        let e = Envelope::decode(br#"{"format":"kernelize-signed/1","kind":"nope"}"#).unwrap_err();
        assert!(e.to_string().contains("kind"), "{e}");
        let e = Envelope::decode(
            br#"{"format":"x","kind":"root","key_id":"0011223344556677","payload":"e30=","sig":"AA==","extra":1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("extra"), "{e}");
        assert!(Envelope::decode(&vec![b' '; MAX_ENVELOPE_BYTES + 1]).unwrap_err().to_string().contains("limit"));
    }
}
