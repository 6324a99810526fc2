//! UDP. For IPv4 the checksum is optional (RFC 768); PacketFS emits 0 because the PacketFS
//! header carries a CRC32C over the whole datagram, which the receiver checks anyway. A
//! non-zero checksum on a received datagram is verified.

use super::bytes::{be16, put_be16};
use super::{internet_checksum_fold, internet_checksum_sum, Error, Result};
use std::net::Ipv4Addr;

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// A view of a UDP datagram.
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

    /// The buffer holds the header and the length field's bytes; the length covers the header.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let l = self.len() as usize;
        if l < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < l {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
    pub fn src_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::SRC_PORT])
    }
    pub fn dst_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::DST_PORT])
    }
    /// Header plus payload length, from the length field.
    pub fn len(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::LENGTH])
    }
    pub fn is_empty(&self) -> bool {
        self.len() as usize <= HEADER_LEN
    }
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.len() as usize]
    }
    /// True if the checksum is 0 (absent) or verifies with the IPv4 pseudo-header.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let d = &self.buffer.as_ref()[..self.len() as usize];
        internet_checksum_fold(internet_checksum_sum(pseudo(src, dst, d.len()), d)) == 0
    }
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> u32 {
    let mut s = internet_checksum_sum(0, &src.octets());
    s = internet_checksum_sum(s, &dst.octets());
    s + super::ipv4::PROTO_UDP as u32 + len as u32
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, v: u16) {
        put_be16(&mut self.buffer.as_mut()[field::SRC_PORT], v)
    }
    pub fn set_dst_port(&mut self, v: u16) {
        put_be16(&mut self.buffer.as_mut()[field::DST_PORT], v)
    }
    pub fn set_len(&mut self, v: u16) {
        put_be16(&mut self.buffer.as_mut()[field::LENGTH], v)
    }
    pub fn set_checksum(&mut self, v: u16) {
        put_be16(&mut self.buffer.as_mut()[field::CHECKSUM], v)
    }
    /// Compute the checksum with the IPv4 pseudo-header (0 is sent as 0xffff).
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let l = self.len() as usize;
        let d = &self.buffer.as_ref()[..l];
        let c = internet_checksum_fold(internet_checksum_sum(pseudo(src, dst, l), d));
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let l = self.len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..l]
    }
}

/// The parsed UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
}

impl Repr {
    /// Validate lengths and (when non-zero) the checksum.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Repr> {
        p.check_len()?;
        if !p.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        Ok(Repr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            payload_len: p.len() as usize - HEADER_LEN,
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write the header with checksum 0 (absent, allowed for IPv4).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_len(u16::try_from(HEADER_LEN + self.payload_len).expect("UDP length"));
        p.set_checksum(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static DATAGRAM: [u8; 12] = [
        0xbf, 0x00, // 48896
        0x1f, 0x90, // 8080
        0x00, 0x0c, // length 12
        0x00, 0x00, // no checksum
        0xaa, 0x00, 0x00, 0xff,
    ];
    const A: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
    const B: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&DATAGRAM[..]).unwrap();
        let r = Repr::parse(&p, A, B).unwrap();
        assert_eq!(
            r,
            Repr {
                src_port: 48896,
                dst_port: 8080,
                payload_len: 4
            }
        );
        assert_eq!(p.payload(), &[0xaa, 0, 0, 0xff]);
    }

    #[test]
    fn construct_and_checksum() {
        let mut buf = [0u8; 12];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        Repr {
            src_port: 48896,
            dst_port: 8080,
            payload_len: 4,
        }
        .emit(&mut p);
        p.payload_mut().copy_from_slice(&[0xaa, 0, 0, 0xff]);
        assert_eq!(buf, DATAGRAM);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.fill_checksum(A, B);
        assert_ne!(p.checksum(), 0);
        assert!(p.verify_checksum(A, B));
        assert!(!p.verify_checksum(A, Ipv4Addr::new(192, 168, 1, 3)));
    }

    #[test]
    fn bad_lengths() {
        assert_eq!(
            Packet::new_checked(&DATAGRAM[..7]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&DATAGRAM[..11]).unwrap_err(),
            Error::Truncated
        );
        let mut short = DATAGRAM;
        short[5] = 7;
        assert_eq!(
            Packet::new_checked(&short[..]).unwrap_err(),
            Error::Malformed
        );
    }
}
