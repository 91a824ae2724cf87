//! The one JSON error shape of the API, `{code, message, request_id}`, with stable codes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

tokio::task_local! {
    /// The request id of the request being served (set by the request-id middleware).
    pub static REQUEST_ID: String;
}

/// The request id of the current request, or `-` outside one.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| "-".into())
}

/// The body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code: `invalid_request`, `unauthenticated`, `forbidden`,
    /// `not_found`, `conflict`, `method_not_allowed`, `payload_too_large`,
    /// `unsupported_media_type`, `rate_limited`, `overloaded`, `timeout`, `body_timeout`,
    /// `last_admin`, `unavailable`, `collection_unavailable`, `storage_full`, `internal`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The id of the request (also in the `x-request-id` header and the server log).
    pub request_id: String,
}

/// An error that becomes an HTTP response. Messages of 5xx errors never carry internals:
/// those go to the log under the request id.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Message for the client.
    pub message: String,
    /// Seconds after which a retry may succeed (429, 503).
    pub retry_after: Option<u64>,
    /// What the server log should say about it (never sent to the client).
    pub detail: Option<String>,
}

/// Longest message of an error response, in characters.
pub const MAX_MESSAGE_CHARS: usize = 400;

/// Longest quote of a client's input (an id, a name) in a message, in characters.
pub const MAX_QUOTE_CHARS: usize = 100;

/// `s` cut to `max` characters, with "…" when something was cut.
pub fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => s.into(),
        Some((at, _)) => format!("{}…", &s[..at]).into(),
    }
}

/// A client's input quoted for a message: Debug-quoted, cut at [`MAX_QUOTE_CHARS`].
pub fn quote(s: &str) -> String {
    format!("{:?}", clip(s, MAX_QUOTE_CHARS))
}

/// The log detail of an error response (see [`ApiError::detail`]), attached to it.
#[derive(Debug, Clone)]
pub struct ErrorDetail(pub String);

impl ApiError {
    /// An error with status, code and message (cut at [`MAX_MESSAGE_CHARS`]: messages
    /// may quote the request, which is not ours to echo at any length).
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        let message = message.into();
        let message = clip(&message, MAX_MESSAGE_CHARS).into_owned();
        ApiError { status, code, message, retry_after: None, detail: None }
    }
    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    /// 401 `unauthenticated`.
    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }
    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// 503 `unavailable` (a dependency such as the model or the metadata store is missing).
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// 500 `internal`: logs `detail` under the request id; the client sees only the id.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        let request_id = current_request_id();
        let detail = detail.to_string();
        tracing::error!(request_id, error = %detail, "internal error");
        let mut e = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        );
        e.detail = Some(detail);
        e
    }
    /// 507 `storage_full`: the disk under the data directory is full; logs `detail`.
    pub fn storage_full(detail: impl std::fmt::Display) -> ApiError {
        let request_id = current_request_id();
        let detail = detail.to_string();
        tracing::error!(request_id, error = %detail, "storage full");
        let mut e = ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "storage_full",
            "the server's storage is full; nothing was written by this request unless it says so",
        );
        e.detail = Some(detail);
        e
    }
    /// Sets `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs.max(1));
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { code: self.code.into(), message: self.message, request_id: current_request_id() };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(d) = self.detail {
            resp.extensions_mut().insert(ErrorDetail(d));
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<kernelize_store::Error> for ApiError {
    fn from(e: kernelize_store::Error) -> ApiError {
        use kernelize_store::ErrorClass;
        if e.is_disk_full() {
            return ApiError::storage_full(e);
        }
        match e.class() {
            ErrorClass::User => ApiError::invalid(e.to_string()),
            ErrorClass::NotFound => ApiError::not_found(e.to_string()),
            ErrorClass::Conflict => ApiError::conflict(e.to_string()),
            ErrorClass::Transient => {
                let request_id = current_request_id();
                tracing::warn!(request_id, error = %e, "storage error");
                let mut a = ApiError::unavailable("storage is temporarily unavailable").retry_after(1);
                a.detail = Some(e.to_string());
                a
            }
            // A damaged collection, or one poisoned by a failed write: 503 every time, with
            // a stable code; details go to the log (and its name to /readyz).
            ErrorClass::Unavailable | ErrorClass::Fatal => {
                let request_id = current_request_id();
                tracing::error!(request_id, error = %e, "collection unavailable");
                let message = match &e {
                    kernelize_store::Error::Poisoned { collection, .. } => format!(
                        "collection {collection} refuses writes after a failed write to disk; it recovers when the server restarts"
                    ),
                    kernelize_store::Error::Unavailable { collection, .. } => format!(
                        "collection {collection} is unavailable: its files are damaged and an operator must recover it"
                    ),
                    _ => "the collection is unavailable".to_owned(),
                };
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "collection_unavailable", message)
            }
            ErrorClass::Corruption => ApiError::internal(e),
        }
    }
}

impl From<kernelize_index::search::SearchError> for ApiError {
    fn from(e: kernelize_index::search::SearchError) -> ApiError {
        use kernelize_index::search::SearchError;
        match e {
            SearchError::Invalid(_) | SearchError::Filter(_) | SearchError::UnknownField { .. } => {
                ApiError::invalid(e.to_string())
            }
            SearchError::Store(s) => s.into(),
            SearchError::Index(i) => ApiError::internal(i),
        }
    }
}

impl From<kernelize_cluster::Error> for ApiError {
    fn from(e: kernelize_cluster::Error) -> ApiError {
        use kernelize_cluster::Error as E;
        match e {
            E::Invalid(m) => ApiError::invalid(m),
            E::NotFound(m) => ApiError::not_found(m),
            E::AlreadyExists(m) => ApiError::conflict(m),
            E::Store(s) => s.into(),
            E::Search(s) => s.into(),
            E::Unavailable { .. } | E::Fenced { .. } => {
                tracing::warn!(request_id = current_request_id(), error = %e, "cluster dependency unavailable");
                let mut a = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable", e.to_string());
                a = a.retry_after(1);
                a
            }
            E::Expired { .. } => ApiError::new(StatusCode::GONE, "changes_expired", e.to_string()),
            E::Internal(m) => ApiError::internal(m),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        ApiError::internal(format_args!("metadata store: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_full_is_507_with_a_stable_code() {
        let full = kernelize_store::Error::Io {
            path: "wal/000001.wal".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        let e = ApiError::from(full);
        assert_eq!((e.status, e.code), (StatusCode::INSUFFICIENT_STORAGE, "storage_full"));
        assert!(e.detail.as_deref().is_some_and(|d| d.contains("000001.wal")), "{:?}", e.detail);
        assert!(!e.message.contains("wal"), "no internals to the client: {}", e.message);
    }

    #[test]
    fn messages_quote_inputs_only_up_to_a_bound() {
        let long = "x".repeat(10_000);
        let e = ApiError::invalid(format!("no record {}", quote(&long)));
        assert!(e.message.chars().count() <= MAX_QUOTE_CHARS + 20, "{}", e.message.len());
        assert!(e.message.ends_with("…\""), "{}", e.message);
        let e = ApiError::invalid(long);
        assert_eq!(e.message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("hé", 2), "hé");
    }

    #[test]
    fn poisoned_and_unavailable_collections_are_503_collection_unavailable() {
        for e in [
            kernelize_store::Error::Poisoned { collection: "c".into(), cause: "fsync failed".into() },
            kernelize_store::Error::Unavailable { collection: "c".into(), reason: "damaged WAL".into() },
        ] {
            let a = ApiError::from(e);
            assert_eq!((a.status, a.code), (StatusCode::SERVICE_UNAVAILABLE, "collection_unavailable"), "{a}");
            assert!(a.message.contains("collection c"), "{a}");
        }
    }
}
