//! A set of byte ranges `[start, end)` over u64 positions, kept merged.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included};

/// Disjoint, non-adjacent ranges, keyed by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    map: BTreeMap<u64, u64>,
    total: u64,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes covered.
    pub fn covered(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Add `[s, e)`; returns how many bytes were new.
    pub fn insert(&mut self, mut s: u64, mut e: u64) -> u64 {
        if s >= e {
            return 0;
        }
        let mut removed = 0;
        if let Some((&ps, &pe)) = self.map.range(..=s).next_back() {
            if pe >= s {
                if pe >= e {
                    return 0;
                }
                if self.map.range((Excluded(ps), Included(e))).next().is_none() {
                    // The common in-order case: the range before grows, nothing after it is
                    // reached; updated in place (no remove and insert).
                    *self.map.get_mut(&ps).expect("found above") = e;
                    self.total += e - pe;
                    return e - pe;
                }
                s = ps;
                removed += pe - ps;
                self.map.remove(&ps);
            }
        }
        while let Some((&a, &b)) = self.map.range(s..=e).next() {
            self.map.remove(&a);
            removed += b - a;
            e = e.max(b);
        }
        self.map.insert(s, e);
        let added = (e - s) - removed;
        self.total += added;
        added
    }

    /// Remove `[s, e)`.
    pub fn remove(&mut self, s: u64, e: u64) {
        if s >= e {
            return;
        }
        let mut hit: Vec<(u64, u64)> = Vec::new();
        if let Some((&ps, &pe)) = self.map.range(..s).next_back() {
            if pe > s {
                hit.push((ps, pe));
            }
        }
        hit.extend(self.map.range(s..e).map(|(&a, &b)| (a, b)));
        for (a, b) in hit {
            self.map.remove(&a);
            self.total -= b - a;
            if a < s {
                self.map.insert(a, s);
                self.total += s - a;
            }
            if b > e {
                self.map.insert(e, b);
                self.total += b - e;
            }
        }
    }

    /// True if every byte of `[s, e)` is in the set (an empty range always is).
    pub fn contains(&self, s: u64, e: u64) -> bool {
        if s >= e {
            return true;
        }
        matches!(self.map.range(..=s).next_back(), Some((_, &pe)) if pe >= e)
    }

    /// The first position at or after `at` that is not in the set.
    pub fn first_gap(&self, at: u64) -> u64 {
        match self.map.range(..=at).next_back() {
            Some((_, &pe)) if pe > at => pe,
            _ => at,
        }
    }

    /// Up to `max` ranges of `[lo, hi)` that are not in the set, ascending.
    pub fn gaps(&self, lo: u64, hi: u64, max: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = self.first_gap(lo);
        while at < hi && out.len() < max {
            let next = self.map.range(at..).next();
            match next {
                Some((&a, &b)) if a < hi => {
                    if a > at {
                        out.push((at, a));
                    }
                    at = b;
                }
                _ => {
                    out.push((at, hi));
                    break;
                }
            }
        }
        out
    }

    /// The first range.
    pub fn first(&self) -> Option<(u64, u64)> {
        self.map.iter().next().map(|(&a, &b)| (a, b))
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.total = 0;
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&a, &b)| (a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basics() {
        let mut r = RangeSet::new();
        assert_eq!(r.insert(10, 20), 10);
        assert_eq!(r.insert(30, 40), 10);
        assert_eq!(r.insert(15, 35), 10);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 40)]);
        assert_eq!(r.insert(40, 41), 1, "adjacent ranges merge");
        assert_eq!(r.len(), 1);
        assert!(r.contains(10, 41) && !r.contains(9, 11));
        assert_eq!(r.gaps(0, 50, 10), vec![(0, 10), (41, 50)]);
        r.remove(20, 25);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 20), (25, 41)]);
        assert_eq!(r.covered(), 26);
        assert_eq!(r.first_gap(10), 20);
        assert_eq!(r.first_gap(5), 5);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Ins(u64, u64),
        Rem(u64, u64),
    }

    proptest! {
        #[test]
        fn matches_a_bitmap(ops in proptest::collection::vec(
            (any::<bool>(), 0u64..200, 0u64..40).prop_map(|(i, s, l)| if i { Op::Ins(s, s + l) } else { Op::Rem(s, s + l) }),
            0..60))
        {
            let mut r = RangeSet::new();
            let mut bits = vec![false; 260];
            for op in ops {
                match op {
                    Op::Ins(s, e) => {
                        let new = (s..e).filter(|&i| !bits[i as usize]).count() as u64;
                        prop_assert_eq!(r.insert(s, e), new);
                        for i in s..e { bits[i as usize] = true; }
                    }
                    Op::Rem(s, e) => {
                        r.remove(s, e);
                        for i in s..e { bits[i as usize] = false; }
                    }
                }
                prop_assert_eq!(r.covered(), bits.iter().filter(|b| **b).count() as u64);
            }
            // Ranges are disjoint and non-adjacent.
            let v: Vec<_> = r.iter().collect();
            for w in v.windows(2) { prop_assert!(w[0].1 < w[1].0); }
            let gaps = r.gaps(0, 260, usize::MAX);
            for i in 0..260u64 {
                let in_gap = gaps.iter().any(|&(a, b)| a <= i && i < b);
                prop_assert_eq!(in_gap, !bits[i as usize]);
                prop_assert_eq!(r.contains(i, i + 1), bits[i as usize]);
            }
        }
    }
}
