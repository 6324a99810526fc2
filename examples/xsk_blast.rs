//! A plain AF_XDP frame blast over a veth pair between two fresh namespaces (root only).
//!
//!     cargo run --release --example xsk_blast -- [--frames N] [--size BYTES] [--queues Q] [--json]
//!
//! Creates namespaces (removed at exit) joined by a veth pair with Q queues, attaches the
//! steering program natively on side B with an AF_XDP socket per queue, and sends N UDP
//! frames of BYTES bytes (whole Ethernet frame, without FCS) from AF_XDP sockets on side A,
//! N/Q per queue, one sender and one receiver thread per queue (sender q pinned to core q).
//! On veth, copy mode: the sending core also runs the receive-side XDP program and the copy
//! into the receiver's UMEM. Prints the rates each side measured; with --json, one JSON
//! line. This is the ceiling `just bench-xfer` compares PacketFS transfers to.

#[path = "../tests/common/netns.rs"]
mod netns;

use std::time::Duration;

use netns::{NetnsPair, Side};
use packetfs::steer::{PortRange, Steering, XdpMode};
use packetfs::xsk::blast::{self, BlastReport, FrameSpec, MIN_FRAME_LEN};
use packetfs::xsk::{XskConfig, XskSocket, XskStats};

const PORT: u16 = 47900;

fn main() -> anyhow::Result<()> {
    let mut frames: u64 = 2_000_000;
    let mut size: usize = 74;
    let mut queues: u32 = 1;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--frames" => frames = args.next().unwrap_or_default().parse()?,
            "--size" => size = args.next().unwrap_or_default().parse()?,
            "--queues" => queues = args.next().unwrap_or_default().parse()?,
            "--json" => json = true,
            _ => {
                anyhow::bail!("usage: xsk_blast [--frames N] [--size BYTES] [--queues Q] [--json]")
            }
        }
    }
    if let Some(why) = netns::skip_reason() {
        anyhow::bail!("cannot run: {why}");
    }
    if !packetfs::steer::object_available() {
        anyhow::bail!("{}", packetfs::steer::SteerError::NotBuilt);
    }
    anyhow::ensure!(
        (MIN_FRAME_LEN..=1514).contains(&size),
        "--size must be {MIN_FRAME_LEN}..=1514"
    );
    anyhow::ensure!((1..=8).contains(&queues), "--queues must be 1..=8");

    let pair = NetnsPair::new(queues, 1500).map_err(anyhow::Error::msg)?;
    // 8192 fill frames per receiver: ~25 ms of frames at 0.3 Mpps, so a receiver that
    // loses its core for a time slice does not empty its fill ring.
    let cfg = XskConfig {
        frame_size: 2048,
        frame_count: 16384,
        ring_size: 8192,
        batch: 64,
        ..XskConfig::default()
    };
    let spec = FrameSpec {
        src_mac: pair.mac(Side::A),
        dst_mac: pair.mac(Side::B),
        src_ip: pair.addr(Side::A),
        dst_ip: pair.addr(Side::B),
        src_port: 40000,
        dst_port: PORT,
        frame_len: size,
    };

    let if_b = pair.iface(Side::B);
    let (steer, rxs) = pair.run_in(Side::B, move || -> anyhow::Result<_> {
        let mut steer = Steering::attach(&if_b, XdpMode::Native)?;
        steer.set_ports(PortRange::new(PORT, 1))?;
        let mut rxs = Vec::new();
        for q in 0..queues {
            let rx = XskSocket::new(&if_b, q, &cfg)?;
            steer.set_socket(q, &rx)?;
            rxs.push(rx);
        }
        Ok((steer, rxs))
    })?;
    let if_a = pair.iface(Side::A);
    let txs = pair.run_in(Side::A, move || {
        (0..queues)
            .map(|q| XskSocket::new(&if_a, q, &cfg))
            .collect::<Result<Vec<_>, _>>()
    })?;

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let core = |i: usize| (!cores.is_empty()).then(|| cores[i % cores.len()]);
    let per_queue =
        |q: u32| frames / queues as u64 + u64::from((q as u64) < frames % queues as u64);

    // Receivers first (pinned to the core after their sender's), then the senders.
    let rx_threads: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(q, mut rx)| {
            let c = core(q + 1);
            let n = per_queue(q as u32);
            // veth delivers tx queue q of A on rx queue q of B: expect sender q's frames.
            let spec = queue_spec(&spec, q);
            std::thread::spawn(move || {
                if let Some(c) = c {
                    core_affinity::set_for_current(c);
                }
                let r = blast::run_rx(
                    &mut rx,
                    &spec,
                    n,
                    Duration::from_secs(10),
                    Duration::from_millis(500),
                );
                (r, rx.stats())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let tx_threads: Vec<_> = txs
        .into_iter()
        .enumerate()
        .map(|(q, mut tx)| {
            let c = core(q);
            let n = per_queue(q as u32);
            let spec = queue_spec(&spec, q);
            std::thread::spawn(move || {
                if let Some(c) = c {
                    core_affinity::set_for_current(c);
                }
                blast::run_tx(&mut tx, &spec, n)
            })
        })
        .collect();
    let mut txr = Vec::new();
    for t in tx_threads {
        txr.push(t.join().expect("tx thread")?);
    }
    let mut rxr = Vec::new();
    let mut rx_stats = Vec::new();
    for t in rx_threads {
        let (r, s) = t.join().expect("rx thread");
        rxr.push(r?);
        rx_stats.push(s.unwrap_or_default());
    }
    let counters = steer.counters()?;
    let tx = combine(&txr);
    let rx = combine(&rxr);
    let rx_stat = rx_stats.iter().fold(XskStats::default(), |a, s| XskStats {
        rx_dropped: a.rx_dropped + s.rx_dropped,
        rx_invalid_descs: a.rx_invalid_descs + s.rx_invalid_descs,
        tx_invalid_descs: a.tx_invalid_descs + s.tx_invalid_descs,
        rx_ring_full: a.rx_ring_full + s.rx_ring_full,
        fill_ring_empty: a.fill_ring_empty + s.fill_ring_empty,
        tx_ring_empty: a.tx_ring_empty + s.tx_ring_empty,
    });

    if json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "xsk_blast", "frame_bytes": size, "frames": frames, "queues": queues,
                "tx": tx, "rx": rx, "tx_mpps": tx.mpps(), "tx_gbps": tx.gbps(),
                "rx_mpps": rx.mpps(), "rx_gbps": rx.gbps(),
                "tx_mpps_per_cpu": tx.mpps_per_cpu(), "loadavg": loadavg(),
                "steer": counters, "rx_xsk": rx_stat,
            })
        );
    } else {
        println!("xsk_blast: {frames} frames of {size} B over {queues} queue(s), veth between two namespaces");
        println!(
            "  tx: {:>9} frames in {:.3} s  {:.3} Mpps  {:.3} Gbit/s  (sender CPU {:.3} s: {:.3} Mpps per CPU-s)",
            tx.frames,
            tx.secs,
            tx.mpps(),
            tx.gbps(),
            tx.cpu_secs,
            tx.mpps_per_cpu()
        );
        println!(
            "  rx: {:>9} frames in {:.3} s  {:.3} Mpps  {:.3} Gbit/s  (receiver CPU {:.3} s; {} valid, {} lost)",
            rx.frames,
            rx.secs,
            rx.mpps(),
            rx.gbps(),
            rx.cpu_secs,
            rx.valid,
            tx.frames.saturating_sub(rx.frames)
        );
        println!("  steering: {counters}");
        println!("  rx sockets: {rx_stat:?}");
        println!("  load average at the end: {}", loadavg());
    }
    drop(steer);
    Ok(())
}

/// Queue q's frames carry their own source port, so each queue stays one flow.
fn queue_spec(spec: &FrameSpec, q: usize) -> FrameSpec {
    FrameSpec {
        src_port: spec.src_port + q as u16,
        ..*spec
    }
}

/// Sums frames, bytes and CPU over queues; the time is the longest queue's.
fn combine(rs: &[BlastReport]) -> BlastReport {
    rs.iter().fold(BlastReport::default(), |a, r| BlastReport {
        frames: a.frames + r.frames,
        bytes: a.bytes + r.bytes,
        valid: a.valid + r.valid,
        secs: a.secs.max(r.secs),
        cpu_secs: a.cpu_secs + r.cpu_secs,
    })
}

/// The 1-minute load average: other work on the two cores skews every rate.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}
