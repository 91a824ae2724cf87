//! The server's shared state: the engine (database, index cache, embedder), the metadata
//! store, secrets, and the per-key caches, rate limiters and usage counters.

use crate::auth::{Principal, Role, Scope, Secrets, parse_key};
use crate::config::Config;
use crate::error::ApiError;
use crate::meta::{KeyRow, MetaStore, UsageRow};
use crate::metrics::Metrics;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kernelize_embed::Embedder;
use kernelize_index::search::IndexCache;
use kernelize_store::Database;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a key looked up in the metadata store is trusted before it is read again
/// (a revocation on another server sharing the PostgreSQL store takes effect within
/// this time; on this server, at once).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// The settings a reload (SIGHUP) can change while the server runs, with what is
/// built from them. Read with [`AppState::live`] (one atomic load); replaced whole by
/// [`AppState::reload`].
pub struct Live {
    /// `[limits]` (all but `header_read_timeout_ms`, fixed when the listener starts).
    pub limits: crate::config::Limits,
    /// Origins allowed by CORS.
    pub cors_origins: Vec<String>,
    /// The slow-query threshold, ms (0: off).
    pub slow_query_ms: u64,
    /// The log filter directive in force.
    pub log_level: String,
    /// The CORS layer for `cors_origins`; none when the list is empty.
    pub(crate) cors: Option<tower_http::cors::CorsLayer>,
    /// Per-key token buckets (`limits.rate_per_sec`, `limits.burst`).
    pub(crate) limiter: Arc<DefaultKeyedRateLimiter<String>>,
    /// Failed authentications per IP address (`limits.auth_failures_per_sec`).
    pub(crate) failures: Arc<DefaultKeyedRateLimiter<std::net::IpAddr>>,
}

impl Live {
    /// Builds the live part of `c`, keeping `old`'s limiters when their rates are unchanged
    /// (their buckets stay as full or empty as they were).
    pub(crate) fn new(c: &Config, old: Option<&Live>) -> Live {
        let l = &c.limits;
        let limiter = match old {
            Some(o) if o.limits.rate_per_sec == l.rate_per_sec && o.limits.burst == l.burst => o.limiter.clone(),
            _ => {
                let quota = Quota::per_second(NonZeroU32::new(l.rate_per_sec).unwrap_or(NonZeroU32::MIN))
                    .allow_burst(NonZeroU32::new(l.burst).unwrap_or(NonZeroU32::MIN));
                Arc::new(RateLimiter::keyed(quota))
            }
        };
        let failures = match old {
            Some(o) if o.limits.auth_failures_per_sec == l.auth_failures_per_sec => o.failures.clone(),
            _ => {
                let per_ip = NonZeroU32::new(l.auth_failures_per_sec).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::per_second(per_ip)
                    .allow_burst(per_ip.saturating_mul(NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN)));
                Arc::new(RateLimiter::keyed(quota))
            }
        };
        let cors = (!c.cors_origins.is_empty()).then(|| {
            use axum::http::{HeaderValue, Method, header};
            let origins: Vec<HeaderValue> = c.cors_origins.iter().filter_map(|o| o.parse().ok()).collect();
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .expose_headers([crate::http::X_REQUEST_ID.clone()])
        });
        Live {
            limits: l.clone(),
            cors_origins: c.cors_origins.clone(),
            slow_query_ms: c.slow_query_ms,
            log_level: c.log_level.clone(),
            cors,
            limiter,
            failures,
        }
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("limits", &self.limits)
            .field("cors_origins", &self.cors_origins)
            .field("slow_query_ms", &self.slow_query_ms)
            .field("log_level", &self.log_level)
            .finish_non_exhaustive()
    }
}

/// Everything handlers share.
pub struct AppState {
    /// The settings the server started with. The parts a reload can change — `limits`,
    /// `cors_origins`, `slow_query_ms`, `log_level` — are read from [`AppState::live`];
    /// their values here are those at start.
    pub config: Config,
    /// The settings a reload can change (see [`Live`]).
    pub(crate) live: arc_swap::ArcSwap<Live>,
    /// Collections.
    pub db: Arc<Database>,
    /// Open segment indexes.
    pub cache: IndexCache,
    /// The embedder, or why it is unavailable.
    pub embedder: Result<Arc<Embedder>, String>,
    /// The image and audio encoders, loaded on first use.
    pub media: crate::media::MediaEncoders,
    /// Control-plane metadata.
    pub meta: MetaStore,
    /// Key pepper and token signing key.
    pub secrets: Secrets,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Hosted kernels: signing key, build progress, open kernels.
    pub kernels: crate::kernels::Kernels,
    /// The audit chain's HMAC key and checkpoint signing key.
    pub audit_keys: Arc<crate::audit::AuditKeys>,
    /// The fleet control plane (devices, releases, deployments).
    pub fleet: kernelize_fleet::Fleet,
    /// LLM programs: the local model (loaded on first use) and compile jobs.
    pub programs: crate::programs::Programs,
    /// The last searches at or over `slow_query_ms` (at most [`SLOW_QUERIES_KEPT`]).
    pub slow_queries: Mutex<std::collections::VecDeque<crate::model::SlowQuery>>,
    /// Authenticated requests being served (load shedding beyond `limits.concurrency`).
    pub inflight: Arc<tokio::sync::Semaphore>,
    /// Open server-sent event streams (at most `limits.max_event_streams`).
    pub event_streams: Arc<tokio::sync::Semaphore>,
    /// Progress of running kernel builds and backups, for their event streams.
    pub jobs: crate::progress::Jobs,
    /// Slots of `inflight` held by each key (at most [`AppState::per_key_slots`]).
    pub(crate) slots_by_key: Mutex<HashMap<String, usize>>,
    /// Protected handlers still running, including those whose client already got a
    /// timeout: shutdown waits for them, so no acknowledged write loses its audit entry.
    pub handlers: std::sync::atomic::AtomicUsize,
    /// Single sign-on (`[sso]`), when configured.
    pub sso: Option<crate::oidc::Sso>,
    /// Set when shutdown begins: responses then close their connections.
    pub draining: std::sync::atomic::AtomicBool,
    keys: RowCache<KeyRow>,
    /// The cluster's shared limiter (Redis), when the cluster configuration names one.
    pub(crate) shared_limiter: Option<crate::ratelimit::SharedLimiter>,
    /// The cluster node, when the server runs as one (`--cluster`): collections live there.
    pub cluster: Option<Arc<kernelize_cluster::Node>>,
    usage: Mutex<HashMap<String, UsageRow>>,
    /// Per-key quota bookkeeping (`crate::quota`).
    pub(crate) quotas: crate::quota::Quotas,
    audit_lock: tokio::sync::Mutex<()>,
    /// One configuration reload at a time.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// Serialises key revocation and rotation in this process, so two admins cannot each
    /// revoke the other's key past the last-admin check.
    pub(crate) key_admin: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("data_dir", &self.config.data_dir).finish_non_exhaustive()
    }
}

/// Rows of the metadata store looked up on every request (keys, single-sign-on sessions),
/// kept for at most [`KEY_CACHE_TTL`]; at most 100,000 (then it starts over).
#[derive(Debug)]
pub(crate) struct RowCache<T>(Mutex<HashMap<String, (T, Instant)>>);

impl<T> Default for RowCache<T> {
    fn default() -> Self {
        RowCache(Mutex::new(HashMap::new()))
    }
}

impl<T: Clone> RowCache<T> {
    /// The row of `id`, if cached and fresh.
    pub(crate) fn get(&self, id: &str) -> Option<T> {
        self.0.lock().get(id).filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL).map(|(row, _)| row.clone())
    }

    /// Caches what the store said of `id` (`None`: nothing, and the old entry goes).
    pub(crate) fn put(&self, id: &str, row: Option<&T>) {
        let mut cache = self.0.lock();
        if cache.len() > 100_000 {
            cache.clear();
        }
        match row {
            Some(r) => cache.insert(id.to_owned(), (r.clone(), Instant::now())),
            None => cache.remove(id),
        };
    }

    /// Drops `id` (after a revocation).
    pub(crate) fn forget(&self, id: &str) {
        self.0.lock().remove(id);
    }
}

/// Slow searches kept for `GET /v1/slow-queries`.
pub const SLOW_QUERIES_KEPT: usize = 100;

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339 (UTC, seconds) of unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    // RFC 3339 has four-digit years: clamp to the last millisecond of 9999.
    const MAX_MS: i64 = 253_402_300_799_999;
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.clamp(0, MAX_MS) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What a write or embedding adds to a key's usage.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageDelta {
    /// Requests.
    pub requests: i64,
    /// Records written.
    pub records_written: i64,
    /// Texts embedded.
    pub texts_embedded: i64,
    /// Bytes written.
    pub bytes_stored: i64,
    /// Language-model tokens used.
    pub llm_tokens: i64,
}

impl AppState {
    /// Assembles the state.
    #[expect(clippy::too_many_arguments, reason = "built once, at start")]
    pub fn new(
        config: Config,
        db: Arc<Database>,
        embedder: Result<Arc<Embedder>, String>,
        meta: MetaStore,
        secrets: Secrets,
        kernels: crate::kernels::Kernels,
        audit_keys: Arc<crate::audit::AuditKeys>,
        fleet: kernelize_fleet::Fleet,
    ) -> AppState {
        let l = &config.limits;
        let inflight = Arc::new(tokio::sync::Semaphore::new(l.concurrency));
        AppState {
            live: arc_swap::ArcSwap::from_pointee(Live::new(&config, None)),
            db,
            cache: IndexCache::new(),
            embedder,
            media: crate::media::MediaEncoders::default(),
            meta,
            secrets,
            metrics: Metrics::new(),
            kernels,
            audit_keys,
            fleet,
            programs: crate::programs::Programs::new(config.llm_model.clone(), config.data_dir.clone()),
            sso: config.sso.clone().map(crate::oidc::Sso::new),
            inflight,
            event_streams: Arc::new(tokio::sync::Semaphore::new(l.max_event_streams)),
            jobs: crate::progress::Jobs::default(),
            slots_by_key: Mutex::new(HashMap::new()),
            slow_queries: Mutex::new(std::collections::VecDeque::new()),
            draining: std::sync::atomic::AtomicBool::new(false),
            handlers: std::sync::atomic::AtomicUsize::new(0),
            keys: RowCache::default(),
            shared_limiter: None,
            cluster: None,
            usage: Mutex::new(HashMap::new()),
            quotas: crate::quota::Quotas::default(),
            audit_lock: tokio::sync::Mutex::new(()),
            reload_lock: tokio::sync::Mutex::new(()),
            key_admin: tokio::sync::Mutex::new(()),
            config,
        }
    }

    /// The settings in force that a reload can change (one atomic load).
    pub fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    /// Most slots of `limits.concurrency` one key may hold at once (at least one).
    pub fn per_key_slots(&self) -> usize {
        let live = self.live();
        let l = &live.limits;
        (l.concurrency * usize::from(l.per_key_concurrency_percent) / 100).max(1)
    }

    pub(crate) async fn key_row(&self, id: &str) -> Result<Option<KeyRow>, ApiError> {
        if let Some(row) = self.keys.get(id) {
            return Ok(Some(row));
        }
        let row = self.meta.key(id).await?;
        self.keys.put(id, row.as_ref());
        Ok(row)
    }

    /// Drops a key from the lookup cache (after revocation or rotation).
    pub fn forget_key(&self, id: &str) {
        self.keys.forget(id);
    }

    /// Establishes who sent `authorization` (the header's value). Every failure is the
    /// same 401 to the client; the reason (second element) goes to the audit log.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, (ApiError, String, String)> {
        let deny = |claimed: &str, why: &str| {
            (
                ApiError::unauthenticated("missing, invalid, expired or revoked credentials"),
                claimed.to_owned(),
                why.to_owned(),
            )
        };
        let Some(header) = authorization else {
            return Err(deny("anonymous", "no Authorization header"));
        };
        let Some(cred) = header.strip_prefix("Bearer ").map(str::trim) else {
            return Err(deny("anonymous", "Authorization is not a Bearer credential"));
        };
        let now = now_ms();
        if let Some(k) = parse_key(cred) {
            let claimed = format!("key:{}", k.id);
            let row = self.key_row(k.id).await.map_err(|e| (e, claimed.clone(), "metadata store error".into()))?;
            let Some(row) = row else { return Err(deny(&claimed, "unknown key id")) };
            if !self.secrets.verify_secret(k.secret, &row.hash) {
                return Err(deny(&claimed, "wrong secret"));
            }
            if !row.active(now) {
                return Err(deny(&claimed, if row.revoked_ms.is_some() { "revoked key" } else { "expired key" }));
            }
            return principal_of(&row, false).map_err(|why| deny(&claimed, &why));
        }
        if cred.bytes().filter(|b| *b == b'.').count() == 2 {
            let claims = self.secrets.verify_token(cred).map_err(|e| deny("anonymous", &format!("token: {e}")))?;
            let claimed = format!("token:{}", crate::error::clip(&claims.sub, 64));
            // Signed by us, yet living longer than any token we mint: refused.
            let max = self.live().limits.max_token_ttl_secs;
            let now_s = u64::try_from(now / 1000).unwrap_or(0);
            if claims.exp.saturating_sub(claims.iat) > max || claims.exp > now_s.saturating_add(max) {
                return Err(deny(&claimed, "token lifetime beyond limits.max_token_ttl_secs"));
            }
            if let Some(sid) = &claims.sid {
                let claimed = crate::error::clip(&claims.sub, 64).into_owned();
                return self.sso_principal(sid, &claims).await.map_err(|why| deny(&claimed, &why));
            }
            let row =
                self.key_row(&claims.sub).await.map_err(|e| (e, claimed.clone(), "metadata store error".into()))?;
            let Some(row) = row.filter(|r| r.active(now)) else {
                return Err(deny(&claimed, "the minting key is revoked, expired or unknown"));
            };
            let key = principal_of(&row, false).map_err(|why| deny(&claimed, &why))?;
            let scope = Scope::from_list(claims.collections);
            if claims.role > key.role || !key.scope.covers(&scope) {
                return Err(deny(&claimed, "token claims more than its key holds"));
            }
            return Ok(Principal { key_id: row.id, role: claims.role, scope, via_token: true, sso_session: None });
        }
        Err(deny("anonymous", "credential is neither a key nor a token"))
    }

    /// Takes one request from the key's token bucket; `Err(seconds)` when empty. In a
    /// cluster with Redis the bucket is shared by every node; this node's own bucket
    /// stands in while Redis does not answer.
    pub async fn rate_limit(&self, key_id: &str) -> Result<(), u64> {
        if let Some(shared) = &self.shared_limiter {
            let (rate, burst) = {
                let live = self.live();
                (live.limits.rate_per_sec, live.limits.burst)
            };
            match shared.take(key_id, rate, burst).await {
                Ok(r) => return r,
                Err(e) => tracing::warn!(error = %e, "shared rate limit unavailable; limiting on this node alone"),
            }
        }
        self.live().limiter.check_key(&key_id.to_owned()).map_err(retry_secs)
    }

    /// Counts a failed authentication from `ip`; `Err(seconds)` once that address has
    /// failed too often (the failure is then answered 429 and not audited one by one).
    pub fn auth_failure_allowed(&self, ip: std::net::IpAddr) -> Result<(), u64> {
        self.live().failures.check_key(&ip).map_err(retry_secs)
    }

    /// Adds to a key's usage (kept in memory, flushed to the metadata store periodically,
    /// before usage is read, and at shutdown).
    pub fn add_usage(&self, key_id: &str, d: UsageDelta) {
        if d.requests > 0 {
            self.quotas.add_requests(key_id, d.requests);
        }
        self.add_counters(key_id, d);
    }

    /// Adds to a key's usage counters only (not to its requests of the day).
    fn add_counters(&self, key_id: &str, d: UsageDelta) {
        let mut map = self.usage.lock();
        let u = map
            .entry(key_id.to_owned())
            .or_insert_with(|| UsageRow { key_id: key_id.to_owned(), ..Default::default() });
        u.requests += d.requests;
        u.records_written += d.records_written;
        u.texts_embedded += d.texts_embedded;
        u.bytes_stored += d.bytes_stored;
        u.llm_tokens += d.llm_tokens;
    }

    /// Writes pending usage to the metadata store; on failure keeps it for the next try.
    pub async fn flush_usage(&self) -> Result<(), ApiError> {
        let rows: Vec<UsageRow> = std::mem::take(&mut *self.usage.lock()).into_values().collect();
        let daily = self.quotas.take_pending();
        if let Err(e) = self.meta.add_usage(&rows, &daily, now_ms()).await {
            self.quotas.restore_pending(daily);
            for r in rows {
                self.add_counters(
                    &r.key_id,
                    UsageDelta {
                        requests: r.requests,
                        records_written: r.records_written,
                        texts_embedded: r.texts_embedded,
                        bytes_stored: r.bytes_stored,
                        llm_tokens: r.llm_tokens,
                    },
                );
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Appends to the audit log (serialised within this process; across processes the
    /// metadata store's transaction serialises). Every field is cut to a bounded prefix
    /// (`audit::MAX_FIELD`, `audit::MAX_DETAIL` bytes) so no request can store more. An
    /// admin action is followed by a signed checkpoint of the head.
    pub async fn audit(
        &self,
        request_id: &str,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) -> Result<(), ApiError> {
        use crate::audit::{MAX_DETAIL, MAX_FIELD, bounded};
        let _g = self.audit_lock.lock().await;
        let e = crate::audit::AuditEntry {
            ts_ms: now_ms(),
            request_id: bounded(request_id, MAX_FIELD),
            actor: bounded(actor, MAX_FIELD),
            action: bounded(action, MAX_FIELD),
            target: bounded(target, MAX_FIELD),
            outcome: bounded(outcome, MAX_FIELD),
            detail: bounded(detail, MAX_DETAIL),
            ..Default::default()
        };
        let e = self.meta.audit_append(&self.audit_keys, e).await?;
        if is_admin_action(action) {
            self.write_checkpoint(e.seq, e.hash).await?;
        }
        Ok(())
    }

    /// Appends a signed checkpoint of `(seq, hash)` to `<data_dir>/audit-checkpoints`.
    async fn write_checkpoint(&self, seq: i64, hash: String) -> Result<(), ApiError> {
        let keys = self.audit_keys.clone();
        crate::engine::blocking(move || keys.write_checkpoint(seq, &hash).map_err(ApiError::internal)).await
    }

    /// Checkpoints the current head (on a timer and at shutdown), unless `last` already
    /// names it; returns the head checkpointed.
    pub async fn checkpoint_head(&self, last: Option<i64>) -> Result<Option<i64>, ApiError> {
        let _g = self.audit_lock.lock().await;
        let Some((seq, hash)) = self.meta.audit_head().await? else { return Ok(last) };
        if last == Some(seq) {
            return Ok(last);
        }
        self.write_checkpoint(seq, hash).await?;
        Ok(Some(seq))
    }

    /// Checks this server's audit log, checkpoints and keys (`MetaStore::verify_audit`).
    pub async fn verify_audit(&self) -> anyhow::Result<crate::audit::AuditVerdict> {
        self.meta.verify_audit(&self.config.data_dir).await
    }

    /// Serialises a key change with audit appends (its `keys.state` entries are
    /// appended in the key change's own transaction).
    pub(crate) async fn key_change<T>(
        &self,
        f: impl std::future::Future<Output = sqlx::Result<T>>,
    ) -> Result<T, ApiError> {
        let _g = self.audit_lock.lock().await;
        Ok(f.await?)
    }

    /// The embedder, or 503 saying how to install the model.
    pub fn embedder(&self) -> Result<Arc<Embedder>, ApiError> {
        self.embedder.clone().map_err(ApiError::unavailable)
    }
}

/// Admin actions: each is followed by a signed checkpoint of the audit head.
fn is_admin_action(action: &str) -> bool {
    ["keys.", "backups.", "usage.", "audit.", "config."].iter().any(|p| action.starts_with(p))
}

/// Whole seconds until a rate limiter admits again (at least the fraction rounded up).
fn retry_secs(not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>) -> u64 {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// The principal a key row stands for.
pub fn principal_of(row: &KeyRow, via_token: bool) -> Result<Principal, String> {
    let role: Role = row.role.parse()?;
    let list = match &row.collections {
        None => None,
        Some(json) => Some(serde_json::from_str::<Vec<String>>(json).map_err(|e| format!("stored scope: {e}"))?),
    };
    Ok(Principal { key_id: row.id.clone(), role, scope: Scope::from_list(list), via_token, sso_session: None })
}
