//! Single sign-on against a real OpenID provider (`oidc-provider` from npm, started by
//! the test): what the server refuses (unknown, replayed or foreign state, a code the
//! provider does not know, a provider error or another issuer), the session handoff and
//! sign-out of tokens that are not SSO sessions, and the browser test
//! (`console-tests/sso.test.mjs`): readers, admins, a user in no mapped group, sign-out
//! revoking the token. ID-token checks (nonce, audience, expiry, unknown key, algorithms)
//! are unit tests in `src/oidc.rs`.

use crate::browser::{CLIENT_ID, OidcProvider, artifacts, console_tests, free_port, run_node};
use crate::common::{ADMIN_KEY, Backend, TestServer};
use kernelize_server::auth::Role;
use kernelize_server::oidc::{GroupMapping, SsoSettings};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// A provider and a server on fixed ports of the suite's range, the server's `[sso]`
/// pointing at the provider: `admins` → admin, `readers` → reader of `docs`.
async fn start(backend: Backend) -> (OidcProvider, TestServer, tempfile::TempDir) {
    let (server_port, provider_port) = (free_port(), free_port());
    let redirect = format!("http://127.0.0.1:{server_port}/v1/sso/callback");
    let provider = tokio::task::spawn_blocking({
        let redirect = redirect.clone();
        move || OidcProvider::start(provider_port, &redirect)
    })
    .await
    .unwrap();
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("client-secret");
    fs_err::write(&secret_file, format!("{}\n", crate::browser::CLIENT_SECRET)).unwrap();
    let issuer = provider.issuer.clone();
    let ts = TestServer::start_with(backend, move |c| {
        c.listen = ([127, 0, 0, 1], server_port).into();
        c.sso = Some(SsoSettings {
            issuer,
            client_id: CLIENT_ID.into(),
            client_secret_file: Some(secret_file),
            redirect_uri: redirect,
            scopes: vec!["openid".into(), "profile".into(), "groups".into()],
            groups: vec![
                GroupMapping { group: "admins".into(), role: Role::Admin, collections: None },
                GroupMapping { group: "readers".into(), role: Role::Reader, collections: Some(vec!["docs".into()]) },
            ],
            label: "Sign in with Test IdP".into(),
            ..SsoSettings::default()
        });
    })
    .await;
    (provider, ts, secret_dir)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Starts a login: `(state, login cookie, authorization URL)`.
async fn login(ts: &TestServer, client: &reqwest::Client) -> (String, String, reqwest::Url) {
    let r = client.get(format!("{}/v1/sso/login", ts.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["kz_sso_login=", "HttpOnly", "SameSite=Lax", "Path=/v1/sso", "Max-Age=600"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let value = cookie.split(';').next().unwrap().to_owned();
    let url = reqwest::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    (q["state"].clone(), value, url)
}

async fn callback(ts: &TestServer, client: &reqwest::Client, query: &str, cookie: Option<&str>) -> String {
    let mut r = client.get(format!("{}/v1/sso/callback?{query}", ts.base));
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    r.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_refuses_bad_state_foreign_browsers_unknown_codes_and_other_issuers() {
    let (provider, ts, _secret) = start(Backend::Sqlite).await;
    let client = no_redirects();
    let (s, v) = ts.call(None, reqwest::Method::GET, "/v1/sso/config", None).await;
    assert_eq!((s, &v), (StatusCode::OK, &json!({"enabled": true, "label": "Sign in with Test IdP"})));

    // The redirect carries PKCE (S256), state, nonce and only the configured redirect URI.
    let (state, cookie, url) = login(&ts, &client).await;
    assert!(url.as_str().starts_with(&format!("{}/auth?", provider.issuer)), "{url}");
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert!(q["redirect_uri"].starts_with("http://127.0.0.1:") && q["redirect_uri"].ends_with("/v1/sso/callback"));
    assert!(q["nonce"].len() >= 43 && state.len() >= 43 && q["nonce"] != state);
    assert_eq!(q["scope"], "openid profile groups");

    // The provider's authorization endpoint accepts the request (to its login page).
    let r = client.get(url.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{}", r.text().await.unwrap());

    let refused = "/console/#/sso?error=state";
    // An unknown state.
    assert_eq!(callback(&ts, &client, "code=abc&state=forged", Some(&cookie)).await, refused);
    // The right state from a browser without the login cookie: refused, and used up.
    assert_eq!(callback(&ts, &client, &format!("code=abc&state={state}"), None).await, refused);
    assert_eq!(callback(&ts, &client, &format!("code=abc&state={state}"), Some(&cookie)).await, refused);
    // Another browser's cookie.
    let (state, _, _) = login(&ts, &client).await;
    let (_, other_cookie, _) = login(&ts, &client).await;
    assert_eq!(callback(&ts, &client, &format!("code=abc&state={state}"), Some(&other_cookie)).await, refused);
    // The right state and cookie, but a code the provider never issued: its token
    // endpoint (with our client secret) refuses it.
    let (state, cookie, _) = login(&ts, &client).await;
    let to = callback(&ts, &client, &format!("code=not-a-code&state={state}"), Some(&cookie)).await;
    assert_eq!(to, "/console/#/sso?error=provider");
    // A provider error, and a response naming another issuer (RFC 9207).
    let (state, cookie, _) = login(&ts, &client).await;
    let to = callback(&ts, &client, &format!("error=access_denied&state={state}"), Some(&cookie)).await;
    assert_eq!(to, "/console/#/sso?error=provider");
    let (state, cookie, _) = login(&ts, &client).await;
    let q = format!("code=abc&state={state}&iss=http%3A%2F%2Fevil.example");
    assert_eq!(callback(&ts, &client, &q, Some(&cookie)).await, "/console/#/sso?error=provider");
    // Parameters too long to be real.
    let long = "x".repeat(5000);
    assert_eq!(callback(&ts, &client, &format!("code={long}&state={long}"), Some(&cookie)).await, refused);

    // Every refusal is audited with its reason.
    let (_, page) = ts.get(ADMIN_KEY, "/v1/audit?action=sso.signin&limit=50").await;
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 8, "{page}");
    assert!(entries.iter().all(|e| e["outcome"] == "denied"), "{page}");
    let details: Vec<&str> = entries.iter().map(|e| e["detail"].as_str().unwrap()).collect();
    assert!(details.iter().any(|d| d.contains("unknown, used or expired state")), "{details:?}");
    assert!(details.iter().any(|d| d.contains("another browser")), "{details:?}");
    assert!(details.iter().any(|d| d.contains("token endpoint") && d.contains("invalid_grant")), "{details:?}");
    assert!(details.iter().any(|d| d.contains("access_denied")), "{details:?}");
    assert!(details.iter().any(|d| d.contains("RFC 9207")), "{details:?}");

    // Nothing to collect without a finished sign-in; sign-out is for SSO sessions only.
    let r = client.post(format!("{}/v1/sso/session", ts.base)).header("cookie", "kz_sso_handoff=guess").send().await;
    assert_eq!(r.unwrap().status(), StatusCode::UNAUTHORIZED);
    let (s, v) = ts.post(ADMIN_KEY, "/v1/sso/logout", json!({})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{v}");
    // A token signed by this server for a session that does not exist.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let forged = kernelize_server::auth::TokenClaims {
        sub: "sso:mallory".into(),
        iss: kernelize_server::auth::TOKEN_ISSUER.into(),
        iat: now,
        exp: now + 300,
        jti: "j".into(),
        role: Role::Admin,
        collections: None,
        sid: Some("no-such-session".into()),
    };
    let token = ts.running().state().secrets.sign_token(&forged).unwrap();
    assert_eq!(ts.get(&token, "/v1/collections").await.0, StatusCode::UNAUTHORIZED);
    ts.shutdown().await;
    drop(provider);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_is_off_unless_configured() {
    let ts = TestServer::start(Backend::Sqlite).await;
    let (s, v) = ts.call(None, reqwest::Method::GET, "/v1/sso/config", None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"enabled": false})));
    let (s, v) = ts.call(None, reqwest::Method::GET, "/v1/sso/login", None).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let to = callback(&ts, &no_redirects(), "code=a&state=b", None).await;
    assert_eq!(to, "/console/#/sso?error=disabled");
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_in_chromium() {
    let dir = console_tests();
    let (provider, ts, _secret) = start(Backend::Sqlite).await;
    ts.create_collection("docs", 4).await;
    let records: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("d{i}"), "vector": [1.0, i as f32, 0.0, 0.5], "text": format!("document {i}")}))
        .collect();
    assert_eq!(ts.post(ADMIN_KEY, "/v1/collections/docs/records", json!({"records": records})).await.0, StatusCode::OK);
    let out = artifacts("sso");
    let (base, out2) = (ts.base.clone(), out.clone());
    let (ok, stderr) = tokio::task::spawn_blocking(move || {
        run_node(&dir, &["sso.test.mjs".as_ref(), base.as_ref(), out2.as_os_str()], Duration::from_secs(240))
    })
    .await
    .unwrap();
    assert!(ok, "the SSO browser test failed (screenshots in {}):\n{stderr}", out.display());
    eprintln!("{stderr}");
    // The server's audit log tells the same story.
    let (_, page) = ts.get(ADMIN_KEY, "/v1/audit?action=sso.signin&limit=50").await;
    let entries = page["entries"].as_array().unwrap();
    let ok_actors: Vec<&str> =
        entries.iter().filter(|e| e["outcome"] == "ok").map(|e| e["actor"].as_str().unwrap()).collect();
    assert!(ok_actors.contains(&"sso:ann") && ok_actors.contains(&"sso:bob"), "{page}");
    assert!(
        entries.iter().any(|e| e["outcome"] == "denied" && e["detail"].as_str().unwrap().starts_with("no_group")),
        "{page}"
    );
    let (_, page) = ts.get(ADMIN_KEY, "/v1/audit?action=sso.signout&limit=50").await;
    let signouts = page["entries"].as_array().unwrap();
    assert!(signouts.iter().any(|e| e["actor"] == "sso:ann" && e["outcome"] == "ok"), "{page}");
    assert!(out.join("01-sso-sign-in.png").exists());
    ts.shutdown().await;
    drop(provider);
}
