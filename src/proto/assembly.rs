//! The receiver's assembly part: pieces applied through the [`FileSink`] (direct files, in
//! any order), packed block streams reassembled and decoded in file order, and each file's
//! BLAKE3 fed incrementally as its final prefix grows (spans of final bytes handed to
//! [`Hashes`]: the session's hashing thread, or inline).

use super::hashpipe::Hashes;
use super::manifest::{held_bytes, RecvFile};
use super::rangeset::RangeSet;
use super::resume::Offers;
use super::sink::{FileSink, SinkError, SnapSeg};
use super::{Reason, Stats};
use crate::blueprint::{block, Source};
use crate::wire::held::{HeldKind, ResumeRecord};
use crate::wire::payload::{FileMode, Piece, StreamEnd};

/// Hash bytes in steps of at least this many (BLAKE3 is fastest on long inputs).
const HASH_STEP: u64 = 256 << 10;

/// Per-file progress beyond the range set.
#[derive(Default)]
struct Prog {
    /// Packed: the reassembly buffer, stream bytes `[base, base + buf.len())`: the whole
    /// stream (`slen` bytes, allocated once the manifest passed the limits), or for a
    /// streamed file a window that grows up to `cap` and drops what was decoded.
    buf: Vec<u8>,
    base: u64,
    cap: u64,
    /// Packed: stream bytes decoded (a block boundary).
    decoded: u64,
    /// File bytes written in order (packed) or contiguous (direct) and fed to the file's
    /// hash: final, never written again.
    hashed: u64,
    /// Streamed: the head of the stream was read (a resume record or the first block).
    begun: bool,
    /// Packed: the file's reference predictions, once a block brought its model.
    predict: block::Predictions,
}

/// How far a packed stream got.
pub(crate) enum Packed {
    /// More blocks to come.
    Partial,
    /// The whole stream is applied.
    Complete,
    /// A streamed file's end record arrived at stream offset `end` (relative to the file's
    /// start): every block is applied; the reserved bytes after the record are void.
    Ended { end: u64, hash: [u8; 32] },
}

/// Everything the assembly reads from the receiver for one call.
pub(crate) struct Ctx<'a, 's, S: FileSink> {
    pub sink: &'a mut S,
    pub snapshot: &'s [u8],
    pub files: &'a [RecvFile],
    pub recv: &'a RangeSet,
    pub limits: &'a block::Limits,
    pub offers: &'a mut Offers,
    pub stats: &'a mut Stats,
}

#[derive(Default)]
pub(crate) struct Assembly {
    prog: Vec<Prog>,
    /// Each file's BLAKE3, inline or on the session's hashing thread.
    hashes: Hashes,
}

impl Assembly {
    /// Buffers for the accepted files (packed lengths passed the limits already); their
    /// hashes on a thread of their own if `thread` ([`super::hashpipe::use_thread`]).
    pub fn new(files: &[RecvFile], lim: &block::Limits, thread: bool) -> Self {
        Assembly {
            hashes: Hashes::new(files.len(), thread),
            prog: files
                .iter()
                .map(|f| Prog {
                    buf: if f.mode == FileMode::Packed {
                        vec![0u8; f.slen as usize]
                    } else {
                        Vec::new()
                    },
                    cap: held_bytes(f.mode, f.slen, lim),
                    ..Prog::default()
                })
                .collect(),
        }
    }

    /// Apply one piece at offset `off` of file `fi`'s stream. Returns false when the piece
    /// was dropped (ahead of a streamed file's window): it is not received.
    pub fn apply_piece<S: FileSink>(
        &mut self,
        cx: &mut Ctx<'_, '_, S>,
        fi: usize,
        off: u64,
        p: Piece<'_>,
    ) -> Result<bool, SinkError> {
        if cx.files[fi].mode.is_packed() {
            let Piece::Raw(b) = p else {
                return Ok(true); // refused by the bounds check before
            };
            let g = &mut self.prog[fi];
            let end = off + b.len() as u64;
            if end <= g.base {
                return Ok(true); // decoded already
            }
            if end - g.base > g.cap {
                return Ok(false);
            }
            let skip = g.base.saturating_sub(off) as usize;
            let (lo, hi) = (
                (off + skip as u64 - g.base) as usize,
                (end - g.base) as usize,
            );
            if g.buf.len() < hi {
                g.buf.resize(hi, 0);
            }
            g.buf[lo..hi].copy_from_slice(&b[skip..]);
            return Ok(true);
        }
        // Bytes below the hashed prefix are final: a piece never rewrites them (pieces are
        // byte-wise, so trimming one is exact).
        let skip = self.prog[fi].hashed.saturating_sub(off).min(p.len());
        let (off, n) = (off + skip, p.len() - skip);
        match p {
            _ if n == 0 => Ok(()),
            Piece::Snap {
                op, imm, snap_off, ..
            } => self.write_snap_piece(
                cx,
                fi,
                off,
                SnapSeg {
                    op,
                    imm,
                    snap_off: snap_off + skip,
                    len: n as u32,
                },
            ),
            Piece::Raw(b) => cx.sink.write_raw(fi as u32, off, &b[skip as usize..]),
        }
        .map(|()| true)
    }

    /// A direct file's contiguous prefix grew: hash it. Returns true once the file is whole.
    pub fn advance_direct<S: FileSink>(&mut self, cx: &mut Ctx<'_, '_, S>, fi: usize) -> bool {
        let (start, size) = (cx.files[fi].start, cx.files[fi].size);
        let contiguous = cx.recv.first_gap(start).min(start + size) - start;
        self.hash_upto(cx, fi, contiguous, contiguous == size);
        contiguous == size
    }

    /// Apply a direct snapshot piece. A long piece that starts at the hashed prefix (a
    /// covered file's first piece, typically) is applied in `HASH_STEP` chunks, each hashed
    /// right after it is written while it is still in cache.
    fn write_snap_piece<S: FileSink>(
        &mut self,
        cx: &mut Ctx<'_, '_, S>,
        fi: usize,
        off: u64,
        seg: SnapSeg,
    ) -> Result<(), SinkError> {
        if off != self.prog[fi].hashed || (seg.len as u64) < 2 * HASH_STEP {
            return cx.sink.write_segment(fi as u32, off, seg, cx.snapshot);
        }
        let mut done = 0u64;
        while done < seg.len as u64 {
            let n = (seg.len as u64 - done).min(HASH_STEP);
            let part = SnapSeg {
                snap_off: seg.snap_off + done,
                len: n as u32,
                ..seg
            };
            cx.sink
                .write_segment(fi as u32, off + done, part, cx.snapshot)?;
            done += n;
            // These bytes are final (later pieces are trimmed below `hashed`).
            self.hash_upto(cx, fi, off + done, true);
        }
        Ok(())
    }

    /// Feed file bytes `[hashed, upto)` of `fi` to its hash, in steps of `HASH_STEP`
    /// unless `last`. Does nothing if the sink cannot show its contents.
    fn hash_upto<S: FileSink>(
        &mut self,
        cx: &mut Ctx<'_, '_, S>,
        fi: usize,
        upto: u64,
        last: bool,
    ) {
        let p = &mut self.prog[fi];
        if upto <= p.hashed || (!last && upto - p.hashed < HASH_STEP) {
            return;
        }
        if !hash_span(&mut self.hashes, cx.sink, fi, p.hashed, upto) {
            return;
        }
        p.hashed = upto;
        cx.sink.prefix_final(fi as u32, upto);
    }

    /// Decode and apply every complete block of packed file `fi` in the contiguous prefix of
    /// its stream, in file order.
    pub fn advance_packed<S: FileSink>(
        &mut self,
        cx: &mut Ctx<'_, '_, S>,
        fi: usize,
    ) -> Result<Packed, Reason> {
        let f = &cx.files[fi];
        let (start, slen, size) = (f.start, f.slen, f.size);
        let streamed = f.mode == FileMode::Streamed;
        let prefix = cx.recv.first_gap(start).min(start + slen) - start;
        while self.prog[fi].decoded < prefix {
            let g = &self.prog[fi];
            if streamed && !g.begun {
                let avail = &g.buf[(g.decoded - g.base) as usize..(prefix - g.base) as usize];
                match ResumeRecord::parse(avail) {
                    Some(None) => break,
                    rec => {
                        let rec = rec.flatten();
                        self.begin(cx, fi, rec)?;
                        if rec.is_some() {
                            continue;
                        }
                    }
                }
            }
            let g = &self.prog[fi];
            let at = g.decoded as usize;
            let avail = &g.buf[(g.decoded - g.base) as usize..(prefix - g.base) as usize];
            if streamed {
                match StreamEnd::parse(avail) {
                    None => {}
                    Some(None) => break,
                    Some(Some(e)) => {
                        if self.prog[fi].hashed != size {
                            return Err(Reason::Protocol);
                        }
                        self.prog[fi].buf = Vec::new();
                        let end = at as u64 + StreamEnd::LEN as u64;
                        self.prog[fi].decoded = end;
                        return Ok(Packed::Ended { end, hash: e.hash });
                    }
                }
            }
            let n = match block::body_len(avail, cx.limits) {
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
            let g = &self.prog[fi];
            let body =
                &g.buf[(g.decoded - g.base) as usize + block::PREFIX..(end - g.base) as usize];
            let file_off = self.prog[fi].hashed;
            let mut b = block::decode_body(body, cx.limits, cx.snapshot.len() as u64, file_off)
                .map_err(|_| Reason::Protocol)?;
            if file_off.checked_add(b.file_len).is_none_or(|e| e > size) {
                return Err(Reason::Protocol);
            }
            // reference predictions (from the block that brings the file's model on), with
            // this snapshot
            self.prog[fi]
                .predict
                .apply(&mut b, cx.snapshot, file_off, size)
                .map_err(|_| Reason::Protocol)?;
            apply_block(cx, fi as u32, file_off, &b).map_err(|_| Reason::Io)?;
            self.prog[fi].decoded = end;
            // `hashed` doubles as the packed file's write position: hash what was written.
            let to = file_off + b.file_len;
            if !hash_span(&mut self.hashes, cx.sink, fi, file_off, to) {
                self.hashes.forget(fi); // the sink hashes the file at the end
            }
            self.prog[fi].hashed = to;
            cx.sink.prefix_final(fi as u32, to);
        }
        let p = &mut self.prog[fi];
        if streamed && p.decoded - p.base >= p.cap / 2 {
            // Drop what was decoded: the window slides.
            p.buf.drain(..(p.decoded - p.base) as usize);
            p.base = p.decoded;
        }
        if !streamed && p.decoded == slen {
            if p.hashed != size {
                return Err(Reason::Protocol);
            }
            p.buf = Vec::new();
            return Ok(Packed::Complete);
        }
        Ok(Packed::Partial)
    }

    /// The head of streamed file `fi`'s stream: a resume record (`rec`) continues from what
    /// was offered (it must echo the offer exactly); a block voids the offer. Either way the
    /// sink learns the sender's choice.
    fn begin<S: FileSink>(
        &mut self,
        cx: &mut Ctx<'_, '_, S>,
        fi: usize,
        rec: Option<ResumeRecord>,
    ) -> Result<(), Reason> {
        let offer = cx.offers.take(fi);
        let p = &mut self.prog[fi];
        p.begun = true;
        let Some(r) = rec else {
            if offer.is_some() {
                cx.sink.adopt(fi as u32, 0).map_err(|e| match e {
                    SinkError::Exists { file, .. } => Reason::FileExists { file },
                    _ => Reason::Io,
                })?;
            }
            return Ok(());
        };
        let Some(h) = offer.filter(|h| h.len == r.at && h.hash() == r.hash) else {
            return Err(Reason::Protocol); // a record for nothing offered, or another offer
        };
        cx.sink.adopt(fi as u32, r.at).map_err(|_| Reason::Io)?;
        p.decoded += ResumeRecord::LEN as u64;
        p.hashed = r.at;
        self.hashes.seed(fi, h.hasher);
        match h.kind {
            HeldKind::Whole => {
                cx.stats.skipped_files += 1;
                cx.stats.skipped_bytes += r.at;
            }
            HeldKind::Prefix => {
                cx.stats.resumed_files += 1;
                cx.stats.resumed_bytes += r.at;
            }
        }
        Ok(())
    }

    /// The BLAKE3 of whole file `fi`: the incremental one if it covered the file, else the
    /// sink's. Either way every span of `fi` handed to the hashing thread is read when this
    /// returns: the sink may commit (unmap, free) the file's memory.
    pub fn file_hash<S: FileSink>(
        &mut self,
        sink: &mut S,
        fi: usize,
        size: u64,
    ) -> Result<[u8; 32], SinkError> {
        let whole = self.prog[fi].hashed == size;
        match self.hashes.finish(fi) {
            Some(h) if whole => Ok(h),
            _ => sink.hash(fi as u32),
        }
    }

    /// Whether the hashes run on the hashing thread.
    #[cfg(test)]
    pub fn threaded(&self) -> bool {
        self.hashes.threaded()
    }

    /// Wait until the hashing thread has read every span handed to it (the hashes go on).
    pub fn drain(&mut self) {
        self.hashes.drain();
    }

    /// The session is abandoned: stop the hashing thread and drop every hash, before the
    /// sink discards (unmaps, frees) the files' memory.
    pub fn settle(&mut self) {
        self.hashes.settle();
    }
}

/// Hand file bytes `[from, to)` of `fi` to its hash (on the hashing thread, read after this
/// returns). Returns false if the sink cannot show them.
#[allow(unsafe_code)]
fn hash_span<S: FileSink>(h: &mut Hashes, sink: &S, fi: usize, from: u64, to: u64) -> bool {
    let span = usize::try_from(from)
        .ok()
        .zip(usize::try_from(to).ok())
        .and_then(|(a, b)| sink.contents(fi as u32)?.get(a..b));
    let Some(span) = span else {
        return false;
    };
    // Safety (`Hashes::feed`: the bytes stay allocated and unwritten until fi's hash is
    // finished or the hashes are settled):
    // - Unwritten: they lie below the file's new `hashed` mark, and nothing writes there
    //   again: direct pieces are trimmed below it (`apply_piece`), a packed file's blocks
    //   are written at it and after (`advance_packed`), self copies only read below it, and
    //   a sink's `span_mut` hands out exactly the range written (`FileSink::contents`).
    // - Allocated: a sink's memory for a file (MemSink's buffer; MmapSink's map, made at
    //   `open`, or a small file's buffer or map, made at its first write, never remapped)
    //   goes only at `commit`, after `file_hash` finished the file's hash; at `discard`,
    //   after the receiver settled the hashes (`Receiver::fail`, a peer's Abort); or when
    //   the sink is dropped, after the assembly (the receiver's field order, and
    //   `Receiver::into_sink` settles first). A resumed or skipped file is seeded with the
    //   held prefix's state: its held bytes are never handed off.
    unsafe { h.feed(fi, span) };
    true
}

/// Write one decoded block at `file_off` of `file` through the sink.
fn apply_block<S: FileSink>(
    cx: &mut Ctx<'_, '_, S>,
    file: u32,
    file_off: u64,
    b: &block::Block,
) -> Result<(), SinkError> {
    let mut off = file_off;
    let mut spill = 0usize;
    for seg in &b.segments {
        match seg.src {
            Source::Snap { op, off: so, imm } => cx.sink.write_segment(
                file,
                off,
                SnapSeg {
                    op,
                    imm,
                    snap_off: so,
                    len: seg.len,
                },
                cx.snapshot,
            )?,
            Source::Raw => {
                let n = seg.len as usize;
                cx.sink.write_raw(file, off, &b.spill[spill..spill + n])?;
                spill += n;
            }
            Source::Cover { off: so } => {
                let n = seg.len as usize;
                cx.sink
                    .write_cover(file, off, so, &b.spill[spill..spill + n], cx.snapshot)?;
                spill += n;
            }
            Source::SelfCopy { off: src } => {
                // Blocks are applied in file order and segments in order within one, so
                // every byte before `off` is final here: the source is complete.
                let bytes = cx
                    .sink
                    .contents(file)
                    .ok_or(SinkError::NoReadBack { file })?;
                let (s, d, n) = (src as usize, off as usize, seg.len as usize);
                let avail =
                    bytes
                        .get(s..d)
                        .filter(|a| !a.is_empty())
                        .ok_or(SinkError::OutOfRange {
                            file,
                            off: src,
                            len: d.saturating_sub(s),
                        })?;
                // forward copy semantics: an overlapping source repeats with period d - s
                let tmp: Vec<u8> = avail.iter().copied().cycle().take(n).collect();
                cx.sink.write_raw(file, off, &tmp)?;
            }
        }
        off += seg.len as u64;
    }
    Ok(())
}
