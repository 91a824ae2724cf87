//! Small search kernels shared by the index and the benchmark.

use std::hint::select_unpredictable;

/// First `i` with `s[i] >= key` (or `s.len()`), by a branchless binary search:
/// the loop runs `ceil(log2(len))` times whatever the data, and each step is a
/// conditional move instead of a hard-to-predict branch.
#[inline]
pub(crate) fn lower_bound_branchless(s: &[u64], key: u64) -> usize {
    let mut size = s.len();
    if size == 0 {
        return 0;
    }
    let mut base = 0usize;
    while size > 1 {
        let half = size / 2;
        let mid = base + half;
        base = select_unpredictable(s[mid] < key, mid, base);
        size -= half;
    }
    base + usize::from(s[base] < key)
}

/// First `i` with `s[i] >= key` (or `s.len()`) by counting: every load is
/// independent of the others, so for a handful of cache lines the memory
/// accesses overlap instead of forming a dependent chain. Correct on any
/// sorted slice; meant for short ones.
#[inline]
pub(crate) fn lower_bound_linear(s: &[u64], key: u64) -> usize {
    s.iter().map(|&k| usize::from(k < key)).sum()
}

/// First `i` with `s[i] >= key` (or `s.len()`) for a window of a few cache
/// lines still in main memory: first one key per 64-byte line (`u64` at a
/// line-aligned address), whose loads are independent and overlap, to find
/// the line; then a count over at most 7 keys of a line already loaded. One
/// memory round trip instead of the `log2(len)` dependent ones of a binary
/// search, and few instructions. Correct for any sorted slice.
#[inline]
pub(crate) fn lower_bound_sampled(s: &[u64], key: u64) -> usize {
    const PER_LINE: usize = 64 / std::mem::size_of::<u64>();
    // Index of the first element that starts a cache line (u64 slices are
    // 8-byte aligned; any offset would still be correct, just slower).
    let off = (s.as_ptr().addr() / std::mem::size_of::<u64>()).wrapping_neg() % PER_LINE;
    let mut t = 0usize;
    let mut j = off;
    while j < s.len() {
        t += usize::from(s[j] < key);
        j += PER_LINE;
    }
    // The samples below `key` form a prefix of length `t`: the answer lies in
    // (sample t-1, sample t], i.e. within one line.
    let start = if t == 0 { 0 } else { off + PER_LINE * (t - 1) + 1 };
    let end = (off + PER_LINE * t).min(s.len());
    let start = start.min(end);
    start + lower_bound_linear(&s[start..end], key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_agree_with_partition_point() {
        let mut v: Vec<u64> = Vec::new();
        for len in 0..80u64 {
            v.clear();
            v.extend((0..len).map(|i| i / 3 * 2));
            for key in 0..(len + 3) {
                let want = v.partition_point(|k| *k < key);
                assert_eq!(lower_bound_branchless(&v, key), want);
                assert_eq!(lower_bound_linear(&v, key), want);
                for skip in 0..v.len().min(9) {
                    let w = &v[skip..];
                    let want = w.partition_point(|k| *k < key);
                    assert_eq!(lower_bound_sampled(w, key), want, "{w:?} {key}");
                }
            }
        }
    }
}
