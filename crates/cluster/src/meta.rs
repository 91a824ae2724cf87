//! The cluster's metadata in PostgreSQL: members (heartbeats), collections, and one row
//! per shard holding its lease (owner, epoch, expiry) and its committed state (checkpoint
//! and sealed segments). Time is PostgreSQL's `now()`, so nodes' clocks never disagree
//! about a lease.
//!
//! The commit of a shard is one `UPDATE … WHERE owner = me AND epoch = my epoch`: the only
//! commit point, and the fence — a node whose lease was taken (the epoch rose) updates no
//! row and learns it is stale.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use std::time::Duration;

/// The schema, created idempotently under an advisory lock (every node runs it at start).
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS kzc_members (
        node_id TEXT PRIMARY KEY,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        seen_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    // The process holding the id (a random id per start): two live processes with one
    // node id would take each other's leases.
    "ALTER TABLE kzc_members ADD COLUMN IF NOT EXISTS instance TEXT NOT NULL DEFAULT ''",
    "CREATE TABLE IF NOT EXISTS kzc_collections (
        name TEXT PRIMARY KEY,
        cid TEXT NOT NULL UNIQUE,
        config TEXT NOT NULL,
        shards INTEGER NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS kzc_shards (
        cid TEXT NOT NULL,
        shard INTEGER NOT NULL,
        owner TEXT,
        epoch BIGINT NOT NULL DEFAULT 0,
        lease_until TIMESTAMPTZ NOT NULL DEFAULT now(),
        checkpoint BIGINT NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT '{\"segments\":[]}',
        commits BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (cid, shard))",
];

/// A lock id for schema creation (`pg_advisory_xact_lock`).
const SCHEMA_LOCK: i64 = 0x6b7a_636c_7573_7472;

/// A collection as the cluster knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionRow {
    /// Its name.
    pub name: String,
    /// Its incarnation id (hex): names its log subjects, replicas and segments, so a
    /// collection dropped and made again never meets the old one's data.
    pub cid: String,
    /// Its configuration.
    pub config: kernelize_store::CollectionConfig,
    /// Virtual shards.
    pub shards: u32,
}

/// One sealed segment of a shard's committed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedSegment {
    /// SHA-256 (hex) of the segment file in the object store.
    pub seg: String,
    /// SHA-256 (hex) of its search index file, when it has one.
    #[serde(default)]
    pub idx: Option<String>,
    /// Rows, tombstones included.
    pub rows: u64,
    /// File size.
    pub bytes: u64,
}

/// A shard's committed state: its segments, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardState {
    /// Sealed segments, oldest first.
    pub segments: Vec<SealedSegment>,
}

/// A shard row.
#[derive(Debug, Clone)]
pub struct ShardRow {
    /// Shard number.
    pub shard: u32,
    /// Lease holder, if any.
    pub owner: Option<String>,
    /// Fencing epoch (rises with every new lease).
    pub epoch: i64,
    /// Whether the lease is still running.
    pub lease_live: bool,
    /// Every log message of this shard with a sequence number <= this is in `state`.
    pub checkpoint: u64,
    /// The sealed segments.
    pub state: ShardState,
    /// Commits so far.
    pub commits: i64,
}

/// A lease as its holder names it.
#[derive(Debug, Clone, Copy)]
pub struct Held<'a> {
    /// Collection incarnation.
    pub cid: &'a str,
    /// Shard.
    pub shard: u32,
    /// The holder.
    pub node: &'a str,
    /// The epoch it holds.
    pub epoch: i64,
}

/// The metadata store.
#[derive(Debug, Clone)]
pub struct Meta {
    pool: PgPool,
}

fn shard_row(r: &sqlx::postgres::PgRow) -> Result<ShardRow> {
    let state: String = r.try_get("state")?;
    let state = serde_json::from_str(&state).map_err(|e| Error::Internal(format!("shard state: {e}")))?;
    Ok(ShardRow {
        shard: r.try_get::<i32, _>("shard")? as u32,
        owner: r.try_get("owner")?,
        epoch: r.try_get("epoch")?,
        lease_live: r.try_get("lease_live")?,
        checkpoint: r.try_get::<i64, _>("checkpoint")? as u64,
        state,
        commits: r.try_get("commits")?,
    })
}

const SHARD_COLUMNS: &str = "shard, owner, epoch, lease_until > now() AS lease_live, checkpoint, state, commits";

impl Meta {
    /// Connects and makes the schema `kzc_<cluster>` and its tables.
    pub async fn connect(url: &str, cluster: &str) -> Result<Meta> {
        // The cluster name is validated (a-z, 0-9, _), so it is safe in an identifier.
        let schema = format!("kzc_{cluster}");
        let path = format!("SET search_path TO {schema}");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                let path = path.clone();
                Box::pin(async move {
                    sqlx::query(&path).execute(&mut *conn).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| Error::unavailable("postgresql", format!("{e} (database_url {})", redact(url))))?;
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SCHEMA_LOCK).execute(&mut *tx).await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).execute(&mut *tx).await?;
        for ddl in SCHEMA {
            sqlx::query(ddl).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Meta { pool })
    }

    /// Drops the cluster's schema and everything in it (a cluster taken down for good).
    pub async fn drop_schema(&self, cluster: &str) -> Result<()> {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS kzc_{cluster} CASCADE")).execute(&self.pool).await?;
        Ok(())
    }

    /// Marks `node` alive now.
    pub async fn heartbeat(&self, node: &str, instance: &str, window: Duration) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO kzc_members (node_id, instance) VALUES ($1, $2)
             ON CONFLICT (node_id) DO UPDATE SET seen_at = now(), instance = $2,
                 started_at = CASE WHEN kzc_members.instance = $2 THEN kzc_members.started_at ELSE now() END
             WHERE kzc_members.instance = $2 OR kzc_members.seen_at <= now() - make_interval(secs => $3)",
        )
        .bind(node)
        .bind(instance)
        .bind(window.as_secs_f64())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::AlreadyExists(format!(
                "node id {node:?} is held by another live process; give every node its own node_id"
            )));
        }
        Ok(())
    }

    /// Nodes seen within `window`, by id.
    pub async fn live_members(&self, window: Duration) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT node_id FROM kzc_members WHERE seen_at > now() - make_interval(secs => $1) ORDER BY node_id",
        )
        .bind(window.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| r.try_get("node_id").map_err(Error::from)).collect()
    }

    /// Removes `node` from the members (a clean shutdown).
    pub async fn leave(&self, node: &str) -> Result<()> {
        sqlx::query("DELETE FROM kzc_members WHERE node_id = $1").bind(node).execute(&self.pool).await?;
        Ok(())
    }

    /// Every collection.
    pub async fn collections(&self) -> Result<Vec<CollectionRow>> {
        let rows = sqlx::query("SELECT name, cid, config, shards FROM kzc_collections ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let config: String = r.try_get("config")?;
                Ok(CollectionRow {
                    name: r.try_get("name")?,
                    cid: r.try_get("cid")?,
                    config: serde_json::from_str(&config)
                        .map_err(|e| Error::Internal(format!("collection config: {e}")))?,
                    shards: r.try_get::<i32, _>("shards")? as u32,
                })
            })
            .collect()
    }

    /// Creates a collection and its shard rows in one transaction.
    pub async fn create_collection(&self, c: &CollectionRow) -> Result<()> {
        let config = serde_json::to_string(&c.config).map_err(|e| Error::Internal(e.to_string()))?;
        let mut tx: Transaction<'_, Postgres> = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO kzc_collections (name, cid, config, shards) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&c.name)
        .bind(&c.cid)
        .bind(config)
        .bind(c.shards as i32)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(Error::AlreadyExists(format!("collection {:?}", c.name)));
        }
        sqlx::query("INSERT INTO kzc_shards (cid, shard) SELECT $1, generate_series(0, $2 - 1)")
            .bind(&c.cid)
            .bind(c.shards as i32)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops a collection (and its shard rows); returns what it was.
    pub async fn drop_collection(&self, name: &str) -> Result<CollectionRow> {
        let all = self.collections().await?;
        let Some(c) = all.into_iter().find(|c| c.name == name) else {
            return Err(Error::NotFound(format!("collection {name:?}")));
        };
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM kzc_collections WHERE name = $1 AND cid = $2")
            .bind(name)
            .bind(&c.cid)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() == 0 {
            return Err(Error::NotFound(format!("collection {name:?}")));
        }
        sqlx::query("DELETE FROM kzc_shards WHERE cid = $1").bind(&c.cid).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(c)
    }

    /// The shards of collection `cid`.
    pub async fn shards(&self, cid: &str) -> Result<Vec<ShardRow>> {
        let rows = sqlx::query(&format!("SELECT {SHARD_COLUMNS} FROM kzc_shards WHERE cid = $1 ORDER BY shard"))
            .bind(cid)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(shard_row).collect()
    }

    /// Every file (digest, hex) a committed shard state names, of every collection.
    pub async fn referenced(&self) -> Result<std::collections::HashSet<String>> {
        let rows = sqlx::query("SELECT state FROM kzc_shards").fetch_all(&self.pool).await?;
        let mut out = std::collections::HashSet::new();
        for r in rows {
            let state: String = r.try_get("state")?;
            let state: ShardState =
                serde_json::from_str(&state).map_err(|e| Error::Internal(format!("shard state: {e}")))?;
            for s in state.segments {
                out.extend(s.idx);
                out.insert(s.seg);
            }
        }
        Ok(out)
    }

    /// One shard.
    pub async fn shard(&self, cid: &str, shard: u32) -> Result<ShardRow> {
        let row = sqlx::query(&format!("SELECT {SHARD_COLUMNS} FROM kzc_shards WHERE cid = $1 AND shard = $2"))
            .bind(cid)
            .bind(shard as i32)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => shard_row(&r),
            None => Err(Error::NotFound(format!("shard {cid}/{shard}"))),
        }
    }

    /// Takes the lease of a shard nobody holds (or whose lease ran out) with a new epoch.
    pub async fn acquire(&self, cid: &str, shard: u32, node: &str, lease: Duration) -> Result<Option<ShardRow>> {
        let row = sqlx::query(&format!(
            "UPDATE kzc_shards SET owner = $3, epoch = epoch + 1,
                 lease_until = now() + make_interval(secs => $4)
             WHERE cid = $1 AND shard = $2 AND (owner IS NULL OR lease_until <= now())
             RETURNING {SHARD_COLUMNS}"
        ))
        .bind(cid)
        .bind(shard as i32)
        .bind(node)
        .bind(lease.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(shard_row).transpose()
    }

    /// Extends a lease still held at `epoch`; `false` once it was taken.
    pub async fn renew(&self, cid: &str, shard: u32, node: &str, epoch: i64, lease: Duration) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE kzc_shards SET lease_until = now() + make_interval(secs => $5)
             WHERE cid = $1 AND shard = $2 AND owner = $3 AND epoch = $4",
        )
        .bind(cid)
        .bind(shard as i32)
        .bind(node)
        .bind(epoch)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives a lease up at once (a clean shutdown or a hand-over).
    pub async fn release(&self, cid: &str, shard: u32, node: &str, epoch: i64) -> Result<()> {
        sqlx::query(
            "UPDATE kzc_shards SET owner = NULL, lease_until = now()
             WHERE cid = $1 AND shard = $2 AND owner = $3 AND epoch = $4",
        )
        .bind(cid)
        .bind(shard as i32)
        .bind(node)
        .bind(epoch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Commits a shard's new state, fenced by the epoch: the one commit point.
    pub async fn commit(&self, held: Held<'_>, checkpoint: u64, state: &ShardState, lease: Duration) -> Result<()> {
        let Held { cid, shard, node, epoch } = held;
        let body = serde_json::to_string(state).map_err(|e| Error::Internal(e.to_string()))?;
        let done = sqlx::query(
            "UPDATE kzc_shards SET checkpoint = $5, state = $6, commits = commits + 1,
                 lease_until = now() + make_interval(secs => $7)
             WHERE cid = $1 AND shard = $2 AND owner = $3 AND epoch = $4 AND checkpoint <= $5",
        )
        .bind(cid)
        .bind(shard as i32)
        .bind(node)
        .bind(epoch)
        .bind(checkpoint as i64)
        .bind(body)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 { Ok(()) } else { Err(Error::Fenced { shard: format!("{cid}/{shard}"), epoch }) }
    }
}

/// A database URL without its password.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
