//! `pfs recv --transport xdp` as a service (root only): one receiver process on a bridged
//! segment with two sender hosts (namespaces, each with its own veth and its own AF_XDP
//! sender), keys on, on the session thread and on the per-queue workers. Three sequential and three concurrent AF_XDP senders (two of them
//! at once from one host, on a queue each: each sender takes its answers on kernel UDP
//! ports of its own) into the one
//! running receiver: every file bit-exact, the receiver still running after them; its
//! Prometheus endpoint, scraped during the run, shows per-queue AF_XDP counters that moved;
//! then SIGTERM -> exit 0 and no XDP program left on the receiver's interface. SIGINT
//! during a session with no grace aborts it, exits 0 and detaches; an error after the
//! attach exits non-zero and detaches.
//! Skips with a printed reason when not root or when this build has no eBPF object.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::keys::KeyFiles;
use common::netns::{run_in_ns, NetnsStar};
use common::privileged::{self, Need};
use common::Rng;

const PFS: &str = env!("CARGO_BIN_EXE_pfs");

/// The receiver service in its namespace: its metrics address there, its stderr lines.
struct Receiver {
    child: Option<Child>,
    ns: String,
    metrics: SocketAddr,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Receiver {
    fn start(
        star: &NetnsStar,
        snap: &Path,
        out: &Path,
        keys: &KeyFiles,
        extra: &[&str],
    ) -> Receiver {
        let ns = star.receiver();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, PFS, "recv", "--transport", "xdp"])
            .args(["--iface", &ns, "--listen", &star.addr(&ns).to_string()])
            .args(["--metrics-listen", "127.0.0.1:0", "--snapshot"])
            .arg(snap)
            .arg("--out-dir")
            .arg(out)
            .arg("--metrics")
            .arg(out.with_extension("jsonl"))
            .args(keys.recv_flags())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pfs recv");
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut r = Receiver {
            child: Some(child),
            ns,
            metrics: "127.0.0.1:1".parse().unwrap(),
            lines,
            seen: Vec::new(),
        };
        let m = r.wait_line("metrics on http://");
        r.metrics = m
            .split("http://")
            .nth(1)
            .unwrap()
            .trim_end_matches("/metrics")
            .parse()
            .unwrap();
        let l = r.wait_line("listening on xdp");
        assert!(l.contains("queues [0, 1]"), "{l}");
        r
    }

    /// The next stderr line containing `pat` (60 s at most: a readiness wait).
    fn wait_line(&mut self, pat: &str) -> String {
        common::service::wait_line(&self.lines, &mut self.seen, pat)
    }

    /// GET /metrics from inside the receiver's namespace, parsed.
    fn scrape(&self) -> BTreeMap<String, f64> {
        let addr = self.metrics;
        let (code, body) = run_in_ns(&self.ns, move || {
            packetfs::prom::get(addr, "/metrics").unwrap()
        });
        assert_eq!(code, 200);
        packetfs::prom::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
    }

    /// Scrape until `f` holds (30 s at most: the loop refreshes the AF_XDP counters every
    /// 200 ms).
    fn scrape_until(
        &self,
        what: &str,
        f: impl Fn(&BTreeMap<String, f64>) -> bool,
    ) -> BTreeMap<String, f64> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let m = self.scrape();
            if f(&m) {
                return m;
            }
            assert!(Instant::now() < end, "metrics never showed {what}: {m:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn assert_running(&mut self) {
        let c = self.child.as_mut().unwrap();
        assert!(
            c.try_wait().unwrap().is_none(),
            "the receiver exited; stderr:\n{}",
            self.seen.join("\n")
        );
    }

    /// SIGTERM, then its exit status and stdout.
    fn stop(self) -> (std::process::ExitStatus, String) {
        self.stop_with(nix::sys::signal::SIGTERM)
    }

    /// `sig`, then its exit status and stdout.
    fn stop_with(mut self, sig: nix::sys::signal::Signal) -> (std::process::ExitStatus, String) {
        let mut c = self.child.take().unwrap();
        // `ip netns exec` execs pfs: the child's pid is pfs's.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig).unwrap();
        let mut out = String::new();
        c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        (c.wait().unwrap(), out)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An AF_XDP sender on sender host `i` (its own interface; no program: its answers come on
/// kernel UDP ports of its own, so several may send from one host at once, on queues of
/// their own).
fn send(star: &NetnsStar, i: usize, snap: &Path, keys: &KeyFiles, file: &Path) -> Child {
    send_with(star, i, snap, keys, file, &[])
}

fn send_with(
    star: &NetnsStar,
    i: usize,
    snap: &Path,
    keys: &KeyFiles,
    file: &Path,
    extra: &[&str],
) -> Child {
    let ns = star.sender(i);
    Command::new("ip")
        .args(["netns", "exec", &ns, PFS, "send", "--transport", "xdp"])
        .args(extra)
        .args([
            "--iface",
            &ns,
            "--dst",
            &star.addr(&star.receiver()).to_string(),
        ])
        .arg("--snapshot")
        .arg(snap)
        .args(keys.send_flags())
        .arg("--metrics")
        .arg(file.with_extension("send.jsonl"))
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pfs send")
}

fn ok(c: Child) -> Output {
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn same(a: &Path, b: &Path) {
    let got = std::fs::read(b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
    assert!(std::fs::read(a).unwrap() == got, "{} differs", b.display());
}

fn get(m: &BTreeMap<String, f64>, k: &str) -> u64 {
    *m.get(k).unwrap_or_else(|| panic!("no {k} in {m:?}")) as u64
}

/// A per-queue AF_XDP counter of the receiver's interface, summed over both queues (each
/// must be exposed under its queue label).
fn per_queue(m: &BTreeMap<String, f64>, iface: &str, what: &str) -> [u64; 2] {
    [0, 1].map(|q| {
        get(
            m,
            &format!("pfs_xdp_{what}_total{{iface=\"{iface}\",queue=\"{q}\"}}"),
        )
    })
}

fn steered(m: &BTreeMap<String, f64>, iface: &str) -> u64 {
    get(
        m,
        &format!("pfs_xdp_steer_frames_total{{action=\"steered\",iface=\"{iface}\"}}"),
    )
}

#[test]
fn xdp_service_sequential_and_concurrent_senders_then_sigterm_detaches() {
    sequential_and_concurrent("session");
}

/// The same over the per-queue workers (one pinned thread per queue owning its socket).
#[test]
fn xdp_service_over_the_workers() {
    sequential_and_concurrent("workers");
}

fn sequential_and_concurrent(threads: &str) {
    if privileged::skip(&[Need::Xdp]) {
        return;
    }
    let star = NetnsStar::new(2, 2, 1500).expect("namespaces");
    let d = tempfile::tempdir().unwrap();
    let snap = PathBuf::from(common::cli::build_snapshot(d.path(), "snap", "3"));
    let keys = KeyFiles::create(d.path());
    let out = d.path().join("out");
    let mut rng = Rng(13);
    let snap_bytes = std::fs::read(snap.join("snapshot.bin")).unwrap();
    let mut files = Vec::new();
    for (i, len) in [
        2_000_000usize,
        1_500_000,
        700_001,
        1_200_000,
        900_000,
        1_100_000,
    ]
    .iter()
    .enumerate()
    {
        let p = d.path().join(format!("f{i}"));
        let mut data = rng.bytes(*len);
        // Part of each file is covered by the snapshot, the rest is raw.
        let k = (len / 3).min(snap_bytes.len() - 4096);
        data[..k].copy_from_slice(&snap_bytes[4096..4096 + k]);
        std::fs::write(&p, data).unwrap();
        files.push(p);
    }
    let iface = star.receiver();

    let mut r = Receiver::start(&star, &snap, &out, &keys, &["--xdp-threads", threads]);
    let want = if threads == "workers" {
        "xdp threads: workers q0->"
    } else {
        "xdp threads: session thread"
    };
    assert!(
        r.seen.iter().any(|l| l.contains(want)),
        "{want:?} not in {:?}",
        r.seen
    );
    let before = r.scrape();
    assert_eq!(get(&before, "pfs_sessions_total"), 0);
    let rx0 = per_queue(&before, &iface, "rx_frames");
    let tx0 = per_queue(&before, &iface, "tx_frames");
    for what in [
        "rx_dropped",
        "rx_ring_full",
        "fill_ring_empty",
        "tx_ring_empty",
        "rx_invalid_descs",
        "tx_invalid_descs",
    ] {
        per_queue(&before, &iface, what); // every counter exposed per queue
    }

    // Three sequential sessions from sender host 0.
    for (n, f) in files[..3].iter().enumerate() {
        ok(send(&star, 0, &snap, &keys, f));
        same(f, &out.join(f.file_name().unwrap()));
        r.assert_running();
        r.scrape_until(&format!("{} sessions ended ok", n + 1), |m| {
            get(m, "pfs_sessions_ended_total{outcome=\"ok\"}") == n as u64 + 1
        });
    }
    // The AF_XDP counters moved, queue by queue, and agree with the program's.
    let mid = r.scrape_until("the AF_XDP counters of the three sessions", |m| {
        let rx = per_queue(m, &iface, "rx_frames");
        rx.iter().sum::<u64>() > rx0.iter().sum::<u64>()
            && per_queue(m, &iface, "tx_frames").iter().sum::<u64>() > tx0.iter().sum::<u64>()
            && steered(m, &iface) >= rx.iter().sum::<u64>()
    });
    let rx_mid = per_queue(&mid, &iface, "rx_frames");

    // Three concurrent sessions: two from sender host 0 at once (one interface, a queue
    // each: an AF_XDP queue takes one socket; each sender with its own answer port), one
    // from host 1.
    let a = send_with(
        &star,
        0,
        &snap,
        &keys,
        &files[3],
        &["--mode", "queues", "--queues", "0"],
    );
    let a2 = send_with(
        &star,
        0,
        &snap,
        &keys,
        &files[5],
        &["--mode", "queues", "--queues", "1"],
    );
    let b = send(&star, 1, &snap, &keys, &files[4]);
    // Scraped while they run: both hosts' sessions show up (active or ended).
    r.scrape_until("the concurrent sessions", |m| {
        get(m, "pfs_sessions_total") >= 4
    });
    let (oa, oa2) = (ok(a), ok(a2));
    ok(b);
    let port = |o: &Output| {
        let s = String::from_utf8_lossy(&o.stdout).to_string();
        let at = s.find("answers on kernel UDP port ").map(|i| i + 27);
        at.map(|i| s[i..].split(':').next().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("no kernel UDP answers in the summary:\n{s}"))
    };
    assert_ne!(
        port(&oa),
        port(&oa2),
        "two senders of one host share a port"
    );
    for f in &files {
        same(f, &out.join(f.file_name().unwrap()));
    }
    r.assert_running();
    let after = r.scrape_until("six sessions ended ok", |m| {
        get(m, "pfs_sessions_ended_total{outcome=\"ok\"}") == 6
    });
    assert_eq!(get(&after, "pfs_sessions_total"), 6);
    assert_eq!(get(&after, "pfs_files_received_total"), 6);
    assert_eq!(
        get(&after, "pfs_file_bytes_received_total"),
        files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum::<u64>()
    );
    let after = r.scrape_until("the AF_XDP counters of the concurrent sessions", |m| {
        per_queue(m, &iface, "rx_frames").iter().sum::<u64>() > rx_mid.iter().sum::<u64>()
    });
    assert_eq!(
        get(
            &after,
            &format!("pfs_xdp_bad_frames_total{{iface=\"{iface}\"}}")
        ),
        0
    );
    assert_eq!(per_queue(&after, &iface, "rx_invalid_descs"), [0, 0]);
    assert_eq!(per_queue(&after, &iface, "tx_invalid_descs"), [0, 0]);

    // SIGTERM: exit 0, the summary, and the program detached from the interface.
    let (st, stdout) = r.stop();
    assert!(st.success(), "receiver exit {st:?}; stdout:\n{stdout}");
    assert!(
        stdout.contains("stopped: 6 session(s) served (6 ok, 0 failed)"),
        "{stdout}"
    );
    let i2 = iface.clone();
    let attached = run_in_ns(&iface, move || packetfs::steer::attached_xdp(&i2).unwrap());
    assert!(!attached.any(), "still attached: {attached:?}");
    let link = Command::new("ip")
        .args(["-n", &iface, "-d", "link", "show", "dev", &iface])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        !link.contains("prog/xdp") && !link.contains("xdp "),
        "{link}"
    );
}

/// An error after the program is attached (here: the metrics address cannot be bound)
/// ends the service with a named error and a non-zero exit, the program detached.
#[test]
fn xdp_service_error_after_attach_detaches() {
    if privileged::skip(&[Need::Xdp]) {
        return;
    }
    let star = NetnsStar::new(1, 2, 1500).expect("namespaces");
    let d = tempfile::tempdir().unwrap();
    let snap = common::cli::build_snapshot(d.path(), "snap", "3");
    let keys = KeyFiles::create(d.path());
    let ns = star.receiver();
    let o = Command::new("ip")
        .args(["netns", "exec", &ns, PFS, "recv", "--transport", "xdp"])
        .args(["--iface", &ns, "--snapshot", &snap])
        // TEST-NET-1: not an address of this namespace
        .args(["--metrics-listen", "192.0.2.1:9464", "--out-dir"])
        .arg(d.path().join("out"))
        .arg("--metrics")
        .arg(d.path().join("m.jsonl"))
        .args(keys.recv_flags())
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert!(e.contains("serving metrics on 192.0.2.1:9464"), "{e}");
    let i2 = ns.clone();
    let attached = run_in_ns(&ns, move || packetfs::steer::attached_xdp(&i2).unwrap());
    assert!(!attached.any(), "still attached: {attached:?}");
}

/// SIGINT while a session runs, with no grace: no new sessions, the running one aborted
/// (its sender told), exit 0, the program detached.
#[test]
fn xdp_service_sigint_aborts_a_running_session_and_detaches() {
    if privileged::skip(&[Need::Xdp]) {
        return;
    }
    let star = NetnsStar::new(1, 2, 1500).expect("namespaces");
    let d = tempfile::tempdir().unwrap();
    let snap = PathBuf::from(common::cli::build_snapshot(d.path(), "snap", "3"));
    let keys = KeyFiles::create(d.path());
    let out = d.path().join("out");
    let f = d.path().join("slow");
    std::fs::write(&f, Rng(5).bytes(4_000_000)).unwrap();
    let r = Receiver::start(&star, &snap, &out, &keys, &["--grace", "0"]);
    // About 3 s at 10 Mbit/s: still running when the signal comes.
    let s = send_with(&star, 0, &snap, &keys, &f, &["--rate", "10mbit"]);
    r.scrape_until("the session running", |m| {
        get(m, "pfs_sessions_active") == 1 && get(m, "pfs_frames_received_total") > 20
    });
    let iface = star.receiver();
    let (st, stdout) = r.stop_with(nix::sys::signal::SIGINT);
    assert!(st.success(), "receiver exit {st:?}; stdout:\n{stdout}");
    assert!(
        stdout.contains("stopped: 1 session(s) served (0 ok, 1 failed)"),
        "{stdout}"
    );
    let o = s.wait_with_output().unwrap();
    assert!(!o.status.success(), "the sender was not told of the abort");
    assert!(
        !out.join("slow").exists(),
        "a partial file was renamed into place"
    );
    let i2 = iface.clone();
    let attached = run_in_ns(&iface, move || packetfs::steer::attached_xdp(&i2).unwrap());
    assert!(!attached.any(), "still attached: {attached:?}");
}
