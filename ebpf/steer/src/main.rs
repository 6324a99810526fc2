//! PacketFS steering: PacketFS UDP frames go to the AF_XDP socket of their rx queue,
//! everything else (ARP, neighbour discovery, other ports, other protocols) to the kernel.
//!
//! Parsing: Ethernet, at most one VLAN tag (802.1Q or 802.1ad), IPv4 without fragments, UDP.
//! Every read goes through [`ptr_at`], which checks the bounds the verifier needs.
//! Maps, names and value types come from `packetfs-common`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_prandom_u32,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, XskMap},
    programs::XdpContext,
};
use packetfs_common::{Counter, ImpairConfig, PortRange, COUNTER_COUNT, FLIP_AT, MAX_QUEUES};

// Map statics are named exactly as the MAP_* constants of packetfs-common (the macro takes
// the symbol name as the map name); `packetfs::steer` checks them in the object it embeds.

#[map]
static PFS_XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

#[map]
static PFS_PORTS: Array<PortRange> = Array::with_max_entries(1, 0);

#[map]
static PFS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map]
static PFS_IMPAIR: Array<ImpairConfig> = Array::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
const IPV4_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;

/// A header that does not fit in the frame.
struct Truncated;

#[xdp]
pub fn pfs_steer(ctx: XdpContext) -> u32 {
    match try_steer(&ctx) {
        Ok(action) => action,
        Err(Truncated) => {
            count(Counter::Malformed);
            xdp_action::XDP_PASS
        }
    }
}

fn try_steer(ctx: &XdpContext) -> Result<u32, Truncated> {
    let Some((port, payload_off)) = packetfs_dst_port(ctx)? else {
        count(Counter::Passed);
        return Ok(xdp_action::XDP_PASS);
    };
    let range = match PFS_PORTS.get(0) {
        Some(r) => *r,
        None => PortRange::EMPTY,
    };
    if !range.contains(port) {
        count(Counter::Passed);
        return Ok(xdp_action::XDP_PASS);
    }

    if let Some(impair) = PFS_IMPAIR.get(0) {
        // Safety: a BPF helper without arguments or side effects on our state.
        if impair.drop_ppm != 0 && impair.drops(unsafe { bpf_get_prandom_u32() }) {
            count(Counter::ImpairedDrop);
            return Ok(xdp_action::XDP_DROP);
        }
        // Safety: as above.
        if impair.flip_ppm != 0 && impair.flips(unsafe { bpf_get_prandom_u32() }) {
            let at = payload_off + FLIP_AT;
            let (start, end) = (ctx.data(), ctx.data_end());
            if start + at + 1 <= end {
                // Safety: the check above keeps the byte inside the frame, which this
                // program may write (XDP frames are writable).
                unsafe { *((start + at) as *mut u8) ^= 0x10 };
                count(Counter::ImpairedFlip);
            }
        }
    }

    // Safety: ctx.ctx is the xdp_md the kernel handed this program; the verifier lets us
    // read rx_queue_index from it.
    let queue = unsafe { (*ctx.ctx).rx_queue_index };
    // The low bits of the flags are the action when the entry is empty: XDP_PASS.
    match PFS_XSKS.redirect(queue, xdp_action::XDP_PASS as u64) {
        Ok(action) if action == xdp_action::XDP_REDIRECT => {
            count(Counter::Steered);
            Ok(action)
        }
        _ => {
            count(Counter::NoSocket);
            Ok(xdp_action::XDP_PASS)
        }
    }
}

/// The UDP destination port (host order) of an IPv4 UDP frame and where its payload starts,
/// `None` for any other frame.
#[inline(always)]
fn packetfs_dst_port(ctx: &XdpContext) -> Result<Option<(u16, usize)>, Truncated> {
    let mut off = ETH_HLEN;
    let mut ethertype = u16::from_be(read::<u16>(ctx, 12)?);
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = u16::from_be(read::<u16>(ctx, ETH_HLEN + 2)?);
        off += VLAN_HLEN;
    }
    if ethertype != ETH_P_IPV4 {
        return Ok(None);
    }

    let ver_ihl: u8 = read(ctx, off)?;
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return Err(Truncated);
    }
    let frag: u16 = u16::from_be(read(ctx, off + 6)?);
    let proto: u8 = read(ctx, off + 9)?;
    // Only whole datagrams: a fragment (MF set or a non-zero offset) is not ours to steer.
    if proto != IPPROTO_UDP || frag & 0x3fff != 0 {
        return Ok(None);
    }
    off += ihl;
    // The whole UDP header must be present, then the destination port is at +2.
    let _: [u8; UDP_HLEN] = read(ctx, off)?;
    let dport = u16::from_be(read::<u16>(ctx, off + 2)?);
    Ok(Some((dport, off + UDP_HLEN)))
}

/// A pointer to a `T` at `offset` bytes into the frame, if the frame holds all of it.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Truncated> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Truncated);
    }
    Ok((start + offset) as *const T)
}

/// Reads a `T` at `offset`, bounds-checked by [`ptr_at`]; unaligned reads are fine.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, Truncated> {
    let p = ptr_at::<T>(ctx, offset)?;
    // Safety: ptr_at checked that the frame holds size_of::<T>() bytes at p; T is a plain
    // integer or byte array, valid for any bits.
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

#[inline(always)]
fn count(c: Counter) {
    if let Some(p) = PFS_COUNTERS.get_ptr_mut(c.index()) {
        // Safety: the map value is this CPU's own u64 slot (per-CPU array); XDP programs
        // do not preempt themselves on one CPU.
        unsafe { *p += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
