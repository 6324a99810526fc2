//! The content-defined sampled index: winnowing minimizers over 8-byte grams, in a compact
//! open-addressing table of 64-bit slots, built once per snapshot and memory-mapped.
//!
//! **Anchors.** Every position `p` with 8 bytes after it has a gram hash `h(p)`, a bijective
//! mix of the 8 bytes (equal hashes mean equal grams). Over every window of `w` consecutive
//! gram positions the position of the smallest hash is an *anchor* (the rightmost on ties; a
//! tie with the previous anchor within `w` bytes keeps the previous one, so runs of one byte
//! yield one anchor per `w` bytes instead of one per byte). Anchors depend only on the bytes
//! around them, so a file and the snapshot select the same positions in the regions they
//! share: **every match of at least `w + 7` bytes contains an anchor that both sides select**
//! (the minimum of a window both contain), at a density of about `2 / (w + 1)` positions per
//! byte (for data without long repeats; fewer where it repeats itself).
//!
//! **Table.** The addressing hash `a = mix(h)` picks one of `2^shard_bits` shards (top bits)
//! and a 24-bit tag (low bits, never 0). A slot is `position << 24 | tag` (positions up to
//! 2^40, so snapshots beyond 4 GiB work); 0 is empty. A key's home slot in its shard is
//! `tag * cap >> 24`; collisions probe linearly, wrapping inside the shard. At most `fanout`
//! positions are kept per key (the first in snapshot order). Shards are filled independently,
//! so the build runs on every core and is deterministic.
//!
//! **Memory.** Shards are sized for the expected anchor count at a load of 0.8: 8 bytes per
//! slot, `8 * 2/(w+1) / 0.8` bytes per snapshot byte (0.95 at `w = 20`). A shard that fills
//! up to 95% drops further anchors (counted in the header).
//!
//! **Build.** Per super-chunk of up to 1 Gi grams: (1) each thread takes a range (aligned to
//! 16 Ki grams, so nothing depends on the thread count), computes its anchors 16 Ki grams at a
//! time (window minima by a vectorised sparse table, scratch in L2) and sorts them into one
//! list per shard; (2) each thread fills its shards one at a time in a shard-sized buffer
//! (prefetching each entry's home slot a few entries ahead), from the lists in snapshot
//! order, and writes the shard to the index file with `pwrite` (reading it back first after
//! the first super-chunk). The table is never resident as a whole; the temporary lists take
//! about 0.8 bytes per snapshot byte of a super-chunk.
//!
//! File layout (little-endian):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 8 | magic `PFSMNX\0\x01` |
//! | 8 | 4 | version (1) |
//! | 12 | 1, 1, 2 | k (8), w, fanout |
//! | 16 | 4, 4 | shard_bits, reserved |
//! | 24 | 8 | slots per shard `cap` |
//! | 32 | 8 | snapshot length |
//! | 40 | 32 | snapshot id |
//! | 72 | 8 | entries |
//! | 80 | 8 | anchors dropped (full shards) |
//! | 88 | 40 | reserved (zero) |
//! | 128 | 8 · cap · 2^shard_bits | slots |
//!
//! A lookup touches one home slot and the short run after it; the snapshot is only read for
//! candidates whose 24-bit tag (and shard) matched.

use std::path::Path;

use super::{map_file, IndexError, IndexSpec, Projection};

const MAGIC: [u8; 8] = *b"PFSMNX\0\x01";
const VERSION: u32 = 1;
const HEADER: usize = 128;
/// Gram length.
pub const K: usize = 8;
const TAG_BITS: u32 = 24;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// Largest position a slot holds.
pub const MAX_POS: u64 = (1 << (64 - TAG_BITS)) - 1;
// the snapshot's size limit is this index's
const _: () = assert!(MAX_POS == crate::pob::MAX_SNAPSHOT_BYTES);
/// Gram positions per [`anchors`] call of the build: its three scratch arrays (8 bytes per
/// gram each) stay in the core's L2 cache (1 Mi grams, 24 MiB of scratch, ran at half the
/// speed).
const ANCHOR_CHUNK: usize = 1 << 14;
/// Grams per super-chunk of the build: they bound the temporary anchor lists (8 bytes per
/// anchor, about 0.8 bytes per snapshot byte); every super-chunk after the first reads the
/// table back a shard at a time.
const SUPER: usize = 1 << 30;
/// Entries ahead whose home slot the fill prefetches.
const PREFETCH_AHEAD: usize = 8;
/// Target load of the table.
const LOAD: f64 = 0.8;
/// A shard stops taking anchors at this load.
const FULL: f64 = 0.95;

/// The gram hash at `p` (the caller ensures `p + 8 <= b.len()`): a bijection of the 8 bytes.
#[inline(always)]
pub fn gram_hash(b: &[u8], p: usize) -> u64 {
    let x = u64::from_le_bytes(b[p..p + 8].try_into().expect("8 bytes"));
    let x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let x = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The order minimizers are chosen by: one multiply (its high half depends on every byte).
#[inline(always)]
fn order_hash(x: u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555_5555_0000_0000
}

/// The addressing hash of a gram hash (independent of the order minimizers are chosen by).
#[inline(always)]
fn addr(h: u64) -> u64 {
    let z = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline(always)]
fn tag_of(a: u64) -> u64 {
    let t = a & TAG_MASK;
    if t == 0 {
        1
    } else {
        t
    }
}

#[inline(always)]
fn home(tag: u64, cap: usize) -> usize {
    ((tag * cap as u64) >> TAG_BITS) as usize
}

/// Scratch space for [`anchors`] (reused across calls).
#[derive(Default)]
pub struct Scratch {
    a: Vec<u64>,
    b: Vec<u64>,
    changed: Vec<u8>,
}

/// The minima of the `windows` windows of `w` keys over the `n` grams of `grams` (7 bytes
/// more than `n`), in `a` or `b` (the returned flag says which: `true` = `b`), and in `changed`
/// a 1 where a window's minimum differs from the previous window's (always 1 for the
/// first). Keys hold a multiplicative hash's high 32 bits above the inverted position, so
/// the smallest key of a window is its smallest hash and, on a tie, its rightmost position.
/// Minima come from a sparse table: over 2, 4, ... `t` keys (the largest power of two not
/// above `w`) by doubling, then each window is the minimum of two overlapping `t`-runs.
/// Every step is an element-wise loop without a dependency from one key to the next, so the
/// compiler vectorises it.
#[inline(always)]
fn window_minima_body(
    grams: &[u8],
    n: usize,
    w: usize,
    windows: usize,
    a: &mut [u64],
    b: &mut [u64],
    changed: &mut [u8],
) -> bool {
    let (a, b, changed) = (&mut a[..n], &mut b[..n], &mut changed[..windows]);
    for (j, key) in a.iter_mut().enumerate() {
        let x = u64::from_le_bytes(grams[j..j + K].try_into().expect("8"));
        *key = (order_hash(x) >> 32) << 32 | (u32::MAX - j as u32) as u64;
    }
    // cur[j] = min of keys j..j+t, valid for j <= n - t
    let (mut cur, mut nxt, mut in_b) = (a, b, false);
    let mut t = 1usize;
    while 2 * t <= w {
        let len = n + 1 - 2 * t;
        let (dst, x, y) = (&mut nxt[..len], &cur[..len], &cur[t..t + len]);
        for i in 0..len {
            dst[i] = x[i].min(y[i]);
        }
        std::mem::swap(&mut cur, &mut nxt);
        in_b = !in_b;
        t *= 2;
    }
    // window s = min(run of t at s, run of t at s + w - t)
    let d = w - t;
    if d > 0 {
        let (dst, x, y) = (&mut nxt[..windows], &cur[..windows], &cur[d..d + windows]);
        for i in 0..windows {
            dst[i] = x[i].min(y[i]);
        }
        std::mem::swap(&mut cur, &mut nxt);
        in_b = !in_b;
    }
    let m = &cur[..windows];
    changed[0] = 1;
    let (c, x, y) = (&mut changed[1..], &m[1..], &m[..windows - 1]);
    for i in 0..windows - 1 {
        c[i] = (x[i] != y[i]) as u8;
    }
    in_b
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn window_minima_avx2(
    grams: &[u8],
    n: usize,
    w: usize,
    windows: usize,
    a: &mut [u64],
    b: &mut [u64],
    changed: &mut [u8],
) -> bool {
    // the same code, vectorised four lanes wide by the compiler where AVX2 is enabled
    window_minima_body(grams, n, w, windows, a, b, changed)
}

/// [`window_minima_body`] with AVX2 where the CPU has it (checked once, cached by std).
fn window_minima(
    grams: &[u8],
    n: usize,
    w: usize,
    windows: usize,
    a: &mut [u64],
    b: &mut [u64],
    changed: &mut [u8],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // Safety: the CPU supports AVX2 (checked on the line above).
        unsafe {
            return window_minima_avx2(grams, n, w, windows, a, b, changed);
        }
    }
    window_minima_body(grams, n, w, windows, a, b, changed)
}

/// The anchors of the windows that start at gram positions `lo..hi` of `data` (the windows
/// read grams up to `hi + w - 1`, bytes up to `hi + w + 6`, clipped to the data), in
/// position order, as `(position, gram hash)`. Appends to `out`.
///
/// The window minima come from [`window_minima_body`] (a sparse table, vectorised); a
/// window whose minimum is the previous window's yields nothing new, so only the windows
/// flagged as changed are looked at one by one.
pub fn anchors(
    data: &[u8],
    lo: usize,
    hi: usize,
    w: usize,
    scratch: &mut Scratch,
    out: &mut Vec<(usize, u64)>,
) {
    let w = w.max(1);
    if data.len() < K {
        return;
    }
    let last_gram = data.len() - K; // inclusive
    let end_gram = (hi + w - 1).min(last_gram + 1); // exclusive
    if lo >= end_gram {
        return;
    }
    let n = end_gram - lo;
    debug_assert!(n < u32::MAX as usize);
    // windows shorter than w at the end of the data: the data's tail still gets an anchor
    let w = w.min(n);
    let windows = (n + 1 - w).min(hi.saturating_sub(lo));
    if windows == 0 {
        return;
    }
    let Scratch { a, b, changed } = scratch;
    for v in [&mut *a, &mut *b] {
        if v.len() < n {
            v.resize(n, 0);
        }
    }
    // whole words of flags, read eight at a time below
    let words = windows.div_ceil(8);
    if changed.len() < words * 8 {
        changed.resize(words * 8, 0);
    }
    let grams = &data[lo..end_gram + K - 1];
    let in_b = window_minima(grams, n, w, windows, a, b, changed);
    let mins: &[u64] = if in_b { &b[..windows] } else { &a[..windows] };
    changed[windows..words * 8].fill(0);
    let mut last: Option<(usize, u64)> = None;
    for (k, word) in changed[..words * 8].chunks_exact(8).enumerate() {
        let mut bits = u64::from_le_bytes(word.try_into().expect("8"));
        while bits != 0 {
            let s = k * 8 + (bits.trailing_zeros() / 8) as usize;
            bits &= bits - 1;
            let m = mins[s];
            let j = (u32::MAX - m as u32) as usize;
            let pos = lo + j;
            match last {
                // a tie with the previous anchor still in reach: keep that one
                Some((lp, lm)) if lm >> 32 == m >> 32 && pos - lp < w => {}
                _ => {
                    out.push((pos, gram_hash(data, pos)));
                    last = Some((pos, m));
                }
            }
        }
    }
}

/// A loaded (memory-mapped) minimizer index.
pub struct MinIndex {
    pub spec: IndexSpec,
    map: memmap2::Mmap,
    shard_bits: u32,
    cap: usize,
    snap_len: u64,
    entries: u64,
    dropped: u64,
}

impl std::fmt::Debug for MinIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MinIndex")
            .field("spec", &self.spec)
            .field("entries", &self.entries)
            .finish()
    }
}

/// Table geometry for a snapshot of `snap_len` bytes: (shard_bits, slots per shard).
fn geometry(w: u32, snap_len: u64) -> (u32, usize) {
    let expect = snap_len as f64 * 2.0 / (w as f64 + 1.0) * 1.05 + 1024.0;
    let per = 32768.0;
    let bits = (expect / per).log2().ceil().clamp(0.0, 16.0) as u32;
    let cap = (expect / (1u64 << bits) as f64 / LOAD).ceil() as usize;
    (bits, cap.max(64))
}

/// Bytes the index takes for a snapshot of `snap_len` bytes.
pub fn estimated_bytes(w: u32, snap_len: u64) -> usize {
    let (bits, cap) = geometry(w, snap_len);
    HEADER + 8 * cap * (1usize << bits)
}

/// Insert one slot value into a shard; returns whether it was stored.
#[inline]
fn insert(shard: &mut [u64], v: u64, fanout: u32) -> bool {
    let cap = shard.len();
    let tag = v & TAG_MASK;
    let mut i = home(tag, cap);
    let mut same = 0u32;
    for _ in 0..cap {
        let s = shard[i];
        if s == 0 {
            shard[i] = v;
            return true;
        }
        if s == v {
            return false; // the same anchor from two overlapping chunks
        }
        if s & TAG_MASK == tag {
            same += 1;
            if same >= fanout {
                return false;
            }
        }
        i += 1;
        if i == cap {
            i = 0;
        }
    }
    false
}

impl MinIndex {
    /// Build the index over `snap` and write it to `path` (atomically), on `threads` threads
    /// (0 = one per core).
    pub fn build(
        spec: IndexSpec,
        snap: &[u8],
        snap_id: &[u8; 32],
        path: &Path,
        threads: usize,
    ) -> Result<(), IndexError> {
        Self::build_in(spec, snap, snap_id, path, threads, SUPER)
    }

    /// [`MinIndex::build`] with super-chunks of `super_len` grams.
    fn build_in(
        spec: IndexSpec,
        snap: &[u8],
        snap_id: &[u8; 32],
        path: &Path,
        threads: usize,
        super_len: usize,
    ) -> Result<(), IndexError> {
        debug_assert!(super_len > 0 && super_len.is_multiple_of(ANCHOR_CHUNK));
        spec.validate()?;
        if snap.len() as u64 > MAX_POS {
            return Err(IndexError::Spec(format!(
                "the snapshot is {} bytes; the minimizer index holds positions below 2^40",
                snap.len()
            )));
        }
        let w = spec.step as usize;
        // the shard count; the slots per shard come from the anchors counted below
        let (bits, _) = geometry(spec.step, snap.len() as u64);
        let nshards = 1usize << bits;
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        // sized from the anchors of the first super-chunk (the whole snapshot up to SUPER)
        let io = |source| IndexError::Io {
            path: path.into(),
            source,
        };
        let mut out: Option<OutTable> = None;
        let mut cap = 0usize;
        let mut limit = 0usize;
        let mut counts = vec![0usize; nshards];
        let mut entries = 0u64;
        let mut dropped = 0u64;
        let shard_shift = 64 - bits;
        let reserve =
            |len: usize| (len as f64 * 2.2 / (w as f64 + 1.0) / nshards as f64) as usize + 16;
        let ngrams = if snap.len() >= K {
            snap.len() - K + 1
        } else {
            0
        };
        let mut lo = 0usize;
        while lo < ngrams {
            let hi = (lo + super_len).min(ngrams);
            // thread ranges and anchor chunks start at multiples of ANCHOR_CHUNK, so the lists
            // (and the table) do not depend on the number of threads
            let per = (hi - lo)
                .div_ceil(threads)
                .next_multiple_of(ANCHOR_CHUNK)
                .max(ANCHOR_CHUNK);
            let t_a = std::time::Instant::now();
            // 1. anchors per thread range, sorted into shard lists
            let bufs: Vec<Vec<Vec<u64>>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|t| {
                        let a = lo + t * per;
                        let b = (a + per).min(hi);
                        s.spawn(move || {
                            let mut lists: Vec<Vec<u64>> = (0..nshards)
                                .map(|_| Vec::with_capacity(reserve(b.saturating_sub(a))))
                                .collect();
                            let mut scratch = Scratch::default();
                            let mut out = Vec::new();
                            let mut x = a;
                            while x < b {
                                let y = (x + ANCHOR_CHUNK).min(b);
                                out.clear();
                                // from the window before the chunk: its anchor (the previous
                                // chunk's last) and any repeat of it are dropped, and the
                                // tie rule carries over the boundary
                                anchors(snap, x.saturating_sub(1), y, w, &mut scratch, &mut out);
                                let seen = match out.first() {
                                    Some(&(p, _)) if x > 0 => Some(p),
                                    _ => None,
                                };
                                for &(p, h) in &out {
                                    if seen.is_some_and(|q| p <= q) {
                                        continue;
                                    }
                                    let ad = addr(h);
                                    let sh = if bits == 0 {
                                        0
                                    } else {
                                        (ad >> shard_shift) as usize
                                    };
                                    lists[sh].push((p as u64) << TAG_BITS | tag_of(ad));
                                }
                                x = y;
                            }
                            lists
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("index builder panicked"))
                    .collect()
            });
            if out.is_none() {
                // the median shard (a key repeated past its fanout inflates one shard's list,
                // not what it stores), with room for the spread between shards
                let mut per: Vec<usize> = (0..nshards)
                    .map(|sh| bufs.iter().map(|l| l[sh].len()).sum::<usize>())
                    .collect();
                per.sort_unstable();
                let med = per[nshards / 2] as f64;
                let most = med + 4.0 * med.sqrt() + 8.0;
                let (scale, margin) = if hi - lo < ngrams {
                    (ngrams as f64 / (hi - lo) as f64, 1.1)
                } else {
                    (1.0, 1.0)
                };
                cap = ((most * scale * margin / LOAD).ceil() as usize).max(64);
                limit = (cap as f64 * FULL) as usize;
                out = Some(OutTable::create(path, cap, nshards).map_err(io)?);
            }
            let t_b = std::time::Instant::now();
            let table = out.as_ref().expect("created above");
            let first = lo == 0;
            // 2. fill shards, each from the thread lists in snapshot order, in a buffer of
            //    one shard per thread, written to the file (read back first after the first
            //    super-chunk): the table is never resident as a whole
            let group = nshards.div_ceil(threads);
            let res: Vec<std::io::Result<(u64, u64)>> = std::thread::scope(|s| {
                let hs: Vec<_> = counts
                    .chunks_mut(group)
                    .enumerate()
                    .map(|(g, cnts)| {
                        let bufs = &bufs;
                        s.spawn(move || {
                            let (mut e, mut d) = (0u64, 0u64);
                            let mut shard = vec![0u64; cap];
                            for (j, cnt) in cnts.iter_mut().enumerate() {
                                let sh = g * group + j;
                                if first {
                                    shard.fill(0);
                                } else {
                                    table.read_shard(sh, &mut shard)?;
                                }
                                for list in bufs.iter() {
                                    let list = &list[sh];
                                    for (i, &v) in list.iter().enumerate() {
                                        // the home slot of an entry a few ahead: the probes
                                        // are random reads in a shard the size of L2
                                        if let Some(&u) = list.get(i + PREFETCH_AHEAD) {
                                            let at = home(u & TAG_MASK, cap);
                                            super::prefetch(shard[at..].as_ptr() as *const u8);
                                        }
                                        if *cnt >= limit {
                                            d += 1;
                                        } else if insert(&mut shard, v, spec.fanout) {
                                            *cnt += 1;
                                            e += 1;
                                        }
                                    }
                                }
                                table.write_shard(sh, &shard)?;
                            }
                            Ok((e, d))
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("index builder panicked"))
                    .collect()
            });
            let t_c = std::time::Instant::now();
            drop(bufs);
            tracing::debug!(
                target: "pfs::index",
                grams = hi - lo,
                anchors_ms = (t_b - t_a).as_secs_f64() * 1e3,
                fill_ms = (t_c - t_b).as_secs_f64() * 1e3,
                "minimizer super-chunk"
            );
            for r in res {
                let (e, d) = r.map_err(io)?;
                entries += e;
                dropped += d;
            }
            lo = hi;
        }
        let out = match out {
            Some(o) => o,
            None => {
                // a snapshot without a single gram: empty shards (the file is sized with
                // zeros)
                cap = 64;
                OutTable::create(path, cap, nshards).map_err(io)?
            }
        };
        let mut head = Vec::with_capacity(HEADER);
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.push(K as u8);
        head.push(spec.step as u8);
        head.extend_from_slice(&(spec.fanout as u16).to_le_bytes());
        head.extend_from_slice(&bits.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&(cap as u64).to_le_bytes());
        head.extend_from_slice(&(snap.len() as u64).to_le_bytes());
        head.extend_from_slice(snap_id);
        head.extend_from_slice(&entries.to_le_bytes());
        head.extend_from_slice(&dropped.to_le_bytes());
        head.resize(HEADER, 0);
        out.finish(&head).map_err(io)
    }

    /// Map an index file and check its header against the snapshot and the spec (O(1): the
    /// slots are not read; a lookup skips a position outside the snapshot).
    pub fn open(
        path: &Path,
        spec: IndexSpec,
        snap_len: usize,
        snap_id: &[u8; 32],
    ) -> Result<MinIndex, IndexError> {
        let bad = |msg: &str| IndexError::Bad {
            path: path.into(),
            msg: msg.into(),
        };
        let map = map_file(path)?;
        if map.len() < HEADER || map[..8] != MAGIC {
            return Err(bad("not a minimizer index file"));
        }
        let rd4 = |at: usize| u32::from_le_bytes(map[at..at + 4].try_into().expect("4"));
        let rd8 = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().expect("8"));
        if rd4(8) != VERSION {
            return Err(bad("index version differs"));
        }
        let found = IndexSpec {
            projection: Projection::Minimizer,
            k: map[12],
            step: map[13] as u32,
            fanout: u16::from_le_bytes([map[14], map[15]]) as u32,
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
        if rd8(32) != snap_len as u64 {
            return Err(bad("built for a snapshot of another length"));
        }
        let bits = rd4(16);
        let cap = rd8(24);
        if bits > 16 || cap == 0 || cap > 1 << 40 {
            return Err(bad("table geometry out of range"));
        }
        let want = (cap as u128) * (1u128 << bits) * 8 + HEADER as u128;
        if map.len() as u128 != want {
            return Err(bad("file length does not match its header"));
        }
        let _ = map.advise(memmap2::Advice::Random);
        Ok(MinIndex {
            spec,
            shard_bits: bits,
            cap: cap as usize,
            snap_len: snap_len as u64,
            entries: rd8(72),
            dropped: rd8(80),
            map,
        })
    }

    fn slots(&self) -> &[u64] {
        bytemuck::cast_slice(&self.map[HEADER..])
    }

    /// Entries stored.
    pub fn len(&self) -> usize {
        self.entries as usize
    }
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
    /// Anchors dropped because their shard was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
    /// Bytes the index occupies.
    pub fn bytes(&self) -> usize {
        self.map.len()
    }
    /// The window length `w`.
    pub fn w(&self) -> usize {
        self.spec.step as usize
    }

    #[inline(always)]
    fn locate(&self, h: u64) -> (usize, u64) {
        let a = addr(h);
        let sh = if self.shard_bits == 0 {
            0
        } else {
            (a >> (64 - self.shard_bits)) as usize
        };
        (sh * self.cap, tag_of(a))
    }

    /// Hint the CPU to fetch the home slot of gram hash `h`.
    #[inline(always)]
    pub fn prefetch(&self, h: u64) {
        let (base, tag) = self.locate(h);
        let i = base + home(tag, self.cap);
        super::prefetch(self.slots()[i..].as_ptr() as *const u8);
    }

    /// Snapshot positions whose gram hash may be `h` (24-bit tag and shard matched), at most
    /// `max`, appended to `out`. Positions whose gram would run past the snapshot are skipped.
    #[inline]
    pub fn candidates(&self, h: u64, max: usize, out: &mut Vec<u64>) {
        let (base, tag) = self.locate(h);
        let slots = &self.slots()[base..base + self.cap];
        let mut i = home(tag, self.cap);
        let mut n = 0;
        for _ in 0..self.cap {
            let s = slots[i];
            if s == 0 {
                return;
            }
            if s & TAG_MASK == tag {
                let p = s >> TAG_BITS;
                if p + K as u64 <= self.snap_len {
                    out.push(p);
                    n += 1;
                    if n >= max {
                        return;
                    }
                }
            }
            i += 1;
            if i == self.cap {
                i = 0;
            }
        }
    }
}

/// The index being built: a file under a temporary name beside `path`, written a shard at a
/// time with `pwrite` (and read back with `pread` when a later super-chunk adds to a shard),
/// renamed over `path` by `finish`. The table is never held in memory as a whole (a table
/// built in anonymous memory and written at the end cost its size twice: fresh zeroed pages,
/// then the page cache; one filled in a file mapping was written back to disk several times
/// over while the random fills re-dirtied its pages: 34 GB written for a 5.7 GB index). Not
/// fsynced: the index is derived data, and whatever a crash leaves is either refused by
/// `open` (header, length) or only costs matches (every candidate is verified on the
/// snapshot's bytes). Dropped without `finish`, the temporary file is removed.
struct OutTable {
    out: crate::util::AtomicFile,
    cap: usize,
}

impl OutTable {
    fn create(path: &Path, cap: usize, nshards: usize) -> std::io::Result<OutTable> {
        // read and write: a super-chunk after the first reads its shards back
        let out = crate::util::AtomicFile::create(path)?;
        out.get().set_len((HEADER + 8 * cap * nshards) as u64)?;
        Ok(OutTable { out, cap })
    }

    fn at(&self, sh: usize) -> u64 {
        (HEADER + 8 * self.cap * sh) as u64
    }

    fn write_shard(&self, sh: usize, slots: &[u64]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        debug_assert_eq!(slots.len(), self.cap);
        self.out
            .get()
            .write_all_at(bytemuck::cast_slice(slots), self.at(sh))
    }

    fn read_shard(&self, sh: usize, slots: &mut [u64]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        debug_assert_eq!(slots.len(), self.cap);
        self.out
            .get()
            .read_exact_at(bytemuck::cast_slice_mut(slots), self.at(sh))
    }

    fn finish(self, head: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.out.get().write_all_at(head, 0)?;
        self.out.commit_unsynced()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pob::prng::SplitMix64;

    fn spec(w: u32, fanout: u32) -> IndexSpec {
        IndexSpec {
            projection: Projection::Minimizer,
            k: 8,
            step: w,
            fanout,
        }
    }

    fn all_anchors(d: &[u8], w: usize) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        anchors(d, 0, d.len(), w, &mut Scratch::default(), &mut out);
        out
    }

    /// The van Herk / Gil-Werman implementation [`anchors`] replaced (prefix and suffix
    /// minima per block of w keys): the sparse table must select the same anchors.
    fn anchors_reference(data: &[u8], lo: usize, hi: usize, w: usize, out: &mut Vec<(usize, u64)>) {
        let w = w.max(1);
        if data.len() < K {
            return;
        }
        let last_gram = data.len() - K; // inclusive
        let end_gram = (hi + w - 1).min(last_gram + 1); // exclusive
        if lo >= end_gram {
            return;
        }
        let n = end_gram - lo;
        debug_assert!(n < u32::MAX as usize);
        // windows shorter than w at the end of the data: the data's tail still gets an anchor
        let w = w.min(n);
        let (mut v, mut pre, mut suf) = (Vec::new(), Vec::new(), Vec::new());
        for a in [&mut v, &mut pre, &mut suf] {
            if a.len() < n {
                a.resize(n, 0);
            }
        }
        let grams = &data[lo..end_gram + K - 1];
        let mut b = 0;
        while b < n {
            let e = (b + w).min(n);
            let mut m = u64::MAX;
            for (j, (vj, pj)) in v[b..e].iter_mut().zip(pre[b..e].iter_mut()).enumerate() {
                let j = b + j;
                let x = u64::from_le_bytes(grams[j..j + 8].try_into().expect("8"));
                let key = (order_hash(x) >> 32) << 32 | (u32::MAX - j as u32) as u64;
                *vj = key;
                m = m.min(key);
                *pj = m;
            }
            let mut m = u64::MAX;
            for (vj, sj) in v[b..e].iter().zip(suf[b..e].iter_mut()).rev() {
                m = m.min(*vj);
                *sj = m;
            }
            b = e;
        }
        let windows = (n + 1 - w).min(hi.saturating_sub(lo));
        let mut last: Option<(usize, u64)> = None;
        for (s, p) in suf[..windows].iter().zip(&pre[w - 1..w - 1 + windows]) {
            let m = (*s).min(*p);
            let j = (u32::MAX - m as u32) as usize;
            let pos = lo + j;
            match last {
                Some((lp, _)) if lp == pos => {}
                // a tie with the previous anchor still in reach: keep that one
                Some((lp, lm)) if lm >> 32 == m >> 32 && pos - lp < w => {}
                _ => {
                    out.push((pos, gram_hash(data, pos)));
                    last = Some((pos, m));
                }
            }
        }
    }

    #[test]
    fn sparse_table_selects_what_the_block_minima_did() {
        let mut rng = SplitMix64::new(9);
        let mut data = vec![0u8; 50_000];
        rng.fill(&mut data);
        // repeats, runs and periodic stretches: ties between equal grams
        data[5_000..9_000].fill(0xaa);
        for (i, b) in data.iter_mut().enumerate().take(20_000).skip(12_000) {
            *b = (i % 7) as u8;
        }
        for i in 30_000..34_000 {
            data[i] = data[i - 3_000];
        }
        let mut s = Scratch::default();
        for w in [1usize, 2, 3, 7, 8, 16, 20, 31, 64] {
            for (lo, hi) in [
                (0, data.len()),
                (0, 100),
                (4_990, 9_100),
                (11_997, 20_003),
                (49_990, 50_000),
                (3, 4),
            ] {
                let mut got = Vec::new();
                anchors(&data, lo, hi, w, &mut s, &mut got);
                let mut want = Vec::new();
                anchors_reference(&data, lo, hi, w, &mut want);
                assert_eq!(got, want, "w {w}, range {lo}..{hi}");
            }
        }
        // shorter than a gram, or than a window
        for len in [0usize, 7, 8, 9, 20] {
            let mut got = Vec::new();
            anchors(&data[..len], 0, len, 20, &mut s, &mut got);
            let mut want = Vec::new();
            anchors_reference(&data[..len], 0, len, 20, &mut want);
            assert_eq!(got, want, "len {len}");
        }
    }

    #[test]
    fn super_chunks_read_the_table_back_and_keep_every_entry() {
        let mut snap = vec![0u8; 400_000];
        SplitMix64::new(11).fill(&mut snap);
        snap[100_000..140_000].fill(3); // a run: fanout-capped keys across super-chunks
        for i in 200_000..260_000 {
            snap[i] = snap[i - 50_000]; // repeats of earlier super-chunks
        }
        let dir = tempfile::tempdir().unwrap();
        let sp = spec(20, 4);
        let (one, many) = (dir.path().join("one.idx"), dir.path().join("many.idx"));
        MinIndex::build(sp, &snap, &[4; 32], &one, 2).unwrap();
        MinIndex::build_in(sp, &snap, &[4; 32], &many, 2, 2 * ANCHOR_CHUNK).unwrap();
        let a = MinIndex::open(&one, sp, snap.len(), &[4; 32]).unwrap();
        let b = MinIndex::open(&many, sp, snap.len(), &[4; 32]).unwrap();
        assert_eq!(a.dropped(), 0);
        assert_eq!(b.dropped(), 0);
        assert_eq!(a.len(), b.len());
        let (mut ca, mut cb) = (Vec::new(), Vec::new());
        for (p, h) in all_anchors(&snap, 20) {
            ca.clear();
            cb.clear();
            a.candidates(h, 64, &mut ca);
            b.candidates(h, 64, &mut cb);
            assert!(
                ca.contains(&(p as u64)) || ca.len() >= 4,
                "anchor {p} not indexed"
            );
            assert_eq!(ca, cb, "candidates of the anchor at {p}");
        }
        // no temporary file is left beside the index
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_snapshot_shorter_than_a_gram_gets_an_empty_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.idx");
        let snap = [1u8, 2, 3, 4, 5];
        MinIndex::build(spec(20, 8), &snap, &[6; 32], &path, 2).unwrap();
        let idx = MinIndex::open(&path, spec(20, 8), snap.len(), &[6; 32]).unwrap();
        assert!(idx.is_empty());
        let mut c = Vec::new();
        idx.candidates(12345, 8, &mut c);
        assert!(c.is_empty());
    }

    #[test]
    fn anchors_do_not_depend_on_chunking() {
        let mut d = vec![0u8; 20_000];
        SplitMix64::new(1).fill(&mut d);
        let whole = all_anchors(&d, 16);
        let mut pieces = Vec::new();
        let mut s = Scratch::default();
        for (a, b) in [(0, 777), (777, 5000), (5000, 20_000)] {
            anchors(&d, a, b, 16, &mut s, &mut pieces);
        }
        pieces.dedup();
        assert_eq!(whole, pieces);
        // density near 2 / (w + 1)
        let density = whole.len() as f64 / d.len() as f64;
        assert!((0.09..0.14).contains(&density), "{density}");
        // every window of w grams holds an anchor
        for win in whole.windows(2) {
            assert!(win[1].0 - win[0].0 <= 16);
        }
    }

    #[test]
    fn a_run_of_one_byte_yields_one_anchor_per_window() {
        let d = vec![7u8; 10_000];
        let a = all_anchors(&d, 20);
        assert!(a.len() <= 10_000 / 20 + 2, "{}", a.len());
        assert!(!a.is_empty());
    }

    #[test]
    fn every_planted_match_longer_than_the_guarantee_shares_an_anchor() {
        let w = 20usize;
        let mut rng = SplitMix64::new(77);
        let mut snap = vec![0u8; 200_000];
        rng.fill(&mut snap);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.idx");
        let sp = spec(w as u32, 8);
        MinIndex::build(sp, &snap, &[5; 32], &path, 3).unwrap();
        let idx = MinIndex::open(&path, sp, snap.len(), &[5; 32]).unwrap();
        for trial in 0..300 {
            let len = w + K - 1 + (rng.next_u64() % 40) as usize;
            let src = (rng.next_u64() as usize) % (snap.len() - len);
            // random bytes around the planted copy
            let mut file = vec![0u8; 64 + len + 64];
            rng.fill(&mut file);
            file[64..64 + len].copy_from_slice(&snap[src..src + len]);
            let fa = all_anchors(&file, w);
            let mut found = false;
            let mut c = Vec::new();
            for &(p, h) in &fa {
                if p < 64 || p + K > 64 + len {
                    continue;
                }
                c.clear();
                idx.candidates(h, 8, &mut c);
                if c.iter().any(|&s| s as usize == src + (p - 64)) {
                    found = true;
                }
            }
            assert!(
                found,
                "trial {trial}: a {len}-byte match at {src} has no shared anchor"
            );
        }
    }

    #[test]
    fn index_is_deterministic_across_thread_counts_and_checks_its_header() {
        let mut snap = vec![0u8; 300_000];
        SplitMix64::new(3).fill(&mut snap);
        snap[1000..50_000].fill(0); // repeats: fanout caps them
        let dir = tempfile::tempdir().unwrap();
        let sp = spec(12, 4);
        let p1 = dir.path().join("a.idx");
        let p2 = dir.path().join("b.idx");
        MinIndex::build(sp, &snap, &[1; 32], &p1, 1).unwrap();
        MinIndex::build(sp, &snap, &[1; 32], &p2, 4).unwrap();
        assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
        let idx = MinIndex::open(&p1, sp, snap.len(), &[1; 32]).unwrap();
        assert!(idx.bytes() <= estimated_bytes(12, snap.len() as u64));
        assert!(matches!(
            MinIndex::open(&p1, sp, snap.len(), &[2; 32]),
            Err(IndexError::Stale { .. })
        ));
        assert!(MinIndex::open(&p1, spec(13, 4), snap.len(), &[1; 32]).is_err());
        assert!(MinIndex::open(&p1, sp, snap.len() + 1, &[1; 32]).is_err());
        // fanout: the zero run's gram is stored at most 4 times
        let mut c = Vec::new();
        idx.candidates(gram_hash(&snap, 2000), 100, &mut c);
        assert!(!c.is_empty() && c.len() <= 4, "{}", c.len());
        drop(idx); // the damage below rewrites the mapped file in place
        let bytes = std::fs::read(&p1).unwrap();
        std::fs::write(&p1, &bytes[..bytes.len() - 8]).unwrap();
        assert!(matches!(
            MinIndex::open(&p1, sp, snap.len(), &[1; 32]),
            Err(IndexError::Bad { .. })
        ));
        std::fs::write(&p1, b"PFSMNX\0\x01 short").unwrap();
        assert!(MinIndex::open(&p1, sp, snap.len(), &[1; 32]).is_err());
    }
}
