//! The planner: turns a file into a [`Blueprint`] of segments into the snapshot.
//!
//! Two engines ([`Engine`]):
//! - `covers` (the default, [`cover`]): approximate covers seeded by the minimizer index,
//!   followed along their diagonal, chosen by estimated compressed cost and merged across
//!   short gaps; differences travel in the spill as [`Source::Cover`] bytes. Named presets
//!   ([`Level`]: fast, default, max) are configs of this engine.
//! - `segments` (kept for the ablation, [`PlanConfig::legacy`]): exact id/xor/add segments
//!   from the k-gram indexes, described below.
//!
//! The segment engine looks, for each file position, for a match in the snapshot under `id`, `xor imm8` and
//! `add imm8`:
//! 1. the *repeat* candidate: the alignment of the previous segment (a rebuilt binary keeps
//!    long runs at one alignment, broken by a few changed bytes);
//! 2. the k=8 indexes (raw for `id`, delta projections for `xor`/`add`), candidates ordered by
//!    the banks the section kind prefers ([`hints`]);
//! 3. the k=4 index when the k=8 lookups found nothing worth a segment;
//! 4. (off by default) coarse projection anchors ([`anchor`]) confirmed on the real bytes, and
//!    a bounded linear sweep ([`sweep`]) near the last alignment and through the gated banks.
//!
//! With `gate` on, candidates come only from the banks the section kind admits ([`gate`])
//! until `gate_widen_after` probes in a row missed. Index fanouts per k come from the config
//! ([`index_specs`]).
//!
//! Each candidate is verified on the real bytes and extended in both directions (backwards
//! into the pending raw run, so segments are never cut at probe or window edges). A segment is
//! taken only when the [`CostModel`] says it is cheaper than the raw bytes it replaces. What no
//! segment covers becomes raw spill. Work is split across threads by file range; segments
//! that meet at a split are merged afterwards.

pub mod anchor;
pub mod cover;
pub mod gate;
pub mod hints;
pub mod map;
pub mod refine;
pub mod selfref;
pub mod soft;
pub mod sweep;

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::blueprint::{Blueprint, Segment, Source, Transform};
use crate::index::{minimizer_spec, window_hash, IndexError, IndexSet, IndexSpec, Projection};
use crate::pob::{BankKind, Snapshot};
use hints::{Hints, SectionKind};

/// How bytes are priced when choosing segments.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostModel {
    /// Estimated bits per raw byte after spill compression; `None` estimates it from the file
    /// (zstd level 1 over a sample).
    pub raw_bits_per_byte: Option<f64>,
    /// Bits for a segment's op and length.
    pub seg_bits: f64,
    /// Extra bits when a segment does not continue the previous alignment.
    pub jump_bits: f64,
    /// Bits for an xor/add immediate.
    pub imm_bits: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            raw_bits_per_byte: None,
            seg_bits: 12.0,
            jump_bits: 14.0,
            imm_bits: 8.0,
        }
    }
}

/// Which planner runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Approximate covers through the minimizer index ([`cover`]).
    Covers,
    /// Exact id/xor/add segments through the k-gram indexes (the previous planner).
    Segments,
}

/// How the cover engine prices bytes (bits; a literal costs the file's estimated
/// `raw_bits_per_byte`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoverCost {
    /// A zero difference byte (an equal byte inside a cover).
    pub zero_bits: f64,
    /// What a differing byte inside a cover costs beyond a literal.
    pub mismatch_bits: f64,
    /// A cover record at a new diagonal (op, length, offset).
    pub record_bits: f64,
    /// A cover record that continues the previous cover's diagonal.
    pub rep_record_bits: f64,
    /// Extension stops once the running saving is this far below its peak.
    pub xdrop_bits: f64,
}

impl Default for CoverCost {
    fn default() -> Self {
        CoverCost {
            zero_bits: 0.3,
            mismatch_bits: 2.0,
            record_bits: 64.0,
            rep_record_bits: 16.0,
            xdrop_bits: 64.0,
        }
    }
}

/// A named preset (`pfs plan --level`, `pfs send --level`): the planner's side is
/// [`PlanConfig::preset`], the packer's is [`crate::blueprint::coder::Level`] itself.
pub use crate::blueprint::coder::Level;

/// Planner settings. As TOML (`pfs plan --planner FILE`), every field is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanConfig {
    /// Which planner runs (`covers` or `segments`).
    pub engine: Engine,
    /// Cover engine: approximate covers (differences in the spill); off = exact `id` runs.
    pub covers: bool,
    /// Cover engine: merge covers on one diagonal across gaps of at most `merge_gap` bytes.
    pub diagonal_merge: bool,
    pub merge_gap: usize,
    /// Cover engine: look up the file's minimizer anchors only (off: every position).
    pub sparse: bool,
    /// Cover engine: blocks whose sampled entropy exceeds `reject_bits` are probed at a
    /// few sampled windows and stay literal when none of them seeds a cover.
    pub fast_reject: bool,
    pub reject_bits: f64,
    /// Cover engine: after a block planned in full whose covers hold fewer equal bytes than
    /// this share of it (a file the snapshot does not hold), the next blocks are only probed,
    /// as random-looking ones are, until a probe seeds a cover of at least `strong_bytes`
    /// equal bytes (0 = off). Such files skip most of the search for covers that save
    /// little and that the packer then loses to plain compression ([`cover`]).
    #[serde(default)]
    pub weak_share: f64,
    #[serde(default = "default_strong_bytes")]
    pub strong_bytes: usize,
    /// Cover engine: of a seed's index candidates, only those with the most equal bytes
    /// among the next 64 are extended and compared (on at `fast`).
    #[serde(default)]
    pub quick_pick: bool,
    /// Cover engine: minimizer window of the index (matches of `min_w + 7` bytes are
    /// always seeded) and positions kept per key.
    pub min_w: u32,
    pub min_fanout: u32,
    /// Cover engine: a seed needs this many exactly equal bytes around its gram (8 = any
    /// gram hit) before it is extended.
    pub min_seed: usize,
    /// Cover engine: byte prices.
    pub cover: CoverCost,
    pub cost: CostModel,
    /// Shortest segment considered.
    pub min_match: usize,
    /// Most index candidates verified per lookup.
    pub max_candidates: usize,
    /// A match at least this long ends the search at a position early.
    pub good_enough: usize,
    /// Use the k=4 index.
    pub use_k4: bool,
    /// Search xor/add transforms.
    pub transforms: bool,
    /// Largest probe step after a long run of misses (1 = probe every byte).
    pub max_skip: usize,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Planning window for progress reporting and thread splits (bytes); segments are not cut
    /// at window edges.
    pub window: usize,
    /// Fanout (positions kept per bucket) of the raw k=8 index.
    pub fanout_k8: u32,
    /// Fanout of the raw k=4 index.
    pub fanout_k4: u32,
    /// Fanout of the xor/add delta indexes.
    pub fanout_delta: u32,
    /// Most k=4 candidates verified per lookup (after gating).
    pub k4_candidates: usize,
    /// Use the k=4 index in `.text` regions even when the cost rule says it does not pay.
    pub k4_text: bool,
    /// Coarse projections to anchor on (empty: off); see [`anchor`].
    pub projections: Vec<Projection>,
    /// Step of the coarse projection indexes.
    pub anchor_step: u32,
    /// Fanout of the coarse projection indexes.
    pub anchor_fanout: u32,
    /// Section-aware bank gating; see [`gate`].
    pub gate: bool,
    /// Probes in a row without a match after which gating admits every bank.
    pub gate_widen_after: usize,
    /// Bank kinds each section kind admits (default: [`SectionKind::preferred_banks`];
    /// regions outside any section admit every bank).
    pub gate_banks: HashMap<SectionKind, Vec<BankKind>>,
    /// Sweep fallback when the indexes miss; see [`sweep`].
    pub sweep: bool,
    /// Bytes a sweep looks for (16..=64).
    pub sweep_min: usize,
    /// A sweep is tried at most every this many file bytes of a miss run.
    pub sweep_every: usize,
    /// Bytes either side of the last alignment searched first.
    pub sweep_radius: usize,
    /// Only this many bytes past the last segment are searched near its alignment; after
    /// that the sweep goes through the gated banks.
    pub sweep_local_span: usize,
    /// Snapshot bytes a sweep may scan per planning window.
    pub sweep_window_bytes: usize,
    /// Microseconds sweeps may take per planning window (0: no time bound; the byte bound
    /// alone keeps plans reproducible).
    pub sweep_window_us: u64,
    /// Soft identity: approximate `id` matches plus patch bytes over raw runs ([`soft`]).
    #[serde(default = "yes")]
    pub soft: bool,
    /// Fraction of equal bytes that makes a window a soft hit.
    #[serde(default = "default_soft_min_equal")]
    pub soft_min_equal: f64,
    /// Self segments: copies from earlier in the file ([`selfref`]).
    #[serde(default)]
    pub self_segments: bool,
    /// Cover engine: choose the covers again by a shortest path over every diagonal the
    /// index offers at every anchor ([`refine`]; on at `max`).
    #[serde(default)]
    pub refine: bool,
}

fn yes() -> bool {
    true
}

fn default_soft_min_equal() -> f64 {
    0.92
}

fn default_strong_bytes() -> usize {
    256
}

impl Default for PlanConfig {
    /// The `default` preset (see [`PlanConfig::preset`]).
    fn default() -> Self {
        PlanConfig {
            engine: Engine::Covers,
            covers: true,
            diagonal_merge: true,
            merge_gap: 511,
            sparse: true,
            fast_reject: true,
            reject_bits: 7.8,
            min_w: crate::index::DEFAULT_MIN_W,
            min_fanout: crate::index::DEFAULT_MIN_FANOUT,
            cover: CoverCost::default(),
            min_seed: 8,
            max_candidates: 8,
            good_enough: 1024,
            ..PlanConfig::legacy()
        }
    }
}

impl PlanConfig {
    /// The segment engine with its own defaults (the planner before covers).
    pub fn legacy() -> Self {
        PlanConfig {
            engine: Engine::Segments,
            covers: true,
            diagonal_merge: true,
            merge_gap: 511,
            sparse: true,
            fast_reject: true,
            reject_bits: 7.8,
            weak_share: 0.0,
            strong_bytes: default_strong_bytes(),
            quick_pick: false,
            min_w: crate::index::DEFAULT_MIN_W,
            min_fanout: crate::index::DEFAULT_MIN_FANOUT,
            cover: CoverCost::default(),
            min_seed: 8,
            cost: CostModel::default(),
            min_match: 5,
            max_candidates: 8,
            good_enough: 48,
            use_k4: true,
            max_skip: 8,
            transforms: true,
            threads: 0,
            window: 1 << 20,
            fanout_k8: 8,
            fanout_k4: 8,
            fanout_delta: 4,
            k4_candidates: 8,
            k4_text: false,
            projections: Vec::new(),
            anchor_step: 8,
            anchor_fanout: 8,
            gate: false,
            gate_widen_after: 256,
            gate_banks: HashMap::new(),
            sweep: false,
            sweep_min: 16,
            sweep_every: 8,
            sweep_radius: 4096,
            sweep_local_span: 256,
            sweep_window_bytes: 16 << 20,
            sweep_window_us: 0,
            // on: PFS_BENCH_ABLATION=features just bench-plan (2026-11-25 21:23 UTC) gave
            // 1,104 fewer wire bytes on the libstd pair and 1,536 on bin/cargo, for 139 and
            // 670 ms of the pass; self segments stayed off (+38 B on libstd, -176 B on cargo)
            soft: true,
            soft_min_equal: default_soft_min_equal(),
            self_segments: false,
            refine: false,
        }
    }

    /// A named preset. All three use the cover engine and the same index; they differ in
    /// how hard they look.
    pub fn preset(level: Level) -> Self {
        // measured on the libstd pair (stable 1.95 -> nightly, 2026-12-04): 8 candidates
        // instead of 4 gave 4.6% fewer bytes (packed at `fast`); comparing candidates over
        // 8 KiB instead of 256 B 0.9%; dense probing (`sparse = false`) 2% more bytes;
        // min_seed 12 instead of 8 0.4% fewer at `fast` (and less extension work), 0.7% more
        // at `default`
        let d = PlanConfig::default();
        match level {
            Level::Fast => PlanConfig {
                good_enough: 256,
                min_seed: 12,
                // a file the snapshot does not hold plans about twice as fast (the
                // streamed producer on 30 MB of libclang against the default recipe: 92-106
                // -> 193-204 MB/s), with the same `.pbb` bytes on the release pairs
                weak_share: 0.1,
                // measured at `fast` (2026-12-07): libstd -2.2% bytes and a quarter less
                // matching time, rustdoc -4.8%, bin/cargo -0.4%, clippy-driver +0.4%,
                // cargo-clippy +0.6%; at `default` and `max` within +-0.5% either way: off
                quick_pick: true,
                ..d
            },
            Level::Default => d,
            Level::Max => PlanConfig {
                max_candidates: 16,
                good_enough: 8192,
                refine: true,
                ..d
            },
        }
    }

    /// Parse a planner TOML file's text (every field optional; unknown keys are refused).
    pub fn from_toml(text: &str) -> Result<PlanConfig, PlanError> {
        let c: PlanConfig = toml::from_str(text).map_err(|source| PlanError::Toml { source })?;
        c.validate()?;
        Ok(c)
    }

    /// Check value ranges.
    pub fn validate(&self) -> Result<(), PlanError> {
        let bad = |key: &'static str, value: String, expected: &'static str| {
            Err(PlanError::OutOfRange {
                key,
                value,
                expected,
            })
        };
        if !(16..=64).contains(&self.sweep_min) {
            return bad("sweep_min", self.sweep_min.to_string(), "16..=64");
        }
        if self.sweep_every == 0 {
            return bad("sweep_every", "0".into(), "at least 1");
        }
        if !(0.5..=1.0).contains(&self.soft_min_equal) {
            return bad(
                "soft_min_equal",
                self.soft_min_equal.to_string(),
                "0.5..=1.0 (the fraction of equal bytes in a soft hit)",
            );
        }
        if self.min_match == 0 {
            return bad("min_match", "0".into(), "at least 1");
        }
        if self.max_candidates == 0 {
            return bad("max_candidates", "0".into(), "at least 1");
        }
        if !(0.0..=8.0).contains(&self.reject_bits) {
            return bad(
                "reject_bits",
                self.reject_bits.to_string(),
                "0..=8 bits per byte",
            );
        }
        if !(0.0..=1.0).contains(&self.weak_share) {
            return bad(
                "weak_share",
                self.weak_share.to_string(),
                "0..=1 (a share of a block's bytes; 0 = off)",
            );
        }
        if self.merge_gap > 1 << 20 {
            return bad("merge_gap", self.merge_gap.to_string(), "0..=1048576");
        }
        let c = &self.cover;
        for (key, v) in [
            ("cover.zero_bits", c.zero_bits),
            ("cover.mismatch_bits", c.mismatch_bits),
            ("cover.record_bits", c.record_bits),
            ("cover.rep_record_bits", c.rep_record_bits),
            ("cover.xdrop_bits", c.xdrop_bits),
        ] {
            if !(0.0..=1e6).contains(&v) {
                return bad(key, v.to_string(), "0..=1e6 bits");
            }
        }
        for s in index_specs(self) {
            s.validate().map_err(|source| PlanError::Index { source })?;
        }
        Ok(())
    }
}

/// The indexes a config plans with: for the cover engine, the minimizer index with the
/// config's window and fanout; for the segment engine, raw k=8 and (unless `use_k4` is off) raw k=4 step 2, the
/// xor/add delta indexes (unless `transforms` is off), and one per coarse projection, each
/// with the config's fanout. The default config asks for exactly [`crate::index::default_specs`].
pub fn index_specs(cfg: &PlanConfig) -> Vec<IndexSpec> {
    if cfg.engine == Engine::Covers {
        return vec![minimizer_spec(cfg.min_w, cfg.min_fanout)];
    }
    let mk = |projection, k, step, fanout| IndexSpec {
        projection,
        k,
        step,
        fanout,
    };
    let mut v = vec![mk(Projection::Raw, 8, 8, cfg.fanout_k8)];
    if cfg.use_k4 {
        v.push(mk(Projection::Raw, 4, 2, cfg.fanout_k4));
    }
    if cfg.transforms {
        v.push(mk(Projection::Xor, 8, 8, cfg.fanout_delta));
        v.push(mk(Projection::Add, 8, 8, cfg.fanout_delta));
    }
    for &p in &cfg.projections {
        v.push(anchor::spec(p, cfg.anchor_step, cfg.anchor_fanout));
    }
    v
}

/// Time spent per phase, in milliseconds (`match_ms` is wall time; the phases inside it,
/// `lookup_ms` to `soft_ms`, are summed over threads and measured with the cycle counter).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PhaseTimes {
    pub hints_ms: f64,
    pub estimate_ms: f64,
    pub match_ms: f64,
    pub hash_ms: f64,
    /// Index lookups: k=8, k=4 and coarse anchors, candidate ranking and gating.
    pub lookup_ms: f64,
    /// Verifying candidates on the real bytes and extending them both ways.
    pub extend_ms: f64,
    /// Sweep fallback.
    pub sweep_ms: f64,
    /// Soft-identity pass ([`soft`]).
    pub soft_ms: f64,
    /// Self-segment pass ([`selfref`]).
    pub self_ms: f64,
    /// Cover refinement ([`refine`]; part of `match_ms`); 0 where it did not run.
    pub refine_ms: f64,
    /// Packing the blueprint (filled in by the caller that packs).
    pub pack_ms: f64,
}

/// One probe in this many is timed per phase (the counts are scaled back up).
const TIME_SAMPLE: u32 = 16;

/// Cycle counts of the phases inside matching, one set per worker.
#[derive(Debug, Clone, Copy, Default)]
struct Ticks {
    lookup: u64,
    extend: u64,
    sweep: u64,
}

/// A plan and how it was made.
#[derive(Debug, Clone)]
pub struct Plan {
    pub blueprint: Blueprint,
    pub raw_bits_per_byte: f64,
    pub times: PhaseTimes,
    /// Nothing matched and [`How::elide_raw_spill`] was asked: the segments are raw and the
    /// blueprint's spill was left empty, because it would be the file itself (the caller
    /// holds it; [`Plan::fill_spill`] copies it in where the blueprint is packed).
    pub spill_elided: bool,
    /// With `weak_share` on: the covers hold fewer equal bytes than that share of the file
    /// (what [`How::start_weak`] of the next window of the same file may be).
    pub weak: bool,
}

/// How [`plan_with`] plans beyond its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct How {
    /// Compute the file's BLAKE3 (`false`: the blueprint's `file_hash` is zero).
    pub hash: bool,
    /// Leave the spill empty when nothing matches ([`Plan::spill_elided`]): a caller that
    /// writes random bytes straight from the file (`pfs plan`, the streamed sender's
    /// pass-through) saves a copy of the whole file into fresh memory.
    pub elide_raw_spill: bool,
    /// Every range of the cover engine starts with its blocks probed, as after a weak block
    /// (`weak_share`): for a caller planning a file window by window whose last window was
    /// weak ([`Plan::weak`]).
    pub start_weak: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the file is {file} bytes; a blueprint segment table is limited to files under 2^62 bytes"
    )]
    TooLarge { file: u64 },
    #[error("planner config is not valid")]
    Toml {
        #[source]
        source: toml::de::Error,
    },
    #[error("planner config: {key} = {value} is out of range (expected {expected})")]
    OutOfRange {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("planner config names an invalid index")]
    Index {
        #[source]
        source: IndexError,
    },
    #[error("the {engine} engine needs the index {file}, which is not loaded (pfs index build builds it)")]
    MissingIndex { engine: &'static str, file: String },
}

/// Estimate bits per byte of `data` under zstd level 1, on up to 8 samples of 256 KiB.
pub fn estimate_raw_bits(data: &[u8]) -> f64 {
    estimate_raw_bits_within(data, 2 << 20)
}

/// [`estimate_raw_bits`] on up to 8 samples of `budget / 8` bytes each (a streamed send
/// estimates each window on a smaller budget: compressing 2 MiB of every 4 MiB window was
/// a quarter of a covered file's sending CPU).
pub fn estimate_raw_bits_within(data: &[u8], budget: usize) -> f64 {
    estimate_on(data, budget, 1)
}

/// [`estimate_raw_bits_within`] with the samples compressed on up to `threads` threads.
fn estimate_on(data: &[u8], budget: usize, threads: usize) -> f64 {
    if data.is_empty() {
        return 8.0;
    }
    let sample = (budget / 8).max(4096);
    let n = data.len().div_ceil(sample).min(8);
    let stride = if n > 1 {
        (data.len() - sample.min(data.len())) / (n - 1)
    } else {
        0
    };
    let piece = |i: usize| {
        let s = &data[i * stride..(i * stride + sample).min(data.len())];
        let out = crate::blueprint::coder::zstd_len(s, 1);
        (s.len(), out)
    };
    let sizes = per_chunk(n, threads, piece);
    let (inb, outb) = sizes
        .iter()
        .fold((0usize, 0usize), |(a, b), &(i, o)| (a + i, b + o));
    (8.0 * outb as f64 / inb as f64).clamp(0.5, 8.0)
}

/// Plan `file` against a loaded snapshot and its indexes.
pub fn plan(
    file: &[u8],
    snap: &Snapshot,
    idx: &IndexSet,
    hints: &Hints,
    cfg: &PlanConfig,
) -> Result<Plan, PlanError> {
    let how = How {
        hash: true,
        elide_raw_spill: false,
        start_weak: false,
    };
    plan_with(file, snap, idx, hints, cfg, how)
}

/// [`plan`] without the file's BLAKE3 (the blueprint's `file_hash` is zero): for a caller
/// that hashes the bytes itself, as the streamed sender's producer hashes the whole file
/// while it reads it (hashing each window again here was a third of its BLAKE3 work).
pub fn plan_unhashed(
    file: &[u8],
    snap: &Snapshot,
    idx: &IndexSet,
    hints: &Hints,
    cfg: &PlanConfig,
) -> Result<Plan, PlanError> {
    let how = How {
        hash: false,
        elide_raw_spill: false,
        start_weak: false,
    };
    plan_with(file, snap, idx, hints, cfg, how)
}

/// [`plan`] as `how` asks.
pub fn plan_with(
    file: &[u8],
    snap: &Snapshot,
    idx: &IndexSet,
    hints: &Hints,
    cfg: &PlanConfig,
    how: How,
) -> Result<Plan, PlanError> {
    if file.len() as u64 >= 1 << 62 {
        return Err(PlanError::TooLarge {
            file: file.len() as u64,
        });
    }
    cfg.validate()?;
    let mut times = PhaseTimes::default();
    let t = Instant::now();
    let raw_bits = cfg
        .cost
        .raw_bits_per_byte
        // the samples compressed on the planner's threads (planning waits for the price)
        .unwrap_or_else(|| estimate_on(file, 2 << 20, thread_count(cfg)));
    times.estimate_ms = ms(t);
    if cfg.engine == Engine::Covers {
        return plan_covers(file, snap, idx, cfg, raw_bits, times, how);
    }

    let t = Instant::now();
    let file_hash = if how.hash {
        *blake3::hash(file).as_bytes()
    } else {
        [0; 32]
    };
    times.hash_ms = ms(t);

    let t = Instant::now();
    let tk0 = anchor::ticks();
    let threads = thread_count(cfg);
    // split into contiguous ranges of whole windows, one per thread
    let windows = file.len().div_ceil(cfg.window.max(1)).max(1);
    let per = windows.div_ceil(threads.max(1)) * cfg.window.max(1);
    let ranges: Vec<(usize, usize)> = (0..file.len().div_ceil(per.max(1)).max(1))
        .map(|i| (i * per, ((i + 1) * per).min(file.len())))
        .collect();
    let ctx = Ctx::new(file, snap, idx, hints, cfg, raw_bits);
    let parts: Vec<(Vec<Segment>, Ticks)> = if ranges.len() == 1 {
        vec![ctx.run(ranges[0].0, ranges[0].1)]
    } else {
        std::thread::scope(|s| {
            let hs: Vec<_> = ranges
                .iter()
                .map(|&(a, b)| {
                    let ctx = &ctx;
                    s.spawn(move || ctx.run(a, b))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("planner thread panicked"))
                .collect()
        })
    };
    times.match_ms = ms(t);
    // cycles per ms of this run, from the wall time of the matching phase
    let per_ms = (anchor::ticks().wrapping_sub(tk0)) as f64 / times.match_ms.max(1e-6);
    let mut parts_segs = Vec::with_capacity(parts.len());
    for (segs, tk) in parts {
        times.lookup_ms += (tk.lookup * TIME_SAMPLE as u64) as f64 / per_ms;
        times.extend_ms += (tk.extend * TIME_SAMPLE as u64) as f64 / per_ms;
        times.sweep_ms += tk.sweep as f64 / per_ms;
        parts_segs.push(segs);
    }
    let parts = parts_segs;

    // merge parts: coalesce raw runs and snapshot runs that continue across a split
    // (a part's last segment may run past its range into the next part's: trim the overlap)
    let mut segments: Vec<Segment> = Vec::new();
    let mut covered = 0usize;
    for (&(a, _), part) in ranges.iter().zip(parts) {
        let mut pos = a;
        for mut seg in part {
            let end = pos + seg.len as usize;
            if end > covered {
                if pos < covered {
                    let cut = covered - pos;
                    seg.len -= cut as u32;
                    if let Source::Snap { off, .. } = &mut seg.src {
                        *off += cut as u64;
                    }
                }
                push_merged(&mut segments, seg);
                covered = end;
            }
            pos = end;
        }
    }
    if cfg.self_segments {
        let t = Instant::now();
        segments = selfref::pass(file, segments, cfg, raw_bits);
        times.self_ms = ms(t);
    }
    if cfg.soft {
        let t = Instant::now();
        // with gating on, soft hits obey the same bank rules: a raw run counts as that many
        // misses, so a run longer than `gate_widen_after` may draw from every bank
        let gate = cfg
            .gate
            .then(|| gate::Gate::new(&snap.manifest.banks, &cfg.gate_banks, cfg.gate_widen_after));
        let banks = &snap.manifest.banks;
        let mut cur = hints.cursor();
        let mut admit = |pos: usize, snap_off: usize, run: usize| match &gate {
            None => true,
            Some(g) => {
                cur.seek(pos as u64);
                let bank = banks
                    .partition_point(|b| b.offset <= snap_off as u64)
                    .saturating_sub(1);
                g.admits(cur.kind_at(pos as u64), bank, run)
            }
        };
        segments = soft::pass(file, snap.bytes(), idx, segments, cfg, raw_bits, &mut admit);
        times.soft_ms = ms(t);
    }
    let mut spill = Vec::new();
    let mut pos = 0usize;
    for s in &segments {
        if s.src == Source::Raw {
            spill.extend_from_slice(&file[pos..pos + s.len as usize]);
        }
        pos += s.len as usize;
    }
    Ok(Plan {
        blueprint: Blueprint {
            snapshot_id: snap.id,
            file_len: file.len() as u64,
            file_hash,
            segments,
            spill,
        },
        raw_bits_per_byte: raw_bits,
        times,
        spill_elided: false,
        weak: false,
    })
}

/// The number of planner threads a config asks for.
fn thread_count(cfg: &PlanConfig) -> usize {
    match cfg.threads {
        0 => crate::util::cores(),
        n => n,
    }
}

/// Bytes of file the cover engine's threads take at a time (a whole number of
/// [`cover::BLOCK`]s).
const COVER_CHUNK: usize = 4 * cover::BLOCK;

/// `work(i)` of every chunk `i < chunks`, in chunk order, on up to `threads` threads that
/// take the chunks as they come free (a release's code and data plan at different speeds:
/// fixed halves left one thread idle). One thread or one chunk: this one, none started.
fn per_chunk<T: Send>(chunks: usize, threads: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let take = || {
        let mut mine: Vec<(usize, T)> = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= chunks {
                return mine;
            }
            mine.push((i, work(i)));
        }
    };
    let mut all: Vec<(usize, T)> = std::thread::scope(|s| {
        let hs: Vec<_> = (1..threads.min(chunks)).map(|_| s.spawn(take)).collect();
        let mut all = take();
        for h in hs {
            all.extend(h.join().expect("planner thread panicked"));
        }
        all
    });
    all.sort_unstable_by_key(|p| p.0);
    all.into_iter().map(|p| p.1).collect()
}

/// The cover engine ([`cover`]): the file's BLAKE3, then its chunks planned on every thread,
/// joined at their edges and merged, and segments and spill emitted on every thread.
fn plan_covers(
    file: &[u8],
    snap: &Snapshot,
    idx: &IndexSet,
    cfg: &PlanConfig,
    raw_bits: f64,
    mut times: PhaseTimes,
    how: How,
) -> Result<Plan, PlanError> {
    let spec = minimizer_spec(cfg.min_w, cfg.min_fanout);
    let min = idx
        .minimizer
        .as_ref()
        .filter(|m| m.spec == spec)
        .ok_or_else(|| PlanError::MissingIndex {
            engine: "covers",
            file: spec.file_name(),
        })?;
    let prices = cover::Prices::new(cfg, raw_bits);
    let engine = cover::Engine {
        f: file,
        s: snap.bytes(),
        idx: min,
        cfg,
        prices,
    };
    let t = Instant::now();
    let threads = thread_count(cfg);
    let th = Instant::now();
    let file_hash = if how.hash {
        crate::util::parallel_blake3(file, usize::BITS - 1 - threads.max(1).leading_zeros())
    } else {
        [0; 32]
    };
    let hash_ms = ms(th);
    // Chunks of COVER_CHUNK bytes (whole blocks), taken by the threads as they come free: a
    // release's code and data plan at different speeds, so fixed halves left one thread
    // idle. The chunks do not depend on the thread count, so neither does the plan.
    let chunks = file.len().div_ceil(COVER_CHUNK).max(1);
    let chunk = |i: usize| (i * COVER_CHUNK, ((i + 1) * COVER_CHUNK).min(file.len()));
    let parts = per_chunk(chunks, threads, |i| {
        let (a, b) = chunk(i);
        engine.run_from(a, b, how.start_weak)
    });
    times.hash_ms = hash_ms;
    let covers = engine.join(parts, COVER_CHUNK);
    let mut covers = cover::merge(file, snap.bytes(), covers, cfg, &prices);
    // Refinement where the first pass covered at least half of the file: below that the
    // packer weighs the file as literals against the blueprint (`pbb::pack_best`), and on
    // /usr/bin/bash against the synthetic snapshot (16% covered) the literals won with and
    // without refinement, which took 65-100 ms of its 0.4 s at `max`
    let covered: usize = covers.iter().map(|c| c.len).sum();
    if cfg.refine && covered * 2 >= file.len() {
        let tr = Instant::now();
        let first = &covers;
        let refined: Vec<cover::Cover> = per_chunk(chunks, threads, |i| {
            let (a, b) = chunk(i);
            engine.refine(a, b, first)
        })
        .into_iter()
        .flatten()
        .collect();
        covers = cover::merge(file, snap.bytes(), refined, cfg, &prices);
        times.refine_ms = ms(tr);
    }
    times.match_ms = ms(t);
    let t = Instant::now();
    let weak = cfg.weak_share > 0.0
        && (cover::equal_within(&covers, 0, file.len()) as f64)
            < cfg.weak_share * file.len() as f64;
    // nothing matched: every byte is raw, and the spill would be a copy of the file
    let spill_elided = how.elide_raw_spill && covers.is_empty() && !cfg.self_segments;
    let (mut segments, mut spill) = if spill_elided {
        (
            crate::blueprint::raw_segments(file.len() as u64),
            Vec::new(),
        )
    } else {
        cover::emit(file, snap.bytes(), &covers, threads)
    };
    times.extend_ms = ms(t);
    if cfg.self_segments {
        let t = Instant::now();
        segments = selfref::pass(file, segments, cfg, raw_bits);
        spill = spill_of(file, snap.bytes(), &segments);
        times.self_ms = ms(t);
    }
    Ok(Plan {
        blueprint: Blueprint {
            snapshot_id: snap.id,
            file_len: file.len() as u64,
            file_hash,
            segments,
            spill,
        },
        raw_bits_per_byte: raw_bits,
        times,
        spill_elided,
        weak,
    })
}

/// The spill of `segs` over `file`: raw bytes, and the differences of approximate covers.
fn spill_of(file: &[u8], snap: &[u8], segs: &[Segment]) -> Vec<u8> {
    let mut spill = Vec::new();
    let mut pos = 0usize;
    for s in segs {
        let n = s.len as usize;
        match s.src {
            Source::Raw => spill.extend_from_slice(&file[pos..pos + n]),
            Source::Cover { off } => {
                let o = off as usize;
                spill.extend(
                    file[pos..pos + n]
                        .iter()
                        .zip(&snap[o..o + n])
                        .map(|(x, y)| x.wrapping_sub(*y)),
                )
            }
            _ => {}
        }
        pos += n;
    }
    spill
}

impl Plan {
    /// Put the file's bytes in an elided spill ([`Plan::spill_elided`]): then the blueprint
    /// is whole. `file` must be the planned file.
    pub fn fill_spill(&mut self, file: &[u8]) {
        if self.spill_elided {
            debug_assert_eq!(file.len() as u64, self.blueprint.file_len);
            self.blueprint.spill = file.to_vec();
            self.spill_elided = false;
        }
    }

    /// The spill compression level worth spending: `default`, or a fast level when the file
    /// looked incompressible (a high level buys nothing there and costs seconds).
    pub fn spill_level(&self, default: i32) -> i32 {
        if self.raw_bits_per_byte >= 7.5 {
            default.min(3)
        } else {
            default
        }
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Append `seg`, merging it into the last segment when both are raw or both continue the same
/// snapshot run under the same transform.
fn push_merged(out: &mut Vec<Segment>, seg: Segment) {
    if let Some(last) = out.last_mut() {
        let room = u32::MAX - last.len;
        let mergeable = match (last.src, seg.src) {
            (Source::Raw, Source::Raw) => true,
            (
                Source::Snap {
                    op: a,
                    off: ao,
                    imm: ai,
                },
                Source::Snap {
                    op: b,
                    off: bo,
                    imm: bi,
                },
            ) => a == b && ai == bi && ao + last.len as u64 == bo,
            _ => false,
        };
        if mergeable && seg.len <= room {
            last.len += seg.len;
            return;
        }
    }
    out.push(seg);
}

/// A verified match.
#[derive(Debug, Clone, Copy)]
struct Match {
    start: usize,
    len: usize,
    snap: usize,
    op: Transform,
    imm: u8,
    rep: bool,
}

struct Ctx<'a> {
    f: &'a [u8],
    s: &'a [u8],
    hints: &'a Hints,
    cfg: &'a PlanConfig,
    raw_bits: f64,
    k8: [Option<&'a crate::index::Index>; 3],
    k4: Option<&'a crate::index::Index>,
    anchors: Vec<&'a crate::index::Index>,
    gate: Option<gate::Gate>,
    bank_starts: Vec<u64>,
    bank_kinds: Vec<BankKind>,
    /// Whether a match shorter than k=8 can find for sure (15 bytes) can pay for itself.
    k4_pays: bool,
}

#[inline(always)]
fn load8(b: &[u8], p: usize) -> u64 {
    u64::from_le_bytes(b[p..p + 8].try_into().expect("8"))
}

#[inline(always)]
fn diff_word(op: Transform, f: u64, s: u64, imm8: u64) -> u64 {
    match op {
        Transform::Id => f ^ s,
        Transform::Xor => f ^ s ^ imm8,
        Transform::Add => {
            const H: u64 = 0x8080_8080_8080_8080;
            (((f | H) - (s & !H)) ^ ((f ^ !s) & H)) ^ imm8
        }
    }
}

impl<'a> Ctx<'a> {
    fn new(
        f: &'a [u8],
        snap: &'a Snapshot,
        idx: &'a IndexSet,
        hints: &'a Hints,
        cfg: &'a PlanConfig,
        raw_bits: f64,
    ) -> Self {
        // the config's exact specs when loaded, else any index of that projection and k
        let specs = index_specs(cfg);
        let find = |p: Projection, k: u8| {
            specs
                .iter()
                .find(|s| s.projection == p && s.k == k)
                .and_then(|s| idx.get_spec(s).or_else(|| idx.get(p, k)))
        };
        let k8 = [
            find(Projection::Raw, 8),
            find(Projection::Xor, 8),
            find(Projection::Add, 8),
        ];
        let k4 = find(Projection::Raw, 4);
        let anchors = cfg
            .projections
            .iter()
            .filter_map(|&p| {
                idx.get_spec(&anchor::spec(p, cfg.anchor_step, cfg.anchor_fanout))
                    .or_else(|| idx.get(p, 8))
            })
            .collect();
        let gate = cfg
            .gate
            .then(|| gate::Gate::new(&snap.manifest.banks, &cfg.gate_banks, cfg.gate_widen_after));
        let c = &cfg.cost;
        // (measured on libstd: below ~2.6 bits per raw byte the k=4 lookups doubled planning
        // time for 1% fewer wire bytes)
        let k4_pays = (c.seg_bits + c.jump_bits) / raw_bits < 10.0;
        Ctx {
            k4_pays,
            f,
            s: snap.bytes(),
            hints,
            cfg,
            raw_bits,
            k8,
            k4,
            anchors,
            gate,
            bank_starts: snap.manifest.banks.iter().map(|b| b.offset).collect(),
            bank_kinds: snap.manifest.banks.iter().map(|b| b.kind).collect(),
        }
    }

    #[inline]
    fn bank_index(&self, off: usize) -> usize {
        self.bank_starts
            .partition_point(|b| *b <= off as u64)
            .saturating_sub(1)
    }

    #[inline]
    fn bank_kind(&self, off: usize) -> BankKind {
        self.bank_kinds[self.bank_index(off)]
    }

    /// Whether the gate (if on) lets a `kind` probe verify a candidate at snapshot `p`.
    #[inline]
    fn admits(&self, kind: SectionKind, p: usize, misses: usize) -> bool {
        match &self.gate {
            Some(g) => g.admits(kind, self.bank_index(p), misses),
            None => true,
        }
    }

    /// Matching bytes from (fi, si) forward under (op, imm), at most `max`.
    #[inline]
    fn ext_fwd(&self, fi: usize, si: usize, op: Transform, imm: u8, max: usize) -> usize {
        let (f, s) = (self.f, self.s);
        let max = max.min(f.len() - fi).min(s.len() - si);
        let imm8 = u64::from_ne_bytes([imm; 8]) * (op != Transform::Id) as u64;
        let mut n = 0;
        while n + 8 <= max {
            let d = diff_word(op, load8(f, fi + n), load8(s, si + n), imm8);
            if d != 0 {
                return n + (d.trailing_zeros() / 8) as usize;
            }
            n += 8;
        }
        while n < max && f[fi + n] == op.byte(s[si + n], imm) {
            n += 1;
        }
        n
    }

    /// Matching bytes backwards from (fi, si) (exclusive), not before `floor` in the file.
    #[inline]
    fn ext_back(&self, fi: usize, si: usize, op: Transform, imm: u8, floor: usize) -> usize {
        let max = (fi - floor).min(si);
        let mut n = 0;
        while n < max && self.f[fi - n - 1] == op.byte(self.s[si - n - 1], imm) {
            n += 1;
        }
        n
    }

    /// Net gain in bits of taking `m` (positive means cheaper than raw).
    #[inline]
    fn gain(&self, m: &Match) -> f64 {
        let c = &self.cfg.cost;
        let mut cost = c.seg_bits + if m.rep { 2.0 } else { c.jump_bits };
        if m.op != Transform::Id {
            cost += c.imm_bits;
        }
        m.len as f64 * self.raw_bits - cost
    }

    /// Try a candidate (file position i, snapshot position p) under `op` (imm from the bytes).
    #[inline]
    fn try_at(
        &self,
        i: usize,
        p: usize,
        op: Transform,
        floor: usize,
        rep: bool,
        best: &mut Option<Match>,
    ) {
        let imm = op.imm_for(self.s[p], self.f[i]);
        if op != Transform::Id && imm == 0 {
            return; // the identity is found by the raw index
        }
        let fwd = self.ext_fwd(i, p, op, imm, u32::MAX as usize);
        if fwd < 4 {
            return;
        }
        let back = self.ext_back(i, p, op, imm, floor);
        let m = Match {
            start: i - back,
            len: fwd + back,
            snap: p - back,
            op,
            imm,
            rep,
        };
        if m.len < self.cfg.min_match {
            return;
        }
        match best {
            Some(b) if self.gain(b) >= self.gain(&m) => {}
            _ => *best = Some(m),
        }
    }

    /// Plan the file range [a, b) into segments covering it exactly.
    fn run(&self, a: usize, b: usize) -> (Vec<Segment>, Ticks) {
        let f = self.f;
        let cfg = self.cfg;
        let mut tk = Ticks::default();
        let mut out: Vec<Segment> = Vec::new();
        let mut raw_start = a;
        let mut i = a;
        let mut delta: Option<(i64, Transform, u8)> = None;
        let mut cur = self.hints.cursor();
        cur.seek(a as u64);
        let mut ranked: Vec<(u8, u32, Transform)> = Vec::with_capacity(64);
        let mut anchored: Vec<(u32, Transform)> = Vec::new();
        let mut misses = 0usize;
        let win = cfg.window.max(1);
        let mut budget = sweep::Budget::new(cfg.sweep_window_bytes, cfg.sweep_window_us);
        let mut budget_window = a / win;
        let mut next_sweep = 0usize;
        // phase timings sample one probe in TIME_SAMPLE (reading the cycle counter costs
        // ~25 ns, a probe not much more); sweeps are rare and always timed
        let mut probe = 0u32;
        while i < b {
            let mut best: Option<Match> = None;
            probe = probe.wrapping_add(1);
            let timed = probe.is_multiple_of(TIME_SAMPLE);
            let tick = || if timed { anchor::ticks() } else { 0 };
            let t0 = tick();
            // 1. repeat alignment
            if let Some((d, op, imm)) = delta {
                let p = i as i64 + d;
                if p >= 0 && (p as usize) < self.s.len() {
                    let p = p as usize;
                    if f[i] == op.byte(self.s[p], imm) {
                        let fwd = self.ext_fwd(i, p, op, imm, u32::MAX as usize);
                        let m = Match {
                            start: i,
                            len: fwd,
                            snap: p,
                            op,
                            imm,
                            rep: true,
                        };
                        if fwd >= 2 && self.gain(&m) > 0.0 {
                            best = Some(m);
                        }
                    }
                }
            }
            // keep the memory system busy: heads for i+8, entries for i+4
            if i + 8 + 9 <= f.len() {
                for idx in self.k8.iter().flatten().chain(self.k4.iter()) {
                    let k = idx.spec.k;
                    idx.prefetch_bucket(window_hash(idx.spec.projection, k, f, i + 8));
                    idx.prefetch_entries(window_hash(idx.spec.projection, k, f, i + 4));
                }
            }
            let t1 = tick();
            tk.extend += t1.wrapping_sub(t0);
            let good = cfg.good_enough;
            if best.is_none_or(|m| m.len < good) && i + 9 <= f.len() {
                // 2. k=8 lookups, candidates ranked by the section's preferred banks (and,
                //    with gating, restricted to the banks the section kind admits)
                let t_l = tick();
                let kind = cur.kind_at(i as u64);
                let prefs = kind.preferred_banks();
                ranked.clear();
                for (j, idx) in self.k8.iter().enumerate() {
                    let Some(idx) = idx else { continue };
                    // machine code is never a byte-wise xor/add of anything: skip those lookups
                    if j > 0 && (kind == SectionKind::Text || !cfg.transforms) {
                        continue;
                    }
                    let op = Transform::ALL[j];
                    let h = window_hash(idx.spec.projection, 8, f, i);
                    for p in idx.candidates(h) {
                        if !self.admits(kind, p as usize, misses) {
                            continue;
                        }
                        let bk = self.bank_kind(p as usize);
                        let rank = prefs.iter().position(|k| *k == bk).unwrap_or(prefs.len()) as u8;
                        ranked.push((rank, p, op));
                    }
                }
                ranked.sort_unstable_by_key(|r| r.0);
                let t_e = tick();
                tk.lookup += t_e.wrapping_sub(t_l);
                for &(_, p, op) in ranked.iter().take(cfg.max_candidates) {
                    self.try_at(i, p as usize, op, raw_start, false, &mut best);
                    if best.is_some_and(|m| m.len >= good) {
                        break;
                    }
                }
                tk.extend += tick().wrapping_sub(t_e);
                // 3. k=4 when nothing worth a segment was found, and only when a match short
                //    enough to be missed by k=8 could pay for itself at this raw byte cost
                //    (or, with `k4_text`, in code)
                let k4_here = self.k4_pays || (cfg.k4_text && kind == SectionKind::Text);
                if k4_here && best.is_none_or(|m| self.gain(&m) <= 0.0) {
                    if let Some(k4) = self.k4 {
                        let t_l = tick();
                        let h = window_hash(Projection::Raw, 4, f, i);
                        ranked.clear();
                        ranked.extend(
                            k4.candidates(h)
                                .filter(|&p| self.admits(kind, p as usize, misses))
                                .take(cfg.k4_candidates)
                                .map(|p| (0, p, Transform::Id)),
                        );
                        let t_e = tick();
                        tk.lookup += t_e.wrapping_sub(t_l);
                        for &(_, p, op) in ranked.iter() {
                            self.try_at(i, p as usize, op, raw_start, false, &mut best);
                        }
                        tk.extend += tick().wrapping_sub(t_e);
                    }
                }
                // 4. coarse projection anchors, confirmed on the real bytes
                if !self.anchors.is_empty() && best.is_none_or(|m| self.gain(&m) <= 0.0) {
                    let t_l = tick();
                    anchor::candidates(
                        &self.anchors,
                        f,
                        i,
                        cfg.transforms && kind != SectionKind::Text,
                        cfg.max_candidates,
                        &mut anchored,
                    );
                    anchored.retain(|&(p, _)| self.admits(kind, p as usize, misses));
                    let t_e = tick();
                    tk.lookup += t_e.wrapping_sub(t_l);
                    for &(p, op) in anchored.iter() {
                        self.try_at(i, p as usize, op, raw_start, false, &mut best);
                    }
                    tk.extend += tick().wrapping_sub(t_e);
                }
                // 5. sweep: a bounded search for the next sweep_min bytes, near the last
                //    alignment first, then through the gated banks
                if cfg.sweep
                    && i >= next_sweep
                    && i + cfg.sweep_min <= f.len()
                    && best.is_none_or(|m| self.gain(&m) <= 0.0)
                {
                    let t_s = anchor::ticks();
                    if i / win != budget_window {
                        budget_window = i / win;
                        budget.reset();
                    }
                    next_sweep = i + cfg.sweep_every;
                    let needle = &f[i..i + cfg.sweep_min];
                    let mut found = None;
                    if let Some((d, _, _)) = delta {
                        if i - raw_start <= cfg.sweep_local_span {
                            let c = (i as i64 + d).clamp(0, self.s.len() as i64) as usize;
                            let lo = c.saturating_sub(cfg.sweep_radius);
                            let hi = (c + cfg.sweep_radius + cfg.sweep_min).min(self.s.len());
                            found = sweep::find(self.s, &[(lo, hi)], needle, &mut budget);
                        }
                    }
                    if found.is_none() && !budget.exhausted() {
                        let ranges = match &self.gate {
                            Some(g) => g.ranges(kind, misses, self.s.len()),
                            None => vec![(0, self.s.len())],
                        };
                        found = sweep::find(self.s, &ranges, needle, &mut budget);
                    }
                    if let Some(p) = found {
                        self.try_at(i, p, Transform::Id, raw_start, false, &mut best);
                    }
                    tk.sweep += anchor::ticks().wrapping_sub(t_s);
                }
            }
            match best {
                Some(m) if self.gain(&m) > 0.0 => {
                    // a backward extension never crosses raw_start; the segment may end past b
                    if m.start > raw_start {
                        push_merged(
                            &mut out,
                            Segment {
                                len: (m.start - raw_start) as u32,
                                src: Source::Raw,
                            },
                        );
                    }
                    let mut left = m.len;
                    let mut sp = m.snap;
                    while left > 0 {
                        let n = left.min(u32::MAX as usize);
                        push_merged(
                            &mut out,
                            Segment {
                                len: n as u32,
                                src: Source::Snap {
                                    op: m.op,
                                    off: sp as u64,
                                    imm: m.imm,
                                },
                            },
                        );
                        left -= n;
                        sp += n;
                    }
                    i = m.start + m.len;
                    raw_start = i;
                    misses = 0;
                    delta = Some((m.snap as i64 - m.start as i64, m.op, m.imm));
                }
                _ => {
                    // acceleration: after a long run of misses, probe sparser (at most every
                    // `max_skip` bytes, so matches of 15 + max_skip bytes are still found; the
                    // backward extension recovers their start)
                    misses += 1;
                    i += 1 + (misses >> 7).min(cfg.max_skip.saturating_sub(1));
                }
            }
        }
        // the last segment may have run past b: the next range starts where this one ended
        if raw_start < b {
            let mut left = b - raw_start;
            while left > 0 {
                let n = left.min(u32::MAX as usize);
                push_merged(
                    &mut out,
                    Segment {
                        len: n as u32,
                        src: Source::Raw,
                    },
                );
                left -= n;
            }
        }
        (out, tk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_cost_estimates_follow_the_data_at_any_budget() {
        let mut noise = vec![0u8; 4 << 20];
        crate::pob::prng::SplitMix64::new(7).fill(&mut noise);
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog; "
            .iter()
            .cycle()
            .take(4 << 20)
            .copied()
            .collect();
        for budget in [2 << 20, 256 << 10, 1] {
            let n = estimate_raw_bits_within(&noise, budget);
            let t = estimate_raw_bits_within(&text, budget);
            assert!(n > 7.5, "noise at budget {budget}: {n}");
            assert!(t < 1.0, "repeated text at budget {budget}: {t}");
        }
        assert_eq!(
            estimate_raw_bits(&noise),
            estimate_raw_bits_within(&noise, 2 << 20)
        );
        assert_eq!(estimate_raw_bits_within(&[], 1), 8.0);
        // the samples compressed on several threads give the same price
        let mixed: Vec<u8> = noise[..2 << 20]
            .iter()
            .chain(&text[..2 << 20])
            .copied()
            .collect();
        for threads in [2, 3, 8] {
            assert_eq!(
                estimate_on(&mixed, 2 << 20, threads),
                estimate_raw_bits(&mixed),
                "{threads} threads"
            );
        }
    }
}
