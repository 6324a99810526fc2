//! A whole frame at once: Ethernet (optional 802.1Q) / IPv4 / UDP / PacketFS datagram. The
//! AF_XDP data path uses this to find the PacketFS datagram in a received frame and to build
//! frames in place.

use super::{ethernet, ipv4, udp, Error, Result};
use std::net::Ipv4Addr;

/// Addresses and ports of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
}

/// Ethernet + IPv4 + UDP headers in bytes, without a tag.
pub const OVERHEAD: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN;

/// Ethernet + IPv4 + UDP headers in bytes, for `vlan`.
pub fn overhead(vlan: Option<u16>) -> usize {
    OVERHEAD + if vlan.is_some() { 4 } else { 0 }
}

/// Find the UDP payload (the PacketFS datagram) of an Ethernet frame, validating every layer.
/// Frames that are not IPv4/UDP give [`Error::NotOurs`].
pub fn parse(frame: &[u8]) -> Result<(Addrs, &[u8])> {
    let (addrs, r) = locate(frame)?;
    Ok((addrs, &frame[r]))
}

/// [`parse`] over a mutable frame: the datagram can be opened in place.
pub fn parse_mut(frame: &mut [u8]) -> Result<(Addrs, &mut [u8])> {
    let (addrs, r) = locate(frame)?;
    Ok((addrs, &mut frame[r]))
}

/// The addresses of an IPv4/UDP frame and where its UDP payload lies.
fn locate(frame: &[u8]) -> Result<(Addrs, core::ops::Range<usize>)> {
    let eth = ethernet::Packet::new_checked(frame)?;
    let e = ethernet::Repr::parse(&eth)?;
    if e.ethertype != ethernet::ETHERTYPE_IPV4 {
        return Err(Error::NotOurs);
    }
    let ipb = &frame[eth.header_len()..];
    let ip = ipv4::Packet::new_checked(ipb)?;
    let i = ipv4::Repr::parse(&ip)?;
    if i.protocol != ipv4::PROTO_UDP {
        return Err(Error::NotOurs);
    }
    let udpb = &ipb[ip.header_len()..ip.total_len() as usize];
    let u = udp::Packet::new_checked(udpb)?;
    let ur = udp::Repr::parse(&u, i.src, i.dst)?;
    let start = eth.header_len() + ip.header_len() + udp::HEADER_LEN;
    let payload = start..start + ur.payload_len;
    Ok((
        Addrs {
            src_mac: e.src,
            dst_mac: e.dst,
            vlan: e.vlan,
            src_ip: i.src,
            dst_ip: i.dst,
            src_port: ur.src_port,
            dst_port: ur.dst_port,
        },
        payload,
    ))
}

/// Write the Ethernet, IPv4 and UDP headers for a datagram of `datagram_len` bytes at the
/// front of `frame`; returns the header length (the datagram goes at `frame[n..]`).
/// `frame` must hold `overhead(a.vlan)` bytes; the UDP checksum is left 0.
pub fn emit_headers(a: &Addrs, datagram_len: usize, ident: u16, frame: &mut [u8]) -> usize {
    let e = ethernet::Repr {
        dst: a.dst_mac,
        src: a.src_mac,
        vlan: a.vlan,
        ethertype: ethernet::ETHERTYPE_IPV4,
    };
    let el = e.buffer_len();
    e.emit(&mut ethernet::Packet::new_unchecked(&mut frame[..el]));
    let i = ipv4::Repr {
        src: a.src_ip,
        dst: a.dst_ip,
        protocol: ipv4::PROTO_UDP,
        payload_len: udp::HEADER_LEN + datagram_len,
        ttl: 64,
        ident,
    };
    i.emit(&mut ipv4::Packet::new_unchecked(
        &mut frame[el..el + ipv4::HEADER_LEN],
    ));
    let u = udp::Repr {
        src_port: a.src_port,
        dst_port: a.dst_port,
        payload_len: datagram_len,
    };
    let ul = el + ipv4::HEADER_LEN;
    u.emit(&mut udp::Packet::new_unchecked(
        &mut frame[ul..ul + udp::HEADER_LEN],
    ));
    ul + udp::HEADER_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::payload::{Frame, Payload};
    use crate::wire::pfs;

    fn addrs(vlan: Option<u16>) -> Addrs {
        Addrs {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlan,
            src_ip: Ipv4Addr::new(10, 99, 0, 1),
            dst_ip: Ipv4Addr::new(10, 99, 0, 2),
            src_port: 40000,
            dst_port: 47000,
        }
    }

    #[test]
    fn frame_roundtrip_with_and_without_tag() {
        for vlan in [None, Some(7)] {
            let mut f = vec![0u8; 200];
            let hdr = pfs::Repr {
                frame_type: pfs::FrameType::Close,
                flags: 0,
                session: 3,
                seq: 4,
                payload_len: 0,
            };
            let o = overhead(vlan);
            let n = Frame::emit(hdr, &Payload::Close, &mut f[o..]);
            assert_eq!(emit_headers(&addrs(vlan), n, 1, &mut f), o);
            f.truncate(o + n);
            // Ethernet minimum-size padding after the IP packet is ignored.
            f.extend_from_slice(&[0; 6]);
            let (a, d) = parse(&f).unwrap();
            assert_eq!(a, addrs(vlan));
            let fr = Frame::parse(d).unwrap();
            assert_eq!(fr.header.seq, 4);
            // A flipped address bit breaks the IPv4 checksum.
            let mut bad = f.clone();
            bad[o - 8 - 20 + 13] ^= 1;
            assert_eq!(parse(&bad).unwrap_err(), Error::Checksum);
        }
    }

    #[test]
    fn other_traffic_is_not_ours() {
        let mut arp = vec![0u8; 60];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(parse(&arp).unwrap_err(), Error::NotOurs);
    }
}
