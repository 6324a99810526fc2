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

/// How many source ports a sender's frames use (flows it needs answered): one per port of
/// the range in `ports` mode (queue `q` sends to `port + q % nports`), else one.
pub fn sender_flows(spread: Spread, nports: u16) -> usize {
    match spread {
        Spread::Ports => nports.max(1) as usize,
        _ => 1,
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
    /// A sender's own source ports, one per flow (its kernel UDP answer sockets' ports);
    /// empty: the destination port's (the steered range).
    src_ports: Vec<u16>,
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
            src_ports: Vec::new(),
        }
    }

    /// A sender's frames leave from `ports` (flow `k` from `ports[k % len]`): the ports of
    /// the sockets that take the receiver's answers on kernel UDP.
    pub fn set_src_ports(&mut self, ports: Vec<u16>) {
        self.src_ports = ports;
    }

    /// The peer as a socket address, once known.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.hdr
            .map(|h| SocketAddr::V4(SocketAddrV4::new(h.dst_ip, h.dst_port)))
    }

    /// The addresses of frames sent on `queue`: in `ports` mode the sender gives each
    /// queue's flow its own port (the receiver answers to the frame's source port); with
    /// source ports of its own ([`Flow::set_src_ports`]) flow `k` leaves from the k-th.
    fn addrs_on(&self, base: Addrs, queue: u32) -> Addrs {
        let mut a = base;
        if !self.is_sender {
            return a;
        }
        let k = match self.spread {
            Spread::Ports => (queue % self.nports as u32) as u16,
            _ => 0,
        };
        a.dst_port = self.port + k;
        a.src_port = match self.src_ports.len() {
            0 => self.port + k,
            n => self.src_ports[k as usize % n],
        };
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

    /// A sender with source ports of its own (its answer sockets') sends each flow from
    /// one of them, to the same destination ports as without: one source port per flow,
    /// every one used, so each flow's answers reach a socket of its own.
    #[test]
    fn a_senders_own_source_ports_carry_its_flows() {
        for spread in [Spread::Ports, Spread::Scatter, Spread::Queues] {
            let plain = Flow::sender(addrs(47000), spread, 3, 1500, 0);
            let mut own = plain.clone();
            let n = sender_flows(spread, 3);
            let ports: Vec<u16> = (0..n as u16).map(|k| 40000 + k).collect();
            own.set_src_ports(ports.clone());
            let mut used = Vec::new();
            for q in 0..16 {
                let (a, b) = (
                    plain.addrs_on(addrs(47000), q),
                    own.addrs_on(addrs(47000), q),
                );
                assert_eq!(a.dst_port, b.dst_port, "{spread:?} q{q}");
                assert_eq!(a.dst_port - 47000, b.src_port - 40000, "flow k from port k");
                used.push(b.src_port);
            }
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
