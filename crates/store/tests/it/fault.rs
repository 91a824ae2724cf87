//! I/O errors and a full disk: a clear error, nothing acknowledged lost, clean reopen.

use super::{cfg, rec};
use kernelize_store::{
    Database, Error, ErrorClass, FaultKind, FaultStorage, MemStorage, Options, SegmentOptions, Storage,
};
use std::path::Path;
use std::sync::Arc;

fn opts() -> Options {
    Options { memtable_bytes: 1024, segment: SegmentOptions { epsilon: 2 }, ..Options::default() }
}

#[test]
fn disk_full_at_every_point_returns_a_clear_error_and_reopens_cleanly() {
    // Walk the failure point through every storage operation of a workload that writes,
    // flushes and compacts.
    for fail_at in 0..120 {
        let mem = MemStorage::new();
        let fault = FaultStorage::new(Arc::new(mem.clone()));
        let storage: Arc<dyn Storage> = Arc::new(fault.clone());
        let db = Database::open_with(storage.clone(), Path::new("d"), opts()).unwrap();
        let c = db.create_collection("c", cfg()).unwrap();
        fault.fail_after(fail_at, FaultKind::DiskFull);
        let mut acked = Vec::new();
        let mut failure: Option<Error> = None;
        for i in 0..40 {
            match c.upsert(vec![rec(&format!("r{i}"), i as f32, 0.0)]) {
                Ok(_) => acked.push(i),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            if i % 13 == 12
                && let Err(e) = c.compact()
            {
                failure = Some(e);
                break;
            }
        }
        let Some(e) = failure else { continue };
        assert!(e.to_string().contains("no space left"), "fail_at {fail_at}: unclear error: {e}");
        assert!(matches!(e.class(), ErrorClass::Transient | ErrorClass::Fatal), "{e:?}");
        // Space is freed; the collection reopens and holds every acknowledged write.
        fault.disarm();
        drop((c, db));
        let db = Database::open_with(storage, Path::new("d"), opts())
            .unwrap_or_else(|e| panic!("fail_at {fail_at}: reopen failed: {e}"));
        let c = db.collection("c").unwrap();
        for i in &acked {
            assert!(c.get(&format!("r{i}")).unwrap().is_some(), "fail_at {fail_at}: acknowledged r{i} lost");
        }
        c.upsert(vec![rec("after", 1.0, 1.0)]).unwrap();
    }
}

#[test]
fn failed_fsync_poisons_the_writer_until_reopen() {
    let mem = MemStorage::new();
    let fault = FaultStorage::new(Arc::new(mem.clone()));
    let storage: Arc<dyn Storage> = Arc::new(fault.clone());
    let db = Database::open_with(storage.clone(), Path::new("d"), Options::default()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    c.upsert(vec![rec("a", 1.0, 0.0)]).unwrap();
    fault.fail_after(1, FaultKind::Io); // the write passes, its fsync fails
    let e = c.upsert(vec![rec("b", 1.0, 0.0)]).unwrap_err();
    assert!(e.to_string().contains("input/output error"), "{e}");
    fault.disarm();
    let e = c.upsert(vec![rec("c", 1.0, 0.0)]).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Fatal, "{e}");
    assert!(c.get("a").unwrap().is_some(), "reads keep working");
    drop((c, db));
    let db = Database::open_with(storage, Path::new("d"), Options::default()).unwrap();
    let c = db.collection("c").unwrap();
    assert!(c.get("a").unwrap().is_some());
    c.upsert(vec![rec("c", 1.0, 0.0)]).unwrap();
}
