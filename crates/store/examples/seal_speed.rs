//! Raw speed of sealing and opening files through EncryptedStorage over MemStorage.
#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "a benchmark program")]
use kernelize_store::{EncryptedStorage, MasterKey, MemStorage, Storage};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let mem = MemStorage::new();
    let e = EncryptedStorage::create(Arc::new(mem.clone()), Path::new("/d"), &MasterKey::from_bytes([1; 32])).unwrap();
    e.create_dir_all(Path::new("/d/collections/c/seg")).unwrap();
    let buf = vec![7u8; 1 << 20];
    for (name, s) in [("plain", &mem as &dyn Storage), ("sealed", &e as &dyn Storage)] {
        let p = Path::new("/d/collections/c/seg/x");
        let t = Instant::now();
        let mut f = s.create(p).unwrap();
        for _ in 0..256 {
            f.write_all(&buf).unwrap();
        }
        drop(f);
        let w = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let n = s.map(p).unwrap().len();
        let r = t.elapsed().as_secs_f64();
        println!("{name}: write 256 MiB {:.0} MB/s, read {:.0} MB/s ({n} bytes)", 268.4 / w, 268.4 / r);
    }
}
