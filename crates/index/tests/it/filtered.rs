//! Filtered vector search: recall against exact filtered search on the graph-walk path
//! (about 10% of the rows match) and the planner's exact path (about 1%), every hit
//! matching, and the number of results.

use crate::fixture::{self, Ctx, build, filter, id, queries, recall, vq};
use crate::tempdb;
use kernelize_index::filter::Filter;
use kernelize_index::search::{IndexCache, Plan};
use kernelize_store::Quantization;

/// Live records matching `f`, by a snapshot scan.
fn matching(ctx: &Ctx<'_>, f: &Filter) -> usize {
    ctx.coll.snapshot().scan(None).map(|r| r.expect("scan")).filter(|r| f.matches(r.metadata.as_ref())).count()
}

/// Runs filtered queries and checks each hit against the filter and the result count.
fn check_hits(ctx: &Ctx<'_>, qs: &[Vec<f32>], f: &Filter, k: usize) {
    let want = k.min(matching(ctx, f));
    for v in qs {
        let mut q = vq(v, k);
        q.filter = Some(f.clone());
        for exact in [false, true] {
            q.exact = exact;
            let hits = ctx.search(&q);
            assert_eq!(hits.len(), want, "filter {f}, k {k}, exact {exact}: wrong number of hits");
            for h in &hits {
                assert!(f.matches(h.record.metadata.as_ref()), "{} does not match {f}", h.id);
            }
        }
    }
}

#[test]
fn filtered_recall_and_counts() {
    let (_dir, db) = tempdb();
    let coll = build(&db, "c", Quantization::None);
    let cache = IndexCache::new();
    let ctx = Ctx { coll: &coll, storage: &**db.storage(), cache: &cache };
    let qs = queries(&fixture::centers(), 50, 21);

    // ~10% of every segment matches: the graph walk, forced (at this size the planner
    // would scan), and the planner's own choice.
    let tenth = filter(r#"cat = "c3""#);
    for plan in [Plan::Walk, Plan::Auto] {
        for ef in [None, Some(10)] {
            let r = ctx.recall_with(&qs, 10, ef, Some(&tenth), plan);
            eprintln!("filtered recall@10 at 10%, ef {ef:?}, {plan:?}: {r:.3}");
            assert!(r >= 0.95, "filtered recall@10 at 10%, ef {ef:?}, {plan:?} = {r:.3}");
        }
    }
    check_hits(&ctx, &qs, &tenth, 10);

    // ~1%: the planner scans the matching rows exactly.
    let hundredth = filter("rare = true");
    assert_eq!(matching(&ctx, &hundredth), fixture::N / 100);
    let r = ctx.recall(&qs, 10, None, Some(&hundredth));
    eprintln!("filtered recall@10 at 1%: {r:.3}");
    assert!(r >= 0.95, "filtered recall@10 at 1% = {r:.3}");
    check_hits(&ctx, &qs, &hundredth, 10);

    // Fewer matches than k: all of them, once each (several of these ids were rewritten,
    // so older rows of theirs also match in older segments).
    check_hits(&ctx, &qs[..5], &hundredth, 50);
    let few = filter("n < 7");
    let mut q = vq(&qs[0], 10);
    q.filter = Some(few.clone());
    let mut got = fixture::ids(&ctx.search(&q));
    got.sort();
    assert_eq!(got, (0..7).map(id).collect::<Vec<_>>());
    check_hits(&ctx, &qs[..5], &few, 10);

    // A walk that cannot fill k (20% match, k = 300 > the matching rows of any segment)
    // falls back to the matching set: exactly k results, the exact ones.
    let fifth = filter(r#"cat in ["c1", "c2"]"#);
    check_hits(&ctx, &qs[..5], &fifth, 300);
    for v in &qs[..5] {
        let mut q = vq(v, 300);
        q.filter = Some(fifth.clone());
        let approx = ctx.search(&q);
        q.exact = true;
        let exact = ctx.search(&q);
        let r = recall(&approx, &exact);
        assert!(r >= 0.95, "recall@300 at 20% = {r:.3}");
    }

    // Compound filters and negation.
    check_hits(&ctx, &qs[..10], &filter(r#"cat = "c7" and n >= 2000 and not rare = true"#), 10);
    check_hits(&ctx, &qs[..10], &filter(r#"cat != "c0""#), 10);
}
