//! The receiving side: refuses what it must (before allocating), applies grams at their file
//! offsets through a [`FileSink`], reports progress and holes, verifies each file's BLAKE3
//! before it is committed. No I/O, no clock: see [`super`].

use super::rangeset::RangeSet;
use super::sink::{sanitize_name, FileSink, SinkError, SinkFile, SnapSeg};
use super::{us32, write_frame, Endpoint, Event, Failure, Reason, ReceiverConfig, Stats};
use crate::blueprint::{block, Source};
use crate::wire::payload::{
    self, Accept, Ack, Done, FileEntry, FileMode, Frame, Gram, Hello, Nack, Payload, Piece,
};
use crate::wire::pfs;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// One accepted file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvFile {
    /// The sanitised name, relative to the output.
    pub name: String,
    pub size: u64,
    pub hash: [u8; 32],
    /// Stream offset.
    pub start: u64,
    pub mode: FileMode,
    /// Bytes the file takes in the stream (its size, or its packed length).
    pub slen: u64,
    /// Verified and committed.
    pub done: bool,
}

/// Hash bytes in steps of at least this many (BLAKE3 is fastest on long inputs).
const HASH_STEP: u64 = 256 << 10;

/// Per-file progress beyond the range set.
#[derive(Default)]
struct Prog {
    /// Packed: the reassembly buffer (`slen` bytes, allocated once the manifest passed the
    /// limits).
    buf: Vec<u8>,
    /// Packed: stream bytes decoded (a block boundary).
    decoded: u64,
    /// File bytes written in order (packed) or contiguous (direct) and fed to `hasher`.
    hashed: u64,
    hasher: Option<Box<blake3::Hasher>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the first Hello.
    Listen,
    /// Collecting manifest chunks.
    Collect,
    Data,
    /// Finished (Done) or aborted here (Abort): repeating that frame until the sender's Close,
    /// or silence for `until`.
    Closing {
        until: Instant,
    },
    /// Aborted by the sender: answering repeats with Close until `until`.
    Draining {
        until: Instant,
    },
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctrl {
    Accept,
    Status,
    Terminal,
    Close,
}

/// The receiver state machine over a snapshot and a sink.
pub struct Receiver<'s, S: FileSink> {
    cfg: ReceiverConfig,
    snapshot_id: [u8; 32],
    snapshot: &'s [u8],
    sink: S,
    session: Option<u64>,
    state: State,
    seq: u64,
    nfiles: u32,
    entries: Vec<Option<FileEntry>>,
    have: u32,
    files: Vec<RecvFile>,
    prog: Vec<Prog>,
    /// Stream length.
    total: u64,
    /// Sum of the file sizes.
    file_total: u64,
    recv: RangeSet,
    frontier: u64,
    tick_frontier: u64,
    /// Frontiers of earlier reports with their times (only with a reorder window).
    frontier_marks: VecDeque<(Instant, u64)>,
    rx_frames: u64,
    max_seq: u64,
    last_seq: u64,
    last_rx: Option<Instant>,
    srtt_hint: Duration,
    files_done: u32,
    unacked: u32,
    ack_at: Option<Instant>,
    forced: bool,
    /// With a reorder window: when a probe's forced NACK goes out (frames that overtook
    /// each other have arrived by then).
    forced_at: Option<Instant>,
    /// The reorder window in use: starts at `cfg.reorder_window`, doubles (up to
    /// [`MAX_REORDER_WINDOW`]) whenever an original frame fills a hole that was NACKed.
    reorder_window: Duration,
    /// The ranges of the last NACK (only with a reorder window).
    nacked: Vec<(u64, u64)>,
    last_nack: Option<Instant>,
    last_heard: Option<Instant>,
    pending: VecDeque<Ctrl>,
    terminal: Option<Payload<'static>>,
    terminal_sent: Option<Instant>,
    resend_at: Option<Instant>,
    resend_backoff: u32,
    events: VecDeque<Event>,
    stats: Stats,
    outcome: Option<Result<(), Failure>>,
}

/// The largest reorder window the receiver grows to.
pub const MAX_REORDER_WINDOW: Duration = Duration::from_millis(200);

impl<'s, S: FileSink> Receiver<'s, S> {
    /// A receiver holding snapshot `snapshot` (whose id is `snapshot_id`), writing to `sink`.
    pub fn new(cfg: ReceiverConfig, snapshot_id: [u8; 32], snapshot: &'s [u8], sink: S) -> Self {
        Receiver {
            srtt_hint: cfg.timing.initial_rtt,
            reorder_window: cfg.reorder_window,
            cfg,
            snapshot_id,
            snapshot,
            sink,
            session: None,
            state: State::Listen,
            seq: 0,
            nfiles: 0,
            entries: Vec::new(),
            have: 0,
            files: Vec::new(),
            prog: Vec::new(),
            total: 0,
            file_total: 0,
            recv: RangeSet::new(),
            frontier: 0,
            tick_frontier: 0,
            frontier_marks: VecDeque::new(),
            rx_frames: 0,
            max_seq: 0,
            last_seq: 0,
            last_rx: None,
            files_done: 0,
            unacked: 0,
            ack_at: None,
            forced: false,
            forced_at: None,
            nacked: Vec::new(),
            last_nack: None,
            last_heard: None,
            pending: VecDeque::new(),
            terminal: None,
            terminal_sent: None,
            resend_at: None,
            resend_backoff: 0,
            events: VecDeque::new(),
            stats: Stats::default(),
            outcome: None,
        }
    }

    /// The accepted files (empty before the handshake completes).
    pub fn files(&self) -> &[RecvFile] {
        &self.files
    }

    /// The session id, once a Hello arrived.
    pub fn session(&self) -> Option<u64> {
        self.session
    }

    /// Stream bytes received so far, and the session total.
    pub fn progress(&self) -> (u64, u64) {
        (self.recv.covered(), self.total)
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    pub fn into_sink(self) -> S {
        self.sink
    }

    /// Give up now: discard unfinished files, tell the sender (Abort, Cancelled), close.
    pub fn cancel(&mut self, now: Instant) {
        if self.outcome.is_none() {
            self.fail(now, Reason::Cancelled);
        }
    }

    fn pto(&self) -> Duration {
        (self.srtt_hint * 2 + self.cfg.timing.ack_delay)
            .clamp(self.cfg.timing.min_pto, self.cfg.timing.max_pto)
    }

    /// End the session here: discard what is not committed, send Abort until Close.
    fn fail(&mut self, now: Instant, reason: Reason) {
        self.sink.discard();
        let f = Failure {
            reason: reason.clone(),
            by_peer: false,
        };
        self.events.push_back(Event::Aborted(f.clone()));
        self.outcome = Some(Err(f));
        self.terminal = Some(Payload::Abort(reason.to_wire()));
        self.close_with_terminal(now);
    }

    fn close_with_terminal(&mut self, now: Instant) {
        self.pending.retain(|c| *c == Ctrl::Close);
        self.pending.push_back(Ctrl::Terminal);
        self.resend_backoff = 0;
        self.resend_at = Some(now + self.pto());
        self.state = if self.session.is_some() {
            State::Closing {
                until: now + self.cfg.timing.idle_timeout,
            }
        } else {
            self.pending.clear(); // no peer to tell
            State::Closed
        };
    }

    fn on_hello(&mut self, now: Instant, h: Hello) {
        if h.snapshot_id != self.snapshot_id {
            return self.fail(
                now,
                Reason::SnapshotMismatch {
                    sender: h.snapshot_id,
                    receiver: self.snapshot_id,
                },
            );
        }
        if self.state == State::Listen {
            if h.nfiles > self.cfg.max_files {
                return self.fail(
                    now,
                    Reason::TooManyFiles {
                        count: h.nfiles as u64,
                        limit: self.cfg.max_files as u64,
                    },
                );
            }
            self.nfiles = h.nfiles;
            self.entries = vec![None; h.nfiles as usize];
            self.state = State::Collect;
        } else if h.nfiles != self.nfiles {
            return self.fail(now, Reason::Protocol);
        }
        for (k, e) in h.entries.into_iter().enumerate() {
            let i = h.first + k as u32;
            if self.entries[i as usize].is_some() {
                continue;
            }
            if e.size > self.cfg.max_file_size {
                return self.fail(
                    now,
                    Reason::FileTooLarge {
                        file: i,
                        size: e.size,
                        limit: self.cfg.max_file_size,
                    },
                );
            }
            let Some(name) = sanitize_name(&e.name) else {
                return self.fail(now, Reason::BadName { file: i });
            };
            self.entries[i as usize] = Some(FileEntry { name, ..e });
            self.have += 1;
        }
        if self.have == self.nfiles {
            self.accept(now);
        }
    }

    /// The manifest is complete: check the session limits and names, open the sink.
    fn accept(&mut self, now: Instant) {
        let entries: Vec<FileEntry> = std::mem::take(&mut self.entries)
            .into_iter()
            .map(|e| e.expect("complete manifest"))
            .collect();
        let mut total = 0u64;
        for e in &entries {
            total = match total.checked_add(e.size) {
                Some(t) if t <= self.cfg.max_total_size => t,
                _ => {
                    let total = entries.iter().fold(0u64, |a, e| a.saturating_add(e.size));
                    return self.fail(
                        now,
                        Reason::SessionTooLarge {
                            total,
                            limit: self.cfg.max_total_size,
                        },
                    );
                }
            };
        }
        let mut seen: HashMap<&str, u32> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if let Some(&other) = seen.get(e.name.as_str()) {
                return self.fail(
                    now,
                    Reason::DuplicateName {
                        file: i as u32,
                        other,
                    },
                );
            }
            seen.insert(&e.name, i as u32);
        }
        let mut packed_total = 0u64;
        for (i, e) in entries.iter().enumerate() {
            if e.mode == FileMode::Packed {
                packed_total = packed_total.saturating_add(e.stream_len);
                if packed_total > self.cfg.max_packed_total {
                    return self.fail(
                        now,
                        Reason::PackedTooLarge {
                            file: i as u32,
                            len: e.stream_len,
                            limit: self.cfg.max_packed_total,
                        },
                    );
                }
            }
        }
        let sink_files: Vec<SinkFile> = entries
            .iter()
            .map(|e| SinkFile {
                name: e.name.clone(),
                size: e.size,
            })
            .collect();
        if let Err(e) = self.sink.open(&sink_files) {
            let reason = match e {
                SinkError::NoSpace { need, avail } => Reason::NoSpace { need, avail },
                SinkError::BadName(file) => Reason::BadName { file },
                _ => Reason::Io,
            };
            return self.fail(now, reason);
        }
        let mut start = 0;
        self.files = entries
            .into_iter()
            .map(|e| {
                let f = RecvFile {
                    name: e.name,
                    size: e.size,
                    hash: e.hash,
                    start,
                    mode: e.mode,
                    slen: e.stream_len,
                    done: false,
                };
                start += e.stream_len;
                f
            })
            .collect();
        // The packed lengths passed the limit above: the buffers may be allocated now.
        self.prog = self
            .files
            .iter()
            .map(|f| Prog {
                buf: if f.mode == FileMode::Packed {
                    vec![0u8; f.slen as usize]
                } else {
                    Vec::new()
                },
                ..Prog::default()
            })
            .collect();
        self.total = start;
        self.file_total = total;
        self.state = State::Data;
        self.pending.push_back(Ctrl::Accept);
        self.events.push_back(Event::Accepted {
            files: self.nfiles,
            bytes: self.file_total,
        });
        for i in 0..self.files.len() {
            if self.files[i].size == 0 {
                self.complete(now, i);
                if self.state != State::Data {
                    return;
                }
            }
        }
        self.maybe_finish(now);
    }

    /// Check that every piece of the gram lies inside its file and the snapshot.
    fn gram_in_bounds(&self, g: &Gram<'_>) -> bool {
        for run in g.runs() {
            let Some(f) = self.files.get(run.file as usize) else {
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
                    if f.mode == FileMode::Packed {
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
            self.srtt_hint = Duration::from_micros(g.srtt_us as u64);
        }
        let mut new = 0u64;
        let mut touched: Vec<usize> = Vec::new();
        for run in g.runs() {
            let fi = run.file as usize;
            let start = self.files[fi].start;
            let packed = self.files[fi].mode == FileMode::Packed;
            for (off, p) in run.pieces() {
                let (ss, se) = (start + off, start + off + p.len());
                if self.recv.contains(ss, se) {
                    continue;
                }
                if flags & pfs::FLAG_REPAIR == 0
                    && !self.nacked.is_empty()
                    && self.nacked.iter().any(|&(a, b)| ss < b && a < se)
                {
                    // An original frame filled a NACKed hole: it was late, not lost.
                    self.nacked.clear();
                    self.reorder_window = (self.reorder_window * 2).min(MAX_REORDER_WINDOW);
                }
                let r = if packed {
                    if let Piece::Raw(b) = p {
                        let o = off as usize;
                        self.prog[fi].buf[o..o + b.len()].copy_from_slice(b);
                    }
                    Ok(())
                } else {
                    // Bytes below the hashed prefix are final: a piece never rewrites them
                    // (pieces are byte-wise, so trimming one is exact).
                    let skip = self.prog[fi].hashed.saturating_sub(off).min(p.len());
                    let (off, n) = (off + skip, p.len() - skip);
                    match p {
                        _ if n == 0 => Ok(()),
                        Piece::Snap {
                            op, imm, snap_off, ..
                        } => self.write_snap_piece(
                            fi,
                            off,
                            SnapSeg {
                                op,
                                imm,
                                snap_off: snap_off + skip,
                                len: n as u32,
                            },
                        ),
                        Piece::Raw(b) => self.sink.write_raw(run.file, off, &b[skip as usize..]),
                    }
                };
                if r.is_err() {
                    return self.fail(now, Reason::Io);
                }
                new += self.recv.insert(ss, se);
                if touched.last() != Some(&fi) {
                    touched.push(fi);
                }
            }
            if flags & pfs::FLAG_REPAIR == 0 {
                self.frontier = self.frontier.max(start + run.file_off + run.len());
            }
        }
        if new == 0 {
            self.stats.duplicate_frames += 1;
        }
        self.stats.data_bytes += new;
        self.unacked += 1;
        if self.unacked >= self.cfg.ack_every {
            self.want_status();
        } else if self.ack_at.is_none() {
            self.ack_at = Some(now + self.cfg.timing.ack_delay);
        }
        for fi in touched {
            if self.files[fi].done {
                continue;
            }
            let finished = match self.files[fi].mode {
                FileMode::Packed => match self.advance_packed(fi) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(file = fi, error = %e, "packed stream refused");
                        return self.fail(now, e);
                    }
                },
                FileMode::Direct => {
                    let (start, size) = (self.files[fi].start, self.files[fi].size);
                    let contiguous = self.recv.first_gap(start).min(start + size) - start;
                    self.hash_upto(fi, contiguous, contiguous == size);
                    contiguous == size
                }
            };
            if finished {
                self.complete(now, fi);
                if self.state != State::Data {
                    return;
                }
            }
        }
    }

    /// Apply a direct snapshot piece. A long piece that starts at the hashed prefix (a
    /// covered file's first piece, typically) is applied in `HASH_STEP` chunks, each hashed
    /// right after it is written while it is still in cache.
    fn write_snap_piece(&mut self, fi: usize, off: u64, seg: SnapSeg) -> Result<(), SinkError> {
        if off != self.prog[fi].hashed || (seg.len as u64) < 2 * HASH_STEP {
            return self.sink.write_segment(fi as u32, off, seg, self.snapshot);
        }
        let mut done = 0u64;
        while done < seg.len as u64 {
            let n = (seg.len as u64 - done).min(HASH_STEP);
            let part = SnapSeg {
                snap_off: seg.snap_off + done,
                len: n as u32,
                ..seg
            };
            self.sink
                .write_segment(fi as u32, off + done, part, self.snapshot)?;
            done += n;
            // These bytes are final (later pieces are trimmed below `hashed`).
            self.hash_upto(fi, off + done, true);
        }
        Ok(())
    }

    /// Feed file bytes `[hashed, upto)` of `fi` to its hasher, in steps of `HASH_STEP`
    /// unless `last`. Does nothing if the sink cannot show its contents.
    fn hash_upto(&mut self, fi: usize, upto: u64, last: bool) {
        let p = &mut self.prog[fi];
        if upto <= p.hashed || (!last && upto - p.hashed < HASH_STEP) {
            return;
        }
        let Some(bytes) = self.sink.contents(fi as u32) else {
            return;
        };
        let h = p
            .hasher
            .get_or_insert_with(|| Box::new(blake3::Hasher::new()));
        h.update(&bytes[p.hashed as usize..upto as usize]);
        p.hashed = upto;
        self.sink.prefix_final(fi as u32, upto);
    }

    /// Decode and apply every complete block of packed file `fi` in the contiguous prefix of
    /// its stream, in file order. Returns true once the whole stream is applied.
    fn advance_packed(&mut self, fi: usize) -> Result<bool, Reason> {
        let (start, slen, size) = {
            let f = &self.files[fi];
            (f.start, f.slen, f.size)
        };
        let prefix = self.recv.first_gap(start).min(start + slen) - start;
        let lim = self.cfg.block_limits;
        while self.prog[fi].decoded < prefix {
            let at = self.prog[fi].decoded as usize;
            let avail = &self.prog[fi].buf[at..prefix as usize];
            let n = match block::body_len(avail, &lim) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(_) => return Err(Reason::Protocol),
            };
            let end = at as u64 + block::PREFIX as u64 + n;
            if end > slen {
                return Err(Reason::Protocol);
            }
            if end > prefix {
                break;
            }
            let body = &self.prog[fi].buf[at + block::PREFIX..end as usize];
            let file_off = self.prog[fi].hashed;
            let b = block::decode_body(body, &lim, self.snapshot.len() as u64, file_off)
                .map_err(|_| Reason::Protocol)?;
            if file_off.checked_add(b.file_len).is_none_or(|e| e > size) {
                return Err(Reason::Protocol);
            }
            self.apply_block(fi as u32, file_off, &b)
                .map_err(|_| Reason::Io)?;
            let p = &mut self.prog[fi];
            p.decoded = end;
            // `hashed` doubles as the packed file's write position: hash what was written.
            match self.sink.contents(fi as u32) {
                Some(bytes) => {
                    let h = p
                        .hasher
                        .get_or_insert_with(|| Box::new(blake3::Hasher::new()));
                    h.update(&bytes[file_off as usize..(file_off + b.file_len) as usize]);
                }
                None => p.hasher = None,
            }
            p.hashed = file_off + b.file_len;
            self.sink.prefix_final(fi as u32, file_off + b.file_len);
        }
        let p = &mut self.prog[fi];
        if p.decoded == slen {
            if p.hashed != size {
                return Err(Reason::Protocol);
            }
            p.buf = Vec::new();
            return Ok(true);
        }
        Ok(false)
    }

    /// Write one decoded block at `file_off` of `file` through the sink.
    fn apply_block(&mut self, file: u32, file_off: u64, b: &block::Block) -> Result<(), SinkError> {
        let mut off = file_off;
        let mut spill = 0usize;
        for seg in &b.segments {
            match seg.src {
                Source::Snap { op, off: so, imm } => self.sink.write_segment(
                    file,
                    off,
                    SnapSeg {
                        op,
                        imm,
                        snap_off: so,
                        len: seg.len,
                    },
                    self.snapshot,
                )?,
                Source::Raw => {
                    let n = seg.len as usize;
                    self.sink.write_raw(file, off, &b.spill[spill..spill + n])?;
                    spill += n;
                }
                Source::SelfCopy { off: src } => {
                    // Blocks are applied in file order and segments in order within one, so
                    // every byte before `off` is final here: the source is complete.
                    let bytes = self
                        .sink
                        .contents(file)
                        .ok_or(SinkError::NoReadBack { file })?;
                    let (s, d, n) = (src as usize, off as usize, seg.len as usize);
                    let avail = bytes
                        .get(s..d)
                        .filter(|a| !a.is_empty())
                        .ok_or(SinkError::OutOfRange {
                            file,
                            off: src,
                            len: d.saturating_sub(s),
                        })?;
                    // forward copy semantics: an overlapping source repeats with period d - s
                    let tmp: Vec<u8> = avail.iter().copied().cycle().take(n).collect();
                    self.sink.write_raw(file, off, &tmp)?;
                }
            }
            off += seg.len as u64;
        }
        Ok(())
    }

    fn want_status(&mut self) {
        if !self.pending.contains(&Ctrl::Status) {
            self.pending.push_back(Ctrl::Status);
        }
    }

    /// File `fi` is complete: verify, commit, maybe finish the session.
    fn complete(&mut self, now: Instant, fi: usize) {
        let p = &mut self.prog[fi];
        let incremental = match p.hasher.take() {
            Some(h) if p.hashed == self.files[fi].size => Some(*h.finalize().as_bytes()),
            _ => None,
        };
        let h = match incremental.map_or_else(|| self.sink.hash(fi as u32), Ok) {
            Ok(h) => h,
            Err(_) => return self.fail(now, Reason::Io),
        };
        if h != self.files[fi].hash {
            return self.fail(now, Reason::HashMismatch { file: fi as u32 });
        }
        if self.sink.commit(fi as u32).is_err() {
            return self.fail(now, Reason::Io);
        }
        self.files[fi].done = true;
        self.files_done += 1;
        self.events
            .push_back(Event::FileVerified { file: fi as u32 });
        self.maybe_finish(now);
    }

    /// Every file verified: send Done until the sender's Close.
    fn maybe_finish(&mut self, now: Instant) {
        if self.state == State::Data && self.files_done == self.nfiles {
            let mut hashes = Vec::with_capacity(self.files.len() * 32);
            for f in &self.files {
                hashes.extend_from_slice(&f.hash);
            }
            self.terminal = Some(Payload::Done(Done {
                files: self.nfiles,
                bytes: self.file_total,
                digest: *blake3::hash(&hashes).as_bytes(),
            }));
            self.outcome = Some(Ok(()));
            self.events.push_back(Event::Finished);
            self.close_with_terminal(now);
        }
    }

    fn status_frame(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let cum = self.recv.first_gap(0);
        let ack = Ack {
            cum,
            received: self.recv.covered(),
            frontier: self.frontier,
            rx_frames: self.rx_frames,
            max_seq: self.max_seq,
            echo_seq: self.last_seq,
            echo_delay_us: self
                .last_rx
                .map_or(0, |t| us32(now.saturating_duration_since(t))),
            files_done: self.files_done,
        };
        let limit = if self.forced {
            self.frontier
        } else if !self.reorder_window.is_zero() {
            // The newest report frontier at least a reorder window old.
            let w = self.reorder_window;
            while self.frontier_marks.len() >= 2
                && now.saturating_duration_since(self.frontier_marks[1].0) >= w
            {
                self.frontier_marks.pop_front();
            }
            let old = self
                .frontier_marks
                .front()
                .filter(|m| now.saturating_duration_since(m.0) >= w)
                .map_or(0, |m| m.1);
            old.min(self.frontier)
        } else {
            self.tick_frontier.min(self.frontier)
        };
        if !self.reorder_window.is_zero()
            && self
                .frontier_marks
                .back()
                .is_none_or(|m| m.1 != self.frontier)
        {
            self.frontier_marks.push_back((now, self.frontier));
        }
        let holdoff = self.srtt_hint + self.cfg.timing.ack_delay * 2;
        let may_nack = self.forced || self.last_nack.is_none_or(|t| now >= t + holdoff);
        let cap = Nack::capacity(buf.len().saturating_sub(pfs::HEADER_LEN));
        let ranges = if may_nack {
            self.recv.gaps(cum, limit, cap)
        } else {
            Vec::new()
        };
        self.tick_frontier = self.frontier;
        self.unacked = 0;
        self.ack_at = None;
        self.forced = false;
        let p = if ranges.is_empty() {
            Payload::Ack(ack)
        } else {
            self.last_nack = Some(now);
            self.stats.nacks += 1;
            if !self.reorder_window.is_zero() {
                self.nacked.clone_from(&ranges);
            }
            Payload::Nack(Nack { ack, ranges })
        };
        write_frame(buf, self.session?, self.seq, &p)
    }
}

impl<S: FileSink> Endpoint for Receiver<'_, S> {
    fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> bool {
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
            None if self.state != State::Listen => {
                self.stats.unexpected += 1;
                return false;
            }
            _ => {}
        }
        self.session = Some(hdr.session);
        self.last_heard = Some(now);
        self.stats.frames_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        self.rx_frames += 1;
        self.max_seq = self.max_seq.max(hdr.seq);
        self.last_seq = hdr.seq;
        self.last_rx = Some(now);
        match (self.state, frame.payload) {
            (State::Listen | State::Collect, Payload::Hello(h)) => self.on_hello(now, h),
            (State::Data, Payload::Hello(_)) => {
                if !self.pending.contains(&Ctrl::Accept) {
                    self.pending.push_back(Ctrl::Accept);
                }
            }
            (State::Data, Payload::Data(g)) => self.on_gram(now, hdr.flags, g),
            (State::Data, Payload::Probe(p)) => {
                self.srtt_hint = Duration::from_micros(p.srtt_us as u64);
                self.frontier = self.frontier.max(p.sent.min(self.total));
                if self.reorder_window.is_zero() {
                    self.forced = true;
                } else if self.forced_at.is_none() {
                    // Answer now (the sender hears we are alive); NACK everything missing
                    // once late frames had a reorder window to arrive.
                    self.forced_at = Some(now + self.reorder_window);
                }
                self.want_status();
            }
            (State::Collect | State::Data, Payload::Abort(a)) => {
                self.sink.discard();
                let f = Failure {
                    reason: Reason::from_wire(&a, self.snapshot_id),
                    by_peer: true,
                };
                self.events.push_back(Event::Aborted(f.clone()));
                self.outcome = Some(Err(f));
                self.pending.clear();
                self.pending.push_back(Ctrl::Close);
                self.state = State::Draining {
                    until: now + self.pto() * 3,
                };
            }
            (State::Closing { .. }, Payload::Close) => {
                self.pending.retain(|c| *c != Ctrl::Terminal);
                self.state = State::Closed;
            }
            (State::Closing { .. }, Payload::Abort(_)) => {
                self.pending.retain(|c| *c != Ctrl::Terminal);
                self.pending.push_back(Ctrl::Close);
                self.state = State::Closed;
            }
            (State::Closing { .. }, _) => {
                self.state = State::Closing {
                    until: now + self.cfg.timing.idle_timeout,
                };
                if self
                    .terminal_sent
                    .is_none_or(|t| now >= t + self.cfg.timing.ack_delay)
                    && !self.pending.contains(&Ctrl::Terminal)
                {
                    self.pending.push_back(Ctrl::Terminal);
                }
            }
            (State::Draining { .. }, Payload::Abort(_)) => {
                if !self.pending.contains(&Ctrl::Close) {
                    self.pending.push_back(Ctrl::Close);
                }
            }
            _ => self.stats.unexpected += 1,
        }
        true
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Collect | State::Data => {
                let heard = self.last_heard.unwrap_or(now);
                if now >= heard + self.cfg.timing.idle_timeout {
                    let ms = self.cfg.timing.idle_timeout.as_millis() as u64;
                    self.fail(now, Reason::Timeout { ms });
                    // Nobody is listening: send the Abort once and stop.
                    self.state = State::Closed;
                    return;
                }
                if self.ack_at.is_some_and(|t| now >= t) {
                    self.ack_at = None;
                    self.want_status();
                }
                if self.forced_at.is_some_and(|t| now >= t) {
                    self.forced_at = None;
                    self.forced = true;
                    self.want_status();
                }
            }
            State::Closing { until } => {
                if now >= until {
                    self.pending.clear();
                    self.state = State::Closed;
                } else if self.resend_at.is_some_and(|t| now >= t) {
                    if !self.pending.contains(&Ctrl::Terminal) {
                        self.pending.push_back(Ctrl::Terminal);
                    }
                    self.resend_backoff += 1;
                    let b = (self.pto() * 2u32.saturating_pow(self.resend_backoff.min(16)))
                        .min(self.cfg.timing.max_pto);
                    self.resend_at = Some(now + b);
                }
            }
            State::Draining { until } => {
                if now >= until {
                    self.state = State::Closed;
                }
            }
            State::Listen | State::Closed => {}
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let lim = buf.len().min(self.cfg.max_datagram);
        let buf = &mut buf[..lim];
        let session = self.session?;
        while let Some(c) = self.pending.pop_front() {
            let n = match c {
                Ctrl::Accept => write_frame(
                    buf,
                    session,
                    self.seq,
                    &Payload::Accept(Accept {
                        snapshot_id: self.snapshot_id,
                        nfiles: self.nfiles,
                        max_rate: self.cfg.max_rate,
                    }),
                ),
                Ctrl::Status => {
                    if self.state != State::Data {
                        continue;
                    }
                    self.status_frame(now, buf)
                }
                Ctrl::Terminal => {
                    self.terminal_sent = Some(now);
                    let t = self.terminal.clone()?;
                    write_frame(buf, session, self.seq, &t)
                }
                Ctrl::Close => write_frame(buf, session, self.seq, &Payload::Close),
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
        let min = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match self.state {
            State::Collect | State::Data => min(
                min(
                    self.last_heard.map(|h| h + self.cfg.timing.idle_timeout),
                    self.ack_at,
                ),
                self.forced_at,
            ),
            State::Closing { until } => min(Some(until), self.resend_at),
            State::Draining { until } => Some(until),
            State::Listen | State::Closed => None,
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
        Receiver::cancel(self, now)
    }
}

// `payload` is used in doc links and types above.
#[allow(unused_imports)]
use payload as _;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::sink::MemSink;
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
        let mut body = vec![0u8; 1400];
        let mut w = GramWriter::new(&mut body, 1000);
        assert_eq!(w.push_raw(0, off, &vec![0u8; len]), len);
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
        assert!(r.handle_datagram(now, &frame(0, 0, &hello)));
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
        r.handle_datagram(t, &data(1, 0, 100));
        r.handle_datagram(t, &data(2, 200, 100));
        r.handle_timeout(t + Duration::from_millis(3)); // the ACK delay passed
        let Payload::Ack(a) = status(&mut r, t + Duration::from_millis(3)) else {
            panic!("a NACK before the previous report's frontier moved")
        };
        assert_eq!((a.cum, a.frontier, a.received), (100, 300, 200));
        // Another frame later: now the hole lies below the previous report's frontier.
        r.handle_datagram(t + Duration::from_millis(4), &data(3, 300, 100));
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
        r.handle_datagram(t + Duration::from_millis(8), &frame(4, 0, &probe));
        let Payload::Nack(n) = status(&mut r, t + Duration::from_millis(8)) else {
            panic!("no NACK after a probe")
        };
        assert_eq!(n.ranges, vec![(100, 200), (400, 10_000)]);
        assert_eq!(n.ack.max_seq, 4);
        assert_eq!(n.ack.echo_seq, 4);
    }

    #[test]
    fn with_a_reorder_window_holes_are_nacked_only_once_older_than_it() {
        let mut r = receiver(10_000);
        r.cfg.reorder_window = Duration::from_millis(10);
        r.reorder_window = r.cfg.reorder_window;
        let t = Instant::now();
        r.handle_datagram(t, &data(1, 0, 100));
        r.handle_datagram(t, &data(2, 200, 100));
        r.handle_timeout(t + Duration::from_millis(3));
        let Payload::Ack(_) = status(&mut r, t + Duration::from_millis(3)) else {
            panic!("a NACK for a hole that may be late")
        };
        // Past the previous report's frontier, but that report is younger than the window.
        r.handle_datagram(t + Duration::from_millis(4), &data(3, 300, 100));
        r.handle_timeout(t + Duration::from_millis(7));
        let Payload::Ack(_) = status(&mut r, t + Duration::from_millis(7)) else {
            panic!("a NACK inside the reorder window")
        };
        r.handle_datagram(t + Duration::from_millis(12), &data(4, 400, 100));
        r.handle_timeout(t + Duration::from_millis(14));
        let Payload::Nack(n) = status(&mut r, t + Duration::from_millis(14)) else {
            panic!("no NACK once the hole is older than the window")
        };
        assert_eq!(n.ranges, vec![(100, 200)]);
    }

    #[test]
    fn with_a_reorder_window_a_probe_is_answered_at_once_and_nacked_after_the_window() {
        let mut r = receiver(10_000);
        r.cfg.reorder_window = Duration::from_millis(10);
        r.reorder_window = r.cfg.reorder_window;
        let t = Instant::now();
        r.handle_datagram(t, &data(1, 0, 100));
        r.handle_datagram(t, &data(2, 200, 100));
        let probe = Payload::Probe(Probe {
            sent: 400,
            srtt_us: 500,
            flags: 0,
        });
        r.handle_datagram(t + Duration::from_millis(1), &frame(3, 0, &probe));
        let Payload::Ack(a) = status(&mut r, t + Duration::from_millis(1)) else {
            panic!("a probe NACKed frames that may still be overtaken")
        };
        assert_eq!(a.echo_seq, 3);
        assert_eq!(r.poll_timeout(), Some(t + Duration::from_millis(11)));
        r.handle_datagram(t + Duration::from_millis(2), &data(4, 100, 100)); // the late one
        r.handle_timeout(t + Duration::from_millis(11));
        let Payload::Nack(n) = status(&mut r, t + Duration::from_millis(11)) else {
            panic!("no NACK after the window")
        };
        assert_eq!(n.ranges, vec![(300, 400)]);
    }

    #[test]
    fn a_late_original_in_a_nacked_hole_doubles_the_reorder_window() {
        let mut r = receiver(10_000);
        r.cfg.reorder_window = Duration::from_millis(10);
        r.reorder_window = r.cfg.reorder_window;
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        r.handle_datagram(t, &data(1, 0, 100));
        r.handle_datagram(t, &data(2, 200, 100));
        r.handle_timeout(ms(3));
        assert!(matches!(status(&mut r, ms(3)), Payload::Ack(_)));
        r.handle_datagram(ms(12), &data(3, 300, 100));
        r.handle_timeout(ms(14));
        let Payload::Nack(n) = status(&mut r, ms(14)) else {
            panic!("no NACK")
        };
        assert_eq!(n.ranges, vec![(100, 200)]);
        // The original of 100..200 arrives after all: the window becomes 20 ms, so a new
        // hole (400..500) is not NACKed 11 ms after the report that passed it, but after 20.
        r.handle_datagram(ms(15), &data(2, 100, 100));
        r.handle_datagram(ms(15), &data(5, 500, 100));
        r.handle_timeout(ms(18));
        assert!(matches!(status(&mut r, ms(18)), Payload::Ack(_)));
        r.handle_datagram(ms(19), &data(6, 600, 100));
        r.handle_timeout(ms(29));
        assert!(
            matches!(status(&mut r, ms(29)), Payload::Ack(_)),
            "NACKed within the doubled window"
        );
        r.handle_datagram(ms(39), &data(7, 700, 100));
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
            r.handle_datagram(t, &data(seq, off, 100));
        }
        assert_eq!(r.outcome(), Some(Ok(())));
        assert_eq!(r.stats().duplicate_frames, 1, "{:?}", r.stats());
        assert_eq!(r.sink().committed(0).unwrap(), &[0u8; 300][..]);
    }
}
