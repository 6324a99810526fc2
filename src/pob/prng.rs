//! The snapshot's pseudo-random generator: SplitMix64, specified exactly so every machine and
//! architecture regenerates the same bytes.
//!
//! ```text
//! state += 0x9E3779B97F4A7C15                      (wrapping, u64)
//! z = state
//! z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9        (wrapping)
//! z = (z ^ (z >> 27)) * 0x94D049BB133111EB        (wrapping)
//! return z ^ (z >> 31)
//! ```
//! Bytes are taken from each 64-bit output in little-endian order. Bank `i` of a snapshot with
//! seed `s` uses the stream seeded with `s ^ (0xA5A5_0000_0000_0000 + i)`, so banks are
//! independent of each other's sizes. Ranges use `below(n) = (next() >> 11) % n` — a modulo of
//! integer values only, no floating point anywhere.

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The stream for bank `index` of a snapshot seeded with `seed`.
    pub fn for_bank(seed: u64, index: u32) -> Self {
        Self::new(seed ^ (0xA5A5_0000_0000_0000u64 + index as u64))
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        (self.next_u64() >> 11) % n
    }

    /// One byte.
    #[inline]
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// Pick one element of a non-empty slice.
    #[inline]
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Fill `out` with the little-endian bytes of successive outputs.
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&v[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_splitmix64_outputs() {
        // Reference values of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn fill_is_little_endian_and_handles_tails() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let mut buf = [0u8; 11];
        a.fill(&mut buf);
        let v0 = b.next_u64().to_le_bytes();
        let v1 = b.next_u64().to_le_bytes();
        assert_eq!(&buf[..8], &v0);
        assert_eq!(&buf[8..], &v1[..3]);
    }
}
