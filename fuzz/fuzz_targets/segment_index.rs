//! Segment index files (`.idx`): opening (header, section table, metadata, checksums,
//! shapes, graph links, payload and BM25 indexes, the binding to the segment) never
//! panics, and an index that opens can be searched (vector search with and without a
//! filter, exact scoring, payload filters, BM25) without panicking.
//!
//! The first input byte picks one of four small real segments (cosine/f32, l2/int8,
//! dot/rabitq1, cosine/rabitq4; tombstones, text, metadata) and a mode:
//! 0. the rest is the whole file, as it is;
//! 1. the rest is the whole file, with its checksums recomputed (anyone can compute them);
//! 2. the rest edits the segment's own valid index file — metadata fields overridden,
//!    section bytes patched, sections dropped or re-tagged — re-encoded with correct
//!    layout and checksums, so the fuzzer gets behind every check that a random file
//!    fails first.
#![no_main]
use kernelize_index::bm25::{Bm25Stats, tokenize};
use kernelize_index::filter::Filter;
use kernelize_index::segment_index::{self, IndexMeta, SegmentIndex};
use kernelize_store::{
    CollectionConfig, Database, Durability, IndexSettings, Mapped, MemStorage, Metric, Options, Quantization, Record,
    Segment,
};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

const FIXED_HEADER: usize = 24;
const TABLE_ENTRY: usize = 24;
const ALIGN: usize = 64;

struct Case {
    segment: Arc<Segment>,
    meta: IndexMeta,
    sections: Vec<(u32, Vec<u8>)>,
}

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let storage = Arc::new(MemStorage::new());
        let opts = Options { durability: Durability::Buffered, ..Options::default() };
        let db = Database::open_with(storage, Path::new("/fuzz"), opts).expect("database");
        let kinds = [
            (Metric::Cosine, Quantization::None, 5),
            (Metric::L2, Quantization::Int8, 7),
            (Metric::Dot, Quantization::Rabitq1, 3),
            (Metric::Cosine, Quantization::Rabitq4, 9),
        ];
        kinds
            .iter()
            .enumerate()
            .map(|(c, &(metric, quantization, dim))| {
                let settings = IndexSettings { m: 4, ef_construction: 16, quantization };
                let mut config = CollectionConfig::new(dim, metric);
                config.index = settings;
                let coll = db.create_collection(&format!("c{c}"), config).expect("collection");
                let records = (0..40)
                    .map(|i| Record {
                        id: format!("r{i}"),
                        vector: (0..dim).map(|j| ((i * 7 + j * 3) as f32 * 0.618).sin()).collect(),
                        text: (i % 3 != 0).then(|| format!("word{} common text {}", i % 5, i)),
                        metadata: json!({"a": i % 4, "b": format!("v{}", i % 3), "t": [i, "x"]}).as_object().cloned(),
                    })
                    .collect();
                coll.upsert(records).expect("upsert");
                coll.delete(vec!["r3".into(), "r17".into()]).expect("delete");
                coll.flush().expect("flush");
                let segment = coll.snapshot().segments()[0].clone();
                let bytes = segment_index::build(&segment, metric, settings).expect("build");
                let (meta, sections) = split(&bytes).expect("own file splits");
                Case { segment, meta, sections }
            })
            .collect()
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
}

/// A valid file's metadata and sections (tag, bytes) in file order.
fn split(b: &[u8]) -> Option<(IndexMeta, Vec<(u32, Vec<u8>)>)> {
    let count = u32_at(b, 12) as usize;
    let meta_len = u64_at(b, 16) as usize;
    let head = FIXED_HEADER + count * TABLE_ENTRY;
    let meta = serde_json::from_slice(b.get(head..head + meta_len)?).ok()?;
    let mut sections = Vec::new();
    for s in 0..count {
        let at = FIXED_HEADER + s * TABLE_ENTRY;
        let (off, len) = (u64_at(b, at + 8) as usize, u64_at(b, at + 16) as usize);
        sections.push((u32_at(b, at), b.get(off..off + len)?.to_vec()));
    }
    Some((meta, sections))
}

/// The file layout of `docs/format/index.md`, checksums included.
fn encode(meta_json: &[u8], sections: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let head = FIXED_HEADER + sections.len() * TABLE_ENTRY + meta_json.len();
    let mut at = (head + 4).next_multiple_of(ALIGN);
    let mut offsets = Vec::new();
    for (_, bytes) in sections {
        offsets.push(at);
        at = (at + bytes.len()).next_multiple_of(ALIGN);
    }
    let mut out = Vec::with_capacity(at);
    out.extend_from_slice(b"KZINDEX1");
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    out.extend_from_slice(&(meta_json.len() as u64).to_le_bytes());
    for ((tag, bytes), off) in sections.iter().zip(&offsets) {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(bytes).to_le_bytes());
        out.extend_from_slice(&(*off as u64).to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(meta_json);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    for ((_, bytes), off) in sections.iter().zip(&offsets) {
        out.resize(*off, 0);
        out.extend_from_slice(bytes);
    }
    out.resize(at, 0);
    out
}

/// Recomputes the header checksum and the checksum of every section the table places
/// inside the file (whatever else is wrong with the file).
fn fix_checksums(b: &mut [u8]) {
    if b.len() < FIXED_HEADER {
        return;
    }
    let count = (u32_at(b, 12) as usize).min(64);
    let meta_len = u64_at(b, 16).min(1 << 20) as usize;
    for s in 0..count {
        let at = FIXED_HEADER + s * TABLE_ENTRY;
        if at + TABLE_ENTRY > b.len() {
            break;
        }
        let (off, len) = (u64_at(b, at + 8), u64_at(b, at + 16));
        if let Some(end) = off.checked_add(len).filter(|&e| e <= b.len() as u64) {
            let crc = crc32c::crc32c(&b[off as usize..end as usize]);
            b[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let head = FIXED_HEADER + count * TABLE_ENTRY + meta_len;
    if head + 4 <= b.len() {
        let crc = crc32c::crc32c(&b[..head]);
        b[head..head + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Reads the edits of mode 2 from `data`.
struct Edits<'a>(&'a [u8]);

impl Edits<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        let (b, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*b))
    }
}

fn edited(case: &Case, data: &[u8]) -> Vec<u8> {
    let mut e = Edits(data);
    let mut meta = case.meta.clone();
    let mut sections = case.sections.clone();
    let mut meta_json = None;
    while let Some(op) = e.byte() {
        let Some(v) = e.u32() else { break };
        match op % 12 {
            0 => meta.settings.m = v as usize % 2048,
            1 => meta.entry = if v & 1 == 0 { v >> 1 } else { (v >> 1) % 64 },
            2 => meta.top = v as usize % 40,
            3 => {
                meta.settings.quantization =
                    [Quantization::None, Quantization::Int8, Quantization::Rabitq1, Quantization::Rabitq4]
                        [v as usize % 4]
            }
            4 => meta.metric = [Metric::Cosine, Metric::L2, Metric::Dot][v as usize % 3],
            5 => meta.indexed = u64::from(v).rotate_left(v & 63),
            // Overwrite one byte of one section.
            6 | 7 | 8 => {
                if !sections.is_empty() {
                    let s = (v as usize >> 8) % sections.len();
                    let bytes = &mut sections[s].1;
                    if !bytes.is_empty() {
                        let at = (v as usize >> 12) % bytes.len();
                        bytes[at] = v as u8;
                    }
                }
            }
            // Overwrite one u32 word of one section with a small or extreme number.
            9 => {
                if !sections.is_empty() {
                    let s = (v as usize) % sections.len();
                    let words = sections[s].1.len() / 4;
                    if let (Some(at), Some(x)) = (words.checked_sub(1).map(|w| (v as usize >> 4) % (w + 1)), e.u32()) {
                        sections[s].1[at * 4..at * 4 + 4].copy_from_slice(&x.to_le_bytes());
                    }
                }
            }
            // Truncate, drop or re-tag a section.
            10 => {
                if !sections.is_empty() {
                    let s = (v as usize) % sections.len();
                    match (v >> 8) % 3 {
                        0 => {
                            let len = sections[s].1.len();
                            sections[s].1.truncate((v as usize >> 10) % (len + 1));
                        }
                        1 => {
                            sections.remove(s);
                        }
                        _ => sections[s].0 = (v >> 10) % 16,
                    }
                }
            }
            // The rest is the metadata JSON.
            _ => {
                meta_json = Some(e.0.to_vec());
                break;
            }
        }
    }
    let meta_json = meta_json.unwrap_or_else(|| serde_json::to_vec(&meta).unwrap_or_default());
    encode(&meta_json, &sections)
}

fn exercise(ix: &SegmentIndex, segment: &Segment) {
    let _ = ix.memory();
    let meta = ix.meta();
    let n = meta.nodes as usize;
    let dim = segment.dim();
    let q: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).cos()).collect();
    let zero = vec![0f32; dim];
    for (k, ef) in [(1, 1), (5, 16), (100, 64)] {
        for query in [&q, &zero] {
            let hits = ix.search(segment, query, k, ef, &|_| true).expect("search");
            assert!(hits.len() <= k && hits.iter().all(|c| (c.id as usize) < n));
            let _ = ix.search(segment, query, k, ef, &|i| i % 2 == 0);
        }
    }
    let _ = ix.exact(segment, &q, 0..n as u32);
    let filter = Filter::parse(r#"a = 1 or (b in ["v2"] and not t = "y") or t > 30"#).expect("filter parses");
    if let Ok(bits) = ix.payload().evaluate(&filter) {
        let _ = ix.search(segment, &q, 5, 16, &|i| bits.get(i));
        let terms = tokenize("common word1 text");
        let mut stats = Bm25Stats::new();
        stats.add_index(ix.bm25(), &terms);
        for k in [1, 10] {
            let _ = ix.bm25().search(&terms, &stats, k, None);
            let _ = ix.bm25().search(&terms, &stats, k, Some(&bits));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let case = &cases()[usize::from(sel) % 4];
    let file = match (sel / 4) % 3 {
        0 => rest.to_vec(),
        1 => {
            let mut b = rest.to_vec();
            fix_checksums(&mut b);
            b
        }
        _ => edited(case, rest),
    };
    let path = PathBuf::from("fuzz.idx");
    if let Ok(ix) = SegmentIndex::from_mapped(path, Mapped::new(file), &case.segment) {
        exercise(&ix, &case.segment);
    }
});
