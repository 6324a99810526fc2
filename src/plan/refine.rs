//! Cover refinement (`refine`, on at `--level max`): the covers of a file range chosen
//! again, jointly, by a shortest path over every candidate diagonal.
//!
//! The cover engine's first pass ([`super::cover`]) is greedy: a cover, once chosen, is
//! followed along its diagonal and the anchors it spans are never looked up, so a better
//! diagonal that starts inside it (the next function of a release, moved elsewhere) is only
//! found once the cover's X-drop gives up, and a cover with many differing bytes is kept where
//! another diagonal would have fewer. Refinement, per range:
//!
//! 1. **Spans**: the first pass's covers, plus every diagonal the index offers at *every*
//!    anchor of the range, each extended (the same X-drop walk) to the span where it pays;
//!    a diagonal is extended again only past the end of its last span.
//! 2. **Choice**: a shortest path over the bytes. After each byte the file is either raw or
//!    on one of the spans that cover that byte; a raw byte costs the literal price, a byte on
//!    a span nothing (equal) or the literal price plus the mismatch price (differing), and
//!    entering a span costs a cover record. One pass forward keeps the cheapest cost per
//!    state and one bit per (span, byte) saying whether the state continued or was entered;
//!    one pass back reads the covers off.
//!
//! Cost: the lookups of every anchor (a release pair's file has one per ~10 bytes) and one
//! step per byte and live span.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::cover::{differing, Cover, Engine, BLOCK};
use crate::index::minimizer;

/// One candidate diagonal over `[start, end)` of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub start: usize,
    pub end: usize,
    pub diag: i64,
}

/// A span in the forward pass: its cost after the previous byte, and over the current
/// 64-byte block its bytes `[lo, hi)`, their differing bytes and continuation bits.
#[derive(Default)]
struct Live {
    i: u32,
    cost: u64,
    lo: usize,
    hi: usize,
    diffs: u64,
    cont: u64,
}

/// Spans running at an anchor beyond which it is not looked up: a repetitive stretch (a
/// relocation or debug table) offers hundreds of diagonals that pay, and the forward pass
/// costs a step per byte and live span. Libstd release pair at `max`: 48 -> 645,603 B,
/// 96 -> 638,320 B, unbounded -> 628,900 B for 3.5 s more (docs/profile.md).
const MAX_LIVE: usize = 96;
/// Equal bytes around a candidate's gram before it is extended (the first pass's
/// `min_seed` where larger): on the libstd pair 8 -> 643,338 B, 16 -> 638,320 B and a
/// tenth less time (fewer walks of diagonals that happen to share a gram).
const SEED_MIN: usize = 16;

/// Hashes a diagonal (an i64) by one multiplication: the reach map is probed once per
/// candidate.
#[derive(Default, Clone, Copy)]
struct DiagHash;

impl std::hash::BuildHasher for DiagHash {
    type Hasher = DiagHasher;
    fn build_hasher(&self) -> DiagHasher {
        DiagHasher(0)
    }
}

struct DiagHasher(u64);

impl std::hash::Hasher for DiagHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_i64(&mut self, v: i64) {
        self.0 = (v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 ^= self.0 >> 29;
    }
}

/// Bytes from an anchor on that a first-pass cover must match exactly for the anchor to be
/// skipped. Libstd / numpy / cargo-fmt release pairs at `max`: no skip 638,320 / 52,591 /
/// 495,603 B (numpy 0.88 s); exact over the 4 KiB around the anchor 643,336 / 52,591 /
/// 499,402 B (numpy 0.58 s); exact over 256 bytes ahead 643,406 / 52,444 / 494,766 B, numpy
/// as fast (docs/profile.md).
const EXACT_AHEAD: usize = 256;

/// State "raw" in the back pointers.
const RAW: u32 = u32::MAX;

impl Engine<'_> {
    /// The covers of `[a, b)` chosen again over the first pass's covers `first` (file order;
    /// only those overlapping the range are used, cut to it) and every diagonal the index
    /// offers at the range's anchors. The covers returned lie inside `[a, b)`.
    pub fn refine(&self, a: usize, b: usize, first: &[Cover]) -> Vec<Cover> {
        let spans = self.spans(a, b, first);
        self.choose(a, b, &spans)
    }

    /// Step 1: candidate spans of `[a, b)`, sorted by start.
    pub(super) fn spans(&self, a: usize, b: usize, first: &[Cover]) -> Vec<Span> {
        let mut spans: Vec<Span> = Vec::new();
        // per diagonal, the end of its last span: anchors before it follow that span
        let mut reach: HashMap<i64, usize, DiagHash> = HashMap::default();
        let lo = first.partition_point(|c| c.end() <= a);
        for c in first[lo..].iter().take_while(|c| c.start < b) {
            let (s, e) = (c.start.max(a), c.end().min(b));
            spans.push(Span {
                start: s,
                end: e,
                diag: c.diag(),
            });
            let r = reach.entry(c.diag()).or_insert(0);
            *r = (*r).max(e);
        }
        let nfirst = spans.len();
        // ends of the spans that have started by the current anchor (the first pass's are
        // added as the anchors reach them): where MAX_LIVE of them still run, a repetitive
        // stretch offers diagonals enough and the anchor is not looked up
        let mut live: BinaryHeap<Reverse<usize>> = BinaryHeap::new();
        let mut fi = 0usize;
        // a candidate is extended only when SEED_MIN bytes around its gram are equal
        let cfg = super::PlanConfig {
            min_seed: self.cfg.min_seed.max(SEED_MIN),
            ..self.cfg.clone()
        };
        let strict = Engine { cfg: &cfg, ..*self };
        let w = self.idx.w();
        let mut scratch = minimizer::Scratch::default();
        let mut anchors: Vec<(usize, u64)> = Vec::new();
        // the anchors of the range, but none in a block the first pass rejected as noise (no
        // cover in it and its sampled entropy high): random data is not looked up again
        let noise = |blk: usize| {
            let end = (blk + BLOCK).min(b);
            !spans[..nfirst].iter().any(|s| s.start < end && s.end > blk)
                && self.looks_random(blk, end)
        };
        let mut x = a;
        while x < b {
            let mut y = x;
            while y < b && !noise(y) {
                y = (y + BLOCK).min(b);
            }
            if y > x {
                minimizer::anchors(self.f, x, y, w, &mut scratch, &mut anchors);
            }
            x = (y + BLOCK).min(b);
        }
        // an anchor's candidates are read LAG anchors before they are verified, and their
        // snapshot bytes prefetched meanwhile (each is a random read)
        const LAG: usize = 4;
        let mut pending: std::collections::VecDeque<(usize, Vec<u64>)> =
            std::collections::VecDeque::with_capacity(LAG + 1);
        let mut spare: Vec<Vec<u64>> = Vec::new();
        let mut k = 0usize;
        let mut ci = 0usize; // the first-pass span at or after the anchor being read
        loop {
            if let Some(&(p, h)) = anchors.get(k).filter(|&&(p, _)| p < b) {
                // inside a first-pass cover that is exact for the next EXACT_AHEAD bytes: no
                // other diagonal is cheaper there, and the anchors nearer to where it
                // differs or ends are looked up
                while ci < nfirst && spans[ci].end <= p {
                    ci += 1;
                }
                if ci < nfirst && spans[ci].start <= p && self.exact_ahead(p, spans[ci]) {
                    k += 1;
                    continue;
                }
                if let Some(&(_, hq)) = anchors.get(k + 2) {
                    self.idx.prefetch(hq);
                }
                let mut cands = spare.pop().unwrap_or_default();
                self.candidates(h, &mut cands);
                pending.push_back((p, cands));
                k += 1;
                if pending.len() <= LAG {
                    continue;
                }
            }
            let Some((p, cands)) = pending.pop_front() else {
                break;
            };
            while fi < nfirst && spans[fi].start <= p {
                live.push(Reverse(spans[fi].end));
                fi += 1;
            }
            while live.peek().is_some_and(|r| r.0 <= p) {
                live.pop();
            }
            if live.len() < MAX_LIVE {
                for &sp in cands.iter() {
                    let d = sp as i64 - p as i64;
                    let r = reach.get(&d).copied();
                    if r.is_some_and(|r| r > p) {
                        continue;
                    }
                    let floor = r.map_or(a, |r| r.max(a));
                    match strict.extend(p, sp as usize, floor, b) {
                        Some((c, score)) if score > self.prices.record && c.len > 0 => {
                            spans.push(Span {
                                start: c.start,
                                end: c.end(),
                                diag: d,
                            });
                            reach.insert(d, c.end());
                            live.push(Reverse(c.end()));
                        }
                        // a diagonal that does not pay here is not walked again over
                        // the bytes this walk saw
                        Some((c, _)) => {
                            reach.insert(d, c.end().max(p + 1));
                        }
                        None => {}
                    }
                }
            }
            spare.push(cands);
        }
        spans.sort_unstable_by_key(|s| (s.start, s.end, s.diag));
        spans.dedup();
        spans
    }

    /// Whether span `sp` (which holds `p`) runs on for EXACT_AHEAD bytes from `p` and
    /// matches exactly over them: the anchors there are left to the ones nearer to where it
    /// differs or ends, which see the same diagonals that could take over.
    fn exact_ahead(&self, p: usize, sp: Span) -> bool {
        if sp.end < p + EXACT_AHEAD {
            return false;
        }
        let sl = (p as i64 + sp.diag) as usize;
        self.f[p..p + EXACT_AHEAD] == self.s[sl..sl + EXACT_AHEAD]
    }

    /// The shortest path's prices of a literal, a differing byte on a span and a record,
    /// relative to an equal byte inside a cover, in 1/16 bits (integer sums give the same
    /// choice on every machine).
    fn unit_prices(&self) -> (u64, u64, u64) {
        let q = |bits: f64| (bits * 16.0).round().max(1.0) as u64;
        let pr = &self.prices;
        (q(pr.gain), q(pr.gain + pr.penalty), q(pr.record))
    }

    /// Step 2: the cheapest covers of `[a, b)` over `spans` (sorted by start, inside the
    /// range, each valid for the snapshot along its diagonal).
    pub(super) fn choose(&self, a: usize, b: usize, spans: &[Span]) -> Vec<Cover> {
        let n = b - a;
        if n == 0 || spans.is_empty() {
            return Vec::new();
        }
        let (lit, diff, rec) = self.unit_prices();
        // each span's continuation bits: one word per 64-byte block of the range it touches
        // (bit k of a word: byte k of that block)
        let blk_of = |p: usize| (p - a) / 64;
        let mut word_at = Vec::with_capacity(spans.len());
        let mut total = 0usize;
        for s in spans {
            word_at.push(total - blk_of(s.start));
            total += blk_of(s.end - 1) - blk_of(s.start) + 1;
        }
        let mut cont = vec![0u64; total];
        let mut raw_cont = vec![0u64; n.div_ceil(64)];
        // the cheapest state after byte p - 1, for each p in [a, b)
        let mut best_before = vec![RAW; n];
        let (f, s) = (self.f, self.s);
        let mut live: Vec<Live> = Vec::new();
        let mut next = 0usize;
        let (mut raw_cost, mut best, mut best_state) = (0u64, 0u64, RAW);
        const INF: u64 = u64::MAX / 4;
        let mut blk = a;
        while blk < b {
            let blk_end = (blk + 64).min(b);
            live.retain(|l| spans[l.i as usize].end > blk);
            while next < spans.len() && spans[next].start < blk_end {
                live.push(Live {
                    i: next as u32,
                    cost: INF,
                    ..Live::default()
                });
                next += 1;
            }
            // each live span's differing bytes over the block, a word at a time along its
            // diagonal (sequential reads per span instead of one byte per span per step)
            for l in live.iter_mut() {
                let sp = spans[l.i as usize];
                (l.lo, l.hi) = (sp.start.max(blk) - blk, sp.end.min(blk_end) - blk);
                l.diffs = diff_mask(f, s, blk + l.lo, blk + l.hi, sp.diag) << l.lo;
                l.cont = 0;
            }
            for p in blk..blk_end {
                best_before[p - a] = best_state;
                // raw: continue, or leave the best state for free
                if raw_cost <= best {
                    raw_cont[(p - a) / 64] |= 1 << ((p - a) % 64);
                } else {
                    raw_cost = best;
                }
                raw_cost += lit;
                let (mut nb, mut ns) = (raw_cost, RAW);
                let enter = best + rec;
                let k = p - blk;
                for l in live.iter_mut() {
                    if k < l.lo || k >= l.hi {
                        continue;
                    }
                    if l.cost <= enter {
                        l.cont |= 1 << k;
                    } else {
                        l.cost = enter;
                    }
                    l.cost += diff * (l.diffs >> k & 1);
                    if l.cost < nb {
                        (nb, ns) = (l.cost, l.i);
                    }
                }
                (best, best_state) = (nb, ns);
            }
            for l in &live {
                cont[word_at[l.i as usize] + blk_of(blk)] = l.cont;
            }
            blk = blk_end;
        }
        // back: the state of each byte, from the last
        let mut out: Vec<Cover> = Vec::new();
        let mut state = best_state;
        let mut run_end = b; // end of the current run of `state`
        let mut p = b;
        while p > a {
            p -= 1;
            let stays = if state == RAW {
                raw_cont[(p - a) / 64] >> ((p - a) % 64) & 1 == 1
            } else {
                cont[word_at[state as usize] + blk_of(p)] >> ((p - a) % 64) & 1 == 1
            };
            if !stays || p == a {
                if state != RAW {
                    let sp = spans[state as usize];
                    let snap = (p as i64 + sp.diag) as usize;
                    let len = run_end - p;
                    let diffs = differing(&f[p..run_end], &s[snap..snap + len]);
                    out.push(Cover {
                        start: p,
                        len,
                        snap,
                        diffs,
                    });
                }
                if !stays {
                    state = best_before[p - a];
                    run_end = p;
                }
            }
        }
        out.reverse();
        out
    }
}

/// Bit `k` set where `f[lo + k]` differs from `s[lo + k + diag]`, for `lo + k` in `[lo, hi)`
/// (at most 64 bytes).
#[inline]
fn diff_mask(f: &[u8], s: &[u8], lo: usize, hi: usize, diag: i64) -> u64 {
    let sl = (lo as i64 + diag) as usize;
    let n = hi - lo;
    let (fa, sa) = (&f[lo..hi], &s[sl..sl + n]);
    let mut m = 0u64;
    let mut k = 0;
    while k + 8 <= n {
        let x = u64::from_le_bytes(fa[k..k + 8].try_into().expect("8"))
            ^ u64::from_le_bytes(sa[k..k + 8].try_into().expect("8"));
        // one bit per differing byte (the low bit of each byte), gathered to 8 bits
        let mut d = x | (x >> 4);
        d |= d >> 2;
        d |= d >> 1;
        d &= 0x0101_0101_0101_0101;
        m |= (d.wrapping_mul(0x0102_0408_1020_4080) >> 56) << k;
        k += 8;
    }
    while k < n {
        if fa[k] != sa[k] {
            m |= 1 << k;
        }
        k += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::cover::tests::random_snapshot;
    use crate::plan::cover::Prices;
    use crate::plan::PlanConfig;
    use crate::pob::prng::SplitMix64;

    /// An engine over file `f` and snapshot `s` with `cfg`, literals at `raw_bits`.
    fn engine<'a>(
        f: &'a [u8],
        s: &'a [u8],
        idx: &'a crate::index::minimizer::MinIndex,
        cfg: &'a PlanConfig,
        raw_bits: f64,
    ) -> Engine<'a> {
        Engine {
            f,
            s,
            idx,
            cfg,
            prices: Prices::new(cfg, raw_bits),
        }
    }

    /// The model's price of covers over `[a, b)` in 1/16 bits, as `choose` prices them.
    fn model_cost(e: &Engine<'_>, a: usize, b: usize, covers: &[Cover]) -> u64 {
        let (lit, diff, rec) = e.unit_prices();
        let covered: usize = covers.iter().map(|c| c.len).sum();
        let mut cost = (b - a - covered) as u64 * lit;
        for c in covers {
            let d = differing(&e.f[c.start..c.start + c.len], &e.s[c.snap..c.snap + c.len]);
            assert_eq!(d, c.diffs, "a cover's differing bytes are counted");
            cost += rec + d as u64 * diff;
        }
        cost
    }

    /// The cheapest cost over every assignment of each byte to raw or to a span holding it
    /// (exhaustive; a run on one span pays one record).
    fn cheapest(e: &Engine<'_>, a: usize, b: usize, spans: &[Span]) -> u64 {
        let (lit, diff, rec) = e.unit_prices();
        let n = b - a;
        let states = spans.len() + 1; // 0: raw
        let mut best = u64::MAX;
        let mut pick = vec![0usize; n];
        loop {
            let ok = (0..n).all(|k| {
                pick[k] == 0 || {
                    let sp = spans[pick[k] - 1];
                    sp.start <= a + k && a + k < sp.end
                }
            });
            if ok {
                let mut cost = 0u64;
                for k in 0..n {
                    let p = a + k;
                    if pick[k] == 0 {
                        cost += lit;
                        continue;
                    }
                    if k == 0 || pick[k - 1] != pick[k] {
                        cost += rec;
                    }
                    let sp = spans[pick[k] - 1];
                    if e.f[p] != e.s[(p as i64 + sp.diag) as usize] {
                        cost += diff;
                    }
                }
                best = best.min(cost);
            }
            // next assignment (odometer)
            let mut k = 0;
            while k < n {
                pick[k] += 1;
                if pick[k] < states {
                    break;
                }
                pick[k] = 0;
                k += 1;
            }
            if k == n {
                return best;
            }
        }
    }

    #[test]
    fn choose_finds_the_cheapest_covers_over_its_spans() {
        let dir = tempfile::tempdir().unwrap();
        let (s, idx) = random_snapshot(5, 4096, dir.path());
        let mut rng = SplitMix64::new(6);
        let mut cfg = PlanConfig::default();
        // a record worth a few bytes, so that short runs and switches are in play
        cfg.cover.record_bits = 6.0;
        for round in 0..60 {
            // 9 file bytes over 3 spans at diagonals into the snapshot, each agreeing with
            // the file on some bytes
            let n = 9;
            let diags: Vec<i64> = (0..3)
                .map(|_| 100 + (rng.next_u64() % 3000) as i64)
                .collect();
            let mut f = vec![0u8; n];
            rng.fill(&mut f);
            for (k, b) in f.iter_mut().enumerate() {
                let d = diags[(rng.next_u64() % 3) as usize];
                if !rng.next_u64().is_multiple_of(4) {
                    *b = s[(k as i64 + d) as usize];
                }
            }
            let spans: Vec<Span> = {
                let mut v: Vec<Span> = diags
                    .iter()
                    .map(|&diag| {
                        let x = (rng.next_u64() % n as u64) as usize;
                        let y = (rng.next_u64() % n as u64) as usize;
                        Span {
                            start: x.min(y),
                            end: x.max(y) + 1,
                            diag,
                        }
                    })
                    .collect();
                v.sort_unstable_by_key(|s| (s.start, s.end, s.diag));
                v
            };
            let e = engine(&f, &s, &idx, &cfg, 5.0);
            let got = e.choose(0, n, &spans);
            for c in &got {
                assert!(
                    spans.iter().any(|sp| sp.start <= c.start
                        && c.start + c.len <= sp.end
                        && sp.diag == c.snap as i64 - c.start as i64),
                    "round {round}: {c:?} lies on a span"
                );
            }
            assert!(got.windows(2).all(|w| w[0].start + w[0].len <= w[1].start));
            assert_eq!(
                model_cost(&e, 0, n, &got),
                cheapest(&e, 0, n, &spans),
                "round {round}: spans {spans:?}"
            );
        }
    }

    #[test]
    fn refine_finds_the_diagonal_a_greedy_cover_runs_over() {
        // The file: 3000 bytes of the snapshot at 10_000, then 3000 bytes of it at 40_000,
        // one byte in 40 changed throughout. The first pass's cover from the first part,
        // run on past the seam by hand (as an X-drop walk through a table of similar
        // entries does), hides the second diagonal from greedy following.
        let dir = tempfile::tempdir().unwrap();
        let (s, idx) = random_snapshot(9, 1 << 16, dir.path());
        let mut f = s[10_000..13_000].to_vec();
        f.extend_from_slice(&s[40_000..43_000]);
        for k in (5..f.len()).step_by(40) {
            f[k] = f[k].wrapping_add(1);
        }
        let cfg = PlanConfig::preset(crate::plan::Level::Max);
        let e = engine(&f, &s, &idx, &cfg, 6.0);
        let count = |start: usize, len: usize, snap: usize| {
            differing(&f[start..start + len], &s[snap..snap + len])
        };
        let greedy = vec![Cover {
            start: 0,
            len: 4000,
            snap: 10_000,
            diffs: count(0, 4000, 10_000),
        }];
        let refined = e.refine(0, f.len(), &greedy);
        assert!(
            refined
                .iter()
                .any(|c| c.snap as i64 - c.start as i64 == 40_000 - 3000),
            "the second part's diagonal is found: {refined:?}"
        );
        let diffs: usize = refined.iter().map(|c| c.diffs).sum();
        assert!(
            diffs < f.len() / 10,
            "{diffs} differing bytes left: {refined:?}"
        );
        assert!(model_cost(&e, 0, f.len(), &refined) < model_cost(&e, 0, f.len(), &greedy));
        // every byte of the file comes back from the covers and their differences
        for c in &refined {
            assert_eq!(c.diffs, count(c.start, c.len, c.snap));
        }
    }
}
