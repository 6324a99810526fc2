//! Ethernet II, with an optional IEEE 802.1Q VLAN tag.

use super::bytes::{be16, put_be16};
use super::{Error, Result};

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType (TPID) of an 802.1Q tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;

mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    /// EtherType, or the TPID of an 802.1Q tag.
    pub const TYPE: Range<usize> = 12..14;
    /// With a tag: priority, DEI and VLAN id.
    pub const TCI: Range<usize> = 14..16;
    /// With a tag: the inner EtherType.
    pub const INNER_TYPE: Range<usize> = 16..18;
}

/// Header length without a tag.
pub const HEADER_LEN: usize = field::TYPE.end;
/// Header length with an 802.1Q tag.
pub const HEADER_LEN_VLAN: usize = field::INNER_TYPE.end;

/// A view of an Ethernet frame.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wrap `buffer` after checking it holds the whole header (including a tag, if present).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < self.header_len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst(&self) -> [u8; 6] {
        self.buffer.as_ref()[field::DST].try_into().unwrap()
    }

    pub fn src(&self) -> [u8; 6] {
        self.buffer.as_ref()[field::SRC].try_into().unwrap()
    }

    /// True when an 802.1Q tag follows the source address.
    pub fn has_vlan(&self) -> bool {
        be16(&self.buffer.as_ref()[field::TYPE]) == ETHERTYPE_VLAN
    }

    /// The header length: 14, or 18 with a tag.
    pub fn header_len(&self) -> usize {
        if self.has_vlan() {
            HEADER_LEN_VLAN
        } else {
            HEADER_LEN
        }
    }

    /// The VLAN id (12 bits), if tagged.
    pub fn vlan_id(&self) -> Option<u16> {
        self.has_vlan()
            .then(|| be16(&self.buffer.as_ref()[field::TCI]) & 0x0fff)
    }

    /// The EtherType of the payload (the inner one when tagged).
    pub fn ethertype(&self) -> u16 {
        if self.has_vlan() {
            be16(&self.buffer.as_ref()[field::INNER_TYPE])
        } else {
            be16(&self.buffer.as_ref()[field::TYPE])
        }
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_dst(&mut self, v: [u8; 6]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&v)
    }
    pub fn set_src(&mut self, v: [u8; 6]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&v)
    }
    /// Write the type fields: untagged, or tagged with `vlan` (priority 0).
    pub fn set_types(&mut self, vlan: Option<u16>, ethertype: u16) {
        let b = self.buffer.as_mut();
        match vlan {
            None => put_be16(&mut b[field::TYPE], ethertype),
            Some(id) => {
                put_be16(&mut b[field::TYPE], ETHERTYPE_VLAN);
                put_be16(&mut b[field::TCI], id & 0x0fff);
                put_be16(&mut b[field::INNER_TYPE], ethertype);
            }
        }
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let h = self.header_len();
        &mut self.buffer.as_mut()[h..]
    }
}

/// The parsed Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub vlan: Option<u16>,
    pub ethertype: u16,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        p.check_len()?;
        Ok(Repr {
            dst: p.dst(),
            src: p.src(),
            vlan: p.vlan_id(),
            ethertype: p.ethertype(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        if self.vlan.is_some() {
            HEADER_LEN_VLAN
        } else {
            HEADER_LEN
        }
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_dst(self.dst);
        p.set_src(self.src);
        p.set_types(self.vlan, self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static PLAIN: [u8; 16] = [
        0x02, 0, 0, 0, 0, 0x01, // dst
        0x02, 0, 0, 0, 0, 0x02, // src
        0x08, 0x00, // IPv4
        0xaa, 0xbb, // payload
    ];
    static TAGGED: [u8; 20] = [
        0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, //
        0x81, 0x00, 0x20, 0x2a, // TPID, PCP 1, VID 42
        0x08, 0x00, 0xaa, 0xbb,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PLAIN[..]).unwrap();
        let r = Repr::parse(&p).unwrap();
        assert_eq!(r.dst, [2, 0, 0, 0, 0, 1]);
        assert_eq!(r.vlan, None);
        assert_eq!(r.ethertype, ETHERTYPE_IPV4);
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
        let t = Packet::new_checked(&TAGGED[..]).unwrap();
        assert_eq!(t.vlan_id(), Some(42));
        assert_eq!(t.ethertype(), ETHERTYPE_IPV4);
        assert_eq!(t.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn construct() {
        let r = Repr {
            dst: [2, 0, 0, 0, 0, 1],
            src: [2, 0, 0, 0, 0, 2],
            vlan: Some(42),
            ethertype: ETHERTYPE_IPV4,
        };
        let mut buf = [0u8; 20];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        r.emit(&mut p);
        p.payload_mut().copy_from_slice(&[0xaa, 0xbb]);
        // Priority bits are not emitted.
        let mut want = TAGGED;
        want[14] = 0x00;
        assert_eq!(buf, want);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            Packet::new_checked(&PLAIN[..13]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&TAGGED[..17]).unwrap_err(),
            Error::Truncated
        );
    }
}
