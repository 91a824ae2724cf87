//! The role matrix's cases for the single sign-on routes (on a server without `[sso]`)
//! and the collection map.

use crate::common::TestServer;
use crate::matrix::{Keys, Who, expected};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub async fn exercise(
    ts: &TestServer,
    keys: &Keys,
    method: &str,
    template: &str,
    who: Who,
) -> (StatusCode, Value, StatusCode) {
    let key = keys.of(who);
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let m = if method == "post" { Method::POST } else { Method::GET };
    let path = match template {
        "/v1/collections/{name}/map" => "/v1/collections/docs/map?sample=10".to_owned(),
        "/v1/sso/callback" => "/v1/sso/callback?code=a&state=b".to_owned(),
        t => t.to_owned(),
    };
    let mut rb = client.request(m, format!("{}{path}", ts.base));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    let status = r.status();
    let location = r.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
    let want = match (method, template) {
        ("get", "/v1/collections/{name}/map") => {
            if status.is_success() {
                assert_eq!(body["points"].as_array().unwrap().len(), 1, "{body}");
            }
            expected(who, Who::Reader, true, StatusCode::OK)
        }
        // Public: anyone learns whether SSO is offered (here it is not).
        ("get", "/v1/sso/config") => {
            assert_eq!(body["enabled"], false, "{body}");
            StatusCode::OK
        }
        ("get", "/v1/sso/login") | ("post", "/v1/sso/session") => StatusCode::NOT_FOUND,
        ("get", "/v1/sso/callback") => {
            assert_eq!(location.as_deref(), Some("/console/#/sso?error=disabled"));
            StatusCode::SEE_OTHER
        }
        // Only an SSO session can sign out; a key is told so.
        ("post", "/v1/sso/logout") => {
            if who == Who::Anonymous {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::BAD_REQUEST
            }
        }
        _ => panic!("route {method} {template} has no case in the role matrix"),
    };
    (status, body, want)
}
