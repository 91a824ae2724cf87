//! The engine as the API sees it: every operation takes the [`Principal`] and checks its
//! role and scope here, where the store, index and embedder are called — not only in
//! routing. CPU and disk work runs on the blocking pool.

use crate::auth::{Principal, Role};
use crate::error::{ApiError, REQUEST_ID, current_request_id, quote};
use crate::metrics::CollectionLabels;
use crate::model::*;
use crate::state::{AppState, UsageDelta};
use axum::http::StatusCode;
use kernelize_index::filter::Filter;
use kernelize_index::search::{Mode, Query, Searcher};
use kernelize_store::{Collection, CollectionConfig, IndexSettings, Metric, Quantization, Record};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on the blocking pool under the current request id.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let rid = current_request_id();
    tokio::task::spawn_blocking(move || REQUEST_ID.sync_scope(rid, f)).await.map_err(ApiError::internal)?
}

tokio::task_local! {
    /// The cancel flag of the request being served (set by the guard when it times out).
    pub static CANCEL: Cancel;
}

/// Set once nobody waits for a request's result any more (it timed out): read-only CPU
/// work — embedding, search, kernel queries — checks it and stops. Writes do not: once
/// started they complete and are audited, whatever the client saw.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Asks the work to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether the work should stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    /// The flag, for APIs that poll one ([`kernelize_embed::Embedder::embed_cancellable`]).
    pub fn flag(&self) -> &AtomicBool {
        &self.0
    }
    /// `Err` once cancelled.
    pub fn check(&self) -> Result<(), ApiError> {
        if self.is_cancelled() { Err(cancelled()) } else { Ok(()) }
    }
}

fn cancelled() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "cancelled: the request ran out of time").retry_after(1)
}

/// An embedding error as an API error (a cancelled embedding is the timeout it follows).
pub fn embed_error(e: kernelize_embed::Error) -> ApiError {
    match e {
        kernelize_embed::Error::Cancelled => cancelled(),
        e => ApiError::internal(e),
    }
}

/// [`blocking`] for read-only work the client may stop waiting for: skipped when the
/// request is cancelled before it starts; `f` gets the flag to check as it goes.
pub async fn cancellable<T: Send + 'static>(
    f: impl FnOnce(&Cancel) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let cancel = CANCEL.try_with(Clone::clone).unwrap_or_default();
    blocking(move || {
        cancel.check()?;
        f(&cancel)
    })
    .await
}

/// Records a filtered scan examines per request at most.
pub const SCAN_EXAMINE_LIMIT: usize = 10_000;

/// A request's filter, parsed.
pub fn parse_filter(spec: Option<FilterSpec>) -> Result<Option<Filter>, ApiError> {
    let f = match spec {
        None => return Ok(None),
        Some(FilterSpec::Expr(s)) => Filter::parse(&s),
        Some(FilterSpec::Json(m)) => Filter::from_json(&serde_json::Value::Object(m)),
    };
    f.map(Some).map_err(|e| ApiError::invalid(format!("filter: {e}")))
}

pub(crate) fn metric_name(m: Metric) -> MetricName {
    match m {
        Metric::Cosine => MetricName::Cosine,
        Metric::Dot => MetricName::Dot,
        Metric::L2 => MetricName::L2,
    }
}

pub(crate) fn quantization_name(q: Quantization) -> QuantizationName {
    match q {
        Quantization::None => QuantizationName::None,
        Quantization::Int8 => QuantizationName::Int8,
        Quantization::Rabitq1 => QuantizationName::Rabitq1,
        Quantization::Rabitq4 => QuantizationName::Rabitq4,
    }
}

/// A collection's description and statistics.
pub fn collection_info(c: &Collection) -> Result<CollectionInfo, ApiError> {
    let s = c.stats()?;
    let cfg = c.config();
    Ok(CollectionInfo {
        name: s.name,
        dim: s.dim as u64,
        encoder: cfg.encoder.as_ref().map(EncoderInfo::from),
        metric: metric_name(cfg.metric),
        quantization: quantization_name(cfg.index.quantization),
        m: cfg.index.m as u64,
        ef_construction: cfg.index.ef_construction as u64,
        records: s.records,
        last_seq: s.last_seq,
        segments: s.segments,
        segment_bytes: s.segment_bytes,
        memtable_entries: s.memtable_entries,
        wal_bytes: s.wal_bytes,
    })
}

pub(crate) fn record_out(r: &Record, vector: bool) -> RecordOut {
    RecordOut {
        id: r.id.clone(),
        vector: vector.then(|| r.vector.clone()),
        text: r.text.clone(),
        metadata: r.metadata.clone(),
    }
}

fn batch_size(what: &str, n: usize, max: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::invalid(format!("{what} is empty")));
    }
    if n > max {
        return Err(ApiError::invalid(format!("{what} has {n} entries; the limit is {max} per request")));
    }
    Ok(())
}

/// The ranking a search asks for, checked against what it gives (a vector or a text;
/// a text for keyword search).
pub(crate) fn search_mode(req: &SearchRequest) -> Result<Mode, ApiError> {
    let mode = match req.mode.unwrap_or_default() {
        SearchMode::Vector => Mode::Vector,
        SearchMode::Keyword => Mode::Keyword,
        SearchMode::Hybrid => Mode::Hybrid,
    };
    if req.vector.is_none() && req.text.is_none() && req.media.is_none() {
        return Err(ApiError::invalid("give the query as `vector`, `text` or `media`"));
    }
    if mode == Mode::Keyword && req.text.is_none() {
        return Err(ApiError::invalid("keyword search needs `text`"));
    }
    Ok(mode)
}

/// A collection's configuration from a create request, checked.
fn collection_config(req: &CreateCollection) -> Result<CollectionConfig, ApiError> {
    let encoder = req.modality.map(|m| kernelize_media::encoder_record(m.into()));
    let dim = match (&encoder, req.dim) {
        (Some(e), Some(d)) if d as usize != e.dim => {
            return Err(ApiError::invalid(format!(
                "dim {d} does not match the {} encoder ({}, {} dimensions); leave dim out",
                e.modality, e.model, e.dim
            )));
        }
        (Some(e), _) => e.dim,
        (None, Some(d)) => d as usize,
        (None, None) => return Err(ApiError::invalid("give `dim`, or a `modality` (text, image, audio) that sets it")),
    };
    if dim == 0 || dim > kernelize_store::MAX_DIM {
        return Err(ApiError::invalid(format!("dim must be 1..={}, got {dim}", kernelize_store::MAX_DIM)));
    }
    let mut index = IndexSettings::default();
    if let Some(m) = req.m {
        if !(4..=64).contains(&m) {
            return Err(ApiError::invalid(format!("m must be 4..=64, got {m}")));
        }
        index.m = m as usize;
    }
    if let Some(ef) = req.ef_construction {
        if !(8..=2000).contains(&ef) {
            return Err(ApiError::invalid(format!("ef_construction must be 8..=2000, got {ef}")));
        }
        index.ef_construction = ef as usize;
    }
    index.quantization = match req.quantization.unwrap_or(QuantizationName::None) {
        QuantizationName::None => Quantization::None,
        QuantizationName::Int8 => Quantization::Int8,
        QuantizationName::Rabitq1 => Quantization::Rabitq1,
        QuantizationName::Rabitq4 => Quantization::Rabitq4,
    };
    let metric = match req.metric.unwrap_or(MetricName::Cosine) {
        MetricName::Cosine => Metric::Cosine,
        MetricName::Dot => Metric::Dot,
        MetricName::L2 => Metric::L2,
    };
    Ok(CollectionConfig { index, encoder, ..CollectionConfig::new(dim, metric) })
}

impl AppState {
    /// `k` (default 10) and the beam width / probe count (`what`), checked against the limits.
    pub(crate) fn search_width(
        &self,
        k: Option<u32>,
        width: Option<u32>,
        what: &str,
    ) -> Result<(usize, Option<usize>), ApiError> {
        let live = self.live();
        let limits = &live.limits;
        let k = k.unwrap_or(10) as usize;
        if k == 0 || k > limits.max_k {
            return Err(ApiError::invalid(format!("k must be 1..={}, got {k}", limits.max_k)));
        }
        let width = width.map(|w| w as usize);
        if let Some(w) = width
            && (w == 0 || w > limits.max_ef)
        {
            return Err(ApiError::invalid(format!("{what} must be 1..={}, got {w}", limits.max_ef)));
        }
        Ok((k, width))
    }

    fn collection(&self, p: &Principal, role: Role, name: &str) -> Result<Collection, ApiError> {
        p.require(role, Some(name))?;
        Ok(self.db.collection(name)?)
    }

    /// Collections in the principal's scope.
    pub async fn list_collections(self: &Arc<Self>, p: &Principal) -> Result<CollectionList, ApiError> {
        if let Some(node) = &self.cluster {
            return crate::cluster::list(node, p).await;
        }
        // Every role may list; the scope decides what is listed.
        let visible: Vec<Collection> =
            self.db.collections().into_iter().filter(|c| p.scope.contains(c.name())).collect();
        let collections = blocking(move || visible.iter().map(collection_info).collect()).await?;
        Ok(CollectionList { collections })
    }

    /// Creates a collection.
    pub async fn create_collection(
        self: &Arc<Self>,
        p: &Principal,
        req: CreateCollection,
    ) -> Result<CollectionInfo, ApiError> {
        p.require(Role::Writer, Some(&req.name))?;
        let config = collection_config(&req)?;
        if let Some(node) = &self.cluster {
            return crate::cluster::create(node, &req.name, config).await;
        }
        self.quotas.forget_collection(&req.name);
        let db = self.db.clone();
        blocking(move || collection_info(&db.create_collection(&req.name, config)?)).await
    }

    /// Describes a collection.
    pub async fn describe(self: &Arc<Self>, p: &Principal, name: &str) -> Result<CollectionInfo, ApiError> {
        if let Some(node) = &self.cluster {
            p.require(Role::Reader, Some(name))?;
            return crate::cluster::describe(node, name).await;
        }
        let c = self.collection(p, Role::Reader, name)?;
        blocking(move || collection_info(&c)).await
    }

    /// Drops a collection and its data.
    pub async fn drop_collection(self: &Arc<Self>, p: &Principal, name: &str) -> Result<(), ApiError> {
        p.require(Role::Writer, Some(name))?;
        if let Some(node) = &self.cluster {
            return Ok(node.drop_collection(name).await?);
        }
        let db = self.db.clone();
        let dropped = name.to_owned();
        blocking(move || Ok(db.drop_collection(&dropped)?)).await?;
        self.quotas.forget_collection(name);
        // Its kernels go with it (were this to fail, they are orphans: the incarnation
        // they were bound to went with the collection's directory).
        if let Err(e) = self.drop_kernels_of(name).await {
            tracing::error!(collection = name, error = %e, "could not delete the kernels of a dropped collection");
        }
        Ok(())
    }

    /// Upserts a batch atomically, embedding the text of records that come without a vector.
    /// In a cluster the batch goes to the write log (atomic per shard; retried safely with
    /// an idempotency key) and `seq` is the write token.
    pub async fn upsert(
        self: &Arc<Self>,
        p: &Principal,
        name: &str,
        req: UpsertRequest,
        idempotency_key: Option<String>,
    ) -> Result<WriteResult, ApiError> {
        let (local, cfg) = match &self.cluster {
            Some(node) => {
                p.require(Role::Writer, Some(name))?;
                (None, node.collection_config(name).await?)
            }
            None => {
                let c = self.collection(p, Role::Writer, name)?;
                let cfg = c.config().clone();
                (Some(c), cfg)
            }
        };
        let dim = cfg.dim;
        batch_size("records", req.records.len(), self.live().limits.max_batch)?;
        let (req, media_encoded) = self.encode_media_records(name, &cfg, local.clone(), req).await?;
        // Refused whole, before anything is embedded or written, when it would pass the
        // key's quota; the admission holds the key's write lock until the write is done.
        let admitted = self.admit_upsert(p, name, &req.records, dim).await?;
        let missing: Vec<usize> = (0..req.records.len()).filter(|i| req.records[*i].vector.is_none()).collect();
        for &i in &missing {
            if req.records[i].text.is_none() {
                return Err(ApiError::invalid(format!(
                    "records[{i}] (id {}): neither a vector nor a text to embed",
                    quote(&req.records[i].id)
                )));
            }
        }
        let embedder = if missing.is_empty() { None } else { Some(self.embedder()?) };
        if let Some(e) = &embedder
            && e.dim() != dim
        {
            return Err(ApiError::invalid(format!(
                "records without vectors need a {}-dim collection for the built-in embedder; {} has {dim} dims",
                e.dim(),
                quote(name),
            )));
        }
        let embedded = missing.len() as u64 + media_encoded;
        let records = blocking(move || {
            let mut vectors = match &embedder {
                Some(e) => {
                    let texts: Vec<&str> =
                        missing.iter().map(|&i| req.records[i].text.as_deref().unwrap_or("")).collect();
                    e.embed(&texts).map_err(ApiError::internal)?.into_iter()
                }
                None => Vec::new().into_iter(),
            };
            Ok(req
                .records
                .into_iter()
                .map(|r| Record {
                    id: r.id,
                    vector: r.vector.unwrap_or_else(|| vectors.next().unwrap_or_default()),
                    text: r.text,
                    metadata: r.metadata,
                })
                .collect::<Vec<Record>>())
        })
        .await?;
        let bytes: i64 = records.iter().map(|r| crate::quota::record_bytes(r) as i64).sum();
        let n = records.len();
        let seq = match (local, &self.cluster) {
            (Some(c), _) => {
                blocking(move || {
                    let seq = c.upsert(records)?;
                    // The batch is durable (its WAL commit succeeded) even if the flush after it failed.
                    if let kernelize_store::Health::FlushFailing(error) = c.health() {
                        tracing::warn!(
                            collection = c.name(),
                            error,
                            "memtable flush failed after a durable write; retried later"
                        );
                    }
                    Ok(seq)
                })
                .await?
            }
            (None, Some(node)) => {
                let ops = records.into_iter().map(|r| kernelize_store::Op::Upsert(Arc::new(r))).collect();
                node.write(name, ops, idempotency_key.as_deref()).await?.token
            }
            (None, None) => return Err(ApiError::internal("no engine")),
        };
        if let Some(a) = admitted {
            self.written(a, seq);
        }
        self.add_usage(
            &p.key_id,
            UsageDelta {
                records_written: n as i64,
                texts_embedded: embedded as i64,
                bytes_stored: bytes,
                ..Default::default()
            },
        );
        self.metrics.records_written.get_or_create(&CollectionLabels { collection: name.to_owned() }).inc_by(n as u64);
        self.metrics.texts_embedded.inc_by(embedded);
        Ok(WriteResult { written: n as u64, embedded, seq })
    }

    /// One record.
    pub async fn get_record(
        self: &Arc<Self>,
        p: &Principal,
        name: &str,
        id: String,
        q: GetParams,
    ) -> Result<RecordOut, ApiError> {
        let vector = q.vector.unwrap_or(true);
        if let Some(node) = &self.cluster {
            p.require(Role::Reader, Some(name))?;
            return crate::cluster::get(node, name, &id, vector, q.consistency, q.write_token).await;
        }
        let c = self.collection(p, Role::Reader, name)?;
        cancellable(move |_| match c.get(&id)? {
            Some(r) => Ok(record_out(&r, vector)),
            None => Err(ApiError::not_found(format!("no record {}", quote(&id)))),
        })
        .await
    }

    /// Deletes records atomically.
    pub async fn delete(
        self: &Arc<Self>,
        p: &Principal,
        name: &str,
        ids: Vec<String>,
        idempotency_key: Option<String>,
    ) -> Result<WriteResult, ApiError> {
        batch_size("ids", ids.len(), self.live().limits.max_batch)?;
        let n = ids.len() as u64;
        let seq = match &self.cluster {
            Some(node) => {
                p.require(Role::Writer, Some(name))?;
                let ops = ids.into_iter().map(kernelize_store::Op::Delete).collect();
                node.write(name, ops, idempotency_key.as_deref()).await?.token
            }
            None => {
                let c = self.collection(p, Role::Writer, name)?;
                blocking(move || Ok(c.delete(ids)?)).await?
            }
        };
        self.add_usage(&p.key_id, UsageDelta { records_written: n as i64, ..Default::default() });
        self.metrics.records_written.get_or_create(&CollectionLabels { collection: name.to_owned() }).inc_by(n);
        Ok(WriteResult { written: n, embedded: 0, seq })
    }

    /// Committed changes of a collection (cluster mode).
    pub async fn changes(
        self: &Arc<Self>,
        p: &Principal,
        name: &str,
        q: ChangesParams,
    ) -> Result<ChangesPage, ApiError> {
        p.require(Role::Reader, Some(name))?;
        let limit = q.limit.unwrap_or(1000);
        if !(1..=kernelize_cluster::MAX_CHANGES as u32).contains(&limit) {
            return Err(ApiError::invalid(format!(
                "limit must be 1..={}, got {limit}",
                kernelize_cluster::MAX_CHANGES
            )));
        }
        let wait_ms = q.wait_ms.unwrap_or(0);
        if wait_ms > 30_000 {
            return Err(ApiError::invalid(format!("wait_ms must be 0..=30000, got {wait_ms}")));
        }
        let Some(node) = &self.cluster else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "cluster_only",
                "change data capture is a cluster feature (kernelize serve --cluster cluster.toml)",
            ));
        };
        let wait = std::time::Duration::from_millis(wait_ms);
        crate::cluster::changes(node, name, q.after.unwrap_or(0), limit as usize, wait, q.vectors.unwrap_or(false))
            .await
    }

    /// A page of records in key order.
    pub async fn scan(self: &Arc<Self>, p: &Principal, name: &str, q: ScanParams) -> Result<ScanPage, ApiError> {
        let limit = q.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::invalid(format!("limit must be 1..=1000, got {limit}")));
        }
        let vectors = q.vectors.unwrap_or(false);
        let filter = parse_filter(q.filter.map(FilterSpec::Expr))?;
        if let Some(node) = &self.cluster {
            p.require(Role::Reader, Some(name))?;
            let after = q.after.as_deref().filter(|a| !a.is_empty());
            return crate::cluster::scan(node, name, after, limit as usize, filter.as_ref(), vectors).await;
        }
        let c = self.collection(p, Role::Reader, name)?;
        cancellable(move |_| {
            let snap = c.snapshot();
            let mut records = Vec::new();
            // The id of the last record examined, in key order (where the next page starts).
            let (mut examined, mut last, mut more) = (0usize, None, false);
            // No id is empty: `after=` (as a form sends it) is the first page.
            for r in snap.scan(q.after.as_deref().filter(|a| !a.is_empty())) {
                let r = r?;
                let hit = filter.as_ref().is_none_or(|f| f.matches(r.metadata.as_ref()));
                // A full page with a match left, or out of budget with records left.
                if (hit && records.len() == limit as usize) || examined == SCAN_EXAMINE_LIMIT {
                    more = true;
                    break;
                }
                examined += 1;
                last = Some(r.id.clone());
                if hit {
                    records.push(r);
                }
            }
            let next_after = if more { last } else { None };
            Ok(ScanPage { records: records.iter().map(|r| record_out(r, vectors)).collect(), next_after })
        })
        .await
    }

    /// Searches a collection.
    pub async fn search(
        self: &Arc<Self>,
        p: &Principal,
        name: &str,
        req: SearchRequest,
    ) -> Result<SearchResponse, ApiError> {
        let req = self.encode_media_query(p, name, req).await?;
        if let Some(node) = &self.cluster {
            p.require(Role::Reader, Some(name))?;
            return crate::cluster::search(self, node, p, name, req).await;
        }
        let c = self.collection(p, Role::Reader, name)?;
        let (k, ef) = self.search_width(req.k, req.ef, "ef")?;
        let mode = search_mode(&req)?;
        if let Some(m) = crate::media::media_modality(c.config())
            && req.vector.is_none()
            && mode != Mode::Keyword
        {
            return Err(ApiError::invalid(format!(
                "an {m} collection is searched with `media` (a file, base64) or a vector; `text` only in keyword mode"
            )));
        }
        let filter = parse_filter(req.filter)?;
        let embedder = if req.vector.is_none() && mode != Mode::Keyword { Some(self.embedder()?) } else { None };
        let include_vectors = req.include_vectors.unwrap_or(false);
        let asked = req.explain.unwrap_or(false);
        let slow_ms = self.live().slow_query_ms;
        // Explained when asked, or when the slow-query log may need it (a few clock reads
        // per segment); otherwise the search collects nothing.
        let explain = asked || slow_ms > 0;
        let exact = req.exact.unwrap_or(false);
        let text_chars = req.text.as_deref().map_or(0, |t| t.chars().count());
        let filter_text = filter.as_ref().map(|f| crate::audit::bounded(&f.to_string(), 500));
        let state = self.clone();
        let embedded = embedder.is_some();
        let (hits, took, ex) = cancellable(move |cancel| {
            let t = std::time::Instant::now();
            let mut vector = req.vector;
            if let Some(e) = &embedder {
                let text = req.text.as_deref().unwrap_or("");
                vector = e.embed_cancellable(&[text], cancel.flag()).map_err(embed_error)?.into_iter().next();
                cancel.check()?;
            }
            let embed_us = embedded.then(|| t.elapsed().as_secs_f64() * 1e6);
            let q = Query { vector, text: req.text, k, ef, filter, mode, exact, ..Default::default() };
            let searcher = Searcher::new(&c, &**state.db.storage(), &state.cache);
            let (hits, ex) = if explain {
                let (hits, mut ex) = searcher.search_explained(&q)?;
                ex.embed_us = embed_us;
                (hits, Some(ex))
            } else {
                (searcher.search(&q)?, None)
            };
            Ok((hits, t.elapsed().as_secs_f64() * 1e3, ex))
        })
        .await?;
        if embedded {
            self.add_usage(&p.key_id, UsageDelta { texts_embedded: 1, ..Default::default() });
            self.metrics.texts_embedded.inc();
        }
        self.metrics.searches.get_or_create(&CollectionLabels { collection: name.to_owned() }).inc();
        if slow_ms > 0
            && took >= slow_ms as f64
            && let Some(ex) = &ex
        {
            let slow = SlowQuery {
                at_ms: crate::state::now_ms(),
                request_id: current_request_id(),
                key_id: p.key_id.clone(),
                collection: name.to_owned(),
                mode: format!("{mode:?}").to_lowercase(),
                k,
                ef,
                filter: filter_text,
                text_chars,
                exact,
                took_ms: took,
                explain: ex.clone(),
            };
            tracing::warn!(
                target: "kernelize::slow_query",
                collection = %slow.collection,
                key_id = %slow.key_id,
                took_ms = took,
                explain = %serde_json::to_string(&slow.explain).unwrap_or_default(),
                "slow search"
            );
            let mut kept = self.slow_queries.lock();
            if kept.len() >= crate::state::SLOW_QUERIES_KEPT {
                kept.pop_front();
            }
            kept.push_back(slow);
        }
        let hits = hits
            .into_iter()
            .map(|h| SearchHit {
                id: h.id,
                score: h.score,
                text: h.record.text.clone(),
                metadata: h.record.metadata.clone(),
                vector: include_vectors.then(|| h.record.vector.clone()),
            })
            .collect();
        Ok(SearchResponse { hits, took_ms: took, explain: if asked { ex } else { None } })
    }

    /// Gives records that bring `media` their vector and `metadata.media` (image and
    /// audio collections); refuses `media` elsewhere and text-only records in them.
    /// Returns the request and how many files were encoded.
    async fn encode_media_records(
        self: &Arc<Self>,
        name: &str,
        cfg: &CollectionConfig,
        keep_in: Option<Collection>,
        mut req: UpsertRequest,
    ) -> Result<(UpsertRequest, u64), ApiError> {
        let Some(modality) = crate::media::media_modality(cfg) else {
            if let Some(i) = req.records.iter().position(|r| r.media.is_some()) {
                return Err(crate::media::not_a_media_collection(&format!("records[{i}]"), name));
            }
            return Ok((req, 0));
        };
        let mut todo = Vec::new();
        let mut files = Vec::new();
        for (i, r) in req.records.iter_mut().enumerate() {
            match (r.media.take(), &r.vector) {
                (Some(b64), None) => {
                    files.push(crate::media::decode(&format!("records[{i}].media"), &b64)?);
                    todo.push(i);
                }
                (Some(_), Some(_)) => {
                    return Err(ApiError::invalid(format!("records[{i}]: give `media` or `vector`, not both")));
                }
                (None, None) => {
                    return Err(ApiError::invalid(format!(
                        "records[{i}] (id {}): an {modality} collection needs `media` (the file, base64) or a vector",
                        quote(&r.id)
                    )));
                }
                (None, Some(_)) => {}
            }
        }
        if files.is_empty() {
            return Ok((req, 0));
        }
        let state = self.clone();
        let ids: Vec<String> = todo.iter().map(|&i| req.records[i].id.clone()).collect();
        let name_of = move |j: usize| format!("records[{}] (id {})", todo[j], quote(&ids[j]));
        // Encoded, then each file kept beside the collection (single node) before the
        // records that name it are written: a record never names a file that is not kept.
        let (encoded, name_of) = cancellable(move |cancel| {
            let encoder = state.media.get(modality)?;
            let encoded = crate::media::encode_all(&*encoder, &files, &name_of, cancel)?;
            let mut out = Vec::with_capacity(encoded.len());
            for (e, bytes) in encoded.into_iter().zip(&files) {
                let media = kernelize_media::media_metadata("upload", bytes, e.info);
                if let (Some(c), Some(sha)) = (&keep_in, media.get("sha256").and_then(|v| v.as_str())) {
                    cancel.check()?;
                    c.put_media(sha, bytes)?;
                }
                out.push((e.vector, media));
            }
            Ok((out, name_of))
        })
        .await?;
        let n = encoded.len() as u64;
        let mut encoded = encoded.into_iter();
        for (j, r) in req.records.iter_mut().filter(|r| r.vector.is_none()).enumerate() {
            let Some((vector, media)) = encoded.next() else {
                return Err(ApiError::internal(format!("{}: no encoding", name_of(j))));
            };
            r.metadata = Some(crate::media::with_media(&name_of(j), r.metadata.take(), media)?);
            r.vector = Some(vector);
        }
        Ok((req, n))
    }

    /// The kept file of a record of an image or audio collection, with its media type.
    pub async fn record_media(
        self: &Arc<Self>,
        p: &Principal,
        name: &str,
        id: String,
    ) -> Result<(Vec<u8>, &'static str), ApiError> {
        if self.cluster.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "single_node_only",
                "media files are kept by single nodes; a cluster does not keep them yet",
            ));
        }
        let c = self.collection(p, Role::Reader, name)?;
        cancellable(move |_| {
            let r = c.get(&id)?.ok_or_else(|| ApiError::not_found(format!("no record {}", quote(&id))))?;
            let media = r.metadata.as_ref().and_then(|m| m.get("media")).and_then(|m| m.as_object());
            let sha = media.and_then(|m| m.get("sha256")).and_then(|v| v.as_str()).ok_or_else(|| {
                ApiError::not_found(format!("record {} has no media file (metadata.media.sha256)", quote(&id)))
            })?;
            let format = media.and_then(|m| m.get("format")).and_then(|v| v.as_str()).unwrap_or("");
            let bytes = c.media(sha).map_err(|e| ApiError::not_found(e.to_string()))?.ok_or_else(|| {
                ApiError::not_found(format!(
                    "the file of record {} was not kept (ingest with --keep-files to keep ingested files)",
                    quote(&id)
                ))
            })?;
            Ok((bytes, crate::media::media_type(format)))
        })
        .await
    }

    /// A search that brings `media`: encoded with the collection's encoder into `vector`.
    async fn encode_media_query(
        self: &Arc<Self>,
        p: &Principal,
        name: &str,
        mut req: SearchRequest,
    ) -> Result<SearchRequest, ApiError> {
        let Some(b64) = req.media.take() else {
            return Ok(req);
        };
        p.require(Role::Reader, Some(name))?;
        if req.vector.is_some() {
            return Err(ApiError::invalid("give `media` or `vector`, not both"));
        }
        let cfg = match &self.cluster {
            Some(node) => node.collection_config(name).await?,
            None => self.db.collection(name)?.config().clone(),
        };
        let Some(modality) = crate::media::media_modality(&cfg) else {
            return Err(crate::media::not_a_media_collection("media", name));
        };
        let bytes = crate::media::decode("media", &b64)?;
        let state = self.clone();
        let mut encoded = cancellable(move |cancel| {
            let encoder = state.media.get(modality)?;
            crate::media::encode_all(&*encoder, &[bytes], &|_| "media".to_owned(), cancel)
        })
        .await?;
        req.vector = encoded.pop().map(|e| e.vector);
        self.add_usage(&p.key_id, UsageDelta { texts_embedded: 1, ..Default::default() });
        Ok(req)
    }

    /// The slow-query log (admin).
    pub fn slow_queries(&self, p: &Principal) -> Result<SlowQueryList, ApiError> {
        p.require(Role::Admin, None)?;
        let queries = self.slow_queries.lock().iter().rev().cloned().collect();
        Ok(SlowQueryList { threshold_ms: self.live().slow_query_ms, queries })
    }

    /// Embeds texts with the built-in model.
    pub async fn embed(self: &Arc<Self>, p: &Principal, req: EmbedRequest) -> Result<EmbedResponse, ApiError> {
        // Every role may embed: it reads no collection.
        if let Some(m) = req.modality.map(kernelize_store::Modality::from)
            && m != kernelize_store::Modality::Text
        {
            if !req.texts.is_empty() {
                return Err(ApiError::invalid("give either `texts` or `media` with an image or audio `modality`"));
            }
            batch_size("media", req.media.len(), self.live().limits.max_batch)?;
            let files = req
                .media
                .iter()
                .enumerate()
                .map(|(i, b)| crate::media::decode(&format!("media[{i}]"), b))
                .collect::<Result<Vec<_>, _>>()?;
            let state = self.clone();
            let n = files.len();
            let (record, encoded) = cancellable(move |cancel| {
                let encoder = state.media.get(m)?;
                let encoded = crate::media::encode_all(&*encoder, &files, &|i| format!("media[{i}]"), cancel)?;
                Ok((encoder.record().clone(), encoded))
            })
            .await?;
            self.add_usage(&p.key_id, UsageDelta { texts_embedded: n as i64, ..Default::default() });
            self.metrics.texts_embedded.inc_by(n as u64);
            let (vectors, info) = encoded.into_iter().map(|e| (e.vector, e.info)).unzip();
            return Ok(EmbedResponse { model: record.model, dim: record.dim as u64, vectors, info });
        }
        if !req.media.is_empty() {
            return Err(ApiError::invalid("`media` needs `modality`: image or audio"));
        }
        batch_size("texts", req.texts.len(), self.live().limits.max_batch)?;
        let e = self.embedder()?;
        let n = req.texts.len();
        let dim = e.dim() as u64;
        let vectors = cancellable(move |cancel| {
            let texts: Vec<&str> = req.texts.iter().map(String::as_str).collect();
            e.embed_cancellable(&texts, cancel.flag()).map_err(embed_error)
        })
        .await?;
        self.add_usage(&p.key_id, UsageDelta { texts_embedded: n as i64, ..Default::default() });
        self.metrics.texts_embedded.inc_by(n as u64);
        Ok(EmbedResponse { model: "all-MiniLM-L6-v2".into(), dim, vectors, info: Vec::new() })
    }
}
