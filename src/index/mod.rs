//! k-gram indexes over a snapshot, stored beside it and memory-mapped on load.
//!
//! An index maps the hash of a k-byte window (under a [`Projection`]) to snapshot positions
//! taken every `step` bytes, at most `fanout` per bucket (the first ones in snapshot order).
//! The table has `2^bucket_bits` buckets, about one per two positions. Layout of an index
//! file (little-endian):
//!
//! | offset | size            | field                                                 |
//! |-------:|----------------:|-------------------------------------------------------|
//! | 0      | 8               | magic `PFSIDX\0\x01`                                  |
//! | 8      | 4               | version (1)                                           |
//! | 12     | 1, 1, 2         | projection, k, reserved                               |
//! | 16     | 4, 4, 4, 4      | step, fanout, bucket_bits, reserved                   |
//! | 32     | 8               | entry count `n`                                       |
//! | 40     | 32              | snapshot id the index was built from                  |
//! | 72     | 56              | reserved (zero)                                       |
//! | 128    | 4 * (2^bits+1)  | bucket heads (prefix sums)                            |
//! | ...    | 2 * n, pad to 4 | 16-bit hash tags                                      |
//! | ...    | 4 * n           | 32-bit snapshot positions                             |
//!
//! **Memory per entry:** 6 bytes (tag + position) plus the bucket heads, 4 bytes per bucket
//! at about two entries per bucket: about **8 bytes per indexed position**, so an index over
//! a snapshot of S bytes with step s costs about 8·S/s bytes (k=8 step 8: ~1 byte per
//! snapshot byte; k=4 step 2: ~4 bytes per snapshot byte), less where fanout caps buckets.
//!
//! A lookup reads one bucket head pair and a short run of tags; the snapshot is touched only
//! for candidates whose tag matches (1 in 65,536 false positives).
//!
//! **Coarse projections** (`ascii`, `nibble`, `numeric`, `opcode`; codes 3-6) map a window to
//! a key many windows share (its ASCII classes, its high nibbles, its 32-bit stride, its
//! histogram of x86 opcode-like byte classes). They are anchors only: the planner confirms each
//! candidate on the real bytes under id/xor/add before using it (`plan::anchor`). They are not
//! in [`default_specs`]; the planner asks for them when its config enables them
//! ([`IndexSpec::estimated_bytes`] gives the memory an index costs before it is built).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pob::Snapshot;

pub mod minimizer;
pub use minimizer::MinIndex;

/// How a window is turned into a key. Delta projections are invariant under the byte-wise
/// transforms: `XorDelta` (`b[i] ^ b[i+1]`) under `xor imm8`, `SubDelta` (`b[i+1] - b[i]`)
/// under `add imm8`; both also match identical bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Projection {
    Raw,
    Xor,
    Add,
    /// ASCII class of each byte (NUL, control, space, digit, upper, lower, punctuation, high).
    Ascii,
    /// High nibble of each byte (invariant under `xor` with an immediate below 16).
    Nibble,
    /// The window as two little-endian u32: their difference (the stride of a counting table).
    Numeric,
    /// Order-free histogram of opcode-like byte classes (zero, 0xff, REX, mov/ALU, branch,
    /// ret/nop/int3, low, other), 4 bits per class.
    Opcode,
    /// Winnowing minimizers over raw 8-byte grams ([`minimizer`]); `step` is the window `w`.
    Minimizer,
}

/// The coarse projections, in code order.
pub const COARSE: [Projection; 4] = [
    Projection::Ascii,
    Projection::Nibble,
    Projection::Numeric,
    Projection::Opcode,
];

impl Projection {
    fn code(self) -> u8 {
        match self {
            Projection::Raw => 0,
            Projection::Xor => 1,
            Projection::Add => 2,
            Projection::Ascii => 3,
            Projection::Nibble => 4,
            Projection::Numeric => 5,
            Projection::Opcode => 6,
            Projection::Minimizer => 7,
        }
    }
    fn from_code(c: u8) -> Option<Projection> {
        [
            Projection::Raw,
            Projection::Xor,
            Projection::Add,
            Projection::Ascii,
            Projection::Nibble,
            Projection::Numeric,
            Projection::Opcode,
            Projection::Minimizer,
        ]
        .get(c as usize)
        .copied()
    }
    /// Parse a projection name (as in [`Projection::name`]).
    pub fn parse(s: &str) -> Option<Projection> {
        (0..8)
            .filter_map(Projection::from_code)
            .find(|p| p.name() == s)
    }
    /// Whether the projection is a coarse anchor (candidates need confirming under all ops).
    pub fn is_coarse(self) -> bool {
        (3..=6).contains(&self.code())
    }
    pub fn name(self) -> &'static str {
        match self {
            Projection::Raw => "raw",
            Projection::Xor => "xor",
            Projection::Add => "add",
            Projection::Ascii => "ascii",
            Projection::Nibble => "nibble",
            Projection::Numeric => "numeric",
            Projection::Opcode => "opcode",
            Projection::Minimizer => "minimizer",
        }
    }
    /// Bytes of input a k-window needs (deltas need one more).
    pub fn span(self, k: u8) -> usize {
        match self {
            Projection::Xor | Projection::Add => k as usize + 1,
            _ => k as usize,
        }
    }
}

/// The parameters of one index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSpec {
    pub projection: Projection,
    /// Window length: 4 or 8.
    pub k: u8,
    pub step: u32,
    pub fanout: u32,
}

impl IndexSpec {
    pub fn file_name(&self) -> String {
        format!(
            "index.{}.k{}s{}f{}.idx",
            self.projection.name(),
            self.k,
            self.step,
            self.fanout
        )
    }
    pub fn validate(&self) -> Result<(), IndexError> {
        if self.projection == Projection::Minimizer {
            if self.k != 8 {
                return Err(IndexError::Spec(format!(
                    "the minimizer index uses k = 8, got {}",
                    self.k
                )));
            }
            if !(2..=255).contains(&self.step) {
                return Err(IndexError::Spec(format!(
                    "minimizer window w must be 2..=255, got {}",
                    self.step
                )));
            }
            if self.fanout == 0 || self.fanout > 255 {
                return Err(IndexError::Spec(format!(
                    "minimizer fanout must be 1..=255, got {}",
                    self.fanout
                )));
            }
            return Ok(());
        }
        if self.k != 4 && self.k != 8 {
            return Err(IndexError::Spec(format!(
                "k must be 4 or 8, got {}",
                self.k
            )));
        }
        if self.projection == Projection::Numeric && self.k != 8 {
            return Err(IndexError::Spec(
                "the numeric projection needs k = 8".into(),
            ));
        }
        if self.step == 0 || self.step > 4096 {
            return Err(IndexError::Spec(format!(
                "step must be 1..=4096, got {}",
                self.step
            )));
        }
        if self.fanout == 0 || self.fanout > 1024 {
            return Err(IndexError::Spec(format!(
                "fanout must be 1..=1024, got {}",
                self.fanout
            )));
        }
        Ok(())
    }
}

/// log2 of the bucket count for `npos` indexed positions (about two per bucket).
fn bucket_bits(npos: usize) -> u32 {
    (usize::BITS - (npos / 2).max(1).leading_zeros()).clamp(10, 30)
}

impl IndexSpec {
    /// Positions this spec indexes in a snapshot of `snap_len` bytes.
    pub fn positions(&self, snap_len: usize) -> usize {
        let span = self.projection.span(self.k);
        if snap_len >= span {
            (snap_len - span) / self.step.max(1) as usize + 1
        } else {
            0
        }
    }
    /// Upper bound of the index file's (and mapping's) size for a snapshot of `snap_len`
    /// bytes: header, bucket heads, and 6 bytes per entry with at most `fanout` entries per
    /// bucket. Coarse projections and small fanouts stay well below it (capped buckets).
    pub fn estimated_bytes(&self, snap_len: usize) -> usize {
        if self.projection == Projection::Minimizer {
            return minimizer::estimated_bytes(self.step, snap_len as u64);
        }
        let npos = self.positions(snap_len);
        let bits = bucket_bits(npos);
        let n = npos.min((self.fanout as usize) << bits);
        layout(bits, n).3
    }
}

/// The default minimizer window (every match of `w + 7` = 27 bytes shares an anchor).
pub const DEFAULT_MIN_W: u32 = 20;
/// The default minimizer fanout.
pub const DEFAULT_MIN_FANOUT: u32 = 8;

/// The minimizer index with window `w` and `fanout`.
pub fn minimizer_spec(w: u32, fanout: u32) -> IndexSpec {
    IndexSpec {
        projection: Projection::Minimizer,
        k: 8,
        step: w,
        fanout,
    }
}

/// The default set: one minimizer index (what the default planner uses; see [`minimizer`]).
pub fn default_specs() -> Vec<IndexSpec> {
    vec![minimizer_spec(DEFAULT_MIN_W, DEFAULT_MIN_FANOUT)]
}

/// The k-gram set of the segment engine (`engine = "segments"`): raw k=8 step 8 and k=4
/// step 2 (fanout 8), and k=8 step 8 delta indexes for xor and add (fanout 4).
pub fn legacy_specs() -> Vec<IndexSpec> {
    vec![
        IndexSpec {
            projection: Projection::Raw,
            k: 8,
            step: 8,
            fanout: 8,
        },
        IndexSpec {
            projection: Projection::Raw,
            k: 4,
            step: 2,
            fanout: 8,
        },
        IndexSpec {
            projection: Projection::Xor,
            k: 8,
            step: 8,
            fanout: 4,
        },
        IndexSpec {
            projection: Projection::Add,
            k: 8,
            step: 8,
            fanout: 4,
        },
    ]
}

/// Map an index file read-only (both index kinds' `open` start here).
pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap, IndexError> {
    let io = |source| IndexError::Io {
        path: path.into(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    // Safety: index files are private, immutable derived data; a concurrent writer would
    // replace the file by rename, not modify it in place.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
    Ok(map)
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("index spec: {0}")]
    Spec(String),
    #[error("{path}: {msg}")]
    Bad { path: PathBuf, msg: String },
    #[error("{path}: built for snapshot {found}, not this one")]
    Stale { path: PathBuf, found: String },
}

const MAGIC: [u8; 8] = *b"PFSIDX\0\x01";
const VERSION: u32 = 1;
const HEADER: usize = 128;

/// A cache prefetch hint.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // Safety: a prefetch is a hint: it never faults and has no architectural effect, whatever
    // the address; the pointer comes from a live slice anyway. SSE is baseline on x86-64.
    #[allow(unsafe_code)]
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[inline(always)]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline(always)]
fn load8(b: &[u8], p: usize) -> u64 {
    u64::from_le_bytes(b[p..p + 8].try_into().expect("8 bytes"))
}

#[inline(always)]
fn load4(b: &[u8], p: usize) -> u64 {
    u32::from_le_bytes(b[p..p + 4].try_into().expect("4 bytes")) as u64
}

/// Byte-wise `y - x` (mod 256 in each lane).
#[inline(always)]
fn sub_bytes(y: u64, x: u64) -> u64 {
    const H: u64 = 0x8080_8080_8080_8080;
    ((y | H) - (x & !H)) ^ ((y ^ !x) & H)
}

/// ASCII class of a byte, 0..8 (see [`Projection::Ascii`]).
const fn ascii_class(b: u8) -> u8 {
    match b {
        0 => 0,
        b' ' => 2,
        b'0'..=b'9' => 3,
        b'A'..=b'Z' => 4,
        b'a'..=b'z' => 5,
        0x21..=0x7e => 6,
        0x80..=0xff => 7,
        _ => 1,
    }
}

/// Opcode-like class of a byte, 0..8 (see [`Projection::Opcode`]).
const fn opcode_class(b: u8) -> u8 {
    match b {
        0x00 => 0,
        0xff => 1,
        0x40..=0x4f => 2,
        0x80..=0x8f => 3,
        0x0f | 0x70..=0x7f | 0xe8..=0xeb => 4,
        0x90 | 0xc3 | 0xc9 | 0xcc => 5,
        0x01..=0x3f => 6,
        _ => 7,
    }
}

const fn class_table(opcode: bool) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if opcode {
            opcode_class(i as u8)
        } else {
            ascii_class(i as u8)
        };
        i += 1;
    }
    t
}
static ASCII_CLASS: [u8; 256] = class_table(false);
static OPCODE_CLASS: [u8; 256] = class_table(true);

/// The key of a coarse projection of the `k` low bytes of `w` (little-endian).
#[inline]
pub fn coarse_key(proj: Projection, k: u8, w: u64) -> u64 {
    let bytes = w.to_le_bytes();
    let bytes = &bytes[..k as usize];
    match proj {
        Projection::Ascii => bytes
            .iter()
            .fold(0u64, |acc, &b| acc << 3 | ASCII_CLASS[b as usize] as u64),
        Projection::Nibble => w & 0xF0F0_F0F0_F0F0_F0F0,
        Projection::Numeric => ((w >> 32) as u32).wrapping_sub(w as u32) as u64,
        Projection::Opcode => bytes.iter().fold(0u64, |acc, &b| {
            acc + (1u64 << (4 * OPCODE_CLASS[b as usize]))
        }),
        _ => w,
    }
}

/// The key hash of the window at `p` (the caller ensures `p + span <= b.len()`).
#[inline(always)]
pub fn window_hash(proj: Projection, k: u8, b: &[u8], p: usize) -> u64 {
    let key = match (proj, k) {
        (Projection::Ascii | Projection::Nibble | Projection::Numeric | Projection::Opcode, 8) => {
            coarse_key(proj, 8, load8(b, p))
        }
        (Projection::Ascii | Projection::Nibble | Projection::Numeric | Projection::Opcode, _) => {
            coarse_key(proj, 4, load4(b, p))
        }
        (Projection::Raw | Projection::Minimizer, 8) => load8(b, p),
        (Projection::Raw | Projection::Minimizer, _) => load4(b, p),
        (Projection::Xor, 8) => load8(b, p) ^ load8(b, p + 1),
        (Projection::Xor, _) => load4(b, p) ^ load4(b, p + 1),
        (Projection::Add, 8) => sub_bytes(load8(b, p + 1), load8(b, p)),
        (Projection::Add, _) => sub_bytes(load4(b, p + 1), load4(b, p)) & 0xffff_ffff,
    };
    mix64(key ^ ((proj.code() as u64) << 56 | (k as u64) << 48).rotate_left(7))
}

/// A loaded (memory-mapped) index.
pub struct Index {
    pub spec: IndexSpec,
    pub bits: u32,
    map: memmap2::Mmap,
    heads_at: usize,
    tags_at: usize,
    pos_at: usize,
    n: usize,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("spec", &self.spec)
            .field("entries", &self.n)
            .finish()
    }
}

fn layout(bits: u32, n: usize) -> (usize, usize, usize, usize) {
    let heads_at = HEADER;
    let tags_at = heads_at + 4 * ((1usize << bits) + 1);
    let pos_at = (tags_at + 2 * n + 3) & !3;
    let end = pos_at + 4 * n;
    (heads_at, tags_at, pos_at, end)
}

impl Index {
    /// Build an index over `snap` and write it to `path` (atomically).
    pub fn build(
        spec: IndexSpec,
        snap: &[u8],
        snap_id: &[u8; 32],
        path: &Path,
    ) -> Result<(), IndexError> {
        spec.validate()?;
        if spec.projection == Projection::Minimizer {
            return Err(IndexError::Spec(
                "the minimizer index is built by MinIndex::build".into(),
            ));
        }
        if snap.len() as u64 > u32::MAX as u64 {
            return Err(IndexError::Spec(format!(
                "k-gram indexes hold 32-bit positions; this snapshot is {} bytes (use the minimizer index: engine = \"covers\")",
                snap.len()
            )));
        }
        let npos = spec.positions(snap.len());
        let bits = bucket_bits(npos);
        let nb = 1usize << bits;
        let shift = 64 - bits;
        let step = spec.step as usize;
        let fan = spec.fanout;
        // Both passes hash a batch of positions and prefetch their buckets before touching
        // them, so the random accesses overlap instead of queueing one cache miss at a time.
        const BATCH: usize = 32;
        let mut hs = [0u64; BATCH];
        let hash_batch = |start: usize, hs: &mut [u64; BATCH]| -> usize {
            let n = BATCH.min(npos - start);
            for (j, h) in hs.iter_mut().enumerate().take(n) {
                *h = window_hash(spec.projection, spec.k, snap, (start + j) * step);
            }
            n
        };
        // pass 1: capped counts per bucket
        let mut counts = vec![0u32; nb + 1];
        let mut i = 0;
        while i < npos {
            let n = hash_batch(i, &mut hs);
            for h in &hs[..n] {
                prefetch(counts[(h >> shift) as usize..].as_ptr() as *const u8);
            }
            for h in &hs[..n] {
                let c = &mut counts[(h >> shift) as usize];
                if *c < fan {
                    *c += 1;
                }
            }
            i += n;
        }
        // prefix sums -> heads
        let mut acc = 0u32;
        for c in counts.iter_mut() {
            let v = *c;
            *c = acc;
            acc += v;
        }
        let heads = counts;
        let n = acc as usize;
        // pass 2: fill tags and positions in snapshot order
        let mut fill: Vec<u32> = heads[..nb].to_vec();
        let mut tags = vec![0u16; n];
        let mut pos = vec![0u32; n];
        let mut i = 0;
        while i < npos {
            let n = hash_batch(i, &mut hs);
            for h in &hs[..n] {
                let b = (h >> shift) as usize;
                prefetch(fill[b..].as_ptr() as *const u8);
                prefetch(heads[b..].as_ptr() as *const u8);
            }
            for (j, h) in hs[..n].iter().enumerate() {
                let b = (h >> shift) as usize;
                let f = fill[b];
                if f < heads[b + 1] {
                    tags[f as usize] = *h as u16;
                    pos[f as usize] = ((i + j) * step) as u32;
                    fill[b] = f + 1;
                }
            }
            i += n;
        }
        drop(fill);
        let (_, tags_at, pos_at, end) = layout(bits, n);
        let mut out = Vec::with_capacity(end);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&[spec.projection.code(), spec.k, 0, 0]);
        for v in [spec.step, spec.fanout, bits, 0] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(n as u64).to_le_bytes());
        out.extend_from_slice(snap_id);
        out.resize(HEADER, 0);
        out.extend_from_slice(bytemuck::cast_slice(&heads));
        debug_assert_eq!(out.len(), tags_at);
        out.extend_from_slice(bytemuck::cast_slice(&tags));
        out.resize(pos_at, 0);
        out.extend_from_slice(bytemuck::cast_slice(&pos));
        debug_assert_eq!(out.len(), end);
        crate::util::write_atomic(path, &out).map_err(|source| IndexError::Io {
            path: path.into(),
            source,
        })
    }

    /// Map an index file, checking it against the snapshot and the spec; every structural
    /// property a lookup relies on is checked here, so lookups cannot go out of bounds.
    pub fn open(
        path: &Path,
        spec: IndexSpec,
        snap_len: usize,
        snap_id: &[u8; 32],
    ) -> Result<Index, IndexError> {
        let bad = |msg: &str| IndexError::Bad {
            path: path.into(),
            msg: msg.into(),
        };
        let map = map_file(path)?;
        if map.len() < HEADER || map[..8] != MAGIC {
            return Err(bad("not an index file"));
        }
        if u32::from_le_bytes(map[8..12].try_into().expect("4")) != VERSION {
            return Err(bad("index version differs"));
        }
        let rd = |at: usize| u32::from_le_bytes(map[at..at + 4].try_into().expect("4"));
        let found = IndexSpec {
            projection: Projection::from_code(map[12]).ok_or_else(|| bad("unknown projection"))?,
            k: map[13],
            step: rd(16),
            fanout: rd(20),
        };
        if found != spec {
            return Err(bad("built with other parameters"));
        }
        if &map[40..72] != snap_id {
            return Err(IndexError::Stale {
                path: path.into(),
                found: crate::util::hex(&map[40..72]),
            });
        }
        let bits = rd(24);
        if !(10..=30).contains(&bits) {
            return Err(bad("bucket bits out of range"));
        }
        let n = u64::from_le_bytes(map[32..40].try_into().expect("8")) as usize;
        let (heads_at, tags_at, pos_at, end) = layout(bits, n);
        if map.len() != end {
            return Err(bad("file length does not match its header"));
        }
        let idx = Index {
            spec,
            bits,
            map,
            heads_at,
            tags_at,
            pos_at,
            n,
        };
        let heads = idx.heads();
        if heads[0] != 0
            || heads[heads.len() - 1] as usize != n
            || heads.windows(2).any(|w| w[0] > w[1])
        {
            return Err(bad("bucket heads are not monotonic"));
        }
        let span = spec.projection.span(spec.k);
        if idx
            .positions()
            .iter()
            .any(|p| *p as usize + span > snap_len)
        {
            return Err(bad("a position lies outside the snapshot"));
        }
        Ok(idx)
    }

    fn heads(&self) -> &[u32] {
        bytemuck::cast_slice(&self.map[self.heads_at..self.tags_at])
    }
    fn tags(&self) -> &[u16] {
        bytemuck::cast_slice(&self.map[self.tags_at..self.tags_at + 2 * self.n])
    }
    fn positions(&self) -> &[u32] {
        bytemuck::cast_slice(&self.map[self.pos_at..self.pos_at + 4 * self.n])
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    /// Bytes the index occupies.
    pub fn bytes(&self) -> usize {
        self.map.len()
    }

    /// Hint the CPU to fetch the bucket heads of `h` (a lookup a few positions ahead).
    #[inline(always)]
    pub fn prefetch_bucket(&self, h: u64) {
        let b = (h >> (64 - self.bits)) as usize;
        prefetch(self.heads()[b..].as_ptr() as *const u8);
    }

    /// Read the (already fetched) heads of `h` and hint the CPU to fetch its tags and positions.
    #[inline(always)]
    pub fn prefetch_entries(&self, h: u64) {
        let b = (h >> (64 - self.bits)) as usize;
        let s = self.heads()[b] as usize;
        prefetch(self.tags()[s..].as_ptr() as *const u8);
        prefetch(self.positions()[s..].as_ptr() as *const u8);
    }

    /// Snapshot positions whose window hash may equal `h` (tag-filtered).
    #[inline]
    pub fn candidates(&self, h: u64) -> impl Iterator<Item = u32> + '_ {
        let b = (h >> (64 - self.bits)) as usize;
        let heads = self.heads();
        let (s, e) = (heads[b] as usize, heads[b + 1] as usize);
        let tag = h as u16;
        let tags = &self.tags()[s..e];
        let pos = &self.positions()[s..e];
        tags.iter()
            .zip(pos)
            .filter(move |(t, _)| **t == tag)
            .map(|(_, p)| *p)
    }
}

/// The indexes of a snapshot, loaded together.
#[derive(Debug)]
pub struct IndexSet {
    pub indexes: Vec<Index>,
    /// The minimizer index, when one was asked for.
    pub minimizer: Option<MinIndex>,
}

/// What `ensure` did for each index.
#[derive(Debug, Clone, Serialize)]
pub struct EnsureReport {
    pub file: String,
    pub rebuilt: bool,
    pub reason: String,
    pub entries: usize,
    pub bytes: usize,
    pub build_seconds: f64,
}

/// The directory holding a snapshot's indexes.
pub fn index_dir(snapshot_dir: &Path) -> PathBuf {
    snapshot_dir.join("index")
}

impl IndexSet {
    /// Load the indexes for `specs`, rebuilding any that is missing, stale or damaged.
    /// Independent indexes are built on separate threads.
    pub fn ensure(
        snap: &Snapshot,
        specs: &[IndexSpec],
        force: bool,
    ) -> Result<(IndexSet, Vec<EnsureReport>), IndexError> {
        let dir = index_dir(&snap.dir);
        std::fs::create_dir_all(&dir).map_err(|source| IndexError::Io {
            path: dir.clone(),
            source,
        })?;
        let bytes = snap.bytes();
        let reason_for = |path: &Path, stale: Result<(), IndexError>| -> String {
            if force {
                "forced".into()
            } else if !path.exists() {
                "missing".into()
            } else {
                match stale {
                    Ok(()) => "up to date".into(),
                    Err(IndexError::Stale { .. }) => "stale (other snapshot id)".into(),
                    Err(e) => format!("unusable ({e})"),
                }
            }
        };
        // the minimizer index first, on every core
        let mut minimizer = None;
        let mut reports = Vec::new();
        for spec in specs
            .iter()
            .filter(|s| s.projection == Projection::Minimizer)
        {
            spec.validate()?;
            let path = dir.join(spec.file_name());
            if !force && path.exists() {
                match MinIndex::open(&path, *spec, bytes.len(), &snap.id) {
                    Ok(idx) => {
                        reports.push(EnsureReport {
                            file: spec.file_name(),
                            rebuilt: false,
                            reason: "up to date".into(),
                            entries: idx.len(),
                            bytes: idx.bytes(),
                            build_seconds: 0.0,
                        });
                        minimizer = Some(idx);
                        continue;
                    }
                    Err(e) => {
                        let reason = reason_for(&path, Err(e));
                        minimizer = Some(Self::build_min(snap, spec, &path, reason, &mut reports)?);
                    }
                }
            } else {
                let reason = reason_for(&path, Ok(()));
                minimizer = Some(Self::build_min(snap, spec, &path, reason, &mut reports)?);
            }
        }
        let kgram: Vec<&IndexSpec> = specs
            .iter()
            .filter(|s| s.projection != Projection::Minimizer)
            .collect();
        let results: Vec<Result<(Index, EnsureReport), IndexError>> = std::thread::scope(|s| {
            let handles: Vec<_> = kgram
                .iter()
                .map(|spec| {
                    let dir = &dir;
                    let reason_for = &reason_for;
                    s.spawn(move || -> Result<(Index, EnsureReport), IndexError> {
                        spec.validate()?;
                        let path = dir.join(spec.file_name());
                        let reason = if force || !path.exists() {
                            reason_for(&path, Ok(()))
                        } else {
                            match Index::open(&path, **spec, bytes.len(), &snap.id) {
                                Ok(idx) => {
                                    let r = EnsureReport {
                                        file: spec.file_name(),
                                        rebuilt: false,
                                        reason: "up to date".into(),
                                        entries: idx.len(),
                                        bytes: idx.bytes(),
                                        build_seconds: 0.0,
                                    };
                                    return Ok((idx, r));
                                }
                                Err(e) => reason_for(&path, Err(e)),
                            }
                        };
                        let t = std::time::Instant::now();
                        Index::build(**spec, bytes, &snap.id, &path)?;
                        let secs = t.elapsed().as_secs_f64();
                        let idx = Index::open(&path, **spec, bytes.len(), &snap.id)?;
                        let r = EnsureReport {
                            file: spec.file_name(),
                            rebuilt: true,
                            reason,
                            entries: idx.len(),
                            bytes: idx.bytes(),
                            build_seconds: secs,
                        };
                        Ok((idx, r))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("index builder panicked"))
                .collect()
        });
        let mut indexes = Vec::new();
        for r in results {
            let (i, rep) = r?;
            indexes.push(i);
            reports.push(rep);
        }
        // reports in the order of `specs`
        reports.sort_by_key(|r| {
            specs
                .iter()
                .position(|s| s.file_name() == r.file)
                .unwrap_or(usize::MAX)
        });
        Ok((IndexSet { indexes, minimizer }, reports))
    }

    fn build_min(
        snap: &Snapshot,
        spec: &IndexSpec,
        path: &Path,
        reason: String,
        reports: &mut Vec<EnsureReport>,
    ) -> Result<MinIndex, IndexError> {
        let t = std::time::Instant::now();
        MinIndex::build(*spec, snap.bytes(), &snap.id, path, 0)?;
        let secs = t.elapsed().as_secs_f64();
        let idx = MinIndex::open(path, *spec, snap.bytes().len(), &snap.id)?;
        reports.push(EnsureReport {
            file: spec.file_name(),
            rebuilt: true,
            reason,
            entries: idx.len(),
            bytes: idx.bytes(),
            build_seconds: secs,
        });
        Ok(idx)
    }

    /// The index built with exactly `spec`, if loaded.
    pub fn get_spec(&self, spec: &IndexSpec) -> Option<&Index> {
        self.indexes.iter().find(|i| i.spec == *spec)
    }

    /// The index with this projection and k, if loaded.
    pub fn get(&self, proj: Projection, k: u8) -> Option<&Index> {
        self.indexes
            .iter()
            .find(|i| i.spec.projection == proj && i.spec.k == k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_bytes_is_lanewise() {
        let x = u64::from_le_bytes([0, 1, 2, 255, 10, 20, 30, 40]);
        let y = u64::from_le_bytes([1, 0, 2, 0, 5, 25, 30, 41]);
        let d = sub_bytes(y, x).to_le_bytes();
        let (xb, yb) = (x.to_le_bytes(), y.to_le_bytes());
        for (i, di) in d.iter().enumerate() {
            assert_eq!(*di, yb[i].wrapping_sub(xb[i]));
        }
    }

    #[test]
    fn delta_projections_are_invariant_under_their_transform() {
        let a: Vec<u8> = (0..64u32).map(|i| (i * 37 % 251) as u8).collect();
        let x: Vec<u8> = a.iter().map(|b| b ^ 0x5a).collect();
        let s: Vec<u8> = a.iter().map(|b| b.wrapping_add(77)).collect();
        for k in [4, 8] {
            assert_eq!(
                window_hash(Projection::Xor, k, &a, 3),
                window_hash(Projection::Xor, k, &x, 3)
            );
            assert_eq!(
                window_hash(Projection::Add, k, &a, 3),
                window_hash(Projection::Add, k, &s, 3)
            );
            assert_ne!(
                window_hash(Projection::Raw, k, &a, 3),
                window_hash(Projection::Raw, k, &x, 3)
            );
        }
    }

    #[test]
    fn coarse_projections_key_a_window_by_its_classes() {
        let h = |p, b: &[u8]| window_hash(p, 8, b, 0);
        // same ASCII classes (upper, lower x4, punct, space, upper), different bytes
        assert_eq!(
            h(Projection::Ascii, b"Hello, W"),
            h(Projection::Ascii, b"World! X")
        );
        assert_ne!(
            h(Projection::Ascii, b"Hello, W"),
            h(Projection::Ascii, b"hello, W")
        );
        assert_eq!(
            coarse_key(Projection::Ascii, 8, u64::from_le_bytes(*b"a1 B\0\n\xff!")),
            0o53_24_01_76
        );
        // high nibbles: low nibbles do not matter
        let a = [0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0];
        let b: Vec<u8> = a.iter().map(|x| x ^ 0x0f).collect();
        assert_eq!(h(Projection::Nibble, &a), h(Projection::Nibble, &b));
        assert_ne!(h(Projection::Nibble, &a), h(Projection::Nibble, &[0u8; 8]));
        // numeric: two u32 counting-table windows with the same stride, other start values
        let t = |s: u32, d: u32| [s.to_le_bytes(), (s + d).to_le_bytes()].concat();
        assert_eq!(
            h(Projection::Numeric, &t(100, 4)),
            h(Projection::Numeric, &t(7000, 4))
        );
        assert_ne!(
            h(Projection::Numeric, &t(100, 4)),
            h(Projection::Numeric, &t(100, 8))
        );
        // opcode histogram: order does not matter, classes do
        let c1 = [0x48u8, 0x89, 0xe5, 0xc3, 0x00, 0x00, 0xe8, 0x90];
        let mut c2 = c1;
        c2.reverse();
        assert_eq!(h(Projection::Opcode, &c1), h(Projection::Opcode, &c2));
        assert_eq!(
            coarse_key(Projection::Opcode, 8, u64::from_le_bytes(c1)),
            2 | 1 << 8 | 1 << 12 | 1 << 16 | 2 << 20 | 1 << 28
        );
        // every projection has its own key space
        assert_ne!(h(Projection::Raw, &a), h(Projection::Nibble, &a));
        for p in COARSE {
            assert!(p.is_coarse());
            assert_eq!(Projection::parse(p.name()), Some(p));
        }
    }

    #[test]
    fn estimated_bytes_bounds_the_built_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut snap = vec![0u8; 40_000];
        crate::pob::prng::SplitMix64::new(9).fill(&mut snap);
        for (proj, fanout) in [
            (Projection::Raw, 8),
            (Projection::Ascii, 4),
            (Projection::Opcode, 16),
        ] {
            let spec = IndexSpec {
                projection: proj,
                k: 8,
                step: 2,
                fanout,
            };
            let path = dir.path().join(spec.file_name());
            Index::build(spec, &snap, &[1; 32], &path).unwrap();
            let real = std::fs::metadata(&path).unwrap().len() as usize;
            assert!(real <= spec.estimated_bytes(snap.len()), "{spec:?}");
        }
    }

    #[test]
    fn build_open_and_find_every_indexed_window() {
        let dir = tempfile::tempdir().unwrap();
        let mut snap = vec![0u8; 50_000];
        crate::pob::prng::SplitMix64::new(5).fill(&mut snap);
        let id = [3u8; 32];
        let mut specs = legacy_specs();
        specs.extend(COARSE.iter().map(|&projection| IndexSpec {
            projection,
            k: 8,
            step: 8,
            fanout: 64,
        }));
        for spec in specs {
            let path = dir.path().join(spec.file_name());
            Index::build(spec, &snap, &id, &path).unwrap();
            let idx = Index::open(&path, spec, snap.len(), &id).unwrap();
            let span = spec.projection.span(spec.k);
            for p in (0..snap.len() - span).step_by(spec.step as usize).take(500) {
                let h = window_hash(spec.projection, spec.k, &snap, p);
                assert!(idx.candidates(h).any(|c| c as usize == p), "{spec:?} {p}");
            }
            assert!(matches!(
                Index::open(&path, spec, snap.len(), &[4; 32]),
                Err(IndexError::Stale { .. })
            ));
            // damage: truncation is refused, not trusted
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
            assert!(Index::open(&path, spec, snap.len(), &id).is_err());
        }
    }
}
