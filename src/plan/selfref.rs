//! Self segments: copies from earlier in the file being rebuilt.
//!
//! A pass over a plan in file order. A hash table of the file's own 8-byte grams (one most
//! recent position per bucket) is filled as the pass walks, with every position before the
//! one being looked at; inside raw runs each position is looked up, verified on the real
//! bytes and extended forward (up to the end of the raw run; the source may overlap the
//! destination, which [`crate::blueprint::apply::self_copy`] rebuilds as a forward byte copy)
//! and backward (down to the start of the pending raw bytes). A copy is kept when the cost
//! model says it is cheaper than the raw bytes it replaces, counting only source bytes that
//! are not raw spill themselves (the spill compressor finds repeats within the spill on its
//! own: on the libstd pair, pricing every byte made the raw ratio drop from 0.33 to 0.24 and
//! the wire grow by 2.7%); its back distance is priced as the varint it is stored as.

use crate::blueprint::{Segment, Source};

use super::{push_merged, PlanConfig};

const K: usize = 8;
/// Shortest copy considered.
const MIN_COPY: usize = 12;

#[inline(always)]
fn gram_hash(f: &[u8], p: usize, bits: u32) -> usize {
    let v = u64::from_le_bytes(f[p..p + K].try_into().expect("8"));
    (v.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
}

/// Rewrite the raw runs of `segs` (a plan of `file`) with self copies where they pay.
pub fn pass(file: &[u8], segs: Vec<Segment>, cfg: &PlanConfig, raw_bits: f64) -> Vec<Segment> {
    if file.len() < 2 * K {
        return segs;
    }
    let bits = (usize::BITS - file.len().leading_zeros()).clamp(13, 23) - 1;
    // raw runs of the plan as it stands: a copy whose source is raw spill buys little, since
    // the spill compressor finds that repeat itself; only source bytes the snapshot covers
    // are counted as saved
    let mut raw_runs: Vec<(usize, usize)> = Vec::new();
    let mut at = 0usize;
    for s in &segs {
        if s.src == Source::Raw {
            raw_runs.push((at, at + s.len as usize));
        }
        at += s.len as usize;
    }
    let raw_in = |a: usize, b: usize| -> usize {
        let mut k = raw_runs.partition_point(|r| r.1 <= a);
        let mut n = 0;
        while k < raw_runs.len() && raw_runs[k].0 < b {
            n += raw_runs[k].1.min(b) - raw_runs[k].0.max(a);
            k += 1;
        }
        n
    };
    // position + 1 of the latest gram per bucket (0 = empty)
    let mut table = vec![0u32; 1 << bits];
    let last_gram = file.len() - K; // last position with a whole gram
    let mut inserted = 0usize; // positions < inserted are in the table
    let insert_to = |table: &mut Vec<u32>, inserted: &mut usize, upto: usize| {
        let upto = upto.min(last_gram + 1);
        // every other position: a repeat of K + 1 bytes or more still meets one, and the
        // backward extension recovers its start
        while *inserted < upto {
            table[gram_hash(file, *inserted, bits)] = *inserted as u32 + 1;
            *inserted += 2;
        }
    };
    let c = &cfg.cost;
    let mut out: Vec<Segment> = Vec::with_capacity(segs.len());
    let mut pos = 0usize;
    for seg in segs {
        let len = seg.len as usize;
        if seg.src != Source::Raw || len < MIN_COPY || file.len() > u32::MAX as usize {
            push_merged(&mut out, seg);
            pos += len;
            continue;
        }
        let (a, b) = (pos, pos + len);
        let mut raw_start = a;
        let mut i = a;
        let mut misses = 0usize;
        while i + K <= b {
            insert_to(&mut table, &mut inserted, i);
            let cand = table[gram_hash(file, i, bits)] as usize;
            let mut took = false;
            if cand > 0 {
                let p = cand - 1;
                // forward: file[p + n] == file[i + n] is exactly what a forward copy rebuilds
                let max = b - i;
                let mut n = 0;
                while n < max && file[p + n] == file[i + n] {
                    n += 1;
                }
                if n >= K {
                    let mut back = 0;
                    while back < i - raw_start
                        && back < p
                        && file[p - back - 1] == file[i - back - 1]
                    {
                        back += 1;
                    }
                    let (start, src, total) = (i - back, p - back, n + back);
                    let dist = (start - src) as u64;
                    let dist_bits = 8.0 * (64 - dist.leading_zeros()).div_ceil(7).max(1) as f64;
                    let saved = total - raw_in(src, src + total);
                    // a new source position costs like a snapshot jump besides its distance
                    let cost = c.seg_bits + c.jump_bits + dist_bits;
                    if total >= MIN_COPY && saved as f64 * raw_bits > cost {
                        if start > raw_start {
                            push_merged(
                                &mut out,
                                Segment {
                                    len: (start - raw_start) as u32,
                                    src: Source::Raw,
                                },
                            );
                        }
                        push_merged(
                            &mut out,
                            Segment {
                                len: total as u32,
                                src: Source::SelfCopy { off: src as u64 },
                            },
                        );
                        i = start + total;
                        raw_start = i;
                        took = true;
                        misses = 0;
                    }
                }
            }
            if !took {
                misses += 1;
                i += 1 + (misses >> 7).min(cfg.max_skip.saturating_sub(1));
            }
        }
        if b > raw_start {
            push_merged(
                &mut out,
                Segment {
                    len: (b - raw_start) as u32,
                    src: Source::Raw,
                },
            );
        }
        pos = b;
    }
    out
}
