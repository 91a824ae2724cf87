//! Index files: reopened without rebuilding, repaired transparently when damaged or
//! stale, and read correctly from in-memory storage, including bytes that are not
//! 8-byte aligned.

use crate::fixture::{self, Ctx, brute_force, build, filter, hq, kq, queries, vq};
use kernelize_index::search::{EnsureReport, IndexCache, Query};
use kernelize_store::{Collection, Database, Mapped, MemStorage, Quantization, Storage, WritableFile};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A result list reduced to what must be reproduced exactly: ids and score bits.
type Results = Vec<Vec<(String, u32)>>;

/// Vector, filtered, keyword and hybrid queries over the fixture.
fn query_set() -> Vec<Query> {
    let qs = queries(&fixture::centers(), 12, 51);
    let mut out: Vec<Query> = qs[..6].iter().map(|v| vq(v, 10)).collect();
    for v in &qs[6..9] {
        let mut q = vq(v, 10);
        q.filter = Some(filter(r#"cat = "c4""#));
        out.push(q);
    }
    out.extend(["apple river", "quixotic", "zanzibar castle", "fresh"].map(|t| kq(t, 10)));
    out.extend(qs[9..].iter().zip(["garden", "violin falcon", "stale"]).map(|(v, t)| hq(v, t, 10)));
    out
}

fn run(ctx: &Ctx<'_>, qs: &[Query]) -> Results {
    qs.iter().map(|q| ctx.search(q).into_iter().map(|h| (h.id, h.score.to_bits())).collect()).collect()
}

/// Graph builds run on the current rayon pool; on one thread they are deterministic, so
/// a rebuilt index answers exactly like the original.
fn single_thread() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("thread pool")
}

fn ensure(pool: &rayon::ThreadPool, cache: &IndexCache, coll: &Collection, storage: &dyn Storage) -> Vec<EnsureReport> {
    pool.install(|| cache.ensure(coll, storage)).expect("ensure")
}

/// Little-endian integer at `at`.
fn le(b: &[u8], at: usize, len: usize) -> u64 {
    b[at..at + len].iter().rev().fold(0, |acc, &x| (acc << 8) | u64::from(x))
}

/// The byte ranges of an index file's sections, from its table (`docs/format/index.md`:
/// 24-byte fixed header with the section count at 12, then 24-byte entries
/// `tag, crc, offset, length`).
fn sections(b: &[u8]) -> Vec<std::ops::Range<usize>> {
    let count = le(b, 12, 4) as usize;
    (0..count)
        .map(|s| {
            let at = 24 + 24 * s;
            let (off, len) = (le(b, at + 8, 8) as usize, le(b, at + 16, 8) as usize);
            off..off + len
        })
        .collect()
}

/// Ways to damage an index file.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Flip one byte in the middle of the file (inside a checksummed section).
    FlipMiddle,
    /// Flip one byte of the JSON metadata in the header.
    FlipHeader,
    /// Cut the file in half.
    Truncate,
    /// Replace it with another segment's (valid) index file.
    Foreign,
}

fn damage(storage: &dyn Storage, path: &Path, other: &Path, how: Damage) {
    let mut b = storage.read(path).expect("read idx");
    match how {
        Damage::FlipMiddle => {
            let mid = b.len() / 2;
            assert!(sections(&b).iter().any(|r| r.contains(&mid)), "the middle byte is section padding");
            b[mid] ^= 0x5a;
        }
        Damage::FlipHeader => {
            let table_end = 24 + 24 * le(&b, 12, 4) as usize;
            b[table_end + 2] ^= 0x01; // inside the metadata JSON
        }
        Damage::Truncate => b.truncate(b.len() / 2),
        Damage::Foreign => b = storage.read(other).expect("read other idx"),
    }
    kernelize_store::write_atomic(storage, path, &b).expect("write damaged idx");
}

#[test]
fn index_files_are_reused_and_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = single_thread();
    let qs = query_set();
    let (original, idx_paths) = {
        let db = Database::open(dir.path(), fixture::options()).expect("open");
        let coll = build(&db, "c", Quantization::None);
        let cache = IndexCache::new();
        let reports = ensure(&pool, &cache, &coll, &**db.storage());
        assert_eq!(reports.len(), 3);
        assert!(reports.iter().all(|r| r.built), "first use builds every index");
        let ctx = Ctx { coll: &coll, storage: &**db.storage(), cache: &cache };
        let paths: Vec<PathBuf> = reports.iter().map(|r| r.path.clone()).collect();
        (run(&ctx, &qs), paths)
    };
    assert!(original.iter().all(|r| !r.is_empty()));

    // Reopened: the files are opened, not rebuilt, and answer identically.
    let db = Database::open(dir.path(), fixture::options()).expect("reopen");
    let coll = db.collection("c").expect("collection");
    let storage = &**db.storage();
    {
        let cache = IndexCache::new();
        let reports = ensure(&pool, &cache, &coll, storage);
        assert!(reports.iter().all(|r| !r.built), "reopen rebuilt an index: {reports:?}");
        assert_eq!(run(&Ctx { coll: &coll, storage, cache: &cache }, &qs), original);
    }

    // Damaged or foreign: detected, rebuilt transparently, same answers; then reused.
    let victim = &idx_paths[1];
    for how in [Damage::FlipMiddle, Damage::FlipHeader, Damage::Truncate, Damage::Foreign] {
        damage(storage, victim, &idx_paths[0], how);
        let cache = IndexCache::new();
        let reports = ensure(&pool, &cache, &coll, storage);
        for r in &reports {
            assert_eq!(r.built, &r.path == victim, "{how:?}: {r:?}");
        }
        assert_eq!(run(&Ctx { coll: &coll, storage, cache: &cache }, &qs), original, "{how:?}");
        let again = IndexCache::new();
        assert!(ensure(&pool, &again, &coll, storage).iter().all(|r| !r.built), "{how:?}: repair was not kept");
    }
}

/// Bytes that start one past an 8-byte boundary.
struct Shifted(Vec<u8>);

impl AsRef<[u8]> for Shifted {
    fn as_ref(&self) -> &[u8] {
        &self.0[1..]
    }
}

/// In-memory storage whose maps are never 8-byte aligned.
#[derive(Debug, Default)]
struct Misaligned(MemStorage);

impl Storage for Misaligned {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.0.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.0.list_dir(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.0.exists(path)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.0.create(path)
    }
    fn append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.0.append(path)
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.0.file_len(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.0.read(path)
    }
    fn map(&self, path: &Path) -> io::Result<Mapped> {
        let bytes = self.0.read(path)?;
        // Allocations are at least 8-byte aligned, so one byte in is not.
        let mut shifted = Vec::with_capacity(bytes.len() + 1);
        shifted.push(0);
        shifted.extend_from_slice(&bytes);
        Ok(Mapped::new(Shifted(shifted)))
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.0.truncate(path, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.0.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.0.remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.0.sync_dir(path)
    }
}

#[test]
fn in_memory_storage_including_unaligned_bytes() {
    let backends: [(&str, Arc<dyn Storage>); 2] =
        [("MemStorage", Arc::new(MemStorage::new())), ("misaligned", Arc::new(Misaligned::default()))];
    let qs = query_set();
    let vectors = queries(&fixture::centers(), 20, 52);
    for (name, storage) in backends {
        let db = Database::open_with(storage, "/data".as_ref(), fixture::options()).expect("open");
        let coll = build(&db, "c", Quantization::Int8);
        let storage = &**db.storage();
        let cache = IndexCache::new();
        let reports = cache.ensure(&coll, storage).expect("ensure");
        assert!(reports.iter().all(|r| r.built));
        if name == "misaligned" {
            let map = storage.map(&reports[0].path).expect("map");
            assert_ne!(map.as_ptr().align_offset(8), 0, "the test storage should misalign");
        }
        let ctx = Ctx { coll: &coll, storage, cache: &cache };
        let r = ctx.recall(&vectors, 10, None, None);
        eprintln!("recall@10 (int8) on {name}: {r:.3}");
        assert!(r >= 0.95, "{name}: recall@10 = {r:.3}");
        for v in &vectors[..5] {
            let mut q = vq(v, 10);
            q.exact = true;
            let exact: Vec<String> = fixture::ids(&ctx.search(&q));
            let truth: Vec<String> = brute_force(&coll, v, 10, None).into_iter().map(|(id, _)| id).collect();
            assert_eq!(exact, truth, "{name}: exact search and brute force disagree");
        }
        let original = run(&ctx, &qs);

        // A new cache opens the stored files (not rebuilt) and answers identically.
        let cache = IndexCache::new();
        let reports = cache.ensure(&coll, storage).expect("ensure");
        assert!(reports.iter().all(|r| !r.built), "{name}: {reports:?}");
        assert_eq!(run(&Ctx { coll: &coll, storage, cache: &cache }, &qs), original, "{name}");
    }
}
