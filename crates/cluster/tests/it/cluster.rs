//! Three nodes against one engine; leases, fencing, failover, consistency levels.

use crate::support::{Spec, pg_url, records, upserts};
use kernelize_cluster::meta::{Held, Meta, ShardState};
use kernelize_cluster::{ClusterQuery, Consistency, Error, Node};
use kernelize_index::search::{IndexCache, Mode, Query, Searcher};
use kernelize_store::{CollectionConfig, Database, Metric, Op, Options, Record};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const DIM: usize = 16;

/// Waits until every shard of every collection has a live owner and each node hosts
/// what it should.
async fn settle(nodes: &[&Node], shards: usize) {
    let t = Instant::now();
    loop {
        let placed = nodes[0].placement().await.unwrap();
        let owned = placed.iter().filter(|p| p.owner.is_some()).count();
        let hosted: usize = nodes.iter().map(|n| n.hosted().len()).sum();
        if owned == placed.len() && placed.len() >= shards && hosted >= placed.len() * 2.min(nodes.len()) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "cluster did not settle: {placed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reference(rs: &[Record]) -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::default()).unwrap();
    let c = db.create_collection("docs", CollectionConfig::new(DIM, Metric::Cosine)).unwrap();
    for chunk in rs.chunks(1000) {
        c.upsert(chunk.to_vec()).unwrap();
    }
    c.flush().unwrap();
    (dir, db)
}

fn ids(hits: &[kernelize_cluster::ClusterHit]) -> Vec<String> {
    hits.iter().map(|h| h.record.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_answer_as_one_engine_does() {
    let spec = Spec::new(4);
    let (a, b, c) = (spec.node("a").await, spec.node("b").await, spec.node("c").await);
    let nodes = [&a, &b, &c];
    a.create_collection("docs", CollectionConfig::new(DIM, Metric::Cosine)).await.unwrap();
    let dup = b.create_collection("docs", CollectionConfig::new(DIM, Metric::Cosine)).await;
    assert!(matches!(dup, Err(Error::AlreadyExists(_))), "{dup:?}");
    settle(&nodes, 4).await;

    let rs = records(6000, DIM, 1);
    let mut token = 0;
    for (i, chunk) in rs.chunks(500).enumerate() {
        let ack = nodes[i % 3].write("docs", upserts(chunk), None).await.unwrap();
        assert!(ack.messages >= 1);
        token = token.max(ack.token);
    }
    let (_dir, db) = reference(&rs);
    let refc = db.collection("docs").unwrap();
    let cache = IndexCache::new();
    let searcher = Searcher::new(&refc, &**db.storage(), &cache);

    let queries = records(30, DIM, 99);
    let (mut got, mut want_hnsw, mut total) = (0usize, 0usize, 0usize);
    for n in nodes {
        for q in &queries {
            let exact = Query { vector: Some(q.vector.clone()), k: 10, exact: true, ..Default::default() };
            let truth: Vec<String> = searcher.search(&exact).unwrap().into_iter().map(|h| h.id).collect();
            let cq =
                ClusterQuery { query: exact.clone(), consistency: Consistency::Session, token, ..Default::default() };
            assert_eq!(ids(&n.search("docs", cq.clone()).await.unwrap()), truth, "exact search on node {}", n.id());
            let hnsw = Query { exact: false, ..exact.clone() };
            let approx = n.search("docs", ClusterQuery { query: hnsw.clone(), ..cq }).await.unwrap();
            got += ids(&approx).iter().filter(|id| truth.contains(id)).count();
            want_hnsw += searcher.search(&hnsw).unwrap().iter().filter(|h| truth.contains(&h.id)).count();
            total += truth.len();
        }
    }
    let (recall, single) = (got as f64 / total as f64, want_hnsw as f64 / total as f64);
    assert!(recall >= single - 0.005, "cluster HNSW recall {recall} vs single node {single}");

    // Keyword: the same BM25 scores as one engine (collection-wide statistics).
    let kq = Query { text: Some("gamma theta".into()), k: 10, mode: Mode::Keyword, ..Default::default() };
    let want: Vec<f32> = searcher.search(&kq).unwrap().iter().map(|h| h.score).collect();
    for n in nodes {
        let cq = ClusterQuery { query: kq.clone(), consistency: Consistency::Strong, ..Default::default() };
        let got: Vec<f32> = n.search("docs", cq).await.unwrap().iter().map(|h| h.score).collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "keyword scores {got:?} vs {want:?}");
        }
    }
    // Hybrid and filters go through too.
    let hq = ClusterQuery {
        query: Query {
            vector: Some(queries[0].vector.clone()),
            text: Some("alpha".into()),
            k: 5,
            mode: Mode::Hybrid,
            filter: Some(kernelize_index::filter::Filter::parse("group = 3").unwrap()),
            ..Default::default()
        },
        consistency: Consistency::Strong,
        ..Default::default()
    };
    let hits = c.search("docs", hq).await.unwrap();
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h.record.metadata.as_ref().unwrap()["group"] == 3));
    let bad = ClusterQuery {
        query: Query {
            vector: Some(queries[0].vector.clone()),
            k: 5,
            filter: Some(kernelize_index::filter::Filter::parse("colour = 3").unwrap()),
            ..Default::default()
        },
        ..Default::default()
    };
    let e = a.search("docs", bad).await.unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");

    // Reads of one record, counts, deletes, pages.
    for n in nodes {
        let r = n.get("docs", "r4321", Consistency::Session, token).await.unwrap().unwrap();
        assert_eq!(r.vector, rs[4321].vector);
        assert_eq!(n.describe("docs", Consistency::Strong).await.unwrap().records, 6000);
    }
    let gone: Vec<Op> = (0..100).map(|i| Op::Delete(format!("r{i}"))).collect();
    let ack = b.write("docs", gone, None).await.unwrap();
    assert_eq!(c.describe("docs", Consistency::Strong).await.unwrap().records, 5900);
    assert!(a.get("docs", "r7", Consistency::Session, ack.token).await.unwrap().is_none());
    let mut seen = HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = a.scan("docs", after.as_deref(), 700, None, Consistency::Strong).await.unwrap();
        for r in &page.records {
            assert!(seen.insert(r.id.clone()), "{} twice", r.id);
        }
        match page.next_after {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5900);

    // Sealed: every shard committed segments to the object store.
    let t = Instant::now();
    loop {
        let placed = a.placement().await.unwrap();
        if placed.iter().all(|p| p.segments > 0 && p.checkpoint > 0) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "not sealed: {placed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
    spec.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_owner_cannot_commit() {
    let spec = Spec::new(1);
    let meta = Meta::connect(&pg_url(), &spec.name).await.unwrap();
    let row = kernelize_cluster::meta::CollectionRow {
        name: "fenced".into(),
        cid: format!("{}x", spec.name),
        config: CollectionConfig::new(4, Metric::L2),
        shards: 1,
    };
    meta.create_collection(&row).await.unwrap();
    let old = meta.acquire(&row.cid, 0, "old", Duration::from_millis(200)).await.unwrap().unwrap();
    assert!(meta.acquire(&row.cid, 0, "new", Duration::from_secs(5)).await.unwrap().is_none(), "lease still runs");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new = meta.acquire(&row.cid, 0, "new", Duration::from_secs(5)).await.unwrap().unwrap();
    assert_eq!(new.epoch, old.epoch + 1);
    let state = ShardState::default();
    let held = |node, epoch| Held { cid: &row.cid, shard: 0, node, epoch };
    let stale = meta.commit(held("old", old.epoch), 10, &state, Duration::from_secs(5)).await;
    assert!(matches!(stale, Err(Error::Fenced { .. })), "{stale:?}");
    assert!(!meta.renew(&row.cid, 0, "old", old.epoch, Duration::from_secs(5)).await.unwrap());
    meta.commit(held("new", new.epoch), 10, &state, Duration::from_secs(5)).await.unwrap();
    assert_eq!(meta.shard(&row.cid, 0).await.unwrap().checkpoint, 10);
    spec.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_lost_mid_ingest_loses_no_acknowledged_write() {
    let spec = Spec::new(4);
    let (a, b, c) = (spec.node("a").await, spec.node("b").await, spec.node("c").await);
    a.create_collection("docs", CollectionConfig::new(DIM, Metric::Cosine)).await.unwrap();
    settle(&[&a, &b, &c], 4).await;
    // The node that owns the most shards goes; the other two write and read.
    let mut nodes = vec![a, b, c];
    nodes.sort_by_key(|n| std::cmp::Reverse(n.owned().len()));
    let victim = nodes.remove(0);
    assert!(!victim.owned().is_empty());
    let gone = victim.id().to_owned();
    let (b, c) = (nodes.remove(0), nodes.remove(0));
    let rs = records(8000, DIM, 2);
    let mut acked = HashSet::new();
    let mut during = Vec::new();
    for (i, chunk) in rs.chunks(400).enumerate() {
        if i == 8 {
            victim.abort(); // the owner disappears: no seal, no release
        }
        let writer = if i % 2 == 0 { &b } else { &c };
        writer.write("docs", upserts(chunk), Some(&format!("batch-{i}"))).await.unwrap();
        acked.extend(chunk.iter().map(|r| r.id.clone()));
        if i > 8 {
            // Queries keep answering meanwhile (eventual: what the surviving replicas applied).
            let query = Query { vector: Some(chunk[0].vector.clone()), k: 3, ..Default::default() };
            let q = ClusterQuery { query, ..Default::default() };
            during.push(c.search("docs", q).await.map(|h| h.len()));
        }
    }
    // A retried batch (same idempotency key) is stored once.
    b.write("docs", upserts(&rs[..400]), Some("batch-0")).await.unwrap();
    assert!(during.iter().all(|r| r.as_ref().is_ok_and(|n| *n == 3)), "{during:?}");
    // The lease moves to a live node with a higher epoch.
    let t = Instant::now();
    loop {
        let placed = b.placement().await.unwrap();
        if placed.iter().all(|p| p.owner.as_deref().is_some_and(|o| o != gone)) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "leases did not move: {placed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taken = |n: &Node| n.stats().leases_taken.load(std::sync::atomic::Ordering::Relaxed);
    assert!(taken(&b) + taken(&c) > 0);
    for n in [&b, &c] {
        let d = n.describe("docs", Consistency::Strong).await.unwrap();
        assert_eq!(d.records as usize, acked.len(), "node {}", n.id());
        for id in ["r0", "r3999", "r7999"] {
            assert!(n.get("docs", id, Consistency::Strong, 0).await.unwrap().is_some(), "{id} on {}", n.id());
        }
    }
    b.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
    spec.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_with_the_write_token_sees_the_write() {
    let spec = Spec::new(2);
    let (a, b) = (spec.node("a").await, spec.node("b").await);
    a.create_collection("s", CollectionConfig::new(DIM, Metric::L2)).await.unwrap();
    settle(&[&a, &b], 2).await;
    let rs = records(200, DIM, 3);
    for (i, r) in rs.iter().enumerate() {
        let (w, rd) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let ack = w.write("s", vec![Op::Upsert(std::sync::Arc::new(r.clone()))], None).await.unwrap();
        let got = rd.get("s", &r.id, Consistency::Session, ack.token).await.unwrap();
        assert!(got.is_some(), "write {i} not seen with its token");
        if i % 20 == 0 {
            let n = rd.describe("s", Consistency::Strong).await.unwrap().records;
            assert_eq!(n as usize, i + 1);
        }
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    spec.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_come_in_commit_order_and_expire() {
    let spec = Spec::new(2);
    let mut cfg = spec.config("a");
    cfg.changes.retention_secs = 3;
    let a = std::sync::Arc::new(Node::start(cfg).await.unwrap());
    a.create_collection("cdc", CollectionConfig::new(DIM, Metric::L2)).await.unwrap();
    a.create_collection("other", CollectionConfig::new(DIM, Metric::L2)).await.unwrap();
    // A reader that asks before anything is written waits for the first change.
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move { a.changes("cdc", 0, 1000, Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rs = records(50, DIM, 5);
    a.write("cdc", upserts(&rs), None).await.unwrap();
    a.write("other", upserts(&rs[..5]), None).await.unwrap();
    let deleted = a.write("cdc", vec![Op::Delete("r3".into())], None).await.unwrap();
    let mut again = rs[3].clone();
    again.text = Some("written again".into());
    a.write("cdc", upserts(&[again]), None).await.unwrap();
    let first = waiting.await.unwrap().unwrap();
    assert!(!first.changes.is_empty() && first.changes.iter().all(|c| c.op == "upsert"), "{first:?}");

    // Paged reading: every change once, in commit order, nothing of another collection.
    let (mut all, mut after) = (Vec::new(), 0);
    loop {
        let page = a.changes("cdc", after, 10, Duration::from_millis(500)).await.unwrap();
        if page.changes.is_empty() {
            assert_eq!(page.next, after);
            break;
        }
        assert!(page.changes.iter().all(|c| c.position > after));
        after = page.next;
        assert_eq!(page.changes.last().unwrap().position, after);
        all.extend(page.changes);
    }
    assert_eq!(all.len(), 52, "50 upserts, a delete, an upsert");
    assert!(all.windows(2).all(|w| w[0].position <= w[1].position));
    let r3: Vec<(&str, Option<&str>)> = all
        .iter()
        .filter(|c| c.id == "r3")
        .map(|c| (c.op, c.record.as_ref().and_then(|r| r.text.as_deref())))
        .collect();
    assert_eq!(r3, [("upsert", rs[3].text.as_deref()), ("delete", None), ("upsert", Some("written again"))]);
    // A change's position is the write token of its write.
    let del = all.iter().find(|c| c.op == "delete").unwrap();
    assert_eq!(del.position, deleted.token);
    let e = a.changes("cdc", 0, 0, Duration::ZERO).await.unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");

    // Past the retention the old changes are gone, and a reader behind them is told so.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let late = a.write("cdc", upserts(&rs[..1]), None).await.unwrap();
    let t = Instant::now();
    let earliest = loop {
        match a.changes("cdc", 1, 100, Duration::from_millis(200)).await {
            Err(Error::Expired { after: 1, earliest }) => break earliest,
            other => assert!(t.elapsed() < Duration::from_secs(15), "not expired: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rest = a.changes("cdc", earliest, 100, Duration::from_secs(5)).await.unwrap();
    assert_eq!(rest.changes.iter().map(|c| c.position).collect::<Vec<_>>(), [late.token]);
    a.shutdown().await.unwrap();
    spec.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_node_takes_its_shards_over_while_writes_go_on() {
    let spec = Spec::new(8);
    let (a, b) = (spec.node("a").await, spec.node("b").await);
    a.create_collection("grow", CollectionConfig::new(DIM, Metric::Cosine)).await.unwrap();
    settle(&[&a, &b], 8).await;
    let rs = records(4000, DIM, 6);
    for chunk in rs[..2000].chunks(250) {
        a.write("grow", upserts(chunk), None).await.unwrap();
    }
    // A name that ranks first for some shards once it is a member (rendezvous hashing).
    let cid = a.list().await.unwrap().into_iter().find(|c| c.name == "grow").unwrap().cid;
    let name = (0..100)
        .map(|i| format!("c{i}"))
        .find(|n| {
            let members = vec!["a".to_owned(), "b".to_owned(), n.clone()];
            (0..8).filter(|s| kernelize_cluster::rank(&members, &cid, *s)[0] == n).count() >= 2
        })
        .unwrap();
    let c = spec.node(&name).await;
    // Writes go on through the hand-over.
    for (i, chunk) in rs[2000..].chunks(250).enumerate() {
        [&a, &b, &c][i % 3].write("grow", upserts(chunk), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let t = Instant::now();
    loop {
        let placed = a.placement().await.unwrap();
        let mine = placed.iter().filter(|p| p.owner.as_deref() == Some(name.as_str())).count();
        if mine >= 2 && placed.iter().all(|p| p.owner.is_some()) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{name} took no shards: {placed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = Instant::now();
    while let Err(e) = c.readiness() {
        assert!(t.elapsed() < Duration::from_secs(30), "{name} not ready: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lost = |n: &Node| n.stats().leases_lost.load(std::sync::atomic::Ordering::Relaxed);
    assert!(lost(&a) + lost(&b) >= 2, "the old owners handed their leases over");
    assert!(c.stats().leases_taken.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    for n in [&a, &b, &c] {
        assert_eq!(n.describe("grow", Consistency::Strong).await.unwrap().records, 4000, "node {}", n.id());
        let r = n.get("grow", "r3999", Consistency::Strong, 0).await.unwrap().unwrap();
        assert_eq!(r.vector, rs[3999].vector);
    }
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
    spec.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_only_what_no_shard_names() {
    let spec = Spec::new(1);
    let cfg = |n: &str| {
        let mut c = spec.config(n);
        c.blob_options.refresh_after_secs = 1;
        c
    };
    let a = Node::start(cfg("a")).await.unwrap();
    a.create_collection("g", CollectionConfig::new(DIM, Metric::L2)).await.unwrap();
    a.create_collection("gone", CollectionConfig::new(DIM, Metric::L2)).await.unwrap();
    settle(&[&a], 2).await;
    let commits = |name: &'static str| {
        let a = &a;
        async move { a.placement().await.unwrap().iter().find(|p| p.collection == name).map_or(0, |p| p.commits) }
    };
    // One seal per batch: segments pile up, and compaction (past 6) replaces them.
    let rs = records(3000, DIM, 7);
    for (i, chunk) in rs.chunks(300).enumerate() {
        a.write("g", upserts(chunk), None).await.unwrap();
        let t = Instant::now();
        while commits("g").await <= i as i64 {
            assert!(t.elapsed() < Duration::from_secs(20), "seal {i} did not happen");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    a.write("gone", upserts(&rs[..100]), None).await.unwrap();
    let t = Instant::now();
    while commits("gone").await == 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "no seal of gone");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.drop_collection("gone").await.unwrap();

    let e = kernelize_cluster::gc(&cfg("gc"), Duration::from_secs(3)).await.unwrap_err();
    assert!(e.to_string().contains("refresh_after_secs"), "{e}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r = kernelize_cluster::gc(&cfg("gc"), Duration::from_secs(4)).await.unwrap();
    assert!(r.deleted >= 3 && r.referenced >= 1 && r.missing.is_empty(), "{r:?}");
    // Nothing a shard names went: a node with an empty cache rebuilds from the object store.
    a.shutdown().await.unwrap();
    let b = Node::start(cfg("b")).await.unwrap();
    assert_eq!(b.describe("g", Consistency::Strong).await.unwrap().records, 3000);
    assert_eq!(b.get("g", "r2999", Consistency::Strong, 0).await.unwrap().unwrap().vector, rs[2999].vector);
    let again = kernelize_cluster::gc(&cfg("gc"), Duration::from_secs(4)).await.unwrap();
    assert_eq!((again.deleted, again.missing.len()), (0, 0), "{again:?}");
    b.shutdown().await.unwrap();
    spec.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_processes_cannot_share_a_node_id() {
    let spec = Spec::new(1);
    let a = spec.node("a").await;
    // Another process (on another machine: its own cache) configured with the same id.
    let elsewhere = |dir: &str| {
        let mut c = spec.config("a");
        c.cache_dir = spec.root.path().join(dir);
        c
    };
    let e = Node::start(elsewhere("a2")).await.err().expect("a second process with id a");
    assert!(matches!(e, Error::AlreadyExists(_)) && e.to_string().contains("node_id"), "{e}");
    // A process that died holds its id only until its heartbeat goes stale.
    a.abort();
    let again = Node::start(elsewhere("a3")).await.unwrap();
    again.shutdown().await.unwrap();
    spec.destroy().await;
}
