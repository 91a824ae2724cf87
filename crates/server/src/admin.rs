//! Admin operations — keys, tokens, usage, the audit log, backups — and the first-start
//! admin key. Authorization is checked here, on every call.

use crate::auth::{Principal, Role, Scope, TOKEN_ISSUER, TokenClaims, generate_key, parse_key, random_id};
use crate::engine::blocking;
use crate::error::{ApiError, current_request_id, quote};
use crate::meta::{BackupRow, KeyChange, KeyRow};
use crate::model::*;
use crate::state::{AppState, now_ms, principal_of, rfc3339};
use kernelize_store::BackupFormat;
use std::sync::Arc;

const MAX_NAME: usize = 128;
/// Longest key lifetime or rotation grace: 100 years.
pub const MAX_LIFETIME_SECS: u64 = 100 * 365 * 24 * 3600;
/// Default token lifetime.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 900;

fn key_info(r: &KeyRow, now: i64) -> Result<KeyInfo, ApiError> {
    let p = principal_of(r, false).map_err(ApiError::internal)?;
    Ok(KeyInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        role: p.role,
        collections: p.scope.to_list(),
        created_at: rfc3339(r.created_ms),
        expires_at: r.expires_ms.map(rfc3339),
        revoked_at: r.revoked_ms.map(rfc3339),
        rotated_to: r.rotated_to.clone(),
        active: r.active(now),
        quota: r.quota.is_set().then(|| r.quota.into()),
    })
}

fn backup_info(b: BackupRow) -> BackupInfo {
    BackupInfo {
        id: b.id,
        state: b.state,
        format: b.format,
        path: b.path,
        requested_by: b.requested_by,
        created_at: rfc3339(b.created_ms),
        finished_at: b.finished_ms.map(rfc3339),
        bytes: b.bytes,
        collections: b.collections,
        progress: None,
        error: b.error,
    }
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn check_collections(list: &Option<Vec<String>>) -> Result<(), ApiError> {
    if let Some(l) = list {
        if l.len() > 1000 {
            return Err(ApiError::invalid("collections: at most 1000 names"));
        }
        for n in l {
            kernelize_store::validate_name(n).map_err(|e| ApiError::invalid(format!("collections: {e}")))?;
        }
    }
    Ok(())
}

/// The stored row of the key `full` (`kz_<id>_<secret>`): its id, and only the keyed
/// hash of its secret.
pub fn key_row(
    state: &AppState,
    full: &str,
    name: &str,
    role: Role,
    scope: &Scope,
    expires_ms: Option<i64>,
) -> Result<KeyRow, ApiError> {
    let k = parse_key(full).ok_or_else(|| {
        ApiError::invalid("not a Kernelize key (kz_<12 lowercase letters or digits>_<32+ characters>)")
    })?;
    let collections = scope.to_list().map(|l| serde_json::to_string(&l)).transpose().map_err(ApiError::internal)?;
    Ok(KeyRow {
        id: k.id.to_owned(),
        name: name.to_owned(),
        hash: state.secrets.hash_secret(k.secret),
        role: role.as_str().into(),
        collections,
        created_ms: now_ms(),
        expires_ms,
        revoked_ms: None,
        rotated_to: None,
        quota: crate::meta::KeyQuota::default(),
    })
}

/// A new random key for `role`/`scope`: `(row, full key text)`.
pub fn new_key(
    state: &AppState,
    name: &str,
    role: Role,
    scope: &Scope,
    expires_ms: Option<i64>,
) -> Result<(KeyRow, String), ApiError> {
    let (_, full) = generate_key();
    Ok((key_row(state, &full, name, role, scope, expires_ms)?, full))
}

/// How long a key lives: its expiry, or forever.
fn lifetime(r: &KeyRow) -> i64 {
    r.expires_ms.unwrap_or(i64::MAX)
}

/// The longest lifetime among the active admin keys of every collection, if any: the
/// keys that can always administer the server (a scoped admin cannot manage keys of
/// other collections' users as fully, and an expired or revoked one cannot at all).
fn best_root_admin<'a>(rows: impl IntoIterator<Item = &'a KeyRow>, now: i64) -> Option<i64> {
    rows.into_iter()
        .filter(|r| r.role == Role::Admin.as_str() && r.active(now))
        .filter(|r| principal_of(r, false).is_ok_and(|p| p.scope == Scope::All))
        .map(lifetime)
        .max()
}

/// 409 `last_admin` unless `after` (the keys once a change is made) keeps an active
/// all-collections admin key living at least as long as the best one of `before`: the
/// last such key cannot be revoked, nor replaced by one that expires sooner.
fn keeps_root_admin(before: &[KeyRow], after: &[KeyRow], now: i64, what: &str) -> Result<(), ApiError> {
    let Some(best) = best_root_admin(before, now) else { return Ok(()) };
    if best_root_admin(after, now).is_some_and(|b| b >= best) {
        return Ok(());
    }
    Err(ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "last_admin",
        format!(
            "refusing to {what}: it is the last active admin key of all collections{}; \
             create another such admin key first (or recover with `kernelize admin-key reset`)",
            if best == i64::MAX { " that does not expire" } else { " with the latest expiry" }
        ),
    ))
}

/// Whether `rows` hold an active admin key of all collections.
pub fn has_root_admin(rows: &[KeyRow], now: i64) -> bool {
    best_root_admin(rows, now).is_some()
}

/// The recovery path when no key can administer the server any more: adds a new admin
/// key of all collections, that does not expire, straight to the metadata store (the
/// server may be stopped or running), audited as `system`, and returns it — to be shown
/// once. Behind `kernelize admin-key reset`.
pub async fn reset_admin_key(config: &crate::Config) -> anyhow::Result<String> {
    // A key hashed with a new pepper, or an audit entry keyed with a new audit key, would
    // be of no use to the server: refuse a directory that is not a server's.
    let mut needed = vec!["server-secret", crate::audit::KEY_FILE];
    if config.database_url.is_none() {
        needed.push("control.db");
    }
    for f in needed {
        if !config.data_dir.join(f).exists() {
            anyhow::bail!(
                "{} has no {f}: not a server's data directory (pass the server's --data-dir{})",
                config.data_dir.display(),
                if config.database_url.is_none() { "" } else { " and --database-url" }
            );
        }
    }
    let secrets = crate::auth::Secrets::load_or_create(&config.data_dir)?;
    let meta = crate::meta::MetaStore::connect(&config.database_url()).await?;
    let result = async {
        let keys = crate::audit::AuditKeys::load_or_create(&config.data_dir)?;
        meta.ensure_keyed(&keys).await?;
        let (_, full) = generate_key();
        let k = parse_key(&full).ok_or_else(|| anyhow::anyhow!("generated key does not parse"))?;
        let row = KeyRow {
            id: k.id.to_owned(),
            name: "admin (reset)".into(),
            hash: secrets.hash_secret(k.secret),
            role: Role::Admin.as_str().into(),
            collections: None,
            created_ms: now_ms(),
            expires_ms: None,
            revoked_ms: None,
            rotated_to: None,
            quota: crate::meta::KeyQuota::default(),
        };
        meta.insert_key(&keys, &row, &KeyChange { request_id: "admin-key-reset", actor: "system" }).await?;
        let entry = crate::audit::AuditEntry {
            ts_ms: now_ms(),
            request_id: "admin-key-reset".into(),
            actor: "system".into(),
            action: "keys.reset".into(),
            target: row.id.clone(),
            outcome: "ok".into(),
            detail: "admin key added by `kernelize admin-key reset`".into(),
            ..Default::default()
        };
        meta.audit_append(&keys, entry).await?;
        anyhow::Ok(full)
    }
    .await;
    meta.close().await;
    result
}

impl AppState {
    /// Installs an admin key when the store has no active admin key of all collections
    /// (first start; or every such key was revoked or expired): the configured one (from
    /// `admin_key`, `admin_key_file`), else a generated one, returned to be shown once.
    pub async fn bootstrap_admin(&self) -> anyhow::Result<Option<String>> {
        let rows = self.meta.keys().await?;
        let now = now_ms();
        if has_root_admin(&rows, now) {
            return Ok(None);
        }
        let first = !rows.iter().any(|r| r.role == Role::Admin.as_str());
        let configured = match (&self.config.admin_key, &self.config.admin_key_file) {
            (Some(k), _) => Some(k.trim().to_owned()),
            (None, Some(f)) => Some(fs_err::read_to_string(f)?.trim().to_owned()),
            (None, None) => None,
        };
        let generated = configured.is_none();
        let full = configured.unwrap_or_else(|| generate_key().1);
        let row = key_row(self, &full, "admin", Role::Admin, &Scope::All, None)
            .map_err(|e| anyhow::anyhow!("the admin key: {}", e.message))?;
        if let Some(old) = rows.iter().find(|r| r.id == row.id) {
            anyhow::bail!(
                "no active admin key of all collections is left, and the configured admin key (id {}) is {}; \
                 configure a new one, or run `kernelize admin-key reset`",
                old.id,
                if old.revoked_ms.is_some() { "revoked" } else { "expired or scoped" }
            );
        }
        let by = KeyChange { request_id: "startup", actor: "system" };
        self.key_change(self.meta.insert_key(&self.audit_keys, &row, &by)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let detail = if first {
            "first admin key installed"
        } else {
            "admin key installed: every admin key of all collections was revoked or expired"
        };
        self.audit("startup", "system", "keys.bootstrap", &row.id, "ok", detail)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if !first {
            tracing::warn!(key_id = row.id, "no active admin key of all collections was left; installed one");
        }
        Ok(generated.then_some(full))
    }

    /// Creates a key.
    pub async fn create_key(&self, p: &Principal, req: CreateKey) -> Result<KeyCreated, ApiError> {
        p.require(Role::Admin, None)?;
        if req.name.trim().is_empty() || req.name.chars().count() > MAX_NAME {
            return Err(ApiError::invalid(format!("name must be 1-{MAX_NAME} characters")));
        }
        check_collections(&req.collections)?;
        let expires_ms = match req.expires_in_secs {
            Some(s) if s == 0 || s > MAX_LIFETIME_SECS => {
                return Err(ApiError::invalid(format!("expires_in_secs must be 1..={MAX_LIFETIME_SECS}, got {s}")));
            }
            Some(s) => Some(now_ms().saturating_add(secs_to_ms(s))),
            None => None,
        };
        let (mut row, key) = new_key(self, &req.name, req.role, &Scope::from_list(req.collections), expires_ms)?;
        if let Some(q) = &req.quota {
            self.check_quota(q)?;
            row.quota = (*q).into();
        }
        let (rid, actor) = (current_request_id(), p.actor());
        let by = KeyChange { request_id: &rid, actor: &actor };
        self.key_change(self.meta.insert_key(&self.audit_keys, &row, &by)).await?;
        Ok(KeyCreated { key, info: key_info(&row, now_ms())? })
    }

    /// Replaces a key's quotas (`{}`: none); in force at once on this server (within
    /// [`crate::state::KEY_CACHE_TTL`] on others sharing the metadata store).
    pub async fn set_key_quota(&self, p: &Principal, id: &str, q: QuotaSettings) -> Result<KeyInfo, ApiError> {
        p.require(Role::Admin, None)?;
        self.check_quota(&q)?;
        let _admin = self.key_admin.lock().await;
        let row = self.meta.key(id).await?.ok_or_else(|| ApiError::not_found(format!("no key {}", quote(id))))?;
        if row.revoked_ms.is_some() {
            return Err(ApiError::conflict(format!("key {} is revoked", quote(id))));
        }
        let (rid, actor) = (current_request_id(), p.actor());
        let by = KeyChange { request_id: &rid, actor: &actor };
        if !self.key_change(self.meta.set_key_quota(&self.audit_keys, id, q.into(), &by)).await? {
            return Err(ApiError::not_found(format!("no key {}", quote(id))));
        }
        self.forget_key(id);
        let row = self.meta.key(id).await?.ok_or_else(|| ApiError::not_found(format!("no key {}", quote(id))))?;
        key_info(&row, now_ms())
    }

    /// Lists keys.
    pub async fn list_keys(&self, p: &Principal) -> Result<KeyList, ApiError> {
        p.require(Role::Admin, None)?;
        let now = now_ms();
        let keys = self.meta.keys().await?.iter().map(|r| key_info(r, now)).collect::<Result<_, _>>()?;
        Ok(KeyList { keys })
    }

    /// Rotates a key: a new key with the same name, role and scope; the old one keeps
    /// working for the grace period.
    pub async fn rotate_key(&self, p: &Principal, id: &str, req: RotateKey) -> Result<KeyCreated, ApiError> {
        p.require(Role::Admin, None)?;
        let now = now_ms();
        let _admin = self.key_admin.lock().await;
        let old = self.meta.key(id).await?.ok_or_else(|| ApiError::not_found(format!("no key {}", quote(id))))?;
        if !old.active(now) {
            return Err(ApiError::conflict(format!("key {} is revoked or expired", quote(id))));
        }
        let grace = req.grace_secs.unwrap_or(self.live().limits.rotation_grace_secs);
        if grace > MAX_LIFETIME_SECS {
            return Err(ApiError::invalid(format!("grace_secs must be at most {MAX_LIFETIME_SECS}, got {grace}")));
        }
        let old_expires = now.saturating_add(secs_to_ms(grace)).min(old.expires_ms.unwrap_or(i64::MAX));
        let scope = principal_of(&old, false).map_err(ApiError::internal)?;
        let (row, key) = new_key(self, &old.name, scope.role, &scope.scope, old.expires_ms)?;
        let before = self.meta.keys().await?;
        let mut after = before.clone();
        for r in &mut after {
            if r.id == id {
                r.expires_ms = Some(old_expires);
            }
        }
        after.push(row.clone());
        keeps_root_admin(&before, &after, now, "rotate this key")?;
        let (rid, actor) = (current_request_id(), p.actor());
        let by = KeyChange { request_id: &rid, actor: &actor };
        self.key_change(self.meta.rotate_key(&self.audit_keys, id, &row, old_expires, &by)).await?;
        self.forget_key(id);
        Ok(KeyCreated { key, info: key_info(&row, now)? })
    }

    /// Revokes a key (and every token it minted). The last active admin key of all
    /// collections (the one living longest) cannot be revoked: 409 `last_admin`.
    pub async fn revoke_key(&self, p: &Principal, id: &str) -> Result<(), ApiError> {
        p.require(Role::Admin, None)?;
        let _admin = self.key_admin.lock().await;
        let row = self.meta.key(id).await?.ok_or_else(|| ApiError::not_found(format!("no key {}", quote(id))))?;
        if row.revoked_ms.is_some() {
            return Err(ApiError::conflict(format!("key {} is already revoked", quote(id))));
        }
        let before = self.meta.keys().await?;
        let after: Vec<KeyRow> = before.iter().filter(|r| r.id != id).cloned().collect();
        keeps_root_admin(&before, &after, now_ms(), "revoke this key")?;
        let (rid, actor) = (current_request_id(), p.actor());
        let by = KeyChange { request_id: &rid, actor: &actor };
        self.key_change(self.meta.revoke_key(&self.audit_keys, id, now_ms(), &by)).await?;
        self.forget_key(id);
        Ok(())
    }

    /// Mints a token with at most the key's rights.
    pub async fn mint_token(&self, p: &Principal, req: TokenRequest) -> Result<TokenResponse, ApiError> {
        if p.via_token {
            return Err(ApiError::forbidden("tokens cannot mint tokens; use a key"));
        }
        let role = req.role.unwrap_or(p.role);
        if role > p.role {
            return Err(ApiError::forbidden(format!(
                "a {} key cannot mint a {} token",
                p.role.as_str(),
                role.as_str()
            )));
        }
        check_collections(&req.collections)?;
        let scope = match req.collections {
            Some(l) => Scope::from_list(Some(l)),
            None => p.scope.clone(),
        };
        if !p.scope.covers(&scope) {
            return Err(ApiError::forbidden("the token's collections must be within the key's scope"));
        }
        let ttl = req.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
        let max = self.live().limits.max_token_ttl_secs;
        if ttl == 0 || ttl > max {
            return Err(ApiError::invalid(format!("ttl_secs must be 1..={max}, got {ttl}")));
        }
        let row = self.meta.key(&p.key_id).await?.ok_or_else(|| ApiError::unauthenticated("key vanished"))?;
        let now = now_ms() / 1000;
        let mut exp = now as u64 + ttl;
        if let Some(e) = row.expires_ms {
            exp = exp.min((e / 1000).max(0) as u64);
        }
        let claims = TokenClaims {
            sub: p.key_id.clone(),
            iss: TOKEN_ISSUER.into(),
            iat: now as u64,
            exp,
            jti: random_id(),
            role,
            collections: scope.to_list(),
            sid: None,
        };
        let token = self.secrets.sign_token(&claims)?;
        Ok(TokenResponse { token, expires_at: rfc3339(exp as i64 * 1000), role, collections: claims.collections })
    }

    /// Usage of every key (pending counters flushed first).
    pub async fn usage_report(&self, p: &Principal) -> Result<UsageReport, ApiError> {
        p.require(Role::Admin, None)?;
        self.flush_usage().await?;
        let keys = self
            .meta
            .usage()
            .await?
            .into_iter()
            .map(|u| KeyUsage {
                key_id: u.key_id,
                requests: u.requests,
                records_written: u.records_written,
                texts_embedded: u.texts_embedded,
                bytes_stored: u.bytes_stored,
                llm_tokens: u.llm_tokens,
            })
            .collect();
        Ok(UsageReport { keys })
    }

    /// A page of the audit log.
    pub async fn audit_page(&self, p: &Principal, q: AuditParams) -> Result<AuditPage, ApiError> {
        p.require(Role::Admin, None)?;
        let limit = q.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::invalid(format!("limit must be 1..=1000, got {limit}")));
        }
        let entries = self
            .meta
            .audit_page(q.after_seq.unwrap_or(0), i64::from(limit), q.actor.as_deref(), q.action.as_deref())
            .await?;
        let (head_seq, head_hash) = self.meta.audit_head().await?.unwrap_or((0, crate::audit::GENESIS.into()));
        Ok(AuditPage { entries, head_seq, head_hash })
    }

    /// The audit log verified (chain, checkpoints, key states), as `kernelize audit verify`.
    pub async fn audit_verdict(&self, p: &Principal) -> Result<crate::audit::AuditVerdict, ApiError> {
        p.require(Role::Admin, None)?;
        self.verify_audit().await.map_err(ApiError::internal)
    }

    /// Starts a backup of every collection in the background.
    pub async fn start_backup(self: &Arc<Self>, p: &Principal, req: BackupRequest) -> Result<BackupInfo, ApiError> {
        p.require(Role::Admin, None)?;
        let format = req.format.unwrap_or(BackupFormatName::Tar);
        let id = random_id();
        let dir = self.config.backup_dir();
        let path = match format {
            BackupFormatName::Tar => dir.join(format!("{id}.tar")),
            BackupFormatName::Dir => dir.join(&id),
        };
        let row = BackupRow {
            id: id.clone(),
            state: "running".into(),
            format: if format == BackupFormatName::Tar { "tar" } else { "dir" }.into(),
            path: path.display().to_string(),
            requested_by: p.actor(),
            created_ms: now_ms(),
            finished_ms: None,
            bytes: None,
            collections: None,
            error: None,
        };
        self.meta.insert_backup(&row).await?;
        let progress = self.jobs.start(&id, "copying");
        let state = self.clone();
        let mut done = row.clone();
        tokio::spawn(async move {
            let db = state.db.clone();
            let result = blocking(move || {
                crate::files::private_dir(&dir).map_err(ApiError::internal)?;
                let fmt = if format == BackupFormatName::Tar { BackupFormat::Tar } else { BackupFormat::Dir };
                let mut report = |done: u64, total: u64| {
                    let fraction = if total == 0 { 1.0 } else { (done as f64 / total as f64) as f32 };
                    progress.send_replace(crate::progress::Stage { stage: "copying".into(), fraction });
                };
                let r = kernelize_store::backup(&db, &path, fmt, &[], &mut report).map_err(ApiError::internal)?;
                if format == BackupFormatName::Tar {
                    crate::files::private_file(&path)
                } else {
                    crate::files::private_dir(&path)
                }
                .map_err(ApiError::internal)?;
                Ok(r)
            })
            .await;
            done.finished_ms = Some(now_ms());
            match result {
                Ok(r) => {
                    done.state = "succeeded".into();
                    done.bytes = Some(r.bytes as i64);
                    done.collections = Some(r.collections.len() as i64);
                }
                Err(e) => {
                    done.state = "failed".into();
                    done.error = Some(e.message);
                }
            }
            if let Err(e) = state.meta.finish_backup(&done).await {
                tracing::error!(backup = done.id, error = %e, "could not record the end of a backup");
            }
            state.jobs.finish(&done.id);
            let _ = state
                .audit(
                    "-",
                    "system",
                    "backups.finish",
                    &done.id,
                    if done.state == "succeeded" { "ok" } else { "error" },
                    &done.state,
                )
                .await;
        });
        Ok(self.backup_info(row))
    }

    /// A backup job with its progress while it runs.
    fn backup_info(&self, b: BackupRow) -> BackupInfo {
        let progress = (b.state == "running").then(|| self.jobs.get(&b.id).map_or(0.0, |s| s.fraction));
        BackupInfo { progress, ..backup_info(b) }
    }

    /// One backup job.
    pub async fn backup_status(&self, p: &Principal, id: &str) -> Result<BackupInfo, ApiError> {
        p.require(Role::Admin, None)?;
        self.meta
            .backup(id)
            .await?
            .map(|b| self.backup_info(b))
            .ok_or_else(|| ApiError::not_found(format!("no backup {}", quote(id))))
    }

    /// Every backup job.
    pub async fn list_backups(&self, p: &Principal) -> Result<BackupList, ApiError> {
        p.require(Role::Admin, None)?;
        Ok(BackupList { backups: self.meta.backups().await?.into_iter().map(|b| self.backup_info(b)).collect() })
    }

    /// The Prometheus exposition (collection gauges refreshed first).
    pub async fn metrics_text(self: &Arc<Self>, p: &Principal) -> Result<String, ApiError> {
        p.require(Role::Admin, None)?;
        let state = self.clone();
        blocking(move || {
            state.metrics.records.clear();
            for c in state.db.collections() {
                if let Ok(s) = c.stats() {
                    let l = crate::metrics::CollectionLabels { collection: s.name };
                    state.metrics.records.get_or_create(&l).set(s.records as i64);
                }
            }
            Ok(state.metrics.encode())
        })
        .await
    }
}
