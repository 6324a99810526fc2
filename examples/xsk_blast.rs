//! A plain AF_XDP frame blast over a veth pair between two fresh namespaces (root only).
//!
//!     cargo run --release --example xsk_blast -- [--frames N] [--size BYTES] [--json]
//!
//! Creates namespaces (removed at exit), attaches the steering program natively on side B
//! with an AF_XDP socket on queue 0, and sends N UDP frames of BYTES bytes (whole Ethernet
//! frame, without FCS) from an AF_XDP socket on side A. The sender runs on core 0, the
//! receiver on core 1. Prints the rates each side measured; with --json, one JSON line.
//! This is the ceiling `just bench-xfer` compares PacketFS transfers to.

#[path = "../tests/common/netns.rs"]
mod netns;

use std::time::Duration;

use netns::{NetnsPair, Side};
use packetfs::steer::{PortRange, Steering, XdpMode};
use packetfs::xsk::blast::{self, FrameSpec, MIN_FRAME_LEN};
use packetfs::xsk::{XskConfig, XskSocket};

const PORT: u16 = 47900;

fn main() -> anyhow::Result<()> {
    let mut frames: u64 = 2_000_000;
    let mut size: usize = 74;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--frames" => frames = args.next().unwrap_or_default().parse()?,
            "--size" => size = args.next().unwrap_or_default().parse()?,
            "--json" => json = true,
            _ => anyhow::bail!("usage: xsk_blast [--frames N] [--size BYTES] [--json]"),
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

    let pair = NetnsPair::new(1, 1500).map_err(anyhow::Error::msg)?;
    let cfg = XskConfig {
        frame_size: 2048,
        frame_count: 8192,
        ring_size: 4096,
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
    let (steer, mut rx) = pair.run_in(Side::B, move || -> anyhow::Result<_> {
        let mut steer = Steering::attach(&if_b, XdpMode::Native)?;
        steer.set_ports(PortRange::new(PORT, 1))?;
        let rx = XskSocket::new(&if_b, 0, &cfg)?;
        steer.set_socket(0, &rx)?;
        Ok((steer, rx))
    })?;
    let if_a = pair.iface(Side::A);
    let mut tx = pair.run_in(Side::A, move || XskSocket::new(&if_a, 0, &cfg))?;

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (core_tx, core_rx) = (cores.first().copied(), cores.get(1).copied());
    let rx_thread = std::thread::spawn(move || {
        if let Some(c) = core_rx {
            core_affinity::set_for_current(c);
        }
        let r = blast::run_rx(
            &mut rx,
            &spec,
            frames,
            Duration::from_secs(10),
            Duration::from_millis(500),
        );
        (r, rx.stats())
    });
    std::thread::sleep(Duration::from_millis(100));
    if let Some(c) = core_tx {
        core_affinity::set_for_current(c);
    }
    let txr = blast::run_tx(&mut tx, &spec, frames)?;
    let (rxr, rx_stats) = rx_thread.join().expect("rx thread");
    let rxr = rxr?;
    let counters = steer.counters()?;

    if json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "xsk_blast", "frame_bytes": size, "frames": frames,
                "tx": txr, "rx": rxr, "tx_mpps": txr.mpps(), "tx_gbps": txr.gbps(),
                "rx_mpps": rxr.mpps(), "rx_gbps": rxr.gbps(),
                "tx_mpps_per_cpu": txr.mpps_per_cpu(), "loadavg": loadavg(),
                "steer": counters, "rx_xsk": rx_stats.ok(),
            })
        );
    } else {
        println!("xsk_blast: {frames} frames of {size} B, veth between two namespaces");
        println!(
            "  tx: {:>9} frames in {:.3} s  {:.3} Mpps  {:.3} Gbit/s  (thread CPU {:.3} s: {:.3} Mpps per CPU-s)",
            txr.frames,
            txr.secs,
            txr.mpps(),
            txr.gbps(),
            txr.cpu_secs,
            txr.mpps_per_cpu()
        );
        println!(
            "  rx: {:>9} frames in {:.3} s  {:.3} Mpps  {:.3} Gbit/s  ({} valid, {} lost)",
            rxr.frames,
            rxr.secs,
            rxr.mpps(),
            rxr.gbps(),
            rxr.valid,
            txr.frames.saturating_sub(rxr.frames)
        );
        println!("  steering: {counters}");
        println!("  load average at the end: {}", loadavg());
        if let Ok(s) = rx_stats {
            println!("  rx socket: {s:?}");
        }
    }
    drop(tx);
    drop(steer);
    Ok(())
}

/// The 1-minute load average: other work on the two cores skews every rate.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}
