//! The sending side: handshake, the first pass over the stream, NACK-driven repair, probes,
//! pacing, and the end of the session. No I/O, no clock, no codec work: see [`super`]; the
//! files arrive prepared ([`crate::prepare`]), or block by block for a streamed file
//! ([`Sender::push_block`], [`Sender::finish_file`]).
//!
//! The state is in parts the sender holds: the [`Outgoing`] data (`outgoing.rs`), the
//! [`Pacing`] (`pacing.rs`) and the session [`Lifecycle`] shared with the receiver
//! (`lifecycle.rs`).

use super::lifecycle::{earliest, endpoint_from_lifecycle, Backoff, Ctrl, Lifecycle, Phase};
use super::outgoing::Outgoing;
pub use super::outgoing::{EntryMeta, OutgoingFile, SendError};
use super::pacing::Pacing;
use super::resume::Expected;
use super::{us32, write_frame, Endpoint, Event, Failure, Reason, SenderConfig, Stats};
use crate::blueprint::Blueprint;
use crate::wire::payload::{
    self, Ack, FileMode, Frame, GramWriter, Hello, Payload, Probe, HELLO_FIXED, MIN_DATAGRAM,
};
use crate::wire::pfs;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One file to send: its name on the receiver and its blueprint (the input of
/// [`crate::prepare::prepare`]).
#[derive(Debug, Clone)]
pub struct SendFile {
    pub name: String,
    pub blueprint: Blueprint,
}

/// Where the sender is while the session is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Handshake,
    Data,
}

/// The Hello frames: manifest chunks, resent with backoff until the Accept.
struct Handshake {
    /// `(first entry, count)` per Hello.
    chunks: Vec<(u32, u32)>,
    queue: VecDeque<usize>,
    at: Option<Instant>,
    backoff: u32,
}

/// The manifest's Hello chunks `(first entry, count)`: as many entries per Hello as fit.
fn hello_chunks(out: &Outgoing, max_datagram: usize) -> Vec<(u32, u32)> {
    let budget = max_datagram - pfs::HEADER_LEN - HELLO_FIXED;
    let mut chunks = Vec::new();
    let mut first = 0usize;
    while first < out.len() {
        let (mut used, mut count) = (0usize, 0usize);
        while first + count < out.len() && count < u16::MAX as usize {
            let l = out.entry_len(first + count);
            if used + l > budget {
                break;
            }
            used += l;
            count += 1;
        }
        chunks.push((first as u32, count as u32));
        first += count;
    }
    if chunks.is_empty() {
        chunks.push((0, 0));
    }
    chunks
}

/// The sender state machine.
pub struct Sender {
    cfg: SenderConfig,
    snapshot_id: [u8; 32],
    out: Outgoing,
    hello: Handshake,
    stage: Stage,
    seq: u64,
    pacing: Pacing,
    last_heard: Option<Instant>,
    probe_at: Option<Instant>,
    probe_backoff: u32,
    life: Lifecycle,
    stats: Stats,
    /// The receiver's Held entries (resume, skip), collected during the handshake.
    held: Expected,
}

impl Sender {
    /// A sender for prepared `files` into the snapshot whose id is `snapshot_id`.
    pub fn new(
        cfg: SenderConfig,
        snapshot_id: [u8; 32],
        files: Vec<OutgoingFile>,
    ) -> Result<Self, SendError> {
        if !(MIN_DATAGRAM..=super::MAX_DATAGRAM).contains(&cfg.max_datagram) {
            return Err(SendError::DatagramSize(cfg.max_datagram));
        }
        let out = Outgoing::new(files)?;
        let chunks = hello_chunks(&out, cfg.max_datagram);
        let queue = (0..chunks.len()).collect();
        Ok(Sender {
            pacing: Pacing::new(&cfg),
            snapshot_id,
            out,
            hello: Handshake {
                chunks,
                queue,
                at: None,
                backoff: 0,
            },
            stage: Stage::Handshake,
            seq: 0,
            last_heard: None,
            probe_at: None,
            probe_backoff: 0,
            life: Lifecycle::new(),
            stats: Stats::default(),
            held: Expected::default(),
            cfg,
        })
    }

    /// Set each entry's kind, attributes and link target ([`Outgoing::set_meta`]): a tree
    /// of files, directories and links. Call before the first transmit.
    pub fn set_meta(&mut self, meta: Vec<EntryMeta>) -> Result<(), SendError> {
        self.out.set_meta(meta)?;
        self.hello.chunks = hello_chunks(&self.out, self.cfg.max_datagram);
        self.hello.queue = (0..self.hello.chunks.len()).collect();
        Ok(())
    }

    /// Append bytes (whole blocks, `blueprint::block` encoded) to streamed file `file`;
    /// they may be sent at once.
    pub fn push_block(&mut self, file: usize, block: &[u8]) -> Result<(), SendError> {
        self.out.push_block(file, block)
    }

    /// End streamed file `file`, whose BLAKE3 is `hash`.
    pub fn finish_file(&mut self, file: usize, hash: [u8; 32]) -> Result<(), SendError> {
        self.out.finish_file(file, hash)
    }

    /// Stream bytes pushed but not yet sent once (what the first pass has ahead of it).
    pub fn unsent(&self) -> u64 {
        self.out.ready_end().saturating_sub(self.out.cursor)
    }

    /// Every streamed file is finished.
    pub fn all_pushed(&self) -> bool {
        self.out.all_ready()
    }

    /// Total bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.out.file_total
    }

    /// The stream length: file sizes for direct files, packed lengths for packed ones,
    /// bounds for streamed ones.
    pub fn stream_bytes(&self) -> u64 {
        self.out.total
    }

    /// How each file travels, with its stream length.
    pub fn modes(&self) -> Vec<(FileMode, u64)> {
        self.out.modes()
    }

    /// What the receiver holds of some files (resume, skip): complete once the session is
    /// past the handshake (`None` before), checked against the manifest (streamed files
    /// only; a whole file at its size, a prefix shorter than the file).
    pub fn held(&self) -> Option<Vec<crate::wire::held::HeldEntry>> {
        (self.stage == Stage::Data).then(|| self.held.entries.values().copied().collect())
    }

    /// The producer continued file `file` after the `at` bytes the receiver holds
    /// (`whole`: all of it, skipped): counted in the stats.
    pub fn note_resumed(&mut self, _file: usize, at: u64, whole: bool) {
        if whole {
            self.stats.skipped_files += 1;
            self.stats.skipped_bytes += at;
        } else {
            self.stats.resumed_files += 1;
            self.stats.resumed_bytes += at;
        }
    }

    /// This session's id.
    pub fn session_id(&self) -> u64 {
        self.cfg.session_id
    }

    pub fn file_count(&self) -> usize {
        self.out.len()
    }

    /// The receiver's last reported progress.
    pub fn peer_progress(&self) -> Ack {
        self.pacing.peer
    }

    /// Each file's mode and size, as the manifest says.
    fn manifest_sizes(&self) -> Vec<(FileMode, u64)> {
        (0..self.out.len())
            .map(|i| {
                let e = self.out.entry(i);
                (e.mode, e.size)
            })
            .collect()
    }

    /// The Accept and every Held entry it announced arrived: the data may flow.
    fn enter_data(&mut self, now: Instant) {
        if !self.held.complete() {
            return; // the Hello repeats; the receiver answers with the Accept and Held again
        }
        self.stage = Stage::Data;
        self.hello.queue.clear();
        self.hello.at = None;
        self.pacing.window_base = self.seq.saturating_sub(1);
        self.probe_at = Some(now + self.pto());
        self.life.events.push_back(Event::Accepted {
            files: self.out.len() as u32,
            bytes: self.out.file_total,
        });
    }

    /// Give up now: tell the receiver (Abort, Cancelled) and close.
    pub fn cancel(&mut self, now: Instant) {
        if self.life.outcome.is_none() {
            self.fail(now, Reason::Cancelled, true);
        }
    }

    fn pto(&self) -> Duration {
        self.pacing.rtt.pto(&self.cfg.timing)
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            pto: self.pto(),
            max: self.cfg.timing.max_pto,
        }
    }

    /// End the session here with `reason`; `linger` waits for the peer's Close.
    fn fail(&mut self, now: Instant, reason: Reason, linger: bool) {
        let abort = Payload::Abort(reason.to_wire());
        self.life.failed(reason, false);
        let until = now + self.pto() * 4;
        let b = self.backoff();
        self.life.terminate(now, abort, until, b, true);
        if !linger {
            self.life.close_now();
        }
    }

    fn drain(&mut self, now: Instant) {
        let until = now + self.pto() * 3;
        self.life.drain(until);
    }

    fn frame_cost(&self, n: usize) -> usize {
        n + self.cfg.frame_overhead
    }

    /// Account for one datagram of `n` bytes leaving now.
    fn sent(&mut self, now: Instant, n: usize) {
        let cost = self.frame_cost(n);
        self.pacing.sent(now, self.seq, cost);
        self.seq += 1;
        self.stats.frames_sent += 1;
        self.stats.bytes_sent += n as u64;
    }

    fn ctrl_frame(&mut self, now: Instant, c: Ctrl, buf: &mut [u8]) -> Option<usize> {
        let p = match c {
            Ctrl::Probe => {
                self.stats.probes += 1;
                let cursor = self.out.cursor;
                Payload::Probe(Probe {
                    sent: cursor,
                    srtt_us: us32(self.pacing.rtt.srtt),
                    flags: if cursor >= self.out.total {
                        payload::PROBE_FIRST_PASS_DONE
                    } else {
                        0
                    },
                })
            }
            Ctrl::Terminal => self.life.terminal.clone()?,
            Ctrl::Close => Payload::Close,
            Ctrl::Accept | Ctrl::Status => return None,
        };
        let n = write_frame(buf, self.cfg.session_id, self.seq, &p)?;
        self.sent(now, n);
        Some(n)
    }

    fn hello_frame(&mut self, now: Instant, chunk: usize, buf: &mut [u8]) -> Option<usize> {
        let (first, count) = self.hello.chunks[chunk];
        let entries = (first..first + count)
            .map(|i| self.out.entry(i as usize))
            .collect();
        let h = Payload::Hello(Hello {
            snapshot_id: self.snapshot_id,
            nfiles: self.out.len() as u32,
            first,
            entries,
        });
        let n = write_frame(buf, self.cfg.session_id, self.seq, &h)?;
        self.sent(now, n);
        Some(n)
    }

    fn data_frame(&mut self, now: Instant, buf: &mut [u8], repair: bool) -> Option<usize> {
        let mut w = GramWriter::new(&mut buf[pfs::HEADER_LEN..], us32(self.pacing.rtt.srtt));
        let carried = self.out.fill(now, &mut w, repair);
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
        let mut p = pfs::Packet::new_unchecked(&mut buf[..n]);
        if self.cfg.frame_crc {
            repr.emit(&mut p);
        } else {
            repr.emit_header(&mut p);
        }
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
        let Some(progressed) = self.pacing.on_status(now, seq, ack, &self.cfg) else {
            return;
        };
        self.out.repair.remove(0, ack.cum.min(self.out.total));
        self.out.release(ack.cum);
        if let Some(r) = ranges {
            self.stats.nacks += 1;
            // The newest NACK is the receiver's whole view of its holes: it replaces the
            // queue, so repeated NACKs never multiply the repair work. Ranges repaired less
            // than an RTT (plus the receiver's ACK delay) ago may be in flight still: the
            // NACK crossed them, they are not sent again yet.
            let rtt = &self.pacing.rtt;
            let keep = rtt.srtt + rtt.rttvar + self.cfg.timing.ack_delay * 2;
            self.out.on_nack(now, ack.cum, r, keep);
        }
        self.probe_backoff = 0;
        self.probe_at = Some(now + self.pto());
        if progressed {
            self.life.events.push_back(Event::Progress {
                done: ack.received,
                total: self.out.total,
            });
        }
    }

    /// The receiver's Done: it must match what was sent.
    fn on_done(&mut self, now: Instant, d: payload::Done) {
        let digest = self.out.hashes().map(|hs| {
            let mut h = blake3::Hasher::new();
            for x in &hs {
                h.update(x);
            }
            *h.finalize().as_bytes()
        });
        if d.files as usize != self.out.len()
            || d.bytes != self.out.file_total
            || digest != Some(d.digest)
        {
            return self.fail(now, Reason::Protocol, true);
        }
        self.pacing.peer.received = self.out.total;
        self.pacing.peer.files_done = d.files;
        self.life.events.push_back(Event::Progress {
            done: self.out.total,
            total: self.out.total,
        });
        self.life.finished();
        self.drain(now);
    }

    /// Counters, with the current rate filled in.
    pub fn stats_now(&self) -> Stats {
        let mut s = self.stats.clone();
        s.rate = self.pacing.pacer.rate();
        s.stream_held_peak = self.out.held().1;
        s
    }
}

impl Endpoint for Sender {
    fn handle_datagram(&mut self, now: Instant, datagram: &mut [u8]) -> bool {
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
        if !self.life.is_open() {
            let close = matches!(frame.payload, Payload::Close);
            let abort = matches!(frame.payload, Payload::Abort(_));
            let terminal = abort || matches!(frame.payload, Payload::Done(_));
            self.life
                .on_peer_frame(now, close, abort, terminal, self.cfg.timing.ack_delay, None);
            if matches!(self.life.phase, Phase::Draining { .. } | Phase::Closed) && !terminal {
                self.stats.unexpected += 1;
            }
            return true;
        }
        match (self.stage, frame.payload) {
            (Stage::Handshake, Payload::Accept(a)) => {
                if a.snapshot_id != self.snapshot_id || a.nfiles as usize != self.out.len() {
                    self.fail(now, Reason::Protocol, true);
                    return true;
                }
                if a.max_rate > 0 {
                    self.pacing.set_cap(now, &self.cfg, a.max_rate);
                }
                if self.held.on_accept(a.held).is_err() {
                    self.fail(now, Reason::Protocol, true);
                    return true;
                }
                self.enter_data(now);
            }
            (Stage::Handshake, Payload::Held(h)) => {
                let files = self.manifest_sizes();
                if self.held.on_held(&h.entries, &files).is_err() {
                    self.fail(now, Reason::Protocol, true);
                    return true;
                }
                self.enter_data(now);
            }
            (Stage::Data, Payload::Held(_)) => {}
            (Stage::Data, Payload::Accept(_)) => {}
            (Stage::Data, Payload::Ack(a)) => self.on_status(now, seq, a, None),
            (Stage::Data, Payload::Nack(n)) => self.on_status(now, seq, n.ack, Some(&n.ranges)),
            (_, Payload::Done(d)) => self.on_done(now, d),
            (_, Payload::Abort(a)) => {
                self.life
                    .failed(Reason::from_wire(&a, self.snapshot_id), true);
                self.drain(now);
            }
            _ => self.stats.unexpected += 1,
        }
        true
    }

    fn handle_timeout(&mut self, now: Instant) {
        let heard = *self.last_heard.get_or_insert(now);
        if !self.life.is_open() {
            let b = self.backoff();
            return self.life.on_timeout(now, b);
        }
        if now >= heard + self.cfg.timing.idle_timeout {
            let ms = self.cfg.timing.idle_timeout.as_millis() as u64;
            return self.fail(now, Reason::Timeout { ms }, false);
        }
        match self.stage {
            Stage::Handshake => {
                if self.hello.at.is_some_and(|t| now >= t) {
                    self.hello.queue = (0..self.hello.chunks.len()).collect();
                    self.hello.at = None;
                    self.hello.backoff += 1;
                }
            }
            Stage::Data => {
                if self.probe_at.is_some_and(|t| now >= t) {
                    self.life.want(Ctrl::Probe);
                    self.probe_backoff += 1;
                    self.probe_at = Some(now + self.backoff().after(self.probe_backoff));
                }
            }
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.last_heard.get_or_insert(now);
        let lim = buf.len().min(self.cfg.max_datagram);
        let buf = &mut buf[..lim];
        if let Some(c) = self.life.next_ctrl(now) {
            return self.ctrl_frame(now, c, buf);
        }
        if !self.life.is_open() {
            return None;
        }
        match self.stage {
            Stage::Handshake => {
                let chunk = self.hello.queue.pop_front()?;
                let n = self.hello_frame(now, chunk, buf);
                if self.hello.queue.is_empty() {
                    self.hello.at = Some(now + self.backoff().after(self.hello.backoff));
                }
                n
            }
            Stage::Data => {
                if !self.out.has_data() || !self.pacing.window_open(self.seq, &self.cfg) {
                    return None;
                }
                if !self.pacing.pacer.ready(now) {
                    self.pacing.rc.limited = true;
                    return None;
                }
                let repair = !self.out.repair.is_empty();
                self.data_frame(now, buf, repair)
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if !self.life.is_open() {
            return self.life.poll_timeout();
        }
        let idle = self.last_heard.map(|h| h + self.cfg.timing.idle_timeout);
        match self.stage {
            Stage::Handshake => earliest(idle, self.hello.at),
            Stage::Data => {
                // Wake when a few frames' worth of tokens are there, not for every frame.
                let pace = if self.out.has_data() && self.pacing.window_open(self.seq, &self.cfg) {
                    let quantum = self.cfg.burst_frames.clamp(1, 8) - 1;
                    self.pacing
                        .pacer
                        .next_ready_with(quantum * self.frame_cost(self.cfg.max_datagram) as u64)
                } else {
                    None
                };
                earliest(earliest(idle, self.probe_at), pace)
            }
        }
    }

    endpoint_from_lifecycle!();

    fn cancel(&mut self, now: Instant) {
        Sender::cancel(self, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::{Segment, Source, Transform};
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
                    Source::SelfCopy { .. } | Source::Cover { .. } => unreachable!(),
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
        (prepared(cfg, files, &snap), vec![c0, c1], snap)
    }

    /// A sender for blueprints, through the prepare step.
    fn prepared(cfg: SenderConfig, files: Vec<SendFile>, snap: &[u8]) -> Sender {
        let out =
            crate::prepare::prepare(files, Vec::new(), [1; 32], snap, cfg.pack, &cfg.pack_opts)
                .unwrap();
        Sender::new(cfg, [1; 32], out).unwrap()
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
        for dg in [MIN_DATAGRAM, 1200, 1472] {
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
                    let reached = s.out.emit_range(&mut w, at, hi);
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
            max_datagram: 1200,
            ..SenderConfig::default()
        };
        let mut s = prepared(cfg, files, &snap);
        let now = Instant::now();
        let mut buf = vec![0u8; 1200];
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
        let bp = Blueprint {
            snapshot_id: [1; 32],
            file_len: 0,
            file_hash: [0; 32],
            segments: vec![],
            spill: vec![],
        };
        let direct = |name: &str| OutgoingFile::Direct {
            name: name.into(),
            blueprint: bp.clone(),
        };
        let cfg = SenderConfig::default;
        assert!(matches!(
            Sender::new(cfg(), [1; 32], vec![direct("")]),
            Err(SendError::BadName { .. })
        ));
        let mut selfy = bp.clone();
        selfy.file_len = 8;
        selfy.segments = vec![
            Segment {
                len: 4,
                src: Source::Raw,
            },
            Segment {
                len: 4,
                src: Source::SelfCopy { off: 0 },
            },
        ];
        selfy.spill = vec![1; 4];
        assert!(matches!(
            Sender::new(
                cfg(),
                [1; 32],
                vec![OutgoingFile::Direct {
                    name: "s".into(),
                    blueprint: selfy
                }]
            ),
            Err(SendError::DirectSelfCopies { file: 0 })
        ));
        assert!(matches!(
            Sender::new(
                cfg(),
                [1; 32],
                vec![OutgoingFile::Streamed {
                    name: "t".into(),
                    size: 5,
                    bound: 10
                }]
            ),
            Err(SendError::StreamBound { file: 0, .. })
        ));
        let small = SenderConfig {
            max_datagram: 100,
            ..cfg()
        };
        assert!(matches!(
            Sender::new(small, [1; 32], vec![]),
            Err(SendError::DatagramSize(100))
        ));
    }

    #[test]
    fn a_streamed_file_is_sent_only_as_far_as_it_was_pushed_and_its_void_is_skipped() {
        let files = vec![
            OutgoingFile::Streamed {
                name: "s".into(),
                size: 3000,
                bound: 5000,
            },
            OutgoingFile::Direct {
                name: "d".into(),
                blueprint: Blueprint {
                    snapshot_id: [1; 32],
                    file_len: 4,
                    file_hash: [2; 32],
                    segments: crate::blueprint::raw_segments(4),
                    spill: vec![7; 4],
                },
            },
        ];
        let mut s = Sender::new(SenderConfig::default(), [1; 32], files).unwrap();
        assert_eq!(s.stream_bytes(), 5004);
        assert_eq!(s.out.ready_end(), 0, "nothing pushed yet");
        s.push_block(0, &[5u8; 1000]).unwrap();
        assert_eq!(s.out.ready_end(), 1000);
        assert!(matches!(
            s.push_block(0, &[5u8; 4000]),
            Err(SendError::StreamOverflow {
                file: 0,
                bound: 5000
            })
        ));
        assert!(matches!(
            s.push_block(1, &[1]),
            Err(SendError::NotStreamed { file: 1 })
        ));
        let mut buf = vec![0u8; 1400];
        let mut w = GramWriter::new(&mut buf, 0);
        assert_eq!(
            s.out.emit_range(&mut w, 0, 5004),
            1000,
            "stops at what was pushed"
        );
        s.finish_file(0, [9; 32]).unwrap();
        assert!(s.all_pushed());
        assert_eq!(s.out.ready_end(), 5004);
        let mut buf = vec![0u8; 1400];
        let mut w = GramWriter::new(&mut buf, 0);
        assert_eq!(s.out.emit_range(&mut w, 1000, 5004), 5004, "void skipped");
        let n = w.finish();
        let g = crate::wire::payload::Gram::parse(&buf[..n]).unwrap();
        let runs: Vec<_> = g.runs().map(|r| (r.file, r.file_off, r.len())).collect();
        assert_eq!(runs, vec![(0, 1000, 36), (1, 0, 4)]);
        assert_eq!(s.out.entry(0).hash, [0; 32], "the manifest carries no hash");
        assert_eq!(s.modes()[0], (FileMode::Streamed, 1036));
    }

    /// The raw bytes a gram carries, in order.
    fn gram_bytes(buf: &[u8]) -> Vec<(u64, Vec<u8>)> {
        if buf.is_empty() {
            return Vec::new(); // a writer given nothing writes nothing
        }
        let g = Gram::parse(buf).unwrap();
        let mut out = Vec::new();
        for r in g.runs() {
            for (off, p) in r.pieces() {
                if let Piece::Raw(b) = p {
                    out.push((off, b.to_vec()));
                }
            }
        }
        out
    }

    /// Once sent, stream bytes below the receiver's cumulative acknowledgement are released
    /// (never past what was sent); a repair asked below it carries nothing, one above it
    /// (across a chunk boundary) carries the bytes as pushed; the most held is kept.
    #[test]
    fn acknowledged_stream_bytes_are_released_and_repairs_above_still_read_back() {
        use crate::proto::streambuf::CHUNK;
        let n = 5 * CHUNK + 123;
        let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        let files = vec![OutgoingFile::Streamed {
            name: "s".into(),
            size: n as u64,
            bound: n as u64 + 100,
        }];
        let mut s = Sender::new(SenderConfig::default(), [1; 32], files).unwrap();
        for c in data.chunks(300_000) {
            s.push_block(0, c).unwrap();
        }
        s.finish_file(0, [3; 32]).unwrap();
        let total = (n + crate::wire::payload::StreamEnd::LEN) as u64;
        assert_eq!(s.out.held(), (total, total));
        // Nothing sent yet: an acknowledgement cannot release anything.
        s.out.release(total);
        assert_eq!(s.out.held().0, total);

        let mut buf = vec![0u8; 9000];
        let first_pass_to = 3 * CHUNK as u64;
        while s.out.cursor < first_pass_to {
            let mut w = GramWriter::new(&mut buf, 0);
            let end = s.out.emit_range(&mut w, s.out.cursor, first_pass_to);
            s.out.cursor = end;
        }
        let cum = 2 * CHUNK as u64 + 5;
        s.out.release(cum);
        assert_eq!(s.out.held(), (total - cum, total));
        // Beyond the cursor: released only up to the cursor.
        s.out.release(total);
        assert_eq!(s.out.held(), (total - first_pass_to, total));

        let mut w = GramWriter::new(&mut buf, 0);
        assert_eq!(
            s.out.emit_range(&mut w, 10, 2 * CHUNK as u64),
            2 * CHUNK as u64
        );
        let k = w.finish();
        assert!(
            gram_bytes(&buf[..k]).is_empty(),
            "released bytes are not sent"
        );

        let (lo, hi) = (4 * CHUNK as u64 - 100, 4 * CHUNK as u64 + 100);
        let mut w = GramWriter::new(&mut buf, 0);
        assert_eq!(s.out.emit_range(&mut w, lo, hi), hi);
        let k = w.finish();
        let got: Vec<u8> = gram_bytes(&buf[..k])
            .into_iter()
            .flat_map(|(_, b)| b)
            .collect();
        assert_eq!(got, &data[lo as usize..hi as usize]);
    }
}
