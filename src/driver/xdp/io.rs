//! The AF_XDP sockets of one side and the steering program in front of them, and the
//! session thread's frame path over them ([`SessionPath`]).
//!
//! - receive: [`XskSocket::recv_batch`] hands each UMEM frame in place;
//!   [`stack::parse`] finds the PacketFS datagram and the endpoint consumes it straight
//!   from the UMEM (the receiver applies its pieces from there into the output file's map);
//! - transmit: [`XskSocket::send_batch`] gives a UMEM frame, and [`Flow::transmit`] has the
//!   endpoint write the datagram behind the header room and the Ethernet/IPv4/UDP headers in
//!   front. No intermediate buffer on either path.
//!
//! The receiver service ([`crate::driver::service`]) runs over the same sockets through
//! [`XdpServiceIo`]: one [`Flow`] per session (the addresses and reply queue learnt from
//! its frames), every socket on the service's one thread.

use super::answers::KernelAnswers;
use super::error::XdpError;
use super::flow::{Build, Flow, TxQueues};
use super::marks::StartMarks;
use super::report::{PathStats, QueueStats};
use crate::driver::service::{ServiceIo, XdpLive, XdpQueueLive};
use crate::driver::session::{DriverError, FramePath};
use crate::proto::Endpoint;
use crate::steer::{PortRange, Steering, XdpMode};
use crate::wire::stack;
use crate::wire::stack::Addrs;
use crate::xsk::{self, XskConfig, XskSocket};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a bind waits for the queue's earlier socket to be released (see
/// [`bind_when_free`]).
const BIND_BUSY_WAIT: Duration = Duration::from_secs(2);

/// Bind a socket to `iface` queue `q`, waiting up to [`BIND_BUSY_WAIT`] while the queue is
/// busy: the kernel releases a closed socket's buffer pool from a work queue after its
/// last fd closes, so a process that starts right after another one on the same interface
/// (a second `pfs send` from one host, a restarted receiver) may find the queue still held
/// for a moment (EBUSY). Other errors return at once.
fn bind_when_free(iface: &str, q: u32, xc: &XskConfig) -> Result<XskSocket, xsk::XskError> {
    let until = Instant::now() + BIND_BUSY_WAIT;
    loop {
        match XskSocket::new(iface, q, xc) {
            Err(e) if queue_busy(&e) && Instant::now() < until => {
                tracing::debug!("{iface} queue {q} still held by a closed socket; retrying");
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// Whether a bind failed because the queue is held (EBUSY).
fn queue_busy(e: &xsk::XskError) -> bool {
    if !matches!(e, xsk::XskError::Bind { .. }) {
        return false;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.raw_os_error() == Some(libc::EBUSY) {
                return true;
            }
        }
        src = s.source();
    }
    // xsk-rs's errors keep the OS error in their text only.
    e.to_string().contains("(os error 16)")
}

/// What the steering program of a side steers: the port range, the attach mode, and the
/// receive-side impairments of tests (drop, flip; parts per million).
#[derive(Debug, Clone, Copy)]
pub struct SteerSpec {
    pub ports: PortRange,
    pub mode: XdpMode,
    pub impair: (u32, u32),
}

/// The steering program and the sockets of one side; or, for a sender that takes its
/// answers on kernel UDP ([`KernelAnswers`]), the sockets (transmitting) and those.
pub struct XdpIo {
    // Field order is drop order: sockets leave the XSKMAP before the program detaches.
    socks: Vec<XskSocket>,
    rx_frames: Vec<u64>,
    tx_frames: Vec<u64>,
    bad_frames: u64,
    busy_poll: bool,
    answers: Option<KernelAnswers>,
    steer: Option<Steering>,
    iface: String,
}

impl XdpIo {
    /// Bind one socket per queue of `queues` with `xc` and, with `steer`, attach the
    /// program to `iface` and steer its ports into them (without: the sockets transmit
    /// only; see [`XdpIo::set_answers`]). Run in the interface's
    /// network namespace.
    ///
    /// The steps run side by side, so set-up takes the longest of them, not their sum: each
    /// socket is created and bound on a thread of its own (populating its UMEM is most of
    /// that) while this thread loads the program and attaches it; all are joined here.
    pub fn open(
        iface: &str,
        queues: &[u32],
        steer: Option<SteerSpec>,
        xc: &XskConfig,
        marks: &StartMarks,
    ) -> Result<Self, XdpError> {
        let (steer, socks) = std::thread::scope(|sc| {
            let binders: Vec<_> = queues
                .iter()
                .map(|&q| {
                    let bind = move || {
                        let s = bind_when_free(iface, q, xc);
                        if s.is_ok() {
                            marks.mark(format_args!("socket bound {iface} q{q}"));
                        }
                        s
                    };
                    // A thread that cannot start binds its socket here, in turn.
                    std::thread::Builder::new()
                        .name(format!("pfs-xsk-bind{q}"))
                        .spawn_scoped(sc, bind)
                        .map_err(|e| {
                            tracing::debug!("binding queue {q} inline: {e}");
                            bind
                        })
                })
                .collect();
            let steer = steer
                .map(|spec| attach_program(iface, spec, marks))
                .transpose();
            let socks: Vec<_> = binders
                .into_iter()
                .map(|b| match b {
                    Ok(h) => h.join().expect("an AF_XDP bind thread panicked"),
                    Err(bind) => bind(),
                })
                .collect();
            (steer, socks)
        });
        // The program's error first (it names the interface's problems), then the sockets'.
        let steer = steer?;
        let socks = socks.into_iter().collect::<Result<Vec<_>, _>>()?;
        let n = socks.len();
        let mut io = XdpIo {
            socks,
            rx_frames: vec![0; n],
            tx_frames: vec![0; n],
            bad_frames: 0,
            busy_poll: false,
            answers: None,
            steer: None,
            iface: iface.to_string(),
        };
        match steer {
            Some(steer) => io.steer_into_sockets(steer, marks)?,
            None => {
                marks.mark("set-up done (sockets bound, no program)");
                tracing::info!(
                    iface,
                    ?queues,
                    "AF_XDP sockets bound (transmit; no program)"
                );
            }
        }
        Ok(io)
    }

    /// Put every socket into `steer`'s XSKMAP and keep the program.
    fn steer_into_sockets(
        &mut self,
        mut steer: Steering,
        marks: &StartMarks,
    ) -> Result<(), XdpError> {
        for s in &self.socks {
            steer.set_socket(s.queue(), s)?;
        }
        marks.mark("set-up done (sockets in the XSKMAP)");
        tracing::info!(iface = %self.iface, queues = ?self.queues(), mode = %steer.mode(), "AF_XDP sockets bound");
        self.steer = Some(steer);
        Ok(())
    }

    /// Take the session's answers on `answers` (kernel UDP) instead of the rx rings: for a
    /// sender opened without a program.
    pub fn set_answers(&mut self, mut answers: KernelAnswers) {
        if self.busy_poll {
            answers.set_busy_poll();
        }
        self.answers = Some(answers);
    }

    /// Hand the kernel UDP answers over (to the workers' reader thread).
    pub fn take_answers(&mut self) -> Option<KernelAnswers> {
        self.answers.take()
    }

    /// The kernel UDP answers, if this side takes them so.
    pub fn answers(&self) -> Option<&KernelAnswers> {
        self.answers.as_ref()
    }

    /// The interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The bound queues.
    pub fn queues(&self) -> Vec<u32> {
        self.socks.iter().map(|s| s.queue()).collect()
    }

    /// Busy-poll mode on every socket (see [`XskSocket::set_busy_poll`]): whoever drives
    /// them polls instead of sleeping.
    pub fn set_busy_poll(&mut self) {
        let taken = self
            .socks
            .iter_mut()
            .map(|s| s.set_busy_poll())
            .filter(|&t| t)
            .count();
        if let Some(a) = &mut self.answers {
            a.set_busy_poll();
        }
        tracing::info!(
            sockets = self.socks.len(),
            options_taken = taken,
            "AF_XDP busy poll: the sockets are polled, never slept on"
        );
        self.busy_poll = true;
    }

    /// Whether [`set_busy_poll`](Self::set_busy_poll) was called.
    pub fn busy_poll(&self) -> bool {
        self.busy_poll
    }

    /// Frames one session-thread round moves per direction: a socket's batch.
    fn batch(&self) -> usize {
        self.socks.first().map_or(1, |s| s.batch())
    }

    /// The steering program (counters, notice); None on a sender taking its answers on
    /// kernel UDP.
    pub fn steering(&self) -> Option<&Steering> {
        self.steer.as_ref()
    }

    /// Hand the sockets over (to the workers); the program stays attached.
    pub fn take_sockets(&mut self) -> Vec<XskSocket> {
        std::mem::take(&mut self.socks)
    }

    /// What the sockets did while the session thread owned them.
    pub fn stats(&self) -> PathStats {
        PathStats {
            queues: self
                .socks
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
            bad_frames: self.bad_frames,
            reordered: 0,
        }
    }

    /// Receive up to `budget` frames from every socket into `ep`; returns the frames seen
    /// and whether any datagram was accepted by the endpoint.
    fn receive<E: Endpoint + ?Sized>(
        &mut self,
        flow: &mut Flow,
        ep: &mut E,
        budget: usize,
    ) -> (usize, bool) {
        if let Some(a) = &mut self.answers {
            // No program: nothing reaches the rx rings.
            return a.receive(ep, budget);
        }
        let mut got = 0;
        let mut accepted = false;
        for i in 0..self.socks.len() {
            let t = Instant::now();
            let bad = &mut self.bad_frames;
            let n = self.socks[i].recv_batch(|f| match stack::parse_mut(f) {
                Ok((addrs, d)) => {
                    ep.note_source(std::net::IpAddr::V4(addrs.src_ip));
                    if ep.handle_datagram(t, d) {
                        accepted = true;
                        flow.note_accepted(addrs, i);
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
            flow.accept_last();
        }
        (got, accepted)
    }

    /// Push out what is still on the tx rings (the last Close or Abort).
    fn flush(&mut self) {
        for s in &mut self.socks {
            s.flush(Duration::from_millis(200));
        }
    }
}

/// Set by a command that exits once its session is over (`pfs send`, `pfs recv --once`): see
/// [`release_sockets_after_exit`].
static RELEASE_IN_CHILD: AtomicBool = AtomicBool::new(false);

/// Let the sockets (and the steering program's link, where one is attached) be released by a
/// child process after this one has exited. The release of an AF_XDP socket waits for an RCU
/// grace period (16-19 ms here, strace -T of `close`; the link's close ~10 ms), and a process
/// cannot exit before its descriptors are released, so `pfs send` returned that long after
/// the receiver had confirmed the file, and `pfs recv --once` 24-32 ms after the sender. For
/// a command only: the child is reaped by whoever adopts it once this process exits. A
/// command started right after on the same interface meets the queues or the link still held
/// for those milliseconds: binds and attaches retry for a while ([`bind_when_free`],
/// [`attach_program`]).
pub fn release_sockets_after_exit() {
    RELEASE_IN_CHILD.store(true, Ordering::Relaxed);
}

/// Fork a child that closes every descriptor it inherited once the returned pipe end (and
/// every other copy of it) is closed: the caller first closes its own copies of the sockets,
/// so the child's are the last and their release runs in the child. `None` when the pipe or
/// the fork cannot be made (the caller closes the sockets itself).
#[allow(unsafe_code)]
fn release_in_child() -> Option<OwnedFd> {
    let mut p = [0 as libc::c_int; 2];
    // Safety: pipe2 writes two descriptors into `p`.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // Safety: both descriptors are fresh and owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // Safety: the child calls only async-signal-safe functions (close, read, close_range,
    // _exit) and never returns into Rust code.
    match unsafe { libc::fork() } {
        -1 => None,
        0 => unsafe {
            libc::close(p[1]);
            let mut b = 0u8;
            while libc::read(p[0], (&mut b as *mut u8).cast(), 1) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
            libc::_exit(0)
        },
        _ => {
            drop(r);
            Some(w)
        }
    }
}

impl Drop for XdpIo {
    /// Sockets close before the program detaches. Each socket's release waits for the
    /// kernel (an RCU grace period, the UMEM unmapped): closed side by side, the command
    /// that ends with them returns sooner; the sockets (and the program's link) of a command
    /// that asked for it ([`release_sockets_after_exit`]) are released by a child process
    /// instead.
    fn drop(&mut self) {
        let socks = std::mem::take(&mut self.socks);
        if !socks.is_empty() && RELEASE_IN_CHILD.load(Ordering::Relaxed) {
            if let Some(gate) = release_in_child() {
                drop(socks);
                // a link's program detaches when the child's copy of the link closes
                drop(self.steer.take());
                drop(gate);
                return;
            }
        }
        if socks.len() < 2 {
            return;
        }
        std::thread::scope(|sc| {
            for sock in socks {
                // A thread that cannot start drops its socket right here instead.
                let spawned = std::thread::Builder::new()
                    .name("pfs-xsk-close".into())
                    .spawn_scoped(sc, move || drop(sock));
                if let Err(e) = spawned {
                    tracing::debug!("closed an AF_XDP socket inline: {e}");
                }
            }
        });
    }
}

impl TxQueues for XdpIo {
    fn count(&self) -> usize {
        self.socks.len()
    }
    fn queue(&self, i: usize) -> u32 {
        self.socks[i].queue()
    }
    fn fill(&mut self, i: usize, max: usize, build: &mut Build<'_>) -> usize {
        // Frames are finished here as they are built (`finishes` is false: none is left).
        let n = self.socks[i].send_batch(max, |_, buf| match build(buf) {
            (len, None) => len,
            (len, Some(job)) => {
                if job.run(buf) {
                    len
                } else {
                    0
                }
            }
        });
        self.tx_frames[i] += n as u64;
        n
    }
}

/// The session thread's frame path: it owns every socket of the session and the endpoint,
/// so the data path takes no lock.
pub struct SessionPath<'a> {
    pub io: &'a mut XdpIo,
    pub flow: &'a mut Flow,
}

impl FramePath for SessionPath<'_> {
    fn transmit<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> Result<(usize, bool), DriverError> {
        Ok(self.flow.transmit(self.io, ep, now, budget))
    }
    fn receive<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        budget: usize,
    ) -> Result<(usize, bool), DriverError> {
        Ok(self.io.receive(self.flow, ep, budget))
    }
    fn wait(&mut self, d: Duration) -> Result<(), DriverError> {
        if d.is_zero() {
            return Ok(());
        }
        match &self.io.answers {
            Some(a) => {
                a.wait(d).map_err(DriverError::Io)?;
            }
            None => {
                xsk::wait_any(&mut self.io.socks, d)?;
            }
        }
        Ok(())
    }
    fn flush(&mut self) {
        self.io.flush()
    }
    fn batch(&self) -> usize {
        self.io.batch()
    }
    fn peer(&self) -> Option<SocketAddr> {
        self.flow.peer()
    }
}

/// The receiver service's I/O over AF_XDP: the sockets and the program stay for the
/// service's life (attached once, detached when this drops: at the end, on an error, after
/// SIGTERM/SIGINT); each session addresses its answers through its own receiver [`Flow`].
pub struct XdpServiceIo {
    io: XdpIo,
    /// A receiver flow before its first frame: what each session's flow starts from.
    template: Flow,
    reorder: Option<Duration>,
}

impl XdpServiceIo {
    /// The sockets of `io`, each session's flow a copy of `template` (a receiver's);
    /// `reorder`: the NACK delay for frames of several queues.
    pub fn new(io: XdpIo, template: Flow, reorder: Option<Duration>) -> Self {
        XdpServiceIo {
            io,
            template,
            reorder,
        }
    }

    /// The bound queues.
    pub fn queues(&self) -> Vec<u32> {
        self.io.queues()
    }
}

impl ServiceIo for XdpServiceIo {
    type Route = Flow;
    /// The frame's addresses and the index of the socket it came on.
    type From = (Addrs, usize);

    fn route_template(&self) -> Flow {
        self.template.clone()
    }

    fn accepted(flow: &mut Flow, from: &(Addrs, usize)) {
        flow.note_accepted(from.0, from.1);
        flow.accept_last();
    }

    fn transmit<E: Endpoint + ?Sized>(
        &mut self,
        flow: &mut Flow,
        _peer: SocketAddr,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> Result<(usize, bool), DriverError> {
        Ok(flow.transmit(&mut self.io, ep, now, budget))
    }

    fn receive(
        &mut self,
        budget: usize,
        f: crate::driver::service::Deliver<'_, (Addrs, usize)>,
    ) -> Result<usize, DriverError> {
        let io = &mut self.io;
        let mut got = 0;
        for i in 0..io.socks.len() {
            let bad = &mut io.bad_frames;
            let n = io.socks[i].recv_batch(|frame| match stack::parse_mut(frame) {
                Ok((addrs, d)) => {
                    let from = SocketAddr::V4(SocketAddrV4::new(addrs.src_ip, addrs.src_port));
                    f(from, &(addrs, i), d)
                }
                Err(_) => *bad += 1,
            });
            io.rx_frames[i] += n as u64;
            got += n;
            if got >= budget {
                break;
            }
        }
        Ok(got)
    }

    fn wait(&mut self, d: Duration) -> Result<(), DriverError> {
        if !d.is_zero() {
            xsk::wait_any(&mut self.io.socks, d)?;
        }
        Ok(())
    }

    fn flush(&mut self) {
        self.io.flush()
    }

    fn reorder_window(&self) -> Option<Duration> {
        self.reorder
    }

    fn xdp_stats(&self) -> Option<XdpLive> {
        Some(xdp_live(
            self.io.iface(),
            self.io.steering(),
            &self.io.stats(),
        ))
    }
}

/// The metrics' view of the AF_XDP layer: the program's counters and each socket's.
pub fn xdp_live(iface: &str, steer: Option<&Steering>, st: &PathStats) -> XdpLive {
    XdpLive {
        iface: iface.to_string(),
        steer: steer.and_then(|s| s.counters().ok()).unwrap_or_default(),
        queues: st
            .queues
            .iter()
            .map(|q| XdpQueueLive {
                queue: q.queue,
                rx_frames: q.rx_frames,
                tx_frames: q.tx_frames,
                rx_dropped: q.xdp.rx_dropped,
                rx_ring_full: q.xdp.rx_ring_full,
                rx_invalid_descs: q.xdp.rx_invalid_descs,
                tx_invalid_descs: q.xdp.tx_invalid_descs,
                fill_ring_empty: q.xdp.fill_ring_empty,
                tx_ring_empty: q.xdp.tx_ring_empty,
            })
            .collect(),
        bad_frames: st.bad_frames,
    }
}

/// Load the program, attach it to `iface` and set its ports (and impairments). An interface
/// whose XDP link is still held (EBUSY: the child of a `pfs recv --once` that just returned
/// releases it, [`release_sockets_after_exit`]) is tried again for up to 2 s; then the error
/// says another program is attached.
fn attach_program(iface: &str, spec: SteerSpec, marks: &StartMarks) -> Result<Steering, XdpError> {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut steer = loop {
        let loaded = Steering::load()?;
        marks.mark("program loaded");
        match loaded.attach(iface, spec.mode) {
            Err(crate::steer::SteerError::Link { ref source, .. })
                if matches!(source.raw_os_error(), Some(libc::EBUSY | libc::EEXIST))
                    && std::time::Instant::now() < give_up =>
            {
                tracing::debug!("{iface}: an XDP link is still attached; retrying");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => break r?,
        }
    };
    marks.mark(format_args!("link attached ({} mode)", steer.mode()));
    steer.set_ports(spec.ports)?;
    let (drop_ppm, flip_ppm) = spec.impair;
    if drop_ppm > 0 || flip_ppm > 0 {
        steer.set_impairments(drop_ppm, flip_ppm)?;
    }
    Ok(steer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};

    /// The child of [`release_in_child`] holds a copy of every descriptor until the gate
    /// closes, then closes them all: a pipe whose only other write end is in the child
    /// reads end-of-file only after the gate is dropped.
    #[test]
    fn the_releasing_child_holds_descriptors_until_the_gate_closes() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        nix::fcntl::fcntl(
            r.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .expect("non-blocking");
        let gate = release_in_child().expect("fork");
        drop(w);
        let mut b = [0u8; 1];
        // the child's copy of the write end is still open: nothing to read, no EOF
        assert_eq!(
            nix::unistd::read(r.as_raw_fd(), &mut b),
            Err(nix::errno::Errno::EAGAIN)
        );
        drop(gate);
        let mut fds = [nix::poll::PollFd::new(
            r.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16)).expect("poll");
        assert_eq!(
            nix::unistd::read(r.as_raw_fd(), &mut b),
            Ok(0),
            "end of file"
        );
    }
}
