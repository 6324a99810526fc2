//! `pfs send` and `pfs recv`.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::json;

use packetfs::blueprint::pbb;
use packetfs::driver::udp::{self, RecvConfig, RecvSummary, SendConfig, SendSummary};
use packetfs::driver::xdp;
use packetfs::index::{default_specs, IndexSet};
use packetfs::plan::{self, hints::Hints, PlanConfig};
use packetfs::pob::{HugePolicy, Snapshot};
use packetfs::proto::{Event, SendFile};
use packetfs::util::human_bytes;

/// The default PacketFS UDP port (the first of the steered range).
pub const DEFAULT_PORT: u16 = 47000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// AF_XDP sockets behind the XDP steering program (needs root or CAP_NET_ADMIN/BPF).
    Xdp,
    /// Kernel UDP sockets: the same protocol for hosts without XDP or privileges.
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpThreads {
    Auto,
    Workers,
    Session,
}

impl From<packetfs::config::XdpThreads> for XdpThreads {
    fn from(t: packetfs::config::XdpThreads) -> Self {
        match t {
            packetfs::config::XdpThreads::Auto => XdpThreads::Auto,
            packetfs::config::XdpThreads::Workers => XdpThreads::Workers,
            packetfs::config::XdpThreads::Session => XdpThreads::Session,
        }
    }
}

impl From<XdpThreads> for packetfs::config::XdpThreads {
    fn from(t: XdpThreads) -> Self {
        match t {
            XdpThreads::Auto => packetfs::config::XdpThreads::Auto,
            XdpThreads::Workers => packetfs::config::XdpThreads::Workers,
            XdpThreads::Session => packetfs::config::XdpThreads::Session,
        }
    }
}

impl From<packetfs::config::Pack> for PackArg {
    fn from(p: packetfs::config::Pack) -> Self {
        match p {
            packetfs::config::Pack::Auto => PackArg::Auto,
            packetfs::config::Pack::Always => PackArg::Always,
            packetfs::config::Pack::Never => PackArg::Never,
        }
    }
}

impl From<PackArg> for packetfs::config::Pack {
    fn from(p: PackArg) -> Self {
        match p {
            PackArg::Auto => packetfs::config::Pack::Auto,
            PackArg::Always => packetfs::config::Pack::Always,
            PackArg::Never => packetfs::config::Pack::Never,
        }
    }
}

fn threads_of(t: XdpThreads) -> xdp::Threads {
    match t {
        XdpThreads::Auto => xdp::Threads::Auto,
        XdpThreads::Workers => xdp::Threads::Workers,
        XdpThreads::Session => xdp::Threads::Session,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One UDP port per flow, so NIC RSS spreads flows over queues.
    Ports,
    /// An explicit queue list (--queues), steered with ntuple rules.
    Queues,
    /// One file spread over every queue.
    Scatter,
}

/// The AF_XDP settings `pfs send` and `pfs recv` share.
#[derive(Args, Debug)]
pub struct XdpArgs {
    /// XDP attach mode: native, skb or auto (native, falling back to skb).
    #[arg(long, default_value = "auto")]
    xdp_mode: packetfs::steer::XdpMode,
    /// Pin the AF_XDP session thread to this core.
    #[arg(long)]
    cpu: Option<usize>,
    /// Who drives the AF_XDP sockets: one pinned worker thread per queue (workers), the
    /// session thread alone (session), or auto: workers when each gets a core of its own
    /// besides the session thread's (or --cpus names their cores), else the session thread.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_threads: XdpThreads,
    /// Cores for the AF_XDP workers, round-robin, e.g. 0,1 (default: every core).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
}

impl XdpArgs {
    /// Set these on an AF_XDP link.
    fn apply(&self, link: &mut xdp::XdpLink) {
        link.xdp_mode = self.xdp_mode;
        link.cpu = self.cpu;
        link.threads = threads_of(self.xdp_threads);
        link.cpus = self.cpus.clone();
    }

    /// These as `--config` keys (for [`merged_config`]).
    fn to_config(&self, c: &mut packetfs::config::PfsConfig) {
        c.xdp_mode = Some(self.xdp_mode.to_string());
        c.cpu = self.cpu;
        c.xdp_threads = Some(self.xdp_threads.into());
        c.cpus = (!self.cpus.is_empty()).then(|| self.cpus.clone());
    }

    /// Take the merged configuration's values (`path` names the file in errors).
    fn from_config(
        &mut self,
        c: &packetfs::config::PfsConfig,
        path: &std::path::Path,
    ) -> anyhow::Result<()> {
        if let Some(x) = &c.xdp_mode {
            self.xdp_mode = x
                .parse()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        self.cpu = c.cpu;
        self.xdp_threads = c.xdp_threads.map(Into::into).unwrap_or(self.xdp_threads);
        self.cpus = c.cpus.clone().unwrap_or_default();
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Files to send: planned on the fly against the snapshot, or .pbb blueprints sent as is.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Appliance config (config/pfs.toml); flags given here override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Receiver address, IP[:PORT] (default port 47000).
    #[arg(long, required_unless_present = "config")]
    dst: Option<String>,
    /// Snapshot directory (its id must match the receiver's).
    #[arg(long, required_unless_present = "config")]
    snapshot: Option<PathBuf>,
    /// Network interface to send on (AF_XDP transport).
    #[arg(long)]
    iface: Option<String>,
    /// Receiver's MAC address (AF_XDP transport; default: from the neighbour table).
    #[arg(long)]
    dst_mac: Option<String>,
    /// Transport (default: xdp when running as root with --iface and the eBPF program
    /// embedded in this build, else udp with a printed reason).
    #[arg(long, value_enum)]
    transport: Option<Transport>,
    /// How the session is spread over NIC queues (AF_XDP transport).
    #[arg(long, value_enum, default_value = "scatter")]
    mode: Mode,
    /// Queues to send on, e.g. 0,1 (`queues` mode; default: every queue).
    #[arg(long, value_delimiter = ',')]
    queues: Vec<u32>,
    /// Number of UDP ports in the range (`ports` mode: one flow per queue and port).
    #[arg(long, default_value_t = 1)]
    ports: u16,
    #[command(flatten)]
    xdp: XdpArgs,
    /// Link budget, e.g. 1gbit, 500mbit, 100MB (bytes/s); the protocol's own pacing never
    /// exceeds it.
    #[arg(long)]
    rate: Option<String>,
    /// IP MTU; frames fill it.
    #[arg(long, default_value_t = 1500)]
    mtu: usize,
    /// Metrics log (JSON lines).
    #[arg(long, default_value = packetfs::metrics::DEFAULT_LOG)]
    metrics: PathBuf,
    /// Snapshot memory: hugepages when available (auto), required (on) or not (off).
    #[arg(long, value_enum, default_value = "auto")]
    hugepages: HugePolicy,
    /// Packed transfer (blueprint blocks, zstd): per file when it pays (auto), always, or
    /// never (direct pieces only).
    #[arg(long, value_enum, default_value = "auto")]
    pack: PackArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum PackArg {
    Auto,
    Always,
    Never,
}

impl From<PackArg> for packetfs::proto::PackPolicy {
    fn from(p: PackArg) -> Self {
        match p {
            PackArg::Auto => Self::Auto,
            PackArg::Always => Self::Always,
            PackArg::Never => Self::Never,
        }
    }
}

#[derive(Args, Debug)]
pub struct RecvArgs {
    /// Appliance config (config/pfs.toml); flags given here override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Snapshot directory (its id must match the sender's).
    #[arg(long, required_unless_present = "config")]
    snapshot: Option<PathBuf>,
    /// Directory for received files (written under temporary names, renamed after BLAKE3).
    #[arg(long, required_unless_present = "config")]
    out_dir: Option<PathBuf>,
    /// Network interface to receive on (AF_XDP transport).
    #[arg(long)]
    iface: Option<String>,
    /// Address to listen on (UDP transport).
    #[arg(long, default_value = "0.0.0.0")]
    listen: IpAddr,
    /// First UDP port of the PacketFS range.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Number of ports in the range (`ports` mode: one flow per port).
    #[arg(long, default_value_t = 1)]
    ports: u16,
    /// How work is spread over NIC queues (AF_XDP transport).
    #[arg(long, value_enum, default_value = "scatter")]
    mode: Mode,
    /// Queues to bind, e.g. 0,1 (`queues` mode).
    #[arg(long, value_delimiter = ',')]
    queues: Vec<u32>,
    /// Transport (default: xdp when running as root with --iface and the eBPF program
    /// embedded in this build, else udp with a printed reason).
    #[arg(long, value_enum)]
    transport: Option<Transport>,
    #[command(flatten)]
    xdp: XdpArgs,
    /// Testing: drop this many parts per million of PacketFS frames in the XDP program.
    #[arg(long, default_value_t = 0, hide = true)]
    impair_drop_ppm: u32,
    /// Make each file durable (msync + fsync) before renaming it into place. `off` skips the
    /// disk flush (faster; a crash right after a rename may lose pages never written back).
    #[arg(long, value_enum, default_value = "on")]
    sync: super::codec::OnOff,
    /// IP MTU.
    #[arg(long, default_value_t = 1500)]
    mtu: usize,
    /// Largest file accepted, in bytes.
    #[arg(long, default_value_t = 1 << 40)]
    max_file_size: u64,
    /// Give up when no sender shows up within this many seconds (0 = wait forever).
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    /// Metrics log (JSON lines).
    #[arg(long, default_value = packetfs::metrics::DEFAULT_LOG)]
    metrics: PathBuf,
    /// Snapshot memory: hugepages when available (auto), required (on) or not (off).
    #[arg(long, value_enum, default_value = "auto")]
    hugepages: HugePolicy,
}

/// A flag set by SIGINT/SIGTERM: the loops abort cleanly (the peer is told, temp files go).
fn cancel_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&flag))
            .context("installing a signal handler")?;
    }
    Ok(flag)
}

fn parse_dst(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    bail!("--dst {s:?} is not IP or IP:PORT")
}

/// Whether any input is a `.pbb` blueprint (those are sent whole, not streamed).
fn any_pbb(files: &[PathBuf]) -> anyhow::Result<bool> {
    for f in files {
        let mut head = [0u8; 8];
        let mut h =
            std::fs::File::open(f).with_context(|| format!("cannot read {}", f.display()))?;
        let n = std::io::Read::read(&mut h, &mut head)
            .with_context(|| format!("cannot read {}", f.display()))?;
        if head[..n].starts_with(&pbb::MAGIC) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Plan (or load) each file into a blueprint against the snapshot.
fn blueprints(files: &[PathBuf], snap: &Snapshot) -> anyhow::Result<Vec<SendFile>> {
    let mut idx: Option<IndexSet> = None;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let bp = if bytes.starts_with(&pbb::MAGIC) {
            let bp = pbb::unpack(&bytes, &snap.id, snap.bytes().len() as u64)
                .with_context(|| format!("{}", f.display()))?;
            SendFile {
                name: name.trim_end_matches(".pbb").to_string(),
                // self copies stay: the sender lowers them for direct files
                blueprint: bp,
            }
        } else {
            if idx.is_none() {
                idx = Some(IndexSet::ensure(snap, &default_specs(), false)?.0);
            }
            let hints = Hints::from_elf(&bytes).unwrap_or_default();
            let t = Instant::now();
            let p = plan::plan(
                &bytes,
                snap,
                idx.as_ref().expect("set above"),
                &hints,
                &PlanConfig::default(),
            )?;
            let st = p.blueprint.stats();
            eprintln!(
                "planned {}: {} in {} segments, raw spill {} ({:.1}%), {:.0} ms",
                f.display(),
                human_bytes(bytes.len() as u64),
                st.segments,
                human_bytes(st.raw_spill),
                100.0 * st.raw_spill as f64 / bytes.len().max(1) as f64,
                t.elapsed().as_secs_f64() * 1e3
            );
            SendFile {
                name,
                blueprint: p.blueprint,
            }
        };
        out.push(bp);
    }
    Ok(out)
}

struct Bar {
    tty: bool,
    last: Instant,
    t0: Instant,
}

impl Bar {
    fn new() -> Self {
        Bar {
            tty: std::io::stderr().is_terminal(),
            last: Instant::now(),
            t0: Instant::now(),
        }
    }
    fn event(&mut self, e: &Event) {
        match e {
            Event::Accepted { files, bytes } => {
                eprintln!("receiver accepted {files} file(s), {}", human_bytes(*bytes));
                self.t0 = Instant::now();
            }
            Event::Progress { done, total } if self.tty => {
                if self.last.elapsed() < Duration::from_millis(100) && done < total {
                    return;
                }
                self.last = Instant::now();
                let w = 30usize;
                let frac = if *total == 0 {
                    1.0
                } else {
                    *done as f64 / *total as f64
                };
                let fill = (frac * w as f64) as usize;
                let rate = *done as f64 * 8.0 / self.t0.elapsed().as_secs_f64().max(1e-9) / 1e9;
                eprint!(
                    "\r[{}{}] {:5.1}% {} / {} {rate:.2} Gbit/s effective   ",
                    "#".repeat(fill),
                    " ".repeat(w - fill),
                    frac * 100.0,
                    human_bytes(*done),
                    human_bytes(*total)
                );
                let _ = std::io::stderr().flush();
                if done >= total {
                    eprintln!();
                }
            }
            Event::Aborted(f) => eprintln!("session aborted: {f}"),
            _ => {}
        }
    }
}

/// The transport to use: the one asked for, else AF_XDP when it can work here, else UDP
/// (saying why).
fn pick_transport(asked: Option<Transport>, iface: Option<&str>) -> Transport {
    if let Some(t) = asked {
        return t;
    }
    let why = if !nix::unistd::Uid::effective().is_root() {
        Some("not running as root")
    } else if !packetfs::steer::object_available() {
        Some("this build has no XDP program (run scripts/setup.sh and rebuild)")
    } else if iface.is_none() {
        Some("no --iface given")
    } else {
        None
    };
    match why {
        None => Transport::Xdp,
        Some(w) => {
            eprintln!(
                "using the kernel UDP transport: {w} (pass --transport xdp or udp to choose)"
            );
            Transport::Udp
        }
    }
}

fn spread(m: Mode) -> xdp::Spread {
    match m {
        Mode::Ports => xdp::Spread::Ports,
        Mode::Queues => xdp::Spread::Queues,
        Mode::Scatter => xdp::Spread::Scatter,
    }
}

/// One line about the AF_XDP layer for the summaries.
fn print_xdp(r: &xdp::XdpReport) {
    let t = r.xdp_totals();
    let per_q: Vec<String> = r
        .queues
        .iter()
        .map(|q| match &q.worker {
            Some(w) => format!(
                "q{} worker {} rx {} tx {} sleeps {} kicks {} tx_ring_full {}",
                q.queue,
                w.cpu.map_or("unpinned".to_string(), |c| format!("cpu{c}")),
                q.rx_frames,
                q.tx_frames,
                w.sleeps,
                w.kicks,
                w.tx_ring_full
            ),
            None => format!("q{} rx {} tx {}", q.queue, q.rx_frames, q.tx_frames),
        })
        .collect();
    println!(
        "xdp: {} ({} mode, {:?}) [{}]; steering {}; XDP_STATISTICS rx_dropped={} rx_ring_full={} rx_invalid_descs={} tx_invalid_descs={} fill_ring_empty={} tx_ring_empty={}; bad frames {}; reordered {}",
        r.iface,
        r.xdp_mode,
        r.spread,
        per_q.join(", "),
        r.steer,
        t.rx_dropped,
        t.rx_ring_full,
        t.rx_invalid_descs,
        t.tx_invalid_descs,
        t.fill_ring_empty,
        t.tx_ring_empty,
        r.bad_frames,
        r.reordered
    );
    if let Some(n) = &r.notice {
        eprintln!("notice: {n}");
    }
}

fn gbit(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs.max(1e-9) / 1e9
}

pub fn send(a: SendArgs) -> anyhow::Result<ExitCode> {
    let cancel = cancel_on_signals()?;
    let dst = parse_dst(
        a.dst
            .as_deref()
            .context("no --dst (nor `dst` in --config)")?,
    )?;
    let snapshot = a
        .snapshot
        .clone()
        .context("no --snapshot (nor `snapshot` in --config)")?;
    let rate = match &a.rate {
        Some(r) => Some(
            packetfs::proto::pacing::parse_rate(r)
                .with_context(|| format!("--rate {r:?}: expected e.g. 1gbit, 500mbit, 100MB"))?,
        ),
        None => None,
    };
    let snap = Snapshot::open(&snapshot, a.hugepages)?;
    let transport = pick_transport(a.transport, a.iface.as_deref());
    let mut bar = Bar::new();
    let mut report = None;
    // Streaming send over UDP: plan window by window while the session runs.
    let stream = transport == Transport::Udp
        && packetfs::proto::PackPolicy::from(a.pack) != packetfs::proto::PackPolicy::Never
        && !any_pbb(&a.files)?;
    let (files, plan_bytes) = if stream {
        (Vec::new(), None)
    } else {
        let files = blueprints(&a.files, &snap)?;
        let n: u64 = files.iter().map(|f| f.blueprint.file_len).sum();
        (files, Some(n))
    };
    let r = match transport {
        Transport::Udp if stream => {
            use packetfs::prepare::stream;
            let mut cfg = SendConfig::new(dst);
            cfg.mtu = a.mtu;
            cfg.rate = rate;
            let sfiles = a
                .files
                .iter()
                .map(|p| stream::StreamFile::open(p.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            let o = stream::StreamOptions::default();
            let out = stream::outgoing(&sfiles, &o);
            let (tx, rx) = std::sync::mpsc::sync_channel(o.channel);
            let (sfiles, snap, o) = (&sfiles, &snap, &o);
            std::thread::scope(|sc| {
                sc.spawn(move || stream::produce_with_default_indexes(sfiles, snap, o, &tx));
                udp::run_streaming_sender_with(&cfg, out, rx, snap.id, &cancel, &mut |e| {
                    bar.event(e)
                })
            })
        }
        Transport::Udp => {
            let mut cfg = SendConfig::new(dst);
            cfg.mtu = a.mtu;
            cfg.rate = rate;
            cfg.proto.pack = a.pack.into();
            udp::run_sender_with(&cfg, files, snap.id, snap.bytes(), &cancel, &mut |e| {
                bar.event(e)
            })
        }
        Transport::Xdp => {
            let Some(iface) = a.iface.as_deref() else {
                bail!("--transport xdp needs --iface (the interface towards --dst)");
            };
            let IpAddr::V4(dst_ip) = dst.ip() else {
                bail!("--transport xdp speaks IPv4 only; --dst {dst} is IPv6");
            };
            let dst_mac = match &a.dst_mac {
                Some(m) => Some(
                    xdp::parse_mac(m)
                        .with_context(|| format!("--dst-mac {m:?}: expected aa:bb:cc:dd:ee:ff"))?,
                ),
                None => None,
            };
            let mut link = xdp::XdpLink::new(iface);
            link.spread = spread(a.mode);
            link.queues = a.queues.clone();
            link.port = dst.port();
            link.ports = a.ports;
            a.xdp.apply(&mut link);
            let cfg = xdp::XdpSendConfig {
                link,
                dst: dst_ip,
                dst_mac,
                mtu: a.mtu,
                rate,
                proto: packetfs::proto::SenderConfig {
                    session_id: 0,
                    pack: a.pack.into(),
                    ..Default::default()
                },
            };
            match xdp::run_sender(&cfg, files, snap.id, snap.bytes(), &cancel, &mut |e| {
                bar.event(e)
            }) {
                Ok((s, r)) => {
                    report = Some(r);
                    Ok(s)
                }
                Err(xdp::XdpError::Run { error, report: r }) => {
                    print_xdp(&r);
                    report = Some(*r);
                    Err(error)
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let tname = match transport {
        Transport::Udp => "udp",
        Transport::Xdp => "xdp",
    };
    let s: SendSummary = match r {
        Ok(s) => s,
        Err(udp::DriverError::SendAborted { failure, summary }) => {
            let _ = packetfs::metrics::append(
                &a.metrics,
                &json!({"kind": "send", "transport": tname, "ok": false, "reason": failure.to_string(), "summary": summary, "xdp": report}),
            );
            bail!("send failed: {failure}");
        }
        Err(e) => return Err(e.into()),
    };
    let secs = s.elapsed.as_secs_f64();
    println!(
        "sent {} file(s), {} in {:.3} s over {tname}: wire {} in {} frames, {} retransmitted frames; goodput {:.3} Gbit/s (wire), effective {:.3} Gbit/s (file bytes / time)",
        s.files,
        human_bytes(s.file_bytes),
        secs,
        human_bytes(s.wire_bytes),
        s.frames,
        s.retransmissions,
        gbit(s.wire_bytes, secs),
        gbit(s.file_bytes, secs)
    );
    println!(
        "  {} file(s) packed, {} direct; stream {}; packing {:.1} ms before the session",
        s.packed_files,
        s.direct_files,
        human_bytes(s.stream_bytes),
        s.pack_time.as_secs_f64() * 1e3
    );
    if let Some(r) = &report {
        print_xdp(r);
    }
    let mut m = serde_json::to_value(&s)?;
    m["kind"] = json!("send");
    m["transport"] = json!(tname);
    m["ok"] = json!(true);
    m["effective_gbps"] = json!(gbit(s.file_bytes, secs));
    m["goodput_gbps"] = json!(gbit(s.wire_bytes, secs));
    if let Some(r) = &report {
        m["xdp"] = serde_json::to_value(r)?;
    }
    debug_assert!(plan_bytes.is_none_or(|n| n == s.file_bytes));
    packetfs::metrics::append(&a.metrics, &m)
        .with_context(|| format!("appending to {}", a.metrics.display()))?;
    Ok(ExitCode::SUCCESS)
}

pub fn recv(a: RecvArgs) -> anyhow::Result<ExitCode> {
    let cancel = cancel_on_signals()?;
    let out_dir = a
        .out_dir
        .clone()
        .context("no --out-dir (nor `out-dir` in --config)")?;
    let snapshot = a
        .snapshot
        .clone()
        .context("no --snapshot (nor `snapshot` in --config)")?;
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let snap = Snapshot::open(&snapshot, a.hugepages)?;
    let transport = pick_transport(a.transport, a.iface.as_deref());
    let tname = match transport {
        Transport::Udp => "udp",
        Transport::Xdp => "xdp",
    };
    let mut on = |e: &Event| match e {
        Event::Accepted { files, bytes } => {
            eprintln!("accepted {files} file(s), {}", human_bytes(*bytes))
        }
        Event::Aborted(f) => eprintln!("session aborted: {f}"),
        _ => {}
    };
    let snap_name = &snap.manifest.snapshot_id[..16];
    let listen_timeout = (a.timeout > 0).then(|| Duration::from_secs(a.timeout));
    let mut report = None;
    let r = match transport {
        Transport::Udp => {
            let mut cfg = RecvConfig::new(SocketAddr::new(a.listen, a.port), out_dir.clone());
            cfg.mtu = a.mtu;
            cfg.proto.max_file_size = a.max_file_size;
            cfg.proto.durable = a.sync == super::codec::OnOff::On;
            cfg.listen_timeout = listen_timeout;
            let r = udp::UdpReceiver::bind(cfg)?;
            eprintln!(
                "listening on udp {} with snapshot {snap_name} ({}), writing to {}",
                r.local_addr()?,
                snap.backing_name(),
                out_dir.display()
            );
            r.run(snap.id, snap.bytes(), &cancel, &mut on)
        }
        Transport::Xdp => {
            let Some(iface) = a.iface.as_deref() else {
                bail!("--transport xdp needs --iface (the interface to receive on)");
            };
            let mut link = xdp::XdpLink::new(iface);
            link.spread = spread(a.mode);
            link.queues = a.queues.clone();
            link.port = a.port;
            link.ports = a.ports;
            a.xdp.apply(&mut link);
            link.impair_drop_ppm = a.impair_drop_ppm;
            let mut proto = packetfs::proto::ReceiverConfig::default();
            proto.max_file_size = a.max_file_size;
            proto.durable = a.sync == super::codec::OnOff::On;
            let cfg = xdp::XdpRecvConfig {
                link,
                out_dir: out_dir.clone(),
                mtu: a.mtu,
                listen_timeout,
                proto,
            };
            let r = xdp::XdpReceiver::bind(cfg)?;
            let (mode, notice) = r.xdp_mode();
            if let Some(n) = notice {
                eprintln!("notice: {n}");
            }
            eprintln!("xdp threads: {}", r.thread_map());
            eprintln!(
                "listening on xdp {iface} ({mode} mode) queues {:?} ports {}..={} with snapshot {snap_name} ({}), writing to {}",
                r.queues(),
                a.port,
                a.port as u32 + a.ports.max(1) as u32 - 1,
                snap.backing_name(),
                out_dir.display()
            );
            match r.run(snap.id, snap.bytes(), &cancel, &mut on) {
                Ok((s, rep)) => {
                    report = Some(rep);
                    Ok(s)
                }
                Err(xdp::XdpError::Run { error, report: rep }) => {
                    print_xdp(&rep);
                    report = Some(*rep);
                    Err(error)
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let s: RecvSummary = match r {
        Ok(s) => s,
        Err(udp::DriverError::RecvAborted { failure, summary }) => {
            let _ = packetfs::metrics::append(
                &a.metrics,
                &json!({"kind": "recv", "transport": tname, "ok": false, "reason": failure.to_string(), "summary": summary, "xdp": report}),
            );
            bail!("receive failed: {failure}");
        }
        Err(e) => return Err(e.into()),
    };
    let secs = s.elapsed.as_secs_f64();
    for f in &s.files {
        println!(
            "{} {} ({}){}",
            if f.verified { "received" } else { "INCOMPLETE" },
            f.path.display(),
            human_bytes(f.size),
            if f.verified { ", BLAKE3 verified" } else { "" }
        );
    }
    println!(
        "received {} file(s), {} in {:.3} s over {tname}: wire {} in {} frames, {} duplicates, {} malformed, {} from other sessions; effective {:.3} Gbit/s",
        s.files.len(),
        human_bytes(s.file_bytes),
        secs,
        human_bytes(s.wire_bytes),
        s.frames,
        s.duplicate_frames,
        s.malformed,
        s.foreign_session,
        gbit(s.file_bytes, secs)
    );
    if let Some(r) = &report {
        print_xdp(r);
    }
    let mut m = serde_json::to_value(&s)?;
    m["kind"] = json!("recv");
    m["transport"] = json!(tname);
    m["ok"] = json!(true);
    m["effective_gbps"] = json!(gbit(s.file_bytes, secs));
    if let Some(r) = &report {
        m["xdp"] = serde_json::to_value(r)?;
    }
    packetfs::metrics::append(&a.metrics, &m)
        .with_context(|| format!("appending to {}", a.metrics.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// `--config FILE`: the file's values under the flags given on the command line (a flag
/// counts as given when clap says its value came from the command line, not a default).
fn merged_config(
    path: &std::path::Path,
    m: &clap::ArgMatches,
    mut flags: packetfs::config::PfsConfig,
) -> anyhow::Result<packetfs::config::PfsConfig> {
    use clap::parser::ValueSource;
    let file = packetfs::config::PfsConfig::load(path)?;
    let given = |id: &str| matches!(m.value_source(id), Some(ValueSource::CommandLine));
    // Defaulted flags only count when given.
    macro_rules! unless_given {
        ($($f:ident = $id:literal),*) => {
            $( if flags.$f.is_some() && !given($id) { flags.$f = None; } )*
        };
    }
    unless_given!(
        mode = "mode",
        queues = "queues",
        port = "port",
        ports = "ports",
        listen = "listen",
        mtu = "mtu",
        max_file_size = "max_file_size",
        timeout = "timeout",
        xdp_mode = "xdp_mode",
        xdp_threads = "xdp_threads",
        pack = "pack",
        sync = "sync",
        metrics = "metrics",
        hugepages = "hugepages"
    );
    Ok(file.overlay(flags))
}

fn cfg_transport(t: Option<packetfs::config::Transport>) -> Option<Transport> {
    t.map(|t| match t {
        packetfs::config::Transport::Xdp => Transport::Xdp,
        packetfs::config::Transport::Udp => Transport::Udp,
    })
}

fn cfg_mode(m: Mode) -> packetfs::config::Mode {
    match m {
        Mode::Ports => packetfs::config::Mode::Ports,
        Mode::Queues => packetfs::config::Mode::Queues,
        Mode::Scatter => packetfs::config::Mode::Scatter,
    }
}

fn mode_of(m: packetfs::config::Mode) -> Mode {
    match m {
        packetfs::config::Mode::Ports => Mode::Ports,
        packetfs::config::Mode::Queues => Mode::Queues,
        packetfs::config::Mode::Scatter => Mode::Scatter,
    }
}

fn huge_cfg(h: HugePolicy) -> packetfs::config::Hugepages {
    match h {
        HugePolicy::Auto => packetfs::config::Hugepages::Auto,
        HugePolicy::On => packetfs::config::Hugepages::On,
        HugePolicy::Off => packetfs::config::Hugepages::Off,
    }
}

fn transport_cfg(t: Transport) -> packetfs::config::Transport {
    match t {
        Transport::Xdp => packetfs::config::Transport::Xdp,
        Transport::Udp => packetfs::config::Transport::Udp,
    }
}

/// Applies `pfs send --config FILE` (no-op without it); `m` are the subcommand's matches.
pub fn apply_send_config(a: &mut SendArgs, m: &clap::ArgMatches) -> anyhow::Result<()> {
    let Some(path) = a.config.clone() else {
        return Ok(());
    };
    let mut flags = packetfs::config::PfsConfig {
        transport: a.transport.map(transport_cfg),
        interface: a.iface.clone(),
        mode: Some(cfg_mode(a.mode)),
        queues: Some(a.queues.clone()),
        ports: Some(a.ports),
        snapshot: a.snapshot.clone(),
        dst: a.dst.clone(),
        dst_mac: a.dst_mac.clone(),
        mtu: Some(a.mtu),
        rate: a.rate.clone(),
        metrics: Some(a.metrics.clone()),
        hugepages: Some(huge_cfg(a.hugepages)),
        pack: Some(a.pack.into()),
        ..Default::default()
    };
    a.xdp.to_config(&mut flags);
    let c = merged_config(&path, m, flags)?;
    a.xdp.from_config(&c, &path)?;
    a.pack = c.pack.map(Into::into).unwrap_or(a.pack);
    a.transport = cfg_transport(c.transport);
    a.iface = c.interface;
    a.mode = c.mode.map(mode_of).unwrap_or(a.mode);
    a.queues = c.queues.unwrap_or_default();
    a.ports = c.ports.unwrap_or(a.ports);
    a.snapshot = c.snapshot;
    a.dst = c.dst;
    a.dst_mac = c.dst_mac;
    a.mtu = c.mtu.unwrap_or(a.mtu);
    a.rate = c.rate;
    a.metrics = c.metrics.unwrap_or(a.metrics.clone());
    a.hugepages = c.hugepages.map(Into::into).unwrap_or(a.hugepages);
    // A port in `dst` wins; else the file's `port` names the receiver's port.
    if let (Some(d), Some(p)) = (&a.dst, c.port) {
        if d.parse::<SocketAddr>().is_err() {
            a.dst = Some(format!("{d}:{p}"));
        }
    }
    Ok(())
}

/// Applies `pfs recv --config FILE` (no-op without it); `m` are the subcommand's matches.
pub fn apply_recv_config(a: &mut RecvArgs, m: &clap::ArgMatches) -> anyhow::Result<()> {
    let Some(path) = a.config.clone() else {
        return Ok(());
    };
    let mut flags = packetfs::config::PfsConfig {
        transport: a.transport.map(transport_cfg),
        interface: a.iface.clone(),
        mode: Some(cfg_mode(a.mode)),
        queues: Some(a.queues.clone()),
        port: Some(a.port),
        ports: Some(a.ports),
        snapshot: a.snapshot.clone(),
        out_dir: a.out_dir.clone(),
        listen: Some(a.listen.to_string()),
        mtu: Some(a.mtu),
        max_file_size: Some(a.max_file_size),
        timeout: Some(a.timeout),
        metrics: Some(a.metrics.clone()),
        hugepages: Some(huge_cfg(a.hugepages)),
        sync: Some(a.sync == super::codec::OnOff::On),
        ..Default::default()
    };
    a.xdp.to_config(&mut flags);
    let c = merged_config(&path, m, flags)?;
    a.xdp.from_config(&c, &path)?;
    if let Some(s) = c.sync {
        a.sync = if s {
            super::codec::OnOff::On
        } else {
            super::codec::OnOff::Off
        };
    }
    a.transport = cfg_transport(c.transport);
    a.iface = c.interface;
    a.mode = c.mode.map(mode_of).unwrap_or(a.mode);
    a.queues = c.queues.unwrap_or_default();
    a.port = c.port.unwrap_or(a.port);
    a.ports = c.ports.unwrap_or(a.ports);
    a.snapshot = c.snapshot;
    a.out_dir = c.out_dir;
    if let Some(l) = c.listen {
        a.listen = l
            .parse()
            .with_context(|| format!("{}: listen {l:?}", path.display()))?;
    }
    a.mtu = c.mtu.unwrap_or(a.mtu);
    a.max_file_size = c.max_file_size.unwrap_or(a.max_file_size);
    a.timeout = c.timeout.unwrap_or(a.timeout);
    a.metrics = c.metrics.unwrap_or(a.metrics.clone());
    a.hugepages = c.hugepages.map(Into::into).unwrap_or(a.hugepages);
    Ok(())
}
