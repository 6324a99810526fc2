//! The kernel UDP socket driver (`--transport udp`): the same state machines as the AF_XDP
//! path, for hosts without XDP or privileges.
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

use super::{drive, DatagramIo, DriveOptions, Stop};
use crate::fsink::MmapSink;
use crate::proto::sender::SendError;
use crate::proto::{
    datagram_for_mtu, Endpoint, Event, Failure, Receiver, ReceiverConfig, SendFile, Sender,
    SenderConfig, Stats,
};
use serde::Serialize;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Bytes each datagram costs on an Ethernet link beyond its own length (Ethernet 14, IPv4
/// 20, UDP 8), counted in `wire_bytes`.
pub const LINK_OVERHEAD: u64 = crate::wire::stack::OVERHEAD as u64;

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

impl DatagramIo for UdpIo {
    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
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

    fn recv(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<Option<usize>> {
        if let Some(n) = self.next_coalesced(buf) {
            return Ok(Some(n));
        }
        self.set_nonblocking(true)?;
        for attempt in 0..2 {
            match self.recv_once(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if transient(&e) => {}
                Err(e) => return Err(e),
            }
            if attempt == 0 {
                let wait = deadline.map_or(Duration::from_millis(50), |d| {
                    d.saturating_duration_since(Instant::now())
                });
                if wait.is_zero() {
                    break;
                }
                self.wait_readable(wait)?;
            }
        }
        Ok(None)
    }

    fn accept_peer(&mut self) {
        if self.peer.is_none() {
            self.peer = self.last_from;
        }
    }

    /// Runs of equal-sized datagrams (the last of a run may be shorter) go to the kernel as
    /// one UDP GSO send: one trip down the stack for up to 64 datagrams. Where GSO is refused,
    /// the socket falls back to one send per datagram for good.
    fn send_batch(&mut self, buf: &[u8], lens: &[usize]) -> io::Result<()> {
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
        }
    }
}

/// What a send moved.
#[derive(Debug, Clone, Serialize)]
pub struct SendSummary {
    pub session_id: u64,
    pub files: usize,
    /// Bytes of the files (the stream).
    pub file_bytes: u64,
    /// Bytes on the link: datagrams plus Ethernet/IPv4/UDP headers, both directions' frames
    /// counted on their own side (this is the sender's).
    pub wire_bytes: u64,
    /// Datagram bytes sent (PacketFS headers and payloads).
    pub datagram_bytes: u64,
    /// Bytes of the session's stream: file sizes of direct files, packed lengths of packed
    /// ones.
    pub stream_bytes: u64,
    /// Files sent packed (`blueprint::block` streams) and direct.
    pub packed_files: usize,
    pub direct_files: usize,
    /// Time spent building the sender (packing), before the session starts: not in
    /// `elapsed` (like planning), reported on its own.
    #[serde(serialize_with = "ser_secs")]
    pub pack_time: Duration,
    pub frames: u64,
    /// Data frames that repaired NACKed ranges, and the file bytes they carried.
    pub retransmissions: u64,
    pub retransmitted_bytes: u64,
    pub frames_received: u64,
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
    /// The pacing rate at the end, bytes per second.
    pub final_rate: u64,
    pub stats: Stats,
}

/// One file a receive produced.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedFile {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub verified: bool,
}

/// What a receive moved.
#[derive(Debug, Clone, Serialize)]
pub struct RecvSummary {
    pub session_id: Option<u64>,
    pub peer: Option<SocketAddr>,
    pub files: Vec<ReceivedFile>,
    pub file_bytes: u64,
    /// Bytes on the link of what arrived: datagrams plus Ethernet/IPv4/UDP headers.
    pub wire_bytes: u64,
    pub datagram_bytes: u64,
    pub frames: u64,
    pub duplicate_frames: u64,
    pub malformed: u64,
    pub foreign_session: u64,
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
    pub stats: Stats,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl SendSummary {
    /// File bytes per second of elapsed time, in bits per second (the effective throughput).
    pub fn effective_bps(&self) -> f64 {
        self.file_bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Wire bytes per second, in bits per second.
    pub fn wire_bps(&self) -> f64 {
        self.wire_bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// A JSON object for the metrics log.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["effective_bps"] = self.effective_bps().into();
        v["wire_bps"] = self.wire_bps().into();
        v
    }
}

impl RecvSummary {
    pub fn effective_bps(&self) -> f64 {
        self.file_bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["effective_bps"] = self.effective_bps().into();
        v
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Setup(#[from] SendError),
    #[error("streaming the files failed")]
    Stream(#[from] crate::prepare::stream::StreamError),
    #[error("no sender arrived within {0:?}")]
    ListenTimeout(Duration),
    #[error("send failed: {failure}")]
    SendAborted {
        failure: Failure,
        summary: Box<SendSummary>,
    },
    #[error("receive failed: {failure}")]
    RecvAborted {
        failure: Failure,
        summary: Box<RecvSummary>,
    },
}

/// A random 64-bit value from the standard library's per-process random hasher keys, the
/// time and the process id (no extra dependency; not for cryptography).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
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
    let mut pc = cfg.proto.clone();
    if pc.session_id == 0 {
        pc.session_id = random_u64() | 1;
    }
    pc.max_datagram = datagram_for_mtu(cfg.mtu);
    pc.rate = cfg.rate.or(pc.rate);
    let session_id = pc.session_id;
    let t_pack = Instant::now();
    let files = crate::prepare::prepare(files, snapshot_id, snapshot, pc.pack, &pc.pack_opts)?;
    let mut sender = Sender::new(pc, snapshot_id, files)?;
    let pack_time = t_pack.elapsed();
    let mut io = UdpIo::bind(cfg.bind, Some(cfg.dst), cfg.socket_buffer)?;
    let start = Instant::now();
    let mut done = None;
    let mut on_ev = finished_clock(&mut done, on_event);
    drive(
        &mut sender,
        &mut io,
        &DriveOptions::default(),
        cancel,
        &mut on_ev,
    )?;
    drop(on_ev);
    finish_sender(
        &sender,
        session_id,
        done.unwrap_or_else(Instant::now) - start,
        pack_time,
    )
}

/// Streaming send (`crate::prepare::stream`): `files` are the sender's streamed files
/// (names, sizes, bounds) and `blocks` the producer's channel; the session starts at once
/// and each block goes out as soon as it arrives. The producer runs on its own thread.
pub fn run_streaming_sender_with(
    cfg: &SendConfig,
    files: Vec<crate::proto::OutgoingFile>,
    blocks: std::sync::mpsc::Receiver<
        Result<crate::prepare::stream::Item, crate::prepare::stream::StreamError>,
    >,
    snapshot_id: [u8; 32],
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<SendSummary, DriverError> {
    let mut pc = cfg.proto.clone();
    if pc.session_id == 0 {
        pc.session_id = random_u64() | 1;
    }
    pc.max_datagram = datagram_for_mtu(cfg.mtu);
    pc.rate = cfg.rate.or(pc.rate);
    let session_id = pc.session_id;
    let sender = Sender::new(pc, snapshot_id, files)?;
    let mut feed = crate::prepare::stream::Feed::new(sender, blocks);
    let mut io = UdpIo::bind(cfg.bind, Some(cfg.dst), cfg.socket_buffer)?;
    let start = Instant::now();
    let mut done = None;
    let mut on_ev = finished_clock(&mut done, on_event);
    drive(
        &mut feed,
        &mut io,
        &DriveOptions::default(),
        cancel,
        &mut on_ev,
    )?;
    drop(on_ev);
    if let Some(e) = feed.take_error() {
        return Err(e.into());
    }
    finish_sender(
        &feed.sender,
        session_id,
        done.unwrap_or_else(Instant::now) - start,
        Duration::ZERO,
    )
}

/// The summary of a finished sender and its outcome (shared with the AF_XDP driver).
/// Wrap an event callback so `done` records when the receiver confirmed every file: a
/// sender's elapsed time ends there, not after the closing drain that follows.
pub(crate) fn finished_clock<'a>(
    done: &'a mut Option<Instant>,
    on_event: &'a mut dyn FnMut(&Event),
) -> impl FnMut(&Event) + 'a {
    move |e: &Event| {
        if matches!(e, Event::Finished) && done.is_none() {
            *done = Some(Instant::now());
        }
        on_event(e)
    }
}

pub(crate) fn finish_sender(
    sender: &Sender,
    session_id: u64,
    elapsed: Duration,
    pack_time: Duration,
) -> Result<SendSummary, DriverError> {
    let st = sender.stats_now();
    let modes = sender.modes();
    let packed_files = modes.iter().filter(|(m, _)| m.is_packed()).count();
    let summary = SendSummary {
        session_id,
        files: sender.file_count(),
        file_bytes: sender.total_bytes(),
        wire_bytes: st.bytes_sent + st.frames_sent * LINK_OVERHEAD,
        datagram_bytes: st.bytes_sent,
        stream_bytes: modes.iter().map(|(_, len)| len).sum(),
        packed_files,
        direct_files: modes.len() - packed_files,
        pack_time,
        frames: st.frames_sent,
        retransmissions: st.repair_frames,
        retransmitted_bytes: st.repair_bytes,
        frames_received: st.frames_received,
        elapsed,
        final_rate: st.rate,
        stats: st,
    };
    match sender.outcome() {
        Some(Ok(())) => Ok(summary),
        Some(Err(failure)) => Err(DriverError::SendAborted {
            failure,
            summary: Box::new(summary),
        }),
        None => Err(io::Error::other("sender loop ended without an outcome").into()),
    }
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
        let mut pc = self.cfg.proto.clone();
        pc.max_datagram = datagram_for_mtu(self.cfg.mtu);
        let tag = format!("{:016x}", random_u64());
        let mut sink = MmapSink::new(&self.cfg.out_dir, &tag)?;
        sink.durable = pc.durable;
        let mut receiver = Receiver::new(pc, snapshot_id, snapshot, sink);
        let opts = DriveOptions {
            first_datagram_timeout: self.cfg.listen_timeout,
        };
        // The session's time runs from the accepted handshake (not the wait for a sender) to
        // the outcome (Finished comes after the last file's BLAKE3 check; the wait for the
        // sender's Close is not counted).
        let mut start = Instant::now();
        let mut end = None;
        let mut on_ev = |e: &Event| {
            match e {
                Event::Accepted { .. } => start = Instant::now(),
                Event::Finished | Event::Aborted(_) => {
                    end.get_or_insert_with(Instant::now);
                }
                _ => {}
            }
            on_event(e)
        };
        let stop = drive(&mut receiver, &mut self.io, &opts, cancel, &mut on_ev)?;
        if stop == Stop::NoPeer {
            return Err(DriverError::ListenTimeout(
                self.cfg.listen_timeout.unwrap_or_default(),
            ));
        }
        let elapsed = end
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(start);
        finish_receiver(&receiver, self.io.peer(), elapsed)
    }
}

/// The summary of a finished receiver and its outcome (shared with the AF_XDP driver).
pub(crate) fn finish_receiver(
    receiver: &Receiver<'_, MmapSink>,
    peer: Option<SocketAddr>,
    elapsed: Duration,
) -> Result<RecvSummary, DriverError> {
    let st = receiver.stats().clone();
    let files: Vec<ReceivedFile> = receiver
        .files()
        .iter()
        .enumerate()
        .map(|(i, f)| ReceivedFile {
            name: f.name.clone(),
            path: receiver
                .sink()
                .path(i)
                .map(|p| p.to_path_buf())
                .unwrap_or_default(),
            size: f.size,
            verified: f.done,
        })
        .collect();
    let summary = RecvSummary {
        session_id: receiver.session(),
        peer,
        file_bytes: files.iter().filter(|f| f.verified).map(|f| f.size).sum(),
        files,
        wire_bytes: st.bytes_received + st.frames_received * LINK_OVERHEAD,
        datagram_bytes: st.bytes_received,
        frames: st.frames_received,
        duplicate_frames: st.duplicate_frames,
        malformed: st.malformed,
        foreign_session: st.foreign_session,
        elapsed,
        stats: st,
    };
    match receiver.outcome() {
        Some(Ok(())) => Ok(summary),
        Some(Err(failure)) => Err(DriverError::RecvAborted {
            failure,
            summary: Box::new(summary),
        }),
        None => Err(io::Error::other("receiver loop ended without an outcome").into()),
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
