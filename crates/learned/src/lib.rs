//! Error-bounded piecewise-linear learned index (PGM-style) over sorted `u64`
//! keys.
//!
//! Each immutable segment of the store keeps its records sorted by a 64-bit
//! key hash; a [`PgmIndex`] over that key column answers "where is the first
//! key `>= k`?" with a window of at most `2 * epsilon + 2` positions, found by
//! a few multiply-adds over a structure thousands of times smaller than the
//! keys, and then a search inside the window that reads one key per cache
//! line (independent loads, so the lines arrive from memory in parallel)
//! before finishing within one line.
//!
//! ```
//! use kernelize_learned::{PgmIndex, DEFAULT_EPSILON};
//!
//! let keys: Vec<u64> = (0..10_000u64).map(|i| i * i * 31).collect();
//! let index = PgmIndex::build(&keys, DEFAULT_EPSILON)?;
//!
//! let key = 500 * 500 * 31;
//! let window = index.search(key);
//! assert!(window.len() <= 2 * DEFAULT_EPSILON + 2);
//! assert_eq!(index.lower_bound(&keys, key), 500);
//! assert_eq!(index.lower_bound(&keys, key + 1), 501);
//!
//! // The index persists with its segment file and is validated on load.
//! let bytes = index.to_bytes();
//! let loaded = PgmIndex::from_bytes(&bytes, keys.len())?;
//! assert_eq!(loaded.lower_bound(&keys, key), 500);
//! # Ok::<(), kernelize_learned::Error>(())
//! ```
//!
//! How it works, in brief: the bottom level is the minimum number of linear
//! pieces whose rounded prediction stays within `epsilon` of the true lower
//! bound at every distinct key (and after every run of duplicates), found in
//! one pass by the optimal streaming convex-hull algorithm of the PGM-index
//! paper, with exact `i128` geometry and every piece re-verified with the
//! exact floating-point prediction used at query time. The first keys of
//! those pieces are indexed the same way, recursively, until one piece is
//! left. The byte format and the proof sketch of the bound are in
//! `docs/format/learned-index.md`.

pub mod bench;
mod format;
mod index;
mod pla;
mod search;

pub use format::{MAGIC, VERSION};
pub use index::{DEFAULT_EPSILON, MAX_EPSILON, PgmIndex};

/// Errors of this crate.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The keys given to [`PgmIndex::build`] are not sorted: `keys[index] <
    /// keys[index - 1]`. A caller error.
    #[error("keys are not sorted: key at index {index} is smaller than its predecessor")]
    Unsorted {
        /// Position of the first key smaller than its predecessor.
        index: usize,
    },
    /// Serialized index bytes failed validation. Corruption (or a foreign
    /// file); never retry with the same bytes.
    #[error("corrupt learned index at byte offset {offset}: {reason}")]
    Corrupt {
        /// Byte offset within the serialized index where the problem was found.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// The error bound is outside `1..=MAX_EPSILON`. A caller error.
    #[error("invalid epsilon {0}: must be in 1..={MAX_EPSILON}")]
    InvalidEpsilon(usize),
    /// A benchmarked method disagreed with binary search
    /// ([`bench::try_run`]). An internal bug.
    #[error("benchmark answers differ: {0}")]
    BenchMismatch(String),
}

impl Error {
    /// Whether this error means stored bytes are damaged (as opposed to a
    /// caller mistake).
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
