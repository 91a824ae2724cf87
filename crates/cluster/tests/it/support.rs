//! Clusters of in-process nodes for the tests.

use kernelize_cluster::{ClusterConfig, Node};
use kernelize_store::{Op, Record};
use rand::{Rng, SeedableRng};

pub fn nats_url() -> String {
    std::env::var("KERNELIZE_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn pg_url() -> String {
    std::env::var("KERNELIZE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Where the services are.
pub struct Services {
    pub nats: String,
    pub pg: String,
    /// The S3 endpoint.
    pub s3: String,
}

/// A cluster's shared settings: a fresh name, bucket and cache root.
pub struct Spec {
    pub name: String,
    pub bucket: String,
    pub root: tempfile::TempDir,
    pub shards: u32,
    pub services: Services,
}

impl Spec {
    /// On the shared services (and the shared moto server).
    pub fn new(shards: u32) -> Spec {
        let moto = kernelize_blobs::testing::server();
        let services = Services { nats: nats_url(), pg: pg_url(), s3: moto.endpoint() };
        Spec::on(services, moto.bucket(), shards)
    }

    /// On the given services; `bucket` exists.
    pub fn on(services: Services, bucket: String, shards: u32) -> Spec {
        let name = format!("t{}_{}", std::process::id(), uuid_like());
        Spec { name, bucket, root: tempfile::tempdir().unwrap(), shards, services }
    }

    pub fn config(&self, node: &str) -> ClusterConfig {
        let text = format!(
            r#"
name = "{name}"
node_id = "{node}"
nats_url = "{nats}"
database_url = "{pg}"
cache_dir = "{cache}"
shards = {shards}
query_replicas = 2
[blobs]
kind = "s3"
bucket = "{bucket}"
endpoint = "{endpoint}"
access_key_id = "test"
secret_access_key = "test"
allow_http = true
[timing]
heartbeat_ms = 200
lease_ms = 1500
seal_records = 2000
seal_ms = 1000
request_ms = 10000
"#,
            name = self.name,
            nats = self.services.nats,
            pg = self.services.pg,
            cache = self.root.path().join(node).display(),
            shards = self.shards,
            bucket = self.bucket,
            endpoint = self.services.s3,
        );
        ClusterConfig::parse(&text, "test.toml").unwrap()
    }

    /// Deletes the cluster's stream and schema (call after the nodes stopped).
    pub async fn destroy(&self) {
        kernelize_cluster::destroy(&self.config("cleanup")).await.unwrap();
    }

    pub async fn node(&self, id: &str) -> Node {
        Node::start(self.config(id)).await.unwrap()
    }
}

fn uuid_like() -> String {
    let mut rng = rand::rng();
    (0..8).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect()
}

/// `n` records of dimension `dim` with text and a `group` field, seeded.
pub fn records(n: usize, dim: usize, seed: u64) -> Vec<Record> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"];
    (0..n)
        .map(|i| {
            let vector: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let text = format!("{} {} {}", words[i % 10], words[(i / 10) % 10], words[(i * 7) % 10]);
            let mut m = serde_json::Map::new();
            m.insert("group".into(), serde_json::json!(i % 5));
            Record { id: format!("r{i}"), vector, text: Some(text), metadata: Some(m) }
        })
        .collect()
}

pub fn upserts(rs: &[Record]) -> Vec<Op> {
    rs.iter().cloned().map(|r| Op::Upsert(std::sync::Arc::new(r))).collect()
}
