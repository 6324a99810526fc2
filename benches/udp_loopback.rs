//! The UDP driver over 127.0.0.1, as figures (no assertions): a raw or snapshot-covered
//! file through the session core, next to a baseline measured in the same run: the same
//! bytes as plain 1472 B UDP datagrams between two loopback sockets (no protocol, no file).
//!
//! `cargo bench --bench udp_loopback` (harness = false). PFS_BENCH_MB sets the size (default
//! 200), PFS_BENCH_RATE a rate cap (e.g. `1gbit`), PFS_BENCH_COVERED=1 sends a file the
//! snapshot covers (descriptors only on the wire), PFS_BENCH_BURST_MS the pacing burst.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use packetfs::driver::udp::{RecvConfig, SendConfig, UdpReceiver};
use packetfs::proto::{Event, SendFile};
use std::net::UdpSocket;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Plain datagrams of `dgram` bytes, `total` bytes in all, from one loopback socket to
/// another; returns the receiver's bits per second (what arrived / the receiver's time).
fn baseline(total: usize, dgram: usize) -> f64 {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let addr = rx.local_addr().unwrap();
    let n = total / dgram;
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut got = 0usize;
            let mut t0 = None;
            let mut last = Instant::now();
            while let Ok(k) = rx.recv(&mut buf) {
                t0.get_or_insert_with(Instant::now);
                got += k;
                last = Instant::now();
            }
            got as f64 * 8.0
                / last
                    .duration_since(t0.unwrap_or(last))
                    .as_secs_f64()
                    .max(1e-9)
        });
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let d = vec![0x5au8; dgram];
        for i in 0..n {
            let _ = tx.send_to(&d, addr);
            if i % 64 == 63 {
                // Let the receiver keep up: the socket buffer, not the bench, sets the loss.
                std::thread::yield_now();
            }
        }
        h.join().unwrap()
    })
}

fn main() {
    let mb: usize = std::env::var("PFS_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rate = std::env::var("PFS_BENCH_RATE")
        .ok()
        .and_then(|v| packetfs::proto::pacing::parse_rate(&v));
    let is_covered = std::env::var_os("PFS_BENCH_COVERED").is_some();
    let snap = Rng(8).bytes(1 << 20);
    let mut rng = Rng(8);
    let f = if is_covered {
        SendFile {
            name: "bench.covered".into(),
            blueprint: covered_file(&mut Rng(10), &snap, mb << 20).1,
        }
    } else {
        raw_file(&mut rng, "bench.raw", mb << 20).1
    };
    let out = tempfile::tempdir().unwrap();
    let mut rcfg = RecvConfig::new("127.0.0.1:0".parse().unwrap(), out.path().to_path_buf());
    rcfg.listen_timeout = Some(Duration::from_secs(20));
    let rx = UdpReceiver::bind(rcfg).unwrap();
    let addr = rx.local_addr().unwrap();
    let (sent, got) = std::thread::scope(|s| {
        let snap_r = &snap;
        let t0 = Instant::now();
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
        .expect("send");
        eprintln!("sender events: {marks:?}, returned at {:?}", t0.elapsed());
        (sent, h.join().unwrap().expect("receive"))
    });
    let base = baseline(mb << 20, 1472);
    let what = if is_covered {
        "snapshot-covered"
    } else {
        "raw"
    };
    println!(
        "udp loopback, {mb} MiB {what}: session {:?}, {:.0} Mbit/s file bytes, {:.0} Mbit/s wire, {} frames, {} repair frames, final rate {:.0} Mbit/s; receiver session {:?}, {} duplicates",
        sent.elapsed,
        sent.session_bps() / 1e6,
        sent.wire_bps() / 1e6,
        sent.frames,
        sent.retransmissions,
        sent.final_rate as f64 * 8.0 / 1e6,
        got.elapsed,
        got.duplicate_frames
    );
    println!(
        "baseline, same run: plain 1472 B datagrams over loopback {:.0} Mbit/s; pfs wire / baseline = {:.2}, pfs file bytes / baseline = {:.2}",
        base / 1e6,
        sent.wire_bps() / base.max(1.0),
        sent.session_bps() / base.max(1.0)
    );
}
