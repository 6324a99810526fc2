//! Soft identity: approximate snapshot matches for what the exact planner left raw.
//!
//! A pass over the raw runs of a plan. Each run is cut into windows of [`WINDOW`] bytes; for
//! each window a few candidate alignments (the alignment of the last soft hit, of the snapshot
//! segments around the run, and k=8/k=4 index hits at the window start and middle) are
//! scored by counting equal bytes under `id`. A window with at least `soft_min_equal` of its
//! bytes equal is a hit; otherwise each half is tried on its own. Hits at one alignment that
//! touch coalesce, and a coalesced hit is kept when the cost model says its equal bytes are
//! worth more than the segment and its patch runs.
//!
//! In memory a soft hit is an `id` run at one alignment broken by raw runs (the patch bytes,
//! which go to the spill like any raw byte, so raw_ratio counts them); the `.pbb` table folds
//! it into one soft record with a patch list ([`crate::blueprint::pbb`]). Only bytes no hit
//! covers stay raw spill.

use crate::blueprint::{Segment, Source, Transform};
use crate::index::{window_hash, IndexSet, Projection};

use super::{push_merged, PlanConfig};

/// Window length tried whole, then in halves.
pub const WINDOW: usize = 32;
/// Shortest raw run worth a look.
const MIN_RUN: usize = WINDOW / 2;
/// Estimated bits per patch run in the folded table (two small varints after zstd).
const PATCH_BITS: f64 = 12.0;

/// Rewrite the raw runs of `segs` (a plan of `file`) with soft hits into `snap`.
/// `admit(file_pos, snap_off, raw_run_len)` says whether a candidate may be used (section
/// gating).
pub fn pass(
    file: &[u8],
    snap: &[u8],
    idx: &IndexSet,
    segs: Vec<Segment>,
    cfg: &PlanConfig,
    raw_bits: f64,
    admit: &mut dyn FnMut(usize, usize, usize) -> bool,
) -> Vec<Segment> {
    let min_equal = cfg.soft_min_equal.clamp(0.5, 1.0);
    let k8 = idx.get(Projection::Raw, 8);
    let k4 = idx.get(Projection::Raw, 4);
    let mut out: Vec<Segment> = Vec::with_capacity(segs.len());
    let mut pos = 0usize;
    let mut last_delta: Option<i64> = None;
    let mut cands: Vec<i64> = Vec::with_capacity(32);
    for (si, seg) in segs.iter().enumerate() {
        let len = seg.len as usize;
        if seg.src != Source::Raw || len < MIN_RUN {
            if let Source::Snap { off, .. } = seg.src {
                last_delta = Some(off as i64 - pos as i64);
            }
            push_merged(&mut out, *seg);
            pos += len;
            continue;
        }
        let (a, b) = (pos, pos + len);
        let next_delta = segs.get(si + 1).and_then(|n| match n.src {
            Source::Snap { off, .. } => Some(off as i64 - b as i64),
            _ => None,
        });
        // hits: (start, end, delta), in file order, touching hits at one delta coalesced
        let mut hits: Vec<(usize, usize, i64)> = Vec::new();
        let mut w = a;
        while w + MIN_RUN <= b {
            let we = (w + WINDOW).min(b);
            cands.clear();
            cands.extend(last_delta);
            cands.extend(next_delta);
            if let Some(&(_, _, d)) = hits.last() {
                cands.push(d);
            }
            for probe in [w, w + (we - w) / 2] {
                if probe + 8 > file.len() {
                    continue;
                }
                for (ix, k) in [(k8, 8u8), (k4, 4u8)] {
                    let Some(ix) = ix else { continue };
                    let h = window_hash(Projection::Raw, k, file, probe);
                    for p in ix.candidates(h).take(cfg.max_candidates) {
                        cands.push(p as i64 - probe as i64);
                    }
                }
            }
            cands.sort_unstable();
            cands.dedup();
            let mut found = false;
            // whole window, then halves
            let mid = w + (we - w) / 2;
            for (s, e) in [(w, we), (w, mid), (mid, we)] {
                if found && s == w {
                    continue; // the whole window already hit
                }
                let need = ((e - s) as f64 * min_equal).ceil() as usize;
                let mut best: Option<(usize, i64)> = None;
                for &d in &cands {
                    let (ss, se) = (s as i64 + d, e as i64 + d);
                    if ss < 0 || se > snap.len() as i64 || !admit(s, ss as usize, len) {
                        continue;
                    }
                    let eq = equal_bytes(&file[s..e], &snap[ss as usize..se as usize]);
                    if eq >= need && best.is_none_or(|(b, _)| eq > b) {
                        best = Some((eq, d));
                    }
                }
                if let Some((_, d)) = best {
                    match hits.last_mut() {
                        Some(h) if h.2 == d && h.1 == s => h.1 = e,
                        _ => hits.push((s, e, d)),
                    }
                    found = true;
                    if s == w && e == we {
                        break;
                    }
                }
            }
            w = we;
        }
        // emit: raw gaps, and each hit that pays as an id/raw alternation
        let mut at = a;
        for (s, e, d) in hits {
            let segs_of_hit = alternation(file, snap, s, e, d);
            let Some((hs, he, parts)) = segs_of_hit else {
                continue;
            };
            let equal: usize = parts
                .iter()
                .filter(|p| p.src != Source::Raw)
                .map(|p| p.len as usize)
                .sum();
            let patches = parts.iter().filter(|p| p.src == Source::Raw).count();
            let c = &cfg.cost;
            let rep = last_delta == Some(d) || next_delta == Some(d);
            let cost =
                c.seg_bits + if rep { 2.0 } else { c.jump_bits } + patches as f64 * PATCH_BITS;
            if equal as f64 * raw_bits <= cost {
                continue;
            }
            if hs > at {
                push_merged(
                    &mut out,
                    Segment {
                        len: (hs - at) as u32,
                        src: Source::Raw,
                    },
                );
            }
            for p in parts {
                push_merged(&mut out, p);
            }
            at = he;
            last_delta = Some(d);
        }
        if b > at {
            push_merged(
                &mut out,
                Segment {
                    len: (b - at) as u32,
                    src: Source::Raw,
                },
            );
        }
        pos = b;
    }
    out
}

fn equal_bytes(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

/// The file range `[s, e)` at snapshot delta `d` as `id` runs and raw runs, trimmed so it
/// starts and ends with an `id` run; `None` when no byte is equal.
fn alternation(
    file: &[u8],
    snap: &[u8],
    s: usize,
    e: usize,
    d: i64,
) -> Option<(usize, usize, Vec<Segment>)> {
    let eq = |i: usize| file[i] == snap[(i as i64 + d) as usize];
    let s = (s..e).find(|&i| eq(i))?;
    let e = (s..e).rev().find(|&i| eq(i))? + 1;
    let mut parts = Vec::new();
    let mut i = s;
    while i < e {
        let same = eq(i);
        let mut j = i + 1;
        while j < e && eq(j) == same {
            j += 1;
        }
        parts.push(Segment {
            len: (j - i) as u32,
            src: if same {
                Source::Snap {
                    op: Transform::Id,
                    off: (i as i64 + d) as u64,
                    imm: 0,
                }
            } else {
                Source::Raw
            },
        });
        i = j;
    }
    Some((s, e, parts))
}
