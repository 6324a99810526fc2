//! A session's flow addressing on AF_XDP: the header template (MACs, IPv4 addresses,
//! ports), the queue each frame goes out on, the IPv4 ident counter, and what the receiver
//! learns from the first accepted frame. The session owns one [`Flow`] and lends it to
//! whichever frame path runs (the session thread's sockets or the workers); both build
//! their frames through [`Flow::transmit`].

use crate::driver::options::Spread;
use crate::proto::{datagram_for_mtu, Endpoint};
use crate::wire::stack::{self, Addrs};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

/// Somewhere frames can be built and queued, one transmit queue per bound rx/tx queue
/// pair (the session thread's sockets, or the workers' hand-over queues).
pub trait TxQueues {
    /// How many queues.
    fn count(&self) -> usize;
    /// The NIC queue number of queue `i`.
    fn queue(&self, i: usize) -> u32;
    /// Build up to `max` frames for queue `i`: `build(frame)` writes one whole frame into
    /// a free buffer and returns its length, 0 when there is nothing more (that buffer is
    /// not sent), and the step left to finish it before it is sent, if any (only where
    /// [`TxQueues::finishes`]). Returns how many frames were queued.
    fn fill(&mut self, i: usize, max: usize, build: &mut Build<'_>) -> usize;
    /// Whether the threads that send finish frames themselves (the endpoint is then asked
    /// for [`Endpoint::poll_transmit_split`]).
    fn finishes(&self) -> bool {
        false
    }
}

/// What [`TxQueues::fill`] calls to build one frame.
pub type Build<'a> = dyn FnMut(&mut [u8]) -> (usize, Option<TxFinish>) + 'a;

/// A built frame's last step ([`crate::proto::Finish`], the sealing) for the thread that
/// sends it, on the datagram at `off..off + len` of the frame.
pub struct TxFinish {
    pub job: std::sync::Arc<dyn crate::proto::Finish>,
    pub off: u16,
    pub len: u16,
}

impl TxFinish {
    /// Run the step on `frame`; false: the frame must not be sent.
    pub fn run(&self, frame: &mut [u8]) -> bool {
        let (a, b) = (self.off as usize, self.off as usize + self.len as usize);
        frame.get_mut(a..b).is_some_and(|d| self.job.finish(d))
    }
}

/// The UDP ports a sender's frames leave from (and the receiver answers to), for a range
/// of `nports` from `port`: each port of the range in `ports` mode (see
/// [`Flow::transmit`]: queue `q` uses `port + q % nports`), else `port` alone.
pub fn sender_ports(spread: Spread, port: u16, nports: u16) -> Vec<u16> {
    match spread {
        Spread::Ports => (0..nports.max(1)).map(|k| port + k).collect(),
        _ => vec![port],
    }
}

/// The addressing state of one side of a session.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Header template for frames we send: src = us, dst = peer (None until learnt).
    hdr: Option<Addrs>,
    is_sender: bool,
    spread: Spread,
    port: u16,
    nports: u16,
    mtu: usize,
    /// Queue index answers go out on (the receiver's: the queue it last heard from).
    reply: usize,
    /// Round-robin cursor over queues for data (the sender's).
    next: usize,
    ident: u16,
    /// The last frame the endpoint accepted: its addresses and queue index.
    last: Option<(Addrs, usize)>,
    /// Where datagrams go while the peer is unknown.
    scratch: Vec<u8>,
}

impl Flow {
    /// A sender's flow: addresses known from the start.
    pub fn sender(hdr: Addrs, spread: Spread, nports: u16, mtu: usize, ident: u16) -> Self {
        Self::new(Some(hdr), true, spread, hdr.src_port, nports, mtu, ident)
    }

    /// A receiver's flow: addresses learnt from the first accepted frame.
    pub fn receiver(spread: Spread, port: u16, nports: u16, mtu: usize, ident: u16) -> Self {
        Self::new(None, false, spread, port, nports, mtu, ident)
    }

    fn new(
        hdr: Option<Addrs>,
        is_sender: bool,
        spread: Spread,
        port: u16,
        nports: u16,
        mtu: usize,
        ident: u16,
    ) -> Self {
        Flow {
            hdr,
            is_sender,
            spread,
            port,
            nports: nports.max(1),
            mtu,
            reply: 0,
            next: 0,
            ident,
            last: None,
            scratch: Vec::new(),
        }
    }

    /// The peer as a socket address, once known.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.hdr
            .map(|h| SocketAddr::V4(SocketAddrV4::new(h.dst_ip, h.dst_port)))
    }

    /// The addresses of frames sent on `queue`: in `ports` mode the sender gives each
    /// queue's flow its own port, both ends (the receiver answers to it).
    fn addrs_on(&self, base: Addrs, queue: u32) -> Addrs {
        let mut a = base;
        if self.is_sender && self.spread == Spread::Ports {
            let k = (queue % self.nports as u32) as u16;
            a.src_port = self.port + k;
            a.dst_port = self.port + k;
        }
        a
    }

    /// Up to `budget` datagrams from `ep` built into frames of `q`: the sender round-robin
    /// over the queues, the receiver on the queue it last heard from. Returns how many went
    /// and whether the endpoint ran out of datagrams.
    pub fn transmit<E: Endpoint + ?Sized, Q: TxQueues + ?Sized>(
        &mut self,
        q: &mut Q,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> (usize, bool) {
        let Some(base) = self.hdr else {
            return self.transmit_unaddressed(ep, now, budget);
        };
        let oh = stack::overhead(base.vlan);
        let dgram_max = datagram_for_mtu(self.mtu);
        let n = q.count();
        let mut sent = 0;
        let mut exhausted = false;
        let mut stalls = 0;
        let split = q.finishes();
        while sent < budget && !exhausted && stalls < n {
            let i = if self.is_sender {
                self.next
            } else {
                self.reply
            };
            let a = self.addrs_on(base, q.queue(i));
            let ident = &mut self.ident;
            let k = q.fill(i, budget - sent, &mut |buf| {
                let d = &mut buf[oh..oh + dgram_max];
                let got = if split {
                    ep.poll_transmit_split(now, d)
                } else {
                    ep.poll_transmit(now, d).map(|n| (n, None))
                };
                let Some((len, job)) = got else {
                    exhausted = true;
                    return (0, None);
                };
                *ident = ident.wrapping_add(1);
                let h = stack::emit_headers(&a, len, *ident, buf);
                let job = job.map(|job| TxFinish {
                    job,
                    off: h as u16,
                    len: len as u16,
                });
                (h + len, job)
            });
            sent += k;
            if k == 0 {
                stalls += 1;
            }
            if self.is_sender && n > 1 {
                self.next = (self.next + 1) % n;
            } else if k == 0 {
                break;
            }
        }
        (sent, exhausted)
    }

    /// While the peer is unknown, what the endpoint sends is dropped (like a UDP socket
    /// without a peer).
    fn transmit_unaddressed<E: Endpoint + ?Sized>(
        &mut self,
        ep: &mut E,
        now: Instant,
        budget: usize,
    ) -> (usize, bool) {
        self.scratch.resize(datagram_for_mtu(self.mtu), 0);
        let mut n = 0;
        while n < budget {
            if ep.poll_transmit(now, &mut self.scratch).is_none() {
                return (n, true);
            }
            n += 1;
        }
        (n, false)
    }

    /// The endpoint accepted a frame with `addrs` from queue index `i`.
    pub fn note_accepted(&mut self, addrs: Addrs, i: usize) {
        self.last = Some((addrs, i));
    }

    /// After a receive round in which the endpoint accepted frames: a receiver answers on
    /// the queue of the last one, to its sender (learnt from the first).
    pub fn accept_last(&mut self) {
        let Some((a, i)) = self.last.take() else {
            return;
        };
        if self.is_sender {
            return;
        }
        self.reply = i;
        if self.hdr.is_none() {
            self.hdr = Some(Addrs {
                src_mac: a.dst_mac,
                dst_mac: a.src_mac,
                vlan: a.vlan,
                src_ip: a.dst_ip,
                dst_ip: a.src_ip,
                src_port: a.dst_port,
                dst_port: a.src_port,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn addrs(port: u16) -> Addrs {
        Addrs {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlan: None,
            src_ip: Ipv4Addr::new(10, 0, 0, 1),
            dst_ip: Ipv4Addr::new(10, 0, 0, 2),
            src_port: port,
            dst_port: port,
        }
    }

    #[test]
    fn ports_mode_gives_each_queue_its_port_on_the_sender_only() {
        let f = Flow::sender(addrs(47000), Spread::Ports, 4, 1500, 0);
        assert_eq!(f.addrs_on(addrs(47000), 5).src_port, 47001);
        assert_eq!(f.addrs_on(addrs(47000), 5).dst_port, 47001);
        let f = Flow::sender(addrs(47000), Spread::Scatter, 4, 1500, 0);
        assert_eq!(f.addrs_on(addrs(47000), 5).dst_port, 47000);
    }

    /// The ports a sender takes answers on are exactly the source ports its frames use
    /// (the receiver answers to those), on every queue and in every spread.
    #[test]
    fn answer_ports_are_the_source_ports_of_the_senders_frames() {
        for spread in [Spread::Ports, Spread::Scatter, Spread::Queues] {
            let f = Flow::sender(addrs(47000), spread, 3, 1500, 0);
            let ports = sender_ports(spread, 47000, 3);
            let mut used: Vec<u16> = (0..16)
                .map(|q| f.addrs_on(addrs(47000), q).src_port)
                .collect();
            used.sort_unstable();
            used.dedup();
            assert_eq!(used, ports, "{spread:?}");
        }
    }

    #[test]
    fn a_receiver_learns_its_peer_and_reply_queue_from_the_last_accepted_frame() {
        let mut f = Flow::receiver(Spread::Scatter, 47000, 1, 1500, 0);
        assert_eq!(f.peer(), None);
        let mut a = addrs(47000);
        a.src_port = 40000;
        f.note_accepted(a, 1);
        f.accept_last();
        assert_eq!(f.reply, 1);
        assert_eq!(f.peer(), Some("10.0.0.1:40000".parse().unwrap()));
        let h = f.hdr.unwrap();
        assert_eq!((h.src_mac, h.dst_mac), (a.dst_mac, a.src_mac));
        assert_eq!((h.src_port, h.dst_port), (47000, 40000));
    }
}
