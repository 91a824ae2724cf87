//! Parquet export of a snapshot (arrow-rs): `id`, `vector` (fixed-size list of f32),
//! `text` and `metadata` (JSON text).

use crate::error::{Error, Result};
use crate::snapshot::Snapshot;
use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::path::Path;
use std::sync::Arc;

const ROWS_PER_BATCH: usize = 8192;

/// Writes every live record of `snap` to a Parquet file; returns the row count.
pub fn export_parquet(snap: &Snapshot, path: &Path, progress: &mut dyn FnMut(u64)) -> Result<u64> {
    let dim = snap.dim();
    let dim_i32 = i32::try_from(dim).map_err(|_| Error::InvalidInput("dimension too large".into()))?;
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("vector", DataType::FixedSizeList(item.clone(), dim_i32), false),
        Field::new("text", DataType::Utf8, true),
        Field::new("metadata", DataType::Utf8, true),
    ]));
    let file = fs_err::File::create(path).map_err(|e| Error::io(path, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .build();
    let parquet_err = |e: parquet::errors::ParquetError| Error::io(path, std::io::Error::other(e));
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet_err)?;
    let mut rows = 0u64;
    let mut records = snap.scan(None).peekable();
    while records.peek().is_some() {
        let mut ids = StringBuilder::new();
        let mut vectors = FixedSizeListBuilder::new(Float32Builder::with_capacity(ROWS_PER_BATCH * dim), dim_i32)
            .with_field(item.clone());
        let mut texts = StringBuilder::new();
        let mut metas = StringBuilder::new();
        for r in records.by_ref().take(ROWS_PER_BATCH) {
            let r = r?;
            ids.append_value(&r.id);
            vectors.values().append_slice(&r.vector);
            vectors.append(true);
            texts.append_option(r.text.as_deref());
            metas.append_option(r.metadata.as_ref().map(|m| serde_json::Value::Object(m.clone()).to_string()));
            rows += 1;
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(ids.finish()),
            Arc::new(vectors.finish()),
            Arc::new(texts.finish()),
            Arc::new(metas.finish()),
        ];
        let batch =
            RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::io(path, std::io::Error::other(e)))?;
        writer.write(&batch).map_err(parquet_err)?;
        progress(rows);
    }
    let file = writer.into_inner().map_err(parquet_err)?;
    file.sync_all().map_err(|e| Error::io(path, e))?;
    Ok(rows)
}
