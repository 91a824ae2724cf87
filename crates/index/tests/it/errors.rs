//! Bad queries are refused with messages that say what is wrong.

use crate::fixture::{self, Ctx, build, filter, kq, vq};
use crate::tempdb;
use kernelize_index::filter::Filter;
use kernelize_index::search::{IndexCache, MAX_EF, MAX_K, Mode, Query, SearchError};
use kernelize_store::Quantization;

#[test]
fn bad_queries_are_refused_clearly() {
    let (_dir, db) = tempdb();
    let coll = build(&db, "c", Quantization::None);
    let cache = IndexCache::new();
    let ctx = Ctx { coll: &coll, storage: &**db.storage(), cache: &cache };
    let v = vec![0.5f32; fixture::DIM];
    let msg = |q: &Query| ctx.search_err(q).to_string();

    assert_eq!(msg(&vq(&v[1..], 10)), "query vector has dimension 31, the collection has 32");
    let mut nan = v.clone();
    nan[5] = f32::NAN;
    assert_eq!(msg(&vq(&nan, 10)), "query vector element 5 is NaN (not finite)");
    let mut inf = v.clone();
    inf[0] = f32::INFINITY;
    assert_eq!(msg(&vq(&inf, 10)), "query vector element 0 is inf (not finite)");
    assert_eq!(msg(&vq(&v, 0)), format!("k = 0 is out of range: expected 1..={MAX_K}"));
    assert_eq!(msg(&vq(&v, MAX_K + 1)), format!("k = {} is out of range: expected 1..={MAX_K}", MAX_K + 1));
    assert_eq!(msg(&kq("apple", usize::MAX)), format!("k = {} is out of range: expected 1..={MAX_K}", usize::MAX));
    for ef in [0, MAX_EF + 1] {
        let mut q = vq(&v, 10);
        q.ef = Some(ef);
        assert_eq!(msg(&q), format!("ef = {ef} is out of range: expected 1..={MAX_EF}"));
    }
    assert_eq!(msg(&Query { k: 10, ..Query::default() }), "vector search needs a query vector");
    assert_eq!(
        msg(&Query { k: 10, text: Some("apple".into()), mode: Mode::Hybrid, ..Query::default() }),
        "hybrid search needs a query vector"
    );
    assert_eq!(msg(&Query { k: 10, mode: Mode::Keyword, ..Query::default() }), "keyword search needs query text");
    assert_eq!(msg(&kq("  \t ", 10)), "keyword search needs query text");
    assert_eq!(
        msg(&Query { vector: Some(v.clone()), k: 10, mode: Mode::Hybrid, ..Query::default() }),
        "hybrid search needs query text"
    );

    // A filter naming a field no record has (a typo) is an error, not an empty result,
    // in every mode and even when nested; the message lists the known fields.
    for mode in [Mode::Vector, Mode::Keyword, Mode::Hybrid] {
        let q = Query {
            vector: Some(v.clone()),
            text: Some("apple".into()),
            k: 10,
            mode,
            filter: Some(filter(r#"cat = "c1" and not (colour = "red" or n > 3)"#)),
            ..Query::default()
        };
        match ctx.search_err(&q) {
            e @ SearchError::UnknownField { .. } => assert_eq!(
                e.to_string(),
                r#"filter: unknown field "colour"; fields in this collection: cat, n, rare"#,
                "{mode:?}"
            ),
            e => panic!("{mode:?}: expected UnknownField, got {e:?}"),
        }
    }
    // A malformed filter built in code.
    let mut q = vq(&v, 10);
    q.filter = Some(Filter::And(Vec::new()));
    assert_eq!(msg(&q), "filter: empty 'and'");
    // Nothing above is an error of the collection: a good query still works.
    assert_eq!(ctx.search(&vq(&v, 10)).len(), 10);
}

/// Regression: finite components that square past f32::MAX made every distance inf, an
/// L2 score inf, and JSON turned it into `"score": null`. Such vectors are refused going
/// in (records and queries), and a score is always finite.
#[test]
fn l2_search_scores_are_finite_for_huge_vectors() {
    let (_dir, db) = tempdb();
    let coll = build(&db, "c", Quantization::None);
    let cache = IndexCache::new();
    let ctx = Ctx { coll: &coll, storage: &**db.storage(), cache: &cache };
    let huge = vec![1e19f32; fixture::DIM];
    let err = ctx.search_err(&vq(&huge, 10)).to_string();
    assert!(err.starts_with("query vector is too large (squared norm 3.200e39 > 1e36)"), "{err}");
    let rec = kernelize_store::Record { id: "big".into(), vector: huge, text: None, metadata: None };
    let err = coll.upsert(vec![rec]).expect_err("refused").to_string();
    assert!(err.contains("vector is too large"), "{err}");
    for m in [kernelize_store::Metric::L2, kernelize_store::Metric::Cosine, kernelize_store::Metric::Dot] {
        for d in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX] {
            assert!(kernelize_index::search::to_score(m, d).is_finite(), "{m:?} {d}");
        }
    }
}
