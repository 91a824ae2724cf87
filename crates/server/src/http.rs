//! Middleware: request ids, security headers, metrics and logs for every request;
//! authentication, rate limits, the body deadline, load shedding (shared and per key),
//! timeouts with cancellation, usage and audit for protected routes.

use crate::api::{AuditDetail, PagePolicy, audit_action};
use crate::engine::{CANCEL, Cancel};
use crate::error::{ApiError, ErrorDetail, REQUEST_ID, current_request_id};
use crate::metrics::{RequestLabels, RouteLabels};
use crate::state::{AppState, UsageDelta};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn route_of(req: &Request) -> String {
    req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned())
}

/// The `x-request-id` a client sent, when it is short and plain. It is never used as the
/// server's request id (the audit log, the error body and the response header carry the
/// server's own); audit entries record it as `client_request_id=` in their detail.
#[derive(Debug, Clone)]
pub struct ClientRequestId(pub String);

fn client_request_id(req: &Request) -> Option<ClientRequestId> {
    req.headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(|s| ClientRequestId(s.to_owned()))
}

/// Outermost: CORS for the origins in force (`cors_origins`, reloadable). With none,
/// requests pass untouched (no CORS headers, preflights reach the router as any
/// `OPTIONS` request does).
pub async fn cors(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    use tower::{Layer as _, ServiceExt as _};
    let layer = st.live().cors.clone();
    match layer {
        None => next.run(req).await,
        Some(layer) => match layer.layer(next).oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        },
    }
}

/// The largest body an extractor reads (`limits.max_body_bytes`, reloadable); the
/// guard reads protected routes' bodies under the same limit first.
pub async fn body_limit(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    use tower::{Layer as _, ServiceExt as _};
    let max = st.live().limits.max_body_bytes;
    match axum::extract::DefaultBodyLimit::max(max).layer(next).oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// Just inside CORS: request id, security headers, metrics and the access log. Nothing here
/// sheds load: public routes (`/healthz` …) are always answered, and the shared limit
/// counts only authenticated work (see [`guard`]).
pub async fn observe(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let rid = uuid::Uuid::new_v4().to_string();
    if let Some(c) = client_request_id(&req) {
        req.extensions_mut().insert(c);
    }
    let route = route_of(&req);
    let method = req.method().as_str().to_owned();
    let span = tracing::info_span!(
        "http.request",
        otel.name = format!("{method} {route}"),
        request_id = rid.as_str(),
        http.request.method = method.as_str(),
        http.route = route.as_str(),
        http.response.status_code = tracing::field::Empty,
    );
    let mut resp = REQUEST_ID.scope(rid.clone(), next.run(req)).instrument(span.clone()).await;
    span.record("http.response.status_code", resp.status().as_u16());
    let status = resp.status().as_u16();
    let h = resp.headers_mut();
    if st.draining.load(std::sync::atomic::Ordering::SeqCst) {
        // A response finished during shutdown closes its connection, so the drain does
        // not wait for the client to hang up a kept-alive connection.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Ok(v) = HeaderValue::from_str(&rid) {
        h.insert(X_REQUEST_ID.clone(), v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("same-origin"));
    let policy = resp.extensions().get::<PagePolicy>().copied().unwrap_or(PagePolicy::API);
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(policy.cache_control));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy.csp));
    if st.config.tls_cert.is_some() {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000; includeSubDomains"));
    }
    let secs = started.elapsed().as_secs_f64();
    st.metrics.requests.get_or_create(&RequestLabels { route: route.clone(), method: method.clone(), status }).inc();
    st.metrics.latency.get_or_create(&RouteLabels { route: route.clone(), method: method.clone() }).observe(secs);
    tracing::info!(request_id = rid, method, route, status, latency_ms = secs * 1e3, "request");
    resp
}

/// In front of protected routes: authenticate, rate-limit, count usage, run the handler
/// under the timeout, and audit writes, admin actions and refusals. The handler runs as
/// its own task, so a timeout answers the client but never cuts a write off from its
/// audit entry.
pub async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let rid = current_request_id();
    let route = route_of(&req);
    let method = req.method().as_str().to_owned();
    let target = req.uri().path().to_owned();
    let client_rid = req.extensions().get::<ClientRequestId>().map(|c| format!(" client_request_id={}", c.0));
    let client_rid = client_rid.unwrap_or_default();
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let principal = match st.authenticate(authorization.as_deref()).await {
        Ok(p) => p,
        Err((err, claimed, why)) => {
            let ip = req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
            if let Err(secs) = st.auth_failure_allowed(ip) {
                st.metrics.refuse("auth_flood");
                tracing::warn!(request_id = rid, %ip, "too many failed authentications; not auditing each");
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many failed authentications from this address",
                )
                .retry_after(secs)
                .into_response();
            }
            st.metrics.refuse("unauthenticated");
            let action = format!("auth.failure {method} {route}");
            let why = format!("{}{client_rid}", crate::audit::bounded(&why, crate::audit::MAX_FIELD));
            if let Err(e) = st.audit(&rid, &claimed, &action, &target, "denied", &why).await {
                return e.into_response();
            }
            return err.into_response();
        }
    };
    if let Err(secs) = st.rate_limit(&principal.key_id).await {
        st.metrics.refuse("rate_limited");
        return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "rate limit of this key exceeded")
            .retry_after(secs)
            .into_response();
    }
    if let Err(e) = st.take_daily_request(&principal).await {
        st.metrics.refuse("quota_exceeded");
        return e.into_response();
    }
    st.add_usage(&principal.key_id, UsageDelta { requests: 1, ..Default::default() });
    // The body arrives before a slot is taken, under its own short deadline: a client
    // that trickles its body holds nothing that other clients need.
    let req = match read_body(&st, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let slot = match Slot::take(&st, &principal.key_id) {
        Ok(s) => s,
        Err(why) => {
            st.metrics.refuse("overloaded");
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", why).retry_after(1).into_response();
        }
    };
    let mut req = req;
    let actor = principal.actor();
    req.extensions_mut().insert(principal);
    let action = audit_action(&method, &route);
    let st2 = st.clone();
    let rid2 = rid.clone();
    let running = HandlerRunning::start(&st);
    let cancel = Cancel::default();
    let work = CANCEL.scope(
        cancel.clone(),
        REQUEST_ID.scope(rid.clone(), async move {
            let _running = running;
            let _slot = slot;
            let resp = next.run(req).await;
            let status = resp.status();
            let denied = status == StatusCode::FORBIDDEN;
            if action.is_none() && !denied {
                return resp;
            }
            if denied {
                st2.metrics.refuse("forbidden");
            }
            let outcome = if status.is_success() {
                "ok"
            } else if denied {
                "denied"
            } else {
                "error"
            };
            let mut detail = format!("status={}{client_rid}", status.as_u16());
            if let Some(d) = resp.extensions().get::<AuditDetail>() {
                detail = format!("{detail} {}", d.0);
            }
            let action = action.map_or_else(|| format!("authz.denied {method} {route}"), str::to_owned);
            match st2.audit(&rid2, &actor, &action, &target, outcome, &detail).await {
                Ok(()) => resp,
                Err(audit_error) => {
                    // Both failures go to the log: the request's own (say, the WAL's) first.
                    let original = resp.extensions().get::<ErrorDetail>().map_or("-", |d| d.0.as_str());
                    tracing::error!(
                        request_id = rid2,
                        status = status.as_u16(),
                        error = original,
                        audit_error = %audit_error,
                        "the audit entry of a request could not be written"
                    );
                    if status.is_success() { audit_error.into_response() } else { resp }
                }
            }
        }),
    );
    let task = tokio::spawn(work);
    let limit = Duration::from_millis(st.live().limits.timeout_ms);
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(join)) => ApiError::internal(format_args!("handler task failed: {join}")).into_response(),
        Err(_) => {
            // Nobody waits for read-only work any more: stop it (writes complete).
            cancel.cancel();
            st.metrics.refuse("timeout");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", format!("the request took longer than {limit:?}"))
                .retry_after(1)
                .into_response()
        }
    }
}

/// Reads the whole body within `limits.body_read_timeout_ms` and `limits.max_body_bytes`;
/// the request goes on with the bytes in memory. Too slow: 408 `body_timeout` (and the
/// connection closes); too large: 413.
async fn read_body(st: &AppState, req: Request) -> Result<Request, Response> {
    use http_body_util::BodyExt as _;
    let (max_body, deadline) = {
        let live = st.live();
        (live.limits.max_body_bytes, Duration::from_millis(live.limits.body_read_timeout_ms))
    };
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, max_body);
    match tokio::time::timeout(deadline, limited.collect()).await {
        Ok(Ok(collected)) => Ok(Request::from_parts(parts, axum::body::Body::from(collected.to_bytes()))),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {max_body} bytes"),
        )
        .into_response()),
        Ok(Err(e)) => Err(ApiError::invalid(format!("request body could not be read: {e}")).into_response()),
        Err(_) => {
            st.metrics.refuse("body_timeout");
            let mut resp = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the request body did not arrive within {deadline:?}"),
            )
            .into_response();
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(resp)
        }
    }
}

/// One of the `limits.concurrency` slots for authenticated work, counted against its
/// key's share too; both are given back on drop.
struct Slot {
    st: Arc<AppState>,
    key: String,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Slot {
    fn take(st: &Arc<AppState>, key: &str) -> Result<Slot, &'static str> {
        let mut held = st.slots_by_key.lock();
        let mine = held.get(key).copied().unwrap_or(0);
        if mine >= st.per_key_slots() {
            return Err("this key has too many requests in flight; retry shortly");
        }
        let permit =
            st.inflight.clone().try_acquire_owned().map_err(|_| "too many requests in flight; retry shortly")?;
        held.insert(key.to_owned(), mine + 1);
        st.metrics.inflight.inc();
        Ok(Slot { st: st.clone(), key: key.to_owned(), _permit: permit })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.st.slots_by_key.lock();
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
        self.st.metrics.inflight.dec();
    }
}

/// Counts a protected handler in [`AppState::handlers`] while it lives.
struct HandlerRunning(Arc<AppState>);

impl HandlerRunning {
    fn start(st: &Arc<AppState>) -> HandlerRunning {
        st.handlers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        HandlerRunning(st.clone())
    }
}

impl Drop for HandlerRunning {
    fn drop(&mut self) {
        self.0.handlers.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
