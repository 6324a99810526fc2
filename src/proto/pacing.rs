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

/// The sender's rate, set from what the receiver actually got (after BBR's bandwidth
/// probing, much simplified).
///
/// * **Slow start**: from `initial`, the rate doubles per interval while the sender really
///   sends at it (pacing is what holds it back) and the receiver reports no more loss than
///   `loss_permille` and no standing queue. The first loss or queue ends slow start and sets
///   the rate to the delivery rate measured so far.
/// * **After slow start** the rate is the *delivery rate* (the highest rate at which the
///   receiver got frames over the last eight intervals) times a gain that cycles through
///   1.25 (probe for more), 0.75 (drain the queue the probe built) and six times 1. Random
///   loss does not shrink this rate (a link that loses 10% of frames at random still
///   delivers 90% of what is sent, and the probes find that), a bottleneck caps it, and a
///   slow receiver (frames it has not read are not delivered) holds it down.
/// * Intervals in which the sender did not send at (70% of) its rate are *application
///   limited*: their delivery rate counts only if it is higher than the estimate.
/// * Loss above 50% in an interval halves the rate whatever the estimate says.
///
/// Always within `[floor, cap]`.
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
    /// Delivery rates of the last intervals (bytes/s), newest last.
    samples: std::collections::VecDeque<u64>,
    phase: usize,
}

/// Gains of the probing cycle, in eighths.
const GAIN_CYCLE: [u64; 8] = [10, 6, 8, 8, 8, 8, 8, 8];
/// Intervals the delivery-rate estimate remembers.
const SAMPLES: usize = 8;

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
            samples: std::collections::VecDeque::with_capacity(SAMPLES),
            phase: 0,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// True until the first loss report or standing queue.
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    /// The delivery-rate estimate (bytes/s), if there is one.
    pub fn delivery_rate(&self) -> Option<u64> {
        self.samples.iter().copied().max()
    }

    /// Lower the ceiling (e.g. to the receiver's advertised maximum).
    pub fn set_cap(&mut self, cap: u64) {
        self.cap = cap.max(self.floor);
        self.rate = self.rate.min(self.cap);
    }

    /// Feed the receiver's counters (highest sequence seen, frames received), the link bytes
    /// of a full frame and whether the RTT shows a standing queue; returns the new rate if it
    /// changed. Decides at most once per `interval` and per 32 frames.
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
        let sent_rate = (sent as u128 * frame_bytes as u128 * 1_000_000_000 / dt) as u64;
        let app_limited = !self.limited || sent_rate < self.rate / 10 * 7;
        self.base = Some((max_seq, rx_frames, now));
        self.last_change = Some(now);
        self.limited = false;
        let estimate = self.delivery_rate();
        if !app_limited || estimate.is_none_or(|e| delivered > e) {
            if self.samples.len() == SAMPLES {
                self.samples.pop_front();
            }
            self.samples.push_back(delivered);
        }
        let btl = self.delivery_rate().unwrap_or(self.rate).max(1);
        let old = self.rate;
        if self.slow_start {
            if lost_pm > self.loss_permille || queueing {
                self.slow_start = false;
                self.rate = btl;
            } else if !app_limited {
                self.rate = self.rate.saturating_mul(2);
            }
        } else {
            self.rate = (btl as u128 * GAIN_CYCLE[self.phase] as u128 / 8) as u64;
            self.phase = (self.phase + 1) % GAIN_CYCLE.len();
        }
        if lost_pm > 500 {
            self.rate = self.rate.min(old / 2);
        }
        self.rate = self.rate.clamp(self.floor, self.cap);
        (self.rate != old).then_some(self.rate)
    }
}

/// Sent frames remembered for RTT samples (by sequence number modulo this).
const SENT_RING: usize = 1024;

/// The sender's pacing part: the RTT estimate, the token bucket and its rate controller,
/// the send times of recent frames, and the window of frames in flight beyond what the
/// receiver reported.
pub(crate) struct Pacing {
    pub rtt: super::Rtt,
    pub pacer: Pacer,
    pub rc: RateControl,
    sent_ring: Vec<(u64, Option<Instant>)>,
    /// Frames before this sequence number do not count against the window (the handshake).
    pub window_base: u64,
    /// The receiver's last report.
    pub peer: crate::wire::payload::Ack,
    last_status_seq: Option<u64>,
}

/// The bucket's depth: `burst_frames` full frames, or `burst_time` at `rate`, the larger.
fn burst_bytes(cfg: &super::SenderConfig, rate: u64) -> u64 {
    let frame = (cfg.max_datagram + cfg.frame_overhead) as u64;
    let by_time = (rate as u128 * cfg.burst_time.as_nanos() / 1_000_000_000) as u64;
    (cfg.burst_frames.max(1) * frame).max(by_time)
}

impl Pacing {
    pub fn new(cfg: &super::SenderConfig) -> Self {
        let cap = cfg.rate.unwrap_or(u64::MAX / 2);
        let initial = cfg.rate.unwrap_or(cfg.initial_rate);
        let rc = RateControl::new(initial, cap, cfg.min_rate, cfg.loss_permille);
        Pacing {
            rtt: super::Rtt::new(cfg.timing.initial_rtt),
            pacer: Pacer::new(rc.rate(), burst_bytes(cfg, rc.rate())),
            rc,
            sent_ring: vec![(u64::MAX, None); SENT_RING],
            window_base: 0,
            peer: Default::default(),
            last_status_seq: None,
        }
    }

    /// Frame `seq` of `cost` link bytes left at `now`.
    pub fn sent(&mut self, now: Instant, seq: u64, cost: usize) {
        self.sent_ring[(seq % SENT_RING as u64) as usize] = (seq, Some(now));
        self.pacer.consume(cost);
    }

    /// Lower the ceiling to the receiver's maximum.
    pub fn set_cap(&mut self, now: Instant, cfg: &super::SenderConfig, cap: u64) {
        self.rc.set_cap(cap);
        let r = self.rc.rate();
        self.pacer.set_rate(now, r, burst_bytes(cfg, r));
    }

    /// Frames allowed in flight beyond the highest sequence number the receiver reported:
    /// `window_frames`, and during slow start (before the first loss) 32 plus one per frame
    /// the receiver got, so the first round trips cannot blast a whole window into a link
    /// whose speed is not known yet. `seq` is the next sequence number.
    pub fn window_open(&self, seq: u64, cfg: &super::SenderConfig) -> bool {
        let acked = self.peer.max_seq.max(self.window_base);
        let mut limit = cfg.window_frames;
        if self.rc.in_slow_start() && cfg.rate.is_none() {
            limit = limit.min(32 + self.peer.rx_frames);
        }
        seq.saturating_sub(acked + 1) < limit
    }

    /// A report (ACK or NACK) in frame `seq`. Returns `None` for a reordered, older one;
    /// else whether the receiver progressed since the last.
    pub fn on_status(
        &mut self,
        now: Instant,
        seq: u64,
        ack: crate::wire::payload::Ack,
        cfg: &super::SenderConfig,
    ) -> Option<bool> {
        if self.last_status_seq.is_some_and(|l| seq <= l) {
            return None; // reordered: an older view of the receiver
        }
        self.last_status_seq = Some(seq);
        let (s, t) = self.sent_ring[(ack.echo_seq % SENT_RING as u64) as usize];
        if let (true, Some(t)) = (s == ack.echo_seq, t) {
            let rtt = now.saturating_duration_since(t);
            let delay = Duration::from_micros(ack.echo_delay_us as u64);
            if rtt > delay {
                self.rtt.sample(rtt - delay);
            }
        }
        let progressed = ack.received > self.peer.received || ack.files_done > self.peer.files_done;
        self.peer = ack;
        // Rates measured over less than a few milliseconds are bursts, not rates.
        let frame = (cfg.max_datagram + cfg.frame_overhead) as u64;
        let interval = self.rtt.srtt.max(Duration::from_millis(5));
        // A standing queue: the smoothed RTT well above the smallest one seen (5 ms of slack
        // so that a scheduler hiccup on a busy host is not read as congestion).
        let queueing =
            self.rtt.sampled && self.rtt.srtt > self.rtt.min * 2 + Duration::from_millis(5);
        if let Some(r) =
            self.rc
                .on_feedback(now, interval, ack.max_seq, ack.rx_frames, frame, queueing)
        {
            self.pacer.set_rate(now, r, burst_bytes(cfg, r));
            tracing::debug!(rate = r, srtt = ?self.rtt.srtt, "pacing rate");
        }
        Some(progressed)
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
    fn control_follows_the_delivery_rate() {
        let t = Instant::now();
        let ms = Duration::from_millis(1);
        let s = Duration::from_secs(1);
        // Slow start doubles while limited and loss-free.
        let mut c = RateControl::new(1000, 100_000, 100, 20);
        c.on_feedback(t, ms, 0, 0, 10, false);
        c.limited = true;
        assert_eq!(c.on_feedback(t + s, ms, 100, 100, 10, false), Some(2000));
        // Limited, but sending far below the rate (CPU-bound): no growth.
        c.limited = true;
        assert_eq!(c.on_feedback(t + 2 * s, ms, 200, 200, 1, false), None);
        assert!(c.in_slow_start());
        // 50% loss ends slow start at the delivery rate (100 frames of 10 B in 1 s).
        c.limited = true;
        assert_eq!(
            c.on_feedback(t + 3 * s, ms, 400, 300, 10, false),
            Some(1000)
        );
        assert!(!c.in_slow_start());
        // 400 frames delivered: the estimate is 4000 B/s; the cycle starts with a 1.25 probe.
        c.limited = true;
        assert_eq!(
            c.on_feedback(t + 4 * s, ms, 800, 700, 10, false),
            Some(5000)
        );
        // An application-limited interval with a lower delivery rate does not lower the
        // estimate; the cycle drains (0.75), then cruises (1).
        c.limited = true;
        assert_eq!(
            c.on_feedback(t + 5 * s, ms, 1000, 900, 10, false),
            Some(3000)
        );
        c.limited = true;
        assert_eq!(
            c.on_feedback(t + 6 * s, ms, 1200, 1100, 10, false),
            Some(4000)
        );
    }

    #[test]
    fn random_loss_does_not_collapse_the_rate() {
        // A link that loses 10% at random and has no bottleneck below the cap: the probes keep
        // raising the estimate until the cap.
        let t = Instant::now();
        let ms = Duration::from_millis(1);
        let mut c = RateControl::new(100_000, 10_000_000, 1000, 20);
        let (mut seq, mut rx) = (0u64, 0u64);
        c.on_feedback(t, ms, 0, 0, 100, false);
        for i in 1..400u64 {
            // One interval of 10 ms at the current rate, 10% lost.
            let frames = (c.rate() / 100 / 100).max(40);
            seq += frames;
            rx += frames * 9 / 10;
            c.limited = true;
            c.on_feedback(t + ms * 10 * i as u32, ms, seq, rx, 100, false);
        }
        assert!(c.rate() >= 7_000_000, "{}", c.rate());
        // A bottleneck: whatever is sent, 2000 frames of 100 B per second get through.
        let mut c = RateControl::new(100_000, 10_000_000, 1000, 20);
        let (mut seq, mut rx) = (0u64, 0u64);
        c.on_feedback(t, ms, 0, 0, 100, false);
        for i in 1..400u64 {
            let frames = (c.rate() / 100 / 100).max(40);
            seq += frames;
            rx += frames.min(20);
            c.limited = true;
            c.on_feedback(t + ms * 10 * i as u32, ms, seq, rx, 100, false);
        }
        assert!((150_000..=260_000).contains(&c.rate()), "{}", c.rate());
    }
}
