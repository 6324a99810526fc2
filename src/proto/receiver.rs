//! The receiving side: refuses what it must (before allocating), applies grams at their file
//! offsets through a [`FileSink`], reports progress and holes, verifies each file's BLAKE3
//! before it is committed. No I/O, no clock: see [`super`].
//!
//! The state is in parts the receiver holds, each in its own file: the [`Manifest`]
//! (`manifest.rs`), the [`Assembly`] of direct and packed files (`assembly.rs`), the
//! acknowledgements and reorder window ([`Acks`], `ack.rs`) and the session [`Lifecycle`]
//! shared with the sender (`lifecycle.rs`).

use super::ack::Acks;
use super::assembly::{Assembly, Ctx, Packed};
use super::hashpipe::use_thread;
use super::lifecycle::{earliest, endpoint_from_lifecycle, Backoff, Ctrl, Lifecycle, Phase};
use super::manifest::Manifest;
pub use super::manifest::{max_stream_bound, RecvFile};
use super::resume::Offers;
use super::sink::{FileSink, SinkError};
use super::{write_frame, Endpoint, Event, Failure, Reason, ReceiverConfig, Stats};
use crate::wire::payload::{
    Accept, Done, EntryKind, FileMode, Frame, Gram, Hello, Nack, Payload, Piece,
};
use crate::wire::pfs;
use std::time::{Duration, Instant};

pub use super::ack::MAX_REORDER_WINDOW;

/// Where the receiver is while the session is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the first Hello.
    Listen,
    /// Collecting manifest chunks.
    Collect,
    Data,
}

/// The reason a sink's refusal sends to the peer.
fn sink_reason(e: SinkError) -> Reason {
    match e {
        SinkError::NoSpace { need, avail } => Reason::NoSpace { need, avail },
        SinkError::BadName(file) => Reason::BadName { file },
        SinkError::Exists { file, .. } => Reason::FileExists { file },
        _ => Reason::Io,
    }
}

/// The receiver state machine over a snapshot and a sink.
pub struct Receiver<'s, S: FileSink> {
    cfg: ReceiverConfig,
    snapshot_id: [u8; 32],
    snapshot: &'s [u8],
    /// Declared before `sink`, so dropped before it: the hashing thread (in the assembly)
    /// is joined before the sink's memory it reads goes.
    assembly: Assembly,
    sink: S,
    session: Option<u64>,
    stage: Stage,
    seq: u64,
    manifest: Manifest,
    acks: Acks,
    last_heard: Option<Instant>,
    /// Set by [`Receiver::refuse`]: the session is answered with this reason at its Hello.
    refusal: Option<Reason>,
    life: Lifecycle,
    stats: Stats,
    /// What the sink already held, offered to the sender (resume, skip).
    offers: Offers,
    /// The files one gram touched (kept between grams: no allocation per frame).
    touched: Vec<usize>,
}

impl<'s, S: FileSink> Receiver<'s, S> {
    /// A receiver holding snapshot `snapshot` (whose id is `snapshot_id`), writing to `sink`.
    pub fn new(cfg: ReceiverConfig, snapshot_id: [u8; 32], snapshot: &'s [u8], sink: S) -> Self {
        Receiver {
            acks: Acks::new(cfg.timing.initial_rtt, cfg.reorder_window),
            cfg,
            snapshot_id,
            snapshot,
            assembly: Assembly::default(),
            sink,
            session: None,
            stage: Stage::Listen,
            seq: 0,
            manifest: Manifest::default(),
            last_heard: None,
            refusal: None,
            life: Lifecycle::new(),
            stats: Stats::default(),
            offers: Offers::default(),
            touched: Vec::new(),
        }
    }

    /// The accepted files (empty before the handshake completes).
    pub fn files(&self) -> &[RecvFile] {
        &self.manifest.files
    }

    /// The session id, once a Hello arrived.
    pub fn session(&self) -> Option<u64> {
        self.session
    }

    /// Stream bytes received so far, and the session total.
    pub fn progress(&self) -> (u64, u64) {
        (self.acks.recv.covered(), self.manifest.total)
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Lower the file and session size limits (a sender's policy, before its manifest).
    pub fn limit_sizes(&mut self, max_file: Option<u64>, max_total: Option<u64>) {
        if let Some(m) = max_file {
            self.cfg.max_file_size = self.cfg.max_file_size.min(m);
        }
        if let Some(m) = max_total {
            self.cfg.max_total_size = self.cfg.max_total_size.min(m);
        }
    }

    /// Refuse this session: its Hello is answered with an Abort carrying `reason` (e.g. the
    /// sender's directory could not be prepared), so the sender learns why at once.
    pub fn refuse(&mut self, reason: Reason) {
        self.refusal.get_or_insert(reason);
    }

    /// The sink, once the hashing thread read every span handed to it.
    pub fn sink_mut(&mut self) -> &mut S {
        self.assembly.drain();
        &mut self.sink
    }

    /// The sink; the hashing thread is stopped first (an unfinished session's hashes go).
    pub fn into_sink(mut self) -> S {
        self.assembly.settle();
        self.sink
    }

    /// Give up now: discard unfinished files, tell the sender (Abort, Cancelled), close.
    pub fn cancel(&mut self, now: Instant) {
        if self.life.outcome.is_none() {
            self.fail(now, Reason::Cancelled);
        }
    }

    fn pto(&self) -> Duration {
        (self.acks.srtt_hint * 2 + self.cfg.timing.ack_delay)
            .clamp(self.cfg.timing.min_pto, self.cfg.timing.max_pto)
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            pto: self.pto(),
            max: self.cfg.timing.max_pto,
        }
    }

    /// The session is open and past the handshake.
    fn in_data(&self) -> bool {
        self.life.is_open() && self.stage == Stage::Data
    }

    /// End the session here: discard what is not committed, send Abort until Close.
    fn fail(&mut self, now: Instant, reason: Reason) {
        self.assembly.settle();
        self.sink.discard();
        let abort = Payload::Abort(reason.to_wire());
        self.life.failed(reason, false);
        self.terminate(now, abort);
    }

    fn terminate(&mut self, now: Instant, terminal: Payload<'static>) {
        let until = now + self.cfg.timing.idle_timeout;
        let b = self.backoff();
        self.life
            .terminate(now, terminal, until, b, self.session.is_some());
    }

    fn on_hello(&mut self, now: Instant, h: Hello) {
        if let Some(r) = self.refusal.clone() {
            return self.fail(now, r);
        }
        if h.snapshot_id != self.snapshot_id {
            return self.fail(
                now,
                Reason::SnapshotMismatch {
                    sender: h.snapshot_id,
                    receiver: self.snapshot_id,
                },
            );
        }
        let first = self.stage == Stage::Listen;
        match self.manifest.on_hello(h, first, &self.cfg) {
            Err(r) => self.fail(now, r),
            Ok(complete) => {
                self.stage = Stage::Collect;
                if complete {
                    self.accept(now);
                }
            }
        }
    }

    /// The manifest is complete: check the session limits and names, open the sink.
    fn accept(&mut self, now: Instant) {
        let sink_files = match self.manifest.accept(&self.cfg) {
            Ok(f) => f,
            Err(r) => return self.fail(now, r),
        };
        if let Err(e) = self.sink.open(&sink_files) {
            return self.fail(now, sink_reason(e));
        }
        // The packed lengths passed the limit: the buffers may be allocated now.
        let thread = use_thread(self.cfg.hash_thread, self.manifest.file_total);
        self.assembly = Assembly::new(&self.manifest.files, &self.cfg.block_limits, thread);
        if self.cfg.resume {
            let budget = self.cfg.max_datagram.saturating_sub(pfs::HEADER_LEN);
            self.offers = Offers::collect(&mut self.sink, &self.manifest.files, budget);
        }
        self.stage = Stage::Data;
        self.life.want(Ctrl::Accept);
        self.life.events.push_back(Event::Accepted {
            files: self.manifest.nfiles,
            bytes: self.manifest.file_total,
        });
        for i in 0..self.manifest.files.len() {
            let f = &mut self.manifest.files[i];
            if f.kind != EntryKind::File {
                // No data: the sink creates it (a link) or applies its attributes (a
                // directory) once every file is in place.
                f.done = true;
                self.manifest.files_done += 1;
                continue;
            }
            if f.size == 0 && f.mode != FileMode::Streamed {
                self.complete(now, i);
                if !self.in_data() {
                    return;
                }
            }
        }
        self.maybe_finish(now);
    }

    /// Check that every piece of the gram lies inside its file and the snapshot.
    fn gram_in_bounds(&self, g: &Gram<'_>) -> bool {
        for run in g.runs() {
            let Some(f) = self.manifest.files.get(run.file as usize) else {
                return false;
            };
            if run
                .file_off
                .checked_add(run.len())
                .is_none_or(|e| e > f.slen)
            {
                return false;
            }
            for (_, p) in run.pieces() {
                if let Piece::Snap { snap_off, len, .. } = p {
                    if f.mode.is_packed() {
                        return false; // a packed stream travels as raw bytes only
                    }
                    if snap_off
                        .checked_add(len as u64)
                        .is_none_or(|e| e > self.snapshot.len() as u64)
                    {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn on_gram(&mut self, now: Instant, flags: u16, g: Gram<'_>) {
        if !self.gram_in_bounds(&g) {
            self.stats.malformed += 1;
            return;
        }
        if g.srtt_us > 0 {
            self.acks.srtt_hint = Duration::from_micros(g.srtt_us as u64);
        }
        let original = flags & pfs::FLAG_REPAIR == 0;
        let mut new = 0u64;
        let mut touched = std::mem::take(&mut self.touched);
        touched.clear();
        for run in g.runs() {
            let fi = run.file as usize;
            let start = self.manifest.files[fi].start;
            for (off, p) in run.pieces() {
                let (ss, se) = (start + off, start + off + p.len());
                if self.acks.recv.contains(ss, se) {
                    continue;
                }
                if original {
                    self.acks.late_original(ss, se);
                }
                let mut cx = Ctx {
                    sink: &mut self.sink,
                    snapshot: self.snapshot,
                    files: &self.manifest.files,
                    recv: &self.acks.recv,
                    limits: &self.cfg.block_limits,
                    offers: &mut self.offers,
                    stats: &mut self.stats,
                };
                match self.assembly.apply_piece(&mut cx, fi, off, p) {
                    Ok(true) => {}
                    Ok(false) => continue, // ahead of the window: comes again as a repair
                    Err(_) => return self.fail(now, Reason::Io),
                }
                new += self.acks.recv.insert(ss, se);
                if touched.last() != Some(&fi) {
                    touched.push(fi);
                }
            }
            if original {
                self.acks.frontier = self.acks.frontier.max(start + run.file_off + run.len());
            }
        }
        if new == 0 {
            self.stats.duplicate_frames += 1;
        }
        self.stats.data_bytes += new;
        if self
            .acks
            .on_data(now, self.cfg.ack_every, self.cfg.timing.ack_delay)
        {
            self.life.want(Ctrl::Status);
        }
        for &fi in &touched {
            if self.manifest.files[fi].done {
                continue;
            }
            let mut cx = Ctx {
                sink: &mut self.sink,
                snapshot: self.snapshot,
                files: &self.manifest.files,
                recv: &self.acks.recv,
                limits: &self.cfg.block_limits,
                offers: &mut self.offers,
                stats: &mut self.stats,
            };
            let finished = if self.manifest.files[fi].mode.is_packed() {
                match self.assembly.advance_packed(&mut cx, fi) {
                    Ok(Packed::Partial) => false,
                    Ok(Packed::Complete) => true,
                    Ok(Packed::Ended { end, hash }) => {
                        // The rest of the reserved stream is void: count it as received.
                        let f = &mut self.manifest.files[fi];
                        f.hash = hash;
                        self.acks.recv.insert(f.start + end, f.start + f.slen);
                        true
                    }
                    Err(e) => {
                        tracing::warn!(file = fi, error = %e, "packed stream refused");
                        return self.fail(now, e);
                    }
                }
            } else {
                self.assembly.advance_direct(&mut cx, fi)
            };
            if finished {
                self.complete(now, fi);
                if !self.in_data() {
                    return;
                }
            }
        }
        self.touched = touched;
    }

    /// File `fi` is complete: verify, commit, maybe finish the session.
    fn complete(&mut self, now: Instant, fi: usize) {
        let size = self.manifest.files[fi].size;
        let h = match self.assembly.file_hash(&mut self.sink, fi, size) {
            Ok(h) => h,
            Err(_) => return self.fail(now, Reason::Io),
        };
        if h != self.manifest.files[fi].hash {
            return self.fail(now, Reason::HashMismatch { file: fi as u32 });
        }
        if let Err(e) = self.sink.commit(fi as u32) {
            return self.fail(now, sink_reason(e));
        }
        self.manifest.files[fi].done = true;
        self.manifest.files_done += 1;
        self.life
            .events
            .push_back(Event::FileVerified { file: fi as u32 });
        self.maybe_finish(now);
    }

    /// Every file verified: send Done until the sender's Close.
    fn maybe_finish(&mut self, now: Instant) {
        if self.in_data() && self.manifest.all_done() {
            // Links last (no path of the session goes through one), then the attributes.
            match self.sink.finish() {
                Ok(skipped) => {
                    for (file, why) in skipped {
                        if let Some(f) = self.manifest.files.get_mut(file as usize) {
                            f.skipped = Some(why);
                        }
                        self.life.events.push_back(Event::Skipped { file, why });
                    }
                }
                Err(e) => return self.fail(now, sink_reason(e)),
            }
            let done = Payload::Done(Done {
                files: self.manifest.nfiles,
                bytes: self.manifest.file_total,
                digest: self.manifest.digest(),
            });
            self.life.finished();
            self.terminate(now, done);
        }
    }

    fn status_frame(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let cap = Nack::capacity(buf.len().saturating_sub(pfs::HEADER_LEN));
        let p = self.acks.report(
            now,
            self.manifest.files_done,
            self.cfg.timing.ack_delay,
            cap,
        );
        if matches!(p, Payload::Nack(_)) {
            self.stats.nacks += 1;
        }
        write_frame(buf, self.session?, self.seq, &p)
    }
}

impl<S: FileSink> Endpoint for Receiver<'_, S> {
    fn handle_datagram(&mut self, now: Instant, datagram: &mut [u8]) -> bool {
        let Ok(frame) = Frame::parse(datagram) else {
            self.stats.malformed += 1;
            return false;
        };
        let hdr = frame.header;
        match self.session {
            Some(s) if s != hdr.session => {
                self.stats.foreign_session += 1;
                return false;
            }
            None if !matches!(frame.payload, Payload::Hello(_)) => {
                self.stats.foreign_session += 1;
                return false;
            }
            None if !(self.life.is_open() && self.stage == Stage::Listen) => {
                self.stats.unexpected += 1;
                return false;
            }
            _ => {}
        }
        self.session = Some(hdr.session);
        self.last_heard = Some(now);
        self.stats.frames_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        if hdr.seq < self.acks.max_seq() {
            self.stats.reordered_frames += 1;
        }
        self.acks.on_frame(now, hdr.seq);
        let (close, abort) = (
            matches!(frame.payload, Payload::Close),
            matches!(frame.payload, Payload::Abort(_)),
        );
        if !self.life.is_open() {
            let extend = Some(self.cfg.timing.idle_timeout);
            self.life
                .on_peer_frame(now, close, abort, abort, self.cfg.timing.ack_delay, extend);
            if !abort && !close && matches!(self.life.phase, Phase::Draining { .. }) {
                self.stats.unexpected += 1;
            }
            return true;
        }
        match (self.stage, frame.payload) {
            (Stage::Listen | Stage::Collect, Payload::Hello(h)) => self.on_hello(now, h),
            (Stage::Data, Payload::Hello(_)) => self.life.want(Ctrl::Accept),
            (Stage::Data, Payload::Data(g)) => self.on_gram(now, hdr.flags, g),
            (Stage::Data, Payload::Probe(p)) => {
                if self
                    .acks
                    .on_probe(now, p.sent, self.manifest.total, p.srtt_us)
                {
                    self.life.want(Ctrl::Status);
                }
            }
            (Stage::Collect | Stage::Data, Payload::Abort(a)) => {
                self.assembly.settle();
                self.sink.discard();
                self.life
                    .failed(Reason::from_wire(&a, self.snapshot_id), true);
                let until = now + self.pto() * 3;
                self.life.drain(until);
            }
            _ => self.stats.unexpected += 1,
        }
        true
    }

    fn handle_timeout(&mut self, now: Instant) {
        if !self.life.is_open() {
            let b = self.backoff();
            return self.life.on_timeout(now, b);
        }
        if self.stage == Stage::Listen {
            return;
        }
        let heard = self.last_heard.unwrap_or(now);
        if now >= heard + self.cfg.timing.idle_timeout {
            let ms = self.cfg.timing.idle_timeout.as_millis() as u64;
            self.fail(now, Reason::Timeout { ms });
            // Nobody is listening: send the Abort once and stop.
            self.life.close_now();
            return;
        }
        if self.acks.on_timeout(now) {
            self.life.want(Ctrl::Status);
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let lim = buf.len().min(self.cfg.max_datagram);
        let buf = &mut buf[..lim];
        let session = self.session?;
        if self.life.is_open() {
            if let Some(h) = self.offers.next() {
                if let Some(n) = write_frame(buf, session, self.seq, &Payload::Held(h.clone())) {
                    self.seq += 1;
                    self.stats.frames_sent += 1;
                    self.stats.bytes_sent += n as u64;
                    return Some(n);
                }
            }
        }
        while let Some(c) = self.life.next_ctrl(now) {
            let n = match c {
                Ctrl::Accept => {
                    self.offers.queue_all();
                    write_frame(
                        buf,
                        session,
                        self.seq,
                        &Payload::Accept(Accept {
                            snapshot_id: self.snapshot_id,
                            nfiles: self.manifest.nfiles,
                            held: self.offers.count,
                            max_rate: self.cfg.max_rate,
                        }),
                    )
                }
                Ctrl::Status => {
                    if !self.in_data() {
                        continue;
                    }
                    self.status_frame(now, buf)
                }
                Ctrl::Terminal => {
                    let t = self.life.terminal.clone()?;
                    write_frame(buf, session, self.seq, &t)
                }
                Ctrl::Close => write_frame(buf, session, self.seq, &Payload::Close),
                Ctrl::Probe => continue,
            };
            if let Some(n) = n {
                self.seq += 1;
                self.stats.frames_sent += 1;
                self.stats.bytes_sent += n as u64;
                return Some(n);
            }
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if !self.life.is_open() {
            return self.life.poll_timeout();
        }
        if self.stage == Stage::Listen {
            return None;
        }
        earliest(
            self.last_heard.map(|h| h + self.cfg.timing.idle_timeout),
            self.acks.poll_timeout(),
        )
    }

    endpoint_from_lifecycle!();

    fn cancel(&mut self, now: Instant) {
        Receiver::cancel(self, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pob::prng::SplitMix64;
    use crate::proto::sink::MemSink;
    use crate::proto::HashThread;
    use crate::wire::payload::{FileEntry, GramWriter, Probe};

    const ID: [u8; 32] = [3; 32];

    fn frame(seq: u64, flags: u16, p: &Payload<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; 2000];
        let hdr = pfs::Repr {
            frame_type: p.frame_type(),
            flags,
            session: 7,
            seq,
            payload_len: 0,
        };
        let n = Frame::emit(hdr, p, &mut buf);
        buf.truncate(n);
        buf
    }

    /// A raw gram of `len` zero bytes at `off` of file 0.
    fn data(seq: u64, off: u64, len: usize) -> Vec<u8> {
        piece(seq, 0, off, &vec![0u8; len])
    }

    fn receiver(size: u64) -> Receiver<'static, MemSink> {
        static SNAP: [u8; 64] = [0; 64];
        let cfg = ReceiverConfig {
            ack_every: 1000,
            ..ReceiverConfig::default()
        };
        let mut r = Receiver::new(cfg, ID, &SNAP, MemSink::new());
        let hello = Payload::Hello(Hello {
            snapshot_id: ID,
            nfiles: 1,
            first: 0,
            entries: vec![FileEntry::direct(
                "f".into(),
                size,
                *blake3::hash(&vec![0u8; size as usize]).as_bytes(),
            )],
        });
        let now = Instant::now();
        assert!(r.handle_datagram(now, &mut frame(0, 0, &hello)));
        let mut buf = vec![0u8; 2000];
        let n = r.poll_transmit(now, &mut buf).unwrap();
        assert!(matches!(
            Frame::parse(&buf[..n]).unwrap().payload,
            Payload::Accept(_)
        ));
        r
    }

    fn status(r: &mut Receiver<'_, MemSink>, now: Instant) -> Payload<'static> {
        let mut buf = vec![0u8; 2000];
        let n = r.poll_transmit(now, &mut buf).expect("a status");
        match Frame::parse(&buf[..n]).unwrap().payload {
            Payload::Ack(a) => Payload::Ack(a),
            Payload::Nack(n) => Payload::Nack(n),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn holes_are_nacked_only_once_the_frontier_moved_past_them_a_report_ago() {
        let mut r = receiver(10_000);
        let t = Instant::now();
        // 0..100 and 200..300 arrive: 100..200 may merely be late.
        r.handle_datagram(t, &mut data(1, 0, 100));
        r.handle_datagram(t, &mut data(2, 200, 100));
        r.handle_timeout(t + Duration::from_millis(3)); // the ACK delay passed
        let Payload::Ack(a) = status(&mut r, t + Duration::from_millis(3)) else {
            panic!("a NACK before the previous report's frontier moved")
        };
        assert_eq!((a.cum, a.frontier, a.received), (100, 300, 200));
        // Another frame later: now the hole lies below the previous report's frontier.
        r.handle_datagram(t + Duration::from_millis(4), &mut data(3, 300, 100));
        r.handle_timeout(t + Duration::from_millis(7));
        let Payload::Nack(n) = status(&mut r, t + Duration::from_millis(7)) else {
            panic!("no NACK")
        };
        assert_eq!(n.ranges, vec![(100, 200)]);
        // A probe forces a NACK of everything missing up to the sender's position.
        let probe = Payload::Probe(Probe {
            sent: 10_000,
            srtt_us: 500,
            flags: crate::wire::payload::PROBE_FIRST_PASS_DONE,
        });
        r.handle_datagram(t + Duration::from_millis(8), &mut frame(4, 0, &probe));
        let Payload::Nack(n) = status(&mut r, t + Duration::from_millis(8)) else {
            panic!("no NACK after a probe")
        };
        assert_eq!(n.ranges, vec![(100, 200), (400, 10_000)]);
        assert_eq!(n.ack.max_seq, 4);
        assert_eq!(n.ack.echo_seq, 4);
    }

    /// A receiver with a 10 ms reorder window that got 0..100 and 200..300 of 10 000 bytes.
    fn windowed_with_a_hole() -> (Receiver<'static, MemSink>, Instant) {
        let mut r = receiver(10_000);
        r.cfg.reorder_window = Duration::from_millis(10);
        r.acks.reorder_window = r.cfg.reorder_window;
        let t = Instant::now();
        r.handle_datagram(t, &mut data(1, 0, 100));
        r.handle_datagram(t, &mut data(2, 200, 100));
        (r, t)
    }

    #[test]
    fn with_a_reorder_window_holes_are_nacked_only_once_older_than_it() {
        let (mut r, t) = windowed_with_a_hole();
        r.handle_timeout(t + Duration::from_millis(3));
        let Payload::Ack(_) = status(&mut r, t + Duration::from_millis(3)) else {
            panic!("a NACK for a hole that may be late")
        };
        // Past the previous report's frontier, but that report is younger than the window.
        r.handle_datagram(t + Duration::from_millis(4), &mut data(3, 300, 100));
        r.handle_timeout(t + Duration::from_millis(7));
        let Payload::Ack(_) = status(&mut r, t + Duration::from_millis(7)) else {
            panic!("a NACK inside the reorder window")
        };
        r.handle_datagram(t + Duration::from_millis(12), &mut data(4, 400, 100));
        r.handle_timeout(t + Duration::from_millis(14));
        let Payload::Nack(n) = status(&mut r, t + Duration::from_millis(14)) else {
            panic!("no NACK once the hole is older than the window")
        };
        assert_eq!(n.ranges, vec![(100, 200)]);
    }

    #[test]
    fn with_a_reorder_window_a_probe_is_answered_at_once_and_nacked_after_the_window() {
        let (mut r, t) = windowed_with_a_hole();
        let probe = Payload::Probe(Probe {
            sent: 400,
            srtt_us: 500,
            flags: 0,
        });
        r.handle_datagram(t + Duration::from_millis(1), &mut frame(3, 0, &probe));
        let Payload::Ack(a) = status(&mut r, t + Duration::from_millis(1)) else {
            panic!("a probe NACKed frames that may still be overtaken")
        };
        assert_eq!(a.echo_seq, 3);
        assert_eq!(r.poll_timeout(), Some(t + Duration::from_millis(11)));
        r.handle_datagram(t + Duration::from_millis(2), &mut data(4, 100, 100)); // the late one
        r.handle_timeout(t + Duration::from_millis(11));
        let Payload::Nack(n) = status(&mut r, t + Duration::from_millis(11)) else {
            panic!("no NACK after the window")
        };
        assert_eq!(n.ranges, vec![(300, 400)]);
    }

    #[test]
    fn a_late_original_in_a_nacked_hole_doubles_the_reorder_window() {
        let (mut r, t) = windowed_with_a_hole();
        let ms = |n| t + Duration::from_millis(n);
        r.handle_timeout(ms(3));
        assert!(matches!(status(&mut r, ms(3)), Payload::Ack(_)));
        r.handle_datagram(ms(12), &mut data(3, 300, 100));
        r.handle_timeout(ms(14));
        let Payload::Nack(n) = status(&mut r, ms(14)) else {
            panic!("no NACK")
        };
        assert_eq!(n.ranges, vec![(100, 200)]);
        // The original of 100..200 arrives after all: the window becomes 20 ms, so a new
        // hole (400..500) is not NACKed 11 ms after the report that passed it, but after 20.
        r.handle_datagram(ms(15), &mut data(2, 100, 100));
        r.handle_datagram(ms(15), &mut data(5, 500, 100));
        r.handle_timeout(ms(18));
        assert!(matches!(status(&mut r, ms(18)), Payload::Ack(_)));
        r.handle_datagram(ms(19), &mut data(6, 600, 100));
        r.handle_timeout(ms(29));
        assert!(
            matches!(status(&mut r, ms(29)), Payload::Ack(_)),
            "NACKed within the doubled window"
        );
        r.handle_datagram(ms(39), &mut data(7, 700, 100));
        r.handle_timeout(ms(41));
        let Payload::Nack(n) = status(&mut r, ms(41)) else {
            panic!("no NACK after the doubled window")
        };
        assert_eq!(n.ranges, vec![(400, 500)]);
    }

    #[test]
    fn duplicates_and_reordering_are_harmless() {
        let mut r = receiver(300);
        let t = Instant::now();
        for (seq, off) in [(1, 200), (2, 0), (3, 200), (4, 100), (5, 0)] {
            r.handle_datagram(t, &mut data(seq, off, 100));
        }
        assert_eq!(r.outcome(), Some(Ok(())));
        assert_eq!(r.stats().duplicate_frames, 1, "{:?}", r.stats());
        assert_eq!(r.sink().committed(0).unwrap(), &[0u8; 300][..]);
    }

    /// A raw gram of `bytes` at `off` of `file`.
    fn piece(seq: u64, file: u32, off: u64, bytes: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8; 1400];
        let mut w = GramWriter::new(&mut body, 1000);
        assert_eq!(w.push_raw(file, off, bytes), bytes.len());
        let n = w.finish();
        let mut buf = vec![0u8; pfs::HEADER_LEN + n];
        buf[pfs::HEADER_LEN..].copy_from_slice(&body[..n]);
        let hdr = pfs::Repr {
            frame_type: pfs::FrameType::Data,
            flags: 0,
            session: 7,
            seq,
            payload_len: n as u16,
        };
        hdr.emit(&mut pfs::Packet::new_unchecked(&mut buf[..]));
        buf
    }

    /// A receiver past the handshake for direct files `files` (their BLAKE3 in the manifest).
    fn receiver_of(files: &[Vec<u8>], hash_thread: HashThread) -> Receiver<'static, MemSink> {
        static SNAP: [u8; 64] = [0; 64];
        let cfg = ReceiverConfig {
            ack_every: 1000,
            hash_thread,
            ..ReceiverConfig::default()
        };
        let mut r = Receiver::new(cfg, ID, &SNAP, MemSink::new());
        let hello = Payload::Hello(Hello {
            snapshot_id: ID,
            nfiles: files.len() as u32,
            first: 0,
            entries: files
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    FileEntry::direct(format!("f{i}"), f.len() as u64, *blake3::hash(f).as_bytes())
                })
                .collect(),
        });
        assert!(r.handle_datagram(Instant::now(), &mut frame(0, 0, &hello)));
        assert_eq!(r.files().len(), files.len());
        r
    }

    /// A piece to deliver: (file, offset, bytes).
    type Pc = (u32, u64, Vec<u8>);

    /// Every file cut into pieces of 1..=`max_piece` bytes, shuffled within windows of
    /// `window` pieces (1: in order), then a duplicate of every 97th; and how many come
    /// before the duplicates.
    fn pieces(files: &[Vec<u8>], seed: u64, max_piece: usize, window: usize) -> (Vec<Pc>, usize) {
        let mut x = SplitMix64::new(seed);
        let mut out = Vec::new();
        let mut at = vec![0usize; files.len()];
        loop {
            let live: Vec<usize> = (0..files.len())
                .filter(|&i| at[i] < files[i].len())
                .collect();
            if live.is_empty() {
                break;
            }
            let i = live[x.next_u64() as usize % live.len()];
            let n = (1 + x.next_u64() as usize % max_piece).min(files[i].len() - at[i]);
            out.push((i as u32, at[i] as u64, files[i][at[i]..at[i] + n].to_vec()));
            at[i] += n;
        }
        for w in out.chunks_mut(window) {
            for k in (1..w.len()).rev() {
                w.swap(k, x.next_u64() as usize % (k + 1));
            }
        }
        let originals = out.len();
        for k in (0..originals).step_by(97) {
            let d = out[k].clone();
            out.push(d);
        }
        (out, originals)
    }

    fn deliver(r: &mut Receiver<'_, MemSink>, ps: &[Pc]) {
        let t = Instant::now();
        for (seq, (f, off, b)) in ps.iter().enumerate() {
            r.handle_datagram(t, &mut piece(seq as u64 + 1, *f, *off, b));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// With the hashing thread or without, any order of pieces verifies the same files,
        /// and a corrupted byte fails the session naming its file.
        #[test]
        fn the_hashing_thread_verifies_what_inline_hashing_does(
            seed in proptest::prelude::any::<u64>(),
            sizes in proptest::collection::vec(0usize..900_000, 1..4),
            max_piece in 1usize..1300,
            window in 1usize..6000,
            corrupt in proptest::prelude::any::<Option<usize>>(),
        ) {
            let mut x = SplitMix64::new(seed);
            let files: Vec<Vec<u8>> = sizes
                .iter()
                .map(|&n| (0..n).map(|_| x.next_u64() as u8).collect())
                .collect();
            let (mut ps, originals) = pieces(&files, seed, max_piece, window);
            // Only a first delivery: the duplicates come last, after every original.
            let bad = corrupt.map(|k| k % originals).map(|k| {
                let (f, _, bytes) = &mut ps[k];
                bytes[0] ^= 1; // the first delivery wins: its duplicate comes later
                *f
            });
            let mut outcomes = Vec::new();
            for mode in [HashThread::Off, HashThread::Always] {
                let mut r = receiver_of(&files, mode);
                proptest::prop_assert_eq!(r.assembly.threaded(), mode == HashThread::Always);
                deliver(&mut r, &ps);
                match bad {
                    None => {
                        proptest::prop_assert_eq!(r.outcome(), Some(Ok(())));
                        for (i, f) in files.iter().enumerate() {
                            proptest::prop_assert_eq!(r.sink().committed(i), Some(&f[..]));
                        }
                    }
                    Some(file) => {
                        let Some(Err(e)) = r.outcome() else {
                            panic!("corrupted file {file} passed: {:?}", r.outcome())
                        };
                        proptest::prop_assert_eq!(e.reason, Reason::HashMismatch { file });
                        proptest::prop_assert!(!r.assembly.threaded(), "thread left running");
                    }
                }
                outcomes.push(r.outcome());
            }
            proptest::prop_assert_eq!(&outcomes[0], &outcomes[1]);
        }
    }

    #[test]
    fn an_abort_stops_the_hashing_thread_and_nothing_waits_for_it() {
        let f: Vec<u8> = (0..3u32 << 20).map(|i| ((i * 7) >> 3) as u8).collect();
        let files = [f.clone()];
        let (ps, _) = pieces(&files, 5, 1300, 1);
        let t = Instant::now();
        // Half the file in order: its spans are handed to the thread, then the peer aborts.
        let mut r = receiver_of(&files, HashThread::Always);
        deliver(&mut r, &ps[..ps.len() / 2]);
        assert!(r.assembly.threaded());
        let abort = Payload::Abort(Reason::Cancelled.to_wire());
        assert!(r.handle_datagram(t, &mut frame(9_999_999, 0, &abort)));
        assert!(matches!(
            r.outcome(),
            Some(Err(Failure { by_peer: true, .. }))
        ));
        assert!(!r.assembly.threaded(), "the thread outlived the session");
        // A file's hash after the abort: the incremental one is gone, the sink's answers.
        let h = r
            .assembly
            .file_hash(&mut r.sink, 0, f.len() as u64)
            .unwrap();
        assert_eq!(
            h,
            *blake3::hash(&[]).as_bytes(),
            "MemSink discarded the buffer"
        );
        assert_eq!(r.sink().committed_count(), 0);
        // This side gives up: the same.
        let mut r = receiver_of(&files, HashThread::Always);
        deliver(&mut r, &ps[..ps.len() / 3]);
        r.cancel(t);
        assert!(!r.assembly.threaded());
        // An unfinished session handed over: the thread is stopped first.
        let mut r = receiver_of(&files, HashThread::Always);
        deliver(&mut r, &ps[..ps.len() / 3]);
        let sink = r.into_sink();
        assert_eq!(sink.committed_count(), 0);
    }

    #[test]
    fn the_default_policy_hashes_small_sessions_inline() {
        let small = [vec![1u8; 1000]];
        assert!(!receiver_of(&small, HashThread::Auto).assembly.threaded());
        let big = [vec![1u8; super::super::hashpipe::THREAD_MIN as usize]];
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(
            receiver_of(&big, HashThread::Auto).assembly.threaded(),
            cores >= 2
        );
        assert!(!receiver_of(&big, HashThread::Off).assembly.threaded());
    }
}
