//! Kernel files: opening (container, manifest, shapes — behind the section hashes too,
//! since anyone can compute hashes) and then searching, filtering and decoding every row
//! never panic.
#![no_main]
use kernelize_index::filter::Filter;
use kernelize_kernel::{Kernel, SearchParams, Trust};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let trust = Trust { allow_expired: true, ..Default::default() };
    let _ = Kernel::from_bytes(data, "fuzz", &trust);
    let Ok(k) = Kernel::from_bytes_unhashed(data) else { return };
    let dim = k.manifest().dim.min(4096);
    let q: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
    for probe in [None, Some(1), Some(1_000_000)] {
        let _ = k.search(&q, &SearchParams { k: 5, probe, filter: None });
    }
    if let Ok(f) = Filter::parse("a = 1 or b in [\"x\", \"y\"]") {
        let _ = k.search(&q, &SearchParams { k: 5, probe: None, filter: Some(f) });
    }
    if k.manifest().rows <= 10_000 {
        let _ = k.rows_decoded();
    }
});
