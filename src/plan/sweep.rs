//! Sweep fallback: when the indexes miss, look for the next `min` file bytes (16-64) by a
//! linear search of snapshot ranges: first near the last alignment (an insertion or deletion
//! shifts it by a little), then through the gated banks.
//!
//! Every search is bounded: a [`Budget`] of snapshot bytes and of time per planning window
//! (both configurable), checked between chunks of at most [`CHUNK`] bytes, so a sweep can
//! never make planning slower than the budget allows. A found position is only a candidate:
//! the planner verifies and extends it on the real bytes like any index candidate.

use std::time::{Duration, Instant};

/// The most bytes scanned between budget checks.
pub const CHUNK: usize = 256 << 10;

/// What a window may still spend on sweeps.
#[derive(Debug, Clone)]
pub struct Budget {
    bytes_left: usize,
    deadline: Option<Instant>,
    per_bytes: usize,
    per_time: Option<Duration>,
    /// Snapshot bytes scanned since the budget was created (all windows).
    pub scanned: usize,
}

impl Budget {
    /// `bytes` per window, and `micros` per window (0 = no time bound).
    pub fn new(bytes: usize, micros: u64) -> Budget {
        let per_time = (micros > 0).then(|| Duration::from_micros(micros));
        Budget {
            bytes_left: bytes,
            deadline: per_time.map(|d| Instant::now() + d),
            per_bytes: bytes,
            per_time,
            scanned: 0,
        }
    }

    /// Start a new window's allowance.
    pub fn reset(&mut self) {
        self.bytes_left = self.per_bytes;
        self.deadline = self.per_time.map(|d| Instant::now() + d);
    }

    pub fn exhausted(&self) -> bool {
        self.bytes_left == 0 || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Take up to `want` bytes of allowance.
    fn take(&mut self, want: usize) -> usize {
        if self.exhausted() {
            return 0;
        }
        let n = want.min(self.bytes_left);
        self.bytes_left -= n;
        self.scanned += n;
        n
    }
}

/// The first position in `ranges` of `s` where `needle` occurs, scanning no more than the
/// budget allows (ranges are clamped to `s`). Positions are snapshot offsets.
pub fn find(
    s: &[u8],
    ranges: &[(usize, usize)],
    needle: &[u8],
    budget: &mut Budget,
) -> Option<usize> {
    let n = needle.len();
    if n == 0 {
        return None;
    }
    let finder = memchr::memmem::Finder::new(needle);
    for &(a, e) in ranges {
        let e = e.min(s.len());
        let mut at = a.min(e);
        while at + n <= e {
            // a chunk of starting positions [at, at + len)
            let len = budget.take((e - n + 1 - at).min(CHUNK));
            if len == 0 {
                return None;
            }
            if let Some(p) = finder.find(&s[at..at + len + n - 1]) {
                return Some(at + p);
            }
            at += len;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_finds_within_budget_and_never_scans_past_it() {
        let mut s = vec![0u8; 3 * CHUNK];
        crate::pob::prng::SplitMix64::new(1).fill(&mut s);
        let needle = s[2 * CHUNK + 100..2 * CHUNK + 116].to_vec();
        // enough budget: found where it is, across chunk boundaries
        let mut b = Budget::new(usize::MAX, 0);
        assert_eq!(
            find(&s, &[(0, s.len())], &needle, &mut b),
            Some(2 * CHUNK + 100)
        );
        // a match straddling a chunk edge is found too
        let edge = s[CHUNK - 5..CHUNK + 11].to_vec();
        let mut b = Budget::new(usize::MAX, 0);
        assert_eq!(find(&s, &[(0, s.len())], &edge, &mut b), Some(CHUNK - 5));
        // a budget smaller than the distance: not found, and no more scanned than allowed
        let mut b = Budget::new(CHUNK + 7, 0);
        assert_eq!(find(&s, &[(0, s.len())], &needle, &mut b), None);
        assert_eq!(b.scanned, CHUNK + 7);
        assert!(b.exhausted());
        assert_eq!(find(&s, &[(0, s.len())], &needle, &mut b), None);
        assert_eq!(b.scanned, CHUNK + 7, "an exhausted budget scans nothing");
        // the next window gets a fresh allowance
        b.reset();
        assert!(!b.exhausted());
        // ranges restrict the search
        let mut b = Budget::new(usize::MAX, 0);
        assert_eq!(find(&s, &[(0, 2 * CHUNK)], &needle, &mut b), None);
        assert_eq!(
            find(
                &s,
                &[(0, 10), (2 * CHUNK, 2 * CHUNK + 116)],
                &needle,
                &mut b
            ),
            Some(2 * CHUNK + 100)
        );
        // a zero time budget stops at once
        let mut b = Budget::new(usize::MAX, 1);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(find(&s, &[(0, s.len())], &needle, &mut b), None);
        assert_eq!(b.scanned, 0);
    }
}
