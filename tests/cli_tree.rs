//! `pfs send DIR` end to end over loopback UDP with keys (no privileges needed): a tree with
//! nested directories, modes, mtimes, links, an empty directory and 1,000 small files arrives
//! identical in one session (`diff -r --no-dereference`, then every entry's mode and mtime
//! compared with lstat); links out of the tree are skipped; `--follow-symlinks` sends the
//! targets; fifos are skipped with a note.

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Output};

mod common;
use common::cli::{build_snapshot, pfs, spawn_listening, udp_recv};
use common::keys::KeyFiles;

/// A receiver on 127.0.0.1 (one session), with the port it printed.
fn start_recv(snap: &str, out: &Path, keys: &KeyFiles) -> (Child, u16) {
    let mut cmd = udp_recv(snap, "60");
    cmd.args(keys.recv_flags())
        .arg("--out-dir")
        .arg(out)
        .arg("--metrics")
        .arg(out.with_extension("jsonl"));
    let (c, port, mut err, _) = spawn_listening(cmd);
    // keep draining stderr so that the receiver never blocks on it
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut err, &mut std::io::sink());
    });
    (c, port)
}

/// Send `inputs` to a fresh receiver into `out`; returns both outputs.
fn transfer(
    snap: &str,
    keys: &KeyFiles,
    out: &Path,
    inputs: &[&Path],
    extra: &[&str],
) -> (Output, Output) {
    std::fs::create_dir_all(out).unwrap();
    let (rx, port) = start_recv(snap, out, keys);
    let s = pfs()
        .args(["send", "--transport", "udp", "--snapshot", snap])
        .args(keys.send_flags())
        .args(["--dst", &format!("127.0.0.1:{port}"), "--metrics"])
        .arg(out.with_extension("send.jsonl"))
        .args(extra)
        .args(inputs)
        .output()
        .unwrap();
    let r = rx.wait_with_output().unwrap();
    (s, r)
}

fn set_mtime(p: &Path, s: i64, ns: i64) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    utimensat(
        None,
        p,
        &TimeSpec::new(s, ns),
        &TimeSpec::new(s, ns),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// Every path beneath `d` (relative), links not followed.
fn entries(d: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(base).unwrap().to_path_buf());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut v = Vec::new();
    walk(d, d, &mut v);
    v.sort();
    v
}

#[test]
fn a_tree_arrives_identical_in_one_session() {
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "13");
    let keys = KeyFiles::create(d.path());
    let src = d.path().join("src");
    let t = src.join("tree");
    std::fs::create_dir_all(t.join("a/b/c")).unwrap();
    std::fs::create_dir_all(t.join("empty")).unwrap();
    std::fs::create_dir_all(t.join("many")).unwrap();
    std::fs::write(t.join("a/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(t.join("a/run.sh"), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(t.join("a/b/secret"), b"only me").unwrap();
    std::fs::set_permissions(t.join("a/b/secret"), PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(t.join("a/b/c/deep"), vec![7u8; 300_000]).unwrap();
    std::fs::write(t.join("zero"), b"").unwrap();
    let mut rng = common::Rng(13);
    for i in 0..1000 {
        std::fs::write(t.join(format!("many/f{i:04}")), rng.bytes(4096)).unwrap();
    }
    symlink("../run.sh", t.join("a/b/to_run")).unwrap();
    symlink("b/c", t.join("a/dirlink")).unwrap();
    symlink("/etc/passwd", t.join("abs")).unwrap();
    symlink("../../outside", t.join("a/climb")).unwrap();
    std::fs::set_permissions(t.join("a/b"), PermissionsExt::from_mode(0o750)).unwrap();
    for (k, p) in [
        "a/run.sh",
        "a/b/secret",
        "a/b/c/deep",
        "a/b/to_run",
        "a/dirlink",
        "zero",
        "many/f0007",
        "a/b/c",
        "a/b",
        "a",
        "empty",
        "many",
        "",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(
            &t.join(p),
            1_500_000_000 + k as i64 * 1000,
            123_456_789 - k as i64,
        );
    }
    let out = d.path().join("out");
    let (s, r) = transfer(&snap, &keys, &out, &[&t], &[]);
    let (serr, rout) = (
        String::from_utf8_lossy(&s.stderr),
        String::from_utf8_lossy(&r.stdout),
    );
    assert!(s.status.success(), "{serr}");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let sout = String::from_utf8_lossy(&s.stdout);
    assert!(
        sout.contains("1004 regular file(s), 6 directory(ies), 4 link(s)"),
        "{sout}"
    );
    // one session
    let metrics = std::fs::read_to_string(out.with_extension("send.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 1);
    assert!(rout.contains("skipped") && rout.contains("abs"), "{rout}");
    assert!(rout.contains("a/climb"), "{rout}");

    // diff -r without following links: only the two skipped links differ
    let diff = std::process::Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&t)
        .arg(out.join("tree"))
        .output()
        .unwrap();
    let dout = String::from_utf8_lossy(&diff.stdout);
    let mut lines: Vec<String> = dout.lines().map(str::to_owned).collect();
    lines.sort();
    let mut want = vec![
        format!("Only in {}: abs", t.display()),
        format!("Only in {}: climb", t.join("a").display()),
    ];
    want.sort();
    assert_eq!(lines, want, "{dout}");
    assert!(!d.path().join("outside").exists());
    // modes and mtimes of every entry (lstat), the top directory's too
    let skipped = [PathBuf::from("abs"), PathBuf::from("a/climb")];
    let mut compared = 0;
    for p in entries(&t).into_iter().chain([PathBuf::new()]) {
        if skipped.contains(&p) {
            continue;
        }
        let a = std::fs::symlink_metadata(t.join(&p)).unwrap();
        let b = std::fs::symlink_metadata(out.join("tree").join(&p)).unwrap();
        assert_eq!(a.file_type(), b.file_type(), "{}", p.display());
        assert_eq!(a.mode(), b.mode(), "mode of {}", p.display());
        assert_eq!(
            (a.mtime(), a.mtime_nsec()),
            (b.mtime(), b.mtime_nsec()),
            "mtime of {}",
            p.display()
        );
        compared += 1;
    }
    assert_eq!(compared, 1004 + 5 + 1 + 2);
}

#[test]
fn follow_symlinks_sends_the_targets_and_fifos_are_skipped() {
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "14");
    let keys = KeyFiles::create(d.path());
    let t = d.path().join("t");
    std::fs::create_dir_all(t.join("real")).unwrap();
    std::fs::write(t.join("real/data"), b"contents").unwrap();
    let elsewhere = d.path().join("elsewhere.txt");
    std::fs::write(&elsewhere, b"from outside the tree").unwrap();
    symlink(&elsewhere, t.join("ext")).unwrap();
    symlink("real", t.join("dirlink")).unwrap();
    symlink("nowhere", t.join("dangling")).unwrap();
    nix::unistd::mkfifo(
        &t.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();

    let out = d.path().join("out");
    let (s, r) = transfer(&snap, &keys, &out, &[&t], &["--follow-symlinks"]);
    let serr = String::from_utf8_lossy(&s.stderr);
    assert!(s.status.success(), "{serr}");
    assert!(r.status.success());
    assert!(serr.contains("pipe: a fifo"), "{serr}");
    assert!(
        serr.contains("dangling: a link whose target does not exist"),
        "{serr}"
    );
    let sout = String::from_utf8_lossy(&s.stdout);
    assert!(sout.contains("2 special file(s) skipped"), "{sout}");
    let o = out.join("t");
    for (p, want) in [
        ("ext", &b"from outside the tree"[..]),
        ("dirlink/data", b"contents"),
        ("real/data", b"contents"),
    ] {
        let m = std::fs::symlink_metadata(o.join(p)).unwrap();
        assert!(m.is_file(), "{p} is a regular file");
        assert_eq!(std::fs::read(o.join(p)).unwrap(), want, "{p}");
    }
    assert!(std::fs::symlink_metadata(o.join("dirlink"))
        .unwrap()
        .is_dir());
    assert!(!o.join("pipe").exists() && !o.join("dangling").exists());

    // without the flag the links stay links (the dangling one too, the fifo skipped)
    let out2 = d.path().join("out2");
    let (s, _) = transfer(&snap, &keys, &out2, &[&t], &[]);
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let o = out2.join("t");
    for (p, target) in [("dirlink", "real"), ("dangling", "nowhere")] {
        assert_eq!(std::fs::read_link(o.join(p)).unwrap(), Path::new(target));
    }
    // an absolute link is never made
    assert!(std::fs::symlink_metadata(o.join("ext")).is_err());
}

#[test]
fn an_unreadable_file_is_a_clear_error() {
    // root reads everything: a file that vanishes under a walked name stands in
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "15");
    let missing = d.path().join("no-such-dir");
    let o = pfs()
        .args([
            "send",
            "--transport",
            "udp",
            "--insecure",
            "--snapshot",
            &snap,
        ])
        .args(["--dst", "127.0.0.1:9"])
        .arg(&missing)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains("cannot read") && e.contains("no-such-dir"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
}
