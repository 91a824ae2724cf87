//! Encrypted (sealed) files of an encrypted data directory: opening arbitrary bytes, or a
//! real sealed file with bytes flipped or cut, never panics and never yields plaintext
//! that was not sealed (at most a prefix of it, when a torn tail is cut).
#![no_main]
use kernelize_store::{EncryptedStorage, MasterKey, MemStorage, Storage};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::{Arc, OnceLock};

const ROOT: &str = "data";
const FILE: &str = "data/collections/docs/wal/00000000000000000001.wal";

struct Fixture {
    enc: EncryptedStorage,
    inner: Arc<MemStorage>,
    plain: Vec<u8>,
    sealed: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let inner = Arc::new(MemStorage::new());
        let master = MasterKey::from_bytes([7u8; 32]);
        let enc = EncryptedStorage::create(inner.clone(), Path::new(ROOT), &master).expect("keyring");
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let sealed = enc.seal("docs", &plain).expect("seal");
        Fixture { enc, inner, plain, sealed }
    })
}

fn check(f: &Fixture, bytes: Vec<u8>) {
    if let Ok(p) = f.enc.unseal(Path::new(FILE), bytes.clone()) {
        assert!(f.plain.starts_with(&p), "unseal yielded plaintext that was never sealed");
    }
    let path = Path::new(FILE);
    let _ = f.inner.create_dir_all(Path::new("data/collections/docs/wal"));
    let Ok(mut w) = f.inner.create(path) else { return };
    if w.write_all(&bytes).is_err() {
        return;
    }
    drop(w);
    let read = f.enc.read(path);
    if let Ok(p) = &read {
        assert!(f.plain.starts_with(p), "read yielded plaintext that was never sealed");
        if let Ok(n) = f.enc.file_len(path) {
            assert_eq!(n, p.len() as u64, "file_len disagrees with read");
        }
    }
    if let Ok(m) = f.enc.map(path) {
        assert!(f.plain.starts_with(&m), "map yielded plaintext that was never sealed");
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    match data.split_first() {
        // A real sealed file with up to 16 edits: (offset: u32 LE, xor byte) each, then cut.
        Some((0, rest)) => {
            let mut b = f.sealed.clone();
            for e in rest.chunks_exact(5).take(16) {
                let at = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) as usize % b.len();
                b[at] ^= e[4].max(1);
            }
            if let Some(cut) = rest.get(80..84) {
                let n = u32::from_le_bytes([cut[0], cut[1], cut[2], cut[3]]) as usize % (b.len() + 1);
                b.truncate(n);
            }
            check(f, b);
        }
        // Arbitrary bytes.
        _ => check(f, data.to_vec()),
    }
});
