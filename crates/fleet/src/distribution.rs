//! What goes to devices: the release signing key and its rotations (root documents), the
//! blob store holding kernel files and deltas, publishing a release (blob, chunk hashes,
//! signed manifest, delta from the previous release), signing offers, blob GC.

use crate::Fleet;
use crate::deploy::{NewRelease, Offer, OfferKind, ReleaseInfo};
use crate::error::{FleetError, Result};
use crate::model::check_name;
use crate::rows::random_hex;
use kernelize_blobs::{BlobStore, Digest};
use kernelize_bundle::{
    Compatibility, DeltaOffer, DocKind, Envelope, GoldenQuery, ReleaseManifest, RootDocument, Sha256, SigningKey,
};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The release signing key (`<dir>/release.pk8`, owner-only) and the root documents that
/// rotated it (`<dir>/root/<version>.json`). Version 0 is the key devices pin.
#[derive(Debug)]
pub struct ReleaseKeys {
    dir: PathBuf,
    current: RwLock<(u64, Arc<SigningKey>)>,
    roots: RwLock<Vec<Vec<u8>>>,
}

fn io(path: &Path, e: std::io::Error) -> FleetError {
    FleetError::Internal(format!("{}: {e}", path.display()))
}

fn ioe(e: std::io::Error) -> FleetError {
    FleetError::Internal(e.to_string())
}

fn bundle(e: kernelize_bundle::BundleError) -> FleetError {
    FleetError::Internal(e.to_string())
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file and a rename.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| io(&tmp, e))?;
    fs_err::rename(&tmp, path).map_err(ioe)?;
    if let Some(parent) = path.parent()
        && let Ok(d) = std::fs::File::open(parent)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

fn new_pkcs8() -> Result<Vec<u8>> {
    ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| FleetError::Internal("the system RNG failed".into()))
}

impl ReleaseKeys {
    /// Loads the keys from `dir`, making the first key on first use. A rotation cut short
    /// by a crash (new key written, root document or switch not yet) is finished here.
    pub fn load_or_create(dir: &Path) -> Result<ReleaseKeys> {
        let root_dir = dir.join("root");
        for d in [dir, &root_dir] {
            fs_err::create_dir_all(d).map_err(ioe)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(|e| io(d, e))?;
            }
        }
        let key_path = dir.join("release.pk8");
        if !key_path.exists() {
            write_private(&key_path, &new_pkcs8()?)?;
        }
        let mut roots: Vec<(u64, Vec<u8>)> = Vec::new();
        for entry in std::fs::read_dir(&root_dir).map_err(|e| io(&root_dir, e))? {
            let entry = entry.map_err(|e| io(&root_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_suffix(".json").and_then(|v| v.parse::<u64>().ok()) {
                roots.push((v, fs_err::read(entry.path()).map_err(ioe)?));
            }
        }
        roots.sort_by_key(|r| r.0);
        for (i, (v, _)) in roots.iter().enumerate() {
            if *v != i as u64 + 1 {
                return Err(FleetError::Internal(format!(
                    "{}: root documents are not 1..{}",
                    root_dir.display(),
                    roots.len()
                )));
            }
        }
        let next = dir.join("release-next.pk8");
        let mut key = SigningKey::load(&key_path).map_err(bundle)?;
        if next.exists() {
            let candidate = SigningKey::load(&next).map_err(bundle)?;
            let last_key = match roots.last() {
                Some((_, doc)) => Some(root_key(doc)?),
                None => None,
            };
            if last_key == Some(candidate.public()) {
                fs_err::rename(&next, &key_path).map_err(ioe)?;
                key = candidate;
            } else {
                fs_err::remove_file(&next).map_err(ioe)?;
            }
        }
        if let Some((_, doc)) = roots.last()
            && root_key(doc)? != key.public()
        {
            return Err(FleetError::Internal(format!(
                "{}: the release key is not the one the last root document names",
                key_path.display()
            )));
        }
        let version = roots.len() as u64;
        Ok(ReleaseKeys {
            dir: dir.to_owned(),
            current: RwLock::new((version, Arc::new(key))),
            roots: RwLock::new(roots.into_iter().map(|r| r.1).collect()),
        })
    }

    /// The key signing now and its root version.
    pub fn current(&self) -> (u64, Arc<SigningKey>) {
        let g = self.current.read();
        (g.0, g.1.clone())
    }

    /// The root documents, oldest first (each an envelope's bytes).
    pub fn roots(&self) -> Vec<Vec<u8>> {
        self.roots.read().clone()
    }

    /// Rotates: a new key, announced by a root document signed by the current one.
    /// Devices learn the new key only through that document.
    pub fn rotate(&self, now: i64) -> Result<u64> {
        let mut cur = self.current.write();
        let pkcs8 = new_pkcs8()?;
        let next = SigningKey::from_pkcs8(&pkcs8).map_err(bundle)?;
        let version = cur.0 + 1;
        let doc = RootDocument { version, release_key: next.public(), created_ms: now.max(0) as u64 };
        let env = doc.sign(&cur.1).map_err(bundle)?;
        let next_path = self.dir.join("release-next.pk8");
        write_private(&next_path, &pkcs8)?;
        write_private(&self.dir.join("root").join(format!("{version}.json")), &env.to_bytes())?;
        fs_err::rename(&next_path, self.dir.join("release.pk8")).map_err(ioe)?;
        self.roots.write().push(env.to_bytes());
        *cur = (version, Arc::new(next));
        Ok(version)
    }
}

fn root_key(doc: &[u8]) -> Result<kernelize_bundle::PublicKey> {
    let env = Envelope::decode(doc).map_err(bundle)?;
    if env.kind != DocKind::Root {
        return Err(FleetError::Internal("a root document file holds another kind of document".into()));
    }
    let d: RootDocument =
        serde_json::from_slice(&env.payload).map_err(|e| FleetError::Internal(format!("root document: {e}")))?;
    Ok(d.release_key)
}

/// Where kernels go and how they are signed.
#[derive(Debug, Clone)]
pub struct Distribution {
    /// Kernel files and deltas.
    pub blobs: BlobStore,
    /// The release key and its rotations.
    pub keys: Arc<ReleaseKeys>,
    /// Chunk size of manifests (a power of two, 4 KiB – 64 MiB).
    pub chunk_size: u64,
    /// zstd level of deltas (1–22).
    pub delta_level: i32,
    /// Largest kernel a release may publish, bytes.
    pub max_kernel_bytes: u64,
}

/// What to publish.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The kernel (built by the server).
    pub kernel_id: String,
    /// Channel.
    pub channel: String,
    /// Version: above every earlier one on the channel.
    pub version: u64,
    /// Queries the device runs on the staged kernel before it switches.
    #[serde(default)]
    pub golden_queries: Vec<GoldenQuery>,
    /// The embedding model text queries need (default all-MiniLM-L6-v2).
    #[serde(default)]
    pub embedding_model: Option<String>,
    /// Oldest agent that may install it (default 0.1.0).
    #[serde(default)]
    pub min_agent_version: Option<String>,
    /// The manifest expires after this many days (default 365).
    #[serde(default)]
    pub expires_in_days: Option<u64>,
    /// Make a delta from the channel's previous release (default true); kept only when
    /// smaller than the full file.
    #[serde(default)]
    pub delta: Option<bool>,
}

/// The kernel being published, as the server read it.
#[derive(Debug, Clone)]
pub struct KernelFile {
    /// Its bytes (the signed kernel file).
    pub bytes: bytes::Bytes,
    /// Vector dimension (from its manifest).
    pub dim: u32,
}

impl Fleet {
    /// The distribution settings; `Internal` when the server gave none.
    pub fn distribution(&self) -> Result<&Distribution> {
        self.dist.as_ref().ok_or_else(|| FleetError::Internal("no blob store and release key configured".into()))
    }

    /// Publishes a kernel: stores it (content-addressed), signs its manifest with chunk
    /// hashes, makes a delta from the channel's latest release when that is smaller, and
    /// records the release.
    pub async fn publish(&self, req: &PublishRequest, kernel: KernelFile, by: &str, now: i64) -> Result<ReleaseInfo> {
        let dist = self.distribution()?.clone();
        check_name("channel", &req.channel, false)?;
        if kernel.bytes.len() as u64 > dist.max_kernel_bytes {
            return Err(FleetError::invalid(
                "kernel_id",
                format!("the kernel is larger than {} bytes", dist.max_kernel_bytes),
            ));
        }
        if let Some(prev) = self.releases(Some(&req.channel)).await?.first()
            && prev.version >= req.version
        {
            return Err(FleetError::Conflict(format!(
                "version {} on channel {:?} must exceed the latest, {}",
                req.version, req.channel, prev.version
            )));
        }
        let days = req.expires_in_days.unwrap_or(365);
        if !(1..=3650).contains(&days) {
            return Err(FleetError::invalid("expires_in_days", "must be in [1, 3650]"));
        }
        let (_, key) = dist.keys.current();
        let bytes = kernel.bytes.clone();
        let chunk = dist.chunk_size;
        let digests = tokio::task::spawn_blocking(move || kernelize_bundle::chunk_hashes(&bytes[..], chunk))
            .await
            .map_err(|e| FleetError::Internal(e.to_string()))?
            .map_err(|e| FleetError::invalid("kernel_id", e.to_string()))?;
        let manifest = ReleaseManifest {
            channel: req.channel.clone(),
            version: req.version,
            kernel_id: req.kernel_id.clone(),
            sha256: digests.sha256,
            length: digests.length,
            chunk_size: digests.chunk_size,
            chunk_hashes: digests.chunk_hashes,
            compatibility: Compatibility {
                embedding_model: req.embedding_model.clone().unwrap_or_else(|| "all-MiniLM-L6-v2".into()),
                dim: kernel.dim,
                min_agent_version: req.min_agent_version.clone().unwrap_or_else(|| "0.1.0".into()),
            },
            golden_queries: req.golden_queries.clone(),
            created_ms: now.max(0) as u64,
            expires_ms: now.max(0) as u64 + days * 86_400_000,
        };
        let signed = manifest.sign(&key).map_err(|e| match e {
            kernelize_bundle::BundleError::Malformed { field, reason, .. } => FleetError::invalid(field, reason),
            e => FleetError::invalid("manifest", e.to_string()),
        })?;
        let manifest_text = String::from_utf8(signed.to_bytes()).map_err(|e| FleetError::Internal(e.to_string()))?;
        let info = dist.blobs.put_bytes(kernel.bytes.clone()).await.map_err(blob)?;
        debug_assert_eq!(info.digest.to_string(), manifest.sha256.to_hex());
        let mut delta = None;
        if req.delta.unwrap_or(true)
            && let Some(prev) = self.releases(Some(&req.channel)).await?.first()
        {
            let old = self.blob_bytes(&dist, &prev.sha256, dist.max_kernel_bytes).await?;
            let new = kernel.bytes.clone();
            let level = dist.delta_level;
            let d = tokio::task::spawn_blocking(move || {
                kernelize_bundle::make_delta_with(&old, &new, &kernelize_bundle::DeltaOptions { level })
            })
            .await
            .map_err(|e| FleetError::Internal(e.to_string()))?
            .map_err(bundle)?;
            if (d.len() as u64) < kernel.bytes.len() as u64 {
                let len = d.len() as u64;
                let di = dist.blobs.put_bytes(bytes::Bytes::from(d)).await.map_err(blob)?;
                delta = Some((prev.id.clone(), di.digest.to_string(), len));
            }
        }
        let r = NewRelease {
            id: format!("rel-{}", random_hex(8)),
            channel: req.channel.clone(),
            version: req.version,
            kernel_id: req.kernel_id.clone(),
            sha256: info.digest.to_string(),
            length: info.len,
            manifest: manifest_text,
            created_by: by.to_owned(),
            delta,
        };
        self.insert_release(&r, now).await
    }

    async fn blob_bytes(&self, dist: &Distribution, sha: &str, max: u64) -> Result<Vec<u8>> {
        use futures::StreamExt as _;
        let d: Digest = sha.parse().map_err(|e: kernelize_blobs::Error| FleetError::Internal(e.to_string()))?;
        let mut s = dist.blobs.get(&d, None).await.map_err(blob)?;
        if s.info.len > max {
            return Err(FleetError::Internal(format!("blob {sha} is larger than {max} bytes")));
        }
        let mut out = Vec::with_capacity(s.info.len as usize);
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.map_err(blob)?);
        }
        if Sha256::of(&out).to_hex() != sha {
            return Err(FleetError::Internal(format!("blob {sha} does not hash to its name")));
        }
        Ok(out)
    }

    /// The offer as a signed document for the device: the release manifest's envelope,
    /// the delta (when the device runs its base), expiry and a nonce, under the release key.
    pub(crate) fn sign_offer(&self, o: &Offer) -> Result<String> {
        let Some(dist) = &self.dist else { return Ok(String::new()) };
        let manifest = Envelope::decode(o.release.manifest.as_bytes()).map_err(bundle)?;
        let delta = match &o.delta {
            Some(d) => {
                let base = o
                    .from_sha256
                    .as_deref()
                    .and_then(Sha256::from_hex)
                    .ok_or_else(|| FleetError::Internal("a delta without its base".into()))?;
                Some(DeltaOffer {
                    from_sha256: base,
                    sha256: Sha256::from_hex(&d.sha256)
                        .ok_or_else(|| FleetError::Internal("bad delta digest".into()))?,
                    length: d.length,
                })
            }
            None => None,
        };
        let offer = kernelize_bundle::Offer {
            offer_id: o.offer_id.clone(),
            device_id: o.device_id.clone(),
            deployment_id: o.deployment_id.clone(),
            kind: match o.kind {
                OfferKind::Install => kernelize_bundle::OfferKind::Install,
                OfferKind::Revert => kernelize_bundle::OfferKind::Revert,
            },
            manifest,
            delta,
            expires_ms: o.expires_ms.max(0) as u64,
            nonce: kernelize_bundle::new_nonce().map_err(bundle)?,
        };
        let (_, key) = dist.keys.current();
        let env = offer.sign(&key).map_err(bundle)?;
        String::from_utf8(env.to_bytes()).map_err(|e| FleetError::Internal(e.to_string()))
    }

    /// Deletes blobs no release or delta references, older than `min_age`.
    pub async fn gc_blobs(&self, min_age: std::time::Duration) -> Result<kernelize_blobs::GcReport> {
        let dist = self.distribution()?;
        let referenced = self
            .referenced_blobs()
            .await?
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect::<std::collections::HashSet<Digest>>();
        dist.blobs.gc(&referenced, min_age).await.map_err(blob)
    }
}

/// A blob store error as a fleet error.
pub fn blob_error(e: kernelize_blobs::Error) -> FleetError {
    blob(e)
}

fn blob(e: kernelize_blobs::Error) -> FleetError {
    match e.class() {
        kernelize_blobs::ErrorClass::NotFound => FleetError::NotFound(e.to_string()),
        kernelize_blobs::ErrorClass::User => FleetError::invalid("blob", e.to_string()),
        _ => FleetError::Internal(e.to_string()),
    }
}
