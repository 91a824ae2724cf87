//! The control-plane metadata store (sqlx): SQLite in the data directory by default,
//! PostgreSQL when a `postgres://` URL is configured. One portable migration set serves
//! both; every query is written in their common SQL with `$n` parameters.

use crate::audit::{AuditEntry, AuditKeys, GENESIS};
use anyhow::{Context, Result};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A stored API key (never the secret: only its keyed hash).
#[derive(Debug, Clone)]
pub struct KeyRow {
    /// Public id.
    pub id: String,
    /// Name given at creation.
    pub name: String,
    /// HMAC-SHA256 of the secret under the server pepper, hex.
    pub hash: String,
    /// `reader`, `writer` or `admin`.
    pub role: String,
    /// JSON array of collection names; `None` for all.
    pub collections: Option<String>,
    /// Created (unix ms).
    pub created_ms: i64,
    /// Expires (unix ms).
    pub expires_ms: Option<i64>,
    /// Revoked (unix ms).
    pub revoked_ms: Option<i64>,
    /// The key that replaced this one on rotation.
    pub rotated_to: Option<String>,
    /// Its quotas (`crate::quota`); every part absent: unlimited.
    pub quota: KeyQuota,
}

/// The quotas of a key, as stored (`None`: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyQuota {
    /// Live records in the collections the key may write to.
    pub records: Option<i64>,
    /// Bytes of those records (id, vector, text and metadata as written).
    pub bytes: Option<i64>,
    /// Authenticated requests per UTC day.
    pub requests_per_day: Option<i64>,
}

impl KeyQuota {
    /// Whether any part is set.
    pub fn is_set(&self) -> bool {
        self.records.is_some() || self.bytes.is_some() || self.requests_per_day.is_some()
    }
    /// Whether writes are limited (`records` or `bytes`).
    pub fn limits_writes(&self) -> bool {
        self.records.is_some() || self.bytes.is_some()
    }
}

impl KeyRow {
    /// Usable at `now_ms`: not revoked, not expired.
    pub fn active(&self, now_ms: i64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|e| e > now_ms)
    }
}

/// Usage counters of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRow {
    /// Key id.
    pub key_id: String,
    /// Authenticated requests.
    pub requests: i64,
    /// Records written (upserted or deleted).
    pub records_written: i64,
    /// Texts embedded (by `/v1/embed`, text queries and upserts without vectors).
    pub texts_embedded: i64,
    /// Bytes of records written (vectors, text and metadata).
    pub bytes_stored: i64,
    /// Language-model tokens (prompt and generated) of program runs and chat completions.
    pub llm_tokens: i64,
}

/// A backup job.
#[derive(Debug, Clone)]
pub struct BackupRow {
    /// Job id.
    pub id: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// `tar` or `dir`.
    pub format: String,
    /// Destination.
    pub path: String,
    /// Who asked.
    pub requested_by: String,
    /// Started (unix ms).
    pub created_ms: i64,
    /// Finished (unix ms).
    pub finished_ms: Option<i64>,
    /// Bytes written.
    pub bytes: Option<i64>,
    /// Collections captured.
    pub collections: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A kernel build job and, once it succeeded, the kernel it made.
#[derive(Debug, Clone)]
pub struct KernelRow {
    /// Kernel id (also the file name).
    pub id: String,
    /// Source collection.
    pub collection: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// The build request, JSON.
    pub settings: String,
    /// Who asked.
    pub requested_by: String,
    /// Started (unix ms).
    pub created_ms: i64,
    /// Finished (unix ms).
    pub finished_ms: Option<i64>,
    /// Kernel file bytes.
    pub bytes: Option<i64>,
    /// Rows kept.
    pub rows_out: Option<i64>,
    /// Ids the rows stand for.
    pub ids: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The incarnation of the source collection the kernel was built from.
    pub incarnation: Option<String>,
}

fn kernel_row(r: &AnyRow) -> sqlx::Result<KernelRow> {
    Ok(KernelRow {
        id: r.try_get("id")?,
        collection: r.try_get("collection")?,
        state: r.try_get("state")?,
        settings: r.try_get("settings")?,
        requested_by: r.try_get("requested_by")?,
        created_ms: r.try_get("created_ms")?,
        finished_ms: r.try_get("finished_ms")?,
        bytes: r.try_get("bytes")?,
        rows_out: r.try_get("rows_out")?,
        ids: r.try_get("ids")?,
        error: r.try_get("error")?,
        incarnation: r.try_get("incarnation")?,
    })
}

/// Who changed a key, for the `keys.state` entry written with the change.
#[derive(Debug, Clone)]
pub struct KeyChange<'a> {
    /// The server's request id (or `startup`).
    pub request_id: &'a str,
    /// `key:<id>`, `token:<id>` or `system`.
    pub actor: &'a str,
}

/// The metadata store.
#[derive(Debug, Clone)]
pub struct MetaStore {
    pool: AnyPool,
    backend: Backend,
}

fn key_row(r: &AnyRow) -> sqlx::Result<KeyRow> {
    Ok(KeyRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        hash: r.try_get("hash")?,
        role: r.try_get("role")?,
        collections: r.try_get("collections")?,
        created_ms: r.try_get("created_ms")?,
        expires_ms: r.try_get("expires_ms")?,
        revoked_ms: r.try_get("revoked_ms")?,
        rotated_to: r.try_get("rotated_to")?,
        quota: KeyQuota {
            records: r.try_get("quota_records")?,
            bytes: r.try_get("quota_bytes")?,
            requests_per_day: r.try_get("quota_requests_per_day")?,
        },
    })
}

fn audit_row(r: &AnyRow) -> sqlx::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.try_get("seq")?,
        ts_ms: r.try_get("ts_ms")?,
        request_id: r.try_get("request_id")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        outcome: r.try_get("outcome")?,
        detail: r.try_get("detail")?,
        version: r.try_get("version")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

fn backup_row(r: &AnyRow) -> sqlx::Result<BackupRow> {
    Ok(BackupRow {
        id: r.try_get("id")?,
        state: r.try_get("state")?,
        format: r.try_get("format")?,
        path: r.try_get("path")?,
        requested_by: r.try_get("requested_by")?,
        created_ms: r.try_get("created_ms")?,
        finished_ms: r.try_get("finished_ms")?,
        bytes: r.try_get("bytes")?,
        collections: r.try_get("collections")?,
        error: r.try_get("error")?,
    })
}

const KEY_COLUMNS: &str = "id, name, hash, role, collections, created_ms, expires_ms, revoked_ms, rotated_to, \
                           quota_records, quota_bytes, quota_requests_per_day";
const AUDIT_COLUMNS: &str = "seq, ts_ms, request_id, actor, action, target, outcome, detail, version, prev_hash, hash";

impl MetaStore {
    /// Connects and runs the migrations.
    pub async fn connect(url: &str) -> Result<MetaStore> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            anyhow::bail!("database URL must start with sqlite: or postgres:, got {:?}", redact(url));
        };
        let max = if backend == Backend::Sqlite { 4 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA synchronous = FULL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .with_context(|| format!("connecting to the metadata store {}", redact(url)))?;
        MIGRATOR.run(&pool).await.context("running metadata store migrations")?;
        Ok(MetaStore { pool, backend })
    }

    /// The connection pool (the fleet control plane keeps its tables here too).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Round trip to the database (for `/readyz`).
    pub async fn ping(&self) -> sqlx::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Inserts a key and records its state in the audit log, in one transaction.
    pub async fn insert_key(&self, keys: &AuditKeys, k: &KeyRow, by: &KeyChange<'_>) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        insert_key(&mut *tx, k).await?;
        self.append_key_state(&mut tx, keys, &k.id, by).await?;
        tx.commit().await
    }

    /// Appends a `keys.state` entry with the stored row of key `id` (inside `tx`).
    async fn append_key_state(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        keys: &AuditKeys,
        id: &str,
        by: &KeyChange<'_>,
    ) -> sqlx::Result<()> {
        let q = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row = key_row(&sqlx::query(&q).bind(id).fetch_one(&mut **tx).await?)?;
        let e = AuditEntry {
            ts_ms: crate::state::now_ms(),
            request_id: crate::audit::bounded(by.request_id, crate::audit::MAX_FIELD),
            actor: crate::audit::bounded(by.actor, crate::audit::MAX_FIELD),
            action: crate::audit::ACTION_KEY_STATE.into(),
            target: row.id.clone(),
            outcome: "ok".into(),
            detail: crate::audit::key_state_detail(&row),
            ..Default::default()
        };
        self.append_tx(tx, keys, e).await.map(|_| ())
    }

    /// One key by id.
    pub async fn key(&self, id: &str) -> sqlx::Result<Option<KeyRow>> {
        let q = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        sqlx::query(&q).bind(id).fetch_optional(&self.pool).await?.map(|r| key_row(&r)).transpose()
    }

    /// Every key, oldest first.
    pub async fn keys(&self) -> sqlx::Result<Vec<KeyRow>> {
        let q = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_ms, id");
        sqlx::query(&q).fetch_all(&self.pool).await?.iter().map(key_row).collect()
    }

    /// Whether any admin key exists (active or not).
    pub async fn has_admin(&self) -> sqlx::Result<bool> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM api_keys WHERE role = 'admin'")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(n > 0)
    }

    /// Marks a key revoked and records its new state in the audit log, atomically.
    pub async fn revoke_key(&self, keys: &AuditKeys, id: &str, now_ms: i64, by: &KeyChange<'_>) -> sqlx::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("UPDATE api_keys SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        self.append_key_state(&mut tx, keys, id, by).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Inserts `new` and makes `old_id` expire at `old_expires_ms`, and records both
    /// keys' states in the audit log, atomically.
    pub async fn rotate_key(
        &self,
        keys: &AuditKeys,
        old_id: &str,
        new: &KeyRow,
        old_expires_ms: i64,
        by: &KeyChange<'_>,
    ) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        insert_key(&mut *tx, new).await?;
        sqlx::query("UPDATE api_keys SET expires_ms = $1, rotated_to = $2 WHERE id = $3")
            .bind(old_expires_ms)
            .bind(&new.id)
            .bind(old_id)
            .execute(&mut *tx)
            .await?;
        self.append_key_state(&mut tx, keys, &new.id, by).await?;
        self.append_key_state(&mut tx, keys, old_id, by).await?;
        tx.commit().await
    }

    /// Replaces a key's quotas and records its new state in the audit log, atomically;
    /// `false` when there is no such key.
    pub async fn set_key_quota(
        &self,
        keys: &AuditKeys,
        id: &str,
        quota: KeyQuota,
        by: &KeyChange<'_>,
    ) -> sqlx::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE api_keys SET quota_records = $1, quota_bytes = $2, quota_requests_per_day = $3 WHERE id = $4",
        )
        .bind(quota.records)
        .bind(quota.bytes)
        .bind(quota.requests_per_day)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        self.append_key_state(&mut tx, keys, id, by).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Requests of key `key_id` stored for UTC day `day` (days since the epoch).
    pub async fn requests_on(&self, key_id: &str, day: i64) -> sqlx::Result<i64> {
        let r = sqlx::query("SELECT requests FROM key_usage_daily WHERE key_id = $1 AND day = $2")
            .bind(key_id)
            .bind(day)
            .fetch_optional(&self.pool)
            .await?;
        r.map_or(Ok(0), |r| r.try_get("requests"))
    }

    /// Adds counters (one row per key, created on first use) and requests per key and
    /// UTC day (`daily`: key, day, requests), in one transaction.
    pub async fn add_usage(&self, rows: &[UsageRow], daily: &[(String, i64, i64)], now_ms: i64) -> sqlx::Result<()> {
        if rows.is_empty() && daily.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (key_id, day, requests) in daily {
            sqlx::query(
                "INSERT INTO key_usage_daily (key_id, day, requests) VALUES ($1, $2, $3) \
                 ON CONFLICT (key_id, day) DO UPDATE SET requests = key_usage_daily.requests + excluded.requests",
            )
            .bind(key_id)
            .bind(day)
            .bind(requests)
            .execute(&mut *tx)
            .await?;
        }
        for u in rows {
            sqlx::query(
                "INSERT INTO key_usage (key_id, requests, records_written, texts_embedded, bytes_stored, llm_tokens, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (key_id) DO UPDATE SET \
                 requests = key_usage.requests + excluded.requests, \
                 records_written = key_usage.records_written + excluded.records_written, \
                 texts_embedded = key_usage.texts_embedded + excluded.texts_embedded, \
                 bytes_stored = key_usage.bytes_stored + excluded.bytes_stored, \
                 llm_tokens = key_usage.llm_tokens + excluded.llm_tokens, \
                 updated_ms = excluded.updated_ms",
            )
            .bind(&u.key_id)
            .bind(u.requests)
            .bind(u.records_written)
            .bind(u.texts_embedded)
            .bind(u.bytes_stored)
            .bind(u.llm_tokens)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Stored usage of every key.
    pub async fn usage(&self) -> sqlx::Result<Vec<UsageRow>> {
        let rows = sqlx::query(
            "SELECT key_id, requests, records_written, texts_embedded, bytes_stored, llm_tokens FROM key_usage \
             ORDER BY key_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageRow {
                    key_id: r.try_get("key_id")?,
                    requests: r.try_get("requests")?,
                    records_written: r.try_get("records_written")?,
                    texts_embedded: r.try_get("texts_embedded")?,
                    bytes_stored: r.try_get("bytes_stored")?,
                    llm_tokens: r.try_get("llm_tokens")?,
                })
            })
            .collect()
    }

    /// Appends an entry to the keyed audit log: the next sequence number, the previous
    /// entry's hash, this entry's HMAC, and the head row, in one transaction.
    pub async fn audit_append(&self, keys: &AuditKeys, e: AuditEntry) -> sqlx::Result<AuditEntry> {
        let mut tx = self.pool.begin().await?;
        let e = self.append_tx(&mut tx, keys, e).await?;
        tx.commit().await?;
        Ok(e)
    }

    /// Appends `e` (version 2, keyed) inside `tx`.
    async fn append_tx(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        keys: &AuditKeys,
        mut e: AuditEntry,
    ) -> sqlx::Result<AuditEntry> {
        if self.backend == Backend::Sqlite {
            // Take the write lock now so two appenders cannot read the same head.
            sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1").execute(&mut **tx).await?;
        }
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let head = sqlx::query(&format!("SELECT seq, hash FROM audit_head WHERE id = 1{lock}"))
            .fetch_optional(&mut **tx)
            .await?;
        let (prev_seq, prev_hash) = match head {
            Some(r) => (r.try_get::<i64, _>("seq")?, r.try_get::<String, _>("hash")?),
            None => (0, GENESIS.to_string()),
        };
        e.seq = prev_seq + 1;
        e.prev_hash = prev_hash;
        e.version = crate::audit::VERSION_KEYED;
        e.hash = keys.hash(&e);
        let q = format!("INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)");
        sqlx::query(&q)
            .bind(e.seq)
            .bind(e.ts_ms)
            .bind(&e.request_id)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.target)
            .bind(&e.outcome)
            .bind(&e.detail)
            .bind(e.version)
            .bind(&e.prev_hash)
            .bind(&e.hash)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )
        .bind(e.seq)
        .bind(&e.hash)
        .execute(&mut **tx)
        .await?;
        Ok(e)
    }

    /// Makes the chain keyed if it is not yet: appends the `audit.keyed` marker (saying
    /// from which entry on the chain is keyed) and a `keys.state` entry for every key
    /// already stored, in one transaction. Does nothing when a keyed entry exists.
    /// Refuses when the log is keyed but `keys` were just created (the audit key was
    /// lost: appending under a new key would make the chain unverifiable).
    pub async fn ensure_keyed(&self, keys: &AuditKeys) -> anyhow::Result<()> {
        let keyed: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit WHERE version >= 2")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        if keyed > 0 {
            anyhow::ensure!(
                !keys.created,
                "the audit log holds {keyed} keyed entries but {} was just created: restore the data \
                 directory's audit-key (and audit-checkpoint.pk8) from the server that wrote them",
                crate::audit::KEY_FILE
            );
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let first = self.audit_head().await?.map_or(1, |(s, _)| s + 1);
        let marker = AuditEntry {
            ts_ms: crate::state::now_ms(),
            request_id: "startup".into(),
            actor: "system".into(),
            action: crate::audit::ACTION_KEYED.into(),
            target: "audit".into(),
            outcome: "ok".into(),
            detail: if first == 1 {
                "chain=hmac-sha256 version=2 from entry 1".to_owned()
            } else {
                format!(
                    "chain=hmac-sha256 version=2 from entry {first}; entries 1..{} are unkeyed sha-256 (version 1)",
                    first - 1
                )
            },
            ..Default::default()
        };
        self.append_tx(&mut tx, keys, marker).await?;
        let q = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_ms, id");
        let ids: Vec<String> =
            sqlx::query(&q).fetch_all(&mut *tx).await?.iter().map(|r| r.try_get("id")).collect::<sqlx::Result<_>>()?;
        let by = KeyChange { request_id: "startup", actor: "system" };
        for id in ids {
            self.append_key_state(&mut tx, keys, &id, &by).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Audit entries after `after_seq`, oldest first, optionally of one actor or action.
    pub async fn audit_page(
        &self,
        after_seq: i64,
        limit: i64,
        actor: Option<&str>,
        action: Option<&str>,
    ) -> sqlx::Result<Vec<AuditEntry>> {
        let q = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > $1 AND ($2 = '' OR actor = $2) AND ($3 = '' OR action = $3) \
             ORDER BY seq LIMIT $4"
        );
        sqlx::query(&q)
            .bind(after_seq)
            .bind(actor.unwrap_or(""))
            .bind(action.unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(audit_row)
            .collect()
    }

    /// The audit head: `(seq, hash)` of the last entry, if any.
    pub async fn audit_head(&self) -> sqlx::Result<Option<(i64, String)>> {
        let r = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_optional(&self.pool).await?;
        r.map(|r| Ok((r.try_get("seq")?, r.try_get("hash")?))).transpose()
    }

    /// Checks the whole audit log of the data directory `data_dir` (whose `audit-key`,
    /// checkpoint key and checkpoints it reads; none of them is created): the chain,
    /// the head, the signed checkpoints, and every API key row against the state the
    /// chain last recorded for it. The log and the keys are read in one transaction, the
    /// checkpoints before them, so a live server cannot make it report a false problem.
    pub async fn verify_audit(&self, data_dir: &std::path::Path) -> anyhow::Result<crate::audit::AuditVerdict> {
        let keys = AuditKeys::open(data_dir)?;
        let checkpoints = keys.as_ref().map(AuditKeys::read_checkpoints);
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
        }
        let mut all = Vec::new();
        let mut after = 0i64;
        loop {
            let q = format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT 10000");
            let page: Vec<AuditEntry> = sqlx::query(&q)
                .bind(after)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(audit_row)
                .collect::<sqlx::Result<_>>()?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            all.extend(page);
        }
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_optional(&mut *tx).await?;
        let head: Option<(i64, String)> = match head {
            Some(r) => Some((r.try_get("seq")?, r.try_get("hash")?)),
            None => None,
        };
        let q = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_ms, id");
        let rows: Vec<KeyRow> =
            sqlx::query(&q).fetch_all(&mut *tx).await?.iter().map(key_row).collect::<sqlx::Result<_>>()?;
        tx.commit().await?;
        let input = crate::audit::VerifyInput { head, keys: keys.as_ref(), key_rows: Some(&rows), checkpoints };
        Ok(crate::audit::verify(all, &input))
    }

    /// Every kernel built from collection `name`, whatever its incarnation.
    pub async fn kernels_of(&self, name: &str) -> sqlx::Result<Vec<KernelRow>> {
        sqlx::query("SELECT * FROM kernels WHERE collection = $1")
            .bind(name)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(kernel_row)
            .collect()
    }

    /// Records the incarnation of a kernel's source collection.
    pub async fn set_kernel_incarnation(&self, id: &str, incarnation: &str) -> sqlx::Result<()> {
        sqlx::query("UPDATE kernels SET incarnation = $1 WHERE id = $2")
            .bind(incarnation)
            .bind(id)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Records a new backup job.
    pub async fn insert_backup(&self, b: &BackupRow) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO backups (id, state, format, path, requested_by, created_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&b.id)
        .bind(&b.state)
        .bind(&b.format)
        .bind(&b.path)
        .bind(&b.requested_by)
        .bind(b.created_ms)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Records how a backup job ended.
    pub async fn finish_backup(&self, b: &BackupRow) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE backups SET state = $1, finished_ms = $2, bytes = $3, collections = $4, error = $5 WHERE id = $6",
        )
        .bind(&b.state)
        .bind(b.finished_ms)
        .bind(b.bytes)
        .bind(b.collections)
        .bind(&b.error)
        .bind(&b.id)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// One backup job.
    pub async fn backup(&self, id: &str) -> sqlx::Result<Option<BackupRow>> {
        sqlx::query("SELECT * FROM backups WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| backup_row(&r))
            .transpose()
    }

    /// Every backup job, newest first.
    pub async fn backups(&self) -> sqlx::Result<Vec<BackupRow>> {
        sqlx::query("SELECT * FROM backups ORDER BY created_ms DESC, id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(backup_row)
            .collect()
    }

    /// Jobs (backups, kernel builds, program compilations) left `running` by a server that stopped: marked
    /// failed at startup.
    pub async fn fail_interrupted_jobs(&self, now_ms: i64) -> sqlx::Result<u64> {
        let mut n = 0;
        for table in ["backups", "kernels", "program_jobs"] {
            let q = format!(
                "UPDATE {table} SET state = 'failed', finished_ms = $1, error = 'interrupted: the server stopped' \
                 WHERE state = 'running'"
            );
            n += sqlx::query(&q).bind(now_ms).execute(&self.pool).await?.rows_affected();
        }
        Ok(n)
    }

    /// Records a new kernel build.
    pub async fn insert_kernel(&self, k: &KernelRow) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO kernels (id, collection, state, settings, requested_by, created_ms, incarnation) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&k.id)
        .bind(&k.collection)
        .bind(&k.state)
        .bind(&k.settings)
        .bind(&k.requested_by)
        .bind(k.created_ms)
        .bind(&k.incarnation)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Records how a kernel build ended.
    pub async fn finish_kernel(&self, k: &KernelRow) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE kernels SET state = $1, finished_ms = $2, bytes = $3, rows_out = $4, ids = $5, error = $6 \
             WHERE id = $7",
        )
        .bind(&k.state)
        .bind(k.finished_ms)
        .bind(k.bytes)
        .bind(k.rows_out)
        .bind(k.ids)
        .bind(&k.error)
        .bind(&k.id)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// One kernel.
    pub async fn kernel(&self, id: &str) -> sqlx::Result<Option<KernelRow>> {
        sqlx::query("SELECT * FROM kernels WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| kernel_row(&r))
            .transpose()
    }

    /// Every kernel, newest first.
    pub async fn kernels(&self) -> sqlx::Result<Vec<KernelRow>> {
        sqlx::query("SELECT * FROM kernels ORDER BY created_ms DESC, id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(kernel_row)
            .collect()
    }

    /// Forgets a kernel.
    pub async fn delete_kernel(&self, id: &str) -> sqlx::Result<bool> {
        let r = sqlx::query("DELETE FROM kernels WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(r.rows_affected() > 0)
    }
}

async fn insert_key<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(ex: E, k: &KeyRow) -> sqlx::Result<()> {
    let q = format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)");
    sqlx::query(&q)
        .bind(&k.id)
        .bind(&k.name)
        .bind(&k.hash)
        .bind(&k.role)
        .bind(&k.collections)
        .bind(k.created_ms)
        .bind(k.expires_ms)
        .bind(k.revoked_ms)
        .bind(&k.rotated_to)
        .bind(k.quota.records)
        .bind(k.quota.bytes)
        .bind(k.quota.requests_per_day)
        .execute(ex)
        .await
        .map(|_| ())
}

/// A database URL with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
