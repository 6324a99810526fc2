//! Wire formats: zero-copy views over frame bytes, with checked constructors.
//!
//! The layers of one PacketFS frame, outermost first (all PacketFS integers little-endian;
//! Ethernet, IPv4 and UDP fields are big-endian as their RFCs say):
//!
//! | module       | layer                                                                 |
//! |--------------|-----------------------------------------------------------------------|
//! | [`ethernet`] | Ethernet II, with an optional 802.1Q tag                              |
//! | [`ipv4`]     | IPv4 (options accepted on parse, never emitted), header checksum      |
//! | [`udp`]      | UDP; the checksum is optional for IPv4 and PacketFS emits 0           |
//! | [`pfs`]      | the PacketFS header: magic, version, type, session, sequence, CRC32C   |
//! | [`crc`]      | CRC32C of frame-sized buffers (three lanes joined by carry-less multiply) |
//! | [`payload`]  | the payloads: handshake, data grams, ACK/NACK, probe, done, abort     |
//! | [`reason`]   | the reason codes of an Abort frame                                    |
//! | [`stack`]    | a whole Ethernet frame at once, for the AF_XDP data path              |
//!
//! The kernel UDP driver sees only the UDP payload, which is a PacketFS *datagram*:
//! [`pfs::Packet`] header plus payload. The AF_XDP driver sees whole Ethernet frames and uses
//! [`stack`] to find the datagram inside them.
//!
//! # The contract of the views (after smoltcp)
//!
//! Every header is a view `Packet<T: AsRef<[u8]>>` over a buffer. Byte offsets live in a
//! private `mod field`. `new_unchecked` wraps any buffer; its accessors may panic on a short
//! one. `new_checked` = `new_unchecked` + `check_len`: after it succeeds, **no accessor
//! panics**, whatever the bytes. Untrusted input always goes through `new_checked`, then
//! `Repr::parse`, which validates the contents (magic, version, checksums, field ranges) and
//! yields the parsed form. `Repr::emit` writes a header into a buffer of at least
//! `Repr::buffer_len()` bytes.
//!
//! The format is described in full in `docs/wire.md`.

pub mod crc;
pub mod ethernet;
pub mod held;
pub mod ipv4;
pub mod payload;
pub mod pfs;
pub mod reason;
pub mod stack;
pub mod udp;

/// Why bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the header or than a length field says.
    #[error("truncated")]
    Truncated,
    /// A field holds a value this version does not allow.
    #[error("malformed")]
    Malformed,
    /// Not a PacketFS datagram (wrong magic).
    #[error("bad magic")]
    BadMagic,
    /// A PacketFS version this build does not speak.
    #[error("unsupported version {0}")]
    Version(u8),
    /// An IPv4 header checksum, UDP checksum or PacketFS CRC32C did not match.
    #[error("checksum mismatch")]
    Checksum,
    /// Not a frame for us (another EtherType, protocol or port).
    #[error("not a PacketFS frame")]
    NotOurs,
}

/// Result of wire parsing.
pub type Result<T> = core::result::Result<T, Error>;

/// Little-endian and big-endian field helpers. Callers have checked the length.
pub(crate) mod bytes {
    #[inline]
    pub fn le16(b: &[u8]) -> u16 {
        u16::from_le_bytes([b[0], b[1]])
    }
    #[inline]
    pub fn le32(b: &[u8]) -> u32 {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    #[inline]
    pub fn le64(b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        u64::from_le_bytes(a)
    }
    #[inline]
    pub fn be16(b: &[u8]) -> u16 {
        u16::from_be_bytes([b[0], b[1]])
    }
    #[inline]
    pub fn put_le16(b: &mut [u8], v: u16) {
        b[..2].copy_from_slice(&v.to_le_bytes())
    }
    #[inline]
    pub fn put_le32(b: &mut [u8], v: u32) {
        b[..4].copy_from_slice(&v.to_le_bytes())
    }
    #[inline]
    pub fn put_le64(b: &mut [u8], v: u64) {
        b[..8].copy_from_slice(&v.to_le_bytes())
    }
    #[inline]
    pub fn put_be16(b: &mut [u8], v: u16) {
        b[..2].copy_from_slice(&v.to_be_bytes())
    }
}

/// The Internet checksum (RFC 1071) over `data`, starting from the partial sum `start`.
pub fn internet_checksum_sum(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = chunks.remainder() {
        sum += (*b as u32) << 8;
    }
    sum
}

/// Fold a partial sum into the one's-complement 16-bit checksum.
pub fn internet_checksum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
