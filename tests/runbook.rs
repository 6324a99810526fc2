//! docs/two-hosts.md cannot go stale silently: the runbook's commands that can run on one
//! machine run here, on a veth pair between two test namespaces (root; skips otherwise),
//! with the XDP program attached natively as `pfs recv --transport xdp` would attach it.
//! Each command is first looked up verbatim in the document, so editing one there without
//! updating it here fails this test.

mod common;

use std::process::Command;

use common::netns::{NetnsPair, Side};
use common::privileged::{skip, Need};
use packetfs::steer::{Steering, XdpMode};

const DOC: &str = include_str!("../docs/two-hosts.md");

/// Runs `cmd` (a line of the runbook) with bash in the calling thread's network namespace,
/// with the runbook's variables set; returns stdout, panicking on failure.
fn runbook(cmd: &str, vars: &[(&str, String)]) -> String {
    runbook_then(cmd, "", vars)
}

/// [`runbook`] followed by `then` (test-only shell, e.g. to print a variable `cmd` set).
fn runbook_then(cmd: &str, then: &str, vars: &[(&str, String)]) -> String {
    assert!(
        DOC.contains(cmd),
        "docs/two-hosts.md no longer contains: {cmd}"
    );
    let mut c = Command::new("bash");
    c.args(["-o", "pipefail", "-c", &format!("{cmd}\n{then}")]);
    for (k, v) in vars {
        c.env(k, v);
    }
    c.env(
        "PATH",
        format!(
            "{}:{}",
            std::path::Path::new(env!("CARGO_BIN_EXE_pfs"))
                .parent()
                .unwrap()
                .display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{cmd}: {}\n{out}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("$ {cmd}\n{out}");
    out
}

#[test]
fn one_machine_steps_of_the_runbook_run_on_veth() {
    let setup = "scripts/setup.sh installs it";
    if skip(&[
        Need::Tool("ethtool", setup),
        Need::Tool("bpftool", setup),
        Need::Tool("ss", setup),
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    let pair = NetnsPair::new(2, 1500).unwrap();
    let iface = pair.iface(Side::B);
    let vars = vec![
        ("IF", iface.clone()),
        ("SNAP", snap.display().to_string()),
        ("R_IP", pair.addr(Side::B).to_string()),
        ("S_IP", pair.addr(Side::A).to_string()),
        ("Q", "2".to_string()),
    ];
    let v = vars.clone();
    let if_a = pair.iface(Side::A);
    // Step 3 on the sender's end too (both hosts).
    pair.run_in(Side::A, move || {
        runbook("ip link set dev $IF mtu 3400", &[("IF", if_a.clone())]);
    });
    pair.run_in(Side::B, move || {
        // Step 2: build and read the id.
        runbook(
            "pfs snapshot build --recipe config/snapshot.default.toml --seed 1 --out $SNAP",
            &v,
        );
        let id = runbook("pfs snapshot info $SNAP | grep '^snapshot '", &v);
        assert!(id.starts_with("snapshot ") && id.trim().len() == 9 + 3 + 64, "{id}");
        let j = runbook("pfs snapshot info --json $SNAP | grep snapshot_id", &v);
        assert!(j.contains(id.split_whitespace().nth(1).unwrap()), "{j}");
        runbook("pfs snapshot verify $SNAP", &v);
        // Step 1 (after the snapshot exists).
        let doc = runbook("pfs doctor --iface $IF --snapshot $SNAP", &v);
        assert!(
            doc.lines().any(|l| l.starts_with("ok ") && l.contains(" native_xdp ")),
            "{doc}"
        );
        // Step 3: MTU.
        runbook("ip link set dev $IF mtu 3400", &v);
        let mtu = runbook("ip link show dev $IF | grep -o 'mtu [0-9]*'", &v);
        assert_eq!(mtu.trim(), "mtu 3400");
        // Step 4: channels.
        runbook("ethtool -l $IF", &v);
        // Step 6: the hugepage count for the snapshot.
        let size = runbook_then(
            "SIZE=$(pfs snapshot info --json $SNAP | grep -o '\"size\": *[0-9]*' | head -n 1 | grep -o '[0-9]*$')",
            "echo $SIZE",
            &v,
        );
        assert_eq!(size.trim(), std::fs::metadata(std::path::Path::new(&v[1].1).join("snapshot.bin")).unwrap().len().to_string());
        runbook("grep -i hugepages_ /proc/meminfo", &v);
        // Step 7/8 with the program attached natively.
        let steer = Steering::attach(&v[0].1, XdpMode::Native).expect("native attach");
        let mode = runbook("ip -d link show dev $IF | grep -o 'xdp[a-z]*'", &v);
        let net = runbook("bpftool net show dev $IF", &v);
        runbook("ss --xdp -a -e", &v);
        runbook("ethtool -S $IF | grep -E 'rx_queue_[0-9]+_packets|rx[0-9]+_packets|drop|miss|no_buf'", &v);
        let dump = runbook("bpftool map dump name PFS_COUNTERS", &v);
        runbook("ip -s link show dev $IF", &v);
        drop(steer);
        assert_eq!(mode.lines().next(), Some("xdp"), "native shows as `xdp`: {mode}");
        assert!(net.contains(" driver id "), "{net}");
        assert_eq!(
            dump.matches("key:").count(),
            packetfs::steer::Counter::ALL.len(),
            "{dump}"
        );
    });
}

/// Step 2b, the key exchange, on one machine: both hosts' keys in one directory, `pfs key
/// pub` standing in for the ssh call that fetches the peer's public key. The files the
/// runbook's lines write are the ones `pfs recv --authorized-senders` and `pfs send
/// --known-receivers` read. No privileges needed.
#[test]
fn the_key_exchange_of_the_runbook_makes_files_pfs_reads() {
    use packetfs::secure::{AuthorizedSenders, Identity, KnownReceivers};
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("pfs");
    let mut vars = vec![
        ("KEYS", keys.display().to_string()),
        ("R_IP", "192.0.2.2".to_string()),
        ("S_IP", "192.0.2.1".to_string()),
    ];
    runbook("mkdir -p -m 700 $KEYS", &vars);
    let r_pub = runbook("pfs keygen --out $KEYS/recv.key", &vars);
    let s_pub = runbook("pfs keygen --out $KEYS/send.key", &vars);
    // What `ssh root@$R_IP pfs key pub ...` runs on the peer.
    assert_eq!(runbook("pfs key pub $KEYS/recv.key", &vars), r_pub);
    assert_eq!(runbook("pfs key pub $KEYS/send.key", &vars), s_pub);
    vars.push(("R_PUB", r_pub.trim().to_string()));
    vars.push(("S_PUB", s_pub.trim().to_string()));
    runbook(
        "echo \"$S_PUB host-s dir=from-s max-file=100G\" >> $KEYS/authorized_senders",
        &vars,
    );
    runbook("echo \"$R_IP $R_PUB\" >> $KEYS/known_receivers", &vars);

    let s_id = Identity::load(&keys.join("send.key")).unwrap();
    let r_id = Identity::load(&keys.join("recv.key")).unwrap();
    assert_eq!(s_id.public().to_base64(), s_pub.trim());
    let auth = AuthorizedSenders::load(&keys.join("authorized_senders")).unwrap();
    let p = auth.get(&s_id.public()).expect("the sender is listed");
    assert_eq!(p.name, "host-s");
    assert_eq!(p.dir.as_deref(), Some(std::path::Path::new("from-s")));
    assert_eq!(p.max_file, Some(100 << 30));
    assert!(auth.get(&r_id.public()).is_none(), "only the sender");
    let known = KnownReceivers::load(&keys.join("known_receivers")).unwrap();
    assert_eq!(
        known.get("192.0.2.2:47000".parse().unwrap()),
        Some(r_id.public())
    );
    assert_eq!(known.get("192.0.2.3:47000".parse().unwrap()), None);
    // The lines that pass the keys to pfs name these files.
    for l in [
        "RECV_KEYS=\"--identity $KEYS/recv.key --authorized-senders $KEYS/authorized_senders\"",
        "SEND_KEYS=\"--identity $KEYS/send.key --known-receivers $KEYS/known_receivers\"",
        "--snapshot $SNAP --out-dir $OUT $RECV_KEYS",
        "--snapshot $SNAP $SEND_KEYS --rate 10gbit FILE...",
    ] {
        assert!(DOC.contains(l), "docs/two-hosts.md no longer contains: {l}");
    }
}
