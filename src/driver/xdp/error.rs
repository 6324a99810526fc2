//! What can go wrong setting up or running the AF_XDP driver.

use super::report::XdpReport;
use crate::driver::session::DriverError;
use crate::steer::SteerError;
use crate::xsk::XskError;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(transparent)]
    Steer(Box<SteerError>),
    #[error(transparent)]
    Xsk(Box<XskError>),
    #[error(
        "MTU {mtu} does not fit a {frame_size} B UMEM frame: a frame needs {need} B (the MTU \
         plus Ethernet, IPv4 and UDP headers) but {usable} B are left after the 256 B XDP headroom (a 4096 B frame \
         carries MTU up to 3798; lower --mtu)"
    )]
    MtuTooLarge {
        mtu: usize,
        frame_size: u32,
        usable: usize,
        /// Bytes the largest frame needs.
        need: usize,
    },
    #[error("port range {port}+{ports} is empty or beyond 65535")]
    PortRange { port: u16, ports: u16 },
    #[error("--mode queues needs --queues (e.g. --queues 0,1)")]
    NoQueueList,
    #[error("queue {queue} is beyond the {count} rx queue(s) of {iface}")]
    QueueBeyond {
        queue: u32,
        count: u32,
        iface: String,
    },
    /// Reading what the kernel knows about the interface or the peer failed.
    #[error("{what} of {iface}: {source}")]
    Netdev {
        what: &'static str,
        iface: String,
        #[source]
        source: io::Error,
    },
    /// `--xdp-answers kernel` and no UDP socket for the answers could be bound.
    #[error("--xdp-answers kernel: cannot bind a UDP socket on {ip} for the receiver's answers (or use --xdp-answers xdp)")]
    Answers {
        ip: std::net::Ipv4Addr,
        #[source]
        source: io::Error,
    },
    /// `--xdp-answers kernel` where only the program can do the work.
    #[error("--xdp-answers kernel cannot be used here: {0}")]
    AnswersNeedProgram(&'static str),
    #[error("spawning the AF_XDP workers: {0}")]
    Workers(#[source] io::Error),
    /// Before the session ran (building the sender, the output directory).
    #[error(transparent)]
    Session(Box<DriverError>),
    /// The session ran (and may have failed); the report says what the AF_XDP layer saw.
    /// (Displayed as the error itself: its sources are the error's.)
    #[error("{error}")]
    Run {
        error: Box<DriverError>,
        report: Box<XdpReport>,
    },
}

impl From<SteerError> for XdpError {
    fn from(e: SteerError) -> Self {
        XdpError::Steer(Box::new(e))
    }
}

impl From<XskError> for XdpError {
    fn from(e: XskError) -> Self {
        XdpError::Xsk(Box::new(e))
    }
}

impl From<DriverError> for XdpError {
    fn from(e: DriverError) -> Self {
        XdpError::Session(Box::new(e))
    }
}
