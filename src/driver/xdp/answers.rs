//! The AF_XDP sender's answers over kernel UDP ([`KernelAnswers`]).
//!
//! A sender transmits its frames on AF_XDP but receives only a few: the receiver's Accept,
//! Acks, Nacks and Close. Taking those on ordinary UDP sockets (on ports the kernel picks,
//! from which the sender's frames then leave: senders on one host never share a port)
//! leaves the sending interface without an XDP program: no load, no attach
//! and no detach, each of which waits in the kernel (the attach rewrites the XDP
//! dispatcher and waits a full RCU grace period, 8-15 ms on the project's VMs; the
//! detach again; docs/XDP.md "Start-up"). The AF_XDP sockets still transmit: a socket
//! needs no program to send.
//!
//! The receiver answers from its AF_XDP sockets to the address and port the sender's
//! frames came from, with a valid IPv4 checksum and a UDP checksum of 0 (allowed for
//! IPv4), so the sending host's stack delivers them to these sockets.

use crate::proto::Endpoint;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// A datagram read off the answer sockets by the [`Reader`] thread: its source and bytes.
pub type Answer = (std::net::IpAddr, Vec<u8>);

/// Enough for any UDP datagram (answers are far smaller; nothing is ever truncated).
const DATAGRAM_MAX: usize = 65536;

/// Non-blocking UDP sockets on the sender's source ports, read by the session thread (or
/// by a [`Reader`] thread when workers drive the AF_XDP sockets).
pub struct KernelAnswers {
    socks: Vec<UdpSocket>,
    buf: Box<[u8]>,
    received: u64,
    busy_poll: bool,
}

impl std::fmt::Debug for KernelAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelAnswers")
            .field("socks", &self.socks)
            .field("received", &self.received)
            .finish()
    }
}

impl KernelAnswers {
    /// Bind `n` non-blocking UDP sockets to `ip` on ports the kernel picks (free ones: no
    /// other process, another `pfs send` included, holds them); [`KernelAnswers::ports`]
    /// says which.
    pub fn bind_any(ip: Ipv4Addr, n: usize) -> io::Result<Self> {
        Self::bind(ip, &vec![0; n.max(1)]).map_err(|(_, e)| e)
    }

    /// Bind one non-blocking UDP socket to `ip`:`port` for each of `ports` (0: a port the
    /// kernel picks). Fails (the caller names the port) when one is taken on this host.
    pub fn bind(ip: Ipv4Addr, ports: &[u16]) -> Result<Self, (u16, io::Error)> {
        let socks = ports
            .iter()
            .map(|&p| {
                let s = UdpSocket::bind(SocketAddrV4::new(ip, p)).map_err(|e| (p, e))?;
                s.set_nonblocking(true).map_err(|e| (p, e))?;
                Ok(s)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KernelAnswers {
            socks,
            buf: vec![0u8; DATAGRAM_MAX].into_boxed_slice(),
            received: 0,
            busy_poll: false,
        })
    }

    /// The bound ports.
    pub fn ports(&self) -> Vec<u16> {
        self.socks
            .iter()
            .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
            .collect()
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Wait by polling instead of sleeping (see [`KernelAnswers::wait`]).
    pub fn set_busy_poll(&mut self) {
        self.busy_poll = true;
    }

    /// Hand up to `budget` waiting datagrams to `ep`; returns how many were read and
    /// whether the endpoint accepted any.
    pub fn receive<E: Endpoint + ?Sized>(&mut self, ep: &mut E, budget: usize) -> (usize, bool) {
        let t = Instant::now();
        let mut accepted = false;
        let got = self.each(budget, |src, d| {
            ep.note_source(src);
            accepted |= ep.handle_datagram(t, d);
        });
        (got, accepted)
    }

    /// Read every datagram waiting now into `out` (the [`Reader`] thread's round).
    fn drain(&mut self, out: &crossbeam::queue::SegQueue<Answer>) -> usize {
        self.each(usize::MAX, |src, d| out.push((src, d.to_vec())))
    }

    /// Up to `budget` waiting datagrams, each to `f` with its source; returns how many.
    fn each(&mut self, budget: usize, mut f: impl FnMut(std::net::IpAddr, &mut [u8])) -> usize {
        let mut got = 0;
        for s in &self.socks {
            while got < budget {
                match s.recv_from(&mut self.buf) {
                    Ok((n, from)) => {
                        got += 1;
                        f(from.ip(), &mut self.buf[..n]);
                    }
                    // Nothing waiting (WouldBlock), or an error queued on the socket: an
                    // unconnected UDP socket reports none of the ICMP kind, so whatever it
                    // is ends this round; the session's timers keep it going.
                    Err(e) => {
                        if e.kind() != io::ErrorKind::WouldBlock {
                            tracing::debug!("kernel UDP answer socket: {e}");
                        }
                        break;
                    }
                }
            }
        }
        self.received += got as u64;
        got
    }

    /// Until a datagram waits on one of the sockets or `timeout` passes; true when one
    /// waits. Busy-poll mode polls without sleeping.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ready = |ms: PollTimeout| -> io::Result<bool> {
            let mut fds: Vec<PollFd<'_>> = self
                .socks
                .iter()
                .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, ms) {
                Ok(n) => Ok(n > 0),
                Err(nix::errno::Errno::EINTR) => Ok(false),
                Err(e) => Err(e.into()),
            }
        };
        if !self.busy_poll {
            // poll's millisecond timeout, rounded up: never a spin of zero-length waits.
            let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            return ready(PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX));
        }
        let until = Instant::now() + timeout;
        loop {
            if ready(PollTimeout::ZERO)? {
                return Ok(true);
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            std::hint::spin_loop();
        }
    }
}

/// The answers of a sender whose sockets the AF_XDP workers drive: a thread of its own
/// sleeps on the answer sockets (and an eventfd that stops it), queues each datagram and
/// unparks the session thread, which the workers also wake by unparking it.
pub struct Reader {
    queue: std::sync::Arc<crossbeam::queue::SegQueue<Answer>>,
    stop: std::sync::Arc<nix::sys::eventfd::EventFd>,
}

impl Reader {
    /// Start the thread in scope `sc`; it hands `answers` back when it ends
    /// ([`Reader::stop`], then join it).
    pub fn spawn<'scope, 'env>(
        sc: &'scope std::thread::Scope<'scope, 'env>,
        mut answers: KernelAnswers,
        session: std::thread::Thread,
    ) -> io::Result<(Reader, std::thread::ScopedJoinHandle<'scope, KernelAnswers>)> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let stop = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(io::Error::from)?;
        let r = Reader {
            queue: Default::default(),
            stop: std::sync::Arc::new(stop),
        };
        let (queue, stop) = (r.queue.clone(), r.stop.clone());
        let h = std::thread::Builder::new()
            .name("pfs-answers".into())
            .spawn_scoped(sc, move || {
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                loop {
                    if answers.drain(&queue) > 0 {
                        session.unpark();
                    }
                    let mut fds: Vec<PollFd<'_>> = answers
                        .socks
                        .iter()
                        .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
                        .collect();
                    fds.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
                    match poll(&mut fds, PollTimeout::NONE) {
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => {
                            tracing::warn!("kernel UDP answers: poll failed: {e}");
                            break;
                        }
                    }
                    let stopped = fds
                        .last()
                        .and_then(|f| f.revents())
                        .is_some_and(|r| r.contains(PollFlags::POLLIN));
                    if stopped {
                        break;
                    }
                }
                answers
            })?;
        Ok((r, h))
    }

    /// The datagrams read so far and not yet taken.
    pub fn queue(&self) -> &crossbeam::queue::SegQueue<Answer> {
        &self.queue
    }

    /// Tell the thread to end (it returns its answers; join it).
    pub fn stop(&self) {
        let _ = self.stop.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Endpoint, Event, Failure, Stats};
    use std::net::IpAddr;

    /// An endpoint that keeps what it is handed and accepts datagrams starting with `b'A'`.
    #[derive(Default)]
    struct Keep {
        got: Vec<Vec<u8>>,
        from: Vec<Ipv4Addr>,
        stats: Stats,
    }
    impl Endpoint for Keep {
        fn handle_datagram(&mut self, _now: Instant, d: &mut [u8]) -> bool {
            self.got.push(d.to_vec());
            d.first() == Some(&b'A')
        }
        fn note_source(&mut self, src: IpAddr) {
            if let IpAddr::V4(a) = src {
                self.from.push(a);
            }
        }
        fn handle_timeout(&mut self, _now: Instant) {}
        fn poll_transmit(&mut self, _now: Instant, _buf: &mut [u8]) -> Option<usize> {
            None
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn poll_event(&mut self) -> Option<Event> {
            None
        }
        fn is_closed(&self) -> bool {
            false
        }
        fn stats(&self) -> &Stats {
            &self.stats
        }
        fn outcome(&self) -> Option<Result<(), Failure>> {
            None
        }
        fn cancel(&mut self, _now: Instant) {}
    }

    /// Datagrams sent to the bound ports reach the endpoint whole, with their source; the
    /// budget bounds a round; a quiet socket's wait times out; a taken port is named.
    #[test]
    fn datagrams_on_the_bound_ports_reach_the_endpoint() {
        let lo = Ipv4Addr::LOCALHOST;
        // Two free ports: bind ephemeral sockets, note their ports, free them.
        let ports: Vec<u16> = (0..2)
            .map(|_| {
                UdpSocket::bind((lo, 0))
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            })
            .collect();
        let mut a = match KernelAnswers::bind(lo, &ports) {
            Ok(a) => a,
            // Another process took a port between the probe and the bind: nothing to test.
            Err((p, e)) => return eprintln!("skipped: port {p}: {e}"),
        };
        assert_eq!(a.ports(), ports);
        let mut ep = Keep::default();
        assert!(
            !a.wait(Duration::from_millis(1)).unwrap(),
            "nothing sent yet"
        );
        assert_eq!(a.receive(&mut ep, 8), (0, false));

        let tx = UdpSocket::bind((lo, 0)).unwrap();
        let big = vec![b'B'; 9000];
        tx.send_to(b"A-first", (lo, ports[0])).unwrap();
        tx.send_to(&big, (lo, ports[1])).unwrap();
        tx.send_to(b"n", (lo, ports[1])).unwrap();
        assert!(a.wait(Duration::from_secs(5)).unwrap());
        // Loopback delivers at once; a budget of 2 leaves the third for the next round.
        let mut seen = 0;
        let mut accepted = false;
        for _ in 0..1000 {
            let (n, acc) = a.receive(&mut ep, 2);
            assert!(n <= 2, "a round took {n} datagrams past its budget of 2");
            seen += n;
            accepted |= acc;
            if seen == 3 {
                break;
            }
            a.wait(Duration::from_millis(10)).unwrap();
        }
        assert_eq!(seen, 3);
        assert!(accepted);
        assert_eq!(a.received(), 3);
        assert_eq!(ep.got[0], b"A-first");
        assert_eq!(ep.got[1], big, "a 9000 B datagram arrives whole");
        assert_eq!(ep.got[2], b"n");
        assert_eq!(ep.from, vec![lo; 3]);

        // The reader thread: a datagram is queued and the waiting thread unparked; stop
        // ends it and gives the sockets back (their count with them).
        let me = std::thread::current();
        let back = std::thread::scope(|sc| {
            let (r, h) = Reader::spawn(sc, a, me).unwrap();
            tx.send_to(b"A-again", (lo, ports[1])).unwrap();
            let until = Instant::now() + Duration::from_secs(5);
            while r.queue().is_empty() && Instant::now() < until {
                std::thread::park_timeout(Duration::from_millis(100));
            }
            let (src, d) = r.queue().pop().expect("the datagram was queued");
            assert_eq!((src, d.as_slice()), (IpAddr::V4(lo), &b"A-again"[..]));
            r.stop();
            h.join().unwrap()
        });
        assert_eq!(back.received(), 4);
        // Still bound: the port stays taken.
        let e = KernelAnswers::bind(lo, &ports[..1]).unwrap_err();
        assert_eq!(e.0, ports[0]);
        assert_eq!(e.1.kind(), io::ErrorKind::AddrInUse);
        drop(back);

        // Ports the kernel picks: as many as asked, distinct, and distinct from another
        // sender's on the same address.
        let (x, y) = (
            KernelAnswers::bind_any(lo, 3).unwrap(),
            KernelAnswers::bind_any(lo, 1).unwrap(),
        );
        let mut all = x.ports();
        all.extend(y.ports());
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|&p| p != 0));
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4, "a port given twice");
    }
}
