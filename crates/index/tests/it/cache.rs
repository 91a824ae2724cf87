//! The index cache: indexes stay open across queries on every storage backend, and a
//! cached index is never used for a different segment that took its file's place.

use crate::fixture::{self, Ctx, build, queries, vq};
use kernelize_index::search::IndexCache;
use kernelize_store::{Database, MemStorage, Quantization, Record};
use std::sync::Arc;

/// `IndexCache::get` twice for every segment: the second time is the same open index,
/// also when the storage is not the local filesystem.
#[test]
fn indexes_stay_open_on_in_memory_storage() {
    let db = Database::open_with(Arc::new(MemStorage::new()), "/data".as_ref(), fixture::options()).expect("open");
    let coll = build(&db, "c", Quantization::None);
    let storage = &**db.storage();
    let cfg = coll.config();
    let cache = IndexCache::new();
    let snap = coll.snapshot();
    let first: Vec<_> =
        snap.segments().iter().map(|s| cache.get(storage, s, cfg.metric, cfg.index).expect("get").0).collect();
    for (s, ix) in snap.segments().iter().zip(&first) {
        let (again, built) = cache.get(storage, s, cfg.metric, cfg.index).expect("get");
        assert!(!built);
        assert!(Arc::ptr_eq(&again, ix), "{} was reopened instead of served from the cache", ix.path().display());
    }
}

/// A collection dropped and created again reuses segment file names; a cache that
/// outlives the drop must not serve the old segment's index for the new one.
#[test]
fn a_recreated_collection_gets_fresh_indexes() {
    let (_dir, db) = crate::tempdb();
    let cache = IndexCache::new();
    let qs = queries(&fixture::centers(), 5, 71);
    {
        let coll = build(&db, "c", Quantization::None);
        let ctx = Ctx { coll: &coll, storage: &**db.storage(), cache: &cache };
        assert_eq!(ctx.search(&vq(&qs[0], 10)).len(), 10);
    }
    db.drop_collection("c").expect("drop");
    let coll = db.create_collection("c", fixture::config(Quantization::None)).expect("create");
    let records: Vec<Record> = (0..50)
        .map(|i| Record {
            id: format!("new{i}"),
            vector: qs[i % 5].iter().map(|x| x + i as f32 * 0.01).collect(),
            text: None,
            metadata: None,
        })
        .collect();
    coll.upsert(records).expect("upsert");
    coll.flush().expect("flush");
    let ctx = Ctx { coll: &coll, storage: &**db.storage(), cache: &cache };
    for v in &qs {
        let mut q = vq(v, 10);
        let approx = ctx.search(&q);
        q.exact = true;
        let exact = ctx.search(&q);
        assert_eq!(fixture::ids(&approx), fixture::ids(&exact));
    }
}

/// Several threads (searches, a seal's `ensure`) that find one segment's index missing
/// at once build it once: they used to write one temporary file together and all but the
/// first failed to rename it ("No such file or directory").
#[test]
fn concurrent_first_searches_build_one_index_once() {
    let (_dir, db) = crate::tempdb();
    let coll = build(&db, "c", Quantization::None);
    let storage = &**db.storage();
    let cfg = coll.config();
    let snap = coll.snapshot();
    for round in 0..3 {
        let cache = IndexCache::new();
        for s in snap.segments() {
            let _ = storage.remove_file(&kernelize_store::segment_companion(s.path(), "idx"));
        }
        let built: Vec<bool> = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        let s = &snap.segments()[0];
                        cache.get(storage, s, cfg.metric, cfg.index).map(|(_, b)| b)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread").expect("get")).collect()
        });
        assert_eq!(built.iter().filter(|b| **b).count(), 1, "round {round}: built {built:?}");
    }
}
