//! Stored rows to records, and small shared helpers (hashing, random ids, tokens).

use crate::error::{FleetError, Result};
use crate::model::{Device, DeviceStatus};
use sqlx::Row;
use sqlx::any::AnyRow;

pub(crate) const DEVICE_COLUMNS: &str =
    "id, public_key, identity, status, labels, inventory, static_group, created_ms, last_seen_ms, online";

fn json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| FleetError::Internal(format!("stored {what} is not valid: {e}")))
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    json(what, s)
}

pub(crate) fn device(r: &AnyRow) -> Result<Device> {
    let labels: String = r.try_get("labels")?;
    let inventory: String = r.try_get("inventory")?;
    let status: String = r.try_get("status")?;
    let online: i64 = r.try_get("online")?;
    Ok(Device {
        id: r.try_get("id")?,
        identity: r.try_get("identity")?,
        public_key: r.try_get("public_key")?,
        status: DeviceStatus::parse(&status)?,
        labels: json("labels", &labels)?,
        inventory: json("inventory", &inventory)?,
        group: r.try_get("static_group")?,
        created_ms: r.try_get("created_ms")?,
        last_seen_ms: r.try_get("last_seen_ms")?,
        online: online != 0,
        log: String::new(),
    })
}

/// SHA-256, lowercase hex.
pub(crate) fn sha256_hex(b: &[u8]) -> String {
    kernelize_bundle::Sha256::of(b).to_hex()
}

/// `n` random bytes as lowercase hex.
pub(crate) fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new().fill(&mut b).expect("the system RNG works");
    kernelize_bundle::hex(&b)
}

/// Constant-time equality of two strings of equal length (hex digests).
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Splits `<prefix>_<id>_<secret>` (the id itself has no `_`).
pub(crate) fn split_token<'a>(token: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = token.strip_prefix(prefix)?.strip_prefix('_')?;
    let (id, secret) = rest.rsplit_once('_')?;
    (!id.is_empty() && !secret.is_empty() && secret.len() <= 128).then_some((id, secret))
}
