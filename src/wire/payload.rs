//! PacketFS payloads, one per [`FrameType`]. All integers little-endian; every reserved field
//! must be zero; every payload is parsed strictly (no trailing bytes).
//!
//! The data payload, the *gram*, is read in place by [`Gram`] (zero-copy: the receiver applies
//! its pieces straight from the frame buffer) and written in place by [`GramWriter`]. The
//! control payloads are small and parse into owned structs.
//!
//! Positions: a *stream offset* is a byte position in the concatenation of the session's files
//! in manifest order (file `i` starts at the sum of the sizes of files `0..i`). ACK and NACK
//! speak in stream offsets; grams speak in (file index, file offset).

use super::bytes::{le16, le32, le64, put_le16, put_le32, put_le64};
use super::pfs::FrameType;
use super::{Error, Result};
use crate::blueprint::Transform;

/// Longest file name (UTF-8 bytes) a manifest entry may carry.
pub const MAX_NAME_LEN: usize = 512;
/// Longest symbolic link target (UTF-8 bytes) a manifest entry may carry: a link's name and
/// target together take at most [`MAX_NAME_LEN`] bytes, so that one entry of any kind fits
/// the smallest datagram.
pub const MAX_TARGET_LEN: usize = MAX_NAME_LEN - 1;
/// The smallest datagram (PacketFS header + payload) the protocol works with: a Hello with one
/// entry of the longest name (or name and link target) must fit.
pub const MIN_DATAGRAM: usize = super::pfs::HEADER_LEN + HELLO_FIXED + ENTRY_FIXED + MAX_NAME_LEN;

/// Hello fixed part: snapshot id, nfiles, first, count, reserved.
pub const HELLO_FIXED: usize = 32 + 4 + 4 + 2 + 2;
/// Manifest entry fixed part: size, stream length, BLAKE3, mode, kind, flags, permission
/// bits, mtime seconds and nanoseconds, name length, target length.
pub const ENTRY_FIXED: usize = 8 + 8 + 32 + 1 + 1 + 1 + 2 + 8 + 4 + 2 + 2;
/// Entry flag: the permission bits and the mtime are set (else both are zero on the wire and
/// the receiver keeps its defaults).
pub const ENTRY_ATTRS: u8 = 1;
/// Gram header: nruns, flags, srtt.
pub const GRAM_HEADER: usize = 8;
/// Run header: file, file offset, npieces, reserved.
pub const RUN_HEADER: usize = 16;
/// A snapshot piece: len, op, imm, snapshot offset.
pub const SNAP_PIECE: usize = 14;
/// A raw piece before its bytes: len, op, imm.
pub const RAW_PIECE: usize = 6;
/// Wire code of a raw piece (the transforms use their [`Transform::code`], 0, 1, 2).
pub const OP_RAW: u8 = 3;
/// Progress fields of ACK and NACK.
pub const ACK_LEN: usize = 8 * 6 + 4 + 4;
/// One NACK range.
pub const RANGE_LEN: usize = 16;

/// A bounds-checked little-endian reader.
struct Rd<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Rd<'a> {
    fn new(b: &'a [u8]) -> Self {
        Rd { b, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(Error::Truncated)?;
        let s = self.b.get(self.pos..end).ok_or(Error::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(le16(self.take(2)?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(le32(self.take(4)?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(le64(self.take(8)?))
    }
    fn id(&mut self) -> Result<[u8; 32]> {
        Ok(self.take(32)?.try_into().unwrap())
    }
    fn zero16(&mut self) -> Result<()> {
        if self.u16()? != 0 {
            return Err(Error::Malformed);
        }
        Ok(())
    }
    fn zero32(&mut self) -> Result<()> {
        if self.u32()? != 0 {
            return Err(Error::Malformed);
        }
        Ok(())
    }
    fn end(&self) -> Result<()> {
        if self.pos != self.b.len() {
            return Err(Error::Malformed);
        }
        Ok(())
    }
}

/// A little-endian writer; the caller has reserved `buffer_len()` bytes.
struct Wr<'a> {
    b: &'a mut [u8],
    pos: usize,
}

impl<'a> Wr<'a> {
    fn new(b: &'a mut [u8]) -> Self {
        Wr { b, pos: 0 }
    }
    fn bytes(&mut self, v: &[u8]) {
        self.b[self.pos..self.pos + v.len()].copy_from_slice(v);
        self.pos += v.len();
    }
    fn u16(&mut self, v: u16) {
        put_le16(&mut self.b[self.pos..], v);
        self.pos += 2;
    }
    fn u32(&mut self, v: u32) {
        put_le32(&mut self.b[self.pos..], v);
        self.pos += 4;
    }
    fn u64(&mut self, v: u64) {
        put_le64(&mut self.b[self.pos..], v);
        self.pos += 8;
    }
}

/// How a file travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileMode {
    /// Pieces at file offsets (snapshot descriptors and raw bytes); the file's stream length
    /// is its size.
    #[default]
    Direct,
    /// Raw pieces of the file's packed block stream (`blueprint::block`) at packed offsets;
    /// the stream length is the packed length.
    Packed,
    /// Packed, but planned while it is sent: the blocks are followed by a [`StreamEnd`]
    /// record that carries the file's BLAKE3 (the manifest's hash is zero), and the stream
    /// length is an upper bound the sender reserves; the bytes after the end record are
    /// never sent and count as received once it arrives.
    Streamed,
}

impl FileMode {
    pub fn code(self) -> u8 {
        match self {
            FileMode::Direct => 0,
            FileMode::Packed => 1,
            FileMode::Streamed => 2,
        }
    }

    /// Whether the stream is a packed block stream (packed or streamed).
    pub fn is_packed(self) -> bool {
        self != FileMode::Direct
    }
}

/// The record that ends a streamed file's block stream, where the next block's length
/// prefix would be: a zero length (no block has an empty body) and the file's BLAKE3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnd {
    pub hash: [u8; 32],
}

impl StreamEnd {
    pub const LEN: usize = 4 + 32;

    /// `None` unless `b` starts with a zero length prefix; then the record if all of it is
    /// there (`Some(None)`: a stream end, not complete yet).
    pub fn parse(b: &[u8]) -> Option<Option<StreamEnd>> {
        if b.len() < 4 || b[..4] != [0; 4] {
            return None;
        }
        Some(b.get(4..Self::LEN).map(|h| StreamEnd {
            hash: h.try_into().expect("32 bytes"),
        }))
    }

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[4..].copy_from_slice(&self.hash);
        b
    }
}

/// What a manifest entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum EntryKind {
    /// A regular file: its bytes travel in the stream.
    #[default]
    File = 0,
    /// A directory: no data (size, stream length and hash are zero).
    Dir = 1,
    /// A symbolic link: no data; its target travels in the entry.
    Symlink = 2,
}

impl EntryKind {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl TryFrom<u8> for EntryKind {
    type Error = Error;
    fn try_from(c: u8) -> Result<Self> {
        Ok(match c {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink,
            _ => return Err(Error::Malformed),
        })
    }
}

/// Permission bits and modification time of an entry, as the sender read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attrs {
    /// `st_mode & 0o7777` (the receiver drops setuid, setgid and sticky unless told to keep
    /// them; a symlink's are not applied).
    pub perm: u16,
    /// Seconds since the epoch (negative: before it).
    pub mtime_s: i64,
    /// Nanoseconds, below 1,000,000,000.
    pub mtime_ns: u32,
}

impl Attrs {
    /// Checked: `perm` within 0o7777 and `mtime_ns` below one second.
    pub fn new(perm: u32, mtime_s: i64, mtime_ns: u32) -> Option<Attrs> {
        (perm <= 0o7777 && mtime_ns < 1_000_000_000).then_some(Attrs {
            perm: perm as u16,
            mtime_s,
            mtime_ns,
        })
    }
}

/// One entry of the manifest: a regular file, a directory or a symbolic link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative path, `/`-separated, UTF-8; the receiver sanitises it.
    pub name: String,
    pub size: u64,
    /// BLAKE3 of the whole file (zero for a directory or a link).
    pub hash: [u8; 32],
    pub mode: FileMode,
    /// Bytes the file takes in the session's stream: `size` when direct, the packed length
    /// when packed (then at least 1, and the file is not empty); zero for a directory or a
    /// link.
    pub stream_len: u64,
    pub kind: EntryKind,
    /// Permission bits and mtime to apply, when the sender sent them.
    pub attrs: Option<Attrs>,
    /// A link's target (UTF-8, 1..=[`MAX_TARGET_LEN`] bytes, no NUL, name and target
    /// together at most [`MAX_NAME_LEN`] bytes); empty otherwise.
    pub target: String,
}

impl FileEntry {
    /// A direct-mode regular file with no attributes.
    pub fn direct(name: String, size: u64, hash: [u8; 32]) -> Self {
        FileEntry {
            name,
            size,
            hash,
            mode: FileMode::Direct,
            stream_len: size,
            kind: EntryKind::File,
            attrs: None,
            target: String::new(),
        }
    }

    /// A directory entry.
    pub fn dir(name: String, attrs: Option<Attrs>) -> Self {
        FileEntry {
            kind: EntryKind::Dir,
            attrs,
            ..FileEntry::direct(name, 0, [0; 32])
        }
    }

    /// A symbolic link entry (`target` as [`FileEntry::target`] says; checked at emit and
    /// parse).
    pub fn symlink(name: String, target: String, attrs: Option<Attrs>) -> Self {
        FileEntry {
            kind: EntryKind::Symlink,
            attrs,
            target,
            ..FileEntry::direct(name, 0, [0; 32])
        }
    }

    pub fn wire_len(&self) -> usize {
        ENTRY_FIXED + self.name.len() + self.target.len()
    }

    /// Whether the entry satisfies the wire rules (what [`Hello::parse`] accepts).
    pub fn is_valid(&self) -> bool {
        let name_ok = !self.name.is_empty() && self.name.len() <= MAX_NAME_LEN;
        let attrs_ok = self
            .attrs
            .is_none_or(|a| a.perm <= 0o7777 && a.mtime_ns < 1_000_000_000);
        let body_ok = match self.kind {
            EntryKind::File => self.target.is_empty(),
            EntryKind::Dir | EntryKind::Symlink => {
                self.size == 0
                    && self.stream_len == 0
                    && self.hash == [0; 32]
                    && self.mode == FileMode::Direct
                    && (self.kind == EntryKind::Symlink || self.target.is_empty())
            }
        };
        let target_ok = self.kind != EntryKind::Symlink
            || (!self.target.is_empty()
                && self.target.len() <= MAX_TARGET_LEN
                && self.name.len() + self.target.len() <= MAX_NAME_LEN
                && !self.target.contains('\0'));
        name_ok && attrs_ok && body_ok && target_ok
    }
}

/// Hello: the snapshot id and entries `first..first + entries.len()` of an `nfiles` manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub snapshot_id: [u8; 32],
    pub nfiles: u32,
    pub first: u32,
    pub entries: Vec<FileEntry>,
}

impl Hello {
    pub fn parse(b: &[u8]) -> Result<Hello> {
        let mut r = Rd::new(b);
        let snapshot_id = r.id()?;
        let nfiles = r.u32()?;
        let first = r.u32()?;
        let count = r.u16()?;
        r.zero16()?;
        if (first as u64) + (count as u64) > nfiles as u64 {
            return Err(Error::Malformed);
        }
        let mut entries = Vec::with_capacity((count as usize).min(b.len() / ENTRY_FIXED));
        for _ in 0..count {
            let size = r.u64()?;
            let stream_len = r.u64()?;
            let hash = r.id()?;
            let mode = match r.u8()? {
                0 if stream_len == size => FileMode::Direct,
                1 if size > 0 && stream_len > 0 => FileMode::Packed,
                2 if stream_len >= StreamEnd::LEN as u64 && hash == [0; 32] => FileMode::Streamed,
                _ => return Err(Error::Malformed),
            };
            let kind = EntryKind::try_from(r.u8()?)?;
            let flags = r.u8()?;
            let perm = r.u16()?;
            let mtime_s = r.u64()? as i64;
            let mtime_ns = r.u32()?;
            let attrs = match flags {
                ENTRY_ATTRS => {
                    Some(Attrs::new(perm as u32, mtime_s, mtime_ns).ok_or(Error::Malformed)?)
                }
                0 if perm == 0 && mtime_s == 0 && mtime_ns == 0 => None,
                _ => return Err(Error::Malformed),
            };
            let n = r.u16()? as usize;
            let t = r.u16()? as usize;
            if n == 0 || n > MAX_NAME_LEN || t > MAX_TARGET_LEN {
                return Err(Error::Malformed);
            }
            let name = std::str::from_utf8(r.take(n)?).map_err(|_| Error::Malformed)?;
            let target = std::str::from_utf8(r.take(t)?).map_err(|_| Error::Malformed)?;
            let e = FileEntry {
                name: name.to_owned(),
                size,
                hash,
                mode,
                stream_len,
                kind,
                attrs,
                target: target.to_owned(),
            };
            if !e.is_valid() {
                return Err(Error::Malformed);
            }
            entries.push(e);
        }
        r.end()?;
        Ok(Hello {
            snapshot_id,
            nfiles,
            first,
            entries,
        })
    }
    pub fn buffer_len(&self) -> usize {
        HELLO_FIXED + self.entries.iter().map(FileEntry::wire_len).sum::<usize>()
    }
    pub fn emit(&self, b: &mut [u8]) -> usize {
        let mut w = Wr::new(b);
        w.bytes(&self.snapshot_id);
        w.u32(self.nfiles);
        w.u32(self.first);
        w.u16(u16::try_from(self.entries.len()).expect("hello entry count"));
        w.u16(0);
        for e in &self.entries {
            assert!(e.is_valid(), "manifest entry breaks the wire rules: {e:?}");
            w.u64(e.size);
            w.u64(e.stream_len);
            w.bytes(&e.hash);
            let a = e.attrs.unwrap_or_default();
            let flags = if e.attrs.is_some() { ENTRY_ATTRS } else { 0 };
            w.bytes(&[e.mode.code(), e.kind.code(), flags]);
            w.u16(a.perm);
            w.u64(a.mtime_s as u64);
            w.u32(a.mtime_ns);
            w.u16(e.name.len() as u16);
            w.u16(e.target.len() as u16);
            w.bytes(e.name.as_bytes());
            w.bytes(e.target.as_bytes());
        }
        w.pos
    }
}

/// Accept: the receiver takes the manifest; `max_rate` (bytes/s, 0 = none) caps the sender;
/// `held` Held entries follow (resume, skip: [`super::held`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept {
    pub snapshot_id: [u8; 32],
    pub nfiles: u32,
    pub held: u32,
    pub max_rate: u64,
}

impl Accept {
    pub const LEN: usize = 32 + 4 + 4 + 8;
    pub fn parse(b: &[u8]) -> Result<Accept> {
        let mut r = Rd::new(b);
        let snapshot_id = r.id()?;
        let nfiles = r.u32()?;
        let held = r.u32()?;
        if held > nfiles {
            return Err(Error::Malformed);
        }
        let max_rate = r.u64()?;
        r.end()?;
        Ok(Accept {
            snapshot_id,
            nfiles,
            held,
            max_rate,
        })
    }
    pub fn emit(&self, b: &mut [u8]) -> usize {
        let mut w = Wr::new(b);
        w.bytes(&self.snapshot_id);
        w.u32(self.nfiles);
        w.u32(self.held);
        w.u64(self.max_rate);
        w.pos
    }
}

/// ACK: the receiver's progress, in stream offsets and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ack {
    /// Every byte of `[0, cum)` has arrived.
    pub cum: u64,
    /// Distinct stream bytes received.
    pub received: u64,
    /// The highest first-pass stream offset seen (holes below it are missing).
    pub frontier: u64,
    /// Valid sender frames received in this session.
    pub rx_frames: u64,
    /// The highest sender sequence number received.
    pub max_seq: u64,
    /// The sequence number of the sender frame received last, and how long (microseconds)
    /// the receiver held it before this ACK: the sender's RTT sample.
    pub echo_seq: u64,
    pub echo_delay_us: u32,
    /// Files received, verified and committed.
    pub files_done: u32,
}

impl Ack {
    fn parse_from(r: &mut Rd<'_>) -> Result<Ack> {
        Ok(Ack {
            cum: r.u64()?,
            received: r.u64()?,
            frontier: r.u64()?,
            rx_frames: r.u64()?,
            max_seq: r.u64()?,
            echo_seq: r.u64()?,
            echo_delay_us: r.u32()?,
            files_done: r.u32()?,
        })
    }
    fn emit_to(&self, w: &mut Wr<'_>) {
        w.u64(self.cum);
        w.u64(self.received);
        w.u64(self.frontier);
        w.u64(self.rx_frames);
        w.u64(self.max_seq);
        w.u64(self.echo_seq);
        w.u32(self.echo_delay_us);
        w.u32(self.files_done);
    }
    pub fn parse(b: &[u8]) -> Result<Ack> {
        let mut r = Rd::new(b);
        let a = Ack::parse_from(&mut r)?;
        r.end()?;
        Ok(a)
    }
    pub fn emit(&self, b: &mut [u8]) -> usize {
        let mut w = Wr::new(b);
        self.emit_to(&mut w);
        w.pos
    }
}

/// NACK: progress plus missing stream ranges `[start, end)`, ascending, non-empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub ack: Ack,
    pub ranges: Vec<(u64, u64)>,
}

impl Nack {
    /// How many ranges fit in a payload of `budget` bytes.
    pub fn capacity(budget: usize) -> usize {
        budget.saturating_sub(ACK_LEN + 4) / RANGE_LEN
    }
    pub fn parse(b: &[u8]) -> Result<Nack> {
        let mut r = Rd::new(b);
        let ack = Ack::parse_from(&mut r)?;
        let count = r.u16()? as usize;
        r.zero16()?;
        let mut ranges = Vec::with_capacity(count.min(b.len() / RANGE_LEN));
        let mut prev_end = 0u64;
        for i in 0..count {
            let (s, e) = (r.u64()?, r.u64()?);
            if s >= e || (i > 0 && s < prev_end) {
                return Err(Error::Malformed);
            }
            prev_end = e;
            ranges.push((s, e));
        }
        r.end()?;
        Ok(Nack { ack, ranges })
    }
    pub fn buffer_len(&self) -> usize {
        ACK_LEN + 4 + RANGE_LEN * self.ranges.len()
    }
    pub fn emit(&self, b: &mut [u8]) -> usize {
        let mut w = Wr::new(b);
        self.ack.emit_to(&mut w);
        w.u16(u16::try_from(self.ranges.len()).expect("nack range count"));
        w.u16(0);
        for &(s, e) in &self.ranges {
            w.u64(s);
            w.u64(e);
        }
        w.pos
    }
}

/// Probe: the sender has sent first-pass data up to stream offset `sent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub sent: u64,
    /// The sender's smoothed RTT, microseconds (the receiver paces its NACKs by it).
    pub srtt_us: u32,
    pub flags: u32,
}

/// Probe flag: the first pass is complete (`sent` is the end of the stream).
pub const PROBE_FIRST_PASS_DONE: u32 = 1;

impl Probe {
    pub const LEN: usize = 16;
    pub fn parse(b: &[u8]) -> Result<Probe> {
        let mut r = Rd::new(b);
        let p = Probe {
            sent: r.u64()?,
            srtt_us: r.u32()?,
            flags: r.u32()?,
        };
        if p.flags & !PROBE_FIRST_PASS_DONE != 0 {
            return Err(Error::Malformed);
        }
        r.end()?;
        Ok(p)
    }
    pub fn emit(&self, b: &mut [u8]) -> usize {
        let mut w = Wr::new(b);
        w.u64(self.sent);
        w.u32(self.srtt_us);
        w.u32(self.flags);
        w.pos
    }
}

/// Done: every file arrived, matched its BLAKE3 and was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub files: u32,
    pub bytes: u64,
    /// BLAKE3 over the concatenated BLAKE3s of the files as received.
    pub digest: [u8; 32],
}

impl Done {
    pub const LEN: usize = 4 + 4 + 8 + 32;
    pub fn parse(b: &[u8]) -> Result<Done> {
        let mut r = Rd::new(b);
        let files = r.u32()?;
        r.zero32()?;
        let d = Done {
            files,
            bytes: r.u64()?,
            digest: r.id()?,
        };
        r.end()?;
        Ok(d)
    }
    pub fn emit(&self, b: &mut [u8]) -> usize {
        let mut w = Wr::new(b);
        w.u32(self.files);
        w.u32(0);
        w.u64(self.bytes);
        w.bytes(&self.digest);
        w.pos
    }
}

/// Abort: a reason code and its arguments (their meaning depends on the code; see
/// `proto::Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    pub code: u16,
    pub file: u32,
    pub a: u64,
    pub b: u64,
    pub id: [u8; 32],
}

impl Abort {
    pub const LEN: usize = 2 + 2 + 4 + 8 + 8 + 32;
    pub fn parse(b: &[u8]) -> Result<Abort> {
        let mut r = Rd::new(b);
        let code = r.u16()?;
        r.zero16()?;
        let a = Abort {
            code,
            file: r.u32()?,
            a: r.u64()?,
            b: r.u64()?,
            id: r.id()?,
        };
        r.end()?;
        Ok(a)
    }
    pub fn emit(&self, b: &mut [u8]) -> usize {
        let mut w = Wr::new(b);
        w.u16(self.code);
        w.u16(0);
        w.u32(self.file);
        w.u64(self.a);
        w.u64(self.b);
        w.bytes(&self.id);
        w.pos
    }
}

/// One piece of a run: snapshot bytes through a transform, or raw bytes carried inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Snap {
        op: Transform,
        imm: u8,
        snap_off: u64,
        len: u32,
    },
    Raw(&'a [u8]),
}

impl Piece<'_> {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Snap { len, .. } => *len as u64,
            Piece::Raw(b) => b.len() as u64,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A run: pieces laid end to end in `file` from `file_off` on.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    pub file: u32,
    pub file_off: u64,
    npieces: u16,
    body: &'a [u8],
}

impl<'a> Run<'a> {
    /// The pieces, each with its file offset.
    pub fn pieces(&self) -> Pieces<'a> {
        Pieces {
            r: Rd::new(self.body),
            left: self.npieces,
            off: self.file_off,
        }
    }
    /// Bytes of file the run covers.
    pub fn len(&self) -> u64 {
        self.pieces().map(|(_, p)| p.len()).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Iterator over a validated run's pieces, yielding `(file offset, piece)`.
pub struct Pieces<'a> {
    r: Rd<'a>,
    left: u16,
    off: u64,
}

fn read_piece<'a>(r: &mut Rd<'a>) -> Result<Piece<'a>> {
    let len = r.u32()?;
    let op = r.u8()?;
    let imm = r.u8()?;
    if len == 0 {
        return Err(Error::Malformed);
    }
    if op == OP_RAW {
        if imm != 0 {
            return Err(Error::Malformed);
        }
        return Ok(Piece::Raw(r.take(len as usize)?));
    }
    let op = Transform::try_from(op).map_err(|_| Error::Malformed)?;
    if op == Transform::Id && imm != 0 {
        return Err(Error::Malformed);
    }
    Ok(Piece::Snap {
        op,
        imm,
        snap_off: r.u64()?,
        len,
    })
}

impl<'a> Iterator for Pieces<'a> {
    type Item = (u64, Piece<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The gram was validated by `Gram::parse`, so this cannot fail.
        let p = read_piece(&mut self.r).ok()?;
        let off = self.off;
        self.off += p.len();
        Some((off, p))
    }
}

/// A data gram, validated once by [`Gram::parse`] and then read in place.
#[derive(Debug, Clone)]
pub struct Gram<'a> {
    pub srtt_us: u32,
    nruns: u16,
    body: &'a [u8],
}

impl<'a> Gram<'a> {
    /// Validate the structure: at least one run, each with at least one non-empty piece,
    /// known ops, zero reserved fields, raw bytes inside the payload, file offsets that do
    /// not overflow, no trailing bytes.
    pub fn parse(b: &'a [u8]) -> Result<Gram<'a>> {
        let mut r = Rd::new(b);
        let nruns = r.u16()?;
        r.zero16()?;
        let srtt_us = r.u32()?;
        if nruns == 0 {
            return Err(Error::Malformed);
        }
        let body = &b[GRAM_HEADER..];
        for _ in 0..nruns {
            let _file = r.u32()?;
            let off = r.u64()?;
            let np = r.u16()?;
            r.zero16()?;
            if np == 0 {
                return Err(Error::Malformed);
            }
            let mut end = off;
            for _ in 0..np {
                let p = read_piece(&mut r)?;
                end = end.checked_add(p.len()).ok_or(Error::Malformed)?;
            }
        }
        r.end()?;
        Ok(Gram {
            srtt_us,
            nruns,
            body,
        })
    }

    pub fn runs(&self) -> Runs<'a> {
        Runs {
            r: Rd::new(self.body),
            left: self.nruns,
        }
    }
}

/// Iterator over a validated gram's runs.
pub struct Runs<'a> {
    r: Rd<'a>,
    left: u16,
}

impl<'a> Iterator for Runs<'a> {
    type Item = Run<'a>;
    fn next(&mut self) -> Option<Run<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let file = self.r.u32().ok()?;
        let file_off = self.r.u64().ok()?;
        let npieces = self.r.u16().ok()?;
        self.r.u16().ok()?;
        let start = self.r.pos;
        for _ in 0..npieces {
            read_piece(&mut self.r).ok()?;
        }
        Some(Run {
            file,
            file_off,
            npieces,
            body: &self.r.b[start..self.r.pos],
        })
    }
}

/// Builds a gram in place, merging contiguous pieces of one file into one run.
pub struct GramWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    nruns: u16,
    /// Offset of the open run's header, its file, its end offset and piece count.
    run: Option<(usize, u32, u64, u16)>,
}

impl<'b> GramWriter<'b> {
    /// Start a gram in `buf` (the payload area; its length is the budget).
    pub fn new(buf: &'b mut [u8], srtt_us: u32) -> Self {
        assert!(buf.len() >= GRAM_HEADER);
        put_le16(&mut buf[2..], 0);
        put_le32(&mut buf[4..], srtt_us);
        GramWriter {
            buf,
            len: GRAM_HEADER,
            nruns: 0,
            run: None,
        }
    }

    fn open_run(&mut self, file: u32, file_off: u64, piece_len: usize) -> bool {
        if let Some((_, f, end, n)) = self.run {
            if f == file && end == file_off && n < u16::MAX {
                return self.len + piece_len <= self.buf.len();
            }
        }
        if self.len + RUN_HEADER + piece_len > self.buf.len() || self.nruns == u16::MAX {
            return false;
        }
        let at = self.len;
        put_le32(&mut self.buf[at..], file);
        put_le64(&mut self.buf[at + 4..], file_off);
        put_le32(&mut self.buf[at + 12..], 0);
        self.len += RUN_HEADER;
        self.nruns += 1;
        self.run = Some((at, file, file_off, 0));
        true
    }

    fn close_piece(&mut self, len: u64) {
        let (at, f, end, n) = self.run.expect("open run");
        self.run = Some((at, f, end + len, n + 1));
        put_le16(&mut self.buf[at + 12..], n + 1);
    }

    /// Bytes left for pieces.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Add a snapshot piece at `file_off` of `file`; false (and nothing written) if it does
    /// not fit.
    pub fn push_snap(
        &mut self,
        file: u32,
        file_off: u64,
        op: Transform,
        imm: u8,
        snap_off: u64,
        len: u32,
    ) -> bool {
        assert!(len > 0);
        if !self.open_run(file, file_off, SNAP_PIECE) {
            return false;
        }
        let at = self.len;
        put_le32(&mut self.buf[at..], len);
        self.buf[at + 4] = op.code();
        self.buf[at + 5] = if op == Transform::Id { 0 } else { imm };
        put_le64(&mut self.buf[at + 6..], snap_off);
        self.len += SNAP_PIECE;
        self.close_piece(len as u64);
        true
    }

    /// Add as many leading bytes of `bytes` as fit (at least one, or none) at `file_off` of
    /// `file`; returns how many were taken.
    pub fn push_raw(&mut self, file: u32, file_off: u64, bytes: &[u8]) -> usize {
        if bytes.is_empty() || !self.open_run(file, file_off, RAW_PIECE + 1) {
            return 0;
        }
        let n = bytes.len().min(self.remaining() - RAW_PIECE);
        let at = self.len;
        put_le32(&mut self.buf[at..], n as u32);
        self.buf[at + 4] = OP_RAW;
        self.buf[at + 5] = 0;
        self.buf[at + RAW_PIECE..at + RAW_PIECE + n].copy_from_slice(&bytes[..n]);
        self.len += RAW_PIECE + n;
        self.close_piece(n as u64);
        n
    }

    /// Number of runs so far (0 means nothing to send).
    pub fn runs(&self) -> u16 {
        self.nruns
    }

    /// Close the gram; returns its payload length (0 if it holds no run).
    pub fn finish(self) -> usize {
        if self.nruns == 0 {
            return 0;
        }
        put_le16(&mut self.buf[0..], self.nruns);
        self.len
    }
}

/// Bytes of the Noise IKpsk2 message 1 in a [`HandshakeInit`] (e 32, encrypted s 48,
/// encrypted 16-byte payload 32).
pub const INIT_NOISE_LEN: usize = 112;
/// Bytes of mac1 after it.
pub const INIT_MAC_LEN: usize = 16;
/// Bytes of the Noise message 2 in a [`HandshakeResp`] (e 32, empty payload's tag 16).
pub const RESP_NOISE_LEN: usize = 48;

/// HandshakeInit (S->R, unsealed): Noise message 1, then mac1 (keyed BLAKE3 over the header
/// up to its CRC and the Noise message). Read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeInit<'a> {
    pub noise: &'a [u8; INIT_NOISE_LEN],
    pub mac1: &'a [u8; INIT_MAC_LEN],
}

impl<'a> HandshakeInit<'a> {
    pub const LEN: usize = INIT_NOISE_LEN + INIT_MAC_LEN;
    pub fn parse(b: &'a [u8]) -> Result<HandshakeInit<'a>> {
        if b.len() != Self::LEN {
            return Err(if b.len() < Self::LEN {
                Error::Truncated
            } else {
                Error::Malformed
            });
        }
        let (noise, mac1) = b.split_at(INIT_NOISE_LEN);
        Ok(HandshakeInit {
            noise: noise.try_into().map_err(|_| Error::Truncated)?,
            mac1: mac1.try_into().map_err(|_| Error::Truncated)?,
        })
    }
    pub fn emit(&self, b: &mut [u8]) -> usize {
        b[..INIT_NOISE_LEN].copy_from_slice(self.noise);
        b[INIT_NOISE_LEN..Self::LEN].copy_from_slice(self.mac1);
        Self::LEN
    }
}

/// HandshakeResp (R->S, unsealed): Noise message 2. Read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeResp<'a> {
    pub noise: &'a [u8; RESP_NOISE_LEN],
}

impl<'a> HandshakeResp<'a> {
    pub const LEN: usize = RESP_NOISE_LEN;
    pub fn parse(b: &'a [u8]) -> Result<HandshakeResp<'a>> {
        if b.len() != Self::LEN {
            return Err(if b.len() < Self::LEN {
                Error::Truncated
            } else {
                Error::Malformed
            });
        }
        Ok(HandshakeResp {
            noise: b.try_into().map_err(|_| Error::Truncated)?,
        })
    }
    pub fn emit(&self, b: &mut [u8]) -> usize {
        b[..Self::LEN].copy_from_slice(self.noise);
        Self::LEN
    }
}

/// A parsed payload.
#[derive(Debug, Clone)]
pub enum Payload<'a> {
    Hello(Hello),
    Accept(Accept),
    Data(Gram<'a>),
    Ack(Ack),
    Nack(Nack),
    Probe(Probe),
    Done(Done),
    Abort(Abort),
    Close,
    HandshakeInit(HandshakeInit<'a>),
    HandshakeResp(HandshakeResp<'a>),
    Held(super::held::Held),
}

impl<'a> Payload<'a> {
    /// Parse the payload of a frame of type `t`.
    pub fn parse(t: FrameType, b: &'a [u8]) -> Result<Payload<'a>> {
        Ok(match t {
            FrameType::Hello => Payload::Hello(Hello::parse(b)?),
            FrameType::Accept => Payload::Accept(Accept::parse(b)?),
            FrameType::Data => Payload::Data(Gram::parse(b)?),
            FrameType::Ack => Payload::Ack(Ack::parse(b)?),
            FrameType::Nack => Payload::Nack(Nack::parse(b)?),
            FrameType::Probe => Payload::Probe(Probe::parse(b)?),
            FrameType::Done => Payload::Done(Done::parse(b)?),
            FrameType::Abort => Payload::Abort(Abort::parse(b)?),
            FrameType::Close => {
                if !b.is_empty() {
                    return Err(Error::Malformed);
                }
                Payload::Close
            }
            FrameType::HandshakeInit => Payload::HandshakeInit(HandshakeInit::parse(b)?),
            FrameType::HandshakeResp => Payload::HandshakeResp(HandshakeResp::parse(b)?),
            FrameType::Held => Payload::Held(super::held::Held::parse(b)?),
        })
    }

    pub fn frame_type(&self) -> FrameType {
        match self {
            Payload::Hello(_) => FrameType::Hello,
            Payload::Accept(_) => FrameType::Accept,
            Payload::Data(_) => FrameType::Data,
            Payload::Ack(_) => FrameType::Ack,
            Payload::Nack(_) => FrameType::Nack,
            Payload::Probe(_) => FrameType::Probe,
            Payload::Done(_) => FrameType::Done,
            Payload::Abort(_) => FrameType::Abort,
            Payload::Close => FrameType::Close,
            Payload::HandshakeInit(_) => FrameType::HandshakeInit,
            Payload::HandshakeResp(_) => FrameType::HandshakeResp,
            Payload::Held(_) => FrameType::Held,
        }
    }

    pub fn buffer_len(&self) -> usize {
        match self {
            Payload::Hello(h) => h.buffer_len(),
            Payload::Accept(_) => Accept::LEN,
            Payload::Data(g) => GRAM_HEADER + g.body.len(),
            Payload::Ack(_) => ACK_LEN,
            Payload::Nack(n) => n.buffer_len(),
            Payload::Probe(_) => Probe::LEN,
            Payload::Done(_) => Done::LEN,
            Payload::Abort(_) => Abort::LEN,
            Payload::Close => 0,
            Payload::HandshakeInit(_) => HandshakeInit::LEN,
            Payload::HandshakeResp(_) => HandshakeResp::LEN,
            Payload::Held(h) => h.buffer_len(),
        }
    }

    /// Write into `b` (at least `buffer_len()` bytes); returns the length.
    pub fn emit(&self, b: &mut [u8]) -> usize {
        match self {
            Payload::Hello(h) => h.emit(b),
            Payload::Accept(a) => a.emit(b),
            Payload::Data(g) => {
                put_le16(&mut b[0..], g.nruns);
                put_le16(&mut b[2..], 0);
                put_le32(&mut b[4..], g.srtt_us);
                b[GRAM_HEADER..GRAM_HEADER + g.body.len()].copy_from_slice(g.body);
                GRAM_HEADER + g.body.len()
            }
            Payload::Ack(a) => a.emit(b),
            Payload::Nack(n) => n.emit(b),
            Payload::Probe(p) => p.emit(b),
            Payload::Done(d) => d.emit(b),
            Payload::Abort(a) => a.emit(b),
            Payload::Close => 0,
            Payload::HandshakeInit(h) => h.emit(b),
            Payload::HandshakeResp(h) => h.emit(b),
            Payload::Held(h) => h.emit(b),
        }
    }
}

/// A whole PacketFS datagram, parsed: header and payload.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    pub header: super::pfs::Repr,
    pub payload: Payload<'a>,
}

impl<'a> Frame<'a> {
    /// Parse untrusted datagram bytes (trailing bytes after the payload are ignored).
    pub fn parse(datagram: &'a [u8]) -> Result<Frame<'a>> {
        let p = super::pfs::Packet::new_checked(datagram)?;
        let header = super::pfs::Repr::parse(&p)?;
        let body = &datagram[super::pfs::HEADER_LEN..header.buffer_len()];
        if header.frame_type != FrameType::Data && header.flags & super::pfs::FLAG_REPAIR != 0 {
            return Err(Error::Malformed);
        }
        let payload = Payload::parse(header.frame_type, body)?;
        Ok(Frame { header, payload })
    }

    /// Write a datagram: header (`header.payload_len` is filled in), payload and CRC.
    /// `buf` must hold `HEADER_LEN + payload.buffer_len()` bytes; returns the length.
    pub fn emit(mut header: super::pfs::Repr, payload: &Payload<'_>, buf: &mut [u8]) -> usize {
        header.frame_type = payload.frame_type();
        let n = payload.emit(&mut buf[super::pfs::HEADER_LEN..]);
        header.payload_len = u16::try_from(n).expect("payload length");
        let total = header.buffer_len();
        header.emit(&mut super::pfs::Packet::new_unchecked(&mut buf[..total]));
        total
    }
}

/// An owned gram, for tests and tools: runs of owned pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GramRepr {
    pub srtt_us: u32,
    pub runs: Vec<RunRepr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRepr {
    pub file: u32,
    pub file_off: u64,
    pub pieces: Vec<PieceRepr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PieceRepr {
    Snap {
        op: Transform,
        imm: u8,
        snap_off: u64,
        len: u32,
    },
    Raw(Vec<u8>),
}

impl GramRepr {
    pub fn from_gram(g: &Gram<'_>) -> GramRepr {
        GramRepr {
            srtt_us: g.srtt_us,
            runs: g
                .runs()
                .map(|r| RunRepr {
                    file: r.file,
                    file_off: r.file_off,
                    pieces: r
                        .pieces()
                        .map(|(_, p)| match p {
                            Piece::Snap {
                                op,
                                imm,
                                snap_off,
                                len,
                            } => PieceRepr::Snap {
                                op,
                                imm,
                                snap_off,
                                len,
                            },
                            Piece::Raw(b) => PieceRepr::Raw(b.to_vec()),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Emit with explicit run boundaries (no merging); `None` if it does not fit.
    pub fn emit(&self, buf: &mut [u8]) -> Option<usize> {
        let need = GRAM_HEADER
            + self
                .runs
                .iter()
                .map(|r| {
                    RUN_HEADER
                        + r.pieces
                            .iter()
                            .map(|p| match p {
                                PieceRepr::Snap { .. } => SNAP_PIECE,
                                PieceRepr::Raw(b) => RAW_PIECE + b.len(),
                            })
                            .sum::<usize>()
                })
                .sum::<usize>();
        if need > buf.len() || self.runs.is_empty() {
            return None;
        }
        let mut w = Wr::new(buf);
        w.u16(self.runs.len() as u16);
        w.u16(0);
        w.u32(self.srtt_us);
        for r in &self.runs {
            w.u32(r.file);
            w.u64(r.file_off);
            w.u16(r.pieces.len() as u16);
            w.u16(0);
            for p in &r.pieces {
                match p {
                    PieceRepr::Snap {
                        op,
                        imm,
                        snap_off,
                        len,
                    } => {
                        w.u32(*len);
                        w.bytes(&[op.code(), *imm]);
                        w.u64(*snap_off);
                    }
                    PieceRepr::Raw(b) => {
                        w.u32(b.len() as u32);
                        w.bytes(&[OP_RAW, 0]);
                        w.bytes(b);
                    }
                }
            }
        }
        Some(w.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pfs;
    use proptest::prelude::*;

    /// A gram with two runs: file 1 at 0x10 (an xor piece, then 3 raw bytes) and file 2 at 0.
    static GRAM: [u8; 8 + 16 + 14 + 9 + 16 + 14] = [
        2, 0, 0, 0, 0xe8, 0x03, 0, 0, // 2 runs, srtt 1000 us
        1, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, // run: file 1, off 16, 2 pieces
        0x00, 0x01, 0, 0, 1, 0x5a, 0x20, 0, 0, 0, 0, 0, 0, 0, // 256 bytes xor 0x5a @ 32
        3, 0, 0, 0, 3, 0, b'a', b'b', b'c', // raw "abc"
        2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, // run: file 2, off 0, 1 piece
        7, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, // 7 bytes id @ 4096
    ];

    fn gram_repr() -> GramRepr {
        GramRepr {
            srtt_us: 1000,
            runs: vec![
                RunRepr {
                    file: 1,
                    file_off: 16,
                    pieces: vec![
                        PieceRepr::Snap {
                            op: Transform::Xor,
                            imm: 0x5a,
                            snap_off: 32,
                            len: 256,
                        },
                        PieceRepr::Raw(b"abc".to_vec()),
                    ],
                },
                RunRepr {
                    file: 2,
                    file_off: 0,
                    pieces: vec![PieceRepr::Snap {
                        op: Transform::Id,
                        imm: 0,
                        snap_off: 4096,
                        len: 7,
                    }],
                },
            ],
        }
    }

    #[test]
    fn gram_deconstruct() {
        let g = Gram::parse(&GRAM).unwrap();
        assert_eq!(GramRepr::from_gram(&g), gram_repr());
        let r: Vec<_> = g.runs().collect();
        assert_eq!(r[0].len(), 259);
        let offs: Vec<u64> = r[0].pieces().map(|(o, _)| o).collect();
        assert_eq!(offs, vec![16, 272]);
    }

    #[test]
    fn gram_construct() {
        let mut buf = [0u8; GRAM.len()];
        assert_eq!(gram_repr().emit(&mut buf), Some(GRAM.len()));
        assert_eq!(buf, GRAM);
        // The writer merges contiguous pieces into one run and produces the same bytes.
        let mut buf2 = [0u8; GRAM.len()];
        let mut w = GramWriter::new(&mut buf2, 1000);
        assert!(w.push_snap(1, 16, Transform::Xor, 0x5a, 32, 256));
        assert_eq!(w.push_raw(1, 272, b"abc"), 3);
        assert!(w.push_snap(2, 0, Transform::Id, 0, 4096, 7));
        assert!(!w.push_snap(2, 7, Transform::Id, 0, 0, 1), "full");
        assert_eq!(w.push_raw(2, 7, b"x"), 0, "full");
        assert_eq!(w.finish(), GRAM.len());
        assert_eq!(buf2, GRAM);
    }

    #[test]
    fn gram_refusals() {
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = GRAM.to_vec();
            f(&mut b);
            Gram::parse(&b).is_err()
        };
        assert!(bad(&|b| b[0] = 0)); // no runs
        assert!(bad(&|b| b[0] = 3)); // more runs than bytes
        assert!(bad(&|b| b[2] = 1)); // reserved
        assert!(bad(&|b| b[20] = 0)); // run without pieces
        assert!(bad(&|b| b[28] = 4)); // unknown op
        assert!(bad(&|b| b[24..28].copy_from_slice(&[0; 4]))); // empty piece
        assert!(bad(&|b| b[38] = 200)); // raw longer than the gram
        assert!(bad(&|b| b.push(0))); // trailing byte
        assert!(bad(&|b| b.truncate(b.len() - 1)));
        assert!(bad(&|b| b[12..20].copy_from_slice(&u64::MAX.to_le_bytes()))); // overflow
        assert!(bad(&|b| {
            // id with an immediate
            b[68] = 1;
        }));
    }

    #[test]
    fn nack_literal() {
        let n = Nack {
            ack: Ack {
                cum: 1,
                received: 2,
                frontier: 3,
                rx_frames: 4,
                max_seq: 5,
                echo_seq: 6,
                echo_delay_us: 7,
                files_done: 8,
            },
            ranges: vec![(10, 20), (30, 31)],
        };
        let mut want = Vec::new();
        for v in 1u64..=6 {
            want.extend_from_slice(&v.to_le_bytes());
        }
        want.extend_from_slice(&7u32.to_le_bytes());
        want.extend_from_slice(&8u32.to_le_bytes());
        want.extend_from_slice(&[2, 0, 0, 0]);
        for v in [10u64, 20, 30, 31] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        let mut buf = vec![0u8; n.buffer_len()];
        assert_eq!(n.emit(&mut buf), want.len());
        assert_eq!(buf, want);
        assert_eq!(Nack::parse(&want).unwrap(), n);
        // Overlapping or empty ranges are refused.
        let mut o = want.clone();
        o[ACK_LEN + 4 + 16..ACK_LEN + 4 + 24].copy_from_slice(&15u64.to_le_bytes());
        assert!(Nack::parse(&o).is_err());
        let mut e = want.clone();
        e[ACK_LEN + 4 + 8..ACK_LEN + 4 + 16].copy_from_slice(&10u64.to_le_bytes());
        assert!(Nack::parse(&e).is_err());
    }

    #[test]
    fn hello_literal() {
        let h = Hello {
            snapshot_id: [0xab; 32],
            nfiles: 3,
            first: 1,
            entries: vec![FileEntry {
                name: "a/b".into(),
                size: 0x0102,
                hash: [0xcd; 32],
                mode: FileMode::Packed,
                stream_len: 0x33,
                kind: EntryKind::File,
                attrs: Some(Attrs {
                    perm: 0o755,
                    mtime_s: 0x0607,
                    mtime_ns: 9,
                }),
                target: String::new(),
            }],
        };
        let mut want = vec![0xab; 32];
        want.extend_from_slice(&[3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
        want.extend_from_slice(&[2, 1, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0x33, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0xcd; 32]);
        want.extend_from_slice(&[1, 0, 1]); // mode packed, kind file, flags: attrs
        want.extend_from_slice(&[0xed, 0x01]); // 0o755
        want.extend_from_slice(&[7, 6, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[9, 0, 0, 0]);
        want.extend_from_slice(&[3, 0, 0, 0, b'a', b'/', b'b']);
        let mut buf = vec![0u8; h.buffer_len()];
        h.emit(&mut buf);
        assert_eq!(buf, want);
        assert_eq!(Hello::parse(&want).unwrap(), h);
        let mut past = want.clone();
        past[36] = 3; // first 3 + 1 entry > 3 files
        assert!(Hello::parse(&past).is_err());
        let mut utf = want.clone();
        let l = utf.len();
        utf[l - 1] = 0xff;
        assert!(Hello::parse(&utf).is_err());
        // mode 2 (streamed) must carry a zero hash and a bound of at least a stream end; mode
        // 3 is unknown; a direct entry must have stream length = size; a packed one must not
        // be empty
        let mode_at = 32 + 12 + 16 + 32;
        let mut m = want.clone();
        m[mode_at] = 2;
        assert!(Hello::parse(&m).is_err(), "streamed with a hash");
        m[mode_at - 32..mode_at].fill(0);
        assert_eq!(
            Hello::parse(&m).unwrap().entries[0].mode,
            FileMode::Streamed
        );
        m[32 + 12 + 8] = 35;
        assert!(Hello::parse(&m).is_err(), "bound below a stream end");
        m[mode_at] = 3;
        assert!(Hello::parse(&m).is_err(), "unknown mode");
        let mut m = want.clone();
        m[mode_at] = 0;
        assert!(Hello::parse(&m).is_err());
        m[32 + 12 + 8] = 2;
        m[32 + 12 + 9] = 1;
        assert_eq!(Hello::parse(&m).unwrap().entries[0].mode, FileMode::Direct);
        let mut z = want.clone();
        z[32 + 12 + 8..32 + 12 + 16].fill(0);
        assert!(Hello::parse(&z).is_err());
        // kind, flags, permission bits, nanoseconds
        let (kind_at, flags_at, perm_at, ns_at) =
            (mode_at + 1, mode_at + 2, mode_at + 3, mode_at + 13);
        let mut k = want.clone();
        k[kind_at] = 3;
        assert!(Hello::parse(&k).is_err(), "unknown kind");
        k[kind_at] = 1;
        assert!(Hello::parse(&k).is_err(), "a directory with data");
        let mut f = want.clone();
        f[flags_at] = 2;
        assert!(Hello::parse(&f).is_err(), "unknown flag");
        f[flags_at] = 0;
        assert!(Hello::parse(&f).is_err(), "attributes without the flag");
        let mut p = want.clone();
        p[perm_at + 1] = 0x10; // 0o10000 and above
        assert!(Hello::parse(&p).is_err(), "permission bits beyond 0o7777");
        let mut n = want.clone();
        n[ns_at..ns_at + 4].copy_from_slice(&1_000_000_000u32.to_le_bytes());
        assert!(Hello::parse(&n).is_err(), "nanoseconds of a second or more");
    }

    #[test]
    fn hello_symlink_and_dir_literal() {
        let h = Hello {
            snapshot_id: [1; 32],
            nfiles: 2,
            first: 0,
            entries: vec![
                FileEntry::dir("d".into(), None),
                FileEntry::symlink("d/l".into(), "../x".into(), None),
            ],
        };
        let mut want = vec![1; 32];
        want.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
        let fixed = |kind: u8, n: u16, t: u16| {
            let mut e = vec![0u8; 48];
            e.extend_from_slice(&[0, kind, 0, 0, 0]);
            e.extend_from_slice(&[0; 12]);
            e.extend_from_slice(&n.to_le_bytes());
            e.extend_from_slice(&t.to_le_bytes());
            e
        };
        want.extend_from_slice(&fixed(1, 1, 0));
        want.extend_from_slice(b"d");
        let link_at = want.len();
        want.extend_from_slice(&fixed(2, 3, 4));
        want.extend_from_slice(b"d/l../x");
        let mut buf = vec![0u8; h.buffer_len()];
        assert_eq!(h.emit(&mut buf), want.len());
        assert_eq!(buf, want);
        assert_eq!(Hello::parse(&want).unwrap(), h);
        // a link without a target, a NUL in a target, a target on a directory
        let mut e = want[..link_at].to_vec();
        e.extend_from_slice(&fixed(2, 3, 0));
        e.extend_from_slice(b"d/l");
        assert!(Hello::parse(&e).is_err(), "link without a target");
        let mut e = want.clone();
        let l = e.len();
        e[l - 1] = 0;
        assert!(Hello::parse(&e).is_err(), "NUL in a target");
        let mut e = want[..link_at].to_vec();
        e.extend_from_slice(&fixed(1, 3, 4));
        e.extend_from_slice(b"d/l../x");
        assert!(Hello::parse(&e).is_err(), "a directory with a target");
        let mut e = want[..link_at].to_vec();
        e.extend_from_slice(&fixed(2, 3, MAX_TARGET_LEN as u16 + 1));
        e.extend_from_slice(b"d/l");
        e.extend_from_slice(&vec![b'a'; MAX_TARGET_LEN + 1]);
        assert!(Hello::parse(&e).is_err(), "target too long");
        // name and target together above MAX_NAME_LEN
        let mut e = want[..link_at].to_vec();
        e.extend_from_slice(&fixed(2, 3, MAX_NAME_LEN as u16 - 2));
        e.extend_from_slice(b"d/l");
        e.extend_from_slice(&vec![b'a'; MAX_NAME_LEN - 2]);
        assert!(
            Hello::parse(&e).is_err(),
            "name and target too long together"
        );
        let mut e = want[..link_at].to_vec();
        e.extend_from_slice(&fixed(2, 3, MAX_NAME_LEN as u16 - 3));
        e.extend_from_slice(b"d/l");
        e.extend_from_slice(&vec![b'a'; MAX_NAME_LEN - 3]);
        assert!(
            Hello::parse(&e).is_ok(),
            "name and target of MAX_NAME_LEN together"
        );
    }

    #[test]
    fn stream_end_literal() {
        let e = StreamEnd { hash: [0x42; 32] };
        let mut want = vec![0, 0, 0, 0];
        want.extend_from_slice(&[0x42; 32]);
        assert_eq!(e.to_bytes().to_vec(), want);
        assert_eq!(StreamEnd::parse(&want), Some(Some(e)));
        assert_eq!(
            StreamEnd::parse(&want[..20]),
            Some(None),
            "not all there yet"
        );
        assert_eq!(StreamEnd::parse(&[0, 0, 0]), None, "too short to tell");
        assert_eq!(
            StreamEnd::parse(&[5, 0, 0, 0, 1]),
            None,
            "a block's length prefix"
        );
    }

    #[test]
    fn frame_roundtrip_literal() {
        // An Abort frame: code 1, file 0xffffffff, a 0, b 0, id 0x11..
        let ab = Abort {
            code: 1,
            file: u32::MAX,
            a: 0,
            b: 0,
            id: [0x11; 32],
        };
        let hdr = pfs::Repr {
            frame_type: FrameType::Abort,
            flags: 0,
            session: 7,
            seq: 1,
            payload_len: 0,
        };
        let mut buf = [0u8; 200];
        let n = Frame::emit(hdr, &Payload::Abort(ab), &mut buf);
        assert_eq!(n, pfs::HEADER_LEN + Abort::LEN);
        assert_eq!(&buf[32..36], &[1, 0, 0, 0]);
        assert_eq!(&buf[36..40], &[0xff; 4]);
        let f = Frame::parse(&buf[..n]).unwrap();
        assert_eq!(f.header.session, 7);
        assert!(matches!(f.payload, Payload::Abort(a) if a == ab));
        // Flags are only allowed on data frames.
        let mut flagged = buf;
        flagged[6] = 1;
        pfs::Packet::new_unchecked(&mut flagged[..n]).fill_crc();
        assert_eq!(Frame::parse(&flagged[..n]).unwrap_err(), Error::Malformed);
    }

    fn arb_transform() -> impl Strategy<Value = Transform> {
        prop_oneof![
            Just(Transform::Id),
            Just(Transform::Xor),
            Just(Transform::Add)
        ]
    }

    fn arb_piece() -> impl Strategy<Value = PieceRepr> {
        prop_oneof![
            (arb_transform(), any::<u8>(), any::<u64>(), 1u32..).prop_map(
                |(op, imm, snap_off, len)| PieceRepr::Snap {
                    op,
                    imm: if op == Transform::Id { 0 } else { imm },
                    snap_off,
                    len
                }
            ),
            proptest::collection::vec(any::<u8>(), 1..40).prop_map(PieceRepr::Raw),
        ]
    }

    fn arb_gram() -> impl Strategy<Value = GramRepr> {
        (
            any::<u32>(),
            proptest::collection::vec(
                (
                    any::<u32>(),
                    0u64..(1 << 40),
                    proptest::collection::vec(arb_piece(), 1..6),
                ),
                1..6,
            ),
        )
            .prop_map(|(srtt_us, runs)| GramRepr {
                srtt_us,
                runs: runs
                    .into_iter()
                    .map(|(file, file_off, pieces)| RunRepr {
                        file,
                        file_off,
                        pieces,
                    })
                    .collect(),
            })
    }

    fn arb_payload() -> impl Strategy<Value = (FrameType, Vec<u8>)> {
        let ack = (any::<[u64; 6]>(), any::<u32>(), any::<u32>()).prop_map(|(v, d, f)| Ack {
            cum: v[0],
            received: v[1],
            frontier: v[2],
            rx_frames: v[3],
            max_seq: v[4],
            echo_seq: v[5],
            echo_delay_us: d,
            files_done: f,
        });
        let enc = |p: Payload<'_>| {
            let mut b = vec![0u8; p.buffer_len()];
            let n = p.emit(&mut b);
            assert_eq!(n, b.len());
            (p.frame_type(), b)
        };
        prop_oneof![
            (
                any::<[u8; 32]>(),
                proptest::collection::vec(
                    (
                        "[a-z/.]{1,20}",
                        any::<u64>(),
                        any::<[u8; 32]>(),
                        0u8..4,
                        proptest::option::of((0u32..=0o7777, any::<i64>(), 0u32..1_000_000_000)),
                        "[a-z/.]{1,20}"
                    ),
                    0..5
                ),
                0u32..100
            )
                .prop_map(move |(id, es, first)| enc(Payload::Hello(Hello {
                    snapshot_id: id,
                    nfiles: first + es.len() as u32,
                    first,
                    entries: es
                        .into_iter()
                        .map(|(name, size, hash, kind, attrs, target)| {
                            let attrs = attrs.and_then(|(p, s, n)| Attrs::new(p, s, n));
                            match kind {
                                0 => FileEntry {
                                    attrs,
                                    ..FileEntry::direct(name, size, hash)
                                },
                                1 => FileEntry {
                                    mode: FileMode::Packed,
                                    stream_len: size / 3 + 1,
                                    attrs,
                                    ..FileEntry::direct(name, size | 1, hash)
                                },
                                2 => FileEntry::dir(name, attrs),
                                _ => FileEntry::symlink(name, target, attrs),
                            }
                        })
                        .collect()
                }))),
            (any::<[u8; 32]>(), any::<u32>(), any::<u64>()).prop_map(move |(i, n, r)| enc(
                Payload::Accept(Accept {
                    snapshot_id: i,
                    nfiles: n,
                    held: n / 2,
                    max_rate: r
                })
            )),
            ack.clone().prop_map(move |a| enc(Payload::Ack(a))),
            (
                ack,
                proptest::collection::vec((0u64..1000, 1u64..1000), 0..20)
            )
                .prop_map(move |(a, rs)| {
                    let mut at = 0;
                    let ranges = rs
                        .into_iter()
                        .map(|(gap, len)| {
                            let s = at + gap;
                            at = s + len;
                            (s, at)
                        })
                        .collect();
                    enc(Payload::Nack(Nack { ack: a, ranges }))
                }),
            (any::<u64>(), any::<u32>(), 0u32..2).prop_map(move |(s, r, f)| enc(Payload::Probe(
                Probe {
                    sent: s,
                    srtt_us: r,
                    flags: f
                }
            ))),
            (any::<u32>(), any::<u64>(), any::<[u8; 32]>()).prop_map(move |(f, b, d)| enc(
                Payload::Done(Done {
                    files: f,
                    bytes: b,
                    digest: d
                })
            )),
            (
                any::<u16>(),
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<[u8; 32]>()
            )
                .prop_map(move |(code, file, a, b, id)| enc(Payload::Abort(Abort {
                    code,
                    file,
                    a,
                    b,
                    id
                }))),
            Just((FrameType::Close, vec![])),
        ]
    }

    proptest! {
        #[test]
        fn gram_roundtrip(g in arb_gram()) {
            let mut buf = vec![0u8; 4096];
            let n = g.emit(&mut buf).unwrap();
            let parsed = Gram::parse(&buf[..n]).unwrap();
            prop_assert_eq!(GramRepr::from_gram(&parsed), g);
        }

        #[test]
        fn payload_roundtrip((t, bytes) in arb_payload(), session in any::<u64>(), seq in any::<u64>()) {
            let p = Payload::parse(t, &bytes).unwrap();
            let mut again = vec![0u8; p.buffer_len()];
            p.emit(&mut again);
            prop_assert_eq!(&again, &bytes);
            // And as a whole frame.
            let mut frame = vec![0u8; pfs::HEADER_LEN + bytes.len()];
            let hdr = pfs::Repr { frame_type: t, flags: 0, session, seq, payload_len: 0 };
            let n = Frame::emit(hdr, &p, &mut frame);
            let f = Frame::parse(&frame[..n]).unwrap();
            prop_assert_eq!(f.header.session, session);
            prop_assert_eq!(f.header.seq, seq);
            prop_assert_eq!(f.payload.frame_type(), t);
            let mut third = vec![0u8; f.payload.buffer_len()];
            f.payload.emit(&mut third);
            prop_assert_eq!(third, bytes);
        }

        /// The fuzz target's property (fuzz/fuzz_targets/frame.rs) on mutated valid frames:
        /// whatever still parses re-emits to exactly the same bytes.
        #[test]
        fn mutated_frames_parse_strictly((t, bytes) in arb_payload(),
                                         flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
                                         fix_crc in any::<bool>()) {
            let p = Payload::parse(t, &bytes).unwrap();
            let mut frame = vec![0u8; pfs::HEADER_LEN + bytes.len()];
            let hdr = pfs::Repr { frame_type: t, flags: 0, session: 1, seq: 2, payload_len: 0 };
            let n = Frame::emit(hdr, &p, &mut frame);
            for (i, v) in flips {
                let i = i.index(n);
                frame[i] ^= v;
            }
            if fix_crc && n >= pfs::HEADER_LEN {
                let _ = pfs::Packet::new_checked(&mut frame[..]).map(|mut p| p.fill_crc());
            }
            if let Ok(f) = Frame::parse(&frame) {
                let m = pfs::HEADER_LEN + f.payload.buffer_len();
                let mut out = vec![0u8; m];
                prop_assert_eq!(Frame::emit(f.header, &f.payload, &mut out), m);
                prop_assert_eq!(&out[..], &frame[..m]);
            }
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Frame::parse(&bytes);
            for t in 1..=9u8 {
                let _ = Payload::parse(FrameType::from_u8(t).unwrap(), &bytes);
            }
        }

        #[test]
        fn writer_output_parses(pieces in proptest::collection::vec(arb_piece(), 1..40), budget in 40usize..600) {
            let mut buf = vec![0u8; budget];
            let mut w = GramWriter::new(&mut buf, 5);
            let mut off = 0u64;
            let mut taken = Vec::new();
            for p in &pieces {
                match p {
                    PieceRepr::Snap { op, imm, snap_off, len } => {
                        if !w.push_snap(0, off, *op, *imm, *snap_off, *len) { break; }
                        off += *len as u64;
                        taken.push(p.clone());
                    }
                    PieceRepr::Raw(b) => {
                        let n = w.push_raw(0, off, b);
                        if n == 0 { break; }
                        off += n as u64;
                        taken.push(PieceRepr::Raw(b[..n].to_vec()));
                    }
                }
            }
            let n = w.finish();
            if taken.is_empty() {
                prop_assert_eq!(n, 0);
            } else {
                let g = GramRepr::from_gram(&Gram::parse(&buf[..n]).unwrap());
                prop_assert_eq!(g.runs.len(), 1);
                prop_assert_eq!(&g.runs[0].pieces, &taken);
            }
        }
    }
}
