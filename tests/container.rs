//! The container image end to end (root + podman; skips with the reason otherwise).
//!
//! Builds the runtime stage of the Containerfile without pulling anything (a base made by
//! scripts/container-rootfs.sh from this build's `pfs` and the libraries it links), then, in a
//! veth pair between two test namespaces:
//! - `pfs doctor` in a container with exactly NET_ADMIN,NET_RAW,BPF,PERFMON,IPC_LOCK passes
//!   (native XDP attach included);
//! - `pfs recv --transport xdp` in such a container on side B receives files that `pfs send`
//!   sends from side A over AF_XDP; they arrive bit-exact and the container's effective capabilities are exactly those.
//!   The session is authenticated and encrypted: both identities are made with `pfs keygen`
//!   on the host, the receiver's key file and its authorized-senders file are mounted
//!   read-only into the container, and the sender's line confines it to `dir=from-a`, so the
//!   files land in `OUT/from-a` (docs/security.md).
//!
//! Containers, images and namespaces are removed afterwards (also on failure: Drop).
//! The transfer runs over AF_XDP (the XDP program attached natively inside the container);
//! PFS_CONTAINER_TRANSPORT=udp selects the kernel UDP transport instead.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::netns::{NetnsPair, Side};
use common::privileged::{skip, Need};

const CAPS: &str = "NET_ADMIN,NET_RAW,BPF,PERFMON,IPC_LOCK";
/// CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_IPC_LOCK 14, CAP_PERFMON 38, CAP_BPF 39.
const CAP_MASK: u64 = (1 << 12) | (1 << 13) | (1 << 14) | (1 << 38) | (1 << 39);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !o.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    o
}

fn podman() -> Command {
    Command::new("podman")
}

/// `podman run` options every container here gets (../shared/PLATFORM.md: runc, lowered
/// ulimits) plus the data path's capabilities and nothing else.
fn run_args(ns: &str, seccomp: &Path) -> Vec<String> {
    let mut v: Vec<String> = [
        "run",
        "--runtime",
        "/usr/sbin/runc",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--cap-drop",
        "ALL",
        "--cap-add",
        CAPS,
        "--pull",
        "never",
        "-v",
        "/sys/fs/bpf:/sys/fs/bpf",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("--security-opt".into());
    v.push(format!("seccomp={}", seccomp.display()));
    v.push("--network".into());
    v.push(format!("ns:/run/netns/{ns}"));
    if Path::new("/dev/hugepages").is_dir() {
        v.push("-v".into());
        v.push("/dev/hugepages:/dev/hugepages".into());
    }
    v
}

/// Removes what the test made, in reverse order, whatever happened.
struct Cleanup {
    containers: Vec<String>,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = podman().args(["rm", "-f", "-i", c]).output();
        }
        for i in self.images.iter().rev() {
            let _ = podman().args(["rmi", "-f", i]).output();
        }
    }
}

#[test]
fn recv_in_a_capability_limited_container() {
    if skip(&[
        Need::Tool("podman", "apt-get install -y podman runc"),
        Need::File("/usr/sbin/runc", "apt-get install -y runc"),
        Need::Tool("nsenter", "util-linux"),
        Need::Tool("python3", "scripts/container-seccomp.sh needs it"),
    ]) {
        return;
    }
    let transport = std::env::var("PFS_CONTAINER_TRANSPORT").unwrap_or_else(|_| "xdp".to_string());
    let pfs = env!("CARGO_BIN_EXE_pfs");
    let id = std::process::id();
    let base = format!("localhost/pfs-test-base:{id}");
    let image = format!("localhost/pfs-test:{id}");
    let mut clean = Cleanup {
        containers: vec![],
        images: vec![base.clone(), image.clone()],
    };
    let tmp = tempfile::tempdir().unwrap();

    // 1. Images, offline.
    run(Command::new("bash")
        .arg(repo().join("scripts/container-rootfs.sh"))
        .args(["--pfs", pfs, "--tag", &base]));
    run(podman()
        .current_dir(repo())
        .args([
            "build",
            "--pull=never",
            "--runtime",
            "/usr/sbin/runc",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "-f",
            "Containerfile",
            "--target",
            "runtime",
        ])
        .arg(format!("--build-arg=RUNTIME_IMAGE={base}"))
        .arg(format!("--build-arg=PREBUILT_IMAGE={base}"))
        .arg("--build-arg=PFS_BIN_STAGE=prebuilt")
        .args(["-t", &image, "."]));
    let seccomp = tmp.path().join("seccomp.json");
    run(Command::new("bash")
        .arg(repo().join("scripts/container-seccomp.sh"))
        .arg(&seccomp));

    // 2. Snapshot (with indexes, for the sender's planner) and files.
    let snap = tmp.path().join("snap");
    run(Command::new(pfs)
        .args([
            "snapshot",
            "build",
            "--size-mb",
            "2",
            "--seed",
            "7",
            "--out",
        ])
        .arg(&snap));
    let send_dir = tmp.path().join("send");
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&send_dir).unwrap();
    std::fs::create_dir_all(&out_dir).unwrap();
    let snap_bytes = std::fs::read(snap.join("snapshot.bin")).unwrap();
    let mut rng = common::Rng(0xC0FFEE);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("random.bin", rng.bytes(700_000)),
        ("covered.bin", snap_bytes[100_000..900_000].to_vec()),
        ("mixed.bin", {
            let mut v = snap_bytes[5_000..300_000].to_vec();
            v.extend(rng.bytes(50_000));
            v
        }),
        ("empty.bin", Vec::new()),
    ];
    for (n, b) in &files {
        std::fs::write(send_dir.join(n), b).unwrap();
    }
    // Keys: each side's identity (mode 0600), the receiver's list of senders.
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let keygen = |name: &str| {
        let o = run(Command::new(pfs)
            .args(["keygen", "--out"])
            .arg(keys.join(name)));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let sender_pub = keygen("sender.key");
    let receiver_pub = keygen("receiver.key");
    std::fs::write(
        keys.join("authorized_senders"),
        format!("{sender_pub} container-sender dir=from-a\n"),
    )
    .unwrap();

    // 3. Namespaces.
    let pair = NetnsPair::new(2, 1500).unwrap();
    let (ns_a, ns_b) = (pair.ns(Side::A), pair.ns(Side::B));

    // 4. Doctor inside the container, in side B's namespace, with exactly those capabilities.
    let name_doc = format!("pfs-test-doctor-{id}");
    clean.containers.push(name_doc.clone());
    let o = podman()
        .args(run_args(&ns_b, &seccomp))
        .args(["--rm", "--name", &name_doc])
        .arg("-v")
        .arg(format!("{}:/snapshot:ro", snap.display()))
        .args([
            &image,
            "doctor",
            "--iface",
            &ns_b,
            "--snapshot",
            "/snapshot",
        ])
        .output()
        .unwrap();
    let doc = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("{doc}{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "doctor in the container failed:\n{doc}");
    for check in ["capabilities", "ebpf_object", "native_xdp", "snapshot"] {
        assert!(
            doc.lines()
                .any(|l| l.starts_with("ok ") && l.split_whitespace().nth(1) == Some(check)),
            "{check} not ok:\n{doc}"
        );
    }

    // 5. Receiver in a container on side B.
    let name = format!("pfs-test-recv-{id}");
    clean.containers.push(name.clone());
    run(podman()
        .args(run_args(&ns_b, &seccomp))
        .args(["-d", "--name", &name])
        .arg("-v")
        .arg(format!("{}:/snapshot:ro", snap.display()))
        .arg("-v")
        .arg(format!("{}:/out", out_dir.display()))
        .arg("-v")
        .arg(format!("{}:/keys:ro", keys.display()))
        .args([
            &image,
            "recv",
            "--once",
            "--identity",
            "/keys/receiver.key",
            "--authorized-senders",
            "/keys/authorized_senders",
            "--transport",
            &transport,
            "--iface",
            &ns_b,
            "--snapshot",
            "/snapshot",
            "--out-dir",
            "/out",
            "--timeout",
            "60",
            "--metrics",
            "/tmp/metrics.jsonl",
        ]));
    // Wait until it listens (or exits): the loop ends on either, not on a clock.
    loop {
        let logs = podman().args(["logs", &name]).output().unwrap();
        let text = String::from_utf8_lossy(&logs.stderr).into_owned()
            + &String::from_utf8_lossy(&logs.stdout);
        if text.contains("listening on") {
            break;
        }
        let st = run(podman().args(["inspect", "--format", "{{.State.Running}}", &name]));
        assert_eq!(
            String::from_utf8_lossy(&st.stdout).trim(),
            "true",
            "receiver container exited before listening:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Its effective capabilities are exactly the five.
    let pid = run(podman().args(["inspect", "--format", "{{.State.Pid}}", &name]));
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(eff, CAP_MASK, "container CapEff {eff:#x}");

    // 6. Sender on side A (host binary; `ip netns exec` also gives it side A's /sys, where
    // the AF_XDP sender reads its interface's MAC address).
    let dst = pair.addr(Side::B).to_string();
    let mut send = Command::new("ip");
    send.args(["netns", "exec", &ns_a])
        .arg(pfs)
        .args([
            "send",
            "--transport",
            &transport,
            "--iface",
            &ns_a,
            "--dst",
            &dst,
            "--receiver-key",
            &receiver_pub,
            "--identity",
        ])
        .arg(keys.join("sender.key"))
        .arg("--snapshot")
        .arg(&snap)
        .arg("--metrics")
        .arg(tmp.path().join("send-metrics.jsonl"));
    for (n, _) in &files {
        send.arg(send_dir.join(n));
    }
    let so = send.output().unwrap();
    eprintln!(
        "send: {}{}",
        String::from_utf8_lossy(&so.stdout),
        String::from_utf8_lossy(&so.stderr)
    );
    assert!(
        so.status.success(),
        "pfs send failed (the receiver container is removed on drop)"
    );
    let code = run(podman().args(["wait", &name]));
    let logs = podman().args(["logs", &name]).output().unwrap();
    let rtext =
        String::from_utf8_lossy(&logs.stdout).into_owned() + &String::from_utf8_lossy(&logs.stderr);
    eprintln!("recv (container): {rtext}");
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "receiver container failed:\n{rtext}"
    );
    // Confined to the sender's directory: nothing directly in the out-dir.
    for (n, _) in &files {
        assert!(!out_dir.join(n).exists(), "{n} escaped dir=from-a");
    }
    for (n, b) in &files {
        let got = std::fs::read(out_dir.join("from-a").join(n))
            .unwrap_or_else(|e| panic!("from-a/{n}: {e}"));
        assert!(
            got == *b,
            "{n} differs ({} vs {} bytes)",
            got.len(),
            b.len()
        );
    }
    assert!(
        rtext.contains(&format!("received {} file(s)", files.len())),
        "{rtext}"
    );
    // The receiver's summary names the authenticated sender; nothing ran in plaintext.
    assert!(
        rtext
            .lines()
            .any(|l| l.trim_start().starts_with("security:") && l.contains("container-sender")),
        "{rtext}"
    );
    assert!(!rtext.contains("NONE (--insecure)"), "{rtext}");
    if transport == "xdp" {
        assert!(rtext.contains("over xdp"), "{rtext}");
        assert!(!rtext.contains("steered=0 "), "nothing steered:\n{rtext}");
    }

    drop(pair);
    drop(clean);
    for i in [&base, &image] {
        let o = podman().args(["image", "exists", i]).status().unwrap();
        assert!(!o.success(), "{i} left behind");
    }
}
