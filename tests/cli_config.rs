//! `pfs send --config` / `pfs recv --config` (config/pfs.toml) over loopback UDP, no
//! privileges: file values apply, flags override them, unknown keys are refused by name.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

mod common;
use common::cli::{build_snapshot, pfs};

#[test]
fn config_file_drives_send_and_recv_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let snap = build_snapshot(d, "snap", "5");
    let keys = common::keys::KeyFiles::create(d);
    let out = d.join("out");
    // The file says port 1 (privileged, would fail to bind unprivileged) and timeout 1; the
    // command line overrides both.
    std::fs::write(
        d.join("recv.toml"),
        format!(
            "transport = \"udp\"\nsnapshot = \"{snap}\"\nout-dir = \"{}\"\nlisten = \"127.0.0.1\"\n\
             port = 1\ntimeout = 1\nmetrics = \"{}\"\nidentity = \"{}\"\n\
             authorized-senders = \"{}\"\n",
            out.display(),
            d.join("m.jsonl").display(),
            keys.receiver_key.display(),
            keys.authorized.display()
        ),
    )
    .unwrap();
    let mut r = pfs()
        .args(["recv", "--once"])
        .arg("--config")
        .arg(d.join("recv.toml"))
        .args(["--port", "0", "--timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(r.stderr.take().unwrap());
    let mut line = String::new();
    let port: u16 = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "receiver exited");
        if let Some(rest) = line.split("listening on udp 127.0.0.1:").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    assert_ne!(port, 1, "--port must override the file's port");
    assert!(line.contains(&out.display().to_string()), "{line}");

    let file = d.join("payload.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    std::fs::write(
        d.join("send.toml"),
        format!(
            "transport = \"udp\"\nsnapshot = \"{snap}\"\ndst = \"127.0.0.1\"\nport = {port}\n\
             mtu = 1400\nmetrics = \"{}\"\nidentity = \"{}\"\nreceiver-key = \"{}\"\n",
            d.join("m.jsonl").display(),
            keys.sender_key.display(),
            keys.receiver_pub.to_base64()
        ),
    )
    .unwrap();
    let s = pfs()
        .arg("send")
        .arg("--config")
        .arg(d.join("send.toml"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let ro = r.wait_with_output().unwrap();
    assert!(
        ro.status.success(),
        "{}",
        String::from_utf8_lossy(&ro.stdout)
    );
    assert_eq!(std::fs::read(out.join("payload.bin")).unwrap(), content);
    assert!(
        String::from_utf8_lossy(&s.stdout).contains("security: Noise IKpsk2 + AES-256-GCM"),
        "{}",
        String::from_utf8_lossy(&s.stdout)
    );
}

#[test]
fn unknown_key_and_missing_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("bad.toml"), "snapshot = \"/s\"\noutdir = \"/o\"\n").unwrap();
    let o = pfs()
        .arg("recv")
        .arg("--config")
        .arg(d.join("bad.toml"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("unknown field `outdir`"), "{e}");

    std::fs::write(d.join("half.toml"), "snapshot = \"/s\"\n").unwrap();
    let o = pfs()
        .arg("recv")
        .arg("--config")
        .arg(d.join("half.toml"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--out-dir"), "{e}");

    // Without --config the usual required flags stay required.
    let o = pfs().args(["send", "/etc/hostname"]).output().unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--dst") && e.contains("--snapshot"), "{e}");
}
