//! Hierarchical navigable small-world graphs (Malkov & Yashunin): a parallel builder
//! over full-precision vectors, a frozen form that lives in (mapped) bytes and is
//! searched without being rebuilt, and the search itself, generic over the [`Space`]
//! distances come from (f32, int8 or RaBitQ codes) and over a predicate that decides which
//! nodes may be returned (filters and deleted records) while every node stays navigable.
//!
//! Node numbers are the caller's (a segment's row positions); rows the builder is told to
//! skip get no links and are never reached.

use crate::space::F32Space;
use parking_lot::{Mutex, RwLock};
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;

/// Build parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HnswParams {
    /// Links per node on the upper layers (layer 0 keeps up to `2 * m`).
    pub m: usize,
    /// Beam width while building.
    pub ef_construction: usize,
    /// Seed of the level draw (builds are deterministic for one thread).
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> HnswParams {
        HnswParams { m: 16, ef_construction: 200, seed: 0x6b65_726e_656c }
    }
}

impl HnswParams {
    /// Links kept on layer 0.
    pub fn m0(&self) -> usize {
        self.m * 2
    }
}

/// A node with its distance to the query (smaller is closer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cand {
    /// Distance.
    pub d: f32,
    /// Node number.
    pub id: u32,
}

impl Eq for Cand {}
impl PartialOrd for Cand {
    #[inline]
    fn partial_cmp(&self, o: &Cand) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    #[inline]
    fn cmp(&self, o: &Cand) -> Ordering {
        self.d.total_cmp(&o.d).then(self.id.cmp(&o.id))
    }
}

/// Where distances come from during a search.
pub trait Space: Sync {
    /// A query prepared for this space (normalised, rotated, quantised…).
    type Query;
    /// Distance from a prepared query to a node.
    fn dist(&self, q: &Self::Query, node: u32) -> f32;
    /// Hints the CPU to fetch a node's data.
    #[inline]
    fn prefetch(&self, _node: u32) {}
}

/// A space that counts its distance computations (for a query's explain): searches
/// through it are separate monomorphic copies, so a search that is not explained pays
/// nothing for the count.
pub struct Counted<'a, S> {
    /// The space measured.
    pub inner: &'a S,
    /// Distances computed so far (one thread writes it: a plain load and store).
    pub count: std::sync::atomic::AtomicU64,
}

impl<'a, S: Space> Counted<'a, S> {
    /// Counts from zero.
    pub fn new(inner: &'a S) -> Counted<'a, S> {
        Counted { inner, count: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Distances computed.
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<S: Space> Space for Counted<'_, S> {
    type Query = S::Query;
    #[inline]
    fn dist(&self, q: &Self::Query, node: u32) -> f32 {
        use std::sync::atomic::Ordering::Relaxed;
        self.count.store(self.count.load(Relaxed) + 1, Relaxed);
        self.inner.dist(q, node)
    }
    #[inline]
    fn prefetch(&self, node: u32) {
        self.inner.prefetch(node);
    }
}

/// Read access to a graph's links.
pub trait Links: Sync {
    /// Entry node and its (top) level, if the graph has any node.
    fn entry(&self) -> Option<(u32, usize)>;
    /// Calls `f` with the neighbours of `node` on `layer`.
    fn with_neighbors<R>(&self, node: u32, layer: usize, f: impl FnOnce(&[u32]) -> R) -> R;
    /// Hints the CPU to fetch `node`'s layer-0 neighbour list.
    #[inline]
    fn prefetch_links(&self, _node: u32) {}
}

/// A visited set reused across searches on one thread (epoch-tagged, cleared in O(1)).
struct Visited {
    tags: Vec<u16>,
    epoch: u16,
}

impl Visited {
    fn reset(&mut self, n: usize) {
        if self.tags.len() < n {
            self.tags.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.tags.fill(0);
            self.epoch = 1;
        }
    }

    /// Marks `i`; true if it was not marked yet.
    #[inline]
    fn insert(&mut self, i: u32) -> bool {
        match self.tags.get_mut(i as usize) {
            Some(t) if *t != self.epoch => {
                *t = self.epoch;
                true
            }
            _ => false,
        }
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = const { RefCell::new(Visited { tags: Vec::new(), epoch: 0 }) };
}

fn with_visited<R>(n: usize, f: impl FnOnce(&mut Visited) -> R) -> R {
    VISITED.with(|v| match v.try_borrow_mut() {
        Ok(mut v) => {
            v.reset(n);
            f(&mut v)
        }
        // Re-entrant use on one thread (not expected): a fresh set.
        Err(_) => {
            let mut v = Visited { tags: Vec::new(), epoch: 0 };
            v.reset(n);
            f(&mut v)
        }
    })
}

/// Greedy descent on an upper layer: moves to the closest neighbour until none is closer.
fn greedy<S: Space, L: Links>(space: &S, links: &L, q: &S::Query, mut cur: Cand, layer: usize) -> Cand {
    loop {
        let next = links.with_neighbors(cur.id, layer, |ns| {
            let mut best = cur;
            for &n in ns {
                let d = space.dist(q, n);
                if d < best.d {
                    best = Cand { d, id: n };
                }
            }
            best
        });
        if next.id == cur.id {
            return cur;
        }
        cur = next;
    }
}

#[allow(clippy::too_many_arguments)] // the hot loop: kept monomorphic and flat
/// Beam search on one layer. Every node is explored; only nodes `allow` accepts enter the
/// result set. Returns up to `ef` results, closest first.
fn search_layer<S: Space, L: Links>(
    space: &S,
    links: &L,
    q: &S::Query,
    entries: &[Cand],
    ef: usize,
    layer: usize,
    n: usize,
    allow: &impl Fn(u32) -> bool,
) -> Vec<Cand> {
    with_visited(n, |visited| {
        // `todo` is a min-heap (by Reverse), `best` a max-heap of the current results.
        let mut todo: BinaryHeap<std::cmp::Reverse<Cand>> = BinaryHeap::with_capacity(ef * 2);
        let mut best: BinaryHeap<Cand> = BinaryHeap::with_capacity(ef + 1);
        for &e in entries {
            if visited.insert(e.id) {
                todo.push(std::cmp::Reverse(e));
                if allow(e.id) {
                    best.push(e);
                }
            }
        }
        while best.len() > ef {
            best.pop();
        }
        let mut bound = if best.len() >= ef { best.peek().map_or(f32::INFINITY, |c| c.d) } else { f32::INFINITY };
        let mut fresh: Vec<u32> = Vec::with_capacity(64);
        while let Some(std::cmp::Reverse(c)) = todo.pop() {
            if c.d > bound {
                break;
            }
            // The next node to expand is probably the heap's top: start loading its links.
            if let Some(std::cmp::Reverse(next)) = todo.peek() {
                links.prefetch_links(next.id);
            }
            // Collect the unvisited neighbours first and start loading all of them, so
            // their cache misses overlap instead of queueing one after another.
            fresh.clear();
            links.with_neighbors(c.id, layer, |ns| {
                for &nb in ns {
                    if visited.insert(nb) {
                        space.prefetch(nb);
                        fresh.push(nb);
                    }
                }
            });
            for &nb in &fresh {
                let d = space.dist(q, nb);
                if d < bound || best.len() < ef {
                    todo.push(std::cmp::Reverse(Cand { d, id: nb }));
                    if allow(nb) {
                        best.push(Cand { d, id: nb });
                        if best.len() > ef {
                            best.pop();
                        }
                        if best.len() >= ef {
                            bound = best.peek().map_or(f32::INFINITY, |c| c.d);
                        }
                    }
                }
            }
        }
        best.into_sorted_vec()
    })
}

/// Scores `ids` against a prepared query, closest first, loading rows a few ahead of the
/// one being scored (re-ranking a beam touches rows at random, like the walk does).
pub fn score<S: Space>(space: &S, q: &S::Query, ids: impl ExactSizeIterator<Item = u32> + Clone) -> Vec<Cand> {
    const AHEAD: usize = 8;
    let mut ahead = ids.clone();
    ahead.by_ref().take(AHEAD).for_each(|i| space.prefetch(i));
    let mut out: Vec<Cand> = ids
        .map(|id| {
            if let Some(next) = ahead.next() {
                space.prefetch(next);
            }
            Cand { d: space.dist(q, id), id }
        })
        .collect();
    out.sort_unstable();
    out
}

/// Searches a graph: greedy descent through the upper layers, then a beam of width
/// `max(ef, k)` on layer 0. Returns up to `max(ef, k)` allowed nodes, closest first (the
/// caller truncates to `k`, or reranks the whole pool).
pub fn search<S: Space, L: Links>(
    space: &S,
    links: &L,
    n: usize,
    q: &S::Query,
    k: usize,
    ef: usize,
    allow: &impl Fn(u32) -> bool,
) -> Vec<Cand> {
    let Some((ep, top)) = links.entry() else { return Vec::new() };
    let mut cur = Cand { d: space.dist(q, ep), id: ep };
    for layer in (1..=top).rev() {
        cur = greedy(space, links, q, cur, layer);
    }
    search_layer(space, links, q, &[cur], ef.max(k), 0, n, allow)
}

/// The heuristic of the paper (algorithm 4): walk candidates closest first and keep one
/// only if it is closer to the base node than to every node already kept.
fn select_neighbors(space: &F32Space<'_>, sorted: &[Cand], m: usize) -> Vec<u32> {
    let mut out: Vec<Cand> = Vec::with_capacity(m);
    for &c in sorted {
        if out.len() >= m {
            break;
        }
        if out.iter().all(|r| space.node_dist(c.id, r.id) >= c.d) {
            out.push(c);
        }
    }
    out.into_iter().map(|c| c.id).collect()
}

/// A graph under construction. Layer 0, which every node has and every walk spends its time
/// on, is one flat array of rows of `2m + 1` words (count, then neighbours), as the frozen
/// [`Graph`] lays it out, so expanding a node is one cache miss, not a chase through nested
/// lists. Walks read rows without locking (relaxed atomic loads); writers hold the row's
/// lock. A walk that races a writer may see a list half rewritten, which costs it at most a
/// detour: every word is a node number or `u32::MAX` (never a torn value), and the reader
/// drops words out of range. Upper layers, held by a few percent of the nodes, keep a
/// locked list per node and layer.
pub struct Builder<'a> {
    space: F32Space<'a>,
    params: HnswParams,
    levels: Vec<u8>,
    layer0: Vec<AtomicU32>,
    locks0: Vec<Mutex<()>>,
    /// Node `i`'s lists on layers `1..=levels[i]`.
    upper: Vec<Vec<Mutex<Vec<u32>>>>,
    entry: RwLock<Option<(u32, usize)>>,
}

impl Links for Builder<'_> {
    fn entry(&self) -> Option<(u32, usize)> {
        *self.entry.read()
    }

    #[inline]
    fn with_neighbors<R>(&self, node: u32, layer: usize, f: impl FnOnce(&[u32]) -> R) -> R {
        if layer == 0 {
            let row = self.row0(node);
            let Some((count, ids)) = row.split_first() else { return f(&[]) };
            let c = (count.load(Relaxed) as usize).min(ids.len());
            let n = self.levels.len() as u32;
            let mut stack = [0u32; 64];
            let mut heap = Vec::new();
            let buf: &mut [u32] = if c <= stack.len() {
                &mut stack
            } else {
                heap.resize(c, 0);
                &mut heap
            };
            let mut len = 0;
            for a in &ids[..c] {
                let x = a.load(Relaxed);
                if x < n {
                    buf[len] = x;
                    len += 1;
                }
            }
            return f(&buf[..len]);
        }
        match self.upper.get(node as usize).and_then(|l| l.get(layer - 1)) {
            Some(m) => f(&m.lock()),
            None => f(&[]),
        }
    }

    #[inline]
    fn prefetch_links(&self, node: u32) {
        crate::distance::prefetch(self.row0(node));
    }
}

impl<'a> Builder<'a> {
    /// Prepares a graph over `space`'s nodes, drawing each node's level.
    pub fn new(space: F32Space<'a>, params: HnswParams) -> Builder<'a> {
        let n = space.len();
        let ml = 1.0 / (params.m.max(2) as f64).ln();
        let mut rng = rand::rngs::StdRng::seed_from_u64(params.seed);
        let levels: Vec<u8> = (0..n)
            .map(|_| {
                let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
                ((-u.ln() * ml).floor() as usize).min(30) as u8
            })
            .collect();
        let w0 = params.m0() + 1;
        let layer0 = (0..n * w0).map(|i| AtomicU32::new(if i % w0 == 0 { 0 } else { u32::MAX })).collect();
        let locks0 = (0..n).map(|_| Mutex::new(())).collect();
        let upper = levels
            .iter()
            .map(|&l| (0..l as usize).map(|_| Mutex::new(Vec::with_capacity(params.m))).collect())
            .collect();
        Builder { space, params, levels, layer0, locks0, upper, entry: RwLock::new(None) }
    }

    /// Node `node`'s layer-0 row (count, then neighbours).
    #[inline]
    fn row0(&self, node: u32) -> &[AtomicU32] {
        let w = self.params.m0() + 1;
        let i = node as usize;
        self.layer0.get(i * w..(i + 1) * w).unwrap_or(&[])
    }

    /// Runs `f` on `node`'s list on `layer` under the list's lock and stores the list.
    fn with_list_mut<R>(&self, node: u32, layer: usize, f: impl FnOnce(&mut Vec<u32>) -> R) -> Option<R> {
        if layer > 0 {
            let slot = self.upper.get(node as usize)?.get(layer - 1)?;
            return Some(f(&mut slot.lock()));
        }
        let _guard = self.locks0.get(node as usize)?.lock();
        let row = self.row0(node);
        let (count, ids) = row.split_first()?;
        let c = (count.load(Relaxed) as usize).min(ids.len());
        let mut list: Vec<u32> = ids[..c].iter().map(|a| a.load(Relaxed)).collect();
        let r = f(&mut list);
        // Neighbours first, then the count: a reader that still sees the old count reads
        // new (valid) words, never unwritten ones beyond the new list.
        list.truncate(ids.len());
        for (a, &x) in ids.iter().zip(&list) {
            a.store(x, Relaxed);
        }
        count.store(list.len() as u32, Relaxed);
        Some(r)
    }

    /// Inserts every node `include` accepts, in parallel on the current rayon pool.
    pub fn insert_all(&self, include: impl Fn(u32) -> bool + Sync) {
        use rayon::prelude::*;
        let n = self.levels.len() as u32;
        let Some(first) = (0..n).find(|&i| include(i)) else { return };
        self.insert(first);
        (first + 1..n).into_par_iter().filter(|&i| include(i)).for_each(|i| self.insert(i));
    }

    /// Inserts one node.
    pub fn insert(&self, node: u32) {
        let level = self.levels[node as usize] as usize;
        let current = *self.entry.read();
        let start = match current {
            Some(s) => s,
            None => {
                let mut e = self.entry.write();
                match *e {
                    None => {
                        *e = Some((node, level));
                        return;
                    }
                    Some(s) => s,
                }
            }
        };
        let (ep, top) = start;
        let q = self.space.node_query(node);
        let n = self.levels.len();
        let mut cur = Cand { d: self.space.dist(&q, ep), id: ep };
        for layer in (level + 1..=top).rev() {
            cur = greedy(&self.space, self, &q, cur, layer);
        }
        let mut entries = vec![cur];
        for layer in (0..=level.min(top)).rev() {
            let found =
                search_layer(&self.space, self, &q, &entries, self.params.ef_construction, layer, n, &|i| i != node);
            let chosen = select_neighbors(&self.space, &found, self.params.m);
            let cap = if layer == 0 { self.params.m0() } else { self.params.m };
            // Concurrent inserts may already have linked back to `node` on this layer (they
            // found it through a higher layer); keep those links, or a node whose only
            // in-link is here becomes unreachable.
            self.with_list_mut(node, layer, |own| {
                if own.is_empty() {
                    own.clone_from(&chosen);
                } else {
                    let mut cands: Vec<Cand> = chosen
                        .iter()
                        .chain(own.iter())
                        .map(|&x| Cand { d: self.space.node_dist(node, x), id: x })
                        .collect();
                    cands.sort_unstable();
                    cands.dedup_by_key(|c| c.id);
                    *own = if cands.len() <= cap {
                        cands.iter().map(|c| c.id).collect()
                    } else {
                        select_neighbors(&self.space, &cands, cap)
                    };
                }
            });
            for &nb in &chosen {
                self.connect(nb, node, layer, cap);
            }
            if !found.is_empty() {
                entries = found;
            }
        }
        if level > top {
            let mut e = self.entry.write();
            if e.is_none_or(|(_, t)| level > t) {
                *e = Some((node, level));
            }
        }
    }

    /// Adds `new` to `node`'s list on `layer`, shrinking it with the heuristic when full.
    fn connect(&self, node: u32, new: u32, layer: usize, cap: usize) {
        self.with_list_mut(node, layer, |list| {
            if list.contains(&new) {
                return;
            }
            if list.len() < cap {
                list.push(new);
                return;
            }
            let mut cands: Vec<Cand> = list
                .iter()
                .chain(std::iter::once(&new))
                .map(|&x| Cand { d: self.space.node_dist(node, x), id: x })
                .collect();
            cands.sort_unstable();
            *list = select_neighbors(&self.space, &cands, cap);
        });
    }

    /// Marks nothing deleted but rewires around `node` as if it were: every node that links
    /// to it gets the deleted node's neighbours as replacement candidates (the heuristic
    /// picks among them), and the node loses its own links. Used by in-place deletes on a
    /// graph still being built; frozen graphs keep deleted nodes navigable instead.
    pub fn unlink(&self, node: u32) {
        let top = self.levels.get(node as usize).map_or(0, |&l| l as usize);
        for layer in 0..=top {
            let removed: Vec<u32> = self.with_list_mut(node, layer, std::mem::take).unwrap_or_default();
            let cap = if layer == 0 { self.params.m0() } else { self.params.m };
            // In-neighbours: scan every list on this layer (repair is rare; correctness
            // matters more than speed here).
            for (other, &level) in self.levels.iter().enumerate() {
                let other = other as u32;
                if other == node || (level as usize) < layer {
                    continue;
                }
                self.with_list_mut(other, layer, |list| {
                    if !list.contains(&node) {
                        return;
                    }
                    let mut cands: Vec<Cand> = list
                        .iter()
                        .chain(removed.iter())
                        .filter(|&&x| x != node && x != other)
                        .map(|&x| Cand { d: self.space.node_dist(other, x), id: x })
                        .collect();
                    cands.sort_unstable();
                    cands.dedup_by_key(|c| c.id);
                    *list = select_neighbors(&self.space, &cands, cap);
                });
            }
        }
        let mut e = self.entry.write();
        if e.is_some_and(|(ep, _)| ep == node) {
            // New entry: the highest remaining node.
            *e = self
                .levels
                .iter()
                .enumerate()
                .filter(|&(i, _)| i as u32 != node && self.row0(i as u32).first().is_some_and(|c| c.load(Relaxed) > 0))
                .max_by_key(|&(i, &l)| (l, std::cmp::Reverse(i)))
                .map(|(i, &l)| (i as u32, l as usize));
        }
    }

    /// Freezes the graph into its byte form (see [`Graph`]).
    pub fn freeze(&self) -> GraphParts {
        let n = self.levels.len();
        let m = self.params.m;
        let m0 = self.params.m0();
        let mut layer0 = vec![u32::MAX; n * (m0 + 1)];
        let mut upper_start = Vec::with_capacity(n + 1);
        let mut upper = Vec::new();
        let mut blocks = 0u32;
        for (i, lists) in self.upper.iter().enumerate() {
            upper_start.push(blocks);
            let row = &mut layer0[i * (m0 + 1)..(i + 1) * (m0 + 1)];
            // Words past the count stay u32::MAX (the builder leaves stale ones there).
            self.with_neighbors(i as u32, 0, |l0| {
                row[0] = l0.len() as u32;
                row[1..1 + l0.len()].copy_from_slice(l0);
            });
            for list in lists {
                let list = list.lock();
                let mut block = vec![u32::MAX; m + 1];
                block[0] = list.len() as u32;
                block[1..1 + list.len()].copy_from_slice(&list);
                upper.extend_from_slice(&block);
                blocks += 1;
            }
        }
        upper_start.push(blocks);
        let (entry, top) = self.entry.read().map_or((u32::MAX, 0), |(e, t)| (e, t));
        GraphParts { n, m, entry, top, layer0, upper_start, upper }
    }
}

/// A graph's arrays, as written to and read from an index file.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphParts {
    /// Nodes.
    pub n: usize,
    /// Links per upper-layer node (layer 0 keeps `2 * m`).
    pub m: usize,
    /// Entry node (`u32::MAX` when empty).
    pub entry: u32,
    /// The entry's level.
    pub top: usize,
    /// `n` rows of `2m + 1` words: count, then neighbours.
    pub layer0: Vec<u32>,
    /// `n + 1` block numbers: node `i`'s upper layers are blocks `upper_start[i]..upper_start[i+1]`.
    pub upper_start: Vec<u32>,
    /// Blocks of `m + 1` words: count, then neighbours.
    pub upper: Vec<u32>,
}

/// A frozen graph over borrowed arrays (from a mapped index file).
#[derive(Debug, Clone, Copy)]
pub struct Graph<'a> {
    n: usize,
    m: usize,
    entry: Option<(u32, usize)>,
    layer0: &'a [u32],
    upper_start: &'a [u32],
    upper: &'a [u32],
}

/// Why graph arrays were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError(pub String);

impl<'a> Graph<'a> {
    /// Checks the arrays (shapes, counts, every neighbour in range) and wraps them.
    pub fn new(
        n: usize,
        m: usize,
        entry: u32,
        top: usize,
        layer0: &'a [u32],
        upper_start: &'a [u32],
        upper: &'a [u32],
    ) -> Result<Graph<'a>, GraphError> {
        let g = Graph::trusted(n, m, entry, top, layer0, upper_start, upper);
        g.validate()?;
        Ok(g)
    }

    /// Wraps arrays without checking them: for arrays [`Graph::new`] (or
    /// [`Graph::validate`]) already accepted, since searches re-create the view per query
    /// and validating every link each time would cost more than the search.
    pub fn trusted(
        n: usize,
        m: usize,
        entry: u32,
        top: usize,
        layer0: &'a [u32],
        upper_start: &'a [u32],
        upper: &'a [u32],
    ) -> Graph<'a> {
        let entry = if entry == u32::MAX { None } else { Some((entry, top)) };
        Graph { n, m, entry, layer0, upper_start, upper }
    }

    /// Checks shapes, counts, that every neighbour is in range and that the entry node's
    /// level matches the level table.
    pub fn validate(&self) -> Result<(), GraphError> {
        let Graph { n, m, entry, layer0, upper_start, upper } = *self;
        let err = |s: String| Err(GraphError(s));
        if m == 0 || m > 1024 {
            return err(format!("m = {m} out of range"));
        }
        let (w0, wu) = (2 * m + 1, m + 1);
        if layer0.len() != n * w0 {
            return err(format!("layer 0 has {} words, expected {}", layer0.len(), n * w0));
        }
        if upper_start.len() != n + 1 || !upper.len().is_multiple_of(wu) {
            return err("upper-layer table has the wrong shape".into());
        }
        let blocks = upper.len() / wu;
        if upper_start.first() != Some(&0)
            || upper_start.windows(2).any(|w| w[0] > w[1])
            || upper_start.last().is_some_and(|&b| b as usize != blocks)
        {
            return err("upper-layer starts do not run from 0, never decreasing, to the block count".into());
        }
        let check = |row: &[u32], cap: usize, what: &str| -> Result<(), GraphError> {
            let c = row[0] as usize;
            if c > cap {
                return Err(GraphError(format!("{what}: {c} links, at most {cap}")));
            }
            if let Some(bad) = row[1..1 + c].iter().find(|&&x| x as usize >= n) {
                return Err(GraphError(format!("{what}: neighbour {bad} out of range (n = {n})")));
            }
            Ok(())
        };
        for (i, row) in layer0.chunks_exact(w0).enumerate() {
            check(row, 2 * m, &format!("node {i} layer 0"))?;
        }
        for (b, row) in upper.chunks_exact(wu).enumerate() {
            check(row, m, &format!("upper block {b}"))?;
        }
        match entry {
            Some((e, top))
                if (e as usize) >= n || upper_start[e as usize + 1] - upper_start[e as usize] != top as u32 =>
            {
                err(format!("entry node {e} (level {top}) does not match the level table"))
            }
            _ => Ok(()),
        }
    }

    /// Nodes.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

impl Links for Graph<'_> {
    fn entry(&self) -> Option<(u32, usize)> {
        self.entry
    }

    #[inline]
    fn prefetch_links(&self, node: u32) {
        let w = 2 * self.m + 1;
        let i = node as usize;
        crate::distance::prefetch(self.layer0.get(i * w..(i + 1) * w).unwrap_or(&[]));
    }

    #[inline]
    fn with_neighbors<R>(&self, node: u32, layer: usize, f: impl FnOnce(&[u32]) -> R) -> R {
        let i = node as usize;
        let row = if layer == 0 {
            let w = 2 * self.m + 1;
            self.layer0.get(i * w..(i + 1) * w)
        } else {
            let b = self.upper_start.get(i).map_or(0, |&s| s as usize) + layer - 1;
            let end = self.upper_start.get(i + 1).map_or(0, |&s| s as usize);
            let w = self.m + 1;
            if b < end { self.upper.get(b * w..(b + 1) * w) } else { None }
        };
        match row {
            Some(r) => {
                let c = (r[0] as usize).min(r.len() - 1);
                f(&r[1..1 + c])
            }
            None => f(&[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::{inverse_norms, prepare_query};
    use kernelize_store::Metric;
    use rand::Rng;

    /// Clustered random vectors (as embeddings are), `n * dim`.
    pub(crate) fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let centers: Vec<Vec<f32>> =
            (0..32).map(|_| (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect()).collect();
        (0..n)
            .flat_map(|_| {
                let c = &centers[rng.random_range(0..centers.len())];
                c.iter().map(|x| x + rng.random_range(-0.6f32..0.6)).collect::<Vec<_>>()
            })
            .collect()
    }

    fn recall(metric: Metric) -> f32 {
        let (n, dim) = (3000, 32);
        let v = clustered(n, dim, 1);
        let inv = inverse_norms(&v, dim);
        let space = F32Space::new(&v, dim, metric, &inv);
        let b = Builder::new(space, HnswParams { m: 12, ef_construction: 100, seed: 1 });
        b.insert_all(|_| true);
        let parts = b.freeze();
        let g = Graph::new(n, parts.m, parts.entry, parts.top, &parts.layer0, &parts.upper_start, &parts.upper)
            .expect("valid graph");
        let queries = clustered(100, dim, 2);
        let mut hits = 0;
        for q in queries.chunks_exact(dim) {
            let pq = prepare_query(metric, q);
            let mut exact: Vec<Cand> = (0..n as u32).map(|i| Cand { d: space.dist(&pq, i), id: i }).collect();
            exact.sort_unstable();
            let got = search(&space, &g, n, &pq, 10, 64, &|_| true);
            hits += got.iter().take(10).filter(|c| exact[..10].iter().any(|e| e.id == c.id)).count();
        }
        hits as f32 / 1000.0
    }

    #[test]
    fn recall_against_exact_search() {
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            let r = recall(metric);
            // Inner product is not a metric (a point need not be its own nearest
            // neighbour), which costs graph indexes a few points; cosine and l2 are metrics.
            let floor = if metric == Metric::Dot { 0.88 } else { 0.95 };
            assert!(r >= floor, "{metric}: recall@10 {r}");
        }
    }

    #[test]
    fn unlink_repairs_and_hides_nodes() {
        let (n, dim) = (1500, 16);
        let v = clustered(n, dim, 5);
        let space = F32Space::new(&v, dim, Metric::L2, &[]);
        let b = Builder::new(space, HnswParams { m: 8, ef_construction: 64, seed: 2 });
        b.insert_all(|_| true);
        let deleted: Vec<u32> = (0..n as u32).filter(|i| i % 3 == 0).collect();
        for &d in &deleted {
            b.unlink(d);
        }
        let parts = b.freeze();
        let g = Graph::new(n, parts.m, parts.entry, parts.top, &parts.layer0, &parts.upper_start, &parts.upper)
            .expect("valid graph");
        let mut hits = 0;
        let queries = clustered(50, dim, 6);
        for q in queries.chunks_exact(dim) {
            let q = q.to_vec();
            let mut exact: Vec<Cand> =
                (0..n as u32).filter(|i| i % 3 != 0).map(|i| Cand { d: space.dist(&q, i), id: i }).collect();
            exact.sort_unstable();
            let got = search(&space, &g, n, &q, 10, 64, &|_| true);
            assert!(got.iter().all(|c| c.id % 3 != 0), "an unlinked node was reached");
            hits += got.iter().take(10).filter(|c| exact[..10].iter().any(|e| e.id == c.id)).count();
        }
        let r = hits as f32 / 500.0;
        assert!(r >= 0.9, "recall after unlinking a third: {r}");
    }

    #[test]
    fn graph_rejects_bad_arrays() {
        let parts = GraphParts {
            n: 2,
            m: 1,
            entry: 0,
            top: 0,
            layer0: vec![1, 1, u32::MAX, 1, 7, u32::MAX],
            upper_start: vec![0, 0, 0],
            upper: vec![],
        };
        let e = Graph::new(2, 1, 0, 0, &parts.layer0, &parts.upper_start, &parts.upper).unwrap_err();
        assert!(e.0.contains("out of range"), "{e:?}");
        assert!(Graph::new(2, 1, 5, 0, &[1, 1, 0, 0, 0, 0], &[0, 0, 0], &[]).is_err());
    }
}
