//! Routes, handlers and the OpenAPI document (generated from these annotations).

use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::model::*;
use crate::state::AppState;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

type St = State<Arc<AppState>>;

/// A JSON body whose rejections are API errors (400, 413, 415) in the one error shape.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            )),
            Err(JsonRejection::BytesRejection(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.body_text()))
            }
            Err(e) => Err(ApiError::invalid(format!("request body: {}", e.body_text()))),
        }
    }
}

/// Path parameters whose rejections are 400 in the one error shape.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e: PathRejection| ApiError::invalid(format!("path: {}", e.body_text())))
    }
}

/// Query parameters whose rejections are 400 in the one error shape.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e: QueryRejection| ApiError::invalid(format!("query: {}", e.body_text())))
    }
}

/// The authenticated principal (put there by the auth middleware); 401 without one.
#[derive(Debug)]
pub struct Auth(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Auth)
            .ok_or_else(|| ApiError::unauthenticated("not authenticated"))
    }
}

/// A key's or token's collections for an audit detail: `all`, or the JSON list.
fn scope_text(collections: Option<&[String]>) -> String {
    collections.map_or_else(|| "all".to_owned(), |l| serde_json::to_string(l).unwrap_or_default())
}

/// Detail for the audit entry of a request, attached to its response.
#[derive(Debug, Clone)]
pub struct AuditDetail(pub String);

pub(crate) fn audited(detail: String, status: StatusCode, body: impl IntoResponse) -> Response {
    let mut r = (status, body).into_response();
    r.extensions_mut().insert(AuditDetail(detail));
    r
}

/// Every error response an API operation can give, in the one error shape.
pub struct Errors;

impl utoipa::IntoResponses for Errors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        [
            ("400", "Invalid request (body, path, query, filter, limits)"),
            ("401", "Missing, invalid, expired or revoked credentials"),
            ("403", "The key's role or scope does not allow this"),
            ("404", "No such collection, record, key, kernel or backup"),
            ("405", "Method not allowed on this path"),
            ("408", "The request body did not arrive in time (`body_timeout`)"),
            ("409", "Conflict (exists already, revoked, `last_admin`, kernel not built or expired)"),
            ("413", "Request body too large"),
            ("415", "Body is not JSON"),
            ("429", "Rate limited; see Retry-After"),
            ("500", "Internal error (details only in the server log)"),
            ("503", "Overloaded, timed out, or a dependency is unavailable; see Retry-After"),
            ("507", "The server's storage is full (`storage_full`)"),
        ]
        .into_iter()
        .map(|(code, desc)| {
            let content =
                ContentBuilder::new().schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody"))).build();
            (
                code.to_owned(),
                RefOr::T(ResponseBuilder::new().description(desc).content("application/json", content).build()),
            )
        })
        .collect()
    }
}

// ---------------------------------------------------------------- collections

/// List the collections this key can see.
#[utoipa::path(get, path = "/v1/collections", tag = "collections", security(("bearer" = [])),
    responses((status = 200, description = "Collections", body = CollectionList), Errors))]
async fn list_collections(State(st): St, Auth(p): Auth) -> Result<Json<CollectionList>, ApiError> {
    Ok(Json(st.list_collections(&p).await?))
}

/// Create a collection (writer or admin, name in scope).
#[utoipa::path(post, path = "/v1/collections", tag = "collections", security(("bearer" = [])),
    request_body = CreateCollection,
    responses((status = 201, description = "Created", body = CollectionInfo), Errors))]
async fn create_collection(
    State(st): St,
    Auth(p): Auth,
    Body(req): Body<CreateCollection>,
) -> Result<Response, ApiError> {
    let info = st.create_collection(&p, req).await?;
    Ok(audited(format!("dim={} metric={:?}", info.dim, info.metric), StatusCode::CREATED, Json(info)))
}

/// Describe a collection with its statistics.
#[utoipa::path(get, path = "/v1/collections/{name}", tag = "collections", security(("bearer" = [])),
    params(("name" = String, Path, description = "Collection", example = "docs")),
    responses((status = 200, description = "The collection", body = CollectionInfo), Errors))]
async fn describe_collection(
    State(st): St,
    Auth(p): Auth,
    PathParams(name): PathParams<String>,
) -> Result<Json<CollectionInfo>, ApiError> {
    Ok(Json(st.describe(&p, &name).await?))
}

/// Drop a collection and all its records (writer or admin).
#[utoipa::path(delete, path = "/v1/collections/{name}", tag = "collections", security(("bearer" = [])),
    params(("name" = String, Path, description = "Collection", example = "docs")),
    responses((status = 204, description = "Dropped"), Errors))]
async fn drop_collection(
    State(st): St,
    Auth(p): Auth,
    PathParams(name): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    st.drop_collection(&p, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- records

/// Insert or replace a batch of records atomically. Records without a vector have their
/// text embedded by the server.
#[utoipa::path(post, path = "/v1/collections/{name}/records", tag = "records", security(("bearer" = [])),
    params(("name" = String, Path, description = "Collection", example = "docs"), ("Idempotency-Key" = Option<String>, Header, description = "Cluster: a retried write with the same key is stored once")),
    request_body = UpsertRequest,
    responses((status = 200, description = "Written and durable", body = WriteResult), Errors))]
async fn upsert(
    State(st): St,
    Auth(p): Auth,
    PathParams(name): PathParams<String>,
    headers: axum::http::HeaderMap,
    Body(req): Body<UpsertRequest>,
) -> Result<Response, ApiError> {
    let r = st.upsert(&p, &name, req, idempotency_key(&headers)?).await?;
    Ok(audited(r.audit_detail(), StatusCode::OK, Json(r)))
}

/// The `Idempotency-Key` header of a write (1-128 visible ASCII characters): in a cluster,
/// a write retried with the same key is stored once (within the log's duplicate window).
fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(k.to_owned())),
        _ => Err(ApiError::invalid("Idempotency-Key: use 1-128 visible ASCII characters")),
    }
}

/// Page through records in key order.
#[utoipa::path(get, path = "/v1/collections/{name}/records", tag = "records", security(("bearer" = [])),
    params(("name" = String, Path, description = "Collection", example = "docs"), ScanParams),
    responses((status = 200, description = "A page of records", body = ScanPage), Errors))]
async fn scan(
    State(st): St,
    Auth(p): Auth,
    PathParams(name): PathParams<String>,
    QueryParams(q): QueryParams<ScanParams>,
) -> Result<Json<ScanPage>, ApiError> {
    Ok(Json(st.scan(&p, &name, q).await?))
}

/// Committed changes of a collection, in commit order (change data capture; cluster mode
/// only: a single node answers 409 `cluster_only`). Read on with `after` = `next`; 410
/// `changes_expired` when the retention already dropped changes after `after`.
#[utoipa::path(get, path = "/v1/collections/{name}/changes", tag = "records", security(("bearer" = [])),
    params(("name" = String, Path, description = "Collection", example = "docs"), ChangesParams),
    responses((status = 200, description = "A page of changes", body = ChangesPage), Errors))]
async fn changes(
    State(st): St,
    Auth(p): Auth,
    PathParams(name): PathParams<String>,
    QueryParams(q): QueryParams<ChangesParams>,
) -> Result<Json<ChangesPage>, ApiError> {
    Ok(Json(st.changes(&p, &name, q).await?))
}

/// Get one record.
#[utoipa::path(get, path = "/v1/collections/{name}/records/{id}", tag = "records", security(("bearer" = [])),
    params(("name" = String, Path, description = "Collection", example = "docs"), ("id" = String, Path, description = "Record id", example = "r1"), GetParams),
    responses((status = 200, description = "The record", body = RecordOut), Errors))]
async fn get_record(
    State(st): St,
    Auth(p): Auth,
    PathParams((name, id)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<GetParams>,
) -> Result<Json<RecordOut>, ApiError> {
    Ok(Json(st.get_record(&p, &name, id, q).await?))
}

/// The image or audio file a record of an image or audio collection was encoded from
/// (kept when it came over HTTP; `kernelize ingest --keep-files` keeps ingested ones),
/// with its media type. Served inert: `Content-Security-Policy: sandbox`, `nosniff`.
#[utoipa::path(get, path = "/v1/collections/{name}/records/{id}/media", tag = "records", security(("bearer" = [])),
    params(("name" = String, Path, description = "Collection", example = "photos"), ("id" = String, Path, description = "Record id", example = "cat.jpg")),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>),
        Errors))]
async fn record_media(
    State(st): St,
    Auth(p): Auth,
    PathParams((name, id)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    let (bytes, media_type) = st.record_media(&p, &name, id).await?;
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("inline"));
    resp.extensions_mut().insert(PagePolicy::MEDIA);
    Ok(resp)
}

/// Delete one record.
#[utoipa::path(delete, path = "/v1/collections/{name}/records/{id}", tag = "records", security(("bearer" = [])),
    params(("name" = String, Path, description = "Collection", example = "docs"), ("id" = String, Path, description = "Record id", example = "r1"), ("Idempotency-Key" = Option<String>, Header, description = "Cluster: a retried write with the same key is stored once")),
    responses((status = 200, description = "Deleted (deleting a missing id is not an error)", body = WriteResult), Errors))]
async fn delete_record(
    State(st): St,
    Auth(p): Auth,
    PathParams((name, id)): PathParams<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let r = st.delete(&p, &name, vec![id], idempotency_key(&headers)?).await?;
    Ok(audited(r.audit_detail(), StatusCode::OK, Json(r)))
}

/// Delete a batch of records atomically.
#[utoipa::path(post, path = "/v1/collections/{name}/records:delete", tag = "records", security(("bearer" = [])),
    params(("name" = String, Path, description = "Collection", example = "docs"), ("Idempotency-Key" = Option<String>, Header, description = "Cluster: a retried write with the same key is stored once")),
    request_body = DeleteRequest,
    responses((status = 200, description = "Deleted", body = WriteResult), Errors))]
async fn delete_records(
    State(st): St,
    Auth(p): Auth,
    PathParams(name): PathParams<String>,
    headers: axum::http::HeaderMap,
    Body(req): Body<DeleteRequest>,
) -> Result<Response, ApiError> {
    let r = st.delete(&p, &name, req.ids, idempotency_key(&headers)?).await?;
    Ok(audited(r.audit_detail(), StatusCode::OK, Json(r)))
}

// ---------------------------------------------------------------- search, embed

/// Search: nearest vectors, BM25 keywords, or both fused; with metadata filters.
#[utoipa::path(post, path = "/v1/collections/{name}/search", tag = "search", security(("bearer" = [])),
    params(("name" = String, Path, description = "Collection", example = "docs")),
    request_body = SearchRequest,
    responses((status = 200, description = "Hits, best first", body = SearchResponse), Errors))]
async fn search(
    State(st): St,
    Auth(p): Auth,
    PathParams(name): PathParams<String>,
    Body(req): Body<SearchRequest>,
) -> Result<Json<SearchResponse>, ApiError> {
    Ok(Json(st.search(&p, &name, req).await?))
}

/// Embed texts with all-MiniLM-L6-v2 (in process, on the CPU).
#[utoipa::path(post, path = "/v1/embed", tag = "search", security(("bearer" = [])),
    request_body = EmbedRequest,
    responses((status = 200, description = "Vectors", body = EmbedResponse), Errors))]
async fn embed(State(st): St, Auth(p): Auth, Body(req): Body<EmbedRequest>) -> Result<Json<EmbedResponse>, ApiError> {
    Ok(Json(st.embed(&p, req).await?))
}

// ---------------------------------------------------------------- kernels

/// Build a knowledge kernel of a collection in the background (writer on the collection).
#[utoipa::path(post, path = "/v1/kernels", tag = "kernels", security(("bearer" = [])),
    request_body = KernelBuildRequest,
    responses((status = 202, description = "Started; follow GET /v1/kernels/{id}/events", body = KernelInfo), Errors))]
async fn build_kernel(State(st): St, Auth(p): Auth, Body(req): Body<KernelBuildRequest>) -> Result<Response, ApiError> {
    let k = st.start_kernel_build(&p, req).await?;
    Ok(audited(format!("kernel={} collection={}", k.id, k.collection), StatusCode::ACCEPTED, Json(k)))
}

/// List the kernels of collections in the key's scope.
#[utoipa::path(get, path = "/v1/kernels", tag = "kernels", security(("bearer" = [])),
    responses((status = 200, description = "Kernels, newest first", body = KernelList), Errors))]
async fn list_kernels(State(st): St, Auth(p): Auth) -> Result<Json<KernelList>, ApiError> {
    Ok(Json(st.list_kernels(&p).await?))
}

/// A kernel: build state and progress, then its signed manifest and compression report.
#[utoipa::path(get, path = "/v1/kernels/{id}", tag = "kernels", security(("bearer" = [])),
    params(("id" = String, Path, description = "Kernel id")),
    responses((status = 200, description = "The kernel", body = KernelInfo), Errors))]
async fn describe_kernel(
    State(st): St,
    Auth(p): Auth,
    PathParams(id): PathParams<String>,
) -> Result<Json<KernelInfo>, ApiError> {
    Ok(Json(st.describe_kernel(&p, &id).await?))
}

/// A kernel's build as server-sent events (reader on its collection): event `kernel`
/// with the kernel now (state, stage, progress), after each change of its progress (at
/// most ten a second) and when the build has ended (with the manifest); then the stream
/// ends. Every event is the whole kernel, so a reconnect starts from the current state.
#[utoipa::path(get, path = "/v1/kernels/{id}/events", tag = "kernels", security(("bearer" = [])),
    params(("id" = String, Path, description = "Kernel id")),
    responses((status = 200, description = "text/event-stream of KernelInfo", content_type = "text/event-stream", body = SseEvent), Errors))]
async fn kernel_events(State(st): St, Auth(p): Auth, PathParams(id): PathParams<String>) -> Result<Response, ApiError> {
    st.describe_kernel(&p, &id).await?;
    let (s, job) = (st.clone(), id.clone());
    crate::progress::job_stream(&st, &job, "kernel", move || {
        let (s, p, id) = (s.clone(), p.clone(), id.clone());
        async move { serde_json::to_value(s.describe_kernel(&p, &id).await?).map_err(ApiError::internal) }
    })
}

/// Delete a kernel (writer on its collection).
#[utoipa::path(delete, path = "/v1/kernels/{id}", tag = "kernels", security(("bearer" = [])),
    params(("id" = String, Path, description = "Kernel id")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_kernel(State(st): St, Auth(p): Auth, PathParams(id): PathParams<String>) -> Result<Response, ApiError> {
    st.delete_kernel(&p, &id).await?;
    Ok(audited(format!("kernel={id}"), StatusCode::NO_CONTENT, ()))
}

/// Download a kernel file (the plain, signed kernel, also when it is sealed at rest).
/// Supports `Range` (a device resumes with `Range: bytes=N-`) and `If-Range` with the
/// strong `ETag` sent (the kernel's SHA-256; any other validator gets the whole file);
/// verify it with the key from GET /v1/kernel-signing-key. An expired kernel is not
/// served (409).
#[utoipa::path(get, path = "/v1/kernels/{id}/download", tag = "kernels", security(("bearer" = [])),
    params(("id" = String, Path, description = "Kernel id")),
    responses(
        (status = 200, description = "The kernel file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The requested byte range", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 416, description = "Range not satisfiable"),
        Errors))]
async fn download_kernel(
    State(st): St,
    Auth(p): Auth,
    PathParams(id): PathParams<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let (kernel, sha256) = st.kernel_file(&p, &id).await?;
    let etag = format!("\"{sha256}\"");
    // RFC 9110 §13.1.5: a Range is honoured only when If-Range names the current
    // representation (strong comparison with our ETag); otherwise the whole file (200).
    // A date validator never matches: the ETag is the only validator we send.
    let if_range_ok = headers.get(header::IF_RANGE).is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let range = headers.get(header::RANGE).filter(|_| if_range_ok).and_then(|v| v.to_str().ok());
    // The open kernel's bytes (mapped, or decrypted from its sealed file): the plain,
    // signed kernel, sent without a copy.
    let body = axum::body::Bytes::from_owner(KernelBytes(kernel));
    let (status, body, content_range) = download_range(body, range);
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(v) = content_range.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::CONTENT_RANGE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    let disposition = format!("attachment; filename=\"{id}.{}\"", kernelize_kernel::EXT);
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(audited(format!("kernel={id}"), status, resp))
}

/// An open kernel as the owner of a response body.
struct KernelBytes(Arc<kernelize_kernel::Kernel>);

impl AsRef<[u8]> for KernelBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// The answer to an optional `Range` header over `body` (as tower-http's `ServeFile`
/// answers): the whole body (200); one satisfiable range (206, with its `Content-Range`);
/// several ranges (multipart is not served) or none satisfiable (416, `bytes */size`).
fn download_range(body: axum::body::Bytes, range: Option<&str>) -> (StatusCode, axum::body::Bytes, Option<String>) {
    let size = body.len() as u64;
    let Some(range) = range else {
        return (StatusCode::OK, body, None);
    };
    let unsatisfiable = |msg: &'static str| {
        (
            StatusCode::RANGE_NOT_SATISFIABLE,
            axum::body::Bytes::from_static(msg.as_bytes()),
            Some(format!("bytes */{size}")),
        )
    };
    match http_range_header::parse_range_header(range).and_then(|r| r.validate(size)) {
        Ok(ranges) if ranges.len() == 1 => {
            let (start, end) = (*ranges[0].start(), *ranges[0].end());
            // validate() keeps start <= end < size.
            let part = body.slice(start as usize..=end as usize);
            (StatusCode::PARTIAL_CONTENT, part, Some(format!("bytes {start}-{end}/{size}")))
        }
        Ok(_) => unsatisfiable("Cannot serve multipart range requests"),
        Err(_) => unsatisfiable(""),
    }
}

/// Query a hosted kernel (reader on its collection).
#[utoipa::path(post, path = "/v1/kernels/{id}/query", tag = "kernels", security(("bearer" = [])),
    params(("id" = String, Path, description = "Kernel id")),
    request_body = KernelQueryRequest,
    responses((status = 200, description = "Rows, best first", body = KernelQueryResponse), Errors))]
async fn query_kernel(
    State(st): St,
    Auth(p): Auth,
    PathParams(id): PathParams<String>,
    Body(req): Body<KernelQueryRequest>,
) -> Result<Json<KernelQueryResponse>, ApiError> {
    Ok(Json(st.query_kernel(&p, &id, req).await?))
}

/// The public key the server signs kernels with (any key may read it).
#[utoipa::path(get, path = "/v1/kernel-signing-key", tag = "kernels", security(("bearer" = [])),
    responses((status = 200, description = "ed25519 public key", body = SigningKeyInfo), Errors))]
async fn kernel_signing_key(State(st): St, Auth(_): Auth) -> Json<SigningKeyInfo> {
    Json(st.kernel_signing_key())
}

// ---------------------------------------------------------------- admin

/// Start an online backup of every collection (admin).
#[utoipa::path(post, path = "/v1/backups", tag = "admin", security(("bearer" = [])),
    request_body = BackupRequest,
    responses((status = 202, description = "Started; poll its status", body = BackupInfo), Errors))]
async fn start_backup(State(st): St, Auth(p): Auth, Body(req): Body<BackupRequest>) -> Result<Response, ApiError> {
    let b = st.start_backup(&p, req).await?;
    Ok(audited(format!("backup={} path={}", b.id, b.path), StatusCode::ACCEPTED, Json(b)))
}

/// List backup jobs (admin).
#[utoipa::path(get, path = "/v1/backups", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Jobs", body = BackupList), Errors))]
async fn list_backups(State(st): St, Auth(p): Auth) -> Result<Json<BackupList>, ApiError> {
    Ok(Json(st.list_backups(&p).await?))
}

/// The slow-query log: searches at or over `slow_query_ms`, with their explain (admin).
#[utoipa::path(get, path = "/v1/slow-queries", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "The threshold and the last slow searches, newest first", body = SlowQueryList), Errors))]
async fn slow_queries(State(st): St, Auth(p): Auth) -> Result<Json<SlowQueryList>, ApiError> {
    Ok(Json(st.slow_queries(&p)?))
}

/// The cluster as this node sees it: members and every shard's lease and checkpoint
/// (admin; a single node answers with no node and no shards).
#[utoipa::path(get, path = "/v1/cluster", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Members and shards", body = ClusterInfo), Errors))]
async fn cluster_info(State(st): St, Auth(p): Auth) -> Result<Json<ClusterInfo>, ApiError> {
    p.require(crate::auth::Role::Admin, None)?;
    let Some(node) = &st.cluster else {
        return Ok(Json(ClusterInfo { node: None, members: Vec::new(), shards: Vec::new() }));
    };
    let shards = node
        .placement()
        .await?
        .into_iter()
        .map(|s| ShardInfo {
            collection: s.collection,
            shard: s.shard,
            owner: s.owner,
            epoch: s.epoch,
            checkpoint: s.checkpoint,
            segments: s.segments as u64,
            commits: s.commits,
        })
        .collect();
    Ok(Json(ClusterInfo { node: Some(node.id().to_owned()), members: node.members(), shards }))
}

/// Status of a backup job (admin).
#[utoipa::path(get, path = "/v1/backups/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "Backup id")),
    responses((status = 200, description = "The job", body = BackupInfo), Errors))]
async fn backup_status(
    State(st): St,
    Auth(p): Auth,
    PathParams(id): PathParams<String>,
) -> Result<Json<BackupInfo>, ApiError> {
    Ok(Json(st.backup_status(&p, &id).await?))
}

/// A backup job as server-sent events (admin): event `backup` with the job now, after
/// each change of its progress (at most ten a second) and when it has ended; then the
/// stream ends. Every event is the whole job, so a reconnect starts from the current state.
#[utoipa::path(get, path = "/v1/backups/{id}/events", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "Backup id")),
    responses((status = 200, description = "text/event-stream of BackupInfo", content_type = "text/event-stream", body = SseEvent), Errors))]
async fn backup_events(State(st): St, Auth(p): Auth, PathParams(id): PathParams<String>) -> Result<Response, ApiError> {
    st.backup_status(&p, &id).await?;
    let (s, job) = (st.clone(), id.clone());
    crate::progress::job_stream(&st, &job, "backup", move || {
        let (s, p, id) = (s.clone(), p.clone(), id.clone());
        async move { serde_json::to_value(s.backup_status(&p, &id).await?).map_err(ApiError::internal) }
    })
}

/// Usage per key: requests, records written, texts embedded, bytes stored (admin).
#[utoipa::path(get, path = "/v1/usage", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Usage", body = UsageReport), Errors))]
async fn usage(State(st): St, Auth(p): Auth) -> Result<Json<UsageReport>, ApiError> {
    Ok(Json(st.usage_report(&p).await?))
}

/// Create an API key; its secret is in this response only (admin).
#[utoipa::path(post, path = "/v1/keys", tag = "keys", security(("bearer" = [])),
    request_body = CreateKey,
    responses((status = 201, description = "Created", body = KeyCreated), Errors))]
async fn create_key(State(st): St, Auth(p): Auth, Body(req): Body<CreateKey>) -> Result<Response, ApiError> {
    let k = st.create_key(&p, req).await?;
    let detail = format!(
        "new key {} role {} collections {} expires {}",
        k.info.id,
        k.info.role.as_str(),
        scope_text(k.info.collections.as_deref()),
        k.info.expires_at.as_deref().unwrap_or("never")
    );
    let detail = match &k.info.quota {
        Some(q) => format!("{detail} quota {}", serde_json::to_string(q).unwrap_or_default()),
        None => detail,
    };
    Ok(audited(detail, StatusCode::CREATED, Json(k)))
}

/// List API keys, never their secrets (admin).
#[utoipa::path(get, path = "/v1/keys", tag = "keys", security(("bearer" = [])),
    responses((status = 200, description = "Keys", body = KeyList), Errors))]
async fn list_keys(State(st): St, Auth(p): Auth) -> Result<Json<KeyList>, ApiError> {
    Ok(Json(st.list_keys(&p).await?))
}

/// Rotate a key: a new secret now, the old one valid for a grace period (admin).
#[utoipa::path(post, path = "/v1/keys/{id}/rotate", tag = "keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    request_body = RotateKey,
    responses((status = 200, description = "The new key", body = KeyCreated), Errors))]
async fn rotate_key(
    State(st): St,
    Auth(p): Auth,
    PathParams(id): PathParams<String>,
    Body(req): Body<RotateKey>,
) -> Result<Response, ApiError> {
    let k = st.rotate_key(&p, &id, req).await?;
    Ok(audited(format!("replaced by {}", k.info.id), StatusCode::OK, Json(k)))
}

/// Set a key's quotas, replacing the ones it had (`{}`: none); in force at once (admin).
#[utoipa::path(put, path = "/v1/keys/{id}/quota", tag = "keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    request_body = QuotaSettings,
    responses((status = 200, description = "The key with its new quotas", body = KeyInfo), Errors))]
async fn set_key_quota(
    State(st): St,
    Auth(p): Auth,
    PathParams(id): PathParams<String>,
    Body(req): Body<QuotaSettings>,
) -> Result<Response, ApiError> {
    let k = st.set_key_quota(&p, &id, req).await?;
    let q = k.quota.unwrap_or_default();
    let n = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
    let detail =
        format!("quota records {} bytes {} requests_per_day {}", n(q.records), n(q.bytes), n(q.requests_per_day));
    Ok(audited(detail, StatusCode::OK, Json(k)))
}

/// Revoke a key and every token it minted (admin).
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    responses((status = 204, description = "Revoked"), Errors))]
async fn revoke_key(State(st): St, Auth(p): Auth, PathParams(id): PathParams<String>) -> Result<StatusCode, ApiError> {
    st.revoke_key(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Mint a short-lived EdDSA token with at most this key's role and scope (any key).
#[utoipa::path(post, path = "/v1/tokens", tag = "keys", security(("bearer" = [])),
    request_body = TokenRequest,
    responses((status = 201, description = "Minted", body = TokenResponse), Errors))]
async fn mint_token(State(st): St, Auth(p): Auth, Body(req): Body<TokenRequest>) -> Result<Response, ApiError> {
    let ttl = req.ttl_secs.unwrap_or(crate::admin::DEFAULT_TOKEN_TTL_SECS);
    let t = st.mint_token(&p, req).await?;
    let detail = format!(
        "role {} collections {} ttl_secs {} until {}",
        t.role.as_str(),
        scope_text(t.collections.as_deref()),
        ttl,
        t.expires_at
    );
    Ok(audited(detail, StatusCode::CREATED, Json(t)))
}

/// Read the hash-chained audit log (admin).
#[utoipa::path(get, path = "/v1/audit", tag = "admin", security(("bearer" = [])),
    params(AuditParams),
    responses((status = 200, description = "Entries", body = AuditPage), Errors))]
async fn audit_log(
    State(st): St,
    Auth(p): Auth,
    QueryParams(q): QueryParams<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    Ok(Json(st.audit_page(&p, q).await?))
}

/// Verify the audit log: the keyed hash chain from the first entry, the signed
/// checkpoints and every key's last recorded state, as `kernelize audit verify` does (admin).
#[utoipa::path(get, path = "/v1/audit/verify", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "The verdict; `problem` names the first break, absent when the log holds", body = crate::audit::AuditVerdict), Errors))]
async fn audit_verify(State(st): St, Auth(p): Auth) -> Result<Json<crate::audit::AuditVerdict>, ApiError> {
    Ok(Json(st.audit_verdict(&p).await?))
}

/// Prometheus metrics (admin).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"), Errors))]
async fn metrics(State(st): St, Auth(p): Auth) -> Result<Response, ApiError> {
    let text = st.metrics_text(&p).await?;
    let mut r = text.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(r)
}

// ---------------------------------------------------------------- public

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health), Errors))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into(), checks: BTreeMap::new() })
}

/// Readiness: the data directory is writable, the metadata store answers and every
/// collection can serve (none damaged or poisoned).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = Health), (status = 503, description = "Not ready", body = Health), Errors))]
async fn readyz(State(st): St) -> Response {
    let mut checks = BTreeMap::new();
    let probe = st.config.data_dir.join(".readyz");
    let dir_ok = crate::engine::blocking(move || {
        fs_err::write(&probe, b"ok").and_then(|()| fs_err::remove_file(&probe)).map_err(ApiError::internal)
    })
    .await;
    checks.insert(
        "data_dir".to_owned(),
        dir_ok.as_ref().map_or_else(|_| "not writable".to_owned(), |()| "ok".to_owned()),
    );
    let meta_ok = st.meta.ping().await;
    checks.insert(
        "metadata_store".to_owned(),
        meta_ok.as_ref().map_or_else(|_| "unreachable".to_owned(), |()| "ok".to_owned()),
    );
    checks.insert(
        "embedder".to_owned(),
        match &st.embedder {
            Ok(_) => "ok".to_owned(),
            Err(_) => "not installed (embedding endpoints answer 503)".to_owned(),
        },
    );
    // Every collection that cannot serve (damaged files, or poisoned by a failed write)
    // makes the server not ready; its name and why are in the checks.
    let mut collections_ok = true;
    for (name, health) in st.db.health() {
        let state = match health {
            kernelize_store::Health::Ok => continue,
            kernelize_store::Health::FlushFailing(_) => {
                "flush failing (writes are durable in the WAL; retried)".to_owned()
            }
            kernelize_store::Health::Poisoned(_) => {
                collections_ok = false;
                "poisoned: a write to disk failed; writes are refused until the server restarts".to_owned()
            }
            kernelize_store::Health::Unavailable(_) => {
                collections_ok = false;
                "unavailable: its files are damaged (the server log has the file and offset; see `kernelize recover`)"
                    .to_owned()
            }
        };
        checks.insert(format!("collection:{name}"), state);
    }
    // A cluster node: joined, connected, and hosting every replica assigned to it.
    let cluster_ok = match &st.cluster {
        None => true,
        Some(node) => {
            let r = node.readiness();
            checks.insert("cluster".to_owned(), r.clone().unwrap_or_else(|e| e));
            r.is_ok()
        }
    };
    let ready = dir_ok.is_ok() && meta_ok.is_ok() && collections_ok && cluster_ok;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Health { status: if ready { "ok" } else { "not ready" }.into(), checks })).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object), Errors))]
async fn openapi_json() -> Response {
    Json(openapi()).into_response()
}

/// API reference as HTML, rendered from the OpenAPI document on the server (no scripts).
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "HTML", body = String, content_type = "text/html"), Errors))]
async fn docs() -> Response {
    let mut r = Html(crate::docs::render(&openapi())).into_response();
    r.extensions_mut().insert(PagePolicy::DOCS);
    r
}

/// The Content-Security-Policy and caching of a page for browsers (the `/docs` page, the
/// console), attached to its response; `observe` sets both headers from it. Every other
/// response gets `default-src 'none'; frame-ancestors 'none'` and `no-store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagePolicy {
    /// `Content-Security-Policy`.
    pub csp: &'static str,
    /// `Cache-Control`.
    pub cache_control: &'static str,
}

impl PagePolicy {
    /// The `/docs` page: no scripts, its one inline style sheet.
    pub const DOCS: PagePolicy = PagePolicy {
        csp: "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        cache_control: "no-store",
    };
    /// API responses.
    pub const API: PagePolicy =
        PagePolicy { csp: "default-src 'none'; frame-ancestors 'none'", cache_control: "no-store" };
    /// A kept image or audio file: inert if opened as a page (sandboxed, nothing loads).
    pub const MEDIA: PagePolicy =
        PagePolicy { csp: "default-src 'none'; frame-ancestors 'none'; sandbox", cache_control: "private, no-store" };
}

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (`kz_<id>_<secret>`) or a token minted with POST /v1/tokens"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the whole API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Kernelize", description = "Self-hosted knowledge engine: collections, search, embeddings, keys, audit."),
    modifiers(&Security),
    paths(
        list_collections, create_collection, describe_collection, drop_collection,
        upsert, scan, changes, get_record, record_media, delete_record, delete_records, search, embed,
        build_kernel, list_kernels, describe_kernel, kernel_events, delete_kernel, download_kernel, query_kernel,
        kernel_signing_key, start_backup, list_backups, backup_status, backup_events, usage, slow_queries, cluster_info,
        create_key, list_keys, rotate_key, set_key_quota, revoke_key, mint_token, audit_log, audit_verify,
        metrics, healthz, readyz, openapi_json, docs
    ),
    components(schemas(ErrorBody, crate::audit::AuditEntry)),
    tags(
        (name = "collections", description = "Collections"),
        (name = "records", description = "Records"),
        (name = "search", description = "Search and embeddings"),
        (name = "kernels", description = "Knowledge kernels: build, download, query"),
        (name = "keys", description = "API keys and tokens"),
        (name = "admin", description = "Backups, usage, audit"),
        (name = "operations", description = "Health, readiness, metrics, this document")
    )
)]
pub struct ApiDoc;

/// The generated document, with the crate version.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::fleet::FleetApiDoc::openapi());
    doc.merge(crate::programs::ProgramsApiDoc::openapi());
    doc.merge(crate::oidc::SsoApiDoc::openapi());
    doc.merge(crate::map::MapApiDoc::openapi());
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// Routes that need a principal (the auth middleware runs in front of them).
pub fn protected_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/collections", get(list_collections).post(create_collection))
        .route("/v1/collections/{name}", get(describe_collection).delete(drop_collection))
        .route("/v1/collections/{name}/records", get(scan).post(upsert))
        .route("/v1/collections/{name}/records:delete", post(delete_records))
        .route("/v1/collections/{name}/changes", get(changes))
        .route("/v1/collections/{name}/records/{id}", get(get_record).delete(delete_record))
        .route("/v1/collections/{name}/records/{id}/media", get(record_media))
        .route("/v1/collections/{name}/search", post(search))
        .route("/v1/embed", post(embed))
        .route("/v1/kernels", get(list_kernels).post(build_kernel))
        .route("/v1/kernels/{id}", get(describe_kernel).delete(delete_kernel))
        .route("/v1/kernels/{id}/events", get(kernel_events))
        .route("/v1/kernels/{id}/download", get(download_kernel))
        .route("/v1/kernels/{id}/query", post(query_kernel))
        .route("/v1/kernel-signing-key", get(kernel_signing_key))
        .route("/v1/backups", get(list_backups).post(start_backup))
        .route("/v1/backups/{id}", get(backup_status))
        .route("/v1/backups/{id}/events", get(backup_events))
        .route("/v1/usage", get(usage))
        .route("/v1/slow-queries", get(slow_queries))
        .route("/v1/cluster", get(cluster_info))
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", axum::routing::delete(revoke_key))
        .route("/v1/keys/{id}/rotate", post(rotate_key))
        .route("/v1/keys/{id}/quota", axum::routing::put(set_key_quota))
        .route("/v1/tokens", post(mint_token))
        .route("/v1/audit", get(audit_log))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/metrics", get(metrics))
}

/// Routes anyone may call.
pub fn public_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs))
}

/// 404 for unknown paths.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json")
}

/// 405 for a known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this path; see /openapi.json",
    )
}

/// The audit action of a route, or `None` for reads that are not audited.
pub fn audit_action(method: &str, route: &str) -> Option<&'static str> {
    Some(match (method, route) {
        ("POST", "/v1/collections") => "collections.create",
        ("DELETE", "/v1/collections/{name}") => "collections.drop",
        ("POST", "/v1/collections/{name}/records") => "records.upsert",
        ("POST", "/v1/collections/{name}/records:delete") => "records.delete",
        ("DELETE", "/v1/collections/{name}/records/{id}") => "records.delete",
        ("POST", "/v1/kernels") => "kernels.build",
        ("DELETE", "/v1/kernels/{id}") => "kernels.delete",
        ("GET", "/v1/kernels/{id}/download") => "kernels.download",
        ("POST", "/v1/backups") => "backups.start",
        ("GET", "/v1/backups") => "backups.list",
        ("GET", "/v1/backups/{id}") => "backups.status",
        ("GET", "/v1/backups/{id}/events") => "backups.status",
        ("GET", "/v1/usage") => "usage.read",
        ("GET", "/v1/slow-queries") => "slow_queries.read",
        ("GET", "/v1/cluster") => "cluster.read",
        ("POST", "/v1/keys") => "keys.create",
        ("GET", "/v1/keys") => "keys.list",
        ("POST", "/v1/keys/{id}/rotate") => "keys.rotate",
        ("PUT", "/v1/keys/{id}/quota") => "keys.quota",
        ("DELETE", "/v1/keys/{id}") => "keys.revoke",
        ("POST", "/v1/tokens") => "tokens.mint",
        ("GET", "/v1/audit") => "audit.read",
        ("GET", "/v1/audit/verify") => "audit.verify",
        _ => {
            return crate::fleet::audit_action(method, route)
                .or_else(|| crate::programs::audit_action(method, route))
                .or_else(|| crate::oidc::audit_action(method, route));
        }
    })
}
