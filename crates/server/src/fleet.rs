//! `/v1/fleet/…`: the fleet control plane over HTTP. Operators call it with API keys
//! (reads: reader; releases and deployments: writer; device decisions, tokens, groups,
//! bulk operations, approvals, pause/resume/promote/abort: admin — always with a key
//! scoped to all collections). Devices call their own routes: enrollment and the token
//! exchange are public (signed by the device key), the rest take a device token.

use crate::api::{AuditDetail, Auth, Body, Errors, PathParams, QueryParams};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::state::{AppState, now_ms};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kernelize_fleet::{
    BulkAction, CreateDeployment, DeviceStatus, EditDeployment, EnrollRequest, ExecState, FleetError, Inventory,
    KernelFile, NewEnrollmentToken, NewGroup, PublishRequest, Selector, StatusReport,
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use utoipa::OpenApi;

type St = State<Arc<AppState>>;

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> ApiError {
        match e {
            FleetError::Invalid { .. } => ApiError::invalid(e.to_string()),
            FleetError::NotFound(m) => ApiError::not_found(m),
            FleetError::Conflict(m) => ApiError::conflict(m),
            FleetError::Unauthenticated(m) => ApiError::unauthenticated(m),
            FleetError::Forbidden(m) => ApiError::forbidden(m),
            e @ (FleetError::Database(_) | FleetError::Internal(_)) => ApiError::internal(e),
            e => ApiError::internal(e),
        }
    }
}

/// The principal as the fleet records it: the key, whether it used a token or not (a
/// token minted from a key is the same principal: it cannot approve its key's deployment).
fn who(p: &Principal) -> String {
    format!("key:{}", p.key_id)
}

fn audited(detail: String, status: StatusCode, body: impl IntoResponse) -> Response {
    let mut r = (status, body).into_response();
    r.extensions_mut().insert(AuditDetail(detail));
    r
}

fn to_value<T: serde::Serialize>(v: &T) -> Json<Value> {
    Json(serde_json::to_value(v).unwrap_or(Value::Null))
}

// ---------------------------------------------------------------- devices (operators)

/// Query of the device list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    /// Only devices with this status (`pending`, `accepted`, …).
    pub status: Option<String>,
    /// A filter over the device document (`labels.region = "eu" and online = true`).
    pub filter: Option<String>,
    /// Only members of this group.
    pub group: Option<String>,
    /// At most this many (default 1000).
    pub limit: Option<usize>,
}

/// List devices (reader).
#[utoipa::path(get, path = "/v1/fleet/devices", tag = "fleet", security(("bearer" = [])), params(DeviceQuery),
    responses((status = 200, description = "Devices", body = Object), Errors))]
async fn list_devices(
    State(st): St,
    Auth(p): Auth,
    QueryParams(q): QueryParams<DeviceQuery>,
) -> Result<Json<Value>, ApiError> {
    p.require(Role::Reader, None)?;
    let status = q.status.as_deref().map(DeviceStatus::parse).transpose()?;
    let select = match (q.filter, q.group) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give filter or group, not both")),
        (Some(f), None) => Some(Selector::Filter(f)),
        (None, Some(g)) => Some(Selector::Group(g)),
        (None, None) => None,
    };
    let devices = st.fleet.devices(status, select.as_ref(), q.limit.unwrap_or(1000).min(100_000)).await?;
    Ok(Json(json!({ "devices": devices })))
}

/// One device (reader).
#[utoipa::path(get, path = "/v1/fleet/devices/{id}", tag = "fleet", security(("bearer" = [])),
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, description = "The device", body = Object), Errors))]
async fn get_device(State(st): St, Auth(p): Auth, PathParams(id): PathParams<String>) -> Result<Json<Value>, ApiError> {
    p.require(Role::Reader, None)?;
    Ok(to_value(&st.fleet.device(&id).await?))
}

async fn decide(st: &AppState, p: &Principal, id: &str, to: DeviceStatus) -> Result<Response, ApiError> {
    p.require(Role::Admin, None)?;
    let d = st.fleet.decide(id, to, &who(p), now_ms()).await?;
    Ok(audited(format!("device={id} status={}", to.as_str()), StatusCode::OK, to_value(&d)))
}

/// Accept a pending (or rejected) device (admin).
#[utoipa::path(post, path = "/v1/fleet/devices/{id}/accept", tag = "fleet", security(("bearer" = [])),
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, description = "The device", body = Object), Errors))]
async fn accept_device(State(st): St, Auth(p): Auth, PathParams(id): PathParams<String>) -> Result<Response, ApiError> {
    decide(&st, &p, &id, DeviceStatus::Accepted).await
}

/// Reject a pending device (admin).
#[utoipa::path(post, path = "/v1/fleet/devices/{id}/reject", tag = "fleet", security(("bearer" = [])),
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, description = "The device", body = Object), Errors))]
async fn reject_device(State(st): St, Auth(p): Auth, PathParams(id): PathParams<String>) -> Result<Response, ApiError> {
    decide(&st, &p, &id, DeviceStatus::Rejected).await
}

/// Revoke an accepted device: its token stops working at once (admin).
#[utoipa::path(post, path = "/v1/fleet/devices/{id}/revoke", tag = "fleet", security(("bearer" = [])),
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, description = "The device", body = Object), Errors))]
async fn revoke_device(State(st): St, Auth(p): Auth, PathParams(id): PathParams<String>) -> Result<Response, ApiError> {
    decide(&st, &p, &id, DeviceStatus::Revoked).await
}

/// Label, move or decommission the devices a selector matches (admin). Run with
/// `dry_run: true` first: the real call must repeat the matched count in `expect_count`.
#[utoipa::path(post, path = "/v1/fleet/devices:bulk", tag = "fleet", security(("bearer" = [])),
    request_body = Object,
    responses((status = 200, description = "Matched and changed counts", body = Object), Errors))]
async fn bulk_devices(State(st): St, Auth(p): Auth, Body(b): Body<BulkAction>) -> Result<Response, ApiError> {
    p.require(Role::Admin, None)?;
    let out = st.fleet.bulk(&b, &who(&p), now_ms()).await?;
    let detail = format!("action={} matched={} changed={} dry_run={}", b.action, out.matched, out.changed, b.dry_run);
    Ok(audited(detail, StatusCode::OK, to_value(&out)))
}

// ---------------------------------------------------------------- enrollment tokens, groups

/// Make an enrollment token (pre-authorization; the secret is shown once) (admin).
#[utoipa::path(post, path = "/v1/fleet/enrollment-tokens", tag = "fleet", security(("bearer" = [])),
    request_body = Object,
    responses((status = 201, description = "The token, with its secret", body = Object), Errors))]
async fn create_enrollment_token(
    State(st): St,
    Auth(p): Auth,
    Body(t): Body<NewEnrollmentToken>,
) -> Result<Response, ApiError> {
    p.require(Role::Admin, None)?;
    let tok = st.fleet.create_enrollment_token(&t, &who(&p), now_ms()).await?;
    Ok(audited(format!("token={} uses={}", tok.id, t.uses), StatusCode::CREATED, to_value(&tok)))
}

/// List enrollment tokens (without secrets) (admin).
#[utoipa::path(get, path = "/v1/fleet/enrollment-tokens", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, description = "Tokens", body = Object), Errors))]
async fn list_enrollment_tokens(State(st): St, Auth(p): Auth) -> Result<Json<Value>, ApiError> {
    p.require(Role::Admin, None)?;
    Ok(Json(json!({ "tokens": st.fleet.enrollment_tokens().await? })))
}

/// Revoke an enrollment token (admin).
#[utoipa::path(delete, path = "/v1/fleet/enrollment-tokens/{id}", tag = "fleet", security(("bearer" = [])),
    params(("id" = String, Path, description = "Token id")),
    responses((status = 204, description = "Revoked"), Errors))]
async fn revoke_enrollment_token(
    State(st): St,
    Auth(p): Auth,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    p.require(Role::Admin, None)?;
    st.fleet.revoke_enrollment_token(&id, now_ms()).await?;
    Ok(audited(format!("token={id}"), StatusCode::NO_CONTENT, ()))
}

/// Create a static group, or a dynamic one with a filter (admin).
#[utoipa::path(post, path = "/v1/fleet/groups", tag = "fleet", security(("bearer" = [])),
    request_body = Object,
    responses((status = 201, description = "The group", body = Object), Errors))]
async fn create_group(State(st): St, Auth(p): Auth, Body(g): Body<NewGroup>) -> Result<Response, ApiError> {
    p.require(Role::Admin, None)?;
    let info = st.fleet.create_group(&g, &who(&p), now_ms()).await?;
    Ok(audited(format!("group={} kind={}", info.name, info.kind), StatusCode::CREATED, to_value(&info)))
}

/// List groups with member counts (reader).
#[utoipa::path(get, path = "/v1/fleet/groups", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, description = "Groups", body = Object), Errors))]
async fn list_groups(State(st): St, Auth(p): Auth) -> Result<Json<Value>, ApiError> {
    p.require(Role::Reader, None)?;
    Ok(Json(json!({ "groups": st.fleet.groups().await? })))
}

/// One group (reader).
#[utoipa::path(get, path = "/v1/fleet/groups/{name}", tag = "fleet", security(("bearer" = [])),
    params(("name" = String, Path, description = "Group")),
    responses((status = 200, description = "The group", body = Object), Errors))]
async fn get_group(
    State(st): St,
    Auth(p): Auth,
    PathParams(name): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    p.require(Role::Reader, None)?;
    Ok(to_value(&st.fleet.group(&name).await?))
}

/// Delete a group (admin).
#[utoipa::path(delete, path = "/v1/fleet/groups/{name}", tag = "fleet", security(("bearer" = [])),
    params(("name" = String, Path, description = "Group")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_group(
    State(st): St,
    Auth(p): Auth,
    PathParams(name): PathParams<String>,
) -> Result<Response, ApiError> {
    p.require(Role::Admin, None)?;
    st.fleet.delete_group(&name).await?;
    Ok(audited(format!("group={name}"), StatusCode::NO_CONTENT, ()))
}

// ---------------------------------------------------------------- releases

/// List releases, newest first (reader).
#[utoipa::path(get, path = "/v1/fleet/releases", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, description = "Releases", body = Object), Errors))]
async fn list_releases(State(st): St, Auth(p): Auth) -> Result<Json<Value>, ApiError> {
    p.require(Role::Reader, None)?;
    Ok(Json(json!({ "releases": st.fleet.releases(None).await? })))
}

/// One release with its signed manifest (reader).
#[utoipa::path(get, path = "/v1/fleet/releases/{id}", tag = "fleet", security(("bearer" = [])),
    params(("id" = String, Path, description = "Release id")),
    responses((status = 200, description = "The release", body = Object), Errors))]
async fn get_release(
    State(st): St,
    Auth(p): Auth,
    PathParams(id): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    p.require(Role::Reader, None)?;
    Ok(to_value(&st.fleet.release(&id).await?))
}

/// Publish a built kernel to a channel at a new version: the file goes to the blob store,
/// the manifest (chunk hashes, compatibility, golden queries) is signed with the release
/// key, and a delta from the channel's previous release is kept when smaller (writer).
#[utoipa::path(post, path = "/v1/fleet/releases", tag = "fleet", security(("bearer" = [])),
    request_body = Object,
    responses((status = 201, description = "The release", body = Object), Errors))]
async fn publish_release(State(st): St, Auth(p): Auth, Body(r): Body<PublishRequest>) -> Result<Response, ApiError> {
    p.require(Role::Writer, None)?;
    let (k, _) = st.kernel_file(&p, &r.kernel_id).await.map_err(|e| {
        if e.status == StatusCode::NOT_FOUND { ApiError::invalid(format!("kernel_id: {}", e.message)) } else { e }
    })?;
    let max = st.config.fleet.max_kernel_mb.saturating_mul(1 << 20);
    let len = k.bytes().len() as u64;
    if len > max {
        return Err(ApiError::invalid(format!("kernel_id: the kernel has {len} bytes, more than fleet.max_kernel_mb")));
    }
    let dim = u32::try_from(k.manifest().dim).map_err(ApiError::internal)?;
    let kernel = KernelFile { bytes: bytes::Bytes::copy_from_slice(k.bytes()), dim };
    let rel = st.fleet.publish(&r, kernel, &who(&p), now_ms()).await?;
    let detail = format!("release={} channel={} version={} kernel={}", rel.id, rel.channel, rel.version, rel.kernel_id);
    Ok(audited(detail, StatusCode::CREATED, to_value(&rel)))
}

/// The release signing key (devices pin the version-0 key at provisioning) and the root
/// documents that rotated it (reader).
#[utoipa::path(get, path = "/v1/fleet/keys", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, description = "Current key and root documents", body = Object), Errors))]
async fn release_keys(State(st): St, Auth(p): Auth) -> Result<Json<Value>, ApiError> {
    p.require(Role::Reader, None)?;
    Ok(Json(keys_doc(&st)?))
}

fn keys_doc(st: &AppState) -> Result<Value, ApiError> {
    let keys = &st.fleet.distribution()?.keys;
    let (version, key) = keys.current();
    let roots: Vec<Value> = keys.roots().iter().map(|r| serde_json::from_slice(r).unwrap_or(Value::Null)).collect();
    Ok(
        json!({"version": version, "public_key": key.public().to_hex(), "key_id": key.public().key_id(), "roots": roots}),
    )
}

/// Rotate the release signing key: a root document signed by the current key announces the
/// new one; devices learn it only that way (admin).
#[utoipa::path(post, path = "/v1/fleet/keys/rotate", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, description = "The new key and root documents", body = Object), Errors))]
async fn rotate_release_key(State(st): St, Auth(p): Auth) -> Result<Response, ApiError> {
    p.require(Role::Admin, None)?;
    let keys = st.fleet.distribution()?.keys.clone();
    let version = tokio::task::spawn_blocking(move || keys.rotate(now_ms())).await.map_err(ApiError::internal)??;
    Ok(audited(format!("root_version={version}"), StatusCode::OK, Json(keys_doc(&st)?)))
}

/// Delete blobs no release references, older than `fleet.blob_gc_min_age_secs` (admin).
#[utoipa::path(post, path = "/v1/fleet/blobs:gc", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, description = "Kept and deleted counts", body = Object), Errors))]
async fn gc_blobs(State(st): St, Auth(p): Auth) -> Result<Response, ApiError> {
    p.require(Role::Admin, None)?;
    let age = std::time::Duration::from_secs(st.config.fleet.blob_gc_min_age_secs);
    let r = st.fleet.gc_blobs(age).await?;
    let detail = format!("deleted={} bytes={}", r.deleted, r.deleted_bytes);
    let body = json!({
        "referenced": r.referenced, "referenced_bytes": r.referenced_bytes, "young": r.young,
        "deleted": r.deleted, "deleted_bytes": r.deleted_bytes, "missing": r.missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    Ok(audited(detail, StatusCode::OK, Json(body)))
}

// ---------------------------------------------------------------- deployments

/// Create a deployment; it waits for approval by another principal (writer).
#[utoipa::path(post, path = "/v1/fleet/deployments", tag = "fleet", security(("bearer" = [])),
    request_body = Object,
    responses((status = 201, description = "The deployment", body = Object), Errors))]
async fn create_deployment(
    State(st): St,
    Auth(p): Auth,
    Body(c): Body<CreateDeployment>,
) -> Result<Response, ApiError> {
    p.require(Role::Writer, None)?;
    let d = st.fleet.create_deployment(&c, &who(&p), now_ms()).await?;
    Ok(audited(format!("deployment={} release={} targets", d.id, d.release_id), StatusCode::CREATED, to_value(&d)))
}

/// List deployments with their counts (reader).
#[utoipa::path(get, path = "/v1/fleet/deployments", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, description = "Deployments", body = Object), Errors))]
async fn list_deployments(State(st): St, Auth(p): Auth) -> Result<Json<Value>, ApiError> {
    p.require(Role::Reader, None)?;
    Ok(Json(json!({ "deployments": st.fleet.deployments().await? })))
}

/// One deployment: plan, state, phase, counts per execution state (reader).
#[utoipa::path(get, path = "/v1/fleet/deployments/{id}", tag = "fleet", security(("bearer" = [])),
    params(("id" = String, Path, description = "Deployment id")),
    responses((status = 200, description = "The deployment", body = Object), Errors))]
async fn get_deployment(
    State(st): St,
    Auth(p): Auth,
    PathParams(id): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    p.require(Role::Reader, None)?;
    Ok(to_value(&st.fleet.deployment(&id).await?))
}

/// Edit a deployment's plan (or its target before it started); resets its approval (writer).
#[utoipa::path(patch, path = "/v1/fleet/deployments/{id}", tag = "fleet", security(("bearer" = [])),
    params(("id" = String, Path, description = "Deployment id")), request_body = Object,
    responses((status = 200, description = "The deployment", body = Object), Errors))]
async fn edit_deployment(
    State(st): St,
    Auth(p): Auth,
    PathParams(id): PathParams<String>,
    Body(e): Body<EditDeployment>,
) -> Result<Response, ApiError> {
    p.require(Role::Writer, None)?;
    let d = st.fleet.edit_deployment(&id, &e, &who(&p)).await?;
    Ok(audited(format!("deployment={id} digest={}", d.digest), StatusCode::OK, to_value(&d)))
}

/// Body of an approval.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Approval {
    digest: String,
}

/// Approve a deployment as reviewed: `digest` must be its current digest; the approver
/// must differ from the creator (admin).
#[utoipa::path(post, path = "/v1/fleet/deployments/{id}/approve", tag = "fleet", security(("bearer" = [])),
    params(("id" = String, Path, description = "Deployment id")), request_body = Object,
    responses((status = 200, description = "Approved and running", body = Object), Errors))]
async fn approve_deployment(
    State(st): St,
    Auth(p): Auth,
    PathParams(id): PathParams<String>,
    Body(a): Body<Approval>,
) -> Result<Response, ApiError> {
    p.require(Role::Admin, None)?;
    let d = st.fleet.approve(&id, &who(&p), &a.digest, now_ms()).await?;
    Ok(audited(format!("deployment={id} digest={}", a.digest), StatusCode::OK, to_value(&d)))
}

macro_rules! deployment_action {
    ($fn:ident, $path:literal, $doc:literal, |$st:ident, $id:ident, $who:ident| $call:expr) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "fleet", security(("bearer" = [])),
                                    params(("id" = String, Path, description = "Deployment id")),
                                    responses((status = 200, description = "The deployment", body = Object), Errors))]
        async fn $fn(State($st): St, Auth(p): Auth, PathParams($id): PathParams<String>) -> Result<Response, ApiError> {
            p.require(Role::Admin, None)?;
            let $who = who(&p);
            let d = $call.await?;
            Ok(audited(format!("deployment={} state={}", $id, d.state.as_str()), StatusCode::OK, to_value(&d)))
        }
    };
}

deployment_action!(
    pause_deployment,
    "/v1/fleet/deployments/{id}/pause",
    "Pause: no new offers (admin).",
    |st, id, by| st.fleet.pause(&id, &by)
);
deployment_action!(
    resume_deployment,
    "/v1/fleet/deployments/{id}/resume",
    "Resume a paused deployment (admin).",
    |st, id, by| st.fleet.resume(&id, &by)
);
deployment_action!(
    promote_deployment,
    "/v1/fleet/deployments/{id}/promote",
    "Go to the next phase now, skipping the bake (admin).",
    |st, id, by| st.fleet.promote(&id, &by, now_ms())
);
deployment_action!(
    abort_deployment,
    "/v1/fleet/deployments/{id}/abort",
    "Abort: no more offers; with `revert`, touched devices get their previous kernel (admin).",
    |st, id, by| st.fleet.abort(&id, &by, now_ms())
);

/// Query of an execution list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExecutionQuery {
    /// Only executions in this state.
    pub state: Option<String>,
    /// At most this many (default 1000).
    pub limit: Option<usize>,
}

/// The deployment's execution records, in rank order (reader).
#[utoipa::path(get, path = "/v1/fleet/deployments/{id}/executions", tag = "fleet", security(("bearer" = [])),
    params(("id" = String, Path, description = "Deployment id"), ExecutionQuery),
    responses((status = 200, description = "Executions", body = Object), Errors))]
async fn list_executions(
    State(st): St,
    Auth(p): Auth,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<ExecutionQuery>,
) -> Result<Json<Value>, ApiError> {
    p.require(Role::Reader, None)?;
    let state = q.state.as_deref().map(ExecState::parse).transpose()?;
    let list = st.fleet.executions(&id, state, q.limit.unwrap_or(1000)).await?;
    Ok(Json(json!({ "executions": list })))
}

/// One device's execution record with its full history (reader).
#[utoipa::path(get, path = "/v1/fleet/deployments/{id}/executions/{device}", tag = "fleet", security(("bearer" = [])),
    params(("id" = String, Path, description = "Deployment id"), ("device" = String, Path, description = "Device id")),
    responses((status = 200, description = "The execution", body = Object), Errors))]
async fn get_execution(
    State(st): St,
    Auth(p): Auth,
    PathParams((id, device)): PathParams<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    p.require(Role::Reader, None)?;
    Ok(to_value(&st.fleet.execution(&id, &device).await?))
}

/// Query of the event stream.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Replay events after this sequence number still in the backlog (also the
    /// `Last-Event-ID` header).
    pub after: Option<u64>,
}

/// Fleet events as server-sent events: device offline/online, enrollments, phases,
/// aborts, completions, each device's execution state changes (reader). Resume with
/// `Last-Event-ID` (or `after`) within the backlog; a `lagged` event says how many a slow
/// reader missed (read the lists again).
#[utoipa::path(get, path = "/v1/fleet/events", tag = "fleet", security(("bearer" = [])), params(EventQuery),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream", body = crate::model::SseEvent), Errors))]
async fn events(
    State(st): St,
    Auth(p): Auth,
    QueryParams(q): QueryParams<EventQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    p.require(Role::Reader, None)?;
    let permit = crate::progress::stream_slot(&st)?;
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let (past, rx) = st.fleet.events().subscribe(q.after.or(last));
    let to_sse = |e: &kernelize_fleet::Event| {
        Event::default().id(e.seq.to_string()).event(e.kind.as_str()).data(serde_json::to_string(e).unwrap_or_default())
    };
    let past: Vec<Result<Event, std::convert::Infallible>> = past.iter().map(|e| Ok(to_sse(e))).collect();
    // The stream holds its slot of `limits.max_event_streams` until the client goes.
    let live = futures_util::stream::unfold((rx, permit), move |(mut rx, permit)| async move {
        match rx.recv().await {
            Ok(e) => Some((Ok(to_sse(&e)), (rx, permit))),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let lag = Event::default().event("lagged").data(format!("{{\"missed\":{n}}}"));
                Some((Ok(lag), (rx, permit)))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    });
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter(past), live);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

// ---------------------------------------------------------------- device side

/// The device a device token stands for (put there by [`device_auth`]).
#[derive(Debug, Clone)]
pub struct DeviceId(pub String);

/// Authenticates device routes with a device token (`Authorization: Bearer kzd_…`).
pub async fn device_auth(State(st): St, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(token) = token else {
        return ApiError::unauthenticated("send a device token: Authorization: Bearer kzd_…").into_response();
    };
    match st.fleet.authenticate(&token, now_ms()).await {
        Ok(id) => {
            req.extensions_mut().insert(DeviceId(id));
            next.run(req).await
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for DeviceId {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<DeviceId>().cloned().ok_or_else(|| ApiError::unauthenticated("no device token"))
    }
}

/// Enroll a device: the payload signed by its ed25519 key. Pending until an admin accepts
/// it, unless it carries a valid enrollment token (public; signed by the device).
#[utoipa::path(post, path = "/v1/fleet/enroll", tag = "fleet-device", request_body = Object,
    responses((status = 200, description = "Device id and status", body = Object), Errors))]
async fn enroll(State(st): St, Body(r): Body<EnrollRequest>) -> Result<Json<Value>, ApiError> {
    Ok(to_value(&st.fleet.enroll(&r, now_ms()).await?))
}

/// A device id.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeRequest {
    device_id: String,
}

/// Step one of a device token: a one-time challenge for an accepted device (public).
#[utoipa::path(post, path = "/v1/fleet/device/challenge", tag = "fleet-device", request_body = Object,
    responses((status = 200, description = "The challenge", body = Object), Errors))]
async fn device_challenge(State(st): St, Body(r): Body<ChallengeRequest>) -> Result<Json<Value>, ApiError> {
    let c = st.fleet.challenge(&r.device_id, now_ms()).await?;
    Ok(Json(json!({ "challenge": c })))
}

/// The signed challenge.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    device_id: String,
    challenge: String,
    signature: String,
}

/// Step two: the challenge signed by the device key (the message is
/// `kernelize-device-token\n<device id>\n<challenge>`) buys a short-lived token (public).
#[utoipa::path(post, path = "/v1/fleet/device/token", tag = "fleet-device", request_body = Object,
    responses((status = 200, description = "Device token, expiry, heartbeat interval", body = Object), Errors))]
async fn device_token(State(st): St, Body(r): Body<TokenRequest>) -> Result<Json<Value>, ApiError> {
    Ok(to_value(&st.fleet.token(&r.device_id, &r.challenge, &r.signature, now_ms()).await?))
}

/// A heartbeat body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Heartbeat {
    #[serde(default)]
    inventory: Option<Inventory>,
    /// The device's latest log lines (the newest 8 KiB are kept).
    #[serde(default)]
    log: Option<String>,
}

/// Heartbeat with the current inventory; the answer says when to send the next (device).
#[utoipa::path(post, path = "/v1/fleet/device/heartbeat", tag = "fleet-device", security(("device" = [])),
    request_body = Object,
    responses((status = 200, description = "Interval and next heartbeat", body = Object), Errors))]
async fn device_heartbeat(
    State(st): St,
    DeviceId(id): DeviceId,
    Body(h): Body<Heartbeat>,
) -> Result<Json<Value>, ApiError> {
    Ok(to_value(&st.fleet.heartbeat(&id, h.inventory.as_ref(), h.log.as_deref(), now_ms()).await?))
}

/// The next offer for this device: 200 with the offer, or 204 when there is nothing (device).
#[utoipa::path(get, path = "/v1/fleet/device/offer", tag = "fleet-device", security(("device" = [])),
    responses((status = 200, description = "An offer", body = Object), (status = 204, description = "Nothing to do"), Errors))]
async fn device_offer(State(st): St, DeviceId(id): DeviceId) -> Result<Response, ApiError> {
    match st.fleet.next_offer(&id, now_ms()).await? {
        Some(o) => Ok(to_value(&o).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// Report an execution's state, naming the version the device last saw; a stale or
/// illegal report gets 409 and changes nothing; repeating a report is harmless (device).
#[utoipa::path(post, path = "/v1/fleet/device/executions/{deployment}/status", tag = "fleet-device",
    security(("device" = [])), params(("deployment" = String, Path, description = "Deployment id")),
    request_body = Object,
    responses((status = 200, description = "The execution's new state and version", body = Object), Errors))]
async fn device_status(
    State(st): St,
    DeviceId(id): DeviceId,
    PathParams(dep): PathParams<String>,
    Body(r): Body<StatusReport>,
) -> Result<Json<Value>, ApiError> {
    Ok(to_value(&st.fleet.report(&id, &dep, &r, now_ms()).await?))
}

/// The device's trust material: the root documents that rotated the release key (oldest
/// first), the current release key and its root version, and the key kernels are signed
/// with. A provisioned device pins keys it was given; one that was not pins these on
/// first use (device).
#[utoipa::path(get, path = "/v1/fleet/device/root", tag = "fleet-device", security(("device" = [])),
    responses((status = 200, description = "Root documents", body = Object), Errors))]
async fn device_root(State(st): St, DeviceId(_): DeviceId) -> Result<Json<Value>, ApiError> {
    let mut doc = keys_doc(&st)?;
    doc["kernel_key"] = json!(st.kernel_signing_key().public_key);
    Ok(Json(doc))
}

/// Download a release's kernel file or delta by SHA-256, with `Range` (one range) and
/// `If-Range` (the strong ETag is the SHA-256) so a device resumes where it stopped (device).
#[utoipa::path(get, path = "/v1/fleet/device/blobs/{sha256}", tag = "fleet-device", security(("device" = [])),
    params(("sha256" = String, Path, description = "SHA-256 of the file, hex")),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 416, description = "Range not satisfiable"),
        Errors))]
async fn device_blob(
    State(st): St,
    DeviceId(_): DeviceId,
    PathParams(sha): PathParams<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    use axum::http::HeaderValue;
    let digest: kernelize_blobs::Digest =
        sha.parse().map_err(|e: kernelize_blobs::Error| ApiError::invalid(format!("sha256: {e}")))?;
    if !st.fleet.blob_is_published(&digest.to_string()).await? {
        return Err(ApiError::not_found(format!("no release file {digest}")));
    }
    let blobs = &st.fleet.distribution()?.blobs;
    let info = blobs
        .head(&digest)
        .await
        .map_err(kernelize_fleet::blob_error)?
        .ok_or_else(|| ApiError::not_found(format!("release file {digest} is missing from the blob store")))?;
    let etag = format!("\"{digest}\"");
    let if_range_ok = headers.get(header::IF_RANGE).is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let range = match headers.get(header::RANGE).filter(|_| if_range_ok) {
        None => None,
        Some(v) => match parse_range(v.to_str().unwrap_or_default(), info.len) {
            Ok(r) => Some(r),
            Err(()) => {
                let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", info.len)) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(r);
            }
        },
    };
    let stream = blobs.get(&digest, range.clone()).await.map_err(kernelize_fleet::blob_error)?;
    let total = stream.info.len;
    let served = stream.range.clone();
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(served.end - served.start));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if range.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {}-{}/{total}", served.start, served.end.saturating_sub(1)))
        {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

/// One `bytes=` range of a file of `len` bytes (`a-b`, `a-`, `-n`); `Err` when it cannot
/// be served (several ranges, out of bounds, malformed).
fn parse_range(v: &str, len: u64) -> Result<std::ops::Range<u64>, ()> {
    let spec = v.strip_prefix("bytes=").ok_or(())?.trim();
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().map_err(|_| ())?, len),
        (a, b) => {
            let a: u64 = a.parse().map_err(|_| ())?;
            let b: u64 = b.parse().map_err(|_| ())?;
            (a, b.saturating_add(1).min(len))
        }
    };
    if start >= end || start >= len {
        return Err(());
    }
    Ok(start..end)
}

/// The blob store and release key the configuration names (a local directory in the data
/// directory by default; the release key in `<data_dir>/fleet-keys`).
pub async fn distribution(config: &crate::Config) -> anyhow::Result<kernelize_fleet::Distribution> {
    use anyhow::Context as _;
    let f = &config.fleet;
    let cfg =
        f.blobs.clone().unwrap_or_else(|| kernelize_blobs::BlobConfig::Local { dir: config.data_dir.join("blobs") });
    let blobs = kernelize_blobs::BlobStore::open_with(&cfg, f.blob_options.clone()).context("fleet blob store")?;
    blobs.check().await.context("fleet blob store")?;
    let dir = config.data_dir.join("fleet-keys");
    let keys = tokio::task::spawn_blocking(move || kernelize_fleet::ReleaseKeys::load_or_create(&dir))
        .await?
        .context("fleet release key")?;
    Ok(kernelize_fleet::Distribution {
        blobs,
        keys: Arc::new(keys),
        chunk_size: f.chunk_size,
        delta_level: f.delta_level,
        max_kernel_bytes: f.max_kernel_mb.saturating_mul(1 << 20),
    })
}

/// Operator routes (behind the API-key guard).
pub fn protected_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/fleet/devices", get(list_devices))
        .route("/v1/fleet/devices:bulk", post(bulk_devices))
        .route("/v1/fleet/devices/{id}", get(get_device))
        .route("/v1/fleet/devices/{id}/accept", post(accept_device))
        .route("/v1/fleet/devices/{id}/reject", post(reject_device))
        .route("/v1/fleet/devices/{id}/revoke", post(revoke_device))
        .route("/v1/fleet/enrollment-tokens", get(list_enrollment_tokens).post(create_enrollment_token))
        .route("/v1/fleet/enrollment-tokens/{id}", axum::routing::delete(revoke_enrollment_token))
        .route("/v1/fleet/groups", get(list_groups).post(create_group))
        .route("/v1/fleet/groups/{name}", get(get_group).delete(delete_group))
        .route("/v1/fleet/releases", get(list_releases).post(publish_release))
        .route("/v1/fleet/keys", get(release_keys))
        .route("/v1/fleet/keys/rotate", post(rotate_release_key))
        .route("/v1/fleet/blobs:gc", post(gc_blobs))
        .route("/v1/fleet/releases/{id}", get(get_release))
        .route("/v1/fleet/deployments", get(list_deployments).post(create_deployment))
        .route("/v1/fleet/deployments/{id}", get(get_deployment).patch(edit_deployment))
        .route("/v1/fleet/deployments/{id}/approve", post(approve_deployment))
        .route("/v1/fleet/deployments/{id}/pause", post(pause_deployment))
        .route("/v1/fleet/deployments/{id}/resume", post(resume_deployment))
        .route("/v1/fleet/deployments/{id}/promote", post(promote_deployment))
        .route("/v1/fleet/deployments/{id}/abort", post(abort_deployment))
        .route("/v1/fleet/deployments/{id}/executions", get(list_executions))
        .route("/v1/fleet/deployments/{id}/executions/{device}", get(get_execution))
        .route("/v1/fleet/events", get(events))
}

/// Device routes: public enrollment and token exchange, and those behind [`device_auth`].
pub fn device_routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let authed = Router::new()
        .route("/v1/fleet/device/heartbeat", post(device_heartbeat))
        .route("/v1/fleet/device/offer", get(device_offer))
        .route("/v1/fleet/device/executions/{deployment}/status", post(device_status))
        .route("/v1/fleet/device/root", get(device_root))
        .route("/v1/fleet/device/blobs/{sha256}", get(device_blob))
        .route_layer(axum::middleware::from_fn_with_state(state, device_auth));
    Router::new()
        .route("/v1/fleet/enroll", post(enroll))
        .route("/v1/fleet/device/challenge", post(device_challenge))
        .route("/v1/fleet/device/token", post(device_token))
        .merge(authed)
}

/// The audit action of a fleet route.
pub fn audit_action(method: &str, route: &str) -> Option<&'static str> {
    Some(match (method, route) {
        ("POST", "/v1/fleet/devices/{id}/accept") => "fleet.devices.accept",
        ("POST", "/v1/fleet/devices/{id}/reject") => "fleet.devices.reject",
        ("POST", "/v1/fleet/devices/{id}/revoke") => "fleet.devices.revoke",
        ("POST", "/v1/fleet/devices:bulk") => "fleet.devices.bulk",
        ("POST", "/v1/fleet/enrollment-tokens") => "fleet.enrollment_tokens.create",
        ("GET", "/v1/fleet/enrollment-tokens") => "fleet.enrollment_tokens.list",
        ("DELETE", "/v1/fleet/enrollment-tokens/{id}") => "fleet.enrollment_tokens.revoke",
        ("POST", "/v1/fleet/groups") => "fleet.groups.create",
        ("DELETE", "/v1/fleet/groups/{name}") => "fleet.groups.delete",
        ("POST", "/v1/fleet/releases") => "fleet.releases.publish",
        ("POST", "/v1/fleet/keys/rotate") => "fleet.keys.rotate",
        ("POST", "/v1/fleet/blobs:gc") => "fleet.blobs.gc",
        ("POST", "/v1/fleet/deployments") => "fleet.deployments.create",
        ("PATCH", "/v1/fleet/deployments/{id}") => "fleet.deployments.edit",
        ("POST", "/v1/fleet/deployments/{id}/approve") => "fleet.deployments.approve",
        ("POST", "/v1/fleet/deployments/{id}/pause") => "fleet.deployments.pause",
        ("POST", "/v1/fleet/deployments/{id}/resume") => "fleet.deployments.resume",
        ("POST", "/v1/fleet/deployments/{id}/promote") => "fleet.deployments.promote",
        ("POST", "/v1/fleet/deployments/{id}/abort") => "fleet.deployments.abort",
        _ => return None,
    })
}

struct DeviceSecurity;

impl utoipa::Modify for DeviceSecurity {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "device",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A device token (`kzd_<device>_<secret>`) from POST /v1/fleet/device/token"))
                    .build(),
            ),
        );
    }
}

/// The fleet part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    modifiers(&DeviceSecurity),
    paths(
        list_devices, get_device, accept_device, reject_device, revoke_device, bulk_devices,
        create_enrollment_token, list_enrollment_tokens, revoke_enrollment_token,
        create_group, list_groups, get_group, delete_group,
        list_releases, get_release, publish_release, release_keys, rotate_release_key, gc_blobs,
        create_deployment, list_deployments, get_deployment, edit_deployment, approve_deployment,
        pause_deployment, resume_deployment, promote_deployment, abort_deployment,
        list_executions, get_execution, events,
        enroll, device_challenge, device_token, device_heartbeat, device_offer, device_status, device_root, device_blob
    ),
    tags(
        (name = "fleet", description = "Fleet control plane: devices, groups, releases, deployments"),
        (name = "fleet-device", description = "Routes devices call (enrollment, token, heartbeat, offers, status)")
    )
)]
pub struct FleetApiDoc;
