//! Which devices a deployment gives something to fetch right now — the list the server
//! wakes early (over MQTT) when a phase starts or a revert is ordered. Waking is only a
//! hint: a device that misses it finds the same offer at its next poll.

use crate::Fleet;
use crate::devices::quote;
use crate::error::{FleetError, Result};
use sqlx::Row;

/// The MQTT topic a device's wake-ups are published on (the server publishes, the agent
/// subscribes).
pub fn wake_topic(device: &str) -> String {
    format!("kernelize/devices/{device}/wake")
}

/// `mqtt://host[:port]` (plain TCP, no credentials, no path) → (host, port; 1883 by
/// default). The error says what is wrong with the URL.
pub fn parse_mqtt_url(u: &str) -> std::result::Result<(String, u16), String> {
    let bad = |why: &str| format!("{u:?}: {why}; expected mqtt://host[:port]");
    let rest = u.strip_prefix("mqtt://").ok_or_else(|| bad("not an mqtt:// URL"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['@', '/', '?', '#']) {
        return Err(bad("no credentials, path or query"));
    }
    let (host, port) =
        match rest.rsplit_once(':').filter(|(h, _)| !h.ends_with(':') && (!h.starts_with('[') || h.ends_with(']'))) {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("the port is not a number 0-65535"))?),
            None => (rest, 1883),
        };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host.to_owned(), port))
}

impl Fleet {
    /// Devices that would get an offer from `deployment` if they polled now, in rank
    /// order: while it runs, those still queued in a phase up to the current one and not
    /// waiting out a retry backoff; after an abort with `revert`, those whose revert is
    /// ordered but not yet offered (the plan's start and end times are not looked at). Empty
    /// for a deployment that offers nothing (awaiting approval, paused, completed, …).
    /// At most [`FleetConfig::max_targets`](crate::FleetConfig::max_targets) ids.
    pub async fn devices_to_wake(&self, deployment: &str) -> Result<Vec<String>> {
        let exists = sqlx::query("SELECT state FROM fleet_deployments WHERE id = $1")
            .bind(deployment)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Err(FleetError::NotFound(format!("no deployment {}", quote(deployment))));
        }
        let rows = sqlx::query(
            "SELECT e.device_id AS device FROM fleet_executions e JOIN fleet_deployments d ON d.id = e.deployment_id \
             WHERE e.deployment_id = $1 AND ((d.state = 'running' AND e.state = 'queued' AND e.phase <= d.current_phase \
             AND e.next_retry_ms <= $3) OR e.revert = 'pending') ORDER BY e.rank LIMIT $2",
        )
        .bind(deployment)
        .bind(i64::try_from(self.config.max_targets).unwrap_or(i64::MAX))
        .bind(crate::now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| r.try_get::<String, _>("device").map_err(FleetError::from)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls_parse() {
        assert_eq!(parse_mqtt_url("mqtt://broker").unwrap(), ("broker".to_owned(), 1883));
        assert_eq!(parse_mqtt_url("mqtt://127.0.0.1:11883/").unwrap(), ("127.0.0.1".to_owned(), 11883));
        assert_eq!(parse_mqtt_url("mqtt://[::1]:1884").unwrap(), ("::1".to_owned(), 1884));
        for bad in ["http://127.0.0.1:1883", "mqtt://u:p@h:1", "mqtt://h:1/x", "mqtt://", "mqtt://h:x", "mqtt://h:1?q"]
        {
            assert!(parse_mqtt_url(bad).is_err(), "{bad}");
        }
    }
}
