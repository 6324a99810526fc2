//! The apply kernels: byte-wise transforms over spans, written once and used by
//! reconstruction, the receiver and the SHM benchmark.
//!
//! Each kernel is a plain loop over slices that LLVM vectorises; `op` is matched once per span,
//! not per byte.

use super::Transform;

/// `dst[i] = op(src[i], imm)` for every `i`. `src` and `dst` must have the same length.
#[inline]
pub fn transform(op: Transform, imm: u8, src: &[u8], dst: &mut [u8]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "apply::transform: span lengths differ"
    );
    match op {
        Transform::Id => dst.copy_from_slice(src),
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
    for ((d, s), x) in dst.iter_mut().zip(src).zip(diff) {
        *d = s.wrapping_add(*x);
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
