//! Single sign-on with OpenID Connect (`[sso]` in the config), next to API keys.
//!
//! The authorization code flow with PKCE (S256), `state` and `nonce`:
//! 1. `GET /v1/sso/login` keeps `{state → nonce, PKCE verifier, browser binding}` in
//!    memory (bounded, `login_timeout_secs`), sets the binding as an HttpOnly cookie
//!    (`kz_sso_login`, path `/v1/sso`) and redirects to the provider's authorization
//!    endpoint from its discovery document, with the configured `redirect_uri` only.
//! 2. `GET /v1/sso/callback` takes the pending login of `state` (once), checks the
//!    cookie against its binding (a callback started in another browser is refused),
//!    redeems the code with the verifier at the token endpoint, verifies the ID token
//!    (signature by a key of the provider's JWKS, pinned asymmetric algorithm, issuer,
//!    audience and `azp`, `exp`/`iat`/`nbf`, nonce), reads the groups claim (from the ID
//!    token, else from the userinfo endpoint, whose `sub` must match), maps it to a role
//!    and collections (the first matching `[[sso.groups]]` entry), stores a session row
//!    and mints the console's usual short-lived EdDSA token for it (claim `sid`). The token
//!    goes to the browser through a one-time handoff: an HttpOnly `SameSite=Strict` cookie
//!    (`kz_sso_handoff`, 60 s) that `POST /v1/sso/session` trades for the token, so it
//!    never appears in a URL, a log or the provider's Referer.
//! 3. Every request with such a token checks its session row (cached for at most
//!    [`crate::state::KEY_CACHE_TTL`]; on this server revocation is immediate);
//!    `POST /v1/sso/logout` revokes it. Sign-ins (and refusals) and sign-outs are audited.
//!
//! Everything the provider or the browser controls is bounded: each provider response
//! (size and time), the number of pending logins, the groups claim, cookie and parameter
//! lengths. Pending logins live in this process: with several servers behind one
//! database, a login must come back to the server that started it (sticky routing).

use crate::api::{Auth, QueryParams, audited};
use crate::auth::{Principal, Role, Scope, TOKEN_ISSUER, TokenClaims, random_id};
use crate::error::{ApiError, clip, current_request_id};
use crate::state::{AppState, now_ms, rfc3339};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row as _;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use utoipa::{IntoParams, OpenApi, ToSchema};

/// The cookie binding a login to the browser that started it.
pub const LOGIN_COOKIE: &str = "kz_sso_login";
/// The cookie that hands the minted token to the console once.
pub const HANDOFF_COOKIE: &str = "kz_sso_handoff";
/// Pending logins kept at most (a flood beyond is answered 503, never grows memory).
const MAX_PENDING: usize = 10_000;
/// How long a minted token waits for the console to collect it.
const HANDOFF_SECS: u64 = 60;
/// The discovery document is fetched again after this long.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// An ID token naming an unknown key fetches the JWKS again, at most this often.
const JWKS_REFETCH: Duration = Duration::from_secs(30);
/// Most groups read from a groups claim, and the longest group name.
const MAX_GROUPS: usize = 1000;
const MAX_GROUP_BYTES: usize = 256;
/// Longest `state`, `code` or cookie value accepted from the browser.
const MAX_PARAM: usize = 2048;
/// Signature algorithms an ID token may use (asymmetric only: never `none`, never HMAC).
const ALGORITHMS: &[jsonwebtoken::Algorithm] = {
    use jsonwebtoken::Algorithm::*;
    &[RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA]
};

/// `[sso]`: single sign-on with an OpenID provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SsoSettings {
    /// The provider's issuer URL; its discovery document is
    /// `<issuer>/.well-known/openid-configuration` and must name this issuer exactly.
    pub issuer: String,
    /// This server's client id at the provider (the ID token's audience).
    pub client_id: String,
    /// A file holding the client secret (read at each sign-in, so it can be rotated);
    /// none: a public client (PKCE alone). The secret is sent with HTTP Basic.
    pub client_secret_file: Option<PathBuf>,
    /// The callback URL registered at the provider, `https://<this server>/v1/sso/callback`
    /// (plain `http` only on a loopback address). The only one ever sent.
    pub redirect_uri: String,
    /// Scopes requested (must include `openid`).
    pub scopes: Vec<String>,
    /// The claim (in the ID token or from userinfo) that lists the user's groups.
    pub groups_claim: String,
    /// Group → role (and collections): the first entry whose group the user is in wins;
    /// a user in none of them is refused.
    pub groups: Vec<GroupMapping>,
    /// Lifetime of a session and of its token, seconds (at most
    /// `limits.max_token_ttl_secs`).
    pub session_ttl_secs: u64,
    /// Longest wait for any provider request (connect + response), milliseconds.
    pub http_timeout_ms: u64,
    /// Largest provider response read (discovery, JWKS, token, userinfo), bytes.
    pub max_response_bytes: usize,
    /// Clock skew allowed on the ID token's `exp`, `iat` and `nbf`, seconds.
    pub leeway_secs: u64,
    /// How long a started login may take at the provider, seconds.
    pub login_timeout_secs: u64,
    /// The sign-in button's text in the console.
    pub label: String,
}

/// One `[[sso.groups]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMapping {
    /// The group's name as the provider lists it.
    pub group: String,
    /// The role its members get.
    pub role: Role,
    /// The collections they reach; absent: all.
    #[serde(default)]
    pub collections: Option<Vec<String>>,
}

impl Default for SsoSettings {
    fn default() -> Self {
        SsoSettings {
            issuer: String::new(),
            client_id: String::new(),
            client_secret_file: None,
            redirect_uri: String::new(),
            scopes: vec!["openid".into(), "profile".into(), "email".into()],
            groups_claim: "groups".into(),
            groups: Vec::new(),
            session_ttl_secs: 900,
            http_timeout_ms: 5000,
            max_response_bytes: 1 << 20,
            leeway_secs: 60,
            login_timeout_secs: 600,
            label: "Single sign-on".into(),
        }
    }
}

/// `https`, or `http` on a loopback host; no fragment.
fn check_url(what: &str, text: &str) -> anyhow::Result<reqwest::Url> {
    let u = reqwest::Url::parse(text).map_err(|e| anyhow::anyhow!("sso.{what}: {e} ({text:?})"))?;
    let host = u.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    anyhow::ensure!(
        u.scheme() == "https" || (u.scheme() == "http" && loopback),
        "sso.{what} must be an https URL (plain http only on a loopback address), got {text:?}"
    );
    anyhow::ensure!(u.fragment().is_none() && u.username().is_empty(), "sso.{what}: no fragment or user info");
    Ok(u)
}

impl SsoSettings {
    /// Checks the settings (`max_ttl`: `limits.max_token_ttl_secs`).
    pub fn validate(&self, max_ttl: u64) -> anyhow::Result<()> {
        check_url("issuer", &self.issuer)?;
        let r = check_url("redirect_uri", &self.redirect_uri)?;
        anyhow::ensure!(
            r.path().ends_with("/v1/sso/callback") && r.query().is_none(),
            "sso.redirect_uri must be this server's /v1/sso/callback, got {:?}",
            self.redirect_uri
        );
        anyhow::ensure!(!self.client_id.is_empty() && self.client_id.len() <= 256, "sso.client_id: 1 to 256 bytes");
        anyhow::ensure!(self.scopes.iter().any(|s| s == "openid"), "sso.scopes must include \"openid\"");
        anyhow::ensure!(
            self.scopes.iter().all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"')),
            "sso.scopes: plain words"
        );
        anyhow::ensure!(!self.groups_claim.is_empty(), "sso.groups_claim must not be empty");
        anyhow::ensure!(!self.groups.is_empty(), "sso.groups: map at least one group to a role");
        for g in &self.groups {
            anyhow::ensure!(
                !g.group.is_empty() && g.group.len() <= MAX_GROUP_BYTES,
                "sso.groups: a group name of 1 to {MAX_GROUP_BYTES} bytes"
            );
            for c in g.collections.iter().flatten() {
                kernelize_store::validate_name(c).map_err(|e| anyhow::anyhow!("sso.groups {:?}: {e}", g.group))?;
            }
        }
        anyhow::ensure!(
            (60..=max_ttl.max(60)).contains(&self.session_ttl_secs),
            "sso.session_ttl_secs must be in [60, limits.max_token_ttl_secs = {max_ttl}], got {}",
            self.session_ttl_secs
        );
        anyhow::ensure!((100..=60_000).contains(&self.http_timeout_ms), "sso.http_timeout_ms must be in [100, 60000]");
        anyhow::ensure!(
            (1024..=16 << 20).contains(&self.max_response_bytes),
            "sso.max_response_bytes must be in [1024, 16777216]"
        );
        anyhow::ensure!(self.leeway_secs <= 300, "sso.leeway_secs must be at most 300");
        anyhow::ensure!((30..=3600).contains(&self.login_timeout_secs), "sso.login_timeout_secs must be in [30, 3600]");
        anyhow::ensure!(self.label.chars().count() <= 64, "sso.label: at most 64 characters");
        Ok(())
    }
}

/// Why a sign-in was refused: a stable code for the console and a detail for the audit log.
#[derive(Debug)]
pub(crate) struct Refusal {
    code: &'static str,
    detail: String,
}

fn refuse(code: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal { code, detail: detail.into() }
}

/// The provider's discovery document (the fields used).
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

/// A login between `/login` and `/callback`.
struct Pending {
    nonce: String,
    verifier: String,
    /// SHA-256 of the login cookie's value.
    binding: [u8; 32],
    started: Instant,
}

/// A minted token waiting for the console.
struct Handoff {
    session: SessionOut,
    made: Instant,
}

/// A session row.
#[derive(Debug, Clone)]
struct SessionRow {
    subject: String,
    role: Role,
    scope: Scope,
    expires_ms: i64,
    revoked: bool,
}

/// What the console gets for a finished sign-in.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionOut {
    /// The bearer token (EdDSA, like those of POST /v1/tokens), valid until `expires_at`.
    pub token: String,
    /// Expiry (RFC 3339).
    pub expires_at: String,
    /// The role the user's group maps to.
    pub role: Role,
    /// Collections; absent: all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<String>>,
    /// Who signed in (name, e-mail or subject, as the provider gave it).
    pub user: String,
    /// Always `sso`: sign-out goes through POST /v1/sso/logout.
    pub via: &'static str,
}

/// Whether single sign-on is offered.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SsoInfo {
    /// Configured.
    pub enabled: bool,
    /// The button's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

struct Cached<T> {
    value: T,
    at: Instant,
}

/// Single sign-on at run time: the provider's metadata and keys, pending logins,
/// handoffs and the session cache.
pub struct Sso {
    settings: SsoSettings,
    http: Result<reqwest::Client, String>,
    discovery: tokio::sync::Mutex<Option<Cached<Discovery>>>,
    jwks: tokio::sync::Mutex<Option<Cached<Vec<Jwk>>>>,
    pending: Mutex<HashMap<String, Pending>>,
    handoffs: Mutex<HashMap<[u8; 32], Handoff>>,
    sessions: crate::state::RowCache<SessionRow>,
}

impl std::fmt::Debug for Sso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sso").field("issuer", &self.settings.issuer).finish_non_exhaustive()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    // As auth::random_bytes: without OS randomness nothing is safe to do.
    #[allow(clippy::expect_used)]
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the operating system's random number generator failed");
    URL_SAFE_NO_PAD.encode(b)
}

/// The value of cookie `name` in the request, if present and short.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= MAX_PARAM)
}

impl Sso {
    /// From validated settings.
    pub fn new(settings: SsoSettings) -> Sso {
        let timeout = Duration::from_millis(settings.http_timeout_ms);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The provider's endpoints are used as the discovery document names them.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kernelize/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"));
        Sso {
            settings,
            http,
            discovery: tokio::sync::Mutex::new(None),
            jwks: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            handoffs: Mutex::new(HashMap::new()),
            sessions: crate::state::RowCache::default(),
        }
    }

    fn secure(&self) -> bool {
        self.settings.redirect_uri.starts_with("https://")
    }

    fn cookie_header(&self, name: &str, value: &str, max_age: u64, same_site: &str) -> HeaderValue {
        let secure = if self.secure() { "; Secure" } else { "" };
        let text = format!("{name}={value}; Path=/v1/sso; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}");
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// GETs or POSTs and reads at most `max_response_bytes` of JSON, within the timeout.
    async fn fetch(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value, Refusal> {
        let max = self.settings.max_response_bytes;
        let mut resp = req.send().await.map_err(|e| refuse("provider", format!("{what}: {e}")))?;
        let status = resp.status();
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(refuse("provider", format!("{what}: response larger than {max} bytes")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| refuse("provider", format!("{what}: {e}")))? {
            if body.len() + chunk.len() > max {
                return Err(refuse("provider", format!("{what}: response larger than {max} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| refuse("provider", format!("{what}: HTTP {status}, not JSON: {e}")))?;
        if !status.is_success() {
            let error = v.get("error").and_then(Value::as_str).unwrap_or("-");
            return Err(refuse("provider", format!("{what}: HTTP {status}, error {}", clip(error, 100))));
        }
        Ok(v)
    }

    fn client(&self) -> Result<&reqwest::Client, Refusal> {
        self.http.as_ref().map_err(|e| refuse("provider", e.clone()))
    }

    /// The discovery document (cached for an hour), checked against the configured issuer.
    async fn discovery(&self) -> Result<Discovery, Refusal> {
        let mut cached = self.discovery.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.at.elapsed() < METADATA_TTL) {
            return Ok(c.value.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", self.settings.issuer.trim_end_matches('/'));
        let v = self.fetch(self.client()?.get(&url), "discovery").await?;
        let d: Discovery =
            serde_json::from_value(v).map_err(|e| refuse("provider", format!("discovery document: {e}")))?;
        if d.issuer != self.settings.issuer {
            return Err(refuse(
                "provider",
                format!("discovery names issuer {:?}, configured {:?}", clip(&d.issuer, 200), self.settings.issuer),
            ));
        }
        for (what, u) in [
            ("authorization_endpoint", Some(&d.authorization_endpoint)),
            ("token_endpoint", Some(&d.token_endpoint)),
            ("jwks_uri", Some(&d.jwks_uri)),
            ("userinfo_endpoint", d.userinfo_endpoint.as_ref()),
        ] {
            if let Some(u) = u {
                check_url(what, u).map_err(|e| refuse("provider", format!("discovery: {e}")))?;
            }
        }
        if d.code_challenge_methods_supported.as_ref().is_some_and(|m| !m.iter().any(|m| m == "S256")) {
            return Err(refuse("provider", "the provider does not support PKCE with S256"));
        }
        *cached = Some(Cached { value: d.clone(), at: Instant::now() });
        Ok(d)
    }

    /// The provider's signing keys; fetched again when `stale` (an unknown `kid`), at
    /// most every [`JWKS_REFETCH`], and after [`METADATA_TTL`].
    async fn keys(&self, d: &Discovery, stale: bool) -> Result<Vec<Jwk>, Refusal> {
        let mut cached = self.jwks.lock().await;
        if let Some(c) = cached.as_ref() {
            let age = c.at.elapsed();
            if age < METADATA_TTL && (!stale || age < JWKS_REFETCH) {
                return Ok(c.value.clone());
            }
        }
        let v = self.fetch(self.client()?.get(&d.jwks_uri), "jwks").await?;
        let keys = parse_jwks(&v).map_err(|e| refuse("provider", format!("jwks: {e}")))?;
        *cached = Some(Cached { value: keys.clone(), at: Instant::now() });
        Ok(keys)
    }

    /// Starts a login: the redirect to the provider, with the binding cookie.
    async fn login(&self) -> Result<Response, Refusal> {
        let d = self.discovery().await?;
        let (state, nonce, verifier, binding) = (random_b64(32), random_b64(32), random_b64(32), random_b64(32));
        let challenge = URL_SAFE_NO_PAD.encode(sha256(verifier.as_bytes()));
        {
            let mut pending = self.pending.lock();
            let ttl = Duration::from_secs(self.settings.login_timeout_secs);
            pending.retain(|_, p| p.started.elapsed() < ttl);
            if pending.len() >= MAX_PENDING {
                return Err(refuse("busy", "too many sign-ins in progress"));
            }
            let p = Pending {
                nonce: nonce.clone(),
                verifier,
                binding: sha256(binding.as_bytes()),
                started: Instant::now(),
            };
            pending.insert(state.clone(), p);
        }
        let s = &self.settings;
        let url = reqwest::Url::parse_with_params(
            &d.authorization_endpoint,
            [
                ("response_type", "code"),
                ("client_id", s.client_id.as_str()),
                ("redirect_uri", s.redirect_uri.as_str()),
                ("scope", s.scopes.join(" ").as_str()),
                ("state", state.as_str()),
                ("nonce", nonce.as_str()),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .map_err(|e| refuse("provider", format!("authorization_endpoint: {e}")))?;
        let mut resp = redirect(url.as_str());
        let c = self.cookie_header(LOGIN_COOKIE, &binding, s.login_timeout_secs, "Lax");
        resp.headers_mut().append(header::SET_COOKIE, c);
        Ok(resp)
    }

    /// Redeems the callback: the verified identity and its session.
    async fn callback(&self, st: &AppState, q: &CallbackQuery, headers: &HeaderMap) -> Result<Signed, Refusal> {
        if let Some(e) = &q.error {
            let desc = q.error_description.as_deref().unwrap_or("");
            return Err(refuse("provider", format!("the provider answered {}: {}", clip(e, 100), clip(desc, 200))));
        }
        if q.iss.as_deref().is_some_and(|i| i != self.settings.issuer) {
            return Err(refuse("provider", "the callback names another issuer (RFC 9207 iss)"));
        }
        let (Some(code), Some(state)) = (q.code.as_deref(), q.state.as_deref()) else {
            return Err(refuse("state", "the callback has no code or no state"));
        };
        if code.len() > MAX_PARAM || state.len() > MAX_PARAM {
            return Err(refuse("state", "code or state too long"));
        }
        // Taken once: a replayed callback finds nothing.
        let Some(p) = self.pending.lock().remove(state) else {
            return Err(refuse("state", "unknown, used or expired state"));
        };
        if p.started.elapsed() > Duration::from_secs(self.settings.login_timeout_secs) {
            return Err(refuse("state", "the sign-in took longer than sso.login_timeout_secs"));
        }
        let bound = cookie(headers, LOGIN_COOKIE).map(|c| sha256(c.as_bytes()));
        // Hashes are compared (timing can only tell a prefix of a SHA-256, not of the cookie).
        if bound != Some(p.binding) {
            return Err(refuse("state", "the sign-in was started in another browser (login cookie missing or wrong)"));
        }
        let d = self.discovery().await?;
        let s = &self.settings;
        let mut req = self.client()?.post(&d.token_endpoint).form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", s.redirect_uri.as_str()),
            ("client_id", s.client_id.as_str()),
            ("code_verifier", p.verifier.as_str()),
        ]);
        if let Some(f) = &s.client_secret_file {
            let secret = fs_err::read_to_string(f).map_err(|e| refuse("provider", format!("client secret: {e}")))?;
            req = req.basic_auth(form_encode(&s.client_id), Some(form_encode(secret.trim())));
        }
        let tokens = self.fetch(req, "token endpoint").await?;
        let id_token = tokens
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| refuse("id_token", "the token response has no id_token"))?;
        let expect = Expect {
            issuer: &s.issuer,
            client_id: &s.client_id,
            nonce: &p.nonce,
            leeway_secs: s.leeway_secs,
            now_s: u64::try_from(now_ms() / 1000).unwrap_or(0),
        };
        let keys = self.keys(&d, false).await?;
        let claims = match verify_id_token(id_token, &keys, &expect) {
            Err(IdTokenError::UnknownKey(_)) => {
                // The provider may have rotated its keys since they were fetched.
                let keys = self.keys(&d, true).await?;
                verify_id_token(id_token, &keys, &expect)
            }
            other => other,
        }
        .map_err(|e| refuse("id_token", e.to_string()))?;
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut groups = groups_of(&claims, &s.groups_claim).map_err(|e| refuse("id_token", e))?;
        // Claims the ID token lacks (code-flow providers often release them at userinfo only).
        let mut profile = Value::Null;
        if groups.is_none()
            && let (Some(ui), Some(at)) = (&d.userinfo_endpoint, tokens.get("access_token").and_then(Value::as_str))
        {
            let info = self.fetch(self.client()?.get(ui).bearer_auth(at), "userinfo").await?;
            if info.get("sub").and_then(Value::as_str) != Some(subject.as_str()) {
                return Err(refuse("id_token", "userinfo names another subject than the ID token"));
            }
            groups = groups_of(&info, &s.groups_claim).map_err(|e| refuse("id_token", e))?;
            profile = info;
        }
        let groups = groups.unwrap_or_default();
        let user = ["name", "preferred_username", "email"]
            .iter()
            .find_map(|k| {
                [&claims, &profile].iter().find_map(|c| c.get(*k).and_then(Value::as_str).filter(|v| !v.is_empty()))
            })
            .unwrap_or(subject.as_str())
            .to_owned();
        let user = clip(&user, 128).into_owned();
        let Some(m) = s.groups.iter().find(|m| groups.contains(&m.group)) else {
            return Err(Refusal {
                code: "no_group",
                detail: format!(
                    "subject={} user={user:?} groups={} match no sso.groups entry",
                    clip(&subject, 64),
                    clip(&serde_json::to_string(&groups).unwrap_or_default(), 300)
                ),
            });
        };
        let sid = random_id();
        let now = now_ms();
        let expires_ms = now + i64::try_from(s.session_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let collections = m.collections.as_ref().map(|c| serde_json::to_string(c).unwrap_or_default());
        sqlx::query(
            "INSERT INTO sso_sessions (id, subject, name, role, collections, created_ms, expires_ms, revoked_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
        )
        .bind(&sid)
        .bind(clip(&subject, 255).into_owned())
        .bind(&user)
        .bind(m.role.as_str())
        .bind(collections)
        .bind(now)
        .bind(expires_ms)
        .execute(st.meta.pool())
        .await
        .map_err(|e| refuse("internal", format!("storing the session: {e}")))?;
        // Sessions a day past their expiry are of no use to anyone.
        let _ = sqlx::query("DELETE FROM sso_sessions WHERE expires_ms < $1")
            .bind(now - 86_400_000)
            .execute(st.meta.pool())
            .await;
        let exp = u64::try_from(expires_ms / 1000).unwrap_or(0);
        let claims = TokenClaims {
            sub: format!("sso:{}", clip(&subject, 64)),
            iss: TOKEN_ISSUER.into(),
            iat: u64::try_from(now / 1000).unwrap_or(0),
            exp,
            jti: random_id(),
            role: m.role,
            collections: m.collections.clone(),
            sid: Some(sid.clone()),
        };
        let token = st.secrets.sign_token(&claims).map_err(|_| refuse("internal", "signing the token"))?;
        let out = SessionOut {
            token,
            expires_at: rfc3339(expires_ms),
            role: m.role,
            collections: m.collections.clone(),
            user: user.clone(),
            via: "sso",
        };
        Ok(Signed { sid, subject, user, groups, mapping: m.clone(), out })
    }

    /// Keeps `out` for the console and returns the handoff cookie's value.
    fn hand_off(&self, out: SessionOut) -> Result<String, Refusal> {
        let secret = random_b64(32);
        let mut h = self.handoffs.lock();
        h.retain(|_, x| x.made.elapsed() < Duration::from_secs(HANDOFF_SECS));
        if h.len() >= MAX_PENDING {
            return Err(refuse("busy", "too many sign-ins in progress"));
        }
        h.insert(sha256(secret.as_bytes()), Handoff { session: out, made: Instant::now() });
        Ok(secret)
    }

    /// The session row `sid` (cached for at most [`crate::state::KEY_CACHE_TTL`]).
    async fn session(&self, st: &AppState, sid: &str) -> Result<Option<SessionRow>, ApiError> {
        if let Some(row) = self.sessions.get(sid) {
            return Ok(Some(row));
        }
        let row =
            sqlx::query("SELECT subject, role, collections, expires_ms, revoked_ms FROM sso_sessions WHERE id = $1")
                .bind(sid)
                .fetch_optional(st.meta.pool())
                .await?;
        let row = match row {
            None => None,
            Some(r) => {
                let role: String = r.try_get("role")?;
                let collections: Option<String> = r.try_get("collections")?;
                let list = collections
                    .map(|c| serde_json::from_str::<Vec<String>>(&c))
                    .transpose()
                    .map_err(ApiError::internal)?;
                let revoked: Option<i64> = r.try_get("revoked_ms")?;
                Some(SessionRow {
                    subject: r.try_get("subject")?,
                    role: role.parse().map_err(ApiError::internal)?,
                    scope: Scope::from_list(list),
                    expires_ms: r.try_get("expires_ms")?,
                    revoked: revoked.is_some(),
                })
            }
        };
        self.sessions.put(sid, row.as_ref());
        Ok(row)
    }
}

/// A finished sign-in.
struct Signed {
    sid: String,
    subject: String,
    user: String,
    groups: Vec<String>,
    mapping: GroupMapping,
    out: SessionOut,
}

/// `application/x-www-form-urlencoded` of a client id or secret, as RFC 6749 §2.3.1
/// asks before HTTP Basic.
fn form_encode(s: &str) -> String {
    s.bytes().fold(String::with_capacity(s.len()), |mut out, b| {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
        out
    })
}

fn redirect(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The keys of a JWKS usable for ID-token signatures: asymmetric, for signing, parsable.
/// Keys of other kinds (encryption keys, symmetric keys, unknown curves) are skipped.
fn parse_jwks(v: &Value) -> Result<Vec<Jwk>, String> {
    let keys = v.get("keys").and_then(Value::as_array).ok_or("no \"keys\" array")?;
    let usable: Vec<Jwk> = keys
        .iter()
        .take(100)
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .filter(|k| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_)))
        .filter(|k| k.common.public_key_use.as_ref().is_none_or(|u| *u == PublicKeyUse::Signature))
        .collect();
    if usable.is_empty() {
        return Err("no usable signing key".into());
    }
    Ok(usable)
}

/// What an ID token must say.
pub(crate) struct Expect<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    pub leeway_secs: u64,
    pub now_s: u64,
}

/// Why an ID token was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdTokenError {
    /// No key of the JWKS has the token's `kid`.
    #[error("ID token signed with a key the provider does not publish (kid {0:?})")]
    UnknownKey(Option<String>),
    /// Anything else.
    #[error("ID token: {0}")]
    Invalid(String),
}

fn invalid(s: impl Into<String>) -> IdTokenError {
    IdTokenError::Invalid(s.into())
}

/// Verifies an ID token against the provider's keys: its claims, as JSON.
pub(crate) fn verify_id_token(token: &str, keys: &[Jwk], e: &Expect<'_>) -> Result<Value, IdTokenError> {
    if token.len() > 64 * 1024 {
        return Err(invalid("longer than 64 KiB"));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|x| invalid(format!("header: {x}")))?;
    if !ALGORITHMS.contains(&header.alg) {
        return Err(invalid(format!("algorithm {:?} is not accepted", header.alg)));
    }
    let key = match &header.kid {
        Some(kid) => keys.iter().find(|k| k.common.key_id.as_deref() == Some(kid.as_str())),
        None if keys.len() == 1 => keys.first(),
        None => None,
    }
    .ok_or_else(|| IdTokenError::UnknownKey(header.kid.clone()))?;
    if let Some(a) = &key.common.key_algorithm
        && format!("{a:?}") != format!("{:?}", header.alg)
    {
        return Err(invalid(format!("the key is for {a:?}, the token says {:?}", header.alg)));
    }
    let dk = jsonwebtoken::DecodingKey::from_jwk(key).map_err(|x| invalid(format!("key: {x}")))?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.set_issuer(&[e.issuer]);
    v.set_audience(&[e.client_id]);
    v.leeway = e.leeway_secs;
    v.validate_nbf = true;
    let claims = jsonwebtoken::decode::<Value>(token, &dk, &v).map_err(|x| invalid(x.to_string()))?.claims;
    let iat = claims.get("iat").and_then(Value::as_u64).ok_or_else(|| invalid("no iat"))?;
    if iat > e.now_s + e.leeway_secs {
        return Err(invalid("issued in the future"));
    }
    let nonce = claims.get("nonce").and_then(Value::as_str).ok_or_else(|| invalid("no nonce"))?;
    // The nonce is no secret once the browser went to the provider with it.
    if nonce != e.nonce {
        return Err(invalid("nonce does not match the sign-in's"));
    }
    let several = claims.get("aud").and_then(Value::as_array).is_some_and(|a| a.len() > 1);
    match claims.get("azp").and_then(Value::as_str) {
        Some(azp) if azp != e.client_id => return Err(invalid("azp names another client")),
        None if several => return Err(invalid("several audiences and no azp")),
        _ => {}
    }
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
    if sub.is_empty() || sub.len() > 255 {
        return Err(invalid("sub must be 1 to 255 bytes"));
    }
    Ok(claims)
}

/// The groups listed in `claim` (an array of strings, or one string); `None` when absent.
fn groups_of(claims: &Value, claim: &str) -> Result<Option<Vec<String>>, String> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![clip(s, MAX_GROUP_BYTES).into_owned()])),
        Some(Value::Array(a)) => {
            if a.len() > MAX_GROUPS {
                return Err(format!("the {claim} claim lists more than {MAX_GROUPS} groups"));
            }
            Ok(Some(
                a.iter().filter_map(Value::as_str).filter(|g| g.len() <= MAX_GROUP_BYTES).map(str::to_owned).collect(),
            ))
        }
        Some(_) => Err(format!("the {claim} claim is neither a string nor a list")),
    }
}

impl AppState {
    /// The principal of a token minted for SSO session `sid` (the token's signature and
    /// lifetime already checked): the session must be live and cover the claims.
    pub(crate) async fn sso_principal(&self, sid: &str, claims: &TokenClaims) -> Result<Principal, String> {
        let sso = self.sso.as_ref().ok_or("single sign-on is not configured")?;
        let row = sso.session(self, sid).await.map_err(|_| "metadata store error".to_owned())?;
        let row = row.ok_or("unknown session")?;
        if row.revoked {
            return Err("the session was signed out".into());
        }
        if row.expires_ms <= now_ms() {
            return Err("the session expired".into());
        }
        let scope = Scope::from_list(claims.collections.clone());
        if claims.role > row.role || !row.scope.covers(&scope) {
            return Err("token claims more than its session holds".into());
        }
        Ok(Principal {
            key_id: format!("sso:{}", clip(&row.subject, 64)),
            role: claims.role,
            scope,
            via_token: true,
            sso_session: Some(sid.to_owned()),
        })
    }

    /// Revokes SSO session `sid`; whether it was live.
    async fn sso_revoke(&self, sid: &str) -> Result<bool, ApiError> {
        let r = sqlx::query("UPDATE sso_sessions SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
            .bind(now_ms())
            .bind(sid)
            .execute(self.meta.pool())
            .await?;
        if let Some(s) = &self.sso {
            s.sessions.forget(sid);
        }
        Ok(r.rows_affected() == 1)
    }

    async fn audit_sso(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) -> Result<(), ApiError> {
        self.audit(&current_request_id(), actor, action, target, outcome, detail).await
    }
}

fn sso_of(st: &AppState) -> Result<&Sso, ApiError> {
    st.sso.as_ref().ok_or_else(|| ApiError::not_found("single sign-on is not configured on this server ([sso])"))
}

/// Where the console picks up the outcome of a sign-in.
const CONSOLE_DONE: &str = "/console/#/sso";

/// The console's page for a refused sign-in, with the refusal's code.
fn console_refused(code: &str) -> Response {
    redirect(&format!("{CONSOLE_DONE}?error={code}"))
}

type St = State<Arc<AppState>>;

/// Whether single sign-on is offered (for the console's sign-in page).
#[utoipa::path(get, path = "/v1/sso/config", tag = "sso",
    responses((status = 200, description = "Whether SSO is configured", body = SsoInfo)))]
async fn config(State(st): St) -> axum::Json<SsoInfo> {
    axum::Json(match &st.sso {
        Some(s) => SsoInfo { enabled: true, label: Some(s.settings.label.clone()) },
        None => SsoInfo { enabled: false, label: None },
    })
}

/// Start a sign-in: redirects to the OpenID provider (authorization code with PKCE),
/// setting a short-lived HttpOnly cookie that binds the sign-in to this browser.
#[utoipa::path(get, path = "/v1/sso/login", tag = "sso",
    responses((status = 303, description = "To the provider's authorization endpoint"),
        (status = 404, description = "SSO is not configured", body = crate::error::ErrorBody),
        (status = 503, description = "The provider is unreachable or too many sign-ins are pending", body = crate::error::ErrorBody)))]
async fn login(State(st): St) -> Result<Response, ApiError> {
    let sso = sso_of(&st)?;
    match sso.login().await {
        Ok(r) => Ok(r),
        Err(r) => {
            tracing::warn!(code = r.code, detail = r.detail, "single sign-on could not start");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sso_unavailable",
                format!("single sign-on: {}", r.detail),
            )
            .retry_after(5))
        }
    }
}

/// The provider's redirect back.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    /// The authorization code.
    code: Option<String>,
    /// The state of the sign-in.
    state: Option<String>,
    /// An error the provider reports instead.
    error: Option<String>,
    /// The issuer that answers (RFC 9207); when present it must be the configured one.
    iss: Option<String>,
    /// Its description.
    error_description: Option<String>,
}

/// The provider's redirect back (the configured `redirect_uri`): verifies the sign-in and
/// redirects to the console, which collects the session with POST /v1/sso/session. Every
/// outcome is audited (`sso.signin`).
#[utoipa::path(get, path = "/v1/sso/callback", tag = "sso", params(CallbackQuery),
    responses((status = 303, description = "To the console: `/console/#/sso`, or `/console/#/sso?error=<code>` (state, provider, id_token, no_group, busy, internal)")))]
async fn callback(State(st): St, QueryParams(q): QueryParams<CallbackQuery>, headers: HeaderMap) -> Response {
    let Some(sso) = st.sso.as_ref() else {
        return console_refused("disabled");
    };
    let result = match sso.callback(&st, &q, &headers).await {
        Ok(s) => sso.hand_off(s.out.clone()).map(|h| (s, h)),
        Err(r) => Err(r),
    };
    // The login cookie has done its work, whatever the outcome.
    let clear_login = sso.cookie_header(LOGIN_COOKIE, "", 0, "Lax");
    let mut resp = match result {
        Ok((s, handoff)) => {
            let detail = format!(
                "user={:?} groups={} group={} role={} collections={}",
                s.user,
                clip(&serde_json::to_string(&s.groups).unwrap_or_default(), 300),
                s.mapping.group,
                s.mapping.role.as_str(),
                s.mapping.collections.as_ref().map_or_else(|| "all".to_owned(), |c| c.join(","))
            );
            let actor = format!("sso:{}", clip(&s.subject, 64));
            if let Err(e) = st.audit_sso(&actor, "sso.signin", &s.sid, "ok", &detail).await {
                // No audit entry, no session.
                let _ = st.sso_revoke(&s.sid).await;
                sso.handoffs.lock().remove(&sha256(handoff.as_bytes()));
                tracing::error!(error = %e, "the audit entry of a sign-in could not be written");
                return console_refused("internal");
            }
            let mut r = redirect(CONSOLE_DONE);
            r.headers_mut()
                .append(header::SET_COOKIE, sso.cookie_header(HANDOFF_COOKIE, &handoff, HANDOFF_SECS, "Strict"));
            r
        }
        Err(r) => {
            tracing::warn!(code = r.code, detail = r.detail, "single sign-on refused");
            if let Err(e) =
                st.audit_sso("anonymous", "sso.signin", "-", "denied", &format!("{}: {}", r.code, r.detail)).await
            {
                tracing::error!(error = %e, "the audit entry of a refused sign-in could not be written");
            }
            console_refused(r.code)
        }
    };
    resp.headers_mut().append(header::SET_COOKIE, clear_login);
    resp
}

/// Collect the session of a finished sign-in (once, within 60 s, from the browser that
/// signed in: the handoff cookie the callback set).
#[utoipa::path(post, path = "/v1/sso/session", tag = "sso",
    responses((status = 200, description = "The session's token", body = SessionOut),
        (status = 401, description = "No sign-in to collect (missing, used or expired handoff)", body = crate::error::ErrorBody),
        (status = 404, description = "SSO is not configured", body = crate::error::ErrorBody)))]
async fn session(State(st): St, headers: HeaderMap) -> Result<Response, ApiError> {
    let sso = sso_of(&st)?;
    let taken = cookie(&headers, HANDOFF_COOKIE).and_then(|c| sso.handoffs.lock().remove(&sha256(c.as_bytes())));
    let out = taken
        .filter(|h| h.made.elapsed() < Duration::from_secs(HANDOFF_SECS))
        .ok_or_else(|| ApiError::unauthenticated("no finished sign-in to collect; sign in again"))?;
    let mut r = axum::Json(out.session).into_response();
    r.headers_mut().append(header::SET_COOKIE, sso.cookie_header(HANDOFF_COOKIE, "", 0, "Strict"));
    Ok(r)
}

/// Sign out: revokes this SSO session server-side (its token is refused from now on).
#[utoipa::path(post, path = "/v1/sso/logout", tag = "sso", security(("bearer" = [])),
    responses((status = 204, description = "Revoked"), crate::api::Errors))]
async fn logout(State(st): St, Auth(p): Auth) -> Result<Response, ApiError> {
    let sid = p.sso_session.as_deref().ok_or_else(|| {
        ApiError::invalid("this credential is not a single sign-on session (API keys are revoked under /v1/keys)")
    })?;
    st.sso_revoke(sid).await?;
    Ok(audited(format!("session={sid}"), StatusCode::NO_CONTENT, ()))
}

/// The audit action of an SSO route behind the guard.
pub fn audit_action(method: &str, route: &str) -> Option<&'static str> {
    (method == "POST" && route == "/v1/sso/logout").then_some("sso.signout")
}

/// Routes anyone may call (the sign-in itself).
pub fn public_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sso/config", get(config))
        .route("/v1/sso/login", get(login))
        .route("/v1/sso/callback", get(callback))
        .route("/v1/sso/session", post(session))
}

/// Routes behind the guard.
pub fn protected_routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/sso/logout", post(logout))
}

/// The SSO part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(config, login, callback, session, logout),
    components(schemas(SessionOut, SsoInfo)),
    tags((name = "sso", description = "Single sign-on with an OpenID provider"))
)]
pub struct SsoApiDoc;

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};

    struct Provider {
        pk8: Vec<u8>,
        jwk: Jwk,
    }

    fn provider(kid: &str) -> Provider {
        let pk8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap().as_ref().to_vec();
        let public = Ed25519KeyPair::from_pkcs8(&pk8).unwrap().public_key().as_ref().to_vec();
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(public)});
        Provider { pk8, jwk: serde_json::from_value(jwk).unwrap() }
    }

    impl Provider {
        fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
            h.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_ed_der(&self.pk8)).unwrap()
        }
    }

    /// jsonwebtoken checks `exp` and `nbf` against the system clock: so do the tests.
    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn good() -> Value {
        serde_json::json!({"iss": "https://idp.example", "aud": "kz", "sub": "alice", "iat": now() - 5,
            "exp": now() + 300, "nonce": "n-1", "groups": ["readers"]})
    }

    fn expect() -> Expect<'static> {
        Expect { issuer: "https://idp.example", client_id: "kz", nonce: "n-1", leeway_secs: 60, now_s: now() }
    }

    fn with(mut v: Value, k: &str, x: Value) -> Value {
        v[k] = x;
        v
    }

    #[test]
    fn id_tokens_are_checked_claim_by_claim() {
        let p = provider("k1");
        let keys = vec![p.jwk.clone()];
        let ok = verify_id_token(&p.sign(Some("k1"), &good()), &keys, &expect()).unwrap();
        assert_eq!(groups_of(&ok, "groups").unwrap().unwrap(), ["readers"]);
        let refused = |claims: Value| verify_id_token(&p.sign(Some("k1"), &claims), &keys, &expect()).unwrap_err();
        // Bad nonce, wrong audience, expired, another issuer, issued in the future, no nonce.
        assert!(refused(with(good(), "nonce", "n-2".into())).to_string().contains("nonce"));
        assert!(refused(with(good(), "aud", "other".into())).to_string().contains("Audience"));
        let e = refused(with(good(), "exp", (now() - 3600).into())).to_string();
        assert!(e.contains("Expired"), "{e}");
        assert!(refused(with(good(), "iss", "https://evil.example".into())).to_string().contains("Issuer"));
        assert!(refused(with(good(), "iat", (now() + 3600).into())).to_string().contains("future"));
        let mut no_nonce = good();
        no_nonce.as_object_mut().unwrap().remove("nonce");
        assert!(refused(no_nonce).to_string().contains("nonce"));
        // Several audiences need azp naming us.
        let several = with(good(), "aud", serde_json::json!(["kz", "other"]));
        assert!(refused(several.clone()).to_string().contains("azp"));
        verify_id_token(&p.sign(Some("k1"), &with(several, "azp", "kz".into())), &keys, &expect()).unwrap();
        // An unknown kid is its own error (the JWKS is then fetched again).
        let e = verify_id_token(&p.sign(Some("k9"), &good()), &keys, &expect()).unwrap_err();
        assert!(matches!(e, IdTokenError::UnknownKey(Some(ref k)) if k == "k9"), "{e}");
        // Signed by another key that claims our kid.
        let mallory = provider("k1");
        assert!(verify_id_token(&mallory.sign(Some("k1"), &good()), &keys, &expect()).is_err());
        // HS256 keyed with something public, and alg none.
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header {
                kid: Some("k1".into()),
                ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
            },
            &good(),
            &jsonwebtoken::EncodingKey::from_secret(b"kz"),
        )
        .unwrap();
        assert!(verify_id_token(&hs, &keys, &expect()).unwrap_err().to_string().contains("not accepted"));
        let body = URL_SAFE_NO_PAD.encode(good().to_string());
        let none = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#));
        assert!(verify_id_token(&none, &keys, &expect()).is_err());
        // Garbage never panics.
        for t in ["", "a.b.c", "....", &"x".repeat(70_000)] {
            assert!(verify_id_token(t, &keys, &expect()).is_err());
        }
    }

    #[test]
    fn jwks_keep_only_asymmetric_signing_keys_and_groups_are_bounded() {
        let p = provider("k1");
        let mut enc = serde_json::to_value(&p.jwk).unwrap();
        enc["use"] = "enc".into();
        enc["kid"] = "k2".into();
        let v = serde_json::json!({"keys": [
            serde_json::to_value(&p.jwk).unwrap(), enc,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "k3"},
            {"kty": "weird", "kid": "k4"},
        ]});
        let keys = parse_jwks(&v).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(parse_jwks(&serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})).is_err());
        assert!(parse_jwks(&serde_json::json!({})).is_err());
        let many: Vec<String> = (0..1001).map(|i| format!("g{i}")).collect();
        assert!(groups_of(&serde_json::json!({"groups": many}), "groups").is_err());
        assert_eq!(groups_of(&serde_json::json!({"groups": "admins"}), "groups").unwrap().unwrap(), ["admins"]);
        assert!(groups_of(&serde_json::json!({"groups": 3}), "groups").is_err());
        assert!(groups_of(&serde_json::json!({}), "groups").unwrap().is_none());
    }

    #[test]
    fn settings_are_validated() {
        let good = SsoSettings {
            issuer: "https://idp.example".into(),
            client_id: "kz".into(),
            redirect_uri: "https://kz.example/v1/sso/callback".into(),
            groups: vec![GroupMapping { group: "admins".into(), role: Role::Admin, collections: None }],
            ..SsoSettings::default()
        };
        good.validate(86_400).unwrap();
        let bad = |s: SsoSettings| s.validate(86_400).unwrap_err().to_string();
        assert!(bad(SsoSettings { issuer: "http://idp.example".into(), ..good.clone() }).contains("https"));
        SsoSettings { issuer: "http://127.0.0.1:8080".into(), ..good.clone() }.validate(86_400).unwrap();
        assert!(
            bad(SsoSettings { redirect_uri: "https://kz.example/elsewhere".into(), ..good.clone() })
                .contains("callback")
        );
        assert!(bad(SsoSettings { groups: vec![], ..good.clone() }).contains("groups"));
        assert!(bad(SsoSettings { scopes: vec!["email".into()], ..good.clone() }).contains("openid"));
        assert!(bad(SsoSettings { session_ttl_secs: 10, ..good.clone() }).contains("session_ttl_secs"));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; kz_sso_login_x=2; kz_sso_login=3"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("3"));
        assert_eq!(cookie(&h, HANDOFF_COOKIE), None);
    }
}
