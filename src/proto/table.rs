//! The receiver's session table (`pfs recv` as a service): many sessions at once, each its
//! own endpoint, demultiplexed by the session id in the PacketFS header. No I/O, no clock:
//! the service driver ([`crate::driver::service`]) owns the socket and passes time in.
//!
//! * [`classify`] reads a datagram's header (checked view, nothing decrypted): its session
//!   id and whether it may open a session (a HandshakeInit, or a Hello with `--insecure`).
//! * [`Table::route`] decides: an existing session, a new one (admission: the table is
//!   accepting and below its maximum), or a drop counted by [`Refusal`].
//! * Each slot keeps its peer's address (learnt from the datagram that opened it, updated by
//!   later datagrams the session accepted) so the driver addresses each outgoing datagram.
//! * [`Table::rotation`] gives the sessions in round-robin order for transmission (each
//!   round starts one further), [`Table::next_deadline`] the earliest of their timers.

use crate::wire::pfs::{FrameType, Packet};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

/// What a datagram's header says before any session sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub session: u64,
    /// A frame that may open a session: HandshakeInit (keyed) or Hello (`--insecure`).
    pub opens: bool,
}

/// The session id and opening kind of `datagram`; `None` when it is not a PacketFS frame.
pub fn classify(datagram: &[u8], insecure: bool) -> Option<Header> {
    let p = Packet::new_checked(datagram).ok()?;
    let opens = match FrameType::from_u8(p.frame_type()) {
        Some(FrameType::HandshakeInit) => !insecure,
        Some(FrameType::Hello) => insecure && p.flags() & crate::wire::pfs::FLAG_SEALED == 0,
        _ => false,
    };
    Some(Header {
        session: p.session(),
        opens,
    })
}

/// Why a datagram found no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a PacketFS frame.
    Malformed,
    /// A frame of no session in the table that cannot open one.
    UnknownSession,
    /// An opening frame while the table holds its maximum of sessions.
    OverMaxSessions,
    /// An opening frame after the service stopped accepting (shutting down).
    Closing,
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The session at this slot index.
    Session(usize),
    /// Admitted: the driver builds a session and offers it the datagram
    /// ([`Table::insert`] if the session accepted it).
    New,
    Refused(Refusal),
}

/// Drops and refusals of the table, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableStats {
    pub malformed: u64,
    pub unknown_session: u64,
    pub over_max_sessions: u64,
    pub closing: u64,
    /// Sessions inserted since the start.
    pub sessions_total: u64,
}

/// One session of the table.
pub struct Slot<S> {
    pub session: u64,
    pub peer: SocketAddr,
    pub state: S,
}

/// The sessions, their admission and their order (see the module docs).
pub struct Table<S> {
    slots: Vec<Slot<S>>,
    index: HashMap<u64, usize>,
    max: usize,
    accepting: bool,
    cursor: usize,
    stats: TableStats,
}

impl<S> Table<S> {
    /// A table admitting at most `max` sessions at once (at least one).
    pub fn new(max: usize) -> Self {
        Table {
            slots: Vec::new(),
            index: HashMap::new(),
            max: max.max(1),
            accepting: true,
            cursor: 0,
            stats: TableStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    pub fn max(&self) -> usize {
        self.max
    }
    /// A reload may change the maximum; sessions above a lowered one keep running.
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(1);
    }
    pub fn stats(&self) -> TableStats {
        self.stats
    }
    pub fn is_accepting(&self) -> bool {
        self.accepting
    }
    /// Stop admitting sessions (shutdown); running ones continue.
    pub fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    /// Where the datagram whose header is `h` goes (counts refusals).
    pub fn route(&mut self, h: Option<Header>) -> Route {
        let Some(h) = h else {
            self.stats.malformed += 1;
            return Route::Refused(Refusal::Malformed);
        };
        if let Some(&i) = self.index.get(&h.session) {
            return Route::Session(i);
        }
        let refusal = if !h.opens {
            self.stats.unknown_session += 1;
            Refusal::UnknownSession
        } else if !self.accepting {
            self.stats.closing += 1;
            Refusal::Closing
        } else if self.slots.len() >= self.max {
            self.stats.over_max_sessions += 1;
            Refusal::OverMaxSessions
        } else {
            return Route::New;
        };
        Route::Refused(refusal)
    }

    /// Add a session (after it accepted its opening datagram). Returns its slot index.
    pub fn insert(&mut self, session: u64, peer: SocketAddr, state: S) -> usize {
        if let Some(&i) = self.index.get(&session) {
            self.slots[i].state = state;
            self.slots[i].peer = peer;
            return i;
        }
        self.slots.push(Slot {
            session,
            peer,
            state,
        });
        let i = self.slots.len() - 1;
        self.index.insert(session, i);
        self.stats.sessions_total += 1;
        i
    }

    pub fn slot(&self, i: usize) -> &Slot<S> {
        &self.slots[i]
    }
    pub fn slot_mut(&mut self, i: usize) -> &mut Slot<S> {
        &mut self.slots[i]
    }
    pub fn slots_mut(&mut self) -> impl Iterator<Item = &mut Slot<S>> {
        self.slots.iter_mut()
    }
    pub fn slots(&self) -> impl Iterator<Item = &Slot<S>> {
        self.slots.iter()
    }

    /// Remove the session at `i` (the last slot moves into its place).
    pub fn remove(&mut self, i: usize) -> Slot<S> {
        let s = self.slots.swap_remove(i);
        self.index.remove(&s.session);
        if i < self.slots.len() {
            self.index.insert(self.slots[i].session, i);
        }
        s
    }

    /// Remove every session `done` says is over, in slot order; returns them.
    pub fn remove_where(&mut self, mut done: impl FnMut(&Slot<S>) -> bool) -> Vec<Slot<S>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.slots.len() {
            if done(&self.slots[i]) {
                out.push(self.remove(i));
            } else {
                i += 1;
            }
        }
        out
    }

    /// Slot indices in this round's transmit order: each call starts one slot further, so
    /// no session always goes first.
    pub fn rotation(&mut self) -> impl Iterator<Item = usize> {
        let n = self.slots.len();
        let start = if n == 0 { 0 } else { self.cursor % n };
        self.cursor = self.cursor.wrapping_add(1);
        (0..n).map(move |k| (start + k) % n)
    }

    /// The earliest deadline among the sessions.
    pub fn next_deadline(&self, f: impl Fn(&S) -> Option<Instant>) -> Option<Instant> {
        self.slots.iter().filter_map(|s| f(&s.state)).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::payload::{Frame, Payload};
    use crate::wire::pfs::{self, FrameType};
    use std::time::Duration;

    fn frame(t: FrameType, session: u64) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        let hdr = pfs::Repr {
            frame_type: t,
            flags: 0,
            session,
            seq: 0,
            payload_len: 0,
        };
        let n = Frame::emit(hdr, &Payload::Close, &mut buf);
        buf.truncate(n);
        buf
    }

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn classify_reads_session_and_opening_kind() {
        let f = frame(FrameType::Close, 7);
        let h = classify(&f, false).unwrap();
        assert_eq!(h.session, 7);
        assert!(!h.opens);
        assert_eq!(classify(&[1, 2, 3], false), None);
        assert_eq!(classify(&[], true), None);
    }

    #[test]
    fn admission_counts_every_refusal() {
        let mut t: Table<u32> = Table::new(2);
        let open = |s| {
            Some(Header {
                session: s,
                opens: true,
            })
        };
        assert_eq!(t.route(open(1)), Route::New);
        t.insert(1, addr(1), 10);
        assert_eq!(t.route(open(2)), Route::New);
        t.insert(2, addr(2), 20);
        assert_eq!(t.route(open(3)), Route::Refused(Refusal::OverMaxSessions));
        assert_eq!(t.route(open(2)), Route::Session(1));
        assert_eq!(
            t.route(Some(Header {
                session: 9,
                opens: false
            })),
            Route::Refused(Refusal::UnknownSession)
        );
        assert_eq!(t.route(None), Route::Refused(Refusal::Malformed));
        let gone = t.remove(0);
        assert_eq!((gone.session, gone.state), (1, 10));
        // Slot 1 moved to 0 and is still found by its id.
        assert_eq!(t.route(open(2)), Route::Session(0));
        assert_eq!(t.slot(0).peer, addr(2));
        assert_eq!(t.route(open(3)), Route::New);
        t.stop_accepting();
        assert_eq!(t.route(open(4)), Route::Refused(Refusal::Closing));
        let s = t.stats();
        assert_eq!(
            (
                s.over_max_sessions,
                s.unknown_session,
                s.malformed,
                s.closing
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(s.sessions_total, 2);
    }

    #[test]
    fn rotation_starts_one_further_each_round() {
        let mut t: Table<()> = Table::new(8);
        for s in 0..3 {
            t.insert(s, addr(s as u16), ());
        }
        let a: Vec<usize> = t.rotation().collect();
        let b: Vec<usize> = t.rotation().collect();
        assert_eq!(a, vec![0, 1, 2]);
        assert_eq!(b, vec![1, 2, 0]);
        let mut t2: Table<()> = Table::new(1);
        assert_eq!(t2.rotation().count(), 0);
    }

    #[test]
    fn remove_where_and_deadlines() {
        let mut t: Table<Option<Instant>> = Table::new(8);
        let now = Instant::now();
        for s in 0..5u64 {
            t.insert(s, addr(1), Some(now + Duration::from_secs(s + 1)));
        }
        assert_eq!(t.next_deadline(|d| *d), Some(now + Duration::from_secs(1)));
        let gone = t.remove_where(|s| s.session % 2 == 0);
        let mut ids: Vec<u64> = gone.iter().map(|s| s.session).collect();
        ids.sort();
        assert_eq!(ids, vec![0, 2, 4]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.next_deadline(|d| *d), Some(now + Duration::from_secs(2)));
        for s in [1u64, 3] {
            let Route::Session(i) = t.route(Some(Header {
                session: s,
                opens: false,
            })) else {
                panic!("session {s} lost");
            };
            assert_eq!(t.slot(i).session, s);
        }
    }
}
