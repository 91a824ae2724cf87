//! Root documents: the only way a device learns a new release key.
//!
//! A device pins a release public key (the [`TrustRoot`] at version 0, or a later one it
//! stored). Rotation to a new key is a root document `{version, release_key, created_ms}`
//! signed by the key it replaces. [`verify_root_chain`] walks a list of them from the
//! device's current root: each next version must be exactly one more and signed by the
//! current key. A gap, a second document for a version (a fork), or a document signed by
//! anyone else is refused, and the whole chain with it.

use crate::envelope::{DocKind, Envelope, parse_json};
use crate::error::{BundleError, Result};
use crate::keys::{PublicKey, SigningKey};
use serde::{Deserialize, Serialize};

/// Most root documents one chain may hold.
pub const MAX_ROOT_CHAIN: usize = 1024;

/// A rotation of the release key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootDocument {
    /// 1 for the first rotation, then one more each time.
    pub version: u64,
    /// The release key from this version on.
    pub release_key: PublicKey,
    /// When it was signed, Unix ms.
    pub created_ms: u64,
}

/// The release key a device trusts now, and the root version that made it so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRoot {
    /// 0 for the key pinned at provisioning.
    pub version: u64,
    /// The current release key.
    pub key: PublicKey,
}

impl TrustRoot {
    /// The key pinned at provisioning (version 0).
    pub fn pinned(key: PublicKey) -> TrustRoot {
        TrustRoot { version: 0, key }
    }
}

impl RootDocument {
    /// Signs the rotation with the key it replaces (`previous`).
    pub fn sign(&self, previous: &SigningKey) -> Result<Envelope> {
        if self.version == 0 {
            return Err(BundleError::Invalid("root document version 0 is the pinned key; rotations start at 1".into()));
        }
        if self.release_key == previous.public() {
            return Err(BundleError::Invalid(format!(
                "root document version {}: the new release key is the key signing it",
                self.version
            )));
        }
        let payload = serde_json::to_vec(self).map_err(|e| BundleError::Invalid(format!("root document: {e}")))?;
        Ok(Envelope::sign(DocKind::Root, payload, previous))
    }
}

fn chain_err(version: u64, reason: impl Into<String>) -> BundleError {
    BundleError::RootChain { version, reason: reason.into() }
}

/// Walks root documents (envelope bytes, in increasing version order) from `current` and
/// returns the trust root they lead to (`current` itself when none is newer).
///
/// The documents must have consecutive versions. Those at or below `current.version` are
/// history the device already went through: they are checked to agree with it (the one at
/// `current.version` must name `current.key`; each is signed by the key of the document
/// before it in the list) but prove nothing new. Each newer document must be signed by the
/// key current before it and name a different key.
pub fn verify_root_chain<B: AsRef<[u8]>>(current: &TrustRoot, docs: &[B]) -> Result<TrustRoot> {
    if docs.len() > MAX_ROOT_CHAIN {
        return Err(chain_err(0, format!("{} documents, at most {MAX_ROOT_CHAIN}", docs.len())));
    }
    let mut state = current.clone();
    let mut previous: Option<RootDocument> = None;
    for bytes in docs {
        let env = Envelope::decode(bytes.as_ref())?;
        if env.kind != DocKind::Root {
            return Err(BundleError::malformed("root document", "kind", format!("a {} envelope", env.kind.as_str())));
        }
        // The version decides which key must have signed it; nothing else is used before
        // the signature is checked.
        let claimed: RootDocument = env.peek()?;
        let v = claimed.version;
        if let Some(p) = &previous {
            if v <= p.version {
                return Err(chain_err(v, format!("follows version {}: a fork or a replay", p.version)));
            }
            if v != p.version + 1 {
                return Err(chain_err(
                    v,
                    format!("follows version {}: version {} is missing", p.version, p.version + 1),
                ));
            }
        }
        if v == 0 {
            return Err(chain_err(0, "version 0 is the pinned key, never a document"));
        }
        if v <= state.version {
            // History: consistent with the previous document and with the current root.
            if let Some(p) = &previous {
                env.open(DocKind::Root, &p.release_key).map_err(|e| chain_err(v, e.to_string()))?;
            }
            if v == state.version && claimed.release_key != state.key {
                return Err(chain_err(
                    v,
                    format!(
                        "names key {}, but this device's version {v} key is {}: a fork",
                        claimed.release_key.key_id(),
                        state.key.key_id()
                    ),
                ));
            }
        } else if v == state.version + 1 {
            let payload = env.open(DocKind::Root, &state.key).map_err(|e| {
                chain_err(v, format!("not signed by the current release key {}: {e}", state.key.key_id()))
            })?;
            let doc: RootDocument = parse_json("root document", payload)?;
            if doc.release_key == state.key {
                return Err(chain_err(v, "does not change the release key"));
            }
            state = TrustRoot { version: v, key: doc.release_key };
        } else {
            return Err(chain_err(
                v,
                format!("this device is at root version {}: version {} is missing", state.version, state.version + 1),
            ));
        }
        previous = Some(claimed);
    }
    Ok(state)
}
