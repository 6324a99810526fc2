//! The benchmark: one invocation runs every phase on the same blob and spans.
//!
//! 1. **Fill**: the blob gets its seeded initial contents (every page faulted in). The
//!    baseline and ceiling loops (4, 5) run once here, then the blob is filled again.
//! 2. **Ring**: consumer processes are forked (one per worker by default), pinned, and claim
//!    their rings (ring `r` belongs to worker `r % threads`). This process is the producer:
//!    it generates each ring's span stream, encodes descriptors and publishes whole frames of
//!    `--dpf` until `--duration` ends, sleeping whenever the rings are nearly full, so it
//!    costs a small duty cycle on whatever core it shares. Then it raises `done`; consumers
//!    drain their rings and exit; the phase ends when the last one has.
//! 3. **Verify**: the whole blob against the closed-form expectation ([`super::verify`]).
//! 4. **Baseline**: one core runs the same spans through the same kernel in a tight loop
//!    (generate a batch of spans, apply them; no ring), before and after the ring phase.
//! 5. **Ceiling**: the same tight loop on each of the consumers' cores at once, before and
//!    after the ring phase.
//! 6. **memcpy**: one core copies `min(blob, 256 MiB)` out of the blob, repeatedly.
//!
//! CPUpwn is exactly `ring aggregate MB/s / baseline MB/s`; the ring efficiency is
//! `ring aggregate / ceiling`.

use super::config::{HugePages, MemFacts, Mode, Plan, ShmConfig, ShmConfigError};
use super::desc::{Decoder, Desc, Encoder, Span};
use super::proc::{self, Children, StopSignals};
use super::region::{RegionError, SharedRegion};
use super::ring::{Producer, RingError, RingRef};
use super::spans::{init_into, mix64, SpanStream};
use super::verify::{verify_blob, VerifyReport};
use crate::blueprint::apply::transform_in_place;
use crate::blueprint::Transform;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Config(#[from] ShmConfigError),
    #[error(transparent)]
    Region(#[from] RegionError),
    #[error("ring layout: {0}")]
    Ring(#[from] RingError),
    #[error("{0}")]
    Sys(#[from] std::io::Error),
    #[error("consumer process {pid} ended early ({exit})")]
    ChildDied { pid: i32, exit: String },
    #[error("consumer processes did not all start (a ring was already claimed?)")]
    Start,
}

/// One consumer worker's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerReport {
    pub worker: u32,
    pub pid: u32,
    pub core: Option<usize>,
    pub rings: Vec<u32>,
    pub descs: u64,
    pub frames: u64,
    /// Bytes the transform was applied to.
    pub bytes: u64,
    /// Times all of this worker's rings were found empty after it had had work.
    pub empty_stalls: u64,
    /// Descriptors that failed to decode or pointed outside the ring's shard.
    pub invalid: u64,
    /// Descriptors deliberately not applied (`--fault-skip-desc`).
    pub skipped: u64,
    pub secs: f64,
    /// CPU time of the worker thread.
    pub cpu_secs: f64,
    pub mbps: f64,
}

/// The producer's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProducerReport {
    pub frames: u64,
    pub descs: u64,
    /// Times a frame did not fit (scatter: no ring had room; queues/ports: the target ring
    /// was full) and the producer slept.
    pub full_stalls: u64,
    /// Frames per ring.
    pub ring_frames: Vec<u64>,
    /// CPU time of the producer process during the ring phase.
    pub cpu_secs: f64,
}

/// A tight-loop phase (baseline or ceiling).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LoopReport {
    pub cores: u32,
    pub bytes: u64,
    pub descs: u64,
    pub secs: f64,
    pub mbps: f64,
    /// CPU time of the loop threads, summed.
    pub cpu_secs: f64,
    /// Bytes per CPU-second (10^6): the figure that other load on the machine does not skew.
    pub mb_per_cpu_s: f64,
    /// MB/s of the run before the ring phase and of the one after it.
    pub before_mbps: Option<f64>,
    pub after_mbps: Option<f64>,
}

impl LoopReport {
    /// The runs before and after the ring phase as one: totals, and each run's MB/s.
    fn combine(before: Option<LoopReport>, after: Option<LoopReport>) -> Option<LoopReport> {
        let (b, a) = match (before, after) {
            (Some(b), Some(a)) => (b, a),
            (Some(b), None) => {
                return Some(LoopReport {
                    before_mbps: Some(b.mbps),
                    ..b
                })
            }
            (None, Some(a)) => {
                return Some(LoopReport {
                    after_mbps: Some(a.mbps),
                    ..a
                })
            }
            (None, None) => return None,
        };
        let (bytes, secs, cpu) = (b.bytes + a.bytes, b.secs + a.secs, b.cpu_secs + a.cpu_secs);
        Some(LoopReport {
            cores: b.cores,
            bytes,
            descs: b.descs + a.descs,
            secs,
            mbps: bytes as f64 / secs / 1e6,
            cpu_secs: cpu,
            mb_per_cpu_s: if cpu > 0.0 {
                bytes as f64 / cpu / 1e6
            } else {
                0.0
            },
            before_mbps: Some(b.mbps),
            after_mbps: Some(a.mbps),
        })
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShmReport {
    pub config: ShmConfig,
    pub blob_bytes: u64,
    pub backing: String,
    pub rings: u32,
    pub ring_slots: u64,
    pub ring_bytes: u64,
    pub procs: u32,
    pub stride: u64,
    pub slots_per_shard: u64,
    /// Notes worth printing (fallbacks, caveats).
    pub notes: Vec<String>,
    pub interrupted: bool,
    /// Ring phase wall time: first publish to the last consumer's exit.
    pub ring_secs: f64,
    pub ring_bytes_applied: u64,
    pub ring_descs: u64,
    pub ring_frames: u64,
    /// Aggregate MB/s (10^6 bytes) of the ring phase.
    pub aggregate_mbps: f64,
    pub descs_per_sec: f64,
    pub consumers: Vec<ConsumerReport>,
    pub producer: ProducerReport,
    pub verify: VerifyReport,
    pub verify_ok: bool,
    /// Descriptors the producer published that consumers did not account for (must be 0).
    pub unaccounted_descs: u64,
    pub verify_secs: f64,
    pub baseline: Option<LoopReport>,
    pub ceiling: Option<LoopReport>,
    pub memcpy_mbps: Option<f64>,
    pub memcpy_bytes: u64,
    /// aggregate / baseline.
    pub cpupwn: Option<f64>,
    /// aggregate / ceiling.
    pub ring_efficiency: Option<f64>,
    /// Ring bytes per CPU-second of consumers and producer together (10^6).
    pub ring_mb_per_cpu_s: f64,
    /// ring_mb_per_cpu_s / the ceiling's MB per CPU-second: the ring's cost in CPU time,
    /// independent of how much of the cores other processes took.
    pub cpu_efficiency: Option<f64>,
    /// Share of the consumers' wall time they were on a CPU (1.0: their cores were theirs).
    pub consumer_cpu_share: f64,
    /// /proc/loadavg (1 minute) when the run started.
    pub loadavg_start: f64,
}

impl ShmReport {
    /// Whether the proof of work holds: every byte as expected, every descriptor accounted
    /// for, none invalid or skipped.
    pub fn passed(&self) -> bool {
        self.verify_ok
    }
}

#[repr(C, align(128))]
struct Line<T>(T);

#[repr(C)]
struct Control {
    done: Line<AtomicU32>,
    ready: Line<AtomicU32>,
}

/// A worker's shared counters, written by the worker when it ends.
#[repr(C, align(128))]
#[derive(Default)]
struct WorkerStats {
    descs: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    empty_stalls: AtomicU64,
    invalid: AtomicU64,
    skipped: AtomicU64,
    start_ns: AtomicU64,
    end_ns: AtomicU64,
    cpu_ns: AtomicU64,
    pid: AtomicU64,
    /// Core + 1 (0: not pinned).
    core: AtomicU64,
}

/// The blob's base pointer, shared with workers (which touch only their own shards).
#[derive(Clone, Copy)]
struct BlobPtr(*mut u8);
// Safety: only a pointer value; each worker writes only the shards of its own rings.
unsafe impl Send for BlobPtr {}
// Safety: as above.
unsafe impl Sync for BlobPtr {}

/// Run the benchmark. `progress` receives one-line status messages as phases start.
pub fn run(cfg: &ShmConfig, progress: &mut dyn FnMut(&str)) -> Result<ShmReport, BenchError> {
    let facts = MemFacts::read();
    let plan = cfg.validate(&facts)?;
    let loadavg_start = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let _signals = StopSignals::install()?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut notes = Vec::new();

    let mut blob = alloc_blob(cfg, &plan, &facts, &mut notes)?;
    let backing = blob.backing().describe();
    if cfg.threads as usize > facts.cores {
        notes.push(format!(
            "{} consumers on {} cores: consumers share cores",
            cfg.threads, facts.cores
        ));
    }
    if cfg.pcpu && (cfg.pcpu_op == Transform::Id || cfg.imm == 0) {
        notes.push(format!(
            "{} with imm {} leaves bytes unchanged: the verification cannot see missing work",
            cfg.pcpu_op.name(),
            cfg.imm
        ));
    }
    if !cfg.pcpu {
        notes.push(
            "--pcpu 0: consumers only drain descriptors; the blob must come out unchanged".into(),
        );
    }

    progress(&format!(
        "filling the {} blob ({backing})",
        crate::util::human_bytes(plan.blob_len)
    ));
    fill_blob(blob.bytes_mut(), cfg.seed, cores.len().max(1));

    // The tight loops run once before and once after the ring phase, so a change in what
    // else the machine is doing shows (and averages) instead of skewing the ratios. Their
    // work is undone by filling the blob again before the ring phase.
    let (base_pre, ceil_pre) =
        baseline_and_ceiling(cfg, &plan, blob.bytes_mut(), &cores, "before", progress);
    if base_pre.is_some() {
        fill_blob(blob.bytes_mut(), cfg.seed, cores.len().max(1));
    }

    let ring_phase = ring_phase(cfg, &plan, &blob, &cores, progress)?;
    let interrupted = ring_phase.interrupted;

    progress("verifying the whole blob");
    let t = Instant::now();
    let applied_op = if cfg.pcpu { cfg.pcpu_op } else { Transform::Id };
    // Safety: every consumer process has been reaped; this process is the blob's only user.
    let blob_bytes = unsafe { blob.bytes() };
    let verify = verify_blob(
        blob_bytes,
        &plan.layout,
        &ring_phase.published,
        applied_op,
        cfg.imm,
        cores.len().max(1),
    );
    let verify_secs = t.elapsed().as_secs_f64();

    let descs: u64 = ring_phase.workers.iter().map(|w| w.descs).sum();
    let published: u64 = ring_phase.published.iter().sum();
    let invalid: u64 = ring_phase.workers.iter().map(|w| w.invalid).sum();
    let skipped: u64 = ring_phase.workers.iter().map(|w| w.skipped).sum();
    let unaccounted = published.abs_diff(descs);
    let verify_ok = verify.ok() && unaccounted == 0 && invalid == 0 && skipped == 0;

    let (mut baseline, mut ceiling, mut memcpy) = (None, None, None);
    let memcpy_bytes = plan.blob_len.min(256 << 20);
    if !interrupted {
        (baseline, ceiling) =
            baseline_and_ceiling(cfg, &plan, blob.bytes_mut(), &cores, "after", progress);
        if !proc::stop_requested() {
            progress("memcpy");
            memcpy = Some(memcpy_mbps(
                &blob.bytes_mut()[..memcpy_bytes as usize],
                cfg.memcpy_secs,
                cores.first().copied(),
            ));
        }
    }
    let interrupted = interrupted || proc::stop_requested();
    let baseline = LoopReport::combine(base_pre, baseline);
    let ceiling = LoopReport::combine(ceil_pre, ceiling);

    let bytes: u64 = ring_phase.workers.iter().map(|w| w.bytes).sum();
    let frames: u64 = ring_phase.workers.iter().map(|w| w.frames).sum();
    let secs = ring_phase.secs.max(1e-9);
    let aggregate_mbps = bytes as f64 / secs / 1e6;
    let ratio = |l: &Option<LoopReport>| {
        l.as_ref()
            .filter(|l| l.mbps > 0.0)
            .map(|l| aggregate_mbps / l.mbps)
    };
    let consumer_cpu: f64 = ring_phase.workers.iter().map(|w| w.cpu_secs).sum();
    let consumer_wall: f64 = ring_phase.workers.iter().map(|w| w.secs).sum();
    let ring_cpu = consumer_cpu + ring_phase.producer.cpu_secs;
    let ring_mb_per_cpu_s = if ring_cpu > 0.0 {
        bytes as f64 / ring_cpu / 1e6
    } else {
        0.0
    };
    let consumer_cpu_share = if consumer_wall > 0.0 {
        consumer_cpu / consumer_wall
    } else {
        0.0
    };
    if consumer_cpu_share < 0.9 && !interrupted {
        notes.push(format!(
            "the consumers were on a CPU only {:.0}% of their wall time (load average {loadavg_start:.2} at the start): other processes took the rest, so the wall-clock figures understate; the per-CPU-second figures do not depend on it",
            100.0 * consumer_cpu_share
        ));
    }
    let cpu_efficiency = ceiling
        .as_ref()
        .filter(|c| c.mb_per_cpu_s > 0.0)
        .map(|c| ring_mb_per_cpu_s / c.mb_per_cpu_s);
    Ok(ShmReport {
        config: cfg.clone(),
        blob_bytes: plan.blob_len,
        backing,
        rings: plan.rings,
        ring_slots: plan.slots,
        ring_bytes: plan.ring_bytes,
        procs: plan.procs,
        stride: plan.layout.stride,
        slots_per_shard: plan.layout.slots,
        notes,
        interrupted,
        ring_secs: ring_phase.secs,
        ring_bytes_applied: bytes,
        ring_descs: descs,
        ring_frames: frames,
        aggregate_mbps,
        descs_per_sec: descs as f64 / secs,
        consumers: ring_phase.workers,
        producer: ring_phase.producer,
        verify,
        verify_ok,
        unaccounted_descs: unaccounted,
        verify_secs,
        cpupwn: ratio(&baseline),
        ring_efficiency: ratio(&ceiling),
        baseline,
        ceiling,
        memcpy_mbps: memcpy,
        memcpy_bytes,
        ring_mb_per_cpu_s,
        cpu_efficiency,
        consumer_cpu_share,
        loadavg_start,
    })
}

/// The blob, on hugetlb pages if asked for or available, else on normal pages.
fn alloc_blob(
    cfg: &ShmConfig,
    plan: &Plan,
    facts: &MemFacts,
    notes: &mut Vec<String>,
) -> Result<SharedRegion, BenchError> {
    let len = plan.blob_len as usize;
    let need = plan.huge_pages_needed;
    match cfg.hugepages {
        HugePages::Off => Ok(SharedRegion::normal("pfs-shm-blob", len, false)?),
        HugePages::On => Ok(SharedRegion::hugetlb("pfs-shm-blob", len)?),
        HugePages::Auto => {
            let why = if facts.hugepages_free >= need {
                match SharedRegion::hugetlb("pfs-shm-blob", len) {
                    Ok(r) => return Ok(r),
                    Err(e) => e.to_string(),
                }
            } else {
                format!(
                    "{} free 2 MiB hugetlb pages, the blob needs {need}",
                    facts.hugepages_free
                )
            };
            let r = SharedRegion::normal("pfs-shm-blob", len, true)?;
            notes.push(format!(
                "hugepages auto: {why}; fell back to {} (reserve: echo {need} > /proc/sys/vm/nr_hugepages)",
                r.backing().describe()
            ));
            Ok(r)
        }
    }
}

/// Write the seeded initial contents, `threads` threads at once.
fn fill_blob(blob: &mut [u8], seed: u64, threads: usize) {
    let chunk = blob.len().div_ceil(threads).next_multiple_of(8).max(8);
    std::thread::scope(|s| {
        for (i, c) in blob.chunks_mut(chunk).enumerate() {
            s.spawn(move || init_into(seed, (i * chunk) as u64, c));
        }
    });
}

struct RingPhase {
    interrupted: bool,
    secs: f64,
    published: Vec<u64>,
    workers: Vec<ConsumerReport>,
    producer: ProducerReport,
}

/// Rings owned by worker `w`.
fn rings_of(w: u32, threads: u32, rings: u32) -> Vec<u32> {
    (w..rings).step_by(threads as usize).collect()
}

fn ring_phase(
    cfg: &ShmConfig,
    plan: &Plan,
    blob: &SharedRegion,
    cores: &[core_affinity::CoreId],
    progress: &mut dyn FnMut(&str),
) -> Result<RingPhase, BenchError> {
    let threads = cfg.threads;
    let ctl_bytes = (std::mem::size_of::<Control>()
        + threads as usize * std::mem::size_of::<WorkerStats>())
    .next_multiple_of(128);
    let ring_bytes = plan.ring_bytes as usize;
    let mut region = SharedRegion::normal(
        "pfs-shm-rings",
        ctl_bytes + plan.rings as usize * ring_bytes,
        false,
    )?;
    let mem = region.bytes_mut();
    mem.fill(0); // fault every page in now, not during the run
    let (head, rest) = mem.split_at_mut(ctl_bytes);
    // Safety: `head` is exclusively borrowed, 128-aligned (page-aligned mapping), zeroed, and
    // large enough for the control block and `threads` stats blocks; all-zero bytes are valid
    // atomics. The references live no longer than the borrow of `region`.
    let (control, stats) = unsafe {
        let control = &*head.as_ptr().cast::<Control>();
        let stats = std::slice::from_raw_parts(
            head.as_ptr()
                .add(std::mem::size_of::<Control>())
                .cast::<WorkerStats>(),
            threads as usize,
        );
        (control, stats)
    };
    let rings: Vec<RingRef<'_, Desc>> = rest
        .chunks_exact_mut(ring_bytes)
        .map(|m| RingRef::init(m, cfg.ring_pow2))
        .collect::<Result<_, _>>()?;
    let blob_ptr = BlobPtr(blob.as_ptr());

    progress(&format!(
        "ring phase: {} consumers in {} processes, {} rings of {} slots, {:.1} s",
        threads, plan.procs, plan.rings, plan.slots, cfg.duration
    ));
    let mut children = Children::new();
    for p in 0..plan.procs {
        let workers: Vec<u32> = (p..threads).step_by(plan.procs as usize).collect();
        let rings = &rings;
        // Safety: this process is single-threaded here (the fill threads were joined), so the
        // child may allocate; it touches only shared memory and its own copies.
        let pid = unsafe {
            proc::fork_child(|| {
                consumer_process(cfg, plan, &workers, rings, blob_ptr, control, stats, cores)
            })
        }?;
        children.push(pid);
    }

    // Wait until every worker is pinned and holds its rings.
    let mut interrupted = false;
    while control.ready.0.load(Ordering::Acquire) < threads {
        if let Some((pid, exit)) = children.try_reap().into_iter().next() {
            control.done.0.store(1, Ordering::Release);
            return Err(BenchError::ChildDied {
                pid,
                exit: exit.to_string(),
            });
        }
        if proc::stop_requested() {
            interrupted = true;
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }

    let t0 = proc::mono_ns();
    let cpu0 = proc::process_cpu_ns();
    let produced = if interrupted {
        Ok(ProducerReport {
            frames: 0,
            descs: 0,
            full_stalls: 0,
            ring_frames: vec![0; plan.rings as usize],
            cpu_secs: 0.0,
        })
    } else {
        produce(cfg, plan, &rings, &mut children, t0)
    };
    control.done.0.store(1, Ordering::Release);
    let mut producer = produced?;
    producer.cpu_secs = (proc::process_cpu_ns() - cpu0) as f64 / 1e9;
    interrupted |= proc::stop_requested();
    progress("draining the rings");

    // Drain time: the rings' contents at a pessimistic 200 MB/s, at least 30 s.
    let drain = Duration::from_secs_f64(
        (30.0f64).max(plan.rings as f64 * plan.slots as f64 * cfg.seg_len as f64 / 200e6),
    );
    let exits = children.wait_all(drain);
    if let Some((pid, exit)) = exits.iter().find(|(_, e)| !e.success()) {
        return Err(BenchError::ChildDied {
            pid: *pid,
            exit: exit.to_string(),
        });
    }

    let mut end = t0;
    let workers: Vec<ConsumerReport> = stats
        .iter()
        .enumerate()
        .map(|(w, s)| {
            let start = s.start_ns.load(Ordering::Acquire);
            let stop = s.end_ns.load(Ordering::Acquire);
            end = end.max(stop);
            let secs = stop.saturating_sub(start.max(t0)) as f64 / 1e9;
            let bytes = s.bytes.load(Ordering::Acquire);
            let core = s.core.load(Ordering::Acquire);
            ConsumerReport {
                worker: w as u32,
                pid: s.pid.load(Ordering::Acquire) as u32,
                core: (core > 0).then(|| core as usize - 1),
                rings: rings_of(w as u32, threads, plan.rings),
                descs: s.descs.load(Ordering::Acquire),
                frames: s.frames.load(Ordering::Acquire),
                bytes,
                empty_stalls: s.empty_stalls.load(Ordering::Acquire),
                invalid: s.invalid.load(Ordering::Acquire),
                skipped: s.skipped.load(Ordering::Acquire),
                secs,
                cpu_secs: s.cpu_ns.load(Ordering::Acquire) as f64 / 1e9,
                mbps: if secs > 0.0 {
                    bytes as f64 / secs / 1e6
                } else {
                    0.0
                },
            }
        })
        .collect();
    Ok(RingPhase {
        interrupted,
        secs: end.saturating_sub(t0) as f64 / 1e9,
        published: rings.iter().map(|r| r.published()).collect(),
        workers,
        producer,
    })
}

/// The body of a consumer process: its workers, one thread each (inline if only one).
#[allow(clippy::too_many_arguments)]
fn consumer_process(
    cfg: &ShmConfig,
    plan: &Plan,
    workers: &[u32],
    rings: &[RingRef<'_, Desc>],
    blob: BlobPtr,
    control: &Control,
    stats: &[WorkerStats],
    cores: &[core_affinity::CoreId],
) -> i32 {
    let run = |w: u32| {
        consume_worker(
            cfg,
            plan,
            w,
            rings,
            blob,
            control,
            &stats[w as usize],
            cores,
        )
    };
    if let [w] = workers {
        return run(*w);
    }
    std::thread::scope(|s| {
        let hs: Vec<_> = workers.iter().map(|&w| s.spawn(move || run(w))).collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or(proc::EXIT_PANIC))
            .max()
            .unwrap_or(0)
    })
}

/// One consumer worker: drain its rings, applying every descriptor, until `done` and empty.
#[allow(clippy::too_many_arguments)]
fn consume_worker(
    cfg: &ShmConfig,
    plan: &Plan,
    w: u32,
    rings: &[RingRef<'_, Desc>],
    blob: BlobPtr,
    control: &Control,
    stats: &WorkerStats,
    cores: &[core_affinity::CoreId],
) -> i32 {
    let core = (!cores.is_empty()).then(|| cores[w as usize % cores.len()]);
    if let Some(c) = core {
        if core_affinity::set_for_current(c) {
            stats.core.store(c.id as u64 + 1, Ordering::Relaxed);
        }
    }
    let layout = plan.layout;
    let mut mine = Vec::new();
    for r in rings_of(w, cfg.threads, plan.rings) {
        let Some(c) = rings[r as usize].take_consumer() else {
            return 3;
        };
        let lo = layout.shard_base(r);
        mine.push((c, Decoder::new(), lo, lo + layout.shard_len));
    }
    // Safety: getpid has no preconditions.
    stats
        .pid
        .store(unsafe { libc::getpid() } as u64, Ordering::Relaxed);
    control.ready.0.fetch_add(1, Ordering::AcqRel);

    let dpf = cfg.dpf as usize;
    let batch = batch_descs(dpf);
    let skip = if w == 0 { cfg.skip_desc } else { None };
    let pcpu = cfg.pcpu;
    let (mut descs, mut bytes, mut invalid, mut skipped, mut stalls) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut had_work = false;
    let mut idle_spins = 0u32;
    let cpu0 = proc::thread_cpu_ns();
    stats.start_ns.store(proc::mono_ns(), Ordering::Relaxed);
    loop {
        let mut got = 0;
        for (cons, dec, lo, hi) in mine.iter_mut() {
            let (lo, hi) = (*lo, *hi);
            got += cons.consume_frames(dpf, batch, |d| {
                match dec.decode(d) {
                    Ok(s) if s.offset >= lo && s.offset + s.len as u64 <= hi => {
                        if skip == Some(descs) {
                            skipped += 1;
                        } else if pcpu {
                            // Safety: the span lies inside this ring's shard (checked just
                            // above), inside the blob mapping; only this worker, the ring's
                            // one claimed consumer, writes that shard during the ring phase,
                            // and the parent does not touch the blob until it has reaped us.
                            let span = unsafe {
                                std::slice::from_raw_parts_mut(
                                    blob.0.add(s.offset as usize),
                                    s.len as usize,
                                )
                            };
                            transform_in_place(s.op, s.imm, span);
                            bytes += s.len as u64;
                        }
                    }
                    _ => invalid += 1,
                }
                descs += 1;
            });
        }
        if got > 0 {
            had_work = true;
            idle_spins = 0;
            continue;
        }
        if had_work && idle_spins == 0 {
            stalls += 1;
        }
        if control.done.0.load(Ordering::Acquire) != 0
            && mine.iter_mut().all(|(c, ..)| c.available() == 0)
        {
            break;
        }
        idle_spins = idle_spins.wrapping_add(1);
        if idle_spins.is_multiple_of(64) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    stats.end_ns.store(proc::mono_ns(), Ordering::Relaxed);
    stats
        .cpu_ns
        .store(proc::thread_cpu_ns() - cpu0, Ordering::Relaxed);
    stats.descs.store(descs, Ordering::Relaxed);
    stats.frames.store(descs / dpf as u64, Ordering::Relaxed);
    stats.bytes.store(bytes, Ordering::Relaxed);
    stats.invalid.store(invalid, Ordering::Relaxed);
    stats.skipped.store(skipped, Ordering::Relaxed);
    stats.empty_stalls.store(stalls, Ordering::Release);
    0
}

/// Descriptors a consumer takes from one ring at a time (whole frames, about 512).
fn batch_descs(dpf: usize) -> usize {
    dpf * (512 / dpf).max(1)
}

/// The producer's state for one ring: its span stream, encoder, and the next frame's spans
/// (generated a frame at a time, kept until the frame fits).
struct Feed {
    stream: SpanStream,
    enc: Encoder,
    slots: Vec<u64>,
    spans: Vec<(u64, u32)>,
    pending: bool,
}

impl Feed {
    fn new(stream: SpanStream, arith: bool, dpf: usize) -> Self {
        Feed {
            stream,
            enc: Encoder::new(arith),
            slots: vec![0; dpf],
            spans: vec![(0, 0); dpf],
            pending: false,
        }
    }

    /// Encode and publish the next frame, if it fits.
    #[inline]
    fn publish_frame(&mut self, p: &mut Producer<'_, Desc>, op: Transform, imm: u8) -> bool {
        if !self.pending {
            self.stream.fill_spans(&mut self.slots, &mut self.spans);
            self.pending = true;
        }
        let (spans, enc) = (&self.spans, &mut self.enc);
        let ok = p.try_publish_with(spans.len(), |i| {
            let (offset, len) = spans[i];
            enc.encode(
                Span {
                    offset,
                    len,
                    op,
                    imm,
                },
                i == 0,
            )
        });
        self.pending = !ok;
        ok
    }
}

/// The producer loop (this process), until the deadline or a stop signal.
fn produce(
    cfg: &ShmConfig,
    plan: &Plan,
    rings: &[RingRef<'_, Desc>],
    children: &mut Children,
    t0: u64,
) -> Result<ProducerReport, BenchError> {
    if let Some(c) = cfg.producer_core {
        core_affinity::set_for_current(core_affinity::CoreId { id: c });
    }
    let n = rings.len();
    let mut prods: Vec<Producer<'_, Desc>> = rings
        .iter()
        .map(|r| r.take_producer().ok_or(BenchError::Start))
        .collect::<Result<_, _>>()?;
    if cfg.producers > 1 {
        return produce_split(cfg, plan, prods, children, t0);
    }
    let dpf = cfg.dpf as usize;
    let mut feeds: Vec<Feed> = (0..n as u32)
        .map(|r| Feed::new(plan.layout.stream(r), cfg.arith, dpf))
        .collect();
    let mut ring_frames = vec![0u64; n];
    let (op, imm) = (cfg.pcpu_op, cfg.imm);
    let deadline = t0 + (cfg.duration * 1e9) as u64;
    let pause = producer_pause(cfg, plan);
    // Scatter: after a round that published less than a quarter ring in total, sleep.
    let quantum = ((plan.slots as usize / 4) / dpf).max(1);
    let max_per_visit = ((plan.slots as usize / 2) / dpf).max(1);
    let mut full_stalls = 0u64;
    let mut next_check = t0;
    let mut k: u64 = 0;
    loop {
        let now = proc::mono_ns();
        if now >= deadline || proc::stop_requested() {
            break;
        }
        if now >= next_check {
            next_check = now + 50_000_000;
            if let Some((pid, exit)) = children.try_reap().into_iter().next() {
                return Err(BenchError::ChildDied {
                    pid,
                    exit: exit.to_string(),
                });
            }
        }
        match cfg.mode {
            Mode::Scatter => {
                let rings = prods
                    .iter_mut()
                    .zip(feeds.iter_mut())
                    .zip(ring_frames.iter_mut());
                let round =
                    scatter_round(rings.map(|((p, f), c)| (p, f, c)), max_per_visit, op, imm);
                if round == 0 {
                    full_stalls += 1;
                }
                if round < quantum {
                    std::thread::sleep(pause);
                }
            }
            Mode::Queues | Mode::Ports => {
                // Publish frames in the mode's fixed order until the target ring is full.
                for _ in 0..64 {
                    let r = match cfg.mode {
                        Mode::Queues => (k % n as u64) as usize,
                        _ => {
                            let port = k % cfg.ports as u64;
                            let flow = mix64(cfg.seed ^ (port << 32) ^ (k / cfg.ports as u64));
                            (port * cfg.queues as u64 + flow % cfg.queues as u64) as usize
                        }
                    };
                    if feeds[r].publish_frame(&mut prods[r], op, imm) {
                        ring_frames[r] += 1;
                        k += 1;
                    } else {
                        full_stalls += 1;
                        std::thread::sleep(pause);
                        break;
                    }
                }
            }
        }
    }
    let frames: u64 = ring_frames.iter().sum();
    Ok(ProducerReport {
        frames,
        descs: frames * dpf as u64,
        full_stalls,
        ring_frames,
        cpu_secs: 0.0,
    })
}

/// One scatter round: up to `max_per_visit` frames into each ring in turn, each ring's
/// count advanced; returns the frames published.
fn scatter_round<'a, 'r: 'a>(
    rings: impl Iterator<Item = (&'a mut Producer<'r, Desc>, &'a mut Feed, &'a mut u64)>,
    max_per_visit: usize,
    op: Transform,
    imm: u8,
) -> usize {
    let mut round = 0;
    for (p, feed, count) in rings {
        let mut f = 0;
        while f < max_per_visit && feed.publish_frame(p, op, imm) {
            f += 1;
        }
        *count += f as u64;
        round += f;
    }
    round
}

/// How long a producer sleeps when its rings are full: long enough for consumers to free a
/// useful share of a ring, short enough that the rings never run dry: an eighth of one
/// ring's work at 4 GB/s (1 ns a descriptor when consumers only drain), within 50 us..5 ms.
fn producer_pause(cfg: &ShmConfig, plan: &Plan) -> Duration {
    let per_desc_ns = if cfg.pcpu {
        cfg.seg_len as f64 / 4.0
    } else {
        1.0
    };
    Duration::from_nanos(((plan.slots as f64 * per_desc_ns / 8.0) as u64).clamp(50_000, 5_000_000))
}

/// Scatter mode with `cfg.producers` producer threads: producer `p` owns rings
/// `p, p + P, ...` (their producer ends and span streams) and runs the same scatter loop
/// over them; this thread watches the consumers and the deadline.
fn produce_split(
    cfg: &ShmConfig,
    plan: &Plan,
    prods: Vec<Producer<'_, Desc>>,
    children: &mut Children,
    t0: u64,
) -> Result<ProducerReport, BenchError> {
    let n = prods.len();
    let np = (cfg.producers as usize).min(n);
    let dpf = cfg.dpf as usize;
    let deadline = t0 + (cfg.duration * 1e9) as u64;
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Each producer's rings: (ring index, producer end, feed).
    let mut owned: Vec<Vec<(usize, Producer<'_, Desc>, Feed)>> =
        (0..np).map(|_| Vec::new()).collect();
    for (r, p) in prods.into_iter().enumerate() {
        let feed = Feed::new(plan.layout.stream(r as u32), cfg.arith, dpf);
        owned[r % np].push((r, p, feed));
    }
    let pause = producer_pause(cfg, plan);
    let max_per_visit = ((plan.slots as usize / 2) / dpf).max(1);
    let (op, imm) = (cfg.pcpu_op, cfg.imm);
    let mut ring_frames = vec![0u64; n];
    let mut full_stalls = 0u64;
    let mut died = None;
    std::thread::scope(|sc| {
        let handles: Vec<_> = owned
            .into_iter()
            .enumerate()
            .map(|(i, mut mine)| {
                let stop = &stop;
                let core = cfg.producer_core.map(|c| c + i);
                sc.spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(core_affinity::CoreId { id: c });
                    }
                    // A quarter of this producer's rings' slots per round, as in produce().
                    let quantum = ((plan.slots as usize / 4) / dpf).max(1);
                    let mut frames = vec![0u64; mine.len()];
                    let mut stalls = 0u64;
                    while proc::mono_ns() < deadline
                        && !stop.load(Ordering::Relaxed)
                        && !proc::stop_requested()
                    {
                        let rings = mine.iter_mut().zip(frames.iter_mut());
                        let round = scatter_round(
                            rings.map(|((_, p, feed), c)| (p, feed, c)),
                            max_per_visit,
                            op,
                            imm,
                        );
                        if round == 0 {
                            stalls += 1;
                        }
                        if round < quantum {
                            std::thread::sleep(pause);
                        }
                    }
                    let rs: Vec<usize> = mine.iter().map(|m| m.0).collect();
                    (rs, frames, stalls)
                })
            })
            .collect();
        while !handles.iter().all(|h| h.is_finished()) {
            if let Some(d) = children.try_reap().into_iter().next() {
                died = Some(d);
                stop.store(true, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for h in handles {
            let (rs, frames, stalls) = h.join().expect("a producer thread panicked");
            for (r, f) in rs.into_iter().zip(frames) {
                ring_frames[r] += f;
            }
            full_stalls += stalls;
        }
    });
    if let Some((pid, exit)) = died {
        return Err(BenchError::ChildDied {
            pid,
            exit: exit.to_string(),
        });
    }
    let frames: u64 = ring_frames.iter().sum();
    Ok(ProducerReport {
        frames,
        descs: frames * dpf as u64,
        full_stalls,
        ring_frames,
        cpu_secs: 0.0,
    })
}

/// The baseline (tight loop on one core) then the ceiling (on `cfg.threads` cores at once),
/// each unless a stop was requested; `when` says where they stand against the ring phase.
fn baseline_and_ceiling(
    cfg: &ShmConfig,
    plan: &Plan,
    blob: &mut [u8],
    cores: &[core_affinity::CoreId],
    when: &str,
    progress: &mut dyn FnMut(&str),
) -> (Option<LoopReport>, Option<LoopReport>) {
    let (mut baseline, mut ceiling) = (None, None);
    if !proc::stop_requested() {
        progress(&format!(
            "baseline, {when} the ring phase: tight loop on one core"
        ));
        baseline = Some(tight_loops(cfg, plan, blob, cores, 1));
    }
    if !proc::stop_requested() {
        progress(&format!(
            "ceiling, {when} the ring phase: tight loop on {} cores at once",
            cfg.threads
        ));
        ceiling = Some(tight_loops(cfg, plan, blob, cores, cfg.threads));
    }
    (baseline, ceiling)
}

/// The tight loop on `workers` cores at once: each takes the shards of the rings it would
/// own as a consumer and, frame by frame in turn, generates `--dpf` spans of a shard's
/// stream and applies the op to each through the same kernel. Runs `--baseline-secs`.
fn tight_loops(
    cfg: &ShmConfig,
    plan: &Plan,
    blob: &mut [u8],
    cores: &[core_affinity::CoreId],
    workers: u32,
) -> LoopReport {
    let layout = plan.layout;
    let shard = layout.shard_len as usize;
    let mut per: Vec<Vec<(&mut [u8], u64, SpanStream)>> =
        (0..workers).map(|_| Vec::new()).collect();
    for (r, s) in blob.chunks_mut(shard).take(plan.rings as usize).enumerate() {
        per[r % workers as usize].push((s, layout.shard_base(r as u32), layout.stream(r as u32)));
    }
    let dpf = cfg.dpf as usize;
    let (op, imm) = (cfg.pcpu_op, cfg.imm);
    let secs = cfg.baseline_secs;
    let t = Instant::now();
    let results: Vec<(u64, u64, u64)> = std::thread::scope(|sc| {
        let hs: Vec<_> = per
            .into_iter()
            .enumerate()
            .map(|(w, mut shards)| {
                let core = (!cores.is_empty()).then(|| cores[w % cores.len()]);
                sc.spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    let deadline = Instant::now() + Duration::from_secs_f64(secs);
                    let cpu0 = proc::thread_cpu_ns();
                    let (mut bytes, mut descs) = (0u64, 0u64);
                    // Spans are generated a batch at a time, as many as a consumer takes from
                    // a ring at once, then applied: the generator's data-dependent branches
                    // stay out of the apply loop, so its loads overlap like a consumer's do.
                    let batch = batch_descs(dpf);
                    let mut slots = vec![0u64; batch];
                    let mut spans = vec![(0u64, 0u32); batch];
                    loop {
                        for _ in 0..4 {
                            for (mem, base, stream) in shards.iter_mut() {
                                stream.fill_spans(&mut slots, &mut spans);
                                for &(off, len) in &spans {
                                    let o = (off - *base) as usize;
                                    transform_in_place(op, imm, &mut mem[o..o + len as usize]);
                                    bytes += len as u64;
                                }
                                descs += batch as u64;
                            }
                        }
                        if Instant::now() >= deadline || proc::stop_requested() {
                            break;
                        }
                    }
                    (bytes, descs, proc::thread_cpu_ns() - cpu0)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("tight loop panicked"))
            .collect()
    });
    let secs = t.elapsed().as_secs_f64();
    let bytes = results.iter().map(|r| r.0).sum::<u64>();
    let cpu_secs = results.iter().map(|r| r.2).sum::<u64>() as f64 / 1e9;
    LoopReport {
        cores: workers,
        bytes,
        descs: results.iter().map(|r| r.1).sum(),
        secs,
        mbps: bytes as f64 / secs / 1e6,
        cpu_secs,
        mb_per_cpu_s: if cpu_secs > 0.0 {
            bytes as f64 / cpu_secs / 1e6
        } else {
            0.0
        },
        before_mbps: None,
        after_mbps: None,
    }
}

/// Bytes copied per second (10^6) out of `src` into a private buffer, on one core.
fn memcpy_mbps(src: &[u8], secs: f64, core: Option<core_affinity::CoreId>) -> f64 {
    let mut dst = vec![1u8; src.len()];
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(c) = core {
                core_affinity::set_for_current(c);
            }
            dst.copy_from_slice(src); // warm-up: fault in, settle
            let t = Instant::now();
            let mut copied = 0u64;
            while t.elapsed().as_secs_f64() < secs {
                dst.copy_from_slice(src);
                copied += src.len() as u64;
                std::hint::black_box(&mut dst);
            }
            copied as f64 / t.elapsed().as_secs_f64() / 1e6
        })
        .join()
        .expect("memcpy thread panicked")
    })
}
