//! Checked-in files of every shipped on-disk format version (`tests/fixtures/v1/`): a data
//! directory (manifest, segments with tombstones and overwrites, a WAL tail that has not
//! been flushed, a WAL archive) and a backup tar of it, written by format 1 of the code.
//! Today's code must read them and find exactly the records their history left. A change
//! to a format that breaks these tests needs a new format version (and a reader for the
//! old one), not new fixtures.
//!
//! The fixtures are written by `write_format_v1_fixtures` (ignored; run it on purpose with
//! `cargo test -p kernelize-store --test it write_format_v1_fixtures -- --ignored` only
//! when a new version is added, into a new directory).

use kernelize_store::{
    BackupFormat, CollectionConfig, Database, Metric, Op, Options, Quantization, Record, backup, restore, verify,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

/// One step of a collection's history.
enum Step {
    Write(Vec<Op>),
    Flush,
}

fn record(id: String, i: usize, dim: usize, text: bool) -> Record {
    let vector = (0..dim).map(|d| ((i * 7 + d * 3) % 17) as f32 * 0.25 - 2.0).collect();
    let tag = ["red", "green", "blue"][i % 3];
    let metadata = serde_json::json!({
        "n": i as i64,
        "half": i as f64 / 2.0,
        "tag": tag,
        "flag": i.is_multiple_of(2),
        "nested": {"list": [i as i64, "x"], "none": null},
    });
    Record {
        id,
        vector,
        text: text.then(|| format!("record {i}: ünïcödé text, emoji 🦀, quotes \"q\"")),
        metadata: (i % 4 != 3).then(|| metadata.as_object().cloned().unwrap_or_default()),
    }
}

/// The collections of the fixture: name, config, history.
fn history() -> Vec<(&'static str, CollectionConfig, Vec<Step>)> {
    let upserts = |range: std::ops::Range<usize>, dim: usize, shift: usize| {
        Step::Write(range.map(|i| Op::Upsert(Arc::new(record(format!("doc-{i:03}"), i + shift, dim, true)))).collect())
    };
    let deletes = |ids: &[usize]| Step::Write(ids.iter().map(|i| Op::Delete(format!("doc-{i:03}"))).collect());
    let mut docs = CollectionConfig::new(4, Metric::Cosine);
    docs.wal_archive = true;
    let mut plain = CollectionConfig::new(3, Metric::L2);
    plain.index.quantization = Quantization::Int8;
    vec![
        (
            "docs",
            docs,
            vec![
                upserts(0..40, 4, 0),
                upserts(40..60, 4, 0),
                Step::Flush,
                // Second segment: overwrites and tombstones of first-segment records.
                upserts(10..20, 4, 100),
                deletes(&[0, 1, 2, 45, 999]),
                Step::Flush,
                // WAL tail, never flushed: more overwrites, deletes, re-inserts.
                upserts(55..70, 4, 200),
                deletes(&[12, 30]),
                Step::Write(vec![Op::Upsert(Arc::new(record("doc-001".into(), 1001, 4, false)))]),
            ],
        ),
        (
            "plain",
            plain,
            vec![
                Step::Write((0..25).map(|i| Op::Upsert(Arc::new(record(format!("p{i}"), i, 3, i % 2 == 0)))).collect()),
                Step::Flush,
                Step::Write(vec![Op::Delete("p3".into())]),
            ],
        ),
    ]
}

/// What each collection must hold after its history.
fn model() -> BTreeMap<&'static str, BTreeMap<String, Record>> {
    history()
        .into_iter()
        .map(|(name, _, steps)| {
            let mut m = BTreeMap::new();
            for step in steps {
                if let Step::Write(ops) = step {
                    for op in ops {
                        match op {
                            Op::Upsert(r) => {
                                m.insert(r.id.clone(), (*r).clone());
                            }
                            Op::Delete(id) => {
                                m.remove(&id);
                            }
                        }
                    }
                }
            }
            (name, m)
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    fs_err::create_dir_all(to).unwrap();
    for entry in fs_err::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs_err::copy(entry.path(), &target).unwrap();
        }
    }
}

fn assert_matches_model(db: &Database) {
    let model = model();
    let mut names = db.list();
    names.sort();
    assert_eq!(names, model.keys().map(|s| s.to_string()).collect::<Vec<_>>());
    let configs: BTreeMap<_, _> = history().into_iter().map(|(n, c, _)| (n, c)).collect();
    for (name, want) in &model {
        let c = db.collection(name).unwrap();
        assert_eq!(c.config(), &configs[name], "{name}: config");
        let snap = c.snapshot();
        let got: Vec<Record> = snap.scan(None).map(|r| (*r.unwrap()).clone()).collect();
        let mut want: Vec<Record> = want.values().cloned().collect();
        assert_eq!(got.len(), want.len(), "{name}: record count");
        // A scan runs in key-hash order; compare as sets of records.
        let mut got = got;
        got.sort_by(|a, b| a.id.cmp(&b.id));
        want.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(got, want, "{name}: records");
        assert_eq!(snap.count().unwrap(), want.len() as u64, "{name}: count");
        for r in &want {
            assert_eq!(snap.get(&r.id).unwrap().as_deref(), Some(r), "{name}: get {}", r.id);
        }
    }
}

#[test]
fn format_v1_data_directory_opens_with_every_record() {
    let src = fixtures().join("data");
    let report = verify(&src).unwrap();
    assert!(report.problems.is_empty(), "verify: {:?}", report.problems);
    assert!(report.files >= 6, "the fixture holds manifests, segments and WAL files: {report:?}");
    // Open a copy: opening may replay, truncate or create files.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&src, dir.path());
    let db = Database::open(dir.path(), Options::default()).unwrap();
    let docs = db.collection("docs").unwrap();
    assert_eq!(docs.stats().unwrap().segments, 2, "docs: two segments, the rest in the WAL");
    assert!(docs.recovery_report().replayed_batches > 0, "docs: the WAL tail is replayed");
    assert_matches_model(&db);
    // And it stays readable after compaction rewrites it in today's format.
    docs.compact().unwrap();
    assert_matches_model(&db);
}

#[test]
fn format_v1_backup_tar_restores() {
    let src = fixtures().join("backup.tar");
    let report = verify(&src).unwrap();
    assert!(report.problems.is_empty(), "verify: {:?}", report.problems);
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::default()).unwrap();
    let restored = restore(&db, &src, None, None).unwrap();
    assert_eq!(restored.collections.len(), 2);
    assert_matches_model(&db);
}

#[test]
#[ignore = "writes the checked-in fixtures; run on purpose when a format version is added"]
fn write_format_v1_fixtures() {
    let out = fixtures();
    assert!(!out.exists(), "{} exists: fixtures of a shipped version are never rewritten", out.display());
    let data = out.join("data");
    let db = Database::open(&data, Options::default()).unwrap();
    for (name, config, steps) in history() {
        let c = db.create_collection(name, config).unwrap();
        for step in steps {
            match step {
                Step::Write(ops) => {
                    c.write(ops).unwrap();
                }
                Step::Flush => c.flush().unwrap(),
            }
        }
    }
    backup(&db, &out.join("backup.tar"), BackupFormat::Tar, &[], &mut |_, _| {}).unwrap();
    drop(db);
    // The lock file is the process's, not part of the format.
    let _ = fs_err::remove_file(data.join("LOCK"));
}

/// Format 2: the same history in an encrypted data directory (`tests/fixtures/v2-encrypted/`,
/// master key in `master.key` — a test key, published on purpose), and a sealed backup tar.
fn fixtures_v2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2-encrypted")
}

#[test]
fn format_v2_encrypted_data_directory_opens_with_every_record() {
    let src = fixtures_v2();
    let key = kernelize_store::MasterKey::from_file(&src.join("master.key")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&src.join("data"), dir.path());
    let keys =
        kernelize_store::EncryptedStorage::open(Arc::new(kernelize_store::FileStorage), dir.path(), &key).unwrap();
    let report = kernelize_store::verify_keyed(dir.path(), Some(&keys)).unwrap();
    assert!(report.problems.is_empty() && report.sealed == 0, "verify: {report:?}");
    drop(keys);
    assert!(Database::open(dir.path(), Options::default()).is_err(), "an encrypted fixture needs its key");
    let db = Database::open_keyed(dir.path(), Options::default(), Some(&key)).unwrap();
    assert!(db.collection("docs").unwrap().recovery_report().replayed_batches > 0, "docs: the WAL tail is replayed");
    assert_matches_model(&db);
    db.collection("docs").unwrap().compact().unwrap();
    assert_matches_model(&db);
    // The sealed backup restores into a directory holding a copy of the keyring.
    let other = tempfile::tempdir().unwrap();
    fs_err::copy(src.join("data/KEYRING"), other.path().join("KEYRING")).unwrap();
    let db2 = Database::open_keyed(other.path(), Options::default(), Some(&key)).unwrap();
    restore(&db2, &src.join("backup.tar"), None, None).unwrap();
    assert_matches_model(&db2);
}

#[test]
#[ignore = "writes the checked-in fixtures; run on purpose when a format version is added"]
fn write_format_v2_encrypted_fixtures() {
    let out = fixtures_v2();
    assert!(!out.exists(), "{} exists: fixtures of a shipped version are never rewritten", out.display());
    let data = out.join("data");
    let key = kernelize_store::MasterKey::generate().unwrap();
    fs_err::create_dir_all(&out).unwrap();
    fs_err::write(out.join("master.key"), format!("{}\n", key.to_hex())).unwrap();
    kernelize_store::init_encrypted(&data, &key).unwrap();
    let db = Database::open_keyed(&data, Options::default(), Some(&key)).unwrap();
    for (name, config, steps) in history() {
        let c = db.create_collection(name, config).unwrap();
        for step in steps {
            match step {
                Step::Write(ops) => {
                    c.write(ops).unwrap();
                }
                Step::Flush => c.flush().unwrap(),
            }
        }
    }
    backup(&db, &out.join("backup.tar"), BackupFormat::Tar, &[], &mut |_, _| {}).unwrap();
    drop(db);
    let _ = fs_err::remove_file(data.join("LOCK"));
}
