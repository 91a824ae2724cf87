//! Versions and snapshots: an immutable view (memtable, frozen memtables, segments)
//! that a reader holds while writers publish newer versions.

use crate::error::Result;
use crate::memtable::{Entry, Key, Memtable};
use crate::record::Record;
use crate::segment::Segment;
use std::sync::Arc;

/// One published state of a collection.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    /// Sequence number of the last write visible in this version.
    pub seq: u64,
    /// The active memtable.
    pub mem: Memtable,
    /// Frozen memtables being flushed, newest first.
    pub imm: Vec<Arc<Memtable>>,
    /// Live segments, newest first.
    pub segments: Vec<Arc<Segment>>,
    /// Vector dimension.
    pub dim: usize,
}

/// A consistent, immutable view of a collection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Snapshot {
    v: Arc<Version>,
}

/// Where a merged entry lives, so callers can skip decoding what they don't need.
enum At<'a> {
    Mem(&'a Entry),
    Seg(&'a Segment, usize),
}

impl At<'_> {
    fn is_tombstone(&self) -> bool {
        match self {
            At::Mem(e) => e.record.is_none(),
            At::Seg(s, i) => s.is_tombstone(*i),
        }
    }

    fn entry(&self) -> Result<Entry> {
        match self {
            At::Mem(e) => Ok((*e).clone()),
            At::Seg(s, i) => s.entry(*i).map(|(_, e)| e),
        }
    }
}

enum Cursor<'a> {
    Mem(Box<dyn Iterator<Item = (&'a Key, &'a Entry)> + 'a>),
    Seg(&'a Segment, usize),
}

impl<'a> Cursor<'a> {
    fn next(&mut self) -> Result<Option<(Key, At<'a>)>> {
        match self {
            Cursor::Mem(it) => Ok(it.next().map(|(k, e)| (k.clone(), At::Mem(e)))),
            Cursor::Seg(seg, pos) => {
                if *pos >= seg.len() {
                    return Ok(None);
                }
                let i = *pos;
                *pos += 1;
                let key = Key { hash: seg.hashes().get(i).copied().unwrap_or(0), id: Arc::from(seg.id(i)?) };
                Ok(Some((key, At::Seg(seg, i))))
            }
        }
    }
}

/// K-way merge of the sources in key order; on equal keys the newest source wins and
/// older versions are skipped.
struct Merge<'a> {
    cursors: Vec<Cursor<'a>>,
    heads: Vec<Option<(Key, At<'a>)>>,
    started: bool,
    failed: bool,
}

impl<'a> Merge<'a> {
    fn new(v: &'a Version, from: Option<&Key>) -> Merge<'a> {
        let mut cursors = vec![Cursor::Mem(Box::new(v.mem.range_from(from)))];
        for m in &v.imm {
            cursors.push(Cursor::Mem(Box::new(m.range_from(from))));
        }
        for s in &v.segments {
            let start = match from {
                None => 0,
                Some(k) => {
                    let mut i = s.learned_index().lower_bound(s.hashes(), k.hash);
                    while i < s.len() && s.hashes()[i] == k.hash && s.id(i).is_ok_and(|id| id < &*k.id) {
                        i += 1;
                    }
                    i
                }
            };
            cursors.push(Cursor::Seg(s, start));
        }
        let heads = cursors.iter().map(|_| None).collect();
        Merge { cursors, heads, started: false, failed: false }
    }

    fn next_item(&mut self) -> Result<Option<(Key, At<'a>)>> {
        if !self.started {
            self.started = true;
            for i in 0..self.cursors.len() {
                self.heads[i] = self.cursors[i].next()?;
            }
        }
        let mut best: Option<usize> = None;
        for (i, h) in self.heads.iter().enumerate() {
            if let Some((k, _)) = h
                && best.is_none_or(|b| self.heads[b].as_ref().is_some_and(|(bk, _)| k < bk))
            {
                best = Some(i);
            }
        }
        let Some(b) = best else { return Ok(None) };
        let winner = self.heads[b].take();
        let Some((key, at)) = winner else { return Ok(None) };
        self.heads[b] = self.cursors[b].next()?;
        for i in 0..self.heads.len() {
            while self.heads[i].as_ref().is_some_and(|(k, _)| *k == key) {
                self.heads[i] = self.cursors[i].next()?;
            }
        }
        Ok(Some((key, at)))
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<(Key, Entry)>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_item().and_then(|o| o.map(|(k, at)| at.entry().map(|e| (k, e))).transpose()) {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl Snapshot {
    pub(crate) fn new(v: Arc<Version>) -> Snapshot {
        Snapshot { v }
    }

    pub(crate) fn version(&self) -> &Version {
        &self.v
    }

    /// Sequence number of the last write this snapshot sees.
    pub fn seq(&self) -> u64 {
        self.v.seq
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.v.dim
    }

    /// The live segments, newest first (for index builders and backups).
    pub fn segments(&self) -> &[Arc<Segment>] {
        &self.v.segments
    }

    /// Looks up one record: memtable, frozen memtables, then segments, newest first.
    pub fn get(&self, id: &str) -> Result<Option<Arc<Record>>> {
        Ok(self.get_entry(id)?.and_then(|e| e.record))
    }

    /// The newest entry (record or tombstone) for an id.
    pub fn get_entry(&self, id: &str) -> Result<Option<Entry>> {
        let key = Key::of(id);
        if let Some(e) = self.v.mem.get(&key) {
            return Ok(Some(e.clone()));
        }
        for m in &self.v.imm {
            if let Some(e) = m.get(&key) {
                return Ok(Some(e.clone()));
            }
        }
        for s in &self.v.segments {
            if let Some(e) = s.get(&key)? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// True when a source newer than live segment `seg` (memtables, newer segments) holds
    /// an entry for `key`: the segment's row for that key is then overwritten or deleted.
    pub fn shadowed(&self, seg: usize, key: &Key) -> Result<bool> {
        if self.v.mem.get(key).is_some() || self.v.imm.iter().any(|m| m.get(key).is_some()) {
            return Ok(true);
        }
        for s in self.v.segments.iter().take(seg) {
            if s.find(key)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// True when anything newer than live segment `seg` exists (so rows may be shadowed).
    pub fn has_newer_than(&self, seg: usize) -> bool {
        seg > 0 || !self.v.mem.is_empty() || self.v.imm.iter().any(|m| !m.is_empty())
    }

    /// The memtables' newest entries (active and frozen merged), tombstones included, in
    /// key order: what a search scans exactly on top of the segments' indexes.
    pub fn memtable(&self) -> Vec<(Key, Entry)> {
        self.memtable_entries().filter_map(|r| r.ok()).collect()
    }

    /// Every key's newest entry in key order, tombstones included.
    pub fn entries(&self) -> impl Iterator<Item = Result<(Key, Entry)>> + '_ {
        Merge::new(&self.v, None)
    }

    /// The memtable part only (active and frozen), merged, tombstones included.
    pub(crate) fn memtable_entries(&self) -> impl Iterator<Item = Result<(Key, Entry)>> + use<> {
        let v = Version { segments: Vec::new(), ..(*self.v).clone() };
        let owned: Vec<Result<(Key, Entry)>> = Merge::new(&v, None).collect();
        owned.into_iter()
    }

    /// Live records in key order (by key hash, then id), starting after `after` if given.
    pub fn scan(&self, after: Option<&str>) -> impl Iterator<Item = Result<Arc<Record>>> + '_ {
        let from = after.map(Key::of);
        let skip = from.clone();
        Merge::new(&self.v, from.as_ref()).filter_map(move |r| match r {
            Ok((k, _)) if skip.as_ref() == Some(&k) => None,
            Ok((_, e)) => e.record.map(Ok),
            Err(e) => Some(Err(e)),
        })
    }

    /// Number of live records (a merge over keys; vectors are not decoded).
    pub fn count(&self) -> Result<u64> {
        let mut m = Merge::new(&self.v, None);
        let mut n = 0;
        while let Some((_, at)) = m.next_item()? {
            if !at.is_tombstone() {
                n += 1;
            }
        }
        Ok(n)
    }
}
