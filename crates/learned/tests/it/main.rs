//! Integration tests of `kernelize-learned`: the error bound and exact lower
//! bounds on random key sets (proptest), the byte format's round trip, and
//! `from_bytes` on hostile input.

use kernelize_learned::{Error, PgmIndex};
use proptest::prelude::*;

/// Keys from the regions that break naive arithmetic: near 0, near
/// `u64::MAX`, around 2^63 (sign bit), and anywhere.
fn key() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..64,
        (u64::MAX - 64)..=u64::MAX,
        ((1u64 << 63) - 32)..((1u64 << 63) + 32),
        (1u64 << 32)..((1u64 << 32) + 2_000),
        any::<u64>(),
    ]
}

/// Sorted keys with duplicate runs, some of them longer than any epsilon we
/// test with.
fn sorted_keys() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec((key(), 1usize..4, prop::bool::weighted(0.04), 1usize..300), 0..600).prop_map(|runs| {
        let mut keys = Vec::new();
        for (k, short, long, long_len) in runs {
            keys.extend(std::iter::repeat_n(k, if long { long_len } else { short }));
        }
        keys.sort_unstable();
        keys
    })
}

fn epsilon() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..=8, 9usize..=200]
}

/// Checks the window and the exact lower bound of `q`.
fn check_query(idx: &PgmIndex, keys: &[u64], q: u64) -> Result<(), TestCaseError> {
    let want = keys.partition_point(|k| *k < q);
    let r = idx.search(q);
    prop_assert!(r.start <= r.end && r.end <= keys.len(), "window {:?} out of 0..{}", r, keys.len());
    prop_assert!(r.len() <= 2 * idx.epsilon() + 2, "window {:?} wider than 2 * {} + 2", r, idx.epsilon());
    prop_assert!(r.contains(&want) || (want == keys.len() && r.end == want), "q={q}: lower bound {want} not in {r:?}");
    prop_assert_eq!(idx.lower_bound(keys, q), want, "q={}", q);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn windows_contain_the_lower_bound(keys in sorted_keys(), eps in epsilon(), extra in prop::collection::vec(any::<u64>(), 0..64)) {
        let idx = PgmIndex::build(&keys, eps).unwrap();
        prop_assert_eq!(idx.len(), keys.len());
        prop_assert_eq!(idx.is_empty(), keys.is_empty());
        for &k in &keys {
            check_query(&idx, &keys, k)?;
            check_query(&idx, &keys, k.wrapping_add(1))?;
            check_query(&idx, &keys, k.wrapping_sub(1))?;
        }
        for q in extra.into_iter().chain([0, 1, u64::MAX, u64::MAX - 1, 1 << 63]) {
            check_query(&idx, &keys, q)?;
        }
    }

    #[test]
    fn round_trip_preserves_answers(keys in sorted_keys(), eps in epsilon(), probes in prop::collection::vec(key(), 0..64)) {
        let idx = PgmIndex::build(&keys, eps).unwrap();
        let bytes = idx.to_bytes();
        let back = PgmIndex::from_bytes(&bytes, keys.len()).unwrap();
        prop_assert_eq!(back.to_bytes(), bytes);
        prop_assert_eq!(back.segments(), idx.segments());
        prop_assert_eq!(back.epsilon(), eps);
        for q in probes {
            prop_assert_eq!(back.search(q), idx.search(q));
            check_query(&back, &keys, q)?;
        }
    }

    #[test]
    fn from_bytes_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512), n in 0usize..1000) {
        let _ = PgmIndex::from_bytes(&bytes, n);
    }

    #[test]
    fn damaged_bytes_are_rejected(keys in sorted_keys(), eps in epsilon(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let idx = PgmIndex::build(&keys, eps).unwrap();
        let bytes = idx.to_bytes();
        let cut = cut.index(bytes.len());
        let truncated = PgmIndex::from_bytes(&bytes[..cut], keys.len());
        prop_assert!(matches!(truncated, Err(Error::Corrupt { .. })), "truncation to {} bytes accepted", cut);
        let mut flipped = bytes.clone();
        flipped[flip.index(bytes.len())] ^= 1 << bit;
        // CRC-32C detects every single-bit error.
        prop_assert!(PgmIndex::from_bytes(&flipped, keys.len()).is_err());
    }

    /// Damage behind a recomputed checksum (what a malicious file can always
    /// do): parsing must not panic, and whatever parses must answer every
    /// query with an in-bounds window without panicking.
    #[test]
    fn resealed_damage_never_panics(keys in sorted_keys(), eps in epsilon(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), probes in prop::collection::vec(key(), 0..32)) {
        let idx = PgmIndex::build(&keys, eps).unwrap();
        let mut bytes = idx.to_bytes();
        let body = bytes.len() - 4;
        for (at, value) in edits {
            bytes[at.index(body)] = value;
        }
        let crc = crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        if let Ok(parsed) = PgmIndex::from_bytes(&bytes, keys.len()) {
            for q in probes.into_iter().chain(keys.iter().copied()) {
                let r = parsed.search(q);
                prop_assert!(r.start <= r.end && r.end <= keys.len());
                prop_assert!(r.len() <= 2 * parsed.epsilon() + 2);
                let lb = parsed.lower_bound(&keys, q);
                prop_assert!(lb <= keys.len());
            }
        }
    }
}

/// CRC-32C (Castagnoli), bitwise; the test's independent reimplementation of
/// the format's checksum.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn crc_reimplementation_matches_the_format() {
    let idx = PgmIndex::build(&[1, 2, 3, 1000, 1 << 40], 1).unwrap();
    let bytes = idx.to_bytes();
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    assert_eq!(crc32c(body).to_le_bytes(), crc);
}

/// Regression guard for the float path: keys spread over the whole `u64`
/// range with tiny epsilon, where `slope * dx` multiplies ~2^-40 by ~2^63.
#[test]
fn whole_range_with_epsilon_one() {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut keys: Vec<u64> = (0..300_000)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        })
        .collect();
    keys.extend([0, 1, u64::MAX, u64::MAX, u64::MAX]);
    keys.sort_unstable();
    for eps in [1, 2, 64] {
        let idx = PgmIndex::build(&keys, eps).unwrap();
        for (i, &k) in keys.iter().enumerate().step_by(7) {
            let want = keys.partition_point(|v| *v < k);
            assert!(want <= i);
            assert_eq!(idx.lower_bound(&keys, k), want);
            let want = keys.partition_point(|v| *v < k.wrapping_add(1));
            assert_eq!(idx.lower_bound(&keys, k.wrapping_add(1)), want);
        }
    }
}

#[test]
fn index_is_small_on_uniform_keys() {
    let mut x = 7u64;
    let mut keys: Vec<u64> = (0..1_000_000)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
        .collect();
    keys.sort_unstable();
    let idx = PgmIndex::build(&keys, kernelize_learned::DEFAULT_EPSILON).unwrap();
    // The floor the product asks for: at most 1% of the key array.
    assert!((idx.size_bytes() as f64) < 0.01 * 8.0 * keys.len() as f64, "{idx:?}");
}
