//! The fleet's trust objects, shared by the control plane (which signs them) and the
//! device agent (which checks them): no HTTP, no database, nothing but bytes and keys.
//!
//! - [`ReleaseManifest`]: a kernel published to a channel at a version — its length,
//!   SHA-256 and chunk hashes, compatibility, golden queries, expiry — signed by the
//!   release key.
//! - [`RootDocument`] and [`verify_root_chain`]: the release key is rotated only by a
//!   document signed with the key it replaces; a device walks them from the key it pinned.
//! - [`Offer`]: the server asking one device to install (or, signed as `revert`, to go
//!   back to) one release, optionally with a delta; bound to the device and expiring.
//! - [`chunk_hashes`], [`ChunkVerifier`]: per-chunk SHA-256 checked as bytes arrive, so a
//!   resumed download keeps only good chunks.
//! - [`make_delta`], [`apply_delta`]: zstd patch-from deltas between kernel files, bounded
//!   and bound to both files' hashes.
//!
//! Every document travels in an [`Envelope`] that carries the exact signed payload bytes;
//! verifying never re-serializes. Byte formats: `docs/format/fleet.md`.
//!
//! ```
//! use kernelize_bundle::*;
//!
//! let release_key = SigningKey::generate()?;
//! let kernel = vec![7u8; 10_000]; // the kernel file's bytes
//! let d = chunk_hashes(&kernel[..], MIN_CHUNK_SIZE)?;
//! let manifest = ReleaseManifest {
//!     channel: "stable".into(),
//!     version: 3,
//!     kernel_id: "0123456789abcdef".into(),
//!     sha256: d.sha256,
//!     length: d.length,
//!     chunk_size: d.chunk_size,
//!     chunk_hashes: d.chunk_hashes,
//!     compatibility: Compatibility {
//!         embedding_model: "all-MiniLM-L6-v2".into(),
//!         dim: 384,
//!         min_agent_version: "0.1.0".into(),
//!     },
//!     golden_queries: vec![],
//!     created_ms: 1_000,
//!     expires_ms: 2_000,
//! };
//! let envelope = manifest.sign(&release_key)?.to_bytes();
//!
//! // On the device: signature, shape and expiry, then the bytes as they arrive.
//! let checked = ReleaseManifest::verify(&envelope, &release_key.public(), 1_500)?;
//! let verifier = ChunkVerifier::new(&checked);
//! let mut stream = verifier.stream();
//! stream.push(&kernel)?;
//! assert_eq!(stream.finish()?, checked.sha256);
//! assert!(ReleaseManifest::verify(&envelope, &release_key.public(), 2_000).is_err()); // expired
//! # Ok::<(), kernelize_bundle::BundleError>(())
//! ```

mod chunks;
mod delta;
mod envelope;
mod error;
mod keys;
mod manifest;
mod offer;
mod root;

pub use chunks::{ChunkStream, ChunkVerifier, Digests, chunk_hashes, file_digests};
pub use delta::{
    DELTA_HEADER_BYTES, DELTA_MAGIC, DeltaHeader, DeltaOptions, MAX_DELTA_FILE, METHOD_ZSTD_PATCH_FROM, apply_delta,
    make_delta, make_delta_with,
};
pub use envelope::{DocKind, ENVELOPE_FORMAT, Envelope, MAX_ENVELOPE_BYTES};
pub use error::{BundleError, Result};
pub use keys::{PublicKey, Sha256, SigningKey, hex};
pub use manifest::{
    Compatibility, DEFAULT_CHUNK_SIZE, GoldenQuery, MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_DIM, MAX_EXPECTED_IDS,
    MAX_GOLDEN_K, MAX_GOLDEN_QUERIES, MAX_LATENCY_MS, MAX_LENGTH, MAX_MANIFEST_BYTES, MAX_QUERY_TEXT_BYTES,
    MIN_CHUNK_SIZE, ReleaseManifest, chunk_count, now_ms, parse_version,
};
pub use offer::{DeltaOffer, Offer, OfferKind, VerifiedOffer, new_nonce};
pub use root::{MAX_ROOT_CHAIN, RootDocument, TrustRoot, verify_root_chain};
