//! Constants and `#[repr(C)]` types shared by the PacketFS XDP program (`ebpf/steer`) and
//! user space (`packetfs::steer`).
//!
//! Everything the two sides must agree on lives here once: the program and map names, the
//! counter indexes and the layout of every map value. With the `user` feature the value
//! types implement `aya::Pod` so user space can read and write them.
#![no_std]

/// Name of the XDP program (its function name in `ebpf/steer`).
pub const PROG_NAME: &str = "pfs_steer";

/// XSKMAP: rx queue index -> AF_XDP socket fd.
pub const MAP_XSKS: &str = "PFS_XSKS";
/// Array of one [`PortRange`]: the UDP destination ports steered to AF_XDP.
pub const MAP_PORTS: &str = "PFS_PORTS";
/// PerCpuArray of `u64`, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "PFS_COUNTERS";
/// Array of one [`ImpairConfig`]: receive-side loss injection for tests.
pub const MAP_IMPAIR: &str = "PFS_IMPAIR";

/// Entries in the XSKMAP: the largest rx queue index that can be steered, plus one.
pub const MAX_QUEUES: u32 = 64;

/// Parts per million: the unit of [`ImpairConfig::drop_ppm`].
pub const PPM: u32 = 1_000_000;

/// Indexes into the per-CPU counter map [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// PacketFS frames redirected to the XSKMAP entry of their rx queue.
    Steered = 0,
    /// Frames that are not PacketFS (other ports, protocols, ARP, IPv6, ...) passed on.
    Passed = 1,
    /// Frames whose headers were truncated or invalid; passed to the kernel, which drops them.
    Malformed = 2,
    /// PacketFS frames that arrived on a queue with no socket in the XSKMAP; passed on.
    NoSocket = 3,
    /// PacketFS frames dropped on purpose by the impairment mode.
    ImpairedDrop = 4,
    /// PacketFS frames with one bit flipped on purpose by the impairment mode.
    ImpairedFlip = 5,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::Steered,
        Counter::Passed,
        Counter::Malformed,
        Counter::NoSocket,
        Counter::ImpairedDrop,
        Counter::ImpairedFlip,
    ];

    /// The counter's index in [`MAP_COUNTERS`].
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// A short lowercase name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Steered => "steered",
            Counter::Passed => "passed",
            Counter::Malformed => "malformed",
            Counter::NoSocket => "no_socket",
            Counter::ImpairedDrop => "impaired_drop",
            Counter::ImpairedFlip => "impaired_flip",
        }
    }
}

/// Number of entries in [`MAP_COUNTERS`].
pub const COUNTER_COUNT: u32 = 6;

/// The UDP destination ports steered to AF_XDP: `first..=last`, host byte order.
///
/// An empty range (`first > last`) steers nothing, and neither does the all-zero default
/// (port 0 is never a valid destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// The range that steers nothing.
    pub const EMPTY: PortRange = PortRange { first: 1, last: 0 };

    /// `count` ports starting at `first` (saturating at 65535); `count == 0` is empty.
    pub const fn new(first: u16, count: u16) -> Self {
        if count == 0 {
            return PortRange::EMPTY;
        }
        PortRange {
            first,
            last: first.saturating_add(count - 1),
        }
    }

    /// Whether `port` (host byte order) lies in the range.
    #[inline(always)]
    pub const fn contains(&self, port: u16) -> bool {
        port >= self.first && port <= self.last && port != 0
    }
}

/// Receive-side impairment: drop this fraction of PacketFS frames (for loss tests), and flip
/// one bit in this fraction of the others (for tamper tests).

/// Where the impairment flips a bit: this many bytes into the UDP payload (the PacketFS
/// header is 32 bytes: byte 40 lies in the payload of any frame that has 8 bytes of it).
pub const FLIP_AT: usize = 40;
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImpairConfig {
    /// Drop probability in parts per million (0 = off, 1_000_000 = drop all).
    pub drop_ppm: u32,
    /// Probability of flipping one bit (at [`FLIP_AT`]), in parts per million.
    pub flip_ppm: u32,
}

impl ImpairConfig {
    /// Whether a frame with the random draw `rand` (uniform over u32) is dropped.
    ///
    /// Scales the draw to `0..PPM` with a multiply-shift (no modulo, no bias worth naming).
    #[inline(always)]
    pub const fn drops(&self, rand: u32) -> bool {
        (((rand as u64) * (PPM as u64)) >> 32) < self.drop_ppm as u64
    }

    /// Whether a frame with the random draw `rand` gets a bit flipped.
    #[inline(always)]
    pub const fn flips(&self, rand: u32) -> bool {
        (((rand as u64) * (PPM as u64)) >> 32) < self.flip_ppm as u64
    }
}

#[cfg(feature = "user")]
mod user {
    // Safety: both are #[repr(C)], made only of integers, without padding (checked by the
    // size assertions below), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::PortRange {}
    unsafe impl aya::Pod for super::ImpairConfig {}

    const _: () = assert!(core::mem::size_of::<super::PortRange>() == 4);
    const _: () = assert!(core::mem::size_of::<super::ImpairConfig>() == 8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range() {
        let r = PortRange::new(47000, 4);
        assert!(!r.contains(46999));
        assert!(r.contains(47000) && r.contains(47003));
        assert!(!r.contains(47004));
        let e = PortRange::new(47000, 0);
        assert!(!e.contains(47000) && !e.contains(0) && !e.contains(1));
        assert!(!PortRange::default().contains(0));
        assert_eq!(PortRange::new(65535, 10).last, 65535);
    }

    #[test]
    fn impair_scaling() {
        let off = ImpairConfig { drop_ppm: 0 };
        assert!(!off.drops(0) && !off.drops(u32::MAX));
        let all = ImpairConfig { drop_ppm: PPM };
        assert!(all.drops(0) && all.drops(u32::MAX));
        let tenth = ImpairConfig { drop_ppm: PPM / 10 };
        let dropped = (0..10_000u32)
            .filter(|i| tenth.drops(i.wrapping_mul(429_497)))
            .count();
        assert!((900..=1100).contains(&dropped), "{dropped}");
    }

    #[test]
    fn counters_are_dense() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
        }
    }
}
