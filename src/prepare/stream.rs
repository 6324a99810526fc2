//! Streaming send: planning overlaps the wire.
//!
//! A producer ([`produce`], on its own thread) reads each file window by window (a small
//! first window, then doubling up to [`StreamOptions::max_window`]), hashes it and plans it
//! against the snapshot with [`crate::plan::plan`]; an encoder thread (`pfs-encode`) packs
//! each planned window into blocks (`blueprint::block`) while the next one is planned, and
//! hands them over a bounded channel in order, then the file's BLAKE3. With the receiver's
//! offers to wait for, the first file's first window is read and planned while the
//! handshake runs, and used unless the receiver offers part of that file. The [`Feed`] endpoint wraps
//! the [`Sender`]: before each transmit it moves what arrived into the sender
//! ([`Sender::push_block`], [`Sender::finish_file`]), so the manifest and the first blocks
//! leave while later windows are still being planned. The manifest needs only names and
//! sizes: each file declares a stream bound ([`bound`]) and its hash travels in the end
//! record after its last block.
//!
//! Windows are planned on their own (no match reaches outside its window), and each window's
//! blocks are never larger than the window stored raw plus a small allowance (a window whose
//! packed form would be larger goes as raw blocks), so the bound holds whatever the data.

use crate::blueprint::predict::{Causal, PredictOptions, RefModel};
use crate::blueprint::{block, raw_segments, Blueprint, Source};
use crate::index::IndexSet;
use crate::plan::{self, hints::Hints, PlanConfig};
use crate::pob::Snapshot;
use crate::proto::{Endpoint, Event, Failure, OutgoingFile, SendError, Sender, Stats};
use crate::wire::held::{HeldEntry, HeldKind, ResumeRecord};
use crate::wire::payload::StreamEnd;
use std::cell::Cell;
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

/// How a file is cut, planned and packed while it streams.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The first window of each file (small, so the first blocks leave at once).
    pub first_window: u64,
    /// Windows double up to this.
    pub max_window: u64,
    pub plan: PlanConfig,
    pub encode: block::EncodeOptions,
    /// Windows' worth of blocks the channel holds before the producer waits.
    pub channel: usize,
    /// Plan every window of a file with one literal price, estimated once on samples spread
    /// over the whole file (`default`, `max`), instead of one estimated per window and
    /// carried while windows leave few literals (`fast`). On the libstd release pair the
    /// per-window estimates ran from 1.4 to 4.6 bits per byte (the file's: 2.4) and the
    /// `default` blocks took 841,770 bytes, 748,230 with one price for the file (`max`
    /// 773,718 and 743,605); `fast` came out 0.9% larger with one fixed price
    /// (docs/profile.md, "Block coding").
    pub file_price: bool,
    /// Files of at most this many bytes are planned and packed whole, as `pfs plan` makes a
    /// `.pbb` (the stream coders that measure smallest, the x86-64 reference predictions),
    /// and go as that one block ([`crate::blueprint::block::from_pbb`]) instead of window by
    /// window at the block coders: the libstd release pair (5.4 MB) goes as 786 KB instead
    /// of 931 KB of windowed blocks. The first data frame waits for the whole plan (about
    /// 70 ms there at `fast` on the 2-core VM; the session's handshake runs meanwhile), and
    /// the receiver decodes the block once all of it is there: at 1 Gbit/s that file took
    /// 0.121 s end to end against 0.079 s window by window (`pfs send --plan-whole`).
    /// 0 (the default): every file goes window by window.
    pub whole_max: u64,
    /// Reference predictions for x86-64 ELF files ([`crate::blueprint::predict::Causal`]):
    /// the model goes in the file's first block planned and each block's differences are
    /// predicted with the segments sent so far ([`PredictOptions::STREAM_FAST`] at `fast`,
    /// [`PredictOptions::DEFAULT`] at `default` and `max`).
    pub predict: PredictOptions,
}

impl StreamOptions {
    /// The options of a planner preset (`pfs send --level`): its [`PlanConfig`] and block
    /// coders ([`block::EncodeOptions::for_level`]), windows as the defaults.
    pub fn for_level(level: crate::blueprint::Level) -> Self {
        StreamOptions {
            plan: PlanConfig::preset(level),
            encode: block::EncodeOptions::for_level(level),
            file_price: level != crate::blueprint::Level::Fast,
            predict: if level == crate::blueprint::Level::Fast {
                PredictOptions::STREAM_FAST
            } else {
                PredictOptions::DEFAULT
            },
            ..StreamOptions::default()
        }
    }
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            first_window: 64 << 10,
            max_window: 4 << 20,
            plan: PlanConfig::default(),
            encode: block::EncodeOptions::default(),
            channel: 8,
            file_price: false,
            whole_max: 0,
            predict: PredictOptions::STREAM_FAST,
        }
    }
}

/// Whether `f` goes as one window: a file no longer than the first window, or one planned
/// whole ([`StreamOptions::whole_max`]).
fn one_window(f: &StreamFile, o: &StreamOptions) -> bool {
    f.size <= o.first_window.max(1) || f.size <= o.whole_max
}

/// Unsent stream bytes past which [`Feed`] leaves the producer's blocks in the channel:
/// 16 MiB is 13 ms of a 10 Gbit/s link, and the sender pulls again each time it builds a
/// frame.
pub const PULL_AHEAD: u64 = 16 << 20;

/// Bytes a window's blocks may take beyond the window itself: 1/512 of it and 256 bytes.
fn allowance(len: u64) -> u64 {
    len / 512 + 256
}

/// The windows `(offset, length)` a file of `size` bytes is cut into.
pub fn windows(size: u64, o: &StreamOptions) -> impl Iterator<Item = (u64, u64)> {
    let (first, max) = (
        o.first_window.max(1),
        o.max_window.max(o.first_window).max(1),
    );
    let mut at = 0u64;
    let mut w = first;
    std::iter::from_fn(move || {
        if at >= size {
            return None;
        }
        let len = w.min(size - at);
        let r = (at, len);
        at += len;
        w = (w * 2).min(max);
        Some(r)
    })
}

/// The windows of a file of `size` bytes whose first `from` bytes the receiver holds: cut
/// as a file of the rest would be, at their offsets in the whole file.
pub fn windows_from(size: u64, from: u64, o: &StreamOptions) -> impl Iterator<Item = (u64, u64)> {
    windows(size.saturating_sub(from), o).map(move |(s, l)| (s + from, l))
}

/// Whether a stream that continues after `from` bytes (a resume record, then the blocks of
/// [`windows_from`]) fits the bound a file of `size` bytes declared.
pub fn resume_fits(size: u64, from: u64, o: &StreamOptions) -> bool {
    from <= size && bound(size - from, o) + ResumeRecord::LEN as u64 <= bound(size, o)
}

/// The stream bound a file of `size` bytes declares: every window's blocks and the end
/// record fit in it.
pub fn bound(size: u64, o: &StreamOptions) -> u64 {
    windows(size, o)
        .map(|(_, len)| len + allowance(len))
        .sum::<u64>()
        + StreamEnd::LEN as u64
}

/// One file to stream: its name on the receiver, where it is here, and its size.
#[derive(Debug, Clone)]
pub struct StreamFile {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

impl StreamFile {
    /// `path`, sent under its file name.
    pub fn open(path: PathBuf) -> Result<Self, StreamError> {
        let size = std::fs::metadata(&path)
            .map_err(|source| StreamError::Read {
                path: path.clone(),
                source,
            })?
            .len();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        Ok(StreamFile { name, path, size })
    }
}

/// The sender's files for `files`: names, sizes and bounds, nothing planned yet.
pub fn outgoing(files: &[StreamFile], o: &StreamOptions) -> Vec<OutgoingFile> {
    files
        .iter()
        .map(|f| OutgoingFile::Streamed {
            name: f.name.clone(),
            size: f.size,
            bound: bound(f.size, o),
        })
        .collect()
}

/// What the producer hands over.
#[derive(Debug)]
pub enum Item {
    /// Whole blocks of file `file`, the next in its stream.
    Blocks { file: usize, bytes: Vec<u8> },
    /// File `file` is complete; its BLAKE3.
    Finished { file: usize, hash: [u8; 32] },
    /// Whole small files (one window each), each with all its blocks and its BLAKE3: many
    /// small files cross the bounded channel as one item, not two items each.
    Small(Vec<SmallFile>),
    /// File `file` continues after the `at` bytes the receiver holds (its first blocks are
    /// a resume record); `whole`: the receiver's file is kept as it is (skip).
    Resumed { file: usize, at: u64, whole: bool },
}

/// A small file handed over whole ([`Item::Small`]).
#[derive(Debug)]
pub struct SmallFile {
    pub file: usize,
    pub bytes: Vec<u8>,
    pub hash: [u8; 32],
}

/// Small files go over the channel in batches of at most this many bytes of blocks...
const SMALL_BATCH_BYTES: usize = 256 << 10;
/// ...and at most this many files.
const SMALL_BATCH_FILES: usize = 64;

/// The receiver's offers ([`crate::proto::Sender::held`]), handed to the producer once the
/// handshake is done. A producer given this channel waits for them before the first file.
pub type Offers = Receiver<Vec<HeldEntry>>;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} changed size while it was sent (declared {declared} bytes)", .path.display())]
    Changed { path: PathBuf, declared: u64 },
    #[error("planning {} failed", .path.display())]
    Plan {
        path: PathBuf,
        #[source]
        source: plan::PlanError,
    },
    #[error("packing {} failed", .path.display())]
    Pack {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the snapshot's indexes failed")]
    Index(#[source] crate::index::IndexError),
    #[error("the sender refused a block")]
    Send(#[source] SendError),
    #[error("the block producer stopped before every file was complete")]
    ProducerGone,
}

/// Encode window `bp` (planned on its own, file positions relative to the window) as the
/// blocks of file range `[start, start + bp.file_len)`: its self copies (sources relative
/// to the window) moved to their absolute sources. With `causal` (the file's predictions,
/// whose blocks so far end at `start`, and the snapshot), the blocks' differences are
/// predicted ([`block::encode_at`]).
fn encode_window(
    mut bp: Blueprint,
    start: u64,
    o: &block::EncodeOptions,
    causal: Option<(&mut Causal, &[u8])>,
) -> Result<Vec<u8>, std::io::Error> {
    for s in &mut bp.segments {
        if let Source::SelfCopy { off } = &mut s.src {
            *off += start;
        }
    }
    block::encode_at(&bp, start, o, causal)
}

/// The blocks of window `[start, start + window.len())` stored raw (within the allowance):
/// compressed where samples of it compress, else straight from its bytes.
fn raw_window(
    window: &[u8],
    start: u64,
    snap_id: [u8; 32],
    o: &block::EncodeOptions,
) -> Result<Vec<u8>, std::io::Error> {
    if plan::estimate_raw_bits_within(window, WINDOW_SAMPLE) >= STORE_BITS {
        return Ok(block::encode_stored_raw(window, o));
    }
    let raw = Blueprint {
        snapshot_id: snap_id,
        file_len: window.len() as u64,
        file_hash: [0; 32],
        segments: raw_segments(window.len() as u64),
        spill: window.to_vec(),
    };
    encode_window(raw, start, o, None)
}

/// A window's estimated literal cost (bits per byte, zstd -1 on samples) from which its
/// literals are stored as they are: 97% of 8 bits, the rule the stream coder stores by.
const STORE_BITS: f64 = 8.0 * 0.97;

/// Bytes of a window the literal-cost estimate compresses.
const WINDOW_SAMPLE: usize = 256 << 10;

/// The literal price (bits per byte) a file's windows are planned with. Estimated on
/// samples of a window (zstd -1: on a covered file that was a third of the producer's
/// CPU), then carried to the file's next windows while they leave under 1/8 of their
/// bytes as literals, where the price decides little; estimated again after a window with
/// more, and before a window found all raw is passed through.
#[derive(Debug, Default)]
struct Price {
    file: Option<PathBuf>,
    bits: Option<f64>,
    /// The file's last window was weak ([`plan::Plan::weak`]): the next starts probed.
    weak: bool,
}

impl Price {
    /// The price carried for `file`, if its last window left one.
    fn carried(&self, file: &std::path::Path) -> Option<f64> {
        self.bits.filter(|_| self.file.as_deref() == Some(file))
    }

    /// Whether `file`'s next window starts probed: its last window was weak.
    fn weak(&self, file: &std::path::Path) -> bool {
        self.weak && self.file.as_deref() == Some(file)
    }

    /// After a window of `file` planned at `bits` (`weak` or not): carry them on, or
    /// estimate next time.
    fn keep(&mut self, file: &std::path::Path, bits: f64, carry: bool, weak: bool) {
        if self.file.as_deref() != Some(file) {
            self.file = Some(file.to_path_buf());
        }
        self.bits = carry.then_some(bits);
        self.weak = weak;
    }
}

/// The literal price a window of `f` is planned with, and whether it was estimated on the
/// window's own bytes: the config's; the one carried from the file's last window; with
/// `o.file_price` and a file longer than the window, one estimated on samples spread over
/// the whole file (if they read); else one estimated on 256 KiB of samples of the window
/// (`plan` would take 2 MiB).
fn window_price(window: &[u8], o: &StreamOptions, f: &StreamFile, price: &Price) -> (f64, bool) {
    if let Some(b) = o.plan.cost.raw_bits_per_byte {
        return (b, true);
    }
    if let Some(b) = price.carried(&f.path) {
        return (b, false);
    }
    if o.file_price && (window.len() as u64) < f.size {
        if let Ok(b) = file_price(&f.path, f.size) {
            return (b, false);
        }
    }
    (plan::estimate_raw_bits_within(window, WINDOW_SAMPLE), true)
}

/// The literal price of the file at `path` (`size` bytes), estimated as a window's is but
/// on 8 samples of 32 KiB spread over the whole file (read where they lie: 256 KiB at most).
fn file_price(path: &std::path::Path, size: u64) -> std::io::Result<f64> {
    use std::os::unix::fs::FileExt;
    let piece = (WINDOW_SAMPLE / 8) as u64;
    let file = std::fs::File::open(path)?;
    let n = size.div_ceil(piece).min(8);
    let stride = if n > 1 {
        (size - piece.min(size)) / (n - 1)
    } else {
        0
    };
    let mut buf = Vec::with_capacity(WINDOW_SAMPLE);
    for i in 0..n {
        let at = i * stride;
        let len = piece.min(size - at) as usize;
        let start = buf.len();
        buf.resize(start + len, 0);
        file.read_exact_at(&mut buf[start..], at)?;
    }
    // the same pieces again: `estimate_raw_bits_within` cuts `buf` where they join
    Ok(plan::estimate_raw_bits_within(&buf, WINDOW_SAMPLE))
}

/// One window planned: passed through as stored raw blocks when nothing matched and
/// nothing compresses, else a blueprint to encode ([`Packed::finish`]).
fn pack_window(
    window: &[u8],
    start: u64,
    snap: &Snapshot,
    idx: &IndexSet,
    o: &StreamOptions,
    f: &StreamFile,
    price: &mut Price,
) -> Result<Packed, StreamError> {
    if start == 0 && window.len() as u64 == f.size && f.size <= o.whole_max {
        return pack_whole(window, snap, idx, o, f).map(Packed::Done);
    }
    let mut cfg = o.plan.clone();
    let (bits, fresh) = window_price(window, o, f, price);
    cfg.cost.raw_bits_per_byte = Some(bits);
    // the producer hashes the whole file as it reads it: the window's own hash is not
    // needed; a window nothing matches keeps no copy of itself (the pass-through below sends
    // it from `window`)
    let how = plan::How {
        hash: false,
        elide_raw_spill: true,
        start_weak: price.weak(&f.path),
    };
    let mut planned =
        plan::plan_with(window, snap, idx, &Hints::default(), &cfg, how).map_err(|source| {
            StreamError::Plan {
                path: f.path.clone(),
                source,
            }
        })?;
    let literals = planned.blueprint.literal_bytes();
    price.keep(
        &f.path,
        bits,
        o.file_price || literals * 8 < window.len() as u64,
        planned.weak,
    );
    // Pass-through: nothing of the snapshot matched (the whole window is literals) and
    // samples do not compress, so the window goes as stored raw blocks straight from its
    // bytes (no coder trials, no copies through the blueprint's spill and the streams).
    if literals == window.len() as u64 {
        let bits = if fresh {
            bits
        } else {
            plan::estimate_raw_bits_within(window, WINDOW_SAMPLE)
        };
        if bits >= STORE_BITS {
            return Ok(Packed::Done(block::encode_stored_raw(window, &o.encode)));
        }
    }
    planned.fill_spill(window);
    Ok(Packed::Encode(Box::new(EncodeJob {
        bp: planned.blueprint,
        start,
        snap_id: snap.id,
    })))
}

/// A whole file (`file`) planned and packed as `pfs plan` does (its own literal price, the
/// x86-64 hints and reference predictions, the plain form weighed against the blueprint, each
/// stream's coder measured at the preset of `o.encode`), as one block of the `.pbb`'s streams.
/// Where that does not pay (a file of incompressible literals, a block beyond the window's
/// allowance or the block limits) the file goes as raw blocks ([`raw_window`], as
/// [`Packed::finish`] does), without being planned again.
fn pack_whole(
    file: &[u8],
    snap: &Snapshot,
    idx: &IndexSet,
    o: &StreamOptions,
    f: &StreamFile,
) -> Result<Vec<u8>, StreamError> {
    use crate::blueprint::pbb;
    let how = plan::How {
        hash: false,
        elide_raw_spill: true,
        start_weak: false,
    };
    let hints = Hints::from_elf(file).unwrap_or_default();
    let mut p = plan::plan_with(file, snap, idx, &hints, &o.plan, how).map_err(|source| {
        StreamError::Plan {
            path: f.path.clone(),
            source,
        }
    })?;
    let pack_err = |source| StreamError::Pack {
        path: f.path.clone(),
        source,
    };
    let raw = || raw_window(file, 0, snap.id, &o.encode).map_err(pack_err);
    if pbb::stored_raw(&p.blueprint, file).is_some() {
        return raw();
    }
    p.fill_spill(file);
    let mut opts = pbb::PackOptions::for_level(o.encode.preset);
    if !o.predict.any() {
        opts.predict = PredictOptions::NONE; // `pfs send --predict off`
    }
    let (bytes, _, _) = pbb::pack_best(&p.blueprint, file, Some(snap.bytes()), &opts)
        .map_err(|e| pack_err(std::io::Error::other(e)))?;
    let limit = file.len() as u64 + allowance(file.len() as u64);
    match block::from_pbb(&bytes, &block::Limits::default()) {
        Some(b) if b.len() as u64 <= limit => Ok(b),
        _ => raw(),
    }
}

/// A window after [`pack_window`]: its blocks, or a blueprint still to encode.
#[derive(Debug)]
enum Packed {
    Done(Vec<u8>),
    Encode(Box<EncodeJob>),
}

/// A planned window whose blocks are still to be encoded (the producer's encoder thread
/// does it while the next window is planned).
#[derive(Debug)]
struct EncodeJob {
    bp: Blueprint,
    start: u64,
    snap_id: [u8; 32],
}

impl Packed {
    /// The window's blocks (`window`: its bytes, at file offset `start`): encoded, or raw if
    /// that is not smaller than the allowance lets through. `causal`: the file's
    /// predictions (and the snapshot), which learn what the receiver will hold after this
    /// window; dropped where the window that carried the model goes raw instead.
    fn finish(
        self,
        window: &[u8],
        start: u64,
        o: &StreamOptions,
        f: &std::path::Path,
        causal: (&mut Option<Causal>, &[u8]),
    ) -> Result<Vec<u8>, StreamError> {
        let pack_err = |source| StreamError::Pack {
            path: f.to_path_buf(),
            source,
        };
        let out_of_order =
            || pack_err(std::io::Error::other("windows predicted out of file order"));
        let (causal, snap) = causal;
        let len = window.len() as u64;
        let job = match self {
            Packed::Done(b) => {
                // raw blocks: nothing to predict, the file's blocks go on after them
                if let Some(c) = causal {
                    c.extend(snap, &[], start, len)
                        .map_err(|_| out_of_order())?;
                }
                return Ok(b);
            }
            Packed::Encode(job) => job,
        };
        let limit = len + allowance(len);
        let packed = encode_window(
            job.bp,
            job.start,
            &o.encode,
            causal.as_mut().map(|c| (c, snap)),
        )
        .map_err(pack_err)?;
        if packed.len() as u64 <= limit {
            return Ok(packed);
        }
        match causal {
            // the model went with these blocks: no predictions until a window brings one
            Some(c) if start <= c.start() => *causal = None,
            Some(c) => {
                c.rollback(start);
                c.extend(snap, &[], start, len)
                    .map_err(|_| out_of_order())?;
            }
            None => {}
        }
        let packed = raw_window(window, job.start, job.snap_id, &o.encode).map_err(pack_err)?;
        debug_assert!(
            packed.len() as u64 <= limit,
            "raw blocks within the allowance"
        );
        Ok(packed)
    }
}

/// The reference model of file `f` (x86-64 ELF) from its first window planned (`window`,
/// at file offset `start`, planned as `job`): the file's whole bytes are the window's
/// mapping, the window itself (a file of one window), or mapped here.
fn window_model(
    f: &StreamFile,
    window: &WindowBytes,
    start: u64,
    job: &EncodeJob,
    snap: &[u8],
    o: &StreamOptions,
) -> Option<RefModel> {
    if !o.predict.any() {
        return None;
    }
    // the file's header first: most files are no x86-64 ELF, and are not read again
    let mut head = [0u8; 65];
    let head: &[u8] = if start == 0 {
        window
    } else {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&f.path).ok()?;
        file.read_exact_at(&mut head, 0).ok()?;
        &head
    };
    if !crate::blueprint::predict::is_x86_64_elf(head) {
        return None;
    }
    let (mapped, read);
    let whole: &[u8] = match window {
        WindowBytes::Mapped(m, _) => m,
        _ if start == 0 && window.len() as u64 == f.size => window,
        // files under `input::MAP_MIN` are not mapped: read whole (at most 1 MiB)
        _ if f.size < crate::input::MAP_MIN => {
            read = std::fs::read(&f.path).ok()?;
            &read
        }
        _ => {
            let file = std::fs::File::open(&f.path).ok()?;
            mapped = crate::input::map_file(&file, &f.path)?;
            &mapped
        }
    };
    if whole.len() as u64 != f.size {
        return None;
    }
    RefModel::for_elf(whole, snap, &job.bp.segments, start, o.predict)
}

/// The predictions of the file whose windows the encoder thread is finishing.
struct FileCausal {
    file: usize,
    /// The file is not an x86-64 ELF image with a model (asked at its first window planned).
    none: bool,
    causal: Option<Causal>,
}

/// How long a window planned during the handshake waits for the indexes: loading them takes
/// 1-2 ms (mapped, not read); indexes still missing after this are being built (seconds),
/// and the first window goes raw, as it did before windows were planned early.
const EARLY_INDEX_WAIT: Duration = Duration::from_millis(10);

/// [`produce`] while the indexes of `o.plan` load (or build) on another thread: the
/// session's first window goes raw if they are not there yet (a window planned during the
/// handshake waits up to 10 ms for them), so the first data frames leave
/// while they load; the rest is planned with them.
pub fn produce_with_default_indexes(
    files: &[StreamFile],
    snap: &Snapshot,
    o: &StreamOptions,
    tx: &SyncSender<Result<Item, StreamError>>,
    offers: Option<Offers>,
) {
    std::thread::scope(|s| {
        let loading = s.spawn(|| {
            IndexSet::ensure(snap, &crate::plan::index_specs(&o.plan), false).map(|r| r.0)
        });
        let mut loading = Some(loading);
        let mut idx: Option<IndexSet> = None;
        // a load failure met by an early window (whose failure nobody reports) waits here
        // for the first window that reports it
        let mut failed: Option<crate::index::IndexError> = None;
        let mut first = true;
        let mut price = Price::default();
        produce_with(
            files,
            snap.bytes(),
            tx,
            o,
            offers,
            &mut |window, start, f, early| {
                if let Some(e) = failed.take_if(|_| !early) {
                    return Err(StreamError::Index(e));
                }
                // while the handshake runs, waiting for the indexes costs nothing, up to
                // EARLY_INDEX_WAIT: indexes still being built then (a snapshot without them)
                // leave the first window raw, so the first data frames do not wait for a build
                if early {
                    let until = Instant::now() + EARLY_INDEX_WAIT;
                    while loading.as_ref().is_some_and(|h| !h.is_finished())
                        && Instant::now() < until
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                if let Some(h) = loading.take_if(|h| !first || h.is_finished()) {
                    match h.join().expect("the index loader does not panic") {
                        Ok(i) => idx = Some(i),
                        Err(e) if early => {
                            failed = Some(e);
                            return Err(StreamError::ProducerGone);
                        }
                        Err(e) => return Err(StreamError::Index(e)),
                    }
                }
                first = false;
                match &idx {
                    Some(idx) => pack_window(window, start, snap, idx, o, f, &mut price),
                    None => raw_window(window, start, snap.id, &o.encode)
                        .map(Packed::Done)
                        .map_err(|source| StreamError::Pack {
                            path: f.path.clone(),
                            source,
                        }),
                }
            },
        );
    })
}

/// Plan and pack `files` in order, window by window, handing the blocks to `tx`. Stops
/// early when the other end hangs up; a failure is handed over as the last item.
pub fn produce(
    files: &[StreamFile],
    snap: &Snapshot,
    idx: &IndexSet,
    o: &StreamOptions,
    tx: &SyncSender<Result<Item, StreamError>>,
    offers: Option<Offers>,
) {
    let mut price = Price::default();
    produce_with(
        files,
        snap.bytes(),
        tx,
        o,
        offers,
        &mut |window, start, f, _| pack_window(window, start, snap, idx, o, f, &mut price),
    )
}

/// What plans one window (its bytes, its file offset, its file; `early`: called while the
/// session's handshake runs, when nothing could leave yet, so waiting costs nothing).
type PackFn<'a> = dyn FnMut(&[u8], u64, &StreamFile, bool) -> Result<Packed, StreamError> + 'a;

/// What the producer's planning thread hands its encoder thread, in stream order.
enum Stage {
    /// An item to pass on as it is.
    Item(Result<Item, StreamError>),
    /// A window of file `file` to finish ([`Packed::finish`]); a buffer goes back to the
    /// planning thread afterwards.
    Window {
        file: usize,
        start: u64,
        packed: Packed,
        window: WindowBytes,
    },
}

/// A window's bytes: read into a buffer (of the pool), or a range of the file's mapping.
enum WindowBytes {
    Read(Vec<u8>),
    Mapped(std::sync::Arc<memmap2::Mmap>, std::ops::Range<usize>),
}

impl std::ops::Deref for WindowBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            WindowBytes::Read(v) => v,
            WindowBytes::Mapped(m, r) => &m[r.clone()],
        }
    }
}

/// Windows planned ahead of the encoder: one, so a window is encoded while the next is
/// planned and at most three window buffers exist.
const STAGE_AHEAD: usize = 1;

/// The encoder thread: finishes each window and passes every item on to `tx` in order.
/// Returns when the planning thread is done or `tx` hangs up (or after a failure, handed
/// over as the last item); dropping `rx` then stops the planning thread.
fn encode_stage(
    rx: Receiver<Stage>,
    tx: &SyncSender<Result<Item, StreamError>>,
    free: SyncSender<Vec<u8>>,
    files: &[StreamFile],
    snap: &[u8],
    o: &StreamOptions,
) {
    let mut cur: Option<FileCausal> = None;
    for m in rx {
        let item = match m {
            Stage::Item(it) => it,
            Stage::Window {
                file,
                start,
                packed,
                window,
            } => {
                let fc = match &mut cur {
                    Some(fc) if fc.file == file => fc,
                    _ => cur.insert(FileCausal {
                        file,
                        none: false,
                        causal: None,
                    }),
                };
                // the model, from the file's first window planned
                if let (None, false, Packed::Encode(job)) = (&fc.causal, fc.none, &packed) {
                    match window_model(&files[file], &window, start, job, snap, o) {
                        Some(m) => fc.causal = Some(Causal::new(m, snap, start)),
                        None => fc.none = true,
                    }
                }
                let r = packed.finish(&window, start, o, &files[file].path, (&mut fc.causal, snap));
                if let WindowBytes::Read(buf) = window {
                    let _ = free.try_send(buf);
                }
                r.map(|bytes| Item::Blocks { file, bytes })
            }
        };
        let failed = item.is_err();
        if tx.send(item).is_err() || failed {
            return;
        }
    }
}

fn produce_with(
    files: &[StreamFile],
    snap: &[u8],
    tx: &SyncSender<Result<Item, StreamError>>,
    o: &StreamOptions,
    offers: Option<Offers>,
    pack: &mut PackFn<'_>,
) {
    let (stage_tx, stage_rx) = std::sync::mpsc::sync_channel(STAGE_AHEAD);
    let (free_tx, free_rx) = std::sync::mpsc::sync_channel(STAGE_AHEAD + 1);
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("pfs-encode".into())
            .spawn_scoped(s, || encode_stage(stage_rx, tx, free_tx, files, snap, o))
            .expect("spawning the producer's encoder thread");
        let enc = ToEncoder {
            tx: &stage_tx,
            free: &free_rx,
        };
        plan_files(files, &enc, o, offers, pack);
        drop(stage_tx);
    });
}

/// The planning thread's ends of the encoder thread: where windows go, where their
/// buffers come back.
struct ToEncoder<'a> {
    tx: &'a SyncSender<Stage>,
    free: &'a Receiver<Vec<u8>>,
}

/// The planning thread of [`produce_with`]: every file in order, each item (and each
/// window to encode) handed to the encoder thread.
fn plan_files(
    files: &[StreamFile],
    enc: &ToEncoder<'_>,
    o: &StreamOptions,
    offers: Option<Offers>,
    pack: &mut PackFn<'_>,
) {
    // While the handshake runs, the first file's first window is read and planned: it is
    // used unless the receiver offers part of that file (then it is dropped). A failure is
    // not reported here: the file is read again below and reports it.
    let tx = enc.tx;
    let mut head = None;
    let held: HashMap<u32, HeldEntry> = match offers {
        None => HashMap::new(),
        Some(rx) => {
            head = files.first().and_then(|f| first_window(f, o, pack));
            match rx.recv() {
                Ok(v) => v.into_iter().map(|e| (e.file, e)).collect(),
                Err(_) => return, // the session ended before its handshake
            }
        }
    };
    // Small files (one window) the receiver holds nothing of are batched; the session's
    // first file goes alone, so that the first data frame does not wait for a batch. Any
    // other file flushes the batch first: items stay in file order.
    let mut batch: Vec<SmallFile> = Vec::new();
    let mut batch_bytes = 0usize;
    let flush = |batch: &mut Vec<SmallFile>, batch_bytes: &mut usize| {
        *batch_bytes = 0;
        batch.is_empty()
            || tx
                .send(Stage::Item(Ok(Item::Small(std::mem::take(batch)))))
                .is_ok()
    };
    for (i, f) in files.iter().enumerate() {
        let offer = held.get(&(i as u32));
        let head = head.take().filter(|_| offer.is_none());
        let r = if one_window(f, o) && offer.is_none() {
            let small = match head {
                Some(Head::Small(s)) => Ok(s),
                _ => produce_small(i, f, o, pack, false),
            };
            small.map(|s| {
                batch_bytes += s.bytes.len();
                batch.push(s);
                if i == 0 || batch_bytes >= SMALL_BATCH_BYTES || batch.len() >= SMALL_BATCH_FILES {
                    flush(&mut batch, &mut batch_bytes)
                } else {
                    true
                }
            })
        } else if !flush(&mut batch, &mut batch_bytes) {
            Ok(false)
        } else {
            produce_file(i, f, o, enc, offer, head, pack)
        };
        match r {
            Ok(true) => {}
            Ok(false) => return, // hung up
            Err(e) => {
                let _ = flush(&mut batch, &mut batch_bytes);
                let _ = tx.send(Stage::Item(Err(e)));
                return;
            }
        }
    }
    let _ = flush(&mut batch, &mut batch_bytes);
}

/// The first file's first window, read and planned while the handshake runs.
enum Head {
    /// The whole file (one window).
    Small(SmallFile),
    /// Its first window's bytes, planned.
    Window(Vec<u8>, Packed),
}

/// [`Head`] of `f` (the session's first file), or None where reading or planning failed.
fn first_window(f: &StreamFile, o: &StreamOptions, pack: &mut PackFn<'_>) -> Option<Head> {
    if one_window(f, o) {
        return produce_small(0, f, o, pack, true).ok().map(Head::Small);
    }
    // a window buffer like the others (huge pages, room for the largest window): it goes
    // to the encoder's pool afterwards; a file that will be mapped has no pool, and the
    // first touch of a huge page (2 MiB zeroed) was 8% of a covered 32 MiB send's CPU
    let mut buf = if f.size >= crate::input::MAP_MIN {
        Vec::with_capacity(o.first_window.max(1) as usize)
    } else {
        crate::bigbuf::with_capacity(o.max_window.min(f.size) as usize)
    };
    buf.resize(o.first_window.max(1) as usize, 0);
    std::fs::File::open(&f.path)
        .and_then(|mut file| file.read_exact(&mut buf))
        .ok()?;
    let packed = pack(&buf, 0, f, true).ok()?;
    Some(Head::Window(buf, packed))
}

/// A file of one window, read, planned and packed whole.
fn produce_small(
    i: usize,
    f: &StreamFile,
    o: &StreamOptions,
    pack: &mut PackFn<'_>,
    early: bool,
) -> Result<SmallFile, StreamError> {
    let read_err = |source| StreamError::Read {
        path: f.path.clone(),
        source,
    };
    let mut buf = Vec::with_capacity(f.size as usize + 1);
    std::fs::File::open(&f.path)
        .map_err(read_err)?
        .take(f.size + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() as u64 != f.size {
        return Err(StreamError::Changed {
            path: f.path.clone(),
            declared: f.size,
        });
    }
    let bytes = if buf.is_empty() {
        Vec::new()
    } else {
        pack(&buf, 0, f, early)?.finish(&buf, 0, o, &f.path, (&mut None, &[]))?
    };
    Ok(SmallFile {
        file: i,
        bytes,
        hash: *blake3::hash(&buf).as_bytes(),
    })
}

/// BLAKE3 state over the next `len` bytes of `file`, hashed on every core.
fn hash_prefix(file: &mut std::fs::File, len: u64) -> std::io::Result<blake3::Hasher> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; (8 << 20).min(len as usize)];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..n])?;
        h.update_rayon(&buf[..n]);
        left -= n as u64;
    }
    Ok(h)
}

fn produce_file(
    i: usize,
    f: &StreamFile,
    o: &StreamOptions,
    enc: &ToEncoder<'_>,
    offer: Option<&HeldEntry>,
    mut head: Option<Head>,
    pack: &mut PackFn<'_>,
) -> Result<bool, StreamError> {
    let (tx, free) = (enc.tx, enc.free);
    let read_err = |source| StreamError::Read {
        path: f.path.clone(),
        source,
    };
    let changed = || StreamError::Changed {
        path: f.path.clone(),
        declared: f.size,
    };
    let mut file = std::fs::File::open(&f.path).map_err(read_err)?;
    let mut hasher = blake3::Hasher::new();
    let mut from = 0u64;
    // What the receiver holds: continue after it when this file's bytes hash the same (the
    // whole file: nothing but the record and the end; a prefix: the rest), else start over.
    if let Some(e) = offer.filter(|e| e.len <= f.size && resume_fits(f.size, e.len, o)) {
        let h = match hash_prefix(&mut file, e.len) {
            Ok(h) => Some(h),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
            Err(e) => return Err(read_err(e)),
        };
        match h {
            Some(h) if *h.finalize().as_bytes() == e.hash => {
                let rec = ResumeRecord {
                    at: e.len,
                    hash: e.hash,
                };
                let whole = e.kind == HeldKind::Whole;
                let items = [
                    Item::Blocks {
                        file: i,
                        bytes: rec.to_bytes().to_vec(),
                    },
                    Item::Resumed {
                        file: i,
                        at: e.len,
                        whole,
                    },
                ];
                for it in items {
                    if tx.send(Stage::Item(Ok(it))).is_err() {
                        return Ok(false);
                    }
                }
                hasher = h;
                from = e.len;
            }
            _ => {
                tracing::info!(file = %f.path.display(), "the receiver's copy differs: sending it whole");
                file.seek(std::io::SeekFrom::Start(0)).map_err(read_err)?;
            }
        }
    }
    // A file of at least 1 MiB is mapped: its windows are planned, hashed and packed where
    // the page cache holds them (reading copied each byte once more into a buffer: on a
    // 32 MiB covered file 16% of the sender's CPU, perf). Else window buffers on huge pages
    // (a 4 MiB window's 4 KiB first-touch faults showed), taken back from the encoder
    // thread once it has finished with them.
    let map = crate::input::map_file(&file, &f.path)
        .filter(|m| m.len() as u64 == f.size)
        .map(std::sync::Arc::new);
    let cap = o.max_window.min(f.size - from) as usize;
    for (start, len) in windows_from(f.size, from, o) {
        // the first window, planned while the handshake ran (this file is read from its
        // start: an offer would have dropped it)
        let planned = match head.take().filter(|_| start == 0) {
            Some(Head::Window(buf, packed)) if buf.len() as u64 == len => Some((buf, packed)),
            _ => None,
        };
        let (buf, packed) = match (planned, &map) {
            (Some((buf, packed)), _) => {
                file.seek(std::io::SeekFrom::Start(len)).map_err(read_err)?;
                (WindowBytes::Read(buf), packed)
            }
            (None, Some(m)) => {
                let w = WindowBytes::Mapped(m.clone(), start as usize..(start + len) as usize);
                let packed = pack(&w, start, f, false)?;
                (w, packed)
            }
            (None, None) => {
                // a buffer from the pool only if it holds the window without growing (a
                // grown buffer leaves the huge pages: 4 KiB faults on every window after)
                let mut buf = free
                    .try_recv()
                    .ok()
                    .filter(|b| b.capacity() >= len as usize)
                    .unwrap_or_else(|| crate::bigbuf::with_capacity(cap));
                buf.resize(len as usize, 0);
                file.read_exact(&mut buf).map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => changed(),
                    _ => read_err(e),
                })?;
                let packed = pack(&buf, start, f, false)?;
                (WindowBytes::Read(buf), packed)
            }
        };
        hasher.update(&buf);
        let m = Stage::Window {
            file: i,
            start,
            packed,
            window: buf,
        };
        if tx.send(m).is_err() {
            return Ok(false);
        }
    }
    // longer than it was: a mapped file is asked for its length (its reads did not move the
    // file position), a read one for one more byte
    let grew = match map {
        Some(_) => file.metadata().map_err(read_err)?.len() != f.size,
        None => file.read(&mut [0u8; 1]).map_err(read_err)? != 0,
    };
    if grew {
        return Err(changed());
    }
    let hash = *hasher.finalize().as_bytes();
    Ok(tx
        .send(Stage::Item(Ok(Item::Finished { file: i, hash })))
        .is_ok())
}

/// A [`Sender`] fed from a producer while it runs: an [`Endpoint`] any driver can run.
/// [`Feed::whole`] wraps a sender whose files are all prepared already (no producer), so
/// one session core runs both kinds of send.
pub struct Feed {
    pub sender: Sender,
    rx: Option<Receiver<Result<Item, StreamError>>>,
    open: bool,
    error: Option<StreamError>,
    /// How often the driver checks for blocks while the producer is running.
    pub poll: Duration,
    last_pull: Cell<Option<Instant>>,
    /// Where the receiver's offers go once the handshake is done (a producer that resumes).
    offers: Option<SyncSender<Vec<HeldEntry>>>,
}

impl Feed {
    pub fn new(sender: Sender, rx: Receiver<Result<Item, StreamError>>) -> Self {
        Feed {
            sender,
            rx: Some(rx),
            open: true,
            error: None,
            poll: Duration::from_millis(1),
            last_pull: Cell::new(None),
            offers: None,
        }
    }

    /// Hand the receiver's offers to the producer (which waits for them) once the
    /// handshake is done: give it the receiving end of `tx`.
    pub fn with_offers(mut self, tx: SyncSender<Vec<HeldEntry>>) -> Self {
        self.offers = Some(tx);
        self
    }

    fn pass_offers(&mut self) {
        if let Some(held) = self.offers.as_ref().and_then(|_| self.sender.held()) {
            if let Some(tx) = self.offers.take() {
                let _ = tx.send(held);
            }
        }
    }

    /// A sender with no producer: every file was prepared whole.
    pub fn whole(sender: Sender) -> Self {
        Feed {
            sender,
            rx: None,
            open: false,
            error: None,
            poll: Duration::from_millis(1),
            last_pull: Cell::new(None),
            offers: None,
        }
    }

    /// Why the producer failed, if it did (the session was then cancelled).
    pub fn take_error(&mut self) -> Option<StreamError> {
        self.error.take()
    }

    fn stop(&mut self, now: Instant, e: StreamError) {
        self.error = Some(e);
        self.open = false;
        self.sender.cancel(now);
    }

    /// Move what the producer handed over into the sender, while the sender has less than
    /// [`PULL_AHEAD`] bytes not yet sent: beyond that the blocks wait in the channel (and
    /// the producer, when it is full), so the sender holds what is in flight and a bounded
    /// lead, not the rest of the file.
    fn pull(&mut self, now: Instant) {
        self.last_pull.set(Some(now));
        while self.open && self.sender.unsent() < PULL_AHEAD {
            let Some(rx) = &self.rx else {
                self.open = false;
                return;
            };
            let r = match rx.try_recv() {
                Ok(Ok(Item::Blocks { file, bytes })) => self.sender.push_block(file, &bytes),
                Ok(Ok(Item::Finished { file, hash })) => self.sender.finish_file(file, hash),
                Ok(Ok(Item::Small(files))) => files.into_iter().try_for_each(|s| {
                    if !s.bytes.is_empty() {
                        self.sender.push_block(s.file, &s.bytes)?;
                    }
                    self.sender.finish_file(s.file, s.hash)
                }),
                Ok(Ok(Item::Resumed { file, at, whole })) => {
                    self.sender.note_resumed(file, at, whole);
                    Ok(())
                }
                Ok(Err(e)) => return self.stop(now, e),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.open = false;
                    if !self.sender.all_pushed() {
                        self.stop(now, StreamError::ProducerGone);
                    }
                    return;
                }
            };
            if let Err(e) = r {
                return self.stop(now, StreamError::Send(e));
            }
        }
    }
}

impl Endpoint for Feed {
    fn handle_datagram(&mut self, now: Instant, datagram: &mut [u8]) -> bool {
        let used = self.sender.handle_datagram(now, datagram);
        self.pass_offers();
        used
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.pull(now);
        self.sender.handle_timeout(now)
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if self.open {
            self.pull(now);
        }
        self.sender.poll_transmit(now, buf)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let t = self.sender.poll_timeout();
        if !self.open || self.sender.is_closed() {
            return t;
        }
        match (t, self.last_pull.get().map(|l| l + self.poll)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.sender.poll_event()
    }

    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    fn stats(&self) -> &Stats {
        self.sender.stats()
    }

    fn outcome(&self) -> Option<Result<(), Failure>> {
        self.sender.outcome()
    }

    fn cancel(&mut self, now: Instant) {
        self.sender.cancel(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::{Level, Segment, Transform};

    /// Run `produce_with` over one file of `real` noise bytes declared as `declared` bytes,
    /// packing each window as its own bytes (failing at window `fail_at`); the items.
    fn produce_one(
        real: usize,
        declared: u64,
        fail_at: Option<u64>,
    ) -> Vec<Result<Item, StreamError>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, crate::prepare::noise(real as u64 + 1, real)).unwrap();
        let f = StreamFile {
            name: "f".into(),
            path,
            size: declared,
        };
        let o = StreamOptions {
            first_window: 1000,
            max_window: 4000,
            ..Default::default()
        };
        // room for every window's item (they are collected once the producer returns)
        let (tx, rx) = std::sync::mpsc::sync_channel(real / 1000 + 64);
        produce_with(
            &[f],
            &[],
            &tx,
            &o,
            None,
            &mut |w, start, f, _| match fail_at {
                Some(at) if at == start => Err(StreamError::Pack {
                    path: f.path.clone(),
                    source: std::io::Error::other("refused"),
                }),
                _ => Ok(Packed::Done(w.to_vec())),
            },
        );
        drop(tx);
        rx.iter().collect()
    }

    #[test]
    fn the_producer_hands_over_every_window_then_the_hash_or_one_clear_error() {
        // a file read window by window, and one large enough to be mapped
        for n in [23_456, crate::input::MAP_MIN as usize + 23_456] {
            let items = produce_one(n, n as u64, None);
            let mut bytes = Vec::new();
            let mut hash = None;
            for it in &items {
                match it.as_ref().unwrap() {
                    Item::Blocks { bytes: b, .. } => bytes.extend_from_slice(b),
                    Item::Finished { hash: h, .. } => hash = Some(*h),
                    other => panic!("unexpected {other:?}"),
                }
            }
            let data = crate::prepare::noise(n as u64 + 1, n);
            assert!(bytes == data, "{n} bytes: the windows differ from the file");
            assert_eq!(hash, Some(*blake3::hash(&data).as_bytes()), "{n} bytes");
        }
        let n = 23_456;
        // grown, shrunk, a failing window: the last item is the error, nothing finishes
        for (real, declared, fail, what) in [
            (n + 10, n as u64, None, "changed size"),
            (n - 10, n as u64, None, "changed size"),
            (n, n as u64, Some(3000), "packing"),
        ] {
            let items = produce_one(real, declared, fail);
            let last = items.last().unwrap().as_ref().unwrap_err().to_string();
            assert!(last.contains(what), "{last}");
            assert!(!items.iter().any(|i| matches!(i, Ok(Item::Finished { .. }))));
        }
    }

    #[test]
    fn a_producer_whose_receiver_hung_up_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 100_000]).unwrap();
        let f = StreamFile::open(path).unwrap();
        let o = StreamOptions {
            first_window: 1000,
            max_window: 2000,
            ..Default::default()
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        drop(rx);
        let mut calls = 0;
        produce_with(&[f], &[], &tx, &o, None, &mut |w, _, _, _| {
            calls += 1;
            Ok(Packed::Done(w.to_vec()))
        });
        // the window the encoder failed to hand over, the one waiting for it, and the one
        // whose hand-over found the encoder gone (of 100)
        assert!(
            calls <= STAGE_AHEAD + 2,
            "{calls} windows packed for nobody"
        );
    }

    /// The items a producer handed over, and each planning call's (window start, early).
    type Produced = (Vec<Result<Item, StreamError>>, Vec<(u64, bool)>);

    /// Produce `data` as one file with the receiver's `offers` (sent before the producer
    /// starts).
    fn produce_offered(data: &[u8], offers: Vec<HeldEntry>) -> Produced {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, data).unwrap();
        let f = StreamFile::open(path).unwrap();
        let o = StreamOptions {
            first_window: 1000,
            max_window: 4000,
            ..Default::default()
        };
        let (otx, orx) = std::sync::mpsc::sync_channel(1);
        otx.send(offers).unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let mut calls = Vec::new();
        produce_with(&[f], &[], &tx, &o, Some(orx), &mut |w, start, _, early| {
            calls.push((start, early));
            Ok(Packed::Done(w.to_vec()))
        });
        drop(tx);
        (rx.iter().collect(), calls)
    }

    #[test]
    fn the_first_window_is_planned_during_the_handshake_and_dropped_for_an_offer() {
        let data = crate::prepare::noise(9, 10_000);
        // nothing offered: the window planned early is the one sent, planned once
        let (items, calls) = produce_offered(&data, Vec::new());
        assert_eq!(calls[0], (0, true));
        assert!(
            calls[1..].iter().all(|&(s, early)| s > 0 && !early),
            "{calls:?}"
        );
        let mut bytes = Vec::new();
        for it in &items {
            if let Ok(Item::Blocks { bytes: b, .. }) = it {
                bytes.extend_from_slice(b);
            }
        }
        assert_eq!(bytes, data);
        assert!(matches!(
            items.last(),
            Some(Ok(Item::Finished { hash, .. })) if *hash == *blake3::hash(&data).as_bytes()
        ));
        // the receiver holds the first 3000 bytes: the early window is dropped and the file
        // goes on from there (a resume record, then windows from 3000)
        let held = HeldEntry {
            file: 0,
            kind: HeldKind::Prefix,
            len: 3000,
            hash: *blake3::hash(&data[..3000]).as_bytes(),
        };
        let (items, calls) = produce_offered(&data, vec![held]);
        assert_eq!(calls[0], (0, true));
        assert_eq!(calls[1], (3000, false), "{calls:?}");
        assert!(items
            .iter()
            .any(|i| matches!(i, Ok(Item::Resumed { at: 3000, .. }))));
        assert!(matches!(items.last(), Some(Ok(Item::Finished { .. }))));
        // a small first file: planned early whole, sent as it was planned
        let small = crate::prepare::noise(3, 700);
        let (items, calls) = produce_offered(&small, Vec::new());
        assert_eq!(calls, vec![(0, true)]);
        assert!(matches!(&items[..], [Ok(Item::Small(v))] if v[0].bytes == small));
    }

    /// `default` and `max` plan a file's windows with the price of samples spread over the
    /// whole file; `fast` estimates the window's own, and a carried price comes first.
    #[test]
    fn default_and_max_price_a_window_by_its_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // a first window of noise, then text that compresses well
        let mut data = crate::prepare::noise(5, 64 << 10);
        while data.len() < 1 << 20 {
            data.extend_from_slice(b"the receiver applies blocks in file order; ");
        }
        std::fs::write(&path, &data).unwrap();
        let f = StreamFile {
            name: "f".into(),
            path: path.clone(),
            size: data.len() as u64,
        };
        let first = &data[..64 << 10];
        let none = Price::default();
        let (fast, fresh) = window_price(first, &StreamOptions::for_level(Level::Fast), &f, &none);
        assert!(
            fast > 7.5 && fresh,
            "fast: the noise window's own price, {fast}"
        );
        let whole = file_price(&path, f.size).unwrap();
        assert!(whole < 4.0, "mostly text: {whole}");
        for level in [Level::Default, Level::Max] {
            let o = StreamOptions::for_level(level);
            assert_eq!(
                window_price(first, &o, &f, &none),
                (whole, false),
                "{level:?}"
            );
            // a window that is the whole file prices itself
            let small = StreamFile {
                size: first.len() as u64,
                ..f.clone()
            };
            assert!(window_price(first, &o, &small, &none).0 > 7.5);
        }
        let mut carried = Price::default();
        carried.keep(&path, 3.25, true, false);
        for level in [Level::Fast, Level::Default] {
            let o = StreamOptions::for_level(level);
            assert_eq!(window_price(first, &o, &f, &carried), (3.25, false));
        }
        // a file that no longer reads falls back to the window's price
        let gone = StreamFile {
            path: dir.path().join("gone"),
            ..f.clone()
        };
        let (b, fresh) = window_price(
            first,
            &StreamOptions::for_level(Level::Default),
            &gone,
            &none,
        );
        assert!(b > 7.5 && fresh);
    }

    #[test]
    fn a_price_is_carried_within_a_file_while_its_windows_leave_few_literals() {
        let (a, b) = (std::path::Path::new("/a"), std::path::Path::new("/b"));
        let mut p = Price::default();
        assert_eq!(p.carried(a), None);
        p.keep(a, 5.5, true, false);
        assert_eq!(p.carried(a), Some(5.5));
        assert_eq!(p.carried(b), None, "another file estimates its own");
        p.keep(a, 5.5, false, false);
        assert_eq!(
            p.carried(a),
            None,
            "a literal-heavy window asks for a new estimate"
        );
        p.keep(b, 7.0, true, false);
        assert_eq!((p.carried(a), p.carried(b)), (None, Some(7.0)));
    }

    #[test]
    fn windows_cover_the_file_and_the_bound_holds_raw_blocks() {
        let o = StreamOptions {
            first_window: 1000,
            max_window: 5000,
            whole_max: 0,
            ..Default::default()
        };
        for size in [0u64, 1, 999, 1000, 1001, 7000, 123_457] {
            let w: Vec<_> = windows(size, &o).collect();
            let mut at = 0;
            for &(s, l) in &w {
                assert_eq!(s, at);
                assert!(l > 0 && l <= 5000);
                at += l;
            }
            assert_eq!(at, size);
            // raw (incompressible) blocks of every window fit the bound
            let data = crate::prepare::noise(size, size as usize);
            let mut total = StreamEnd::LEN as u64;
            for (s, l) in w {
                let raw = Blueprint {
                    snapshot_id: [0; 32],
                    file_len: l,
                    file_hash: [0; 32],
                    segments: raw_segments(l),
                    spill: data[s as usize..(s + l) as usize].to_vec(),
                };
                let n = encode_window(raw, s, &o.encode, None).unwrap().len() as u64;
                assert!(n <= l + allowance(l), "{size}: window {s}+{l} packs to {n}");
                // the pass-through's stored blocks are those very bytes
                let stored =
                    block::encode_stored_raw(&data[s as usize..(s + l) as usize], &o.encode);
                assert_eq!(stored.len() as u64, n, "{size}: window {s}+{l} stored raw");
                total += n;
            }
            assert!(total <= bound(size, &o));
            assert!(bound(size, &o) <= crate::proto::receiver::max_stream_bound(size));
        }
    }

    /// The producer's encoder stage predicts an x86-64 ELF window by window: this test
    /// binary (mapped, as files of 1 MiB or more are) and a small system ELF (read whole for
    /// its model: /bin/ls, where it is one) are each the old image in a snapshot and a copy
    /// the file, each window planned as covers shifted by up to 63 bytes (so the references
    /// the predictor moves change) with raw runs; the first window goes raw, so the model
    /// rides in the second window's first block. Decoded block by block with
    /// `block::Predictions`, the file comes back bit-exact; without predictions the same
    /// windows make other blocks.
    #[test]
    fn an_elf_is_predicted_window_by_window_and_decodes_back() {
        let mut tried = 0;
        for path in ["/proc/self/exe", "/bin/ls"] {
            match std::fs::read(path) {
                Ok(exe)
                    if crate::blueprint::predict::is_x86_64_elf(&exe) && exe.len() > 80 << 10 =>
                {
                    predicted_round_trip(exe);
                    tried += 1;
                }
                _ => eprintln!("skipped {path}: not an x86-64 ELF of more than one window here"),
            }
        }
        assert!(tried > 0 || !cfg!(target_arch = "x86_64"), "no ELF to try");
    }

    fn predicted_round_trip(exe: Vec<u8>) {
        let base = 4096u64;
        let mut snap = vec![0u8; base as usize];
        snap.extend_from_slice(&exe);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new");
        std::fs::write(&path, &exe).unwrap();
        let f = StreamFile {
            name: "new".into(),
            path,
            size: exe.len() as u64,
        };
        let o = StreamOptions {
            first_window: 64 << 10,
            max_window: 1 << 20,
            predict: PredictOptions::DEFAULT,
            ..Default::default()
        };
        let pack = |w: &[u8], start: u64| -> Packed {
            if start == 0 {
                return Packed::Done(block::encode_stored_raw(w, &o.encode));
            }
            let mut rng = crate::pob::prng::SplitMix64::new(start);
            let (mut segments, mut spill) = (Vec::new(), Vec::new());
            let mut q = 0usize;
            while q < w.len() {
                let len = (1 + rng.next_u64() as usize % 8192).min(w.len() - q);
                if rng.next_u64().is_multiple_of(8) {
                    segments.push(Segment {
                        len: len as u32,
                        src: Source::Raw,
                    });
                    spill.extend_from_slice(&w[q..q + len]);
                } else {
                    let off = (base + start + q as u64).saturating_sub(rng.next_u64() % 64);
                    segments.push(Segment {
                        len: len as u32,
                        src: Source::Cover { off },
                    });
                    let old = &snap[off as usize..off as usize + len];
                    spill.extend(
                        w[q..q + len]
                            .iter()
                            .zip(old)
                            .map(|(n, o)| n.wrapping_sub(*o)),
                    );
                }
                q += len;
            }
            Packed::Encode(Box::new(EncodeJob {
                bp: Blueprint {
                    snapshot_id: [0; 32],
                    file_len: w.len() as u64,
                    file_hash: [0; 32],
                    segments,
                    spill,
                },
                start,
                snap_id: [0; 32],
            }))
        };
        let produce = |o: &StreamOptions| -> Vec<u8> {
            let (tx, rx) = std::sync::mpsc::sync_channel(1024);
            produce_with(
                std::slice::from_ref(&f),
                &snap,
                &tx,
                o,
                None,
                &mut |w, start, _, _| Ok(pack(w, start)),
            );
            drop(tx);
            let mut stream = Vec::new();
            for it in rx.iter() {
                if let Item::Blocks { bytes, .. } = it.unwrap() {
                    stream.extend_from_slice(&bytes);
                }
            }
            stream
        };
        let stream = produce(&o);
        let plain = produce(&StreamOptions {
            predict: PredictOptions::NONE,
            ..o.clone()
        });
        assert_ne!(stream, plain, "the predictions changed nothing");
        let lim = block::Limits::default();
        let mut p = block::Predictions::default();
        let (mut at, mut pos, mut models) = (0usize, 0u64, 0);
        let mut out = Vec::with_capacity(exe.len());
        while at < stream.len() {
            let n = block::body_len(&stream[at..], &lim).unwrap().unwrap() as usize;
            let body = &stream[at + block::PREFIX..at + block::PREFIX + n];
            let mut b = block::decode_body(body, &lim, snap.len() as u64, pos).unwrap();
            if !b.refs.is_empty() {
                models += 1;
                assert_eq!(
                    pos,
                    64 << 10,
                    "the model rides in the second window's first block"
                );
            }
            p.apply(&mut b, &snap, pos, f.size).unwrap();
            let bp = Blueprint {
                snapshot_id: [0; 32],
                file_len: b.file_len,
                file_hash: [0; 32],
                segments: b.segments,
                spill: b.spill,
            };
            let mut sp = 0usize;
            for seg in &bp.segments {
                let len = seg.len as usize;
                match seg.src {
                    Source::Raw => out.extend_from_slice(&bp.spill[sp..sp + len]),
                    Source::Cover { off } => out.extend(
                        bp.spill[sp..sp + len]
                            .iter()
                            .zip(&snap[off as usize..off as usize + len])
                            .map(|(d, o)| d.wrapping_add(*o)),
                    ),
                    _ => unreachable!("covers and raw runs only"),
                }
                sp += len;
            }
            pos += bp.file_len;
            at += block::PREFIX + n;
        }
        assert_eq!(models, 1, "one model");
        assert!(out == exe, "the file decoded back bit-exact");
    }

    #[test]
    fn a_window_encoded_at_its_file_offset_decodes_there() {
        let snap: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let seg = |off, len| Segment {
            len,
            src: Source::Snap {
                op: Transform::Xor,
                off,
                imm: 3,
            },
        };
        // window-relative: 100 bytes of snapshot at 50, a raw byte, a self copy of 10 from 0
        let bp = Blueprint {
            snapshot_id: [0; 32],
            file_len: 111,
            file_hash: [0; 32],
            segments: vec![
                seg(50, 100),
                Segment {
                    len: 1,
                    src: Source::Raw,
                },
                Segment {
                    len: 10,
                    src: Source::SelfCopy { off: 0 },
                },
            ],
            spill: vec![9],
        };
        let start = 1_000_000u64;
        let stream = encode_window(bp, start, &Default::default(), None).unwrap();
        let n = block::body_len(&stream, &Default::default())
            .unwrap()
            .unwrap() as usize;
        let b = block::decode_body(&stream[4..4 + n], &Default::default(), 4096, start).unwrap();
        assert_eq!(b.file_len, 111);
        assert_eq!(b.segments[0], seg(50, 100), "snapshot offset as planned");
        assert_eq!(
            b.segments[2].src,
            Source::SelfCopy { off: start },
            "self copy at its absolute source"
        );
        let _ = snap;
        // covers carry their snapshot offsets the same way
        let cover = Blueprint {
            snapshot_id: [0; 32],
            file_len: 4,
            file_hash: [0; 32],
            segments: vec![Segment {
                len: 4,
                src: Source::Cover { off: 7 },
            }],
            spill: vec![1, 2, 3, 4],
        };
        let stream = encode_window(cover.clone(), start, &Default::default(), None).unwrap();
        let b = block::decode_body(&stream[4..], &Default::default(), 4096, start).unwrap();
        assert_eq!((b.segments, b.spill), (cover.segments, cover.spill));
    }
}
