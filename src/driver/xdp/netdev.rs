//! What the kernel knows about an interface and its neighbours: rx queue count, MAC and
//! IPv4 address, the neighbour table (ARP) entry of a peer.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// The rx queue count of `iface` (`/sys/class/net/IF/queues/rx-*`).
pub fn rx_queue_count(iface: &str) -> io::Result<u32> {
    let dir = format!("/sys/class/net/{iface}/queues");
    let n = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    Ok(n.max(1) as u32)
}

/// The MAC address of `iface`.
pub fn iface_mac(iface: &str) -> io::Result<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    parse_mac(s.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad MAC {s:?} on {iface}"),
        )
    })
}

/// The first IPv4 address of `iface`.
pub fn iface_ipv4(iface: &str) -> io::Result<Ipv4Addr> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    for a in addrs {
        if a.interface_name != iface {
            continue;
        }
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            return Ok(sin.ip());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{iface} has no IPv4 address"),
    ))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut n = 0;
    for (i, part) in s.split(':').enumerate() {
        if i >= 6 || part.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6).then_some(mac)
}

/// The MAC of `ip` in the kernel neighbour table (/proc/net/arp) on `iface`, if complete.
fn arp_lookup(ip: Ipv4Addr, iface: &str) -> Option<[u8; 6]> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    // IP address  HW type  Flags  HW address  Mask  Device
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let complete = f.get(2).is_some_and(|fl| *fl != "0x0");
        (f.len() >= 6 && f[0] == ip.to_string() && f[5] == iface && complete)
            .then(|| parse_mac(f[3]))
            .flatten()
    })
}

/// The peer's MAC from the neighbour table; when missing, one kernel UDP datagram to the
/// peer's discard port (9) makes the kernel resolve it (ARP), waited for up to 2 s.
pub fn resolve_mac(ip: Ipv4Addr, iface: &str) -> io::Result<[u8; 6]> {
    if let Some(m) = arp_lookup(ip, iface) {
        return Ok(m);
    }
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let _ = s.send_to(b"pfs-arp", SocketAddrV4::new(ip, 9));
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if let Some(m) = arp_lookup(ip, iface) {
            return Ok(m);
        }
        // The reply takes about a round trip: look again soon (a read of /proc/net/arp).
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no neighbour entry for {ip} on {iface} after an ARP attempt: pass --dst-mac"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("02:00:0a:ff:10:01"), Some([2, 0, 10, 255, 16, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:10"), None);
        assert_eq!(parse_mac("02:00:0a:ff:10:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:10:01"), None);
    }

    #[test]
    fn loopback_has_queues_and_an_address() {
        if let Ok(n) = rx_queue_count("lo") {
            assert!(n >= 1);
        }
        if let Ok(ip) = iface_ipv4("lo") {
            assert!(ip.is_loopback());
        }
    }
}
