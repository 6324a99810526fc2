//! The XDP steering program on a veth pair between two namespaces (root only).
//!
//! Counters for steered-without-socket, passed and impaired frames; ARP still resolves;
//! SKB and native attach; no program left on the interface afterwards.
//! Skips with a printed reason when not root or when this build has no eBPF object.

mod common;

use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use common::netns::{NetnsPair, Side};
use common::privileged::{self, Need};
use packetfs::steer::{attached_xdp, Counters, PortRange, Steering, XdpMode};

const PORT: u16 = 47000;

fn skip() -> bool {
    privileged::skip(&[Need::Xdp])
}

/// Sends `n` datagrams from side A to B's `port`.
fn send_from_a(pair: &NetnsPair, port: u16, n: usize) {
    let src = SocketAddrV4::new(pair.addr(Side::A), 0);
    let dst = SocketAddrV4::new(pair.addr(Side::B), port);
    pair.run_in(Side::A, move || {
        let s = UdpSocket::bind(src).expect("bind in A");
        for i in 0..n {
            s.send_to(&(i as u32).to_le_bytes(), dst).expect("send_to");
        }
    });
}

/// Polls the counters until `done` holds or 5 s pass (a wait, not a timing assertion).
fn wait_counters(steer: &Steering, done: impl Fn(&Counters) -> bool) -> Counters {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let c = steer.counters().expect("counters");
        if done(&c) || Instant::now() > until {
            return c;
        }
        std::thread::sleep(Duration::from_millis(10));
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
fn counts_passes_and_impairs_on_veth() {
    if skip() {
        return;
    }
    let pair = NetnsPair::new(1, 1500).expect("netns pair");
    let if_b = pair.iface(Side::B);
    let mut steer = pair.run_in(Side::B, move || {
        let mut s = Steering::attach(&if_b, XdpMode::Native).expect("attach native");
        s.set_ports(PortRange::new(PORT, 4)).expect("ports");
        s
    });
    assert_eq!(steer.mode(), XdpMode::Native);
    assert_eq!(steer.ports().unwrap(), PortRange::new(PORT, 4));
    let if_b = pair.iface(Side::B);
    let attached = pair.run_in(Side::B, move || attached_xdp(&if_b).unwrap());
    assert!(attached.drv != 0, "{attached:?}");

    // A kernel socket in B on a port outside the range: its datagrams must pass, which also
    // needs ARP between A and B to work through the program.
    let listen = SocketAddrV4::new(pair.addr(Side::B), 9999);
    let kernel_rx = pair.run_in(Side::B, move || {
        let s = UdpSocket::bind(listen).expect("bind in B");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    });
    let before = steer.counters().unwrap();
    send_from_a(&pair, 9999, 5);
    let mut buf = [0u8; 64];
    for i in 0..5u32 {
        let (n, _) = kernel_rx
            .recv_from(&mut buf)
            .expect("datagram passed to kernel");
        assert_eq!(&buf[..n], &i.to_le_bytes());
    }
    let c = steer.counters().unwrap().since(&before);
    assert!(c.passed >= 5, "{c}");
    // ARP resolved through the program: A's neighbour table holds B's MAC.
    let neigh = std::process::Command::new("ip")
        .args([
            "-n",
            &pair.ns(Side::A),
            "neigh",
            "show",
            &pair.addr(Side::B).to_string(),
        ])
        .output()
        .unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_lowercase();
    let mac_b = pair.mac(Side::B).map(|b| format!("{b:02x}")).join(":");
    assert!(neigh.contains(&mac_b), "no ARP entry for B in A: {neigh:?}");
    assert_eq!(c.steered + c.no_socket + c.impaired_drop, 0, "{c}");

    // In the range but no AF_XDP socket on the queue: counted and passed on.
    let before = steer.counters().unwrap();
    send_from_a(&pair, PORT + 1, 10);
    let c = wait_counters(&steer, |c| c.since(&before).no_socket >= 10).since(&before);
    assert_eq!(c.no_socket, 10, "{c}");
    assert_eq!(c.steered, 0, "{c}");

    // Just past the range: passed.
    let before = steer.counters().unwrap();
    send_from_a(&pair, PORT + 4, 3);
    let c = wait_counters(&steer, |c| c.since(&before).passed >= 3).since(&before);
    assert_eq!(c.no_socket, 0, "{c}");
    assert!(c.passed >= 3, "{c}");

    // Impairment at 100%: every PacketFS frame dropped and counted; at 0% none.
    steer.set_impairment(1_000_000).unwrap();
    let before = steer.counters().unwrap();
    send_from_a(&pair, PORT, 20);
    let c = wait_counters(&steer, |c| c.since(&before).impaired_drop >= 20).since(&before);
    assert_eq!((c.impaired_drop, c.no_socket), (20, 0), "{c}");
    steer.set_impairment(0).unwrap();
    let before = steer.counters().unwrap();
    send_from_a(&pair, PORT, 7);
    let c = wait_counters(&steer, |c| c.since(&before).no_socket >= 7).since(&before);
    assert_eq!((c.impaired_drop, c.no_socket), (0, 7), "{c}");
    assert!(steer.set_impairment(1_000_001).is_err());
    assert_eq!(steer.counters().unwrap().malformed, 0);

    drop(steer);
    let left = xdp_after_detach(&pair, Side::B);
    assert!(
        !left.any(),
        "program left on {}: {left:?}",
        pair.iface(Side::B)
    );
}

#[test]
fn skb_mode_attach_and_detach() {
    if skip() {
        return;
    }
    let pair = NetnsPair::new(1, 1500).expect("netns pair");
    let if_a = pair.iface(Side::A);
    let (mode, during) = pair.run_in(Side::A, move || {
        let s = Steering::attach(&if_a, XdpMode::Skb).expect("attach skb");
        let mode = s.mode();
        let during = attached_xdp(&if_a).unwrap();
        s.detach().expect("detach");
        (mode, during)
    });
    let after = xdp_after_detach(&pair, Side::A);
    assert_eq!(mode, XdpMode::Skb);
    assert!(during.skb != 0 && during.drv == 0, "{during:?}");
    assert!(!after.any(), "{after:?}");
}

#[test]
fn auto_mode_prefers_native_and_errors_name_the_fix() {
    if skip() {
        return;
    }
    let pair = NetnsPair::new(1, 1500).expect("netns pair");
    let if_a = pair.iface(Side::A);
    pair.run_in(Side::A, move || {
        let s = Steering::attach(&if_a, XdpMode::Auto).expect("attach auto");
        assert_eq!(s.mode(), XdpMode::Native);
        assert!(s.notice().is_none());
        // A second program on the same interface is refused with advice.
        let e = Steering::attach(&if_a, XdpMode::Native)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("another XDP program") || e.contains("xdp-mode"),
            "{e}"
        );
        drop(s);
        let e = Steering::attach("pfs-nope0", XdpMode::Auto)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not found"), "{e}");
    });
    let after = xdp_after_detach(&pair, Side::A);
    assert!(!after.any(), "{after:?}");
}

/// Child half of `no_program_left_after_sigterm_or_sigkill`: attaches in the namespace named
/// by PFS_TEST_CHILD_NS, says so on stdout, then waits to be killed. Does nothing otherwise.
#[test]
fn child_attach_and_wait() {
    let Ok(ns) = std::env::var("PFS_TEST_CHILD_NS") else {
        return;
    };
    common::netns::enter(&format!("/run/netns/{ns}"));
    let _steer = Steering::attach(&ns, XdpMode::Native).expect("child attach");
    println!("PFS-CHILD-ATTACHED");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// A process killed while attached (SIGTERM, or SIGKILL that no handler can catch) leaves
/// no program on the interface: the kernel drops the BPF link with the process's fds.
#[test]
fn no_program_left_after_sigterm_or_sigkill() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    if skip() {
        return;
    }
    let pair = NetnsPair::new(1, 1500).expect("netns pair");
    for sig in [nix::sys::signal::SIGTERM, nix::sys::signal::SIGKILL] {
        let ns = pair.ns(Side::A);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_attach_and_wait",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PFS_TEST_CHILD_NS", &ns)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child test");
        let out = BufReader::new(child.stdout.take().unwrap());
        let attached = out
            .lines()
            .any(|l| l.is_ok_and(|l| l.contains("PFS-CHILD-ATTACHED")));
        let if_a = pair.iface(Side::A);
        let during = pair.run_in(Side::A, move || attached_xdp(&if_a).unwrap());
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
        let _ = child.wait();
        assert!(attached, "child never attached");
        assert!(
            during.drv != 0,
            "{sig}: nothing attached while the child ran"
        );
        let after = xdp_after_detach(&pair, Side::A);
        assert!(
            !after.any(),
            "{sig}: program left on the interface: {after:?}"
        );
    }
}
