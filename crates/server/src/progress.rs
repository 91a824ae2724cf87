//! Live progress of background jobs (kernel builds, backups) and the server-sent event
//! streams that carry it (`GET /v1/kernels/{id}/events`, `GET /v1/backups/{id}/events`).
//!
//! A running job has one `watch` channel: the job sets its stage and fraction, a stream
//! wakes up and sends the job's whole current document. Nothing queues per connection —
//! a slow client skips intermediate values, never buffers them — and a stream sends at
//! most [`MIN_GAP`]-spaced events. Every event is the job as it is now, so a reconnect
//! (with or without `Last-Event-ID`) simply starts from the current state. When the job
//! ends its channel closes and the stream sends the final document and ends. Open
//! streams of every kind (these and `GET /v1/fleet/events`) count against
//! `limits.max_event_streams`; beyond, 503 `overloaded`.

use crate::error::ApiError;
use crate::state::AppState;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, watch};

/// Shortest time between two events of one job stream.
pub const MIN_GAP: Duration = Duration::from_millis(100);

/// Where a running job is: a stage name and the fraction done, 0–1.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stage {
    /// What it does now (`dedup`, `quantize`, …).
    pub stage: String,
    /// Done so far, 0–1.
    pub fraction: f32,
}

/// The progress channels of running jobs, by job id.
#[derive(Debug, Default)]
pub struct Jobs {
    running: Mutex<HashMap<String, Arc<watch::Sender<Stage>>>>,
}

impl Jobs {
    /// Registers a running job; the handle sets its progress. Call [`Jobs::finish`]
    /// once its outcome is recorded.
    pub fn start(&self, id: &str, stage: &str) -> Arc<watch::Sender<Stage>> {
        let tx = Arc::new(watch::Sender::new(Stage { stage: stage.to_owned(), fraction: 0.0 }));
        self.running.lock().insert(id.to_owned(), tx.clone());
        tx
    }

    /// Where job `id` is, if it runs.
    pub fn get(&self, id: &str) -> Option<Stage> {
        self.running.lock().get(id).map(|tx| tx.borrow().clone())
    }

    /// Forgets job `id`: once the job's own handle is gone too, its streams send the
    /// final state and end.
    pub fn finish(&self, id: &str) {
        self.running.lock().remove(id);
    }

    fn subscribe(&self, id: &str) -> Option<watch::Receiver<Stage>> {
        self.running.lock().get(id).map(|tx| tx.subscribe())
    }
}

/// A slot of `limits.max_event_streams`, or 503 `overloaded`.
pub fn stream_slot(st: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    st.event_streams.clone().try_acquire_owned().map_err(|_| {
        st.metrics.refuse("overloaded");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("{} event streams are open (limits.max_event_streams)", st.live().limits.max_event_streams),
        )
        .retry_after(5)
    })
}

/// The SSE stream of job `id`: an event `name` with `current()` now, after every change
/// (at most one per [`MIN_GAP`]) and once more when the job has ended; then the stream
/// ends. `current` answers the job's whole document (it was already authorised).
pub fn job_stream<F, Fut>(st: &Arc<AppState>, id: &str, name: &'static str, current: F) -> Result<Response, ApiError>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<serde_json::Value, ApiError>> + Send + 'static,
{
    let permit = stream_slot(st)?;
    let rx = st.jobs.subscribe(id);
    let state = Arc::downgrade(st);
    struct S<F> {
        rx: Option<watch::Receiver<Stage>>,
        current: F,
        seq: u64,
        first: bool,
        done: bool,
        _permit: OwnedSemaphorePermit,
        state: std::sync::Weak<AppState>,
    }
    let init = S { rx, current, seq: 0, first: true, done: false, _permit: permit, state };
    let stream = futures_util::stream::unfold(init, move |mut s| async move {
        if s.done {
            return None;
        }
        if !s.first {
            tokio::time::sleep(MIN_GAP).await;
            // Wait for a change, the job's end, or shutdown.
            while let Some(rx) = s.rx.as_mut() {
                let changed = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
                match changed {
                    Ok(Ok(())) => break,
                    Ok(Err(_)) => {
                        s.rx = None;
                        break;
                    }
                    Err(_) => {
                        if s.state.upgrade().is_none_or(|st| st.draining.load(Ordering::SeqCst)) {
                            return None;
                        }
                    }
                }
            }
        }
        s.first = false;
        if let Some(rx) = s.rx.as_mut() {
            rx.borrow_and_update();
        }
        let doc = match (s.current)().await {
            Ok(v) => v,
            Err(e) => serde_json::json!({"error": {"code": e.code, "message": e.message}}),
        };
        let running = doc.get("state").and_then(|v| v.as_str()) == Some("running");
        // The job ended (its channel closed or it was not running when we came).
        if s.rx.is_none() || !running {
            s.done = true;
        }
        s.seq += 1;
        let ev = Event::default().id(s.seq.to_string()).event(name).data(doc.to_string());
        Some((Ok::<_, std::convert::Infallible>(ev), s))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_job_is_forgotten_and_its_receivers_see_the_end() {
        let jobs = Jobs::default();
        let tx = jobs.start("a", "starting");
        let rx = jobs.subscribe("a").unwrap();
        tx.send_replace(Stage { stage: "dedup".into(), fraction: 0.5 });
        assert_eq!(jobs.get("a").unwrap().stage, "dedup");
        assert!(rx.has_changed().unwrap());
        jobs.finish("a");
        assert!(jobs.get("a").is_none() && jobs.subscribe("a").is_none());
        assert!(rx.has_changed().is_ok(), "the job still holds its handle");
        drop(tx);
        assert!(rx.has_changed().is_err(), "closed once the job let go");
    }
}
