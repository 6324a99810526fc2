//! Blueprints: the segments that rebuild a file from the snapshot, their `.pbb` codec,
//! and the apply kernels.
//!
//! A blueprint covers a file `[0, file_len)` with segments in file order, with no gaps and no
//! overlaps. A segment either copies `len` bytes from the snapshot at `snap_off` through a
//! byte-wise [`Transform`] (`id`, `xor imm8`, `add imm8` mod 256), or takes the next `len`
//! bytes of the raw spill, or (format v2) copies `len` bytes from earlier in the file being
//! rebuilt ([`Source::SelfCopy`]).
//!
//! Soft identity (an approximate snapshot match plus a patch list, format v2) has no variant of
//! its own in memory: it is an `id` run at one alignment broken by short raw runs (the patch
//! bytes, which live in the spill). The `.pbb` table folds such a run into one soft record and
//! unfolds it on reading, so the transport and the apply kernels see plain segments.
//!
//! The apply kernels in [`apply`] are the only place where a transform touches bytes: the
//! reconstruction here, the receiver and the SHM benchmark all call them.

pub mod apply;
pub mod bcj;
pub mod block;
pub mod coder;
pub mod dwarf;
pub mod pbb;
pub mod predict;
pub mod streams;
pub mod varint;

pub use coder::Level;

use serde::{Deserialize, Serialize};

/// A byte-wise transform from snapshot bytes `s` to file bytes `f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Transform {
    /// `f = s`
    Id = 0,
    /// `f = s ^ imm`
    Xor = 1,
    /// `f = s + imm (mod 256)`
    Add = 2,
}

/// A byte that is no [`Transform`]'s code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown transform code {0}")]
pub struct UnknownTransform(pub u8);

impl TryFrom<u8> for Transform {
    type Error = UnknownTransform;
    /// The transform of a code (the inverse of [`Transform::code`]).
    fn try_from(c: u8) -> Result<Self, UnknownTransform> {
        Transform::ALL
            .get(c as usize)
            .copied()
            .ok_or(UnknownTransform(c))
    }
}

impl Transform {
    /// All transforms, in code order.
    pub const ALL: [Transform; 3] = [Transform::Id, Transform::Xor, Transform::Add];

    /// The one code of this transform (0 id, 1 xor, 2 add), used by every format that
    /// stores one: transfer pieces, SHM descriptors, `.pbb` tables (offset past their raw
    /// code) and packed blocks.
    #[inline]
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The immediate that maps snapshot byte `s` to file byte `f` under this transform.
    #[inline]
    pub fn imm_for(self, s: u8, f: u8) -> u8 {
        match self {
            Transform::Id => 0,
            Transform::Xor => s ^ f,
            Transform::Add => f.wrapping_sub(s),
        }
    }

    /// Apply to one byte.
    #[inline(always)]
    pub fn byte(self, s: u8, imm: u8) -> u8 {
        match self {
            Transform::Id => s,
            Transform::Xor => s ^ imm,
            Transform::Add => s.wrapping_add(imm),
        }
    }

    /// Lower-case name (`id`, `xor`, `add`).
    pub fn name(self) -> &'static str {
        match self {
            Transform::Id => "id",
            Transform::Xor => "xor",
            Transform::Add => "add",
        }
    }
}

/// Where a segment's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `len` bytes from the snapshot at `off`, through `op` with `imm` (0 for `Id`).
    Snap { op: Transform, off: u64, imm: u8 },
    /// The next `len` bytes of the raw spill.
    Raw,
    /// `len` bytes copied from the file being rebuilt, starting at file offset `off`, which
    /// must lie before this segment's own offset. The copy runs forward one byte at a time
    /// (LZ77 semantics): when the source overlaps the destination, bytes written earlier in
    /// this same segment are read again, so `off = dst - 1` repeats one byte `len` times.
    SelfCopy { off: u64 },
    /// An approximate cover (bsdiff / HDiffPatch): `len` bytes from the snapshot at `off`
    /// plus `len` difference bytes taken, in order, from the spill (the same stream raw
    /// segments read): `f[i] = s[off + i] + d[i] (mod 256)`. The differences are mostly
    /// zeros, so they compress to little; `.pbb` v3 carries them in their own stream.
    Cover { off: u64 },
}

/// One segment of a blueprint; its file offset is the sum of the lengths before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub len: u32,
    pub src: Source,
}

/// A complete blueprint: what a receiver needs besides the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blueprint {
    /// BLAKE3 id of the snapshot the segments point into.
    pub snapshot_id: [u8; 32],
    /// Length of the rebuilt file.
    pub file_len: u64,
    /// BLAKE3 of the rebuilt file.
    pub file_hash: [u8; 32],
    /// Segments in file order, covering `[0, file_len)` exactly.
    pub segments: Vec<Segment>,
    /// Raw bytes, consumed in order by `Source::Raw` segments (literal bytes) and
    /// `Source::Cover` segments (difference bytes).
    pub spill: Vec<u8>,
}

/// Raw segments covering `len` bytes (each at most `u32::MAX`).
pub fn raw_segments(len: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(u32::MAX as u64);
        out.push(Segment {
            len: n as u32,
            src: Source::Raw,
        });
        left -= n;
    }
    out
}

/// Counts of a blueprint's segments, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SegmentStats {
    pub segments: u64,
    pub id: u64,
    pub xor: u64,
    pub add: u64,
    pub raw: u64,
    /// Self-copy segments (format v2).
    pub self_copy: u64,
    /// Bytes covered by self-copy segments.
    pub self_bytes: u64,
    /// Bytes covered by raw segments.
    pub raw_spill: u64,
    /// Approximate covers (snapshot bytes plus a difference stream).
    pub cover: u64,
    /// Bytes covered by approximate covers.
    pub cover_bytes: u64,
    /// Of those, bytes whose difference is not zero.
    pub cover_diff_nonzero: u64,
}

/// A segment placed at its file offset, with its raw bytes when it is a spill segment.
#[derive(Debug, Clone, Copy)]
pub struct Placed<'a> {
    pub file_off: u64,
    pub seg: Segment,
    /// For `Source::Raw`, the spill bytes of this segment; for `Source::Cover`, its
    /// difference bytes; empty otherwise.
    pub raw: &'a [u8],
}

impl Blueprint {
    /// Segment counts by kind and the raw spill size.
    pub fn stats(&self) -> SegmentStats {
        let mut s = SegmentStats::default();
        for p in self.placed() {
            let seg = &p.seg;
            s.segments += 1;
            match seg.src {
                Source::Snap {
                    op: Transform::Id, ..
                } => s.id += 1,
                Source::Snap {
                    op: Transform::Xor, ..
                } => s.xor += 1,
                Source::Snap {
                    op: Transform::Add, ..
                } => s.add += 1,
                Source::Raw => {
                    s.raw += 1;
                    s.raw_spill += seg.len as u64;
                }
                Source::SelfCopy { .. } => {
                    s.self_copy += 1;
                    s.self_bytes += seg.len as u64;
                }
                Source::Cover { .. } => {
                    s.cover += 1;
                    s.cover_bytes += seg.len as u64;
                    s.cover_diff_nonzero += crate::util::count_nonzero(p.raw) as u64;
                }
            }
        }
        s
    }

    /// Literal bytes: the length of the raw segments ([`SegmentStats::raw_spill`] without
    /// the walk over the covers' differences that [`Blueprint::stats`] makes).
    pub fn literal_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.src == Source::Raw)
            .map(|s| s.len as u64)
            .sum()
    }

    /// Whether any segment needs format v2 semantics in memory (a self copy).
    pub fn has_self_copies(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s.src, Source::SelfCopy { .. }))
    }

    /// Whether any segment is an approximate cover.
    pub fn has_covers(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s.src, Source::Cover { .. }))
    }

    /// Check the structural invariants against a snapshot of `snap_len` bytes: segments cover
    /// exactly `file_len`, snapshot ranges lie inside the snapshot, spill lengths add up.
    pub fn validate(&self, snap_len: u64) -> Result<(), pbb::PbbError> {
        self.validate_at(snap_len, 0)
    }

    /// [`Blueprint::validate`] for a part of a file that starts at file offset `base` (a
    /// packed-transfer block): self copies must read from before their absolute position.
    pub fn validate_at(&self, snap_len: u64, base: u64) -> Result<(), pbb::PbbError> {
        let mut covered: u64 = 0;
        let mut raw: u64 = 0;
        for (i, seg) in self.segments.iter().enumerate() {
            if seg.len == 0 {
                return Err(pbb::PbbError::Invalid(format!("segment {i} has length 0")));
            }
            covered = covered
                .checked_add(seg.len as u64)
                .ok_or_else(|| pbb::PbbError::Invalid("segment lengths overflow".into()))?;
            if covered > self.file_len {
                return Err(pbb::PbbError::Invalid(format!(
                    "segment {i} overruns the declared file length {}",
                    self.file_len
                )));
            }
            match seg.src {
                Source::Snap { off, .. } | Source::Cover { off } => {
                    if matches!(seg.src, Source::Cover { .. }) {
                        raw += seg.len as u64;
                    }
                    let end = off.checked_add(seg.len as u64);
                    if end.is_none_or(|e| e > snap_len) {
                        return Err(pbb::PbbError::Invalid(format!(
                            "segment {i} reads snapshot bytes {off}..{} beyond its end {snap_len}",
                            off.saturating_add(seg.len as u64)
                        )));
                    }
                }
                Source::Raw => raw += seg.len as u64,
                Source::SelfCopy { off } => {
                    let dst = base.saturating_add(covered - seg.len as u64);
                    if off >= dst {
                        return Err(pbb::PbbError::Invalid(format!(
                            "self segment {i} at file offset {dst} copies from {off}, which is not before it"
                        )));
                    }
                }
            }
        }
        if covered != self.file_len {
            return Err(pbb::PbbError::Invalid(format!(
                "segments cover {covered} bytes but the file is {} bytes",
                self.file_len
            )));
        }
        if raw != self.spill.len() as u64 {
            return Err(pbb::PbbError::Invalid(format!(
                "raw segments and covers take {raw} spill bytes but the spill holds {}",
                self.spill.len()
            )));
        }
        Ok(())
    }

    /// Segments with their file offsets and raw bytes. Call [`Blueprint::validate`] first.
    pub fn placed(&self) -> impl Iterator<Item = Placed<'_>> + '_ {
        let mut file_off = 0u64;
        let mut spill_off = 0usize;
        self.segments.iter().map(move |seg| {
            let raw = match seg.src {
                Source::Raw | Source::Cover { .. } => {
                    let end = (spill_off + seg.len as usize).min(self.spill.len());
                    let r = &self.spill[spill_off.min(end)..end];
                    spill_off = end;
                    r
                }
                Source::Snap { .. } | Source::SelfCopy { .. } => &[][..],
            };
            let p = Placed {
                file_off,
                seg: *seg,
                raw,
            };
            file_off += seg.len as u64;
            p
        })
    }

    /// Rebuild the file into `out` (which must be `file_len` bytes) from `snap`. Every check
    /// of [`Blueprint::validate`] is made on the way (one pass over the segments): on an
    /// error, `out` holds a partial file.
    pub fn rebuild_into(&self, snap: &[u8], out: &mut [u8]) -> Result<(), pbb::PbbError> {
        if out.len() as u64 != self.file_len {
            return Err(pbb::PbbError::Invalid(
                "output buffer has the wrong length".into(),
            ));
        }
        let mut o = 0usize;
        let mut sp = 0usize;
        let spill = &self.spill[..];
        for (i, seg) in self.segments.iter().enumerate() {
            let n = seg.len as usize;
            let end = o + n;
            if n == 0 || end > out.len() {
                // let validate name the problem
                self.validate(snap.len() as u64)?;
                return Err(pbb::PbbError::Invalid(format!("segment {i} is invalid")));
            }
            let snap_at = |off: u64| {
                usize::try_from(off)
                    .ok()
                    .and_then(|off| snap.get(off..off.checked_add(n)?))
            };
            match seg.src {
                Source::Snap { op, off, imm } => {
                    let Some(src) = snap_at(off) else {
                        self.validate(snap.len() as u64)?;
                        return Err(pbb::PbbError::Invalid(format!("segment {i} is invalid")));
                    };
                    apply::transform(op, imm, src, &mut out[o..end]);
                }
                Source::Raw => {
                    let Some(r) = spill.get(sp..sp + n) else {
                        self.validate(snap.len() as u64)?;
                        return Err(pbb::PbbError::Invalid(format!("segment {i} is invalid")));
                    };
                    apply::copy(r, &mut out[o..end]);
                    sp += n;
                }
                Source::Cover { off } => {
                    let (Some(src), Some(d)) = (snap_at(off), spill.get(sp..sp + n)) else {
                        self.validate(snap.len() as u64)?;
                        return Err(pbb::PbbError::Invalid(format!("segment {i} is invalid")));
                    };
                    apply::add_bytes(src, d, &mut out[o..end]);
                    sp += n;
                }
                Source::SelfCopy { off } => {
                    if off >= o as u64 {
                        self.validate(snap.len() as u64)?;
                        return Err(pbb::PbbError::Invalid(format!("segment {i} is invalid")));
                    }
                    apply::self_copy(out, off as usize, o, n)
                }
            }
            o = end;
        }
        if o != out.len() || sp != spill.len() {
            self.validate(snap.len() as u64)?;
            return Err(pbb::PbbError::Invalid(
                "segments do not add up to the file".into(),
            ));
        }
        Ok(())
    }

    /// The same file with every self-copy segment rewritten into plain segments, for
    /// consumers that place pieces by file offset in any order (the datagram transport): a
    /// copy whose source lies inside one snapshot segment (and does not overlap itself)
    /// becomes a snapshot segment at the matching offset, anything else becomes raw spill with
    /// the materialized bytes. An approximate cover becomes `id` runs where its differences
    /// are zero for at least [`COVER_LOWER_MIN_RUN`] bytes and raw bytes elsewhere. Soft runs
    /// are already plain segments in memory. Returns `self` unchanged (cloned) when there is
    /// nothing to lower. Validates against `snapshot` first.
    pub fn lower_basic(&self, snapshot: &[u8]) -> Result<Blueprint, pbb::PbbError> {
        self.validate(snapshot.len() as u64)?;
        if !self.has_self_copies() && !self.has_covers() {
            return Ok(self.clone());
        }
        let len = usize::try_from(self.file_len)
            .map_err(|_| pbb::PbbError::Invalid("file too large for this host".into()))?;
        let mut file = vec![0u8; len];
        self.rebuild_into(snapshot, &mut file)?;
        let starts: Vec<u64> = self.placed().map(|p| p.file_off).collect();
        let mut segments = Vec::with_capacity(self.segments.len());
        let mut spill = Vec::with_capacity(self.spill.len());
        for (p, &at) in self.placed().zip(&starts) {
            let n = p.seg.len as u64;
            match p.seg.src {
                Source::Raw => {
                    segments.push(p.seg);
                    spill.extend_from_slice(p.raw);
                }
                Source::Snap { .. } => segments.push(p.seg),
                Source::Cover { off } => lower_cover(
                    off,
                    p.raw,
                    &file[at as usize..(at + n) as usize],
                    &mut segments,
                    &mut spill,
                ),
                Source::SelfCopy { off } => {
                    // the segment holding the source start
                    let k = starts.partition_point(|&s| s <= off) - 1;
                    let (ks, kseg) = (starts[k], self.segments[k]);
                    let inside = off + n <= ks + kseg.len as u64 && off + n <= at;
                    match kseg.src {
                        Source::Snap { op, off: so, imm } if inside => segments.push(Segment {
                            len: p.seg.len,
                            src: Source::Snap {
                                op,
                                off: so + (off - ks),
                                imm,
                            },
                        }),
                        _ => {
                            segments.push(Segment {
                                len: p.seg.len,
                                src: Source::Raw,
                            });
                            spill.extend_from_slice(&file[at as usize..(at + n) as usize]);
                        }
                    }
                }
            }
        }
        Ok(Blueprint {
            segments,
            spill,
            ..self.clone()
        })
    }
}

impl Blueprint {
    /// The same file with neighbouring snapshot segments on one diagonal (the same
    /// `snap_off - file_off`) merged into approximate covers across the raw gaps between them
    /// of at most `max_gap` bytes: the gap's bytes and any xor/add bytes become differences
    /// against the snapshot. A run of one segment stays as it is. This is the diagonal merge
    /// of HDiffPatch done after the fact on a plan of exact segments (the planner may choose
    /// covers directly); `snap` is the snapshot the blueprint was validated against.
    pub fn merge_diagonals(&self, snap: &[u8], max_gap: u32) -> Blueprint {
        let placed: Vec<Placed<'_>> = self.placed().collect();
        let diag = |p: &Placed<'_>| match p.seg.src {
            Source::Snap { off, .. } | Source::Cover { off } => {
                Some(off as i64 - p.file_off as i64)
            }
            _ => None,
        };
        let mut segments = Vec::with_capacity(self.segments.len());
        let mut spill = Vec::with_capacity(self.spill.len());
        let mut i = 0;
        while i < placed.len() {
            let Some(d) = diag(&placed[i]) else {
                segments.push(placed[i].seg);
                spill.extend_from_slice(placed[i].raw);
                i += 1;
                continue;
            };
            // extend: (raw gap <= max_gap)? then a snapshot segment on diagonal d
            let mut j = i + 1;
            let mut end = i;
            let mut len = placed[i].seg.len as u64;
            let mut k = i + 1;
            while k < placed.len() {
                if diag(&placed[k]) == Some(d) {
                    len += placed[k].seg.len as u64;
                    end = k;
                    k += 1;
                    j = k;
                    continue;
                }
                if placed[k].seg.src == Source::Raw
                    && placed[k].seg.len <= max_gap
                    && k + 1 < placed.len()
                    && diag(&placed[k + 1]) == Some(d)
                {
                    len += placed[k].seg.len as u64;
                    k += 1;
                    continue;
                }
                break;
            }
            if end == i || len > u32::MAX as u64 {
                segments.push(placed[i].seg);
                spill.extend_from_slice(placed[i].raw);
                i += 1;
                continue;
            }
            let off = (placed[i].file_off as i64 + d) as u64;
            segments.push(Segment {
                len: len as u32,
                src: Source::Cover { off },
            });
            for p in &placed[i..j] {
                let s = &snap[(p.file_off as i64 + d) as usize..][..p.seg.len as usize];
                match p.seg.src {
                    Source::Raw => {
                        spill.extend(p.raw.iter().zip(s).map(|(f, s)| f.wrapping_sub(*s)))
                    }
                    Source::Cover { .. } => spill.extend_from_slice(p.raw),
                    Source::Snap { op, imm, .. } => {
                        spill.extend(s.iter().map(|&b| op.byte(b, imm).wrapping_sub(b)))
                    }
                    Source::SelfCopy { .. } => unreachable!("not on a diagonal"),
                }
            }
            i = j;
        }
        Blueprint {
            segments,
            spill,
            ..self.clone()
        }
    }
}

/// Shortest run of zero differences that [`Blueprint::lower_basic`] keeps as an `id` segment
/// when it lowers an approximate cover (shorter runs travel as raw bytes).
pub const COVER_LOWER_MIN_RUN: usize = 8;

/// Lower one approximate cover at snapshot offset `off` with differences `diff` (its rebuilt
/// bytes are `bytes`) into `id` segments and raw spill.
fn lower_cover(
    off: u64,
    diff: &[u8],
    bytes: &[u8],
    segments: &mut Vec<Segment>,
    spill: &mut Vec<u8>,
) {
    let mut push_raw = |from: usize, to: usize, segments: &mut Vec<Segment>| {
        if to > from {
            segments.push(Segment {
                len: (to - from) as u32,
                src: Source::Raw,
            });
            spill.extend_from_slice(&bytes[from..to]);
        }
    };
    let mut raw_from = 0usize;
    let mut i = 0usize;
    while i < diff.len() {
        if diff[i] != 0 {
            i += 1;
            continue;
        }
        let z = i;
        while i < diff.len() && diff[i] == 0 {
            i += 1;
        }
        if i - z >= COVER_LOWER_MIN_RUN {
            push_raw(raw_from, z, segments);
            segments.push(Segment {
                len: (i - z) as u32,
                src: Source::Snap {
                    op: Transform::Id,
                    off: off + z as u64,
                    imm: 0,
                },
            });
            raw_from = i;
        }
    }
    push_raw(raw_from, diff.len(), segments);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that is a snapshot range with some bytes changed, as one approximate cover
    /// between two raw runs.
    fn covered(snap: &[u8]) -> (Blueprint, Vec<u8>) {
        let mut file: Vec<u8> = b"head".to_vec();
        let base = 100usize;
        let mut body = snap[base..base + 300].to_vec();
        for i in (0..300).step_by(37) {
            body[i] = body[i].wrapping_add(5);
        }
        body[150..160].copy_from_slice(b"0123456789");
        file.extend_from_slice(&body);
        file.extend_from_slice(b"tail!");
        let mut spill = b"head".to_vec();
        spill.extend(
            body.iter()
                .zip(&snap[base..])
                .map(|(f, s)| f.wrapping_sub(*s)),
        );
        spill.extend_from_slice(b"tail!");
        let segments = vec![
            Segment {
                len: 4,
                src: Source::Raw,
            },
            Segment {
                len: 300,
                src: Source::Cover { off: base as u64 },
            },
            Segment {
                len: 5,
                src: Source::Raw,
            },
        ];
        let bp = Blueprint {
            snapshot_id: [0; 32],
            file_len: file.len() as u64,
            file_hash: *blake3::hash(&file).as_bytes(),
            segments,
            spill,
        };
        (bp, file)
    }

    fn snap() -> Vec<u8> {
        (0..1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect()
    }

    #[test]
    fn cover_rebuilds_bit_exact_and_counts_differences() {
        let snap = snap();
        let (bp, file) = covered(&snap);
        let mut out = vec![0u8; file.len()];
        bp.rebuild_into(&snap, &mut out).unwrap();
        assert_eq!(out, file);
        let st = bp.stats();
        assert_eq!((st.cover, st.cover_bytes), (1, 300));
        let nonzero = (0..300).filter(|&i| file[4 + i] != snap[100 + i]).count() as u64;
        assert_eq!(st.cover_diff_nonzero, nonzero);
        assert_eq!(bp.literal_bytes(), st.raw_spill);
        assert!(
            bp.literal_bytes() > 0,
            "the test blueprint has raw segments"
        );
    }

    #[test]
    fn lowered_cover_has_only_basic_segments_and_same_bytes() {
        let snap = snap();
        let (bp, file) = covered(&snap);
        let low = bp.lower_basic(&snap).unwrap();
        assert!(!low.has_covers());
        assert!(low
            .segments
            .iter()
            .all(|s| matches!(s.src, Source::Snap { .. } | Source::Raw)));
        let mut out = vec![0u8; file.len()];
        low.rebuild_into(&snap, &mut out).unwrap();
        assert_eq!(out, file);
        // every id run it kept is at least the minimum and really equal
        for p in low.placed() {
            if let Source::Snap { off, .. } = p.seg.src {
                assert!(p.seg.len as usize >= COVER_LOWER_MIN_RUN);
                let (o, f) = (off as usize, p.file_off as usize);
                assert_eq!(
                    &snap[o..o + p.seg.len as usize],
                    &file[f..f + p.seg.len as usize]
                );
            }
        }
    }

    #[test]
    fn merging_diagonals_keeps_the_bytes_and_folds_gaps() {
        let snap = snap();
        let (bp, file) = covered(&snap);
        let low = bp.lower_basic(&snap).unwrap();
        let merged = low.merge_diagonals(&snap, 64);
        assert!(merged.has_covers());
        assert!(merged.segments.len() < low.segments.len());
        let mut out = vec![0u8; file.len()];
        merged.rebuild_into(&snap, &mut out).unwrap();
        assert_eq!(out, file);
        // a gap limit of 0 merges only touching segments: nothing here
        assert_eq!(
            low.merge_diagonals(&snap, 0).segments.len(),
            low.segments.len()
        );
    }

    #[test]
    fn cover_past_the_snapshot_end_is_refused() {
        let snap = snap();
        let (mut bp, _) = covered(&snap);
        bp.segments[1].src = Source::Cover { off: 900 };
        assert!(bp.validate(snap.len() as u64).is_err());
    }
}
