//! `pfs doctor`: the output format and exit status without privileges, and an all-ok run
//! inside a test namespace's veth (root).

mod common;

use std::process::{Command, Output};

use common::netns::{NetnsPair, Side};
use common::privileged::{skip, Need};

fn pfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pfs"))
}

/// (status, check) of every check line; panics on a line that is neither a check, a `fix:`
/// line nor the summary.
fn parse(o: &Output) -> Vec<(String, String, String)> {
    let text = String::from_utf8_lossy(&o.stdout);
    let mut checks = Vec::new();
    let mut saw_summary = false;
    for line in text.lines() {
        if line.starts_with("doctor: ") {
            saw_summary = true;
            continue;
        }
        let t = line.trim_start();
        if t.starts_with("fix: ") {
            assert!(line.starts_with(' '), "fix line must be indented: {line:?}");
            assert!(!checks.is_empty(), "fix before any check: {line:?}");
            continue;
        }
        let mut it = line.split_whitespace();
        let status = it.next().unwrap_or_default().to_string();
        let name = it.next().unwrap_or_default().to_string();
        assert!(
            ["ok", "warn", "missing"].contains(&status.as_str()),
            "bad status in {line:?}\n{text}"
        );
        checks.push((status, name, line.to_string()));
    }
    assert!(saw_summary, "no summary line:\n{text}");
    checks
}

fn status_of<'a>(checks: &'a [(String, String, String)], name: &str) -> &'a str {
    checks
        .iter()
        .find(|c| c.1 == name)
        .map(|c| c.0.as_str())
        .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
}

#[test]
fn missing_snapshot_fails_and_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("no-snapshot-here");
    let o = pfs()
        .arg("doctor")
        .arg("--snapshot")
        .arg(&absent)
        .output()
        .unwrap();
    let checks = parse(&o);
    assert_eq!(status_of(&checks, "snapshot"), "missing");
    assert!(!o.status.success(), "a missing snapshot must fail doctor");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!(
            "fix: pfs snapshot build --out {}",
            absent.display()
        )),
        "{text}"
    );
    for name in [
        "kernel",
        "af_xdp",
        "bpffs",
        "capabilities",
        "ebpf_object",
        "hugepages",
    ] {
        status_of(&checks, name);
    }
    // Every non-ok check carries a fix line right after it.
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("missing") || l.starts_with("warn") {
            assert!(
                lines
                    .get(i + 1)
                    .is_some_and(|n| n.trim_start().starts_with("fix: ")),
                "no fix after {l:?}"
            );
        }
    }
}

#[test]
fn config_file_names_what_to_check_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pfs.toml");
    std::fs::write(
        &cfg,
        "interface = \"pfs-no-such1\"\nsnapshot = \"/nonexistent/pfs-snap\"\n",
    )
    .unwrap();
    let o = pfs()
        .arg("doctor")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let checks = parse(&o);
    assert_eq!(status_of(&checks, "interface"), "missing", "{text}");
    assert!(text.contains("pfs-no-such1"), "{text}");
    assert!(text.contains("/nonexistent/pfs-snap"), "{text}");
    assert!(!o.status.success());
    // --iface overrides the file's interface.
    let o = pfs()
        .arg("doctor")
        .arg("--config")
        .arg(&cfg)
        .args(["--iface", "lo"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(!text.contains("pfs-no-such1"), "{text}");
    // An unknown key is refused, by name.
    std::fs::write(&cfg, "interfce = \"eth0\"\n").unwrap();
    let o = pfs()
        .arg("doctor")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("interfce"), "{err}");
}

#[test]
fn unknown_interface_is_missing() {
    let o = pfs()
        .args(["doctor", "--iface", "pfs-no-such0"])
        .output()
        .unwrap();
    let checks = parse(&o);
    assert_eq!(status_of(&checks, "interface"), "missing");
    assert!(!o.status.success());
}

#[test]
fn all_ok_on_a_namespace_veth() {
    if skip(&[Need::Tool("nsenter", "util-linux")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    let o = pfs()
        .args(["snapshot", "build", "--size-mb", "1", "--no-index", "--out"])
        .arg(&snap)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let pair = NetnsPair::new(2, 1500).unwrap();
    let ns = pair.ns(Side::B);
    // nsenter --net keeps this mount namespace (bpffs stays visible), unlike `ip netns exec`.
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(env!("CARGO_BIN_EXE_pfs"))
        .args(["doctor", "--iface", &pair.iface(Side::B), "--snapshot"])
        .arg(&snap)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("{text}");
    let checks = parse(&o);
    assert!(o.status.success(), "doctor failed:\n{text}");
    for name in [
        "kernel",
        "af_xdp",
        "bpffs",
        "capabilities",
        "ebpf_object",
        "interface",
        "native_xdp",
        "queues",
        "mtu",
        "snapshot",
    ] {
        assert_eq!(status_of(&checks, name), "ok", "{name}:\n{text}");
    }
    assert!(text.contains("2 rx / 2 tx queues"), "{text}");
    let id = packetfs::pob::Snapshot::read_manifest(&snap)
        .unwrap()
        .snapshot_id;
    assert!(text.contains(&id), "snapshot id not printed:\n{text}");
    // The attach test left nothing on the interface.
    let left = pair.run_in(Side::B, move || {
        packetfs::steer::attached_xdp(&ns)
            .map(|a| a.any())
            .unwrap_or(false)
    });
    assert!(!left, "doctor left an XDP program attached");
}
