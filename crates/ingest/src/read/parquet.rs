//! Parquet: record batches streamed from the file (one batch of rows in memory at a
//! time), columns mapped by name.
//!
//! - id: Utf8 / LargeUtf8 / Utf8View, or an integer column (written as decimal text);
//! - vector: FixedSizeList, List or LargeList of Float16 / Float32 / Float64;
//! - text: Utf8 / LargeUtf8 / Utf8View;
//! - metadata: a string column of JSON objects;
//! - every other column into metadata: booleans, integers and finite floats as JSON
//!   booleans and numbers, strings as strings, any other type (dates, timestamps,
//!   decimals, nested) as its Arrow display text; nulls are left out;
//! - in media ingestion, the media column: Binary / LargeBinary / BinaryView (the file's
//!   bytes) or a string column (its path, relative to the Parquet file's folder).

use super::{Ctx, MediaRef, Row, Source, json_metadata_text, merge_metadata};
use crate::error::{Error, Position, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Float64Type, Int64Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use kernelize_store::Metadata;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde_json::Value;
use std::collections::VecDeque;

/// Rows decoded per record batch.
const BATCH_ROWS: usize = 1024;
/// Rows decoded per record batch when a binary media column is read (each row may hold
/// a file of up to 64 MiB).
const MEDIA_BATCH_ROWS: usize = 16;

pub(crate) struct ParquetSource {
    ctx: Ctx,
    reader: ParquetRecordBatchReader,
    id: Option<usize>,
    vector: Option<usize>,
    text: Option<usize>,
    metadata: Option<usize>,
    media: Option<usize>,
    others: Vec<(usize, String)>,
    pending: VecDeque<Row>,
    failed: Option<Error>,
    /// Rows decoded into `pending` so far (the index of the next batch's first row).
    decoded: u64,
    yielded: u64,
    total_rows: u64,
    file_len: u64,
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_integer(t: &DataType) -> bool {
    t.is_integer()
}

fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

impl ParquetSource {
    pub fn open(ctx: Ctx, file_len: u64) -> Result<ParquetSource> {
        let file = fs_err::File::open(&ctx.path).map_err(|e| Error::io(&ctx.path, e))?.into_parts().0;
        let builder = guarded(&ctx.path, || ParquetRecordBatchReaderBuilder::try_new(file))?
            .map_err(|e| Error::file(&ctx.path, format!("not a readable Parquet file: {e}")))?;
        let total_rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let schema = builder.schema().clone();
        let find = |name: &str| schema.fields().iter().position(|f| f.name() == name);
        let (id, vector, text, metadata) =
            (find(&ctx.id_field), find(&ctx.vector_field), find(&ctx.text_field), find(&ctx.metadata_field));
        let columns = || {
            schema.fields().iter().map(|f| format!("{:?} ({})", f.name(), f.data_type())).collect::<Vec<_>>().join(", ")
        };
        let bad_type = |name: &str, want: &str, idx: usize| {
            Error::file(
                &ctx.path,
                format!("column {name:?} has type {}; expected {want}", schema.field(idx).data_type()),
            )
        };
        if let Some(i) = id {
            let t = schema.field(i).data_type();
            if !is_string(t) && !is_integer(t) {
                return Err(bad_type(&ctx.id_field, "a string or integer column", i));
            }
        } else if !ctx.generate_ids {
            return Err(Error::file(
                &ctx.path,
                format!("no id column {:?} (columns: {}); name the id column or generate ids", ctx.id_field, columns()),
            ));
        }
        if let Some(i) = vector {
            let ok = match schema.field(i).data_type() {
                DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => is_float(f.data_type()),
                _ => false,
            };
            if !ok {
                return Err(bad_type(&ctx.vector_field, "a list of Float16, Float32 or Float64", i));
            }
        }
        if let Some(i) = text
            && !is_string(schema.field(i).data_type())
        {
            return Err(bad_type(&ctx.text_field, "a string column", i));
        }
        if let Some(i) = metadata
            && !is_string(schema.field(i).data_type())
        {
            return Err(bad_type(&ctx.metadata_field, "a string column of JSON objects", i));
        }
        let media = ctx.media_field.as_deref().and_then(find);
        if let (Some(i), Some(field)) = (media, &ctx.media_field) {
            let t = schema.field(i).data_type();
            if !is_string(t) && !is_binary(t) {
                return Err(bad_type(field, "a binary column (the file's bytes) or a string column (its path)", i));
            }
        }
        ctx.require_content(vector.is_some(), text.is_some(), media.is_some(), columns)?;
        let used = [id, vector, text, metadata, media];
        let others = (0..schema.fields().len())
            .filter(|i| !used.contains(&Some(*i)))
            .map(|i| (i, schema.field(i).name().clone()))
            .collect();
        let reader = guarded(&ctx.path, || {
            builder.with_batch_size(if media.is_some() { MEDIA_BATCH_ROWS } else { BATCH_ROWS }).build()
        })?
        .map_err(|e| Error::file(&ctx.path, format!("cannot read the Parquet file: {e}")))?;
        Ok(ParquetSource {
            ctx,
            reader,
            id,
            vector,
            text,
            metadata,
            media,
            others,
            pending: VecDeque::new(),
            failed: None,
            decoded: 0,
            yielded: 0,
            total_rows,
            file_len,
        })
    }

    /// Decodes one record batch into `pending` (and `failed` at its first bad row).
    fn decode(&mut self, batch: &RecordBatch) -> Result<()> {
        let ctx = &self.ctx;
        let base = self.decoded;
        let at_batch = |e: arrow_schema::ArrowError| {
            Error::file(&ctx.path, format!("cannot convert the batch starting at row {base}: {e}"))
        };
        let as_large_utf8 = |i: Option<usize>| -> Result<Option<ArrayRef>> {
            i.map(|i| arrow_cast::cast(batch.column(i), &DataType::LargeUtf8)).transpose().map_err(at_batch)
        };
        let ids = as_large_utf8(self.id)?;
        let texts = as_large_utf8(self.text)?;
        let metas = as_large_utf8(self.metadata)?;
        let vectors = self.vector.map(|i| batch.column(i));
        let media = self.media.map(|i| batch.column(i));
        let mut others = Vec::with_capacity(self.others.len());
        for (i, name) in &self.others {
            others.push((name, column_values(batch.column(*i)).map_err(at_batch)?));
        }
        let string_at = |col: &Option<ArrayRef>, r: usize| -> Option<String> {
            let a = col.as_ref()?.as_string_opt::<i64>()?;
            (!a.is_null(r)).then(|| a.value(r).to_owned())
        };
        for r in 0..batch.num_rows() {
            let position = Position::Row(base + r as u64);
            let row = (|| -> Result<Row> {
                let id = match string_at(&ids, r) {
                    Some(id) if id.is_empty() => return Err(ctx.field_err(position, &ctx.id_field, "id is empty")),
                    Some(id) => id,
                    None => ctx.missing_id(position)?,
                };
                let vector = match vectors {
                    Some(col) => vector_at(col, r).map_err(|e| ctx.field_err(position, &ctx.vector_field, e))?,
                    None => None,
                };
                let text = string_at(&texts, r);
                let media = match (media, &ctx.media_field) {
                    (Some(col), Some(field)) => media_at(ctx, position, field, col, r)?,
                    _ => None,
                };
                let explicit = match string_at(&metas, r) {
                    Some(s) => json_metadata_text(ctx, position, &s)?,
                    None => None,
                };
                let mut rest = Metadata::new();
                for (name, values) in &others {
                    if let Some(Some(v)) = values.get(r) {
                        rest.insert((*name).clone(), v.clone());
                    }
                }
                Ok(Row { position, id, vector, text, metadata: merge_metadata(rest, explicit), media })
            })();
            match row {
                Ok(row) => self.pending.push_back(row),
                Err(e) => {
                    self.failed = Some(e);
                    break;
                }
            }
        }
        self.decoded += batch.num_rows() as u64;
        Ok(())
    }
}

/// Runs a call into the Parquet decoder, turning a panic on malformed data (the
/// decoder has had such bugs) into an error instead of taking the process down.
fn guarded<T>(path: &std::path::Path, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| Error::file(path, "the Parquet decoder failed on malformed data"))
}

fn is_binary(t: &DataType) -> bool {
    matches!(t, DataType::Binary | DataType::LargeBinary | DataType::BinaryView)
}

/// The media of row `r`: the bytes of a binary column, or a path from a string column.
fn media_at(ctx: &Ctx, position: Position, field: &str, col: &ArrayRef, r: usize) -> Result<Option<MediaRef>> {
    if col.is_null(r) {
        return Ok(None);
    }
    let bytes = if let Some(a) = col.as_binary_opt::<i32>() {
        a.value(r)
    } else if let Some(a) = col.as_binary_opt::<i64>() {
        a.value(r)
    } else if let Some(a) = col.as_binary_view_opt() {
        a.value(r)
    } else if let Some(a) = col.as_string_opt::<i32>() {
        return ctx.media_path(position, field, a.value(r)).map(Some);
    } else if let Some(a) = col.as_string_opt::<i64>() {
        return ctx.media_path(position, field, a.value(r)).map(Some);
    } else if let Some(a) = col.as_string_view_opt() {
        return ctx.media_path(position, field, a.value(r)).map(Some);
    } else {
        return Err(ctx.field_err(position, field, format!("unsupported media column type {}", col.data_type())));
    };
    if bytes.len() > kernelize_media::MAX_INPUT_BYTES {
        return Err(ctx.field_err(
            position,
            field,
            format!("the media is {} bytes, the limit is {}", bytes.len(), kernelize_media::MAX_INPUT_BYTES),
        ));
    }
    Ok(Some(MediaRef::Bytes(bytes.to_vec())))
}

/// The vector of row `r` of a list column; `None` when null.
fn vector_at(col: &ArrayRef, r: usize) -> Result<Option<Vec<f32>>, String> {
    if col.is_null(r) {
        return Ok(None);
    }
    let values = if let Some(l) = col.as_fixed_size_list_opt() {
        l.value(r)
    } else if let Some(l) = col.as_list_opt::<i32>() {
        l.value(r)
    } else if let Some(l) = col.as_list_opt::<i64>() {
        l.value(r)
    } else {
        return Err(format!("unsupported vector column type {}", col.data_type()));
    };
    if values.null_count() > 0 {
        let j = (0..values.len()).find(|&j| values.is_null(j)).unwrap_or(0);
        return Err(format!("vector[{j}] is null"));
    }
    if let Some(a) = values.as_primitive_opt::<Float32Type>() {
        Ok(Some(a.values().to_vec()))
    } else if let Some(a) = values.as_primitive_opt::<Float64Type>() {
        Ok(Some(a.values().iter().map(|&x| x as f32).collect()))
    } else if let Some(a) = values.as_primitive_opt::<Float16Type>() {
        Ok(Some(a.values().iter().map(|x| x.to_f32()).collect()))
    } else {
        Err(format!("vector items have type {}; expected floats", values.data_type()))
    }
}

/// A column's values as metadata values (`None` for nulls).
fn column_values(col: &ArrayRef) -> Result<Vec<Option<Value>>, arrow_schema::ArrowError> {
    let n = col.len();
    let t = col.data_type();
    let mut out = Vec::with_capacity(n);
    if let Some(a) = col.as_boolean_opt() {
        out.extend(a.iter().map(|v| v.map(Value::Bool)));
    } else if matches!(t, DataType::Null) {
        out.resize(n, None);
    } else if matches!(t, DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64) {
        let a = arrow_cast::cast(col, &DataType::UInt64)?;
        out.extend(a.as_primitive::<UInt64Type>().iter().map(|v| v.map(Value::from)));
    } else if t.is_integer() {
        let a = arrow_cast::cast(col, &DataType::Int64)?;
        out.extend(a.as_primitive::<Int64Type>().iter().map(|v| v.map(Value::from)));
    } else if is_float(t) {
        let a = arrow_cast::cast(col, &DataType::Float64)?;
        out.extend(a.as_primitive::<Float64Type>().iter().map(|v| {
            v.map(|f| serde_json::Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number))
        }));
    } else if is_string(t) {
        let a = arrow_cast::cast(col, &DataType::LargeUtf8)?;
        out.extend(a.as_string::<i64>().iter().map(|v| v.map(|s| Value::String(s.to_owned()))));
    } else {
        let fmt = arrow_cast::display::ArrayFormatter::try_new(col.as_ref(), &Default::default())?;
        for i in 0..n {
            out.push((!col.is_null(i)).then(|| Value::String(fmt.value(i).to_string())));
        }
    }
    Ok(out)
}

impl Source for ParquetSource {
    fn next_row(&mut self) -> Result<Option<Row>> {
        loop {
            if let Some(row) = self.pending.pop_front() {
                self.yielded += 1;
                return Ok(Some(row));
            }
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            let reader = &mut self.reader;
            match guarded(&self.ctx.path, || reader.next())? {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(Error::file(
                        &self.ctx.path,
                        format!("cannot decode the rows from row {} on: {e}", self.decoded),
                    ));
                }
                Some(Ok(batch)) => self.decode(&batch)?,
            }
        }
    }

    fn bytes_read(&self) -> u64 {
        if self.total_rows == 0 {
            return 0;
        }
        let frac = self.yielded as f64 / self.total_rows as f64;
        (self.file_len as f64 * frac.min(1.0)) as u64
    }

    fn total_rows(&self) -> Option<u64> {
        Some(self.total_rows)
    }
}
