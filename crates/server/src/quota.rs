//! Per-key quotas (`docs/quotas.md`): live records and their bytes in the collections a
//! key may write to, and authenticated requests per UTC day.
//!
//! Records and bytes are checked before an upsert writes anything, under a lock per key
//! held until the write is done, so one key's concurrent writes cannot pass its quota
//! together. On a single node the use of a collection is counted once (a pass over its
//! live records: count, and id + 4 × dim + text + metadata JSON of each) and kept with
//! the collection's sequence number; the key's own upserts then update it from what
//! they replaced, and any other write (another key's, a delete) makes the next check
//! count again. On a cluster node records come from the cluster's eventual count, every
//! record of a batch counts as new, and bytes are not available.
//!
//! Requests per day are counted in memory per key, flushed with the usage counters to
//! `key_usage_daily`, and read back from there when a key is first seen on a day and
//! every [`crate::state::KEY_CACHE_TTL`] after (so servers sharing a PostgreSQL store
//! see each other's counts within that time).

use crate::auth::Principal;
use crate::error::ApiError;
use crate::meta::KeyQuota;
use crate::model::{QuotaSettings, RecordIn};
use crate::state::{AppState, KEY_CACHE_TTL, now_ms};
use axum::http::StatusCode;
use kernelize_store::Record;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Milliseconds in a UTC day.
const DAY_MS: i64 = 86_400_000;

/// What the collections of a key hold, as last counted.
#[derive(Debug, Clone, Copy)]
struct Use {
    /// The collection's sequence number when counted.
    seq: u64,
    records: u64,
    bytes: u64,
}

/// A key's requests on one UTC day, as this server knows them.
#[derive(Debug, Clone, Copy)]
struct Day {
    day: i64,
    used: i64,
    read: Instant,
}

/// The quota bookkeeping of a server.
#[derive(Debug, Default)]
pub struct Quotas {
    /// Per collection name.
    counted: Mutex<HashMap<String, Use>>,
    /// Per key with a `requests_per_day` quota.
    days: Mutex<HashMap<String, Day>>,
    /// Requests per (key, day) not yet flushed to the metadata store (every key).
    pending: Mutex<HashMap<(String, i64), i64>>,
    /// Per key with a write quota: held from the check to the end of the write.
    write_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An upsert that passed the check, to account for once written.
#[derive(Debug)]
pub struct Admitted {
    collection: String,
    /// The sequence number the check counted at.
    seq: u64,
    records: u64,
    bytes: u64,
    new_records: u64,
    /// Bytes added, less the bytes of the records replaced (may be negative).
    delta_bytes: i64,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

/// Bytes of a record as the quota counts them: id, vector, text, metadata JSON.
pub fn record_bytes(r: &Record) -> u64 {
    let meta = r.metadata.as_ref().map_or(0, |m| serde_json::to_vec(m).map_or(0, |v| v.len()));
    (r.id.len() + r.vector.len() * 4 + r.text.as_ref().map_or(0, String::len) + meta) as u64
}

/// Bytes of a record still to be written (its vector may still have to be embedded).
fn incoming_bytes(r: &RecordIn, dim: usize) -> u64 {
    let meta = r.metadata.as_ref().map_or(0, |m| serde_json::to_vec(m).map_or(0, |v| v.len()));
    (r.id.len() + dim * 4 + r.text.as_ref().map_or(0, String::len) + meta) as u64
}

fn to_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn to_u64(v: Option<i64>) -> Option<u64> {
    v.map(|v| u64::try_from(v).unwrap_or(0))
}

impl From<QuotaSettings> for KeyQuota {
    fn from(q: QuotaSettings) -> KeyQuota {
        KeyQuota { records: to_i64(q.records), bytes: to_i64(q.bytes), requests_per_day: to_i64(q.requests_per_day) }
    }
}

impl From<KeyQuota> for QuotaSettings {
    fn from(q: KeyQuota) -> QuotaSettings {
        QuotaSettings {
            records: to_u64(q.records),
            bytes: to_u64(q.bytes),
            requests_per_day: to_u64(q.requests_per_day),
        }
    }
}

/// 403 `quota_exceeded` for `what` of key `key`.
fn exceeded(key: &str, what: &str, limit: i64, used: u64, adds: u64, unit: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "quota_exceeded",
        format!(
            "key {key}: quota.{what} is {limit}; the collections it may write to hold {used} {unit} and this \
             upsert would add {adds}; delete records or ask an admin to raise the quota"
        ),
    )
}

/// Counts the live records of a collection and their bytes (a pass over every record).
fn count(snap: &kernelize_store::Snapshot) -> Result<(u64, u64), ApiError> {
    let (mut records, mut bytes) = (0u64, 0u64);
    for r in snap.scan(None) {
        records += 1;
        bytes += record_bytes(&*r?);
    }
    Ok((records, bytes))
}

impl Quotas {
    /// Counts `n` requests of `key_id` now (for `requests_per_day`; flushed later).
    pub(crate) fn add_requests(&self, key_id: &str, n: i64) {
        let day = now_ms().div_euclid(DAY_MS);
        *self.pending.lock().entry((key_id.to_owned(), day)).or_insert(0) += n;
    }

    /// Takes the requests counted since the last flush: `(key, day, requests)`.
    pub(crate) fn take_pending(&self) -> Vec<(String, i64, i64)> {
        std::mem::take(&mut *self.pending.lock()).into_iter().map(|((k, d), n)| (k, d, n)).collect()
    }

    /// Gives back requests a failed flush could not write.
    pub(crate) fn restore_pending(&self, rows: Vec<(String, i64, i64)>) {
        let mut p = self.pending.lock();
        for (k, d, n) in rows {
            *p.entry((k, d)).or_insert(0) += n;
        }
    }

    /// Forgets what was counted of a collection (dropped, or created anew).
    pub(crate) fn forget_collection(&self, name: &str) {
        self.counted.lock().remove(name);
    }

    fn write_lock(&self, key_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.write_locks.lock().entry(key_id.to_owned()).or_default().clone()
    }
}

impl AppState {
    /// The quotas of the principal's key (none for single sign-on sessions, which have no key row).
    pub async fn key_quota(&self, p: &Principal) -> Result<KeyQuota, ApiError> {
        if p.sso_session.is_some() {
            return Ok(KeyQuota::default());
        }
        Ok(self.key_row(&p.key_id).await?.map(|r| r.quota).unwrap_or_default())
    }

    /// Counts one request against the key's `requests_per_day`: 429 `quota_exceeded`
    /// with `Retry-After` until the next UTC midnight once the day's are used up.
    pub async fn take_daily_request(&self, p: &Principal) -> Result<(), ApiError> {
        let Some(limit) = self.key_quota(p).await?.requests_per_day else { return Ok(()) };
        let key = p.key_id.as_str();
        let now = now_ms();
        let day = now.div_euclid(DAY_MS);
        let fresh = self.quotas.days.lock().get(key).is_some_and(|d| d.day == day && d.read.elapsed() < KEY_CACHE_TTL);
        if !fresh {
            let stored = self.meta.requests_on(key, day).await?;
            let pending = self.quotas.pending.lock().get(&(key.to_owned(), day)).copied().unwrap_or(0);
            let mut days = self.quotas.days.lock();
            let d = days.entry(key.to_owned()).or_insert(Day { day, used: 0, read: Instant::now() });
            if d.day != day {
                *d = Day { day, used: 0, read: Instant::now() };
            }
            // Counts only grow within a day: never forget what this server counted.
            d.used = d.used.max(stored.saturating_add(pending));
            d.read = Instant::now();
        }
        let mut days = self.quotas.days.lock();
        let Some(d) = days.get_mut(key) else { return Ok(()) };
        if d.used >= limit {
            let retry = u64::try_from(DAY_MS - now.rem_euclid(DAY_MS)).unwrap_or(0).div_ceil(1000);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!(
                    "key {key}: quota.requests_per_day is {limit} and {} requests were made today (UTC); \
                     retry after midnight UTC, in {retry} s",
                    d.used
                ),
            )
            .retry_after(retry));
        }
        d.used += 1;
        Ok(())
    }

    /// Checks an upsert of `records` into `collection` (of `dim` dimensions) against the
    /// key's `records` and `bytes` quotas before anything is written. `Ok(None)`: the key
    /// has none. The returned admission holds the key's write lock: keep it until the
    /// write is done, then pass it to [`AppState::written`].
    pub async fn admit_upsert(
        self: &Arc<Self>,
        p: &Principal,
        collection: &str,
        records: &[RecordIn],
        dim: usize,
    ) -> Result<Option<Admitted>, ApiError> {
        let quota = self.key_quota(p).await?;
        if !quota.limits_writes() {
            return Ok(None);
        }
        let lock = self.quotas.write_lock(&p.key_id).lock_owned().await;
        // The last record of an id wins, as in the write itself.
        let mut batch: HashMap<&str, u64> = HashMap::new();
        for r in records {
            batch.insert(r.id.as_str(), incoming_bytes(r, dim));
        }
        let admitted = match &self.cluster {
            Some(node) => {
                let mut used = 0u64;
                let names: Vec<String> = node
                    .list()
                    .await?
                    .into_iter()
                    .map(|c| c.name)
                    .filter(|n| p.scope.contains(n) || n == collection)
                    .collect();
                for name in names {
                    used += node.describe(&name, kernelize_cluster::Consistency::Eventual).await?.records;
                }
                Admitted {
                    collection: collection.to_owned(),
                    seq: 0,
                    records: used,
                    bytes: 0,
                    new_records: batch.len() as u64,
                    delta_bytes: 0,
                    _lock: lock,
                }
            }
            None => {
                let st = self.clone();
                let target = collection.to_owned();
                let scope = p.scope.clone();
                let ids: Vec<(String, u64)> = batch.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
                let (seq, records, bytes, new_records, delta_bytes) = crate::engine::blocking(move || {
                    let mut records = 0u64;
                    let mut bytes = 0u64;
                    let (mut seq, mut new_records, mut delta) = (0, 0u64, 0i64);
                    for c in st.db.collections() {
                        let name = c.name().to_owned();
                        if !scope.contains(&name) && name != target {
                            continue;
                        }
                        let snap = c.snapshot();
                        let known = st.quotas.counted.lock().get(&name).copied().filter(|u| u.seq == snap.seq());
                        let u = match known {
                            Some(u) => u,
                            None => {
                                let (r, b) = count(&snap)?;
                                let u = Use { seq: snap.seq(), records: r, bytes: b };
                                st.quotas.counted.lock().insert(name.clone(), u);
                                u
                            }
                        };
                        records += u.records;
                        bytes += u.bytes;
                        if name == target {
                            seq = u.seq;
                            for (id, size) in &ids {
                                match snap.get(id)? {
                                    Some(old) => delta += *size as i64 - record_bytes(&old) as i64,
                                    None => {
                                        new_records += 1;
                                        delta += *size as i64;
                                    }
                                }
                            }
                        }
                    }
                    Ok((seq, records, bytes, new_records, delta))
                })
                .await?;
                Admitted {
                    collection: collection.to_owned(),
                    seq,
                    records,
                    bytes,
                    new_records,
                    delta_bytes,
                    _lock: lock,
                }
            }
        };
        let a = admitted;
        if let Some(limit) = quota.records
            && a.new_records > 0
            && a.records.saturating_add(a.new_records) > u64::try_from(limit).unwrap_or(0)
        {
            return Err(exceeded(&p.key_id, "records", limit, a.records, a.new_records, "records"));
        }
        if let Some(limit) = quota.bytes
            && self.cluster.is_none()
            && a.delta_bytes > 0
            && a.bytes.saturating_add(a.delta_bytes as u64) > u64::try_from(limit).unwrap_or(0)
        {
            return Err(exceeded(&p.key_id, "bytes", limit, a.bytes, a.delta_bytes as u64, "bytes"));
        }
        Ok(Some(a))
    }

    /// Accounts an admitted upsert written as batch `seq`: when no other write came
    /// between the count and this one, the count moves on by what it added.
    pub fn written(&self, a: Admitted, seq: u64) {
        if self.cluster.is_some() || seq != a.seq + 1 {
            return;
        }
        let mut counted = self.quotas.counted.lock();
        if let Some(u) = counted.get_mut(&a.collection)
            && u.seq == a.seq
        {
            let records = u.records + a.new_records;
            let bytes = u.bytes.saturating_add_signed(a.delta_bytes);
            *u = Use { seq, records, bytes };
        }
    }

    /// Checks a quota an admin sets: each part at most `i64::MAX` (what the store
    /// holds); on a cluster node `bytes` is not available.
    pub(crate) fn check_quota(&self, q: &QuotaSettings) -> Result<(), ApiError> {
        for (what, v) in [("records", q.records), ("bytes", q.bytes), ("requests_per_day", q.requests_per_day)] {
            if v.is_some_and(|v| i64::try_from(v).is_err()) {
                return Err(ApiError::invalid(format!("quota.{what} must be at most {}", i64::MAX)));
            }
        }
        if self.cluster.is_some() && q.bytes.is_some() {
            return Err(ApiError::invalid(
                "quota.bytes is not available on a cluster node (the cluster does not report stored bytes); \
                 use quota.records",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_bytes_counts_id_vector_text_and_metadata() {
        let r = Record {
            id: "ab".into(),
            vector: vec![0.0; 3],
            text: Some("hello".into()),
            metadata: serde_json::json!({"a": 1}).as_object().cloned(),
        };
        assert_eq!(record_bytes(&r), 2 + 12 + 5 + 7);
        let q = QuotaSettings { records: Some(5), bytes: None, requests_per_day: Some(u64::MAX) };
        let k = KeyQuota::from(q);
        assert_eq!(k.requests_per_day, Some(i64::MAX));
        assert_eq!(QuotaSettings::from(KeyQuota { requests_per_day: Some(7), ..k }).records, Some(5));
    }
}
