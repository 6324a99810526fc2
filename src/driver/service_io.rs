//! The receiver service's I/O contract ([`ServiceIo`]): what `driver::service` needs of a
//! datagram source and sink that knows each datagram's peer, implemented by the kernel UDP
//! socket (`driver::udp`) and the AF_XDP paths (`driver::xdp`), and the AF_XDP counters such
//! an I/O reports for the metrics endpoint. Kept apart from the service loop so that the
//! I/O implementations do not import the service that uses them.

use super::DriverError;
use crate::proto::Endpoint;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Where [`ServiceIo::receive`] hands each datagram: its source address, what else the I/O
/// knows of it, and the datagram in place.
pub type Deliver<'a, F> = &'a mut dyn FnMut(SocketAddr, &F, &mut [u8]);

/// The service's I/O: a datagram source and sink that knows each datagram's peer. One
/// value serves every session; each session keeps its own [`ServiceIo::Route`].
pub trait ServiceIo {
    /// How one session's datagrams are addressed beyond its peer's socket address (UDP:
    /// nothing; AF_XDP: a receiver flow with MACs, addresses and its reply queue). A new
    /// session starts from a copy of [`ServiceIo::route_template`].
    type Route: Clone;
    /// What a received datagram carries beyond its source address (AF_XDP: its frame's
    /// addresses and the queue it came on).
    type From;
    /// A new session's addressing before its first datagram ([`ServiceIo::accepted`]
    /// fills it in).
    fn route_template(&self) -> Self::Route;
    /// The session of `route` accepted a datagram that came as `from` (answers follow it).
    fn accepted(route: &mut Self::Route, from: &Self::From);
    /// Up to `budget` datagrams from `ep` to `peer` (addressed by `route`). Returns how many
    /// went and whether the endpoint ran out of datagrams.
    fn transmit<E: Endpoint + ?Sized>(
        &mut self,
        route: &mut Self::Route,
        peer: SocketAddr,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> Result<(usize, bool), DriverError>;
    /// Up to `budget` received datagrams, each handed in place to `f` with its source,
    /// without waiting. Returns how many.
    fn receive(&mut self, budget: usize, f: Deliver<'_, Self::From>) -> Result<usize, DriverError>;
    /// Sleep up to `d`, waking early when datagrams arrive.
    fn wait(&mut self, d: Duration) -> Result<(), DriverError>;
    /// Push out what is still queued (the last Close or Abort frames) before the end.
    fn flush(&mut self) {}
    /// How late a frame may be before its hole is NACKed, when the I/O reorders (AF_XDP
    /// on several queues).
    fn reorder_window(&self) -> Option<Duration> {
        None
    }
    /// The AF_XDP layer's counters, per queue (None: not AF_XDP).
    fn xdp_stats(&self) -> Option<XdpLive> {
        None
    }
}

/// One AF_XDP socket's counters, for the metrics endpoint.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct XdpQueueLive {
    pub queue: u32,
    /// Frames this socket received and sent.
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// XDP_STATISTICS.
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub fill_ring_empty: u64,
    pub tx_ring_empty: u64,
}

/// The AF_XDP layer of a running service: the steering program's counters (interface-wide:
/// the program counts per CPU, not per queue) and each socket's counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct XdpLive {
    pub iface: String,
    pub steer: crate::steer::Counters,
    pub queues: Vec<XdpQueueLive>,
    /// Frames that reached a socket but were not Ethernet/IPv4/UDP with valid checksums.
    pub bad_frames: u64,
}
