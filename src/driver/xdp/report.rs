//! What the AF_XDP layer saw during a run, printed with the summaries and logged in the
//! metrics JSON.

use crate::driver::options::{Spread, Threads};
use crate::steer::Counters;
use crate::xsk::XskStats;
use serde::Serialize;

/// What one worker did (in the summary and the metrics JSON, per queue).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WorkerStats {
    /// The core the worker was pinned to (None: pinning failed or was not asked for).
    pub cpu: Option<usize>,
    /// Times the worker went to sleep in ppoll (idle).
    pub sleeps: u64,
    /// Times the session thread woke it through its eventfd.
    pub kicks: u64,
    /// Rounds in which the tx ring had no room for every queued frame.
    pub tx_ring_full: u64,
    /// Frames this worker sealed before sending them (keyed sessions).
    pub sealed: u64,
    /// Received frames this worker opened (tag verified) before handing them over, and
    /// frames whose tag failed there (handed over to be counted).
    pub opened: u64,
    pub open_failed: u64,
}

/// XDP_STATISTICS of one socket.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueueStats {
    pub queue: u32,
    /// Frames this socket received and sent.
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub xdp: XskStats,
    /// The worker that owned this queue's socket (None when the session thread did).
    pub worker: Option<WorkerStats>,
}

/// What the sockets of a run did: per queue, frames that were not ours, and (workers)
/// frames the merge could not put back in order.
#[derive(Debug, Clone, Default)]
pub struct PathStats {
    pub queues: Vec<QueueStats>,
    pub bad_frames: u64,
    pub reordered: u64,
}

/// What the AF_XDP layer saw during a run (printed with the summaries).
#[derive(Debug, Clone, Serialize)]
pub struct XdpReport {
    pub iface: String,
    pub xdp_mode: String,
    pub spread: Spread,
    pub threads: Threads,
    pub queues: Vec<QueueStats>,
    /// Received frames that reached the session thread after a higher sequence number
    /// (before it put each gathered round in order; workers only).
    pub reordered: u64,
    /// The steering program's counters on this side's interface (zero without one).
    pub steer: Counters,
    /// A sender taking its answers on kernel UDP (no program): datagrams received there,
    /// and the ports (its frames' source ports).
    pub kernel_answers: Option<u64>,
    pub kernel_answer_ports: Vec<u16>,
    /// Frames that reached a socket but were not Ethernet/IPv4/UDP with valid checksums.
    pub bad_frames: u64,
    /// Why native XDP was refused, if it was.
    pub notice: Option<String>,
}

impl XdpReport {
    /// Sum of XDP_STATISTICS over the queues.
    pub fn xdp_totals(&self) -> XskStats {
        let mut t = XskStats::default();
        for q in &self.queues {
            t.rx_dropped += q.xdp.rx_dropped;
            t.rx_invalid_descs += q.xdp.rx_invalid_descs;
            t.tx_invalid_descs += q.xdp.tx_invalid_descs;
            t.rx_ring_full += q.xdp.rx_ring_full;
            t.fill_ring_empty += q.xdp.fill_ring_empty;
            t.tx_ring_empty += q.xdp.tx_ring_empty;
        }
        t
    }
}
