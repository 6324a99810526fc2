//! The span descriptor the rings carry, and its two encodings.
//!
//! A descriptor says "apply `op` with `imm` to `len` bytes of the blob at `offset`". It is a
//! plain 16-byte `#[repr(C)]` value, four to a cache line. (The transport's wire "gram" is a
//! separate, variable-length format; this is a fixed slot for shared memory.)
//!
//! With `--arith 1` descriptors are *relative*: the first of each frame carries an absolute
//! offset ([`FLAG_ABS`]), the others the zig-zag coded difference from the previous
//! descriptor's offset, so a consumer must decode a frame in order. The slot size is the same
//! either way: the arithmetic mode changes what the offset field means, not the ring's bytes.

use crate::blueprint::Transform;

/// The offset field is absolute (else: zig-zag delta from the previous descriptor's offset).
pub const FLAG_ABS: u8 = 1;

/// One span descriptor.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Desc {
    /// Absolute blob offset, or the zig-zag delta from the previous one (see [`FLAG_ABS`]).
    pub offset: u64,
    /// Span length in bytes.
    pub len: u32,
    /// The transform's wire code ([`Transform::code`]).
    pub op: u8,
    /// The transform's immediate.
    pub imm: u8,
    /// [`FLAG_ABS`] or 0.
    pub flags: u8,
    pub _pad: u8,
}

const _: () = assert!(std::mem::size_of::<Desc>() == 16);

/// A decoded descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u32,
    pub op: Transform,
    pub imm: u8,
}

/// A descriptor that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DescError {
    #[error("unknown transform code {0}")]
    Op(u8),
    #[error("relative descriptor with no absolute one before it in the frame")]
    NoBase,
    #[error("relative offset out of range")]
    Overflow,
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes spans as descriptors, absolute or relative (`arith`).
#[derive(Debug, Clone, Copy)]
pub struct Encoder {
    arith: bool,
    prev: u64,
}

impl Encoder {
    pub fn new(arith: bool) -> Self {
        Encoder { arith, prev: 0 }
    }

    /// Encode one span; `frame_start` marks the first descriptor of a frame.
    #[inline]
    pub fn encode(&mut self, s: Span, frame_start: bool) -> Desc {
        let (offset, flags) = if !self.arith || frame_start {
            (s.offset, FLAG_ABS)
        } else {
            (zigzag(s.offset.wrapping_sub(self.prev) as i64), 0)
        };
        self.prev = s.offset;
        Desc {
            offset,
            len: s.len,
            op: s.op.code(),
            imm: s.imm,
            flags,
            _pad: 0,
        }
    }
}

/// Decodes descriptors in ring order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Decoder {
    prev: Option<u64>,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder { prev: None }
    }

    /// Decode one descriptor.
    #[inline]
    pub fn decode(&mut self, d: Desc) -> Result<Span, DescError> {
        let op = Transform::try_from(d.op).map_err(|_| DescError::Op(d.op))?;
        let offset = if d.flags & FLAG_ABS != 0 {
            d.offset
        } else {
            let prev = self.prev.ok_or(DescError::NoBase)?;
            prev.checked_add_signed(unzigzag(d.offset))
                .ok_or(DescError::Overflow)?
        };
        self.prev = Some(offset);
        Ok(Span {
            offset,
            len: d.len,
            op,
            imm: d.imm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_round_trips() {
        for v in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN, 123_456_789] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn op_codes_round_trip() {
        for (i, op) in Transform::ALL.into_iter().enumerate() {
            assert_eq!(op.code() as usize, i);
            assert_eq!(Transform::try_from(op.code()), Ok(op));
        }
        assert!(Transform::try_from(3).is_err());
    }

    #[test]
    fn relative_frames_decode_to_the_same_spans() {
        let spans: Vec<Span> = [900u64, 100, 5000, 5000, 0, 1 << 40]
            .iter()
            .map(|&o| Span {
                offset: o,
                len: 256,
                op: Transform::Xor,
                imm: 0xff,
            })
            .collect();
        for arith in [false, true] {
            let mut enc = Encoder::new(arith);
            let descs: Vec<Desc> = spans
                .iter()
                .enumerate()
                .map(|(i, s)| enc.encode(*s, i % 4 == 0))
                .collect();
            if arith {
                assert_eq!(descs[1].flags, 0);
                assert_eq!(descs[4].flags, FLAG_ABS);
            }
            let mut dec = Decoder::new();
            let back: Vec<Span> = descs.iter().map(|d| dec.decode(*d).unwrap()).collect();
            assert_eq!(back, spans);
        }
    }

    #[test]
    fn bad_descriptors_are_rejected() {
        let mut dec = Decoder::new();
        let rel = Desc {
            offset: 2,
            len: 1,
            op: 1,
            ..Desc::default()
        };
        assert_eq!(dec.decode(rel), Err(DescError::NoBase));
        let bad_op = Desc {
            op: 9,
            flags: FLAG_ABS,
            ..Desc::default()
        };
        assert_eq!(dec.decode(bad_op), Err(DescError::Op(9)));
        let base = Desc {
            offset: 1,
            flags: FLAG_ABS,
            ..Desc::default()
        };
        dec.decode(base).unwrap();
        let under = Desc {
            offset: zigzag(-5),
            ..Desc::default()
        };
        assert_eq!(dec.decode(under), Err(DescError::Overflow));
    }
}
