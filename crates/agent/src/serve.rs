//! The kernels the device serves, and the local query API over them.
//!
//! Each channel holds an `Arc` of its open kernel; a query takes its own clone before it
//! starts, so a swap (replacing the channel's `Arc`) never touches a query in flight: it
//! finishes on the kernel it started on, whose file stays mapped until the last clone is
//! gone. The API is the server's kernel query route (`POST /v1/kernels/{id}/query`, where
//! `{id}` is a channel or a kernel id), authenticated by the device's local key.

use crate::state::Installed;
use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kernelize_embed::Embedder;
use kernelize_index::filter::Filter;
use kernelize_kernel::{Kernel, SearchParams};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Most results one query may ask for.
pub const MAX_K: u32 = 1000;
/// Widest probe / beam one query may ask for.
pub const MAX_PROBE: u32 = 4096;
/// Longest query text, bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Largest request body, bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A kernel being served and what it is.
#[derive(Debug)]
pub struct Served {
    /// The open kernel.
    pub kernel: Kernel,
    /// Its release.
    pub installed: Installed,
}

/// The kernels served, by channel, and the text embedder (loaded on first use).
#[derive(Debug, Default)]
pub struct Kernels {
    map: RwLock<BTreeMap<String, Arc<Served>>>,
    embedder: OnceLock<Result<Arc<Embedder>, String>>,
}

/// One query (the server's kernel query body).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Query vector.
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
    /// Query text (embedded on the device).
    #[serde(default)]
    pub text: Option<String>,
    /// Results wanted (default 10).
    #[serde(default)]
    pub k: Option<u32>,
    /// IVF lists probed or HNSW beam width.
    #[serde(default)]
    pub probe: Option<u32>,
    /// Metadata filter: an expression or its JSON form.
    #[serde(default)]
    pub filter: Option<Value>,
}

/// One result row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hit {
    /// The ids the row stands for.
    pub ids: Vec<String>,
    /// Estimated score.
    pub score: f32,
    /// Text, when kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// A query's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryAnswer {
    /// Rows, best first.
    pub hits: Vec<Hit>,
    /// Time spent, ms.
    pub took_ms: f64,
    /// The release that answered.
    pub release: Installed,
}

/// A query that cannot be answered: HTTP status, code, message.
#[derive(Debug, Clone)]
pub struct QueryError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"code": self.1, "message": self.2}))).into_response()
    }
}

fn invalid(msg: impl Into<String>) -> QueryError {
    QueryError(StatusCode::BAD_REQUEST, "invalid_argument", msg.into())
}

impl Kernels {
    /// The kernel served on `channel` (or whose kernel id is `id`).
    pub fn get(&self, id: &str) -> Option<Arc<Served>> {
        let m = self.map.read();
        m.get(id).cloned().or_else(|| m.values().find(|s| s.installed.kernel_id == id).cloned())
    }

    /// Serves `served` on `channel` (None: nothing); returns what served before.
    pub fn set(&self, channel: &str, served: Option<Arc<Served>>) -> Option<Arc<Served>> {
        let mut m = self.map.write();
        match served {
            Some(s) => m.insert(channel.to_owned(), s),
            None => m.remove(channel),
        }
    }

    /// What is served, by channel.
    pub fn list(&self) -> BTreeMap<String, Installed> {
        self.map.read().iter().map(|(c, s)| (c.clone(), s.installed.clone())).collect()
    }

    /// The text embedder (loaded once, from the models directory).
    pub fn embedder(&self) -> Result<Arc<Embedder>, String> {
        self.embedder
            .get_or_init(|| {
                let dir = Embedder::default_model_dir();
                Embedder::load(&dir).map(Arc::new).map_err(|e| {
                    format!(
                        "the text model is not installed ({}: {e}); install it with `kernelize models install`, or query with a vector",
                        dir.display()
                    )
                })
            })
            .clone()
    }

    /// Answers a query on one kernel (blocking: call off the async threads).
    pub fn query_on(&self, served: &Served, req: &QueryRequest) -> Result<QueryAnswer, QueryError> {
        let t = Instant::now();
        let k = req.k.unwrap_or(10);
        if k == 0 || k > MAX_K {
            return Err(invalid(format!("k: {k}; must be 1 ..= {MAX_K}")));
        }
        if let Some(p) = req.probe
            && (p == 0 || p > MAX_PROBE)
        {
            return Err(invalid(format!("probe: {p}; must be 1 ..= {MAX_PROBE}")));
        }
        let filter = match &req.filter {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(Filter::parse(s).map_err(|e| invalid(format!("filter: {e}")))?),
            Some(v @ Value::Object(_)) => Some(Filter::from_json(v).map_err(|e| invalid(format!("filter: {e}")))?),
            Some(_) => return Err(invalid("filter: expected an expression (string) or its JSON form (object)")),
        };
        let vector = match (&req.vector, &req.text) {
            (Some(v), _) => v.clone(),
            (None, Some(text)) => {
                if text.len() > MAX_TEXT_BYTES {
                    return Err(invalid(format!("text: {} bytes, at most {MAX_TEXT_BYTES}", text.len())));
                }
                let e = self.embedder().map_err(|m| QueryError(StatusCode::SERVICE_UNAVAILABLE, "no_model", m))?;
                e.embed(&[text.as_str()])
                    .map_err(|e| QueryError(StatusCode::INTERNAL_SERVER_ERROR, "embed_failed", e.to_string()))?
                    .into_iter()
                    .next()
                    .unwrap_or_default()
            }
            (None, None) => return Err(invalid("give the query as `vector` or `text`")),
        };
        let params = SearchParams { k: k as usize, probe: req.probe.map(|p| p as usize), filter };
        let hits = served.kernel.search(&vector, &params).map_err(|e| invalid(e.to_string()))?;
        Ok(QueryAnswer {
            hits: hits
                .into_iter()
                .map(|h| Hit { ids: h.ids, score: h.score, text: h.text, metadata: h.metadata })
                .collect(),
            took_ms: t.elapsed().as_secs_f64() * 1e3,
            release: served.installed.clone(),
        })
    }
}

#[derive(Clone)]
struct Api {
    kernels: Arc<Kernels>,
    /// A per-process HMAC key and the local key's tag under it: `hmac::verify` compares
    /// in constant time.
    hmac: Arc<(ring::hmac::Key, Vec<u8>)>,
}

/// The local API's router: `GET /healthz` (no key), `GET /v1/kernels`,
/// `POST /v1/kernels/{id}/query` (bearer: the local key).
pub fn router(kernels: Arc<Kernels>, key: &str) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/kernels", get(list))
        .route("/v1/kernels/{id}/query", post(query))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Api { kernels, hmac: Arc::new(hmac_of(key)) })
}

fn hmac_of(key: &str) -> (ring::hmac::Key, Vec<u8>) {
    let rng = ring::rand::SystemRandom::new();
    // Only fails when the system RNG does; a key of zeros still verifies correctly.
    let k = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
        .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[0; 32]));
    let tag = ring::hmac::sign(&k, key.as_bytes()).as_ref().to_vec();
    (k, tag)
}

fn authorized(api: &Api, headers: &HeaderMap) -> Result<(), QueryError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if ring::hmac::verify(&api.hmac.0, given.as_bytes(), &api.hmac.1).is_ok() {
        Ok(())
    } else {
        Err(QueryError(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "give the local key as `Authorization: Bearer …`".into(),
        ))
    }
}

async fn healthz(AxState(api): AxState<Api>) -> Json<Value> {
    Json(json!({"status": "ok", "channels": api.kernels.list().len()}))
}

async fn list(AxState(api): AxState<Api>, headers: HeaderMap) -> Result<Json<Value>, QueryError> {
    authorized(&api, &headers)?;
    Ok(Json(json!({ "kernels": api.kernels.list() })))
}

async fn query(
    AxState(api): AxState<Api>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<QueryAnswer>, QueryError> {
    authorized(&api, &headers)?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    let req: QueryRequest =
        serde_path_to_error::deserialize(de).map_err(|e| invalid(format!("body: {}: {}", e.path(), e.inner())))?;
    // The kernel is taken now: a swap after this point does not affect this query.
    let served = api
        .kernels
        .get(&id)
        .ok_or_else(|| QueryError(StatusCode::NOT_FOUND, "not_found", format!("no kernel served as {id:?}")))?;
    let kernels = api.kernels.clone();
    tokio::task::spawn_blocking(move || kernels.query_on(&served, &req))
        .await
        .map_err(|e| QueryError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map(Json)
}
