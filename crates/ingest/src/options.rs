//! [`Format`] and [`IngestOptions`].

use crate::error::{Error, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Default records per batch (one `embed` call and one atomic upsert each).
pub const DEFAULT_BATCH_SIZE: usize = 1000;
/// Largest accepted batch size; bounds the memory of one batch and one WAL frame.
pub const MAX_BATCH_SIZE: usize = 100_000;

/// An input format. Every reader streams (memory is bounded by one line, one
/// Parquet record batch, or one tensor row) and names the file, line or row, and
/// field of a bad row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line (`.jsonl`, `.ndjson`); blank lines are skipped, a
    /// UTF-8 BOM is ignored. The id field is a string or an integer; the vector field
    /// an array of numbers; the text field a string; the metadata field an object;
    /// every other key joins the metadata (the metadata object's keys win). `null`
    /// is the same as absent. Positions are lines from 1; a syntax error also names
    /// the column.
    Jsonl,
    /// Comma-separated values with a header row (`.csv`, RFC 4180 quoting). Columns
    /// are matched by header name: id, text, vector (a JSON array in the cell),
    /// metadata (a JSON object in the cell); every other column joins the metadata,
    /// as an integer or a number when the cell parses as a finite one, else as a
    /// string. Empty cells are absent values. Positions are the line where the
    /// record starts.
    Csv,
    /// Apache Parquet (`.parquet`, `.pq`), read record batch by record batch. id:
    /// Utf8 / LargeUtf8 / Utf8View or an integer column; vector: FixedSizeList, List
    /// or LargeList of Float16 / Float32 / Float64; text: a string column; metadata:
    /// a string column of JSON objects; every other column joins the metadata
    /// (booleans, integers and finite floats as JSON values, strings as strings,
    /// dates, timestamps, decimals and nested values as their display text; nulls
    /// left out). Positions are rows from 0. Reads what `export_parquet` writes.
    Parquet,
    /// A 2-D F32, F64, F16 or BF16 tensor in a safetensors file (`.safetensors`):
    /// the one named by [`IngestOptions::tensor`], else the only 2-D tensor. One
    /// record per row; ids from [`IngestOptions::ids_file`] or `{file_stem}-{row}`.
    Safetensors,
    /// A 2-D NumPy array (`.npy`, format versions 1–3) of float16, float32 or
    /// float64, little- or big-endian, C order. Ids as for safetensors.
    Npy,
    /// A folder of image or audio files (media ingestion), walked recursively in sorted
    /// path order: each file with one of [`IngestOptions::media_extensions`] is a record
    /// whose id is its path relative to the folder; other files are passed over. Chosen
    /// whenever the input is a folder. Positions are files from 0.
    Folder,
}

impl Format {
    /// Every format, in a stable order.
    pub const ALL: [Format; 5] = [Format::Jsonl, Format::Csv, Format::Parquet, Format::Safetensors, Format::Npy];

    /// The format a file's extension names (case-insensitive), if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "jsonl" | "ndjson" => Format::Jsonl,
            "csv" => Format::Csv,
            "parquet" | "pq" => Format::Parquet,
            "safetensors" => Format::Safetensors,
            "npy" => Format::Npy,
            _ => return None,
        })
    }

    /// The format's name as [`FromStr`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
            Format::Safetensors => "safetensors",
            Format::Npy => "npy",
            Format::Folder => "folder",
        }
    }

    /// True for formats whose rows are lines (positions are 1-based lines).
    pub fn is_line_based(self) -> bool {
        matches!(self, Format::Jsonl | Format::Csv)
    }

    /// True for tensor formats (vectors only; ids from a sidecar file or generated).
    pub fn is_tensor(self) -> bool {
        matches!(self, Format::Safetensors | Format::Npy)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Format> {
        match s.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            "parquet" => Ok(Format::Parquet),
            "safetensors" => Ok(Format::Safetensors),
            "npy" => Ok(Format::Npy),
            "folder" => Ok(Format::Folder),
            _ => Err(Error::Options(format!(
                "unknown format {s:?}: expected one of jsonl, ndjson, csv, parquet, safetensors, npy, folder"
            ))),
        }
    }
}

/// How to read an input file and turn it into records.
///
/// Construct with [`Default`] and set the fields that differ:
///
/// ```
/// let mut opts = kernelize_ingest::IngestOptions::default();
/// opts.text_field = "body".into();
/// opts.chunk_tokens = Some(128);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestOptions {
    /// The input format; `None` takes it from the file extension.
    pub format: Option<Format>,
    /// Field (JSON key, CSV or Parquet column) holding the record id. Default `id`.
    pub id_field: String,
    /// Field holding the vector (JSON array of numbers; in CSV a JSON array string;
    /// in Parquet a list of floats). Default `vector`.
    pub vector_field: String,
    /// Field holding the text. Default `text`.
    pub text_field: String,
    /// Field holding a metadata object (in CSV and Parquet: JSON object text).
    /// Default `metadata`. Other fields not used as id, vector or text are merged
    /// into metadata too; keys of this object win over them.
    pub metadata_field: String,
    /// Give rows without an id the id `{file_stem}-{line}` (text formats) or
    /// `{file_stem}-{row}` (Parquet) instead of failing. Default `false`.
    pub generate_ids: bool,
    /// safetensors: the 2-D tensor to read; `None` takes the only 2-D tensor.
    pub tensor: Option<String>,
    /// safetensors and `.npy`: a text file with one id per line, one line per row;
    /// `None` gives rows the ids `{file_stem}-{row}`.
    pub ids_file: Option<PathBuf>,
    /// Split texts of more than this many tokens into chunks of at most this many
    /// (see [`Embedder::chunk`](kernelize_embed::Embedder::chunk)). Applies to texts
    /// embedded here, not to rows that bring their own vector. Default `None`.
    pub chunk_tokens: Option<usize>,
    /// Tokens shared by consecutive chunks; `None` is `chunk_tokens / 8`.
    pub chunk_overlap: Option<usize>,
    /// Records per batch: one `embed` call and one atomic upsert each. Default 1000,
    /// at most [`MAX_BATCH_SIZE`].
    pub batch_size: usize,
    /// Media ingestion ([`crate::ingest_media`]): the field holding each row's image or
    /// audio file — a path (JSONL, CSV, a Parquet string column; relative paths are
    /// resolved against the input file's folder) or the bytes (a Parquet binary column).
    /// Set by `ingest_media` when unset; folders need no field.
    pub media_field: Option<String>,
    /// Media ingestion: the file extensions a folder walk picks up (set by
    /// `ingest_media` from the encoder's modality).
    pub media_extensions: Vec<String>,
    /// Media ingestion: what a file that cannot be read or encoded does — stop the load
    /// (the default) or be skipped and reported in the summary.
    pub bad_media: BadMedia,
    /// Media ingestion: keep each file beside the collection
    /// ([`kernelize_store::Collection::put_media`]) so the server can serve it back
    /// (the console's thumbnails and players), before its record is written.
    pub keep_media: bool,
}

/// What a bad media file does to a media ingestion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BadMedia {
    /// Stop with an error naming the file; what was acknowledged before stays.
    #[default]
    Stop,
    /// Leave the file out, count it and report it in the summary.
    Skip,
}

impl FromStr for BadMedia {
    type Err = Error;
    fn from_str(s: &str) -> Result<BadMedia> {
        match s.to_ascii_lowercase().as_str() {
            "stop" => Ok(BadMedia::Stop),
            "skip" => Ok(BadMedia::Skip),
            _ => Err(Error::Options(format!("unknown bad-media policy {s:?}: expected stop or skip"))),
        }
    }
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            format: None,
            id_field: "id".into(),
            vector_field: "vector".into(),
            text_field: "text".into(),
            metadata_field: "metadata".into(),
            generate_ids: false,
            tensor: None,
            ids_file: None,
            chunk_tokens: None,
            chunk_overlap: None,
            batch_size: DEFAULT_BATCH_SIZE,
            media_field: None,
            media_extensions: Vec::new(),
            bad_media: BadMedia::Stop,
            keep_media: false,
        }
    }
}

impl IngestOptions {
    /// The format for `path`: the explicit [`format`](Self::format), else the extension's.
    pub fn format_for(&self, path: &Path) -> Result<Format> {
        self.format.or_else(|| Format::from_path(path)).ok_or_else(|| {
            Error::Options(format!(
                "cannot tell the format of {} from its extension (expected .jsonl, .ndjson, .csv, .parquet, \
                 .safetensors or .npy); name the format explicitly",
                path.display()
            ))
        })
    }

    /// The chunk overlap in effect.
    pub fn overlap(&self) -> Option<usize> {
        self.chunk_tokens.map(|n| self.chunk_overlap.unwrap_or(n / 8))
    }

    /// Checks the options against each other and against `format`.
    pub fn validate(&self, format: Format) -> Result<()> {
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(Error::Options(format!("batch size {} is not in 1..={MAX_BATCH_SIZE}", self.batch_size)));
        }
        for (name, v) in [
            ("id field", &self.id_field),
            ("vector field", &self.vector_field),
            ("text field", &self.text_field),
            ("metadata field", &self.metadata_field),
        ] {
            if v.is_empty() {
                return Err(Error::Options(format!("the {name} name is empty")));
            }
        }
        if let Some(n) = self.chunk_tokens {
            if n == 0 {
                return Err(Error::Options("chunk tokens must be at least 1".into()));
            }
            let overlap = self.chunk_overlap.unwrap_or(n / 8);
            if overlap >= n {
                return Err(Error::Options(format!("chunk overlap {overlap} must be below chunk tokens {n}")));
            }
        } else if self.chunk_overlap.is_some() {
            return Err(Error::Options("a chunk overlap needs chunk tokens".into()));
        }
        if !format.is_tensor() {
            if self.ids_file.is_some() {
                return Err(Error::Options(format!("an ids file applies to safetensors and npy, not {format}")));
            }
            if self.tensor.is_some() {
                return Err(Error::Options(format!("a tensor name applies to safetensors, not {format}")));
            }
        } else if format == Format::Npy && self.tensor.is_some() {
            return Err(Error::Options("a tensor name applies to safetensors, not npy".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_extension_and_name() {
        assert_eq!(Format::from_path(Path::new("a/b.JSONL")), Some(Format::Jsonl));
        assert_eq!(Format::from_path(Path::new("b.ndjson")), Some(Format::Jsonl));
        assert_eq!(Format::from_path(Path::new("b.pq")), Some(Format::Parquet));
        assert_eq!(Format::from_path(Path::new("b.json")), None);
        assert_eq!(Format::from_path(Path::new("npy")), None);
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
        }
        assert!("xml".parse::<Format>().is_err());
        let e = IngestOptions::default().format_for(Path::new("x.txt")).unwrap_err().to_string();
        assert!(e.contains("x.txt"), "{e}");
    }

    #[test]
    fn validate_rejects_bad_combinations() {
        let mut o = IngestOptions::default();
        assert!(o.validate(Format::Jsonl).is_ok());
        o.batch_size = 0;
        assert!(o.validate(Format::Jsonl).is_err());
        o.batch_size = 10;
        o.chunk_tokens = Some(8);
        assert_eq!(o.overlap(), Some(1));
        o.chunk_overlap = Some(8);
        assert!(o.validate(Format::Jsonl).is_err());
        o.chunk_overlap = Some(0);
        assert!(o.validate(Format::Jsonl).is_ok());
        o.ids_file = Some("ids.txt".into());
        assert!(o.validate(Format::Csv).is_err());
        assert!(o.validate(Format::Npy).is_ok());
        o.tensor = Some("t".into());
        assert!(o.validate(Format::Npy).is_err());
        assert!(o.validate(Format::Safetensors).is_ok());
    }
}
