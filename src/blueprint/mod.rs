//! Blueprints: the segments that rebuild a file from the snapshot, their `.pbb` codec,
//! and the apply kernels.
//!
//! A blueprint covers a file `[0, file_len)` with segments in file order, with no gaps and no
//! overlaps. A segment either copies `len` bytes from the snapshot at `snap_off` through a
//! byte-wise [`Transform`] (`id`, `xor imm8`, `add imm8` mod 256), or takes the next `len`
//! bytes of the raw spill.
//!
//! The apply kernels in [`apply`] are the only place where a transform touches bytes: the
//! reconstruction here, the receiver and the SHM benchmark all call them.

pub mod apply;
pub mod block;
pub mod pbb;
pub mod varint;

use serde::{Deserialize, Serialize};

/// A byte-wise transform from snapshot bytes `s` to file bytes `f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    /// `f = s`
    Id,
    /// `f = s ^ imm`
    Xor,
    /// `f = s + imm (mod 256)`
    Add,
}

impl Transform {
    /// All transforms, in wire-code order.
    pub const ALL: [Transform; 3] = [Transform::Id, Transform::Xor, Transform::Add];

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
    /// Raw bytes, consumed in order by `Source::Raw` segments.
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
    /// Bytes covered by raw segments.
    pub raw_spill: u64,
}

/// A segment placed at its file offset, with its raw bytes when it is a spill segment.
#[derive(Debug, Clone, Copy)]
pub struct Placed<'a> {
    pub file_off: u64,
    pub seg: Segment,
    /// For `Source::Raw`, the spill bytes of this segment; empty otherwise.
    pub raw: &'a [u8],
}

impl Blueprint {
    /// Segment counts by kind and the raw spill size.
    pub fn stats(&self) -> SegmentStats {
        let mut s = SegmentStats::default();
        for seg in &self.segments {
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
            }
        }
        s
    }

    /// Check the structural invariants against a snapshot of `snap_len` bytes: segments cover
    /// exactly `file_len`, snapshot ranges lie inside the snapshot, spill lengths add up.
    pub fn validate(&self, snap_len: u64) -> Result<(), pbb::PbbError> {
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
                Source::Snap { off, .. } => {
                    let end = off.checked_add(seg.len as u64);
                    if end.is_none_or(|e| e > snap_len) {
                        return Err(pbb::PbbError::Invalid(format!(
                            "segment {i} reads snapshot bytes {off}..{} beyond its end {snap_len}",
                            off.saturating_add(seg.len as u64)
                        )));
                    }
                }
                Source::Raw => raw += seg.len as u64,
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
                "raw segments take {raw} spill bytes but the spill holds {}",
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
                Source::Raw => {
                    let end = (spill_off + seg.len as usize).min(self.spill.len());
                    let r = &self.spill[spill_off.min(end)..end];
                    spill_off = end;
                    r
                }
                Source::Snap { .. } => &[][..],
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

    /// Rebuild the file into `out` (which must be `file_len` bytes) from `snap`.
    /// The blueprint must have passed [`Blueprint::validate`] against `snap.len()`.
    pub fn rebuild_into(&self, snap: &[u8], out: &mut [u8]) -> Result<(), pbb::PbbError> {
        if out.len() as u64 != self.file_len {
            return Err(pbb::PbbError::Invalid(
                "output buffer has the wrong length".into(),
            ));
        }
        self.validate(snap.len() as u64)?;
        for p in self.placed() {
            let o = p.file_off as usize;
            let dst = &mut out[o..o + p.seg.len as usize];
            match p.seg.src {
                Source::Snap { op, off, imm } => {
                    let off = off as usize;
                    apply::transform(op, imm, &snap[off..off + dst.len()], dst);
                }
                Source::Raw => dst.copy_from_slice(p.raw),
            }
        }
        Ok(())
    }
}
