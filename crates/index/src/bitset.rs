//! A fixed-size set of node numbers `0..len`, one bit each, stored in `u64` words.
//!
//! Filters evaluate to a [`Bitset`] per segment; searches consult it per candidate.
//! Bits at positions `>= len` are always zero, whatever operation ran, so [`Bitset::count`]
//! and [`Bitset::iter_ones`] never see a node that does not exist.

/// A set of node numbers in `0..len()`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Bitset {
    words: Vec<u64>,
    len: usize,
}

impl Bitset {
    /// The empty set over `0..n`.
    pub fn new(n: usize) -> Self {
        Bitset { words: vec![0; n.div_ceil(64)], len: n }
    }

    /// The set of every node in `0..n`.
    pub fn full(n: usize) -> Self {
        let mut set = Bitset { words: vec![u64::MAX; n.div_ceil(64)], len: n };
        set.clear_tail();
        set
    }

    /// The set over `0..n` holding `ids` (any order, duplicates allowed; ascending is fastest
    /// to produce, as posting lists are).
    ///
    /// # Panics
    /// If an id is `>= n`.
    pub fn from_sorted(n: usize, ids: impl IntoIterator<Item = u32>) -> Self {
        let mut set = Bitset::new(n);
        for id in ids {
            set.set(id);
        }
        set
    }

    /// The number of positions (`n`), not the number of members (see [`Bitset::count`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set has no positions at all (`n == 0`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether at least one node is a member.
    pub fn any(&self) -> bool {
        self.words.iter().any(|&w| w != 0)
    }

    /// Adds node `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    #[inline]
    pub fn set(&mut self, i: u32) {
        let i = i as usize;
        assert!(i < self.len, "bitset: node {i} out of range 0..{}", self.len);
        self.words[i / 64] |= 1 << (i % 64);
    }

    /// Removes node `i` (nothing happens when `i >= len()`).
    #[inline]
    pub fn clear(&mut self, i: u32) {
        let i = i as usize;
        if let Some(w) = self.words.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }

    /// Whether node `i` is a member (`false` when `i >= len()`).
    #[inline]
    pub fn get(&self, i: u32) -> bool {
        let i = i as usize;
        self.words.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    /// The number of members.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Keeps only the members also in `other` (intersection). Positions `other` lacks count
    /// as absent.
    pub fn and(&mut self, other: &Bitset) {
        for (i, w) in self.words.iter_mut().enumerate() {
            *w &= other.words.get(i).copied().unwrap_or(0);
        }
    }

    /// Adds the members of `other` (union). Members of `other` at positions `>= len()` are
    /// ignored.
    pub fn or(&mut self, other: &Bitset) {
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w |= o;
        }
        self.clear_tail();
    }

    /// Removes the members of `other` (difference).
    pub fn and_not(&mut self, other: &Bitset) {
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w &= !o;
        }
    }

    /// Complements the set within `0..len()`.
    pub fn not(&mut self) {
        for w in &mut self.words {
            *w = !*w;
        }
        self.clear_tail();
    }

    /// The members in ascending order.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let base = (i * 64) as u32;
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros();
                w &= w - 1;
                Some(base + bit)
            })
        })
    }

    /// The underlying words, bit `i % 64` of word `i / 64` standing for node `i`.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Zeroes the bits past `len` in the last word.
    fn clear_tail(&mut self) {
        let rem = self.len % 64;
        if rem != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1u64 << rem) - 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn model(set: &Bitset) -> BTreeSet<u32> {
        set.iter_ones().collect()
    }

    #[test]
    fn basics() {
        let mut s = Bitset::new(130);
        assert_eq!((s.len(), s.count(), s.any()), (130, 0, false));
        s.set(0);
        s.set(64);
        s.set(129);
        assert!(s.get(0) && s.get(64) && s.get(129) && !s.get(1) && !s.get(130) && !s.get(u32::MAX));
        assert_eq!(s.iter_ones().collect::<Vec<_>>(), [0, 64, 129]);
        s.clear(64);
        s.clear(5000);
        assert_eq!(s.count(), 2);
        s.not();
        assert_eq!(s.count(), 128);
        assert!(!s.get(0) && s.get(1) && !s.get(129));
        assert_eq!(Bitset::full(130).count(), 130);
        assert_eq!(Bitset::full(128).count(), 128);
        assert_eq!(Bitset::full(0).count(), 0);
        assert!(Bitset::new(0).is_empty());
        assert_eq!(Bitset::from_sorted(10, [1, 3, 3, 9]).iter_ones().collect::<Vec<_>>(), [1, 3, 9]);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn set_out_of_range_panics() {
        Bitset::new(10).set(10);
    }

    #[test]
    fn mismatched_lengths_keep_the_tail_clear() {
        let mut a = Bitset::new(3);
        a.or(&Bitset::full(100));
        assert_eq!(a.count(), 3);
        let mut b = Bitset::full(100);
        b.and(&Bitset::full(3));
        assert_eq!(model(&b), [0, 1, 2].into());
    }

    fn sets() -> impl Strategy<Value = (usize, BTreeSet<u32>, BTreeSet<u32>)> {
        (0usize..300).prop_flat_map(|n| {
            let ids = proptest::collection::btree_set(0..n.max(1) as u32, 0..=n.min(80));
            (Just(n), ids.clone(), ids)
        })
    }

    proptest! {
        #[test]
        fn operations_match_a_set_model((n, x, y) in sets()) {
            let x: BTreeSet<u32> = x.into_iter().filter(|&i| (i as usize) < n).collect();
            let y: BTreeSet<u32> = y.into_iter().filter(|&i| (i as usize) < n).collect();
            let a = Bitset::from_sorted(n, x.iter().copied());
            let b = Bitset::from_sorted(n, y.iter().copied());
            prop_assert_eq!(model(&a), x.clone());
            prop_assert_eq!(a.count(), x.len());
            for i in 0..n as u32 + 3 {
                prop_assert_eq!(a.get(i), x.contains(&i));
            }
            let mut and = a.clone();
            and.and(&b);
            prop_assert_eq!(model(&and), x.intersection(&y).copied().collect::<BTreeSet<_>>());
            let mut or = a.clone();
            or.or(&b);
            prop_assert_eq!(model(&or), x.union(&y).copied().collect::<BTreeSet<_>>());
            let mut diff = a.clone();
            diff.and_not(&b);
            prop_assert_eq!(model(&diff), x.difference(&y).copied().collect::<BTreeSet<_>>());
            let mut not = a.clone();
            not.not();
            let all: BTreeSet<u32> = (0..n as u32).collect();
            prop_assert_eq!(model(&not), all.difference(&x).copied().collect::<BTreeSet<_>>());
            prop_assert_eq!(not.count(), n - x.len());
            not.not();
            prop_assert_eq!(not, a);
        }
    }
}
