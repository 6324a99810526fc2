//! The deterministic span streams, and the blob's initial contents.
//!
//! The blob is cut into one *shard* per ring; ring `r`'s spans all lie in shard `r`, so the
//! ring's one consumer is the only writer of those bytes (no two consumers ever race on a
//! byte, and a lost update cannot pass for missing work). A shard is a grid of *slots* of
//! `stride` bytes (the span length rounded up to `--align`); a span starts at a slot, so every
//! offset is a multiple of the alignment.
//!
//! Each ring's stream visits the slots of its shard in *passes*: one pass is a pseudo-random
//! permutation of all slots (a keyed bijection on `bits`-bit integers, cycle-walked down to
//! the slot count), a fresh permutation per pass. So after `n` descriptors every slot was
//! touched `n / slots` times, plus once more for the first `n % slots` slots of the current
//! pass: the verifier recomputes exactly that, from the seed and the count alone.
//!
//! Span lengths are fixed (`--seg-len`) or, with `--vstream 1`, vary per slot in
//! `[seg/2, 3*seg/2]` (a hash of the slot, the same in every pass).

/// SplitMix64's finaliser: a fast, well-mixed 64-bit hash.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The blob's initial 8-byte word number `w` for `seed`.
#[inline(always)]
pub fn init_word(seed: u64, w: u64) -> u64 {
    mix64(seed ^ w.wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// Write the initial contents of blob bytes `abs..abs+out.len()` into `out`.
pub fn init_into(seed: u64, abs: u64, out: &mut [u8]) {
    let mut i = 0usize;
    // Leading bytes up to a word boundary.
    while i < out.len() && !(abs + i as u64).is_multiple_of(8) {
        let p = abs + i as u64;
        out[i] = init_word(seed, p / 8).to_le_bytes()[(p % 8) as usize];
        i += 1;
    }
    let mut w = (abs + i as u64) / 8;
    let mut chunks = out[i..].chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&init_word(seed, w).to_le_bytes());
        w += 1;
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let b = init_word(seed, w).to_le_bytes();
        rest.copy_from_slice(&b[..rest.len()]);
    }
}

/// How spans are laid over the blob: shards, slots, lengths, seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub blob_len: u64,
    pub rings: u32,
    pub seg_len: u32,
    pub vstream: bool,
    pub align: u64,
    pub seed: u64,
    /// Slot size: the longest span rounded up to `align`.
    pub stride: u64,
    /// Bytes per shard (a multiple of `stride`).
    pub shard_len: u64,
    /// Slots per shard.
    pub slots: u64,
}

/// The span lengths with `--vstream 1`: `[seg/2, 3*seg/2]` (at least 1).
pub fn vstream_bounds(seg_len: u32) -> (u32, u32) {
    let lo = (seg_len / 2).max(1);
    let hi = seg_len.saturating_add(seg_len / 2).max(lo);
    (lo, hi)
}

impl Layout {
    /// The layout, or `None` if a shard cannot hold a single slot (or `align` is not a power
    /// of two, or `rings` is 0).
    pub fn new(
        blob_len: u64,
        rings: u32,
        seg_len: u32,
        vstream: bool,
        align: u64,
        seed: u64,
    ) -> Option<Layout> {
        if rings == 0 || seg_len == 0 || !align.is_power_of_two() {
            return None;
        }
        let max_len = if vstream {
            vstream_bounds(seg_len).1
        } else {
            seg_len
        } as u64;
        let stride = max_len.checked_next_multiple_of(align)?;
        let shard_len = blob_len / rings as u64 / stride * stride;
        let slots = shard_len / stride;
        (slots > 0).then_some(Layout {
            blob_len,
            rings,
            seg_len,
            vstream,
            align,
            seed,
            stride,
            shard_len,
            slots,
        })
    }

    /// First byte of shard `r`.
    pub fn shard_base(&self, r: u32) -> u64 {
        r as u64 * self.shard_len
    }

    /// Length of the span at slot `slot` of ring `r`.
    #[inline(always)]
    pub fn span_len(&self, r: u32, slot: u64) -> u32 {
        if self.vstream {
            let (lo, hi) = vstream_bounds(self.seg_len);
            let h = mix64(self.seed ^ 0x5653 ^ ((r as u64) << 48) ^ slot);
            lo + (h % (hi - lo + 1) as u64) as u32
        } else {
            self.seg_len
        }
    }

    /// The span stream of ring `r`, from its start.
    pub fn stream(&self, r: u32) -> SpanStream {
        let bits = 64 - (self.slots - 1).leading_zeros();
        let mut s = SpanStream {
            layout: *self,
            ring: r,
            base: self.shard_base(r),
            bits,
            mask: if bits == 0 {
                0
            } else {
                u64::MAX >> (64 - bits)
            },
            key: 0,
            n: 0,
            pass: 0,
        };
        s.set_pass(0);
        s
    }
}

/// One ring's stream of spans (see the module docs).
#[derive(Debug, Clone)]
pub struct SpanStream {
    layout: Layout,
    ring: u32,
    base: u64,
    bits: u32,
    mask: u64,
    key: u64,
    n: u64,
    pass: u64,
}

impl SpanStream {
    /// Restart at the beginning of pass `pass`.
    pub fn set_pass(&mut self, pass: u64) {
        self.pass = pass;
        self.n = 0;
        self.key = mix64(
            self.layout.seed ^ 0x7061_7373 ^ ((self.ring as u64) << 40) ^ pass.wrapping_mul(0x9E37),
        );
    }

    /// The current pass number.
    pub fn pass(&self) -> u64 {
        self.pass
    }

    /// The keyed bijection on `bits`-bit integers.
    #[inline(always)]
    fn permute(&self, x: u64) -> u64 {
        let m = self.mask;
        let s = self.bits / 2 + 1;
        let mut y = (x ^ self.key) & m;
        y = y.wrapping_mul(0x9E37_79B9_7F4A_7C15) & m;
        y ^= y >> s;
        y = y.wrapping_add(self.key >> 17) & m;
        y = y.wrapping_mul(0xBF58_476D_1CE4_E5B9) & m;
        y ^ (y >> s)
    }

    /// The next slot of the current pass (starting a new pass after the last one).
    #[inline(always)]
    pub fn next_slot(&mut self) -> u64 {
        loop {
            let y = self.permute(self.n);
            if self.n == self.mask {
                self.set_pass(self.pass + 1);
            } else {
                self.n += 1;
            }
            if y < self.layout.slots {
                return y;
            }
        }
    }

    /// Fill `out` with the next `out.len()` slots, the same sequence as [`Self::next_slot`]
    /// gives, without a branch per candidate: every candidate is written and the index moves
    /// on only if it is a slot (`y < slots`). The walk goes in chunks no longer than what is
    /// left to fill, so a write never lands past the end.
    #[inline]
    pub fn fill_slots(&mut self, out: &mut [u64]) {
        let slots = self.layout.slots;
        let mut k = 0usize;
        while k < out.len() {
            let left_in_pass = self.mask - self.n + 1;
            let chunk = ((out.len() - k) as u64).min(left_in_pass);
            for i in 0..chunk {
                let y = self.permute(self.n + i);
                out[k] = y;
                k += (y < slots) as usize;
            }
            if self.n + chunk > self.mask {
                self.set_pass(self.pass + 1);
            } else {
                self.n += chunk;
            }
        }
    }

    /// Fill `out` with the next spans (absolute blob offset, length); see [`Self::fill_slots`].
    #[inline]
    pub fn fill_spans(&mut self, slots: &mut [u64], out: &mut [(u64, u32)]) {
        let n = out.len().min(slots.len());
        self.fill_slots(&mut slots[..n]);
        for (o, &y) in out.iter_mut().zip(&slots[..n]) {
            *o = (
                self.base + y * self.layout.stride,
                self.layout.span_len(self.ring, y),
            );
        }
    }

    /// The next span: (absolute blob offset, length).
    #[inline(always)]
    pub fn next_span(&mut self) -> (u64, u32) {
        let slot = self.next_slot();
        (
            self.base + slot * self.layout.stride,
            self.layout.span_len(self.ring, slot),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_into_agrees_at_any_offset() {
        let seed = 42;
        let mut whole = vec![0u8; 200];
        init_into(seed, 0, &mut whole);
        for start in [0usize, 1, 7, 8, 13] {
            for len in [0usize, 1, 5, 8, 9, 50] {
                let mut part = vec![0u8; len];
                init_into(seed, start as u64, &mut part);
                assert_eq!(part, whole[start..start + len]);
            }
        }
    }

    #[test]
    fn each_pass_is_a_permutation_of_the_slots() {
        for (blob, rings, seg, v) in [
            (1 << 20, 3, 256, false),
            (100_000, 1, 100, true),
            (4096, 2, 64, false),
        ] {
            let l = Layout::new(blob, rings, seg, v, 64, 7).unwrap();
            for r in 0..rings {
                let mut s = l.stream(r);
                for pass in 0..3 {
                    let mut seen = vec![false; l.slots as usize];
                    for _ in 0..l.slots {
                        let slot = s.next_slot();
                        assert!(!seen[slot as usize], "slot {slot} twice in pass {pass}");
                        seen[slot as usize] = true;
                    }
                    assert!(seen.iter().all(|&b| b));
                }
            }
        }
    }

    #[test]
    fn batched_fill_gives_the_same_sequence() {
        for (blob, seg, v) in [
            (1u64 << 20, 256, false),
            (300_000, 100, true),
            (512, 256, false),
        ] {
            let l = Layout::new(blob, 2, seg, v, 64, 5).unwrap();
            let mut a = l.stream(1);
            let mut b = l.stream(1);
            let mut slots = vec![0u64; 37];
            let mut spans = vec![(0u64, 0u32); 37];
            for _ in 0..(3 * l.slots / 37 + 5) {
                b.fill_spans(&mut slots, &mut spans);
                for s in &spans {
                    assert_eq!(*s, a.next_span());
                }
            }
            assert_eq!(a.pass(), b.pass());
        }
    }

    #[test]
    fn spans_stay_in_their_shard_and_are_aligned() {
        let l = Layout::new(1 << 20, 3, 300, true, 64, 1).unwrap();
        let (lo, hi) = vstream_bounds(300);
        assert_eq!(l.stride, 512);
        for r in 0..3 {
            let mut s = l.stream(r);
            for _ in 0..5000 {
                let (off, len) = s.next_span();
                assert_eq!(off % 64, 0);
                assert!((lo..=hi).contains(&len));
                assert!(off >= l.shard_base(r));
                assert!(off + len as u64 <= l.shard_base(r) + l.shard_len);
            }
        }
    }

    #[test]
    fn impossible_layouts_are_none() {
        assert!(Layout::new(100, 1, 256, false, 64, 0).is_none());
        assert!(Layout::new(1 << 20, 0, 256, false, 64, 0).is_none());
        assert!(Layout::new(1 << 20, 1, 256, false, 48, 0).is_none());
        assert_eq!(Layout::new(256, 1, 256, false, 64, 0).unwrap().slots, 1);
    }
}
