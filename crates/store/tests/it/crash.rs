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

#[test]
fn torn_tail_is_cut_and_reported_and_later_frames_never_replayed() {
    let mem = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    let root = Path::new("data");
    let db = Database::open_with(storage.clone(), root, Options::default()).unwrap();
    let c = db.create_collection("c", cfg()).unwrap();
    for i in 0..5 {
        c.upsert(vec![rec(&format!("a{i}"), i as f32, 0.0)]).unwrap();
    }
    let wal = kernelize_store::wal_path(c.dir(), 1);
    drop(c);
    drop(db);
    // Flip a byte inside the third frame's payload: frames 3.. must be dropped.
    let mut bytes = mem.read(&wal).unwrap();
    let scan = kernelize_store::wal_format::scan(&bytes);
    let third = scan.frames[2].offset as usize;
    bytes[third + 20] ^= 0xff;
    let mut f = mem.create(&wal).unwrap();
    f.write_all(&bytes).unwrap();
    f.sync().unwrap();
    drop(f);
    let db = Database::open_with(storage, root, Options::default()).unwrap();
    let c = db.collection("c").unwrap();
    let r = c.recovery_report();
    let (path, offset, reason, _) = r.truncated.clone().expect("reported");
    assert_eq!(path, wal);
    assert_eq!(offset, third as u64);
    assert!(reason.contains("checksum"), "{reason}");
    let ids: Vec<String> = c.snapshot().scan(None).map(|r| r.unwrap().id.clone()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    // The store keeps working after the cut, with fresh sequence numbers.
    assert_eq!(c.upsert(vec![rec("b", 1.0, 1.0)]).unwrap(), 3);
}
