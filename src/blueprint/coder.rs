//! Stream coders for `.pbb` v3 and packed blocks: each stream (a table column, the cover
//! differences, the literals) is stored with the coder that measures smallest for it.
//!
//! A coded stream is self-describing apart from its coder byte: a zstd frame, an LZMA1 `.lzma`
//! ("alone") stream whose 13-byte header carries lc/lp/pb and the dictionary size, or an `.xz`
//! stream whose block header carries its filter chain (the x86 BCJ filter in front of LZMA2).
//! Decoding is streamed with a hard output limit (the declared raw length) and a memory limit
//! for the LZMA dictionary, so a forged stream cannot make a reader allocate more than
//! [`DECODE_MEMLIMIT`] plus the declared length.
//!
//! Packing effort is a [`Level`]: `fast` tries zstd only (cheap levels), `default` adds LZMA
//! with the literal/position settings that suit columns and machine code, `max` tries
//! everything. Before any trial a stream is sampled; one that does not compress is stored
//! as it is, so incompressible data costs one pass of zstd -1 over a few samples.

use std::io::Read;

use serde::{Deserialize, Serialize};

/// Packing effort: which coders are tried on each stream.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Cheap coders only (zstd at low levels): for packing on the fly.
    Fast,
    /// LZMA with the lc/lp/pb setting that suits each stream (and the x86 BCJ filter tried on
    /// the literals of an x86-64 ELF file).
    #[default]
    Default,
    /// LZMA preset 9 with several lc/lp/pb settings ranked on samples per stream (and the x86
    /// BCJ filter on machine code); the planner refines its covers ([`crate::plan::refine`]).
    Max,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Fast => "fast",
            Level::Default => "default",
            Level::Max => "max",
        }
    }
}

/// Memory a decoder may use for one LZMA stream's dictionary (the LZMA decoder refuses a
/// stream that needs more).
pub const DECODE_MEMLIMIT: u64 = 192 << 20;

/// The coder byte of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum CoderKind {
    Stored = 0,
    Zstd = 1,
    /// LZMA1 in the `.lzma` container (its header holds lc/lp/pb and the dictionary size).
    Lzma = 2,
    /// An `.xz` stream (its block header holds the filters, e.g. x86 BCJ + LZMA2).
    Xz = 3,
    /// The x86 branch filter ([`super::bcj`]), then a zstd frame.
    ZstdX86 = 4,
}

impl TryFrom<u8> for CoderKind {
    type Error = u8;
    fn try_from(c: u8) -> Result<Self, u8> {
        Ok(match c {
            0 => CoderKind::Stored,
            1 => CoderKind::Zstd,
            2 => CoderKind::Lzma,
            3 => CoderKind::Xz,
            4 => CoderKind::ZstdX86,
            c => return Err(c),
        })
    }
}

impl CoderKind {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// One way to encode a stream (the encoder's choice; the decoder needs only the kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "coder", rename_all = "lowercase")]
pub enum Coder {
    Stored,
    Zstd {
        level: i32,
    },
    /// x86 branch filter, then zstd.
    ZstdX86 {
        level: i32,
    },
    Lzma {
        preset: u32,
        extreme: bool,
        lc: u32,
        lp: u32,
        pb: u32,
    },
    /// x86 BCJ filter, then LZMA2.
    XzX86 {
        preset: u32,
        extreme: bool,
        lc: u32,
        lp: u32,
        pb: u32,
    },
}

impl Coder {
    pub fn kind(self) -> CoderKind {
        match self {
            Coder::Stored => CoderKind::Stored,
            Coder::Zstd { .. } => CoderKind::Zstd,
            Coder::ZstdX86 { .. } => CoderKind::ZstdX86,
            Coder::Lzma { .. } => CoderKind::Lzma,
            Coder::XzX86 { .. } => CoderKind::Xz,
        }
    }

    /// The literal-context settings of an LZMA coder (`None` for the others).
    pub fn lclppb(self) -> Option<(u32, u32, u32)> {
        match self {
            Coder::Lzma { lc, lp, pb, .. } | Coder::XzX86 { lc, lp, pb, .. } => Some((lc, lp, pb)),
            _ => None,
        }
    }

    /// The family the coder belongs to (`pfs plan --coders`).
    pub fn family(self) -> Families {
        match self {
            Coder::Stored => Families::Stored,
            Coder::Zstd { .. } | Coder::ZstdX86 { .. } => Families::Zstd,
            Coder::Lzma { .. } | Coder::XzX86 { .. } => Families::Lzma2,
        }
    }

    /// Whether the x86 branch filter runs in front of the coder.
    pub fn x86_filter(self) -> bool {
        matches!(self, Coder::ZstdX86 { .. } | Coder::XzX86 { .. })
    }

    /// A short name for tables: `stored`, `zstd-19`, `zstd-x86-3`, `lzma-9e/0,2,2`,
    /// `xz-x86-9/0,0,2`.
    pub fn name(self) -> String {
        match self {
            Coder::Stored => "stored".into(),
            Coder::Zstd { level } => format!("zstd-{level}"),
            Coder::ZstdX86 { level } => format!("zstd-x86-{level}"),
            Coder::Lzma {
                preset,
                extreme,
                lc,
                lp,
                pb,
            } => format!(
                "lzma-{preset}{}/{lc},{lp},{pb}",
                if extreme { "e" } else { "" }
            ),
            Coder::XzX86 {
                preset,
                extreme,
                lc,
                lp,
                pb,
            } => format!(
                "xz-x86-{preset}{}/{lc},{lp},{pb}",
                if extreme { "e" } else { "" }
            ),
        }
    }

    /// Encode `data`.
    pub fn encode(self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        self.encode_blocks(data, 1)
    }

    /// Encode `data`; an .xz coder (the x86 filter in front of LZMA2) splits it into
    /// `blocks` independent blocks of equal size coded on as many threads (each block
    /// starts with an empty dictionary: a little larger, `blocks` times faster). Other
    /// coders encode it whole.
    pub fn encode_blocks(self, data: &[u8], blocks: usize) -> std::io::Result<Vec<u8>> {
        use xz2::stream::{Check, Filters, LzmaOptions, Stream};
        let lz = |preset: u32, extreme: bool, lc: u32, lp: u32, pb: u32| {
            let mut o = LzmaOptions::new_preset(preset | if extreme { 1 << 31 } else { 0 })
                .map_err(std::io::Error::other)?;
            // a dictionary no larger than the data (at least 4 KiB) keeps the decoder small
            let dict = (data.len() as u64)
                .next_power_of_two()
                .clamp(4096, 64 << 20) as u32;
            o.literal_context_bits(lc)
                .literal_position_bits(lp)
                .position_bits(pb)
                .dict_size(dict);
            Ok::<_, std::io::Error>(o)
        };
        Ok(match self {
            Coder::Stored => data.to_vec(),
            Coder::Zstd { level } => zstd_compress(data, level, window_log(data.len()))?,
            Coder::ZstdX86 { level } => {
                let mut f = data.to_vec();
                super::bcj::encode(&mut f, 0);
                zstd_compress(&f, level, window_log(data.len()))?
            }
            Coder::Lzma {
                preset,
                extreme,
                lc,
                lp,
                pb,
            } => {
                let s = Stream::new_lzma_encoder(&lz(preset, extreme, lc, lp, pb)?)
                    .map_err(std::io::Error::other)?;
                let mut out = Vec::new();
                xz2::read::XzEncoder::new_stream(data, s).read_to_end(&mut out)?;
                out
            }
            Coder::XzX86 {
                preset,
                extreme,
                lc,
                lp,
                pb,
            } => {
                let mut f = Filters::new();
                f.x86();
                f.lzma2(&lz(preset, extreme, lc, lp, pb)?);
                let s = if blocks > 1 {
                    // independent .xz blocks, coded side by side; the reader's stream
                    // decoder reads them one after the other
                    xz2::stream::MtStreamBuilder::new()
                        .threads(blocks as u32)
                        .block_size(data.len().div_ceil(blocks).max(1) as u64)
                        .filters(f)
                        .check(Check::None)
                        .timeout_ms(0)
                        .encoder()
                } else {
                    Stream::new_stream_encoder(&f, Check::None)
                }
                .map_err(std::io::Error::other)?;
                let mut out = Vec::new();
                xz2::read::XzEncoder::new_stream(data, s).read_to_end(&mut out)?;
                out
            }
        })
    }
}

/// Why a stream does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoderError {
    #[error("unknown coder {0}")]
    UnknownCoder(u8),
    #[error("{coder:?} data does not decode: {msg}")]
    Damaged { coder: CoderKind, msg: String },
    #[error("decodes to {got}{plus} bytes, {want} declared", plus = if *.over { "+" } else { "" })]
    Length { got: u64, want: u64, over: bool },
}

/// Decode `data` coded with `coder` (a coder byte) to exactly `raw_len` bytes.
pub fn decode(coder: u8, data: &[u8], raw_len: u64) -> Result<Vec<u8>, CoderError> {
    let kind = CoderKind::try_from(coder).map_err(CoderError::UnknownCoder)?;
    let damaged = |e: &dyn std::fmt::Display| CoderError::Damaged {
        coder: kind,
        msg: e.to_string(),
    };
    let mut out = Vec::new();
    let res = match kind {
        CoderKind::Stored => {
            if data.len() as u64 != raw_len {
                return Err(CoderError::Length {
                    got: data.len() as u64,
                    want: raw_len,
                    over: false,
                });
            }
            return Ok(data.to_vec());
        }
        CoderKind::Zstd | CoderKind::ZstdX86 => match zstd_frame_len(data) {
            // one frame that declares its length (what the coders write): decoded in one
            // call into a buffer of exactly that length, with this thread's context
            Some(n) if n != raw_len => {
                return Err(CoderError::Length {
                    got: n.min(raw_len),
                    want: raw_len,
                    over: n > raw_len,
                })
            }
            Some(_) if raw_len <= BULK_MAX => {
                out = zstd_bulk_decode(data, raw_len).map_err(|e| damaged(&e))?;
                Ok(out.len())
            }
            _ => {
                let mut d =
                    zstd::stream::read::Decoder::with_buffer(data).map_err(|e| damaged(&e))?;
                d.window_log_max(27).map_err(|e| damaged(&e))?;
                d.take(raw_len + 1).read_to_end(&mut out)
            }
        },
        CoderKind::Lzma => {
            let s =
                xz2::stream::Stream::new_lzma_decoder(DECODE_MEMLIMIT).map_err(|e| damaged(&e))?;
            xz2::read::XzDecoder::new_stream(data, s)
                .take(raw_len + 1)
                .read_to_end(&mut out)
        }
        CoderKind::Xz => {
            let s = xz2::stream::Stream::new_stream_decoder(DECODE_MEMLIMIT, 0)
                .map_err(|e| damaged(&e))?;
            xz2::read::XzDecoder::new_stream(data, s)
                .take(raw_len + 1)
                .read_to_end(&mut out)
        }
    };
    res.map_err(|e| damaged(&e))?;
    if out.len() as u64 != raw_len {
        return Err(CoderError::Length {
            got: out.len().min(raw_len as usize) as u64,
            want: raw_len,
            over: out.len() as u64 > raw_len,
        });
    }
    if kind == CoderKind::ZstdX86 {
        super::bcj::decode(&mut out, 0);
    }
    Ok(out)
}

/// Longest zstd stream decoded into a buffer allocated at its declared length at once (a
/// packed block's streams are at most 16 MiB); longer ones grow as they decode.
const BULK_MAX: u64 = 16 << 20;

/// The decoded length a zstd stream declares, where it is one frame that declares it.
fn zstd_frame_len(data: &[u8]) -> Option<u64> {
    let n = zstd::zstd_safe::find_frame_compressed_size(data).ok()?;
    if n != data.len() {
        return None;
    }
    zstd::zstd_safe::get_frame_content_size(data).ok().flatten()
}

/// One zstd frame that declares `raw_len` bytes, decoded with this thread's context (a
/// context per stream was 1.1 ms of a receiver's 30 ms on the libstd pair: 9 streams a block).
fn zstd_bulk_decode(data: &[u8], raw_len: u64) -> std::io::Result<Vec<u8>> {
    use std::cell::RefCell;
    thread_local! {
        static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    }
    DCTX.with(|c| {
        let mut c = c.borrow_mut();
        let d = match c.as_mut() {
            Some(d) => d,
            None => {
                let mut d = zstd::bulk::Decompressor::new()?;
                d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(27))?;
                c.insert(d)
            }
        };
        let mut out = Vec::with_capacity(raw_len as usize);
        d.decompress_to_buffer(data, &mut out)?;
        Ok(out)
    })
}

/// What a stream holds: the choice of candidate coders depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamClass {
    /// A table column (ops, varint lengths and offsets): small, structured.
    Column,
    /// Cover difference bytes: mostly zeros.
    Diff,
    /// Literal bytes (raw spill).
    Literal,
}

/// How a stream set is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoderOptions {
    pub level: Level,
    /// Whether the literal stream is x86-64 machine code (the BCJ filter is tried on it).
    pub x86: bool,
    /// Pin one coder for every stream (ablation, tests); `None` measures.
    pub force: Option<Coder>,
    /// With zstd pinned by `force`: literals that look like x86 machine code
    /// ([`super::bcj::looks_like_code`]) get the branch filter in front of it (the blocks of
    /// `pfs send --level fast`, which pin zstd and do not know what file they are).
    pub code_filter: bool,
    /// Which coder families the level's candidates come from (the ablation's rows).
    pub families: Families,
    /// Blocks the whole encode of the chosen coder may be split into ([`Coder::encode_blocks`]):
    /// set per stream by [`super::streams::code_all`] for a stream that is most of the bytes,
    /// where cores would otherwise wait for it.
    pub blocks: usize,
}

impl CoderOptions {
    pub fn for_level(level: Level) -> Self {
        CoderOptions {
            level,
            x86: false,
            force: None,
            code_filter: false,
            families: Families::All,
            blocks: 1,
        }
    }
}

/// The coder families a pack may choose from: the level's own set (`All`), or one family
/// at the strength the level asks for (`pfs plan --coders`, the ablation's stream-coder rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Families {
    /// The level's candidates: zstd -3 at `fast` (-9 on small streams that compress), LZMA
    /// at `default` and `max`.
    #[default]
    All,
    /// zstd only (with the x86 branch filter in front where it is tried): -3 at `fast`, -19
    /// at `default` and `max`.
    Zstd,
    /// LZMA2 only (with BCJ in front where it is tried): preset 1 at `fast`, the level's
    /// settings at `default` and `max`.
    Lzma2,
    /// No coder: every stream stored as it is.
    Stored,
}

/// Streams of at least this many bytes are stored without a coder trial when
/// [`estimate_ratio`] is above [`STORE_RATIO`].
pub const STORE_CHECK_MIN: usize = 4096;
/// The estimated ratio above which a stream does not compress (it is stored).
pub const STORE_RATIO: f64 = 0.97;

/// Streams below this are not sampled: they are tried whole.
const SAMPLE_MIN: usize = 256 << 10;
/// Sampled bytes (in [`SAMPLES`] pieces) for the compressibility estimate.
const SAMPLE_BYTES: usize = 128 << 10;
const SAMPLES: usize = 8;

/// The zstd window for `len` bytes: the next power of two, 1 KiB to 128 MiB (the decoder
/// accepts up to 2^27).
fn window_log(len: usize) -> u32 {
    (64 - (len.max(1 << 10) as u64 - 1).leading_zeros()).clamp(10, 27)
}

/// zstd at `level` with a window of `2^wlog` bytes through this thread's compression context,
/// made once and reused (a context costs more to create than a small stream to compress:
/// many small files are packed one after the other on one producer thread).
fn zstd_compress(data: &[u8], level: i32, wlog: u32) -> std::io::Result<Vec<u8>> {
    use std::cell::RefCell;
    thread_local! {
        static CCTX: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    }
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        let c = match c.as_mut() {
            Some(c) => c,
            None => c.insert(zstd::bulk::Compressor::new(level)?),
        };
        c.set_compression_level(level)?;
        c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(wlog))?;
        c.compress(data)
    })
}

/// Bytes zstd at `level` makes of `data` (a window fitted to it), on this thread's reused
/// context; `data.len()` when it fails.
pub fn zstd_len(data: &[u8], level: i32) -> usize {
    zstd_compress(data, level, window_log(data.len())).map_or(data.len(), |z| z.len())
}

/// [`SAMPLES`] evenly spaced pieces of `data` (longer than [`SAMPLE_BYTES`]) together,
/// [`SAMPLE_BYTES`] in all: copied piece by piece (a byte-wise gather took a fifth of the
/// streamed sender's producer on random data).
fn samples(data: &[u8]) -> Vec<u8> {
    let piece = SAMPLE_BYTES / SAMPLES;
    let step = (data.len() - piece) / (SAMPLES - 1);
    let mut s = Vec::with_capacity(SAMPLE_BYTES);
    for k in 0..SAMPLES {
        s.extend_from_slice(&data[k * step..k * step + piece]);
    }
    s
}

/// zstd -1 on evenly spaced samples: the estimated compressed share of `data` (1.0 when
/// nothing is gained). Used to store incompressible streams without any trial.
pub fn estimate_ratio(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 1.0;
    }
    let gathered;
    let sample: &[u8] = if data.len() <= SAMPLE_BYTES {
        data
    } else {
        gathered = samples(data);
        &gathered
    };
    zstd_len(sample, 1) as f64 / sample.len() as f64
}

/// Streams of at most this many bytes that zstd -1 takes below 3/4 on samples
/// ([`FAST_SMALL_RATIO`]; the store check's estimate) are coded at [`FAST_SMALL_LEVEL`]
/// instead of zstd -3 at `fast` (not the streamed sender's blocks, whose coder is forced):
/// a few milliseconds at most. Measured on `pfs plan --level fast` (2026-12-07), every
/// small stream at level 9: cargo-clippy 1.95 -> nightly 80,364 -> 74,060 B (zstd -9
/// --patch-from: 78,552), numpy 78,727 -> 71,856 B, libstd -0.1% for 3 ms more (its
/// offsets column, 55 KB that hardly compress, took 4.6 ms at level 9: hence the ratio);
/// level 12 took 3-4x the time for 0.5-1.7% more, 19 up to 100 ms.
pub const FAST_SMALL_STREAM: usize = 256 << 10;
/// See [`FAST_SMALL_STREAM`].
pub const FAST_SMALL_LEVEL: i32 = 9;
/// See [`FAST_SMALL_STREAM`].
pub const FAST_SMALL_RATIO: f64 = 0.75;

/// The coders `level` tries on a stream of class `class`.
pub fn candidates(class: StreamClass, o: &CoderOptions) -> Vec<Coder> {
    let lzma = |preset, extreme, lc, lp, pb| Coder::Lzma {
        preset,
        extreme,
        lc,
        lp,
        pb,
    };
    let mut c = Vec::new();
    match o.level {
        // zstd -3 on every class: level 6 on the columns and differences made the libstd
        // release pair's .pbb 1.4% smaller (852,906 vs 865,292 B) and bin/cargo's 1.1%, but
        // `pfs plan --level fast` took 12% longer (index_plan_ab, medians of 7: libstd
        // 0.151 vs 0.134 s, cargo 0.827 vs 0.726 s; docs/profile.md)
        Level::Fast => c.push(Coder::Zstd { level: 3 }),
        // one LZMA setting per class: on the libstd release pair these won every stream
        // that zstd -19 and the other settings were tried on (`just bench-codec`)
        Level::Default => c.push(match class {
            StreamClass::Column | StreamClass::Diff => lzma(7, false, 0, 0, 0),
            StreamClass::Literal => lzma(7, false, 3, 0, 2),
        }),
        // four LZMA settings, ranked on samples. zstd -19/-22 were candidates too and won
        // 13 bytes of 692,519 on the libstd pair and nothing on /usr/bin/bash (ablation
        // rows `--level max --coders lzma2`), for ~18% of the time; LZMA's extreme mode
        // made the libstd pair 542 B (0.08%) smaller but bash 788 B larger, for 10-35% of
        // the time (docs/profile.md)
        Level::Max => {
            // lc/lp/pb 0/2/2 and 0/0/2 were ranked too and never won a stream of the libstd
            // pair, /usr/bin/bash or the numpy pair (the same .pbb bytes without them, a
            // third less sample coding: docs/profile.md, "Refined covers")
            for (lc, lp, pb) in [(0, 0, 0), (3, 0, 2), (1, 0, 0), (4, 0, 0)] {
                c.push(lzma(9, false, lc, lp, pb));
            }
        }
    }
    if class == StreamClass::Literal && o.x86 {
        match o.level {
            // the branch filter pays on machine code and costs a pass over the bytes; the
            // sampled ranking keeps plain zstd where the literals are not code
            Level::Fast => c.push(Coder::ZstdX86 { level: 3 }),
            Level::Default => c.push(Coder::XzX86 {
                preset: 7,
                extreme: false,
                lc: 3,
                lp: 0,
                pb: 2,
            }),
            Level::Max => {
                for (lc, lp, pb) in [(0, 2, 2), (3, 0, 2)] {
                    c.push(Coder::XzX86 {
                        preset: 9,
                        extreme: false,
                        lc,
                        lp,
                        pb,
                    });
                }
            }
        }
    }
    // one family: the level's candidates of that family, or its representative at the
    // level where the level has none of it; the branch filter where it is tried
    let code = class == StreamClass::Literal && o.x86;
    if o.families == Families::All {
        return c;
    }
    let mut own: Vec<Coder> = c.into_iter().filter(|k| k.family() == o.families).collect();
    match o.families {
        Families::Zstd => {
            if own.is_empty() {
                own.push(Coder::Zstd { level: 19 });
            }
            if code && !own.iter().any(|k| k.x86_filter()) {
                if let Coder::Zstd { level } = own[0] {
                    own.push(Coder::ZstdX86 { level });
                }
            }
        }
        Families::Lzma2 if own.is_empty() => {
            let (lc, lp, pb) = match class {
                StreamClass::Column | StreamClass::Diff => (0, 0, 0),
                StreamClass::Literal => (3, 0, 2),
            };
            own.push(lzma(1, false, lc, lp, pb));
            if code {
                own.push(Coder::XzX86 {
                    preset: 1,
                    extreme: false,
                    lc,
                    lp,
                    pb,
                });
            }
        }
        _ => {}
    }
    own
}

/// One stream packed: the coder chosen and its bytes (borrowed when stored as it is).
#[derive(Debug, Clone)]
pub struct Packed<'a> {
    pub coder: Coder,
    pub bytes: std::borrow::Cow<'a, [u8]>,
}

/// The sizes of `cands` encoding `sample`, in order, tried on up to one thread per core (a
/// file whose literals are its one large stream left the other core idle at `max`).
fn rank(cands: &[Coder], sample: &[u8]) -> std::io::Result<Vec<usize>> {
    let threads = crate::util::cores().min(cands.len().max(1));
    if threads <= 1 {
        return cands
            .iter()
            .map(|c| c.encode(sample).map(|z| z.len()))
            .collect();
    }
    let per = cands.len().div_ceil(threads);
    std::thread::scope(|sc| {
        let hs: Vec<_> = cands
            .chunks(per)
            .map(|part| {
                sc.spawn(move || {
                    part.iter()
                        .map(|c| c.encode(sample).map(|z| z.len()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("ranking thread panicked"))
            .collect()
    })
}

/// The candidate with the fewest bytes, the first of equals (as the stable sort that ranked
/// them before did).
fn first_least(cands: &[Coder], sizes: &[usize]) -> Coder {
    let i = (0..cands.len())
        .min_by_key(|&i| sizes[i])
        .expect("a candidate at least");
    cands[i]
}

/// Encode `data` with the candidate (or the forced coder) that measures smallest; stored
/// when nothing beats it or the sampled estimate says the stream does not compress. Streams
/// of at least [`SAMPLE_MIN`] bytes rank the candidates on samples and encode whole with the
/// best one.
pub fn pack_stream<'a>(
    data: &'a [u8],
    class: StreamClass,
    o: &CoderOptions,
) -> std::io::Result<Packed<'a>> {
    let stored = || Packed {
        coder: Coder::Stored,
        bytes: data.into(),
    };
    if data.is_empty() {
        return Ok(stored());
    }
    let ratio = (data.len() >= STORE_CHECK_MIN).then(|| estimate_ratio(data));
    if ratio.is_some_and(|r| r > STORE_RATIO) {
        return Ok(stored());
    }
    let mut cands = match o.force {
        Some(Coder::Zstd { level })
            if o.code_filter
                && class == StreamClass::Literal
                && super::bcj::looks_like_code(data) =>
        {
            vec![Coder::ZstdX86 { level }]
        }
        Some(c) => vec![c],
        None => candidates(class, o),
    };
    if o.level == Level::Fast
        && o.force.is_none()
        && data.len() <= FAST_SMALL_STREAM
        && ratio.is_none_or(|r| r < FAST_SMALL_RATIO)
    {
        for c in cands.iter_mut() {
            if let Coder::Zstd { level } | Coder::ZstdX86 { level } = c {
                *level = FAST_SMALL_LEVEL;
            }
        }
    }
    // large streams: rank the candidates on samples and encode whole only the best. `max`
    // encoded the best two whole; on the libstd release pair (6 streams) and /usr/bin/bash
    // the first on samples was the smaller whole every time (the same .pbb bytes) and the
    // second encode took 25-35% of `pfs plan --level max` (docs/profile.md)
    if data.len() >= SAMPLE_MIN && cands.len() > 1 {
        let sample = samples(data);
        // Candidates with the x86 branch filter and without: the filter is decided first,
        // on one setting each (the literal one, lc/lp/pb 3/0/2, where the group has it),
        // and only the chosen group's other settings are tried (`max` on machine code: 3
        // sample encodes instead of 8)
        let group = |filter: bool| -> Vec<Coder> {
            cands
                .iter()
                .copied()
                .filter(|c| c.x86_filter() == filter)
                .collect()
        };
        let rep = |g: &[Coder]| {
            g.iter()
                .copied()
                .find(|c| c.lclppb() == Some((3, 0, 2)))
                .or_else(|| g.first().copied())
        };
        let (with, without) = (group(true), group(false));
        let chosen = match (rep(&with), rep(&without)) {
            (Some(x), Some(p)) if cands.len() > 2 => {
                let n = rank(&[p, x], &sample)?;
                let (g, known) = if n[1] < n[0] {
                    (with, (x, n[1]))
                } else {
                    (without, (p, n[0]))
                };
                let rest: Vec<Coder> = g.iter().copied().filter(|c| *c != known.0).collect();
                let mut sizes = rank(&rest, &sample)?.into_iter();
                let sizes: Vec<usize> = g
                    .iter()
                    .map(|c| {
                        if *c == known.0 {
                            known.1
                        } else {
                            sizes.next().expect("a size per candidate")
                        }
                    })
                    .collect();
                first_least(&g, &sizes)
            }
            _ => first_least(&cands, &rank(&cands, &sample)?),
        };
        cands = vec![chosen];
    }
    let mut best = stored();
    for c in cands {
        let bytes = c.encode_blocks(data, o.blocks)?;
        if bytes.len() < best.bytes.len() {
            best = Packed {
                coder: c,
                bytes: bytes.into(),
            };
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| b"the quick brown fox jumps over the lazy dog "[i % 44] ^ (i / 1000) as u8)
            .collect()
    }

    #[test]
    fn an_xz_stream_split_into_blocks_decodes_as_one() {
        let data = text(600_000);
        let c = Coder::XzX86 {
            preset: 6,
            extreme: false,
            lc: 3,
            lp: 0,
            pb: 2,
        };
        let whole = c.encode_blocks(&data, 1).unwrap();
        assert_eq!(whole, c.encode(&data).unwrap());
        for blocks in [2, 3] {
            let split = c.encode_blocks(&data, blocks).unwrap();
            assert_ne!(split, whole, "{blocks} blocks are coded apart");
            assert_eq!(
                decode(c.kind().code(), &split, data.len() as u64).unwrap(),
                data,
                "{blocks} blocks"
            );
        }
        // other coders encode whole whatever the block count
        let z = Coder::Zstd { level: 3 };
        assert_eq!(z.encode_blocks(&data, 2).unwrap(), z.encode(&data).unwrap());
    }

    #[test]
    fn every_coder_round_trips_and_declares_its_kind() {
        let data = text(50_000);
        for c in [
            Coder::Stored,
            Coder::Zstd { level: 3 },
            Coder::ZstdX86 { level: 3 },
            Coder::Lzma {
                preset: 6,
                extreme: false,
                lc: 0,
                lp: 2,
                pb: 2,
            },
            Coder::XzX86 {
                preset: 6,
                extreme: false,
                lc: 3,
                lp: 0,
                pb: 2,
            },
        ] {
            let z = c.encode(&data).unwrap();
            assert_eq!(
                decode(c.kind().code(), &z, data.len() as u64).unwrap(),
                data,
                "{}",
                c.name()
            );
            // a wrong declared length is an error either way
            let e = decode(c.kind().code(), &z, data.len() as u64 - 1).unwrap_err();
            assert!(matches!(e, CoderError::Length { .. }), "{e}");
            let e = decode(c.kind().code(), &z, data.len() as u64 + 1).unwrap_err();
            assert!(
                matches!(e, CoderError::Length { .. } | CoderError::Damaged { .. }),
                "{e}"
            );
        }
        assert_eq!(decode(9, b"", 0), Err(CoderError::UnknownCoder(9)));
        assert_eq!(decode(5, b"", 0), Err(CoderError::UnknownCoder(5)));
    }

    #[test]
    fn incompressible_streams_are_stored_without_trials() {
        let noise = crate::prepare::noise(0x9e3779b97f4a7c15, 1 << 20);
        assert!(estimate_ratio(&noise) > 0.97);
        for level in [Level::Fast, Level::Default, Level::Max] {
            let p = pack_stream(
                &noise,
                StreamClass::Literal,
                &CoderOptions::for_level(level),
            )
            .unwrap();
            assert_eq!(p.coder, Coder::Stored);
            assert_eq!(p.bytes, noise);
        }
    }

    #[test]
    fn the_smallest_candidate_wins() {
        let data = text(300_000);
        let o = CoderOptions::for_level(Level::Default);
        let p = pack_stream(&data, StreamClass::Column, &o).unwrap();
        assert_ne!(p.coder, Coder::Stored);
        for c in candidates(StreamClass::Column, &o) {
            // the chosen one is never beaten by more than what sampling can miss: every
            // candidate, encoded whole, is at least as large as the choice or within 5%
            let n = c.encode(&data).unwrap().len();
            assert!(
                p.bytes.len() <= n + n / 20,
                "{} {} vs {}",
                c.name(),
                n,
                p.bytes.len()
            );
        }
        assert_eq!(
            decode(p.coder.kind().code(), &p.bytes, data.len() as u64).unwrap(),
            data
        );
    }

    #[test]
    fn one_family_keeps_its_own_coders_at_every_level() {
        let zstd = |c: &Coder| matches!(c, Coder::Zstd { .. } | Coder::ZstdX86 { .. });
        let lzma = |c: &Coder| matches!(c, Coder::Lzma { .. } | Coder::XzX86 { .. });
        let filtered = |c: &Coder| matches!(c, Coder::ZstdX86 { .. } | Coder::XzX86 { .. });
        for level in [Level::Fast, Level::Default, Level::Max] {
            for class in [StreamClass::Column, StreamClass::Diff, StreamClass::Literal] {
                for x86 in [false, true] {
                    let o = |families| CoderOptions {
                        x86,
                        families,
                        ..CoderOptions::for_level(level)
                    };
                    let all = candidates(class, &o(Families::All));
                    let z = candidates(class, &o(Families::Zstd));
                    let l = candidates(class, &o(Families::Lzma2));
                    let what = format!("{level:?} {class:?} x86={x86}");
                    assert!(!z.is_empty() && z.iter().all(zstd), "{what}: {z:?}");
                    assert!(!l.is_empty() && l.iter().all(lzma), "{what}: {l:?}");
                    assert!(candidates(class, &o(Families::Stored)).is_empty());
                    // a family the level has keeps the level's own coders of it
                    for (fam, pick) in [(&z, zstd as fn(&Coder) -> bool), (&l, lzma)] {
                        let own: Vec<Coder> = all.iter().copied().filter(pick).collect();
                        if !own.is_empty() {
                            assert!(own.iter().all(|c| fam.contains(c)), "{what}");
                        }
                    }
                    // the branch filter is tried on code literals only, in either family
                    let code = class == StreamClass::Literal && x86;
                    assert_eq!(z.iter().any(filtered), code, "{what}: {z:?}");
                    assert_eq!(l.iter().any(filtered), code, "{what}: {l:?}");
                }
            }
        }
        // and what pack_stream picks comes from the family, back bit-exact
        let data = text(300_000);
        for (families, pick) in [
            (Families::Zstd, zstd as fn(&Coder) -> bool),
            (Families::Lzma2, lzma),
            (Families::Stored, |c: &Coder| *c == Coder::Stored),
        ] {
            let o = CoderOptions {
                families,
                ..CoderOptions::for_level(Level::Default)
            };
            let p = pack_stream(&data, StreamClass::Literal, &o).unwrap();
            assert!(pick(&p.coder), "{families:?}: {}", p.coder.name());
            assert_eq!(
                decode(p.coder.kind().code(), &p.bytes, data.len() as u64).unwrap(),
                data
            );
        }
    }

    /// `max` on an x86 file's literals decides the branch filter first, on one setting of
    /// each group: machine code keeps a filtered coder, text a plain one, and each is the
    /// smallest on the samples within its group.
    #[test]
    fn max_decides_the_branch_filter_before_the_settings() {
        let o = CoderOptions {
            x86: true,
            ..CoderOptions::for_level(Level::Max)
        };
        let cands = candidates(StreamClass::Literal, &o);
        let filtered = |c: &Coder| matches!(c, Coder::XzX86 { .. } | Coder::ZstdX86 { .. });
        for (data, want_filter) in [
            (super::super::bcj::synthetic_code(400_000), true),
            (text(400_000), false),
        ] {
            let p = pack_stream(&data, StreamClass::Literal, &o).unwrap();
            assert_eq!(filtered(&p.coder), want_filter, "{}", p.coder.name());
            let sample = samples(&data);
            let group: Vec<Coder> = cands
                .iter()
                .copied()
                .filter(|c| filtered(c) == want_filter)
                .collect();
            let sizes = rank(&group, &sample).unwrap();
            let least = *sizes.iter().min().unwrap();
            let mine = group
                .iter()
                .position(|c| *c == p.coder)
                .expect("in its group");
            assert_eq!(sizes[mine], least, "{}", p.coder.name());
            assert_eq!(
                decode(p.coder.kind().code(), &p.bytes, data.len() as u64).unwrap(),
                data
            );
        }
    }

    #[test]
    fn the_branch_filter_goes_to_code_literals_only() {
        let code = super::super::bcj::synthetic_code(300_000);
        let text = text(300_000);
        // fast ranks zstd with and without the filter on an x86 file's literals
        let fast = CoderOptions {
            x86: true,
            ..CoderOptions::for_level(Level::Fast)
        };
        let p = pack_stream(&code, StreamClass::Literal, &fast).unwrap();
        assert_eq!(p.coder, Coder::ZstdX86 { level: 3 });
        assert!(p.bytes.len() < Coder::Zstd { level: 3 }.encode(&code).unwrap().len());
        assert_eq!(
            decode(p.coder.kind().code(), &p.bytes, code.len() as u64).unwrap(),
            code
        );
        let p = pack_stream(
            &code,
            StreamClass::Literal,
            &CoderOptions::for_level(Level::Fast),
        );
        assert_eq!(
            p.unwrap().coder,
            Coder::Zstd { level: 3 },
            "not an x86 file"
        );
        // a pinned zstd with `code_filter`: literals that look like code, nothing else
        let pinned = CoderOptions {
            force: Some(Coder::Zstd { level: 1 }),
            code_filter: true,
            ..CoderOptions::for_level(Level::Fast)
        };
        for (data, class, want) in [
            (&code, StreamClass::Literal, Coder::ZstdX86 { level: 1 }),
            (&text, StreamClass::Literal, Coder::Zstd { level: 1 }),
            (&code, StreamClass::Diff, Coder::Zstd { level: 1 }),
        ] {
            let p = pack_stream(data, class, &pinned).unwrap();
            assert_eq!(p.coder, want, "{class:?}");
            assert_eq!(
                decode(p.coder.kind().code(), &p.bytes, data.len() as u64).unwrap(),
                *data
            );
        }
        let off = CoderOptions {
            code_filter: false,
            ..pinned
        };
        let p = pack_stream(&code, StreamClass::Literal, &off).unwrap();
        assert_eq!(p.coder, Coder::Zstd { level: 1 });
    }

    #[test]
    fn fast_codes_small_streams_at_the_small_level() {
        let t = text(FAST_SMALL_STREAM + 1);
        let fast = CoderOptions::for_level(Level::Fast);
        for (data, want) in [
            (&t[..FAST_SMALL_STREAM], FAST_SMALL_LEVEL),
            (&t[..1000], FAST_SMALL_LEVEL),
            (&t[..], 3),
        ] {
            let p = pack_stream(data, StreamClass::Diff, &fast).unwrap();
            assert_eq!(p.coder, Coder::Zstd { level: want }, "{} bytes", data.len());
            assert_eq!(
                decode(p.coder.kind().code(), &p.bytes, data.len() as u64).unwrap(),
                data
            );
        }
        // a forced coder (the streamed sender's blocks) keeps its level
        let pinned = CoderOptions {
            force: Some(Coder::Zstd { level: 1 }),
            ..fast
        };
        let p = pack_stream(&t[..1000], StreamClass::Diff, &pinned).unwrap();
        assert_eq!(p.coder, Coder::Zstd { level: 1 });
    }

    #[test]
    fn forged_lzma_and_zstd_streams_are_refused() {
        // damaged bytes
        for kind in [
            CoderKind::Zstd,
            CoderKind::ZstdX86,
            CoderKind::Lzma,
            CoderKind::Xz,
        ] {
            let e = decode(kind.code(), &[0xffu8; 40], 10).unwrap_err();
            assert!(
                matches!(e, CoderError::Damaged { .. } | CoderError::Length { .. }),
                "{e}"
            );
        }
        // an .lzma header asking for a 4 GiB dictionary is refused by the memory limit
        let mut h = vec![0x5du8, 0xff, 0xff, 0xff, 0xff];
        h.extend_from_slice(&u64::MAX.to_le_bytes());
        h.extend_from_slice(&[0u8; 16]);
        let e = decode(CoderKind::Lzma.code(), &h, 100).unwrap_err();
        assert!(matches!(e, CoderError::Damaged { .. }), "{e}");
    }
}
