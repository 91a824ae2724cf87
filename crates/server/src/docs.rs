//! `/docs`: the API reference as one static HTML page rendered from the OpenAPI document
//! on the server (no scripts, nothing fetched from elsewhere).

use utoipa::openapi::path::Operation;
use utoipa::openapi::{OpenApi, RefOr};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn schema_name(r: &RefOr<utoipa::openapi::schema::Schema>) -> String {
    match r {
        RefOr::Ref(r) => r.ref_location.rsplit('/').next().unwrap_or("").to_owned(),
        RefOr::T(_) => "inline".to_owned(),
    }
}

fn operation(out: &mut String, method: &str, path: &str, op: &Operation) {
    let summary = op.summary.as_deref().or(op.description.as_deref()).unwrap_or("");
    out.push_str(&format!(
        "<section><h3><span class=m>{}</span> <code>{}</code></h3><p>{}</p>",
        method.to_uppercase(),
        esc(path),
        esc(summary)
    ));
    if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
        out.push_str("<p class=a>Needs <code>Authorization: Bearer &lt;key or token&gt;</code></p>");
    }
    if let Some(params) = &op.parameters {
        out.push_str("<ul>");
        for p in params {
            let desc = p.description.as_deref().unwrap_or("");
            let place = match p.parameter_in {
                utoipa::openapi::path::ParameterIn::Path => "path",
                utoipa::openapi::path::ParameterIn::Query => "query",
                utoipa::openapi::path::ParameterIn::Header => "header",
                utoipa::openapi::path::ParameterIn::Cookie => "cookie",
            };
            out.push_str(&format!("<li><code>{}</code> ({place}) {}</li>", esc(&p.name), esc(desc)));
        }
        out.push_str("</ul>");
    }
    if let Some(body) = &op.request_body {
        for (ct, c) in &body.content {
            let name = c.schema.as_ref().map(schema_name).unwrap_or_default();
            out.push_str(&format!("<p>Body: <code>{}</code> as {}</p>", esc(&name), esc(ct)));
        }
    }
    out.push_str("<ul>");
    for (code, r) in &op.responses.responses {
        if let RefOr::T(r) = r {
            let body = r
                .content
                .values()
                .next()
                .and_then(|c| c.schema.as_ref())
                .map(|s| format!(" — <code>{}</code>", esc(&schema_name(s))))
                .unwrap_or_default();
            out.push_str(&format!("<li>{code}: {}{body}</li>", esc(&r.description)));
        }
    }
    out.push_str("</ul></section>");
}

/// The page.
pub fn render(doc: &OpenApi) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=utf-8><title>Kernelize API</title><style>\
         body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}\
         section{border-top:1px solid #ddd;padding:.3rem 0}.m{font-weight:700;color:#064}.a{color:#840}\
         code{background:#f4f4f4;padding:0 .2rem}</style></head><body>",
    );
    out.push_str(&format!(
        "<h1>{} {}</h1><p>{}</p><p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI 3.1).</p>",
        esc(&doc.info.title),
        esc(&doc.info.version),
        esc(doc.info.description.as_deref().unwrap_or(""))
    ));
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("get", &item.get),
            ("post", &item.post),
            ("put", &item.put),
            ("patch", &item.patch),
            ("delete", &item.delete),
        ] {
            if let Some(op) = op {
                operation(&mut out, method, path, op);
            }
        }
    }
    out.push_str("</body></html>");
    out
}
