//! The resilience layer: [`Resilient`] wraps a chain of backends behind the same
//! [`Backend`] trait and adds what calls to a model over a network need.
//!
//! For each call, in order:
//!
//! 1. **Cache.** When a [`ResponseCache`] is configured, the answer stored for the request
//!    (under each backend of the chain, in order) is returned at once: `cached: true`,
//!    `attempts: 0`, zero usage.
//! 2. **Fallback chain.** Backends are tried in order; the next one is tried when a
//!    backend fails (after its retries), times out or has its circuit open.
//!    [`Response::backend`] names the one that answered.
//! 3. **Circuit breaker,** one per backend: closed → open after
//!    [`ResilienceConfig::breaker_threshold`] consecutive failed attempts → after
//!    [`ResilienceConfig::breaker_cooldown`], half-open: one probe call goes through;
//!    its success closes the circuit, its failure reopens it. While open, the backend is
//!    not contacted: the attempt fails at once with [`Error::CircuitOpen`].
//! 4. **Retries** of retryable failures (connection errors, 429, 5xx, timeouts), with
//!    exponential backoff and full jitter, waiting at least the server's `Retry-After`
//!    (a `Retry-After` over [`ResilienceConfig::max_retry_after`] moves on to the next
//!    backend instead). A streamed call is retried only while no token has reached the
//!    caller's sink; after the first token an error is the caller's.
//! 5. **Timeouts:** each attempt is bounded by [`ResilienceConfig::attempt_timeout`] and
//!    the whole call by [`ResilienceConfig::call_timeout`]; a timed-out attempt's future
//!    is dropped, which cancels the local model's job and closes an HTTP connection.
//! 6. **Concurrency cap:** at most [`ResilienceConfig::max_concurrency`] attempts of the
//!    wrapper are in flight at once (a semaphore; a call waiting for a slot waits inside
//!    its call timeout).
//!
//! Answers that do not fit the signature are not backend failures: the module layer
//! retries those ([`crate::module::Predict::forward`]). Only non-streamed, successful
//! answers are stored in the cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;

use crate::cache::{CachedAnswer, ResponseCache, cache_key};
use crate::error::{Error, Result};
use crate::lm::{Backend, DynBackend, Request, Response, TokenSink, Usage};

/// Settings of a [`Resilient`] wrapper.
#[derive(Debug, Clone, PartialEq)]
pub struct ResilienceConfig {
    /// Bound on one attempt at one backend.
    pub attempt_timeout: Duration,
    /// Bound on the whole call: waiting for a slot, every attempt, backoff and
    /// fallbacks. `None`: only the attempts are bounded.
    pub call_timeout: Option<Duration>,
    /// Retries per backend after the first attempt (retryable failures only).
    pub max_retries: u32,
    /// Backoff before retry `n` (from 0) is uniform in `[0, min(backoff_max, backoff_base · 2ⁿ)]`.
    pub backoff_base: Duration,
    /// Cap of the backoff.
    pub backoff_max: Duration,
    /// Longest `Retry-After` waited for; a longer one moves on to the next backend.
    pub max_retry_after: Duration,
    /// Consecutive failed attempts that open a backend's circuit.
    pub breaker_threshold: u32,
    /// How long a circuit stays open before one probe call is let through.
    pub breaker_cooldown: Duration,
    /// Most attempts in flight at once over the whole wrapper.
    pub max_concurrency: usize,
    /// Seed of the jitter (`None`: from the OS).
    pub seed: Option<u64>,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        ResilienceConfig {
            attempt_timeout: Duration::from_secs(60),
            call_timeout: Some(Duration::from_secs(180)),
            max_retries: 2,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            max_concurrency: 8,
            seed: None,
        }
    }
}

impl ResilienceConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        if self.attempt_timeout.is_zero() {
            return Err(Error::invalid("resilience: attempt_timeout must be over zero"));
        }
        if self.call_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid("resilience: call_timeout must be over zero"));
        }
        if self.max_retries > 20 {
            return Err(Error::invalid("resilience: max_retries is at most 20"));
        }
        if self.backoff_base > self.backoff_max {
            return Err(Error::invalid("resilience: backoff_base is over backoff_max"));
        }
        if self.breaker_threshold == 0 {
            return Err(Error::invalid("resilience: breaker_threshold is at least 1"));
        }
        if self.max_concurrency == 0 || self.max_concurrency > Semaphore::MAX_PERMITS {
            return Err(Error::invalid("resilience: max_concurrency is at least 1"));
        }
        Ok(())
    }
}

/// A backend's circuit, as [`Resilient::circuits`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed {
        /// Consecutive failed attempts so far.
        failures: u32,
    },
    /// Calls fail at once without contacting the backend.
    Open {
        /// Time until the next call may probe.
        retry_in: Duration,
    },
    /// The cool-down is over: the next call is a probe (or one is in flight).
    HalfOpen,
}

enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker { state: Mutex::new(State::Closed { failures: 0 }), threshold, cooldown }
    }

    /// Lets an attempt through, or fails at once.
    fn acquire(&self, backend: &str) -> Result<Permit<'_>> {
        let mut s = self.state.lock();
        let now = Instant::now();
        match *s {
            State::Closed { .. } => Ok(Permit { breaker: self, probe: false, settled: false }),
            State::Open { until } if now < until => {
                Err(Error::CircuitOpen { backend: backend.to_owned(), retry_in: until - now })
            }
            State::Open { .. } | State::HalfOpen { probing: false } => {
                *s = State::HalfOpen { probing: true };
                tracing::info!(backend, "circuit half-open: probing");
                Ok(Permit { breaker: self, probe: true, settled: false })
            }
            State::HalfOpen { probing: true } => {
                Err(Error::CircuitOpen { backend: backend.to_owned(), retry_in: Duration::ZERO })
            }
        }
    }

    fn report(&self) -> CircuitState {
        match *self.state.lock() {
            State::Closed { failures } => CircuitState::Closed { failures },
            State::Open { until } => {
                let now = Instant::now();
                if now < until { CircuitState::Open { retry_in: until - now } } else { CircuitState::HalfOpen }
            }
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

/// One attempt's pass through a breaker; settle it with the outcome.
struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Permit<'_> {
    fn success(mut self) {
        self.settled = true;
        *self.breaker.state.lock() = State::Closed { failures: 0 };
    }

    fn failure(mut self, backend: &str, e: &Error) {
        self.settled = true;
        let mut s = self.breaker.state.lock();
        if !e.is_backend_failure() {
            // Not the backend's fault (a bad request, a cancelled call): no change,
            // except that a probe slot is given back.
            if self.probe {
                *s = State::HalfOpen { probing: false };
            }
            return;
        }
        let open = match *s {
            State::Closed { failures } => failures + 1 >= self.breaker.threshold,
            State::HalfOpen { .. } => true,
            State::Open { .. } => false,
        };
        if open {
            tracing::warn!(backend, cooldown = ?self.breaker.cooldown, "circuit open");
            *s = State::Open { until: Instant::now() + self.breaker.cooldown };
        } else if let State::Closed { failures } = &mut *s {
            *failures += 1;
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // A probe dropped unsettled (its call was cancelled or timed out from above):
        // the next call may probe.
        if !self.settled && self.probe {
            *self.breaker.state.lock() = State::HalfOpen { probing: false };
        }
    }
}

/// Whether the chain moves on to the next backend after this error (otherwise the error
/// is the request's and goes straight to the caller).
fn falls_through(e: &Error) -> bool {
    matches!(e, Error::Backend { .. } | Error::Timeout { .. } | Error::CircuitOpen { .. } | Error::Model(_))
}

/// A fallback chain of backends with timeouts, retries, circuit breakers, a concurrency
/// cap and an optional response cache — itself a [`Backend`]. See the [module
/// docs](self).
pub struct Resilient {
    chain: Vec<(DynBackend, Breaker)>,
    config: ResilienceConfig,
    cache: Option<Arc<dyn ResponseCache>>,
    slots: Semaphore,
    rng: Mutex<StdRng>,
    name: String,
}

impl std::fmt::Debug for Resilient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resilient")
            .field("name", &self.name)
            .field("chain", &self.chain.iter().map(|(b, _)| b.name()).collect::<Vec<_>>())
            .field("config", &self.config)
            .field("cache", &self.cache.as_ref().map(|c| c.name()))
            .finish_non_exhaustive()
    }
}

impl Resilient {
    /// Wraps `chain` (tried in order). Named after its backends: the one name for one
    /// backend, `a|b|…` for a chain.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty chain or bad settings.
    pub fn new(chain: Vec<DynBackend>, config: ResilienceConfig) -> Result<Resilient> {
        config.validate()?;
        if chain.is_empty() {
            return Err(Error::invalid("resilience: the fallback chain has no backend"));
        }
        let name = chain.iter().map(|b| b.name()).collect::<Vec<_>>().join("|");
        let rng = match config.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Ok(Resilient {
            chain: chain
                .into_iter()
                .map(|b| (b, Breaker::new(config.breaker_threshold, config.breaker_cooldown)))
                .collect(),
            slots: Semaphore::new(config.max_concurrency),
            rng: Mutex::new(rng),
            cache: None,
            config,
            name,
        })
    }

    /// Consults (and fills) a response cache.
    #[must_use]
    pub fn with_cache(mut self, cache: Arc<dyn ResponseCache>) -> Resilient {
        self.cache = Some(cache);
        self
    }

    /// Renames the wrapper.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Resilient {
        self.name = name.into();
        self
    }

    /// The settings.
    pub fn config(&self) -> &ResilienceConfig {
        &self.config
    }

    /// Each backend's name and circuit, in chain order.
    pub fn circuits(&self) -> Vec<(String, CircuitState)> {
        self.chain.iter().map(|(b, br)| (b.name().to_owned(), br.report())).collect()
    }

    fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self.config.backoff_base.saturating_mul(1u32 << retry.min(20));
        let cap = exp.min(self.config.backoff_max);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(if nanos == 0 { 0 } else { self.rng.lock().random_range(0..=nanos) });
        jitter.max(retry_after.unwrap_or_default())
    }

    async fn with_call_timeout<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        match self.config.call_timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .unwrap_or_else(|_| Err(Error::Timeout { backend: self.name.clone(), timeout: t })),
            None => fut.await,
        }
    }

    async fn cached(&self, req: &Request, sink: Option<&TokenSink>, start: Instant) -> Option<Response> {
        let cache = self.cache.as_ref()?;
        for (b, _) in &self.chain {
            let key = cache_key(b.name(), req).ok()?;
            match cache.get(&key).await {
                Ok(Some(a)) => {
                    if let Some(s) = sink
                        && !a.text.is_empty()
                    {
                        let _ = s.send(a.text.clone());
                    }
                    return Some(Response {
                        text: a.text,
                        usage: Usage::default(),
                        backend: a.backend,
                        model: a.model,
                        latency: start.elapsed(),
                        cached: true,
                        attempts: 0,
                        finish_reason: a.finish_reason,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(cache = cache.name(), error = %e, "response cache lookup failed; asking the backend");
                    return None;
                }
            }
        }
        None
    }

    async fn store(&self, backend: &str, req: &Request, resp: &Response) {
        let Some(cache) = &self.cache else { return };
        let Ok(key) = cache_key(backend, req) else { return };
        let answer = CachedAnswer {
            text: resp.text.clone(),
            backend: resp.backend.clone(),
            model: resp.model.clone(),
            finish_reason: resp.finish_reason.clone(),
        };
        if let Err(e) = cache.put(&key, &answer).await {
            tracing::warn!(cache = cache.name(), error = %e, "response cache store failed");
        }
    }

    /// One attempt at one backend, bounded by the attempt timeout. Tokens are forwarded
    /// to the caller's sink as they come; `sent` says whether any reached it.
    async fn attempt(
        &self,
        backend: &DynBackend,
        req: &Request,
        sink: Option<&TokenSink>,
        sent: &AtomicBool,
    ) -> Result<Response> {
        let t = self.config.attempt_timeout;
        let call = async {
            let Some(caller) = sink else { return backend.complete(req, None).await };
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let mut call = backend.complete(req, Some(tx));
            let forward = |tok: String| {
                sent.store(true, Ordering::Relaxed);
                let _ = caller.send(tok);
            };
            loop {
                tokio::select! {
                    biased;
                    Some(tok) = rx.recv() => forward(tok),
                    r = &mut call => {
                        while let Ok(tok) = rx.try_recv() {
                            forward(tok);
                        }
                        break r;
                    }
                }
            }
        };
        tokio::time::timeout(t, call)
            .await
            .unwrap_or_else(|_| Err(Error::Timeout { backend: backend.name().to_owned(), timeout: t }))
    }

    async fn run(&self, req: &Request, sink: Option<TokenSink>) -> Result<Response> {
        let start = Instant::now();
        if let Some(hit) = self.cached(req, sink.as_ref(), start).await {
            return Ok(hit);
        }
        let sent = AtomicBool::new(false);
        let mut attempts = 0u32;
        let mut last_err = None;
        for (backend, breaker) in &self.chain {
            for retry in 0..=self.config.max_retries {
                let permit = match breaker.acquire(backend.name()) {
                    Ok(p) => p,
                    Err(e) => {
                        last_err = Some(e);
                        break;
                    }
                };
                let slot = self.slots.acquire().await.map_err(|_| Error::Cancelled)?;
                attempts += 1;
                let outcome = self.attempt(backend, req, sink.as_ref(), &sent).await;
                drop(slot);
                let e = match outcome {
                    Ok(mut resp) => {
                        permit.success();
                        if sink.is_none() {
                            self.store(backend.name(), req, &resp).await;
                        }
                        resp.attempts = attempts;
                        resp.latency = start.elapsed();
                        return Ok(resp);
                    }
                    Err(e) => e,
                };
                permit.failure(backend.name(), &e);
                if sent.load(Ordering::Relaxed) || !falls_through(&e) {
                    // Tokens reached the caller (a retry would repeat them), or the
                    // request itself is at fault.
                    return Err(e);
                }
                tracing::warn!(backend = backend.name(), attempt = retry + 1, error = %e, "backend attempt failed");
                let retry_after = match &e {
                    Error::Backend { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let give_up = !e.is_retryable()
                    || retry == self.config.max_retries
                    || retry_after.is_some_and(|d| d > self.config.max_retry_after);
                last_err = Some(e);
                if give_up {
                    break;
                }
                tokio::time::sleep(self.backoff(retry, retry_after)).await;
            }
        }
        Err(last_err.unwrap_or_else(|| Error::invalid("resilience: the fallback chain has no backend")))
    }

    async fn run_score(&self, req: &Request, continuations: &[String]) -> Result<Vec<f64>> {
        let mut last_err = None;
        for (backend, breaker) in &self.chain {
            let permit = match breaker.acquire(backend.name()) {
                Ok(p) => p,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            let _slot = self.slots.acquire().await.map_err(|_| Error::Cancelled)?;
            let t = self.config.attempt_timeout;
            let r = tokio::time::timeout(t, backend.score(req, continuations))
                .await
                .unwrap_or_else(|_| Err(Error::Timeout { backend: backend.name().to_owned(), timeout: t }));
            match &r {
                Ok(_) => permit.success(),
                Err(e) => permit.failure(backend.name(), e),
            }
            return r;
        }
        Err(last_err.unwrap_or_else(|| Error::invalid("resilience: the fallback chain has no backend")))
    }
}

impl Backend for Resilient {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(&'a self, req: &'a Request, sink: Option<TokenSink>) -> BoxFuture<'a, Result<Response>> {
        Box::pin(self.with_call_timeout(self.run(req, sink)))
    }

    fn score<'a>(&'a self, req: &'a Request, continuations: &'a [String]) -> BoxFuture<'a, Result<Vec<f64>>> {
        Box::pin(self.with_call_timeout(self.run_score(req, continuations)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let b = Breaker::new(2, Duration::from_millis(20));
        let fail = Error::Backend { backend: "x".into(), message: "down".into(), retryable: true, retry_after: None };
        b.acquire("x").unwrap().failure("x", &fail);
        assert_eq!(b.report(), CircuitState::Closed { failures: 1 });
        b.acquire("x").unwrap().failure("x", &fail);
        assert!(matches!(b.report(), CircuitState::Open { .. }));
        assert!(matches!(b.acquire("x"), Err(Error::CircuitOpen { .. })));
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(b.report(), CircuitState::HalfOpen);
        let probe = b.acquire("x").unwrap();
        // Only one probe at a time.
        assert!(matches!(b.acquire("x"), Err(Error::CircuitOpen { .. })));
        // A probe dropped unsettled gives its slot back.
        drop(probe);
        let probe = b.acquire("x").unwrap();
        probe.failure("x", &fail);
        assert!(matches!(b.report(), CircuitState::Open { .. }));
        std::thread::sleep(Duration::from_millis(25));
        b.acquire("x").unwrap().success();
        assert_eq!(b.report(), CircuitState::Closed { failures: 0 });
        // Errors that are not the backend's do not count.
        b.acquire("x").unwrap().failure("x", &Error::invalid("bad request"));
        assert_eq!(b.report(), CircuitState::Closed { failures: 0 });
    }

    #[test]
    fn backoff_is_capped_jittered_and_honours_retry_after() {
        let cfg = ResilienceConfig {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(300),
            seed: Some(7),
            ..ResilienceConfig::default()
        };
        let r = Resilient::new(vec![], cfg.clone());
        assert!(r.is_err());
        struct Nothing;
        impl Backend for Nothing {
            fn name(&self) -> &str {
                "nothing"
            }
            fn complete<'a>(&'a self, _: &'a Request, _: Option<TokenSink>) -> BoxFuture<'a, Result<Response>> {
                Box::pin(async { Err(Error::invalid("nothing")) })
            }
        }
        let r = Resilient::new(vec![Arc::new(Nothing)], cfg).unwrap();
        let mut distinct = std::collections::HashSet::new();
        for retry in 0..10 {
            let d = r.backoff(retry, None);
            assert!(d <= Duration::from_millis(100 << retry.min(2)), "{retry}: {d:?}");
            distinct.insert(d);
            assert!(r.backoff(retry, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
        }
        assert!(distinct.len() > 5, "jitter: {distinct:?}");
    }

    #[test]
    fn config_checked() {
        assert!(ResilienceConfig::default().validate().is_ok());
        assert!(ResilienceConfig { max_concurrency: 0, ..ResilienceConfig::default() }.validate().is_err());
        assert!(ResilienceConfig { breaker_threshold: 0, ..ResilienceConfig::default() }.validate().is_err());
        assert!(
            ResilienceConfig { attempt_timeout: Duration::ZERO, ..ResilienceConfig::default() }.validate().is_err()
        );
    }
}
