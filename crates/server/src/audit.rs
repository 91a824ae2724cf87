//! The audit log: every write, authentication failure, admin action and key state
//! change, as entries chained by HMAC-SHA256 under a key kept outside the database
//! (`<data_dir>/audit-key`), with the head (last sequence number and hash) kept beside
//! them and signed checkpoints of the head written outside the database
//! (`<data_dir>/audit-checkpoints`). [`verify`] finds any edited, inserted or removed
//! entry, a chain cut below a checkpoint, and any API key whose stored state is not the
//! state the chain last recorded for it. Entries written before the chain was keyed
//! (version 1: plain SHA-256) stay verifiable; `docs/format/audit.md` has the bytes.

use crate::meta::KeyRow;
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use utoipa::ToSchema;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Entries hashed with plain SHA-256 (before the chain was keyed).
pub const VERSION_UNKEYED: i64 = 1;
/// Entries hashed with HMAC-SHA256 under `<data_dir>/audit-key`.
pub const VERSION_KEYED: i64 = 2;

/// The action of the first keyed entry (it says from where the chain is keyed).
pub const ACTION_KEYED: &str = "audit.keyed";
/// The action of an entry recording an API key's stored state (its digest in `detail`).
pub const ACTION_KEY_STATE: &str = "keys.state";

/// Longest stored `request_id`, `actor`, `action` or `target` (bytes, before the cut marker).
pub const MAX_FIELD: usize = 256;
/// Longest stored `detail` (bytes, before the cut marker).
pub const MAX_DETAIL: usize = 1024;

/// The HMAC key file.
pub const KEY_FILE: &str = "audit-key";
/// The checkpoint signing key file (ed25519 PKCS#8).
pub const SIGNING_FILE: &str = "audit-checkpoint.pk8";
/// The checkpoint file (JSON lines, append-only).
pub const CHECKPOINT_FILE: &str = "audit-checkpoints";

/// One audit entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    /// When (unix milliseconds).
    pub ts_ms: i64,
    /// The server's id of the request that caused it (never a client-chosen id).
    pub request_id: String,
    /// Who: `key:<id>`, `token:<key id>`, `anonymous`, or `system`.
    pub actor: String,
    /// What, e.g. `records.upsert`, `keys.create`, `auth.failure`.
    pub action: String,
    /// On what, e.g. a collection or key id.
    pub target: String,
    /// `ok`, `denied` or `error`.
    pub outcome: String,
    /// More detail (counts, reasons).
    pub detail: String,
    /// How `hash` is computed: 1 plain SHA-256 (entries written before the chain was
    /// keyed), 2 HMAC-SHA256 under the server's audit key.
    #[serde(default = "unkeyed")]
    pub version: i64,
    /// Hash of the previous entry (hex).
    pub prev_hash: String,
    /// Hash of this entry (hex, over `prev_hash` and the fields above).
    pub hash: String,
}

fn unkeyed() -> i64 {
    VERSION_UNKEYED
}

/// `s` cut to at most `max` bytes on a character boundary, with a marker saying how
/// many bytes were cut; `s` itself when it fits.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[cut {} bytes]", &s[..end], s.len() - end)
}

/// The nine lines every version hashes (`docs/format/audit.md`).
fn chain_text(e: &AuditEntry) -> String {
    let enc = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        e.prev_hash,
        e.seq,
        e.ts_ms,
        enc(&e.request_id),
        enc(&e.actor),
        enc(&e.action),
        enc(&e.target),
        enc(&e.outcome),
        enc(&e.detail)
    )
}

/// The version-1 (unkeyed) hash of an entry: SHA-256 over the previous hash and each
/// field JSON-encoded on its own line (so no field can run into the next).
pub fn chain_hash(e: &AuditEntry) -> String {
    crate::auth::hex(ring::digest::digest(&ring::digest::SHA256, chain_text(e).as_bytes()).as_ref())
}

/// The version-2 (keyed) hash of an entry: HMAC-SHA256 under `key` over `v2\n` and the
/// version-1 text.
pub fn keyed_hash(key: &hmac::Key, e: &AuditEntry) -> String {
    let text = format!("v2\n{}", chain_text(e));
    crate::auth::hex(hmac::sign(key, text.as_bytes()).as_ref())
}

/// The digest of a stored API key row (every column), as `keys.state` entries record it.
pub fn key_state_digest(k: &KeyRow) -> String {
    let enc = |s: Option<&str>| s.map_or_else(|| "null".to_owned(), |s| serde_json::Value::from(s).to_string());
    let num = |n: Option<i64>| n.map_or_else(|| "null".to_owned(), |n| n.to_string());
    let text = format!(
        "kernelize key state v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        enc(Some(&k.id)),
        enc(Some(&k.name)),
        enc(Some(&k.hash)),
        enc(Some(&k.role)),
        enc(k.collections.as_deref()),
        k.created_ms,
        num(k.expires_ms),
        num(k.revoked_ms),
        enc(k.rotated_to.as_deref()),
    );
    // Quotas joined the row later: a key without any digests as it always did.
    let text = if k.quota.is_set() {
        let q = &k.quota;
        format!("{text}\nquota {} {} {}", num(q.records), num(q.bytes), num(q.requests_per_day))
    } else {
        text
    };
    crate::auth::hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

/// The `detail` of a `keys.state` entry: the digest first, then a readable summary.
pub fn key_state_detail(k: &KeyRow) -> String {
    let ms = |m: Option<i64>| m.map_or_else(|| "-".to_owned(), crate::state::rfc3339);
    let q = &k.quota;
    let n = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let quota = if q.is_set() {
        format!(" quota=records:{},bytes:{},requests_per_day:{}", n(q.records), n(q.bytes), n(q.requests_per_day))
    } else {
        String::new()
    };
    let detail = format!(
        "state={} role={} collections={} expires={} revoked={} rotated_to={}{quota}",
        key_state_digest(k),
        k.role,
        k.collections.as_deref().unwrap_or("all"),
        ms(k.expires_ms),
        ms(k.revoked_ms),
        k.rotated_to.as_deref().unwrap_or("-"),
    );
    bounded(&detail, MAX_DETAIL)
}

/// A signed checkpoint of the head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format of the line (1).
    pub v: u32,
    /// The head's sequence number (entries in the log).
    pub seq: i64,
    /// The head's hash.
    pub hash: String,
    /// When it was written (unix milliseconds).
    pub ts_ms: i64,
    /// ed25519 signature of [`Checkpoint::signed_bytes`], hex.
    pub sig: String,
}

impl Checkpoint {
    /// What the signature covers.
    pub fn signed_bytes(seq: i64, hash: &str, ts_ms: i64) -> Vec<u8> {
        format!("kernelize audit checkpoint v1\n{seq}\n{hash}\n{ts_ms}").into_bytes()
    }
}

/// The audit chain's secrets (kept in the data directory, mode 0600, never in the
/// database): the HMAC key and the checkpoint signing key; and the checkpoint file.
pub struct AuditKeys {
    mac: hmac::Key,
    signer: Ed25519KeyPair,
    checkpoints: PathBuf,
    /// Whether the HMAC key was created by this load (a fresh data directory).
    pub created: bool,
    write: parking_lot::Mutex<()>,
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKeys").field("checkpoints", &self.checkpoints).finish_non_exhaustive()
    }
}

fn random32() -> anyhow::Result<Vec<u8>> {
    let mut b = vec![0u8; 32];
    SystemRandom::new().fill(&mut b).map_err(|_| anyhow::anyhow!("the system's random number generator failed"))?;
    Ok(b)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

impl AuditKeys {
    /// Loads `<data_dir>/audit-key` (32 bytes) and `<data_dir>/audit-checkpoint.pk8`
    /// (ed25519 PKCS#8), creating them (0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<AuditKeys> {
        fs_err::create_dir_all(data_dir)?;
        let key_path = data_dir.join(KEY_FILE);
        let created = !key_path.exists();
        if created {
            kernelize_kernel::keys::write_private(&key_path, &random32()?)?;
        }
        let pk8_path = data_dir.join(SIGNING_FILE);
        if !pk8_path.exists() {
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("could not generate the audit checkpoint key"))?;
            kernelize_kernel::keys::write_private(&pk8_path, doc.as_ref())?;
        }
        let mut keys = Self::open(data_dir)?.ok_or_else(|| anyhow::anyhow!("{} vanished", key_path.display()))?;
        keys.created = created;
        Ok(keys)
    }

    /// Loads the keys of a data directory without creating them; `None` when it has no
    /// `audit-key` (a server that never keyed its chain).
    pub fn open(data_dir: &Path) -> anyhow::Result<Option<AuditKeys>> {
        let key_path = data_dir.join(KEY_FILE);
        if !key_path.exists() {
            return Ok(None);
        }
        let key = fs_err::read(&key_path)?;
        anyhow::ensure!(key.len() == 32, "{}: expected 32 bytes, found {}", key_path.display(), key.len());
        let pk8_path = data_dir.join(SIGNING_FILE);
        let pk8 = fs_err::read(&pk8_path)?;
        let signer = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pk8)
            .map_err(|e| anyhow::anyhow!("{}: not an ed25519 PKCS#8 key: {e}", pk8_path.display()))?;
        Ok(Some(AuditKeys {
            mac: hmac::Key::new(hmac::HMAC_SHA256, &key),
            signer,
            checkpoints: data_dir.join(CHECKPOINT_FILE),
            created: false,
            write: parking_lot::Mutex::new(()),
        }))
    }

    /// The HMAC key of the chain.
    pub fn mac(&self) -> &hmac::Key {
        &self.mac
    }

    /// The version-2 hash of `e` under this key.
    pub fn hash(&self, e: &AuditEntry) -> String {
        keyed_hash(&self.mac, e)
    }

    /// Appends a signed checkpoint of the head `(seq, hash)` to the checkpoint file and
    /// syncs it (blocking I/O: call from the blocking pool or at startup/shutdown).
    pub fn write_checkpoint(&self, seq: i64, hash: &str) -> anyhow::Result<()> {
        let ts_ms = crate::state::now_ms();
        let sig = self.signer.sign(&Checkpoint::signed_bytes(seq, hash, ts_ms));
        let cp = Checkpoint { v: 1, seq, hash: hash.to_owned(), ts_ms, sig: crate::auth::hex(sig.as_ref()) };
        let mut line = serde_json::to_string(&cp)?;
        line.push('\n');
        let _g = self.write.lock();
        let mut opts = fs_err::OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        {
            use fs_err::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&self.checkpoints)?;
        f.write_all(line.as_bytes())?;
        f.sync_data()?;
        Ok(())
    }

    /// Reads the checkpoint file and checks every line's signature. A last line without
    /// its newline (a write cut off by a crash) is skipped; any other bad line is an
    /// error naming its line number.
    pub fn read_checkpoints(&self) -> Result<Vec<Checkpoint>, String> {
        let text = match fs_err::read_to_string(&self.checkpoints) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let public = UnparsedPublicKey::new(&ED25519, self.signer.public_key().as_ref().to_vec());
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        let mut out = Vec::new();
        for (i, line) in complete.split('\n').enumerate().filter(|(_, l)| !l.is_empty()) {
            let what = || format!("{} line {}", self.checkpoints.display(), i + 1);
            let cp: Checkpoint = serde_json::from_str(line).map_err(|e| format!("{}: {e}", what()))?;
            let sig = unhex(&cp.sig).ok_or_else(|| format!("{}: signature is not hex", what()))?;
            if cp.v != 1 || public.verify(&Checkpoint::signed_bytes(cp.seq, &cp.hash, cp.ts_ms), &sig).is_err() {
                return Err(format!("{}: the checkpoint's signature does not verify", what()));
            }
            out.push(cp);
        }
        Ok(out)
    }
}

/// How often the head is checkpointed when it moved (besides after every admin action
/// and at shutdown).
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Checkpoints the head now, then every [`CHECKPOINT_EVERY`] while the server lives.
pub async fn spawn_checkpointer(state: &std::sync::Arc<crate::state::AppState>) -> anyhow::Result<()> {
    let mut last = state.checkpoint_head(None).await.map_err(|e| anyhow::anyhow!("audit checkpoint: {e}"))?;
    let weak = std::sync::Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(st) = weak.upgrade() else { break };
            match st.checkpoint_head(last).await {
                Ok(seq) => last = seq,
                Err(e) => tracing::warn!(error = %e, "audit checkpoint failed; will retry"),
            }
        }
    });
    Ok(())
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AuditVerdict {
    /// Entries checked.
    pub entries: i64,
    /// The head hash.
    pub head_hash: String,
    /// The first keyed (version 2) entry, if any.
    pub keyed_from: Option<i64>,
    /// Signed checkpoints checked, and the highest sequence number they name.
    pub checkpoints: usize,
    /// The highest checkpointed sequence number.
    pub checkpoint_seq: Option<i64>,
    /// API keys cross-checked against their last recorded state.
    pub keys_checked: usize,
    /// The first problem, if any.
    pub problem: Option<String>,
}

/// Everything [`verify`] checks the log against.
#[derive(Debug, Default)]
pub struct VerifyInput<'a> {
    /// The head row.
    pub head: Option<(i64, String)>,
    /// The data directory's audit keys; `None` when it has none.
    pub keys: Option<&'a AuditKeys>,
    /// The rows of `api_keys` (`None`: do not cross-check keys).
    pub key_rows: Option<&'a [KeyRow]>,
    /// The checkpoints, read before the entries (`None`: read them from `keys` now).
    pub checkpoints: Option<Result<Vec<Checkpoint>, String>>,
}

/// Checks a log in order: sequence numbers 1, 2, … without gaps, each `prev_hash` equal
/// to the hash before it, each hash recomputed (SHA-256 for version 1, HMAC for version
/// 2; no version-1 entry after a version-2 one, the first version-2 entry an
/// `audit.keyed` marker), the last entry equal to the head; then that every signed
/// checkpoint names an entry of this chain with its hash (a cut below a checkpoint, a
/// rewrite or a head rollback fails); then that every API key row is in the state the
/// chain last recorded for it, and every recorded key still has a row.
pub fn verify(entries: impl IntoIterator<Item = AuditEntry>, input: &VerifyInput<'_>) -> AuditVerdict {
    let mut v = AuditVerdict {
        entries: 0,
        head_hash: GENESIS.to_string(),
        keyed_from: None,
        checkpoints: 0,
        checkpoint_seq: None,
        keys_checked: 0,
        problem: None,
    };
    v.problem = check(entries, input, &mut v).err();
    v
}

fn check(
    entries: impl IntoIterator<Item = AuditEntry>,
    input: &VerifyInput<'_>,
    v: &mut AuditVerdict,
) -> Result<(), String> {
    let mut prev = GENESIS.to_string();
    let mut n = 0i64;
    let mut hashes: Vec<String> = Vec::new();
    let mut key_states: HashMap<String, (String, i64)> = HashMap::new();
    for e in entries {
        let expect = n + 1;
        if e.seq != expect {
            return Err(format!("entry {expect} is missing (found {} next): entries were removed", e.seq));
        }
        if e.prev_hash != prev {
            return Err(format!("entry {}: prev_hash does not match entry {}'s hash", e.seq, n));
        }
        let recomputed = match (e.version, input.keys) {
            (VERSION_UNKEYED, _) if v.keyed_from.is_some() => {
                return Err(format!(
                    "entry {}: an unkeyed entry after keyed ones (from entry {}): entries were rewritten",
                    e.seq,
                    v.keyed_from.unwrap_or_default()
                ));
            }
            (VERSION_UNKEYED, _) => chain_hash(&e),
            (VERSION_KEYED, None) => {
                return Err(format!(
                    "entry {}: keyed, but this data directory has no {KEY_FILE} to check it with",
                    e.seq
                ));
            }
            (VERSION_KEYED, Some(k)) => {
                if v.keyed_from.is_none() {
                    if e.action != ACTION_KEYED {
                        return Err(format!("entry {}: the first keyed entry is not an {ACTION_KEYED} marker", e.seq));
                    }
                    v.keyed_from = Some(e.seq);
                }
                k.hash(&e)
            }
            (other, _) => return Err(format!("entry {}: unknown version {other}", e.seq)),
        };
        if recomputed != e.hash {
            return Err(format!("entry {}: contents do not match its hash: the entry was edited or forged", e.seq));
        }
        if e.version == VERSION_KEYED && e.action == ACTION_KEY_STATE {
            let digest = e.detail.strip_prefix("state=").and_then(|d| d.get(..64)).unwrap_or("").to_owned();
            key_states.insert(e.target.clone(), (digest, e.seq));
        }
        prev = e.hash.clone();
        hashes.push(e.hash);
        n = e.seq;
        v.entries = n;
        v.head_hash = prev.clone();
    }
    let (head_seq, head_hash) = input.head.clone().unwrap_or((0, GENESIS.to_string()));
    if head_seq != n || head_hash != prev {
        return Err(format!(
            "the log ends at entry {n} but its head names entry {head_seq}: entries were removed from the end \
             or the head was altered"
        ));
    }
    let Some(keys) = input.keys else { return Ok(()) };
    if n > 0 && v.keyed_from.is_none() {
        return Err(format!(
            "this data directory has an {KEY_FILE} but the log has no keyed entry: the keyed entries were \
             rewritten or removed"
        ));
    }
    let cps = match &input.checkpoints {
        Some(c) => c.clone()?,
        None => keys.read_checkpoints()?,
    };
    v.checkpoints = cps.len();
    v.checkpoint_seq = cps.iter().map(|c| c.seq).max();
    if n > 0 && cps.is_empty() {
        return Err(format!("the log has {n} entries but {CHECKPOINT_FILE} holds no checkpoint: it was removed"));
    }
    for cp in &cps {
        if cp.seq > n {
            return Err(format!(
                "a signed checkpoint names entry {} but the log ends at entry {n}: entries were removed from the \
                 end and the head rolled back",
                cp.seq
            ));
        }
        let at = if cp.seq == 0 { GENESIS } else { hashes[(cp.seq - 1) as usize].as_str() };
        if at != cp.hash {
            return Err(format!(
                "a signed checkpoint of entry {} does not match the log's entry {}: the log was rewritten",
                cp.seq, cp.seq
            ));
        }
    }
    let Some(rows) = input.key_rows else { return Ok(()) };
    for r in rows {
        match key_states.get(&r.id) {
            None => {
                return Err(format!(
                    "API key {} is in api_keys but its state was never recorded in the audit log: the row was \
                     inserted outside the server",
                    r.id
                ));
            }
            Some((digest, seq)) if *digest != key_state_digest(r) => {
                return Err(format!(
                    "API key {}: its row differs from the state recorded at entry {seq} (e.g. un-revoked, \
                     extended or re-scoped outside the server)",
                    r.id
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(gone) = key_states.keys().find(|id| !rows.iter().any(|r| &r.id == *id)) {
        return Err(format!("API key {gone} is recorded in the audit log but its row was deleted"));
    }
    v.keys_checked = rows.len();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, prev: &str) -> AuditEntry {
        AuditEntry {
            seq,
            ts_ms: 1000 + seq,
            request_id: format!("r{seq}"),
            actor: "key:abc".into(),
            action: "records.upsert".into(),
            target: "docs".into(),
            outcome: "ok".into(),
            detail: "records=1".into(),
            version: VERSION_UNKEYED,
            prev_hash: prev.to_owned(),
            hash: String::new(),
        }
    }

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut e = entry(seq, &prev);
                e.hash = chain_hash(&e);
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn head_of(log: &[AuditEntry]) -> VerifyInput<'static> {
        VerifyInput { head: log.last().map(|e| (e.seq, e.hash.clone())), ..Default::default() }
    }

    #[test]
    fn detects_edits_removals_and_truncation() {
        let log = chain(5);
        let head = head_of(&log);
        assert_eq!(verify(log.clone(), &head).problem, None);
        let mut edited = log.clone();
        edited[2].outcome = "denied".into();
        assert!(verify(edited, &head).problem.unwrap().contains("entry 3"));
        let mut removed = log.clone();
        removed.remove(1);
        assert!(verify(removed, &head).problem.unwrap().contains("entry 2 is missing"));
        let truncated = log[..4].to_vec();
        assert!(verify(truncated, &head).problem.unwrap().contains("removed from the end"));
        // Removing an entry and renumbering the rest breaks the chain.
        let mut renumbered = log.clone();
        renumbered.remove(1);
        for (i, e) in renumbered.iter_mut().enumerate() {
            e.seq = i as i64 + 1;
        }
        assert!(verify(renumbered, &head).problem.is_some());
        assert_eq!(verify(Vec::new(), &VerifyInput::default()).problem, None);
    }

    #[test]
    fn unkeyed_entries_stay_verifiable_before_a_keyed_tail() {
        let dir = tempfile::tempdir().unwrap();
        let keys = AuditKeys::load_or_create(dir.path()).unwrap();
        let mut log = chain(3);
        let mut prev = log[2].hash.clone();
        for seq in 4..=6 {
            let mut e = entry(seq, &prev);
            e.version = VERSION_KEYED;
            if seq == 4 {
                e.action = ACTION_KEYED.into();
            }
            e.hash = keys.hash(&e);
            prev = e.hash.clone();
            log.push(e);
        }
        keys.write_checkpoint(6, &prev).unwrap();
        let input = VerifyInput { keys: Some(&keys), ..head_of(&log) };
        let v = verify(log.clone(), &input);
        assert_eq!((v.problem.as_deref(), v.keyed_from, v.checkpoints), (None, Some(4), 1));
        // An unkeyed rehash of a keyed entry is refused.
        let mut downgraded = log.clone();
        downgraded[4].version = VERSION_UNKEYED;
        downgraded[4].hash = chain_hash(&downgraded[4]);
        assert!(verify(downgraded, &input).problem.is_some());
        // A keyed entry without the key, and an entry cut below the checkpoint.
        assert!(verify(log.clone(), &head_of(&log)).problem.unwrap().contains("no audit-key"));
        let cut = log[..5].to_vec();
        let input = VerifyInput { keys: Some(&keys), ..head_of(&cut) };
        assert!(verify(cut, &input).problem.unwrap().contains("checkpoint names entry 6"));
    }

    #[test]
    fn bounded_cuts_on_a_char_boundary_and_says_so() {
        assert_eq!(bounded("short", 10), "short");
        let s = "é".repeat(200); // 400 bytes
        let b = bounded(&s, 255);
        assert!(b.starts_with(&"é".repeat(127)));
        assert!(b.ends_with("…[cut 146 bytes]"), "{b}");
    }

    #[test]
    fn checkpoint_lines_are_signed() {
        let dir = tempfile::tempdir().unwrap();
        let keys = AuditKeys::load_or_create(dir.path()).unwrap();
        keys.write_checkpoint(3, GENESIS).unwrap();
        assert_eq!(keys.read_checkpoints().unwrap().len(), 1);
        let path = dir.path().join(CHECKPOINT_FILE);
        let text = fs_err::read_to_string(&path).unwrap().replace("\"seq\":3", "\"seq\":2");
        fs_err::write(&path, format!("{text}{{\"torn")).unwrap();
        assert!(keys.read_checkpoints().unwrap_err().contains("line 1"));
    }
}
