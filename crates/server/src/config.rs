//! Server settings: built-in defaults, then a TOML file, then `KERNELIZE_*` variables and
//! command-line flags (the CLI applies the last two).

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything the server is configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (`127.0.0.1:7700` by default: not reachable from the network).
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the server speaks only TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Data directory (collections, the SQLite control database, keys, backups); made
    /// owner-only (0700) at start, and the files the server writes there are 0600.
    pub data_dir: PathBuf,
    /// Control-plane database; `None` is SQLite at `<data_dir>/control.db`, else a
    /// `postgres://` (or `sqlite:`) URL.
    pub database_url: Option<String>,
    /// The admin key to install at first start (instead of generating and printing one).
    pub admin_key: Option<String>,
    /// A file holding the admin key to install at first start.
    pub admin_key_file: Option<PathBuf>,
    /// Model directory for embeddings (default: the embedder's search path).
    pub model_dir: Option<PathBuf>,
    /// GGUF file of the local language model behind `/v1/programs` and
    /// `/v1/chat/completions` (default: SmolLM2-135M-Instruct in the models directory,
    /// installed by `kernelize models install`). Loaded on first use.
    pub llm_model: Option<PathBuf>,
    /// Where `POST /v1/backups` writes (default `<data_dir>/backups`).
    pub backup_dir: Option<PathBuf>,
    /// WAL durability: `always` (fsync before acknowledging) or `buffered`.
    pub durability: String,
    /// Memtable size in MiB before it is flushed to a segment (`--memtable-mb`).
    pub memtable_mb: usize,
    /// Searches taking at least this many milliseconds are logged with their explain
    /// (target `kernelize::slow_query`) and kept, the last 100, for `GET
    /// /v1/slow-queries`; 0 (the default) turns the slow-query log off.
    pub slow_query_ms: u64,
    /// Limits.
    pub limits: Limits,
    /// Origins allowed by CORS; empty (the default) allows none.
    pub cors_origins: Vec<String>,
    /// Log format: `json` (default) or `text`.
    pub log_format: String,
    /// Log level: a tracing `EnvFilter` directive (`info`, the default; `debug`,
    /// `info,kernelize_server=debug` …). `RUST_LOG`, when set, wins at start; a reload
    /// that changes `log_level` applies it (see `docs/configuration.md`).
    pub log_level: String,
    /// OTLP/HTTP endpoint for request spans, e.g. `http://127.0.0.1:4318/v1/traces`;
    /// none (the default) exports nothing.
    pub otlp_endpoint: Option<String>,
    /// File holding the master key of an encrypted data directory.
    pub master_key_file: Option<PathBuf>,
    /// Command that prints the master key (a KMS hook), run once at start.
    pub master_key_command: Option<String>,
    /// The master key itself (from `KERNELIZE_MASTER_KEY`; never read from or written to
    /// a config file).
    #[serde(skip)]
    pub master_key: Option<kernelize_store::MasterKey>,
    /// The fleet control plane.
    pub fleet: FleetSettings,
    /// Single sign-on with an OpenID provider (`[sso]`, `crate::oidc`); none: API keys only.
    pub sso: Option<crate::oidc::SsoSettings>,
    /// A cluster configuration file (`cluster.toml`, `kernelize_cluster::ClusterConfig`):
    /// collections then live in the cluster (NATS JetStream, PostgreSQL, S3) instead of
    /// the data directory; none (the default) is the single-node engine.
    pub cluster: Option<PathBuf>,
}

/// Settings of the fleet control plane (`[fleet]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetSettings {
    /// Heartbeat interval devices are told to keep (±20% jitter), ms; three missed is offline.
    pub heartbeat_ms: u64,
    /// Lifetime of a device token, seconds.
    pub device_token_ttl_secs: u64,
    /// Deployments need approval by a principal other than their creator.
    pub require_approval: bool,
    /// Where kernel files and deltas go: `{ kind = "local", dir = "..." }` (the default is
    /// `<data_dir>/blobs`) or `{ kind = "s3", bucket = "...", endpoint = "...", ... }`.
    pub blobs: Option<kernelize_blobs::BlobConfig>,
    /// Blob store limits, part size, timeouts and retries.
    pub blob_options: kernelize_blobs::BlobOptions,
    /// Chunk size of release manifests, bytes (a power of two, 4 KiB – 64 MiB).
    pub chunk_size: u64,
    /// zstd level of deltas (1–22; 19 is small and slow to make, 9 fast).
    pub delta_level: i32,
    /// Largest kernel a release may publish, MiB.
    pub max_kernel_mb: u64,
    /// Blob GC keeps unreferenced blobs younger than this, seconds (an upload racing with
    /// it survives); must exceed `blob_options.refresh_after_secs`.
    pub blob_gc_min_age_secs: u64,
    /// Webhooks every fleet event is POSTed to, signed (`[[fleet.webhooks]]`, `docs/webhooks.md`).
    pub webhooks: Vec<crate::fleet_notify::WebhookSettings>,
    /// MQTT broker (`mqtt://host:port`) for waking devices early; none: devices only poll.
    pub mqtt_url: Option<String>,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            heartbeat_ms: 60_000,
            device_token_ttl_secs: 3600,
            require_approval: true,
            blobs: None,
            blob_options: kernelize_blobs::BlobOptions::default(),
            chunk_size: 1 << 20,
            delta_level: 19,
            max_kernel_mb: 2048,
            blob_gc_min_age_secs: 7200,
            webhooks: Vec::new(),
            mqtt_url: None,
        }
    }
}

impl FleetSettings {
    /// The control plane's configuration.
    pub fn to_fleet_config(&self) -> kernelize_fleet::FleetConfig {
        kernelize_fleet::FleetConfig {
            heartbeat_ms: self.heartbeat_ms,
            device_token_ttl_ms: self.device_token_ttl_secs.saturating_mul(1000),
            require_approval: self.require_approval,
            ..kernelize_fleet::FleetConfig::default()
        }
    }
}

/// Request limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Sustained requests per second per key.
    pub rate_per_sec: u32,
    /// Burst size of the per-key token bucket.
    pub burst: u32,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most records (or ids, or texts) in one request.
    pub max_batch: usize,
    /// Largest `k` of a search.
    pub max_k: usize,
    /// Largest `ef` of a search.
    pub max_ef: usize,
    /// Requests that run longer are answered 503 `timeout` (the body read not counted);
    /// read-only work they started (embedding, search, kernel queries) is cancelled.
    pub timeout_ms: u64,
    /// Longest time to receive a request body; slower clients get 408 `body_timeout`
    /// and hold no request slot while they send.
    pub body_read_timeout_ms: u64,
    /// Longest time to receive a request's headers, and to wait for the next request on
    /// an idle kept-alive connection; then the connection is closed.
    pub header_read_timeout_ms: u64,
    /// Authenticated requests served at once (after authentication and the body read);
    /// more are shed with 503 `overloaded`. Public routes (`/healthz` …) are not counted.
    pub concurrency: usize,
    /// Largest share of `concurrency` one key may hold, in percent (at least one slot);
    /// beyond, its requests are shed with 503 `overloaded`.
    pub per_key_concurrency_percent: u8,
    /// Server-sent event streams open at once (fleet events, kernel build and backup
    /// progress); more are refused with 503 `overloaded`. They hold no request slot.
    pub max_event_streams: usize,
    /// Longest lifetime of a minted token, in seconds.
    pub max_token_ttl_secs: u64,
    /// How long a rotated key keeps working, in seconds (unless the request says).
    pub rotation_grace_secs: u64,
    /// Failed authentications per second allowed from one IP address (burst: 10×);
    /// beyond, failures are answered 429 without an audit entry each.
    pub auth_failures_per_sec: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate_per_sec: 1000,
            burst: 2000,
            max_body_bytes: 64 << 20,
            max_batch: 10_000,
            max_k: 1000,
            max_ef: 4096,
            timeout_ms: 60_000,
            body_read_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            concurrency: 256,
            per_key_concurrency_percent: 50,
            max_event_streams: 256,
            max_token_ttl_secs: 24 * 3600,
            rotation_grace_secs: 24 * 3600,
            auth_failures_per_sec: 10,
        }
    }
}

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            tls_cert: None,
            tls_key: None,
            data_dir: PathBuf::from("kernelize-data"),
            database_url: None,
            admin_key: None,
            admin_key_file: None,
            model_dir: None,
            llm_model: None,
            backup_dir: None,
            durability: "always".into(),
            memtable_mb: 64,
            slow_query_ms: 0,
            limits: Limits::default(),
            cors_origins: Vec::new(),
            log_format: "json".into(),
            log_level: "info".into(),
            otlp_endpoint: None,
            master_key_file: None,
            master_key_command: None,
            master_key: None,
            fleet: FleetSettings::default(),
            sso: None,
            cluster: None,
        }
    }
}

impl Config {
    /// Reads a TOML file over the defaults; unknown keys and bad values are errors that
    /// name the file, the line and the field (and never echo the line: it may hold a secret).
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = fs_err::read_to_string(path)?;
        toml::from_str(&text).map_err(|e| {
            let at = e.span().map(|s| line_col(&text, s.start));
            let field = at.and_then(|(line, _)| field_at(&text, line));
            let field = field.map_or_else(String::new, |f| format!(" (field {f})"));
            match at {
                Some((line, col)) => {
                    anyhow::anyhow!("config file {} line {line} column {col}{field}: {}", path.display(), e.message())
                }
                None => anyhow::anyhow!("config file {}: {}", path.display(), e.message()),
            }
        })
    }

    /// Reads `path` (or starts from the defaults), lets `overrides` apply what the
    /// environment and flags say, and validates the result; a bad value is reported
    /// with the file and line that set it, or as coming from a flag or variable.
    pub fn load(path: Option<&Path>, overrides: impl FnOnce(&mut Config) -> Result<()>) -> Result<Config> {
        let mut c = match path {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        overrides(&mut c)?;
        if let Err(e) = c.validate() {
            let Some(bad) = e.downcast_ref::<BadSetting>() else { return Err(e) };
            let line = path.and_then(|p| {
                let text = fs_err::read_to_string(p).ok()?;
                Some((p, line_of(&text, bad.field)?))
            });
            return Err(match line {
                Some((p, line)) => anyhow::anyhow!("config file {} line {line}: {bad}", p.display()),
                None => anyhow::anyhow!("{bad} (set by a default, a flag or a KERNELIZE_* variable)"),
            });
        }
        Ok(c)
    }

    /// The database URL in use.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("control.db").display()),
        }
    }

    /// The master key of an encrypted data directory, if one is configured.
    pub fn master_key(&self) -> Result<Option<kernelize_store::MasterKey>> {
        Ok(match (&self.master_key, &self.master_key_file, &self.master_key_command) {
            (Some(k), _, _) => Some(k.clone()),
            (None, Some(f), _) => Some(kernelize_store::MasterKey::from_file(f)?),
            (None, None, Some(c)) => Some(kernelize_store::MasterKey::from_command(c)?),
            (None, None, None) => None,
        })
    }

    /// Where backups go.
    pub fn backup_dir(&self) -> PathBuf {
        self.backup_dir.clone().unwrap_or_else(|| self.data_dir.join("backups"))
    }

    /// Checks settings that do not depend on the environment. A bad value is a
    /// [`BadSetting`] naming its field (other checks name theirs in the message).
    pub fn validate(&self) -> Result<()> {
        let l = &self.limits;
        check(l.rate_per_sec > 0, "limits.rate_per_sec", || "must be positive".into())?;
        check(l.burst > 0, "limits.burst", || "must be positive".into())?;
        check(l.auth_failures_per_sec > 0, "limits.auth_failures_per_sec", || "must be positive".into())?;
        check(l.max_batch > 0, "limits.max_batch", || "must be positive".into())?;
        check(l.max_k > 0, "limits.max_k", || "must be positive".into())?;
        check(l.max_ef > 0, "limits.max_ef", || "must be positive".into())?;
        check(l.max_body_bytes > 0, "limits.max_body_bytes", || "must be positive".into())?;
        check(l.concurrency > 0, "limits.concurrency", || "must be positive".into())?;
        check(l.concurrency <= MAX_PERMITS, "limits.concurrency", || format!("must be at most {MAX_PERMITS}"))?;
        check(l.max_event_streams <= MAX_PERMITS, "limits.max_event_streams", || {
            format!("must be at most {MAX_PERMITS}")
        })?;
        check(l.timeout_ms > 0, "limits.timeout_ms", || "must be positive".into())?;
        check(l.body_read_timeout_ms > 0, "limits.body_read_timeout_ms", || "must be positive".into())?;
        check(l.header_read_timeout_ms > 0, "limits.header_read_timeout_ms", || "must be positive".into())?;
        check((1..=100).contains(&l.per_key_concurrency_percent), "limits.per_key_concurrency_percent", || {
            format!("must be 1..=100, got {}", l.per_key_concurrency_percent)
        })?;
        check(self.memtable_mb > 0, "memtable_mb", || "must be positive".into())?;
        check(self.tls_cert.is_some() == self.tls_key.is_some(), "tls_key", || {
            "TLS needs both tls_cert and tls_key (got only one)".into()
        })?;
        check(matches!(self.log_format.as_str(), "json" | "text"), "log_format", || {
            format!("must be json or text, not {:?}", self.log_format)
        })?;
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log_level) {
            return Err(
                BadSetting { field: "log_level", message: format!("not a tracing filter directive: {e}") }.into()
            );
        }
        for o in &self.cors_origins {
            check(o.parse::<axum::http::HeaderValue>().is_ok() && o != "*", "cors_origins", || {
                format!("{o:?} is not an origin (scheme://host[:port])")
            })?;
        }
        if let Err(e) = self.durability.parse::<kernelize_store::Durability>() {
            return Err(BadSetting { field: "durability", message: e.to_string() }.into());
        }
        let f = &self.fleet;
        check((100..=86_400_000).contains(&f.heartbeat_ms), "fleet.heartbeat_ms", || {
            format!("must be in [100, 86400000], got {}", f.heartbeat_ms)
        })?;
        check((10..=7 * 86_400).contains(&f.device_token_ttl_secs), "fleet.device_token_ttl_secs", || {
            format!("must be in [10, 604800], got {}", f.device_token_ttl_secs)
        })?;
        check(f.chunk_size.is_power_of_two() && (4096..=64 << 20).contains(&f.chunk_size), "fleet.chunk_size", || {
            format!("must be a power of two in [4096, 67108864], got {}", f.chunk_size)
        })?;
        check((1..=22).contains(&f.delta_level), "fleet.delta_level", || "must be in [1, 22]".into())?;
        check((1..=1 << 20).contains(&f.max_kernel_mb), "fleet.max_kernel_mb", || "must be in [1, 1048576]".into())?;
        crate::fleet_notify::validate(&f.webhooks, f.mqtt_url.as_deref())?;
        if let Some(s) = &self.sso {
            s.validate(l.max_token_ttl_secs)?;
        }
        Ok(())
    }
}

/// Most permits a semaphore of `limits.concurrency` or `limits.max_event_streams` takes
/// (tokio's own bound is far higher; this one keeps a resize's arithmetic in `u32`).
pub const MAX_PERMITS: usize = 1 << 24;

/// A setting with a bad value: the field (`limits.burst`) and why.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BadSetting {
    /// Dotted path of the field.
    pub field: &'static str,
    /// What is wrong with its value.
    pub message: String,
}

fn check(ok: bool, field: &'static str, message: impl FnOnce() -> String) -> Result<()> {
    if ok { Ok(()) } else { Err(BadSetting { field, message: message() }.into()) }
}

/// 1-based line and column of byte `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at.min(text.len())).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The key a plain TOML line sets (`key = …`, `"key" = …`), if any.
fn key_of(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('#') && !key.contains(['[', ' '])).then_some(key)
}

/// Walks the lines of a TOML text with the table each one is in (`""` at the top).
fn lines_with_table(text: &str) -> impl Iterator<Item = (usize, String, &str)> {
    let mut table = String::new();
    text.lines().enumerate().map(move |(i, line)| {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.split(']').next()) {
            table = h.trim_start_matches('[').trim().to_owned();
        }
        (i + 1, table.clone(), t)
    })
}

/// The dotted field that line `want` (1-based) of a TOML text sets, when it is a plain
/// `key = value` line.
fn field_at(text: &str, want: usize) -> Option<String> {
    let (_, table, line) = lines_with_table(text).find(|(n, _, _)| *n == want)?;
    let key = key_of(line)?;
    Some(if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") })
}

/// The line of a TOML text that sets the dotted `field` (`limits.burst` under
/// `[limits]`, or as a dotted key at the top), if a plain line does.
fn line_of(text: &str, field: &str) -> Option<usize> {
    lines_with_table(text).find_map(|(n, table, line)| {
        let key = key_of(line)?;
        let full = if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") };
        (full == field).then_some(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_overrides_defaults_and_names_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("server.toml");
        fs_err::write(&p, "listen = \"0.0.0.0:9000\"\ncors_origins = [\"https://a.example\"]\n[limits]\nmax_k = 50\n")
            .unwrap();
        let c = Config::from_file(&p).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.limits.max_k, 50);
        assert_eq!(c.limits.max_ef, Limits::default().max_ef);
        assert_eq!(c.cors_origins, ["https://a.example"]);
        c.validate().unwrap();
        fs_err::write(&p, "listen = \"0.0.0.0:9000\"\n[limits]\nmax_kk = 50\n").unwrap();
        let e = format!("{:#}", Config::from_file(&p).unwrap_err());
        assert!(e.contains("server.toml") && e.contains("max_kk") && e.contains("line 3"), "{e}");
        let c = Config { tls_cert: Some("c.pem".into()), ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("both"));
    }
}
