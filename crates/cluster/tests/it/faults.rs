//! The services under a three-node cluster killed and started again, in turn, while a
//! client writes through every node and another reads: NATS (SIGKILL), PostgreSQL
//! (SIGQUIT: its immediate shutdown, which skips the checkpoint as a crash does) and the
//! S3 server (SIGKILL). Private copies of the three on their own ports and data
//! directories (`procs`), so nothing else is disturbed.
//!
//! What a client sees meanwhile: with NATS down, writes and reads fail at once with
//! `nats unavailable` (503 over HTTP), and the client retries with its idempotency key;
//! with PostgreSQL down, writes and reads go on (leases cannot be renewed, seals cannot
//! commit: they wait); with the object store down, the same (seals cannot upload).

use crate::procs;
use crate::support::{Services, Spec, upserts};
use kernelize_cluster::{ClusterQuery, Consistency, Node};
use kernelize_index::search::Query;
use kernelize_store::{CollectionConfig, Metric, Record};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DIM: usize = 8;
const BATCH: usize = 100;

fn batch(i: usize) -> Vec<Record> {
    (0..BATCH)
        .map(|j| {
            let n = i * BATCH + j;
            let vector = (0..DIM).map(|d| ((n * 31 + d * 7) % 97) as f32 / 97.0 - 0.5).collect();
            Record { id: format!("w{n}"), vector, text: Some(format!("record {n}")), metadata: None }
        })
        .collect()
}

/// What the writer got acknowledged, and the errors it retried.
#[derive(Default)]
struct Progress {
    acked: Mutex<Vec<String>>,
    batches: AtomicUsize,
    token: AtomicU64,
    errors: Mutex<Vec<String>>,
    reads_ok: AtomicUsize,
    read_errors: Mutex<Vec<String>>,
    /// Which service is down (an index into `PHASES`); failed reads and writes per phase.
    phase: AtomicUsize,
    failed: Mutex<[(usize, usize); 4]>,
}

const PHASES: [&str; 4] = ["none", "NATS", "PostgreSQL", "object store"];

impl Progress {
    fn failed(&self, write: bool) {
        let mut f = self.failed.lock();
        let p = &mut f[self.phase.load(Ordering::SeqCst)];
        if write { p.0 += 1 } else { p.1 += 1 }
    }
}

async fn wait_batches(p: &Progress, more: usize, what: &str) {
    let from = p.batches.load(Ordering::SeqCst);
    let t = Instant::now();
    while p.batches.load(Ordering::SeqCst) < from + more {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "writes did not resume {what}; last errors: {:?}",
            p.errors.lock().iter().rev().take(3).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes service `phase` (of `PHASES`) down with `sig` for 3 s, runs `meanwhile`, starts
/// it again and waits until 10 more batches went through; returns the batches
/// acknowledged while it was down.
async fn outage(p: &Progress, phase: usize, service: &mut procs::Proc, sig: &str, meanwhile: impl FnOnce()) -> usize {
    let before = p.batches.load(Ordering::SeqCst);
    p.phase.store(phase, Ordering::SeqCst);
    service.kill(sig);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked = p.batches.load(Ordering::SeqCst) - before;
    meanwhile();
    service.start();
    wait_batches(p, 10, &format!("after {} came back", PHASES[phase])).await;
    p.phase.store(0, Ordering::SeqCst);
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_postgresql_and_s3_killed_in_turn_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = procs::nats(&dir.path().join("nats"));
    let mut pg = procs::postgres();
    let mut s3 = procs::s3(&dir.path().join("s3"));
    fs_err::create_dir_all(dir.path().join("s3").join("faults")).unwrap();
    let services = Services {
        nats: format!("nats://127.0.0.1:{}", nats.port),
        pg: pg.pg_url(),
        s3: format!("http://127.0.0.1:{}", s3.port),
    };
    let spec = Spec::on(services, "faults".into(), 4);
    let nodes: Vec<Arc<Node>> =
        vec![Arc::new(spec.node("a").await), Arc::new(spec.node("b").await), Arc::new(spec.node("c").await)];
    nodes[0].create_collection("docs", CollectionConfig::new(DIM, Metric::L2)).await.unwrap();

    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (nodes, p, stop) = (nodes.clone(), progress.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let rs = batch(i);
                let key = format!("batch-{i}");
                let t = Instant::now();
                let mut n = i;
                let ack = loop {
                    // A retry goes to the next node with the same idempotency key.
                    match nodes[n % 3].write("docs", upserts(&rs), Some(&key)).await {
                        Ok(ack) => break ack,
                        Err(e) => {
                            assert!(t.elapsed() < Duration::from_secs(90), "batch {i} never acknowledged: {e}");
                            p.errors.lock().push(e.to_string());
                            p.failed(true);
                            n += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                };
                p.acked.lock().extend(rs.iter().map(|r| r.id.clone()));
                p.token.fetch_max(ack.token, Ordering::SeqCst);
                p.batches.fetch_add(1, Ordering::SeqCst);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let reader = {
        let (nodes, p, stop) = (nodes.clone(), progress.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let query = Query { vector: Some(batch(0)[0].vector.clone()), k: 5, ..Default::default() };
                match nodes[i % 3].search("docs", ClusterQuery { query, ..Default::default() }).await {
                    Ok(_) => p.reads_ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        p.read_errors.lock().push(e.to_string());
                        p.failed(false);
                        0
                    }
                };
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    wait_batches(&progress, 10, "at first").await;

    // NATS: writes and reads fail with a clear error, then the clients reconnect.
    outage(&progress, 1, &mut nats, "-KILL", || {
        assert!(!progress.errors.lock().is_empty(), "no write failed while NATS was down");
        let not_ready = nodes[0].readiness().expect_err("ready without NATS");
        assert!(not_ready.contains("nats"), "{not_ready}");
    })
    .await;
    // PostgreSQL: longer than a lease; writes go on meanwhile.
    let while_pg_down = outage(&progress, 2, &mut pg, "-QUIT", || {}).await;
    // The object store.
    let while_s3_down = outage(&progress, 3, &mut s3, "-KILL", || {}).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    reader.await.unwrap();
    assert!(while_pg_down > 0, "no write was acknowledged while PostgreSQL was down");
    assert!(while_s3_down > 0, "no write was acknowledged while the object store was down");
    for e in progress.errors.lock().iter().chain(progress.read_errors.lock().iter()) {
        assert!(e.contains("unavailable"), "an unclear error: {e}");
    }

    // Every acknowledged write, once, on every node.
    for n in &nodes {
        let t = Instant::now();
        while let Err(e) = n.readiness() {
            assert!(t.elapsed() < Duration::from_secs(30), "node {} not ready again: {e}", n.id());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let acked: HashSet<String> = progress.acked.lock().iter().cloned().collect();
    let token = progress.token.load(Ordering::SeqCst);
    for n in &nodes {
        let t = Instant::now();
        loop {
            match n.describe("docs", Consistency::Strong).await {
                Ok(d) if d.records as usize == acked.len() => break,
                other => assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "node {}: {:?} records, {} acknowledged",
                    n.id(),
                    other.map(|d| d.records),
                    acked.len()
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut seen = HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = nodes[1].scan("docs", after.as_deref(), 1000, None, Consistency::Strong).await.unwrap();
        for r in &page.records {
            assert!(seen.insert(r.id.clone()), "{} twice", r.id);
        }
        match page.next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(seen, acked, "the records are the acknowledged writes");

    // Recovery without manual steps: every shard sealed up to its last write (commits
    // reached PostgreSQL, segments the object store). Each batch of 100 ids wrote one
    // message to each of the 4 shards, so each shard's last message is within 3 of the
    // last token ...
    let t = Instant::now();
    loop {
        let placed = nodes[0].placement().await.unwrap();
        if placed.iter().all(|p| p.owner.is_some() && p.checkpoint + 3 >= token) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "seals did not resume: {placed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ... and a new node with nothing cached rebuilds every shard from them and the log.
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
    let d = spec.node("d").await;
    let t = Instant::now();
    loop {
        if let Ok(got) = d.describe("docs", Consistency::Strong).await
            && got.records as usize == acked.len()
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "a new node did not rebuild the shards");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t = Instant::now();
    while !d.placement().await.unwrap().iter().all(|p| p.owner.as_deref() == Some("d")) {
        assert!(t.elapsed() < Duration::from_secs(30), "d did not take every lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reads = progress.reads_ok.load(Ordering::SeqCst);
    println!(
        "acknowledged {} writes in {} batches; {} write errors retried; reads: {reads} answered, {} failed",
        acked.len(),
        progress.batches.load(Ordering::SeqCst),
        progress.errors.lock().len(),
        progress.read_errors.lock().len()
    );
    // Counted from the kill until 10 more batches went through (reconnecting takes a while).
    for (name, (w, r)) in PHASES.iter().zip(progress.failed.lock().iter()) {
        println!("  failed while {name} down or coming back: {w} writes, {r} reads");
    }
    d.shutdown().await.unwrap_or_else(|e| panic!("shutdown of d: {e}"));
    drop((nats, pg, s3));
}
