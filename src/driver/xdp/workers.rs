//! Per-queue AF_XDP workers: one thread per bound queue, pinned to a core with
//! core_affinity, owning that queue's [`XskSocket`] (UMEM, fill/completion/rx/tx rings).
//!
//! The session thread keeps the single [`crate::proto`] state machine and exchanges UMEM
//! frames with the workers through four lock-free `crossbeam` [`ArrayQueue`]s per worker; no
//! mutex is taken on the data path and no frame is copied:
//!
//! | queue     | direction         | carries                                                   |
//! |-----------|-------------------|-----------------------------------------------------------|
//! | `tx_free` | worker -> session | empty UMEM frames the session builds datagrams in          |
//! | `tx_out`  | session -> worker | built frames (frame, length, sealing left) for the tx ring |
//! | `rx_out`  | worker -> session | received frames, parsed (addresses, datagram span), opened |
//! | `rx_back` | session -> worker | frames the endpoint is done with, for the fill ring        |
//!
//! Receive: the worker takes frames off its rx ring ([`XskSocket::rx_lend`]), parses and
//! checks Ethernet/IPv4/UDP in place ([`stack::parse`]) and passes the frame on; the session
//! thread calls `handle_datagram` on the datagram's bytes in the worker's UMEM (the
//! receiver applies each piece from there into the output file's map) and hands the frame
//! back. Frames from several workers that are ready at once are given to the endpoint in
//! the sender's sequence order, so queues that drain at different moments do not look like
//! loss to the receiver (see `reordered` in the report).
//!
//! Transmit: the session thread takes a free frame of the worker whose queue it sends on,
//! writes the datagram behind the header room (`poll_transmit_split`) and the headers in
//! front ([`stack::emit_headers`]) directly in that worker's UMEM, and queues it to the
//! worker, which puts it on its tx ring and kicks the kernel. In a keyed session the
//! datagram comes with its key phase's key: the session thread took the counter, the phase
//! and wrote the sealed header; the worker seals the payload in place before `tx_submit`.
//!
//! Opening: in a session of its own (not the receiver service), the session thread hands
//! the workers the opener's current phase key ([`Endpoint::rx_unseal`]; swapped under a
//! mutex that a worker takes only when a counter says it changed); a worker opens
//! that session's sealed frames of that phase in place after parsing them and passes each
//! on marked opened (or tag failed, to be counted). The session thread still applies the
//! replay window, the key phases, mac1 and the handshake ([`Endpoint::handle_unsealed`]);
//! frames of another phase or unsealed ones come to it as they arrived.
//!
//! Sleeping: an idle worker announces it (`sleeping`), checks its queues once more and
//! `ppoll`s its socket and an eventfd; the session thread writes the eventfd only when it
//! queued something to a sleeping worker. The session thread parks until its endpoint's
//! next deadline; a worker unparks it after passing frames on.

#![allow(unsafe_code)]

use super::answers;
use super::flow::{Build, Flow, TxFinish, TxQueues};
use super::io::XdpIo;
use super::report::{PathStats, QueueStats, WorkerStats};
use crate::driver::service::{ServiceIo, XdpLive};
use crate::driver::session::{DriverError, FramePath, BATCH};
use crate::proto::{Endpoint, Unseal};
use crate::steer::Steering;
use crate::wire::pfs;
use crate::wire::stack::{self, Addrs};
use crate::xsk::{LentFrame, XskSocket, XskStats};
use crossbeam::queue::{ArrayQueue, SegQueue};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Idle rounds a worker spins (yielding) before it sleeps.
const SPIN_ROUNDS: u32 = 32;
/// The longest a worker sleeps before it looks at its stop flag again.
const WORKER_SLEEP: Duration = Duration::from_millis(20);

/// How often a running worker refreshes its XDP_STATISTICS for the metrics.
const LIVE_STATS_EVERY: Duration = Duration::from_millis(200);

/// The longest a received frame waits in the session thread for a lower sequence number
/// from another queue.
const HOLD: Duration = Duration::from_micros(500);
/// Frames staged per worker at most (they hold fill-ring frames meanwhile).
const STAGE_MAX: usize = 256;

/// A received frame handed to the session thread.
struct RxItem {
    frame: LentFrame,
    /// The PacketFS datagram's span in the frame.
    off: u16,
    len: u16,
    addrs: Addrs,
    seq: u64,
    /// Opened by the worker with the keys of this epoch (true) or its tag failed there
    /// (false); None: as it arrived.
    opened: Option<(u64, bool)>,
}

/// Counters one worker keeps (relaxed atomics: written by the worker only).
#[derive(Default)]
struct Counters {
    rx_frames: AtomicU64,
    tx_frames: AtomicU64,
    bad_frames: AtomicU64,
    sleeps: AtomicU64,
    kicks: AtomicU64,
    tx_ring_full: AtomicU64,
    sealed: AtomicU64,
    opened: AtomicU64,
    open_failed: AtomicU64,
}

/// The state one worker shares with the session thread.
pub struct WorkerShared {
    queue: u32,
    cpu: Option<usize>,
    rx_out: ArrayQueue<RxItem>,
    rx_back: ArrayQueue<LentFrame>,
    tx_free: ArrayQueue<LentFrame>,
    tx_out: ArrayQueue<(LentFrame, usize, Option<TxFinish>)>,
    /// The keys this worker opens received frames with, and a count bumped at each change
    /// (the worker looks at the count each round and takes the lock only when it moved).
    unseal: Mutex<Option<Arc<dyn Unseal>>>,
    unseal_gen: AtomicU64,
    sleeping: AtomicBool,
    /// The session thread found this worker's backlog full or its free frames gone and
    /// wants to be unparked once there is room.
    want_room: AtomicBool,
    stop: AtomicBool,
    efd: nix::sys::eventfd::EventFd,
    c: Counters,
    /// XDP_STATISTICS read by the worker as it ends; pinning result.
    final_stats: OnceLock<XskStats>,
    /// XDP_STATISTICS while the worker runs, refreshed every [`LIVE_STATS_EVERY`] (the
    /// receiver service's metrics).
    live_stats: std::sync::Mutex<XskStats>,
    pinned: OnceLock<Option<usize>>,
}

impl WorkerShared {
    /// Shared state for the worker of `sock`, to be pinned to `cpu`. The queues hold every
    /// frame of the socket's UMEM, so a push never finds them full.
    pub fn new(sock: &XskSocket, frames: usize, cpu: Option<usize>) -> std::io::Result<Self> {
        let efd = nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_NONBLOCK | nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        Ok(WorkerShared {
            queue: sock.queue(),
            cpu,
            rx_out: ArrayQueue::new(frames),
            rx_back: ArrayQueue::new(frames),
            tx_free: ArrayQueue::new(frames),
            tx_out: ArrayQueue::new(frames),
            unseal: Mutex::new(None),
            unseal_gen: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            want_room: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            efd,
            c: Counters::default(),
            final_stats: OnceLock::new(),
            live_stats: std::sync::Mutex::new(XskStats::default()),
            pinned: OnceLock::new(),
        })
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Frames received / sent by this worker's socket, bad frames.
    pub fn frames(&self) -> (u64, u64, u64) {
        (
            self.c.rx_frames.load(Ordering::Relaxed),
            self.c.tx_frames.load(Ordering::Relaxed),
            self.c.bad_frames.load(Ordering::Relaxed),
        )
    }

    /// XDP_STATISTICS as the worker read them when it ended (while it runs: as of its
    /// last refresh).
    pub fn xdp_stats(&self) -> XskStats {
        self.final_stats
            .get()
            .copied()
            .unwrap_or_else(|| self.live_stats.lock().map(|s| *s).unwrap_or_default())
    }

    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            cpu: self.pinned.get().copied().flatten(),
            sleeps: self.c.sleeps.load(Ordering::Relaxed),
            kicks: self.c.kicks.load(Ordering::Relaxed),
            tx_ring_full: self.c.tx_ring_full.load(Ordering::Relaxed),
            sealed: self.c.sealed.load(Ordering::Relaxed),
            opened: self.c.opened.load(Ordering::Relaxed),
            open_failed: self.c.open_failed.load(Ordering::Relaxed),
        }
    }

    /// Wake the worker if it sleeps (after queueing something to it).
    fn kick(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            let _ = self.efd.arm();
        }
    }

    /// Open received frames with `u` from now on (None: hand them over as they arrive).
    fn set_unseal(&self, u: Option<Arc<dyn Unseal>>) {
        if let Ok(mut g) = self.unseal.lock() {
            *g = u;
        }
        self.unseal_gen.fetch_add(1, Ordering::Release);
    }

    /// Ask the worker to push out what is queued and end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.sleeping.store(false, Ordering::Relaxed);
        let _ = self.efd.arm();
    }
}

/// The cores workers are pinned to: `cpus` round-robin when given, else every core of the
/// machine round-robin (worker `i` on core `i % n`).
pub fn worker_cpus(n: usize, cpus: &[usize]) -> Vec<Option<usize>> {
    let all: Vec<usize> = if cpus.is_empty() {
        core_affinity::get_core_ids()
            .map(|v| v.into_iter().map(|c| c.id).collect())
            .unwrap_or_default()
    } else {
        cpus.to_vec()
    };
    (0..n)
        .map(|i| (!all.is_empty()).then(|| all[i % all.len()]))
        .collect()
}

/// One worker's loop: runs until [`WorkerShared::stop`], then flushes its tx ring and reads
/// its XDP_STATISTICS. `session` is unparked whenever frames are passed on.
pub fn run_worker(mut sock: XskSocket, sh: &WorkerShared, session: Thread, batch: usize) {
    let pinned = sh
        .cpu
        .filter(|&c| core_affinity::set_for_current(core_affinity::CoreId { id: c }));
    if sh.cpu.is_some() && pinned.is_none() {
        tracing::warn!(queue = sh.queue, cpu = ?sh.cpu, "could not pin the AF_XDP worker");
    }
    let _ = sh.pinned.set(pinned);
    let _ = nix::sys::prctl::set_timerslack(1_000);
    let mut pending: Vec<(LentFrame, usize)> = Vec::with_capacity(batch * 2);
    let mut got: Vec<LentFrame> = Vec::with_capacity(batch);
    let mut spins = 0u32;
    let mut stats_at = Instant::now();
    // The keys handed over, with the count they came at.
    let mut unseal: (u64, Option<Arc<dyn Unseal>>) = (0, None);
    loop {
        let mut work = false;
        if stats_at.elapsed() >= LIVE_STATS_EVERY {
            stats_at = Instant::now();
            if let (Ok(st), Ok(mut l)) = (sock.stats(), sh.live_stats.lock()) {
                *l = st;
            }
        }
        // Transmit what the session built.
        while pending.len() < batch {
            let Some((mut f, len, job)) = sh.tx_out.pop() else {
                break;
            };
            if let Some(job) = job {
                // Seal in place. Safety: the frame was lent by our own socket and is alive.
                if !job.run(unsafe { f.bytes_mut() }) {
                    sock.tx_unlend(f);
                    continue;
                }
                sh.c.sealed.fetch_add(1, Ordering::Relaxed);
            }
            pending.push((f, len));
        }
        if !pending.is_empty() {
            let n = sock.tx_submit(&pending);
            if n < pending.len() {
                sh.c.tx_ring_full.fetch_add(1, Ordering::Relaxed);
            }
            if n > 0 {
                pending.drain(..n);
                sh.c.tx_frames.fetch_add(n as u64, Ordering::Relaxed);
                work = true;
            }
        }
        // Completed frames go back to the session as free frames.
        sock.tx_reclaim();
        while sh.tx_free.len() < sh.tx_free.capacity() {
            let Some(f) = sock.tx_lend() else { break };
            if let Err(f) = sh.tx_free.push(f) {
                sock.tx_unlend(f);
                break;
            }
        }
        if sh.tx_out.len() < batch
            && !sh.tx_free.is_empty()
            && sh.want_room.load(Ordering::Relaxed)
            && sh.want_room.swap(false, Ordering::AcqRel)
        {
            session.unpark();
        }
        // Frames the endpoint is done with go back to the fill ring.
        while let Some(f) = sh.rx_back.pop() {
            sock.rx_return(f);
            work = true;
        }
        // Receive: parse in place, open a session's sealed frames where keys were handed
        // over, pass the good ones on.
        let g = sh.unseal_gen.load(Ordering::Acquire);
        if g != unseal.0 {
            unseal = (g, sh.unseal.lock().ok().and_then(|u| u.clone()));
        }
        got.clear();
        let n = sock.rx_lend(batch, |f| got.push(f));
        if n > 0 {
            work = true;
            sh.c.rx_frames.fetch_add(n as u64, Ordering::Relaxed);
            let mut passed = 0;
            for mut f in got.drain(..) {
                // Safety: the frame was just lent by our own socket and is alive.
                let bytes = unsafe { f.bytes_mut() };
                let base = bytes.as_ptr() as usize;
                let item = match stack::parse(bytes) {
                    Ok((addrs, d)) => {
                        let (off, len) = (d.as_ptr() as usize - base, d.len());
                        let seq = pfs::Packet::new_checked(d).map_or(0, |p| p.seq());
                        let opened = unseal.1.as_ref().and_then(|u| {
                            let r = u.try_open(&mut bytes[off..off + len])?;
                            let c = if r { &sh.c.opened } else { &sh.c.open_failed };
                            c.fetch_add(1, Ordering::Relaxed);
                            Some((u.epoch(), r))
                        });
                        Some((addrs, off, len, seq, opened))
                    }
                    Err(_) => None,
                };
                let item = item.map(|(addrs, off, len, seq, opened)| RxItem {
                    frame: f,
                    off: off as u16,
                    len: len as u16,
                    addrs,
                    seq,
                    opened,
                });
                match item {
                    Some(it) => match sh.rx_out.push(it) {
                        Ok(()) => passed += 1,
                        Err(it) => sock.rx_return(it.frame),
                    },
                    None => {
                        sh.c.bad_frames.fetch_add(1, Ordering::Relaxed);
                        sock.rx_return(f);
                    }
                }
            }
            if passed > 0 {
                session.unpark();
            }
            sock.rx_refill();
        }
        if sh.stop.load(Ordering::Acquire) && pending.is_empty() && sh.tx_out.is_empty() {
            sock.flush(Duration::from_millis(200));
            break;
        }
        if work {
            spins = 0;
            continue;
        }
        if sock.busy_poll() {
            // Busy-poll mode: this worker has its core; it never sleeps.
            std::hint::spin_loop();
            continue;
        }
        spins += 1;
        if spins < SPIN_ROUNDS {
            std::thread::yield_now();
            continue;
        }
        // Sleep: announce it, look once more, then wait for the socket or a kick.
        sh.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let more = !pending.is_empty()
            || !sh.tx_out.is_empty()
            || !sh.rx_back.is_empty()
            || sock.rx_ready(1) > 0
            || sh.stop.load(Ordering::Acquire);
        if !more {
            sh.c.sleeps.fetch_add(1, Ordering::Relaxed);
            use nix::poll::{ppoll, PollFd, PollFlags};
            let mut fds = [
                PollFd::new(sock.as_fd(), PollFlags::POLLIN),
                PollFd::new(sh.efd.as_fd(), PollFlags::POLLIN),
            ];
            let ts = nix::sys::time::TimeSpec::from_duration(WORKER_SLEEP);
            let _ = ppoll(&mut fds, Some(ts), None);
            let kicked = fds[1]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN));
            if kicked {
                sh.c.kicks.fetch_add(1, Ordering::Relaxed);
                let mut b = [0u8; 8];
                // Drain the eventfd (non-blocking).
                let _ = nix::unistd::read(sh.efd.as_raw_fd(), &mut b);
            }
        }
        sh.sleeping.store(false, Ordering::Relaxed);
        spins = 0;
    }
    let _ = sh.final_stats.set(sock.stats().unwrap_or_default());
}

/// The workers' hand-over queues, as places to build frames in (see [`TxQueues`]).
struct Handover<'a>(&'a [WorkerShared]);

impl TxQueues for Handover<'_> {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn queue(&self, i: usize) -> u32 {
        self.0[i].queue
    }
    /// Frames built directly in worker `i`'s UMEM and queued to it (a keyed session's with
    /// their sealing left to the worker).
    fn fill(&mut self, i: usize, max: usize, build: &mut Build<'_>) -> usize {
        let w = &self.0[i];
        // A worker that has not taken its last batches yet gets no more: frames queued
        // behind a descheduled worker would arrive long after the next queue's.
        let room = (2 * BATCH).saturating_sub(w.tx_out.len());
        let mut k = 0;
        while k < BATCH.min(room).min(max) {
            let Some(mut f) = w.tx_free.pop() else { break };
            // Safety: the frame was lent to us by worker i, whose socket lives until
            // the workers are stopped after the session ends.
            let (len, job) = build(unsafe { f.bytes_mut() });
            if len == 0 {
                let _ = w.tx_free.push(f);
                break;
            }
            if let Err((f, _, _)) = w.tx_out.push((f, len, job)) {
                // Cannot happen (the queue holds every frame); never lose the frame.
                let _ = w.tx_free.push(f);
                break;
            }
            k += 1;
        }
        if k > 0 {
            w.kick();
        } else {
            w.want_room.store(true, Ordering::Release);
        }
        k
    }
    fn finishes(&self) -> bool {
        true
    }
}

/// The session thread's side of the workers: builds frames in their UMEM (through the
/// session's [`Flow`], lent for the run) and consumes what they received.
pub struct WorkerSet<'a> {
    sh: &'a [WorkerShared],
    flow: &'a mut Flow,
    /// The steering program in front of the workers' sockets (its counters); None on a
    /// sender taking its answers on kernel UDP.
    steer: Option<&'a Steering>,
    /// The interface (for the metrics).
    iface: &'a str,
    /// A sender's answers read off kernel UDP by the [`answers::Reader`] thread.
    answers: Option<&'a SegQueue<answers::Answer>>,
    /// The worker [`WorkerSet::receive_each`] starts at (round-robin).
    rr: usize,
    /// Per worker: received frames waiting for the merge, with when they were taken.
    staged: Vec<VecDeque<(RxItem, Instant)>>,
    /// Per worker: when it last passed a frame on.
    last_rx: Vec<Option<Instant>>,
    /// The highest sequence number handed to the endpoint.
    last_seq: u64,
    /// When the oldest held frame must go (the session thread wakes then).
    hold_until: Option<Instant>,
    /// Frames handed to the endpoint after a frame with a higher sequence number (what the
    /// merge could not put in order).
    reordered: u64,
    /// Busy-poll mode: the session thread polls the hand-over queues instead of parking.
    busy: bool,
    /// The epoch of the keys the workers open with (None: they open nothing).
    published: Option<u64>,
}

impl<'a> WorkerSet<'a> {
    fn new(
        sh: &'a [WorkerShared],
        flow: &'a mut Flow,
        io: &'a XdpIo,
        answers: Option<&'a SegQueue<answers::Answer>>,
    ) -> Self {
        WorkerSet {
            sh,
            flow,
            steer: io.steering(),
            iface: io.iface(),
            answers,
            rr: 0,
            staged: (0..sh.len())
                .map(|_| VecDeque::with_capacity(STAGE_MAX))
                .collect(),
            last_rx: vec![None; sh.len()],
            busy: false,
            published: None,
            last_seq: 0,
            hold_until: None,
            reordered: 0,
        }
    }

    /// Hand what the workers received to `ep`, merged into the sender's sequence order;
    /// the frames go back to their workers' fill rings.
    ///
    /// Each worker's frames arrive in order, but the workers run independently, so one
    /// queue's frames can reach the session thread a few batches after the next queue's.
    /// Frames wait here (still in their UMEM) until every queue that received something in
    /// the last [`HOLD`] has a frame staged, or until they are [`HOLD`] old; the smallest
    /// sequence number goes first. At most `budget` frames per call.
    fn receive<E: Endpoint + ?Sized>(&mut self, ep: &mut E, budget: usize) -> (usize, bool) {
        // The workers open with the endpoint's current keys (handed over when they change).
        let u = ep.rx_unseal();
        let epoch = u.as_ref().map(|u| u.epoch());
        if epoch != self.published {
            for w in self.sh {
                w.set_unseal(u.clone());
            }
            self.published = epoch;
        }
        let now = Instant::now();
        for (i, w) in self.sh.iter().enumerate() {
            let st = &mut self.staged[i];
            while st.len() < STAGE_MAX {
                let Some(it) = w.rx_out.pop() else { break };
                st.push_back((it, now));
                self.last_rx[i] = Some(now);
            }
        }
        let t = Instant::now();
        let mut accepted = false;
        let mut got = 0;
        let mut returned = vec![false; self.sh.len()];
        while got < budget {
            // The smallest head, and whether some recently active queue has nothing staged.
            let mut best: Option<usize> = None;
            let mut blocked = false;
            for (i, st) in self.staged.iter().enumerate() {
                match st.front() {
                    Some((it, _)) => {
                        if best.is_none_or(|b| it.seq < self.staged[b].front().unwrap().0.seq) {
                            best = Some(i);
                        }
                    }
                    None => {
                        if self.last_rx[i].is_some_and(|l| t < l + HOLD) {
                            blocked = true;
                        }
                    }
                }
            }
            let Some(b) = best else { break };
            let (_, since) = self.staged[b].front().unwrap();
            if blocked && t < *since + HOLD && self.sh.len() > 1 {
                self.hold_until = Some(*since + HOLD);
                break;
            }
            let (it, _) = self.staged[b].pop_front().unwrap();
            if it.seq < self.last_seq {
                self.reordered += 1;
            }
            self.last_seq = self.last_seq.max(it.seq);
            // Safety: the frame was lent by worker b and not returned yet; its socket lives.
            let mut frame = it.frame;
            let bytes = unsafe { frame.bytes_mut() };
            let d = &mut bytes[it.off as usize..it.off as usize + it.len as usize];
            ep.note_source(std::net::IpAddr::V4(it.addrs.src_ip));
            let used = match it.opened {
                Some((epoch, opened)) => ep.handle_unsealed(t, d, epoch, opened),
                None => ep.handle_datagram(t, d),
            };
            if used {
                accepted = true;
                self.flow.note_accepted(it.addrs, b);
            }
            let _ = self.sh[b].rx_back.push(frame);
            returned[b] = true;
            got += 1;
        }
        if self.staged.iter().all(|s| s.is_empty()) {
            self.hold_until = None;
        }
        for (i, w) in self.sh.iter().enumerate() {
            if returned[i] {
                w.kick();
            }
        }
        if accepted {
            self.flow.accept_last();
        }
        (got, accepted)
    }

    /// The receiver service's receive: up to `budget` frames the workers passed on, in
    /// arrival order per worker and the workers in turn (no merge by sequence number: the
    /// numbers of different sessions do not compare), each datagram handed to `f` in place
    /// with its frame's addresses and its worker's index; the frames go back to their
    /// workers. Returns how many.
    pub fn receive_each(
        &mut self,
        budget: usize,
        f: &mut dyn FnMut(&Addrs, usize, &mut [u8]),
    ) -> usize {
        let n = self.sh.len();
        let mut got = 0;
        for k in 0..n {
            let i = (self.rr + k) % n;
            let w = &self.sh[i];
            let mut taken = 0;
            while got < budget {
                let Some(it) = w.rx_out.pop() else { break };
                let mut frame = it.frame;
                // Safety: the frame was lent by worker i and not returned yet; its socket
                // lives until the workers are stopped.
                let bytes = unsafe { frame.bytes_mut() };
                f(
                    &it.addrs,
                    i,
                    &mut bytes[it.off as usize..it.off as usize + it.len as usize],
                );
                let _ = w.rx_back.push(frame);
                taken += 1;
                got += 1;
            }
            if taken > 0 {
                w.kick();
            }
        }
        if n > 0 {
            self.rr = (self.rr + 1) % n;
        }
        got
    }

    /// Up to `budget` datagrams of `ep` built by `flow` (a session's, in the service) into
    /// the workers' frames.
    pub fn transmit_flow<E: Endpoint + ?Sized>(
        &mut self,
        flow: &mut Flow,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> (usize, bool) {
        flow.transmit(&mut Handover(self.sh), ep, now, budget)
    }

    /// What the workers' sockets did so far (XDP_STATISTICS as of each worker's last
    /// refresh).
    pub fn live_stats(&self) -> PathStats {
        let mut bad_frames = 0;
        let queues = self
            .sh
            .iter()
            .map(|w| {
                let (rx, tx, b) = w.frames();
                bad_frames += b;
                QueueStats {
                    queue: w.queue(),
                    rx_frames: rx,
                    tx_frames: tx,
                    xdp: w.xdp_stats(),
                    worker: Some(w.stats()),
                }
            })
            .collect();
        PathStats {
            queues,
            bad_frames,
            reordered: self.reordered,
        }
    }

    /// The steering program in front of the workers (None: a sender without one).
    pub fn steering(&self) -> Option<&Steering> {
        self.steer
    }

    /// Hand the answers the reader thread queued to `ep`: (datagrams, any accepted).
    fn take_answers<E: Endpoint + ?Sized>(&mut self, ep: &mut E, budget: usize) -> (usize, bool) {
        let Some(q) = self.answers else {
            return (0, false);
        };
        let t = Instant::now();
        let (mut got, mut accepted) = (0, false);
        while got < budget {
            let Some((src, mut d)) = q.pop() else { break };
            got += 1;
            ep.note_source(src);
            accepted |= ep.handle_datagram(t, &mut d);
        }
        (got, accepted)
    }

    /// Sleep until a worker passes frames on or `wait` passes.
    fn wait(&mut self, wait: Duration) {
        if self.sh.iter().any(|w| !w.rx_out.is_empty())
            || self.answers.is_some_and(|q| !q.is_empty())
        {
            return;
        }
        let mut wait = wait;
        if let Some(h) = self.hold_until {
            wait = wait.min(h.saturating_duration_since(Instant::now()));
        }
        if wait.is_zero() {
            return;
        }
        if self.busy {
            let until = Instant::now() + wait;
            while Instant::now() < until
                && self.sh.iter().all(|w| w.rx_out.is_empty())
                && self.answers.is_none_or(|q| q.is_empty())
            {
                std::hint::spin_loop();
            }
            return;
        }
        std::thread::park_timeout(wait);
    }
}

impl FramePath for WorkerSet<'_> {
    fn transmit<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> Result<(usize, bool), DriverError> {
        Ok(self.flow.transmit(&mut Handover(self.sh), ep, now, budget))
    }
    fn receive<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        budget: usize,
    ) -> Result<(usize, bool), DriverError> {
        let (n, a) = self.take_answers(ep, budget);
        let (m, b) = WorkerSet::receive(self, ep, budget.saturating_sub(n));
        Ok((n + m, a || b))
    }
    fn wait(&mut self, d: Duration) -> Result<(), DriverError> {
        WorkerSet::wait(self, d);
        Ok(())
    }
    // flush: the workers flush their tx rings when stopped.
    fn peer(&self) -> Option<SocketAddr> {
        self.flow.peer()
    }
}

/// The receiver service's I/O over the workers: the session thread runs the service loop,
/// each session's frames built by its own receiver [`Flow`] into the workers' UMEM frames and
/// received frames handed over in place ([`WorkerSet::receive_each`]).
pub struct WorkersServiceIo<'s, 'w> {
    set: &'s mut WorkerSet<'w>,
    template: Flow,
    reorder: Option<Duration>,
}

impl<'s, 'w> WorkersServiceIo<'s, 'w> {
    pub fn new(set: &'s mut WorkerSet<'w>, template: Flow, reorder: Option<Duration>) -> Self {
        WorkersServiceIo {
            set,
            template,
            reorder,
        }
    }
}

impl ServiceIo for WorkersServiceIo<'_, '_> {
    type Route = Flow;
    /// The frame's addresses and the index of the worker it came from.
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
        Ok(self.set.transmit_flow(flow, ep, now, budget))
    }

    fn receive(
        &mut self,
        budget: usize,
        f: crate::driver::service::Deliver<'_, (Addrs, usize)>,
    ) -> Result<usize, DriverError> {
        Ok(self.set.receive_each(budget, &mut |a, i, d| {
            let from = SocketAddr::V4(std::net::SocketAddrV4::new(a.src_ip, a.src_port));
            f(from, &(*a, i), d)
        }))
    }

    fn wait(&mut self, d: Duration) -> Result<(), DriverError> {
        FramePath::wait(&mut *self.set, d)
    }

    // flush: the workers flush their tx rings when stopped.

    fn reorder_window(&self) -> Option<Duration> {
        self.reorder
    }

    fn xdp_stats(&self) -> Option<XdpLive> {
        let st = self.set.live_stats();
        Some(super::io::xdp_live(
            self.set.iface,
            self.set.steering(),
            &st,
        ))
    }
}

/// Run `f` with one pinned worker per socket of `io` (worker `i` on `cpus[i]`), each
/// owning its socket for the run, and `flow` lent to the session thread's side. Every
/// worker has ended (its socket closed, out of the XSKMAP) when this returns, with what
/// the workers did.
pub fn run<R>(
    io: &mut XdpIo,
    flow: &mut Flow,
    cpus: &[Option<usize>],
    frames_per_socket: usize,
    batch: usize,
    f: impl FnOnce(&mut WorkerSet<'_>) -> R,
) -> std::io::Result<(R, PathStats)> {
    let busy = io.busy_poll();
    let socks = io.take_sockets();
    // A sender taking its answers on kernel UDP: a reader thread queues them for the
    // session thread (nothing reaches the workers' rings without a program).
    let answers = io.take_answers();
    let io_ref: &XdpIo = io;
    let shared = socks
        .iter()
        .enumerate()
        .map(|(i, s)| WorkerShared::new(s, frames_per_socket, cpus.get(i).copied().flatten()))
        .collect::<std::io::Result<Vec<_>>>()?;
    let map: Vec<String> = shared
        .iter()
        .map(|w| match w.cpu {
            Some(c) => format!("q{}->cpu{c}", w.queue()),
            None => format!("q{}->unpinned", w.queue()),
        })
        .collect();
    tracing::info!(workers = %map.join(" "), "AF_XDP workers");
    let session = std::thread::current();
    let mut answers_back = None;
    let r = std::thread::scope(|sc| {
        let mut spawn_err = None;
        let reader = match answers {
            Some(a) => match answers::Reader::spawn(sc, a, session.clone()) {
                Ok(r) => Some(r),
                Err(e) => {
                    spawn_err = Some(e);
                    None
                }
            },
            None => None,
        };
        for (sock, sh) in socks.into_iter().zip(&shared) {
            let session = session.clone();
            let b = std::thread::Builder::new().name(format!("pfs-xsk-q{}", sh.queue()));
            if let Err(e) = b.spawn_scoped(sc, move || run_worker(sock, sh, session, batch)) {
                spawn_err = Some(e);
                break;
            }
        }
        let out = match spawn_err {
            Some(e) => Err(e),
            None => {
                let q = reader.as_ref().map(|(r, _)| r.queue());
                let mut set = WorkerSet::new(&shared, flow, io_ref, q);
                set.busy = busy;
                let r = f(&mut set);
                Ok((r, set.reordered))
            }
        };
        for sh in &shared {
            sh.stop();
        }
        if let Some((r, h)) = reader {
            r.stop();
            answers_back = h.join().ok();
        }
        out
    });
    if let Some(a) = answers_back {
        io.set_answers(a); // for the report's count
    }
    let (r, reordered) = r?;
    let mut bad_frames = 0;
    let queues = shared
        .iter()
        .map(|w| {
            let (rx, tx, b) = w.frames();
            bad_frames += b;
            QueueStats {
                queue: w.queue(),
                rx_frames: rx,
                tx_frames: tx,
                xdp: w.xdp_stats(),
                worker: Some(w.stats()),
            }
        })
        .collect();
    Ok((
        r,
        PathStats {
            queues,
            bad_frames,
            reordered,
        },
    ))
}
