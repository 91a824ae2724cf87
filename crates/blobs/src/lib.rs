//! Content-addressed blob storage for kernel files and deltas: a local directory by
//! default, or an S3 bucket (AWS or any S3-compatible server) through `object_store`.
//!
//! A blob is named by the SHA-256 of its bytes ([`Digest`]), so a put of bytes already
//! stored writes nothing. Blobs appear under their key only when complete (a temporary
//! file renamed into place, or an S3 upload that completes atomically), large files go up
//! as multipart uploads, downloads to a file are verified against the digest, and
//! [`BlobStore::gc`] deletes blobs that nothing references once they are old enough.
//! The key layout is in `docs/format/blobs.md`.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::HashSet;
//! use std::time::Duration;
//! use kernelize_blobs::{BlobConfig, BlobStore};
//!
//! let dir = tempfile::tempdir()?;
//! let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! rt.block_on(async {
//!     let store = BlobStore::open(&BlobConfig::Local { dir: dir.path().join("blobs") })?;
//!     let info = store.put_bytes("a kernel".into()).await?;
//!     assert_eq!(info.len, 8);
//!     let dest = dir.path().join("copy.kernel");
//!     store.get_to_file(&info.digest, &dest).await?;
//!     assert_eq!(std::fs::read(&dest)?, b"a kernel");
//!     // Referenced: kept.
//!     let report = store.gc(&HashSet::from([info.digest]), Duration::from_secs(86_400)).await?;
//!     assert_eq!((report.referenced, report.deleted), (1, 0));
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })
//! # }
//! ```

mod config;
mod digest;
mod error;
mod local;
mod object;
mod store;

pub use config::{BlobConfig, BlobOptions};
pub use digest::Digest;
pub use error::{Error, ErrorClass, Result};
pub use store::{BlobInfo, BlobStore, BlobStream, GcReport};

#[cfg(feature = "testing")]
pub mod testing;
