//! Multi-projection anchoring: look a file window up under coarse projections (ASCII class,
//! high nibbles, 32-bit stride, opcode-like histogram; [`crate::index::Projection`]) when the
//! raw and delta indexes found nothing worth a segment. A coarse key is shared by many
//! windows, so each candidate is only an anchor: the planner confirms it on the real bytes
//! under `id`, `xor imm8` and `add imm8` (imm taken from the first byte pair) and keeps it only
//! when the confirmed match pays for itself, like any other candidate.

use crate::blueprint::Transform;
use crate::index::{window_hash, Index, IndexSpec, Projection};

/// The index spec of a coarse projection under a planner config.
pub fn spec(projection: Projection, step: u32, fanout: u32) -> IndexSpec {
    IndexSpec {
        projection,
        k: 8,
        step,
        fanout,
    }
}

/// Candidate anchors for the window at `i` of `f`: (snapshot position, transform to confirm
/// under), at most `max` positions per projection, in `out` (cleared first).
pub fn candidates(
    indexes: &[&Index],
    f: &[u8],
    i: usize,
    transforms: bool,
    max: usize,
    out: &mut Vec<(u32, Transform)>,
) {
    out.clear();
    if i + 8 > f.len() {
        return;
    }
    let ops: &[Transform] = if transforms {
        &Transform::ALL
    } else {
        &[Transform::Id]
    };
    for idx in indexes {
        let h = window_hash(idx.spec.projection, 8, f, i);
        for p in idx.candidates(h).take(max) {
            for &op in ops {
                out.push((p, op));
            }
        }
    }
}

/// Cycle counter for per-phase timings (the TSC on x86-64, else a monotonic clock in ns);
/// converted to milliseconds against wall time once per plan.
#[inline(always)]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // Safety: RDTSC reads a counter; it has no memory effects and is baseline on x86-64.
    #[allow(unsafe_code)]
    unsafe {
        std::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        use std::sync::OnceLock;
        static T0: OnceLock<std::time::Instant> = OnceLock::new();
        T0.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projected_anchor_leads_to_the_real_match() {
        // a snapshot holding, at 4096, the xor-1 image of a file window of digits: the raw
        // keys differ, the ASCII classes do not ('0'..'9' xor 1 are digits too)
        let dir = tempfile::tempdir().unwrap();
        let mut snap = vec![0u8; 16_384];
        crate::pob::prng::SplitMix64::new(2).fill(&mut snap);
        let text = b"0123456789876543";
        snap[4096..4112].copy_from_slice(text);
        let file: Vec<u8> = text.iter().map(|b| b ^ 1).collect();
        let sp = spec(Projection::Ascii, 8, 64);
        let path = dir.path().join(sp.file_name());
        Index::build(sp, &snap, &[0; 32], &path).unwrap();
        let idx = Index::open(&path, sp, snap.len(), &[0; 32]).unwrap();
        let mut out = Vec::new();
        candidates(&[&idx], &file, 0, true, 64, &mut out);
        assert!(out.contains(&(4096, Transform::Xor)), "{out:?}");
        // confirmation on the real bytes: under xor 1 the whole window matches
        let imm = Transform::Xor.imm_for(snap[4096], file[0]);
        assert_eq!(imm, 1);
        assert!((0..16).all(|j| file[j] == Transform::Xor.byte(snap[4096 + j], imm)));
        // identity only: no xor candidates offered
        candidates(&[&idx], &file, 0, false, 64, &mut out);
        assert!(out.iter().all(|(_, op)| *op == Transform::Id));
        // too close to the end: nothing
        candidates(&[&idx], &file, 10, true, 64, &mut out);
        assert!(out.is_empty());
    }
}
