//! Authentication and authorization primitives: roles, scopes, API keys (public id +
//! random secret; only an HMAC of the secret is stored) and short-lived EdDSA tokens.

use crate::error::ApiError;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;
use utoipa::ToSchema;

/// What a key may do. Ordered: each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read records, search, embed.
    Reader,
    /// Also write records and create or drop collections in its scope.
    Writer,
    /// Everything, including keys, usage, audit, backups and metrics.
    Admin,
}

impl Role {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?}: expected reader, writer or admin")),
        }
    }
}

/// Which collections a key reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every collection, present and future.
    All,
    /// Only these.
    Only(BTreeSet<String>),
}

impl Scope {
    /// From the API/storage form: `None` is all collections.
    pub fn from_list(list: Option<Vec<String>>) -> Scope {
        match list {
            None => Scope::All,
            Some(v) => Scope::Only(v.into_iter().collect()),
        }
    }
    /// The API/storage form.
    pub fn to_list(&self) -> Option<Vec<String>> {
        match self {
            Scope::All => None,
            Scope::Only(s) => Some(s.iter().cloned().collect()),
        }
    }
    /// Whether `collection` is in scope.
    pub fn contains(&self, collection: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(s) => s.contains(collection),
        }
    }
    /// Whether every collection of `other` is in this scope.
    pub fn covers(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::All, _) => true,
            (Scope::Only(_), Scope::All) => false,
            (Scope::Only(a), Scope::Only(b)) => b.is_subset(a),
        }
    }
}

/// Who is making a request, established by the auth middleware from a key or token.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key (for a token: the key that minted it).
    pub key_id: String,
    /// Role.
    pub role: Role,
    /// Collections.
    pub scope: Scope,
    /// Authenticated with a minted token rather than the key itself.
    pub via_token: bool,
    /// The single sign-on session the token belongs to (then `key_id` is `sso:<subject>`).
    pub sso_session: Option<String>,
}

impl Principal {
    /// Requires `role` and, for a collection, that it is in scope. Called by the engine
    /// for every operation, not only by routing.
    pub fn require(&self, role: Role, collection: Option<&str>) -> Result<(), ApiError> {
        if self.role < role {
            return Err(ApiError::forbidden(format!(
                "this key has role {}; the operation needs {}",
                self.role.as_str(),
                role.as_str()
            )));
        }
        match collection {
            Some(c) if !self.scope.contains(c) => {
                Err(ApiError::forbidden(format!("collection {c:?} is outside this key's scope")))
            }
            // Server-wide operations need a key for every collection.
            None if self.scope != Scope::All => {
                Err(ApiError::forbidden("this operation needs a key scoped to all collections"))
            }
            _ => Ok(()),
        }
    }
    /// Who, for the audit log.
    pub fn actor(&self) -> String {
        if self.sso_session.is_some() {
            return self.key_id.clone();
        }
        if self.via_token { format!("token:{}", self.key_id) } else { format!("key:{}", self.key_id) }
    }
}

/// Prefix of every API key.
pub const KEY_PREFIX: &str = "kz_";

/// A key split into its public id and its secret.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// Public id (stored in clear, shown in lists and logs).
    pub id: &'a str,
    /// Secret (never stored).
    pub secret: &'a str,
}

/// Splits `kz_<id>_<secret>`; `None` when the text is not shaped like a key.
pub fn parse_key(text: &str) -> Option<ParsedKey<'_>> {
    let rest = text.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok_id = id.len() == 12 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_secret = (32..=128).contains(&secret.len())
        && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (ok_id && ok_secret).then_some(ParsedKey { id, secret })
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SystemRandom fails only when the OS has no randomness, which nothing can survive.
    #[allow(clippy::expect_used)]
    SystemRandom::new().fill(&mut b).expect("the operating system's random number generator failed");
    b
}

/// A new key: `(id, full key text)`.
pub fn generate_key() -> (String, String) {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let id: String = random_bytes::<12>().iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
    let secret = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let full = format!("{KEY_PREFIX}{id}_{secret}");
    (id, full)
}

/// The server's secrets: the HMAC key ("pepper") for API-key hashes and the ed25519
/// key that signs tokens. Kept in the data directory, readable only by the owner.
pub struct Secrets {
    pepper: ring::hmac::Key,
    signing: Ed25519KeyPair,
    encoding: jsonwebtoken::EncodingKey,
    decoding: jsonwebtoken::DecodingKey,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").finish_non_exhaustive()
    }
}

fn read_or_create(path: &Path, make: impl FnOnce() -> anyhow::Result<Vec<u8>>) -> anyhow::Result<Vec<u8>> {
    if path.exists() {
        return Ok(fs_err::read(path)?);
    }
    let bytes = make()?;
    kernelize_kernel::keys::write_private(path, &bytes)?;
    Ok(bytes)
}

impl Secrets {
    /// Loads `<dir>/server-secret` (32 bytes) and `<dir>/token-signing.pk8` (ed25519
    /// PKCS#8), creating them on first start.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Secrets> {
        fs_err::create_dir_all(dir)?;
        let pepper_path = dir.join("server-secret");
        let pepper = read_or_create(&pepper_path, || Ok(random_bytes::<32>().to_vec()))?;
        anyhow::ensure!(pepper.len() == 32, "{}: expected 32 bytes, found {}", pepper_path.display(), pepper.len());
        let pk8_path = dir.join("token-signing.pk8");
        let pk8 = read_or_create(&pk8_path, || {
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("could not generate the token signing key"))?;
            Ok(doc.as_ref().to_vec())
        })?;
        let signing = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pk8)
            .map_err(|e| anyhow::anyhow!("{}: not an ed25519 PKCS#8 key: {e}", pk8_path.display()))?;
        let decoding = jsonwebtoken::DecodingKey::from_ed_der(signing.public_key().as_ref());
        let encoding = jsonwebtoken::EncodingKey::from_ed_der(&pk8);
        Ok(Secrets { pepper: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &pepper), signing, encoding, decoding })
    }

    /// The stored form of a key secret: HMAC-SHA256 under the server pepper, hex.
    pub fn hash_secret(&self, secret: &str) -> String {
        hex(ring::hmac::sign(&self.pepper, secret.as_bytes()).as_ref())
    }

    /// Whether `secret` matches the stored hash; the comparison is constant-time.
    pub fn verify_secret(&self, secret: &str, stored_hex: &str) -> bool {
        match unhex(stored_hex) {
            Some(tag) => ring::hmac::verify(&self.pepper, secret.as_bytes(), &tag).is_ok(),
            None => false,
        }
    }

    /// The token verification key (raw ed25519 public key), hex.
    pub fn token_public_key(&self) -> String {
        hex(self.signing.public_key().as_ref())
    }

    /// Signs token claims (EdDSA).
    pub fn sign_token(&self, claims: &TokenClaims) -> Result<String, ApiError> {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA), claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    /// Verifies a token: EdDSA only, issuer `kernelize`, `exp` required and in the future.
    pub fn verify_token(&self, token: &str) -> Result<TokenClaims, String> {
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        v.set_issuer(&[TOKEN_ISSUER]);
        v.leeway = 0;
        jsonwebtoken::decode::<TokenClaims>(token, &self.decoding, &v).map(|d| d.claims).map_err(|e| e.to_string())
    }
}

/// Issuer of every token.
pub const TOKEN_ISSUER: &str = "kernelize";

/// The claims of a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The minting key's id.
    pub sub: String,
    /// Issuer (`kernelize`).
    pub iss: String,
    /// Issued at (unix seconds).
    pub iat: u64,
    /// Expires (unix seconds).
    pub exp: u64,
    /// Token id.
    pub jti: String,
    /// Role (at most the key's).
    pub role: Role,
    /// Collections (within the key's scope); absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<String>>,
    /// The single sign-on session this token stands for (`sub` is then `sso:<subject>`);
    /// absent: a token minted with an API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A fresh random id for tokens, backups and requests.
pub fn random_id() -> String {
    hex(&random_bytes::<16>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_hash_verify_in_constant_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::load_or_create(dir.path()).unwrap();
        let (id, full) = generate_key();
        let p = parse_key(&full).unwrap();
        assert_eq!(p.id, id);
        let stored = s.hash_secret(p.secret);
        assert!(!stored.contains(p.secret));
        assert!(s.verify_secret(p.secret, &stored));
        assert!(!s.verify_secret(&format!("{}x", p.secret), &stored));
        assert!(!s.verify_secret(p.secret, "zz"));
        // The same secrets come back after a restart.
        let s2 = Secrets::load_or_create(dir.path()).unwrap();
        assert!(s2.verify_secret(p.secret, &stored));
        assert!(parse_key("kz_short_x").is_none());
        assert!(parse_key("Bearer abc").is_none());
    }

    #[test]
    fn tokens_pin_the_algorithm_and_require_exp() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::load_or_create(dir.path()).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let claims = TokenClaims {
            sub: "abc".into(),
            iss: TOKEN_ISSUER.into(),
            iat: now,
            exp: now + 60,
            jti: random_id(),
            role: Role::Reader,
            collections: Some(vec!["docs".into()]),
            sid: None,
        };
        let t = s.sign_token(&claims).unwrap();
        assert_eq!(s.verify_token(&t).unwrap().collections, claims.collections);
        // Expired.
        let old = s.sign_token(&TokenClaims { exp: now - 5, ..claims.clone() }).unwrap();
        assert!(s.verify_token(&old).is_err());
        // HS256 with the public key as the secret (algorithm confusion) is refused.
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(s.token_public_key().as_bytes()),
        )
        .unwrap();
        assert!(s.verify_token(&hs).is_err());
        // No exp.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let body = serde_json::json!({"sub": "abc", "iss": "kernelize", "iat": now, "jti": "x", "role": "admin"});
        parts[1] = URL_SAFE_NO_PAD.encode(body.to_string());
        assert!(s.verify_token(&parts.join(".")).is_err());
        // Another server's key.
        let other = Secrets::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(other.verify_token(&t).is_err());
        // A flipped signature byte.
        let mut bad = t.into_bytes();
        let n = bad.len() - 3;
        bad[n] = if bad[n] == b'A' { b'B' } else { b'A' };
        assert!(s.verify_token(&String::from_utf8(bad).unwrap()).is_err());
    }

    #[test]
    fn roles_and_scopes() {
        let p = Principal {
            key_id: "k".into(),
            role: Role::Writer,
            scope: Scope::from_list(Some(vec!["a".into()])),
            via_token: false,
            sso_session: None,
        };
        assert!(p.require(Role::Reader, Some("a")).is_ok());
        assert!(p.require(Role::Writer, Some("a")).is_ok());
        assert!(p.require(Role::Writer, Some("b")).is_err());
        assert!(p.require(Role::Admin, Some("a")).is_err());
        assert!(p.require(Role::Reader, None).is_err());
        assert!(Scope::All.covers(&p.scope));
        assert!(!p.scope.covers(&Scope::All));
    }
}
