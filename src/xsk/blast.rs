//! A plain AF_XDP frame blast: the packet-rate ceiling that transfer benchmarks compare to.
//!
//! [`run_tx`] sends N identical-length IPv4/UDP frames (each with a sequence number) as fast
//! as one socket can; [`run_rx`] counts them on the other side. Rates count whole Ethernet
//! frames without preamble and FCS: Gbit/s = frame bytes x 8 / seconds.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::{XskError, XskSocket};

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// Bytes of Ethernet + IPv4 + UDP headers.
pub const HEADERS_LEN: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN;
/// The smallest blast frame: headers and an 8-byte sequence number.
pub const MIN_FRAME_LEN: usize = HEADERS_LEN + 8;

/// The frames of a blast: addresses, ports and the frame length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// Whole Ethernet frame length (without FCS), at least [`MIN_FRAME_LEN`].
    pub frame_len: usize,
}

impl FrameSpec {
    /// The Ethernet/IPv4/UDP headers of every frame (IPv4 checksum filled in, UDP checksum 0,
    /// which IPv4 allows).
    pub fn headers(&self) -> [u8; HEADERS_LEN] {
        assert!(
            self.frame_len >= HEADERS_LEN && self.frame_len <= 9000,
            "frame_len {} outside {HEADERS_LEN}..=9000",
            self.frame_len
        );
        let mut h = [0u8; HEADERS_LEN];
        h[0..6].copy_from_slice(&self.dst_mac);
        h[6..12].copy_from_slice(&self.src_mac);
        h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut h[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
        ip[0] = 0x45;
        let ip_len = (self.frame_len - ETH_HLEN) as u16;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&self.src_ip.octets());
        ip[16..20].copy_from_slice(&self.dst_ip.octets());
        let csum = ipv4_checksum(ip);
        ip[10..12].copy_from_slice(&csum.to_be_bytes());
        let udp = &mut h[ETH_HLEN + IPV4_HLEN..];
        udp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        let udp_len = (self.frame_len - ETH_HLEN - IPV4_HLEN) as u16;
        udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
        h
    }
}

/// The IPv4 header checksum (RFC 1071) of `hdr` with its checksum field taken as zero.
pub fn ipv4_checksum(hdr: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for (i, pair) in hdr.chunks(2).enumerate() {
        if i == 5 {
            continue; // the checksum field itself
        }
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What one side of a blast measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct BlastReport {
    /// Frames sent (tx) or received (rx).
    pub frames: u64,
    /// Their bytes (whole Ethernet frames).
    pub bytes: u64,
    /// Received frames whose headers matched the blast's exactly (rx only).
    pub valid: u64,
    /// From the first frame to the last completion (tx) or reception (rx).
    pub secs: f64,
    /// CPU time the measuring thread used meanwhile (user + system, including the kernel
    /// work done in its context): on a busy machine, frames per CPU-second are steadier
    /// than frames per second.
    pub cpu_secs: f64,
}

impl BlastReport {
    /// Million frames per second.
    pub fn mpps(&self) -> f64 {
        if self.secs > 0.0 {
            self.frames as f64 / self.secs / 1e6
        } else {
            0.0
        }
    }

    /// Million frames per CPU-second of the measuring thread.
    pub fn mpps_per_cpu(&self) -> f64 {
        if self.cpu_secs > 0.0 {
            self.frames as f64 / self.cpu_secs / 1e6
        } else {
            0.0
        }
    }

    /// Gigabits per second of whole frames.
    pub fn gbps(&self) -> f64 {
        if self.secs > 0.0 {
            self.bytes as f64 * 8.0 / self.secs / 1e9
        } else {
            0.0
        }
    }
}

/// Sends `frames` frames as fast as `sock` takes them; frame `i` carries `i` (u64 LE)
/// right after the headers. Returns once all have completed (or 2 s after the last
/// could not complete).
pub fn run_tx(
    sock: &mut XskSocket,
    spec: &FrameSpec,
    frames: u64,
) -> Result<BlastReport, XskError> {
    let len = spec.frame_len;
    if len < MIN_FRAME_LEN {
        return Err(XskError::Size {
            what: "frame_len",
            value: len as u64,
            rule: format!("at least the blast minimum {MIN_FRAME_LEN}"),
        });
    }
    let hdr = spec.headers();
    if len > sock.frame_capacity() {
        return Err(XskError::Size {
            what: "frame_len",
            value: len as u64,
            rule: format!("at most the UMEM frame capacity {}", sock.frame_capacity()),
        });
    }
    let start = Instant::now();
    let cpu0 = thread_cpu_secs();
    let mut sent = 0u64;
    while sent < frames {
        let want = (frames - sent).min(usize::MAX as u64) as usize;
        let base = sent;
        let n = sock.send_batch(want, |i, buf| {
            buf[..HEADERS_LEN].copy_from_slice(&hdr);
            buf[HEADERS_LEN..MIN_FRAME_LEN].copy_from_slice(&(base + i as u64).to_le_bytes());
            len
        });
        sent += n as u64;
        if n == 0 {
            std::hint::spin_loop();
        }
    }
    let left = sock.flush(Duration::from_secs(2));
    let done = sent - left as u64;
    Ok(BlastReport {
        frames: done,
        bytes: done * len as u64,
        valid: 0,
        secs: start.elapsed().as_secs_f64(),
        cpu_secs: thread_cpu_secs() - cpu0,
    })
}

/// Counts received frames until `frames` arrived, or `idle` passed without one (after the
/// first), or `first_within` passed without any. Frames whose headers equal `spec`'s count
/// as valid.
pub fn run_rx(
    sock: &mut XskSocket,
    spec: &FrameSpec,
    frames: u64,
    first_within: Duration,
    idle: Duration,
) -> Result<BlastReport, XskError> {
    let hdr = spec.headers();
    let len = spec.frame_len;
    let mut r = BlastReport::default();
    let begin = Instant::now();
    let cpu0 = thread_cpu_secs();
    let mut first: Option<Instant> = None;
    let mut last = begin;
    while r.frames < frames {
        let n = sock.recv_batch(|f| {
            r.frames += 1;
            r.bytes += f.len() as u64;
            if f.len() == len && f[..HEADERS_LEN] == hdr {
                r.valid += 1;
            }
        });
        let now = Instant::now();
        if n > 0 {
            first.get_or_insert(now);
            last = now;
            continue;
        }
        match first {
            None if now - begin > first_within => break,
            Some(_) if now - last > idle => break,
            // Nothing waiting: nap instead of poll(). In copy mode frames arrive without
            // any syscall of ours, each poll() would also run the kernel's tx path for this
            // socket, and the fill ring holds milliseconds of frames; recv_batch still
            // wakes the driver when the fill ring asks for it.
            _ => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    r.secs = match first {
        Some(f) => (last - f).as_secs_f64(),
        None => 0.0,
    };
    r.cpu_secs = thread_cpu_secs() - cpu0;
    Ok(r)
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safety: clock_gettime writes one timespec through a valid pointer to a local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(len: usize) -> FrameSpec {
        FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(10, 201, 0, 1),
            dst_ip: Ipv4Addr::new(10, 201, 0, 2),
            src_port: 40000,
            dst_port: 47000,
            frame_len: len,
        }
    }

    #[test]
    fn checksum_known_header() {
        // The classic example header (Wikipedia, "IPv4 header checksum"): checksum 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&h), 0xb861);
    }

    #[test]
    fn headers_for_74_bytes() {
        let h = spec(74).headers();
        assert_eq!(&h[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([h[16], h[17]]), 60); // IPv4 total length
        assert_eq!(u16::from_be_bytes([h[38], h[39]]), 40); // UDP length
        assert_eq!(u16::from_be_bytes([h[36], h[37]]), 47000);
        // A header with its checksum in place sums to 0xffff.
        let ip = &h[14..34];
        let mut sum: u32 = ip
            .chunks(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]) as u32)
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn rates() {
        let r = BlastReport {
            frames: 1_000_000,
            bytes: 74_000_000,
            valid: 0,
            secs: 2.0,
            cpu_secs: 1.0,
        };
        assert!((r.mpps() - 0.5).abs() < 1e-9);
        assert!((r.gbps() - 0.296).abs() < 1e-9);
        assert!((r.mpps_per_cpu() - 1.0).abs() < 1e-9);
        assert!(thread_cpu_secs() > 0.0);
        assert_eq!(BlastReport::default().mpps(), 0.0);
    }
}
