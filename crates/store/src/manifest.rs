//! The manifest: the one file that names a collection's configuration, its live segments
//! and the sequence number up to which the WAL is folded into them. Replaced atomically.

use crate::codec::{Reader, masked_crc, put_u32};
use crate::error::{Error, IoContext, Result};
use crate::storage::{Storage, write_atomic};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Magic bytes opening a manifest file.
pub const MANIFEST_MAGIC: [u8; 8] = *b"KZMANIF1";
/// Largest manifest accepted.
const MAX_MANIFEST_BYTES: usize = 64 << 20;

/// Distance metric of a collection, fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity.
    Cosine,
    /// Dot product.
    Dot,
    /// Euclidean distance.
    L2,
}

impl FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Metric> {
        match s.to_ascii_lowercase().as_str() {
            "cosine" => Ok(Metric::Cosine),
            "dot" => Ok(Metric::Dot),
            "l2" | "euclid" | "euclidean" => Ok(Metric::L2),
            _ => Err(Error::InvalidInput(format!("unknown metric {s:?}: expected cosine, dot or l2"))),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Metric::Cosine => "cosine",
            Metric::Dot => "dot",
            Metric::L2 => "l2",
        })
    }
}

/// How a collection's segments are indexed for search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexSettings {
    /// HNSW links per node (layer 0 keeps twice as many).
    pub m: usize,
    /// HNSW beam width while building.
    pub ef_construction: usize,
    /// What the graph walk reads: full vectors or compact codes (re-ranked with the full
    /// vectors, which then stay on disk in the segment file).
    pub quantization: Quantization,
}

impl Default for IndexSettings {
    fn default() -> IndexSettings {
        IndexSettings { m: 16, ef_construction: 200, quantization: Quantization::None }
    }
}

/// How vectors are held in memory for the graph walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// Full-precision f32, read from the segment itself.
    None,
    /// Scalar 8-bit per dimension.
    Int8,
    /// RaBitQ, 1 bit per dimension.
    Rabitq1,
    /// RaBitQ, 4 bits per dimension.
    Rabitq4,
}

impl FromStr for Quantization {
    type Err = Error;
    fn from_str(s: &str) -> Result<Quantization> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "f32" => Ok(Quantization::None),
            "int8" | "sq8" => Ok(Quantization::Int8),
            "rabitq1" | "rabitq" => Ok(Quantization::Rabitq1),
            "rabitq4" => Ok(Quantization::Rabitq4),
            _ => {
                Err(Error::InvalidInput(format!("unknown quantization {s:?}: expected none, int8, rabitq1 or rabitq4")))
            }
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Quantization::None => "none",
            Quantization::Int8 => "int8",
            Quantization::Rabitq1 => "rabitq1",
            Quantization::Rabitq4 => "rabitq4",
        })
    }
}

/// What a collection is, fixed at creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionConfig {
    /// Vector dimension.
    pub dim: usize,
    /// Distance metric.
    pub metric: Metric,
    /// Keep obsolete WAL files in `wal-archive/` for point-in-time restore.
    #[serde(default)]
    pub wal_archive: bool,
    /// Search index settings.
    #[serde(default)]
    pub index: IndexSettings,
    /// The encoder that turns this collection's content (texts, images, audio) into its
    /// vectors, chosen at creation; absent in manifests written before modalities existed
    /// and for collections that only ever receive vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<EncoderRecord>,
}

impl CollectionConfig {
    /// A configuration with the archive off.
    pub fn new(dim: usize, metric: Metric) -> CollectionConfig {
        CollectionConfig { dim, metric, wal_archive: false, index: IndexSettings::default(), encoder: None }
    }

    /// The modality of the collection's content: its encoder's, text when it has none.
    pub fn modality(&self) -> Modality {
        self.encoder.as_ref().map_or(Modality::Text, |e| e.modality)
    }
}

/// What kind of content a collection's vectors encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    /// Text (sentence embeddings).
    Text,
    /// Images (JPEG, PNG, WebP).
    Image,
    /// Audio (WAV, FLAC, MP3, Ogg Vorbis): voices.
    Audio,
}

impl FromStr for Modality {
    type Err = Error;
    fn from_str(s: &str) -> Result<Modality> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Modality::Text),
            "image" => Ok(Modality::Image),
            "audio" => Ok(Modality::Audio),
            _ => Err(Error::InvalidInput(format!("unknown modality {s:?}: expected text, image or audio"))),
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Modality::Text => "text",
            Modality::Image => "image",
            Modality::Audio => "audio",
        })
    }
}

/// The encoder a collection (or a kernel) was made with: enough to refuse a query
/// vector from a different model and to encode queries the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderRecord {
    /// Text, image or audio.
    pub modality: Modality,
    /// The model, as `kernelize models list` names it (e.g. `EfficientNet-Lite0`).
    pub model: String,
    /// Output dimension.
    pub dim: usize,
    /// The preprocessing, in words (resize, crop, normalisation; resampling, mel bands).
    pub preprocessing: String,
}

/// A live segment as the manifest names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRef {
    /// Segment number (file `seg/{id:08}.seg`).
    pub id: u64,
    /// Records inside, tombstones included.
    pub count: u64,
    /// Lowest sequence number inside.
    pub min_seq: u64,
    /// Highest sequence number inside.
    pub max_seq: u64,
    /// File size.
    pub bytes: u64,
}

/// Contents of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (1).
    pub format: u32,
    /// The collection's configuration.
    pub config: CollectionConfig,
    /// Every write with a sequence number <= this is in the segments.
    pub flushed_seq: u64,
    /// Number for the next segment file.
    pub next_segment_id: u64,
    /// Live segments, newest first.
    pub segments: Vec<SegmentRef>,
}

/// File name of segment `id`.
pub fn segment_file_name(id: u64) -> String {
    format!("{id:08}.seg")
}

impl Manifest {
    /// A manifest for a new, empty collection.
    pub fn new(config: CollectionConfig) -> Manifest {
        Manifest { format: 1, config, flushed_seq: 0, next_segment_id: 1, segments: Vec::new() }
    }

    /// Encodes: magic, u32 length, u32 masked crc32c, JSON body.
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec_pretty(self).unwrap_or_default();
        let mut out = MANIFEST_MAGIC.to_vec();
        put_u32(&mut out, body.len() as u32);
        put_u32(&mut out, masked_crc(&body));
        out.extend_from_slice(&body);
        out
    }

    /// Decodes and validates manifest bytes read from `path`.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let bad = |offset: u64, reason: String| Err(Error::corrupt(path, offset, reason));
        if bytes.len() < 16 || bytes[..8] != MANIFEST_MAGIC {
            return bad(0, "not a Kernelize manifest (bad magic or too short)".into());
        }
        let mut r = Reader::new(&bytes[8..16], 8);
        let (Ok(len), Ok(crc)) = (r.u32("len"), r.u32("crc")) else {
            return bad(8, "truncated header".into());
        };
        let len = len as usize;
        if len > MAX_MANIFEST_BYTES || bytes.len() - 16 != len {
            return bad(8, format!("body length {len} does not match file length {}", bytes.len()));
        }
        let body = &bytes[16..];
        if masked_crc(body) != crc {
            return bad(12, "checksum mismatch".into());
        }
        let m: Manifest = match serde_json::from_slice(body) {
            Ok(m) => m,
            Err(e) => return bad(16, format!("invalid JSON: {e}")),
        };
        if m.format != 1 {
            return bad(16, format!("unsupported manifest format {}", m.format));
        }
        if m.config.dim == 0 || m.config.dim > crate::record::MAX_DIM {
            return bad(16, format!("dimension {} out of range", m.config.dim));
        }
        if m.segments.iter().any(|s| s.id >= m.next_segment_id) {
            return bad(16, "a segment id is not below next_segment_id".into());
        }
        Ok(m)
    }

    /// Reads and validates the manifest at `path`.
    pub fn load(storage: &dyn Storage, path: &Path) -> Result<Manifest> {
        let bytes = match storage.read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::missing_manifest(path)),
            Err(e) => return Err(Error::io(path, e)),
        };
        Manifest::decode(&bytes, path)
    }

    /// Writes the manifest atomically (temp file, fsync, rename, directory fsync).
    pub fn store(&self, storage: &dyn Storage, path: &Path) -> Result<()> {
        write_atomic(storage, path, &self.encode()).at(path)
    }

    /// Like [`Manifest::store`], and when it fails says whether the new manifest is in
    /// place anyway (the rename happened, only the directory fsync failed) and removes the
    /// temporary file when it is not. `Err((error, true))`: the new manifest is live.
    pub(crate) fn store_or_clean(&self, storage: &dyn Storage, path: &Path) -> Result<(), (Error, bool)> {
        let bytes = self.encode();
        match write_atomic(storage, path, &bytes) {
            Ok(()) => Ok(()),
            Err(e) => {
                let tmp = path.with_extension("tmp");
                let _ = storage.remove_file(&tmp);
                let live = storage.read(path).is_ok_and(|b| b == bytes);
                Err((Error::io(path, e), live))
            }
        }
    }
}
