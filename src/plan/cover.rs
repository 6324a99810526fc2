//! The cover engine: approximate covers found through the minimizer index (bsdiff /
//! HDiffPatch style, with a sampled index instead of a suffix array).
//!
//! A *cover* is a file range `[start, start + len)` rebuilt from the snapshot at one diagonal
//! (`snapshot offset - file offset`), where some bytes may differ: the per-byte differences
//! travel in the difference stream, mostly zeros ([`Source::Cover`]). The engine:
//!
//! 1. **Seeds** (`sparse`): the file's own minimizer anchors ([`crate::index::minimizer`]),
//!    looked up in the snapshot's minimizer index; every match of `w + 7` bytes or more is
//!    seeded. With `sparse` off, every file position is looked up (the ablation baseline).
//!    Before any lookup the diagonal of the previous cover is tried at the anchor.
//! 2. **Diagonal following**: anchors inside a region already covered are skipped, so a long
//!    copy costs one lookup and a linear extension, not a probe per position.
//! 3. **Extension** (`covers`): from a seed, forward and backward along the diagonal with an
//!    X-drop rule on the estimated saving: an equal byte saves a literal's bits minus a zero
//!    difference's, a differing byte costs `mismatch_bits` more than a literal; the cover
//!    ends where the running saving peaked, once it fell `xdrop_bits` below that peak. With
//!    `covers` off, extension stops at the first differing byte (exact `id` runs).
//! 4. **Choice**: the seed whose extension saves the most wins, and a cover is kept only when
//!    its saving exceeds its record's bits (fewer when it continues the previous diagonal).
//! 5. **Fast reject** (`fast_reject`): a block whose sampled byte entropy is above
//!    `reject_bits` is probed only at a few sampled windows (every [`PROBE_STRIDE`] bytes);
//!    when none of them seeds a cover the block stays literal without hashing the rest, so
//!    random data plans at memory speed while a long copy of pseudo-random snapshot bytes is
//!    still found (it spans a probe window) and then followed along its diagonal.
//!    **Weak blocks** (`weak_share`, on at `fast`): after a block planned in full whose
//!    covers hold fewer equal bytes than that share of it (a file the snapshot does not
//!    hold: the synthetic banks offer short covers full of differences that the packer then
//!    loses to plain compression), the next blocks take the same sampled probes; one that
//!    seeds a cover of `strong_bytes` equal bytes or more has its block planned in full from
//!    its start, as it would have been, and the blocks after it too while they save enough.
//! 6. **Diagonal merge** (`diagonal_merge`): after the parallel pass, neighbouring covers on
//!    the same diagonal with a gap of at most `merge_gap` bytes become one cover when the gap
//!    costs less as differences than as literals plus a record.
//!
//! The file is split by range over threads; covers meeting at a split merge in step 6 (a gap
//! of zero always merges). With `refine` (`max`), the merged covers are chosen again, range
//! by range, over every diagonal the index offers at every anchor ([`super::refine`]), and
//! merged once more.

use crate::blueprint::{Segment, Source, Transform};
use crate::index::minimizer::{self, gram_hash, MinIndex};

use super::PlanConfig;

/// Block size of the fast-reject decision.
pub const BLOCK: usize = 64 << 10;
/// Gram positions whose anchors are computed at a time in a block (sparse probing): the
/// most hashed in vain when a cover found early in the step reaches past it.
const SPARSE_STEP: usize = 256;
/// ...and at most this many while no cover ends past a step.
const SPARSE_STEP_MAX: usize = 4096;
/// Distance between sampled probe windows in a rejected-looking block.
pub const PROBE_STRIDE: usize = 4 << 10;
/// Bytes per sampled probe window.
const PROBE_LEN: usize = 64;
/// Anchors looked up per sampled probe window.
const PROBE_ANCHORS: usize = 2;

/// A cover found by the engine: `[start, start + len)` at snapshot `snap`, with `diffs`
/// differing bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cover {
    pub start: usize,
    pub len: usize,
    pub snap: usize,
    pub diffs: usize,
}

impl Cover {
    pub(super) fn end(&self) -> usize {
        self.start + self.len
    }
    pub(super) fn diag(&self) -> i64 {
        self.snap as i64 - self.start as i64
    }
}

/// Byte prices in bits, from the config and the file's estimated literal cost.
#[derive(Debug, Clone, Copy)]
pub struct Prices {
    /// Saving of an equal byte (a literal's bits minus a zero difference's).
    pub gain: f64,
    /// Extra cost of a differing byte over a literal.
    pub penalty: f64,
    pub record: f64,
    pub rep_record: f64,
    pub xdrop: f64,
}

impl Prices {
    pub fn new(cfg: &PlanConfig, raw_bits: f64) -> Prices {
        let c = &cfg.cover;
        Prices {
            gain: (raw_bits - c.zero_bits).max(0.05),
            penalty: c.mismatch_bits.max(0.05),
            record: c.record_bits,
            rep_record: c.rep_record_bits,
            xdrop: c.xdrop_bits,
        }
    }
}

/// Quick pick's counts kept per seed (those of further candidates are made again).
const QUICK_MAX: usize = 16;

#[inline(always)]
fn load8(b: &[u8], p: usize) -> u64 {
    u64::from_le_bytes(b[p..p + 8].try_into().expect("8"))
}

/// About how many equal bytes `covers` (in file order) hold inside `[lo, hi)`: each cover's
/// part in the range less that part's share of its differing bytes.
pub(super) fn equal_within(covers: &[Cover], lo: usize, hi: usize) -> usize {
    let mut eq = 0;
    for c in covers.iter().rev() {
        if c.end() <= lo {
            break;
        }
        let inside = c.end().min(hi).saturating_sub(c.start.max(lo));
        eq += inside - inside * c.diffs / c.len.max(1);
    }
    eq
}

/// Order-0 entropy (bits per byte) of up to four 1 KiB samples of `d`.
pub fn sample_entropy(d: &[u8]) -> f64 {
    let mut hist = [0u32; 256];
    let mut n = 0u32;
    let piece = 1024.min(d.len());
    if piece == 0 {
        return 0.0;
    }
    for k in 0..4 {
        let at = (d.len() - piece) * k / 3;
        for &b in &d[at..at + piece] {
            hist[b as usize] += 1;
        }
        n += piece as u32;
    }
    let n = n as f64;
    hist.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// The per-thread planning context.
pub struct Engine<'a> {
    pub f: &'a [u8],
    pub s: &'a [u8],
    pub idx: &'a MinIndex,
    pub cfg: &'a PlanConfig,
    pub prices: Prices,
}

/// An extension result: bytes covered each way, differing bytes, saving in bits.
#[derive(Debug, Clone, Copy, Default)]
struct Ext {
    len: usize,
    diffs: usize,
    score: f64,
}

impl Ext {
    /// Make (len, diffs, score) the best prefix if it scores higher.
    #[inline(always)]
    fn keep(&mut self, len: usize, diffs: usize, score: f64) {
        if score > self.score {
            *self = Ext { len, diffs, score };
        }
    }
}

impl Engine<'_> {
    /// Whether file bytes `[lo, hi)` (at most a [`BLOCK`]) take the fast-reject path: the
    /// switch is on and their sampled entropy is above `reject_bits`.
    pub(super) fn looks_random(&self, lo: usize, hi: usize) -> bool {
        self.cfg.fast_reject && sample_entropy(&self.f[lo..hi]) > self.cfg.reject_bits
    }

    /// The snapshot positions the index offers for gram hash `h` (at most `max_candidates`,
    /// into `cands`, cleared first), their bytes prefetched: each is a random read, started
    /// before any is verified.
    pub(super) fn candidates(&self, h: u64, cands: &mut Vec<u64>) {
        cands.clear();
        self.idx.candidates(h, self.cfg.max_candidates, cands);
        for &sp in cands.iter() {
            if (sp as usize) < self.s.len() {
                crate::index::prefetch(self.s[sp as usize..].as_ptr());
            }
        }
    }

    /// Forward from (fi, si), at most `max` bytes.
    #[inline]
    fn fwd(&self, fi: usize, si: usize, max: usize) -> Ext {
        let (f, s) = (self.f, self.s);
        let max = max.min(f.len() - fi).min(s.len() - si);
        // the first byte of a little-endian word in walking order is its lowest one
        self.walk(
            max,
            |n| load8(f, fi + n) ^ load8(s, si + n),
            |n| f[fi + n] == s[si + n],
        )
    }

    /// Backward from (fi, si) (exclusive), at most `max` bytes.
    #[inline]
    fn back(&self, fi: usize, si: usize, max: usize) -> Ext {
        let (f, s) = (self.f, self.s);
        let max = max.min(fi).min(si);
        // walking down, the first byte is the loaded word's highest one: swapped to lowest
        self.walk(
            max,
            |n| (load8(f, fi - n - 8) ^ load8(s, si - n - 8)).swap_bytes(),
            |n| f[fi - n - 1] == s[si - n - 1],
        )
    }

    /// One walk along a diagonal, `max` bytes at most: `word(n)` is the xor of the 8 file
    /// and snapshot bytes from step `n` on, step `n` in its lowest byte, `byte_eq(n)`
    /// compares the bytes at step `n`. Exact (`covers` off): stops at the first difference.
    /// Approximate: X-drop on the estimated saving, returning the best-scoring prefix; a
    /// word with differing bytes is taken whole, its equal runs scored at once and only its
    /// differing bytes one by one (the saving only falls at a differing byte and only rises
    /// along an equal run, so the best prefix and the drop are found at those points).
    #[inline(always)]
    fn walk(
        &self,
        max: usize,
        word: impl Fn(usize) -> u64,
        byte_eq: impl Fn(usize) -> bool,
    ) -> Ext {
        let p = &self.prices;
        let approx = self.cfg.covers;
        let (mut score, mut best) = (0.0f64, Ext::default());
        let mut diffs = 0usize;
        let mut n = 0usize;
        while n < max {
            if n + 8 <= max {
                let x = word(n);
                if x == 0 {
                    // a run of equal words (a covered file's whole diagonal): skip it 32
                    // bytes a step and score it once
                    let mut m = n + 8;
                    while m + 32 <= max
                        && (word(m) | word(m + 8) | word(m + 16) | word(m + 24)) == 0
                    {
                        m += 32;
                    }
                    while m + 8 <= max && word(m) == 0 {
                        m += 8;
                    }
                    score += (m - n) as f64 * p.gain;
                    n = m;
                    best.keep(n, diffs, score);
                    continue;
                }
                if !approx {
                    n += (x.trailing_zeros() / 8) as usize;
                    return Ext {
                        len: n,
                        diffs: 0,
                        score: n as f64 * p.gain,
                    };
                }
                // bit 8k set where byte k differs
                let mut d = x | (x >> 4);
                d |= d >> 2;
                d |= d >> 1;
                d &= 0x0101_0101_0101_0101;
                let mut k = 0usize; // bytes of this word taken
                while d != 0 {
                    let at = (d.trailing_zeros() / 8) as usize;
                    d &= d - 1;
                    if at > k {
                        score += (at - k) as f64 * p.gain;
                        n += at - k;
                        best.keep(n, diffs, score);
                    }
                    score -= p.penalty;
                    diffs += 1;
                    n += 1;
                    k = at + 1;
                    if score < best.score - p.xdrop {
                        return best;
                    }
                }
                if k < 8 {
                    score += (8 - k) as f64 * p.gain;
                    n += 8 - k;
                    best.keep(n, diffs, score);
                }
                continue;
            }
            if byte_eq(n) {
                score += p.gain;
                n += 1;
                best.keep(n, diffs, score);
            } else {
                if !approx {
                    break;
                }
                score -= p.penalty;
                diffs += 1;
                n += 1;
                if score < best.score - p.xdrop {
                    break;
                }
            }
        }
        if !approx {
            return Ext {
                len: n,
                diffs: 0,
                score: n as f64 * p.gain,
            };
        }
        best
    }

    /// Exact matching bytes around the equal gram at (i, sp), counted up to `want`.
    #[inline]
    fn exact_len(&self, i: usize, sp: usize, floor: usize, ceil: usize, want: usize) -> usize {
        let (f, s) = (self.f, self.s);
        let mut n = 8;
        let fmax = ceil
            .min(f.len())
            .saturating_sub(i)
            .min(s.len() - sp)
            .min(want + 8);
        while n + 8 <= fmax {
            let x = load8(f, i + n) ^ load8(s, sp + n);
            if x != 0 {
                n += (x.trailing_zeros() / 8) as usize;
                break;
            }
            n += 8;
        }
        if n >= want {
            return n;
        }
        let bmax = (i - floor).min(sp).min(want);
        let mut k = 0;
        while k < bmax && f[i - k - 1] == s[sp - k - 1] {
            k += 1;
        }
        n + k
    }

    /// The cover through seed (file `i`, snapshot `sp`), not before `floor` nor past `ceil`;
    /// `None` unless the seed's 8 bytes are equal. Returns the cover and its saving.
    #[inline]
    pub(super) fn extend(
        &self,
        i: usize,
        sp: usize,
        floor: usize,
        ceil: usize,
    ) -> Option<(Cover, f64)> {
        if sp + 8 > self.s.len() || i + 8 > self.f.len() || load8(self.f, i) != load8(self.s, sp) {
            return None;
        }
        let min_seed = self.cfg.min_seed;
        if min_seed > 8 && self.exact_len(i, sp, floor, ceil, min_seed) < min_seed {
            return None; // a gram that happens to repeat, not a match worth extending
        }
        let fw = self.fwd(i, sp, ceil.saturating_sub(i));
        let bk = self.back(i, sp, i - floor);
        let c = Cover {
            start: i - bk.len,
            len: bk.len + fw.len,
            snap: sp - bk.len,
            diffs: bk.diffs + fw.diffs,
        };
        Some((c, fw.score + bk.score))
    }

    /// The covers of ranges planned apart, joined: `parts[i]` holds the covers of
    /// `[i * chunk, (i + 1) * chunk)`. Where a range's last cover ends at the edge, it goes
    /// on along its diagonal into the next range as far as its walk takes it, as it would
    /// have in one range: planned without that diagonal, the next range may take others (a
    /// repetitive snapshot offers several that score the same) or none for a while. The
    /// next range's covers that the longer one spans are dropped; one it runs into is cut
    /// to start where it ends.
    pub fn join(&self, parts: Vec<Vec<Cover>>, chunk: usize) -> Vec<Cover> {
        let mut out: Vec<Cover> = Vec::with_capacity(parts.iter().map(Vec::len).sum());
        for (i, part) in parts.into_iter().enumerate() {
            let edge = i * chunk;
            let mut reach = edge;
            if let Some(last) = out.last_mut().filter(|c| c.end() == edge && edge > 0) {
                let si = last.snap + last.len;
                // up to where the next range takes the same diagonal again ([`merge`] joins
                // the two there): at once where it never left it (a covered file)
                let ceil = part
                    .iter()
                    .find(|c| c.diag() == last.diag())
                    .map_or(edge + chunk, |c| c.start)
                    .min(self.f.len());
                if si < self.s.len() && edge < ceil {
                    let e = self.fwd(edge, si, ceil - edge);
                    last.len += e.len;
                    last.diffs += e.diffs;
                    reach = last.end();
                }
            }
            for mut c in part {
                if c.end() <= reach {
                    continue;
                }
                if c.start < reach {
                    let k = reach - c.start;
                    let cut = differing(&self.f[c.start..reach], &self.s[c.snap..c.snap + k]);
                    c.start = reach;
                    c.snap += k;
                    c.len -= k;
                    c.diffs -= cut;
                }
                out.push(c);
            }
        }
        out
    }

    /// Plan the file range `[a, b)`: covers in file order, inside the range.
    pub fn run(&self, a: usize, b: usize) -> Vec<Cover> {
        self.run_from(a, b, false)
    }

    /// [`Engine::run`], its first block probed as after a weak one when `start_weak` (and
    /// `weak_share` is on): for a caller that knows the bytes before `a` were weak.
    pub fn run_from(&self, a: usize, b: usize, start_weak: bool) -> Vec<Cover> {
        let cfg = self.cfg;
        let w = self.idx.w();
        let mut out: Vec<Cover> = Vec::new();
        let mut cur = a;
        let mut last_d: Option<i64> = None;
        let mut scratch = minimizer::Scratch::default();
        let mut anchors: Vec<(usize, u64)> = Vec::new();
        let mut cands: Vec<u64> = Vec::with_capacity(cfg.max_candidates);
        let mut blk = a;
        // the last block planned in full saved little: probe the next ones first
        let mut weak = start_weak && cfg.weak_share > 0.0;
        while blk < b {
            let blk_start = blk;
            let blk_end = (blk + BLOCK).min(b);
            let from = blk.max(cur);
            blk = blk_end;
            if from + 8 > blk_end {
                weak = false; // covered through by the cover before it
                continue;
            }
            let random = self.looks_random(from, blk_end);
            // where the block starts: a weak-mode probe that hits plans it in full from here
            let entry = (cur, last_d, out.len());
            if random || weak {
                // Sampled probes: plan the block in full only if one of them seeds a cover
                // (after a weak block: one of `strong_bytes` equal bytes or more; the weaker
                // covers a probe seeds are kept).
                let need = if random { 0 } else { cfg.strong_bytes };
                let mut hit = false;
                let mut x = from;
                while x < blk_end && !hit {
                    let lo = x.max(cur);
                    let y = (x + PROBE_LEN).min(blk_end);
                    x += PROBE_STRIDE;
                    if lo + 8 > y {
                        continue;
                    }
                    anchors.clear();
                    minimizer::anchors(self.f, lo, y, w, &mut scratch, &mut anchors);
                    // two anchors per window: a long copy spans the whole window, so
                    // either of them finds it
                    for &(p, h) in anchors.iter().take(PROBE_ANCHORS) {
                        if p >= b {
                            break; // a window's minimum may lie past the range
                        }
                        if p < cur {
                            continue;
                        }
                        if self.seed(p, h, cur, b, &mut last_d, &mut cands, &mut out) {
                            let c = out.last().expect("seed pushed a cover");
                            cur = c.end();
                            hit = c.len - c.diffs >= need;
                            break;
                        }
                    }
                }
                if !hit {
                    continue;
                }
                if !random {
                    // the block holds a strong cover: planned in full from its start, as it
                    // would have been after a block that saved enough
                    (cur, last_d) = (entry.0, entry.1);
                    out.truncate(entry.2);
                }
            }
            let from = from.max(cur);
            if from >= blk_end {
                continue;
            }
            if cfg.sparse {
                // Anchors a step at a time from where the last cover ended, so the bytes a
                // cover spans are never hashed (a covered file is mostly such bytes). A step
                // starts small after a jump to a cover's end and doubles while the steps
                // follow one another (fewer calls where covers are short or absent). After a
                // jump the windows that start up to w - 1 grams before it are computed too,
                // so the anchors at or after `cur` are those of the whole block; `next`
                // skips the ones a step saw already.
                let (mut x, mut next, mut step) = (from, from, SPARSE_STEP);
                while x < blk_end {
                    let jumped = cur > x;
                    step = if jumped {
                        SPARSE_STEP
                    } else {
                        (step * 2).min(SPARSE_STEP_MAX)
                    };
                    x = x.max(cur);
                    if x >= blk_end {
                        break;
                    }
                    let y = (x + step).min(blk_end);
                    anchors.clear();
                    let lo = if jumped {
                        x.saturating_sub(w - 1).max(from)
                    } else {
                        x
                    };
                    minimizer::anchors(self.f, lo, y, w, &mut scratch, &mut anchors);
                    for k in 0..anchors.len() {
                        let (p, h) = anchors[k];
                        if p >= b {
                            break; // a window's minimum may lie past the range
                        }
                        if p < cur || p < next {
                            continue; // inside a cover: follow its diagonal, do not probe
                        }
                        next = p + 1;
                        if let Some(&(_, hq)) = anchors.get(k + 2) {
                            self.idx.prefetch(hq);
                        }
                        if self.seed(p, h, cur, b, &mut last_d, &mut cands, &mut out) {
                            cur = out.last().map_or(cur, |c| c.end());
                        }
                    }
                    x = y;
                }
            } else {
                let mut p = from;
                let last = blk_end.min(self.f.len().saturating_sub(7));
                while p < last {
                    if p >= cur {
                        let h = gram_hash(self.f, p);
                        if self.seed(p, h, cur, b, &mut last_d, &mut cands, &mut out) {
                            cur = out.last().map_or(cur, |c| c.end());
                            p = cur;
                            continue;
                        }
                    } else {
                        p = cur;
                        continue;
                    }
                    p += 1;
                }
            }
            if cfg.weak_share > 0.0 {
                weak = (equal_within(&out, blk_start, blk_end) as f64)
                    < cfg.weak_share * (blk_end - blk_start) as f64;
            }
        }
        out
    }

    /// Equal bytes among the 64 from file `i` and snapshot `sp` (fewer near either end),
    /// counted a word at a time.
    #[inline]
    fn quick_equal(&self, i: usize, sp: usize) -> usize {
        const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        const ONES: u64 = 0x0101_0101_0101_0101;
        // one per equal byte of the 8 at x, in that byte's lowest bit
        let eq = |x: u64| (!(((x & LOW7) + LOW7) | x | LOW7)) >> 7;
        if let (Some(a), Some(b)) = (self.f.get(i..i + 64), self.s.get(sp..sp + 64)) {
            // each byte lane sums at most 8 ones: one multiply adds the lanes up
            let lanes = (0..8).fold(0u64, |acc, k| acc + eq(load8(a, 8 * k) ^ load8(b, 8 * k)));
            return (lanes.wrapping_mul(ONES) >> 56) as usize;
        }
        let words = 64
            .min(self.f.len().saturating_sub(i))
            .min(self.s.len().saturating_sub(sp))
            / 8;
        (0..words)
            .map(|k| eq(load8(self.f, i + 8 * k) ^ load8(self.s, sp + 8 * k)).count_ones() as usize)
            .sum()
    }

    /// Try to start a cover at file position `p` (gram hash `h`); pushes it and returns true
    /// when one pays.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn seed(
        &self,
        p: usize,
        h: u64,
        floor: usize,
        ceil: usize,
        last_d: &mut Option<i64>,
        cands: &mut Vec<u64>,
        out: &mut Vec<Cover>,
    ) -> bool {
        let pr = &self.prices;
        // candidates are compared over at most `good_enough` bytes ahead; the winner is then
        // extended in full
        let cmp_ceil = ceil.min(p.saturating_add(self.cfg.good_enough.max(16)));
        let mut best: Option<(Cover, f64)> = None;
        let net = |c: &(Cover, f64), ld: Option<i64>| {
            c.1 - if Some(c.0.diag()) == ld {
                pr.rep_record
            } else {
                pr.record
            }
        };
        if let Some(d) = *last_d {
            let sp = p as i64 + d;
            if sp >= 0 {
                best = self.extend(p, sp as usize, floor, cmp_ceil);
            }
        }
        self.candidates(h, cands);
        // quick pick: only the candidates with the most equal bytes among the next 64 are
        // walked
        // (the first QUICK_MAX candidates' counts are kept; a lone candidate needs none)
        let mut quick = [0usize; QUICK_MAX];
        let top = match self.cfg.quick_pick && cands.len() > 1 {
            true => cands
                .iter()
                .enumerate()
                .map(|(n, &sp)| {
                    let q = self.quick_equal(p, sp as usize);
                    if n < QUICK_MAX {
                        quick[n] = q;
                    }
                    q
                })
                .max(),
            false => None,
        };
        for (n, &sp) in cands.iter().enumerate() {
            let d = sp as i64 - p as i64;
            if Some(d) == *last_d {
                continue;
            }
            if top.is_some_and(|t| {
                let q = match n < QUICK_MAX {
                    true => quick[n],
                    false => self.quick_equal(p, sp as usize),
                };
                q < t
            }) {
                continue;
            }
            if let Some(c) = self.extend(p, sp as usize, floor, cmp_ceil) {
                if best.is_none_or(|b| net(&c, *last_d) > net(&b, *last_d)) {
                    best = Some(c);
                }
            }
        }
        if let Some((c, _)) = best {
            if c.end() >= cmp_ceil && cmp_ceil < ceil {
                best = self.extend(p, c.snap + (p - c.start), floor, ceil);
            }
        }
        match best {
            Some(c) if net(&c, *last_d) > 0.0 && c.0.len > 0 => {
                *last_d = Some(c.0.diag());
                out.push(c.0);
                true
            }
            _ => false,
        }
    }
}

/// Bytes that differ between `a` and `b` (of one length).
pub(super) fn differing(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// Merge neighbouring covers on one diagonal: always when they touch, and (with
/// `diagonal_merge`) across a gap of at most `merge_gap` bytes when the gap priced as
/// differences is cheaper than as literals plus the second cover's record.
pub fn merge(f: &[u8], s: &[u8], covers: Vec<Cover>, cfg: &PlanConfig, pr: &Prices) -> Vec<Cover> {
    let mut out: Vec<Cover> = Vec::with_capacity(covers.len());
    for c in covers {
        if let Some(last) = out.last_mut() {
            if last.diag() == c.diag() && c.start >= last.end() {
                let gap = c.start - last.end();
                let join = if gap == 0 {
                    true
                } else if cfg.diagonal_merge && gap <= cfg.merge_gap {
                    let (fa, sa) = (last.end(), last.snap + last.len);
                    let eq = f[fa..fa + gap]
                        .iter()
                        .zip(&s[sa..sa + gap])
                        .filter(|(x, y)| x == y)
                        .count();
                    let delta = eq as f64 * pr.gain - (gap - eq) as f64 * pr.penalty;
                    delta + pr.rep_record > 0.0
                } else {
                    false
                };
                if join {
                    let (fa, sa) = (last.end(), last.snap + last.len);
                    let neq = differing(&f[fa..fa + gap], &s[sa..sa + gap]);
                    last.len += gap + c.len;
                    last.diffs += neq + c.diffs;
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

/// Segments and spill for covers (file order, non-overlapping) over `f`: gaps become raw
/// segments, exact covers `id` segments, others approximate covers with their differences.
/// The spill is filled on `threads` threads (each a disjoint part of it).
pub fn emit(f: &[u8], s: &[u8], covers: &[Cover], threads: usize) -> (Vec<Segment>, Vec<u8>) {
    let mut segs = Vec::with_capacity(2 * covers.len() + 1);
    // spill pieces: (file start, len, snapshot offset of a cover's differences)
    let mut pieces: Vec<(usize, usize, Option<usize>)> = Vec::with_capacity(2 * covers.len() + 1);
    let mut at = 0usize;
    let push = |segs: &mut Vec<Segment>, len: usize, src: Source| {
        let mut left = len;
        let mut off = match src {
            Source::Snap { off, .. } | Source::Cover { off } => off,
            _ => 0,
        };
        while left > 0 {
            let n = left.min(u32::MAX as usize);
            let src = match src {
                Source::Snap { op, imm, .. } => Source::Snap { op, off, imm },
                Source::Cover { .. } => Source::Cover { off },
                other => other,
            };
            segs.push(Segment { len: n as u32, src });
            left -= n;
            off += n as u64;
        }
    };
    for c in covers {
        debug_assert!(c.start >= at, "covers overlap at {}", c.start);
        if c.start > at {
            push(&mut segs, c.start - at, Source::Raw);
            pieces.push((at, c.start - at, None));
        }
        if c.diffs == 0 {
            let src = Source::Snap {
                op: Transform::Id,
                off: c.snap as u64,
                imm: 0,
            };
            push(&mut segs, c.len, src);
        } else {
            push(&mut segs, c.len, Source::Cover { off: c.snap as u64 });
            pieces.push((c.start, c.len, Some(c.snap)));
        }
        at = c.end();
    }
    if f.len() > at {
        push(&mut segs, f.len() - at, Source::Raw);
        pieces.push((at, f.len() - at, None));
    }
    let total: usize = pieces.iter().map(|p| p.1).sum();
    let mut spill = crate::bigbuf::with_capacity(total);
    spill.resize(total, 0);
    let fill = |out: &mut [u8], pieces: &[(usize, usize, Option<usize>)]| {
        let mut o = 0;
        for &(fs, n, snap) in pieces {
            let dst = &mut out[o..o + n];
            match snap {
                None => dst.copy_from_slice(&f[fs..fs + n]),
                Some(sp) => {
                    for ((d, x), y) in dst.iter_mut().zip(&f[fs..fs + n]).zip(&s[sp..sp + n]) {
                        *d = x.wrapping_sub(*y);
                    }
                }
            }
            o += n;
        }
    };
    let threads = threads.max(1);
    if threads == 1 || total < 1 << 20 {
        fill(&mut spill, &pieces);
    } else {
        // groups of whole pieces with about total / threads bytes each
        let per = total.div_ceil(threads);
        std::thread::scope(|sc| {
            let mut rest: &mut [u8] = &mut spill;
            let mut k = 0;
            while k < pieces.len() {
                let (mut j, mut n) = (k, 0);
                while j < pieces.len() && (n < per || j == k) {
                    n += pieces[j].1;
                    j += 1;
                }
                let (mine, tail) = rest.split_at_mut(n);
                rest = tail;
                let group = &pieces[k..j];
                let fill = &fill;
                sc.spawn(move || fill(mine, group));
                k = j;
            }
        });
    }
    (segs, spill)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn cfg() -> PlanConfig {
        PlanConfig::default()
    }

    fn prices() -> Prices {
        Prices::new(&cfg(), 6.0)
    }

    /// The walk one byte at a time (the X-drop rule the word-wise walk must reproduce).
    fn walk_bytewise(pr: &Prices, max: usize, eq: impl Fn(usize) -> bool) -> (usize, usize) {
        let (mut score, mut best, mut best_len, mut best_diffs, mut diffs) =
            (0.0f64, 0.0f64, 0usize, 0usize, 0usize);
        for n in 0..max {
            if eq(n) {
                score += pr.gain;
                if score > best + 1e-9 {
                    (best, best_len, best_diffs) = (score, n + 1, diffs);
                }
            } else {
                score -= pr.penalty;
                diffs += 1;
                if score < best - pr.xdrop {
                    break;
                }
            }
        }
        (best_len, best_diffs)
    }

    /// An engine over file `f` and snapshot `s` at the test prices.
    fn engine<'a>(f: &'a [u8], s: &'a [u8], idx: &'a MinIndex, cfg: &'a PlanConfig) -> Engine<'a> {
        Engine {
            f,
            s,
            idx,
            cfg,
            prices: prices(),
        }
    }

    /// A snapshot of `len` seeded random bytes and its minimizer index (in `dir`).
    pub(in crate::plan) fn random_snapshot(
        seed: u64,
        len: usize,
        dir: &std::path::Path,
    ) -> (Vec<u8>, MinIndex) {
        let mut s = vec![0u8; len];
        crate::pob::prng::SplitMix64::new(seed).fill(&mut s);
        let spec = crate::index::minimizer_spec(20, 8);
        let path = dir.join("m.idx");
        MinIndex::build(spec, &s, &[0; 32], &path, 1).unwrap();
        let idx = MinIndex::open(&path, spec, s.len(), &[0; 32]).unwrap();
        (s, idx)
    }

    #[test]
    fn word_wise_walk_finds_the_bytewise_best_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (s, idx) = random_snapshot(21, 1 << 16, dir.path());
        let mut rng = crate::pob::prng::SplitMix64::new(22);
        let c = cfg();
        for density in [0u64, 2, 20, 120, 400] {
            // the file is the snapshot with about density/1000 of its bytes changed
            let mut f = s.clone();
            for b in f.iter_mut() {
                if rng.next_u64() % 1000 < density {
                    *b = b.wrapping_add(1 + (rng.next_u64() % 255) as u8);
                }
            }
            let e = engine(&f, &s, &idx, &c);
            for _ in 0..200 {
                let i = 64 + (rng.next_u64() as usize) % (f.len() - 128);
                let max = (rng.next_u64() as usize) % 3000;
                let fw = e.fwd(i, i, max);
                let want = walk_bytewise(&e.prices, max.min(f.len() - i), |n| f[i + n] == s[i + n]);
                assert_eq!(
                    (fw.len, fw.diffs),
                    want,
                    "forward at {i}, max {max}, density {density}"
                );
                let bk = e.back(i, i, max);
                let want = walk_bytewise(&e.prices, max.min(i), |n| f[i - n - 1] == s[i - n - 1]);
                assert_eq!(
                    (bk.len, bk.diffs),
                    want,
                    "backward at {i}, max {max}, density {density}"
                );
            }
        }
    }

    #[test]
    fn parallel_blake3_equals_blake3() {
        let mut d = vec![0u8; (3 << 20) + 12345];
        crate::pob::prng::SplitMix64::new(8).fill(&mut d);
        for len in [
            0,
            1,
            1024,
            1025,
            1 << 20,
            (1 << 20) + 1,
            2 << 20,
            (2 << 20) + 7,
            d.len(),
        ] {
            for depth in 0..4 {
                assert_eq!(
                    crate::util::parallel_blake3(&d[..len], depth),
                    *blake3::hash(&d[..len]).as_bytes(),
                    "len {len} depth {depth}"
                );
            }
        }
    }

    #[test]
    fn parallel_emit_equals_one_thread() {
        let mut s = vec![0u8; 3 << 20];
        crate::pob::prng::SplitMix64::new(2).fill(&mut s);
        let mut f = s[1000..(3 << 20) - 5000].to_vec();
        for i in (0..f.len()).step_by(97) {
            f[i] ^= 1;
        }
        let covers: Vec<Cover> = (0..30)
            .map(|k| Cover {
                start: k * 100_000 + 50,
                len: 90_000,
                snap: k * 100_000 + 1050,
                diffs: 1,
            })
            .collect();
        assert_eq!(emit(&f, &s, &covers, 1), emit(&f, &s, &covers, 3));
    }

    #[test]
    fn extension_bridges_sparse_differences_and_stops_in_noise() {
        let mut s = vec![0u8; 4096];
        crate::pob::prng::SplitMix64::new(11).fill(&mut s);
        let mut f = s[100..2100].to_vec();
        for i in (40..1000).step_by(30) {
            f[i] ^= 0x10; // sparse changes: inside the cover
        }
        crate::pob::prng::SplitMix64::new(12).fill(&mut f[1400..]); // noise after 1400
        let cfg = cfg();
        let e = Engine {
            f: &f,
            s: &s,
            idx: &dummy_index(),
            cfg: &cfg,
            prices: Prices::new(&cfg, 6.0),
        };
        let (c, score) = e.extend(500, 600, 0, f.len()).unwrap();
        assert_eq!((c.start, c.snap), (0, 100));
        assert!(c.len >= 1390 && c.len <= 1400, "{c:?}");
        assert_eq!(
            f[c.start + c.len - 1],
            s[c.snap + c.len - 1],
            "ends on an equal byte"
        );
        assert_eq!(c.diffs, (40..1000).step_by(30).count());
        assert!(score > 0.0);
        // exact mode stops at the first difference
        let exact = PlanConfig {
            covers: false,
            ..cfg.clone()
        };
        let e = Engine { cfg: &exact, ..e };
        let (c, _) = e.extend(500, 600, 0, f.len()).unwrap();
        assert_eq!((c.start, c.len), (491, 520 - 491));
    }

    /// A minimizer index over a tiny snapshot (the extension tests do not look anything up).
    fn dummy_index() -> MinIndex {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.idx");
        let spec = crate::index::minimizer_spec(20, 8);
        let snap = vec![1u8; 64];
        MinIndex::build(spec, &snap, &[0; 32], &path, 1).unwrap();
        MinIndex::open(&path, spec, snap.len(), &[0; 32]).unwrap()
    }

    #[test]
    fn entropy_tells_random_from_code_like_bytes() {
        let mut r = vec![0u8; 65536];
        crate::pob::prng::SplitMix64::new(4).fill(&mut r);
        assert!(sample_entropy(&r) > 7.9);
        let t: Vec<u8> = (0..65536u32)
            .map(|i| b"mov rax, rbx\n"[(i % 13) as usize])
            .collect();
        assert!(sample_entropy(&t) < 4.0);
        assert_eq!(sample_entropy(&[]), 0.0);
    }

    #[test]
    fn merge_joins_same_diagonal_neighbours_only_when_the_gap_is_cheap() {
        let s: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = s.clone();
        // a 20-byte changed region and a 300-byte unrelated region on the same diagonal
        for b in &mut f[1000..1020] {
            *b = b.wrapping_add(1);
        }
        let mut rng = crate::pob::prng::SplitMix64::new(1);
        rng.fill(&mut f[2000..2300]);
        let c = |start, len| Cover {
            start,
            len,
            snap: start,
            diffs: 0,
        };
        let mut cfg = cfg();
        cfg.cover.mismatch_bits = 0.5;
        let pr = Prices::new(&cfg, 6.0);
        let got = merge(
            &f,
            &s,
            vec![c(0, 1000), c(1020, 980), c(2300, 1700)],
            &cfg,
            &pr,
        );
        // the 20-byte gap is cheaper as differences than as a record plus literals; the
        // 300 bytes of noise are not
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].start, got[0].len, got[0].diffs), (0, 2000, 20));
        assert_eq!(got[1].start, 2300);
        // with diagonal merge off only touching covers join
        cfg.diagonal_merge = false;
        let got = merge(
            &f,
            &s,
            vec![c(0, 1000), c(1000, 20), c(1020, 980)],
            &cfg,
            &pr,
        );
        assert_eq!(got.len(), 1);
        let got = merge(&f, &s, vec![c(0, 1000), c(1020, 980)], &cfg, &pr);
        assert_eq!(got.len(), 2);
        // other diagonals never merge
        let shifted = Cover {
            start: 1020,
            len: 900,
            snap: 1021,
            diffs: 0,
        };
        let got = merge(&f, &s, vec![c(0, 1000), shifted], &cfg, &pr);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn emit_rebuilds_the_file_with_exact_runs_as_id_segments() {
        let s: Vec<u8> = (0..1000u32).map(|i| (i * 13 % 256) as u8).collect();
        let mut f = vec![9u8; 50];
        f.extend_from_slice(&s[100..300]);
        let mut near = s[500..700].to_vec();
        near[10] ^= 0x40;
        f.extend_from_slice(&near);
        f.extend_from_slice(b"tail");
        let covers = [
            Cover {
                start: 50,
                len: 200,
                snap: 100,
                diffs: 0,
            },
            Cover {
                start: 250,
                len: 200,
                snap: 500,
                diffs: 1,
            },
        ];
        let (segments, spill) = emit(&f, &s, &covers, 1);
        assert!(matches!(segments[1].src, Source::Snap { off: 100, .. }));
        assert_eq!(segments[2].src, Source::Cover { off: 500 });
        let bp = crate::blueprint::Blueprint {
            snapshot_id: [0; 32],
            file_len: f.len() as u64,
            file_hash: [0; 32],
            segments,
            spill,
        };
        let mut out = vec![0u8; f.len()];
        bp.rebuild_into(&s, &mut out).unwrap();
        assert_eq!(out, f);
        let _ = prices();
    }

    #[test]
    fn a_cover_cut_at_a_range_edge_goes_on_into_the_next_range() {
        let dir = tempfile::tempdir().unwrap();
        let (s, idx) = random_snapshot(5, 1 << 15, dir.path());
        let c = cfg();
        // the file: snapshot bytes from 1000 on (diagonal 1000), with a run of 300 changed
        // bytes at 6000 (the walk stops there)
        let mut f = s[1000..9000].to_vec();
        for b in &mut f[6000..6300] {
            *b = !*b;
        }
        let e = engine(&f, &s, &idx, &c);
        let cov = |start: usize, len: usize, snap: usize| Cover {
            start,
            len,
            snap,
            diffs: (0..len).filter(|&n| f[start + n] != s[snap + n]).count(),
        };
        let chunk = 4000;
        // range 0 ends on diagonal 1000 at the edge; range 1 took another diagonal for a
        // while (a short cover spanned, one cut), then diagonal 1000 again past the change
        let parts = vec![
            vec![cov(100, 3900, 1100)],
            vec![
                cov(4100, 50, 20_000),
                cov(5900, 200, 7000),
                cov(6300, 1700, 7300),
            ],
        ];
        let got = e.join(parts, chunk);
        assert_eq!(got[0].start, 100);
        assert_eq!(got[0].snap, 1100);
        let reach = got[0].end();
        assert!((6000..6300).contains(&reach), "walked to {reach}");
        assert_eq!(got[0].diffs, cov(100, got[0].len, 1100).diffs);
        // the 50-byte cover is gone, the one the walk ran into starts where it stopped
        // (its differences counted again), the last is kept
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[1].start, reach);
        assert_eq!(got[1].end(), 6100);
        assert_eq!(got[1].snap, 7000 + (reach - 5900));
        assert_eq!(got[1].diffs, cov(reach, 6100 - reach, got[1].snap).diffs);
        assert_eq!(got[2], cov(6300, 1700, 7300));
        // a range whose last cover stops short of the edge: nothing moves
        let parts = vec![vec![cov(100, 3800, 1100)], vec![cov(4100, 50, 20_000)]];
        let got = e.join(parts.clone(), chunk);
        assert_eq!(got, parts.concat());
    }

    #[test]
    fn after_a_weak_block_blocks_are_probed_and_a_strong_cover_plans_its_block_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let (s, idx) = random_snapshot(31, 1 << 20, dir.path());
        let mut rng = crate::pob::prng::SplitMix64::new(32);
        // 6 blocks of lowercase letters (not random-looking, nothing in the snapshot) with a
        // 40-byte snapshot snippet every 2 KiB (a weak match: about 2% of a block) ...
        let mut f: Vec<u8> = (0..6 * BLOCK)
            .map(|_| b'a' + (rng.next_u64() % 26) as u8)
            .collect();
        for at in (1000..f.len()).step_by(2048) {
            let sp = 4096 + (rng.next_u64() as usize) % (s.len() - 8192);
            f[at..at + 40].copy_from_slice(&s[sp..sp + 40]);
        }
        // ... and a strong region from the middle of block 2 to the end of block 3: one
        // snapshot run with a changed byte every 100
        let strong = 2 * BLOCK + 10_000..4 * BLOCK;
        let sp0 = 300_000;
        for (k, i) in strong.clone().enumerate() {
            f[i] = s[sp0 + k] ^ u8::from(k % 100 == 99);
        }
        let off = cfg();
        let on = PlanConfig {
            weak_share: 0.1,
            strong_bytes: 256,
            ..cfg()
        };
        let full = engine(&f, &s, &idx, &off).run(0, f.len());
        let probed = engine(&f, &s, &idx, &on).run(0, f.len());
        let within = |cs: &[Cover], r: std::ops::Range<usize>| -> Vec<Cover> {
            cs.iter()
                .filter(|c| c.start >= r.start && c.start < r.end)
                .copied()
                .collect()
        };
        // the first block is planned in full either way: it finds the snippets
        let first = within(&full, 0..BLOCK);
        assert!(first.len() >= 20, "snippets found: {}", first.len());
        assert_eq!(within(&probed, 0..BLOCK), first);
        // the weak block after it is only probed: few of its snippets are looked for
        let (a, b) = (
            within(&full, BLOCK..2 * BLOCK).len(),
            within(&probed, BLOCK..2 * BLOCK).len(),
        );
        assert!(
            a >= 20 && b * 4 <= a,
            "block 1: {a} covers planned in full, {b} probed"
        );
        // a probe finds the strong run in block 2: that block is planned in full from its
        // start, so its covers and the next block's are those of the full plan
        assert_eq!(
            within(&probed, 2 * BLOCK..4 * BLOCK),
            within(&full, 2 * BLOCK..4 * BLOCK)
        );
        let run = within(&probed, strong.clone());
        assert!(
            run.iter().map(|c| c.len).sum::<usize>() >= strong.len() * 9 / 10,
            "{run:?}"
        );
        // after the strong blocks the first weak block is planned in full, the next one probed
        assert_eq!(
            within(&probed, 4 * BLOCK..5 * BLOCK),
            within(&full, 4 * BLOCK..5 * BLOCK)
        );
        let (a, b) = (
            within(&full, 5 * BLOCK..6 * BLOCK).len(),
            within(&probed, 5 * BLOCK..6 * BLOCK).len(),
        );
        assert!(
            a >= 20 && b * 4 <= a,
            "block 5: {a} covers planned in full, {b} probed"
        );
    }

    #[test]
    fn quick_equal_counts_the_equal_bytes_of_the_next_64() {
        let dir = tempfile::tempdir().unwrap();
        let (s, idx) = random_snapshot(41, 1 << 14, dir.path());
        let mut rng = crate::pob::prng::SplitMix64::new(42);
        let mut f = s.clone();
        for b in f.iter_mut() {
            if rng.next_u64().is_multiple_of(3) {
                *b ^= 1 + (rng.next_u64() % 255) as u8;
            }
        }
        let c = cfg();
        let e = engine(&f, &s, &idx, &c);
        for i in [0, 1, 7, 100, 5000, f.len() - 64, f.len() - 20, f.len() - 3] {
            for sp in [i, i.saturating_sub(5), 77] {
                let n = 64.min(f.len() - i).min(s.len() - sp) / 8 * 8;
                let want = (0..n).filter(|&k| f[i + k] == s[sp + k]).count();
                assert_eq!(e.quick_equal(i, sp), want, "at {i}, {sp}");
            }
        }
    }
}
