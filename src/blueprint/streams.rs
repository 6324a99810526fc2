//! The separate streams of `.pbb` v3 and of packed blocks: a blueprint split into table
//! columns, cover differences, literals and the reference model, each stored with the coder
//! that measures smallest for it ([`super::coder`]).
//!
//! | # | stream | holds |
//! |--:|--------|-------|
//! | 0 | `ops`   | one byte per record: 0 raw, 1 id, 2 xor, 3 add, 5 self, 6 cover |
//! | 1 | `lens`  | LEB128 length per record |
//! | 2 | `offs`  | per id/xor/add/cover record, zig-zag LEB128 of its snapshot offset minus the one predicted by the previous snapshot record's diagonal (`file_pos + prev_off - prev_file_pos`) |
//! | 3 | `imms`  | one byte per xor/add record |
//! | 4 | `backs` | per self record, LEB128 distance back to its source (>= 1) |
//! | 5 | `dzeros` | the covers' difference bytes (in record order, minus the reference predictions) as runs: per run, LEB128 zero bytes then LEB128 nonzero bytes |
//! | 6 | `dbytes` | the nonzero difference bytes of those runs |
//! | 7 | `lits`  | the raw records' bytes in record order |
//! | 8 | `refs`  | the reference model ([`super::predict::RefModel`]; empty: no predictions) |
//!
//! Differences are mostly zeros: as runs and nonzero bytes they compress to the same size as
//! the plain bytes under LZMA, three times faster (libstd release pair).
//!
//! The directory in front of the data is, per stream in this order: coder u8, raw length
//! LEB128, stored length LEB128.

use super::coder::{self, Coder, CoderOptions, Level, StreamClass};
use super::predict::{AddressMap, Predictor, RefModel};
use super::varint::{put_i64, put_u64, Reader};
use super::{Segment, Source, Transform};

pub const NSTREAMS: usize = 9;
pub const NAMES: [&str; NSTREAMS] = [
    "ops", "lens", "offs", "imms", "backs", "dzeros", "dbytes", "lits", "refs",
];
const CLASSES: [StreamClass; NSTREAMS] = [
    StreamClass::Column,
    StreamClass::Column,
    StreamClass::Column,
    StreamClass::Column,
    StreamClass::Column,
    StreamClass::Column,
    StreamClass::Diff,
    StreamClass::Literal,
    StreamClass::Column,
];
pub const S_OPS: usize = 0;
pub const S_LENS: usize = 1;
pub const S_OFFS: usize = 2;
pub const S_IMMS: usize = 3;
pub const S_BACKS: usize = 4;
pub const S_DZEROS: usize = 5;
pub const S_DBYTES: usize = 6;
pub const S_LITS: usize = 7;
pub const S_REFS: usize = 8;
/// The streams that carry spill bytes (differences and literals); the rest is the table.
pub const SPILL_STREAMS: [usize; 3] = [S_DZEROS, S_DBYTES, S_LITS];

/// Differences as runs: `(zeros, nonzero)` LEB128 pairs and the nonzero bytes. The last pair
/// may have no nonzero bytes; no pair is `(0, 0)`.
pub fn sparse(d: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut runs, mut bytes) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < d.len() {
        let j = crate::util::next_nonzero(d, i);
        let e = crate::util::next_zero(d, j);
        put_u64(&mut runs, (j - i) as u64);
        put_u64(&mut runs, (e - j) as u64);
        bytes.extend_from_slice(&d[j..e]);
        i = e;
    }
    (runs, bytes)
}

/// Reads differences back from [`sparse`] runs, `n` bytes at a time.
struct Sparse<'a> {
    runs: Reader<'a>,
    bytes: &'a [u8],
    at: usize,
    zeros: u64,
    nonzero: u64,
}

impl<'a> Sparse<'a> {
    fn new(runs: &'a [u8], bytes: &'a [u8]) -> Self {
        Sparse {
            runs: Reader::new(runs),
            bytes,
            at: 0,
            zeros: 0,
            nonzero: 0,
        }
    }

    fn take(&mut self, mut n: usize, out: &mut Vec<u8>) -> Result<(), &'static str> {
        while n > 0 {
            if self.zeros == 0 && self.nonzero == 0 {
                self.zeros = self.runs.u64().map_err(|_| "dzeros stream too short")?;
                self.nonzero = self.runs.u64().map_err(|_| "dzeros stream too short")?;
                if self.zeros == 0 && self.nonzero == 0 {
                    return Err("empty difference run");
                }
            }
            if self.zeros > 0 {
                let z = self.zeros.min(n as u64) as usize;
                out.resize(out.len() + z, 0);
                self.zeros -= z as u64;
                n -= z;
                continue;
            }
            let k = self.nonzero.min(n as u64) as usize;
            let b = self
                .bytes
                .get(self.at..self.at + k)
                .ok_or("dbytes stream too short")?;
            if b.contains(&0) {
                return Err("a zero byte inside a nonzero difference run");
            }
            out.extend_from_slice(b);
            self.at += k;
            self.nonzero -= k as u64;
            n -= k;
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.zeros == 0
            && self.nonzero == 0
            && self.runs.remaining() == 0
            && self.at == self.bytes.len()
    }
}

/// Largest `refs` stream a reader accepts.
pub const MAX_REFS: u64 = 1 << 20;

const OP_RAW: u8 = 0;
const OP_ID: u8 = 1;
const OP_XOR: u8 = 2;
const OP_ADD: u8 = 3;
const OP_SELF: u8 = 5;
const OP_COVER: u8 = 6;

/// A stream set before coding.
pub type Raw = [Vec<u8>; NSTREAMS];

/// Split segments (starting at file offset `base`) and their spill into raw streams. With a
/// predictor, its predictions are subtracted from the difference bytes. A spill shorter than
/// the segments need gives shorter streams (a reader refuses them; tests forge such files).
pub fn split(
    segments: &[Segment],
    spill: &[u8],
    base: u64,
    model: Option<&RefModel>,
    predictor: Option<&Predictor<'_>>,
) -> Raw {
    let (mut s, diffs, whole) = split_records(segments, spill, base, model);
    let [.., dzeros, dbytes, _, _] = &mut s;
    split_diffs(
        dzeros,
        dbytes,
        diffs,
        segments,
        base,
        predictor.filter(|_| whole),
    );
    s
}

/// [`split`]'s first pass: every stream but `dzeros` and `dbytes` (left empty), the
/// covers' difference bytes as they are, and whether the segments took the spill exactly
/// (predictions are applied only then).
fn split_records(
    segments: &[Segment],
    spill: &[u8],
    base: u64,
    model: Option<&RefModel>,
) -> (Raw, Vec<u8>, bool) {
    let mut s: Raw = Default::default();
    let (mut lits, mut covered) = (0usize, 0usize);
    for seg in segments {
        match seg.src {
            Source::Raw => lits += seg.len as usize,
            Source::Cover { .. } => covered += seg.len as usize,
            _ => {}
        }
    }
    s[S_LITS] = crate::bigbuf::with_capacity(lits.min(spill.len()));
    let mut diffs = Vec::with_capacity(covered.min(spill.len()));
    let mut file_pos = base as i64;
    let mut delta = 0i64;
    let mut sp = 0usize;
    for seg in segments {
        let n = seg.len as usize;
        let op = match seg.src {
            Source::Raw => OP_RAW,
            Source::Snap { op, .. } => match op {
                Transform::Id => OP_ID,
                Transform::Xor => OP_XOR,
                Transform::Add => OP_ADD,
            },
            Source::SelfCopy { .. } => OP_SELF,
            Source::Cover { .. } => OP_COVER,
        };
        s[S_OPS].push(op);
        put_u64(&mut s[S_LENS], seg.len as u64);
        match seg.src {
            Source::Snap { op, off, imm } => {
                put_i64(&mut s[S_OFFS], off as i64 - (file_pos + delta));
                delta = off as i64 - file_pos;
                if op != Transform::Id {
                    s[S_IMMS].push(imm);
                }
            }
            Source::Cover { off } => {
                put_i64(&mut s[S_OFFS], off as i64 - (file_pos + delta));
                delta = off as i64 - file_pos;
                diffs.extend_from_slice(spill_part(spill, sp, n));
                sp += n;
            }
            Source::SelfCopy { off } => put_u64(&mut s[S_BACKS], file_pos as u64 - off),
            Source::Raw => {
                s[S_LITS].extend_from_slice(spill_part(spill, sp, n));
                sp += n;
            }
        }
        file_pos += n as i64;
    }
    if let Some(m) = model {
        s[S_REFS] = m.encode();
    }
    (s, diffs, sp == spill.len())
}

/// [`split`]'s second pass: the predictions subtracted from `diffs`, then the runs and
/// nonzero bytes.
fn split_diffs(
    dzeros: &mut Vec<u8>,
    dbytes: &mut Vec<u8>,
    mut diffs: Vec<u8>,
    segments: &[Segment],
    base: u64,
    predictor: Option<&Predictor<'_>>,
) {
    if let Some(p) = predictor {
        p.apply(segments, base, &mut diffs, false);
    }
    (*dzeros, *dbytes) = sparse(&diffs);
}

/// [`split`] then [`code_all`], the same streams coded the same way, with the literal
/// stream coded on its own thread while the differences are predicted and cut into runs
/// (on two cores, `pfs plan`'s packing otherwise left one idle through those passes).
/// Where the literals' block split depends on the difference streams' sizes, the passes
/// run one after the other as in [`split`] and [`code_all`].
pub fn split_and_code<'a>(
    raw: &'a mut Raw,
    segments: &[Segment],
    spill: &[u8],
    base: u64,
    model: Option<&RefModel>,
    predictor: Option<&Predictor<'_>>,
    o: &CoderOptions,
) -> std::io::Result<Coded<'a>> {
    let (first, diffs, whole) = split_records(segments, spill, base, model);
    let predictor = predictor.filter(|_| whole);
    *raw = first;
    let known: usize = raw.iter().map(|d| d.len()).sum();
    let lits_len = raw[S_LITS].len();
    // the literals' coding is fixed before the differences exist when the stream is too
    // short to be split into blocks, or cannot be two thirds of the bytes whatever the
    // differences come to; and threads pay only past [`inline_below`] bytes
    let fixed = lits_len < SPLIT_MIN || lits_len * 3 < known * 2;
    if !fixed || known < inline_below(o) || lits_len < 64 {
        let [.., dzeros, dbytes, _, _] = &mut *raw;
        split_diffs(dzeros, dbytes, diffs, segments, base, predictor);
        return code_all(raw, o);
    }
    let [ops, lens, offs, imms, backs, dzeros, dbytes, lits, refs] = raw;
    let lits: &'a Vec<u8> = lits;
    let early = std::thread::scope(|sc| {
        let h = sc.spawn(|| code_one(lits, StreamClass::Literal, 1, o));
        split_diffs(dzeros, dbytes, diffs, segments, base, predictor);
        h.join().expect("stream coder panicked")
    });
    let all: [&'a [u8]; NSTREAMS] = [ops, lens, offs, imms, backs, dzeros, dbytes, lits, refs];
    code_streams(all, Some((S_LITS, early)), o)
}

fn spill_part(spill: &[u8], at: usize, n: usize) -> &[u8] {
    let from = at.min(spill.len());
    &spill[from..(at + n).min(spill.len())]
}

/// Why streams do not join into segments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JoinError(pub String);

/// The inverse of [`split`]: `records` segments starting at file offset `base`, covering at
/// most `file_len` bytes, and their spill. Checks the columns against each other and the
/// covers and raw records against the difference and literal streams (so the spill never
/// grows past `file_len`); the caller validates the segments against the snapshot (and must
/// do so before [`predict_back`]).
///
/// Without covers (no difference bytes) the spill is the literal stream itself: it is moved
/// out of `s` (left empty) instead of copied.
pub fn join(
    s: &mut Raw,
    records: u64,
    base: u64,
    file_len: u64,
) -> Result<(Vec<Segment>, Vec<u8>), JoinError> {
    let bad = |m: &str| JoinError(format!("segment table: {m}"));
    if s[S_OPS].len() as u64 != records {
        return Err(bad("record count does not match the ops stream"));
    }
    let (mut lens, mut offs, mut imms, mut backs) = (
        Reader::new(&s[S_LENS]),
        Reader::new(&s[S_OFFS]),
        Reader::new(&s[S_IMMS]),
        Reader::new(&s[S_BACKS]),
    );
    let lits = &s[S_LITS];
    // the spill is the literals in order when no cover adds difference bytes
    let just_lits = s[S_DZEROS].is_empty() && s[S_DBYTES].is_empty();
    let mut diffs = Sparse::new(&s[S_DZEROS], &s[S_DBYTES]);
    let mut li = 0usize;
    let mut covered = 0u64;
    let mut out = Vec::with_capacity(s[S_OPS].len());
    let mut spill = Vec::with_capacity(if just_lits { 0 } else { lits.len() });
    let mut file_pos = i64::try_from(base).map_err(|_| bad("base offset"))?;
    let mut delta = 0i64;
    for (rec, &op) in s[S_OPS].iter().enumerate() {
        let len = lens.u64().map_err(|_| bad("lens stream too short"))?;
        if len == 0 || len > u32::MAX as u64 {
            return Err(bad(&format!("record {rec} has length {len}")));
        }
        covered += len;
        if covered > file_len {
            return Err(bad(&format!(
                "record {rec} overruns the declared file length {file_len}"
            )));
        }
        let n = len as usize;
        let mut snap_off = || -> Result<u64, JoinError> {
            let d = offs.i64().map_err(|_| bad("offs stream too short"))?;
            let off = file_pos
                .checked_add(delta)
                .and_then(|p| p.checked_add(d))
                .filter(|o| *o >= 0)
                .ok_or_else(|| bad("offset out of range"))?;
            delta = off - file_pos;
            Ok(off as u64)
        };
        let src = match op {
            OP_RAW => {
                let b = lits.get(li..li + n).ok_or_else(|| {
                    bad("raw records need more literal bytes than the lits stream holds")
                })?;
                if !just_lits {
                    spill.extend_from_slice(b);
                }
                li += n;
                Source::Raw
            }
            OP_ID => Source::Snap {
                op: Transform::Id,
                off: snap_off()?,
                imm: 0,
            },
            OP_XOR | OP_ADD => {
                let off = snap_off()?;
                let imm = imms.u8().map_err(|_| bad("imms stream too short"))?;
                let op = if op == OP_XOR {
                    Transform::Xor
                } else {
                    Transform::Add
                };
                Source::Snap { op, off, imm }
            }
            OP_COVER => {
                let off = snap_off()?;
                diffs.take(n, &mut spill).map_err(bad)?;
                Source::Cover { off }
            }
            OP_SELF => {
                let back = backs.u64().map_err(|_| bad("backs stream too short"))?;
                if back == 0 {
                    return Err(bad(&format!(
                        "self record {rec} at file offset {file_pos} copies from itself; its source must start before it"
                    )));
                }
                if back > file_pos as u64 {
                    return Err(bad(&format!(
                        "self record {rec} at file offset {file_pos} copies from {back} bytes back, before the file starts"
                    )));
                }
                Source::SelfCopy {
                    off: file_pos as u64 - back,
                }
            }
            x => return Err(bad(&format!("unknown op code {x}"))),
        };
        out.push(Segment {
            len: len as u32,
            src,
        });
        file_pos = file_pos
            .checked_add(len as i64)
            .ok_or_else(|| bad("file position overflow"))?;
    }
    if [&lens, &offs, &imms, &backs]
        .iter()
        .any(|c| c.remaining() != 0)
    {
        return Err(bad("columns longer than the records need"));
    }
    if !diffs.finished() || li != lits.len() {
        return Err(bad(
            "difference or literal bytes left over after the last record",
        ));
    }
    if just_lits {
        spill = std::mem::take(&mut s[S_LITS]);
    }
    Ok((out, spill))
}

/// Add the reference predictions back into the difference bytes of `spill` (the spill of
/// `segments`, starting at file offset `base`). The segments must be valid for `snap`.
pub fn predict_back(
    model: &RefModel,
    snap: &[u8],
    segments: &[Segment],
    base: u64,
    spill: &mut [u8],
) {
    if model.is_empty() {
        return;
    }
    let p = Predictor::new(model, snap, AddressMap::new(segments, base));
    predict_back_with(&p, segments, base, spill)
}

/// [`predict_back`] with a predictor made already.
pub fn predict_back_with(p: &Predictor<'_>, segments: &[Segment], base: u64, spill: &mut [u8]) {
    // gather the difference bytes, predict, scatter back
    let mut diffs = Vec::new();
    let mut sp = 0usize;
    for s in segments {
        match s.src {
            Source::Cover { .. } => {
                diffs.extend_from_slice(&spill[sp..sp + s.len as usize]);
                sp += s.len as usize;
            }
            Source::Raw => sp += s.len as usize,
            _ => {}
        }
    }
    p.apply(segments, base, &mut diffs, true);
    let (mut sp, mut di) = (0usize, 0usize);
    for s in segments {
        let n = s.len as usize;
        match s.src {
            Source::Cover { .. } => {
                spill[sp..sp + n].copy_from_slice(&diffs[di..di + n]);
                sp += n;
                di += n;
            }
            Source::Raw => sp += n,
            _ => {}
        }
    }
}

/// One coded stream's directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub coder: u8,
    pub raw: u64,
    pub stored: u64,
}

/// Per-stream figures of a packing: what each stream holds and what it cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamReport {
    pub name: &'static str,
    pub raw: u64,
    pub stored: u64,
    pub coder: String,
    /// Time spent choosing and encoding this stream (streams are coded in parallel).
    pub ms: f64,
}

/// Every stream coded: the directory, the stored streams (borrowed from the raw ones when
/// stored as they are) and a report.
pub struct Coded<'a> {
    pub dir: Vec<u8>,
    pub parts: Vec<std::borrow::Cow<'a, [u8]>>,
    pub report: Vec<StreamReport>,
}

impl Coded<'_> {
    /// Bytes of the stored streams together.
    pub fn data_len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }
    /// Append the stored streams, in order.
    pub fn write_data(&self, out: &mut Vec<u8>) {
        for p in &self.parts {
            out.extend_from_slice(p);
        }
    }
}

/// The raw (= stored) length of each stream of one raw segment of `len` bytes: one op, the
/// length's varint, the literals.
pub fn stored_raw_sizes(len: u64) -> [u64; NSTREAMS] {
    let mut lens = Vec::with_capacity(10);
    put_u64(&mut lens, len);
    let mut n = [0u64; NSTREAMS];
    n[S_OPS] = 1;
    n[S_LENS] = lens.len() as u64;
    n[S_LITS] = len;
    n
}

/// The directory and the column streams of one raw segment of `len` bytes with every stream
/// stored: what [`split`] and [`code_all`] make of it when nothing compresses. The segment's
/// bytes (the literals) follow them, and nothing after (the refs stream is empty).
pub fn stored_raw_head(len: u64) -> Vec<u8> {
    let sizes = stored_raw_sizes(len);
    let mut out = Vec::with_capacity(NSTREAMS * 3 + 1 + 10);
    for n in sizes {
        out.push(coder::CoderKind::Stored.code());
        put_u64(&mut out, n);
        put_u64(&mut out, n);
    }
    out.push(OP_RAW);
    put_u64(&mut out, len);
    out
}

/// Smallest stream whose whole encode is split into blocks (see [`code_all`]).
const SPLIT_MIN: usize = 1 << 20;
/// Below this many bytes in all, the streams are coded on this thread: starting threads
/// would cost more than the coding (a small file's block)...
const INLINE: usize = 256 << 10;
/// ...or this many at `default` and `max`, whose LZMA candidates take about as long on 10 KB
/// as zstd on 1 MB: cargo-clippy 1.95 -> nightly at `max` (165 KB of streams, six of them
/// coded by up to six LZMA settings each) packed in 81-89 ms on one thread.
const INLINE_LZMA: usize = 16 << 10;

/// [`INLINE`] or [`INLINE_LZMA`], by the coders' level.
fn inline_below(o: &CoderOptions) -> usize {
    match o.level {
        Level::Fast => INLINE,
        Level::Default | Level::Max => INLINE_LZMA,
    }
}

/// One stream coded ([`coder::pack_stream`], in `blocks` blocks), and its milliseconds.
fn code_one<'a>(
    data: &'a [u8],
    class: StreamClass,
    blocks: usize,
    o: &CoderOptions,
) -> std::io::Result<(coder::Packed<'a>, f64)> {
    let t = std::time::Instant::now();
    let o = CoderOptions { blocks, ..*o };
    coder::pack_stream(data, class, &o).map(|p| (p, t.elapsed().as_secs_f64() * 1e3))
}

/// Code every stream with the coder that measures smallest (in parallel).
pub fn code_all<'a>(s: &'a Raw, o: &CoderOptions) -> std::io::Result<Coded<'a>> {
    code_streams(std::array::from_fn(|i| &s[i][..]), None, o)
}

/// [`code_all`] of the streams `s`, where `done` may hold one already coded (its index and
/// result).
fn code_streams<'a>(
    s: [&'a [u8]; NSTREAMS],
    mut done: Option<(usize, std::io::Result<(coder::Packed<'a>, f64)>)>,
    o: &CoderOptions,
) -> std::io::Result<Coded<'a>> {
    // A stream that is most of the bytes (a file coded as literals) would keep the other
    // cores waiting: its whole encode may be split into one block per core
    let total: usize = s.iter().map(|d| d.len()).sum();
    let cores = crate::util::cores();
    let timed = |data: &'a [u8], class| {
        let blocks = if data.len() >= SPLIT_MIN && data.len() * 3 >= total * 2 {
            cores.min(data.len() / (SPLIT_MIN / 2))
        } else {
            1
        };
        code_one(data, class, blocks, o)
    };
    let inline = total < inline_below(o);
    let packed: Vec<std::io::Result<(coder::Packed<'a>, f64)>> = std::thread::scope(|sc| {
        let hs: Vec<_> = s
            .iter()
            .zip(CLASSES)
            .enumerate()
            .map(|(i, (&data, class))| {
                if let Some(p) = done.take_if(|d| d.0 == i) {
                    Err(p.1)
                } else if inline || data.len() < 64 {
                    // too small to be worth a thread: stored or one cheap try
                    let p = if data.len() < 16 {
                        Ok((
                            coder::Packed {
                                coder: Coder::Stored,
                                bytes: data.into(),
                            },
                            0.0,
                        ))
                    } else {
                        timed(data, class)
                    };
                    Err(p)
                } else {
                    Ok(sc.spawn(move || timed(data, class)))
                }
            })
            .collect();
        hs.into_iter()
            .map(|h| match h {
                Ok(h) => h.join().expect("stream coder panicked"),
                Err(p) => p,
            })
            .collect()
    });
    let mut dir = Vec::with_capacity(NSTREAMS * 8);
    let mut parts = Vec::with_capacity(NSTREAMS);
    let mut rep = Vec::with_capacity(NSTREAMS);
    for ((p, raw), name) in packed.into_iter().zip(s).zip(NAMES) {
        let (p, ms) = p?;
        dir.push(p.coder.kind().code());
        put_u64(&mut dir, raw.len() as u64);
        put_u64(&mut dir, p.bytes.len() as u64);
        rep.push(StreamReport {
            name,
            raw: raw.len() as u64,
            stored: p.bytes.len() as u64,
            coder: p.coder.name(),
            ms,
        });
        parts.push(p.bytes);
    }
    Ok(Coded {
        dir,
        parts,
        report: rep,
    })
}

/// Parse a directory. Declared lengths are checked against `caps` (the most raw bytes each
/// stream may declare) and the stored lengths against `data_len` (they must add up to it).
pub fn read_dir(
    r: &mut Reader<'_>,
    caps: &[u64; NSTREAMS],
    data_len: Option<u64>,
) -> Result<[Entry; NSTREAMS], String> {
    let mut e = [Entry {
        coder: 0,
        raw: 0,
        stored: 0,
    }; NSTREAMS];
    let mut total = 0u64;
    for (i, x) in e.iter_mut().enumerate() {
        let name = NAMES[i];
        x.coder = r
            .u8()
            .map_err(|_| format!("directory truncated at {name}"))?;
        coder::CoderKind::try_from(x.coder)
            .map_err(|c| format!("stream {name}: unknown coder {c}"))?;
        x.raw = r
            .u64()
            .map_err(|_| format!("directory truncated at {name}"))?;
        x.stored = r
            .u64()
            .map_err(|_| format!("directory truncated at {name}"))?;
        if x.raw > caps[i] {
            return Err(format!(
                "stream {name} declares {} bytes, more than its records can need ({})",
                x.raw, caps[i]
            ));
        }
        if x.coder == coder::CoderKind::Stored.code() && x.raw != x.stored {
            return Err(format!(
                "stored stream {name} declares {} raw and {} stored bytes",
                x.raw, x.stored
            ));
        }
        total = total
            .checked_add(x.stored)
            .ok_or_else(|| "stored stream lengths overflow".to_string())?;
    }
    if let Some(d) = data_len {
        if total != d {
            return Err(format!(
                "stored streams add up to {total} bytes but {d} bytes of data follow"
            ));
        }
    }
    Ok(e)
}

/// The most raw bytes each stream may declare for `records` records over `file_len` bytes.
pub fn caps(records: u64, file_len: u64) -> [u64; NSTREAMS] {
    [
        records,
        records.saturating_mul(5),
        records.saturating_mul(10),
        records,
        records.saturating_mul(10),
        // a run pair covers at least one byte, except a last one of zeros: two varints of at
        // most 10 bytes each
        file_len.saturating_add(1).saturating_mul(20),
        file_len,
        file_len,
        MAX_REFS,
    ]
}

/// Decode every stream of `data` (laid out as `dir` says).
pub fn decode_all(dir: &[Entry; NSTREAMS], data: &[u8]) -> Result<Raw, String> {
    let mut out: Raw = Default::default();
    let mut at = 0usize;
    for (i, e) in dir.iter().enumerate() {
        let end = at
            .checked_add(e.stored as usize)
            .filter(|x| *x <= data.len())
            .ok_or_else(|| format!("stream {} runs past the data", NAMES[i]))?;
        out[i] = coder::decode(e.coder, &data[at..end], e.raw)
            .map_err(|err| format!("stream {}: {err}", NAMES[i]))?;
        at = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs() -> (Vec<Segment>, Vec<u8>) {
        let segs = vec![
            Segment {
                len: 3,
                src: Source::Raw,
            },
            Segment {
                len: 4,
                src: Source::Cover { off: 10 },
            },
            Segment {
                len: 2,
                src: Source::Snap {
                    op: Transform::Xor,
                    off: 14,
                    imm: 0x55,
                },
            },
            Segment {
                len: 5,
                src: Source::SelfCopy { off: 1 },
            },
            Segment {
                len: 1,
                src: Source::Snap {
                    op: Transform::Id,
                    off: 0,
                    imm: 0,
                },
            },
        ];
        // raw "abc", cover differences 0 0 9 0
        (segs, vec![b'a', b'b', b'c', 0, 0, 9, 0])
    }

    #[test]
    fn a_stream_that_is_most_of_the_bytes_is_coded_in_blocks_side_by_side() {
        // 1.5 MiB of literals beside small columns, the x86 filter + LZMA2 pinned
        let mut s: Raw = Default::default();
        s[S_OPS] = vec![0; 100];
        s[S_LENS] = vec![1; 100];
        s[S_LITS] = (0..3 << 19)
            .map(|i: usize| (i % 251) as u8 ^ (i / 4093) as u8)
            .collect();
        let c = Coder::XzX86 {
            preset: 1,
            extreme: false,
            lc: 3,
            lp: 0,
            pb: 2,
        };
        let o = CoderOptions {
            force: Some(c),
            ..CoderOptions::for_level(coder::Level::Default)
        };
        let coded = code_all(&s, &o).unwrap();
        let lits = &coded.parts[S_LITS];
        assert_eq!(
            coder::decode(c.kind().code(), lits, s[S_LITS].len() as u64).unwrap(),
            s[S_LITS]
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let blocks = cores.min(s[S_LITS].len() / (SPLIT_MIN / 2));
        assert_eq!(lits[..], c.encode_blocks(&s[S_LITS], blocks).unwrap()[..]);
        if blocks > 1 {
            assert_ne!(lits[..], c.encode(&s[S_LITS]).unwrap()[..]);
        }
        // the small streams are coded whole
        assert_eq!(coded.parts[S_OPS][..], c.encode(&s[S_OPS]).unwrap()[..]);
    }

    /// Splitting and coding at once (the literals coded while the differences are cut into
    /// runs) makes the streams and bytes of [`split`] then [`code_all`]: literals short
    /// enough for one block, literals that would be split into blocks (the passes then run
    /// one after the other), a spill shorter than the segments need, and a small blueprint.
    #[test]
    fn split_and_code_makes_the_bytes_of_split_then_code_all() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for (lit_run, cover_run, records, cut) in [
            (4000, 3000, 300, 0),
            (40_000, 500, 60, 0),
            (100_000, 500, 60, 0),
            (4000, 3000, 300, 100),
            (20, 30, 10, 0),
        ] {
            let mut segs = Vec::new();
            let mut spill = Vec::new();
            let mut at = 0u64;
            for k in 0..records {
                let (len, src) = if k % 2 == 0 {
                    let n = 1 + next() as usize % lit_run;
                    // text-like literals: they compress
                    spill
                        .extend((0..n).map(|i| b"the literal bytes "[i % 18] ^ (next() as u8 & 1)));
                    (n, Source::Raw)
                } else {
                    let n = 1 + next() as usize % cover_run;
                    spill.extend((0..n).map(|_| if next() % 4 == 0 { next() as u8 } else { 0 }));
                    (
                        n,
                        Source::Cover {
                            off: at + next() % 512,
                        },
                    )
                };
                segs.push(Segment {
                    len: len as u32,
                    src,
                });
                at += len as u64;
            }
            spill.truncate(spill.len() - cut);
            let o = CoderOptions::for_level(coder::Level::Fast);
            let want_raw = split(&segs, &spill, 0, None, None);
            let want = code_all(&want_raw, &o).unwrap();
            let mut raw = Raw::default();
            let got = split_and_code(&mut raw, &segs, &spill, 0, None, None, &o).unwrap();
            assert_eq!(got.dir, want.dir);
            assert!(
                got.parts == want.parts,
                "coded streams differ ({lit_run}, {records})"
            );
            drop(got);
            assert!(
                raw == want_raw,
                "streams differ ({lit_run}, {records}, cut {cut})"
            );
        }
    }

    #[test]
    fn split_literal_streams_and_join_back() {
        let (segs, spill) = segs();
        let s = split(&segs, &spill, 0, None, None);
        assert_eq!(s[S_OPS], vec![0, 6, 2, 5, 1]);
        assert_eq!(s[S_LENS], vec![3, 4, 2, 5, 1]);
        // cover at file 3: 10 - 3 = 7 -> zz 14; xor at file 7 predicted 7 + 7 = 14 -> 0;
        // id at file 14 predicted 14 + 7 = 21, off 0 -> -21 -> zz 41
        assert_eq!(s[S_OFFS], vec![14, 0, 41]);
        assert_eq!(s[S_IMMS], vec![0x55]);
        assert_eq!(s[S_BACKS], vec![8]); // self at file 9 from 1
        assert_eq!(s[S_DZEROS], vec![2, 1, 1, 0]); // 2 zeros, 1 nonzero, 1 zero
        assert_eq!(s[S_DBYTES], vec![9]);
        assert_eq!(s[S_LITS], b"abc".to_vec());
        assert!(s[S_REFS].is_empty());
        assert!(join(&mut s.clone(), 5, 0, 14)
            .unwrap_err()
            .0
            .contains("overruns"));
        assert_eq!(join(&mut s.clone(), 5, 0, 15).unwrap(), (segs, spill));
    }

    #[test]
    fn inconsistent_streams_are_refused() {
        let (segs, spill) = segs();
        let good = split(&segs, &spill, 0, None, None);
        let err = |f: &dyn Fn(&mut Raw), n: u64| {
            let mut s = good.clone();
            f(&mut s);
            join(&mut s, n, 0, 15).unwrap_err().to_string()
        };
        assert!(err(&|_| {}, 4).contains("record count"));
        assert!(err(&|s| s[S_LITS].pop().map(drop).unwrap(), 5).contains("literal"));
        assert!(err(&|s| s[S_DBYTES].push(1), 5).contains("left over"));
        assert!(err(&|s| s[S_DBYTES][0] = 0, 5).contains("zero byte"));
        assert!(err(&|s| s[S_DZEROS] = vec![0, 0, 2, 1, 1, 0], 5).contains("empty difference run"));
        assert!(err(&|s| s[S_DZEROS] = vec![2], 5).contains("dzeros stream too short"));
        assert!(err(&|s| s[S_OPS][0] = 4, 5).contains("unknown op code 4"));
        assert!(err(&|s| s[S_LENS][0] = 0, 5).contains("length 0"));
        assert!(err(&|s| s[S_BACKS][0] = 10, 5).contains("bytes back"));
        assert!(err(&|s| s[S_BACKS][0] = 0, 5).contains("copies from itself"));
        assert!(err(&|s| s[S_OFFS].push(0), 5).contains("longer"));
        assert!(err(&|s| s[S_OFFS][0] = 5, 5).contains("offset out of range"));
        // directory: caps and totals
        let mut d = Vec::new();
        for i in 0..NSTREAMS {
            d.push(0);
            put_u64(&mut d, if i == S_LENS { 100 } else { 0 });
            put_u64(&mut d, if i == S_LENS { 100 } else { 0 });
        }
        let e = read_dir(&mut Reader::new(&d), &caps(10, 1000), Some(100)).unwrap_err();
        // (the sparse form round-trips any bytes)
        for v in [vec![], vec![0u8; 5], vec![1, 2, 0, 0, 3], vec![0, 7, 7, 0]] {
            let (r, b) = sparse(&v);
            let mut sp = Sparse::new(&r, &b);
            let mut out = Vec::new();
            sp.take(v.len(), &mut out).unwrap();
            assert_eq!(out, v);
            assert!(sp.finished());
        }
        assert!(e.contains("stream lens declares 100"), "{e}");
        assert!(read_dir(&mut Reader::new(&d), &caps(20, 1000), Some(100)).is_ok());
        let e = read_dir(&mut Reader::new(&d), &caps(20, 1000), Some(99)).unwrap_err();
        assert!(e.contains("add up"), "{e}");
    }
}
