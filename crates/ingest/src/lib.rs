//! Ingestion into Kernelize collections: readers for JSONL, CSV, Parquet,
//! safetensors and `.npy`, chunking of long texts, batched embedding and atomic,
//! acknowledged batch upserts.
//!
//! [`ingest`] is what `kernelize ingest FILE --collection C` runs. It streams the
//! file's rows through a [`Reader`], writes rows that bring a vector as they are,
//! embeds rows that bring only text (splitting long texts into chunks when asked),
//! and upserts batches of [`IngestOptions::batch_size`] records, each atomically.
//! The first bad row stops it with an error naming the file, line or row, field and
//! reason, and how much before it was written; nothing of the failing batch is.
//!
//! ```
//! use kernelize_ingest::{IngestOptions, ingest};
//! use kernelize_store::{CollectionConfig, Database, Metric, Options};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let db = Database::open(&dir.path().join("db"), Options::default())?;
//! let docs = db.create_collection("docs", CollectionConfig::new(3, Metric::Cosine))?;
//!
//! let file = dir.path().join("docs.jsonl");
//! fs_err::write(&file, concat!(
//!     r#"{"id": "a", "vector": [1, 0, 0], "text": "first", "lang": "en"}"#, "\n",
//!     r#"{"id": "b", "vector": [0, 1, 0], "metadata": {"lang": "fr"}}"#, "\n",
//! ))?;
//!
//! // Rows without a vector would need `Some(&embedder)` (kernelize_embed::Embedder).
//! let summary = ingest(&docs, &file, &IngestOptions::default(), None, &mut |p| {
//!     eprintln!("{} of {} bytes, {} records written", p.bytes_read, p.bytes_total, p.records_written);
//! })?;
//! assert_eq!((summary.rows_read, summary.records_written, summary.batches), (2, 2, 1));
//! let a = docs.get("a")?.expect("written");
//! assert_eq!(a.metadata.as_ref().map(|m| m["lang"].clone()), Some("en".into()));
//! # Ok(())
//! # }
//! ```
//!
//! What each reader accepts is documented on [`Format`]'s variants; readers yield
//! [`Row`]s, each with its [`Position`] in the file.

mod error;
mod options;
mod pipeline;
mod read;

pub use error::{Error, ErrorClass, Location, Position, Result};
pub use options::{BadMedia, DEFAULT_BATCH_SIZE, Format, IngestOptions, MAX_BATCH_SIZE};
pub use pipeline::{
    IngestSummary, MAX_METADATA_BYTES, MAX_SKIPPED_REPORTED, MAX_TEXT_BYTES, MEDIA_BATCH_SIZE, Progress, QUEUE_DEPTH,
    ingest, ingest_media, media_extensions,
};
pub use read::{MAX_LINE_BYTES, MediaRef, Reader, Row};
