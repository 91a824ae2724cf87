//! `/console`: the web console. Plain ES modules and one stylesheet from
//! `crates/server/console/`, embedded in the binary (no build step, nothing fetched from
//! elsewhere), served with their content types, strong ETags (revalidated on every load:
//! `no-cache`) and a Content-Security-Policy without `'unsafe-inline'`. The console is a
//! client of the public API on the same origin; it holds no privileges of its own.

use crate::api::PagePolicy;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, body::Body};
use std::sync::{Arc, OnceLock};

/// The console's policy: its own scripts, styles and API only; no inline code, no
/// frames, no plugins, forms posting only to itself.
pub const POLICY: PagePolicy = PagePolicy {
    csp: "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data: blob:; media-src blob:; \
          base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    cache_control: "no-cache",
};

/// One embedded file.
struct Asset {
    /// Path under `/console/`.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! assets {
    ($($path:literal => $ty:expr),* $(,)?) => {
        &[$(Asset { path: $path, content_type: $ty, body: include_bytes!(concat!("../console/", $path)) }),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the console.
static ASSETS: &[Asset] = assets![
    "index.html" => "text/html; charset=utf-8",
    "console.css" => "text/css; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
    "js/app.js" => JS,
    "js/api.js" => JS,
    "js/dom.js" => JS,
    "js/filter.js" => JS,
    "js/metrics.js" => JS,
    "js/views/overview.js" => JS,
    "js/views/collections.js" => JS,
    "js/views/records.js" => JS,
    "js/views/search.js" => JS,
    "js/views/kernels.js" => JS,
    "js/views/keys.js" => JS,
    "js/views/audit.js" => JS,
    "js/views/usage.js" => JS,
    "js/sso.js" => JS,
    "js/views/map.js" => JS,
    "js/sse.js" => JS,
    "js/views/fleet.js" => JS,
    "js/views/fleet-devices.js" => JS,
    "js/views/fleet-deployments.js" => JS,
    "js/views/backups.js" => JS,
    "js/views/programs.js" => JS,
    "js/views/chat.js" => JS,
    "js/kernel-verify.js" => JS,
];

/// The strong ETag of each asset (SHA-256 of its bytes), in [`ASSETS`] order.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let d = ring::digest::digest(&ring::digest::SHA256, a.body);
                let hex: String = d.as_ref().iter().take(16).map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

/// The paths of every embedded file (for tests).
pub fn asset_paths() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.path)
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.path == path) else {
        return ApiError::not_found("no such console file; the console is at /console/").into_response();
    };
    let (asset, etag) = (&ASSETS[i], &etags()[i]);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { Body::from(asset.body).into_response() };
    let h = resp.headers_mut();
    if !fresh {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    }
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    resp.extensions_mut().insert(POLICY);
    resp
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// `/console`, `/console/` (the page) and `/console/{file}`: public, like `/docs` (every
/// call the console makes to the API carries its own credentials).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/console", get(index)).route("/console/", get(index)).route("/console/{*path}", get(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_embedded_file_carries_inline_code_or_styles() {
        for a in ASSETS {
            let text = std::str::from_utf8(a.body).unwrap_or_default();
            assert!(!text.contains("unsafe-inline"), "{}", a.path);
            if a.path.ends_with(".html") {
                assert!(!text.contains("style="), "{}: inline style attribute", a.path);
                assert!(!text.contains("<style"), "{}: inline style element", a.path);
                for script in text.split("<script").skip(1) {
                    let tag = script.split('>').next().unwrap_or_default();
                    assert!(tag.contains("src="), "{}: inline script", a.path);
                }
                let handler = text.split(" on").skip(1).any(|rest| {
                    let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
                    !name.is_empty() && rest[name.len()..].starts_with('=')
                });
                assert!(!handler, "{}: inline event handler", a.path);
            }
            if a.path.ends_with(".js") {
                for banned in ["innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function", ".style."] {
                    assert!(!text.contains(banned), "{}: uses {banned}", a.path);
                }
                assert!(!text.contains("localStorage"), "{}: nothing goes to localStorage", a.path);
            }
        }
    }

    #[test]
    fn etags_differ_per_file() {
        let mut seen = std::collections::HashSet::new();
        for e in etags() {
            assert!(seen.insert(e), "duplicate etag {e}");
        }
    }
}
