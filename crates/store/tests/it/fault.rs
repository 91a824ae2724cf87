//! I/O errors and a full disk: a clear error, nothing acknowledged lost, clean reopen.

use super::{cfg, rec};
use kernelize_store::{
    Database, Error, ErrorClass, FaultKind, FaultStorage, Health, MemStorage, Options, SegmentOptions, Storage,
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
    // Visible without writing: the collection's health and the database's.
    assert!(matches!(c.health(), Health::Poisoned(ref why) if why.contains("input/output error")), "{:?}", c.health());
    assert!(matches!(&db.health()[..], [(n, Health::Poisoned(_))] if n == "c"));
    drop((c, db));
    let db = Database::open_with(storage, Path::new("d"), Options::default()).unwrap();
    let c = db.collection("c").unwrap();
    assert!(c.get("a").unwrap().is_some());
    c.upsert(vec![rec("c", 1.0, 0.0)]).unwrap();
}

fn seg_files(mem: &MemStorage, c: &kernelize_store::Collection) -> Vec<String> {
    mem.list_dir(&c.dir().join("seg")).unwrap()
}

#[test]
fn flush_failure_after_commit_reports_success() {
    let mem = MemStorage::new();
    let fault = FaultStorage::new(Arc::new(mem.clone()));
    let storage: Arc<dyn Storage> = Arc::new(fault.clone());
    let opts = Options { memtable_bytes: 1, ..opts() }; // every write flushes
    let db = Database::open_with(storage.clone(), Path::new("d"), opts).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    // Room for the WAL frame and the next WAL file, then the disk is full: the segment
    // file is created and its first write fails.
    fault.fill_disk_after(4);
    let seq = c.upsert(vec![rec("a", 1.0, 0.0)]).expect("the WAL commit succeeded: the write is durable");
    assert_eq!(seq, 1);
    assert!(fault.failures() > 0, "the flush must have failed");
    assert!(matches!(c.health(), Health::FlushFailing(ref e) if e.contains("no space")), "{:?}", c.health());
    let names = seg_files(&mem, &c);
    assert!(names.iter().all(|n| !n.ends_with(".tmp") && !n.ends_with(".seg")), "left behind: {names:?}");
    fault.disarm();
    // Retried at most once a second: this write does not flush again, and succeeds.
    c.upsert(vec![rec("b", 1.0, 0.0)]).unwrap();
    fault.fill_disk_after(0);
    assert!(c.flush().unwrap_err().is_disk_full());
    assert!(seg_files(&mem, &c).iter().all(|n| !n.ends_with(".tmp")));
    fault.disarm();
    let stats = c.stats().unwrap();
    assert_eq!(stats.flush_failures, 2);
    assert!(stats.last_flush_error.is_some());
    // The retry writes every frozen memtable (both failed flushes) into the segment.
    c.flush().unwrap();
    assert_eq!(c.health(), Health::Ok);
    assert_eq!(c.stats().unwrap().last_flush_error, None);
    drop((c, db));
    let db = Database::open_with(storage, Path::new("d"), opts).unwrap();
    let c = db.collection("c").unwrap();
    assert!(c.get("a").unwrap().is_some() && c.get("b").unwrap().is_some());
}

#[test]
fn flush_after_a_failed_flush_keeps_the_memtable_it_froze() {
    let mem = MemStorage::new();
    let fault = FaultStorage::new(Arc::new(mem.clone()));
    let storage: Arc<dyn Storage> = Arc::new(fault.clone());
    let db = Database::open_with(storage.clone(), Path::new("d"), Options::default()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    c.upsert(vec![rec("frozen", 1.0, 0.0)]).unwrap();
    fault.fill_disk_after(3); // new WAL file fits, the segment does not
    assert!(c.flush().is_err());
    fault.disarm();
    c.upsert(vec![rec("later", 1.0, 0.0)]).unwrap();
    c.flush().unwrap(); // must write "frozen" too: its WAL file is retired now
    drop((c, db));
    let db = Database::open_with(storage, Path::new("d"), Options::default()).unwrap();
    let c = db.collection("c").unwrap();
    assert!(c.get("frozen").unwrap().is_some(), "the memtable frozen by the failed flush was lost");
    assert!(c.get("later").unwrap().is_some());
}

#[test]
fn failed_compaction_removes_its_temporary_segment() {
    let mem = MemStorage::new();
    let fault = FaultStorage::new(Arc::new(mem.clone()));
    let storage: Arc<dyn Storage> = Arc::new(fault.clone());
    let db = Database::open_with(storage, Path::new("d"), opts()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    for i in 0..60 {
        c.upsert(vec![rec(&format!("r{i}"), i as f32, 0.0)]).unwrap();
    }
    c.flush().unwrap();
    let before = seg_files(&mem, &c);
    fault.fill_disk_after(2);
    assert!(c.compact().unwrap_err().is_disk_full());
    assert_eq!(seg_files(&mem, &c), before, "a failed compaction leaves no file behind");
    fault.disarm();
    c.compact().unwrap();
}

/// A data directory whose collection `c` holds r0..r9 and a torn frame at the WAL's end.
fn with_torn_tail(mem: &MemStorage) {
    let db = Database::open_with(Arc::new(mem.clone()), Path::new("d"), Options::default()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    for i in 0..10 {
        c.upsert(vec![rec(&format!("r{i}"), i as f32, 0.0)]).unwrap();
    }
    let wal = kernelize_store::wal_path(c.dir(), 1);
    drop((c, db));
    let mut f = mem.append(&wal).unwrap();
    f.write_all(&kernelize_store::wal_format::frame_bytes(11, b"an interrupted write")[..20]).unwrap();
    f.sync().unwrap();
}

#[test]
fn full_disk_open_cuts_a_torn_tail_without_room_for_its_copy() {
    let mem = MemStorage::new();
    with_torn_tail(&mem);
    let fault = FaultStorage::new(Arc::new(mem.clone()));
    let storage: Arc<dyn Storage> = Arc::new(fault.clone());
    fault.fill_disk_after(0);
    let db = Database::open_with(storage, Path::new("d"), Options::default()).expect("opens on a full disk");
    let c = db.collection("c").unwrap();
    assert_eq!(c.snapshot().count().unwrap(), 10);
    let r = c.recovery_report();
    assert!(r.truncated.is_some() && r.not_kept.is_some(), "{r:?}");
    // No room for a WAL file yet: the write fails cleanly, without poisoning.
    assert!(c.upsert(vec![rec("x", 1.0, 0.0)]).unwrap_err().is_disk_full());
    assert_eq!(c.health(), Health::Ok);
    fault.disarm();
    c.upsert(vec![rec("x", 1.0, 0.0)]).unwrap();
    assert_eq!(c.snapshot().count().unwrap(), 11);
}

#[test]
fn read_only_open_writes_nothing_even_when_every_write_fails() {
    let mem = MemStorage::new();
    with_torn_tail(&mem);
    let before = mem.live_bytes();
    let fault = FaultStorage::new(Arc::new(mem.clone()));
    fault.fail_after(0, FaultKind::Io);
    let db = Database::open_read_only_with(Arc::new(fault.clone()), Path::new("d"), Options::default()).unwrap();
    assert!(db.is_read_only());
    let c = db.collection("c").unwrap();
    assert_eq!(c.snapshot().count().unwrap(), 10);
    assert!(c.recovery_report().loss.is_some(), "the torn tail is seen, not cut");
    assert_eq!(fault.failures(), 0, "a read-only open attempted a write");
    assert_eq!(mem.live_bytes(), before);
    for e in [
        c.upsert(vec![rec("x", 1.0, 0.0)]).unwrap_err(),
        c.flush().unwrap_err(),
        c.compact().unwrap_err(),
        db.create_collection("n", cfg()).unwrap_err(),
        db.drop_collection("c").unwrap_err(),
    ] {
        assert!(matches!(e, Error::ReadOnly(_)), "{e}");
    }
    assert_eq!(fault.failures(), 0);
}
