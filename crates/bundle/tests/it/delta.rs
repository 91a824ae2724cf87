//! Deltas: round trips on random data and on real kernels, and clean refusals.

use crate::support::*;
use kernelize_bundle::*;
use proptest::prelude::*;

#[test]
fn round_trip_on_random_data_with_edits() {
    let old = file(300_000, 1);
    let mut new = old.clone();
    // Overwrite 1%, insert and delete a few runs.
    for i in (0..new.len()).step_by(100) {
        new[i] = new[i].wrapping_add(1);
    }
    new.splice(1000..1000, file(5000, 2));
    new.drain(200_000..210_000);
    let d = make_delta(&old, &new).unwrap();
    assert_eq!(apply_delta(&old, &d, new.len() as u64).unwrap(), new);
    // The delta is much smaller than the (incompressible) file.
    assert!(d.len() < new.len() / 10, "{} bytes for {}", d.len(), new.len());
    let h = DeltaHeader::parse(&d).unwrap();
    assert_eq!(h.base_sha256, Sha256::of(&old));
    assert_eq!(h.result_length, new.len() as u64);
    // Unrelated files still round-trip (the delta is then about the full size).
    let other = file(50_000, 3);
    let d = make_delta(&old, &other).unwrap();
    assert_eq!(apply_delta(&old, &d, 1 << 20).unwrap(), other);
}

#[test]
fn wrong_base_is_a_clean_error() {
    let old = file(100_000, 4);
    let mut new = old.clone();
    new[5] ^= 1;
    let d = make_delta(&old, &new).unwrap();
    let mut other = old.clone();
    other[99_999] ^= 1;
    let err = apply_delta(&other, &d, 1 << 20).unwrap_err();
    assert_eq!(err.code(), "delta_base_mismatch", "{err}");
    let err = apply_delta(&old[..1000], &d, 1 << 20).unwrap_err();
    assert_eq!(err.code(), "delta_base_mismatch", "{err}");
}

#[test]
fn corrupted_or_truncated_delta_is_a_clean_error() {
    let old = file(60_000, 5);
    let mut new = old.clone();
    new.extend_from_slice(&file(3000, 6));
    new[10] ^= 1;
    let d = make_delta(&old, &new).unwrap();
    let mut refused = 0;
    for i in 0..d.len() {
        let mut b = d.clone();
        b[i] ^= 0x10;
        // A flip that changes nothing zstd reads (e.g. a frame-header flag with no effect
        // on this frame) may still yield the file; it can never yield other bytes, since
        // the result's SHA-256 is checked.
        match apply_delta(&old, &b, 1 << 20) {
            Ok(out) => assert!(out == new, "byte {i} flipped and applied to other bytes"),
            Err(e) => {
                assert!(matches!(e.code(), "delta_corrupt" | "delta_base_mismatch"), "{e}");
                refused += 1;
            }
        }
    }
    // Every header byte counts, and almost every frame byte does.
    assert!(refused >= d.len() - 8, "{refused} of {} flips refused", d.len());
    for cut in [0, 10, DELTA_HEADER_BYTES, d.len() - 1] {
        assert!(apply_delta(&old, &d[..cut], 1 << 20).is_err(), "cut at {cut}");
    }
    let mut long = d.clone();
    long.extend_from_slice(b"trailing");
    assert!(apply_delta(&old, &long, 1 << 20).is_err(), "trailing bytes after the frame");
}

#[test]
fn a_delta_promising_more_than_the_limit_is_refused_before_decoding() {
    let old = file(10_000, 7);
    let new = vec![0u8; 5 << 20]; // compresses to almost nothing
    let d = make_delta(&old, &new).unwrap();
    assert!(d.len() < 1000);
    let err = apply_delta(&old, &d, 1 << 20).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    assert_eq!(apply_delta(&old, &d, 5 << 20).unwrap(), new);
}

fn kernel(records: &[(String, Vec<f32>, String)], key: &kernelize_kernel::SigningKey) -> Vec<u8> {
    let units = records
        .iter()
        .map(|(id, v, t)| kernelize_kernel::Unit {
            ids: vec![id.clone()],
            vector: v.clone(),
            text: Some(t.clone()),
            metadata: None,
        })
        .collect();
    let source = kernelize_kernel::format::SourceInfo {
        collection: "c".into(),
        records: records.len() as u64,
        seq: 1,
        encoder: None,
    };
    let opts = kernelize_kernel::BuildOptions { dedup_threshold: None, ..Default::default() };
    kernelize_kernel::build(units, 16, kernelize_store::Metric::Cosine, source, &opts, key, &|_, _| {}).unwrap().bytes
}

#[test]
fn round_trip_between_real_kernels() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let key = kernelize_kernel::SigningKey::generate().unwrap();
    let mut records: Vec<(String, Vec<f32>, String)> = (0..2000)
        .map(|i| {
            let v: Vec<f32> = (0..16).map(|_| rng.random_range(-1.0..1.0)).collect();
            (format!("doc-{i}"), v, format!("record {i} about topic {} and more words {}", i % 37, i * 7))
        })
        .collect();
    let old = kernel(&records, &key);
    for r in records.iter_mut().step_by(100) {
        r.1 = (0..16).map(|_| rng.random_range(-1.0..1.0)).collect();
        r.2 = format!("changed {}", r.0);
    }
    let new = kernel(&records, &key);
    assert_ne!(old, new);
    let d = make_delta(&old, &new).unwrap();
    let back = apply_delta(&old, &d, new.len() as u64).unwrap();
    assert_eq!(back, new);
    let pk = key.public();
    let trust = kernelize_kernel::Trust { public_key: Some(pk), ..Default::default() };
    kernelize_kernel::Kernel::from_bytes(&back, "<delta>", &trust).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn apply_never_panics_on_arbitrary_bytes(
        old in proptest::collection::vec(any::<u8>(), 0..512),
        mut delta in proptest::collection::vec(any::<u8>(), 0..512),
        valid_header in any::<bool>(),
    ) {
        if valid_header && delta.len() >= DELTA_HEADER_BYTES {
            // A well-formed header for this base, followed by garbage: reaches the decoder.
            let real = make_delta(&old, b"x").unwrap();
            delta[..56].copy_from_slice(&real[..56]);
        }
        let _ = apply_delta(&old, &delta, 4096);
    }

    #[test]
    fn round_trip_on_arbitrary_pairs(
        old in proptest::collection::vec(any::<u8>(), 0..2048),
        new in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let d = make_delta_with(&old, &new, &DeltaOptions { level: 3 }).unwrap();
        prop_assert_eq!(apply_delta(&old, &d, new.len() as u64).unwrap(), new);
    }
}
