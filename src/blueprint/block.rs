//! The packed-transfer block codec: a blueprint as a stream of independently decodable
//! blocks, each covering a contiguous file range and holding that range's records as the
//! separate streams of `.pbb` v3 ([`super::streams`]: table columns, cover differences,
//! literals), each stored with its own coder.
//!
//! A packed stream is the blocks end to end, in file order:
//!
//! ```text
//! block := body_len u32 LE | body
//! body  := varint file_len | varint nsegs | directory | data
//! directory := 9 x (coder u8 | varint raw_len | varint stored_len)
//!              for ops, lens, offs, imms, backs, dzeros, dbytes, lits, refs (refs is empty
//!              except in a `.pbb` sent as itself, below)
//! data  := the stored streams end to end
//! ```
//!
//! Decoding is bounded: every declared length is checked against [`Limits`] and against the
//! others (a segment covers at least one byte, so `nsegs <= file_len`; differences plus
//! literals are at most `file_len` and [`Limits::max_spill`]; a column takes at most 10 bytes
//! per record) before anything is allocated, and each coder's output is capped at its
//! declared size. The receiver decodes blocks in file order as the contiguous prefix of the
//! stream completes (docs/protocol.md).
//!
//! Self copies (segments that copy from earlier in the same file) are coded as distances back
//! from their absolute file position, so they may reach into earlier blocks; because blocks
//! are applied strictly in file order, their source bytes are always complete when they are
//! applied, however the frames arrived. Reference predictions ([`Causal`]): the first block
//! of a file with a model in `refs` starts them, and each block from there is predicted
//! with the snapshot segments of the blocks up to and including it ([`encode_at`] with a
//! `Causal`, the streamed sender; [`from_pbb`], a `.pbb` sent as itself, one block); the
//! receiver adds them back block by block in file order ([`Predictions`]). Other blocks
//! decode without the snapshot bytes.

use super::coder::{Coder, CoderOptions, Level};
use super::pbb::{self, PbbError};
use super::predict::{Causal, Predictor, RefModel};
use super::streams::{self, S_DBYTES, S_DZEROS, S_LITS, S_REFS};
use super::varint::{put_u64, Reader};
use super::{Blueprint, Segment, Source};

/// Bytes of the length prefix of every block.
pub const PREFIX: usize = 4;

/// What a decoder accepts per block.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body (compressed) in bytes.
    pub max_body: u64,
    /// Most raw spill bytes one block may expand to.
    pub max_spill: u64,
    /// Most segments in one block.
    pub max_segments: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 32 << 20,
            max_spill: 16 << 20,
            max_segments: 1 << 20,
        }
    }
}

/// How the encoder cuts blocks and compresses them.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// A block closes once it holds this many raw spill bytes (long raw segments are split).
    pub spill_per_block: u64,
    /// ...or this many segments...
    pub segs_per_block: usize,
    /// ...or covers this many file bytes (snapshot segments are not split: a block may cover
    /// more when one segment is longer).
    pub file_per_block: u64,
    /// The planner preset whose coders the streams get: `Fast` codes every stream with zstd
    /// at `level`; `Default` and `Max` try the coders `pfs plan --level` tries for each
    /// stream class (LZMA settings; see `coder::CoderOptions`) and keep the smallest.
    pub preset: Level,
    /// zstd level for every stream at the `Fast` preset (a stream that does not compress is
    /// stored).
    pub level: i32,
    /// Encoder threads (blocks are independent).
    pub threads: usize,
}

impl EncodeOptions {
    /// The block coding of a planner preset (`pfs send --level`): its coders; blocks as the
    /// defaults at `Fast`, of 1 MiB of spill at `Default` and `Max` (LZMA gains from longer
    /// streams where zstd level 1 does not: the libstd pair's `default` blocks took 0.1379
    /// of the file against 0.1420 in 256 KiB blocks, `cargo bench --bench producer` with
    /// `PFS_PRODUCER_LEVEL=default PFS_PRODUCER_SPILL_KIB=K`).
    pub fn for_level(preset: Level) -> Self {
        let d = EncodeOptions::default();
        EncodeOptions {
            preset,
            spill_per_block: match preset {
                Level::Fast => d.spill_per_block,
                Level::Default | Level::Max => 1 << 20,
            },
            ..d
        }
    }
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            // zstd level 1 in blocks of 256 KiB of spill. On the libstd release pair streamed
            // by `pfs send` level 3 in 1 MiB blocks took 884,351 B of blocks instead of
            // 934,557 (5.4% fewer) but the producer ran 10-15% slower (50-54 vs 58-60 MB/s)
            // and the send took 4-18 ms longer end to end in three interleaved runs at
            // 1 Gbit/s, where 50 KB is 0.4 ms of wire: the bytes pay only below about
            // 40 Mbit/s (docs/profile.md, "Block coding"). Level 1 with larger blocks saves
            // nothing. `--level default` and `max` code the blocks with LZMA instead.
            spill_per_block: 256 << 10,
            segs_per_block: 16_384,
            file_per_block: 4 << 20,
            preset: Level::Fast,
            level: 1,
            threads: crate::util::cores().min(4),
        }
    }
}

/// Why a block does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("packed block truncated: {0}")]
    Truncated(&'static str),
    #[error("packed block declares {what} = {value}, above the limit {limit}")]
    TooLarge {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("corrupt packed block: {0}")]
    Corrupt(String),
}

/// One decoded block: `file_len` bytes of file rebuilt by `segments` (which consume `spill`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub file_len: u64,
    pub segments: Vec<Segment>,
    pub spill: Vec<u8>,
    /// The reference model ([`super::predict::RefModel`], encoded) of the block that starts
    /// the file's predictions. `decode_body` adds no predictions to `spill`: that needs the
    /// snapshot bytes and the blocks before ([`Predictions::apply`]).
    pub refs: Vec<u8>,
}

impl Block {
    /// The block as a blueprint of its own range (file offsets relative to the block start),
    /// so `Blueprint::validate`/`placed` apply to it.
    pub fn into_blueprint(self, snapshot_id: [u8; 32]) -> Blueprint {
        Blueprint {
            snapshot_id,
            file_len: self.file_len,
            file_hash: [0; 32],
            segments: self.segments,
            spill: self.spill,
        }
    }
}

/// The receiving end of one file's reference predictions: the model, from the block that
/// carries one, then each block's predictions added back in file order ([`Causal`], the
/// same maps the sender predicted with).
#[derive(Default)]
pub struct Predictions(Option<Box<Causal>>);

impl Predictions {
    /// Add the predictions back into block `b`, decoded at file offset `base` of a file of
    /// `file_size` bytes against `snap` (after taking in its model if it carries one: the
    /// predictions start there). A model that does not decode, a second model, or a block
    /// not right after the last one is refused.
    pub fn apply(
        &mut self,
        b: &mut Block,
        snap: &[u8],
        base: u64,
        file_size: u64,
    ) -> Result<(), BlockError> {
        if !b.refs.is_empty() {
            if self.0.is_some() {
                return Err(BlockError::Corrupt(
                    "a second reference model for one file".into(),
                ));
            }
            let model = RefModel::decode(&b.refs, file_size)
                .map_err(|e| BlockError::Corrupt(e.to_string()))?;
            b.refs = Vec::new();
            if model.is_empty() {
                return Ok(());
            }
            self.0 = Some(Box::new(Causal::new(model, snap, base)));
        }
        let Some(c) = self.0.as_mut() else {
            return Ok(());
        };
        let Some(map) = c
            .extend(snap, &b.segments, base, b.file_len)
            .map_err(|_| BlockError::Corrupt("predicted blocks out of file order".into()))?
        else {
            return Ok(());
        };
        let p = c.predictor(snap, map);
        streams::predict_back_with(&p, &b.segments, base, &mut b.spill);
        Ok(())
    }
}

/// Encode one block's body (no length prefix): with the file's reference model `model` (in
/// the block the predictions start at) and the block's predictor `pred` ([`Causal`]).
fn encode_body(
    o: &EncodeOptions,
    base: u64,
    file_len: u64,
    segs: &[Segment],
    spill: &[u8],
    model: Option<&RefModel>,
    pred: Option<&Predictor<'_>>,
) -> Result<Vec<u8>, std::io::Error> {
    let raw = streams::split(segs, spill, base, model, pred);
    let co = CoderOptions {
        level: o.preset,
        x86: false,
        force: (o.preset == Level::Fast).then_some(Coder::Zstd { level: o.level }),
        code_filter: o.preset == Level::Fast,
        families: super::coder::Families::All,
        blocks: 1,
    };
    let coded = streams::code_all(&raw, &co)?;
    let mut out = Vec::with_capacity(coded.dir.len() + coded.data_len() + 20);
    put_u64(&mut out, file_len);
    put_u64(&mut out, segs.len() as u64);
    out.extend_from_slice(&coded.dir);
    coded.write_data(&mut out);
    Ok(out)
}

/// A block's extent in the blueprint, before encoding.
struct Cut {
    /// File offset of the block's first byte.
    start: u64,
    file_len: u64,
    segs: Vec<Segment>,
    spill: std::ops::Range<usize>,
}

/// End the block `cur` (push it to `out`) and start an empty one right after it.
fn close(out: &mut Vec<Cut>, cur: &mut Cut) {
    let spill = cur.spill.end;
    let next = Cut {
        start: cur.start + cur.file_len,
        file_len: 0,
        segs: Vec::new(),
        spill: spill..spill,
    };
    out.push(std::mem::replace(cur, next));
}

/// Split the blueprint into block extents. Raw segments and covers longer than the spill
/// budget are split; other segments never are.
fn cuts(bp: &Blueprint, base: u64, o: &EncodeOptions) -> Vec<Cut> {
    let mut out = Vec::new();
    let mut cur = Cut {
        start: base,
        file_len: 0,
        segs: Vec::new(),
        spill: 0..0,
    };
    let mut cur_spill = 0u64;
    let spill_cap = o.spill_per_block.max(1);
    for seg in &bp.segments {
        let mut seg = *seg;
        loop {
            // Raw bytes beyond this block's budget go to the next block.
            let mut rest = None;
            let spills = matches!(seg.src, Source::Raw | Source::Cover { .. });
            if spills && cur_spill + seg.len as u64 > spill_cap {
                let take = (spill_cap - cur_spill) as u32;
                if take > 0 {
                    rest = Some(match seg.src {
                        Source::Cover { off } => Segment {
                            len: seg.len - take,
                            src: Source::Cover {
                                off: off + take as u64,
                            },
                        },
                        _ => Segment {
                            len: seg.len - take,
                            src: Source::Raw,
                        },
                    });
                    seg.len = take;
                } else {
                    // the block is full: close it and retry with an empty one
                    close(&mut out, &mut cur);
                    cur_spill = 0;
                    continue;
                }
            }
            cur.file_len += seg.len as u64;
            if spills {
                cur_spill += seg.len as u64;
                cur.spill.end += seg.len as usize;
            }
            cur.segs.push(seg);
            if cur_spill >= spill_cap
                || cur.segs.len() >= o.segs_per_block.max(1)
                || cur.file_len >= o.file_per_block.max(1)
            {
                close(&mut out, &mut cur);
                cur_spill = 0;
            }
            match rest {
                Some(r) => seg = r,
                None => break,
            }
        }
    }
    if !cur.segs.is_empty() {
        out.push(cur);
    }
    out
}

/// Encode a validated blueprint as a packed stream. An empty file gives an empty stream.
pub fn encode(bp: &Blueprint, o: &EncodeOptions) -> Result<Vec<u8>, std::io::Error> {
    encode_at(bp, 0, o, None)
}

/// [`encode`] for a blueprint of the file bytes from `base` on (its snapshot and self-copy
/// offsets absolute, its segments' file positions counted from `base`). With `causal` (the
/// file's [`Causal`] state, whose blocks so far end at `base`, and the snapshot), each
/// block's differences are predicted ([`Causal::predictor`]) and the block at
/// [`Causal::start`] carries the model.
pub fn encode_at(
    bp: &Blueprint,
    base: u64,
    o: &EncodeOptions,
    causal: Option<(&mut Causal, &[u8])>,
) -> Result<Vec<u8>, std::io::Error> {
    let cuts = cuts(bp, base, o);
    let threads = o.threads.clamp(1, 16).min(cuts.len().max(1));
    let per = cuts.len().div_ceil(threads).max(1);
    // each block's map: the spans of every block before it and its own
    let (causal, snap) = match causal {
        Some((c, snap)) => {
            let mut maps = Vec::with_capacity(cuts.len());
            for cut in &cuts {
                let m = c
                    .extend(snap, &cut.segs, cut.start, cut.file_len)
                    .map_err(|_| std::io::Error::other("blocks predicted out of file order"))?;
                maps.push(m);
            }
            (Some((&*c, maps)), snap)
        }
        None => (None, &[][..]),
    };
    // the model goes in the block the predictions start at
    let model = causal.as_ref().map(|(c, _)| (c.start(), c.model()));
    let preds: Vec<Option<Predictor<'_>>> = match causal {
        Some((c, maps)) => maps
            .into_iter()
            .map(|m| m.map(|m| c.predictor(snap, m)))
            .collect(),
        None => cuts.iter().map(|_| None).collect(),
    };
    let body = |(c, p): (&Cut, &Option<Predictor<'_>>)| {
        let m = model.filter(|m| m.0 == c.start).map(|m| m.1);
        encode_body(
            o,
            c.start,
            c.file_len,
            &c.segs,
            &bp.spill[c.spill.clone()],
            m,
            p.as_ref(),
        )
    };
    let jobs: Vec<(&Cut, &Option<Predictor<'_>>)> = cuts.iter().zip(preds.iter()).collect();
    let bodies: Vec<Result<Vec<Vec<u8>>, std::io::Error>> = if threads == 1 {
        // one thread: this one (a small file's single block starts no thread)
        vec![jobs.iter().copied().map(body).collect()]
    } else {
        std::thread::scope(|s| {
            let hs: Vec<_> = jobs
                .chunks(per)
                .map(|group| s.spawn(move || group.iter().copied().map(body).collect()))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("block encoder panicked"))
                .collect()
        })
    };
    let mut out = Vec::new();
    for group in bodies {
        for b in group? {
            let n = u32::try_from(b.len())
                .map_err(|_| std::io::Error::other("packed block body above 4 GiB"))?;
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&b);
        }
    }
    Ok(out)
}

/// The blocks of `data` as raw bytes, every stream stored: the bytes [`encode`] makes of a
/// blueprint of raw segments when nothing compresses, built straight from `data` (one copy,
/// no coder trials). For bytes the planner's fast reject found random (the streamed sender's
/// pass-through).
pub fn encode_stored_raw(data: &[u8], o: &EncodeOptions) -> Vec<u8> {
    let cap = o.spill_per_block.clamp(1, u32::MAX as u64 / 2) as usize;
    let mut out = Vec::with_capacity(data.len() + data.len().div_ceil(cap) * 64);
    for chunk in data.chunks(cap) {
        let head = streams::stored_raw_head(chunk.len() as u64);
        let mut top = Vec::with_capacity(20);
        put_u64(&mut top, chunk.len() as u64);
        put_u64(&mut top, 1);
        let n = (top.len() + head.len() + chunk.len()) as u32;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&top);
        out.extend_from_slice(&head);
        out.extend_from_slice(chunk);
    }
    out
}

/// The body length declared by the prefix at the start of `stream`, checked against the
/// limits; `None` when fewer than [`PREFIX`] bytes are there.
pub fn body_len(stream: &[u8], lim: &Limits) -> Result<Option<u64>, BlockError> {
    let Some(p) = stream.get(..PREFIX) else {
        return Ok(None);
    };
    let n = u32::from_le_bytes(p.try_into().expect("4 bytes")) as u64;
    if n == 0 {
        return Err(BlockError::Corrupt("empty block body".into()));
    }
    if n > lim.max_body {
        return Err(BlockError::TooLarge {
            what: "body length",
            value: n,
            limit: lim.max_body,
        });
    }
    Ok(Some(n))
}

/// A v3 `.pbb` (whose header and checksum [`pbb::read_header`] accepts) as one block that
/// is the whole file: its coded streams as they are (no
/// re-encoding: a `max` file keeps its LZMA streams and its reference model, which the
/// receiver applies with its snapshot, [`Predictions`]). `None` for a
/// v1/v2 file and where the block would exceed `lim`.
pub fn from_pbb(bytes: &[u8], lim: &Limits) -> Option<Vec<u8>> {
    let h = pbb::read_header(bytes).ok()?;
    let dir = h.streams?;
    let spill = dir[streams::S_DBYTES].raw + dir[streams::S_LITS].raw;
    if h.file_len == 0
        || h.segments > lim.max_segments.min(h.file_len)
        || spill > lim.max_spill.min(h.file_len)
    {
        return None;
    }
    // the block's directory and data are the .pbb's (the same stream directory), after the
    // file length and record count
    let mut out = Vec::with_capacity(PREFIX + 20 + bytes.len());
    out.extend_from_slice(&[0; PREFIX]);
    put_u64(&mut out, h.file_len);
    put_u64(&mut out, h.segments);
    out.extend_from_slice(&bytes[pbb::HEADER_LEN_V3..bytes.len() - pbb::TRAILER_LEN]);
    let body = (out.len() - PREFIX) as u64;
    if body > lim.max_body {
        return None;
    }
    out[..PREFIX].copy_from_slice(&(body as u32).to_le_bytes());
    Some(out)
}

/// Decode one body (without its prefix) of the block that starts at file offset `base`.
/// `snap_len` bounds the snapshot ranges; self copies must read from before their absolute
/// position.
pub fn decode_body(
    body: &[u8],
    lim: &Limits,
    snap_len: u64,
    base: u64,
) -> Result<Block, BlockError> {
    let tr = |_| BlockError::Truncated("header");
    let mut r = Reader::new(body);
    let file_len = r.u64().map_err(tr)?;
    let nsegs = r.u64().map_err(tr)?;
    if file_len == 0 {
        return Err(BlockError::Corrupt("block covers no file bytes".into()));
    }
    let too = |what, value, limit| BlockError::TooLarge { what, value, limit };
    if nsegs > lim.max_segments.min(file_len) {
        return Err(too("segment count", nsegs, lim.max_segments.min(file_len)));
    }
    let spill_cap = lim.max_spill.min(file_len);
    let mut caps = streams::caps(nsegs, file_len);
    caps[S_DZEROS] = caps[S_DZEROS].min(spill_cap.saturating_add(1).saturating_mul(20));
    caps[S_DBYTES] = spill_cap;
    caps[S_LITS] = spill_cap;
    let dir = streams::read_dir(&mut r, &caps, None).map_err(|m| {
        if m.contains("truncated") {
            BlockError::Truncated("stream directory")
        } else {
            BlockError::Corrupt(m)
        }
    })?;
    let spill_len = dir[S_DBYTES].raw + dir[S_LITS].raw;
    if spill_len > spill_cap {
        return Err(too("spill length", spill_len, spill_cap));
    }
    let data = r.bytes(r.remaining()).expect("remaining bytes");
    let stored: u64 = dir.iter().map(|e| e.stored).sum();
    if (data.len() as u64) < stored {
        return Err(BlockError::Truncated("stream data"));
    }
    if data.len() as u64 > stored {
        return Err(BlockError::Corrupt("bytes after the stream data".into()));
    }
    let mut raw = streams::decode_all(&dir, data).map_err(BlockError::Corrupt)?;
    let (segments, spill) =
        streams::join(&mut raw, nsegs, base, file_len).map_err(|e| BlockError::Corrupt(e.0))?;
    let bp = Blueprint {
        snapshot_id: [0; 32],
        file_len,
        file_hash: [0; 32],
        segments,
        spill,
    };
    bp.validate_at(snap_len, base).map_err(|e| match e {
        PbbError::Invalid(m) => BlockError::Corrupt(m),
        e => BlockError::Corrupt(e.to_string()),
    })?;
    Ok(Block {
        file_len,
        segments: bp.segments,
        spill: bp.spill,
        refs: std::mem::take(&mut raw[S_REFS]),
    })
}

/// Decode a whole packed stream into a blueprint of `file_len` bytes (tests, tools).
pub fn decode_all(
    stream: &[u8],
    lim: &Limits,
    snapshot_id: [u8; 32],
    snap_len: u64,
    file_len: u64,
    file_hash: [u8; 32],
) -> Result<Blueprint, BlockError> {
    let mut at = 0usize;
    let mut bp = Blueprint {
        snapshot_id,
        file_len,
        file_hash,
        segments: Vec::new(),
        spill: Vec::new(),
    };
    let mut covered = 0u64;
    while at < stream.len() {
        let Some(n) = body_len(&stream[at..], lim)? else {
            return Err(BlockError::Truncated("length prefix"));
        };
        let body =
            stream
                .get(at + PREFIX..at + PREFIX + n as usize)
                .ok_or(BlockError::Truncated(
                    "body shorter than its prefix declares",
                ))?;
        let b = decode_body(body, lim, snap_len, covered)?;
        if !b.refs.is_empty() {
            return Err(BlockError::Corrupt(
                "the block predicts references from the snapshot; decode it with the snapshot bytes"
                    .into(),
            ));
        }
        covered += b.file_len;
        if covered > file_len {
            return Err(BlockError::Corrupt(format!(
                "blocks cover more than the file's {file_len} bytes"
            )));
        }
        bp.segments.extend(b.segments);
        bp.spill.extend(b.spill);
        at += PREFIX + n as usize;
    }
    if covered != file_len {
        return Err(BlockError::Corrupt(format!(
            "blocks cover {covered} bytes, the file has {file_len}"
        )));
    }
    Ok(bp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::coder::CoderKind;
    use crate::blueprint::Transform;
    use proptest::prelude::*;

    fn snap() -> Vec<u8> {
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect()
    }

    fn bp_of(segs: Vec<Segment>, spill_seed: u8) -> Blueprint {
        let raw: u64 = segs
            .iter()
            .filter(|s| matches!(s.src, Source::Raw | Source::Cover { .. }))
            .map(|s| s.len as u64)
            .sum();
        let spill: Vec<u8> = (0..raw)
            .map(|i| {
                if i % 7 == 0 {
                    spill_seed
                } else {
                    (i / 3) as u8
                }
            })
            .collect();
        Blueprint {
            snapshot_id: [9; 32],
            file_len: segs.iter().map(|s| s.len as u64).sum(),
            file_hash: [0; 32],
            segments: segs,
            spill,
        }
    }

    fn seg_strategy() -> impl Strategy<Value = Segment> {
        prop_oneof![
            (1u32..3000).prop_map(|len| Segment {
                len,
                src: Source::Raw
            }),
            (1u32..1000, 0u64..3000).prop_map(|(len, off)| Segment {
                len,
                src: Source::Cover { off }
            }),
            (1u32..1000, 0u64..3000, 0u8..3, any::<u8>()).prop_map(|(len, off, op, imm)| {
                let op = Transform::try_from(op).unwrap();
                Segment {
                    len,
                    src: Source::Snap {
                        op,
                        off,
                        imm: if op == Transform::Id { 0 } else { imm },
                    },
                }
            }),
        ]
    }

    fn small_opts() -> EncodeOptions {
        EncodeOptions {
            spill_per_block: 1000,
            segs_per_block: 5,
            file_per_block: 4000,
            preset: Level::Fast,
            level: 1,
            threads: 2,
        }
    }

    /// `stream` decoded as the blocks of `bp` (its id, length and hash) with the default
    /// limits.
    fn decoded(stream: &[u8], bp: &Blueprint, snap: &[u8]) -> Blueprint {
        decode_all(
            stream,
            &Limits::default(),
            bp.snapshot_id,
            snap.len() as u64,
            bp.file_len,
            bp.file_hash,
        )
        .unwrap()
    }

    /// The coder bytes of every stream that holds bytes, over all blocks of `stream`.
    fn coders_used(stream: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let n = u32::from_le_bytes(stream[at..at + PREFIX].try_into().unwrap()) as usize;
            let mut r = Reader::new(&stream[at + PREFIX..at + PREFIX + n]);
            r.u64().unwrap(); // file_len
            r.u64().unwrap(); // nsegs
            for _ in 0..streams::NSTREAMS {
                let coder = r.u8().unwrap();
                let raw = r.u64().unwrap();
                r.u64().unwrap(); // stored_len
                if raw > 0 {
                    out.push(coder);
                }
            }
            at += PREFIX + n;
        }
        out
    }

    #[test]
    fn blocks_take_the_coders_of_their_preset_and_decode_back() {
        let snap = snap();
        // covers and raw runs long enough that their streams compress
        let segs: Vec<Segment> = (0..60u64)
            .map(|i| Segment {
                len: 700 + (i as u32 * 37) % 500,
                src: if i % 3 == 0 {
                    Source::Raw
                } else {
                    Source::Cover { off: i * 41 % 3000 }
                },
            })
            .collect();
        let bp = bp_of(segs, 5);
        for preset in [Level::Fast, Level::Default, Level::Max] {
            let o = EncodeOptions::for_level(preset);
            assert_eq!(o.preset, preset);
            let s = encode(&bp, &o).unwrap();
            let coders = coders_used(&s);
            assert!(!coders.is_empty());
            let zstd = coders
                .iter()
                .filter(|&&c| c == CoderKind::Zstd as u8)
                .count();
            let lzma = coders
                .iter()
                .filter(|&&c| c == CoderKind::Lzma as u8 || c == CoderKind::Xz as u8)
                .count();
            match preset {
                // every stream zstd, with the branch filter or not (or stored)
                Level::Fast => assert_eq!(lzma, 0, "{coders:?}"),
                // LZMA wins the compressible streams at default (its only coder)
                Level::Default => assert!(zstd == 0 && lzma > 0, "{coders:?}"),
                Level::Max => assert!(lzma > 0, "{coders:?}"),
            }
            let back = decoded(&s, &bp, &snap);
            assert_eq!(rebuild(&back, &snap), rebuild(&bp, &snap), "{preset:?}");
        }
    }

    #[test]
    fn fast_blocks_filter_literals_that_look_like_code() {
        let snap = snap();
        let code = crate::blueprint::bcj::synthetic_code(600_000);
        let bp = Blueprint {
            snapshot_id: [1; 32],
            file_len: code.len() as u64,
            file_hash: [0; 32],
            segments: crate::blueprint::raw_segments(code.len() as u64),
            spill: code.clone(),
        };
        let s = encode(&bp, &EncodeOptions::for_level(Level::Fast)).unwrap();
        // three blocks of 256 KiB of spill at most, each with its literals filtered (the
        // columns of its raw segments are too short to code)
        let coders = coders_used(&s);
        let filtered = coders
            .iter()
            .filter(|&&c| c == CoderKind::ZstdX86 as u8)
            .count();
        assert_eq!(filtered, 3, "{coders:?}");
        let back = decoded(&s, &bp, &snap);
        assert_eq!(rebuild(&back, &snap), code);
    }

    /// Segments equal after merging adjacent raw pieces (the encoder splits long raw runs).
    fn rebuild(bp: &Blueprint, snap: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; bp.file_len as usize];
        bp.rebuild_into(snap, &mut out).unwrap();
        out
    }

    #[test]
    fn stored_raw_blocks_are_what_encode_makes_of_random_bytes_and_decode_back() {
        let snap = snap();
        for (n, o) in [
            (2500, small_opts()),
            (1000, small_opts()),
            ((700 << 10) + 13, EncodeOptions::default()),
            (1, EncodeOptions::default()),
        ] {
            let data = crate::prepare::noise(n as u64 * 31 + 7, n);
            let bp = Blueprint {
                snapshot_id: [9; 32],
                file_len: n as u64,
                file_hash: [0; 32],
                segments: crate::blueprint::raw_segments(n as u64),
                spill: data.clone(),
            };
            let stored = encode_stored_raw(&data, &o);
            assert_eq!(stored, encode(&bp, &o).unwrap(), "{n} bytes");
            let back = decode_all(
                &stored,
                &Limits::default(),
                [9; 32],
                snap.len() as u64,
                n as u64,
                [0; 32],
            )
            .unwrap();
            assert_eq!(rebuild(&back, &snap), data);
        }
        assert!(encode_stored_raw(&[], &EncodeOptions::default()).is_empty());
    }

    proptest! {
        #[test]
        fn round_trip(segs in proptest::collection::vec(seg_strategy(), 0..40), seed: u8) {
            let snap = snap();
            let bp = bp_of(segs, seed);
            for o in [small_opts(), EncodeOptions::default()] {
                let s = encode(&bp, &o).unwrap();
                let back = decode_all(&s, &Limits::default(), bp.snapshot_id, snap.len() as u64,
                                      bp.file_len, bp.file_hash).unwrap();
                prop_assert_eq!(&back.spill, &bp.spill);
                prop_assert_eq!(rebuild(&back, &snap), rebuild(&bp, &snap));
            }
        }

        #[test]
        fn any_truncation_or_bit_flip_is_refused_or_harmless(
            segs in proptest::collection::vec(seg_strategy(), 1..20),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let snap = snap();
            let bp = bp_of(segs, 1);
            let s = encode(&bp, &small_opts()).unwrap();
            let lim = Limits::default();
            let dec = |x: &[u8]| decode_all(x, &lim, bp.snapshot_id, snap.len() as u64, bp.file_len, bp.file_hash);
            let c = cut.index(s.len());
            prop_assert!(dec(&s[..c]).is_err(), "truncated at {} of {} decoded", c, s.len());
            let mut f = s.clone();
            f[flip.index(s.len())] ^= 1 << bit;
            // A flip may land where it changes nothing decodable (e.g. zstd's checksum-free
            // literal bytes change the spill); it must never panic, and an Ok result is a
            // structurally valid blueprint of the right length.
            if let Ok(b) = dec(&f) {
                prop_assert_eq!(b.file_len, bp.file_len);
                prop_assert!(b.validate(snap.len() as u64).is_ok());
            }
        }
    }

    #[test]
    fn long_raw_segments_are_split_and_snapshot_ones_are_not() {
        let bp = bp_of(
            vec![
                Segment {
                    len: 2500,
                    src: Source::Raw,
                },
                Segment {
                    len: 10_000,
                    src: Source::Snap {
                        op: Transform::Id,
                        off: 0,
                        imm: 0,
                    },
                },
            ],
            0,
        );
        let c = cuts(&bp, 0, &small_opts());
        let lens: Vec<u64> = c.iter().map(|c| c.file_len).collect();
        assert_eq!(lens, vec![1000, 1000, 500 + 10_000]);
        assert_eq!(c.iter().map(|c| c.spill.len()).sum::<usize>(), 2500);
    }

    /// A body with the given header, directory entries (coder, raw, stored) and data.
    fn body(file_len: u64, nsegs: u64, dir: &[(u8, u64, u64)], data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        put_u64(&mut b, file_len);
        put_u64(&mut b, nsegs);
        for &(c, r, st) in dir {
            b.push(c);
            put_u64(&mut b, r);
            put_u64(&mut b, st);
        }
        b.extend_from_slice(data);
        b
    }

    fn empty_dir() -> Vec<(u8, u64, u64)> {
        vec![(0, 0, 0); streams::NSTREAMS]
    }

    #[test]
    fn absurd_lengths_are_refused_before_allocation() {
        let lim = Limits::default();
        // prefix above the body limit
        let s = u32::MAX.to_le_bytes();
        assert!(matches!(
            body_len(&s, &lim),
            Err(BlockError::TooLarge {
                what: "body length",
                ..
            })
        ));
        let e = decode_body(&body(10, 11, &empty_dir(), &[]), &lim, 100, 0).unwrap_err();
        assert!(
            matches!(
                e,
                BlockError::TooLarge {
                    what: "segment count",
                    ..
                }
            ),
            "{e}"
        );
        // a column declaring more than its records can need
        let mut d = empty_dir();
        d[1] = (1, 1 << 40, 10);
        let e = decode_body(&body(u64::MAX, 1, &d, &[0; 10]), &lim, 100, 0).unwrap_err();
        assert!(e.to_string().contains("stream lens declares"), "{e}");
        // literals beyond the spill limit
        let mut d = empty_dir();
        d[S_LITS] = (1, 1 << 40, 10);
        let e = decode_body(&body(u64::MAX, 1, &d, &[0; 10]), &lim, 100, 0).unwrap_err();
        assert!(e.to_string().contains("stream lits declares"), "{e}");
        // differences plus literals beyond the file
        let mut d = empty_dir();
        d[S_DBYTES] = (0, 60, 60);
        d[S_LITS] = (0, 60, 60);
        let e = decode_body(&body(100, 1, &d, &[0; 120]), &lim, 100, 0).unwrap_err();
        assert!(e.to_string().contains("spill length"), "{e}");
        // a refs stream above its 1 MiB cap
        let mut d = empty_dir();
        d[S_REFS] = (0, (1 << 20) + 1, 1);
        let e = decode_body(&body(100, 1, &d, &[0; 1]), &lim, 100, 0).unwrap_err();
        assert!(e.to_string().contains("stream refs"), "{e}");
        // an unknown coder
        let mut d = empty_dir();
        d[0] = (9, 1, 1);
        let e = decode_body(&body(100, 1, &d, &[0; 1]), &lim, 100, 0).unwrap_err();
        assert!(e.to_string().contains("unknown coder 9"), "{e}");
        // data shorter or longer than the directory declares
        let mut d = empty_dir();
        d[0] = (0, 1, 1);
        d[1] = (0, 1, 1);
        let e = decode_body(&body(100, 1, &d, &[0; 1]), &lim, 100, 0).unwrap_err();
        assert_eq!(e, BlockError::Truncated("stream data"));
        let e = decode_body(&body(100, 1, &d, &[0; 3]), &lim, 100, 0).unwrap_err();
        assert!(e.to_string().contains("bytes after"), "{e}");
        let e = decode_body(&body(0, 0, &empty_dir(), &[]), &lim, 100, 0).unwrap_err();
        assert!(e.to_string().contains("no file bytes"), "{e}");
        let e = decode_body(&[0x80], &lim, 100, 0).unwrap_err();
        assert_eq!(e, BlockError::Truncated("header"));
        let e = decode_body(&body(100, 1, &empty_dir()[..3], &[]), &lim, 100, 0).unwrap_err();
        assert_eq!(e, BlockError::Truncated("stream directory"));
    }

    #[test]
    fn a_stream_expanding_beyond_its_declared_size_is_refused() {
        let z = zstd::bulk::compress(&[7u8; 100_000], 1).unwrap();
        let mut d = empty_dir();
        d[S_LITS] = (1, 50, z.len() as u64);
        let e = decode_body(&body(100, 1, &d, &z), &Limits::default(), 100, 0).unwrap_err();
        assert!(e.to_string().contains("stream lits"), "{e}");
        assert!(
            e.to_string().contains("50+") || e.to_string().contains("declared"),
            "{e}"
        );
    }

    #[test]
    fn covers_are_split_at_the_spill_budget_and_rebuild() {
        let snap = snap();
        let bp = bp_of(
            vec![
                Segment {
                    len: 2500,
                    src: Source::Cover { off: 100 },
                },
                Segment {
                    len: 300,
                    src: Source::Raw,
                },
            ],
            5,
        );
        let c = cuts(&bp, 0, &small_opts());
        let lens: Vec<u64> = c.iter().map(|c| c.file_len).collect();
        assert_eq!(lens, vec![1000, 1000, 800]);
        let s = encode(&bp, &small_opts()).unwrap();
        let back = decoded(&s, &bp, &snap);
        assert_eq!(rebuild(&back, &snap), rebuild(&bp, &snap));
        // a cover reaching past the snapshot end is refused
        let e =
            decode_all(&s, &Limits::default(), [9; 32], 2000, bp.file_len, [0; 32]).unwrap_err();
        assert!(e.to_string().contains("beyond its end"), "{e}");
    }

    #[test]
    fn snapshot_ranges_outside_the_snapshot_are_refused() {
        let bp = bp_of(
            vec![Segment {
                len: 100,
                src: Source::Snap {
                    op: Transform::Id,
                    off: 50,
                    imm: 0,
                },
            }],
            0,
        );
        let s = encode(&bp, &EncodeOptions::default()).unwrap();
        let e = decode_all(&s, &Limits::default(), [9; 32], 120, 100, [0; 32]).unwrap_err();
        assert!(e.to_string().contains("beyond its end"), "{e}");
    }

    /// Window by window with predictions ([`Causal`]): covers over code full of calls whose
    /// targets moved, cut into many blocks on two threads, the first window without
    /// predictions (as a window sent raw is) and the model in the first block of the second.
    /// Decoded block by block in file order with [`Predictions`], every block gives back its
    /// segments and differences; the predictions changed the streams (the same blueprint
    /// without them codes other bytes); a block skipped is refused.
    #[test]
    fn blocks_predicted_with_the_segments_so_far_decode_back() {
        let mut rng = crate::pob::prng::SplitMix64::new(7);
        let n = 256usize << 10;
        let mut snap = vec![0x90u8; n];
        for i in (0..n - 5).step_by(16) {
            snap[i] = 0xE8;
            let disp = (rng.next_u64() % 4096) as i32 - 2048;
            snap[i + 1..i + 5].copy_from_slice(&disp.to_le_bytes());
        }
        let model = crate::blueprint::predict::code_model(n as u64, 0x10000, 0x10000);
        // covers of 1..4 KiB, each shifted back by 0..63 bytes, and raw runs
        let mut segs = Vec::new();
        let mut q = 0usize;
        while q < n {
            let len = (1 + rng.next_u64() as usize % 4096).min(n - q);
            let src = if rng.next_u64().is_multiple_of(6) {
                Source::Raw
            } else {
                Source::Cover {
                    off: (q as u64).saturating_sub(rng.next_u64() % 64),
                }
            };
            segs.push(Segment {
                len: len as u32,
                src,
            });
            q += len;
        }
        let spilled: usize = segs
            .iter()
            .filter(|s| !matches!(s.src, Source::Snap { .. }))
            .map(|s| s.len as usize)
            .sum();
        let spill: Vec<u8> = (0..spilled)
            .map(|_| {
                if rng.next_u64().is_multiple_of(4) {
                    rng.next_u64() as u8
                } else {
                    0
                }
            })
            .collect();
        // two windows: the first half of the segments, then the rest
        let half = segs.len() / 2;
        let (a_len, a_spill) = segs[..half].iter().fold((0u64, 0usize), |(l, sp), s| {
            let spills = !matches!(s.src, Source::Snap { .. });
            (
                l + s.len as u64,
                sp + if spills { s.len as usize } else { 0 },
            )
        });
        let window = |segments: &[Segment], spill: &[u8], len: u64| Blueprint {
            snapshot_id: [1; 32],
            file_len: len,
            file_hash: [0; 32],
            segments: segments.to_vec(),
            spill: spill.to_vec(),
        };
        let a = window(&segs[..half], &spill[..a_spill], a_len);
        let b = window(&segs[half..], &spill[a_spill..], n as u64 - a_len);
        let o = EncodeOptions {
            spill_per_block: 8 << 10,
            threads: 2,
            ..EncodeOptions::default()
        };
        let mut causal = Causal::new(model.clone(), &snap, a_len);
        let mut stream = encode_at(&a, 0, &o, None).unwrap();
        let first_b = stream.len();
        stream.extend(encode_at(&b, a_len, &o, Some((&mut causal, &snap))).unwrap());
        let plain = [
            encode_at(&a, 0, &o, None).unwrap(),
            encode_at(&b, a_len, &o, None).unwrap(),
        ]
        .concat();
        assert_ne!(stream, plain, "the predictions changed nothing");
        // decode block by block, in file order
        let lim = Limits::default();
        let mut bodies = Vec::new();
        let mut at = 0usize;
        while at < stream.len() {
            let k = body_len(&stream[at..], &lim).unwrap().unwrap() as usize;
            bodies.push((at, &stream[at + PREFIX..at + PREFIX + k]));
            at += PREFIX + k;
        }
        assert!(bodies.len() > 8, "{} blocks", bodies.len());
        let mut p = Predictions::default();
        let (mut base, mut got_segs, mut got_spill) = (0u64, Vec::new(), Vec::new());
        let mut skipped = None;
        for (k, &(at, body)) in bodies.iter().enumerate() {
            let mut blk = decode_body(body, &lim, n as u64, base).unwrap();
            assert_eq!(
                !blk.refs.is_empty(),
                at == first_b,
                "the model rides in block {k} only"
            );
            if k == bodies.len() - 2 {
                // a copy of the state that skips this block
                let mut q = Predictions(p.0.as_ref().map(|c| Box::new(Causal::clone(c))));
                let next = decode_body(bodies[k + 1].1, &lim, n as u64, base + blk.file_len);
                let mut next = next.unwrap();
                skipped = Some(q.apply(&mut next, &snap, base + blk.file_len, n as u64));
            }
            p.apply(&mut blk, &snap, base, n as u64).unwrap();
            base += blk.file_len;
            got_segs.extend(blk.segments);
            got_spill.extend(blk.spill);
        }
        assert_eq!(base, n as u64);
        let whole = window(&segs, &spill, n as u64);
        let got = window(&got_segs, &got_spill, n as u64);
        assert!(
            rebuild(&got, &snap) == rebuild(&whole, &snap),
            "the file decoded back"
        );
        let e = skipped.unwrap().unwrap_err();
        assert!(e.to_string().contains("out of file order"), "{e}");
    }

    /// A v3 `.pbb` with a reference model (this test binary as the old image in a snapshot,
    /// a copy of it with every 97th byte of its first half past 64 KiB changed under one
    /// cover) becomes one block that
    /// keeps the `.pbb`'s streams: decoded at the file's start and predicted back with the
    /// snapshot it is the blueprint `unpack_with` reads. A damaged file or one whose block
    /// would pass the limits makes no block. A second model for the file is refused, and
    /// so is any model by `decode_all`, which has no snapshot bytes.
    #[test]
    fn a_pbb_becomes_one_block_with_its_model() {
        let Ok(exe) = std::fs::read("/proc/self/exe") else {
            eprintln!("skipped: /proc/self/exe unreadable");
            return;
        };
        if !(exe.len() > 20 && exe[..4] == *b"\x7fELF" && exe[4] == 2 && exe[18] == 62) {
            eprintln!("skipped: this test binary is not x86-64 ELF");
            return;
        }
        let mut snap = vec![0u8; 4096];
        snap.extend_from_slice(&exe);
        let mut file = exe.clone();
        // between the program headers and the section headers, which stay parseable
        let n = file.len();
        for b in file[1 << 16..n / 2].iter_mut().step_by(97) {
            *b ^= 0x21;
        }
        let spill: Vec<u8> = file
            .iter()
            .zip(&exe)
            .map(|(f, o)| f.wrapping_sub(*o))
            .collect();
        let bp = Blueprint {
            snapshot_id: [5; 32],
            file_len: file.len() as u64,
            file_hash: *blake3::hash(&file).as_bytes(),
            segments: vec![Segment {
                len: file.len() as u32,
                src: Source::Cover { off: 4096 },
            }],
            spill,
        };
        let opts = super::super::pbb::PackOptions::for_level(Level::Fast);
        let (pbb, _) = super::super::pbb::pack_v3(&bp, Some((&file, &snap)), &opts).unwrap();
        let want = super::super::pbb::unpack_with(&pbb, &[5; 32], &snap).unwrap();
        let lim = Limits {
            max_spill: 1 << 30,
            max_segments: 1 << 20,
            max_body: 1 << 30,
        };
        let stream = from_pbb(&pbb, &lim).expect("a v3 file");
        let body = &stream[PREFIX..];
        assert_eq!(body_len(&stream, &lim).unwrap(), Some(body.len() as u64));
        let mut b = decode_body(body, &lim, snap.len() as u64, 0).unwrap();
        assert!(!b.refs.is_empty(), "the model travels");
        let mut again = b.clone();
        let mut p = Predictions::default();
        p.apply(&mut b, &snap, 0, bp.file_len).unwrap();
        assert_eq!((b.segments, b.spill), (want.segments, want.spill));
        // one model per file: a second is refused
        let e = p
            .apply(&mut again, &snap, bp.file_len, 2 * bp.file_len)
            .unwrap_err();
        assert!(e.to_string().contains("second reference model"), "{e}");
        assert!(decode_all(
            &stream,
            &lim,
            [5; 32],
            snap.len() as u64,
            bp.file_len,
            [0; 32]
        )
        .is_err());
        // a damaged file, or a block over the limits: none
        let mut bad = pbb.clone();
        bad[100] ^= 1;
        assert!(from_pbb(&bad, &lim).is_none());
        let tight = Limits {
            max_body: body.len() as u64 - 1,
            ..lim
        };
        assert!(from_pbb(&pbb, &tight).is_none());
    }

    #[test]
    fn self_copies_reach_back_across_blocks_and_never_forward() {
        // raw 3000 | self copy of 0.. (2000) | snap | overlapping self copy (period 3)
        let segs = vec![
            Segment {
                len: 3000,
                src: Source::Raw,
            },
            Segment {
                len: 2000,
                src: Source::SelfCopy { off: 10 },
            },
            Segment {
                len: 500,
                src: Source::Snap {
                    op: Transform::Id,
                    off: 7,
                    imm: 0,
                },
            },
            Segment {
                len: 900,
                src: Source::SelfCopy { off: 5497 },
            },
        ];
        let bp = bp_of(segs, 3);
        bp.validate(4096).unwrap();
        let stream = encode(&bp, &small_opts()).unwrap();
        let back = decode_all(
            &stream,
            &Limits::default(),
            [9; 32],
            4096,
            bp.file_len,
            [0; 32],
        )
        .unwrap();
        // (the 3000-byte raw run is split over three blocks; the rest comes back unchanged)
        assert_eq!(back.segments[3..], bp.segments[1..]);
        // the same body decoded as if its block started earlier: the copy would read from
        // its own position or after it, which is refused
        let last = {
            let mut at = 0usize;
            let mut last = 0usize;
            while at < stream.len() {
                last = at;
                at += PREFIX
                    + body_len(&stream[at..], &Limits::default())
                        .unwrap()
                        .unwrap() as usize;
            }
            last
        };
        let body = &stream[last + PREFIX..];
        assert!(decode_body(body, &Limits::default(), 4096, 5500).is_ok());
        let e = decode_body(body, &Limits::default(), 4096, 0).unwrap_err();
        assert!(e.to_string().contains("self"), "{e}");
    }
}
