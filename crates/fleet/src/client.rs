//! A device's side of the device API over HTTP (feature `client`): key pair, signed
//! enrollment, challenge-signed tokens, heartbeats, offers and status reports. The
//! integration tests and `kernelize bench fleet` drive simulated devices with it; the
//! device agent builds on it.

use crate::deploy::{Offer, StatusOutcome};
use crate::devices::{
    DeviceToken, EnrollOutcome, EnrollPayload, EnrollRequest, HeartbeatReply, device_id_of, token_message,
};
use crate::model::{Inventory, StatusReport};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use std::collections::BTreeMap;

/// An error answer of the server, or a transport failure (`status` 0).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ClientError {
    /// HTTP status (0: no answer).
    pub status: u16,
    /// The error code of the answer (`conflict`, `unauthenticated`, …) or `transport`.
    pub code: String,
    /// Its message.
    pub message: String,
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> ClientError {
        ClientError { status: e.status().map_or(0, |s| s.as_u16()), code: "transport".into(), message: e.to_string() }
    }
}

/// One device talking to a server.
#[derive(Debug)]
pub struct DeviceClient {
    http: reqwest::Client,
    base: String,
    key: Ed25519KeyPair,
    /// The device id (derived from the public key).
    pub device_id: String,
    token: Option<String>,
}

/// Largest answer read from a server (an offer carries a signed manifest of at most
/// 4 MiB); a bigger one is refused without being read.
pub const MAX_ANSWER_BYTES: usize = 8 << 20;

async fn answer<T: serde::de::DeserializeOwned>(mut r: reqwest::Response) -> Result<T, ClientError> {
    let status = r.status();
    let too_big = |n: usize| ClientError {
        status: status.as_u16(),
        code: "answer_too_large".into(),
        message: format!("the server's answer has more than {n} bytes (at most {MAX_ANSWER_BYTES} are read)"),
    };
    if r.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
        return Err(too_big(r.content_length().unwrap_or(0) as usize));
    }
    let mut bytes = Vec::new();
    while let Some(c) = r.chunk().await? {
        if bytes.len() + c.len() > MAX_ANSWER_BYTES {
            return Err(too_big(bytes.len() + c.len()));
        }
        bytes.extend_from_slice(&c);
    }
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| ClientError {
            status: status.as_u16(),
            code: "bad_answer".into(),
            message: e.to_string(),
        });
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Err(ClientError {
        status: status.as_u16(),
        code: v["code"].as_str().unwrap_or("unknown").to_owned(),
        message: v["message"].as_str().unwrap_or_default().to_owned(),
    })
}

impl DeviceClient {
    /// A device with a fresh key pair.
    pub fn generate(http: reqwest::Client, base: &str) -> DeviceClient {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system RNG works");
        Self::from_pkcs8(http, base, pkcs8.as_ref()).expect("a key just generated parses")
    }

    /// A device with a stored key (PKCS#8).
    pub fn from_pkcs8(http: reqwest::Client, base: &str, pkcs8: &[u8]) -> Result<DeviceClient, ClientError> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|e| ClientError {
            status: 0,
            code: "bad_key".into(),
            message: format!("device key: {e}"),
        })?;
        let device_id = device_id_of(&B64.encode(key.public_key().as_ref()));
        Ok(DeviceClient { http, base: base.trim_end_matches('/').to_owned(), key, device_id, token: None })
    }

    /// The public key, base64.
    pub fn public_key(&self) -> String {
        B64.encode(self.key.public_key().as_ref())
    }

    /// Signs `msg` with the device key; base64.
    pub fn sign(&self, msg: &[u8]) -> String {
        B64.encode(self.key.sign(msg).as_ref())
    }

    /// The current token, if one was fetched.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Signs and sends an enrollment request.
    pub async fn enroll(
        &self,
        identity: &str,
        inventory: &Inventory,
        labels: &BTreeMap<String, String>,
        enrollment_token: Option<&str>,
    ) -> Result<EnrollOutcome, ClientError> {
        let payload = EnrollPayload {
            identity: identity.to_owned(),
            public_key: self.public_key(),
            inventory: inventory.clone(),
            labels: labels.clone(),
            enrollment_token: enrollment_token.map(str::to_owned),
            timestamp_ms: crate::now_ms(),
        };
        let text = serde_json::to_string(&payload).unwrap_or_default();
        let req = EnrollRequest { signature: B64.encode(self.key.sign(text.as_bytes()).as_ref()), payload: text };
        answer(self.http.post(format!("{}/v1/fleet/enroll", self.base)).json(&req).send().await?).await
    }

    /// Gets a token: asks for a challenge and signs it.
    pub async fn refresh_token(&mut self) -> Result<DeviceToken, ClientError> {
        let c: serde_json::Value = answer(
            self.http
                .post(format!("{}/v1/fleet/device/challenge", self.base))
                .json(&serde_json::json!({"device_id": self.device_id}))
                .send()
                .await?,
        )
        .await?;
        let challenge = c["challenge"].as_str().unwrap_or_default().to_owned();
        let sig = B64.encode(self.key.sign(&token_message(&self.device_id, &challenge)).as_ref());
        let t: DeviceToken = answer(
            self.http
                .post(format!("{}/v1/fleet/device/token", self.base))
                .json(&serde_json::json!({"device_id": self.device_id, "challenge": challenge, "signature": sig}))
                .send()
                .await?,
        )
        .await?;
        self.token = Some(t.token.clone());
        Ok(t)
    }

    fn authed(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// The server's base URL (no trailing slash).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The trust material the server publishes to devices: `{version, public_key, key_id,
    /// roots: [root document envelopes, oldest first], kernel_key}` (the current release
    /// key and its root version; the kernel signing key).
    pub async fn root(&self) -> Result<serde_json::Value, ClientError> {
        answer(self.authed(self.http.get(format!("{}/v1/fleet/device/root", self.base))).send().await?).await
    }

    /// A heartbeat, with the inventory and a log excerpt when given.
    pub async fn heartbeat(
        &self,
        inventory: Option<&Inventory>,
        log: Option<&str>,
    ) -> Result<HeartbeatReply, ClientError> {
        let r = self.authed(self.http.post(format!("{}/v1/fleet/device/heartbeat", self.base)));
        answer(r.json(&serde_json::json!({"inventory": inventory, "log": log})).send().await?).await
    }

    /// The next offer, or `None` (204).
    pub async fn offer(&self) -> Result<Option<Offer>, ClientError> {
        let r = self.authed(self.http.get(format!("{}/v1/fleet/device/offer", self.base))).send().await?;
        if r.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        answer(r).await.map(Some)
    }

    /// A status report on an execution.
    pub async fn report(&self, deployment: &str, report: &StatusReport) -> Result<StatusOutcome, ClientError> {
        let url = format!("{}/v1/fleet/device/executions/{deployment}/status", self.base);
        answer(self.authed(self.http.post(url)).json(report).send().await?).await
    }
}
