//! Immutable segment files: records sorted by key, columnar, checksummed, mmap-read,
//! with a learned index over the sorted key hashes. Layout: `docs/format/segment.md`.

use crate::codec::{DecodeResult, Reader, masked_crc, put_u32, put_u64};
use crate::error::{Error, IoContext, Result};
use crate::memtable::{Entry, Key};
use crate::record::{MAX_DIM, MAX_ID_BYTES, MAX_METADATA_BYTES, MAX_TEXT_BYTES, Record, decode_metadata};
use crate::storage::{Mapped, ResidentBuf, Storage, WritableFile};
use kernelize_learned::PgmIndex;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Magic bytes opening a segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"KZSEG\0\0\x01";
/// Magic bytes closing a segment file.
pub const SEGMENT_END_MAGIC: [u8; 8] = *b"KZSEGEND";
/// Current segment format version.
pub const SEGMENT_VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
const TRAILER_LEN: usize = 48;
const TABLE_ENTRY_LEN: usize = 32;
const ALIGN: usize = 64;
const FLAG_TOMBSTONE: u8 = 1;

/// Section kinds, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Kind {
    Vectors = 1,
    Hashes = 2,
    Seqs = 3,
    Flags = 4,
    IdOffsets = 5,
    Ids = 6,
    PayloadOffsets = 7,
    Payload = 8,
    Learned = 9,
}

const KINDS: [Kind; 9] = [
    Kind::Vectors,
    Kind::Hashes,
    Kind::Seqs,
    Kind::Flags,
    Kind::IdOffsets,
    Kind::Ids,
    Kind::PayloadOffsets,
    Kind::Payload,
    Kind::Learned,
];

/// Settings for writing segments.
#[derive(Debug, Clone, Copy)]
pub struct SegmentOptions {
    /// Error bound of the learned index (positions).
    pub epsilon: usize,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions { epsilon: 64 }
    }
}

/// Summary of a written segment.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// Records (including tombstones).
    pub count: u64,
    /// Lowest sequence number inside.
    pub min_seq: u64,
    /// Highest sequence number inside.
    pub max_seq: u64,
    /// File size.
    pub bytes: u64,
}

struct Sink {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    pos: u64,
    buf: ResidentBuf,
    /// Keep every byte written in `buf` (only `buf[flushed..]` is still to be written).
    keep: bool,
    flushed: usize,
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(bytes);
        self.pos += bytes.len() as u64;
        if self.buf.len() - self.flushed >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        self.file.write_all(&self.buf[self.flushed..]).at(&self.path)?;
        if self.keep {
            self.flushed = self.buf.len();
        } else {
            self.buf.clear();
        }
        Ok(())
    }
    fn pad(&mut self) -> Result<()> {
        let pad = (ALIGN - (self.pos as usize % ALIGN)) % ALIGN;
        self.write(&[0u8; ALIGN][..pad])
    }
}

/// Writes a segment from entries in strictly increasing key order. The file is written
/// to `path` and synced; the caller renames it into place and syncs the directory.
pub fn write_segment(
    storage: &dyn Storage,
    path: &Path,
    dim: usize,
    entries: impl Iterator<Item = Result<(Key, Entry)>>,
    opts: SegmentOptions,
) -> Result<SegmentInfo> {
    write_segment_keeping(storage, path, dim, entries, opts, None).map(|(info, _)| info)
}

/// [`write_segment`], and with `keep = Some(expected size)` also the file's bytes as
/// written (plaintext, in resident memory), so a caller on a storage whose files are not
/// mappable in place (sealed files, which `map` would decrypt back into memory) can open
/// the segment from them instead of reading the file back.
pub(crate) fn write_segment_keeping(
    storage: &dyn Storage,
    path: &Path,
    dim: usize,
    entries: impl Iterator<Item = Result<(Key, Entry)>>,
    opts: SegmentOptions,
    keep: Option<usize>,
) -> Result<(SegmentInfo, Option<ResidentBuf>)> {
    let file = storage.create(path).at(path)?;
    let buf = match keep {
        Some(expected) => ResidentBuf::with_capacity(expected),
        None => ResidentBuf::Heap(Vec::with_capacity(2 << 20)),
    };
    let mut sink = Sink { file, path: path.to_path_buf(), pos: 0, buf, keep: keep.is_some(), flushed: 0 };
    sink.write(&header_bytes(dim))?;
    let mut hashes = Vec::new();
    let mut seqs = Vec::new();
    let mut flags = Vec::new();
    let mut id_offsets = vec![0u64];
    let mut ids = Vec::new();
    let mut payload_offsets = vec![0u64];
    let mut payload = Vec::new();
    let mut table: Vec<(Kind, u64, u64, u32)> = Vec::new();
    let zero = vec![0f32; dim];
    let vec_start = sink.pos;
    let mut vec_crc = 0u32;
    let mut prev: Option<Key> = None;
    for item in entries {
        let (key, entry) = item?;
        if prev.as_ref().is_some_and(|p| *p >= key) {
            return Err(Error::InvalidInput("segment entries must be in strictly increasing key order".into()));
        }
        let vector = entry.record.as_ref().map_or(&zero[..], |r| &r.vector[..]);
        if vector.len() != dim {
            return Err(Error::InvalidInput(format!("record {:?} has dimension {}", key.id, vector.len())));
        }
        let mut vbytes = Vec::with_capacity(dim * 4);
        crate::codec::put_f32s(&mut vbytes, vector);
        vec_crc = crc32c::crc32c_append(vec_crc, &vbytes);
        sink.write(&vbytes)?;
        hashes.push(key.hash);
        seqs.push(entry.seq);
        ids.extend_from_slice(key.id.as_bytes());
        id_offsets.push(ids.len() as u64);
        match &entry.record {
            None => flags.push(FLAG_TOMBSTONE),
            Some(r) => {
                flags.push(0);
                encode_payload(r, &mut payload);
            }
        }
        payload_offsets.push(payload.len() as u64);
        prev = Some(key);
    }
    let count = hashes.len() as u64;
    table.push((Kind::Vectors, vec_start, sink.pos - vec_start, crate::codec::mask(vec_crc)));
    let learned = PgmIndex::build(&hashes, opts.epsilon)
        .map_err(|e| Error::InvalidInput(format!("learned index: {e}")))?
        .to_bytes();
    let columns: [(Kind, Vec<u8>); 8] = [
        (Kind::Hashes, u64s_le(&hashes)),
        (Kind::Seqs, u64s_le(&seqs)),
        (Kind::Flags, flags),
        (Kind::IdOffsets, u64s_le(&id_offsets)),
        (Kind::Ids, ids),
        (Kind::PayloadOffsets, u64s_le(&payload_offsets)),
        (Kind::Payload, payload),
        (Kind::Learned, learned),
    ];
    for (kind, bytes) in columns {
        sink.pad()?;
        table.push((kind, sink.pos, bytes.len() as u64, masked_crc(&bytes)));
        sink.write(&bytes)?;
    }
    sink.pad()?;
    let table_offset = sink.pos;
    let mut tbytes = Vec::with_capacity(table.len() * TABLE_ENTRY_LEN);
    for (kind, off, len, crc) in &table {
        put_u32(&mut tbytes, *kind as u32);
        put_u32(&mut tbytes, 0);
        put_u64(&mut tbytes, *off);
        put_u64(&mut tbytes, *len);
        put_u32(&mut tbytes, *crc);
        put_u32(&mut tbytes, 0);
    }
    sink.write(&tbytes)?;
    let min_seq = seqs.iter().copied().min().unwrap_or(0);
    let max_seq = seqs.iter().copied().max().unwrap_or(0);
    let mut trailer = Vec::with_capacity(TRAILER_LEN);
    put_u64(&mut trailer, count);
    put_u64(&mut trailer, min_seq);
    put_u64(&mut trailer, max_seq);
    put_u64(&mut trailer, table_offset);
    put_u32(&mut trailer, table.len() as u32);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&tbytes), &trailer);
    put_u32(&mut trailer, crate::codec::mask(crc));
    trailer.extend_from_slice(&SEGMENT_END_MAGIC);
    sink.write(&trailer)?;
    sink.flush()?;
    sink.file.sync().at(path)?;
    let info = SegmentInfo { count, min_seq, max_seq, bytes: sink.pos };
    Ok((info, keep.map(|_| sink.buf)))
}

fn header_bytes(dim: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&SEGMENT_MAGIC);
    put_u32(&mut h, SEGMENT_VERSION);
    put_u32(&mut h, dim as u32);
    h.resize(HEADER_LEN - 4, 0);
    let crc = masked_crc(&h);
    put_u32(&mut h, crc);
    h
}

fn u64s_le(v: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 8);
    for x in v {
        put_u64(&mut out, *x);
    }
    out
}

fn encode_payload(r: &Record, out: &mut Vec<u8>) {
    match &r.text {
        Some(t) => {
            out.push(1);
            crate::codec::put_len_prefixed(out, t.as_bytes());
        }
        None => out.push(0),
    }
    match &r.metadata {
        Some(m) => {
            out.push(1);
            crate::codec::put_len_prefixed(out, &serde_json::to_vec(m).unwrap_or_default());
        }
        None => out.push(0),
    }
}

/// An open, fully validated segment.
#[derive(Debug)]
pub struct Segment {
    path: PathBuf,
    map: Mapped,
    dim: usize,
    count: usize,
    min_seq: u64,
    max_seq: u64,
    sections: [Range<usize>; 9],
    hashes_owned: Option<Vec<u64>>,
    index: PgmIndex,
}

fn corrupt<T>(path: &Path, offset: u64, reason: impl Into<String>) -> Result<T> {
    Err(Error::corrupt(path, offset, reason))
}

impl Segment {
    /// Opens and validates a segment: header, section table and every section checksum,
    /// key order, offsets and the learned index. Any problem names the file and offset.
    pub fn open(storage: &dyn Storage, path: &Path) -> Result<Arc<Segment>> {
        let map = storage.map(path).at(path)?;
        Segment::from_mapped(path, map).map(Arc::new)
    }

    /// Validates segment bytes already in memory.
    pub fn from_mapped(path: &Path, map: Mapped) -> Result<Segment> {
        let len = map.len();
        if len < HEADER_LEN + TRAILER_LEN {
            return corrupt(path, 0, format!("file is {len} bytes, too short for a segment"));
        }
        let header = &map[..HEADER_LEN];
        if header[..8] != SEGMENT_MAGIC {
            return corrupt(path, 0, "bad magic: not a Kernelize segment");
        }
        let stored_crc = u32::from_le_bytes([header[60], header[61], header[62], header[63]]);
        if masked_crc(&header[..60]) != stored_crc {
            return corrupt(path, 60, "header checksum mismatch");
        }
        let h = |r: DecodeResult<u64>| r.or_else(|e| corrupt(path, e.offset, e.reason));
        let mut r = Reader::new(&header[8..60], 8);
        let version = h(r.u32("version").map(u64::from))?;
        if version != u64::from(SEGMENT_VERSION) {
            return corrupt(path, 8, format!("unsupported segment version {version}"));
        }
        let dim = h(r.u32("dim").map(u64::from))? as usize;
        if dim == 0 || dim > MAX_DIM {
            return corrupt(path, 12, format!("dimension {dim} out of range"));
        }
        let trailer_at = len - TRAILER_LEN;
        let trailer = &map[trailer_at..];
        if trailer[40..] != SEGMENT_END_MAGIC {
            return corrupt(path, trailer_at as u64 + 40, "bad end magic (truncated file?)");
        }
        let mut r = Reader::new(trailer, trailer_at as u64);
        let count = h(r.u64("count"))?;
        let min_seq = h(r.u64("min_seq"))?;
        let max_seq = h(r.u64("max_seq"))?;
        let table_offset = h(r.u64("table offset"))?;
        let n_sections = h(r.u32("section count").map(u64::from))? as usize;
        let table_crc = h(r.u32("table crc").map(u64::from))? as u32;
        if n_sections != KINDS.len() {
            return corrupt(path, trailer_at as u64 + 32, format!("{n_sections} sections, expected {}", KINDS.len()));
        }
        let table_end = table_offset.checked_add((n_sections * TABLE_ENTRY_LEN) as u64);
        if table_end != Some(trailer_at as u64) {
            return corrupt(path, trailer_at as u64 + 24, "section table offset does not meet the trailer");
        }
        let table = &map[table_offset as usize..trailer_at];
        let crc = crc32c::crc32c_append(crc32c::crc32c(table), &trailer[..36]);
        if crate::codec::mask(crc) != table_crc {
            return corrupt(path, table_offset, "section table or trailer checksum mismatch");
        }
        let mut sections: [Range<usize>; 9] = Default::default();
        let mut r = Reader::new(table, table_offset);
        let mut prev_end = HEADER_LEN as u64;
        for (i, kind) in KINDS.iter().enumerate() {
            let at = r.offset();
            let k = h(r.u32("kind").map(u64::from))?;
            let _ = h(r.u32("reserved").map(u64::from))?;
            let off = h(r.u64("offset"))?;
            let slen = h(r.u64("length"))?;
            let crc = h(r.u32("crc").map(u64::from))? as u32;
            let _ = h(r.u32("reserved").map(u64::from))?;
            if k != *kind as u64 {
                return corrupt(path, at, format!("section {i} has kind {k}, expected {}", *kind as u32));
            }
            let end = off.checked_add(slen).filter(|e| *e <= table_offset);
            let Some(end) = end.filter(|_| off >= prev_end && (off as usize).is_multiple_of(ALIGN)) else {
                return corrupt(path, at, format!("section {kind:?} at {off}+{slen} is out of bounds or misplaced"));
            };
            let range = off as usize..end as usize;
            if masked_crc(&map[range.clone()]) != crc {
                return corrupt(path, off, format!("section {kind:?} checksum mismatch"));
            }
            prev_end = end;
            sections[i] = range;
        }
        let n = usize::try_from(count).unwrap_or(usize::MAX);
        let expect = |kind: Kind, want: Option<usize>| -> Result<()> {
            let got = sections[kind as usize - 1].len();
            if want != Some(got) {
                return corrupt(
                    path,
                    sections[kind as usize - 1].start as u64,
                    format!("section {kind:?} is {got} bytes, expected {want:?} for {count} records"),
                );
            }
            Ok(())
        };
        expect(Kind::Vectors, n.checked_mul(dim).and_then(|x| x.checked_mul(4)))?;
        expect(Kind::Hashes, n.checked_mul(8))?;
        expect(Kind::Seqs, n.checked_mul(8))?;
        expect(Kind::Flags, Some(n))?;
        expect(Kind::IdOffsets, n.checked_add(1).and_then(|x| x.checked_mul(8)))?;
        expect(Kind::PayloadOffsets, n.checked_add(1).and_then(|x| x.checked_mul(8)))?;
        let mut seg = Segment {
            path: path.to_path_buf(),
            map,
            dim,
            count: n,
            min_seq,
            max_seq,
            sections,
            hashes_owned: None,
            index: PgmIndex::build(&[], 1).map_err(|e| Error::corrupt(path, 0, e.to_string()))?,
        };
        if bytemuck::try_cast_slice::<u8, u64>(seg.section(Kind::Hashes)).is_err() || cfg!(target_endian = "big") {
            seg.hashes_owned = Some(seg.u64_at_all(Kind::Hashes));
        }
        if let Some(i) = seg.hashes().windows(2).position(|w| w[0] > w[1]) {
            return corrupt(path, seg.sections[1].start as u64 + 8 * (i as u64 + 1), "key hashes out of order");
        }
        for (kind, blob) in [(Kind::IdOffsets, Kind::Ids), (Kind::PayloadOffsets, Kind::Payload)] {
            let offs = seg.u64_at_all(kind);
            let blob_len = seg.section(blob).len() as u64;
            if offs.first() != Some(&0) || offs.last() != Some(&blob_len) {
                return corrupt(
                    path,
                    seg.sections[kind as usize - 1].start as u64,
                    format!("{kind:?} do not span {blob:?}"),
                );
            }
            if let Some(i) = offs.windows(2).position(|w| w[0] > w[1]) {
                return corrupt(
                    path,
                    seg.sections[kind as usize - 1].start as u64 + 8 * i as u64,
                    format!("{kind:?} decrease"),
                );
            }
        }
        let learned = seg.section(Kind::Learned);
        seg.index = PgmIndex::from_bytes(learned, n)
            .map_err(|e| Error::corrupt(path, seg.sections[Kind::Learned as usize - 1].start as u64, e.to_string()))?;
        Ok(seg)
    }

    fn section(&self, kind: Kind) -> &[u8] {
        &self.map[self.sections[kind as usize - 1].clone()]
    }

    fn u64_at_all(&self, kind: Kind) -> Vec<u64> {
        self.section(kind).chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
    }

    fn u64_at(&self, kind: Kind, i: usize) -> u64 {
        let s = self.section(kind);
        s.get(i * 8..i * 8 + 8).map_or(0, |c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
    }

    /// The sorted key hashes (zero-copy on little-endian hosts).
    pub fn hashes(&self) -> &[u64] {
        match &self.hashes_owned {
            Some(v) => v,
            None => bytemuck::try_cast_slice(self.section(Kind::Hashes)).unwrap_or(&[]),
        }
    }

    /// The file this segment was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records in the segment, tombstones included.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the segment holds no records.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Range of sequence numbers inside.
    pub fn seq_range(&self) -> (u64, u64) {
        (self.min_seq, self.max_seq)
    }

    /// File size in bytes.
    pub fn file_bytes(&self) -> usize {
        self.map.len()
    }

    /// The raw bytes of the file (for backups).
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The learned index.
    pub fn learned_index(&self) -> &PgmIndex {
        &self.index
    }

    /// Position of `key`, found through the learned index.
    pub fn find(&self, key: &Key) -> Result<Option<usize>> {
        let hashes = self.hashes();
        let mut i = self.index.lower_bound(hashes, key.hash);
        while i < hashes.len() && hashes[i] == key.hash {
            if self.id(i)? == &*key.id {
                return Ok(Some(i));
            }
            i += 1;
        }
        Ok(None)
    }

    /// Looks a key up; returns its entry (record or tombstone) if the segment has it.
    pub fn get(&self, key: &Key) -> Result<Option<Entry>> {
        match self.find(key)? {
            Some(i) => self.entry(i).map(|(_, e)| Some(e)),
            None => Ok(None),
        }
    }

    /// The id at position `i`.
    pub fn id(&self, i: usize) -> Result<&str> {
        let (a, b) = (self.u64_at(Kind::IdOffsets, i) as usize, self.u64_at(Kind::IdOffsets, i + 1) as usize);
        let base = self.sections[Kind::Ids as usize - 1].start;
        let bytes = self.section(Kind::Ids).get(a..b).filter(|b| b.len() <= MAX_ID_BYTES);
        let Some(bytes) = bytes else {
            return corrupt(&self.path, (base + a) as u64, format!("id {i} out of bounds"));
        };
        std::str::from_utf8(bytes).or_else(|e| corrupt(&self.path, (base + a) as u64, format!("id {i}: {e}")))
    }

    /// The vector at position `i` (zero-copy on little-endian hosts).
    pub fn vector(&self, i: usize) -> std::borrow::Cow<'_, [f32]> {
        let bytes = self.section(Kind::Vectors).get(i * self.dim * 4..(i + 1) * self.dim * 4).unwrap_or(&[]);
        match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(v) if cfg!(target_endian = "little") => std::borrow::Cow::Borrowed(v),
            _ => std::borrow::Cow::Owned(crate::codec::f32s_from_le(bytes)),
        }
    }

    /// Every vector, row after row (`len() * dim()` floats), borrowed from the mapped file;
    /// `None` on a big-endian host, where [`Segment::vector`] converts each row instead.
    pub fn vectors(&self) -> Option<&[f32]> {
        if cfg!(target_endian = "big") {
            return None;
        }
        bytemuck::try_cast_slice::<u8, f32>(self.section(Kind::Vectors))
            .ok()
            .filter(|v| v.len() == self.count * self.dim)
    }

    /// Whether position `i` is a tombstone.
    pub fn is_tombstone(&self, i: usize) -> bool {
        self.section(Kind::Flags).get(i).is_some_and(|f| f & FLAG_TOMBSTONE != 0)
    }

    /// Decodes the key and entry at position `i`.
    pub fn entry(&self, i: usize) -> Result<(Key, Entry)> {
        let id = self.id(i)?;
        let key = Key { hash: self.hashes().get(i).copied().unwrap_or(0), id: Arc::from(id) };
        let seq = self.u64_at(Kind::Seqs, i);
        if self.is_tombstone(i) {
            return Ok((key, Entry { seq, record: None }));
        }
        let (a, b) = (self.u64_at(Kind::PayloadOffsets, i) as usize, self.u64_at(Kind::PayloadOffsets, i + 1) as usize);
        let base = self.sections[Kind::Payload as usize - 1].start as u64 + a as u64;
        let payload = self.section(Kind::Payload).get(a..b).unwrap_or(&[]);
        let (text, metadata) = decode_payload(payload, base)
            .or_else(|e| corrupt(&self.path, e.offset, format!("record {id:?}: {}", e.reason)))?;
        let record = Record { id: id.to_owned(), vector: self.vector(i).into_owned(), text, metadata };
        Ok((key, Entry { seq, record: Some(Arc::new(record)) }))
    }
}

type Payload = (Option<String>, Option<crate::record::Metadata>);

fn decode_payload(bytes: &[u8], base: u64) -> DecodeResult<Payload> {
    let mut r = Reader::new(bytes, base);
    let text = match r.u8("text flag")? {
        0 => None,
        1 => Some(r.str(MAX_TEXT_BYTES, "text")?.to_owned()),
        f => return r.fail(format!("bad text flag {f}")),
    };
    let metadata = match r.u8("metadata flag")? {
        0 => None,
        1 => {
            let json = r.len_prefixed(MAX_METADATA_BYTES, "metadata")?;
            Some(decode_metadata(&r, json)?)
        }
        f => return r.fail(format!("bad metadata flag {f}")),
    };
    if r.remaining() != 0 {
        return r.fail("trailing bytes in record payload");
    }
    Ok((text, metadata))
}
