//! The memtable: recent writes, as a persistent ordered map so a reader's snapshot is an
//! O(1) clone that later writes never change.

use crate::record::{Op, Record, key_hash};
use std::cmp::Ordering;
use std::sync::Arc;

/// The order of records everywhere in the engine: by 64-bit key hash, then by id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// xxh3-64 of the id.
    pub hash: u64,
    /// The id.
    pub id: Arc<str>,
}

impl Key {
    /// The key of an id.
    pub fn of(id: &str) -> Key {
        Key { hash: key_hash(id), id: Arc::from(id) }
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.hash.cmp(&other.hash).then_with(|| self.id.cmp(&other.id))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The newest version of one key: a record or a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Sequence number of the write that made this version.
    pub seq: u64,
    /// The record, or None for a delete.
    pub record: Option<Arc<Record>>,
}

/// Recent writes, newest version per key.
#[derive(Debug, Clone, Default)]
pub(crate) struct Memtable {
    map: imbl::OrdMap<Key, Entry>,
    bytes: usize,
    /// Highest sequence number applied (0 if none).
    pub max_seq: u64,
}

fn entry_bytes(key: &Key, e: &Entry) -> usize {
    let rec = e.record.as_ref().map_or(0, |r| {
        r.vector.len() * 4 + r.text.as_ref().map_or(0, String::len) + r.metadata.as_ref().map_or(0, |m| m.len() * 32)
    });
    64 + key.id.len() + rec
}

impl Memtable {
    /// Applies a batch written at sequence number `seq`.
    pub fn apply(&mut self, seq: u64, ops: &[Op]) {
        for op in ops {
            let key = Key::of(op.id());
            let entry = match op {
                Op::Upsert(r) => Entry { seq, record: Some(r.clone()) },
                Op::Delete(_) => Entry { seq, record: None },
            };
            self.bytes += entry_bytes(&key, &entry);
            if let Some(old) = self.map.insert(key.clone(), entry) {
                self.bytes = self.bytes.saturating_sub(entry_bytes(&key, &old));
            }
        }
        self.max_seq = self.max_seq.max(seq);
    }

    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.map.get(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries in key order, starting at the first key >= `from`.
    pub fn range_from(&self, from: Option<&Key>) -> impl Iterator<Item = (&Key, &Entry)> + '_ {
        let iter: Box<dyn Iterator<Item = (&Key, &Entry)>> = match from {
            Some(k) => Box::new(self.map.range(k.clone()..)),
            None => Box::new(self.map.iter()),
        };
        iter
    }
}
