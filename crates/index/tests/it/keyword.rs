//! Keyword (BM25) and hybrid ranking across segments and the memtable.

use crate::fixture::{self, Ctx, RARE_MEM_ID, RARE_SEG_ID, VOCAB, build, filter, hq, id, ids, kq, queries, vq};
use crate::tempdb;
use kernelize_index::search::IndexCache;
use kernelize_store::Quantization;
use std::collections::HashSet;

/// Whether `text` holds one of `words` as a whole word.
fn has_word(text: &str, words: &[&str]) -> bool {
    text.split(' ').any(|w| words.contains(&w))
}

#[test]
fn keyword_and_hybrid() {
    let (_dir, db) = tempdb();
    let coll = build(&db, "c", Quantization::None);
    let cache = IndexCache::new();
    let ctx = Ctx { coll: &coll, storage: &**db.storage(), cache: &cache };

    // A rare term outranks a common one, in a segment and in the memtable.
    for (rare, who) in [("quixotic", RARE_SEG_ID), ("zanzibar", RARE_MEM_ID)] {
        assert_eq!(ids(&ctx.search(&kq(rare, 10))), vec![id(who)], "only one document says {rare}");
        let hits = ctx.search(&kq(&format!("apple {rare} river"), 10));
        assert_eq!(hits.len(), 10);
        assert_eq!(hits[0].id, id(who), "{rare}");
    }
    assert!(coll.snapshot().memtable().iter().any(|(k, _)| *k.id == *id(RARE_MEM_ID)), "fixture: in the memtable");

    // Every hit holds a query term; scores never increase; filters apply; stemming folds
    // plurals and case.
    for w in VOCAB {
        let plural = if w.ends_with('s') { w.to_uppercase() } else { format!("{}S", w.to_uppercase()) };
        let hits = ctx.search(&kq(&plural, 25));
        assert_eq!(hits.len(), 25, "{w}");
        assert!(hits.windows(2).all(|p| p[0].score >= p[1].score), "{w}: scores out of order");
        for h in &hits {
            assert!(has_word(h.record.text.as_deref().unwrap_or(""), &[w]), "{} lacks {w}", h.id);
        }
        let mut q = kq(w, 10);
        let f = filter(r#"cat = "c5" and n >= 3000"#);
        q.filter = Some(f.clone());
        for h in ctx.search(&q) {
            assert!(f.matches(h.record.metadata.as_ref()) && has_word(h.record.text.as_deref().unwrap_or(""), &[w]));
        }
    }
    let mut q = kq("quixotic", 10);
    q.filter = Some(filter(r#"cat = "c0""#));
    assert!(ctx.search(&q).is_empty(), "the filter excludes the only match");

    // Hybrid: the vector list's best and the keyword list's best both make the top 10.
    let centers = fixture::centers();
    let target = 2222;
    let hits = ctx.search(&hq(&fixture::current(&centers, target).vector, "quixotic", 10));
    let got: HashSet<String> = ids(&hits).into_iter().collect();
    assert!(got.contains(&id(target)) && got.contains(&id(RARE_SEG_ID)), "hybrid top 10: {got:?}");
    let hits = ctx.search(&hq(&fixture::current(&centers, 10).vector, "zanzibar", 10));
    assert!(ids(&hits)[..2].contains(&id(RARE_MEM_ID)), "memtable keyword hit in hybrid");

    // Hybrid results come from the two lists, with members of each.
    for (v, w) in queries(&centers, 10, 61).iter().zip(VOCAB.iter().skip(3)) {
        let text = format!("{w} {}", VOCAB[0]);
        let vec_ids: HashSet<String> = ids(&ctx.search(&vq(v, 50))).into_iter().collect();
        let kw_ids: HashSet<String> = ids(&ctx.search(&kq(&text, 50))).into_iter().collect();
        let fused = ids(&ctx.search(&hq(v, &text, 10)));
        assert_eq!(fused.len(), 10);
        assert!(fused.iter().all(|i| vec_ids.contains(i) || kw_ids.contains(i)), "hybrid invented an id");
        assert!(fused.iter().any(|i| vec_ids.contains(i)), "no vector hit in {fused:?}");
        assert!(fused.iter().any(|i| kw_ids.contains(i)), "no keyword hit in {fused:?}");
    }
}
