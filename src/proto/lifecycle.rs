//! The session lifecycle both sides share: the queue of control frames waiting to go out,
//! how a session ends (a terminal frame repeated with backoff until the peer's Close, or a
//! drain that answers the peer's repeats with Close), and the outcome. Written once; the
//! [`super::Sender`] and the [`super::Receiver`] each hold one.

use super::{Event, Failure, Reason};
use crate::wire::payload::Payload;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A control frame waiting to be sent. Each side uses the ones it speaks: the sender Probe,
/// the receiver Accept and Status; both Terminal and Close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctrl {
    Accept,
    Status,
    Probe,
    /// The terminal frame ([`Lifecycle::terminal`]): Done or Abort.
    Terminal,
    Close,
}

/// Where the session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Handshake or data: the side's own state machine is in charge.
    Open,
    /// This side ended the session: repeating the terminal frame until the peer's Close, an
    /// Abort, or `until`.
    Closing {
        until: Instant,
    },
    /// The peer ended the session: answering its repeats with Close until `until`.
    Draining {
        until: Instant,
    },
    Closed,
}

/// How a closing side re-sends its terminal frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    /// The first resend after this long, each next one twice as late...
    pub pto: Duration,
    /// ...but never later than this.
    pub max: Duration,
}

impl Backoff {
    /// The wait before resend number `n` (0 = the first).
    pub fn after(&self, n: u32) -> Duration {
        (self.pto * 2u32.saturating_pow(n.min(16))).min(self.max)
    }
}

/// The shared lifecycle: control queue, terminal frame, resend backoff, outcome and events.
pub(crate) struct Lifecycle {
    pub phase: Phase,
    queue: VecDeque<Ctrl>,
    /// Done or Abort, once this side ended the session.
    pub terminal: Option<Payload<'static>>,
    terminal_sent: Option<Instant>,
    resend_at: Option<Instant>,
    resend_n: u32,
    pub events: VecDeque<Event>,
    pub outcome: Option<Result<(), Failure>>,
}

impl Lifecycle {
    pub fn new() -> Self {
        Lifecycle {
            phase: Phase::Open,
            queue: VecDeque::new(),
            terminal: None,
            terminal_sent: None,
            resend_at: None,
            resend_n: 0,
            events: VecDeque::new(),
            outcome: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Nothing more will be sent.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed && self.queue.is_empty()
    }

    /// Queue `c` unless it is queued already.
    pub fn want(&mut self, c: Ctrl) {
        if !self.queue.contains(&c) {
            self.queue.push_back(c);
        }
    }

    /// The next control frame to send. Taking Terminal marks it sent now.
    pub fn next_ctrl(&mut self, now: Instant) -> Option<Ctrl> {
        let c = self.queue.pop_front()?;
        if c == Ctrl::Terminal {
            self.terminal_sent = Some(now);
        }
        Some(c)
    }

    /// The session finished here: `Event::Finished`, outcome Ok.
    pub fn finished(&mut self) {
        self.events.push_back(Event::Finished);
        self.outcome = Some(Ok(()));
    }

    /// The session failed with `reason`, decided here (`by_peer` false) or by the peer.
    pub fn failed(&mut self, reason: Reason, by_peer: bool) {
        let f = Failure { reason, by_peer };
        self.events.push_back(Event::Aborted(f.clone()));
        self.outcome = Some(Err(f));
    }

    /// End the session here with `terminal` (Done or Abort): send it now, then again after
    /// `backoff` (doubling) until the peer's Close or `until`. With `peer_known` false there
    /// is nobody to tell: closed at once.
    pub fn terminate(
        &mut self,
        now: Instant,
        terminal: Payload<'static>,
        until: Instant,
        backoff: Backoff,
        peer_known: bool,
    ) {
        self.terminal = Some(terminal);
        self.queue.retain(|c| *c == Ctrl::Close);
        self.queue.push_back(Ctrl::Terminal);
        self.resend_n = 0;
        self.resend_at = Some(now + backoff.after(0));
        self.phase = Phase::Closing { until };
        if !peer_known {
            self.queue.clear();
            self.phase = Phase::Closed;
        }
    }

    /// Send what is queued (the terminal frame once) and stop: nobody is listening.
    pub fn close_now(&mut self) {
        self.phase = Phase::Closed;
    }

    /// The peer ended the session: answer with Close, and its repeats until `until`.
    pub fn drain(&mut self, until: Instant) {
        self.queue.clear();
        self.queue.push_back(Ctrl::Close);
        self.phase = Phase::Draining { until };
    }

    /// A frame from the peer while closing or draining (`terminal`: it is Done or Abort;
    /// `close`: it is Close). `extend`: how long a closing side waits after hearing the
    /// peer. Returns false if the session is open (the caller handles the frame).
    pub fn on_peer_frame(
        &mut self,
        now: Instant,
        close: bool,
        abort: bool,
        terminal: bool,
        ack_delay: Duration,
        extend: Option<Duration>,
    ) -> bool {
        match self.phase {
            Phase::Open => return false,
            Phase::Closing { .. } if close || abort => {
                self.queue.retain(|c| *c != Ctrl::Terminal);
                if abort {
                    self.queue.push_back(Ctrl::Close);
                }
                self.phase = Phase::Closed;
            }
            Phase::Closing { until } => {
                if let Some(e) = extend {
                    self.phase = Phase::Closing {
                        until: until.max(now + e),
                    };
                }
                // The peer has not heard the terminal frame yet: repeat it (not more often
                // than once per ACK delay).
                if self.terminal_sent.is_none_or(|t| now >= t + ack_delay) {
                    self.want(Ctrl::Terminal);
                }
            }
            Phase::Draining { .. } if terminal => self.want(Ctrl::Close),
            Phase::Draining { .. } | Phase::Closed => {}
        }
        true
    }

    /// Timers of a closing or draining session; `backoff` paces the terminal's resends.
    pub fn on_timeout(&mut self, now: Instant, backoff: Backoff) {
        match self.phase {
            Phase::Closing { until } => {
                if now >= until {
                    self.queue.clear();
                    self.phase = Phase::Closed;
                } else if self.resend_at.is_some_and(|t| now >= t) {
                    self.want(Ctrl::Terminal);
                    self.resend_n += 1;
                    self.resend_at = Some(now + backoff.after(self.resend_n));
                }
            }
            Phase::Draining { until } => {
                if now >= until {
                    self.phase = Phase::Closed;
                }
            }
            Phase::Open | Phase::Closed => {}
        }
    }

    /// When [`Self::on_timeout`] is due while closing or draining.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closing { until } => Some(self.resend_at.map_or(until, |r| r.min(until))),
            Phase::Draining { until } => Some(until),
            Phase::Open | Phase::Closed => None,
        }
    }
}

/// The [`super::Endpoint`] methods both sides answer alike, from their `life`
/// ([`Lifecycle`]) and `stats` fields: used inside each side's `impl Endpoint`.
macro_rules! endpoint_from_lifecycle {
    () => {
        fn poll_event(&mut self) -> Option<Event> {
            self.life.events.pop_front()
        }

        fn is_closed(&self) -> bool {
            self.life.is_closed()
        }

        fn stats(&self) -> &Stats {
            &self.stats
        }

        fn outcome(&self) -> Option<Result<(), Failure>> {
            self.life.outcome.clone()
        }
    };
}
pub(crate) use endpoint_from_lifecycle;

/// The earlier of two optional instants.
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::payload::Payload;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_closing_side_repeats_its_terminal_with_backoff_until_the_close() {
        let t = Instant::now();
        let b = Backoff {
            pto: 10 * MS,
            max: 35 * MS,
        };
        let mut l = Lifecycle::new();
        l.want(Ctrl::Status);
        l.terminate(t, Payload::Close, t + 1000 * MS, b, true);
        assert_eq!(l.next_ctrl(t), Some(Ctrl::Terminal), "status dropped");
        assert_eq!(l.next_ctrl(t), None);
        assert_eq!(l.poll_timeout(), Some(t + 10 * MS));
        l.on_timeout(t + 10 * MS, b);
        assert_eq!(l.next_ctrl(t + 10 * MS), Some(Ctrl::Terminal));
        assert_eq!(l.poll_timeout(), Some(t + 30 * MS), "doubled");
        l.on_timeout(t + 30 * MS, b);
        l.next_ctrl(t + 30 * MS);
        assert_eq!(l.poll_timeout(), Some(t + 65 * MS), "capped at max");
        // a data frame from a peer that has not heard: repeat, not more than once per delay
        assert!(l.on_peer_frame(t + 30 * MS, false, false, false, 2 * MS, None));
        assert_eq!(l.next_ctrl(t + 30 * MS), None);
        assert!(l.on_peer_frame(t + 33 * MS, false, false, false, 2 * MS, None));
        assert_eq!(l.next_ctrl(t + 33 * MS), Some(Ctrl::Terminal));
        assert!(l.on_peer_frame(t + 40 * MS, true, false, false, 2 * MS, None));
        assert!(l.is_closed());
    }

    #[test]
    fn a_draining_side_answers_repeats_with_close_then_closes() {
        let t = Instant::now();
        let b = Backoff { pto: MS, max: MS };
        let mut l = Lifecycle::new();
        assert!(!l.on_peer_frame(t, false, true, true, MS, None), "open");
        l.drain(t + 5 * MS);
        assert_eq!(l.next_ctrl(t), Some(Ctrl::Close));
        l.on_peer_frame(t, false, true, true, MS, None);
        l.on_peer_frame(t, false, true, true, MS, None);
        assert_eq!(l.next_ctrl(t), Some(Ctrl::Close));
        assert_eq!(l.next_ctrl(t), None);
        l.on_timeout(t + 5 * MS, b);
        assert!(l.is_closed());
    }

    #[test]
    fn an_abort_while_closing_is_answered_with_close() {
        let t = Instant::now();
        let b = Backoff { pto: MS, max: MS };
        let mut l = Lifecycle::new();
        l.terminate(t, Payload::Close, t + MS, b, true);
        l.next_ctrl(t);
        l.on_peer_frame(t, false, true, true, MS, None);
        assert_eq!(l.next_ctrl(t), Some(Ctrl::Close));
        assert!(l.is_closed());
        // nobody to tell: closed at once
        let mut l = Lifecycle::new();
        l.terminate(t, Payload::Close, t + MS, b, false);
        assert!(l.is_closed());
    }
}
