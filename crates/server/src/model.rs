//! Request and response bodies of the API (their JSON schemas are in the OpenAPI document).

use crate::auth::Role;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

/// Distance metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricName {
    /// Cosine similarity (higher is closer).
    Cosine,
    /// Dot product (higher is closer).
    Dot,
    /// Euclidean distance (lower is closer).
    L2,
}

/// What the graph walk keeps in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QuantizationName {
    /// Full-precision vectors.
    None,
    /// 8 bits per dimension.
    Int8,
    /// RaBitQ, 1 bit per dimension.
    Rabitq1,
    /// RaBitQ, 4 bits per dimension.
    Rabitq4,
}

/// `POST /v1/collections`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCollection {
    /// 1-64 of `A-Z a-z 0-9 _ -`, not starting with `-`.
    #[schema(example = "docs", pattern = "^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")]
    pub name: String,
    /// Vector dimension (384 for the built-in text embedder). Required unless `modality`
    /// is given, which sets it (text 384, image 1280, audio 256).
    #[serde(default)]
    #[schema(example = 384, minimum = 1, maximum = 65536)]
    pub dim: Option<u32>,
    /// What the collection holds, encoded by the server: `text` (all-MiniLM-L6-v2),
    /// `image` (EfficientNet-Lite0: records and queries bring `media`, an image file in
    /// base64) or `audio` (Resemblyzer's voice encoder: `media` is an audio file).
    /// Recorded in the collection's configuration; default none (vectors from the
    /// client, or texts embedded when the dimension is 384).
    #[serde(default)]
    pub modality: Option<ModalityName>,
    /// Distance metric (default cosine).
    #[serde(default)]
    pub metric: Option<MetricName>,
    /// In-memory vector representation for search (default none: f32).
    #[serde(default)]
    pub quantization: Option<QuantizationName>,
    /// HNSW links per node (default 16).
    #[serde(default)]
    #[schema(minimum = 4, maximum = 64)]
    pub m: Option<u32>,
    /// HNSW beam width while building (default 200).
    #[serde(default)]
    #[schema(minimum = 8, maximum = 2000)]
    pub ef_construction: Option<u32>,
}

/// The kind of content a collection's encoder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModalityName {
    /// Text.
    Text,
    /// Images: JPEG, PNG, WebP.
    Image,
    /// Audio: WAV, FLAC, MP3, Ogg Vorbis.
    Audio,
}

impl From<ModalityName> for kernelize_store::Modality {
    fn from(m: ModalityName) -> Self {
        match m {
            ModalityName::Text => kernelize_store::Modality::Text,
            ModalityName::Image => kernelize_store::Modality::Image,
            ModalityName::Audio => kernelize_store::Modality::Audio,
        }
    }
}

impl From<kernelize_store::Modality> for ModalityName {
    fn from(m: kernelize_store::Modality) -> Self {
        match m {
            kernelize_store::Modality::Text => ModalityName::Text,
            kernelize_store::Modality::Image => ModalityName::Image,
            kernelize_store::Modality::Audio => ModalityName::Audio,
        }
    }
}

/// The encoder a collection (or kernel) records.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EncoderInfo {
    /// Text, image or audio.
    pub modality: ModalityName,
    /// Model name (`kernelize models list`).
    pub model: String,
    /// Output dimension.
    pub dim: u64,
    /// The preprocessing, in words.
    pub preprocessing: String,
}

impl From<&kernelize_store::EncoderRecord> for EncoderInfo {
    fn from(r: &kernelize_store::EncoderRecord) -> Self {
        EncoderInfo {
            modality: r.modality.into(),
            model: r.model.clone(),
            dim: r.dim as u64,
            preprocessing: r.preprocessing.clone(),
        }
    }
}

/// A collection and its statistics.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CollectionInfo {
    /// Name.
    pub name: String,
    /// Vector dimension.
    pub dim: u64,
    /// The encoder chosen at creation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<EncoderInfo>,
    /// Metric.
    pub metric: MetricName,
    /// In-memory representation for search.
    pub quantization: QuantizationName,
    /// HNSW links per node.
    pub m: u64,
    /// HNSW build beam width.
    pub ef_construction: u64,
    /// Live records.
    pub records: u64,
    /// Sequence number of the last acknowledged write.
    pub last_seq: u64,
    /// Immutable segments.
    pub segments: u64,
    /// Bytes of segment files.
    pub segment_bytes: u64,
    /// Entries in the memtable.
    pub memtable_entries: u64,
    /// Bytes of write-ahead log.
    pub wal_bytes: u64,
}

/// `GET /v1/collections`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CollectionList {
    /// Collections this key can see.
    pub collections: Vec<CollectionInfo>,
}

/// A record to write.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordIn {
    /// Id (1-512 bytes of UTF-8).
    #[schema(example = "doc-1")]
    pub id: String,
    /// The vector; omit it to have `text` embedded by the server (384-dim collections).
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
    /// Text (searchable with BM25).
    #[serde(default)]
    pub text: Option<String>,
    /// Image or audio collections: the file (JPEG/PNG/WebP; WAV/FLAC/MP3/Ogg), base64,
    /// encoded by the server when no vector is given. Its source, SHA-256, size and what
    /// the encoder found (format, width/height and label; duration) are kept in
    /// `metadata.media`.
    #[serde(default)]
    pub media: Option<String>,
    /// Metadata (filterable).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// `POST /v1/collections/{name}/records`: an atomic batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    /// Records (inserted or replaced by id), all or none.
    pub records: Vec<RecordIn>,
}

/// The outcome of a write.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WriteResult {
    /// Records written (upserted or deleted).
    pub written: u64,
    /// Texts the server embedded.
    pub embedded: u64,
    /// Sequence number of the write (durable when acknowledged).
    pub seq: u64,
}

impl WriteResult {
    /// The audit detail of the write.
    pub fn audit_detail(&self) -> String {
        format!("records={} embedded={} seq={}", self.written, self.embedded, self.seq)
    }
}

/// A stored record.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordOut {
    /// Id.
    pub id: String,
    /// Vector (when asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// Query of `GET /v1/collections/{name}/records/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    /// Include the vector (default true).
    pub vector: Option<bool>,
    /// Cluster: freshness (`eventual`, `session`, `strong`; see the search request).
    pub consistency: Option<ConsistencyName>,
    /// Cluster: the `seq` of a write this read must see.
    pub write_token: Option<u64>,
}

/// Query of `GET /v1/collections/{name}/records`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScanParams {
    /// Start after this id (key order; the `next_after` of the previous page).
    pub after: Option<String>,
    /// Records per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Include vectors (default false).
    pub vectors: Option<bool>,
    /// Only records whose metadata match this filter (text syntax, as in search). A
    /// request examines at most 10,000 records: a page may then hold fewer than `limit`
    /// records, even none, and still carry `next_after`.
    #[param(example = "pos = \"n\"")]
    pub filter: Option<String>,
}

/// A page of records.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScanPage {
    /// Records in key order.
    pub records: Vec<RecordOut>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// Query of `GET /v1/collections/{name}/changes` (change data capture, cluster mode).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesParams {
    /// Changes after this position (the `next` of the previous page); 0 or absent: from
    /// the oldest change kept.
    pub after: Option<u64>,
    /// About this many changes, 1-10000 (default 1000); a page holds whole write
    /// batches, so it may hold more.
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
    /// Wait up to this long for a first change when there is none yet, 0-30000 ms (default 0).
    #[param(minimum = 0, maximum = 30000)]
    pub wait_ms: Option<u64>,
    /// Include vectors (default false).
    pub vectors: Option<bool>,
}

/// One committed change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChangeOut {
    /// Its position in the change stream (increasing; the writes of one batch to one
    /// shard share one).
    pub position: u64,
    /// `upsert` or `delete`.
    pub op: String,
    /// The record's id.
    pub id: String,
    /// The record as written (upserts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordOut>,
}

/// A page of changes, in commit order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChangesPage {
    /// The changes.
    pub changes: Vec<ChangeOut>,
    /// Pass as `after` to read on (the `after` asked for when there were none).
    pub next: u64,
}

/// `POST /v1/collections/{name}/records/delete`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    /// Ids to delete, atomically.
    pub ids: Vec<String>,
}

/// A metadata filter: an expression such as `pos = "n" and year >= 1990`, or its JSON form.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum FilterSpec {
    /// Text form: `= != < <= > >= in`, `and`, `or`, `not`, parentheses, dotted paths.
    Expr(String),
    /// JSON form, e.g. `{"and": [{"field": "pos", "eq": "n"}, {"field": "year", "gte": 1990}]}`
    /// (also `ne`, `in`, `gt`, `lt`, `lte`, `or`, `not`).
    #[schema(value_type = Object)]
    Json(Map<String, Value>),
}

/// Ranking of a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Nearest vectors (the text is embedded when no vector is given).
    #[default]
    Vector,
    /// BM25 over the `text` field.
    Keyword,
    /// Vector and keyword lists fused by reciprocal rank.
    Hybrid,
}

/// How fresh a read must be (a cluster; a single node always reads its latest write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyName {
    /// What the answering replicas applied (the default; fastest).
    #[default]
    Eventual,
    /// At least the write whose `seq` is given as `write_token`.
    Session,
    /// Every write acknowledged before the read.
    Strong,
}

impl From<ConsistencyName> for kernelize_cluster::Consistency {
    fn from(c: ConsistencyName) -> Self {
        match c {
            ConsistencyName::Eventual => kernelize_cluster::Consistency::Eventual,
            ConsistencyName::Session => kernelize_cluster::Consistency::Session,
            ConsistencyName::Strong => kernelize_cluster::Consistency::Strong,
        }
    }
}

/// `POST /v1/collections/{name}/search`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Query vector.
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
    /// Query text.
    #[serde(default)]
    pub text: Option<String>,
    /// Image or audio collections: the query file (an image, a voice clip), base64,
    /// encoded with the collection's encoder ("more like this", search by voice).
    #[serde(default)]
    pub media: Option<String>,
    /// Results wanted (default 10; capped by the server's `max_k`).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub k: Option<u32>,
    /// Beam width (default 128, at least k; capped by `max_ef`).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub ef: Option<u32>,
    /// Metadata filter.
    #[serde(default)]
    pub filter: Option<FilterSpec>,
    /// Ranking (default vector).
    #[serde(default)]
    pub mode: Option<SearchMode>,
    /// Exact search over every record (ground truth; slow on large collections).
    #[serde(default)]
    pub exact: Option<bool>,
    /// Include vectors in the hits (default false).
    #[serde(default)]
    pub include_vectors: Option<bool>,
    /// Say what the search did (default false): the plan per segment and stage (`walk`,
    /// `scan`, `walk+scan`, `exact`, `bm25`), candidates scored, rows decoded, and the
    /// time of each stage, in `explain` of the response.
    #[serde(default)]
    pub explain: Option<bool>,
    /// Cluster: how fresh the results must be (default `eventual`, or `session` when a
    /// `write_token` is given). A single node always answers with every acknowledged write.
    #[serde(default)]
    pub consistency: Option<ConsistencyName>,
    /// Cluster: the `seq` of a write this read must see (`session`).
    #[serde(default)]
    pub write_token: Option<u64>,
}

/// One search result.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    /// Record id.
    pub id: String,
    /// Cosine similarity, dot product or L2 distance by metric; BM25 score; fused score.
    pub score: f32,
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Vector (when asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// Search results, best first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchResponse {
    /// Hits.
    pub hits: Vec<SearchHit>,
    /// Milliseconds the search took in the engine.
    pub took_ms: f64,
    /// What the search did, when asked for (`explain: true`): `segments` (per segment and
    /// stage: `segment`, `stage`, `plan`, `rows`, `matching`, `scored`, `candidates`,
    /// `filter_us`, `us`), `memtable` (`rows`, `scored`, `us`), `fusion_us`,
    /// `rows_decoded`, `decode_us`, `embed_us`, `total_us`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub explain: Option<kernelize_index::search::Explain>,
}

/// One server-sent event of a `text/event-stream` response, as a client parses it: its
/// `id` (send it back as `Last-Event-ID` to resume), its type and its data (a JSON
/// document; which one the route says).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SseEvent {
    /// Sequence number of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Event type (`kernel`, `backup`, or a fleet event kind).
    pub event: String,
    /// The event's JSON document, as text.
    pub data: String,
}

/// One search the slow-query log kept.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SlowQuery {
    /// When it finished (Unix milliseconds).
    pub at_ms: i64,
    /// The request id (as in the audit log and the server's log).
    pub request_id: String,
    /// The key that asked.
    pub key_id: String,
    /// Collection.
    pub collection: String,
    /// `vector`, `keyword` or `hybrid`.
    pub mode: String,
    /// Results asked for.
    pub k: usize,
    /// Beam width used.
    pub ef: Option<usize>,
    /// The filter, as parsed (at most 500 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Characters of query text (the text itself is not kept).
    pub text_chars: usize,
    /// Whether it was an exact search.
    pub exact: bool,
    /// Milliseconds in the engine.
    pub took_ms: f64,
    /// What it did.
    #[schema(value_type = Object)]
    pub explain: kernelize_index::search::Explain,
}

/// `GET /v1/slow-queries`: the threshold and the slowest recent searches, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SlowQueryList {
    /// The configured threshold (`slow_query_ms`; 0: the log is off).
    pub threshold_ms: u64,
    /// Up to the last 100 searches at or over it, newest first.
    pub queries: Vec<SlowQuery>,
}

/// `POST /v1/embed`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// Texts to embed (truncated at 256 tokens).
    #[serde(default)]
    pub texts: Vec<String>,
    /// Image or audio files, base64, encoded by the `modality`'s model.
    #[serde(default)]
    pub media: Vec<String>,
    /// The model for `media`: `image` or `audio` (texts always use the text model).
    #[serde(default)]
    pub modality: Option<ModalityName>,
}

/// Embeddings, in the order of the texts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EmbedResponse {
    /// Model name.
    pub model: String,
    /// Dimension.
    pub dim: u64,
    /// One unit-length vector per text (or media file).
    pub vectors: Vec<Vec<f32>>,
    /// What the encoder found in each media file (format, size, label, duration).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub info: Vec<Map<String, Value>>,
}

/// `POST /v1/backups`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// `tar` (default) or `dir`.
    #[serde(default)]
    pub format: Option<BackupFormatName>,
}

/// Backup container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupFormatName {
    /// One `.tar` file.
    Tar,
    /// A directory.
    Dir,
}

/// A backup job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BackupInfo {
    /// Job id.
    pub id: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// `tar` or `dir`.
    pub format: String,
    /// Destination on the server.
    pub path: String,
    /// Who asked.
    pub requested_by: String,
    /// Started (RFC 3339).
    pub created_at: String,
    /// Finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Bytes written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// Collections captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<i64>,
    /// While it runs: the share of the bytes to copy that are copied, 0–1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f32>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/backups`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BackupList {
    /// Jobs, newest first.
    pub backups: Vec<BackupInfo>,
}

/// Usage counters of one key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyUsage {
    /// Key id.
    pub key_id: String,
    /// Authenticated requests.
    pub requests: i64,
    /// Records upserted or deleted.
    pub records_written: i64,
    /// Texts embedded.
    pub texts_embedded: i64,
    /// Bytes of records written.
    pub bytes_stored: i64,
    /// Language-model tokens (prompt and generated) of program runs and chat completions.
    pub llm_tokens: i64,
}

/// `GET /v1/usage`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    /// One row per key that made requests.
    pub keys: Vec<KeyUsage>,
}

/// `POST /v1/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A name for people (1-128 characters).
    #[schema(example = "ingest-service")]
    pub name: String,
    /// Role.
    pub role: Role,
    /// Collections the key reaches; omit for all.
    #[serde(default)]
    pub collections: Option<Vec<String>>,
    /// Lifetime in seconds; omit for no expiry.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3_153_600_000_u64)]
    pub expires_in_secs: Option<u64>,
    /// Quotas; omit for none.
    #[serde(default)]
    pub quota: Option<QuotaSettings>,
}

/// A key's quotas (`docs/quotas.md`); each part absent is unlimited. Also the body of
/// `PUT /v1/keys/{id}/quota`, which replaces them (`{}`: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    /// Most live records in the collections the key may write to (its scope; all
    /// collections for an unscoped key). An upsert by the key that would pass it is
    /// refused whole: 403 `quota_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9_223_372_036_854_775_807_u64)]
    pub records: Option<u64>,
    /// Most bytes of those records (id + 4 × dim + text + metadata JSON, as written).
    /// Not available on a cluster node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9_223_372_036_854_775_807_u64)]
    pub bytes: Option<u64>,
    /// Most authenticated requests per UTC day (the key's and its tokens'); beyond,
    /// 429 `quota_exceeded` with `Retry-After` until the next UTC midnight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9_223_372_036_854_775_807_u64)]
    pub requests_per_day: Option<u64>,
}

/// A key as listed (never its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    /// Public id (also the part after `kz_` of the key).
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Collections; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<String>>,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Revoked (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// The key that replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_to: Option<String>,
    /// Usable now.
    pub active: bool,
    /// Its quotas; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSettings>,
}

/// A new key: the only time its secret is shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyCreated {
    /// The full key for `Authorization: Bearer …`; store it now, it cannot be shown again.
    pub key: String,
    /// The key's details.
    pub info: KeyInfo,
}

/// `GET /v1/keys`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    /// Every key, oldest first.
    pub keys: Vec<KeyInfo>,
}

/// `POST /v1/keys/{id}/rotate`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Seconds the old key keeps working (default: the server's rotation grace).
    #[serde(default)]
    #[schema(maximum = 3_153_600_000_u64)]
    pub grace_secs: Option<u64>,
}

/// `POST /v1/tokens`: mint a short-lived token with at most this key's rights.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Role (default and at most: the key's).
    #[serde(default)]
    pub role: Option<Role>,
    /// Collections (default and at most: the key's).
    #[serde(default)]
    pub collections: Option<Vec<String>>,
    /// Lifetime in seconds (default 900; at most the server's `max_token_ttl_secs`).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub ttl_secs: Option<u64>,
}

/// A minted token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// EdDSA-signed JWT for `Authorization: Bearer …`.
    pub token: String,
    /// Expires (RFC 3339).
    pub expires_at: String,
    /// Role.
    pub role: Role,
    /// Collections; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<String>>,
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Entries after this sequence number (default 0).
    pub after_seq: Option<i64>,
    /// Entries per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only this actor, e.g. `key:abc123def456`.
    pub actor: Option<String>,
    /// Only this action, e.g. `auth.failure`.
    pub action: Option<String>,
}

/// A page of the audit log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// Entries, oldest first.
    pub entries: Vec<crate::audit::AuditEntry>,
    /// The current head of the chain.
    pub head_seq: i64,
    /// Its hash.
    pub head_hash: String,
}

/// `GET /healthz`, `GET /readyz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or what is not ready.
    pub status: String,
    /// Checks and their results.
    #[serde(default)]
    pub checks: std::collections::BTreeMap<String, String>,
}

// ---------------------------------------------------------------- kernels

/// Search structure of a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KernelIndexName {
    /// Inverted lists (smallest).
    #[default]
    Ivf,
    /// HNSW graph.
    Hnsw,
}

/// `POST /v1/kernels`: build a kernel of a collection in the background.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelBuildRequest {
    /// Source collection.
    pub collection: String,
    /// Consolidate records at least this similar (cosine) into one representative that
    /// keeps all their ids (default 0.97; `null` with `dedup: false` keeps every record).
    #[serde(default)]
    #[schema(minimum = -1.0, maximum = 1.0)]
    pub dedup_threshold: Option<f32>,
    /// Consolidate near-duplicates (default true).
    #[serde(default)]
    pub dedup: Option<bool>,
    /// How vectors are kept (default rabitq4).
    #[serde(default)]
    pub quantization: Option<QuantizationName>,
    /// Keep record text, compressed (default true).
    #[serde(default)]
    pub keep_text: Option<bool>,
    /// Search structure (default ivf).
    #[serde(default)]
    pub index: Option<KernelIndexName>,
    /// The kernel expires this many seconds after it is built (default: never).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub expires_in_secs: Option<u64>,
}

/// A kernel (or its build job).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KernelInfo {
    /// Kernel id.
    pub id: String,
    /// Source collection.
    pub collection: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// Build stage while running (`clustering`, `quantizing`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Fraction done, 0 to 1.
    pub progress: f32,
    /// Who asked.
    pub requested_by: String,
    /// Started (RFC 3339).
    pub created_at: String,
    /// Finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Kernel file bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// Rows kept after consolidation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<i64>,
    /// Original ids the rows stand for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<i64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The collection it was built from was dropped (or replaced by a new collection of
    /// the same name): only admins see it, and may only describe or delete it.
    pub orphaned: bool,
    /// The build settings.
    pub settings: KernelBuildRequest,
    /// The signed manifest (with the compression report), once built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub manifest: Option<Value>,
}

/// `GET /v1/kernels`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KernelList {
    /// Kernels of collections in the key's scope, newest first.
    pub kernels: Vec<KernelInfo>,
}

/// `POST /v1/kernels/{id}/query`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelQueryRequest {
    /// Query vector.
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
    /// Query text (embedded by the server).
    #[serde(default)]
    pub text: Option<String>,
    /// Results wanted (default 10; capped by `max_k`).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub k: Option<u32>,
    /// IVF lists probed or HNSW beam width (default: the kernel's, tuned at build; capped by `max_ef`).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub probe: Option<u32>,
    /// Metadata filter.
    #[serde(default)]
    pub filter: Option<FilterSpec>,
}

/// One kernel result row.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KernelHitOut {
    /// The ids the row stands for: the representative, then the near-duplicates folded into it.
    pub ids: Vec<String>,
    /// Estimated score (from the quantized vectors): cosine similarity, dot product or L2 distance.
    pub score: f32,
    /// Text, when the kernel keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// Kernel query results.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KernelQueryResponse {
    /// Rows, best first.
    pub hits: Vec<KernelHitOut>,
    /// Milliseconds spent searching.
    pub took_ms: f64,
}

/// `GET /v1/kernel-signing-key`: what devices verify kernels with.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyInfo {
    /// Always `ed25519`.
    pub algorithm: String,
    /// Key id (first 8 bytes of SHA-256 of the key, hex), as kernel manifests name it.
    pub key_id: String,
    /// The 32-byte public key, hex (the format of `kernelize keys generate`'s `.pub` file).
    pub public_key: String,
}

/// `GET /v1/cluster`: this node, the live members and where every shard is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    /// This node's id; absent on a single node (not a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Live members, by id.
    pub members: Vec<String>,
    /// Every shard of every collection.
    pub shards: Vec<ShardInfo>,
}

/// One shard's lease and committed state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShardInfo {
    /// Collection.
    pub collection: String,
    /// Shard number.
    pub shard: u32,
    /// The node holding its lease (absent while it moves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Fencing epoch of the lease.
    pub epoch: i64,
    /// Log sequence number up to which the shard is sealed in the object store.
    pub checkpoint: u64,
    /// Sealed segments.
    pub segments: u64,
    /// Commits so far.
    pub commits: i64,
}
