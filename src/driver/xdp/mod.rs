//! The AF_XDP driver (`--transport xdp`): the [`crate::proto`] state machines over AF_XDP
//! sockets behind the XDP steering program, run by the session core
//! ([`crate::driver::session`]) on one of two frame paths.
//!
//! Each side binds one AF_XDP socket per queue it uses ([`io::XdpIo`]). The receiver
//! attaches the steering program to its interface with the PacketFS port range and puts
//! each socket into the XSKMAP entry of its queue. The sender takes the receiver's Accept,
//! Acks and Nacks on kernel UDP sockets on ports the kernel picks, from which its frames
//! leave ([`answers`]; `--xdp-answers`),
//! and attaches nothing, so its sockets only transmit (with workers, a reader thread
//! takes the answers: [`answers::Reader`]); a sender that cannot bind such a socket
//! attaches the program as the receiver does. Who drives the sockets ([`Threads`]): the session thread alone
//! ([`io::SessionPath`]), or one pinned worker per queue ([`workers`]) with the session
//! thread running the state machine. Both paths build frames through the session's
//! [`flow::Flow`] (addresses, queue choice), lent to whichever runs.
//!
//! Files: [`io`] sockets and steering; [`answers`] a sender's answers on kernel UDP;
//! [`workers`] the per-queue threads; [`flow`] the flow addressing; [`netdev`] MAC, IPv4, neighbour and queue queries; [`report`] what the
//! AF_XDP layer saw; [`marks`] the start-up marks (debug log); [`error`] what can go wrong.
//!
//! Start-up: [`io::XdpIo::open`] binds each queue's socket on a thread of its own while
//! the program loads and attaches; with the default UMEM settings and an MTU that fits, the
//! UMEM has 2 KiB frames (half the pages of 4 KiB frames to populate).
//!
//! Spreading ([`Spread`]): `Scatter` sends one session round-robin over every bound queue
//! (one batch per queue in turn); `Queues` does the same over an explicit list; `Ports`
//! gives each queue's flow its own UDP port (`port + k`), so a NIC's RSS hash spreads the
//! flows. On veth the sending queue decides the receiving queue, so all three land frames on
//! the queue they were sent from. The receiver answers on the queue it last heard from.
//!
//! Addresses: the sender takes its MAC and IPv4 from the interface, the peer's MAC from
//! `dst_mac` or the kernel neighbour table (one kernel UDP datagram to the destination's
//! discard port triggers ARP when the entry is missing); the receiver learns everything
//! from the first frame its endpoint accepts and answers with the addresses swapped.
//!
//! The steering program detaches when the [`io::XdpIo`] drops: at the end of a run, on
//! error, on SIGINT/SIGTERM (the cancel flag ends the loop cleanly) and, through the BPF
//! link, when the process dies.
//!
//! The receiver service ([`XdpReceiver::serve`]) keeps one [`io::XdpIo`] for its life and
//! serves every session over it, one receiver [`flow::Flow`] per session: on the session
//! thread ([`io::XdpServiceIo`]) or over the workers ([`workers::WorkersServiceIo`], started
//! for the service's life).

pub mod answers;
pub mod error;
pub mod flow;
pub mod io;
pub mod marks;
pub mod netdev;
pub mod report;
pub mod workers;

pub use super::options::{Answers, Spread, Threads};
pub use error::XdpError;
pub use netdev::{iface_ipv4, iface_mac, parse_mac, resolve_mac, rx_queue_count};
pub use report::{QueueStats, WorkerStats, XdpReport};

use super::service::{ServeWith, Service, ServiceConfig};
use super::session::{
    self, random_u64, DriverError, FramePath, RecvSummary, SendInput, SendSession, SendSummary,
};
use crate::proto::{Endpoint, Event, ReceiverConfig, SendFile, SenderConfig};
use crate::secure::{GuardConfig, Security};
use crate::steer::{PortRange, XdpMode};
use crate::wire::stack::{self, Addrs};
use crate::xsk::{self, XskConfig};
use answers::KernelAnswers;
use flow::Flow;
pub use io::XdpServiceIo;
use io::{SessionPath, SteerSpec, XdpIo};
use marks::StartMarks;
use report::PathStats;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use workers::WorkerSet;

/// How late a frame may be, on a receiver bound to several queues, before its hole is
/// NACKed ([`ReceiverConfig::reorder_window`]).
pub const REORDER_WINDOW: Duration = Duration::from_millis(10);
/// The UMEM and rings of a socket when the defaults were not changed and the MTU fits a
/// 2 KiB frame: the default's frame count and rings in 2 KiB frames (8 MiB). Creating a
/// UMEM populates its pages (xsk-rs maps shared anonymous memory with MAP_POPULATE, which
/// allocates and zeroes every page under the mmap lock): half the pages, about half that
/// start-up cost (docs/XDP.md, "Start-up").
///
/// Batches of 256: the session thread takes a whole batch per round and direction, and one
/// tx kick moves all of it where the kernel takes `XDP_MAX_TX_SKB_BUDGET`.
const SMALL_XSK: XskConfig = XskConfig {
    frame_size: 2048,
    frame_count: 4096,
    ring_size: 2048,
    batch: 256,
    bind: xsk::BindMode::Auto,
    huge_pages: false,
    receive: true,
};
/// The UMEM and rings of a socket that only transmits (a sender taking its answers on
/// kernel UDP) when the defaults were not changed and the MTU fits a 2 KiB frame: 1,024
/// frames of 2 KiB (2 MiB), all for transmission. Measured on the project's 2-core VM
/// (covered 32 MiB over veth, 2 queues): set-up done 4.6-6.3 ms after the start with 1,024
/// frames (half of them idle on the fill ring then), 9.9-13.1 ms with 4,096.
const TX_XSK: XskConfig = XskConfig {
    frame_size: 2048,
    frame_count: 1024,
    ring_size: 1024,
    batch: 256,
    bind: xsk::BindMode::Auto,
    huge_pages: false,
    receive: false,
};
/// The UMEM and rings of a worker's socket when the defaults were not changed and the MTU
/// fits a 2 KiB frame: 8192 frames of 2 KiB (16 MiB), rings of 4096.
const WORKER_XSK: XskConfig = XskConfig {
    frame_size: 2048,
    frame_count: 8192,
    ring_size: 4096,
    batch: 64,
    bind: xsk::BindMode::Auto,
    huge_pages: false,
    receive: true,
};

/// Where and how one side binds.
#[derive(Debug, Clone)]
pub struct XdpLink {
    pub iface: String,
    /// Queues to bind (empty: every rx queue of the interface).
    pub queues: Vec<u32>,
    pub spread: Spread,
    /// First PacketFS UDP port, and how many (the steered range is `port..port+ports`).
    pub port: u16,
    pub ports: u16,
    pub xdp_mode: XdpMode,
    pub xsk: XskConfig,
    /// Receive-side loss injection in parts per million (tests; 0 = off).
    pub impair_drop_ppm: u32,
    /// Testing: flip a bit in this many parts per million of received PacketFS frames.
    pub impair_flip_ppm: u32,
    /// Pin the session thread to this core (core_affinity).
    pub cpu: Option<usize>,
    /// Threads: one worker per queue or the session thread alone (default: auto).
    pub threads: Threads,
    /// Cores for the workers, round-robin (empty: every core of the machine).
    pub cpus: Vec<usize>,
    /// Poll the sockets instead of sleeping on them (session thread and workers), with the
    /// sockets' busy-poll options set: for hosts with a core to spare per polling thread.
    pub busy_poll: bool,
    /// A sender's answers: kernel UDP (no program on its interface) or the program.
    pub answers: Answers,
}

impl XdpLink {
    pub fn new(iface: &str) -> Self {
        XdpLink {
            iface: iface.to_string(),
            queues: Vec::new(),
            spread: Spread::Scatter,
            port: 47000,
            ports: 1,
            xdp_mode: XdpMode::Auto,
            xsk: XskConfig::default(),
            impair_drop_ppm: 0,
            impair_flip_ppm: 0,
            cpu: None,
            threads: Threads::Auto,
            cpus: Vec::new(),
            busy_poll: false,
            answers: Answers::Auto,
        }
    }

    /// The queues to bind: the list given, else every rx queue of the interface.
    fn resolve_queues(&self) -> Result<Vec<u32>, XdpError> {
        let nq = rx_queue_count(&self.iface).map_err(|source| XdpError::Netdev {
            what: "rx queues",
            iface: self.iface.clone(),
            source,
        })?;
        let queues: Vec<u32> = match self.spread {
            Spread::Queues if !self.queues.is_empty() => self.queues.clone(),
            Spread::Queues => return Err(XdpError::NoQueueList),
            _ if !self.queues.is_empty() => self.queues.clone(),
            _ => (0..nq).collect(),
        };
        if let Some(&queue) = queues.iter().find(|q| **q >= nq) {
            return Err(XdpError::QueueBeyond {
                queue,
                count: nq,
                iface: self.iface.clone(),
            });
        }
        Ok(queues)
    }
}

/// Sender settings for the AF_XDP driver.
#[derive(Debug, Clone)]
pub struct XdpSendConfig {
    pub link: XdpLink,
    /// The receiver's IPv4 address (its UDP port is `link.port`).
    pub dst: Ipv4Addr,
    /// The receiver's MAC (None: from the neighbour table).
    pub dst_mac: Option<[u8; 6]>,
    pub mtu: usize,
    pub rate: Option<u64>,
    pub proto: SenderConfig,
    /// Where the summary's end-to-end clock starts (`pfs send` gives its own start).
    pub origin: Instant,
    /// How the session is protected (keys, or `--insecure`) and the Guard's settings.
    pub security: Security,
    pub guard: GuardConfig,
}

/// Receiver settings for the AF_XDP driver.
#[derive(Debug, Clone)]
pub struct XdpRecvConfig {
    pub link: XdpLink,
    pub out_dir: PathBuf,
    pub mtu: usize,
    pub listen_timeout: Option<Duration>,
    pub proto: ReceiverConfig,
    /// How the session is protected (keys, or `--insecure`) and the Guard's settings.
    pub security: Security,
    pub guard: GuardConfig,
    /// Where the start-up marks count from (`pfs recv` gives its own start).
    pub origin: Instant,
}

/// One side's AF_XDP state: the sockets and steering, the thread policy, the flow.
struct Side {
    io: XdpIo,
    flow: Flow,
    spread: Spread,
    threads: Threads,
    /// Why `Auto` chose `threads` (printed with the thread map).
    threads_why: Option<String>,
    /// The core of each socket's worker (chosen when the sockets are bound, before the
    /// session thread is pinned: a pinned thread sees only its own core).
    worker_cpus: Vec<Option<usize>>,
    frames_per_socket: usize,
    batch: usize,
    /// Filled when workers owned the sockets: what they did (the sockets are gone then).
    worker_stats: Option<PathStats>,
    /// Start-up marks (the first frames are marked by the frame path).
    marks: StartMarks,
}

impl Side {
    /// Check the link, pick the thread model, attach, bind. Run in the interface's
    /// network namespace.
    ///
    /// `flow` (the sender's address resolution, which may wait for ARP) runs on a thread of
    /// its own while the program is attached and the sockets are bound.
    ///
    /// A sender (`sender`) whose answers come on kernel UDP ([`Answers`]) gets no program:
    /// its sockets only transmit, and UDP sockets on its source ports take the answers.
    fn open(
        link: &XdpLink,
        mtu: usize,
        flow: impl FnOnce(&StartMarks) -> Result<Flow, XdpError> + Send,
        marks: StartMarks,
        sender: bool,
    ) -> Result<Self, XdpError> {
        let mut xc = link.xsk;
        let small = xc == XskConfig::default() && fits(mtu, &SMALL_XSK);
        if small {
            xc = SMALL_XSK;
        }
        if !fits(mtu, &xc) {
            return Err(XdpError::MtuTooLarge {
                mtu,
                frame_size: xc.frame_size,
                usable: xc.max_frame_len(),
                need: mtu + stack::overhead(None),
            });
        }
        if link.ports == 0 || link.port.checked_add(link.ports - 1).is_none() {
            return Err(XdpError::PortRange {
                port: link.port,
                ports: link.ports,
            });
        }
        let queues = link.resolve_queues()?;
        let cores = crate::host::usable_cores();
        let (threads, why) = link
            .threads
            .resolve(queues.len(), cores, !link.cpus.is_empty());
        if let Some(w) = &why {
            tracing::info!("xdp threads: {w}");
        }
        if threads == Threads::Workers && small {
            // Frames wait in the workers' hand-over queues as well as on the rings: a
            // deeper fill ring (in 2 KiB frames, as much memory) rides out a session thread
            // that lost its core for a while.
            xc = WORKER_XSK;
        }
        let spec = SteerSpec {
            ports: PortRange::new(link.port, link.ports),
            mode: link.xdp_mode,
            impair: (link.impair_drop_ppm, link.impair_flip_ppm),
        };
        // A sender's kernel UDP answers are bound first: where none can be, `Auto` still has
        // the program to fall back to (its sockets then keep their fill frames).
        let answers = match sender && kernel_answers(link)? {
            true => bind_answers(link)?,
            false => None,
        };
        let kernel = answers.is_some();
        if kernel {
            // Nothing arrives on the rings without a program: every frame transmits.
            xc = if small {
                TX_XSK
            } else {
                XskConfig {
                    receive: false,
                    ..xc
                }
            };
        }
        let (flow, io) = std::thread::scope(|sc| {
            let m = &marks;
            let flow = sc.spawn(move || flow(m));
            let io = XdpIo::open(&link.iface, &queues, (!kernel).then_some(spec), &xc, &marks);
            let flow = flow.join().expect("the address resolution thread panicked");
            (flow, io)
        });
        // The addresses' error first: it is the more basic problem.
        let mut flow = flow?;
        let mut io = io?;
        if link.busy_poll {
            io.set_busy_poll();
        }
        if let Some(a) = answers {
            tracing::info!(iface = %link.iface, ports = ?a.ports(), "answers over kernel UDP (no XDP program on this interface)");
            flow.set_src_ports(a.ports());
            io.set_answers(a);
        }
        Ok(Side {
            io,
            flow,
            spread: link.spread,
            threads,
            threads_why: why,
            worker_cpus: workers::worker_cpus(queues.len(), &link.cpus),
            frames_per_socket: xc.frame_count as usize,
            batch: xc.batch as usize,
            worker_stats: None,
            marks,
        })
    }

    /// Run `f` on this side's frame path: the session thread's sockets, or the workers
    /// (spawned for the run, stopped after it).
    fn on_path<R>(&mut self, f: impl FnOnce(&mut XdpPath<'_, '_>) -> R) -> Result<R, XdpError> {
        let marks = &self.marks;
        if self.threads != Threads::Workers || self.io.queues().is_empty() {
            let mut p = XdpPath {
                kind: PathKind::Session(SessionPath {
                    io: &mut self.io,
                    flow: &mut self.flow,
                }),
                marks,
            };
            return Ok(f(&mut p));
        }
        let (r, stats) = workers::run(
            &mut self.io,
            &mut self.flow,
            &self.worker_cpus,
            self.frames_per_socket,
            self.batch,
            |set| {
                f(&mut XdpPath {
                    kind: PathKind::Workers(set),
                    marks,
                })
            },
        )
        .map_err(XdpError::Workers)?;
        self.worker_stats = Some(stats);
        Ok(r)
    }

    /// What the AF_XDP layer saw so far.
    fn report(&self) -> XdpReport {
        let st = self.worker_stats.clone().unwrap_or_else(|| self.io.stats());
        let steer = self.io.steering();
        XdpReport {
            iface: self.io.iface().to_string(),
            xdp_mode: steer.map_or("no program".to_string(), |s| s.mode().to_string()),
            spread: self.spread,
            threads: self.threads,
            queues: st.queues,
            reordered: st.reordered,
            steer: steer.and_then(|s| s.counters().ok()).unwrap_or_default(),
            kernel_answers: self.io.answers().map(|a| a.received()),
            kernel_answer_ports: self.io.answers().map(|a| a.ports()).unwrap_or_default(),
            bad_frames: st.bad_frames,
            notice: steer.and_then(|s| s.notice()).map(str::to_string),
        }
    }

    /// Who drives the sockets: "session thread", or the workers' queue -> core map.
    fn thread_map(&self) -> String {
        let map = match self.threads {
            Threads::Session | Threads::Auto => "session thread".to_string(),
            Threads::Workers => {
                let m: Vec<String> = self
                    .io
                    .queues()
                    .iter()
                    .zip(self.worker_cpus.iter().copied())
                    .map(|(q, c)| match c {
                        Some(c) => format!("q{q}->cpu{c}"),
                        None => format!("q{q}->unpinned"),
                    })
                    .collect();
                format!("workers {}", m.join(" "))
            }
        };
        match &self.threads_why {
            Some(w) => format!("{map} ({w})"),
            None => map,
        }
    }

    /// The summary or the failure, with the report, once the run is over (sockets
    /// closed, program detached by the caller dropping the side).
    fn finish<S>(
        report: XdpReport,
        r: Result<Result<S, DriverError>, XdpError>,
    ) -> Result<(S, XdpReport), XdpError> {
        match r? {
            Ok(s) => Ok((s, report)),
            Err(error) => Err(XdpError::Run {
                error: Box::new(error),
                report: Box::new(report),
            }),
        }
    }
}

/// Whether a sender with `link` takes its answers on kernel UDP: `Auto` does unless a test
/// impairment (a program feature) is asked for; `Kernel` insists and says why it cannot.
fn kernel_answers(link: &XdpLink) -> Result<bool, XdpError> {
    let impaired = link.impair_drop_ppm > 0 || link.impair_flip_ppm > 0;
    match link.answers {
        Answers::Xdp => Ok(false),
        Answers::Auto => Ok(!impaired),
        Answers::Kernel if impaired => Err(XdpError::AnswersNeedProgram(
            "loss and bit-flip injection is done by the XDP program",
        )),
        Answers::Kernel => Ok(true),
    }
}

/// The kernel UDP sockets for a sender's answers on `link`: bound to the interface's IPv4
/// address, one per flow, on ports the kernel picks (the sender's frames then leave from
/// them: [`Flow::set_src_ports`]), so no other process's port, another sender's included,
/// is in the way. Where none can be bound: an error for `Kernel`, and for `Auto` a note and
/// None (the program takes the answers on the steered ports).
fn bind_answers(link: &XdpLink) -> Result<Option<KernelAnswers>, XdpError> {
    let ip = iface_ipv4(&link.iface).map_err(|source| XdpError::Netdev {
        what: "IPv4 address",
        iface: link.iface.clone(),
        source,
    })?;
    match KernelAnswers::bind_any(ip, flow::sender_flows(link.spread, link.ports)) {
        Ok(a) => Ok(Some(a)),
        Err(source) if link.answers == Answers::Kernel => Err(XdpError::Answers { ip, source }),
        Err(e) => {
            tracing::info!(
                "answers: no UDP socket on {ip} for them ({e}); they come through the XDP program instead"
            );
            Ok(None)
        }
    }
}

/// Whether a frame of `mtu` (plus Ethernet, IPv4 and UDP headers) fits a UMEM frame of `xc`.
fn fits(mtu: usize, xc: &XskConfig) -> bool {
    mtu + stack::overhead(None) <= xc.max_frame_len()
}

/// The frame path a run uses (see [`Side::on_path`]), marking the first frames.
struct XdpPath<'a, 'w> {
    kind: PathKind<'a, 'w>,
    marks: &'a StartMarks,
}

enum PathKind<'a, 'w> {
    Session(SessionPath<'a>),
    Workers(&'a mut WorkerSet<'w>),
}

impl FramePath for XdpPath<'_, '_> {
    fn transmit<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> Result<(usize, bool), DriverError> {
        let r = match &mut self.kind {
            PathKind::Session(p) => p.transmit(ep, now, budget),
            PathKind::Workers(p) => p.transmit(ep, now, budget),
        };
        if matches!(r, Ok((n, _)) if n > 0) {
            self.marks.first_tx();
        }
        r
    }
    fn receive<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        budget: usize,
    ) -> Result<(usize, bool), DriverError> {
        let r = match &mut self.kind {
            PathKind::Session(p) => p.receive(ep, budget),
            PathKind::Workers(p) => p.receive(ep, budget),
        };
        if matches!(r, Ok((n, _)) if n > 0) {
            self.marks.first_rx();
        }
        r
    }
    fn wait(&mut self, d: Duration) -> Result<(), DriverError> {
        match &mut self.kind {
            PathKind::Session(p) => p.wait(d),
            PathKind::Workers(p) => p.wait(d),
        }
    }
    fn flush(&mut self) {
        match &mut self.kind {
            PathKind::Session(p) => p.flush(),
            PathKind::Workers(p) => p.flush(),
        }
    }
    fn batch(&self) -> usize {
        match &self.kind {
            PathKind::Session(p) => p.batch(),
            PathKind::Workers(p) => p.batch(),
        }
    }
    fn peer(&self) -> Option<SocketAddr> {
        match &self.kind {
            PathKind::Session(p) => p.peer(),
            PathKind::Workers(p) => p.peer(),
        }
    }
}

fn pin(cpu: Option<usize>) {
    if let Some(c) = cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
            tracing::warn!("could not pin the session thread to core {c}");
        }
    }
}

/// Send `files` over AF_XDP. Run in the network namespace of `cfg.link.iface`.
pub fn run_sender(
    cfg: &XdpSendConfig,
    files: Vec<SendFile>,
    snapshot_id: [u8; 32],
    snapshot: &[u8],
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(SendSummary, XdpReport), XdpError> {
    let input = SendInput::Planned {
        coded: Vec::new(),
        files,
        snapshot,
        meta: Vec::new(),
    };
    XdpSender::open(cfg.clone())?.run(input, snapshot_id, cancel, on_event)
}

/// A sender with its addresses resolved, program attached and sockets bound, before it
/// runs: opening it needs nothing of the files, so a caller can open it while it plans
/// them (it is `Send`: open it on another thread of the same network namespace).
pub struct XdpSender {
    cfg: XdpSendConfig,
    side: Side,
}

impl XdpSender {
    /// Resolve the addresses (the interface's MAC and IPv4, the peer's MAC), attach and
    /// bind. Run in the network namespace of `cfg.link.iface`.
    pub fn open(cfg: XdpSendConfig) -> Result<Self, XdpError> {
        let marks = StartMarks::new("send", cfg.origin);
        let resolve = |marks: &StartMarks| -> Result<Flow, XdpError> {
            let iface = &cfg.link.iface;
            let netdev = |what, source| XdpError::Netdev {
                what,
                iface: iface.clone(),
                source,
            };
            let src_mac = iface_mac(iface).map_err(|e| netdev("MAC address", e))?;
            let src_ip = iface_ipv4(iface).map_err(|e| netdev("IPv4 address", e))?;
            let dst_mac = match cfg.dst_mac {
                Some(m) => m,
                None => resolve_mac(cfg.dst, iface).map_err(|e| netdev("the peer's MAC", e))?,
            };
            marks.mark("addresses resolved");
            let hdr = Addrs {
                src_mac,
                dst_mac,
                vlan: None,
                src_ip,
                dst_ip: cfg.dst,
                src_port: cfg.link.port,
                dst_port: cfg.link.port,
            };
            Ok(Flow::sender(
                hdr,
                cfg.link.spread,
                cfg.link.ports,
                cfg.mtu,
                random_u64() as u16,
            ))
        };
        let side = Side::open(&cfg.link, cfg.mtu, resolve, marks, true)?;
        Ok(XdpSender { cfg, side })
    }

    /// Send `input` (files planned whole into the snapshot `snapshot_id`, or streamed by a
    /// producer while the session runs) on whichever thread model the link asks for.
    pub fn run(
        mut self,
        input: SendInput<'_>,
        snapshot_id: [u8; 32],
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<(SendSummary, XdpReport), XdpError> {
        let mut s = SendSession::new(
            self.cfg.proto.clone(),
            self.cfg.mtu,
            self.cfg.rate,
            snapshot_id,
            input,
            self.cfg.origin,
            self.cfg.security.clone(),
            self.cfg.guard.clone(),
        )?;
        pin(self.cfg.link.cpu);
        let r = self
            .side
            .on_path(|p| session::run_sender(&mut s, p, cancel, on_event));
        let report = self.side.report();
        drop(self.side); // sockets closed, program detached
        Side::finish(report, r)
    }
}

/// A receiver with its program attached and sockets bound, before it runs.
pub struct XdpReceiver {
    cfg: XdpRecvConfig,
    side: Side,
}

impl XdpReceiver {
    /// Attach and bind. Run in the network namespace of `cfg.link.iface`.
    pub fn bind(cfg: XdpRecvConfig) -> Result<Self, XdpError> {
        let l = &cfg.link;
        let flow = |_: &StartMarks| {
            Ok(Flow::receiver(
                l.spread,
                l.port,
                l.ports,
                cfg.mtu,
                random_u64() as u16,
            ))
        };
        let side = Side::open(l, cfg.mtu, flow, StartMarks::new("recv", cfg.origin), false)?;
        Ok(XdpReceiver { cfg, side })
    }

    /// The bound queues.
    pub fn queues(&self) -> Vec<u32> {
        self.side.io.queues()
    }

    /// Who will drive the sockets: "session thread", or the workers' queue -> core map.
    pub fn thread_map(&self) -> String {
        self.side.thread_map()
    }

    /// The attach mode actually used and the fallback notice, if any (a receiver always
    /// has its program).
    pub fn xdp_mode(&self) -> (XdpMode, Option<&str>) {
        match self.side.io.steering() {
            Some(s) => (s.mode(), s.notice()),
            None => (XdpMode::Auto, None),
        }
    }

    /// The link it was bound with (interface, ports, queues asked for).
    pub fn link(&self) -> &XdpLink {
        &self.cfg.link
    }

    /// Serve many sessions (the receiver service) over these sockets, the service loop on
    /// the calling thread, until it stops: `run` gets the service (over the session
    /// thread's sockets, or over the per-queue workers, started here for the service's life
    /// and stopped after it). The program stays attached and the sockets bound until this
    /// returns (on every path).
    pub fn serve<R>(self, cfg: ServiceConfig, run: impl ServeWith<R>) -> Result<R, XdpError> {
        pin(self.cfg.link.cpu);
        let reorder = (self.side.io.queues().len() > 1).then_some(REORDER_WINDOW);
        let mut side = self.side;
        if side.threads != Threads::Workers || side.io.queues().is_empty() {
            let Side { io, flow, .. } = side;
            return Ok(run.serve(Service::new(cfg, XdpServiceIo::new(io, flow, reorder))));
        }
        let template = side.flow.clone();
        let (r, _) = workers::run(
            &mut side.io,
            &mut side.flow,
            &side.worker_cpus,
            side.frames_per_socket,
            side.batch,
            |set| {
                let io = workers::WorkersServiceIo::new(set, template, reorder);
                run.serve(Service::new(cfg, io))
            },
        )
        .map_err(XdpError::Workers)?;
        Ok(r)
    }

    /// Receive one session into `cfg.out_dir`.
    pub fn run(
        mut self,
        snapshot_id: [u8; 32],
        snapshot: &[u8],
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<(RecvSummary, XdpReport), XdpError> {
        let mut pc = self.cfg.proto.clone();
        if self.side.io.queues().len() > 1 && pc.reorder_window.is_zero() {
            // Queues drained independently deliver frames out of order: not loss.
            pc.reorder_window = REORDER_WINDOW;
        }
        let mut receiver = session::file_receiver(
            pc,
            self.cfg.mtu,
            &self.cfg.out_dir,
            snapshot_id,
            snapshot,
            &self.cfg.security,
        )?;
        pin(self.cfg.link.cpu);
        let timeout = self.cfg.listen_timeout;
        let (sec, guard) = (&self.cfg.security, &self.cfg.guard);
        let r = self.side.on_path(|p| {
            session::run_receiver(&mut receiver, p, timeout, sec, guard, cancel, on_event)
        });
        let report = self.side.report();
        drop(self.side);
        Side::finish(report, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2 KiB frame carries a 1500-MTU frame plus the XDP headroom; what no longer fits a
    /// 2 KiB frame fits the default 4 KiB one; beyond that the error names the sizes.
    #[test]
    fn mtu_against_frame_sizes() {
        assert_eq!(SMALL_XSK.frame_size, 2048);
        SMALL_XSK.validate().unwrap();
        assert!(fits(1500, &SMALL_XSK), "1500 + headers must fit 2048 - 256");
        assert!(2048 > 1514 + 256);
        let max_small = SMALL_XSK.max_frame_len() - stack::overhead(None);
        assert!(fits(max_small, &SMALL_XSK));
        assert!(!fits(max_small + 1, &SMALL_XSK));
        assert!(fits(max_small + 1, &XskConfig::default()));
        let max_big = XskConfig::default().max_frame_len() - stack::overhead(None);
        assert_eq!(max_big, 3798, "the MtuTooLarge text names this limit");
        assert!(!fits(max_big + 1, &XskConfig::default()));
        let e = XdpError::MtuTooLarge {
            mtu: 9000,
            frame_size: 4096,
            usable: 3840,
            need: 9042,
        }
        .to_string();
        assert!(
            e.contains("MTU 9000") && e.contains("9042") && e.contains("3840"),
            "{e}"
        );
        assert!(e.contains("lower --mtu"), "{e}");
    }

    /// The small UMEM differs from the default only in its frame size (and so its bytes)
    /// and its batch (a whole ring batch per kick).
    #[test]
    fn small_umem_is_the_default_in_2k_frames() {
        let d = XskConfig::default();
        assert_eq!(
            XskConfig {
                frame_size: 2048,
                batch: 256,
                ..d
            },
            SMALL_XSK
        );
        SMALL_XSK.validate().unwrap();
        assert_eq!(SMALL_XSK.umem_bytes() * 2, d.umem_bytes());
    }
}
