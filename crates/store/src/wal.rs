//! Write-ahead log: files of length- and checksum-framed records.
//!
//! Byte layout: `docs/format/wal.md`. Recovery replays a clean prefix: the scan stops at
//! the first frame that is torn or fails its checksum, and nothing after it is replayed.

use crate::codec::{Reader, put_u32, put_u64};
use crate::error::{IoContext, Result};
use crate::storage::{Storage, WritableFile};
use std::path::{Path, PathBuf};

/// Magic bytes opening every WAL file.
pub const WAL_MAGIC: [u8; 8] = *b"KZWAL\0\0\x01";
/// Bytes of the file header: magic + first sequence number.
pub const WAL_HEADER_LEN: usize = 16;
/// Bytes of a frame header: length, checksum, sequence number.
pub const FRAME_HEADER_LEN: usize = 16;
/// Largest payload of one frame (one write batch).
pub const MAX_RECORD_LEN: usize = 64 << 20;

/// File name of the WAL file whose first frame has sequence number `first_seq`.
pub fn wal_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

/// Parses a WAL file name back into its first sequence number.
pub fn parse_wal_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes one frame.
pub(crate) fn encode_frame(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut digest = crc32c::crc32c(&len.to_le_bytes());
    digest = crc32c::crc32c_append(digest, &seq.to_le_bytes());
    digest = crc32c::crc32c_append(digest, payload);
    put_u32(out, len);
    put_u32(out, crate::codec::mask(digest));
    put_u64(out, seq);
    out.extend_from_slice(payload);
}

/// One valid frame found by [`scan`].
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    /// Sequence number.
    pub seq: u64,
    /// File offset of the frame header.
    pub offset: u64,
    /// The payload (an encoded batch).
    pub payload: &'a [u8],
}

/// What [`scan`] found in one WAL file.
#[derive(Debug)]
pub struct Scan<'a> {
    /// First sequence number named by the header (None if the header is torn).
    pub first_seq: Option<u64>,
    /// The valid frames, in order.
    pub frames: Vec<Frame<'a>>,
    /// Length of the clean prefix (header + valid frames).
    pub valid_len: u64,
    /// Where and why the scan stopped early; None if the whole file is clean.
    pub problem: Option<(u64, String)>,
    /// The problem is an incomplete header or frame running into the end of the bytes
    /// (what an interrupted append leaves), not bad bytes.
    pub torn: bool,
}

/// Scans WAL bytes. `expected_seq` is the sequence number the first frame must carry
/// (None: take the header's). Never panics on any input.
pub fn scan(bytes: &[u8]) -> Scan<'_> {
    let mut out = Scan { first_seq: None, frames: Vec::new(), valid_len: 0, problem: None, torn: false };
    if bytes.len() < WAL_HEADER_LEN {
        out.problem = Some((0, format!("file header torn: {} of {WAL_HEADER_LEN} bytes", bytes.len())));
        out.torn = true;
        return out;
    }
    if bytes[..8] != WAL_MAGIC {
        out.problem = Some((0, "bad magic: not a Kernelize WAL file".into()));
        return out;
    }
    let mut header = Reader::new(&bytes[8..16], 8);
    let Ok(first) = header.u64("first seq") else {
        return out;
    };
    out.first_seq = Some(first);
    out.valid_len = WAL_HEADER_LEN as u64;
    let mut pos = WAL_HEADER_LEN;
    let mut expected = first;
    while pos < bytes.len() {
        let at = pos as u64;
        let rest = &bytes[pos..];
        if rest.len() < FRAME_HEADER_LEN {
            out.problem = Some((at, format!("torn frame header: {} of {FRAME_HEADER_LEN} bytes", rest.len())));
            out.torn = true;
            break;
        }
        let mut r = Reader::new(rest, at);
        let (Ok(len), Ok(crc), Ok(seq)) = (r.u32("len"), r.u32("crc"), r.u64("seq")) else {
            break;
        };
        let len = len as usize;
        if len > MAX_RECORD_LEN {
            out.problem = Some((at, format!("frame length {len} exceeds the limit {MAX_RECORD_LEN}")));
            break;
        }
        if rest.len() - FRAME_HEADER_LEN < len {
            out.problem =
                Some((at, format!("torn frame: payload needs {len} bytes, {} present", rest.len() - FRAME_HEADER_LEN)));
            out.torn = true;
            break;
        }
        let payload = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
        let mut digest = crc32c::crc32c(&rest[..4]);
        digest = crc32c::crc32c_append(digest, &rest[8..16]);
        digest = crc32c::crc32c_append(digest, payload);
        if crate::codec::mask(digest) != crc {
            out.problem = Some((at, "frame checksum mismatch".into()));
            break;
        }
        if seq != expected {
            out.problem = Some((at, format!("frame has sequence number {seq}, expected {expected}")));
            break;
        }
        out.frames.push(Frame { seq, offset: at, payload });
        expected += 1;
        pos += FRAME_HEADER_LEN + len;
        out.valid_len = pos as u64;
    }
    out
}

/// Finds the first intact frame starting at or after byte `from` whose sequence number
/// is plausible (at least `min_seq`, and no more frames than bytes could hold): how
/// recovery tells damage (intact frames after a bad one) from a torn tail (nothing intact
/// after it). Returns its offset, sequence number and total length. Never panics.
pub(crate) fn find_frame(bytes: &[u8], from: usize, min_seq: u64) -> Option<(u64, u64, usize)> {
    let max_seq = min_seq.saturating_add(bytes.len() as u64 / FRAME_HEADER_LEN as u64 + 1);
    let mut pos = from;
    while pos + FRAME_HEADER_LEN <= bytes.len() {
        let h = &bytes[pos..pos + FRAME_HEADER_LEN];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let seq = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        if len <= MAX_RECORD_LEN && (min_seq..=max_seq).contains(&seq) && bytes.len() - pos - FRAME_HEADER_LEN >= len {
            let payload = &bytes[pos + FRAME_HEADER_LEN..pos + FRAME_HEADER_LEN + len];
            let mut digest = crc32c::crc32c(&h[..4]);
            digest = crc32c::crc32c_append(digest, &h[8..16]);
            digest = crc32c::crc32c_append(digest, payload);
            if crate::codec::mask(digest) == crc {
                return Some((pos as u64, seq, FRAME_HEADER_LEN + len));
            }
        }
        pos += 1;
    }
    None
}

/// Intact frames at or after byte `from` (resynchronizing past damage): how many, and
/// their lowest and highest sequence numbers.
pub(crate) fn intact_frames_from(bytes: &[u8], from: usize, min_seq: u64) -> (u64, Option<(u64, u64)>) {
    let (mut n, mut range) = (0u64, None::<(u64, u64)>);
    let mut pos = from;
    while let Some((at, seq, len)) = find_frame(bytes, pos, min_seq) {
        n += 1;
        range = Some(range.map_or((seq, seq), |(lo, hi)| (lo.min(seq), hi.max(seq))));
        pos = at as usize + len;
    }
    (n, range)
}

/// Appends frames to the current WAL file.
pub(crate) struct WalWriter {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    buf: Vec<u8>,
}

impl WalWriter {
    /// Creates a new WAL file whose first frame will carry `first_seq`, durably (file and
    /// directory synced) before returning.
    pub fn create(storage: &dyn Storage, dir: &Path, first_seq: u64) -> Result<WalWriter> {
        let path = dir.join(wal_file_name(first_seq));
        let created = (|| {
            let mut file = storage.create(&path).at(&path)?;
            let mut header = Vec::with_capacity(WAL_HEADER_LEN);
            header.extend_from_slice(&WAL_MAGIC);
            put_u64(&mut header, first_seq);
            file.write_all(&header).at(&path)?;
            file.sync().at(&path)?;
            storage.sync_dir(dir).at(dir)?;
            Ok(file)
        })();
        match created {
            Ok(file) => Ok(WalWriter { file, path, buf: Vec::new() }),
            Err(e) => {
                // No frame was ever written to it: leave no half-made file behind.
                let _ = storage.remove_file(&path);
                Err(e)
            }
        }
    }

    /// Writes a group of encoded batches as consecutive frames starting at `first_seq`,
    /// with one write call, then one fsync when `sync` is set.
    pub fn append_group<'a>(
        &mut self,
        first_seq: u64,
        payloads: impl IntoIterator<Item = &'a [u8]>,
        sync: bool,
    ) -> Result<()> {
        self.buf.clear();
        for (i, p) in payloads.into_iter().enumerate() {
            encode_frame(first_seq + i as u64, p, &mut self.buf);
        }
        self.file.write_all(&self.buf).at(&self.path)?;
        if sync {
            self.file.sync().at(&self.path)?;
        }
        if self.buf.capacity() > 4 * MAX_RECORD_LEN {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Fsyncs the file.
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync().at(&self.path)
    }
}

/// Frames a payload so callers outside this module can build WAL bytes (tests, fuzzing).
pub fn frame_bytes(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    encode_frame(seq, payload, &mut out);
    out
}

/// The header of a WAL file starting at `first_seq`.
pub fn header_bytes(first_seq: u64) -> Vec<u8> {
    let mut out = WAL_MAGIC.to_vec();
    put_u64(&mut out, first_seq);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = header_bytes(7);
        for (i, f) in frames.iter().enumerate() {
            out.extend(frame_bytes(7 + i as u64, f));
        }
        out
    }

    #[test]
    fn clean_file_scans_whole() {
        let bytes = file(&[b"one", b"", b"three"]);
        let s = scan(&bytes);
        assert!(s.problem.is_none());
        assert_eq!(s.frames.len(), 3);
        assert_eq!(s.frames[2].seq, 9);
        assert_eq!(s.valid_len, bytes.len() as u64);
    }

    #[test]
    fn corrupt_middle_frame_stops_replay_there() {
        let mut bytes = file(&[b"one", b"two", b"three"]);
        let second = WAL_HEADER_LEN + FRAME_HEADER_LEN + 3;
        bytes[second + FRAME_HEADER_LEN] ^= 1;
        let s = scan(&bytes);
        assert_eq!(s.frames.len(), 1, "the third frame must not be replayed");
        assert_eq!(s.problem.as_ref().map(|p| p.0), Some(second as u64));
        assert_eq!(s.valid_len, second as u64);
    }

    #[test]
    fn intact_frames_are_found_after_a_flipped_byte() {
        let mut bytes = file(&[b"one", b"two", b"three"]);
        let second = WAL_HEADER_LEN + FRAME_HEADER_LEN + 3;
        bytes[second + 2] ^= 0x40; // the length field of the second frame
        let (n, range) = intact_frames_from(&bytes, second, 8);
        assert_eq!((n, range), (1, Some((9, 9))));
        let torn = file(&[b"one", b"two"]);
        assert_eq!(intact_frames_from(&torn[..torn.len() - 1], second, 8), (0, None));
    }

    #[test]
    fn name_round_trip() {
        assert_eq!(parse_wal_file_name(&wal_file_name(42)), Some(42));
        assert_eq!(parse_wal_file_name("42.wal"), None);
    }

    proptest! {
        #[test]
        fn every_truncation_yields_a_prefix(cut in 0usize..80) {
            let bytes = file(&[b"alpha", b"beta", b"gamma"]);
            let cut = cut.min(bytes.len());
            let s = scan(&bytes[..cut]);
            let full = scan(&bytes);
            prop_assert!(s.frames.len() <= 3);
            for (a, b) in s.frames.iter().zip(full.frames.iter()) {
                prop_assert_eq!(a.payload, b.payload);
            }
            prop_assert!(s.valid_len as usize <= cut);
        }

        #[test]
        fn scan_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = scan(&bytes);
        }
    }
}
