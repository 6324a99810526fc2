//! The PacketFS header: the first 32 bytes of every PacketFS datagram.
//!
//! ```text
//!  0      4   5    6      8            16           24      26  27  28      32
//! +-------+---+----+------+------------+------------+-------+---+---+-------+---------+-----+
//! | magic |ver|type|flags | session id | sequence   |pay len|tag|kp | crc32c| payload | tag |
//! +-------+---+----+------+------------+------------+-------+---+---+-------+---------+-----+
//! ```
//!
//! * `magic` is `PkFS`; `ver` is [`VERSION`]; all integers little-endian.
//! * `seq` counts the frames one endpoint transmits in this session (0, 1, 2, ...). It names a
//!   *transmission*, never a position in a file, so a retransmission always has a new number.
//! * `tag len` is the length of the authentication tag that follows the payload: 16 in a
//!   *sealed* frame (flag [`FLAG_SEALED`]: AES-256-GCM, see `crate::secure::channel`), 0 in
//!   an unsealed one (the handshake frames, and every frame of an `--insecure` session).
//! * `kp` (byte 27, reserved before version 3) is the key phase of a sealed frame (0 or 1,
//!   flipped at each rekey); it must be 0 in an unsealed frame.
//! * `crc32c` (Castagnoli) covers the header with the CRC field zeroed and the payload of an
//!   unsealed frame. A sealed frame carries 0 there and no receiver checks it: the tag
//!   authenticates the header (the associated data, CRC field zero) and the payload, so
//!   every corruption the CRC would catch fails the tag, and a CRC over the ciphertext would
//!   cost a pass over every frame on both sides (one over the plaintext would leak 32 bits
//!   of it).

use super::bytes::{le16, le32, le64, put_le16, put_le32, put_le64};
use super::{Error, Result};

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const TYPE: usize = 5;
    pub const FLAGS: Range<usize> = 6..8;
    pub const SESSION: Range<usize> = 8..16;
    pub const SEQ: Range<usize> = 16..24;
    pub const PAYLOAD_LEN: Range<usize> = 24..26;
    pub const TAG_LEN: usize = 26;
    pub const RESERVED: usize = 27;
    pub const CRC: Range<usize> = 28..32;
}

/// Header length.
pub const HEADER_LEN: usize = field::CRC.end;
/// `PkFS`.
pub const MAGIC: [u8; 4] = *b"PkFS";
/// The version this build speaks.
pub const VERSION: u8 = 4;

/// Flag: this data frame repairs a NACKed range (not first-pass data).
pub const FLAG_REPAIR: u16 = 0x0001;
/// Flag: the payload is encrypted and a 16-byte tag follows it (any frame type).
pub const FLAG_SEALED: u16 = 0x0002;
/// Flags this version ([`VERSION`]) defines; any other bit is refused.
pub const FLAGS_KNOWN: u16 = FLAG_REPAIR | FLAG_SEALED;
/// The tag length of a sealed frame.
pub const SEALED_TAG_LEN: u8 = 16;

/// The frame types. Direction: S = sender, R = receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// S->R: snapshot id and a chunk of the file manifest.
    Hello = 1,
    /// R->S: the manifest is accepted.
    Accept = 2,
    /// S->R: a gram of segment descriptors and raw spill.
    Data = 3,
    /// R->S: progress.
    Ack = 4,
    /// R->S: progress plus missing ranges.
    Nack = 5,
    /// S->R: "what are you missing?" (tail-loss probe).
    Probe = 6,
    /// R->S: every file arrived and verified.
    Done = 7,
    /// Either way: the session ends, with a reason.
    Abort = 8,
    /// Either way: the peer's Done or Abort was received.
    Close = 9,
    /// S->R: Noise IKpsk2 message 1 and mac1 (unsealed).
    HandshakeInit = 10,
    /// R->S: Noise IKpsk2 message 2 (unsealed; never larger than the init).
    HandshakeResp = 11,
    /// R->S: what the receiver already holds of some files (resume, skip).
    Held = 14,
}

impl FrameType {
    pub fn from_u8(v: u8) -> Option<FrameType> {
        use FrameType::*;
        Some(match v {
            1 => Hello,
            2 => Accept,
            3 => Data,
            4 => Ack,
            5 => Nack,
            6 => Probe,
            7 => Done,
            8 => Abort,
            9 => Close,
            10 => HandshakeInit,
            11 => HandshakeResp,
            14 => Held,
            _ => return None,
        })
    }
}

/// A view of a PacketFS datagram (header, payload, tag).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// The buffer holds the header, the payload and the tag the header announces.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < self.total_len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn magic(&self) -> [u8; 4] {
        self.buffer.as_ref()[field::MAGIC].try_into().unwrap()
    }
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }
    pub fn frame_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    pub fn flags(&self) -> u16 {
        le16(&self.buffer.as_ref()[field::FLAGS])
    }
    pub fn session(&self) -> u64 {
        le64(&self.buffer.as_ref()[field::SESSION])
    }
    pub fn seq(&self) -> u64 {
        le64(&self.buffer.as_ref()[field::SEQ])
    }
    pub fn payload_len(&self) -> u16 {
        le16(&self.buffer.as_ref()[field::PAYLOAD_LEN])
    }
    pub fn tag_len(&self) -> u8 {
        self.buffer.as_ref()[field::TAG_LEN]
    }
    pub fn reserved(&self) -> u8 {
        self.buffer.as_ref()[field::RESERVED]
    }
    pub fn crc(&self) -> u32 {
        le32(&self.buffer.as_ref()[field::CRC])
    }
    /// Header + payload + tag.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len() as usize + self.tag_len() as usize
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.payload_len() as usize]
    }
    /// CRC32C of header (CRC zeroed), payload and tag.
    pub fn compute_crc(&self) -> u32 {
        let b = self.buffer.as_ref();
        let c = crc32c::crc32c(&b[..field::CRC.start]);
        let c = crc32c::crc32c_append(c, &[0u8; 4]);
        super::crc::append(c, &b[HEADER_LEN..self.total_len()])
    }
    pub fn verify_crc(&self) -> bool {
        self.compute_crc() == self.crc()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_magic(&mut self) {
        self.buffer.as_mut()[field::MAGIC].copy_from_slice(&MAGIC)
    }
    pub fn set_version(&mut self, v: u8) {
        self.buffer.as_mut()[field::VERSION] = v
    }
    pub fn set_frame_type(&mut self, t: FrameType) {
        self.buffer.as_mut()[field::TYPE] = t as u8
    }
    pub fn set_flags(&mut self, v: u16) {
        put_le16(&mut self.buffer.as_mut()[field::FLAGS], v)
    }
    pub fn set_session(&mut self, v: u64) {
        put_le64(&mut self.buffer.as_mut()[field::SESSION], v)
    }
    pub fn set_seq(&mut self, v: u64) {
        put_le64(&mut self.buffer.as_mut()[field::SEQ], v)
    }
    pub fn set_payload_len(&mut self, v: u16) {
        put_le16(&mut self.buffer.as_mut()[field::PAYLOAD_LEN], v)
    }
    pub fn set_tag_len(&mut self, v: u8) {
        self.buffer.as_mut()[field::TAG_LEN] = v
    }
    pub fn set_reserved(&mut self, v: u8) {
        self.buffer.as_mut()[field::RESERVED] = v
    }
    pub fn set_crc(&mut self, v: u32) {
        put_le32(&mut self.buffer.as_mut()[field::CRC], v)
    }
    /// Compute and store the CRC32C (call after the payload is in place).
    pub fn fill_crc(&mut self) {
        let c = self.compute_crc();
        put_le32(&mut self.buffer.as_mut()[field::CRC], c)
    }
    /// The bytes after the header (the payload area, up to the end of the buffer).
    pub fn payload_area_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// The parsed PacketFS header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub frame_type: FrameType,
    pub flags: u16,
    pub session: u64,
    pub seq: u64,
    pub payload_len: u16,
}

impl Repr {
    /// Validate magic, version, type, flags, the tag length and key phase, and the CRC32C of
    /// an unsealed frame. A sealed frame's payload is only meaningful once opened
    /// (`crate::secure`): parsing one does not check its tag.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        p.check_len()?;
        if p.magic() != MAGIC {
            return Err(Error::BadMagic);
        }
        if p.version() != VERSION {
            return Err(Error::Version(p.version()));
        }
        let sealed = p.flags() & FLAG_SEALED != 0;
        if !sealed && !p.verify_crc() {
            return Err(Error::Checksum);
        }
        let frame_type = FrameType::from_u8(p.frame_type()).ok_or(Error::Malformed)?;
        let (tag, phase_max) = if sealed { (SEALED_TAG_LEN, 1) } else { (0, 0) };
        if p.tag_len() != tag || p.reserved() > phase_max || p.flags() & !FLAGS_KNOWN != 0 {
            return Err(Error::Malformed);
        }
        Ok(Repr {
            frame_type,
            flags: p.flags(),
            session: p.session(),
            seq: p.seq(),
            payload_len: p.payload_len(),
        })
    }

    /// Header plus payload (this version emits no tag).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }

    /// Write the header and the CRC32C over it and the payload already in the buffer.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        self.emit_header(p);
        p.fill_crc();
    }

    /// Write the header with CRC 0, for a frame that is sealed next (the tag authenticates
    /// every byte; a sealed frame's CRC field is 0 and not checked).
    pub fn emit_header<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_magic();
        p.set_version(VERSION);
        p.set_frame_type(self.frame_type);
        p.set_flags(self.flags);
        p.set_session(self.session);
        p.set_seq(self.seq);
        p.set_payload_len(self.payload_len);
        p.set_tag_len(0);
        p.set_reserved(0);
        p.set_crc(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Close frame (empty payload) of session 0x0102030405060708, seq 9.
    fn close_bytes() -> Vec<u8> {
        let mut b = vec![
            b'P', b'k', b'F', b'S', 4, 9, 0, 0, //
            8, 7, 6, 5, 4, 3, 2, 1, //
            9, 0, 0, 0, 0, 0, 0, 0, //
            0, 0, 0, 0, //
        ];
        let crc = crc32c::crc32c_append(crc32c::crc32c(&b), &[0; 4]);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn close_repr() -> Repr {
        Repr {
            frame_type: FrameType::Close,
            flags: 0,
            session: 0x0102030405060708,
            seq: 9,
            payload_len: 0,
        }
    }

    #[test]
    fn deconstruct() {
        let b = close_bytes();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), close_repr());
        assert_eq!(p.payload(), &[] as &[u8]);
    }

    #[test]
    fn construct() {
        let mut buf = vec![0u8; HEADER_LEN];
        close_repr().emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, close_bytes());
    }

    #[test]
    fn refusals() {
        let good = close_bytes();
        let parse = |b: &[u8]| Packet::new_checked(b).and_then(|p| Repr::parse(&p));
        assert_eq!(parse(&good[..31]), Err(Error::Truncated));
        let mut m = good.clone();
        m[0] = b'X';
        assert_eq!(parse(&m), Err(Error::BadMagic));
        let mut v = good.clone();
        v[4] = 1; // version 1 (no packed mode) is not spoken any more
        assert_eq!(parse(&v), Err(Error::Version(1)));
        let mut c = good.clone();
        c[20] ^= 0x10;
        assert_eq!(parse(&c), Err(Error::Checksum));
        // A payload length beyond the buffer is a truncation, caught before any CRC.
        let mut l = good.clone();
        l[24] = 5;
        assert_eq!(parse(&l), Err(Error::Truncated));
        // A tag on an unsealed frame is refused even with a valid CRC.
        let mut t = good.clone();
        t[26] = 1;
        t.push(0);
        let mut p = Packet::new_unchecked(&mut t[..]);
        p.fill_crc();
        assert_eq!(parse(&t), Err(Error::Malformed));
        // Version 2 is not spoken any more.
        let mut v2 = good.clone();
        v2[4] = 2;
        assert_eq!(parse(&v2), Err(Error::Version(2)));
        // A sealed frame: flag, tag length 16, key phase 0 or 1, CRC not checked.
        let mut s = good.clone();
        s[6] = FLAG_SEALED as u8;
        s[26] = SEALED_TAG_LEN;
        s[27] = 1;
        s[28..32].copy_from_slice(&[0; 4]);
        s.extend_from_slice(&[0xaa; 16]);
        assert!(parse(&s).is_ok());
        let mut s2 = s.clone();
        s2[27] = 2;
        assert_eq!(parse(&s2), Err(Error::Malformed));
        let mut s3 = s.clone();
        s3[26] = 8;
        assert_eq!(parse(&s3), Err(Error::Malformed));
    }

    #[test]
    fn emit_header_leaves_the_crc_to_the_sealer() {
        let repr = Repr {
            frame_type: FrameType::Data,
            flags: FLAG_REPAIR,
            session: 0x0102_0304_0506_0708,
            seq: 77,
            payload_len: 5,
        };
        let mut a = vec![0xeeu8; HEADER_LEN + 5];
        let mut b = a.clone();
        repr.emit(&mut Packet::new_unchecked(&mut a[..]));
        repr.emit_header(&mut Packet::new_unchecked(&mut b[..]));
        // same header but for the CRC field, which emit_header leaves 0
        assert_eq!(a[..28], b[..28]);
        assert_eq!(b[28..32], [0; 4]);
        assert!(Packet::new_unchecked(&a[..]).verify_crc());
        assert!(!Packet::new_unchecked(&b[..]).verify_crc());
    }
}
