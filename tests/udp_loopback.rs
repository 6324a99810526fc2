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
use packetfs::secure::{Guard, GuardConfig};

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
    cfg.security = keys::TestKeys::fixed().receiver_security();
    UdpReceiver::bind(cfg).unwrap()
}

/// A sender towards `addr` with the test keys (the receiver above knows them).
fn sender_cfg(addr: std::net::SocketAddr) -> SendConfig {
    let mut cfg = SendConfig::new(addr);
    cfg.security = keys::TestKeys::fixed().sender_security();
    cfg
}

/// The inner endpoints' datagram: a 1500-byte MTU less the tag.
fn sealed_datagram() -> usize {
    packetfs::proto::datagram_for_mtu(1500) - packetfs::secure::channel::TAG_LEN
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
        let sent = run_sender(&sender_cfg(addr), files, SNAP_ID, &snap).unwrap();
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
        let mut cfg = sender_cfg(addr);
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
        let e = run_sender(&sender_cfg(addr), files, SNAP_ID, &snap).unwrap_err();
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
    let mut cfg = sender_cfg(format!("127.0.0.1:{port}").parse().unwrap());
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
            // a per-session temporary name, or the resumable one (resume is on by default)
            if names
                .iter()
                .any(|n| n.starts_with(".victim.pfs-tmp-") || n.starts_with(".victim.pfs-part-"))
            {
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

/// Drops about `permille`/1000 of an endpoint's datagrams, seeded, both ways: outgoing ones
/// are built and thrown away (never reach the socket), incoming ones are never handed on.
/// The real session loop, real clock, real sockets, with loss.
struct Lossy<E> {
    inner: E,
    rng: Rng,
    permille: u64,
    dropped: u64,
}

impl<E: packetfs::proto::Endpoint> packetfs::proto::Endpoint for Lossy<E> {
    fn handle_datagram(&mut self, now: std::time::Instant, d: &mut [u8]) -> bool {
        if self.rng.below(1000) < self.permille {
            self.dropped += 1;
            return false;
        }
        self.inner.handle_datagram(now, d)
    }
    fn handle_timeout(&mut self, now: std::time::Instant) {
        self.inner.handle_timeout(now)
    }
    fn poll_transmit(&mut self, now: std::time::Instant, buf: &mut [u8]) -> Option<usize> {
        loop {
            let n = self.inner.poll_transmit(now, buf)?;
            if self.rng.below(1000) < self.permille {
                self.dropped += 1;
                continue;
            }
            return Some(n);
        }
    }
    fn poll_timeout(&self) -> Option<std::time::Instant> {
        self.inner.poll_timeout()
    }
    fn poll_event(&mut self) -> Option<Event> {
        self.inner.poll_event()
    }
    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
    fn stats(&self) -> &packetfs::proto::Stats {
        self.inner.stats()
    }
    fn outcome(&self) -> Option<Result<(), packetfs::proto::Failure>> {
        self.inner.outcome()
    }
    fn cancel(&mut self, now: std::time::Instant) {
        self.inner.cancel(now)
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
            let rcfg = ReceiverConfig {
                max_datagram: sealed_datagram(),
                ..ReceiverConfig::default()
            };
            let mut r = Lossy {
                inner: Guard::new(
                    Receiver::new(rcfg, SNAP_ID, snap_r, sink),
                    keys::TestKeys::fixed().receiver_security(),
                    None,
                    GuardConfig::default(),
                ),
                rng: Rng(1),
                permille: 50,
                dropped: 0,
            };
            let mut io = rio;
            drive(
                &mut r,
                &mut io,
                &DriveOptions::default(),
                never_r,
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(r.outcome(), Some(Ok(())));
            r.dropped
        });
        let cfg = SenderConfig {
            session_id: 99,
            rate: Some(50_000_000),
            max_datagram: sealed_datagram(),
            ..SenderConfig::default()
        };
        let files =
            packetfs::prepare::prepare(files, Vec::new(), SNAP_ID, &snap, cfg.pack, &cfg.pack_opts)
                .unwrap();
        let mut sender = Lossy {
            inner: Guard::new(
                Sender::new(cfg, SNAP_ID, files).unwrap(),
                keys::TestKeys::fixed().sender_security(),
                Some(99),
                GuardConfig::default(),
            ),
            rng: Rng(2),
            permille: 100,
            dropped: 0,
        };
        let mut io = sio;
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
        (sender.dropped, h.join().unwrap())
    });
    eprintln!("dropped {s_drop} sender and {r_drop} receiver datagrams; all repaired");
    assert!(s_drop > 0);
    assert!(std::fs::read(out.path().join("lossy.raw")).unwrap() == c0);
    assert!(std::fs::read(out.path().join("lossy.mixed")).unwrap() == c1);
}

/// Streaming send over real sockets through the session core: the sender is a
/// [`SendSession`] built from [`SendInput::Streamed`] (its [`Feed`] takes blocks a producer
/// thread hands over late, a few milliseconds apart, the first only after the session
/// started), run by the drive loop over the UDP frame path with 5% of the sender's datagrams
/// dropped. Both files (several blocks each, one empty) arrive bit-exact under their names,
/// and the sender's first data frame left before the producer's last block (planning
/// overlapped the wire).
///
/// [`SendSession`]: packetfs::driver::session::SendSession
/// [`SendInput::Streamed`]: packetfs::driver::session::SendInput
/// [`Feed`]: packetfs::prepare::stream::Feed
#[test]
fn a_streamed_file_arrives_bit_exact_while_its_blocks_are_produced_late() {
    use packetfs::blueprint::block;
    use packetfs::driver::session::{SendInput, SendSession};
    use packetfs::driver::udp::UdpIo;
    use packetfs::driver::{drive, DriveOptions};
    use packetfs::fsink::MmapSink;
    use packetfs::prepare::stream::Item;
    use packetfs::proto::{Endpoint, OutgoingFile, Receiver, ReceiverConfig, SenderConfig};
    use packetfs::wire::payload::StreamEnd;
    use std::time::Instant;
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
            let rcfg = ReceiverConfig {
                max_datagram: sealed_datagram(),
                ..ReceiverConfig::default()
            };
            let mut r = Guard::new(
                Receiver::new(rcfg, SNAP_ID, snap_r, sink),
                keys::TestKeys::fixed().receiver_security(),
                None,
                GuardConfig::default(),
            );
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
        let producer = s.spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            for it in items {
                std::thread::sleep(Duration::from_millis(3));
                if tx.send(Ok(it)).is_err() {
                    break;
                }
            }
            Instant::now()
        });
        let cfg = SenderConfig {
            session_id: 7,
            rate: Some(50_000_000),
            ..SenderConfig::default()
        };
        let input = SendInput::Streamed {
            files: outgoing,
            blocks: rx,
            meta: Vec::new(),
            offers: None,
        };
        let sec = keys::TestKeys::fixed().sender_security();
        let session = SendSession::new(
            cfg,
            1500,
            None,
            SNAP_ID,
            input,
            Instant::now(),
            sec.clone(),
            GuardConfig::default(),
        )
        .unwrap();
        let mut feed = Lossy {
            inner: Guard::new(session.feed, sec, Some(7), GuardConfig::default()),
            rng: Rng(3),
            permille: 50,
            dropped: 0,
        };
        let mut io = sio;
        let (_, marks) = drive(
            &mut feed,
            &mut io,
            &DriveOptions::default(),
            &never,
            &mut |_| {},
        )
        .unwrap();
        assert!(feed.inner.inner_mut().take_error().is_none());
        assert_eq!(feed.outcome(), Some(Ok(())));
        assert_eq!(h.join().unwrap(), Some(Ok(())));
        let last_block = producer.join().unwrap();
        let first_data = marks.first_data.expect("data frames went out");
        assert!(
            first_data < last_block,
            "the first data frame left before the producer handed its last block"
        );
        assert!(feed.dropped > 0);
    });
    for (i, c) in contents.iter().enumerate() {
        let got = std::fs::read(out.path().join(format!("streamed-{i}"))).unwrap();
        assert!(got == *c, "file {i} differs");
    }
}
