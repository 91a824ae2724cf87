//! Per-row byte strings (ids, text, metadata) compressed in blocks of consecutive rows
//! with zstd and a dictionary trained on the rows themselves, so one row is read by
//! decompressing one small block. Section layout (little-endian):
//!
//! ```text
//! 0   rows_per_block u32
//! 4   blocks u32
//! 8   dict_len u32            (0: no dictionary)
//! 12  max_block u32           largest decompressed block, bytes
//! 16  offsets u64 × (blocks + 1), relative to the frames' start, non-decreasing
//! ..  dictionary [dict_len]
//! ..  frames: block b = frames[offsets[b]..offsets[b + 1]], one zstd frame each
//! ```
//!
//! A decompressed block is the rows' entries back to back: `len u32` then `len` bytes;
//! `len = u32::MAX` marks an absent value.

use crate::error::{KernelError, Result};
use rayon::prelude::*;

/// Rows per block.
pub const ROWS_PER_BLOCK: usize = 64;
const LEVEL: i32 = 19;
const DICT_BYTES: usize = 64 << 10;
const MAX_BLOCK: u32 = 64 << 20;
const ABSENT: u32 = u32::MAX;

/// Encodes rows (`None` = absent) into a section.
pub fn encode(rows: &[Option<&[u8]>]) -> Vec<u8> {
    let blocks: Vec<Vec<u8>> = rows
        .chunks(ROWS_PER_BLOCK)
        .map(|chunk| {
            let mut b = Vec::new();
            for r in chunk {
                match r {
                    Some(v) => {
                        b.extend_from_slice(&(v.len() as u32).to_le_bytes());
                        b.extend_from_slice(v);
                    }
                    None => b.extend_from_slice(&ABSENT.to_le_bytes()),
                }
            }
            b
        })
        .collect();
    // Train on a spread sample of rows (zstd wants many small samples); a corpus too
    // small or too uniform to train on simply gets no dictionary.
    let step = (rows.len() / 20_000).max(1);
    let samples: Vec<&[u8]> = rows.iter().step_by(step).filter_map(|r| *r).filter(|r| !r.is_empty()).collect();
    let total: usize = samples.iter().map(|s| s.len()).sum();
    let dict = if samples.len() >= 64 && total >= 8 * 1024 {
        zstd::dict::from_samples(&samples, DICT_BYTES.min(total / 4)).unwrap_or_default()
    } else {
        Vec::new()
    };
    let frames: Vec<Vec<u8>> = blocks
        .par_iter()
        .map_init(
            || zstd::bulk::Compressor::with_dictionary(LEVEL, &dict).ok(),
            |c, block| c.as_mut().and_then(|c| c.compress(block).ok()).unwrap_or_default(),
        )
        .collect();
    let max_block = blocks.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let mut out = Vec::new();
    out.extend_from_slice(&(ROWS_PER_BLOCK as u32).to_le_bytes());
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    out.extend_from_slice(&max_block.to_le_bytes());
    let mut at = 0u64;
    out.extend_from_slice(&at.to_le_bytes());
    for f in &frames {
        at += f.len() as u64;
        out.extend_from_slice(&at.to_le_bytes());
    }
    out.extend_from_slice(&dict);
    for f in &frames {
        out.extend_from_slice(f);
    }
    out
}

/// A validated block stream over a section's bytes.
pub struct Blocks<'a> {
    bytes: &'a [u8],
    rows_per_block: usize,
    blocks: usize,
    max_block: usize,
    frames_at: usize,
    dict: Option<zstd::dict::DecoderDictionary<'static>>,
}

impl std::fmt::Debug for Blocks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocks").field("blocks", &self.blocks).field("rows_per_block", &self.rows_per_block).finish()
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
}

impl<'a> Blocks<'a> {
    /// Validates the section's structure for `rows` rows; `base` is the section's file
    /// offset, for errors.
    pub fn open(bytes: &'a [u8], rows: usize, what: &str, base: u64) -> Result<Blocks<'a>> {
        let bad = |at: usize, reason: String| KernelError::corrupt(what, base + at as u64, reason);
        if bytes.len() < 16 {
            return Err(bad(0, "block stream header is truncated".into()));
        }
        let rows_per_block = u32_at(bytes, 0) as usize;
        let blocks = u32_at(bytes, 4) as usize;
        let dict_len = u32_at(bytes, 8) as usize;
        let max_block = u32_at(bytes, 12);
        if rows_per_block == 0 || blocks != rows.div_ceil(rows_per_block) || max_block > MAX_BLOCK {
            return Err(bad(
                0,
                format!("{blocks} blocks of {rows_per_block} rows (max {max_block} bytes) for {rows} rows"),
            ));
        }
        let offsets_end = 16 + (blocks + 1) * 8;
        let frames_at = offsets_end.checked_add(dict_len).filter(|&e| e <= bytes.len());
        let Some(frames_at) = frames_at else {
            return Err(bad(8, "offsets or dictionary run past the section".into()));
        };
        let frames_len = (bytes.len() - frames_at) as u64;
        let mut prev = 0;
        for b in 0..=blocks {
            let o = u64_at(bytes, 16 + b * 8);
            if o < prev || o > frames_len || (b == 0 && o != 0) || (b == blocks && o != frames_len) {
                return Err(bad(16 + b * 8, format!("block offset {o} out of order or outside the frames")));
            }
            prev = o;
        }
        let dict = (dict_len > 0).then(|| zstd::dict::DecoderDictionary::copy(&bytes[offsets_end..frames_at]));
        Ok(Blocks { bytes, rows_per_block, blocks, max_block: max_block as usize, frames_at, dict })
    }

    /// Decompresses block `b` (rows `b * rows_per_block ..`).
    fn block(&self, b: usize, what: &str, base: u64) -> Result<Vec<u8>> {
        let start = u64_at(self.bytes, 16 + b * 8) as usize;
        let end = u64_at(self.bytes, 16 + (b + 1) * 8) as usize;
        let frame = self.bytes.get(self.frames_at + start..self.frames_at + end).unwrap_or(&[]);
        let at = base + (self.frames_at + start) as u64;
        let mut d = match &self.dict {
            Some(dict) => zstd::bulk::Decompressor::with_prepared_dictionary(dict),
            None => zstd::bulk::Decompressor::new(),
        }
        .map_err(|e| KernelError::corrupt(what, at, format!("zstd: {e}")))?;
        d.decompress(frame, self.max_block).map_err(|e| KernelError::corrupt(what, at, format!("block {b}: {e}")))
    }

    /// The values of rows `rows` (any order), as `(row, value)`.
    pub fn get(&self, rows: &[u32], what: &str, base: u64) -> Result<Vec<(u32, Option<Vec<u8>>)>> {
        let mut wanted: Vec<u32> = rows.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut out = Vec::with_capacity(wanted.len());
        let mut cur: Option<(usize, Vec<u8>)> = None;
        for r in wanted {
            let b = r as usize / self.rows_per_block;
            if b >= self.blocks {
                return Err(KernelError::Invalid(format!("row {r} is past the kernel's rows")));
            }
            if cur.as_ref().is_none_or(|(cb, _)| *cb != b) {
                cur = Some((b, self.block(b, what, base)?));
            }
            let Some((_, data)) = &cur else { continue };
            out.push((
                r,
                entry(data, r as usize % self.rows_per_block).map_err(|e| KernelError::corrupt(what, base, e))?,
            ));
        }
        Ok(out)
    }

    /// Every row's value in order (merge, diff, export).
    pub fn all(&self, what: &str, base: u64) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::new();
        for b in 0..self.blocks {
            let data = self.block(b, what, base)?;
            let mut at = 0;
            while at < data.len() {
                let (v, next) = next_entry(&data, at).map_err(|e| KernelError::corrupt(what, base, e))?;
                out.push(v.map(<[u8]>::to_vec));
                at = next;
            }
        }
        Ok(out)
    }
}

fn next_entry(data: &[u8], at: usize) -> std::result::Result<(Option<&[u8]>, usize), String> {
    if at + 4 > data.len() {
        return Err(format!("block entry at {at} is truncated"));
    }
    let len = u32_at(data, at);
    if len == ABSENT {
        return Ok((None, at + 4));
    }
    let end =
        (at + 4).checked_add(len as usize).filter(|&e| e <= data.len()).ok_or("block entry runs past its block")?;
    Ok((Some(&data[at + 4..end]), end))
}

fn entry(data: &[u8], index: usize) -> std::result::Result<Option<Vec<u8>>, String> {
    let mut at = 0;
    for _ in 0..index {
        at = next_entry(data, at)?.1;
    }
    Ok(next_entry(data, at)?.0.map(<[u8]>::to_vec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_absent_rows() {
        let texts: Vec<String> =
            (0..1000).map(|i| format!("gloss number {i} about things and stuff {}", i % 7)).collect();
        let rows: Vec<Option<&[u8]>> =
            texts.iter().enumerate().map(|(i, t)| (i % 5 != 3).then_some(t.as_bytes())).collect();
        let bytes = encode(&rows);
        assert!(bytes.len() < texts.iter().map(String::len).sum::<usize>() / 2, "compresses");
        let b = Blocks::open(&bytes, rows.len(), "t", 0).unwrap();
        let all = b.all("t", 0).unwrap();
        assert_eq!(all.len(), rows.len());
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(all[i].as_deref(), *r);
        }
        let some = b.get(&[999, 3, 17, 3], "t", 0).unwrap();
        assert_eq!(some.len(), 3);
        assert_eq!(some[2].1.as_deref(), rows[999]);
        assert!(Blocks::open(&bytes, rows.len() + 100, "t", 0).is_err());
    }
}
