//! `cluster.toml`: where the log, the metadata store and the object store are, who this
//! node is, and the timings. Unknown fields are errors; every error names the field.

use kernelize_blobs::BlobConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A node's cluster configuration (`kernelize serve --cluster cluster.toml`).
///
/// ```toml
/// node_id = "node-1"
/// nats_url = "nats://127.0.0.1:4222"
/// database_url = "postgres://127.0.0.1:5432/kernelize"
/// redis_url = "redis://127.0.0.1:6379"   # optional: rate limits shared by every node
/// cache_dir = "/var/cache/kernelize"     # local copies of shards (a cache: losable)
///
/// [blobs]                                # sealed segments and their indexes
/// kind = "s3"
/// bucket = "kernelize"
/// endpoint = "http://127.0.0.1:9000"
/// allow_http = true
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name (1-32 of `[a-z0-9_]`, `main`): its PostgreSQL schema is
    /// `kzc_<name>`, its stream `KZ_<name>` and its subjects `kz.<name>.…`, so several
    /// clusters can share one PostgreSQL and one NATS.
    #[serde(default = "default_name")]
    pub name: String,
    /// This node's name: unique in the cluster, stable across restarts (1-64 of
    /// `[A-Za-z0-9_-]`). Default: `$KERNELIZE_NODE_ID`, else the host name.
    #[serde(default)]
    pub node_id: Option<String>,
    /// NATS server(s) with JetStream, comma-separated.
    pub nats_url: String,
    /// PostgreSQL: leases, epochs, shard commits, membership, collections.
    pub database_url: String,
    /// Redis for cluster-wide per-key rate limits (absent: each node limits alone).
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Local cache of shard replicas (a plain data directory; rebuilt from the object
    /// store and the log when lost).
    pub cache_dir: PathBuf,
    /// Where sealed segments go (`kind = "s3"` for a real cluster; `"local"` for one machine).
    /// The cluster's own bucket or prefix: `kernelize cluster gc` deletes what no shard
    /// names there.
    pub blobs: BlobConfig,
    /// Object store limits, part size, timeouts and retries (`[blob_options]`).
    #[serde(default)]
    pub blob_options: kernelize_blobs::BlobOptions,
    /// The write log.
    #[serde(default)]
    pub stream: StreamConfig,
    /// Virtual shards of a new collection (fixed at creation), 1..=1024 (8).
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// Nodes that keep a replica of each shard to answer queries, the owner included, 1..=16 (2).
    #[serde(default = "default_replicas")]
    pub query_replicas: usize,
    /// Timings.
    #[serde(default)]
    pub timing: Timing,
    /// Change data capture: how long committed changes stay readable.
    #[serde(default)]
    pub changes: ChangesConfig,
}

/// Change data capture (`[changes]`): a second JetStream stream mirrors the write log and
/// keeps every acknowledged change for `retention_secs` (the log itself is trimmed as
/// shards seal), so clients can read the changes of a collection from a position on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChangesConfig {
    /// How long a change stays readable, seconds, 0..=31_536_000 (86 400; 0 turns change
    /// data capture off: no mirror stream).
    pub retention_secs: u64,
    /// Most bytes the mirror keeps, MiB (0: no limit but the retention); the oldest
    /// changes go first.
    pub max_mb: u64,
}

impl Default for ChangesConfig {
    fn default() -> Self {
        ChangesConfig { retention_secs: 86_400, max_mb: 0 }
    }
}

/// The JetStream stream that carries every write.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Stream name (`KZ_<cluster name>` when empty).
    pub name: String,
    /// Replicas of the stream in a NATS cluster, 1..=5 (1).
    pub replicas: usize,
    /// Window in which a repeated `Nats-Msg-Id` (a retried write) is dropped, seconds (120).
    pub duplicate_window_secs: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig { name: String::new(), replicas: 1, duplicate_window_secs: 120 }
    }
}

/// Intervals and timeouts, in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// Membership heartbeat and assignment round (1000); a node silent for 3 is gone.
    pub heartbeat_ms: u64,
    /// Shard lease length (5000): how long a dead owner's shards wait for a new one.
    pub lease_ms: u64,
    /// Seal a shard once this many writes arrived since its last commit (20000) ...
    pub seal_records: u64,
    /// ... or this long after the first unsealed write (5000).
    pub seal_ms: u64,
    /// One shard request (search, get, stats), consistency wait included (5000).
    pub request_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { heartbeat_ms: 1000, lease_ms: 5000, seal_records: 20_000, seal_ms: 5000, request_ms: 5000 }
    }
}

fn default_name() -> String {
    "main".into()
}

fn default_shards() -> u32 {
    8
}

fn default_replicas() -> usize {
    2
}

impl Timing {
    /// Heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    /// Lease length.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    /// Shard request timeout.
    pub fn request(&self) -> Duration {
        Duration::from_millis(self.request_ms)
    }
}

/// A configuration problem, naming the file and field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// The field (`timing.lease_ms`), or `-` for the file as a whole.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl ClusterConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let file = path.display().to_string();
        let text = fs_err::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            field: "-".into(),
            reason: e.to_string(),
        })?;
        ClusterConfig::parse(&text, &file)
    }

    /// Parses and validates TOML text (`file` names it in errors).
    pub fn parse(text: &str, file: &str) -> Result<ClusterConfig, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
            file: file.into(),
            field: "-".into(),
            reason: e.to_string(),
        })?;
        let mut cfg: ClusterConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            ConfigError { file: file.into(), field, reason: e.into_inner().message().to_owned() }
        })?;
        if cfg.node_id.is_none() {
            cfg.node_id = std::env::var("KERNELIZE_NODE_ID").ok().or_else(hostname);
        }
        cfg.validate().map_err(|(field, reason)| ConfigError { file: file.into(), field: field.into(), reason })?;
        Ok(cfg)
    }

    /// The stream's name.
    pub fn stream_name(&self) -> String {
        if self.stream.name.is_empty() { format!("KZ_{}", self.name) } else { self.stream.name.clone() }
    }

    /// The change stream's name (the log's mirror): `<stream>_CHANGES`.
    pub fn changes_stream_name(&self) -> String {
        format!("{}_CHANGES", self.stream_name())
    }

    /// This node's id (set by [`ClusterConfig::parse`]).
    pub fn node(&self) -> &str {
        self.node_id.as_deref().unwrap_or("node")
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let id = self.node();
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(("node_id", format!("{id:?}: use 1-64 letters, digits, '_' or '-'")));
        }
        if !self.nats_url.split(',').all(|u| u.trim().starts_with("nats://") || u.trim().starts_with("tls://")) {
            return Err(("nats_url", format!("{:?}: expected nats://host:port (comma-separated)", self.nats_url)));
        }
        if !(self.database_url.starts_with("postgres://") || self.database_url.starts_with("postgresql://")) {
            return Err(("database_url", "the cluster's metadata store is PostgreSQL: postgres://...".into()));
        }
        if let Some(r) = &self.redis_url
            && !(r.starts_with("redis://") || r.starts_with("rediss://"))
        {
            return Err(("redis_url", format!("{r:?}: expected redis://host:port")));
        }
        if !(1..=1024).contains(&self.shards) {
            return Err(("shards", format!("{} is not in 1..=1024", self.shards)));
        }
        if !(1..=16).contains(&self.query_replicas) {
            return Err(("query_replicas", format!("{} is not in 1..=16", self.query_replicas)));
        }
        let cluster = &self.name;
        if cluster.is_empty()
            || cluster.len() > 32
            || !cluster.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(("name", format!("{cluster:?}: use 1-32 of a-z, 0-9 and '_'")));
        }
        let name = &self.stream.name;
        if name.len() > 32 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(("stream.name", format!("{name:?}: use 1-32 letters, digits, '_' or '-'")));
        }
        if !(1..=5).contains(&self.stream.replicas) {
            return Err(("stream.replicas", format!("{} is not in 1..=5", self.stream.replicas)));
        }
        if !(1..=86_400).contains(&self.stream.duplicate_window_secs) {
            return Err(("stream.duplicate_window_secs", "must be 1..=86400".into()));
        }
        if let Err(e) = self.blob_options.validate() {
            return Err(("blob_options", e));
        }
        if self.changes.retention_secs > 31_536_000 {
            return Err(("changes.retention_secs", format!("{} is not in 0..=31536000", self.changes.retention_secs)));
        }
        if self.changes.max_mb > 1 << 30 {
            return Err(("changes.max_mb", format!("{} is too large", self.changes.max_mb)));
        }
        let t = &self.timing;
        for (field, v, lo, hi) in [
            ("timing.heartbeat_ms", t.heartbeat_ms, 50, 60_000),
            ("timing.lease_ms", t.lease_ms, 200, 600_000),
            ("timing.seal_records", t.seal_records, 1, 100_000_000),
            ("timing.seal_ms", t.seal_ms, 50, 3_600_000),
            ("timing.request_ms", t.request_ms, 50, 600_000),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err((field, format!("{v} is not in {lo}..={hi}")));
            }
        }
        if t.lease_ms < 2 * t.heartbeat_ms {
            return Err(("timing.lease_ms", format!("{} must be at least twice timing.heartbeat_ms", t.lease_ms)));
        }
        Ok(())
    }
}

fn hostname() -> Option<String> {
    let h = fs_err::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h: String = h.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    (!h.is_empty()).then(|| h.chars().take(64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
node_id = "n1"
nats_url = "nats://127.0.0.1:4222"
database_url = "postgres://127.0.0.1/test"
cache_dir = "/tmp/c"
[blobs]
kind = "local"
dir = "/tmp/b"
"#;

    #[test]
    fn defaults_and_errors_name_the_field() {
        let c = ClusterConfig::parse(BASE, "c.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.shards, c.query_replicas, c.timing.lease_ms), (8, 2, 5000));
        let e = ClusterConfig::parse(&format!("{BASE}[timing]\nlease_ms = 10\n"), "c.toml").err().map(|e| e.field);
        assert_eq!(e.as_deref(), Some("timing.lease_ms"));
        let e = ClusterConfig::parse(&format!("{BASE}[timing]\nleas_ms = 10\n"), "c.toml").err();
        let e = e.map(|e| (e.field, e.reason)).unwrap_or_default();
        assert!(e.0.starts_with("timing") && e.1.contains("leas_ms"), "{e:?}");
        let e = ClusterConfig::parse(&BASE.replace("postgres://", "mysql://"), "c.toml").err().map(|e| e.field);
        assert_eq!(e.as_deref(), Some("database_url"));
        let e = ClusterConfig::parse(&BASE.replace("\"n1\"", "\"a b\""), "c.toml").err().map(|e| e.field);
        assert_eq!(e.as_deref(), Some("node_id"));
    }
}
