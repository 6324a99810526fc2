//! The kernel UDP socket driver (`--transport udp`): the same state machines as the AF_XDP
//! path, for hosts without XDP or privileges. [`UdpIo`] is a [`FramePath`]: the session
//! core ([`super::session`]) runs it.
//!
//! ```no_run
//! # use packetfs::driver::udp::*;
//! # use packetfs::proto::SendFile;
//! # fn demo(files: Vec<SendFile>, snap_id: [u8; 32], snap: &[u8]) -> Result<(), DriverError> {
//! let rx = UdpReceiver::bind(RecvConfig::new("127.0.0.1:0".parse().unwrap(), "/tmp/out".into()))?;
//! let addr = rx.local_addr()?;
//! // ... in another thread or host:
//! let summary = run_sender(&SendConfig::new(addr), files, snap_id, snap)?;
//! println!("{} bytes in {:?}", summary.file_bytes, summary.elapsed);
//! # Ok(()) }
//! ```

use super::session::{self, FramePath, SendSession, BATCH};
pub use super::session::{
    random_u64, DriverError, ReceivedFile, RecvSummary, SendInput, SendSummary, LINK_OVERHEAD,
};
use crate::proto::{Endpoint, Event, ReceiverConfig, SendFile, SenderConfig};
use crate::secure::{GuardConfig, Security};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// The largest datagram the socket moves.
const MAX_DGRAM: usize = 65_536;

/// A UDP socket speaking to one peer.
pub struct UdpIo {
    sock: UdpSocket,
    peer: Option<SocketAddr>,
    last_from: Option<SocketAddr>,
    nonblocking: Option<bool>,
    /// Try UDP generic segmentation offload for batches.
    gso: bool,
    /// UDP generic receive offload is on: one receive may hold many datagrams of `seg` bytes
    /// (the last may be shorter), served one by one from `rx`.
    gro: bool,
    rx: Vec<u8>,
    rx_len: usize,
    rx_pos: usize,
    rx_seg: usize,
    cmsg: Vec<u8>,
    /// Datagrams built for one transmit round, back to back, and their lengths.
    tbuf: Vec<u8>,
    lens: Vec<usize>,
    /// One received datagram at a time.
    rbuf: Vec<u8>,
}

impl UdpIo {
    /// Bind `local`; `peer` is known for a sender and learnt by a receiver. The socket
    /// buffers are raised to `buffer` bytes (beyond `rmem_max` when privileged).
    pub fn bind(local: SocketAddr, peer: Option<SocketAddr>, buffer: usize) -> io::Result<Self> {
        let sock = UdpSocket::bind(local)?;
        use nix::sys::socket::{setsockopt, sockopt};
        let fd = sock.as_fd();
        if setsockopt(&fd, sockopt::RcvBufForce, &buffer).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &buffer);
        }
        if setsockopt(&fd, sockopt::SndBufForce, &buffer).is_err() {
            let _ = setsockopt(&fd, sockopt::SndBuf, &buffer);
        }
        let gro = setsockopt(&fd, sockopt::UdpGroSegment, &true).is_ok();
        Ok(UdpIo {
            sock,
            peer,
            last_from: None,
            nonblocking: None,
            gso: true,
            gro,
            rx: vec![0u8; 65_536],
            rx_len: 0,
            rx_pos: 0,
            rx_seg: 0,
            cmsg: nix::cmsg_space!(i32),
            // Room for a batch of datagrams back to back, and always a whole maximal one more.
            tbuf: vec![0u8; 4 * MAX_DGRAM],
            lens: Vec::with_capacity(BATCH),
            rbuf: vec![0u8; MAX_DGRAM],
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Send batches one datagram at a time (no UDP GSO).
    pub fn disable_gso(&mut self) {
        self.gso = false;
    }

    /// The peer: given, or learnt from the first accepted datagram.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Address what follows to `peer` (the service sends each session's datagrams to its
    /// own peer through one socket).
    pub fn set_peer(&mut self, peer: Option<SocketAddr>) {
        self.peer = peer;
    }

    /// The source of the datagram received last.
    pub fn last_from(&self) -> Option<SocketAddr> {
        self.last_from
    }

    fn set_nonblocking(&mut self, nb: bool) -> io::Result<()> {
        if self.nonblocking != Some(nb) {
            self.sock.set_nonblocking(nb)?;
            self.nonblocking = Some(nb);
        }
        Ok(())
    }

    /// Wait until the socket is readable or `d` has passed: ppoll has nanosecond timeouts
    /// (SO_RCVTIMEO counts in scheduler ticks, far too coarse for pacing).
    fn wait_readable(&self, d: Duration) -> io::Result<()> {
        use nix::poll::{ppoll, PollFd, PollFlags};
        let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        let ts = nix::sys::time::TimeSpec::from_duration(d);
        match ppoll(&mut fds, Some(ts), None) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionRefused
    )
}

impl UdpIo {
    /// Send one datagram to the peer (dropped silently if the peer is not known yet).
    pub fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        let Some(peer) = self.peer else {
            return Ok(());
        };
        loop {
            match self.sock.send_to(datagram, peer) {
                Ok(_) => return Ok(()),
                // A full send buffer: wait for room rather than drop.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    use nix::poll::{ppoll, PollFd, PollFlags};
                    let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLOUT)];
                    let ts = nix::sys::time::TimeSpec::from_duration(Duration::from_millis(10));
                    let _ = ppoll(&mut fds, Some(ts), None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // An ICMP "port unreachable" from an earlier datagram: the peer is not there
                // (yet); the protocol's timers deal with silence.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// One datagram into `buf` if one is queued, without waiting.
    pub fn recv_now(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if let Some(n) = self.next_coalesced(buf) {
            return Ok(Some(n));
        }
        self.set_nonblocking(true)?;
        match self.recv_once(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if transient(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The datagram received last belonged to the session: from now on, send to its source.
    pub fn accept_peer(&mut self) {
        if self.peer.is_none() {
            self.peer = self.last_from;
        }
    }

    /// Runs of equal-sized datagrams (the last of a run may be shorter) go to the kernel as
    /// one UDP GSO send: one trip down the stack for up to 64 datagrams. Where GSO is refused,
    /// the socket falls back to one send per datagram for good.
    pub fn send_batch(&mut self, buf: &[u8], lens: &[usize]) -> io::Result<()> {
        let mut i = 0;
        let mut at = 0;
        while i < lens.len() {
            let seg = lens[i];
            let mut j = i + 1;
            let mut bytes = seg;
            if self.gso {
                while j < lens.len()
                    && j - i < GSO_MAX_SEGMENTS
                    && bytes + lens[j] <= GSO_MAX_BYTES
                    && lens[j] <= seg
                {
                    bytes += lens[j];
                    j += 1;
                    if lens[j - 1] < seg {
                        break; // a shorter datagram ends the run
                    }
                }
            }
            if j - i > 1 {
                if !self.send_gso(&buf[at..at + bytes], seg as u16)? {
                    self.gso = false;
                    continue; // resend this run one datagram at a time
                }
            } else {
                self.send(&buf[at..at + bytes])?;
            }
            at += bytes;
            i = j;
        }
        Ok(())
    }
}

impl FramePath for UdpIo {
    /// Builds up to a batch of datagrams back to back and hands them to the kernel together
    /// ([`UdpIo::send_batch`]: UDP GSO where the kernel takes it).
    fn transmit<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> Result<(usize, bool), DriverError> {
        let mut tbuf = std::mem::take(&mut self.tbuf);
        let mut lens = std::mem::take(&mut self.lens);
        lens.clear();
        let mut at = 0;
        let mut exhausted = false;
        while lens.len() < budget.min(BATCH) && tbuf.len() - at >= MAX_DGRAM {
            let Some(n) = ep.poll_transmit(now, &mut tbuf[at..at + MAX_DGRAM]) else {
                exhausted = true;
                break;
            };
            lens.push(n);
            at += n;
        }
        let r = if lens.is_empty() {
            Ok(())
        } else {
            self.send_batch(&tbuf[..at], &lens)
        };
        let sent = lens.len();
        self.tbuf = tbuf;
        self.lens = lens;
        r?;
        Ok((sent, exhausted))
    }

    fn receive<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        budget: usize,
    ) -> Result<(usize, bool), DriverError> {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let mut got = 0;
        let mut accepted = false;
        let r = loop {
            if got >= budget {
                break Ok(());
            }
            match self.recv_now(&mut rbuf) {
                Ok(Some(n)) => {
                    got += 1;
                    if let Some(f) = self.last_from {
                        ep.note_source(f.ip());
                    }
                    if ep.handle_datagram(Instant::now(), &mut rbuf[..n]) {
                        self.accept_peer();
                        accepted = true;
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.rbuf = rbuf;
        r?;
        Ok((got, accepted))
    }

    fn wait(&mut self, d: Duration) -> Result<(), DriverError> {
        if self.rx_pos < self.rx_len || d.is_zero() {
            return Ok(());
        }
        Ok(self.wait_readable(d)?)
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }
}

impl UdpIo {
    /// The next datagram of a coalesced (GRO) receive, if one is left.
    fn next_coalesced(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.rx_pos >= self.rx_len {
            return None;
        }
        let n = self.rx_seg.min(self.rx_len - self.rx_pos).min(buf.len());
        buf[..n].copy_from_slice(&self.rx[self.rx_pos..self.rx_pos + n]);
        self.rx_pos += self.rx_seg.max(1);
        Some(n)
    }

    /// One receive from the socket: a plain datagram, or with GRO a run of them (the first is
    /// returned, the rest kept for the next calls).
    fn recv_once(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.gro {
            let (n, from) = self.sock.recv_from(buf)?;
            self.last_from = Some(from);
            return Ok(n);
        }
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
        use std::os::fd::AsRawFd;
        let mut iov = [io::IoSliceMut::new(&mut self.rx)];
        let (bytes, from, seg) = {
            let m = recvmsg::<SockaddrStorage>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut self.cmsg),
                MsgFlags::empty(),
            )
            .map_err(io::Error::from)?;
            let mut seg = m.bytes;
            if let Ok(cmsgs) = m.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::UdpGroSegments(s) = c {
                        seg = (s as usize).max(1);
                    }
                }
            }
            let from = m.address.and_then(|a| {
                a.as_sockaddr_in()
                    .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                    .or_else(|| {
                        a.as_sockaddr_in6()
                            .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                    })
            });
            (m.bytes, from, seg)
        };
        self.last_from = from;
        self.rx_len = bytes;
        self.rx_pos = 0;
        self.rx_seg = seg;
        Ok(self.next_coalesced(buf).unwrap_or(0))
    }
}

/// Most datagrams and bytes in one GSO send (the kernel's limits: 64 segments, 64 KiB).
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65_000;

impl UdpIo {
    /// One GSO send of `buf`, cut by the kernel into `seg`-byte datagrams. Ok(false) if the
    /// kernel refuses GSO here.
    fn send_gso(&mut self, buf: &[u8], seg: u16) -> io::Result<bool> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
        use std::os::fd::AsRawFd;
        let Some(peer) = self.peer else {
            return Ok(true);
        };
        let addr = SockaddrStorage::from(peer);
        let iov = [io::IoSlice::new(buf)];
        let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
        loop {
            match sendmsg(
                self.sock.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::empty(),
                Some(&addr),
            ) {
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EAGAIN) => {
                    use nix::poll::{ppoll, PollFd, PollFlags};
                    let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLOUT)];
                    let ts = nix::sys::time::TimeSpec::from_duration(Duration::from_millis(10));
                    let _ = ppoll(&mut fds, Some(ts), None);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::ECONNREFUSED) => return Ok(true),
                Err(
                    nix::errno::Errno::EIO
                    | nix::errno::Errno::EINVAL
                    | nix::errno::Errno::ENOPROTOOPT
                    | nix::errno::Errno::EOPNOTSUPP,
                ) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Sender settings for the UDP driver.
#[derive(Debug, Clone)]
pub struct SendConfig {
    pub dst: SocketAddr,
    /// Local address (default: any address, any port).
    pub bind: SocketAddr,
    /// The IP MTU; datagrams fill it.
    pub mtu: usize,
    /// `--rate`: the link budget in bytes per second (see [`crate::proto::pacing::parse_rate`]).
    pub rate: Option<u64>,
    /// Socket buffer size.
    pub socket_buffer: usize,
    /// Protocol settings; `session_id`, `max_datagram` and `rate` are set from the fields
    /// above (a session id of 0 picks a random one).
    pub proto: SenderConfig,
    /// Where the summary's end-to-end clock starts (default: when this config was made;
    /// `pfs send` gives its own start).
    pub origin: Instant,
    /// How the session is protected (default: `Security::Insecure`; `pfs send` refuses to
    /// run without keys unless `--insecure`) and the Guard's settings.
    pub security: Security,
    pub guard: GuardConfig,
}

impl SendConfig {
    pub fn new(dst: SocketAddr) -> Self {
        SendConfig {
            dst,
            bind: if dst.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            },
            mtu: 1500,
            rate: None,
            socket_buffer: 4 << 20,
            proto: SenderConfig {
                session_id: 0,
                ..SenderConfig::default()
            },
            origin: Instant::now(),
            security: Security::Insecure,
            guard: GuardConfig::default(),
        }
    }
}

/// Receiver settings for the UDP driver.
#[derive(Debug, Clone)]
pub struct RecvConfig {
    pub bind: SocketAddr,
    pub out_dir: PathBuf,
    pub mtu: usize,
    pub socket_buffer: usize,
    /// Give up if no sender shows up within this time (`None`: wait forever).
    pub listen_timeout: Option<Duration>,
    /// Protocol settings (limits, timers); `max_datagram` is set from `mtu`.
    pub proto: ReceiverConfig,
    /// How sessions are protected (default: `Security::Insecure`; `pfs recv` refuses to
    /// run without keys unless `--insecure`) and the Guard's settings.
    pub security: Security,
    pub guard: GuardConfig,
}

impl RecvConfig {
    pub fn new(bind: SocketAddr, out_dir: PathBuf) -> Self {
        RecvConfig {
            bind,
            out_dir,
            mtu: 1500,
            socket_buffer: 8 << 20,
            listen_timeout: None,
            proto: ReceiverConfig::default(),
            security: Security::Insecure,
            guard: GuardConfig::default(),
        }
    }
}

/// Send `files` (blueprints into the snapshot `snapshot_id`, whose bytes are `snapshot`) to
/// `cfg.dst`.
pub fn run_sender(
    cfg: &SendConfig,
    files: Vec<SendFile>,
    snapshot_id: [u8; 32],
    snapshot: &[u8],
) -> Result<SendSummary, DriverError> {
    run_sender_with(
        cfg,
        files,
        snapshot_id,
        snapshot,
        &AtomicBool::new(false),
        &mut |_| {},
    )
}

/// [`run_sender`] with a cancel flag (set it from a signal handler) and an event callback
/// (progress bars).
pub fn run_sender_with(
    cfg: &SendConfig,
    files: Vec<SendFile>,
    snapshot_id: [u8; 32],
    snapshot: &[u8],
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<SendSummary, DriverError> {
    let input = SendInput::Planned {
        coded: Vec::new(),
        files,
        snapshot,
        meta: Vec::new(),
    };
    run_sender_input(cfg, input, snapshot_id, cancel, on_event)
}

/// Send `input` (files planned whole, or streamed by a producer while the session runs)
/// to `cfg.dst`.
pub fn run_sender_input(
    cfg: &SendConfig,
    input: SendInput<'_>,
    snapshot_id: [u8; 32],
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<SendSummary, DriverError> {
    let mut s = SendSession::new(
        cfg.proto.clone(),
        cfg.mtu,
        cfg.rate,
        snapshot_id,
        input,
        cfg.origin,
        cfg.security.clone(),
        cfg.guard.clone(),
    )?;
    let mut io = UdpIo::bind(cfg.bind, Some(cfg.dst), cfg.socket_buffer)?;
    session::run_sender(&mut s, &mut io, cancel, on_event)
}

/// A bound UDP receiver, before it runs (so a caller can learn its address first).
pub struct UdpReceiver {
    cfg: RecvConfig,
    io: UdpIo,
}

impl UdpReceiver {
    pub fn bind(cfg: RecvConfig) -> Result<Self, DriverError> {
        let io = UdpIo::bind(cfg.bind, None, cfg.socket_buffer)?;
        Ok(UdpReceiver { cfg, io })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Receive one session into `cfg.out_dir`, with the snapshot `snapshot_id` (bytes
    /// `snapshot`) that the sender's blueprints point into.
    pub fn run(
        mut self,
        snapshot_id: [u8; 32],
        snapshot: &[u8],
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<RecvSummary, DriverError> {
        let mut receiver = session::file_receiver(
            self.cfg.proto.clone(),
            self.cfg.mtu,
            &self.cfg.out_dir,
            snapshot_id,
            snapshot,
            &self.cfg.security,
        )?;
        session::run_receiver(
            &mut receiver,
            &mut self.io,
            self.cfg.listen_timeout,
            &self.cfg.security,
            &self.cfg.guard,
            cancel,
            on_event,
        )
    }
}

/// Bind and receive one session (see [`UdpReceiver::run`]).
pub fn run_receiver(
    cfg: &RecvConfig,
    snapshot_id: [u8; 32],
    snapshot: &[u8],
) -> Result<RecvSummary, DriverError> {
    UdpReceiver::bind(cfg.clone())?.run(snapshot_id, snapshot, &AtomicBool::new(false), &mut |_| {})
}

/// The service's I/O over one kernel UDP socket: each session's datagrams go to its peer's
/// address; nothing else to remember per session.
impl super::service_io::ServiceIo for UdpIo {
    type Route = ();
    type From = ();

    fn route_template(&self) {}

    fn accepted(_: &mut (), _: &()) {}

    fn transmit<E: Endpoint + ?Sized>(
        &mut self,
        _: &mut (),
        peer: SocketAddr,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> Result<(usize, bool), DriverError> {
        self.set_peer(Some(peer));
        let r = FramePath::transmit(self, ep, now, budget);
        self.set_peer(None);
        r
    }

    fn receive(
        &mut self,
        budget: usize,
        f: super::service_io::Deliver<'_, ()>,
    ) -> Result<usize, DriverError> {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let mut got = 0;
        let r = loop {
            if got >= budget {
                break Ok(());
            }
            match self.recv_now(&mut rbuf) {
                Ok(Some(n)) => {
                    got += 1;
                    if let Some(from) = self.last_from {
                        f(from, &(), &mut rbuf[..n]);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.rbuf = rbuf;
        r?;
        Ok(got)
    }

    fn wait(&mut self, d: Duration) -> Result<(), DriverError> {
        FramePath::wait(self, d)
    }
}
