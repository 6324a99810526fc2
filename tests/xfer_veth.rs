//! `pfs send` / `pfs recv` end to end over a veth pair between two namespaces (root only):
//! the receiver runs in namespace B, the sender in A, both as the built `pfs` binary under
//! `ip netns exec`. Every file arrives bit-exact in every AF_XDP mode, under 1% and 10%
//! receive-side loss, and over the kernel UDP transport; a snapshot mismatch is refused on
//! both sides; no XDP program is left on either interface afterwards.
//! Skips with a printed reason when not root or when this build has no eBPF object.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::netns::{NetnsPair, Side};
use common::privileged::{self, Need};
use common::Rng;
use packetfs::steer::attached_xdp;

const PFS: &str = env!("CARGO_BIN_EXE_pfs");

fn skip() -> bool {
    privileged::skip(&[Need::Xdp])
}

/// Shared inputs: two 4 MiB snapshots (seeds 1 and 2) and the test files.
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn snap(&self) -> PathBuf {
        self.dir.join("snap")
    }
    fn other_snap(&self) -> PathBuf {
        self.dir.join("snap2")
    }
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join("files").join(name)
    }
    /// Every test file: empty, 1 byte, 10 MB random, an ELF binary, a snapshot slice.
    fn all(&self) -> Vec<PathBuf> {
        ["empty", "one", "random10m", "bash", "covered"]
            .iter()
            .map(|n| self.file(n))
            .collect()
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Under cargo's per-target scratch directory, rebuilt by every run of this binary.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("xfer_veth");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = Fixture { dir };
        for (out, seed) in [(f.snap(), "1"), (f.other_snap(), "2")] {
            let o = Command::new(PFS)
                .args([
                    "snapshot",
                    "build",
                    "--size-mb",
                    "4",
                    "--seed",
                    seed,
                    "--out",
                ])
                .arg(&out)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        std::fs::create_dir_all(f.dir.join("files")).unwrap();
        std::fs::write(f.file("empty"), b"").unwrap();
        std::fs::write(f.file("one"), b"x").unwrap();
        std::fs::write(f.file("random10m"), Rng(42).bytes(10_000_000)).unwrap();
        std::fs::copy("/usr/bin/bash", f.file("bash")).unwrap();
        let snap = std::fs::read(f.snap().join("snapshot.bin")).unwrap();
        std::fs::write(f.file("covered"), &snap[1 << 20..3 << 20]).unwrap();
        f
    })
}

/// A receiver process in namespace B; killed if the test fails before it exits.
struct RecvProc {
    child: Option<Child>,
    stderr: mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl RecvProc {
    fn spawn(pair: &NetnsPair, args: &[String]) -> RecvProc {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &pair.ns(Side::B), PFS, "recv", "--once"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pfs recv");
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut p = RecvProc {
            child: Some(child),
            stderr: rx,
            lines: Vec::new(),
        };
        // Wait until it listens (or exits): a readiness wait, not a timing assertion.
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            match p.stderr.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let ready = l.starts_with("listening");
                    p.lines.push(l);
                    if ready {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        p
    }

    /// Waits for the receiver to exit (killing it after 3 minutes: a hang guard).
    fn wait(mut self) -> Output {
        let mut child = self.child.take().unwrap();
        let until = Instant::now() + Duration::from_secs(180);
        while child.try_wait().unwrap().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let mut out = child.wait_with_output().unwrap();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(500)) {
            self.lines.push(l);
        }
        out.stderr = self.lines.join("\n").into_bytes();
        out
    }
}

impl Drop for RecvProc {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One transfer: how each side is started.
struct Run<'a> {
    transport: &'a str,
    /// Extra arguments for both sides (`--mode`, `--queues`, `--ports`).
    both: Vec<String>,
    recv_extra: Vec<String>,
    send_extra: Vec<String>,
    recv_snapshot: PathBuf,
    /// The sender's snapshot (the fixture's `snap` unless a test needs another).
    send_snapshot: Option<PathBuf>,
    files: Vec<PathBuf>,
}

struct Outcome {
    send: Output,
    recv: Output,
    out_dir: PathBuf,
    send_metrics: Option<serde_json::Value>,
    recv_metrics: Option<serde_json::Value>,
    _work: tempfile::TempDir,
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn last_json(path: &Path) -> Option<serde_json::Value> {
    let s = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(s.lines().last()?).ok()
}

fn transfer(pair: &NetnsPair, run: &Run) -> Outcome {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");
    let (rm, sm) = (
        work.path().join("recv.jsonl"),
        work.path().join("send.jsonl"),
    );
    let s = |p: &Path| p.display().to_string();
    let mut rargs: Vec<String> = vec![
        "--transport".into(),
        run.transport.into(),
        "--iface".into(),
        pair.iface(Side::B),
        "--listen".into(),
        pair.addr(Side::B).to_string(),
        "--snapshot".into(),
        s(&run.recv_snapshot),
        "--out-dir".into(),
        s(&out_dir),
        "--metrics".into(),
        s(&rm),
        "--timeout".into(),
        "60".into(),
    ];
    rargs.extend(run.both.iter().cloned());
    rargs.extend(run.recv_extra.iter().cloned());
    // Keys by default; a run that says --insecure goes without.
    let keys = common::keys::KeyFiles::create(work.path());
    let insecure = run.both.iter().any(|a| a == "--insecure");
    if !insecure {
        rargs.extend(keys.recv_flags());
    }
    let recv = RecvProc::spawn(pair, &rargs);
    let send = Command::new("ip")
        .args(["netns", "exec", &pair.ns(Side::A), PFS, "send"])
        .args([
            "--transport",
            run.transport,
            "--iface",
            &pair.iface(Side::A),
        ])
        .args(["--dst", &pair.addr(Side::B).to_string()])
        .arg("--snapshot")
        .arg(run.send_snapshot.clone().unwrap_or_else(|| fx.snap()))
        .arg("--metrics")
        .arg(&sm)
        .args(&run.both)
        .args(&run.send_extra)
        .args(if insecure { vec![] } else { keys.send_flags() })
        .args(&run.files)
        .output()
        .expect("run pfs send");
    let recv = recv.wait();
    Outcome {
        send,
        recv,
        out_dir,
        send_metrics: last_json(&sm),
        recv_metrics: last_json(&rm),
        _work: work,
    }
}

/// Both sides succeeded and every file is bit-exact under its name.
fn assert_bit_exact(o: &Outcome, files: &[PathBuf]) {
    assert!(o.send.status.success(), "sender: {}", text(&o.send));
    assert!(o.recv.status.success(), "receiver: {}", text(&o.recv));
    for f in files {
        let got = o.out_dir.join(f.file_name().unwrap());
        let a = std::fs::read(f).unwrap();
        let b = std::fs::read(&got)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", got.display(), text(&o.recv)));
        assert!(a == b, "{} differs from {}", got.display(), f.display());
    }
}

/// No XDP program is left on either end (a detach releases at once; a moment's grace for
/// a parallel test's child that still holds copies of fds before its exec).
fn assert_nothing_attached(pair: &NetnsPair) {
    for side in [Side::A, Side::B] {
        let until = Instant::now() + Duration::from_secs(2);
        let a = loop {
            let iface = pair.iface(side);
            let a = pair.run_in(side, move || attached_xdp(&iface).unwrap());
            if !a.any() || Instant::now() > until {
                break a;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!a.any(), "{side:?}: {a:?}");
    }
}

fn xdp_run(both: &[&str], files: Vec<PathBuf>) -> Run<'static> {
    Run {
        transport: "xdp",
        both: both.iter().map(|s| s.to_string()).collect(),
        recv_extra: Vec::new(),
        send_extra: Vec::new(),
        recv_snapshot: fixture().snap(),
        send_snapshot: None,
        files,
    }
}

/// Both sides ran over AF_XDP: the receiver's program steered frames to its sockets; the
/// sender took the answers on kernel UDP with no program on its interface (the default
/// with the session thread) or through its program; no socket saw a bad descriptor.
fn check_xdp_metrics(o: &Outcome) {
    for (m, sender) in [(&o.send_metrics, true), (&o.recv_metrics, false)] {
        let m = m.as_ref().expect("a metrics line");
        assert_eq!(m["transport"], "xdp", "{m}");
        let x = &m["xdp"];
        let steered = x["steer"]["steered"].as_u64().unwrap();
        match x["kernel_answers"].as_u64() {
            Some(n) => {
                assert!(sender, "a receiver always steers: {x}");
                assert!(n > 0, "no answer arrived on kernel UDP: {x}");
                assert_eq!(x["xdp_mode"], "no program", "{x}");
                assert_eq!(steered, 0, "{x}");
            }
            None => assert!(steered > 0, "{x}"),
        }
        for q in x["queues"].as_array().unwrap() {
            assert_eq!(q["xdp"]["rx_invalid_descs"], 0, "{q}");
            assert_eq!(q["xdp"]["tx_invalid_descs"], 0, "{q}");
        }
    }
}

#[test]
fn xdp_scatter_each_file_alone_and_all_in_one_session() {
    if skip() {
        return;
    }
    let fx = fixture();
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    for f in fx.all() {
        let o = transfer(&pair, &xdp_run(&["--mode", "scatter"], vec![f.clone()]));
        assert_bit_exact(&o, &[f]);
        check_xdp_metrics(&o);
        assert_nothing_attached(&pair);
    }
    let o = transfer(&pair, &xdp_run(&["--mode", "scatter"], fx.all()));
    assert_bit_exact(&o, &fx.all());
    check_xdp_metrics(&o);
    // Scatter spreads one session over both queues.
    let m = o.recv_metrics.as_ref().unwrap();
    let qs = m["xdp"]["queues"].as_array().unwrap();
    assert_eq!(qs.len(), 2, "{m}");
    assert!(
        qs.iter().all(|q| q["rx_frames"].as_u64().unwrap() > 0),
        "{qs:?}"
    );
    assert_nothing_attached(&pair);
}

#[test]
fn xdp_queues_mode_on_queue_1() {
    if skip() {
        return;
    }
    let fx = fixture();
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    let o = transfer(
        &pair,
        &xdp_run(&["--mode", "queues", "--queues", "1"], fx.all()),
    );
    assert_bit_exact(&o, &fx.all());
    check_xdp_metrics(&o);
    let m = o.recv_metrics.as_ref().unwrap();
    let qs = m["xdp"]["queues"].as_array().unwrap();
    assert_eq!(qs.len(), 1, "{m}");
    assert_eq!(qs[0]["queue"], 1, "{m}");
    assert_nothing_attached(&pair);
}

#[test]
fn xdp_ports_mode_one_port_per_queue() {
    if skip() {
        return;
    }
    let fx = fixture();
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    let o = transfer(
        &pair,
        &xdp_run(&["--mode", "ports", "--ports", "2"], fx.all()),
    );
    assert_bit_exact(&o, &fx.all());
    check_xdp_metrics(&o);
    assert_nothing_attached(&pair);
}

fn lossy(ppm: u32) {
    let fx = fixture();
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    let mut run = xdp_run(&["--mode", "scatter"], fx.all());
    run.recv_extra = vec!["--impair-drop-ppm".into(), ppm.to_string()];
    let o = transfer(&pair, &run);
    assert_bit_exact(&o, &fx.all());
    let rm = o.recv_metrics.as_ref().unwrap();
    let sm = o.send_metrics.as_ref().unwrap();
    let steer = &rm["xdp"]["steer"];
    let dropped = steer["impaired_drop"].as_u64().unwrap();
    let steered = steer["steered"].as_u64().unwrap();
    assert!(dropped > 0, "{steer}");
    // Every frame the sender sent that reached B's program was steered or dropped on
    // purpose; what the receiver's state machine saw was steered.
    // (The sender's frames count the session's; its handshake inits go out before.)
    let sent =
        sm["frames"].as_u64().unwrap() + sm["security"]["counters"]["inits_sent"].as_u64().unwrap();
    assert!(steered + dropped <= sent, "sent {sent}, {steer}");
    assert!(rm["frames"].as_u64().unwrap() <= steered, "{rm}");
    // The losses were repaired.
    assert!(sm["retransmissions"].as_u64().unwrap() > 0, "{sm}");
    eprintln!(
        "{ppm} ppm: sent {sent}, steered {steered}, dropped {dropped}, retransmitted {}",
        sm["retransmissions"]
    );
    assert_nothing_attached(&pair);
}

#[test]
fn xdp_loss_1_percent() {
    if skip() {
        return;
    }
    lossy(10_000);
}

#[test]
fn xdp_loss_10_percent() {
    if skip() {
        return;
    }
    lossy(100_000);
}

#[test]
fn xdp_snapshot_mismatch_refused_on_both_sides() {
    if skip() {
        return;
    }
    let fx = fixture();
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    let mut run = xdp_run(&[], vec![fx.file("one")]);
    run.recv_snapshot = fx.other_snap();
    let o = transfer(&pair, &run);
    assert!(!o.send.status.success(), "{}", text(&o.send));
    assert!(!o.recv.status.success(), "{}", text(&o.recv));
    for (side, out) in [("sender", &o.send), ("receiver", &o.recv)] {
        let t = text(out);
        assert!(t.contains("snapshot mismatch"), "{side}: {t}");
    }
    assert!(!o.out_dir.join("one").exists());
    assert_nothing_attached(&pair);
}

#[test]
fn udp_transport_over_veth() {
    if skip() {
        return;
    }
    let fx = fixture();
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    let run = Run {
        transport: "udp",
        both: Vec::new(),
        recv_extra: Vec::new(),
        send_extra: Vec::new(),
        recv_snapshot: fx.snap(),
        send_snapshot: None,
        files: fx.all(),
    };
    let o = transfer(&pair, &run);
    assert_bit_exact(&o, &fx.all());
    assert_eq!(o.send_metrics.as_ref().unwrap()["transport"], "udp");
    assert_streamed(o.send_metrics.as_ref().unwrap(), fx.all().len());
    assert_nothing_attached(&pair);
}

/// A release-pair-like case: the snapshot holds an "old release" (bash) as a corpus bank; the
/// "new release" is bash with text edits and an insertion (offsets shift), so its plan is
/// mostly segments into the bank plus compressible spill. It travels packed (chosen by the
/// sender), bit-exact, also as a `.pbb` sent as is and under 1% loss.
#[test]
fn xdp_packed_release_pair() {
    if skip() {
        return;
    }
    let fx = fixture();
    let dir = fx.dir.join("release");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let snap = dir.join("snap");
    let o = Command::new(PFS)
        .args([
            "snapshot",
            "build",
            "--size-mb",
            "4",
            "--seed",
            "3",
            "--add",
        ])
        .arg(fx.file("bash"))
        .arg("--out")
        .arg(&snap)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut new = std::fs::read(fx.file("bash")).unwrap();
    let mut rng = Rng(7);
    for _ in 0..200 {
        let at = rng.below(new.len() as u64 - 64) as usize;
        let n = 8 + rng.below(48) as usize;
        for b in &mut new[at..at + n] {
            *b = b"release notes: version 5.3 "[rng.below(27) as usize];
        }
    }
    let mid = new.len() / 2;
    let insert: Vec<u8> = b"a new function body ".repeat(50);
    new.splice(mid..mid, insert);
    let target = dir.join("bash-next");
    std::fs::write(&target, &new).unwrap();
    let pbb = dir.join("bash-next2.pbb");
    let o = Command::new(PFS)
        .args(["plan"])
        .arg(&target)
        .arg("--snapshot")
        .arg(&snap)
        .arg("-o")
        .arg(&pbb)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    for (files, extra) in [
        (vec![target.clone()], vec![]),
        (vec![pbb.clone()], vec![]),
        (
            vec![target.clone()],
            vec!["--impair-drop-ppm".to_string(), "10000".to_string()],
        ),
    ] {
        let mut run = xdp_run(&["--mode", "scatter"], files.clone());
        run.recv_snapshot = snap.clone();
        run.send_snapshot = Some(snap.clone());
        run.recv_extra = extra;
        let o = transfer(&pair, &run);
        assert!(o.send.status.success(), "sender: {}", text(&o.send));
        assert!(o.recv.status.success(), "receiver: {}", text(&o.recv));
        let name = files[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".pbb")
            .to_string();
        let got = std::fs::read(o.out_dir.join(&name)).unwrap();
        assert!(got == new, "{name} differs from the new release");
        let sm = o.send_metrics.as_ref().unwrap();
        assert_eq!(sm["packed_files"], 1, "{sm}");
        // The packed stream is what travels, and it is smaller than the file.
        assert!(
            sm["stream_bytes"].as_u64().unwrap() < sm["file_bytes"].as_u64().unwrap() / 2,
            "{sm}"
        );
        assert_nothing_attached(&pair);
    }
}

/// Every file of the send in `sm` (the sender's metrics JSON) was streamed (planned and
/// packed by the producer while the session ran), and its first data frame left before the
/// receiver's confirmation.
fn assert_streamed(sm: &serde_json::Value, files: usize) {
    assert_eq!(sm["streamed_files"], files, "{sm}");
    let (first, data, total) = (
        sm["first_frame"].as_f64().expect("first_frame"),
        sm["first_data"].as_f64().expect("first_data"),
        sm["total"].as_f64().unwrap(),
    );
    assert!(first <= data && data <= total, "{sm}");
}

/// What the worker of each queue in `m` (metrics JSON) sealed, opened and failed to open.
fn split_of(m: &serde_json::Value) -> Vec<(u64, u64, u64)> {
    m["xdp"]["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            let w = &q["worker"];
            let n = |k: &str| w[k].as_u64().unwrap_or_else(|| panic!("no {k}: {q}"));
            (n("sealed"), n("opened"), n("open_failed"))
        })
        .collect()
}

/// The worker of each queue in `m` (metrics JSON): (queue, cpu, rx_frames, tx_frames).
fn workers_of(m: &serde_json::Value) -> Vec<(u64, Option<u64>, u64, u64)> {
    m["xdp"]["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            let w = &q["worker"];
            assert!(w.is_object(), "queue without a worker: {q}");
            (
                q["queue"].as_u64().unwrap(),
                w["cpu"].as_u64(),
                q["rx_frames"].as_u64().unwrap(),
                q["tx_frames"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn xdp_one_pinned_worker_per_queue_and_the_session_thread_alone() {
    if skip() {
        return;
    }
    let fx = fixture();
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    // Workers (the default), all pinned to core 0: 2 queues -> 2 workers on distinct queues,
    // and in scatter mode every worker's socket carries frames both ways.
    let o = transfer(
        &pair,
        &xdp_run(&["--mode", "scatter", "--cpus", "0"], fx.all()),
    );
    assert_bit_exact(&o, &fx.all());
    check_xdp_metrics(&o);
    let stderr = String::from_utf8_lossy(&o.recv.stderr);
    assert!(
        stderr.contains("xdp threads: workers q0->cpu0 q1->cpu0"),
        "mapping not printed: {stderr}"
    );
    let (sm, rm) = (
        o.send_metrics.as_ref().unwrap(),
        o.recv_metrics.as_ref().unwrap(),
    );
    for m in [sm, rm] {
        assert_eq!(m["xdp"]["threads"], "workers", "{m}");
    }
    assert_streamed(sm, fx.all().len());
    let (sw, rw) = (workers_of(sm), workers_of(rm));
    for ws in [&sw, &rw] {
        let mut queues: Vec<u64> = ws.iter().map(|w| w.0).collect();
        queues.sort();
        assert_eq!(queues, vec![0, 1], "{ws:?}");
        assert!(
            ws.iter().all(|w| w.1 == Some(0)),
            "not pinned to core 0: {ws:?}"
        );
    }
    assert!(
        sw.iter().all(|w| w.3 > 0),
        "a sender worker sent nothing: {sw:?}"
    );
    assert!(
        rw.iter().all(|w| w.2 > 0),
        "a receiver worker got nothing: {rw:?}"
    );
    // Keyed: the workers sealed what they sent and opened what they received.
    let (ss, rs) = (split_of(sm), split_of(rm));
    assert!(
        ss.iter().all(|w| w.0 > 0),
        "a sender worker sealed nothing: {ss:?}"
    );
    assert!(
        rs.iter().map(|w| w.1).sum::<u64>() > 0,
        "no receiver worker opened: {rs:?}"
    );
    assert_eq!(rm["security"]["counters"]["tag_failures"], 0, "{rm}");
    // The sender's workers only transmit: the answers came on kernel UDP (its reader
    // thread), with no program on the sending interface.
    assert!(sm["xdp"]["kernel_answers"].as_u64().unwrap() > 0, "{sm}");
    assert_eq!(sm["xdp"]["xdp_mode"], "no program", "{sm}");
    assert_nothing_attached(&pair);

    // The session thread alone: no workers in the report, same result on the disk.
    let o = transfer(
        &pair,
        &xdp_run(&["--mode", "scatter", "--xdp-threads", "session"], fx.all()),
    );
    assert_bit_exact(&o, &fx.all());
    check_xdp_metrics(&o);
    assert_streamed(o.send_metrics.as_ref().unwrap(), fx.all().len());
    for m in [&o.send_metrics, &o.recv_metrics] {
        let m = m.as_ref().unwrap();
        assert_eq!(m["xdp"]["threads"], "session", "{m}");
        for q in m["xdp"]["queues"].as_array().unwrap() {
            assert!(q["worker"].is_null(), "{q}");
        }
    }
    assert_nothing_attached(&pair);
}

/// Key phases while the workers seal and open: a new key every 500 frames per direction
/// (`--rekey-packets`, testing only), two queues, each with its worker. The workers are
/// handed each new key as the session thread moves to it, and every file arrives bit-exact.
/// Phases this short are shorter than the skew between two queues on a loaded 2-core
/// machine (thousands of frames reordered): a frame that arrives after the phase after its
/// own began fails its tag whoever opens it (one previous key is kept, and a phase bit
/// names two phases ahead as well), so tag failures are not asserted to be zero; every one
/// a worker found is counted, and the frames are repaired.
#[test]
fn xdp_workers_across_key_phases() {
    if skip() {
        return;
    }
    let fx = fixture();
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    let files = vec![fx.file("random10m"), fx.file("bash")];
    let o = transfer(
        &pair,
        &xdp_run(
            &[
                "--mode",
                "scatter",
                "--xdp-threads",
                "workers",
                "--rekey-packets",
                "500",
            ],
            files.clone(),
        ),
    );
    assert_bit_exact(&o, &files);
    let (sm, rm) = (
        o.send_metrics.as_ref().unwrap(),
        o.recv_metrics.as_ref().unwrap(),
    );
    // The sender sealed about 7500 frames: 14 or more key phases; the receiver moved with it.
    let (sc, rc) = (&sm["security"]["counters"], &rm["security"]["counters"]);
    assert!(sc["rekeys"].as_u64().unwrap() >= 14, "{sc}");
    assert!(rc["rekeys"].as_u64().unwrap() >= 14, "{rc}");
    let opened: u64 = split_of(rm).iter().map(|w| w.1).sum();
    let failed: u64 = split_of(rm).iter().map(|w| w.2).sum();
    let sealed: u64 = split_of(sm).iter().map(|w| w.0).sum();
    assert!(opened > 0 && sealed > 0, "{}", rm["xdp"]);
    assert!(rc["tag_failures"].as_u64().unwrap() >= failed, "{rc}");
    eprintln!(
        "rekeys sender {} receiver {}; opened by the receiver's workers {opened} of {} frames, failed there {failed}, tag failures {}, reordered {}",
        sc["rekeys"], rc["rekeys"], rm["frames"], rc["tag_failures"], rm["xdp"]["reordered"]
    );
    assert_nothing_attached(&pair);
}

/// `--busy-poll` on both sides, with the session thread and with the workers: the sockets
/// are polled instead of slept on, and the files arrive bit-exact all the same.
#[test]
fn xdp_busy_poll_session_thread_and_workers() {
    if skip() {
        return;
    }
    let fx = fixture();
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    for threads in ["session", "workers"] {
        let o = transfer(
            &pair,
            &xdp_run(
                &["--mode", "scatter", "--busy-poll", "--xdp-threads", threads],
                fx.all(),
            ),
        );
        assert_bit_exact(&o, &fx.all());
        check_xdp_metrics(&o);
        for m in [&o.send_metrics, &o.recv_metrics] {
            let m = m.as_ref().unwrap();
            assert_eq!(m["xdp"]["threads"], threads, "{m}");
        }
        assert_nothing_attached(&pair);
    }
}

/// `--insecure` on both sides over AF_XDP: the frames go unsealed, both summaries say so.
#[test]
fn xdp_insecure_session() {
    if skip() {
        return;
    }
    let fx = fixture();
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    let files = vec![fx.file("bash"), fx.file("covered")];
    let o = transfer(
        &pair,
        &xdp_run(&["--insecure", "--mode", "scatter"], files.clone()),
    );
    assert_bit_exact(&o, &files);
    for m in [&o.send_metrics, &o.recv_metrics] {
        let m = m.as_ref().unwrap();
        assert_eq!(m["security"]["mode"], "NONE (--insecure)", "{m}");
    }
    assert!(text(&o.send).contains("security: NONE (--insecure)"));
    assert_nothing_attached(&pair);
}

/// How many distinct places of `cap` hold a run of at least 64 bytes of `file`.
fn leaked_runs(cap: &[u8], file: &[u8]) -> usize {
    use std::collections::HashMap;
    const W: usize = 32;
    let mut at: HashMap<&[u8], usize> = HashMap::new();
    for o in (0..file.len().saturating_sub(W)).step_by(W) {
        at.entry(&file[o..o + W]).or_insert(o);
    }
    let (mut hits, mut i) = (0, 0);
    while i + W <= cap.len() {
        if let Some(&o) = at.get(&cap[i..i + W]) {
            // Extend the match both ways: any 64-byte run holds an aligned 32-byte window.
            let back = (1..=i.min(o))
                .take_while(|k| cap[i - k] == file[o - k])
                .count();
            let fwd = (0..)
                .take_while(|k| {
                    i + k < cap.len() && o + k < file.len() && cap[i + k] == file[o + k]
                })
                .count();
            if back + fwd >= 64 {
                hits += 1;
                i += fwd;
                continue;
            }
        }
        i += 1;
    }
    hits
}

/// A tcpdump capture on the receiver's veth of a keyed UDP transfer holds no 64-byte run of
/// the file and not its name; the same capture of an `--insecure` transfer does (the
/// control that shows the check can see them).
#[test]
fn a_capture_of_a_keyed_transfer_holds_no_file_bytes_nor_its_name() {
    if skip() {
        return;
    }
    if Command::new("tcpdump").arg("--version").output().is_err() {
        eprintln!("skipping: tcpdump is not installed (scripts/setup.sh installs it)");
        return;
    }
    let fx = fixture();
    let dir = fx.dir.join("capture");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let name = "secret-name-q7x2.bin";
    let file = dir.join(name);
    let content = Rng(99).bytes(1_500_000);
    std::fs::write(&file, &content).unwrap();
    let pair = NetnsPair::new(1, 1500).expect("netns pair");
    for insecure in [false, true] {
        let pcap = dir.join(if insecure {
            "plain.pcap"
        } else {
            "sealed.pcap"
        });
        let mut td = Command::new("ip")
            .args(["netns", "exec", &pair.ns(Side::B), "tcpdump", "-i"])
            .arg(pair.iface(Side::B))
            .args(["-U", "-s", "0", "-w"])
            .arg(&pcap)
            .arg("udp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        // Readiness: tcpdump says "listening on" once its socket is open.
        let mut err = BufReader::new(td.stderr.take().unwrap());
        let mut line = String::new();
        while err.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("listening on") {
            line.clear();
        }
        let run = Run {
            transport: "udp",
            both: if insecure {
                vec!["--insecure".into()]
            } else {
                Vec::new()
            },
            recv_extra: Vec::new(),
            send_extra: Vec::new(),
            recv_snapshot: fx.snap(),
            send_snapshot: None,
            files: vec![file.clone()],
        };
        let o = transfer(&pair, &run);
        assert_bit_exact(&o, std::slice::from_ref(&file));
        // Both processes are done: every frame went through the interface. SIGINT makes
        // tcpdump flush and exit.
        unsafe {
            libc::kill(td.id() as i32, libc::SIGINT);
        }
        td.wait().unwrap();
        let cap = std::fs::read(&pcap).unwrap();
        assert!(
            cap.len() > content.len() / 2,
            "the capture saw the transfer"
        );
        let leaks = leaked_runs(&cap, &content);
        let named = cap.windows(name.len()).any(|w| w == name.as_bytes());
        eprintln!(
            "capture ({}): {} bytes, {} runs of >= 64 file bytes, name seen: {named}",
            if insecure { "--insecure" } else { "keyed" },
            cap.len(),
            leaks
        );
        if insecure {
            assert!(
                leaks > 100 && named,
                "the control capture should show the file"
            );
        } else {
            assert_eq!(leaks, 0, "file bytes in the keyed capture");
            assert!(!named, "the file name is in the keyed capture");
        }
    }
}

/// With `-vv` both sides log each AF_XDP start-up step with its time since the command
/// started (`pfs::startup` marks): what `docs/XDP.md` ("Start-up") tells people to read.
#[test]
fn xdp_startup_marks_name_each_step() {
    if skip() {
        return;
    }
    let fx = fixture();
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    let f = fx.all()[0].clone();
    for answers in ["kernel", "xdp"] {
        let mut run = xdp_run(&["-vv", "--mode", "scatter"], vec![f.clone()]);
        run.send_extra = vec!["--xdp-answers".into(), answers.into()];
        let o = transfer(&pair, &run);
        assert_bit_exact(&o, std::slice::from_ref(&f));
        check_startup_marks(&pair, &o, answers == "xdp");
    }
    assert_nothing_attached(&pair);
}

/// The start-up marks of both sides (`program`: the sender attached its program too).
fn check_startup_marks(pair: &NetnsPair, o: &Outcome, program: bool) {
    let (recv, send) = (text(&o.recv), text(&o.send));
    let if_a = pair.iface(Side::A);
    let if_b = pair.iface(Side::B);
    for step in [
        "snapshot mapped".to_string(),
        "program loaded".into(),
        "link attached (native mode)".into(),
        format!("socket bound {if_b} q0"),
        format!("socket bound {if_b} q1"),
        "set-up done".into(),
        "listening".into(),
        "first frame received".into(),
    ] {
        assert!(
            recv.lines()
                .any(|l| l.contains("pfs::startup") && l.contains("recv +") && l.contains(&step)),
            "recv mark {step:?} missing:\n{recv}"
        );
    }
    let mut steps = vec![
        "snapshot mapped".to_string(),
        "addresses resolved".into(),
        format!("socket bound {if_a} q0"),
        format!("socket bound {if_a} q1"),
        "first frame sent".into(),
    ];
    if program {
        steps.extend([
            "program loaded".into(),
            "link attached (native mode)".into(),
            "set-up done (sockets in the XSKMAP)".into(),
        ]);
    } else {
        steps.push("set-up done (sockets bound, no program)".into());
    }
    let marked = |step: &str| {
        send.lines()
            .any(|l| l.contains("pfs::startup") && l.contains("send +") && l.contains(step))
    };
    for step in &steps {
        assert!(marked(step), "send mark {step:?} missing:\n{send}");
    }
    if !program {
        assert!(!marked("program loaded"), "no program expected:\n{send}");
    }
}

/// `pfs send` of `file` over AF_XDP from namespace A to B with `extra` flags, no receiver
/// started (for runs that must fail before or at the handshake).
fn send_alone(pair: &NetnsPair, file: &Path, extra: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &pair.ns(Side::A), PFS, "send"])
        .args(["--transport", "xdp", "--iface", &pair.iface(Side::A)])
        .args(["--dst", &pair.addr(Side::B).to_string()])
        .arg("--snapshot")
        .arg(fixture().snap())
        .args(extra)
        .arg(file)
        .output()
        .expect("run pfs send")
}

/// A sender on a host where the steered port is taken (a UDP socket on 47000 in namespace
/// A, as a `pfs recv --transport udp` there would hold it) still takes its answers on
/// kernel UDP, in `ports` mode too: its frames leave from ports the kernel picked for its
/// own answer sockets (one per flow), none of them 47000, and the files arrive.
#[test]
fn xdp_answers_come_on_ports_of_the_senders_own() {
    if skip() {
        return;
    }
    let fx = fixture();
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    let ip = pair.addr(Side::A);
    let holder = pair.run_in(Side::A, move || std::net::UdpSocket::bind((ip, 47000)));
    let _holder = holder.expect("bind the steered port in namespace A");
    let f = fx.file("bash");
    for (mode, flows) in [
        (vec!["--mode", "scatter"], 1),
        (vec!["--mode", "ports", "--ports", "2"], 2),
    ] {
        let mut run = xdp_run(&mode, vec![f.clone()]);
        run.send_extra = vec!["--xdp-answers".into(), "kernel".into()];
        let o = transfer(&pair, &run);
        assert_bit_exact(&o, std::slice::from_ref(&f));
        check_xdp_metrics(&o);
        let x = &o.send_metrics.as_ref().unwrap()["xdp"];
        let ports: Vec<u64> = x["kernel_answer_ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        assert_eq!(ports.len(), flows, "{mode:?}: {x}");
        assert!(ports.iter().all(|&p| p != 47000 && p != 47001), "{x}");
        assert_nothing_attached(&pair);
    }
}

/// Frames tampered with in the XDP program (one bit flipped in 2% of them) over a keyed
/// AF_XDP session, with the session thread alone and with the workers (which open the
/// frames, so a failed tag is found there and counted by the session thread): each fails
/// its tag, is dropped and counted, is repaired like a loss, and every file arrives
/// bit-exact.
#[test]
fn xdp_tampered_frames_are_dropped_counted_and_repaired() {
    if skip() {
        return;
    }
    let fx = fixture();
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    let files = vec![fx.file("random10m"), fx.file("bash")];
    for threads in ["session", "workers"] {
        let mut run = xdp_run(
            &["--mode", "scatter", "--xdp-threads", threads],
            files.clone(),
        );
        run.recv_extra = vec!["--impair-flip-ppm".into(), "20000".into()];
        let o = transfer(&pair, &run);
        assert_bit_exact(&o, &files);
        let rm = o.recv_metrics.as_ref().unwrap();
        let flipped = rm["xdp"]["steer"]["impaired_flip"].as_u64().unwrap();
        let tags = rm["security"]["counters"]["tag_failures"].as_u64().unwrap();
        let replays = rm["security"]["counters"]["replays"].as_u64().unwrap();
        assert!(flipped > 0, "{}", rm["xdp"]["steer"]);
        // A flip in a frame long enough to have byte 40 of its datagram lands in the sealed
        // payload or tag: the tag fails (frames too short to flip are not counted as
        // flipped). The one unsealed frame, the handshake init, fails its CRC instead if it
        // is hit.
        assert!(
            tags <= flipped && tags + 1 >= flipped,
            "{threads}: flipped {flipped}: {}",
            rm["security"]
        );
        if threads == "workers" {
            // Every frame a worker found tampered with reached the counters (as a tag
            // failure, or a replay where its counter was taken already).
            let failed: u64 = split_of(rm).iter().map(|w| w.2).sum();
            let opened: u64 = split_of(rm).iter().map(|w| w.1).sum();
            assert!(opened > 0 && failed > 0, "{threads}: {}", rm["xdp"]);
            assert!(
                failed <= tags + replays,
                "{threads}: failed {failed}: {}",
                rm["security"]
            );
        }
        let sm = o.send_metrics.as_ref().unwrap();
        assert!(sm["retransmissions"].as_u64().unwrap() > 0, "{sm}");
        eprintln!(
            "{threads}: flipped {flipped}, tag failures {tags}, retransmitted {}",
            sm["retransmissions"]
        );
        assert_nothing_attached(&pair);
    }
}

/// A firewall on the sending host that drops the receiver's UDP answers (an iptables rule
/// in namespace A on UDP from port 47000): the default sender (answers on kernel UDP) gives up at the handshake
/// and says that nothing came back and what to try; with `--xdp-answers xdp` the program
/// takes the answers before the firewall sees them and the file arrives.
#[test]
fn a_firewall_dropping_the_answers_is_named_and_the_program_gets_past_it() {
    if skip() {
        return;
    }
    let fx = fixture();
    let pair = NetnsPair::new(2, 1500).expect("netns pair");
    let added = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.ns(Side::A),
            "iptables",
            "-A",
            "INPUT",
        ])
        .args(["-p", "udp", "--sport", "47000", "-j", "DROP"])
        .output();
    match added {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return eprintln!(
                "skipped: iptables refused a rule in the test namespace: {}",
                String::from_utf8_lossy(&o.stderr)
            )
        }
        Err(e) => return eprintln!("skipped: no iptables here: {e}"),
    }
    let f = fx.file("bash");
    let work = tempfile::tempdir().unwrap();
    let keys = common::keys::KeyFiles::create(work.path());
    // No receiver is needed for the failure: nothing can come back either way.
    let flags = keys.send_flags();
    let send = send_alone(
        &pair,
        &f,
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(!send.status.success(), "{}", text(&send));
    let err = String::from_utf8_lossy(&send.stderr);
    assert!(
        err.contains("nothing came back to this host's UDP port ")
            && err.contains("--xdp-answers xdp"),
        "{err}"
    );

    let mut run = xdp_run(&["--mode", "scatter"], vec![f.clone()]);
    run.send_extra = vec!["--xdp-answers".into(), "xdp".into()];
    let o = transfer(&pair, &run);
    assert_bit_exact(&o, std::slice::from_ref(&f));
    check_xdp_metrics(&o);
    assert_nothing_attached(&pair);
}
