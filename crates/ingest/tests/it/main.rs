//! Integration tests of `kernelize-ingest` (one test binary, modules below).
//!
//! Everything runs against real files and a real `Database` in a temporary
//! directory. The tests in `model` need all-MiniLM-L6-v2: `kernelize models install`
//! puts it in the models directory (`$KERNELIZE_MODELS_DIR`, else `~/.local/share/kernelize/models`). Without it those tests fail
//! with that instruction; none passes silently.
#![expect(clippy::unwrap_used, reason = "test helpers fail the test on any setup error")]

mod media;
mod model;
mod pipeline;
mod readers;

use kernelize_embed::Embedder;
use kernelize_ingest::{Error, IngestOptions, IngestSummary, Progress, Reader, Row, ingest};
use kernelize_store::{Collection, CollectionConfig, Database, Durability, Metric, Options};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The embedder shared by all tests of this binary (loaded once).
pub fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| {
        let dir = Embedder::default_model_dir();
        match Embedder::load(&dir) {
            Ok(e) => e,
            Err(e) => panic!(
                "cannot load the model from {}: {e}\n\
                 run `kernelize models install` first (scripts/test.sh does; these tests never skip)",
                dir.display()
            ),
        }
    })
}

/// A scratch directory with a database in it.
pub struct Env {
    /// The directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// A database under `dir/db`.
    pub db: Database,
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Env {
    /// A new directory and database.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("db"), db_options()).unwrap();
        Env { dir, db }
    }

    /// Creates a collection of dimension `dim`.
    pub fn collection(&self, name: &str, dim: usize) -> Collection {
        self.db.create_collection(name, CollectionConfig::new(dim, Metric::Cosine)).unwrap()
    }

    /// Path of a file in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file in the scratch directory.
    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        fs_err::write(&p, bytes).unwrap();
        p
    }

    /// Reopens the database (everything acknowledged must survive).
    pub fn reopen(self) -> Env {
        let Env { dir, db } = self;
        drop(db);
        let db = Database::open(&dir.path().join("db"), db_options()).unwrap();
        Env { dir, db }
    }
}

fn db_options() -> Options {
    Options { durability: Durability::Buffered, ..Options::default() }
}

/// Reads every row of a file (panics on the first error).
pub fn read_rows(path: &Path, opts: &IngestOptions) -> Vec<Row> {
    Reader::open(path, opts).unwrap().map(|r| r.unwrap()).collect()
}

/// The first error reading a file gives (opening or reading a row).
pub fn read_error(path: &Path, opts: &IngestOptions) -> String {
    match Reader::open(path, opts) {
        Err(e) => e.to_string(),
        Ok(reader) => {
            for r in reader {
                if let Err(e) = r {
                    return e.to_string();
                }
            }
            panic!("{} read without error", path.display())
        }
    }
}

/// Runs `ingest` without progress reporting.
pub fn run(
    c: &Collection,
    path: &Path,
    opts: &IngestOptions,
    embedder: Option<&Embedder>,
) -> Result<IngestSummary, Error> {
    ingest(c, path, opts, embedder, &mut |_: &Progress| {})
}

/// Options with a batch size.
pub fn batch_opts(batch_size: usize) -> IngestOptions {
    let mut o = IngestOptions::default();
    o.batch_size = batch_size;
    o
}

/// Ids present in a collection, sorted.
pub fn ids(c: &Collection) -> Vec<String> {
    let mut ids: Vec<String> = c.snapshot().scan(None).map(|r| r.unwrap().id.clone()).collect();
    ids.sort();
    ids
}

/// A `.npy` image of a 2-D array, written the way numpy 1.x does (version 1.0,
/// header padded to 64 bytes).
pub fn npy_bytes(descr: &str, rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((dict.len() as u16).to_le_bytes());
    out.extend(dict.as_bytes());
    out.extend(data);
    out
}

/// Little-endian bytes of f32 values.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}
