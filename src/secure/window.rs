//! The anti-replay window (RFC 6479, as WireGuard keeps it): a ring of 64-bit blocks over
//! the highest counter accepted so far. A counter is *new* when it is above the highest, or
//! within the window below it and its bit is clear. The caller checks first ([`check`]),
//! verifies the frame's tag, and only then records the counter ([`update`]): a forged frame
//! never moves the window.
//!
//! [`check`]: ReplayWindow::check
//! [`update`]: ReplayWindow::update

/// Blocks of 64 counters in the ring.
const BLOCKS: usize = 256;
/// Counters below the highest accepted one that the window still tells apart: one block is
/// the slack being cleared as the window moves, so (256 - 1) x 64 = 16320 (>= 8192).
pub const WINDOW: u64 = (BLOCKS as u64 - 1) * 64;

/// A per-direction replay window.
#[derive(Clone)]
pub struct ReplayWindow {
    /// The highest counter accepted (meaningful once `any`).
    top: u64,
    any: bool,
    bits: Box<[u64; BLOCKS]>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            top: 0,
            any: false,
            bits: Box::new([0; BLOCKS]),
        }
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplayWindow(top {}, any {})", self.top, self.any)
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self::default()
    }

    /// Would `seq` be accepted (new, and not too old)? Changes nothing.
    pub fn check(&self, seq: u64) -> bool {
        if !self.any || seq > self.top {
            return true;
        }
        if self.top - seq >= WINDOW {
            return false;
        }
        let block = (seq / 64) as usize % BLOCKS;
        self.bits[block] & (1u64 << (seq % 64)) == 0
    }

    /// Record `seq` (call only after its frame's tag verified). Returns false, changing
    /// nothing, when `seq` is a replay or too old.
    pub fn update(&mut self, seq: u64) -> bool {
        if !self.check(seq) {
            return false;
        }
        if !self.any || seq > self.top {
            let new_block = seq / 64;
            if self.any {
                let cur_block = self.top / 64;
                let steps = (new_block - cur_block).min(BLOCKS as u64);
                for i in 1..=steps {
                    self.bits[((cur_block + i) % BLOCKS as u64) as usize] = 0;
                }
            } else {
                self.bits.fill(0);
            }
            self.top = seq;
            self.any = true;
        }
        let block = (seq / 64) as usize % BLOCKS;
        self.bits[block] |= 1u64 << (seq % 64);
        true
    }

    /// The highest counter accepted, if any.
    pub fn top(&self) -> Option<u64> {
        self.any.then_some(self.top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn basics() {
        let mut w = ReplayWindow::new();
        assert!(w.update(0));
        assert!(!w.update(0));
        assert!(w.update(5));
        assert!(w.update(3));
        assert!(!w.update(3));
        assert!(w.update(5 + WINDOW - 1));
        // 5 is still remembered (inside the window), 4 is new, 0 fell out of it.
        assert!(!w.check(5));
        assert!(w.check(6));
        assert!(!w.check(0));
        assert!(w.update(100_000));
        assert!(!w.check(100_000 - WINDOW));
        assert!(w.check(100_000 - WINDOW + 1));
        assert!(w.update(u64::MAX));
        assert!(!w.update(u64::MAX));
    }

    #[test]
    fn check_changes_nothing() {
        let mut w = ReplayWindow::new();
        assert!(w.check(7));
        assert!(w.check(7));
        assert!(w.update(7));
        assert!(!w.check(7));
    }

    /// The model: a counter is accepted iff never accepted before and within WINDOW of the
    /// highest accepted so far (counters too old are refused even if new).
    fn model(seqs: &[u64]) -> Vec<bool> {
        let mut seen = BTreeSet::new();
        let mut top: Option<u64> = None;
        seqs.iter()
            .map(|&s| {
                let ok = !seen.contains(&s) && top.is_none_or(|t| s > t || t - s < WINDOW);
                if ok {
                    seen.insert(s);
                    top = Some(top.map_or(s, |t| t.max(s)));
                }
                ok
            })
            .collect()
    }

    proptest! {
        #[test]
        fn matches_model(seqs in prop::collection::vec(
            prop_oneof![0u64..40_000, 0u64..200, (0u64..3).prop_map(|x| x * 16_320)], 1..600)) {
            let mut w = ReplayWindow::new();
            let got: Vec<bool> = seqs.iter().map(|&s| w.update(s)).collect();
            prop_assert_eq!(got, model(&seqs));
        }

        #[test]
        fn each_new_counter_once_in_any_order(
            perm in Just((0u64..8192).collect::<Vec<_>>()).prop_shuffle(), base in 0u64..(1 << 40)) {
            let mut w = ReplayWindow::new();
            for &s in &perm {
                prop_assert!(w.update(base + s), "first sight of {} refused", s);
            }
            for &s in &perm {
                prop_assert!(!w.update(base + s), "replay of {} accepted", s);
            }
        }

        #[test]
        fn too_old_refused(top in 20_000u64..1_000_000, back in WINDOW..20_000) {
            let mut w = ReplayWindow::new();
            prop_assert!(w.update(top));
            prop_assert!(!w.check(top - back));
            prop_assert!(!w.update(top - back));
        }
    }
}
