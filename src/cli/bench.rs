//! `pfs bench ...`: benchmarks that print their figures and append them to the metrics log.

use clap::{Args, Subcommand, ValueEnum};
use packetfs::blueprint::Transform;
use packetfs::shm::{self, HugePages, Mode, ShmConfig, ShmReport};
use packetfs::util::human_bytes;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// The multi-core shared-memory descriptor ring benchmark (CPUpwn, honestly measured).
    ///
    /// A producer (this process) publishes frames of span descriptors into lock-free rings
    /// in shared memory; one consumer per core (one process each by default), pinned, applies
    /// the op to each span of a shared blob with the apply kernels. Then, in the same run:
    /// the whole blob is verified against an independently computed expectation, the same
    /// spans go through the same kernel in a tight loop on one core (the baseline) and on
    /// every consumer core at once (the ceiling), and memcpy is measured.
    ///
    /// CPUpwn = ring aggregate MB/s / single-core baseline MB/s, exactly that; the ring
    /// efficiency = ring aggregate / ceiling. See docs/shm-bench.md.
    ///
    /// Exit status: 0 ok, 1 verification failed or error, 2 bad flags, 130 interrupted.
    Shm(ShmArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ModeArg {
    /// Frames go to whichever ring has room (one stream spread over every queue).
    Scatter,
    /// Strict round robin over the rings; the producer waits on a full ring.
    Queues,
    /// One flow per port, spread over the port's queues by a flow hash; waits on a full ring.
    Ports,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum OpArg {
    /// Leave bytes as they are (the span is still visited).
    Id,
    /// XOR each byte with --imm.
    Xor,
    /// Add --imm to each byte, mod 256.
    Add,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum HugeArg {
    /// hugetlb 2 MiB pages if enough are free, else 4 KiB pages + MADV_HUGEPAGE (printed).
    Auto,
    /// hugetlb 2 MiB pages or an error (reserve them in /proc/sys/vm/nr_hugepages).
    On,
    /// Normal 4 KiB pages, no MADV_HUGEPAGE.
    Off,
}

#[derive(Args, Debug)]
pub struct ShmArgs {
    /// Size of the shared blob the consumers work on, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub blob_mb: u64,
    /// Descriptors per frame: the producer publishes, and consumers take, whole frames.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub dpf: u32,
    /// Each ring has 2^N descriptor slots (16 bytes each), 1..=30.
    #[arg(long, value_name = "N", default_value_t = 19)]
    pub ring_pow2: u32,
    /// Span offsets are multiples of this many bytes (a power of two); spans sit on a grid
    /// of the span length rounded up to it.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    pub align: u64,
    /// Seconds the producer publishes in the ring phase (then the rings are drained).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub duration: f64,
    /// Consumer workers, each pinned to its own core [default: the cores available].
    #[arg(long, value_name = "N")]
    pub threads: Option<u32>,
    /// Consumer processes the workers are spread over [default: one per worker when there
    /// is more than one].
    #[arg(long, value_name = "N")]
    pub procs: Option<u32>,
    /// 1: arithmetic descriptors: each offset is coded relative to the previous one in its
    /// frame (the first is absolute); 0: every offset absolute.
    #[arg(long, value_name = "0|1", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub arith: u8,
    /// 1: variable-length spans, each between seg-len/2 and 3*seg-len/2 bytes; 0: every
    /// span exactly --seg-len bytes.
    #[arg(long, value_name = "0|1", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub vstream: u8,
    /// Ports; the rings are ports x queues, ring r served by consumer r % threads.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub ports: u32,
    /// Queues (rings) per port [default: --threads].
    #[arg(long, value_name = "N")]
    pub queues: Option<u32>,
    /// How the producer spreads frames over the rings.
    #[arg(long, value_enum, default_value_t = ModeArg::Scatter)]
    pub mode: ModeArg,
    /// Span length in bytes (the mean with --vstream 1).
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    pub seg_len: u32,
    /// 1: consumers apply --pcpu-op to every span (the per-CPU work); 0: they only drain
    /// descriptors, measuring the ring alone (the blob must stay unchanged).
    #[arg(long, value_name = "0|1", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub pcpu: u8,
    /// The op applied to each span, from the blueprint's transforms.
    #[arg(long, value_enum, default_value_t = OpArg::Xor)]
    pub pcpu_op: OpArg,
    /// The op's immediate byte, 0..=255.
    #[arg(long, value_name = "BYTE", default_value_t = 255)]
    pub imm: u8,
    /// Pages backing the blob.
    #[arg(long, value_enum, default_value_t = HugeArg::Auto)]
    pub hugepages: HugeArg,
    /// Seed of the blob's contents and of the span streams.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds of each tight-loop run: the one-core baseline and the all-cores ceiling each
    /// run once before and once after the ring phase.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub baseline_secs: f64,
    /// Seconds of the memcpy phase.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub memcpy_secs: f64,
    /// Pin the producer (this process) to this core [default: not pinned].
    #[arg(long, value_name = "CORE")]
    pub producer_core: Option<usize>,
    /// Producer threads (scatter mode): ring r is fed by producer r % N, for when one
    /// producer cannot keep every consumer busy; with --producer-core C, producer i runs on
    /// core C + i.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub producers: u32,
    /// Append the run's figures as one JSON line to this file.
    #[arg(long, value_name = "PATH", default_value = packetfs::metrics::DEFAULT_LOG)]
    pub metrics: PathBuf,
    /// Do not append to the metrics log.
    #[arg(long)]
    pub no_metrics: bool,
    /// Print the report as one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Testing only: consumer 0 skips applying its N-th descriptor (the check must fail).
    #[arg(long, value_name = "N", hide = true)]
    pub fault_skip_desc: Option<u64>,
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCmd::Shm(a) => run_shm(a),
    }
}

impl ShmArgs {
    fn config(&self) -> ShmConfig {
        let cores = core_affinity::get_core_ids().map_or(1, |c| c.len().max(1)) as u32;
        let threads = self.threads.unwrap_or(cores);
        ShmConfig {
            blob_mb: self.blob_mb,
            dpf: self.dpf,
            ring_pow2: self.ring_pow2,
            align: self.align,
            duration: self.duration,
            threads,
            procs: self.procs,
            arith: self.arith == 1,
            vstream: self.vstream == 1,
            ports: self.ports,
            queues: self.queues.unwrap_or(threads),
            mode: match self.mode {
                ModeArg::Scatter => Mode::Scatter,
                ModeArg::Queues => Mode::Queues,
                ModeArg::Ports => Mode::Ports,
            },
            seg_len: self.seg_len,
            pcpu: self.pcpu == 1,
            pcpu_op: match self.pcpu_op {
                OpArg::Id => Transform::Id,
                OpArg::Xor => Transform::Xor,
                OpArg::Add => Transform::Add,
            },
            imm: self.imm,
            hugepages: match self.hugepages {
                HugeArg::Auto => HugePages::Auto,
                HugeArg::On => HugePages::On,
                HugeArg::Off => HugePages::Off,
            },
            seed: self.seed,
            baseline_secs: self.baseline_secs,
            memcpy_secs: self.memcpy_secs,
            producer_core: self.producer_core,
            producers: self.producers,
            skip_desc: self.fault_skip_desc,
        }
    }
}

fn run_shm(a: ShmArgs) -> anyhow::Result<ExitCode> {
    let cfg = a.config();
    let quiet = a.json;
    let mut progress = |m: &str| {
        if !quiet {
            eprintln!("pfs bench shm: {m}");
        }
    };
    let report = match shm::run(&cfg, &mut progress) {
        Ok(r) => r,
        Err(shm::bench::BenchError::Config(e)) => {
            eprintln!("pfs: error: {e}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    if !a.no_metrics {
        let mut v = serde_json::to_value(&report)?;
        v["bench"] = "shm".into();
        v["unix_time"] = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .into();
        packetfs::metrics::append(&a.metrics, &v)
            .map_err(|e| anyhow::anyhow!("appending to {}: {e}", a.metrics.display()))?;
        if !a.json {
            println!("metrics: appended to {}", a.metrics.display());
        }
    }
    if !report.passed() {
        eprintln!("pfs: error: proof of work FAILED: the blob does not match what the published descriptors must have produced");
        return Ok(ExitCode::FAILURE);
    }
    if report.interrupted {
        eprintln!("pfs: interrupted: figures above cover the part that ran");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

fn plural(n: u64, suffix: &str) -> &str {
    if n == 1 {
        ""
    } else {
        suffix
    }
}

fn mbps(v: f64) -> String {
    format!("{v:.1} MB/s")
}

fn print_report(r: &ShmReport) {
    let c = &r.config;
    println!(
        "shm bench: blob {} ({}), {} ring{} x {} slots ({} each), dpf {}, {} consumer{} in {} process{}",
        human_bytes(r.blob_bytes),
        r.backing,
        r.rings,
        plural(r.rings as u64, "s"),
        r.ring_slots,
        human_bytes(r.ring_bytes),
        c.dpf,
        c.threads,
        plural(c.threads as u64, "s"),
        r.procs,
        plural(r.procs as u64, "es")
    );
    println!(
        "  work: {} {} imm {} over {} spans (align {}, slot {} B, {} slots per ring shard), mode {}, arith {}, vstream {}, pcpu {}",
        if c.pcpu { "apply" } else { "drain only, no" },
        c.pcpu_op.name(),
        c.imm,
        if c.vstream {
            format!("{}..{} B", c.seg_len / 2, c.seg_len + c.seg_len / 2)
        } else {
            format!("{} B", c.seg_len)
        },
        c.align,
        r.stride,
        r.slots_per_shard,
        c.mode.name(),
        c.arith as u8,
        c.vstream as u8,
        c.pcpu as u8
    );
    for n in &r.notes {
        println!("  note: {n}");
    }
    println!(
        "ring phase: {:.3} s, aggregate {}, {:.2} M desc/s, {} frames, {} descriptors",
        r.ring_secs,
        mbps(r.aggregate_mbps),
        r.descs_per_sec / 1e6,
        r.ring_frames,
        r.ring_descs
    );
    for w in &r.consumers {
        println!(
            "  consumer {} (pid {}, core {}, rings {:?}): {}, {} desc, {} frames, {} empty stalls, busy cpu {:.2} s of {:.2} s",
            w.worker,
            w.pid,
            w.core.map_or("-".to_string(), |c| c.to_string()),
            w.rings,
            mbps(w.mbps),
            w.descs,
            w.frames,
            w.empty_stalls,
            w.cpu_secs,
            w.secs
        );
    }
    println!(
        "  producer: {} frames ({} per ring {:?}), {} full stalls, cpu {:.3} s ({:.1}% of one core)",
        r.producer.frames,
        r.producer.descs,
        r.producer.ring_frames,
        r.producer.full_stalls,
        r.producer.cpu_secs,
        100.0 * r.producer.cpu_secs / r.ring_secs.max(1e-9)
    );
    let v = &r.verify;
    println!(
        "verify: {} ({} bytes checked, {} spans accounted for, {} bad slots{}, {} descriptors unaccounted, {:.2} s)",
        if r.verify_ok { "OK" } else { "FAILED" },
        v.bytes_checked,
        v.spans_expected,
        v.bad_slots,
        v.first_bad
            .map(|o| format!(", first at offset {o}"))
            .unwrap_or_default(),
        r.unaccounted_descs,
        r.verify_secs
    );
    let show = |name: &str, l: &Option<packetfs::shm::bench::LoopReport>| {
        match l {
        Some(l) => println!(
            "{name}: {} on {} core{} ({:.2} s, {:.2} M desc/s; {:.1} MB per CPU-second; before the ring phase {}, after {})",
            mbps(l.mbps),
            l.cores,
            plural(l.cores as u64, "s"),
            l.secs,
            l.descs as f64 / l.secs / 1e6,
            l.mb_per_cpu_s,
            l.before_mbps.map_or("-".into(), mbps),
            l.after_mbps.map_or("-".into(), mbps),
        ),
        None => println!("{name}: not run"),
    }
    };
    show(
        "baseline (tight loop, same op/spans/alignment, no ring)",
        &r.baseline,
    );
    show(
        "ceiling (tight loop on every consumer core at once)",
        &r.ceiling,
    );
    match r.memcpy_mbps {
        Some(m) => println!(
            "memcpy: {} on one core (bytes copied per second, {} buffer)",
            mbps(m),
            human_bytes(r.memcpy_bytes)
        ),
        None => println!("memcpy: not run"),
    }
    match r.cpupwn {
        Some(x) => println!("CPUpwn = ring aggregate / one-core baseline = {x:.3}"),
        None => println!("CPUpwn: not available"),
    }
    match r.ring_efficiency {
        Some(x) => println!(
            "ring efficiency = ring aggregate / ceiling = {:.1}% (goal >= 75%: {})",
            100.0 * x,
            if x >= 0.75 {
                "met".to_string()
            } else {
                format!("missed by {:.1} points", 100.0 * (0.75 - x))
            }
        ),
        None => println!("ring efficiency: not available"),
    }
    if let Some(x) = r.cpu_efficiency {
        println!(
            "per CPU-second: ring {:.1} MB (consumers + producer CPU) vs ceiling loop => {:.1}%; consumers were on a CPU {:.0}% of their wall time",
            r.ring_mb_per_cpu_s,
            100.0 * x,
            100.0 * r.consumer_cpu_share
        );
    }
}
