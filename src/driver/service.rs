//! `pfs recv` as a service: one socket (or one set of AF_XDP sockets), many sessions at
//! once, until stopped.
//!
//! The loop is generic over its I/O ([`ServiceIo`]: a datagram source and sink that knows
//! each datagram's peer): the kernel UDP socket ([`UdpIo`], [`UdpService`]) or the AF_XDP
//! sockets of the session thread ([`crate::driver::xdp::XdpServiceIo`], one receiver
//! [`crate::driver::xdp::flow::Flow`] per session), so one AF_XDP process attaches the
//! steering program and binds its queues once and serves every session.
//!
//! Each session is its own state machine (a [`Guard`] around a [`Receiver`] with its own
//! file sink) in a [`Table`] (`proto::table`, pure) that demultiplexes datagrams by the
//! session id in the PacketFS header. A session opens with a HandshakeInit (a Hello with
//! `--insecure`) while the table is accepting and below `max_sessions`; everything else of
//! no known session is dropped and counted. Each outgoing datagram goes to its session's
//! peer; sessions transmit in round-robin order, a batch each per round, and the loop
//! sleeps until the earliest of their timers.
//!
//! A session that ends (finished, aborted, timed out) leaves the table; its summary goes to
//! [`ServiceHooks::session_ended`] and into the [`Live`] counters (the Prometheus
//! endpoint's source). The secure channel's per-source init rate limit and its replay rule
//! for inits ([`InitHistory`]) are kept here across sessions (each Guard's own only sees
//! its session).
//!
//! Stopping ([`Control::stop`], SIGTERM/SIGINT): no new sessions; running ones get
//! `grace` to finish, then are cancelled (the peer is told, the receiver aborts) and the
//! loop returns once they closed. Reloading ([`Control::reload`], SIGHUP): the hooks give
//! the new settings; sessions already running keep the ones they started with.

pub use super::service_io::{Deliver, ServiceIo, XdpLive, XdpQueueLive};
use super::session::{self, guard_config, recv_summary, Marks, BATCH, FINISH_LINGER};
use super::udp::{RecvConfig, UdpIo};
use super::DriverError;
use crate::fsink::MmapSink;
use crate::proto::table::{classify, Refusal, Route, Table};
use crate::proto::{Endpoint, Event, Receiver, ReceiverConfig};
use crate::secure::guard::InitLimiter;
use crate::secure::{Guard, GuardConfig, PublicKey, SecStats, Security};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest the loop sleeps before it looks at its flags again.
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// After the grace period, cancelled sessions get this long to say so to their peers.
const CANCEL_LINGER: Duration = Duration::from_secs(2);

/// What runs a service once it is built, whatever its I/O type (the AF_XDP receiver builds
/// its service inside the scope of its worker threads, so the caller hands this in).
pub trait ServeWith<R> {
    fn serve<I: ServiceIo>(self, svc: Service<I>) -> R;
}

/// How often the loop refreshes [`Live::xdp`] (a getsockopt per socket and a map read).
const XDP_STATS_EVERY: Duration = Duration::from_millis(200);

/// The service's settings (what a reload may change: `recv.proto`, `recv.security`,
/// `max_sessions`).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub recv: RecvConfig,
    /// Most sessions at once; opening frames beyond it are dropped and counted.
    pub max_sessions: usize,
    /// How long running sessions may go on after a stop.
    pub grace: Duration,
}

impl ServiceConfig {
    pub fn new(recv: RecvConfig) -> Self {
        ServiceConfig {
            recv,
            max_sessions: 64,
            grace: Duration::from_secs(30),
        }
    }
}

/// Flags the service loop polls (set from signal handlers).
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Stop accepting, finish within the grace period, return.
    pub stop: Arc<AtomicBool>,
    /// Ask the hooks for new settings.
    pub reload: Arc<AtomicBool>,
}

/// New settings from a reload.
pub struct Reload {
    pub proto: ReceiverConfig,
    pub security: Security,
    pub max_sessions: usize,
}

/// A session that left the table.
pub struct SessionEnd {
    pub session: u64,
    pub peer: SocketAddr,
    /// The sender's name from the authorized senders (None with `--insecure`).
    pub sender: Option<String>,
    pub result: Result<session::RecvSummary, DriverError>,
}

/// What the service tells its caller (the CLI prints, notifies systemd, logs).
pub trait ServiceHooks {
    /// A session event (accepted, aborted, ...), with the session's sender name.
    fn event(&mut self, _session: u64, _sender: Option<&str>, _e: &Event) {}
    fn session_ended(&mut self, _end: SessionEnd) {}
    /// The reload flag was set: the new settings, or None to keep the old ones.
    fn reload(&mut self) -> Option<Reload> {
        None
    }
    /// The stop flag was seen (once).
    fn stopping(&mut self, _active: usize) {}
    /// Called at every wake of the loop (at least every 50 ms).
    fn tick(&mut self, _live: &Live) {}
}

/// Counters of a running service, read by other threads (metrics endpoint).
#[derive(Debug, Default)]
pub struct Live {
    pub sessions_active: AtomicU64,
    pub sessions_total: AtomicU64,
    pub sessions_ok: AtomicU64,
    pub sessions_failed: AtomicU64,
    pub files: AtomicU64,
    /// Bytes of verified files.
    pub file_bytes: AtomicU64,
    /// Datagrams received and their link bytes (datagram + Ethernet/IPv4/UDP headers).
    pub frames_received: AtomicU64,
    pub wire_bytes_received: AtomicU64,
    pub frames_sent: AtomicU64,
    /// Frames that arrived twice (the sender's retransmissions that were not needed) and
    /// NACKs sent (retransmissions asked for), of ended sessions.
    pub duplicate_frames: AtomicU64,
    pub reordered_frames: AtomicU64,
    pub nacks: AtomicU64,
    /// Drops and refusals by reason.
    pub refused_unknown_sender: AtomicU64,
    pub refused_mac1: AtomicU64,
    pub refused_rate_limited: AtomicU64,
    pub refused_bad_init: AtomicU64,
    pub refused_replayed_init: AtomicU64,
    pub tag_failures: AtomicU64,
    pub replays: AtomicU64,
    pub refused_over_max_sessions: AtomicU64,
    pub refused_closing: AtomicU64,
    pub dropped_unknown_session: AtomicU64,
    pub dropped_malformed: AtomicU64,
    /// Frames a session's Guard dropped before decryption.
    pub dropped_other: AtomicU64,
    /// The AF_XDP layer (None over UDP), refreshed by the loop.
    pub xdp: Mutex<Option<XdpLive>>,
}

/// A plain copy of [`Live`] (for tests and the final summary).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LiveSnapshot {
    pub sessions_active: u64,
    pub sessions_total: u64,
    pub sessions_ok: u64,
    pub sessions_failed: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub frames_received: u64,
    pub wire_bytes_received: u64,
    pub frames_sent: u64,
    pub duplicate_frames: u64,
    pub reordered_frames: u64,
    pub nacks: u64,
    pub refused_unknown_sender: u64,
    pub refused_mac1: u64,
    pub refused_rate_limited: u64,
    pub refused_bad_init: u64,
    pub refused_replayed_init: u64,
    pub tag_failures: u64,
    pub replays: u64,
    pub refused_over_max_sessions: u64,
    pub refused_closing: u64,
    pub dropped_unknown_session: u64,
    pub dropped_malformed: u64,
    pub dropped_other: u64,
    pub xdp: Option<XdpLive>,
}

fn add(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

impl Live {
    pub fn snapshot(&self) -> LiveSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LiveSnapshot {
            sessions_active: g(&self.sessions_active),
            sessions_total: g(&self.sessions_total),
            sessions_ok: g(&self.sessions_ok),
            sessions_failed: g(&self.sessions_failed),
            files: g(&self.files),
            file_bytes: g(&self.file_bytes),
            frames_received: g(&self.frames_received),
            wire_bytes_received: g(&self.wire_bytes_received),
            frames_sent: g(&self.frames_sent),
            duplicate_frames: g(&self.duplicate_frames),
            reordered_frames: g(&self.reordered_frames),
            nacks: g(&self.nacks),
            refused_unknown_sender: g(&self.refused_unknown_sender),
            refused_mac1: g(&self.refused_mac1),
            refused_rate_limited: g(&self.refused_rate_limited),
            refused_bad_init: g(&self.refused_bad_init),
            refused_replayed_init: g(&self.refused_replayed_init),
            tag_failures: g(&self.tag_failures),
            replays: g(&self.replays),
            refused_over_max_sessions: g(&self.refused_over_max_sessions),
            refused_closing: g(&self.refused_closing),
            dropped_unknown_session: g(&self.dropped_unknown_session),
            dropped_malformed: g(&self.dropped_malformed),
            dropped_other: g(&self.dropped_other),
            xdp: self.xdp.lock().map(|x| x.clone()).unwrap_or_default(),
        }
    }

    /// A Guard's refusals and drops.
    fn add_sec(&self, s: &SecStats) {
        add(&self.refused_unknown_sender, s.refused);
        add(&self.refused_mac1, s.mac1_failures);
        add(&self.refused_rate_limited, s.rate_limited);
        add(&self.refused_bad_init, s.bad_inits);
        add(&self.tag_failures, s.tag_failures);
        add(&self.replays, s.replays);
        add(&self.dropped_other, s.dropped);
    }
}

/// How far back (ns) init timestamps of one sender are remembered: an init older than the
/// newest accepted from its key by more than this is refused outright.
const INIT_WINDOW_NS: u64 = 120_000_000_000;

/// The init timestamps accepted per sender key, across sessions. One sender may run several
/// sessions at once (its inits may arrive out of order), so the rule is not "newer than the
/// last" (a one-session Guard's) but "not seen before, and not older than the newest by more
/// than [`INIT_WINDOW_NS`]": a replayed init opens no second session, and memory stays
/// bounded by the sessions of one window.
#[derive(Default)]
struct InitHistory {
    keys: HashMap<PublicKey, (u64, std::collections::BTreeSet<u64>)>,
}

impl InitHistory {
    fn admit(&mut self, key: PublicKey, ts: u64) -> bool {
        let (newest, seen) = self.keys.entry(key).or_default();
        if seen.contains(&ts) || ts.saturating_add(INIT_WINDOW_NS) < *newest {
            return false;
        }
        seen.insert(ts);
        *newest = (*newest).max(ts);
        let floor = newest.saturating_sub(INIT_WINDOW_NS);
        *seen = seen.split_off(&floor);
        true
    }
}

/// One session of the service.
struct Sess<'a, R> {
    guard: Guard<Receiver<'a, MmapSink>>,
    /// How its datagrams are addressed (the I/O's).
    route: R,
    marks: Marks,
    /// Frames sent so far, counted into [`Live`] as they go.
    sent_counted: u64,
}

impl<R> Sess<'_, R> {
    fn over(&self, now: Instant) -> bool {
        if self.guard.is_closed() {
            return true;
        }
        // Finished: the files are durable; wait for the sender's Close at most the linger.
        matches!(self.guard.outcome(), Some(Ok(())))
            && self.marks.outcome.is_some_and(|t| now >= t + FINISH_LINGER)
    }

    fn deadline(&self) -> Option<Instant> {
        let t = self.guard.poll_timeout();
        match (self.marks.outcome, self.guard.outcome()) {
            (Some(o), Some(Ok(()))) => {
                Some(t.map_or(o + FINISH_LINGER, |t| t.min(o + FINISH_LINGER)))
            }
            _ => t,
        }
    }
}

/// The receiver service over `I` (see the module docs).
pub struct Service<I: ServiceIo> {
    cfg: ServiceConfig,
    io: I,
    live: Arc<Live>,
}

/// The service over one kernel UDP socket.
pub type UdpService = Service<UdpIo>;

impl Service<UdpIo> {
    pub fn bind(cfg: ServiceConfig) -> Result<Self, DriverError> {
        let io = UdpIo::bind(cfg.recv.bind, None, cfg.recv.socket_buffer)?;
        Ok(Service::new(cfg, io))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.io.local_addr()
    }
}

impl<I: ServiceIo> Service<I> {
    /// A service over `io` (bound already).
    pub fn new(cfg: ServiceConfig, io: I) -> Self {
        let live = Live::default();
        if let Ok(mut x) = live.xdp.lock() {
            *x = io.xdp_stats();
        }
        Service {
            cfg,
            io,
            live: Arc::new(live),
        }
    }

    /// The I/O (its counters, its addresses).
    pub fn io(&self) -> &I {
        &self.io
    }

    /// The counters, for a metrics thread.
    pub fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live)
    }

    /// Serve sessions until `ctl.stop` (then the grace period). Errors are the socket's.
    pub fn run(
        &mut self,
        snapshot_id: [u8; 32],
        snapshot: &[u8],
        ctl: &Control,
        hooks: &mut dyn ServiceHooks,
    ) -> Result<LiveSnapshot, DriverError> {
        let _ = nix::sys::prctl::set_timerslack(1_000);
        bound_heap_retention();
        let reorder = self.io.reorder_window();
        let with_reorder = |mut p: ReceiverConfig| {
            if let Some(w) = reorder {
                if p.reorder_window.is_zero() {
                    p.reorder_window = w;
                }
            }
            p
        };
        let mut proto = with_reorder(self.cfg.recv.proto.clone());
        let mut security = self.cfg.recv.security.clone();
        // the key of the mac1 check new sessions pass first (None: --insecure)
        let mac1_key_of = |s: &Security| match s {
            Security::Receiver(k) => Some(crate::secure::channel::mac1_key(&k.identity.public())),
            _ => None,
        };
        let mut mac1_key = mac1_key_of(&security);
        let guard_base: GuardConfig = self.cfg.recv.guard.clone();
        let mtu = self.cfg.recv.mtu;
        let out_dir = self.cfg.recv.out_dir.clone();
        let mut table: Table<Sess<'_, I::Route>> = Table::new(self.cfg.max_sessions);
        // opening frames per source, kept across sessions
        let mut limiter = InitLimiter::new(guard_base.init_rate, guard_base.init_burst);
        let mut inits = InitHistory::default();
        let mut stopping: Option<Instant> = None;
        let mut cancelled = false;
        let live = Arc::clone(&self.live);
        let template = self.io.route_template();
        let mut xdp_at = Instant::now();
        let r: Result<(), DriverError> = 'serve: loop {
            let now = Instant::now();
            if stopping.is_none() && ctl.stop.load(Ordering::Relaxed) {
                stopping = Some(now);
                table.stop_accepting();
                hooks.stopping(table.len());
            }
            if ctl.reload.swap(false, Ordering::Relaxed) {
                if let Some(r) = hooks.reload() {
                    proto = with_reorder(r.proto);
                    security = r.security;
                    mac1_key = mac1_key_of(&security);
                    table.set_max(r.max_sessions);
                }
            }
            if let Some(t) = stopping {
                if table.is_empty() {
                    break Ok(());
                }
                if !cancelled && now >= t + self.cfg.grace {
                    cancelled = true;
                    for s in table.slots_mut() {
                        s.state.guard.cancel(now);
                    }
                }
                if cancelled && now >= t + self.cfg.grace + CANCEL_LINGER {
                    // Peers that never answered: end what is left.
                    let left = table.remove_where(|_| true);
                    for s in left {
                        self.end(s, hooks);
                    }
                    break Ok(());
                }
            }
            for s in table.slots_mut() {
                if s.state.guard.poll_timeout().is_some_and(|t| t <= now) {
                    s.state.guard.handle_timeout(now);
                }
            }
            // Transmit: each session a batch, round robin, each to its own peer.
            let mut more = false;
            let order: Vec<usize> = table.rotation().collect();
            for i in order {
                let slot = table.slot_mut(i);
                let st = &mut slot.state;
                let (sent, exhausted) =
                    match self
                        .io
                        .transmit(&mut st.route, slot.peer, &mut st.guard, now, BATCH)
                    {
                        Ok(x) => x,
                        Err(e) => break 'serve Err(e),
                    };
                if sent > 0 && slot.state.marks.first_sent.is_none() {
                    slot.state.marks.first_sent = Some(now);
                }
                if !exhausted || sent == BATCH {
                    more = true;
                }
                let st = slot.state.guard.stats().frames_sent;
                add(
                    &live.frames_sent,
                    st.saturating_sub(slot.state.sent_counted),
                );
                slot.state.sent_counted = st;
            }
            // Events, then the sessions that ended.
            for s in table.slots_mut() {
                let session = s.session;
                while let Some(e) = s.state.guard.poll_event() {
                    let t = Instant::now();
                    match e {
                        Event::Accepted { .. } => s.state.marks.accepted = Some(t),
                        Event::Finished | Event::Aborted(_) => {
                            s.state.marks.outcome.get_or_insert(t);
                        }
                        _ => {}
                    }
                    let name = s.state.guard.peer().map(|p| p.0.clone());
                    hooks.event(session, name.as_deref(), &e);
                }
            }
            let now = Instant::now();
            let ended = table.remove_where(|s| s.state.over(now));
            let any_ended = !ended.is_empty();
            for s in ended {
                self.end(s, hooks);
            }
            live.sessions_active
                .store(table.len() as u64, Ordering::Relaxed);
            if any_ended && table.len() == 0 {
                release_freed_memory();
            }
            // Receive: each datagram in place, to its session or to a new one.
            let mut fatal = None;
            let got = {
                let mut on = |from: SocketAddr, meta: &I::From, dg: &mut [u8]| {
                    if fatal.is_some() {
                        return;
                    }
                    add(&live.frames_received, 1);
                    add(
                        &live.wire_bytes_received,
                        dg.len() as u64 + session::LINK_OVERHEAD,
                    );
                    let now = Instant::now();
                    let header = classify(dg, security.is_insecure());
                    match table.route(header) {
                        Route::Session(i) => {
                            let s = table.slot_mut(i);
                            s.state.guard.note_source(from.ip());
                            if s.state.guard.handle_datagram(now, dg) {
                                // Authenticated (or, insecure, the session's own): follow
                                // the peer if it moved.
                                s.peer = from;
                                I::accepted(&mut s.state.route, meta);
                            }
                        }
                        Route::New => {
                            // mac1 before anything else: a forged init builds nothing
                            if let Some(key) = &mac1_key {
                                if !crate::secure::guard::init_mac1_ok(key, dg) {
                                    add(&live.refused_mac1, 1);
                                    return;
                                }
                            }
                            if !security.is_insecure() && !limiter.allow(Some(from.ip()), now) {
                                add(&live.refused_rate_limited, 1);
                                return;
                            }
                            let receiver = match session::file_receiver(
                                proto.clone(),
                                mtu,
                                &out_dir,
                                snapshot_id,
                                snapshot,
                                &security,
                            ) {
                                Ok(r) => r,
                                Err(e) => {
                                    fatal = Some(e);
                                    return;
                                }
                            };
                            let mut guard = Guard::new(
                                receiver,
                                security.clone(),
                                None,
                                guard_config(&guard_base),
                            );
                            guard.note_source(from.ip());
                            if !guard.handle_datagram(now, dg) {
                                live.add_sec(&guard.sec_stats());
                                return;
                            }
                            if let Some((key, ts)) = guard.accepted_init() {
                                if !inits.admit(key, ts) {
                                    add(&live.refused_replayed_init, 1);
                                    return;
                                }
                            }
                            let id = header.map_or(0, |h| h.session);
                            let mut marks = Marks::new(now);
                            marks.first_accepted = Some(now);
                            let mut route = template.clone();
                            I::accepted(&mut route, meta);
                            table.insert(
                                id,
                                from,
                                Sess {
                                    guard,
                                    route,
                                    marks,
                                    sent_counted: 0,
                                },
                            );
                            add(&live.sessions_total, 1);
                        }
                        Route::Refused(r) => add(
                            match r {
                                Refusal::Malformed => &live.dropped_malformed,
                                Refusal::UnknownSession => &live.dropped_unknown_session,
                                Refusal::OverMaxSessions => &live.refused_over_max_sessions,
                                Refusal::Closing => &live.refused_closing,
                            },
                            1,
                        ),
                    }
                };
                match self.io.receive(BATCH, &mut on) {
                    Ok(n) => n,
                    Err(e) => break 'serve Err(e),
                }
            };
            if let Some(e) = fatal {
                break 'serve Err(e);
            }
            live.sessions_active
                .store(table.len() as u64, Ordering::Relaxed);
            if xdp_at.elapsed() >= XDP_STATS_EVERY {
                xdp_at = Instant::now();
                if let Some(x) = self.io.xdp_stats() {
                    if let Ok(mut l) = live.xdp.lock() {
                        *l = Some(x);
                    }
                }
            }
            hooks.tick(&live);
            if more || got >= BATCH {
                continue;
            }
            let now = Instant::now();
            let mut until = table
                .next_deadline(|s| s.deadline())
                .map_or(now + MAX_SLEEP, |d| d.min(now + MAX_SLEEP));
            if got > 0 {
                until = now;
            }
            if let Err(e) = self.io.wait(until.saturating_duration_since(now)) {
                break 'serve Err(e);
            }
        };
        // The last Close or Abort frames leave before the sockets close.
        self.io.flush();
        if let Some(x) = self.io.xdp_stats() {
            if let Ok(mut l) = live.xdp.lock() {
                *l = Some(x);
            }
        }
        // On an I/O error, running sessions end here (their summaries, the hook).
        if r.is_err() {
            for s in table.remove_where(|_| true) {
                self.end(s, hooks);
            }
        }
        r?;
        live.sessions_active.store(0, Ordering::Relaxed);
        Ok(live.snapshot())
    }

    /// A session left the table: its summary, counters and the hook.
    fn end(&self, s: crate::proto::table::Slot<Sess<'_, I::Route>>, hooks: &mut dyn ServiceHooks) {
        let live = &self.live;
        let mut st = s.state;
        st.marks.end = Instant::now();
        let sec = st.guard.summary();
        let sender = sec.peer_name.clone();
        live.add_sec(&sec.counters);
        let outcome = st.guard.outcome().or_else(|| {
            // Cut short by the shutdown before the receiver closed.
            st.guard.cancel(Instant::now());
            st.guard.outcome()
        });
        let receiver = st.guard.into_inner();
        let r = recv_summary(&receiver, Some(s.peer), &st.marks, sec, outcome);
        let stats = receiver.stats();
        add(&live.duplicate_frames, stats.duplicate_frames);
        add(&live.reordered_frames, stats.reordered_frames);
        add(&live.nacks, stats.nacks);
        match &r {
            Ok(sum) => {
                add(&live.sessions_ok, 1);
                add(&live.files, sum.files.len() as u64);
                add(&live.file_bytes, sum.file_bytes);
            }
            Err(_) => add(&live.sessions_failed, 1),
        }
        drop(receiver);
        hooks.session_ended(SessionEnd {
            session: s.session,
            peer: s.peer,
            sender,
            result: r,
        });
    }
}

/// A service runs for weeks: fix glibc's mmap threshold at 1 MiB, so buffers of a MiB or
/// more are mapped and unmapped on their own and the arenas keep the default trim threshold.
/// Left dynamic, the threshold rises with the largest buffer freed (up to 32 MiB) and each
/// arena's trim threshold to twice that, so a thread's arena kept up to 64 MiB of free top
/// after a large session, which malloc_trim does not release for arenas other than the
/// main one (the soak saw an idle service keep 18 MB in one thread's arena: +42% RSS).
fn bound_heap_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: mallopt sets glibc's allocator parameters; it takes no pointers.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Give the memory the last sessions freed back to the system once none runs: a session's
/// large buffers (reassembly, packed streams, small files held until commit) raise glibc's
/// dynamic mmap threshold, after which freed buffers stay in the heap and an idle service
/// keeps the RSS of its largest session (scripts/soak.sh saw +27% between idle samples).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: malloc_trim only walks and trims glibc's own arenas; it takes no pointers.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_history_takes_out_of_order_inits_once_each() {
        let k = crate::secure::Identity::generate().unwrap().public();
        let mut h = InitHistory::default();
        let s = 1_000_000_000u64;
        assert!(h.admit(k, 100 * s));
        // A concurrent session's init, made earlier, arriving later: accepted.
        assert!(h.admit(k, 99 * s));
        // Replays of either: refused.
        assert!(!h.admit(k, 100 * s));
        assert!(!h.admit(k, 99 * s));
        // Far older than the newest: refused without being remembered.
        assert!(h.admit(k, 300 * s));
        assert!(!h.admit(k, 150 * s));
        assert!(h.admit(k, 200 * s));
        // Memory: only the window is kept.
        assert!(h.keys[&k].1.iter().all(|&t| t + INIT_WINDOW_NS >= 300 * s));
        let other = crate::secure::Identity::generate().unwrap().public();
        assert!(h.admit(other, 100 * s));
    }
}
