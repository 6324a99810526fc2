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
