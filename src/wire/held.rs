//! Resume on the wire: the receiver's `Held` payload (what it already holds of each file,
//! sent after the Accept) and the [`ResumeRecord`] a sender puts at the head of a streamed
//! file's block stream when it continues from what the receiver holds (docs/wire.md).
//!
//! Both are untrusted input: parsed strictly (exact lengths, known kinds, zero reserved
//! fields, file indices strictly increasing within a frame). What they claim is checked
//! again by the reader against its own state (the manifest, the offer it made).

use super::bytes::{le16, le32, le64, put_le16, put_le32, put_le64};
use super::{Error, Result};

/// Bytes before the entries of a Held payload: count (u16) and a reserved u16.
pub const HELD_FIXED: usize = 4;
/// Bytes of one Held entry.
pub const HELD_ENTRY: usize = 4 + 1 + 1 + 2 + 8 + 32;

/// What the receiver holds of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldKind {
    /// A final file of that name and size: `hash` is its BLAKE3, `len` its size.
    Whole = 1,
    /// A resumable temporary file whose first `len` bytes are durable; `hash` is the BLAKE3
    /// of those bytes.
    Prefix = 2,
}

impl HeldKind {
    pub fn from_u8(v: u8) -> Option<HeldKind> {
        match v {
            1 => Some(HeldKind::Whole),
            2 => Some(HeldKind::Prefix),
            _ => None,
        }
    }
}

/// One file the receiver holds something of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldEntry {
    /// Index in the manifest.
    pub file: u32,
    pub kind: HeldKind,
    /// Bytes held (never 0).
    pub len: u64,
    pub hash: [u8; 32],
}

/// R->S after the Accept: what the receiver holds, for some files. The Accept says how
/// many entries there are in all; they may take several Held frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub entries: Vec<HeldEntry>,
}

impl Held {
    /// Entries that fit in a payload of `budget` bytes.
    pub fn capacity(budget: usize) -> usize {
        budget.saturating_sub(HELD_FIXED) / HELD_ENTRY
    }

    pub fn parse(b: &[u8]) -> Result<Held> {
        if b.len() < HELD_FIXED {
            return Err(Error::Truncated);
        }
        let count = le16(b) as usize;
        if le16(&b[2..]) != 0 || count == 0 {
            return Err(Error::Malformed);
        }
        if b.len() != HELD_FIXED + count * HELD_ENTRY {
            return Err(if b.len() < HELD_FIXED + count * HELD_ENTRY {
                Error::Truncated
            } else {
                Error::Malformed
            });
        }
        let mut entries = Vec::with_capacity(count);
        for k in 0..count {
            let e = &b[HELD_FIXED + k * HELD_ENTRY..HELD_FIXED + (k + 1) * HELD_ENTRY];
            let file = le32(e);
            let kind = HeldKind::from_u8(e[4]).ok_or(Error::Malformed)?;
            if e[5] != 0 || le16(&e[6..]) != 0 {
                return Err(Error::Malformed);
            }
            let len = le64(&e[8..]);
            if len == 0 {
                return Err(Error::Malformed);
            }
            if entries.last().is_some_and(|p: &HeldEntry| p.file >= file) {
                return Err(Error::Malformed);
            }
            entries.push(HeldEntry {
                file,
                kind,
                len,
                hash: e[16..48].try_into().expect("32 bytes"),
            });
        }
        Ok(Held { entries })
    }

    pub fn buffer_len(&self) -> usize {
        HELD_FIXED + self.entries.len() * HELD_ENTRY
    }

    pub fn emit(&self, b: &mut [u8]) -> usize {
        put_le16(b, self.entries.len() as u16);
        put_le16(&mut b[2..], 0);
        for (k, e) in self.entries.iter().enumerate() {
            let o = &mut b[HELD_FIXED + k * HELD_ENTRY..HELD_FIXED + (k + 1) * HELD_ENTRY];
            put_le32(o, e.file);
            o[4] = e.kind as u8;
            o[5] = 0;
            put_le16(&mut o[6..], 0);
            put_le64(&mut o[8..], e.len);
            o[16..48].copy_from_slice(&e.hash);
        }
        self.buffer_len()
    }
}

/// The record at the head of a streamed file's block stream that continues from what the
/// receiver holds: where a block's length prefix would be, `0xFFFFFFFF` (larger than any
/// block body may be), the file offset the blocks start at, and the held hash it echoes.
/// `at` equal to the file's size means the receiver's whole file is kept (skip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeRecord {
    pub at: u64,
    pub hash: [u8; 32],
}

impl ResumeRecord {
    pub const MARK: [u8; 4] = [0xFF; 4];
    pub const LEN: usize = 4 + 8 + 32;

    /// `None` unless `b` starts with the mark; then the record if all of it is there
    /// (`Some(None)`: the record, not complete yet).
    pub fn parse(b: &[u8]) -> Option<Option<ResumeRecord>> {
        if b.len() < 4 || b[..4] != Self::MARK {
            return None;
        }
        Some(b.get(..Self::LEN).map(|r| ResumeRecord {
            at: le64(&r[4..]),
            hash: r[12..44].try_into().expect("32 bytes"),
        }))
    }

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..4].copy_from_slice(&Self::MARK);
        put_le64(&mut b[4..], self.at);
        b[12..].copy_from_slice(&self.hash);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file: u32, kind: HeldKind, len: u64) -> HeldEntry {
        HeldEntry {
            file,
            kind,
            len,
            hash: [file as u8; 32],
        }
    }

    #[test]
    fn held_round_trips_from_literal_bytes() {
        let mut bytes = vec![2, 0, 0, 0];
        bytes.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        bytes.extend_from_slice(&4096u64.to_le_bytes());
        bytes.extend_from_slice(&[1; 32]);
        bytes.extend_from_slice(&[7, 0, 0, 0, 1, 0, 0, 0]);
        bytes.extend_from_slice(&10u64.to_le_bytes());
        bytes.extend_from_slice(&[7; 32]);
        let h = Held::parse(&bytes).unwrap();
        assert_eq!(
            h.entries,
            vec![
                entry(1, HeldKind::Prefix, 4096),
                entry(7, HeldKind::Whole, 10)
            ]
        );
        let mut out = vec![0u8; h.buffer_len()];
        assert_eq!(h.emit(&mut out), bytes.len());
        assert_eq!(out, bytes);
    }

    #[test]
    fn forged_held_payloads_are_refused() {
        let good = Held {
            entries: vec![entry(0, HeldKind::Whole, 5), entry(3, HeldKind::Prefix, 9)],
        };
        let mut b = vec![0u8; good.buffer_len()];
        good.emit(&mut b);
        assert!(Held::parse(&b).is_ok());
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut x = b.clone();
            f(&mut x);
            Held::parse(&x).is_err()
        };
        assert!(bad(&|x| x.truncate(3)), "shorter than the fixed part");
        assert!(bad(&|x| x.truncate(x.len() - 1)), "a cut entry");
        assert!(bad(&|x| x.push(0)), "trailing bytes");
        assert!(bad(&|x| x[0] = 3), "a count larger than the entries");
        assert!(bad(&|x| x[..2].copy_from_slice(&[0, 0])), "no entries");
        assert!(bad(&|x| x[2] = 1), "reserved field set");
        assert!(bad(&|x| x[4 + 4] = 9), "unknown kind");
        assert!(bad(&|x| x[4 + 4] = 0), "kind zero");
        assert!(bad(&|x| x[4 + 5] = 1), "reserved byte set");
        assert!(bad(&|x| x[4 + 8..4 + 16].fill(0)), "zero length");
        assert!(
            bad(&|x| x[4 + HELD_ENTRY..4 + HELD_ENTRY + 4].fill(0)),
            "file indices not increasing"
        );
        assert!(bad(&|x| x[..2].copy_from_slice(&u16::MAX.to_le_bytes())));
    }

    #[test]
    fn resume_record_round_trips_and_is_told_from_blocks_and_the_end_record() {
        let r = ResumeRecord {
            at: 1 << 33,
            hash: [9; 32],
        };
        let b = r.to_bytes();
        assert_eq!(&b[..4], &[0xFF; 4]);
        assert_eq!(ResumeRecord::parse(&b), Some(Some(r)));
        assert_eq!(ResumeRecord::parse(&b[..20]), Some(None));
        assert_eq!(ResumeRecord::parse(&[0, 0, 0, 0, 1]), None);
        assert_eq!(ResumeRecord::parse(&[5, 0, 0, 0, 1]), None);
        assert_eq!(ResumeRecord::parse(&[0xFF; 3]), None);
    }
}
