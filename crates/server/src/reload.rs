//! Reloading the configuration while the server runs (`kernelize serve` on SIGHUP).
//!
//! What can change live is held in one [`Live`] value behind an `ArcSwap`: `[limits]`
//! (all but `header_read_timeout_ms`, which the listener fixed at start),
//! `cors_origins`, `slow_query_ms` and `log_level`. A reload validates the new
//! configuration, builds a new `Live` (rate limiters are rebuilt only when their rates
//! change; the concurrency and event-stream semaphores are resized in place), swaps it
//! in, and audits `config.reload` with every change. Anything else that differs from the
//! configuration the server started with is logged as needing a restart and left alone.
//! A configuration that does not parse or validate changes nothing and is audited as
//! `config.reload_failed`.

use crate::config::Config;
use crate::state::{AppState, Live};
use anyhow::Context as _;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Settings of `[limits]` that only a restart changes (the listener's header timer).
const FIXED_LIMITS: &[&str] = &["header_read_timeout_ms"];

/// Top-level settings applied live (besides `[limits]`).
const LIVE_SETTINGS: &[&str] = &["cors_origins", "slow_query_ms", "log_level"];

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Settings applied, as `field old -> new`.
    pub applied: Vec<String>,
    /// Settings that differ from the running ones but need a restart (names only:
    /// their values may be secrets).
    pub restart_needed: Vec<String>,
}

impl Reloaded {
    /// The audit detail: every change, then what needs a restart.
    pub fn detail(&self) -> String {
        let mut d = if self.applied.is_empty() {
            "no live setting changed".to_owned()
        } else {
            format!("changed: {}", self.applied.join("; "))
        };
        if !self.restart_needed.is_empty() {
            d.push_str(&format!("; changed, needs a restart: {}", self.restart_needed.join(", ")));
        }
        d
    }
}

/// `value` as the audit detail shows it (strings without their JSON quotes).
fn shown(v: Option<&serde_json::Value>) -> String {
    match v {
        None => "-".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// Compares `old` (the running configuration, live parts as in force) with `new`.
fn diff(old: &Config, new: &Config) -> anyhow::Result<Reloaded> {
    let old = serde_json::to_value(old).context("encoding the running configuration")?;
    let new = serde_json::to_value(new).context("encoding the new configuration")?;
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        anyhow::bail!("a configuration did not encode as an object");
    };
    let mut out = Reloaded::default();
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let (o, n) = (old.get(name), new.get(name));
        if o == n {
            continue;
        }
        if name == "limits" {
            let empty = serde_json::Map::new();
            let ol = o.and_then(|v| v.as_object()).unwrap_or(&empty);
            let nl = n.and_then(|v| v.as_object()).unwrap_or(&empty);
            for (k, nv) in nl {
                let ov = ol.get(k);
                if ov == Some(nv) {
                    continue;
                }
                if FIXED_LIMITS.contains(&k.as_str()) {
                    out.restart_needed.push(format!("limits.{k}"));
                } else {
                    out.applied.push(format!("limits.{k} {} -> {}", shown(ov), shown(Some(nv))));
                }
            }
        } else if LIVE_SETTINGS.contains(&name.as_str()) {
            out.applied.push(format!("{name} {} -> {}", shown(o), shown(n)));
        } else {
            out.restart_needed.push(name.clone());
        }
    }
    Ok(out)
}

/// Changes a semaphore of `old` permits to `new`: adds permits at once; removes the free
/// ones at once and the rest as the requests holding them finish.
fn resize(sem: &Arc<Semaphore>, old: usize, new: usize) {
    if new > old {
        sem.add_permits(new - old);
    } else if new < old {
        let want = old - new;
        let rest = want - sem.forget_permits(want);
        if rest > 0 {
            let sem = sem.clone();
            let rest = u32::try_from(rest).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(p) = sem.acquire_many_owned(rest).await {
                    p.forget();
                }
            });
        }
    }
}

impl AppState {
    /// Applies a re-read configuration: validates it, swaps in its live settings, logs
    /// "configuration reloaded" and what needs a restart, and audits `config.reload`.
    /// An invalid one changes nothing, is logged and audited (`config.reload_failed`),
    /// and is returned as the error.
    pub async fn reload(&self, new: Config) -> anyhow::Result<Reloaded> {
        let _one = self.reload_lock.lock().await;
        let result = self.apply(new);
        match &result {
            Ok(r) => {
                tracing::info!(changed = %r.applied.join("; "), "configuration reloaded");
                if !r.restart_needed.is_empty() {
                    tracing::warn!(
                        fields = %r.restart_needed.join(", "),
                        "configuration changed, needs a restart (left as it was)"
                    );
                }
                let rid = format!("reload-{}", uuid::Uuid::new_v4());
                if let Err(e) = self.audit(&rid, "system", "config.reload", "config", "ok", &r.detail()).await {
                    tracing::error!(error = %e, "the audit entry of a configuration reload could not be written");
                }
            }
            Err(e) => self.reload_failed(e).await,
        }
        result
    }

    /// Logs and audits (`config.reload_failed`) a reload that changed nothing because
    /// the configuration was invalid.
    pub async fn reload_failed(&self, error: &anyhow::Error) {
        let text = format!("{error:#}");
        tracing::error!(error = %text, "configuration reload failed; the running configuration is unchanged");
        let rid = format!("reload-{}", uuid::Uuid::new_v4());
        if let Err(e) = self.audit(&rid, "system", "config.reload_failed", "config", "error", &text).await {
            tracing::error!(error = %e, "the audit entry of a failed configuration reload could not be written");
        }
    }

    fn apply(&self, mut new: Config) -> anyhow::Result<Reloaded> {
        new.validate()?;
        // Never read again after start (and not part of the file): kept as they are.
        new.master_key.clone_from(&self.config.master_key);
        let live = self.live.load_full();
        let mut running = self.config.clone();
        running.limits = live.limits.clone();
        running.cors_origins.clone_from(&live.cors_origins);
        running.slow_query_ms = live.slow_query_ms;
        running.log_level.clone_from(&live.log_level);
        let changes = diff(&running, &new)?;
        // What only a restart changes keeps its running value.
        new.limits.header_read_timeout_ms = live.limits.header_read_timeout_ms;
        if new.log_level != live.log_level && !crate::set_log_level(&new.log_level)? {
            tracing::warn!("log_level not applied: this process's logging was not set up by the server");
        }
        let next = Live::new(&new, Some(&live));
        resize(&self.inflight, live.limits.concurrency, next.limits.concurrency);
        resize(&self.event_streams, live.limits.max_event_streams, next.limits.max_event_streams);
        self.live.store(Arc::new(next));
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_live_changes_with_values_and_the_rest_by_name() {
        let old = Config::default();
        let mut new = Config::default();
        new.limits.rate_per_sec = 5;
        new.limits.header_read_timeout_ms = 1;
        new.cors_origins = vec!["https://a.example".into()];
        new.admin_key = Some("kz_secret0000000_SECRETSECRETSECRETSECRETSECRETSECRET".into());
        new.listen = "127.0.0.1:9".parse().unwrap_or(new.listen);
        let d = diff(&old, &new).unwrap_or_default();
        assert_eq!(d.applied, ["cors_origins [] -> [\"https://a.example\"]", "limits.rate_per_sec 1000 -> 5"]);
        assert_eq!(d.restart_needed, ["admin_key", "limits.header_read_timeout_ms", "listen"]);
        assert!(!d.detail().contains("SECRET"), "{}", d.detail());
        assert_eq!(diff(&old, &old.clone()).unwrap_or_default(), Reloaded::default());
    }

    #[tokio::test]
    async fn semaphores_shrink_as_permits_come_back() {
        let sem = Arc::new(Semaphore::new(4));
        let held = sem.clone().acquire_many_owned(3).await.unwrap_or_else(|e| panic!("{e}"));
        resize(&sem, 4, 2);
        assert_eq!(sem.available_permits(), 0);
        drop(held);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(sem.available_permits(), 2);
        resize(&sem, 2, 5);
        assert_eq!(sem.available_permits(), 5);
    }
}
