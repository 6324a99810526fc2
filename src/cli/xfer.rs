//! `pfs send` and `pfs recv`.
//!
//! Options: each flag parses into the field of a partial [`PfsConfig`] (the flags given,
//! nothing else), laid over `--config FILE`'s values, laid over [`PfsConfig::defaults`];
//! the commands run from that one merged configuration. The option types are the drivers'
//! own (`packetfs::driver::options` and the others `packetfs::config` re-exports).

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use packetfs::blueprint::pbb;
use packetfs::config::{HugePolicy, PackPolicy, PfsConfig, Spread, Threads, Transport, XdpMode};
use packetfs::driver::udp::{self, RecvConfig, SendConfig, SendInput};
use packetfs::driver::{xdp, DriverError};
use packetfs::index::IndexSet;
use packetfs::plan::{self, hints::Hints, PlanConfig};
use packetfs::pob::Snapshot;
use packetfs::proto::{Event, SendFile};
use packetfs::secure::{GuardConfig, Security};
use packetfs::util::human_bytes;
use packetfs::wire::payload::EntryKind;

use super::codec::OnOff;
use super::settings::{merged, receiver_security, sender_security};

/// The default PacketFS UDP port (the first of the steered range).
pub const DEFAULT_PORT: u16 = 47000;

/// The key settings `pfs send` and `pfs recv` share.
#[derive(Args, Debug)]
pub struct KeyArgs {
    /// This host's key file (create one with `pfs keygen --out FILE`; mode 0600).
    #[arg(long)]
    identity: Option<PathBuf>,
    /// A pre-shared key file mixed into the handshake (both sides the same).
    #[arg(long)]
    psk_file: Option<PathBuf>,
    /// Plaintext, unauthenticated session: no keys, no encryption (both sides must say so).
    #[arg(long)]
    insecure: bool,
}

impl KeyArgs {
    fn into_config(self, c: &mut PfsConfig) {
        c.identity = self.identity;
        c.psk_file = self.psk_file;
        c.insecure = self.insecure.then_some(true);
    }
}

/// The AF_XDP settings `pfs send` and `pfs recv` share.
#[derive(Args, Debug)]
pub struct XdpArgs {
    /// XDP attach mode: native, skb or auto (native, falling back to skb) [default: auto].
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpMode>,
    /// Pin the AF_XDP session thread to this core.
    #[arg(long)]
    cpu: Option<usize>,
    /// Who drives the AF_XDP sockets: one pinned worker thread per queue (workers), the
    /// session thread alone (session), or auto: workers when each gets a core of its own
    /// besides the session thread's (or --cpus names their cores), else the session thread
    /// [default: auto].
    #[arg(long, value_enum)]
    xdp_threads: Option<Threads>,
    /// Cores for the AF_XDP workers, round-robin, e.g. 0,1 (default: every core).
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// Poll the AF_XDP sockets instead of sleeping on them (session thread and workers
    /// spin; the sockets prefer busy polling): lower latency and no lost wakeups, at the
    /// price of a core per polling thread. For hosts with spare cores (config key
    /// `busy_poll`).
    #[arg(long)]
    busy_poll: bool,
}

impl XdpArgs {
    /// These flags as `pfs.toml` keys.
    fn into_config(self, c: &mut PfsConfig) {
        c.xdp_mode = self.xdp_mode;
        c.cpu = self.cpu;
        c.xdp_threads = self.xdp_threads;
        c.cpus = self.cpus;
        c.busy_poll = self.busy_poll.then_some(true);
    }
}

/// An AF_XDP link from the merged configuration.
fn xdp_link(c: &PfsConfig, iface: &str, port: u16) -> xdp::XdpLink {
    let mut link = xdp::XdpLink::new(iface);
    link.spread = c.mode.unwrap_or(Spread::Scatter);
    link.queues = c.queues.clone().unwrap_or_default();
    link.port = port;
    link.ports = c.ports.unwrap_or(1);
    link.xdp_mode = c.xdp_mode.unwrap_or_default();
    link.cpu = c.cpu;
    link.threads = c.xdp_threads.unwrap_or(Threads::Auto);
    link.cpus = c.cpus.clone().unwrap_or_default();
    link.busy_poll = c.busy_poll.unwrap_or(false);
    link.answers = c.xdp_answers.unwrap_or_default();
    link
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Files and directories to send, in one session. Each is sent under its base name:
    /// `pfs send dir` and `pfs send dir/` both arrive as `dir/...` (a trailing slash does not
    /// mean "the contents", unlike rsync), `pfs send a/b/f` arrives as `f`. A directory
    /// brings its whole tree: relative paths, permission bits, mtimes, empty directories;
    /// links inside it are sent as links (see --follow-symlinks), fifos, sockets and devices
    /// are skipped with a note. Arguments that are links are followed. Files are planned on
    /// the fly against the snapshot; a `.pbb` named as an argument is sent as the blueprint
    /// it holds, as its own coded streams where it is format v3 (a `pfs plan --level max`
    /// file keeps its LZMA coding and reference predictions on the wire, whatever --level).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Send what links inside a directory point at (a file's contents, a directory's tree)
    /// instead of the links; links that point nowhere are skipped with a note.
    #[arg(long)]
    follow_symlinks: bool,
    /// Testing: move each direction to its next key after this many frames (the default
    /// is 2^22), to exercise key phases in a short transfer.
    #[arg(long, hide = true)]
    rekey_packets: Option<u64>,
    /// Start every file over: ignore what the receiver already holds (resumable partial
    /// files, files it holds whole). Without it, a streamed file continues after the prefix
    /// the receiver holds and a file it holds whole and unchanged is skipped (config key
    /// `resume = false`).
    #[arg(long)]
    no_resume: bool,
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
    /// Transport: auto (xdp when this host can run it, see `pfs doctor`: the capabilities,
    /// an AF_XDP socket, the eBPF program embedded in this build, --iface; else udp with a
    /// printed reason), xdp or udp [default: auto].
    #[arg(long, value_enum)]
    transport: Option<Transport>,
    /// How the session is spread over NIC queues (AF_XDP transport) [default: scatter].
    #[arg(long, value_enum)]
    mode: Option<Spread>,
    /// Queues to send on, e.g. 0,1 (`queues` mode; default: every queue).
    #[arg(long, value_delimiter = ',')]
    queues: Option<Vec<u32>>,
    /// Number of UDP ports in the range (`ports` mode: one flow per queue and port)
    /// [default: 1].
    #[arg(long)]
    ports: Option<u16>,
    #[command(flatten)]
    xdp: XdpArgs,
    /// How the receiver's answers (Accept, Acks, Nacks) reach this sender (AF_XDP
    /// transport): kernel UDP sockets on ports the kernel picks (the frames leave from
    /// them: senders on one host on other queues or interfaces never share one), so the
    /// sending interface gets no XDP program (a faster start and end: attaching and
    /// detaching one each waits out a kernel RCU grace period), or xdp: the steering
    /// program and the AF_XDP rings.
    /// auto: kernel, else xdp where no UDP socket can be bound. A firewall here that drops
    /// UDP from the receiver's port needs xdp, or a rule letting it in [default: auto].
    #[arg(long, value_enum)]
    xdp_answers: Option<packetfs::driver::options::Answers>,
    /// Link budget, e.g. 1gbit, 500mbit, 100MB (bytes/s); the protocol's own pacing never
    /// exceeds it.
    #[arg(long)]
    rate: Option<String>,
    /// IP MTU; frames fill it [default: 1500].
    #[arg(long)]
    mtu: Option<usize>,
    /// Metrics log (JSON lines) [default: logs/patterns/metrics.jsonl].
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Snapshot memory: off maps the file (no copy: start-up does no work proportional to
    /// the snapshot), auto/on copy it into huge pages [default: off].
    #[arg(long, value_enum)]
    hugepages: Option<HugePolicy>,
    /// Packed transfer (blueprint blocks, each stream with the coder of `--level`): per file
    /// when it pays (auto), always, or never (direct pieces only) [default: auto].
    #[arg(long, value_enum)]
    pack: Option<PackPolicy>,
    /// Planner preset and block coders for files planned on the fly (as `pfs plan --level`):
    /// `fast` keeps up with the wire (zstd level 1 blocks), `default` and `max` look harder
    /// and code the blocks with LZMA: fewer bytes for several times the time (measured in
    /// the README, "Block coders by level") [default: fast].
    #[arg(long, value_enum)]
    level: Option<packetfs::blueprint::Level>,
    /// Plan files of at most BYTES whole before they go, as `pfs plan` makes a `.pbb` (each
    /// stream's best coder at --level, the x86-64 reference predictions), instead of window
    /// by window while the session runs: fewer bytes on the wire, for the plan's time before
    /// the file's first data frame. The libstd release pair (5.4 MB, --level fast): 778 KB on
    /// the wire instead of 861-871 KB window by window (1,013 KB before windows were
    /// predicted), but 0.12 s end to end instead of 0.08-0.09 s at 1 Gbit/s (README,
    /// "Planning whole"): for links where bytes cost more than time [default: 0, window by
    /// window].
    #[arg(long, value_name = "BYTES")]
    plan_whole: Option<u64>,
    /// Reference predictions for x86-64 ELF files (as `pfs plan --predict`): the file's
    /// first block planned carries a model of its sections, and the relocations, symbols,
    /// range lists, line addresses, DWARF references and call targets that moved as the
    /// segments sent so far show cost nothing in the differences (at `fast` not the call
    /// targets: they cost more time than their bytes save). The libstd release pair: 802 KB
    /// of blocks instead of 932 KB at `fast` [default: on].
    #[arg(long, value_enum, value_name = "on|off")]
    predict: Option<super::codec::OnOff>,
    #[command(flatten)]
    keys: KeyArgs,
    /// The receiver's public key (base64, as `pfs key pub` prints it).
    #[arg(long)]
    receiver_key: Option<String>,
    /// A file of `IP|IP:PORT|* PUBKEY` lines: the receiver's key by its address.
    #[arg(long)]
    known_receivers: Option<PathBuf>,
}

impl SendArgs {
    /// The flags given, as a partial configuration.
    fn into_config(self) -> (Vec<PathBuf>, Option<PathBuf>, PfsConfig) {
        let mut c = PfsConfig {
            follow_symlinks: self.follow_symlinks.then_some(true),
            transport: self.transport,
            interface: self.iface,
            mode: self.mode,
            queues: self.queues,
            ports: self.ports,
            snapshot: self.snapshot,
            dst: self.dst,
            dst_mac: self.dst_mac,
            mtu: self.mtu,
            rate: self.rate,
            metrics: self.metrics,
            hugepages: self.hugepages,
            pack: self.pack,
            level: self.level,
            plan_whole: self.plan_whole,
            predict: self.predict.map(|p| p == super::codec::OnOff::On),
            receiver_key: self.receiver_key,
            known_receivers: self.known_receivers,
            resume: self.no_resume.then_some(false),
            xdp_answers: self.xdp_answers,
            ..Default::default()
        };
        self.xdp.into_config(&mut c);
        self.keys.into_config(&mut c);
        (self.files, self.config, c)
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
    /// Address to listen on (UDP transport) [default: 0.0.0.0].
    #[arg(long)]
    listen: Option<IpAddr>,
    /// First UDP port of the PacketFS range [default: 47000].
    #[arg(long)]
    port: Option<u16>,
    /// Number of ports in the range (`ports` mode: one flow per port) [default: 1].
    #[arg(long)]
    ports: Option<u16>,
    /// How work is spread over NIC queues (AF_XDP transport) [default: scatter].
    #[arg(long, value_enum)]
    mode: Option<Spread>,
    /// Queues to bind, e.g. 0,1 (`queues` mode).
    #[arg(long, value_delimiter = ',')]
    queues: Option<Vec<u32>>,
    /// Transport: auto (xdp when this host can run it, see `pfs doctor`; else udp with a
    /// printed reason), xdp or udp [default: auto].
    #[arg(long, value_enum)]
    transport: Option<Transport>,
    #[command(flatten)]
    xdp: XdpArgs,
    /// Testing: drop this many parts per million of PacketFS frames in the XDP program.
    #[arg(long, default_value_t = 0, hide = true)]
    impair_drop_ppm: u32,
    /// Testing: flip one bit in this many parts per million of PacketFS frames in the XDP
    /// program (tampering: a keyed receiver drops them at the tag).
    #[arg(long, default_value_t = 0, hide = true)]
    impair_flip_ppm: u32,
    /// Testing: move each direction to its next key after this many frames (the default
    /// is 2^22), to exercise key phases in a short transfer.
    #[arg(long, hide = true)]
    rekey_packets: Option<u64>,
    /// Make each file durable (msync + fsync) before renaming it into place. `off` skips the
    /// disk flush (faster; a crash right after a rename may lose pages never written back)
    /// [default: on].
    #[arg(long, value_enum)]
    sync: Option<OnOff>,
    /// Where each file's BLAKE3 is computed: on a hashing thread of each session's own
    /// (`on`), on the receiving thread (`off`), or on a thread with two cores or more and a
    /// session of 1 MiB or more (`auto`). A thread takes the hash off the per-frame path
    /// when a core is free; on a host whose cores are all busy `off` avoids the hand-over
    /// [default: auto].
    #[arg(long, value_enum)]
    hash_thread: Option<packetfs::proto::HashThread>,
    /// Replace files that already exist under a received name (never directories). Without
    /// it, a session naming an existing file is refused before any byte is written and the
    /// existing file is left unchanged.
    #[arg(long)]
    overwrite: bool,
    /// Keep the setuid, setgid and sticky bits a sender asks for. Without it only the
    /// 0o777 permission bits of received files and directories are applied.
    #[arg(long)]
    keep_setid: bool,
    /// Offer senders nothing and keep nothing: a broken session's temporary files are
    /// removed, and a file that exists is refused (as without resume) instead of being
    /// offered for skip-unchanged (config key `resume = false`). Without it, broken
    /// sessions leave `.NAME.pfs-part-H` files with a journal that the next session of the
    /// same sender resumes.
    #[arg(long)]
    no_resume: bool,
    /// IP MTU [default: 1500].
    #[arg(long)]
    mtu: Option<usize>,
    /// Largest file accepted, in bytes [default: 1 TiB].
    #[arg(long)]
    max_file_size: Option<u64>,
    /// Give up when no sender shows up within this many seconds (0 = wait forever)
    /// [default: 0].
    #[arg(long)]
    timeout: Option<u64>,
    /// Metrics log (JSON lines) [default: logs/patterns/metrics.jsonl].
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Snapshot memory: hugepages when available (auto), required (on) or not (off)
    /// [default: auto].
    #[arg(long, value_enum)]
    hugepages: Option<HugePolicy>,
    #[command(flatten)]
    keys: KeyArgs,
    /// The senders this receiver answers: `PUBKEY NAME [dir=SUB] [max-file=SIZE]
    /// [max-session=SIZE]` lines; every other sender gets no answer at all.
    #[arg(long)]
    authorized_senders: Option<PathBuf>,
    /// Serve one session and exit (scripts). Without it, pfs recv runs until SIGTERM/SIGINT
    /// and serves many senders at once (SIGHUP reloads the config and authorized senders).
    #[arg(long)]
    once: bool,
    /// Most sessions at once (service); new handshakes beyond it are dropped and counted
    /// [default: 64].
    #[arg(long)]
    max_sessions: Option<usize>,
    /// Most bytes one session may hold in reassembly buffers (packed streams, streamed
    /// windows); the service holds at most max-sessions times this [default: 1 GiB].
    #[arg(long)]
    session_memory: Option<u64>,
    /// Seconds running sessions get to finish after SIGTERM/SIGINT before they are
    /// aborted [default: 30].
    #[arg(long)]
    grace: Option<u64>,
    /// Serve Prometheus metrics on IP:PORT (GET /metrics), e.g. 127.0.0.1:9477.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

impl RecvArgs {
    /// The flags given, as a partial configuration.
    fn into_config(self) -> (Option<PathBuf>, (u32, u32), PfsConfig) {
        let mut c = PfsConfig {
            transport: self.transport,
            interface: self.iface,
            mode: self.mode,
            queues: self.queues,
            port: self.port,
            ports: self.ports,
            snapshot: self.snapshot,
            out_dir: self.out_dir,
            listen: self.listen.map(|l| l.to_string()),
            mtu: self.mtu,
            max_file_size: self.max_file_size,
            overwrite: self.overwrite.then_some(true),
            keep_setid: self.keep_setid.then_some(true),
            resume: self.no_resume.then_some(false),
            timeout: self.timeout,
            metrics: self.metrics,
            hugepages: self.hugepages,
            sync: self.sync.map(|s| s == OnOff::On),
            hash_thread: self.hash_thread,
            authorized_senders: self.authorized_senders,
            once: self.once.then_some(true),
            max_sessions: self.max_sessions,
            session_memory: self.session_memory,
            grace: self.grace,
            metrics_listen: self.metrics_listen.map(|a| a.to_string()),
            ..Default::default()
        };
        self.xdp.into_config(&mut c);
        self.keys.into_config(&mut c);
        (self.config, (self.impair_drop_ppm, self.impair_flip_ppm), c)
    }
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
fn any_pbb<'a>(files: impl IntoIterator<Item = &'a PathBuf>) -> anyhow::Result<bool> {
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

/// Plan (or load) each file into a blueprint against the snapshot; with, for each `.pbb`
/// input of format v3, its streams as one packed block to send as they are
/// ([`block::from_pbb`]: the `.pbb`'s coders and reference predictions travel, where packing
/// the blueprint again would code it at `--level`'s block coders without predictions).
#[allow(clippy::type_complexity)]
fn blueprints(
    files: &[packetfs::tree::TreeFile],
    snap: &Snapshot,
    level: packetfs::blueprint::Level,
) -> anyhow::Result<(Vec<SendFile>, Vec<Option<Vec<u8>>>)> {
    let cfg = PlanConfig::preset(level);
    let mut idx: Option<IndexSet> = None;
    let mut out = Vec::with_capacity(files.len());
    let mut coded = Vec::with_capacity(files.len());
    for tf in files {
        let f = &tf.path;
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        let name = tf.name.clone();
        // A `.pbb` named on the command line is a blueprint; one inside a tree is a file.
        let bp = if tf.top && bytes.starts_with(&pbb::MAGIC) {
            let bp = pbb::unpack_with(&bytes, &snap.id, snap.bytes())
                .with_context(|| format!("{}", f.display()))?;
            coded.push(packetfs::blueprint::block::from_pbb(
                &bytes,
                &Default::default(),
            ));
            SendFile {
                name: name.trim_end_matches(".pbb").to_string(),
                // self copies stay: the sender lowers them for direct files
                blueprint: bp,
            }
        } else {
            if idx.is_none() {
                idx = Some(IndexSet::ensure(snap, &plan::index_specs(&cfg), false)?.0);
            }
            let hints = Hints::from_elf(&bytes).unwrap_or_default();
            let t = Instant::now();
            let p = plan::plan(&bytes, snap, idx.as_ref().expect("set above"), &hints, &cfg)?;
            coded.push(None);
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
    Ok((out, coded))
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

/// The transport to use: the one asked for, else AF_XDP when this host can run it (the
/// same facts `pfs doctor` checks, [`packetfs::host::xdp_blocker`]), else UDP, saying why.
fn pick_transport(asked: Transport, iface: Option<&str>) -> Transport {
    if asked != Transport::Auto {
        return asked;
    }
    match packetfs::host::xdp_blocker(iface) {
        None => Transport::Xdp,
        Some(why) => {
            eprintln!(
                "using the kernel UDP transport: {why} (pass --transport xdp or udp to choose)"
            );
            Transport::Udp
        }
    }
}

/// The secure channel's settings: the defaults, with `--rekey-packets` (testing) applied.
fn guard_for(rekey_packets: Option<u64>) -> GuardConfig {
    let mut g = GuardConfig::default();
    if let Some(n) = rekey_packets {
        g.channel.rekey_packets = n.max(1);
    }
    g
}

/// `pfs send`. `origin` is when the command started: the summary's end-to-end figure
/// counts from there (snapshot, planning, packing, session, the receiver's confirmation).
pub fn send(a: SendArgs, origin: Instant) -> anyhow::Result<ExitCode> {
    let cancel = cancel_on_signals()?;
    let rekey = a.rekey_packets;
    let (paths, config, flags) = a.into_config();
    let c = merged(config.as_deref(), flags)?;
    let mut dst_s = c.dst.clone().context("no --dst (nor `dst` in --config)")?;
    // A port in `dst` wins; else the file's `port` names the receiver's port.
    if let Some(p) = c.port {
        if dst_s.parse::<SocketAddr>().is_err() {
            dst_s = format!("{dst_s}:{p}");
        }
    }
    let dst = parse_dst(&dst_s)?;
    let security = sender_security(&c, dst)?;
    let snapshot = c
        .snapshot
        .clone()
        .context("no --snapshot (nor `snapshot` in --config)")?;
    let rate = match &c.rate {
        Some(r) => Some(
            packetfs::proto::pacing::parse_rate(r)
                .with_context(|| format!("--rate {r:?}: expected e.g. 1gbit, 500mbit, 100MB"))?,
        ),
        None => None,
    };
    let mtu = c.mtu.unwrap_or(1500);
    let metrics = c
        .metrics
        .clone()
        .unwrap_or_else(|| packetfs::metrics::DEFAULT_LOG.into());
    let pack = c.pack.unwrap_or_default();
    // The sender maps the snapshot (no copy) unless asked for huge pages.
    let snap = super::open_snapshot(&snapshot, c.hugepages.unwrap_or(HugePolicy::Off))?;
    xdp::marks::mark("send", origin, "snapshot mapped");
    let transport = pick_transport(c.transport.unwrap_or_default(), c.interface.as_deref());
    let tname = transport.name();
    let xdp_cfg = match transport {
        Transport::Xdp => {
            let Some(iface) = c.interface.as_deref() else {
                bail!("--transport xdp needs --iface (the interface towards --dst)");
            };
            // the command returns once the receiver has confirmed, not after the sockets'
            // release (an RCU grace period each)
            xdp::io::release_sockets_after_exit();
            let IpAddr::V4(dst_ip) = dst.ip() else {
                bail!("--transport xdp speaks IPv4 only; --dst {dst} is IPv6");
            };
            let dst_mac = match &c.dst_mac {
                Some(m) => Some(
                    xdp::parse_mac(m)
                        .with_context(|| format!("--dst-mac {m:?}: expected aa:bb:cc:dd:ee:ff"))?,
                ),
                None => None,
            };
            Some(xdp::XdpSendConfig {
                link: xdp_link(&c, iface, dst.port()),
                dst: dst_ip,
                dst_mac,
                mtu,
                rate,
                proto: packetfs::proto::SenderConfig {
                    session_id: 0,
                    pack,
                    ..Default::default()
                },
                origin,
                security: security.clone(),
                guard: guard_for(rekey),
            })
        }
        Transport::Udp | Transport::Auto => None,
    };
    // Streaming (issue #10 item 6): a producer thread plans and packs window by window
    // while the session runs, so the first frames leave at once. `.pbb` inputs (planned
    // already) and `--pack never` (direct pieces) are sent whole, planned first.
    let tree = packetfs::tree::walk(
        &paths,
        packetfs::tree::TreeOptions {
            follow_symlinks: c.follow_symlinks.unwrap_or(false),
        },
    )?;
    for s in &tree.skipped {
        eprintln!("skipped {}: {}", s.path.display(), s.why);
    }
    // Every entry's name, in manifest order (files, then directories and links).
    let names: Vec<String> = tree
        .files
        .iter()
        .map(|f| f.name.clone())
        .chain(tree.nodes.iter().map(|n| n.name.clone()))
        .collect();
    let meta = tree.meta();
    let stream = pack != PackPolicy::Never
        && !any_pbb(tree.files.iter().filter(|f| f.top).map(|f| &f.path))?;
    let sfiles = if stream {
        tree.files
            .iter()
            .map(|f| packetfs::prepare::stream::StreamFile {
                name: f.name.clone(),
                path: f.path.clone(),
                size: f.size,
            })
            .collect::<Vec<_>>()
    } else {
        Vec::new()
    };
    // Directories and links: empty direct files whose kind the manifest entry sets.
    let empty = packetfs::blueprint::Blueprint {
        snapshot_id: snap.id,
        file_len: 0,
        file_hash: *blake3::hash(&[]).as_bytes(),
        segments: Vec::new(),
        spill: Vec::new(),
    };
    let level = c.level.unwrap_or(packetfs::blueprint::Level::Fast);
    let mut sopts = packetfs::prepare::stream::StreamOptions {
        whole_max: c.plan_whole.unwrap_or(0),
        ..packetfs::prepare::stream::StreamOptions::for_level(level)
    };
    if !c.predict.unwrap_or(true) {
        sopts.predict = packetfs::blueprint::predict::PredictOptions::NONE;
    }
    let mut bar = Bar::new();
    let mut report = None;
    let mut plan_bytes = None;
    // AF_XDP: resolve the peer, attach and bind on another thread while the files are
    // planned (streamed: while the producer starts) here; neither needs the other.
    let r = std::thread::scope(|sc| -> anyhow::Result<_> {
        let opener = xdp_cfg.map(|cfg| sc.spawn(move || xdp::XdpSender::open(cfg)));
        let input = if stream {
            use packetfs::prepare::stream;
            let (tx, rx) = std::sync::mpsc::sync_channel(sopts.channel);
            let (sf, sn, so) = (&sfiles, &snap, &sopts);
            let (offers, offers_rx) = match c.resume.unwrap_or(true) {
                true => {
                    let (t, r) = std::sync::mpsc::sync_channel(1);
                    (Some(t), Some(r))
                }
                false => (None, None),
            };
            sc.spawn(move || stream::produce_with_default_indexes(sf, sn, so, &tx, offers_rx));
            let mut files = stream::outgoing(&sfiles, &sopts);
            files.extend(
                tree.nodes
                    .iter()
                    .map(|n| packetfs::proto::OutgoingFile::Direct {
                        name: n.name.clone(),
                        blueprint: empty.clone(),
                    }),
            );
            SendInput::Streamed {
                files,
                blocks: rx,
                meta: meta.clone(),
                offers,
            }
        } else {
            let files = blueprints(&tree.files, &snap, level).map(|(mut f, coded)| {
                f.extend(tree.nodes.iter().map(|n| SendFile {
                    name: n.name.clone(),
                    blueprint: empty.clone(),
                }));
                (f, coded)
            });
            let (files, coded) = match files {
                Ok(f) => f,
                Err(e) => {
                    // the AF_XDP setup thread finishes (and its sockets close) first
                    drop(opener.map(|h| h.join()));
                    return Err(e);
                }
            };
            plan_bytes = Some(files.iter().map(|f| f.blueprint.file_len).sum::<u64>());
            SendInput::Planned {
                files,
                coded,
                snapshot: snap.bytes(),
                meta: meta.clone(),
            }
        };
        let opened = opener.map(|h| h.join().expect("the AF_XDP setup thread panicked"));
        Ok(match opened {
            None => {
                let mut cfg = SendConfig::new(dst);
                cfg.mtu = mtu;
                cfg.rate = rate;
                cfg.proto.pack = pack;
                cfg.origin = origin;
                cfg.security = security.clone();
                udp::run_sender_input(&cfg, input, snap.id, &cancel, &mut |e| bar.event(e))
            }
            Some(sender) => with_report(
                sender?.run(input, snap.id, &cancel, &mut |e| bar.event(e)),
                &mut report,
            )?,
        })
    })?;
    let s = match r {
        Ok(s) => s,
        Err(DriverError::SendAborted { failure, summary }) => {
            let _ = packetfs::metrics::append(
                &metrics,
                &json!({"kind": "send", "transport": tname, "ok": false, "reason": failure.to_string(), "summary": summary, "xdp": report}),
            );
            // An AF_XDP sender that took its answers on kernel UDP and got none: a firewall on
            // this host may drop them (the program would take them before it).
            let silent = match report.as_ref() {
                Some(r) if r.kernel_answers == Some(0) => format!(
                    "; nothing came back to this host's UDP port {} (a firewall here may drop UDP from {dst}: let it in, or try --xdp-answers xdp)",
                    join_ports(&r.kernel_answer_ports)
                ),
                _ => String::new(),
            };
            if let (packetfs::proto::Reason::HandshakeTimeout { ms }, Security::Sender(k)) =
                (&failure.reason, &security)
            {
                bail!(
                    "send failed: the receiver at {dst} did not complete the handshake within {ms} ms; \
it was expected to hold key {} (is that its key? does its authorized-senders file list this sender's key {}? same --psk-file on both sides?){silent}",
                    k.receiver.to_base64(),
                    k.identity.public().to_base64()
                );
            }
            let named = failure.reason.file().and_then(|i| names.get(i as usize));
            match named {
                Some(p) => bail!("send failed: {failure} ({p}){silent}"),
                None => bail!("send failed: {failure}{silent}"),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let secs = s.elapsed.as_secs_f64();
    let total = s.total.as_secs_f64();
    println!(
        "sent {} file(s), {} in {:.3} s over {tname} (from the start of pfs send to the receiver's confirmation): effective {:.3} Gbit/s (file bytes / that time)",
        s.files,
        human_bytes(s.file_bytes),
        total,
        gbit(s.file_bytes, total),
    );
    println!(
        "  session only: {:.3} s, wire {} in {} frames, {} retransmitted frames; goodput {:.3} Gbit/s (wire), {:.3} Gbit/s (file bytes)",
        secs,
        human_bytes(s.wire_bytes),
        s.frames,
        s.retransmissions,
        gbit(s.wire_bytes, secs),
        gbit(s.file_bytes, secs)
    );
    if s.stats.skipped_files > 0 || s.stats.resumed_files > 0 {
        println!(
            "  skipped {} file(s), {} (the receiver held them whole and unchanged); resumed {} file(s) after {} the receiver held",
            s.stats.skipped_files,
            human_bytes(s.stats.skipped_bytes),
            s.stats.resumed_files,
            human_bytes(s.stats.resumed_bytes),
        );
    }
    if s.streamed_files > 0 {
        println!(
            "  {} file(s) streamed (planned and packed while the session ran), {} direct; stream {}, at most {} held for repairs",
            s.streamed_files,
            s.direct_files,
            human_bytes(s.stream_bytes),
            human_bytes(s.stats.stream_held_peak),
        );
    } else {
        println!(
            "  {} file(s) packed, {} direct; stream {}; packing {:.1} ms before the session",
            s.packed_files,
            s.direct_files,
            human_bytes(s.stream_bytes),
            s.pack_time.as_secs_f64() * 1e3
        );
    }
    let ndirs = meta.iter().filter(|m| m.kind == EntryKind::Dir).count();
    let nlinks = meta.iter().filter(|m| m.kind == EntryKind::Symlink).count();
    if ndirs + nlinks + tree.skipped.len() > 0 {
        println!(
            "  tree: {} regular file(s), {ndirs} directory(ies), {nlinks} link(s); {} special file(s) skipped",
            tree.files.len(),
            tree.skipped.len()
        );
    }
    if let (Some(f), Some(d)) = (s.first_frame, s.first_data) {
        println!(
            "  first frame {:.1} ms, first data frame {:.1} ms after the start of pfs send",
            f.as_secs_f64() * 1e3,
            d.as_secs_f64() * 1e3
        );
    }
    println!("  {}", s.security.line());
    if let Some(r) = &report {
        print_xdp(r);
    }
    let mut m = serde_json::to_value(&s)?;
    m["kind"] = json!("send");
    m["transport"] = json!(tname);
    m["ok"] = json!(true);
    m["effective_gbps"] = json!(gbit(s.file_bytes, total));
    m["session_gbps"] = json!(gbit(s.file_bytes, secs));
    m["goodput_gbps"] = json!(gbit(s.wire_bytes, secs));
    if let Some(r) = &report {
        m["xdp"] = serde_json::to_value(r)?;
    }
    debug_assert!(plan_bytes.is_none_or(|n| n == s.file_bytes));
    packetfs::metrics::append(&metrics, &m)
        .with_context(|| format!("appending to {}", metrics.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// `pfs recv`.
pub fn recv(a: RecvArgs) -> anyhow::Result<ExitCode> {
    // Where recv's start-up marks count from (`pfs -vv`).
    let origin = Instant::now();
    let cancel = cancel_on_signals()?;
    // SIGHUP is caught from the start (a reload for the service, ignored with --once).
    let ctl = super::serve::control_on_signals()?;
    let rekey = a.rekey_packets;
    let (config, (impair_drop_ppm, impair_flip_ppm), flags) = a.into_config();
    let c = merged(config.as_deref(), flags.clone())?;
    let once = c.once.unwrap_or(false);
    let out_dir = c
        .out_dir
        .clone()
        .context("no --out-dir (nor `out-dir` in --config)")?;
    let snapshot = c
        .snapshot
        .clone()
        .context("no --snapshot (nor `snapshot` in --config)")?;
    let listen: IpAddr = c
        .listen
        .as_deref()
        .unwrap_or("0.0.0.0")
        .parse()
        .with_context(|| format!("listen {:?} is not an IP address", c.listen))?;
    let port = c.port.unwrap_or(DEFAULT_PORT);
    let ports = c.ports.unwrap_or(1);
    let mtu = c.mtu.unwrap_or(1500);
    let metrics = c
        .metrics
        .clone()
        .unwrap_or_else(|| packetfs::metrics::DEFAULT_LOG.into());
    let security = receiver_security(&c)?;
    let proto = super::serve::receiver_config(&c);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let stale = packetfs::fsink::remove_stale_temps(&out_dir)
        .with_context(|| format!("clearing stale temporary files in {}", out_dir.display()))?;
    if stale.resumable > 0 {
        eprintln!(
            "kept {} resumable partial file(s), {} in all, in {} (a sender's next session continues them)",
            stale.resumable,
            human_bytes(stale.resumable_bytes),
            out_dir.display()
        );
    }
    if stale.removed > 0 || stale.kept > 0 {
        eprintln!(
            "removed {} stale temporary file(s) of earlier runs from {}{}",
            stale.removed,
            out_dir.display(),
            if stale.kept > 0 {
                format!(" (kept {} of a running process)", stale.kept)
            } else {
                String::new()
            }
        );
    }
    let transport = pick_transport(c.transport.unwrap_or_default(), c.interface.as_deref());
    let listen_timeout = c.timeout.filter(|t| *t > 0).map(Duration::from_secs);
    let xdp_cfg = match transport {
        Transport::Xdp => {
            let Some(iface) = c.interface.as_deref() else {
                bail!("--transport xdp needs --iface (the interface to receive on)");
            };
            if once {
                // one session: the command returns once the files are confirmed, not after
                // the sockets' and the link's release (their RCU grace periods)
                xdp::io::release_sockets_after_exit();
            }
            let mut link = xdp_link(&c, iface, port);
            link.impair_drop_ppm = impair_drop_ppm;
            link.impair_flip_ppm = impair_flip_ppm;
            Some(xdp::XdpRecvConfig {
                link,
                out_dir: out_dir.clone(),
                mtu,
                listen_timeout,
                proto: proto.clone(),
                security: security.clone(),
                guard: guard_for(rekey),
                origin,
            })
        }
        Transport::Udp | Transport::Auto => None,
    };
    // AF_XDP: attach the program and bind the sockets on another thread while the snapshot
    // is mapped (and loaded into huge pages) here: start-up takes the longer of the two.
    let (snap, bound) = std::thread::scope(|sc| {
        let binder = xdp_cfg.map(|cfg| sc.spawn(move || xdp::XdpReceiver::bind(cfg)));
        let snap = super::open_snapshot(&snapshot, c.hugepages.unwrap_or(HugePolicy::Auto));
        xdp::marks::mark("recv", origin, "snapshot mapped");
        let bound = binder.map(|h| h.join().expect("the AF_XDP setup thread panicked"));
        (snap, bound)
    });
    let snap = snap?;
    let bound = bound.transpose()?;
    let tname = transport.name();
    let mut on = |e: &Event| match e {
        Event::Accepted { files, bytes } => {
            eprintln!("accepted {files} file(s), {}", human_bytes(*bytes))
        }
        Event::Aborted(f) => eprintln!("session aborted: {f}"),
        _ => {}
    };
    let snap_name = &snap.manifest.snapshot_id[..16];
    let mut report = None;
    let mut cfg = RecvConfig::new(SocketAddr::new(listen, port), out_dir.clone());
    cfg.mtu = mtu;
    cfg.proto = proto;
    cfg.listen_timeout = listen_timeout;
    cfg.security = security.clone();
    if !once {
        let args = super::serve::ServeArgs {
            config_path: config.clone(),
            flags,
            config: c.clone(),
            recv: cfg,
            metrics_log: metrics,
            snap_name: snap_name.to_string(),
            snap_backing: snap.backing_name().to_string(),
        };
        return super::serve::run(args, &ctl, snap.id, snap.bytes(), bound);
    }
    let r = match bound {
        None => {
            let r = udp::UdpReceiver::bind(cfg)?;
            eprintln!(
                "listening on udp {} with snapshot {snap_name} ({}), writing to {}",
                r.local_addr()?,
                snap.backing_name(),
                out_dir.display()
            );
            super::serve::notify_once_ready();
            r.run(snap.id, snap.bytes(), &cancel, &mut on)
        }
        Some(r) => {
            let iface = c.interface.as_deref().unwrap_or_default();
            let (mode, notice) = r.xdp_mode();
            if let Some(n) = notice {
                eprintln!("notice: {n}");
            }
            eprintln!("xdp threads: {}", r.thread_map());
            eprintln!(
                "listening on xdp {iface} ({mode} mode) queues {:?} ports {}..={} with snapshot {snap_name} ({}), writing to {}",
                r.queues(),
                port,
                port as u32 + ports.max(1) as u32 - 1,
                snap.backing_name(),
                out_dir.display()
            );
            xdp::marks::mark("recv", origin, "listening");
            super::serve::notify_once_ready();
            with_report(r.run(snap.id, snap.bytes(), &cancel, &mut on), &mut report)?
        }
    };
    let s = match r {
        Ok(s) => s,
        Err(DriverError::RecvAborted { failure, summary }) => {
            let _ = packetfs::metrics::append(
                &metrics,
                &json!({"kind": "recv", "transport": tname, "ok": false, "reason": failure.to_string(), "summary": summary, "xdp": report}),
            );
            let named = failure
                .reason
                .file()
                .and_then(|i| summary.files.get(i as usize));
            match named {
                Some(f) => bail!("receive failed: {failure} ({})", f.name),
                None => bail!("receive failed: {failure}"),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let secs = s.elapsed.as_secs_f64();
    let total = s.total.as_secs_f64();
    for f in &s.files {
        println!("{}", super::serve::entry_line(f));
    }
    println!(
        "received {} file(s), {} in {:.3} s over {tname} (from the session's first frame to the last file durable): effective {:.3} Gbit/s; session only {:.3} s ({:.3} Gbit/s); wire {} in {} frames, {} duplicates, {} malformed, {} from other sessions",
        s.files.len(),
        human_bytes(s.file_bytes),
        total,
        gbit(s.file_bytes, total),
        secs,
        gbit(s.file_bytes, secs),
        human_bytes(s.wire_bytes),
        s.frames,
        s.duplicate_frames,
        s.malformed,
        s.foreign_session,
    );
    if s.stats.skipped_files > 0 || s.stats.resumed_files > 0 {
        println!(
            "skipped {} file(s) held whole and unchanged ({}), resumed {} file(s) after {} held",
            s.stats.skipped_files,
            human_bytes(s.stats.skipped_bytes),
            s.stats.resumed_files,
            human_bytes(s.stats.resumed_bytes)
        );
    }
    println!("{}", s.security.line());
    if let Some(r) = &report {
        print_xdp(r);
    }
    let mut m = serde_json::to_value(&s)?;
    m["kind"] = json!("recv");
    m["transport"] = json!(tname);
    m["ok"] = json!(true);
    m["effective_gbps"] = json!(gbit(s.file_bytes, total));
    m["session_gbps"] = json!(gbit(s.file_bytes, secs));
    if let Some(r) = &report {
        m["xdp"] = serde_json::to_value(r)?;
    }
    packetfs::metrics::append(&metrics, &m)
        .with_context(|| format!("appending to {}", metrics.display()))?;
    Ok(ExitCode::SUCCESS)
}
/// An AF_XDP run's outcome as the UDP driver's (the session's result), its report kept in
/// `report` (and printed at once when the session failed); errors before the session are
/// the command's.
fn with_report<S>(
    r: Result<(S, xdp::XdpReport), xdp::XdpError>,
    report: &mut Option<xdp::XdpReport>,
) -> anyhow::Result<Result<S, DriverError>> {
    match r {
        Ok((s, r)) => {
            *report = Some(r);
            Ok(Ok(s))
        }
        Err(xdp::XdpError::Run { error, report: r }) => {
            print_xdp(&r);
            *report = Some(*r);
            Ok(Err(*error))
        }
        Err(e) => Err(e.into()),
    }
}

/// Ports as `a,b,c`.
fn join_ports(p: &[u16]) -> String {
    p.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

/// One line about the AF_XDP layer for the summaries.
fn print_xdp(r: &xdp::XdpReport) {
    let t = r.xdp_totals();
    let per_q: Vec<String> = r
        .queues
        .iter()
        .map(|q| match &q.worker {
            Some(w) => format!(
                "q{} worker {} rx {} tx {} sleeps {} kicks {} tx_ring_full {} sealed {} opened {} open_failed {}",
                q.queue,
                w.cpu.map_or("unpinned".to_string(), |c| format!("cpu{c}")),
                q.rx_frames,
                q.tx_frames,
                w.sleeps,
                w.kicks,
                w.tx_ring_full,
                w.sealed,
                w.opened,
                w.open_failed
            ),
            None => format!("q{} rx {} tx {}", q.queue, q.rx_frames, q.tx_frames),
        })
        .collect();
    // A sender without a program: its sockets transmit, the answers came on kernel UDP.
    let (mode, steering) = match r.kernel_answers {
        Some(n) => (
            format!(
                "transmit only, answers on kernel UDP port {}: {n} datagrams",
                join_ports(&r.kernel_answer_ports)
            ),
            "none (no program on this interface)".to_string(),
        ),
        None => (format!("{} mode", r.xdp_mode), r.steer.to_string()),
    };
    println!(
        "xdp: {} ({}, {:?}) [{}]; steering {}; XDP_STATISTICS rx_dropped={} rx_ring_full={} rx_invalid_descs={} tx_invalid_descs={} fill_ring_empty={} tx_ring_empty={}; bad frames {}; reordered {}",
        r.iface,
        mode,
        r.spread,
        per_q.join(", "),
        steering,
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
