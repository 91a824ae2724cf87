//! WAL files and batch payloads: scanning and decoding never panic, and every frame the
//! scan accepts lies inside the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scan = kernelize_store::wal_format::scan(data);
    assert!(scan.valid_len as usize <= data.len());
    for f in &scan.frames {
        let _ = kernelize_store::decode_wal_batch(f.payload);
    }
    let _ = kernelize_store::decode_wal_batch(data);
    // Also as a whole WAL file whose frames carry the fuzzed bytes.
    let mut file = kernelize_store::wal_format::header_bytes(1);
    file.extend(kernelize_store::wal_format::frame_bytes(1, data));
    let scan = kernelize_store::wal_format::scan(&file);
    assert_eq!(scan.frames.len(), 1);
    let _ = kernelize_store::decode_wal_batch(scan.frames[0].payload);
});
