//! Saved programs: a versioned JSON file holding a program, how it was made (optimizer,
//! seed, scores, a hash of the training data) and, optionally, an ed25519 signature made
//! with a kernel signing key ([`kernelize_kernel::SigningKey`]; the same key files and
//! key ids as signed kernels).
//!
//! The file is the pretty JSON of [`SavedProgram`]: the same program gives the same bytes.
//! The signature covers the canonical form of everything in the file but the
//! `signature` object itself — the JSON value with object keys sorted, written compactly
//! — so any change to what the file says (a value, a key, an added field) breaks it,
//! while reformatting the file does not.
//!
//! Loading refuses an unknown format version, a signature that does not verify, an
//! unsigned file (or one signed by another key) when a trusted key is given, and JSON
//! that does not fit, naming the path of the field at fault.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use base64::Engine as _;
use kernelize_kernel::{PublicKey, SigningKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::module::{Example, Program};
use crate::optimize::{Metric, OptimizerSpec};

/// The format version this build writes and reads.
pub const FORMAT: u32 = 1;
/// Largest saved program read, bytes.
pub const MAX_BYTES: u64 = 64 << 20;

/// A signature over a saved program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedSignature {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The signing key's id (first 8 bytes of SHA-256 of the public key, hex).
    pub key_id: String,
    /// The public key, hex (integrity check when no trusted key is given).
    pub public_key: String,
    /// The signature of the canonical bytes, base64.
    pub signature: String,
}

/// A program as saved to a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedProgram {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// The program.
    pub program: Program,
    /// The optimizer that made it, if one did.
    #[serde(default)]
    pub optimizer: Option<OptimizerSpec>,
    /// The metric it was scored with.
    #[serde(default)]
    pub metric: Option<Metric>,
    /// Scores by data set name (`val`, `test`, …).
    #[serde(default)]
    pub scores: BTreeMap<String, f64>,
    /// The optimizer's seed.
    #[serde(default)]
    pub seed: u64,
    /// [`dataset_hash`] of the training data.
    #[serde(default)]
    pub dataset_hash: Option<String>,
    /// What wrote the file (`kernelize-programs 0.1.0`, a user, a job).
    #[serde(default)]
    pub created_by: String,
    /// The signature, when signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SavedSignature>,
}

/// SHA-256 (hex, `sha256:` prefix) of the canonical JSON of the examples, in order.
pub fn dataset_hash(examples: &[Example]) -> String {
    let v = serde_json::to_value(examples).unwrap_or(Value::Null);
    format!("sha256:{}", crate::util::sha256_hex(&canonical(&v)))
}

/// The canonical bytes of a JSON value: object keys sorted (by their UTF-8 bytes),
/// no whitespace, strings and numbers as `serde_json` writes them.
pub fn canonical(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                if let Some(x) = m.get(k) {
                    write_canonical(x, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

fn bad(what: &str, reason: impl Into<String>) -> Error {
    Error::Saved { what: what.to_owned(), reason: reason.into() }
}

impl SavedProgram {
    /// An unsigned file for a program, written by this crate.
    pub fn new(program: Program) -> SavedProgram {
        SavedProgram {
            format: FORMAT,
            program,
            optimizer: None,
            metric: None,
            scores: BTreeMap::new(),
            seed: 0,
            dataset_hash: None,
            created_by: concat!("kernelize-programs ", env!("CARGO_PKG_VERSION")).to_owned(),
            signature: None,
        }
    }

    /// The pretty JSON of the file (deterministic: the same program gives the same bytes).
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serializing cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The bytes the signature covers: the canonical JSON of everything but the signature.
    fn signed_bytes(value: &Value) -> Vec<u8> {
        let mut v = value.clone();
        if let Value::Object(m) = &mut v {
            m.remove("signature");
        }
        canonical(&v)
    }

    /// Signs the file with a kernel signing key (replacing any signature).
    pub fn sign(&mut self, key: &SigningKey) {
        self.signature = None;
        // The value as a reader will see it: numbers as they read back from the text.
        let value = serde_json::from_str(&self.to_json()).unwrap_or(Value::Null);
        let bytes = Self::signed_bytes(&value);
        let pk = key.public();
        self.signature = Some(SavedSignature {
            algorithm: "ed25519".into(),
            key_id: pk.key_id(),
            public_key: pk.to_hex(),
            signature: base64::engine::general_purpose::STANDARD.encode(key.sign(&bytes)),
        });
    }

    /// Reads a saved program from its JSON, checking its version, signature and program.
    /// With `trust`, the file must be signed by that key; without, a signed file must
    /// still verify against the key it names.
    ///
    /// # Errors
    /// [`Error::Saved`] for text over [`MAX_BYTES`], JSON that does not parse or fit (with
    /// the path of the field at fault), an unknown format version, a missing, malformed or
    /// failing signature; [`Error::Invalid`] for a program that is not valid.
    pub fn from_json(text: &str, trust: Option<&PublicKey>) -> Result<SavedProgram> {
        Self::parse(text, trust, "<text>")
    }

    fn parse(text: &str, trust: Option<&PublicKey>, what: &str) -> Result<SavedProgram> {
        if text.len() as u64 > MAX_BYTES {
            return Err(bad(what, format!("{} bytes; at most {MAX_BYTES}", text.len())));
        }
        let value: Value = serde_json::from_str(text).map_err(|e| bad(what, format!("not JSON: {e}")))?;
        let Value::Object(obj) = &value else { return Err(bad(what, "not a JSON object")) };
        match obj.get("format") {
            Some(Value::Number(n)) if n.as_u64() == Some(u64::from(FORMAT)) => {}
            Some(v) => {
                return Err(bad(what, format!("unknown format version {v}; this build reads version {FORMAT}")));
            }
            None => return Err(bad(what, "no `format` version: not a saved program")),
        }
        let sig = match obj.get("signature") {
            None | Some(Value::Null) => None,
            Some(s) => {
                Some(SavedSignature::deserialize(s).map_err(|e| bad(what, format!("signature: malformed: {e}")))?)
            }
        };
        match (&sig, trust) {
            (None, Some(t)) => {
                return Err(bad(what, format!("unsigned, but a signature by key {} is required", t.key_id())));
            }
            (None, None) => {}
            (Some(s), _) => {
                if s.algorithm != "ed25519" {
                    return Err(bad(
                        what,
                        format!("signature: algorithm {:?} is not supported (ed25519)", s.algorithm),
                    ));
                }
                let named = PublicKey::from_hex(&s.public_key)
                    .ok_or_else(|| bad(what, "signature: public_key is not 64 hex digits"))?;
                if named.key_id() != s.key_id {
                    return Err(bad(what, "signature: key_id does not match public_key"));
                }
                let key = match trust {
                    Some(t) if *t != named => {
                        return Err(bad(
                            what,
                            format!("signed by key {}, not by the trusted key {}", s.key_id, t.key_id()),
                        ));
                    }
                    Some(t) => t,
                    None => &named,
                };
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(&s.signature)
                    .map_err(|e| bad(what, format!("signature: not base64: {e}")))?;
                if !key.verify(&Self::signed_bytes(&value), &raw) {
                    return Err(bad(
                        what,
                        format!(
                            "the signature by key {} does not verify: the file was changed after signing",
                            s.key_id
                        ),
                    ));
                }
            }
        }
        let saved: SavedProgram =
            serde_path_to_error::deserialize(value).map_err(|e| bad(what, format!("{}: {}", e.path(), e.inner())))?;
        saved.program.validate()?;
        for p in saved.program.predictors() {
            if let Some(knn) = &p.knn {
                knn.validate().map_err(|e| Error::invalid(format!("predictor {:?}: {e}", p.name)))?;
            }
        }
        Ok(saved)
    }

    /// Writes the file atomically (a temporary file beside it, fsync, rename).
    ///
    /// # Errors
    /// [`Error::Io`] naming the path.
    pub fn save(&self, path: &Path) -> Result<()> {
        let name = path.file_name().ok_or_else(|| Error::invalid(format!("{}: not a file path", path.display())))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let write = || -> Result<()> {
            let mut f = fs_err::File::create(&tmp)?;
            f.write_all(self.to_json().as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs_err::remove_file(&tmp);
            return Err(e);
        }
        fs_err::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename durable; not every platform can open a directory.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Reads a saved program file (see [`SavedProgram::from_json`]).
    ///
    /// # Errors
    /// As [`SavedProgram::from_json`], naming the file; [`Error::Io`] when it cannot be read.
    pub fn load(path: &Path, trust: Option<&PublicKey>) -> Result<SavedProgram> {
        let what = path.display().to_string();
        let f = fs_err::File::open(path)?;
        let mut bytes = Vec::new();
        f.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(bad(&what, format!("larger than {MAX_BYTES} bytes")));
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| bad(&what, format!("not UTF-8 at byte {}", e.utf8_error().valid_up_to())))?;
        Self::parse(&text, trust, &what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::Predict;
    use crate::signature::{FieldType, Signature};

    fn program() -> Program {
        let sig = Signature::builder("Answer.")
            .input("q", FieldType::String, "")
            .output("a", FieldType::String, "")
            .build()
            .unwrap();
        Program::Predict(Predict::new("qa", sig))
    }

    #[test]
    fn canonical_sorts_keys_and_drops_whitespace() {
        let v: Value = serde_json::from_str(r#"{ "b": [1, {"d": 2, "c": "x"}], "a": null }"#).unwrap();
        assert_eq!(canonical(&v), br#"{"a":null,"b":[1,{"c":"x","d":2}]}"#);
    }

    #[test]
    fn version_and_size_are_checked() {
        let s = SavedProgram::new(program());
        let text = s.to_json().replacen("\"format\": 1", "\"format\": 2", 1);
        let e = SavedProgram::from_json(&text, None).unwrap_err().to_string();
        assert!(e.contains("unknown format version 2"), "{e}");
        let e = SavedProgram::from_json(&" ".repeat(MAX_BYTES as usize + 1), None).unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
    }
}
