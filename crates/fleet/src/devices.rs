//! Devices: signed enrollment, pre-authorization tokens, admin decisions, device tokens
//! renewed by signing a challenge, heartbeats and liveness, groups and bulk operations.

use crate::error::{FleetError, Result};
use crate::events::{Event, EventKind};
use crate::model::{Device, DeviceStatus, Inventory, MAX_INVENTORY_BYTES, Selector, check_labels, check_name};
use crate::rows::{self, DEVICE_COLUMNS, random_hex, same, sha256_hex, split_token};
use crate::{Fleet, Liveness};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kernelize_index::filter::Filter;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::collections::BTreeMap;

/// Largest enrollment payload, bytes.
pub const MAX_ENROLL_BYTES: usize = 32 * 1024;
/// How long a token challenge stays valid, ms.
const CHALLENGE_TTL_MS: i64 = 60_000;
/// Most devices one bulk operation or listing returns / touches.
pub const MAX_BULK: usize = 100_000;

/// What a device signs to enroll: this JSON, sent as the text it signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollPayload {
    /// What the device calls itself (serial number, host name).
    pub identity: String,
    /// Its ed25519 public key (32 bytes, base64).
    pub public_key: String,
    /// Its inventory.
    #[serde(default)]
    pub inventory: Inventory,
    /// Labels it proposes (kept only with a valid enrollment token).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A pre-authorization: enrolls it accepted.
    #[serde(default)]
    pub enrollment_token: Option<String>,
    /// When it signed (unix ms); must be within the server's allowed clock skew.
    pub timestamp_ms: i64,
}

/// An enrollment request: the payload text and the device's signature over its bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The [`EnrollPayload`] as JSON text, exactly as signed.
    pub payload: String,
    /// Ed25519 signature of the payload's bytes, base64.
    pub signature: String,
}

/// The outcome of an enrollment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollOutcome {
    /// The device's id (derived from its public key).
    pub device_id: String,
    /// `pending` or `accepted` (or where an earlier decision left it).
    pub status: DeviceStatus,
}

/// A device token and what to do with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceToken {
    /// Bearer token for the device routes.
    pub token: String,
    /// When it stops working (unix ms).
    pub expires_ms: i64,
    /// The heartbeat interval to keep, ms.
    pub heartbeat_ms: u64,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The interval the server wants, ms.
    pub heartbeat_ms: u64,
    /// When to send the next one: the interval with ±20% jitter, ms from now.
    pub next_heartbeat_ms: u64,
}

/// A new enrollment token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollmentToken {
    /// Lifetime, seconds (at most 30 days).
    pub ttl_seconds: u64,
    /// How many devices may use it.
    pub uses: u64,
    /// Labels given to devices that enroll with it.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Static group they join.
    #[serde(default)]
    pub group: Option<String>,
}

/// An enrollment token as listed (the secret only at creation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentToken {
    /// Id.
    pub id: String,
    /// The whole token — only in the creation response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Expiry (unix ms).
    pub expires_ms: i64,
    /// Uses left.
    pub uses_left: u64,
    /// Labels it gives.
    pub labels: BTreeMap<String, String>,
    /// Group it puts devices in.
    pub group: Option<String>,
    /// Who made it.
    pub created_by: String,
    /// Revoked (unix ms).
    pub revoked_ms: Option<i64>,
}

/// A new group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    /// Name.
    pub name: String,
    /// A filter over the device document makes it dynamic; without one it is static
    /// (devices join with bulk `move` or an enrollment token).
    #[serde(default)]
    pub filter: Option<String>,
}

/// A group with its member count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupInfo {
    /// Name.
    pub name: String,
    /// `static` or `dynamic`.
    pub kind: String,
    /// The filter of a dynamic group.
    pub filter: Option<String>,
    /// Accepted devices in it now.
    pub devices: u64,
    /// Created (unix ms).
    pub created_ms: i64,
}

/// A bulk operation over the devices a selector matches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkAction {
    /// Which devices.
    pub select: Selector,
    /// `label` (merge `labels`; an empty value removes the label), `move` (to static
    /// `group`, or out of any with null), `decommission`.
    pub action: String,
    /// For `label`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// For `move`.
    #[serde(default)]
    pub group: Option<String>,
    /// Only count what would be touched.
    #[serde(default)]
    pub dry_run: bool,
    /// The count a dry run showed; the operation refuses (409) when the selector now
    /// matches a different number. Required unless `dry_run`.
    #[serde(default)]
    pub expect_count: Option<u64>,
}

/// The outcome of a bulk operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BulkOutcome {
    /// Devices the selector matched.
    pub matched: u64,
    /// Devices changed (0 on a dry run).
    pub changed: u64,
    /// The first matched ids (at most 20), to show before acting.
    pub sample: Vec<String>,
}

fn verify_ed25519(public_key_b64: &str, msg: &[u8], sig_b64: &str, what: &str) -> Result<()> {
    let pk = B64
        .decode(public_key_b64)
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| FleetError::invalid(format!("{what}.public_key"), "not 32 bytes of base64"))?;
    let sig = B64
        .decode(sig_b64)
        .ok()
        .filter(|s| s.len() == 64)
        .ok_or_else(|| FleetError::invalid(format!("{what}.signature"), "not 64 bytes of base64"))?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk)
        .verify(msg, &sig)
        .map_err(|_| FleetError::Unauthenticated(format!("{what}: the signature does not match the public key")))
}

/// The device id of a public key: `d` + the first 24 hex digits of its SHA-256.
pub fn device_id_of(public_key_b64: &str) -> String {
    let raw = B64.decode(public_key_b64).unwrap_or_default();
    format!("d{}", &sha256_hex(&raw)[..24])
}

/// The message a device signs to get a token.
pub fn token_message(device_id: &str, challenge: &str) -> Vec<u8> {
    format!("kernelize-device-token\n{device_id}\n{challenge}").into_bytes()
}

impl Fleet {
    /// Enrolls a device from its signed request. A valid enrollment token makes it
    /// `accepted` at once (its labels and group apply); otherwise it waits `pending`.
    /// Enrolling again with the same key updates a pending device and reports the status.
    pub async fn enroll(&self, req: &EnrollRequest, now: i64) -> Result<EnrollOutcome> {
        if req.payload.len() > MAX_ENROLL_BYTES {
            return Err(FleetError::invalid("payload", format!("larger than {MAX_ENROLL_BYTES} bytes")));
        }
        let p: EnrollPayload = serde_json::from_str(&req.payload)
            .map_err(|e| FleetError::invalid("payload", format!("not an enrollment payload: {e}")))?;
        verify_ed25519(&p.public_key, req.payload.as_bytes(), &req.signature, "enrollment")?;
        check_name("payload.identity", &p.identity, false)?;
        p.inventory.validate("payload.inventory")?;
        check_labels("payload.labels", &p.labels)?;
        if p.timestamp_ms.abs_diff(now) > self.config.enroll_clock_skew_ms {
            return Err(FleetError::invalid(
                "payload.timestamp_ms",
                format!(
                    "{} ms away from the server's clock (at most {})",
                    p.timestamp_ms - now,
                    self.config.enroll_clock_skew_ms
                ),
            ));
        }
        let id = device_id_of(&p.public_key);
        let inventory = inventory_json(&p.inventory)?;
        if let Some(existing) = self.device_opt(&id).await? {
            if existing.status == DeviceStatus::Pending {
                sqlx::query("UPDATE fleet_devices SET inventory = $1, identity = $2 WHERE id = $3")
                    .bind(&inventory)
                    .bind(&p.identity)
                    .bind(&id)
                    .execute(&self.pool)
                    .await?;
            }
            return Ok(EnrollOutcome { device_id: id, status: existing.status });
        }
        let mut tx = self.pool.begin().await?;
        let (status, labels, group, token_id) = match &p.enrollment_token {
            None => (DeviceStatus::Pending, BTreeMap::new(), None, None),
            Some(t) => {
                let (tid, secret) = split_token(t, "kzet").ok_or_else(|| {
                    FleetError::Unauthenticated("payload.enrollment_token: not an enrollment token".into())
                })?;
                // Write first: the use is taken (or not) in the statement that takes SQLite's
                // write lock, so a deferred transaction never has to upgrade a stale read.
                let bad = || {
                    FleetError::Unauthenticated("payload.enrollment_token: unknown, expired, revoked or used up".into())
                };
                let used = sqlx::query(
                    "UPDATE fleet_enrollment_tokens SET uses_left = uses_left - 1 \
                     WHERE id = $1 AND hash = $2 AND uses_left > 0 AND expires_ms > $3 AND revoked_ms IS NULL",
                )
                .bind(tid)
                .bind(sha256_hex(secret.as_bytes()))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if used.rows_affected() != 1 {
                    return Err(bad());
                }
                let row = sqlx::query("SELECT labels, static_group FROM fleet_enrollment_tokens WHERE id = $1")
                    .bind(tid)
                    .fetch_one(&mut *tx)
                    .await?;
                let mut labels: BTreeMap<String, String> =
                    rows::parse_json("token labels", &row.try_get::<String, _>("labels")?)?;
                for (k, v) in &p.labels {
                    labels.entry(k.clone()).or_insert_with(|| v.clone());
                }
                (
                    DeviceStatus::Accepted,
                    labels,
                    row.try_get::<Option<String>, _>("static_group")?,
                    Some(tid.to_owned()),
                )
            }
        };
        let labels_json = serde_json::to_string(&labels).map_err(|e| FleetError::Internal(e.to_string()))?;
        let inserted = sqlx::query(
            "INSERT INTO fleet_devices (id, public_key, identity, status, labels, inventory, static_group, enrolled_with, \
             created_ms, decided_ms, decided_by, online) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&id)
        .bind(&p.public_key)
        .bind(&p.identity)
        .bind(status.as_str())
        .bind(&labels_json)
        .bind(&inventory)
        .bind(&group)
        .bind(&token_id)
        .bind(now)
        .bind((status == DeviceStatus::Accepted).then_some(now))
        .bind(token_id.as_ref().map(|t| format!("enrollment_token:{t}")))
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            // Raced with itself: the other request enrolled it.
            drop(tx);
            let d = self.device(&id).await?;
            return Ok(EnrollOutcome { device_id: id, status: d.status });
        }
        tx.commit().await?;
        self.events.emit(
            EventKind::DeviceEnrolled,
            Some(&id),
            None,
            serde_json::json!({"status": status.as_str(), "identity": p.identity}),
        );
        Ok(EnrollOutcome { device_id: id, status })
    }

    /// A device, or `NotFound`.
    pub async fn device(&self, id: &str) -> Result<Device> {
        self.device_opt(id).await?.ok_or_else(|| FleetError::NotFound(format!("no device {}", quote(id))))
    }

    async fn device_opt(&self, id: &str) -> Result<Option<Device>> {
        let row = sqlx::query(&format!("SELECT {DEVICE_COLUMNS}, log FROM fleet_devices WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let mut d = row.as_ref().map(rows::device).transpose()?;
        if let (Some(d), Some(r)) = (&mut d, &row) {
            d.log = r.try_get("log")?;
            self.overlay_liveness(d);
        }
        Ok(d)
    }

    fn overlay_liveness(&self, d: &mut Device) {
        if let Some(l) = self.live.lock().get(&d.id) {
            d.last_seen_ms = Some(l.last_seen_ms);
            d.online = l.online;
        }
    }

    /// Devices, optionally only those a selector matches, at most `limit`.
    pub async fn devices(
        &self,
        status: Option<DeviceStatus>,
        select: Option<&Selector>,
        limit: usize,
    ) -> Result<Vec<Device>> {
        let all = self.all_devices(status).await?;
        let mut out = match select {
            None => all,
            Some(s) => self.select_from(all, s).await?,
        };
        out.truncate(limit);
        Ok(out)
    }

    async fn all_devices(&self, status: Option<DeviceStatus>) -> Result<Vec<Device>> {
        let rows = match status {
            Some(s) => {
                sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM fleet_devices WHERE status = $1 ORDER BY id"))
                    .bind(s.as_str())
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM fleet_devices ORDER BY id"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let mut out = rows.iter().map(rows::device).collect::<Result<Vec<_>>>()?;
        for d in &mut out {
            self.overlay_liveness(d);
        }
        Ok(out)
    }

    /// The devices of `all` that `s` picks.
    async fn select_from(&self, all: Vec<Device>, s: &Selector) -> Result<Vec<Device>> {
        Ok(match s {
            Selector::Devices(ids) => {
                if ids.len() > MAX_BULK {
                    return Err(FleetError::invalid("devices", format!("at most {MAX_BULK} ids")));
                }
                let want: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
                all.into_iter().filter(|d| want.contains(d.id.as_str())).collect()
            }
            Selector::Filter(f) => {
                let f = parse_filter("filter", f)?;
                all.into_iter().filter(|d| f.matches(Some(&d.filter_doc()))).collect()
            }
            Selector::Group(g) => {
                let row = sqlx::query("SELECT kind, filter FROM fleet_groups WHERE name = $1")
                    .bind(g)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| FleetError::NotFound(format!("no group {}", quote(g))))?;
                let kind: String = row.try_get("kind")?;
                if kind == "dynamic" {
                    let text: Option<String> = row.try_get("filter")?;
                    let f = parse_filter("group.filter", text.as_deref().unwrap_or_default())?;
                    all.into_iter().filter(|d| f.matches(Some(&d.filter_doc()))).collect()
                } else {
                    all.into_iter().filter(|d| d.group.as_deref() == Some(g.as_str())).collect()
                }
            }
        })
    }

    /// Accepted devices a selector picks (a deployment's target).
    pub async fn select_accepted(&self, s: &Selector) -> Result<Vec<Device>> {
        let all = self.all_devices(Some(DeviceStatus::Accepted)).await?;
        self.select_from(all, s).await
    }

    /// An admin's decision: `accepted`, `rejected` or `revoked`. Takes effect at once:
    /// a rejected or revoked device's token stops working on its next request.
    pub async fn decide(&self, id: &str, to: DeviceStatus, by: &str, now: i64) -> Result<Device> {
        let d = self.device(id).await?;
        let allowed = match to {
            DeviceStatus::Accepted => matches!(d.status, DeviceStatus::Pending | DeviceStatus::Rejected),
            DeviceStatus::Rejected => d.status == DeviceStatus::Pending,
            DeviceStatus::Revoked => d.status == DeviceStatus::Accepted,
            _ => false,
        };
        if !allowed {
            return Err(FleetError::Conflict(format!(
                "device {} is {}; cannot make it {}",
                d.id,
                d.status.as_str(),
                to.as_str()
            )));
        }
        let r = sqlx::query(
            "UPDATE fleet_devices SET status = $1, decided_ms = $2, decided_by = $3, token_hash = NULL, token_expires_ms = NULL, \
             online = 0 WHERE id = $4 AND status = $5",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(by)
        .bind(id)
        .bind(d.status.as_str())
        .execute(&self.pool)
        .await?;
        if r.rows_affected() != 1 {
            return Err(FleetError::Conflict(format!("device {id} changed meanwhile; try again")));
        }
        if to != DeviceStatus::Accepted {
            self.live.lock().remove(id);
        }
        self.events.emit(
            EventKind::DeviceStatusChanged,
            Some(id),
            None,
            serde_json::json!({"from": d.status.as_str(), "to": to.as_str(), "by": by}),
        );
        self.device(id).await
    }

    /// Step one of getting a token: a fresh challenge for an accepted device.
    pub async fn challenge(&self, id: &str, now: i64) -> Result<String> {
        self.require_accepted(id).await?;
        let c = random_hex(32);
        sqlx::query("UPDATE fleet_devices SET challenge = $1, challenge_expires_ms = $2 WHERE id = $3")
            .bind(&c)
            .bind(now + CHALLENGE_TTL_MS)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(c)
    }

    async fn require_accepted(&self, id: &str) -> Result<Device> {
        let d = self
            .device_opt(id)
            .await?
            .ok_or_else(|| FleetError::Unauthenticated(format!("no device {}", quote(id))))?;
        if d.status != DeviceStatus::Accepted {
            return Err(FleetError::Unauthenticated(format!("device {} is {}", d.id, d.status.as_str())));
        }
        Ok(d)
    }

    /// Step two: the device signs [`token_message`] of the challenge; a short-lived token
    /// comes back (and replaces the previous one). The challenge works once.
    pub async fn token(&self, id: &str, challenge: &str, signature: &str, now: i64) -> Result<DeviceToken> {
        let d = self.require_accepted(id).await?;
        let row = sqlx::query("SELECT challenge, challenge_expires_ms FROM fleet_devices WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        let stored: Option<String> = row.try_get("challenge")?;
        let exp: Option<i64> = row.try_get("challenge_expires_ms")?;
        let ok = stored.as_deref().is_some_and(|s| same(s, challenge)) && exp.is_some_and(|e| e > now);
        if !ok {
            return Err(FleetError::Unauthenticated("challenge: unknown, used or expired; ask for a new one".into()));
        }
        verify_ed25519(&d.public_key, &token_message(id, challenge), signature, "token")?;
        let secret = random_hex(32);
        let expires = now + self.config.device_token_ttl_ms as i64;
        let r = sqlx::query(
            "UPDATE fleet_devices SET token_hash = $1, token_expires_ms = $2, challenge = NULL, challenge_expires_ms = NULL \
             WHERE id = $3 AND challenge = $4 AND status = 'accepted'",
        )
        .bind(sha256_hex(secret.as_bytes()))
        .bind(expires)
        .bind(id)
        .bind(challenge)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() != 1 {
            return Err(FleetError::Unauthenticated("challenge: used meanwhile; ask for a new one".into()));
        }
        Ok(DeviceToken {
            token: format!("kzd_{id}_{secret}"),
            expires_ms: expires,
            heartbeat_ms: self.config.heartbeat_ms,
        })
    }

    /// The device a bearer token stands for; `Unauthenticated` when it is malformed,
    /// unknown, expired, replaced, or the device is no longer accepted.
    pub async fn authenticate(&self, token: &str, now: i64) -> Result<String> {
        let (id, secret) =
            split_token(token, "kzd").ok_or_else(|| FleetError::Unauthenticated("not a device token".into()))?;
        let row = sqlx::query("SELECT status, token_hash, token_expires_ms FROM fleet_devices WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let bad = || FleetError::Unauthenticated("device token unknown, expired or replaced".into());
        let row = row.ok_or_else(bad)?;
        let status: String = row.try_get("status")?;
        if status != "accepted" {
            return Err(FleetError::Unauthenticated(format!("device {id} is {status}")));
        }
        let hash: Option<String> = row.try_get("token_hash")?;
        let exp: Option<i64> = row.try_get("token_expires_ms")?;
        if !hash.is_some_and(|h| same(&h, &sha256_hex(secret.as_bytes()))) || exp.is_none_or(|e| e <= now) {
            return Err(bad());
        }
        Ok(id.to_owned())
    }

    /// A heartbeat: the device is online (an event if it was offline); its inventory is
    /// stored when it changed. Returns the interval with ±20% jitter.
    pub async fn heartbeat(
        &self,
        id: &str,
        inventory: Option<&Inventory>,
        log: Option<&str>,
        now: i64,
    ) -> Result<HeartbeatReply> {
        if let Some(log) = log {
            let log = crate::deploy::tail(log, crate::MAX_LOG_BYTES);
            sqlx::query("UPDATE fleet_devices SET log = $1 WHERE id = $2 AND log <> $1")
                .bind(log)
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        if let Some(inv) = inventory {
            inv.validate("inventory")?;
            let text = inventory_json(inv)?;
            sqlx::query("UPDATE fleet_devices SET inventory = $1 WHERE id = $2 AND inventory <> $1")
                .bind(&text)
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        let came_back = {
            let mut live = self.live.lock();
            let l = live.entry(id.to_owned()).or_insert(Liveness { last_seen_ms: now, online: false, dirty: true });
            l.last_seen_ms = now;
            l.dirty = true;
            let back = !l.online;
            l.online = true;
            back
        };
        if came_back {
            sqlx::query("UPDATE fleet_devices SET online = 1, last_seen_ms = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
            self.events.emit(EventKind::DeviceOnline, Some(id), None, serde_json::json!({}));
        }
        let hb = self.config.heartbeat_ms;
        let jitter = {
            use ring::rand::SecureRandom;
            let mut b = [0u8; 2];
            let _ = ring::rand::SystemRandom::new().fill(&mut b);
            u16::from_le_bytes(b) as f64 / u16::MAX as f64
        };
        let next = (hb as f64 * (0.8 + 0.4 * jitter)).round() as u64;
        Ok(HeartbeatReply { heartbeat_ms: hb, next_heartbeat_ms: next })
    }

    /// Writes pending heartbeat times and marks devices silent for three intervals
    /// offline (one event each).
    pub(crate) async fn flush_liveness(&self, now: i64) -> Result<Vec<Event>> {
        let limit = 3 * self.config.heartbeat_ms as i64;
        let (seen, gone) = {
            let mut live = self.live.lock();
            let mut seen = Vec::new();
            let mut gone = Vec::new();
            for (id, l) in live.iter_mut() {
                if l.dirty {
                    seen.push((id.clone(), l.last_seen_ms));
                    l.dirty = false;
                }
                if l.online && now - l.last_seen_ms > limit {
                    l.online = false;
                    gone.push((id.clone(), l.last_seen_ms));
                }
            }
            (seen, gone)
        };
        if !seen.is_empty() || !gone.is_empty() {
            let mut tx = self.pool.begin().await?;
            for (id, at) in &seen {
                sqlx::query("UPDATE fleet_devices SET last_seen_ms = $1 WHERE id = $2")
                    .bind(at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            for (id, _) in &gone {
                sqlx::query("UPDATE fleet_devices SET online = 0 WHERE id = $1").bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
        Ok(gone
            .into_iter()
            .map(|(id, last)| {
                self.events.emit(EventKind::DeviceOffline, Some(&id), None, serde_json::json!({"last_seen_ms": last}))
            })
            .collect())
    }

    /// Makes an enrollment token; the secret is in the result only.
    pub async fn create_enrollment_token(&self, t: &NewEnrollmentToken, by: &str, now: i64) -> Result<EnrollmentToken> {
        if t.ttl_seconds == 0 || t.ttl_seconds > 30 * 86_400 {
            return Err(FleetError::invalid("ttl_seconds", "must be in [1, 2592000]"));
        }
        if t.uses == 0 || t.uses > 1_000_000 {
            return Err(FleetError::invalid("uses", "must be in [1, 1000000]"));
        }
        check_labels("labels", &t.labels)?;
        if let Some(g) = &t.group {
            self.require_static_group(g).await?;
        }
        let id = random_hex(8);
        let secret = random_hex(32);
        let expires = now + t.ttl_seconds as i64 * 1000;
        sqlx::query(
            "INSERT INTO fleet_enrollment_tokens (id, hash, labels, static_group, expires_ms, uses_left, created_by, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(sha256_hex(secret.as_bytes()))
        .bind(serde_json::to_string(&t.labels).map_err(|e| FleetError::Internal(e.to_string()))?)
        .bind(&t.group)
        .bind(expires)
        .bind(t.uses as i64)
        .bind(by)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(EnrollmentToken {
            token: Some(format!("kzet_{id}_{secret}")),
            id,
            expires_ms: expires,
            uses_left: t.uses,
            labels: t.labels.clone(),
            group: t.group.clone(),
            created_by: by.to_owned(),
            revoked_ms: None,
        })
    }

    /// Enrollment tokens, newest first (without secrets).
    pub async fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>> {
        let rows = sqlx::query(
            "SELECT id, labels, static_group, expires_ms, uses_left, created_by, revoked_ms FROM fleet_enrollment_tokens \
             ORDER BY created_ms DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(EnrollmentToken {
                    id: r.try_get("id")?,
                    token: None,
                    expires_ms: r.try_get("expires_ms")?,
                    uses_left: r.try_get::<i64, _>("uses_left")?.max(0) as u64,
                    labels: rows::parse_json("token labels", &r.try_get::<String, _>("labels")?)?,
                    group: r.try_get("static_group")?,
                    created_by: r.try_get("created_by")?,
                    revoked_ms: r.try_get("revoked_ms")?,
                })
            })
            .collect()
    }

    /// Revokes an enrollment token (devices already enrolled with it stay).
    pub async fn revoke_enrollment_token(&self, id: &str, now: i64) -> Result<()> {
        let r = sqlx::query("UPDATE fleet_enrollment_tokens SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(FleetError::NotFound(format!("no active enrollment token {}", quote(id))));
        }
        Ok(())
    }

    async fn require_static_group(&self, g: &str) -> Result<()> {
        let kind: Option<String> = sqlx::query("SELECT kind FROM fleet_groups WHERE name = $1")
            .bind(g)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("kind"))
            .transpose()?;
        match kind.as_deref() {
            Some("static") => Ok(()),
            Some(_) => {
                Err(FleetError::invalid("group", format!("{} is dynamic: its filter decides membership", quote(g))))
            }
            None => Err(FleetError::NotFound(format!("no group {}", quote(g)))),
        }
    }

    /// Creates a group.
    pub async fn create_group(&self, g: &NewGroup, by: &str, now: i64) -> Result<GroupInfo> {
        check_name("name", &g.name, false)?;
        if let Some(f) = &g.filter {
            parse_filter("filter", f)?;
        }
        let kind = if g.filter.is_some() { "dynamic" } else { "static" };
        let r = sqlx::query(
            "INSERT INTO fleet_groups (name, kind, filter, created_by, created_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&g.name)
        .bind(kind)
        .bind(&g.filter)
        .bind(by)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(FleetError::Conflict(format!("group {} exists already", quote(&g.name))));
        }
        self.group(&g.name).await
    }

    /// A group with its current member count.
    pub async fn group(&self, name: &str) -> Result<GroupInfo> {
        let row = sqlx::query("SELECT name, kind, filter, created_ms FROM fleet_groups WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no group {}", quote(name))))?;
        let devices = self.select_accepted(&Selector::Group(name.to_owned())).await?.len() as u64;
        Ok(GroupInfo {
            name: row.try_get("name")?,
            kind: row.try_get("kind")?,
            filter: row.try_get("filter")?,
            devices,
            created_ms: row.try_get("created_ms")?,
        })
    }

    /// Every group.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>> {
        let names: Vec<String> = sqlx::query("SELECT name FROM fleet_groups ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("name"))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            out.push(self.group(&n).await?);
        }
        Ok(out)
    }

    /// Deletes a group; devices in a static one leave it.
    pub async fn delete_group(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("DELETE FROM fleet_groups WHERE name = $1").bind(name).execute(&mut *tx).await?;
        if r.rows_affected() == 0 {
            return Err(FleetError::NotFound(format!("no group {}", quote(name))));
        }
        sqlx::query("UPDATE fleet_devices SET static_group = NULL WHERE static_group = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A bulk operation: a dry run reports the matched count and a sample; the real one
    /// must repeat that count in `expect_count` (409 when the match changed meanwhile).
    pub async fn bulk(&self, b: &BulkAction, by: &str, now: i64) -> Result<BulkOutcome> {
        match b.action.as_str() {
            "label" => check_labels("labels", &b.labels)?,
            "move" => {
                if let Some(g) = &b.group {
                    self.require_static_group(g).await?;
                }
            }
            "decommission" => {}
            other => {
                return Err(FleetError::invalid(
                    "action",
                    format!("{} is not label, move or decommission", quote(other)),
                ));
            }
        }
        let all = self.all_devices(None).await?;
        let matched: Vec<Device> = self
            .select_from(all, &b.select)
            .await?
            .into_iter()
            .filter(|d| d.status != DeviceStatus::Decommissioned)
            .collect();
        let sample = matched.iter().take(20).map(|d| d.id.clone()).collect();
        let out = |changed| BulkOutcome { matched: matched.len() as u64, changed, sample };
        if b.dry_run {
            return Ok(out(0));
        }
        match b.expect_count {
            None => {
                return Err(FleetError::invalid(
                    "expect_count",
                    "required: run with dry_run first and pass the count it showed",
                ));
            }
            Some(n) if n != matched.len() as u64 => {
                return Err(FleetError::Conflict(format!(
                    "the selector now matches {} devices, not the {n} expected; nothing changed",
                    matched.len()
                )));
            }
            Some(_) => {}
        }
        let mut tx = self.pool.begin().await?;
        for d in &matched {
            match b.action.as_str() {
                "label" => {
                    let mut labels = d.labels.clone();
                    for (k, v) in &b.labels {
                        if v.is_empty() {
                            labels.remove(k);
                        } else {
                            labels.insert(k.clone(), v.clone());
                        }
                    }
                    check_labels("labels", &labels)?;
                    sqlx::query("UPDATE fleet_devices SET labels = $1 WHERE id = $2")
                        .bind(serde_json::to_string(&labels).map_err(|e| FleetError::Internal(e.to_string()))?)
                        .bind(&d.id)
                        .execute(&mut *tx)
                        .await?;
                }
                "move" => {
                    sqlx::query("UPDATE fleet_devices SET static_group = $1 WHERE id = $2")
                        .bind(&b.group)
                        .bind(&d.id)
                        .execute(&mut *tx)
                        .await?;
                }
                _ => {
                    sqlx::query(
                        "UPDATE fleet_devices SET status = 'decommissioned', decided_ms = $1, decided_by = $2, token_hash = NULL, \
                         token_expires_ms = NULL, online = 0 WHERE id = $3",
                    )
                    .bind(now)
                    .bind(by)
                    .bind(&d.id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        if b.action == "decommission" {
            let mut live = self.live.lock();
            for d in &matched {
                live.remove(&d.id);
            }
        }
        Ok(out(matched.len() as u64))
    }
}

fn inventory_json(inv: &Inventory) -> Result<String> {
    let s = serde_json::to_string(inv).map_err(|e| FleetError::Internal(e.to_string()))?;
    if s.len() > MAX_INVENTORY_BYTES {
        return Err(FleetError::invalid("inventory", format!("larger than {MAX_INVENTORY_BYTES} bytes")));
    }
    Ok(s)
}

fn parse_filter(field: &str, text: &str) -> Result<Filter> {
    if text.len() > 4096 {
        return Err(FleetError::invalid(field, "longer than 4096 bytes"));
    }
    Filter::parse(text).map_err(|e| FleetError::invalid(field, e.to_string()))
}

/// A client-given name quoted and cut for a message.
pub(crate) fn quote(s: &str) -> String {
    let cut: String = s.chars().take(100).collect();
    if cut.len() < s.len() { format!("{cut:?}…") } else { format!("{cut:?}") }
}
