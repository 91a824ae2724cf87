//! A query's explain: the plan per segment and stage, candidates scored, rows decoded and
//! time per stage — and the same hits as the query without it.

use crate::fixture::{self, Ctx, build, filter, hq, ids, kq, queries, vq};
use crate::tempdb;
use kernelize_index::search::{Explain, IndexCache, Mode, Plan, Query, Searcher};
use kernelize_store::Quantization;

fn explained(ctx: &Ctx<'_>, q: &Query) -> Explain {
    let (hits, ex) = Searcher::new(ctx.coll, ctx.storage, ctx.cache).search_explained(q).expect("search");
    assert_eq!(ids(&hits), ids(&ctx.search(q)), "explaining changed the results of {q:?}");
    assert_eq!(ex.rows_decoded, hits.len());
    assert!(ex.total_us > 0.0 && ex.total_us >= ex.decode_us, "{ex:?}");
    assert_eq!(ex.mode, q.mode);
    ex
}

#[test]
fn explain_names_each_segments_plan_and_counts_the_work() {
    let (_dir, db) = tempdb();
    let coll = build(&db, "c", Quantization::Int8);
    let cache = IndexCache::new();
    let ctx = Ctx { coll: &coll, storage: &**db.storage(), cache: &cache };
    let segments = coll.snapshot().segments().len();
    assert!(segments >= 3, "fixture: several segments");
    let v = &queries(&fixture::centers(), 1, 5)[0];

    // Unfiltered vector search: every segment walked, its distances counted (the walk's
    // codes and the f32 re-rank of the beam), the memtable scanned.
    let ex = explained(&ctx, &vq(v, 10));
    assert_eq!(ex.segments.len(), segments);
    for s in &ex.segments {
        assert_eq!((s.stage.as_str(), s.plan.as_str()), ("vector", "walk"), "{s:?}");
        assert!(s.segment.ends_with(".seg"), "{s:?}");
        assert!(s.rows > 0 && s.matching.is_none(), "{s:?}");
        // At least the beam is re-ranked exactly, and the walk scored more than that.
        assert!(s.scored > 10 && s.scored <= 4 * s.rows as u64, "{s:?}");
        assert!(s.candidates <= 10 && s.us > 0.0, "{s:?}");
    }
    assert_eq!(ex.memtable.rows, coll.snapshot().memtable().len());
    assert_eq!(ex.memtable.scored, ex.memtable.rows);
    assert!(ex.fusion_us.is_none());

    // A filter about 1% of rows pass: the planner scans exactly the matching rows.
    let mut q = vq(v, 10);
    q.filter = Some(filter("rare = true"));
    let ex = explained(&ctx, &q);
    for s in &ex.segments {
        assert_eq!(s.plan, "scan", "{s:?}");
        let m = s.matching.expect("a filtered query reports the matching rows");
        assert!(m < s.rows / 20, "{s:?}");
        assert!(s.scored <= m as u64, "a scan scores at most the matching rows: {s:?}");
    }
    assert!(ex.memtable.scored < ex.memtable.rows, "the filter applies to the memtable too");
    // Forced walk at 10%: a walk; and exact queries say so.
    q.filter = Some(filter(r#"cat = "c3""#));
    q.plan = Plan::Walk;
    assert!(explained(&ctx, &q).segments.iter().all(|s| s.plan == "walk" || s.plan == "walk+scan"));
    q.exact = true;
    let ex = explained(&ctx, &q);
    for s in &ex.segments {
        assert_eq!(s.plan, "exact", "{s:?}");
        assert!(s.scored <= s.matching.expect("filtered") as u64, "{s:?}");
    }

    // Keyword: one BM25 stage per segment; hybrid: both stages per segment and the fusion.
    let ex = explained(&ctx, &kq("quixotic", 5));
    assert_eq!(ex.segments.len(), segments);
    assert!(ex.segments.iter().all(|s| s.stage == "keyword" && s.plan == "bm25" && s.scored >= 1));
    assert_eq!(ex.segments.iter().map(|s| s.candidates).sum::<usize>(), 1, "one record holds the word: {ex:?}");
    let ex = explained(&ctx, &hq(v, "quixotic", 10));
    assert_eq!(ex.mode, Mode::Hybrid);
    assert_eq!(ex.segments.len(), 2 * segments);
    assert!(ex.fusion_us.is_some());

    // It serialises for the API and the slow-query log.
    let json = serde_json::to_value(&ex).expect("serialise");
    assert!(json["segments"][0]["plan"].is_string() && json["total_us"].is_number(), "{json}");
}
