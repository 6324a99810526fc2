//! Resume and skip-unchanged end to end over loopback UDP, with keys (no privileges needed):
//! a sender killed mid-transfer, then rerun, sends only what the receiver is missing; a
//! receiver killed mid-transfer keeps a resumable file that the restarted receiver offers;
//! a source changed after a break is sent whole (the held prefix's hash differs);
//! `--no-resume` sends everything; a file sent twice is skipped the second time.
//!
//! When a session breaks is decided by the file system, not by the clock: the sender is
//! paced (`--rate`) and killed once the receiver's journal appears (the first checkpoint,
//! after `fsink::JOURNAL_STEP` durable bytes). No assertion depends on timing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use packetfs::journal::{self, Journal};

mod common;
use common::cli::{build_snapshot, pfs};
use common::keys::KeyFiles;
use common::service::Service;
use common::Rng;

const SIZE: usize = 64 << 20;

struct Setup {
    _d: tempfile::TempDir,
    snap: String,
    keys: KeyFiles,
    out: PathBuf,
    src: PathBuf,
    metrics: PathBuf,
}

fn setup(seed: u64, size: usize) -> Setup {
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "7");
    let keys = KeyFiles::create(d.path());
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let src = d.path().join("big.bin");
    std::fs::write(&src, Rng(seed).bytes(size)).unwrap();
    let metrics = d.path().join("send.jsonl");
    Setup {
        snap,
        keys,
        out,
        src,
        metrics,
        _d: d,
    }
}

impl Setup {
    fn service(&self) -> Service {
        Service::start(&self.snap, &self.out, &self.keys.recv_flags(), &[], None)
    }

    fn send(&self, port: u16, extra: &[&str]) -> Command {
        let mut c = pfs();
        c.args(["send", "--transport", "udp", "--snapshot", &self.snap])
            .args(self.keys.send_flags())
            .args(["--dst", &format!("127.0.0.1:{port}"), "--metrics"])
            .arg(&self.metrics)
            .args(extra)
            .arg(&self.src);
        c
    }

    /// Run a sender to the end; its summary (the last metrics line).
    fn send_ok(&self, port: u16, extra: &[&str]) -> serde_json::Value {
        let o = self.send(port, extra).output().unwrap();
        let (so, se) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "pfs send failed: {so}\n{se}");
        let m = std::fs::read_to_string(&self.metrics).unwrap();
        serde_json::from_str(m.lines().last().unwrap()).unwrap()
    }

    /// A sender paced slowly enough to be killed mid-file.
    fn slow_sender(&self, port: u16) -> Child {
        self.send(port, &["--rate", "200mbit"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn journal_path(&self) -> PathBuf {
        self.out.join(journal::names("big.bin", "big.bin").1)
    }

    fn part_path(&self) -> PathBuf {
        self.out.join(journal::names("big.bin", "big.bin").0)
    }

    /// Wait (60 s at most) until the receiver's journal exists: a durable prefix.
    fn wait_journal(&self) {
        let end = Instant::now() + Duration::from_secs(60);
        while !self.journal_path().exists() {
            assert!(Instant::now() < end, "no journal appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn journal(&self) -> Journal {
        Journal::parse(&std::fs::read(self.journal_path()).unwrap()).unwrap()
    }

    fn assert_received(&self) {
        let got = std::fs::read(self.out.join("big.bin")).unwrap();
        assert!(got == std::fs::read(&self.src).unwrap(), "not bit-exact");
        assert!(!self.part_path().exists() && !self.journal_path().exists());
    }

    /// Break a session by killing the receiver (SIGKILL) once a prefix is durable; the
    /// receiver is started again. Returns it and the prefix its journal vouches for.
    fn break_by_killing_receiver(&self) -> (Service, u64) {
        let mut svc = self.service();
        let mut tx = self.slow_sender(svc.port);
        self.wait_journal();
        svc.child.kill().unwrap();
        svc.child.wait().unwrap();
        tx.kill().unwrap();
        tx.wait().unwrap();
        let prefix = self.journal().prefix;
        let mut svc = self.service();
        assert!(
            svc.seen
                .iter()
                .any(|l| l.contains("kept 1 resumable partial file(s)")),
            "{:?}",
            svc.seen
        );
        svc.assert_running();
        (svc, prefix)
    }
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v.pointer(k)
        .and_then(|x| x.as_u64())
        .unwrap_or_else(|| panic!("{k} in {v}"))
}

#[test]
fn a_killed_sender_rerun_sends_only_the_missing_bytes() {
    let s = setup(1, SIZE);
    let mut svc = s.service();
    let mut tx = s.slow_sender(svc.port);
    s.wait_journal();
    tx.kill().unwrap(); // SIGKILL
    tx.wait().unwrap();
    // The receiver's session breaks at its idle timeout and records its durable prefix.
    svc.wait_line("no answer from the peer");
    let j = s.journal();
    assert_eq!((j.name.as_str(), j.size), ("big.bin", SIZE as u64));
    assert_eq!(j.owner, s.keys.sender_pub.to_base64());
    assert!(j.prefix > 0 && j.prefix < SIZE as u64, "{j:?}");
    let missing = SIZE as u64 - j.prefix;

    let m = s.send_ok(svc.port, &[]);
    s.assert_received();
    assert_eq!(u(&m, "/stats/resumed_files"), 1);
    assert_eq!(u(&m, "/stats/resumed_bytes"), j.prefix);
    let sent = u(&m, "/stream_bytes");
    // Issue 13's goal: no more than the missing bytes + 1% (raw blocks, records, headers).
    assert!(
        sent <= missing + SIZE as u64 / 100,
        "sent {sent} for {missing} missing"
    );
    assert!(
        sent.saturating_sub(missing) < SIZE as u64 / 10,
        "re-sent too much"
    );
    svc.assert_running();
    let (st, _) = svc.stop();
    assert!(st.success());
}

#[test]
fn a_killed_receiver_restarted_offers_its_partial_file_and_the_rerun_completes() {
    let s = setup(2, SIZE);
    let (svc, prefix) = s.break_by_killing_receiver();
    assert!(prefix >= packetfs::fsink::JOURNAL_STEP);
    let m = s.send_ok(svc.port, &[]);
    s.assert_received();
    assert_eq!(u(&m, "/stats/resumed_files"), 1);
    assert_eq!(u(&m, "/stats/resumed_bytes"), prefix);
    assert!(u(&m, "/stream_bytes") <= SIZE as u64 - prefix + SIZE as u64 / 100);
    let (st, _) = svc.stop();
    assert!(st.success());
}

#[test]
fn a_changed_source_is_sent_whole_and_no_resume_sends_everything() {
    let s = setup(3, SIZE);
    let (svc, _) = s.break_by_killing_receiver();
    // The source changes inside the held prefix: its hash differs, nothing is reused.
    let mut b = std::fs::read(&s.src).unwrap();
    b[1000] ^= 0xff;
    std::fs::write(&s.src, &b).unwrap();
    let m = s.send_ok(svc.port, &[]);
    s.assert_received();
    assert_eq!(u(&m, "/stats/resumed_files"), 0);
    assert!(u(&m, "/stream_bytes") >= SIZE as u64);
    let (st, _) = svc.stop();
    assert!(st.success());

    // A partial file again; --no-resume starts it over.
    std::fs::remove_file(s.out.join("big.bin")).unwrap();
    let (svc, _) = s.break_by_killing_receiver();
    let m = s.send_ok(svc.port, &["--no-resume"]);
    s.assert_received();
    assert_eq!(u(&m, "/stats/resumed_files"), 0);
    assert!(u(&m, "/stream_bytes") >= SIZE as u64);
    let (st, _) = svc.stop();
    assert!(st.success());
}

#[test]
fn a_file_sent_twice_is_skipped_the_second_time() {
    let s = setup(4, 4 << 20);
    let mut svc = s.service();
    let first = s.send_ok(svc.port, &[]);
    assert!(u(&first, "/stream_bytes") >= 4 << 20);
    let before = std::fs::metadata(s.out.join("big.bin"))
        .unwrap()
        .modified()
        .unwrap();
    let m = s.send_ok(svc.port, &[]);
    assert_eq!(u(&m, "/stats/skipped_files"), 1);
    assert_eq!(u(&m, "/stats/skipped_bytes"), 4 << 20);
    // No file bytes travel: the resume record and the end record only.
    assert!(u(&m, "/stream_bytes") < 256, "{m}");
    assert_eq!(u(&m, "/stats/repair_bytes"), 0);
    s.assert_received();
    let after = std::fs::metadata(s.out.join("big.bin"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "the held file was left as it is");
    svc.assert_running();
    let (st, _) = svc.stop();
    assert!(st.success());
}
