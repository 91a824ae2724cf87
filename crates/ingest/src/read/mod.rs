//! Readers: each input format streamed as [`Row`]s that carry their [`Position`].

mod csv;
mod dense;
mod folder;
mod jsonl;
mod npy;
mod parquet;
mod safetensors;

use crate::error::{Error, Location, Position, Result};
use crate::options::{Format, IngestOptions};
use kernelize_store::Metadata;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Longest line of a JSONL or CSV file, in bytes. A record's text may be 16 MiB
/// and its metadata 1 MiB; a vector of 65,536 dimensions is about 1.5 MiB of JSON.
pub const MAX_LINE_BYTES: usize = 32 << 20;

/// One input row, before embedding and chunking.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Where the row is in its file.
    pub position: Position,
    /// The record id (from the id field, the ids file, or generated).
    pub id: String,
    /// The vector, when the row has one (taken as is; dimension and finiteness are
    /// checked against the collection by the pipeline).
    pub vector: Option<Vec<f32>>,
    /// The text, when the row has one.
    pub text: Option<String>,
    /// Metadata: the metadata field's object merged with the row's other fields.
    pub metadata: Option<Metadata>,
    /// The image or audio file of the row, in media ingestion
    /// ([`IngestOptions::media_field`]).
    pub media: Option<MediaRef>,
}

/// Where a row's image or audio file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaRef {
    /// A file: a folder's entry, or a path field resolved against the input file's folder.
    Path(PathBuf),
    /// The bytes themselves (a Parquet binary column).
    Bytes(Vec<u8>),
}

/// The reader behind a [`Reader`]; `Ok(None)` at the end.
pub(crate) trait Source: Send {
    fn next_row(&mut self) -> Result<Option<Row>>;
    /// Bytes of the input consumed so far (an estimate for Parquet).
    fn bytes_read(&self) -> u64;
    /// Rows in the file, when the format says so up front.
    fn total_rows(&self) -> Option<u64>;
}

/// A streaming reader of one input file, yielding [`Row`]s in file order.
///
/// It stops (yields `None`) after the first error. Memory stays bounded by one
/// line (text formats), one record batch (Parquet) or one row (tensor formats).
pub struct Reader {
    path: PathBuf,
    format: Format,
    total_bytes: u64,
    source: Box<dyn Source>,
    done: bool,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("path", &self.path).field("format", &self.format).finish_non_exhaustive()
    }
}

impl Reader {
    /// Opens `path` in the format [`IngestOptions::format_for`] picks, reading and
    /// checking its header or schema.
    pub fn open(path: &Path, opts: &IngestOptions) -> Result<Reader> {
        let meta = fs_err::metadata(path).map_err(|e| Error::io(path, e))?;
        let format = if meta.is_dir() { Format::Folder } else { opts.format_for(path)? };
        opts.validate(format)?;
        let total_bytes = meta.len();
        let ctx = Ctx::new(path, opts);
        let source: Box<dyn Source> = match format {
            Format::Folder => {
                let (source, bytes) = folder::FolderSource::open(ctx, opts)?;
                return Ok(Reader {
                    path: path.to_path_buf(),
                    format,
                    total_bytes: bytes,
                    source: Box::new(source),
                    done: false,
                });
            }
            Format::Jsonl => Box::new(jsonl::JsonlSource::open(ctx)?),
            Format::Csv => Box::new(csv::CsvSource::open(ctx)?),
            Format::Parquet => Box::new(parquet::ParquetSource::open(ctx, total_bytes)?),
            Format::Safetensors => Box::new(safetensors::open(ctx, opts.tensor.as_deref(), total_bytes)?),
            Format::Npy => Box::new(npy::open(ctx, total_bytes)?),
        };
        Ok(Reader { path: path.to_path_buf(), format, total_bytes, source, done: false })
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Bytes consumed so far (estimated from rows for Parquet).
    pub fn bytes_read(&self) -> u64 {
        self.source.bytes_read().min(self.total_bytes)
    }

    /// The file's size in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Rows in the file when the format records it (Parquet, safetensors, `.npy`).
    pub fn total_rows(&self) -> Option<u64> {
        self.source.total_rows()
    }
}

impl Iterator for Reader {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        if self.done {
            return None;
        }
        match self.source.next_row() {
            Ok(Some(row)) => Some(Ok(row)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// What every reader needs: the path, the field names, the id rules.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub path: PathBuf,
    /// File stem for generated ids.
    pub stem: String,
    pub id_field: String,
    pub vector_field: String,
    pub text_field: String,
    pub metadata_field: String,
    pub generate_ids: bool,
    pub ids_file: Option<PathBuf>,
    /// Media ingestion: the field holding each row's file path (or bytes, in Parquet).
    pub media_field: Option<String>,
    /// The folder relative media paths are resolved against (the input file's).
    pub base_dir: PathBuf,
}

impl Ctx {
    /// A columnar file must have a text column or a vector column (a media column in media
    /// ingestion); `columns` lists what it has, for the error.
    pub fn require_content(
        &self,
        has_vector: bool,
        has_text: bool,
        has_media: bool,
        columns: impl Fn() -> String,
    ) -> Result<()> {
        if let Some(media) = &self.media_field {
            if has_media {
                return Ok(());
            }
            return Err(Error::file(&self.path, format!("no media column {media:?} (columns: {})", columns())));
        }
        if has_vector || has_text {
            return Ok(());
        }
        Err(Error::file(
            &self.path,
            format!(
                "neither a text column {:?} nor a vector column {:?} (columns: {})",
                self.text_field,
                self.vector_field,
                columns()
            ),
        ))
    }

    pub fn new(path: &Path, opts: &IngestOptions) -> Ctx {
        Ctx {
            path: path.to_path_buf(),
            stem: path.file_stem().map_or_else(|| "row".into(), |s| s.to_string_lossy().into_owned()),
            id_field: opts.id_field.clone(),
            vector_field: opts.vector_field.clone(),
            text_field: opts.text_field.clone(),
            metadata_field: opts.metadata_field.clone(),
            generate_ids: opts.generate_ids,
            ids_file: opts.ids_file.clone(),
            media_field: opts.media_field.clone(),
            base_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    /// A media path from a row, resolved against the input file's folder.
    pub fn media_path(&self, position: Position, field: &str, path: &str) -> Result<MediaRef> {
        if path.is_empty() {
            return Err(self.field_err(position, field, "the media path is empty"));
        }
        Ok(MediaRef::Path(self.base_dir.join(path)))
    }

    pub fn loc(&self, position: Position) -> Location {
        Location::new(&self.path, position)
    }

    pub fn field_err(&self, position: Position, field: &str, reason: impl Into<String>) -> Error {
        Error::row(self.loc(position).with_field(field), reason)
    }

    /// The id of a row without one: generated when the options allow, else an error.
    pub fn missing_id(&self, position: Position) -> Result<String> {
        if self.generate_ids {
            Ok(format!("{}-{}", self.stem, position.line_or_row()))
        } else {
            Err(self.field_err(
                position,
                &self.id_field,
                "missing id (set another id field, or let ids be generated from the file name and line/row)",
            ))
        }
    }
}

/// A JSON value's type name for messages.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An id from a JSON value: a non-empty string or an integer. `None` for null.
pub(crate) fn json_id(ctx: &Ctx, position: Position, v: Value) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Err(ctx.field_err(position, &ctx.id_field, "id is empty")),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        other => Err(ctx.field_err(
            position,
            &ctx.id_field,
            format!("id must be a string or an integer, got {}", json_type(&other)),
        )),
    }
}

/// A vector from a JSON value: an array of numbers. `None` for null. Values are
/// narrowed to f32; finiteness is checked later, with the dimension.
pub(crate) fn json_vector(ctx: &Ctx, position: Position, v: Value) -> Result<Option<Vec<f32>>> {
    match v {
        Value::Null => Ok(None),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, x) in items.iter().enumerate() {
                match x.as_f64() {
                    Some(f) => out.push(f as f32),
                    None => {
                        return Err(ctx.field_err(
                            position,
                            &ctx.vector_field,
                            format!("vector[{i}] is {}, expected a number", json_type(x)),
                        ));
                    }
                }
            }
            Ok(Some(out))
        }
        other => Err(ctx.field_err(
            position,
            &ctx.vector_field,
            format!("expected an array of numbers, got {}", json_type(&other)),
        )),
    }
}

/// Text from a JSON value. `None` for null.
pub(crate) fn json_text(ctx: &Ctx, position: Position, v: Value) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        other => Err(ctx.field_err(position, &ctx.text_field, format!("expected a string, got {}", json_type(&other)))),
    }
}

/// A metadata object from a JSON value. `None` for null.
pub(crate) fn json_metadata(ctx: &Ctx, position: Position, v: Value) -> Result<Option<Metadata>> {
    match v {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(m)),
        other => Err(ctx.field_err(
            position,
            &ctx.metadata_field,
            format!("expected a JSON object, got {}", json_type(&other)),
        )),
    }
}

/// A metadata object from JSON text (CSV cells, Parquet strings).
pub(crate) fn json_metadata_text(ctx: &Ctx, position: Position, s: &str) -> Result<Option<Metadata>> {
    let v: Value = serde_json::from_str(s)
        .map_err(|e| ctx.field_err(position, &ctx.metadata_field, format!("invalid JSON: {}", json_reason(&e))))?;
    json_metadata(ctx, position, v)
}

/// A serde_json error's message without its " at line L column C" suffix.
pub(crate) fn json_reason(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg,
    }
}

/// Merges the metadata field's object over the row's other fields; `None` when empty.
pub(crate) fn merge_metadata(mut rest: Metadata, explicit: Option<Metadata>) -> Option<Metadata> {
    if let Some(m) = explicit {
        rest.extend(m);
    }
    (!rest.is_empty()).then_some(rest)
}

/// A scalar cell as metadata: an integer or finite number when it parses as one,
/// else the string.
pub(crate) fn scalar_value(s: &str) -> Value {
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = s.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_cells() {
        assert_eq!(scalar_value("12"), Value::from(12));
        assert_eq!(scalar_value("-1.5e3"), Value::from(-1500.0));
        assert_eq!(scalar_value("NaN"), Value::from("NaN"));
        assert_eq!(scalar_value("inf"), Value::from("inf"));
        assert_eq!(scalar_value("1e999"), Value::from("1e999"));
        assert_eq!(scalar_value("abc"), Value::from("abc"));
    }

    #[test]
    fn explicit_metadata_wins() {
        let mut rest = Metadata::new();
        rest.insert("a".into(), Value::from(1));
        rest.insert("b".into(), Value::from(1));
        let mut m = Metadata::new();
        m.insert("b".into(), Value::from(2));
        let out = merge_metadata(rest, Some(m)).unwrap();
        assert_eq!(out["a"], Value::from(1));
        assert_eq!(out["b"], Value::from(2));
        assert_eq!(merge_metadata(Metadata::new(), None), None);
    }
}
