//! Deletes: deleted ids never come back (vector, keyword, hybrid, filtered), recall holds,
//! and compaction replaces the indexes.

use crate::fixture::{self, Ctx, VOCAB, build, filter, hq, id, kq, queries, vq};
use crate::tempdb;
use kernelize_index::search::IndexCache;
use kernelize_store::Quantization;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::collections::HashSet;

/// Checks that no query of any mode returns a deleted id.
fn assert_never_returned(ctx: &Ctx<'_>, deleted: &HashSet<String>, qs: &[Vec<f32>], probes: &[Vec<f32>]) {
    let check = |hits: &[kernelize_index::search::Hit], what: &str| {
        for h in hits {
            assert!(!deleted.contains(&h.id), "{what}: deleted id {} returned", h.id);
        }
    };
    for v in qs.iter().chain(probes) {
        check(&ctx.search(&vq(v, 10)), "vector");
        let mut q = vq(v, 10);
        q.exact = true;
        check(&ctx.search(&q), "exact vector");
    }
    // A deleted record's own vector is its own nearest neighbour if anything leaks.
    for v in probes {
        let mut q = vq(v, 10);
        q.filter = Some(filter(r#"cat in ["c1", "c2", "c3"]"#));
        let hits = ctx.search(&q);
        assert_eq!(hits.len(), 10);
        check(&hits, "filtered vector");
    }
    for w in VOCAB.iter().chain(&["stale", "fresh", "quixotic", "zanzibar"]) {
        check(&ctx.search(&kq(w, 200)), "keyword");
    }
    for (v, w) in probes.iter().zip(VOCAB.iter().cycle()) {
        check(&ctx.search(&hq(v, w, 20)), "hybrid");
    }
}

#[test]
fn deleted_records_are_never_returned() {
    let (_dir, db) = tempdb();
    let coll = build(&db, "c", Quantization::None);
    let storage = &**db.storage();
    let cache = IndexCache::new();
    let ctx = Ctx { coll: &coll, storage, cache: &cache };
    let centers = fixture::centers();
    let qs = queries(&centers, 50, 31);
    // Recall at the default beam and at a beam of exactly k (more sensitive).
    let efs = [None, Some(10)];
    let before: Vec<f64> = efs.iter().map(|&ef| ctx.recall(&qs, 10, ef, None)).collect();

    // Delete 30%: half written into a new segment as tombstones, half left in the memtable.
    let mut order: Vec<usize> = (0..fixture::N).collect();
    order.shuffle(&mut StdRng::seed_from_u64(32));
    let doomed = &order[..fixture::N * 3 / 10];
    let (first, second) = doomed.split_at(doomed.len() / 2);
    coll.delete(first.iter().map(|&i| id(i)).collect()).expect("delete");
    coll.flush().expect("flush");
    coll.delete(second.iter().map(|&i| id(i)).collect()).expect("delete");
    assert_eq!(coll.snapshot().count().expect("count"), (fixture::N - doomed.len()) as u64);
    let deleted: HashSet<String> = doomed.iter().map(|&i| id(i)).collect();
    // Probes: the current vectors of deleted ids from every source.
    let probes: Vec<Vec<f32>> = doomed.iter().step_by(8).map(|&i| fixture::current(&centers, i).vector).collect();

    for (ef, before) in efs.iter().zip(&before) {
        let after = ctx.recall(&qs, 10, *ef, None);
        eprintln!("recall@10 at ef {ef:?} before deleting: {before:.3}, after deleting 30%: {after:.3}");
        assert!(after >= before - 0.02, "ef {ef:?}: recall fell from {before:.3} to {after:.3}");
    }
    assert_never_returned(&ctx, &deleted, &qs, &probes);

    // Compaction: one new segment, freshly indexed; the old index files are gone.
    let seg_dir = coll.dir().join("seg");
    let list = || storage.list_dir(&seg_dir).expect("list seg");
    let old_idx: Vec<String> = list().into_iter().filter(|n| n.ends_with(".idx")).collect();
    assert_eq!(old_idx.len(), 4, "every segment was indexed: {old_idx:?}");
    coll.compact().expect("compact");
    let names = list();
    for n in &old_idx {
        assert!(!names.contains(n), "{n} survived compaction: {names:?}");
    }
    let reports = cache.ensure(&coll, storage).expect("ensure");
    assert_eq!(reports.len(), 1);
    assert!(reports[0].built, "the merged segment's index is built");
    assert_eq!(reports[0].rows, (fixture::N - doomed.len()) as u64, "compaction dropped dead rows");
    // One segment now: at a beam of k it no longer gets the union of four segments'
    // top-k lists, so only the default beam is compared with before.
    let compacted = ctx.recall(&qs, 10, None, None);
    let narrow = ctx.recall(&qs, 10, Some(10), None);
    eprintln!("recall@10 after compaction: {compacted:.3} (ef 10: {narrow:.3})");
    assert!(compacted >= 0.95 && compacted >= before[0] - 0.02, "recall after compaction {compacted:.3}");
    assert!(narrow >= 0.9, "recall@10 at ef 10 after compaction {narrow:.3}");
    assert_never_returned(&ctx, &deleted, &qs, &probes);
}
