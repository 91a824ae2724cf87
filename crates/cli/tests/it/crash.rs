//! Kills a writer process with SIGKILL mid-append, over and over, and checks that every
//! acknowledged batch is present and no batch is visible in part.

use kernelize_store::{Database, Options};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BATCH: usize = 7;

#[test]
fn sigkill_mid_append_never_loses_an_acknowledged_write() {
    let cycles: usize = std::env::var("KZ_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut acked_total = 0usize;
    let mut history: Vec<(String, Vec<u64>)> = Vec::new();
    for cycle in 0..cycles {
        let prefix = format!("c{cycle}");
        let threads = 1 + cycle % 3;
        let mut child = Command::new(env!("CARGO_BIN_EXE_kernelize"))
            .arg("--data-dir")
            .arg(dir.path())
            // Small memtables so kills also land in flushes and WAL rotation.
            .args(["--memtable-mb", "1", "debug", "write-loop", "-c", "w", "--prefix", &prefix])
            .args(["--batch", &BATCH.to_string(), "--threads", &threads.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut acked = Vec::new();
        // Kill after a random number of acknowledgements (0 kills during open/recovery).
        let wait_for = rng.random_range(0..40usize);
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked.len() < wait_for && Instant::now() < deadline {
            match lines.next() {
                Some(Ok(l)) => acked.extend(l.strip_prefix("ack ").and_then(|n| n.parse::<u64>().ok())),
                _ => break,
            }
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Whatever the child printed before dying was acknowledged.
        for l in lines.map_while(Result::ok) {
            acked.extend(l.strip_prefix("ack ").and_then(|n| n.parse::<u64>().ok()));
        }
        acked_total += acked.len();
        history.push((prefix, acked));
        // Check every cycle so far on a fresh open (recovery after the kill).
        if cycle % 20 == 19 || cycle + 1 == cycles {
            let db = Database::open(dir.path(), Options::default()).unwrap();
            let Ok(c) = db.collection("w") else {
                assert!(history.iter().all(|(_, a)| a.is_empty()), "acknowledged writes but no collection");
                continue;
            };
            let snap = c.snapshot();
            for (prefix, acked) in &history {
                for i in acked {
                    for j in 0..BATCH {
                        let id = format!("{prefix}-{i}-{j}");
                        assert!(snap.get(&id).unwrap().is_some(), "cycle {cycle}: acknowledged {id} lost");
                    }
                }
            }
            // Atomicity: every batch present is present whole.
            let mut seen: std::collections::HashMap<String, usize> = Default::default();
            for r in snap.scan(None) {
                let r = r.unwrap();
                let batch_key = r.id.rsplit_once('-').unwrap().0.to_owned();
                *seen.entry(batch_key).or_default() += 1;
            }
            for (batch, n) in seen {
                assert_eq!(n, BATCH, "batch {batch} visible in part");
            }
            let v = kernelize_store::verify(dir.path()).unwrap();
            assert!(v.problems.is_empty(), "{:?}", v.problems);
        }
    }
    assert!(acked_total > cycles, "the loop must acknowledge writes to test anything ({acked_total})");
}
