//! The proof of work: the whole blob against a closed-form expectation.
//!
//! Ring `r` carried `n_r` descriptors (its producer cursor). By the stream's construction
//! ([`super::spans`]) every slot of shard `r` was then touched `n_r / slots` times, plus once
//! for the first `n_r % slots` slots of the last pass, which are replayed from the seed. So
//! each byte's expected value is its initial value (recomputed from the seed) with the
//! transform applied `count` times, folded into one step here (`xor`: `imm` if `count` is
//! odd; `add`: `count * imm`), byte by byte with [`Transform::byte`] and not through the
//! apply kernels the consumers used. Bytes outside spans must be unchanged. Every byte of the
//! blob is compared.
//!
//! What it cannot see: `xor` applied an even number of times too few (or too many) to the
//! same slot; any work with `id` or `imm 0`, which leave bytes unchanged.

use super::spans::{init_into, Layout};
use crate::blueprint::Transform;

/// The outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Bytes compared (the whole blob).
    pub bytes_checked: u64,
    /// Spans (slot visits) the expectation accounts for.
    pub spans_expected: u64,
    /// Slots (or shard tails) whose bytes differ from the expectation.
    pub bad_slots: u64,
    /// Blob offset of the first differing region, if any.
    pub first_bad: Option<u64>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.bad_slots == 0
    }
}

/// The transform `count` applications of `(op, imm)` amount to.
pub fn fold(op: Transform, imm: u8, count: u64) -> u8 {
    match op {
        Transform::Id => 0,
        Transform::Xor => {
            if count % 2 == 1 {
                imm
            } else {
                0
            }
        }
        Transform::Add => ((count % 256) as u8).wrapping_mul(imm),
    }
}

/// Verify shard `r` (and, for the last ring, the blob's tail past the shards) of `blob`
/// after `n` descriptors of `(op, imm)` went through ring `r`.
pub fn verify_ring(
    blob: &[u8],
    layout: &Layout,
    r: u32,
    n: u64,
    op: Transform,
    imm: u8,
) -> VerifyReport {
    let slots = layout.slots;
    let passes = n / slots;
    let rem = n % slots;
    // Slots touched once more in the partial last pass.
    let mut extra = vec![0u64; slots.div_ceil(64) as usize];
    let mut s = layout.stream(r);
    s.set_pass(passes);
    for _ in 0..rem {
        let y = s.next_slot();
        extra[(y / 64) as usize] |= 1 << (y % 64);
    }
    let mut rep = VerifyReport {
        spans_expected: n,
        ..VerifyReport::default()
    };
    let bad = |rep: &mut VerifyReport, at: u64| {
        rep.bad_slots += 1;
        rep.first_bad = Some(rep.first_bad.map_or(at, |f| f.min(at)));
    };
    let stride = layout.stride as usize;
    let mut want = vec![0u8; stride];
    let base = layout.shard_base(r);
    for y in 0..slots {
        let count = passes + (extra[(y / 64) as usize] >> (y % 64) & 1);
        let off = base + y * layout.stride;
        let len = layout.span_len(r, y) as usize;
        init_into(layout.seed, off, &mut want);
        let k = fold(op, imm, count);
        for b in &mut want[..len] {
            *b = op.byte(*b, k);
        }
        if blob[off as usize..off as usize + stride] != want[..] {
            bad(&mut rep, off);
        }
    }
    rep.bytes_checked = layout.shard_len;
    // Bytes past the last shard belong to no ring: check them with the last one.
    if r + 1 == layout.rings {
        let tail = layout.shard_base(r) + layout.shard_len;
        let mut want = vec![0u8; 1 << 16];
        let mut at = tail;
        while at < layout.blob_len {
            let n = ((layout.blob_len - at) as usize).min(want.len());
            init_into(layout.seed, at, &mut want[..n]);
            if blob[at as usize..at as usize + n] != want[..n] {
                bad(&mut rep, at);
            }
            at += n as u64;
        }
        rep.bytes_checked += layout.blob_len - tail;
    }
    rep
}

/// Verify the whole blob: ring `r` carried `counts[r]` descriptors. Uses `threads` threads.
pub fn verify_blob(
    blob: &[u8],
    layout: &Layout,
    counts: &[u64],
    op: Transform,
    imm: u8,
    threads: usize,
) -> VerifyReport {
    assert_eq!(counts.len(), layout.rings as usize);
    assert_eq!(blob.len() as u64, layout.blob_len);
    let threads = threads.clamp(1, counts.len());
    let parts: Vec<VerifyReport> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                sc.spawn(move || {
                    let mut acc = VerifyReport::default();
                    for r in (t..counts.len()).step_by(threads) {
                        let p = verify_ring(blob, layout, r as u32, counts[r], op, imm);
                        merge(&mut acc, &p);
                    }
                    acc
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("verify thread panicked"))
            .collect()
    });
    let mut all = VerifyReport::default();
    for p in &parts {
        merge(&mut all, p);
    }
    // The shards' own bytes and the tail: the whole blob.
    debug_assert_eq!(all.bytes_checked, layout.blob_len);
    all
}

fn merge(acc: &mut VerifyReport, p: &VerifyReport) {
    acc.bytes_checked += p.bytes_checked;
    acc.spans_expected += p.spans_expected;
    acc.bad_slots += p.bad_slots;
    acc.first_bad = match (acc.first_bad, p.first_bad) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::apply::transform_in_place;

    /// Apply `n` descriptors of each ring's stream the way a consumer would.
    fn simulate(
        layout: &Layout,
        counts: &[u64],
        op: Transform,
        imm: u8,
        skip: Option<u64>,
    ) -> Vec<u8> {
        let mut blob = vec![0u8; layout.blob_len as usize];
        init_into(layout.seed, 0, &mut blob);
        for (r, &n) in counts.iter().enumerate() {
            let mut s = layout.stream(r as u32);
            for i in 0..n {
                let (off, len) = s.next_span();
                if r == 0 && skip == Some(i) {
                    continue;
                }
                transform_in_place(
                    op,
                    imm,
                    &mut blob[off as usize..off as usize + len as usize],
                );
            }
        }
        blob
    }

    #[test]
    fn fold_matches_repeated_application() {
        for op in Transform::ALL {
            for imm in [0u8, 1, 0x55, 0xff] {
                for count in 0..600u64 {
                    let mut b = 0x3cu8;
                    for _ in 0..count {
                        b = op.byte(b, imm);
                    }
                    assert_eq!(
                        op.byte(0x3c, fold(op, imm, count)),
                        b,
                        "{op:?} {imm} x{count}"
                    );
                }
            }
        }
    }

    #[test]
    fn honest_work_verifies_and_a_skipped_span_does_not() {
        let layout = Layout::new(300_000, 3, 200, true, 64, 9).unwrap();
        let counts = [layout.slots * 2 + 17, layout.slots + 1, 5];
        for (op, imm) in [(Transform::Xor, 0xff), (Transform::Add, 3)] {
            let blob = simulate(&layout, &counts, op, imm, None);
            let rep = verify_blob(&blob, &layout, &counts, op, imm, 2);
            assert!(rep.ok(), "{op:?}: {rep:?}");
            assert_eq!(rep.bytes_checked, 300_000);
            let blob = simulate(&layout, &counts, op, imm, Some(layout.slots * 2 + 3));
            let rep = verify_blob(&blob, &layout, &counts, op, imm, 2);
            assert_eq!(rep.bad_slots, 1, "{op:?}");
        }
    }

    #[test]
    fn a_stray_write_outside_spans_is_caught() {
        let layout = Layout::new(100_000, 2, 100, false, 128, 3).unwrap();
        let counts = [10, 10];
        let mut blob = simulate(&layout, &counts, Transform::Xor, 1, None);
        // Byte 120 of a slot lies past its 100-byte span.
        blob[layout.shard_base(1) as usize + 120] ^= 1;
        let rep = verify_blob(&blob, &layout, &counts, Transform::Xor, 1, 1);
        assert_eq!(rep.bad_slots, 1);
        blob[99_999] ^= 1; // the tail past the shards
        let rep = verify_blob(&blob, &layout, &counts, Transform::Xor, 1, 1);
        assert_eq!(rep.bad_slots, 2);
        assert_eq!(rep.first_bad, Some(layout.shard_base(1)));
    }
}
