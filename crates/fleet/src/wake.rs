//! Which devices a deployment gives something to fetch right now — the list the server
//! wakes early (over MQTT) when a phase starts or a revert is ordered. Waking is only a
//! hint: a device that misses it finds the same offer at its next poll.

use crate::Fleet;
use crate::devices::quote;
use crate::error::{FleetError, Result};
use sqlx::Row;

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
