//! The protocol state machines over a simulated link in virtual time (after quinn-proto's
//! tests): seeded drop, reorder, duplicate and corrupt, a bottleneck with a finite queue,
//! thousands of cases. Every case ends bit-exact or in a clean abort on both sides. No
//! assertion depends on wall-clock time.

use packetfs::blueprint::{block, Blueprint, Segment, Source, Transform};
use packetfs::fsink::MmapSink;
use packetfs::proto::{
    Endpoint, Event, Failure, FileSink, HashThread, MemSink, PackPolicy, Reason, Receiver,
    ReceiverConfig, SendFile, Sender, SenderConfig, Timing,
};
use packetfs::secure::{Guard, GuardConfig, SecStats, Security};
use packetfs::wire::payload::{FileEntry, FileMode, Frame, Hello, Payload};
use packetfs::wire::pfs;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// A sender for blueprints, through the prepare step (packing per `cfg.pack`).
fn new_sender(
    cfg: SenderConfig,
    id: [u8; 32],
    files: Vec<SendFile>,
    snap: &[u8],
) -> Result<Sender, packetfs::proto::SendError> {
    let out = packetfs::prepare::prepare(files, Vec::new(), id, snap, cfg.pack, &cfg.pack_opts)?;
    Sender::new(cfg, id, out)
}

/// One direction of the simulated link.
struct Link {
    drop: f64,
    dup: f64,
    corrupt: f64,
    reorder: f64,
    delay: Duration,
    jitter: Duration,
    /// Bottleneck bytes per second and the longest queue (in time) before tail drop.
    bandwidth: Option<u64>,
    queue: Duration,
    busy_until: Option<Instant>,
    /// Everything sent after this instant is lost (a cut cable or a dead peer).
    blackhole_after: Option<Instant>,
    q: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    n: u64,
    sent: u64,
}

impl Link {
    fn clean(delay: Duration) -> Link {
        Link {
            drop: 0.0,
            dup: 0.0,
            corrupt: 0.0,
            reorder: 0.0,
            delay,
            jitter: Duration::ZERO,
            bandwidth: None,
            queue: Duration::ZERO,
            busy_until: None,
            blackhole_after: None,
            q: BinaryHeap::new(),
            n: 0,
            sent: 0,
        }
    }

    fn random(rng: &mut Rng) -> Link {
        let mut l = Link::clean(Duration::from_micros(50 + rng.below(20_000)));
        l.drop = [0.0, 0.01, 0.05, 0.1, 0.2, 0.3][rng.below(6) as usize];
        l.dup = [0.0, 0.02, 0.1][rng.below(3) as usize];
        l.corrupt = [0.0, 0.01, 0.05][rng.below(3) as usize];
        l.reorder = [0.0, 0.1, 0.3][rng.below(3) as usize];
        l.jitter = Duration::from_micros(rng.below(30_000));
        if rng.chance(0.3) {
            l.bandwidth = Some(200_000 + rng.below(50_000_000));
            l.queue = Duration::from_micros(500 + rng.below(20_000));
        }
        l
    }

    fn send(&mut self, now: Instant, bytes: &[u8], rng: &mut Rng) {
        self.sent += 1;
        if self.blackhole_after.is_some_and(|t| now >= t) {
            return;
        }
        let mut depart = now;
        if let Some(bw) = self.bandwidth {
            let start = self.busy_until.map_or(now, |b| b.max(now));
            if start > now + self.queue {
                return; // tail drop at a full bottleneck queue
            }
            depart = start + Duration::from_nanos(bytes.len() as u64 * 1_000_000_000 / bw);
            self.busy_until = Some(depart);
        }
        if rng.chance(self.drop) {
            return;
        }
        let copies = if rng.chance(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let mut b = bytes.to_vec();
            if rng.chance(self.corrupt) {
                let i = rng.below(b.len() as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
            let mut at = depart + self.delay;
            if rng.chance(self.reorder) {
                at += Duration::from_nanos(rng.below(self.jitter.as_nanos() as u64 + 1));
            }
            self.n += 1;
            self.q.push(Reverse((at, self.n, b)));
        }
    }

    fn next(&self) -> Option<Instant> {
        self.q.peek().map(|Reverse((t, _, _))| *t)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.next()? <= now {
            self.q.pop().map(|Reverse((_, _, b))| b)
        } else {
            None
        }
    }
}

#[derive(Debug, Default)]
struct Ends {
    sender: Option<Result<(), Failure>>,
    receiver: Option<Result<(), Failure>>,
    sender_events: Vec<Event>,
    receiver_events: Vec<Event>,
    virtual_time: Duration,
    /// When the sender heard Done (virtual time since the start).
    finished_at: Option<Duration>,
    frames: u64,
    /// The secure channel's counters on each side.
    sec_sender: SecStats,
    sec_receiver: SecStats,
}

/// How the simulated pair is protected: keys (every case unless it says otherwise), or
/// `--insecure`.
#[derive(Clone)]
enum Sec {
    Keys {
        extra: String,
        guard: GuardConfig,
    },
    Insecure,
    /// Sender's and receiver's protection as given.
    Custom(Security, Security, GuardConfig),
}

impl Sec {
    fn keys() -> Sec {
        Sec::Keys {
            extra: String::new(),
            guard: GuardConfig::default(),
        }
    }
    fn pair(&self) -> (Security, Security, GuardConfig) {
        match self {
            Sec::Keys { extra, guard } => {
                let k = keys::TestKeys::fixed();
                (
                    k.sender_security(),
                    k.receiver_security_with(extra),
                    guard.clone(),
                )
            }
            Sec::Insecure => (
                Security::Insecure,
                Security::Insecure,
                GuardConfig::default(),
            ),
            Sec::Custom(a, b, g) => (a.clone(), b.clone(), g.clone()),
        }
    }
}

/// Something done to an endpoint once the receiver has taken in this many datagrams.
#[derive(Debug, Clone, Copy)]
enum Act {
    None,
    /// The receiver stops dead (a killed process): it neither reads nor sends again.
    KillReceiver(u64),
    CancelSender(u64),
    CancelReceiver(u64),
}

/// Run both endpoints over the two link directions until both are closed (or nothing can
/// happen any more).
fn run_pair<S: FileSink>(
    rng: &mut Rng,
    sender: &mut Sender,
    receiver: &mut Receiver<'_, S>,
    s2r: &mut Link,
    r2s: &mut Link,
    act: Act,
) -> Ends {
    run_pair_fed(rng, sender, receiver, s2r, r2s, act, &mut |_, _| None)
}

/// [`run_pair`] with a producer: `feed(elapsed, sender)` runs before the sender transmits
/// and returns when it wants to run next (virtual time since the start), `None` when done.
fn run_pair_fed<S: FileSink>(
    rng: &mut Rng,
    sender: &mut Sender,
    receiver: &mut Receiver<'_, S>,
    s2r: &mut Link,
    r2s: &mut Link,
    act: Act,
    feed: &mut dyn FnMut(Duration, &mut Sender) -> Option<Duration>,
) -> Ends {
    run_pair_sec(rng, sender, receiver, s2r, r2s, act, feed, &Sec::keys())
}

/// [`run_pair_fed`] with the protection chosen: both endpoints run inside a
/// [`Guard`] (the handshake, then every frame sealed and opened in place).
#[allow(clippy::too_many_arguments)]
fn run_pair_sec<S: FileSink>(
    rng: &mut Rng,
    sender: &mut Sender,
    receiver: &mut Receiver<'_, S>,
    s2r: &mut Link,
    r2s: &mut Link,
    mut act: Act,
    feed: &mut dyn FnMut(Duration, &mut Sender) -> Option<Duration>,
    sec: &Sec,
) -> Ends {
    let (ssec, rsec, gcfg) = sec.pair();
    let session = sender.session_id();
    let mut sender = Guard::new(sender, ssec, Some(session), gcfg.clone());
    let mut receiver = Guard::new(receiver, rsec, None, gcfg);
    let t0 = Instant::now();
    let mut feed_at = Some(Duration::ZERO);
    let mut now = t0;
    let mut buf = vec![0u8; 65536];
    let mut ends = Ends::default();
    let mut steps = 0u64;
    let mut receiver_alive = true;
    loop {
        steps += 1;
        assert!(steps < 5_000_000, "livelock: {steps} steps");
        assert!(
            now - t0 < Duration::from_secs(3600),
            "virtual time ran away"
        );
        let mut busy = false;
        if feed_at.is_some_and(|t| now - t0 >= t) {
            feed_at = feed(now - t0, sender.inner_mut());
        }
        while let Some(n) = sender.poll_transmit(now, &mut buf) {
            s2r.send(now, &buf[..n], rng);
            busy = true;
        }
        if receiver_alive {
            while let Some(n) = receiver.poll_transmit(now, &mut buf) {
                r2s.send(now, &buf[..n], rng);
                busy = true;
            }
        }
        while let Some(d) = s2r.pop_due(now) {
            busy = true;
            if !receiver_alive {
                continue;
            }
            let mut d = d;
            receiver.handle_datagram(now, &mut d);
            ends.frames += 1;
            match act {
                Act::KillReceiver(k) if ends.frames >= k => receiver_alive = false,
                Act::CancelSender(k) if ends.frames >= k => sender.cancel(now),
                Act::CancelReceiver(k) if ends.frames >= k => receiver.cancel(now),
                _ => continue,
            }
            act = Act::None;
        }
        while let Some(mut d) = r2s.pop_due(now) {
            sender.handle_datagram(now, &mut d);
            busy = true;
        }
        while let Some(e) = sender.poll_event() {
            if e == Event::Finished {
                ends.finished_at = Some(now - t0);
            }
            ends.sender_events.push(e);
        }
        while let Some(e) = receiver.poll_event() {
            ends.receiver_events.push(e);
        }
        if busy {
            continue;
        }
        let receiver_done = !receiver_alive || receiver.is_closed();
        if sender.is_closed() && receiver_done && s2r.q.is_empty() && r2s.q.is_empty() {
            break;
        }
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        consider(sender.poll_timeout());
        if receiver_alive {
            consider(receiver.poll_timeout());
        }
        consider(s2r.next());
        consider(r2s.next());
        consider(feed_at.map(|d| t0 + d));
        let Some(next) = next else {
            break; // nothing can happen any more
        };
        now = now.max(next);
        if sender.poll_timeout().is_some_and(|t| t <= now) {
            sender.handle_timeout(now);
        }
        if receiver_alive && receiver.poll_timeout().is_some_and(|t| t <= now) {
            receiver.handle_timeout(now);
        }
    }
    ends.sender = sender.outcome();
    ends.receiver = if receiver_alive {
        receiver.outcome()
    } else {
        None
    };
    ends.sec_sender = sender.sec_stats();
    ends.sec_receiver = receiver.sec_stats();
    ends.virtual_time = now - t0;
    ends
}

fn fast_timing() -> Timing {
    Timing {
        initial_rtt: Duration::from_millis(50),
        min_pto: Duration::from_millis(5),
        max_pto: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(10),
        ack_delay: Duration::from_millis(2),
    }
}

struct Case {
    snap: Vec<u8>,
    contents: Vec<Vec<u8>>,
    files: Vec<SendFile>,
    scfg: SenderConfig,
    rcfg: ReceiverConfig,
}

fn random_case(rng: &mut Rng) -> Case {
    let snap = rng.bytes(64 * 1024);
    let nfiles = rng.below(5) as usize;
    let mut contents = Vec::new();
    let mut files = Vec::new();
    let text = rng.chance(0.5);
    for i in 0..nfiles {
        let len = match rng.below(4) {
            0 => rng.below(3) as usize,
            1 => rng.below(2000) as usize,
            _ => rng.below(60_000) as usize,
        };
        let (c, bp) = make_file_with(rng, &snap, len, text);
        contents.push(c);
        files.push(SendFile {
            name: format!("dir{}/file-{i}.bin", i % 2),
            blueprint: bp,
        });
    }
    let dgram = [700usize, 1200, 1472, 4000, 8972][rng.below(5) as usize];
    let scfg = SenderConfig {
        session_id: rng.next(),
        max_datagram: dgram,
        rate: if rng.chance(0.3) {
            Some(1_000_000 + rng.below(100_000_000))
        } else {
            None
        },
        initial_rate: 1_000_000 + rng.below(200_000_000),
        window_frames: [64, 1024, 8192][rng.below(3) as usize],
        timing: fast_timing(),
        pack: [PackPolicy::Auto, PackPolicy::Always, PackPolicy::Never][rng.below(3) as usize],
        pack_opts: random_pack_opts(rng),
        ..SenderConfig::default()
    };
    let rcfg = ReceiverConfig {
        max_datagram: dgram,
        ack_every: [1, 8, 16, 64][rng.below(4) as usize],
        timing: fast_timing(),
        ..ReceiverConfig::default()
    };
    Case {
        snap,
        contents,
        files,
        scfg,
        rcfg,
    }
}

/// Block cuts from one segment per block to the defaults, so streams hold many blocks.
fn random_pack_opts(rng: &mut Rng) -> block::EncodeOptions {
    block::EncodeOptions {
        spill_per_block: [1, 64, 700, 4096, 256 << 10][rng.below(5) as usize],
        segs_per_block: [1, 3, 50, 16_384][rng.below(4) as usize],
        file_per_block: [1, 2000, 30_000, 4 << 20][rng.below(4) as usize],
        preset: packetfs::blueprint::Level::Fast,
        level: 1,
        threads: 1 + rng.below(2) as usize,
    }
}

fn check_committed_exact(sink: &MemSink, contents: &[Vec<u8>]) {
    for (i, c) in contents.iter().enumerate() {
        if let Some(got) = sink.committed(i) {
            assert!(got == &c[..], "file {i} committed with wrong bytes");
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    cases: u64,
    finished: u64,
    timeouts: u64,
    files: u64,
    bytes: u64,
    frames: u64,
    repair_frames: u64,
    duplicates: u64,
    malformed: u64,
    packed_files: u64,
    direct_files: u64,
}

fn one_case(seed: u64, tally: &mut Tally) {
    let mut rng = Rng(seed);
    let mut case = random_case(&mut rng);
    // Each file's BLAKE3 inline or on the session's hashing thread (by the seed: the random
    // stream, and so every case, stays as it was).
    case.rcfg.hash_thread = [HashThread::Off, HashThread::Always][(seed % 2) as usize];
    let mut s2r = Link::random(&mut rng);
    let mut r2s = Link::random(&mut rng);
    let impaired = s2r.drop + s2r.corrupt > 0.25 || r2s.drop + r2s.corrupt > 0.25;
    let mut sender =
        new_sender(case.scfg.clone(), SNAP_ID, case.files.clone(), &case.snap).unwrap();
    for (m, _) in sender.modes() {
        match m {
            FileMode::Packed | FileMode::Streamed => tally.packed_files += 1,
            FileMode::Direct => tally.direct_files += 1,
        }
    }
    let mut receiver = Receiver::new(case.rcfg.clone(), SNAP_ID, &case.snap, MemSink::new());
    let ends = run_pair(
        &mut rng,
        &mut sender,
        &mut receiver,
        &mut s2r,
        &mut r2s,
        Act::None,
    );
    let ctx = format!(
        "seed {seed}: files {:?} s2r drop {} dup {} corrupt {} reorder {} bw {:?}; r2s drop {} corrupt {}; ends {:?}/{:?} after {:?}",
        case.contents.iter().map(|c| c.len()).collect::<Vec<_>>(),
        s2r.drop, s2r.dup, s2r.corrupt, s2r.reorder, s2r.bandwidth, r2s.drop, r2s.corrupt,
        ends.sender, ends.receiver, ends.virtual_time
    );
    // Both sides always reach an end.
    assert!(sender.is_closed(), "sender not closed: {ctx}");
    assert!(receiver.is_closed(), "receiver not closed: {ctx}");
    let (so, ro) = (ends.sender.clone(), ends.receiver.clone());
    assert!(so.is_some() && ro.is_some(), "an outcome is missing: {ctx}");
    tally.cases += 1;
    tally.finished += (ro == Some(Ok(())) && so == Some(Ok(()))) as u64;
    tally.timeouts +=
        matches!(&so, Some(Err(f)) if matches!(f.reason, Reason::Timeout { .. })) as u64;
    tally.files += case.contents.len() as u64;
    tally.bytes += case.contents.iter().map(|c| c.len() as u64).sum::<u64>();
    tally.frames += sender.stats().frames_sent + receiver.stats().frames_sent;
    tally.repair_frames += sender.stats().repair_frames;
    tally.duplicates += receiver.stats().duplicate_frames;
    tally.malformed += receiver.stats().malformed + sender.stats().malformed;
    let sink = receiver.into_sink();
    check_committed_exact(&sink, &case.contents);
    if ro == Some(Ok(())) {
        assert_eq!(sink.committed_count(), case.contents.len(), "{ctx}");
    }
    if so == Some(Ok(())) {
        assert_eq!(
            ro,
            Some(Ok(())),
            "sender finished without the receiver: {ctx}"
        );
    }
    if !impaired {
        assert_eq!(so, Some(Ok(())), "{ctx}");
        assert_eq!(ro, Some(Ok(())), "{ctx}");
    } else if let Some(Err(f)) = &so {
        // With heavy loss a session may still end early, but only by a timeout.
        assert!(matches!(f.reason, Reason::Timeout { .. }), "{ctx}");
    }
}

#[test]
fn impaired_links_end_bit_exact_or_clean() {
    let n: u64 = std::env::var("PFS_SIM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let base: u64 = std::env::var("PFS_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut tally = Tally::default();
    for i in 0..n {
        one_case(base.wrapping_mul(1_000_003).wrapping_add(i), &mut tally);
    }
    eprintln!("{tally:?}");
    assert!(
        tally.packed_files > n / 4 && tally.direct_files > n / 4,
        "both modes must be exercised: {tally:?}"
    );
    assert_eq!(tally.cases, n);
    assert!(tally.finished > n * 9 / 10, "{tally:?}");
}

fn simple_files(rng: &mut Rng, snap: &[u8], sizes: &[usize]) -> (Vec<Vec<u8>>, Vec<SendFile>) {
    let mut contents = Vec::new();
    let mut files = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let (c, bp) = make_file(rng, snap, len);
        contents.push(c);
        files.push(SendFile {
            name: format!("f{i}"),
            blueprint: bp,
        });
    }
    (contents, files)
}

fn cfgs() -> (SenderConfig, ReceiverConfig) {
    (
        SenderConfig {
            timing: fast_timing(),
            ..SenderConfig::default()
        },
        ReceiverConfig {
            timing: fast_timing(),
            // the hashing thread whatever the sizes: resumed, skipped and aborted files too
            hash_thread: HashThread::Always,
            ..ReceiverConfig::default()
        },
    )
}

#[test]
fn snapshot_mismatch_is_refused_with_the_reason_on_both_sides() {
    for (seed, drop) in [(1u64, 0.0), (2, 0.3), (3, 0.5)] {
        let mut rng = Rng(seed);
        let snap = rng.bytes(32 * 1024);
        let (_, files) = simple_files(&mut rng, &snap, &[5000, 10]);
        let (scfg, rcfg) = cfgs();
        let mut sender = new_sender(scfg, SNAP_ID, files, &snap).unwrap();
        let other = [0x77; 32];
        let mut receiver = Receiver::new(rcfg, other, &snap, MemSink::new());
        let mut s2r = Link::clean(Duration::from_millis(1));
        let mut r2s = Link::clean(Duration::from_millis(1));
        s2r.drop = drop;
        r2s.drop = drop;
        let ends = run_pair(
            &mut rng,
            &mut sender,
            &mut receiver,
            &mut s2r,
            &mut r2s,
            Act::None,
        );
        let want = Reason::SnapshotMismatch {
            sender: SNAP_ID,
            receiver: other,
        };
        assert_eq!(
            ends.receiver,
            Some(Err(Failure {
                reason: want.clone(),
                by_peer: false
            }))
        );
        assert_eq!(
            ends.sender,
            Some(Err(Failure {
                reason: want.clone(),
                by_peer: true
            })),
            "drop {drop}"
        );
        assert!(ends.sender_events.contains(&Event::Aborted(Failure {
            reason: want.clone(),
            by_peer: true
        })));
        let msg = want.to_string();
        assert!(
            msg.contains(&"5a".repeat(32)) && msg.contains(&"77".repeat(32)),
            "{msg}"
        );
        assert!(!receiver.sink().opened, "nothing allocated");
    }
}

#[test]
fn blackhole_mid_transfer_ends_in_timeouts_without_final_files() {
    for seed in 0..20u64 {
        let mut rng = Rng(seed);
        let snap = rng.bytes(32 * 1024);
        let (c0, f0) = raw_file(&mut rng, "f0", 200_000);
        let (c1, f1) = raw_file(&mut rng, "f1", 50_000);
        let (contents, files) = (vec![c0, c1], vec![f0, f1]);
        let (mut scfg, rcfg) = cfgs();
        scfg.rate = Some(2_000_000);
        let mut sender = new_sender(scfg, SNAP_ID, files, &snap).unwrap();
        let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, MemSink::new());
        let mut s2r = Link::clean(Duration::from_millis(1));
        let mut r2s = Link::clean(Duration::from_millis(1));
        let cut = Instant::now() + Duration::from_millis(10 + rng.below(40));
        // One direction or both go dark.
        match seed % 3 {
            0 => s2r.blackhole_after = Some(cut),
            1 => r2s.blackhole_after = Some(cut),
            _ => {
                s2r.blackhole_after = Some(cut);
                r2s.blackhole_after = Some(cut);
            }
        }
        let ends = run_pair(
            &mut rng,
            &mut sender,
            &mut receiver,
            &mut s2r,
            &mut r2s,
            Act::None,
        );
        let so = ends.sender.clone().expect("sender ended");
        let ro = ends.receiver.clone().expect("receiver ended");
        assert!(
            matches!(&so, Err(f) if matches!(f.reason, Reason::Timeout { .. })),
            "{so:?}"
        );
        check_committed_exact(receiver.sink(), &contents);
        if seed % 3 == 1 {
            // Only the way back went dark: the receiver got everything and finished; the
            // sender never heard so and timed out.
            assert_eq!(ro, Ok(()));
        } else {
            assert!(
                matches!(&ro, Err(f) if matches!(f.reason, Reason::Timeout { .. })),
                "{ro:?}"
            );
            assert!(
                receiver.sink().committed(0).is_none(),
                "the big file cannot have finished"
            );
        }
    }
}

#[test]
fn receiver_killed_mid_transfer_leaves_no_final_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(42);
    let snap = rng.bytes(64 * 1024);
    let (_, f0) = raw_file(&mut rng, "f0", 300_000);
    let (_, f1) = raw_file(&mut rng, "f1", 1000);
    let files = vec![f0, f1];
    let (scfg, mut rcfg) = cfgs();
    rcfg.timing.idle_timeout = Duration::from_secs(2);
    let mut sender = new_sender(scfg, SNAP_ID, files, &snap).unwrap();
    {
        let sink = MmapSink::new(dir.path(), "test").unwrap();
        let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, sink);
        let mut s2r = Link::clean(Duration::from_millis(1));
        let mut r2s = Link::clean(Duration::from_millis(1));
        // The receiver stops processing after 60 frames (mid-file), then is dropped.
        let ends = run_pair(
            &mut rng,
            &mut sender,
            &mut receiver,
            &mut s2r,
            &mut r2s,
            Act::KillReceiver(60),
        );
        assert!(
            matches!(
                ends.sender,
                Some(Err(Failure {
                    reason: Reason::Timeout { .. },
                    ..
                }))
            ),
            "{:?}",
            ends.sender
        );
        // While it lived, its output was a temporary file only.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n == "f0"), "{names:?}");
        assert!(
            names.iter().any(|n| n.starts_with(".f0.pfs-tmp-")),
            "{names:?}"
        );
    }
    // Dropped: no final name, no temporary left.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn files_land_in_an_output_directory_through_mmap() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    let snap = rng.bytes(64 * 1024);
    let (contents, mut files) = simple_files(&mut rng, &snap, &[100_000, 0, 1, 7000]);
    files[3].name = "sub/deeper/f3".into();
    let (scfg, rcfg) = cfgs();
    let mut sender = new_sender(scfg, SNAP_ID, files, &snap).unwrap();
    let sink = MmapSink::new(dir.path(), "t").unwrap();
    let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, sink);
    let mut s2r = Link::clean(Duration::from_millis(1));
    let mut r2s = Link::clean(Duration::from_millis(1));
    s2r.drop = 0.1;
    s2r.reorder = 0.3;
    s2r.jitter = Duration::from_millis(5);
    let ends = run_pair(
        &mut rng,
        &mut sender,
        &mut receiver,
        &mut s2r,
        &mut r2s,
        Act::None,
    );
    assert_eq!(ends.sender, Some(Ok(())));
    assert_eq!(ends.receiver, Some(Ok(())));
    drop(receiver);
    for (i, name) in ["f0", "f1", "f2", "sub/deeper/f3"].iter().enumerate() {
        assert_eq!(
            std::fs::read(dir.path().join(name)).unwrap(),
            contents[i],
            "{name}"
        );
    }
    let hidden = walk(dir.path())
        .into_iter()
        .filter(|p| p.contains("pfs-tmp"))
        .count();
    assert_eq!(hidden, 0);
}

fn walk(p: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
        out.push(e.path().to_string_lossy().into_owned());
    }
    out
}

/// Build a Hello datagram by hand, as a hostile sender would.
fn hostile_hello(session: u64, nfiles: u32, entries: Vec<FileEntry>) -> Vec<u8> {
    let p = Payload::Hello(Hello {
        snapshot_id: SNAP_ID,
        nfiles,
        first: 0,
        entries,
    });
    let mut buf = vec![0u8; 2000];
    let hdr = pfs::Repr {
        frame_type: pfs::FrameType::Hello,
        flags: 0,
        session,
        seq: 0,
        payload_len: 0,
    };
    let n = Frame::emit(hdr, &p, &mut buf);
    buf.truncate(n);
    buf
}

fn refusal_of(
    mut hello: Vec<u8>,
    rcfg: ReceiverConfig,
    sink: MemSink,
) -> (Reason, MemSink, Vec<u8>) {
    let snap = vec![0u8; 1024];
    let mut r = Receiver::new(rcfg, SNAP_ID, &snap, sink);
    let now = Instant::now();
    assert!(r.handle_datagram(now, &mut hello));
    let mut buf = vec![0u8; 2000];
    let n = r.poll_transmit(now, &mut buf).expect("an answer");
    buf.truncate(n);
    let Some(Err(f)) = r.outcome() else {
        panic!("not refused: {:?}", r.outcome())
    };
    assert!(!f.by_peer);
    (f.reason, r.into_sink(), buf)
}

fn entry(name: &str, size: u64) -> FileEntry {
    FileEntry::direct(name.into(), size, [0; 32])
}

fn packed_entry(name: &str, size: u64, stream_len: u64) -> FileEntry {
    FileEntry {
        mode: FileMode::Packed,
        stream_len,
        ..entry(name, size)
    }
}

#[test]
fn hostile_manifests_are_refused_before_allocating() {
    let rcfg = ReceiverConfig {
        max_file_size: 1 << 30,
        max_total_size: 1 << 31,
        max_files: 1000,
        ..ReceiverConfig::default()
    };
    let cases: Vec<(Vec<u8>, Reason)> = vec![
        (
            hostile_hello(1, 1, vec![entry("big", u64::MAX)]),
            Reason::FileTooLarge {
                file: 0,
                size: u64::MAX,
                limit: 1 << 30,
            },
        ),
        (
            hostile_hello(
                1,
                3,
                vec![entry("a", 1 << 30), entry("b", 1 << 30), entry("c", 1)],
            ),
            Reason::SessionTooLarge {
                total: (1 << 31) + 1,
                limit: 1 << 31,
            },
        ),
        (
            hostile_hello(1, 1, vec![entry("../../etc/passwd", 10)]),
            Reason::BadName { file: 0 },
        ),
        (
            hostile_hello(1, 2, vec![entry("ok", 1), entry("/abs", 10)]),
            Reason::BadName { file: 1 },
        ),
        (
            hostile_hello(1, 1, vec![entry("a/../../b", 10)]),
            Reason::BadName { file: 0 },
        ),
        (
            hostile_hello(1, u32::MAX, vec![]),
            Reason::TooManyFiles {
                count: u32::MAX as u64,
                limit: 1000,
            },
        ),
        (
            hostile_hello(1, 2, vec![entry("x", 1), entry("x", 2)]),
            Reason::DuplicateName { file: 1, other: 0 },
        ),
        (
            // Each packed stream is within the file limits, together they exceed the
            // receiver's budget for reassembly buffers.
            hostile_hello(
                1,
                2,
                vec![
                    packed_entry("p", 1 << 29, 1 << 29),
                    packed_entry("q", 1 << 29, (1 << 30) - (1 << 29) + 1),
                ],
            ),
            Reason::PackedTooLarge {
                file: 1,
                len: (1 << 30) - (1 << 29) + 1,
                limit: 1 << 30,
            },
        ),
        (
            // A streamed file whose bound is far above its size.
            hostile_hello(
                1,
                1,
                vec![FileEntry {
                    mode: FileMode::Streamed,
                    stream_len: u64::MAX - 5,
                    hash: [0; 32],
                    ..entry("s", 10)
                }],
            ),
            Reason::Protocol,
        ),
    ];
    for (hello, want) in cases {
        let (got, sink, answer) = refusal_of(hello, rcfg.clone(), MemSink::new());
        assert_eq!(got, want);
        assert!(!sink.opened, "{want:?}: the sink was opened");
        // The answer is an Abort that carries the same reason to the sender.
        let f = Frame::parse(&answer).unwrap();
        let Payload::Abort(a) = f.payload else {
            panic!("{:?}", f.payload)
        };
        assert_eq!(Reason::from_wire(&a, SNAP_ID), want);
    }
    // Free space: the sink refuses before creating anything.
    let mut sink = MemSink::new();
    sink.free_space = Some(100);
    let (got, sink, _) = refusal_of(
        hostile_hello(1, 1, vec![entry("f", 1000)]),
        rcfg.clone(),
        sink,
    );
    assert_eq!(
        got,
        Reason::NoSpace {
            need: 1000,
            avail: 100
        }
    );
    assert!(!sink.opened);
}

#[test]
fn mmap_sink_refuses_symlink_escapes_and_huge_sizes() {
    let out = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), out.path().join("link")).unwrap();
    let snap = vec![0u8; 16];
    let rcfg = ReceiverConfig::default();
    for (mut hello, want) in [
        (
            hostile_hello(9, 1, vec![entry("link/x", 10)]),
            Reason::BadName { file: 0 },
        ),
        (
            hostile_hello(9, 1, vec![entry("huge", 1 << 39)]),
            Reason::NoSpace {
                need: 1 << 39,
                avail: 0,
            },
        ),
    ] {
        let sink = MmapSink::new(out.path(), "t").unwrap();
        let mut r = Receiver::new(rcfg.clone(), SNAP_ID, &snap, sink);
        r.handle_datagram(Instant::now(), &mut hello);
        let Some(Err(f)) = r.outcome() else {
            panic!("accepted {hello:?}")
        };
        match (&f.reason, &want) {
            (Reason::NoSpace { need, .. }, Reason::NoSpace { need: w, .. }) => assert_eq!(need, w),
            (a, b) => assert_eq!(a, b),
        }
    }
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    assert_eq!(
        walk(out.path()).len(),
        1,
        "only the symlink: {:?}",
        walk(out.path())
    );
}

#[test]
fn foreign_and_malformed_frames_are_counted_and_dropped() {
    let mut rng = Rng(11);
    let snap = rng.bytes(32 * 1024);
    let (contents, files) = simple_files(&mut rng, &snap, &[40_000]);
    let (scfg, rcfg) = cfgs();
    let session = scfg.session_id;
    let mut sender = new_sender(scfg, SNAP_ID, files.clone(), &snap).unwrap();
    let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, MemSink::new());
    let now = Instant::now();
    let mut buf = vec![0u8; 65536];
    // Complete the handshake by hand, then inject garbage before the data flows.
    let n = sender.poll_transmit(now, &mut buf).unwrap();
    assert!(receiver.handle_datagram(now, &mut buf[..n]));
    let n = receiver.poll_transmit(now, &mut buf).unwrap();
    assert!(sender.handle_datagram(now, &mut buf[..n]));
    // Another session's Hello and data.
    let mut other_cfg = SenderConfig {
        session_id: session ^ 1,
        ..SenderConfig::default()
    };
    other_cfg.timing = fast_timing();
    let mut other = new_sender(other_cfg, SNAP_ID, files, &snap).unwrap();
    let n = other.poll_transmit(now, &mut buf).unwrap();
    assert!(!receiver.handle_datagram(now, &mut buf[..n]));
    // Garbage, a truncated frame, a corrupted frame, and a gram pointing past the file.
    assert!(!receiver.handle_datagram(now, &mut b"hello world".to_vec()));
    let n = sender.poll_transmit(now, &mut buf).unwrap();
    assert!(!receiver.handle_datagram(now, &mut buf[..n - 1]));
    let mut bad = buf[..n].to_vec();
    bad[40] ^= 0xff;
    assert!(!receiver.handle_datagram(now, &mut bad));
    let mut g = [0u8; 200];
    let mut w = packetfs::wire::payload::GramWriter::new(&mut g[pfs::HEADER_LEN..], 0);
    assert!(w.push_snap(0, 39_990, Transform::Id, 0, 0, 100));
    let pl = w.finish();
    let hdr = pfs::Repr {
        frame_type: pfs::FrameType::Data,
        flags: 0,
        session,
        seq: 99,
        payload_len: pl as u16,
    };
    hdr.emit(&mut pfs::Packet::new_unchecked(
        &mut g[..pfs::HEADER_LEN + pl],
    ));
    receiver.handle_datagram(now, &mut g[..pfs::HEADER_LEN + pl]);
    let st = receiver.stats().clone();
    assert_eq!(st.foreign_session, 1);
    assert_eq!(st.malformed, 4, "{st:?}");
    // The real frame still goes through, and the session completes.
    assert!(receiver.handle_datagram(now, &mut buf[..n]));
    let mut s2r = Link::clean(Duration::from_millis(1));
    let mut r2s = Link::clean(Duration::from_millis(1));
    let ends = run_pair(
        &mut rng,
        &mut sender,
        &mut receiver,
        &mut s2r,
        &mut r2s,
        Act::None,
    );
    assert_eq!(ends.receiver, Some(Ok(())));
    assert_eq!(ends.sender, Some(Ok(())));
    assert_eq!(receiver.sink().committed(0).unwrap(), &contents[0][..]);
}

#[test]
fn many_files_need_several_hello_chunks() {
    let mut rng = Rng(5);
    let snap = rng.bytes(16 * 1024);
    let sizes: Vec<usize> = (0..300).map(|i| i % 50).collect();
    let (contents, mut files) = simple_files(&mut rng, &snap, &sizes);
    for (i, f) in files.iter_mut().enumerate() {
        f.name = format!("{}/{i}", "n".repeat(100));
    }
    let (mut scfg, mut rcfg) = cfgs();
    scfg.max_datagram = 700;
    rcfg.max_datagram = 700;
    let mut sender = new_sender(scfg, SNAP_ID, files, &snap).unwrap();
    let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, MemSink::new());
    let mut s2r = Link::clean(Duration::from_millis(2));
    s2r.drop = 0.2;
    let mut r2s = Link::clean(Duration::from_millis(2));
    let ends = run_pair(
        &mut rng,
        &mut sender,
        &mut receiver,
        &mut s2r,
        &mut r2s,
        Act::None,
    );
    assert_eq!(ends.sender, Some(Ok(())));
    assert_eq!(ends.receiver, Some(Ok(())));
    check_committed_exact(receiver.sink(), &contents);
    assert_eq!(receiver.sink().committed_count(), 300);
}

#[test]
fn empty_session_and_empty_files() {
    let mut rng = Rng(9);
    let snap = rng.bytes(1024);
    for sizes in [&[][..], &[0][..], &[0, 0, 1][..]] {
        let (contents, files) = simple_files(&mut rng, &snap, sizes);
        let (scfg, rcfg) = cfgs();
        let mut sender = new_sender(scfg, SNAP_ID, files, &snap).unwrap();
        let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, MemSink::new());
        let mut s2r = Link::clean(Duration::from_millis(1));
        let mut r2s = Link::clean(Duration::from_millis(1));
        let ends = run_pair(
            &mut rng,
            &mut sender,
            &mut receiver,
            &mut s2r,
            &mut r2s,
            Act::None,
        );
        assert_eq!(ends.sender, Some(Ok(())), "{sizes:?}");
        assert_eq!(ends.receiver, Some(Ok(())), "{sizes:?}");
        check_committed_exact(receiver.sink(), &contents);
    }
}

#[test]
fn pacing_holds_the_configured_rate_in_virtual_time() {
    let mut rng = Rng(3);
    let snap = rng.bytes(4096);
    // All raw: every byte travels, so wire bytes ~ file bytes.
    let content = rng.bytes(2_000_000);
    let bp = Blueprint {
        snapshot_id: SNAP_ID,
        file_len: content.len() as u64,
        file_hash: *blake3::hash(&content).as_bytes(),
        segments: content
            .chunks(60_000)
            .map(|c| Segment {
                len: c.len() as u32,
                src: Source::Raw,
            })
            .collect(),
        spill: content.clone(),
    };
    let (mut scfg, rcfg) = cfgs();
    scfg.rate = Some(10_000_000); // 80 Mbit/s
    let mut sender = new_sender(
        scfg,
        SNAP_ID,
        vec![SendFile {
            name: "r".into(),
            blueprint: bp,
        }],
        &snap,
    )
    .unwrap();
    let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, MemSink::new());
    let mut s2r = Link::clean(Duration::from_micros(100));
    let mut r2s = Link::clean(Duration::from_micros(100));
    let ends = run_pair(
        &mut rng,
        &mut sender,
        &mut receiver,
        &mut s2r,
        &mut r2s,
        Act::None,
    );
    assert_eq!(ends.receiver, Some(Ok(())));
    let st = sender.stats_now();
    let link_bytes = st.bytes_sent + st.frames_sent * 42;
    let secs = ends.virtual_time.as_secs_f64();
    let rate = link_bytes as f64 / secs;
    // Virtual time: the bucket's arithmetic, not a wall clock.
    assert!(rate <= 10_000_000.0 * 1.02, "{rate}");
    assert!(rate >= 10_000_000.0 * 0.85, "{rate}");
    assert_eq!(receiver.sink().committed(0).unwrap(), &content[..]);
}

#[test]
fn a_slow_bottleneck_is_not_flooded() {
    // No cap: the sender starts fast into a 2 MB/s bottleneck with a short queue; the rate
    // controller must back off so the transfer completes with bounded repair.
    let mut rng = Rng(17);
    let snap = rng.bytes(4096);
    let content = rng.bytes(1_000_000);
    let bp = Blueprint {
        snapshot_id: SNAP_ID,
        file_len: content.len() as u64,
        file_hash: *blake3::hash(&content).as_bytes(),
        segments: vec![Segment {
            len: content.len() as u32,
            src: Source::Raw,
        }],
        spill: content.clone(),
    };
    let (scfg, rcfg) = cfgs();
    let mut sender = new_sender(
        scfg,
        SNAP_ID,
        vec![SendFile {
            name: "r".into(),
            blueprint: bp,
        }],
        &snap,
    )
    .unwrap();
    let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, MemSink::new());
    let mut s2r = Link::clean(Duration::from_millis(5));
    s2r.bandwidth = Some(2_000_000);
    s2r.queue = Duration::from_millis(20);
    let mut r2s = Link::clean(Duration::from_millis(5));
    let ends = run_pair(
        &mut rng,
        &mut sender,
        &mut receiver,
        &mut s2r,
        &mut r2s,
        Act::None,
    );
    assert_eq!(ends.receiver, Some(Ok(())));
    assert_eq!(ends.sender, Some(Ok(())));
    let st = sender.stats_now();
    assert!(st.rate < 4_000_000, "rate stayed at {}", st.rate);
    assert!(
        st.repair_bytes < content.len() as u64 / 2,
        "repaired {} of {}",
        st.repair_bytes,
        content.len()
    );
}

#[test]
fn cancel_on_either_side_is_a_clean_abort_with_the_reason_on_both() {
    for (seed, side) in [(1u64, 0), (2, 1), (3, 0), (4, 1)] {
        let mut rng = Rng(seed);
        let snap = rng.bytes(4096);
        let (_, f) = raw_file(&mut rng, "big", 400_000);
        let (scfg, rcfg) = cfgs();
        let mut sender = new_sender(scfg, SNAP_ID, vec![f], &snap).unwrap();
        let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, MemSink::new());
        let mut s2r = Link::clean(Duration::from_millis(1));
        let mut r2s = Link::clean(Duration::from_millis(1));
        if seed > 2 {
            s2r.drop = 0.2;
            r2s.drop = 0.2;
        }
        let act = if side == 0 {
            Act::CancelSender(50)
        } else {
            Act::CancelReceiver(50)
        };
        let ends = run_pair(
            &mut rng,
            &mut sender,
            &mut receiver,
            &mut s2r,
            &mut r2s,
            act,
        );
        let (local, remote) = if side == 0 {
            (&ends.sender, &ends.receiver)
        } else {
            (&ends.receiver, &ends.sender)
        };
        assert_eq!(
            local,
            &Some(Err(Failure {
                reason: Reason::Cancelled,
                by_peer: false
            }))
        );
        // With loss the Abort may be lost every time it is sent; then silence ends the peer.
        match remote {
            Some(Err(Failure {
                reason: Reason::Cancelled,
                by_peer: true,
            })) => {}
            Some(Err(Failure {
                reason: Reason::Timeout { .. },
                ..
            })) if seed > 2 => {}
            other => panic!("seed {seed}: {other:?}"),
        }
        assert!(sender.is_closed() && receiver.is_closed());
        assert_eq!(receiver.sink().committed_count(), 0);
    }
}

#[test]
fn the_receivers_max_rate_caps_the_sender() {
    let mut rng = Rng(21);
    let snap = rng.bytes(4096);
    let (content, f) = raw_file(&mut rng, "r", 1_000_000);
    let (scfg, mut rcfg) = cfgs();
    rcfg.max_rate = 2_000_000;
    let mut sender = new_sender(scfg, SNAP_ID, vec![f], &snap).unwrap();
    let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, MemSink::new());
    let mut s2r = Link::clean(Duration::from_micros(200));
    let mut r2s = Link::clean(Duration::from_micros(200));
    let ends = run_pair(
        &mut rng,
        &mut sender,
        &mut receiver,
        &mut s2r,
        &mut r2s,
        Act::None,
    );
    assert_eq!(ends.receiver, Some(Ok(())));
    let st = sender.stats_now();
    let rate = (st.bytes_sent + st.frames_sent * 42) as f64 / ends.virtual_time.as_secs_f64();
    assert!(rate <= 2_000_000.0 * 1.05, "{rate}");
    assert_eq!(receiver.sink().committed(0).unwrap(), &content[..]);
}

#[test]
fn extreme_loss_still_ends_cleanly_on_both_sides() {
    let mut finished = 0;
    for seed in 0..150u64 {
        let mut rng = Rng(0xdead_0000 + seed);
        let case = random_case(&mut rng);
        let mut s2r = Link::random(&mut rng);
        let mut r2s = Link::random(&mut rng);
        s2r.drop = 0.5 + rng.below(40) as f64 / 100.0;
        r2s.drop = 0.5 + rng.below(40) as f64 / 100.0;
        let mut sender =
            new_sender(case.scfg.clone(), SNAP_ID, case.files.clone(), &case.snap).unwrap();
        let mut receiver = Receiver::new(case.rcfg.clone(), SNAP_ID, &case.snap, MemSink::new());
        let ends = run_pair(
            &mut rng,
            &mut sender,
            &mut receiver,
            &mut s2r,
            &mut r2s,
            Act::None,
        );
        // A handshake that never completed closes the Guard (the sender state machine
        // never started): a clean end too.
        let no_handshake = matches!(&ends.sender, Some(Err(f)) if matches!(f.reason, Reason::HandshakeTimeout { .. }));
        assert!(sender.is_closed() || no_handshake, "seed {seed}");
        // A receiver that never heard a Hello is still listening: that is its clean state.
        if receiver.session().is_some() {
            assert!(receiver.is_closed(), "seed {seed}");
            assert!(ends.receiver.is_some(), "seed {seed}");
        }
        let (so, ro) = (
            ends.sender.clone().expect("sender outcome"),
            ends.receiver.clone(),
        );
        for o in [Some(so.clone()), ro.clone()].into_iter().flatten() {
            if let Err(f) = o {
                assert!(
                    matches!(
                        f.reason,
                        Reason::Timeout { .. } | Reason::HandshakeTimeout { .. }
                    ),
                    "seed {seed}: {f}"
                );
            }
        }
        if so.is_ok() {
            assert_eq!(ro, Some(Ok(())), "seed {seed}");
            finished += 1;
        }
        check_committed_exact(receiver.sink(), &case.contents);
    }
    eprintln!("{finished} of 150 sessions finished at 50-90% loss each way");
}

/// Send `files` with `pack` (and `opts` for the block encoder) over a link that drops, reorders
/// and duplicates as given; assert both ends succeed, the sender used the mode `pack` implies
/// and every file committed bit-exact. Returns the bytes the sender put on the wire.
#[allow(clippy::too_many_arguments)]
fn send_impaired(
    rng: &mut Rng,
    snap: &[u8],
    files: &[SendFile],
    contents: &[Vec<u8>],
    pack: PackPolicy,
    opts: block::EncodeOptions,
    (drop, reorder, dup): (f64, f64, f64),
    what: &str,
) -> u64 {
    let (mut scfg, rcfg) = cfgs();
    scfg.pack = pack;
    scfg.pack_opts = opts;
    let mut sender = new_sender(scfg, SNAP_ID, files.to_vec(), snap).unwrap();
    let want = if pack == PackPolicy::Always {
        FileMode::Packed
    } else {
        FileMode::Direct
    };
    assert!(sender.modes().iter().all(|(m, _)| *m == want), "{what}");
    let mut receiver = Receiver::new(rcfg, SNAP_ID, snap, MemSink::new());
    let mut s2r = Link::clean(Duration::from_millis(1));
    (s2r.drop, s2r.reorder, s2r.dup) = (drop, reorder, dup);
    let mut r2s = Link::clean(Duration::from_millis(1));
    let ends = run_pair(
        rng,
        &mut sender,
        &mut receiver,
        &mut s2r,
        &mut r2s,
        Act::None,
    );
    assert_eq!(ends.sender, Some(Ok(())), "{what} {pack:?}");
    assert_eq!(ends.receiver, Some(Ok(())), "{what} {pack:?}");
    let sink = receiver.into_sink();
    for (i, c) in contents.iter().enumerate() {
        assert!(
            sink.committed(i) == Some(&c[..]),
            "{what} {pack:?}: file {i} differs"
        );
    }
    sender.stats().bytes_sent
}

/// A packed-mode blueprint with real spill (text, so packing pays) against a snapshot, sent
/// packed and direct over the same impaired link: both bit-exact, and packed puts fewer
/// bytes on the wire.
#[test]
fn packed_mode_is_bit_exact_and_smaller_on_the_wire() {
    let mut rng = Rng(0xb10c);
    let snap = rng.bytes(256 * 1024);
    let (contents, files): (Vec<_>, Vec<_>) = (0..3)
        .map(|i| {
            let (c, bp) = make_file_with(&mut rng, &snap, 150_000 + i * 7_000, true);
            (
                c,
                SendFile {
                    name: format!("t{i}"),
                    blueprint: bp,
                },
            )
        })
        .unzip();
    let mut wire = Vec::new();
    for pack in [PackPolicy::Always, PackPolicy::Never] {
        let opts = block::EncodeOptions {
            spill_per_block: 8 << 10, // many blocks
            ..Default::default()
        };
        wire.push(send_impaired(
            &mut rng,
            &snap,
            &files,
            &contents,
            pack,
            opts,
            (0.05, 0.1, 0.02),
            "packed vs direct",
        ));
    }
    assert!(
        wire[0] < wire[1],
        "packed {} vs direct {} wire bytes",
        wire[0],
        wire[1]
    );
}

/// A sender whose packed stream does not decode: the receiver aborts (protocol error),
/// commits nothing, and tells the sender.
#[test]
fn a_corrupt_packed_stream_is_a_clean_abort() {
    use packetfs::wire::payload::GramWriter;
    let snap = vec![0u8; 1024];
    let (_, rcfg) = cfgs();
    for garbage in [
        vec![0xffu8; 40],                      // a body length above the limit
        vec![5, 0, 0, 0, 0x80, 0x80, 1, 2, 3], // a body that does not parse
        vec![2, 0, 0, 0, 1, 0],                // truncated header fields
    ] {
        let mut r = Receiver::new(rcfg.clone(), SNAP_ID, &snap, MemSink::new());
        let now = Instant::now();
        let mut hello = hostile_hello(9, 1, vec![packed_entry("g", 100, garbage.len() as u64)]);
        assert!(r.handle_datagram(now, &mut hello));
        let mut body = vec![0u8; 1400];
        let mut w = GramWriter::new(&mut body, 1000);
        assert_eq!(w.push_raw(0, 0, &garbage), garbage.len());
        let n = w.finish();
        let mut frame = vec![0u8; pfs::HEADER_LEN + n];
        frame[pfs::HEADER_LEN..].copy_from_slice(&body[..n]);
        let hdr = pfs::Repr {
            frame_type: pfs::FrameType::Data,
            flags: 0,
            session: 9,
            seq: 1,
            payload_len: n as u16,
        };
        hdr.emit(&mut pfs::Packet::new_unchecked(&mut frame[..]));
        assert!(r.handle_datagram(now, &mut frame));
        let Some(Err(f)) = r.outcome() else {
            panic!("{garbage:?} accepted: {:?}", r.outcome())
        };
        assert_eq!(f.reason, Reason::Protocol);
        assert_eq!(r.sink().committed_count(), 0);
    }
}

/// Long snapshot pieces are applied and hashed in chunks when they extend the hashed prefix
/// (a covered file): still bit-exact, with pieces reordered and duplicated, into memory
/// and through the mmap sink.
#[test]
fn long_covered_pieces_hash_in_chunks_bit_exact() {
    let mut rng = Rng(0xc0);
    let snap = rng.bytes(8 << 20);
    let seg = |off: u64, len: u32| Segment {
        len,
        src: Source::Snap {
            op: Transform::Id,
            off,
            imm: 0,
        },
    };
    let segments = vec![seg(100, 3 << 20), seg(7, 5000), seg(4 << 20, (2 << 20) + 3)];
    let mut content = Vec::new();
    for s in &segments {
        let Source::Snap { off, .. } = s.src else {
            unreachable!()
        };
        content.extend_from_slice(&snap[off as usize..off as usize + s.len as usize]);
    }
    let bp = Blueprint {
        snapshot_id: SNAP_ID,
        file_len: content.len() as u64,
        file_hash: *blake3::hash(&content).as_bytes(),
        segments,
        spill: vec![],
    };
    for mmap in [false, true] {
        let (mut scfg, rcfg) = cfgs();
        scfg.pack = PackPolicy::Never;
        let files = vec![SendFile {
            name: "covered".into(),
            blueprint: bp.clone(),
        }];
        let mut sender = new_sender(scfg, SNAP_ID, files, &snap).unwrap();
        let mut s2r = Link::clean(Duration::from_millis(1));
        s2r.reorder = 0.5;
        s2r.dup = 0.3;
        let mut r2s = Link::clean(Duration::from_millis(1));
        if mmap {
            let dir = tempfile::tempdir().unwrap();
            let sink = MmapSink::new(dir.path(), "t").unwrap();
            let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, sink);
            let ends = run_pair(
                &mut rng,
                &mut sender,
                &mut receiver,
                &mut s2r,
                &mut r2s,
                Act::None,
            );
            assert_eq!(ends.receiver, Some(Ok(())));
            assert!(std::fs::read(dir.path().join("covered")).unwrap() == content);
        } else {
            let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, MemSink::new());
            let ends = run_pair(
                &mut rng,
                &mut sender,
                &mut receiver,
                &mut s2r,
                &mut r2s,
                Act::None,
            );
            assert_eq!(ends.receiver, Some(Ok(())));
            assert!(receiver.sink().committed(0) == Some(&content[..]));
        }
    }
}

/// A file of snapshot segments, text spill and self copies (far back across blocks, and
/// overlapping ones that repeat a short period) with its blueprint.
fn file_with_self_copies(rng: &mut Rng, snap: &[u8], len: usize) -> (Vec<u8>, Blueprint) {
    let mut content: Vec<u8> = Vec::with_capacity(len);
    let (mut segments, mut spill) = (Vec::new(), Vec::new());
    while content.len() < len {
        let n = (1 + rng.below(2000) as usize).min(len - content.len());
        let pos = content.len();
        match rng.below(3) {
            0 if pos > 0 => {
                // overlapping (period 1..=16) or anywhere before
                let off = if rng.chance(0.3) {
                    pos - (1 + rng.below(16.min(pos as u64)) as usize)
                } else {
                    rng.below(pos as u64) as usize
                };
                for i in 0..n {
                    let b = content[off + i];
                    content.push(b);
                }
                segments.push(Segment {
                    len: n as u32,
                    src: Source::SelfCopy { off: off as u64 },
                });
            }
            1 => {
                let off = rng.below((snap.len() - n) as u64 + 1) as usize;
                content.extend_from_slice(&snap[off..off + n]);
                segments.push(Segment {
                    len: n as u32,
                    src: Source::Snap {
                        op: Transform::Id,
                        off: off as u64,
                        imm: 0,
                    },
                });
            }
            _ => {
                let b: Vec<u8> = (0..n)
                    .map(|_| b"lorem ipsum dolor "[rng.below(18) as usize])
                    .collect();
                content.extend_from_slice(&b);
                spill.extend_from_slice(&b);
                segments.push(Segment {
                    len: n as u32,
                    src: Source::Raw,
                });
            }
        }
    }
    let bp = Blueprint {
        snapshot_id: SNAP_ID,
        file_len: len as u64,
        file_hash: *blake3::hash(&content).as_bytes(),
        segments,
        spill,
    };
    bp.validate(snap.len() as u64).unwrap();
    (content, bp)
}

/// Self copies (issue 5): a packed file keeps them and the receiver applies each only after
/// its source range is complete (blocks in file order), so heavy reordering, loss and
/// duplicates still end bit-exact; a direct file carries the bytes they stand for instead.
#[test]
fn self_copies_are_applied_after_their_source_under_reordering() {
    let mut rng = Rng(0x5e1f);
    let snap = rng.bytes(128 * 1024);
    for case in 0..40u64 {
        let (contents, files): (Vec<_>, Vec<_>) = (0..2)
            .map(|i| {
                let len = 20_000 + rng.below(60_000) as usize;
                let (c, bp) = file_with_self_copies(&mut rng, &snap, len);
                (
                    c,
                    SendFile {
                        name: format!("s{case}-{i}"),
                        blueprint: bp,
                    },
                )
            })
            .unzip();
        for pack in [PackPolicy::Always, PackPolicy::Never] {
            // many small blocks, so copies reach back across blocks and frames
            let opts = block::EncodeOptions {
                spill_per_block: 1 + rng.below(4096),
                file_per_block: 512 + rng.below(8192),
                ..Default::default()
            };
            send_impaired(
                &mut rng,
                &snap,
                &files,
                &contents,
                pack,
                opts,
                (0.05, 0.4, 0.05),
                &format!("case {case}"),
            );
        }
    }
}

/// Streaming send: files whose blocks the producer hands over late (one every few virtual
/// milliseconds, after the session started), beside a direct and a packed file, over links
/// that drop, reorder and duplicate. Every file ends bit-exact, data left before the last
/// block was produced.
#[test]
fn blocks_pushed_late_arrive_bit_exact_under_loss_and_reordering() {
    use packetfs::proto::OutgoingFile;
    use packetfs::wire::payload::StreamEnd;
    let mut rng = Rng(0x57e4);
    let snap = rng.bytes(256 * 1024);
    let mut longest_small_window_stream = 0;
    for case in 0..24u64 {
        let mut contents = Vec::new();
        let mut files = Vec::new();
        // (file index, blocks) of the streamed files
        let mut streams: Vec<(usize, Vec<Vec<u8>>, [u8; 32])> = Vec::new();
        let opts = block::EncodeOptions {
            spill_per_block: 512 + rng.below(8192),
            file_per_block: 1024 + rng.below(12_000),
            // zstd level 1, pinned: at level 3 the streams no longer outgrow the small window
            level: 1,
            ..Default::default()
        };
        // Every other case with a small block limit, so the receiver's window for a streamed
        // file (twice the largest block) is smaller than the streams: it slides, and
        // what arrives too far ahead is dropped and repaired.
        let small_window = case % 2 == 1;
        for i in 0..3 {
            let len = rng.below(120_000) as usize + if i == 0 { 1 } else { 0 };
            let (c, bp) = make_file_with(&mut rng, &snap, len, true);
            let packed = block::encode(&bp, &opts).unwrap();
            let mut blocks = Vec::new();
            let mut at = 0;
            while at < packed.len() {
                let n = block::body_len(&packed[at..], &Default::default())
                    .unwrap()
                    .unwrap() as usize;
                blocks.push(packed[at..at + 4 + n].to_vec());
                at += 4 + n;
            }
            if small_window {
                longest_small_window_stream = longest_small_window_stream.max(packed.len());
            }
            let slack = rng.below(3000);
            files.push(OutgoingFile::Streamed {
                name: format!("s{case}-{i}"),
                size: c.len() as u64,
                bound: (packed.len() + StreamEnd::LEN) as u64 + slack,
            });
            streams.push((files.len() - 1, blocks, bp.file_hash));
            contents.push(c);
        }
        // a direct file among them
        let (c, bp) = make_file(&mut rng, &snap, 30_000);
        files.insert(
            1,
            OutgoingFile::Direct {
                name: format!("d{case}"),
                blueprint: bp,
            },
        );
        contents.insert(1, c);
        for s in streams.iter_mut().skip(1) {
            s.0 += 1;
        }
        let (mut scfg, mut rcfg) = cfgs();
        scfg.rate = Some(20_000_000);
        if small_window {
            // and a fast link, so holes leave much data ahead of the window
            rcfg.block_limits.max_body = 24 << 10;
            scfg.rate = Some(200_000_000);
        }
        let mut sender = Sender::new(scfg, SNAP_ID, files).unwrap();
        let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, MemSink::new());
        let mut s2r = Link::clean(Duration::from_millis(1));
        (s2r.drop, s2r.reorder, s2r.dup) = (0.05, 0.3, 0.05);
        s2r.jitter = Duration::from_millis(4);
        let mut r2s = Link::clean(Duration::from_millis(1));
        r2s.drop = 0.05;
        // The producer: one block every `every`, files in order, each file's hash after its
        // last block; the first block only once the session has run a while.
        let every = if small_window {
            Duration::from_micros(20)
        } else {
            Duration::from_micros(500 + rng.below(5000))
        };
        let mut queue: std::collections::VecDeque<(usize, Option<Vec<u8>>, [u8; 32])> = streams
            .iter()
            .flat_map(|(f, blocks, h)| {
                blocks
                    .iter()
                    .map(move |b| (*f, Some(b.clone()), *h))
                    .chain(std::iter::once((*f, None, *h)))
            })
            .collect();
        let mut data_before_last = None;
        let ends = run_pair_fed(
            &mut rng,
            &mut sender,
            &mut receiver,
            &mut s2r,
            &mut r2s,
            Act::None,
            &mut |t, s| {
                // Start once the session runs (the receiver answered) and 20 ms passed.
                if t < Duration::from_millis(20) || s.stats().frames_received == 0 {
                    return Some(t.max(Duration::from_millis(20)) + Duration::from_millis(1));
                }
                let (f, b, h) = queue.pop_front()?;
                match b {
                    Some(b) => s.push_block(f, &b).unwrap(),
                    None => s.finish_file(f, h).unwrap(),
                }
                if queue.is_empty() {
                    data_before_last = Some(s.stats().data_frames);
                    return None;
                }
                Some(t + every)
            },
        );
        assert_eq!(ends.sender, Some(Ok(())), "case {case}");
        assert_eq!(ends.receiver, Some(Ok(())), "case {case}");
        assert!(
            data_before_last.is_some_and(|n| n > 0),
            "case {case}: nothing was sent before the last block"
        );
        let sink = receiver.into_sink();
        for (i, c) in contents.iter().enumerate() {
            assert!(sink.committed(i) == Some(&c[..]), "case {case}: file {i}");
        }
    }
    assert!(
        longest_small_window_stream > 2 * (24 << 10) + 8,
        "no stream outgrew the small window: {longest_small_window_stream}"
    );
}

// ---- The secure channel around the state machines (issue 12) ----

/// One sealed session of `sizes` over `s2r`/`r2s` with protection `sec`; returns the ends,
/// the files' contents and the receiver's sink.
fn secure_case(
    seed: u64,
    sizes: &[usize],
    s2r: &mut Link,
    r2s: &mut Link,
    sec: &Sec,
) -> (Ends, Vec<Vec<u8>>, MemSink) {
    let mut rng = Rng(seed);
    let snap = rng.bytes(32 * 1024);
    let (contents, files) = simple_files(&mut rng, &snap, sizes);
    let (scfg, rcfg) = cfgs();
    let mut sender = new_sender(scfg, SNAP_ID, files, &snap).unwrap();
    let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, MemSink::new());
    let ends = run_pair_sec(
        &mut rng,
        &mut sender,
        &mut receiver,
        s2r,
        r2s,
        Act::None,
        &mut |_, _| None,
        sec,
    );
    (ends, contents, receiver.into_sink())
}

fn all_committed(sink: &MemSink, contents: &[Vec<u8>]) {
    for (i, c) in contents.iter().enumerate() {
        assert!(
            sink.committed(i).is_some_and(|g| g == &c[..]),
            "file {i} missing or wrong"
        );
    }
}

#[test]
fn insecure_sessions_run_unsealed() {
    let mut s2r = Link::clean(Duration::from_millis(1));
    let mut r2s = Link::clean(Duration::from_millis(1));
    s2r.drop = 0.05;
    let (ends, contents, sink) = secure_case(3, &[40_000, 7], &mut s2r, &mut r2s, &Sec::Insecure);
    assert_eq!(
        (ends.sender.clone(), ends.receiver.clone()),
        (Some(Ok(())), Some(Ok(())))
    );
    all_committed(&sink, &contents);
    assert_eq!(ends.sec_sender.handshakes + ends.sec_receiver.handshakes, 0);
}

#[test]
fn tampered_frames_are_dropped_counted_and_files_arrive_bit_exact() {
    let mut tags = 0;
    for seed in 0..6u64 {
        let mut s2r = Link::clean(Duration::from_millis(1));
        let mut r2s = Link::clean(Duration::from_millis(1));
        s2r.corrupt = 0.05;
        r2s.corrupt = 0.05;
        s2r.drop = 0.02;
        let (ends, contents, sink) = secure_case(
            100 + seed,
            &[200_000, 3_000],
            &mut s2r,
            &mut r2s,
            &Sec::keys(),
        );
        assert_eq!(ends.sender, Some(Ok(())), "seed {seed}");
        assert_eq!(ends.receiver, Some(Ok(())), "seed {seed}");
        all_committed(&sink, &contents);
        tags += ends.sec_receiver.tag_failures + ends.sec_sender.tag_failures;
    }
    // 5% of several hundred frames each way were bit-flipped: most in the sealed payload
    // or tag (tag failures), the rest in header fields read before decryption.
    assert!(tags > 10, "only {tags} tag failures counted");
}

#[test]
fn replayed_frames_are_dropped_and_counted() {
    let mut s2r = Link::clean(Duration::from_millis(1));
    let mut r2s = Link::clean(Duration::from_millis(1));
    s2r.dup = 0.3; // every duplicate is a replay of a sealed frame
    r2s.dup = 0.3;
    let (ends, contents, sink) = secure_case(7, &[300_000], &mut s2r, &mut r2s, &Sec::keys());
    assert_eq!(
        (ends.sender.clone(), ends.receiver.clone()),
        (Some(Ok(())), Some(Ok(())))
    );
    all_committed(&sink, &contents);
    assert!(ends.sec_receiver.replays > 5, "{:?}", ends.sec_receiver);
}

#[test]
fn unknown_sender_gets_no_answer_and_fails_clearly() {
    let k = keys::TestKeys::fixed();
    let stranger = keys::TestKeys {
        sender: std::sync::Arc::new(packetfs::secure::Identity::from_secret([0x33; 32])),
        receiver: k.receiver.clone(),
        psk: None,
    };
    let g = GuardConfig {
        hs_timeout: Duration::from_secs(3),
        ..GuardConfig::default()
    };
    let sec = Sec::Custom(stranger.sender_security(), k.receiver_security(), g);
    let mut s2r = Link::clean(Duration::from_millis(1));
    let mut r2s = Link::clean(Duration::from_millis(1));
    let (ends, _, sink) = secure_case(1, &[5000], &mut s2r, &mut r2s, &sec);
    assert_eq!(r2s.sent, 0, "the receiver sent something to a stranger");
    assert!(ends.sec_receiver.refused >= 2, "{:?}", ends.sec_receiver);
    assert_eq!(ends.sec_receiver.handshakes, 0);
    let Some(Err(f)) = &ends.sender else {
        panic!("{:?}", ends.sender)
    };
    assert_eq!(f.reason, Reason::HandshakeTimeout { ms: 3000 });
    assert!(f.to_string().contains("authorized senders"), "{f}");
    assert!(!sink.opened, "nothing allocated for a stranger");
}

#[test]
fn wrong_receiver_key_or_psk_is_refused() {
    let k = keys::TestKeys::fixed();
    let other = packetfs::secure::Identity::from_secret([0x44; 32]);
    let g = GuardConfig {
        hs_timeout: Duration::from_secs(2),
        ..GuardConfig::default()
    };
    // The sender expects another receiver key: the init's mac1 fails at the receiver.
    let wrong = Security::Sender(packetfs::secure::SenderKeys {
        identity: k.sender.clone(),
        receiver: other.public(),
        psk: None,
    });
    let sec = Sec::Custom(wrong, k.receiver_security(), g.clone());
    let mut s2r = Link::clean(Duration::from_millis(1));
    let mut r2s = Link::clean(Duration::from_millis(1));
    let (ends, _, _) = secure_case(2, &[5000], &mut s2r, &mut r2s, &sec);
    assert_eq!(r2s.sent, 0);
    assert!(
        ends.sec_receiver.mac1_failures >= 2,
        "{:?}",
        ends.sec_receiver
    );
    assert!(
        matches!(&ends.sender, Some(Err(f)) if matches!(f.reason, Reason::HandshakeTimeout { .. }))
    );
    // Another PSK: IKpsk2 mixes the PSK in after message 2's tokens, so the receiver can
    // read the init and answers (no larger than the init); the sender cannot read the
    // answer, and the receiver never sees a frame sealed with its keys.
    let mut kp = keys::TestKeys::fixed();
    kp.psk = Some([9; 32]);
    let sec = Sec::Custom(kp.sender_security(), k.receiver_security(), g);
    let mut s2r = Link::clean(Duration::from_millis(1));
    let mut r2s = Link::clean(Duration::from_millis(1));
    let (ends, _, sink) = secure_case(2, &[5000], &mut s2r, &mut r2s, &sec);
    assert!(ends.sec_sender.bad_inits >= 2, "{:?}", ends.sec_sender);
    assert!(!sink.opened);
    assert!(
        matches!(&ends.sender, Some(Err(f)) if matches!(f.reason, Reason::HandshakeTimeout { .. }))
    );
}

#[test]
fn matching_psk_works_and_rekeys_keep_the_session_going() {
    let mut k = keys::TestKeys::fixed();
    k.psk = Some([5; 32]);
    let mut g = GuardConfig::default();
    g.channel.rekey_packets = 8;
    let sec = Sec::Custom(k.sender_security(), k.receiver_security(), g);
    let mut s2r = Link::clean(Duration::from_millis(1));
    let mut r2s = Link::clean(Duration::from_millis(1));
    s2r.reorder = 0.2;
    s2r.jitter = Duration::from_millis(3);
    s2r.drop = 0.03;
    let (ends, contents, sink) = secure_case(4, &[400_000], &mut s2r, &mut r2s, &sec);
    assert_eq!(
        (ends.sender.clone(), ends.receiver.clone()),
        (Some(Ok(())), Some(Ok(())))
    );
    all_committed(&sink, &contents);
    assert!(ends.sec_sender.rekeys >= 5, "{:?}", ends.sec_sender);
    assert!(ends.sec_receiver.rekeys >= 3, "{:?}", ends.sec_receiver);
}

#[test]
fn lost_handshakes_are_retransmitted() {
    let mut s2r = Link::clean(Duration::from_millis(1));
    let mut r2s = Link::clean(Duration::from_millis(1));
    // Lose the first two inits and the first answer.
    s2r.blackhole_after = None;
    let (mut total_inits, mut ok) = (0, 0);
    for seed in 0..20u64 {
        s2r.drop = 0.5;
        r2s.drop = 0.5;
        let (ends, contents, sink) =
            secure_case(200 + seed, &[2_000], &mut s2r, &mut r2s, &Sec::keys());
        total_inits += ends.sec_sender.inits_sent;
        if ends.sender == Some(Ok(())) {
            ok += 1;
            all_committed(&sink, &contents);
        }
        s2r = Link::clean(Duration::from_millis(1));
        r2s = Link::clean(Duration::from_millis(1));
    }
    assert!(total_inits > 20, "no init was retransmitted: {total_inits}");
    assert!(
        ok >= 15,
        "only {ok} of 20 sessions finished at 50% loss each way"
    );
}

#[test]
fn a_senders_policy_limits_are_enforced_with_a_reason() {
    let sec = Sec::Keys {
        extra: "max-file=1000".into(),
        guard: GuardConfig::default(),
    };
    let mut s2r = Link::clean(Duration::from_millis(1));
    let mut r2s = Link::clean(Duration::from_millis(1));
    let (ends, _, sink) = secure_case(5, &[5000], &mut s2r, &mut r2s, &sec);
    let want = Reason::FileTooLarge {
        file: 0,
        size: 5000,
        limit: 1000,
    };
    assert_eq!(
        ends.receiver.map(|r| r.map_err(|f| f.reason)),
        Some(Err(want.clone()))
    );
    assert_eq!(
        ends.sender.map(|r| r.map_err(|f| f.reason)),
        Some(Err(want))
    );
    assert!(!sink.opened);
    let sec = Sec::Keys {
        extra: "max-session=6k".into(),
        guard: GuardConfig::default(),
    };
    let mut s2r = Link::clean(Duration::from_millis(1));
    let mut r2s = Link::clean(Duration::from_millis(1));
    let (ends, _, _) = secure_case(5, &[5000, 5000], &mut s2r, &mut r2s, &sec);
    assert!(
        matches!(&ends.receiver, Some(Err(f)) if matches!(f.reason, Reason::SessionTooLarge { limit: 6144, .. })),
        "{:?}",
        ends.receiver
    );
}

// ---- Resume and skip (issue 13), sans-IO ----

/// The blocks of `bytes` stored raw (each whole block separately), to push at any offset.
fn raw_blocks(bytes: &[u8]) -> Vec<Vec<u8>> {
    let bp = Blueprint {
        snapshot_id: SNAP_ID,
        file_len: bytes.len() as u64,
        file_hash: [0; 32],
        segments: bytes
            .chunks(30_000)
            .map(|c| Segment {
                len: c.len() as u32,
                src: Source::Raw,
            })
            .collect(),
        spill: bytes.to_vec(),
    };
    let packed = block::encode(&bp, &Default::default()).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < packed.len() {
        let n = block::body_len(&packed[at..], &Default::default())
            .unwrap()
            .unwrap() as usize;
        out.push(packed[at..at + 4 + n].to_vec());
        at += 4 + n;
    }
    out
}

/// One streamed file of `content` whose receiver holds `held` (a prefix or the whole file);
/// the producer answers the offer with `record(offer)` (a resume record's offset, `None`:
/// start over) and the matching blocks. Over a link that drops, reorders and duplicates.
fn resume_case(
    seed: u64,
    content: &[u8],
    held: (packetfs::wire::held::HeldKind, usize),
    record: &dyn Fn(Option<&packetfs::wire::held::HeldEntry>) -> Option<(u64, [u8; 32])>,
) -> (Ends, MemSink, Sender) {
    use packetfs::proto::OutgoingFile;
    use packetfs::wire::held::ResumeRecord;
    use packetfs::wire::payload::StreamEnd;
    let mut rng = Rng(seed);
    let snap = rng.bytes(32 * 1024);
    let files = vec![OutgoingFile::Streamed {
        name: "r.bin".into(),
        size: content.len() as u64,
        bound: content.len() as u64 + 64 * 1024 + StreamEnd::LEN as u64,
    }];
    let (scfg, rcfg) = cfgs();
    let mut sender = Sender::new(scfg, SNAP_ID, files).unwrap();
    let mut sink = MemSink::new();
    sink.preheld = vec![("r.bin".into(), held.0, content[..held.1].to_vec())];
    let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, sink);
    let mut s2r = Link::clean(Duration::from_millis(1));
    (s2r.drop, s2r.reorder, s2r.dup) = (0.05, 0.3, 0.05);
    let mut r2s = Link::clean(Duration::from_millis(1));
    r2s.drop = 0.05;
    let mut pushed = false;
    let hash = *blake3::hash(content).as_bytes();
    let ends = run_pair_fed(
        &mut rng,
        &mut sender,
        &mut receiver,
        &mut s2r,
        &mut r2s,
        Act::None,
        &mut |t, s| {
            if pushed {
                return None;
            }
            // The producer waits for the offers (they come with the handshake).
            let Some(offers) = s.held() else {
                return Some(t + Duration::from_millis(1));
            };
            assert!(offers.len() <= 1, "{offers:?}");
            let from = match record(offers.first()) {
                Some((at, hash)) => {
                    let rec = ResumeRecord { at, hash };
                    s.push_block(0, &rec.to_bytes()).unwrap();
                    at as usize
                }
                None => 0,
            };
            for b in raw_blocks(&content[from.min(content.len())..]) {
                s.push_block(0, &b).unwrap();
            }
            s.finish_file(0, hash).unwrap();
            pushed = true;
            None
        },
    );
    (ends, receiver.into_sink(), sender)
}

#[test]
fn a_held_prefix_is_resumed_a_whole_file_skipped_and_a_declined_offer_started_over() {
    use packetfs::wire::held::HeldKind;
    let content = Rng(77).bytes(200_000);
    let whole = *blake3::hash(&content).as_bytes();
    for seed in 0..8u64 {
        // Resumed after the prefix: only the rest travels, the file is bit-exact.
        let (ends, sink, sender) = resume_case(seed, &content, (HeldKind::Prefix, 120_000), &|e| {
            let e = e.unwrap();
            assert_eq!((e.kind, e.len), (HeldKind::Prefix, 120_000));
            assert_eq!(e.hash, *blake3::hash(&content[..120_000]).as_bytes());
            Some((e.len, e.hash))
        });
        assert_eq!(ends.sender, Some(Ok(())), "seed {seed}");
        assert_eq!(ends.receiver, Some(Ok(())), "seed {seed}");
        assert!(sink.committed(0) == Some(&content[..]), "seed {seed}");
        assert_eq!(sink.adopted, vec![(0, 120_000)]);
        // datagram bytes: the 80 000 missing bytes, headers, repairs of 5% loss
        assert!(sender.stats().bytes_sent < 110_000, "{:?}", sender.stats());

        // Held whole: nothing but the two records travels.
        let (ends, sink, sender) =
            resume_case(seed, &content, (HeldKind::Whole, content.len()), &|e| {
                let e = e.unwrap();
                assert_eq!((e.kind, e.hash), (HeldKind::Whole, whole));
                Some((e.len, e.hash))
            });
        assert_eq!(ends.receiver, Some(Ok(())), "seed {seed}");
        assert!(sink.committed(0) == Some(&content[..]));
        assert!(sender.stats().bytes_sent < 3_000, "{:?}", sender.stats());

        // Declined (the sender's file changed): started over, the held bytes void.
        let mut changed = content.clone();
        changed[10] ^= 1;
        let (ends, sink, _) = resume_case(seed, &changed, (HeldKind::Prefix, 120_000), &|_| None);
        assert_eq!(ends.receiver, Some(Ok(())), "seed {seed}");
        assert!(sink.committed(0) == Some(&changed[..]));
        assert_eq!(sink.adopted, vec![(0, 0)]);
    }
}

#[test]
fn a_forged_resume_record_is_a_protocol_error() {
    use packetfs::wire::held::HeldKind;
    let content = Rng(78).bytes(100_000);
    // A record at another offset than offered: the receiver refuses it, keeps nothing.
    let (ends, sink, _) = resume_case(1, &content, (HeldKind::Prefix, 50_000), &|e| {
        e.map(|e| (e.len + 1, e.hash))
    });
    let Some(Err(f)) = ends.receiver else {
        panic!("{:?}", ends.receiver)
    };
    assert_eq!(f.reason, Reason::Protocol);
    assert!(sink.committed(0).is_none());
    // The right offset with another hash than offered.
    let (ends, _, _) = resume_case(2, &content, (HeldKind::Prefix, 50_000), &|e| {
        e.map(|e| (e.len, [0x42; 32]))
    });
    assert!(matches!(&ends.receiver, Some(Err(f)) if f.reason == Reason::Protocol));
    // A record for a file the receiver offered nothing of.
    let (ends, _, _) = resume_case(3, &content, (HeldKind::Prefix, 0), &|e| {
        assert!(e.is_none());
        Some((1000, *blake3::hash(&content[..1000]).as_bytes()))
    });
    assert!(matches!(&ends.receiver, Some(Err(f)) if f.reason == Reason::Protocol));
}
