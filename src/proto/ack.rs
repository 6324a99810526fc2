//! The receiver's acknowledgement part: which stream bytes arrived, when to report (ACK
//! every `ack_every` frames or after the ACK delay), which holes to NACK (once the frontier
//! of an earlier report passed them, or a reorder window after it), and the reorder window
//! itself, which doubles when a NACKed hole is filled by a late original.

use super::rangeset::RangeSet;
use super::us32;
use crate::wire::payload::{Ack, Nack, Payload};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The largest reorder window the receiver grows to.
pub const MAX_REORDER_WINDOW: Duration = Duration::from_millis(200);

pub(crate) struct Acks {
    /// Stream bytes received.
    pub recv: RangeSet,
    /// The highest stream position first-pass data (or a probe) reached.
    pub frontier: u64,
    /// The frontier at the previous report.
    tick_frontier: u64,
    /// Frontiers of earlier reports with their times (only with a reorder window).
    frontier_marks: VecDeque<(Instant, u64)>,
    rx_frames: u64,
    max_seq: u64,
    last_seq: u64,
    last_rx: Option<Instant>,
    /// The sender's smoothed RTT, as it last told.
    pub srtt_hint: Duration,
    unacked: u32,
    ack_at: Option<Instant>,
    forced: bool,
    /// With a reorder window: when a probe's forced NACK goes out (frames that overtook
    /// each other have arrived by then).
    forced_at: Option<Instant>,
    /// The reorder window in use: starts at the configured one, doubles (up to
    /// [`MAX_REORDER_WINDOW`]) whenever an original frame fills a hole that was NACKed.
    pub reorder_window: Duration,
    /// The ranges of the last NACK (only with a reorder window).
    nacked: Vec<(u64, u64)>,
    last_nack: Option<Instant>,
}

impl Acks {
    pub fn new(srtt_hint: Duration, reorder_window: Duration) -> Self {
        Acks {
            recv: RangeSet::new(),
            frontier: 0,
            tick_frontier: 0,
            frontier_marks: VecDeque::new(),
            rx_frames: 0,
            max_seq: 0,
            last_seq: 0,
            last_rx: None,
            srtt_hint,
            unacked: 0,
            ack_at: None,
            forced: false,
            forced_at: None,
            reorder_window,
            nacked: Vec::new(),
            last_nack: None,
        }
    }

    /// Any frame of the session arrived.
    /// The highest sequence number seen so far.
    pub fn max_seq(&self) -> u64 {
        self.max_seq
    }

    pub fn on_frame(&mut self, now: Instant, seq: u64) {
        self.rx_frames += 1;
        self.max_seq = self.max_seq.max(seq);
        self.last_seq = seq;
        self.last_rx = Some(now);
    }

    /// A piece of an original (not repair) frame covers stream bytes `[s, e)` not held yet:
    /// if it fills a NACKed hole, the hole was late, not lost.
    pub fn late_original(&mut self, s: u64, e: u64) {
        if !self.nacked.is_empty() && self.nacked.iter().any(|&(a, b)| s < b && a < e) {
            self.nacked.clear();
            self.reorder_window = (self.reorder_window * 2).min(MAX_REORDER_WINDOW);
        }
    }

    /// A data frame was taken. Returns true when a report is due now.
    pub fn on_data(&mut self, now: Instant, ack_every: u32, ack_delay: Duration) -> bool {
        self.unacked += 1;
        if self.unacked >= ack_every {
            return true;
        }
        if self.ack_at.is_none() {
            self.ack_at = Some(now + ack_delay);
        }
        false
    }

    /// A probe: the sender reached `sent` (capped at `total`). Returns true when a report is
    /// due now (always: the sender hears we are alive; the NACK of everything missing goes
    /// with it, or a reorder window later).
    pub fn on_probe(&mut self, now: Instant, sent: u64, total: u64, srtt_us: u32) -> bool {
        self.srtt_hint = Duration::from_micros(srtt_us as u64);
        self.frontier = self.frontier.max(sent.min(total));
        if self.reorder_window.is_zero() {
            self.forced = true;
        } else if self.forced_at.is_none() {
            self.forced_at = Some(now + self.reorder_window);
        }
        true
    }

    /// Timers. Returns true when a report is due.
    pub fn on_timeout(&mut self, now: Instant) -> bool {
        let mut due = false;
        if self.ack_at.is_some_and(|t| now >= t) {
            self.ack_at = None;
            due = true;
        }
        if self.forced_at.is_some_and(|t| now >= t) {
            self.forced_at = None;
            self.forced = true;
            due = true;
        }
        due
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        super::lifecycle::earliest(self.ack_at, self.forced_at)
    }

    /// The report due now: an ACK, or a NACK of the holes old enough to be lost (at most
    /// `cap` ranges). `ack_delay` is the receiver's; `files_done` goes with it.
    pub fn report(
        &mut self,
        now: Instant,
        files_done: u32,
        ack_delay: Duration,
        cap: usize,
    ) -> Payload<'static> {
        let cum = self.recv.first_gap(0);
        let ack = Ack {
            cum,
            received: self.recv.covered(),
            frontier: self.frontier,
            rx_frames: self.rx_frames,
            max_seq: self.max_seq,
            echo_seq: self.last_seq,
            echo_delay_us: self
                .last_rx
                .map_or(0, |t| us32(now.saturating_duration_since(t))),
            files_done,
        };
        let limit = if self.forced {
            self.frontier
        } else if !self.reorder_window.is_zero() {
            // The newest report frontier at least a reorder window old.
            let w = self.reorder_window;
            while self.frontier_marks.len() >= 2
                && now.saturating_duration_since(self.frontier_marks[1].0) >= w
            {
                self.frontier_marks.pop_front();
            }
            let old = self
                .frontier_marks
                .front()
                .filter(|m| now.saturating_duration_since(m.0) >= w)
                .map_or(0, |m| m.1);
            old.min(self.frontier)
        } else {
            self.tick_frontier.min(self.frontier)
        };
        if !self.reorder_window.is_zero()
            && self
                .frontier_marks
                .back()
                .is_none_or(|m| m.1 != self.frontier)
        {
            self.frontier_marks.push_back((now, self.frontier));
        }
        let holdoff = self.srtt_hint + ack_delay * 2;
        let may_nack = self.forced || self.last_nack.is_none_or(|t| now >= t + holdoff);
        let ranges = if may_nack {
            self.recv.gaps(cum, limit, cap)
        } else {
            Vec::new()
        };
        self.tick_frontier = self.frontier;
        self.unacked = 0;
        self.ack_at = None;
        self.forced = false;
        if ranges.is_empty() {
            Payload::Ack(ack)
        } else {
            self.last_nack = Some(now);
            if !self.reorder_window.is_zero() {
                self.nacked.clone_from(&ranges);
            }
            Payload::Nack(Nack { ack, ranges })
        }
    }
}
