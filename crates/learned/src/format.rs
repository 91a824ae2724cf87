//! Byte format of a [`PgmIndex`]; specified in `docs/format/learned-index.md`.
//!
//! Everything is little-endian. [`PgmIndex::from_bytes`] treats its input as
//! untrusted: it checks every length before slicing or allocating, verifies
//! the CRC-32C, and then every structural invariant the search code relies on,
//! so a parsed index can never make a lookup panic or index out of bounds.

use crate::index::{Level, MAX_EPSILON, PgmIndex, Seg};
use crate::{Error, Result};

/// File magic: "KZLI" (Kernelize Learned Index).
pub const MAGIC: [u8; 4] = *b"KZLI";
/// Current format version.
pub const VERSION: u16 = 1;
/// Fixed header size in bytes.
const HEADER_LEN: usize = 32;
/// Trailing CRC-32C size.
const CRC_LEN: usize = 4;
/// Bytes per segment: first key, slope, intercept.
const SEGMENT_LEN: usize = 24;
/// Upper bound on the number of levels (a real index has at most ~10).
const MAX_LEVELS: usize = 64;

impl PgmIndex {
    /// Serializes the index (little-endian; see `docs/format/learned-index.md`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let segments: usize = self.levels.iter().map(Level::len).sum();
        let total = HEADER_LEN + 8 * self.levels.len() + SEGMENT_LEN * segments + CRC_LEN;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(self.n as u64).to_le_bytes());
        // epsilon values are <= MAX_EPSILON < 2^32 by construction.
        out.extend_from_slice(&(self.epsilon as u32).to_le_bytes());
        out.extend_from_slice(&(self.epsilon_recursive as u32).to_le_bytes());
        out.extend_from_slice(&(self.levels.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for level in &self.levels {
            out.extend_from_slice(&(level.len() as u64).to_le_bytes());
        }
        for level in &self.levels {
            for k in &level.keys {
                out.extend_from_slice(&k.to_le_bytes());
            }
            for s in &level.segs[..level.len()] {
                out.extend_from_slice(&s.slope.to_bits().to_le_bytes());
            }
            for s in &level.segs[..level.len()] {
                out.extend_from_slice(&s.intercept.to_bits().to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len(), total);
        out
    }

    /// Parses bytes written by [`PgmIndex::to_bytes`] for an index over
    /// `n_keys` keys. Never panics; validates lengths, checksum, epsilon
    /// ranges, level sizes, strictly increasing first keys, the nesting of
    /// levels, finite non-negative slopes and intercepts within the positions
    /// of the level below.
    ///
    /// The bytes cannot prove the index was built on the caller's keys; a
    /// consistent but foreign index yields wrong (never out-of-bounds)
    /// answers.
    ///
    /// # Errors
    /// [`Error::Corrupt`] with the byte offset of the first problem found.
    pub fn from_bytes(bytes: &[u8], n_keys: usize) -> Result<PgmIndex> {
        let r = Reader { bytes };
        if bytes.len() < HEADER_LEN + CRC_LEN {
            return Err(corrupt(bytes.len(), "truncated: shorter than the header"));
        }
        if r.array::<4>(0)? != MAGIC {
            return Err(corrupt(0, "bad magic"));
        }
        let version = u16::from_le_bytes(r.array(4)?);
        if version != VERSION {
            return Err(corrupt(4, format!("unsupported version {version}")));
        }
        if u16::from_le_bytes(r.array(6)?) != 0 {
            return Err(corrupt(6, "reserved field is not zero"));
        }
        let n = r.u64(8)?;
        if usize::try_from(n).ok() != Some(n_keys) {
            return Err(corrupt(8, format!("index covers {n} keys, caller expects {n_keys}")));
        }
        let epsilon = r.u32(16)? as usize;
        if !(1..=MAX_EPSILON).contains(&epsilon) {
            return Err(corrupt(16, format!("epsilon {epsilon} out of range")));
        }
        let epsilon_recursive = r.u32(20)? as usize;
        if !(1..=MAX_EPSILON).contains(&epsilon_recursive) {
            return Err(corrupt(20, format!("recursive epsilon {epsilon_recursive} out of range")));
        }
        let n_levels = r.u32(24)? as usize;
        if (n_levels == 0) != (n_keys == 0) || n_levels > MAX_LEVELS {
            return Err(corrupt(24, format!("{n_levels} levels for {n_keys} keys")));
        }
        if r.u32(28)? != 0 {
            return Err(corrupt(28, "reserved field is not zero"));
        }

        // Level table: sizes must shrink strictly upwards.
        let mut counts = Vec::with_capacity(n_levels);
        let mut total_segments = 0usize;
        for l in 0..n_levels {
            let off = HEADER_LEN + 8 * l;
            let m = r.u64(off)?;
            let limit = if l == 0 { n_keys } else { counts[l - 1] - 1 };
            let m = usize::try_from(m).ok().filter(|&m| m >= 1 && m <= limit);
            let Some(m) = m else {
                return Err(corrupt(off, format!("level {l} segment count out of range 1..={limit}")));
            };
            counts.push(m);
            total_segments = total_segments.saturating_add(m);
        }
        let body = HEADER_LEN + 8 * n_levels;
        let expected = total_segments.checked_mul(SEGMENT_LEN).and_then(|b| b.checked_add(body + CRC_LEN));
        if expected != Some(bytes.len()) {
            return Err(corrupt(
                bytes.len().min(body),
                format!("length {} does not match the level table ({} segments)", bytes.len(), total_segments),
            ));
        }
        let crc_off = bytes.len() - CRC_LEN;
        let stored = u32::from_le_bytes(r.array(crc_off)?);
        let actual = crc32c::crc32c(r.slice(0, crc_off)?);
        if stored != actual {
            return Err(corrupt(crc_off, format!("checksum mismatch: stored {stored:#010x}, computed {actual:#010x}")));
        }

        let mut levels: Vec<Level> = Vec::with_capacity(n_levels);
        let mut off = body;
        for (l, &m) in counts.iter().enumerate() {
            let len_below = if l == 0 { n_keys } else { counts[l - 1] };
            let keys_off = off;
            let slopes_off = keys_off + 8 * m;
            let icpt_off = slopes_off + 8 * m;
            off = icpt_off + 8 * m;

            let mut keys = Vec::with_capacity(m);
            for i in 0..m {
                let at = keys_off + 8 * i;
                let k = r.u64(at)?;
                if let Some(&prev) = keys.last()
                    && k <= prev
                {
                    return Err(corrupt(at, format!("level {l}: first keys not increasing")));
                }
                keys.push(k);
            }
            if l > 0 {
                let below = &levels[l - 1].keys;
                if keys.first() != below.first() {
                    return Err(corrupt(keys_off, format!("level {l}: first key differs from level {}", l - 1)));
                }
                // Every first key of an upper level is a key of the level below
                // (both lists are strictly increasing: a merge walk).
                let mut j = 0usize;
                for (i, &k) in keys.iter().enumerate() {
                    while j < below.len() && below[j] < k {
                        j += 1;
                    }
                    if below.get(j) != Some(&k) {
                        return Err(corrupt(
                            keys_off + 8 * i,
                            format!("level {l}: key is not a key of level {}", l - 1),
                        ));
                    }
                }
            }

            let eps = if l == 0 { epsilon } else { epsilon_recursive } as f64;
            let max_intercept = len_below as f64 + eps + 1.0;
            let min_intercept = -(eps + 1.0);
            let mut segs = Vec::with_capacity(m + 1);
            for i in 0..m {
                let s_at = slopes_off + 8 * i;
                let slope = f64::from_bits(r.u64(s_at)?);
                if !(slope.is_finite() && slope >= 0.0) {
                    return Err(corrupt(s_at, format!("level {l}: slope {slope} not finite and non-negative")));
                }
                let i_at = icpt_off + 8 * i;
                let intercept = f64::from_bits(r.u64(i_at)?);
                if !(intercept >= min_intercept && intercept <= max_intercept) {
                    return Err(corrupt(
                        i_at,
                        format!("level {l}: intercept {intercept} outside {min_intercept}..={max_intercept}"),
                    ));
                }
                segs.push(Seg { slope, intercept });
            }
            segs.push(Seg { slope: 0.0, intercept: len_below as f64 });
            levels.push(Level { keys, segs });
        }
        Ok(PgmIndex { n: n_keys, epsilon, epsilon_recursive, levels })
    }
}

fn corrupt(offset: usize, reason: impl Into<String>) -> Error {
    Error::Corrupt { offset, reason: reason.into() }
}

/// Bounds-checked little-endian reads; every failure is a `Corrupt` error.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn slice(&self, at: usize, len: usize) -> Result<&[u8]> {
        at.checked_add(len).and_then(|end| self.bytes.get(at..end)).ok_or_else(|| corrupt(at, "truncated"))
    }

    fn array<const N: usize>(&self, at: usize) -> Result<[u8; N]> {
        let s = self.slice(at, N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&self, at: usize) -> Result<u32> {
        self.array(at).map(u32::from_le_bytes)
    }

    fn u64(&self, at: usize) -> Result<u64> {
        self.array(at).map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u64>, PgmIndex) {
        let mut x = 12345u64;
        let mut keys: Vec<u64> = (0..20_000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                x
            })
            .collect();
        keys.sort_unstable();
        let idx = PgmIndex::build(&keys, 2).unwrap();
        (keys, idx)
    }

    #[test]
    fn round_trip() {
        let (keys, idx) = sample();
        assert!(idx.height() >= 2);
        let bytes = idx.to_bytes();
        let back = PgmIndex::from_bytes(&bytes, keys.len()).unwrap();
        assert_eq!(back, idx);
        assert_eq!(back.to_bytes(), bytes);

        let empty = PgmIndex::build(&[], 8).unwrap();
        let back = PgmIndex::from_bytes(&empty.to_bytes(), 0).unwrap();
        assert_eq!(back, empty);
    }

    #[test]
    fn wrong_key_count() {
        let (keys, idx) = sample();
        let err = PgmIndex::from_bytes(&idx.to_bytes(), keys.len() + 1).unwrap_err();
        assert!(matches!(err, Error::Corrupt { offset: 8, .. }), "{err}");
    }

    #[test]
    fn every_truncation_and_bit_flip_is_rejected() {
        let keys: Vec<u64> = (0..300u64).map(|i| i * i * 977).collect();
        let idx = PgmIndex::build(&keys, 1).unwrap();
        let bytes = idx.to_bytes();
        for len in 0..bytes.len() {
            assert!(PgmIndex::from_bytes(&bytes[..len], keys.len()).is_err());
        }
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(PgmIndex::from_bytes(&b, keys.len()).is_err(), "bit {bit}");
        }
    }

    /// Structural checks hold even when the checksum is recomputed (an
    /// attacker can always do that).
    #[test]
    fn structure_checked_behind_valid_crc() {
        let (keys, idx) = sample();
        let good = idx.to_bytes();
        let reseal = |mut b: Vec<u8>| {
            let end = b.len() - CRC_LEN;
            let crc = crc32c::crc32c(&b[..end]);
            b[end..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        let body = HEADER_LEN + 8 * idx.height();
        let m0 = idx.segments();
        // Non-increasing first keys.
        let mut b = good.clone();
        b.copy_within(body..body + 8, body + 8);
        assert!(PgmIndex::from_bytes(&reseal(b), keys.len()).is_err());
        // NaN slope.
        let mut b = good.clone();
        b[body + 8 * m0..body + 8 * m0 + 8].copy_from_slice(&f64::NAN.to_bits().to_le_bytes());
        assert!(PgmIndex::from_bytes(&reseal(b), keys.len()).is_err());
        // Huge intercept.
        let mut b = good.clone();
        let at = body + 16 * m0;
        b[at..at + 8].copy_from_slice(&1e300f64.to_bits().to_le_bytes());
        assert!(PgmIndex::from_bytes(&reseal(b), keys.len()).is_err());
        // The untouched bytes still parse after resealing.
        assert!(PgmIndex::from_bytes(&reseal(good), keys.len()).is_ok());
    }
}
