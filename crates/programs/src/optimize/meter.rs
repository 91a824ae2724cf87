//! The budget: every backend call of a compile (program runs and reflection alike) goes
//! through a [`Metered`] backend that reserves the call before making it, so the call
//! budget is never exceeded even with calls in flight in parallel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::Budget;
use crate::error::{Error, Result};
use crate::lm::{Backend, DynBackend, Request, Response, TokenSink};

/// Calls and tokens spent, against the limits.
#[derive(Debug)]
pub(crate) struct Meter {
    calls: AtomicU64,
    tokens: AtomicU64,
    max_calls: Option<u64>,
    max_tokens: Option<u64>,
    deadline: Option<Instant>,
    start: Instant,
    cancelled: AtomicBool,
    stopped_by: parking_lot::Mutex<Option<String>>,
}

impl Meter {
    /// A meter for a budget, its clock starting now.
    pub(crate) fn new(budget: &Budget) -> Result<Meter> {
        let start = Instant::now();
        let deadline = match budget.seconds {
            None => None,
            Some(s) if s.is_finite() && s >= 0.0 => Some(start + Duration::from_secs_f64(s.min(1e9))),
            Some(s) => return Err(Error::invalid(format!("budget: seconds must be a number of 0 or more, not {s}"))),
        };
        Ok(Meter {
            calls: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            max_calls: budget.calls,
            max_tokens: budget.tokens,
            deadline,
            start,
            cancelled: AtomicBool::new(false),
            stopped_by: parking_lot::Mutex::new(None),
        })
    }

    /// A meter without limits (counting only).
    pub(crate) fn unlimited() -> Meter {
        Meter {
            calls: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            max_calls: None,
            max_tokens: None,
            deadline: None,
            start: Instant::now(),
            cancelled: AtomicBool::new(false),
            stopped_by: parking_lot::Mutex::new(None),
        }
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::SeqCst)
    }

    pub(crate) fn seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// What stopped the run, if anything did: `calls`, `tokens`, `time` or `cancelled`.
    pub(crate) fn stopped_by(&self) -> Option<String> {
        self.stopped_by.lock().clone()
    }

    fn stop(&self, why: &str) {
        let mut s = self.stopped_by.lock();
        if s.is_none() {
            *s = Some(why.to_owned());
        }
    }

    /// Stops every later call.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.stop("cancelled");
    }

    /// Checks the limits without spending anything: the error a call would get now.
    pub(crate) fn check(&self) -> Result<()> {
        if self.cancelled.load(Ordering::SeqCst) {
            self.stop("cancelled");
            return Err(Error::Cancelled);
        }
        if let Some(why) = self.stopped_by() {
            return Err(Error::Budget(why));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.stop("time");
            return Err(Error::Budget("time".into()));
        }
        if self.max_tokens.is_some_and(|m| self.tokens() >= m) {
            self.stop("tokens");
            return Err(Error::Budget("tokens".into()));
        }
        if self.max_calls.is_some_and(|m| self.calls() >= m) {
            self.stop("calls");
            return Err(Error::Budget("calls".into()));
        }
        Ok(())
    }

    /// Reserves one call; the time left, when there is a deadline.
    fn reserve(&self) -> Result<Option<Duration>> {
        self.check()?;
        if let Some(max) = self.max_calls {
            let got = self.calls.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| (c < max).then_some(c + 1));
            if got.is_err() {
                self.stop("calls");
                return Err(Error::Budget("calls".into()));
            }
        } else {
            self.calls.fetch_add(1, Ordering::SeqCst);
        }
        Ok(self.deadline.map(|d| d.saturating_duration_since(Instant::now())))
    }

    fn spend(&self, tokens: u64) {
        self.tokens.fetch_add(tokens, Ordering::SeqCst);
    }
}

/// A backend whose calls are counted and refused once the budget is spent.
pub(crate) struct Metered {
    inner: DynBackend,
    meter: Arc<Meter>,
}

impl Metered {
    pub(crate) fn wrap(inner: DynBackend, meter: Arc<Meter>) -> DynBackend {
        Arc::new(Metered { inner, meter })
    }
}

async fn within<T>(left: Option<Duration>, meter: &Meter, f: BoxFuture<'_, Result<T>>) -> Result<T> {
    match left {
        None => f.await,
        Some(left) => match tokio::time::timeout(left, f).await {
            Ok(r) => r,
            Err(_) => {
                meter.stop("time");
                Err(Error::Budget("time".into()))
            }
        },
    }
}

impl Backend for Metered {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn complete<'a>(&'a self, req: &'a Request, sink: Option<TokenSink>) -> BoxFuture<'a, Result<Response>> {
        Box::pin(async move {
            let left = self.meter.reserve()?;
            let r = within(left, &self.meter, self.inner.complete(req, sink)).await?;
            self.meter.spend(r.usage.total());
            Ok(r)
        })
    }

    fn score<'a>(&'a self, req: &'a Request, continuations: &'a [String]) -> BoxFuture<'a, Result<Vec<f64>>> {
        Box::pin(async move {
            let left = self.meter.reserve()?;
            within(left, &self.meter, self.inner.score(req, continuations)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_call_budget() {
        let m = Meter::new(&Budget { calls: Some(3), ..Budget::default() }).unwrap();
        for _ in 0..3 {
            m.reserve().unwrap();
        }
        assert!(matches!(m.reserve(), Err(Error::Budget(_))));
        assert_eq!(m.calls(), 3);
        assert_eq!(m.stopped_by().as_deref(), Some("calls"));
    }

    #[test]
    fn parallel_reservations_never_exceed() {
        let m = Arc::new(Meter::new(&Budget { calls: Some(100), ..Budget::default() }).unwrap());
        let ok = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        if m.reserve().is_ok() {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(ok.load(Ordering::SeqCst), 100);
        assert_eq!(m.calls(), 100);
    }

    #[test]
    fn tokens_time_and_cancel_stop() {
        let m = Meter::new(&Budget { tokens: Some(10), ..Budget::default() }).unwrap();
        m.reserve().unwrap();
        m.spend(10);
        assert!(m.reserve().is_err());
        assert_eq!(m.stopped_by().as_deref(), Some("tokens"));
        let m = Meter::new(&Budget { seconds: Some(0.0), ..Budget::default() }).unwrap();
        assert!(m.reserve().is_err());
        assert_eq!(m.stopped_by().as_deref(), Some("time"));
        let m = Meter::unlimited();
        m.cancel();
        assert!(matches!(m.reserve(), Err(Error::Cancelled)));
        assert!(Meter::new(&Budget { seconds: Some(f64::NAN), ..Budget::default() }).is_err());
    }
}
