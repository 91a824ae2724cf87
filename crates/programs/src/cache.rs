//! The response cache: answers by request, so a program run twice over the same inputs
//! makes no backend call the second time.
//!
//! The key is the SHA-256 of the backend's name (which names its model) and the whole
//! serialized [`Request`] — messages, output format, sampling (seed included, so answers
//! at temperature > 0 are cached per seed) and stop strings ([`cache_key`]). Two stores:
//! [`SqliteCache`], a file `llm-cache.sqlite` in the data directory, and [`RedisCache`],
//! shared by several servers. The resilience layer ([`crate::resilience::Resilient`])
//! consults the cache before any backend and stores only non-streamed, successful answers.
//!
//! What it does not do: evict (SQLite keeps everything; Redis entries expire with the
//! optional TTL), or store answers over [`MAX_VALUE_BYTES`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lm::Request;

/// The largest answer text stored; longer answers are not cached.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Stored values are read back only up to this size (the answer and its metadata).
const MAX_STORED_BYTES: usize = MAX_VALUE_BYTES + 64 * 1024;

/// What the cache keeps of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// The generated text.
    pub text: String,
    /// The backend that answered.
    pub backend: String,
    /// Its model.
    pub model: String,
    /// Why generation stopped.
    pub finish_reason: String,
}

/// A store of answers by key ([`cache_key`]).
pub trait ResponseCache: Send + Sync {
    /// Short name for logs (`sqlite:/path`, `redis`).
    fn name(&self) -> &str;

    /// The answer stored under `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<CachedAnswer>>>;

    /// Stores an answer under `key`. Returns `false` (and stores nothing) when the
    /// answer is longer than [`MAX_VALUE_BYTES`].
    fn put<'a>(&'a self, key: &'a str, answer: &'a CachedAnswer) -> BoxFuture<'a, Result<bool>>;
}

/// The cache key of a request to a backend: SHA-256 hex of the backend's name and the
/// serialized request.
///
/// # Errors
/// [`Error::Cache`] if the request cannot be serialized (it always can).
pub fn cache_key(backend: &str, req: &Request) -> Result<String> {
    let body = serde_json::to_vec(req).map_err(|e| Error::Cache(format!("cannot serialize the request: {e}")))?;
    // Length-prefixed name, so no name/request split can collide with another.
    let mut bytes = format!("kernelize-llm-cache-v1\n{}:{}\n", backend.len(), backend).into_bytes();
    bytes.extend_from_slice(&body);
    Ok(crate::util::sha256_hex(&bytes))
}

fn encode(answer: &CachedAnswer) -> Result<Option<Vec<u8>>> {
    if answer.text.len() > MAX_VALUE_BYTES {
        return Ok(None);
    }
    serde_json::to_vec(answer).map(Some).map_err(|e| Error::Cache(format!("cannot serialize an answer: {e}")))
}

fn decode(store: &str, key: &str, bytes: &[u8]) -> Result<CachedAnswer> {
    if bytes.len() > MAX_STORED_BYTES {
        return Err(Error::Cache(format!(
            "{store}: entry {key} is {} bytes, over the {MAX_STORED_BYTES}-byte bound",
            bytes.len()
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| Error::Cache(format!("{store}: entry {key} is damaged: {e}")))
}

/// The cache in a SQLite file, `llm-cache.sqlite` in the data directory (WAL mode).
#[derive(Debug, Clone)]
pub struct SqliteCache {
    pool: sqlx::SqlitePool,
    path: PathBuf,
    name: String,
}

/// The cache file's name in the data directory.
pub const SQLITE_FILE: &str = "llm-cache.sqlite";

impl SqliteCache {
    /// Opens (or creates) `llm-cache.sqlite` in `dir`, creating the directory and the
    /// table if missing.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be made; [`Error::Cache`] naming the file
    /// if SQLite cannot open it.
    pub async fn open(dir: &Path) -> Result<SqliteCache> {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

        fs_err::create_dir_all(dir)?;
        let path = dir.join(SQLITE_FILE);
        let fail = |e: sqlx::Error| Error::Cache(format!("{}: {e}", path.display()));
        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL is durable across process crashes; a lost entry is only a miss.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await.map_err(fail)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS llm_cache (
                key TEXT PRIMARY KEY NOT NULL,
                value BLOB NOT NULL,
                created_at INTEGER NOT NULL
            )",
        )
        .execute(&pool)
        .await
        .map_err(fail)?;
        let name = format!("sqlite:{}", path.display());
        Ok(SqliteCache { pool, path, name })
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries stored.
    ///
    /// # Errors
    /// [`Error::Cache`] if SQLite fails.
    pub async fn len(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM llm_cache")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::Cache(format!("{}: {e}", self.path.display())))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Whether no entry is stored.
    ///
    /// # Errors
    /// [`Error::Cache`] if SQLite fails.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// Deletes every entry.
    ///
    /// # Errors
    /// [`Error::Cache`] if SQLite fails.
    pub async fn clear(&self) -> Result<()> {
        sqlx::query("DELETE FROM llm_cache")
            .execute(&self.pool)
            .await
            .map_err(|e| Error::Cache(format!("{}: {e}", self.path.display())))?;
        Ok(())
    }
}

impl ResponseCache for SqliteCache {
    fn name(&self) -> &str {
        &self.name
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<CachedAnswer>>> {
        Box::pin(async move {
            let row: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM llm_cache WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| Error::Cache(format!("{}: {e}", self.path.display())))?;
            row.map(|bytes| decode(&self.name, key, &bytes)).transpose()
        })
    }

    fn put<'a>(&'a self, key: &'a str, answer: &'a CachedAnswer) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let Some(bytes) = encode(answer)? else { return Ok(false) };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            sqlx::query("INSERT OR REPLACE INTO llm_cache (key, value, created_at) VALUES (?, ?, ?)")
                .bind(key)
                .bind(bytes)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(|e| Error::Cache(format!("{}: {e}", self.path.display())))?;
            Ok(true)
        })
    }
}

/// The cache in Redis, shared by every server that points at it: keys are
/// `{prefix}{key}`, values expire after the TTL when one is set.
pub struct RedisCache {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    prefix: String,
    ttl: Option<Duration>,
    name: String,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: only the prefix and TTL are shown.
        f.debug_struct("RedisCache").field("prefix", &self.prefix).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// Bound on connecting to Redis and on each command.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisCache {
    /// A cache at `url` (`redis://host:6379`, `rediss://…`, optionally `/db`), keys
    /// under `prefix`, entries expiring after `ttl` (none: kept until evicted).
    /// Connects on first use.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed URL, a prefix with glob characters
    /// (`* ? [ ] \`), or a TTL under one millisecond.
    pub fn new(url: &str, prefix: impl Into<String>, ttl: Option<Duration>) -> Result<RedisCache> {
        let prefix = prefix.into();
        if prefix.chars().any(|c| matches!(c, '*' | '?' | '[' | ']' | '\\')) {
            return Err(Error::invalid(format!("redis cache: key prefix {prefix:?} may not hold * ? [ ] or \\")));
        }
        if ttl.is_some_and(|t| t.as_millis() == 0) {
            return Err(Error::invalid("redis cache: the TTL is at least 1 ms"));
        }
        let client = redis::Client::open(url).map_err(|e| Error::invalid(format!("redis cache: bad URL: {e}")))?;
        Ok(RedisCache { client, conn: tokio::sync::Mutex::new(None), name: format!("redis:{prefix}"), prefix, ttl })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| Error::Cache(format!("redis: cannot connect: {e}")))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs a command; a connection that failed is dropped so the next call reconnects.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut c = self.connection().await?;
        match cmd.query_async::<T>(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    *self.conn.lock().await = None;
                }
                Err(Error::Cache(format!("redis: {e}")))
            }
        }
    }

    /// Deletes every key under the prefix (SCAN, then DEL in batches). Returns how many.
    ///
    /// # Errors
    /// [`Error::Cache`] if Redis fails.
    pub async fn clear(&self) -> Result<u64> {
        let pattern = format!("{}*", self.prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) =
                self.query(redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(500)).await?;
            if !keys.is_empty() {
                let n: u64 = self.query(redis::cmd("DEL").arg(&keys)).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

impl ResponseCache for RedisCache {
    fn name(&self) -> &str {
        &self.name
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<CachedAnswer>>> {
        Box::pin(async move {
            let full = format!("{}{key}", self.prefix);
            // STRLEN first: a shared Redis may hold anything under our prefix.
            let len: u64 = self.query(redis::cmd("STRLEN").arg(&full)).await?;
            if len == 0 {
                return Ok(None);
            }
            if len > MAX_STORED_BYTES as u64 {
                return Err(Error::Cache(format!(
                    "redis: entry {full} is {len} bytes, over the {MAX_STORED_BYTES}-byte bound"
                )));
            }
            let bytes: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(&full)).await?;
            bytes.map(|b| decode(&self.name, key, &b)).transpose()
        })
    }

    fn put<'a>(&'a self, key: &'a str, answer: &'a CachedAnswer) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let Some(bytes) = encode(answer)? else { return Ok(false) };
            let full = format!("{}{key}", self.prefix);
            let mut cmd = redis::cmd("SET");
            cmd.arg(&full).arg(bytes);
            if let Some(ttl) = self.ttl {
                cmd.arg("PX").arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
            }
            let () = self.query(&cmd).await?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::{Message, OutputFormat, Role, Sampling};

    fn req() -> Request {
        Request {
            messages: vec![Message::new(Role::User, "hi")],
            format: OutputFormat::Json { schema: r#"{"type":"object"}"#.into() },
            sampling: Sampling::default(),
            stop: Vec::new(),
        }
    }

    #[test]
    fn key_covers_backend_request_and_seed() {
        let a = cache_key("openai:m", &req()).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(a, cache_key("openai:m", &req()).unwrap());
        assert_ne!(a, cache_key("openai:n", &req()).unwrap());
        let mut r = req();
        r.sampling.seed = 1;
        assert_ne!(a, cache_key("openai:m", &r).unwrap());
        let mut r = req();
        r.stop.push("\n".into());
        assert_ne!(a, cache_key("openai:m", &r).unwrap());
        let mut r = req();
        r.format = OutputFormat::Text;
        assert_ne!(a, cache_key("openai:m", &r).unwrap());
    }

    #[tokio::test]
    async fn sqlite_round_trip_and_size_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SqliteCache::open(dir.path()).await.unwrap();
        assert!(cache.path().ends_with(SQLITE_FILE));
        let a =
            CachedAnswer { text: "{}".into(), backend: "b".into(), model: "m".into(), finish_reason: "stop".into() };
        assert_eq!(cache.get("k").await.unwrap(), None);
        assert!(cache.put("k", &a).await.unwrap());
        assert_eq!(cache.get("k").await.unwrap(), Some(a.clone()));
        let big = CachedAnswer { text: "x".repeat(MAX_VALUE_BYTES + 1), ..a };
        assert!(!cache.put("big", &big).await.unwrap());
        assert_eq!(cache.get("big").await.unwrap(), None);
        assert_eq!(cache.len().await.unwrap(), 1);
        // Reopening finds the entry (and the table is not recreated).
        drop(cache);
        let cache = SqliteCache::open(dir.path()).await.unwrap();
        assert_eq!(cache.len().await.unwrap(), 1);
    }

    #[test]
    fn redis_prefix_and_ttl_checked() {
        assert!(RedisCache::new("redis://127.0.0.1:6379", "a*", None).is_err());
        assert!(RedisCache::new("redis://127.0.0.1:6379", "a:", Some(Duration::ZERO)).is_err());
        assert!(RedisCache::new("not a url", "a:", None).is_err());
        assert!(RedisCache::new("redis://127.0.0.1:6379", "a:", Some(Duration::from_secs(60))).is_ok());
    }
}
