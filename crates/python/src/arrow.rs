//! Records out as an Arrow C stream (the PyCapsule interface): pyarrow, polars, DuckDB
//! and pandas read it without a copy of the batches, one batch at a time.

use crate::error::{Failure, Res};
use arrow_array::ffi_stream::FFI_ArrowArrayStream;
use arrow_array::{RecordBatch, RecordBatchReader};
use arrow_schema::{ArrowError, SchemaRef};
use kernelize_store::Snapshot;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

/// Live records of one snapshot in key order, `batch` at a time.
struct SnapshotReader {
    snap: Snapshot,
    schema: SchemaRef,
    batch: usize,
    /// The last id read (the scan resumes after it).
    after: Option<String>,
    done: bool,
}

impl Iterator for SnapshotReader {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let chunk: Result<Vec<_>, _> = self.snap.scan(self.after.as_deref()).take(self.batch).collect();
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                self.done = true;
                return Some(Err(ArrowError::ExternalError(Box::new(e))));
            }
        };
        if chunk.len() < self.batch {
            self.done = true;
        }
        let last = chunk.last()?;
        self.after = Some(last.id.clone());
        Some(kernelize_store::arrow_batch(&self.schema, &chunk))
    }
}

impl RecordBatchReader for SnapshotReader {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// A stream not yet handed to a consumer (`__arrow_c_stream__` hands it over once).
#[pyclass(module = "kernelize._native", frozen)]
pub struct ArrowStream {
    reader: Mutex<Option<SnapshotReader>>,
    schema: SchemaRef,
}

impl ArrowStream {
    pub fn new(snap: Snapshot, batch: usize, vectors: bool) -> Res<ArrowStream> {
        let schema = kernelize_store::arrow_schema(snap.dim(), vectors)?;
        Ok(ArrowStream {
            reader: Mutex::new(Some(SnapshotReader { snap, schema: schema.clone(), batch, after: None, done: false })),
            schema,
        })
    }
}

#[pymethods]
impl ArrowStream {
    /// The Arrow PyCapsule stream protocol; the schema cannot be changed on request.
    #[pyo3(signature = (requested_schema = None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema; // the layout is fixed; consumers cast if they want another
        let reader = self
            .reader
            .lock()
            .take()
            .ok_or_else(|| Failure::invalid("this Arrow stream was already consumed; ask for a new one"))?;
        let stream = FFI_ArrowArrayStream::new(Box::new(reader));
        PyCapsule::new_with_value(py, stream, c"arrow_array_stream")
    }

    /// Field names of the stream's schema.
    #[getter]
    fn columns(&self) -> Vec<String> {
        self.schema.fields().iter().map(|f| f.name().clone()).collect()
    }
}
