//! The benchmark's knobs, and their validation before anything is allocated.

use super::desc::Desc;
use super::region::HUGE_PAGE;
use super::ring::RingRef;
use super::spans::Layout;
use crate::blueprint::Transform;

/// How the producer spreads frames over the rings (named after the transport's modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One stream spread over every ring: each frame goes to the next ring with room, so a
    /// slower consumer simply gets fewer frames (work-conserving).
    Scatter,
    /// An explicit ring list served in strict round robin: frame `k` goes to ring `k % R`,
    /// and the producer waits when that ring is full.
    Queues,
    /// One flow per port: frame `k` belongs to port `k % ports` and goes to one of that
    /// port's queues by a flow hash (as NIC RSS would); the producer waits when it is full.
    Ports,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Scatter => "scatter",
            Mode::Queues => "queues",
            Mode::Ports => "ports",
        }
    }
}

/// Where the blob's pages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HugePages {
    /// hugetlb 2 MiB pages if enough are free, else normal pages with `MADV_HUGEPAGE`
    /// (the fallback is printed).
    Auto,
    /// hugetlb 2 MiB pages or an error.
    On,
    /// Normal pages, no `MADV_HUGEPAGE`.
    Off,
}

/// Everything `pfs bench shm` can be told.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ShmConfig {
    /// Blob size in MiB.
    pub blob_mb: u64,
    /// Descriptors per frame (the unit of publish and consume).
    pub dpf: u32,
    /// Each ring has `2^ring_pow2` descriptor slots.
    pub ring_pow2: u32,
    /// Span offsets are multiples of this (a power of two).
    pub align: u64,
    /// Seconds of the ring phase.
    pub duration: f64,
    /// Consumer workers (one per core).
    pub threads: u32,
    /// Consumer processes; `None`: one per worker when there is more than one.
    pub procs: Option<u32>,
    /// Relative (delta-coded) descriptor offsets.
    pub arith: bool,
    /// Variable span lengths.
    pub vstream: bool,
    pub ports: u32,
    /// Queues per port; rings = ports * queues.
    pub queues: u32,
    pub mode: Mode,
    /// Span length in bytes (the mean with `vstream`).
    pub seg_len: u32,
    /// Consumers apply `pcpu_op` to the spans (else they only drain descriptors).
    pub pcpu: bool,
    pub pcpu_op: Transform,
    pub imm: u8,
    pub hugepages: HugePages,
    /// Seed of the blob contents and the span streams.
    pub seed: u64,
    /// Seconds of each tight-loop run (baseline and ceiling each run before and after the
    /// ring phase).
    pub baseline_secs: f64,
    /// Seconds of the memcpy phase.
    pub memcpy_secs: f64,
    /// Pin the producer to this core (default: not pinned); with several producers,
    /// producer `i` to core `producer_core + i`.
    pub producer_core: Option<usize>,
    /// Producer threads (scatter mode): ring `r` is fed by producer `r % producers`, for
    /// when one producer cannot keep every consumer busy.
    pub producers: u32,
    /// Fault injection for tests: consumer 0 skips applying its n-th descriptor (0-based).
    pub skip_desc: Option<u64>,
}

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig {
            blob_mb: 1024,
            dpf: 32,
            ring_pow2: 19,
            align: 64,
            duration: 5.0,
            threads: 2,
            procs: None,
            arith: false,
            vstream: false,
            ports: 1,
            queues: 3,
            mode: Mode::Scatter,
            seg_len: 256,
            pcpu: true,
            pcpu_op: Transform::Xor,
            imm: 255,
            hugepages: HugePages::Auto,
            seed: 1,
            baseline_secs: 1.0,
            memcpy_secs: 1.0,
            producer_core: None,
            producers: 1,
            skip_desc: None,
        }
    }
}

/// What the machine offers, read once before validation (a parameter so tests can vary it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemFacts {
    /// `MemAvailable` in bytes.
    pub available: u64,
    /// Free hugetlb 2 MiB pages.
    pub hugepages_free: u64,
    /// CPUs this process may run on.
    pub cores: usize,
}

impl MemFacts {
    /// Read `/proc/meminfo` and the affinity mask.
    pub fn read() -> Self {
        MemFacts {
            available: super::region::meminfo("MemAvailable").unwrap_or(0),
            hugepages_free: super::region::meminfo("HugePages_Free").unwrap_or(0),
            cores: core_affinity::get_core_ids().map_or(1, |c| c.len().max(1)),
        }
    }
}

/// A rejected configuration: one line, said before anything is allocated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShmConfigError {
    #[error("--duration must be a positive number of seconds (at most 86400), got {0}")]
    Duration(f64),
    #[error("--blob-mb must be at least 1")]
    BlobZero,
    #[error("--seg-len must be at least 1")]
    SegZero,
    #[error("--align must be a power of two between 1 and 2097152, got {0}")]
    Align(u64),
    #[error("--dpf must be at least 1")]
    DpfZero,
    #[error("--ring-pow2 must be between 1 and 30, got {0}")]
    RingPow2(u32),
    #[error("a frame of --dpf {dpf} descriptors does not fit a ring of 2^{pow2} = {slots} slots")]
    FrameTooBig { dpf: u32, pow2: u32, slots: u64 },
    #[error("--threads must be between 1 and 1024, got {0}")]
    Threads(u32),
    #[error("--procs {procs} must be between 1 and --threads {threads}")]
    Procs { procs: u32, threads: u32 },
    #[error("--ports and --queues must be at least 1")]
    RingsZero,
    #[error("--ports x --queues = {rings} rings, more than the limit of 4096")]
    TooManyRings { rings: u64 },
    #[error("--ports x --queues = {rings} rings is fewer than --threads {threads}: every consumer needs a ring of its own")]
    FewerRingsThanThreads { rings: u64, threads: u32 },
    #[error("a span of up to {span} bytes (--seg-len {seg_len}, aligned to {align}) is longer than the blob's {shard}-byte share per ring ({blob} bytes / {rings} rings)")]
    SpanTooLong {
        span: u64,
        seg_len: u32,
        align: u64,
        shard: u64,
        blob: u64,
        rings: u64,
    },
    #[error("blob {blob} + rings {rings_bytes} = {total} bytes exceed the {available} bytes of available memory (MemAvailable, less 1 GiB for the system)")]
    TooBig {
        blob: u64,
        rings_bytes: u64,
        total: u64,
        available: u64,
    },
    #[error("--hugepages on: the blob needs {need} free 2 MiB hugetlb pages, {free} are free (reserve them with: echo {need} > /proc/sys/vm/nr_hugepages)")]
    NoHugePages { need: u64, free: u64 },
    #[error("--baseline-secs and --memcpy-secs must be positive and at most 3600")]
    PhaseSecs,
    #[error("--producer-core {core}: this process may run on {cores} cores (0..{cores})")]
    ProducerCore { core: usize, cores: usize },
    #[error("--producers {0}: must be 1..=64 and at most the number of rings")]
    Producers(u32),
    #[error(
        "--producers above 1 needs --mode scatter (the other modes publish in one global order)"
    )]
    ProducersMode,
}

/// The numbers derived from a valid configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub blob_len: u64,
    pub rings: u32,
    pub slots: u64,
    /// Bytes of one ring (header + slots).
    pub ring_bytes: u64,
    pub procs: u32,
    pub layout: Layout,
    /// Hugetlb pages the blob needs.
    pub huge_pages_needed: u64,
}

/// Memory kept free for the system when sizing.
const SYSTEM_RESERVE: u64 = 1 << 30;

impl ShmConfig {
    /// Check every knob and derive the plan; allocates nothing.
    pub fn validate(&self, m: &MemFacts) -> Result<Plan, ShmConfigError> {
        use ShmConfigError as E;
        if !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= 86400.0) {
            return Err(E::Duration(self.duration));
        }
        for s in [self.baseline_secs, self.memcpy_secs] {
            if !(s.is_finite() && s > 0.0 && s <= 3600.0) {
                return Err(E::PhaseSecs);
            }
        }
        if self.blob_mb == 0 {
            return Err(E::BlobZero);
        }
        if self.seg_len == 0 {
            return Err(E::SegZero);
        }
        if !self.align.is_power_of_two() || self.align > HUGE_PAGE as u64 {
            return Err(E::Align(self.align));
        }
        if self.dpf == 0 {
            return Err(E::DpfZero);
        }
        if !(1..=30).contains(&self.ring_pow2) {
            return Err(E::RingPow2(self.ring_pow2));
        }
        let slots = 1u64 << self.ring_pow2;
        if self.dpf as u64 > slots {
            return Err(E::FrameTooBig {
                dpf: self.dpf,
                pow2: self.ring_pow2,
                slots,
            });
        }
        if !(1..=64).contains(&self.producers) {
            return Err(E::Producers(self.producers));
        }
        if self.producers > 1 && self.mode != Mode::Scatter {
            return Err(E::ProducersMode);
        }
        let last_producer_core = self.producer_core.map(|c| c + self.producers as usize - 1);
        if let Some(core) = last_producer_core.filter(|&c| c >= m.cores) {
            return Err(E::ProducerCore {
                core,
                cores: m.cores,
            });
        }
        if !(1..=1024).contains(&self.threads) {
            return Err(E::Threads(self.threads));
        }
        let procs = self
            .procs
            .unwrap_or(if self.threads > 1 { self.threads } else { 1 });
        if procs == 0 || procs > self.threads {
            return Err(E::Procs {
                procs,
                threads: self.threads,
            });
        }
        if self.ports == 0 || self.queues == 0 {
            return Err(E::RingsZero);
        }
        let rings = self.ports as u64 * self.queues as u64;
        if rings > 4096 {
            return Err(E::TooManyRings { rings });
        }
        if rings < self.producers as u64 {
            return Err(E::Producers(self.producers));
        }
        if rings < self.threads as u64 {
            return Err(E::FewerRingsThanThreads {
                rings,
                threads: self.threads,
            });
        }
        let blob_len = self.blob_mb.checked_mul(1 << 20).ok_or(E::TooBig {
            blob: u64::MAX,
            rings_bytes: 0,
            total: u64::MAX,
            available: m.available,
        })?;
        let layout = Layout::new(
            blob_len,
            rings as u32,
            self.seg_len,
            self.vstream,
            self.align,
            self.seed,
        )
        .ok_or_else(|| {
            let max_len = if self.vstream {
                super::spans::vstream_bounds(self.seg_len).1
            } else {
                self.seg_len
            } as u64;
            E::SpanTooLong {
                span: max_len.next_multiple_of(self.align),
                seg_len: self.seg_len,
                align: self.align,
                shard: blob_len / rings,
                blob: blob_len,
                rings,
            }
        })?;
        let ring_bytes = RingRef::<Desc>::bytes_for(self.ring_pow2) as u64;
        let rings_bytes = ring_bytes * rings;
        let total = blob_len + rings_bytes;
        let available = m.available.saturating_sub(SYSTEM_RESERVE);
        if total > available {
            return Err(E::TooBig {
                blob: blob_len,
                rings_bytes,
                total,
                available,
            });
        }
        let huge_pages_needed = blob_len.div_ceil(HUGE_PAGE as u64);
        if self.hugepages == HugePages::On && m.hugepages_free < huge_pages_needed {
            return Err(E::NoHugePages {
                need: huge_pages_needed,
                free: m.hugepages_free,
            });
        }
        Ok(Plan {
            blob_len,
            rings: rings as u32,
            slots,
            ring_bytes,
            procs,
            layout,
            huge_pages_needed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> MemFacts {
        MemFacts {
            available: 24 << 30,
            hugepages_free: 0,
            cores: 2,
        }
    }

    #[test]
    fn the_source_smoke_line_is_valid() {
        let p = ShmConfig::default().validate(&facts()).unwrap();
        assert_eq!(p.blob_len, 1 << 30);
        assert_eq!(p.rings, 3);
        assert_eq!(p.slots, 1 << 19);
        assert_eq!(p.procs, 2);
        assert_eq!(p.layout.stride, 256);
    }

    #[test]
    fn bad_flags_are_rejected() {
        let ok = ShmConfig::default();
        let cases: Vec<(ShmConfig, &str)> = vec![
            (
                ShmConfig {
                    duration: 0.0,
                    ..ok.clone()
                },
                "duration",
            ),
            (
                ShmConfig {
                    duration: f64::NAN,
                    ..ok.clone()
                },
                "duration",
            ),
            (
                ShmConfig {
                    blob_mb: 0,
                    ..ok.clone()
                },
                "blob",
            ),
            (
                ShmConfig {
                    seg_len: 0,
                    ..ok.clone()
                },
                "seg",
            ),
            (
                ShmConfig {
                    align: 48,
                    ..ok.clone()
                },
                "align",
            ),
            (
                ShmConfig {
                    dpf: 0,
                    ..ok.clone()
                },
                "dpf",
            ),
            (
                ShmConfig {
                    ring_pow2: 31,
                    ..ok.clone()
                },
                "ring",
            ),
            (
                ShmConfig {
                    ring_pow2: 4,
                    dpf: 32,
                    ..ok.clone()
                },
                "frame",
            ),
            (
                ShmConfig {
                    threads: 0,
                    ..ok.clone()
                },
                "threads",
            ),
            (
                ShmConfig {
                    procs: Some(3),
                    ..ok.clone()
                },
                "procs",
            ),
            (
                ShmConfig {
                    queues: 0,
                    ..ok.clone()
                },
                "rings0",
            ),
            (
                ShmConfig {
                    queues: 1,
                    ..ok.clone()
                },
                "fewer",
            ),
            (
                ShmConfig {
                    blob_mb: 1,
                    seg_len: 1 << 20,
                    ..ok.clone()
                },
                "span",
            ),
            (
                ShmConfig {
                    blob_mb: 30 << 10,
                    ..ok.clone()
                },
                "mem",
            ),
            (
                ShmConfig {
                    ring_pow2: 30,
                    queues: 64,
                    ..ok.clone()
                },
                "mem",
            ),
            (
                ShmConfig {
                    hugepages: HugePages::On,
                    ..ok.clone()
                },
                "huge",
            ),
            (
                ShmConfig {
                    producer_core: Some(2),
                    ..ok.clone()
                },
                "producer core",
            ),
            (
                ShmConfig {
                    producers: 0,
                    ..ok.clone()
                },
                "no producer",
            ),
            (
                ShmConfig {
                    producers: 2,
                    mode: Mode::Queues,
                    ..ok.clone()
                },
                "producers outside scatter",
            ),
            (
                ShmConfig {
                    producers: 1000,
                    ..ok.clone()
                },
                "producers beyond the rings",
            ),
        ];
        for (c, what) in cases {
            let e = c.validate(&facts()).expect_err(what);
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{what}: one line: {msg}");
        }
    }

    #[test]
    fn span_longer_than_the_blob_names_the_sizes() {
        let c = ShmConfig {
            blob_mb: 1,
            seg_len: 2 << 20,
            ..ShmConfig::default()
        };
        let msg = c.validate(&facts()).unwrap_err().to_string();
        assert!(msg.contains("longer than"), "{msg}");
    }
}
