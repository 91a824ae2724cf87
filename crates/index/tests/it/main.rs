//! Integration tests of collection search (`kernelize_index::search`) over real
//! collections: several segments, a memtable, overwrites and deletes, every quantization
//! kind, filters, BM25 and hybrid ranking, index persistence and repair, and query
//! validation. Data and queries are seeded; approximate results are checked against exact
//! search (`Query::exact`) and an independent brute force over a snapshot scan. Graphs
//! built on several threads differ from run to run, so the floors leave a margin; the
//! recall figures themselves are measured on single-threaded (deterministic) builds.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly on unexpected errors")]

mod cache;
mod deletes;
mod errors;
mod explain;
mod filtered;
mod fixture;
mod keyword;
mod overwrites;
mod persistence;
mod recall;

use kernelize_store::Database;

/// A fresh data directory on the local filesystem and the database open on it.
pub fn tempdb() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path(), fixture::options()).expect("open database");
    (dir, db)
}
