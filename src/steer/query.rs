//! Which XDP program an interface carries, through libbpf's `bpf_xdp_query` (libbpf-rs).

use std::os::fd::AsFd;

use libbpf_rs::{Xdp, XdpFlags};

use super::SteerError;

/// The XDP programs attached to one interface, by kernel program id (0 = none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachedXdp {
    /// Attached in the driver (native).
    pub drv: u32,
    /// Attached in generic (SKB) mode.
    pub skb: u32,
    /// Offloaded to the NIC.
    pub hw: u32,
}

impl AttachedXdp {
    /// Whether any program is attached.
    pub fn any(&self) -> bool {
        self.drv != 0 || self.skb != 0 || self.hw != 0
    }
}

/// The XDP programs attached to `iface` (in the calling thread's network namespace).
pub fn attached_xdp(iface: &str) -> Result<AttachedXdp, SteerError> {
    let ifindex = nix::net::if_::if_nametoindex(iface)
        .map_err(|_| SteerError::NoInterface(iface.to_string()))?;
    // libbpf-rs hangs its query off a program handle, but bpf_xdp_query never uses the
    // program fd: any open fd serves as the handle.
    let dummy = std::fs::File::open("/dev/null").map_err(|source| SteerError::Query {
        iface: iface.to_string(),
        source,
    })?;
    let opts = Xdp::new(dummy.as_fd())
        .query(ifindex as i32, XdpFlags::NONE)
        .map_err(|e| SteerError::Query {
            iface: iface.to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(AttachedXdp {
        drv: opts.drv_prog_id,
        skb: opts.skb_prog_id,
        hw: opts.hw_prog_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_interface() {
        let e = attached_xdp("pfs-no-such-if0").unwrap_err();
        assert!(matches!(e, SteerError::NoInterface(_)), "{e}");
    }

    #[test]
    fn loopback_query_runs() {
        // Needs no privileges (RTM_GETLINK); lo normally carries no XDP program.
        match attached_xdp("lo") {
            Ok(a) => assert_eq!(a.any(), a.drv | a.skb | a.hw != 0),
            Err(e) => eprintln!("query on lo failed (sandbox?): {e}"),
        }
    }
}
