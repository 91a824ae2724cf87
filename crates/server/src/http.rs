//! Middleware: request ids, security headers, load shedding, metrics and logs for every
//! request; authentication, rate limits, timeouts, usage and audit for protected routes.

use crate::api::{AuditDetail, DocsPage, audit_action};
use crate::error::{ApiError, REQUEST_ID, current_request_id};
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

/// Outermost: request id, load shedding, security headers, metrics and the access log.
pub async fn observe(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let rid = uuid::Uuid::new_v4().to_string();
    if let Some(c) = client_request_id(&req) {
        req.extensions_mut().insert(c);
    }
    let route = route_of(&req);
    let method = req.method().as_str().to_owned();
    let permit = st.inflight.clone().try_acquire_owned();
    let mut resp = match permit {
        Ok(_permit) => {
            st.metrics.inflight.inc();
            let span = tracing::info_span!(
                "http.request",
                otel.name = format!("{method} {route}"),
                request_id = rid.as_str(),
                http.request.method = method.as_str(),
                http.route = route.as_str(),
                http.response.status_code = tracing::field::Empty,
            );
            let r = REQUEST_ID.scope(rid.clone(), next.run(req)).instrument(span.clone()).await;
            span.record("http.response.status_code", r.status().as_u16());
            st.metrics.inflight.dec();
            r
        }
        Err(_) => {
            st.metrics.refuse("overloaded");
            REQUEST_ID.sync_scope(rid.clone(), || {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many requests in flight; retry shortly",
                )
                .retry_after(1)
                .into_response()
            })
        }
    };
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
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("same-origin"));
    let csp = if resp.extensions().get::<DocsPage>().is_some() {
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    } else {
        "default-src 'none'; frame-ancestors 'none'"
    };
    resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
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
pub async fn guard(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
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
    if let Err(secs) = st.rate_limit(&principal.key_id) {
        st.metrics.refuse("rate_limited");
        return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "rate limit of this key exceeded")
            .retry_after(secs)
            .into_response();
    }
    st.add_usage(&principal.key_id, UsageDelta { requests: 1, ..Default::default() });
    let actor = principal.actor();
    req.extensions_mut().insert(principal);
    let action = audit_action(&method, &route);
    let st2 = st.clone();
    let rid2 = rid.clone();
    let running = HandlerRunning::start(&st);
    let task = tokio::spawn(REQUEST_ID.scope(rid.clone(), async move {
        let _running = running;
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
            Err(e) => e.into_response(),
        }
    }));
    let limit = Duration::from_millis(st.config.limits.timeout_ms);
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(join)) => ApiError::internal(format_args!("handler task failed: {join}")).into_response(),
        Err(_) => {
            st.metrics.refuse("timeout");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", format!("the request took longer than {limit:?}"))
                .retry_after(1)
                .into_response()
        }
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
