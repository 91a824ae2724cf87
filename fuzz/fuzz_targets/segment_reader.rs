//! Segment files: opening (full validation) and reading every record never panic.
#![no_main]
use kernelize_store::{Key, Mapped, Segment};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(seg) = Segment::from_mapped(Path::new("fuzz.seg"), Mapped::new(data.to_vec())) else { return };
    for i in 0..seg.len().min(256) {
        if let Ok((key, _)) = seg.entry(i) {
            let _ = seg.find(&key);
        }
        let _ = seg.vector(i);
    }
    let _ = seg.get(&Key::of("probe"));
});
