//! The Kernelize durable engine.
//!
//! A [`Database`] is a data directory of named [`Collection`]s. A collection takes
//! batches of writes through a write-ahead log with group commit, keeps recent writes in
//! a memtable, flushes them into immutable, checksummed segment files that carry a
//! learned index, and compacts segments in the background of readers. Readers work on
//! [`Snapshot`]s that writers never change.
//!
//! ```
//! use kernelize_store::{CollectionConfig, Database, MemStorage, Metric, Options, Record};
//! use std::sync::Arc;
//!
//! let db = Database::open_with(Arc::new(MemStorage::new()), "data".as_ref(), Options::default())?;
//! let c = db.create_collection("docs", CollectionConfig::new(2, Metric::Cosine))?;
//! c.upsert(vec![Record { id: "a".into(), vector: vec![1.0, 0.0], text: None, metadata: None }])?;
//! assert_eq!(c.get("a")?.map(|r| r.vector.clone()), Some(vec![1.0, 0.0]));
//! # Ok::<(), kernelize_store::Error>(())
//! ```

mod backup;
mod codec;
mod collection;
mod database;
mod error;
#[cfg(feature = "parquet")]
mod export;
mod keys;
mod manifest;
mod memtable;
mod record;
mod segment;
mod snapshot;
mod storage;
mod wal;

pub use backup::{
    BackupFormat, BackupReport, Problem, RestoreReport, VerifyReport, backup, restore, verify, verify_keyed,
};
pub use collection::{
    Collection, CompactReport, Durability, Health, Options, RecoveryReport, Stats, WalLoss, segment_companion,
    segment_companions, wal_path,
};
pub use database::{Database, validate_name};
pub use error::{Error, ErrorClass, Result};
#[cfg(feature = "parquet")]
pub use export::{arrow_batch, arrow_schema, export_parquet};
pub use keys::{
    KEY_LEN, KEYRING_FILE, KeyInfo, MASTER_KEY_ENV, MasterKey, init_encrypted, is_encrypted, list_keys, rotate_master,
};
pub use manifest::{
    CollectionConfig, EncoderRecord, IndexSettings, Manifest, Metric, Modality, Quantization, SegmentRef,
};
pub use memtable::{Entry, Key};
pub use record::{
    MAX_DIM, MAX_ID_BYTES, MAX_METADATA_BYTES, MAX_TEXT_BYTES, MAX_VECTOR_NORM2, Metadata, Op, Record, key_hash,
    validate_id, validate_record, vector_too_large,
};
pub use segment::{Segment, SegmentOptions};
pub use snapshot::Snapshot;
pub use storage::{
    CrashMode, EncryptedStorage, FaultKind, FaultStorage, FileStorage, Mapped, MemStorage, RECORD_MAX,
    SEALED_HEADER_LEN, SEALED_MAGIC, SEALED_VERSION, Storage, WritableFile, is_sealed, write_atomic,
};

/// WAL format helpers for tools, tests and fuzzing.
pub mod wal_format {
    pub use crate::wal::{
        FRAME_HEADER_LEN, MAX_RECORD_LEN, Scan, WAL_HEADER_LEN, WAL_MAGIC, frame_bytes, header_bytes, scan,
    };
}

/// Encodes validated operations as one WAL batch payload (what a cluster ships through its
/// log: the same bytes [`decode_wal_batch`] reads back).
pub fn encode_wal_batch(ops: &[Op]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    record::encode_batch(ops, &mut out)?;
    Ok(out)
}

/// The number of writes a WAL batch payload says it holds (its first field, little-endian),
/// without decoding it; `None` when it is too short to say.
pub fn wal_batch_len(bytes: &[u8]) -> Option<usize> {
    Some(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize)
}

/// Decodes a WAL batch payload (for fuzzing and tools); never panics.
pub fn decode_wal_batch(bytes: &[u8]) -> std::result::Result<Vec<Op>, String> {
    record::decode_batch(bytes, 0).map_err(|e| format!("offset {}: {}", e.offset, e.reason))
}
