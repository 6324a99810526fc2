//! CRC32C (Castagnoli) of frame-sized buffers, the PacketFS header's checksum.
//!
//! The `crc32c` crate's SSE 4.2 path runs three interleaved lanes only over whole chunks of
//! 768 bytes (and 24 KiB) and the rest serially, one `crc32` instruction per 8 bytes at three
//! cycles' latency: for a 1.4 KB payload that is about half of it, and CRC32C was about 30%
//! of the receiver state machine's time on plaintext frames (docs/profile.md). Here a buffer
//! is cut into three lanes of equal length (a multiple of 64 bytes) over nearly all of it,
//! the lanes run interleaved, and the lane CRCs are joined with a carry-less multiply
//! (PCLMULQDQ) by `x^(8 L - 33) mod P`, one constant per lane length from a table made once.
//! Without SSE 4.2 and PCLMULQDQ, or for short buffers, the crate does the work.

/// CRC32C of `data`, continuing `crc` (as `crc32c::crc32c_append`).
pub fn append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if data.len() >= x86::MIN_LEN && x86::available() {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has SSE 4.2 and PCLMULQDQ (checked just now).
        return unsafe { x86::append(crc, data) };
    }
    crc32c::crc32c_append(crc, data)
}

/// CRC32C of `data` (as `crc32c::crc32c`).
pub fn checksum(data: &[u8]) -> u32 {
    append(0, data)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::{
        _mm_clmulepi64_si128, _mm_crc32_u64, _mm_crc32_u8, _mm_cvtsi128_si64, _mm_cvtsi64_si128,
    };
    use std::sync::OnceLock;

    /// Lane lengths are multiples of this many bytes...
    const STEP: usize = 64;
    /// ...up to this many steps (64 KiB lanes; longer buffers take several rounds).
    const MAX_STEPS: usize = 1024;
    /// Buffers shorter than three lanes of one step go through the crate.
    pub const MIN_LEN: usize = 3 * STEP;
    /// The CRC32C polynomial, bit-reflected.
    const POLY: u32 = 0x82F6_3B78;

    pub fn available() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            std::is_x86_feature_detected!("sse4.2") && std::is_x86_feature_detected!("pclmulqdq")
        })
    }

    /// `K[k] = x^(8 * STEP * k - 33) mod P` (bit-reflected), for k = 1..=MAX_STEPS (`K[0]`
    /// unused): the constant that moves a lane's CRC past `k` steps of the next lanes.
    fn constants() -> &'static [u32] {
        static K: OnceLock<Vec<u32>> = OnceLock::new();
        K.get_or_init(|| {
            // multiply by x: in the reflected form a right shift, reduced by P
            let times_x = |r: u32, n: usize| {
                (0..n).fold(r, |r, _| (r >> 1) ^ if r & 1 == 1 { POLY } else { 0 })
            };
            let mut k = vec![0u32; MAX_STEPS + 1];
            // x^0 is the top bit in the reflected form
            let mut r = times_x(1 << 31, 8 * STEP - 33);
            for slot in k.iter_mut().skip(1) {
                *slot = r;
                r = times_x(r, 8 * STEP);
            }
            k
        })
    }

    /// `s * x^(8 L) mod P` for the lane constant `k` of length L.
    #[inline]
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    unsafe fn shift(s: u64, k: u32) -> u64 {
        let p = _mm_clmulepi64_si128(
            _mm_cvtsi64_si128(s as i64),
            _mm_cvtsi64_si128(k as i64),
            0x00,
        );
        _mm_crc32_u64(0, _mm_cvtsi128_si64(p) as u64)
    }

    #[inline]
    fn word(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
    }

    /// # Safety
    /// The CPU must have SSE 4.2 and PCLMULQDQ ([`available`]).
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    pub unsafe fn append(crc: u32, data: &[u8]) -> u32 {
        let k = constants();
        let mut s = u64::from(!crc);
        let mut d = data;
        while d.len() >= MIN_LEN {
            let steps = (d.len() / MIN_LEN).min(MAX_STEPS);
            let l = steps * STEP;
            let (a, rest) = d.split_at(l);
            let (b, rest) = rest.split_at(l);
            let (c, rest) = rest.split_at(l);
            let (mut s1, mut s2) = (0u64, 0u64);
            let mut i = 0;
            while i < l {
                s = _mm_crc32_u64(s, word(a, i));
                s1 = _mm_crc32_u64(s1, word(b, i));
                s2 = _mm_crc32_u64(s2, word(c, i));
                i += 8;
            }
            s = shift(s, k[steps]) ^ s1;
            s = shift(s, k[steps]) ^ s2;
            d = rest;
        }
        let mut words = d.chunks_exact(8);
        for w in &mut words {
            s = _mm_crc32_u64(s, u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let mut s = s as u32;
        for &byte in words.remainder() {
            s = _mm_crc32_u8(s, byte);
        }
        !s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        crate::prepare::noise(seed, n)
    }

    /// Every length around the lane boundaries, and long buffers that take several rounds,
    /// give the crate's CRC, from any starting value and any alignment.
    #[test]
    fn equals_the_crate_at_lane_edges_and_across_rounds() {
        let data = bytes(3 * 65536 * 2 + 1000, 3);
        let mut lens: Vec<usize> = (0..700).collect();
        lens.extend([1400, 1448, 1472, 4096, 9000]);
        lens.extend([3 * 65536 - 1, 3 * 65536, 3 * 65536 + 1, 3 * 65536 + 200]);
        lens.push(data.len() - 8);
        for n in lens {
            for off in [0, 1, 5] {
                let d = &data[off..off + n];
                for start in [0u32, 0xdead_beef] {
                    assert_eq!(
                        append(start, d),
                        crc32c::crc32c_append(start, d),
                        "len {n} offset {off} start {start:#x}"
                    );
                }
            }
        }
        assert_eq!(
            checksum(b"123456789"),
            0xE306_9283,
            "the CRC32C check value"
        );
    }

    proptest! {
        #[test]
        fn equals_the_crate(d in proptest::collection::vec(any::<u8>(), 0..5000), start: u32) {
            prop_assert_eq!(append(start, &d), crc32c::crc32c_append(start, &d));
        }
    }
}
