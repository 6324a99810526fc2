//! AF_XDP sockets on a veth pair between two namespaces (root only): frames steered to
//! per-queue sockets arrive bit-exact, frames built in UMEM reach a kernel socket bit-exact,
//! and nothing stays attached afterwards.
//! Skips with a printed reason when not root or when this build has no eBPF object.

mod common;

use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use common::netns::{NetnsPair, Side};
use common::privileged::{self, Need};
use packetfs::steer::{attached_xdp, PortRange, Steering, XdpMode};
use packetfs::xsk::blast::{FrameSpec, HEADERS_LEN};
use packetfs::xsk::{XskConfig, XskSocket};

const PORT: u16 = 47100;

fn skip() -> bool {
    privileged::skip(&[Need::Xdp])
}

/// Deterministic test payload `i`: 1..=1400 bytes of an LCG stream.
fn payload(i: u32) -> Vec<u8> {
    let len = 1 + (i.wrapping_mul(2_654_435_761) % 1400) as usize;
    let mut x = i.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

/// The UDP payload and destination port of an Ethernet/IPv4/UDP frame.
fn udp_payload(frame: &[u8]) -> Option<(u16, Vec<u8>)> {
    if frame.len() < HEADERS_LEN || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
        return None;
    }
    let ihl = ((frame[14] & 0x0f) as usize) * 4;
    let udp = 14 + ihl;
    let port = u16::from_be_bytes([frame[udp + 2], frame[udp + 3]]);
    let len = u16::from_be_bytes([frame[udp + 4], frame[udp + 5]]) as usize;
    Some((port, frame.get(udp + 8..udp + len)?.to_vec()))
}

fn small_cfg() -> XskConfig {
    XskConfig {
        frame_size: 2048,
        frame_count: 512,
        ring_size: 256,
        batch: 32,
        ..XskConfig::default()
    }
}

/// What is attached to `side`'s interface once nothing is, or after 2 s. A detach is
/// synchronous, but a child process spawned by a parallel test holds copies of our fds
/// (the BPF link's too) until its exec, which can delay the release for a moment.
fn xdp_after_detach(pair: &NetnsPair, side: Side) -> packetfs::steer::AttachedXdp {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let iface = pair.iface(side);
        let a = pair.run_in(side, move || attached_xdp(&iface).unwrap());
        if !a.any() || Instant::now() > until {
            return a;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn steered_frames_arrive_bit_exact_on_every_queue() {
    if skip() {
        return;
    }
    const QUEUES: u32 = 2;
    const N: u32 = 300;
    let pair = NetnsPair::new(QUEUES, 1500).expect("netns pair");
    let if_b = pair.iface(Side::B);
    let (steer, mut socks) = pair.run_in(Side::B, move || {
        let mut steer = Steering::attach(&if_b, XdpMode::Native).expect("attach");
        steer.set_ports(PortRange::new(PORT, 4)).unwrap();
        let socks: Vec<XskSocket> = (0..QUEUES)
            .map(|q| {
                // 512 fill frames per queue hold all N frames even if this thread is
                // not scheduled while they arrive: no loss on a busy machine.
                let cfg = XskConfig {
                    frame_count: 1024,
                    ring_size: 512,
                    ..small_cfg()
                };
                let s = XskSocket::new(&if_b, q, &cfg).expect("xsk bind");
                steer.set_socket(q, &s).expect("xskmap");
                s
            })
            .collect();
        (steer, socks)
    });

    // Several source sockets, so the flows hash onto both veth queues. The sender runs
    // while this thread receives, so the fill rings are refilled as frames arrive.
    let (src_ip, dst_ip) = (pair.addr(Side::A), pair.addr(Side::B));
    let sender = pair.spawn_in(Side::A, move || {
        let senders: Vec<UdpSocket> = (0..8)
            .map(|_| UdpSocket::bind(SocketAddrV4::new(src_ip, 0)).unwrap())
            .collect();
        for i in 0..N {
            let dst = SocketAddrV4::new(dst_ip, PORT + (i % 4) as u16);
            senders[i as usize % senders.len()]
                .send_to(&payload(i), dst)
                .expect("send_to");
            if i % 32 == 31 {
                // Let the receiver keep up: the test checks correctness, not speed.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });

    let mut got: Vec<(u16, Vec<u8>)> = Vec::new();
    let mut per_queue = vec![0u32; QUEUES as usize];
    let until = Instant::now() + Duration::from_secs(10);
    while got.len() < N as usize && Instant::now() < until {
        for (q, s) in socks.iter_mut().enumerate() {
            let n = s.recv_batch(|f| got.push(udp_payload(f).expect("an IPv4/UDP frame")));
            per_queue[q] += n as u32;
        }
        if got.len() < N as usize {
            socks[0].wait_rx(Duration::from_millis(1)).unwrap();
        }
    }
    sender.join().expect("sender thread");
    let c = steer.counters().unwrap();
    let stats: Vec<_> = socks.iter().map(|s| s.stats().unwrap()).collect();
    assert_eq!(
        got.len(),
        N as usize,
        "counters {c}; per queue {per_queue:?}; {stats:?}"
    );
    let mut want: Vec<(u16, Vec<u8>)> = (0..N)
        .map(|i| (PORT + (i % 4) as u16, payload(i)))
        .collect();
    got.sort();
    want.sort();
    assert!(got == want, "payloads differ");
    assert_eq!(c.steered, N as u64, "{c}");
    assert_eq!(c.no_socket, 0, "{c}");
    for s in &stats {
        assert_eq!(s.rx_lost() + s.rx_invalid_descs, 0, "{s:?}");
    }
    eprintln!("frames per queue: {per_queue:?}; counters: {c}");

    drop(socks);
    drop(steer);
    let left = xdp_after_detach(&pair, Side::B);
    assert!(!left.any(), "{left:?}");
}

#[test]
fn frames_built_in_umem_reach_a_kernel_socket_bit_exact() {
    if skip() {
        return;
    }
    const N: u32 = 100;
    let pair = NetnsPair::new(1, 1500).expect("netns pair");
    let dst = SocketAddrV4::new(pair.addr(Side::B), 9100);
    let rx = pair.run_in(Side::B, move || {
        let s = UdpSocket::bind(dst).expect("bind in B");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    });
    let if_a = pair.iface(Side::A);
    let mut tx = pair.run_in(Side::A, move || {
        XskSocket::new(&if_a, 0, &small_cfg()).unwrap()
    });
    let base = FrameSpec {
        src_mac: pair.mac(Side::A),
        dst_mac: pair.mac(Side::B),
        src_ip: pair.addr(Side::A),
        dst_ip: pair.addr(Side::B),
        src_port: 40000,
        dst_port: 9100,
        frame_len: 0,
    };

    let mut next = 0u32;
    let until = Instant::now() + Duration::from_secs(10);
    while next < N && Instant::now() < until {
        let first = next;
        let sent = tx.send_batch((N - next) as usize, |i, buf| {
            let p = payload(first + i as u32);
            let spec = FrameSpec {
                frame_len: HEADERS_LEN + p.len(),
                ..base
            };
            buf[..HEADERS_LEN].copy_from_slice(&spec.headers());
            buf[HEADERS_LEN..spec.frame_len].copy_from_slice(&p);
            spec.frame_len
        });
        next += sent as u32;
    }
    assert_eq!(next, N);
    assert_eq!(tx.flush(Duration::from_secs(5)), 0, "tx did not complete");

    let mut buf = vec![0u8; 2048];
    let mut got = Vec::new();
    for _ in 0..N {
        match rx.recv_from(&mut buf) {
            Ok((n, _)) => got.push(buf[..n].to_vec()),
            Err(e) => panic!("after {} datagrams: {e}; {:?}", got.len(), tx.stats()),
        }
    }
    let mut want: Vec<Vec<u8>> = (0..N).map(payload).collect();
    got.sort();
    want.sort();
    assert!(got == want, "payloads differ");
    let s = tx.stats().unwrap();
    assert_eq!(s.tx_invalid_descs, 0, "{s:?}");
}

/// Raw frames built in UMEM on A exercise the parser on B: one 802.1Q tag and one 802.1ad
/// tag are steered (and arrive bit-exact), truncated headers count as malformed, fragments,
/// other ports and other ethertypes pass.
#[test]
fn parser_cases_vlan_truncated_fragment_other() {
    if skip() {
        return;
    }
    let pair = NetnsPair::new(1, 1500).expect("netns pair");
    let if_b = pair.iface(Side::B);
    let (steer, mut rx) = pair.run_in(Side::B, move || {
        let mut steer = Steering::attach(&if_b, XdpMode::Native).expect("attach");
        steer.set_ports(PortRange::new(PORT, 4)).unwrap();
        let s = XskSocket::new(&if_b, 0, &small_cfg()).expect("xsk bind");
        steer.set_socket(0, &s).unwrap();
        (steer, s)
    });
    let if_a = pair.iface(Side::A);
    let mut tx = pair.run_in(Side::A, move || {
        XskSocket::new(&if_a, 0, &small_cfg()).unwrap()
    });
    let spec = FrameSpec {
        src_mac: pair.mac(Side::A),
        dst_mac: pair.mac(Side::B),
        src_ip: pair.addr(Side::A),
        dst_ip: pair.addr(Side::B),
        src_port: 40000,
        dst_port: PORT + 2,
        frame_len: HEADERS_LEN + 16,
    };
    let mut udp = spec.headers().to_vec();
    udp.extend_from_slice(b"packetfs-payload");
    let tagged = |tpid: u16, vid: u16| {
        let mut f = udp[..12].to_vec();
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
        f.extend_from_slice(&udp[12..]);
        f
    };
    let vlan = tagged(0x8100, 10);
    let qinq = tagged(0x88a8, 20);
    let truncated_ip = udp[..14 + 10].to_vec();
    let truncated_udp = udp[..14 + 20 + 4].to_vec();
    let mut fragment = udp.clone();
    fragment[14 + 6] = 0x20; // more fragments
    let mut other_port = spec.headers().to_vec();
    other_port[36..38].copy_from_slice(&(PORT + 4).to_be_bytes());
    other_port.extend_from_slice(&[0u8; 16]);
    let mut other_type = udp.clone();
    other_type[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    let frames = [
        &vlan,
        &qinq,
        &truncated_ip,
        &truncated_udp,
        &fragment,
        &other_port,
        &other_type,
    ];

    let before = steer.counters().unwrap();
    let mut i = 0;
    while i < frames.len() {
        i += tx.send_batch(frames.len() - i, |k, buf| {
            let f = frames[i + k];
            buf[..f.len()].copy_from_slice(f);
            f.len()
        });
    }
    assert_eq!(tx.flush(Duration::from_secs(5)), 0);

    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while got.len() < 2 && Instant::now() < until {
        rx.recv_batch(|f| got.push(f.to_vec()));
        rx.wait_rx(Duration::from_millis(5)).unwrap();
    }
    let until = Instant::now() + Duration::from_secs(5);
    let c = loop {
        let c = steer.counters().unwrap().since(&before);
        if c.malformed + c.steered >= 4 && c.passed >= 3 || Instant::now() > until {
            break c;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    got.sort();
    let mut want = vec![vlan.clone(), qinq.clone()];
    want.sort();
    assert!(
        got == want,
        "steered frames differ: got {} frames",
        got.len()
    );
    assert_eq!((c.steered, c.malformed, c.no_socket), (2, 2, 0), "{c}");
    assert!(c.passed >= 3, "{c}");
}

/// Impairment at 10%: roughly a tenth of the PacketFS frames are dropped, and every frame is
/// accounted for: steered + impaired_drop = sent, and the socket receives exactly the steered.
#[test]
fn impairment_drops_are_all_accounted_for() {
    if skip() {
        return;
    }
    const N: u64 = 2000;
    let pair = NetnsPair::new(1, 1500).expect("netns pair");
    let if_b = pair.iface(Side::B);
    let (steer, mut rx) = pair.run_in(Side::B, move || {
        let mut steer = Steering::attach(&if_b, XdpMode::Native).expect("attach");
        steer.set_ports(PortRange::new(PORT, 1)).unwrap();
        steer.set_impairment(100_000).unwrap();
        let cfg = XskConfig {
            frame_count: 8192,
            ring_size: 4096,
            ..small_cfg()
        };
        let s = XskSocket::new(&if_b, 0, &cfg).expect("xsk bind");
        steer.set_socket(0, &s).unwrap();
        (steer, s)
    });
    let if_a = pair.iface(Side::A);
    let mut tx = pair.run_in(Side::A, move || {
        XskSocket::new(&if_a, 0, &small_cfg()).unwrap()
    });
    let spec = FrameSpec {
        src_mac: pair.mac(Side::A),
        dst_mac: pair.mac(Side::B),
        src_ip: pair.addr(Side::A),
        dst_ip: pair.addr(Side::B),
        src_port: 40000,
        dst_port: PORT,
        frame_len: 128,
    };
    let hdr = spec.headers();
    let mut sent = 0u64;
    while sent < N {
        let base = sent;
        sent += tx.send_batch((N - sent) as usize, |i, buf| {
            buf[..HEADERS_LEN].copy_from_slice(&hdr);
            buf[HEADERS_LEN..HEADERS_LEN + 8].copy_from_slice(&(base + i as u64).to_le_bytes());
            spec.frame_len
        }) as u64;
        // Pace by the program's own counters, so no frame is lost to a full veth queue
        // (this test counts every frame): wait until it has seen all sent so far.
        let _ = tx.flush(Duration::from_secs(1));
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            let c = steer.counters().unwrap();
            if c.steered + c.impaired_drop >= sent {
                break;
            }
            std::thread::yield_now();
        }
    }
    assert_eq!(tx.flush(Duration::from_secs(5)), 0);

    let until = Instant::now() + Duration::from_secs(10);
    let mut got = 0u64;
    let c = loop {
        got += rx.recv_batch(|f| assert_eq!(&f[..HEADERS_LEN], &hdr[..])) as u64;
        let c = steer.counters().unwrap();
        if (c.steered + c.impaired_drop >= N && got >= c.steered) || Instant::now() > until {
            break c;
        }
        rx.wait_rx(Duration::from_millis(5)).unwrap();
    };
    assert_eq!(c.steered + c.impaired_drop, N, "{c}");
    assert_eq!(got, c.steered, "{c}");
    // 10% of 2000 = 200; the binomial spread is ~13, so 100..=300 never fails by chance.
    assert!((100..=300).contains(&c.impaired_drop), "{c}");
    let s = rx.stats().unwrap();
    assert_eq!(s.rx_lost(), 0, "{s:?}");
}
