//! The sending side: handshake, the first pass over the stream, NACK-driven repair, probes,
//! pacing, and the end of the session. No I/O, no clock: see [`super`].

use super::pacing::{Pacer, RateControl};
use super::rangeset::RangeSet;
use super::PackPolicy;
use super::{us32, write_frame, Endpoint, Event, Failure, Reason, Rtt, SenderConfig, Stats};
use crate::blueprint::{block, Blueprint, Source};
use crate::wire::payload::{
    self, Ack, FileEntry, FileMode, Frame, GramWriter, Hello, Payload, Probe, HELLO_FIXED,
    MIN_DATAGRAM, RAW_PIECE, SNAP_PIECE,
};
use crate::wire::pfs;
use std::collections::VecDeque;
use std::time::Instant;

/// One file to send: its name on the receiver and its blueprint.
#[derive(Debug, Clone)]
pub struct SendFile {
    pub name: String,
    pub blueprint: Blueprint,
}

/// Why a sender could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("file #{file}: {msg}")]
    InvalidBlueprint { file: usize, msg: String },
    #[error("file #{file} points into snapshot {}, not {}", crate::util::hex(.found), crate::util::hex(.expected))]
    MixedSnapshots {
        file: usize,
        expected: [u8; 32],
        found: [u8; 32],
    },
    #[error(
        "file #{file} has an empty name or one longer than {} bytes",
        payload::MAX_NAME_LEN
    )]
    BadName { file: usize },
    #[error("too many files ({0})")]
    TooManyFiles(usize),
    #[error("datagram size {0} is outside {MIN_DATAGRAM}..={max}", max = super::MAX_DATAGRAM)]
    DatagramSize(usize),
    #[error("file #{file}: packing its blueprint failed: {msg}")]
    Pack { file: usize, msg: String },
}

struct FileState {
    bp: Blueprint,
    /// File offset of each segment.
    seg_starts: Vec<u64>,
    /// Spill offset of each segment (meaningful for raw segments).
    spill_starts: Vec<usize>,
    /// Stream offset of the file.
    start: u64,
    mode: FileMode,
    /// The packed block stream (packed mode only).
    packed: Vec<u8>,
    /// Bytes of the stream the file takes: its size (direct) or `packed.len()`.
    slen: u64,
}

/// Payload bytes the direct mode spends on a blueprint (pieces and their headers; the
/// run and frame headers are about the same per datagram in both modes).
pub fn direct_payload_estimate(bp: &Blueprint) -> u64 {
    bp.segments
        .iter()
        .map(|s| match s.src {
            Source::Snap { .. } => SNAP_PIECE as u64,
            // self copies go as the raw bytes they copy in direct mode
            Source::Raw | Source::SelfCopy { .. } => RAW_PIECE as u64 + s.len as u64,
        })
        .sum()
}

/// True when the blueprint is mostly spill (90% of the direct bytes, at least 1 MiB) and
/// samples of it do not compress (97% or more at zstd level 1): packing cannot pay, so the
/// sender does not spend the time to encode it.
fn incompressible_spill(bp: &Blueprint, direct: u64) -> bool {
    const SAMPLE: usize = 64 << 10;
    let n = bp.spill.len();
    if n < (1 << 20) || (n as u64) * 10 < direct * 9 {
        return false;
    }
    let (mut raw, mut packed) = (0usize, 0usize);
    for k in 0..4 {
        let at = (n - SAMPLE) / 3 * k;
        let s = &bp.spill[at..at + SAMPLE];
        match zstd::bulk::compress(s, 1) {
            Ok(z) => packed += z.len(),
            Err(_) => return false,
        }
        raw += SAMPLE;
    }
    packed * 100 >= raw * 97
}

/// Decide how a file travels and pack it if it goes packed: `(mode, packed stream)`.
/// `Auto` packs when the packed stream is below 95% of the direct estimate.
pub fn choose_mode(
    bp: &Blueprint,
    policy: PackPolicy,
    opts: &block::EncodeOptions,
) -> Result<(FileMode, Vec<u8>), std::io::Error> {
    if bp.file_len == 0 || policy == PackPolicy::Never {
        return Ok((FileMode::Direct, Vec::new()));
    }
    let direct = direct_payload_estimate(bp);
    if policy == PackPolicy::Auto && incompressible_spill(bp, direct) {
        return Ok((FileMode::Direct, Vec::new()));
    }
    let packed = block::encode(bp, opts)?;
    let pays = (packed.len() as u128) * 100 < (direct as u128) * 95;
    if policy == PackPolicy::Always || pays {
        Ok((FileMode::Packed, packed))
    } else {
        Ok((FileMode::Direct, Vec::new()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshake,
    Data,
    /// Finished or aborted by the peer; answering its repeats with Close until `until`.
    Draining {
        until: Instant,
    },
    /// Aborted here; repeating the Abort until the peer's Close or `until`.
    Closing {
        until: Instant,
    },
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctrl {
    Probe,
    Abort,
    Close,
}

const SENT_RING: usize = 1024;

/// The bucket's depth: `burst_frames` full frames, or `burst_time` at `rate`, the larger.
fn burst_bytes(cfg: &SenderConfig, rate: u64) -> u64 {
    let frame = (cfg.max_datagram + cfg.frame_overhead) as u64;
    let by_time = (rate as u128 * cfg.burst_time.as_nanos() / 1_000_000_000) as u64;
    (cfg.burst_frames.max(1) * frame).max(by_time)
}

/// The sender state machine.
pub struct Sender {
    cfg: SenderConfig,
    snapshot_id: [u8; 32],
    names: Vec<String>,
    files: Vec<FileState>,
    /// Stream length (sum of the files' stream lengths).
    total: u64,
    /// Sum of the file sizes.
    file_total: u64,
    digest: [u8; 32],
    hello_chunks: Vec<(u32, u32)>,
    state: State,
    seq: u64,
    rtt: Rtt,
    pacer: Pacer,
    rc: RateControl,
    sent_ring: Vec<(u64, Option<Instant>)>,
    cursor: u64,
    repair: RangeSet,
    /// Ranges repaired lately, with when: a NACK that crosses them in flight must not send
    /// them again.
    recent_repairs: VecDeque<(Instant, u64, u64)>,
    peer: Ack,
    last_status_seq: Option<u64>,
    window_base: u64,
    last_heard: Option<Instant>,
    hello_queue: VecDeque<usize>,
    hello_at: Option<Instant>,
    hello_backoff: u32,
    probe_at: Option<Instant>,
    probe_backoff: u32,
    pending: VecDeque<Ctrl>,
    abort: Option<payload::Abort>,
    abort_sent: Option<Instant>,
    resend_at: Option<Instant>,
    resend_backoff: u32,
    events: VecDeque<Event>,
    stats: Stats,
    outcome: Option<Result<(), Failure>>,
}

impl Sender {
    /// A sender for `files`: blueprints into `snapshot`, whose id is `snapshot_id` (every
    /// blueprint must name it; each is validated against the snapshot's length here).
    pub fn new(
        cfg: SenderConfig,
        snapshot_id: [u8; 32],
        files: Vec<SendFile>,
        snapshot: &[u8],
    ) -> Result<Self, SendError> {
        if !(MIN_DATAGRAM..=super::MAX_DATAGRAM).contains(&cfg.max_datagram) {
            return Err(SendError::DatagramSize(cfg.max_datagram));
        }
        if files.len() > u32::MAX as usize - 1 {
            return Err(SendError::TooManyFiles(files.len()));
        }
        let mut states = Vec::with_capacity(files.len());
        let mut names = Vec::with_capacity(files.len());
        let mut start = 0u64;
        let mut file_total = 0u64;
        let mut hashes = Vec::with_capacity(files.len() * 32);
        for (i, f) in files.into_iter().enumerate() {
            if f.name.is_empty() || f.name.len() > payload::MAX_NAME_LEN {
                return Err(SendError::BadName { file: i });
            }
            if f.blueprint.snapshot_id != snapshot_id {
                return Err(SendError::MixedSnapshots {
                    file: i,
                    expected: snapshot_id,
                    found: f.blueprint.snapshot_id,
                });
            }
            f.blueprint.validate(snapshot.len() as u64).map_err(|e| {
                SendError::InvalidBlueprint {
                    file: i,
                    msg: e.to_string(),
                }
            })?;
            hashes.extend_from_slice(&f.blueprint.file_hash);
            let (mode, packed) =
                choose_mode(&f.blueprint, cfg.pack, &cfg.pack_opts).map_err(|e| {
                    SendError::Pack {
                        file: i,
                        msg: e.to_string(),
                    }
                })?;
            // Direct pieces land in any order, so a self copy could be applied before its
            // source: direct files carry the bytes a self copy stands for instead. Packed
            // files keep them (blocks are applied in file order).
            let mut f = f;
            if mode == FileMode::Direct && f.blueprint.has_self_copies() {
                f.blueprint =
                    f.blueprint
                        .lower_basic(snapshot)
                        .map_err(|e| SendError::InvalidBlueprint {
                            file: i,
                            msg: e.to_string(),
                        })?;
            }
            let mut seg_starts = Vec::with_capacity(f.blueprint.segments.len());
            let mut spill_starts = Vec::with_capacity(f.blueprint.segments.len());
            let (mut off, mut spill) = (0u64, 0usize);
            for s in &f.blueprint.segments {
                seg_starts.push(off);
                spill_starts.push(spill);
                off += s.len as u64;
                if s.src == Source::Raw {
                    spill += s.len as usize;
                }
            }
            let slen = match mode {
                FileMode::Direct => f.blueprint.file_len,
                FileMode::Packed | FileMode::Streamed => packed.len() as u64,
            };
            file_total += f.blueprint.file_len;
            names.push(f.name);
            states.push(FileState {
                bp: f.blueprint,
                seg_starts,
                spill_starts,
                start,
                mode,
                packed,
                slen,
            });
            start += slen;
        }
        // Manifest chunks: as many entries per Hello as fit.
        let budget = cfg.max_datagram - pfs::HEADER_LEN - HELLO_FIXED;
        let mut hello_chunks = Vec::new();
        let mut first = 0usize;
        while first < names.len() {
            let (mut used, mut count) = (0usize, 0usize);
            while first + count < names.len() && count < u16::MAX as usize {
                let l = payload::ENTRY_FIXED + names[first + count].len();
                if used + l > budget {
                    break;
                }
                used += l;
                count += 1;
            }
            hello_chunks.push((first as u32, count as u32));
            first += count;
        }
        if hello_chunks.is_empty() {
            hello_chunks.push((0, 0));
        }
        let cap = cfg.rate.unwrap_or(u64::MAX / 2);
        let initial = cfg.rate.unwrap_or(cfg.initial_rate);
        let rc = RateControl::new(initial, cap, cfg.min_rate, cfg.loss_permille);
        let pacer = Pacer::new(rc.rate(), burst_bytes(&cfg, rc.rate()));
        let hello_queue = (0..hello_chunks.len()).collect();
        Ok(Sender {
            rtt: Rtt::new(cfg.timing.initial_rtt),
            snapshot_id,
            names,
            files: states,
            total: start,
            file_total,
            digest: *blake3::hash(&hashes).as_bytes(),
            hello_chunks,
            state: State::Handshake,
            seq: 0,
            pacer,
            rc,
            sent_ring: vec![(u64::MAX, None); SENT_RING],
            cursor: 0,
            repair: RangeSet::new(),
            recent_repairs: VecDeque::new(),
            peer: Ack::default(),
            last_status_seq: None,
            window_base: 0,
            last_heard: None,
            hello_queue,
            hello_at: None,
            hello_backoff: 0,
            probe_at: None,
            probe_backoff: 0,
            pending: VecDeque::new(),
            abort: None,
            abort_sent: None,
            resend_at: None,
            resend_backoff: 0,
            events: VecDeque::new(),
            stats: Stats::default(),
            outcome: None,
            cfg,
        })
    }

    /// Total bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.file_total
    }

    /// The stream length: file sizes for direct files, packed lengths for packed ones.
    pub fn stream_bytes(&self) -> u64 {
        self.total
    }

    /// How each file travels, with its stream length.
    pub fn modes(&self) -> Vec<(FileMode, u64)> {
        self.files.iter().map(|f| (f.mode, f.slen)).collect()
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// The receiver's last reported progress.
    pub fn peer_progress(&self) -> Ack {
        self.peer
    }

    /// Give up now: tell the receiver (Abort, Cancelled) and close.
    pub fn cancel(&mut self, now: Instant) {
        if self.outcome.is_none() {
            self.fail(now, Reason::Cancelled, true);
        }
    }

    fn pto(&self) -> std::time::Duration {
        self.rtt.pto(&self.cfg.timing)
    }

    fn backoff(&self, n: u32) -> std::time::Duration {
        (self.pto() * 2u32.saturating_pow(n.min(16))).min(self.cfg.timing.max_pto)
    }

    /// End the session here with `reason`; `linger` waits for the peer's Close.
    fn fail(&mut self, now: Instant, reason: Reason, linger: bool) {
        self.abort = Some(reason.to_wire());
        let f = Failure {
            reason,
            by_peer: false,
        };
        self.events.push_back(Event::Aborted(f.clone()));
        self.outcome = Some(Err(f));
        self.pending.clear();
        self.pending.push_back(Ctrl::Abort);
        self.state = if linger {
            self.resend_at = Some(now + self.pto());
            State::Closing {
                until: now + self.pto() * 4,
            }
        } else {
            State::Closed
        };
    }

    fn drain(&mut self, now: Instant) {
        self.pending.push_back(Ctrl::Close);
        self.state = State::Draining {
            until: now + self.pto() * 3,
        };
    }

    fn has_data(&self) -> bool {
        !self.repair.is_empty() || self.cursor < self.total
    }

    /// Frames allowed in flight beyond the highest sequence number the receiver reported:
    /// `window_frames`, and during slow start (before the first loss) 32 plus one per frame
    /// the receiver got, so the first round trips cannot blast a whole window into a link
    /// whose speed is not known yet.
    fn window_open(&self) -> bool {
        let acked = self.peer.max_seq.max(self.window_base);
        let mut limit = self.cfg.window_frames;
        if self.rc.in_slow_start() && self.cfg.rate.is_none() {
            limit = limit.min(32 + self.peer.rx_frames);
        }
        self.seq.saturating_sub(acked + 1) < limit
    }

    fn burst(&self, rate: u64) -> u64 {
        burst_bytes(&self.cfg, rate)
    }

    fn frame_cost(&self, n: usize) -> usize {
        n + self.cfg.frame_overhead
    }

    /// Account for one datagram of `n` bytes leaving now.
    fn sent(&mut self, now: Instant, n: usize) {
        self.sent_ring[(self.seq % SENT_RING as u64) as usize] = (self.seq, Some(now));
        self.seq += 1;
        self.stats.frames_sent += 1;
        self.stats.bytes_sent += n as u64;
        self.pacer.consume(self.frame_cost(n));
    }

    fn ctrl_frame(&mut self, now: Instant, c: Ctrl, buf: &mut [u8]) -> Option<usize> {
        let p = match c {
            Ctrl::Probe => {
                self.stats.probes += 1;
                Payload::Probe(Probe {
                    sent: self.cursor,
                    srtt_us: us32(self.rtt.srtt),
                    flags: if self.cursor >= self.total {
                        payload::PROBE_FIRST_PASS_DONE
                    } else {
                        0
                    },
                })
            }
            Ctrl::Abort => {
                self.abort_sent = Some(now);
                Payload::Abort(self.abort?)
            }
            Ctrl::Close => Payload::Close,
        };
        let n = write_frame(buf, self.cfg.session_id, self.seq, &p)?;
        self.sent(now, n);
        Some(n)
    }

    fn hello_frame(&mut self, now: Instant, chunk: usize, buf: &mut [u8]) -> Option<usize> {
        let (first, count) = self.hello_chunks[chunk];
        let entries = (first..first + count)
            .map(|i| {
                let f = &self.files[i as usize];
                FileEntry {
                    name: self.names[i as usize].clone(),
                    size: f.bp.file_len,
                    hash: f.bp.file_hash,
                    mode: f.mode,
                    stream_len: f.slen,
                }
            })
            .collect();
        let h = Payload::Hello(Hello {
            snapshot_id: self.snapshot_id,
            nfiles: self.files.len() as u32,
            first,
            entries,
        });
        let n = write_frame(buf, self.cfg.session_id, self.seq, &h)?;
        self.sent(now, n);
        Some(n)
    }

    /// Pack stream bytes `[s, e)` into `w` until it is full; returns the position reached.
    fn emit_range(&self, w: &mut GramWriter<'_>, mut s: u64, e: u64) -> u64 {
        while s < e {
            let fi = self.files.partition_point(|f| f.start + f.slen <= s);
            let Some(f) = self.files.get(fi) else {
                return s;
            };
            if f.mode == FileMode::Packed {
                let off = s - f.start;
                let fend = (e - f.start).min(f.slen);
                let bytes = &f.packed[off as usize..fend as usize];
                let k = w.push_raw(fi as u32, off, bytes);
                if k < bytes.len() {
                    return s + k as u64;
                }
                s = f.start + fend;
                continue;
            }
            let mut off = s - f.start;
            let fend = (e - f.start).min(f.bp.file_len);
            let mut si = f.seg_starts.partition_point(|&st| st <= off) - 1;
            while off < fend {
                let seg = f.bp.segments[si];
                let st = f.seg_starts[si];
                let take_end = (st + seg.len as u64).min(fend);
                let d = off - st;
                let n = take_end - off;
                match seg.src {
                    Source::Snap { op, off: so, imm } => {
                        if !w.push_snap(fi as u32, off, op, imm, so + d, n as u32) {
                            return f.start + off;
                        }
                        off = take_end;
                    }
                    Source::Raw => {
                        let sp = f.spill_starts[si] + d as usize;
                        let bytes = &f.bp.spill[sp..sp + n as usize];
                        let k = w.push_raw(fi as u32, off, bytes);
                        off += k as u64;
                        if (k as u64) < n {
                            return f.start + off;
                        }
                    }
                    Source::SelfCopy { .. } => {
                        unreachable!("direct files are lowered in Sender::new")
                    }
                }
                si += 1;
            }
            s = f.start + off;
        }
        s
    }

    fn data_frame(&mut self, now: Instant, buf: &mut [u8], repair: bool) -> Option<usize> {
        let mut w = GramWriter::new(&mut buf[pfs::HEADER_LEN..], us32(self.rtt.srtt));
        let mut carried = 0u64;
        if repair {
            while let Some((s, e)) = self.repair.first() {
                let reached = self.emit_range(&mut w, s, e);
                self.repair.remove(s, reached);
                if reached > s {
                    self.recent_repairs.push_back((now, s, reached));
                }
                carried += reached - s;
                if reached < e {
                    break;
                }
            }
        } else {
            let reached = self.emit_range(&mut w, self.cursor, self.total);
            carried = reached - self.cursor;
            self.cursor = reached;
        }
        let plen = w.finish();
        if plen == 0 {
            return None;
        }
        let repr = pfs::Repr {
            frame_type: pfs::FrameType::Data,
            flags: if repair { pfs::FLAG_REPAIR } else { 0 },
            session: self.cfg.session_id,
            seq: self.seq,
            payload_len: plen as u16,
        };
        let n = repr.buffer_len();
        repr.emit(&mut pfs::Packet::new_unchecked(&mut buf[..n]));
        if repair {
            self.stats.repair_frames += 1;
            self.stats.repair_bytes += carried;
        } else {
            self.stats.data_frames += 1;
            self.stats.data_bytes += carried;
        }
        self.sent(now, n);
        Some(n)
    }

    fn on_status(&mut self, now: Instant, seq: u64, ack: Ack, ranges: Option<&[(u64, u64)]>) {
        if self.last_status_seq.is_some_and(|l| seq <= l) {
            return; // reordered: an older view of the receiver
        }
        self.last_status_seq = Some(seq);
        let (s, t) = self.sent_ring[(ack.echo_seq % SENT_RING as u64) as usize];
        if let (true, Some(t)) = (s == ack.echo_seq, t) {
            let rtt = now.saturating_duration_since(t);
            let delay = std::time::Duration::from_micros(ack.echo_delay_us as u64);
            if rtt > delay {
                self.rtt.sample(rtt - delay);
            }
        }
        let progressed = ack.received > self.peer.received || ack.files_done > self.peer.files_done;
        self.peer = ack;
        self.repair.remove(0, ack.cum.min(self.total));
        if let Some(r) = ranges {
            self.stats.nacks += 1;
            // The newest NACK is the receiver's whole view of its holes: it replaces the
            // queue, so repeated NACKs never multiply the repair work.
            // Ranges repaired less than an RTT (plus the receiver's ACK delay) ago may be in
            // flight still: the NACK crossed them, they are not sent again yet.
            self.repair.clear();
            for &(s, e) in r {
                let (s, e) = (s.max(ack.cum), e.min(self.cursor));
                self.repair.insert(s, e);
            }
            let keep = self.rtt.srtt + self.rtt.rttvar + self.cfg.timing.ack_delay * 2;
            while self
                .recent_repairs
                .front()
                .is_some_and(|r| r.0 + keep < now)
            {
                self.recent_repairs.pop_front();
            }
            for &(_, s, e) in &self.recent_repairs {
                self.repair.remove(s, e);
            }
        }
        // Rates measured over less than a few milliseconds are bursts, not rates.
        let frame = self.frame_cost(self.cfg.max_datagram) as u64;
        let interval = self.rtt.srtt.max(std::time::Duration::from_millis(5));
        // A standing queue: the smoothed RTT well above the smallest one seen (5 ms of slack
        // so that a scheduler hiccup on a busy host is not read as congestion).
        let queueing = self.rtt.sampled
            && self.rtt.srtt > self.rtt.min * 2 + std::time::Duration::from_millis(5);
        if let Some(r) =
            self.rc
                .on_feedback(now, interval, ack.max_seq, ack.rx_frames, frame, queueing)
        {
            let burst = self.burst(r);
            self.pacer.set_rate(now, r, burst);
            tracing::debug!(rate = r, srtt = ?self.rtt.srtt, "pacing rate");
        }
        self.probe_backoff = 0;
        self.probe_at = Some(now + self.pto());
        if progressed {
            self.events.push_back(Event::Progress {
                done: ack.received,
                total: self.total,
            });
        }
    }
}

impl Endpoint for Sender {
    fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> bool {
        let Ok(frame) = Frame::parse(datagram) else {
            self.stats.malformed += 1;
            return false;
        };
        if frame.header.session != self.cfg.session_id {
            self.stats.foreign_session += 1;
            return false;
        }
        self.last_heard = Some(now);
        self.stats.frames_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        let seq = frame.header.seq;
        match (self.state, frame.payload) {
            (State::Handshake, Payload::Accept(a)) => {
                if a.snapshot_id != self.snapshot_id || a.nfiles as usize != self.files.len() {
                    self.fail(now, Reason::Protocol, true);
                    return true;
                }
                if a.max_rate > 0 {
                    self.rc.set_cap(a.max_rate);
                    let burst = self.burst(self.rc.rate());
                    self.pacer.set_rate(now, self.rc.rate(), burst);
                }
                self.state = State::Data;
                self.hello_queue.clear();
                self.hello_at = None;
                self.window_base = self.seq.saturating_sub(1);
                self.probe_at = Some(now + self.pto());
                self.events.push_back(Event::Accepted {
                    files: self.files.len() as u32,
                    bytes: self.file_total,
                });
            }
            (State::Data, Payload::Accept(_)) => {}
            (State::Data, Payload::Ack(a)) => self.on_status(now, seq, a, None),
            (State::Data, Payload::Nack(n)) => self.on_status(now, seq, n.ack, Some(&n.ranges)),
            (State::Handshake | State::Data, Payload::Done(d)) => {
                if d.files as usize != self.files.len()
                    || d.bytes != self.file_total
                    || d.digest != self.digest
                {
                    self.fail(now, Reason::Protocol, true);
                    return true;
                }
                self.peer.received = self.total;
                self.peer.files_done = d.files;
                self.events.push_back(Event::Progress {
                    done: self.total,
                    total: self.total,
                });
                self.events.push_back(Event::Finished);
                self.outcome = Some(Ok(()));
                self.drain(now);
            }
            (State::Handshake | State::Data, Payload::Abort(a)) => {
                let f = Failure {
                    reason: Reason::from_wire(&a, self.snapshot_id),
                    by_peer: true,
                };
                self.events.push_back(Event::Aborted(f.clone()));
                self.outcome = Some(Err(f));
                self.drain(now);
            }
            (State::Draining { .. }, Payload::Done(_) | Payload::Abort(_)) => {
                if !self.pending.contains(&Ctrl::Close) {
                    self.pending.push_back(Ctrl::Close);
                }
            }
            (State::Closing { .. }, Payload::Close | Payload::Abort(_)) => {
                self.pending.retain(|c| *c != Ctrl::Abort);
                self.state = State::Closed;
            }
            (State::Closing { .. }, _) => {
                if self
                    .abort_sent
                    .is_none_or(|t| now >= t + self.cfg.timing.ack_delay)
                    && !self.pending.contains(&Ctrl::Abort)
                {
                    self.pending.push_back(Ctrl::Abort);
                }
            }
            _ => {
                self.stats.unexpected += 1;
            }
        }
        true
    }

    fn handle_timeout(&mut self, now: Instant) {
        let heard = *self.last_heard.get_or_insert(now);
        match self.state {
            State::Handshake | State::Data => {
                if now >= heard + self.cfg.timing.idle_timeout {
                    let ms = self.cfg.timing.idle_timeout.as_millis() as u64;
                    self.fail(now, Reason::Timeout { ms }, false);
                    return;
                }
                if self.state == State::Handshake {
                    if self.hello_at.is_some_and(|t| now >= t) {
                        self.hello_queue = (0..self.hello_chunks.len()).collect();
                        self.hello_at = None;
                        self.hello_backoff += 1;
                    }
                } else if self.probe_at.is_some_and(|t| now >= t) {
                    if !self.pending.contains(&Ctrl::Probe) {
                        self.pending.push_back(Ctrl::Probe);
                    }
                    self.probe_backoff += 1;
                    self.probe_at = Some(now + self.backoff(self.probe_backoff));
                }
            }
            State::Draining { until } => {
                if now >= until {
                    self.state = State::Closed;
                }
            }
            State::Closing { until } => {
                if now >= until {
                    self.state = State::Closed;
                } else if self.resend_at.is_some_and(|t| now >= t) {
                    if !self.pending.contains(&Ctrl::Abort) {
                        self.pending.push_back(Ctrl::Abort);
                    }
                    self.resend_backoff += 1;
                    self.resend_at = Some(now + self.backoff(self.resend_backoff));
                }
            }
            State::Closed => {}
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.last_heard.get_or_insert(now);
        let lim = buf.len().min(self.cfg.max_datagram);
        let buf = &mut buf[..lim];
        if let Some(c) = self.pending.pop_front() {
            return self.ctrl_frame(now, c, buf);
        }
        match self.state {
            State::Handshake => {
                let chunk = self.hello_queue.pop_front()?;
                let n = self.hello_frame(now, chunk, buf);
                if self.hello_queue.is_empty() {
                    self.hello_at = Some(now + self.backoff(self.hello_backoff));
                }
                n
            }
            State::Data => {
                if !self.has_data() || !self.window_open() {
                    return None;
                }
                if !self.pacer.ready(now) {
                    self.rc.limited = true;
                    return None;
                }
                let repair = !self.repair.is_empty();
                self.data_frame(now, buf, repair)
            }
            _ => None,
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.last_heard.map(|h| h + self.cfg.timing.idle_timeout);
        let min = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match self.state {
            State::Handshake => min(idle, self.hello_at),
            State::Data => {
                // Wake when a few frames' worth of tokens are there, not for every frame.
                let pace = if self.has_data() && self.window_open() {
                    let quantum = self.cfg.burst_frames.clamp(1, 8) - 1;
                    self.pacer
                        .next_ready_with(quantum * self.frame_cost(self.cfg.max_datagram) as u64)
                } else {
                    None
                };
                min(min(idle, self.probe_at), pace)
            }
            State::Draining { until } => Some(until),
            State::Closing { until } => min(Some(until), self.resend_at),
            State::Closed => None,
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn is_closed(&self) -> bool {
        self.state == State::Closed && self.pending.is_empty()
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn outcome(&self) -> Option<Result<(), Failure>> {
        self.outcome.clone()
    }

    fn cancel(&mut self, now: Instant) {
        Sender::cancel(self, now)
    }
}

impl Sender {
    /// Counters, with the current rate filled in.
    pub fn stats_now(&self) -> Stats {
        let mut s = self.stats.clone();
        s.rate = self.pacer.rate();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::{Segment, Transform};
    use crate::wire::payload::{Gram, Piece};

    /// Two files over a 256-byte snapshot: snapshot segments with each transform and raw spill.
    fn sender(max_datagram: usize) -> (Sender, Vec<Vec<u8>>, Vec<u8>) {
        let snap: Vec<u8> = (0..=255u8).collect();
        let mk = |segs: Vec<Segment>, spill: Vec<u8>| {
            let mut out = Vec::new();
            let mut sp = 0;
            for s in &segs {
                match s.src {
                    Source::Snap { op, off, imm } => {
                        for i in 0..s.len as usize {
                            out.push(op.byte(snap[off as usize + i], imm));
                        }
                    }
                    Source::Raw => {
                        out.extend_from_slice(&spill[sp..sp + s.len as usize]);
                        sp += s.len as usize;
                    }
                    Source::SelfCopy { .. } => unreachable!(),
                }
            }
            let bp = Blueprint {
                snapshot_id: [1; 32],
                file_len: out.len() as u64,
                file_hash: *blake3::hash(&out).as_bytes(),
                segments: segs,
                spill,
            };
            (out, bp)
        };
        let snap_seg = |op, off, imm, len| Segment {
            len,
            src: Source::Snap { op, off, imm },
        };
        let raw = |len| Segment {
            len,
            src: Source::Raw,
        };
        let (c0, b0) = mk(
            vec![
                snap_seg(Transform::Id, 10, 0, 100),
                raw(700),
                snap_seg(Transform::Xor, 0, 0x55, 256),
            ],
            (0..700).map(|i| (i * 3) as u8).collect(),
        );
        let (c1, b1) = mk(
            vec![raw(5), snap_seg(Transform::Add, 200, 7, 50)],
            vec![9; 5],
        );
        let files = vec![
            SendFile {
                name: "a".into(),
                blueprint: b0,
            },
            SendFile {
                name: "b".into(),
                blueprint: b1,
            },
        ];
        let cfg = SenderConfig {
            max_datagram,
            pack: crate::proto::PackPolicy::Never,
            ..SenderConfig::default()
        };
        (
            Sender::new(cfg, [1; 32], files, &snap).unwrap(),
            vec![c0, c1],
            snap,
        )
    }

    /// Apply a gram's pieces to `files`, returning the stream bytes it covered.
    fn apply(g: &Gram<'_>, snap: &[u8], files: &mut [Vec<u8>]) -> u64 {
        let mut n = 0;
        for run in g.runs() {
            for (off, p) in run.pieces() {
                let f = &mut files[run.file as usize];
                match p {
                    Piece::Snap {
                        op,
                        imm,
                        snap_off,
                        len,
                    } => {
                        for i in 0..len as usize {
                            f[off as usize + i] = op.byte(snap[snap_off as usize + i], imm);
                        }
                    }
                    Piece::Raw(b) => f[off as usize..off as usize + b.len()].copy_from_slice(b),
                }
                n += p.len();
            }
        }
        n
    }

    #[test]
    fn any_range_packs_into_grams_that_rebuild_it() {
        for dg in [MIN_DATAGRAM, 700, 1472] {
            let (s, contents, snap) = sender(dg);
            let total = s.total_bytes();
            assert_eq!(total, 1056 + 55);
            for (lo, hi) in [
                (0, total),
                (3, 4),
                (99, 101),
                (795, 1060),
                (1056, 1111),
                (1100, 1111),
            ] {
                let mut got = vec![vec![0u8; contents[0].len()], vec![0u8; contents[1].len()]];
                let mut at = lo;
                let mut frames = 0;
                while at < hi {
                    let mut buf = vec![0u8; dg - pfs::HEADER_LEN];
                    let mut w = GramWriter::new(&mut buf, 0);
                    let reached = s.emit_range(&mut w, at, hi);
                    assert!(reached > at, "no progress at {at}");
                    let n = w.finish();
                    let g = Gram::parse(&buf[..n]).unwrap();
                    assert_eq!(apply(&g, &snap, &mut got), reached - at);
                    at = reached;
                    frames += 1;
                }
                assert!(frames < 10);
                let stream: Vec<u8> = contents.concat();
                let rebuilt: Vec<u8> = got.concat();
                assert_eq!(
                    &rebuilt[lo as usize..hi as usize],
                    &stream[lo as usize..hi as usize],
                    "range {lo}..{hi} at datagram {dg}"
                );
            }
        }
    }

    #[test]
    fn auto_packs_compressible_spill_and_keeps_random_data_direct() {
        let mk = |spill: Vec<u8>| Blueprint {
            snapshot_id: [1; 32],
            file_len: spill.len() as u64,
            file_hash: [0; 32],
            segments: crate::blueprint::raw_segments(spill.len() as u64),
            spill,
        };
        let o = block::EncodeOptions::default();
        let text: Vec<u8> = (0..200_000u32)
            .map(|i| b"abcdefgh"[(i % 8) as usize])
            .collect();
        let (m, packed) = choose_mode(&mk(text.clone()), PackPolicy::Auto, &o).unwrap();
        assert_eq!(m, FileMode::Packed);
        assert!(packed.len() < text.len() / 10);
        let mut x = 0x9e3779b97f4a7c15u64;
        let random: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (m, _) = choose_mode(&mk(random.clone()), PackPolicy::Auto, &o).unwrap();
        assert_eq!(m, FileMode::Direct);
        let (m, _) = choose_mode(&mk(random), PackPolicy::Always, &o).unwrap();
        assert_eq!(m, FileMode::Packed);
        let (m, _) = choose_mode(&mk(text.clone()), PackPolicy::Never, &o).unwrap();
        assert_eq!(m, FileMode::Direct);
        // Large incompressible spill is recognised from samples, without encoding it.
        let big: Vec<u8> = (0..(2 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let bp = mk(big);
        assert!(incompressible_spill(&bp, direct_payload_estimate(&bp)));
        let bp = mk(text.repeat(11));
        assert!(!incompressible_spill(&bp, direct_payload_estimate(&bp)));
    }

    #[test]
    fn manifests_are_chunked_to_fit_the_datagram() {
        let snap = vec![0u8; 16];
        let files: Vec<SendFile> = (0..50)
            .map(|i| SendFile {
                name: format!("{}{i}", "x".repeat(200)),
                blueprint: Blueprint {
                    snapshot_id: [1; 32],
                    file_len: 0,
                    file_hash: *blake3::hash(b"").as_bytes(),
                    segments: vec![],
                    spill: vec![],
                },
            })
            .collect();
        let cfg = SenderConfig {
            max_datagram: 1000,
            ..SenderConfig::default()
        };
        let mut s = Sender::new(cfg, [1; 32], files, &snap).unwrap();
        let now = Instant::now();
        let mut buf = vec![0u8; 1000];
        let mut seen = 0;
        while let Some(n) = s.poll_transmit(now, &mut buf) {
            let f = Frame::parse(&buf[..n]).unwrap();
            let Payload::Hello(h) = f.payload else {
                panic!()
            };
            assert_eq!(h.first, seen);
            assert!(!h.entries.is_empty());
            seen += h.entries.len() as u32;
        }
        assert_eq!(seen, 50);
    }

    #[test]
    fn bad_inputs_are_refused() {
        let snap = vec![0u8; 16];
        let bp = |id| Blueprint {
            snapshot_id: id,
            file_len: 20,
            file_hash: [0; 32],
            segments: vec![Segment {
                len: 20,
                src: Source::Snap {
                    op: Transform::Id,
                    off: 0,
                    imm: 0,
                },
            }],
            spill: vec![],
        };
        let one = |name: &str, id| {
            vec![SendFile {
                name: name.into(),
                blueprint: bp(id),
            }]
        };
        let cfg = SenderConfig::default;
        assert!(matches!(
            Sender::new(cfg(), [1; 32], one("a", [1; 32]), &snap),
            Err(SendError::InvalidBlueprint { .. })
        ));
        assert!(matches!(
            Sender::new(cfg(), [1; 32], one("a", [2; 32]), &[0u8; 64]),
            Err(SendError::MixedSnapshots { .. })
        ));
        assert!(matches!(
            Sender::new(cfg(), [1; 32], one("", [1; 32]), &[0u8; 64]),
            Err(SendError::BadName { .. })
        ));
        // self copies: a direct file carries the bytes they stand for (its pieces land in any
        // order), a packed file keeps them (blocks are applied in file order)
        let mut selfy = bp([1; 32]);
        selfy.segments = vec![
            Segment {
                len: 4,
                src: Source::Snap {
                    op: Transform::Id,
                    off: 0,
                    imm: 0,
                },
            },
            Segment {
                len: 16,
                src: Source::SelfCopy { off: 1 },
            },
        ];
        let files = |b: &Blueprint| {
            vec![SendFile {
                name: "s".into(),
                blueprint: b.clone(),
            }]
        };
        for (pack, keeps) in [(PackPolicy::Never, false), (PackPolicy::Always, true)] {
            let c = SenderConfig { pack, ..cfg() };
            let s = Sender::new(c, [1; 32], files(&selfy), &[0u8; 64]).unwrap();
            assert_eq!(s.files[0].bp.has_self_copies(), keeps, "{pack:?}");
        }
        let small = SenderConfig {
            max_datagram: 100,
            ..cfg()
        };
        assert!(matches!(
            Sender::new(small, [1; 32], vec![], &snap),
            Err(SendError::DatagramSize(100))
        ));
    }
}
