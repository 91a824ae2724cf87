//! Offers: the server telling one device to install (or go back to) one release.

use crate::envelope::{DocKind, Envelope, parse_json, truncate};
use crate::error::{BundleError, Result};
use crate::keys::{PublicKey, Sha256, SigningKey, hex, random};
use crate::manifest::{MAX_LENGTH, ReleaseManifest, is_name};
use serde::{Deserialize, Serialize};

const WHAT: &str = "offer";

/// What the device is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfferKind {
    /// Install a release newer than any this device has seen on the channel.
    Install,
    /// Go back to an earlier release: the signed order, for this device and deployment,
    /// that allows a downgrade.
    Revert,
}

/// A delta the device may download instead of the full file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaOffer {
    /// SHA-256 of the kernel file the delta applies to (the device's current one).
    pub from_sha256: Sha256,
    /// SHA-256 of the delta file itself.
    pub sha256: Sha256,
    /// Length of the delta file, bytes.
    pub length: u64,
}

/// An offer of one release to one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// Id of the offer (1–64 of `A-Z a-z 0-9 . _ -`).
    pub offer_id: String,
    /// The device it is for (same alphabet).
    pub device_id: String,
    /// The deployment it belongs to (same alphabet).
    pub deployment_id: String,
    /// Install or revert.
    pub kind: OfferKind,
    /// The release manifest's signed envelope.
    pub manifest: Envelope,
    /// A delta from the device's current kernel, when the server has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaOffer>,
    /// After this (Unix ms) the offer is refused.
    pub expires_ms: u64,
    /// 32 hex digits, random: two offers never sign the same bytes.
    pub nonce: String,
}

/// A verified offer and its verified release manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedOffer {
    /// The offer.
    pub offer: Offer,
    /// Its release manifest.
    pub manifest: ReleaseManifest,
}

/// A fresh random nonce for [`Offer::nonce`].
pub fn new_nonce() -> Result<String> {
    Ok(hex(&random::<16>()?))
}

impl Offer {
    /// Checks the offer's own fields (not the manifest inside).
    pub fn check(&self) -> Result<()> {
        for (field, v) in
            [("offer_id", &self.offer_id), ("device_id", &self.device_id), ("deployment_id", &self.deployment_id)]
        {
            if !is_name(v, 64, false) {
                return Err(BundleError::malformed(
                    WHAT,
                    field,
                    format!("{:?}: expected 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit", truncate(v)),
                ));
            }
        }
        if self.nonce.len() != 32 || !self.nonce.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(BundleError::malformed(WHAT, "nonce", "expected 32 lower-case hex digits"));
        }
        if let Some(d) = &self.delta
            && (d.length == 0 || d.length > MAX_LENGTH)
        {
            return Err(BundleError::malformed(
                WHAT,
                "delta.length",
                format!("{}; must be 1 ..= {MAX_LENGTH}", d.length),
            ));
        }
        self.manifest.check_shape().map_err(|e| match e {
            BundleError::Malformed { field, reason, .. } => {
                BundleError::malformed(WHAT, format!("manifest.{field}"), reason)
            }
            e => e,
        })
    }

    /// Checks and signs the offer with the release key.
    pub fn sign(&self, key: &SigningKey) -> Result<Envelope> {
        self.check()?;
        let payload = serde_json::to_vec(self).map_err(|e| BundleError::Invalid(format!("offer: {e}")))?;
        Ok(Envelope::sign(DocKind::Offer, payload, key))
    }

    /// Verifies an offer's envelope bytes on the device `device_id` at `now_ms`: signed by
    /// the release `key`, for this device, not expired; its release manifest signed by the
    /// same key, well formed and not expired; a delta, if any, from another file than the
    /// release's.
    pub fn verify(bytes: &[u8], key: &PublicKey, device_id: &str, now_ms: u64) -> Result<VerifiedOffer> {
        let env = Envelope::decode(bytes)?;
        let offer: Offer = parse_json(WHAT, env.open(DocKind::Offer, key)?)?;
        offer.check()?;
        if offer.device_id != device_id {
            return Err(BundleError::WrongDevice {
                offer_id: offer.offer_id,
                offered_to: truncate(&offer.device_id),
                this_device: truncate(device_id),
            });
        }
        if now_ms >= offer.expires_ms {
            return Err(BundleError::Expired { what: WHAT, expires_ms: offer.expires_ms, now_ms });
        }
        let manifest = ReleaseManifest::verify_envelope(&offer.manifest, key, now_ms)?;
        if let Some(d) = &offer.delta
            && d.from_sha256 == manifest.sha256
        {
            return Err(BundleError::malformed(WHAT, "delta.from_sha256", "is the release's own SHA-256"));
        }
        Ok(VerifiedOffer { offer, manifest })
    }
}

impl VerifiedOffer {
    /// Whether the device may act on the offer, given the highest release version it has
    /// seen on the manifest's channel (stored durably by the device): an install must be
    /// newer; a revert (the signed downgrade order) may be any version.
    pub fn admits(&self, highest_seen: Option<u64>) -> Result<()> {
        match (self.offer.kind, highest_seen) {
            (OfferKind::Install, Some(h)) if self.manifest.version <= h => Err(BundleError::Downgrade {
                channel: self.manifest.channel.clone(),
                offered: self.manifest.version,
                highest_seen: h,
            }),
            _ => Ok(()),
        }
    }
}
