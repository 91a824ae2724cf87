//! The audit log: every write, authentication failure and admin action, as entries
//! chained by SHA-256 (each entry's hash covers its fields and the previous hash), with
//! the head (last sequence number and hash) kept beside them. [`verify`] finds any
//! edited, inserted or removed entry.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    /// When (unix milliseconds).
    pub ts_ms: i64,
    /// The request that caused it.
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
    /// Hash of the previous entry (hex SHA-256).
    pub prev_hash: String,
    /// Hash of this entry (hex SHA-256 over `prev_hash` and the fields above).
    pub hash: String,
}

/// The hash of an entry: SHA-256 over the previous hash and each field JSON-encoded on
/// its own line (so no field can run into the next).
pub fn chain_hash(e: &AuditEntry) -> String {
    let enc = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let text = format!(
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
    );
    crate::auth::hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AuditVerdict {
    /// Entries checked.
    pub entries: i64,
    /// The head hash (record it elsewhere to detect a rewrite of the whole log).
    pub head_hash: String,
    /// The first problem, if any.
    pub problem: Option<String>,
}

/// Checks a log in order against its head: sequence numbers 1, 2, … without gaps, each
/// `prev_hash` equal to the hash before it, each hash recomputed, and the last entry
/// equal to the head.
pub fn verify(entries: impl IntoIterator<Item = AuditEntry>, head: Option<(i64, String)>) -> AuditVerdict {
    let mut prev = GENESIS.to_string();
    let mut n = 0i64;
    let mut problem = None;
    for e in entries {
        let expect = n + 1;
        if e.seq != expect {
            problem = Some(format!("entry {expect} is missing (found {} next): entries were removed", e.seq));
            break;
        }
        if e.prev_hash != prev {
            problem = Some(format!("entry {}: prev_hash does not match entry {}'s hash", e.seq, n));
            break;
        }
        if chain_hash(&e) != e.hash {
            problem = Some(format!("entry {}: contents do not match its hash: the entry was edited", e.seq));
            break;
        }
        prev = e.hash;
        n = e.seq;
    }
    if problem.is_none() {
        let (head_seq, head_hash) = head.unwrap_or((0, GENESIS.to_string()));
        if head_seq != n || head_hash != prev {
            problem = Some(format!(
                "the log ends at entry {n} but its head names entry {head_seq}: entries were removed from the end \
                 or the head was altered"
            ));
        }
    }
    AuditVerdict { entries: n, head_hash: prev, problem }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut e = AuditEntry {
                    seq,
                    ts_ms: 1000 + seq,
                    request_id: format!("r{seq}"),
                    actor: "key:abc".into(),
                    action: "records.upsert".into(),
                    target: "docs".into(),
                    outcome: "ok".into(),
                    detail: "records=1".into(),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                e.hash = chain_hash(&e);
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn detects_edits_removals_and_truncation() {
        let log = chain(5);
        let head = Some((5, log[4].hash.clone()));
        assert_eq!(verify(log.clone(), head.clone()).problem, None);
        let mut edited = log.clone();
        edited[2].outcome = "denied".into();
        assert!(verify(edited, head.clone()).problem.unwrap().contains("entry 3"));
        let mut removed = log.clone();
        removed.remove(1);
        assert!(verify(removed, head.clone()).problem.unwrap().contains("entry 2 is missing"));
        let truncated = log[..4].to_vec();
        assert!(verify(truncated, head.clone()).problem.unwrap().contains("removed from the end"));
        // Removing an entry and renumbering the rest breaks the chain.
        let mut renumbered = log.clone();
        renumbered.remove(1);
        for (i, e) in renumbered.iter_mut().enumerate() {
            e.seq = i as i64 + 1;
        }
        assert!(verify(renumbered, head).problem.is_some());
        assert_eq!(verify(Vec::new(), None).problem, None);
    }
}
