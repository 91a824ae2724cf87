//! Learned-index bytes: parsing never panics, and lookups on a parsed index stay in bounds.
#![no_main]
use kernelize_learned::PgmIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = usize::from(data[0]) * 7 + usize::from(data[1]);
    let keys: Vec<u64> = (0..n as u64).map(|k| k * 3).collect();
    if let Ok(idx) = PgmIndex::from_bytes(&data[2..], n) {
        for probe in [0u64, 1, 5, 3 * n as u64, u64::MAX] {
            let r = idx.search(probe);
            assert!(r.start <= r.end && r.end <= n + 1);
            assert!(idx.lower_bound(&keys, probe) <= n);
        }
    }
});
