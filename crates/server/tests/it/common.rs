//! Test servers: a real `kernelize_server` on 127.0.0.1:0 with a temporary data dir and
//! SQLite, or a fresh schema in the local PostgreSQL.

use kernelize_server::{Config, Running};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;

/// The PostgreSQL the tests use (`KERNELIZE_TEST_PG` overrides).
pub fn pg_url() -> String {
    std::env::var("KERNELIZE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The admin key every test server starts with.
pub const ADMIN_KEY: &str = "kz_admin000test_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestServer {
    pub running: Option<Running>,
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub schema: Option<String>,
    /// The control-plane database URL.
    pub db_url: String,
}

/// A fresh PostgreSQL schema; returns `(url with search_path, schema)`.
pub async fn pg_schema() -> (String, String) {
    let schema = format!("kz_test_{}", kernelize_server::auth::random_id());
    let mut conn = sqlx::PgConnection::connect(&pg_url())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is required for these tests: {e}", pg_url()));
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let sep = if pg_url().contains('?') { '&' } else { '?' };
    (format!("{}{sep}options=-c%20search_path%3D{schema}", pg_url()), schema)
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            admin_key: Some(ADMIN_KEY.into()),
            log_format: "text".into(),
            ..Config::default()
        };
        let mut schema = None;
        if backend == Backend::Postgres {
            let (url, s) = pg_schema().await;
            c.database_url = Some(url);
            schema = Some(s);
        }
        tweak(&mut c);
        let tls = c.tls_cert.is_some();
        let db_url = c.database_url();
        let running = kernelize_server::start(c).await.unwrap();
        let scheme = if tls { "https" } else { "http" };
        let base = format!("{scheme}://{}", running.addr());
        TestServer { running: Some(running), base, client: reqwest::Client::new(), dir, schema, db_url }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// Sends a request; `key` None sends no credentials. Returns status and JSON body
    /// (`Null` when the body is empty or not JSON).
    pub async fn call(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self.client.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, key: &str, path: &str) -> (StatusCode, Value) {
        self.call(Some(key), Method::GET, path, None).await
    }

    pub async fn post(&self, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Some(key), Method::POST, path, Some(body)).await
    }

    /// Creates a key with role and optional scope; returns the full key.
    pub async fn key(&self, role: &str, collections: Option<Vec<&str>>) -> String {
        let mut body = json!({"name": format!("test-{role}"), "role": role});
        if let Some(c) = collections {
            body["collections"] = json!(c);
        }
        let (s, v) = self.post(ADMIN_KEY, "/v1/keys", body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["key"].as_str().unwrap().to_owned()
    }

    pub async fn create_collection(&self, name: &str, dim: usize) {
        let (s, v) = self.post(ADMIN_KEY, "/v1/collections", json!({"name": name, "dim": dim})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// Stops the server but keeps its data directory and schema for inspection.
    pub async fn shutdown_keep(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
        if let Some(s) = &self.schema
            && let Ok(mut conn) = sqlx::PgConnection::connect(&pg_url()).await
        {
            let _ = sqlx::query(&format!("DROP SCHEMA {s} CASCADE")).execute(&mut conn).await;
        }
    }
}

/// Builds a kernel (`body` as POST /v1/kernels takes it) as the admin and waits for it.
pub async fn build_kernel(ts: &TestServer, body: Value) -> String {
    let (s, b) = ts.post(ADMIN_KEY, "/v1/kernels", body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let id = b["id"].as_str().unwrap().to_owned();
    for _ in 0..1200 {
        let (_, v) = ts.get(ADMIN_KEY, &format!("/v1/kernels/{id}")).await;
        match v["state"].as_str() {
            Some("succeeded") => return id,
            Some("running") => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            _ => panic!("kernel build failed: {v}"),
        }
    }
    panic!("kernel {id} did not finish in 60 s");
}

/// A deterministic unit vector.
pub fn vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
    v
}

/// Runs a test body against both backends.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:path) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body($crate::common::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body($crate::common::Backend::Postgres).await;
            }
        }
    };
}
