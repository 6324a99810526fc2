//! The transfer protocol as state machines with no I/O and no clock (after quinn-proto).
//!
//! A [`Sender`] and a [`Receiver`] each take input through `handle_datagram(now, bytes)` and
//! `handle_timeout(now)` and give output through `poll_transmit(now, buf)` (one datagram into
//! the caller's buffer), `poll_timeout()` (when to call `handle_timeout` next) and
//! `poll_event()`. Time is whatever `Instant` the caller passes in, so tests run them over a
//! simulated link in virtual time and the drivers in [`crate::driver`] run them over sockets.
//! Both implement [`Endpoint`], which is all a driver needs.
//!
//! The protocol (see `docs/protocol.md`):
//! 1. Handshake: the sender sends Hello frames (snapshot id, session id, the manifest in
//!    chunks) until the receiver answers Accept, or Abort with a [`Reason`] (snapshot mismatch,
//!    a refused name, a size above a limit or above the free space, ...).
//! 2. Data: the sender walks the session's *stream* (its files end to end) once, packing
//!    segment descriptors and raw spill into grams that fill the datagram, paced by one token
//!    bucket. The receiver applies every piece at its file offset, so duplicates and
//!    reordering are harmless, and reports progress (ACK) and holes (NACK, selective ranges).
//!    The sender repairs the NACKed ranges before new data; when it has nothing left it probes.
//! 3. Each file is checked against its BLAKE3 as soon as it is complete, then renamed into
//!    place. When every file is verified the receiver sends Done; the sender answers Close.
//! 4. Either side may Abort with a reason; the other answers Close. Silence for
//!    `idle_timeout` ends a session on either side.
//!
//! Files arrive at the [`Sender`] prepared ([`crate::prepare`] does the codec work), or as
//! *streamed* files whose blocks are pushed while the session runs ([`Sender::push_block`],
//! [`Sender::finish_file`]).
//!
//! Where each concern lives:
//!
//! | file | concern |
//! |---|---|
//! | `lifecycle.rs` | the session lifecycle both sides share: control queue, terminal frame (Done/Abort) with resend backoff, drain, outcome and events |
//! | `sender.rs` | the sender: handshake, data and repair frames, probes |
//! | `outgoing.rs` | the sender's outgoing data: the stream, cursor, repairs, streamed files |
//! | `pacing.rs` | the sender's pacing: token bucket, rate control, RTT, window |
//! | `receiver.rs` | the receiver: handshake, grams, verification, reports |
//! | `manifest.rs` | the receiver's manifest: Hello chunks, limits, the accepted files |
//! | `assembly.rs` | the receiver's assembly: direct pieces, packed and streamed block streams, incremental BLAKE3 |
//! | `hashpipe.rs` | the receiver's per-file BLAKE3, inline or on the session's hashing thread (spans of final bytes handed off in order) |
//! | `ack.rs` | the receiver's acknowledgements: ACK/NACK, the reorder window |
//! | `sink.rs` | the [`FileSink`] trait the receiver writes through (no I/O here: [`crate::fsink`]) |
//! | `rangeset.rs` | byte-range sets |
//! | `table.rs` | the receiver service's session table: demux by session id, admission, peers, round-robin order |

mod ack;
mod assembly;
mod hashpipe;
pub(crate) mod lifecycle;
mod manifest;
mod outgoing;
pub mod pacing;
pub mod rangeset;
pub mod receiver;
mod resume;
pub mod sender;
pub mod sink;
mod streambuf;
pub mod table;

pub use hashpipe::HashThread;
pub use receiver::Receiver;
pub use sender::{EntryMeta, OutgoingFile, SendError, SendFile, Sender};
pub use sink::{FileSink, MemSink, SinkError, SinkFile};

use crate::util::hex;
use crate::wire;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Timers shared by both sides.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// RTT assumed before the first sample.
    pub initial_rtt: Duration,
    /// Bounds of the probe timeout (PTO).
    pub min_pto: Duration,
    pub max_pto: Duration,
    /// Silence from the peer after which a session ends.
    pub idle_timeout: Duration,
    /// The longest a receiver holds back an ACK.
    pub ack_delay: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            initial_rtt: Duration::from_millis(100),
            min_pto: Duration::from_millis(5),
            max_pto: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            ack_delay: Duration::from_millis(2),
        }
    }
}

/// Datagram size (PacketFS header + payload) for an IP MTU, over IPv4/UDP.
pub fn datagram_for_mtu(mtu: usize) -> usize {
    mtu.saturating_sub(wire::ipv4::HEADER_LEN + wire::udp::HEADER_LEN)
}

/// Largest datagram the protocol will build (the UDP payload limit).
pub const MAX_DATAGRAM: usize = 65_507;

/// Sender settings.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Session id, chosen by the caller (random in the drivers).
    pub session_id: u64,
    /// Datagram size (PacketFS header + payload); frames fill it.
    pub max_datagram: usize,
    /// The rate cap in bytes per second (`--rate`), if any.
    pub rate: Option<u64>,
    /// Starting rate when no cap is set (with a cap the sender starts at the cap: the caller
    /// declared the link budget).
    pub initial_rate: u64,
    /// The rate never drops below this.
    pub min_rate: u64,
    /// The bucket's depth: at least this many frames back to back...
    pub burst_frames: u64,
    /// ...or this long at the current rate, whichever is more. A sender woken late (a busy
    /// host) catches up within this budget, so the average rate holds.
    pub burst_time: Duration,
    /// Bytes each frame costs on the link beyond the datagram (Ethernet, IPv4, UDP headers),
    /// so the rate is a link rate.
    pub frame_overhead: usize,
    /// Most data frames in flight beyond the highest sequence number the receiver reported.
    pub window_frames: u64,
    /// Loss (per mille) the receiver may report before the rate backs off.
    pub loss_permille: u64,
    /// Which files travel packed (`blueprint::block` streams) rather than as direct pieces.
    pub pack: PackPolicy,
    /// How packed streams are cut and compressed.
    pub pack_opts: crate::blueprint::block::EncodeOptions,
    pub timing: Timing,
    /// Fill the CRC32C of data frames. Off when a wrapper seals every frame (the AEAD tag
    /// covers each byte and the sealed header carries CRC 0): one pass over each payload less.
    pub frame_crc: bool,
}

/// Which files a sender packs (`--pack`, `pack`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PackPolicy {
    /// Packed when the packed stream is below 95% of the direct mode's piece bytes.
    #[default]
    Auto,
    /// Every non-empty file packed.
    Always,
    /// Every file direct.
    Never,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            session_id: 1,
            max_datagram: datagram_for_mtu(1500),
            rate: None,
            initial_rate: 12_500_000,
            min_rate: 100_000,
            burst_frames: 32,
            burst_time: Duration::from_millis(10),
            frame_overhead: wire::stack::OVERHEAD,
            window_frames: 8192,
            loss_permille: 20,
            pack: PackPolicy::Auto,
            pack_opts: Default::default(),
            timing: Timing::default(),
            frame_crc: true,
        }
    }
}

/// Receiver settings: limits are checked before anything is allocated.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    pub max_datagram: usize,
    /// Largest single file accepted.
    pub max_file_size: u64,
    /// Largest session (sum of file sizes) accepted.
    pub max_total_size: u64,
    /// Most files in one session.
    pub max_files: u32,
    /// Rate the sender is asked not to exceed (bytes/s; 0 = no limit).
    pub max_rate: u64,
    /// Send an ACK after this many data frames (or after `ack_delay`).
    pub ack_every: u32,
    /// Most bytes of packed streams (reassembly buffers) one session may declare.
    pub max_packed_total: u64,
    /// What one packed block may declare.
    pub block_limits: crate::blueprint::block::Limits,
    /// How late a frame may arrive before its hole is NACKed: a hole is reported once the
    /// frontier reported at least this long ago lies past it (zero: the previous report's
    /// frontier). Set by drivers whose frames can overtake each other (several AF_XDP
    /// queues drained by independent workers).
    pub reorder_window: Duration,
    /// For the file sink the driver creates: make each file durable (msync + fsync) before
    /// renaming it into place (`pfs recv --sync off` turns it off).
    pub durable: bool,
    /// For the file sink the driver creates: replace files that exist under a final name
    /// (`pfs recv --overwrite`); off, such a session is refused with
    /// [`Reason::FileExists`] and the existing file stays.
    pub overwrite: bool,
    /// For the file sink the driver creates: keep the setuid, setgid and sticky bits of
    /// received entries (`pfs recv --keep-setid`); off, only the 0o777 bits are applied.
    pub keep_setid: bool,
    /// Offer the sender what the output already holds (`pfs recv --no-resume` turns it
    /// off): resumable temporary files and final files of the same name and size. For the
    /// file sink the driver creates: keep the temporary files of a broken session with a
    /// journal, so that a later session can resume them.
    pub resume: bool,
    /// Where each file's BLAKE3 is computed: on a thread of the session's own, so that the
    /// receiving thread only hands off spans of final bytes, or inline on the receiving
    /// thread ([`HashThread`]; default `Auto`).
    pub hash_thread: HashThread,
    pub timing: Timing,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            max_datagram: datagram_for_mtu(1500),
            max_file_size: 1 << 40,
            max_total_size: 1 << 42,
            max_files: 100_000,
            max_rate: 0,
            ack_every: 16,
            max_packed_total: 1 << 30,
            block_limits: Default::default(),
            reorder_window: Duration::ZERO,
            durable: true,
            overwrite: false,
            keep_setid: false,
            resume: true,
            hash_thread: HashThread::Auto,
            timing: Timing::default(),
        }
    }
}

/// Why a session ended early. Both sides surface the same reason: it travels in the Abort
/// frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("snapshot mismatch: the sender's snapshot is {}, the receiver's is {}", hex(.sender), hex(.receiver))]
    SnapshotMismatch {
        sender: [u8; 32],
        receiver: [u8; 32],
    },
    #[error("file #{file} declares {size} bytes, above the receiver's limit of {limit}")]
    FileTooLarge { file: u32, size: u64, limit: u64 },
    #[error("the session declares {total} bytes, above the receiver's limit of {limit}")]
    SessionTooLarge { total: u64, limit: u64 },
    #[error("the session declares {count} files, above the receiver's limit of {limit}")]
    TooManyFiles { count: u64, limit: u64 },
    #[error("not enough free space on the receiver: {need} bytes needed, {avail} available beyond its free-space reserve")]
    NoSpace { need: u64, avail: u64 },
    #[error("file #{file} has a name the receiver refuses (absolute, `..`, or outside the output directory)")]
    BadName { file: u32 },
    #[error("files #{other} and #{file} have the same name")]
    DuplicateName { file: u32, other: u32 },
    #[error("file #{file} was received but its BLAKE3 does not match the manifest")]
    HashMismatch { file: u32 },
    #[error("no answer from the peer for {ms} ms")]
    Timeout { ms: u64 },
    #[error("cancelled")]
    Cancelled,
    #[error("the peer broke the protocol")]
    Protocol,
    #[error("an I/O error on the receiver")]
    Io,
    #[error("file #{file} declares a packed stream of {len} bytes; the session's packed streams may hold at most {limit}")]
    PackedTooLarge { file: u32, len: u64, limit: u64 },
    #[error("file #{file} already exists on the receiver (it runs without --overwrite); the existing file was left unchanged")]
    FileExists { file: u32 },
    #[error(
        "entry #{file} lies beneath entry #{other}, which is a file or a link, not a directory"
    )]
    PathConflict { file: u32, other: u32 },
    #[error("unknown reason code {0}")]
    Unknown(u16),
    /// Local only (never on the wire): no handshake answer in time.
    #[error("no handshake answer for {ms} ms: the receiver is not reachable, holds another key than the one given (--receiver-key / --known-receivers), uses another PSK, or does not list this sender's key in its authorized senders")]
    HandshakeTimeout { ms: u64 },
    /// Local only: the handshake could not be built.
    #[error("the handshake failed: {detail}")]
    Handshake { detail: String },
}

impl Reason {
    /// The file a reason names, if any (its index in the manifest).
    pub fn file(&self) -> Option<u32> {
        match *self {
            Reason::FileTooLarge { file, .. }
            | Reason::BadName { file }
            | Reason::DuplicateName { file, .. }
            | Reason::HashMismatch { file }
            | Reason::PackedTooLarge { file, .. }
            | Reason::FileExists { file }
            | Reason::PathConflict { file, .. } => Some(file),
            _ => None,
        }
    }

    /// The wire form. The snapshot id carried for a mismatch is the refuser's (the receiver's).
    pub fn to_wire(&self) -> wire::payload::Abort {
        use wire::reason::ReasonCode as C;
        let (mut file, mut a, mut b, mut id) = (u32::MAX, 0u64, 0u64, [0u8; 32]);
        let code = match *self {
            Reason::SnapshotMismatch { sender, receiver } => {
                id = receiver;
                // The sender's id, truncated: lets a log line match without a lookup.
                a = u64::from_le_bytes(sender[..8].try_into().expect("8 bytes"));
                C::SnapshotMismatch.code()
            }
            Reason::FileTooLarge {
                file: f,
                size,
                limit,
            } => {
                (file, a, b) = (f, size, limit);
                C::FileTooLarge.code()
            }
            Reason::SessionTooLarge { total, limit } => {
                (a, b) = (total, limit);
                C::SessionTooLarge.code()
            }
            Reason::TooManyFiles { count, limit } => {
                (a, b) = (count, limit);
                C::TooManyFiles.code()
            }
            Reason::NoSpace { need, avail } => {
                (a, b) = (need, avail);
                C::NoSpace.code()
            }
            Reason::BadName { file: f } => {
                file = f;
                C::BadName.code()
            }
            Reason::DuplicateName { file: f, other } => {
                (file, a) = (f, other as u64);
                C::DuplicateName.code()
            }
            Reason::HashMismatch { file: f } => {
                file = f;
                C::HashMismatch.code()
            }
            Reason::Timeout { ms } => {
                a = ms;
                C::Timeout.code()
            }
            Reason::Cancelled => C::Cancelled.code(),
            Reason::Protocol => C::Protocol.code(),
            Reason::Io => C::Io.code(),
            Reason::PackedTooLarge {
                file: f,
                len,
                limit,
            } => {
                (file, a, b) = (f, len, limit);
                C::PackedTooLarge.code()
            }
            Reason::FileExists { file: f } => {
                file = f;
                C::FileExists.code()
            }
            Reason::PathConflict { file: f, other } => {
                (file, a) = (f, other as u64);
                C::PathConflict.code()
            }
            Reason::Unknown(c) => c,
            Reason::HandshakeTimeout { ms } => {
                a = ms;
                C::Timeout.code()
            }
            Reason::Handshake { .. } => C::Protocol.code(),
        };
        wire::payload::Abort {
            code,
            file,
            a,
            b,
            id,
        }
    }

    /// Read a received Abort; `own_snapshot` is the reader's snapshot id (a sender reading a
    /// mismatch knows its own id, the frame carries the receiver's).
    pub fn from_wire(a: &wire::payload::Abort, own_snapshot: [u8; 32]) -> Reason {
        use wire::reason::ReasonCode as C;
        let Ok(code) = C::try_from(a.code) else {
            return Reason::Unknown(a.code);
        };
        match code {
            C::SnapshotMismatch => Reason::SnapshotMismatch {
                sender: own_snapshot,
                receiver: a.id,
            },
            C::FileTooLarge => Reason::FileTooLarge {
                file: a.file,
                size: a.a,
                limit: a.b,
            },
            C::SessionTooLarge => Reason::SessionTooLarge {
                total: a.a,
                limit: a.b,
            },
            C::TooManyFiles => Reason::TooManyFiles {
                count: a.a,
                limit: a.b,
            },
            C::NoSpace => Reason::NoSpace {
                need: a.a,
                avail: a.b,
            },
            C::BadName => Reason::BadName { file: a.file },
            C::DuplicateName => Reason::DuplicateName {
                file: a.file,
                other: a.a as u32,
            },
            C::HashMismatch => Reason::HashMismatch { file: a.file },
            C::FileExists => Reason::FileExists { file: a.file },
            C::PathConflict => Reason::PathConflict {
                file: a.file,
                other: a.a as u32,
            },
            C::Timeout => Reason::Timeout { ms: a.a },
            C::Cancelled => Reason::Cancelled,
            C::Protocol => Reason::Protocol,
            C::Io => Reason::Io,
            C::PackedTooLarge => Reason::PackedTooLarge {
                file: a.file,
                len: a.a,
                limit: a.b,
            },
        }
    }
}

/// How a session ended badly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", if *.by_peer { "the peer aborted" } else { "aborted" })]
pub struct Failure {
    pub reason: Reason,
    /// True if the peer sent the Abort, false if this side decided.
    pub by_peer: bool,
}

/// What the application hears from a state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed: the receiver took the manifest.
    Accepted { files: u32, bytes: u64 },
    /// Sender: the receiver holds `done` of `total` stream bytes.
    Progress { done: u64, total: u64 },
    /// Receiver: file `file` arrived, matched its BLAKE3 and is under its final name.
    FileVerified { file: u32 },
    /// Receiver: entry `file` was not created (a link the receiver refuses), the session
    /// goes on.
    Skipped { file: u32, why: sink::Skip },
    /// Every file arrived and verified.
    Finished,
    /// The session ended without finishing.
    Aborted(Failure),
}

/// Counters kept by either side.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub frames_sent: u64,
    /// Datagram bytes sent (PacketFS header and payload; link headers not counted).
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Data frames sent on the first pass, and as repairs.
    pub data_frames: u64,
    pub repair_frames: u64,
    /// File bytes carried by data frames (snapshot pieces count their length).
    pub data_bytes: u64,
    pub repair_bytes: u64,
    pub nacks: u64,
    pub probes: u64,
    /// Data frames that brought nothing new.
    pub duplicate_frames: u64,
    /// Frames that arrived after a frame the peer sent later (a lower sequence number than
    /// the highest seen): reordering on the path or between receive queues.
    pub reordered_frames: u64,
    /// Frames dropped: unparsable, failing a check, from another session, or unexpected.
    pub malformed: u64,
    pub foreign_session: u64,
    pub unexpected: u64,
    /// The sender's pacing rate at the end, bytes per second.
    pub rate: u64,
    /// Files the receiver held whole and unchanged, not sent again, and their bytes.
    pub skipped_files: u64,
    pub skipped_bytes: u64,
    /// Files continued after a prefix the receiver held, and the bytes not sent again.
    pub resumed_files: u64,
    pub resumed_bytes: u64,
    /// Sender: the most stream bytes held at once for repairs (streams are released below
    /// the receiver's cumulative acknowledgement, so this stays near what is in flight and
    /// ahead, whatever the files' sizes).
    pub stream_held_peak: u64,
}

/// A built datagram's last step, left to the thread that sends it where the frame path has
/// threads of its own (the AF_XDP workers): the secure channel's sealing
/// ([`Endpoint::poll_transmit_split`]).
pub trait Finish: Send + Sync {
    /// Finish `datagram` (the whole length `poll_transmit_split` returned) in place. False:
    /// it could not be finished and must not be sent.
    fn finish(&self, datagram: &mut [u8]) -> bool;
}

/// Opening received datagrams off the session thread ([`Endpoint::rx_unseal`]): the key
/// of one moment, shared with the threads that receive.
pub trait Unseal: Send + Sync {
    /// Which keys these are (it changes when they do); given back with each datagram.
    fn epoch(&self) -> u64;
    /// Open `datagram` in place if it is one these keys are for: `None` when not (it goes
    /// to the endpoint as it came), `Some(true)` when opened, `Some(false)` when its tag
    /// failed (the payload bytes are then unspecified; the endpoint only counts it).
    fn try_open(&self, datagram: &mut [u8]) -> Option<bool>;
}

/// What a driver needs from a state machine.
pub trait Endpoint {
    /// Feed one received datagram. Returns true if it belonged to this session and was used
    /// (the driver may learn the peer's address from it). The datagram is mutable so that a
    /// wrapper ([`crate::secure::Guard`]) can open it in place in the path's own buffer.
    fn handle_datagram(&mut self, now: Instant, datagram: &mut [u8]) -> bool;
    /// The source address of the datagram about to be handed to `handle_datagram` (paths
    /// that know it say so; the secure wrapper rate-limits handshakes per source).
    fn note_source(&mut self, _src: std::net::IpAddr) {}
    /// Let timers fire.
    fn handle_timeout(&mut self, now: Instant);
    /// Write the next datagram to send into `buf` (at least `max_datagram` bytes).
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize>;
    /// When `handle_timeout` is due (a frame may also become sendable then).
    fn poll_timeout(&self) -> Option<Instant>;
    fn poll_event(&mut self) -> Option<Event>;
    /// The session is over; nothing more will be sent.
    fn is_closed(&self) -> bool;
    fn stats(&self) -> &Stats;
    /// `Ok` once finished; the failure once aborted; `None` while running.
    fn outcome(&self) -> Option<Result<(), Failure>>;
    /// Give up (the user asked to): tell the peer and close.
    fn cancel(&mut self, now: Instant);

    /// [`Endpoint::poll_transmit`] for a path that finishes frames on the thread that sends
    /// them: the datagram's length and, where one is left, the step that must run on its
    /// bytes before it is sent ([`Finish`]; the secure channel's sealing).
    fn poll_transmit_split(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(usize, Option<Arc<dyn Finish>>)> {
        self.poll_transmit(now, buf).map(|n| (n, None))
    }
    /// The keys with which receiving threads may open datagrams before they are handed over
    /// ([`Endpoint::handle_unsealed`]); `None`: every datagram comes as it arrived.
    fn rx_unseal(&mut self) -> Option<Arc<dyn Unseal>> {
        None
    }
    /// A datagram another thread tried to open with the [`Unseal`] of `epoch`: `opened`
    /// true when it opened (the tag verified), false when its tag failed.
    fn handle_unsealed(
        &mut self,
        now: Instant,
        datagram: &mut [u8],
        _epoch: u64,
        opened: bool,
    ) -> bool {
        opened && self.handle_datagram(now, datagram)
    }
}

impl<E: Endpoint + ?Sized> Endpoint for &mut E {
    fn handle_datagram(&mut self, now: Instant, datagram: &mut [u8]) -> bool {
        (**self).handle_datagram(now, datagram)
    }
    fn note_source(&mut self, src: std::net::IpAddr) {
        (**self).note_source(src)
    }
    fn handle_timeout(&mut self, now: Instant) {
        (**self).handle_timeout(now)
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        (**self).poll_transmit(now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        (**self).poll_timeout()
    }
    fn poll_event(&mut self) -> Option<Event> {
        (**self).poll_event()
    }
    fn is_closed(&self) -> bool {
        (**self).is_closed()
    }
    fn stats(&self) -> &Stats {
        (**self).stats()
    }
    fn outcome(&self) -> Option<Result<(), Failure>> {
        (**self).outcome()
    }
    fn cancel(&mut self, now: Instant) {
        (**self).cancel(now)
    }
    fn poll_transmit_split(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(usize, Option<Arc<dyn Finish>>)> {
        (**self).poll_transmit_split(now, buf)
    }
    fn rx_unseal(&mut self) -> Option<Arc<dyn Unseal>> {
        (**self).rx_unseal()
    }
    fn handle_unsealed(
        &mut self,
        now: Instant,
        datagram: &mut [u8],
        epoch: u64,
        opened: bool,
    ) -> bool {
        (**self).handle_unsealed(now, datagram, epoch, opened)
    }
}

/// RFC 6298 smoothed RTT.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rtt {
    pub srtt: Duration,
    pub rttvar: Duration,
    pub sampled: bool,
    /// The smallest and the latest sample.
    pub min: Duration,
    pub latest: Duration,
}

impl Rtt {
    pub fn new(initial: Duration) -> Self {
        Rtt {
            srtt: initial,
            rttvar: initial / 2,
            sampled: false,
            min: initial,
            latest: initial,
        }
    }

    pub fn sample(&mut self, r: Duration) {
        self.latest = r;
        self.min = if self.sampled { self.min.min(r) } else { r };
        if !self.sampled {
            self.srtt = r;
            self.rttvar = r / 2;
            self.sampled = true;
        } else {
            let d = self.srtt.abs_diff(r);
            self.rttvar = (self.rttvar * 3 + d) / 4;
            self.srtt = (self.srtt * 7 + r) / 8;
        }
    }

    /// Probe timeout: srtt + 4 rttvar + the peer's ACK delay, within bounds.
    pub fn pto(&self, t: &Timing) -> Duration {
        (self.srtt + (self.rttvar * 4).max(Duration::from_millis(1)) + t.ack_delay)
            .clamp(t.min_pto, t.max_pto)
    }
}

/// Write one datagram: header, payload and CRC; `None` if it does not fit `buf`.
pub(crate) fn write_frame(
    buf: &mut [u8],
    session: u64,
    seq: u64,
    payload: &wire::payload::Payload<'_>,
) -> Option<usize> {
    if buf.len() < wire::pfs::HEADER_LEN + payload.buffer_len() {
        return None;
    }
    let hdr = wire::pfs::Repr {
        frame_type: payload.frame_type(),
        flags: 0,
        session,
        seq,
        payload_len: 0,
    };
    Some(wire::payload::Frame::emit(hdr, payload, buf))
}

/// Microseconds, saturating at u32.
pub(crate) fn us32(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}
