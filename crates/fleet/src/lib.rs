//! The fleet control plane: devices and their enrollment, groups, releases, staged
//! deployments with approval, automatic abort, timeouts and retries, and the per-device
//! execution records — the logic only. The server (`crates/server`) puts it behind
//! `/v1/fleet/…` and drives [`Fleet::tick`]; the metadata lives in the server's store
//! (SQLite or PostgreSQL, migration `0004_fleet.sql`) and is reached through the
//! [`sqlx::AnyPool`] handed to [`Fleet::new`].
//!
//! ```no_run
//! # async fn demo(pool: sqlx::AnyPool) -> kernelize_fleet::Result<()> {
//! use kernelize_fleet::{Fleet, FleetConfig};
//! let fleet = Fleet::new(pool, FleetConfig::default());
//! fleet.load().await?; // liveness of known devices
//! let events = fleet.tick(kernelize_fleet::now_ms()).await?; // timeouts, aborts, phases, offline devices
//! # let _ = events; Ok(()) }
//! ```

#[cfg(feature = "client")]
pub mod client;
mod deploy;
mod devices;
mod distribution;
mod error;
mod events;
pub mod model;
pub mod plan;
mod rows;
mod wake;

pub use deploy::{
    CreateDeployment, DeploymentInfo, EditDeployment, ExecutionInfo, NewRelease, Offer, OfferKind, ReleaseInfo,
    StatusOutcome,
};
pub use devices::{
    BulkAction, BulkOutcome, DeviceToken, EnrollOutcome, EnrollPayload, EnrollRequest, EnrollmentToken, GroupInfo,
    HeartbeatReply, NewEnrollmentToken, NewGroup,
};
pub use distribution::{Distribution, KernelFile, PublishRequest, ReleaseKeys, blob_error};
pub use error::{FleetError, Result};
pub use events::{Event, EventKind, Events};
pub use model::*;
pub use wake::{parse_mqtt_url, wake_topic};

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The heartbeat interval devices are told to keep (±20% jitter), ms. A device that
    /// misses three is offline.
    pub heartbeat_ms: u64,
    /// Lifetime of a device token, ms.
    pub device_token_ttl_ms: u64,
    /// Deployments need approval by a principal other than their creator.
    pub require_approval: bool,
    /// How far a device's enrollment timestamp may be from the server's clock, ms.
    pub enroll_clock_skew_ms: u64,
    /// Most devices a single deployment may target.
    pub max_targets: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            heartbeat_ms: 60_000,
            device_token_ttl_ms: 3_600_000,
            require_approval: true,
            enroll_clock_skew_ms: 600_000,
            max_targets: 1_000_000,
        }
    }
}

/// What the server remembers between heartbeats about a device (flushed to the store
/// every tick, so 10,000 devices heartbeating cost one transaction a tick, not 1,000).
#[derive(Debug, Clone)]
struct Liveness {
    last_seen_ms: i64,
    online: bool,
    /// `last_seen_ms` not yet written.
    dirty: bool,
}

/// The control plane over one metadata store.
#[derive(Debug, Clone)]
pub struct Fleet {
    pool: sqlx::AnyPool,
    config: Arc<FleetConfig>,
    live: Arc<Mutex<HashMap<String, Liveness>>>,
    events: Events,
    dist: Option<Distribution>,
}

/// Now, unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Fleet {
    /// A control plane over `pool` (migrated by the server's migrator).
    pub fn new(pool: sqlx::AnyPool, config: FleetConfig) -> Fleet {
        Fleet { pool, config: Arc::new(config), live: Arc::default(), events: Events::new(4096), dist: None }
    }

    /// With a blob store and release key: releases can be published, offers are signed.
    pub fn with_distribution(mut self, dist: Distribution) -> Fleet {
        self.dist = Some(dist);
        self
    }

    /// The settings.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// The event stream (server-sent events, webhooks).
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Reads the liveness of accepted devices from the store (at startup).
    pub async fn load(&self) -> Result<()> {
        use sqlx::Row;
        let rows = sqlx::query("SELECT id, last_seen_ms, online FROM fleet_devices WHERE status = 'accepted'")
            .fetch_all(&self.pool)
            .await?;
        let mut live = self.live.lock();
        for r in rows {
            let id: String = r.try_get("id")?;
            let last: Option<i64> = r.try_get("last_seen_ms")?;
            let online: i64 = r.try_get("online")?;
            if let Some(last) = last {
                live.insert(id, Liveness { last_seen_ms: last, online: online != 0, dirty: false });
            }
        }
        Ok(())
    }

    /// Periodic work, called by the server about four times a second: writes heartbeat
    /// times, marks silent devices offline, times out stuck executions, aborts deployments
    /// over their failure threshold, advances phases whose bake is over, ends deployments
    /// past their end time. Returns the events it emitted (per-device `execution_changed`
    /// events go to the stream only).
    pub async fn tick(&self, now: i64) -> Result<Vec<Event>> {
        let mut out = self.flush_liveness(now).await?;
        out.extend(self.tick_deployments(now).await?);
        Ok(out)
    }
}
