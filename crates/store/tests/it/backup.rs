//! Online backup while writes continue, restore, verification, point-in-time restore,
//! and Parquet export.

use super::{cfg, rec};
use kernelize_store::{
    BackupFormat, CollectionConfig, Database, Metric, Options, SegmentOptions, backup, restore, verify,
};

fn opts() -> Options {
    Options { memtable_bytes: 8192, segment: SegmentOptions { epsilon: 8 }, ..Options::default() }
}

#[test]
fn online_backup_is_consistent_and_restores_in_both_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Database::open(&tmp.path().join("src"), opts()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    for i in 0..200 {
        c.upsert(vec![rec(&format!("p{i}"), i as f32, 0.0)]).unwrap();
    }
    // Each round writes new ids (its own prefix), so every write adds one record and
    // the record count equals the sequence number. (Re-using ids across rounds made
    // the count lag the sequence whenever the writer got ahead of the snapshot.)
    let mut base = 200;
    for (round, fmt) in [BackupFormat::Dir, BackupFormat::Tar].into_iter().enumerate() {
        let dest = tmp.path().join(if fmt == BackupFormat::Tar { "b.tar" } else { "b" });
        let prefix = format!("r{round}-");
        let written = std::sync::atomic::AtomicUsize::new(0);
        // Writers keep going while the backup runs: the backup starts only once the
        // writer is under way, so the two overlap on every run.
        let report = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                for i in 0..300 {
                    c.upsert(vec![rec(&format!("{prefix}{i}"), i as f32, 1.0)]).unwrap();
                    written.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
            while written.load(std::sync::atomic::Ordering::SeqCst) < 5 {
                std::thread::yield_now();
            }
            let r = backup(&db, &dest, fmt, &[], &mut |_, _| {}).unwrap();
            writer.join().unwrap();
            r
        });
        let seq = report.collections[0].seq;
        assert!((base + 5..=base + 300).contains(&seq), "seq {seq} after base {base}");
        let v = verify(&dest).unwrap();
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let target = Database::open(&tmp.path().join(format!("restored-{fmt:?}")), opts()).unwrap();
        restore(&target, &dest, None, None).unwrap();
        let r = target.collection("c").unwrap();
        // The restored state is exactly the source's state at `seq`: writes are one
        // new record each, so it holds every earlier round's records and this round's
        // first `seq - base` writes, and none after.
        let n = r.snapshot().count().unwrap();
        assert_eq!(n, seq);
        for i in 0..(seq - base) {
            assert!(r.get(&format!("{prefix}{i}")).unwrap().is_some(), "{prefix}{i} missing");
        }
        if seq - base < 300 {
            assert!(r.get(&format!("{prefix}{}", seq - base)).unwrap().is_none());
        }
        base += 300;
    }
}

#[test]
fn verify_names_file_and_offset_of_a_flipped_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Database::open(&tmp.path().join("src"), opts()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    for i in 0..100 {
        c.upsert(vec![rec(&format!("p{i}"), i as f32, 0.0)]).unwrap();
    }
    c.compact().unwrap();
    let dest = tmp.path().join("b");
    backup(&db, &dest, BackupFormat::Dir, &[], &mut |_, _| {}).unwrap();
    let seg_dir = dest.join("collections/c/seg");
    let seg = fs_err::read_dir(&seg_dir).unwrap().next().unwrap().unwrap().path();
    let mut bytes = fs_err::read(&seg).unwrap();
    let at = 64 + 13; // inside the vectors section
    bytes[at] ^= 0x40;
    fs_err::write(&seg, &bytes).unwrap();
    let v = verify(&dest).unwrap();
    let p = v.problems.first().expect("the flip is detected");
    assert_eq!(p.path, seg);
    assert_eq!(p.offset, 64, "offset of the section whose checksum fails");
    assert!(p.reason.contains("Vectors"), "{}", p.reason);
    let target = Database::open(&tmp.path().join("t"), opts()).unwrap();
    assert!(restore(&target, &dest, None, None).is_err(), "a corrupt backup is refused");
}

#[test]
fn point_in_time_restore_replays_archived_wal_up_to_a_sequence_number() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let db = Database::open(&src, opts()).unwrap();
    let config = CollectionConfig { wal_archive: true, ..CollectionConfig::new(3, Metric::L2) };
    let c = db.create_collection("c", config).unwrap();
    for i in 0..50 {
        c.upsert(vec![rec(&format!("p{i}"), i as f32, 0.0)]).unwrap();
    }
    let dest = tmp.path().join("b.tar");
    let at = backup(&db, &dest, BackupFormat::Tar, &[], &mut |_, _| {}).unwrap().collections[0].seq;
    assert_eq!(at, 50);
    for i in 0..400 {
        c.upsert(vec![rec(&format!("later{i}"), i as f32, 0.0)]).unwrap();
    }
    assert!(src.join("collections/c/wal-archive").exists(), "flushes archived WAL files");
    drop(c);
    drop(db);
    let target = Database::open(&tmp.path().join("t"), opts()).unwrap();
    let r = restore(&target, &dest, Some(&src), Some(300)).unwrap();
    assert_eq!(r.replayed_batches, 250);
    let c = target.collection("c").unwrap();
    assert_eq!(c.snapshot().seq(), 300);
    assert!(c.get("later249").unwrap().is_some());
    assert!(c.get("later250").unwrap().is_none());
}

#[test]
fn parquet_export_round_trips() {
    use arrow_array::{Array, FixedSizeListArray, Float32Array, StringArray};
    let tmp = tempfile::tempdir().unwrap();
    let db = Database::open(&tmp.path().join("src"), opts()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    let mut r = rec("m", 1.5, 2.5);
    r.metadata = Some(serde_json::json!({"lang": "en", "n": 3}).as_object().unwrap().clone());
    c.upsert(vec![r, rec("n", 3.0, 4.0)]).unwrap();
    c.delete(vec!["n".into()]).unwrap();
    let out = tmp.path().join("c.parquet");
    let n = kernelize_store::export_parquet(&c.snapshot(), &out, &mut |_| {}).unwrap();
    assert_eq!(n, 1);
    let f = fs_err::File::open(&out).unwrap().into_file();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let b = &batches[0];
    assert_eq!(b.num_rows(), 1);
    let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(ids.value(0), "m");
    let vecs = b.column(1).as_any().downcast_ref::<FixedSizeListArray>().unwrap();
    let first = vecs.value(0);
    let values = first.as_any().downcast_ref::<Float32Array>().unwrap();
    assert_eq!(values.values().to_vec(), vec![1.5, 2.5, 0.5]);
    let meta = b.column(3).as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(meta.value(0), r#"{"lang":"en","n":3}"#);
    assert!(!b.column(2).is_null(0));
}

#[test]
fn verify_reports_a_torn_wal_tail_as_torn_not_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("src");
    let wal = {
        let db = Database::open(&root, opts()).unwrap();
        let c = db.create_collection("c", cfg()).unwrap();
        c.upsert(vec![rec("a", 1.0, 0.0)]).unwrap();
        kernelize_store::wal_path(c.dir(), 1)
    };
    let mut f = fs_err::OpenOptions::new().append(true).open(&wal).unwrap();
    std::io::Write::write_all(&mut f, &kernelize_store::wal_format::frame_bytes(2, b"cut off")[..19]).unwrap();
    let r = verify(&root).unwrap();
    assert!(r.problems.is_empty(), "a torn tail is no problem: {:?}", r.problems);
    assert_eq!(r.torn_tails.len(), 1);
    assert_eq!(r.torn_tails[0].path, wal);
}

#[test]
fn cut_off_backup_tar_is_reported_as_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Database::open(&tmp.path().join("src"), opts()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    for i in 0..100 {
        c.upsert(vec![rec(&format!("p{i}"), i as f32, 0.0)]).unwrap();
    }
    let dest = tmp.path().join("b.tar");
    backup(&db, &dest, BackupFormat::Tar, &[], &mut |_, _| {}).unwrap();
    let bytes = fs_err::read(&dest).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 512, 700] {
        let cut_path = tmp.path().join(format!("cut-{cut}.tar"));
        fs_err::write(&cut_path, &bytes[..cut]).unwrap();
        let e = verify(&cut_path).unwrap_err().to_string();
        assert!(e.contains("truncated") && !e.contains("offset 0:"), "{e}");
        let target = Database::open(&tmp.path().join(format!("r-{cut}")), opts()).unwrap();
        assert!(restore(&target, &cut_path, None, None).unwrap_err().to_string().contains("truncated"));
    }
}

#[test]
fn backup_is_written_under_a_temporary_name_until_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Database::open(&tmp.path().join("src"), opts()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    for i in 0..300 {
        c.upsert(vec![rec(&format!("p{i}"), i as f32, 0.0)]).unwrap();
    }
    for name in ["b", "b.tar"] {
        let dest = tmp.path().join(name);
        let fmt = if name.ends_with(".tar") { BackupFormat::Tar } else { BackupFormat::Dir };
        let mut calls = 0;
        backup(&db, &dest, fmt, &[], &mut |_, _| {
            calls += 1;
            assert!(!dest.exists(), "a partial backup is visible under its final name");
        })
        .unwrap();
        assert!(calls > 0);
        assert!(verify(&dest).unwrap().problems.is_empty());
    }
    // A failing backup leaves nothing behind.
    let e = backup(&db, &tmp.path().join("x"), BackupFormat::Dir, &["c".into(), "missing".into()], &mut |_, _| {});
    assert!(e.is_err());
    let left: Vec<String> =
        fs_err::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.contains("partial") && n != "x"), "{left:?}");
}

#[test]
fn deleted_manifest_gives_the_same_message_on_open_and_in_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("src");
    {
        let db = Database::open(&root, opts()).unwrap();
        db.create_collection("c", cfg()).unwrap().upsert(vec![rec("a", 1.0, 0.0)]).unwrap();
    }
    let manifest = root.join("collections/c/MANIFEST");
    fs_err::remove_file(&manifest).unwrap();
    let from_verify = verify(&root).unwrap().problems[0].to_string();
    let db = Database::open(&root, opts()).unwrap();
    let from_open = db.unavailable()[0].1.clone();
    assert!(from_verify.contains("missing manifest"), "{from_verify}");
    assert!(from_open.ends_with(&from_verify), "open: {from_open}\nverify: {from_verify}");
}
