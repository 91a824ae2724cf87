//! Kernel tests: build, search quality against exact search, provenance, filters, the
//! signature and every-byte tamper detection, expiry, merge and diff.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod formats;

use kernelize_kernel::format::{SourceInfo, Trust};
use kernelize_kernel::{
    BuildOptions, EvalQuery, IndexKind, Kernel, KernelError, MergeMode, SearchParams, SigningKey, Unit, build, diff,
    merge,
};
use kernelize_store::{Metric, Quantization};
use rand::{Rng, SeedableRng};
use serde_json::json;

const DIM: usize = 48;

/// Clustered unit vectors with text and metadata; `dups` rows that are near-copies of
/// earlier rows (cosine > 0.999).
fn corpus(n: usize, dups: usize, seed: u64, prefix: &str) -> Vec<Unit> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let centers: Vec<Vec<f32>> = (0..20).map(|_| (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect()).collect();
    let mut out: Vec<Unit> = (0..n)
        .map(|i| {
            let c = &centers[i % centers.len()];
            let vector: Vec<f32> = c.iter().map(|x| x + rng.random_range(-0.6f32..0.6)).collect();
            Unit {
                ids: vec![format!("{prefix}{i}")],
                vector,
                text: Some(format!("document {i} of cluster {} with words alpha beta gamma {}", i % 20, i % 7)),
                metadata: Some(
                    json!({"group": (i % 10) as i64, "kind": if i % 100 == 0 { "rare" } else { "common" }})
                        .as_object()
                        .unwrap()
                        .clone(),
                ),
            }
        })
        .collect();
    for d in 0..dups {
        let src = out[d * 7 % n].clone();
        let vector = src.vector.iter().map(|x| x + rng.random_range(-0.001f32..0.001)).collect();
        out.push(Unit {
            ids: vec![format!("{prefix}dup{d}")],
            vector,
            text: Some("a near copy".into()),
            metadata: None,
        });
    }
    out
}

fn source(n: usize) -> SourceInfo {
    SourceInfo { collection: "docs".into(), records: n as u64, seq: 1, encoder: None }
}

fn queries(n: usize, seed: u64) -> Vec<EvalQuery> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let base = corpus(200, 0, 99, "q");
    (0..n)
        .map(|i| EvalQuery {
            vector: base[i % base.len()].vector.iter().map(|x| x + rng.random_range(-0.3f32..0.3)).collect(),
            answer: None,
        })
        .collect()
}

fn built(units: Vec<Unit>, opts: &BuildOptions, key: &SigningKey) -> Vec<u8> {
    let n = units.len();
    build(units, DIM, Metric::Cosine, source(n), opts, key, &|_, _| {}).unwrap().bytes
}

fn trust(key: &SigningKey) -> Trust {
    Trust { public_key: Some(key.public()), ..Default::default() }
}

#[test]
fn recall_floors_against_exact_search_for_each_kind() {
    let key = SigningKey::generate().unwrap();
    let cases = [
        // 400 queries (4,000 hits: ±0.01). RaBitQ at 48 dimensions, measured: IVF 0.899
        // (format 1's dense rotation) and 0.912 (format 2's structured one), HNSW with
        // its single global centroid 0.848 and 0.841.
        (Quantization::Rabitq4, IndexKind::Ivf { nlist: None }, 0.88),
        (Quantization::Int8, IndexKind::Ivf { nlist: None }, 0.95),
        (Quantization::None, IndexKind::Ivf { nlist: None }, 0.99),
        (Quantization::Rabitq4, IndexKind::Hnsw { m: 12, ef_construction: 100 }, 0.82),
        (Quantization::Int8, IndexKind::Hnsw { m: 12, ef_construction: 100 }, 0.95),
        (Quantization::None, IndexKind::Hnsw { m: 12, ef_construction: 100 }, 0.99),
        (Quantization::Rabitq1, IndexKind::Ivf { nlist: None }, 0.40),
    ];
    for (q, index, floor) in cases {
        let opts = BuildOptions {
            quantization: q,
            index,
            dedup_threshold: None,
            queries: queries(400, 5),
            ..BuildOptions::default()
        };
        let bytes = built(corpus(3000, 0, 1, "r"), &opts, &key);
        let k = Kernel::from_bytes(&bytes, "t", &trust(&key)).unwrap();
        let eval = k.manifest().report.as_ref().unwrap().eval.clone().unwrap();
        let best = eval.curve.iter().map(|c| c.1).fold(0.0, f32::max);
        assert!(best >= floor, "{q:?} {index:?}: best recall@10 {best} < {floor} ({:?})", eval.curve);
        // The default is the cheapest point reaching the target (0.95), or the best there is.
        assert!(eval.recall >= best.min(0.95) - 1e-6, "{q:?}: default {} ({:?})", eval.recall, eval.curve);
        assert!(eval.curve.iter().all(|c| c.0 >= eval.chosen || c.1 < 0.95), "{q:?}: {:?}", eval.curve);
    }
}

#[test]
fn compression_and_report_are_honest() {
    let key = SigningKey::generate().unwrap();
    let units = corpus(3000, 0, 2, "c");
    let text: u64 = units.iter().map(|u| u.text.as_ref().unwrap().len() as u64).sum();
    let bytes = built(units, &BuildOptions { dedup_threshold: None, ..Default::default() }, &key);
    let k = Kernel::from_bytes(&bytes, "t", &trust(&key)).unwrap();
    let m = k.manifest();
    let r = m.report.as_ref().unwrap();
    assert_eq!(r.raw.vectors, 3000 * DIM as u64 * 4);
    assert_eq!(r.raw.text, text);
    assert!(r.raw.metadata > 0 && r.raw.total == r.raw.vectors + r.raw.text + r.raw.metadata);
    assert_eq!((r.records_in, r.rows_out, r.consolidated), (3000, 3000, 0));
    assert_eq!(m.file_bytes as usize, bytes.len());
    // No full-precision vectors: 4-bit codes of a 64-padded 48-d vector are 32 bytes.
    assert!(m.sections.iter().all(|s| s.name != "vectors"));
    let codes = m.sections.iter().find(|s| s.name == "rabitq.codes").unwrap();
    assert_eq!(codes.len, 3000 * 32);
    let text_sec = m.sections.iter().find(|s| s.name == "text").unwrap();
    assert!(text_sec.len < text / 2, "text {} → {} bytes", text, text_sec.len);
}

#[test]
fn near_duplicates_consolidate_and_keep_every_id() {
    let key = SigningKey::generate().unwrap();
    let units = corpus(1000, 50, 3, "d");
    let probe = units[7].vector.clone(); // d7 has a near copy: dup1 (1 * 7 % 1000)
    let bytes = built(units, &BuildOptions { dedup_threshold: Some(0.99), ..Default::default() }, &key);
    let k = Kernel::from_bytes(&bytes, "t", &trust(&key)).unwrap();
    let r = k.manifest().report.as_ref().unwrap();
    assert_eq!(r.records_in, 1050);
    assert!(r.consolidated >= 50 && r.rows_out == 1050 - r.consolidated, "{r:?}");
    assert_eq!(k.manifest().ids, 1050);
    let hits = k.search(&probe, &SearchParams { k: 1, probe: None, filter: None }).unwrap();
    assert_eq!(hits[0].ids[0], "d7");
    assert!(hits[0].ids.contains(&"ddup1".to_string()), "{:?}", hits[0].ids);
    // Every original id is somewhere in the kernel.
    let all: std::collections::HashSet<String> = k.rows_decoded().unwrap().into_iter().flat_map(|u| u.ids).collect();
    assert_eq!(all.len(), 1050);
    assert!(all.contains("ddup49") && all.contains("d999"));
}

#[test]
fn filters_return_k_whenever_k_match_and_bad_queries_are_refused() {
    let key = SigningKey::generate().unwrap();
    for index in [IndexKind::Ivf { nlist: None }, IndexKind::Hnsw { m: 8, ef_construction: 64 }] {
        let bytes =
            built(corpus(2000, 0, 4, "f"), &BuildOptions { dedup_threshold: None, index, ..Default::default() }, &key);
        let k = Kernel::from_bytes(&bytes, "t", &trust(&key)).unwrap();
        let q = corpus(1, 0, 4, "f")[0].vector.clone();
        // 20 rows are "rare" (1%): all must come back for k = 20, whatever lists hold them.
        let filter = kernelize_index::filter::Filter::parse("kind = \"rare\"").unwrap();
        let hits = k.search(&q, &SearchParams { k: 20, probe: Some(1), filter: Some(filter) }).unwrap();
        assert_eq!(hits.len(), 20, "{index:?}");
        assert!(hits.iter().all(|h| h.metadata.as_ref().unwrap()["kind"] == "rare"));
        let f = kernelize_index::filter::Filter::parse("group = 3 and kind = \"common\"").unwrap();
        let hits = k.search(&q, &SearchParams { k: 10, probe: None, filter: Some(f) }).unwrap();
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| h.metadata.as_ref().unwrap()["group"] == 3));
        assert!(hits.iter().all(|h| h.text.as_deref().unwrap().starts_with("document ")));
        // Bad queries: clear errors.
        let p = SearchParams { k: 5, ..Default::default() };
        let e = k.search(&q[..10], &p).unwrap_err().to_string();
        assert!(e.contains("10 dimensions"), "{e}");
        let mut nan = q.clone();
        nan[3] = f32::NAN;
        assert!(k.search(&nan, &p).unwrap_err().to_string().contains("component 3"));
        assert!(k.search(&q, &SearchParams { k: 0, ..Default::default() }).is_err());
        let f = kernelize_index::filter::Filter::parse("colour = \"red\"").unwrap();
        let e = k.search(&q, &SearchParams { k: 5, probe: None, filter: Some(f) }).unwrap_err().to_string();
        assert!(e.contains("unknown field \"colour\""), "{e}");
    }
}

#[test]
fn flipping_any_byte_is_detected_and_refused() {
    let key = SigningKey::generate().unwrap();
    let units = corpus(300, 0, 5, "t");
    let opts = BuildOptions { dedup_threshold: None, ..Default::default() };
    let bytes = built(units, &opts, &key);
    let t = trust(&key);
    assert!(Kernel::from_bytes(&bytes, "t", &t).unwrap().signature_verified());
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        assert!(Kernel::from_bytes(&b, "t", &t).is_err(), "flipping byte {i} of {} went unnoticed", bytes.len());
    }
    // Truncation and extension too.
    assert!(Kernel::from_bytes(&bytes[..bytes.len() - 1], "t", &t).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Kernel::from_bytes(&longer, "t", &t).is_err());
}

#[test]
fn wrong_key_and_expiry_are_refused() {
    let key = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let opts = BuildOptions { dedup_threshold: None, expires: Some(2_000_000_000), ..Default::default() };
    let bytes = built(corpus(200, 0, 6, "w"), &opts, &key);
    match Kernel::from_bytes(&bytes, "t", &trust(&other)) {
        Err(KernelError::Signature { reason, .. }) => {
            assert!(reason.contains(&key.public().key_id()) && reason.contains(&other.public().key_id()), "{reason}")
        }
        other => panic!("a wrong key must be refused: {other:?}"),
    }
    let late = Trust { now: Some(2_000_000_001), ..trust(&key) };
    assert!(matches!(Kernel::from_bytes(&bytes, "t", &late), Err(KernelError::Expired { .. })));
    let allowed = Trust { allow_expired: true, ..late };
    assert!(Kernel::from_bytes(&bytes, "t", &allowed).is_ok());
    let early = Trust { now: Some(1_999_999_999), ..trust(&key) };
    assert!(Kernel::from_bytes(&bytes, "t", &early).is_ok());
}

#[test]
fn merge_union_and_replace() {
    let key = SigningKey::generate().unwrap();
    let opts = BuildOptions { dedup_threshold: Some(0.99), ..Default::default() };
    let a_units = corpus(600, 0, 7, "a");
    let mut b_units = corpus(400, 0, 8, "b");
    // b repeats a0..a9 with new text and vectors (an update) and holds a near copy of a20.
    for i in 0..10 {
        let mut u = b_units[i].clone();
        u.ids = vec![format!("a{i}")];
        u.vector = a_units[i].vector.iter().map(|x| -x).collect(); // a new vector, near nothing else
        u.text = Some(format!("updated {i}"));
        b_units.push(u);
    }
    let mut copy = a_units[20].clone();
    copy.ids = vec!["b-copy-of-a20".into()];
    b_units.push(copy);
    let a = Kernel::from_bytes(&built(a_units, &opts, &key), "a", &trust(&key)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // b is newer by `created`
    let b = Kernel::from_bytes(&built(b_units, &opts, &key), "b", &trust(&key)).unwrap();

    for mode in [MergeMode::Union, MergeMode::Replace] {
        let m = merge(&a, &b, mode, &opts, &key, &|_, _| {}).unwrap();
        let k = Kernel::from_bytes(&m.bytes, "m", &trust(&key)).unwrap();
        assert_eq!(k.manifest().kernel_version, 2);
        let rows = k.rows_decoded().unwrap();
        let ids: std::collections::HashSet<&str> = rows.iter().flat_map(|u| u.ids.iter().map(String::as_str)).collect();
        assert_eq!(ids.len(), 600 + 400 + 1, "{mode:?}: every id once");
        assert!(ids.contains("a599") && ids.contains("b399") && ids.contains("b-copy-of-a20"));
        // The near copy is consolidated with a20 across the inputs.
        let a20 = rows.iter().find(|u| u.ids.contains(&"a20".to_string())).unwrap();
        assert!(a20.ids.contains(&"b-copy-of-a20".to_string()), "{mode:?}: {:?}", a20.ids);
        // a3: union keeps a's version, replace the newer b's.
        let a3 = rows.iter().find(|u| u.ids.contains(&"a3".to_string())).unwrap();
        if mode == MergeMode::Replace {
            assert_eq!(a3.text.as_deref(), Some("updated 3"), "replace: the newer kernel's a3 wins");
        } else {
            assert!(a3.text.as_deref().unwrap().starts_with("document 3 "), "union keeps the first input's a3");
        }
        // Search finds records from both inputs.
        let hit = k.search(&b.rows_decoded().unwrap()[0].vector, &SearchParams { k: 1, ..Default::default() }).unwrap();
        assert!(hit[0].ids.iter().any(|i| i.starts_with('b') || i.starts_with('a')));
    }
    let d = diff(&a, &b).unwrap();
    assert_eq!(d.only_in_a.len(), 590);
    assert_eq!(d.only_in_b.len(), 401);
    assert_eq!(d.changed.len(), 10, "{:?}", d.changed);
    assert!(d.changed.iter().all(|(_, w)| w.contains("text")));
}

#[test]
fn garbage_and_truncations_never_panic() {
    let key = SigningKey::generate().unwrap();
    let bytes = built(corpus(100, 0, 9, "g"), &BuildOptions { dedup_threshold: None, ..Default::default() }, &key);
    let none = Trust { allow_expired: true, ..Default::default() };
    for len in (0..bytes.len()).step_by(97) {
        assert!(Kernel::from_bytes(&bytes[..len], "t", &none).is_err());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..2000 {
        let mut b = bytes.clone();
        for _ in 0..rng.random_range(1..8) {
            let i = rng.random_range(0..b.len());
            b[i] = rng.random();
        }
        let _ = Kernel::from_bytes(&b, "t", &none)
            .map(|k| k.search(&[0.5; DIM], &SearchParams { k: 3, ..Default::default() }));
        // Behind the hashes (anyone can compute them): decoders must hold too.
        if let Ok(k) = Kernel::from_bytes_unhashed(&b) {
            let _ = k.search(&[0.5; DIM], &SearchParams { k: 5, ..Default::default() });
            let f = kernelize_index::filter::Filter::parse("group = 3").unwrap();
            let _ = k.search(&[0.5; DIM], &SearchParams { k: 5, probe: Some(2), filter: Some(f) });
            let _ = k.rows_decoded();
        }
    }
}

#[test]
fn tiny_collections_build_and_answer() {
    let key = SigningKey::generate().unwrap();
    for n in 1..=3 {
        for index in [IndexKind::Ivf { nlist: None }, IndexKind::Hnsw { m: 4, ef_construction: 16 }] {
            let units = corpus(n, 0, 11, "s");
            let q = units[0].vector.clone();
            let built = build(
                units,
                DIM,
                Metric::Cosine,
                source(n),
                &BuildOptions { index, ..Default::default() },
                &key,
                &|_, _| {},
            )
            .unwrap_or_else(|e| panic!("{n} rows, {index:?}: {e}"));
            let k = Kernel::from_bytes(&built.bytes, "t", &trust(&key)).unwrap();
            let hits = k.search(&q, &SearchParams { k: 3, ..Default::default() }).unwrap();
            assert_eq!(hits.len(), n, "{n} rows, {index:?}");
            assert_eq!(hits[0].ids[0], "s0");
        }
    }
}

#[test]
fn kernels_record_their_encoder_and_merges_of_different_encoders_are_refused() {
    let key = SigningKey::generate().unwrap();
    let opts = BuildOptions::default();
    let record = |model: &str| kernelize_store::EncoderRecord {
        modality: kernelize_store::Modality::Image,
        model: model.into(),
        dim: DIM,
        preprocessing: "resize, crop, normalise".into(),
    };
    let make = |units: Vec<Unit>, model: &str| {
        let n = units.len();
        let src = SourceInfo { encoder: Some(record(model)), ..source(n) };
        let bytes = build(units, DIM, Metric::Cosine, src, &opts, &key, &|_, _| {}).unwrap().bytes;
        Kernel::from_bytes(&bytes, model, &trust(&key)).unwrap()
    };
    let a = make(corpus(200, 0, 1, "a"), "EfficientNet-Lite0");
    assert_eq!(
        a.manifest().source.encoder,
        Some(record("EfficientNet-Lite0")),
        "the record survives signing and parsing"
    );
    let same = make(corpus(100, 0, 2, "b"), "EfficientNet-Lite0");
    let m = merge(&a, &same, MergeMode::Union, &opts, &key, &|_, _| {}).unwrap();
    let merged = Kernel::from_bytes(&m.bytes, "m", &trust(&key)).unwrap();
    assert_eq!(merged.manifest().source.encoder, Some(record("EfficientNet-Lite0")));
    let other = make(corpus(100, 0, 3, "c"), "another-model");
    let err = merge(&a, &other, MergeMode::Union, &opts, &key, &|_, _| {}).unwrap_err().to_string();
    assert!(err.contains("different encoders"), "{err}");
    // A kernel without the record (built before modalities) still opens.
    let plain = Kernel::from_bytes(&built(corpus(50, 0, 4, "d"), &opts, &key), "plain", &trust(&key)).unwrap();
    assert_eq!(plain.manifest().source.encoder, None);
}
