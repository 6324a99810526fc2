//! The session core: the one drive loop, its clock, the summaries and the driver error,
//! generic over a [`FramePath`] (the kernel UDP socket, the AF_XDP session thread, the
//! AF_XDP workers).
//!
//! The loop ([`drive`]) calls the endpoint in a fixed order: cancel, timers, transmit (paced
//! by the endpoint), events, then receive; when neither direction has work left it sleeps
//! in [`FramePath::wait`] until the endpoint's next deadline. It reads the clock for the
//! state machine and keeps the session's marks ([`Marks`]): one clock rule for every path.
//!
//! Clock rule. A sender's session time runs from its first frame to [`Event::Finished`]
//! (the receiver has confirmed every file durable under its final name) or
//! [`Event::Aborted`]; its end-to-end time runs from the `origin` its caller gives (the
//! start of `pfs send`: snapshot load, planning, packing) to the same moment. A
//! receiver's session time runs from [`Event::Accepted`] to Finished/Aborted; its
//! end-to-end time from the session's first accepted datagram. What follows (the closing
//! exchange) is not counted.
//!
//! Returning. Once the endpoint has finished, a sender stops as soon as its Close is on the
//! wire, and a receiver waits for that Close at most [`FINISH_LINGER`]: the user's command
//! returns as soon as the receiver confirmed the durable files. A late repeat (a lost Close)
//! costs the receiver that bound, never the sender.

use crate::fsink::MmapSink;
use crate::prepare::stream::{Feed, Item, StreamError};
use crate::proto::{
    datagram_for_mtu, Endpoint, Event, Failure, OutgoingFile, Receiver, ReceiverConfig, SendError,
    SendFile, Sender, SenderConfig, Stats,
};
use crate::secure::{Guard, GuardConfig, SecStats, Security, SecuritySummary};
use crate::xsk::XskError;
use serde::Serialize;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Frames moved per batch before the loop looks at the other direction.
pub const BATCH: usize = 64;
/// The longest the loop sleeps before it looks at the cancel flag again.
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// How long a finished receiver waits for the sender's Close before it returns anyway
/// (its files are durable already; the sender has its answer unless every Done repeat in
/// this time was lost).
pub const FINISH_LINGER: Duration = Duration::from_millis(250);
/// A session with its outcome whose last frames (the terminal frame, a Close) the path has
/// had no room for during this long is over: the link is down or its TX ring never
/// completes, and nobody would hear them anyway (the loop would otherwise spin until killed).
pub const STUCK_AFTER_OUTCOME: Duration = Duration::from_secs(1);

/// Bytes each datagram costs on an Ethernet link beyond its own length (Ethernet 14, IPv4
/// 20, UDP 8), counted in `wire_bytes`.
pub const LINK_OVERHEAD: u64 = crate::wire::stack::OVERHEAD as u64;

/// One way of moving PacketFS datagrams between an endpoint and the wire. The path builds
/// outgoing datagrams in its own buffers (UMEM frames, a GSO batch) through
/// `poll_transmit` and hands received ones to `handle_datagram` in place; it learns its peer
/// from the first datagram the endpoint accepts.
pub trait FramePath {
    /// Up to `budget` datagrams from `ep` onto the wire. Returns how many went and whether
    /// the endpoint ran out of datagrams (false: the path had no room for more).
    fn transmit<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> Result<(usize, bool), DriverError>;
    /// Up to `budget` received datagrams into `ep`, without waiting. Returns how many and
    /// whether the endpoint accepted any.
    fn receive<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        budget: usize,
    ) -> Result<(usize, bool), DriverError>;
    /// Sleep up to `d`, waking early when datagrams arrive.
    fn wait(&mut self, d: Duration) -> Result<(), DriverError>;
    /// Push out what is still queued (the last Close or Abort).
    fn flush(&mut self) {}
    /// Datagrams the loop moves per direction and round (the path's batch: AF_XDP paths
    /// take a whole ring batch per kick).
    fn batch(&self) -> usize {
        BATCH
    }
    /// The peer, once known.
    fn peer(&self) -> Option<SocketAddr>;
}

/// What ended a [`drive`] loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The endpoint closed (look at its outcome).
    Closed,
    /// The endpoint finished and the loop returned without waiting for the close exchange
    /// to end (see the module docs).
    Finished,
    /// Nothing arrived before `first_datagram_timeout`.
    NoPeer,
}

/// Loop settings.
#[derive(Debug, Clone, Default)]
pub struct DriveOptions {
    /// Give up if no datagram is accepted within this time (a receiver waiting for a sender).
    pub first_datagram_timeout: Option<Duration>,
    /// Once the endpoint has finished, return after this long even if it has not closed
    /// (`Some(ZERO)`: as soon as what it had to send went out). `None`: run until closed.
    pub finish_linger: Option<Duration>,
}

/// When the session's milestones happened, as the loop saw them.
#[derive(Debug, Clone, Copy)]
pub struct Marks {
    /// The loop started.
    pub start: Instant,
    /// The endpoint handed the path its first datagram, and its first data frame.
    pub first_sent: Option<Instant>,
    pub first_data: Option<Instant>,
    /// The endpoint accepted its first datagram.
    pub first_accepted: Option<Instant>,
    /// [`Event::Accepted`].
    pub accepted: Option<Instant>,
    /// [`Event::Finished`] or [`Event::Aborted`], whichever came first.
    pub outcome: Option<Instant>,
    /// The loop returned.
    pub end: Instant,
    /// CPU time of the thread that ran the loop (the session thread), start to end.
    pub cpu: Duration,
}

impl Marks {
    /// Marks of a loop starting at `now`.
    pub fn new(now: Instant) -> Self {
        Marks {
            start: now,
            first_sent: None,
            first_data: None,
            first_accepted: None,
            accepted: None,
            outcome: None,
            end: now,
            cpu: Duration::ZERO,
        }
    }

    /// When the session's outcome was known (the loop's end if it never was).
    pub fn done(&self) -> Instant {
        self.outcome.unwrap_or(self.end)
    }
}

/// Run `ep` over `path` until it closes (or finishes, see [`DriveOptions::finish_linger`]).
/// `cancel` asks the endpoint to abort (it still tells the peer and closes cleanly);
/// `on_event` sees every event as it happens.
pub fn drive<E: Endpoint + ?Sized, P: FramePath + ?Sized>(
    ep: &mut E,
    path: &mut P,
    opts: &DriveOptions,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(Stop, Marks), DriverError> {
    let mut marks = Marks::new(Instant::now());
    let cpu0 = crate::shm::proc::thread_cpu_ns();
    let mut cancelled = false;
    let mut busy = false;
    let mut stuck: Option<Instant> = None;
    // Pacing waits are tens of microseconds: ask the kernel not to round this thread's
    // timers up by the default 50 us slack.
    let _ = nix::sys::prctl::set_timerslack(1_000);
    let batch = path.batch().max(1);
    let stop = loop {
        let now = Instant::now();
        if !cancelled && cancel.load(Ordering::Relaxed) {
            cancelled = true;
            ep.cancel(now);
        }
        if ep.poll_timeout().is_some_and(|t| t <= now) {
            ep.handle_timeout(now);
        }
        let finished_before = marks.outcome.is_some() && matches!(ep.outcome(), Some(Ok(())));
        let (sent, exhausted) = path.transmit(ep, now, batch)?;
        if sent > 0 && marks.first_data.is_none() {
            let t = Instant::now();
            marks.first_sent.get_or_insert(t);
            if ep.stats().data_frames > 0 {
                marks.first_data = Some(t);
            }
        }
        while let Some(e) = ep.poll_event() {
            let t = Instant::now();
            match e {
                Event::Accepted { .. } => marks.accepted = Some(t),
                Event::Finished | Event::Aborted(_) => {
                    marks.outcome.get_or_insert(t);
                }
                _ => {}
            }
            on_event(&e);
        }
        if ep.is_closed() {
            path.flush();
            break Stop::Closed;
        }
        if marks.outcome.is_some() && sent == 0 && !exhausted {
            let since = *stuck.get_or_insert(now);
            if now >= since + STUCK_AFTER_OUTCOME {
                tracing::debug!("the path took none of the last frames for {STUCK_AFTER_OUTCOME:?}: giving up on them");
                path.flush();
                break Stop::Closed;
            }
        } else if sent > 0 {
            stuck = None;
        }
        if let (Some(linger), Some(done)) = (opts.finish_linger, marks.outcome) {
            // Finished (not aborted), and what the endpoint had to say went out in a
            // round that started after the finish.
            let said = finished_before && exhausted;
            if finished_before && (said && linger.is_zero() || now >= done + linger) {
                path.flush();
                break Stop::Finished;
            }
        }
        if marks.first_accepted.is_none() {
            if let Some(t) = opts.first_datagram_timeout {
                if now >= marks.start + t {
                    break Stop::NoPeer;
                }
            }
        }
        let (got, accepted) = path.receive(ep, batch)?;
        if accepted && marks.first_accepted.is_none() {
            marks.first_accepted = Some(Instant::now());
        }
        // Work left on either side (or a path that was full): go round again at once.
        let more = busy || got > 0 || (sent > 0 && !exhausted) || sent == batch;
        busy = got >= batch;
        if more {
            continue;
        }
        let now = Instant::now();
        let mut until = ep
            .poll_timeout()
            .map_or(now + MAX_SLEEP, |d| d.min(now + MAX_SLEEP));
        if let (Some(linger), Some(done)) = (opts.finish_linger, marks.outcome) {
            until = until.min(done + linger);
        }
        path.wait(until.saturating_duration_since(now))?;
    };
    marks.end = Instant::now();
    marks.cpu = Duration::from_nanos(crate::shm::proc::thread_cpu_ns().saturating_sub(cpu0));
    Ok((stop, marks))
}

/// What can go wrong in a session, on any path.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The AF_XDP sockets failed under the session.
    #[error(transparent)]
    Xsk(Box<XskError>),
    /// The files could not become a sender (bad blueprint, name, snapshot, packing).
    #[error(transparent)]
    Setup(#[from] SendError),
    /// The producer of a streamed send failed (reading, planning or packing a file); the
    /// session was cancelled.
    #[error("streaming the files failed")]
    Stream(#[from] StreamError),
    /// The receiver's output directory could not take the session's files.
    #[error("{}: {source}", path.display())]
    OutDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no sender arrived within {after:?}{}", refused_note(.security))]
    ListenTimeout {
        after: Duration,
        security: Box<SecStats>,
    },
    #[error("the {0} loop ended without an outcome")]
    NoOutcome(&'static str),
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

impl From<XskError> for DriverError {
    fn from(e: XskError) -> Self {
        DriverError::Xsk(Box::new(e))
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
    /// Files sent packed (`blueprint::block` streams, streamed ones included) and direct.
    pub packed_files: usize,
    pub direct_files: usize,
    /// Of the packed files, those streamed (planned and packed while the session ran).
    pub streamed_files: usize,
    /// Time spent building the sender (packing whole files), before the session starts:
    /// not in `elapsed`, in `total`.
    #[serde(serialize_with = "ser_secs")]
    pub pack_time: Duration,
    /// From the caller's origin (the start of `pfs send`) to the first datagram handed to
    /// the frame path (a Hello), and to the first data frame (after the receiver's Accept).
    #[serde(serialize_with = "ser_opt_secs")]
    pub first_frame: Option<Duration>,
    #[serde(serialize_with = "ser_opt_secs")]
    pub first_data: Option<Duration>,
    pub frames: u64,
    /// Data frames that repaired NACKed ranges, and the file bytes they carried.
    pub retransmissions: u64,
    pub retransmitted_bytes: u64,
    pub frames_received: u64,
    /// The session only: from its first frame to the receiver's confirmation.
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
    /// End to end: from the caller's origin (the start of `pfs send`: snapshot, planning,
    /// packing) to the receiver's confirmation that every file is durable.
    #[serde(serialize_with = "ser_secs")]
    pub total: Duration,
    /// The pacing rate at the end, bytes per second.
    pub final_rate: u64,
    /// CPU time of the session thread while the session ran (the loop over the frame path:
    /// with AF_XDP workers, their threads are not in it).
    #[serde(serialize_with = "ser_secs")]
    pub session_cpu: Duration,
    pub stats: Stats,
    pub security: SecuritySummary,
}

/// One file a receive produced.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedFile {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub verified: bool,
    /// `file`, `dir` or `symlink`.
    pub kind: &'static str,
    /// A link's target.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// Why the entry was not created (a link the receiver refuses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
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
    /// The session only: from the accepted manifest to the last file durable and renamed.
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
    /// End to end on this side: from the session's first datagram to the same moment.
    #[serde(serialize_with = "ser_secs")]
    pub total: Duration,
    /// CPU time of the session thread while the session ran (as [`SendSummary`]'s; 0 in
    /// the receiver service, whose one loop runs every session).
    #[serde(serialize_with = "ser_secs")]
    pub session_cpu: Duration,
    pub stats: Stats,
    pub security: SecuritySummary,
}

fn refused_note(s: &SecStats) -> String {
    let mut parts = Vec::new();
    if s.refused > 0 {
        parts.push(format!(
            "{} handshake(s) from keys not in the authorized senders refused",
            s.refused
        ));
    }
    if s.mac1_failures > 0 {
        parts.push(format!(
            "{} handshake(s) with a bad mac1 dropped (sent to another receiver key?)",
            s.mac1_failures
        ));
    }
    if s.bad_inits > 0 {
        parts.push(format!(
            "{} handshake(s) that did not verify (another PSK?) dropped",
            s.bad_inits
        ));
    }
    if s.rate_limited > 0 {
        parts.push(format!("{} handshake(s) rate-limited", s.rate_limited));
    }
    if s.dropped > 0 {
        parts.push(format!("{} frame(s) outside a session dropped", s.dropped));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}

/// The Guard's settings for a session starting now: the wall clock read here (the session
/// core is a clock reader) for the handshake's timestamp.
pub fn guard_config(base: &GuardConfig) -> GuardConfig {
    let mut g = base.clone();
    g.wall_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    g
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn ser_opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

fn bps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64().max(1e-9)
}

impl SendSummary {
    /// File bytes per second end to end (from the caller's origin), in bits per second:
    /// the headline figure.
    pub fn effective_bps(&self) -> f64 {
        bps(self.file_bytes, self.total)
    }
    /// File bytes per second of the session alone, in bits per second.
    pub fn session_bps(&self) -> f64 {
        bps(self.file_bytes, self.elapsed)
    }
    /// Wire bytes per second of the session, in bits per second.
    pub fn wire_bps(&self) -> f64 {
        bps(self.wire_bytes, self.elapsed)
    }
    /// A JSON object for the metrics log: both figures, named.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["effective_bps"] = self.effective_bps().into();
        v["session_bps"] = self.session_bps().into();
        v["wire_bps"] = self.wire_bps().into();
        v
    }
}

impl RecvSummary {
    /// File bytes per second end to end on this side, in bits per second.
    pub fn effective_bps(&self) -> f64 {
        bps(self.file_bytes, self.total)
    }
    /// File bytes per second of the session alone, in bits per second.
    pub fn session_bps(&self) -> f64 {
        bps(self.file_bytes, self.elapsed)
    }
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["effective_bps"] = self.effective_bps().into();
        v["session_bps"] = self.session_bps().into();
        v
    }
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

/// A sender ready to run: the state machine (fed by a producer when its files stream) and
/// what its summary needs besides.
pub struct SendSession {
    /// The sender behind a [`Feed`]: for files prepared whole the feed has no producer
    /// and passes everything straight through.
    pub feed: Feed,
    pub session_id: u64,
    /// Building the sender (packing whole files) before the session: zero when streamed.
    pub pack_time: Duration,
    /// Where the end-to-end clock starts.
    pub origin: Instant,
    /// How the session is protected, and the Guard's settings.
    pub security: Security,
    pub guard: GuardConfig,
}

/// What a send carries.
pub enum SendInput<'a> {
    /// Files planned whole (blueprints into the snapshot whose bytes are `snapshot`),
    /// prepared (validated, packed, lowered) before the session starts.
    Planned {
        files: Vec<SendFile>,
        /// Per file (by index; missing = none): a packed stream to send as it is
        /// (`crate::prepare::prepare`), a `.pbb` sent as itself.
        coded: Vec<Option<Vec<u8>>>,
        snapshot: &'a [u8],
        /// Per file: kind, attributes, link target (a tree); empty: regular files with
        /// no attributes.
        meta: Vec<crate::proto::EntryMeta>,
    },
    /// Files streamed (`crate::prepare::stream`): the sender's files (names, sizes,
    /// bounds) and the producer's channel. The session starts at once and each block goes
    /// out as soon as it arrives; the producer runs on its own thread.
    Streamed {
        files: Vec<OutgoingFile>,
        blocks: mpsc::Receiver<Result<Item, StreamError>>,
        /// As for `Planned`.
        meta: Vec<crate::proto::EntryMeta>,
        /// The producer waits for the receiver's offers on the other end (resume, skip);
        /// `None`: it starts every file over (`pfs send --no-resume`).
        offers: Option<mpsc::SyncSender<Vec<crate::wire::held::HeldEntry>>>,
    },
}

impl SendSession {
    /// Build the sender for `input` (files into the snapshot `snapshot_id`): a random
    /// session id when `proto.session_id` is 0, datagrams filling `mtu` (less the tag when
    /// `security` seals them), `rate` as the link budget.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mut proto: SenderConfig,
        mtu: usize,
        rate: Option<u64>,
        snapshot_id: [u8; 32],
        input: SendInput<'_>,
        origin: Instant,
        security: Security,
        guard: GuardConfig,
    ) -> Result<Self, DriverError> {
        if proto.session_id == 0 {
            proto.session_id = random_u64() | 1;
        }
        proto.max_datagram =
            Guard::<crate::proto::Sender>::inner_datagram(&security, datagram_for_mtu(mtu));
        // sealed frames carry no CRC: the sender does not compute one only to have it zeroed
        proto.frame_crc = matches!(security, Security::Insecure);
        proto.rate = rate.or(proto.rate);
        let session_id = proto.session_id;
        let t = Instant::now();
        let with_meta = |mut s: Sender, meta: Vec<crate::proto::EntryMeta>| {
            if !meta.is_empty() {
                s.set_meta(meta)?;
            }
            Ok::<_, crate::proto::SendError>(s)
        };
        let feed = match input {
            SendInput::Planned {
                files,
                coded,
                snapshot,
                meta,
            } => {
                let files = crate::prepare::prepare(
                    files,
                    coded,
                    snapshot_id,
                    snapshot,
                    proto.pack,
                    &proto.pack_opts,
                )?;
                Feed::whole(with_meta(Sender::new(proto, snapshot_id, files)?, meta)?)
            }
            SendInput::Streamed {
                files,
                blocks,
                meta,
                offers,
            } => {
                let feed = Feed::new(
                    with_meta(Sender::new(proto, snapshot_id, files)?, meta)?,
                    blocks,
                );
                match offers {
                    Some(tx) => feed.with_offers(tx),
                    None => feed,
                }
            }
        };
        Ok(SendSession {
            feed,
            session_id,
            pack_time: t.elapsed(),
            origin,
            security,
            guard,
        })
    }
}

/// Run a sender over `path` until the receiver confirmed every file (or the session
/// failed); the summary follows the module's clock rule.
pub fn run_sender<P: FramePath + ?Sized>(
    s: &mut SendSession,
    path: &mut P,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<SendSummary, DriverError> {
    let opts = DriveOptions {
        first_datagram_timeout: None,
        finish_linger: Some(Duration::ZERO),
    };
    let mut guard = Guard::new(
        &mut s.feed,
        s.security.clone(),
        Some(s.session_id),
        guard_config(&s.guard),
    );
    let (_, marks) = drive(&mut guard, path, &opts, cancel, on_event)?;
    let security = guard.summary();
    let outcome = guard.outcome();
    drop(guard);
    if let Some(e) = s.feed.take_error() {
        return Err(e.into());
    }
    send_summary(s, &marks, security, outcome)
}

fn send_summary(
    s: &SendSession,
    marks: &Marks,
    security: SecuritySummary,
    outcome: Option<Result<(), Failure>>,
) -> Result<SendSummary, DriverError> {
    let sender = &s.feed.sender;
    let st = sender.stats_now();
    let modes = sender.modes();
    let packed_files = modes.iter().filter(|(m, _)| m.is_packed()).count();
    let streamed_files = modes
        .iter()
        .filter(|(m, _)| *m == crate::wire::payload::FileMode::Streamed)
        .count();
    // The sender counts its frames before the Guard seals them: add each one's tag.
    let tag = if s.security.is_insecure() {
        0
    } else {
        crate::secure::channel::TAG_LEN as u64
    };
    let since_origin = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(s.origin));
    let done = marks.done();
    let summary = SendSummary {
        session_id: s.session_id,
        files: sender.file_count(),
        file_bytes: sender.total_bytes(),
        wire_bytes: st.bytes_sent + st.frames_sent * (LINK_OVERHEAD + tag),
        datagram_bytes: st.bytes_sent + st.frames_sent * tag,
        stream_bytes: modes.iter().map(|(_, len)| len).sum(),
        packed_files,
        streamed_files,
        direct_files: modes.len() - packed_files,
        pack_time: s.pack_time,
        first_frame: since_origin(marks.first_sent),
        first_data: since_origin(marks.first_data),
        frames: st.frames_sent,
        retransmissions: st.repair_frames,
        retransmitted_bytes: st.repair_bytes,
        frames_received: st.frames_received,
        elapsed: done.saturating_duration_since(marks.start),
        total: done.saturating_duration_since(s.origin),
        final_rate: st.rate,
        session_cpu: marks.cpu,
        stats: st,
        security,
    };
    match outcome {
        Some(Ok(())) => Ok(summary),
        Some(Err(failure)) => Err(DriverError::SendAborted {
            failure,
            summary: Box::new(summary),
        }),
        None => Err(DriverError::NoOutcome("sender")),
    }
}

/// A receiver writing into `out_dir` through the memory-mapped file sink (files appear
/// under their names once verified and, with `proto.durable`, flushed).
pub fn file_receiver<'a>(
    mut proto: ReceiverConfig,
    mtu: usize,
    out_dir: &Path,
    snapshot_id: [u8; 32],
    snapshot: &'a [u8],
    security: &Security,
) -> Result<Receiver<'a, MmapSink>, DriverError> {
    proto.max_datagram =
        Guard::<Receiver<'a, MmapSink>>::inner_datagram(security, datagram_for_mtu(mtu));
    let tag = format!("{:016x}", random_u64());
    let mut sink = MmapSink::new(out_dir, &tag).map_err(|source| DriverError::OutDir {
        path: out_dir.to_path_buf(),
        source,
    })?;
    sink.durable = proto.durable;
    sink.overwrite = proto.overwrite;
    sink.keep_setid = proto.keep_setid;
    sink.resume = proto.resume;
    Ok(Receiver::new(proto, snapshot_id, snapshot, sink))
}

/// Run a receiver over `path` until its session ends: returns once every file is durable
/// under its name and the sender's Close came (or [`FINISH_LINGER`] passed).
#[allow(clippy::too_many_arguments)]
pub fn run_receiver<P: FramePath + ?Sized>(
    receiver: &mut Receiver<'_, MmapSink>,
    path: &mut P,
    listen_timeout: Option<Duration>,
    security: &Security,
    guard: &GuardConfig,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<RecvSummary, DriverError> {
    let opts = DriveOptions {
        first_datagram_timeout: listen_timeout,
        finish_linger: Some(FINISH_LINGER),
    };
    let mut g = Guard::new(&mut *receiver, security.clone(), None, guard_config(guard));
    let (stop, marks) = drive(&mut g, path, &opts, cancel, on_event)?;
    let sec = g.summary();
    let outcome = g.outcome();
    drop(g);
    if stop == Stop::NoPeer {
        return Err(DriverError::ListenTimeout {
            after: listen_timeout.unwrap_or_default(),
            security: Box::new(sec.counters),
        });
    }
    recv_summary(receiver, path.peer(), &marks, sec, outcome)
}

/// The summary of a receiver whose loop left `marks` (its outcome decides Ok or the error).
pub(crate) fn recv_summary(
    receiver: &Receiver<'_, MmapSink>,
    peer: Option<SocketAddr>,
    marks: &Marks,
    security: SecuritySummary,
    outcome: Option<Result<(), Failure>>,
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
            kind: match f.kind {
                crate::wire::payload::EntryKind::File => "file",
                crate::wire::payload::EntryKind::Dir => "dir",
                crate::wire::payload::EntryKind::Symlink => "symlink",
            },
            target: f.target.clone(),
            skipped: f.skipped.map(|s| s.to_string()),
        })
        .collect();
    let done = marks.done();
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
        elapsed: done.saturating_duration_since(marks.accepted.unwrap_or(marks.start)),
        total: done.saturating_duration_since(marks.first_accepted.unwrap_or(marks.start)),
        session_cpu: marks.cpu,
        stats: st,
        security,
    };
    match outcome {
        Some(Ok(())) => Ok(summary),
        Some(Err(failure)) => Err(DriverError::RecvAborted {
            failure,
            summary: Box::new(summary),
        }),
        None => Err(DriverError::NoOutcome("receiver")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::{raw_segments, Blueprint};
    use crate::proto::{SendFile, Sender, SenderConfig, Timing};

    /// A link that went down: its TX ring takes 1 frame (the Hello), never completes it, and then
    /// has no room; nothing arrives.
    struct Down(usize);

    impl FramePath for Down {
        fn transmit<E: Endpoint + ?Sized>(
            &mut self,
            ep: &mut E,
            now: Instant,
            _budget: usize,
        ) -> Result<(usize, bool), DriverError> {
            let mut buf = [0u8; 2048];
            let mut n = 0;
            while self.0 < 1 {
                if ep.poll_transmit(now, &mut buf).is_none() {
                    return Ok((n, true));
                }
                self.0 += 1;
                n += 1;
            }
            Ok((n, false))
        }
        fn receive<E: Endpoint + ?Sized>(
            &mut self,
            _ep: &mut E,
            _budget: usize,
        ) -> Result<(usize, bool), DriverError> {
            Ok((0, false))
        }
        fn wait(&mut self, d: Duration) -> Result<(), DriverError> {
            std::thread::sleep(d.min(Duration::from_millis(5)));
            Ok(())
        }
        fn peer(&self) -> Option<SocketAddr> {
            None
        }
    }

    /// A sender whose peer went silent ends (idle timeout) and the loop returns although its
    /// Abort never leaves: before, the queued terminal frame kept the loop spinning forever.
    #[test]
    fn a_session_ends_when_the_path_never_takes_its_last_frames() {
        let content = vec![7u8; 5000];
        let bp = Blueprint {
            snapshot_id: [1; 32],
            file_len: content.len() as u64,
            file_hash: *blake3::hash(&content).as_bytes(),
            segments: raw_segments(content.len() as u64),
            spill: content,
        };
        let cfg = SenderConfig {
            timing: Timing {
                idle_timeout: Duration::from_millis(30),
                ..Timing::default()
            },
            ..SenderConfig::default()
        };
        let files = vec![SendFile {
            name: "f".into(),
            blueprint: bp,
        }];
        let out =
            crate::prepare::prepare(files, Vec::new(), [1; 32], &[], cfg.pack, &cfg.pack_opts)
                .unwrap();
        let mut s = Sender::new(cfg, [1; 32], out).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = drive(
                &mut s,
                &mut Down(0),
                &DriveOptions::default(),
                &AtomicBool::new(false),
                &mut |_| {},
            );
            let _ = tx.send((r.map(|(stop, _)| stop).ok(), s.outcome()));
        });
        // a liveness bound, not a speed figure: the loop gives up 1 s after the outcome
        let (stop, outcome) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("drive kept spinning after the session's outcome");
        assert_eq!(stop, Some(Stop::Closed));
        assert!(matches!(outcome, Some(Err(_))), "{outcome:?}");
    }
}
