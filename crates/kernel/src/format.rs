//! The container: a fixed header, the manifest (JSON) and its ed25519 signature, then
//! 64-byte aligned sections, each named, sized and SHA-256 hashed in the manifest. Every
//! byte is covered: the header's fields are checked against the signed manifest, the
//! manifest by the signature, the sections by their hashes, and the padding must be zero.
//! Layout: `docs/format/kernel.md`.

use crate::error::{KernelError, Result};
use crate::keys::{PublicKey, SigningKey, hex};
use kernelize_store::{Metric, Quantization};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// File magic.
pub const MAGIC: [u8; 8] = *b"KZKERNEL";
/// The container version this build writes. Version 2 added the structured RaBitQ
/// rotation (`rabitq.signs`) and 8-bit centroids (`centroids.i8`); the container
/// itself is unchanged.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest container version this build still reads.
pub const OLDEST_READABLE: u32 = 1;
/// Fixed header bytes.
pub const HEADER: usize = 32;
/// Signature bytes.
pub const SIGNATURE: usize = 64;
/// Section alignment.
pub const ALIGN: usize = 64;
/// Largest manifest accepted.
pub const MAX_MANIFEST: usize = 16 << 20;
/// Domain separation for the signed message.
const SIGNED_PREFIX: &[u8] = b"KZKERNEL manifest v1\n";

/// One section as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionEntry {
    /// Name (`ids`, `rabitq.codes`, …).
    pub name: String,
    /// Byte offset in the file (64-byte aligned).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// SHA-256 of the section's bytes, hex.
    pub sha256: String,
}

/// Where the kernel came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Source collection (or, for a merge, the input kernels' names joined by `+`).
    pub collection: String,
    /// Records read.
    pub records: u64,
    /// The collection's sequence number at the snapshot (0 for merges).
    pub seq: u64,
    /// The encoder the collection's vectors came from (modality, model, dimension,
    /// preprocessing), so a reader encodes its queries the same way; absent in kernels
    /// built before modalities and from collections without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<kernelize_store::EncoderRecord>,
}

/// The search structure over the quantized vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum IndexSpec {
    /// Inverted file: rows grouped by nearest centroid; a query scans the `nprobe`
    /// nearest lists.
    Ivf {
        /// Lists.
        nlist: usize,
        /// Default lists probed (the smallest that met the build's recall target).
        nprobe: usize,
    },
    /// HNSW graph over the rows.
    Hnsw {
        /// Links per node on upper layers (2m on layer 0).
        m: usize,
        /// Default beam width.
        ef: usize,
        /// Entry node (`u32::MAX` when empty).
        entry: u32,
        /// Level of the entry node.
        top: usize,
    },
}

/// The signed description of a kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Container version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The kernel's own version (1 for a fresh build; a merge is one past its inputs').
    pub kernel_version: u64,
    /// Random id of this kernel.
    pub kernel_id: String,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Expiry, Unix seconds.
    pub expires: Option<u64>,
    /// Source.
    pub source: SourceInfo,
    /// Id of the signing key.
    pub key_id: String,
    /// Vector dimension.
    pub dim: usize,
    /// Metric.
    pub metric: Metric,
    /// How vectors are kept.
    pub quantization: Quantization,
    /// Search structure.
    pub index: IndexSpec,
    /// Whether record text is kept.
    pub keep_text: bool,
    /// Near-duplicate threshold used (cosine similarity), if consolidation ran.
    pub dedup_threshold: Option<f32>,
    /// Rows (representatives after consolidation).
    pub rows: u64,
    /// Original ids the rows stand for.
    pub ids: u64,
    /// Sections, by offset.
    pub sections: Vec<SectionEntry>,
    /// Total file length.
    pub file_bytes: u64,
    /// What the build kept and lost (see [`crate::Report`]).
    pub report: Option<crate::Report>,
}

/// Writes a kernel file: `manifest` (sections and file length filled in here) signed by `key`.
pub fn assemble(mut manifest: Manifest, sections: &[(&str, Vec<u8>)], key: &SigningKey) -> Vec<u8> {
    manifest.format_version = FORMAT_VERSION;
    manifest.key_id = key.public().key_id();
    manifest.sections = sections
        .iter()
        .map(|(name, bytes)| SectionEntry {
            name: (*name).to_owned(),
            offset: 0,
            len: bytes.len() as u64,
            sha256: hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()),
        })
        .collect();
    // Offsets depend on the manifest's length, which depends on the offsets' digits:
    // iterate until stable (two rounds at most in practice).
    let mut json = Vec::new();
    for _ in 0..8 {
        let head = (HEADER + json.len() + SIGNATURE).next_multiple_of(ALIGN);
        let mut at = head;
        for s in &mut manifest.sections {
            s.offset = at as u64;
            at = (at + s.len as usize).next_multiple_of(ALIGN);
        }
        manifest.file_bytes = at as u64;
        let next = serde_json::to_vec(&manifest).unwrap_or_default();
        if next.len() == json.len() {
            json = next;
            break;
        }
        json = next;
    }
    let mut out = Vec::with_capacity(manifest.file_bytes as usize);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&(SIGNATURE as u32).to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&key.sign(&signed_message(&json)));
    for (s, (_, bytes)) in manifest.sections.iter().zip(sections) {
        out.resize(s.offset as usize, 0);
        out.extend_from_slice(bytes);
    }
    out.resize(manifest.file_bytes as usize, 0);
    out
}

fn signed_message(manifest: &[u8]) -> Vec<u8> {
    [SIGNED_PREFIX, manifest].concat()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// How to check a kernel when opening it.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Verify the signature under this key (refusing other keys). Without one, the
    /// kernel's integrity (hashes) is still checked, but not who made it.
    pub public_key: Option<PublicKey>,
    /// Open an expired kernel anyway.
    pub allow_expired: bool,
    /// "Now" for the expiry check, Unix seconds (tests); the system clock when `None`.
    pub now: Option<u64>,
}

/// A parsed, checked container: the manifest and where each section lies.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The manifest.
    pub manifest: Manifest,
    /// Whether the signature was verified (a public key was given).
    pub signature_verified: bool,
}

impl Parsed {
    /// The byte range of section `name`, if present.
    pub fn range(&self, name: &str) -> Option<Range<usize>> {
        self.manifest.sections.iter().find(|s| s.name == name).map(|s| s.offset as usize..(s.offset + s.len) as usize)
    }
}

/// Now, Unix seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// RFC 3339 of Unix seconds.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

/// Checks every byte of `b` (see the module docs) and the signature and expiry as
/// `trust` asks. `what` names the file in errors.
pub fn parse(b: &[u8], what: &str, trust: &Trust) -> Result<Parsed> {
    parse_with(b, what, trust, true)
}

/// [`parse`], optionally without the section hashes: only for fuzzing the decoders that
/// sit behind them (anyone can write a kernel with matching hashes; only the signature
/// says who did).
pub(crate) fn parse_with(b: &[u8], what: &str, trust: &Trust, check_hashes: bool) -> Result<Parsed> {
    let bad = |offset: usize, reason: String| KernelError::corrupt(what, offset as u64, reason);
    if b.len() < HEADER {
        return Err(bad(0, format!("file is {} bytes, shorter than the {HEADER}-byte header", b.len())));
    }
    if b[..8] != MAGIC {
        return Err(bad(0, "bad magic: not a Kernelize kernel".into()));
    }
    let version = u32_at(b, 8);
    if !(OLDEST_READABLE..=FORMAT_VERSION).contains(&version) {
        return Err(bad(
            8,
            format!("unsupported format version {version} (this build reads {OLDEST_READABLE} to {FORMAT_VERSION})"),
        ));
    }
    if u32_at(b, 12) != 0 {
        return Err(bad(12, "unknown flags".into()));
    }
    let manifest_len = u32_at(b, 16) as usize;
    if manifest_len > MAX_MANIFEST {
        return Err(bad(16, format!("manifest length {manifest_len} is over {MAX_MANIFEST}")));
    }
    if u32_at(b, 20) as usize != SIGNATURE {
        return Err(bad(20, format!("signature length {} (expected {SIGNATURE})", u32_at(b, 20))));
    }
    if b[24..32] != [0; 8] {
        return Err(bad(24, "reserved header bytes are not zero".into()));
    }
    let sig_at = HEADER + manifest_len;
    let head_end = sig_at + SIGNATURE;
    if b.len() < head_end {
        return Err(bad(16, format!("file is {} bytes, manifest and signature need {head_end}", b.len())));
    }
    let json = &b[HEADER..sig_at];
    let signature = &b[sig_at..head_end];
    // The signature first: a verifier with a key learns nothing from forged bytes.
    let mut signature_verified = false;
    if let Some(pk) = &trust.public_key {
        if !pk.verify(&signed_message(json), signature) {
            // Name the key the manifest claims, when it parses, to help the operator.
            let claimed = serde_json::from_slice::<serde_json::Value>(json)
                .ok()
                .and_then(|v| v.get("key_id").and_then(|k| k.as_str()).map(str::to_owned));
            let reason = match claimed {
                Some(id) if id != pk.key_id() => {
                    format!("signed by key {id}, not by the given key {}", pk.key_id())
                }
                _ => format!("the manifest's signature does not verify under key {}", pk.key_id()),
            };
            return Err(KernelError::Signature { what: what.to_owned(), reason });
        }
        signature_verified = true;
    }
    let manifest: Manifest = serde_json::from_slice(json).map_err(|e| bad(HEADER, format!("manifest: {e}")))?;
    if manifest.format_version != version {
        return Err(bad(
            8,
            format!("header version {version} differs from the manifest's {}", manifest.format_version),
        ));
    }
    if manifest.file_bytes != b.len() as u64 {
        return Err(bad(
            b.len().min(manifest.file_bytes as usize),
            format!("file is {} bytes, the manifest says {}", b.len(), manifest.file_bytes),
        ));
    }
    // Sections: in order, aligned, inside the file, not overlapping; gaps all zero.
    let mut at = head_end;
    for (i, s) in manifest.sections.iter().enumerate() {
        if manifest.sections[..i].iter().any(|o| o.name == s.name) {
            return Err(bad(HEADER, format!("section {:?} is listed twice", s.name)));
        }
        let end = s.offset.checked_add(s.len).filter(|&e| e <= b.len() as u64);
        let (Some(end), true) = (end, s.offset >= at as u64 && (s.offset as usize).is_multiple_of(ALIGN)) else {
            return Err(bad(
                HEADER,
                format!(
                    "section {:?} at {}+{} is misplaced (overlaps, unaligned or outside the file)",
                    s.name, s.offset, s.len
                ),
            ));
        };
        check_zero(b, at..s.offset as usize, what)?;
        let bytes = &b[s.offset as usize..end as usize];
        let digest =
            if check_hashes { hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()) } else { String::new() };
        if check_hashes && digest != s.sha256 {
            return Err(bad(s.offset as usize, format!("section {:?} does not match its SHA-256 (altered)", s.name)));
        }
        at = end as usize;
    }
    check_zero(b, at..b.len(), what)?;
    if let Some(expires) = manifest.expires {
        let now = trust.now.unwrap_or_else(now_secs);
        if now >= expires && !trust.allow_expired {
            return Err(KernelError::Expired { what: what.to_owned(), expired: rfc3339(expires), now: rfc3339(now) });
        }
    }
    Ok(Parsed { manifest, signature_verified })
}

fn check_zero(b: &[u8], r: Range<usize>, what: &str) -> Result<()> {
    match b.get(r.clone()).and_then(|s| s.iter().position(|&x| x != 0)) {
        Some(p) => Err(KernelError::corrupt(what, (r.start + p) as u64, "padding byte is not zero (altered)")),
        None => Ok(()),
    }
}
