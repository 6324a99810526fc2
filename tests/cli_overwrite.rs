//! `pfs recv` and existing files, end to end over loopback UDP (no privileges needed): a
//! received name that already exists is refused on both sides, naming the file, and the
//! existing file is left unchanged; `--overwrite` replaces it; temporary files left by an
//! earlier run are removed at start and counted.
//!
//! These transfers carry no keys: when this build has the `--insecure` flag (plaintext only
//! on request, issue 12), both sides pass it; the keys themselves are tested elsewhere.

use std::io::BufReader;
use std::path::Path;
use std::process::{Child, Output};

mod common;
use common::cli::{build_snapshot, pfs, spawn_listening, udp_recv};

/// `["--insecure"]` when this build knows the flag, else nothing.
fn plaintext() -> Vec<&'static str> {
    let h = pfs().args(["recv", "--help"]).output().unwrap();
    if String::from_utf8_lossy(&h.stdout).contains("--insecure") {
        vec!["--insecure"]
    } else {
        vec![]
    }
}

/// Start a receiver on 127.0.0.1 with an OS-chosen port; return it, the port it printed and
/// the stderr lines before that.
fn start_recv(
    snap: &str,
    out: &Path,
    extra: &[&str],
) -> (Child, u16, String, BufReader<std::process::ChildStderr>) {
    let mut cmd = udp_recv(snap, "30");
    cmd.args(plaintext())
        .args(extra)
        .arg("--out-dir")
        .arg(out)
        .arg("--metrics")
        .arg(out.with_extension("jsonl"));
    let (c, port, err, before) = spawn_listening(cmd);
    (c, port, before, err)
}

fn send(snap: &str, port: u16, file: &Path, metrics: &Path) -> Output {
    pfs()
        .args(["send", "--transport", "udp", "--snapshot", snap])
        .args(plaintext())
        .args(["--dst", &format!("127.0.0.1:{port}"), "--metrics"])
        .arg(metrics)
        .arg(file)
        .output()
        .unwrap()
}

fn finish(c: Child, mut err: BufReader<std::process::ChildStderr>) -> (Output, String) {
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let o = c.wait_with_output().unwrap();
    (o, rest)
}

#[test]
fn an_existing_file_is_refused_by_name_unless_overwrite_and_stale_temps_are_cleared() {
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "5");
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let file = src.join("report.txt");
    std::fs::write(&file, b"the new contents").unwrap();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("report.txt"), b"original").unwrap();
    // What a killed receiver leaves behind (a pid above the kernel's limit: no such process).
    std::fs::write(out.join(".old.bin.pfs-tmp-4194311-00ff"), b"partial").unwrap();
    let m = d.path().join("m.jsonl");

    let (rx, port, before, err) = start_recv(&snap, &out, &[]);
    assert!(
        before.contains("removed 1 stale temporary file(s)"),
        "{before}"
    );
    assert!(!out.join(".old.bin.pfs-tmp-4194311-00ff").exists());
    let s = send(&snap, port, &file, &m);
    let (r, rerr) = finish(rx, err);
    let serr = String::from_utf8_lossy(&s.stderr);
    assert!(!s.status.success(), "the sender must fail: {serr}");
    assert!(!r.status.success(), "the receiver must fail: {rerr}");
    for (who, e) in [("sender", &*serr), ("receiver", &*rerr)] {
        assert!(
            e.contains("already exists") && e.contains("report.txt"),
            "{who}: {e}"
        );
        assert!(!e.contains("panicked"), "{who}: {e}");
    }
    assert_eq!(std::fs::read(out.join("report.txt")).unwrap(), b"original");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        1,
        "no temporary file left"
    );

    let (rx, port, _, err) = start_recv(&snap, &out, &["--overwrite"]);
    let s = send(&snap, port, &file, &m);
    let (r, rerr) = finish(rx, err);
    assert!(
        s.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    assert!(r.status.success(), "receiver: {rerr}");
    assert_eq!(
        std::fs::read(out.join("report.txt")).unwrap(),
        b"the new contents"
    );
}
