//! The UDP driver over 127.0.0.1: real sockets, real clock, two threads (or two processes).
//! No assertion depends on timing; figures are printed.

use packetfs::driver::udp::{run_sender, DriverError, RecvConfig, SendConfig, UdpReceiver};
use packetfs::proto::{Event, Reason, SendFile};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

mod common;
use common::*;

fn snapshot(seed: u64) -> Vec<u8> {
    Rng(seed).bytes(1 << 20)
}

/// Several files: empty, one byte, raw, mostly covered, in a subdirectory.
fn session(snap: &[u8]) -> (Vec<Vec<u8>>, Vec<SendFile>) {
    let mut rng = Rng(77);
    let mut contents = Vec::new();
    let mut files = Vec::new();
    for (name, len) in [
        ("empty", 0usize),
        ("one", 1),
        ("mixed.bin", 2_000_000),
        ("d/e/f", 300_000),
    ] {
        let (c, bp) = make_file(&mut rng, snap, len);
        contents.push(c);
        files.push(SendFile {
            name: name.into(),
            blueprint: bp,
        });
    }
    let (c, f) = raw_file(&mut rng, "random.raw", 3_000_000);
    contents.push(c);
    files.push(f);
    (contents, files)
}

fn receiver(out: &Path) -> UdpReceiver {
    let mut cfg = RecvConfig::new("127.0.0.1:0".parse().unwrap(), out.to_path_buf());
    cfg.listen_timeout = Some(Duration::from_secs(20));
    UdpReceiver::bind(cfg).unwrap()
}

#[test]
fn several_files_arrive_bit_exact_over_loopback() {
    let snap = snapshot(1);
    let (contents, files) = session(&snap);
    let names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
    let out = tempfile::tempdir().unwrap();
    let rx = receiver(out.path());
    let addr = rx.local_addr().unwrap();
    std::thread::scope(|s| {
        let snap_r = &snap;
        let h = s.spawn(move || {
            let mut events = Vec::new();
            let r = rx.run(SNAP_ID, snap_r, &AtomicBool::new(false), &mut |e| {
                events.push(e.clone())
            });
            (r, events)
        });
        let sent = run_sender(&SendConfig::new(addr), files, SNAP_ID, &snap).unwrap();
        let (got, events) = h.join().unwrap();
        let got = got.unwrap();
        eprintln!(
            "udp loopback: {} files, {} file bytes, {} wire bytes, {} frames, {} repairs, {:?}, {:.0} Mbit/s effective",
            sent.files,
            sent.file_bytes,
            sent.wire_bytes,
            sent.frames,
            sent.retransmissions,
            sent.elapsed,
            sent.effective_bps() / 1e6
        );
        assert_eq!(got.files.len(), contents.len());
        assert!(got.files.iter().all(|f| f.verified));
        assert!(events.contains(&Event::Finished));
        assert_eq!(sent.file_bytes, got.file_bytes);
    });
    for (name, c) in names.iter().zip(&contents) {
        let bytes = std::fs::read(out.path().join(name)).unwrap();
        assert!(bytes == *c, "{name} differs");
    }
}

#[test]
fn rate_cap_holds_and_files_arrive() {
    let snap = snapshot(2);
    let mut rng = Rng(5);
    let (c, f) = raw_file(&mut rng, "capped", 2_000_000);
    let out = tempfile::tempdir().unwrap();
    let rx = receiver(out.path());
    let addr = rx.local_addr().unwrap();
    std::thread::scope(|s| {
        let snap_r = &snap;
        let h = s.spawn(move || rx.run(SNAP_ID, snap_r, &AtomicBool::new(false), &mut |_| {}));
        let mut cfg = SendConfig::new(addr);
        cfg.rate = Some(20_000_000); // 160 Mbit/s link budget
        let sent = run_sender(&cfg, vec![f], SNAP_ID, &snap).unwrap();
        h.join().unwrap().unwrap();
        // Printed, not asserted: wall-clock figures depend on the machine's load.
        eprintln!(
            "udp loopback at a 160 Mbit/s cap: {:.1} Mbit/s on the wire, {:?}",
            sent.wire_bps() / 1e6,
            sent.elapsed
        );
    });
    assert!(std::fs::read(out.path().join("capped")).unwrap() == c);
}

#[test]
fn snapshot_mismatch_is_reported_by_both_drivers() {
    let snap = snapshot(3);
    let mut rng = Rng(9);
    let (_, bp) = make_file(&mut rng, &snap, 1000);
    let out = tempfile::tempdir().unwrap();
    let rx = receiver(out.path());
    let addr = rx.local_addr().unwrap();
    std::thread::scope(|s| {
        let snap_r = &snap;
        let h = s.spawn(move || rx.run([1; 32], snap_r, &AtomicBool::new(false), &mut |_| {}));
        let files = vec![SendFile {
            name: "x".into(),
            blueprint: bp,
        }];
        let e = run_sender(&SendConfig::new(addr), files, SNAP_ID, &snap).unwrap_err();
        let DriverError::SendAborted { failure, .. } = e else {
            panic!("{e}")
        };
        assert!(failure.by_peer);
        assert_eq!(
            failure.reason,
            Reason::SnapshotMismatch {
                sender: SNAP_ID,
                receiver: [1; 32]
            }
        );
        let e = h.join().unwrap().unwrap_err();
        let DriverError::RecvAborted { failure: rf, .. } = e else {
            panic!("{e}")
        };
        assert_eq!(rf.reason, failure.reason);
        eprintln!("both sides: {}", rf.reason);
    });
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

const CHILD_ENV: &str = "PFS_TEST_CHILD_RECEIVER_DIR";

/// Not a test of its own: the body of the child process of the next test (it returns at once
/// unless that test started it).
#[test]
fn child_receiver_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let snap = snapshot(4);
    let rx = receiver(Path::new(&dir));
    println!("PORT {}", rx.local_addr().unwrap().port());
    let _ = rx.run(SNAP_ID, &snap, &AtomicBool::new(false), &mut |_| {});
    std::process::exit(0);
}

#[test]
fn receiver_killed_mid_transfer_leaves_no_file_under_the_final_name() {
    let out = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_receiver_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, out.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest prints "test child_receiver_process ... " before the child's own output.
        if let Some(i) = line.find("PORT ") {
            port = Some(line[i + 5..].trim().parse::<u16>().unwrap());
            break;
        }
    }
    let port = port.expect("the child printed its port");
    let snap = snapshot(4);
    let mut rng = Rng(6);
    let (_, f) = raw_file(&mut rng, "victim", 8_000_000);
    let mut cfg = SendConfig::new(format!("127.0.0.1:{port}").parse().unwrap());
    cfg.rate = Some(4_000_000); // about 2 s of transfer
    cfg.proto.timing.idle_timeout = Duration::from_secs(1);
    std::thread::scope(|s| {
        let snap_s = &snap;
        let h = s.spawn(move || run_sender(&cfg, vec![f], SNAP_ID, snap_s));
        // Wait (bounded) for the temporary file, then kill the receiver mid-transfer.
        let mut seen = false;
        for _ in 0..400 {
            let names: Vec<String> = std::fs::read_dir(out.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            if names.iter().any(|n| n.starts_with(".victim.pfs-tmp-")) {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(seen, "the receiver never created its temporary file");
        std::thread::sleep(Duration::from_millis(200));
        child.kill().unwrap(); // SIGKILL: no destructor runs
        child.wait().unwrap();
        let e = h.join().unwrap().unwrap_err();
        let DriverError::SendAborted { failure, .. } = e else {
            panic!("{e}")
        };
        assert!(
            matches!(failure.reason, Reason::Timeout { .. }),
            "{failure}"
        );
    });
    assert!(
        !out.path().join("victim").exists(),
        "a partial file appeared under the final name"
    );
}

/// A figure, not a check: raw goodput of the UDP driver over loopback. Run with
/// `cargo test --release --test udp_loopback -- --ignored --nocapture bench` (size from
/// PFS_BENCH_MB, default 200; rate cap from PFS_BENCH_RATE, e.g. `1gbit`).
#[test]
#[ignore]
fn bench_loopback_raw_goodput() {
    let mb: usize = std::env::var("PFS_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rate = std::env::var("PFS_BENCH_RATE")
        .ok()
        .and_then(|v| packetfs::proto::pacing::parse_rate(&v));
    let snap = snapshot(8);
    let mut rng = Rng(8);
    // PFS_BENCH_COVERED: every byte from the snapshot, the wire carries descriptors only.
    let f = if std::env::var_os("PFS_BENCH_COVERED").is_some() {
        SendFile {
            name: "bench.covered".into(),
            blueprint: covered(&snap, mb << 20),
        }
    } else {
        raw_file(&mut rng, "bench.raw", mb << 20).1
    };
    let out = tempfile::tempdir().unwrap();
    let rx = receiver(out.path());
    let addr = rx.local_addr().unwrap();
    std::thread::scope(|s| {
        let snap_r = &snap;
        let t0 = std::time::Instant::now();
        let h = s.spawn(move || {
            let mut marks = Vec::new();
            let r = rx.run(SNAP_ID, snap_r, &AtomicBool::new(false), &mut |e| {
                if !matches!(e, Event::Progress { .. }) {
                    marks.push(format!("{:?} at {:?}", e, t0.elapsed()));
                }
            });
            eprintln!("receiver events: {marks:?}, returned at {:?}", t0.elapsed());
            r
        });
        let mut cfg = SendConfig::new(addr);
        cfg.rate = rate;
        if let Some(ms) = std::env::var("PFS_BENCH_BURST_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            cfg.proto.burst_time = Duration::from_millis(ms);
        }
        let mut marks = Vec::new();
        let sent = packetfs::driver::udp::run_sender_with(
            &cfg,
            vec![f],
            SNAP_ID,
            &snap,
            &AtomicBool::new(false),
            &mut |e| {
                if !matches!(e, Event::Progress { .. }) {
                    marks.push(format!("{:?} at {:?}", e, t0.elapsed()));
                }
            },
        )
        .unwrap();
        eprintln!("sender events: {marks:?}, returned at {:?}", t0.elapsed());
        let got = h.join().unwrap().unwrap();
        eprintln!(
            "bench: {} MiB {} over UDP loopback: sender {:?} {:.0} Mbit/s goodput, {:.0} Mbit/s wire, {} frames, {} repair frames, final rate {:.0} Mbit/s; receiver {:?}, {} duplicates",
            mb,
            if std::env::var_os("PFS_BENCH_COVERED").is_some() {
                "snapshot-covered"
            } else {
                "raw"
            },
            sent.elapsed,
            sent.effective_bps() / 1e6,
            sent.wire_bps() / 1e6,
            sent.frames,
            sent.retransmissions,
            sent.final_rate as f64 * 8.0 / 1e6,
            got.elapsed,
            got.duplicate_frames
        );
    });
}

/// Drops every datagram whose running count hits the seeded pattern (about `permille`/1000),
/// both ways: the real driver loop, real clock, real sockets, with loss.
struct Lossy<D> {
    inner: D,
    rng: Rng,
    permille: u64,
    dropped: u64,
}

impl<D: packetfs::driver::DatagramIo> packetfs::driver::DatagramIo for Lossy<D> {
    fn send(&mut self, d: &[u8]) -> std::io::Result<()> {
        if self.rng.below(1000) < self.permille {
            self.dropped += 1;
            return Ok(());
        }
        self.inner.send(d)
    }
    fn recv(
        &mut self,
        buf: &mut [u8],
        deadline: Option<std::time::Instant>,
    ) -> std::io::Result<Option<usize>> {
        self.inner.recv(buf, deadline)
    }
    fn accept_peer(&mut self) {
        self.inner.accept_peer()
    }
}

#[test]
fn the_driver_loop_repairs_loss_on_real_sockets() {
    use packetfs::driver::udp::UdpIo;
    use packetfs::driver::{drive, DriveOptions};
    use packetfs::fsink::MmapSink;
    use packetfs::proto::{Endpoint, Receiver, ReceiverConfig, Sender, SenderConfig};
    let snap = snapshot(12);
    let mut rng = Rng(12);
    let (c0, f0) = raw_file(&mut rng, "lossy.raw", 1_500_000);
    let (c1, b1) = make_file(&mut rng, &snap, 800_000);
    let files = vec![
        f0,
        SendFile {
            name: "lossy.mixed".into(),
            blueprint: b1,
        },
    ];
    let out = tempfile::tempdir().unwrap();
    let rio = UdpIo::bind("127.0.0.1:0".parse().unwrap(), None, 4 << 20).unwrap();
    let addr = rio.local_addr().unwrap();
    let sio = UdpIo::bind("127.0.0.1:0".parse().unwrap(), Some(addr), 4 << 20).unwrap();
    let never = AtomicBool::new(false);
    let (s_drop, r_drop) = std::thread::scope(|s| {
        let snap_r = &snap;
        let never_r = &never;
        let out_r = out.path();
        let h = s.spawn(move || {
            let sink = MmapSink::new(out_r, "lossy").unwrap();
            let mut r = Receiver::new(ReceiverConfig::default(), SNAP_ID, snap_r, sink);
            let mut io = Lossy {
                inner: rio,
                rng: Rng(1),
                permille: 50,
                dropped: 0,
            };
            drive(
                &mut r,
                &mut io,
                &DriveOptions::default(),
                never_r,
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(r.outcome(), Some(Ok(())));
            io.dropped
        });
        let cfg = SenderConfig {
            session_id: 99,
            rate: Some(50_000_000),
            ..SenderConfig::default()
        };
        let files =
            packetfs::prepare::prepare(files, SNAP_ID, &snap, cfg.pack, &cfg.pack_opts).unwrap();
        let mut sender = Sender::new(cfg, SNAP_ID, files).unwrap();
        let mut io = Lossy {
            inner: sio,
            rng: Rng(2),
            permille: 100,
            dropped: 0,
        };
        drive(
            &mut sender,
            &mut io,
            &DriveOptions::default(),
            &never,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(sender.outcome(), Some(Ok(())));
        assert!(sender.stats().repair_frames > 0);
        (io.dropped, h.join().unwrap())
    });
    eprintln!("dropped {s_drop} sender and {r_drop} receiver datagrams; all repaired");
    assert!(s_drop > 0);
    assert!(std::fs::read(out.path().join("lossy.raw")).unwrap() == c0);
    assert!(std::fs::read(out.path().join("lossy.mixed")).unwrap() == c1);
}

/// A file of `len` bytes made of 4 KiB snapshot segments (id/xor/add), no spill.
fn covered(snap: &[u8], len: usize) -> packetfs::blueprint::Blueprint {
    use packetfs::blueprint::{apply, Blueprint, Segment, Source, Transform};
    let mut rng = Rng(10);
    let mut content = Vec::with_capacity(len);
    let mut segments = Vec::new();
    while content.len() < len {
        let n = 4096.min(len - content.len());
        let off = rng.below((snap.len() - n) as u64) as usize;
        let op = Transform::ALL[rng.below(3) as usize];
        let imm = if op == Transform::Id {
            0
        } else {
            rng.next() as u8
        };
        let mut dst = vec![0u8; n];
        apply::transform(op, imm, &snap[off..off + n], &mut dst);
        content.extend_from_slice(&dst);
        segments.push(Segment {
            len: n as u32,
            src: Source::Snap {
                op,
                off: off as u64,
                imm,
            },
        });
    }
    Blueprint {
        snapshot_id: SNAP_ID,
        file_len: len as u64,
        file_hash: *blake3::hash(&content).as_bytes(),
        segments,
        spill: vec![],
    }
}

/// Streaming send over real sockets: the sender runs as a [`Feed`] whose blocks a producer
/// thread hands over late (a few milliseconds apart, the first only after the session
/// started), through the UDP driver, with 5% of the sender's datagrams dropped. Both files
/// (several blocks each, one empty) arrive bit-exact under their names.
///
/// [`Feed`]: packetfs::prepare::stream::Feed
#[test]
fn a_streamed_file_arrives_bit_exact_while_its_blocks_are_produced_late() {
    use packetfs::blueprint::block;
    use packetfs::driver::udp::UdpIo;
    use packetfs::driver::{drive, DriveOptions};
    use packetfs::fsink::MmapSink;
    use packetfs::prepare::stream::{Feed, Item};
    use packetfs::proto::{Endpoint, OutgoingFile, Receiver, ReceiverConfig, Sender, SenderConfig};
    use packetfs::wire::payload::StreamEnd;
    let snap = snapshot(21);
    let mut rng = Rng(21);
    let opts = block::EncodeOptions {
        spill_per_block: 16 << 10,
        file_per_block: 64 << 10,
        ..Default::default()
    };
    let mut contents = Vec::new();
    let mut outgoing = Vec::new();
    let mut items = Vec::new();
    for (i, len) in [700_000usize, 0].into_iter().enumerate() {
        let (c, bp) = make_file_with(&mut rng, &snap, len, true);
        let packed = block::encode(&bp, &opts).unwrap();
        let mut at = 0;
        while at < packed.len() {
            let n = block::body_len(&packed[at..], &Default::default())
                .unwrap()
                .unwrap() as usize;
            items.push(Item::Blocks {
                file: i,
                bytes: packed[at..at + 4 + n].to_vec(),
            });
            at += 4 + n;
        }
        items.push(Item::Finished {
            file: i,
            hash: bp.file_hash,
        });
        outgoing.push(OutgoingFile::Streamed {
            name: format!("streamed-{i}"),
            size: len as u64,
            bound: (packed.len() + StreamEnd::LEN + 4096) as u64,
        });
        contents.push(c);
    }
    assert!(items.len() > 8, "several blocks");
    let out = tempfile::tempdir().unwrap();
    let rio = UdpIo::bind("127.0.0.1:0".parse().unwrap(), None, 4 << 20).unwrap();
    let addr = rio.local_addr().unwrap();
    let sio = UdpIo::bind("127.0.0.1:0".parse().unwrap(), Some(addr), 4 << 20).unwrap();
    let never = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (snap_r, never_r, out_r) = (&snap, &never, out.path());
        let h = s.spawn(move || {
            let sink = MmapSink::new(out_r, "stream").unwrap();
            let mut r = Receiver::new(ReceiverConfig::default(), SNAP_ID, snap_r, sink);
            let mut io = rio;
            drive(
                &mut r,
                &mut io,
                &DriveOptions::default(),
                never_r,
                &mut |_| {},
            )
            .unwrap();
            r.outcome()
        });
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            for it in items {
                std::thread::sleep(Duration::from_millis(3));
                if tx.send(Ok(it)).is_err() {
                    return;
                }
            }
        });
        let cfg = SenderConfig {
            session_id: 7,
            rate: Some(50_000_000),
            ..SenderConfig::default()
        };
        let mut feed = Feed::new(Sender::new(cfg, SNAP_ID, outgoing).unwrap(), rx);
        let mut io = Lossy {
            inner: sio,
            rng: Rng(3),
            permille: 50,
            dropped: 0,
        };
        drive(
            &mut feed,
            &mut io,
            &DriveOptions::default(),
            &never,
            &mut |_| {},
        )
        .unwrap();
        assert!(feed.take_error().is_none());
        assert_eq!(feed.outcome(), Some(Ok(())));
        assert_eq!(h.join().unwrap(), Some(Ok(())));
    });
    for (i, c) in contents.iter().enumerate() {
        let got = std::fs::read(out.path().join(format!("streamed-{i}"))).unwrap();
        assert!(got == *c, "file {i} differs");
    }
}
