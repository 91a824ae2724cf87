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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_agree_with_partition_point() {
        let mut v: Vec<u64> = Vec::new();
        for len in 0..40u64 {
            v.clear();
            v.extend((0..len).map(|i| i / 3 * 2));
            for key in 0..(len + 3) {
                let want = v.partition_point(|k| *k < key);
                assert_eq!(lower_bound_branchless(&v, key), want);
                assert_eq!(lower_bound_linear(&v, key), want);
            }
        }
    }
}
