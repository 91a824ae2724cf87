//! Random workloads driven through simulated crashes, checked against a model: every
//! acknowledged write is present, nothing is invented, and the recovered state equals
//! the state after some prefix of the attempted writes.

use super::{cfg, rec};
use kernelize_store::{
    CrashMode, Database, Durability, EncryptedStorage, FaultKind, FaultStorage, MasterKey, MemStorage, Op, Options,
    SegmentOptions, Storage,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

type Model = BTreeMap<String, (f32, f32)>;

#[derive(Debug, Clone)]
enum Step {
    Upsert(Vec<u8>),
    Delete(Vec<u8>),
    Flush,
    Compact,
    Crash(CrashMode),
    /// Inject a failure after this many storage operations, then crash.
    FaultThenCrash(u8, bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => proptest::collection::vec(0u8..40, 1..6).prop_map(Step::Upsert),
        3 => proptest::collection::vec(0u8..40, 1..4).prop_map(Step::Delete),
        1 => Just(Step::Flush),
        1 => Just(Step::Compact),
        1 => prop_oneof![Just(CrashMode::DropUnsynced), Just(CrashMode::TearUnsynced), Just(CrashMode::KeepAll)]
            .prop_map(Step::Crash),
        1 => (0u8..12, any::<bool>()).prop_map(|(n, full)| Step::FaultThenCrash(n, full)),
    ]
}

fn opts(durability: Durability) -> Options {
    Options { durability, memtable_bytes: 2048, segment: SegmentOptions { epsilon: 2 }, ..Options::default() }
}

fn read_all(db: &Database) -> Model {
    let snap = db.collection("c").unwrap().snapshot();
    snap.scan(None).map(|r| r.unwrap()).map(|r| (r.id.clone(), (r.vector[0], r.vector[1]))).collect()
}

fn run(steps: Vec<Step>, durability: Durability, seed: u64) {
    run_on(steps, durability, seed, false);
}

/// `encrypted`: the engine runs on an [`EncryptedStorage`] over the fault-injecting,
/// crash-simulating backend, so crashes tear and drop ciphertext.
fn run_on(steps: Vec<Step>, durability: Durability, seed: u64, encrypted: bool) {
    let mem = MemStorage::new();
    let fault = FaultStorage::new(Arc::new(mem.clone()));
    let root = Path::new("data");
    let master = MasterKey::from_bytes([9; 32]);
    let plain: Arc<dyn Storage> = Arc::new(fault.clone());
    if encrypted {
        EncryptedStorage::create(plain.clone(), root, &master).unwrap();
    }
    // After a crash the keyring is read again from its durable bytes, as a new process would.
    let storage = || -> Arc<dyn Storage> {
        if encrypted { Arc::new(EncryptedStorage::open(plain.clone(), root, &master).unwrap()) } else { plain.clone() }
    };
    let mut db = Database::open_with(storage(), root, opts(durability)).unwrap();
    db.create_collection("c", cfg()).unwrap();
    // history[i] = state after the i-th attempted batch; acked = index of the last
    // acknowledged one. Recovered state must be history[j] for some j >= acked (Always).
    let mut history: Vec<Model> = vec![Model::new()];
    let mut acked = 0usize;
    let mut counter = 0f32;
    for (n, step) in steps.into_iter().enumerate() {
        let c = db.collection("c").unwrap();
        let crash_mode = match step {
            Step::Upsert(ids) | Step::Delete(ids) if false => unreachable!("{ids:?}"),
            Step::Upsert(ids) => {
                counter += 1.0;
                let mut next = history.last().cloned().unwrap_or_default();
                let mut batch = Vec::new();
                for (k, id) in ids.iter().enumerate() {
                    let r = rec(&format!("k{id}"), counter, k as f32);
                    next.insert(r.id.clone(), (r.vector[0], r.vector[1]));
                    batch.push(Op::Upsert(Arc::new(r)));
                }
                history.push(next);
                match c.write(batch) {
                    Ok(_) => acked = history.len() - 1,
                    Err(e) => panic!("write failed without a fault: {e}"),
                }
                None
            }
            Step::Delete(ids) => {
                let mut next = history.last().cloned().unwrap_or_default();
                for id in &ids {
                    next.remove(&format!("k{id}"));
                }
                history.push(next);
                c.write(ids.iter().map(|i| Op::Delete(format!("k{i}"))).collect()).unwrap();
                acked = history.len() - 1;
                None
            }
            Step::Flush => {
                c.flush().unwrap();
                None
            }
            Step::Compact => {
                c.compact().unwrap();
                None
            }
            Step::Crash(mode) => Some(mode),
            Step::FaultThenCrash(after, full) => {
                fault.fail_after(i64::from(after), if full { FaultKind::DiskFull } else { FaultKind::Io });
                counter += 1.0;
                let mut next = history.last().cloned().unwrap_or_default();
                let r = rec("kf", counter, 9.0);
                next.insert(r.id.clone(), (r.vector[0], r.vector[1]));
                history.push(next);
                match c.upsert(vec![r]) {
                    Ok(_) => acked = history.len() - 1,
                    Err(e) => {
                        if full {
                            assert!(e.is_disk_full() || e.to_string().contains("no space"), "{e}");
                        }
                        // Further writes are refused until reopen.
                        assert!(c.upsert(vec![rec("kz", 0.0, 0.0)]).is_err());
                    }
                }
                let _ = c.flush();
                fault.disarm();
                Some(CrashMode::DropUnsynced)
            }
        };
        if let Some(mode) = crash_mode {
            drop(c);
            mem.crash(mode, seed.wrapping_add(n as u64));
            // A crashed process runs no destructors.
            std::mem::forget(std::mem::replace(
                &mut db,
                Database::open_with(storage(), root, opts(durability)).unwrap_or_else(|e| panic!("reopen: {e}")),
            ));
            let got = read_all(&db);
            let from = if durability == Durability::Always || mode == CrashMode::KeepAll { acked } else { 0 };
            let Some(j) = (from..history.len()).rev().find(|&j| history[j] == got) else {
                panic!(
                    "recovered state is no prefix at or after the last acknowledged write {acked}:\n got {got:?}\n acked {:?}",
                    history[acked]
                );
            };
            // Writes after j were never acknowledged and are gone for good.
            history.truncate(j + 1);
            acked = j;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if std::env::var("KZ_LONG").is_ok() { 2000 } else { 96 }, ..ProptestConfig::default() })]

    #[test]
    fn crashes_never_lose_acknowledged_writes(steps in proptest::collection::vec(step(), 1..60), seed in any::<u64>()) {
        run(steps, Durability::Always, seed);
    }

    #[test]
    fn crashes_never_lose_acknowledged_writes_when_encrypted(steps in proptest::collection::vec(step(), 1..60), seed in any::<u64>()) {
        run_on(steps, Durability::Always, seed, true);
    }

    #[test]
    fn buffered_durability_recovers_a_prefix(steps in proptest::collection::vec(step(), 1..40), seed in any::<u64>()) {
        run(steps, Durability::Buffered, seed);
    }
}

/// A data directory with collection `c` holding five one-record batches a0..a4 (seqs
/// 1..=5) in one WAL file, and an untouched collection `other`.
fn five_batches(mem: &MemStorage) -> std::path::PathBuf {
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    let db = Database::open_with(storage, Path::new("data"), Options::default()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    for i in 0..5 {
        c.upsert(vec![rec(&format!("a{i}"), i as f32, 0.0)]).unwrap();
    }
    db.create_collection("other", cfg()).unwrap().upsert(vec![rec("o", 1.0, 1.0)]).unwrap();
    kernelize_store::wal_path(c.dir(), 1)
}

fn rewrite(mem: &MemStorage, path: &Path, bytes: &[u8]) {
    let mut f = mem.create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync().unwrap();
}

/// Every file of collection `c` with its bytes.
fn files(mem: &MemStorage) -> BTreeMap<std::path::PathBuf, Vec<u8>> {
    fn walk(mem: &MemStorage, dir: &Path, out: &mut BTreeMap<std::path::PathBuf, Vec<u8>>) {
        for name in mem.list_dir(dir).unwrap_or_default() {
            let p = dir.join(name);
            match mem.read(&p) {
                Ok(b) => {
                    out.insert(p, b);
                }
                Err(_) => walk(mem, &p, out),
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(mem, Path::new("data/collections/c"), &mut out);
    out
}

#[test]
fn torn_tail_is_cut_and_reported() {
    let mem = MemStorage::new();
    let wal = five_batches(&mem);
    // The last frame is cut short: an interrupted write.
    let bytes = mem.read(&wal).unwrap();
    let scan = kernelize_store::wal_format::scan(&bytes);
    let last = scan.frames[4].offset as usize;
    rewrite(&mem, &wal, &bytes[..last + 20]);
    let db = Database::open_with(Arc::new(mem.clone()), Path::new("data"), Options::default()).unwrap();
    assert!(db.unavailable().is_empty(), "{:?}", db.unavailable());
    let c = db.collection("c").unwrap();
    let r = c.recovery_report();
    let (path, offset, reason, cut) = r.truncated.clone().expect("reported");
    assert_eq!((path, offset, cut), (wal.clone(), last as u64, 20));
    assert!(reason.contains("torn"), "{reason}");
    assert!(!r.loss.as_ref().unwrap().is_damage());
    assert_eq!(c.snapshot().count().unwrap(), 4);
    // The store keeps working after the cut, with fresh sequence numbers.
    assert_eq!(c.upsert(vec![rec("b", 1.0, 1.0)]).unwrap(), 5);
}

#[test]
fn mid_log_corruption_refuses_the_collection_and_changes_nothing() {
    let mem = MemStorage::new();
    let wal = five_batches(&mem);
    // Flip a byte inside the third frame's payload: frames 4 and 5 after it are intact.
    let mut bytes = mem.read(&wal).unwrap();
    let scan = kernelize_store::wal_format::scan(&bytes);
    let third = scan.frames[2].offset;
    bytes[third as usize + 20] ^= 0xff;
    rewrite(&mem, &wal, &bytes);
    let before = files(&mem);
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    let db = Database::open_with(storage.clone(), Path::new("data"), Options::default()).unwrap();
    assert_eq!(files(&mem), before, "opening must not change anything of the damaged collection");
    // The other collection works; the damaged one is listed with file and offset.
    assert_eq!(db.collection("other").unwrap().snapshot().count().unwrap(), 1);
    let unavailable = db.unavailable();
    assert_eq!(unavailable.len(), 1);
    assert_eq!(unavailable[0].0, "c");
    let reason = &unavailable[0].1;
    assert!(reason.contains(&wal.display().to_string()) && reason.contains(&format!("offset {third}")), "{reason}");
    assert!(reason.contains("recover --collection c --accept-loss"), "{reason}");
    let e = db.collection("c").unwrap_err();
    assert_eq!(e.class(), kernelize_store::ErrorClass::Unavailable, "{e}");
    assert!(matches!(db.health().iter().find(|(n, _)| n == "c"), Some((_, kernelize_store::Health::Unavailable(_)))));

    // Without accepting the loss, recover only reports.
    let loss = db.recover("c", false).unwrap().expect("a loss");
    assert_eq!((loss.file.clone(), loss.offset, loss.cut_at), (wal.clone(), third, third));
    assert_eq!((loss.intact_frames, loss.seqs), (2, Some((4, 5))));
    assert_eq!(loss.bytes, bytes.len() as u64 - third);
    assert_eq!(files(&mem), before);
    assert!(db.collection("c").is_err());

    // Accepting it cuts (keeping the bytes in quarantine) and opens the collection.
    db.recover("c", true).unwrap();
    let c = db.collection("c").unwrap();
    assert!(db.unavailable().is_empty());
    assert_eq!(c.snapshot().count().unwrap(), 2);
    let kept = files(&mem)
        .into_iter()
        .find(|(p, _)| p.to_string_lossy().contains("quarantine"))
        .expect("the dropped bytes are kept");
    assert_eq!(kept.1, bytes[third as usize..].to_vec());
    assert_eq!(c.upsert(vec![rec("b", 1.0, 1.0)]).unwrap(), 3);
    drop((c, db));
    let db = Database::open_with(storage, Path::new("data"), Options::default()).unwrap();
    assert_eq!(db.collection("c").unwrap().snapshot().count().unwrap(), 3);
}

#[test]
fn corrupt_frame_followed_by_a_later_wal_file_is_damage() {
    let mem = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    let db = Database::open_with(storage.clone(), Path::new("data"), Options::default()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    for i in 0..3 {
        c.upsert(vec![rec(&format!("a{i}"), i as f32, 0.0)]).unwrap();
    }
    let first = kernelize_store::wal_path(c.dir(), 1);
    drop((c, db));
    // Reopening starts a second WAL file at seq 4.
    let db = Database::open_with(storage.clone(), Path::new("data"), Options::default()).unwrap();
    db.collection("c").unwrap().upsert(vec![rec("b", 1.0, 1.0)]).unwrap();
    drop(db);
    // The last frame of the first file is damaged; the second file is intact.
    let mut bytes = mem.read(&first).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    rewrite(&mem, &first, &bytes);
    let db = Database::open_with(storage, Path::new("data"), Options::default()).unwrap();
    let (name, reason) = db.unavailable().pop().expect("unavailable");
    assert_eq!(name, "c");
    assert!(reason.contains("sequence numbers 4..=4"), "{reason}");
}
