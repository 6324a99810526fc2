//! Pacing: one token bucket, driven by the `now` it is handed, and the rate controller that
//! sets its rate. A configured cap (`pfs send --rate`) and the receiver's advertised maximum
//! are ceilings of the same rate, so there is one mechanism, not two.

use std::time::{Duration, Instant};

const NS: i128 = 1_000_000_000;

/// A token bucket in bytes. Tokens are kept in byte-nanoseconds so that no fraction of a byte
/// is lost between refills at any rate.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: u64,
    burst: u64,
    tokens: i128,
    last: Option<Instant>,
}

impl Pacer {
    /// `rate` bytes per second, at most `burst` bytes sent back to back. Starts full.
    pub fn new(rate: u64, burst: u64) -> Self {
        Pacer {
            rate: rate.max(1),
            burst: burst.max(1),
            tokens: burst.max(1) as i128 * NS,
            last: None,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_nanos() as i128;
            self.tokens = (self.tokens + dt * self.rate as i128).min(self.burst as i128 * NS);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
    }

    /// Change the rate (tokens earned so far were earned at the old rate).
    pub fn set_rate(&mut self, now: Instant, rate: u64, burst: u64) {
        self.refill(now);
        self.rate = rate.max(1);
        self.burst = burst.max(1);
        self.tokens = self.tokens.min(self.burst as i128 * NS);
    }

    /// May a frame leave now? (The bucket may then go into debt by one frame.)
    pub fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 0
    }

    /// Account for `bytes` sent.
    pub fn consume(&mut self, bytes: usize) {
        self.tokens -= bytes as i128 * NS;
    }

    /// When the bucket is next out of debt (`None` if it is now, as of the last refill).
    pub fn next_ready(&self) -> Option<Instant> {
        self.next_ready_with(0)
    }

    /// When the bucket next holds at least `extra` bytes beyond being out of debt (clamped to
    /// the burst): a caller that sleeps until then wakes once per batch of frames instead of
    /// once per frame.
    pub fn next_ready_with(&self, extra: u64) -> Option<Instant> {
        let want = extra.min(self.burst.saturating_sub(1)) as i128 * NS;
        if self.tokens >= want {
            return None;
        }
        let ns = (want - self.tokens + self.rate as i128 - 1) / self.rate as i128;
        Some(self.last? + Duration::from_nanos(ns as u64))
    }
}

/// The sender's rate: starts at `initial`; while the sender is held back by pacing and the
/// receiver reports little loss it doubles per interval (slow start) until the first loss or
/// standing queue, then grows by 1/4 per interval (growth needs the frames actually sent in
/// the interval to come to at least 70% of the rate); a standing queue (RTT far above its
/// minimum, reported by the caller) holds it; loss above `loss_permille` drops it (see
/// [`RateControl::on_feedback`]). Always within `[floor, cap]`.
#[derive(Debug, Clone)]
pub struct RateControl {
    rate: u64,
    cap: u64,
    floor: u64,
    loss_permille: u64,
    last_change: Option<Instant>,
    /// Feedback at the start of the interval: (highest seq, frames received, when).
    base: Option<(u64, u64, Instant)>,
    /// Set when the sender had data but had to wait for tokens since the last change.
    pub limited: bool,
    slow_start: bool,
}

impl RateControl {
    pub fn new(initial: u64, cap: u64, floor: u64, loss_permille: u64) -> Self {
        let cap = cap.max(floor).max(1);
        RateControl {
            rate: initial.clamp(floor.max(1), cap),
            cap,
            floor: floor.max(1),
            loss_permille,
            last_change: None,
            base: None,
            limited: false,
            slow_start: true,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// True until the first loss report.
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    /// Lower the ceiling (e.g. to the receiver's advertised maximum).
    pub fn set_cap(&mut self, cap: u64) {
        self.cap = cap.max(self.floor);
        self.rate = self.rate.min(self.cap);
    }

    /// Feed the receiver's counters (highest sequence seen, frames received) and the link
    /// bytes of a full frame; returns the new rate if it changed. Decides at most once per
    /// `interval` and per 32 frames. On loss the rate drops by 30%, and to 90% of the rate
    /// the receiver actually got frames at over the interval (so a sender far above a
    /// bottleneck lands near it in a step or two), but by at most half. `queueing` (the RTT is
    /// far above its minimum) holds the rate.
    pub fn on_feedback(
        &mut self,
        now: Instant,
        interval: Duration,
        max_seq: u64,
        rx_frames: u64,
        frame_bytes: u64,
        queueing: bool,
    ) -> Option<u64> {
        let (s0, r0, t0) = *self.base.get_or_insert((max_seq, rx_frames, now));
        let sent = max_seq.saturating_sub(s0);
        if sent < 32 || now < t0 + interval || self.last_change.is_some_and(|t| now < t + interval)
        {
            return None;
        }
        let got = rx_frames.saturating_sub(r0).min(sent);
        let lost_pm = (sent - got) * 1000 / sent;
        let dt = now.saturating_duration_since(t0).as_nanos().max(1);
        let delivered = (got as u128 * frame_bytes as u128 * 1_000_000_000 / dt) as u64;
        self.base = Some((max_seq, rx_frames, now));
        self.last_change = Some(now);
        let old = self.rate;
        if lost_pm > self.loss_permille {
            // Down by 30%, and to 90% of what got through, but never by more than half in one
            // step: a delivery rate measured while the receiver was descheduled is not the
            // link's.
            self.rate = (self.rate / 10 * 7)
                .min(delivered.max(1) / 10 * 9)
                .max(self.rate / 2)
                .max(self.floor);
            self.slow_start = false;
        } else if queueing {
            // The RTT grew well past its minimum: a queue may be building. Hold the rate (a
            // busy host's scheduling also inflates the RTT, so this is no reason to drop it).
            self.slow_start = false;
        } else if self.limited
            && sent as u128 * frame_bytes as u128 * 1_000_000_000 / dt * 10 >= self.rate as u128 * 7
        {
            // Grow only when the sender really sent at (near) the rate: a sender held back by
            // its CPU or its socket must not talk its rate up past anything it can do.
            let step = if self.slow_start {
                self.rate
            } else {
                self.rate / 4
            };
            self.rate = self.rate.saturating_add(step.max(1)).min(self.cap);
        }
        self.limited = false;
        (self.rate != old).then_some(self.rate)
    }
}

/// Parse a rate: a number with an optional SI prefix (k, M, G, T; decimal) and a unit, either
/// bits per second (`bit`: `1gbit`, `500mbit`) or bytes per second (`B`: `10MB`, `1.5GB`); a
/// bare number is bytes per second. `bps` is refused as ambiguous (tc reads it as bytes,
/// most people as bits). Returns bytes per second.
pub fn parse_rate(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let unit = unit.trim();
    let (mult, rest) = match unit.chars().next() {
        Some('k' | 'K') => (1e3, &unit[1..]),
        Some('m' | 'M') => (1e6, &unit[1..]),
        Some('g' | 'G') => (1e9, &unit[1..]),
        Some('t' | 'T') => (1e12, &unit[1..]),
        _ => (1.0, unit),
    };
    let bytes_per_unit = match rest {
        "bit" | "bits" | "bit/s" => 1.0 / 8.0,
        "" | "B" | "B/s" => 1.0,
        _ => return None,
    };
    let r = v * mult * bytes_per_unit;
    (r.is_finite() && (1.0..1e18).contains(&r)).then_some(r as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("1gbit"), Some(125_000_000));
        assert_eq!(parse_rate("500mbit"), Some(62_500_000));
        assert_eq!(parse_rate("100Mbps"), None);
        assert_eq!(parse_rate("10MB"), Some(10_000_000));
        assert_eq!(parse_rate("1.5GB"), Some(1_500_000_000));
        assert_eq!(parse_rate("4096"), Some(4096));
        assert_eq!(parse_rate("fast"), None);
        assert_eq!(parse_rate("1 furlong"), None);
    }

    #[test]
    fn bucket_holds_the_rate() {
        let t0 = Instant::now();
        // 1 MB/s, burst 10 kB: over 1 s of virtual time about 1 MB + the burst leaves.
        let mut p = Pacer::new(1_000_000, 10_000);
        let mut now = t0;
        let mut sent = 0u64;
        while now < t0 + Duration::from_secs(1) {
            if p.ready(now) {
                p.consume(1000);
                sent += 1000;
            } else {
                now = p.next_ready().unwrap().max(now + Duration::from_nanos(1));
            }
        }
        assert!((1_000_000..=1_012_000).contains(&sent), "{sent}");
    }

    #[test]
    fn control_backs_off_on_loss_and_grows_when_limited() {
        let t = Instant::now();
        let ms = Duration::from_millis(1);
        let s = Duration::from_secs(1);
        // Slow start doubles while limited and loss-free.
        let mut c = RateControl::new(1000, 10_000, 100, 20);
        c.on_feedback(t, ms, 0, 0, 10, false);
        c.limited = true;
        assert_eq!(c.on_feedback(t + s, ms, 100, 100, 10, false), Some(2000));
        // Limited, but sending far below the rate (CPU-bound): no growth.
        c.limited = true;
        assert_eq!(c.on_feedback(t + 2 * s, ms, 200, 200, 1, false), None);
        let mut c = RateControl::new(1000, 10_000, 100, 20);
        c.on_feedback(t, ms, 0, 0, 1, false);
        // 50% loss, delivery 50 frames x 1 B in 1 s: decrease towards 90% of what got
        // through, by half at most.
        assert_eq!(c.on_feedback(t + s, ms, 100, 50, 1, false), Some(500));
        let mut c = RateControl::new(1000, 10_000, 100, 20);
        c.on_feedback(t, ms, 0, 0, 100, false);
        // 50% loss, but the delivery rate was high: a 30% step.
        assert_eq!(c.on_feedback(t + s, ms, 100, 50, 100, false), Some(700));
        // No loss, pacing-limited: increase by 1/4 after the first loss.
        c.limited = true;
        assert_eq!(
            c.on_feedback(t + 2 * s, ms, 200, 150, 100, false),
            Some(875)
        );
        // A standing queue holds the rate.
        c.limited = true;
        assert_eq!(c.on_feedback(t + 3 * s, ms, 300, 250, 100, true), None);
        // Not limited: unchanged.
        assert_eq!(c.on_feedback(t + 4 * s, ms, 400, 350, 100, false), None);
        for i in 0..40 {
            c.limited = true;
            let (n, m) = (500 + 100 * i as u64, 450 + 100 * i as u64);
            c.on_feedback(t + (5 + i) * s, ms, n, m, 100, false);
        }
        assert_eq!(c.rate(), 10_000);
    }
}
