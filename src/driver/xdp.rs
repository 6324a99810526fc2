//! The AF_XDP driver (`--transport xdp`): the [`crate::proto`] state machines over AF_XDP
//! sockets behind the XDP steering program.
//!
//! Each side attaches [`Steering`] to its interface with the PacketFS port range and binds
//! one [`XskSocket`] per queue it uses, put into the XSKMAP entry of that queue (the sender
//! too: the receiver's Accept, Acks and Nacks come back through it). One session thread owns
//! every socket of the session and the endpoint, so the data path takes no lock:
//!
//! - receive: [`XskSocket::recv_batch`] hands each UMEM frame in place;
//!   [`wire::stack::parse`] finds the PacketFS datagram and the endpoint consumes it straight
//!   from the UMEM (the receiver applies its pieces from there into the output file's map);
//! - transmit: [`XskSocket::send_batch`] gives a UMEM frame, `poll_transmit` writes the
//!   datagram behind the header room and [`wire::stack::emit_headers`] fills in Ethernet,
//!   IPv4 and UDP in front. No intermediate buffer on either path.
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
//! The steering program detaches when [`Steering`] drops: at the end of a run, on error, on
//! SIGINT/SIGTERM (the cancel flag ends the loop cleanly) and, through the BPF link, when
//! the process dies.

use super::udp::{
    finish_receiver, finish_sender, random_u64, DriverError, RecvSummary, SendSummary,
};
use super::xdp_workers::{self, WorkerSet, WorkerShared, WorkerStats};
use super::{DriveOptions, Stop};
use crate::fsink::MmapSink;
use crate::proto::{
    datagram_for_mtu, Endpoint, Event, Receiver, ReceiverConfig, SendFile, Sender, SenderConfig,
};
use crate::steer::{Counters, PortRange, SteerError, Steering, XdpMode};
use crate::wire::stack::{self, Addrs};
use crate::xsk::{self, XskConfig, XskError, XskSocket, XskStats};
use serde::Serialize;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Frames moved per batch before the loop looks at the other direction.
pub(super) const BATCH: usize = 64;
/// How late a frame may be, on a receiver bound to several queues, before its hole is
/// NACKed ([`ReceiverConfig::reorder_window`]).
pub const REORDER_WINDOW: Duration = Duration::from_millis(10);
/// The UMEM and rings of a worker's socket when the defaults were not changed and the MTU
/// fits a 2 KiB frame: 8192 frames of 2 KiB (16 MiB), rings of 4096.
const WORKER_XSK: XskConfig = XskConfig {
    frame_size: 2048,
    frame_count: 8192,
    ring_size: 4096,
    batch: 64,
    bind: xsk::BindMode::Auto,
    huge_pages: false,
};
/// The longest a loop sleeps before it looks at the cancel flag again.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// How a session is spread over queues and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// One session round-robin over every queue of the interface.
    Scatter,
    /// Round-robin over an explicit queue list.
    Queues,
    /// One UDP port per queue's flow (`port + k`), so RSS spreads the flows.
    Ports,
}

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
    /// Pin the session thread to this core (core_affinity).
    pub cpu: Option<usize>,
    /// Threads: one worker per queue (default) or the session thread alone.
    pub threads: Threads,
    /// Cores for the workers, round-robin (empty: every core of the machine).
    pub cpus: Vec<usize>,
}

/// Who drives the sockets of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Threads {
    /// One pinned worker thread per queue owns its socket; the session thread runs the
    /// state machine and exchanges UMEM frames with the workers through lock-free queues.
    Workers,
    /// The session thread owns every socket and does everything (no other thread).
    Session,
    /// Workers when every queue's worker gets a core of its own besides the session thread's
    /// (or `cpus` names the workers' cores), else the session thread alone. Measured on the
    /// 2-core machine of this project with 2 queues: the session thread alone moved 2.46-2.92
    /// Gbit/s of raw data, the workers 1.80-2.57 (three busy threads on two cores).
    Auto,
}

impl Threads {
    /// Resolve `Auto` for `queues` sockets with `cores` usable cores (`explicit_cpus`: the
    /// caller named the workers' cores). Returns the choice and, for `Auto`, why.
    pub fn resolve(
        self,
        queues: usize,
        cores: usize,
        explicit_cpus: bool,
    ) -> (Threads, Option<String>) {
        match self {
            Threads::Auto if explicit_cpus => (
                Threads::Workers,
                Some("auto: workers on the cores --cpus names".into()),
            ),
            Threads::Auto if queues >= 2 && cores > queues => (
                Threads::Workers,
                Some(format!("auto: {queues} queues, {cores} cores: a core per worker and one for the session")),
            ),
            Threads::Auto => (
                Threads::Session,
                Some(format!(
                    "auto: {queues} queue(s) on {cores} core(s): workers would share cores with the session thread (--xdp-threads workers forces them)"
                )),
            ),
            t => (t, None),
        }
    }
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
            cpu: None,
            threads: Threads::Auto,
            cpus: Vec::new(),
        }
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
}

/// Receiver settings for the AF_XDP driver.
#[derive(Debug, Clone)]
pub struct XdpRecvConfig {
    pub link: XdpLink,
    pub out_dir: PathBuf,
    pub mtu: usize,
    pub listen_timeout: Option<Duration>,
    pub proto: ReceiverConfig,
}

/// XDP_STATISTICS of one socket.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueueStats {
    pub queue: u32,
    /// Frames this socket received and sent.
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub xdp: XskStats,
    /// The worker that owned this queue's socket (None when the session thread did).
    pub worker: Option<WorkerStats>,
}

/// What the AF_XDP layer saw during a run (printed with the summaries).
#[derive(Debug, Clone, Serialize)]
pub struct XdpReport {
    pub iface: String,
    pub xdp_mode: String,
    pub spread: Spread,
    pub threads: Threads,
    pub queues: Vec<QueueStats>,
    /// Received frames that reached the session thread after a higher sequence number
    /// (before it put each gathered round in order; workers only).
    pub reordered: u64,
    /// The steering program's counters on this side's interface.
    pub steer: Counters,
    /// Frames that reached a socket but were not Ethernet/IPv4/UDP with valid checksums.
    pub bad_frames: u64,
    /// Why native XDP was refused, if it was.
    pub notice: Option<String>,
}

impl XdpReport {
    /// Sum of XDP_STATISTICS over the queues.
    pub fn xdp_totals(&self) -> XskStats {
        let mut t = XskStats::default();
        for q in &self.queues {
            t.rx_dropped += q.xdp.rx_dropped;
            t.rx_invalid_descs += q.xdp.rx_invalid_descs;
            t.tx_invalid_descs += q.xdp.tx_invalid_descs;
            t.rx_ring_full += q.xdp.rx_ring_full;
            t.fill_ring_empty += q.xdp.fill_ring_empty;
            t.tx_ring_empty += q.xdp.tx_ring_empty;
        }
        t
    }
}

/// What can go wrong setting up or running the AF_XDP driver.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(transparent)]
    Steer(Box<SteerError>),
    #[error(transparent)]
    Xsk(Box<XskError>),
    #[error("{0}")]
    Setup(String),
    /// The session ran (and may have failed); the report says what the AF_XDP layer saw.
    #[error("{error}")]
    Run {
        error: DriverError,
        report: Box<XdpReport>,
    },
}

impl From<SteerError> for XdpError {
    fn from(e: SteerError) -> Self {
        XdpError::Steer(Box::new(e))
    }
}

impl From<XskError> for XdpError {
    fn from(e: XskError) -> Self {
        XdpError::Xsk(Box::new(e))
    }
}

/// The rx queue count of `iface` (`/sys/class/net/IF/queues/rx-*`).
pub fn rx_queue_count(iface: &str) -> io::Result<u32> {
    let dir = format!("/sys/class/net/{iface}/queues");
    let n = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    Ok(n.max(1) as u32)
}

/// The MAC address of `iface`.
pub fn iface_mac(iface: &str) -> io::Result<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    parse_mac(s.trim()).ok_or_else(|| io::Error::other(format!("bad MAC {s:?} on {iface}")))
}

/// The first IPv4 address of `iface`.
pub fn iface_ipv4(iface: &str) -> io::Result<Ipv4Addr> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    for a in addrs {
        if a.interface_name != iface {
            continue;
        }
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            return Ok(sin.ip());
        }
    }
    Err(io::Error::other(format!("{iface} has no IPv4 address")))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut n = 0;
    for (i, part) in s.split(':').enumerate() {
        if i >= 6 || part.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6).then_some(mac)
}

/// The MAC of `ip` in the kernel neighbour table (/proc/net/arp) on `iface`, if complete.
fn arp_lookup(ip: Ipv4Addr, iface: &str) -> Option<[u8; 6]> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    // IP address  HW type  Flags  HW address  Mask  Device
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let complete = f.get(2).is_some_and(|fl| *fl != "0x0");
        (f.len() >= 6 && f[0] == ip.to_string() && f[5] == iface && complete)
            .then(|| parse_mac(f[3]))
            .flatten()
    })
}

/// The peer's MAC from the neighbour table; when missing, one kernel UDP datagram to the
/// peer's discard port (9) makes the kernel resolve it (ARP), waited for up to 2 s.
pub fn resolve_mac(ip: Ipv4Addr, iface: &str) -> io::Result<[u8; 6]> {
    if let Some(m) = arp_lookup(ip, iface) {
        return Ok(m);
    }
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let _ = s.send_to(b"pfs-arp", SocketAddrV4::new(ip, 9));
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if let Some(m) = arp_lookup(ip, iface) {
            return Ok(m);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(io::Error::other(format!(
        "no neighbour entry for {ip} on {iface} after an ARP attempt: pass --dst-mac"
    )))
}

/// The steering program and the sockets of one side.
pub struct XdpIo {
    // Field order is drop order: sockets leave the XSKMAP before the program detaches.
    socks: Vec<XskSocket>,
    rx_frames: Vec<u64>,
    tx_frames: Vec<u64>,
    steer: Steering,
    spread: Spread,
    port: u16,
    nports: u16,
    /// Header template for frames we send: src = us, dst = peer (None until learnt).
    pub(super) hdr: Option<Addrs>,
    /// Socket index answers go out on (the receiver's: the queue it last heard from).
    pub(super) reply: usize,
    /// Round-robin cursor over sockets for data.
    pub(super) next: usize,
    pub(super) ident: u16,
    bad_frames: u64,
    /// The last frame handed to the endpoint: its addresses and socket index.
    pub(super) last: Option<(Addrs, usize)>,
    pub(super) is_sender: bool,
    pub(super) mtu: usize,
    threads: Threads,
    /// Why `Auto` chose `threads` (printed with the thread map).
    threads_why: Option<String>,
    /// The core of each socket's worker (chosen when the sockets are bound, before the
    /// session thread is pinned: a pinned thread sees only its own core).
    worker_cpus: Vec<Option<usize>>,
    frames_per_socket: usize,
    batch: usize,
    /// Filled when workers owned the sockets: what each did (the sockets are gone then).
    worker_report: Option<(Vec<QueueStats>, u64, u64)>,
}

impl XdpIo {
    /// Attach the program to `link.iface`, steer the port range and bind one socket per
    /// queue. Run in the interface's network namespace.
    pub fn open(link: &XdpLink, mtu: usize, is_sender: bool) -> Result<Self, XdpError> {
        let frame_cap = link.xsk.max_frame_len();
        if mtu + stack::overhead(None) > frame_cap {
            return Err(XdpError::Setup(format!(
                "MTU {mtu} does not fit a {} B UMEM frame ({frame_cap} B usable)",
                link.xsk.frame_size
            )));
        }
        if link.ports == 0 || link.port.checked_add(link.ports - 1).is_none() {
            return Err(XdpError::Setup(format!(
                "port range {}+{} is empty or beyond 65535",
                link.port, link.ports
            )));
        }
        let nq = rx_queue_count(&link.iface)
            .map_err(|e| XdpError::Setup(format!("queues of {}: {e}", link.iface)))?;
        let queues: Vec<u32> = match link.spread {
            Spread::Queues if !link.queues.is_empty() => link.queues.clone(),
            Spread::Queues => {
                return Err(XdpError::Setup(
                    "--mode queues needs --queues (e.g. --queues 0,1)".into(),
                ))
            }
            _ if !link.queues.is_empty() => link.queues.clone(),
            _ => (0..nq).collect(),
        };
        if let Some(q) = queues.iter().find(|q| **q >= nq) {
            return Err(XdpError::Setup(format!(
                "queue {q} is beyond the {nq} rx queue(s) of {}",
                link.iface
            )));
        }
        let mut steer = Steering::attach(&link.iface, link.xdp_mode)?;
        steer.set_ports(PortRange::new(link.port, link.ports))?;
        if link.impair_drop_ppm > 0 {
            steer.set_impairment(link.impair_drop_ppm)?;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (threads, why) = link
            .threads
            .resolve(queues.len(), cores, !link.cpus.is_empty());
        if let Some(w) = &why {
            tracing::info!("xdp threads: {w}");
        }
        let mut xc = link.xsk;
        if threads == Threads::Workers
            && xc == XskConfig::default()
            && mtu + stack::overhead(None) <= WORKER_XSK.max_frame_len()
        {
            // Frames wait in the workers' hand-over queues as well as on the rings: a
            // deeper fill ring (in 2 KiB frames, as much memory) rides out a session thread
            // that lost its core for a while.
            xc = WORKER_XSK;
        }
        let mut socks = Vec::with_capacity(queues.len());
        for &q in &queues {
            let s = XskSocket::new(&link.iface, q, &xc)?;
            steer.set_socket(q, &s)?;
            socks.push(s);
        }
        tracing::info!(iface = %link.iface, ?queues, mode = %steer.mode(), spread = ?link.spread, "AF_XDP sockets bound");
        let n = socks.len();
        Ok(XdpIo {
            socks,
            rx_frames: vec![0; n],
            tx_frames: vec![0; n],
            steer,
            spread: link.spread,
            port: link.port,
            nports: link.ports,
            hdr: None,
            reply: 0,
            next: 0,
            ident: random_u64() as u16,
            bad_frames: 0,
            last: None,
            is_sender,
            mtu,
            threads,
            threads_why: why,
            worker_cpus: xdp_workers::worker_cpus(n, &link.cpus),
            frames_per_socket: xc.frame_count as usize,
            batch: xc.batch as usize,
            worker_report: None,
        })
    }

    /// The bound queues.
    pub fn queues(&self) -> Vec<u32> {
        self.socks.iter().map(|s| s.queue()).collect()
    }

    /// The steering program (counters, notice).
    pub fn steering(&self) -> &Steering {
        &self.steer
    }

    /// The peer as a socket address, once known.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.hdr
            .map(|h| SocketAddr::V4(SocketAddrV4::new(h.dst_ip, h.dst_port)))
    }

    /// What the AF_XDP layer saw so far.
    pub fn report(&self) -> XdpReport {
        let (queues, bad, reordered) = match &self.worker_report {
            Some((q, bad, r)) => (q.clone(), *bad, *r),
            None => (
                self.socks
                    .iter()
                    .enumerate()
                    .map(|(i, s)| QueueStats {
                        queue: s.queue(),
                        rx_frames: self.rx_frames[i],
                        tx_frames: self.tx_frames[i],
                        xdp: s.stats().unwrap_or_default(),
                        worker: None,
                    })
                    .collect(),
                self.bad_frames,
                0,
            ),
        };
        XdpReport {
            iface: self.steer.iface().to_string(),
            xdp_mode: self.steer.mode().to_string(),
            spread: self.spread,
            threads: self.threads,
            queues,
            reordered,
            steer: self.steer.counters().unwrap_or_default(),
            bad_frames: bad,
            notice: self.steer.notice().map(str::to_string),
        }
    }

    /// While the peer is unknown, what the endpoint sends is dropped (like a UDP socket
    /// without a peer).
    pub(super) fn transmit_unaddressed<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> (usize, bool) {
        let mut scratch = vec![0u8; datagram_for_mtu(self.mtu)];
        let mut n = 0;
        while n < budget {
            if ep.poll_transmit(now, &mut scratch).is_none() {
                return (n, true);
            }
            n += 1;
        }
        (n, false)
    }

    /// The addresses of frames sent on `queue`: in `ports` mode the sender gives each
    /// queue's flow its own port, both ends (the receiver answers to it).
    pub(super) fn flow_addrs(&self, base: Addrs, queue: u32) -> Addrs {
        let mut a = base;
        if self.is_sender && self.spread == Spread::Ports {
            let k = (queue % self.nports as u32) as u16;
            a.src_port = self.port + k;
            a.dst_port = self.port + k;
        }
        a
    }

    /// Transmit up to `budget` datagrams from `ep`, building them in UMEM frames. Returns
    /// how many went out and whether the endpoint ran out of datagrams.
    fn transmit<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> (usize, bool) {
        let Some(base) = self.hdr else {
            return self.transmit_unaddressed(ep, now, budget);
        };
        let oh = stack::overhead(base.vlan);
        let dgram_max = datagram_for_mtu(self.mtu);
        let mut sent = 0;
        let mut exhausted = false;
        let mut stalls = 0;
        while sent < budget && !exhausted && stalls < self.socks.len() {
            let i = if self.is_sender {
                self.next
            } else {
                self.reply
            };
            let a = self.flow_addrs(base, self.socks[i].queue());
            let ident = &mut self.ident;
            let n = self.socks[i].send_batch(budget - sent, |_, buf| {
                let Some(len) = ep.poll_transmit(now, &mut buf[oh..oh + dgram_max]) else {
                    exhausted = true;
                    return 0;
                };
                *ident = ident.wrapping_add(1);
                stack::emit_headers(&a, len, *ident, buf) + len
            });
            self.tx_frames[i] += n as u64;
            sent += n;
            if n == 0 {
                stalls += 1;
            }
            if self.is_sender && self.socks.len() > 1 {
                self.next = (self.next + 1) % self.socks.len();
            } else if n == 0 {
                break;
            }
        }
        (sent, exhausted)
    }

    /// Receive up to `budget` frames from every socket into `ep`; returns the frames seen
    /// and whether any datagram was accepted by the endpoint.
    fn receive<E: Endpoint + ?Sized>(&mut self, ep: &mut E, budget: usize) -> (usize, bool) {
        let mut got = 0;
        let mut accepted = false;
        for i in 0..self.socks.len() {
            let t = Instant::now();
            let bad = &mut self.bad_frames;
            let last = &mut self.last;
            let n = self.socks[i].recv_batch(|f| match stack::parse(f) {
                Ok((addrs, d)) => {
                    if ep.handle_datagram(t, d) {
                        accepted = true;
                        *last = Some((addrs, i));
                    }
                }
                Err(_) => *bad += 1,
            });
            self.rx_frames[i] += n as u64;
            got += n;
            if got >= budget {
                break;
            }
        }
        if accepted {
            self.accept_last();
        }
        (got, accepted)
    }

    /// The last accepted frame came from the session's peer: answer it there.
    pub(super) fn accept_last(&mut self) {
        let Some((a, i)) = self.last.take() else {
            return;
        };
        if self.is_sender {
            return;
        }
        self.reply = i;
        if self.hdr.is_none() {
            self.hdr = Some(Addrs {
                src_mac: a.dst_mac,
                dst_mac: a.src_mac,
                vlan: a.vlan,
                src_ip: a.dst_ip,
                dst_ip: a.src_ip,
                src_port: a.dst_port,
                dst_port: a.src_port,
            });
        }
    }

    /// Push out what is still on the tx rings (the last Close or Abort).
    fn flush(&mut self) {
        for s in &mut self.socks {
            s.flush(Duration::from_millis(200));
        }
    }
}

/// What the session loop needs from the sockets: the session thread's own ([`XdpIo`],
/// `Threads::Session`) or the per-queue workers' ([`WorkerSet`]).
pub(super) trait FramePath {
    /// Up to `budget` datagrams from `ep` onto the wire; (sent, endpoint ran dry).
    fn transmit<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> (usize, bool);
    /// Received frames into `ep`; (frames, any accepted).
    fn receive<E: Endpoint + ?Sized>(&mut self, ep: &mut E, budget: usize) -> (usize, bool);
    /// Sleep up to `d`, waking early when frames arrive.
    fn wait(&mut self, d: Duration) -> Result<(), XdpError>;
    /// Push out what is still queued (the last Close or Abort).
    fn flush(&mut self);
}

impl FramePath for XdpIo {
    fn transmit<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> (usize, bool) {
        XdpIo::transmit(self, ep, now, budget)
    }
    fn receive<E: Endpoint + ?Sized>(&mut self, ep: &mut E, budget: usize) -> (usize, bool) {
        XdpIo::receive(self, ep, budget)
    }
    fn wait(&mut self, d: Duration) -> Result<(), XdpError> {
        if !d.is_zero() {
            xsk::wait_any(&mut self.socks, d)?;
        }
        Ok(())
    }
    fn flush(&mut self) {
        XdpIo::flush(self)
    }
}

impl FramePath for WorkerSet<'_> {
    fn transmit<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> (usize, bool) {
        WorkerSet::transmit(self, ep, now, budget)
    }
    fn receive<E: Endpoint + ?Sized>(&mut self, ep: &mut E, budget: usize) -> (usize, bool) {
        WorkerSet::receive(self, ep, budget)
    }
    fn wait(&mut self, d: Duration) -> Result<(), XdpError> {
        WorkerSet::wait(self, d);
        Ok(())
    }
    fn flush(&mut self) {} // the workers flush their tx rings when stopped
}

/// Runs `ep` over the sockets of `io` until it closes (the AF_XDP twin of
/// [`super::drive`], with the same order of calls: timers, transmit, events, receive until
/// the next deadline). With `Threads::Workers` one pinned worker thread per queue takes
/// over its socket for the run (see [`super::xdp_workers`]).
pub fn drive_xdp<E: Endpoint + ?Sized>(
    ep: &mut E,
    io: &mut XdpIo,
    opts: &DriveOptions,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Stop, XdpError> {
    if io.threads == Threads::Session || io.socks.is_empty() {
        return drive_path(ep, io, opts, cancel, on_event);
    }
    let socks = std::mem::take(&mut io.socks);
    let cpus = io.worker_cpus.clone();
    let shared = socks
        .iter()
        .zip(&cpus)
        .map(|(s, c)| WorkerShared::new(s, io.frames_per_socket, *c))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| XdpError::Setup(format!("worker eventfd: {e}")))?;
    let map: Vec<String> = shared
        .iter()
        .zip(&cpus)
        .map(|(w, c)| match c {
            Some(c) => format!("q{}->cpu{c}", w.queue()),
            None => format!("q{}->unpinned", w.queue()),
        })
        .collect();
    tracing::info!(workers = %map.join(" "), "AF_XDP workers");
    let session = std::thread::current();
    let batch = io.batch;
    let (r, reordered) = std::thread::scope(|sc| {
        let mut spawn_err = None;
        for (sock, sh) in socks.into_iter().zip(&shared) {
            let session = session.clone();
            let b = std::thread::Builder::new().name(format!("pfs-xsk-q{}", sh.queue()));
            if let Err(e) = b.spawn_scoped(sc, move || {
                xdp_workers::run_worker(sock, sh, session, batch)
            }) {
                spawn_err = Some(e);
                break;
            }
        }
        let out = match spawn_err {
            Some(e) => (
                Err(XdpError::Setup(format!("spawning AF_XDP workers: {e}"))),
                0,
            ),
            None => {
                let mut set = WorkerSet::new(&shared, io);
                let r = drive_path(ep, &mut set, opts, cancel, on_event);
                (r, set.reordered)
            }
        };
        for sh in &shared {
            sh.stop();
        }
        out
    });
    // Every worker has ended: its socket is closed (out of the XSKMAP), stats read.
    let mut bad = 0;
    let queues = shared
        .iter()
        .map(|w| {
            let (rx, tx, b) = w.frames();
            bad += b;
            QueueStats {
                queue: w.queue(),
                rx_frames: rx,
                tx_frames: tx,
                xdp: w.xdp_stats(),
                worker: Some(w.stats()),
            }
        })
        .collect();
    io.worker_report = Some((queues, bad, reordered));
    r
}

fn drive_path<E: Endpoint + ?Sized, P: FramePath>(
    ep: &mut E,
    io: &mut P,
    opts: &DriveOptions,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Stop, XdpError> {
    let start = Instant::now();
    let mut cancelled = false;
    let mut accepted_any = false;
    let mut busy = false;
    let _ = nix::sys::prctl::set_timerslack(1_000);
    loop {
        let now = Instant::now();
        if !cancelled && cancel.load(Ordering::Relaxed) {
            cancelled = true;
            ep.cancel(now);
        }
        if ep.poll_timeout().is_some_and(|t| t <= now) {
            ep.handle_timeout(now);
        }
        let (sent, exhausted) = io.transmit(ep, now, BATCH);
        while let Some(e) = ep.poll_event() {
            on_event(&e);
        }
        if ep.is_closed() {
            io.flush();
            return Ok(Stop::Closed);
        }
        if !accepted_any {
            if let Some(t) = opts.first_datagram_timeout {
                if now >= start + t {
                    return Ok(Stop::NoPeer);
                }
            }
        }
        let (got, accepted) = io.receive(ep, BATCH);
        accepted_any |= accepted;
        // Work left on either side (or a tx ring that was full): go round again at once.
        let more = busy || got > 0 || (sent > 0 && !exhausted) || sent == BATCH;
        busy = got >= BATCH;
        if more {
            continue;
        }
        let now = Instant::now();
        let until = ep
            .poll_timeout()
            .map_or(now + MAX_SLEEP, |d| d.min(now + MAX_SLEEP));
        io.wait(until.saturating_duration_since(now))?;
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
    let iface = &cfg.link.iface;
    let setup = |what: &str, e: io::Error| XdpError::Setup(format!("{what} of {iface}: {e}"));
    let src_mac = iface_mac(iface).map_err(|e| setup("MAC address", e))?;
    let src_ip = iface_ipv4(iface).map_err(|e| setup("IPv4 address", e))?;
    let dst_mac = match cfg.dst_mac {
        Some(m) => m,
        None => resolve_mac(cfg.dst, iface).map_err(|e| XdpError::Setup(e.to_string()))?,
    };
    let mut pc = cfg.proto.clone();
    if pc.session_id == 0 {
        pc.session_id = random_u64() | 1;
    }
    pc.max_datagram = datagram_for_mtu(cfg.mtu);
    pc.rate = cfg.rate.or(pc.rate);
    let session_id = pc.session_id;
    let t_pack = Instant::now();
    let mut sender = crate::prepare::prepare(files, snapshot_id, snapshot, pc.pack, &pc.pack_opts)
        .and_then(|files| Sender::new(pc, snapshot_id, files))
        .map_err(|e| XdpError::Setup(e.to_string()))?;
    let pack_time = t_pack.elapsed();
    let mut io = XdpIo::open(&cfg.link, cfg.mtu, true)?;
    io.hdr = Some(Addrs {
        src_mac,
        dst_mac,
        vlan: None,
        src_ip,
        dst_ip: cfg.dst,
        src_port: cfg.link.port,
        dst_port: cfg.link.port,
    });
    pin(cfg.link.cpu);
    let start = Instant::now();
    let mut done = None;
    let mut on_ev = super::udp::finished_clock(&mut done, on_event);
    let r = drive_xdp(
        &mut sender,
        &mut io,
        &DriveOptions::default(),
        cancel,
        &mut on_ev,
    );
    drop(on_ev);
    let elapsed = done.unwrap_or_else(Instant::now) - start;
    let report = io.report();
    drop(io); // sockets closed, program detached
    r?;
    match finish_sender(&sender, session_id, elapsed, pack_time) {
        Ok(s) => Ok((s, report)),
        Err(error) => Err(XdpError::Run {
            error,
            report: Box::new(report),
        }),
    }
}

/// A receiver with its program attached and sockets bound, before it runs.
pub struct XdpReceiver {
    cfg: XdpRecvConfig,
    io: XdpIo,
}

impl XdpReceiver {
    /// Attach and bind. Run in the network namespace of `cfg.link.iface`.
    pub fn bind(cfg: XdpRecvConfig) -> Result<Self, XdpError> {
        let io = XdpIo::open(&cfg.link, cfg.mtu, false)?;
        Ok(XdpReceiver { cfg, io })
    }

    /// The bound queues.
    pub fn queues(&self) -> Vec<u32> {
        self.io.queues()
    }

    /// Who will drive the sockets: "session thread", or the workers' queue -> core map.
    pub fn thread_map(&self) -> String {
        let map = match self.io.threads {
            Threads::Session | Threads::Auto => "session thread".to_string(),
            Threads::Workers => {
                let q = self.io.queues();
                let m: Vec<String> = q
                    .iter()
                    .zip(self.io.worker_cpus.iter().copied())
                    .map(|(q, c)| match c {
                        Some(c) => format!("q{q}->cpu{c}"),
                        None => format!("q{q}->unpinned"),
                    })
                    .collect();
                format!("workers {}", m.join(" "))
            }
        };
        match &self.io.threads_why {
            Some(w) => format!("{map} ({w})"),
            None => map,
        }
    }

    /// The attach mode actually used and the fallback notice, if any.
    pub fn xdp_mode(&self) -> (XdpMode, Option<&str>) {
        (self.io.steering().mode(), self.io.steering().notice())
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
        pc.max_datagram = datagram_for_mtu(self.cfg.mtu);
        if self.io.queues().len() > 1 && pc.reorder_window.is_zero() {
            // Queues drained independently deliver frames out of order: not loss.
            pc.reorder_window = REORDER_WINDOW;
        }
        let tag = format!("{:016x}", random_u64());
        let mut sink = MmapSink::new(&self.cfg.out_dir, &tag)
            .map_err(|e| XdpError::Setup(format!("{}: {e}", self.cfg.out_dir.display())))?;
        sink.durable = pc.durable;
        let mut receiver = Receiver::new(pc, snapshot_id, snapshot, sink);
        let opts = DriveOptions {
            first_datagram_timeout: self.cfg.listen_timeout,
        };
        pin(self.cfg.link.cpu);
        let mut start = Instant::now();
        let mut on_ev = |e: &Event| {
            if matches!(e, Event::Accepted { .. }) {
                start = Instant::now();
            }
            on_event(e)
        };
        let r = drive_xdp(&mut receiver, &mut self.io, &opts, cancel, &mut on_ev);
        let elapsed = start.elapsed();
        let report = self.io.report();
        let peer = self.io.peer();
        drop(self.io);
        if r? == Stop::NoPeer {
            return Err(XdpError::Run {
                error: DriverError::ListenTimeout(self.cfg.listen_timeout.unwrap_or_default()),
                report: Box::new(report),
            });
        }
        match finish_receiver(&receiver, peer, elapsed) {
            Ok(s) => Ok((s, report)),
            Err(error) => Err(XdpError::Run {
                error,
                report: Box::new(report),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_threads_give_each_worker_a_core_besides_the_session_thread() {
        let r = |q, c, e| Threads::Auto.resolve(q, c, e).0;
        assert_eq!(r(2, 2, false), Threads::Session);
        assert_eq!(r(2, 3, false), Threads::Workers);
        assert_eq!(r(4, 8, false), Threads::Workers);
        assert_eq!(r(1, 8, false), Threads::Session);
        assert_eq!(r(2, 2, true), Threads::Workers);
        assert_eq!(
            Threads::Workers.resolve(2, 2, false),
            (Threads::Workers, None)
        );
        assert_eq!(
            Threads::Session.resolve(4, 8, true),
            (Threads::Session, None)
        );
        assert!(Threads::Auto
            .resolve(2, 2, false)
            .1
            .unwrap()
            .contains("2 core"));
    }

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("02:00:0a:ff:10:01"), Some([2, 0, 10, 255, 16, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:10"), None);
        assert_eq!(parse_mac("02:00:0a:ff:10:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:10:01"), None);
    }

    #[test]
    fn loopback_has_queues_and_an_address() {
        if let Ok(n) = rx_queue_count("lo") {
            assert!(n >= 1);
        }
        if let Ok(ip) = iface_ipv4("lo") {
            assert!(ip.is_loopback());
        }
    }
}
