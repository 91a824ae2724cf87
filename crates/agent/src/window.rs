//! Maintenance windows: when the device may switch kernels. A window opens at each
//! time a cron expression (5 fields, or 6 with seconds) names in the device's time
//! zone and stays open for a duration. Downloads happen at any time; swaps only inside.

use crate::error::{AgentError, Result};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use chrono_tz::Tz;
use croner::Cron;
use std::time::Duration;

/// A recurring window.
#[derive(Debug, Clone)]
pub struct Window {
    cron: Cron,
    expr: String,
    duration: ChronoDuration,
    tz: Tz,
}

impl Window {
    /// `expr` (e.g. `0 2 * * *`), how long each window lasts, and an IANA time zone
    /// (e.g. `Europe/Berlin`).
    pub fn new(expr: &str, duration: Duration, tz: &str) -> Result<Window> {
        let cron = Cron::new(expr)
            .with_seconds_optional()
            .parse()
            .map_err(|e| AgentError::Config(format!("--window {expr:?}: {e}")))?;
        let tz: Tz = tz.parse().map_err(|e| AgentError::Config(format!("--window-tz {tz:?}: {e}")))?;
        if duration.is_zero() {
            return Err(AgentError::Config("--window-minutes: a window must last at least one minute".into()));
        }
        let duration =
            ChronoDuration::from_std(duration).map_err(|e| AgentError::Config(format!("--window-minutes: {e}")))?;
        Ok(Window { cron, expr: expr.to_owned(), duration, tz })
    }

    /// Whether `now` is inside a window: some opening time `t` with `t <= now < t + duration`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        let from = (now - self.duration).with_timezone(&self.tz);
        match self.cron.find_next_occurrence(&from, false) {
            Ok(t) => t.with_timezone(&Utc) <= now,
            Err(_) => false,
        }
    }

    /// How long until the next window opens (zero when one is open).
    pub fn wait(&self, now: DateTime<Utc>) -> Duration {
        if self.is_open(now) {
            return Duration::ZERO;
        }
        match self.cron.find_next_occurrence(&now.with_timezone(&self.tz), false) {
            Ok(t) => (t.with_timezone(&Utc) - now).to_std().unwrap_or(Duration::ZERO),
            Err(_) => Duration::from_secs(3600),
        }
    }

    /// How it was given, for logs.
    pub fn describe(&self) -> String {
        format!("{} for {} min ({})", self.expr, self.duration.num_minutes(), self.tz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn windows_open_and_close_in_their_time_zone() {
        // 02:00-03:00 in Berlin (UTC+1 in January).
        let w = Window::new("0 2 * * *", Duration::from_secs(3600), "Europe/Berlin").unwrap();
        let at = |h, m| Utc.with_ymd_and_hms(2026, 1, 15, h, m, 0).unwrap();
        assert!(!w.is_open(at(0, 59)));
        assert!(w.is_open(at(1, 0)));
        assert!(w.is_open(at(1, 59)));
        assert!(!w.is_open(at(2, 0)));
        assert_eq!(w.wait(at(0, 30)), Duration::from_secs(1800));
        assert_eq!(w.wait(at(1, 30)), Duration::ZERO);
        assert!(Window::new("61 * * * *", Duration::from_secs(60), "UTC").is_err());
        assert!(Window::new("0 2 * * *", Duration::from_secs(60), "Mars/Olympus").is_err());
    }
}
