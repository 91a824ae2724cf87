//! Overwrites: a rewritten id is found by its new vector and text, never by the versions
//! it replaced, and never twice.

use crate::fixture::{self, Ctx, build, filter, final_version, hq, id, kq, vq};
use crate::tempdb;
use kernelize_index::search::IndexCache;
use kernelize_store::Quantization;
use std::collections::BTreeSet;

#[test]
fn rewritten_ids_are_found_once_by_their_new_version() {
    let (_dir, db) = tempdb();
    let coll = build(&db, "c", Quantization::None);
    let cache = IndexCache::new();
    // `Ctx::search` also checks that no id comes back twice and that every hit is the
    // id's current record (so never a replaced version).
    let ctx = Ctx { coll: &coll, storage: &**db.storage(), cache: &cache };
    let centers = fixture::centers();
    let rewritten: Vec<usize> = (0..fixture::N).filter(|&i| final_version(i) > 0).collect();
    assert!(rewritten.len() > 100, "fixture rewrites {} ids", rewritten.len());

    for &i in &rewritten {
        let now = fixture::current(&centers, i);
        for exact in [false, true] {
            let mut q = vq(&now.vector, 10);
            q.exact = exact;
            let hits = ctx.search(&q);
            assert_eq!(hits[0].id, id(i), "exact {exact}: the new vector finds its id first");
            assert!(hits[0].score > 0.9999, "score {}", hits[0].score);
        }
        // Each replaced version, as a query, may find the id only as its new record.
        for v in 0..final_version(i) {
            let old = fixture::record(&centers, i, v);
            for exact in [false, true] {
                let mut q = vq(&old.vector, 10);
                q.exact = exact;
                let hits = ctx.search(&q);
                assert!(hits[0].score < 0.9999 || hits[0].id != id(i), "a replaced version of {} was returned", id(i));
            }
            ctx.search(&hq(&old.vector, "stale fresh", 20));
        }
        // Rows of every version match `n = i`; one hit.
        let mut q = vq(&now.vector, 10);
        q.filter = Some(filter(&format!("n = {i}")));
        assert_eq!(fixture::ids(&ctx.search(&q)), vec![id(i)]);
    }

    // Only replaced versions say `stale`; only current versions of rewritten ids `fresh`.
    assert!(ctx.search(&kq("stale", 1000)).is_empty(), "a replaced version's text matched");
    let fresh: BTreeSet<String> = ctx.search(&kq("fresh", 1000)).into_iter().map(|h| h.id).collect();
    assert_eq!(fresh, rewritten.iter().map(|&i| id(i)).collect());
}
