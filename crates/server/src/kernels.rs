//! Hosted kernels: build a collection's kernel as a background job (with progress), list,
//! describe, download (HTTP Range, so a device can resume), query and delete them. Every
//! operation checks the principal against the kernel's source collection: reading a
//! kernel needs `reader` on it, building or deleting one `writer`. Kernels are signed
//! with the server's own key (`<data_dir>/kernel-signing.key`), whose public half any
//! authenticated caller can fetch to verify downloads.
//!
//! A kernel is bound to the *incarnation* of its collection, not to its name: a random
//! id in `<collection dir>/server-incarnation`, written when the server first builds a
//! kernel of that collection and gone with the collection's directory when it is
//! dropped (by the server or the CLI). A kernel whose incarnation is not the current
//! one of its collection's name is an orphan: only admins (scoped to every collection)
//! see it, and they may only describe or delete it. Dropping a collection through the
//! server deletes its kernels. Expired kernels are neither queried nor downloaded.
//!
//! When the data directory is encrypted, a kernel file is sealed at rest like the
//! collection's own files (`EncryptedStorage::seal_existing`, under the collection's data
//! key): queries and downloads use the kernel decrypted in memory, the `ETag` is the
//! SHA-256 of the plain kernel, and dropping the collection (which destroys its key)
//! leaves any kernel file of it unreadable.

use crate::auth::{Principal, Role, random_id};
use crate::engine::{blocking, parse_filter};
use crate::error::ApiError;
use crate::meta::KernelRow;
use crate::model::*;
use crate::state::{AppState, now_ms, rfc3339};
use kernelize_kernel::{BuildOptions, IndexKind, Kernel, KernelError, SearchParams, SigningKey, Trust};
use kernelize_store::Quantization;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// SHA-256 of bytes, hex.
fn sha256_hex(bytes: &[u8]) -> String {
    crate::auth::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Opens the kernel file at `path`. In an encrypted data directory the file is sealed
/// (under its collection's data key, `docs/format/encryption.md`) and is decrypted into
/// memory; an unsealed file there is refused. Returns the kernel and the SHA-256 (hex) of
/// its plain bytes: the download's `ETag`, the same whether the file is sealed or not.
fn open_kernel_file(
    db: &kernelize_store::Database,
    path: &std::path::Path,
    trust: &Trust,
) -> Result<(Kernel, String), ApiError> {
    let kernel = match db.storage().encryption() {
        None => Kernel::open(path, trust)?,
        Some(enc) => {
            let raw = fs_err::read(path).map_err(ApiError::internal)?;
            if !kernelize_store::is_sealed(&raw) {
                return Err(ApiError::internal(format!(
                    "{} is not sealed, but the data directory is encrypted: delete the kernel and build it again",
                    path.display()
                )));
            }
            let plain = enc.unseal(path, raw)?;
            Kernel::from_bytes(&plain, &path.display().to_string(), trust)?
        }
    };
    let sha = sha256_hex(kernel.bytes());
    Ok((kernel, sha))
}

/// The server's kernel signing key and open kernels (build progress is in
/// [`AppState::jobs`]).
pub struct Kernels {
    signing: SigningKey,
    open: Mutex<HashMap<String, (Arc<Kernel>, String)>>,
    incarnation_lock: tokio::sync::Mutex<()>,
}

/// The file in a collection's directory that holds its incarnation id.
pub const INCARNATION_FILE: &str = "server-incarnation";

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels").field("key_id", &self.signing.public().key_id()).finish_non_exhaustive()
    }
}

impl Kernels {
    /// Loads (or creates on first start) `<data_dir>/kernel-signing.key`.
    pub fn load(data_dir: &std::path::Path) -> anyhow::Result<Kernels> {
        fs_err::create_dir_all(data_dir)?;
        let signing = SigningKey::load_or_generate(&data_dir.join("kernel-signing.key"))?;
        Ok(Kernels { signing, open: Mutex::default(), incarnation_lock: tokio::sync::Mutex::new(()) })
    }
}

impl From<KernelError> for ApiError {
    fn from(e: KernelError) -> ApiError {
        match e {
            KernelError::Invalid(m) => ApiError::invalid(m),
            KernelError::Expired { .. } => ApiError::conflict(e.to_string()),
            KernelError::Cancelled => ApiError::unavailable("interrupted: the server is shutting down"),
            KernelError::Store(s) => s.into(),
            other => ApiError::internal(other),
        }
    }
}

fn quantization(q: QuantizationName) -> Quantization {
    match q {
        QuantizationName::None => Quantization::None,
        QuantizationName::Int8 => Quantization::Int8,
        QuantizationName::Rabitq1 => Quantization::Rabitq1,
        QuantizationName::Rabitq4 => Quantization::Rabitq4,
    }
}

impl AppState {
    fn kernel_path(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("kernels").join(format!("{id}.{}", kernelize_kernel::EXT))
    }

    /// The current incarnation of collection `name` (`None`: no such collection, or no
    /// kernel was ever built of it by this server). Read from the collection's directory
    /// every time, so a collection dropped and re-created while the server was down (by
    /// the CLI) is never mistaken for the old one.
    async fn incarnation(&self, name: &str) -> Result<Option<String>, ApiError> {
        if self.db.collection(name).is_err() {
            return Ok(None);
        }
        let path = self.db.collection_dir(name).join(INCARNATION_FILE);
        blocking(move || match fs_err::read_to_string(&path) {
            Ok(s) => Ok(Some(s.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ApiError::internal(e)),
        })
        .await
    }

    /// The incarnation of collection `name`, created (written beside its files) when it
    /// has none yet.
    async fn ensure_incarnation(&self, name: &str) -> Result<String, ApiError> {
        let _g = self.kernels.incarnation_lock.lock().await;
        if let Some(i) = self.incarnation(name).await? {
            return Ok(i);
        }
        let id = random_id();
        let dir = self.db.collection_dir(name);
        let value = id.clone();
        blocking(move || {
            let tmp = dir.join(format!("{INCARNATION_FILE}.tmp"));
            fs_err::write(&tmp, value.as_bytes()).map_err(ApiError::internal)?;
            fs_err::File::open(&tmp).and_then(|f| f.sync_all()).map_err(ApiError::internal)?;
            fs_err::rename(&tmp, dir.join(INCARNATION_FILE)).map_err(ApiError::internal)?;
            fs_err::File::open(&dir).and_then(|f| f.sync_all()).map_err(ApiError::internal)
        })
        .await?;
        Ok(id)
    }

    /// Whether a kernel no longer belongs to the collection its name points at.
    async fn orphaned(&self, row: &KernelRow) -> Result<bool, ApiError> {
        Ok(row.incarnation.is_none() || self.incarnation(&row.collection).await? != row.incarnation)
    }

    /// After collection `name` was dropped: forgets its incarnation and deletes its
    /// kernels (a build still running ends as an orphan).
    pub(crate) async fn drop_kernels_of(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        for row in self.meta.kernels_of(name).await? {
            if row.state != "running" {
                self.remove_kernel(&row).await?;
            }
        }
        Ok(())
    }

    /// Records the current incarnation on kernels built before incarnations existed
    /// (their collection still there); kernels of collections gone stay orphans.
    pub async fn adopt_legacy_kernels(self: &Arc<Self>) -> anyhow::Result<()> {
        for row in self.meta.kernels().await? {
            if row.incarnation.is_some() || self.db.collection(&row.collection).is_err() {
                continue;
            }
            let inc = self.ensure_incarnation(&row.collection).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            self.meta.set_kernel_incarnation(&row.id, &inc).await?;
        }
        Ok(())
    }

    /// The kernel row, if the principal may act on it with `role`; 404 hides kernels of
    /// collections outside the key's scope only after the role check, like collections.
    /// An orphaned kernel is 404 to everyone but admins, and to them only for `describe`
    /// and `delete` (`orphans_ok`); else 409.
    pub(crate) async fn kernel_row(
        &self,
        p: &Principal,
        role: Role,
        id: &str,
        orphans_ok: bool,
    ) -> Result<KernelRow, ApiError> {
        let row = self.meta.kernel(id).await?.ok_or_else(|| ApiError::not_found(format!("no kernel {id:?}")))?;
        p.require(role, Some(&row.collection))?;
        if self.orphaned(&row).await? {
            if p.require(Role::Admin, None).is_err() {
                return Err(ApiError::not_found(format!("no kernel {id:?}")));
            }
            if !orphans_ok {
                return Err(ApiError::conflict(format!(
                    "kernel {id} is an orphan: its collection {:?} was dropped; it can only be described or deleted",
                    row.collection
                )));
            }
        }
        Ok(row)
    }

    /// The open kernel of a succeeded build (opened, verified under the server's key,
    /// once) and the SHA-256 of its file (hex: its download `ETag`).
    async fn open_kernel(self: &Arc<Self>, row: &KernelRow) -> Result<(Arc<Kernel>, String), ApiError> {
        if row.state != "succeeded" {
            return Err(ApiError::conflict(format!("kernel {} is {}, not built", row.id, row.state)));
        }
        if let Some(k) = self.kernels.open.lock().get(&row.id) {
            return Ok(k.clone());
        }
        let path = self.kernel_path(&row.id);
        let trust = Trust { public_key: Some(self.kernels.signing.public()), allow_expired: true, now: None };
        let db = self.db.clone();
        let opened = blocking(move || {
            let (k, sha) = open_kernel_file(&db, &path, &trust)?;
            Ok((Arc::new(k), sha))
        })
        .await?;
        self.kernels.open.lock().insert(row.id.clone(), opened.clone());
        Ok(opened)
    }

    /// The open kernel, refused (409) once it has expired: an expired kernel is neither
    /// queried nor downloaded (a device would refuse it anyway).
    pub(crate) async fn live_kernel(self: &Arc<Self>, row: &KernelRow) -> Result<(Arc<Kernel>, String), ApiError> {
        let (k, sha) = self.open_kernel(row).await?;
        if let Some(exp) = k.manifest().expires
            && exp <= kernelize_kernel::format::now_secs()
        {
            return Err(ApiError::conflict(format!(
                "kernel {} expired at {}",
                row.id,
                kernelize_kernel::format::rfc3339(exp)
            )));
        }
        Ok((k, sha))
    }

    async fn kernel_info(self: &Arc<Self>, row: KernelRow) -> Result<KernelInfo, ApiError> {
        let orphaned = self.orphaned(&row).await?;
        let manifest = match row.state.as_str() {
            // An orphan of an encrypted data directory cannot be opened any more: its
            // collection's data key went with the collection (crypto-shredding).
            "succeeded" if orphaned => match self.open_kernel(&row).await {
                Ok((k, _)) => Some(serde_json::to_value(k.manifest()).map_err(ApiError::internal)?),
                Err(_) => None,
            },
            "succeeded" => {
                Some(serde_json::to_value(self.open_kernel(&row).await?.0.manifest()).map_err(ApiError::internal)?)
            }
            _ => None,
        };
        let (stage, progress) = match row.state.as_str() {
            "running" => self.jobs.get(&row.id).map_or((None, 0.0), |s| (Some(s.stage), s.fraction)),
            "succeeded" => (None, 1.0),
            _ => (None, 0.0),
        };
        let settings = serde_json::from_str(&row.settings).map_err(ApiError::internal)?;
        Ok(KernelInfo {
            id: row.id,
            collection: row.collection,
            state: row.state,
            stage,
            progress,
            requested_by: row.requested_by,
            created_at: rfc3339(row.created_ms),
            finished_at: row.finished_ms.map(rfc3339),
            bytes: row.bytes,
            rows: row.rows_out,
            ids: row.ids,
            error: row.error,
            orphaned,
            settings,
            manifest,
        })
    }

    /// Starts building a kernel of a collection in the background.
    pub async fn start_kernel_build(
        self: &Arc<Self>,
        p: &Principal,
        req: KernelBuildRequest,
    ) -> Result<KernelInfo, ApiError> {
        p.require(Role::Writer, Some(&req.collection))?;
        let coll = self.db.collection(&req.collection)?;
        let threshold = req.dedup_threshold.unwrap_or(0.97);
        if !(-1.0..=1.0).contains(&threshold) {
            return Err(ApiError::invalid(format!(
                "dedup_threshold {threshold} is not a cosine similarity in [-1, 1]"
            )));
        }
        if req.expires_in_secs == Some(0) {
            return Err(ApiError::invalid("expires_in_secs must be at least 1"));
        }
        let expires = match req.expires_in_secs {
            Some(s) => Some(
                kernelize_kernel::format::now_secs()
                    .checked_add(s)
                    .filter(|&t| t < 253_402_300_799)
                    .ok_or_else(|| ApiError::invalid("expires_in_secs is too far in the future"))?,
            ),
            None => None,
        };
        let opts = BuildOptions {
            dedup_threshold: req.dedup.unwrap_or(true).then_some(threshold),
            quantization: quantization(req.quantization.unwrap_or(QuantizationName::Rabitq4)),
            keep_text: req.keep_text.unwrap_or(true),
            index: match req.index.unwrap_or_default() {
                KernelIndexName::Ivf => IndexKind::Ivf { nlist: None },
                KernelIndexName::Hnsw => IndexKind::Hnsw { m: 16, ef_construction: 200 },
            },
            expires,
            ..BuildOptions::default()
        };
        let incarnation = self.ensure_incarnation(&req.collection).await?;
        let row = KernelRow {
            id: random_id(),
            collection: req.collection.clone(),
            state: "running".into(),
            settings: serde_json::to_string(&req).map_err(ApiError::internal)?,
            requested_by: p.actor(),
            created_ms: now_ms(),
            finished_ms: None,
            bytes: None,
            rows_out: None,
            ids: None,
            error: None,
            incarnation: Some(incarnation),
        };
        self.meta.insert_kernel(&row).await?;
        let progress = self.jobs.start(&row.id, "starting");
        let state = self.clone();
        let mut done = row.clone();
        let path = self.kernel_path(&row.id);
        let draining = Arc::downgrade(self);
        let opts = BuildOptions {
            // Shutdown stops a build at its next stage; the job is then marked failed.
            cancel: Some(Arc::new(move || {
                draining.upgrade().is_none_or(|s| s.draining.load(std::sync::atomic::Ordering::SeqCst))
            })),
            ..opts
        };
        tokio::spawn(async move {
            let st = state.clone();
            let result = blocking(move || {
                let snap = coll.snapshot();
                let units = kernelize_kernel::units_of(&snap)?;
                if units.is_empty() {
                    return Err(ApiError::invalid(format!("collection {:?} is empty", coll.name())));
                }
                let cfg = coll.config();
                let source = kernelize_kernel::format::SourceInfo {
                    collection: coll.name().to_owned(),
                    records: units.len() as u64,
                    seq: snap.seq(),
                    encoder: cfg.encoder.clone(),
                };
                let report = |stage: &str, f: f32| {
                    progress.send_replace(crate::progress::Stage { stage: stage.to_owned(), fraction: f });
                };
                let built =
                    kernelize_kernel::build(units, cfg.dim, cfg.metric, source, &opts, &st.kernels.signing, &report)?;
                if let Some(dir) = path.parent() {
                    fs_err::create_dir_all(dir).map_err(ApiError::internal)?;
                }
                // Sealed at rest under the collection's data key when the data directory
                // is encrypted: the plain kernel never touches the disk.
                match st.db.storage().encryption() {
                    None => kernelize_kernel::write_file(&path, &built.bytes)?,
                    Some(enc) => kernelize_kernel::write_file(&path, &enc.seal_existing(coll.name(), &built.bytes)?)?,
                }
                crate::files::private_file(&path).map_err(ApiError::internal)?;
                Ok(built.manifest)
            })
            .await;
            done.finished_ms = Some(now_ms());
            match result {
                Ok(m) => {
                    done.state = "succeeded".into();
                    done.bytes = Some(m.file_bytes as i64);
                    done.rows_out = Some(m.rows as i64);
                    done.ids = Some(m.ids as i64);
                }
                Err(e) => {
                    done.state = "failed".into();
                    done.error = Some(e.message);
                }
            }
            if let Err(e) = state.meta.finish_kernel(&done).await {
                tracing::error!(kernel = done.id, error = %e, "could not record the end of a kernel build");
            }
            state.jobs.finish(&done.id);
            let outcome = if done.state == "succeeded" { "ok" } else { "error" };
            let _ = state.audit("-", "system", "kernels.finish", &done.id, outcome, &done.state).await;
        });
        self.kernel_info(row).await
    }

    /// Kernels of collections in the principal's scope, newest first; orphans only for
    /// admins.
    pub async fn list_kernels(self: &Arc<Self>, p: &Principal) -> Result<KernelList, ApiError> {
        let admin = p.require(Role::Admin, None).is_ok();
        let mut kernels = Vec::new();
        for row in self.meta.kernels().await? {
            if p.scope.contains(&row.collection) && (admin || !self.orphaned(&row).await?) {
                kernels.push(self.kernel_info(row).await?);
            }
        }
        Ok(KernelList { kernels })
    }

    /// One kernel.
    pub async fn describe_kernel(self: &Arc<Self>, p: &Principal, id: &str) -> Result<KernelInfo, ApiError> {
        let row = self.kernel_row(p, Role::Reader, id, true).await?;
        self.kernel_info(row).await
    }

    /// A built, unexpired kernel, for download (its plain, signed bytes: the open kernel's,
    /// mapped or decrypted), and their SHA-256 (hex).
    pub async fn kernel_file(self: &Arc<Self>, p: &Principal, id: &str) -> Result<(Arc<Kernel>, String), ApiError> {
        let row = self.kernel_row(p, Role::Reader, id, false).await?;
        self.live_kernel(&row).await
    }

    /// Deletes a kernel (its file and its row); a build still running cannot be deleted.
    pub async fn delete_kernel(self: &Arc<Self>, p: &Principal, id: &str) -> Result<(), ApiError> {
        let row = self.kernel_row(p, Role::Writer, id, true).await?;
        if row.state == "running" {
            return Err(ApiError::conflict(format!("kernel {id} is still being built")));
        }
        self.remove_kernel(&row).await
    }

    /// Removes a kernel's file and row.
    async fn remove_kernel(self: &Arc<Self>, row: &KernelRow) -> Result<(), ApiError> {
        self.kernels.open.lock().remove(&row.id);
        let path = self.kernel_path(&row.id);
        blocking(move || match fs_err::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ApiError::internal(e)),
        })
        .await?;
        self.meta.delete_kernel(&row.id).await?;
        Ok(())
    }

    /// Queries a hosted kernel.
    pub async fn query_kernel(
        self: &Arc<Self>,
        p: &Principal,
        id: &str,
        req: KernelQueryRequest,
    ) -> Result<KernelQueryResponse, ApiError> {
        let row = self.kernel_row(p, Role::Reader, id, false).await?;
        let (k, probe) = self.search_width(req.k, req.probe, "probe")?;
        let filter = parse_filter(req.filter)?;
        let (kernel, _) = self.live_kernel(&row).await?;
        let embedder = match (&req.vector, &req.text) {
            (Some(_), _) => None,
            (None, Some(_)) => Some(self.embedder()?),
            (None, None) => return Err(ApiError::invalid("give the query as `vector` or `text`")),
        };
        let (hits, took) = crate::engine::cancellable(move |cancel| {
            let t = std::time::Instant::now();
            let vector = match (req.vector, &embedder) {
                (Some(v), _) => v,
                (None, Some(e)) => e
                    .embed_cancellable(&[req.text.as_deref().unwrap_or("")], cancel.flag())
                    .map_err(crate::engine::embed_error)?
                    .into_iter()
                    .next()
                    .unwrap_or_default(),
                (None, None) => Vec::new(),
            };
            cancel.check()?;
            let hits = kernel.search(&vector, &SearchParams { k, probe, filter })?;
            Ok((hits, t.elapsed().as_secs_f64() * 1e3))
        })
        .await?;
        let hits = hits
            .into_iter()
            .map(|h| KernelHitOut { ids: h.ids, score: h.score, text: h.text, metadata: h.metadata })
            .collect();
        Ok(KernelQueryResponse { hits, took_ms: took })
    }

    /// The public key kernels are signed with.
    pub fn kernel_signing_key(&self) -> SigningKeyInfo {
        let pk = self.kernels.signing.public();
        SigningKeyInfo { algorithm: "ed25519".into(), key_id: pk.key_id(), public_key: pk.to_hex() }
    }
}
