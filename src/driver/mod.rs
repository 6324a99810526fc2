//! Event loops that run the [`crate::proto`] state machines over real datagram I/O. This is
//! the only place that reads the clock.
//!
//! The loop ([`drive`]) is generic over [`DatagramIo`]: a kernel UDP socket ([`udp`]) today,
//! an AF_XDP socket tomorrow. A backend only moves PacketFS datagrams (header + payload) in
//! and out and learns its peer from the first datagram the state machine accepts.
//!
//! A zero-copy backend (AF_XDP) can also skip [`drive`] and call the [`Endpoint`] methods
//! itself, with UMEM frames as the buffers: `handle_datagram(now, &frame[payload])` after
//! [`crate::wire::stack::parse`] (the receiver applies each piece from that slice straight into
//! the output file's memory map), and `poll_transmit(now, &mut frame[overhead..])` followed by
//! [`crate::wire::stack::emit_headers`] for the Ethernet/IPv4/UDP headers in front. The loop
//! below is the reference for the order of calls: timers, transmit (paced by the endpoint),
//! events, then receive until the endpoint's next deadline.

pub mod udp;
pub mod xdp;
pub mod xdp_workers;

use crate::proto::{Endpoint, Event};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Moves PacketFS datagrams. Implementations own their socket; no locks.
pub trait DatagramIo {
    /// Send one datagram to the peer (dropped silently if the peer is not known yet).
    fn send(&mut self, datagram: &[u8]) -> io::Result<()>;
    /// Receive one datagram into `buf`, waiting at most until `deadline` (`Some(past)` = do
    /// not wait, `None` = wait as long as the backend likes). `Ok(None)` if nothing came.
    fn recv(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<Option<usize>>;
    /// The datagram received last belonged to the session: from now on, send to its source.
    fn accept_peer(&mut self) {}
    /// Send several datagrams laid end to end in `buf`, `lens[i]` bytes each, in order. A
    /// backend may hand them to the kernel in one call (UDP GSO, an AF_XDP TX batch).
    fn send_batch(&mut self, buf: &[u8], lens: &[usize]) -> io::Result<()> {
        let mut at = 0;
        for &n in lens {
            self.send(&buf[at..at + n])?;
            at += n;
        }
        Ok(())
    }
}

/// Frames moved per batch before the loop looks at the other direction.
const BATCH: usize = 64;
/// The longest a loop sleeps before it looks at the cancel flag again.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// What ended a [`drive`] loop besides the session closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The endpoint closed (look at its outcome).
    Closed,
    /// Nothing arrived before `first_datagram_timeout`.
    NoPeer,
}

/// Loop settings.
#[derive(Debug, Clone, Default)]
pub struct DriveOptions {
    /// Give up if no datagram is accepted within this time (a receiver waiting for a sender).
    pub first_datagram_timeout: Option<Duration>,
}

/// Run `ep` over `io` until it closes. `cancel` asks the endpoint to abort (it still tells
/// the peer and closes cleanly); `on_event` sees every event as it happens.
pub fn drive<E: Endpoint + ?Sized, D: DatagramIo + ?Sized>(
    ep: &mut E,
    io: &mut D,
    opts: &DriveOptions,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> io::Result<Stop> {
    let mut rbuf = vec![0u8; 65_536];
    // Room for a batch of datagrams back to back, and always a whole maximal one more.
    let mut tbuf = vec![0u8; 4 * 65_536];
    let mut lens: Vec<usize> = Vec::with_capacity(BATCH);
    let start = Instant::now();
    let mut cancelled = false;
    let mut accepted_any = false;
    let mut busy = false;
    // Pacing waits are tens of microseconds: ask the kernel not to round this thread's
    // timers up by the default 50 us slack.
    let _ = nix::sys::prctl::set_timerslack(1_000);
    loop {
        let now = Instant::now();
        if !cancelled && cancel.load(Ordering::Relaxed) {
            cancelled = true;
            ep.cancel(now);
        }
        if ep.poll_timeout().is_some_and(|t| t <= now) {
            ep.handle_timeout(now);
        }
        let mut at = 0;
        lens.clear();
        while lens.len() < BATCH && tbuf.len() - at >= 65_536 {
            let Some(n) = ep.poll_transmit(now, &mut tbuf[at..at + 65_536]) else {
                break;
            };
            lens.push(n);
            at += n;
        }
        let sent = lens.len();
        if sent > 0 {
            io.send_batch(&tbuf[..at], &lens)?;
        }
        while let Some(e) = ep.poll_event() {
            on_event(&e);
        }
        if ep.is_closed() {
            return Ok(Stop::Closed);
        }
        if !accepted_any {
            if let Some(t) = opts.first_datagram_timeout {
                if now >= start + t {
                    return Ok(Stop::NoPeer);
                }
            }
        }
        // Sleep until the next timer (or pacing slot), waking early for any datagram; do not
        // sleep at all when the last round moved a full batch either way (more is ready).
        let mut deadline = if busy || sent == BATCH {
            Some(now)
        } else {
            ep.poll_timeout()
        };
        let cap = now + MAX_SLEEP;
        deadline = Some(deadline.map_or(cap, |d| d.min(cap)));
        let mut got = 0;
        while got < BATCH {
            let Some(n) = io.recv(&mut rbuf, deadline)? else {
                break;
            };
            got += 1;
            let t = Instant::now();
            if ep.handle_datagram(t, &rbuf[..n]) {
                io.accept_peer();
                accepted_any = true;
            }
            deadline = Some(t); // drain what is queued, without waiting
        }
        busy = got == BATCH;
    }
}
