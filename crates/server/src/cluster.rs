//! The collection API when the server is a cluster node (`--cluster`): the engine facade
//! (`engine.rs`) checks the principal, then calls these, which call the node and shape
//! its answers as the single-node API does.

use crate::auth::Principal;
use crate::engine::{cancellable, embed_error, metric_name, quantization_name};
use crate::error::ApiError;
use crate::model::*;
use crate::state::{AppState, UsageDelta};
use kernelize_cluster::{ClusterCollection, ClusterQuery, Consistency, Node};
use kernelize_index::filter::Filter;
use kernelize_index::search::{Mode, Query};
use kernelize_store::CollectionConfig;
use std::sync::Arc;

fn info(c: ClusterCollection) -> CollectionInfo {
    CollectionInfo {
        encoder: c.config.encoder.as_ref().map(EncoderInfo::from),
        name: c.name,
        dim: c.config.dim as u64,
        metric: metric_name(c.config.metric),
        quantization: quantization_name(c.config.index.quantization),
        m: c.config.index.m as u64,
        ef_construction: c.config.index.ef_construction as u64,
        records: c.records,
        last_seq: 0,
        segments: 0,
        segment_bytes: 0,
        memtable_entries: 0,
        wal_bytes: 0,
    }
}

fn record_out(r: kernelize_cluster::wire::WireRecord, vector: bool) -> RecordOut {
    RecordOut { id: r.id, vector: vector.then_some(r.vector), text: r.text, metadata: r.metadata }
}

/// `session` when a token is given and nothing was asked, else what was asked.
fn consistency(asked: Option<ConsistencyName>, token: Option<u64>) -> Consistency {
    match (asked, token) {
        (Some(c), _) => c.into(),
        (None, Some(_)) => Consistency::Session,
        (None, None) => Consistency::Eventual,
    }
}

/// Collections in the principal's scope.
pub async fn list(node: &Node, p: &Principal) -> Result<CollectionList, ApiError> {
    let mut collections = Vec::new();
    for c in node.list().await? {
        if p.scope.contains(&c.name) {
            collections.push(info(node.describe(&c.name, Consistency::Eventual).await?));
        }
    }
    Ok(CollectionList { collections })
}

/// Creates a collection in the cluster.
pub async fn create(node: &Node, name: &str, config: CollectionConfig) -> Result<CollectionInfo, ApiError> {
    Ok(info(node.create_collection(name, config).await?))
}

/// A collection with its record count.
pub async fn describe(node: &Node, name: &str) -> Result<CollectionInfo, ApiError> {
    Ok(info(node.describe(name, Consistency::Eventual).await?))
}

/// One record.
pub async fn get(
    node: &Node,
    name: &str,
    id: &str,
    vector: bool,
    asked: Option<ConsistencyName>,
    token: Option<u64>,
) -> Result<RecordOut, ApiError> {
    match node.get(name, id, consistency(asked, token), token.unwrap_or(0)).await? {
        Some(r) => Ok(record_out(r, vector)),
        None => Err(ApiError::not_found(format!("no record {}", crate::error::quote(id)))),
    }
}

/// A page of records in key order.
pub async fn scan(
    node: &Node,
    name: &str,
    after: Option<&str>,
    limit: usize,
    filter: Option<&Filter>,
    vectors: bool,
) -> Result<ScanPage, ApiError> {
    let page = node.scan(name, after, limit, filter, Consistency::Eventual).await?;
    Ok(ScanPage {
        records: page.records.into_iter().map(|r| record_out(r, vectors)).collect(),
        next_after: page.next_after,
    })
}

/// Committed changes after a position.
pub async fn changes(
    node: &Node,
    name: &str,
    after: u64,
    limit: usize,
    wait: std::time::Duration,
    vectors: bool,
) -> Result<ChangesPage, ApiError> {
    let page = node.changes(name, after, limit, wait).await?;
    let changes = page
        .changes
        .into_iter()
        .map(|c| ChangeOut {
            position: c.position,
            op: c.op.to_owned(),
            id: c.id,
            record: c.record.map(|r| record_out(r, vectors)),
        })
        .collect();
    Ok(ChangesPage { changes, next: page.next })
}

/// A search scattered over the shards.
pub async fn search(
    st: &Arc<AppState>,
    node: &Node,
    p: &Principal,
    name: &str,
    req: SearchRequest,
) -> Result<SearchResponse, ApiError> {
    let (k, ef) = st.search_width(req.k, req.ef, "ef")?;
    let mode = crate::engine::search_mode(&req)?;
    let filter = crate::engine::parse_filter(req.filter)?;
    let t = std::time::Instant::now();
    let mut vector = req.vector;
    if vector.is_none() && mode != Mode::Keyword {
        let e = st.embedder()?;
        let text = req.text.clone().unwrap_or_default();
        vector = cancellable(move |cancel| {
            let v = e.embed_cancellable(&[text.as_str()], cancel.flag()).map_err(embed_error)?;
            Ok(v.into_iter().next())
        })
        .await?;
        st.add_usage(&p.key_id, UsageDelta { texts_embedded: 1, ..Default::default() });
        st.metrics.texts_embedded.inc();
    }
    let include_vectors = req.include_vectors.unwrap_or(false);
    let q = ClusterQuery {
        with_vectors: include_vectors,
        query: Query {
            vector,
            text: req.text,
            k,
            ef,
            filter,
            mode,
            exact: req.exact.unwrap_or(false),
            ..Default::default()
        },
        consistency: consistency(req.consistency, req.write_token),
        token: req.write_token.unwrap_or(0),
    };
    let hits = node.search(name, q).await?;
    st.metrics.searches.get_or_create(&crate::metrics::CollectionLabels { collection: name.to_owned() }).inc();
    let hits = hits
        .into_iter()
        .map(|h| SearchHit {
            id: h.record.id,
            score: h.score,
            text: h.record.text,
            metadata: h.record.metadata,
            vector: include_vectors.then_some(h.record.vector),
        })
        .collect();
    Ok(SearchResponse { hits, took_ms: t.elapsed().as_secs_f64() * 1e3, explain: None })
}
