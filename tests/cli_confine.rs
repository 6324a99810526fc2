//! A sender's `dir=` in the receiver's authorized-senders file, end to end over loopback UDP
//! (no privileges needed): its files land beneath `OUT/DIR` and nowhere else; a `dir=` that
//! reaches outside through a symlink planted in the out-dir is refused, nothing is written
//! outside, and both sides fail.
//!
//! The keys come from `pfs keygen`; the transfer needs the handshake's flags (`--identity`,
//! `--authorized-senders`, `--receiver-key`): a build without them skips, saying so.

use std::path::Path;
use std::process::Output;

mod common;
use common::cli::{build_snapshot, pfs, spawn_listening, udp_recv};

fn has_key_flags() -> bool {
    let h = pfs().args(["recv", "--help"]).output().unwrap();
    String::from_utf8_lossy(&h.stdout).contains("--authorized-senders")
}

struct Keys {
    sender: std::path::PathBuf,
    receiver: std::path::PathBuf,
    sender_pub: String,
    receiver_pub: String,
}

fn keys(dir: &Path) -> Keys {
    let gen = |name: &str| {
        let p = dir.join(name);
        let o = pfs().args(["keygen", "--out"]).arg(&p).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (p, String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let (sender, sender_pub) = gen("sender.key");
    let (receiver, receiver_pub) = gen("receiver.key");
    Keys {
        sender,
        receiver,
        sender_pub,
        receiver_pub,
    }
}

/// Run one session: the receiver with `authorized` as its authorized-senders file, the
/// sender sending `file`. Returns both outputs and the receiver's stderr.
fn session(
    snap: &str,
    k: &Keys,
    authorized: &Path,
    out: &Path,
    file: &Path,
) -> (Output, Output, String) {
    let mut cmd = udp_recv(snap, "30");
    cmd.arg("--identity")
        .arg(&k.receiver)
        .arg("--authorized-senders")
        .arg(authorized)
        .arg("--out-dir")
        .arg(out)
        .arg("--metrics")
        .arg(out.with_extension("jsonl"));
    let (rx, port, mut err, seen) = spawn_listening(cmd);
    let s = pfs()
        .args(["send", "--transport", "udp", "--snapshot", snap])
        .args(["--dst", &format!("127.0.0.1:{port}")])
        .arg("--identity")
        .arg(&k.sender)
        .args(["--receiver-key", &k.receiver_pub, "--metrics"])
        .arg(out.with_extension("send.jsonl"))
        .arg(file)
        .output()
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let r = rx.wait_with_output().unwrap();
    (s, r, seen + &rest)
}

fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

#[test]
fn a_senders_files_land_beneath_its_dir_and_a_symlinked_dir_is_refused() {
    if !has_key_flags() {
        eprintln!("skipped: this build of pfs has no --authorized-senders (issue 12's handshake)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "9");
    let k = keys(d.path());
    let file = d.path().join("notes.txt");
    std::fs::write(&file, b"confined bytes").unwrap();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();

    let ok = d.path().join("authorized_ok");
    std::fs::write(&ok, format!("{} alice dir=senders/alice\n", k.sender_pub)).unwrap();
    let (s, r, rerr) = session(&snap, &k, &ok, &out, &file);
    assert!(
        s.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    assert!(r.status.success(), "receiver: {rerr}");
    assert_eq!(
        std::fs::read(out.join("senders/alice/notes.txt")).unwrap(),
        b"confined bytes"
    );
    assert_eq!(
        tree(&out),
        ["senders", "senders/alice", "senders/alice/notes.txt"]
    );

    // A symlink in the out-dir where the sender's directory would be, pointing outside.
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("mallory")).unwrap();
    let evil = d.path().join("authorized_evil");
    std::fs::write(&evil, format!("{} mallory dir=mallory\n", k.sender_pub)).unwrap();
    let (s, r, rerr) = session(&snap, &k, &evil, &out, &file);
    let serr = String::from_utf8_lossy(&s.stderr);
    assert!(!s.status.success(), "the sender must fail: {serr}");
    assert!(!r.status.success(), "the receiver must fail: {rerr}");
    assert!(rerr.contains("symbolic link"), "receiver: {rerr}");
    // the receiver still answers the handshake and refuses the session with a reason: the
    // sender hears it instead of waiting for a handshake that never completes
    assert!(
        !serr.contains("handshake") && serr.contains("receiver"),
        "the sender should report the receiver's refusal: {serr}"
    );
    assert!(!serr.contains("panicked") && !rerr.contains("panicked"));
    assert!(tree(&outside).is_empty(), "{:?}", tree(&outside));
}
