use super::{cfg, rec};
use kernelize_store::{Database, Error, MemStorage, Options, Record, SegmentOptions};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

fn small() -> Options {
    Options { memtable_bytes: 4096, segment: SegmentOptions { epsilon: 4 }, ..Options::default() }
}

#[test]
fn upsert_get_delete_across_flush_and_compaction() {
    let mem = Arc::new(MemStorage::new());
    let db = Database::open_with(mem.clone(), Path::new("d"), small()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    for i in 0..500 {
        c.upsert(vec![rec(&format!("id{i}"), i as f32, 0.0)]).unwrap();
    }
    c.delete((0..500).step_by(3).map(|i| format!("id{i}")).collect()).unwrap();
    for i in (0..500).step_by(5) {
        c.upsert(vec![rec(&format!("id{i}"), i as f32, 1.0)]).unwrap();
    }
    let check = |c: &kernelize_store::Collection| {
        let snap = c.snapshot();
        let mut n = 0;
        for i in 0..500 {
            let got = snap.get(&format!("id{i}")).unwrap();
            let want = if i % 5 == 0 {
                Some(1.0)
            } else if i % 3 == 0 {
                None
            } else {
                Some(0.0)
            };
            assert_eq!(got.map(|r| r.vector[1]), want, "id{i}");
            n += usize::from(want.is_some());
        }
        assert_eq!(snap.count().unwrap(), n as u64);
        assert_eq!(snap.scan(None).count(), n);
    };
    assert!(c.stats().unwrap().segments > 1, "small memtable must have flushed");
    check(&c);
    let report = c.compact().unwrap();
    assert_eq!(c.stats().unwrap().segments, 1);
    assert!(report.entries_after < report.entries_before);
    check(&c);
    drop((c, db));
    let db = Database::open_with(mem, Path::new("d"), small()).unwrap();
    check(&db.collection("c").unwrap());
}

#[test]
fn snapshot_does_not_see_later_writes() {
    let db = Database::open_with(Arc::new(MemStorage::new()), Path::new("d"), small()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    c.upsert(vec![rec("a", 1.0, 0.0)]).unwrap();
    let snap = c.snapshot();
    c.upsert(vec![rec("a", 2.0, 0.0), rec("b", 1.0, 0.0)]).unwrap();
    c.compact().unwrap();
    assert_eq!(snap.get("a").unwrap().unwrap().vector[0], 1.0);
    assert!(snap.get("b").unwrap().is_none());
    assert_eq!(snap.count().unwrap(), 1);
    assert_eq!(c.snapshot().count().unwrap(), 2);
}

#[test]
fn scan_pagination_visits_every_record_once() {
    let db = Database::open_with(Arc::new(MemStorage::new()), Path::new("d"), small()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    for chunk in (0..300).collect::<Vec<_>>().chunks(7) {
        c.upsert(chunk.iter().map(|i| rec(&format!("k{i}"), *i as f32, 0.0)).collect()).unwrap();
    }
    let snap = c.snapshot();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page: Vec<_> = snap.scan(after.as_deref()).take(16).map(|r| r.unwrap().id.clone()).collect();
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        seen.extend(page);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 300);
}

#[test]
fn concurrent_writers_share_group_commits_and_readers_see_whole_batches() {
    let db = Database::open_with(Arc::new(MemStorage::new()), Path::new("d"), Options::default()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let c = c.clone();
            s.spawn(move || {
                for i in 0..200 {
                    // Each batch writes the same value into two ids: a reader must never
                    // see one without the other.
                    let v = (t * 1000 + i) as f32;
                    c.upsert(vec![rec(&format!("t{t}-x"), v, 0.0), rec(&format!("t{t}-y"), v, 0.0)]).unwrap();
                }
            });
        }
        let c = c.clone();
        s.spawn(move || {
            for _ in 0..500 {
                let snap = c.snapshot();
                for t in 0..8 {
                    let x = snap.get(&format!("t{t}-x")).unwrap().map(|r| r.vector[0]);
                    let y = snap.get(&format!("t{t}-y")).unwrap().map(|r| r.vector[0]);
                    assert_eq!(x, y, "torn batch visible");
                }
            }
        });
    });
    assert_eq!(c.snapshot().seq(), 1600);
}

#[test]
fn bad_input_is_a_clear_user_error() {
    let db = Database::open_with(Arc::new(MemStorage::new()), Path::new("d"), Options::default()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    let mut bad = rec("x", f32::NAN, 0.0);
    let e = c.upsert(vec![rec("ok", 1.0, 0.0), bad.clone()]).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)) && e.to_string().contains("vector[0]"), "{e}");
    assert!(c.get("ok").unwrap().is_none(), "a rejected batch writes nothing");
    bad.vector = vec![1.0];
    assert!(c.upsert(vec![bad]).unwrap_err().to_string().contains("1 dimensions"));
    assert!(c.upsert(vec![rec("", 1.0, 1.0)]).is_err());
    assert!(db.create_collection("bad/name", cfg()).is_err());
    assert!(matches!(db.create_collection("c", cfg()), Err(Error::AlreadyExists(_))));
    assert!(matches!(db.collection("nope"), Err(Error::NotFound(_))));
}

#[test]
fn drop_and_recreate_collection() {
    let mem = Arc::new(MemStorage::new());
    let db = Database::open_with(mem.clone(), Path::new("d"), small()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    c.upsert(vec![rec("a", 1.0, 0.0)]).unwrap();
    drop(c);
    db.drop_collection("c").unwrap();
    assert!(db.list().is_empty());
    let c = db.create_collection("c", cfg()).unwrap();
    assert!(c.get("a").unwrap().is_none());
    drop((c, db));
    let db = Database::open_with(mem, Path::new("d"), small()).unwrap();
    assert_eq!(db.list(), vec!["c".to_owned()]);
}

#[test]
fn file_backend_end_to_end_with_real_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = BTreeMap::new();
    {
        let db = Database::open(dir.path(), small()).unwrap();
        assert!(Database::open(dir.path(), small()).is_err(), "second open must be refused by the lock");
        let c = db.create_collection("c", cfg()).unwrap();
        for i in 0..300 {
            let r: Record = rec(&format!("f{i}"), i as f32, 2.0);
            model.insert(r.id.clone(), r.vector.clone());
            c.upsert(vec![r]).unwrap();
        }
    }
    let db = Database::open(dir.path(), small()).unwrap();
    let c = db.collection("c").unwrap();
    for (id, v) in &model {
        assert_eq!(&c.get(id).unwrap().unwrap().vector, v);
    }
    let r = kernelize_store::verify(dir.path()).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
}

#[test]
fn read_only_open_beside_a_writer_sees_a_snapshot_as_of_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), small()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    for i in 0..100 {
        c.upsert(vec![rec(&format!("f{i}"), i as f32, 2.0)]).unwrap();
    }
    let listing = |p: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = walk(p);
        v.sort();
        v
    };
    let before = listing(dir.path());
    let e = Database::open(dir.path(), small()).unwrap_err();
    assert!(e.is_locked() && e.to_string().contains("read-only"), "{e}");
    let ro = Database::open_read_only(dir.path(), small()).unwrap();
    let rc = ro.collection("c").unwrap();
    assert_eq!(rc.snapshot().count().unwrap(), 100);
    assert_eq!(listing(dir.path()), before, "a read-only open changed the data directory");
    c.upsert(vec![rec("later", 1.0, 1.0)]).unwrap();
    assert!(rc.get("later").unwrap().is_none(), "a reader sees the state as of its open");
    assert!(rc.upsert(vec![rec("x", 1.0, 1.0)]).is_err());
    // Readers beside a writer that flushes and compacts never see damage.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.upsert(vec![rec(&format!("w{i}"), i as f32, 0.0)]).unwrap();
                if i % 97 == 0 {
                    c.compact().unwrap();
                }
                i += 1;
            }
        });
        let mut last = 0;
        for _ in 0..60 {
            let ro = Database::open_read_only(dir.path(), small()).unwrap();
            assert!(ro.unavailable().is_empty(), "{:?}", ro.unavailable());
            let n = ro.collection("c").unwrap().snapshot().count().unwrap();
            assert!(n >= last, "{n} < {last}");
            last = n;
            let v = kernelize_store::verify(dir.path()).unwrap();
            assert!(v.problems.is_empty(), "{:?}", v.problems);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
    });
}

fn walk(p: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs_err::read_dir(p).unwrap() {
        let e = e.unwrap();
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(format!("{} {}", path.display(), e.metadata().unwrap().len()));
        }
    }
    out
}

/// Regression (issue 19, item 7): collection files were created 0644 (the umask's
/// default); every file the store writes is 0600 and every directory 0700.
#[cfg(unix)]
#[test]
fn data_directory_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let db = Database::open(&root, small()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    for i in 0..200 {
        c.upsert(vec![rec(&format!("id{i}"), i as f32, 0.0)]).unwrap();
    }
    c.flush().unwrap();
    c.upsert(vec![rec("tail", 1.0, 0.0)]).unwrap();
    kernelize_store::backup(&db, &tmp.path().join("b.tar"), kernelize_store::BackupFormat::Tar, &[], &mut |_, _| {})
        .unwrap();
    let mut seen = 0;
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs_err::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            if e.file_type().unwrap().is_dir() {
                assert_eq!(mode, 0o700, "{}", e.path().display());
                stack.push(e.path());
            } else {
                assert_eq!(mode, 0o600, "{}", e.path().display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 5, "lock, marker, manifest, segment, WAL");
    let root_mode = fs_err::metadata(&root).unwrap().permissions().mode() & 0o777;
    assert_eq!(root_mode, 0o700);
    let tar_mode = fs_err::metadata(tmp.path().join("b.tar")).unwrap().permissions().mode() & 0o777;
    assert_eq!(tar_mode, 0o600, "backups too");
}
