//! The recursive PGM-style index: building, searching, sizes.

use std::fmt;
use std::ops::Range;

use crate::pla::{OptimalPla, predict};
use crate::search::{lower_bound_branchless, lower_bound_linear, lower_bound_sampled};
use crate::{Error, Result};

/// Default error bound for [`PgmIndex::build`] callers that have no reason to
/// pick another. Chosen by measurement (`crates/learned/BENCH_RESULTS.md`):
/// on 100M uniform keys, lookups took 873 / 714 / 642 / 731 / 1013 ns for
/// epsilon 16 / 32 / 64 / 128 / 256. Smaller bounds give narrower windows but
/// a bigger index whose upper levels stop fitting in cache (2.4 MB at 16);
/// larger ones read more cache lines per window. At 64 the index is 0.0016
/// bytes per key (0.02% of the keys) and the window is 130 keys, 17 lines.
pub const DEFAULT_EPSILON: usize = 64;

/// Largest accepted error bound. Larger bounds only make windows wider than a
/// plain binary search would scan.
pub const MAX_EPSILON: usize = 1 << 20;

/// Error bound of the upper levels (the index over segment first keys). Small,
/// because upper levels are tiny and each level costs one window search.
pub(crate) const EPSILON_RECURSIVE: usize = 4;

/// Recursion stops once a level has at most this many segments; the top level
/// is then searched directly.
pub(crate) const TOP_MAX_SEGMENTS: usize = 1;

/// Upper levels use a counting search for windows up to this width.
const LINEAR_WINDOW_MAX: usize = 16;

/// One linear piece: predicted position `intercept + slope * (key - first_key)`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub(crate) struct Seg {
    pub slope: f64,
    pub intercept: f64,
}

/// One level of the index: `keys[i]` is the first key covered by segment `i`.
/// `segs` has one entry more than `keys`: a sentinel `{0, len_below}` so that
/// segment `i` can always read segment `i + 1` to clamp its prediction.
#[derive(Clone, PartialEq)]
pub(crate) struct Level {
    pub keys: Vec<u64>,
    pub segs: Vec<Seg>,
}

impl Level {
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Window `[lo, hi)` of positions in the array below (of length
    /// `len_below`) that contains the lower bound of the key the segment `s`
    /// was asked about; `dx = key - keys[s]`.
    #[inline(always)]
    fn window(&self, s: usize, key: u64, eps: i64, len_below: usize) -> (usize, usize) {
        let seg = self.segs[s];
        let next = self.segs[s + 1];
        let dx = key.saturating_sub(self.keys[s]);
        // Clamping with the next segment's prediction at its own first key keeps
        // the bound for keys in the gap between this segment's last point and
        // the next segment's first point (see docs/format/learned-index.md).
        let p = predict(seg.slope, seg.intercept, dx).min(predict(next.slope, next.intercept, 0));
        let len = i64::try_from(len_below).unwrap_or(i64::MAX);
        let lo = p.saturating_sub(eps).clamp(0, len);
        let hi = p.saturating_add(eps.saturating_add(2)).clamp(lo, len);
        // Both are in 0..=len_below, which is a usize.
        (lo as usize, hi as usize)
    }
}

/// An error-bounded piecewise-linear learned index over a sorted `u64` array.
///
/// [`PgmIndex::search`] returns a window of at most `2 * epsilon + 2` positions
/// guaranteed to hold the lower bound of a key; [`PgmIndex::lower_bound`]
/// finishes the job with a search over that window that fetches all its cache
/// lines at once.
///
/// The index does not own the keys: it is built on a slice and queried with
/// the same slice (an immutable segment file's key column, for instance).
#[derive(Clone, PartialEq)]
pub struct PgmIndex {
    pub(crate) n: usize,
    pub(crate) epsilon: usize,
    pub(crate) epsilon_recursive: usize,
    /// `levels[0]` indexes the keys; `levels[l]` indexes `levels[l - 1].keys`.
    /// Empty iff `n == 0`.
    pub(crate) levels: Vec<Level>,
}

impl fmt::Debug for PgmIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgmIndex")
            .field("len", &self.n)
            .field("epsilon", &self.epsilon)
            .field("epsilon_recursive", &self.epsilon_recursive)
            .field("level_segments", &self.levels.iter().map(Level::len).collect::<Vec<_>>())
            .field("size_bytes", &self.size_bytes())
            .finish()
    }
}

/// The points the bottom level must fit, derived from sorted keys: for every
/// distinct key `k` first found at position `p`, the point `(k, p)`; and when
/// `k` is repeated (a run of length `r >= 2`) and `k + 1` is not itself a key,
/// also `(k + 1, p + r)`, the lower bound of every key strictly between `k` and
/// the next distinct key. Keys that occur once need no second point because
/// search windows carry one position of slack on the low side.
#[derive(Clone, Copy)]
struct Points<'a> {
    keys: &'a [u64],
    i: usize,
    pending: Option<(u64, u64)>,
}

impl<'a> Points<'a> {
    fn new(keys: &'a [u64]) -> Self {
        Points { keys, i: 0, pending: None }
    }
}

impl Iterator for Points<'_> {
    type Item = (u64, u64);

    #[inline]
    fn next(&mut self) -> Option<(u64, u64)> {
        if let Some(p) = self.pending.take() {
            return Some(p);
        }
        let k = *self.keys.get(self.i)?;
        let start = self.i;
        let mut end = start + 1;
        while end < self.keys.len() && self.keys[end] == k {
            end += 1;
        }
        self.i = end;
        if end - start >= 2 && k != u64::MAX && self.keys.get(end) != Some(&(k + 1)) {
            self.pending = Some((k + 1, end as u64));
        }
        Some((k, start as u64))
    }
}

/// Builds one level over sorted `keys` (non-empty) with error bound `eps`.
fn build_level(keys: &[u64], eps: usize, pla: &mut OptimalPla) -> Level {
    let eps_i = i64::try_from(eps).unwrap_or(i64::MAX);
    let mut out_keys = Vec::new();
    let mut out_segs = Vec::new();
    let mut it = Points::new(keys);
    loop {
        let start = it;
        let Some((first_x, first_y)) = it.next() else {
            break;
        };
        let mut fit_eps = eps as u64;
        loop {
            pla.reset(fit_eps);
            let mut cur = start;
            let mut count = 0usize;
            loop {
                let before = cur;
                match cur.next() {
                    Some((x, y)) if pla.add(x, y) => count += 1,
                    Some(_) => {
                        cur = before;
                        break;
                    }
                    None => break,
                }
            }
            let fit = pla.fit();
            // Verify with exactly the prediction used at query time. The fit is
            // exact in rational arithmetic; this catches floating-point rounding.
            let ok = !test_hooks::fail_verification()
                && start.take(count).all(|(x, y)| {
                    let p = predict(fit.slope, fit.intercept, x - fit.first_x);
                    let y = y as i64;
                    p >= y - eps_i && p <= y + eps_i
                });
            if ok {
                out_keys.push(fit.first_x);
                out_segs.push(Seg { slope: fit.slope, intercept: fit.intercept });
                it = cur;
                break;
            }
            if fit_eps == 0 {
                // A one-point segment is always exact (positions are < 2^53).
                out_keys.push(first_x);
                out_segs.push(Seg { slope: 0.0, intercept: first_y as f64 });
                it = start;
                it.next();
                break;
            }
            fit_eps /= 2;
        }
    }
    out_segs.push(Seg { slope: 0.0, intercept: keys.len() as f64 });
    out_keys.shrink_to_fit();
    out_segs.shrink_to_fit();
    Level { keys: out_keys, segs: out_segs }
}

/// Fault injection for the refit path, which floating-point rounding
/// triggers too rarely to test otherwise.
mod test_hooks {
    #[cfg(test)]
    thread_local! {
        pub(crate) static FAIL_VERIFICATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Whether the next verification must be treated as failed.
    #[cfg(test)]
    pub(super) fn fail_verification() -> bool {
        FAIL_VERIFICATIONS.with(|c| {
            let left = c.get();
            c.set(left.saturating_sub(1));
            left > 0
        })
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(super) fn fail_verification() -> bool {
        false
    }
}

impl PgmIndex {
    /// Builds the index over sorted (non-decreasing; duplicates allowed) keys
    /// with error bound `epsilon` (`1..=MAX_EPSILON`).
    ///
    /// # Errors
    /// [`Error::InvalidEpsilon`] for an out-of-range bound, [`Error::Unsorted`]
    /// (with the first offending index) for unsorted keys.
    pub fn build(keys: &[u64], epsilon: usize) -> Result<PgmIndex> {
        Self::build_with(keys, epsilon, EPSILON_RECURSIVE)
    }

    pub(crate) fn build_with(keys: &[u64], epsilon: usize, epsilon_recursive: usize) -> Result<PgmIndex> {
        if !(1..=MAX_EPSILON).contains(&epsilon) {
            return Err(Error::InvalidEpsilon(epsilon));
        }
        if !(1..=MAX_EPSILON).contains(&epsilon_recursive) {
            return Err(Error::InvalidEpsilon(epsilon_recursive));
        }
        if let Some(i) = keys.windows(2).position(|w| w[0] > w[1]) {
            return Err(Error::Unsorted { index: i + 1 });
        }
        let mut levels = Vec::new();
        if !keys.is_empty() {
            let mut pla = OptimalPla::default();
            levels.push(build_level(keys, epsilon, &mut pla));
            loop {
                let below = &levels[levels.len() - 1];
                if below.len() <= TOP_MAX_SEGMENTS {
                    break;
                }
                let next = build_level(&below.keys, epsilon_recursive, &mut pla);
                if next.len() >= below.len() {
                    break;
                }
                levels.push(next);
            }
        }
        levels.shrink_to_fit();
        Ok(PgmIndex { n: keys.len(), epsilon, epsilon_recursive, levels })
    }

    /// Half-open window `lo..hi` of positions in the indexed keys such that the
    /// lower bound of `key` (the first `i` with `keys[i] >= key`, or
    /// `keys.len()`) satisfies `lo <= lower_bound < hi`, or `lower_bound == hi
    /// == keys.len()` when no key is `>= key`. So `lo + keys[lo..hi]
    /// .partition_point(|k| *k < key)` is the lower bound. The width `hi - lo`
    /// is at most `2 * epsilon + 2`.
    #[inline]
    pub fn search(&self, key: u64) -> Range<usize> {
        let Some(bottom) = self.levels.first() else {
            return 0..0;
        };
        match bottom.keys.first() {
            Some(&first) if key > first => {}
            _ => return 0..1.min(self.n),
        }
        let s = self.bottom_segment(key);
        let (lo, hi) = bottom.window(s, key, self.epsilon as i64, self.n);
        lo..hi
    }

    /// Index of the last bottom-level segment whose first key is `<= key`.
    /// Requires `key > ` the first key.
    #[inline(always)]
    fn bottom_segment(&self, key: u64) -> usize {
        let levels = &self.levels[..];
        let Some(top) = levels.last() else {
            return 0;
        };
        if key == u64::MAX {
            return levels[0].len() - 1;
        }
        // Each level finds the last first-key <= key, i.e. the lower bound of
        // key + 1, minus one.
        let next_key = key + 1;
        let mut s = lower_bound_branchless(&top.keys, next_key).saturating_sub(1);
        let eps = self.epsilon_recursive as i64;
        for l in (1..levels.len()).rev() {
            let below = &levels[l - 1].keys;
            let (lo, hi) = levels[l].window(s, key, eps, below.len());
            let w = &below[lo..hi];
            let i = if w.len() <= LINEAR_WINDOW_MAX {
                lower_bound_linear(w, next_key)
            } else {
                lower_bound_branchless(w, next_key)
            };
            s = (lo + i).saturating_sub(1);
        }
        s
    }

    /// Exact lower bound of `key` in `keys` (the first `i` with `keys[i] >=
    /// key`, or `keys.len()`): [`PgmIndex::search`], then a search within the
    /// window that reads one key per cache line first (all those loads are
    /// independent, so the window's lines arrive from memory in parallel) and
    /// then at most 7 keys of one line already fetched. `keys` must be the
    /// slice the index was built on; with any other slice the result is
    /// unspecified but this never panics.
    #[inline]
    pub fn lower_bound(&self, keys: &[u64], key: u64) -> usize {
        let r = self.search(key);
        let hi = r.end.min(keys.len());
        let lo = r.start.min(hi);
        lo + lower_bound_sampled(&keys[lo..hi], key)
    }

    /// The error bound the index was built with.
    pub fn epsilon(&self) -> usize {
        self.epsilon
    }

    /// Number of keys indexed.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the index covers no keys.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Heap and inline bytes of the index structure, not counting the keys.
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.levels.capacity() * std::mem::size_of::<Level>()
            + self
                .levels
                .iter()
                .map(|l| {
                    l.keys.capacity() * std::mem::size_of::<u64>() + l.segs.capacity() * std::mem::size_of::<Seg>()
                })
                .sum::<usize>()
    }

    /// Number of linear pieces at the bottom level.
    pub fn segments(&self) -> usize {
        self.levels.first().map_or(0, Level::len)
    }

    /// Number of levels (0 for an empty index).
    pub fn height(&self) -> usize {
        self.levels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all(keys: &[u64], eps: usize) -> PgmIndex {
        let idx = PgmIndex::build(keys, eps).unwrap();
        let mut probes: Vec<u64> = vec![0, 1, u64::MAX, u64::MAX - 1];
        for &k in keys {
            probes.extend([k, k.wrapping_add(1), k.wrapping_sub(1)]);
        }
        for q in probes {
            let want = keys.partition_point(|k| *k < q);
            let r = idx.search(q);
            assert!(r.end <= keys.len() && r.start <= r.end, "{r:?}");
            assert!(r.end - r.start <= 2 * eps + 2, "{r:?} eps {eps}");
            assert!(r.contains(&want) || (want == keys.len() && r.end == want), "q={q} want={want} got {r:?}");
            assert_eq!(idx.lower_bound(keys, q), want, "q={q}");
        }
        idx
    }

    #[test]
    fn empty_and_single() {
        let idx = check_all(&[], 1);
        assert!(idx.is_empty());
        assert_eq!(idx.search(5), 0..0);
        assert_eq!(idx.segments(), 0);
        check_all(&[0], 1);
        check_all(&[u64::MAX], 1);
        check_all(&[42], 3);
    }

    #[test]
    fn dense_is_one_segment() {
        let keys: Vec<u64> = (0..100_000).collect();
        let idx = check_all(&keys, 8);
        assert_eq!(idx.segments(), 1);
        assert_eq!(idx.height(), 1);
    }

    #[test]
    fn long_duplicate_runs() {
        let mut keys = Vec::new();
        for k in [3u64, 4, 10, 11, 12, 1000, u64::MAX - 1, u64::MAX] {
            keys.extend(std::iter::repeat_n(k, 37));
        }
        keys.sort_unstable();
        for eps in [1, 2, 5, 64] {
            check_all(&keys, eps);
        }
        check_all(&vec![7u64; 1000], 1);
        check_all(&vec![u64::MAX; 300], 2);
        check_all(&vec![0u64; 300], 2);
    }

    #[test]
    fn extremes() {
        let mut keys: Vec<u64> = (0..500).collect();
        keys.extend((0..500).map(|i| u64::MAX - 499 + i));
        keys.extend((0..500).map(|i| (1u64 << 63) + i * 7_919));
        keys.sort_unstable();
        for eps in [1, 3, 16] {
            check_all(&keys, eps);
        }
    }

    #[test]
    fn pseudo_random_many_levels() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut keys: Vec<u64> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            })
            .collect();
        keys.sort_unstable();
        let idx = check_all(&keys, 1);
        assert!(idx.height() >= 3, "{idx:?}");
        check_all(&keys, 64);
    }

    #[test]
    fn refit_path_keeps_the_bound() {
        let keys: Vec<u64> = (0..5_000u64).map(|i| i * i + (i % 7) * 1_000).collect::<Vec<_>>();
        let mut keys = keys;
        keys.sort_unstable();
        let clean = PgmIndex::build(&keys, 8).unwrap();
        // Fail every verification for a while: segments are refitted with a
        // smaller internal bound and, past zero, become single points.
        super::test_hooks::FAIL_VERIFICATIONS.with(|c| c.set(200));
        let idx = check_all(&keys, 8);
        assert!(idx.segments() > clean.segments(), "{idx:?} vs {clean:?}");
        super::test_hooks::FAIL_VERIFICATIONS.with(|c| c.set(usize::MAX));
        let all_single = check_all(&keys, 8);
        assert_eq!(all_single.segments(), keys.len());
        super::test_hooks::FAIL_VERIFICATIONS.with(|c| c.set(0));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(PgmIndex::build(&[1, 2], 0), Err(Error::InvalidEpsilon(0))));
        assert!(matches!(PgmIndex::build(&[1, 2], MAX_EPSILON + 1), Err(Error::InvalidEpsilon(_))));
        assert!(matches!(PgmIndex::build(&[1, 3, 2], 4), Err(Error::Unsorted { index: 2 })));
    }

    #[test]
    fn other_slice_never_panics() {
        let keys: Vec<u64> = (0..10_000).map(|i| i * i).collect();
        let idx = PgmIndex::build(&keys, 4).unwrap();
        for q in [0, 5, 99_999_999, u64::MAX] {
            let _ = idx.lower_bound(&[], q);
            let _ = idx.lower_bound(&keys[..10], q);
        }
    }
}
