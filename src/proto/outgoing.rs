//! The sender's outgoing data: the session's stream (its files end to end), the first-pass
//! cursor, the ranges to repair, and the streamed files whose blocks are still arriving.
//!
//! What travels is already prepared ([`crate::prepare`] does the codec work): a direct
//! file is a blueprint without self copies, sent as pieces at file offsets; a packed file is
//! its block stream; a streamed file is a block stream pushed block by block
//! ([`Outgoing::push_block`]) and ended with a [`StreamEnd`] ([`Outgoing::finish_file`]),
//! inside a stream region of a bound declared up front. The cursor never passes what has been
//! pushed, and the void after a finished stream's end record is skipped, never sent.

use super::rangeset::RangeSet;
use super::streambuf::{ChunkPool, StreamBuf};
use crate::blueprint::{Blueprint, Source};
use crate::wire::payload::{Attrs, EntryKind, FileEntry, FileMode, GramWriter, StreamEnd};
use std::collections::VecDeque;
use std::time::Instant;

/// Why a sender could not be built or fed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("file #{file}: invalid blueprint")]
    InvalidBlueprint {
        file: usize,
        #[source]
        source: crate::blueprint::pbb::PbbError,
    },
    #[error("file #{file} points into snapshot {}, not {}", crate::util::hex(.found), crate::util::hex(.expected))]
    MixedSnapshots {
        file: usize,
        expected: [u8; 32],
        found: [u8; 32],
    },
    #[error(
        "file #{file} has an empty name or one longer than {} bytes",
        crate::wire::payload::MAX_NAME_LEN
    )]
    BadName { file: usize },
    #[error("too many files ({0})")]
    TooManyFiles(usize),
    #[error("datagram size {0} is outside {min}..={max}", min = crate::wire::payload::MIN_DATAGRAM, max = super::MAX_DATAGRAM)]
    DatagramSize(usize),
    #[error("file #{file}: packing its blueprint failed")]
    Pack {
        file: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("file #{file} is direct but has self copies or covers (prepare lowers them)")]
    DirectSelfCopies { file: usize },
    #[error("file #{file} is packed but empty")]
    EmptyPacked { file: usize },
    #[error("file #{file}: a stream bound of {bound} bytes is too small or overflows")]
    StreamBound { file: usize, bound: u64 },
    #[error("{0} entry attributes given for {1} files")]
    MetaCount(usize, usize),
    #[error("entry #{file}: a directory or link must be an empty direct file with no data, and a link's target 1..={} UTF-8 bytes without NUL", crate::wire::payload::MAX_TARGET_LEN)]
    BadEntry { file: usize },
    #[error("file #{file} is not a streamed file still open")]
    NotStreamed { file: usize },
    #[error("file #{file}: its blocks exceed the declared stream bound of {bound} bytes")]
    StreamOverflow { file: usize, bound: u64 },
}

/// A file as the sender state machine takes it.
#[derive(Debug, Clone)]
pub enum OutgoingFile {
    /// Pieces at file offsets: a blueprint with no self copies (a direct file's pieces land
    /// in any order, so a copy could be applied before its source).
    Direct { name: String, blueprint: Blueprint },
    /// A whole packed block stream (`blueprint::block`).
    Packed {
        name: String,
        size: u64,
        hash: [u8; 32],
        stream: Vec<u8>,
    },
    /// A packed block stream that arrives later, block by block; its blocks and end record
    /// take at most `bound` bytes.
    Streamed { name: String, size: u64, bound: u64 },
}

impl OutgoingFile {
    pub fn name(&self) -> &str {
        match self {
            OutgoingFile::Direct { name, .. }
            | OutgoingFile::Packed { name, .. }
            | OutgoingFile::Streamed { name, .. } => name,
        }
    }
}

/// What a manifest entry says beyond its file's bytes: what it is, its permission bits and
/// mtime, a link's target ([`Outgoing::set_meta`]). A directory or a link is sent as an
/// empty direct file with its kind set here; it takes no stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryMeta {
    pub kind: EntryKind,
    pub attrs: Option<Attrs>,
    pub target: String,
}

enum Body {
    Direct {
        bp: Blueprint,
        /// File offset of each segment.
        seg_starts: Vec<u64>,
        /// Spill offset of each segment (meaningful for raw segments).
        spill_starts: Vec<usize>,
    },
    /// Packed, or streamed: the stream bytes there so far (those below the receiver's
    /// cumulative acknowledgement released).
    Stream { bytes: StreamBuf, finished: bool },
}

struct File {
    name: String,
    size: u64,
    /// `None` until a streamed file is finished.
    hash: Option<[u8; 32]>,
    mode: FileMode,
    /// Stream offset of the file.
    start: u64,
    /// Bytes of the stream the file takes: its size, its packed length, or its bound.
    slen: u64,
    body: Body,
}

impl File {
    /// Stream bytes of the file that exist (all but an unfinished stream's future).
    fn ready(&self) -> u64 {
        match &self.body {
            Body::Stream {
                bytes,
                finished: false,
            } => bytes.len(),
            _ => self.slen,
        }
    }
}

pub(crate) struct Outgoing {
    files: Vec<File>,
    /// Stream length (sum of the files' stream lengths).
    pub total: u64,
    /// Sum of the file sizes.
    pub file_total: u64,
    /// The first-pass position.
    pub cursor: u64,
    pub repair: RangeSet,
    /// Ranges repaired lately, with when: a NACK that crosses them in flight must not send
    /// them again.
    recent_repairs: VecDeque<(Instant, u64, u64)>,
    /// The first streamed file not finished (`files.len()` when none).
    open_stream: usize,
    /// Per file: kind, attributes, link target (all regular files without attributes
    /// unless [`Outgoing::set_meta`] was called).
    meta: Vec<EntryMeta>,
    /// Released stream chunks, for the next bytes of the streamed files.
    pool: ChunkPool,
    /// The first file whose stream bytes are not all released.
    release_file: usize,
    /// Stream bytes held now (pushed or given, not released), and the most at once.
    held: u64,
    held_peak: u64,
}

impl Outgoing {
    pub fn new(files: Vec<OutgoingFile>) -> Result<Self, SendError> {
        if files.len() > u32::MAX as usize - 1 {
            return Err(SendError::TooManyFiles(files.len()));
        }
        let mut out = Vec::with_capacity(files.len());
        let (mut start, mut file_total) = (0u64, 0u64);
        for (i, f) in files.into_iter().enumerate() {
            let name_ok = |n: &str| !n.is_empty() && n.len() <= crate::wire::payload::MAX_NAME_LEN;
            if !name_ok(f.name()) {
                return Err(SendError::BadName { file: i });
            }
            let file = match f {
                OutgoingFile::Direct { name, blueprint } => {
                    if blueprint.has_self_copies() || blueprint.has_covers() {
                        return Err(SendError::DirectSelfCopies { file: i });
                    }
                    let mut seg_starts = Vec::with_capacity(blueprint.segments.len());
                    let mut spill_starts = Vec::with_capacity(blueprint.segments.len());
                    let (mut off, mut spill) = (0u64, 0usize);
                    for s in &blueprint.segments {
                        seg_starts.push(off);
                        spill_starts.push(spill);
                        off += s.len as u64;
                        if s.src == Source::Raw {
                            spill += s.len as usize;
                        }
                    }
                    File {
                        name,
                        size: blueprint.file_len,
                        hash: Some(blueprint.file_hash),
                        mode: FileMode::Direct,
                        start,
                        slen: blueprint.file_len,
                        body: Body::Direct {
                            bp: blueprint,
                            seg_starts,
                            spill_starts,
                        },
                    }
                }
                OutgoingFile::Packed {
                    name,
                    size,
                    hash,
                    stream,
                } => {
                    if size == 0 || stream.is_empty() {
                        return Err(SendError::EmptyPacked { file: i });
                    }
                    File {
                        name,
                        size,
                        hash: Some(hash),
                        mode: FileMode::Packed,
                        start,
                        slen: stream.len() as u64,
                        body: Body::Stream {
                            bytes: StreamBuf::whole(stream),
                            finished: true,
                        },
                    }
                }
                OutgoingFile::Streamed { name, size, bound } => {
                    if bound < StreamEnd::LEN as u64 {
                        return Err(SendError::StreamBound { file: i, bound });
                    }
                    File {
                        name,
                        size,
                        hash: None,
                        mode: FileMode::Streamed,
                        start,
                        slen: bound,
                        body: Body::Stream {
                            // Held in chunks until acknowledged (`release`).
                            bytes: StreamBuf::default(),
                            finished: false,
                        },
                    }
                }
            };
            start = start.checked_add(file.slen).ok_or(SendError::StreamBound {
                file: i,
                bound: file.slen,
            })?;
            file_total = file_total.saturating_add(file.size);
            out.push(file);
        }
        let mut o = Outgoing {
            files: out,
            total: start,
            file_total,
            cursor: 0,
            repair: RangeSet::new(),
            recent_repairs: VecDeque::new(),
            open_stream: 0,
            meta: Vec::new(),
            pool: ChunkPool::default(),
            release_file: 0,
            held: 0,
            held_peak: 0,
        };
        o.held = o
            .files
            .iter()
            .map(|f| match &f.body {
                Body::Stream { bytes, .. } => bytes.held(),
                Body::Direct { .. } => 0,
            })
            .sum();
        o.held_peak = o.held;
        o.meta = vec![EntryMeta::default(); o.files.len()];
        o.advance_open_stream();
        Ok(o)
    }

    fn advance_open_stream(&mut self) {
        while self
            .files
            .get(self.open_stream)
            .is_some_and(|f| f.ready() == f.slen)
        {
            self.open_stream += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Set each entry's kind, attributes and link target (one per file, in order). A
    /// directory or a link must be an empty direct file; the entries must pass the wire
    /// rules ([`FileEntry::is_valid`]).
    pub fn set_meta(&mut self, meta: Vec<EntryMeta>) -> Result<(), SendError> {
        if meta.len() != self.files.len() {
            return Err(SendError::MetaCount(meta.len(), self.files.len()));
        }
        let old = std::mem::replace(&mut self.meta, meta);
        for i in 0..self.files.len() {
            let f = &self.files[i];
            let node = self.meta[i].kind != EntryKind::File;
            if (node && (f.size != 0 || f.mode != FileMode::Direct)) || !self.entry(i).is_valid() {
                self.meta = old;
                return Err(SendError::BadEntry { file: i });
            }
        }
        Ok(())
    }

    /// The manifest entry of file `i`.
    pub fn entry(&self, i: usize) -> FileEntry {
        let f = &self.files[i];
        let m = &self.meta[i];
        if m.kind != EntryKind::File {
            return FileEntry {
                kind: m.kind,
                attrs: m.attrs,
                target: m.target.clone(),
                ..FileEntry::direct(f.name.clone(), 0, [0; 32])
            };
        }
        FileEntry {
            name: f.name.clone(),
            size: f.size,
            hash: if f.mode == FileMode::Streamed {
                [0; 32]
            } else {
                f.hash.expect("known")
            },
            mode: f.mode,
            stream_len: f.slen,
            kind: EntryKind::File,
            attrs: m.attrs,
            target: String::new(),
        }
    }

    /// Bytes entry `i` takes in a Hello.
    pub fn entry_len(&self, i: usize) -> usize {
        crate::wire::payload::ENTRY_FIXED + self.files[i].name.len() + self.meta[i].target.len()
    }

    /// How each file travels, with its stream length (a streamed file's bound until it is
    /// finished, then its length).
    pub fn modes(&self) -> Vec<(FileMode, u64)> {
        self.files
            .iter()
            .map(|f| match &f.body {
                Body::Stream {
                    bytes,
                    finished: true,
                } if f.mode == FileMode::Streamed => (f.mode, bytes.len()),
                _ => (f.mode, f.slen),
            })
            .collect()
    }

    /// Append bytes (whole blocks) to streamed file `file`.
    pub fn push_block(&mut self, file: usize, block: &[u8]) -> Result<(), SendError> {
        let f = self
            .files
            .get_mut(file)
            .ok_or(SendError::NotStreamed { file })?;
        let slen = f.slen;
        let Body::Stream {
            bytes,
            finished: false,
        } = &mut f.body
        else {
            return Err(SendError::NotStreamed { file });
        };
        if f.mode != FileMode::Streamed {
            return Err(SendError::NotStreamed { file });
        }
        if bytes.len() + (block.len() + StreamEnd::LEN) as u64 > slen {
            return Err(SendError::StreamOverflow { file, bound: slen });
        }
        bytes.push(block, &mut self.pool);
        self.held += block.len() as u64;
        self.held_peak = self.held_peak.max(self.held);
        Ok(())
    }

    /// End streamed file `file`: its BLAKE3 goes in the end record after the last block.
    pub fn finish_file(&mut self, file: usize, hash: [u8; 32]) -> Result<(), SendError> {
        let f = self
            .files
            .get_mut(file)
            .ok_or(SendError::NotStreamed { file })?;
        let slen = f.slen;
        let Body::Stream { bytes, finished } = &mut f.body else {
            return Err(SendError::NotStreamed { file });
        };
        if f.mode != FileMode::Streamed || *finished {
            return Err(SendError::NotStreamed { file });
        }
        if bytes.len() + StreamEnd::LEN as u64 > slen {
            return Err(SendError::StreamOverflow { file, bound: slen });
        }
        bytes.push(&StreamEnd { hash }.to_bytes(), &mut self.pool);
        self.held += StreamEnd::LEN as u64;
        self.held_peak = self.held_peak.max(self.held);
        *finished = true;
        f.hash = Some(hash);
        self.advance_open_stream();
        Ok(())
    }

    /// Every file's hash, once all are known.
    pub fn hashes(&self) -> Option<Vec<[u8; 32]>> {
        self.files
            .iter()
            .zip(&self.meta)
            .map(|(f, m)| match m.kind {
                EntryKind::File => f.hash,
                _ => Some([0; 32]),
            })
            .collect()
    }

    /// The stream position the first pass may reach now.
    pub fn ready_end(&self) -> u64 {
        match self.files.get(self.open_stream) {
            Some(f) => f.start + f.ready(),
            None => self.total,
        }
    }

    /// Every stream byte has been pushed (no streamed file is waiting for blocks).
    pub fn all_ready(&self) -> bool {
        self.open_stream == self.files.len()
    }

    pub fn has_data(&self) -> bool {
        !self.repair.is_empty() || self.cursor < self.ready_end()
    }

    /// Pack stream bytes `[s, e)` into `w` until it is full; returns the position reached
    /// (past a finished stream's void; never past bytes not pushed yet).
    pub fn emit_range(&self, w: &mut GramWriter<'_>, mut s: u64, e: u64) -> u64 {
        while s < e {
            let fi = self.files.partition_point(|f| f.start + f.slen <= s);
            let Some(f) = self.files.get(fi) else {
                return s;
            };
            let (seg_starts, spill_starts, bp) = match &f.body {
                Body::Stream { bytes, finished } => {
                    let off = s - f.start;
                    if off >= bytes.len() {
                        if *finished {
                            s = (f.start + f.slen).min(e); // the void after the end record
                            continue;
                        }
                        return s; // not pushed yet
                    }
                    if off < bytes.released() {
                        // Acknowledged already (a range asked for below the cumulative
                        // acknowledgement): nothing to send.
                        s = (f.start + bytes.released()).min(e);
                        continue;
                    }
                    // The held bytes up to `e` or the end of their chunk; the loop goes on
                    // into the next chunk.
                    let chunk = bytes.slice(off, e - f.start);
                    let k = w.push_raw(fi as u32, off, chunk);
                    if k < chunk.len() {
                        return s + k as u64;
                    }
                    s += chunk.len() as u64;
                    continue;
                }
                Body::Direct {
                    bp,
                    seg_starts,
                    spill_starts,
                } => (seg_starts, spill_starts, bp),
            };
            let mut off = s - f.start;
            let fend = (e - f.start).min(bp.file_len);
            let mut si = seg_starts.partition_point(|&st| st <= off) - 1;
            while off < fend {
                let seg = bp.segments[si];
                let st = seg_starts[si];
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
                        let sp = spill_starts[si] + d as usize;
                        let bytes = &bp.spill[sp..sp + n as usize];
                        let k = w.push_raw(fi as u32, off, bytes);
                        off += k as u64;
                        if (k as u64) < n {
                            return f.start + off;
                        }
                    }
                    Source::SelfCopy { .. } | Source::Cover { .. } => {
                        unreachable!("direct files have no self copies or covers (checked in new)")
                    }
                }
                si += 1;
            }
            s = f.start + off;
        }
        s
    }

    /// The receiver holds every stream byte below `cum`: release the streams' bytes below
    /// it (never past the first-pass cursor: only bytes sent can have been received), so
    /// their chunks carry the next ones.
    pub fn release(&mut self, cum: u64) {
        let upto = cum.min(self.cursor);
        while let Some(f) = self.files.get_mut(self.release_file) {
            if f.start >= upto {
                return;
            }
            let done = match &mut f.body {
                Body::Stream { bytes, finished } => {
                    let before = bytes.held();
                    bytes.release(upto - f.start, &mut self.pool);
                    self.held -= before - bytes.held();
                    *finished && bytes.held() == 0
                }
                Body::Direct { .. } => f.start + f.slen <= upto,
            };
            if !done {
                return;
            }
            self.release_file += 1;
        }
    }

    /// Stream bytes held by the streamed and packed files now, and the most held at once.
    pub fn held(&self) -> (u64, u64) {
        (self.held, self.held_peak)
    }

    /// Fill `w` with repairs (`repair`) or first-pass data; returns the stream bytes carried.
    pub fn fill(&mut self, now: Instant, w: &mut GramWriter<'_>, repair: bool) -> u64 {
        let mut carried = 0u64;
        if repair {
            while let Some((s, e)) = self.repair.first() {
                let reached = self.emit_range(w, s, e);
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
            let reached = self.emit_range(w, self.cursor, self.ready_end());
            carried = reached - self.cursor;
            self.cursor = reached;
        }
        carried
    }

    /// A NACK: its ranges (above `cum`, below the cursor) replace the repair queue, less
    /// what was repaired within `keep` (in flight still, crossed by the NACK).
    pub fn on_nack(
        &mut self,
        now: Instant,
        cum: u64,
        ranges: &[(u64, u64)],
        keep: std::time::Duration,
    ) {
        self.repair.clear();
        for &(s, e) in ranges {
            let (s, e) = (s.max(cum), e.min(self.cursor));
            self.repair.insert(s, e);
        }
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
}
