//! `pfs send` / `pfs recv` end to end over loopback UDP (no privileges needed): several files
//! in one session arrive bit-exact; a snapshot mismatch is refused on both sides, by name.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

fn pfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pfs"))
}

fn build_snapshot(dir: &Path, name: &str, seed: &str) -> String {
    let p = dir.join(name);
    let o = pfs()
        .args([
            "snapshot",
            "build",
            "--size-mb",
            "1",
            "--seed",
            seed,
            "--out",
        ])
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    p.to_string_lossy().into_owned()
}

/// Start a receiver on 127.0.0.1 with an OS-chosen port; return it and the port it printed.
fn start_recv(
    snap: &str,
    out: &Path,
    metrics: &Path,
) -> (Child, u16, BufReader<std::process::ChildStderr>) {
    let mut c = pfs()
        .args([
            "recv",
            "--transport",
            "udp",
            "--listen",
            "127.0.0.1",
            "--port",
            "0",
            "--timeout",
            "30",
            "--snapshot",
            snap,
            "--out-dir",
        ])
        .arg(out)
        .arg("--metrics")
        .arg(metrics)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(c.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "receiver exited before listening"
        );
        if let Some(rest) = line.split("listening on udp 127.0.0.1:").nth(1) {
            let port: u16 = rest.split_whitespace().next().unwrap().parse().unwrap();
            return (c, port, err);
        }
    }
}

fn finish(c: Child, mut err: BufReader<std::process::ChildStderr>) -> (Output, String) {
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let o = c.wait_with_output().unwrap();
    (o, rest)
}

#[test]
fn several_files_in_one_session_arrive_bit_exact() {
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "3");
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::fs::write(src.join("one"), b"x").unwrap();
    std::fs::copy("/usr/bin/true", src.join("true")).unwrap();
    let snap_bytes = std::fs::read(Path::new(&snap).join("snapshot.bin")).unwrap();
    std::fs::write(src.join("covered"), &snap_bytes[100_000..400_000]).unwrap();
    let out = d.path().join("out");
    let m = d.path().join("m.jsonl");
    let (rx, port, err) = start_recv(&snap, &out, &m);
    let s = pfs()
        .args([
            "send",
            "--transport",
            "udp",
            "--snapshot",
            &snap,
            "--dst",
            &format!("127.0.0.1:{port}"),
            "--metrics",
        ])
        .arg(&m)
        .args(["empty", "one", "true", "covered"].map(|f| src.join(f)))
        .output()
        .unwrap();
    assert!(
        s.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    let (r, _) = finish(rx, err);
    assert!(r.status.success(), "receiver failed");
    for f in ["empty", "one", "true", "covered"] {
        assert!(
            std::fs::read(out.join(f)).unwrap() == std::fs::read(src.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let summary = String::from_utf8_lossy(&s.stdout);
    assert!(
        summary.contains("sent 4 file(s)") && summary.contains("effective"),
        "{summary}"
    );
    let lines = std::fs::read_to_string(&m).unwrap();
    assert_eq!(lines.lines().count(), 2, "one metrics line per side");
}

#[test]
fn a_snapshot_mismatch_is_refused_on_both_sides() {
    let d = tempfile::tempdir().unwrap();
    let mine = build_snapshot(d.path(), "a", "1");
    let theirs = build_snapshot(d.path(), "b", "2");
    std::fs::write(d.path().join("f"), b"hello").unwrap();
    let out = d.path().join("out");
    let m = d.path().join("m.jsonl");
    let (rx, port, err) = start_recv(&theirs, &out, &m);
    let s = pfs()
        .args([
            "send",
            "--transport",
            "udp",
            "--snapshot",
            &mine,
            "--dst",
            &format!("127.0.0.1:{port}"),
            "--metrics",
        ])
        .arg(&m)
        .arg(d.path().join("f"))
        .output()
        .unwrap();
    let (r, rerr) = finish(rx, err);
    let serr = String::from_utf8_lossy(&s.stderr);
    assert!(!s.status.success() && !r.status.success());
    assert!(serr.to_lowercase().contains("snapshot"), "sender: {serr}");
    assert!(rerr.to_lowercase().contains("snapshot"), "receiver: {rerr}");
    assert!(!serr.contains("panicked") && !rerr.contains("panicked"));
    assert!(!out.join("f").exists(), "nothing under the final name");
}
