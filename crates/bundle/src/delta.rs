//! Deltas between two kernel files: zstd in patch-from mode (the old file is the
//! reference prefix, long-distance matching, a window that covers both files), behind a
//! header that names both files by length and SHA-256 — so a delta applied to the wrong
//! base, or one that decodes to anything but the promised file, is refused cleanly.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `KZDELTA1` |
//! | 8 | 1 | method: 1 = zstd patch-from |
//! | 9 | 7 | reserved, zero |
//! | 16 | 8 | base length `u64` LE |
//! | 24 | 32 | base SHA-256 |
//! | 56 | 8 | result length `u64` LE |
//! | 64 | 32 | result SHA-256 |
//! | 96 | … | one zstd frame (content size and checksum included) |

use crate::error::{BundleError, Result};
use crate::keys::Sha256;
use std::io::{Read, Write};

/// Magic bytes of a delta.
pub const DELTA_MAGIC: &[u8; 8] = b"KZDELTA1";
/// Header length.
pub const DELTA_HEADER_BYTES: usize = 96;
/// The method byte of zstd patch-from.
pub const METHOD_ZSTD_PATCH_FROM: u8 = 1;
/// Largest base or result a delta can be made between (2 GiB each; zstd's window is at
/// most 2 GiB).
pub const MAX_DELTA_FILE: u64 = 1 << 31;

/// How to make a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaOptions {
    /// zstd level (1 ..= 22). Higher finds more matches and costs more time to make, not
    /// to apply.
    pub level: i32,
}

impl Default for DeltaOptions {
    fn default() -> DeltaOptions {
        DeltaOptions { level: 19 }
    }
}

/// The header of a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaHeader {
    /// Method (1 = zstd patch-from).
    pub method: u8,
    /// Length of the file it applies to.
    pub base_length: u64,
    /// SHA-256 of the file it applies to.
    pub base_sha256: Sha256,
    /// Length of the file it makes.
    pub result_length: u64,
    /// SHA-256 of the file it makes.
    pub result_sha256: Sha256,
}

fn corrupt(reason: impl Into<String>) -> BundleError {
    BundleError::DeltaCorrupt { reason: reason.into() }
}

fn window_log(total: u64) -> u32 {
    // A window covering the base and the result: a match may reach from the result's last
    // byte back to the base's first.
    (64 - total.max(1).saturating_sub(1).leading_zeros()).clamp(10, 31)
}

impl DeltaHeader {
    /// Parses the header at the start of `delta`.
    pub fn parse(delta: &[u8]) -> Result<DeltaHeader> {
        let h = delta.get(..DELTA_HEADER_BYTES).ok_or_else(|| {
            corrupt(format!("{} bytes, shorter than the {DELTA_HEADER_BYTES}-byte header", delta.len()))
        })?;
        if &h[..8] != DELTA_MAGIC {
            return Err(corrupt("bad magic at byte 0 (expected KZDELTA1)"));
        }
        if h[8] != METHOD_ZSTD_PATCH_FROM {
            return Err(corrupt(format!("unknown method {} at byte 8", h[8])));
        }
        if h[9..16].iter().any(|&b| b != 0) {
            return Err(corrupt("reserved bytes 9..16 are not zero"));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let sha_at = |at: usize| {
            let mut b = [0u8; 32];
            b.copy_from_slice(&h[at..at + 32]);
            Sha256(b)
        };
        let out = DeltaHeader {
            method: h[8],
            base_length: u64_at(16),
            base_sha256: sha_at(24),
            result_length: u64_at(56),
            result_sha256: sha_at(64),
        };
        if out.base_length > MAX_DELTA_FILE || out.result_length > MAX_DELTA_FILE {
            return Err(corrupt(format!(
                "base {} or result {} bytes is more than {MAX_DELTA_FILE}",
                out.base_length, out.result_length
            )));
        }
        Ok(out)
    }

    fn to_bytes(self) -> [u8; DELTA_HEADER_BYTES] {
        let mut h = [0u8; DELTA_HEADER_BYTES];
        h[..8].copy_from_slice(DELTA_MAGIC);
        h[8] = self.method;
        h[16..24].copy_from_slice(&self.base_length.to_le_bytes());
        h[24..56].copy_from_slice(&self.base_sha256.0);
        h[56..64].copy_from_slice(&self.result_length.to_le_bytes());
        h[64..96].copy_from_slice(&self.result_sha256.0);
        h
    }
}

/// A delta that turns `old` into `new` (default options).
pub fn make_delta(old: &[u8], new: &[u8]) -> Result<Vec<u8>> {
    make_delta_with(old, new, &DeltaOptions::default())
}

/// A delta that turns `old` into `new`.
pub fn make_delta_with(old: &[u8], new: &[u8], opts: &DeltaOptions) -> Result<Vec<u8>> {
    if old.len() as u64 > MAX_DELTA_FILE || new.len() as u64 > MAX_DELTA_FILE {
        return Err(BundleError::Invalid(format!(
            "delta between {} and {} bytes: each file must be at most {MAX_DELTA_FILE}",
            old.len(),
            new.len()
        )));
    }
    if !(1..=22).contains(&opts.level) {
        return Err(BundleError::Invalid(format!("zstd level {}: must be 1 ..= 22", opts.level)));
    }
    let header = DeltaHeader {
        method: METHOD_ZSTD_PATCH_FROM,
        base_length: old.len() as u64,
        base_sha256: Sha256::of(old),
        result_length: new.len() as u64,
        result_sha256: Sha256::of(new),
    };
    let zerr = |e: std::io::Error| BundleError::Invalid(format!("zstd: {e}"));
    let mut out = Vec::with_capacity(DELTA_HEADER_BYTES + new.len() / 8);
    out.extend_from_slice(&header.to_bytes());
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(out, opts.level, old).map_err(zerr)?;
    enc.set_pledged_src_size(Some(new.len() as u64)).map_err(zerr)?;
    enc.include_checksum(true).map_err(zerr)?;
    enc.include_contentsize(true).map_err(zerr)?;
    enc.long_distance_matching(true).map_err(zerr)?;
    enc.window_log(window_log(old.len() as u64 + new.len() as u64)).map_err(zerr)?;
    enc.write_all(new).map_err(zerr)?;
    enc.finish().map_err(zerr)
}

/// Applies `delta` to `old`: the new file, or an error when `old` is not the base the
/// delta was made from, the delta is damaged, or the result would be longer than
/// `max_len` (memory stays within `max_len` plus zstd's window over `old`).
pub fn apply_delta(old: &[u8], delta: &[u8], max_len: u64) -> Result<Vec<u8>> {
    let h = DeltaHeader::parse(delta)?;
    if h.base_length != old.len() as u64 {
        return Err(BundleError::DeltaBase {
            reason: format!("made from a {}-byte file, given {} bytes", h.base_length, old.len()),
        });
    }
    let base = Sha256::of(old);
    if h.base_sha256 != base {
        return Err(BundleError::DeltaBase { reason: format!("made from SHA-256 {}, given {base}", h.base_sha256) });
    }
    if h.result_length > max_len {
        return Err(corrupt(format!("promises {} bytes, more than the limit of {max_len}", h.result_length)));
    }
    let frame = &delta[DELTA_HEADER_BYTES..];
    let mut dec =
        zstd::stream::read::Decoder::with_ref_prefix(frame, old).map_err(|e| corrupt(format!("zstd: {e}")))?;
    dec.window_log_max(window_log(h.base_length + h.result_length)).map_err(|e| corrupt(format!("zstd: {e}")))?;
    // Grows with what actually decodes: a forged header's length reserves at most 64 MiB.
    let mut out = Vec::with_capacity(h.result_length.min(64 << 20) as usize);
    // One byte more than promised tells a long result from an exact one.
    let mut limited = dec.take(h.result_length + 1);
    limited.read_to_end(&mut out).map_err(|e| corrupt(format!("zstd frame at byte {DELTA_HEADER_BYTES}: {e}")))?;
    if out.len() as u64 != h.result_length {
        return Err(corrupt(format!("decodes to {} bytes or more, the header says {}", out.len(), h.result_length)));
    }
    let got = Sha256::of(&out);
    if got != h.result_sha256 {
        return Err(corrupt(format!("result SHA-256 {got}, the header says {}", h.result_sha256)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_covers_both() {
        assert_eq!(window_log(0), 10);
        assert_eq!(window_log(1 << 20), 20);
        assert_eq!(window_log((1 << 20) + 1), 21);
        assert_eq!(window_log(u64::MAX), 31);
    }

    #[test]
    fn round_trip_small() {
        let old = b"hello world, hello kernel".repeat(100);
        let mut new = old.clone();
        new[100] = b'X';
        new.extend_from_slice(b"tail");
        let d = make_delta(&old, &new).unwrap();
        assert!(d.len() < 200, "{} bytes", d.len());
        assert_eq!(apply_delta(&old, &d, new.len() as u64).unwrap(), new);
        assert!(apply_delta(&old, &d, new.len() as u64 - 1).unwrap_err().to_string().contains("limit"));
        assert_eq!(apply_delta(&new, &d, 1 << 20).unwrap_err().code(), "delta_base_mismatch");
        let empty = make_delta(b"", b"").unwrap();
        assert_eq!(apply_delta(b"", &empty, 0).unwrap(), b"");
    }
}
