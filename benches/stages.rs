//! The receiver's per-frame stages, each in ns/frame next to memcpy of the same payload bytes
//! measured in the same run (`cargo bench --bench stages`, plain timing, no harness).
//! Nothing about speed is asserted: the ratios are printed.
//!
//! Frames are built by a real `Sender` (one file, every frame a full data frame):
//! - `raw`: a file of random bytes, sent direct (pieces of raw bytes);
//! - `covered`: a file of 4 KiB snapshot segments sent direct (`PackPolicy::Never`): each
//!   frame carries snapshot pieces that expand to many file bytes.
//!
//! Stages (raw frames unless said otherwise):
//! - `memcpy`: the baseline, each frame's payload copied to its file offset in memory that
//!   was touched before;
//! - `parse`: `Frame::parse` (header, CRC32C) and a walk over the gram's pieces;
//! - `open`: `secure::channel::Opener::open` (AES-256-GCM in place, replay window), the
//!   opener a `Guard` holds, on frames sealed by its `Sealer`; and the cipher's own bound:
//!   one sealed frame copied into a buffer that stays in L1 and opened there
//!   (`AeadKey::open_only`), as many times as the file has frames;
//! - `apply`: each piece written to its file offset through `MemSink` (fresh memory: page
//!   faults included) and into memory touched before;
//! - `hash`: BLAKE3 of the file bytes, fed per frame and in 256 KiB steps (what the receiver
//!   does);
//! - `ack`: the range bookkeeping per piece (`RangeSet::contains`, `insert`, `first_gap`);
//! - `receiver`: the whole `Receiver::handle_datagram` (raw, covered; plain and with
//!   `Opener::open` first), with the output's open and its page population included or not,
//!   each with the files' BLAKE3 inline and on the session's hashing thread
//!   (`ReceiverConfig::hash_thread` Off and Always, interleaved rep by rep). Beside the wall
//!   time of the data frames, the state machine thread's own CPU time
//!   (`CLOCK_THREAD_CPUTIME_ID`): with the hashing thread on a core of its own, what one
//!   core spends per frame.
//!
//! Parameters: `PFS_STAGES_MB` (file size, default 64), `PFS_STAGES_REPS` (repetitions; the
//! median is printed, default 5), `PFS_STAGES_ONLY` (row groups, comma-separated: `parse`,
//! `open`, `apply`, `hash`, `ack`, `receiver-raw`, `receiver-raw-sealed`, `receiver-covered`,
//! `receiver-covered-sealed`; the memcpy baseline always runs) and
//! `PFS_STAGES_HASH` (`inline` or `thread`: one of the receiver's hash modes). Each row handles the whole file once: GB/s of file bytes
//! compares the raw rows with the covered ones, whose frames carry far more file bytes.

use packetfs::blueprint::Blueprint;
use packetfs::proto::rangeset::RangeSet;
use packetfs::proto::sink::SinkFile;
use packetfs::proto::{
    Endpoint, FileSink, HashThread, MemSink, PackPolicy, Receiver, ReceiverConfig, SendFile,
    Sender, SenderConfig,
};
use packetfs::secure::channel::{
    ChannelConfig, Initiator, Opener, Responder, Sealer, INIT_NOISE_LEN, RESP_NOISE_LEN, TAG_LEN,
};
use packetfs::secure::Identity;
use packetfs::wire::payload::{Frame, Payload, Piece};
#[path = "../tests/common/mod.rs"]
mod common;

use common::{bench_timing as timing, covered_file, env_usize as env, raw_blueprint, Rng, SNAP_ID};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// A raw file, or one of 4 KiB snapshot segments (id/xor/add).
fn blueprint(rng: &mut Rng, snap: &[u8], len: usize, raw: bool) -> Blueprint {
    if raw {
        raw_blueprint(rng.words(len))
    } else {
        covered_file(rng, snap, len).1
    }
}

/// A receiver run's inputs: the Hello, the data frames, the opener of sealed ones.
type Prepared = (Vec<u8>, Vec<Vec<u8>>, Option<Opener>);

/// One session's frames as a sender builds them: the Hello, then the data frames.
struct Session {
    hello: Vec<u8>,
    data: Vec<Vec<u8>>,
}

fn session(snap: &[u8], bp: Blueprint, sealed: bool) -> Session {
    let scfg = SenderConfig {
        timing: timing(),
        rate: Some(1 << 50),
        window_frames: u64::MAX / 4,
        pack: PackPolicy::Never,
        frame_crc: !sealed,
        ..SenderConfig::default()
    };
    let files = vec![SendFile {
        name: "b".into(),
        blueprint: bp,
    }];
    let files =
        packetfs::prepare::prepare(files, Vec::new(), SNAP_ID, snap, scfg.pack, &scfg.pack_opts)
            .unwrap();
    let mut sender = Sender::new(scfg, SNAP_ID, files).unwrap();
    let mut receiver = Receiver::new(rcfg(), SNAP_ID, snap, MemSink::new());
    let t0 = Instant::now();
    let mut buf = vec![0u8; 2048];
    let n = sender.poll_transmit(t0, &mut buf).unwrap();
    let hello = buf[..n].to_vec();
    receiver.handle_datagram(t0, &mut hello.clone());
    let n = receiver.poll_transmit(t0, &mut buf).unwrap();
    sender.handle_datagram(t0, &mut buf[..n]);
    let mut data = Vec::new();
    let mut t = t0;
    loop {
        t += Duration::from_millis(1);
        match sender.poll_transmit(t, &mut buf) {
            Some(n) if buf[5] == 3 => data.push(buf[..n].to_vec()),
            Some(_) => {}
            None => break,
        }
    }
    Session { hello, data }
}

fn rcfg() -> ReceiverConfig {
    ReceiverConfig {
        timing: timing(),
        ..ReceiverConfig::default()
    }
}

/// This thread's CPU time so far, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safety: `ts` is a valid timespec to write; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// A sealer and an opener for one direction, from a real handshake.
fn channel() -> (Sealer, Opener) {
    let (s, r) = (
        Identity::from_secret([7; 32]),
        Identity::from_secret([8; 32]),
    );
    let mut m1 = [0u8; INIT_NOISE_LEN];
    let init = Initiator::start(&s, &r.public(), &[0; 32], 1, 1, &mut m1).unwrap();
    let resp = Responder::read_init(&r, &[0; 32], &m1).unwrap();
    let mut m2 = [0u8; RESP_NOISE_LEN];
    let rk = resp.respond(&mut m2).unwrap();
    let sk = init.finish(&m2).unwrap();
    let t = Instant::now();
    let (seal, _) = sk.into_channel(&ChannelConfig::default(), t);
    let (_, open) = rk.into_channel(&ChannelConfig::default(), t);
    (seal, open)
}

/// Seal every frame of `s` (Hello first) with one sealer.
fn seal_all(seal: &mut Sealer, s: &Session) -> (Vec<u8>, Vec<Vec<u8>>) {
    let t = Instant::now();
    let mut one = |f: &Vec<u8>| {
        let mut b = f.clone();
        b.resize(f.len() + TAG_LEN, 0);
        let n = seal.seal(t, &mut b, f.len()).unwrap();
        b.truncate(n);
        b
    };
    (one(&s.hello), s.data.iter().map(&mut one).collect())
}

/// (file offset, payload bytes) of every raw piece of every frame.
fn raw_pieces(frames: &[Vec<u8>]) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    for f in frames {
        let Payload::Data(g) = Frame::parse(f).unwrap().payload else {
            panic!("not a data frame")
        };
        for run in g.runs() {
            for (off, p) in run.pieces() {
                if let Piece::Raw(b) = p {
                    out.push((off as usize, b.to_vec()));
                }
            }
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Time `f` `reps` times (after `setup` each time, untimed); the median in seconds.
fn time<T>(reps: usize, mut setup: impl FnMut() -> T, mut f: impl FnMut(T)) -> f64 {
    median(
        (0..reps)
            .map(|_| {
                let x = setup();
                let t = Instant::now();
                f(x);
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Drive a receiver over frames; `open` opens each sealed frame first. Returns (seconds of
/// the data frames, seconds of the Hello: the output's open included, this thread's CPU
/// seconds over the data frames).
fn drive(
    snap: &[u8],
    hello: &[u8],
    frames: &[Vec<u8>],
    mut open: Option<Opener>,
    populate: bool,
    hash_thread: HashThread,
) -> (f64, f64, f64) {
    let mut sink = MemSink::new();
    sink.populate = populate;
    let cfg = ReceiverConfig {
        hash_thread,
        ..rcfg()
    };
    let mut r = Receiver::new(cfg, SNAP_ID, snap, sink);
    let mut frames = frames.to_vec();
    let mut hello = hello.to_vec();
    let t0 = Instant::now();
    if let Some(o) = open.as_mut() {
        o.open(t0, &mut hello).unwrap();
    }
    r.handle_datagram(t0, &mut hello);
    let t1 = Instant::now();
    let c1 = thread_cpu();
    for f in frames.iter_mut() {
        if let Some(o) = open.as_mut() {
            if o.open(t0, f).is_err() {
                panic!("open failed");
            }
        }
        r.handle_datagram(t0, f);
    }
    let c2 = thread_cpu();
    let t2 = Instant::now();
    assert_eq!(r.outcome(), Some(Ok(())));
    ((t2 - t1).as_secs_f64(), (t1 - t0).as_secs_f64(), c2 - c1)
}

fn main() {
    let mb = env("PFS_STAGES_MB", 64);
    let reps = env("PFS_STAGES_REPS", 5).max(1);
    // Row groups to run (comma-separated: parse, open, apply, hash, ack, receiver-raw,
    // receiver-raw-sealed, receiver-covered, receiver-covered-sealed; unset: all) and the
    // receiver's hash modes (inline or thread; unset: both). The memcpy baseline always runs.
    let only: Vec<String> = std::env::var("PFS_STAGES_ONLY")
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    let want = |group: &str| only.is_empty() || only.iter().any(|o| o == group);
    let hash_modes = std::env::var("PFS_STAGES_HASH").unwrap_or_default();
    let len = mb << 20;
    let mut rng = Rng(31);
    let snap = rng.bytes(64 << 20);
    let raw = session(&snap, blueprint(&mut rng, &snap, len, true), false);
    let n = raw.data.len();
    let pieces = raw_pieces(&raw.data);
    let payload: usize = pieces.iter().map(|p| p.1.len()).sum();
    let wire: usize = raw.data.iter().map(|f| f.len()).sum();
    println!(
        "stages: {mb} MiB raw file, {n} full data frames ({} B each on average, {} B of file bytes), {reps} reps, medians",
        wire / n,
        payload / n
    );
    let mut rows: Vec<(String, f64, usize)> = Vec::new();

    // The baseline: memcpy of each frame's payload to its offset, in touched memory.
    let mut dst = vec![1u8; len];
    let base = time(
        reps,
        || (),
        |()| {
            for (off, b) in &pieces {
                dst[*off..*off + b.len()].copy_from_slice(b);
            }
            black_box(&dst);
        },
    );
    rows.push(("memcpy (baseline)".into(), base, n));

    if want("parse") {
        let parse = time(
            reps,
            || (),
            |()| {
                for f in &raw.data {
                    let fr = Frame::parse(f).unwrap();
                    if let Payload::Data(g) = fr.payload {
                        for run in g.runs() {
                            for (off, p) in run.pieces() {
                                black_box((off, p.len()));
                            }
                        }
                    }
                }
            },
        );
        rows.push(("parse (header, CRC32C, pieces)".into(), parse, n));
    }

    if want("open") {
        let open = {
            // One handshake per rep: each opener starts with an empty replay window.
            let sets: Vec<(Opener, Vec<Vec<u8>>)> = (0..reps)
                .map(|_| {
                    let (mut s, o) = channel();
                    (o, seal_all(&mut s, &raw).1)
                })
                .collect();
            let mut sets = sets.into_iter();
            time(
                reps,
                || sets.next().unwrap(),
                |(mut o, mut frames)| {
                    let t = Instant::now();
                    for f in frames.iter_mut() {
                        assert!(o.open(t, f).is_ok());
                    }
                },
            )
        };
        rows.push(("open (AES-256-GCM, replay window)".into(), open, n));
        // The bound of the keyed rows: AES-256-GCM alone on one frame that stays in L1
        // (copied in, opened without the replay window), every frame of the file's count.
        let open3 = {
            let (mut s, o) = channel();
            let frames = seal_all(&mut s, &raw).1;
            let key = o.current().3;
            let f0 = frames[7].clone();
            let mut scratch = vec![0u8; 4096];
            time(
                reps,
                || (),
                |()| {
                    for _ in 0..n {
                        let b = &mut scratch[..f0.len()];
                        b.copy_from_slice(&f0);
                        assert!(key.open_only(b).is_ok());
                        black_box(&b[100]);
                    }
                },
            )
        };
        rows.push((
            "open, one frame kept in L1 (copy + AES-GCM)".into(),
            open3,
            n,
        ));
    }

    if want("apply") {
        for (populate, label) in [
            (false, "apply, MemSink, fresh memory"),
            (true, "apply, MemSink, populated at open"),
        ] {
            let apply = time(
                reps,
                || {
                    let mut s = MemSink::new();
                    s.populate = populate;
                    s.open(&[SinkFile::file("b", len as u64)]).unwrap();
                    s
                },
                |mut s| {
                    for (off, b) in &pieces {
                        s.write_raw(0, *off as u64, b).unwrap();
                    }
                    black_box(s.contents(0));
                },
            );
            rows.push((label.into(), apply, n));
        }
    }

    if want("hash") {
        let file = dst.clone();
        let hash_frame = time(
            reps,
            || (),
            |()| {
                let mut h = blake3::Hasher::new();
                for (off, b) in &pieces {
                    h.update(&file[*off..*off + b.len()]);
                }
                black_box(h.finalize());
            },
        );
        rows.push(("hash, BLAKE3 per frame".into(), hash_frame, n));
        let hash_step = time(
            reps,
            || (),
            |()| {
                let mut h = blake3::Hasher::new();
                for c in file.chunks(256 << 10) {
                    h.update(c);
                }
                black_box(h.finalize());
            },
        );
        rows.push(("hash, BLAKE3 in 256 KiB steps".into(), hash_step, n));
        let depth = packetfs::util::hash_depth();
        let hash_par = time(
            reps,
            || (),
            |()| {
                black_box(packetfs::util::parallel_blake3(&file, depth));
            },
        );
        rows.push((
            format!("hash, util::parallel_blake3 (depth {depth}, all cores)"),
            hash_par,
            n,
        ));
    }

    if want("ack") {
        let ack = time(
            reps,
            || (),
            |()| {
                let mut set = RangeSet::new();
                for (off, b) in &pieces {
                    let (s, e) = (*off as u64, (*off + b.len()) as u64);
                    if !set.contains(s, e) {
                        black_box(set.insert(s, e));
                    }
                    black_box(set.first_gap(0));
                }
            },
        );
        rows.push(("ack bookkeeping (RangeSet)".into(), ack, n));
    }

    let add_receiver =
        |rows: &mut Vec<(String, f64, usize)>, label: &str, s: &Session, sealed: bool| {
            // Prepared (sealed: by a fresh channel) right before each drive, untimed.
            let prep = || -> Prepared {
                if sealed {
                    let (mut se, o) = channel();
                    let (h, d) = seal_all(&mut se, s);
                    (h, d, Some(o))
                } else {
                    (s.hello.clone(), s.data.clone(), None)
                }
            };
            let modes: Vec<(HashThread, &str)> = [
                (HashThread::Off, "hash inline"),
                (HashThread::Always, "hash thread"),
            ]
            .into_iter()
            .filter(|(_, how)| hash_modes.is_empty() || how.ends_with(hash_modes.as_str()))
            .collect();
            for populate in [false, true] {
                let mut data = vec![Vec::new(); modes.len()];
                let mut whole = vec![Vec::new(); modes.len()];
                let mut cpu = vec![Vec::new(); modes.len()];
                for _ in 0..reps {
                    // The two modes rep by rep (the machine is noisy).
                    for (m, (ht, _)) in modes.iter().enumerate() {
                        let (h, d, o) = prep();
                        let (a, b, c) = drive(&snap, &h, &d, o, populate, *ht);
                        data[m].push(a);
                        whole[m].push(a + b);
                        cpu[m].push(c);
                    }
                }
                let what = if populate {
                    "output populated at open"
                } else {
                    "fresh output"
                };
                for (m, (_, how)) in modes.iter().enumerate() {
                    let n = s.data.len();
                    rows.push((
                        format!("receiver, {label}, {what}, {how}: data frames"),
                        median(std::mem::take(&mut data[m])),
                        n,
                    ));
                    rows.push((
                        format!("receiver, {label}, {what}, {how}: state machine thread CPU"),
                        median(std::mem::take(&mut cpu[m])),
                        n,
                    ));
                    rows.push((
                        format!("receiver, {label}, {what}, {how}: open + data frames"),
                        median(std::mem::take(&mut whole[m])),
                        n,
                    ));
                }
            }
        };
    if want("receiver-raw") {
        add_receiver(&mut rows, "raw", &raw, false);
    }
    if want("receiver-raw-sealed") {
        add_receiver(&mut rows, "raw, sealed (open + receive)", &raw, true);
    }
    if want("receiver-covered") || want("receiver-covered-sealed") {
        let cov = session(&snap, blueprint(&mut rng, &snap, len, false), false);
        println!(
            "covered file: {} full data frames for {mb} MiB ({} file bytes per frame)",
            cov.data.len(),
            len / cov.data.len().max(1)
        );
        if want("receiver-covered") {
            add_receiver(&mut rows, "covered", &cov, false);
        }
        if want("receiver-covered-sealed") {
            add_receiver(&mut rows, "covered, sealed (open + receive)", &cov, true);
        }
    }

    let base_ns = base * 1e9 / n as f64;
    for (label, secs, frames) in rows {
        let ns = secs * 1e9 / frames as f64;
        println!(
            "{label:<92} {ns:>9.1} ns/frame {:>6.2} M frames/s {:>5.2} GB/s of file bytes {:>7.2}x memcpy",
            1e3 / ns,
            len as f64 / secs / 1e9,
            ns / base_ns
        );
    }
}
