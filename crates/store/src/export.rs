//! Parquet export of a snapshot (arrow-rs), and the Arrow record layout it shares with
//! the Python package: `id`, `vector` (fixed-size list of f32), `text` and `metadata`
//! (JSON text).

use crate::error::{Error, Result};
use crate::record::Record;
use crate::snapshot::Snapshot;
use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::path::Path;
use std::sync::Arc;

const ROWS_PER_BATCH: usize = 8192;

/// The Arrow schema of exported records: `id` (utf8), `vector` (fixed-size list of
/// `dim` f32; absent when `vectors` is false), `text` and `metadata` (JSON text), nullable.
pub fn arrow_schema(dim: usize, vectors: bool) -> Result<Arc<Schema>> {
    let dim_i32 = i32::try_from(dim).map_err(|_| Error::InvalidInput("dimension too large".into()))?;
    let mut fields = vec![Field::new("id", DataType::Utf8, false)];
    if vectors {
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        fields.push(Field::new("vector", DataType::FixedSizeList(item, dim_i32), false));
    }
    fields.push(Field::new("text", DataType::Utf8, true));
    fields.push(Field::new("metadata", DataType::Utf8, true));
    Ok(Arc::new(Schema::new(fields)))
}

/// One Arrow batch of `records` in the layout of [`arrow_schema`] (`schema` is its result).
pub fn arrow_batch(schema: &Arc<Schema>, records: &[Arc<Record>]) -> std::result::Result<RecordBatch, ArrowError> {
    let mut ids = StringBuilder::new();
    let mut texts = StringBuilder::new();
    let mut metas = StringBuilder::new();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(4);
    for r in records {
        ids.append_value(&r.id);
        texts.append_option(r.text.as_deref());
        metas.append_option(r.metadata.as_ref().map(|m| serde_json::Value::Object(m.clone()).to_string()));
    }
    columns.push(Arc::new(ids.finish()));
    if let Ok(field) = schema.field_with_name("vector")
        && let DataType::FixedSizeList(item, dim) = field.data_type()
    {
        let dim = *dim;
        let mut vectors =
            FixedSizeListBuilder::new(Float32Builder::with_capacity(records.len() * dim.max(0) as usize), dim)
                .with_field(item.clone());
        for r in records {
            vectors.values().append_slice(&r.vector);
            vectors.append(true);
        }
        columns.push(Arc::new(vectors.finish()));
    }
    columns.push(Arc::new(texts.finish()));
    columns.push(Arc::new(metas.finish()));
    RecordBatch::try_new(schema.clone(), columns)
}

/// Writes every live record of `snap` to a Parquet file; returns the row count.
pub fn export_parquet(snap: &Snapshot, path: &Path, progress: &mut dyn FnMut(u64)) -> Result<u64> {
    let schema = arrow_schema(snap.dim(), true)?;
    let file = fs_err::File::create(path).map_err(|e| Error::io(path, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .build();
    let parquet_err = |e: parquet::errors::ParquetError| Error::io(path, std::io::Error::other(e));
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet_err)?;
    let mut rows = 0u64;
    let mut records = snap.scan(None).peekable();
    while records.peek().is_some() {
        let chunk = records.by_ref().take(ROWS_PER_BATCH).collect::<Result<Vec<_>>>()?;
        rows += chunk.len() as u64;
        let batch = arrow_batch(&schema, &chunk).map_err(|e| Error::io(path, std::io::Error::other(e)))?;
        writer.write(&batch).map_err(parquet_err)?;
        progress(rows);
    }
    let file = writer.into_inner().map_err(parquet_err)?;
    file.sync_all().map_err(|e| Error::io(path, e))?;
    Ok(rows)
}
