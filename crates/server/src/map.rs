//! `GET /v1/collections/{name}/map`: a 2-D map of a collection for the console — a
//! deterministic sample of its records projected onto their first two principal
//! components.
//!
//! The sample is the `sample` records with the smallest hash of `(seed, id)`: the same
//! records for the same seed whatever the order of segments, compaction or the scan, and a
//! uniform draw (ids hash independently of their vectors). At most [`MAP_EXAMINE_LIMIT`]
//! records are examined, in key order (itself an order by hash of id). Cosine collections
//! are projected after normalising each vector. PCA runs by power iteration on the
//! centred sample (`Xᵀ(Xv)`, never the d×d covariance), the second component kept
//! orthogonal to the first, from a start vector drawn from the seed; each component's
//! sign is fixed (its largest entry positive), so the output is deterministic.

use crate::api::{Auth, Errors, PathParams, QueryParams};
use crate::auth::Role;
use crate::engine::cancellable;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use kernelize_store::Metric;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BinaryHeap;
use std::sync::Arc;
use utoipa::{IntoParams, OpenApi, ToSchema};

/// Most points of one map.
pub const MAX_SAMPLE: usize = 5000;
/// Points when the request does not say.
pub const DEFAULT_SAMPLE: usize = 2000;
/// Records examined per map at most.
pub const MAP_EXAMINE_LIMIT: usize = 1_000_000;
/// Characters of a record's text sent with its point.
pub const SNIPPET_CHARS: usize = 160;
/// Characters of a metadata value (as text) sent with its point.
const VALUE_CHARS: usize = 64;
/// Power iterations per component at most (stops earlier once converged).
const MAX_ITERATIONS: usize = 100;

/// What to map.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MapParams {
    /// Points (1–5000; default 2000).
    pub sample: Option<usize>,
    /// Seed of the sample and of the power iteration (default 0).
    pub seed: Option<u64>,
    /// A metadata field (dotted path for nested objects) whose value each point carries,
    /// to colour by; it must occur in the sample.
    pub color_by: Option<String>,
}

/// One record on the map.
#[derive(Debug, Serialize, ToSchema)]
pub struct MapPoint {
    /// Record id.
    pub id: String,
    /// First principal component.
    pub x: f32,
    /// Second principal component.
    pub y: f32,
    /// The start of the record's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The `color_by` field's value (scalars as they are, anything else as JSON text,
    /// cut to 64 characters); null when the record lacks it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// A 2-D map of a collection.
#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionMap {
    /// The collection.
    pub collection: String,
    /// Records examined.
    pub examined: usize,
    /// Whether the examination stopped at its limit (the sample is then from the first
    /// 1,000,000 records in key order).
    pub truncated: bool,
    /// The seed used.
    pub seed: u64,
    /// The metadata field each point's `value` is from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub color_by: Option<String>,
    /// Share of the sample's variance along each axis.
    pub explained: [f32; 2],
    /// The points, in id order.
    pub points: Vec<MapPoint>,
}

/// SplitMix64: the sample's hash of `(seed, id)` and the start vectors.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn priority(seed: u64, id: &str) -> u64 {
    // FNV-1a over the id, then mixed with the seed.
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    mix(h ^ mix(seed))
}

/// The value at dotted `path` in `metadata`.
fn field<'a>(metadata: Option<&'a kernelize_store::Metadata>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut v = metadata?.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

fn shown(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(crate::error::clip(s, VALUE_CHARS).into_owned()),
        Value::Number(_) | Value::Bool(_) | Value::Null => v.clone(),
        other => Value::String(crate::error::clip(&other.to_string(), VALUE_CHARS).into_owned()),
    }
}

/// A sampled record.
struct Picked {
    priority: u64,
    id: String,
    vector: Vec<f32>,
    text: Option<String>,
    value: Option<Value>,
}

impl PartialEq for Picked {
    fn eq(&self, o: &Self) -> bool {
        (self.priority, &self.id) == (o.priority, &o.id)
    }
}
impl Eq for Picked {}
impl PartialOrd for Picked {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Picked {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.priority, &self.id).cmp(&(o.priority, &o.id))
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalize(v: &mut [f64]) -> f64 {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    n
}

/// The top two principal axes of the centred rows `x` (n × d, row-major) and the
/// variance along each; `cancel` is checked between iterations.
fn principal_axes(
    x: &[f64],
    d: usize,
    seed: u64,
    cancel: &crate::engine::Cancel,
) -> Result<[(Vec<f64>, f64); 2], ApiError> {
    let n = x.len().checked_div(d).unwrap_or(0);
    let mut axes: Vec<(Vec<f64>, f64)> = Vec::with_capacity(2);
    for c in 0..2u64 {
        let mut v: Vec<f64> = (0..d as u64)
            .map(|i| (mix(seed ^ mix(c * 1_000_003 + i)) >> 11) as f64 / (1u64 << 53) as f64 - 0.5)
            .collect();
        let mut lambda = 0.0;
        for _ in 0..MAX_ITERATIONS {
            cancel.check()?;
            for (a, _) in &axes {
                let p = dot(&v, a);
                v.iter_mut().zip(a).for_each(|(vi, ai)| *vi -= p * ai);
            }
            if normalize(&mut v) == 0.0 {
                break;
            }
            // w = Xᵀ (X v)
            let mut w = vec![0.0; d];
            for row in x.chunks_exact(d.max(1)) {
                let s = dot(row, &v);
                w.iter_mut().zip(row).for_each(|(wi, ri)| *wi += s * ri);
            }
            for (a, _) in &axes {
                let p = dot(&w, a);
                w.iter_mut().zip(a).for_each(|(wi, ai)| *wi -= p * ai);
            }
            let norm = normalize(&mut w);
            let moved: f64 = v.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            v = w;
            lambda = norm / n.max(1) as f64;
            if norm == 0.0 || moved < 1e-7 {
                break;
            }
        }
        // A fixed sign: the entry of largest magnitude is positive.
        if let Some(big) = v.iter().copied().max_by(|a, b| a.abs().total_cmp(&b.abs()))
            && big < 0.0
        {
            v.iter_mut().for_each(|x| *x = -*x);
        }
        axes.push((v, lambda));
    }
    let second = axes.pop().unwrap_or_default();
    let first = axes.pop().unwrap_or_default();
    Ok([first, second])
}

impl AppState {
    /// A 2-D map of `name` (reader on the collection).
    pub async fn collection_map(
        self: &Arc<Self>,
        p: &crate::auth::Principal,
        name: &str,
        q: MapParams,
    ) -> Result<CollectionMap, ApiError> {
        p.require(Role::Reader, Some(name))?;
        let c = self.db.collection(name)?;
        let sample = q.sample.unwrap_or(DEFAULT_SAMPLE);
        if !(1..=MAX_SAMPLE).contains(&sample) {
            return Err(ApiError::invalid(format!("sample must be 1..={MAX_SAMPLE}, got {sample}")));
        }
        let seed = q.seed.unwrap_or(0);
        let color_by = q.color_by.filter(|f| !f.is_empty());
        if let Some(f) = &color_by
            && (f.len() > 256 || f.split('.').any(str::is_empty))
        {
            return Err(ApiError::invalid("color_by: a metadata field name or dotted path of at most 256 bytes"));
        }
        let name = name.to_owned();
        cancellable(move |cancel| {
            let cosine = c.config().metric == Metric::Cosine;
            let dim = c.config().dim;
            let snap = c.snapshot();
            let mut heap: BinaryHeap<Picked> = BinaryHeap::with_capacity(sample + 1);
            let (mut examined, mut truncated) = (0usize, false);
            for r in snap.scan(None) {
                let r = r?;
                if examined == MAP_EXAMINE_LIMIT {
                    truncated = true;
                    break;
                }
                examined += 1;
                if examined.is_multiple_of(4096) {
                    cancel.check()?;
                }
                let pr = priority(seed, &r.id);
                if heap.len() == sample && heap.peek().is_some_and(|top| (pr, &r.id) >= (top.priority, &top.id)) {
                    continue;
                }
                let value = color_by.as_deref().and_then(|f| field(r.metadata.as_ref(), f)).map(shown);
                let text = r.text.as_deref().map(|t| crate::error::clip(t, SNIPPET_CHARS).into_owned());
                heap.push(Picked { priority: pr, id: r.id.clone(), vector: r.vector.clone(), text, value });
                if heap.len() > sample {
                    heap.pop();
                }
            }
            let mut picked = heap.into_vec();
            picked.sort_by(|a, b| a.id.cmp(&b.id));
            if let Some(f) = &color_by
                && !picked.is_empty()
                && !picked.iter().any(|p| p.value.is_some())
            {
                return Err(ApiError::invalid(format!(
                    "color_by: no sampled record has the metadata field {}",
                    crate::error::quote(f)
                )));
            }
            // Centred (and, for cosine, unit) rows in f64.
            let n = picked.len();
            let mut x = Vec::with_capacity(n * dim);
            for p in &picked {
                let scale = if cosine {
                    let norm = p.vector.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>().sqrt();
                    if norm > 0.0 { 1.0 / norm } else { 0.0 }
                } else {
                    1.0
                };
                x.extend(p.vector.iter().map(|v| f64::from(*v) * scale));
            }
            let mut mean = vec![0.0; dim];
            for row in x.chunks_exact(dim.max(1)) {
                mean.iter_mut().zip(row).for_each(|(m, r)| *m += r / n as f64);
            }
            for row in x.chunks_exact_mut(dim.max(1)) {
                row.iter_mut().zip(&mean).for_each(|(r, m)| *r -= m);
            }
            let total: f64 = dot(&x, &x) / n.max(1) as f64;
            let [(a1, l1), (a2, l2)] = principal_axes(&x, dim, seed, cancel)?;
            let share = |l: f64| if total > 0.0 { (l / total) as f32 } else { 0.0 };
            let points = picked
                .into_iter()
                .zip(x.chunks_exact(dim.max(1)))
                .map(|(p, row)| MapPoint {
                    id: p.id,
                    x: dot(row, &a1) as f32,
                    y: dot(row, &a2) as f32,
                    text: p.text,
                    value: if color_by.is_some() { Some(p.value.unwrap_or(Value::Null)) } else { None },
                })
                .collect();
            Ok(CollectionMap {
                collection: name,
                examined,
                truncated,
                seed,
                color_by,
                explained: [share(l1), share(l2)],
                points,
            })
        })
        .await
    }
}

type St = State<Arc<AppState>>;

/// A 2-D map of a collection: a deterministic sample (≤ 5000 records) projected onto its
/// first two principal components, with each point's id, the start of its text and,
/// with `color_by`, a metadata field's value (reader on the collection).
#[utoipa::path(get, path = "/v1/collections/{name}/map", tag = "collections", security(("bearer" = [])),
    params(("name" = String, Path, description = "Collection"), MapParams),
    responses((status = 200, description = "The map", body = CollectionMap), Errors))]
async fn map(
    State(st): St,
    Auth(p): Auth,
    PathParams(name): PathParams<String>,
    QueryParams(q): QueryParams<MapParams>,
) -> Result<Json<CollectionMap>, ApiError> {
    Ok(Json(st.collection_map(&p, &name, q).await?))
}

/// Routes behind the guard.
pub fn protected_routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/collections/{name}/map", get(map))
}

/// The map's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(map), components(schemas(CollectionMap, MapPoint)))]
pub struct MapApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_iteration_finds_the_axes_of_a_known_spread() {
        // Points along (1, 1, 0) with spread 10 and along (1, -1, 0) with spread 1.
        let (u, w) = ([1.0 / 2f64.sqrt(), 1.0 / 2f64.sqrt(), 0.0], [1.0 / 2f64.sqrt(), -1.0 / 2f64.sqrt(), 0.0]);
        let mut x = Vec::new();
        for i in 0..200 {
            let (a, b) = (10.0 * ((i as f64) * 0.37).sin(), ((i as f64) * 1.91).cos());
            x.extend((0..3).map(|k| a * u[k] + b * w[k]));
        }
        let mean: Vec<f64> = (0..3).map(|k| x.iter().skip(k).step_by(3).sum::<f64>() / 200.0).collect();
        x.iter_mut().enumerate().for_each(|(i, v)| *v -= mean[i % 3]);
        let cancel = crate::engine::Cancel::default();
        let [(a1, l1), (a2, l2)] = principal_axes(&x, 3, 7, &cancel).unwrap();
        assert!(dot(&a1, &u).abs() > 0.999, "{a1:?}");
        assert!(dot(&a2, &w).abs() > 0.99, "{a2:?}");
        assert!(l1 > 10.0 * l2, "{l1} {l2}");
        assert!(dot(&a1, &a2).abs() < 1e-6);
        // Deterministic, whatever the seed of the start vector, up to the fixed sign.
        let [(b1, _), _] = principal_axes(&x, 3, 8, &cancel).unwrap();
        assert!(a1.iter().zip(&b1).all(|(p, q)| (p - q).abs() < 1e-5), "{a1:?} {b1:?}");
    }

    #[test]
    fn sample_priority_depends_on_seed_and_id_only() {
        assert_eq!(priority(1, "a"), priority(1, "a"));
        assert_ne!(priority(1, "a"), priority(2, "a"));
        assert_ne!(priority(1, "a"), priority(1, "b"));
        let meta: kernelize_store::Metadata = serde_json::from_str(r#"{"a": {"b": "x"}, "c": 3}"#).unwrap();
        assert_eq!(field(Some(&meta), "a.b"), Some(&Value::from("x")));
        assert_eq!(field(Some(&meta), "c"), Some(&Value::from(3)));
        assert_eq!(field(Some(&meta), "a.z"), None);
        assert_eq!(
            shown(&serde_json::json!({"k": "v".repeat(100)})).as_str().unwrap().chars().count(),
            VALUE_CHARS + 1
        );
    }
}
