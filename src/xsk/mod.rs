//! AF_XDP sockets on a UMEM, one owner per rx/tx queue (a thin layer over xsk-rs).
//!
//! | file        | concern                                                               |
//! |-------------|-----------------------------------------------------------------------|
//! | `config.rs` | [`XskConfig`]: UMEM frame size and count, ring sizes, batch, bind mode |
//! | `socket.rs` | [`XskSocket`]: UMEM + fill/completion/rx/tx rings of one queue         |
//! | `blast.rs`  | [`blast`]: a plain frame blast, the ceiling for transfer benchmarks    |
//!
//! Rules the socket keeps (see ../shared/PLATFORM.md for the pitfalls behind them):
//! - xsk-rs never loads libxdp's own XDP program (`XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`):
//!   [`crate::steer::Steering::set_socket`] puts the socket into our XSKMAP.
//! - The fill ring is filled at creation, also for sockets that only transmit, and refilled
//!   by exactly what was consumed; a ring is never handed more descriptors than it has free.
//! - `need_wakeup` is honoured on the fill and tx rings (a wakeup is sent whenever the flag is
//!   set, also when the tx ring is full).
//! - A socket is owned by one thread: [`XskSocket`] is `Send` but not `Sync`.
#![allow(unsafe_code)]

pub mod blast;
mod config;
mod socket;

pub use config::{BindMode, XskConfig};
pub use socket::{wait_any, LentFrame, XskSocket, XskStats};

/// What can go wrong creating or driving an AF_XDP socket.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// A size out of its range (frame size, ring size, frame count, batch, frame length).
    #[error("invalid AF_XDP configuration: {what} {value} must be {rule}")]
    Size {
        what: &'static str,
        value: u64,
        rule: String,
    },
    /// xsk-rs refused a setting (ring or frame size, interface name).
    #[error("invalid AF_XDP configuration: {what}: {source}")]
    Setting {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "creating the UMEM ({frames} frames of {frame_size} B) failed: {source} (needs root or \
         CAP_NET_RAW + CAP_IPC_LOCK; with huge pages, reserve some in /proc/sys/vm/nr_hugepages)"
    )]
    Umem {
        frames: u32,
        frame_size: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "binding an AF_XDP socket to {iface} queue {queue} failed: {source} (is the queue \
         below the interface's channel count (`ethtool -l {iface}`), the interface up, and no \
         other socket bound there?)"
    )]
    Bind {
        iface: String,
        queue: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the UMEM of {iface} queue {queue} is already shared: expected fresh fill/completion rings"
    )]
    SharedUmem { iface: String, queue: u32 },
    #[error("AF_XDP socket I/O on {iface} queue {queue}: {source}")]
    Io {
        iface: String,
        queue: u32,
        #[source]
        source: std::io::Error,
    },
}
