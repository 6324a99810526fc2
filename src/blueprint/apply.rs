//! The apply kernels: byte-wise transforms over spans, written once and used by
//! reconstruction, the receiver and the SHM benchmark.
//!
//! Each kernel is a plain loop over slices that LLVM vectorises; `op` is matched once per span,
//! not per byte. Spans of at least [`STREAM_MIN`] bytes (`id` copies and cover additions) are
//! written with non-temporal stores on x86-64: a rebuilt file is written once and read much
//! later (or hashed in order behind a window larger than the caches), so bringing each
//! destination line into the cache first only adds a read of memory per written line. glibc's
//! memcpy does the same, but only for copies above ~3/4 of the last-level cache, which a
//! blueprint's 4-64 KiB segments never reach: plain copies of the same segments ran at 5.5 GB/s
//! against 12.5 GB/s for one flat memcpy on this project's 2-core machine
//! (examples/rebuild_probe.rs).

use super::{Segment, Source, Transform};

/// `dst[i] = op(src[i], imm)` for every `i`. `src` and `dst` must have the same length.
#[inline]
pub fn transform(op: Transform, imm: u8, src: &[u8], dst: &mut [u8]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "apply::transform: span lengths differ"
    );
    match op {
        Transform::Id => copy(src, dst),
        Transform::Xor => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s ^ imm;
            }
        }
        Transform::Add => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.wrapping_add(imm);
            }
        }
    }
}

/// `dst[i] = src[i] + diff[i] (mod 256)`: an approximate cover's snapshot bytes plus its
/// difference bytes. All three must have the same length.
#[inline]
pub fn add_bytes(src: &[u8], diff: &[u8], dst: &mut [u8]) {
    assert!(
        src.len() == dst.len() && diff.len() == dst.len(),
        "apply::add_bytes: span lengths differ"
    );
    #[cfg(target_arch = "x86_64")]
    if dst.len() >= STREAM_MIN {
        stream::add(src, diff, dst);
        return;
    }
    for ((d, s), x) in dst.iter_mut().zip(src).zip(diff) {
        *d = s.wrapping_add(*x);
    }
}

/// Spans at least this long are written with non-temporal stores (x86-64).
pub const STREAM_MIN: usize = 4096;

/// `dst.copy_from_slice(src)`, with non-temporal stores for spans of [`STREAM_MIN`] bytes and
/// more (x86-64).
#[inline]
pub fn copy(src: &[u8], dst: &mut [u8]) {
    assert_eq!(src.len(), dst.len(), "apply::copy: span lengths differ");
    #[cfg(target_arch = "x86_64")]
    if dst.len() >= STREAM_MIN {
        stream::copy(src, dst);
        return;
    }
    dst.copy_from_slice(src);
}

/// SSE2 (part of every x86-64 CPU) kernels that store 64 bytes per step with `movntdq`.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod stream {
    use core::arch::x86_64::{
        __m128i, _mm_add_epi8, _mm_loadu_si128, _mm_sfence, _mm_stream_si128,
    };

    /// Bytes before `dst`'s first 16-byte boundary (at most `len`).
    fn head(dst: &[u8]) -> usize {
        ((dst.as_ptr() as usize).wrapping_neg() & 15).min(dst.len())
    }

    pub fn copy(src: &[u8], dst: &mut [u8]) {
        debug_assert_eq!(src.len(), dst.len());
        let n = dst.len();
        let h = head(dst);
        dst[..h].copy_from_slice(&src[..h]);
        let mut i = h;
        // Safety: every access is within `i..i + 64 <= n` of both slices (same length); the
        // loads are unaligned; `dst + i` is 16-byte aligned (i >= the head); SSE2 is part of
        // the x86-64 baseline. The fence orders the streamed stores before anything after.
        unsafe {
            let s = src.as_ptr();
            let d = dst.as_mut_ptr();
            while i + 64 <= n {
                let a = _mm_loadu_si128(s.add(i) as *const __m128i);
                let b = _mm_loadu_si128(s.add(i + 16) as *const __m128i);
                let c = _mm_loadu_si128(s.add(i + 32) as *const __m128i);
                let e = _mm_loadu_si128(s.add(i + 48) as *const __m128i);
                _mm_stream_si128(d.add(i) as *mut __m128i, a);
                _mm_stream_si128(d.add(i + 16) as *mut __m128i, b);
                _mm_stream_si128(d.add(i + 32) as *mut __m128i, c);
                _mm_stream_si128(d.add(i + 48) as *mut __m128i, e);
                i += 64;
            }
            _mm_sfence();
        }
        dst[i..].copy_from_slice(&src[i..]);
    }

    pub fn add(src: &[u8], diff: &[u8], dst: &mut [u8]) {
        debug_assert!(src.len() == dst.len() && diff.len() == dst.len());
        let n = dst.len();
        let h = head(dst);
        let tail = |dst: &mut [u8], from: usize, to: usize| {
            for k in from..to {
                dst[k] = src[k].wrapping_add(diff[k]);
            }
        };
        tail(dst, 0, h);
        let mut i = h;
        // Safety: as in `copy`; `diff` has the same length as `dst`.
        unsafe {
            let s = src.as_ptr();
            let x = diff.as_ptr();
            let d = dst.as_mut_ptr();
            while i + 64 <= n {
                for k in [0usize, 16, 32, 48] {
                    let a = _mm_loadu_si128(s.add(i + k) as *const __m128i);
                    let b = _mm_loadu_si128(x.add(i + k) as *const __m128i);
                    _mm_stream_si128(d.add(i + k) as *mut __m128i, _mm_add_epi8(a, b));
                }
                i += 64;
            }
            _mm_sfence();
        }
        tail(dst, i, n);
    }
}

/// A self copy: `buf[dst + i] = buf[src + i]` for `i` in `0..len`, in increasing `i`, so an
/// overlapping source (`src + len > dst`) re-reads bytes this copy wrote (LZ77 semantics).
/// Requires `src < dst` and `dst + len <= buf.len()`.
#[inline]
pub fn self_copy(buf: &mut [u8], src: usize, dst: usize, len: usize) {
    assert!(
        src < dst && dst + len <= buf.len(),
        "apply::self_copy: bad range"
    );
    let dist = dst - src;
    if dist == 1 {
        let b = buf[src];
        buf[dst..dst + len].fill(b);
        return;
    }
    // each chunk of at most `dist` bytes reads only bytes that are already final
    let mut done = 0;
    while done < len {
        let n = (len - done).min(dist);
        buf.copy_within(src + done..src + done + n, dst + done);
        done += n;
    }
}

/// Append to `out` the `len` bytes that snapshot segment `{op, off, len, imm}` stands for
/// (`op(snap[off + i], imm)`) and return the segment: how generators of test files, seeds and
/// benchmarks build a file and its blueprint together. `snap[off..off + len]` must exist.
pub fn push_snap_segment(
    snap: &[u8],
    op: Transform,
    off: usize,
    imm: u8,
    len: usize,
    out: &mut Vec<u8>,
) -> Segment {
    let at = out.len();
    out.resize(at + len, 0);
    transform(op, imm, &snap[off..off + len], &mut out[at..]);
    Segment {
        len: len as u32,
        src: Source::Snap {
            op,
            off: off as u64,
            imm,
        },
    }
}

/// `buf[i] = op(buf[i], imm)` in place (the SHM benchmark's work item).
#[inline]
pub fn transform_in_place(op: Transform, imm: u8, buf: &mut [u8]) {
    match op {
        Transform::Id => {}
        Transform::Xor => {
            for b in buf.iter_mut() {
                *b ^= imm;
            }
        }
        Transform::Add => {
            for b in buf.iter_mut() {
                *b = b.wrapping_add(imm);
            }
        }
    }
}

/// The inverse of a transform with `imm`: applying `(op, imm)` then `inverse(op, imm)` is the
/// identity. (`xor` is its own inverse; `add imm` is undone by `add -imm`.)
pub fn inverse(op: Transform, imm: u8) -> (Transform, u8) {
    match op {
        Transform::Id => (Transform::Id, 0),
        Transform::Xor => (Transform::Xor, imm),
        Transform::Add => (Transform::Add, imm.wrapping_neg()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_the_byte_definition() {
        let src: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
        for op in Transform::ALL {
            for imm in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut dst = vec![0u8; src.len()];
                transform(op, imm, &src, &mut dst);
                for (s, d) in src.iter().zip(&dst) {
                    assert_eq!(*d, op.byte(*s, imm));
                }
                let mut inplace = src.clone();
                transform_in_place(op, imm, &mut inplace);
                assert_eq!(inplace, dst);
                let (iop, iimm) = inverse(op, imm);
                transform_in_place(iop, iimm, &mut inplace);
                assert_eq!(inplace, src, "{op:?} {imm} then its inverse");
            }
        }
    }

    #[test]
    fn streamed_spans_match_the_plain_kernels() {
        // lengths around STREAM_MIN and the 64-byte step, destinations at every alignment
        let src: Vec<u8> = (0..3 * STREAM_MIN).map(|i| (i * 131 + 7) as u8).collect();
        let diff: Vec<u8> = (0..3 * STREAM_MIN).map(|i| (i * 17 % 251) as u8).collect();
        for len in [
            STREAM_MIN - 1,
            STREAM_MIN,
            STREAM_MIN + 63,
            2 * STREAM_MIN + 17,
        ] {
            for at in 0..17 {
                let mut out = vec![0u8; len + 32];
                copy(&src[3..3 + len], &mut out[at..at + len]);
                assert_eq!(
                    &out[at..at + len],
                    &src[3..3 + len],
                    "copy len {len} at {at}"
                );
                assert!(out[..at].iter().chain(&out[at + len..]).all(|&b| b == 0));
                let mut out = vec![0u8; len + 32];
                add_bytes(&src[5..5 + len], &diff[1..1 + len], &mut out[at..at + len]);
                for k in 0..len {
                    assert_eq!(out[at + k], src[5 + k].wrapping_add(diff[1 + k]));
                }
                assert!(out[..at].iter().chain(&out[at + len..]).all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn self_copy_is_a_forward_byte_copy() {
        for (src, dst, len) in [(0, 5, 3), (2, 3, 9), (0, 2, 11), (1, 4, 3), (0, 7, 7)] {
            let mut a: Vec<u8> = (0..20u8).map(|x| x * 7 + 1).collect();
            let mut b = a.clone();
            for i in 0..len {
                b[dst + i] = b[src + i];
            }
            self_copy(&mut a, src, dst, len);
            assert_eq!(a, b, "src {src} dst {dst} len {len}");
        }
    }

    #[test]
    fn imm_for_recovers_the_immediate() {
        for op in [Transform::Xor, Transform::Add] {
            for s in [0u8, 3, 200] {
                for f in [0u8, 9, 255] {
                    assert_eq!(op.byte(s, op.imm_for(s, f)), f);
                }
            }
        }
    }
}
