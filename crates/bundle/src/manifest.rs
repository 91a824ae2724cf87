//! Release manifests: what a release is (a kernel's bytes, by hash and chunk hashes), who
//! may install it, what it must answer before it is committed, and until when.

use crate::envelope::{DocKind, Envelope, parse_json, truncate};
use crate::error::{BundleError, Result};
use crate::keys::{PublicKey, Sha256, SigningKey};
use serde::{Deserialize, Serialize};

/// Most chunks a manifest may list (16 GiB in 1 MiB chunks, 1 TiB in 64 MiB chunks).
pub const MAX_CHUNKS: u64 = 16_384;
/// Largest manifest payload, bytes: small enough that an offer carrying the manifest's
/// envelope (base64 inside base64) stays within [`crate::MAX_ENVELOPE_BYTES`].
pub const MAX_MANIFEST_BYTES: usize = 3 << 19;
/// Smallest chunk size (a power of two).
pub const MIN_CHUNK_SIZE: u64 = 4 << 10;
/// Largest chunk size (a power of two).
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;
/// Largest kernel a release may ship (1 TiB).
pub const MAX_LENGTH: u64 = 1 << 40;
/// Most golden queries per release.
pub const MAX_GOLDEN_QUERIES: usize = 64;
/// Largest `k` of a golden query.
pub const MAX_GOLDEN_K: u32 = 1000;
/// Most expected ids per golden query.
pub const MAX_EXPECTED_IDS: usize = 1000;
/// Longest golden query text, bytes.
pub const MAX_QUERY_TEXT_BYTES: usize = 4096;
/// Largest vector dimension.
pub const MAX_DIM: u32 = 16_384;
/// Longest latency bound a golden query may set, ms.
pub const MAX_LATENCY_MS: u64 = 60_000;
/// The chunk size the server uses unless told otherwise.
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;

const WHAT: &str = "release manifest";

/// A release: one signed kernel published to a channel at a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    /// Channel (`stable`, `beta`): 1–64 of `a-z 0-9 . _ -`, starting with a letter or digit.
    pub channel: String,
    /// Version on the channel, ≥ 1; only ever increases.
    pub version: u64,
    /// The kernel's id (its own manifest's `kernel_id`).
    pub kernel_id: String,
    /// SHA-256 of the whole kernel file.
    pub sha256: Sha256,
    /// Length of the kernel file, bytes (1 ..= [`MAX_LENGTH`]).
    pub length: u64,
    /// Chunk size, bytes: a power of two in [`MIN_CHUNK_SIZE`] ..= [`MAX_CHUNK_SIZE`].
    pub chunk_size: u64,
    /// SHA-256 of each chunk: `⌈length / chunk_size⌉` of them, at most [`MAX_CHUNKS`].
    pub chunk_hashes: Vec<Sha256>,
    /// Who can use this kernel.
    pub compatibility: Compatibility,
    /// Queries the device runs on the staged kernel before it switches to it.
    pub golden_queries: Vec<GoldenQuery>,
    /// When the release was signed, Unix ms.
    pub created_ms: u64,
    /// After this (Unix ms) the manifest is refused; greater than `created_ms`.
    pub expires_ms: u64,
}

/// What a device needs to use a kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compatibility {
    /// The embedding model text queries must be embedded with (`all-MiniLM-L6-v2`); 1–128
    /// printable ASCII characters.
    pub embedding_model: String,
    /// Vector dimension, 1 ..= [`MAX_DIM`].
    pub dim: u32,
    /// Oldest agent that may install it: `MAJOR.MINOR.PATCH`.
    pub min_agent_version: String,
}

/// A query the staged kernel must answer well before the device switches to it.
/// Exactly one of `text` and `vector`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenQuery {
    /// Query text (embedded on the device with the compatible model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Query vector (`compatibility.dim` finite numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
    /// Results asked for, 1 ..= [`MAX_GOLDEN_K`].
    pub k: u32,
    /// Ids expected among the `k` results (at most [`MAX_EXPECTED_IDS`]).
    pub expected_ids: Vec<String>,
    /// How many of `expected_ids` must be among the results: ≤ both their count and `k`.
    pub min_overlap: u32,
    /// The query must answer within this many milliseconds, 1 ..= [`MAX_LATENCY_MS`].
    pub max_latency_ms: u64,
}

impl GoldenQuery {
    /// How many expected ids are among `returned`.
    pub fn overlap<S: AsRef<str>>(&self, returned: &[S]) -> usize {
        self.expected_ids.iter().filter(|e| returned.iter().any(|r| r.as_ref() == e.as_str())).count()
    }

    /// Whether an answer (`returned` ids, in `latency_ms`) passes; the reason when not.
    pub fn judge<S: AsRef<str>>(&self, returned: &[S], latency_ms: f64) -> std::result::Result<(), String> {
        let got = self.overlap(returned);
        if got < self.min_overlap as usize {
            return Err(format!("{got} of the expected ids returned, at least {} needed", self.min_overlap));
        }
        if latency_ms.is_nan() || latency_ms > self.max_latency_ms as f64 {
            return Err(format!("answered in {latency_ms:.1} ms, the bound is {} ms", self.max_latency_ms));
        }
        Ok(())
    }

    fn check(&self, i: usize, dim: u32) -> Result<()> {
        let field = |f: &str| format!("golden_queries[{i}].{f}");
        match (&self.text, &self.vector) {
            (Some(t), None) => {
                if t.trim().is_empty() || t.len() > MAX_QUERY_TEXT_BYTES {
                    return Err(BundleError::malformed(
                        WHAT,
                        field("text"),
                        format!("{} bytes; must be non-blank and at most {MAX_QUERY_TEXT_BYTES}", t.len()),
                    ));
                }
            }
            (None, Some(v)) => {
                if v.len() != dim as usize {
                    return Err(BundleError::malformed(
                        WHAT,
                        field("vector"),
                        format!("{} numbers, compatibility.dim is {dim}", v.len()),
                    ));
                }
                if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                    return Err(BundleError::malformed(WHAT, field("vector"), format!("element {j} is not finite")));
                }
            }
            _ => {
                return Err(BundleError::malformed(
                    WHAT,
                    format!("golden_queries[{i}]"),
                    "needs exactly one of text and vector",
                ));
            }
        }
        if self.k == 0 || self.k > MAX_GOLDEN_K {
            return Err(BundleError::malformed(WHAT, field("k"), format!("{}; must be 1 ..= {MAX_GOLDEN_K}", self.k)));
        }
        if self.expected_ids.len() > MAX_EXPECTED_IDS {
            return Err(BundleError::malformed(
                WHAT,
                field("expected_ids"),
                format!("{} ids, at most {MAX_EXPECTED_IDS}", self.expected_ids.len()),
            ));
        }
        if let Some(j) = self.expected_ids.iter().position(|id| id.is_empty() || id.len() > 1024) {
            return Err(BundleError::malformed(
                WHAT,
                format!("golden_queries[{i}].expected_ids[{j}]"),
                "must be 1 to 1024 bytes",
            ));
        }
        if self.min_overlap as usize > self.expected_ids.len() || self.min_overlap > self.k {
            return Err(BundleError::malformed(
                WHAT,
                field("min_overlap"),
                format!(
                    "{} is more than the {} expected ids or k = {}",
                    self.min_overlap,
                    self.expected_ids.len(),
                    self.k
                ),
            ));
        }
        if self.max_latency_ms == 0 || self.max_latency_ms > MAX_LATENCY_MS {
            return Err(BundleError::malformed(
                WHAT,
                field("max_latency_ms"),
                format!("{}; must be 1 ..= {MAX_LATENCY_MS}", self.max_latency_ms),
            ));
        }
        Ok(())
    }
}

/// `⌈length / chunk_size⌉` (0 when `chunk_size` is 0).
pub fn chunk_count(length: u64, chunk_size: u64) -> u64 {
    if chunk_size == 0 { 0 } else { length.div_ceil(chunk_size) }
}

/// Whether `s` is 1–`max` characters of `[A-Za-z0-9._-]` (lower-case only when
/// `lower`), starting with a letter or digit.
pub(crate) fn is_name(s: &str, max: usize, lower: bool) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes().all(|b| {
            (b.is_ascii_digit() || b.is_ascii_lowercase() || (!lower && b.is_ascii_uppercase()))
                || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Parses `MAJOR.MINOR.PATCH` (numbers only).
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.split('.');
    let mut num =
        || it.next().filter(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))?.parse().ok();
    let out = (num()?, num()?, num()?);
    it.next().is_none().then_some(out)
}

impl Compatibility {
    /// Whether an agent of `version` (`MAJOR.MINOR.PATCH`) may install the release.
    pub fn admits_agent(&self, version: &str) -> bool {
        matches!((parse_version(version), parse_version(&self.min_agent_version)), (Some(a), Some(min)) if a >= min)
    }
}

impl ReleaseManifest {
    /// Checks every field's shape and bounds (not the signature, not the expiry).
    pub fn check(&self) -> Result<()> {
        if !is_name(&self.channel, 64, true) {
            return Err(BundleError::malformed(
                WHAT,
                "channel",
                format!(
                    "{:?}: expected 1-64 of a-z 0-9 . _ -, starting with a letter or digit",
                    truncate(&self.channel)
                ),
            ));
        }
        if self.version == 0 {
            return Err(BundleError::malformed(WHAT, "version", "must be at least 1"));
        }
        if !is_name(&self.kernel_id, 64, false) {
            return Err(BundleError::malformed(
                WHAT,
                "kernel_id",
                format!("{:?}: expected 1-64 of A-Z a-z 0-9 . _ -", truncate(&self.kernel_id)),
            ));
        }
        if self.length == 0 || self.length > MAX_LENGTH {
            return Err(BundleError::malformed(WHAT, "length", format!("{}; must be 1 ..= {MAX_LENGTH}", self.length)));
        }
        if !self.chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(BundleError::malformed(
                WHAT,
                "chunk_size",
                format!("{}; must be a power of two in {MIN_CHUNK_SIZE} ..= {MAX_CHUNK_SIZE}", self.chunk_size),
            ));
        }
        let chunks = chunk_count(self.length, self.chunk_size);
        if chunks > MAX_CHUNKS {
            return Err(BundleError::malformed(
                WHAT,
                "chunk_size",
                format!(
                    "{} chunks of {} bytes for {} bytes; at most {MAX_CHUNKS}",
                    chunks, self.chunk_size, self.length
                ),
            ));
        }
        if self.chunk_hashes.len() as u64 != chunks {
            return Err(BundleError::malformed(
                WHAT,
                "chunk_hashes",
                format!(
                    "{} hashes; length {} in chunks of {} needs {chunks}",
                    self.chunk_hashes.len(),
                    self.length,
                    self.chunk_size
                ),
            ));
        }
        let c = &self.compatibility;
        if c.embedding_model.is_empty()
            || c.embedding_model.len() > 128
            || !c.embedding_model.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(BundleError::malformed(
                WHAT,
                "compatibility.embedding_model",
                format!("{:?}: expected 1-128 printable ASCII characters", truncate(&c.embedding_model)),
            ));
        }
        if c.dim == 0 || c.dim > MAX_DIM {
            return Err(BundleError::malformed(
                WHAT,
                "compatibility.dim",
                format!("{}; must be 1 ..= {MAX_DIM}", c.dim),
            ));
        }
        if parse_version(&c.min_agent_version).is_none() {
            return Err(BundleError::malformed(
                WHAT,
                "compatibility.min_agent_version",
                format!("{:?}: expected MAJOR.MINOR.PATCH", truncate(&c.min_agent_version)),
            ));
        }
        if self.golden_queries.len() > MAX_GOLDEN_QUERIES {
            return Err(BundleError::malformed(
                WHAT,
                "golden_queries",
                format!("{} queries, at most {MAX_GOLDEN_QUERIES}", self.golden_queries.len()),
            ));
        }
        for (i, q) in self.golden_queries.iter().enumerate() {
            q.check(i, c.dim)?;
        }
        if self.expires_ms <= self.created_ms {
            return Err(BundleError::malformed(
                WHAT,
                "expires_ms",
                format!("{} is not after created_ms {}", self.expires_ms, self.created_ms),
            ));
        }
        Ok(())
    }

    /// Checks the manifest and signs it: the envelope, ready to publish.
    pub fn sign(&self, key: &SigningKey) -> Result<Envelope> {
        self.check()?;
        let payload = serde_json::to_vec(self).map_err(|e| BundleError::Invalid(format!("release manifest: {e}")))?;
        check_size(payload.len())?;
        Ok(Envelope::sign(DocKind::Release, payload, key))
    }

    /// Verifies an envelope's bytes: shape, signature under `key`, the manifest's shape,
    /// and expiry at `now_ms`.
    pub fn verify(bytes: &[u8], key: &PublicKey, now_ms: u64) -> Result<ReleaseManifest> {
        ReleaseManifest::verify_envelope(&Envelope::decode(bytes)?, key, now_ms)
    }

    /// [`ReleaseManifest::verify`] for an envelope already decoded.
    pub fn verify_envelope(env: &Envelope, key: &PublicKey, now_ms: u64) -> Result<ReleaseManifest> {
        let payload = env.open(DocKind::Release, key)?;
        check_size(payload.len())?;
        let m: ReleaseManifest = parse_json(WHAT, payload)?;
        m.check()?;
        if now_ms >= m.expires_ms {
            return Err(BundleError::Expired { what: WHAT, expires_ms: m.expires_ms, now_ms });
        }
        Ok(m)
    }
}

fn check_size(len: usize) -> Result<()> {
    if len > MAX_MANIFEST_BYTES {
        return Err(BundleError::malformed(
            WHAT,
            "-",
            format!(
                "{len} bytes of JSON, more than the limit of {MAX_MANIFEST_BYTES} (fewer golden queries or larger chunks)"
            ),
        ));
    }
    Ok(())
}

/// Now, Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_names() {
        assert_eq!(parse_version("1.2.3"), Some((1, 2, 3)));
        for bad in ["1.2", "1.2.3.4", "1..3", "a.b.c", "1.2.-3", "", "1.2.3 "] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
        let c = Compatibility { embedding_model: "m".into(), dim: 3, min_agent_version: "0.10.0".into() };
        assert!(c.admits_agent("0.10.0"));
        assert!(c.admits_agent("1.0.0"));
        assert!(!c.admits_agent("0.9.99"), "numeric, not lexical, comparison");
        assert!(!c.admits_agent("garbage"));
        assert!(is_name("stable", 64, true));
        assert!(!is_name("Stable", 64, true));
        assert!(!is_name("../x", 64, false));
        assert!(!is_name("-x", 64, false));
        assert!(!is_name("", 64, false));
    }

    #[test]
    fn golden_query_judgement() {
        let q = GoldenQuery {
            text: Some("q".into()),
            vector: None,
            k: 3,
            expected_ids: vec!["a".into(), "b".into()],
            min_overlap: 1,
            max_latency_ms: 10,
        };
        assert!(q.judge(&["x", "b"], 5.0).is_ok());
        assert!(q.judge(&["x", "y"], 5.0).unwrap_err().contains("0 of the expected"));
        assert!(q.judge(&["a"], 11.0).unwrap_err().contains("bound"));
        assert!(q.judge(&["a"], f64::NAN).is_err(), "a NaN latency never passes");
    }
}
